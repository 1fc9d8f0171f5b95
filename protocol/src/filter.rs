//! The custom filter language of the offline profile: one definition, two
//! evaluations.
//!
//! A [`Filter`] is a JSON tree (`{"op": "eq", "column": "status", "value":
//! "active"}`, `{"op": "and", "filters": [...]}`, `{"op": "next_days",
//! "column": "start_time", "days": 7}`). It is checked and its values put in
//! their columns' canonical form once ([`Filter::validate`]), then *lowered*
//! for a [`FilterContext`] (current user, team, clock, time zone offset) into
//! a small condition tree, [`Cond`], in which "current user" became a value
//! and every relative date became a pair of bounds. The server compiles a
//! `Cond` to parameterised SQL (`fieldsync_server::rules`), the device
//! evaluates the same `Cond` in Rust ([`Cond::eval`]), so both select exactly
//! the same rows.
//!
//! Semantics both sides share:
//! - a comparison, `in`, `not_in` and the text operators never match an empty
//!   (null) value; only `is_null` does (`not` of a comparison therefore
//!   matches null values);
//! - text compares byte for byte (case-sensitive, as SQLite's BINARY
//!   collation); dates and date-times compare as their text
//!   (`YYYY-MM-DD`, `YYYY-MM-DDTHH:MM:SSZ`);
//! - "today" is the calendar date of the injected clock in the user's time
//!   zone (an IANA zone, daylight saving included: the user's, else the
//!   profile's `time_zone`, else the profile's fixed `utc_offset_minutes`,
//!   default 0, so UTC): `today` is
//!   `[today, today+1)`, `yesterday` and `tomorrow` the day before and after,
//!   `last_days N` is `[today-N, today+1)` (the N days before today and
//!   today), `next_days N` is `[today, today+N+1)` (today and the N days after),
//!   `on_or_after_today` is `[today, ∞)`, `this_month`, `last_month`,
//!   `next_month` the calendar months. On a date-time column a day starts at
//!   local midnight (or the first local time after it, when a daylight
//!   saving change skips midnight), written as the UTC instant, so the day
//!   of a daylight saving change is 23 or 25 hours long.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::kind::ColumnKind;
use crate::time::{Zone, civil_from_days, days_from_civil, format_date, format_datetime};
use crate::value::Value;

/// Deepest nesting of `and` / `or` / `not` accepted.
pub const MAX_FILTER_DEPTH: usize = 12;
/// Most nodes one filter may have.
pub const MAX_FILTER_NODES: usize = 500;
/// Most values of one `in` / `not_in` list.
pub const MAX_IN_VALUES: usize = 1000;
/// Largest `days` of `last_days` / `next_days`.
pub const MAX_RELATIVE_DAYS: u32 = 3660;

/// A custom row filter as an administrator writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Filter {
    /// Every sub-filter matches.
    And { filters: Vec<Filter> },
    /// At least one sub-filter matches.
    Or { filters: Vec<Filter> },
    /// The sub-filter does not match.
    Not { filter: Box<Filter> },
    /// `column = value`.
    Eq { column: String, value: Value },
    /// `column <> value` (null values never match).
    Ne { column: String, value: Value },
    /// `column > value`.
    Gt { column: String, value: Value },
    /// `column >= value`.
    Ge { column: String, value: Value },
    /// `column < value`.
    Lt { column: String, value: Value },
    /// `column <= value`.
    Le { column: String, value: Value },
    /// The value is one of `values`.
    In { column: String, values: Vec<Value> },
    /// The value is set and none of `values`.
    NotIn { column: String, values: Vec<Value> },
    /// The value is empty.
    IsNull { column: String },
    /// The value is set.
    NotNull { column: String },
    /// Text starting with `value` (case-sensitive).
    BeginsWith { column: String, value: String },
    /// Text ending with `value` (case-sensitive).
    EndsWith { column: String, value: String },
    /// Text containing `value` (case-sensitive).
    Contains { column: String, value: String },
    /// The value is the id of the user the profile was issued to.
    EqCurrentUser { column: String },
    /// The value is the team id of the user the profile was issued to (a user
    /// without a team matches nothing).
    EqCurrentTeam { column: String },
    /// A date or date-time today.
    Today { column: String },
    /// A date or date-time yesterday.
    Yesterday { column: String },
    /// A date or date-time tomorrow.
    Tomorrow { column: String },
    /// A date or date-time in the `days` days before today, or today.
    LastDays { column: String, days: u32 },
    /// A date or date-time today or in the `days` days after today.
    NextDays { column: String, days: u32 },
    /// A date or date-time today or later.
    OnOrAfterToday { column: String },
    /// A date or date-time in the current calendar month.
    ThisMonth { column: String },
    /// A date or date-time in the previous calendar month.
    LastMonth { column: String },
    /// A date or date-time in the next calendar month.
    NextMonth { column: String },
    /// The row of another table of the profile whose primary key `column`
    /// holds is live and matches `filter` (a condition on that table's
    /// synced columns, which may itself hold `related`, up to
    /// [`MAX_RELATED_DEPTH`] tables away). No such row: no match. Only in an
    /// offline profile's filters ([`Filter::validate_in`]).
    Related {
        column: String,
        table: String,
        filter: Box<Filter>,
    },
}

/// How many relationships a `related` condition may follow from the row's
/// table (bookings → work order → service account → ...).
pub const MAX_RELATED_DEPTH: usize = 3;

/// One relationship a `related` condition follows: (table, its column,
/// the related table whose primary key the column holds).
pub type Hop = (String, String, String);

/// The synced tables of a profile by name, for conditions on related tables.
pub type Tables<'a, T> = &'a dyn Fn(&str) -> Option<&'a T>;

/// What checking and lowering a filter needs of the table it reads: its
/// name, primary key and the kinds of the columns it holds. The offline
/// profile's synced table implements it (`profile::SyncTable`); so may any
/// other table shape a filter runs against.
pub trait FilterTable {
    /// The table's name, for error messages and related conditions.
    fn table_name(&self) -> &str;
    /// The column holding the table's primary key.
    fn primary_key(&self) -> &str;
    /// The kind of a column the table holds; `None` for any other name.
    fn column_kind(&self, column: &str) -> Option<ColumnKind>;
}

/// What "current user", "my team" and "today" mean for one evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterContext {
    /// The user the profile was issued to.
    pub user_id: String,
    /// That user's team, if any.
    pub team_id: Option<String>,
    /// The clock's reading, milliseconds since the epoch (UTC).
    pub now_ms: i64,
    /// The time zone whose days relative dates count (the user's, else the
    /// profile's, else UTC).
    pub zone: Zone,
}

impl FilterContext {
    /// Local day number (days since 1970-01-01) of "today".
    pub fn today(&self) -> i64 {
        self.zone.local_day(self.now_ms)
    }
}

/// A comparison operator of a lowered condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

impl CmpOp {
    /// The SQL operator.
    pub fn sql(self) -> &'static str {
        match self {
            CmpOp::Eq => "=",
            CmpOp::Ne => "<>",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
        }
    }
    fn holds(self, o: Ordering) -> bool {
        match self {
            CmpOp::Eq => o == Ordering::Equal,
            CmpOp::Ne => o != Ordering::Equal,
            CmpOp::Gt => o == Ordering::Greater,
            CmpOp::Ge => o != Ordering::Less,
            CmpOp::Lt => o == Ordering::Less,
            CmpOp::Le => o != Ordering::Greater,
        }
    }
}

/// A text operator of a lowered condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextOp {
    BeginsWith,
    EndsWith,
    Contains,
}

/// A filter lowered for one [`FilterContext`]: no relative dates and no
/// "current user" left, every value non-null and in its column's canonical
/// form. The server compiles it to SQL; the device evaluates it.
#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    /// Matches every row.
    True,
    /// Matches no row.
    False,
    And(Vec<Cond>),
    Or(Vec<Cond>),
    Not(Box<Cond>),
    /// `column op value`; false on null.
    Cmp {
        column: String,
        op: CmpOp,
        value: Value,
    },
    /// `column [NOT] IN values`; false on null.
    In {
        column: String,
        values: Vec<Value>,
        negated: bool,
    },
    /// `column IS [NOT] NULL`.
    IsNull {
        column: String,
        negated: bool,
    },
    /// Text operator; false on null.
    Text {
        column: String,
        op: TextOp,
        needle: String,
    },
    /// The live row of `table` whose `key` (its primary key) equals this
    /// row's `column` matches `cond`; false on null and when there is none.
    Related {
        column: String,
        table: String,
        key: String,
        cond: Box<Cond>,
    },
}

/// Finds the live row of `table` whose column `key` holds `value`, with its
/// synced columns (the device's store, a test's rows).
pub type RowLookup<'a> = &'a dyn Fn(&str, &str, &Value) -> Option<BTreeMap<String, Value>>;

/// Orders two non-null values as SQLite does: numbers (booleans as 0/1)
/// before text, numbers numerically, text byte by byte.
fn sql_order(a: &Value, b: &Value) -> Option<Ordering> {
    fn num(v: &Value) -> Option<f64> {
        match v {
            Value::Integer(i) => Some(*i as f64),
            Value::Real(f) => Some(*f),
            Value::Boolean(b) => Some(if *b { 1.0 } else { 0.0 }),
            _ => None,
        }
    }
    match (a, b) {
        (Value::Null, _) | (_, Value::Null) => None,
        (Value::Text(x), Value::Text(y)) => Some(x.as_bytes().cmp(y.as_bytes())),
        (Value::Text(_), _) => Some(Ordering::Greater),
        (_, Value::Text(_)) => Some(Ordering::Less),
        (Value::Integer(x), Value::Integer(y)) => Some(x.cmp(y)),
        _ => num(a)?.partial_cmp(&num(b)?),
    }
}

impl Cond {
    /// Evaluates the condition against a row (device side). A condition on
    /// a related table finds no row here; see [`Cond::eval_with`].
    pub fn eval(&self, row: &dyn Fn(&str) -> Option<Value>) -> bool {
        self.eval_with(row, &|_, _, _| None)
    }

    /// True when the condition reads another table (`related`).
    pub fn reads_related(&self) -> bool {
        match self {
            Cond::And(cs) | Cond::Or(cs) => cs.iter().any(Cond::reads_related),
            Cond::Not(c) => c.reads_related(),
            Cond::Related { .. } => true,
            _ => false,
        }
    }

    /// Evaluates the condition against a row, finding related rows with
    /// `lookup`.
    pub fn eval_with(&self, row: &dyn Fn(&str) -> Option<Value>, lookup: RowLookup<'_>) -> bool {
        let get = |c: &str| row(c).filter(|v| *v != Value::Null);
        match self {
            Cond::True => true,
            Cond::False => false,
            Cond::And(cs) => cs.iter().all(|c| c.eval_with(row, lookup)),
            Cond::Or(cs) => cs.iter().any(|c| c.eval_with(row, lookup)),
            Cond::Not(c) => !c.eval_with(row, lookup),
            Cond::Related {
                column,
                table,
                key,
                cond,
            } => get(column)
                .and_then(|v| lookup(table, key, &v))
                .is_some_and(|r| cond.eval_with(&|c: &str| r.get(c).cloned(), lookup)),
            Cond::Cmp { column, op, value } => get(column)
                .and_then(|v| sql_order(&v, value))
                .is_some_and(|o| op.holds(o)),
            Cond::In {
                column,
                values,
                negated,
            } => match get(column) {
                None => false,
                Some(v) => {
                    let found = values
                        .iter()
                        .any(|x| sql_order(&v, x) == Some(Ordering::Equal));
                    found != *negated
                }
            },
            Cond::IsNull { column, negated } => get(column).is_none() != *negated,
            Cond::Text { column, op, needle } => match get(column) {
                Some(Value::Text(s)) => match op {
                    TextOp::BeginsWith => s.starts_with(needle.as_str()),
                    TextOp::EndsWith => s.ends_with(needle.as_str()),
                    TextOp::Contains => s.contains(needle.as_str()),
                },
                _ => false,
            },
        }
    }
}

fn kind_of<T: FilterTable + ?Sized>(table: &T, column: &str) -> Result<ColumnKind, Error> {
    table
        .column_kind(column)
        .ok_or_else(|| Error::UnknownColumn {
            table: table.table_name().to_owned(),
            column: column.to_owned(),
        })
}

fn bad<T: FilterTable + ?Sized>(table: &T, msg: String) -> Error {
    Error::InvalidProfile(format!("table '{}': filter: {msg}", table.table_name()))
}

fn canonical<T: FilterTable + ?Sized>(table: &T, column: &str, v: &Value) -> Result<Value, Error> {
    let kind = kind_of(table, column)?;
    if *v == Value::Null {
        return Err(bad(
            table,
            format!("a value for '{column}' is null; use is_null / not_null for empty values"),
        ));
    }
    v.clone()
        .coerce(kind)
        .map_err(|e| bad(table, format!("value for '{column}': {e}")))
}

impl Filter {
    /// Reads a filter from its JSON form; text that is not a filter is
    /// [`Error::InvalidInput`] (checking it against a table is
    /// [`Filter::validate`]'s).
    pub fn from_json(text: &str) -> Result<Filter, Error> {
        serde_json::from_str(text)
            .map_err(|e| Error::InvalidInput(format!("the condition is not a filter: {e}")))
    }

    /// Checks the filter against a table's synced columns (it must only read
    /// columns the device holds, so the device can evaluate it) and returns
    /// it with every value in its column's canonical form.
    pub fn validate<T: FilterTable>(&self, table: &T) -> Result<Filter, Error> {
        let mut nodes = 0;
        self.check(table, 1, &mut nodes, None, 0)
    }

    /// [`Filter::validate`] for a filter of an offline profile, whose
    /// `related` conditions may read the profile's other tables: each must
    /// be in `tables`, be reached through a text column of this table, and
    /// be read only on its synced columns.
    pub fn validate_in<T: FilterTable>(
        &self,
        table: &T,
        tables: Tables<'_, T>,
    ) -> Result<Filter, Error> {
        let mut nodes = 0;
        self.check(table, 1, &mut nodes, Some(tables), 0)
    }

    fn check<T: FilterTable>(
        &self,
        table: &T,
        depth: usize,
        nodes: &mut usize,
        tables: Option<Tables<'_, T>>,
        hops: usize,
    ) -> Result<Filter, Error> {
        *nodes += 1;
        if *nodes > MAX_FILTER_NODES {
            return Err(bad(
                table,
                format!("more than {MAX_FILTER_NODES} conditions"),
            ));
        }
        if depth > MAX_FILTER_DEPTH {
            return Err(bad(
                table,
                format!("nested deeper than {MAX_FILTER_DEPTH} levels"),
            ));
        }
        let text_col = |column: &str| -> Result<(), Error> {
            match kind_of(table, column)? {
                ColumnKind::Text
                | ColumnKind::Date
                | ColumnKind::DateTime
                | ColumnKind::Json
                | ColumnKind::Choice => Ok(()),
                k => Err(bad(
                    table,
                    format!("'{column}' holds {k:?} values, not text"),
                )),
            }
        };
        let date_col = |column: &str| -> Result<(), Error> {
            match kind_of(table, column)? {
                ColumnKind::Date | ColumnKind::DateTime => Ok(()),
                _ => Err(bad(
                    table,
                    format!("relative dates need a date or datetime column; '{column}' is not one"),
                )),
            }
        };
        let days_ok = |days: u32| -> Result<(), Error> {
            if days == 0 || days > MAX_RELATIVE_DAYS {
                Err(bad(
                    table,
                    format!("days must be 1 to {MAX_RELATIVE_DAYS}, not {days}"),
                ))
            } else {
                Ok(())
            }
        };
        let list = |column: &str, values: &[Value]| -> Result<Vec<Value>, Error> {
            if values.is_empty() || values.len() > MAX_IN_VALUES {
                return Err(bad(
                    table,
                    format!("an in / not_in list holds 1 to {MAX_IN_VALUES} values"),
                ));
            }
            values.iter().map(|v| canonical(table, column, v)).collect()
        };
        let sub = |fs: &[Filter], nodes: &mut usize| -> Result<Vec<Filter>, Error> {
            if fs.is_empty() {
                return Err(bad(table, "an and / or needs at least one filter".into()));
            }
            fs.iter()
                .map(|f| f.check(table, depth + 1, nodes, tables, hops))
                .collect()
        };
        use Filter as F;
        Ok(match self {
            F::And { filters } => F::And {
                filters: sub(filters, nodes)?,
            },
            F::Or { filters } => F::Or {
                filters: sub(filters, nodes)?,
            },
            F::Not { filter } => F::Not {
                filter: Box::new(filter.check(table, depth + 1, nodes, tables, hops)?),
            },
            F::Related {
                column,
                table: other,
                filter,
            } => {
                let Some(tables) = tables else {
                    return Err(Error::InvalidInput(
                        "a condition on a related table ('related') belongs in an offline profile's filter; a local query reads one table"
                            .into(),
                    ));
                };
                if hops >= MAX_RELATED_DEPTH {
                    return Err(bad(
                        table,
                        format!("'related' follows at most {MAX_RELATED_DEPTH} relationships"),
                    ));
                }
                if kind_of(table, column)? != ColumnKind::Text {
                    return Err(bad(
                        table,
                        format!(
                            "'related' reaches another table through a text column; '{column}' is not one"
                        ),
                    ));
                }
                let other_table = tables(other).ok_or_else(|| {
                    bad(
                        table,
                        format!("'related' reads table '{other}', which the profile does not sync"),
                    )
                })?;
                F::Related {
                    column: column.clone(),
                    table: other.clone(),
                    filter: Box::new(filter.check(
                        other_table,
                        depth + 1,
                        nodes,
                        Some(tables),
                        hops + 1,
                    )?),
                }
            }
            F::Eq { column, value } => F::Eq {
                value: canonical(table, column, value)?,
                column: column.clone(),
            },
            F::Ne { column, value } => F::Ne {
                value: canonical(table, column, value)?,
                column: column.clone(),
            },
            F::Gt { column, value } => F::Gt {
                value: canonical(table, column, value)?,
                column: column.clone(),
            },
            F::Ge { column, value } => F::Ge {
                value: canonical(table, column, value)?,
                column: column.clone(),
            },
            F::Lt { column, value } => F::Lt {
                value: canonical(table, column, value)?,
                column: column.clone(),
            },
            F::Le { column, value } => F::Le {
                value: canonical(table, column, value)?,
                column: column.clone(),
            },
            F::In { column, values } => F::In {
                values: list(column, values)?,
                column: column.clone(),
            },
            F::NotIn { column, values } => F::NotIn {
                values: list(column, values)?,
                column: column.clone(),
            },
            F::IsNull { column } | F::NotNull { column } => {
                kind_of(table, column)?;
                self.clone()
            }
            F::BeginsWith { column, .. }
            | F::EndsWith { column, .. }
            | F::Contains { column, .. }
            | F::EqCurrentUser { column }
            | F::EqCurrentTeam { column } => {
                text_col(column)?;
                self.clone()
            }
            F::LastDays { column, days } | F::NextDays { column, days } => {
                date_col(column)?;
                days_ok(*days)?;
                self.clone()
            }
            F::Today { column }
            | F::Yesterday { column }
            | F::Tomorrow { column }
            | F::OnOrAfterToday { column }
            | F::ThisMonth { column }
            | F::LastMonth { column }
            | F::NextMonth { column } => {
                date_col(column)?;
                self.clone()
            }
        })
    }

    /// True when the filter reads the clock (it holds a relative date).
    pub fn uses_clock(&self) -> bool {
        match self {
            Filter::And { filters } | Filter::Or { filters } => {
                filters.iter().any(Filter::uses_clock)
            }
            Filter::Not { filter } | Filter::Related { filter, .. } => filter.uses_clock(),
            Filter::Today { .. }
            | Filter::Yesterday { .. }
            | Filter::Tomorrow { .. }
            | Filter::LastDays { .. }
            | Filter::NextDays { .. }
            | Filter::OnOrAfterToday { .. }
            | Filter::ThisMonth { .. }
            | Filter::LastMonth { .. }
            | Filter::NextMonth { .. } => true,
            _ => false,
        }
    }

    /// Every column the filter reads.
    pub fn columns(&self) -> Vec<&str> {
        let mut out = Vec::new();
        self.collect_columns(&mut out);
        out
    }

    fn collect_columns<'a>(&'a self, out: &mut Vec<&'a str>) {
        match self {
            Filter::And { filters } | Filter::Or { filters } => {
                for f in filters {
                    f.collect_columns(out);
                }
            }
            Filter::Not { filter } => filter.collect_columns(out),
            Filter::Eq { column, .. }
            | Filter::Ne { column, .. }
            | Filter::Gt { column, .. }
            | Filter::Ge { column, .. }
            | Filter::Lt { column, .. }
            | Filter::Le { column, .. }
            | Filter::In { column, .. }
            | Filter::NotIn { column, .. }
            | Filter::IsNull { column }
            | Filter::NotNull { column }
            | Filter::BeginsWith { column, .. }
            | Filter::EndsWith { column, .. }
            | Filter::Contains { column, .. }
            | Filter::EqCurrentUser { column }
            | Filter::EqCurrentTeam { column }
            | Filter::Today { column }
            | Filter::Yesterday { column }
            | Filter::Tomorrow { column }
            | Filter::LastDays { column, .. }
            | Filter::NextDays { column, .. }
            | Filter::OnOrAfterToday { column }
            | Filter::ThisMonth { column }
            | Filter::LastMonth { column }
            | Filter::NextMonth { column }
            | Filter::Related { column, .. } => out.push(column),
        }
    }

    /// True when the filter reads another table (`related`).
    pub fn reads_related(&self) -> bool {
        match self {
            Filter::And { filters } | Filter::Or { filters } => {
                filters.iter().any(Filter::reads_related)
            }
            Filter::Not { filter } => filter.reads_related(),
            Filter::Related { .. } => true,
            _ => false,
        }
    }

    /// The relationships the filter's `related` conditions follow, each as
    /// its path from this table: `[(table, column, other table)]`, outermost
    /// first (a path's prefixes are listed too).
    pub fn related_paths(&self, table: &str) -> Vec<Vec<Hop>> {
        let mut out = Vec::new();
        self.collect_paths(table, &mut Vec::new(), &mut out);
        out
    }

    fn collect_paths(&self, table: &str, path: &mut Vec<Hop>, out: &mut Vec<Vec<Hop>>) {
        match self {
            Filter::And { filters } | Filter::Or { filters } => {
                for f in filters {
                    f.collect_paths(table, path, out);
                }
            }
            Filter::Not { filter } => filter.collect_paths(table, path, out),
            Filter::Related {
                column,
                table: other,
                filter,
            } => {
                path.push((table.to_owned(), column.clone(), other.clone()));
                if !out.contains(path) {
                    out.push(path.clone());
                }
                filter.collect_paths(other, path, out);
                path.pop();
            }
            _ => {}
        }
    }

    /// Lowers the filter for one context. `table` gives column kinds (a
    /// relative date on a date column gets date bounds, on a date-time
    /// column date-time bounds). Call on a validated filter.
    pub fn lower<T: FilterTable>(&self, table: &T, ctx: &FilterContext) -> Cond {
        self.lower_in(table, ctx, &|_| None)
    }

    /// [`Filter::lower`] with the profile's tables, which a `related`
    /// condition reads (without them, or for a table not among them, it
    /// matches nothing).
    pub fn lower_in<T: FilterTable>(
        &self,
        table: &T,
        ctx: &FilterContext,
        tables: Tables<'_, T>,
    ) -> Cond {
        let kind = |c: &str| table.column_kind(c);
        let cmp = |column: &str, op: CmpOp, value: &Value| Cond::Cmp {
            column: column.to_owned(),
            op,
            value: value.clone(),
        };
        let today = ctx.today();
        // A half-open range of local days [from, to) on a date column.
        let range = |column: &str, from: i64, to: Option<i64>| -> Cond {
            let bound = |day: i64| -> Value {
                match kind(column) {
                    Some(ColumnKind::DateTime) => {
                        Value::Text(format_datetime(ctx.zone.day_start_ms(day)))
                    }
                    _ => Value::Text(format_date(day)),
                }
            };
            let lower = cmp(column, CmpOp::Ge, &bound(from));
            match to {
                Some(to) => Cond::And(vec![lower, cmp(column, CmpOp::Lt, &bound(to))]),
                None => lower,
            }
        };
        let month_start = |delta: i64| -> i64 {
            let (y, m, _) = civil_from_days(today);
            let index = y * 12 + i64::from(m) - 1 + delta;
            days_from_civil(index.div_euclid(12), (index.rem_euclid(12) + 1) as u32, 1)
        };
        let text = |column: &str, op: TextOp, needle: &str| Cond::Text {
            column: column.to_owned(),
            op,
            needle: needle.to_owned(),
        };
        use Filter as F;
        match self {
            F::And { filters } => Cond::And(
                filters
                    .iter()
                    .map(|f| f.lower_in(table, ctx, tables))
                    .collect(),
            ),
            F::Or { filters } => Cond::Or(
                filters
                    .iter()
                    .map(|f| f.lower_in(table, ctx, tables))
                    .collect(),
            ),
            F::Not { filter } => Cond::Not(Box::new(filter.lower_in(table, ctx, tables))),
            F::Related {
                column,
                table: other,
                filter,
            } => match tables(other) {
                Some(other_table) => Cond::Related {
                    column: column.clone(),
                    table: other.clone(),
                    key: other_table.primary_key().to_owned(),
                    cond: Box::new(filter.lower_in(other_table, ctx, tables)),
                },
                None => Cond::False,
            },
            F::Eq { column, value } => cmp(column, CmpOp::Eq, value),
            F::Ne { column, value } => cmp(column, CmpOp::Ne, value),
            F::Gt { column, value } => cmp(column, CmpOp::Gt, value),
            F::Ge { column, value } => cmp(column, CmpOp::Ge, value),
            F::Lt { column, value } => cmp(column, CmpOp::Lt, value),
            F::Le { column, value } => cmp(column, CmpOp::Le, value),
            F::In { column, values } => Cond::In {
                column: column.clone(),
                values: values.clone(),
                negated: false,
            },
            F::NotIn { column, values } => Cond::In {
                column: column.clone(),
                values: values.clone(),
                negated: true,
            },
            F::IsNull { column } => Cond::IsNull {
                column: column.clone(),
                negated: false,
            },
            F::NotNull { column } => Cond::IsNull {
                column: column.clone(),
                negated: true,
            },
            F::BeginsWith { column, value } => text(column, TextOp::BeginsWith, value),
            F::EndsWith { column, value } => text(column, TextOp::EndsWith, value),
            F::Contains { column, value } => text(column, TextOp::Contains, value),
            F::EqCurrentUser { column } => {
                cmp(column, CmpOp::Eq, &Value::Text(ctx.user_id.clone()))
            }
            F::EqCurrentTeam { column } => match &ctx.team_id {
                Some(team) => cmp(column, CmpOp::Eq, &Value::Text(team.clone())),
                None => Cond::False,
            },
            F::Today { column } => range(column, today, Some(today + 1)),
            F::Yesterday { column } => range(column, today - 1, Some(today)),
            F::Tomorrow { column } => range(column, today + 1, Some(today + 2)),
            F::LastDays { column, days } => {
                range(column, today - i64::from(*days), Some(today + 1))
            }
            F::NextDays { column, days } => {
                range(column, today, Some(today + i64::from(*days) + 1))
            }
            F::OnOrAfterToday { column } => range(column, today, None),
            F::ThisMonth { column } => range(column, month_start(0), Some(month_start(1))),
            F::LastMonth { column } => range(column, month_start(-1), Some(month_start(0))),
            F::NextMonth { column } => range(column, month_start(1), Some(month_start(2))),
        }
    }
}

#[cfg(test)]
mod tests;
