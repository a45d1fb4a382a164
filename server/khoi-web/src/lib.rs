//! Khoi's admin over HTTP, on top of the audited operations of
//! `khoi-admin`: the web page ([`pages`], one module per page family), the
//! JSON API ([`api`], also served on the CLI's control socket), logins and
//! sessions ([`auth`]), the request [`guard`] (session, CSRF, roles), form
//! reading ([`form`]), the one error type ([`error`]), the page's strings
//! ([`i18n`], files in `web/i18n`) and `/metrics`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::middleware;
use axum::routing::get;
use khoi_admin::schedule::{OnlinePolicy, ScheduleSettings, Scheduler, SystemClock};
use khoi_admin::{Service, ServiceError};

pub mod api;
pub mod auth;
pub mod error;
pub mod form;
pub mod guard;
pub mod i18n;
pub mod metrics;
pub mod pages;
pub mod policy;
pub mod server;

use crate::api::ApiState;
use crate::auth::Auth;
use crate::error::Replies;
use crate::i18n::Lang;
use crate::policy::HttpPolicy;

#[derive(Debug, Clone)]
pub struct WebState {
    pub service: Arc<Service>,
    pub auth: Arc<Auth>,
    pub scheduler: Arc<Scheduler>,
    /// Set the Secure flag on cookies: only when users reach the page over
    /// HTTPS (a TLS-terminating proxy), or logins over plain HTTP break.
    pub secure_cookies: bool,
    pub policy: Arc<HttpPolicy>,
    /// Province distribution, when the binary runs it.
    pub province: Option<Arc<dyn pages::province::ProvinceSource>>,
}

impl WebState {
    fn api(&self) -> ApiState {
        ApiState {
            service: Arc::clone(&self.service),
            source: "web".into(),
            scheduler: Some(Arc::clone(&self.scheduler)),
            auth: Some(Arc::clone(&self.auth)),
            setup_link: None,
        }
    }
}

/// The first admin's one-time setup link, for the control socket's owner
/// (`khoi setup-link`): a server run by a service manager has no terminal
/// to print it on, and a log file is the wrong place for it.
#[derive(Debug, Clone, Default)]
pub struct SetupLink(Arc<std::sync::OnceLock<(Arc<Auth>, String)>>);

impl SetupLink {
    /// The link while no admin account exists and the page runs.
    pub fn url(&self) -> Option<String> {
        let (auth, base) = self.0.get()?;
        auth.setup_token()
            .map(|t| format!("{base}/setup?token={t}"))
    }

    fn set(&self, auth: Arc<Auth>, base: String) {
        let _ = self.0.set((auth, base));
    }
}

/// The web page with its API under `/api`: every request passes the guard,
/// and every error is worded by [`error::reply`] in the page's language.
pub fn router(st: WebState) -> Router {
    let api = api::router(st.api());
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics::metrics))
        .merge(pages::router())
        .with_state(st.clone())
        .nest("/api", api)
        .layer(middleware::from_fn_with_state(st, guard::guard))
        .layer(middleware::from_fn_with_state(
            Replies {
                json_only: false,
                default_lang: Lang::Vi,
            },
            error::reply,
        ))
        .layer(middleware::from_fn(policy::security_headers))
}

/// What the binary passes from its config.
#[derive(Debug, Clone)]
pub struct AdminOptions {
    /// `None`: no web page, but the nightly reset still runs.
    pub listen: Option<SocketAddr>,
    pub initial_password: Option<String>,
    /// Mark cookies Secure although Khoi serves plain HTTP (behind an HTTPS
    /// proxy). With `tls` they are Secure anyway.
    pub secure_cookies: bool,
    pub cron: String,
    /// `skip` or `force`.
    pub online: String,
    /// HTTPS, and where its certificate comes from; `None`: plain HTTP.
    pub tls: Option<server::TlsSource>,
    /// Host names the page is reached by, besides its address.
    pub hosts: Vec<String>,
    /// Bearer token for `/metrics`; without one, `/metrics` answers only
    /// on a loopback page.
    pub metrics_token: Option<String>,
    pub trusted_proxy: Option<policy::TrustedProxy>,
    pub serve: server::ServeOptions,
    /// Filled once the page runs, for the control socket.
    pub setup_link: SetupLink,
    /// Province distribution (the province page, each version's origin).
    pub province: Option<Arc<dyn pages::province::ProvinceSource>>,
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
            Arc::new(SystemClock),
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
    let svc = Arc::clone(&service);
    let pw = opts.initial_password.clone();
    let auth = tokio::task::spawn_blocking(move || Auth::new(svc, pw.as_deref()))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let mut serve_opts = opts.serve.clone();
    let scheme = if let Some(src) = &opts.tls {
        let src = src.clone();
        let tls = tokio::task::spawn_blocking(move || server::load_tls(&src))
            .await
            .map_err(|e| e.to_string())??;
        if tls.created {
            tracing::warn!(
                "made a self-signed certificate for the admin page; \
                 check this SHA-256 fingerprint when the browser asks: {}",
                tls.fingerprint
            );
        } else {
            tracing::info!("admin page certificate SHA-256 {}", tls.fingerprint);
        }
        serve_opts.tls = Some(tls.config);
        "https"
    } else {
        "http"
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen for the admin page on {addr}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    let auth = Arc::new(auth);
    opts.setup_link
        .set(Arc::clone(&auth), format!("{scheme}://{bound}"));
    if let Some(token) = auth.setup_token() {
        // The one way to the first admin account. It goes to the terminal
        // of whoever started the server, never to a log file that others
        // (backups, log shippers) may read.
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            eprintln!(
                "khoi: no admin account yet; open {scheme}://{bound}/setup?token={token} \
                 to create it (the link works once)"
            );
        }
        tracing::warn!(
            "no admin account yet: run `khoi setup-link` on this server for the one-time \
             setup link, or set admin.initial_password"
        );
    }
    tracing::info!("admin page on {scheme}://{bound}");
    let loopback = bound.ip().is_loopback();
    let policy = HttpPolicy {
        hosts: Some(policy::HostCheck {
            names: opts.hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
            listen: bound.ip(),
        }),
        metrics: match (&opts.metrics_token, loopback) {
            (Some(t), _) => policy::MetricsAccess::Token(t.clone()),
            (None, true) => policy::MetricsAccess::Open,
            (None, false) => policy::MetricsAccess::Closed,
        },
        trusted_proxy: opts.trusted_proxy.clone(),
    };
    let app = router(WebState {
        service,
        auth,
        scheduler,
        secure_cookies: opts.secure_cookies || opts.tls.is_some(),
        policy: Arc::new(policy),
        province: opts.province.clone(),
    });
    tasks.spawn(server::serve(listener, app, serve_opts, shutdown));
    Ok(Some(bound))
}
