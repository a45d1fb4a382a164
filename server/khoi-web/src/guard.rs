//! Every request of the web page passes [`guard`]: sessions (cookie,
//! HttpOnly, SameSite=Strict, Secure when served over HTTPS), roles (viewer
//! < operator < admin), and for every state change an Origin/Sec-Fetch-Site
//! check plus the session's CSRF token (form field `_csrf` or header
//! `X-CSRF-Token`).

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use khoi_admin::Actor;
use khoi_admin::users::{Role, same_token};

use crate::WebState;
use crate::auth::Session;
use crate::error::WebError;
use crate::form::{FORM_LIMIT, form_urlencoded_field, is_form};
use crate::i18n::Lang;

pub const SESSION_COOKIE: &str = "khoi_session";
pub const LANG_COOKIE: &str = "khoi_lang";

/// The client's address as the audit log shows it.
#[derive(Debug, Clone)]
pub struct PeerAddr(pub String);

/// The checked session of the request, put there by [`guard`].
#[derive(Debug, Clone)]
pub struct Ctx {
    pub sid: String,
    pub session: Session,
    pub addr: String,
    pub lang: Lang,
}

impl Ctx {
    pub fn actor(&self) -> Actor {
        Actor {
            name: self.session.user.clone(),
            source: self.addr.clone(),
        }
    }
}

pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// The language the request's cookie asks for, if any.
pub fn lang_of(headers: &HeaderMap) -> Option<Lang> {
    cookie(headers, LANG_COOKIE).map(|c| Lang::from_code(&c))
}

/// The page's language: the cookie's, else Vietnamese.
pub fn page_lang(headers: &HeaderMap) -> Lang {
    lang_of(headers).unwrap_or_default()
}

/// Browsers say where a request comes from; a state change must come from
/// this site. Clients that send neither header (curl, scripts) still need
/// the session's CSRF token.
pub fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && !matches!(site, "same-origin" | "none")
    {
        return false;
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let origin_host = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .unwrap_or("");
        return !host.is_empty() && origin_host == host;
    }
    true
}

fn required_role(method: &Method, path: &str) -> Role {
    let users =
        path == "/users" || path.starts_with("/users/") || path.starts_with("/api/v1/users");
    // The host checks show the host's firewall, interfaces and certificate
    // and probe the boot LAN: the admin's, even to read.
    let doctor = path == "/doctor" || path == "/api/v1/doctor";
    // Taking over from the primary changes which server the seats boot from.
    let promote = path == "/province/promote";
    if users || doctor || promote {
        Role::Admin
    } else if path == "/logout" || matches!(*method, Method::GET | Method::HEAD) {
        Role::Viewer
    } else {
        Role::Operator
    }
}

fn peer(st: &WebState, req: &Request) -> String {
    let conn = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    st.policy
        .client(conn, req.headers())
        .map_or_else(|| "-".to_string(), |ip| ip.to_string())
}

fn is_public(path: &str) -> bool {
    matches!(
        path,
        "/login" | "/setup" | "/healthz" | "/metrics" | "/static/app.css" | "/static/app.js"
    ) || path.starts_with("/lang/")
}

pub async fn guard(State(st): State<WebState>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let api = path.starts_with("/api/");
    if let Some(hosts) = &st.policy.hosts
        && let Some(host) = req.headers().get(header::HOST)
        && !host.to_str().is_ok_and(|h| hosts.allows(h))
    {
        return WebError::refuse(StatusCode::MISDIRECTED_REQUEST, "err.host").into_response();
    }
    let changes = !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);
    if changes && !same_origin(req.headers()) {
        return WebError::refuse(StatusCode::FORBIDDEN, "err.cross_site").into_response();
    }
    let addr = peer(&st, &req);
    req.extensions_mut().insert(PeerAddr(addr.clone()));
    if is_public(&path) {
        return next.run(req).await;
    }
    let found =
        cookie(req.headers(), SESSION_COOKIE).and_then(|id| st.auth.session(&id).map(|s| (id, s)));
    let Some((sid, session)) = found else {
        return if api {
            WebError::refuse(StatusCode::UNAUTHORIZED, "err.login_required").into_response()
        } else {
            Redirect::to("/login").into_response()
        };
    };
    if session.role < required_role(&method, &path) {
        return WebError::refuse(StatusCode::FORBIDDEN, "err.forbidden").into_response();
    }
    if changes {
        let header_token = req
            .headers()
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let ok = match header_token {
            Some(t) => same_token(&t, &session.csrf),
            None if is_form(req.headers()) => {
                let (parts, body) = req.into_parts();
                let Ok(bytes) = axum::body::to_bytes(body, FORM_LIMIT).await else {
                    return WebError::refuse(StatusCode::PAYLOAD_TOO_LARGE, "err.too_large")
                        .into_response();
                };
                let token = form_urlencoded_field(&bytes, "_csrf");
                req = Request::from_parts(parts, Body::from(bytes));
                token.is_some_and(|t| same_token(&t, &session.csrf))
            }
            None => false,
        };
        if !ok {
            return WebError::refuse(StatusCode::FORBIDDEN, "err.csrf").into_response();
        }
    }
    req.extensions_mut().insert(Actor {
        name: session.user.clone(),
        source: addr.clone(),
    });
    let lang = page_lang(req.headers());
    req.extensions_mut().insert(Ctx {
        sid,
        session,
        addr,
        lang,
    });
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn origin_checks() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("10.0.0.1:8080"));
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://10.0.0.1:8080"),
        );
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(!same_origin(&h));
        let mut h = HeaderMap::new();
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(!same_origin(&h));
    }
}
