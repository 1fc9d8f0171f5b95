//! Settling (C4), incrementally: which related rows to fetch, and which
//! local rows the offline profile no longer reaches.
//!
//! A sync used to evaluate every local row after its pulls and to compare
//! every related value with the set it had settled last time: O(rows) per
//! sync, seconds at a million rows, whatever the number of changes. Here a
//! sync only looks at what changed since the last settled run:
//!
//! - `_fs_related_pending (rule, value)`: related values whose rows must be
//!   fetched (`POST /v1/sync/fetch`), queued as rows arrive or are written
//!   (see `related::RelatedQueue` for when); a value leaves the queue when its
//!   fetch is applied, or when no local row holds it any more.
//! - `_fs_settle_rows (tbl, row_id)`: rows to evaluate again. Rows written
//!   by an incremental pull or a fetch are listed by the page apply when
//!   they are new to the device or a column their table's rules read
//!   changed (a row rewritten with the same values there was reached at the
//!   last settling and stays reached: the rest of what its evaluation reads
//!   is tracked below), and a trigger on `_fs_outbox` lists a row whose
//!   pending change leaves (a row with a pending change is never removed,
//!   so it is checked when it stops being pending).
//! - `_fs_settle_lost (tbl, col, value)`: related values a table lost.
//!   Triggers (one pair per related table and column a rule reads, installed
//!   with the profile) record the old value of every deleted row and of
//!   every update that changes the column. The rows of the tables that
//!   depend on a lost value, which the related table no longer holds, are
//!   evaluated again; removing them records their own lost values, so the
//!   removal cascades in dependency order within one pass.
//! - `_fs_tables.settle_all`: evaluate every row of the table (a table being
//!   downloaded from scratch, or after a profile change or an upgrade).
//!   Tables whose filters read the clock are evaluated whole when the local
//!   day changed since the last settled run (`_fs_meta.settle_day`): relative
//!   dates move by whole days.
//!
//! Inserts fire no trigger, so a bulk download pays nothing for this.
//! Indexes on the columns related rules compare (`incidents.work_order_id`,
//! `bookings.work_order_id`) are created the first time an incremental pass
//! needs them, after the bulk load, where building them is a sort.
//!
//! This module evaluates and removes; the queue lives in `related`, the
//! triggers and lookup indexes in `triggers`, and the tables in `schema`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use rusqlite::{Connection, params};

use super::meta::{meta_value, put_meta};
use super::outbox::has_pending;
use super::related::rule_key;
use super::rows::{
    delete_row, distinct_keys, rule_columns, rule_columns_sql, rule_row, text_like, value_key,
};
use super::triggers::{condition_indexes, ensure_index, holds_sql};
use crate::error::Result;
use crate::filter::{Cond, FilterContext};
use crate::profile::{RowRule, SyncProfile, SyncTable, quote_ident};
use crate::value::Value;

/// Removes the rows the profile no longer reaches, in one transaction (the
/// caller's), and resets the settle state. See the module documentation.
///
/// `early`: the tables [`settle_table`] already evaluated whole in this
/// run, with the day each was evaluated on. They are evaluated here like
/// tables settled by an earlier run (only what changed since), but for a
/// table whose filters read the clock and whose day has passed since.
pub(super) fn remove_unreached(
    tx: &Connection,
    profile: &SyncProfile,
    ctx: &FilterContext,
    early: &BTreeMap<String, String>,
) -> Result<Vec<(String, u64)>> {
    let today = ctx.today().to_string();
    let day_changed = meta_value(tx, "settle_day")?.is_none_or(|d| d != today);
    let whole: BTreeSet<String> = {
        let mut stmt = tx.prepare("SELECT name FROM _fs_tables WHERE settle_all")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    // Tables are settled in dependency order and each table's doomed rows
    // are deleted before the next table, so the rows a related table still
    // holds are exactly the rows that stay.
    let mut settled: BTreeSet<&str> = BTreeSet::new();
    let mut out = Vec::new();
    for table in profile.tables_in_dependency_order() {
        let full = whole.contains(&table.name)
            || (day_changed && table.uses_clock() && early.get(&table.name) != Some(&today))
            || !incremental(profile, table, &settled);
        let timer = std::time::Instant::now();
        let removed = if full {
            remove_all_unreached(tx, profile, table, &settled, ctx)?
        } else {
            remove_candidates(tx, profile, table, ctx)?
        };
        tracing::debug!(target: "fieldsync::sync", table = %table.name, full, removed, ms = timer.elapsed().as_millis() as u64, "table settled");
        settled.insert(table.name.as_str());
        out.push((table.name.clone(), removed));
    }
    tx.execute_batch("UPDATE _fs_tables SET settle_all = 0;")?;
    condition_indexes(tx, profile)?;
    put_meta(tx, "settle_day", &today)?;
    // Queued values of rules the profile no longer has.
    let keys: Vec<String> = profile.related_rules().map(|r| rule_key(&r)).collect();
    let list = serde_json::to_string(&keys)?;
    tx.execute(
        "DELETE FROM _fs_related_pending WHERE rule NOT IN (SELECT value FROM json_each(?1))",
        [list],
    )?;
    tx.execute_batch("DELETE FROM _fs_settle_rows; DELETE FROM _fs_settle_lost;")?;
    Ok(out)
}

// A table evaluated whole while the run's other tables still download
// (`Store::settle_table`): for a table downloaded whole whose related
// tables (`settled`) were downloaded whole and evaluated already in this
// run. Its rows and those of `settled` change no more in this run (a fetch
// writes only into tables not downloaded whole), so the evaluation holds
// for the run's final pass, which then looks only at what changed since
// (local writes, rows of these tables that a later settling removes). In
// three steps, so that the pages of the tables still downloading are
// written meanwhile: the indexes the evaluation reads ([`evaluation_indexes`],
// a write), the evaluation ([`unreached`], read on a connection of its own),
// the removal ([`remove_evaluated`], a write).

/// Builds the related columns' indexes a whole evaluation of `table` reads
/// (see [`remove_all_unreached`]).
pub(super) fn evaluation_indexes(
    tx: &Connection,
    profile: &SyncProfile,
    table: &SyncTable,
    settled: &BTreeSet<&str>,
) -> Result<()> {
    if related_only_sql(profile, table, settled).is_some() {
        related_indexes(tx, profile, table)?;
    }
    Ok(())
}

/// Builds the indexes on the related columns `table`'s rules read. Each
/// `IN (SELECT f FROM other)` of a whole evaluation reads the index on the
/// related column, the one incremental settling looks values up with:
/// built first, it replaces the temporary key set SQLite would build for
/// the statement (and spill to a file past its page cache), and the first
/// small sync after a download finds it.
fn related_indexes(tx: &Connection, profile: &SyncProfile, table: &SyncTable) -> Result<()> {
    for r in table.related_rules() {
        if let Some(other) = profile.table(r.other) {
            ensure_index(tx, other, r.foreign_column)?;
        }
    }
    Ok(())
}

/// The condition "not reached and without a pending change" on a row of
/// `table`, with `reached` from `related_only_sql`; `?1` is the table's name.
fn unreached_condition(table: &SyncTable, reached: &str) -> String {
    format!(
        "{pk} NOT IN (SELECT row_id FROM _fs_outbox WHERE tbl = ?1) AND NOT ({reached})",
        pk = quote_ident(&table.primary_key),
    )
}

/// The keys of the rows of `table` its rules no longer reach, but for rows
/// with a pending change; reads only.
pub(super) fn unreached(
    conn: &Connection,
    profile: &SyncProfile,
    table: &SyncTable,
    settled: &BTreeSet<&str>,
    ctx: &FilterContext,
) -> Result<Vec<String>> {
    match related_only_sql(profile, table, settled) {
        Some(reached) => {
            let sql = format!(
                "SELECT {} FROM {} WHERE {}",
                quote_ident(&table.primary_key),
                quote_ident(&table.name),
                unreached_condition(table, &reached)
            );
            let mut stmt = conn.prepare(&sql)?;
            let rows = stmt.query_map([&table.name], |r| r.get::<_, String>(0))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        }
        None => unreached_rows(conn, profile, table, settled, ctx),
    }
}

/// Removes the rows of `doomed` (from [`unreached`]) that are still not
/// reached and have no pending change, and takes `table` off the tables to
/// evaluate whole; returns the rows removed.
pub(super) fn remove_evaluated(
    tx: &Connection,
    profile: &SyncProfile,
    table: &SyncTable,
    settled: &BTreeSet<&str>,
    ctx: &FilterContext,
    doomed: &[String],
) -> Result<u64> {
    let mut removed = 0u64;
    if !doomed.is_empty() {
        match related_only_sql(profile, table, settled) {
            Some(reached) => {
                let sql = format!(
                    "DELETE FROM {} WHERE {} = ?2 AND {}",
                    quote_ident(&table.name),
                    quote_ident(&table.primary_key),
                    unreached_condition(table, &reached)
                );
                let mut stmt = tx.prepare(&sql)?;
                for id in doomed {
                    removed += stmt.execute(params![table.name, id])? as u64;
                }
            }
            None => {
                // Evaluated again in the write: the rows, the related values
                // and the pending changes as they are now.
                let now: BTreeSet<String> = unreached_rows(tx, profile, table, settled, ctx)?
                    .into_iter()
                    .collect();
                for id in doomed.iter().filter(|id| now.contains(*id)) {
                    if delete_row(tx, table, id)? {
                        removed += 1;
                    }
                }
            }
        }
    }
    tx.execute(
        "UPDATE _fs_tables SET settle_all = 0 WHERE name = ?1",
        [&table.name],
    )?;
    tx.execute("DELETE FROM _fs_settle_rows WHERE tbl = ?1", [&table.name])?;
    Ok(removed)
}

/// Every related rule of `table` reads another, already settled table
/// through columns that compare as text: its rows can be checked one by one.
fn incremental(profile: &SyncProfile, table: &SyncTable, settled: &BTreeSet<&str>) -> bool {
    table.rules.iter().all(|rule| match rule {
        RowRule::Related {
            table: other,
            column,
            foreign_column,
        } => {
            other != &table.name
                && settled.contains(other.as_str())
                && table.column(column).is_some_and(|c| text_like(c.kind))
                && profile
                    .table(other)
                    .and_then(|o| o.column(foreign_column))
                    .is_some_and(|c| text_like(c.kind))
        }
        _ => true,
    })
}

/// Evaluates every row of `table`.
fn remove_all_unreached(
    tx: &Connection,
    profile: &SyncProfile,
    table: &SyncTable,
    settled: &BTreeSet<&str>,
    ctx: &FilterContext,
) -> Result<u64> {
    Ok(match related_only_sql(profile, table, settled) {
        Some(reached) => {
            related_indexes(tx, profile, table)?;
            let sql = format!(
                "DELETE FROM {} WHERE {}",
                quote_ident(&table.name),
                unreached_condition(table, &reached)
            );
            tx.execute(&sql, [&table.name])? as u64
        }
        None => remove_unreached_rows(tx, profile, table, settled, ctx)?,
    })
}

/// The table's own rules (all, owned, custom) with custom filters lowered
/// once for the pass.
pub(super) struct OwnRules<'a> {
    profile: &'a SyncProfile,
    table: &'a SyncTable,
    ctx: &'a FilterContext,
    conn: &'a Connection,
    lowered: Vec<Option<Cond>>,
}

impl<'a> OwnRules<'a> {
    /// `conn` reads the related rows a custom filter's `related`
    /// conditions look at (the device's own copies).
    pub(super) fn new(
        profile: &'a SyncProfile,
        table: &'a SyncTable,
        ctx: &'a FilterContext,
        conn: &'a Connection,
    ) -> Self {
        let lowered = table
            .rules
            .iter()
            .map(|r| match r {
                RowRule::Custom { filter } => {
                    Some(filter.lower_in(table, ctx, &|n| profile.table(n)))
                }
                _ => None,
            })
            .collect();
        OwnRules {
            profile,
            table,
            ctx,
            conn,
            lowered,
        }
    }

    /// Whether rule `i` (not a related-rows rule) selects the row.
    pub(super) fn matches(&self, i: usize, row: &BTreeMap<String, Value>) -> bool {
        match (&self.table.rules[i], &self.lowered[i]) {
            (RowRule::Custom { .. }, Some(cond)) => cond.eval_with(
                &|c: &str| row.get(c).cloned(),
                &|t: &str, k: &str, v: &Value| self.related_row(t, k, v),
            ),
            (rule, _) => self.table.own_rule_matches(rule, row, self.ctx),
        }
    }

    /// The device's row of `table` whose `key` holds `value`, with its
    /// synced columns. A read that fails counts as a row that is there
    /// (logged): a row is never removed on a failed read.
    fn related_row(
        &self,
        table: &str,
        key: &str,
        value: &Value,
    ) -> Option<BTreeMap<String, Value>> {
        let t = self.profile.table(table)?;
        let columns: Vec<&crate::profile::Column> = t.columns.iter().collect();
        let sql = format!(
            "{} WHERE {} = ?1",
            rule_columns_sql(t, &columns),
            quote_ident(key)
        );
        let read = || -> Result<Option<BTreeMap<String, Value>>> {
            let mut stmt = self.conn.prepare_cached(&sql)?;
            let mut rows = stmt.query([value])?;
            match rows.next()? {
                Some(row) => Ok(Some(rule_row(row, &columns)?)),
                None => Ok(None),
            }
        };
        match read() {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(target: "fieldsync::sync", table, error = %e, "cannot read a related row; keeping the rows that need it");
                Some(BTreeMap::new())
            }
        }
    }
}

/// Evaluates the rows of `table` that may have stopped being reached: rows
/// listed in `_fs_settle_rows`, and rows whose related value the related
/// table lost.
fn remove_candidates(
    tx: &Connection,
    profile: &SyncProfile,
    table: &SyncTable,
    ctx: &FilterContext,
) -> Result<u64> {
    let mut ids: BTreeSet<String> = {
        let mut stmt = tx.prepare_cached("SELECT row_id FROM _fs_settle_rows WHERE tbl = ?1")?;
        let rows = stmt.query_map([&table.name], |r| r.get::<_, String>(0))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    for r in table.related_rules() {
        let (other, column, foreign_column) = (r.other, r.column, r.foreign_column);
        let Some(other_table) = profile.table(other) else {
            continue;
        };
        let any_lost = tx
            .prepare_cached("SELECT 1 FROM _fs_settle_lost WHERE tbl = ?1 AND col = ?2 LIMIT 1")?
            .exists(params![other, foreign_column])?;
        if !any_lost {
            continue;
        }
        ensure_index(tx, other_table, foreign_column)?;
        ensure_index(tx, table, column)?;
        let sql = format!(
            "SELECT t.{pk} FROM _fs_settle_lost l JOIN {t} t ON t.{c} = l.value
              WHERE l.tbl = ?1 AND l.col = ?2
                AND NOT EXISTS (SELECT 1 FROM {o} WHERE {f} = l.value)",
            pk = quote_ident(&table.primary_key),
            t = quote_ident(&table.name),
            c = quote_ident(column),
            o = quote_ident(other),
            f = quote_ident(foreign_column),
        );
        let mut stmt = tx.prepare_cached(&sql)?;
        let rows = stmt.query_map(params![other, foreign_column], |r| r.get::<_, String>(0))?;
        for id in rows {
            ids.insert(id?);
        }
    }
    if ids.is_empty() {
        return Ok(0);
    }
    // Per rule, the lookup that says whether the related table holds a
    // row's value (built once for the pass).
    let mut lookups: Vec<Option<String>> = Vec::with_capacity(table.rules.len());
    for rule in &table.rules {
        lookups.push(match rule {
            RowRule::Related {
                table: other,
                foreign_column,
                ..
            } => {
                if let Some(other_table) = profile.table(other) {
                    ensure_index(tx, other_table, foreign_column)?;
                }
                Some(holds_sql(other, foreign_column))
            }
            _ => None,
        });
    }
    let own = OwnRules::new(profile, table, ctx, tx);
    let columns = rule_columns(table);
    let by_id = format!(
        "{} WHERE {} = ?1",
        rule_columns_sql(table, &columns),
        quote_ident(&table.primary_key)
    );
    let mut removed = 0;
    for id in ids {
        if has_pending(tx, &table.name, &id)? {
            continue;
        }
        let fields = {
            let mut stmt = tx.prepare_cached(&by_id)?;
            let mut rows = stmt.query([&id])?;
            match rows.next()? {
                Some(row) => rule_row(row, &columns)?,
                None => continue,
            }
        };
        let mut stays = false;
        for (i, rule) in table.rules.iter().enumerate() {
            stays = match (rule, &lookups[i]) {
                (RowRule::Related { column, .. }, Some(sql)) => {
                    match fields.get(column).and_then(value_key) {
                        Some(k) => tx.prepare_cached(sql)?.exists([k])?,
                        None => false,
                    }
                }
                _ => own.matches(i, &fields),
            };
            if stays {
                break;
            }
        }
        if !stays && delete_row(tx, table, &id)? {
            removed += 1;
        }
    }
    Ok(removed)
}

pub(super) fn remove_unqualified(
    conn: &Connection,
    table: &SyncTable,
    ctx: &FilterContext,
) -> Result<u64> {
    let columns = rule_columns(table);
    let mut stmt = conn.prepare(&rule_columns_sql(table, &columns))?;
    let mut rows = stmt.query([])?;
    let mut doomed = Vec::new();
    while let Some(row) = rows.next()? {
        let fields = rule_row(row, &columns)?;
        if table.row_qualifies(&fields, ctx) {
            continue;
        }
        if let Some(Value::Text(id)) = fields.get(&table.primary_key) {
            doomed.push(id.clone());
        }
    }
    let mut removed = 0;
    for id in doomed {
        if !has_pending(conn, &table.name, &id)? && delete_row(conn, table, &id)? {
            removed += 1;
        }
    }
    Ok(removed)
}

/// The condition "some related-rows rule reaches this row" in SQL, when
/// every rule of `table` is a related-rows rule over an already settled
/// table and both columns compare as text; `None` otherwise.
pub(super) fn related_only_sql(
    profile: &SyncProfile,
    table: &SyncTable,
    settled: &BTreeSet<&str>,
) -> Option<String> {
    if table.rules.is_empty() {
        return None;
    }
    let mut parts = Vec::new();
    for rule in &table.rules {
        let RowRule::Related {
            table: other,
            column,
            foreign_column,
        } = rule
        else {
            return None;
        };
        let other_table = profile.table(other)?;
        if !settled.contains(other.as_str())
            || !table.column(column).is_some_and(|c| text_like(c.kind))
            || !other_table
                .column(foreign_column)
                .is_some_and(|c| text_like(c.kind))
        {
            return None;
        }
        // No WHERE in the sub-query, so SQLite reads the related column's
        // index for it instead of building a temporary key set; a NULL
        // among the related values makes a miss NULL, hence the COALESCE.
        let (c, f) = (quote_ident(column), quote_ident(foreign_column));
        parts.push(format!(
            "({c} IS NOT NULL AND COALESCE({c} IN (SELECT {f} FROM {o}), 0))",
            o = quote_ident(other)
        ));
    }
    Some(parts.join(" OR "))
}

/// Removes, row by row, the rows of `table` that no rule reaches (tables
/// with rules of their own, or values that do not compare as text).
/// Related rules look at the rows the related table holds once settled;
/// a rule over the table itself sees the rows kept so far in this pass,
/// and a rule over a table not yet settled reaches nothing.
pub(super) fn remove_unreached_rows(
    tx: &Connection,
    profile: &SyncProfile,
    table: &SyncTable,
    settled: &BTreeSet<&str>,
    ctx: &FilterContext,
) -> Result<u64> {
    let mut removed = 0;
    for id in unreached_rows(tx, profile, table, settled, ctx)? {
        if delete_row(tx, table, &id)? {
            removed += 1;
        }
    }
    Ok(removed)
}

/// The keys of the rows of `table` that [`remove_unreached_rows`] removes
/// (rows with a pending change stay), read on `conn` and written nowhere.
pub(super) fn unreached_rows(
    conn: &Connection,
    profile: &SyncProfile,
    table: &SyncTable,
    settled: &BTreeSet<&str>,
    ctx: &FilterContext,
) -> Result<Vec<String>> {
    let pending: BTreeSet<String> = {
        let mut stmt = conn.prepare_cached("SELECT row_id FROM _fs_outbox WHERE tbl = ?1")?;
        let rows = stmt.query_map([&table.name], |r| r.get::<_, String>(0))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    // Reached values of settled related tables, loaded once per rule.
    let mut reached: HashMap<(String, String), BTreeSet<String>> = HashMap::new();
    // Values of this table's own rows kept so far (rules over itself).
    let mut own: HashMap<String, BTreeSet<String>> = HashMap::new();
    for rule in &table.rules {
        if let RowRule::Related {
            table: other,
            foreign_column,
            ..
        } = rule
        {
            if *other == table.name {
                own.entry(foreign_column.clone()).or_default();
            } else if settled.contains(other.as_str())
                && let Some(other_table) = profile.table(other)
                && let std::collections::hash_map::Entry::Vacant(e) =
                    reached.entry((other.clone(), foreign_column.clone()))
            {
                e.insert(distinct_keys(conn, other_table, foreign_column)?);
            }
        }
    }
    let columns = rule_columns(table);
    let own_rules = OwnRules::new(profile, table, ctx, conn);
    let mut doomed = Vec::new();
    {
        let mut stmt = conn.prepare(&rule_columns_sql(table, &columns))?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let fields = rule_row(row, &columns)?;
            let Some(Value::Text(id)) = fields.get(&table.primary_key) else {
                continue;
            };
            let stays = pending.contains(id)
                || table.rules.iter().enumerate().any(|(i, rule)| match rule {
                    RowRule::Related {
                        table: other,
                        column,
                        foreign_column,
                    } => fields.get(column).and_then(value_key).is_some_and(|k| {
                        if *other == table.name {
                            own.get(foreign_column).is_some_and(|set| set.contains(&k))
                        } else {
                            reached
                                .get(&(other.clone(), foreign_column.clone()))
                                .is_some_and(|set| set.contains(&k))
                        }
                    }),
                    _ => own_rules.matches(i, &fields),
                });
            if stays {
                for (c, set) in own.iter_mut() {
                    if let Some(k) = fields.get(c).and_then(value_key) {
                        set.insert(k);
                    }
                }
            } else {
                doomed.push(id.clone());
            }
        }
    }
    Ok(doomed)
}

#[cfg(test)]
mod tests;
