//! Login, logout and the first admin's setup page.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Form, Router};
use khoi_admin::Actor;

use super::{PageResult, call, render};
use crate::WebState;
use crate::auth::LoginError;
use crate::error::WebError;
use crate::form::{FormMap, field, raw};
use crate::guard::{Ctx, PeerAddr, SESSION_COOKIE, page_lang};
use crate::i18n::{Lang, t};

pub fn router() -> Router<WebState> {
    Router::new()
        .route("/login", get(login_page).post(login))
        .route("/setup", get(setup_page).post(setup))
        .route("/logout", post(logout))
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginTpl {
    lang: Lang,
    error: String,
    setup: bool,
}

impl LoginTpl {
    fn t(&self, key: &str) -> &'static str {
        t(self.lang, key)
    }
    fn code(&self) -> &'static str {
        self.lang.code()
    }
}

async fn login_page(State(st): State<WebState>, headers: HeaderMap) -> PageResult {
    render(&LoginTpl {
        lang: page_lang(&headers),
        error: String::new(),
        setup: st.auth.setup_token().is_some(),
    })
}

fn session_cookie(st: &WebState, id: &str, max_age: i64) -> String {
    format!(
        "{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{}",
        if st.secure_cookies { "; Secure" } else { "" }
    )
}

fn with_cookie(mut r: Response, cookie: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

async fn login(
    State(st): State<WebState>,
    headers: HeaderMap,
    Extension(PeerAddr(addr)): Extension<PeerAddr>,
    Form(f): FormMap,
) -> PageResult {
    let lang = page_lang(&headers);
    let name = field(&f, "name").to_string();
    let password = raw(&f, "password").to_string();
    let r = st.auth.login(&name, &password, &addr).await;
    let actor = Actor {
        name: if name.is_empty() {
            "-".into()
        } else {
            name.clone()
        },
        source: addr,
    };
    match r {
        Ok(id) => {
            st.service.audit(&actor, "login", &name, "");
            let cookie = session_cookie(&st, &id, 8 * 3600);
            Ok(with_cookie(Redirect::to("/").into_response(), &cookie))
        }
        Err(e) => {
            st.service.metrics().logins_failed.inc();
            // A refusal before any password check is not audited: it says
            // nothing new, and recording it would let a flood of refused
            // requests fill the disk.
            if matches!(e, LoginError::Invalid) {
                st.service
                    .audit(&actor, "login.failed", &name, &e.to_string());
            }
            let (status, error) = match e {
                LoginError::Limited(_) => (StatusCode::TOO_MANY_REQUESTS, t(lang, "login.limited")),
                LoginError::Busy => (StatusCode::TOO_MANY_REQUESTS, t(lang, "login.busy")),
                LoginError::Invalid => (StatusCode::UNAUTHORIZED, t(lang, "login.invalid")),
                LoginError::Service(e) => return Err(WebError::from(e)),
            };
            let mut r = render(&LoginTpl {
                lang,
                error: error.to_string(),
                setup: false,
            })?;
            *r.status_mut() = status;
            Ok(r)
        }
    }
}

#[derive(Debug, serde::Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

#[derive(Template)]
#[template(path = "setup.html")]
struct SetupTpl {
    lang: Lang,
    token: String,
    error: String,
}

impl SetupTpl {
    fn t(&self, key: &str) -> &'static str {
        t(self.lang, key)
    }
    fn code(&self) -> &'static str {
        self.lang.code()
    }
}

async fn setup_page(headers: HeaderMap, Query(q): Query<TokenQuery>) -> PageResult {
    render(&SetupTpl {
        lang: page_lang(&headers),
        token: q.token.unwrap_or_default(),
        error: String::new(),
    })
}

async fn setup(
    State(st): State<WebState>,
    headers: HeaderMap,
    Extension(PeerAddr(addr)): Extension<PeerAddr>,
    Form(f): FormMap,
) -> PageResult {
    let lang = page_lang(&headers);
    let token = field(&f, "token").to_string();
    let name = field(&f, "name").to_string();
    let password = raw(&f, "password").to_string();
    let auth = Arc::clone(&st.auth);
    let t = token.clone();
    let who = Actor {
        name: name.clone(),
        source: addr,
    };
    match call(move || auth.complete_setup(&who, &t, &name, &password)).await {
        Ok(()) => Ok(Redirect::to("/login").into_response()),
        Err(e) => {
            let e = WebError::from(e);
            let mut r = render(&SetupTpl {
                lang,
                token,
                error: e.text(lang),
            })?;
            *r.status_mut() = e.status();
            Ok(r)
        }
    }
}

async fn logout(State(st): State<WebState>, Extension(ctx): Extension<Ctx>) -> Response {
    st.auth.logout(&ctx.sid);
    st.service
        .audit(&ctx.actor(), "logout", &ctx.session.user, "");
    with_cookie(
        Redirect::to("/login").into_response(),
        &session_cookie(&st, "", 0),
    )
}
