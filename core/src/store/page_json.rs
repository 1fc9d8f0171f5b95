//! Applying a pulled page straight from its JSON body.
//!
//! [`apply_json`] feeds a page to a writer straight from its JSON body: the
//! rows are decoded one at a time into one reused row (its text values keep
//! their buffers from row to row) and written as they are decoded, so no
//! decoded page is ever held. The process's memory then follows the size of
//! a page body, not the number of rows decoded.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use rusqlite::Connection;

use super::page::{PageApplied, PageWriter};
use super::related::Arrival;
use super::tables::advance_cursor;
use super::values::ValueStream;
use crate::codec::{Body, Encoding};
use crate::error::{Error, Result};
use crate::profile::{SyncProfile, SyncTable};
use crate::value::Value;

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

/// What a page applied from its JSON said and did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PageSummary {
    pub has_more: bool,
    /// The page's `total`, when the server sent one.
    pub total: Option<u64>,
    /// Rows plus removals in the page.
    pub entries: u64,
    /// The page's `snapshot_rows` (0 when the server sent none).
    pub snapshot_rows: u64,
    pub applied: PageApplied,
    /// The table's expected row count recorded with the page (what `total`
    /// of `Store::apply_page_json` gave), if any.
    pub expected: Option<u64>,
}

/// Applies a page from its JSON body in `tx` ([`apply_json`]) and advances
/// the table's cursor, recording the expected row count `total` gives.
pub(super) fn apply_page_json(
    tx: &Connection,
    profile: Option<&SyncProfile>,
    table: &SyncTable,
    body: &Body,
    now: i64,
    total: impl FnOnce(&PageSummary) -> Option<u64>,
) -> Result<PageSummary> {
    let queue = profile.map(|p| (p, Arrival::Server));
    let page = apply_json(tx, table, body, queue)?;
    let mut summary = PageSummary {
        has_more: page.has_more,
        total: page.total,
        entries: page.entries,
        snapshot_rows: page.snapshot_rows,
        applied: page.applied,
        expected: None,
    };
    summary.expected = total(&summary);
    advance_cursor(
        tx,
        table,
        &page.cursor,
        page.entries,
        summary.expected,
        !page.has_more,
        now,
    )?;
    Ok(summary)
}
