//! Per-table sync state (`_fs_tables`): the server cursor a table resumes
//! from, the first download's progress, and the last sync and error.

use rusqlite::{Connection, OptionalExtension, params};

use super::related::related_rule_key;
use crate::error::{Error, Result};
use crate::profile::SyncTable;

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

/// Moves a table's cursor past a page applied in `tx`: counts its entries
/// for progress, records the expected total if known, and on the last page
/// (`done`) marks the first download complete (to be settled whole).
pub(super) fn advance_cursor(
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

/// Sync state of a table.
pub(super) fn table_state(conn: &Connection, name: &str) -> Result<TableState> {
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

/// Starts `table`'s download over from the beginning (the server no
/// longer recognises its cursor, for example after a restore).
pub(super) fn restart_table(conn: &Connection, table: &str) -> Result<()> {
    conn.execute(
        "UPDATE _fs_tables SET cursor = '', initial_done = 0, expected_rows = NULL, received_rows = 0, settle_all = 1, walk_order = NULL WHERE name = ?1",
        [table],
    )?;
    Ok(())
}

/// Records a failed pull of `table`.
pub(super) fn record_table_error(conn: &Connection, table: &str, message: &str) -> Result<()> {
    conn.execute(
        "UPDATE _fs_tables SET last_error = ?2 WHERE name = ?1",
        params![table, message],
    )?;
    Ok(())
}

/// Records in `tx` that `tables` are current as of `now` without a
/// download (smart sync: the server reported no change after their cursors).
pub(super) fn mark_current(tx: &Connection, tables: &[String], now: i64) -> Result<()> {
    let mut stmt = tx.prepare_cached(
        "UPDATE _fs_tables SET last_sync_at = ?2, last_attempt_at = ?2, last_error = NULL
         WHERE name = ?1 AND initial_done = 1",
    )?;
    for table in tables {
        stmt.execute(params![table, now])?;
    }
    Ok(())
}

/// Marks in `tx` the start of a pull of `table` (see `Store::begin_pull`):
/// resets the progress counters; a download from an empty cursor takes the
/// next `walk_order` and drops the related values queued for its rules.
pub(super) fn begin_pull(tx: &Connection, table: &SyncTable, now: i64) -> Result<()> {
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
}
