//! One small SQL interface over the server's two back ends, so the storage
//! logic (`crate::db`) is written once: a [`Conn`] runs statements written
//! with `?` (or `?N`) placeholders and [`Value`] parameters and answers rows
//! of [`Value`]s. [`SqliteConn`] runs them on rusqlite; [`PgConn`] on the
//! PostgreSQL client, rewriting the placeholders to `$N` and converting each
//! parameter to the type PostgreSQL inferred for it.
//!
//! Statements are kept to the SQL both engines accept (`ON CONFLICT`,
//! `RETURNING`, `TRUE`/`FALSE`, `CAST(? AS TEXT)`); where they differ the
//! caller asks [`Conn::dialect`].

use std::borrow::Cow;
use std::collections::HashMap;

use fieldsync_protocol::Value;
use fieldsync_protocol::profile::ColumnKind;
use postgres::types::{IsNull, ToSql, Type, to_sql_checked};

use crate::store_error::{StoreError, StoreResult};

/// Which SQL engine a connection talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// SQL type of a model column. PostgreSQL text columns use the "C"
    /// collation: text compares byte for byte, as on SQLite and on devices.
    pub fn column_type(self, kind: ColumnKind) -> &'static str {
        match (self, kind) {
            (Dialect::Sqlite, k) => k.sql_type(),
            (
                Dialect::Postgres,
                ColumnKind::Text
                | ColumnKind::Date
                | ColumnKind::DateTime
                | ColumnKind::Json
                | ColumnKind::Choice,
            ) => "TEXT COLLATE \"C\"",
            (Dialect::Postgres, ColumnKind::Integer | ColumnKind::Boolean) => "BIGINT",
            (Dialect::Postgres, ColumnKind::Real) => "DOUBLE PRECISION",
        }
    }
    /// The SQL of a condition that always holds.
    pub fn true_sql(self) -> &'static str {
        match self {
            Dialect::Sqlite => "1",
            Dialect::Postgres => "TRUE",
        }
    }
    /// The SQL of a condition that never holds.
    pub fn false_sql(self) -> &'static str {
        match self {
            Dialect::Sqlite => "0",
            Dialect::Postgres => "FALSE",
        }
    }
    /// Position of `needle` (a parameter) in `haystack`, 1-based, 0 when absent.
    pub fn instr(self, haystack: &str) -> String {
        match self {
            Dialect::Sqlite => format!("instr({haystack}, ?)"),
            Dialect::Postgres => format!("strpos({haystack}, CAST(? AS TEXT))"),
        }
    }
}

/// One result row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row(pub Vec<Value>);

fn bad_column(i: usize, want: &str, got: &Value) -> StoreError {
    StoreError::internal(format!("database: column {i} holds {got:?}, not {want}"))
}

impl Row {
    /// The raw value of column `i`.
    pub fn get(&self, i: usize) -> &Value {
        self.0.get(i).unwrap_or(&Value::Null)
    }
    /// Column `i` as a value of a model column of `kind`.
    pub fn value(&self, i: usize, kind: ColumnKind) -> Value {
        model_value(self.get(i).clone(), kind)
    }
    pub fn opt_i64(&self, i: usize) -> StoreResult<Option<i64>> {
        match self.get(i) {
            Value::Null => Ok(None),
            Value::Integer(n) => Ok(Some(*n)),
            Value::Boolean(b) => Ok(Some(i64::from(*b))),
            other => Err(bad_column(i, "an integer", other)),
        }
    }
    pub fn i64(&self, i: usize) -> StoreResult<i64> {
        self.opt_i64(i)?
            .ok_or_else(|| bad_column(i, "an integer", &Value::Null))
    }
    pub fn bool(&self, i: usize) -> StoreResult<bool> {
        Ok(self.i64(i)? != 0)
    }
    pub fn opt_text(&self, i: usize) -> StoreResult<Option<String>> {
        match self.get(i) {
            Value::Null => Ok(None),
            Value::Text(s) => Ok(Some(s.clone())),
            other => Err(bad_column(i, "text", other)),
        }
    }
    pub fn text(&self, i: usize) -> StoreResult<String> {
        self.opt_text(i)?
            .ok_or_else(|| bad_column(i, "text", &Value::Null))
    }
}

/// A stored value as a value of a model column of `kind` (SQLite keeps
/// booleans as integers and may keep a whole real as an integer).
pub fn model_value(v: Value, kind: ColumnKind) -> Value {
    match (v, kind) {
        (Value::Integer(n), ColumnKind::Boolean) => Value::Boolean(n != 0),
        (Value::Integer(n), ColumnKind::Real) => Value::Real(n as f64),
        (Value::Boolean(b), ColumnKind::Integer) => Value::Integer(i64::from(b)),
        (v, _) => v,
    }
}

/// A value borrowed from the row being read: text is not copied unless it
/// is kept.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell<'a> {
    Null,
    Int(i64),
    Real(f64),
    Bool(bool),
    Text(Cow<'a, str>),
}

impl Cell<'_> {
    pub fn into_value(self) -> Value {
        match self {
            Cell::Null => Value::Null,
            Cell::Int(n) => Value::Integer(n),
            Cell::Real(f) => Value::Real(f),
            Cell::Bool(b) => Value::Boolean(b),
            Cell::Text(t) => Value::Text(t.into_owned()),
        }
    }
}

/// The row being read by [`Conn::query_each`].
pub trait Cells {
    /// Column `i`, borrowed.
    fn cell(&self, i: usize) -> StoreResult<Cell<'_>>;
    /// The number of columns.
    fn width(&self) -> usize;
    /// Column `i` as an integer.
    fn int(&self, i: usize) -> StoreResult<i64> {
        match self.cell(i)? {
            Cell::Int(n) => Ok(n),
            Cell::Bool(b) => Ok(i64::from(b)),
            other => Err(bad_column(i, "an integer", &other.into_value())),
        }
    }
    /// Column `i` as text, which must not be NULL.
    fn text(&self, i: usize) -> StoreResult<String> {
        match self.cell(i)? {
            Cell::Text(t) => Ok(t.into_owned()),
            other => Err(bad_column(i, "text", &other.into_value())),
        }
    }
    /// Every column, owned.
    fn row(&self) -> StoreResult<Row> {
        (0..self.width())
            .map(|i| self.cell(i).map(Cell::into_value))
            .collect::<StoreResult<Vec<_>>>()
            .map(Row)
    }
}

impl Cells for rusqlite::Row<'_> {
    fn cell(&self, i: usize) -> StoreResult<Cell<'_>> {
        Ok(match self.get_ref(i)? {
            rusqlite::types::ValueRef::Null => Cell::Null,
            rusqlite::types::ValueRef::Integer(v) => Cell::Int(v),
            rusqlite::types::ValueRef::Real(v) => Cell::Real(v),
            rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => {
                Cell::Text(fieldsync_protocol::value::utf8_text(t))
            }
        })
    }
    fn width(&self) -> usize {
        self.as_ref().column_count()
    }
}

impl Cells for postgres::Row {
    fn cell(&self, i: usize) -> StoreResult<Cell<'_>> {
        let col = self
            .columns()
            .get(i)
            .ok_or_else(|| StoreError::internal(format!("database: no column {i}")))?;
        fn opt<'a, T: postgres::types::FromSql<'a>>(
            r: &'a postgres::Row,
            i: usize,
        ) -> StoreResult<Option<T>> {
            r.try_get::<_, Option<T>>(i)
                .map_err(|e| StoreError::internal(format!("database: column {i}: {e}")))
        }
        let cell = match *col.type_() {
            Type::INT8 => opt::<i64>(self, i)?.map(Cell::Int),
            Type::INT4 => opt::<i32>(self, i)?.map(|n| Cell::Int(n.into())),
            Type::INT2 => opt::<i16>(self, i)?.map(|n| Cell::Int(n.into())),
            Type::FLOAT8 => opt::<f64>(self, i)?.map(Cell::Real),
            Type::FLOAT4 => opt::<f32>(self, i)?.map(|n| Cell::Real(n.into())),
            Type::BOOL => opt::<bool>(self, i)?.map(Cell::Bool),
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => {
                opt::<&str>(self, i)?.map(|t| Cell::Text(Cow::Borrowed(t)))
            }
            ref other => {
                return Err(StoreError::internal(format!(
                    "database: column {i} has type {other}, which the server does not read"
                )));
            }
        };
        Ok(cell.unwrap_or(Cell::Null))
    }
    fn width(&self) -> usize {
        self.len()
    }
}

/// A connection inside a transaction the caller opened.
pub trait Conn {
    fn dialect(&self) -> Dialect;
    /// Runs a statement; the number of rows it changed.
    fn execute(&mut self, sql: &str, params: &[Value]) -> StoreResult<u64>;
    /// Runs a query; every row it answers.
    fn query(&mut self, sql: &str, params: &[Value]) -> StoreResult<Vec<Row>>;
    /// Runs a query and hands each row to `f`, borrowed, as it is read,
    /// until `f` answers `false`: a long walk holds one row at a time.
    fn query_each(
        &mut self,
        sql: &str,
        params: &[Value],
        f: &mut dyn FnMut(&dyn Cells) -> StoreResult<bool>,
    ) -> StoreResult<()>;
    /// Runs statements without parameters.
    fn batch(&mut self, sql: &str) -> StoreResult<()>;

    /// The first row, if any.
    fn query_opt(&mut self, sql: &str, params: &[Value]) -> StoreResult<Option<Row>> {
        Ok(self.query(sql, params)?.into_iter().next())
    }
    /// The first row, which must exist.
    fn query_one(&mut self, sql: &str, params: &[Value]) -> StoreResult<Row> {
        self.query_opt(sql, params)?
            .ok_or_else(|| StoreError::internal("database: a query answered no row"))
    }
    /// Whether the query answers any row.
    fn exists(&mut self, sql: &str, params: &[Value]) -> StoreResult<bool> {
        Ok(self.query_opt(sql, params)?.is_some())
    }
}

/// Shorthand for a text parameter.
/// An integer parameter.
pub fn int(n: i64) -> Value {
    Value::Integer(n)
}

pub fn text(s: impl Into<String>) -> Value {
    Value::Text(s.into())
}

/// Shorthand for an optional text parameter.
pub fn opt_text(s: Option<impl Into<String>>) -> Value {
    s.map_or(Value::Null, |s| Value::Text(s.into()))
}

// ---- SQLite ------------------------------------------------------------------

/// A rusqlite connection (or transaction, through deref).
pub struct SqliteConn<'a>(pub &'a rusqlite::Connection);

impl Conn for SqliteConn<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }
    fn execute(&mut self, sql: &str, params: &[Value]) -> StoreResult<u64> {
        let mut stmt = self.0.prepare_cached(sql)?;
        Ok(stmt.execute(rusqlite::params_from_iter(params.iter()))? as u64)
    }
    fn query(&mut self, sql: &str, params: &[Value]) -> StoreResult<Vec<Row>> {
        let mut out = Vec::new();
        self.query_each(sql, params, &mut |r| {
            out.push(r.row()?);
            Ok(true)
        })?;
        Ok(out)
    }
    fn query_each(
        &mut self,
        sql: &str,
        params: &[Value],
        f: &mut dyn FnMut(&dyn Cells) -> StoreResult<bool>,
    ) -> StoreResult<()> {
        let mut stmt = self.0.prepare_cached(sql)?;
        let mut rows = stmt.query(rusqlite::params_from_iter(params.iter()))?;
        while let Some(r) = rows.next()? {
            if !f(r)? {
                break;
            }
        }
        Ok(())
    }
    fn batch(&mut self, sql: &str) -> StoreResult<()> {
        Ok(self.0.execute_batch(sql)?)
    }
}

// ---- PostgreSQL --------------------------------------------------------------

/// Rewrites `?` and `?N` placeholders to PostgreSQL's `$N` (outside quotes).
pub fn pg_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut next = 0usize;
    let mut chars = sql.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => {
                quote = None;
                out.push(c);
            }
            (Some(_), c) => out.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                out.push(c);
            }
            (None, '?') => {
                let mut digits = String::new();
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    digits.push(*d);
                    chars.next();
                }
                if digits.is_empty() {
                    next += 1;
                    out.push_str(&format!("${next}"));
                } else {
                    out.push('$');
                    out.push_str(&digits);
                }
            }
            (None, c) => out.push(c),
        }
    }
    out
}

/// A [`Value`] bound as a PostgreSQL parameter: converted to whatever type
/// the server inferred for the placeholder.
#[derive(Debug)]
pub struct PgValue<'a>(pub &'a Value);

fn mismatch(v: &Value, ty: &Type) -> Box<dyn std::error::Error + Sync + Send> {
    format!("cannot bind {v:?} as {ty}").into()
}

impl ToSql for PgValue<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut postgres::types::private::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        let v = self.0;
        let as_int = |n: i64, out: &mut postgres::types::private::BytesMut| match *ty {
            Type::INT8 => n.to_sql(ty, out),
            Type::INT4 => i32::try_from(n)
                .map_err(|_| mismatch(v, ty))?
                .to_sql(ty, out),
            Type::INT2 => i16::try_from(n)
                .map_err(|_| mismatch(v, ty))?
                .to_sql(ty, out),
            Type::FLOAT8 => (n as f64).to_sql(ty, out),
            Type::FLOAT4 => (n as f32).to_sql(ty, out),
            Type::BOOL => (n != 0).to_sql(ty, out),
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
                n.to_string().to_sql(&Type::TEXT, out)
            }
            _ => Err(mismatch(v, ty)),
        };
        match v {
            Value::Null => Ok(IsNull::Yes),
            Value::Integer(n) => as_int(*n, out),
            Value::Boolean(b) => match *ty {
                Type::BOOL => b.to_sql(ty, out),
                _ => as_int(i64::from(*b), out),
            },
            Value::Real(f) => match *ty {
                Type::FLOAT8 => f.to_sql(ty, out),
                Type::FLOAT4 => (*f as f32).to_sql(ty, out),
                Type::INT8 | Type::INT4 | Type::INT2 if f.fract() == 0.0 => as_int(*f as i64, out),
                Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::UNKNOWN => {
                    f.to_string().to_sql(&Type::TEXT, out)
                }
                _ => Err(mismatch(v, ty)),
            },
            Value::Text(s) => match *ty {
                Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
                    s.as_str().to_sql(&Type::TEXT, out)
                }
                _ => Err(mismatch(v, ty)),
            },
        }
    }
    fn accepts(_: &Type) -> bool {
        true
    }
    to_sql_checked!();
}

fn pg_row(r: &postgres::Row) -> StoreResult<Row> {
    r.row()
}

/// SQLSTATEs after which a write transaction is simply run again: a
/// serialization failure or deadlock, and a unique violation (two
/// transactions inserted the same key at once; run again, the loser sees
/// the winner's row, as a push replay sees its receipt).
pub fn pg_retryable(e: &postgres::Error) -> bool {
    use postgres::error::SqlState;
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE
            || *c == SqlState::T_R_DEADLOCK_DETECTED
            || *c == SqlState::UNIQUE_VIOLATION
    )
}

/// Advisory lock held while migrating (instances starting together).
pub(crate) const PG_MIGRATION_LOCK: i64 = 0x6669_656c_6473_0001;

/// Most prepared statements a PostgreSQL connection keeps; past it the
/// cache starts again (statement texts are few: one per query shape).
const PG_STATEMENTS: usize = 256;

/// A PostgreSQL connection and the statements prepared on it: each query
/// text is prepared once per connection, so running it again is one round
/// trip (bind and execute) instead of two (parse and describe first).
pub struct PgClient {
    client: postgres::Client,
    statements: HashMap<String, postgres::Statement>,
}

impl PgClient {
    pub fn new(client: postgres::Client) -> Self {
        Self {
            client,
            statements: HashMap::new(),
        }
    }

    /// The prepared statement of `sql` (with `$N` placeholders).
    fn statement(&mut self, sql: &str) -> Result<postgres::Statement, postgres::Error> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let statement = self.client.prepare(sql)?;
        if self.statements.len() >= PG_STATEMENTS {
            self.statements.clear();
        }
        self.statements.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    /// Forgets `sql`'s statement, after it failed: a schema change may
    /// have made it stale, and preparing it again costs one round trip.
    fn forget(&mut self, sql: &str) {
        self.statements.remove(sql);
    }
}

impl std::ops::Deref for PgClient {
    type Target = postgres::Client;
    fn deref(&self) -> &postgres::Client {
        &self.client
    }
}

impl std::ops::DerefMut for PgClient {
    fn deref_mut(&mut self) -> &mut postgres::Client {
        &mut self.client
    }
}

/// A PostgreSQL client inside a transaction the caller opened.
pub struct PgConn<'a> {
    client: &'a mut PgClient,
    /// A statement failed with a serialization failure or deadlock: the
    /// whole transaction may be run again.
    pub retryable: bool,
}

impl<'a> PgConn<'a> {
    pub fn new(client: &'a mut PgClient) -> Self {
        Self {
            client,
            retryable: false,
        }
    }
    fn fail(&mut self, sql: &str, e: postgres::Error) -> StoreError {
        self.client.forget(sql);
        if pg_retryable(&e) {
            self.retryable = true;
        }
        e.into()
    }
}

impl Conn for PgConn<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }
    fn execute(&mut self, sql: &str, params: &[Value]) -> StoreResult<u64> {
        let sql = pg_placeholders(sql);
        let bound: Vec<PgValue<'_>> = params.iter().map(PgValue).collect();
        let refs: Vec<&(dyn ToSql + Sync)> = bound.iter().map(|p| p as _).collect();
        let run = self
            .client
            .statement(&sql)
            .and_then(|s| self.client.client.execute(&s, &refs));
        match run {
            Ok(n) => Ok(n),
            Err(e) => Err(self.fail(&sql, e)),
        }
    }
    fn query(&mut self, sql: &str, params: &[Value]) -> StoreResult<Vec<Row>> {
        let sql = pg_placeholders(sql);
        let bound: Vec<PgValue<'_>> = params.iter().map(PgValue).collect();
        let refs: Vec<&(dyn ToSql + Sync)> = bound.iter().map(|p| p as _).collect();
        let run = self
            .client
            .statement(&sql)
            .and_then(|s| self.client.client.query(&s, &refs));
        let rows = match run {
            Ok(rows) => rows,
            Err(e) => return Err(self.fail(&sql, e)),
        };
        rows.iter().map(pg_row).collect()
    }
    fn query_each(
        &mut self,
        sql: &str,
        params: &[Value],
        f: &mut dyn FnMut(&dyn Cells) -> StoreResult<bool>,
    ) -> StoreResult<()> {
        use postgres::fallible_iterator::FallibleIterator;
        let sql = pg_placeholders(sql);
        let bound: Vec<PgValue<'_>> = params.iter().map(PgValue).collect();
        let refs: Vec<&(dyn ToSql + Sync)> = bound.iter().map(|p| p as _).collect();
        let statement = match self.client.statement(&sql) {
            Ok(s) => s,
            Err(e) => return Err(self.fail(&sql, e)),
        };
        // Rows stream from the connection; the ones after a stop are
        // read and dropped by the client.
        let result = (|| -> Result<StoreResult<()>, postgres::Error> {
            let mut rows = self
                .client
                .client
                .query_raw(&statement, refs.iter().copied())?;
            while let Some(r) = rows.next()? {
                match f(&r) {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => return Ok(Err(e)),
                }
            }
            Ok(Ok(()))
        })();
        match result {
            Ok(done) => done,
            Err(e) => Err(self.fail(&sql, e)),
        }
    }
    fn batch(&mut self, sql: &str) -> StoreResult<()> {
        match self.client.batch_execute(sql) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.fail(sql, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_outside_quotes() {
        assert_eq!(
            pg_placeholders("SELECT ? , '?', \"a?\" FROM t WHERE a = ? AND b = ?2"),
            "SELECT $1 , '?', \"a?\" FROM t WHERE a = $2 AND b = $2"
        );
        assert_eq!(pg_placeholders("a = ?1 OR b = ?12"), "a = $1 OR b = $12");
    }

    #[test]
    fn rows_convert_to_model_kinds() {
        let r = Row(vec![
            Value::Integer(1),
            Value::Integer(3),
            Value::Boolean(true),
        ]);
        assert_eq!(r.value(0, ColumnKind::Boolean), Value::Boolean(true));
        assert_eq!(r.value(1, ColumnKind::Real), Value::Real(3.0));
        assert_eq!(r.value(2, ColumnKind::Integer), Value::Integer(1));
        assert!(r.text(0).is_err());
        assert_eq!(r.opt_i64(9).ok(), Some(None));
    }

    /// A query text is prepared once per connection and then only bound and
    /// executed; a failed statement is prepared again next time (on the
    /// test command's PostgreSQL cluster).
    #[test]
    fn statements_are_prepared_once_per_connection_on_postgres() {
        let Some(url) = crate::db::test_support::postgres_base() else {
            return;
        };
        std::thread::spawn(move || {
            let client = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
            let mut client = PgClient::new(client);
            let mut conn = PgConn::new(&mut client);
            let sql = "SELECT ? + 1, ?";
            for n in 0..3i64 {
                let rows = conn
                    .query(sql, &[Value::Integer(n), Value::Text("x".into())])
                    .expect("query");
                assert_eq!(rows[0].get(0), &Value::Integer(n + 1));
            }
            assert_eq!(conn.client.statements.len(), 1);
            // A failing statement is not kept.
            assert!(conn.query("SELECT 1 / ?", &[Value::Integer(0)]).is_err());
            assert_eq!(conn.client.statements.len(), 1);
            // Other texts add their own, up to the bound.
            for n in 0..(PG_STATEMENTS + 3) {
                conn.execute(&format!("SELECT {n}"), &[]).expect("execute");
            }
            assert!(conn.client.statements.len() <= PG_STATEMENTS);
        })
        .join()
        .expect("test thread");
    }
}
