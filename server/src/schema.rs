//! The server's schema on both back ends: versioned migrations of its own
//! tables, and the data model's tables.
//!
//! The server's own tables (`_fs_*`) change only through [`MIGRATIONS`]: a
//! numbered list, each step with one script per dialect, applied at start-up
//! in order inside one transaction, the reached version kept in
//! `_fs_schema`. A database newer than the server is refused. On PostgreSQL
//! the migration holds an advisory lock, so several instances starting at
//! once migrate one after the other.
//!
//! The data model's tables follow the model: a table is created when the
//! model gains it, a column added when the model gains it (never dropped or
//! retyped, so an older server can still read the database).

use std::collections::BTreeSet;

use fieldsync_protocol::Value;
use fieldsync_protocol::model::default_literal;
use fieldsync_protocol::profile::{
    Column, DataModel, OfflineProfile, RowRule, TableSchema, quote_ident,
};
use sha2::{Digest, Sha256};

use crate::sql::{Conn, Dialect, text};
use crate::store_error::{StoreError, StoreResult};

/// One step of the server's own schema.
pub struct Migration {
    pub version: i64,
    pub description: &'static str,
    pub sqlite: &'static str,
    pub postgres: &'static str,
}

/// Every migration, oldest first. Append; never edit a released step.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "users, profiles, settings, change log, push receipts, Sync Errors, devices, console sessions, retries, telemetry",
        sqlite: r#"
CREATE TABLE IF NOT EXISTS _fs_users (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    profile TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    team_id TEXT
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
CREATE TABLE IF NOT EXISTS _fs_telemetry (
    id TEXT PRIMARY KEY NOT NULL,
    received_at INTEGER NOT NULL,
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    sync_id TEXT NOT NULL,
    mode TEXT NOT NULL,
    result TEXT NOT NULL,
    failure_type TEXT,
    started_at INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL,
    active_duration_ms INTEGER NOT NULL,
    rows_up INTEGER NOT NULL,
    rows_down INTEGER NOT NULL,
    bytes_up INTEGER NOT NULL,
    bytes_down INTEGER NOT NULL,
    tbl TEXT,
    network_type TEXT NOT NULL,
    app_version TEXT NOT NULL,
    device_model TEXT NOT NULL,
    os_version TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS _fs_telemetry_device ON _fs_telemetry (device_id, started_at);
CREATE INDEX IF NOT EXISTS _fs_telemetry_started ON _fs_telemetry (started_at);
"#,
        // PostgreSQL: the change log's `seq` is stamped at commit (see
        // `crate::db`, "The change cursor on PostgreSQL"); `id` identifies a
        // change inside its transaction until then.
        postgres: r#"
CREATE TABLE IF NOT EXISTS _fs_users (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    profile TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    team_id TEXT
);
CREATE TABLE IF NOT EXISTS _fs_profiles (
    name TEXT PRIMARY KEY NOT NULL,
    version BIGINT NOT NULL,
    body TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS _fs_settings (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL);
CREATE SEQUENCE IF NOT EXISTS _fs_change_seq;
CREATE TABLE IF NOT EXISTS _fs_change_log (
    id BIGSERIAL PRIMARY KEY,
    seq BIGINT UNIQUE,
    tbl TEXT NOT NULL,
    row_id TEXT NOT NULL,
    op TEXT NOT NULL,
    version BIGINT NOT NULL,
    user_id TEXT,
    device_id TEXT,
    idempotency_key TEXT,
    at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS _fs_change_log_pending ON _fs_change_log (id) WHERE seq IS NULL;
CREATE TABLE IF NOT EXISTS _fs_push_receipts (
    user_id TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    result TEXT NOT NULL,
    at TEXT NOT NULL,
    PRIMARY KEY (user_id, idempotency_key)
);
CREATE TABLE IF NOT EXISTS _fs_sync_errors (
    id BIGSERIAL PRIMARY KEY,
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
    base_version BIGINT NOT NULL,
    server_version BIGINT NOT NULL,
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
CREATE TABLE IF NOT EXISTS _fs_console_sessions (
    id_hash TEXT PRIMARY KEY NOT NULL,
    csrf_token TEXT NOT NULL,
    admin TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_ms BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS _fs_sync_error_retries (
    sync_error_id BIGINT PRIMARY KEY NOT NULL,
    at TEXT NOT NULL,
    retried_by TEXT NOT NULL,
    version BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS _fs_telemetry (
    id TEXT PRIMARY KEY NOT NULL,
    received_at BIGINT NOT NULL,
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    sync_id TEXT NOT NULL,
    mode TEXT NOT NULL,
    result TEXT NOT NULL,
    failure_type TEXT,
    started_at BIGINT NOT NULL,
    duration_ms BIGINT NOT NULL,
    active_duration_ms BIGINT NOT NULL,
    rows_up BIGINT NOT NULL,
    rows_down BIGINT NOT NULL,
    bytes_up BIGINT NOT NULL,
    bytes_down BIGINT NOT NULL,
    tbl TEXT,
    network_type TEXT NOT NULL,
    app_version TEXT NOT NULL,
    device_model TEXT NOT NULL,
    os_version TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS _fs_telemetry_device ON _fs_telemetry (device_id, started_at);
CREATE INDEX IF NOT EXISTS _fs_telemetry_started ON _fs_telemetry (started_at);
"#,
    },
    Migration {
        version: 2,
        description: "retention: find old push receipts and telemetry by index",
        sqlite: r#"
CREATE INDEX IF NOT EXISTS _fs_push_receipts_at ON _fs_push_receipts (at);
CREATE INDEX IF NOT EXISTS _fs_telemetry_received ON _fs_telemetry (received_at);
"#,
        postgres: r#"
CREATE INDEX IF NOT EXISTS _fs_push_receipts_at ON _fs_push_receipts (at);
CREATE INDEX IF NOT EXISTS _fs_telemetry_received ON _fs_telemetry (received_at);
"#,
    },
    Migration {
        version: 3,
        description: "push receipts keep a digest of their mutation (a key reused for another change is refused)",
        sqlite: r#"
ALTER TABLE _fs_push_receipts ADD COLUMN mutation_digest TEXT;
"#,
        postgres: r#"
ALTER TABLE _fs_push_receipts ADD COLUMN IF NOT EXISTS mutation_digest TEXT;
"#,
    },
    Migration {
        version: 4,
        description: "sync errors keep the size and digest of data too large to store, and are found by age for retention",
        sqlite: r#"
ALTER TABLE _fs_sync_errors ADD COLUMN device_data_cut TEXT;
ALTER TABLE _fs_sync_errors ADD COLUMN server_data_cut TEXT;
CREATE INDEX IF NOT EXISTS _fs_sync_errors_at ON _fs_sync_errors (at);
"#,
        postgres: r#"
ALTER TABLE _fs_sync_errors ADD COLUMN IF NOT EXISTS device_data_cut TEXT;
ALTER TABLE _fs_sync_errors ADD COLUMN IF NOT EXISTS server_data_cut TEXT;
CREATE INDEX IF NOT EXISTS _fs_sync_errors_at ON _fs_sync_errors (at);
"#,
    },
    Migration {
        version: 5,
        description: "data model versions: each published model, where it came from and when",
        sqlite: r#"
CREATE TABLE IF NOT EXISTS _fs_models (
    version INTEGER PRIMARY KEY NOT NULL,
    body TEXT NOT NULL,
    source TEXT NOT NULL,
    published_at TEXT NOT NULL,
    changes TEXT NOT NULL DEFAULT '[]'
);
"#,
        postgres: r#"
CREATE TABLE IF NOT EXISTS _fs_models (
    version BIGINT PRIMARY KEY NOT NULL,
    body TEXT NOT NULL,
    source TEXT NOT NULL,
    published_at TEXT NOT NULL,
    changes TEXT NOT NULL DEFAULT '[]'
);
"#,
    },
    Migration {
        version: 6,
        description: "users may have their own time zone (an IANA name) for relative-date filters",
        sqlite: r#"
ALTER TABLE _fs_users ADD COLUMN time_zone TEXT;
"#,
        postgres: r#"
ALTER TABLE _fs_users ADD COLUMN IF NOT EXISTS time_zone TEXT;
"#,
    },
    Migration {
        version: 7,
        description: "a retry of a Sync Errors entry keeps its outcome (applied, or failed and why)",
        sqlite: r#"
ALTER TABLE _fs_sync_error_retries ADD COLUMN outcome TEXT NOT NULL DEFAULT 'applied';
ALTER TABLE _fs_sync_error_retries ADD COLUMN message TEXT;
"#,
        postgres: r#"
ALTER TABLE _fs_sync_error_retries ADD COLUMN IF NOT EXISTS outcome TEXT NOT NULL DEFAULT 'applied';
ALTER TABLE _fs_sync_error_retries ADD COLUMN IF NOT EXISTS message TEXT;
"#,
    },
    Migration {
        version: 8,
        description: "telemetry keeps a sync's conflicts, rejected changes and the pending uploads left",
        sqlite: r#"
ALTER TABLE _fs_telemetry ADD COLUMN conflicts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE _fs_telemetry ADD COLUMN rejected INTEGER NOT NULL DEFAULT 0;
ALTER TABLE _fs_telemetry ADD COLUMN pending_uploads INTEGER;
"#,
        postgres: r#"
ALTER TABLE _fs_telemetry ADD COLUMN IF NOT EXISTS conflicts BIGINT NOT NULL DEFAULT 0;
ALTER TABLE _fs_telemetry ADD COLUMN IF NOT EXISTS rejected BIGINT NOT NULL DEFAULT 0;
ALTER TABLE _fs_telemetry ADD COLUMN IF NOT EXISTS pending_uploads BIGINT;
"#,
    },
];

/// The version this server's schema reaches.
pub fn latest_version() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Applies the migrations the database lacks and brings the data model's
/// tables up to date. Runs inside the caller's transaction.
pub fn migrate(c: &mut dyn Conn, model: &DataModel) -> StoreResult<i64> {
    let latest = migrate_own(c)?;
    apply_model(c, model, None)?;
    Ok(latest)
}

/// Brings the data model's tables to `model`: creates the tables it gained,
/// adds the columns it gained (existing rows take the column's default),
/// builds its indexes and drops the indexes `before` had and it has not.
/// Columns and tables it dropped stay in the database (their data is kept;
/// no profile can name them). Runs inside the caller's transaction. On
/// PostgreSQL the indexes are left to [`build_model_indexes_concurrently`]
/// after the commit: a `CREATE INDEX` in the transaction would hold off
/// every read and write of the table (the `ALTER TABLE` lock) until it is
/// built.
pub fn apply_model(
    c: &mut dyn Conn,
    model: &DataModel,
    before: Option<&DataModel>,
) -> StoreResult<()> {
    for t in &model.tables {
        data_table(c, t)?;
    }
    if let Some(before) = before {
        for t in &before.tables {
            for ix in &t.indexes {
                let kept = model.table(&t.name).is_some_and(|n| n.indexes.contains(ix));
                if !kept {
                    c.batch(&format!(
                        "DROP INDEX IF EXISTS {}",
                        quote_ident(&model_index_name(&t.name, &ix.columns))
                    ))?;
                }
            }
        }
    }
    if c.dialect() == Dialect::Postgres {
        return Ok(());
    }
    for t in &model.tables {
        for ix in &t.indexes {
            c.batch(&create_index_sql(
                "CREATE INDEX",
                &model_index_name(&t.name, &ix.columns),
                &t.name,
                &ix.columns,
            ))?;
        }
    }
    Ok(())
}

/// PostgreSQL: builds the data model's indexes the database lacks with
/// `CREATE INDEX CONCURRENTLY`, outside any transaction, so the table is
/// read and written meanwhile (see [`build_rule_indexes_concurrently`]).
pub fn build_model_indexes_concurrently(
    client: &mut postgres::Client,
    model: &DataModel,
) -> StoreResult<()> {
    let wanted = model.tables.iter().flat_map(|t| {
        t.indexes
            .iter()
            .map(move |ix| (t.name.clone(), ix.columns.clone()))
    });
    build_concurrently(client, wanted, model_index_name)
}

/// The server's name of a data model index: a digest of the table and the
/// columns (an index redefined on other columns is another index).
pub fn model_index_name(table: &str, columns: &[String]) -> String {
    let digest = Sha256::digest(format!("model\0{table}\0{}", columns.join("\0")).as_bytes());
    format!("_fs_mx_{}", &hex::encode(digest)[..24])
}

/// Applies the migrations of the server's own tables the database lacks;
/// the version reached.
pub fn migrate_own(c: &mut dyn Conn) -> StoreResult<i64> {
    let dialect = c.dialect();
    c.batch("CREATE TABLE IF NOT EXISTS _fs_schema (version BIGINT NOT NULL)")?;
    let current = match c.query_opt("SELECT MAX(version) FROM _fs_schema", &[])? {
        Some(r) => r.opt_i64(0)?,
        None => None,
    };
    let latest = latest_version();
    if let Some(v) = current.filter(|v| *v > latest) {
        return Err(StoreError::internal(format!(
            "the database has schema version {v}, newer than this server ({latest})"
        )));
    }
    let from = current.unwrap_or(0);
    for m in MIGRATIONS.iter().filter(|m| m.version > from) {
        c.batch(match dialect {
            Dialect::Sqlite => m.sqlite,
            Dialect::Postgres => m.postgres,
        })
        .map_err(StoreError::context(format!(
            "migration {} ({})",
            m.version, m.description
        )))?;
    }
    if current.is_none() {
        c.execute(
            "INSERT INTO _fs_schema (version) VALUES (?)",
            &[Value::Integer(latest)],
        )?;
    } else if from < latest {
        c.execute(
            "UPDATE _fs_schema SET version = ?",
            &[Value::Integer(latest)],
        )?;
    }
    Ok(latest)
}

/// The index every data table has on (primary key, `_deleted`): a
/// related-rows rule that reaches a row by its key ("the work order of this
/// incident, if live") is answered from it without reading the row. SQLite
/// prefers the primary key's own unique index, which holds only the key, so
/// the SQLite rules name this one (`INDEXED BY`, see [`crate::rules`]); it
/// exists for every table the model has, created with the table at start-up.
pub fn live_index_name(table: &str) -> String {
    format!("{table}__live")
}

/// Creates a data table, or adds the columns the model gained.
fn data_table(c: &mut dyn Conn, t: &TableSchema) -> StoreResult<()> {
    let dialect = c.dialect();
    let mut cols = Vec::new();
    for col in &t.columns {
        let ty = dialect.column_type(col.kind);
        if col.name == t.primary_key {
            cols.push(format!(
                "{} {ty} PRIMARY KEY NOT NULL",
                quote_ident(&col.name)
            ));
        } else {
            cols.push(format!(
                "{} {ty}{}",
                quote_ident(&col.name),
                default_sql(col)
            ));
        }
    }
    let int = match dialect {
        Dialect::Sqlite => "INTEGER",
        Dialect::Postgres => "BIGINT",
    };
    cols.push(format!("_version {int} NOT NULL"));
    cols.push(format!("_seq {int} NOT NULL"));
    cols.push(format!("_deleted {int} NOT NULL DEFAULT 0"));
    cols.push("_updated_at TEXT NOT NULL".into());
    c.batch(&format!(
        "CREATE TABLE IF NOT EXISTS {name} ({cols});
         CREATE INDEX IF NOT EXISTS {idx} ON {name} (_seq);
         CREATE INDEX IF NOT EXISTS {live} ON {name} ({pk}, _deleted);",
        name = quote_ident(&t.name),
        cols = cols.join(", "),
        idx = quote_ident(&format!("{}__seq", t.name)),
        live = quote_ident(&live_index_name(&t.name)),
        pk = quote_ident(&t.primary_key),
    ))?;
    let existing: Vec<String> = match dialect {
        Dialect::Sqlite => c
            .query(
                "SELECT name FROM pragma_table_info(?)",
                &[text(t.name.clone())],
            )?
            .iter()
            .map(|r| r.text(0))
            .collect::<StoreResult<_>>()?,
        Dialect::Postgres => c
            .query(
                "SELECT CAST(column_name AS TEXT) FROM information_schema.columns
                 WHERE table_schema = current_schema() AND table_name = ?",
                &[text(t.name.clone())],
            )?
            .iter()
            .map(|r| r.text(0))
            .collect::<StoreResult<_>>()?,
    };
    for col in &t.columns {
        if !existing.contains(&col.name) {
            c.batch(&format!(
                "ALTER TABLE {} ADD COLUMN {} {}{}",
                quote_ident(&t.name),
                quote_ident(&col.name),
                dialect.column_type(col.kind),
                default_sql(col)
            ))?;
        }
    }
    Ok(())
}

/// ` DEFAULT <literal>` of a column with a default (a validated value:
/// DDL takes no parameters), or nothing.
fn default_sql(col: &Column) -> String {
    match &col.default {
        Some(v) => format!(" DEFAULT {}", default_literal(v)),
        None => String::new(),
    }
}

/// Most columns in one related-rows index.
const MAX_INDEX_COLUMNS: usize = 8;

/// The indexes a profile's related-rows rules need, as (table, columns): the
/// related table's foreign column, for each rule whose foreign column is
/// not the related table's primary key (that one has its index). A related
/// rule compiles to a correlated `EXISTS` (see [`crate::rules`]) that looks
/// the column up once per row; without the index the lookup would scan the
/// related table. The index then holds `_deleted` and the columns the
/// related table's own rules read, so the lookup is answered from the index
/// alone.
///
/// The rule's own table gets one on its column (with `_deleted`) when that
/// column is not its primary key: `POST /v1/sync/fetch` asks for the rows
/// whose column holds one of the values a device queued (a work order's
/// incidents by `work_order_id`), and without the index each request
/// scanned the whole table (about 150 ms for 476k incidents, five requests
/// per 1,000 work orders).
///
/// Profiles change at run time, so the indexes follow the stored profiles
/// (see [`ensure_rule_indexes`]), not the data model alone.
pub fn rule_indexes(
    model: &DataModel,
    profile: &OfflineProfile,
) -> BTreeSet<(String, Vec<String>)> {
    let mut out = BTreeSet::new();
    for t in &profile.tables {
        for rule in &t.rules {
            let RowRule::Related {
                table,
                column,
                foreign_column,
            } = rule
            else {
                continue;
            };
            if let Some(own) = model.table(&t.name)
                && own.primary_key != *column
                && own.column(column).is_some()
            {
                out.insert((t.name.clone(), vec![column.clone(), "_deleted".to_owned()]));
            }
            let Some(schema) = model.table(table) else {
                continue;
            };
            if schema.primary_key == *foreign_column || schema.column(foreign_column).is_none() {
                continue;
            }
            let mut columns = vec![foreign_column.clone(), "_deleted".to_owned()];
            let related_rules = profile.tables.iter().filter(|p| p.name == *table);
            for rule in related_rules.flat_map(|p| p.rules.iter()) {
                let read: Vec<&str> = match rule {
                    RowRule::All => Vec::new(),
                    RowRule::Owned { column } => vec![column.as_str()],
                    RowRule::Related { column, .. } => vec![column.as_str()],
                    RowRule::Custom { filter } => filter.columns(),
                };
                for c in read {
                    if columns.len() < MAX_INDEX_COLUMNS
                        && schema.column(c).is_some()
                        && !columns.iter().any(|have| have == c)
                    {
                        columns.push(c.to_owned());
                    }
                }
            }
            out.insert((table.clone(), columns));
        }
    }
    out
}

/// The name of the index on `table(columns)`: a digest of both, so two
/// indexes never share a name however long the identifiers (PostgreSQL cuts
/// names at 63 bytes).
pub fn rule_index_name(table: &str, columns: &[String]) -> String {
    let digest = Sha256::digest(format!("{table}\0{}", columns.join("\0")).as_bytes());
    format!("_fs_ix_{}", &hex::encode(digest)[..24])
}

/// PostgreSQL: builds the indexes of [`rule_indexes`] the database lacks
/// with `CREATE INDEX CONCURRENTLY`, outside any transaction (`client` must
/// not be in one), so writes to the table go on while an index builds; a
/// plain `CREATE INDEX` holds off every write to the table until it is done,
/// minutes on a large table. An index a failed concurrent build left invalid
/// is dropped and built again, unless another session is still building it
/// (that session finishes it). Runs before a profile is stored, and at
/// start-up for every stored profile.
pub fn build_rule_indexes_concurrently(
    client: &mut postgres::Client,
    model: &DataModel,
    profile: &OfflineProfile,
) -> StoreResult<()> {
    build_concurrently(client, rule_indexes(model, profile), rule_index_name)
}

/// Builds each (table, columns) index named by `name` that the database
/// lacks or holds invalid, concurrently.
fn build_concurrently(
    client: &mut postgres::Client,
    wanted: impl IntoIterator<Item = (String, Vec<String>)>,
    name: fn(&str, &[String]) -> String,
) -> StoreResult<()> {
    for (table, columns) in wanted {
        let name = name(&table, &columns);
        let state = client.query_opt(
            "SELECT i.indisvalid,
                    EXISTS (SELECT 1 FROM pg_stat_progress_create_index p WHERE p.index_relid = c.oid)
             FROM pg_index i
             JOIN pg_class c ON c.oid = i.indexrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relname = $1 AND n.nspname = current_schema()",
            &[&name],
        )?;
        match state.map(|r| (r.get::<_, bool>(0), r.get::<_, bool>(1))) {
            Some((true, _)) | Some((false, true)) => continue,
            Some((false, false)) => client.batch_execute(&format!(
                "DROP INDEX CONCURRENTLY IF EXISTS {}",
                quote_ident(&name)
            ))?,
            None => {}
        }
        client.batch_execute(&create_index_sql(
            "CREATE INDEX CONCURRENTLY",
            &name,
            &table,
            &columns,
        ))?;
    }
    Ok(())
}

/// `{create} IF NOT EXISTS name ON table (columns)`, every identifier quoted.
fn create_index_sql(create: &str, name: &str, table: &str, columns: &[String]) -> String {
    format!(
        "{create} IF NOT EXISTS {} ON {} ({})",
        quote_ident(name),
        quote_ident(table),
        columns
            .iter()
            .map(|c| quote_ident(c))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Creates the indexes of [`rule_indexes`] the database lacks. Runs inside
/// the caller's write transaction (at start-up for every stored profile,
/// and when a profile is published); on PostgreSQL
/// [`build_rule_indexes_concurrently`] has built them already, and this
/// only finds them.
pub fn ensure_rule_indexes(
    c: &mut dyn Conn,
    model: &DataModel,
    profile: &OfflineProfile,
) -> StoreResult<()> {
    let dialect = c.dialect();
    for (table, columns) in rule_indexes(model, profile) {
        let name = rule_index_name(&table, &columns);
        let exists = match dialect {
            Dialect::Sqlite => c.exists(
                "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?",
                &[text(name.clone())],
            )?,
            Dialect::Postgres => c.exists(
                "SELECT 1 FROM pg_indexes WHERE schemaname = current_schema() AND indexname = ?",
                &[text(name.clone())],
            )?,
        };
        if exists {
            continue;
        }
        if dialect == Dialect::Postgres {
            // Instances publishing profiles at once create an index one
            // after the other (the second finds it); the lock is the
            // migration's, released at commit.
            c.execute(
                "SELECT pg_advisory_xact_lock(?)",
                &[Value::Integer(crate::sql::PG_MIGRATION_LOCK)],
            )?;
        }
        c.batch(&create_index_sql("CREATE INDEX", &name, &table, &columns))?;
    }
    Ok(())
}

/// The rows of `table` with `_seq` after `after` (and at most `through`):
/// a `COUNT(*)` SQLite answers from the `_seq` index alone.
pub fn count_seq(
    c: &mut dyn Conn,
    table: &str,
    after: i64,
    through: Option<i64>,
) -> StoreResult<u64> {
    let t = quote_ident(table);
    let n = match through {
        None => c.query_one(
            &format!("SELECT COUNT(*) FROM {t} WHERE _seq > ?"),
            &[Value::Integer(after)],
        )?,
        Some(through) => c.query_one(
            &format!("SELECT COUNT(*) FROM {t} WHERE _seq > ? AND _seq <= ?"),
            &[Value::Integer(after), Value::Integer(through)],
        )?,
    }
    .i64(0)?;
    Ok(n.max(0) as u64)
}

#[cfg(test)]
mod tests;
