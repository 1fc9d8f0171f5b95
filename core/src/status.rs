//! What the technician sees about sync (C9): the sync icon state, the
//! engine's events and sync reports, and the listener mechanism that
//! delivers every change of them to the app. The offline status and device status records live in
//! [`crate::engine`] ([`crate::OfflineTableStatus`], [`crate::DeviceStatus`]).
//!
//! Icon precedence: syncing, then not connected (offline mode, Network or
//! Service Unavailable), then error (the last sync failed), then warning (the
//! last sync left conflicts or rejected changes), then pending uploads, then
//! connected (up to date).
//!
//! Listeners are trait objects the app implements. Registering one returns a
//! [`ListenerHandle`]; `cancel()` or dropping the handle stops delivery. A
//! status listener receives the current status at once, then each change.
//! Callbacks run on the engine's thread that caused the change and must
//! return quickly; they may call back into the engine.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use serde::Serialize;

use crate::network::NetworkStatus;
use crate::notifications::Notification;
use crate::scheduler::{Blocker, SyncMode};
use crate::store::LocalSyncError;

/// What happened to one table during a sync.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TableReport {
    pub table: String,
    /// True while the table's first download was (still) under way.
    pub initial: bool,
    pub pages: u64,
    pub rows_upserted: u64,
    pub rows_removed: u64,
    /// Pulled rows left alone because a local change waits for upload.
    pub rows_kept_pending: u64,
    pub bytes_down: u64,
}

/// What one sync did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SyncReport {
    /// Milliseconds since the epoch.
    pub started_at: i64,
    pub duration_ms: i64,
    /// Local changes the server applied.
    pub uploaded: u64,
    /// Local changes where the server kept its version (conflict detection on).
    pub conflicts: Vec<LocalSyncError>,
    /// Local changes the server refused.
    pub rejected: Vec<LocalSyncError>,
    pub tables: Vec<TableReport>,
    pub profile_version: i64,
    pub profile_changed: bool,
    pub tables_added: Vec<String>,
    pub tables_dropped: Vec<String>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// Tables not pulled because the server reported nothing new for them
    /// (smart sync, `POST /v1/sync/changes`); they count as synced.
    pub skipped_unchanged: Vec<String>,
}

impl SyncReport {
    /// Pages pulled, over all tables.
    pub fn pages(&self) -> u64 {
        self.tables.iter().map(|t| t.pages).sum()
    }
}

/// Progress and results, as they happen. Receive them with
/// [`Engine::add_event_listener`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum SyncEvent {
    SyncStarted,
    Uploaded {
        count: u64,
        pending: u64,
    },
    TableProgress {
        table: String,
        initial: bool,
        rows_done: u64,
        rows_total: Option<u64>,
        bytes_down: u64,
    },
    TableDone {
        table: String,
        initial: bool,
    },
    SyncFinished {
        report: SyncReport,
    },
    SyncFailed {
        message: String,
    },
    /// The network check's result changed.
    NetworkChanged {
        status: NetworkStatus,
    },
    /// Online mode was turned on or off, and why.
    OnlineModeChanged {
        online: bool,
        reason: String,
    },
    /// A sync notification (initial sync, Refresh, catch-up).
    Notification {
        notification: Notification,
    },
    /// The current status, sent to an event listener when it registers.
    Status {
        status: SyncStatus,
    },
}

/// The sync icon's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncIcon {
    /// Offline mode: no network, or Network or Service Unavailable.
    NotConnected,
    /// Connected and up to date.
    Connected,
    /// A sync is running (see the progress).
    Syncing,
    /// Connected; local changes wait for upload.
    PendingUploads,
    /// The last sync failed.
    Error,
    /// The last sync finished with conflicts or rejected changes.
    Warning,
}

/// Progress of the running sync.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SyncProgress {
    pub sync_id: String,
    pub mode: SyncMode,
    /// The table downloading now.
    pub table: Option<String>,
    /// Rows received so far in this sync.
    pub rows_done: u64,
    /// Rows expected, over the tables whose size is known so far: every
    /// table of the sync once the server counted them (at its start).
    pub rows_total: Option<u64>,
    pub bytes_down: u64,
    /// The share done, 0.0 to 1.0, when a total is known: rows done over
    /// rows expected, never less than an earlier value of the same sync
    /// (a total that grows holds it until the rows catch up). 1.0 only
    /// once every expected row is written to the device's file.
    pub fraction: Option<f64>,
}

/// The sync status snapshot behind the icon.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SyncStatus {
    pub icon: SyncIcon,
    /// Text for the icon's tooltip or banner (for example "Network or
    /// Service Unavailable: ...").
    pub message: Option<String>,
    pub network: NetworkStatus,
    /// Online mode is on.
    pub online_mode: bool,
    pub app_active: bool,
    pub progress: Option<SyncProgress>,
    /// Local changes waiting for upload.
    pub pending_uploads: u64,
    /// Latest successful sync of any table, ms since the epoch.
    pub last_sync_at: Option<i64>,
    /// When the scheduler looks again, ms since the epoch.
    pub next_sync_at: Option<i64>,
    /// Why the scheduler is not syncing now, when it last looked.
    pub waiting_for: Option<Blocker>,
    /// Consecutive failed syncs (0 after a success).
    pub failures: u32,
    /// The OS background jobs the shell keeps scheduled now.
    pub background: crate::scheduler::BackgroundPlan,
}

/// Receives every change of the sync status.
pub trait StatusListener: Send + Sync {
    /// Called with the current status at registration, then on each change.
    fn on_status(&self, status: SyncStatus);
}

/// Receives every engine event (sync progress, notifications, network and
/// online-mode changes).
pub trait EventListener: Send + Sync {
    /// Called for each event.
    fn on_event(&self, event: SyncEvent);
}

type Registry<T> = Mutex<Vec<(u64, Arc<T>)>>;

/// An observed query and who receives its results.
pub(crate) struct QueryObserver {
    pub(crate) query: crate::query::Query,
    pub(crate) listener: Arc<dyn crate::query::QueryListener>,
}

/// The engine's registered listeners.
#[derive(Default)]
pub(crate) struct Listeners {
    next: AtomicU64,
    status: Registry<dyn StatusListener>,
    events: Registry<dyn EventListener>,
    queries: Registry<QueryObserver>,
    last: Mutex<Option<SyncStatus>>,
}

impl Listeners {
    pub(crate) fn add_status(self: &Arc<Self>, l: Arc<dyn StatusListener>) -> ListenerHandle {
        let id = self.next.fetch_add(1, Ordering::SeqCst);
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((id, l));
        ListenerHandle {
            id,
            registry: Arc::downgrade(self),
        }
    }

    pub(crate) fn add_events(self: &Arc<Self>, l: Arc<dyn EventListener>) -> ListenerHandle {
        let id = self.next.fetch_add(1, Ordering::SeqCst);
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((id, l));
        ListenerHandle {
            id,
            registry: Arc::downgrade(self),
        }
    }

    pub(crate) fn add_query(self: &Arc<Self>, o: Arc<QueryObserver>) -> ListenerHandle {
        let id = self.next.fetch_add(1, Ordering::SeqCst);
        self.queries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((id, o));
        ListenerHandle {
            id,
            registry: Arc::downgrade(self),
        }
    }

    /// The observed queries over any of `tables`.
    pub(crate) fn queries_over(
        &self,
        tables: &std::collections::BTreeSet<String>,
    ) -> Vec<Arc<QueryObserver>> {
        self.queries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, o)| tables.contains(&o.query.table))
            .map(|(_, o)| o.clone())
            .collect()
    }

    fn remove(&self, id: u64) {
        self.queries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(i, _)| *i != id);
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(i, _)| *i != id);
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(i, _)| *i != id);
    }

    /// Delivers `status` to every status listener when it differs from the
    /// last one delivered.
    pub(crate) fn publish_status(&self, status: SyncStatus) {
        {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            if last.as_ref() == Some(&status) {
                return;
            }
            *last = Some(status.clone());
        }
        let targets: Vec<Arc<dyn StatusListener>> = self
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(_, l)| l.clone())
            .collect();
        for l in targets {
            l.on_status(status.clone());
        }
    }

    /// Delivers an event to every event listener.
    pub(crate) fn publish_event(&self, event: &SyncEvent) {
        let targets: Vec<Arc<dyn EventListener>> = self
            .events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(_, l)| l.clone())
            .collect();
        for l in targets {
            l.on_event(event.clone());
        }
    }
}

/// Keeps a listener registered; `cancel()` or drop stops delivery.
pub struct ListenerHandle {
    id: u64,
    registry: Weak<Listeners>,
}

impl ListenerHandle {
    /// Stops delivery to the listener (idempotent).
    pub fn cancel(&self) {
        if let Some(r) = self.registry.upgrade() {
            r.remove(self.id);
        }
    }
}

impl Drop for ListenerHandle {
    fn drop(&mut self) {
        self.cancel();
    }
}
