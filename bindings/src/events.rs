//! Sync events for listeners: the event enum, the listener callback the app
//! implements, and the handle that keeps a subscription alive.
//!
//! [`crate::Engine::add_event_listener`] and
//! [`crate::Engine::add_status_listener`] register a listener with the core
//! (its one subscription mechanism) that queues what it receives; a task on
//! the library runtime delivers the queue to the app's listener. Callbacks
//! arrive in order on a background thread (never the engine's, never the
//! caller's); apps hop to their UI thread themselves. The subscription lasts as long as its
//! [`ListenerHandle`]: `cancel()` or dropping the handle (Kotlin `close()`,
//! or the garbage collector; Swift deinit) stops it, and no callback starts
//! after `cancel()` returns.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use fieldsync_core::SyncEvent as CoreSyncEvent;
use tokio::sync::mpsc;

use crate::records::{SyncReport, count};
use crate::runtime::runtime;
use crate::service::{StatusListener, SyncStatus};

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

/// The sync icon's states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum SyncIcon {
    /// Offline mode: no network, or Network or Service Unavailable.
    NotConnected,
    /// Connected and up to date.
    Connected,
    /// A sync is running.
    Syncing,
    /// Connected; local changes wait for upload.
    PendingUploads,
    /// The last sync failed.
    Error,
    /// The last sync finished with conflicts or rejected changes.
    Warning,
}

impl From<fieldsync_core::status::SyncIcon> for SyncIcon {
    fn from(i: fieldsync_core::status::SyncIcon) -> Self {
        use fieldsync_core::status::SyncIcon as C;
        match i {
            C::NotConnected => SyncIcon::NotConnected,
            C::Connected => SyncIcon::Connected,
            C::Syncing => SyncIcon::Syncing,
            C::PendingUploads => SyncIcon::PendingUploads,
            C::Error => SyncIcon::Error,
            C::Warning => SyncIcon::Warning,
        }
    }
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

thread_local! {
    /// True on a thread while it runs a listener callback.
    static IN_CALLBACK: Cell<bool> = const { Cell::new(false) };
}

struct Shared {
    active: AtomicBool,
    /// Held while a callback runs, so `cancel()` can wait for it.
    delivering: Mutex<()>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The core's registration; dropped on cancel.
    core: Mutex<Option<Arc<fieldsync_core::ListenerHandle>>>,
}

/// Keeps a listener subscribed; cancel it, or drop it, to stop the callbacks.
#[derive(uniffi::Object)]
pub struct ListenerHandle {
    shared: Arc<Shared>,
}

/// What a core listener queues for delivery.
pub(crate) enum Delivery {
    Event(SyncEvent),
    Status(SyncStatus),
    Query(Result<Vec<crate::records::Record>, crate::FieldSyncError>),
}

/// The core's listener: queues, never blocks the engine's thread.
pub(crate) struct Queue(mpsc::UnboundedSender<Delivery>);

impl fieldsync_core::EventListener for Queue {
    fn on_event(&self, event: CoreSyncEvent) {
        let _ = self.0.send(Delivery::Event(event.into()));
    }
}

impl fieldsync_core::StatusListener for Queue {
    fn on_status(&self, status: fieldsync_core::SyncStatus) {
        let _ = self.0.send(Delivery::Status(status.into()));
    }
}

impl fieldsync_core::QueryListener for Queue {
    fn on_result(&self, records: Vec<fieldsync_core::Record>) {
        let records = records.into_iter().map(Into::into).collect();
        let _ = self.0.send(Delivery::Query(Ok(records)));
    }
    fn on_error(&self, error: fieldsync_core::Error) {
        let _ = self.0.send(Delivery::Query(Err(error.into())));
    }
}

/// The app's listener, of any kind.
pub(crate) enum Target {
    Events(Arc<dyn SyncEventListener>),
    Status(Arc<dyn StatusListener>),
    Query(Arc<dyn crate::query::QueryResultListener>),
}

impl ListenerHandle {
    /// Registers a queue with the core through `register` and delivers what
    /// it receives to `target` on the library runtime, in order.
    pub(crate) fn start(
        register: impl FnOnce(
            Queue,
        )
            -> Result<Arc<fieldsync_core::ListenerHandle>, crate::FieldSyncError>,
        target: Target,
    ) -> Result<Arc<ListenerHandle>, crate::FieldSyncError> {
        let rt = runtime()?;
        let shared = Arc::new(Shared {
            active: AtomicBool::new(true),
            delivering: Mutex::new(()),
            task: Mutex::new(None),
            core: Mutex::new(None),
        });
        let (tx, mut rx) = mpsc::unbounded_channel();
        // Registered before the task starts: the current status, queued at
        // registration, is the first delivery.
        *lock(&shared.core) = Some(register(Queue(tx))?);
        let target = Arc::new(target);
        let s = shared.clone();
        let task = rt.spawn(async move {
            while let Some(item) = rx.recv().await {
                let (s, target) = (s.clone(), target.clone());
                // The callback is a blocking call into the JVM or Swift: keep
                // it off the async workers. Awaiting it keeps events in order.
                let delivered = tokio::task::spawn_blocking(move || deliver(&s, &target, item));
                if !matches!(delivered.await, Ok(true)) {
                    return;
                }
            }
        });
        *lock(&shared.task) = Some(task);
        Ok(Arc::new(ListenerHandle { shared }))
    }
}

/// Runs one callback unless the subscription was cancelled; false once it is.
fn deliver(shared: &Shared, target: &Target, item: Delivery) -> bool {
    let _guard = lock(&shared.delivering);
    if !shared.active.load(Ordering::SeqCst) {
        return false;
    }
    IN_CALLBACK.with(|f| f.set(true));
    match (target, item) {
        (Target::Events(l), Delivery::Event(e)) => l.on_event(e),
        (Target::Status(l), Delivery::Status(s)) => l.on_status(s),
        (Target::Query(l), Delivery::Query(Ok(records))) => l.on_result(records),
        (Target::Query(l), Delivery::Query(Err(e))) => l.on_error(e),
        _ => {}
    }
    IN_CALLBACK.with(|f| f.set(false));
    true
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[uniffi::export]
impl ListenerHandle {
    /// Stops the subscription. No callback starts after this returns (when
    /// called from inside a callback, that callback still finishes).
    pub fn cancel(&self) {
        self.shared.active.store(false, Ordering::SeqCst);
        if let Some(core) = lock(&self.shared.core).take() {
            core.cancel();
        }
        if let Some(task) = lock(&self.shared.task).take() {
            task.abort();
        }
        if !IN_CALLBACK.with(|f| f.get()) {
            // Wait for a callback that is running now to finish.
            drop(lock(&self.shared.delivering));
        }
    }

    /// True until the subscription is cancelled or its events end.
    pub fn is_active(&self) -> bool {
        self.shared.active.load(Ordering::SeqCst)
            && lock(&self.shared.task)
                .as_ref()
                .is_some_and(|t| !t.is_finished())
    }
}

impl Drop for ListenerHandle {
    fn drop(&mut self) {
        self.cancel();
    }
}
