//! The audit log: filters in Vietnam time and the CSV export.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Extension, Router};
use chrono::{NaiveDate, TimeZone};
use khoi_admin::ServiceError;
use khoi_admin::schedule::vietnam;
use khoi_state::Event;

use super::{Page, PageResult, call, fmt_time, render};
use crate::WebState;
use crate::api::EventQuery;
use crate::form::invalid;
use crate::guard::Ctx;

pub fn router() -> Router<WebState> {
    Router::new()
        .route("/audit", get(audit_page))
        .route("/audit.csv", get(audit_csv))
}

#[derive(Debug, Default, serde::Deserialize)]
struct AuditQuery {
    kind: Option<String>,
    actor: Option<String>,
    subject: Option<String>,
    q: Option<String>,
    /// YYYY-MM-DD in Vietnam time.
    from: Option<String>,
    to: Option<String>,
    limit: Option<u32>,
}

impl AuditQuery {
    fn to_event_query(&self) -> Result<EventQuery, ServiceError> {
        let day =
            |field: &str, v: &Option<String>, end: bool| -> Result<Option<i64>, ServiceError> {
                let Some(v) = v.as_deref().filter(|v| !v.is_empty()) else {
                    return Ok(None);
                };
                let d = NaiveDate::parse_from_str(v, "%Y-%m-%d")
                    .map_err(|_| invalid(field, "use a date like 2026-11-20"))?;
                let t = if end {
                    d.and_hms_opt(23, 59, 59)
                } else {
                    d.and_hms_opt(0, 0, 0)
                };
                Ok(t.and_then(|t| vietnam().from_local_datetime(&t).single())
                    .map(|t| t.timestamp()))
            };
        Ok(EventQuery {
            subject: self.subject.clone(),
            kind: self.kind.clone(),
            actor: self.actor.clone(),
            q: self.q.clone(),
            since: day("from", &self.from, false)?,
            until: day("to", &self.to, true)?,
            limit: Some(self.limit.unwrap_or(200)),
        })
    }

    fn query_string(&self) -> String {
        let pairs = [
            ("kind", &self.kind),
            ("actor", &self.actor),
            ("subject", &self.subject),
            ("q", &self.q),
            ("from", &self.from),
            ("to", &self.to),
        ];
        pairs
            .iter()
            .filter_map(|(k, v)| v.as_deref().filter(|v| !v.is_empty()).map(|v| (k, v)))
            .map(|(k, v)| format!("{k}={}", urlencode(v)))
            .collect::<Vec<_>>()
            .join("&")
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditTpl {
    p: Page,
    events: Vec<Event>,
    kind: String,
    actor: String,
    subject: String,
    q: String,
    from: String,
    to: String,
    csv: String,
    error: String,
}

async fn audit_page(
    State(st): State<WebState>,
    Extension(ctx): Extension<Ctx>,
    Query(q): Query<AuditQuery>,
) -> PageResult {
    let (events, error) = match q.to_event_query() {
        Ok(eq) => {
            let svc = Arc::clone(&st.service);
            let f = eq.filter();
            match call(move || Ok(svc.state().events_filtered(&f)?)).await {
                Ok(e) => (e, String::new()),
                Err(e) => (Vec::new(), e.to_string()),
            }
        }
        Err(e) => (Vec::new(), e.to_string()),
    };
    let s = |v: &Option<String>| v.clone().unwrap_or_default();
    render(&AuditTpl {
        p: Page::new(&st, &ctx, "audit"),
        events,
        kind: s(&q.kind),
        actor: s(&q.actor),
        subject: s(&q.subject),
        q: s(&q.q),
        from: s(&q.from),
        to: s(&q.to),
        csv: format!("/audit.csv?{}", q.query_string()),
        error,
    })
}

/// A CSV cell; cells that a spreadsheet would run as a formula are
/// prefixed with a quote, since names and details come from users.
fn csv_cell(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    format!("\"{}\"", s.replace('"', "\"\""))
}

async fn audit_csv(State(st): State<WebState>, Query(mut q): Query<AuditQuery>) -> PageResult {
    q.limit = Some(q.limit.unwrap_or(100_000).min(100_000));
    let eq = match q.to_event_query() {
        Ok(eq) => eq,
        Err(e) => return Err(e.into()),
    };
    let mut f = eq.filter();
    f.limit = q.limit.unwrap_or(100_000);
    let svc = Arc::clone(&st.service);
    match call(move || Ok(svc.state().events_filtered(&f)?)).await {
        Ok(events) => {
            let mut out =
                String::from("\u{feff}time_ict,unix,kind,actor,source,subject,detail\r\n");
            for e in events {
                let cells = [
                    fmt_time(e.ts),
                    e.ts.to_string(),
                    e.kind,
                    e.actor,
                    e.source,
                    e.subject,
                    e.detail,
                ];
                let line: Vec<String> = cells.iter().map(|c| csv_cell(c)).collect();
                out.push_str(&line.join(","));
                out.push_str("\r\n");
            }
            Ok((
                [
                    (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                    (
                        header::CONTENT_DISPOSITION,
                        "attachment; filename=\"khoi-audit.csv\"",
                    ),
                ],
                out,
            )
                .into_response())
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_are_quoted_and_never_formulas() {
        assert_eq!(csv_cell("=cmd()"), "\"'=cmd()\"");
        assert_eq!(csv_cell("a\"b"), "\"a\"\"b\"");
    }
}
