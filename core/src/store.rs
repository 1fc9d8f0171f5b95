//! The device's local store (C1): one SQLite file in WAL mode, one writer
//! connection and one reader connection.
//!
//! Synced tables are real SQLite tables named as in the offline profile, with
//! the profile's columns and a `_fs_version` column (the server version a row
//! is based on). Engine state lives in tables prefixed `_fs_`:
//! `_fs_meta` (device id, profile), `_fs_settings`, `_fs_tables` (per-table
//! cursor and sync times), `_fs_outbox` (local changes waiting for upload),
//! `_fs_sync_errors`, and the settle state (`_fs_related_pending`,
//! `_fs_settle_rows`, `_fs_settle_lost`; see [`settle`]).
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

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::codec::Body;
use crate::error::{Error, Result};
use crate::filter::FilterContext;
use crate::profile::{Column, ColumnKind, RowRule, SyncProfile, SyncTable, quote_ident};
use crate::protocol::{
    MAX_MUTATIONS_PER_PUSH, MAX_ROW_BYTES, Mutation, MutationResult, MutationStatus, Op, PullPage,
    TransactionMark,
};
use crate::value::{Record, Value};

mod changes;
mod checkpoint;
mod indexes;
mod key;
mod page;
mod run;
mod schema;
mod settle;
mod values;

pub use changes::ChangeCallback;
pub use indexes::local_index_name;
pub use key::{DatabaseKey, rekey_database};
pub use run::SharedRun;
pub use schema::SCHEMA_VERSION;
pub use settle::Arrival;

/// The engine's tables as migration 1 creates them (`schema.rs`); frozen as
/// shipped: a change is a new migration there.
const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS _fs_meta (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS _fs_settings (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS _fs_tables (
    name TEXT PRIMARY KEY NOT NULL,
    cursor TEXT NOT NULL DEFAULT '',
    initial_done INTEGER NOT NULL DEFAULT 0,
    expected_rows INTEGER,
    received_rows INTEGER NOT NULL DEFAULT 0,
    last_sync_at INTEGER,
    last_attempt_at INTEGER,
    last_error TEXT,
    settle_all INTEGER NOT NULL DEFAULT 1,
    -- When the table's download from an empty cursor last began, in the
    -- order downloads began (see `Store::begin_pull`); NULL when none has.
    walk_order INTEGER
);
CREATE TABLE IF NOT EXISTS _fs_outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    idempotency_key TEXT NOT NULL UNIQUE,
    tbl TEXT NOT NULL,
    row_id TEXT NOT NULL,
    op TEXT NOT NULL,
    base_version INTEGER NOT NULL,
    data TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS _fs_outbox_row ON _fs_outbox (tbl, row_id);
CREATE TABLE IF NOT EXISTS _fs_sync_errors (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    kind TEXT NOT NULL,
    tbl TEXT NOT NULL,
    row_id TEXT NOT NULL,
    op TEXT NOT NULL,
    message TEXT NOT NULL,
    device_data TEXT,
    server_data TEXT
);
"#;

/// Name of the version column on device tables.
pub const LOCAL_VERSION_COLUMN: &str = "_fs_version";

/// Sync state of one table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TableState {
    pub name: String,
    pub cursor: String,
    pub initial_done: bool,
    pub expected_rows: Option<u64>,
    pub received_rows: u64,
    pub last_sync_at: Option<i64>,
    pub last_attempt_at: Option<i64>,
    pub last_error: Option<String>,
}

/// One write of a local transaction ([`Store::write_transaction`]), already
/// checked against the profile.
#[derive(Debug, Clone)]
pub struct LocalWrite {
    pub table: SyncTable,
    pub id: String,
    /// The operation; none: update the row if the device has it, else
    /// create it.
    pub op: Option<Op>,
    pub data: BTreeMap<String, Value>,
}

/// A change waiting in the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEntry {
    pub seq: i64,
    pub mutation: Mutation,
    pub attempts: i64,
}

/// A sync error kept on the device.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LocalSyncError {
    pub id: i64,
    /// Milliseconds since the epoch.
    pub at: i64,
    /// `conflict` or `rejected`.
    pub kind: String,
    pub table: String,
    pub record_id: String,
    pub action: String,
    pub message: String,
    pub device_data: Option<BTreeMap<String, Value>>,
    pub server_data: Option<BTreeMap<String, Value>>,
}

/// What applying one pulled page did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PageApplied {
    pub upserted: u64,
    pub removed: u64,
    /// Rows left alone because a local change is waiting for upload.
    pub kept_pending: u64,
}

/// What a page applied from its JSON said and did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PageSummary {
    pub has_more: bool,
    /// The page's `total`, when the server sent one.
    pub total: Option<u64>,
    /// Rows plus removals in the page.
    pub entries: u64,
    /// The page's `snapshot_rows` (0 when the server sent none).
    pub snapshot_rows: u64,
    pub applied: PageApplied,
    /// The table's expected row count recorded with the page (what `total`
    /// of [`Store::apply_page_json`] gave), if any.
    pub expected: Option<u64>,
}

/// What applying push results did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PushApplied {
    pub applied: u64,
    pub conflicts: Vec<LocalSyncError>,
    pub rejected: Vec<LocalSyncError>,
}

/// What a profile change did on the device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProfileChange {
    pub added_tables: Vec<String>,
    pub dropped_tables: Vec<String>,
    /// Tables whose columns or rules changed and which download again.
    pub resynced_tables: Vec<String>,
    /// Local rows removed because they no longer meet their table's rules.
    pub removed_rows: u64,
    /// Pending changes to dropped tables, moved to the sync errors.
    pub orphaned_changes: u64,
}

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
    run_lock: Mutex<Option<std::fs::File>>,
}

/// The writer connection, locked; when dropped, after the lock is released,
/// the tables its commits changed are announced (see [`changes`]).
pub(crate) struct WriteGuard<'a> {
    conn: Option<MutexGuard<'a, Connection>>,
    changes: &'a changes::Changes,
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

fn lock(m: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Statements kept prepared on the writer connection.
const WRITER_STATEMENTS: usize = 96;

fn open_connection(path: &Path, key: Option<&DatabaseKey>) -> Result<Connection> {
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
const EVALUATION_CACHE_KIB: i64 = -512;

/// The fewest pages SQLite's sorter holds in memory before it writes a
/// sorted run to a temporary file (`SQLITE_CONFIG_PMASZ`; SQLite's own
/// default is 250, 1 MiB of 4 KiB pages, whatever the page cache). With
/// 64, a sort is bounded by the connection's page cache down to 256 KiB:
/// the index builds of a whole-table settling (`settle::ensure_index`)
/// sort 126k keys at 1M device rows and 12.6k at 100k, and both now fill
/// the same bound, so the sort's memory does not follow the device's size.
const SORTER_MIN_PAGES: std::os::raw::c_int = 64;

/// Process-wide SQLite settings, made once before the first connection
/// (SQLite takes them only before it initialises; in a process where
/// something else initialised it first, the call is refused and SQLite's
/// defaults stay, which changes only how much memory a sort may use).
fn configure_sqlite() {
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
fn persist_wal(conn: &Connection) {
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

/// A value of `_fs_meta`.
fn meta_value(conn: &Connection, key: &str) -> Result<Option<String>> {
    Ok(conn
        .query_row("SELECT value FROM _fs_meta WHERE key = ?1", [key], |r| {
            r.get(0)
        })
        .optional()?)
}

/// Writes a value of `_fs_meta`.
fn put_meta(conn: &Connection, key: &str, value: &str) -> Result<()> {
    conn.execute(
        "INSERT INTO _fs_meta (key, value) VALUES (?1, ?2)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )?;
    Ok(())
}

/// The offline profile stored with the data, if any.
fn stored_profile(conn: &Connection) -> Result<Option<SyncProfile>> {
    meta_value(conn, "profile")?
        .map(|text| {
            serde_json::from_str(&text)
                .map_err(|e| Error::Storage(format!("corrupt stored profile: {e}")))
        })
        .transpose()
}

fn json_map(text: &str) -> Result<BTreeMap<String, Value>> {
    serde_json::from_str(text).map_err(|e| Error::Storage(format!("corrupt stored JSON: {e}")))
}

/// Every row a query over `table`'s columns ([`select_columns`]) answers,
/// as records.
fn records(mut rows: rusqlite::Rows<'_>, table: &SyncTable) -> Result<Vec<Record>> {
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let (fields, version) = row_to_map(row, table)?;
        let id = match fields.get(&table.primary_key) {
            Some(Value::Text(id)) => id.clone(),
            _ => String::new(),
        };
        out.push(Record {
            table: table.name.clone(),
            id,
            version,
            fields,
        });
    }
    Ok(out)
}

fn row_to_map(
    row: &rusqlite::Row<'_>,
    table: &SyncTable,
) -> Result<(BTreeMap<String, Value>, i64)> {
    let mut fields = BTreeMap::new();
    for (i, c) in table.columns.iter().enumerate() {
        fields.insert(c.name.clone(), Value::from_sql(row.get_ref(i)?, c.kind));
    }
    let version: i64 = row.get(table.columns.len())?;
    Ok((fields, version))
}

/// The columns the rules of `table` read, the primary key included, in
/// table order: a settling pass over every row reads only these into each
/// row's map.
fn rule_columns(table: &SyncTable) -> Vec<&Column> {
    let mut names: Vec<&str> = vec![table.primary_key.as_str()];
    for rule in &table.rules {
        match rule {
            RowRule::All => {}
            RowRule::Owned { column } => names.push(column),
            RowRule::Custom { filter } => names.extend(filter.columns()),
            RowRule::Related {
                table: other,
                column,
                foreign_column,
            } => {
                names.push(column);
                if *other == table.name {
                    names.push(foreign_column);
                }
            }
        }
    }
    table
        .columns
        .iter()
        .filter(|c| names.contains(&c.name.as_str()))
        .collect()
}

/// `SELECT` of [`rule_columns`] over the whole table.
fn rule_columns_sql(table: &SyncTable, columns: &[&Column]) -> String {
    let list: Vec<String> = columns.iter().map(|c| quote_ident(&c.name)).collect();
    format!(
        "SELECT {} FROM {}",
        list.join(", "),
        quote_ident(&table.name)
    )
}

/// A row read by [`rule_columns_sql`], as a map.
fn rule_row(row: &rusqlite::Row<'_>, columns: &[&Column]) -> Result<BTreeMap<String, Value>> {
    let mut fields = BTreeMap::new();
    for (i, c) in columns.iter().enumerate() {
        fields.insert(c.name.clone(), Value::from_sql(row.get_ref(i)?, c.kind));
    }
    Ok(fields)
}

fn select_columns(table: &SyncTable) -> String {
    let mut cols: Vec<String> = table.columns.iter().map(|c| quote_ident(&c.name)).collect();
    cols.push(LOCAL_VERSION_COLUMN.into());
    cols.join(", ")
}

fn read_row(
    conn: &Connection,
    table: &SyncTable,
    id: &str,
) -> Result<Option<(BTreeMap<String, Value>, i64)>> {
    let sql = format!(
        "SELECT {} FROM {} WHERE {} = ?1",
        select_columns(table),
        quote_ident(&table.name),
        quote_ident(&table.primary_key)
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query([id])?;
    match rows.next()? {
        Some(row) => Ok(Some(row_to_map(row, table)?)),
        None => Ok(None),
    }
}

/// The upsert of a row of `table`: `_fs_version` then `columns` (column
/// names, the primary key among them) bound as `?1`, `?2`, ... in that
/// order; a row already there takes every given column and the version.
///
/// SQLite rewrites the entry of every index on a column an `UPDATE` sets,
/// changed or not: with the settling's lookup indexes on a work order's
/// `account_id` and `customer_asset_id`, writing 10,000 changed work orders
/// took twice as long. So when given columns are indexed, `sql` sets only
/// the others, on the condition that the indexed ones are unchanged, and
/// `fallback` (every column) is run when that changed nothing: a new row is
/// inserted by `sql`, an existing one with the same indexed values updated
/// by it, and only a row whose indexed value moved takes the fallback.
struct Upsert {
    sql: String,
    fallback: Option<String>,
}

impl Upsert {
    /// The upsert of `columns` of `table`, whose indexed columns are
    /// `indexed` (see [`indexed_columns`]).
    fn new(table: &SyncTable, columns: &[&str], indexed: &BTreeSet<String>) -> Upsert {
        let pk = table.primary_key.as_str();
        let every: Vec<&str> = columns.iter().copied().filter(|c| *c != pk).collect();
        let (guarded, plain): (Vec<&str>, Vec<&str>) =
            every.iter().copied().partition(|c| indexed.contains(*c));
        let full = upsert_sql(table, columns, &every, &[]);
        if guarded.is_empty() {
            return Upsert {
                sql: full,
                fallback: None,
            };
        }
        Upsert {
            sql: upsert_sql(table, columns, &plain, &guarded),
            fallback: Some(full),
        }
    }

    /// The quiet update of a pulled row over a settled table, with a row's
    /// parameters as the upsert takes them (`?1` the version, then
    /// `columns`): it writes the row only when the device holds it with the
    /// same values in every column of `indexed` and of `unchanged`, and
    /// with `versions` at a version less than two behind (see
    /// `RelatedQueue`).
    fn quiet_update(
        table: &SyncTable,
        columns: &[&str],
        indexed: &BTreeSet<String>,
        unchanged: &[&str],
        versions: bool,
    ) -> String {
        let pk = table.primary_key.as_str();
        let mut set = Vec::new();
        let mut same = Vec::new();
        for (i, c) in columns.iter().enumerate() {
            let (q, at) = (quote_ident(c), i + 2);
            if *c == pk {
                same.push(format!("{q} = ?{at}"));
            } else if indexed.contains(*c) || unchanged.contains(c) {
                same.push(format!("{q} IS ?{at}"));
            } else {
                set.push(format!("{q} = ?{at}"));
            }
        }
        set.push(format!("{LOCAL_VERSION_COLUMN} = ?1"));
        if versions {
            same.push(format!("{LOCAL_VERSION_COLUMN} + 2 > ?1"));
        }
        format!(
            "UPDATE {} SET {} WHERE {}",
            quote_ident(&table.name),
            set.join(", "),
            same.join(" AND ")
        )
    }

    /// The upsert of a whole row of `table` (every column, see [`upsert_row`]).
    fn whole_row(conn: &Connection, table: &SyncTable) -> Result<Upsert> {
        let names: Vec<&str> = table.columns.iter().map(|c| c.name.as_str()).collect();
        Ok(Upsert::new(
            table,
            &names,
            &indexed_columns(conn, &table.name)?,
        ))
    }
}

/// `INSERT ... ON CONFLICT DO UPDATE SET` each of `set` and the version,
/// where every column of `unchanged` still holds the arriving value.
fn upsert_sql(table: &SyncTable, columns: &[&str], set: &[&str], unchanged: &[&str]) -> String {
    let cols: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
    let placeholders: Vec<String> = (1..=cols.len() + 1).map(|i| format!("?{i}")).collect();
    let updates: Vec<String> = set
        .iter()
        .map(|c| {
            let c = quote_ident(c);
            format!("{c} = excluded.{c}")
        })
        .chain(std::iter::once(format!(
            "{LOCAL_VERSION_COLUMN} = excluded.{LOCAL_VERSION_COLUMN}"
        )))
        .collect();
    let condition = if unchanged.is_empty() {
        String::new()
    } else {
        let same: Vec<String> = unchanged
            .iter()
            .map(|c| {
                let c = quote_ident(c);
                format!("{c} IS excluded.{c}")
            })
            .collect();
        format!(" WHERE {}", same.join(" AND "))
    };
    format!(
        "INSERT INTO {} ({LOCAL_VERSION_COLUMN}, {}) VALUES ({}) ON CONFLICT({}) DO UPDATE SET {}{condition}",
        quote_ident(&table.name),
        cols.join(", "),
        placeholders.join(", "),
        quote_ident(&table.primary_key),
        updates.join(", ")
    )
}

/// The columns of `table` that some index holds.
fn indexed_columns(conn: &Connection, table: &str) -> Result<BTreeSet<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT DISTINCT ii.name FROM pragma_index_list(?1) AS il, pragma_index_info(il.name) AS ii
         WHERE ii.name IS NOT NULL",
    )?;
    let rows = stmt.query_map([table], |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// A row's size as [`MAX_ROW_BYTES`] counts it: its values and its id.
fn row_size<'a>(values: impl Iterator<Item = &'a Value>, id: &str) -> usize {
    values.map(Value::approx_size).sum::<usize>() + id.len()
}

/// Writes a whole row (every column; missing ones null) with a version,
/// through `upsert` ([`Upsert::whole_row`] of the same table).
fn upsert_row(
    conn: &Connection,
    upsert: &Upsert,
    table: &SyncTable,
    fields: &BTreeMap<String, Value>,
    version: i64,
) -> Result<()> {
    let mut values: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity(table.columns.len() + 1);
    values.push(&version);
    for c in &table.columns {
        values.push(fields.get(&c.name).unwrap_or(&Value::Null));
    }
    let changed = conn
        .prepare_cached(&upsert.sql)?
        .execute(values.as_slice())?;
    if changed == 0
        && let Some(fallback) = &upsert.fallback
    {
        conn.prepare_cached(fallback)?.execute(values.as_slice())?;
    }
    Ok(())
}

/// Moves a table's cursor past a page applied in `tx`: counts its entries
/// for progress, records the expected total if known, and on the last page
/// (`done`) marks the first download complete (to be settled whole).
fn advance_cursor(
    tx: &Connection,
    table: &SyncTable,
    cursor: &str,
    entries: u64,
    expected: Option<u64>,
    done: bool,
    now: i64,
) -> Result<()> {
    tx.execute(
        "UPDATE _fs_tables SET cursor = ?2,
            received_rows = received_rows + ?3,
            expected_rows = COALESCE(?4, expected_rows),
            initial_done = CASE WHEN ?5 THEN 1 ELSE initial_done END,
            last_sync_at = CASE WHEN ?5 THEN ?6 ELSE last_sync_at END,
            last_attempt_at = ?6, last_error = NULL,
            settle_all = CASE WHEN initial_done THEN settle_all ELSE 1 END
         WHERE name = ?1",
        params![
            table.name,
            cursor,
            entries as i64,
            expected.map(|t| t as i64),
            done,
            now
        ],
    )?;
    Ok(())
}

fn delete_row(conn: &Connection, table: &SyncTable, id: &str) -> Result<bool> {
    let sql = format!(
        "DELETE FROM {} WHERE {} = ?1",
        quote_ident(&table.name),
        quote_ident(&table.primary_key)
    );
    Ok(conn.prepare_cached(&sql)?.execute([id])? > 0)
}

fn has_pending(conn: &Connection, table: &str, id: &str) -> Result<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM _fs_outbox WHERE tbl = ?1 AND row_id = ?2 LIMIT 1")?
        .exists(params![table, id])?)
}

fn create_table_sql(table: &SyncTable) -> String {
    let mut cols: Vec<String> = Vec::new();
    for (i, c) in table.columns.iter().enumerate() {
        if i == 0 {
            cols.push(format!(
                "{} TEXT PRIMARY KEY NOT NULL",
                quote_ident(&c.name)
            ));
        } else {
            cols.push(format!("{} {}", quote_ident(&c.name), c.kind.sql_type()));
        }
    }
    cols.push(format!("{LOCAL_VERSION_COLUMN} INTEGER NOT NULL DEFAULT 0"));
    format!(
        "CREATE TABLE IF NOT EXISTS {} ({})",
        quote_ident(&table.name),
        cols.join(", ")
    )
}

/// Whether two column lists hold the same columns of the same kinds in
/// the same order: a data model change that only relaxes a column (more
/// choices, a new default, no longer required) changes nothing stored.
fn same_columns(a: &[Column], b: &[Column]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.name == y.name && x.kind == y.kind)
}

/// Prefix of the indexes the data model declares (see
/// [`ensure_model_indexes`]).
const MODEL_INDEX_PREFIX: &str = "_fs_mx_";

/// The local name of a model index: the table name's length keeps two
/// (table, index) pairs apart.
fn model_index_name(table: &str, index: &str) -> String {
    format!("{MODEL_INDEX_PREFIX}{}_{table}_{index}", table.len())
}

/// Drops the model's indexes of `table` (before columns they name go).
fn drop_model_indexes(conn: &Connection, table: &str) -> Result<()> {
    let names: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?1 AND substr(name, 1, 7) = ?2",
        )?
        .query_map(rusqlite::params![table, MODEL_INDEX_PREFIX], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for n in names {
        conn.execute_batch(&format!("DROP INDEX IF EXISTS {}", quote_ident(&n)))?;
    }
    Ok(())
}

/// Builds the data model's indexes of `table` the device lacks and drops
/// the ones the model no longer declares.
fn ensure_model_indexes(conn: &Connection, table: &SyncTable) -> Result<()> {
    let wanted: BTreeSet<String> = table
        .model_indexes
        .iter()
        .map(|ix| model_index_name(&table.name, &ix.name))
        .collect();
    let have: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?1 AND substr(name, 1, 7) = ?2",
        )?
        .query_map(rusqlite::params![table.name, MODEL_INDEX_PREFIX], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for n in have.iter().filter(|n| !wanted.contains(*n)) {
        conn.execute_batch(&format!("DROP INDEX IF EXISTS {}", quote_ident(n)))?;
    }
    for ix in &table.model_indexes {
        let columns: Vec<String> = ix.columns.iter().map(|c| quote_ident(c)).collect();
        conn.execute_batch(&format!(
            "CREATE INDEX IF NOT EXISTS {} ON {} ({})",
            quote_ident(&model_index_name(&table.name, &ix.name)),
            quote_ident(&table.name),
            columns.join(", ")
        ))?;
    }
    Ok(())
}

fn record_error(
    conn: &Connection,
    now: i64,
    kind: &str,
    m: &Mutation,
    message: &str,
    server: Option<&BTreeMap<String, Value>>,
) -> Result<LocalSyncError> {
    let device_data = if m.op == Op::Delete {
        None
    } else {
        Some(m.data.clone())
    };
    let device_json = device_data
        .as_ref()
        .map(serde_json::to_string)
        .transpose()?;
    let server_json = server.map(serde_json::to_string).transpose()?;
    conn.execute(
        "INSERT INTO _fs_sync_errors (at, kind, tbl, row_id, op, message, device_data, server_data)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            now,
            kind,
            m.table,
            m.id,
            m.op.as_str(),
            message,
            device_json,
            server_json
        ],
    )?;
    Ok(LocalSyncError {
        id: conn.last_insert_rowid(),
        at: now,
        kind: kind.into(),
        table: m.table.clone(),
        record_id: m.id.clone(),
        action: m.op.as_str().into(),
        message: message.into(),
        device_data,
        server_data: server.cloned(),
    })
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
fn place_temp_files(dir: &Path) {
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
        configure_sqlite();
        place_temp_files(dir);
        let mut writer = open_connection(path, key)?;
        schema::migrate(&mut writer)?;
        // The statements that write a page are prepared per table (and per
        // column list); rusqlite's default cache of 16 would drop a sync's
        // first tables' statements before the next sync reached them.
        writer.set_prepared_statement_cache_capacity(WRITER_STATEMENTS);
        let reader = open_connection(path, key)?;
        let checkpoints = checkpoint::Checkpoints::start(&writer, path.to_owned(), key.cloned());
        let changes = changes::Changes::install(&writer);
        Ok(Store {
            path: path.to_owned(),
            writer: Mutex::new(writer),
            reader: Mutex::new(reader),
            key: key.cloned(),
            _checkpoints: checkpoints,
            changes,
            run_lock: Mutex::new(None),
        })
    }

    /// The writer connection, locked (see [`WriteGuard`]).
    pub(crate) fn write_lock(&self) -> WriteGuard<'_> {
        WriteGuard {
            conn: Some(lock(&self.writer)),
            changes: &self.changes,
        }
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
        let conn = lock(&self.reader);
        let sql = format!(
            "EXPLAIN QUERY PLAN SELECT {} FROM {} WHERE {} ORDER BY {} LIMIT ? OFFSET ?",
            select_columns(table),
            quote_ident(&table.name),
            q.condition,
            q.order
        );
        let mut stmt = conn.prepare(&sql)?;
        let mut bound: Vec<&dyn rusqlite::ToSql> =
            q.params.iter().map(|v| v as &dyn rusqlite::ToSql).collect();
        bound.push(&q.limit);
        bound.push(&q.offset);
        let rows = stmt.query_map(bound.as_slice(), |r| r.get::<_, String>(3))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The rows of `table` a compiled query selects, in its order.
    pub fn query(&self, table: &SyncTable, q: &crate::query::CompiledQuery) -> Result<Vec<Record>> {
        let conn = lock(&self.reader);
        let sql = format!(
            "SELECT {} FROM {} WHERE {} ORDER BY {} LIMIT ? OFFSET ?",
            select_columns(table),
            quote_ident(&table.name),
            q.condition,
            q.order
        );
        let mut stmt = conn.prepare_cached(&sql)?;
        let mut bound: Vec<&dyn rusqlite::ToSql> =
            q.params.iter().map(|v| v as &dyn rusqlite::ToSql).collect();
        bound.push(&q.limit);
        bound.push(&q.offset);
        let rows = stmt.query(bound.as_slice())?;
        records(rows, table)
    }

    /// How many rows of `table` a compiled query's condition selects
    /// (limit and offset not applied).
    pub fn query_count(&self, table: &SyncTable, q: &crate::query::CompiledQuery) -> Result<u64> {
        let conn = lock(&self.reader);
        let sql = format!(
            "SELECT count(*) FROM {} WHERE {}",
            quote_ident(&table.name),
            q.condition
        );
        let mut stmt = conn.prepare_cached(&sql)?;
        let n: i64 = stmt.query_row(rusqlite::params_from_iter(q.params.iter()), |r| r.get(0))?;
        Ok(u64::try_from(n).unwrap_or(0))
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
        meta_value(&lock(&self.reader), key)
    }

    /// Writes a value of `_fs_meta`.
    pub fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        put_meta(&self.write_lock(), key, value)
    }

    /// Runs `f` on the writer connection (engine modules that keep their own
    /// `_fs_` tables: telemetry).
    pub(crate) fn with_writer<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        f(&mut self.write_lock())
    }

    /// Runs `f` on the reader connection.
    pub(crate) fn with_reader<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        f(&lock(&self.reader))
    }

    /// Records that `tables` are current as of `now` without a download
    /// (smart sync: the server reported no change after their cursors), in
    /// one transaction.
    pub fn mark_tables_current(&self, tables: &[String], now: i64) -> Result<()> {
        if tables.is_empty() {
            return Ok(());
        }
        self.in_sync_transaction(|tx| {
            let mut stmt = tx.prepare_cached(
                "UPDATE _fs_tables SET last_sync_at = ?2, last_attempt_at = ?2, last_error = NULL
                 WHERE name = ?1 AND initial_done = 1",
            )?;
            for table in tables {
                stmt.execute(params![table, now])?;
            }
            Ok(())
        })
    }

    /// Reads a persisted setting.
    pub fn setting(&self, key: &str) -> Result<Option<String>> {
        Ok(lock(&self.reader)
            .query_row(
                "SELECT value FROM _fs_settings WHERE key = ?1",
                [key],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Persists a setting.
    pub fn set_setting(&self, key: &str, value: &str) -> Result<()> {
        self.write_lock().execute(
            "INSERT INTO _fs_settings (key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    /// The stored offline profile, if the device has synced once.
    pub fn profile(&self) -> Result<Option<SyncProfile>> {
        stored_profile(&lock(&self.reader))
    }

    /// Installs a (new) profile: creates added tables, drops removed ones,
    /// adds and drops columns, and marks tables whose rules changed for a new
    /// download after removing the rows they no longer select. One transaction.
    pub fn apply_profile(&self, new: &SyncProfile, now: i64) -> Result<ProfileChange> {
        let old = self.profile()?;
        if old.as_ref().is_some_and(|old| old.user_id != new.user_id) {
            return Err(Error::InvalidInput(
                "this database holds another user's data; reset it before signing in as a new user"
                    .into(),
            ));
        }
        let mut change = ProfileChange::default();
        let ctx = new.filter_context(now);
        // A new team or time zone changes what custom filters select.
        let context_changed = old.as_ref().is_some_and(|old| {
            old.team_id != new.team_id || old.utc_offset_minutes != new.utc_offset_minutes
        });
        let mut conn = self.write_lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Triggers and settle indexes name columns; they come back below
        // and at the next settling.
        settle::drop_triggers(&tx)?;
        for table in &new.tables {
            let before = old.as_ref().and_then(|p| p.table(&table.name));
            match before {
                None => {
                    tx.execute_batch(&create_table_sql(table))?;
                    tx.execute(
                        "INSERT INTO _fs_tables (name) VALUES (?1) ON CONFLICT(name) DO NOTHING",
                        [&table.name],
                    )?;
                    change.added_tables.push(table.name.clone());
                }
                Some(before)
                    if same_columns(&before.columns, &table.columns)
                        && before.rules == table.rules
                        && before.primary_key == table.primary_key
                        && !(context_changed
                            && table
                                .rules
                                .iter()
                                .any(|r| matches!(r, RowRule::Custom { .. }))) => {}
                Some(before) => {
                    if before.primary_key != table.primary_key {
                        tx.execute_batch(&format!(
                            "DROP TABLE IF EXISTS {}",
                            quote_ident(&table.name)
                        ))?;
                        tx.execute_batch(&create_table_sql(table))?;
                    } else {
                        settle::drop_indexes(&tx, &table.name)?;
                        drop_model_indexes(&tx, &table.name)?;
                        indexes::drop_local_indexes(&tx, &table.name)?;
                        for c in &before.columns {
                            if table.column(&c.name).is_none() {
                                tx.execute_batch(&format!(
                                    "ALTER TABLE {} DROP COLUMN {}",
                                    quote_ident(&table.name),
                                    quote_ident(&c.name)
                                ))?;
                            }
                        }
                        for c in &table.columns {
                            if before.column(&c.name).is_none() {
                                tx.execute_batch(&format!(
                                    "ALTER TABLE {} ADD COLUMN {} {}",
                                    quote_ident(&table.name),
                                    quote_ident(&c.name),
                                    c.kind.sql_type()
                                ))?;
                            }
                        }
                    }
                    change.removed_rows += remove_unqualified(&tx, table, &ctx)?;
                    // Columns only dropped, rules and key as they were: the
                    // rows held are still the rows to hold, each with its
                    // remaining values; nothing to download again.
                    let only_dropped = before.primary_key == table.primary_key
                        && before.rules == table.rules
                        && !context_changed
                        && table
                            .columns
                            .iter()
                            .all(|c| before.column(&c.name).is_some_and(|b| b.kind == c.kind));
                    if !only_dropped {
                        tx.execute(
                            "UPDATE _fs_tables SET cursor = '', initial_done = 0, expected_rows = NULL, received_rows = 0, walk_order = NULL WHERE name = ?1",
                            [&table.name],
                        )?;
                        change.resynced_tables.push(table.name.clone());
                    }
                }
            }
        }
        if let Some(old) = &old {
            for table in &old.tables {
                if new.table(&table.name).is_some() {
                    continue;
                }
                // Changes to a table that left the profile can no longer be
                // uploaded: keep them, visibly, as sync errors, with every
                // other change of their local transactions (which applies
                // whole or not at all).
                let doomed: BTreeSet<String> = {
                    let mut stmt = tx.prepare(
                        "SELECT DISTINCT tx_id FROM _fs_outbox WHERE tbl = ?1 AND tx_id IS NOT NULL",
                    )?;
                    let ids = stmt.query_map([&table.name], |r| r.get(0))?;
                    ids.collect::<rusqlite::Result<_>>()?
                };
                let entries: Vec<OutboxEntry> = outbox_entries(&tx, None)?
                    .into_iter()
                    .filter(|e| {
                        e.mutation.table == table.name
                            || e.mutation
                                .transaction
                                .as_ref()
                                .is_some_and(|t| doomed.contains(&t.id))
                    })
                    .collect();
                for e in &entries {
                    record_error(
                        &tx,
                        now,
                        "rejected",
                        &e.mutation,
                        "the table left the offline profile before this change was uploaded",
                        None,
                    )?;
                }
                change.orphaned_changes += entries.len() as u64;
                for e in &entries {
                    tx.execute("DELETE FROM _fs_outbox WHERE seq = ?1", [e.seq])?;
                }
                tx.execute_batch(&format!(
                    "DROP TABLE IF EXISTS {}",
                    quote_ident(&table.name)
                ))?;
                tx.execute("DELETE FROM _fs_tables WHERE name = ?1", [&table.name])?;
                change.dropped_tables.push(table.name.clone());
            }
        }
        for table in &new.tables {
            indexes::set_local_indexes(&tx, table, &table.indexes)?;
        }
        put_meta(&tx, "profile", &serde_json::to_string(new)?)?;
        settle::install_triggers(&tx, new)?;
        for table in &new.tables {
            ensure_model_indexes(&tx, table)?;
        }
        // A new profile can change what reaches any row: the next settling
        // evaluates every row.
        tx.execute("UPDATE _fs_tables SET settle_all = 1", [])?;
        tx.commit()?;
        Ok(change)
    }

    /// Sync state of a table.
    pub fn table_state(&self, name: &str) -> Result<TableState> {
        let conn = lock(&self.reader);
        let state = conn
            .query_row(
                "SELECT name, cursor, initial_done, expected_rows, received_rows, last_sync_at, last_attempt_at, last_error
                 FROM _fs_tables WHERE name = ?1",
                [name],
                |r| {
                    Ok(TableState {
                        name: r.get(0)?,
                        cursor: r.get(1)?,
                        initial_done: r.get(2)?,
                        expected_rows: r.get::<_, Option<i64>>(3)?.map(|v| v.max(0) as u64),
                        received_rows: r.get::<_, i64>(4)?.max(0) as u64,
                        last_sync_at: r.get(5)?,
                        last_attempt_at: r.get(6)?,
                        last_error: r.get(7)?,
                    })
                },
            )
            .optional()?;
        state.ok_or_else(|| Error::UnknownTable(name.into()))
    }

    /// Applies one pulled page and advances the table's cursor, atomically.
    /// A page with a total records the expected row count for progress.
    /// With the profile, the related values the page's rows bring are queued
    /// in the same transaction, before the rows are written (see
    /// `settle::RelatedQueue`).
    pub fn apply_page(
        &self,
        profile: Option<&SyncProfile>,
        table: &SyncTable,
        page: &PullPage,
        now: i64,
    ) -> Result<PageApplied> {
        let queue = profile.map(|p| (p, Arrival::Server));
        self.in_sync_transaction(|tx| {
            let mut writer = page::PageWriter::new(tx, table, &page.columns, queue)?;
            writer.snapshot_rows(page.snapshot_rows);
            for row in &page.rows {
                writer.row(row)?;
            }
            for id in &page.removed {
                writer.removed(id)?;
            }
            let applied = writer.applied;
            let entries = (page.rows.len() + page.removed.len()) as u64;
            advance_cursor(
                tx,
                table,
                &page.cursor,
                entries,
                page.total,
                !page.has_more,
                now,
            )?;
            Ok(applied)
        })
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
        let queue = profile.map(|p| (p, Arrival::Server));
        self.in_sync_transaction(|tx| {
            let page = page::apply_json(tx, table, body, queue)?;
            let mut summary = PageSummary {
                has_more: page.has_more,
                total: page.total,
                entries: page.entries,
                snapshot_rows: page.snapshot_rows,
                applied: page.applied,
                expected: None,
            };
            summary.expected = total(&summary);
            advance_cursor(
                tx,
                table,
                &page.cursor,
                page.entries,
                summary.expected,
                !page.has_more,
                now,
            )?;
            Ok(summary)
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
    /// that download's snapshot (see `settle::RelatedQueue`).
    pub fn begin_pull(&self, table: &SyncTable, now: i64) -> Result<()> {
        self.in_sync_transaction(|tx| {
            tx.execute(
                "UPDATE _fs_tables SET received_rows = CASE WHEN initial_done THEN 0 ELSE received_rows END,
                     expected_rows = CASE WHEN initial_done THEN NULL ELSE expected_rows END,
                     last_attempt_at = ?2 WHERE name = ?1",
                params![table.name, now],
            )?;
            let fresh = tx.execute(
                "UPDATE _fs_tables SET walk_order =
                     (SELECT COALESCE(MAX(walk_order), 0) + 1 FROM _fs_tables)
                 WHERE name = ?1 AND cursor = ''",
                [&table.name],
            )? > 0;
            if fresh {
                for r in table.related_rules() {
                    let key = related_rule_key(&table.name, r.column, r.other, r.foreign_column);
                    tx.execute("DELETE FROM _fs_related_pending WHERE rule = ?1", [&key])?;
                }
            }
            Ok(())
        })
    }

    /// Prepares the statements that write a page of `table` pulled with
    /// `profile`'s rules (the page's columns in the profile's order, as the
    /// server sends them), so that the first page is not kept waiting on
    /// them: called while that page is being read on the server. They stay
    /// in the writer's statement cache; a page with other columns prepares
    /// its own. Nothing is written, and a failure is left to the page.
    pub fn prepare_page_writes(&self, profile: Option<&SyncProfile>, table: &SyncTable) {
        let conn = self.write_lock();
        let queue = profile.map(|p| (p, Arrival::Server));
        if let Err(e) = page::PageWriter::new(&conn, table, &page::page_columns(table), queue) {
            tracing::debug!(target: "fieldsync::store", table = %table.name, error = %e, "page writes not prepared ahead");
        }
    }

    /// Starts `table`'s download over from the beginning (the server no
    /// longer recognises its cursor, for example after a restore).
    pub fn restart_table(&self, table: &str) -> Result<()> {
        self.write_lock().execute(
            "UPDATE _fs_tables SET cursor = '', initial_done = 0, expected_rows = NULL, received_rows = 0, settle_all = 1, walk_order = NULL WHERE name = ?1",
            [table],
        )?;
        Ok(())
    }

    /// Records a failed pull of `table`.
    pub fn record_table_error(&self, table: &str, message: &str) -> Result<()> {
        self.write_lock().execute(
            "UPDATE _fs_tables SET last_error = ?2 WHERE name = ?1",
            params![table, message],
        )?;
        Ok(())
    }

    /// Reads one row.
    pub fn get(&self, table: &SyncTable, id: &str) -> Result<Record> {
        let conn = lock(&self.reader);
        match read_row(&conn, table, id)? {
            Some((fields, version)) => Ok(Record {
                table: table.name.clone(),
                id: id.to_owned(),
                version,
                fields,
            }),
            None => Err(Error::RecordNotFound {
                table: table.name.clone(),
                id: id.to_owned(),
            }),
        }
    }

    /// Lists rows ordered by primary key, starting after `after`.
    pub fn list(&self, table: &SyncTable, after: Option<&str>, limit: u32) -> Result<Vec<Record>> {
        let conn = lock(&self.reader);
        let sql = format!(
            "SELECT {} FROM {} WHERE ?1 IS NULL OR {pk} > ?1 ORDER BY {pk} LIMIT ?2",
            select_columns(table),
            quote_ident(&table.name),
            pk = quote_ident(&table.primary_key)
        );
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt.query(params![after, limit])?;
        records(rows, table)
    }

    /// Number of rows in a synced table.
    pub fn count(&self, table: &str) -> Result<u64> {
        let conn = lock(&self.reader);
        let n: i64 = conn.query_row(
            &format!("SELECT COUNT(*) FROM {}", quote_ident(table)),
            [],
            |r| r.get(0),
        )?;
        Ok(n.max(0) as u64)
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
        let mut conn = self.write_lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let result = write_in(&tx, profile, table, id, op, data, now, None)?;
        tx.commit()?;
        Ok(result)
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
        let tx_id = uuid::Uuid::new_v4().to_string();
        let mut conn = self.write_lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut out = Vec::with_capacity(writes.len());
        for (i, w) in writes.iter().enumerate() {
            let write = |op| {
                write_in(
                    &tx,
                    profile,
                    &w.table,
                    &w.id,
                    op,
                    w.data.clone(),
                    now,
                    Some(&tx_id),
                )
            };
            let record = match w.op {
                None => match write(Op::Update) {
                    Err(Error::RecordNotFound { .. }) => write(Op::Insert),
                    other => other,
                },
                Some(op) => write(op),
            }?;
            out.push(record);
            after_each(i);
        }
        tx.commit()?;
        Ok(out)
    }

    /// Number of changes waiting for upload.
    pub fn pending_count(&self) -> Result<u64> {
        let n: i64 =
            lock(&self.reader).query_row("SELECT COUNT(*) FROM _fs_outbox", [], |r| r.get(0))?;
        Ok(n.max(0) as u64)
    }

    /// Pending changes per table.
    pub fn pending_by_table(&self) -> Result<HashMap<String, u64>> {
        let conn = lock(&self.reader);
        let mut stmt = conn.prepare_cached("SELECT tbl, COUNT(*) FROM _fs_outbox GROUP BY tbl")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        let mut out = HashMap::new();
        for row in rows {
            let (t, n) = row?;
            out.insert(t, n.max(0) as u64);
        }
        Ok(out)
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
        let mut conn = self.write_lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // A transaction starting within the first `max` entries ends
        // within this many.
        let read = max.saturating_add(MAX_MUTATIONS_PER_PUSH);
        let all = outbox_entries_limited(&tx, None, i64::try_from(read).unwrap_or(i64::MAX))?;
        let mut seen = std::collections::HashSet::new();
        let mut batch = Vec::new();
        let mut rest = all.as_slice();
        while let Some(first) = rest.first() {
            let len = match &first.mutation.transaction {
                None => 1,
                Some(t) => rest
                    .iter()
                    .take_while(|e| {
                        e.mutation
                            .transaction
                            .as_ref()
                            .is_some_and(|u| u.id == t.id)
                    })
                    .count(),
            };
            let (group, tail) = rest.split_at(len);
            if !batch.is_empty() && batch.len() + group.len() > max {
                break;
            }
            if group
                .iter()
                .any(|e| seen.contains(&(e.mutation.table.as_str(), e.mutation.id.as_str())))
            {
                break;
            }
            for e in group {
                seen.insert((e.mutation.table.as_str(), e.mutation.id.as_str()));
            }
            batch.extend(group.iter().cloned());
            rest = tail;
        }
        for e in &batch {
            tx.execute(
                "UPDATE _fs_outbox SET attempts = attempts + 1 WHERE seq = ?1",
                [e.seq],
            )?;
            // A bug planted on purpose so the simulation harness can show it
            // finds one: the entry leaves before the server acknowledged it.
            #[cfg(feature = "planted-bug")]
            tx.execute("DELETE FROM _fs_outbox WHERE seq = ?1", [e.seq])?;
        }
        tx.commit()?;
        Ok(batch)
    }

    /// Applies the server's results for a batch, in one transaction.
    pub fn apply_push_results(
        &self,
        profile: &SyncProfile,
        batch: &[OutboxEntry],
        results: &[MutationResult],
        now: i64,
    ) -> Result<PushApplied> {
        let mut conn = self.write_lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut out = PushApplied::default();
        let mut upserts: BTreeMap<String, Upsert> = BTreeMap::new();
        for (entry, result) in batch.iter().zip(results) {
            let m = &entry.mutation;
            tx.execute("DELETE FROM _fs_outbox WHERE seq = ?1", [entry.seq])?;
            let Some(table) = profile.table(&m.table) else {
                continue;
            };
            let remaining = has_pending(&tx, &m.table, &m.id)?;
            match result.status {
                MutationStatus::Applied => {
                    out.applied += 1;
                    if remaining {
                        tx.execute(
                            &format!(
                                "UPDATE {} SET {LOCAL_VERSION_COLUMN} = ?2 WHERE {} = ?1",
                                quote_ident(&table.name),
                                quote_ident(&table.primary_key)
                            ),
                            params![m.id, result.version],
                        )?;
                        tx.execute(
                            "UPDATE _fs_outbox SET base_version = ?3 WHERE tbl = ?1 AND row_id = ?2",
                            params![m.table, m.id, result.version],
                        )?;
                        continue;
                    }
                }
                MutationStatus::Conflict | MutationStatus::Rejected => {
                    let (kind, default_message) = if result.status == MutationStatus::Conflict {
                        ("conflict", "the server's version was kept")
                    } else {
                        ("rejected", "the server refused this change")
                    };
                    let message = result
                        .error
                        .as_ref()
                        .map(|e| e.message.as_str())
                        .unwrap_or(default_message);
                    let err = record_error(&tx, now, kind, m, message, result.row.as_ref())?;
                    if result.status == MutationStatus::Conflict {
                        out.conflicts.push(err);
                    } else {
                        out.rejected.push(err);
                    }
                    if remaining {
                        continue;
                    }
                }
            }
            // No other local change waits for this row: take the server's row.
            match &result.row {
                Some(row) => {
                    let mut fields = BTreeMap::new();
                    for c in &table.columns {
                        let v = row.get(&c.name).cloned().unwrap_or(Value::Null);
                        let v = v
                            .coerce(c.kind)
                            .map_err(|e| Error::Protocol(format!("column '{}': {e}", c.name)))?;
                        fields.insert(c.name.clone(), v);
                    }
                    fields.insert(table.primary_key.clone(), Value::Text(m.id.clone()));
                    settle::queue_related_row(&tx, profile, table, &fields, Some(result.version))?;
                    // One upsert per table for the batch: which columns are
                    // indexed does not change while its results apply.
                    if !upserts.contains_key(&table.name) {
                        upserts.insert(table.name.clone(), Upsert::whole_row(&tx, table)?);
                    }
                    upsert_row(&tx, &upserts[&table.name], table, &fields, result.version)?;
                }
                None => {
                    delete_row(&tx, table, &m.id)?;
                }
            }
        }
        tx.commit()?;
        Ok(out)
    }

    /// Every entry of the outbox, in upload order.
    pub fn outbox(&self) -> Result<Vec<OutboxEntry>> {
        outbox_entries(&lock(&self.reader), None)
    }

    /// Sync errors kept on the device, newest first.
    pub fn sync_errors(&self, limit: u32) -> Result<Vec<LocalSyncError>> {
        let conn = lock(&self.reader);
        let mut stmt = conn.prepare_cached(
            "SELECT id, at, kind, tbl, row_id, op, message, device_data, server_data
             FROM _fs_sync_errors ORDER BY id DESC LIMIT ?1",
        )?;
        let mut rows = stmt.query([limit])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let device: Option<String> = r.get(7)?;
            let server: Option<String> = r.get(8)?;
            out.push(LocalSyncError {
                id: r.get(0)?,
                at: r.get(1)?,
                kind: r.get(2)?,
                table: r.get(3)?,
                record_id: r.get(4)?,
                action: r.get(5)?,
                message: r.get(6)?,
                device_data: device.as_deref().map(json_map).transpose()?,
                server_data: server.as_deref().map(json_map).transpose()?,
            });
        }
        Ok(out)
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
    /// changed since. See `settle::settle_table`.
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
            let mut conn = open_connection(&self.path, self.key.as_ref())?;
            // A small page cache: the evaluation reads each row once, and
            // the device's memory stays what the writer and reader take.
            conn.pragma_update(None, "cache_size", EVALUATION_CACHE_KIB)?;
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
        self.in_sync_transaction(|tx| settle::take_pending(tx, rule, other, foreign_column))
    }

    /// Takes related values out of a rule's queue (their rows were
    /// fetched). A table's download from an empty cursor empties its
    /// rules' queues itself (`Store::begin_pull`).
    pub fn clear_related_pending(&self, rule: &str, values: &[String]) -> Result<()> {
        self.in_sync_transaction(|tx| settle::clear_pending(tx, rule, values))
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
        let applied = self.in_sync_transaction(|tx| {
            let mut writer =
                page::PageWriter::new(tx, table, columns, Some((profile, Arrival::Fetched)))?;
            for row in rows {
                writer.row(row)?;
            }
            Ok(writer.applied)
        })?;
        Ok(applied.upserted)
    }

    /// Clears the offline database: synced tables, outbox, cursors, profile
    /// and sync errors. The device id and settings stay. Refuses while
    /// changes wait for upload unless `force`.
    pub fn reset(&self, force: bool) -> Result<u64> {
        let mut conn = self.write_lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let pending: i64 = tx.query_row("SELECT COUNT(*) FROM _fs_outbox", [], |r| r.get(0))?;
        if pending > 0 && !force {
            return Err(Error::PendingUploads {
                count: pending as u64,
            });
        }
        let tables: Vec<String> = {
            let mut stmt = tx.prepare(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE '\\_fs\\_%' ESCAPE '\\' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'",
            )?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        for t in &tables {
            tx.execute_batch(&format!("DROP TABLE IF EXISTS {}", quote_ident(t)))?;
        }
        tx.execute_batch(
            "DELETE FROM _fs_outbox; DELETE FROM _fs_tables; DELETE FROM _fs_sync_errors;
             DELETE FROM _fs_meta WHERE key <> 'device_id';
             DELETE FROM _fs_related_pending; DELETE FROM _fs_settle_rows; DELETE FROM _fs_settle_lost;",
        )?;
        tx.commit()?;
        conn.execute_batch("VACUUM")?;
        Ok(pending.max(0) as u64)
    }
}

/// Applies a local change and queues it for upload inside the open
/// transaction `tx`. A change merges into the row's latest outbox entry only
/// while that entry was never sent and belongs to the same local transaction
/// (`tx_id`; none: single writes), so a transaction's entries stay its own.
#[allow(clippy::too_many_arguments)]
fn write_in(
    tx: &Connection,
    profile: &SyncProfile,
    table: &SyncTable,
    id: &str,
    op: Op,
    mut data: BTreeMap<String, Value>,
    now: i64,
    tx_id: Option<&str>,
) -> Result<Option<Record>> {
    let size = row_size(data.values(), id);
    if size > MAX_ROW_BYTES {
        return Err(Error::InvalidInput(format!(
            "the row is {size} bytes; at most {MAX_ROW_BYTES} are allowed"
        )));
    }
    data.remove(&table.primary_key);
    let current = read_row(tx, table, id)?;
    let not_found = || Error::RecordNotFound {
        table: table.name.clone(),
        id: id.to_owned(),
    };
    let base_version = current.as_ref().map(|(_, v)| *v).unwrap_or(0);
    let result = match op {
        Op::Insert => {
            if current.is_some() {
                return Err(Error::AlreadyExists {
                    table: table.name.clone(),
                    id: id.to_owned(),
                });
            }
            let mut fields = data.clone();
            fields.insert(table.primary_key.clone(), Value::Text(id.to_owned()));
            for c in &table.columns {
                fields.entry(c.name.clone()).or_insert(Value::Null);
            }
            // New related values (a booking written for another work
            // order) have their related rows fetched at the next settling.
            settle::queue_related_row(tx, profile, table, &fields, None)?;
            upsert_row(tx, &Upsert::whole_row(tx, table)?, table, &fields, 0)?;
            Some(Record {
                table: table.name.clone(),
                id: id.to_owned(),
                version: 0,
                fields,
            })
        }
        Op::Update => {
            let (mut fields, version) = current.ok_or_else(not_found)?;
            for (k, v) in &data {
                fields.insert(k.clone(), v.clone());
            }
            // The whole row counts, so it cannot grow past the limit a
            // field at a time (nothing is written: the transaction ends
            // unused).
            let size = row_size(
                fields
                    .iter()
                    .filter(|(k, _)| **k != table.primary_key)
                    .map(|(_, v)| v),
                id,
            );
            if size > MAX_ROW_BYTES {
                return Err(Error::InvalidInput(format!(
                    "the row would be {size} bytes with this change; at most {MAX_ROW_BYTES} are allowed"
                )));
            }
            settle::queue_related_row(tx, profile, table, &fields, None)?;
            upsert_row(tx, &Upsert::whole_row(tx, table)?, table, &fields, version)?;
            Some(Record {
                table: table.name.clone(),
                id: id.to_owned(),
                version,
                fields,
            })
        }
        Op::Delete => {
            current.ok_or_else(not_found)?;
            delete_row(tx, table, id)?;
            data.clear();
            None
        }
    };

    // Merge into the row's latest entry when that entry was never sent:
    // a sent entry may already be applied on the server under its key.
    let latest: Option<(i64, String, String)> = tx
        .query_row(
            "SELECT seq, op, data FROM _fs_outbox WHERE tbl = ?1 AND row_id = ?2 AND attempts = 0
             AND tx_id IS ?3
             AND seq = (SELECT MAX(seq) FROM _fs_outbox WHERE tbl = ?1 AND row_id = ?2)",
            params![table.name, id, tx_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    match latest {
        Some((seq, prev_op, prev_data)) => {
            let prev_op = Op::parse(&prev_op)
                .ok_or_else(|| Error::Storage(format!("corrupt outbox op '{prev_op}'")))?;
            let mut merged = json_map(&prev_data)?;
            let merged_op = match (prev_op, op) {
                (Op::Insert, Op::Update) => {
                    merged.extend(data);
                    Some(Op::Insert)
                }
                (Op::Insert, Op::Delete) => None,
                (Op::Update, Op::Update) => {
                    merged.extend(data);
                    Some(Op::Update)
                }
                (Op::Update, Op::Delete) => {
                    merged.clear();
                    Some(Op::Delete)
                }
                (Op::Delete, Op::Insert) => {
                    // Deleted then created again: replace every column.
                    merged = table
                        .columns
                        .iter()
                        .filter(|c| c.name != table.primary_key)
                        .map(|c| {
                            (
                                c.name.clone(),
                                data.get(&c.name).cloned().unwrap_or(Value::Null),
                            )
                        })
                        .collect();
                    Some(Op::Update)
                }
                (prev, op) => {
                    return Err(Error::Internal(format!(
                        "outbox cannot follow {} with {}",
                        prev.as_str(),
                        op.as_str()
                    )));
                }
            };
            match merged_op {
                Some(merged_op) => {
                    tx.execute(
                        "UPDATE _fs_outbox SET op = ?2, data = ?3 WHERE seq = ?1",
                        params![seq, merged_op.as_str(), serde_json::to_string(&merged)?],
                    )?;
                }
                None => {
                    tx.execute("DELETE FROM _fs_outbox WHERE seq = ?1", [seq])?;
                }
            }
        }
        None => {
            tx.execute(
                "INSERT INTO _fs_outbox (idempotency_key, tbl, row_id, op, base_version, data, created_at, tx_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    uuid::Uuid::new_v4().to_string(),
                    table.name,
                    id,
                    op.as_str(),
                    base_version,
                    serde_json::to_string(&data)?,
                    now,
                    tx_id
                ],
            )?;
        }
    }
    Ok(result)
}

fn remove_unqualified(conn: &Connection, table: &SyncTable, ctx: &FilterContext) -> Result<u64> {
    let columns = rule_columns(table);
    let mut stmt = conn.prepare(&rule_columns_sql(table, &columns))?;
    let mut rows = stmt.query([])?;
    let mut doomed = Vec::new();
    while let Some(row) = rows.next()? {
        let fields = rule_row(row, &columns)?;
        if table.row_qualifies(&fields, ctx) {
            continue;
        }
        if let Some(Value::Text(id)) = fields.get(&table.primary_key) {
            doomed.push(id.clone());
        }
    }
    let mut removed = 0;
    for id in doomed {
        if !has_pending(conn, &table.name, &id)? && delete_row(conn, table, &id)? {
            removed += 1;
        }
    }
    Ok(removed)
}

/// Kinds whose values are stored as text and whose comparison key is the
/// text itself, so SQL can compare them as the Rust code would.
fn text_like(kind: ColumnKind) -> bool {
    matches!(
        kind,
        ColumnKind::Text | ColumnKind::Date | ColumnKind::DateTime
    )
}

/// The condition "some related-rows rule reaches this row" in SQL, when
/// every rule of `table` is a related-rows rule over an already settled
/// table and both columns compare as text; `None` otherwise.
fn related_only_sql(
    profile: &SyncProfile,
    table: &SyncTable,
    settled: &BTreeSet<&str>,
) -> Option<String> {
    if table.rules.is_empty() {
        return None;
    }
    let mut parts = Vec::new();
    for rule in &table.rules {
        let RowRule::Related {
            table: other,
            column,
            foreign_column,
        } = rule
        else {
            return None;
        };
        let other_table = profile.table(other)?;
        if !settled.contains(other.as_str())
            || !table.column(column).is_some_and(|c| text_like(c.kind))
            || !other_table
                .column(foreign_column)
                .is_some_and(|c| text_like(c.kind))
        {
            return None;
        }
        // No WHERE in the sub-query, so SQLite reads the related column's
        // index for it instead of building a temporary key set; a NULL
        // among the related values makes a miss NULL, hence the COALESCE.
        let (c, f) = (quote_ident(column), quote_ident(foreign_column));
        parts.push(format!(
            "({c} IS NOT NULL AND COALESCE({c} IN (SELECT {f} FROM {o}), 0))",
            o = quote_ident(other)
        ));
    }
    Some(parts.join(" OR "))
}

/// Distinct keys of a column over the rows `conn` sees.
fn distinct_keys(conn: &Connection, table: &SyncTable, column: &str) -> Result<BTreeSet<String>> {
    let Some(kind) = table.column(column).map(|c| c.kind) else {
        return Ok(BTreeSet::new());
    };
    let sql = format!(
        "SELECT DISTINCT {c} FROM {t} WHERE {c} IS NOT NULL",
        c = quote_ident(column),
        t = quote_ident(&table.name)
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query([])?;
    let mut out = BTreeSet::new();
    while let Some(r) = rows.next()? {
        if let Some(k) = value_key(&Value::from_sql(r.get_ref(0)?, kind)) {
            out.insert(k);
        }
    }
    Ok(out)
}

/// Removes, row by row, the rows of `table` that no rule reaches (tables
/// with rules of their own, or values that do not compare as text).
/// Related rules look at the rows the related table holds once settled;
/// a rule over the table itself sees the rows kept so far in this pass,
/// and a rule over a table not yet settled reaches nothing.
fn remove_unreached_rows(
    tx: &Connection,
    profile: &SyncProfile,
    table: &SyncTable,
    settled: &BTreeSet<&str>,
    ctx: &FilterContext,
) -> Result<u64> {
    let mut removed = 0;
    for id in unreached_rows(tx, profile, table, settled, ctx)? {
        if delete_row(tx, table, &id)? {
            removed += 1;
        }
    }
    Ok(removed)
}

/// The keys of the rows of `table` that [`remove_unreached_rows`] removes
/// (rows with a pending change stay), read on `conn` and written nowhere.
fn unreached_rows(
    conn: &Connection,
    profile: &SyncProfile,
    table: &SyncTable,
    settled: &BTreeSet<&str>,
    ctx: &FilterContext,
) -> Result<Vec<String>> {
    let pending: BTreeSet<String> = {
        let mut stmt = conn.prepare_cached("SELECT row_id FROM _fs_outbox WHERE tbl = ?1")?;
        let rows = stmt.query_map([&table.name], |r| r.get::<_, String>(0))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    // Reached values of settled related tables, loaded once per rule.
    let mut reached: HashMap<(String, String), BTreeSet<String>> = HashMap::new();
    // Values of this table's own rows kept so far (rules over itself).
    let mut own: HashMap<String, BTreeSet<String>> = HashMap::new();
    for rule in &table.rules {
        if let RowRule::Related {
            table: other,
            foreign_column,
            ..
        } = rule
        {
            if *other == table.name {
                own.entry(foreign_column.clone()).or_default();
            } else if settled.contains(other.as_str())
                && let Some(other_table) = profile.table(other)
                && let std::collections::hash_map::Entry::Vacant(e) =
                    reached.entry((other.clone(), foreign_column.clone()))
            {
                e.insert(distinct_keys(conn, other_table, foreign_column)?);
            }
        }
    }
    let columns = rule_columns(table);
    let own_rules = settle::OwnRules::new(table, ctx);
    let mut doomed = Vec::new();
    {
        let mut stmt = conn.prepare(&rule_columns_sql(table, &columns))?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let fields = rule_row(row, &columns)?;
            let Some(Value::Text(id)) = fields.get(&table.primary_key) else {
                continue;
            };
            let stays = pending.contains(id)
                || table.rules.iter().enumerate().any(|(i, rule)| match rule {
                    RowRule::Related {
                        table: other,
                        column,
                        foreign_column,
                    } => fields.get(column).and_then(value_key).is_some_and(|k| {
                        if *other == table.name {
                            own.get(foreign_column).is_some_and(|set| set.contains(&k))
                        } else {
                            reached
                                .get(&(other.clone(), foreign_column.clone()))
                                .is_some_and(|set| set.contains(&k))
                        }
                    }),
                    _ => own_rules.matches(i, &fields),
                });
            if stays {
                for (c, set) in own.iter_mut() {
                    if let Some(k) = fields.get(c).and_then(value_key) {
                        set.insert(k);
                    }
                }
            } else {
                doomed.push(id.clone());
            }
        }
    }
    Ok(doomed)
}

/// The comparison key of a related value (text as is, numbers as written).
/// The key under which the values a related-rows rule was settled for are
/// queued in `_fs_related_pending` (the sync's settling and
/// `settle::RelatedQueue` must agree on it).
pub(crate) fn related_rule_key(
    table: &str,
    column: &str,
    other: &str,
    foreign_column: &str,
) -> String {
    format!("{table}.{column}<-{other}.{foreign_column}")
}

fn value_key(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::Text(s) => Some(s.clone()),
        Value::Integer(i) => Some(i.to_string()),
        Value::Real(f) => Some(f.to_string()),
        Value::Boolean(b) => Some(i64::from(*b).to_string()),
    }
}

fn outbox_entries(conn: &Connection, table: Option<&str>) -> Result<Vec<OutboxEntry>> {
    outbox_entries_limited(conn, table, -1)
}

fn outbox_entries_limited(
    conn: &Connection,
    table: Option<&str>,
    limit: i64,
) -> Result<Vec<OutboxEntry>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, idempotency_key, tbl, row_id, op, base_version, data, attempts, tx_id,
                CASE WHEN tx_id IS NULL THEN 0
                     ELSE (SELECT count(*) FROM _fs_outbox o WHERE o.tx_id = _fs_outbox.tx_id) END
         FROM _fs_outbox WHERE ?1 IS NULL OR tbl = ?1 ORDER BY seq LIMIT ?2",
    )?;
    let mut rows = stmt.query(params![table, limit])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let op: String = r.get(4)?;
        let data: String = r.get(6)?;
        out.push(OutboxEntry {
            seq: r.get(0)?,
            mutation: Mutation {
                idempotency_key: r.get(1)?,
                table: r.get(2)?,
                id: r.get(3)?,
                op: Op::parse(&op)
                    .ok_or_else(|| Error::Storage(format!("corrupt outbox op '{op}'")))?,
                base_version: r.get(5)?,
                data: json_map(&data)?,
                transaction: match r.get::<_, Option<String>>(8)? {
                    Some(id) => Some(TransactionMark {
                        id,
                        size: r.get(9)?,
                    }),
                    None => None,
                },
            },
            attempts: r.get(7)?,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> SyncProfile {
        serde_json::from_value(serde_json::json!({
            "name": "p", "version": 1, "user_id": "u1",
            "tables": [
                {"name": "jobs", "primary_key": "id", "sync_interval_secs": 60,
                 "columns": [{"name": "id", "type": "text"}, {"name": "note", "type": "text"}],
                 "rules": [{"kind": "all"}]}
            ]
        }))
        .expect("profile")
    }

    fn note(text: &str) -> BTreeMap<String, Value> {
        BTreeMap::from([("note".to_owned(), Value::Text(text.into()))])
    }

    fn local(op: Op, id: &str, text: &str) -> LocalWrite {
        LocalWrite {
            table: profile().tables[0].clone(),
            id: id.into(),
            op: Some(op),
            data: note(text),
        }
    }

    /// The outbox as (row, transaction id or none, op, note) in order.
    fn outbox(store: &Store) -> Vec<(String, Option<String>, Op, Option<Value>)> {
        store
            .outbox()
            .expect("outbox")
            .into_iter()
            .map(|e| {
                let m = e.mutation;
                (
                    m.id,
                    m.transaction.map(|t| t.id),
                    m.op,
                    m.data.get("note").cloned(),
                )
            })
            .collect()
    }

    #[test]
    fn a_transactions_entries_stay_its_own_and_travel_whole() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(&dir.path().join("s.db")).expect("open");
        let p = profile();
        store.apply_profile(&p, 0).expect("profile");
        let jobs = &p.tables[0];
        store
            .write(&p, jobs, "a", Op::Insert, note("single"), 0)
            .expect("single insert");

        // Writes of one transaction to one row merge with each other, never
        // into the single write's unsent entry.
        let writes = [
            local(Op::Update, "a", "tx 1"),
            local(Op::Insert, "b", "tx 1"),
            local(Op::Update, "b", "tx 2"),
        ];
        let mut seen = Vec::new();
        store
            .write_transaction(&p, &writes, 0, &mut |i| seen.push(i))
            .expect("transaction");
        assert_eq!(seen, [0, 1, 2]);
        // A single write after it does not merge into it either.
        store
            .write(&p, jobs, "b", Op::Update, note("single after"), 0)
            .expect("single update");
        let entries = outbox(&store);
        let tx = entries[1].1.clone().expect("in a transaction");
        assert_eq!(
            entries,
            vec![
                (
                    "a".into(),
                    None,
                    Op::Insert,
                    Some(Value::Text("single".into()))
                ),
                (
                    "a".into(),
                    Some(tx.clone()),
                    Op::Update,
                    Some(Value::Text("tx 1".into()))
                ),
                (
                    "b".into(),
                    Some(tx.clone()),
                    Op::Insert,
                    Some(Value::Text("tx 2".into()))
                ),
                (
                    "b".into(),
                    None,
                    Op::Update,
                    Some(Value::Text("single after".into()))
                ),
            ]
        );
        let sizes: Vec<_> = store
            .outbox()
            .expect("outbox")
            .iter()
            .map(|e| e.mutation.transaction.as_ref().map(|t| t.size))
            .collect();
        assert_eq!(sizes, [None, Some(2), Some(2), None]);

        // The first batch stops before the transaction (it changes "a"
        // again); the next takes it whole, even past `max`, and stops
        // before the second change of "b".
        let first = store.take_batch(500).expect("batch");
        assert_eq!(first.len(), 1);
        let applied = MutationResult {
            idempotency_key: first[0].mutation.idempotency_key.clone(),
            status: MutationStatus::Applied,
            version: 1,
            row: Some(note("single")),
            error: None,
        };
        store
            .apply_push_results(&p, &first, &[applied], 0)
            .expect("results");
        let second = store.take_batch(1).expect("batch");
        assert_eq!(
            second
                .iter()
                .map(|e| e.mutation.id.as_str())
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert!(
            second
                .iter()
                .all(|e| e.mutation.transaction.as_ref().map(|t| &t.id) == Some(&tx))
        );

        // A failing write rolls the whole transaction back.
        let before = outbox(&store);
        let err = store
            .write_transaction(
                &p,
                &[
                    local(Op::Insert, "c", "x"),
                    local(Op::Update, "missing", "x"),
                ],
                0,
                &mut |_| {},
            )
            .expect_err("the second write fails");
        assert!(matches!(err, Error::RecordNotFound { .. }));
        assert_eq!(outbox(&store), before);
        assert!(store.get(jobs, "c").is_err());
    }

    #[test]
    fn a_dropped_table_takes_its_transactions_whole_into_the_sync_errors() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(&dir.path().join("s.db")).expect("open");
        let mut p: SyncProfile = serde_json::from_value(serde_json::json!({
            "name": "p", "version": 1, "user_id": "u1",
            "tables": [
                {"name": "jobs", "primary_key": "id", "sync_interval_secs": 60,
                 "columns": [{"name": "id", "type": "text"}, {"name": "note", "type": "text"}],
                 "rules": [{"kind": "all"}]},
                {"name": "parts", "primary_key": "id", "sync_interval_secs": 60,
                 "columns": [{"name": "id", "type": "text"}, {"name": "note", "type": "text"}],
                 "rules": [{"kind": "all"}]}
            ]
        }))
        .expect("profile");
        store.apply_profile(&p, 0).expect("profile");
        let write = |t: usize, id: &str| LocalWrite {
            table: p.tables[t].clone(),
            id: id.into(),
            op: Some(Op::Insert),
            data: note("n"),
        };
        store
            .write_transaction(&p, &[write(0, "j1"), write(1, "p1")], 0, &mut |_| {})
            .expect("transaction");
        store
            .write(&p, &p.tables[0].clone(), "j2", Op::Insert, note("n"), 0)
            .expect("single");
        p.tables.truncate(1);
        p.version = 2;
        let change = store.apply_profile(&p, 0).expect("drop parts");
        assert_eq!(change.orphaned_changes, 2);
        let left: Vec<String> = store
            .outbox()
            .expect("outbox")
            .into_iter()
            .map(|e| e.mutation.id)
            .collect();
        assert_eq!(left, ["j2"]);
    }
}
