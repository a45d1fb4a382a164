//! Images: the list, imports from the server, one image's versions and its
//! maintenance draft.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Form, Router};
use khoi_admin::ServiceError;
use khoi_admin::service::{ImageView, PublishRequest, VersionView};

use super::dashboard::{SeatRow, seat_rows};
use super::{Page, PageResult, call, done, ok_msg, render};
use crate::WebState;
use crate::form::{FormMap, field, invalid};
use crate::guard::Ctx;
use crate::i18n::t;

pub fn router() -> Router<WebState> {
    Router::new()
        .route("/images", get(images_page))
        .route("/images/import", post(image_import))
        .route("/images/{name}", get(image_page))
        .route("/images/{name}/delete", post(image_delete))
        .route("/images/{name}/draft", post(draft_open))
        .route("/images/{name}/draft/publish", post(draft_publish))
        .route("/images/{name}/draft/discard", post(draft_discard))
        .route("/images/{name}/rollback", post(rollback))
        .route("/images/{name}/versions/{n}/delete", post(version_delete))
}

#[derive(Template)]
#[template(path = "images.html")]
struct ImagesTpl {
    p: Page,
    images: Vec<ImageView>,
    staging: String,
}

async fn images_page(State(st): State<WebState>, Extension(ctx): Extension<Ctx>) -> PageResult {
    render(&ImagesTpl {
        p: Page::new(&st, &ctx, "images"),
        images: st.service.images(),
        staging: st.service.staging_dir().display().to_string(),
    })
}

async fn image_import(
    State(st): State<WebState>,
    Extension(ctx): Extension<Ctx>,
    Form(f): FormMap,
) -> Response {
    let svc = Arc::clone(&st.service);
    let who = ctx.actor();
    let (name, path, note) = (
        field(&f, "name").to_string(),
        field(&f, "path").to_string(),
        field(&f, "note").to_string(),
    );
    let n = name.clone();
    let r = call(move || svc.import_path(&who, &n, std::path::Path::new(&path), &note)).await;
    let to = if r.is_ok() {
        format!("/images/{name}")
    } else {
        "/images".to_string()
    };
    done(
        &st,
        &ctx,
        &to,
        r.map(|v| format!("{} {name} v{}", t(ctx.lang, "msg.imported"), v.number)),
    )
}

#[derive(Template)]
#[template(path = "image.html")]
struct ImageTpl {
    p: Page,
    image: ImageView,
    versions: Vec<VersionView>,
    maintenance: Vec<SeatRow>,
}

async fn image_page(
    State(st): State<WebState>,
    Extension(ctx): Extension<Ctx>,
    Path(name): Path<String>,
) -> PageResult {
    let svc = Arc::clone(&st.service);
    let r = call(move || {
        let image = svc
            .images()
            .into_iter()
            .find(|i| i.name == name)
            .ok_or_else(|| ServiceError::NotFound(format!("image {name:?} does not exist")))?;
        let mut versions = svc.versions(&name)?;
        versions.reverse();
        let maintenance = seat_rows(&svc)?
            .into_iter()
            .filter(|r| r.seat.image == name && r.seat.maintenance)
            .collect();
        Ok((image, versions, maintenance))
    })
    .await;
    match r {
        Ok((image, versions, maintenance)) => render(&ImageTpl {
            p: Page::new(&st, &ctx, "images"),
            image,
            versions,
            maintenance,
        }),
        Err(e) => Err(e.into()),
    }
}

async fn image_delete(
    State(st): State<WebState>,
    Extension(ctx): Extension<Ctx>,
    Path(name): Path<String>,
) -> Response {
    let svc = Arc::clone(&st.service);
    let who = ctx.actor();
    let n = name.clone();
    let r = call(move || svc.delete_image(&who, &n)).await;
    let to = if r.is_ok() {
        "/images".to_string()
    } else {
        format!("/images/{name}")
    };
    done(
        &st,
        &ctx,
        &to,
        r.map(|()| ok_msg(&ctx, "msg.deleted", &name)),
    )
}

async fn draft_open(
    State(st): State<WebState>,
    Extension(ctx): Extension<Ctx>,
    Path(name): Path<String>,
) -> Response {
    let svc = Arc::clone(&st.service);
    let who = ctx.actor();
    let n = name.clone();
    let r = call(move || svc.draft_open(&who, &n)).await;
    done(
        &st,
        &ctx,
        &format!("/images/{name}"),
        r.map(|()| ok_msg(&ctx, "msg.draft_opened", &name)),
    )
}

async fn draft_publish(
    State(st): State<WebState>,
    Extension(ctx): Extension<Ctx>,
    Path(name): Path<String>,
    Form(f): FormMap,
) -> Response {
    let svc = Arc::clone(&st.service);
    let who = ctx.actor();
    let req = PublishRequest {
        note: field(&f, "note").to_string(),
        force: field(&f, "force") == "on",
        override_reason: Some(field(&f, "override").trim().to_string()).filter(|r| !r.is_empty()),
    };
    let n = name.clone();
    let r = call(move || svc.draft_publish_with(&who, &n, &req)).await;
    done(
        &st,
        &ctx,
        &format!("/images/{name}"),
        r.map(|v| format!("{} v{}", t(ctx.lang, "msg.published"), v.number)),
    )
}

async fn draft_discard(
    State(st): State<WebState>,
    Extension(ctx): Extension<Ctx>,
    Path(name): Path<String>,
) -> Response {
    let svc = Arc::clone(&st.service);
    let who = ctx.actor();
    let n = name.clone();
    let r = call(move || svc.draft_discard(&who, &n)).await;
    done(
        &st,
        &ctx,
        &format!("/images/{name}"),
        r.map(|()| ok_msg(&ctx, "msg.draft_discarded", &name)),
    )
}

async fn rollback(
    State(st): State<WebState>,
    Extension(ctx): Extension<Ctx>,
    Path(name): Path<String>,
    Form(f): FormMap,
) -> Response {
    let svc = Arc::clone(&st.service);
    let who = ctx.actor();
    let n = name.clone();
    let to = field(&f, "to").to_string();
    let r = call(move || {
        let to: u32 = to
            .parse()
            .map_err(|_| invalid("to", "must be a version number"))?;
        svc.rollback(&who, &n, to)
    })
    .await;
    done(
        &st,
        &ctx,
        &format!("/images/{name}"),
        r.map(|v| format!("{} v{}", t(ctx.lang, "msg.current_now"), v.number)),
    )
}

async fn version_delete(
    State(st): State<WebState>,
    Extension(ctx): Extension<Ctx>,
    Path((name, n)): Path<(String, String)>,
) -> Response {
    let svc = Arc::clone(&st.service);
    let who = ctx.actor();
    let img = name.clone();
    let r = call(move || {
        let n: u32 = n
            .parse()
            .map_err(|_| invalid("version", "must be a version number"))?;
        svc.delete_version(&who, &img, n).map(|()| n)
    })
    .await;
    done(
        &st,
        &ctx,
        &format!("/images/{name}"),
        r.map(|n| format!("{} v{n}", t(ctx.lang, "msg.deleted"))),
    )
}
