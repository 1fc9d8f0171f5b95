//! Sync notifications (C10): the in-app messages shown while an initial
//! download, a user's Refresh of a table, or a large incremental sync after a
//! long idle period runs. Each reports progress (rows and bytes so far of the
//! total) and ends with a completion (or failure) notification whose
//! `refresh_view` tells the UI to reload what it shows.
//!
//! A "catch-up" notification starts when a scheduled or forced sync begins
//! at least [`NotificationThresholds::idle_secs`] after the device's last
//! successful sync and the rows to download (known per table from its first
//! page) reach [`NotificationThresholds::rows`]. Defaults: 24 hours idle,
//! 1000 rows. Totals cover the tables whose size is known so far in the
//! sync; the byte total is an estimate (bytes so far per row times rows).

use serde::{Deserialize, Serialize};

/// Which notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationKind {
    /// First download of the profile (or of tables a profile change added).
    InitialSync,
    /// The user's Refresh of a table.
    TableRefresh,
    /// A large incremental sync after a long idle period.
    CatchUp,
}

/// Where the notified sync is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationPhase {
    Progress,
    /// Finished: the UI should refresh its view.
    Completed,
    Failed,
}

/// One notification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    pub kind: NotificationKind,
    pub phase: NotificationPhase,
    pub sync_id: String,
    /// Tables of the sync (for a Refresh: the refreshed tables).
    pub tables: Vec<String>,
    pub rows_done: u64,
    pub rows_total: Option<u64>,
    /// The share done, as the status's progress has it (1.0 on completion).
    pub fraction: Option<f64>,
    pub bytes_done: u64,
    /// Estimated from the bytes per row so far.
    pub bytes_total: Option<u64>,
    /// True on completion: reload the view.
    pub refresh_view: bool,
    /// Text for the notification.
    pub message: String,
}

/// When a catch-up notification is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationThresholds {
    /// Seconds since the last successful sync (default 86400).
    pub idle_secs: u64,
    /// Rows to download (default 1000).
    pub rows: u64,
}

impl Default for NotificationThresholds {
    fn default() -> Self {
        Self {
            idle_secs: 86_400,
            rows: 1_000,
        }
    }
}

/// Estimated byte total from progress so far.
pub(crate) fn estimate_bytes(
    rows_done: u64,
    bytes_done: u64,
    rows_total: Option<u64>,
) -> Option<u64> {
    let total = rows_total?;
    if rows_done == 0 {
        return None;
    }
    Some(((bytes_done as u128 * total as u128) / rows_done as u128) as u64)
}

/// The text of a notification.
pub(crate) fn message(
    kind: NotificationKind,
    phase: NotificationPhase,
    tables: &[String],
) -> String {
    let what = match kind {
        NotificationKind::InitialSync => "Downloading your offline data".to_owned(),
        NotificationKind::TableRefresh => format!("Refreshing {}", tables.join(", ")),
        NotificationKind::CatchUp => "Downloading changes since your last sync".to_owned(),
    };
    match phase {
        NotificationPhase::Progress => what,
        NotificationPhase::Completed => format!("{what}: done. Refresh to see the latest data."),
        NotificationPhase::Failed => format!("{what}: failed; will retry."),
    }
}
