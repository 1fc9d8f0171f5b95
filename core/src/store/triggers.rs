//! The triggers and lookup indexes incremental settling relies on: the
//! lost-value triggers that fill `_fs_settle_lost` and `_fs_settle_rows`
//! (installed with the profile), and the indexes on the columns related
//! rules compare, built the first time a pass needs them.

use std::collections::BTreeSet;

use rusqlite::{Connection, params};

use crate::error::Result;
use crate::filter::Hop;
use crate::profile::{RowRule, SyncProfile, SyncTable, quote_ident};

pub(super) const TRIGGER_PREFIX: &str = "_fs_lost_";

/// The (related table, column) pairs the profile's related-rows rules read.
pub(super) fn related_sources(profile: &SyncProfile) -> BTreeSet<(String, String)> {
    profile
        .related_rules()
        .filter(|r| {
            profile
                .table(r.other)
                .is_some_and(|o| o.column(r.foreign_column).is_some())
        })
        .map(|r| (r.other.to_owned(), r.foreign_column.to_owned()))
        .collect()
}

pub(super) const INDEX_PREFIX: &str = "_fs_ix_";

/// Names of the schema objects of `kind` whose name starts with `prefix`,
/// on `table` when given.
pub(super) fn object_names(
    conn: &Connection,
    kind: &str,
    prefix: &str,
    table: Option<&str>,
) -> Result<Vec<String>> {
    let mut stmt = conn.prepare(
        "SELECT name FROM sqlite_master WHERE type = ?1 AND substr(name, 1, length(?2)) = ?2
           AND (?3 IS NULL OR tbl_name = ?3)",
    )?;
    let rows = stmt.query_map(params![kind, prefix, table], |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Drops the schema objects `object_names` lists (`kind` is `trigger` or
/// `index`).
pub(super) fn drop_objects(
    conn: &Connection,
    kind: &str,
    prefix: &str,
    table: Option<&str>,
) -> Result<()> {
    for name in object_names(conn, kind, prefix, table)? {
        conn.execute_batch(&format!("DROP {kind} IF EXISTS {}", quote_ident(&name)))?;
    }
    Ok(())
}

/// Drops the lost-value triggers (before columns are altered or tables
/// dropped; [`install_triggers`] puts them back).
pub(super) fn drop_triggers(conn: &Connection) -> Result<()> {
    drop_objects(conn, "trigger", TRIGGER_PREFIX, None)
}

/// The lost-value triggers for `profile`: (name, `CREATE TRIGGER` text).
/// Identifiers are checked profile names (`[a-z0-9_]`), quoted here.
///
/// The insert skips a value already recorded with `WHERE NOT EXISTS`, not
/// with `INSERT OR IGNORE`: SQLite replaces the conflict policy of a
/// trigger's statements with the one of the statement that fired it, and a
/// pulled row is written by an upsert (`ON CONFLICT DO UPDATE`), under which
/// `OR IGNORE` does not hold. A value lost twice before the next settling (a
/// booking deleted, another one moved off the same work order) made the
/// page fail on the table's primary key, and every sync after it.
pub(super) fn trigger_sqls(profile: &SyncProfile) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (i, (table, column)) in related_sources(profile).iter().enumerate() {
        let (t, c) = (quote_ident(table), quote_ident(column));
        let insert = format!(
            "INSERT INTO _fs_settle_lost (tbl, col, value) \
             SELECT '{table}', '{column}', CAST(old.{c} AS TEXT) \
             WHERE NOT EXISTS (SELECT 1 FROM _fs_settle_lost \
             WHERE tbl = '{table}' AND col = '{column}' AND value = CAST(old.{c} AS TEXT));"
        );
        let (name_d, name_u) = (
            format!("{TRIGGER_PREFIX}{i}_d"),
            format!("{TRIGGER_PREFIX}{i}_u"),
        );
        out.push((
            name_d.clone(),
            format!(
                "CREATE TRIGGER {} AFTER DELETE ON {t} WHEN old.{c} IS NOT NULL BEGIN {insert} END",
                quote_ident(&name_d)
            ),
        ));
        out.push((
            name_u.clone(),
            format!(
                "CREATE TRIGGER {} AFTER UPDATE OF {c} ON {t} \
                 WHEN old.{c} IS NOT NULL AND old.{c} IS NOT new.{c} BEGIN {insert} END",
                quote_ident(&name_u)
            ),
        ));
    }
    out.extend(condition_trigger_sqls(profile));
    out
}

/// The relationships custom filters' `related` conditions follow, per
/// table: each path from the table, as (table, column, related table) hops.
pub(super) fn condition_paths(profile: &SyncProfile) -> Vec<(String, Vec<Hop>)> {
    let mut out = Vec::new();
    for t in &profile.tables {
        for rule in &t.rules {
            if let RowRule::Custom { filter } = rule {
                for path in filter.related_paths(&t.name) {
                    let entry = (t.name.clone(), path);
                    if !out.contains(&entry) {
                        out.push(entry);
                    }
                }
            }
        }
    }
    out
}

/// Triggers that list for settling the rows whose filter reads a related
/// row that changed or went: for a path `t0 -[c0]-> t1 -[c1]-> t2`, an
/// update or delete of a `t2` row lists the `t0` rows whose `t1` row names
/// it. A work order whose priority drops so puts its bookings up for
/// evaluation, which then leave. New related rows list nothing: a row they
/// let in is sent by the server (it was not on the device).
pub(super) fn condition_trigger_sqls(profile: &SyncProfile) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (i, (t0, path)) in condition_paths(profile).iter().enumerate() {
        let Some(first) = profile.table(t0) else {
            continue;
        };
        let Some((_, last_column, target)) = path.last() else {
            continue;
        };
        let Some(target_table) = profile.table(target) else {
            continue;
        };
        // x0 is the filtered row; xk the row of the k-th hop's table.
        let mut from = format!("{} AS x0", quote_ident(t0));
        let mut ok = true;
        for (k, (_, column, other)) in path.iter().enumerate().take(path.len() - 1) {
            let Some(o) = profile.table(other) else {
                ok = false;
                break;
            };
            from.push_str(&format!(
                " JOIN {} AS x{n} ON x{n}.{pk} = x{k}.{c}",
                quote_ident(other),
                n = k + 1,
                pk = quote_ident(&o.primary_key),
                c = quote_ident(column),
            ));
        }
        if !ok {
            continue;
        }
        let pk0 = quote_ident(&first.primary_key);
        let last = path.len() - 1;
        let insert = format!(
            "INSERT INTO _fs_settle_rows (tbl, row_id) \
             SELECT DISTINCT '{t0}', CAST(x0.{pk0} AS TEXT) FROM {from} \
             WHERE x{last}.{c} = old.{tpk} AND NOT EXISTS (SELECT 1 FROM _fs_settle_rows s \
             WHERE s.tbl = '{t0}' AND s.row_id = CAST(x0.{pk0} AS TEXT));",
            c = quote_ident(last_column),
            tpk = quote_ident(&target_table.primary_key),
        );
        let t = quote_ident(target);
        for (suffix, event) in [("d", "DELETE"), ("u", "UPDATE")] {
            let name = format!("{TRIGGER_PREFIX}c{i}_{suffix}");
            out.push((
                name.clone(),
                format!(
                    "CREATE TRIGGER {} AFTER {event} ON {t} BEGIN {insert} END",
                    quote_ident(&name)
                ),
            ));
        }
    }
    out
}

/// Indexes the triggers of [`condition_trigger_sqls`] look rows up by (the
/// columns a `related` condition follows), built after a download like the
/// other settle indexes.
pub(super) fn condition_indexes(tx: &Connection, profile: &SyncProfile) -> Result<()> {
    for (_, path) in condition_paths(profile) {
        for (table, column, _) in &path {
            if let Some(t) = profile.table(table) {
                ensure_index(tx, t, column)?;
            }
        }
    }
    Ok(())
}

/// Installs the lost-value triggers for `profile` (replacing any).
pub(super) fn install_triggers(conn: &Connection, profile: &SyncProfile) -> Result<()> {
    drop_triggers(conn)?;
    for (_, sql) in trigger_sqls(profile) {
        conn.execute_batch(&sql)?;
    }
    Ok(())
}

/// True when the installed triggers are the ones [`install_triggers`]
/// installs for `profile` (names and text: a store written by an earlier
/// version gets the current ones).
pub(super) fn triggers_installed(conn: &Connection, profile: &SyncProfile) -> Result<bool> {
    let mut stmt = conn.prepare(
        "SELECT name, sql FROM sqlite_master WHERE type = 'trigger'
           AND substr(name, 1, length(?1)) = ?1",
    )?;
    let rows = stmt.query_map([TRIGGER_PREFIX], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
    })?;
    let installed: BTreeSet<(String, String)> = rows.collect::<rusqlite::Result<_>>()?;
    let expected: BTreeSet<(String, String)> = trigger_sqls(profile).into_iter().collect();
    Ok(installed == expected)
}

/// Drops the settle indexes of `table` (before its columns change; they are
/// created again when needed).
pub(super) fn drop_indexes(conn: &Connection, table: &str) -> Result<()> {
    drop_objects(conn, "index", INDEX_PREFIX, Some(table))
}

/// The query "does `table` hold a row whose `column` is ?1".
pub(super) fn holds_sql(table: &str, column: &str) -> String {
    format!(
        "SELECT 1 FROM {} WHERE {} = ?1 LIMIT 1",
        quote_ident(table),
        quote_ident(column)
    )
}

/// Creates, if missing, an index on `table.column` (nothing for the primary
/// key). The name carries the table name's length, so no two pairs share it.
pub(super) fn ensure_index(conn: &Connection, table: &SyncTable, column: &str) -> Result<()> {
    if column == table.primary_key {
        return Ok(());
    }
    let name = format!(
        "{INDEX_PREFIX}{}_{}_{}",
        table.name.len(),
        table.name,
        column
    );
    let exists = conn
        .prepare_cached("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?1")?
        .exists([&name])?;
    if exists {
        return Ok(());
    }
    // CREATE INDEX sorts the column's values in memory up to the page
    // cache's size before it spills to a file, so at 1M rows the sort
    // alone took 2 MiB more than at 100k. The build runs with a 256 KiB
    // cache (the sorter's minimum, `connection::SORTER_MIN_PAGES`, is 64 pages),
    // which a 100k build fills too, and the store's cache size comes back
    // after it.
    let cache: i64 = conn.pragma_query_value(None, "cache_size", |r| r.get(0))?;
    conn.pragma_update(None, "cache_size", INDEX_BUILD_CACHE_KIB)?;
    let built = conn.execute_batch(&format!(
        "CREATE INDEX IF NOT EXISTS {} ON {} ({})",
        quote_ident(&name),
        quote_ident(&table.name),
        quote_ident(column)
    ));
    conn.pragma_update(None, "cache_size", cache)?;
    built?;
    Ok(())
}

/// The page cache an index build runs with (`cache_size`, negative: KiB).
pub(super) const INDEX_BUILD_CACHE_KIB: i64 = -256;
