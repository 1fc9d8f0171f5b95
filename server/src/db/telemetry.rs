//! Telemetry events uploaded by devices: stored, listed and summarised
//! (counts, percentiles, per day and per table).

use fieldsync_protocol::Value;
use fieldsync_protocol::protocol::codes;
use fieldsync_protocol::telemetry::{
    TelemetryEvent, TelemetryKind, TelemetryMode, TelemetryNetwork, TelemetryResult,
};
use fieldsync_protocol::time::{format_date, parse_datetime};
use serde::{Deserialize, Serialize};

use super::backend::Db;
use super::devices::touch_device_in;
use crate::sql::{Row, opt_text, text};
use crate::store_error::{StoreError, StoreResult};
use std::collections::BTreeMap;

/// Most events one list answer returns.
pub const MAX_LIST: u32 = 5000;

/// Stores a batch for `user_id`, and each device's app version (its last
/// event's) for the device list, in one transaction; returns how many
/// events were new.
pub fn store(db: &Db, user_id: &str, events: &[TelemetryEvent], now: i64) -> StoreResult<u64> {
    let mut versions = BTreeMap::new();
    for e in events {
        versions.insert(e.device_id.as_str(), e.app_version.as_str());
    }
    let at = fieldsync_protocol::time::format_datetime(now);
    db.write(|c| {
        for (device, version) in &versions {
            if !version.is_empty() {
                touch_device_in(c, &at, device, user_id, false, Some(version))?;
            }
        }
        let mut n = 0;
        for e in events {
            n += c.execute(
                "INSERT INTO _fs_telemetry (id, received_at, user_id, device_id, kind, sync_id, mode,
                   result, failure_type, started_at, duration_ms, active_duration_ms, rows_up, rows_down,
                   bytes_up, bytes_down, tbl, network_type, app_version, device_model, os_version,
                   conflicts, rejected, pending_uploads)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                 ON CONFLICT (id) DO NOTHING",
                &[
                    text(e.id.clone()),
                    Value::Integer(now),
                    text(user_id),
                    text(e.device_id.clone()),
                    text(kind_text(e.kind)),
                    text(e.sync_id.clone()),
                    text(e.mode.as_str().to_owned()),
                    text(e.result.as_str().to_owned()),
                    opt_text(e.failure_type.clone()),
                    Value::Integer(e.started_at),
                    Value::Integer(e.duration_ms),
                    Value::Integer(e.active_duration_ms),
                    Value::Integer(e.rows_up as i64),
                    Value::Integer(e.rows_down as i64),
                    Value::Integer(e.bytes_up as i64),
                    Value::Integer(e.bytes_down as i64),
                    opt_text(e.table.clone()),
                    text(e.network_type.as_str().to_owned()),
                    text(e.app_version.clone()),
                    text(e.device_model.clone()),
                    text(e.os_version.clone()),
                    Value::Integer(e.conflicts.min(i64::MAX as u64) as i64),
                    Value::Integer(e.rejected.min(i64::MAX as u64) as i64),
                    e.pending_uploads
                        .map_or(Value::Null, |n| Value::Integer(n.min(i64::MAX as u64) as i64)),
                ],
            )?;
        }
        Ok(n)
    })
}

fn kind_text(k: TelemetryKind) -> &'static str {
    match k {
        TelemetryKind::Sync => "sync",
        TelemetryKind::TableDownload => "table_download",
    }
}

/// A stored event as the admin API lists it.
#[derive(Debug, Clone, Serialize)]
pub struct StoredEvent {
    #[serde(flatten)]
    pub event: TelemetryEvent,
    pub user_id: String,
    /// When the server received it, ms since the epoch.
    pub received_at: i64,
}

/// Filter of the admin queries.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryQuery {
    /// Only this device.
    pub device: Option<String>,
    /// Only this user.
    pub user: Option<String>,
    /// Only events started at or after: ms since the epoch or `YYYY-MM-DDTHH:MM:SSZ`.
    pub since: Option<String>,
    /// `sync` or `table_download`.
    pub kind: Option<String>,
    /// Most events (list only; default 500, at most 5000).
    pub limit: Option<u32>,
}

fn since_ms(q: &TelemetryQuery) -> StoreResult<Option<i64>> {
    match q.since.as_deref() {
        None | Some("") => Ok(None),
        Some(s) if s.bytes().all(|b| b.is_ascii_digit()) => s
            .parse()
            .map(Some)
            .map_err(|_| StoreError::invalid(codes::BAD_REQUEST, "since is not a valid time")),
        Some(s) => parse_datetime(s).map(Some).ok_or_else(|| {
            StoreError::invalid(
                codes::BAD_REQUEST,
                "since must be milliseconds since the epoch or YYYY-MM-DDTHH:MM:SSZ",
            )
        }),
    }
}

fn where_clause(q: &TelemetryQuery) -> StoreResult<(String, Vec<Value>)> {
    use Value as V;
    let mut sql = String::from(" WHERE 1 = 1");
    let mut params = Vec::new();
    if let Some(d) = &q.device {
        sql.push_str(" AND device_id = ?");
        params.push(V::Text(d.clone()));
    }
    if let Some(u) = &q.user {
        sql.push_str(" AND user_id = ?");
        params.push(V::Text(u.clone()));
    }
    if let Some(s) = since_ms(q)? {
        sql.push_str(" AND started_at >= ?");
        params.push(V::Integer(s));
    }
    if let Some(k) = &q.kind {
        if k != "sync" && k != "table_download" {
            return Err(StoreError::invalid(
                codes::BAD_REQUEST,
                "kind must be sync or table_download",
            ));
        }
        sql.push_str(" AND kind = ?");
        params.push(V::Text(k.clone()));
    }
    Ok((sql, params))
}

const COLUMNS: &str =
    "id, kind, device_id, sync_id, mode, result, failure_type, started_at, duration_ms,
    active_duration_ms, rows_up, rows_down, bytes_up, bytes_down, tbl, network_type, app_version,
    device_model, os_version, user_id, received_at, conflicts, rejected, pending_uploads";

fn read_event(r: &Row) -> StoreResult<StoredEvent> {
    let kind = r.text(1)?;
    Ok(StoredEvent {
        event: TelemetryEvent {
            id: r.text(0)?,
            kind: if kind == "sync" {
                TelemetryKind::Sync
            } else {
                TelemetryKind::TableDownload
            },
            device_id: r.text(2)?,
            sync_id: r.text(3)?,
            mode: TelemetryMode::from_name(&r.text(4)?),
            result: TelemetryResult::from_name(&r.text(5)?),
            failure_type: r.opt_text(6)?,
            started_at: r.i64(7)?,
            duration_ms: r.i64(8)?,
            active_duration_ms: r.i64(9)?,
            rows_up: r.i64(10)?.max(0) as u64,
            rows_down: r.i64(11)?.max(0) as u64,
            bytes_up: r.i64(12)?.max(0) as u64,
            bytes_down: r.i64(13)?.max(0) as u64,
            table: r.opt_text(14)?,
            network_type: TelemetryNetwork::from_name(&r.text(15)?),
            app_version: r.text(16)?,
            device_model: r.text(17)?,
            os_version: r.text(18)?,
            conflicts: r.i64(21)?.max(0) as u64,
            rejected: r.i64(22)?.max(0) as u64,
            pending_uploads: r.opt_i64(23)?.map(|n| n.max(0) as u64),
        },
        user_id: r.text(19)?,
        received_at: r.i64(20)?,
    })
}

/// Events matching the query, newest first.
pub fn list(db: &Db, q: &TelemetryQuery) -> StoreResult<Vec<StoredEvent>> {
    let (clause, mut params) = where_clause(q)?;
    let limit = q.limit.unwrap_or(500);
    if !(1..=MAX_LIST).contains(&limit) {
        return Err(StoreError::invalid(
            codes::BAD_REQUEST,
            format!("limit is 1 to {MAX_LIST}"),
        ));
    }
    params.push(Value::Integer(i64::from(limit)));
    let sql =
        format!("SELECT {COLUMNS} FROM _fs_telemetry{clause} ORDER BY started_at DESC, id LIMIT ?");
    db.read(|c| c.query(&sql, &params)?.iter().map(read_event).collect())
}

/// Duration percentiles (nearest rank), ms.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50: i64,
    pub p90: i64,
    pub p99: i64,
    pub max: i64,
}

fn percentiles(mut v: Vec<i64>) -> Option<Percentiles> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let at = |p: f64| {
        let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
        v[rank - 1]
    };
    Some(Percentiles {
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        max: v[v.len() - 1],
    })
}

/// Counts of syncs by some key.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Counts {
    pub syncs: u64,
    pub failures: u64,
}

/// One day of the summary (UTC).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Day {
    /// `YYYY-MM-DD`.
    pub day: String,
    pub syncs: u64,
    pub failures: u64,
    pub rows_down: u64,
    pub bytes_down: u64,
    pub duration_ms: Option<Percentiles>,
}

/// Downloads of one table.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TableSummary {
    pub table: String,
    pub downloads: u64,
    pub rows_down: u64,
    pub bytes_down: u64,
    pub duration_ms: Option<Percentiles>,
}

/// Aggregates for charts (`GET /v1/admin/telemetry/summary`). Sync counts,
/// rates and durations come from the `sync` events; per-table figures from
/// the `table_download` events.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    pub device: Option<String>,
    pub user: Option<String>,
    pub since: Option<i64>,
    pub devices: u64,
    pub syncs: u64,
    /// Syncs that completed, with or without conflicts.
    pub successes: u64,
    /// Completed syncs that left conflicts or rejected changes (counted in
    /// `successes` too).
    pub with_conflicts: u64,
    pub failures: u64,
    /// failures / syncs (0 when there are none).
    pub failure_rate: f64,
    pub failures_by_type: BTreeMap<String, u64>,
    pub by_mode: BTreeMap<String, Counts>,
    pub by_network_type: BTreeMap<String, Counts>,
    pub duration_ms: Option<Percentiles>,
    pub active_duration_ms: Option<Percentiles>,
    pub rows_up: u64,
    pub rows_down: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub tables: Vec<TableSummary>,
    /// Oldest day first.
    pub per_day: Vec<Day>,
}

/// Aggregates the events matching the query.
pub fn summary(db: &Db, q: &TelemetryQuery) -> StoreResult<Summary> {
    let (clause, params) = where_clause(q)?;
    let sql = format!("SELECT {COLUMNS} FROM _fs_telemetry{clause} ORDER BY started_at");
    let events: Vec<StoredEvent> =
        db.read(|c| c.query(&sql, &params)?.iter().map(read_event).collect())?;
    let mut s = Summary {
        device: q.device.clone(),
        user: q.user.clone(),
        since: since_ms(q)?,
        ..Default::default()
    };
    let mut devices = std::collections::BTreeSet::new();
    let mut durations = Vec::new();
    let mut active = Vec::new();
    let mut days: BTreeMap<i64, (Day, Vec<i64>)> = BTreeMap::new();
    let mut tables: BTreeMap<String, (TableSummary, Vec<i64>)> = BTreeMap::new();
    for StoredEvent { event: e, .. } in &events {
        devices.insert(e.device_id.clone());
        let failed = e.result == TelemetryResult::Failure;
        match e.kind {
            TelemetryKind::Sync => {
                s.syncs += 1;
                if failed {
                    s.failures += 1;
                    *s.failures_by_type
                        .entry(e.failure_type.clone().unwrap_or_else(|| "unknown".into()))
                        .or_default() += 1;
                } else {
                    s.successes += 1;
                    if e.conflicts + e.rejected > 0 {
                        s.with_conflicts += 1;
                    }
                }
                for (map, key) in [
                    (&mut s.by_mode, e.mode.as_str().to_owned()),
                    (&mut s.by_network_type, e.network_type.as_str().to_owned()),
                ] {
                    let c = map.entry(key).or_default();
                    c.syncs += 1;
                    c.failures += u64::from(failed);
                }
                durations.push(e.duration_ms);
                active.push(e.active_duration_ms);
                s.rows_up += e.rows_up;
                s.rows_down += e.rows_down;
                s.bytes_up += e.bytes_up;
                s.bytes_down += e.bytes_down;
                let day = e.started_at.div_euclid(86_400_000);
                let (d, ds) = days.entry(day).or_insert_with(|| {
                    (
                        Day {
                            day: format_date(day),
                            ..Default::default()
                        },
                        Vec::new(),
                    )
                });
                d.syncs += 1;
                d.failures += u64::from(failed);
                d.rows_down += e.rows_down;
                d.bytes_down += e.bytes_down;
                ds.push(e.duration_ms);
            }
            TelemetryKind::TableDownload => {
                let name = e.table.clone().unwrap_or_default();
                let (t, ts) = tables.entry(name.clone()).or_insert_with(|| {
                    (
                        TableSummary {
                            table: name,
                            ..Default::default()
                        },
                        Vec::new(),
                    )
                });
                t.downloads += 1;
                t.rows_down += e.rows_down;
                t.bytes_down += e.bytes_down;
                ts.push(e.duration_ms);
            }
        }
    }
    s.devices = devices.len() as u64;
    s.failure_rate = if s.syncs == 0 {
        0.0
    } else {
        s.failures as f64 / s.syncs as f64
    };
    s.duration_ms = percentiles(durations);
    s.active_duration_ms = percentiles(active);
    s.per_day = days
        .into_values()
        .map(|(mut d, v)| {
            d.duration_ms = percentiles(v);
            d
        })
        .collect();
    s.tables = tables
        .into_values()
        .map(|(mut t, v)| {
            t.duration_ms = percentiles(v);
            t
        })
        .collect();
    Ok(s)
}

/// Number of stored events (tests, diagnostics).
pub fn count(db: &Db) -> StoreResult<u64> {
    db.read(|c| {
        Ok(c.query_one("SELECT COUNT(*) FROM _fs_telemetry", &[])?
            .i64(0)?
            .max(0) as u64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let p = percentiles((1..=100).collect()).expect("some");
        assert_eq!((p.p50, p.p90, p.p99, p.max), (50, 90, 99, 100));
        assert!(percentiles(vec![]).is_none());
        let one = percentiles(vec![7]).expect("one");
        assert_eq!((one.p50, one.max), (7, 7));
    }
}
