//! Sync events for listeners: the event enum, the sync icon, and the
//! listener callback the app implements. [`crate::listeners`] delivers them.

use fieldsync_core::SyncEvent as CoreSyncEvent;

use crate::records::{SyncReport, count};
use crate::service::SyncStatus;

/// Progress and results of sync, as they happen.
#[derive(Debug, Clone, PartialEq, uniffi::Enum)]
pub enum SyncEvent {
    /// A sync started.
    SyncStarted,
    /// A batch of local changes was uploaded.
    Uploaded {
        /// Changes in this batch.
        count: i64,
        /// Changes still waiting for upload.
        pending: i64,
    },
    /// A page of a table was downloaded and stored.
    TableProgress {
        /// Name of the table.
        table: String,
        /// True during the table's first download.
        initial: bool,
        /// Rows stored so far in this sync.
        rows_done: i64,
        /// Rows to download, when the server said.
        rows_total: Option<i64>,
        /// Bytes downloaded so far for this table.
        bytes_down: i64,
    },
    /// A table is up to date.
    TableDone {
        /// Name of the table.
        table: String,
        /// True when this finished the table's first download.
        initial: bool,
    },
    /// The sync finished; the device is up to date with the server.
    SyncFinished {
        /// What the sync did.
        report: SyncReport,
    },
    /// The sync stopped; what was committed so far is kept.
    SyncFailed {
        /// Why it stopped.
        reason: String,
    },
    /// The network check's result changed.
    NetworkChanged {
        /// The server answered the last probe in time.
        available: bool,
        /// No probe has answered yet (the engine is in offline mode).
        checking: bool,
        /// "Network or Service Unavailable: ..." when unavailable.
        message: Option<String>,
    },
    /// Online mode was turned on or off, and why.
    OnlineModeChanged {
        /// Online mode is on.
        online: bool,
        /// Why it changed (for example the network was lost).
        reason: String,
    },
    /// A sync notification: initial sync, a table's Refresh, or a large catch-up.
    Notification {
        /// Which notification.
        kind: NotificationKind,
        /// Progress, completed (refresh the view) or failed.
        phase: NotificationPhase,
        /// Tables of the sync.
        tables: Vec<String>,
        /// Rows so far.
        rows_done: i64,
        /// Rows in all, when known.
        rows_total: Option<i64>,
        /// The share done, 0.0 to 1.0, as the status's progress has it.
        fraction: Option<f64>,
        /// Bytes so far.
        bytes_done: i64,
        /// True on completion: reload the view.
        refresh_view: bool,
        /// Text for the notification.
        message: String,
    },
    /// The current sync status, sent to an event listener when it
    /// registers (its changes go to status listeners).
    Status {
        /// The status.
        status: SyncStatus,
    },
}

/// The kinds of sync notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum NotificationKind {
    /// The first download of the offline profile.
    InitialSync,
    /// The user's Refresh of a table.
    TableRefresh,
    /// A large incremental sync after a long idle period.
    CatchUp,
}

/// Where a notification stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum NotificationPhase {
    /// Still running.
    Progress,
    /// Finished: the UI should refresh its view.
    Completed,
    /// Stopped by an error.
    Failed,
}

impl From<CoreSyncEvent> for SyncEvent {
    fn from(e: CoreSyncEvent) -> Self {
        match e {
            CoreSyncEvent::SyncStarted => SyncEvent::SyncStarted,
            CoreSyncEvent::Uploaded { count: c, pending } => SyncEvent::Uploaded {
                count: count(c),
                pending: count(pending),
            },
            CoreSyncEvent::TableProgress {
                table,
                initial,
                rows_done,
                rows_total,
                bytes_down,
            } => SyncEvent::TableProgress {
                table,
                initial,
                rows_done: count(rows_done),
                rows_total: rows_total.map(count),
                bytes_down: count(bytes_down),
            },
            CoreSyncEvent::TableDone { table, initial } => SyncEvent::TableDone { table, initial },
            CoreSyncEvent::SyncFinished { report } => SyncEvent::SyncFinished {
                report: report.into(),
            },
            CoreSyncEvent::SyncFailed { message } => SyncEvent::SyncFailed { reason: message },
            CoreSyncEvent::NetworkChanged { status } => SyncEvent::NetworkChanged {
                available: status.reachability == fieldsync_core::network::Reachability::Available,
                checking: status.reachability == fieldsync_core::network::Reachability::Checking,
                message: status.message,
            },
            CoreSyncEvent::OnlineModeChanged { online, reason } => {
                SyncEvent::OnlineModeChanged { online, reason }
            }
            CoreSyncEvent::Notification { notification: n } => {
                use fieldsync_core::notifications::{
                    NotificationKind as K, NotificationPhase as P,
                };
                SyncEvent::Notification {
                    kind: match n.kind {
                        K::InitialSync => NotificationKind::InitialSync,
                        K::TableRefresh => NotificationKind::TableRefresh,
                        K::CatchUp => NotificationKind::CatchUp,
                    },
                    phase: match n.phase {
                        P::Progress => NotificationPhase::Progress,
                        P::Completed => NotificationPhase::Completed,
                        P::Failed => NotificationPhase::Failed,
                    },
                    tables: n.tables,
                    rows_done: count(n.rows_done),
                    rows_total: n.rows_total.map(count),
                    fraction: n.fraction,
                    bytes_done: count(n.bytes_done),
                    refresh_view: n.refresh_view,
                    message: n.message,
                }
            }
            CoreSyncEvent::Status { status } => SyncEvent::Status {
                status: status.into(),
            },
        }
    }
}

/// Implemented by the app to receive sync events.
#[uniffi::export(with_foreign)]
pub trait SyncEventListener: Send + Sync {
    /// Called for each event, in order, on a background thread.
    fn on_event(&self, event: SyncEvent);
}
