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
use std::sync::{Mutex, OnceLock};
use std::task::{Context, Poll};

use crate::errors::FieldSyncError;

static RUNTIME: Shared = Shared::new();

/// The library's runtime, built on first use.
pub(crate) fn runtime() -> Result<&'static tokio::runtime::Runtime, FieldSyncError> {
    RUNTIME.get()
}

/// A runtime built once, by the first caller. Callers that race the first
/// one wait for it rather than build a runtime of their own: a losing
/// runtime would be dropped on the caller's thread, and tokio refuses (it
/// panics) to drop a runtime inside another runtime's async context, which
/// is where the exported async functions run. A failed build is not kept,
/// so the next call tries again.
pub(crate) struct Shared {
    built: OnceLock<tokio::runtime::Runtime>,
    building: Mutex<()>,
}

impl Shared {
    pub(crate) const fn new() -> Shared {
        Shared {
            built: OnceLock::new(),
            building: Mutex::new(()),
        }
    }

    pub(crate) fn get(&self) -> Result<&tokio::runtime::Runtime, FieldSyncError> {
        if let Some(rt) = self.built.get() {
            return Ok(rt);
        }
        let _one_builder = self
            .building
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(rt) = self.built.get() {
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
        Ok(self.built.get_or_init(|| rt))
    }
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

#[cfg(test)]
mod tests {
    use super::Shared;
    use std::sync::{Arc, Barrier};

    /// Eight threads, each inside its own async context, ask a fresh
    /// runtime at the same instant: all get the same one and none panics
    /// (a second runtime built and dropped there would).
    #[test]
    fn callers_racing_the_first_build_share_one_runtime() {
        let shared: &'static Shared = Box::leak(Box::new(Shared::new()));
        let start = Arc::new(Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let start = start.clone();
                std::thread::spawn(move || {
                    let local = tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(1)
                        .build()
                        .expect("local runtime");
                    local.block_on(async {
                        start.wait();
                        shared.get().map(|rt| rt as *const _ as usize)
                    })
                })
            })
            .collect();
        let seen: Vec<usize> = threads
            .into_iter()
            .map(|t| t.join().expect("no panic").expect("runtime"))
            .collect();
        assert_eq!(seen.len(), 8);
        assert!(seen.iter().all(|p| *p == seen[0]), "one runtime for all");
    }
}
