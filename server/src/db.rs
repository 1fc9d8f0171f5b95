//! The server's storage: the data model's tables, users, offline profiles,
//! settings, the change log, push receipts, the Sync Errors log and devices,
//! on one of two back ends chosen by the database URL at start-up: embedded
//! SQLite (the default) or PostgreSQL. The logic is written once against
//! [`crate::sql::Conn`]; only transactions, pooling and the change cursor's
//! commit ordering differ per back end.
//!
//! Every data table carries `_version` (bumped on each change), `_seq` (the
//! change-log sequence of its last change, which orders pulls) and
//! `_deleted` (deleted rows stay as tombstones so devices learn of the
//! deletion). Reads run in a snapshot (a SQLite read transaction on a pooled
//! connection; a PostgreSQL `REPEATABLE READ READ ONLY` transaction), so a
//! pull page and the high-water mark it reports always come from the same
//! snapshot.
//!
//! # The change cursor under concurrent writers
//!
//! A pull cursor says "every change with `_seq` at or below `since` was
//! seen". That is only true if no change with a smaller sequence can become
//! visible *after* a reader saw a larger one: sequence order must be commit
//! order. A naive sequence (taken when the row is written) breaks it as soon
//! as two transactions overlap: A takes 41, B takes 42, B commits, a device
//! pulls and moves its cursor to 42, A commits 41 — and the device never
//! sees A's change.
//!
//! - SQLite: one writer at a time (the writer connection, `BEGIN
//!   IMMEDIATE`, and SQLite's file lock across processes), and the sequence
//!   is taken inside the write transaction, so sequence order is commit
//!   order by construction.
//! - PostgreSQL: writers run concurrently (`SERIALIZABLE`, run again on a
//!   serialization failure or deadlock). A change is written with a
//!   *pending* `_seq` (minus its change-log id) and a change-log row whose
//!   `seq` is NULL. Just before `COMMIT` the transaction takes a
//!   transaction-scoped advisory lock, draws its sequence numbers from a
//!   sequence and stamps them on its change-log rows and data rows; the lock
//!   is released only after the commit is visible. Stamping therefore
//!   happens in commit order: a transaction that stamps later commits later,
//!   and a reader that sees sequence `n` sees every committed change below
//!   `n`. Only the stamping (two statements per touched table) is
//!   serialised, not the transactions' work. Uncommitted pending rows are
//!   invisible to readers, and a pull's high-water mark (`MAX(seq)`) skips
//!   them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::http::StatusCode;
use fieldsync_protocol::filter::FilterContext;
use fieldsync_protocol::profile::{
    DataModel, OfflineProfile, RowRule, SyncProfile, SyncTable, TableSchema, quote_ident,
};
use fieldsync_protocol::protocol::{
    ErrorBody, FetchResponse, MAX_FETCH_VALUES, MAX_PAGE_BYTES, MAX_PAGE_SIZE, MAX_ROW_BYTES,
    Mutation, MutationResult, MutationStatus, Op, PullPage, VERSION_COLUMN, codes,
};
use fieldsync_protocol::time::format_datetime;
use fieldsync_protocol::{Clock, SystemClock, Value};
use rusqlite::config::DbConfig;
use rusqlite::{Connection, TransactionBehavior};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{ApiError, ApiResult};
use crate::page::PageRows;
use crate::rules;
use crate::schema;
use crate::selection::Walked;
use crate::sql::{Conn, Dialect, PgClient, PgConn, Row, SqliteConn, opt_text, pg_retryable, text};

/// Current version of the server's own schema.
pub const SCHEMA_VERSION: i64 = 8;

/// Whether a device id is one the server records (1 to 128 bytes): the
/// `x-fieldsync-device-id` header is read only within this bound, and the
/// device list and its last errors keep only such ids.
pub(crate) fn device_id_ok(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128
}

/// Roles of users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A field technician: syncs the rows of an offline profile.
    Technician,
    /// A back-office user: reads and edits any row through the records API.
    Dispatcher,
    /// Everything a dispatcher can, plus the admin API.
    Admin,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Technician => "technician",
            Role::Dispatcher => "dispatcher",
            Role::Admin => "admin",
        }
    }
    fn parse(s: &str) -> Role {
        match s {
            "dispatcher" => Role::Dispatcher,
            "admin" => Role::Admin,
            _ => Role::Technician,
        }
    }
}

/// A user of the sync service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: String,
    pub name: String,
    pub role: Role,
    /// Name of the offline profile issued to this user.
    pub profile: String,
    /// The user's team ("rows of my team" filters), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team_id: Option<String>,
    /// The user's time zone (an IANA name), overriding the profile's for
    /// relative-date filters, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
}

/// Reads a user from a row of `SELECT id, name, role, profile, team_id, time_zone`.
/// A server setting, inside the caller's transaction.
fn setting_in(c: &mut dyn Conn, key: &str) -> ApiResult<Option<String>> {
    c.query_opt("SELECT value FROM _fs_settings WHERE key = ?", &[text(key)])?
        .map(|r| r.text(0))
        .transpose()
}

/// The user with this id, inside the caller's transaction.
fn user_by_id_in(c: &mut dyn Conn, id: &str) -> ApiResult<Option<User>> {
    c.query_opt(
        "SELECT id, name, role, profile, team_id, time_zone FROM _fs_users WHERE id = ?",
        &[text(id)],
    )?
    .as_ref()
    .map(user_from_row)
    .transpose()
}

fn user_from_row(r: &Row) -> ApiResult<User> {
    Ok(User {
        id: r.text(0)?,
        name: r.text(1)?,
        role: Role::parse(&r.text(2)?),
        profile: r.text(3)?,
        team_id: r.opt_text(4)?,
        time_zone: r.opt_text(5)?,
    })
}

/// An entry of the Sync Errors log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncErrorEntry {
    pub id: i64,
    pub at: String,
    /// `conflict` or `rejected`.
    pub kind: String,
    pub code: String,
    pub message: String,
    pub table: String,
    pub record_id: String,
    pub user_id: String,
    pub device_id: Option<String>,
    /// `insert`, `update` or `delete`.
    pub action: String,
    pub idempotency_key: String,
    pub base_version: i64,
    pub server_version: i64,
    pub device_data: Option<BTreeMap<String, Value>>,
    pub server_data: Option<BTreeMap<String, Value>>,
    /// Set when the device's data was larger than [`SYNC_ERROR_DATA_BYTES`]:
    /// `device_data` was not kept, only its size and digest.
    pub device_data_cut: Option<DataCut>,
    /// Likewise for the server's data.
    pub server_data_cut: Option<DataCut>,
}

/// What the Sync Errors log keeps of data too large to store: its size as
/// JSON and its SHA-256, enough to tell two versions apart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataCut {
    pub bytes: u64,
    pub sha256: String,
}

/// Largest device or server data, as JSON, one Sync Errors entry keeps.
pub const SYNC_ERROR_DATA_BYTES: usize = 16 * 1024;

/// The data of a Sync Errors entry as stored: the JSON, or, past
/// [`SYNC_ERROR_DATA_BYTES`], what is kept of it.
fn kept_data(json: Option<String>) -> ApiResult<(Option<String>, Option<String>)> {
    match json {
        Some(j) if j.len() > SYNC_ERROR_DATA_BYTES => {
            let cut = DataCut {
                bytes: j.len() as u64,
                sha256: hex::encode(Sha256::digest(j.as_bytes())),
            };
            let cut = serde_json::to_string(&cut).map_err(|e| ApiError::internal(e.to_string()))?;
            Ok((None, Some(cut)))
        }
        other => Ok((other, None)),
    }
}

/// A device seen by the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceEntry {
    pub id: String,
    pub user_id: String,
    pub first_seen: String,
    pub last_seen: String,
    pub last_sync_at: Option<String>,
    pub app_version: Option<String>,
    pub last_error: Option<String>,
}

/// Filter of the Sync Errors log.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SyncErrorFilter {
    pub user: Option<String>,
    pub table: Option<String>,
    pub kind: Option<String>,
    /// Only entries older than this id (the last id of the previous page).
    pub before: Option<i64>,
    pub limit: Option<u32>,
}

/// Where a pull stands within one download (see [`Cursor`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The last page was answered; the next request starts a new download.
    Rest,
    /// Sending rows that entered a relative-date window between
    /// `evaluated_at` and `to` without changing, after change-log sequence
    /// `after`.
    Window { to: i64, after: i64 },
    /// Sending changes after `since`, page by page.
    Changes,
    /// Sending unchanged rows (`_seq <= since`) that qualify now and whose
    /// filter reads a related row changed after `since` (a work order
    /// whose priority rose lets its bookings in), after `_seq` `after`.
    Related { after: i64 },
}

/// The decoded form of a pull cursor: changes after `since`; rows that do not
/// qualify and were last changed at or before `snapshot` were never sent to
/// this device, so their removal need not be sent either. `evaluated_at` is
/// the server clock (ms) at which the device's copy of the table was
/// selected: rows that qualify now but did not then, although unchanged
/// (a booking whose date entered the window), are sent in the next
/// download's window phase.
///
/// Forms: `v2.<since>.<snapshot>.<evaluated_at>` (at rest),
/// `v2.<since>.<snapshot>.<evaluated_at>.c` (changes phase),
/// `v2.<since>.<snapshot>.<evaluated_at>.w.<to>.<after>` (window phase).
/// `v1.<since>.<snapshot>` cursors of older servers are still accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub since: i64,
    pub snapshot: i64,
    pub evaluated_at: Option<i64>,
    pub phase: Phase,
}

impl Cursor {
    /// Parses an opaque cursor; the empty string is the start.
    pub fn parse(s: &str) -> Option<Option<Cursor>> {
        if s.is_empty() {
            return Some(None);
        }
        // Only the spelling this server writes: digits, no sign, no leading
        // zero ("v1.+5.3", "v1.05.3" and "v1.-0.3" are refused).
        let num = |t: &str| -> Option<i64> {
            let canonical = !t.is_empty()
                && t.bytes().all(|b| b.is_ascii_digit())
                && (t == "0" || !t.starts_with('0'));
            if canonical { t.parse().ok() } else { None }
        };
        if let Some(rest) = s.strip_prefix("v1.") {
            let (a, b) = rest.split_once('.')?;
            return Some(Some(Cursor {
                since: num(a)?,
                snapshot: num(b)?,
                evaluated_at: None,
                phase: Phase::Changes,
            }));
        }
        let parts: Vec<&str> = s.strip_prefix("v2.")?.split('.').collect();
        let (since, snapshot, evaluated_at) = match parts.as_slice() {
            [a, b, e, ..] => (num(a)?, num(b)?, num(e)?),
            _ => return None,
        };
        let phase = match &parts[3..] {
            [] => Phase::Rest,
            ["c"] => Phase::Changes,
            ["w", to, after] => Phase::Window {
                to: num(to)?,
                after: num(after)?,
            },
            ["r", after] => Phase::Related { after: num(after)? },
            _ => return None,
        };
        Some(Some(Cursor {
            since,
            snapshot,
            evaluated_at: Some(evaluated_at),
            phase,
        }))
    }

    /// Whether rows can have entered `table`'s relative-date windows since
    /// this cursor's copy was selected: the table's own rules read the clock
    /// and the local day (at the profile's UTC offset) moved since
    /// `evaluated_at`. Relative dates move by whole days, so within one day
    /// nothing enters. A cursor without `evaluated_at` (v1) never opens a
    /// window; its next download records one.
    pub fn window_due(&self, profile: &SyncProfile, table: &SyncTable, now: i64) -> bool {
        match self.evaluated_at {
            Some(e) => {
                e < now
                    && table.uses_clock()
                    && profile.filter_context(e).today() != profile.filter_context(now).today()
            }
            None => false,
        }
    }

    /// The opaque form.
    pub fn encode(self) -> String {
        let base = format!(
            "v2.{}.{}.{}",
            self.since,
            self.snapshot,
            self.evaluated_at.unwrap_or(0)
        );
        match self.phase {
            Phase::Rest => base,
            Phase::Changes => format!("{base}.c"),
            Phase::Window { to, after } => format!("{base}.w.{to}.{after}"),
            Phase::Related { after } => format!("{base}.r.{after}"),
        }
    }
}

/// The most values one table's compiled rules may bind (see
/// `Db::check_rule_parameters`): twice this, plus a pull's own few, stays
/// under SQLite's 32,766.
pub const MAX_RULE_PARAMETERS: usize = 16_000;

/// The result of a mutation refused for its idempotency key (no receipt is
/// written for it).
fn refused_key(m: &Mutation, code: &str, message: &str) -> MutationResult {
    MutationResult {
        idempotency_key: m.idempotency_key.clone(),
        status: MutationStatus::Rejected,
        version: 0,
        row: None,
        error: Some(ErrorBody {
            code: code.into(),
            message: message.into(),
        }),
    }
}

/// What a push receipt keeps of its mutation to tell a replay from another
/// change sent with the same key: the SHA-256 of the mutation without its
/// key, serialised as the protocol's JSON (its `data` keys sorted), so the
/// same change digests the same however its request was written.
fn mutation_digest(m: &Mutation) -> ApiResult<String> {
    #[derive(Serialize)]
    struct Change<'a> {
        table: &'a str,
        id: &'a str,
        op: Op,
        base_version: i64,
        data: &'a BTreeMap<String, Value>,
    }
    let json = serde_json::to_vec(&Change {
        table: &m.table,
        id: &m.id,
        op: m.op,
        base_version: m.base_version,
        data: &m.data,
    })
    .map_err(|e| ApiError::internal(format!("mutation digest: {e}")))?;
    Ok(hex::encode(Sha256::digest(&json)))
}

/// Hashes a bearer token for storage and lookup.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A row as stored on the server.
#[derive(Debug, Clone)]
struct StoredRow {
    fields: BTreeMap<String, Value>,
    version: i64,
    deleted: bool,
}

/// Where the server's data lives, from the database URL given at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// An embedded SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL database (`postgres://` or `postgresql://` URL, in
    /// libpq's URL form).
    Postgres(String),
}

impl DatabaseUrl {
    /// Reads a database URL: `postgres://…`, `postgresql://…`, or
    /// `sqlite:<path of the database file>`.
    pub fn parse(url: &str) -> ApiResult<DatabaseUrl> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            url.parse::<postgres::Config>().map_err(|e| {
                ApiError::internal(format!("the PostgreSQL URL does not parse: {e}"))
            })?;
            return Ok(DatabaseUrl::Postgres(url.to_owned()));
        }
        if let Some(path) = url.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(ApiError::internal("a sqlite: URL names a database file"));
            }
            return Ok(DatabaseUrl::Sqlite(PathBuf::from(path)));
        }
        Err(ApiError::internal(
            "a database URL starts with postgres://, postgresql:// or sqlite:",
        ))
    }
}

/// PostgreSQL connections of one server instance, opened on demand, at most
/// [`PG_CONNECTIONS`] at a time (a request waits up to
/// [`PG_CONNECT_WAIT`] for one, then gets 503).
struct PgPool {
    config: postgres::Config,
    tls: crate::pgtls::RustlsConnect,
    idle: Mutex<Vec<PgClient>>,
    /// Connections handed out or idle.
    open: Mutex<usize>,
    freed: std::sync::Condvar,
}

/// Most connections one server instance holds.
const PG_CONNECTIONS: usize = 16;
/// Longest a request waits for a free connection.
const PG_CONNECT_WAIT: Duration = Duration::from_secs(30);
/// Times a PostgreSQL write transaction is run again after a serialization
/// failure or deadlock before the request fails with 503.
const PG_WRITE_ATTEMPTS: u32 = 12;
/// Advisory lock held while migrating (instances starting together).
pub(crate) const PG_MIGRATION_LOCK: i64 = 0x6669_656c_6473_0001;
/// How long a starting instance waits for another's migration.
const PG_MIGRATION_WAIT: Duration = Duration::from_secs(600);
/// Advisory lock held from stamping change sequences until commit.
const PG_SEQUENCE_LOCK: i64 = 0x6669_656c_6473_0002;

impl PgPool {
    fn new(config: postgres::Config, tls: crate::pgtls::RustlsConnect) -> Self {
        Self {
            config,
            tls,
            idle: Mutex::new(Vec::new()),
            open: Mutex::new(0),
            freed: std::sync::Condvar::new(),
        }
    }
    fn get(&self) -> ApiResult<PgClient> {
        while let Some(c) = lock(&self.idle).pop() {
            if !c.is_closed() {
                return Ok(c);
            }
            self.release_slot();
        }
        {
            let deadline = std::time::Instant::now() + PG_CONNECT_WAIT;
            let mut open = lock(&self.open);
            while *open >= PG_CONNECTIONS {
                if let Some(c) = lock(&self.idle).pop() {
                    if !c.is_closed() {
                        return Ok(c);
                    }
                    *open -= 1;
                    continue;
                }
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return Err(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        codes::UNAVAILABLE,
                        "every PostgreSQL connection of this instance is busy",
                    ));
                }
                open = self
                    .freed
                    .wait_timeout(open, left)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
            *open += 1;
        }
        self.config
            .connect(self.tls.clone())
            .map(PgClient::new)
            .map_err(|e| {
                self.release_slot();
                // The causes too: "error performing TLS handshake" alone does not
                // say the certificate is not trusted.
                let mut message = format!("cannot connect to PostgreSQL: {e}");
                for cause in std::iter::successors(std::error::Error::source(&e), |s| s.source()) {
                    message.push_str(&format!(": {cause}"));
                }
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, codes::UNAVAILABLE, message)
            })
    }
    fn put(&self, client: PgClient) {
        if client.is_closed() {
            self.release_slot();
            return;
        }
        lock(&self.idle).push(client);
        self.freed.notify_one();
    }
    fn release_slot(&self) {
        let mut open = lock(&self.open);
        *open = open.saturating_sub(1);
        self.freed.notify_one();
    }
}

impl Drop for PgPool {
    fn drop(&mut self) {
        // Closing a client blocks on its connection; never do that on an
        // async worker thread.
        let clients = std::mem::take(&mut *lock(&self.idle));
        if !clients.is_empty() {
            let _ = std::thread::spawn(move || drop(clients)).join();
        }
    }
}

enum Backend {
    Sqlite {
        path: PathBuf,
        writer: Mutex<Connection>,
        readers: Mutex<Vec<Connection>>,
    },
    Postgres(PgPool),
}

/// Connections of one instance to its database ([`Db::pool_stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Connections held, in use or idle.
    pub open: usize,
    /// Connections idle in the pool.
    pub idle: usize,
    /// Most connections opened at once; 0 when there is no limit (SQLite
    /// readers are opened as needed).
    pub max: usize,
}

/// The selection cache's use ([`Db::selection_cache_stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SelectionCacheStats {
    pub bytes: usize,
    pub sets: usize,
    pub hits: u64,
    pub misses: u64,
}

/// Server storage.
pub struct Db {
    clock: Arc<dyn Clock>,
    /// The data model in force, as this instance last read it (see
    /// [`Db::model`]).
    model: std::sync::RwLock<crate::model::Shared>,
    backend: Backend,
    /// Related rules' selected values, kept between the pages of first
    /// downloads (see [`crate::selection`]).
    selections: crate::selection::SelectionCache,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(fieldsync_protocol::wal::PATIENCE)?;
    fieldsync_protocol::wal::enable(&conn, fieldsync_protocol::wal::PATIENCE)?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // Large sorts and index builds spill to files, as SQLite's default build
    // does: the workspace's SQLite is SQLCipher's build (for the device),
    // whose default keeps temporary data in memory.
    conn.pragma_update(None, "temp_store", "FILE")?;
    // Reads map the database file instead of copying each page through a
    // read() call, and each connection caches more of it: a pull page walks
    // a table's `_seq` index and looks up related rows in other tables, and
    // with SQLite's defaults (no mapping, a 2 MiB cache) copying pages out of
    // the kernel took a tenth of the server's time. Writes still go through
    // the WAL (SQLite never writes through the mapping), so a full disk is
    // still an error on write; the price is that a read error of a mapped
    // page (the file cut short under the server) is a signal, not an error.
    conn.pragma_update(None, "mmap_size", SQLITE_MMAP_BYTES)?;
    conn.pragma_update(None, "cache_size", -SQLITE_CACHE_KIB)?;
    // Plans that do not depend on the values bound: SQLite otherwise reads
    // the value bound to `LIMIT ?` while planning, and then prepares the
    // statement again each time a value is bound to it (every query of
    // every page; a thirtieth of the server's time for a page of changes).
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    Ok(conn)
}

/// What a back-office write ([`Db::write_record`]) left.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordWritten {
    /// The row as stored after the write.
    pub row: BTreeMap<String, Value>,
    pub version: i64,
    /// Whether the write created the row (it was missing or deleted).
    pub created: bool,
}

/// Rows [`Db::purge`] deletes per write transaction.
const PURGE_BATCH: i64 = 5_000;

/// What [`Db::purge`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    pub receipts: u64,
    pub telemetry: u64,
    pub sync_errors: u64,
}

/// How long the server keeps what it purges (see [`Db::purge`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Push receipts, which answer a retried push.
    pub receipts: Duration,
    /// Device telemetry.
    pub telemetry: Duration,
    /// Sync Errors entries (and their retry records).
    pub sync_errors: Duration,
}

/// Largest part of the embedded database file a connection maps (1 GiB).
const SQLITE_MMAP_BYTES: i64 = 1 << 30;
/// Page cache of each embedded connection, in KiB (16 MiB).
const SQLITE_CACHE_KIB: i64 = 16 * 1024;

/// PostgreSQL text cannot hold U+0000 (SQLite's can): the first value that
/// would not store, by column name.
fn unstorable_text<'a>(
    dialect: Dialect,
    data: impl IntoIterator<Item = (&'a String, &'a Value)>,
) -> Option<&'a String> {
    if dialect != Dialect::Postgres {
        return None;
    }
    data.into_iter()
        .find(|(_, v)| matches!(v, Value::Text(t) if t.contains('\0')))
        .map(|(k, _)| k)
}

/// The first required column without a default that a new row's `data`
/// leaves without a value.
fn missing_required<'a>(
    schema: &'a TableSchema,
    data: &BTreeMap<String, Value>,
) -> Option<&'a str> {
    schema
        .columns
        .iter()
        .filter(|c| c.required && c.default.is_none() && c.name != schema.primary_key)
        .find(|c| data.get(&c.name).is_none_or(|v| *v == Value::Null))
        .map(|c| c.name.as_str())
}

/// Approximate size of a row's values, for the row size limit.
fn row_size(data: &BTreeMap<String, Value>) -> usize {
    data.iter().map(|(k, v)| k.len() + v.approx_size()).sum()
}

/// The query of [`Db::fetch`]: the live rows of `table` whose `column`
/// holds one of `values` placeholders and that `predicate` selects, by key.
/// The column's index (see [`crate::schema::rule_indexes`]) answers the
/// `IN`.
pub(crate) fn fetch_sql(table: &SyncTable, column: &str, values: usize, predicate: &str) -> String {
    let mut cols: Vec<String> = vec!["_version".into()];
    cols.extend(table.columns.iter().map(|c| quote_ident(&c.name)));
    let marks = vec!["?"; values].join(", ");
    format!(
        "SELECT {} FROM {} WHERE _deleted = 0 AND {} IN ({marks}) AND {predicate} ORDER BY {}",
        cols.join(", "),
        quote_ident(&table.name),
        quote_ident(column),
        quote_ident(&table.primary_key)
    )
}

/// The size (as [`row_size`] counts it) of the row `data` leaves once
/// written over `current`: the live row's other fields count too, so a row
/// cannot pass [`MAX_ROW_BYTES`] a field at a time.
fn merged_size(current: Option<&StoredRow>, data: &BTreeMap<String, Value>) -> usize {
    let mut size = row_size(data);
    if let Some(r) = current.filter(|r| !r.deleted) {
        for (k, v) in &r.fields {
            if !data.contains_key(k) {
                size += k.len() + v.approx_size();
            }
        }
    }
    size
}

fn json_opt<T: serde::de::DeserializeOwned>(text: Option<String>) -> Option<T> {
    text.and_then(|t| serde_json::from_str(&t).ok())
}

fn int(n: i64) -> Value {
    Value::Integer(n)
}

/// One page of a pull: its head (a [`PullPage`] whose `rows` and
/// `removed` are empty) and the whole page as the JSON it is sent as
/// (`crate::page`).
#[derive(Debug)]
pub struct PageOut {
    pub head: PullPage,
    pub json: Vec<u8>,
    /// Rows the page inserts or replaces.
    pub rows: usize,
    /// Rows the page removes.
    pub removed: usize,
}

impl PageOut {
    /// The page decoded whole, rows and all.
    pub fn decoded(&self) -> ApiResult<PullPage> {
        serde_json::from_slice(&self.json)
            .map_err(|e| ApiError::internal(format!("a page does not decode: {e}")))
    }
}

/// Rows of `table` whose custom filters read a related row (`related`)
/// changed after `since`: an SQL condition over `table` (named as such)
/// with its parameters, or `None` when no filter reads a related table.
/// One `EXISTS` per relationship path, the last table's `_seq` compared.
pub(crate) fn related_changed_sql(
    profile: &SyncProfile,
    table: &SyncTable,
    since: i64,
) -> Option<(String, Vec<Value>)> {
    let mut parts = Vec::new();
    let mut params = Vec::new();
    for path in related_paths(table) {
        let Some((_, first_column, _)) = path.first() else {
            continue;
        };
        let mut from = String::new();
        let mut ok = true;
        for (k, (_, column, other)) in path.iter().enumerate() {
            let Some(o) = profile.table(other) else {
                ok = false;
                break;
            };
            if k == 0 {
                from.push_str(&format!("{} AS _fs_ch0", quote_ident(other)));
            } else {
                from.push_str(&format!(
                    " JOIN {} AS _fs_ch{k} ON _fs_ch{k}.{} = _fs_ch{}.{}",
                    quote_ident(other),
                    quote_ident(&o.primary_key),
                    k - 1,
                    quote_ident(column)
                ));
            }
        }
        let Some(first) = path.first().and_then(|(_, _, o)| profile.table(o)) else {
            continue;
        };
        if !ok {
            continue;
        }
        parts.push(format!(
            "EXISTS (SELECT 1 FROM {from} WHERE _fs_ch0.{} = {}.{} AND _fs_ch{}._seq > ?)",
            quote_ident(&first.primary_key),
            quote_ident(&table.name),
            quote_ident(first_column),
            path.len() - 1
        ));
        params.push(int(since));
    }
    (!parts.is_empty()).then(|| (format!("({})", parts.join(" OR ")), params))
}

/// Every relationship path the custom filters of `table` follow.
fn related_paths(table: &SyncTable) -> Vec<Vec<fieldsync_protocol::filter::Hop>> {
    let mut out = Vec::new();
    for rule in &table.rules {
        if let RowRule::Custom { filter } = rule {
            for p in filter.related_paths(&table.name) {
                if !out.contains(&p) {
                    out.push(p);
                }
            }
        }
    }
    out
}

/// Whether a table a `related` condition of `table` reads changed after
/// `since` (one indexed `EXISTS` per table).
pub(crate) fn related_tables_changed(
    c: &mut dyn Conn,
    table: &SyncTable,
    since: i64,
) -> ApiResult<bool> {
    let mut seen = std::collections::BTreeSet::new();
    for path in related_paths(table) {
        for (_, _, other) in path {
            if seen.insert(other.clone()) {
                let sql = format!(
                    "SELECT EXISTS (SELECT 1 FROM {} WHERE _seq > ?)",
                    quote_ident(&other)
                );
                if c.query_one(&sql, &[int(since)])?.bool(0)? {
                    return Ok(true);
                }
            }
        }
    }
    Ok(false)
}

/// The phase after the related phase of a new download: the window
/// phase when rows may have entered a relative-date window, else the
/// changes (the evaluation recorded at `now`).
fn after_related(cursor: &mut Cursor, profile: &SyncProfile, table: &SyncTable, now: i64) -> Phase {
    if cursor.window_due(profile, table, now) {
        Phase::Window { to: now, after: 0 }
    } else {
        cursor.evaluated_at = Some(now);
        Phase::Changes
    }
}

/// The entries of a pull after this page, estimated for `total` (the
/// progress of a download) without evaluating the profile's rules again.
///
/// Rows changed after the snapshot are entries whatever they hold, so they
/// are counted. Rows at or before the snapshot are entries only when the
/// rules select them: their number is the rows still to walk times the share
/// of the rows this page walked that were entries. Every count is a range of
/// the table's `_seq` index, so the estimate costs a fraction of the page,
/// where counting exactly would evaluate every rule on every row again (as
/// much as the whole download: 10 s of 26 s for 1M device rows).
///
/// Each count is a `COUNT(*)` of its own over one range, which SQLite
/// answers from the index alone without reading a column, and ranges open
/// at the top where they can be (the rows still to walk are the rows after
/// the page less those after the snapshot): one statement summing three
/// `CASE`s over every row after `since` took three to seven times as long
/// (0.24 s for the 952k server rows of a 1M device's service tasks, against
/// 0.035 s for one open range), and the first page of a download and every
/// tenth after it ask.
fn estimate_rest(
    c: &mut dyn Conn,
    table: &str,
    since: i64,
    snapshot: i64,
    last_seq: i64,
    entries_in_snapshot: u64,
) -> ApiResult<u64> {
    let after_snapshot = count_seq(c, table, last_seq.max(snapshot), None)?;
    let to_walk = if last_seq < snapshot {
        count_seq(c, table, last_seq, None)?.saturating_sub(after_snapshot)
    } else {
        0
    };
    let walked_to = last_seq.min(snapshot);
    let walked = if since < walked_to {
        count_seq(c, table, since, Some(walked_to))?
    } else {
        0
    };
    let selected = if walked == 0 {
        to_walk
    } else {
        (to_walk as u128 * u128::from(entries_in_snapshot.min(walked)) / walked as u128) as u64
    };
    Ok(after_snapshot + selected)
}

/// The rows of `table` with `_seq` after `after` (and at most `through`):
/// a `COUNT(*)` SQLite answers from the `_seq` index alone.
pub(crate) fn count_seq(
    c: &mut dyn Conn,
    table: &str,
    after: i64,
    through: Option<i64>,
) -> ApiResult<u64> {
    let t = quote_ident(table);
    let n = match through {
        None => c.query_one(
            &format!("SELECT COUNT(*) FROM {t} WHERE _seq > ?"),
            &[int(after)],
        )?,
        Some(through) => c.query_one(
            &format!("SELECT COUNT(*) FROM {t} WHERE _seq > ? AND _seq <= ?"),
            &[int(after), int(through)],
        )?,
    }
    .i64(0)?;
    Ok(n.max(0) as u64)
}

/// Creates the schema and the default profile in a fresh transaction; the
/// model in force.
fn prepare(
    c: &mut dyn Conn,
    model: &DataModel,
    default_profile: &OfflineProfile,
    now: &str,
) -> ApiResult<crate::model::ModelVersion> {
    let in_force = prepare_schema(c, model, default_profile, now)?;
    for profile in stored_profiles(c)? {
        schema::ensure_rule_indexes(c, &in_force.model, &profile)?;
    }
    Ok(in_force)
}

/// The schema, the model in force (`model` is the one given at start, see
/// [`crate::model::at_start`]) and the default profile, without the
/// rules' indexes.
fn prepare_schema(
    c: &mut dyn Conn,
    model: &DataModel,
    default_profile: &OfflineProfile,
    now: &str,
) -> ApiResult<crate::model::ModelVersion> {
    schema::migrate_own(c)?;
    let in_force = crate::model::at_start(c, model, now)?;
    schema::apply_model(c, &in_force.model, None)?;
    let model = &in_force.model;
    let has_profile = c.exists(
        "SELECT 1 FROM _fs_profiles WHERE name = ?",
        &[text(default_profile.name.clone())],
    )?;
    if !has_profile && default_profile.validate(model).is_err() {
        // A company's own model without the Field Service tables: users
        // are given a profile of that model by name.
        tracing::info!(
            profile = %default_profile.name,
            "the built-in profile does not fit the data model in force; not stored"
        );
        return Ok(in_force);
    }
    if !has_profile {
        let body = serde_json::to_string(default_profile)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        c.execute(
            "INSERT INTO _fs_profiles (name, version, body, updated_at) VALUES (?, 1, ?, ?)",
            &[text(default_profile.name.clone()), text(body), text(now)],
        )?;
    }
    Ok(in_force)
}

/// Every stored profile that parses (one that no longer does is reported
/// when it is used). Their rules' indexes are made at start-up, so
/// databases from before an index existed gain it.
fn stored_profiles(c: &mut dyn Conn) -> ApiResult<Vec<OfflineProfile>> {
    let bodies = c.query("SELECT body FROM _fs_profiles ORDER BY name", &[])?;
    let mut out = Vec::new();
    for r in &bodies {
        if let Ok(profile) = serde_json::from_str::<OfflineProfile>(&r.text(0)?) {
            out.push(profile);
        }
    }
    Ok(out)
}

impl Db {
    /// Opens (creating and migrating) the embedded SQLite database in
    /// `data_dir`.
    pub fn open(
        data_dir: &Path,
        model: DataModel,
        default_profile: &OfflineProfile,
    ) -> ApiResult<Db> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            ApiError::internal(format!("cannot create {}: {e}", data_dir.display()))
        })?;
        Self::open_url(
            &DatabaseUrl::Sqlite(data_dir.join("fieldsync.db")),
            model,
            default_profile,
            None,
            Arc::new(SystemClock),
        )
    }

    /// Opens (creating and migrating) the database at `url`, on `clock`
    /// (every time the server records or compares, "today" in relative-date
    /// filters included). A PostgreSQL server's certificate is verified
    /// against Mozilla's roots and the authorities of `pg_ca_pem` (see
    /// [`crate::pgtls`]).
    pub fn open_url(
        url: &DatabaseUrl,
        model: DataModel,
        default_profile: &OfflineProfile,
        pg_ca_pem: Option<&str>,
        clock: Arc<dyn Clock>,
    ) -> ApiResult<Db> {
        model.validate()?;
        let now = format_datetime(clock.now_ms());
        let (backend, in_force) = match url {
            DatabaseUrl::Sqlite(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        ApiError::internal(format!("cannot create {}: {e}", dir.display()))
                    })?;
                }
                let mut writer = open_connection(path)?;
                let tx = writer.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let in_force = prepare(&mut SqliteConn(&tx), &model, default_profile, &now)?;
                tx.commit()?;
                (
                    Backend::Sqlite {
                        path: path.clone(),
                        writer: Mutex::new(writer),
                        readers: Mutex::new(Vec::new()),
                    },
                    in_force,
                )
            }
            DatabaseUrl::Postgres(url) => {
                // The blocking client runs its own small runtime: connect on
                // a plain thread, whatever thread opens the database.
                let model = model.clone();
                let default_profile = default_profile.clone();
                let url = url.clone();
                let tls = crate::pgtls::RustlsConnect::new(pg_ca_pem)?;
                std::thread::spawn(move || {
                    Self::open_postgres(&url, tls, &model, &default_profile, &now)
                })
                .join()
                .map_err(|_| ApiError::internal("opening PostgreSQL panicked"))??
            }
        };
        Ok(Db {
            clock,
            model: std::sync::RwLock::new(Arc::new(in_force)),
            backend,
            selections: Default::default(),
        })
    }

    /// Takes the migration lock, polling for it. A session blocked in
    /// `pg_advisory_lock` stays in a statement, and `CREATE INDEX
    /// CONCURRENTLY` waits for every such statement to end: the instance
    /// building the rule indexes under the lock and the one waiting for it
    /// would wait for each other (PostgreSQL reports `40P01`). Between two
    /// tries this session runs nothing, so the build never waits for it.
    fn take_migration_lock(client: &mut PgClient) -> ApiResult<()> {
        let deadline = std::time::Instant::now() + PG_MIGRATION_WAIT;
        loop {
            let row = client.query_one("SELECT pg_try_advisory_lock($1)", &[&PG_MIGRATION_LOCK])?;
            if row.try_get::<_, bool>(0)? {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                return Err(ApiError::internal(format!(
                    "another instance has been migrating the database for {} s; gave up waiting",
                    PG_MIGRATION_WAIT.as_secs()
                )));
            }
            let jitter = u64::from(rand::random::<u8>() % 100);
            std::thread::sleep(Duration::from_millis(100 + jitter));
        }
    }

    fn open_postgres(
        url: &str,
        tls: crate::pgtls::RustlsConnect,
        model: &DataModel,
        default_profile: &OfflineProfile,
        now: &str,
    ) -> ApiResult<(Backend, crate::model::ModelVersion)> {
        let config: postgres::Config = url
            .parse()
            .map_err(|e| ApiError::internal(format!("the PostgreSQL URL does not parse: {e}")))?;
        let pool = PgPool::new(config, tls);
        let mut client = pool.get()?;
        Self::take_migration_lock(&mut client)?;
        let migrated = (|| -> ApiResult<crate::model::ModelVersion> {
            client.batch_execute("BEGIN")?;
            let done = prepare_schema(&mut PgConn::new(&mut client), model, default_profile, now)
                .and_then(|in_force| {
                    Ok((in_force, stored_profiles(&mut PgConn::new(&mut client))?))
                });
            client.batch_execute(if done.is_ok() { "COMMIT" } else { "ROLLBACK" })?;
            // The rules' indexes after the commit, concurrently: instances
            // already serving keep writing while they build.
            let (in_force, profiles) = done?;
            schema::build_model_indexes_concurrently(&mut client, &in_force.model)?;
            for profile in profiles {
                schema::build_rule_indexes_concurrently(&mut client, &in_force.model, &profile)?;
            }
            Ok(in_force)
        })();
        client.execute("SELECT pg_advisory_unlock($1)", &[&PG_MIGRATION_LOCK])?;
        let in_force = migrated?;
        pool.put(client);
        Ok((Backend::Postgres(pool), in_force))
    }

    /// Runs `f` on a PostgreSQL connection outside any transaction (tests).
    #[cfg(test)]
    pub(crate) fn with_pg_client<T>(
        &self,
        f: impl FnOnce(&mut postgres::Client) -> T,
    ) -> Option<T> {
        match &self.backend {
            Backend::Postgres(pool) => {
                let mut client = pool.get().ok()?;
                let out = f(&mut client);
                pool.put(client);
                Some(out)
            }
            Backend::Sqlite { .. } => None,
        }
    }

    /// Uses `clock` for "today" in relative-date filters (tests inject a
    /// controlled clock; the default is the wall clock).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Db {
        self.clock = clock;
        self
    }

    /// Replaces the selected-value sets' cache (tests: one of capacity 0
    /// walks with the compiled rules only).
    #[cfg(test)]
    pub(crate) fn set_selections(&mut self, cache: crate::selection::SelectionCache) {
        self.selections = cache;
    }

    /// Keeps at most `bytes` of selected-value sets (see
    /// [`crate::selection`]); 0 keeps none, and first downloads evaluate the
    /// compiled rules on every walked row.
    pub fn with_selection_cache(mut self, bytes: usize) -> Db {
        self.selections = crate::selection::SelectionCache::new(bytes);
        self
    }

    /// Connections of this instance to its database.
    pub fn pool_stats(&self) -> PoolStats {
        match &self.backend {
            Backend::Sqlite { readers, .. } => {
                let idle = lock(readers).len();
                // The writer is always open; readers are opened on demand
                // and at most eight idle ones kept.
                PoolStats {
                    open: idle + 1,
                    idle,
                    max: 0,
                }
            }
            Backend::Postgres(pool) => PoolStats {
                open: *lock(&pool.open),
                idle: lock(&pool.idle).len(),
                max: PG_CONNECTIONS,
            },
        }
    }

    /// What the selection cache holds and how often it answered.
    pub fn selection_cache_stats(&self) -> SelectionCacheStats {
        let (hits, misses) = self.selections.lookups();
        SelectionCacheStats {
            bytes: self.selections.bytes(),
            sets: self.selections.len(),
            hits,
            misses,
        }
    }

    /// The selected-value sets this instance keeps.
    pub fn selections(&self) -> &crate::selection::SelectionCache {
        &self.selections
    }

    /// The clock's reading, milliseconds since the epoch.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// The clock's reading as the database stores times.
    pub(crate) fn now_text(&self) -> String {
        format_datetime(self.clock.now_ms())
    }

    /// The filter context of a profile at the server's clock.
    fn ctx(&self, profile: &SyncProfile) -> FilterContext {
        profile.filter_context(self.clock.now_ms())
    }

    /// The data model in force. A version another instance published is
    /// read on the first call after it (one small read of the newest
    /// version's number per call).
    pub fn model(&self) -> ApiResult<crate::model::Shared> {
        let newest = self.read(crate::model::latest_number)?;
        self.model_at(newest)
    }

    /// The model in force, knowing the newest version is `newest`: the
    /// cached one unless another instance published a newer one.
    fn model_at(&self, newest: i64) -> ApiResult<crate::model::Shared> {
        let cached = self.cached_model();
        if newest <= cached.version {
            return Ok(cached);
        }
        match self.read(|c| crate::model::version(c, newest))? {
            Some(v) => {
                let v = Arc::new(v);
                let mut slot = self.model.write().unwrap_or_else(|p| p.into_inner());
                if slot.version < v.version {
                    *slot = v.clone();
                }
                Ok(slot.clone())
            }
            None => Ok(cached),
        }
    }

    /// The data model as this instance last read it.
    pub fn cached_model(&self) -> crate::model::Shared {
        self.model.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Every version of the data model, newest first.
    pub fn model_versions(&self) -> ApiResult<Vec<crate::model::ModelVersion>> {
        self.read(crate::model::versions)
    }

    /// Publishes `model` as the next version (see [`crate::model`]): the
    /// data tables are migrated in the same transaction.
    pub fn publish_model(
        &self,
        model: &DataModel,
        source: &str,
    ) -> ApiResult<crate::model::Published> {
        let now = self.now_text();
        let published = self.write(|c| crate::model::publish_in(c, model, source, &now))?;
        if let Backend::Postgres(pool) = &self.backend {
            // After the commit, concurrently: the tables stay readable
            // and writable while their new indexes build.
            let mut client = pool.get()?;
            let built = schema::build_model_indexes_concurrently(&mut client, model);
            pool.put(client);
            built?;
        }
        self.model()?;
        Ok(published)
    }

    /// The SQL dialect of the back end.
    pub fn dialect(&self) -> Dialect {
        match self.backend {
            Backend::Sqlite { .. } => Dialect::Sqlite,
            Backend::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Runs `f` in a read-only snapshot.
    pub(crate) fn read<T>(&self, mut f: impl FnMut(&mut dyn Conn) -> ApiResult<T>) -> ApiResult<T> {
        match &self.backend {
            Backend::Sqlite { path, readers, .. } => {
                let conn = match lock(readers).pop() {
                    Some(c) => c,
                    None => open_connection(path)?,
                };
                let result = conn
                    .unchecked_transaction()
                    .map_err(ApiError::from)
                    .and_then(|tx| f(&mut SqliteConn(&tx)));
                let mut pool = lock(readers);
                if pool.len() < 8 {
                    pool.push(conn);
                }
                result
            }
            Backend::Postgres(pool) => {
                let mut client = pool.get()?;
                let result = (|| {
                    client.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")?;
                    let out = f(&mut PgConn::new(&mut client));
                    client.batch_execute(if out.is_ok() { "COMMIT" } else { "ROLLBACK" })?;
                    out
                })();
                pool.put(client);
                result
            }
        }
    }

    /// Runs `f` in a write transaction and commits. On PostgreSQL `f` may
    /// run more than once (after a serialization failure), so it must not
    /// have effects outside the transaction.
    pub(crate) fn write<T>(
        &self,
        mut f: impl FnMut(&mut dyn Conn) -> ApiResult<T>,
    ) -> ApiResult<T> {
        match &self.backend {
            Backend::Sqlite { writer, .. } => {
                let mut conn = lock(writer);
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let out = f(&mut SqliteConn(&tx))?;
                tx.commit()?;
                Ok(out)
            }
            Backend::Postgres(pool) => {
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    let mut client = pool.get()?;
                    let model = self.cached_model();
                    let (out, retryable) = Self::pg_write_once(&mut client, &model.model, &mut f);
                    pool.put(client);
                    match out {
                        Err(_) if retryable && attempt < PG_WRITE_ATTEMPTS => {
                            let jitter = u64::from(rand::random::<u8>() % 20);
                            std::thread::sleep(Duration::from_millis(
                                (1u64 << attempt.min(6)) + jitter,
                            ));
                        }
                        out => return out,
                    }
                }
            }
        }
    }

    /// One attempt of a PostgreSQL write transaction: the answer, and
    /// whether a failure may be retried.
    fn pg_write_once<T>(
        client: &mut PgClient,
        model: &DataModel,
        f: &mut impl FnMut(&mut dyn Conn) -> ApiResult<T>,
    ) -> (ApiResult<T>, bool) {
        if let Err(e) = client.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ") {
            return (Err(e.into()), false);
        }
        let mut conn = PgConn::new(client);
        let out = f(&mut conn);
        let mut retryable = conn.retryable;
        let out = match out {
            Ok(v) => match stamp_sequences(client, model).and_then(|()| {
                if cfg!(feature = "naive-sequence") {
                    // The planted naive cursor: commits land late, as under
                    // load, so sequence order and commit order part.
                    std::thread::sleep(Duration::from_millis(u64::from(rand::random::<u8>() % 80)));
                }
                client.batch_execute("COMMIT")
            }) {
                Ok(()) => return (Ok(v), false),
                Err(e) => {
                    retryable = pg_retryable(&e);
                    Err(ApiError::from(e))
                }
            },
            Err(e) => Err(e),
        };
        let _ = client.batch_execute("ROLLBACK");
        (out, retryable)
    }

    // ---- retention ---------------------------------------------------------

    /// Removes push receipts written longer than `receipts_for` ago and
    /// telemetry received longer than `telemetry_for` ago, by the server's
    /// clock. Deletes a batch at a time, each in its own short write
    /// transaction, so pushes wait at most for one batch.
    ///
    /// A receipt makes a retried push answer the stored result instead of
    /// applying the change again; after its retention, a device retrying a
    /// push whose answer it lost that long ago would apply it again.
    pub fn purge(&self, retention: &Retention) -> ApiResult<Purged> {
        let now = self.clock.now_ms();
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let receipts_before = format_datetime(now.saturating_sub(ms(retention.receipts)));
        let telemetry_before = now.saturating_sub(ms(retention.telemetry));
        let errors_before = format_datetime(now.saturating_sub(ms(retention.sync_errors)));
        // An entry's retry record goes before the entry.
        self.delete_in_batches(
            "DELETE FROM _fs_sync_error_retries WHERE sync_error_id IN
               (SELECT id FROM _fs_sync_errors WHERE at < ? LIMIT ?)",
            text(errors_before.clone()),
        )?;
        Ok(Purged {
            receipts: self.delete_in_batches(
                "DELETE FROM _fs_push_receipts WHERE (user_id, idempotency_key) IN
                   (SELECT user_id, idempotency_key FROM _fs_push_receipts WHERE at < ? LIMIT ?)",
                text(receipts_before),
            )?,
            telemetry: self.delete_in_batches(
                "DELETE FROM _fs_telemetry WHERE id IN
                   (SELECT id FROM _fs_telemetry WHERE received_at < ? LIMIT ?)",
                int(telemetry_before),
            )?,
            sync_errors: self.delete_in_batches(
                "DELETE FROM _fs_sync_errors WHERE id IN
                   (SELECT id FROM _fs_sync_errors WHERE at < ? LIMIT ?)",
                text(errors_before),
            )?,
        })
    }

    /// Runs `delete` (parameters: the cutoff, then the batch size) in write
    /// transactions of [`PURGE_BATCH`] rows until a batch comes up short;
    /// the rows deleted.
    fn delete_in_batches(&self, delete: &str, cutoff: Value) -> ApiResult<u64> {
        let mut deleted = 0;
        loop {
            let n = self.write(|c| c.execute(delete, &[cutoff.clone(), int(PURGE_BATCH)]))?;
            deleted += n;
            if n < PURGE_BATCH as u64 {
                return Ok(deleted);
            }
        }
    }

    // ---- users -------------------------------------------------------------

    /// The user holding this token.
    pub fn user_by_token(&self, token: &str) -> ApiResult<Option<User>> {
        let hash = hash_token(token);
        self.read(|c| {
            c.query_opt(
                "SELECT id, name, role, profile, team_id, time_zone FROM _fs_users WHERE token_hash = ?",
                &[text(hash.clone())],
            )?
            .as_ref()
            .map(user_from_row)
            .transpose()
        })
    }

    /// Creates a user and returns it with its new bearer token.
    pub fn create_user(
        &self,
        id: Option<String>,
        name: &str,
        role: Role,
        profile: &str,
        team_id: Option<String>,
    ) -> ApiResult<(User, String)> {
        self.create_user_in_zone(id, name, role, profile, team_id, None)
    }

    /// [`Db::create_user`] with the user's own time zone (an IANA name that
    /// overrides the profile's for relative-date filters).
    pub fn create_user_in_zone(
        &self,
        id: Option<String>,
        name: &str,
        role: Role,
        profile: &str,
        team_id: Option<String>,
        time_zone: Option<String>,
    ) -> ApiResult<(User, String)> {
        let id = id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        if id.is_empty() || id.len() > 128 {
            return Err(ApiError::bad_request(
                codes::BAD_REQUEST,
                "a user id is 1 to 128 characters",
            ));
        }
        if name.trim().is_empty() {
            return Err(ApiError::bad_request(
                codes::BAD_REQUEST,
                "a user needs a name",
            ));
        }
        let time_zone = time_zone.filter(|z| !z.is_empty());
        if let Some(zone) = &time_zone {
            fieldsync_protocol::profile::check_time_zone(zone)
                .map_err(|e| ApiError::bad_request(codes::BAD_REQUEST, e.to_string()))?;
        }
        let token = user_token();
        let user = User {
            id,
            name: name.to_owned(),
            role,
            profile: profile.to_owned(),
            team_id: team_id.filter(|t| !t.is_empty()),
            time_zone,
        };
        self.write(|c| {
            if !c.exists("SELECT 1 FROM _fs_profiles WHERE name = ?", &[text(profile)])? {
                return Err(ApiError::bad_request(
                    codes::BAD_REQUEST,
                    format!("no offline profile named '{profile}'"),
                ));
            }
            if c.exists("SELECT 1 FROM _fs_users WHERE id = ?", &[text(user.id.clone())])? {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    codes::CONFLICT,
                    format!("user '{}' exists", user.id),
                ));
            }
            c.execute(
                "INSERT INTO _fs_users (id, name, role, profile, token_hash, created_at, team_id, time_zone) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                &[
                    text(user.id.clone()),
                    text(user.name.clone()),
                    text(user.role.as_str()),
                    text(user.profile.clone()),
                    text(hash_token(&token)),
                    text(self.now_text()),
                    opt_text(user.team_id.clone()),
                    opt_text(user.time_zone.clone()),
                ],
            )?;
            Ok(())
        })?;
        Ok((user, token))
    }

    /// Gives user `id` a new bearer token (returned once): the old one stops
    /// working at once, and the user's console sessions end. `None` when
    /// there is no such user.
    pub fn rotate_token(&self, id: &str) -> ApiResult<Option<(User, String)>> {
        let token = user_token();
        let user = self.write(|c| {
            let Some(user) = user_by_id_in(c, id)? else {
                return Ok(None);
            };
            c.execute(
                "UPDATE _fs_users SET token_hash = ? WHERE id = ?",
                &[text(hash_token(&token)), text(id)],
            )?;
            end_console_sessions(c, id)?;
            Ok(Some(user))
        })?;
        Ok(user.map(|u| (u, token)))
    }

    /// Deletes user `id`: its token stops working at once and its console
    /// sessions end. What it wrote stays (rows, the Sync Errors log,
    /// devices, telemetry). False when there is no such user.
    pub fn delete_user(&self, id: &str) -> ApiResult<bool> {
        self.write(|c| {
            let deleted = c.execute("DELETE FROM _fs_users WHERE id = ?", &[text(id)])? > 0;
            if deleted {
                end_console_sessions(c, id)?;
            }
            Ok(deleted)
        })
    }

    /// Every user.
    pub fn users(&self) -> ApiResult<Vec<User>> {
        self.read(|c| {
            c.query(
                "SELECT id, name, role, profile, team_id, time_zone FROM _fs_users ORDER BY name, id",
                &[],
            )?
            .iter()
            .map(user_from_row)
            .collect()
        })
    }

    // ---- profiles and settings ---------------------------------------------

    /// A stored profile and its version.
    pub fn profile(&self, name: &str) -> ApiResult<Option<(OfflineProfile, i64)>> {
        let row = self.read(|c| {
            c.query_opt(
                "SELECT body, version FROM _fs_profiles WHERE name = ?",
                &[text(name)],
            )
        })?;
        match row {
            Some(r) => Ok(Some((
                serde_json::from_str(&r.text(0)?)
                    .map_err(|e| ApiError::internal(format!("stored profile: {e}")))?,
                r.i64(1)?,
            ))),
            None => Ok(None),
        }
    }

    /// Every stored profile with its version.
    pub fn profiles(&self) -> ApiResult<Vec<(OfflineProfile, i64)>> {
        let names: Vec<String> = self.read(|c| {
            c.query("SELECT name FROM _fs_profiles ORDER BY name", &[])?
                .iter()
                .map(|r| r.text(0))
                .collect()
        })?;
        let mut out = Vec::new();
        for n in names {
            if let Some(p) = self.profile(&n)? {
                out.push(p);
            }
        }
        Ok(out)
    }

    /// Validates and publishes a profile; returns its new version.
    pub fn put_profile(&self, profile: &OfflineProfile) -> ApiResult<i64> {
        let in_force = self.model()?;
        let model = &in_force.model;
        profile.validate(model)?;
        self.check_rule_parameters(profile)?;
        let body = serde_json::to_string(profile).map_err(|e| ApiError::internal(e.to_string()))?;
        if self.dialect() == Dialect::Postgres && body.contains("\\u0000") {
            return Err(ApiError::bad_request(
                codes::INVALID_PROFILE,
                "a filter value holds U+0000, which this server's PostgreSQL storage cannot compare",
            ));
        }
        if let Backend::Postgres(pool) = &self.backend {
            let mut client = pool.get()?;
            let built = schema::build_rule_indexes_concurrently(&mut client, model, profile);
            pool.put(client);
            built?;
        }
        self.write(|c| {
            // The model may not change under the profile: a publication
            // checks the stored profiles, so the two take turns.
            crate::model::guard(c)?;
            if crate::model::latest_number(c)? != in_force.version {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    codes::CONFLICT,
                    "the data model changed while the profile was checked; send it again",
                ));
            }
            schema::ensure_rule_indexes(c, model, profile)?;
            let current = c.query_opt(
                "SELECT version, body FROM _fs_profiles WHERE name = ?",
                &[text(profile.name.clone())],
            )?;
            match current {
                Some(r) if r.text(1)? == body => r.i64(0),
                Some(r) => {
                    let v = r.i64(0)? + 1;
                    c.execute(
                        "UPDATE _fs_profiles SET version = ?, body = ?, updated_at = ? WHERE name = ?",
                        &[int(v), text(body.clone()), text(self.now_text()), text(profile.name.clone())],
                    )?;
                    Ok(v)
                }
                None => {
                    c.execute(
                        "INSERT INTO _fs_profiles (name, version, body, updated_at) VALUES (?, 1, ?, ?)",
                        &[text(profile.name.clone()), text(body.clone()), text(self.now_text())],
                    )?;
                    Ok(1)
                }
            }
        })
    }

    /// Refuses a profile whose rules, once compiled for one table, bind
    /// more than [`MAX_RULE_PARAMETERS`] values: a pull binds them twice,
    /// and SQLite refuses a statement of more than 32,766 parameters
    /// (PostgreSQL 65,535), which would fail every pull of the table with a
    /// 500. A table's count includes the values of the tables its related
    /// rules reach.
    fn check_rule_parameters(&self, profile: &OfflineProfile) -> ApiResult<()> {
        let resolved = profile.resolve(&self.model()?.model, 1, "_fs_check", Some("_fs_check"))?;
        let ctx = resolved.filter_context(self.now_ms());
        for table in &resolved.tables {
            let n = rules::compile_in(self.dialect(), &resolved, table, &ctx)
                .params
                .len();
            if n > MAX_RULE_PARAMETERS {
                return Err(ApiError::bad_request(
                    codes::INVALID_PROFILE,
                    format!(
                        "table '{}': its rules hold {n} values once the tables its related rules reach are included; at most {MAX_RULE_PARAMETERS} are allowed",
                        table.name
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The profile issued to a user, resolved against the data model.
    pub fn sync_profile(&self, user: &User) -> ApiResult<SyncProfile> {
        // The profile and the newest model version in one read: every
        // request of a device resolves its profile.
        let (row, newest) = self.read(|c| {
            let row = c.query_opt(
                "SELECT body, version FROM _fs_profiles WHERE name = ?",
                &[text(user.profile.clone())],
            )?;
            Ok((row, crate::model::latest_number(c)?))
        })?;
        let row = row.ok_or_else(|| {
            ApiError::internal(format!("user's profile '{}' is missing", user.profile))
        })?;
        let profile: OfflineProfile = serde_json::from_str(&row.text(0)?)
            .map_err(|e| ApiError::internal(format!("stored profile: {e}")))?;
        let version = row.i64(1)?;
        let in_force = self.model_at(newest)?;
        let mut resolved = profile
            .resolve(&in_force.model, version, &user.id, user.team_id.as_deref())?
            .with_user_time_zone(user.time_zone.as_deref())?;
        resolved.model_version = in_force.version;
        Ok(resolved)
    }

    /// A server setting.
    pub(crate) fn setting(&self, key: &str) -> ApiResult<Option<String>> {
        self.read(|c| setting_in(c, key))
    }

    /// Sets a server setting.
    pub(crate) fn set_setting(&self, key: &str, value: &str) -> ApiResult<()> {
        self.write(|c| {
            c.execute(
                "INSERT INTO _fs_settings (key, value) VALUES (?, ?)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                &[text(key), text(value)],
            )?;
            Ok(())
        })
    }

    /// Whether conflict detection is on (off by default: the device wins).
    pub fn conflict_detection(&self) -> ApiResult<bool> {
        self.read(|c| Self::conflict_detection_in(c))
    }

    /// [`Db::conflict_detection`] inside the caller's transaction: a push
    /// reads it in its own write transaction, so a settings change is
    /// either wholly before the push or wholly after it.
    fn conflict_detection_in(c: &mut dyn Conn) -> ApiResult<bool> {
        Ok(setting_in(c, "conflict_detection")?.as_deref() == Some("true"))
    }

    /// Turns conflict detection on or off.
    pub fn set_conflict_detection(&self, on: bool) -> ApiResult<()> {
        self.set_setting("conflict_detection", if on { "true" } else { "false" })
    }

    // ---- devices -----------------------------------------------------------

    /// Records that a device was seen (and, with `synced`, that it synced).
    pub fn touch_device(
        &self,
        device_id: &str,
        user_id: &str,
        synced: bool,
        app_version: Option<&str>,
    ) -> ApiResult<()> {
        if !device_id_ok(device_id) {
            return Ok(());
        }
        let now = self.now_text();
        self.write(|c| touch_device_in(c, &now, device_id, user_id, synced, app_version))
    }

    /// Every device seen.
    pub fn devices(&self) -> ApiResult<Vec<DeviceEntry>> {
        self.read(|c| {
            c.query(
                "SELECT id, user_id, first_seen, last_seen, last_sync_at, app_version, last_error
                 FROM _fs_devices ORDER BY last_seen DESC",
                &[],
            )?
            .iter()
            .map(|r| {
                Ok(DeviceEntry {
                    id: r.text(0)?,
                    user_id: r.text(1)?,
                    first_seen: r.text(2)?,
                    last_seen: r.text(3)?,
                    last_sync_at: r.opt_text(4)?,
                    app_version: r.opt_text(5)?,
                    last_error: r.opt_text(6)?,
                })
            })
            .collect()
        })
    }

    // ---- pull --------------------------------------------------------------

    /// One page of `table`'s changes after `cursor` for `user`.
    pub fn pull(
        &self,
        _user: &User,
        profile: &SyncProfile,
        table: &SyncTable,
        cursor: &str,
        limit: u32,
        want_total: bool,
    ) -> ApiResult<PageOut> {
        let profile_version = profile.version;
        if limit == 0 || limit > MAX_PAGE_SIZE {
            return Err(ApiError::bad_request(
                codes::PAGE_TOO_LARGE,
                format!("limit must be 1 to {MAX_PAGE_SIZE}"),
            ));
        }
        let parsed = Cursor::parse(cursor).ok_or_else(|| {
            ApiError::bad_request(
                codes::INVALID_CURSOR,
                "the cursor is not one this server issued",
            )
        })?;
        let now = self.clock.now_ms();
        let dialect = self.dialect();
        let predicate = rules::compile_in(dialect, profile, table, &profile.filter_context(now));
        let mut cols: Vec<String> = vec!["_version".into()];
        cols.extend(table.columns.iter().map(|c| quote_ident(&c.name)));
        let select_cols = cols.join(", ");
        let ncols = table.columns.len();
        let kinds: Vec<fieldsync_protocol::profile::ColumnKind> =
            table.columns.iter().map(|c| c.kind).collect();
        self.read(|c| {
            let hwm = c
                .query_one("SELECT COALESCE(MAX(seq), 0) FROM _fs_change_log", &[])?
                .i64(0)?;
            let mut cursor = parsed.unwrap_or(Cursor {
                since: 0,
                snapshot: hwm,
                evaluated_at: Some(now),
                phase: Phase::Changes,
            });
            if cursor.since > hwm || cursor.snapshot > hwm {
                return Err(ApiError::bad_request(
                    codes::INVALID_CURSOR,
                    "the cursor is ahead of this server's change log; download the table again",
                ));
            }
            // A new download: look for rows that entered a relative-date
            // window since the device's copy was selected. Relative dates
            // move by whole local days, so within the same day nothing can
            // have entered (and the scan of the table is skipped).
            if cursor.phase == Phase::Rest {
                cursor.phase = if related_tables_changed(c, table, cursor.since)? {
                    Phase::Related { after: 0 }
                } else {
                    after_related(&mut cursor, profile, table, now)
                };
            }
            if cursor.evaluated_at.is_none() {
                cursor.evaluated_at = Some(now);
            }
            let mut rows = PageRows::default();
            let mut removed = Vec::new();
            let mut has_more = false;
            let mut total: Option<u64> = want_total.then_some(0);
            let mut snapshot_rows = 0u64;
            let mut room = limit;
            let mut page_bytes = 0usize;

            // Related phase: unchanged rows that qualify now because a row
            // their filter reads changed (the device removes the rows that
            // stop qualifying itself, when it gets the related row).
            if let Phase::Related { after } = cursor.phase {
                match related_changed_sql(profile, table, cursor.since) {
                    Some((changed, changed_params)) => {
                        let scope = format!(
                            "_deleted = 0 AND _seq <= ? AND _seq > ? AND {} AND {changed}",
                            predicate.sql
                        );
                        let mut params: Vec<Value> = vec![int(cursor.since), int(after)];
                        params.extend(predicate.params.iter().cloned());
                        params.extend(changed_params);
                        if let Some(t) = total.as_mut() {
                            let n = c
                                .query_one(
                                    &format!(
                                        "SELECT COUNT(*) FROM {} WHERE {scope}",
                                        quote_ident(&table.name)
                                    ),
                                    &params,
                                )?
                                .i64(0)?;
                            *t += n.max(0) as u64;
                        }
                        let sql = format!(
                            "SELECT {select_cols}, _seq FROM {} WHERE {scope} ORDER BY _seq LIMIT ?",
                            quote_ident(&table.name)
                        );
                        params.push(int(i64::from(room) + 1));
                        let mut last = after;
                        let (mut read, mut more) = (0u32, false);
                        let bytes = &mut page_bytes;
                        c.query_each(&sql, &params, &mut |r| {
                            if read == room || *bytes >= MAX_PAGE_BYTES {
                                more = true;
                                return Ok(false);
                            }
                            read += 1;
                            last = r.int(ncols + 1)?;
                            *bytes += rows.push(r, &kinds)?.size;
                            Ok(true)
                        })?;
                        room -= read;
                        if more {
                            has_more = true;
                            cursor.phase = Phase::Related { after: last };
                        } else {
                            cursor.phase = after_related(&mut cursor, profile, table, now);
                        }
                    }
                    None => cursor.phase = after_related(&mut cursor, profile, table, now),
                }
            }

            // Window phase: unchanged rows (`_seq <= since`) that qualify now
            // and did not at `evaluated_at`, by their own clock rules.
            if let Phase::Window { to, after } = cursor.phase {
                let then = cursor.evaluated_at.unwrap_or(to);
                let now_ctx = profile.filter_context(to);
                let then_ctx = profile.filter_context(then);
                match (
                    rules::compile_clock_rules(dialect, profile, table, &now_ctx),
                    rules::compile_clock_rules(dialect, profile, table, &then_ctx),
                ) {
                    (Some(now_p), Some(then_p)) => {
                        let scope = format!(
                            "_deleted = 0 AND _seq <= ? AND _seq > ? AND {} AND NOT {}",
                            now_p.sql, then_p.sql
                        );
                        let mut params: Vec<Value> = vec![int(cursor.since), int(after)];
                        params.extend(now_p.params.iter().cloned());
                        params.extend(then_p.params.iter().cloned());
                        if let Some(t) = total.as_mut() {
                            let n = c
                                .query_one(
                                    &format!(
                                        "SELECT COUNT(*) FROM {} WHERE {scope}",
                                        quote_ident(&table.name)
                                    ),
                                    &params,
                                )?
                                .i64(0)?;
                            *t += n.max(0) as u64;
                        }
                        let sql = format!(
                            "SELECT {select_cols}, _seq FROM {} WHERE {scope} ORDER BY _seq LIMIT ?",
                            quote_ident(&table.name)
                        );
                        params.push(int(i64::from(room) + 1));
                        let mut last = after;
                        let (mut read, mut more) = (0u32, false);
                        let bytes = &mut page_bytes;
                        c.query_each(&sql, &params, &mut |r| {
                            if read == room || *bytes >= MAX_PAGE_BYTES {
                                more = true;
                                return Ok(false);
                            }
                            read += 1;
                            last = r.int(ncols + 1)?;
                            *bytes += rows.push(r, &kinds)?.size;
                            Ok(true)
                        })?;
                        room -= read;
                        if more {
                            has_more = true;
                            cursor.phase = Phase::Window { to, after: last };
                        } else {
                            cursor.evaluated_at = Some(to);
                            cursor.phase = Phase::Changes;
                        }
                    }
                    _ => {
                        cursor.evaluated_at = Some(to);
                        cursor.phase = Phase::Changes;
                    }
                }
            }

            let scope = format!(
                "_seq > ? AND (_seq > ? OR (_deleted = 0 AND {}))",
                predicate.sql
            );
            if cursor.phase == Phase::Changes && room == 0 {
                has_more = true;
            } else if cursor.phase == Phase::Changes {
                let selection = crate::selection::Scope {
                    dialect,
                    model: &self.cached_model().model,
                    profile,
                    ctx: &profile.filter_context(now),
                    hwm,
                    snapshot: cursor.snapshot,
                    cache: &self.selections,
                };
                let read = crate::selection::Read {
                    select_cols: &select_cols,
                    kinds: &kinds,
                };
                // The walk's rows lead the page's rows (in `_seq` order, the
                // snapshot's first) unless rows of the window phase do.
                let walk_leads = rows.is_empty();
                let walked = crate::selection::walk(
                    c,
                    &selection,
                    table,
                    &predicate,
                    &read,
                    cursor.since,
                    room,
                    &mut rows,
                )?;
                let (entries, more) = match walked {
                    Some(w) => (w.entries, w.more),
                    None => {
                        // A row at or before the snapshot is only in the
                        // result when it qualifies (the scope says so), so
                        // the select list evaluates the predicate only for
                        // later rows: every related rule's sub-query is then
                        // built once per page, not twice.
                        let sql = format!(
                            "SELECT {select_cols}, _seq,
                               CASE WHEN _seq <= ? THEN 1 WHEN _deleted = 0 AND {pred} THEN 1 ELSE 0 END
                             FROM {t} WHERE {scope} ORDER BY _seq LIMIT ?",
                            pred = predicate.sql,
                            t = quote_ident(&table.name),
                        );
                        let mut params: Vec<Value> = vec![int(cursor.snapshot)];
                        params.extend(predicate.params.iter().cloned());
                        params.push(int(cursor.since));
                        params.push(int(cursor.snapshot));
                        params.extend(predicate.params.iter().cloned());
                        params.push(int(i64::from(room) + 1));
                        let mut entries = Vec::new();
                        // The window phase's rows count toward the page's bytes.
                        let (mut more, mut bytes) = (false, page_bytes);
                        c.query_each(&sql, &params, &mut |r| {
                            if entries.len() == room as usize || bytes >= MAX_PAGE_BYTES {
                                more = true;
                                return Ok(false);
                            }
                            let seq = r.int(ncols + 1)?;
                            let entry = if r.int(ncols + 2)? == 1 {
                                Walked::Row(rows.push(r, &kinds)?)
                            } else {
                                Walked::Removed(r.text(1)?)
                            };
                            bytes += entry.approx_size();
                            entries.push((seq, entry));
                            Ok(true)
                        })?;
                        (entries, more)
                    }
                };
                let mut last_seq = cursor.since;
                let mut entries_in_snapshot = 0u64;
                let walked = entries.len() as u64;
                for (seq, entry) in entries {
                    last_seq = seq;
                    if seq <= cursor.snapshot {
                        entries_in_snapshot += 1;
                    }
                    match entry {
                        Walked::Row(_) => {
                            if walk_leads && seq <= cursor.snapshot {
                                snapshot_rows += 1;
                            }
                        }
                        Walked::Removed(id) => removed.push(id),
                    }
                }
                if let Some(t) = total.as_mut() {
                    *t += walked;
                    if more {
                        *t += estimate_rest(
                            c,
                            &table.name,
                            cursor.since,
                            cursor.snapshot,
                            last_seq,
                            entries_in_snapshot,
                        )?;
                    }
                }
                if more {
                    has_more = true;
                    cursor.since = last_seq;
                } else {
                    cursor.since = hwm.max(cursor.since);
                    cursor.phase = Phase::Rest;
                }
            }
            let mut columns = vec![VERSION_COLUMN.to_owned()];
            columns.extend(table.columns.iter().map(|c| c.name.clone()));
            let head = PullPage {
                table: table.name.clone(),
                profile_version,
                cursor: cursor.encode(),
                has_more,
                total,
                snapshot_rows,
                columns,
                rows: Vec::new(),
                removed: Vec::new(),
            };
            Ok(PageOut {
                json: rows.page_json(&head, &removed)?,
                rows: rows.len(),
                removed: removed.len(),
                head,
            })
        })
    }

    /// The entries a pull of `table` from `cursor` would send, counted
    /// exactly for the progress of a download (`POST /v1/sync/counts`):
    /// the rows the rules select at or before the cursor's snapshot (every
    /// live selected row for the empty cursor), every row changed after it,
    /// and the rows a due relative-date window lets in. `None` for a cursor
    /// this server did not issue. It evaluates the rules on every row of
    /// the table once, as the download's walk does (the cost is in
    /// `docs/performance.md`); the pages' own `total` stays an estimate.
    pub fn count_entries(
        &self,
        profile: &SyncProfile,
        table: &SyncTable,
        cursor: &str,
    ) -> ApiResult<Option<u64>> {
        let Some(parsed) = Cursor::parse(cursor) else {
            return Ok(None);
        };
        let now = self.clock.now_ms();
        let dialect = self.dialect();
        let ctx = profile.filter_context(now);
        let predicate = rules::compile_in(dialect, profile, table, &ctx);
        let t = quote_ident(&table.name);
        self.read(|c| {
            let count = |c: &mut dyn Conn, sql: &str, params: &[Value]| -> ApiResult<u64> {
                Ok(c.query_one(sql, params)?.i64(0)?.max(0) as u64)
            };
            let Some(cur) = parsed else {
                return count(
                    c,
                    &format!("SELECT COUNT(*) FROM {t} WHERE _deleted = 0 AND {}", predicate.sql),
                    &predicate.params,
                )
                .map(Some);
            };
            let mut params = vec![int(cur.since), int(cur.snapshot)];
            params.extend(predicate.params.iter().cloned());
            let mut n = count(
                c,
                &format!(
                    "SELECT COUNT(*) FROM {t} WHERE _seq > ? AND (_seq > ? OR (_deleted = 0 AND {}))",
                    predicate.sql
                ),
                &params,
            )?;
            let related_after = match cur.phase {
                Phase::Rest if related_tables_changed(c, table, cur.since)? => Some(0),
                Phase::Related { after } => Some(after),
                _ => None,
            };
            if let Some(after) = related_after
                && let Some((changed, changed_params)) =
                    related_changed_sql(profile, table, cur.since)
            {
                let mut params = vec![int(cur.since), int(after)];
                params.extend(predicate.params.iter().cloned());
                params.extend(changed_params);
                n += count(
                    c,
                    &format!(
                        "SELECT COUNT(*) FROM {t} WHERE _deleted = 0 AND _seq <= ? AND _seq > ? AND {} AND {changed}",
                        predicate.sql
                    ),
                    &params,
                )?;
            }
            let window = match cur.phase {
                Phase::Rest | Phase::Related { .. } if cur.window_due(profile, table, now) => {
                    Some((now, 0))
                }
                Phase::Window { to, after } => Some((to, after)),
                _ => None,
            };
            if let Some((to, after)) = window {
                let then = cur.evaluated_at.unwrap_or(to);
                if let (Some(now_p), Some(then_p)) = (
                    rules::compile_clock_rules(dialect, profile, table, &profile.filter_context(to)),
                    rules::compile_clock_rules(dialect, profile, table, &profile.filter_context(then)),
                ) {
                    let mut params = vec![int(cur.since), int(after)];
                    params.extend(now_p.params.iter().cloned());
                    params.extend(then_p.params.iter().cloned());
                    n += count(
                        c,
                        &format!(
                            "SELECT COUNT(*) FROM {t} WHERE _deleted = 0 AND _seq <= ? AND _seq > ? AND {} AND NOT {}",
                            now_p.sql, then_p.sql
                        ),
                        &params,
                    )?;
                }
            }
            Ok(Some(n))
        })
    }

    /// Live rows of `table` whose `column` holds one of `values` and that
    /// the user's rules select (`POST /v1/sync/fetch`).
    pub fn fetch(
        &self,
        profile: &SyncProfile,
        table: &SyncTable,
        column: &str,
        values: &[Value],
    ) -> ApiResult<FetchResponse> {
        let col = table.column(column).ok_or_else(|| {
            ApiError::bad_request(
                codes::UNKNOWN_COLUMN,
                format!("column '{column}' is not synced for table '{}'", table.name),
            )
        })?;
        if values.is_empty() || values.len() > MAX_FETCH_VALUES {
            return Err(ApiError::bad_request(
                codes::BAD_REQUEST,
                format!("a fetch asks for 1 to {MAX_FETCH_VALUES} values"),
            ));
        }
        let mut clean = Vec::with_capacity(values.len());
        for v in values {
            if *v == Value::Null {
                return Err(ApiError::bad_request(
                    codes::INVALID_VALUE,
                    "a fetch value is null",
                ));
            }
            clean.push(v.clone().coerce(col.kind).map_err(|e| {
                ApiError::bad_request(codes::INVALID_VALUE, format!("column '{column}': {e}"))
            })?);
        }
        let predicate = rules::compile_in(self.dialect(), profile, table, &self.ctx(profile));
        let sql = fetch_sql(table, column, clean.len(), &predicate.sql);
        let mut params = clean;
        params.extend(predicate.params.iter().cloned());
        let rows = self.read(|c| c.query(&sql, &params))?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let mut values = Vec::with_capacity(table.columns.len() + 1);
            values.push(Value::Integer(r.i64(0)?));
            for (i, c) in table.columns.iter().enumerate() {
                values.push(r.value(i + 1, c.kind));
            }
            out.push(values);
        }
        let mut columns = vec![VERSION_COLUMN.to_owned()];
        columns.extend(table.columns.iter().map(|c| c.name.clone()));
        Ok(FetchResponse {
            table: table.name.clone(),
            profile_version: profile.version,
            columns,
            rows: out,
        })
    }

    // ---- rows --------------------------------------------------------------

    /// A table of the model as this instance last read it: the request
    /// resolved its profile (or read the model) first, which reads a newer
    /// version; this runs inside write transactions, where another read
    /// would take a second connection.
    fn schema(&self, table: &str) -> ApiResult<TableSchema> {
        self.cached_model()
            .model
            .table(table)
            .cloned()
            .ok_or_else(|| {
                ApiError::bad_request(codes::UNKNOWN_TABLE, format!("unknown table '{table}'"))
            })
    }

    fn read_row(c: &mut dyn Conn, schema: &TableSchema, id: &str) -> ApiResult<Option<StoredRow>> {
        let cols: Vec<String> = schema
            .columns
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect();
        let sql = format!(
            "SELECT {}, _version, _deleted FROM {} WHERE {} = ?",
            cols.join(", "),
            quote_ident(&schema.name),
            quote_ident(&schema.primary_key)
        );
        match c.query_opt(&sql, &[text(id)])? {
            Some(r) => {
                let mut fields = BTreeMap::new();
                for (i, col) in schema.columns.iter().enumerate() {
                    fields.insert(col.name.clone(), r.value(i, col.kind));
                }
                Ok(Some(StoredRow {
                    fields,
                    version: r.i64(schema.columns.len())?,
                    deleted: r.bool(schema.columns.len() + 1)?,
                }))
            }
            None => Ok(None),
        }
    }

    fn visible(
        &self,
        c: &mut dyn Conn,
        profile: &SyncProfile,
        table: &SyncTable,
        id: &str,
    ) -> ApiResult<bool> {
        let p = rules::compile_in(c.dialect(), profile, table, &self.ctx(profile));
        let sql = format!(
            "SELECT 1 FROM {} WHERE {} = ? AND _deleted = 0 AND {}",
            quote_ident(&table.name),
            quote_ident(&table.primary_key),
            p.sql
        );
        let mut params = vec![text(id)];
        params.extend(p.params);
        c.exists(&sql, &params)
    }

    /// Whether writing `data` into a row of `table` would point a
    /// relationship at a row its writer cannot already reach: the reason,
    /// or `None` when the write gains no reach.
    ///
    /// A related rule grants reach through the rows of another table
    /// (work orders through the user's bookings' `work_order_id`), so a
    /// relationship a user writes is one of the rows it may read tomorrow.
    /// Each value that a related rule of the profile reads, set or changed
    /// by this write, must name live rows that the profile selects today,
    /// every one of them; a value naming no row is refused too, since a row
    /// created under that key later would be reached.
    fn reach_gained(
        &self,
        c: &mut dyn Conn,
        profile: &SyncProfile,
        table: &SyncTable,
        current: Option<&StoredRow>,
        data: &BTreeMap<String, Value>,
    ) -> ApiResult<Option<String>> {
        let live = current.filter(|r| !r.deleted);
        for reached in &profile.tables {
            for rule in &reached.rules {
                let RowRule::Related {
                    table: through,
                    column,
                    foreign_column,
                } = rule
                else {
                    continue;
                };
                if through != &table.name {
                    continue;
                }
                let Some(value) = data.get(foreign_column).filter(|v| **v != Value::Null) else {
                    continue;
                };
                if live.and_then(|r| r.fields.get(foreign_column)) == Some(value) {
                    continue;
                }
                let target = quote_ident(&reached.name);
                let key = quote_ident(column);
                let all = c
                    .query_one(
                        &format!("SELECT COUNT(*) FROM {target} WHERE {key} = ? AND _deleted = 0"),
                        std::slice::from_ref(value),
                    )?
                    .i64(0)?;
                let selected = rules::compile_in(c.dialect(), profile, reached, &self.ctx(profile));
                let mut params = vec![value.clone()];
                params.extend(selected.params);
                let reachable = c
                    .query_one(
                        &format!(
                            "SELECT COUNT(*) FROM {target} WHERE {key} = ? AND _deleted = 0 AND {}",
                            selected.sql
                        ),
                        &params,
                    )?
                    .i64(0)?;
                if all == 0 || reachable < all {
                    return Ok(Some(format!(
                        "column '{foreign_column}' must point at a {} row you can already reach",
                        reached.name
                    )));
                }
            }
        }
        Ok(None)
    }

    /// Writes a change and logs it. `replace` sets every column (missing
    /// ones null); otherwise only the given columns change. Returns the new
    /// version and the change's id in the change log.
    fn apply_write(
        &self,
        c: &mut dyn Conn,
        schema: &TableSchema,
        id: &str,
        change: Option<(&BTreeMap<String, Value>, bool)>,
        user_id: Option<&str>,
        device_id: Option<&str>,
    ) -> ApiResult<(i64, i64)> {
        let current = Self::read_row(c, schema, id)?;
        let version = current.as_ref().map(|r| r.version).unwrap_or(0) + 1;
        let now = self.now_text();
        let op = match (&change, &current) {
            (None, _) => "delete",
            (Some(_), Some(r)) if !r.deleted => "update",
            _ => "insert",
        };
        let log = [
            text(schema.name.clone()),
            text(id),
            text(op),
            int(version),
            opt_text(user_id),
            opt_text(device_id),
            text(now.clone()),
        ];
        // SQLite: the change log's key is its sequence, taken inside the one
        // write transaction. PostgreSQL: the change is pending until
        // `stamp_sequences` gives it its sequence at commit; its data row
        // carries minus the change's id meanwhile.
        let (change_id, seq) = match c.dialect() {
            Dialect::Sqlite => {
                let seq = c
                    .query_one(
                        "INSERT INTO _fs_change_log (tbl, row_id, op, version, user_id, device_id, at)
                         VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING seq",
                        &log,
                    )?
                    .i64(0)?;
                (seq, seq)
            }
            Dialect::Postgres if cfg!(feature = "naive-sequence") => {
                let r = c.query_one(
                    "INSERT INTO _fs_change_log (tbl, row_id, op, version, user_id, device_id, at, seq)
                     VALUES (?, ?, ?, ?, ?, ?, ?, nextval('_fs_change_seq')) RETURNING id, seq",
                    &log,
                )?;
                (r.i64(0)?, r.i64(1)?)
            }
            Dialect::Postgres => {
                let change_id = c
                    .query_one(
                        "INSERT INTO _fs_change_log (tbl, row_id, op, version, user_id, device_id, at)
                         VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
                        &log,
                    )?
                    .i64(0)?;
                (change_id, -change_id)
            }
        };
        match change {
            None => {
                c.execute(
                    &format!(
                        "UPDATE {} SET _deleted = 1, _version = ?, _seq = ?, _updated_at = ? WHERE {} = ?",
                        quote_ident(&schema.name),
                        quote_ident(&schema.primary_key)
                    ),
                    &[int(version), int(seq), text(now), text(id)],
                )?;
            }
            Some((data, replace)) => {
                let replace = replace || current.as_ref().is_none_or(|r| r.deleted);
                let mut names = vec![quote_ident(&schema.primary_key)];
                let mut values: Vec<Value> = vec![text(id)];
                for col in &schema.columns {
                    if col.name == schema.primary_key {
                        continue;
                    }
                    match data.get(&col.name) {
                        Some(v) => {
                            names.push(quote_ident(&col.name));
                            values.push(v.clone());
                        }
                        // A new row takes the model's default for a
                        // column not sent (a device that has not learned
                        // the column yet sends none).
                        None if replace => {
                            names.push(quote_ident(&col.name));
                            values.push(col.default.clone().unwrap_or(Value::Null));
                        }
                        None => {}
                    }
                }
                let sets: Vec<String> = names[1..]
                    .iter()
                    .map(|n| format!("{n} = excluded.{n}"))
                    .chain(
                        [
                            "_version = excluded._version",
                            "_seq = excluded._seq",
                            "_deleted = 0",
                            "_updated_at = excluded._updated_at",
                        ]
                        .map(String::from),
                    )
                    .collect();
                let placeholders: Vec<&str> = (0..names.len() + 3).map(|_| "?").collect();
                let sql = format!(
                    "INSERT INTO {} ({}, _version, _seq, _updated_at) VALUES ({}) ON CONFLICT ({}) DO UPDATE SET {}",
                    quote_ident(&schema.name),
                    names.join(", "),
                    placeholders.join(", "),
                    quote_ident(&schema.primary_key),
                    sets.join(", ")
                );
                values.push(int(version));
                values.push(int(seq));
                values.push(text(now));
                c.execute(&sql, &values)?;
            }
        }
        Ok((version, change_id))
    }

    /// The change log's key column (`seq` on SQLite, `id` on PostgreSQL).
    fn change_key(c: &dyn Conn) -> &'static str {
        match c.dialect() {
            Dialect::Sqlite => "seq",
            Dialect::Postgres => "id",
        }
    }

    fn project(fields: &BTreeMap<String, Value>, table: &SyncTable) -> BTreeMap<String, Value> {
        table
            .columns
            .iter()
            .map(|c| {
                (
                    c.name.clone(),
                    fields.get(&c.name).cloned().unwrap_or(Value::Null),
                )
            })
            .collect()
    }

    // ---- push --------------------------------------------------------------

    /// Applies a device's mutations in order, idempotently, in one transaction.
    /// The writes of a device transaction (marked with a `TransactionMark`, one
    /// after the other) apply whole or not at all (see `push_transaction`).
    pub fn push(
        &self,
        user: &User,
        device_id: Option<&str>,
        profile: &SyncProfile,
        mutations: &[Mutation],
    ) -> ApiResult<Vec<MutationResult>> {
        self.write(|c| {
            let detection = Self::conflict_detection_in(c)?;
            let mut results = Vec::with_capacity(mutations.len());
            let mut rest = mutations;
            while let Some(first) = rest.first() {
                let len = match &first.transaction {
                    None => 1,
                    Some(t) => rest
                        .iter()
                        .take_while(|m| m.transaction.as_ref().is_some_and(|u| u.id == t.id))
                        .count(),
                };
                let (group, tail) = rest.split_at(len);
                rest = tail;
                if first.transaction.is_some() {
                    results.extend(
                        self.push_transaction(c, user, device_id, profile, group, detection)?,
                    );
                    continue;
                }
                let m = first;
                let digest = match self.receipt_answer(c, user, device_id, m)? {
                    Answer::Known(result) | Answer::Refused(result) => {
                        results.push(result);
                        continue;
                    }
                    Answer::New(digest) => digest,
                };
                let result = self.apply_one(c, user, device_id, profile, m, detection)?;
                if let Outcome::Failed(result) = &result
                    && result.status == MutationStatus::Rejected
                {
                    self.log_sync_error(c, user, device_id, m, result, "rejected")?;
                }
                let result = result.into_result();
                self.write_receipt(c, user, m, &result, digest)?;
                results.push(result);
            }
            Ok(results)
        })
    }

    /// What the receipts say of `m`: its stored result (a replay), a refusal
    /// of its key (logged; no receipt is written for it), or the digest of a
    /// change not yet seen.
    fn receipt_answer(
        &self,
        c: &mut dyn Conn,
        user: &User,
        device_id: Option<&str>,
        m: &Mutation,
    ) -> ApiResult<Answer> {
        // A key that cannot name a receipt refuses its mutation alone, like
        // every other problem of one mutation; with no receipt, a retry is
        // refused the same way.
        if m.idempotency_key.is_empty() || m.idempotency_key.len() > 128 {
            let result = refused_key(
                m,
                codes::BAD_REQUEST,
                "an idempotency key is 1 to 128 characters",
            );
            self.log_sync_error(c, user, device_id, m, &result, "rejected")?;
            return Ok(Answer::Refused(result));
        }
        let digest = mutation_digest(m)?;
        let stored = c.query_opt(
            "SELECT result, mutation_digest FROM _fs_push_receipts WHERE user_id = ? AND idempotency_key = ?",
            &[text(user.id.clone()), text(m.idempotency_key.clone())],
        )?;
        let Some(stored) = stored else {
            return Ok(Answer::New(digest));
        };
        // A receipt written before digests were kept (NULL) answers any
        // replay, as it did then.
        let reused = stored.opt_text(1)?.is_some_and(|first| first != digest);
        if reused {
            let result = refused_key(
                m,
                codes::IDEMPOTENCY_KEY_REUSED,
                "this idempotency key was used for another change; the first change's result stands (send each change with a key of its own)",
            );
            self.log_sync_error(c, user, device_id, m, &result, "rejected")?;
            return Ok(Answer::Refused(result));
        }
        let result = serde_json::from_str(&stored.text(0)?)
            .map_err(|e| ApiError::internal(format!("stored receipt: {e}")))?;
        Ok(Answer::Known(result))
    }

    /// Applies one mutation under a savepoint: applied, or failed (a
    /// conflict, logged by `push_one`, or a refusal, rolled back and not
    /// yet logged).
    fn apply_one(
        &self,
        c: &mut dyn Conn,
        user: &User,
        device_id: Option<&str>,
        profile: &SyncProfile,
        m: &Mutation,
        detection: bool,
    ) -> ApiResult<Outcome> {
        c.batch("SAVEPOINT mutation")?;
        match self.push_one(c, user, device_id, profile, m, detection) {
            Ok(r) => {
                c.batch("RELEASE SAVEPOINT mutation")?;
                Ok(if r.status == MutationStatus::Applied {
                    Outcome::Applied(r)
                } else {
                    Outcome::Failed(r)
                })
            }
            Err(PushFail::Fatal(e)) => Err(e),
            Err(PushFail::Reject(Rejection {
                code,
                message,
                row,
                version,
            })) => {
                c.batch("ROLLBACK TO SAVEPOINT mutation; RELEASE SAVEPOINT mutation")?;
                Ok(Outcome::Failed(MutationResult {
                    idempotency_key: m.idempotency_key.clone(),
                    status: MutationStatus::Rejected,
                    version,
                    row,
                    error: Some(ErrorBody {
                        code: code.into(),
                        message,
                    }),
                }))
            }
        }
    }

    fn write_receipt(
        &self,
        c: &mut dyn Conn,
        user: &User,
        m: &Mutation,
        result: &MutationResult,
        digest: String,
    ) -> ApiResult<()> {
        let body = serde_json::to_string(result).map_err(|e| ApiError::internal(e.to_string()))?;
        c.execute(
            "INSERT INTO _fs_push_receipts (user_id, idempotency_key, result, at, mutation_digest) VALUES (?, ?, ?, ?, ?)",
            &[
                text(user.id.clone()),
                text(m.idempotency_key.clone()),
                text(body),
                text(format_datetime(self.clock.now_ms())),
                text(digest),
            ],
        )?;
        Ok(())
    }

    /// The server's row of `table`/`id` as the device may see it, and its
    /// version (0 and none when the row is gone or outside the profile).
    fn device_view(
        &self,
        c: &mut dyn Conn,
        profile: &SyncProfile,
        table: &str,
        id: &str,
    ) -> ApiResult<(i64, Option<BTreeMap<String, Value>>)> {
        let in_force = self.cached_model();
        let (Some(t), Some(schema)) = (profile.table(table), in_force.model.table(table)) else {
            return Ok((0, None));
        };
        match Self::read_row(c, schema, id)? {
            Some(r) if !r.deleted && self.visible(c, profile, t, id)? => {
                Ok((r.version, Some(Self::project(&r.fields, t))))
            }
            _ => Ok((0, None)),
        }
    }

    /// Applies the writes of one device transaction, whole or not at all.
    ///
    /// The group must be complete (as many writes as each one's
    /// `TransactionMark::size` says) and every key must name a receipt;
    /// otherwise every write is refused and nothing applies. A replay
    /// answers from the receipts. Otherwise the writes apply in order under
    /// one savepoint; the first that is refused (either conflict setting) or
    /// conflicts (detection on) rolls the whole transaction back: it keeps
    /// its own result, every other write is refused with
    /// `transaction_aborted`, each result carries the server's row as it
    /// stands after the rollback, and every result is logged as a sync
    /// error and kept as the write's receipt.
    fn push_transaction(
        &self,
        c: &mut dyn Conn,
        user: &User,
        device_id: Option<&str>,
        profile: &SyncProfile,
        group: &[Mutation],
        detection: bool,
    ) -> ApiResult<Vec<MutationResult>> {
        let refuse_all = |this: &Self, c: &mut dyn Conn, code: &str, message: &str| {
            let mut out = Vec::with_capacity(group.len());
            for m in group {
                let result = refused_key(m, code, message);
                this.log_sync_error(c, user, device_id, m, &result, "rejected")?;
                out.push(result);
            }
            Ok::<_, ApiError>(out)
        };
        let declared = group
            .first()
            .and_then(|m| m.transaction.as_ref())
            .map(|t| (t.id.clone(), t.size));
        let Some((tx_id, size)) = declared else {
            return Ok(Vec::new());
        };
        if tx_id.is_empty() || tx_id.len() > 128 {
            return refuse_all(
                self,
                c,
                codes::BAD_REQUEST,
                "a transaction id is 1 to 128 characters; nothing of the transaction was applied",
            );
        }
        if group
            .iter()
            .any(|m| m.transaction.as_ref().is_none_or(|t| t.size != size))
            || size as usize != group.len()
        {
            return refuse_all(
                self,
                c,
                codes::BAD_REQUEST,
                &format!(
                    "transaction '{tx_id}' declares {size} writes but the request holds {} of them in a row; a transaction travels whole in one request, nothing of it was applied",
                    group.len()
                ),
            );
        }
        let mut answers = Vec::with_capacity(group.len());
        for m in group {
            answers.push(self.receipt_answer(c, user, device_id, m)?);
        }
        let known = answers
            .iter()
            .filter(|a| matches!(a, Answer::Known(_)))
            .count();
        let all_new = answers.iter().all(|a| matches!(a, Answer::New(_)));
        if !all_new {
            // A replay (every write known) answers from the receipts; a
            // refused key, or a group part known and part new, applies
            // nothing.
            let mut out = Vec::with_capacity(group.len());
            for (m, a) in group.iter().zip(answers) {
                out.push(match a {
                    Answer::Known(r) | Answer::Refused(r) => r,
                    Answer::New(_) => {
                        let message = if known > 0 {
                            "other writes of this transaction were already answered under their keys; nothing more of it was applied"
                        } else {
                            "another write of this transaction was refused for its idempotency key; nothing of the transaction was applied"
                        };
                        let r = refused_key(m, codes::TRANSACTION_ABORTED, message);
                        self.log_sync_error(c, user, device_id, m, &r, "rejected")?;
                        r
                    }
                });
            }
            return Ok(out);
        }
        c.batch("SAVEPOINT device_transaction")?;
        let mut applied = Vec::with_capacity(group.len());
        let mut failed = None;
        for (i, m) in group.iter().enumerate() {
            match self.apply_one(c, user, device_id, profile, m, detection)? {
                Outcome::Applied(r) => applied.push(r),
                Outcome::Failed(r) => {
                    failed = Some((i, r));
                    break;
                }
            }
        }
        let mut results = Vec::with_capacity(group.len());
        match failed {
            None => {
                c.batch("RELEASE SAVEPOINT device_transaction")?;
                results = applied;
            }
            Some((culprit, failure)) => {
                // Everything the transaction wrote goes, the culprit's
                // conflict log entry included (logged again below).
                c.batch(
                    "ROLLBACK TO SAVEPOINT device_transaction; RELEASE SAVEPOINT device_transaction",
                )?;
                let what = if failure.status == MutationStatus::Conflict {
                    "conflicted with the server's row"
                } else {
                    "was refused"
                };
                let reason = failure
                    .error
                    .as_ref()
                    .map(|e| format!(": {}", e.message))
                    .unwrap_or_default();
                let bad = &group[culprit];
                for (i, m) in group.iter().enumerate() {
                    let (version, row) = self.device_view(c, profile, &m.table, &m.id)?;
                    let (result, kind) = if i == culprit {
                        let kind = if failure.status == MutationStatus::Conflict {
                            "conflict"
                        } else {
                            "rejected"
                        };
                        (
                            MutationResult {
                                version,
                                row,
                                ..failure.clone()
                            },
                            kind,
                        )
                    } else {
                        (
                            MutationResult {
                                idempotency_key: m.idempotency_key.clone(),
                                status: MutationStatus::Rejected,
                                version,
                                row,
                                error: Some(ErrorBody {
                                    code: codes::TRANSACTION_ABORTED.into(),
                                    message: format!(
                                        "write {} of this transaction ({}/{}) {what}{reason}; nothing of the transaction was applied",
                                        culprit + 1,
                                        bad.table,
                                        bad.id
                                    ),
                                }),
                            },
                            "rejected",
                        )
                    };
                    self.log_sync_error(c, user, device_id, m, &result, kind)?;
                    results.push(result);
                }
            }
        }
        for ((m, result), answer) in group.iter().zip(&results).zip(answers) {
            if let Answer::New(digest) = answer {
                self.write_receipt(c, user, m, result, digest)?;
            }
        }
        Ok(results)
    }

    fn log_sync_error(
        &self,
        c: &mut dyn Conn,
        user: &User,
        device_id: Option<&str>,
        m: &Mutation,
        result: &MutationResult,
        kind: &str,
    ) -> ApiResult<()> {
        let device_data = if m.op == Op::Delete {
            None
        } else {
            Some(serde_json::to_string(&m.data).map_err(|e| ApiError::internal(e.to_string()))?)
        };
        let server_data = result
            .row
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let (code, message) = match &result.error {
            Some(e) => (e.code.clone(), e.message.clone()),
            None => (codes::CONFLICT.to_owned(), "the record changed on the server since the device read it; the server's version was kept".to_owned()),
        };
        let (device_data, device_data_cut) = kept_data(device_data)?;
        let (server_data, server_data_cut) = kept_data(server_data)?;
        let last_error = format!("{}/{}: {code}: {message}", m.table, m.id);
        c.execute(
            "INSERT INTO _fs_sync_errors (at, kind, code, message, tbl, row_id, user_id, device_id, action, idempotency_key, base_version, server_version, device_data, server_data, device_data_cut, server_data_cut)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            &[
                text(self.now_text()),
                text(kind),
                text(code),
                text(message),
                text(m.table.clone()),
                text(m.id.clone()),
                text(user.id.clone()),
                opt_text(device_id),
                text(m.op.as_str()),
                text(m.idempotency_key.clone()),
                int(m.base_version),
                int(result.version),
                opt_text(device_data),
                opt_text(server_data),
                opt_text(device_data_cut),
                opt_text(server_data_cut),
            ],
        )?;
        // The device's last error, for the device list (`GET
        // /v1/admin/devices`); the device row may not exist yet (the push
        // is its first request).
        if let Some(device) = device_id.filter(|d| device_id_ok(d)) {
            let now = self.now_text();
            c.execute(
                "INSERT INTO _fs_devices (id, user_id, first_seen, last_seen, last_error)
                 VALUES (?, ?, ?, ?, ?)
                 ON CONFLICT (id, user_id) DO UPDATE SET last_error = excluded.last_error",
                &[
                    text(device),
                    text(user.id.clone()),
                    text(now.clone()),
                    text(now),
                    text(last_error),
                ],
            )?;
        }
        Ok(())
    }

    fn push_one(
        &self,
        c: &mut dyn Conn,
        user: &User,
        device_id: Option<&str>,
        profile: &SyncProfile,
        m: &Mutation,
        detection: bool,
    ) -> Result<MutationResult, PushFail> {
        let Some(table) = profile.table(&m.table) else {
            return Err(Rejection::new(
                codes::NOT_IN_PROFILE,
                format!("table '{}' is not in your offline profile", m.table),
            )
            .into());
        };
        let schema = &self.schema(&m.table)?;
        if m.id.is_empty() || m.id.len() > 256 {
            return Err(
                Rejection::new(codes::BAD_REQUEST, "a record id is 1 to 256 characters").into(),
            );
        }
        if c.dialect() == Dialect::Postgres && m.id.contains('\0') {
            return Err(Rejection::new(
                codes::INVALID_VALUE,
                "a record id holding U+0000 cannot be stored by this server",
            )
            .into());
        }
        let current = Self::read_row(c, schema, &m.id)?;
        let exists = current.as_ref().is_some_and(|r| !r.deleted);
        let server_version = current.as_ref().map(|r| r.version).unwrap_or(0);
        let live_version = if exists { server_version } else { 0 };
        let visible_before = exists && self.visible(c, profile, table, &m.id)?;
        let server_row = if visible_before {
            current.as_ref().map(|r| Self::project(&r.fields, table))
        } else {
            None
        };
        let reject = |code: &'static str, message: String| -> PushFail {
            PushFail::Reject(Rejection {
                code,
                message,
                row: server_row.clone(),
                version: if server_row.is_some() {
                    live_version
                } else {
                    0
                },
            })
        };
        if exists && !visible_before {
            return Err(Rejection::new(
                codes::FORBIDDEN,
                "this record is outside your offline profile",
            )
            .into());
        }
        let size = row_size(&m.data);
        if size > MAX_ROW_BYTES {
            return Err(reject(
                codes::PAYLOAD_TOO_LARGE,
                format!("the row is {size} bytes; at most {MAX_ROW_BYTES} are allowed"),
            ));
        }
        let mut data = BTreeMap::new();
        for (name, value) in &m.data {
            if name == &table.primary_key {
                if value != &Value::Text(m.id.clone()) {
                    return Err(reject(
                        codes::INVALID_VALUE,
                        "the primary key field differs from the record id".into(),
                    ));
                }
                continue;
            }
            let Some(column) = table.column(name) else {
                return Err(reject(
                    codes::UNKNOWN_COLUMN,
                    format!("column '{name}' is not synced for table '{}'", m.table),
                ));
            };
            let v = column
                .check(value.clone())
                .map_err(|e| reject(codes::INVALID_VALUE, format!("column '{name}': {e}")))?;
            data.insert(name.clone(), v);
        }
        if let Some(name) = unstorable_text(c.dialect(), &data) {
            return Err(reject(
                codes::INVALID_VALUE,
                format!("column '{name}': text holding U+0000 cannot be stored by this server"),
            ));
        }
        if let Some(message) = table.writes.refusal(table, m.op, data.keys()) {
            return Err(reject(codes::FORBIDDEN, message));
        }
        if m.op == Op::Insert
            && !exists
            && let Some(col) = missing_required(schema, &data)
        {
            return Err(reject(
                codes::INVALID_VALUE,
                format!("column '{col}': the column is required"),
            ));
        }
        if m.op != Op::Delete
            && let Some(message) = self.reach_gained(c, profile, table, current.as_ref(), &data)?
        {
            return Err(reject(codes::FORBIDDEN, message));
        }
        if m.op != Op::Delete {
            let size = merged_size(current.as_ref(), &data);
            if size > MAX_ROW_BYTES {
                return Err(reject(
                    codes::PAYLOAD_TOO_LARGE,
                    format!(
                        "the row would be {size} bytes with this change; at most {MAX_ROW_BYTES} are allowed"
                    ),
                ));
            }
        }
        if detection {
            let conflict = match m.op {
                Op::Insert => exists,
                Op::Update => !exists || server_version != m.base_version,
                // A row already gone is what the delete asks for: not a
                // conflict, whoever deleted it first.
                Op::Delete => exists && server_version != m.base_version,
            };
            if conflict {
                let result = MutationResult {
                    idempotency_key: m.idempotency_key.clone(),
                    status: MutationStatus::Conflict,
                    version: live_version,
                    row: server_row.clone(),
                    error: None,
                };
                self.log_sync_error(c, user, device_id, m, &result, "conflict")?;
                return Ok(result);
            }
        }
        let change = match m.op {
            Op::Delete if !exists => None,
            Op::Delete => {
                Some(self.apply_write(c, schema, &m.id, None, Some(&user.id), device_id)?)
            }
            // A new row: every column not sent is null. Over a live row
            // (the device wins): the device states the row as its profile
            // sees it, so its columns it did not send become null; columns
            // outside its profile are not its to clear.
            Op::Insert => {
                let replace = !exists;
                if exists {
                    for col in &table.columns {
                        if col.name != table.primary_key {
                            data.entry(col.name.clone()).or_insert(Value::Null);
                        }
                    }
                }
                Some(self.apply_write(
                    c,
                    schema,
                    &m.id,
                    Some((&data, replace)),
                    Some(&user.id),
                    device_id,
                )?)
            }
            Op::Update => Some(self.apply_write(
                c,
                schema,
                &m.id,
                Some((&data, false)),
                Some(&user.id),
                device_id,
            )?),
        };
        // A delete of a row already deleted answers the tombstone's version
        // (0 when the row never existed), like a delete applied now.
        let version = change.map_or(
            if m.op == Op::Delete {
                server_version
            } else {
                0
            },
            |(v, _)| v,
        );
        if let Some((_, change_id)) = change {
            // Audit: which upload produced this change (replays never add one).
            let key = Self::change_key(c);
            c.execute(
                &format!("UPDATE _fs_change_log SET idempotency_key = ? WHERE {key} = ?"),
                &[text(m.idempotency_key.clone()), int(change_id)],
            )?;
        }
        let visible_after = m.op != Op::Delete && self.visible(c, profile, table, &m.id)?;
        if !exists && m.op != Op::Delete && !visible_after {
            return Err(Rejection::new(
                codes::FORBIDDEN,
                "you may only create records your offline profile selects",
            )
            .into());
        }
        let row = if visible_after {
            Self::read_row(c, schema, &m.id)?.map(|r| Self::project(&r.fields, table))
        } else {
            None
        };
        Ok(MutationResult {
            idempotency_key: m.idempotency_key.clone(),
            status: MutationStatus::Applied,
            version,
            row,
            error: None,
        })
    }

    // ---- records API -------------------------------------------------------

    /// Reads a live row. With `scope`, only a row the scope's rules select,
    /// projected onto its columns.
    pub fn record(
        &self,
        table: &str,
        id: &str,
        scope: Option<(&SyncProfile, &SyncTable, &str)>,
    ) -> ApiResult<Option<(BTreeMap<String, Value>, i64)>> {
        let schema = &self.schema(table)?;
        self.read(|c| {
            let Some(row) = Self::read_row(c, schema, id)? else {
                return Ok(None);
            };
            if row.deleted {
                return Ok(None);
            }
            match scope {
                Some((p, t, _)) => {
                    if !self.visible(c, p, t, id)? {
                        return Ok(None);
                    }
                    Ok(Some((Self::project(&row.fields, t), row.version)))
                }
                None => Ok(Some((row.fields, row.version))),
            }
        })
    }

    /// Lists live rows ordered by primary key after `after`.
    pub fn records(
        &self,
        table: &str,
        after: Option<&str>,
        limit: u32,
        scope: Option<(&SyncProfile, &SyncTable, &str)>,
        filter: &[(String, Value)],
    ) -> ApiResult<Vec<(BTreeMap<String, Value>, i64)>> {
        let schema = &self.schema(table)?;
        let limit = limit.clamp(1, 1000);
        let cols: Vec<String> = schema
            .columns
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect();
        let mut params: Vec<Value> = Vec::new();
        let mut sql = format!(
            "SELECT {}, _version FROM {} WHERE _deleted = 0",
            cols.join(", "),
            quote_ident(&schema.name)
        );
        if let Some(after) = after {
            sql.push_str(&format!(" AND {} > ?", quote_ident(&schema.primary_key)));
            params.push(text(after));
        }
        if let Some((profile, t, _)) = scope {
            let p = rules::compile_in(self.dialect(), profile, t, &self.ctx(profile));
            sql.push_str(&format!(" AND {}", p.sql));
            params.extend(p.params);
        }
        // Online-mode equality filters (columns checked by the caller).
        for (column, value) in filter {
            if *value == Value::Null {
                sql.push_str(&format!(" AND {} IS NULL", quote_ident(column)));
            } else {
                sql.push_str(&format!(" AND {} = ?", quote_ident(column)));
                params.push(value.clone());
            }
        }
        sql.push_str(&format!(
            " ORDER BY {} LIMIT ?",
            quote_ident(&schema.primary_key)
        ));
        params.push(int(i64::from(limit)));
        let rows = self.read(|c| c.query(&sql, &params))?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let mut fields = BTreeMap::new();
            for (i, col) in schema.columns.iter().enumerate() {
                fields.insert(col.name.clone(), r.value(i, col.kind));
            }
            let version = r.i64(schema.columns.len())?;
            out.push(match scope {
                Some((_, t, _)) => (Self::project(&fields, t), version),
                None => (fields, version),
            });
        }
        Ok(out)
    }

    /// Writes fields of a row as a back-office user (creating it if missing).
    /// With `base_version`, refuses with 409 when the row changed since.
    pub fn write_record(
        &self,
        table: &str,
        id: &str,
        data: &BTreeMap<String, Value>,
        base_version: Option<i64>,
        user_id: &str,
    ) -> ApiResult<RecordWritten> {
        self.write_record_within(None, table, id, data, base_version, user_id)
    }

    /// [`Db::write_record`] within the write rights the writer's profile
    /// declares for the table (`rights`, its profile table, if any): a
    /// create or change they do not allow is refused with 403 `forbidden`.
    pub fn write_record_within(
        &self,
        rights: Option<&SyncTable>,
        table: &str,
        id: &str,
        data: &BTreeMap<String, Value>,
        base_version: Option<i64>,
        user_id: &str,
    ) -> ApiResult<RecordWritten> {
        let schema = &self.schema(table)?;
        if id.is_empty() || id.len() > 256 {
            return Err(ApiError::bad_request(
                codes::BAD_REQUEST,
                "a record id is 1 to 256 characters",
            ));
        }
        let size = row_size(data);
        if size > MAX_ROW_BYTES {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                codes::PAYLOAD_TOO_LARGE,
                format!("the row is {size} bytes; at most {MAX_ROW_BYTES} are allowed"),
            ));
        }
        let mut clean = BTreeMap::new();
        for (name, value) in data {
            let col = schema.column(name).ok_or_else(|| {
                ApiError::bad_request(
                    codes::UNKNOWN_COLUMN,
                    format!("unknown column '{name}' in table '{table}'"),
                )
            })?;
            if name == &schema.primary_key {
                if value != &Value::Text(id.to_owned()) {
                    return Err(ApiError::bad_request(
                        codes::INVALID_VALUE,
                        "the primary key field differs from the record id",
                    ));
                }
                continue;
            }
            clean.insert(
                name.clone(),
                col.check(value.clone()).map_err(|e| {
                    ApiError::bad_request(codes::INVALID_VALUE, format!("column '{name}': {e}"))
                })?,
            );
        }
        if let Some(name) = unstorable_text(self.dialect(), &clean) {
            return Err(ApiError::bad_request(
                codes::INVALID_VALUE,
                format!("column '{name}': text holding U+0000 cannot be stored by this server"),
            ));
        }
        self.write(|c| {
            let current = Self::read_row(c, schema, id)?;
            if current.as_ref().is_none_or(|r| r.deleted)
                && let Some(col) = missing_required(schema, &clean)
            {
                return Err(ApiError::bad_request(
                    codes::INVALID_VALUE,
                    format!("column '{col}': the column is required"),
                ));
            }
            let size = merged_size(current.as_ref(), &clean);
            if size > MAX_ROW_BYTES {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    codes::PAYLOAD_TOO_LARGE,
                    format!(
                        "the row would be {size} bytes with this change; at most {MAX_ROW_BYTES} are allowed"
                    ),
                ));
            }
            let live_version = current
                .as_ref()
                .filter(|r| !r.deleted)
                .map(|r| r.version)
                .unwrap_or(0);
            let op = if live_version == 0 { Op::Insert } else { Op::Update };
            if let Some(why) = rights.and_then(|t| t.writes.refusal(t, op, clean.keys())) {
                return Err(ApiError::forbidden(why));
            }
            if let Some(base) = base_version.filter(|b| *b != live_version) {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    codes::CONFLICT,
                    format!("the record is at version {live_version}, not {base}"),
                ));
            }
            let (version, _) =
                self.apply_write(c, schema, id, Some((&clean, false)), Some(user_id), None)?;
            let row = Self::read_row(c, schema, id)?
                .map(|r| r.fields)
                .unwrap_or_default();
            Ok(RecordWritten {
                row,
                version,
                created: live_version == 0,
            })
        })
    }

    /// Deletes a row as a back-office user. False when there was none; a
    /// conflict when `base_version` is given and the row is at another.
    pub fn delete_record(
        &self,
        table: &str,
        id: &str,
        base_version: Option<i64>,
        user_id: &str,
    ) -> ApiResult<bool> {
        self.delete_record_within(None, table, id, base_version, user_id)
    }

    /// [`Db::delete_record`] within the write rights the writer's profile
    /// declares for the table (see [`Db::write_record_within`]).
    pub fn delete_record_within(
        &self,
        rights: Option<&SyncTable>,
        table: &str,
        id: &str,
        base_version: Option<i64>,
        user_id: &str,
    ) -> ApiResult<bool> {
        let schema = &self.schema(table)?;
        self.write(|c| {
            let current = match Self::read_row(c, schema, id)? {
                Some(r) if !r.deleted => r,
                _ => return Ok(false),
            };
            if let Some(why) =
                rights.and_then(|t| t.writes.refusal(t, Op::Delete, std::iter::empty()))
            {
                return Err(ApiError::forbidden(why));
            }
            if let Some(base) = base_version.filter(|b| *b != current.version) {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    codes::CONFLICT,
                    format!("the record is at version {}, not {base}", current.version),
                ));
            }
            self.apply_write(c, schema, id, None, Some(user_id), None)?;
            Ok(true)
        })
    }

    /// Writes many rows in one transaction (seeding).
    pub fn bulk_insert(
        &self,
        table: &str,
        rows: &[(String, BTreeMap<String, Value>)],
    ) -> ApiResult<()> {
        let schema = &self.schema(table)?;
        self.write(|c| {
            for (id, data) in rows {
                self.apply_write(c, schema, id, Some((data, true)), None, None)?;
            }
            Ok(())
        })
    }

    // ---- sync errors -------------------------------------------------------

    /// Entries of the Sync Errors log, newest first.
    pub fn sync_errors(&self, filter: &SyncErrorFilter) -> ApiResult<Vec<SyncErrorEntry>> {
        let mut sql = format!("SELECT {SYNC_ERROR_COLUMNS} FROM _fs_sync_errors WHERE 1 = 1");
        let mut params = Vec::new();
        for (column, value) in [
            ("user_id", &filter.user),
            ("tbl", &filter.table),
            ("kind", &filter.kind),
        ] {
            if let Some(v) = value {
                sql.push_str(&format!(" AND {column} = ?"));
                params.push(text(v.clone()));
            }
        }
        if let Some(before) = filter.before {
            sql.push_str(" AND id < ?");
            params.push(int(before));
        }
        sql.push_str(" ORDER BY id DESC LIMIT ?");
        params.push(int(i64::from(filter.limit.unwrap_or(200).min(1000))));
        self.read(|c| {
            c.query(&sql, &params)?
                .iter()
                .map(sync_error_from_row)
                .collect()
        })
    }

    /// Number of entries in the change log (for tests and the console).
    pub fn change_count(&self, table: &str, id: &str) -> ApiResult<i64> {
        self.read(|c| {
            c.query_one(
                "SELECT COUNT(*) FROM _fs_change_log WHERE tbl = ? AND row_id = ?",
                &[text(table), text(id)],
            )?
            .i64(0)
        })
    }
}

/// A mutation the server refuses; it still gets a receipt.
struct Rejection {
    code: &'static str,
    message: String,
    row: Option<BTreeMap<String, Value>>,
    version: i64,
}

impl Rejection {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            row: None,
            version: 0,
        }
    }
}

/// What the receipts say of a mutation (see `Db::receipt_answer`).
enum Answer {
    /// A replay: the first result stands.
    Known(MutationResult),
    /// Refused for its key; no receipt is written.
    Refused(MutationResult),
    /// Not seen before: the digest its receipt will keep.
    New(String),
}

/// What applying one mutation did (see `Db::apply_one`).
enum Outcome {
    Applied(MutationResult),
    /// A conflict (logged) or a refusal (not yet logged).
    Failed(MutationResult),
}

impl Outcome {
    fn into_result(self) -> MutationResult {
        match self {
            Outcome::Applied(r) | Outcome::Failed(r) => r,
        }
    }
}

/// Why a mutation did not apply: refused (answered, with a receipt) or a
/// server fault (the whole batch fails and the device retries it).
enum PushFail {
    Reject(Rejection),
    Fatal(ApiError),
}

impl From<Rejection> for PushFail {
    fn from(r: Rejection) -> Self {
        PushFail::Reject(r)
    }
}

impl From<ApiError> for PushFail {
    fn from(e: ApiError) -> Self {
        PushFail::Fatal(e)
    }
}

/// Stamps the current PostgreSQL transaction's pending changes with their
/// sequence numbers, in commit order (see the module documentation). Must be
/// the last step before `COMMIT`: the advisory lock it takes is released by
/// the commit.
fn stamp_sequences(
    client: &mut postgres::Client,
    model: &DataModel,
) -> Result<(), postgres::Error> {
    if cfg!(feature = "naive-sequence") {
        return Ok(());
    }
    let pending = client.query(
        "SELECT 1 FROM _fs_change_log WHERE seq IS NULL LIMIT 1",
        &[],
    )?;
    if pending.is_empty() {
        return Ok(());
    }
    client.execute("SELECT pg_advisory_xact_lock($1)", &[&PG_SEQUENCE_LOCK])?;
    let stamped = client.query(
        "WITH p AS (SELECT id FROM _fs_change_log WHERE seq IS NULL ORDER BY id),
              s AS (SELECT id, nextval('_fs_change_seq') AS seq FROM p)
         UPDATE _fs_change_log c SET seq = s.seq FROM s WHERE c.id = s.id
         RETURNING c.tbl, c.row_id, c.seq",
        &[],
    )?;
    // A row changed twice in one transaction keeps its last change's sequence.
    let mut last: BTreeMap<(String, String), i64> = BTreeMap::new();
    for r in &stamped {
        let key = (r.try_get::<_, String>(0)?, r.try_get::<_, String>(1)?);
        let seq: i64 = r.try_get(2)?;
        let e = last.entry(key).or_insert(seq);
        *e = (*e).max(seq);
    }
    let mut per_table: BTreeMap<String, (Vec<String>, Vec<i64>)> = BTreeMap::new();
    for ((table, id), seq) in last {
        let e = per_table.entry(table).or_default();
        e.0.push(id);
        e.1.push(seq);
    }
    for (table, (ids, seqs)) in per_table {
        let Some(schema) = model.table(&table) else {
            continue;
        };
        client.execute(
            format!(
                "UPDATE {t} SET _seq = v.seq FROM unnest($1::text[], $2::bigint[]) AS v(id, seq)
                 WHERE {t}.{pk} = v.id",
                t = quote_ident(&schema.name),
                pk = quote_ident(&schema.primary_key),
            )
            .as_str(),
            &[&ids, &seqs],
        )?;
    }
    Ok(())
}

// ---- admin web console ------------------------------------------------------

/// A signed-in admin web console session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleSession {
    /// Who signed in: `admin token` or `user <id>`.
    pub admin: String,
    /// The session's anti-forgery token, embedded in every console form.
    pub csrf_token: String,
}

/// The latest retry of a Sync Errors entry by an administrator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncErrorRetry {
    pub sync_error_id: i64,
    pub at: String,
    pub retried_by: String,
    /// Whether the device's change was applied.
    pub outcome: RetryOutcome,
    /// Version of the record after the retried change was applied (0 when
    /// it failed).
    pub version: i64,
    /// Why the change still could not be applied (a failed retry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// How a retry of a Sync Errors entry ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryOutcome {
    /// The device's change was applied; the entry cannot be retried again.
    Applied,
    /// A rule still refused the change; nothing changed, and the entry may
    /// be retried again.
    Failed,
}

impl RetryOutcome {
    fn as_str(self) -> &'static str {
        match self {
            RetryOutcome::Applied => "applied",
            RetryOutcome::Failed => "failed",
        }
    }

    fn parse(s: &str) -> RetryOutcome {
        match s {
            "failed" => RetryOutcome::Failed,
            _ => RetryOutcome::Applied,
        }
    }
}

/// Distinct values of the Sync Errors log, for the console's filters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SyncErrorFacets {
    pub users: Vec<String>,
    pub tables: Vec<String>,
    pub kinds: Vec<String>,
}

/// The newest Sync Errors entry of one device.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceLastError {
    pub at: String,
    pub message: String,
}

/// [`Db::touch_device`] inside the caller's write transaction (telemetry
/// records a device's app version with its events). Ignores a device id
/// that is empty or longer than 128 bytes.
pub(crate) fn touch_device_in(
    c: &mut dyn Conn,
    now: &str,
    device_id: &str,
    user_id: &str,
    synced: bool,
    app_version: Option<&str>,
) -> ApiResult<()> {
    if !device_id_ok(device_id) {
        return Ok(());
    }
    let now = now.to_owned();
    let synced_at = synced.then(|| now.clone());
    c.execute(
        "INSERT INTO _fs_devices (id, user_id, first_seen, last_seen, last_sync_at, app_version)
         VALUES (?1, ?2, ?3, ?3, ?4, ?5)
         ON CONFLICT (id, user_id) DO UPDATE SET last_seen = excluded.last_seen,
           last_sync_at = COALESCE(excluded.last_sync_at, _fs_devices.last_sync_at),
           app_version = COALESCE(excluded.app_version, _fs_devices.app_version)",
        &[
            text(device_id),
            text(user_id),
            text(now),
            opt_text(synced_at),
            opt_text(app_version),
        ],
    )?;
    Ok(())
}

/// A new user bearer token: `fs_` and 64 hex digits (256 random bits).
fn user_token() -> String {
    format!("fs_{}", random_token())
}

/// Ends the console sessions an admin user opened (see
/// `console::auth::login`, which names them `user {id}`).
fn end_console_sessions(c: &mut dyn Conn, user_id: &str) -> ApiResult<()> {
    c.execute(
        "DELETE FROM _fs_console_sessions WHERE admin = ?",
        &[text(format!("user {user_id}"))],
    )?;
    Ok(())
}

fn random_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

const SYNC_ERROR_COLUMNS: &str = "id, at, kind, code, message, tbl, row_id, user_id, device_id, action, idempotency_key, base_version, server_version, device_data, server_data, device_data_cut, server_data_cut";

fn sync_error_from_row(r: &Row) -> ApiResult<SyncErrorEntry> {
    Ok(SyncErrorEntry {
        id: r.i64(0)?,
        at: r.text(1)?,
        kind: r.text(2)?,
        code: r.text(3)?,
        message: r.text(4)?,
        table: r.text(5)?,
        record_id: r.text(6)?,
        user_id: r.text(7)?,
        device_id: r.opt_text(8)?,
        action: r.text(9)?,
        idempotency_key: r.text(10)?,
        base_version: r.i64(11)?,
        server_version: r.i64(12)?,
        device_data: json_opt(r.opt_text(13)?),
        server_data: json_opt(r.opt_text(14)?),
        device_data_cut: json_opt(r.opt_text(15)?),
        server_data_cut: json_opt(r.opt_text(16)?),
    })
}

impl Db {
    /// Opens a console session for `admin`, valid for `ttl_ms`; returns the
    /// session id (only its hash is stored) and its anti-forgery token.
    /// Expired sessions are removed on the way.
    pub fn create_console_session(&self, admin: &str, ttl_ms: i64) -> ApiResult<(String, String)> {
        let id = random_token();
        let csrf = random_token();
        let now = self.now_ms();
        self.write(|c| {
            c.execute(
                "DELETE FROM _fs_console_sessions WHERE expires_ms <= ?",
                &[int(now)],
            )?;
            c.execute(
                "INSERT INTO _fs_console_sessions (id_hash, csrf_token, admin, created_at, expires_ms) VALUES (?, ?, ?, ?, ?)",
                &[
                    text(hash_token(&id)),
                    text(csrf.clone()),
                    text(admin),
                    text(self.now_text()),
                    int(now.saturating_add(ttl_ms)),
                ],
            )?;
            Ok(())
        })?;
        Ok((id, csrf))
    }

    /// The live console session with this id.
    pub fn console_session(&self, session_id: &str) -> ApiResult<Option<ConsoleSession>> {
        let hash = hash_token(session_id);
        let now = self.now_ms();
        self.read(|c| {
            c.query_opt(
                "SELECT admin, csrf_token FROM _fs_console_sessions WHERE id_hash = ? AND expires_ms > ?",
                &[text(hash.clone()), int(now)],
            )?
            .map(|r| {
                Ok(ConsoleSession {
                    admin: r.text(0)?,
                    csrf_token: r.text(1)?,
                })
            })
            .transpose()
        })
    }

    /// Ends a console session (signing out).
    pub fn delete_console_session(&self, session_id: &str) -> ApiResult<()> {
        let hash = hash_token(session_id);
        self.write(|c| {
            c.execute(
                "DELETE FROM _fs_console_sessions WHERE id_hash = ?",
                &[text(hash.clone())],
            )?;
            Ok(())
        })
    }

    /// The user with this id.
    pub fn user_by_id(&self, id: &str) -> ApiResult<Option<User>> {
        self.read(|c| user_by_id_in(c, id))
    }

    /// One entry of the Sync Errors log.
    pub fn sync_error(&self, id: i64) -> ApiResult<Option<SyncErrorEntry>> {
        self.read(|c| {
            c.query_opt(
                &format!("SELECT {SYNC_ERROR_COLUMNS} FROM _fs_sync_errors WHERE id = ?"),
                &[int(id)],
            )?
            .as_ref()
            .map(sync_error_from_row)
            .transpose()
        })
    }

    /// Distinct users, tables and kinds of the Sync Errors log.
    pub fn sync_error_facets(&self) -> ApiResult<SyncErrorFacets> {
        self.read(|c| {
            let mut distinct = |column: &str| -> ApiResult<Vec<String>> {
                c.query(
                    &format!(
                        "SELECT DISTINCT {column} FROM _fs_sync_errors ORDER BY {column} LIMIT 500"
                    ),
                    &[],
                )?
                .iter()
                .map(|r| r.text(0))
                .collect()
            };
            Ok(SyncErrorFacets {
                users: distinct("user_id")?,
                tables: distinct("tbl")?,
                kinds: distinct("kind")?,
            })
        })
    }

    /// Retries of the given Sync Errors entries, by entry id.
    pub fn sync_error_retries(&self, ids: &[i64]) -> ApiResult<BTreeMap<i64, SyncErrorRetry>> {
        if ids.is_empty() {
            return Ok(BTreeMap::new());
        }
        let placeholders = vec!["?"; ids.len()].join(", ");
        let sql = format!(
            "SELECT sync_error_id, at, retried_by, version, outcome, message FROM _fs_sync_error_retries WHERE sync_error_id IN ({placeholders})"
        );
        let params: Vec<Value> = ids.iter().map(|i| int(*i)).collect();
        let rows = self.read(|c| c.query(&sql, &params))?;
        let mut out = BTreeMap::new();
        for r in &rows {
            let retry = SyncErrorRetry {
                sync_error_id: r.i64(0)?,
                at: r.text(1)?,
                retried_by: r.text(2)?,
                version: r.i64(3)?,
                outcome: RetryOutcome::parse(&r.text(4)?),
                message: r.opt_text(5)?,
            };
            out.insert(retry.sync_error_id, retry);
        }
        Ok(out)
    }

    /// The newest Sync Errors entry of each (device, user).
    pub fn device_last_errors(&self) -> ApiResult<BTreeMap<(String, String), DeviceLastError>> {
        let rows = self.read(|c| {
            c.query(
                "SELECT e.device_id, e.user_id, e.at, e.message FROM _fs_sync_errors e
                 JOIN (SELECT device_id, user_id, MAX(id) AS id FROM _fs_sync_errors
                       WHERE device_id IS NOT NULL GROUP BY device_id, user_id) last ON last.id = e.id",
                &[],
            )
        })?;
        rows.iter()
            .map(|r| {
                Ok((
                    (r.text(0)?, r.text(1)?),
                    DeviceLastError {
                        at: r.text(2)?,
                        message: r.text(3)?,
                    },
                ))
            })
            .collect()
    }
    /// Re-applies the device's change logged in Sync Errors entry `id`, as
    /// the logged user would push it but with conflict detection bypassed:
    /// the device's data wins. The write goes into the change log (with the
    /// logged user and device), so devices pull it; the entry is marked
    /// retried (outcome `applied`). Refuses an entry already retried with
    /// success (409). When a rule still refuses the change (for example a
    /// record outside the user's offline profile), nothing changes but the
    /// entry's retry record, marked `failed` with the reason, and the
    /// answer is that refusal (409, or 400 when the user was deleted), with
    /// the failed retry's record; such an entry may be retried again.
    pub fn retry_sync_error(
        &self,
        id: i64,
        retried_by: &str,
    ) -> ApiResult<Result<SyncErrorRetry, (SyncErrorRetry, ApiError)>> {
        let entry = self
            .sync_error(id)?
            .ok_or_else(|| ApiError::not_found(format!("no sync error {id}")))?;
        if entry.device_data_cut.is_some() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                codes::CONFLICT,
                "the device's data was too large to keep in the log; this change cannot be retried",
            ));
        }
        let op = Op::parse(&entry.action).ok_or_else(|| {
            ApiError::internal(format!("logged action '{}' is unknown", entry.action))
        })?;
        let at = self.now_text();
        let user = self.user_by_id(&entry.user_id)?;
        let profile = user.as_ref().map(|u| self.sync_profile(u)).transpose()?;
        let mutation = Mutation {
            idempotency_key: format!("console-retry-{id}"),
            table: entry.table.clone(),
            id: entry.record_id.clone(),
            op,
            base_version: entry.base_version,
            data: entry.device_data.clone().unwrap_or_default(),
            transaction: None,
        };
        let retry = self.write(|c| {
            let done = c.query_opt(
                "SELECT at FROM _fs_sync_error_retries WHERE sync_error_id = ? AND outcome = 'applied'",
                &[int(id)],
            )?;
            if let Some(when) = done.map(|r| r.text(0)).transpose()? {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    codes::CONFLICT,
                    format!("sync error {id} was already retried at {when}"),
                ));
            }
            let outcome = match (&user, &profile) {
                (Some(user), Some(profile)) => {
                    c.batch("SAVEPOINT retry")?;
                    match self.push_one(
                        c,
                        user,
                        entry.device_id.as_deref(),
                        profile,
                        &mutation,
                        false,
                    ) {
                        Ok(r) => {
                            c.batch("RELEASE SAVEPOINT retry")?;
                            Ok(r.version)
                        }
                        Err(PushFail::Fatal(e)) => return Err(e),
                        Err(PushFail::Reject(r)) => {
                            c.batch("ROLLBACK TO SAVEPOINT retry; RELEASE SAVEPOINT retry")?;
                            Err((
                                r.code,
                                format!("the device's change still cannot be applied: {}", r.message),
                            ))
                        }
                    }
                }
                _ => Err((
                    codes::BAD_REQUEST,
                    format!("user '{}' no longer exists", entry.user_id),
                )),
            };
            let retry = match &outcome {
                Ok(version) => SyncErrorRetry {
                    sync_error_id: id,
                    at: at.clone(),
                    retried_by: retried_by.to_owned(),
                    outcome: RetryOutcome::Applied,
                    version: *version,
                    message: None,
                },
                Err((_, message)) => SyncErrorRetry {
                    sync_error_id: id,
                    at: at.clone(),
                    retried_by: retried_by.to_owned(),
                    outcome: RetryOutcome::Failed,
                    version: 0,
                    message: Some(message.clone()),
                },
            };
            c.execute(
                "DELETE FROM _fs_sync_error_retries WHERE sync_error_id = ?",
                &[int(id)],
            )?;
            c.execute(
                "INSERT INTO _fs_sync_error_retries (sync_error_id, at, retried_by, version, outcome, message) VALUES (?, ?, ?, ?, ?, ?)",
                &[
                    int(id),
                    text(at.clone()),
                    text(retried_by),
                    int(retry.version),
                    text(retry.outcome.as_str()),
                    opt_text(retry.message.clone()),
                ],
            )?;
            Ok((retry, outcome.err()))
        })?;
        Ok(match retry {
            (retry, None) => Ok(retry),
            (retry, Some((code, message))) => {
                let status = if code == codes::BAD_REQUEST {
                    StatusCode::BAD_REQUEST
                } else {
                    StatusCode::CONFLICT
                };
                Err((retry, ApiError::new(status, code, message)))
            }
        })
    }
}

#[cfg(test)]
mod retention_tests {
    use super::*;
    use fieldsync_protocol::protocol::{MutationStatus, Op};
    use fieldsync_protocol::telemetry::{
        TelemetryEvent, TelemetryKind, TelemetryMode, TelemetryNetwork, TelemetryResult,
    };
    use fieldsync_protocol::time::ManualClock;

    const DAY: i64 = 86_400_000;

    fn count(db: &Db, table: &str) -> i64 {
        db.read(|c| {
            c.query_one(&format!("SELECT COUNT(*) FROM {table}"), &[])?
                .i64(0)
        })
        .expect("count")
    }

    fn event(id: &str) -> TelemetryEvent {
        TelemetryEvent {
            id: id.into(),
            kind: TelemetryKind::Sync,
            device_id: "d1".into(),
            sync_id: "s1".into(),
            mode: TelemetryMode::Delta,
            result: TelemetryResult::Success,
            failure_type: None,
            started_at: 0,
            duration_ms: 1,
            active_duration_ms: 1,
            rows_up: 0,
            rows_down: 0,
            bytes_up: 0,
            bytes_down: 0,
            table: None,
            network_type: TelemetryNetwork::Wifi,
            app_version: "1".into(),
            device_model: "m".into(),
            os_version: "o".into(),
            conflicts: 0,
            rejected: 0,
            pending_uploads: None,
        }
    }

    /// Receipts answer replays for their retention and are purged after it,
    /// telemetry likewise; the purge reads the server's clock and deletes in
    /// batches.
    #[test]
    fn receipts_and_telemetry_are_purged_after_their_retention() {
        on_sqlite(purge_scenario);
    }

    /// The same on PostgreSQL, when the test command provides a cluster
    /// (`scripts/with-postgres.sh` sets `FIELDSYNC_TEST_POSTGRES`).
    #[test]
    fn receipts_and_telemetry_are_purged_after_their_retention_on_postgres() {
        if let Some(db) = test_support::fresh_postgres_db() {
            purge_scenario(db);
        }
    }

    /// The Sync Errors log is bounded: a rejected change's data past
    /// [`SYNC_ERROR_DATA_BYTES`] is kept as its size and digest only (and
    /// cannot be retried), the log pages by id, and entries go after their
    /// retention with their retry records.
    #[test]
    fn sync_errors_are_bounded_paged_and_purged() {
        on_sqlite(sync_errors_scenario);
    }

    #[test]
    fn sync_errors_are_bounded_paged_and_purged_on_postgres() {
        if let Some(db) = test_support::fresh_postgres_db() {
            sync_errors_scenario(db);
        }
    }

    fn sync_errors_scenario(db: Db) {
        let clock = Arc::new(ManualClock::new(1_800_000_000_000));
        let db = db.with_clock(clock.clone());
        let user = technician(&db);
        let sync = db.sync_profile(&user).expect("profile");
        // A row over the row size limit: rejected, and logged.
        let mut huge = booking_insert(&db, "huge", "bk-huge", "huge");
        let notes = "n".repeat(fieldsync_protocol::protocol::MAX_ROW_BYTES + 1);
        huge.data.insert("notes".into(), Value::Text(notes));
        let result = db.push(&user, None, &sync, &[huge.clone()]).expect("push");
        assert_eq!(result[0].status, MutationStatus::Rejected);
        let json = serde_json::to_string(&huge.data).expect("json");
        let all = SyncErrorFilter::default();
        let logged = db.sync_errors(&all).expect("log");
        assert_eq!(logged.len(), 1);
        assert_eq!(logged[0].device_data, None);
        assert_eq!(
            logged[0].device_data_cut,
            Some(DataCut {
                bytes: json.len() as u64,
                sha256: hex::encode(Sha256::digest(json.as_bytes())),
            })
        );
        let stored: i64 = db
            .read(|c| {
                c.query_one(
                    "SELECT SUM(LENGTH(COALESCE(device_data, '')) + LENGTH(COALESCE(server_data, ''))) FROM _fs_sync_errors",
                    &[],
                )?
                .i64(0)
            })
            .expect("stored");
        assert!(
            stored <= 2 * SYNC_ERROR_DATA_BYTES as i64,
            "{stored} bytes kept"
        );
        let retry = db
            .retry_sync_error(logged[0].id, "admin")
            .expect_err("retry");
        assert_eq!(retry.code, codes::CONFLICT);

        // Small rejected changes keep their data; the log pages by id.
        for i in 0..5 {
            let mut m = booking_insert(&db, &format!("bad{i}"), &format!("bk-bad{i}"), "x");
            m.data.insert("no_such_column".into(), Value::Integer(i));
            db.push(&user, None, &sync, &[m]).expect("push");
        }
        let first = db
            .sync_errors(&SyncErrorFilter {
                limit: Some(4),
                ..Default::default()
            })
            .expect("page 1");
        assert_eq!(first.len(), 4);
        assert!(
            first
                .iter()
                .all(|e| e.device_data.is_some() && e.device_data_cut.is_none())
        );
        let rest = db
            .sync_errors(&SyncErrorFilter {
                limit: Some(4),
                before: first.last().map(|e| e.id),
                ..Default::default()
            })
            .expect("page 2");
        assert_eq!(rest.len(), 2);
        assert!(rest[0].id < first[3].id);
        assert_eq!(rest[1].id, logged[0].id);

        // Past the retention, every entry goes.
        let retention = Retention {
            receipts: Duration::from_secs(30 * 86_400),
            telemetry: Duration::from_secs(90 * 86_400),
            sync_errors: Duration::from_secs(90 * 86_400),
        };
        clock.advance(89 * DAY);
        assert_eq!(db.purge(&retention).expect("purge").sync_errors, 0);
        clock.advance(2 * DAY);
        assert_eq!(db.purge(&retention).expect("purge").sync_errors, 6);
        assert_eq!(count(&db, "_fs_sync_errors"), 0);
    }

    /// Runs `scenario` on a fresh SQLite database with the default model.
    fn on_sqlite(scenario: fn(Db)) {
        let dir = tempfile::tempdir().expect("dir");
        let profile = crate::field_service_profile();
        scenario(Db::open(dir.path(), crate::field_service_model(), &profile).expect("open"));
    }

    /// A technician with the default profile.
    fn technician(db: &Db) -> User {
        db.create_user(
            Some("tech-1".into()),
            "T",
            Role::Technician,
            "field-service",
            None,
        )
        .expect("user")
        .0
    }

    /// A receipt written before receipts kept their mutation's digest
    /// (migration 3 leaves it NULL) answers any replay of its key, as it
    /// did then; a receipt with a digest refuses another change.
    #[test]
    fn receipts_without_a_digest_answer_any_replay() {
        on_sqlite(digest_scenario);
    }

    #[test]
    fn receipts_without_a_digest_answer_any_replay_on_postgres() {
        if let Some(db) = test_support::fresh_postgres_db() {
            digest_scenario(db);
        }
    }

    /// The technician's new booking `id`, named `name`, starting within the
    /// next hour of the database's clock (so the technician's rules select
    /// it).
    fn booking_insert(db: &Db, key: &str, id: &str, name: &str) -> Mutation {
        Mutation {
            idempotency_key: key.into(),
            table: "bookings".into(),
            id: id.into(),
            op: Op::Insert,
            base_version: 0,
            data: BTreeMap::from([
                ("resource_id".into(), Value::Text("tech-1".into())),
                ("status".into(), Value::Text("active".into())),
                (
                    "start_time".into(),
                    Value::Text(format_datetime(db.now_ms() + 3_600_000)),
                ),
                ("name".into(), Value::Text(name.into())),
            ]),
            transaction: None,
        }
    }

    fn digest_scenario(db: Db) {
        let user = technician(&db);
        let sync = db.sync_profile(&user).expect("profile");
        let insert = |key: &str, id: &str, name: &str| booking_insert(&db, key, id, name);
        let first = db
            .push(
                &user,
                None,
                &sync,
                &[insert("old", "bk-1", "a"), insert("new", "bk-2", "a")],
            )
            .expect("push");
        assert!(
            first.iter().all(|r| r.status == MutationStatus::Applied),
            "{first:?}"
        );
        db.write(|c| {
            c.execute(
                "UPDATE _fs_push_receipts SET mutation_digest = NULL WHERE idempotency_key = ?",
                &[text("old")],
            )
        })
        .expect("receipt as before migration 3");
        let again = db
            .push(
                &user,
                None,
                &sync,
                &[insert("old", "bk-1", "b"), insert("new", "bk-2", "b")],
            )
            .expect("push");
        assert_eq!(again[0], first[0]);
        assert_eq!(again[1].status, MutationStatus::Rejected);
        assert_eq!(
            again[1].error.as_ref().map(|e| e.code.as_str()),
            Some(codes::IDEMPOTENCY_KEY_REUSED)
        );
        for id in ["bk-1", "bk-2"] {
            assert_eq!(db.change_count("bookings", id).expect("changes"), 1);
        }
    }

    fn purge_scenario(db: Db) {
        let clock = Arc::new(ManualClock::new(1_800_000_000_000));
        let db = db.with_clock(clock.clone());
        let user = technician(&db);
        let sync = db.sync_profile(&user).expect("profile");
        let insert = |key: &str, id: &str| booking_insert(&db, key, id, "visit");
        // More receipts than one batch, so the purge loops.
        let batch: Vec<Mutation> = (0..PURGE_BATCH + 7)
            .map(|i| insert(&format!("k{i}"), &format!("bk-{i}")))
            .collect();
        for chunk in batch.chunks(500) {
            db.push(&user, None, &sync, chunk).expect("push");
        }
        crate::telemetry::store(&db, "tech-1", &[event("e1"), event("e2")], db.now_ms())
            .expect("telemetry");
        let retention = Retention {
            receipts: Duration::from_secs(30 * 86_400),
            telemetry: Duration::from_secs(90 * 86_400),
            sync_errors: Duration::from_secs(90 * 86_400),
        };

        // Within the retention: nothing goes, and a replay answers the
        // stored result (the row is not written again).
        clock.advance(29 * DAY);
        assert_eq!(db.purge(&retention).expect("purge"), Purged::default());
        let replay = db.push(&user, None, &sync, &batch[..1]).expect("replay");
        assert_eq!(
            replay[0].status,
            MutationStatus::Applied,
            "{:?}",
            replay[0].error
        );
        assert_eq!(replay[0].version, 1);
        assert_eq!(db.change_count("bookings", "bk-0").expect("changes"), 1);

        // Past it: every receipt goes, telemetry stays until its own.
        clock.advance(2 * DAY);
        let purged = db.purge(&retention).expect("purge");
        assert_eq!(
            purged,
            Purged {
                receipts: PURGE_BATCH as u64 + 7,
                telemetry: 0,
                sync_errors: 0,
            }
        );
        assert_eq!(count(&db, "_fs_push_receipts"), 0);
        assert_eq!(count(&db, "_fs_telemetry"), 2);
        clock.advance(60 * DAY);
        let purged = db.purge(&retention).expect("purge");
        assert_eq!(purged.telemetry, 2);
        assert_eq!(count(&db, "_fs_telemetry"), 0);
        // The rows themselves stay.
        assert_eq!(count(&db, "bookings"), PURGE_BATCH + 7);
    }
}

/// Test helpers for the PostgreSQL variants of the unit tests.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// The test command's PostgreSQL cluster (`scripts/with-postgres.sh`
    /// sets `FIELDSYNC_TEST_POSTGRES`); `None` without it.
    pub(crate) fn postgres_base() -> Option<String> {
        std::env::var("FIELDSYNC_TEST_POSTGRES")
            .ok()
            .filter(|s| !s.is_empty())
    }

    /// A server database on a fresh PostgreSQL database of the test
    /// command's cluster; `None` without the cluster.
    pub(crate) fn fresh_postgres_db() -> Option<Db> {
        let base = postgres_base()?;
        let name = format!("fs_unit_{:016x}", rand::random::<u64>());
        let create = format!("CREATE DATABASE {name}");
        let admin = base.clone();
        std::thread::spawn(move || {
            let mut c = postgres::Client::connect(&admin, postgres::NoTls).expect("connect");
            c.batch_execute(&create).expect("create database");
        })
        .join()
        .expect("create thread");
        let (root, query) = match base.split_once('?') {
            Some((u, q)) => (u.to_owned(), format!("?{q}")),
            None => (base.clone(), String::new()),
        };
        let scheme_end = root.find("://").map_or(0, |i| i + 3);
        let host_end = root[scheme_end..]
            .find('/')
            .map_or(root.len(), |i| scheme_end + i);
        let url = format!("{}/{name}{query}", &root[..host_end]);
        let profile = crate::field_service_profile();
        // The test cluster's authority (`scripts/with-postgres.sh`).
        let ca = std::env::var("FIELDSYNC_DATABASE_CA_FILE")
            .ok()
            .map(|f| std::fs::read_to_string(f).expect("CA file"));
        let db = Db::open_url(
            &DatabaseUrl::parse(&url).expect("url"),
            crate::field_service_model(),
            &profile,
            ca.as_deref(),
            Arc::new(SystemClock),
        )
        .expect("open");
        Some(db)
    }
}
