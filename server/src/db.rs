//! The server's storage on embedded SQLite: the data model's tables, users,
//! offline profiles, settings, the change log, push receipts, the Sync
//! Errors log and devices.
//!
//! Every data table carries `_version` (bumped on each change), `_seq` (the
//! change-log sequence of its last change, which orders pulls) and
//! `_deleted` (deleted rows stay as tombstones so devices learn of the
//! deletion). One writer connection serialises writes; readers come from a
//! small pool and read WAL snapshots, so a pull page and the high-water mark
//! it reports always come from the same snapshot.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::http::StatusCode;
use fieldsync_core::filter::FilterContext;
use fieldsync_core::profile::{
    DataModel, OfflineProfile, SyncProfile, SyncTable, TableSchema, quote_ident,
};
use fieldsync_core::protocol::{
    ErrorBody, FetchResponse, MAX_FETCH_VALUES, MAX_PAGE_SIZE, MAX_ROW_BYTES, Mutation,
    MutationResult, MutationStatus, Op, PullPage, VERSION_COLUMN, codes,
};
use fieldsync_core::time::format_datetime;
use fieldsync_core::{Clock, SystemClock, Value};
use rusqlite::{
    Connection, OptionalExtension, Transaction, TransactionBehavior, params, params_from_iter,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{ApiError, ApiResult};
use crate::rules;

/// Current version of the server's own schema.
pub const SCHEMA_VERSION: i64 = 1;

const SYSTEM_SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS _fs_schema (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS _fs_users (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    profile TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS _fs_profiles (
    name TEXT PRIMARY KEY NOT NULL,
    version INTEGER NOT NULL,
    body TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS _fs_settings (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS _fs_change_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tbl TEXT NOT NULL,
    row_id TEXT NOT NULL,
    op TEXT NOT NULL,
    version INTEGER NOT NULL,
    user_id TEXT,
    device_id TEXT,
    idempotency_key TEXT,
    at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS _fs_push_receipts (
    user_id TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    result TEXT NOT NULL,
    at TEXT NOT NULL,
    PRIMARY KEY (user_id, idempotency_key)
);
CREATE TABLE IF NOT EXISTS _fs_sync_errors (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    kind TEXT NOT NULL,
    code TEXT NOT NULL,
    message TEXT NOT NULL,
    tbl TEXT NOT NULL,
    row_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    device_id TEXT,
    action TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    base_version INTEGER NOT NULL,
    server_version INTEGER NOT NULL,
    device_data TEXT,
    server_data TEXT
);
CREATE TABLE IF NOT EXISTS _fs_devices (
    id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    first_seen TEXT NOT NULL,
    last_seen TEXT NOT NULL,
    last_sync_at TEXT,
    app_version TEXT,
    last_error TEXT,
    PRIMARY KEY (id, user_id)
);
"#;

/// Tables of the admin web console (created additively beside
/// [`SYSTEM_SCHEMA`]): signed-in console sessions, kept in the database so
/// several stateless instances share them, and the retries of Sync Errors.
const CONSOLE_SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS _fs_console_sessions (
    id_hash TEXT PRIMARY KEY NOT NULL,
    csrf_token TEXT NOT NULL,
    admin TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS _fs_sync_error_retries (
    sync_error_id INTEGER PRIMARY KEY NOT NULL,
    at TEXT NOT NULL,
    retried_by TEXT NOT NULL,
    version INTEGER NOT NULL
);
"#;

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
}

/// Reads a user from a row of `SELECT id, name, role, profile, team_id`.
fn user_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: r.get(0)?,
        name: r.get(1)?,
        role: Role::parse(&r.get::<_, String>(2)?),
        profile: r.get(3)?,
        team_id: r.get(4)?,
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
            _ => return None,
        };
        Some(Some(Cursor {
            since,
            snapshot,
            evaluated_at: Some(evaluated_at),
            phase,
        }))
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
        }
    }
}

/// Hashes a bearer token for storage and lookup.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn now_text() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    format_datetime(ms)
}

/// A row as stored on the server.
#[derive(Debug, Clone)]
struct StoredRow {
    fields: BTreeMap<String, Value>,
    version: i64,
    deleted: bool,
}

/// Server storage.
pub struct Db {
    clock: Arc<dyn Clock>,
    path: PathBuf,
    model: DataModel,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(conn)
}

fn data_table_sql(t: &TableSchema) -> String {
    let mut cols = Vec::new();
    for c in &t.columns {
        if c.name == t.primary_key {
            cols.push(format!(
                "{} TEXT PRIMARY KEY NOT NULL",
                quote_ident(&c.name)
            ));
        } else {
            cols.push(format!("{} {}", quote_ident(&c.name), c.kind.sql_type()));
        }
    }
    cols.push("_version INTEGER NOT NULL".into());
    cols.push("_seq INTEGER NOT NULL".into());
    cols.push("_deleted INTEGER NOT NULL DEFAULT 0".into());
    cols.push("_updated_at TEXT NOT NULL".into());
    format!(
        "CREATE TABLE IF NOT EXISTS {name} ({cols});
         CREATE INDEX IF NOT EXISTS {idx} ON {name} (_seq);",
        name = quote_ident(&t.name),
        cols = cols.join(", "),
        idx = quote_ident(&format!("{}__seq", t.name)),
    )
}

/// Approximate size of a row's values, for the row size limit.
fn row_size(data: &BTreeMap<String, Value>) -> usize {
    data.iter().map(|(k, v)| k.len() + v.approx_size()).sum()
}

fn json_opt(text: Option<String>) -> Option<BTreeMap<String, Value>> {
    text.and_then(|t| serde_json::from_str(&t).ok())
}

impl Db {
    /// Opens (creating and migrating) the database in `data_dir`.
    pub fn open(
        data_dir: &Path,
        model: DataModel,
        default_profile: &OfflineProfile,
    ) -> ApiResult<Db> {
        model.validate()?;
        std::fs::create_dir_all(data_dir).map_err(|e| {
            ApiError::internal(format!("cannot create {}: {e}", data_dir.display()))
        })?;
        let path = data_dir.join("fieldsync.db");
        let mut writer = open_connection(&path)?;
        {
            let tx = writer.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute_batch(SYSTEM_SCHEMA)?;
            tx.execute_batch(CONSOLE_SCHEMA)?;
            let has_team: bool = tx
                .prepare("SELECT 1 FROM pragma_table_info('_fs_users') WHERE name = 'team_id'")?
                .exists([])?;
            if !has_team {
                tx.execute_batch("ALTER TABLE _fs_users ADD COLUMN team_id TEXT")?;
            }
            let version: Option<i64> = tx
                .query_row("SELECT version FROM _fs_schema", [], |r| r.get(0))
                .optional()?;
            match version {
                None => {
                    tx.execute(
                        "INSERT INTO _fs_schema (version) VALUES (?1)",
                        [SCHEMA_VERSION],
                    )?;
                }
                Some(v) if v > SCHEMA_VERSION => {
                    return Err(ApiError::internal(format!(
                        "the database has schema version {v}, newer than this server ({SCHEMA_VERSION})"
                    )));
                }
                Some(_) => {}
            }
            for t in &model.tables {
                tx.execute_batch(&data_table_sql(t))?;
                // Columns added to the model since the table was created.
                let existing: Vec<String> = {
                    let mut stmt =
                        tx.prepare(&format!("PRAGMA table_info({})", quote_ident(&t.name)))?;
                    let rows = stmt.query_map([], |r| r.get::<_, String>(1))?;
                    rows.collect::<rusqlite::Result<_>>()?
                };
                for c in &t.columns {
                    if !existing.contains(&c.name) {
                        tx.execute_batch(&format!(
                            "ALTER TABLE {} ADD COLUMN {} {}",
                            quote_ident(&t.name),
                            quote_ident(&c.name),
                            c.kind.sql_type()
                        ))?;
                    }
                }
            }
            let has_profile: bool = tx
                .prepare("SELECT 1 FROM _fs_profiles WHERE name = ?1")?
                .exists([&default_profile.name])?;
            if !has_profile {
                default_profile.validate(&model)?;
                tx.execute(
                    "INSERT INTO _fs_profiles (name, version, body, updated_at) VALUES (?1, 1, ?2, ?3)",
                    params![default_profile.name, serde_json::to_string(default_profile).map_err(|e| ApiError::internal(e.to_string()))?, now_text()],
                )?;
            }
            tx.commit()?;
        }
        Ok(Db {
            clock: Arc::new(SystemClock),
            path,
            model,
            writer: Mutex::new(writer),
            readers: Mutex::new(Vec::new()),
        })
    }

    /// Uses `clock` for "today" in relative-date filters (tests inject a
    /// controlled clock; the default is the wall clock).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Db {
        self.clock = clock;
        self
    }

    /// The clock's reading, milliseconds since the epoch.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// The filter context of a profile at the server's clock.
    fn ctx(&self, profile: &SyncProfile) -> FilterContext {
        profile.filter_context(self.clock.now_ms())
    }

    /// The data model.
    pub fn model(&self) -> &DataModel {
        &self.model
    }

    pub(crate) fn read<T>(&self, f: impl FnOnce(&Connection) -> ApiResult<T>) -> ApiResult<T> {
        let conn = match lock(&self.readers).pop() {
            Some(c) => c,
            None => open_connection(&self.path)?,
        };
        let result = f(&conn);
        let mut pool = lock(&self.readers);
        if pool.len() < 8 {
            pool.push(conn);
        }
        result
    }

    pub(crate) fn write<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> ApiResult<T>,
    ) -> ApiResult<T> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    // ---- users -------------------------------------------------------------

    /// The user holding this token.
    pub fn user_by_token(&self, token: &str) -> ApiResult<Option<User>> {
        let hash = hash_token(token);
        self.read(|c| {
            Ok(c.query_row(
                "SELECT id, name, role, profile, team_id FROM _fs_users WHERE token_hash = ?1",
                [hash],
                user_from_row,
            )
            .optional()?)
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
        let token = {
            use rand::RngCore;
            let mut bytes = [0u8; 32];
            rand::rng().fill_bytes(&mut bytes);
            format!("fs_{}", hex::encode(bytes))
        };
        let user = User {
            id,
            name: name.to_owned(),
            role,
            profile: profile.to_owned(),
            team_id: team_id.filter(|t| !t.is_empty()),
        };
        self.write(|tx| {
            let exists = tx.prepare("SELECT 1 FROM _fs_profiles WHERE name = ?1")?.exists([profile])?;
            if !exists {
                return Err(ApiError::bad_request(codes::BAD_REQUEST, format!("no offline profile named '{profile}'")));
            }
            let taken = tx.prepare("SELECT 1 FROM _fs_users WHERE id = ?1")?.exists([&user.id])?;
            if taken {
                return Err(ApiError::new(StatusCode::CONFLICT, codes::CONFLICT, format!("user '{}' exists", user.id)));
            }
            tx.execute(
                "INSERT INTO _fs_users (id, name, role, profile, token_hash, created_at, team_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![user.id, user.name, user.role.as_str(), user.profile, hash_token(&token), now_text(), user.team_id],
            )?;
            Ok(())
        })?;
        Ok((user, token))
    }

    /// Every user.
    pub fn users(&self) -> ApiResult<Vec<User>> {
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT id, name, role, profile, team_id FROM _fs_users ORDER BY name, id",
            )?;
            let rows = stmt.query_map([], user_from_row)?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    // ---- profiles and settings ---------------------------------------------

    /// A stored profile and its version.
    pub fn profile(&self, name: &str) -> ApiResult<Option<(OfflineProfile, i64)>> {
        self.read(|c| {
            let row: Option<(String, i64)> = c
                .query_row(
                    "SELECT body, version FROM _fs_profiles WHERE name = ?1",
                    [name],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            match row {
                Some((body, version)) => Ok(Some((
                    serde_json::from_str(&body)
                        .map_err(|e| ApiError::internal(format!("stored profile: {e}")))?,
                    version,
                ))),
                None => Ok(None),
            }
        })
    }

    /// Every stored profile with its version.
    pub fn profiles(&self) -> ApiResult<Vec<(OfflineProfile, i64)>> {
        let names: Vec<String> = self.read(|c| {
            let mut stmt = c.prepare("SELECT name FROM _fs_profiles ORDER BY name")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
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
        profile.validate(&self.model)?;
        let body = serde_json::to_string(profile).map_err(|e| ApiError::internal(e.to_string()))?;
        self.write(|tx| {
            let current: Option<(i64, String)> = tx
                .query_row("SELECT version, body FROM _fs_profiles WHERE name = ?1", [&profile.name], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()?;
            match current {
                Some((v, old)) if old == body => Ok(v),
                Some((v, _)) => {
                    tx.execute(
                        "UPDATE _fs_profiles SET version = ?2, body = ?3, updated_at = ?4 WHERE name = ?1",
                        params![profile.name, v + 1, body, now_text()],
                    )?;
                    Ok(v + 1)
                }
                None => {
                    tx.execute(
                        "INSERT INTO _fs_profiles (name, version, body, updated_at) VALUES (?1, 1, ?2, ?3)",
                        params![profile.name, body, now_text()],
                    )?;
                    Ok(1)
                }
            }
        })
    }

    /// The profile issued to a user, resolved against the data model.
    pub fn sync_profile(&self, user: &User) -> ApiResult<SyncProfile> {
        let (profile, version) = self.profile(&user.profile)?.ok_or_else(|| {
            ApiError::internal(format!("user's profile '{}' is missing", user.profile))
        })?;
        Ok(profile.resolve(&self.model, version, &user.id, user.team_id.as_deref())?)
    }

    /// Whether conflict detection is on (off by default: the device wins).
    pub fn conflict_detection(&self) -> ApiResult<bool> {
        self.read(|c| {
            let v: Option<String> = c
                .query_row(
                    "SELECT value FROM _fs_settings WHERE key = 'conflict_detection'",
                    [],
                    |r| r.get(0),
                )
                .optional()?;
            Ok(v.as_deref() == Some("true"))
        })
    }

    /// Turns conflict detection on or off.
    pub fn set_conflict_detection(&self, on: bool) -> ApiResult<()> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO _fs_settings (key, value) VALUES ('conflict_detection', ?1)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [if on { "true" } else { "false" }],
            )?;
            Ok(())
        })
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
        if device_id.is_empty() || device_id.len() > 128 {
            return Ok(());
        }
        let now = now_text();
        self.write(|tx| {
            tx.execute(
                "INSERT INTO _fs_devices (id, user_id, first_seen, last_seen, last_sync_at, app_version)
                 VALUES (?1, ?2, ?3, ?3, CASE WHEN ?4 THEN ?3 END, ?5)
                 ON CONFLICT(id, user_id) DO UPDATE SET last_seen = excluded.last_seen,
                   last_sync_at = COALESCE(excluded.last_sync_at, last_sync_at),
                   app_version = COALESCE(excluded.app_version, app_version)",
                params![device_id, user_id, now, synced, app_version],
            )?;
            Ok(())
        })
    }

    /// Every device seen.
    pub fn devices(&self) -> ApiResult<Vec<DeviceEntry>> {
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT id, user_id, first_seen, last_seen, last_sync_at, app_version, last_error
                 FROM _fs_devices ORDER BY last_seen DESC",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(DeviceEntry {
                    id: r.get(0)?,
                    user_id: r.get(1)?,
                    first_seen: r.get(2)?,
                    last_seen: r.get(3)?,
                    last_sync_at: r.get(4)?,
                    app_version: r.get(5)?,
                    last_error: r.get(6)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
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
    ) -> ApiResult<PullPage> {
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
        let predicate = rules::compile(profile, table, &profile.filter_context(now));
        self.read(|conn| {
            let tx = conn.unchecked_transaction()?;
            let hwm: i64 = tx.query_row(
                "SELECT COALESCE(MAX(seq), 0) FROM _fs_change_log",
                [],
                |r| r.get(0),
            )?;
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
            // window since the device's copy was selected.
            if cursor.phase == Phase::Rest {
                cursor.phase = match cursor.evaluated_at {
                    Some(e) if e < now && table.uses_clock() => Phase::Window { to: now, after: 0 },
                    _ => {
                        cursor.evaluated_at = Some(now);
                        Phase::Changes
                    }
                };
            }
            if cursor.evaluated_at.is_none() {
                cursor.evaluated_at = Some(now);
            }
            let mut cols: Vec<String> = vec!["_version".into()];
            cols.extend(table.columns.iter().map(|c| quote_ident(&c.name)));
            let select_cols = cols.join(", ");
            let ncols = table.columns.len();
            let read_values = |r: &rusqlite::Row<'_>| -> rusqlite::Result<Vec<Value>> {
                let mut values = Vec::with_capacity(ncols + 1);
                values.push(Value::Integer(r.get(0)?));
                for (i, c) in table.columns.iter().enumerate() {
                    values.push(Value::from_sql(r.get_ref(i + 1)?, c.kind));
                }
                Ok(values)
            };
            let mut out_rows = Vec::new();
            let mut removed = Vec::new();
            let mut has_more = false;
            let mut total: Option<u64> = want_total.then_some(0);
            let mut room = limit;

            // Window phase: unchanged rows (`_seq <= since`) that qualify now
            // and did not at `evaluated_at`, by their own clock rules.
            if let Phase::Window { to, after } = cursor.phase {
                let then = cursor.evaluated_at.unwrap_or(to);
                let now_ctx = profile.filter_context(to);
                let then_ctx = profile.filter_context(then);
                match (
                    rules::compile_clock_rules(table, &now_ctx),
                    rules::compile_clock_rules(table, &then_ctx),
                ) {
                    (Some(now_p), Some(then_p)) => {
                        let scope = format!(
                            "_deleted = 0 AND _seq <= ? AND _seq > ? AND {} AND NOT {}",
                            now_p.sql, then_p.sql
                        );
                        let mut params: Vec<Value> =
                            vec![Value::Integer(cursor.since), Value::Integer(after)];
                        params.extend(now_p.params.iter().cloned());
                        params.extend(then_p.params.iter().cloned());
                        if let Some(t) = total.as_mut() {
                            let n: i64 = tx.query_row(
                                &format!("SELECT COUNT(*) FROM {} WHERE {scope}", quote_ident(&table.name)),
                                params_from_iter(params.iter()),
                                |r| r.get(0),
                            )?;
                            *t += n.max(0) as u64;
                        }
                        let sql = format!(
                            "SELECT {select_cols}, _seq FROM {} WHERE {scope} ORDER BY _seq LIMIT ?",
                            quote_ident(&table.name)
                        );
                        params.push(Value::Integer(i64::from(room) + 1));
                        let mut stmt = tx.prepare_cached(&sql)?;
                        let mut rows = stmt.query(params_from_iter(params.iter()))?;
                        let mut last = after;
                        let mut count = 0;
                        let mut more = false;
                        while let Some(r) = rows.next()? {
                            if count == room {
                                more = true;
                                break;
                            }
                            count += 1;
                            last = r.get(ncols + 1)?;
                            out_rows.push(read_values(r)?);
                        }
                        room -= count;
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
                // A row at or before the snapshot is only in the result when
                // it qualifies (the scope says so), so the select list
                // evaluates the predicate only for later rows: every related
                // rule's sub-query is then built once per page, not twice.
                let sql = format!(
                    "SELECT {select_cols}, _seq,
                       CASE WHEN _seq <= ? THEN 1 WHEN _deleted = 0 AND {pred} THEN 1 ELSE 0 END
                     FROM {t} WHERE {scope} ORDER BY _seq LIMIT ?",
                    pred = predicate.sql,
                    t = quote_ident(&table.name),
                );
                let mut params: Vec<Value> = vec![Value::Integer(cursor.snapshot)];
                params.extend(predicate.params.iter().cloned());
                params.push(Value::Integer(cursor.since));
                params.push(Value::Integer(cursor.snapshot));
                params.extend(predicate.params.iter().cloned());
                params.push(Value::Integer(i64::from(room) + 1));
                let mut stmt = tx.prepare_cached(&sql)?;
                let mut rows = stmt.query(params_from_iter(params.iter()))?;
                let mut last_seq = cursor.since;
                let mut count = 0u32;
                let mut more = false;
                while let Some(r) = rows.next()? {
                    if count == room {
                        more = true;
                        break;
                    }
                    count += 1;
                    last_seq = r.get(ncols + 1)?;
                    let qualifies: i64 = r.get(ncols + 2)?;
                    if qualifies == 1 {
                        out_rows.push(read_values(r)?);
                    } else {
                        removed.push(r.get::<_, String>(1)?);
                    }
                }
                drop(rows);
                drop(stmt);
                if let Some(t) = total.as_mut() {
                    let sql = format!(
                        "SELECT COUNT(*) FROM {} WHERE {scope}",
                        quote_ident(&table.name)
                    );
                    let mut params: Vec<Value> = vec![
                        Value::Integer(cursor.since),
                        Value::Integer(cursor.snapshot),
                    ];
                    params.extend(predicate.params.iter().cloned());
                    let n: i64 = tx.query_row(&sql, params_from_iter(params.iter()), |r| r.get(0))?;
                    *t += n.max(0) as u64;
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
            Ok(PullPage {
                table: table.name.clone(),
                profile_version,
                cursor: cursor.encode(),
                has_more,
                total,
                columns,
                rows: out_rows,
                removed,
            })
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
        let predicate = rules::compile(profile, table, &self.ctx(profile));
        self.read(|conn| {
            let mut cols: Vec<String> = vec!["_version".into()];
            cols.extend(table.columns.iter().map(|c| quote_ident(&c.name)));
            let marks = vec!["?"; clean.len()].join(", ");
            let sql = format!(
                "SELECT {} FROM {} WHERE _deleted = 0 AND {} IN ({marks}) AND {} ORDER BY {}",
                cols.join(", "),
                quote_ident(&table.name),
                quote_ident(column),
                predicate.sql,
                quote_ident(&table.primary_key)
            );
            let mut params = clean.clone();
            params.extend(predicate.params.iter().cloned());
            let mut stmt = conn.prepare(&sql)?;
            let mut rows = stmt.query(params_from_iter(params.iter()))?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                let mut values = Vec::with_capacity(table.columns.len() + 1);
                values.push(Value::Integer(r.get(0)?));
                for (i, c) in table.columns.iter().enumerate() {
                    values.push(Value::from_sql(r.get_ref(i + 1)?, c.kind));
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
        })
    }

    // ---- rows --------------------------------------------------------------

    fn schema(&self, table: &str) -> ApiResult<&TableSchema> {
        self.model.table(table).ok_or_else(|| {
            ApiError::bad_request(codes::UNKNOWN_TABLE, format!("unknown table '{table}'"))
        })
    }

    fn read_row(conn: &Connection, schema: &TableSchema, id: &str) -> ApiResult<Option<StoredRow>> {
        let cols: Vec<String> = schema
            .columns
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect();
        let sql = format!(
            "SELECT {}, _version, _deleted FROM {} WHERE {} = ?1",
            cols.join(", "),
            quote_ident(&schema.name),
            quote_ident(&schema.primary_key)
        );
        let mut stmt = conn.prepare_cached(&sql)?;
        let mut rows = stmt.query([id])?;
        match rows.next()? {
            Some(r) => {
                let mut fields = BTreeMap::new();
                for (i, c) in schema.columns.iter().enumerate() {
                    fields.insert(c.name.clone(), Value::from_sql(r.get_ref(i)?, c.kind));
                }
                Ok(Some(StoredRow {
                    fields,
                    version: r.get(schema.columns.len())?,
                    deleted: r.get::<_, i64>(schema.columns.len() + 1)? != 0,
                }))
            }
            None => Ok(None),
        }
    }

    fn visible(
        &self,
        conn: &Connection,
        profile: &SyncProfile,
        table: &SyncTable,
        id: &str,
    ) -> ApiResult<bool> {
        let p = rules::compile(profile, table, &self.ctx(profile));
        let sql = format!(
            "SELECT 1 FROM {} WHERE {} = ? AND _deleted = 0 AND {}",
            quote_ident(&table.name),
            quote_ident(&table.primary_key),
            p.sql
        );
        let mut params = vec![Value::Text(id.to_owned())];
        params.extend(p.params);
        Ok(conn
            .prepare_cached(&sql)?
            .exists(params_from_iter(params.iter()))?)
    }

    /// Writes a change and logs it. `replace` sets every column (missing
    /// ones null); otherwise only the given columns change. Returns the new
    /// version.
    fn apply_write(
        tx: &Connection,
        schema: &TableSchema,
        id: &str,
        change: Option<(&BTreeMap<String, Value>, bool)>,
        user_id: Option<&str>,
        device_id: Option<&str>,
    ) -> ApiResult<i64> {
        let current = Self::read_row(tx, schema, id)?;
        let version = current.as_ref().map(|r| r.version).unwrap_or(0) + 1;
        let now = now_text();
        let op = match (&change, &current) {
            (None, _) => "delete",
            (Some(_), Some(r)) if !r.deleted => "update",
            _ => "insert",
        };
        tx.execute(
            "INSERT INTO _fs_change_log (tbl, row_id, op, version, user_id, device_id, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![schema.name, id, op, version, user_id, device_id, now],
        )?;
        let seq = tx.last_insert_rowid();
        match change {
            None => {
                tx.execute(
                    &format!(
                        "UPDATE {} SET _deleted = 1, _version = ?2, _seq = ?3, _updated_at = ?4 WHERE {} = ?1",
                        quote_ident(&schema.name),
                        quote_ident(&schema.primary_key)
                    ),
                    params![id, version, seq, now],
                )?;
            }
            Some((data, replace)) => {
                let replace = replace || current.as_ref().is_none_or(|r| r.deleted);
                let mut names = vec![quote_ident(&schema.primary_key)];
                let mut values: Vec<Value> = vec![Value::Text(id.to_owned())];
                for c in &schema.columns {
                    if c.name == schema.primary_key {
                        continue;
                    }
                    match data.get(&c.name) {
                        Some(v) => {
                            names.push(quote_ident(&c.name));
                            values.push(v.clone());
                        }
                        None if replace => {
                            names.push(quote_ident(&c.name));
                            values.push(Value::Null);
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
                    "INSERT INTO {} ({}, _version, _seq, _updated_at) VALUES ({}) ON CONFLICT({}) DO UPDATE SET {}",
                    quote_ident(&schema.name),
                    names.join(", "),
                    placeholders.join(", "),
                    quote_ident(&schema.primary_key),
                    sets.join(", ")
                );
                values.push(Value::Integer(version));
                values.push(Value::Integer(seq));
                values.push(Value::Text(now));
                tx.execute(&sql, params_from_iter(values.iter()))?;
            }
        }
        Ok(version)
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
    pub fn push(
        &self,
        user: &User,
        device_id: Option<&str>,
        profile: &SyncProfile,
        mutations: &[Mutation],
    ) -> ApiResult<Vec<MutationResult>> {
        let detection = self.conflict_detection()?;
        self.write(|tx| {
            let mut results = Vec::with_capacity(mutations.len());
            for m in mutations {
                if m.idempotency_key.is_empty() || m.idempotency_key.len() > 128 {
                    return Err(ApiError::bad_request(codes::BAD_REQUEST, "an idempotency key is 1 to 128 characters"));
                }
                let stored: Option<String> = tx
                    .query_row(
                        "SELECT result FROM _fs_push_receipts WHERE user_id = ?1 AND idempotency_key = ?2",
                        params![user.id, m.idempotency_key],
                        |r| r.get(0),
                    )
                    .optional()?;
                if let Some(stored) = stored {
                    let result: MutationResult = serde_json::from_str(&stored)
                        .map_err(|e| ApiError::internal(format!("stored receipt: {e}")))?;
                    results.push(result);
                    continue;
                }
                tx.execute_batch("SAVEPOINT mutation")?;
                let result = match self.push_one(tx, user, device_id, profile, m, detection) {
                    Ok(r) => {
                        tx.execute_batch("RELEASE mutation")?;
                        r
                    }
                    Err(PushFail::Fatal(e)) => return Err(e),
                    Err(PushFail::Reject(Rejection { code, message, row, version })) => {
                        tx.execute_batch("ROLLBACK TO mutation; RELEASE mutation")?;
                        let result = MutationResult {
                            idempotency_key: m.idempotency_key.clone(),
                            status: MutationStatus::Rejected,
                            version,
                            row,
                            error: Some(ErrorBody { code: code.into(), message }),
                        };
                        Self::log_sync_error(tx, user, device_id, m, &result, "rejected")?;
                        result
                    }
                };
                tx.execute(
                    "INSERT INTO _fs_push_receipts (user_id, idempotency_key, result, at) VALUES (?1, ?2, ?3, ?4)",
                    params![user.id, m.idempotency_key, serde_json::to_string(&result).map_err(|e| ApiError::internal(e.to_string()))?, now_text()],
                )?;
                results.push(result);
            }
            Ok(results)
        })
    }

    fn log_sync_error(
        tx: &Connection,
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
        tx.execute(
            "INSERT INTO _fs_sync_errors (at, kind, code, message, tbl, row_id, user_id, device_id, action, idempotency_key, base_version, server_version, device_data, server_data)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            params![now_text(), kind, code, message, m.table, m.id, user.id, device_id, m.op.as_str(), m.idempotency_key, m.base_version, result.version, device_data, server_data],
        )?;
        Ok(())
    }

    fn push_one(
        &self,
        tx: &Connection,
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
        let schema = self.schema(&m.table)?;
        if m.id.is_empty() || m.id.len() > 256 {
            return Err(
                Rejection::new(codes::BAD_REQUEST, "a record id is 1 to 256 characters").into(),
            );
        }
        let current = Self::read_row(tx, schema, &m.id)?;
        let exists = current.as_ref().is_some_and(|r| !r.deleted);
        let server_version = current.as_ref().map(|r| r.version).unwrap_or(0);
        let live_version = if exists { server_version } else { 0 };
        let visible_before = exists && self.visible(tx, profile, table, &m.id)?;
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
            let v = value
                .clone()
                .coerce(column.kind)
                .map_err(|e| reject(codes::INVALID_VALUE, format!("column '{name}': {e}")))?;
            data.insert(name.clone(), v);
        }
        if detection {
            let conflict = match m.op {
                Op::Insert => exists,
                Op::Update | Op::Delete => !exists || server_version != m.base_version,
            };
            if conflict {
                let result = MutationResult {
                    idempotency_key: m.idempotency_key.clone(),
                    status: MutationStatus::Conflict,
                    version: live_version,
                    row: server_row.clone(),
                    error: None,
                };
                Self::log_sync_error(tx, user, device_id, m, &result, "conflict")?;
                return Ok(result);
            }
        }
        let version = match m.op {
            Op::Delete if !exists => 0,
            Op::Delete => Self::apply_write(tx, schema, &m.id, None, Some(&user.id), device_id)?,
            Op::Insert => Self::apply_write(
                tx,
                schema,
                &m.id,
                Some((&data, true)),
                Some(&user.id),
                device_id,
            )?,
            Op::Update => Self::apply_write(
                tx,
                schema,
                &m.id,
                Some((&data, false)),
                Some(&user.id),
                device_id,
            )?,
        };
        if m.op != Op::Delete || exists {
            // Audit: which upload produced this change (replays never add one).
            tx.execute(
                &format!(
                    "UPDATE _fs_change_log SET idempotency_key = ?1 WHERE seq = (SELECT _seq FROM {} WHERE {} = ?2)",
                    quote_ident(&schema.name),
                    quote_ident(&schema.primary_key)
                ),
                params![m.idempotency_key, m.id],
            )?;
        }
        let visible_after = m.op != Op::Delete && self.visible(tx, profile, table, &m.id)?;
        if !exists && m.op != Op::Delete && !visible_after {
            return Err(Rejection::new(
                codes::FORBIDDEN,
                "you may only create records your offline profile selects",
            )
            .into());
        }
        let row = if visible_after {
            Self::read_row(tx, schema, &m.id)?.map(|r| Self::project(&r.fields, table))
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
        let schema = self.schema(table)?;
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
        let schema = self.schema(table)?;
        let limit = limit.clamp(1, 1000);
        self.read(|c| {
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
                params.push(Value::Text(after.to_owned()));
            }
            if let Some((profile, t, _)) = scope {
                let p = rules::compile(profile, t, &self.ctx(profile));
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
            params.push(Value::Integer(i64::from(limit)));
            let mut stmt = c.prepare(&sql)?;
            let mut rows = stmt.query(params_from_iter(params.iter()))?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                let mut fields = BTreeMap::new();
                for (i, col) in schema.columns.iter().enumerate() {
                    fields.insert(col.name.clone(), Value::from_sql(r.get_ref(i)?, col.kind));
                }
                let version: i64 = r.get(schema.columns.len())?;
                out.push(match scope {
                    Some((_, t, _)) => (Self::project(&fields, t), version),
                    None => (fields, version),
                });
            }
            Ok(out)
        })
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
    ) -> ApiResult<(BTreeMap<String, Value>, i64)> {
        let schema = self.schema(table)?;
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
                value.clone().coerce(col.kind).map_err(|e| {
                    ApiError::bad_request(codes::INVALID_VALUE, format!("column '{name}': {e}"))
                })?,
            );
        }
        self.write(|tx| {
            let current = Self::read_row(tx, schema, id)?;
            let live_version = current
                .as_ref()
                .filter(|r| !r.deleted)
                .map(|r| r.version)
                .unwrap_or(0);
            if let Some(base) = base_version.filter(|b| *b != live_version) {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    codes::CONFLICT,
                    format!("the record is at version {live_version}, not {base}"),
                ));
            }
            let version =
                Self::apply_write(tx, schema, id, Some((&clean, false)), Some(user_id), None)?;
            let row = Self::read_row(tx, schema, id)?
                .map(|r| r.fields)
                .unwrap_or_default();
            Ok((row, version))
        })
    }

    /// Deletes a row as a back-office user. False when there was none.
    pub fn delete_record(&self, table: &str, id: &str, user_id: &str) -> ApiResult<bool> {
        let schema = self.schema(table)?;
        self.write(|tx| {
            let current = Self::read_row(tx, schema, id)?;
            if current.as_ref().is_none_or(|r| r.deleted) {
                return Ok(false);
            }
            Self::apply_write(tx, schema, id, None, Some(user_id), None)?;
            Ok(true)
        })
    }

    /// Writes many rows in one transaction (seeding).
    pub fn bulk_insert(
        &self,
        table: &str,
        rows: &[(String, BTreeMap<String, Value>)],
    ) -> ApiResult<()> {
        let schema = self.schema(table)?;
        self.write(|tx| {
            for (id, data) in rows {
                Self::apply_write(tx, schema, id, Some((data, true)), None, None)?;
            }
            Ok(())
        })
    }

    // ---- sync errors -------------------------------------------------------

    /// Entries of the Sync Errors log, newest first.
    pub fn sync_errors(&self, filter: &SyncErrorFilter) -> ApiResult<Vec<SyncErrorEntry>> {
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT id, at, kind, code, message, tbl, row_id, user_id, device_id, action, idempotency_key,
                        base_version, server_version, device_data, server_data
                 FROM _fs_sync_errors
                 WHERE (?1 IS NULL OR user_id = ?1) AND (?2 IS NULL OR tbl = ?2) AND (?3 IS NULL OR kind = ?3)
                 ORDER BY id DESC LIMIT ?4",
            )?;
            let rows = stmt.query_map(
                params![filter.user, filter.table, filter.kind, filter.limit.unwrap_or(200).min(1000)],
                |r| {
                    Ok(SyncErrorEntry {
                        id: r.get(0)?,
                        at: r.get(1)?,
                        kind: r.get(2)?,
                        code: r.get(3)?,
                        message: r.get(4)?,
                        table: r.get(5)?,
                        record_id: r.get(6)?,
                        user_id: r.get(7)?,
                        device_id: r.get(8)?,
                        action: r.get(9)?,
                        idempotency_key: r.get(10)?,
                        base_version: r.get(11)?,
                        server_version: r.get(12)?,
                        device_data: json_opt(r.get(13)?),
                        server_data: json_opt(r.get(14)?),
                    })
                },
            )?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    /// Number of entries in the change log (for tests and the console).
    pub fn change_count(&self, table: &str, id: &str) -> ApiResult<i64> {
        self.read(|c| {
            Ok(c.query_row(
                "SELECT COUNT(*) FROM _fs_change_log WHERE tbl = ?1 AND row_id = ?2",
                params![table, id],
                |r| r.get(0),
            )?)
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

impl From<rusqlite::Error> for PushFail {
    fn from(e: rusqlite::Error) -> Self {
        PushFail::Fatal(e.into())
    }
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

/// A Sync Errors entry that an administrator retried.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncErrorRetry {
    pub sync_error_id: i64,
    pub at: String,
    pub retried_by: String,
    /// Version of the record after the retried change was applied.
    pub version: i64,
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

fn random_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

const SYNC_ERROR_COLUMNS: &str = "id, at, kind, code, message, tbl, row_id, user_id, device_id, action, idempotency_key, base_version, server_version, device_data, server_data";

fn sync_error_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SyncErrorEntry> {
    Ok(SyncErrorEntry {
        id: r.get(0)?,
        at: r.get(1)?,
        kind: r.get(2)?,
        code: r.get(3)?,
        message: r.get(4)?,
        table: r.get(5)?,
        record_id: r.get(6)?,
        user_id: r.get(7)?,
        device_id: r.get(8)?,
        action: r.get(9)?,
        idempotency_key: r.get(10)?,
        base_version: r.get(11)?,
        server_version: r.get(12)?,
        device_data: json_opt(r.get(13)?),
        server_data: json_opt(r.get(14)?),
    })
}

impl Db {
    /// Opens a console session for `admin`, valid for `ttl_ms`; returns the
    /// session id (only its hash is stored) and its anti-forgery token.
    /// Expired sessions are removed on the way.
    pub fn create_console_session(&self, admin: &str, ttl_ms: i64) -> ApiResult<(String, String)> {
        let id = random_token();
        let csrf = random_token();
        let now = now_ms();
        self.write(|tx| {
            tx.execute(
                "DELETE FROM _fs_console_sessions WHERE expires_ms <= ?1",
                [now],
            )?;
            tx.execute(
                "INSERT INTO _fs_console_sessions (id_hash, csrf_token, admin, created_at, expires_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![hash_token(&id), csrf, admin, now_text(), now.saturating_add(ttl_ms)],
            )?;
            Ok(())
        })?;
        Ok((id, csrf))
    }

    /// The live console session with this id.
    pub fn console_session(&self, session_id: &str) -> ApiResult<Option<ConsoleSession>> {
        let hash = hash_token(session_id);
        let now = now_ms();
        self.read(|c| {
            Ok(c.query_row(
                "SELECT admin, csrf_token FROM _fs_console_sessions WHERE id_hash = ?1 AND expires_ms > ?2",
                params![hash, now],
                |r| {
                    Ok(ConsoleSession {
                        admin: r.get(0)?,
                        csrf_token: r.get(1)?,
                    })
                },
            )
            .optional()?)
        })
    }

    /// Ends a console session (signing out).
    pub fn delete_console_session(&self, session_id: &str) -> ApiResult<()> {
        let hash = hash_token(session_id);
        self.write(|tx| {
            tx.execute(
                "DELETE FROM _fs_console_sessions WHERE id_hash = ?1",
                [hash],
            )?;
            Ok(())
        })
    }

    /// The user with this id.
    pub fn user_by_id(&self, id: &str) -> ApiResult<Option<User>> {
        self.read(|c| {
            Ok(c.query_row(
                "SELECT id, name, role, profile, team_id FROM _fs_users WHERE id = ?1",
                [id],
                user_from_row,
            )
            .optional()?)
        })
    }

    /// One entry of the Sync Errors log.
    pub fn sync_error(&self, id: i64) -> ApiResult<Option<SyncErrorEntry>> {
        self.read(|c| {
            Ok(c.query_row(
                &format!("SELECT {SYNC_ERROR_COLUMNS} FROM _fs_sync_errors WHERE id = ?1"),
                [id],
                sync_error_from_row,
            )
            .optional()?)
        })
    }

    /// Distinct users, tables and kinds of the Sync Errors log.
    pub fn sync_error_facets(&self) -> ApiResult<SyncErrorFacets> {
        self.read(|c| {
            let distinct = |column: &str| -> ApiResult<Vec<String>> {
                let mut stmt = c.prepare(&format!(
                    "SELECT DISTINCT {column} FROM _fs_sync_errors ORDER BY {column} LIMIT 500"
                ))?;
                let rows = stmt.query_map([], |r| r.get(0))?;
                Ok(rows.collect::<rusqlite::Result<_>>()?)
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
        self.read(|c| {
            let placeholders = vec!["?"; ids.len()].join(", ");
            let mut stmt = c.prepare(&format!(
                "SELECT sync_error_id, at, retried_by, version FROM _fs_sync_error_retries WHERE sync_error_id IN ({placeholders})"
            ))?;
            let rows = stmt.query_map(params_from_iter(ids.iter()), |r| {
                Ok(SyncErrorRetry {
                    sync_error_id: r.get(0)?,
                    at: r.get(1)?,
                    retried_by: r.get(2)?,
                    version: r.get(3)?,
                })
            })?;
            let mut out = BTreeMap::new();
            for r in rows {
                let r = r?;
                out.insert(r.sync_error_id, r);
            }
            Ok(out)
        })
    }

    /// The newest Sync Errors entry of each (device, user).
    pub fn device_last_errors(&self) -> ApiResult<BTreeMap<(String, String), DeviceLastError>> {
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT e.device_id, e.user_id, e.at, e.message FROM _fs_sync_errors e
                 JOIN (SELECT device_id, user_id, MAX(id) AS id FROM _fs_sync_errors
                       WHERE device_id IS NOT NULL GROUP BY device_id, user_id) last ON last.id = e.id",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    (r.get::<_, String>(0)?, r.get::<_, String>(1)?),
                    DeviceLastError {
                        at: r.get(2)?,
                        message: r.get(3)?,
                    },
                ))
            })?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    /// Re-applies the device's change logged in Sync Errors entry `id`, as
    /// the logged user would push it but with conflict detection bypassed:
    /// the device's data wins. The write goes into the change log (with the
    /// logged user and device), so devices pull it; the entry is marked
    /// retried. Refuses an entry already retried (409), and answers the
    /// rule that still refuses the change (for example a record outside the
    /// user's offline profile) without changing anything.
    pub fn retry_sync_error(&self, id: i64, retried_by: &str) -> ApiResult<SyncErrorRetry> {
        let entry = self
            .sync_error(id)?
            .ok_or_else(|| ApiError::not_found(format!("no sync error {id}")))?;
        let user = self.user_by_id(&entry.user_id)?.ok_or_else(|| {
            ApiError::bad_request(
                codes::BAD_REQUEST,
                format!("user '{}' no longer exists", entry.user_id),
            )
        })?;
        let profile = self.sync_profile(&user)?;
        let op = Op::parse(&entry.action).ok_or_else(|| {
            ApiError::internal(format!("logged action '{}' is unknown", entry.action))
        })?;
        let mutation = Mutation {
            idempotency_key: format!("console-retry-{id}"),
            table: entry.table.clone(),
            id: entry.record_id.clone(),
            op,
            base_version: entry.base_version,
            data: entry.device_data.clone().unwrap_or_default(),
        };
        let at = now_text();
        self.write(|tx| {
            let done: Option<String> = tx
                .query_row(
                    "SELECT at FROM _fs_sync_error_retries WHERE sync_error_id = ?1",
                    [id],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(when) = done {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    codes::CONFLICT,
                    format!("sync error {id} was already retried at {when}"),
                ));
            }
            tx.execute_batch("SAVEPOINT retry")?;
            let outcome = self.push_one(
                tx,
                &user,
                entry.device_id.as_deref(),
                &profile,
                &mutation,
                false,
            );
            let result = match outcome {
                Ok(r) => {
                    tx.execute_batch("RELEASE retry")?;
                    r
                }
                Err(PushFail::Fatal(e)) => return Err(e),
                Err(PushFail::Reject(r)) => {
                    tx.execute_batch("ROLLBACK TO retry; RELEASE retry")?;
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        r.code,
                        format!("the device's change still cannot be applied: {}", r.message),
                    ));
                }
            };
            tx.execute(
                "INSERT INTO _fs_sync_error_retries (sync_error_id, at, retried_by, version) VALUES (?1, ?2, ?3, ?4)",
                params![id, at, retried_by, result.version],
            )?;
            Ok(SyncErrorRetry {
                sync_error_id: id,
                at: at.clone(),
                retried_by: retried_by.to_owned(),
                version: result.version,
            })
        })
    }
}
