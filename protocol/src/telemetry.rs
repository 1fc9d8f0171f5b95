//! Sync telemetry on the wire (C14): the events a device uploads in batches
//! to `POST /v1/telemetry` and the server's answer. Events carry counts,
//! durations, table names and error classes, never field values. The
//! device-side queue lives in the core; storage and charts on the server.

use serde::{Deserialize, Serialize};

/// What an event describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TelemetryKind {
    /// A whole sync.
    Sync,
    /// The download of one table within a sync.
    TableDownload,
}

/// One telemetry event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetryEvent {
    /// Unique id of the event (uploads are idempotent by it).
    pub id: String,
    pub kind: TelemetryKind,
    pub device_id: String,
    /// Id shared by a sync's event and its table events.
    pub sync_id: String,
    /// `first`, `delta`, `refresh` or `forced`.
    pub mode: String,
    /// `success` or `failure`.
    pub result: String,
    /// Error class on failure (`network_unavailable`, `unauthorized`, ...).
    pub failure_type: Option<String>,
    /// Start, ms since the epoch.
    pub started_at: i64,
    pub duration_ms: i64,
    /// Part of the duration the app was in the foreground.
    pub active_duration_ms: i64,
    pub rows_up: u64,
    pub rows_down: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// The table, for a table download.
    pub table: Option<String>,
    /// `wifi`, `cellular`, `ethernet`, `other` or `none`.
    pub network_type: String,
    pub app_version: String,
    pub device_model: String,
    pub os_version: String,
    /// A completed sync: the local changes where the server kept its
    /// version (conflict detection on). A sync with conflicts completed,
    /// but is not a clean success.
    #[serde(default)]
    pub conflicts: u64,
    /// A completed sync: the local changes the server refused.
    #[serde(default)]
    pub rejected: u64,
    /// Local changes still waiting for upload when the sync ended (a sync
    /// event; absent from older devices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_uploads: Option<u64>,
}

/// Body of `POST /v1/telemetry`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetryBatch {
    pub events: Vec<TelemetryEvent>,
}

/// Answer of `POST /v1/telemetry`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetryAccepted {
    /// Events stored (replays of known ids are not counted).
    pub accepted: u64,
}
