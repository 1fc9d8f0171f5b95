//! The console's Devices page: every device the server has seen, with its
//! user, last sync, the pending uploads its last sync left, its app version
//! and its last error (the device's own report, else its newest Sync
//! Errors entry).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;

use crate::App;
use crate::api::blocking;
use crate::console::auth::Admin;
use crate::console::html::{Section, esc, page, time, url_component};
use crate::console::{error_page, html_response, telemetry};

const MUTED_NONE: &str = "<span class=\"muted\">not reported</span>";

/// `GET /console/devices`.
pub async fn list(State(app): State<Arc<App>>, admin: Admin) -> Response {
    let db = app.db.clone();
    let loaded = blocking(move || {
        let devices = db.devices()?;
        let users: BTreeMap<String, String> =
            db.users()?.into_iter().map(|u| (u.id, u.name)).collect();
        let errors = db.device_last_errors()?;
        let reports = telemetry::read(&db)?.devices;
        Ok((devices, users, errors, reports))
    })
    .await;
    let (devices, users, errors, reports) = match loaded {
        Ok(v) => v,
        Err(e) => return error_page(&e),
    };
    let mut body = String::new();
    if devices.is_empty() {
        body.push_str("<p class=\"empty\">No device has contacted the server yet. A device appears here after its first sync.</p>");
    } else {
        let _ = write!(
            body,
            "<p class=\"count\">{} device{} seen, most recent first.</p>
<table class=\"grid devices\"><thead><tr><th scope=\"col\">Device</th><th scope=\"col\">User</th><th scope=\"col\">Last sync</th><th scope=\"col\">Last seen</th><th scope=\"col\">Pending uploads</th><th scope=\"col\">App version</th><th scope=\"col\">Last error</th></tr></thead><tbody>",
            devices.len(),
            if devices.len() == 1 { "" } else { "s" }
        );
        for d in &devices {
            let key = (d.id.clone(), d.user_id.clone());
            let report = reports.get(&key);
            let user = match users.get(&d.user_id) {
                Some(name) if name != &d.user_id => {
                    format!(
                        "{} <span class=\"muted\">({})</span>",
                        esc(name),
                        esc(&d.user_id)
                    )
                }
                _ => esc(&d.user_id),
            };
            let last_sync = d
                .last_sync_at
                .as_deref()
                .map(time)
                .unwrap_or_else(|| "<span class=\"muted\">never completed</span>".into());
            // From the device's sync telemetry: unknown while it sends none
            // (telemetry off, or an app older than this report).
            let pending = report
                .and_then(|r| r.pending_uploads)
                .map(|n| n.to_string())
                .unwrap_or_else(|| {
                    "<span class=\"muted\" title=\"The device has not sent sync telemetry that says (telemetry off, or an older app)\">unknown</span>".into()
                });
            let version = d
                .app_version
                .clone()
                .or_else(|| report.and_then(|r| r.app_version.clone()))
                .map(|v| esc(&v))
                .unwrap_or_else(|| MUTED_NONE.into());
            // The newest Sync Errors entry, linked, when there is one; else
            // what the device list recorded.
            let last_error = match (errors.get(&key), &d.last_error) {
                (Some(e), _) => format!(
                    "<a href=\"/console/sync-errors?user={}\">{}</a> <span class=\"muted\">{}</span>",
                    url_component(&d.user_id),
                    esc(&e.message),
                    time(&e.at)
                ),
                (None, Some(e)) => esc(e),
                (None, None) => "<span class=\"muted\">none</span>".into(),
            };
            let _ = write!(
                body,
                "<tr data-device=\"{id}\"><td><code>{id}</code></td><td>{user}</td><td>{last_sync}</td><td>{seen}</td><td class=\"num\">{pending}</td><td>{version}</td><td>{last_error}</td></tr>",
                id = esc(&d.id),
                seen = time(&d.last_seen),
            );
        }
        body.push_str("</tbody></table>");
    }
    html_response(
        StatusCode::OK,
        page("Devices", Section::Devices, &admin.name, &admin.csrf, &body),
    )
}
