//! Sync telemetry (C14): one event per sync and one per table download,
//! emitted through `tracing` (target `fieldsync::telemetry`), kept in the
//! device's `_fs_telemetry` table and uploaded in batches to
//! `POST /v1/telemetry` after each sync while telemetry is enabled.
//!
//! Turning telemetry off stops collection at once: no event is recorded from
//! then on, events not yet uploaded are discarded, and nothing is uploaded.
//! Events carry counts, durations, table names and error classes, never
//! field values.

use rusqlite::params;
use serde::{Deserialize, Serialize};

pub use fieldsync_protocol::telemetry::{
    TelemetryAccepted, TelemetryBatch, TelemetryEvent, TelemetryKind, TelemetryMode,
    TelemetryNetwork, TelemetryResult,
};

use crate::error::Result;
use crate::store::Store;

/// Most events per upload request (the server accepts up to 1000).
pub const TELEMETRY_BATCH: usize = 200;
/// Most events kept on the device; older ones are dropped first.
pub const TELEMETRY_KEEP: i64 = 5_000;

/// The app and device an engine runs in, for telemetry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppInfo {
    pub app_version: String,
    pub device_model: String,
    pub os_version: String,
}

impl Default for AppInfo {
    fn default() -> Self {
        Self {
            app_version: env!("CARGO_PKG_VERSION").into(),
            device_model: "unknown".into(),
            os_version: std::env::consts::OS.into(),
        }
    }
}

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS _fs_telemetry (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    body TEXT NOT NULL
)";

/// Creates the telemetry table.
pub(crate) fn init(store: &Store) -> Result<()> {
    store.with_writer(|c| {
        c.execute_batch(SCHEMA)?;
        Ok(())
    })
}

/// Emits events through `tracing` and keeps them for upload.
pub(crate) fn record(store: &Store, events: &[TelemetryEvent]) -> Result<()> {
    for e in events {
        tracing::info!(
            target: "fieldsync::telemetry",
            kind = ?e.kind,
            sync_id = %e.sync_id,
            mode = e.mode.as_str(),
            result = e.result.as_str(),
            failure_type = e.failure_type.as_deref().unwrap_or(""),
            duration_ms = e.duration_ms,
            active_duration_ms = e.active_duration_ms,
            rows_up = e.rows_up,
            rows_down = e.rows_down,
            bytes_up = e.bytes_up,
            bytes_down = e.bytes_down,
            table = e.table.as_deref().unwrap_or(""),
            network_type = e.network_type.as_str(),
            "sync telemetry"
        );
    }
    // Without an fsync of its own (`Store::in_sync_transaction`): a power
    // cut may lose the last run's events, never a user's data. Committed
    // with `synchronous=FULL`, this was the fsync of everything the run had
    // written (its pages commit without one), milliseconds at the end of
    // every sync; that now happens at the next checkpoint or local write.
    store.in_sync_transaction(|tx| {
        for e in events {
            tx.execute(
                "INSERT OR IGNORE INTO _fs_telemetry (id, body) VALUES (?1, ?2)",
                params![e.id, serde_json::to_string(e)?],
            )?;
        }
        tx.execute(
            "DELETE FROM _fs_telemetry WHERE seq <= (SELECT MAX(seq) FROM _fs_telemetry) - ?1",
            [TELEMETRY_KEEP],
        )?;
        Ok(())
    })
}

/// The oldest events waiting for upload.
pub(crate) fn pending(store: &Store, limit: usize) -> Result<Vec<(i64, TelemetryEvent)>> {
    store.with_reader(|c| {
        let mut stmt = c.prepare("SELECT seq, body FROM _fs_telemetry ORDER BY seq LIMIT ?1")?;
        let mut rows = stmt.query([limit as i64])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let body: String = r.get(1)?;
            // A row that does not decode is dropped at the next upload.
            if let Ok(e) = serde_json::from_str(&body) {
                out.push((r.get(0)?, e));
            } else {
                out.push((r.get(0)?, corrupt_event()));
            }
        }
        Ok(out)
    })
}

/// Removes events up to `seq` (uploaded).
pub(crate) fn remove_through(store: &Store, seq: i64) -> Result<()> {
    // Without an fsync, as `record`: lost, the events are sent again and the
    // server keeps each once (by its id).
    store.in_sync_transaction(|tx| {
        tx.execute("DELETE FROM _fs_telemetry WHERE seq <= ?1", [seq])?;
        Ok(())
    })
}

/// Discards every event not yet uploaded.
pub(crate) fn clear(store: &Store) -> Result<()> {
    store.with_writer(|c| {
        c.execute("DELETE FROM _fs_telemetry", [])?;
        Ok(())
    })
}

/// Number of events waiting for upload.
pub(crate) fn count(store: &Store) -> Result<u64> {
    store.with_reader(|c| {
        let n: i64 = c.query_row("SELECT COUNT(*) FROM _fs_telemetry", [], |r| r.get(0))?;
        Ok(n.max(0) as u64)
    })
}

/// Stands in for a kept event that no longer decodes (its empty id makes
/// the upload drop it).
fn corrupt_event() -> TelemetryEvent {
    TelemetryEvent {
        id: String::new(),
        kind: TelemetryKind::Sync,
        device_id: String::new(),
        sync_id: String::new(),
        mode: TelemetryMode::Unknown,
        result: TelemetryResult::Unknown,
        failure_type: None,
        started_at: 0,
        duration_ms: 0,
        active_duration_ms: 0,
        rows_up: 0,
        rows_down: 0,
        bytes_up: 0,
        bytes_down: 0,
        table: None,
        network_type: TelemetryNetwork::Unknown,
        app_version: String::new(),
        device_model: String::new(),
        os_version: String::new(),
        conflicts: 0,
        rejected: 0,
        pending_uploads: None,
    }
}
