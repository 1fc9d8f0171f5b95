//! Writing a pulled page (or fetched rows) into a synced table.
//!
//! [`PageWriter`] checks a page's columns against the table, prepares one
//! upsert, and then writes row by row: each row's related values are queued
//! (see `related::RelatedQueue`) before it is written, rows with a pending
//! local change are left alone, and rows written over a settled table are
//! marked for the next settling when they are new to the device or a
//! column their table's rules read changed. A row written over a settled
//! table (a pulled one, when the table's values are queued) is first written
//! by an update that holds only when none of that applies (the same values
//! in those columns and the queued ones, no version skipped): the edited
//! rows of an incremental sync take no lookup of the device's copy.
//!
//! Its JSON form is decoded and fed to a writer by `page_json`.

use rusqlite::{CachedStatement, Connection, OptionalExtension};

use super::outbox::has_pending;
use super::related::{Arrival, RelatedQueue};
use super::rows::{Upsert, delete_row, indexed_columns, page_columns, rule_columns};
use super::tables::advance_cursor;
use crate::error::{Error, Result};
use crate::profile::{Column, SyncProfile, SyncTable, quote_ident};
use crate::protocol::{PullPage, VERSION_COLUMN};
use crate::value::Value;

/// What applying one pulled page did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PageApplied {
    pub upserted: u64,
    pub removed: u64,
    /// Rows left alone because a local change is waiting for upload.
    pub kept_pending: u64,
}

/// Writes the rows and removals of one page into a table, in the caller's
/// transaction.
pub(super) struct PageWriter<'c> {
    conn: &'c Connection,
    table: &'c SyncTable,
    /// The page's columns after `_version`, as the table's columns.
    kinds: Vec<&'c Column>,
    pub(super) width: usize,
    pk_index: usize,
    insert: CachedStatement<'c>,
    /// Every column, for a row whose indexed values moved (see `Upsert`).
    insert_moved: Option<CachedStatement<'c>>,
    /// Lists the row for the next settling unless the device holds it with
    /// the same values in every column its table's rules read.
    track_row: Option<CachedStatement<'c>>,
    /// With both a related-value queue and tracking: one lookup of the
    /// device's copy for the two, the queue's columns and then whether the
    /// columns the rules read hold the same values (`copy`), and the row
    /// listed when they do not or the row is new (`list_row`).
    copy: Option<(CachedStatement<'c>, CachedStatement<'c>)>,
    /// The positions (in a row after `_version`) of those columns.
    rule_positions: Vec<usize>,
    /// With tracking (and, with a queue, for pulled rows): the update that
    /// writes a row the device holds with the same values in every column
    /// its table's rules read, every column whose values are queued for
    /// related rows and every indexed column, with a queue at a version
    /// less than two behind (`Upsert::quiet_update`). Such a row is neither
    /// queued (see `RelatedQueue`) nor listed for settling, so it needs no
    /// lookup of the device's copy; any other row takes the lookup.
    quiet: Option<CachedStatement<'c>>,
    table_has_pending: bool,
    queue: Option<RelatedQueue<'c>>,
    /// The page's `snapshot_rows`, when it came before its rows (the
    /// first rows of the table's snapshot; see `RelatedQueue`).
    snapshot_rows: u64,
    /// Rows given to [`Self::row`] so far.
    rows_seen: u64,
    pub(super) applied: PageApplied,
}

impl<'c> PageWriter<'c> {
    /// Checks `columns` (`_version` first, each once, every one a column of
    /// the table, every column of the table present) and prepares the
    /// writes. With `queue`, related values are queued as rows are written.
    pub(super) fn new(
        conn: &'c Connection,
        table: &'c SyncTable,
        columns: &[String],
        queue: Option<(&SyncProfile, Arrival)>,
    ) -> Result<PageWriter<'c>> {
        if columns.first().map(String::as_str) != Some(VERSION_COLUMN) {
            return Err(Error::Protocol(
                "pull page must start with the _version column".into(),
            ));
        }
        let mut listed = std::collections::BTreeSet::new();
        if let Some(name) = columns.iter().find(|n| !listed.insert(n.as_str())) {
            return Err(Error::Protocol(format!(
                "pull page has column '{name}' more than once"
            )));
        }
        let mut kinds = Vec::with_capacity(columns.len());
        for name in &columns[1..] {
            let col = table.column(name).ok_or_else(|| {
                Error::Protocol(format!(
                    "pull page has column '{name}' that is not in the profile"
                ))
            })?;
            kinds.push(col);
        }
        if table
            .columns
            .iter()
            .any(|c| !columns.iter().any(|n| n == &c.name))
        {
            return Err(Error::Protocol(format!(
                "pull page for '{}' lacks some of the profile's columns",
                table.name
            )));
        }
        let pk_index = columns[1..]
            .iter()
            .position(|n| n == &table.primary_key)
            .ok_or_else(|| Error::Protocol("pull page lacks the primary key".into()))?;

        let queue = match queue {
            Some((profile, arrival)) => RelatedQueue::new(conn, profile, table, columns, arrival)?,
            None => None,
        };
        let table_has_pending = conn
            .prepare_cached("SELECT 1 FROM _fs_outbox WHERE tbl = ?1 LIMIT 1")?
            .exists([&table.name])?;
        // Rows written over a settled table are evaluated again at the next
        // settling; a table being downloaded whole is evaluated whole (see
        // `settle`).
        let track: bool = conn
            .prepare_cached(
                "SELECT initial_done AND NOT settle_all FROM _fs_tables WHERE name = ?1",
            )?
            .query_row([&table.name], |r| r.get(0))
            .optional()?
            .unwrap_or(false);
        // A row the device holds with the same values in the columns its
        // rules read stays as it was evaluated: what else its evaluation
        // reads is tracked on its own (the related rows a table loses, the
        // day for relative dates, the row's pending changes).
        let rule_positions: Vec<usize> = rule_columns(table)
            .iter()
            .filter(|c| c.name != table.primary_key)
            .filter_map(|c| columns[1..].iter().position(|n| *n == c.name))
            .collect();
        let copy = match &queue {
            Some(q) if track => {
                let same = same_values(columns, &rule_positions, 2);
                Some((
                    conn.prepare_cached(&format!(
                        "SELECT {}, ({same}) FROM {t} WHERE {pk} = ?1",
                        q.copy_columns(),
                        t = quote_ident(&table.name),
                        pk = quote_ident(&table.primary_key),
                    ))?,
                    conn.prepare_cached(
                        "INSERT OR IGNORE INTO _fs_settle_rows (tbl, row_id) VALUES (?1, ?2)",
                    )?,
                ))
            }
            _ => None,
        };
        let track_row = if track && copy.is_none() {
            let same = same_values(columns, &rule_positions, 3);
            Some(conn.prepare_cached(&format!(
                "INSERT OR IGNORE INTO _fs_settle_rows (tbl, row_id) SELECT ?1, ?2
                 WHERE NOT EXISTS (SELECT 1 FROM {t} WHERE {pk} = ?2 AND {same})",
                t = quote_ident(&table.name),
                pk = quote_ident(&table.primary_key),
            ))?)
        } else {
            None
        };
        let names: Vec<&str> = columns[1..].iter().map(String::as_str).collect();
        let indexed = indexed_columns(conn, &table.name)?;
        // Rows fetched are queued whatever the device holds, so only pulled
        // ones are written quietly when the table has a queue.
        let quiet = match &queue {
            _ if !track => None,
            Some(q) if q.arrival() != Arrival::Server => None,
            queue => {
                let mut unchanged: Vec<&str> = rule_positions
                    .iter()
                    .map(|&i| columns[i + 1].as_str())
                    .collect();
                if let Some(q) = queue {
                    unchanged.extend(q.value_positions().map(|i| columns[i].as_str()));
                }
                let sql =
                    Upsert::quiet_update(table, &names, &indexed, &unchanged, queue.is_some());
                Some(conn.prepare_cached(&sql)?)
            }
        };
        let upsert = Upsert::new(table, &names, &indexed);
        Ok(PageWriter {
            conn,
            table,
            kinds,
            width: columns.len(),
            pk_index,
            insert: conn.prepare_cached(&upsert.sql)?,
            insert_moved: match &upsert.fallback {
                Some(sql) => Some(conn.prepare_cached(sql)?),
                None => None,
            },
            track_row,
            copy,
            rule_positions,
            quiet,
            table_has_pending,
            queue,
            snapshot_rows: 0,
            rows_seen: 0,
            applied: PageApplied::default(),
        })
    }

    /// Writes one row, aligned with the page's columns.
    pub(super) fn row(&mut self, row: &[Value]) -> Result<()> {
        if row.len() != self.width {
            return Err(Error::Protocol(
                "pull page row has the wrong number of values".into(),
            ));
        }
        let version = match &row[0] {
            Value::Integer(v) => *v,
            _ => return Err(Error::Protocol("row version must be an integer".into())),
        };
        let id = match &row[self.pk_index + 1] {
            Value::Text(id) if !id.is_empty() => id.as_str(),
            _ => {
                return Err(Error::Protocol(
                    "row primary key must be non-empty text".into(),
                ));
            }
        };
        let in_snapshot = self.rows_seen < self.snapshot_rows;
        self.rows_seen += 1;
        let pending = self.table_has_pending && has_pending(self.conn, &self.table.name, id)?;
        if !pending && self.write_quietly(row, version)? {
            self.applied.upserted += 1;
            return Ok(());
        }
        // `Some(listed)` when the shared lookup decided the row's listing.
        let mut list = None;
        if let (Some((copy, _)), Some(queue)) = (&mut self.copy, &mut self.queue) {
            copy.raw_bind_parameter(1, id)?;
            for (k, &i) in self.rule_positions.iter().enumerate() {
                bind_value(copy, k + 2, &row[i + 1], self.kinds[i])?;
            }
            let width = queue.copy_width();
            let found = {
                let mut rows = copy.raw_query();
                match rows.next()? {
                    Some(r) => Some((queue.read_copy(r)?, r.get::<_, bool>(width)?)),
                    None => None,
                }
            };
            queue.row_with_copy(row, in_snapshot, found.as_ref().map(|(held, _)| held))?;
            list = Some(!found.is_some_and(|(_, same)| same));
        } else if let Some(queue) = &mut self.queue {
            queue.row(row, in_snapshot)?;
        }
        if pending {
            self.applied.kept_pending += 1;
            return Ok(());
        }
        if list == Some(true)
            && let Some((_, list_row)) = &mut self.copy
        {
            list_row.execute(rusqlite::params![self.table.name, id])?;
        }
        // Before the write: the comparison is with the device's copy.
        if let Some(track) = &mut self.track_row {
            track.raw_bind_parameter(1, &self.table.name)?;
            track.raw_bind_parameter(2, id)?;
            for (k, &i) in self.rule_positions.iter().enumerate() {
                bind_value(track, k + 3, &row[i + 1], self.kinds[i])?;
            }
            track.raw_execute()?;
        }
        if bind_row(&mut self.insert, version, row, &self.kinds)?.raw_execute()? == 0
            && let Some(moved) = &mut self.insert_moved
        {
            bind_row(moved, version, row, &self.kinds)?.raw_execute()?;
        }
        self.applied.upserted += 1;
        Ok(())
    }

    /// Writes `row` with the quiet update, when there is one: true when
    /// it wrote the row, false when the device's copy must be looked up
    /// (the row is new, or moved, or came back two versions on).
    fn write_quietly(&mut self, row: &[Value], version: i64) -> Result<bool> {
        let Some(quiet) = &mut self.quiet else {
            return Ok(false);
        };
        Ok(bind_row(quiet, version, row, &self.kinds)?.raw_execute()? > 0)
    }

    /// Takes the page's `snapshot_rows` before its rows; a count that
    /// comes after them is not used (their values were queued).
    pub(super) fn snapshot_rows(&mut self, n: u64) {
        if self.rows_seen == 0 {
            self.snapshot_rows = n;
        }
    }

    /// Removes one row by key, unless a local change to it waits.
    pub(super) fn removed(&mut self, id: &str) -> Result<()> {
        if self.table_has_pending && has_pending(self.conn, &self.table.name, id)? {
            self.applied.kept_pending += 1;
            return Ok(());
        }
        if delete_row(self.conn, self.table, id)? {
            self.applied.removed += 1;
        }
        Ok(())
    }
}

/// The condition that the columns at `positions` (in a row after
/// `_version`) hold the values bound from parameter `first` on, in order
/// (`IS`, so NULL equals NULL); `1` when there are none.
fn same_values(columns: &[String], positions: &[usize], first: usize) -> String {
    if positions.is_empty() {
        return "1".to_owned();
    }
    positions
        .iter()
        .enumerate()
        .map(|(k, &i)| format!("{} IS ?{}", quote_ident(&columns[i + 1]), k + first))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// Binds a page row to an upsert: the version, then each value, bound as it
/// is when already in its column's form (no copy).
fn bind_row<'s, 'c>(
    stmt: &'s mut CachedStatement<'c>,
    version: i64,
    row: &[Value],
    kinds: &[&Column],
) -> Result<&'s mut CachedStatement<'c>> {
    stmt.raw_bind_parameter(1, version)?;
    for (i, (v, col)) in row[1..].iter().zip(kinds).enumerate() {
        bind_value(stmt, i + 2, v, col)?;
    }
    Ok(stmt)
}

/// Binds one page value as parameter `at`, in its column's form.
fn bind_value(stmt: &mut CachedStatement<'_>, at: usize, v: &Value, col: &Column) -> Result<()> {
    let converted = v
        .converted_for(col.kind)
        .map_err(|e| Error::Protocol(format!("column '{}': {e}", col.name)))?;
    match converted {
        Some(c) => stmt.raw_bind_parameter(at, c)?,
        None => stmt.raw_bind_parameter(at, v)?,
    }
    Ok(())
}

/// Applies one pulled page in `tx` and advances the table's cursor; with
/// the profile, the related values the page's rows bring are queued first.
pub(super) fn apply_page(
    tx: &Connection,
    profile: Option<&SyncProfile>,
    table: &SyncTable,
    page: &PullPage,
    now: i64,
) -> Result<PageApplied> {
    let queue = profile.map(|p| (p, Arrival::Server));
    let mut writer = PageWriter::new(tx, table, &page.columns, queue)?;
    writer.snapshot_rows(page.snapshot_rows);
    for row in &page.rows {
        writer.row(row)?;
    }
    for id in &page.removed {
        writer.removed(id)?;
    }
    let applied = writer.applied;
    let entries = (page.rows.len() + page.removed.len()) as u64;
    advance_cursor(
        tx,
        table,
        &page.cursor,
        entries,
        page.total,
        !page.has_more,
        now,
    )?;
    Ok(applied)
}

/// Prepares, on `conn`, the statements that write a page of `table` in the
/// profile's column order; a failure is only logged (the page prepares its
/// own).
pub(super) fn prepare_page_writes(
    conn: &Connection,
    profile: Option<&SyncProfile>,
    table: &SyncTable,
) {
    let queue = profile.map(|p| (p, Arrival::Server));
    if let Err(e) = PageWriter::new(conn, table, &page_columns(table), queue) {
        tracing::debug!(target: "fieldsync::store", table = %table.name, error = %e, "page writes not prepared ahead");
    }
}

/// Writes rows fetched by value in `tx`, the table's cursor untouched.
pub(super) fn apply_fetched(
    tx: &Connection,
    profile: &SyncProfile,
    table: &SyncTable,
    columns: &[String],
    rows: &[Vec<Value>],
) -> Result<PageApplied> {
    let mut writer = PageWriter::new(tx, table, columns, Some((profile, Arrival::Fetched)))?;
    for row in rows {
        writer.row(row)?;
    }
    Ok(writer.applied)
}

#[cfg(test)]
mod tests;
