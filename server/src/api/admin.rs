//! The admin API (`/v1/admin/*`): users, settings, online access, devices
//! and the Sync Errors log.
//!
//! Online access: technicians read their profile's rows through the records
//! API, plus whole tables an administrator lists in the online-access
//! allow-list (`GET`/`PUT /v1/admin/online-access`, kept in the server
//! settings under `online_tables`). Dispatchers and admins read every row.
//! The allow-list is empty by default, so nothing outside a profile is
//! visible until an administrator permits it.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use fieldsync_protocol::protocol::codes;
use serde::{Deserialize, Serialize};

use super::auth::{authenticate_admin, authenticate_admin_as};
use super::request::{blocking, path, query, read_json};
use crate::App;
use crate::db::{Role, StoreError, SyncErrorFilter, User};
use crate::error::{ApiError, ApiResult};

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
        Ok::<_, StoreError>((entries, retries))
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
            Err(refused.into())
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

/// `GET /v1/admin/devices`.
pub async fn devices(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> ApiResult<Json<Vec<crate::db::DeviceEntry>>> {
    authenticate_admin(&app, &headers).await?;
    let db = app.db.clone();
    Ok(Json(blocking(move || db.devices()).await?))
}

/// Body of the online-access endpoints.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnlineAccess {
    /// Tables technicians may read whole in online mode.
    pub tables: Vec<String>,
}

/// `GET /v1/admin/online-access`.
pub async fn get_access(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> ApiResult<Json<OnlineAccess>> {
    authenticate_admin(&app, &headers).await?;
    let db = app.db.clone();
    let tables = blocking(move || crate::db::online_tables(&db)).await?;
    Ok(Json(OnlineAccess { tables }))
}

/// `PUT /v1/admin/online-access`.
pub async fn put_access(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<OnlineAccess>> {
    authenticate_admin(&app, &headers).await?;
    let access: OnlineAccess = read_json(&app, &headers, body).await?;
    let db = app.db.clone();
    let tables = blocking(move || {
        crate::db::set_online_tables(&db, &access.tables)?;
        crate::db::online_tables(&db)
    })
    .await?;
    Ok(Json(OnlineAccess { tables }))
}
