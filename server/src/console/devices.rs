//! The console's Devices page: every device the server has seen, with its
//! user, last sync, the pending uploads its last sync left, its app version
//! and its last error (the device's own report, else its newest Sync
//! Errors entry). A maud template.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;

use crate::App;
use crate::api::blocking;
use crate::console::auth::Admin;
use crate::console::html::{Section, page, time, url_component};
use crate::console::response::{error_page, html_response};
use crate::console::telemetry;
use crate::error::ApiError;
use maud::{PreEscaped, html};

/// `GET /console/devices`.
pub async fn list(State(app): State<Arc<App>>, admin: Admin) -> Response {
    let db = app.db.clone();
    let loaded = blocking(move || {
        let devices = db.devices()?;
        let users: BTreeMap<String, String> =
            db.users()?.into_iter().map(|u| (u.id, u.name)).collect();
        let errors = db.device_last_errors()?;
        let reports = telemetry::read(&db)?.devices;
        Ok::<_, ApiError>((devices, users, errors, reports))
    })
    .await;
    let (devices, users, errors, reports) = match loaded {
        Ok(v) => v,
        Err(e) => return error_page(&e),
    };
    let muted = |text: &str| html! { span.muted { (text) } };
    let body = html! {
        @if devices.is_empty() {
            p.empty { "No device has contacted the server yet. A device appears here after its first sync." }
        } @else {
            p.count {
                (devices.len()) " device" @if devices.len() != 1 { "s" } " seen, most recent first."
            }
            table.grid.devices {
                thead { tr {
                    th scope="col" { "Device" } th scope="col" { "User" } th scope="col" { "Last sync" }
                    th scope="col" { "Last seen" } th scope="col" { "Pending uploads" }
                    th scope="col" { "App version" } th scope="col" { "Last error" }
                } }
                tbody {
                    @for d in &devices {
                        @let key = (d.id.clone(), d.user_id.clone());
                        @let report = reports.get(&key);
                        tr data-device=(d.id) {
                            td { code { (d.id) } }
                            td {
                                @match users.get(&d.user_id) {
                                    Some(name) if name != &d.user_id => {
                                        (name) " " span.muted { "(" (d.user_id) ")" }
                                    }
                                    _ => { (d.user_id) }
                                }
                            }
                            td {
                                @match d.last_sync_at.as_deref() {
                                    Some(at) => { (PreEscaped(time(at))) }
                                    None => { (muted("never completed")) }
                                }
                            }
                            td { (PreEscaped(time(&d.last_seen))) }
                            // From the device's sync telemetry: unknown while
                            // it sends none (telemetry off, or an older app).
                            td.num {
                                @match report.and_then(|r| r.pending_uploads) {
                                    Some(n) => { (n) }
                                    None => {
                                        span.muted title="The device has not sent sync telemetry that says (telemetry off, or an older app)" { "unknown" }
                                    }
                                }
                            }
                            td {
                                @match d.app_version.clone().or_else(|| report.and_then(|r| r.app_version.clone())) {
                                    Some(v) => { (v) }
                                    None => { (muted("not reported")) }
                                }
                            }
                            // The newest Sync Errors entry, linked, when there
                            // is one; else what the device list recorded.
                            td {
                                @match (errors.get(&key), &d.last_error) {
                                    (Some(e), _) => {
                                        a href={ "/console/sync-errors?user=" (url_component(&d.user_id)) } { (e.message) }
                                        " "
                                        span.muted { (PreEscaped(time(&e.at))) }
                                    }
                                    (None, Some(e)) => { (e) }
                                    (None, None) => { (muted("none")) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    .into_string();
    html_response(
        StatusCode::OK,
        page("Devices", Section::Devices, &admin.name, &admin.csrf, &body),
    )
}
