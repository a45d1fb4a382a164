//! The nightly reset: its settings, history and a manual run.

use std::sync::Arc;

use askama::Template;
use axum::extract::State;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Form, Router};
use khoi_admin::schedule::{OnlinePolicy, ScheduleSettings};
use khoi_state::Event;

use super::{Page, PageResult, call, done, ok_msg, render};
use crate::WebState;
use crate::form::{FormMap, field};
use crate::guard::Ctx;
use crate::i18n::t;

pub fn router() -> Router<WebState> {
    Router::new()
        .route("/schedule", get(schedule_page).post(schedule_save))
        .route("/schedule/run", post(schedule_run))
}

#[derive(Template)]
#[template(path = "schedule.html")]
struct ScheduleTpl {
    p: Page,
    cron: String,
    force: bool,
    next_run: Option<i64>,
    last_run: Option<i64>,
    runs: Vec<Event>,
    /// The seats still on when the last run began ("-" when none), if the
    /// last run recorded it.
    still_on: Option<String>,
}

async fn schedule_page(State(st): State<WebState>, Extension(ctx): Extension<Ctx>) -> PageResult {
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
        still_on: runs.first().and_then(|e| e.args.get("still_on").cloned()),
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
                t(ctx.lang, "msg.reset"),
                rep.reset.len() + rep.forced.len(),
                t(ctx.lang, "msg.skipped"),
                rep.skipped.len()
            )
        }),
    )
}
