//! Rows of the data tables: read, scope checks, the one write path (with
//! change-log and sequence), and the back-office records API.

use std::collections::BTreeMap;

use fieldsync_protocol::Value;
use fieldsync_protocol::profile::{RowRule, SyncProfile, SyncTable, TableSchema, quote_ident};
use fieldsync_protocol::protocol::{MAX_ROW_BYTES, Op, codes};

use crate::rules;
use crate::sql::{Conn, Dialect, Row, int, opt_text, text};
use crate::store_error::{StoreError, StoreResult};

use super::backend::Db;

/// A row as stored on the server.
#[derive(Debug, Clone)]
pub(super) struct StoredRow {
    pub(super) fields: BTreeMap<String, Value>,
    pub(super) version: i64,
    pub(super) deleted: bool,
}

impl StoredRow {
    /// The select list [`StoredRow::read`] decodes: the table's columns,
    /// then `_version` and `_deleted`.
    fn columns(schema: &TableSchema) -> String {
        let mut cols: Vec<String> = schema
            .columns
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect();
        cols.extend(["_version".to_owned(), "_deleted".to_owned()]);
        cols.join(", ")
    }

    /// The row at the start of `r`, selected by [`StoredRow::columns`].
    fn read(r: &Row, schema: &TableSchema) -> StoreResult<StoredRow> {
        let n = schema.columns.len();
        let mut fields = BTreeMap::new();
        for (i, col) in schema.columns.iter().enumerate() {
            fields.insert(col.name.clone(), r.value(i, col.kind));
        }
        Ok(StoredRow {
            fields,
            version: r.i64(n)?,
            deleted: r.bool(n + 1)?,
        })
    }
}

/// Who wrote a change, as its change log entry records it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Writer<'a> {
    pub(super) user_id: Option<&'a str>,
    pub(super) device_id: Option<&'a str>,
    /// The upload that produced the change (pushes only).
    pub(super) idempotency_key: Option<&'a str>,
}

/// What a back-office write ([`Db::write_record`]) left.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordWritten {
    /// The row as stored after the write.
    pub row: BTreeMap<String, Value>,
    pub version: i64,
    /// Whether the write created the row (it was missing or deleted).
    pub created: bool,
}

/// PostgreSQL text cannot hold U+0000 (SQLite's can): the first value that
/// would not store, by column name.
pub(super) fn unstorable_text<'a>(
    dialect: Dialect,
    data: impl IntoIterator<Item = (&'a String, &'a Value)>,
) -> Option<&'a String> {
    if dialect != Dialect::Postgres {
        return None;
    }
    data.into_iter()
        .find(|(_, v)| matches!(v, Value::Text(t) if t.contains('\0')))
        .map(|(k, _)| k)
}

/// The first required column without a default that a new row's `data`
/// leaves without a value.
pub(super) fn missing_required<'a>(
    schema: &'a TableSchema,
    data: &BTreeMap<String, Value>,
) -> Option<&'a str> {
    schema
        .columns
        .iter()
        .filter(|c| c.required && c.default.is_none() && c.name != schema.primary_key)
        .find(|c| data.get(&c.name).is_none_or(|v| *v == Value::Null))
        .map(|c| c.name.as_str())
}

/// Approximate size of a row's values, for the row size limit.
pub(super) fn row_size(data: &BTreeMap<String, Value>) -> usize {
    data.iter().map(|(k, v)| k.len() + v.approx_size()).sum()
}

/// The size (as [`row_size`] counts it) of the row `data` leaves once
/// written over `current`: the live row's other fields count too, so a row
/// cannot pass [`MAX_ROW_BYTES`] a field at a time.
pub(super) fn merged_size(current: Option<&StoredRow>, data: &BTreeMap<String, Value>) -> usize {
    let mut size = row_size(data);
    if let Some(r) = current.filter(|r| !r.deleted) {
        for (k, v) in &r.fields {
            if !data.contains_key(k) {
                size += k.len() + v.approx_size();
            }
        }
    }
    size
}

pub(super) fn json_opt<T: serde::de::DeserializeOwned>(text: Option<String>) -> Option<T> {
    text.and_then(|t| serde_json::from_str(&t).ok())
}

impl Db {
    /// A table of the model as this instance last read it: the request
    /// resolved its profile (or read the model) first, which reads a newer
    /// version; this runs inside write transactions, where another read
    /// would take a second connection.
    pub(super) fn schema(&self, table: &str) -> StoreResult<TableSchema> {
        self.cached_model()
            .model
            .table(table)
            .cloned()
            .ok_or_else(|| {
                StoreError::invalid(codes::UNKNOWN_TABLE, format!("unknown table '{table}'"))
            })
    }

    pub(super) fn read_row(
        c: &mut dyn Conn,
        schema: &TableSchema,
        id: &str,
    ) -> StoreResult<Option<StoredRow>> {
        let sql = format!(
            "SELECT {} FROM {} WHERE {} = ?",
            StoredRow::columns(schema),
            quote_ident(&schema.name),
            quote_ident(&schema.primary_key)
        );
        match c.query_opt(&sql, &[text(id)])? {
            Some(r) => Ok(Some(StoredRow::read(&r, schema)?)),
            None => Ok(None),
        }
    }

    /// The live row `id` of `table` if the profile selects it: one query
    /// for both questions (see [`Db::read_row`] and [`Db::visible`]).
    pub(super) fn read_visible_row(
        &self,
        c: &mut dyn Conn,
        profile: &SyncProfile,
        table: &SyncTable,
        schema: &TableSchema,
        id: &str,
    ) -> StoreResult<Option<StoredRow>> {
        let p = rules::compile_in(c.dialect(), profile, table, &self.ctx(profile));
        let sql = format!(
            "SELECT {} FROM {} WHERE {} = ? AND _deleted = 0 AND {}",
            StoredRow::columns(schema),
            quote_ident(&schema.name),
            quote_ident(&schema.primary_key),
            p.sql
        );
        let mut params = vec![text(id)];
        params.extend(p.params);
        match c.query_opt(&sql, &params)? {
            Some(r) => Ok(Some(StoredRow::read(&r, schema)?)),
            None => Ok(None),
        }
    }

    /// The row `id` of `table` as stored (tombstones included) and whether
    /// the profile selects it live: [`Db::read_row`] and [`Db::visible`]
    /// in one query.
    pub(super) fn read_row_seen(
        &self,
        c: &mut dyn Conn,
        profile: &SyncProfile,
        table: &SyncTable,
        schema: &TableSchema,
        id: &str,
    ) -> StoreResult<(Option<StoredRow>, bool)> {
        let p = rules::compile_in(c.dialect(), profile, table, &self.ctx(profile));
        let sql = format!(
            "SELECT {}, CASE WHEN _deleted = 0 AND ({}) THEN 1 ELSE 0 END FROM {} WHERE {} = ?",
            StoredRow::columns(schema),
            p.sql,
            quote_ident(&schema.name),
            quote_ident(&schema.primary_key)
        );
        let mut params = p.params;
        params.push(text(id));
        match c.query_opt(&sql, &params)? {
            Some(r) => {
                let row = StoredRow::read(&r, schema)?;
                let seen = r.i64(schema.columns.len() + 2)? != 0;
                Ok((Some(row), seen))
            }
            None => Ok((None, false)),
        }
    }

    pub(super) fn visible(
        &self,
        c: &mut dyn Conn,
        profile: &SyncProfile,
        table: &SyncTable,
        id: &str,
    ) -> StoreResult<bool> {
        let p = rules::compile_in(c.dialect(), profile, table, &self.ctx(profile));
        let sql = format!(
            "SELECT 1 FROM {} WHERE {} = ? AND _deleted = 0 AND {}",
            quote_ident(&table.name),
            quote_ident(&table.primary_key),
            p.sql
        );
        let mut params = vec![text(id)];
        params.extend(p.params);
        c.exists(&sql, &params)
    }

    /// Whether writing `data` into a row of `table` would point a
    /// relationship at a row its writer cannot already reach: the reason,
    /// or `None` when the write gains no reach.
    ///
    /// A related rule grants reach through the rows of another table
    /// (work orders through the user's bookings' `work_order_id`), so a
    /// relationship a user writes is one of the rows it may read tomorrow.
    /// Each value that a related rule of the profile reads, set or changed
    /// by this write, must name live rows that the profile selects today,
    /// every one of them; a value naming no row is refused too, since a row
    /// created under that key later would be reached.
    pub(super) fn reach_gained(
        &self,
        c: &mut dyn Conn,
        profile: &SyncProfile,
        table: &SyncTable,
        current: Option<&StoredRow>,
        data: &BTreeMap<String, Value>,
    ) -> StoreResult<Option<String>> {
        let live = current.filter(|r| !r.deleted);
        for reached in &profile.tables {
            for rule in &reached.rules {
                let RowRule::Related {
                    table: through,
                    column,
                    foreign_column,
                } = rule
                else {
                    continue;
                };
                if through != &table.name {
                    continue;
                }
                let Some(value) = data.get(foreign_column).filter(|v| **v != Value::Null) else {
                    continue;
                };
                if live.and_then(|r| r.fields.get(foreign_column)) == Some(value) {
                    continue;
                }
                let target = quote_ident(&reached.name);
                let key = quote_ident(column);
                let all = c
                    .query_one(
                        &format!("SELECT COUNT(*) FROM {target} WHERE {key} = ? AND _deleted = 0"),
                        std::slice::from_ref(value),
                    )?
                    .i64(0)?;
                let selected = rules::compile_in(c.dialect(), profile, reached, &self.ctx(profile));
                let mut params = vec![value.clone()];
                params.extend(selected.params);
                let reachable = c
                    .query_one(
                        &format!(
                            "SELECT COUNT(*) FROM {target} WHERE {key} = ? AND _deleted = 0 AND {}",
                            selected.sql
                        ),
                        &params,
                    )?
                    .i64(0)?;
                if all == 0 || reachable < all {
                    return Ok(Some(format!(
                        "column '{foreign_column}' must point at a {} row you can already reach",
                        reached.name
                    )));
                }
            }
        }
        Ok(None)
    }

    /// Writes a change and logs it. `replace` sets every column (missing
    /// ones null); otherwise only the given columns change. Returns the new
    /// version and the change's id in the change log.
    pub(super) fn apply_write(
        &self,
        c: &mut dyn Conn,
        schema: &TableSchema,
        id: &str,
        change: Option<(&BTreeMap<String, Value>, bool)>,
        user_id: Option<&str>,
        device_id: Option<&str>,
    ) -> StoreResult<(i64, i64)> {
        let current = Self::read_row(c, schema, id)?;
        self.apply_write_over(
            c,
            schema,
            id,
            current.as_ref(),
            change,
            Some(Writer {
                user_id,
                device_id,
                idempotency_key: None,
            }),
        )
    }

    /// [`Db::apply_write`] over `current`, the row as the caller just read
    /// it in this transaction; the change log names the writer (and the
    /// upload's idempotency key, for the audit).
    pub(super) fn apply_write_over(
        &self,
        c: &mut dyn Conn,
        schema: &TableSchema,
        id: &str,
        current: Option<&StoredRow>,
        change: Option<(&BTreeMap<String, Value>, bool)>,
        writer: Option<Writer<'_>>,
    ) -> StoreResult<(i64, i64)> {
        let (user_id, device_id, key) = writer.map_or((None, None, None), |w| {
            (w.user_id, w.device_id, w.idempotency_key)
        });
        let version = current.map(|r| r.version).unwrap_or(0) + 1;
        let now = self.now_text();
        let op = match (&change, current) {
            (None, _) => "delete",
            (Some(_), Some(r)) if !r.deleted => "update",
            _ => "insert",
        };
        let log = [
            text(schema.name.clone()),
            text(id),
            text(op),
            int(version),
            opt_text(user_id),
            opt_text(device_id),
            text(now.clone()),
            opt_text(key),
        ];
        // SQLite: the change log's key is its sequence, taken inside the one
        // write transaction. PostgreSQL: the change is pending until
        // `stamp_sequences` gives it its sequence at commit; its data row
        // carries minus the change's id meanwhile.
        let (change_id, seq) = match c.dialect() {
            Dialect::Sqlite => {
                let seq = c
                    .query_one(
                        "INSERT INTO _fs_change_log (tbl, row_id, op, version, user_id, device_id, at, idempotency_key)
                         VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING seq",
                        &log,
                    )?
                    .i64(0)?;
                (seq, seq)
            }
            Dialect::Postgres if cfg!(feature = "naive-sequence") => {
                let r = c.query_one(
                    "INSERT INTO _fs_change_log (tbl, row_id, op, version, user_id, device_id, at, idempotency_key, seq)
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, nextval('_fs_change_seq')) RETURNING id, seq",
                    &log,
                )?;
                (r.i64(0)?, r.i64(1)?)
            }
            Dialect::Postgres => {
                let change_id = c
                    .query_one(
                        "INSERT INTO _fs_change_log (tbl, row_id, op, version, user_id, device_id, at, idempotency_key)
                         VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                        &log,
                    )?
                    .i64(0)?;
                (change_id, -change_id)
            }
        };
        match change {
            None => {
                c.execute(
                    &format!(
                        "UPDATE {} SET _deleted = 1, _version = ?, _seq = ?, _updated_at = ? WHERE {} = ?",
                        quote_ident(&schema.name),
                        quote_ident(&schema.primary_key)
                    ),
                    &[int(version), int(seq), text(now), text(id)],
                )?;
            }
            Some((data, replace)) => {
                let replace = replace || current.is_none_or(|r| r.deleted);
                let mut names = vec![quote_ident(&schema.primary_key)];
                let mut values: Vec<Value> = vec![text(id)];
                for col in &schema.columns {
                    if col.name == schema.primary_key {
                        continue;
                    }
                    match data.get(&col.name) {
                        Some(v) => {
                            names.push(quote_ident(&col.name));
                            values.push(v.clone());
                        }
                        // A new row takes the model's default for a
                        // column not sent (a device that has not learned
                        // the column yet sends none).
                        None if replace => {
                            names.push(quote_ident(&col.name));
                            values.push(col.default.clone().unwrap_or(Value::Null));
                        }
                        None => {}
                    }
                }
                let sets: Vec<String> = names[1..]
                    .iter()
                    .map(|n| format!("{n} = excluded.{n}"))
                    .chain(
                        [
                            "_version = excluded._version",
                            "_seq = excluded._seq",
                            "_deleted = 0",
                            "_updated_at = excluded._updated_at",
                        ]
                        .map(String::from),
                    )
                    .collect();
                let placeholders: Vec<&str> = (0..names.len() + 3).map(|_| "?").collect();
                let sql = format!(
                    "INSERT INTO {} ({}, _version, _seq, _updated_at) VALUES ({}) ON CONFLICT ({}) DO UPDATE SET {}",
                    quote_ident(&schema.name),
                    names.join(", "),
                    placeholders.join(", "),
                    quote_ident(&schema.primary_key),
                    sets.join(", ")
                );
                values.push(int(version));
                values.push(int(seq));
                values.push(text(now));
                c.execute(&sql, &values)?;
            }
        }
        Ok((version, change_id))
    }

    pub(super) fn project(
        fields: &BTreeMap<String, Value>,
        table: &SyncTable,
    ) -> BTreeMap<String, Value> {
        table
            .columns
            .iter()
            .map(|c| {
                (
                    c.name.clone(),
                    fields.get(&c.name).cloned().unwrap_or(Value::Null),
                )
            })
            .collect()
    }

    /// Reads a live row. With `scope`, only a row the scope's rules select,
    /// projected onto its columns.
    pub fn record(
        &self,
        table: &str,
        id: &str,
        scope: Option<(&SyncProfile, &SyncTable, &str)>,
    ) -> StoreResult<Option<(BTreeMap<String, Value>, i64)>> {
        let schema = &self.schema(table)?;
        self.read(|c| {
            let Some(row) = Self::read_row(c, schema, id)? else {
                return Ok(None);
            };
            if row.deleted {
                return Ok(None);
            }
            match scope {
                Some((p, t, _)) => {
                    if !self.visible(c, p, t, id)? {
                        return Ok(None);
                    }
                    Ok(Some((Self::project(&row.fields, t), row.version)))
                }
                None => Ok(Some((row.fields, row.version))),
            }
        })
    }

    /// Lists live rows ordered by primary key after `after`.
    pub fn records(
        &self,
        table: &str,
        after: Option<&str>,
        limit: u32,
        scope: Option<(&SyncProfile, &SyncTable, &str)>,
        filter: &[(String, Value)],
    ) -> StoreResult<Vec<(BTreeMap<String, Value>, i64)>> {
        let schema = &self.schema(table)?;
        let limit = limit.clamp(1, 1000);
        let cols: Vec<String> = schema
            .columns
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect();
        let mut params: Vec<Value> = Vec::new();
        let mut sql = format!(
            "SELECT {}, _version FROM {} WHERE _deleted = 0",
            cols.join(", "),
            quote_ident(&schema.name)
        );
        if let Some(after) = after {
            sql.push_str(&format!(" AND {} > ?", quote_ident(&schema.primary_key)));
            params.push(text(after));
        }
        if let Some((profile, t, _)) = scope {
            let p = rules::compile_in(self.dialect(), profile, t, &self.ctx(profile));
            sql.push_str(&format!(" AND {}", p.sql));
            params.extend(p.params);
        }
        // Online-mode equality filters (columns checked by the caller).
        for (column, value) in filter {
            if *value == Value::Null {
                sql.push_str(&format!(" AND {} IS NULL", quote_ident(column)));
            } else {
                sql.push_str(&format!(" AND {} = ?", quote_ident(column)));
                params.push(value.clone());
            }
        }
        sql.push_str(&format!(
            " ORDER BY {} LIMIT ?",
            quote_ident(&schema.primary_key)
        ));
        params.push(int(i64::from(limit)));
        let rows = self.read(|c| c.query(&sql, &params))?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let mut fields = BTreeMap::new();
            for (i, col) in schema.columns.iter().enumerate() {
                fields.insert(col.name.clone(), r.value(i, col.kind));
            }
            let version = r.i64(schema.columns.len())?;
            out.push(match scope {
                Some((_, t, _)) => (Self::project(&fields, t), version),
                None => (fields, version),
            });
        }
        Ok(out)
    }

    /// Writes fields of a row as a back-office user (creating it if missing).
    /// With `base_version`, refuses with 409 when the row changed since.
    pub fn write_record(
        &self,
        table: &str,
        id: &str,
        data: &BTreeMap<String, Value>,
        base_version: Option<i64>,
        user_id: &str,
    ) -> StoreResult<RecordWritten> {
        self.write_record_within(None, table, id, data, base_version, user_id)
    }

    /// [`Db::write_record`] within the write rights the writer's profile
    /// declares for the table (`rights`, its profile table, if any): a
    /// create or change they do not allow is refused with 403 `forbidden`.
    pub fn write_record_within(
        &self,
        rights: Option<&SyncTable>,
        table: &str,
        id: &str,
        data: &BTreeMap<String, Value>,
        base_version: Option<i64>,
        user_id: &str,
    ) -> StoreResult<RecordWritten> {
        let schema = &self.schema(table)?;
        if id.is_empty() || id.len() > 256 {
            return Err(StoreError::invalid(
                codes::BAD_REQUEST,
                "a record id is 1 to 256 characters",
            ));
        }
        let size = row_size(data);
        if size > MAX_ROW_BYTES {
            return Err(StoreError::too_large(
                codes::PAYLOAD_TOO_LARGE,
                format!("the row is {size} bytes; at most {MAX_ROW_BYTES} are allowed"),
            ));
        }
        let mut clean = BTreeMap::new();
        for (name, value) in data {
            let col = schema.column(name).ok_or_else(|| {
                StoreError::invalid(
                    codes::UNKNOWN_COLUMN,
                    format!("unknown column '{name}' in table '{table}'"),
                )
            })?;
            if name == &schema.primary_key {
                if value != &Value::Text(id.to_owned()) {
                    return Err(StoreError::invalid(
                        codes::INVALID_VALUE,
                        "the primary key field differs from the record id",
                    ));
                }
                continue;
            }
            clean.insert(
                name.clone(),
                col.check(value.clone()).map_err(|e| {
                    StoreError::invalid(codes::INVALID_VALUE, format!("column '{name}': {e}"))
                })?,
            );
        }
        if let Some(name) = unstorable_text(self.dialect(), &clean) {
            return Err(StoreError::invalid(
                codes::INVALID_VALUE,
                format!("column '{name}': text holding U+0000 cannot be stored by this server"),
            ));
        }
        self.write(|c| {
            let current = Self::read_row(c, schema, id)?;
            if current.as_ref().is_none_or(|r| r.deleted)
                && let Some(col) = missing_required(schema, &clean)
            {
                return Err(StoreError::invalid(
                    codes::INVALID_VALUE,
                    format!("column '{col}': the column is required"),
                ));
            }
            let size = merged_size(current.as_ref(), &clean);
            if size > MAX_ROW_BYTES {
                return Err(StoreError::too_large(codes::PAYLOAD_TOO_LARGE,
                    format!(
                        "the row would be {size} bytes with this change; at most {MAX_ROW_BYTES} are allowed"
                    ),
                ));
            }
            let live_version = current
                .as_ref()
                .filter(|r| !r.deleted)
                .map(|r| r.version)
                .unwrap_or(0);
            let op = if live_version == 0 { Op::Insert } else { Op::Update };
            if let Some(why) = rights.and_then(|t| t.writes.refusal(t, op, clean.keys())) {
                return Err(StoreError::forbidden(why));
            }
            if let Some(base) = base_version.filter(|b| *b != live_version) {
                return Err(StoreError::conflict(codes::CONFLICT,
                    format!("the record is at version {live_version}, not {base}"),
                ));
            }
            let (version, _) =
                self.apply_write(c, schema, id, Some((&clean, false)), Some(user_id), None)?;
            let row = Self::read_row(c, schema, id)?
                .map(|r| r.fields)
                .unwrap_or_default();
            Ok(RecordWritten {
                row,
                version,
                created: live_version == 0,
            })
        })
    }

    /// Deletes a row as a back-office user. False when there was none; a
    /// conflict when `base_version` is given and the row is at another.
    pub fn delete_record(
        &self,
        table: &str,
        id: &str,
        base_version: Option<i64>,
        user_id: &str,
    ) -> StoreResult<bool> {
        self.delete_record_within(None, table, id, base_version, user_id)
    }

    /// [`Db::delete_record`] within the write rights the writer's profile
    /// declares for the table (see [`Db::write_record_within`]).
    pub fn delete_record_within(
        &self,
        rights: Option<&SyncTable>,
        table: &str,
        id: &str,
        base_version: Option<i64>,
        user_id: &str,
    ) -> StoreResult<bool> {
        let schema = &self.schema(table)?;
        self.write(|c| {
            let current = match Self::read_row(c, schema, id)? {
                Some(r) if !r.deleted => r,
                _ => return Ok(false),
            };
            if let Some(why) =
                rights.and_then(|t| t.writes.refusal(t, Op::Delete, std::iter::empty()))
            {
                return Err(StoreError::forbidden(why));
            }
            if let Some(base) = base_version.filter(|b| *b != current.version) {
                return Err(StoreError::conflict(
                    codes::CONFLICT,
                    format!("the record is at version {}, not {base}", current.version),
                ));
            }
            self.apply_write(c, schema, id, None, Some(user_id), None)?;
            Ok(true)
        })
    }

    /// Writes many rows in one transaction (seeding).
    pub fn bulk_insert(
        &self,
        table: &str,
        rows: &[(String, BTreeMap<String, Value>)],
    ) -> StoreResult<()> {
        let schema = &self.schema(table)?;
        self.write(|c| {
            for (id, data) in rows {
                self.apply_write(c, schema, id, Some((data, true)), None, None)?;
            }
            Ok(())
        })
    }

    /// Number of entries in the change log (for tests and the console).
    pub fn change_count(&self, table: &str, id: &str) -> StoreResult<i64> {
        self.read(|c| {
            c.query_one(
                "SELECT COUNT(*) FROM _fs_change_log WHERE tbl = ? AND row_id = ?",
                &[text(table), text(id)],
            )?
            .i64(0)
        })
    }
}
