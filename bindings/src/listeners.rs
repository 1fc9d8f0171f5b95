//! Delivery of core callbacks to the app's listeners, and the handle that
//! keeps a subscription alive.
//!
//! [`crate::Engine::add_event_listener`],
//! [`crate::Engine::add_status_listener`] and the query observers register a
//! [`Queue`] with the core (its one subscription mechanism); a task on the
//! library runtime delivers the queue to the app's listener. Callbacks
//! arrive in order on a background thread (never the engine's, never the
//! caller's); apps hop to their UI thread themselves. The subscription
//! lasts as long as its [`ListenerHandle`]: `cancel()` or dropping the
//! handle (Kotlin `close()`, or the garbage collector; Swift deinit) stops
//! it, and no callback starts after `cancel()` returns.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::runtime::runtime;

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

/// What a core listener queues for delivery, still in the core's types:
/// the conversion to the exported types runs on the delivery thread.
pub(crate) enum Delivery {
    Event(fieldsync_core::SyncEvent),
    Status(fieldsync_core::SyncStatus),
    Query(Result<Vec<fieldsync_core::Record>, fieldsync_core::Error>),
}

/// The core's listener: queues, never blocks the engine's thread.
pub(crate) struct Queue(mpsc::UnboundedSender<Delivery>);

impl fieldsync_core::EventListener for Queue {
    fn on_event(&self, event: fieldsync_core::SyncEvent) {
        let _ = self.0.send(Delivery::Event(event));
    }
}

impl fieldsync_core::StatusListener for Queue {
    fn on_status(&self, status: fieldsync_core::SyncStatus) {
        let _ = self.0.send(Delivery::Status(status));
    }
}

impl fieldsync_core::QueryListener for Queue {
    fn on_result(&self, records: Vec<fieldsync_core::Record>) {
        let _ = self.0.send(Delivery::Query(Ok(records)));
    }
    fn on_error(&self, error: fieldsync_core::Error) {
        let _ = self.0.send(Delivery::Query(Err(error)));
    }
}

/// Hands one delivery to the app's listener (of whatever kind), converting
/// it to the exported types; deliveries of another kind are ignored.
pub(crate) type Target = Box<dyn Fn(Delivery) + Send + Sync>;

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
    target(item);
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
