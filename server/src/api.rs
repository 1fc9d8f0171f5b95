//! HTTP handlers: the device API (`/v1/profile`, `/v1/sync/*`), the records
//! API for back-office users and online reads (`/v1/records/*`), and the
//! admin API (`/v1/admin/*`). Handlers authenticate, decode, and hand the
//! work to [`crate::db::Db`] on the blocking pool; they hold no state of
//! their own, so several instances can serve one database.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use fieldsync_protocol::profile::{OfflineProfile, SyncProfile};
use fieldsync_protocol::protocol::{
    DEFAULT_PAGE_SIZE, DEVICE_HEADER, FetchRequest, FetchResponse, LIMIT_EXCEEDED, PushRequest,
    PushResponse, RecordList, RecordResponse, RecordWrite, codes,
};
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::App;
use crate::db::{Role, SyncErrorFilter, User, hash_token};
use crate::error::{ApiError, ApiResult};
use crate::seed::{SeedSpec, generate};

/// Runs blocking storage work off the async threads.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("worker: {e}")))?
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("authorization")?.to_str().ok()?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))?;
    let token = token.trim();
    (!token.is_empty() && token.len() <= 512).then(|| token.to_owned())
}

fn device_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get(DEVICE_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| crate::db::device_id_ok(v))
        .map(str::to_owned)
}

/// The user behind the request's bearer token.
pub async fn authenticate(app: &Arc<App>, headers: &HeaderMap) -> ApiResult<User> {
    let token = bearer(headers).ok_or_else(ApiError::unauthorized)?;
    let db = app.db.clone();
    blocking(move || db.user_by_token(&token))
        .await?
        .ok_or_else(ApiError::unauthorized)
}

/// Checks admin credentials: the server's admin token, or an admin user's.
pub async fn authenticate_admin(app: &Arc<App>, headers: &HeaderMap) -> ApiResult<()> {
    authenticate_admin_as(app, headers).await.map(|_| ())
}

/// [`authenticate_admin`], answering who: `admin token` or `user <id>` (as
/// the console names its sessions).
pub async fn authenticate_admin_as(app: &Arc<App>, headers: &HeaderMap) -> ApiResult<String> {
    let token = bearer(headers).ok_or_else(ApiError::unauthorized)?;
    if constant_time_eq(
        hash_token(&token).as_bytes(),
        app.admin_token_hash.as_bytes(),
    ) {
        return Ok("admin token".to_owned());
    }
    let db = app.db.clone();
    match blocking(move || db.user_by_token(&token)).await? {
        Some(u) if u.role == Role::Admin => Ok(format!("user {}", u.id)),
        Some(_) => Err(ApiError::forbidden("admin credentials are required")),
        None => Err(ApiError::unauthorized()),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Reads and drops the rest of an authenticated request's body that is too
/// large, up to three times `limit`, holding none of it: a connection
/// closed with unread data is reset, and the client would lose the 413
/// while still sending.
async fn discard(mut body: Body, limit: usize) {
    let mut read = 0usize;
    while read <= limit.saturating_mul(3) {
        match body.frame().await {
            Some(Ok(frame)) => read += frame.data_ref().map_or(0, |d| d.len()),
            _ => return,
        }
    }
}

/// Reads and decodes a request's JSON body. Handlers call it once the
/// request is authenticated, so a request without credentials costs no more
/// than its headers. A body past the server's limit (by its
/// `Content-Length`, or as it arrives) is refused with `payload_too_large`
/// without being read further, as is one whose decoding passes a limit of
/// the protocol (see [`LIMIT_EXCEEDED`]); a malformed one gets
/// `malformed_json`.
pub async fn read_json<T: DeserializeOwned>(
    app: &App,
    headers: &HeaderMap,
    mut body: Body,
) -> ApiResult<T> {
    let limit = app.max_body_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            codes::PAYLOAD_TOO_LARGE,
            format!("the request body is too large (at most {limit} bytes)"),
        )
    };
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        discard(body, limit).await;
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(declared.map_or(0, |n| n as usize));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ApiError::bad_request(
                codes::BAD_REQUEST,
                format!("cannot read the request body: {e}"),
            )
        })?;
        if let Ok(data) = frame.into_data() {
            if bytes.len() + data.len() > limit {
                discard(body, limit).await;
                return Err(too_large());
            }
            bytes.extend_from_slice(&data);
        }
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        let message = e.to_string();
        match message.strip_prefix(LIMIT_EXCEEDED) {
            Some(rest) => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                codes::PAYLOAD_TOO_LARGE,
                rest.to_owned(),
            ),
            None => {
                ApiError::bad_request(codes::MALFORMED_JSON, format!("malformed JSON: {message}"))
            }
        }
    })
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> ApiResult<T> {
    q.map(|Query(v)| v).map_err(|e| {
        ApiError::bad_request(
            codes::BAD_REQUEST,
            format!("bad query string: {}", e.body_text()),
        )
    })
}

/// The path's segments; one that is not valid UTF-8 (or not what the route
/// takes) is a 400 in the error format, where axum answers in plain text.
fn path<T>(p: Result<Path<T>, PathRejection>) -> ApiResult<T> {
    p.map(|Path(v)| v).map_err(|e| {
        ApiError::bad_request(codes::BAD_REQUEST, format!("bad path: {}", e.body_text()))
    })
}

// ---- health -------------------------------------------------------------------

#[derive(Serialize)]
struct Health {
    status: &'static str,
    protocol: u32,
}

/// `GET /v1/health`: answers without credentials (the network check's probe).
pub async fn health() -> impl IntoResponse {
    Json(Health {
        status: "ok",
        protocol: fieldsync_protocol::protocol::PROTOCOL_VERSION,
    })
}

// ---- device API ---------------------------------------------------------------

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
        if q.profile_version.is_some_and(|v| v != profile.version) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                codes::PROFILE_CHANGED,
                format!(
                    "the offline profile is now at version {}; fetch it again",
                    profile.version
                ),
            ));
        }
        let known = db.model()?.model.table(&q.table).is_some();
        let table = profile.table(&q.table).ok_or_else(|| {
            if known {
                ApiError::forbidden(format!(
                    "table '{}' is not in your offline profile",
                    q.table
                ))
            } else {
                ApiError::bad_request(codes::UNKNOWN_TABLE, format!("unknown table '{}'", q.table))
            }
        })?;
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
        Ok(page)
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
        if request
            .profile_version
            .is_some_and(|v| v != profile.version)
        {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                codes::PROFILE_CHANGED,
                format!(
                    "the offline profile is now at version {}; fetch it again",
                    profile.version
                ),
            ));
        }
        let known = db.model()?.model.table(&request.table).is_some();
        let table = profile.table(&request.table).ok_or_else(|| {
            if known {
                ApiError::forbidden(format!(
                    "table '{}' is not in your offline profile",
                    request.table
                ))
            } else {
                ApiError::bad_request(
                    codes::UNKNOWN_TABLE,
                    format!("unknown table '{}'", request.table),
                )
            }
        })?;
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
        Ok((results, request))
    })
    .await?;
    for (m, r) in request.mutations.iter().zip(&results) {
        app.metrics.push_outcome(&m.table, r.status);
    }
    tracing::info!(mutations = results.len(), "push applied");
    Ok(Json(PushResponse { results }))
}

// ---- records API --------------------------------------------------------------

/// Back-office users see every row; technicians their profile's rows and
/// columns, and every row of the tables in the online-access allow-list
/// (online mode, see [`crate::online`]).
fn scope_of(
    user: &User,
    profile: &SyncProfile,
    table: &str,
    online_tables: &[String],
) -> ApiResult<Option<fieldsync_protocol::profile::SyncTable>> {
    match user.role {
        Role::Dispatcher | Role::Admin => Ok(None),
        Role::Technician if online_tables.iter().any(|t| t == table) => Ok(None),
        Role::Technician => profile.table(table).cloned().map(Some).ok_or_else(|| {
            ApiError::forbidden(format!("table '{table}' is not in your offline profile"))
        }),
    }
}

fn require_back_office(user: &User) -> ApiResult<()> {
    match user.role {
        Role::Dispatcher | Role::Admin => Ok(()),
        Role::Technician => Err(ApiError::forbidden(
            "only dispatchers and admins write through the records API; devices upload through /v1/sync/push",
        )),
    }
}

/// `GET /v1/records/{table}/{id}`.
pub async fn get_record(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    segments: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<Json<RecordResponse>> {
    let (table, id) = path(segments)?;
    let user = authenticate(&app, &headers).await?;
    let db = app.db.clone();
    let (t, i) = (table.clone(), id.clone());
    let (row, version) = blocking(move || {
        if db.model()?.model.table(&t).is_none() {
            return Err(ApiError::bad_request(
                codes::UNKNOWN_TABLE,
                format!("unknown table '{t}'"),
            ));
        }
        let profile = db.sync_profile(&user)?;
        let online = crate::online::online_tables(&db)?;
        let scope = scope_of(&user, &profile, &t, &online)?;
        db.record(
            &t,
            &i,
            scope.as_ref().map(|s| (&profile, s, user.id.as_str())),
        )?
        .ok_or_else(|| ApiError::not_found(format!("no record {t}/{i}")))
    })
    .await?;
    Ok(Json(RecordResponse {
        table,
        id,
        version,
        row,
    }))
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    after: Option<String>,
    limit: Option<u32>,
    /// Equality filters as a JSON object of column to value (online mode).
    #[serde(rename = "where")]
    filter: Option<String>,
}

/// Parses and checks a `where` filter against the columns the caller sees.
fn parse_filter(
    text: Option<&str>,
    schema: &fieldsync_protocol::profile::TableSchema,
    scope: Option<&fieldsync_protocol::profile::SyncTable>,
) -> ApiResult<Vec<(String, fieldsync_protocol::Value)>> {
    let Some(text) = text.filter(|t| !t.is_empty()) else {
        return Ok(Vec::new());
    };
    let obj: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(text).map_err(|e| {
            ApiError::bad_request(
                codes::BAD_REQUEST,
                format!("where must be a JSON object: {e}"),
            )
        })?;
    let mut out = Vec::new();
    for (column, value) in obj {
        let visible = match scope {
            Some(t) => t.column(&column).map(|c| c.kind),
            None => schema.column(&column).map(|c| c.kind),
        };
        let kind = visible.ok_or_else(|| {
            ApiError::bad_request(
                codes::UNKNOWN_COLUMN,
                format!("unknown column '{column}' in table '{}'", schema.name),
            )
        })?;
        let value = fieldsync_protocol::Value::from_json(&value)
            .ok_or_else(|| {
                ApiError::bad_request(
                    codes::INVALID_VALUE,
                    format!("where '{column}': the value must be a scalar"),
                )
            })?
            .coerce(kind)
            .map_err(|e| {
                ApiError::bad_request(codes::INVALID_VALUE, format!("where '{column}': {e}"))
            })?;
        out.push((column, value));
    }
    Ok(out)
}

/// `GET /v1/records/{table}`.
pub async fn list_records(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    segments: Result<Path<String>, PathRejection>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<Json<RecordList>> {
    let table = path(segments)?;
    let user = authenticate(&app, &headers).await?;
    let q = query(q)?;
    let db = app.db.clone();
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let t = table.clone();
    let rows = blocking(move || {
        if db.model()?.model.table(&t).is_none() {
            return Err(ApiError::bad_request(
                codes::UNKNOWN_TABLE,
                format!("unknown table '{t}'"),
            ));
        }
        let profile = db.sync_profile(&user)?;
        let online = crate::online::online_tables(&db)?;
        let scope = scope_of(&user, &profile, &t, &online)?;
        let in_force = db.model()?;
        let filter = parse_filter(
            q.filter.as_deref(),
            in_force
                .model
                .table(&t)
                .ok_or_else(|| ApiError::internal("table vanished"))?,
            scope.as_ref(),
        )?;
        let pk = in_force
            .model
            .table(&t)
            .map(|s| s.primary_key.clone())
            .unwrap_or_default();
        let rows = db.records(
            &t,
            q.after.as_deref(),
            limit,
            scope.as_ref().map(|s| (&profile, s, user.id.as_str())),
            &filter,
        )?;
        Ok((rows, pk))
    })
    .await?;
    let (rows, pk) = rows;
    let full = rows.len() as u32 == limit;
    let rows: Vec<RecordResponse> = rows
        .into_iter()
        .map(|(row, version)| RecordResponse {
            table: table.clone(),
            id: match row.get(&pk) {
                Some(fieldsync_protocol::Value::Text(id)) => id.clone(),
                _ => String::new(),
            },
            version,
            row,
        })
        .collect();
    let next_after = if full {
        rows.last().map(|r| r.id.clone())
    } else {
        None
    };
    Ok(Json(RecordList {
        table,
        rows,
        next_after,
    }))
}

/// `PUT /v1/records/{table}/{id}`: a dispatcher's edit.
pub async fn put_record(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    segments: Result<Path<(String, String)>, PathRejection>,
    body: Body,
) -> ApiResult<(StatusCode, Json<RecordResponse>)> {
    let (table, id) = path(segments)?;
    let user = authenticate(&app, &headers).await?;
    require_back_office(&user)?;
    let write: RecordWrite = read_json(&app, &headers, body).await?;
    let db = app.db.clone();
    let (t, i) = (table.clone(), id.clone());
    let written = blocking(move || {
        let rights = db.sync_profile(&user)?.table(&t).cloned();
        db.write_record_within(
            rights.as_ref(),
            &t,
            &i,
            &write.data,
            write.base_version,
            &user.id,
        )
    })
    .await?;
    let status = if written.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(RecordResponse {
            table,
            id,
            version: written.version,
            row: written.row,
        }),
    ))
}

/// The query of `DELETE /v1/records/{table}/{id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteQuery {
    /// When given, the row must be at this version (else 409 `conflict`).
    base_version: Option<i64>,
}

/// `DELETE /v1/records/{table}/{id}`: a dispatcher's deletion.
pub async fn delete_record(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    segments: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<DeleteQuery>, QueryRejection>,
) -> ApiResult<StatusCode> {
    let (table, id) = path(segments)?;
    let user = authenticate(&app, &headers).await?;
    require_back_office(&user)?;
    let q = query(q)?;
    let db = app.db.clone();
    let deleted = blocking(move || {
        let rights = db.sync_profile(&user)?.table(&table).cloned();
        db.delete_record_within(rights.as_ref(), &table, &id, q.base_version, &user.id)
    })
    .await?;
    if deleted {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("no such record"))
    }
}

// ---- admin API ----------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    id: Option<String>,
    name: String,
    role: Role,
    profile: Option<String>,
    /// The user's team, for "rows of my team" filters.
    #[serde(default)]
    team_id: Option<String>,
    /// The user's time zone (an IANA name such as `Europe/Berlin`), which
    /// overrides the profile's for relative-date filters.
    #[serde(default)]
    time_zone: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct CreatedUser {
    #[serde(flatten)]
    user: User,
    /// The bearer token; shown once.
    token: String,
}

/// `POST /v1/admin/users`.
pub async fn create_user(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<CreatedUser>)> {
    authenticate_admin(&app, &headers).await?;
    let new: NewUser = read_json(&app, &headers, body).await?;
    let db = app.db.clone();
    let default_profile = app.default_profile.clone();
    let (user, token) = blocking(move || {
        db.create_user_in_zone(
            new.id,
            &new.name,
            new.role,
            new.profile.as_deref().unwrap_or(&default_profile),
            new.team_id,
            new.time_zone,
        )
    })
    .await?;
    Ok((StatusCode::CREATED, Json(CreatedUser { user, token })))
}

/// `POST /v1/admin/users/{id}/token`: a new bearer token for the user; the
/// old one stops working.
pub async fn rotate_token(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    segments: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<CreatedUser>> {
    let id = path(segments)?;
    authenticate_admin(&app, &headers).await?;
    let db = app.db.clone();
    let missing = format!("no user '{id}'");
    match blocking(move || db.rotate_token(&id)).await? {
        Some((user, token)) => Ok(Json(CreatedUser { user, token })),
        None => Err(ApiError::not_found(missing)),
    }
}

/// `DELETE /v1/admin/users/{id}`: the user's token stops working.
pub async fn delete_user(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    segments: Result<Path<String>, PathRejection>,
) -> ApiResult<StatusCode> {
    let id = path(segments)?;
    authenticate_admin(&app, &headers).await?;
    let db = app.db.clone();
    let missing = format!("no user '{id}'");
    if blocking(move || db.delete_user(&id)).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(missing))
    }
}

/// `GET /v1/admin/users`.
pub async fn list_users(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> ApiResult<Json<Vec<User>>> {
    authenticate_admin(&app, &headers).await?;
    let db = app.db.clone();
    Ok(Json(blocking(move || db.users()).await?))
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// On: the server's row wins and a conflict is logged. Off (default): the device wins.
    pub conflict_detection: bool,
}

/// `GET /v1/admin/settings`.
pub async fn get_settings(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> ApiResult<Json<Settings>> {
    authenticate_admin(&app, &headers).await?;
    let db = app.db.clone();
    let on = blocking(move || db.conflict_detection()).await?;
    Ok(Json(Settings {
        conflict_detection: on,
    }))
}

/// `PUT /v1/admin/settings`.
pub async fn put_settings(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Settings>> {
    authenticate_admin(&app, &headers).await?;
    let settings: Settings = read_json(&app, &headers, body).await?;
    let db = app.db.clone();
    let on = settings.conflict_detection;
    blocking(move || db.set_conflict_detection(on)).await?;
    Ok(Json(settings))
}

/// `GET /v1/admin/sync-errors?user=&table=&kind=&limit=`.
pub async fn sync_errors(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    q: Result<Query<SyncErrorFilter>, QueryRejection>,
) -> ApiResult<Json<Vec<SyncErrorOut>>> {
    authenticate_admin(&app, &headers).await?;
    let filter = query(q)?;
    if let Some(kind) = filter
        .kind
        .as_deref()
        .filter(|k| !matches!(*k, "conflict" | "rejected"))
    {
        return Err(ApiError::bad_request(
            codes::BAD_REQUEST,
            format!("kind is conflict or rejected, not '{kind}'"),
        ));
    }
    let db = app.db.clone();
    let (entries, mut retries) = blocking(move || {
        let entries = db.sync_errors(&filter)?;
        let ids: Vec<i64> = entries.iter().map(|e| e.id).collect();
        let retries = db.sync_error_retries(&ids)?;
        Ok((entries, retries))
    })
    .await?;
    Ok(Json(
        entries
            .into_iter()
            .map(|entry| {
                let retry = retries.remove(&entry.id);
                SyncErrorOut {
                    retried: retry.is_some(),
                    retry,
                    entry,
                }
            })
            .collect(),
    ))
}

/// One entry of `GET /v1/admin/sync-errors`: the entry, and its latest
/// retry.
#[derive(Debug, Serialize)]
pub struct SyncErrorOut {
    #[serde(flatten)]
    entry: crate::db::SyncErrorEntry,
    /// Whether an administrator retried the entry (whatever the outcome).
    retried: bool,
    /// The latest retry: when, by whom, and its outcome.
    retry: Option<crate::db::SyncErrorRetry>,
}

/// Retries a Sync Errors entry as `by` (the API and the console), counting
/// the outcome in the metrics.
pub async fn retry_sync_error(
    app: &Arc<App>,
    id: i64,
    by: String,
) -> ApiResult<crate::db::SyncErrorRetry> {
    let db = app.db.clone();
    match blocking(move || db.retry_sync_error(id, &by)).await? {
        Ok(retry) => {
            app.metrics.retry_outcome(true);
            Ok(retry)
        }
        Err((_, refused)) => {
            app.metrics.retry_outcome(false);
            Err(refused)
        }
    }
}

/// `POST /v1/admin/sync-errors/{id}/retry`: re-applies the device's change
/// logged in the entry, as the console's Retry does (see
/// [`crate::db::Db::retry_sync_error`]); answers the retry record.
pub async fn retry_sync_error_route(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    segments: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<crate::db::SyncErrorRetry>> {
    let raw = path(segments)?;
    let by = authenticate_admin_as(&app, &headers).await?;
    let id = raw
        .parse::<i64>()
        .map_err(|_| ApiError::not_found(format!("no sync error {raw}")))?;
    Ok(Json(retry_sync_error(&app, id, by).await?))
}

#[derive(Debug, Serialize)]
pub struct PublishedProfile {
    version: i64,
    profile: OfflineProfile,
}

/// `GET /v1/admin/profiles`.
pub async fn list_profiles(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> ApiResult<Json<Vec<PublishedProfile>>> {
    authenticate_admin(&app, &headers).await?;
    let db = app.db.clone();
    let all = blocking(move || db.profiles()).await?;
    Ok(Json(
        all.into_iter()
            .map(|(profile, version)| PublishedProfile { version, profile })
            .collect(),
    ))
}

/// `GET /v1/admin/profiles/{name}`.
pub async fn get_profile(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    segments: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<PublishedProfile>> {
    let name = path(segments)?;
    authenticate_admin(&app, &headers).await?;
    let db = app.db.clone();
    let (profile, version) = blocking(move || db.profile(&name))
        .await?
        .ok_or_else(|| ApiError::not_found("no such profile"))?;
    Ok(Json(PublishedProfile { version, profile }))
}

/// `PUT /v1/admin/profiles/{name}`: validates and publishes a profile.
pub async fn put_profile(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    segments: Result<Path<String>, PathRejection>,
    body: Body,
) -> ApiResult<Json<PublishedProfile>> {
    let name = path(segments)?;
    authenticate_admin(&app, &headers).await?;
    let profile: OfflineProfile = read_json(&app, &headers, body).await?;
    if profile.name != name {
        return Err(ApiError::bad_request(
            codes::INVALID_PROFILE,
            "the profile's name differs from the URL",
        ));
    }
    let db = app.db.clone();
    let p = profile.clone();
    let version = blocking(move || db.put_profile(&p)).await?;
    Ok(Json(PublishedProfile { version, profile }))
}

/// `GET /v1/admin/model`: the data model in force (the one profiles may
/// use), with its version.
pub async fn model(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> ApiResult<Json<crate::model::ModelVersion>> {
    authenticate_admin(&app, &headers).await?;
    let db = app.db.clone();
    let in_force = blocking(move || db.model()).await?;
    Ok(Json((*in_force).clone()))
}

/// `PUT /v1/admin/model`: publishes a new version of the data model; the
/// server migrates its tables at once and devices follow at their next
/// sync. A model that cannot follow the one in force is refused with
/// `invalid_model`, naming the problem.
pub async fn publish_model(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<crate::model::Published>> {
    authenticate_admin(&app, &headers).await?;
    let mut raw: serde_json::Value = read_json(&app, &headers, body).await?;
    // What `GET /v1/admin/model` answers may come back edited: its version
    // fields are the server's to set.
    if let Some(fields) = raw.as_object_mut() {
        for key in ["version", "published_at", "source", "changes"] {
            fields.remove(key);
        }
    }
    let model = fieldsync_protocol::profile::DataModel::parse(&raw.to_string())?;
    let db = app.db.clone();
    let published = blocking(move || db.publish_model(&model, crate::model::SOURCE_ADMIN)).await?;
    Ok(Json(published))
}

/// `GET /v1/admin/model/versions`: every version of the data model,
/// newest first.
pub async fn model_versions(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> ApiResult<Json<Vec<crate::model::ModelVersion>>> {
    authenticate_admin(&app, &headers).await?;
    let db = app.db.clone();
    Ok(Json(blocking(move || db.model_versions()).await?))
}

/// `GET /v1/admin/devices`.
pub async fn devices(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> ApiResult<Json<Vec<crate::db::DeviceEntry>>> {
    authenticate_admin(&app, &headers).await?;
    let db = app.db.clone();
    Ok(Json(blocking(move || db.devices()).await?))
}

#[derive(Debug, Serialize)]
pub struct SeedResult {
    rows: BTreeMap<String, usize>,
}

/// Sample data is the Field Service model's: refused, naming what is
/// missing, when the model in force lacks one of its tables or columns.
fn check_seedable(model: &fieldsync_protocol::profile::DataModel) -> ApiResult<()> {
    for t in crate::field_service_model().tables {
        let Some(have) = model.table(&t.name) else {
            return Err(ApiError::bad_request(
                codes::BAD_REQUEST,
                format!(
                    "sample data is for the Field Service model, and the data model in force has no table '{}'",
                    t.name
                ),
            ));
        };
        for c in &t.columns {
            if have.column(&c.name).map(|h| h.kind) != Some(c.kind) {
                return Err(ApiError::bad_request(
                    codes::BAD_REQUEST,
                    format!(
                        "sample data is for the Field Service model, and the data model in force has no {:?} column '{}.{}'",
                        c.kind, t.name, c.name
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// `POST /v1/admin/seed`: writes generated field-service data (demo, tests).
pub async fn seed(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<SeedResult>> {
    authenticate_admin(&app, &headers).await?;
    let spec: SeedSpec = read_json(&app, &headers, body).await?;
    if spec
        .now_ms
        .is_some_and(|ms| !(0..=MAX_SEED_NOW_MS).contains(&ms))
    {
        return Err(ApiError::bad_request(
            codes::BAD_REQUEST,
            "now_ms is a time from 1970 to 9999 in milliseconds",
        ));
    }
    if spec.work_orders > 2_000_000 {
        return Err(ApiError::bad_request(
            codes::BAD_REQUEST,
            "at most 2,000,000 work orders",
        ));
    }
    let db = app.db.clone();
    let rows = blocking(move || {
        check_seedable(&db.model()?.model)?;
        let mut counts = BTreeMap::new();
        for (table, rows) in generate(&spec, db.now_ms()) {
            for chunk in rows.chunks(10_000) {
                db.bulk_insert(&table, chunk)?;
            }
            counts.insert(table, rows.len());
        }
        Ok(counts)
    })
    .await?;
    Ok(Json(SeedResult { rows }))
}

/// The latest `now_ms` a seed request may name (the last millisecond of
/// the year 9999): dates are generated around it.
const MAX_SEED_NOW_MS: i64 = 253_402_300_799_999;

/// Answers unknown routes with a typed error.
pub async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}

/// A known path asked with a method it does not take: 405 in the error
/// format (axum adds the `allow` header).
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        codes::METHOD_NOT_ALLOWED,
        "this endpoint does not take that method",
    )
}

/// Refuses a request whose `x-fieldsync-protocol` header names another
/// protocol version than this server's (400 `unsupported_protocol`), before
/// anything else reads it. A request without the header is served:
/// browsers, the console and records clients do not send it.
pub async fn check_protocol(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if let Some(device) = request.headers().get(DEVICE_HEADER)
        && !device.to_str().is_ok_and(crate::db::device_id_ok)
    {
        return ApiError::bad_request(
            codes::BAD_REQUEST,
            format!("the {DEVICE_HEADER} header is 1 to 128 characters of visible text"),
        )
        .into_response();
    }
    let Some(sent) = request
        .headers()
        .get(fieldsync_protocol::protocol::PROTOCOL_HEADER)
    else {
        return next.run(request).await;
    };
    let version = fieldsync_protocol::protocol::PROTOCOL_VERSION;
    match sent.to_str().map(str::trim) {
        Ok(v) if v.parse::<u32>() == Ok(version) => next.run(request).await,
        Ok(v) => ApiError::bad_request(
            codes::UNSUPPORTED_PROTOCOL,
            format!("this server speaks protocol {version}; the request asked for '{v}'"),
        )
        .into_response(),
        Err(_) => ApiError::bad_request(
            codes::UNSUPPORTED_PROTOCOL,
            format!("this server speaks protocol {version}; the request's version is not text"),
        )
        .into_response(),
    }
}
