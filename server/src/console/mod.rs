//! The admin web console: server-rendered pages under `/console` for
//! administrators — the data model (view, publish a version), offline
//! profiles (view, edit, publish with inline
//! validation errors), the conflict-detection switch, Sync Errors (with a
//! Retry action), devices and telemetry charts. Signing in exchanges the
//! admin token for a database-backed session cookie ([`auth`]); device
//! tokens never reach it. Pages are plain HTML built with careful escaping
//! ([`html`]), one stylesheet and one small script embedded in the binary,
//! and charts drawn as inline SVG on the server ([`charts`]). [`router`] is
//! merged into the server's router by [`crate::router`].

pub mod auth;
pub mod charts;
pub mod devices;
pub mod html;
pub mod model;
pub mod profiles;
pub mod response;
pub mod settings;
pub mod sync_errors;
pub mod telemetry;

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use crate::App;
use crate::console::auth::Admin;

/// The console's routes; every one but the sign-in form and the two static
/// assets requires a console session.
pub fn router() -> Router<Arc<App>> {
    Router::new()
        .route("/console", get(home))
        .route("/console/", get(home))
        .route("/console/login", get(auth::login_page).post(auth::login))
        .route("/console/logout", post(auth::logout))
        .route("/console/model", get(model::show).post(model::publish))
        .route("/console/profiles", get(profiles::list))
        .route(
            "/console/profiles/{name}",
            get(profiles::show).post(profiles::publish),
        )
        .route(
            "/console/settings",
            get(settings::show).post(settings::save),
        )
        .route("/console/sync-errors", get(sync_errors::list))
        .route("/console/sync-errors/{id}/retry", post(sync_errors::retry))
        .route("/console/devices", get(devices::list))
        .route("/console/telemetry", get(telemetry::show))
        .route("/console/assets/console.css", get(stylesheet))
        .route("/console/assets/console.js", get(script))
        .layer(axum::middleware::map_response(security_headers))
}

/// Every console route (method, path pattern), for the access tests and
/// the OpenAPI check's exclusions.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/console"),
    ("GET", "/console/login"),
    ("POST", "/console/login"),
    ("POST", "/console/logout"),
    ("GET", "/console/model"),
    ("POST", "/console/model"),
    ("GET", "/console/profiles"),
    ("GET", "/console/profiles/{name}"),
    ("POST", "/console/profiles/{name}"),
    ("GET", "/console/settings"),
    ("POST", "/console/settings"),
    ("GET", "/console/sync-errors"),
    ("POST", "/console/sync-errors/{id}/retry"),
    ("GET", "/console/devices"),
    ("GET", "/console/telemetry"),
    ("GET", "/console/assets/console.css"),
    ("GET", "/console/assets/console.js"),
];

async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

/// `GET /console`: the signed-in start page is Sync Errors.
async fn home(_admin: Admin) -> Redirect {
    Redirect::to("/console/sync-errors")
}

async fn stylesheet() -> Response {
    asset(
        "text/css; charset=utf-8",
        include_str!("assets/console.css"),
    )
}

async fn script() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("assets/console.js"),
    )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}
