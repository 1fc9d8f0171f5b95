//! Installing an offline profile on the device: the synced tables created,
//! altered and dropped, their model indexes, and the reset that clears
//! them.

use std::collections::BTreeSet;

use rusqlite::{Connection, TransactionBehavior};

use super::outbox::{OutboxEntry, outbox_entries};
use super::rows::LOCAL_VERSION_COLUMN;
use super::sync_errors::record_error;
use super::{indexes, meta, settle, triggers};
use crate::error::{Error, Result};
use crate::profile::{Column, RowRule, SyncProfile, SyncTable, quote_ident};

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

pub(super) fn create_table_sql(table: &SyncTable) -> String {
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
pub(super) fn same_columns(a: &[Column], b: &[Column]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.name == y.name && x.kind == y.kind)
}

/// Prefix of the indexes the data model declares (see
/// [`ensure_model_indexes`]).
pub(super) const MODEL_INDEX_PREFIX: &str = "_fs_mx_";

/// The local name of a model index: the table name's length keeps two
/// (table, index) pairs apart.
pub(super) fn model_index_name(table: &str, index: &str) -> String {
    format!("{MODEL_INDEX_PREFIX}{}_{table}_{index}", table.len())
}

/// The model indexes `table` has on the device.
fn model_indexes(conn: &Connection, table: &str) -> Result<Vec<String>> {
    Ok(conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?1 AND substr(name, 1, 7) = ?2",
        )?
        .query_map(rusqlite::params![table, MODEL_INDEX_PREFIX], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?)
}

/// Drops the model's indexes of `table` (before columns they name go).
pub(super) fn drop_model_indexes(conn: &Connection, table: &str) -> Result<()> {
    for n in model_indexes(conn, table)? {
        conn.execute_batch(&format!("DROP INDEX IF EXISTS {}", quote_ident(&n)))?;
    }
    Ok(())
}

/// Builds the data model's indexes of `table` the device lacks and drops
/// the ones the model no longer declares.
pub(super) fn ensure_model_indexes(conn: &Connection, table: &SyncTable) -> Result<()> {
    let wanted: BTreeSet<String> = table
        .model_indexes
        .iter()
        .map(|ix| model_index_name(&table.name, &ix.name))
        .collect();
    let have = model_indexes(conn, &table.name)?;
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

/// Installs a (new) profile: creates added tables, drops removed ones,
/// adds and drops columns, and marks tables whose rules changed for a new
/// download after removing the rows they no longer select. One transaction.
pub(super) fn apply_profile(
    conn: &mut Connection,
    old: Option<SyncProfile>,
    new: &SyncProfile,
    now: i64,
) -> Result<ProfileChange> {
    if old.as_ref().is_some_and(|old| old.user_id != new.user_id) {
        return Err(Error::InvalidInput(
            "this database holds another user's data; reset it before signing in as a new user"
                .into(),
        ));
    }
    let mut change = ProfileChange::default();
    let ctx = new.filter_context(now);
    // A new team or time zone changes what custom filters select.
    let context_changed = old
        .as_ref()
        .is_some_and(|old| old.team_id != new.team_id || old.zone() != new.zone());
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // Triggers and settle indexes name columns; they come back below
    // and at the next settling.
    triggers::drop_triggers(&tx)?;
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
                    triggers::drop_indexes(&tx, &table.name)?;
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
                change.removed_rows += settle::remove_unqualified(&tx, table, &ctx)?;
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
    meta::put_meta(&tx, "profile", &serde_json::to_string(new)?)?;
    triggers::install_triggers(&tx, new)?;
    for table in &new.tables {
        ensure_model_indexes(&tx, table)?;
    }
    // A new profile can change what reaches any row: the next settling
    // evaluates every row.
    tx.execute("UPDATE _fs_tables SET settle_all = 1", [])?;
    tx.commit()?;
    Ok(change)
}

/// Clears the offline database: synced tables, outbox, cursors, profile
/// and sync errors. The device id and settings stay. Refuses while
/// changes wait for upload unless `force`.
pub(super) fn clear(conn: &mut Connection, force: bool) -> Result<u64> {
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
