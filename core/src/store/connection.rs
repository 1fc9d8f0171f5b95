//! Opening the store's SQLite connections: keys, WAL, pragmas, the
//! process-wide SQLite settings, and the writer's guard.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::Connection;

use super::changes;
use super::key::{self, DatabaseKey};
use crate::error::Result;

/// The writer connection, locked; when dropped, after the lock is released,
/// the tables its commits changed are announced (see [`changes`]).
pub(crate) struct WriteGuard<'a> {
    conn: Option<MutexGuard<'a, Connection>>,
    changes: &'a changes::Changes,
}

impl<'a> WriteGuard<'a> {
    /// Locks `writer`, whose commits `changes` records.
    pub(super) fn new(writer: &'a Mutex<Connection>, changes: &'a changes::Changes) -> Self {
        WriteGuard {
            conn: Some(lock(writer)),
            changes,
        }
    }
}

impl std::ops::Deref for WriteGuard<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        match &self.conn {
            Some(c) => c,
            None => unreachable!("the connection is only taken on drop"),
        }
    }
}

impl std::ops::DerefMut for WriteGuard<'_> {
    fn deref_mut(&mut self) -> &mut Connection {
        match &mut self.conn {
            Some(c) => c,
            None => unreachable!("the connection is only taken on drop"),
        }
    }
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        self.conn.take();
        self.changes.announce();
    }
}

pub(super) fn lock(m: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Statements kept prepared on the writer connection.
pub(super) const WRITER_STATEMENTS: usize = 96;

pub(super) fn open_connection(path: &Path, key: Option<&DatabaseKey>) -> Result<Connection> {
    let conn = key::open_keyed(path, key)?;
    conn.pragma_update(None, "temp_store", key::temp_store(key))?;
    persist_wal(&conn);
    crate::wal::enable(&conn, crate::wal::PATIENCE)?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    Ok(conn)
}

/// The page cache of the connection a table is evaluated on while other
/// tables download (`cache_size`, negative: KiB; `Store::settle_table`).
pub(super) const EVALUATION_CACHE_KIB: i64 = -512;

/// The fewest pages SQLite's sorter holds in memory before it writes a
/// sorted run to a temporary file (`SQLITE_CONFIG_PMASZ`; SQLite's own
/// default is 250, 1 MiB of 4 KiB pages, whatever the page cache). With
/// 64, a sort is bounded by the connection's page cache down to 256 KiB:
/// the index builds of a whole-table settling (`triggers::ensure_index`)
/// sort 126k keys at 1M device rows and 12.6k at 100k, and both now fill
/// the same bound, so the sort's memory does not follow the device's size.
pub(super) const SORTER_MIN_PAGES: std::os::raw::c_int = 64;

/// Process-wide SQLite settings, made once before the first connection
/// (SQLite takes them only before it initialises; in a process where
/// something else initialised it first, the call is refused and SQLite's
/// defaults stay, which changes only how much memory a sort may use).
pub(super) fn configure_sqlite() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: SQLITE_CONFIG_PMASZ takes one unsigned int argument;
        // sqlite3_config reads nothing else and returns SQLITE_MISUSE,
        // with no effect, once SQLite is initialised.
        unsafe {
            rusqlite::ffi::sqlite3_config(rusqlite::ffi::SQLITE_CONFIG_PMASZ, SORTER_MIN_PAGES);
        }
    });
}

/// Keeps the WAL and shared-memory files when the last connection closes, so
/// the next open needs no new disk space: on a full disk the app can still
/// open its database, read it, and report the error of a write.
pub(super) fn persist_wal(conn: &Connection) {
    let mut on: std::os::raw::c_int = 1;
    // SAFETY: the handle is this open connection's, "main" is a valid
    // NUL-terminated schema name, and PERSIST_WAL takes a pointer to an int
    // that lives for the call.
    unsafe {
        rusqlite::ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            rusqlite::ffi::SQLITE_FCNTL_PERSIST_WAL,
            (&mut on as *mut std::os::raw::c_int).cast(),
        );
    }
}

/// Points SQLite's temporary files at `dir`, the directory of the first
/// database this process opens, once per process.
///
/// SQLite writes a temporary file when a sort, an index build or a
/// temporary key set outgrows its page cache: the settling pass of a large
/// download and the lookup indexes of incremental settling do (strace of a
/// 1M-row initial sync: five files). It looks for `SQLITE_TMPDIR`,
/// `TMPDIR`, `/var/tmp`, `/usr/tmp`, `/tmp` and the working directory, and
/// an Android app has none of them to write to, so there the sync would
/// fail with `SQLITE_IOERR_GETTEMPPATH` once the data grew large enough.
/// Beside the database the files are always writable, private to the app,
/// and on the disk whose space the store already watches. Keeping them in
/// memory instead (`temp_store = MEMORY`) would make the device's memory
/// follow the size of its data.
///
/// The setting is SQLite's process-wide `sqlite3_temp_directory`, set once
/// before the store opens its first connection and never changed after.
/// SQLite asks that it not change while connections are in use; other
/// connections of the process (an in-process server in tests, the demo) may
/// exist, but the one change is from no directory (SQLite's list) to this
/// one, so nothing freed can be read. Should the directory disappear, SQLite
/// falls back to its own list.
pub(super) fn place_temp_files(dir: &Path) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Some(dir) = std::fs::canonicalize(dir)
            .ok()
            .and_then(|d| d.to_str().map(str::to_owned))
        else {
            return;
        };
        let set = Connection::open_in_memory()
            .and_then(|c| c.pragma_update(None, "temp_store_directory", &dir));
        if let Err(e) = set {
            tracing::warn!(target: "fieldsync::store", error = %e, dir, "cannot place SQLite's temporary files beside the database");
        }
    });
}
