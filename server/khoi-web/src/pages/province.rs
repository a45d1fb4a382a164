//! The publisher's province page: every site with its state (in sync,
//! behind, failing) from the signed status objects the sites write. The
//! data comes from the binary's sync runtime through [`ProvinceSource`],
//! so this crate knows nothing about buckets or signatures.

use std::sync::Arc;

use askama::Template;
use axum::extract::State;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Router};
use khoi_admin::{Actor, ServiceError};

use super::{Page, PageResult, call, done, render};
use crate::WebState;
use crate::guard::Ctx;
use crate::i18n::{Lang, t};

/// One site as the province page shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvinceSite {
    pub name: String,
    pub state: SiteState,
    /// Unix seconds of the site's last sync, if it reported one.
    pub last_sync: Option<i64>,
    pub seats: Option<u32>,
    /// Per image, the province versions the site holds, e.g. `win11: v1 v2`.
    pub held: String,
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SiteState {
    InSync,
    /// Versions missing.
    Behind(u32),
    Failing,
    Unknown,
}

/// A warm standby as its own page shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandbyView {
    pub primary: String,
    /// Unix seconds the last verified snapshot was taken at the primary.
    pub last_snapshot: Option<i64>,
    pub seats: usize,
    pub images_held: Vec<String>,
    pub images_missing: Vec<String>,
    /// When and from what it was promoted; `None`: standing by.
    pub promoted: Option<String>,
    /// Why the primary's last snapshot was refused.
    pub refused: Option<String>,
}

/// What the binary's province sync tells the pages.
pub trait ProvinceSource: Send + Sync + std::fmt::Debug {
    /// This Khoi's standby state, when it is (or was) a warm standby.
    fn standby(&self) -> Option<StandbyView> {
        None
    }
    /// Takes over from the primary (blocking); a sentence saying what was done.
    fn promote(&self, _actor: &Actor) -> Result<String, String> {
        Err("this server is not a standby (sync.role: standby)".into())
    }
    /// The sites, when this Khoi is the province's publisher.
    fn sites(&self) -> Option<Vec<ProvinceSite>>;
    /// Where version `n` of `image` came from: the province's version
    /// number, or `None` for a version made here.
    fn origin(&self, image: &str, n: u32) -> Option<u32>;
}

pub fn router() -> Router<WebState> {
    Router::new()
        .route("/province", get(province_page))
        .route("/province/promote", post(promote))
}

struct Row {
    site: ProvinceSite,
    state: String,
    class: &'static str,
}

fn state_text(lang: Lang, s: SiteState) -> (String, &'static str) {
    match s {
        SiteState::InSync => (t(lang, "province.state.in_sync").to_string(), "online"),
        SiteState::Behind(n) => (
            t(lang, "province.state.behind").replace("{n}", &n.to_string()),
            "booting",
        ),
        SiteState::Failing => (t(lang, "province.state.failing").to_string(), "fenced"),
        SiteState::Unknown => (t(lang, "province.state.unknown").to_string(), "offline"),
    }
}

#[derive(Template)]
#[template(path = "province.html")]
struct ProvinceTpl {
    p: Page,
    /// `None`: this Khoi is not a publisher.
    rows: Option<Vec<Row>>,
    standby: Option<StandbyView>,
}

async fn province_page(State(st): State<WebState>, Extension(ctx): Extension<Ctx>) -> PageResult {
    let rows = st.province.as_ref().and_then(|p| p.sites()).map(|sites| {
        sites
            .into_iter()
            .map(|site| {
                let (state, class) = state_text(ctx.lang, site.state);
                Row { site, state, class }
            })
            .collect()
    });
    let standby = st.province.as_ref().and_then(|p| p.standby());
    render(&ProvinceTpl {
        p: Page::new(&st, &ctx, "province"),
        rows,
        standby,
    })
}

/// The standby's "take over" button (admin only, see the guard).
async fn promote(State(st): State<WebState>, Extension(ctx): Extension<Ctx>) -> Response {
    let source = st.province.clone();
    let who = ctx.actor();
    let r = call(move || {
        let source = source.ok_or_else(|| {
            ServiceError::Conflict("this server is not a standby (sync.role: standby)".into())
        })?;
        source.promote(&who).map_err(ServiceError::Conflict)
    })
    .await;
    done(&st, &ctx, "/province", r)
}

/// The origin column of the image page, in the reader's language.
pub(super) fn origin_text(
    province: Option<&Arc<dyn ProvinceSource>>,
    lang: Lang,
    image: &str,
    n: u32,
) -> String {
    match province.and_then(|p| p.origin(image, n)) {
        Some(pv) => t(lang, "version.origin.province").replace("{n}", &pv.to_string()),
        None => t(lang, "version.origin.local").to_string(),
    }
}
