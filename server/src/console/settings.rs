//! The console's Settings page: the conflict-detection switch
//! ("Set conflict detection for mobile offline synchronization"), a maud
//! template.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{PreEscaped, html};
use serde::Deserialize;

use crate::App;
use crate::api::blocking;
use crate::console::auth::Admin;
use crate::console::html::{Section, notice, page};
use crate::console::response::{Form, error_page, html_response};

/// Query of the Settings page.
#[derive(Debug, Default, Deserialize)]
pub struct SettingsQuery {
    saved: Option<String>,
}

fn render(admin: &Admin, on: bool, message: Option<String>) -> String {
    let body = html! {
        (PreEscaped(message.unwrap_or_default()))
        form.card method="post" action="/console/settings" {
            input type="hidden" name="csrf" value=(admin.csrf);
            fieldset {
                legend { "Set conflict detection for mobile offline synchronization" }
                p.current-setting {
                    "Currently: "
                    strong #conflict-state {
                        @if on { "Yes — conflicts are detected" } @else { "No — the device wins" }
                    }
                }
                label.choice {
                    input type="radio" name="conflict_detection" value="off" checked[!on];
                    " "
                    span {
                        strong { "No" }
                        " (default) — the server does not check for conflicts; a technician's offline change wins and overwrites a dispatcher's."
                    }
                }
                label.choice {
                    input type="radio" name="conflict_detection" value="on" checked[on];
                    " "
                    span {
                        strong { "Yes" }
                        " — the server checks; when a record changed since the device read it, the server's version wins and the device's change is logged in "
                        a href="/console/sync-errors" { "Sync Errors" }
                        "."
                    }
                }
            }
            button.primary type="submit" { "Save" }
        }
    };
    page(
        "Settings",
        Section::Settings,
        &admin.name,
        &admin.csrf,
        &body.into_string(),
    )
}

/// `GET /console/settings`.
pub async fn show(
    State(app): State<Arc<App>>,
    admin: Admin,
    q: Result<Query<SettingsQuery>, QueryRejection>,
) -> Response {
    let db = app.db.clone();
    match blocking(move || db.conflict_detection()).await {
        Ok(on) => {
            let saved = q
                .ok()
                .and_then(|Query(q)| q.saved)
                .map(|_| notice("ok", "Settings saved."));
            html_response(StatusCode::OK, render(&admin, on, saved))
        }
        Err(e) => error_page(&e),
    }
}

/// `POST /console/settings`: switches conflict detection.
pub async fn save(State(app): State<Arc<App>>, admin: Admin, form: Form) -> Response {
    if let Err(r) = admin.check_csrf(&form) {
        return *r;
    }
    let on = match form.get("conflict_detection") {
        Some("on") => true,
        Some("off") => false,
        _ => {
            let db = app.db.clone();
            let current = blocking(move || db.conflict_detection())
                .await
                .unwrap_or(false);
            return html_response(
                StatusCode::BAD_REQUEST,
                render(
                    &admin,
                    current,
                    Some(notice("error", "Choose Yes or No for conflict detection.")),
                ),
            );
        }
    };
    let db = app.db.clone();
    match blocking(move || db.set_conflict_detection(on)).await {
        Ok(()) => Redirect::to("/console/settings?saved=1").into_response(),
        Err(e) => error_page(&e),
    }
}
