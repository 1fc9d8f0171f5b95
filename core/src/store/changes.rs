//! Which synced tables the writer's commits changed, for observed queries.
//!
//! SQLite's update hook on the writer connection notes the table of every
//! row inserted, updated or deleted (engine tables, `_fs_*`, and SQLite's
//! own are skipped); the commit hook moves the noted tables to the
//! committed set and the rollback hook forgets them. When a use of the
//! writer ends ([`super::WriteGuard`]'s drop, the connection's lock already
//! released), the committed set is handed, once, to the store's change
//! callback: one call per use of the writer, whatever the number of rows,
//! and only for tables a commit changed.

use std::collections::BTreeSet;
use std::ffi::{CStr, c_char, c_int, c_void};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, ffi};

/// The callback told of the tables changed by committed writes.
pub type ChangeCallback = Arc<dyn Fn(&BTreeSet<String>) + Send + Sync>;

/// What the writer's hooks hold.
#[derive(Default)]
pub(super) struct Changes {
    /// Tables changed by the open transaction.
    pending: Mutex<BTreeSet<String>>,
    /// Tables changed by commits not yet announced.
    committed: Mutex<BTreeSet<String>>,
    callback: Mutex<Option<ChangeCallback>>,
}

fn guard<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Changes {
    /// Installs the hooks on `writer`. The store keeps the returned value
    /// until after the writer is closed.
    pub(super) fn install(writer: &Connection) -> Arc<Changes> {
        let changes = Arc::new(Changes::default());
        let arg = Arc::as_ptr(&changes) as *mut c_void;
        // SAFETY: `arg` points to the `Changes` in the returned Arc, which
        // the store keeps until after the writer is closed (its fields drop
        // in declaration order, the writer first), so the pointer is valid
        // for every call of the hooks; the handle is the open writer's.
        unsafe {
            ffi::sqlite3_update_hook(writer.handle(), Some(on_update), arg);
            ffi::sqlite3_commit_hook(writer.handle(), Some(on_commit), arg);
            ffi::sqlite3_rollback_hook(writer.handle(), Some(on_rollback), arg);
        }
        changes
    }

    /// Sets the callback told of committed changes.
    pub(super) fn set_callback(&self, callback: Option<ChangeCallback>) {
        *guard(&self.callback) = callback;
    }

    /// Hands the committed, unannounced tables to the callback.
    pub(super) fn announce(&self) {
        let tables = std::mem::take(&mut *guard(&self.committed));
        if tables.is_empty() {
            return;
        }
        let callback = guard(&self.callback).clone();
        if let Some(cb) = callback {
            cb(&tables);
        }
    }
}

unsafe extern "C" fn on_update(
    arg: *mut c_void,
    _op: c_int,
    _db: *const c_char,
    table: *const c_char,
    _rowid: ffi::sqlite3_int64,
) {
    if arg.is_null() || table.is_null() {
        return;
    }
    // SAFETY: `arg` is the `Changes` given at installation (valid while the
    // connection is, see there); `table` is SQLite's NUL-terminated name.
    let (changes, name) = unsafe { (&*(arg as *const Changes), CStr::from_ptr(table)) };
    let name = name.to_string_lossy();
    if name.starts_with("_fs_") || name.starts_with("sqlite_") {
        return;
    }
    // One allocation per table and transaction, not per row.
    let mut pending = guard(&changes.pending);
    if !pending.contains(name.as_ref()) {
        pending.insert(name.into_owned());
    }
}

unsafe extern "C" fn on_commit(arg: *mut c_void) -> c_int {
    if !arg.is_null() {
        // SAFETY: as in `on_update`.
        let changes = unsafe { &*(arg as *const Changes) };
        let done = std::mem::take(&mut *guard(&changes.pending));
        guard(&changes.committed).extend(done);
    }
    0
}

unsafe extern "C" fn on_rollback(arg: *mut c_void) {
    if !arg.is_null() {
        // SAFETY: as in `on_update`.
        let changes = unsafe { &*(arg as *const Changes) };
        guard(&changes.pending).clear();
    }
}
