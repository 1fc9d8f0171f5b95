//! The rows of synced tables: reading them as records, the upsert a row is
//! written with, and the column lists the rules read. Shared by the local
//! writes, the page apply, the push results and the settling.

use std::collections::{BTreeMap, BTreeSet};

use rusqlite::{Connection, params};

use crate::error::{Error, Result};
use crate::profile::{Column, ColumnKind, RowRule, SyncTable, quote_ident};
use crate::protocol::VERSION_COLUMN;
use crate::value::{Record, Value};

/// Name of the version column on device tables.
pub const LOCAL_VERSION_COLUMN: &str = "_fs_version";

/// Every row a query over `table`'s columns ([`select_columns`]) answers,
/// as records.
pub(super) fn records(mut rows: rusqlite::Rows<'_>, table: &SyncTable) -> Result<Vec<Record>> {
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let (fields, version) = row_to_map(row, table)?;
        let id = match fields.get(&table.primary_key) {
            Some(Value::Text(id)) => id.clone(),
            _ => String::new(),
        };
        out.push(Record {
            table: table.name.clone(),
            id,
            version,
            fields,
        });
    }
    Ok(out)
}

pub(super) fn row_to_map(
    row: &rusqlite::Row<'_>,
    table: &SyncTable,
) -> Result<(BTreeMap<String, Value>, i64)> {
    let mut fields = BTreeMap::new();
    for (i, c) in table.columns.iter().enumerate() {
        fields.insert(c.name.clone(), Value::from_sql(row.get_ref(i)?, c.kind));
    }
    let version: i64 = row.get(table.columns.len())?;
    Ok((fields, version))
}

/// The columns the rules of `table` read, the primary key included, in
/// table order: a settling pass over every row reads only these into each
/// row's map.
pub(super) fn rule_columns(table: &SyncTable) -> Vec<&Column> {
    let mut names: Vec<&str> = vec![table.primary_key.as_str()];
    for rule in &table.rules {
        match rule {
            RowRule::All => {}
            RowRule::Owned { column } => names.push(column),
            RowRule::Custom { filter } => names.extend(filter.columns()),
            RowRule::Related {
                table: other,
                column,
                foreign_column,
            } => {
                names.push(column);
                if *other == table.name {
                    names.push(foreign_column);
                }
            }
        }
    }
    table
        .columns
        .iter()
        .filter(|c| names.contains(&c.name.as_str()))
        .collect()
}

/// `SELECT` of [`rule_columns`] over the whole table.
pub(super) fn rule_columns_sql(table: &SyncTable, columns: &[&Column]) -> String {
    let list: Vec<String> = columns.iter().map(|c| quote_ident(&c.name)).collect();
    format!(
        "SELECT {} FROM {}",
        list.join(", "),
        quote_ident(&table.name)
    )
}

/// A row read by [`rule_columns_sql`], as a map.
pub(super) fn rule_row(
    row: &rusqlite::Row<'_>,
    columns: &[&Column],
) -> Result<BTreeMap<String, Value>> {
    let mut fields = BTreeMap::new();
    for (i, c) in columns.iter().enumerate() {
        fields.insert(c.name.clone(), Value::from_sql(row.get_ref(i)?, c.kind));
    }
    Ok(fields)
}

pub(super) fn select_columns(table: &SyncTable) -> String {
    let mut cols: Vec<String> = table.columns.iter().map(|c| quote_ident(&c.name)).collect();
    cols.push(LOCAL_VERSION_COLUMN.into());
    cols.join(", ")
}

pub(super) fn read_row(
    conn: &Connection,
    table: &SyncTable,
    id: &str,
) -> Result<Option<(BTreeMap<String, Value>, i64)>> {
    let sql = format!(
        "SELECT {} FROM {} WHERE {} = ?1",
        select_columns(table),
        quote_ident(&table.name),
        quote_ident(&table.primary_key)
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query([id])?;
    match rows.next()? {
        Some(row) => Ok(Some(row_to_map(row, table)?)),
        None => Ok(None),
    }
}

/// The upsert of a row of `table`: `_fs_version` then `columns` (column
/// names, the primary key among them) bound as `?1`, `?2`, ... in that
/// order; a row already there takes every given column and the version.
///
/// SQLite rewrites the entry of every index on a column an `UPDATE` sets,
/// changed or not: with the settling's lookup indexes on a work order's
/// `account_id` and `customer_asset_id`, writing 10,000 changed work orders
/// took twice as long. So when given columns are indexed, `sql` sets only
/// the others, on the condition that the indexed ones are unchanged, and
/// `fallback` (every column) is run when that changed nothing: a new row is
/// inserted by `sql`, an existing one with the same indexed values updated
/// by it, and only a row whose indexed value moved takes the fallback.
pub(super) struct Upsert {
    pub(super) sql: String,
    pub(super) fallback: Option<String>,
}

impl Upsert {
    /// The upsert of `columns` of `table`, whose indexed columns are
    /// `indexed` (see [`indexed_columns`]).
    pub(super) fn new(table: &SyncTable, columns: &[&str], indexed: &BTreeSet<String>) -> Upsert {
        let pk = table.primary_key.as_str();
        let every: Vec<&str> = columns.iter().copied().filter(|c| *c != pk).collect();
        let (guarded, plain): (Vec<&str>, Vec<&str>) =
            every.iter().copied().partition(|c| indexed.contains(*c));
        let full = upsert_sql(table, columns, &every, &[]);
        if guarded.is_empty() {
            return Upsert {
                sql: full,
                fallback: None,
            };
        }
        Upsert {
            sql: upsert_sql(table, columns, &plain, &guarded),
            fallback: Some(full),
        }
    }

    /// The quiet update of a pulled row over a settled table, with a row's
    /// parameters as the upsert takes them (`?1` the version, then
    /// `columns`): it writes the row only when the device holds it with the
    /// same values in every column of `indexed` and of `unchanged`, and
    /// with `versions` at a version less than two behind (see
    /// `RelatedQueue`).
    pub(super) fn quiet_update(
        table: &SyncTable,
        columns: &[&str],
        indexed: &BTreeSet<String>,
        unchanged: &[&str],
        versions: bool,
    ) -> String {
        let pk = table.primary_key.as_str();
        let mut set = Vec::new();
        let mut same = Vec::new();
        for (i, c) in columns.iter().enumerate() {
            let (q, at) = (quote_ident(c), i + 2);
            if *c == pk {
                same.push(format!("{q} = ?{at}"));
            } else if indexed.contains(*c) || unchanged.contains(c) {
                same.push(format!("{q} IS ?{at}"));
            } else {
                set.push(format!("{q} = ?{at}"));
            }
        }
        set.push(format!("{LOCAL_VERSION_COLUMN} = ?1"));
        if versions {
            same.push(format!("{LOCAL_VERSION_COLUMN} + 2 > ?1"));
        }
        format!(
            "UPDATE {} SET {} WHERE {}",
            quote_ident(&table.name),
            set.join(", "),
            same.join(" AND ")
        )
    }

    /// The upsert of a whole row of `table` (every column, see [`upsert_row`]).
    pub(super) fn whole_row(conn: &Connection, table: &SyncTable) -> Result<Upsert> {
        let names: Vec<&str> = table.columns.iter().map(|c| c.name.as_str()).collect();
        Ok(Upsert::new(
            table,
            &names,
            &indexed_columns(conn, &table.name)?,
        ))
    }
}

/// `INSERT ... ON CONFLICT DO UPDATE SET` each of `set` and the version,
/// where every column of `unchanged` still holds the arriving value.
pub(super) fn upsert_sql(
    table: &SyncTable,
    columns: &[&str],
    set: &[&str],
    unchanged: &[&str],
) -> String {
    let cols: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
    let placeholders: Vec<String> = (1..=cols.len() + 1).map(|i| format!("?{i}")).collect();
    let updates: Vec<String> = set
        .iter()
        .map(|c| {
            let c = quote_ident(c);
            format!("{c} = excluded.{c}")
        })
        .chain(std::iter::once(format!(
            "{LOCAL_VERSION_COLUMN} = excluded.{LOCAL_VERSION_COLUMN}"
        )))
        .collect();
    let condition = if unchanged.is_empty() {
        String::new()
    } else {
        let same: Vec<String> = unchanged
            .iter()
            .map(|c| {
                let c = quote_ident(c);
                format!("{c} IS excluded.{c}")
            })
            .collect();
        format!(" WHERE {}", same.join(" AND "))
    };
    format!(
        "INSERT INTO {} ({LOCAL_VERSION_COLUMN}, {}) VALUES ({}) ON CONFLICT({}) DO UPDATE SET {}{condition}",
        quote_ident(&table.name),
        cols.join(", "),
        placeholders.join(", "),
        quote_ident(&table.primary_key),
        updates.join(", ")
    )
}

/// The columns of `table` that some index holds.
pub(super) fn indexed_columns(conn: &Connection, table: &str) -> Result<BTreeSet<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT DISTINCT ii.name FROM pragma_index_list(?1) AS il, pragma_index_info(il.name) AS ii
         WHERE ii.name IS NOT NULL",
    )?;
    let rows = stmt.query_map([table], |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// A row's size as [`MAX_ROW_BYTES`] counts it: its values and its id.
pub(super) fn row_size<'a>(values: impl Iterator<Item = &'a Value>, id: &str) -> usize {
    values.map(Value::approx_size).sum::<usize>() + id.len()
}

/// Writes a whole row (every column; missing ones null) with a version,
/// through `upsert` ([`Upsert::whole_row`] of the same table).
pub(super) fn upsert_row(
    conn: &Connection,
    upsert: &Upsert,
    table: &SyncTable,
    fields: &BTreeMap<String, Value>,
    version: i64,
) -> Result<()> {
    let mut values: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity(table.columns.len() + 1);
    values.push(&version);
    for c in &table.columns {
        values.push(fields.get(&c.name).unwrap_or(&Value::Null));
    }
    let changed = conn
        .prepare_cached(&upsert.sql)?
        .execute(values.as_slice())?;
    if changed == 0
        && let Some(fallback) = &upsert.fallback
    {
        conn.prepare_cached(fallback)?.execute(values.as_slice())?;
    }
    Ok(())
}

pub(super) fn delete_row(conn: &Connection, table: &SyncTable, id: &str) -> Result<bool> {
    let sql = format!(
        "DELETE FROM {} WHERE {} = ?1",
        quote_ident(&table.name),
        quote_ident(&table.primary_key)
    );
    Ok(conn.prepare_cached(&sql)?.execute([id])? > 0)
}

/// Distinct keys of a column over the rows `conn` sees.
pub(super) fn distinct_keys(
    conn: &Connection,
    table: &SyncTable,
    column: &str,
) -> Result<BTreeSet<String>> {
    let Some(kind) = table.column(column).map(|c| c.kind) else {
        return Ok(BTreeSet::new());
    };
    let sql = format!(
        "SELECT DISTINCT {c} FROM {t} WHERE {c} IS NOT NULL",
        c = quote_ident(column),
        t = quote_ident(&table.name)
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query([])?;
    let mut out = BTreeSet::new();
    while let Some(r) = rows.next()? {
        if let Some(k) = value_key(&Value::from_sql(r.get_ref(0)?, kind)) {
            out.insert(k);
        }
    }
    Ok(out)
}

pub(super) fn value_key(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::Text(s) => Some(s.clone()),
        Value::Integer(i) => Some(i.to_string()),
        Value::Real(f) => Some(f.to_string()),
        Value::Boolean(b) => Some(i64::from(*b).to_string()),
    }
}

/// The columns of a page of `table` in the order the server sends them:
/// `_version`, then the profile's columns.
pub(super) fn page_columns(table: &SyncTable) -> Vec<String> {
    std::iter::once(VERSION_COLUMN.to_owned())
        .chain(table.columns.iter().map(|c| c.name.clone()))
        .collect()
}

/// How SQLite runs a compiled query: the `detail` lines of `EXPLAIN
/// QUERY PLAN` (for tests and diagnostics: whether it uses an index).
pub(super) fn query_plan(
    conn: &Connection,
    table: &SyncTable,
    q: &crate::query::CompiledQuery,
) -> Result<Vec<String>> {
    let sql = format!(
        "EXPLAIN QUERY PLAN SELECT {} FROM {} WHERE {} ORDER BY {} LIMIT ? OFFSET ?",
        select_columns(table),
        quote_ident(&table.name),
        q.condition,
        q.order
    );
    let mut stmt = conn.prepare(&sql)?;
    let mut bound: Vec<&dyn rusqlite::ToSql> =
        q.params.iter().map(|v| v as &dyn rusqlite::ToSql).collect();
    bound.push(&q.limit);
    bound.push(&q.offset);
    let rows = stmt.query_map(bound.as_slice(), |r| r.get::<_, String>(3))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The rows of `table` a compiled query selects, in its order.
pub(super) fn query(
    conn: &Connection,
    table: &SyncTable,
    q: &crate::query::CompiledQuery,
) -> Result<Vec<Record>> {
    let sql = format!(
        "SELECT {} FROM {} WHERE {} ORDER BY {} LIMIT ? OFFSET ?",
        select_columns(table),
        quote_ident(&table.name),
        q.condition,
        q.order
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut bound: Vec<&dyn rusqlite::ToSql> =
        q.params.iter().map(|v| v as &dyn rusqlite::ToSql).collect();
    bound.push(&q.limit);
    bound.push(&q.offset);
    let rows = stmt.query(bound.as_slice())?;
    records(rows, table)
}

/// How many rows of `table` a compiled query's condition selects
/// (limit and offset not applied).
pub(super) fn query_count(
    conn: &Connection,
    table: &SyncTable,
    q: &crate::query::CompiledQuery,
) -> Result<u64> {
    let sql = format!(
        "SELECT count(*) FROM {} WHERE {}",
        quote_ident(&table.name),
        q.condition
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let n: i64 = stmt.query_row(rusqlite::params_from_iter(q.params.iter()), |r| r.get(0))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Reads one row.
pub(super) fn get(conn: &Connection, table: &SyncTable, id: &str) -> Result<Record> {
    match read_row(conn, table, id)? {
        Some((fields, version)) => Ok(Record {
            table: table.name.clone(),
            id: id.to_owned(),
            version,
            fields,
        }),
        None => Err(Error::RecordNotFound {
            table: table.name.clone(),
            id: id.to_owned(),
        }),
    }
}

/// Lists rows ordered by primary key, starting after `after`.
pub(super) fn list(
    conn: &Connection,
    table: &SyncTable,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<Record>> {
    let sql = format!(
        "SELECT {} FROM {} WHERE ?1 IS NULL OR {pk} > ?1 ORDER BY {pk} LIMIT ?2",
        select_columns(table),
        quote_ident(&table.name),
        pk = quote_ident(&table.primary_key)
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query(params![after, limit])?;
    records(rows, table)
}

/// Number of rows in a synced table.
pub(super) fn count(conn: &Connection, table: &str) -> Result<u64> {
    let n: i64 = conn.query_row(
        &format!("SELECT COUNT(*) FROM {}", quote_ident(table)),
        [],
        |r| r.get(0),
    )?;
    Ok(n.max(0) as u64)
}

/// Kinds whose values are stored as text and whose comparison key is the
/// text itself, so SQL can compare them as the Rust code would.
pub(super) fn text_like(kind: ColumnKind) -> bool {
    matches!(
        kind,
        ColumnKind::Text | ColumnKind::Date | ColumnKind::DateTime
    )
}
