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
use crate::form::{FormMap, field, invalid, parse_size};
use crate::guard::Ctx;
use crate::i18n::t;
use khoi_admin::gate::rule_name;

pub fn router() -> Router<WebState> {
    Router::new()
        .route("/images", get(images_page))
        .route("/images/import", post(image_import))
        .route("/images/create", post(image_create))
        .route("/images/{name}", get(image_page))
        .route("/images/{name}/delete", post(image_delete))
        .route("/images/{name}/draft", post(draft_open))
        .route("/images/{name}/draft/publish", post(draft_publish))
        .route("/images/{name}/draft/discard", post(draft_discard))
        .route("/images/{name}/rollback", post(rollback))
        .route("/images/{name}/gate", post(gate_save))
        .route("/images/{name}/check", post(gate_check))
        .route("/images/{name}/fix", post(image_fix))
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
    let svc = Arc::clone(&st.service);
    // Each image's gate badge is a database read: off the async threads.
    let images = call(move || Ok(svc.images())).await?;
    render(&ImagesTpl {
        p: Page::new(&st, &ctx, "images"),
        images,
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

/// An empty image to install onto (`khoi image create`).
async fn image_create(
    State(st): State<WebState>,
    Extension(ctx): Extension<Ctx>,
    Form(f): FormMap,
) -> Response {
    let svc = Arc::clone(&st.service);
    let who = ctx.actor();
    let name = field(&f, "name").trim().to_string();
    let n = name.clone();
    let r = call(move || {
        let size = parse_size(&f, "size")?;
        svc.image_create(&who, &n, size)
    })
    .await;
    let to = if r.is_ok() {
        format!("/images/{name}")
    } else {
        "/images".to_string()
    };
    done(
        &st,
        &ctx,
        &to,
        r.map(|_| format!("{} {name}", t(ctx.lang, "msg.image_created"))),
    )
}

#[derive(Template)]
#[template(path = "image.html")]
struct ImageTpl {
    p: Page,
    image: ImageView,
    versions: Vec<VersionView>,
    /// Each version's origin (here, or the province's version N), by index.
    origins: Vec<String>,
    maintenance: Vec<SeatRow>,
    gate: GateView,
}

impl ImageTpl {
    fn origin(&self, i: &usize) -> &str {
        self.origins.get(*i).map_or("", String::as_str)
    }
}

/// The image gate's part of the page: the settings and what the last check
/// of the current version found, worded in the reader's language.
struct GateView {
    profile: &'static str,
    admin_allow: String,
    disabled: String,
    status: &'static str,
    status_key: &'static str,
    checked: i64,
    override_reason: String,
    findings: Vec<FindingRow>,
}

struct FindingRow {
    blocking: bool,
    rule: String,
    subject: String,
    title: &'static str,
    fix: &'static str,
}

fn gate_view(
    svc: &khoi_admin::Service,
    image: &ImageView,
    lang: crate::i18n::Lang,
) -> Result<GateView, ServiceError> {
    let s = svc.gate_settings(&image.name)?;
    let r = svc.gate_result(&image.name, image.current)?;
    let vi = lang == crate::i18n::Lang::Vi;
    let findings = r
        .report
        .as_ref()
        .map(|rep| {
            rep.findings
                .iter()
                .map(|f| {
                    let info = f.info();
                    FindingRow {
                        blocking: f.severity == khoi_admin::gate::Severity::Blocking,
                        rule: rule_name(f.rule),
                        subject: f.subject.clone(),
                        title: if vi { info.title_vi } else { info.title_en },
                        fix: if vi { info.fix_vi } else { info.fix_en },
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(GateView {
        profile: match s.profile {
            khoi_admin::gate::Profile::Counter => "counter",
            khoi_admin::gate::Profile::Kiosk => "kiosk",
        },
        admin_allow: s.policy.admin_allow.join(", "),
        disabled: s
            .policy
            .disabled
            .iter()
            .map(|r| rule_name(*r))
            .collect::<Vec<_>>()
            .join(", "),
        status: r.status.as_str(),
        status_key: r.status.key(),
        checked: r.checked,
        override_reason: r
            .r#override
            .map(|o| format!("{}: {}", o.by, o.reason))
            .unwrap_or_default(),
        findings,
    })
}

async fn image_page(
    State(st): State<WebState>,
    Extension(ctx): Extension<Ctx>,
    Path(name): Path<String>,
) -> PageResult {
    let svc = Arc::clone(&st.service);
    let lang = ctx.lang;
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
        let gate = gate_view(&svc, &image, lang)?;
        Ok((image, versions, maintenance, gate))
    })
    .await;
    match r {
        Ok((image, versions, maintenance, gate)) => render(&ImageTpl {
            p: Page::new(&st, &ctx, "images"),
            origins: versions
                .iter()
                .map(|v| {
                    super::province::origin_text(
                        st.province.as_ref(),
                        ctx.lang,
                        &image.name,
                        v.number,
                    )
                })
                .collect(),
            image,
            versions,
            maintenance,
            gate,
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
        let reason = Some(field(&f, "override").trim().to_string()).filter(|r| !r.is_empty());
        svc.rollback_with(&who, &n, to, reason.as_deref())
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

/// Save the image's gate profile and policy (the service refuses anyone but
/// an admin); the current version is re-checked in the background.
async fn gate_save(
    State(st): State<WebState>,
    Extension(ctx): Extension<Ctx>,
    Path(name): Path<String>,
    Form(f): FormMap,
) -> Response {
    let svc = Arc::clone(&st.service);
    let who = ctx.actor();
    let n = name.clone();
    let (profile, allow, disabled) = (
        field(&f, "profile").to_string(),
        field(&f, "admin_allow").to_string(),
        field(&f, "disabled").to_string(),
    );
    let r = call(move || {
        let list = |s: &str| -> Vec<String> {
            s.split([',', '\n'])
                .map(str::trim)
                .filter(|x| !x.is_empty())
                .map(str::to_string)
                .collect()
        };
        let disabled = list(&disabled)
            .into_iter()
            .map(|r| {
                serde_json::from_value(serde_json::Value::String(r.clone()))
                    .map_err(|_| invalid("disabled", &format!("{r:?} is not a rule id")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let settings = khoi_admin::gate::GateSettings {
            profile: khoi_admin::gate::parse_profile(&profile)?,
            policy: khoi_admin::gate::Policy {
                admin_allow: list(&allow),
                disabled,
            },
        };
        svc.set_gate_settings(&who, &n, &settings).map(|_| ())
    })
    .await;
    done(
        &st,
        &ctx,
        &format!("/images/{name}"),
        r.map(|()| ok_msg(&ctx, "msg.gate_saved", &name)),
    )
}

/// Check the current version (or the draft) now; the check runs on the
/// blocking pool like every service call.
async fn gate_check(
    State(st): State<WebState>,
    Extension(ctx): Extension<Ctx>,
    Path(name): Path<String>,
    Form(f): FormMap,
) -> Response {
    let svc = Arc::clone(&st.service);
    let who = ctx.actor();
    let n = name.clone();
    let draft = field(&f, "draft") == "1";
    let r = call(move || {
        if draft {
            let rep = svc.check_draft(&n)?;
            return Ok(khoi_admin::gate::GateStatus::of(&rep));
        }
        let v = svc.store().current_version(&n)?;
        svc.check_version(&who, &n, v).map(|r| r.status)
    })
    .await;
    done(
        &st,
        &ctx,
        &format!("/images/{name}"),
        r.map(|s| {
            format!(
                "{} {}",
                t(ctx.lang, "msg.gate_checked"),
                t(ctx.lang, s.key())
            )
        }),
    )
}

/// Apply the safe remedies to the draft (admin only: the service refuses
/// anyone else) and say what was fixed and what is left.
async fn image_fix(
    State(st): State<WebState>,
    Extension(ctx): Extension<Ctx>,
    Path(name): Path<String>,
    Form(_f): FormMap,
) -> Response {
    let svc = Arc::clone(&st.service);
    let who = ctx.actor();
    let n = name.clone();
    let r = call(move || svc.image_fix(&who, &n)).await;
    done(
        &st,
        &ctx,
        &format!("/images/{name}"),
        r.map(|v| {
            format!(
                "{} {} / {} {}",
                t(ctx.lang, "msg.fix_fixed"),
                v.diff.fixed.len(),
                t(ctx.lang, "msg.fix_left"),
                v.after.findings.len()
            )
        }),
    )
}
