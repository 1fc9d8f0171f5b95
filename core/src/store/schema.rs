//! The device database's own tables (`_fs_*`): created and upgraded by
//! numbered migrations, the version kept in `PRAGMA user_version`.
//!
//! A store opened by this release runs the migrations past its version,
//! all in one immediate transaction (another process opening the same file
//! waits, then finds the work done). A current store writes nothing at
//! open, so a store on a full disk still opens. A store written by a newer
//! release is refused rather than guessed at.
//!
//! To change the schema, append a migration; never edit one that shipped.
//! The data tables of the offline profile are not here: the profile
//! install creates and changes them.

use rusqlite::{Connection, TransactionBehavior};

use std::collections::BTreeSet;

use rusqlite::params;

use super::meta::stored_profile;
use super::related::rule_key;
use super::rows::distinct_keys;
use super::triggers::{install_triggers, triggers_installed};
use crate::error::{Error, Result};

/// The schema version this release writes.
pub const SCHEMA_VERSION: i64 = 3;

struct Migration {
    version: i64,
    apply: fn(&Connection) -> Result<()>,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        // The tables of the 2026-12-07 release (the statements frozen as
        // they shipped). Stores written before numbered migrations
        // (version 0) already hold some or all of them: the statements
        // create what is missing, and the columns and triggers added since
        // their release are completed.
        version: 1,
        apply: |c| {
            c.execute_batch(STORE_TABLES)?;
            c.execute_batch(SETTLE_TABLES)?;
            c.execute_batch(RUN_TABLE)?;
            upgrade_unversioned(c)
        },
    },
    Migration {
        // Local transactions: the transaction an outbox entry belongs to
        // (NULL: a single write); its entries are uploaded together, in
        // one request.
        version: 2,
        apply: |c| {
            c.execute_batch(
                "ALTER TABLE _fs_outbox ADD COLUMN tx_id TEXT;
                 CREATE INDEX _fs_outbox_tx ON _fs_outbox (tx_id) WHERE tx_id IS NOT NULL;",
            )?;
            Ok(())
        },
    },
    Migration {
        // The running sync's progress as a fraction that never decreases
        // (the share done the running process shows).
        version: 3,
        apply: |c| {
            c.execute_batch("ALTER TABLE _fs_sync_run ADD COLUMN fraction REAL")?;
            Ok(())
        },
    },
];

/// The engine's tables as migration 1 creates them (`schema.rs`); frozen as
/// shipped: a change is a new migration there.
const STORE_TABLES: &str = r#"
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

/// The settle state tables, created with the store.
const SETTLE_TABLES: &str = r#"
CREATE TABLE IF NOT EXISTS _fs_related_pending (
    rule TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (rule, value)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS _fs_settle_rows (
    tbl TEXT NOT NULL,
    row_id TEXT NOT NULL,
    PRIMARY KEY (tbl, row_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS _fs_settle_lost (
    tbl TEXT NOT NULL,
    col TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (tbl, col, value)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS _fs_outbox_settle AFTER DELETE ON _fs_outbox BEGIN
    INSERT OR IGNORE INTO _fs_settle_rows (tbl, row_id) VALUES (old.tbl, old.row_id);
END;
"#;

/// The table of the running sync; at most one row (`id = 1`).
const RUN_TABLE: &str = r#"
CREATE TABLE IF NOT EXISTS _fs_sync_run (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    sync_id TEXT NOT NULL,
    pid INTEGER NOT NULL,
    mode TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    current_table TEXT,
    rows_done INTEGER NOT NULL,
    rows_total INTEGER,
    bytes_down INTEGER NOT NULL
);
"#;

/// Brings a store written before numbered migrations up to date, in the
/// caller's transaction (migration 1): the `settle_all`
/// and `walk_order` columns, the lost-value triggers, and the related
/// values still to fetch (from the old `_fs_related_seen` sets).
fn upgrade_unversioned(tx: &Connection) -> Result<()> {
    let conn = tx;
    let has_settle_all = conn
        .prepare("SELECT 1 FROM pragma_table_info('_fs_tables') WHERE name = 'settle_all'")?
        .exists([])?;
    let has_seen = conn
        .prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_fs_related_seen'")?
        .exists([])?;
    let profile = stored_profile(conn)?;
    let triggers_ok = match &profile {
        Some(p) => triggers_installed(conn, p)?,
        None => true,
    };
    let has_walk_order = conn
        .prepare("SELECT 1 FROM pragma_table_info('_fs_tables') WHERE name = 'walk_order'")?
        .exists([])?;
    if has_settle_all && has_walk_order && !has_seen && triggers_ok {
        return Ok(());
    }
    if !has_walk_order {
        // Downloads begun before it have none: their walks cover no
        // other table's (see `RelatedQueue`).
        tx.execute_batch("ALTER TABLE _fs_tables ADD COLUMN walk_order INTEGER")?;
    }
    if has_settle_all {
        if has_seen || !triggers_ok {
            tx.execute("UPDATE _fs_tables SET settle_all = 1", [])?;
        }
    } else {
        tx.execute_batch(
            "ALTER TABLE _fs_tables ADD COLUMN settle_all INTEGER NOT NULL DEFAULT 1",
        )?;
    }
    if let Some(profile) = &profile {
        if has_seen {
            // The values held now that were not settled: still to fetch.
            for r in profile.related_rules() {
                let Some(other_table) = profile.table(r.other) else {
                    continue;
                };
                let (foreign_column, key) = (r.foreign_column, rule_key(&r));
                let seen: BTreeSet<String> = {
                    let mut stmt =
                        tx.prepare("SELECT value FROM _fs_related_seen WHERE rule = ?1")?;
                    let rows = stmt.query_map([&key], |r| r.get::<_, String>(0))?;
                    rows.collect::<rusqlite::Result<_>>()?
                };
                let held = distinct_keys(tx, other_table, foreign_column)?;
                let mut insert = tx.prepare_cached(
                    "INSERT OR IGNORE INTO _fs_related_pending (rule, value) VALUES (?1, ?2)",
                )?;
                for v in held.difference(&seen) {
                    insert.execute(params![key, v])?;
                }
            }
        }
        install_triggers(tx, profile)?;
    }
    if has_seen {
        tx.execute_batch("DROP TABLE _fs_related_seen")?;
    }
    Ok(())
}

fn version(conn: &Connection) -> Result<i64> {
    Ok(conn.query_row("PRAGMA user_version", [], |r| r.get(0))?)
}

/// Brings the store on `conn` to [`SCHEMA_VERSION`].
pub(super) fn migrate(conn: &mut Connection) -> Result<()> {
    if check(version(conn)?)? {
        return Ok(());
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // Read again under the write lock: another process may have migrated
    // the file meanwhile.
    let from = version(&tx)?;
    if check(from)? {
        return Ok(());
    }
    for m in MIGRATIONS.iter().filter(|m| m.version > from) {
        (m.apply)(&tx)?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(())
}

/// Whether a store at `version` is current; an error when it is newer than
/// this release.
fn check(version: i64) -> Result<bool> {
    if version > SCHEMA_VERSION {
        return Err(Error::Storage(format!(
            "the device database has schema version {version}, written by a newer fieldsync \
             (this release knows {SCHEMA_VERSION}); update the app or reset the database"
        )));
    }
    Ok(version == SCHEMA_VERSION)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_migrations_are_numbered_one_by_one_up_to_the_version() {
        let versions: Vec<i64> = MIGRATIONS.iter().map(|m| m.version).collect();
        let expected: Vec<i64> = (1..=SCHEMA_VERSION).collect();
        assert_eq!(versions, expected);
    }

    #[test]
    fn a_fresh_store_is_created_at_the_version_and_a_current_one_writes_nothing() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("d.db");
        let mut conn = Connection::open(&path).expect("open");
        migrate(&mut conn).expect("migrate");
        assert_eq!(version(&conn).expect("version"), SCHEMA_VERSION);
        let tables: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '_fs_outbox'",
                [],
                |r| r.get(0),
            )
            .expect("tables");
        assert_eq!(tables, 1);
        // Current: a read-only connection migrates without writing.
        let mut read_only =
            Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .expect("open read-only");
        migrate(&mut read_only).expect("a current store needs no write");
    }

    #[test]
    fn a_store_of_a_newer_release_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let mut conn = Connection::open(dir.path().join("d.db")).expect("open");
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .expect("set");
        let err = migrate(&mut conn).expect_err("newer");
        assert!(err.to_string().contains("newer fieldsync"), "{err}");
    }
}
