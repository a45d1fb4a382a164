//! The one error of the HTTP layer. A handler returns [`WebError`]; the
//! [`reply`] layer turns it into a body in the request's language: JSON
//! (`{"error", "field"}`) under `/api/`, the error page elsewhere.
//!
//! What the body says: for a request the officer can fix (not found, a
//! conflict, a field that is wrong) the service's own sentence, which names
//! the thing or the field; for anything else a short translated message. The
//! detail of an internal error (paths, a tool's stderr, a database message)
//! goes only to the log.

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, body::Body};
use khoi_admin::ServiceError;
use serde::{Deserialize, Serialize};

use crate::guard::lang_of;
use crate::i18n::{Lang, t};

#[derive(Debug, Clone)]
pub struct WebError {
    status: StatusCode,
    msg: Msg,
    field: Option<String>,
    /// The image gate's findings behind a refused publish or rollback.
    findings: Option<Vec<khoi_inspect::Finding>>,
}

#[derive(Debug, Clone)]
enum Msg {
    /// Translation key of a short message.
    Key(&'static str),
    /// A sentence written for the officer (the service's, naming the
    /// thing or the field).
    Shown(String),
}

/// The JSON body of an API error.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub field: Option<String>,
    /// What the image gate found, when it refused (HTTP 409).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub findings: Option<Vec<khoi_inspect::Finding>>,
}

impl WebError {
    /// A refusal with only a short message (`key` is a translation key).
    pub fn refuse(status: StatusCode, key: &'static str) -> WebError {
        WebError {
            status,
            msg: Msg::Key(key),
            field: None,
            findings: None,
        }
    }

    /// An internal failure: `detail` is logged, the answer is generic.
    pub fn internal(detail: impl std::fmt::Display) -> WebError {
        // A detail may quote what a client sent; one request, one short line.
        let detail = detail.to_string();
        let detail = khoi_admin::service::cap(&detail, 2048);
        tracing::error!("admin request failed: {detail}");
        WebError::refuse(StatusCode::INTERNAL_SERVER_ERROR, "err.internal")
    }

    /// A request body that does not parse; `reason` says why.
    pub fn bad_body(status: StatusCode, reason: String, field: Option<String>) -> WebError {
        WebError {
            status,
            msg: Msg::Shown(reason),
            field,
            findings: None,
        }
    }

    /// The gate's findings, when this is a gate refusal.
    pub fn findings(&self) -> Option<&[khoi_inspect::Finding]> {
        self.findings.as_deref()
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// What the officer reads, in `lang`.
    pub fn text(&self, lang: Lang) -> String {
        match &self.msg {
            Msg::Key(key) => t(lang, key).to_string(),
            Msg::Shown(s) => s.clone(),
        }
    }

    /// The answer itself, once the request's language and kind are known.
    pub fn render(&self, lang: Lang, json: bool) -> Response {
        let text = self.text(lang);
        if json {
            let body = ErrorBody {
                error: text,
                field: self.field.clone(),
                findings: self.findings.clone(),
            };
            (self.status, Json(body)).into_response()
        } else {
            crate::pages::error_page(lang, self.status, &text)
        }
    }
}

impl From<ServiceError> for WebError {
    fn from(e: ServiceError) -> WebError {
        if let ServiceError::Gate(g) = &e {
            return WebError {
                status: StatusCode::CONFLICT,
                msg: Msg::Shown(e.to_string()),
                field: None,
                findings: Some(g.findings.clone()),
            };
        }
        let (status, field) = match &e {
            ServiceError::NotFound(_) => (StatusCode::NOT_FOUND, None),
            ServiceError::Forbidden(_) => (StatusCode::FORBIDDEN, None),
            ServiceError::Gate(_) => (StatusCode::CONFLICT, None),
            ServiceError::Conflict(_) => (StatusCode::CONFLICT, None),
            ServiceError::Invalid { field, .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, Some(field.clone()))
            }
            ServiceError::Internal(detail) => return WebError::internal(detail),
        };
        WebError {
            status,
            msg: Msg::Shown(e.to_string()),
            field,
            findings: None,
        }
    }
}

/// Handlers answer the error with no body; [`reply`] words it.
impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = self.status;
        r.extensions_mut().insert(self);
        r
    }
}

/// How a router's errors are worded: where the answer is always JSON (the
/// control socket) and the language when the request names none.
#[derive(Debug, Clone, Copy)]
pub struct Replies {
    pub json_only: bool,
    pub default_lang: Lang,
}

/// The layer that words every [`WebError`] a handler or the guard returned.
pub async fn reply(State(how): State<Replies>, req: Request, next: Next) -> Response {
    let lang = lang_of(req.headers()).unwrap_or(how.default_lang);
    let json = how.json_only || req.uri().path().starts_with("/api/");
    let resp = next.run(req).await;
    match resp.extensions().get::<WebError>() {
        Some(e) => e.render(lang, json),
        None => resp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_detail_stays_in_the_log() {
        let e = WebError::from(ServiceError::Internal(
            "qemu-img: /var/khoi/staging/x.part: Could not open".into(),
        ));
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        for lang in Lang::ALL {
            let text = e.text(lang);
            assert!(!text.contains("qemu") && !text.contains('/'), "{text}");
        }
        let invalid = WebError::from(ServiceError::Invalid {
            field: "mac".into(),
            reason: "not a MAC address".into(),
        });
        assert_eq!(invalid.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(invalid.text(Lang::Vi), "mac: not a MAC address");
        assert_eq!(invalid.field.as_deref(), Some("mac"));
    }
}
