//! A pull page's rows, written as the JSON they are sent as while the
//! database reads them.
//!
//! A page used to hold each row as a `Vec<Value>` (every text copied into a
//! `String` of its own), serialised only once the page was complete, then
//! freed: for a page of 1,000 changed work orders the allocator was about a
//! quarter of the server's time. The rows are now written straight from the
//! database's borrowed cells into one buffer, with the same serializer and
//! the same conversions as [`Value`](fieldsync_protocol::Value)'s (`model_value`),
//! so the bytes on the wire are the ones a `PullPage` serialised gives.

use fieldsync_protocol::profile::ColumnKind;
use fieldsync_protocol::protocol::PullPage;
use serde::{Serialize as _, Serializer as _};

use crate::sql::{Cell, Cells, model_value};
use crate::store_error::{StoreError, StoreResult};

/// The rows of one page so far: `[v, ...]` each, comma-separated.
#[derive(Debug, Default)]
pub struct PageRows {
    json: Vec<u8>,
    count: usize,
}

/// Where the rows stood before a row was written (to take it back), and
/// the bytes that row adds to a page by [`Value::approx_size`]'s measure
/// (what `MAX_PAGE_BYTES` counts).
///
/// [`Value::approx_size`]: fieldsync_protocol::Value::approx_size
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowAt {
    at: usize,
    count: usize,
    pub size: usize,
}

impl PageRows {
    /// The number of rows written.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Where the rows stand now: [`PageRows::back_to`] it to drop every row
    /// written after.
    pub fn mark(&self) -> RowAt {
        RowAt {
            at: self.json.len(),
            count: self.count,
            size: 0,
        }
    }

    /// Drops the rows written since `mark` (a row's own [`RowAt`] drops it).
    pub fn back_to(&mut self, mark: RowAt) {
        self.json.truncate(mark.at);
        self.count = mark.count;
    }

    /// Writes the row `r` is on: column 0 is `_version`, then one column per
    /// entry of `kinds` (the table's columns, primary key first), each
    /// converted to its column's kind as `model_value` does.
    pub fn push(&mut self, r: &dyn Cells, kinds: &[ColumnKind]) -> StoreResult<RowAt> {
        let mut row = self.mark();
        if self.count > 0 {
            self.json.push(b',');
        }
        self.json.push(b'[');
        let version = r.int(0)?;
        let mut size = 8;
        {
            let ser = &mut serde_json::Serializer::new(&mut self.json);
            ser.serialize_i64(version).map_err(write_error)?;
        }
        for (i, kind) in kinds.iter().enumerate() {
            self.json.push(b',');
            let ser = &mut serde_json::Serializer::new(&mut self.json);
            match r.cell(i + 1)? {
                // Text is written borrowed; it is a string whatever the
                // column's kind (`model_value` leaves it as it is).
                Cell::Text(t) => {
                    size += t.len() + 2;
                    ser.serialize_str(&t).map_err(write_error)?;
                }
                // Any other cell makes its value without an allocation.
                cell => {
                    let value = model_value(cell.into_value(), *kind);
                    size += value.approx_size();
                    value.serialize(ser).map_err(write_error)?;
                }
            }
        }
        self.json.push(b']');
        self.count += 1;
        row.size = size;
        Ok(row)
    }

    /// The page's JSON: `page` (whose `rows` and `removed` are left empty)
    /// with these rows and `removed`, field for field what serialising the
    /// whole `PullPage` gives.
    pub fn page_json(&self, page: &PullPage, removed: &[String]) -> StoreResult<Vec<u8>> {
        // `rows` and `removed` are the struct's last fields: the head is the
        // page serialised without them, the rows go where its empty ones were.
        const TAIL: &[u8] = br#","rows":[],"removed":[]}"#;
        if !page.rows.is_empty() || !page.removed.is_empty() {
            return Err(StoreError::internal("a page's rows are written apart"));
        }
        let mut out = serde_json::to_vec(page).map_err(write_error)?;
        if !out.ends_with(TAIL) {
            return Err(StoreError::internal(
                "a page's rows and removed keys are no longer its last fields",
            ));
        }
        out.truncate(out.len() - TAIL.len());
        out.reserve(self.json.len() + 32 + removed.iter().map(|k| k.len() + 3).sum::<usize>());
        out.extend_from_slice(br#","rows":["#);
        out.extend_from_slice(&self.json);
        out.extend_from_slice(br#"],"removed":"#);
        serde_json::to_writer(&mut out, removed).map_err(write_error)?;
        out.push(b'}');
        Ok(out)
    }
}

fn write_error(e: serde_json::Error) -> StoreError {
    StoreError::internal(format!("a page does not encode: {e}"))
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use fieldsync_protocol::Value;

    use super::*;

    struct Cells1(Vec<Cell<'static>>);

    impl Cells for Cells1 {
        fn cell(&self, i: usize) -> StoreResult<Cell<'_>> {
            self.0
                .get(i)
                .cloned()
                .ok_or_else(|| StoreError::internal("no column"))
        }
        fn width(&self) -> usize {
            self.0.len()
        }
    }

    /// Every cell and column kind written here reads back as the value
    /// `model_value` makes of it, and the page as the `PullPage` holding
    /// those values serialises: the same bytes.
    #[test]
    fn rows_are_the_bytes_of_the_page_serialised_whole() {
        let kinds = [
            ColumnKind::Text,
            ColumnKind::Integer,
            ColumnKind::Boolean,
            ColumnKind::Real,
            ColumnKind::Integer,
            ColumnKind::Real,
            ColumnKind::Real,
            ColumnKind::Date,
            ColumnKind::DateTime,
            ColumnKind::Text,
        ];
        let rows = vec![
            vec![
                Cell::Int(3),
                Cell::Text(Cow::Borrowed("wo-1 \"quoted\" \\ \n\u{1}é")),
                Cell::Int(-42),
                Cell::Int(1),
                Cell::Int(7),
                Cell::Bool(true),
                Cell::Real(0.1 + 0.2),
                Cell::Real(f64::NAN),
                Cell::Text(Cow::Borrowed("2026-11-30")),
                Cell::Null,
                Cell::Text(Cow::Borrowed("")),
            ],
            vec![
                Cell::Int(1),
                Cell::Text(Cow::Borrowed("wo-2")),
                Cell::Null,
                Cell::Int(0),
                Cell::Real(-1e300),
                Cell::Bool(false),
                Cell::Real(f64::INFINITY),
                Cell::Int(i64::MAX),
                Cell::Null,
                Cell::Text(Cow::Borrowed("2026-11-30T08:00:00Z")),
                Cell::Text(Cow::Borrowed("🛠")),
            ],
        ];
        let mut written = PageRows::default();
        let mut values = Vec::new();
        let mut sizes = Vec::new();
        for cells in &rows {
            let at = written.push(&Cells1(cells.clone()), &kinds).expect("push");
            let mut row = vec![cells[0].clone().into_value()];
            for (cell, kind) in cells[1..].iter().zip(kinds) {
                row.push(model_value(cell.clone().into_value(), kind));
            }
            sizes.push((at.size, row.iter().map(Value::approx_size).sum::<usize>()));
            values.push(row);
        }
        for (size, expected) in &sizes {
            assert_eq!(size, expected, "a row's size as MAX_PAGE_BYTES counts it");
        }
        let head = PullPage {
            table: "work_orders".into(),
            profile_version: 4,
            cursor: "v2.1.2.3".into(),
            has_more: true,
            total: Some(12),
            snapshot_rows: 1,
            columns: vec!["_version".into(), "id".into()],
            rows: Vec::new(),
            removed: Vec::new(),
        };
        let removed = vec!["wo-9".to_owned(), "wo-\"10\"".to_owned()];
        let json = written.page_json(&head, &removed).expect("page");
        let whole = PullPage {
            rows: values,
            removed: removed.clone(),
            ..head.clone()
        };
        assert_eq!(
            String::from_utf8(json.clone()).expect("utf-8"),
            serde_json::to_string(&whole).expect("serialise"),
        );
        for (total, snapshot_rows) in [(None, 0), (Some(0), 5)] {
            let head = PullPage {
                total,
                snapshot_rows,
                ..head.clone()
            };
            let empty = PageRows::default().page_json(&head, &[]).expect("page");
            assert_eq!(empty, serde_json::to_vec(&head).expect("serialise"));
        }

        // A row taken back leaves the rows as they were.
        let mut taken = PageRows::default();
        taken.push(&Cells1(rows[0].clone()), &kinds).expect("push");
        let before = taken.page_json(&head, &[]).expect("page");
        let at = taken.push(&Cells1(rows[1].clone()), &kinds).expect("push");
        assert_eq!(taken.len(), 2);
        taken.back_to(at);
        assert_eq!(taken.len(), 1);
        assert_eq!(taken.page_json(&head, &[]).expect("page"), before);
        let mark = PageRows::default().mark();
        taken.back_to(mark);
        assert!(taken.is_empty());
        assert_eq!(
            taken.page_json(&head, &[]).expect("page"),
            serde_json::to_vec(&head).expect("serialise")
        );
    }
}
