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

use super::{run, settle};
use crate::error::{Error, Result};

/// The schema version this release writes.
pub const SCHEMA_VERSION: i64 = 2;

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
            c.execute_batch(super::SCHEMA)?;
            c.execute_batch(settle::SCHEMA)?;
            c.execute_batch(run::SCHEMA)?;
            settle::upgrade_unversioned(c)
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
];

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
