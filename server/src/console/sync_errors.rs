//! The console's Sync Errors page (Settings > Sync Errors in the product):
//! every logged conflict and rejected change with its time, type, message,
//! table, record, user, action, and the device's data beside the server's
//! as readable field tables; filters by user, table and type; and a Retry
//! action that re-applies the device's change ([`crate::db::Db::retry_sync_error`]).
//! Maud templates.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{PreEscaped, html};
use serde::Deserialize;

use crate::App;
use crate::api::blocking;
use crate::console::auth::Admin;
use crate::console::html::{
    Section, kv_table, notice, options, page, side_by_side, time, url_component,
};
use crate::console::response::{Form, error_page, html_response};
use crate::db::{
    DataCut, RetryOutcome, StoreError, SyncErrorEntry, SyncErrorFilter, SyncErrorRetry,
};

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
    let text = |s: &str| html! { (s) }.into_string();
    let code = |s: &str| html! { code { (s) } }.into_string();
    let details = kv_table(
        "details",
        &[
            ("Time", time(&e.at)),
            ("Type", text(kind_label)),
            ("Error code", code(&e.code)),
            ("Table", text(&e.table)),
            ("Record", code(&e.record_id)),
            ("User", text(&e.user_id)),
            ("Action", text(&e.action)),
            (
                "Device",
                match e.device_id.as_deref() {
                    Some(d) => text(d),
                    None => html! { span.muted { "not sent" } }.into_string(),
                },
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
    let compare = side_by_side(
        e.device_data.as_ref(),
        e.server_data.as_ref(),
        &device_label,
    );
    let applied = retry.filter(|r| r.outcome == RetryOutcome::Applied);
    html! {
        article.card.sync-error id={ "sync-error-" (e.id) } data-kind=(e.kind) {
            header {
                span class={ "badge " (e.kind) } { (kind_label) }
                " "
                span.message { (e.message) }
                " "
                (PreEscaped(time(&e.at)))
            }
            div.columns {
                div { (PreEscaped(details)) }
                div {
                    h3 { "Device data and server data" }
                    (PreEscaped(compare))
                    @if let Some(cut) = &e.server_data_cut {
                        p.muted { (cut_note("The server's", cut)) }
                    }
                }
            }
            @if e.device_data_cut.is_some() {
                p.muted { "The device's change cannot be retried: its data was not kept." }
            } @else if let Some(r) = applied {
                p.retried {
                    "Retried " (PreEscaped(time(&r.at))) " by " (r.retried_by)
                    " — the device's change was applied (record version " (r.version) ")."
                }
            } @else {
                form.retry method="post" action={ "/console/sync-errors/" (e.id) "/retry" }
                    data-confirm={ "Re-apply the device's change to " (e.table) " " (e.record_id) "? It overwrites the server's version." } {
                    input type="hidden" name="csrf" value=(csrf);
                    button.primary type="submit" { "Retry" }
                    " "
                    span.hint { "Re-applies the device's change as " (e.user_id) " would, without conflict detection." }
                }
                @if let Some(r) = retry {
                    p.retry-failed {
                        "Retried " (PreEscaped(time(&r.at))) " by " (r.retried_by) " — failed: "
                        (r.message.as_deref().unwrap_or_default())
                    }
                }
            }
        }
    }
    .into_string()
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
        Ok::<_, StoreError>((entries, retries, facets))
    })
    .await;
    let (entries, retries, facets) = match loaded {
        Ok(v) => v,
        Err(e) => return error_page(&e),
    };
    let retried = q
        .retried
        .and_then(|id| retries.get(&id).map(|r| (id, r)))
        .filter(|(_, r)| r.outcome == RetryOutcome::Applied);
    let filtered = filter.user.is_some() || filter.table.is_some() || filter.kind.is_some();
    let older = entries
        .last()
        .filter(|_| entries.len() == PAGE as usize)
        .map(|last| {
            let mut href = format!("/console/sync-errors?before={}", last.id);
            for (name, value) in [
                ("user", &filter.user),
                ("table", &filter.table),
                ("kind", &filter.kind),
            ] {
                if let Some(v) = value {
                    href.push_str(&format!("&{name}={}", url_component(v)));
                }
            }
            href
        });
    let body = html! {
        (PreEscaped(message.unwrap_or_default()))
        @if let Some((id, r)) = retried {
            (PreEscaped(notice(
                "ok",
                &format!(
                    "Sync error #{id} retried: the device's change was applied (record version {}).",
                    r.version
                ),
            )))
        }
        form.filters.card method="get" action="/console/sync-errors" {
            label { "User " select name="user" { (PreEscaped(options(&facets.users, filter.user.as_deref(), "Any user"))) } }
            " "
            label { "Table " select name="table" { (PreEscaped(options(&facets.tables, filter.table.as_deref(), "Any table"))) } }
            " "
            label { "Type " select name="kind" { (PreEscaped(options(&facets.kinds, filter.kind.as_deref(), "Any type"))) } }
            " "
            button type="submit" { "Filter" }
            " "
            a href="/console/sync-errors" { "Clear" }
        }
        @if entries.is_empty() {
            p.empty {
                @if filtered {
                    "No sync errors match these filters."
                } @else {
                    "No sync errors have been logged. Conflicts appear here when conflict detection is on; rejected changes appear here always."
                }
            }
        } @else {
            p.count {
                (entries.len()) " sync error" @if entries.len() != 1 { "s" } " shown, newest first"
                @if filter.before.is_some() { ", older than the first page" }
                "."
            }
            @for e in &entries {
                (PreEscaped(entry_html(e, retries.get(&e.id), &admin.csrf)))
            }
            @if let Some(href) = older {
                nav.pages {
                    a href="/console/sync-errors" { "Newest" }
                    " "
                    a.older href=(href) { "Older" }
                }
            }
        }
    }
    .into_string();
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
    match crate::api::admin::retry_sync_error(&app, id, admin.name.clone()).await {
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
