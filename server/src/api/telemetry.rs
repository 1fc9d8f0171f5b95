//! Telemetry endpoints: devices upload batches of sync events; the
//! administrator lists and summarises them (stored by
//! [`crate::db::telemetry`]).

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use fieldsync_protocol::protocol::codes;
use fieldsync_protocol::telemetry::{
    TelemetryAccepted, TelemetryBatch, TelemetryEvent, TelemetryMode, TelemetryResult,
};

use super::auth::{authenticate, authenticate_admin};
use super::request::{blocking, query, read_json};
use crate::App;
use crate::db::telemetry::{StoredEvent, Summary, TelemetryQuery, list, store, summary};
use crate::error::{ApiError, ApiResult};

/// Most events in one upload.
pub const MAX_EVENTS_PER_BATCH: usize = 1000;

pub(super) fn check(e: &TelemetryEvent) -> Result<(), String> {
    let short = |name: &str, v: &str, max: usize| {
        if v.len() > max {
            Err(format!("{name} is longer than {max} characters"))
        } else {
            Ok(())
        }
    };
    if e.id.is_empty() || e.sync_id.is_empty() || e.device_id.is_empty() {
        return Err("id, sync_id and device_id are required".into());
    }
    short("id", &e.id, 128)?;
    short("sync_id", &e.sync_id, 128)?;
    short("device_id", &e.device_id, 128)?;
    // A mode or result this build does not know would make the charts lie:
    // the batch is refused. An unknown network type is kept as `unknown`.
    if e.mode == TelemetryMode::Unknown {
        return Err("mode must be first, delta, refresh or forced".into());
    }
    if e.result == TelemetryResult::Unknown {
        return Err("result must be success or failure".into());
    }
    short("failure_type", e.failure_type.as_deref().unwrap_or(""), 64)?;
    short("table", e.table.as_deref().unwrap_or(""), 64)?;
    short("app_version", &e.app_version, 64)?;
    short("device_model", &e.device_model, 128)?;
    short("os_version", &e.os_version, 64)?;
    if e.duration_ms < 0 || e.active_duration_ms < 0 || e.started_at < 0 {
        return Err("durations and times must not be negative".into());
    }
    let too_big = |v: u64| v > i64::MAX as u64;
    if too_big(e.rows_up) || too_big(e.rows_down) || too_big(e.bytes_up) || too_big(e.bytes_down) {
        return Err("a count is too large".into());
    }
    Ok(())
}

/// `POST /v1/telemetry`: a device's batch of events.
pub async fn upload(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<TelemetryAccepted>> {
    let user = authenticate(&app, &headers).await?;
    let batch: TelemetryBatch = read_json(&app, &headers, body).await?;
    if batch.events.len() > MAX_EVENTS_PER_BATCH {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            codes::PAYLOAD_TOO_LARGE,
            format!("at most {MAX_EVENTS_PER_BATCH} events per request"),
        ));
    }
    for (i, e) in batch.events.iter().enumerate() {
        check(e)
            .map_err(|m| ApiError::bad_request(codes::INVALID_VALUE, format!("event {i}: {m}")))?;
    }
    let db = app.db.clone();
    // Received by the server's clock, which the retention also reads
    // (`Db::purge`).
    let accepted = blocking(move || store(&db, &user.id, &batch.events, db.now_ms())).await?;
    Ok(Json(TelemetryAccepted { accepted }))
}

/// `GET /v1/admin/telemetry?device=&user=&since=&kind=&limit=`.
pub async fn admin_list(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    q: Result<Query<TelemetryQuery>, QueryRejection>,
) -> ApiResult<Json<Vec<StoredEvent>>> {
    authenticate_admin(&app, &headers).await?;
    let q = query(q)?;
    let db = app.db.clone();
    Ok(Json(blocking(move || list(&db, &q)).await?))
}

/// `GET /v1/admin/telemetry/summary?device=&user=&since=`.
pub async fn admin_summary(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    q: Result<Query<TelemetryQuery>, QueryRejection>,
) -> ApiResult<Json<Summary>> {
    authenticate_admin(&app, &headers).await?;
    let q = query(q)?;
    let db = app.db.clone();
    Ok(Json(blocking(move || summary(&db, &q)).await?))
}
