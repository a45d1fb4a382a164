//! Users (admins only): accounts and their roles.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::post;
use axum::{Extension, Form, Router};
use khoi_state::User;

use super::{Page, PageResult, call, done, ok_msg, render};
use crate::WebState;
use crate::form::{FormMap, field, raw};
use crate::guard::Ctx;

pub fn router() -> Router<WebState> {
    Router::new()
        .route("/users", axum::routing::get(users_page).post(user_add))
        .route("/users/{name}", post(user_edit))
        .route("/users/{name}/delete", post(user_delete))
}

#[derive(Template)]
#[template(path = "users.html")]
struct UsersTpl {
    p: Page,
    users: Vec<User>,
}

async fn users_page(State(st): State<WebState>, Extension(ctx): Extension<Ctx>) -> PageResult {
    let svc = Arc::clone(&st.service);
    let users = call(move || svc.users()).await?;
    render(&UsersTpl {
        p: Page::new(&st, &ctx, "users"),
        users,
    })
}

async fn user_add(
    State(st): State<WebState>,
    Extension(ctx): Extension<Ctx>,
    Form(f): FormMap,
) -> Response {
    let auth = Arc::clone(&st.auth);
    let who = ctx.actor();
    let name = field(&f, "name").to_string();
    let n = name.clone();
    let r = call(move || auth.add_user(&who, &n, field(&f, "role"), raw(&f, "password"))).await;
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
    let who = ctx.actor();
    let n = name.clone();
    let sid = ctx.sid.clone();
    let r = call(move || {
        let role = field(&f, "role");
        if !role.is_empty() {
            auth.set_role(&who, &n, role)?;
        }
        let pw = raw(&f, "password");
        if !pw.is_empty() {
            auth.set_password(&who, &n, pw, Some(&sid))?;
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
    let who = ctx.actor();
    let n = name.clone();
    let r = call(move || auth.remove_user(&who, &n)).await;
    done(
        &st,
        &ctx,
        "/users",
        r.map(|()| ok_msg(&ctx, "msg.deleted", &name)),
    )
}
