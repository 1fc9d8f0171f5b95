//! The console's Sync Errors page (Settings > Sync Errors in the product):
//! every logged conflict and rejected change with its time, type, message,
//! table, record, user, action, and the device's data beside the server's
//! as readable field tables; filters by user, table and type; and a Retry
//! action that re-applies the device's change ([`crate::db::Db::retry_sync_error`]).

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use crate::App;
use crate::api::blocking;
use crate::console::auth::Admin;
use crate::console::html::{
    Section, esc, kv_table, notice, options, page, side_by_side, time, url_component,
};
use crate::console::{Form, error_page, html_response};
use crate::db::{DataCut, RetryOutcome, SyncErrorEntry, SyncErrorFilter, SyncErrorRetry};

/// Filters and notices of the Sync Errors page.
#[derive(Debug, Default, Deserialize)]
pub struct ErrorsQuery {
    user: Option<String>,
    table: Option<String>,
    kind: Option<String>,
    /// Only entries older than this id (the "Older" link).
    before: Option<i64>,
    retried: Option<i64>,
}

/// Entries shown on one page of the Sync Errors log.
const PAGE: u32 = 100;

fn non_empty(v: &Option<String>) -> Option<String> {
    v.as_ref()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty() && s.len() <= 256)
}

fn entry_html(e: &SyncErrorEntry, retry: Option<&SyncErrorRetry>, csrf: &str) -> String {
    let kind_label = match e.kind.as_str() {
        "conflict" => "Conflict",
        "rejected" => "Rejected",
        other => other,
    };
    let details = kv_table(
        "details",
        &[
            ("Time", time(&e.at)),
            ("Type", esc(kind_label)),
            ("Error code", format!("<code>{}</code>", esc(&e.code))),
            ("Table", esc(&e.table)),
            ("Record", format!("<code>{}</code>", esc(&e.record_id))),
            ("User", esc(&e.user_id)),
            ("Action", esc(&e.action)),
            (
                "Device",
                e.device_id
                    .as_deref()
                    .map(esc)
                    .unwrap_or_else(|| "<span class=\"muted\">not sent</span>".into()),
            ),
            ("Device based on version", e.base_version.to_string()),
            ("Server version", e.server_version.to_string()),
        ],
    );
    let cut_note = |whose: &str, cut: &DataCut| {
        format!(
            "{whose} data was {} bytes, too large to keep (SHA-256 {})",
            cut.bytes, cut.sha256
        )
    };
    let device_label = match &e.device_data_cut {
        Some(cut) => cut_note("the device's", cut),
        None if e.action == "delete" => "the device deleted the record".to_owned(),
        None => "no device data".to_owned(),
    };
    let mut compare = side_by_side(
        e.device_data.as_ref(),
        e.server_data.as_ref(),
        &device_label,
    );
    if let Some(cut) = &e.server_data_cut {
        let _ = write!(
            compare,
            "<p class=\"muted\">{}</p>",
            esc(&cut_note("The server's", cut))
        );
    }
    let action = match retry {
        _ if e.device_data_cut.is_some() => {
            "<p class=\"muted\">The device's change cannot be retried: its data was not kept.</p>".to_owned()
        }
        Some(r) if r.outcome == RetryOutcome::Applied => format!(
            "<p class=\"retried\">Retried {} by {} — the device's change was applied (record version {}).</p>",
            time(&r.at),
            esc(&r.retried_by),
            r.version
        ),
        _ => format!(
            "<form method=\"post\" action=\"/console/sync-errors/{id}/retry\" class=\"retry\" data-confirm=\"Re-apply the device's change to {table} {record}? It overwrites the server's version.\">
<input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">
<button type=\"submit\" class=\"primary\">Retry</button>
<span class=\"hint\">Re-applies the device's change as {user} would, without conflict detection.</span>
</form>{failed}",
            failed = retry
                .map(|r| format!(
                    "<p class=\"retry-failed\">Retried {} by {} — failed: {}</p>",
                    time(&r.at),
                    esc(&r.retried_by),
                    esc(r.message.as_deref().unwrap_or_default())
                ))
                .unwrap_or_default(),
            id = e.id,
            table = esc(&e.table),
            record = esc(&e.record_id),
            user = esc(&e.user_id),
            csrf = esc(csrf),
        ),
    };
    format!(
        "<article class=\"card sync-error\" id=\"sync-error-{id}\" data-kind=\"{kind}\">
<header><span class=\"badge {kind}\">{kind_label}</span> <span class=\"message\">{message}</span> {at}</header>
<div class=\"columns\"><div>{details}</div><div><h3>Device data and server data</h3>{compare}</div></div>
{action}
</article>",
        id = e.id,
        kind = esc(&e.kind),
        kind_label = esc(kind_label),
        message = esc(&e.message),
        at = time(&e.at),
    )
}

async fn render(
    app: &Arc<App>,
    admin: &Admin,
    q: ErrorsQuery,
    message: Option<String>,
    status: StatusCode,
) -> Response {
    let filter = SyncErrorFilter {
        user: non_empty(&q.user),
        table: non_empty(&q.table),
        kind: non_empty(&q.kind),
        before: q.before,
        limit: Some(PAGE),
    };
    let db = app.db.clone();
    let f = filter.clone();
    let loaded = blocking(move || {
        let entries = db.sync_errors(&f)?;
        let ids: Vec<i64> = entries.iter().map(|e| e.id).collect();
        let retries = db.sync_error_retries(&ids)?;
        let facets = db.sync_error_facets()?;
        Ok((entries, retries, facets))
    })
    .await;
    let (entries, retries, facets) = match loaded {
        Ok(v) => v,
        Err(e) => return error_page(&e),
    };
    let mut body = message.unwrap_or_default();
    if let Some((id, r)) = q.retried.and_then(|id| retries.get(&id).map(|r| (id, r))) {
        {
            body.push_str(&notice(
                "ok",
                &format!(
                    "Sync error #{id} retried: the device's change was applied (record version {}).",
                    r.version
                ),
            ));
        }
    }
    let _ = write!(
        body,
        "<form class=\"filters card\" method=\"get\" action=\"/console/sync-errors\">
<label>User <select name=\"user\">{}</select></label>
<label>Table <select name=\"table\">{}</select></label>
<label>Type <select name=\"kind\">{}</select></label>
<button type=\"submit\">Filter</button> <a href=\"/console/sync-errors\">Clear</a>
</form>",
        options(&facets.users, filter.user.as_deref(), "Any user"),
        options(&facets.tables, filter.table.as_deref(), "Any table"),
        options(&facets.kinds, filter.kind.as_deref(), "Any type"),
    );
    if entries.is_empty() {
        let filtered = filter.user.is_some() || filter.table.is_some() || filter.kind.is_some();
        body.push_str(&format!(
            "<p class=\"empty\">{}</p>",
            if filtered {
                "No sync errors match these filters."
            } else {
                "No sync errors have been logged. Conflicts appear here when conflict detection is on; rejected changes appear here always."
            }
        ));
    } else {
        let _ = write!(
            body,
            "<p class=\"count\">{} sync error{} shown, newest first{}.</p>",
            entries.len(),
            if entries.len() == 1 { "" } else { "s" },
            if filter.before.is_some() {
                ", older than the first page"
            } else {
                ""
            }
        );
        for e in &entries {
            body.push_str(&entry_html(e, retries.get(&e.id), &admin.csrf));
        }
        if let Some(last) = entries.last().filter(|_| entries.len() == PAGE as usize) {
            let mut href = format!("/console/sync-errors?before={}", last.id);
            for (name, value) in [
                ("user", &filter.user),
                ("table", &filter.table),
                ("kind", &filter.kind),
            ] {
                if let Some(v) = value {
                    let _ = write!(href, "&{name}={}", url_component(v));
                }
            }
            let _ = write!(
                body,
                "<nav class=\"pages\"><a href=\"/console/sync-errors\">Newest</a> <a class=\"older\" href=\"{}\">Older</a></nav>",
                esc(&href)
            );
        }
    }
    html_response(
        status,
        page(
            "Sync Errors",
            Section::SyncErrors,
            &admin.name,
            &admin.csrf,
            &body,
        ),
    )
}

/// `GET /console/sync-errors?user=&table=&kind=`.
pub async fn list(
    State(app): State<Arc<App>>,
    admin: Admin,
    q: Result<Query<ErrorsQuery>, QueryRejection>,
) -> Response {
    let q = q.map(|Query(q)| q).unwrap_or_default();
    render(&app, &admin, q, None, StatusCode::OK).await
}

/// `POST /console/sync-errors/{id}/retry`: re-applies the device's change.
pub async fn retry(
    State(app): State<Arc<App>>,
    admin: Admin,
    Path(id): Path<String>,
    form: Form,
) -> Response {
    if let Err(r) = admin.check_csrf(&form) {
        return *r;
    }
    let Ok(id) = id.parse::<i64>() else {
        return render(
            &app,
            &admin,
            ErrorsQuery::default(),
            Some(notice("error", "No such sync error.")),
            StatusCode::NOT_FOUND,
        )
        .await;
    };
    match crate::api::retry_sync_error(&app, id, admin.name.clone()).await {
        Ok(_) => Redirect::to(&format!(
            "/console/sync-errors?retried={}#sync-error-{}",
            url_component(&id.to_string()),
            id
        ))
        .into_response(),
        Err(e) if e.status.is_client_error() => {
            render(
                &app,
                &admin,
                ErrorsQuery::default(),
                Some(notice(
                    "error",
                    &format!("Retry of sync error #{id} failed: {}", e.message),
                )),
                e.status,
            )
            .await
        }
        Err(e) => error_page(&e),
    }
}
