//! The device API: the offline profile, pull, fetch, push, and the counts
//! and changes asked at the start of a sync.
//!
//! `POST /v1/sync/changes` answers, per table of the caller's profile,
//! whether any row changed after the device's cursor: one indexed
//! `EXISTS (... WHERE _seq > ?)` per table instead of a pull, so a device
//! skips the download (and the server the row predicate and page encoding)
//! of tables with nothing new.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use fieldsync_protocol::profile::SyncProfile;
use fieldsync_protocol::protocol::{
    ChangesRequest, ChangesResponse, CountsRequest, CountsResponse, DEFAULT_PAGE_SIZE,
    FetchRequest, FetchResponse, PushRequest, PushResponse, codes,
};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::auth::{authenticate, device_id};
use super::request::{blocking, query, read_json};
use crate::App;
use crate::db::{Db, StoreError, StoreResult};
use crate::error::{ApiError, ApiResult};

/// `GET /v1/profile`: the offline profile issued to the caller.
pub async fn profile(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> ApiResult<Json<SyncProfile>> {
    let user = authenticate(&app, &headers).await?;
    let db = app.db.clone();
    let device = device_id(&headers);
    let profile = blocking(move || {
        if let Some(d) = &device {
            db.touch_device(d, &user.id, false, None)?;
        }
        db.sync_profile(&user)
    })
    .await?;
    Ok(Json(profile))
}

#[derive(Debug, Deserialize)]
pub struct PullQuery {
    table: String,
    #[serde(default)]
    cursor: String,
    limit: Option<u32>,
    #[serde(default)]
    total: bool,
    profile_version: Option<i64>,
}

/// `GET /v1/sync/pull`: one page of a table's changes.
pub async fn pull(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    q: Result<Query<PullQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let user = authenticate(&app, &headers).await?;
    let q = query(q)?;
    let db = app.db.clone();
    let device = device_id(&headers);
    let page = blocking(move || {
        let profile = db.sync_profile(&user)?;
        let table = db.synced_table(&profile, q.profile_version, &q.table)?;
        let page = db.pull(
            &user,
            &profile,
            table,
            &q.cursor,
            q.limit.unwrap_or(DEFAULT_PAGE_SIZE),
            q.total,
        )?;
        if let Some(d) = device.as_ref().filter(|_| !page.head.has_more) {
            db.touch_device(d, &user.id, true, None)?;
        }
        Ok::<_, StoreError>(page)
    })
    .await?;
    app.metrics
        .pull_page(&page.head.table, page.rows, page.removed, page.json.len());
    tracing::info!(
        table = %page.head.table,
        rows = page.rows,
        removed = page.removed,
        has_more = page.head.has_more,
        "pull page served"
    );
    if !app.pull_delay.is_zero() {
        tokio::time::sleep(app.pull_delay).await;
    }
    // The page is JSON already (`crate::page`); the header is what `Json`
    // would have set.
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )],
        page.json,
    )
        .into_response())
}

/// `POST /v1/sync/fetch`: rows of a table whose column holds one of the
/// given values and that the caller's offline profile selects (related rows
/// that arrived without a change of their own).
pub async fn fetch(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<FetchResponse>> {
    let user = authenticate(&app, &headers).await?;
    let request: FetchRequest = read_json(&app, &headers, body).await?;
    let db = app.db.clone();
    let response = blocking(move || {
        let profile = db.sync_profile(&user)?;
        let table = db.synced_table(&profile, request.profile_version, &request.table)?;
        db.fetch(&profile, table, &request.column, &request.values)
    })
    .await?;
    Ok(Json(response))
}

/// `POST /v1/sync/push`: applies a device's outbox batch.
pub async fn push(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<PushResponse>> {
    let user = authenticate(&app, &headers).await?;
    let request: PushRequest = read_json(&app, &headers, body).await?;
    let db = app.db.clone();
    let device = device_id(&headers);
    let (results, request) = blocking(move || {
        let profile = db.sync_profile(&user)?;
        let results = db.push(&user, device.as_deref(), &profile, &request.mutations)?;
        if let Some(d) = &device {
            db.touch_device(d, &user.id, false, None)?;
        }
        Ok::<_, StoreError>((results, request))
    })
    .await?;
    for (m, r) in request.mutations.iter().zip(&results) {
        app.metrics.push_outcome(&m.table, r.status);
    }
    tracing::info!(mutations = results.len(), "push applied");
    Ok(Json(PushResponse { results }))
}

/// `POST /v1/sync/counts`: per table, the exact number of entries a pull
/// from the device's cursor sends (`Db::count_entries`), asked once at the
/// start of a sync's downloads so its progress has its total from the
/// first page. Tables outside the caller's profile and cursors the server
/// did not issue are left out of the answer.
pub async fn counts(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<CountsResponse>> {
    let (profile_version, tables) = per_table(
        &app,
        &headers,
        body,
        |r: CountsRequest| r.tables,
        Db::count_tables,
    )
    .await?;
    Ok(Json(CountsResponse {
        profile_version,
        tables,
    }))
}

/// `POST /v1/sync/changes`: per table, whether anything changed after the
/// device's cursor (`Db::tables_changed`). Tables outside the caller's
/// profile are ignored; a cursor the server did not issue, or a table still
/// in its first download, answers `true` (download).
pub async fn changes(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<ChangesResponse>> {
    let (profile_version, tables) = per_table(
        &app,
        &headers,
        body,
        |r: ChangesRequest| r.tables,
        Db::tables_changed,
    )
    .await?;
    Ok(Json(ChangesResponse {
        profile_version,
        tables,
    }))
}

/// Something per table of the profile, by table name.
type ByTable<T> = BTreeMap<String, T>;

/// Most tables one counts or changes request may name.
const MAX_TABLES_PER_REQUEST: usize = 256;

/// A per-table question a device asks at the start of a sync (counts,
/// changes): the caller authenticated, the request's cursors by table (at
/// most [`MAX_TABLES_PER_REQUEST`]), answered by `answer` under the caller's
/// profile. Returns the profile's version and the answer by table.
async fn per_table<R: DeserializeOwned, T: Send + 'static>(
    app: &Arc<App>,
    headers: &HeaderMap,
    body: Body,
    cursors: impl FnOnce(R) -> ByTable<String>,
    answer: fn(&Db, &SyncProfile, &ByTable<String>) -> StoreResult<ByTable<T>>,
) -> ApiResult<(i64, ByTable<T>)> {
    let user = authenticate(app, headers).await?;
    let cursors = cursors(read_json(app, headers, body).await?);
    if cursors.len() > MAX_TABLES_PER_REQUEST {
        return Err(ApiError::bad_request(
            codes::BAD_REQUEST,
            format!("at most {MAX_TABLES_PER_REQUEST} tables per request"),
        ));
    }
    let db = app.db.clone();
    blocking(move || {
        let profile = db.sync_profile(&user)?;
        let tables = answer(&db, &profile, &cursors)?;
        Ok::<_, StoreError>((profile.version, tables))
    })
    .await
}
