//! The device's local store (C1): one SQLite file in WAL mode, one writer
//! connection and one reader connection.
//!
//! Synced tables are real SQLite tables named as in the offline profile, with
//! the profile's columns and a `_fs_version` column (the server version a row
//! is based on). Engine state lives in tables prefixed `_fs_`:
//! `_fs_meta` (device id, profile), `_fs_settings`, `_fs_tables` (per-table
//! cursor and sync times), `_fs_outbox` (local changes waiting for upload),
//! `_fs_sync_errors`, and the settle state (`_fs_related_pending`,
//! `_fs_settle_rows`, `_fs_settle_lost`; see [`settle`] and [`related`]).
//!
//! This module is the facade: [`Store`] holds the connections and hands
//! each call to the module that owns what it touches (`rows`, `outbox`,
//! `tables`, `install`, `page`, `settle`, ...); those modules work on a
//! connection or an open transaction and never reach back here.
//!
//! Invariants kept here:
//! - a local write and its outbox entry commit in one transaction;
//! - a pulled page and its table's cursor commit in one transaction, so a
//!   process killed at any instant resumes from the last committed page;
//! - a pulled row never overwrites a row with a pending local change (the
//!   push result settles that row);
//! - an outbox entry leaves only when the server's result for it is applied.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, TransactionBehavior};

use crate::codec::Body;
use crate::error::{Error, Result};
use crate::profile::{SyncProfile, SyncTable};
use crate::protocol::{MutationResult, Op, PullPage};
use crate::value::{Record, Value};

mod changes;
mod checkpoint;
mod connection;
mod indexes;
mod install;
mod key;
mod meta;
mod outbox;
mod page;
mod page_json;
mod related;
mod rows;
mod run;
mod schema;
mod settle;
mod sync_errors;
mod tables;
mod triggers;
mod values;

pub use changes::ChangeCallback;
pub(crate) use connection::WriteGuard;
pub use indexes::local_index_name;
pub use install::ProfileChange;
pub use key::{DatabaseKey, rekey_database};
pub use outbox::{LocalWrite, OutboxEntry, PushApplied};
pub use page::PageApplied;
pub use page_json::PageSummary;
pub use related::Arrival;
pub(crate) use related::related_rule_key;
pub use rows::LOCAL_VERSION_COLUMN;
pub use run::SharedRun;
pub use schema::SCHEMA_VERSION;
pub use sync_errors::LocalSyncError;
pub use tables::TableState;

/// The device's local SQLite store.
pub struct Store {
    path: PathBuf,
    writer: Mutex<Connection>,
    reader: Mutex<Connection>,
    /// The database's key, for the connections opened later (none: plain).
    key: Option<DatabaseKey>,
    /// The writer's commit hook points here: declared after the writer,
    /// so it is dropped after the writer is closed.
    _checkpoints: std::sync::Arc<checkpoint::Checkpoints>,
    /// The tables the writer's commits changed (its hooks point here:
    /// declared after the writer, so dropped after it is closed).
    changes: std::sync::Arc<changes::Changes>,
    /// Held while this process runs a sync (see [`run`]).
    run_lock: run::RunLock,
}

impl Store {
    /// Opens (creating if needed) the plain store at `path`.
    pub fn open(path: &Path) -> Result<Store> {
        Store::open_with_key(path, None)
    }

    /// Opens (creating if needed) the store at `path`, encrypted with `key`
    /// (none: plain). A key that does not open an existing database is
    /// [`Error::WrongKey`], the file untouched.
    pub fn open_with_key(path: &Path, key: Option<&DatabaseKey>) -> Result<Store> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if !dir.exists() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::Storage(format!("cannot create {}: {e}", dir.display())))?;
        }
        connection::configure_sqlite();
        connection::place_temp_files(dir);
        let mut writer = connection::open_connection(path, key)?;
        schema::migrate(&mut writer)?;
        // The statements that write a page are prepared per table (and per
        // column list); rusqlite's default cache of 16 would drop a sync's
        // first tables' statements before the next sync reached them.
        writer.set_prepared_statement_cache_capacity(connection::WRITER_STATEMENTS);
        let reader = connection::open_connection(path, key)?;
        let checkpoints = checkpoint::Checkpoints::start(&writer, path.to_owned(), key.cloned());
        let changes = changes::Changes::install(&writer);
        Ok(Store {
            path: path.to_owned(),
            writer: Mutex::new(writer),
            reader: Mutex::new(reader),
            key: key.cloned(),
            _checkpoints: checkpoints,
            changes,
            run_lock: run::RunLock::new(path),
        })
    }

    /// The writer connection, locked (see [`WriteGuard`]).
    pub(crate) fn write_lock(&self) -> WriteGuard<'_> {
        WriteGuard::new(&self.writer, &self.changes)
    }

    /// Sets the callback told, once per use of the writer, of the synced
    /// tables its commits changed (none: nobody is told).
    pub fn set_change_callback(&self, callback: Option<ChangeCallback>) {
        self.changes.set_callback(callback);
    }

    /// Makes `table`'s local indexes exactly `indexes` (see
    /// [`indexes::set_local_indexes`]): for declarations that come from
    /// somewhere other than the offline profile, such as the data model.
    pub fn set_local_indexes(
        &self,
        table: &SyncTable,
        declared: &[crate::profile::LocalIndex],
    ) -> Result<()> {
        let conn = self.write_lock();
        indexes::set_local_indexes(&conn, table, declared)
    }

    /// How SQLite runs a compiled query: the `detail` lines of `EXPLAIN
    /// QUERY PLAN` (for tests and diagnostics: whether it uses an index).
    pub fn query_plan(
        &self,
        table: &SyncTable,
        q: &crate::query::CompiledQuery,
    ) -> Result<Vec<String>> {
        rows::query_plan(&self.reader(), table, q)
    }

    /// The rows of `table` a compiled query selects, in its order.
    pub fn query(&self, table: &SyncTable, q: &crate::query::CompiledQuery) -> Result<Vec<Record>> {
        rows::query(&self.reader(), table, q)
    }

    /// How many rows of `table` a compiled query's condition selects
    /// (limit and offset not applied).
    pub fn query_count(&self, table: &SyncTable, q: &crate::query::CompiledQuery) -> Result<u64> {
        rows::query_count(&self.reader(), table, q)
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size of the database file and its WAL, in bytes.
    pub fn size_bytes(&self) -> u64 {
        let mut total = 0;
        for suffix in ["", "-wal"] {
            let mut p = self.path.clone().into_os_string();
            p.push(suffix);
            total += std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        }
        total
    }

    /// Reads a value of `_fs_meta`.
    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        meta::meta_value(&self.reader(), key)
    }

    /// Writes a value of `_fs_meta`.
    pub fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        meta::put_meta(&self.write_lock(), key, value)
    }

    /// Runs `f` on the writer connection (engine modules that keep their own
    /// `_fs_` tables: telemetry).
    pub(crate) fn with_writer<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        f(&mut self.write_lock())
    }

    /// Runs `f` on the reader connection.
    pub(crate) fn with_reader<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        f(&self.reader())
    }

    /// The reader connection, locked.
    fn reader(&self) -> MutexGuard<'_, Connection> {
        connection::lock(&self.reader)
    }

    /// Records that `tables` are current as of `now` without a download
    /// (smart sync: the server reported no change after their cursors), in
    /// one transaction.
    pub fn mark_tables_current(&self, tables: &[String], now: i64) -> Result<()> {
        if tables.is_empty() {
            return Ok(());
        }
        self.in_sync_transaction(|tx| tables::mark_current(tx, tables, now))
    }

    /// Reads a persisted setting.
    pub fn setting(&self, key: &str) -> Result<Option<String>> {
        meta::setting(&self.reader(), key)
    }

    /// Persists a setting.
    pub fn set_setting(&self, key: &str, value: &str) -> Result<()> {
        meta::set_setting(&self.write_lock(), key, value)
    }

    /// The stored offline profile, if the device has synced once.
    pub fn profile(&self) -> Result<Option<SyncProfile>> {
        meta::stored_profile(&self.reader())
    }

    /// Installs a (new) profile: creates added tables, drops removed ones,
    /// adds and drops columns, and marks tables whose rules changed for a new
    /// download after removing the rows they no longer select. One transaction.
    pub fn apply_profile(&self, new: &SyncProfile, now: i64) -> Result<ProfileChange> {
        let old = self.profile()?;
        install::apply_profile(&mut self.write_lock(), old, new, now)
    }

    /// Sync state of a table.
    pub fn table_state(&self, name: &str) -> Result<TableState> {
        tables::table_state(&self.reader(), name)
    }

    /// Applies one pulled page and advances the table's cursor, atomically.
    /// A page with a total records the expected row count for progress.
    /// With the profile, the related values the page's rows bring are queued
    /// in the same transaction, before the rows are written (see
    /// `related::RelatedQueue`).
    pub fn apply_page(
        &self,
        profile: Option<&SyncProfile>,
        table: &SyncTable,
        page: &PullPage,
        now: i64,
    ) -> Result<PageApplied> {
        self.in_sync_transaction(|tx| page::apply_page(tx, profile, table, page, now))
    }

    /// [`Store::apply_page`] for a page as it came off the wire, its JSON
    /// body (a `PullPage`), compressed or not: a compressed body is
    /// decompressed into the decoder a block at a time, and the rows are
    /// decoded one at a time and written as they are decoded, so neither a
    /// decoded page nor its whole JSON is ever held (see `store::page`).
    /// `total` gives the expected row count to record from what the page
    /// says (see [`PageSummary`]; it is called before the summary's
    /// `expected`, which is what it returns). A body that does not decode
    /// changes nothing.
    pub fn apply_page_json(
        &self,
        profile: Option<&SyncProfile>,
        table: &SyncTable,
        body: &Body,
        now: i64,
        total: impl FnOnce(&PageSummary) -> Option<u64>,
    ) -> Result<PageSummary> {
        self.in_sync_transaction(|tx| {
            page_json::apply_page_json(tx, profile, table, body, now, total)
        })
    }

    /// Runs `f` in one immediate transaction with `synchronous=NORMAL`,
    /// committing if it succeeds: for what only a sync writes, pages and
    /// the bookkeeping around them, which the server can give again, and
    /// its telemetry (`telemetry::record`). In WAL
    /// mode a power cut then loses at most the last such commits, never a
    /// part of one and never one made before a local write (those commit with
    /// `synchronous=FULL`, which makes every earlier commit durable too), so
    /// the store is as a sync stopped at that point leaves it. Committing
    /// each of them with FULL cost an fsync (milliseconds here) per table
    /// and per settling step of every sync.
    pub(crate) fn in_sync_transaction<T>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        let mut conn = self.write_lock();
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let result = (|| -> Result<T> {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })();
        let _ = conn.pragma_update(None, "synchronous", "FULL");
        result
    }

    /// Marks the start of a pull of `table`, before its first page is
    /// written (and, for a download from an empty cursor, before its first
    /// request): resets the progress counters. A download from an empty cursor is
    /// given the next `walk_order`, and the related values queued for the
    /// table's rules are dropped: that download selects whatever they
    /// reach. From here on the rows its rules read are queued as they
    /// arrive, except those of a download that began before it, read from
    /// that download's snapshot (see `related::RelatedQueue`).
    pub fn begin_pull(&self, table: &SyncTable, now: i64) -> Result<()> {
        self.in_sync_transaction(|tx| tables::begin_pull(tx, table, now))
    }

    /// Prepares the statements that write a page of `table` pulled with
    /// `profile`'s rules (the page's columns in the profile's order, as the
    /// server sends them), so that the first page is not kept waiting on
    /// them: called while that page is being read on the server. They stay
    /// in the writer's statement cache; a page with other columns prepares
    /// its own. Nothing is written, and a failure is left to the page.
    pub fn prepare_page_writes(&self, profile: Option<&SyncProfile>, table: &SyncTable) {
        page::prepare_page_writes(&self.write_lock(), profile, table);
    }

    /// Starts `table`'s download over from the beginning (the server no
    /// longer recognises its cursor, for example after a restore).
    pub fn restart_table(&self, table: &str) -> Result<()> {
        tables::restart_table(&self.write_lock(), table)
    }

    /// Records a failed pull of `table`.
    pub fn record_table_error(&self, table: &str, message: &str) -> Result<()> {
        tables::record_table_error(&self.write_lock(), table, message)
    }

    /// Reads one row.
    pub fn get(&self, table: &SyncTable, id: &str) -> Result<Record> {
        rows::get(&self.reader(), table, id)
    }

    /// Lists rows ordered by primary key, starting after `after`.
    pub fn list(&self, table: &SyncTable, after: Option<&str>, limit: u32) -> Result<Vec<Record>> {
        rows::list(&self.reader(), table, after, limit)
    }

    /// Number of rows in a synced table.
    pub fn count(&self, table: &str) -> Result<u64> {
        rows::count(&self.reader(), table)
    }

    /// Applies a local change and queues it for upload, in one transaction.
    /// `data` must already be checked against the profile.
    pub fn write(
        &self,
        profile: &SyncProfile,
        table: &SyncTable,
        id: &str,
        op: Op,
        data: BTreeMap<String, Value>,
        now: i64,
    ) -> Result<Option<Record>> {
        outbox::write(&mut self.write_lock(), profile, table, id, op, data, now)
    }

    /// Applies several local changes and queues them for upload as one
    /// transaction: all of them commit together, or none (the first error
    /// rolls every one back), and they are uploaded in one request that the
    /// server applies whole or not at all. `after_each` is called with the
    /// index of each write once it is applied, inside the open transaction
    /// (crash tests stop the process there). Returns each write's record
    /// (none for a delete).
    pub fn write_transaction(
        &self,
        profile: &SyncProfile,
        writes: &[LocalWrite],
        now: i64,
        after_each: &mut dyn FnMut(usize),
    ) -> Result<Vec<Option<Record>>> {
        outbox::write_transaction(&mut self.write_lock(), profile, writes, now, after_each)
    }

    /// Number of changes waiting for upload.
    pub fn pending_count(&self) -> Result<u64> {
        outbox::pending_count(&self.reader())
    }

    /// Pending changes per table.
    pub fn pending_by_table(&self) -> Result<HashMap<String, u64>> {
        outbox::pending_by_table(&self.reader())
    }

    /// Takes the next batch to upload, in order, at most `max` entries and
    /// never two entries of the same row (the second waits for the first's
    /// result, which gives it its base version). A local transaction's
    /// entries (one after the other in the outbox) go whole into one batch
    /// or wait for the next, even past `max` when they alone make the
    /// batch (a transaction holds at most one request's mutations). The
    /// entries are marked as sent before this returns, so later local
    /// writes never merge into them.
    pub fn take_batch(&self, max: usize) -> Result<Vec<OutboxEntry>> {
        outbox::take_batch(&mut self.write_lock(), max)
    }

    /// Applies the server's results for a batch, in one transaction.
    pub fn apply_push_results(
        &self,
        profile: &SyncProfile,
        batch: &[OutboxEntry],
        results: &[MutationResult],
        now: i64,
    ) -> Result<PushApplied> {
        outbox::apply_push_results(&mut self.write_lock(), profile, batch, results, now)
    }

    /// Every entry of the outbox, in upload order.
    pub fn outbox(&self) -> Result<Vec<OutboxEntry>> {
        outbox::outbox_entries(&self.reader(), None)
    }

    /// Sync errors kept on the device, newest first.
    pub fn sync_errors(&self, limit: u32) -> Result<Vec<LocalSyncError>> {
        sync_errors::list(&self.reader(), limit)
    }

    /// Removes every local row that no longer meets its table's rules, as
    /// the device evaluates them at `now`: rows that left a relative-date
    /// window, and rows that were only present because a related row
    /// selected them when that row is gone (the related closure is computed
    /// from the device's own tables, in dependency order). A row with a
    /// pending local change is never removed here: it stays, and still
    /// selects its related rows, until the server's result for the change
    /// settles it. Only rows that may have changed their answer since the
    /// last settling are evaluated (see the `settle` module). Returns the
    /// removed rows per table. One transaction.
    pub fn remove_unreached(&self, profile: &SyncProfile, now: i64) -> Result<Vec<(String, u64)>> {
        self.remove_unreached_rest(profile, now, &BTreeMap::new())
    }

    /// [`Self::remove_unreached`] after [`Self::settle_table`] evaluated the
    /// tables of `early` (name, the day of the evaluation) in this run.
    pub fn remove_unreached_rest(
        &self,
        profile: &SyncProfile,
        now: i64,
        early: &BTreeMap<String, String>,
    ) -> Result<Vec<(String, u64)>> {
        let ctx = profile.filter_context(now);
        self.in_sync_transaction(|tx| settle::remove_unreached(tx, profile, &ctx, early))
    }

    /// Evaluates every row of `table`, downloaded whole in this run, once
    /// the tables its rules read (`settled`, evaluated the same way before
    /// it) are final for the run; returns the rows removed. The run's
    /// final [`Self::remove_unreached_rest`] then only looks at what
    /// changed since. See the `settle` module.
    pub fn settle_table(
        &self,
        profile: &SyncProfile,
        table: &str,
        settled: &BTreeSet<String>,
        now: i64,
    ) -> Result<u64> {
        let t = profile
            .table(table)
            .ok_or_else(|| Error::UnknownTable(table.to_owned()))?;
        let ctx = profile.filter_context(now);
        let settled: BTreeSet<&str> = settled.iter().map(String::as_str).collect();
        let timer = std::time::Instant::now();
        // The indexes the evaluation reads: a short write each (a sort).
        self.in_sync_transaction(|tx| settle::evaluation_indexes(tx, profile, t, &settled))?;
        // The evaluation itself on a connection of its own, in a read
        // transaction: the other tables' pages go on being written.
        let doomed = {
            let mut conn = connection::open_connection(&self.path, self.key.as_ref())?;
            // A small page cache: the evaluation reads each row once, and
            // the device's memory stays what the writer and reader take.
            conn.pragma_update(None, "cache_size", connection::EVALUATION_CACHE_KIB)?;
            let read = conn.transaction()?;
            let doomed = settle::unreached(&read, profile, t, &settled, &ctx)?;
            read.commit()?;
            doomed
        };
        // The removal, each row checked again (a local write may have come
        // in between), and the table taken off those to evaluate whole.
        let removed = self.in_sync_transaction(|tx| {
            settle::remove_evaluated(tx, profile, t, &settled, &ctx, &doomed)
        })?;
        tracing::debug!(target: "fieldsync::sync", table = %t.name, full = true, removed, ms = timer.elapsed().as_millis() as u64, "table settled early");
        Ok(removed)
    }

    /// The related values queued for the related-rows rule `rule` (see
    /// [`related_rule_key`]) that `other.foreign_column` still holds, in
    /// order; queued values no local row holds any more are dropped.
    pub fn take_related_pending(
        &self,
        rule: &str,
        other: &SyncTable,
        foreign_column: &str,
    ) -> Result<Vec<String>> {
        self.in_sync_transaction(|tx| related::take_pending(tx, rule, other, foreign_column))
    }

    /// Takes related values out of a rule's queue (their rows were
    /// fetched). A table's download from an empty cursor empties its
    /// rules' queues itself (`Store::begin_pull`).
    pub fn clear_related_pending(&self, rule: &str, values: &[String]) -> Result<()> {
        self.in_sync_transaction(|tx| related::clear_pending(tx, rule, values))
    }

    /// Stores rows fetched by value (related rows that arrived without a
    /// change of their own), queuing the related values they bring in the
    /// same transaction. Rows with a pending local change are left alone;
    /// the table's cursor does not move. Returns rows written.
    pub fn apply_fetched(
        &self,
        profile: &SyncProfile,
        table: &SyncTable,
        columns: &[String],
        rows: &[Vec<Value>],
    ) -> Result<u64> {
        // The table's cursor and progress stay as they were.
        let applied =
            self.in_sync_transaction(|tx| page::apply_fetched(tx, profile, table, columns, rows))?;
        Ok(applied.upserted)
    }

    /// Clears the offline database: synced tables, outbox, cursors, profile
    /// and sync errors. The device id and settings stay. Refuses while
    /// changes wait for upload unless `force`.
    pub fn reset(&self, force: bool) -> Result<u64> {
        install::clear(&mut self.write_lock(), force)
    }

    /// Records that `run` started (or replaces the row of a sync whose
    /// process is gone), waiting for the writer, and takes the run lock.
    pub fn publish_run(&self, run: &SharedRun) -> Result<()> {
        self.run_lock.take();
        run::write(&mut self.write_lock(), run)
    }

    /// Records the running sync's progress unless the writer is busy (a
    /// page of another table being written): progress never waits for a
    /// page, and the next change brings the row up to date. Returns whether
    /// the row was written.
    pub fn publish_run_progress(&self, run: &SharedRun) -> Result<bool> {
        let mut conn = match self.writer.try_lock() {
            Ok(c) => c,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Ok(false),
        };
        run::write(&mut conn, run)?;
        Ok(true)
    }

    /// Removes the row of the sync `sync_id` (it ended, or was cut off)
    /// and releases the run lock.
    pub fn clear_run(&self, sync_id: &str) -> Result<()> {
        if run::clear(&self.write_lock(), sync_id)? {
            self.run_lock.release();
        }
        Ok(())
    }

    /// The sync running on this database, whichever process runs it; `None`
    /// when none does or its process is gone.
    pub fn shared_run(&self) -> Result<Option<SharedRun>> {
        let row = run::read(&self.reader())?;
        Ok(row.filter(|run| run::process_alive(run.pid) && self.run_lock.held_by_a_process()))
    }
}

#[cfg(test)]
mod tests;
