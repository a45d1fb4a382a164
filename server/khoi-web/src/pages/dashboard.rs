//! The dashboard: health, unknown machines and every seat's live state.

use std::sync::Arc;

use askama::Template;
use axum::extract::State;
use axum::routing::get;
use axum::{Extension, Router};
use khoi_admin::service::{Health, ImageView, SeatView};
use khoi_admin::{Service, ServiceError};
use khoi_state::UnknownMac;

use super::{Page, PageResult, call, render};
use crate::WebState;
use crate::guard::Ctx;

pub fn router() -> Router<WebState> {
    Router::new().route("/", get(dashboard))
}

/// A seat as the tables of the dashboard, seats and image pages show it.
#[derive(Debug)]
pub struct SeatRow {
    pub seat: SeatView,
    pub state: &'static str,
    pub version: String,
    pub peers: String,
    pub last_boot: Option<i64>,
    pub usage_pct: u64,
    pub read_rate: u64,
    pub write_rate: u64,
    /// The seat runs a version that failed the image gate (no override).
    pub gate_failed: bool,
}

pub(super) fn seat_rows(svc: &Service) -> Result<Vec<SeatRow>, ServiceError> {
    Ok(svc
        .seats()?
        .into_iter()
        .map(|s| {
            let live = svc.activity().live(&s.name);
            let state = svc.seat_state(&s).as_str();
            let version = match (s.active_version, s.pinned_version) {
                _ if s.maintenance => "draft".to_string(),
                (Some(a), Some(p)) => format!("v{a} (pin v{p})"),
                (Some(a), None) => format!("v{a}"),
                (None, Some(p)) => format!("pin v{p}"),
                (None, None) => "—".into(),
            };
            let usage_pct = s
                .overlay_bytes
                .saturating_mul(100)
                .checked_div(s.quota)
                .map_or(0, |p| p.min(100));
            let gate_failed = !s.maintenance
                && s.active_version.is_some_and(|v| {
                    svc.gate_result(&s.image, v)
                        .is_ok_and(|r| r.status.blocks())
                });
            SeatRow {
                gate_failed,
                state,
                version,
                peers: live.peers.join(", "),
                last_boot: live.last_boot,
                usage_pct,
                read_rate: live.read_rate,
                write_rate: live.write_rate,
                seat: s,
            }
        })
        .collect())
}

#[derive(Template)]
#[template(path = "dashboard.html")]
struct DashboardTpl {
    p: Page,
    seats: Vec<SeatRow>,
    health: Health,
    unknown: Vec<UnknownMac>,
    images: Vec<ImageView>,
    free_pct: u64,
    /// The room's last morning as inline SVG (see `boot_chart`).
    morning: String,
    morning_day: String,
}

/// Each seat's first boot of the room's last morning, by start, with the
/// slow ones and why.
fn morning_chart(lang: crate::i18n::Lang, m: khoi_admin::boot_times::RoomMorning) -> String {
    use super::boot_chart::{ChartRow, boot_chart, slow_reason};
    let rows: Vec<ChartRow> = m
        .boots
        .iter()
        .map(|b| ChartRow {
            label: b.seat.clone(),
            href: Some(format!("/seats/{}#boots", b.seat)),
            note: slow_reason(lang, b, &m.boots),
            timing: b.clone(),
        })
        .collect();
    boot_chart(lang, &rows)
}

async fn dashboard(State(st): State<WebState>, Extension(ctx): Extension<Ctx>) -> PageResult {
    let svc = Arc::clone(&st.service);
    let (seats, health, unknown, images, morning) = call(move || {
        let seats = seat_rows(&svc)?;
        let health = svc.health();
        let unknown = svc.state().unknown_macs(50)?;
        let morning = svc.room_morning()?;
        Ok((seats, health, unknown, svc.images(), morning))
    })
    .await?;
    let free_pct = health
        .free_bytes
        .saturating_mul(100)
        .checked_div(health.total_bytes)
        .unwrap_or(0);
    render(&DashboardTpl {
        p: Page::new(&st, &ctx, "dashboard"),
        seats,
        health,
        unknown,
        images,
        free_pct,
        morning_day: morning.day.clone().unwrap_or_default(),
        morning: morning_chart(ctx.lang, morning),
    })
}
