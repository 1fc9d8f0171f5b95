//! The back ends: the SQLite connections (one writer, pooled readers) and
//! the PostgreSQL pool, the [`Db`] handle over them, and the one place that
//! runs a read snapshot or a write transaction on either ([`Db::read`],
//! [`Db::write`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use fieldsync_protocol::Clock;
use fieldsync_protocol::filter::FilterContext;
use fieldsync_protocol::profile::{DataModel, SyncProfile, quote_ident};
use fieldsync_protocol::time::format_datetime;
use rusqlite::config::DbConfig;
use rusqlite::{Connection, TransactionBehavior};

use crate::sql::{Conn, Dialect, PgClient, PgConn, SqliteConn, pg_retryable};
use crate::store_error::{StoreError, StoreResult};

pub const SCHEMA_VERSION: i64 = 8;

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
    pub fn parse(url: &str) -> StoreResult<DatabaseUrl> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            url.parse::<postgres::Config>().map_err(|e| {
                StoreError::internal(format!("the PostgreSQL URL does not parse: {e}"))
            })?;
            return Ok(DatabaseUrl::Postgres(url.to_owned()));
        }
        if let Some(path) = url.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(StoreError::internal("a sqlite: URL names a database file"));
            }
            return Ok(DatabaseUrl::Sqlite(PathBuf::from(path)));
        }
        Err(StoreError::internal(
            "a database URL starts with postgres://, postgresql:// or sqlite:",
        ))
    }
}

/// PostgreSQL connections of one server instance, opened on demand, at most
/// [`PG_CONNECTIONS`] at a time (a request waits up to
/// [`PG_CONNECT_WAIT`] for one, then gets 503).
pub(super) struct PgPool {
    pub(super) config: postgres::Config,
    pub(super) tls: crate::pgtls::RustlsConnect,
    pub(super) idle: Mutex<Vec<PgClient>>,
    /// Connections handed out or idle.
    pub(super) open: Mutex<usize>,
    pub(super) freed: std::sync::Condvar,
}

/// Most connections one server instance holds.
pub(super) const PG_CONNECTIONS: usize = 16;

/// Longest a request waits for a free connection.
pub(super) const PG_CONNECT_WAIT: Duration = Duration::from_secs(30);

/// Times a PostgreSQL write transaction is run again after a serialization
/// failure or deadlock before the request fails with 503.
pub(super) const PG_WRITE_ATTEMPTS: u32 = 12;

/// How long a starting instance waits for another's migration.
pub(super) const PG_MIGRATION_WAIT: Duration = Duration::from_secs(600);

/// Advisory lock held from stamping change sequences until commit.
pub(super) const PG_SEQUENCE_LOCK: i64 = 0x6669_656c_6473_0002;

impl PgPool {
    pub(super) fn new(config: postgres::Config, tls: crate::pgtls::RustlsConnect) -> Self {
        Self {
            config,
            tls,
            idle: Mutex::new(Vec::new()),
            open: Mutex::new(0),
            freed: std::sync::Condvar::new(),
        }
    }
    pub(super) fn get(&self) -> StoreResult<PgClient> {
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
                    return Err(StoreError::unavailable(
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
                StoreError::unavailable(message)
            })
    }
    pub(super) fn put(&self, client: PgClient) {
        if client.is_closed() {
            self.release_slot();
            return;
        }
        lock(&self.idle).push(client);
        self.freed.notify_one();
    }
    pub(super) fn release_slot(&self) {
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

pub(super) enum Backend {
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
    pub(super) clock: Arc<dyn Clock>,
    /// The data model in force, as this instance last read it (see
    /// [`Db::model`]).
    pub(super) model: std::sync::RwLock<crate::model::Shared>,
    pub(super) backend: Backend,
    /// Related rules' selected values, kept between the pages of first
    /// downloads (see [`crate::selection`]).
    pub(super) selections: crate::selection::SelectionCache,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(super) fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
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
    // Each statement text is prepared once per connection: a push request
    // alone uses a dozen (receipt lookups and inserts of a few widths, row
    // reads, upserts per column set), past rusqlite's default of 16.
    conn.set_prepared_statement_cache_capacity(SQLITE_STATEMENTS);
    Ok(conn)
}

/// Largest part of the embedded database file a connection maps (1 GiB).
pub(super) const SQLITE_MMAP_BYTES: i64 = 1 << 30;

/// Most prepared statements an embedded connection keeps.
const SQLITE_STATEMENTS: usize = 256;

/// Page cache of each embedded connection, in KiB (16 MiB).
pub(super) const SQLITE_CACHE_KIB: i64 = 16 * 1024;

impl Db {
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
    pub(super) fn ctx(&self, profile: &SyncProfile) -> FilterContext {
        profile.filter_context(self.clock.now_ms())
    }

    /// The SQL dialect of the back end.
    pub fn dialect(&self) -> Dialect {
        match self.backend {
            Backend::Sqlite { .. } => Dialect::Sqlite,
            Backend::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Runs `f` in a read-only snapshot.
    pub(crate) fn read<T>(
        &self,
        mut f: impl FnMut(&mut dyn Conn) -> StoreResult<T>,
    ) -> StoreResult<T> {
        match &self.backend {
            Backend::Sqlite { path, readers, .. } => {
                let conn = match lock(readers).pop() {
                    Some(c) => c,
                    None => open_connection(path)?,
                };
                let result = conn
                    .unchecked_transaction()
                    .map_err(StoreError::from)
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
        mut f: impl FnMut(&mut dyn Conn) -> StoreResult<T>,
    ) -> StoreResult<T> {
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
    pub(super) fn pg_write_once<T>(
        client: &mut PgClient,
        model: &DataModel,
        f: &mut impl FnMut(&mut dyn Conn) -> StoreResult<T>,
    ) -> (StoreResult<T>, bool) {
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
                    Err(StoreError::from(e))
                }
            },
            Err(e) => Err(e),
        };
        let _ = client.batch_execute("ROLLBACK");
        (out, retryable)
    }
}

/// Stamps the current PostgreSQL transaction's pending changes with their
/// sequence numbers, in commit order (see the module documentation). Must be
/// the last step before `COMMIT`: the advisory lock it takes is released by
/// the commit.
pub(super) fn stamp_sequences(
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
