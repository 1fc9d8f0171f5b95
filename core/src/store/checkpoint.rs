//! WAL checkpoints off the writer's path.
//!
//! SQLite's automatic checkpoint runs inside the commit that takes the WAL
//! past 1,000 pages: that commit copies the WAL into the database file and
//! syncs both before it returns. During a sync the commit is a page's, so the
//! download waited on the disk: the page of 5,000 changes whose commit
//! checkpointed took 68-82 ms to write where the others took 20-40, and a
//! first download at 1M makes about 75 such checkpoints.
//!
//! Here the writer's commits only count: past [`SOFT_FRAMES`] they wake a
//! thread of the store that checkpoints on a connection of its own
//! (`PASSIVE`: it copies what no reader still needs and never blocks the
//! writer), while the writer goes on with the next page. Past
//! [`HARD_FRAMES`] (the thread cannot keep up, or failed) the commit
//! checkpoints itself, as SQLite would have, so the WAL stays bounded.

use std::os::raw::{c_char, c_int, c_void};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use rusqlite::Connection;
use rusqlite::ffi;
use tracing::debug;

/// WAL frames after which a commit asks for a checkpoint (SQLite's own
/// automatic checkpoint threshold).
pub(super) const SOFT_FRAMES: c_int = 1000;

/// WAL frames after which a commit checkpoints itself (about 40 MB of 4 KiB
/// pages).
pub(super) const HARD_FRAMES: c_int = 10_000;

/// The checkpoint connection's page cache (`cache_size`, negative: KiB).
const CHECKPOINT_CACHE_KIB: i64 = -64;

/// What the writer's commit hook holds: the way to wake the checkpointer.
pub(super) struct Checkpoints {
    wake: SyncSender<()>,
    /// The WAL's frames at the last request: the next one waits for
    /// [`SOFT_FRAMES`] more (or for the WAL to start over), so a run of
    /// small commits (local edits, each its own transaction) asks once per
    /// 1,000 frames, as SQLite's own checkpoint ran, not at every commit.
    asked_at: AtomicI32,
    counts: Arc<Counts>,
}

/// Checkpoints made, by the thread and by the writer's own commits.
#[derive(Default)]
pub(super) struct Counts {
    /// Times a commit woke the thread.
    pub(super) asked: AtomicU64,
    pub(super) background: AtomicU64,
    pub(super) inline: AtomicU64,
}

impl Checkpoints {
    /// Starts the checkpoint thread of the database at `path` and installs
    /// the commit hook on `writer`. The thread ends when the returned value
    /// and the hook are gone (the store closed).
    pub(super) fn start(
        writer: &Connection,
        path: PathBuf,
        key: Option<super::key::DatabaseKey>,
    ) -> Arc<Checkpoints> {
        // One request waits at most: a commit that finds one waiting has
        // nothing to add to it.
        let (wake, requests) = sync_channel(1);
        let counts = Arc::new(Counts::default());
        let checkpoints = Arc::new(Checkpoints {
            wake,
            asked_at: AtomicI32::new(0),
            counts: counts.clone(),
        });
        let spawned = std::thread::Builder::new()
            .name("fieldsync-checkpoint".into())
            .spawn(move || checkpoint_thread(path, key, requests, counts));
        match spawned {
            // SAFETY: the hook's argument points to the `Checkpoints` in the
            // returned Arc, which the store keeps until after the writer is
            // closed (its fields drop in declaration order, the writer
            // first), so the pointer is valid for every call of the hook.
            Ok(_) => unsafe {
                ffi::sqlite3_wal_hook(
                    writer.handle(),
                    Some(on_commit),
                    Arc::as_ptr(&checkpoints) as *mut c_void,
                );
            },
            // No thread: SQLite's automatic checkpoint stays as it was.
            Err(e) => debug!(target: "fieldsync::store", error = %e, "no checkpoint thread"),
        }
        checkpoints
    }

    /// Checkpoints made so far.
    #[cfg(test)]
    pub(super) fn counts(&self) -> &Counts {
        &self.counts
    }

    fn request(&self) -> bool {
        self.counts.asked.fetch_add(1, Ordering::Relaxed);
        match self.wake.try_send(()) {
            Ok(()) | Err(TrySendError::Full(())) => true,
            Err(TrySendError::Disconnected(())) => false,
        }
    }
}

/// The writer's WAL hook, called after each commit with the number of
/// frames in the WAL.
unsafe extern "C" fn on_commit(
    arg: *mut c_void,
    db: *mut ffi::sqlite3,
    name: *const c_char,
    frames: c_int,
) -> c_int {
    // SAFETY: `arg` is the `Checkpoints` registered in `start`, alive for
    // as long as the connection the hook is installed on (see there).
    let checkpoints = unsafe { &*(arg as *const Checkpoints) };
    let last = checkpoints.asked_at.load(Ordering::Relaxed);
    let due = frames >= SOFT_FRAMES && (frames < last || frames >= last + SOFT_FRAMES);
    let mut asked = true;
    if due {
        checkpoints.asked_at.store(frames, Ordering::Relaxed);
        asked = checkpoints.request();
    }
    if frames >= HARD_FRAMES || !asked {
        // SAFETY: `db` and `name` are the ones SQLite gives the hook; a
        // checkpoint from inside the hook is what SQLite's own automatic
        // checkpoint does.
        unsafe {
            ffi::sqlite3_wal_checkpoint_v2(
                db,
                name,
                ffi::SQLITE_CHECKPOINT_PASSIVE,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            );
        }
        checkpoints.counts.inline.fetch_add(1, Ordering::Relaxed);
    }
    ffi::SQLITE_OK
}

/// Checkpoints each time a commit asks, on a connection of its own (opened
/// at the first request), until the store is closed.
fn checkpoint_thread(
    path: PathBuf,
    key: Option<super::key::DatabaseKey>,
    requests: Receiver<()>,
    counts: Arc<Counts>,
) {
    let mut conn: Option<Connection> = None;
    while requests.recv().is_ok() {
        if conn.is_none() {
            // A checkpoint copies the WAL's frames through a buffer of its
            // own: the connection's page cache only ever holds the schema.
            let opened = super::connection::open_connection(&path, key.as_ref()).and_then(|c| {
                c.pragma_update(None, "cache_size", CHECKPOINT_CACHE_KIB)?;
                Ok(c)
            });
            conn = match opened {
                Ok(c) => Some(c),
                Err(e) => {
                    debug!(target: "fieldsync::store", error = %e, "cannot open the checkpoint connection");
                    continue;
                }
            };
        }
        if let Some(c) = &conn {
            // A full disk or a busy database: the next request tries
            // again, and the writer checkpoints itself past HARD_FRAMES.
            match c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                Ok(()) => {
                    counts.background.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => debug!(target: "fieldsync::store", error = %e, "checkpoint failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests;
