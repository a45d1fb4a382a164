//! Seats: the list, adding and enrolling, one seat's page and its actions
//! (edit, reset, maintenance, delete).

use std::collections::HashMap;
use std::sync::Arc;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Form, Router};
use khoi_admin::ServiceError;
use khoi_admin::capture::{CaptureEnvironment, CaptureView};
use khoi_admin::service::{AddSeat, ImageView, SeatDetails, VersionView};
use khoi_state::{Event, SeatUpdate, UnknownMac};

use super::dashboard::{SeatRow, seat_rows};
use super::{Page, PageResult, call, done, ok_msg, render};
use crate::WebState;
use crate::form::{FormMap, field, invalid, parse_gib, parse_opt_u32, parse_policy};
use crate::guard::Ctx;
use crate::i18n::t;

pub fn router() -> Router<WebState> {
    Router::new()
        .route("/seats", get(seats_page).post(seat_add))
        .route("/seats/enrol", post(seat_enrol))
        .route("/seats/reset-all", post(seats_reset_all))
        .route("/seats/{name}", get(seat_page).post(seat_edit))
        .route("/seats/{name}/reset", post(seat_reset))
        .route("/seats/{name}/maintenance", post(seat_maintenance))
        .route("/seats/{name}/delete", post(seat_delete))
        .route("/seats/{name}/capture", post(seat_capture))
}

#[derive(Template)]
#[template(path = "seats.html")]
struct SeatsTpl {
    p: Page,
    seats: Vec<SeatRow>,
    images: Vec<ImageView>,
    unknown: Vec<UnknownMac>,
    mac: String,
    /// The boot networks' names, the default first; empty: no choice.
    networks: Vec<String>,
}

fn network_names(svc: &khoi_admin::Service) -> Vec<String> {
    svc.networks().into_iter().map(|n| n.name).collect()
}

#[derive(Debug, serde::Deserialize)]
struct MacQuery {
    mac: Option<String>,
}

async fn seats_page(
    State(st): State<WebState>,
    Extension(ctx): Extension<Ctx>,
    Query(q): Query<MacQuery>,
) -> PageResult {
    let svc = Arc::clone(&st.service);
    let r = call(move || {
        Ok((
            seat_rows(&svc)?,
            svc.images(),
            svc.state().unknown_macs(50)?,
        ))
    })
    .await;
    match r {
        Ok((seats, images, unknown)) => render(&SeatsTpl {
            p: Page::new(&st, &ctx, "seats"),
            seats,
            images,
            unknown,
            mac: q.mac.unwrap_or_default(),
            networks: network_names(&st.service),
        }),
        Err(e) => Err(e.into()),
    }
}

fn add_seat_req(f: &HashMap<String, String>) -> Result<AddSeat, ServiceError> {
    Ok(AddSeat {
        name: field(f, "name").to_string(),
        mac: field(f, "mac").to_string(),
        image: field(f, "image").to_string(),
        version: parse_opt_u32(f, "version")?,
        policy: parse_policy(f)?,
        quota: parse_gib(f, "quota_gib")?,
        initiator_iqn: Some(field(f, "initiator_iqn").to_string()).filter(|s| !s.is_empty()),
        mutual_chap: field(f, "mutual_chap") == "on",
    })
}

async fn seat_add(
    State(st): State<WebState>,
    Extension(ctx): Extension<Ctx>,
    Form(f): FormMap,
) -> Response {
    let svc = Arc::clone(&st.service);
    let who = ctx.actor();
    let r = call(move || {
        let network = Some(field(&f, "network")).filter(|s| !s.is_empty());
        let reason = Some(field(&f, "override")).filter(|s| !s.is_empty());
        svc.add_seat_with(&who, &add_seat_req(&f)?, network, reason)
    })
    .await;
    let to = match &r {
        Ok(s) => format!("/seats/{}", s.name),
        Err(_) => "/seats".into(),
    };
    done(
        &st,
        &ctx,
        &to,
        r.map(|s| ok_msg(&ctx, "msg.seat_added", &s.name)),
    )
}

/// One click from an unknown-MAC request: a seat named after the MAC on the
/// first image, following its latest version; the officer renames or
/// reassigns it afterwards if needed.
async fn seat_enrol(
    State(st): State<WebState>,
    Extension(ctx): Extension<Ctx>,
    Form(f): FormMap,
) -> Response {
    let svc = Arc::clone(&st.service);
    let who = ctx.actor();
    let r = call(move || {
        let mac: khoi_state::Mac = field(&f, "mac")
            .parse()
            .map_err(|e: String| invalid("mac", &e))?;
        let image = match field(&f, "image") {
            "" => svc
                .images()
                .into_iter()
                .next()
                .map(|i| i.name)
                .ok_or_else(|| invalid("image", "import an image before enrolling seats"))?,
            i => i.to_string(),
        };
        let hex: String = mac.to_string().replace(':', "");
        let name = match field(&f, "name") {
            "" => format!("seat-{}", &hex[6..]),
            n => n.to_string(),
        };
        svc.add_seat(
            &who,
            &AddSeat {
                name,
                mac: mac.to_string(),
                image,
                version: None,
                policy: None,
                quota: None,
                initiator_iqn: None,
                mutual_chap: false,
            },
        )
    })
    .await;
    let to = match &r {
        Ok(s) => format!("/seats/{}", s.name),
        Err(_) => "/seats".into(),
    };
    done(
        &st,
        &ctx,
        &to,
        r.map(|s| ok_msg(&ctx, "msg.seat_added", &s.name)),
    )
}

async fn seats_reset_all(State(st): State<WebState>, Extension(ctx): Extension<Ctx>) -> Response {
    let svc = Arc::clone(&st.service);
    let who = ctx.actor();
    let r = call(move || svc.reset_all(&who)).await;
    done(
        &st,
        &ctx,
        "/seats",
        r.map(|rep| format!("{} {}", t(ctx.lang, "msg.reset"), rep.reset.len())),
    )
}

#[derive(Template)]
#[template(path = "seat.html")]
struct SeatTpl {
    p: Page,
    d: SeatDetails,
    state: &'static str,
    images: Vec<ImageView>,
    versions: Vec<VersionView>,
    events: Vec<Event>,
    quota_gib: u64,
    pinned: String,
    networks: Vec<String>,
    /// The last boots as inline SVG (see `boot_chart`), "" when none.
    boot_chart: String,
    capture: Option<CaptureView>,
    capture_active: bool,
    capture_env: CaptureEnvironment,
}

/// The seat's kept boots, newest on top, each labelled with its start.
fn seat_boot_chart(lang: crate::i18n::Lang, boots: Vec<khoi_state::BootTiming>) -> String {
    use chrono::TimeZone;
    let rows: Vec<super::boot_chart::ChartRow> = boots
        .into_iter()
        .map(|b| super::boot_chart::ChartRow {
            label: b
                .started()
                .and_then(|ms| {
                    khoi_admin::schedule::vietnam()
                        .timestamp_millis_opt(ms)
                        .single()
                })
                .map_or_else(|| "—".into(), |t| t.format("%d/%m %H:%M").to_string()),
            href: None,
            note: None,
            timing: b,
        })
        .collect();
    super::boot_chart::boot_chart(lang, &rows)
}

async fn seat_page(
    State(st): State<WebState>,
    Extension(ctx): Extension<Ctx>,
    Path(name): Path<String>,
) -> PageResult {
    let svc = Arc::clone(&st.service);
    let r = call(move || {
        let d = svc.seat(&name)?;
        let versions = svc.versions(&d.seat.image).unwrap_or_default();
        let events = svc.state().events(Some(&name), 20)?;
        let boots = svc.state().boot_timings(&name)?;
        let capture = svc.capture(&name)?;
        Ok((d, versions, events, svc.images(), boots, capture))
    })
    .await;
    match r {
        Ok((d, versions, events, images, boots, capture)) => {
            let state = st.service.seat_state(&d.seat).as_str();
            render(&SeatTpl {
                p: Page::new(&st, &ctx, "seats"),
                state,
                quota_gib: d.seat.quota >> 30,
                pinned: d
                    .seat
                    .pinned_version
                    .map(|v| v.to_string())
                    .unwrap_or_default(),
                boot_chart: seat_boot_chart(ctx.lang, boots),
                d,
                images,
                versions,
                events,
                networks: network_names(&st.service),
                capture_active: capture.as_ref().is_some_and(|c| c.status.is_active()),
                capture,
                capture_env: st.service.capture_environment(),
            })
        }
        Err(e) => Err(e.into()),
    }
}

async fn seat_edit(
    State(st): State<WebState>,
    Extension(ctx): Extension<Ctx>,
    Path(name): Path<String>,
    Form(f): FormMap,
) -> Response {
    let svc = Arc::clone(&st.service);
    let who = ctx.actor();
    let n = name.clone();
    let r = call(move || {
        let up = SeatUpdate {
            mac: Some(field(&f, "mac").to_string()).filter(|s| !s.is_empty()),
            image: Some(field(&f, "image").to_string()).filter(|s| !s.is_empty()),
            pinned_version: Some(parse_opt_u32(&f, "version")?),
            policy: parse_policy(&f)?,
            quota: parse_gib(&f, "quota_gib")?,
            maintenance: None,
            network: Some(field(&f, "network").to_string()).filter(|s| !s.is_empty()),
        };
        // An admin's reason for pinning the seat to a version that failed
        // the image gate (the service refuses it otherwise).
        let reason = Some(field(&f, "override")).filter(|s| !s.is_empty());
        svc.update_seat_with(&who, &n, &up, reason)
    })
    .await;
    done(
        &st,
        &ctx,
        &format!("/seats/{name}"),
        r.map(|s| ok_msg(&ctx, "msg.saved", &s.name)),
    )
}

async fn seat_reset(
    State(st): State<WebState>,
    Extension(ctx): Extension<Ctx>,
    Path(name): Path<String>,
    Form(f): FormMap,
) -> Response {
    let svc = Arc::clone(&st.service);
    let who = ctx.actor();
    let n = name.clone();
    let r = call(move || svc.reset_seat(&who, &n)).await;
    let back = match field(&f, "back") {
        "seats" => "/seats".to_string(),
        "dashboard" => "/".to_string(),
        _ => format!("/seats/{name}"),
    };
    done(
        &st,
        &ctx,
        &back,
        r.map(|s| ok_msg(&ctx, "msg.reset_one", &s.name)),
    )
}

async fn seat_maintenance(
    State(st): State<WebState>,
    Extension(ctx): Extension<Ctx>,
    Path(name): Path<String>,
    Form(f): FormMap,
) -> Response {
    let svc = Arc::clone(&st.service);
    let who = ctx.actor();
    let on = field(&f, "on") == "1";
    let n = name.clone();
    let r = call(move || {
        svc.update_seat(
            &who,
            &n,
            &SeatUpdate {
                maintenance: Some(on),
                ..SeatUpdate::default()
            },
        )
    })
    .await;
    done(
        &st,
        &ctx,
        &format!("/seats/{name}"),
        r.map(|s| {
            let key = if on {
                t(ctx.lang, "msg.maintenance_on")
            } else {
                t(ctx.lang, "msg.maintenance_off")
            };
            format!("{key} {}", s.name)
        }),
    )
}

async fn seat_delete(
    State(st): State<WebState>,
    Extension(ctx): Extension<Ctx>,
    Path(name): Path<String>,
) -> Response {
    let svc = Arc::clone(&st.service);
    let who = ctx.actor();
    let n = name.clone();
    let r = call(move || svc.remove_seat(&who, &n)).await;
    let to = if r.is_ok() {
        "/seats".to_string()
    } else {
        format!("/seats/{name}")
    };
    done(
        &st,
        &ctx,
        &to,
        r.map(|()| ok_msg(&ctx, "msg.deleted", &name)),
    )
}

/// Capture mode on (`image` = the new image's name) or off (`cancel=1`).
async fn seat_capture(
    State(st): State<WebState>,
    Extension(ctx): Extension<Ctx>,
    Path(name): Path<String>,
    Form(f): FormMap,
) -> Response {
    let svc = Arc::clone(&st.service);
    let who = ctx.actor();
    let n = name.clone();
    let cancel = field(&f, "cancel") == "1";
    let image = field(&f, "image").trim().to_string();
    let (on, off) = (
        t(ctx.lang, "msg.capture_on"),
        t(ctx.lang, "msg.capture_off"),
    );
    let r = call(move || {
        if cancel {
            svc.capture_cancel(&who, &n).map(|()| off)
        } else {
            svc.capture_arm(&who, &n, &image).map(|_| on)
        }
    })
    .await;
    done(
        &st,
        &ctx,
        &format!("/seats/{name}"),
        r.map(|said| format!("{said} {name}")),
    )
}
