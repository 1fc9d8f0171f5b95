//! Local indexes: the indexes a device keeps on its copy of a synced table
//! so the app's local queries ([`crate::query`]) read them instead of
//! scanning the table.
//!
//! Declarations come from the offline profile ([`SyncTable::indexes`]) and
//! may come from elsewhere (the data model's own indexes): whoever declares
//! them hands the full list for a table to [`set_local_indexes`], which
//! creates what is missing and drops the table's local indexes no longer
//! declared. Each index is named from its table and columns (`_fs_lix_`,
//! then `table(column,column)`; identifiers cannot hold parentheses or
//! commas), so the same declaration is the same index whatever its source,
//! and settling's own indexes (`_fs_ix_`) are never touched.

use std::collections::BTreeSet;

use rusqlite::Connection;

use crate::error::Result;
use crate::profile::{LocalIndex, SyncTable, quote_ident};

const PREFIX: &str = "_fs_lix_";

/// The SQLite name of a local index of `table`.
pub fn local_index_name(table: &str, index: &LocalIndex) -> String {
    format!("{PREFIX}{table}({})", index.columns.join(","))
}

/// The local indexes `table` holds now.
fn existing(conn: &Connection, table: &str) -> Result<BTreeSet<String>> {
    let mut stmt = conn.prepare(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?1 AND substr(name, 1, length(?2)) = ?2",
    )?;
    let names = stmt.query_map(rusqlite::params![table, PREFIX], |r| r.get(0))?;
    Ok(names.collect::<rusqlite::Result<_>>()?)
}

/// Makes `table`'s local indexes exactly `indexes`: creates the missing
/// ones and drops those no longer declared. Each declaration must name
/// synced columns of the table ([`LocalIndex::validate`]); a declaration
/// that does not is an error and nothing of it is created.
pub fn set_local_indexes(
    conn: &Connection,
    table: &SyncTable,
    indexes: &[LocalIndex],
) -> Result<()> {
    let mut wanted = BTreeSet::new();
    for index in indexes {
        index.validate(table)?;
        wanted.insert(local_index_name(&table.name, index));
    }
    for name in existing(conn, &table.name)? {
        if !wanted.contains(&name) {
            conn.execute_batch(&format!("DROP INDEX IF EXISTS {}", quote_ident(&name)))?;
        }
    }
    for index in indexes {
        // The primary key last: a query's order ends with it (it breaks
        // ties), so an index that holds it serves the whole order and a
        // limit stops after as many rows, where one without it sorts every
        // row its condition selects.
        let mut columns: Vec<String> = index.columns.iter().map(|c| quote_ident(c)).collect();
        if !index.columns.contains(&table.primary_key) {
            columns.push(quote_ident(&table.primary_key));
        }
        conn.execute_batch(&format!(
            "CREATE INDEX IF NOT EXISTS {} ON {} ({})",
            quote_ident(&local_index_name(&table.name, index)),
            quote_ident(&table.name),
            columns.join(", ")
        ))?;
    }
    Ok(())
}

/// Drops every local index of `table` (before its columns change).
pub(super) fn drop_local_indexes(conn: &Connection, table: &str) -> Result<()> {
    for name in existing(conn, table)? {
        conn.execute_batch(&format!("DROP INDEX IF EXISTS {}", quote_ident(&name)))?;
    }
    Ok(())
}
