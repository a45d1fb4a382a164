//! The compliance report (directive item 4): a printable page in the
//! reader's language and the Vietnamese A4 PDF the server makes itself.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Extension, Router};
use khoi_admin::report::{ComplianceReport, TITLE_EN, TITLE_VI, pdf};

use super::{Page, PageResult, call, render};
use crate::WebState;
use crate::api::ReportQuery;
use crate::guard::Ctx;
use crate::i18n::Lang;

pub fn router() -> Router<WebState> {
    Router::new()
        .route("/report", get(report_page))
        .route("/report.pdf", get(report_pdf))
}

#[derive(Template)]
#[template(path = "report.html")]
struct ReportTpl {
    p: Page,
    r: Option<ComplianceReport>,
    title: &'static str,
    from: String,
    to: String,
    pdf: String,
    error: String,
}

impl ReportTpl {
    fn gate(&self, s: &khoi_admin::gate::GateStatus) -> &'static str {
        self.p.t(s.key())
    }

    fn profile(&self, p: &str) -> &'static str {
        match p {
            "counter" => self.p.t("gate.counter"),
            "kiosk" => self.p.t("gate.kiosk"),
            _ => "—",
        }
    }

    fn date(&self, unix: &i64) -> String {
        pdf::vn_date(*unix)
    }

    fn created(&self, unix: &u64) -> String {
        i64::try_from(*unix).map_or_else(|_| "—".into(), pdf::vn_date)
    }
}

async fn report_page(
    State(st): State<WebState>,
    Extension(ctx): Extension<Ctx>,
    Query(q): Query<ReportQuery>,
) -> PageResult {
    let svc = Arc::clone(&st.service);
    let (from, to) = (q.from.clone(), q.to.clone());
    let r = call(move || {
        let (a, b) = khoi_admin::report::period(from.as_deref(), to.as_deref())?;
        svc.compliance_report(a, b)
    })
    .await;
    let (r, error) = match r {
        Ok(r) => (Some(r), String::new()),
        Err(e) => (None, e.to_string()),
    };
    let (from, to) = match &r {
        Some(r) => (day_value(r.from), day_value(r.to)),
        None => (q.from.unwrap_or_default(), q.to.unwrap_or_default()),
    };
    render(&ReportTpl {
        p: Page::new(&st, &ctx, "report"),
        title: if ctx.lang == Lang::Vi {
            TITLE_VI
        } else {
            TITLE_EN
        },
        pdf: format!("/report.pdf?from={from}&to={to}"),
        from,
        to,
        r,
        error,
    })
}

/// A day as a date input's value (`YYYY-MM-DD`, Vietnam time).
fn day_value(unix: i64) -> String {
    use chrono::TimeZone;
    khoi_admin::schedule::vietnam()
        .timestamp_opt(unix, 0)
        .single()
        .map_or_else(String::new, |t| t.format("%Y-%m-%d").to_string())
}

async fn report_pdf(State(st): State<WebState>, Query(q): Query<ReportQuery>) -> PageResult {
    let svc = Arc::clone(&st.service);
    let pdf = call(move || {
        let (a, b) = khoi_admin::report::period(q.from.as_deref(), q.to.as_deref())?;
        svc.compliance_report_pdf(a, b)
    })
    .await?;
    Ok(crate::api::pdf_response(pdf))
}
