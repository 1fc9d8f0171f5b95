//! Smart sync, download counts and online-mode access on the server.
//!
//! `POST /v1/sync/changes` answers, per table of the caller's profile,
//! whether any row changed after the device's cursor: one indexed
//! `EXISTS (... WHERE _seq > ?)` per table instead of a pull, so a device
//! skips the download (and the server the row predicate and page encoding)
//! of tables with nothing new.
//!
//! Online access: technicians read their profile's rows through the records
//! API, plus whole tables an administrator lists in the online-access
//! allow-list (`GET`/`PUT /v1/admin/online-access`, kept in the server
//! settings under `online_tables`). Dispatchers and admins read every row.
//! The allow-list is empty by default, so nothing outside a profile is
//! visible until an administrator permits it.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use fieldsync_protocol::Value;
use fieldsync_protocol::profile::quote_ident;
use fieldsync_protocol::protocol::{
    ChangesRequest, ChangesResponse, CountsRequest, CountsResponse, codes,
};
use serde::{Deserialize, Serialize};

use crate::App;
use crate::api::{authenticate, authenticate_admin, blocking, read_json};
use crate::db::{Cursor, Db};
use crate::error::{ApiError, ApiResult};

const ONLINE_TABLES_KEY: &str = "online_tables";

/// The tables technicians may read whole in online mode.
pub fn online_tables(db: &Db) -> ApiResult<Vec<String>> {
    let text = db.setting(ONLINE_TABLES_KEY)?;
    Ok(text
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default())
}

/// Replaces the online-access allow-list (every name must be a model table).
pub fn set_online_tables(db: &Db, tables: &[String]) -> ApiResult<()> {
    for t in tables {
        if db.model()?.model.table(t).is_none() {
            return Err(ApiError::bad_request(
                codes::UNKNOWN_TABLE,
                format!("unknown table '{t}'"),
            ));
        }
    }
    let mut sorted = tables.to_vec();
    sorted.sort();
    sorted.dedup();
    let text = serde_json::to_string(&sorted).map_err(|e| ApiError::internal(e.to_string()))?;
    db.set_setting(ONLINE_TABLES_KEY, &text)
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
    let tables = blocking(move || online_tables(&db)).await?;
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
        set_online_tables(&db, &access.tables)?;
        online_tables(&db)
    })
    .await?;
    Ok(Json(OnlineAccess { tables }))
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
    let user = authenticate(&app, &headers).await?;
    let request: CountsRequest = read_json(&app, &headers, body).await?;
    if request.tables.len() > 256 {
        return Err(ApiError::bad_request(
            codes::BAD_REQUEST,
            "at most 256 tables per request",
        ));
    }
    let db = app.db.clone();
    let answer = blocking(move || {
        let profile = db.sync_profile(&user)?;
        let mut tables = BTreeMap::new();
        for (name, cursor) in &request.tables {
            let Some(table) = profile.table(name) else {
                continue;
            };
            if let Some(n) = db.count_entries(&profile, table, cursor)? {
                tables.insert(name.clone(), n);
            }
        }
        Ok(CountsResponse {
            profile_version: profile.version,
            tables,
        })
    })
    .await?;
    Ok(Json(answer))
}

/// `POST /v1/sync/changes`: per table, whether anything changed after the
/// device's cursor. Tables outside the caller's profile are ignored; a
/// cursor the server did not issue, or a table still in its first download,
/// answers `true` (download).
pub async fn changes(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<ChangesResponse>> {
    let user = authenticate(&app, &headers).await?;
    let request: ChangesRequest = read_json(&app, &headers, body).await?;
    if request.tables.len() > 256 {
        return Err(ApiError::bad_request(
            codes::BAD_REQUEST,
            "at most 256 tables per request",
        ));
    }
    let db = app.db.clone();
    let answer = blocking(move || {
        let profile = db.sync_profile(&user)?;
        let now = db.now_ms();
        let mut tables = BTreeMap::new();
        db.read(|c| {
            for (name, cursor) in &request.tables {
                let Some(table) = profile.table(name) else {
                    continue;
                };
                // Rows that entered a relative-date window changed nothing,
                // but the next pull sends them (its window phase; a window
                // under way keeps the earlier `evaluated_at`, so it answers
                // `true` here too until it is done).
                let changed = match Cursor::parse(cursor) {
                    Some(Some(cur)) if cur.window_due(&profile, table, now) => true,
                    Some(Some(cur)) if cur.since >= cur.snapshot => {
                        let sql = format!(
                            "SELECT EXISTS (SELECT 1 FROM {} WHERE _seq > ?)",
                            quote_ident(name)
                        );
                        // A table whose filter reads related rows changes
                        // with them (its related phase may send rows).
                        c.query_one(&sql, &[Value::Integer(cur.since)])?.bool(0)?
                            || crate::db::related_tables_changed(c, table, cur.since)?
                    }
                    _ => true,
                };
                tables.insert(name.clone(), changed);
            }
            Ok(())
        })?;
        Ok(ChangesResponse {
            profile_version: profile.version,
            tables,
        })
    })
    .await?;
    Ok(Json(answer))
}
