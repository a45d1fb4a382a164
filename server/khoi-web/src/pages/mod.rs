//! The server-rendered pages (askama templates in `web/templates`), one
//! module per family, over the same [`Service`](khoi_admin::Service) calls
//! as the JSON API. What every page shares lives here: the layout's
//! [`Page`], formatting, rendering, and the post-redirect-get of forms.

use std::borrow::Borrow;

use askama::Template;
use axum::Router;
use axum::extract::{Path, Query};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use chrono::TimeZone;
use khoi_admin::ServiceError;
use khoi_admin::schedule::vietnam;
use khoi_admin::users::Role;

use crate::WebState;
use crate::error::WebError;
use crate::guard::{Ctx, LANG_COOKIE};
use crate::i18n::{Lang, t};

mod audit;
mod boot_chart;
mod dashboard;
mod doctor;
mod images;
mod login;
pub mod province;
mod report;
mod schedule;
mod seats;
mod users;

const APP_CSS: &str = include_str!("../../../../web/static/app.css");
const APP_JS: &str = include_str!("../../../../web/static/app.js");

pub fn router() -> Router<WebState> {
    Router::new()
        .route("/static/app.css", get(css))
        .route("/static/app.js", get(js))
        .route("/lang/{code}", get(set_lang))
        .merge(login::router())
        .merge(dashboard::router())
        .merge(images::router())
        .merge(seats::router())
        .merge(schedule::router())
        .merge(audit::router())
        .merge(report::router())
        .merge(users::router())
        .merge(doctor::router())
        .merge(province::router())
}

/// What every page's layout needs.
#[derive(Debug)]
pub struct Page {
    pub lang: Lang,
    pub user: String,
    pub role: Role,
    pub csrf: String,
    pub flash: Option<(bool, String)>,
    pub nav: &'static str,
}

impl Page {
    fn new(st: &WebState, ctx: &Ctx, nav: &'static str) -> Page {
        Page {
            lang: ctx.lang,
            user: ctx.session.user.clone(),
            role: ctx.session.role,
            csrf: ctx.session.csrf.clone(),
            flash: st.auth.take_flash(&ctx.sid),
            nav,
        }
    }

    pub fn t(&self, key: &str) -> &'static str {
        t(self.lang, key)
    }

    pub fn code(&self) -> &'static str {
        self.lang.code()
    }

    /// The event's detail in the page's language when this build can word
    /// it from the event's values; else the recorded (English) detail.
    pub fn event_detail(&self, e: &khoi_state::Event) -> String {
        crate::i18n::event_detail(self.lang, &e.kind, &e.args).unwrap_or_else(|| e.detail.clone())
    }

    /// An unregistered machine's last request, worded like `event_detail`.
    pub fn unknown_detail(&self, u: &khoi_state::UnknownMac) -> String {
        crate::i18n::event_detail(self.lang, "pxe.unknown_mac", &u.args)
            .unwrap_or_else(|| u.detail.clone())
    }

    /// The event kind in the page's language ("" when unknown).
    pub fn event_kind(&self, kind: &str) -> &'static str {
        crate::i18n::event_kind(self.lang, kind).unwrap_or("")
    }

    // Askama passes some arguments by value and some by reference, so these
    // take either.
    pub fn time(&self, unix: impl Borrow<i64>) -> String {
        fmt_time(*unix.borrow())
    }

    pub fn opt_time(&self, unix: impl Borrow<Option<i64>>) -> String {
        unix.borrow().map_or_else(|| "—".to_string(), fmt_time)
    }

    pub fn bytes(&self, n: impl Borrow<u64>) -> String {
        fmt_bytes(*n.borrow())
    }

    pub fn can_operate(&self) -> bool {
        self.role >= Role::Operator
    }

    pub fn is_admin(&self) -> bool {
        self.role >= Role::Admin
    }

    pub fn role_name(&self) -> &'static str {
        match self.role {
            Role::Viewer => self.t("role.viewer"),
            Role::Operator => self.t("role.operator"),
            Role::Admin => self.t("role.admin"),
        }
    }
}

/// A time as the officers read it (Vietnam time).
pub fn fmt_time(unix: i64) -> String {
    vietnam().timestamp_opt(unix, 0).single().map_or_else(
        || "—".to_string(),
        |t| t.format("%Y-%m-%d %H:%M").to_string(),
    )
}

pub fn fmt_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n;
    let mut i = 0;
    while v >= 1024 * 10 && i < UNITS.len() - 1 {
        v /= 1024;
        i += 1;
    }
    if i == 0 && n >= 1024 {
        return format!("{:.1} KiB", precise(n) / 1024.0);
    }
    format!("{v} {}", UNITS[i])
}

#[allow(clippy::cast_precision_loss)]
fn precise(n: u64) -> f64 {
    n as f64
}

fn render(t: &impl Template) -> Result<Response, WebError> {
    t.render()
        .map(|html| Html(html).into_response())
        .map_err(|e| WebError::internal(format_args!("template: {e}")))
}

/// A page's answer: the rendered template or a worded error.
type PageResult = Result<Response, WebError>;

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorTpl {
    lang: Lang,
    status: u16,
    message: String,
}

impl ErrorTpl {
    fn t(&self, key: &str) -> &'static str {
        t(self.lang, key)
    }
}

/// The error page; [`crate::error::reply`] uses it for every page error.
pub fn error_page(lang: Lang, status: StatusCode, message: &str) -> Response {
    let tpl = ErrorTpl {
        lang,
        status: status.as_u16(),
        message: message.to_string(),
    };
    let mut r = match tpl.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!("template: {e}");
            t(lang, "err.internal").into_response()
        }
    };
    *r.status_mut() = status;
    r
}

/// Run a blocking service call for a page.
async fn call<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ServiceError> + Send + 'static,
) -> Result<T, ServiceError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(ServiceError::Internal(format!("task failed: {e}"))))
}

/// After a form post: flash the outcome and go back (303, so a reload does
/// not post again). A failure is worded like every other error.
fn done(st: &WebState, ctx: &Ctx, to: &str, r: Result<String, ServiceError>) -> Response {
    match r {
        Ok(msg) => st.auth.flash(&ctx.sid, true, msg),
        Err(e) => {
            let e = WebError::from(e);
            st.auth.flash(
                &ctx.sid,
                false,
                format!("{} {}", t(ctx.lang, "msg.failed"), e.text(ctx.lang)),
            );
        }
    }
    // Targets are built from names the service checked; still, never
    // another site.
    let to = if to.starts_with("//") || to.contains('\\') {
        "/"
    } else {
        to
    };
    Redirect::to(to).into_response()
}

fn ok_msg(ctx: &Ctx, key: &str, subject: &str) -> String {
    format!("{} {subject}", t(ctx.lang, key))
}

async fn css() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], APP_CSS).into_response()
}

async fn js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        APP_JS,
    )
        .into_response()
}

#[derive(Debug, serde::Deserialize)]
struct Back {
    back: Option<String>,
}

async fn set_lang(Path(code): Path<String>, Query(q): Query<Back>) -> Response {
    let lang = Lang::from_code(&code);
    // Only a local path: an open redirect would help phishing.
    let back = q
        .back
        .filter(|b| crate::policy::local_path(b))
        .unwrap_or_else(|| "/".into());
    let cookie = format!(
        "{LANG_COOKIE}={}; Path=/; Max-Age=31536000; SameSite=Strict",
        lang.code()
    );
    let mut r = Redirect::to(&back).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(fmt_time(0), "1970-01-01 07:00");
        assert_eq!(fmt_bytes(512), "512 B");
        assert_eq!(fmt_bytes(20 << 30), "20 GiB");
    }
}
