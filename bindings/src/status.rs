//! The status snapshots: Device Status (pending uploads, recent sync errors,
//! database size, offline profile) and, per table, the Offline Status (last
//! successful sync and row count).

use fieldsync_core::{DeviceStatus as CoreDeviceStatus, OfflineTableStatus as CoreTableStatus};

use crate::records::{SyncError, count};

/// Offline Status of one table of the offline profile.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct OfflineTableStatus {
    /// Name of the table.
    pub table: String,
    /// Rows on the device.
    pub rows: i64,
    /// Last successful sync, milliseconds since the epoch; none before the first.
    pub last_sync_at_ms: Option<i64>,
    /// True once the table's first download finished.
    pub initial_sync_done: bool,
    /// Local changes of this table waiting for upload.
    pub pending_uploads: i64,
    /// Sync interval of the table, in seconds.
    pub sync_interval_secs: i64,
    /// The last sync failure of this table, if the last sync failed.
    pub last_error: Option<String>,
}

impl From<CoreTableStatus> for OfflineTableStatus {
    fn from(t: CoreTableStatus) -> Self {
        OfflineTableStatus {
            table: t.table,
            rows: count(t.rows),
            last_sync_at_ms: t.last_sync_at,
            initial_sync_done: t.initial_sync_done,
            pending_uploads: count(t.pending_uploads),
            sync_interval_secs: i64::from(t.sync_interval_secs),
            last_error: t.last_error,
        }
    }
}

/// Device Status: a snapshot of the device's state.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct DeviceStatus {
    /// This device's id (stable for the life of the database).
    pub device_id: String,
    /// Name of the offline profile in force; none before the first sync.
    pub profile_name: Option<String>,
    /// Version of the offline profile in force.
    pub profile_version: Option<i64>,
    /// Version of the server's data model the profile follows.
    pub model_version: Option<i64>,
    /// Local changes waiting for upload, over all tables.
    pub pending_uploads: i64,
    /// Size of the device database in bytes.
    pub database_bytes: i64,
    /// Offline Status of each table of the profile.
    pub tables: Vec<OfflineTableStatus>,
    /// The most recent sync errors, newest first.
    pub recent_errors: Vec<SyncError>,
    /// The network check's view.
    pub network: crate::service::NetworkStatus,
    /// The device's sync settings.
    pub settings: crate::service::SyncSettings,
    /// Per table, the tables its related-rows rules reach (transitively):
    /// it syncs together with any of them.
    pub dependency_closure: std::collections::HashMap<String, Vec<String>>,
    /// Telemetry events waiting for upload.
    pub pending_telemetry: i64,
    /// Online mode is on.
    pub online_mode: bool,
}

impl From<CoreDeviceStatus> for DeviceStatus {
    fn from(s: CoreDeviceStatus) -> Self {
        DeviceStatus {
            device_id: s.device_id,
            profile_name: s.profile_name,
            profile_version: s.profile_version,
            model_version: s.model_version,
            pending_uploads: count(s.pending_uploads),
            database_bytes: count(s.database_bytes),
            tables: s.tables.into_iter().map(Into::into).collect(),
            recent_errors: s.recent_errors.into_iter().map(Into::into).collect(),
            network: s.network.into(),
            settings: s.settings.into(),
            dependency_closure: s.dependency_closure.into_iter().collect(),
            pending_telemetry: count(s.pending_telemetry),
            online_mode: s.online_mode,
        }
    }
}
