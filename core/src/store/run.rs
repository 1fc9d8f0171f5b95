//! The running sync as every process on the database sees it
//! (`_fs_sync_run`): one row, written when a sync starts and as its
//! progress changes, removed when it ends, carrying the id of the process
//! that runs it. A second process on the same file (the headless device's
//! `status`, an app's background work in a process of its own) reads it to
//! show that sync and its progress. A row whose process is gone (killed
//! mid-sync) is not a running sync.
//!
//! Whether the sync's process is still running is told by a lock, not by
//! its process id alone: the process holds an exclusive `flock` of the file
//! `<database>-sync.lock` from the row's writing to its removal, and the
//! kernel releases it when the process ends however it ends. A reader asks
//! for a shared lock without waiting: refused, the sync runs. A process id
//! reused by an unrelated process after a crash (Android recycles them
//! quickly) therefore never makes a dead sync look alive.

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::Result;
use crate::mode::SyncMode;

/// A running sync as it is kept for other processes.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedRun {
    /// The sync's id (as in its telemetry).
    pub sync_id: String,
    /// The operating system's id of the process running it.
    pub pid: u32,
    /// Why it runs.
    pub mode: SyncMode,
    /// When it started, ms since the epoch.
    pub started_at: i64,
    /// When the row was last written, ms since the epoch.
    pub updated_at: i64,
    /// The table downloading now.
    pub table: Option<String>,
    /// Rows received so far.
    pub rows_done: u64,
    /// Rows expected, over the tables whose size is known so far.
    pub rows_total: Option<u64>,
    /// Bytes downloaded so far.
    pub bytes_down: u64,
    /// The share done as the running process shows it (never decreasing).
    pub fraction: Option<f64>,
}

fn parse_mode(text: &str) -> SyncMode {
    match text {
        "first" => SyncMode::First,
        "delta" => SyncMode::Delta,
        "refresh" => SyncMode::Refresh,
        _ => SyncMode::Forced,
    }
}

fn as_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

const UPSERT: &str = "INSERT INTO _fs_sync_run
    (id, sync_id, pid, mode, started_at, updated_at, current_table, rows_done, rows_total, bytes_down,
     fraction)
    VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
    ON CONFLICT(id) DO UPDATE SET sync_id = excluded.sync_id, pid = excluded.pid,
        mode = excluded.mode, started_at = excluded.started_at, updated_at = excluded.updated_at,
        current_table = excluded.current_table, rows_done = excluded.rows_done,
        rows_total = excluded.rows_total, bytes_down = excluded.bytes_down,
        fraction = excluded.fraction";

pub(super) fn write(conn: &mut Connection, run: &SharedRun) -> Result<()> {
    // What only a sync writes: synchronous=NORMAL, as the pages it reports on.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    let result = conn.prepare_cached(UPSERT).and_then(|mut stmt| {
        stmt.execute(params![
            run.sync_id,
            i64::from(run.pid),
            run.mode.as_str(),
            run.started_at,
            run.updated_at,
            run.table,
            as_i64(run.rows_done),
            run.rows_total.map(as_i64),
            as_i64(run.bytes_down),
            run.fraction,
        ])
    });
    let _ = conn.pragma_update(None, "synchronous", "FULL");
    result?;
    Ok(())
}

/// Removes the row of the sync `sync_id`; whether there was one.
pub(super) fn clear(conn: &Connection, sync_id: &str) -> Result<bool> {
    Ok(conn.execute("DELETE FROM _fs_sync_run WHERE sync_id = ?1", [sync_id])? > 0)
}

/// The row of the sync last recorded on this database, whether or not
/// its process still runs.
pub(super) fn read(conn: &Connection) -> Result<Option<SharedRun>> {
    Ok(conn
        .query_row(
            "SELECT sync_id, pid, mode, started_at, updated_at, current_table, rows_done,
                    rows_total, bytes_down, fraction FROM _fs_sync_run WHERE id = 1",
            [],
            |r| {
                Ok(SharedRun {
                    sync_id: r.get(0)?,
                    pid: u32::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
                    mode: parse_mode(&r.get::<_, String>(2)?),
                    started_at: r.get(3)?,
                    updated_at: r.get(4)?,
                    table: r.get(5)?,
                    rows_done: u64::try_from(r.get::<_, i64>(6)?).unwrap_or(0),
                    rows_total: r
                        .get::<_, Option<i64>>(7)?
                        .map(|n| u64::try_from(n).unwrap_or(0)),
                    bytes_down: u64::try_from(r.get::<_, i64>(8)?).unwrap_or(0),
                    fraction: r.get(9)?,
                })
            },
        )
        .optional()?)
}

/// The run lock of one database: held by this process while it runs a
/// sync, and asked of other processes to tell whether theirs still runs.
pub(super) struct RunLock {
    path: std::path::PathBuf,
    held: std::sync::Mutex<Option<std::fs::File>>,
}

impl RunLock {
    /// The run lock of the database at `db` (not taken).
    pub(super) fn new(db: &std::path::Path) -> RunLock {
        RunLock {
            path: run_lock_path(db),
            held: std::sync::Mutex::new(None),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Option<std::fs::File>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the lock for this process's sync, unless it holds it already.
    pub(super) fn take(&self) {
        let mut held = self.held();
        if held.is_none() {
            *held = take_run_lock(&self.path);
        }
    }

    /// Releases the lock this process holds, if any.
    pub(super) fn release(&self) {
        self.held().take();
    }

    /// Whether some process (this one included) holds the lock.
    pub(super) fn held_by_a_process(&self) -> bool {
        run_lock_held(&self.path)
    }
}

/// The file whose lock a running sync holds.
fn run_lock_path(db: &std::path::Path) -> std::path::PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-sync.lock");
    std::path::PathBuf::from(name)
}

/// Takes the run lock of this process's sync: the file, open and locked
/// exclusively, or none when it cannot be had (another process's sync holds
/// it, or the file cannot be made; the row alone then tells the sync).
#[cfg(unix)]
fn take_run_lock(path: &std::path::Path) -> Option<std::fs::File> {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .ok()?;
    // SAFETY: flock(2) on a descriptor this function owns; no memory is
    // shared with the call.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    locked.then_some(file)
}

#[cfg(not(unix))]
fn take_run_lock(_path: &std::path::Path) -> Option<std::fs::File> {
    None
}

/// Whether some process holds the run lock of the database (a sync runs).
#[cfg(unix)]
fn run_lock_held(path: &std::path::Path) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(file) = std::fs::File::open(path) else {
        // No lock file: no sync has run here since the release that made
        // it, so the row is an earlier release's or a crashed one's.
        return false;
    };
    // SAFETY: flock(2) on a descriptor this function owns; the shared lock,
    // when granted, is released as the file closes at the end of the call.
    let granted = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0;
    !granted && std::io::Error::last_os_error().raw_os_error() == Some(libc::EWOULDBLOCK)
}

/// Without a way to ask, a recorded process is taken to be running.
#[cfg(not(unix))]
fn run_lock_held(_path: &std::path::Path) -> bool {
    true
}

/// Whether a process with this id exists (signal 0 checks without sending
/// anything). A process of another user answers `EPERM`: it exists.
#[cfg(unix)]
pub(crate) fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill(2) with signal 0 delivers no signal; it only reports
    // whether the process exists. No memory is shared with the call.
    let result = unsafe { libc::kill(pid, 0) };
    result == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Without a way to ask, a recorded process is taken to be running.
#[cfg(not(unix))]
pub(crate) fn process_alive(_pid: u32) -> bool {
    true
}

#[cfg(test)]
mod tests;
