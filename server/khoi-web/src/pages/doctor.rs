//! The host checks (admins only): what `khoi doctor` says, in the page's
//! language, OK / WARN / FAIL with the fix.

use std::sync::Arc;

use askama::Template;
use axum::extract::State;
use axum::routing::get;
use axum::{Extension, Router};
use khoi_admin::doctor::{Report, Status};

use super::{Page, PageResult, call, render};
use crate::WebState;
use crate::guard::Ctx;
use crate::i18n::Lang;

pub fn router() -> Router<WebState> {
    Router::new().route("/doctor", get(doctor_page))
}

#[derive(Template)]
#[template(path = "doctor.html")]
struct DoctorTpl {
    p: Page,
    report: Report,
    ok: usize,
    warn: usize,
    fail: usize,
}

async fn doctor_page(State(st): State<WebState>, Extension(ctx): Extension<Ctx>) -> PageResult {
    let svc = Arc::clone(&st.service);
    let english = ctx.lang == Lang::En;
    let report = call(move || svc.doctor(english)).await?;
    render(&DoctorTpl {
        p: Page::new(&st, &ctx, "doctor"),
        ok: report.count(Status::Ok),
        warn: report.count(Status::Warn),
        fail: report.count(Status::Fail),
        report,
    })
}
