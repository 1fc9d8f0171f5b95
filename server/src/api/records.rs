//! The records API (`/v1/records/*`): back-office users read and write any
//! row their role may; technicians read their profile's rows and, in online
//! mode, whole tables an administrator allows (see [`super::admin`]).

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use fieldsync_protocol::profile::SyncProfile;
use fieldsync_protocol::protocol::{RecordList, RecordResponse, RecordWrite, codes};
use serde::Deserialize;

use super::auth::{authenticate, require_back_office};
use super::request::{blocking, path, query, read_json};
use crate::App;
use crate::db::{Db, Role, User};
use crate::error::{ApiError, ApiResult};

/// The caller's profile and which rows of `table` they may read: every row
/// for dispatchers and admins, and for technicians in tables of the
/// online-access allow-list (online mode, see [`super::admin`]); otherwise
/// the technician's profile's rows and columns of the table (403 when it is not
/// in the profile). 400 when no model table has that name.
pub(super) fn read_scope(
    db: &Db,
    user: &User,
    table: &str,
) -> ApiResult<(SyncProfile, Option<fieldsync_protocol::profile::SyncTable>)> {
    if db.model()?.model.table(table).is_none() {
        return Err(ApiError::bad_request(
            codes::UNKNOWN_TABLE,
            format!("unknown table '{table}'"),
        ));
    }
    let profile = db.sync_profile(user)?;
    let online_tables = crate::db::online_tables(db)?;
    let scope = match user.role {
        Role::Dispatcher | Role::Admin => None,
        Role::Technician if online_tables.iter().any(|t| t == table) => None,
        Role::Technician => Some(profile.table(table).cloned().ok_or_else(|| {
            ApiError::forbidden(format!("table '{table}' is not in your offline profile"))
        })?),
    };
    Ok((profile, scope))
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
        let (profile, scope) = read_scope(&db, &user, &t)?;
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
pub(super) fn parse_filter(
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
        let (profile, scope) = read_scope(&db, &user, &t)?;
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
        Ok::<_, ApiError>((rows, pk))
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
