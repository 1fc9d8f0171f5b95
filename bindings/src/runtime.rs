//! The tokio runtime owned by the library, and the helpers exported async
//! functions use to run work on it.
//!
//! UniFFI polls an exported future on whatever thread the foreign side
//! chooses, without a tokio context. Every async function therefore spawns
//! its work onto this multi-threaded runtime and awaits the task through
//! [`AbortOnDrop`]: when a Kotlin coroutine or Swift task is cancelled,
//! UniFFI drops the future and the spawned task is aborted with it (a bare
//! `JoinHandle` would only detach it and let it run on).

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use crate::errors::FieldSyncError;

static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

/// The library's runtime, built on first use.
pub(crate) fn runtime() -> Result<&'static tokio::runtime::Runtime, FieldSyncError> {
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("fieldsync")
        .enable_all()
        .build()
        .map_err(|e| FieldSyncError::Internal {
            reason: format!("cannot start the sync runtime: {e}"),
        })?;
    // Another thread may have won the race; its runtime is kept, ours dropped.
    Ok(RUNTIME.get_or_init(|| rt))
}

/// A task handle that aborts the task when dropped.
pub(crate) struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Future for AbortOnDrop<T> {
    type Output = Result<T, FieldSyncError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|r| {
            r.map_err(|e| FieldSyncError::Internal {
                reason: format!("sync task ended abnormally: {e}"),
            })
        })
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs a future on the library runtime; cancelled when the caller goes away.
pub(crate) async fn run<F, T>(fut: F) -> Result<T, FieldSyncError>
where
    F: Future<Output = Result<T, FieldSyncError>> + Send + 'static,
    T: Send + 'static,
{
    AbortOnDrop(runtime()?.spawn(fut)).await?
}

/// Runs blocking work (local SQLite reads and writes) on the runtime's
/// blocking pool, so no caller thread (an Android main thread) waits on disk.
pub(crate) async fn run_blocking<F, T>(work: F) -> Result<T, FieldSyncError>
where
    F: FnOnce() -> Result<T, FieldSyncError> + Send + 'static,
    T: Send + 'static,
{
    AbortOnDrop(runtime()?.spawn_blocking(work)).await?
}
