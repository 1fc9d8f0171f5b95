//! Writing a pulled page (or fetched rows) into a synced table.
//!
//! [`PageWriter`] checks a page's columns against the table, prepares one
//! upsert, and then writes row by row: each row's related values are queued
//! (see `settle::RelatedQueue`) before it is written, rows with a pending
//! local change are left alone, and rows written over a settled table are
//! marked for the next settling when they are new to the device or a
//! column their table's rules read changed. A row written over a settled
//! table (a pulled one, when the table's values are queued) is first written
//! by an update that holds only when none of that applies (the same values
//! in those columns and the queued ones, no version skipped): the edited
//! rows of an incremental sync take no lookup of the device's copy.
//!
//! [`apply_json`] feeds a page to a writer straight from its JSON body: the
//! rows are decoded one at a time into one reused row (its text values keep
//! their buffers from row to row) and written as they are decoded, so no
//! decoded page is ever held. The process's memory then follows the size of
//! a page body, not the number of rows decoded.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use rusqlite::{CachedStatement, Connection, OptionalExtension};

use super::settle::{Arrival, RelatedQueue};
use super::values::ValueStream;
use super::{PageApplied, Upsert, delete_row, has_pending};
use crate::codec::{Body, Encoding};
use crate::error::{Error, Result};
use crate::profile::{Column, SyncProfile, SyncTable, quote_ident};
use crate::protocol::VERSION_COLUMN;
use crate::value::Value;

/// Writes the rows and removals of one page into a table, in the caller's
/// transaction.
pub(super) struct PageWriter<'c> {
    conn: &'c Connection,
    table: &'c SyncTable,
    /// The page's columns after `_version`, as the table's columns.
    kinds: Vec<&'c Column>,
    width: usize,
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
        let rule_positions: Vec<usize> = super::rule_columns(table)
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
        let indexed = super::indexed_columns(conn, &table.name)?;
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

/// The columns of a page of `table` in the order the server sends them:
/// `_version`, then the profile's columns.
pub(super) fn page_columns(table: &SyncTable) -> Vec<String> {
    std::iter::once(VERSION_COLUMN.to_owned())
        .chain(table.columns.iter().map(|c| c.name.clone()))
        .collect()
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

/// A page read from its JSON body by [`apply_json`]: its head, and what
/// writing it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct StreamedPage {
    pub cursor: String,
    pub has_more: bool,
    pub total: Option<u64>,
    /// Rows plus removals in the page.
    pub entries: u64,
    pub snapshot_rows: u64,
    pub applied: PageApplied,
}

/// Decodes a pull page from `body` (the JSON of `PullPage`) and writes it
/// through a [`PageWriter`] as it is decoded, in the caller's transaction.
/// Rows are written in page order, then removals (a key appears at most once
/// in a page). A body that does not decode, or a row the writer refuses,
/// fails the whole call: the caller rolls the transaction back.
pub(super) fn apply_json(
    conn: &Connection,
    table: &SyncTable,
    body: &Body,
    queue: Option<(&SyncProfile, Arrival)>,
) -> Result<StreamedPage> {
    let mut failure = None;
    let decoded = match body.encoding {
        // In memory already: the decoder reads it in place.
        Encoding::Identity => {
            let mut de = serde_json::Deserializer::from_slice(&body.bytes);
            PageSeed {
                assembly: Assembly::new(conn, table, queue, &mut failure),
            }
            .deserialize(&mut de)
            .and_then(|page| de.end().map(|()| page))
        }
        // Decompressed a block at a time; each value is cut out of the
        // window and decoded from its slice.
        Encoding::Gzip | Encoding::Zstd => apply_stream(
            ValueStream::new(body.decompressor()?),
            Assembly::new(conn, table, queue, &mut failure),
        ),
    };
    match (decoded, failure) {
        (_, Some(e)) => Err(e),
        (Ok(page), None) => Ok(page),
        (Err(e), None) => Err(Error::Protocol(format!(
            "the server's answer does not decode: {e}"
        ))),
    }
}

/// The page object read from a [`ValueStream`]: the same checks and the same
/// order of writes as through serde (`PageSeed`), with the rows decoded one
/// at a time from the window.
fn apply_stream<R: std::io::Read>(
    mut s: ValueStream<R>,
    mut page: Assembly<'_, '_>,
) -> serde_json::Result<StreamedPage> {
    let io = serde_json::Error::io;
    let mut more = s.open(b'{', b'}').map_err(io)?;
    while more {
        let key = s.value().map_err(io)?;
        if key.first() != Some(&b'"') {
            return Err(de::Error::custom("expected a field name"));
        }
        let key: Field = serde_json::from_slice(key)?;
        s.expect(b':').map_err(io)?;
        page.field(key, StreamValue(&mut s))?;
        more = s.next(b'}').map_err(io)?;
    }
    if s.peek().map_err(io)?.is_some() {
        return Err(de::Error::custom("trailing characters after the page"));
    }
    page.finish()
}

/// The marker error that stops decoding when the writer failed; the
/// writer's own error is kept aside and returned instead.
const WRITE_FAILED: &str = "the page could not be written";

/// Keeps the writer's error `e` in `failure` and returns the marker error
/// that stops decoding.
fn write_failed<E: de::Error>(failure: &mut Option<Error>, e: Error) -> E {
    *failure = Some(e);
    E::custom(WRITE_FAILED)
}

/// The value of the field just read, from serde's map or from the stream.
trait FieldValue<E> {
    fn decode<T: de::DeserializeOwned>(self) -> std::result::Result<T, E>;
    /// The `rows` array, each row given to `writer` as it is decoded.
    fn rows(
        self,
        writer: &mut PageWriter<'_>,
        failure: &mut Option<Error>,
    ) -> std::result::Result<u64, E>;
}

struct MapValue<'m, A>(&'m mut A);

impl<'de, A: MapAccess<'de>> FieldValue<A::Error> for MapValue<'_, A> {
    fn decode<T: de::DeserializeOwned>(self) -> std::result::Result<T, A::Error> {
        self.0.next_value()
    }

    fn rows(
        self,
        writer: &mut PageWriter<'_>,
        failure: &mut Option<Error>,
    ) -> std::result::Result<u64, A::Error> {
        self.0.next_value_seed(RowsSeed { writer, failure })
    }
}

struct StreamValue<'s, R>(&'s mut ValueStream<R>);

impl<R: std::io::Read> FieldValue<serde_json::Error> for StreamValue<'_, R> {
    fn decode<T: de::DeserializeOwned>(self) -> serde_json::Result<T> {
        serde_json::from_slice(self.0.value().map_err(serde_json::Error::io)?)
    }

    fn rows(
        self,
        writer: &mut PageWriter<'_>,
        failure: &mut Option<Error>,
    ) -> serde_json::Result<u64> {
        let (s, io) = (self.0, serde_json::Error::io);
        let mut row: Vec<Value> = Vec::with_capacity(writer.width);
        let mut n = 0u64;
        let mut more = s.open(b'[', b']').map_err(io)?;
        while more {
            let mut one = serde_json::Deserializer::from_slice(s.value().map_err(io)?);
            RowSeed { row: &mut row }.deserialize(&mut one)?;
            one.end()?;
            writer.row(&row).map_err(|e| write_failed(failure, e))?;
            n += 1;
            more = s.next(b']').map_err(io)?;
        }
        Ok(n)
    }
}

/// A page as its fields arrive, in any order: the head kept, the writer made
/// from the columns, rows written as decoded (or, before the columns,
/// decoded whole and written at the end), removals written after the rows.
struct Assembly<'a, 'c> {
    conn: &'c Connection,
    table: &'c SyncTable,
    queue: Option<(&'a SyncProfile, Arrival)>,
    failure: &'a mut Option<Error>,
    writer: Option<PageWriter<'c>>,
    seen: [bool; 9],
    cursor: Option<String>,
    has_more: Option<bool>,
    total: Option<u64>,
    snapshot_rows: u64,
    // Rows that came before the columns (our server sends the columns
    // first; any order is valid JSON): decoded whole, written after.
    early_rows: Option<Vec<Vec<Value>>>,
    rows: u64,
    removed: Option<Vec<String>>,
}

impl<'a, 'c> Assembly<'a, 'c> {
    fn new(
        conn: &'c Connection,
        table: &'c SyncTable,
        queue: Option<(&'a SyncProfile, Arrival)>,
        failure: &'a mut Option<Error>,
    ) -> Self {
        Self {
            conn,
            table,
            queue,
            failure,
            writer: None,
            seen: [false; 9],
            cursor: None,
            has_more: None,
            total: None,
            snapshot_rows: 0,
            early_rows: None,
            rows: 0,
            removed: None,
        }
    }

    fn field<E: de::Error>(
        &mut self,
        key: Field,
        value: impl FieldValue<E>,
    ) -> std::result::Result<(), E> {
        if let Some(i) = key.index() {
            if self.seen[i] {
                return Err(E::custom(format_args!("duplicate field `{}`", FIELDS[i])));
            }
            self.seen[i] = true;
        }
        match key {
            Field::Table => {
                value.decode::<String>()?;
            }
            Field::ProfileVersion => {
                value.decode::<i64>()?;
            }
            Field::Cursor => self.cursor = Some(value.decode::<String>()?),
            Field::HasMore => self.has_more = Some(value.decode::<bool>()?),
            Field::Total => self.total = value.decode::<Option<u64>>()?,
            Field::SnapshotRows => {
                self.snapshot_rows = value.decode::<u64>()?;
                if let Some(w) = &mut self.writer {
                    w.snapshot_rows(self.snapshot_rows);
                }
            }
            Field::Columns => {
                let columns = value.decode::<Vec<String>>()?;
                match PageWriter::new(self.conn, self.table, &columns, self.queue) {
                    Ok(mut w) => {
                        w.snapshot_rows(self.snapshot_rows);
                        self.writer = Some(w)
                    }
                    Err(e) => return Err(write_failed(self.failure, e)),
                }
            }
            Field::Rows => match &mut self.writer {
                // A row the writer refuses leaves its error in `failure`.
                Some(w) => self.rows = value.rows(w, self.failure)?,
                None => self.early_rows = Some(value.decode::<Vec<Vec<Value>>>()?),
            },
            Field::Removed => self.removed = Some(value.decode::<Vec<String>>()?),
            Field::Other => {
                value.decode::<IgnoredAny>()?;
            }
        }
        Ok(())
    }

    fn finish<E: de::Error>(mut self) -> std::result::Result<StreamedPage, E> {
        // Every field but `total` and `snapshot_rows` is required, as in
        // `PullPage`.
        if let Some(i) = (0..FIELDS.len())
            .find(|&i| !self.seen[i] && !matches!(FIELDS[i], "total" | "snapshot_rows"))
        {
            return Err(E::missing_field(FIELDS[i]));
        }
        let (Some(cursor), Some(has_more), Some(removed), Some(mut writer)) = (
            self.cursor.take(),
            self.has_more,
            self.removed.take(),
            self.writer.take(),
        ) else {
            return Err(E::custom("a pull page field is missing"));
        };
        let mut rows = self.rows;
        let early = self.early_rows.take();
        let written = (|| -> Result<()> {
            if let Some(early) = early {
                rows = early.len() as u64;
                for row in &early {
                    writer.row(row)?;
                }
            }
            for id in &removed {
                writer.removed(id)?;
            }
            Ok(())
        })();
        if let Err(e) = written {
            return Err(write_failed(self.failure, e));
        }
        Ok(StreamedPage {
            cursor,
            has_more,
            total: self.total,
            entries: rows + removed.len() as u64,
            snapshot_rows: self.snapshot_rows,
            applied: writer.applied,
        })
    }
}

struct PageSeed<'a, 'c> {
    assembly: Assembly<'a, 'c>,
}

impl<'de> DeserializeSeed<'de> for PageSeed<'_, '_> {
    type Value = StreamedPage;

    fn deserialize<D: Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<StreamedPage, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for PageSeed<'_, '_> {
    type Value = StreamedPage;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a pull page object")
    }

    fn visit_map<A: MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<StreamedPage, A::Error> {
        let mut page = self.assembly;
        while let Some(key) = map.next_key::<Field>()? {
            page.field(key, MapValue(&mut map))?;
        }
        page.finish()
    }
}

const FIELDS: [&str; 9] = [
    "table",
    "profile_version",
    "cursor",
    "has_more",
    "total",
    "columns",
    "rows",
    "removed",
    "snapshot_rows",
];

/// The fields of a pull page; unknown ones are skipped.
enum Field {
    Table,
    ProfileVersion,
    Cursor,
    HasMore,
    Total,
    Columns,
    Rows,
    Removed,
    SnapshotRows,
    Other,
}

impl Field {
    fn index(&self) -> Option<usize> {
        Some(match self {
            Field::Table => 0,
            Field::ProfileVersion => 1,
            Field::Cursor => 2,
            Field::HasMore => 3,
            Field::Total => 4,
            Field::Columns => 5,
            Field::Rows => 6,
            Field::Removed => 7,
            Field::SnapshotRows => 8,
            Field::Other => return None,
        })
    }
}

impl<'de> de::Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Field, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Field;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Field, E> {
                Ok(match v {
                    "table" => Field::Table,
                    "profile_version" => Field::ProfileVersion,
                    "cursor" => Field::Cursor,
                    "has_more" => Field::HasMore,
                    "total" => Field::Total,
                    "columns" => Field::Columns,
                    "rows" => Field::Rows,
                    "removed" => Field::Removed,
                    "snapshot_rows" => Field::SnapshotRows,
                    _ => Field::Other,
                })
            }
        }
        d.deserialize_identifier(V)
    }
}

/// The `rows` array, each row written as soon as it is decoded; yields the
/// number of rows.
struct RowsSeed<'w, 'c> {
    writer: &'w mut PageWriter<'c>,
    failure: &'w mut Option<Error>,
}

impl<'de> DeserializeSeed<'de> for RowsSeed<'_, '_> {
    type Value = u64;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<u64, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for RowsSeed<'_, '_> {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of rows")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<u64, A::Error> {
        let mut row: Vec<Value> = Vec::with_capacity(self.writer.width);
        let mut n = 0u64;
        while seq.next_element_seed(RowSeed { row: &mut row })?.is_some() {
            self.writer
                .row(&row)
                .map_err(|e| write_failed(self.failure, e))?;
            n += 1;
        }
        Ok(n)
    }
}

/// One row, decoded into the reused `row`.
struct RowSeed<'r> {
    row: &'r mut Vec<Value>,
}

impl<'de> DeserializeSeed<'de> for RowSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for RowSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a row (an array of values)")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
        let mut i = 0;
        loop {
            if i < self.row.len() {
                if seq.next_element_seed(CellSeed(&mut self.row[i]))?.is_none() {
                    break;
                }
            } else {
                match seq.next_element::<Value>()? {
                    Some(v) => self.row.push(v),
                    None => break,
                }
            }
            i += 1;
        }
        self.row.truncate(i);
        Ok(())
    }
}

/// One value, decoded in place: a text value reuses the buffer of the text
/// that was there (the same column of the previous row).
struct CellSeed<'v>(&'v mut Value);

impl<'de> DeserializeSeed<'de> for CellSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for CellSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("null, a boolean, a number or a string")
    }
    fn visit_unit<E>(self) -> std::result::Result<(), E> {
        *self.0 = Value::Null;
        Ok(())
    }
    fn visit_none<E>(self) -> std::result::Result<(), E> {
        *self.0 = Value::Null;
        Ok(())
    }
    fn visit_bool<E>(self, v: bool) -> std::result::Result<(), E> {
        *self.0 = Value::Boolean(v);
        Ok(())
    }
    fn visit_i64<E>(self, v: i64) -> std::result::Result<(), E> {
        *self.0 = Value::Integer(v);
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<(), E> {
        *self.0 = Value::Integer(i64::try_from(v).map_err(|_| E::custom("integer out of range"))?);
        Ok(())
    }
    fn visit_f64<E>(self, v: f64) -> std::result::Result<(), E> {
        *self.0 = Value::Real(v);
        Ok(())
    }
    fn visit_str<E>(self, v: &str) -> std::result::Result<(), E> {
        match self.0 {
            Value::Text(s) => {
                s.clear();
                s.push_str(v);
            }
            other => *other = Value::Text(v.to_owned()),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::Store;
    use crate::codec::{Body, Encoding};
    use crate::profile::SyncProfile;
    use crate::protocol::PullPage;

    fn profile() -> SyncProfile {
        serde_json::from_value(serde_json::json!({
            "name": "p", "version": 1, "user_id": "u1",
            "tables": [
                {"name": "jobs", "primary_key": "id", "sync_interval_secs": 60,
                 "columns": [{"name": "id", "type": "text"}, {"name": "note", "type": "text"},
                             {"name": "hours", "type": "real"}, {"name": "done", "type": "boolean"}],
                 "rules": [{"kind": "all"}]}
            ]
        }))
        .expect("profile")
    }

    fn store(dir: &std::path::Path, name: &str) -> Store {
        let store = Store::open(&dir.join(name)).expect("open");
        store.apply_profile(&profile(), 0).expect("profile");
        store
    }

    /// A row of `jobs`: id, version, note, hours, done.
    type Job = (String, i64, Option<String>, Option<f64>, Option<i64>);

    /// Every row of `jobs`, in key order.
    fn rows(store: &Store) -> Vec<Job> {
        store
            .with_reader(|c| {
                let mut stmt =
                    c.prepare("SELECT id, _fs_version, note, hours, done FROM jobs ORDER BY id")?;
                let rows = stmt.query_map([], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })?;
                Ok(rows.collect::<rusqlite::Result<_>>()?)
            })
            .expect("rows")
    }

    const HEAD: &str =
        r#""table": "jobs", "profile_version": 1, "cursor": "c9", "has_more": true, "total": 7"#;
    const COLUMNS: &str = r#""columns": ["_version", "id", "note", "hours", "done"]"#;
    /// Text, null and text again in one column (the reused buffer), an
    /// escaped string, integers widened to reals, 0/1 as booleans.
    const ROWS: &str = r#""rows": [
        [1, "a", "first note", 1, true],
        [2, "b", null, 2.5, 0],
        [3, "c", "th\u00efrd \"quoted\"", null, null],
        [4, "d", "x", 4, 1]
    ]"#;

    /// A whole page in the reference server's field order: 4 rows, then a
    /// removal of a row it holds ("b") and of one it does not ("zz").
    fn full_page() -> String {
        format!(r#"{{{HEAD}, {COLUMNS}, {ROWS}, "removed": ["b", "zz"]}}"#)
    }

    #[test]
    fn a_page_applied_from_its_json_matches_the_page_applied_decoded() {
        let dir = tempfile::tempdir().expect("dir");
        let p = profile();
        let jobs = p.table("jobs").expect("jobs");
        let body = full_page();
        let streamed = store(dir.path(), "s.db");
        let summary = streamed
            .apply_page_json(None, jobs, &Body::plain(body.as_bytes().to_vec()), 5, |s| {
                s.total.map(|t| t + 100)
            })
            .expect("streamed");
        assert_eq!(
            (
                summary.has_more,
                summary.total,
                summary.entries,
                summary.expected
            ),
            (true, Some(7), 6, Some(107))
        );
        assert_eq!((summary.applied.upserted, summary.applied.removed), (4, 1));
        let decoded = store(dir.path(), "d.db");
        let page: PullPage = serde_json::from_str(&body).expect("page");
        decoded.apply_page(None, jobs, &page, 5).expect("decoded");
        assert_eq!(rows(&streamed), rows(&decoded));
        assert_eq!(
            rows(&streamed)[1],
            ("c".into(), 3, Some("thïrd \"quoted\"".into()), None, None)
        );
        let state = streamed.table_state("jobs").expect("state");
        assert_eq!(
            (
                state.cursor.as_str(),
                state.received_rows,
                state.expected_rows
            ),
            ("c9", 6, Some(107))
        );
    }

    #[test]
    fn a_compressed_page_applies_as_its_json_and_a_cut_one_writes_nothing() {
        use std::io::Write;
        let dir = tempfile::tempdir().expect("dir");
        let p = profile();
        let jobs = p.table("jobs").expect("jobs");
        let body = full_page();
        let plain = store(dir.path(), "plain.db");
        plain
            .apply_page_json(None, jobs, &Body::plain(body.as_bytes().to_vec()), 5, |s| {
                s.total
            })
            .expect("plain");
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gzip.write_all(body.as_bytes()).expect("gzip");
        let compressed = [
            Body {
                bytes: zstd::encode_all(body.as_bytes(), 1).expect("zstd"),
                encoding: Encoding::Zstd,
            },
            Body {
                bytes: gzip.finish().expect("gzip"),
                encoding: Encoding::Gzip,
            },
        ];
        for (i, page) in compressed.iter().enumerate() {
            let store = store(dir.path(), &format!("c{i}.db"));
            let summary = store
                .apply_page_json(None, jobs, page, 5, |s| s.total)
                .expect("compressed");
            assert_eq!((summary.entries, summary.applied.upserted), (6, 4));
            assert_eq!(rows(&store), rows(&plain));
            assert_eq!(store.table_state("jobs").expect("state").cursor, "c9");

            // The same page cut short: an error, no row, no cursor.
            let cut = Body {
                bytes: page.bytes[..page.bytes.len() - 8].to_vec(),
                encoding: page.encoding,
            };
            let fresh =
                super::super::Store::open(&dir.path().join(format!("cut{i}.db"))).expect("open");
            fresh.apply_profile(&p, 0).expect("profile");
            let err = fresh
                .apply_page_json(None, jobs, &cut, 5, |s| s.total)
                .expect_err("cut page");
            assert!(matches!(err, crate::error::Error::Protocol(_)), "{err:?}");
            assert!(rows(&fresh).is_empty());
            assert_eq!(fresh.table_state("jobs").expect("state").cursor, "");
        }
    }

    #[test]
    fn a_large_compressed_page_applies_as_its_json_across_many_windows() {
        let dir = tempfile::tempdir().expect("dir");
        let p = profile();
        let jobs = p.table("jobs").expect("jobs");
        // Notes that do not compress away: the body spans many 64 kB
        // windows of the value stream, compressed and decompressed.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let lines: Vec<String> = (0..20_000)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                format!(r#"[{i}, "k{i:06}", "note {x:016x}", {}, {}]"#, i % 9, i % 2)
            })
            .collect();
        let body = format!(
            r#"{{{HEAD}, {COLUMNS}, "rows": [{}], "removed": ["k000003"]}}"#,
            lines.join(",")
        );
        let compressed = Body {
            bytes: zstd::encode_all(body.as_bytes(), 1).expect("zstd"),
            encoding: Encoding::Zstd,
        };
        assert!(compressed.bytes.len() > 4 * 64 * 1024);
        let plain = store(dir.path(), "plain.db");
        let streamed = store(dir.path(), "streamed.db");
        plain
            .apply_page_json(None, jobs, &Body::plain(body.into_bytes()), 5, |s| s.total)
            .expect("plain");
        let summary = streamed
            .apply_page_json(None, jobs, &compressed, 5, |s| s.total)
            .expect("streamed");
        assert_eq!(
            (summary.entries, summary.applied.upserted),
            (20_001, 20_000)
        );
        assert_eq!(rows(&streamed), rows(&plain));
        assert_eq!(rows(&streamed).len(), 19_999);

        // Cut short: an error, nothing written, whatever had been decoded.
        let cut = Body {
            bytes: compressed.bytes[..compressed.bytes.len() * 3 / 4].to_vec(),
            encoding: Encoding::Zstd,
        };
        let fresh = store(dir.path(), "cut.db");
        let err = fresh
            .apply_page_json(None, jobs, &cut, 5, |s| s.total)
            .expect_err("cut page");
        assert!(matches!(err, crate::error::Error::Protocol(_)), "{err:?}");
        assert!(rows(&fresh).is_empty());
    }

    #[test]
    fn plain_and_compressed_bodies_agree_on_every_cut_and_every_broken_byte() {
        let dir = tempfile::tempdir().expect("dir");
        let p = profile();
        let jobs = p.table("jobs").expect("jobs");
        let store = store(dir.path(), "s.db");
        let body = full_page();
        let outcome = |bytes: &[u8], encoding: Encoding| {
            let body = Body {
                bytes: match encoding {
                    Encoding::Zstd => zstd::encode_all(bytes, 1).expect("zstd"),
                    _ => bytes.to_vec(),
                },
                encoding,
            };
            let result = store
                .apply_page_json(None, jobs, &body, 5, |s| s.total)
                .map(|s| (s.entries, s.applied.upserted, s.applied.removed));
            // Back to an empty table and no cursor for the next one.
            store
                .with_writer(|c| {
                    c.execute_batch(
                        "DELETE FROM jobs; UPDATE _fs_tables SET cursor = '', received_rows = 0",
                    )?;
                    Ok(())
                })
                .expect("reset");
            result.map_err(|e| matches!(e, crate::error::Error::Protocol(_)))
        };
        let mut variants: Vec<Vec<u8>> = (0..body.len())
            .map(|n| body.as_bytes()[..n].to_vec())
            .collect();
        for i in 0..body.len() {
            for b in [b'"', b',', b']', b'}', b'[', b'{', b'\\', b' ', b'1', b':'] {
                let mut v = body.as_bytes().to_vec();
                v[i] = b;
                variants.push(v);
            }
        }
        let mut accepted = 0;
        for v in &variants {
            let plain = outcome(v, Encoding::Identity);
            let zstd = outcome(v, Encoding::Zstd);
            assert_eq!(plain, zstd, "{}", String::from_utf8_lossy(v));
            accepted += usize::from(plain.is_ok());
        }
        // Some broken bytes still make a valid page (a space in a string).
        assert!(accepted > 0 && accepted < variants.len() / 2, "{accepted}");
        assert_eq!(outcome(body.as_bytes(), Encoding::Zstd), Ok((6, 4, 1)));
    }

    #[test]
    fn rows_before_the_columns_and_removals_before_the_rows_apply_in_page_order() {
        let dir = tempfile::tempdir().expect("dir");
        let p = profile();
        let jobs = p.table("jobs").expect("jobs");
        let store = store(dir.path(), "s.db");
        // Removals are applied after the rows whatever their place: a key
        // both written and removed (not something a server sends) ends removed,
        // as with the decoded page.
        let body = format!(r#"{{"removed": ["a"], {ROWS}, {HEAD}, {COLUMNS}}}"#);
        let summary = store
            .apply_page_json(None, jobs, &Body::plain(body.as_bytes().to_vec()), 5, |s| {
                s.total
            })
            .expect("applied");
        assert_eq!(summary.entries, 5);
        let ids: Vec<String> = rows(&store).into_iter().map(|r| r.0).collect();
        assert_eq!(ids, ["b", "c", "d"]);
    }

    #[test]
    fn a_page_that_fails_part_way_writes_nothing_and_keeps_the_cursor() {
        let dir = tempfile::tempdir().expect("dir");
        let p = profile();
        let jobs = p.table("jobs").expect("jobs");
        let store = store(dir.path(), "s.db");
        let bad_rows = [
            // A value of the wrong type in the third row.
            r#"[[1, "a", "n", 1, true], [2, "b", "n", 1, true], [3, "c", "n", "many", true]]"#,
            // A short row.
            r#"[[1, "a", "n", 1, true], [2, "b"]]"#,
            // An array where a value goes.
            r#"[[1, "a", "n", 1, true], [2, "b", ["n"], 1, true]]"#,
            // Cut off.
            r#"[[1, "a", "n", 1, true], [2, "b", "n""#,
        ];
        for rows_json in bad_rows {
            let body = format!(r#"{{{HEAD}, {COLUMNS}, "rows": {rows_json}, "removed": []}}"#);
            let err = store
                .apply_page_json(None, jobs, &Body::plain(body.as_bytes().to_vec()), 5, |s| {
                    s.total
                })
                .expect_err(rows_json);
            assert!(
                matches!(err, crate::error::Error::Protocol(_)),
                "{rows_json}: {err:?}"
            );
            assert!(rows(&store).is_empty(), "{rows_json}");
            assert_eq!(store.table_state("jobs").expect("state").cursor, "");
        }
        // Trailing bytes after the page, a field twice, a field missing.
        for body in [
            format!(r#"{{{HEAD}, {COLUMNS}, {ROWS}, "removed": []}} x"#),
            format!(r#"{{{HEAD}, {COLUMNS}, {ROWS}, {ROWS}, "removed": []}}"#),
            format!(r#"{{{HEAD}, {COLUMNS}, {ROWS}}}"#),
        ] {
            assert!(
                store
                    .apply_page_json(None, jobs, &Body::plain(body.as_bytes().to_vec()), 5, |s| s
                        .total)
                    .is_err(),
                "{body}"
            );
            assert!(rows(&store).is_empty(), "{body}");
        }
    }
}
