//! Why a sync runs: the mode a run records, the scheduler decides and
//! telemetry reports.

use fieldsync_protocol::telemetry::TelemetryMode;
use serde::{Deserialize, Serialize};

/// Why a sync runs; also the telemetry "mode".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    /// The first download of one or more tables.
    First,
    /// A scheduled incremental sync of due tables.
    Delta,
    /// The user's Refresh of a table.
    Refresh,
    /// The user's "sync now" (or a direct sync call).
    Forced,
}

impl From<SyncMode> for TelemetryMode {
    fn from(m: SyncMode) -> Self {
        use TelemetryMode as T;
        match m {
            SyncMode::First => T::First,
            SyncMode::Delta => T::Delta,
            SyncMode::Refresh => T::Refresh,
            SyncMode::Forced => T::Forced,
        }
    }
}

impl SyncMode {
    /// Wire and telemetry name.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncMode::First => "first",
            SyncMode::Delta => "delta",
            SyncMode::Refresh => "refresh",
            SyncMode::Forced => "forced",
        }
    }
}
