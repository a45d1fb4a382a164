//! The admin web page: server-rendered askama templates over the same
//! [`Service`] calls as the JSON API, which is mounted under `/api`.
//!
//! Every request passes [`guard`]: sessions (cookie, HttpOnly,
//! SameSite=Strict, Secure when served over HTTPS), roles (viewer <
//! operator < admin), and for every state change an Origin/Sec-Fetch-Site
//! check plus the session's CSRF token (form field `_csrf` or header
//! `X-CSRF-Token`).

use std::borrow::Borrow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use askama::Template;
use axum::body::Body;
use axum::extract::{ConnectInfo, Form, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use chrono::{NaiveDate, TimeZone};
use khoi_state::{Event, ResetPolicy, SeatUpdate, UnknownMac, User};

use crate::api::{ApiState, ErrorBody, EventQuery};
use crate::auth::{Auth, LoginError, Role, Session, same_token};
use crate::i18n::Lang;
use crate::schedule::{OnlinePolicy, ScheduleSettings, Scheduler, vietnam};
use crate::service::{
    Actor, AddSeat, Health, ImageView, PublishRequest, SeatDetails, SeatView, Service,
    ServiceError, VersionView,
};

pub const SESSION_COOKIE: &str = "khoi_session";
pub const LANG_COOKIE: &str = "khoi_lang";
/// Form posts are small; uploads go through the API with a header token.
const FORM_LIMIT: usize = 256 * 1024;

const APP_CSS: &str = include_str!("../../../web/static/app.css");
const APP_JS: &str = include_str!("../../../web/static/app.js");

#[derive(Debug, Clone)]
pub struct WebState {
    pub service: Arc<Service>,
    pub auth: Arc<Auth>,
    pub scheduler: Arc<Scheduler>,
    /// Set the Secure flag on cookies: only when users reach the page over
    /// HTTPS (a TLS-terminating proxy), or logins over plain HTTP break.
    pub secure_cookies: bool,
}

impl WebState {
    fn api(&self) -> ApiState {
        ApiState {
            service: Arc::clone(&self.service),
            source: "web".into(),
            scheduler: Some(Arc::clone(&self.scheduler)),
            auth: Some(Arc::clone(&self.auth)),
        }
    }
}

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
    fn actor(&self) -> Actor {
        Actor {
            name: self.session.user.clone(),
            source: self.addr.clone(),
        }
    }
}

pub fn router(st: WebState) -> Router {
    let api = crate::api::router(st.api());
    Router::new()
        .route("/", get(dashboard))
        .route("/login", get(login_page).post(login))
        .route("/setup", get(setup_page).post(setup))
        .route("/logout", post(logout))
        .route("/lang/{code}", get(set_lang))
        .route("/static/app.css", get(css))
        .route("/static/app.js", get(js))
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/images", get(images_page))
        .route("/images/import", post(image_import))
        .route("/images/{name}", get(image_page))
        .route("/images/{name}/delete", post(image_delete))
        .route("/images/{name}/draft", post(draft_open))
        .route("/images/{name}/draft/publish", post(draft_publish))
        .route("/images/{name}/draft/discard", post(draft_discard))
        .route("/images/{name}/rollback", post(rollback))
        .route("/images/{name}/versions/{n}/delete", post(version_delete))
        .route("/seats", get(seats_page).post(seat_add))
        .route("/seats/enrol", post(seat_enrol))
        .route("/seats/reset-all", post(seats_reset_all))
        .route("/seats/{name}", get(seat_page).post(seat_edit))
        .route("/seats/{name}/reset", post(seat_reset))
        .route("/seats/{name}/maintenance", post(seat_maintenance))
        .route("/seats/{name}/delete", post(seat_delete))
        .route("/schedule", get(schedule_page).post(schedule_save))
        .route("/schedule/run", post(schedule_run))
        .route("/audit", get(audit_page))
        .route("/audit.csv", get(audit_csv))
        .route("/users", get(users_page).post(user_add))
        .route("/users/{name}", post(user_edit))
        .route("/users/{name}/delete", post(user_delete))
        .with_state(st.clone())
        .nest("/api", api)
        .layer(middleware::from_fn_with_state(st, guard))
}

/// What the binary passes from its config.
#[derive(Debug, Clone)]
pub struct AdminOptions {
    /// `None`: no web page, but the nightly reset still runs.
    pub listen: Option<SocketAddr>,
    pub initial_password: Option<String>,
    pub secure_cookies: bool,
    pub cron: String,
    /// `skip` or `force`.
    pub online: String,
}

/// Start the nightly reset and the web page (if it has an address); both
/// stop when `shutdown` is cancelled. Returns the page's bound address.
pub async fn start(
    service: Arc<Service>,
    opts: AdminOptions,
    shutdown: tokio_util::sync::CancellationToken,
    tasks: &mut tokio::task::JoinSet<()>,
) -> Result<Option<SocketAddr>, String> {
    let online: OnlinePolicy = opts
        .online
        .parse()
        .map_err(|e: ServiceError| e.to_string())?;
    let scheduler = Arc::new(
        Scheduler::new(
            Arc::clone(&service),
            Arc::new(crate::schedule::SystemClock),
            ScheduleSettings {
                cron: opts.cron.clone(),
                online,
            },
        )
        .map_err(|e| e.to_string())?,
    );
    tasks.spawn(Arc::clone(&scheduler).run(shutdown.clone()));
    let Some(addr) = opts.listen else {
        return Ok(None);
    };
    let state = Arc::clone(service.state());
    let pw = opts.initial_password.clone();
    let auth = tokio::task::spawn_blocking(move || Auth::new(state, pw.as_deref()))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen for the admin page on {addr}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    if let Some(token) = auth.setup_token() {
        // The one way to the first admin account: whoever can read the
        // server's log (root, the service account) can create it.
        let url = format!("http://{bound}/setup?token={token}");
        tracing::warn!("no admin account yet; create one at {url}");
        println!("khoi: no admin account yet; open {url} to create it (the link works once)");
    }
    tracing::info!("admin page on http://{bound}");
    let app = router(WebState {
        service,
        auth: Arc::new(auth),
        scheduler,
        secure_cookies: opts.secure_cookies,
    });
    tasks.spawn(async move {
        let served = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
        if let Err(e) = served {
            tracing::error!("admin page failed: {e}");
        }
    });
    Ok(Some(bound))
}

// ---------------------------------------------------------------- guard ----

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

fn lang_of(headers: &HeaderMap) -> Lang {
    cookie(headers, LANG_COOKIE).map_or(Lang::Vi, |c| Lang::from_code(&c))
}

/// Browsers say where a request comes from; a state change must come from
/// this site. Clients that send neither header (curl, scripts) still need
/// the session's CSRF token.
fn same_origin(headers: &HeaderMap) -> bool {
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
    if users {
        Role::Admin
    } else if path == "/logout" || matches!(*method, Method::GET | Method::HEAD) {
        Role::Viewer
    } else {
        Role::Operator
    }
}

fn deny(api: bool, status: StatusCode, lang: Lang, key: &str) -> Response {
    let msg = crate::i18n::t(lang, key);
    if api {
        (
            status,
            Json(ErrorBody {
                error: msg.to_string(),
                field: None,
            }),
        )
            .into_response()
    } else {
        error_page(lang, status, msg)
    }
}

fn peer(req: &Request) -> String {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "-".to_string(), |c| c.0.ip().to_string())
}

pub async fn guard(State(st): State<WebState>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let lang = lang_of(req.headers());
    let api = path.starts_with("/api/");
    let changes = !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);
    if changes && !same_origin(req.headers()) {
        return deny(api, StatusCode::FORBIDDEN, lang, "err.cross_site");
    }
    let public = matches!(
        path.as_str(),
        "/login" | "/setup" | "/healthz" | "/metrics" | "/static/app.css" | "/static/app.js"
    ) || path.starts_with("/lang/");
    let addr = peer(&req);
    req.extensions_mut().insert(PeerAddr(addr.clone()));
    if public {
        return next.run(req).await;
    }
    let found =
        cookie(req.headers(), SESSION_COOKIE).and_then(|id| st.auth.session(&id).map(|s| (id, s)));
    let Some((sid, session)) = found else {
        return if api {
            deny(true, StatusCode::UNAUTHORIZED, lang, "err.login_required")
        } else {
            Redirect::to("/login").into_response()
        };
    };
    if session.role < required_role(&method, &path) {
        return deny(api, StatusCode::FORBIDDEN, lang, "err.forbidden");
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
                    return deny(api, StatusCode::PAYLOAD_TOO_LARGE, lang, "err.too_large");
                };
                let token = form_urlencoded_field(&bytes, "_csrf");
                req = Request::from_parts(parts, Body::from(bytes));
                token.is_some_and(|t| same_token(&t, &session.csrf))
            }
            None => false,
        };
        if !ok {
            return deny(api, StatusCode::FORBIDDEN, lang, "err.csrf");
        }
    }
    req.extensions_mut().insert(Actor {
        name: session.user.clone(),
        source: addr.clone(),
    });
    req.extensions_mut().insert(Ctx {
        sid,
        session,
        addr,
        lang,
    });
    next.run(req).await
}

fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"))
}

fn form_urlencoded_field(body: &[u8], name: &str) -> Option<String> {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
        .ok()?
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

// ---------------------------------------------------------------- pages ----

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
        crate::i18n::t(self.lang, key)
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
        self.t(match self.role {
            Role::Viewer => "role.viewer",
            Role::Operator => "role.operator",
            Role::Admin => "role.admin",
        })
    }
}

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

fn render(t: &impl Template) -> Response {
    match t.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!("template: {e}");
            (StatusCode::INTERNAL_SERVER_ERROR, "template error").into_response()
        }
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorTpl {
    lang: Lang,
    status: u16,
    message: String,
}

impl ErrorTpl {
    fn t(&self, key: &str) -> &'static str {
        crate::i18n::t(self.lang, key)
    }
}

fn error_page(lang: Lang, status: StatusCode, message: &str) -> Response {
    let mut r = render(&ErrorTpl {
        lang,
        status: status.as_u16(),
        message: message.to_string(),
    });
    *r.status_mut() = status;
    r
}

fn service_status(e: &ServiceError) -> StatusCode {
    match e {
        ServiceError::NotFound(_) => StatusCode::NOT_FOUND,
        ServiceError::Conflict(_) => StatusCode::CONFLICT,
        ServiceError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        ServiceError::Internal(m) => {
            tracing::error!("internal error on the web page: {m}");
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
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
/// not post again).
fn done(st: &WebState, ctx: &Ctx, to: &str, r: Result<String, ServiceError>) -> Response {
    match r {
        Ok(msg) => st.auth.flash(&ctx.sid, true, msg),
        Err(e) => {
            if matches!(e, ServiceError::Internal(_)) {
                tracing::error!("web action failed: {e}");
            }
            st.auth.flash(
                &ctx.sid,
                false,
                format!("{} {e}", crate::i18n::t(ctx.lang, "msg.failed")),
            );
        }
    }
    Redirect::to(to).into_response()
}

fn ok_msg(ctx: &Ctx, key: &str, subject: &str) -> String {
    format!("{} {subject}", crate::i18n::t(ctx.lang, key))
}

type FormMap = Form<HashMap<String, String>>;

fn field<'a>(f: &'a HashMap<String, String>, name: &str) -> &'a str {
    f.get(name).map_or("", |s| s.trim())
}

fn invalid(field: &str, reason: &str) -> ServiceError {
    ServiceError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

fn parse_opt_u32(f: &HashMap<String, String>, name: &str) -> Result<Option<u32>, ServiceError> {
    let v = field(f, name);
    if v.is_empty() || v == "latest" {
        return Ok(None);
    }
    v.parse()
        .map(Some)
        .map_err(|_| invalid(name, "must be a version number or empty for the latest"))
}

fn parse_gib(f: &HashMap<String, String>, name: &str) -> Result<Option<u64>, ServiceError> {
    let v = field(f, name);
    if v.is_empty() {
        return Ok(None);
    }
    let n: u64 = v
        .parse()
        .map_err(|_| invalid(name, "must be a whole number of GiB (0 = server default)"))?;
    n.checked_mul(1 << 30)
        .map(Some)
        .ok_or_else(|| invalid(name, "too large"))
}

fn parse_policy(f: &HashMap<String, String>) -> Result<Option<ResetPolicy>, ServiceError> {
    let v = field(f, "policy");
    if v.is_empty() {
        return Ok(None);
    }
    v.parse()
        .map(Some)
        .map_err(|e: String| invalid("policy", &e))
}

// ---- public ----

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

async fn metrics(State(st): State<WebState>) -> Response {
    let svc = Arc::clone(&st.service);
    let text = call(move || {
        svc.refresh_overlay_metrics();
        Ok(svc.metrics().encode())
    })
    .await
    .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
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
        .filter(|b| b.starts_with('/') && !b.starts_with("//"))
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

#[derive(Template)]
#[template(path = "login.html")]
struct LoginTpl {
    lang: Lang,
    error: String,
    setup: bool,
}

impl LoginTpl {
    fn t(&self, key: &str) -> &'static str {
        crate::i18n::t(self.lang, key)
    }
    fn code(&self) -> &'static str {
        self.lang.code()
    }
}

async fn login_page(State(st): State<WebState>, headers: HeaderMap) -> Response {
    render(&LoginTpl {
        lang: lang_of(&headers),
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

async fn login(
    State(st): State<WebState>,
    headers: HeaderMap,
    Extension(PeerAddr(peer_addr)): Extension<PeerAddr>,
    Form(f): FormMap,
) -> Response {
    let lang = lang_of(&headers);
    let addr = peer_addr;
    let name = field(&f, "name").to_string();
    let password = f.get("password").cloned().unwrap_or_default();
    let auth = Arc::clone(&st.auth);
    let a = addr.clone();
    let n = name.clone();
    let r = tokio::task::spawn_blocking(move || auth.login(&n, &password, &a))
        .await
        .unwrap_or_else(|e| Err(LoginError::Service(ServiceError::Internal(e.to_string()))));
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
            let mut resp = Redirect::to("/").into_response();
            if let Ok(v) = HeaderValue::from_str(&session_cookie(&st, &id, 8 * 3600)) {
                resp.headers_mut().insert(header::SET_COOKIE, v);
            }
            resp
        }
        Err(e) => {
            st.service.metrics().logins_failed.inc();
            st.service
                .audit(&actor, "login.failed", &name, &e.to_string());
            let (status, key) = match e {
                LoginError::Limited(_) => (StatusCode::TOO_MANY_REQUESTS, "login.limited"),
                LoginError::Invalid => (StatusCode::UNAUTHORIZED, "login.invalid"),
                LoginError::Service(_) => (StatusCode::INTERNAL_SERVER_ERROR, "msg.failed"),
            };
            let mut r = render(&LoginTpl {
                lang,
                error: crate::i18n::t(lang, key).to_string(),
                setup: false,
            });
            *r.status_mut() = status;
            r
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
        crate::i18n::t(self.lang, key)
    }
    fn code(&self) -> &'static str {
        self.lang.code()
    }
}

async fn setup_page(headers: HeaderMap, Query(q): Query<TokenQuery>) -> Response {
    render(&SetupTpl {
        lang: lang_of(&headers),
        token: q.token.unwrap_or_default(),
        error: String::new(),
    })
}

async fn setup(
    State(st): State<WebState>,
    headers: HeaderMap,
    Extension(PeerAddr(peer_addr)): Extension<PeerAddr>,
    Form(f): FormMap,
) -> Response {
    let lang = lang_of(&headers);
    let token = field(&f, "token").to_string();
    let name = field(&f, "name").to_string();
    let password = f.get("password").cloned().unwrap_or_default();
    let auth = Arc::clone(&st.auth);
    let (n, t) = (name.clone(), token.clone());
    match call(move || auth.complete_setup(&t, &n, &password)).await {
        Ok(()) => {
            let actor = Actor {
                name: name.clone(),
                source: peer_addr,
            };
            st.service.audit_args(
                &actor,
                "user.add",
                &name,
                "role admin (first start)",
                &[("role", "admin")],
            );
            Redirect::to("/login").into_response()
        }
        Err(e) => {
            let status = service_status(&e);
            let mut r = render(&SetupTpl {
                lang,
                token,
                error: e.to_string(),
            });
            *r.status_mut() = status;
            r
        }
    }
}

async fn logout(State(st): State<WebState>, Extension(ctx): Extension<Ctx>) -> Response {
    st.auth.logout(&ctx.sid);
    st.service
        .audit(&ctx.actor(), "logout", &ctx.session.user, "");
    let mut r = Redirect::to("/login").into_response();
    if let Ok(v) = HeaderValue::from_str(&session_cookie(&st, "", 0)) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

// ---- dashboard ----

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
}

fn seat_rows(svc: &Service) -> Result<Vec<SeatRow>, ServiceError> {
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
            SeatRow {
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
}

async fn dashboard(State(st): State<WebState>, Extension(ctx): Extension<Ctx>) -> Response {
    let svc = Arc::clone(&st.service);
    let r = call(move || {
        let seats = seat_rows(&svc)?;
        let health = svc.health();
        let unknown = svc.state().unknown_macs(50)?;
        Ok((seats, health, unknown, svc.images()))
    })
    .await;
    match r {
        Ok((seats, health, unknown, images)) => {
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
            })
        }
        Err(e) => error_page(ctx.lang, service_status(&e), &e.to_string()),
    }
}

// ---- images ----

#[derive(Template)]
#[template(path = "images.html")]
struct ImagesTpl {
    p: Page,
    images: Vec<ImageView>,
    staging: String,
}

async fn images_page(State(st): State<WebState>, Extension(ctx): Extension<Ctx>) -> Response {
    render(&ImagesTpl {
        p: Page::new(&st, &ctx, "images"),
        images: st.service.images(),
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
        r.map(|v| {
            format!(
                "{} {name} v{}",
                crate::i18n::t(ctx.lang, "msg.imported"),
                v.number
            )
        }),
    )
}

#[derive(Template)]
#[template(path = "image.html")]
struct ImageTpl {
    p: Page,
    image: ImageView,
    versions: Vec<VersionView>,
    maintenance: Vec<SeatRow>,
}

async fn image_page(
    State(st): State<WebState>,
    Extension(ctx): Extension<Ctx>,
    Path(name): Path<String>,
) -> Response {
    let svc = Arc::clone(&st.service);
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
        Ok((image, versions, maintenance))
    })
    .await;
    match r {
        Ok((image, versions, maintenance)) => render(&ImageTpl {
            p: Page::new(&st, &ctx, "images"),
            image,
            versions,
            maintenance,
        }),
        Err(e) => error_page(ctx.lang, service_status(&e), &e.to_string()),
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
    };
    let n = name.clone();
    let r = call(move || svc.draft_publish_with(&who, &n, &req)).await;
    done(
        &st,
        &ctx,
        &format!("/images/{name}"),
        r.map(|v| {
            format!(
                "{} v{}",
                crate::i18n::t(ctx.lang, "msg.published"),
                v.number
            )
        }),
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
        svc.rollback(&who, &n, to)
    })
    .await;
    done(
        &st,
        &ctx,
        &format!("/images/{name}"),
        r.map(|v| {
            format!(
                "{} v{}",
                crate::i18n::t(ctx.lang, "msg.current_now"),
                v.number
            )
        }),
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
        r.map(|n| format!("{} v{n}", crate::i18n::t(ctx.lang, "msg.deleted"))),
    )
}

// ---- seats ----

#[derive(Template)]
#[template(path = "seats.html")]
struct SeatsTpl {
    p: Page,
    seats: Vec<SeatRow>,
    images: Vec<ImageView>,
    unknown: Vec<UnknownMac>,
    mac: String,
}

#[derive(Debug, serde::Deserialize)]
struct MacQuery {
    mac: Option<String>,
}

async fn seats_page(
    State(st): State<WebState>,
    Extension(ctx): Extension<Ctx>,
    Query(q): Query<MacQuery>,
) -> Response {
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
        }),
        Err(e) => error_page(ctx.lang, service_status(&e), &e.to_string()),
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
    let r = call(move || svc.add_seat(&who, &add_seat_req(&f)?)).await;
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
        r.map(|rep| {
            format!(
                "{} {}",
                crate::i18n::t(ctx.lang, "msg.reset"),
                rep.reset.len()
            )
        }),
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
}

async fn seat_page(
    State(st): State<WebState>,
    Extension(ctx): Extension<Ctx>,
    Path(name): Path<String>,
) -> Response {
    let svc = Arc::clone(&st.service);
    let r = call(move || {
        let d = svc.seat(&name)?;
        let versions = svc.versions(&d.seat.image).unwrap_or_default();
        let events = svc.state().events(Some(&name), 20)?;
        Ok((d, versions, events, svc.images()))
    })
    .await;
    match r {
        Ok((d, versions, events, images)) => {
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
                d,
                images,
                versions,
                events,
            })
        }
        Err(e) => error_page(ctx.lang, service_status(&e), &e.to_string()),
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
        };
        svc.update_seat(&who, &n, &up)
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
    let key = if on {
        "msg.maintenance_on"
    } else {
        "msg.maintenance_off"
    };
    done(
        &st,
        &ctx,
        &format!("/seats/{name}"),
        r.map(|s| ok_msg(&ctx, key, &s.name)),
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

// ---- schedule ----

#[derive(Template)]
#[template(path = "schedule.html")]
struct ScheduleTpl {
    p: Page,
    cron: String,
    force: bool,
    next_run: Option<i64>,
    last_run: Option<i64>,
    runs: Vec<Event>,
}

async fn schedule_page(State(st): State<WebState>, Extension(ctx): Extension<Ctx>) -> Response {
    let sch = Arc::clone(&st.scheduler);
    let (view, runs) = call(move || Ok((sch.view(), sch.history(30))))
        .await
        .unwrap_or_else(|_| (st.scheduler.view(), Vec::new()));
    render(&ScheduleTpl {
        p: Page::new(&st, &ctx, "schedule"),
        cron: view.cron,
        force: view.online == OnlinePolicy::Force,
        next_run: view.next_run,
        last_run: view.last_run,
        runs,
    })
}

async fn schedule_save(
    State(st): State<WebState>,
    Extension(ctx): Extension<Ctx>,
    Form(f): FormMap,
) -> Response {
    let sch = Arc::clone(&st.scheduler);
    let who = ctx.actor();
    let r = call(move || {
        let online: OnlinePolicy = match field(&f, "online") {
            "" => OnlinePolicy::Skip,
            o => o.parse()?,
        };
        sch.update(
            &who,
            &ScheduleSettings {
                cron: field(&f, "cron").to_string(),
                online,
            },
        )
    })
    .await;
    done(
        &st,
        &ctx,
        "/schedule",
        r.map(|()| ok_msg(&ctx, "msg.saved", "")),
    )
}

async fn schedule_run(State(st): State<WebState>, Extension(ctx): Extension<Ctx>) -> Response {
    let sch = Arc::clone(&st.scheduler);
    let who = ctx.actor();
    let r = call(move || sch.run_now(&who, "manual")).await;
    done(
        &st,
        &ctx,
        "/schedule",
        r.map(|rep| {
            format!(
                "{} {} / {} {}",
                crate::i18n::t(ctx.lang, "msg.reset"),
                rep.reset.len() + rep.forced.len(),
                crate::i18n::t(ctx.lang, "msg.skipped"),
                rep.skipped.len()
            )
        }),
    )
}

// ---- audit ----

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
) -> Response {
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

async fn audit_csv(
    State(st): State<WebState>,
    Extension(ctx): Extension<Ctx>,
    Query(mut q): Query<AuditQuery>,
) -> Response {
    q.limit = Some(q.limit.unwrap_or(100_000).min(100_000));
    let eq = match q.to_event_query() {
        Ok(eq) => eq,
        Err(e) => return error_page(ctx.lang, service_status(&e), &e.to_string()),
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
            (
                [
                    (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                    (
                        header::CONTENT_DISPOSITION,
                        "attachment; filename=\"khoi-audit.csv\"",
                    ),
                ],
                out,
            )
                .into_response()
        }
        Err(e) => error_page(ctx.lang, service_status(&e), &e.to_string()),
    }
}

// ---- users ----

#[derive(Template)]
#[template(path = "users.html")]
struct UsersTpl {
    p: Page,
    users: Vec<User>,
}

async fn users_page(State(st): State<WebState>, Extension(ctx): Extension<Ctx>) -> Response {
    let auth = Arc::clone(&st.auth);
    match call(move || auth.users()).await {
        Ok(users) => render(&UsersTpl {
            p: Page::new(&st, &ctx, "users"),
            users,
        }),
        Err(e) => error_page(ctx.lang, service_status(&e), &e.to_string()),
    }
}

async fn user_add(
    State(st): State<WebState>,
    Extension(ctx): Extension<Ctx>,
    Form(f): FormMap,
) -> Response {
    let auth = Arc::clone(&st.auth);
    let svc = Arc::clone(&st.service);
    let who = ctx.actor();
    let name = field(&f, "name").to_string();
    let n = name.clone();
    let r = call(move || {
        if auth.users()?.iter().any(|u| u.name == n) {
            return Err(ServiceError::Conflict(format!("user {n:?} already exists")));
        }
        let role = field(&f, "role").to_string();
        auth.put_user(&n, &role, f.get("password").map_or("", String::as_str))?;
        let role = role.to_string();
        svc.audit_args(
            &who,
            "user.add",
            &n,
            &format!("role {role}"),
            &[("role", &role)],
        );
        Ok(())
    })
    .await;
    done(
        &st,
        &ctx,
        "/users",
        r.map(|()| ok_msg(&ctx, "msg.saved", &name)),
    )
}

async fn user_edit(
    State(st): State<WebState>,
    Extension(ctx): Extension<Ctx>,
    Path(name): Path<String>,
    Form(f): FormMap,
) -> Response {
    let auth = Arc::clone(&st.auth);
    let svc = Arc::clone(&st.service);
    let who = ctx.actor();
    let n = name.clone();
    let r = call(move || {
        let role = field(&f, "role");
        if !role.is_empty() {
            auth.set_role(&n, role)?;
            let role = role.to_string();
            svc.audit_args(
                &who,
                "user.role",
                &n,
                &format!("role {role}"),
                &[("role", &role)],
            );
        }
        let pw = f.get("password").map_or("", String::as_str);
        if !pw.is_empty() {
            auth.set_password(&n, pw)?;
            svc.audit(&who, "user.password", &n, "password changed");
        }
        Ok(())
    })
    .await;
    done(
        &st,
        &ctx,
        "/users",
        r.map(|()| ok_msg(&ctx, "msg.saved", &name)),
    )
}

async fn user_delete(
    State(st): State<WebState>,
    Extension(ctx): Extension<Ctx>,
    Path(name): Path<String>,
) -> Response {
    let auth = Arc::clone(&st.auth);
    let svc = Arc::clone(&st.service);
    let who = ctx.actor();
    let n = name.clone();
    let r = call(move || {
        auth.remove_user(&n)?;
        svc.audit(&who, "user.remove", &n, "");
        Ok(())
    })
    .await;
    done(
        &st,
        &ctx,
        "/users",
        r.map(|()| ok_msg(&ctx, "msg.deleted", &name)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(fmt_time(0), "1970-01-01 07:00");
        assert_eq!(fmt_bytes(512), "512 B");
        assert_eq!(fmt_bytes(20 << 30), "20 GiB");
        assert_eq!(csv_cell("=cmd()"), "\"'=cmd()\"");
        assert_eq!(csv_cell("a\"b"), "\"a\"\"b\"");
    }

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
