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

use fieldsync_core::Value;
use fieldsync_core::profile::{DataModel, TableSchema, quote_ident};

use crate::error::{ApiError, ApiResult};
use crate::sql::{Conn, Dialect, text};

/// One step of the server's own schema.
pub struct Migration {
    pub version: i64,
    pub description: &'static str,
    pub sqlite: &'static str,
    pub postgres: &'static str,
}

/// Every migration, oldest first. Append; never edit a released step.
pub const MIGRATIONS: &[Migration] = &[Migration {
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
}];

/// The version this server's schema reaches.
pub fn latest_version() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Applies the migrations the database lacks and brings the data model's
/// tables up to date. Runs inside the caller's transaction.
pub fn migrate(c: &mut dyn Conn, model: &DataModel) -> ApiResult<i64> {
    let dialect = c.dialect();
    c.batch("CREATE TABLE IF NOT EXISTS _fs_schema (version BIGINT NOT NULL)")?;
    let current = match c.query_opt("SELECT MAX(version) FROM _fs_schema", &[])? {
        Some(r) => r.opt_i64(0)?,
        None => None,
    };
    let latest = latest_version();
    if let Some(v) = current.filter(|v| *v > latest) {
        return Err(ApiError::internal(format!(
            "the database has schema version {v}, newer than this server ({latest})"
        )));
    }
    let from = current.unwrap_or(0);
    for m in MIGRATIONS.iter().filter(|m| m.version > from) {
        c.batch(match dialect {
            Dialect::Sqlite => m.sqlite,
            Dialect::Postgres => m.postgres,
        })
        .map_err(|e| {
            ApiError::internal(format!(
                "migration {} ({}): {}",
                m.version, m.description, e.message
            ))
        })?;
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
    for t in &model.tables {
        data_table(c, t)?;
    }
    Ok(latest)
}

/// Creates a data table, or adds the columns the model gained.
fn data_table(c: &mut dyn Conn, t: &TableSchema) -> ApiResult<()> {
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
            cols.push(format!("{} {ty}", quote_ident(&col.name)));
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
         CREATE INDEX IF NOT EXISTS {idx} ON {name} (_seq);",
        name = quote_ident(&t.name),
        cols = cols.join(", "),
        idx = quote_ident(&format!("{}__seq", t.name)),
    ))?;
    let existing: Vec<String> = match dialect {
        Dialect::Sqlite => c
            .query(
                "SELECT name FROM pragma_table_info(?)",
                &[text(t.name.clone())],
            )?
            .iter()
            .map(|r| r.text(0))
            .collect::<ApiResult<_>>()?,
        Dialect::Postgres => c
            .query(
                "SELECT CAST(column_name AS TEXT) FROM information_schema.columns
                 WHERE table_schema = current_schema() AND table_name = ?",
                &[text(t.name.clone())],
            )?
            .iter()
            .map(|r| r.text(0))
            .collect::<ApiResult<_>>()?,
    };
    for col in &t.columns {
        if !existing.contains(&col.name) {
            c.batch(&format!(
                "ALTER TABLE {} ADD COLUMN {} {}",
                quote_ident(&t.name),
                quote_ident(&col.name),
                dialect.column_type(col.kind)
            ))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::SqliteConn;

    #[test]
    fn migrations_are_numbered_in_order_and_reach_the_server_version() {
        assert!(MIGRATIONS.windows(2).all(|w| w[0].version < w[1].version));
        assert_eq!(latest_version(), crate::db::SCHEMA_VERSION);
    }

    #[test]
    fn migrating_twice_changes_nothing_and_a_newer_database_is_refused() {
        let model = crate::field_service_model();
        let conn = rusqlite::Connection::open_in_memory().expect("sqlite");
        assert_eq!(migrate(&mut SqliteConn(&conn), &model).expect("first"), 1);
        assert_eq!(migrate(&mut SqliteConn(&conn), &model).expect("again"), 1);
        let versions: i64 = conn
            .query_row("SELECT COUNT(*) FROM _fs_schema", [], |r| r.get(0))
            .expect("count");
        assert_eq!(versions, 1);
        conn.execute("UPDATE _fs_schema SET version = 99", [])
            .expect("bump");
        let err = migrate(&mut SqliteConn(&conn), &model).expect_err("newer");
        assert!(err.message.contains("newer than this server"), "{err}");
    }

    #[test]
    fn columns_added_to_the_model_are_added_to_the_table() {
        let mut model = crate::field_service_model();
        let conn = rusqlite::Connection::open_in_memory().expect("sqlite");
        migrate(&mut SqliteConn(&conn), &model).expect("migrate");
        let accounts = model
            .tables
            .iter_mut()
            .find(|t| t.name == "accounts")
            .expect("accounts");
        accounts.columns.push(fieldsync_core::profile::Column {
            name: "region".into(),
            kind: fieldsync_core::profile::ColumnKind::Text,
        });
        migrate(&mut SqliteConn(&conn), &model).expect("migrate again");
        let has: bool = conn
            .prepare("SELECT 1 FROM pragma_table_info('accounts') WHERE name = 'region'")
            .expect("prepare")
            .exists([])
            .expect("exists");
        assert!(has);
    }
}
