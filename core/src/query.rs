//! Local queries over a synced table: a condition in the offline profile's
//! filter language ([`Filter`]), an order, a limit and an offset.
//!
//! Synced tables are real SQLite tables with the profile's columns (see
//! [`crate::store`]), values stored in their column's form, so a query is
//! compiled to parameterised SQL over those columns: the filter is checked
//! against the table ([`Filter::validate`]), lowered for the engine's
//! [`FilterContext`] (current user, team, the injected clock), and the
//! lowered [`Cond`] compiled by [`compile_cond`]. Every value is bound as a
//! parameter; only the profile's column names, quoted, are written into the
//! SQL. The compiled condition is the SQLite form of the server's
//! (`fieldsync_server::rules::compile_cond`), so a local query selects the
//! rows the server's compiled rule would (`tests/filter_property.rs`).
//!
//! Observing a query ([`crate::Engine::observe`]) delivers its result at once
//! and again after each commit that changed a row of its table.

use crate::error::{Error, Result};
use crate::filter::{Cond, Filter, FilterContext, TextOp};
use crate::profile::{SyncTable, quote_ident};
use crate::value::{Record, Value};

/// Most rows one query returns.
pub const MAX_QUERY_LIMIT: u32 = 100_000;

/// One column of a query's order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OrderBy {
    /// A synced column of the table.
    pub column: String,
    /// Largest first when set (SQLite order: nulls first ascending).
    pub descending: bool,
}

/// A query over one synced table of the device.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Query {
    /// The table.
    pub table: String,
    /// The condition rows meet (none: every row).
    pub filter: Option<Filter>,
    /// The order, column by column; the primary key breaks ties (in the
    /// direction of the last column).
    pub order: Vec<OrderBy>,
    /// At most this many rows (none: [`MAX_QUERY_LIMIT`]).
    pub limit: Option<u32>,
    /// Rows skipped first.
    pub offset: u32,
}

/// Receives an observed query's result: at once, then after each commit that
/// changed a row of its table.
pub trait QueryListener: Send + Sync {
    /// The query's current rows.
    fn on_result(&self, records: Vec<Record>);
    /// The query could not be run (the table left the profile, storage).
    fn on_error(&self, error: Error);
}

/// A query compiled for one table and one filter context: the `WHERE` and
/// `ORDER BY` clauses and the parameters of the `WHERE`.
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledQuery {
    /// `WHERE` condition (never SQL NULL).
    pub condition: String,
    /// Parameters of `condition`, in order.
    pub params: Vec<Value>,
    /// `ORDER BY` list.
    pub order: String,
    /// `LIMIT`.
    pub limit: u32,
    /// `OFFSET`.
    pub offset: u32,
}

/// Turns a filter's complaint about the query's condition into
/// [`Error::InvalidInput`].
fn invalid(e: fieldsync_protocol::Error) -> Error {
    use fieldsync_protocol::Error as P;
    match e {
        P::UnknownColumn { table, column } => Error::InvalidInput(format!(
            "the condition reads column '{column}', which table '{table}' does not sync"
        )),
        P::InvalidProfile(m) => Error::InvalidInput(m),
        other => other.into(),
    }
}

impl Query {
    /// Compiles the query for `table` and `ctx`. A condition or order on a
    /// column the table does not sync, or a value not of its column's type,
    /// is [`Error::InvalidInput`].
    pub fn compile(&self, table: &SyncTable, ctx: &FilterContext) -> Result<CompiledQuery> {
        let cond = match &self.filter {
            Some(f) => f.validate(table).map_err(invalid)?.lower(table, ctx),
            None => Cond::True,
        };
        let mut params = Vec::new();
        let condition = compile_cond(&cond, &mut params);
        let mut order = Vec::new();
        for o in &self.order {
            if table.column(&o.column).is_none() {
                return Err(Error::InvalidInput(format!(
                    "cannot order by column '{}', which table '{}' does not sync",
                    o.column, table.name
                )));
            }
            let dir = if o.descending { "DESC" } else { "ASC" };
            order.push(format!("{} {dir}", quote_ident(&o.column)));
        }
        // Ties broken by the primary key, in the direction of the last
        // column asked for: an index over the order's columns (a local
        // index holds the key last) then serves the whole order, read
        // forward or backward, and a limit stops early. A mixed direction
        // would make SQLite sort every row the condition selects.
        let tie = match self.order.last() {
            Some(o) if o.descending => "DESC",
            _ => "ASC",
        };
        order.push(format!("{} {tie}", quote_ident(&table.primary_key)));
        let limit = self.limit.unwrap_or(MAX_QUERY_LIMIT);
        if limit > MAX_QUERY_LIMIT {
            return Err(Error::InvalidInput(format!(
                "limit must be at most {MAX_QUERY_LIMIT}"
            )));
        }
        Ok(CompiledQuery {
            condition,
            params,
            order: order.join(", "),
            limit,
            offset: self.offset,
        })
    }
}

/// Compiles a lowered condition to a SQLite boolean expression, appending
/// its parameters to `params`. Every leaf is two-valued (never SQL NULL), so
/// `NOT` behaves as [`Cond::eval`]. The SQLite form of the server's compiler.
pub fn compile_cond(cond: &Cond, params: &mut Vec<Value>) -> String {
    match cond {
        Cond::True => "1".into(),
        Cond::False => "0".into(),
        Cond::And(cs) if cs.is_empty() => "1".into(),
        Cond::Or(cs) if cs.is_empty() => "0".into(),
        Cond::And(cs) => {
            let parts: Vec<String> = cs.iter().map(|c| compile_cond(c, params)).collect();
            format!("({})", parts.join(" AND "))
        }
        Cond::Or(cs) => {
            let parts: Vec<String> = cs.iter().map(|c| compile_cond(c, params)).collect();
            format!("({})", parts.join(" OR "))
        }
        Cond::Not(c) => format!("(NOT {})", compile_cond(c, params)),
        // A local query reads one table: `Filter::validate` refuses a
        // condition on a related table before it is lowered.
        Cond::Related { .. } => "0".into(),
        Cond::Cmp { column, op, value } => {
            params.push(value.clone());
            let c = quote_ident(column);
            format!("({c} IS NOT NULL AND {c} {} ?)", op.sql())
        }
        Cond::In {
            column,
            values,
            negated,
        } => {
            let c = quote_ident(column);
            if values.is_empty() {
                return if *negated {
                    format!("({c} IS NOT NULL)")
                } else {
                    "0".into()
                };
            }
            params.extend(values.iter().cloned());
            let marks = vec!["?"; values.len()].join(", ");
            let not = if *negated { "NOT " } else { "" };
            format!("({c} IS NOT NULL AND {c} {not}IN ({marks}))")
        }
        Cond::IsNull { column, negated } => {
            let not = if *negated { "NOT " } else { "" };
            format!("({} IS {not}NULL)", quote_ident(column))
        }
        Cond::Text { column, op, needle } => {
            let c = quote_ident(column);
            let n = Value::Text(needle.clone());
            match op {
                TextOp::BeginsWith => {
                    params.push(n);
                    format!("({c} IS NOT NULL AND instr({c}, ?) = 1)")
                }
                TextOp::Contains => {
                    params.push(n);
                    format!("({c} IS NOT NULL AND instr({c}, ?) > 0)")
                }
                TextOp::EndsWith => {
                    // Compared as the hex of the bytes: SQLite's length()
                    // and substr() of a text stop at its first NUL.
                    params.extend([n.clone(), n.clone(), n]);
                    format!(
                        "({c} IS NOT NULL AND length(hex({c})) >= length(hex(?)) AND substr(hex({c}), length(hex({c})) - length(hex(?)) + 1) = hex(?))"
                    )
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> SyncTable {
        use crate::profile::{Column, ColumnKind, RowRule};
        SyncTable {
            name: "jobs".into(),
            primary_key: "id".into(),
            columns: ["id", "status"]
                .iter()
                .map(|n| Column::new(*n, ColumnKind::Text))
                .collect(),
            rules: vec![RowRule::All],
            sync_interval_secs: 60,
            writes: Default::default(),
            model_indexes: Vec::new(),
            indexes: Vec::new(),
        }
    }

    fn ctx() -> FilterContext {
        FilterContext {
            user_id: "u1".into(),
            team_id: None,
            now_ms: 0,
            zone: Default::default(),
        }
    }

    #[test]
    fn values_are_bound_and_unknown_columns_are_invalid_input() {
        let q = Query {
            table: "jobs".into(),
            filter: Some(Filter::Eq {
                column: "status".into(),
                value: Value::Text("x' OR 1=1 --".into()),
            }),
            order: vec![OrderBy {
                column: "status".into(),
                descending: true,
            }],
            limit: Some(5),
            offset: 2,
        };
        let c = q.compile(&table(), &ctx()).expect("compiles");
        assert!(!c.condition.contains("OR 1=1"), "{}", c.condition);
        assert_eq!(c.params, vec![Value::Text("x' OR 1=1 --".into())]);
        assert_eq!(c.order, "\"status\" DESC, \"id\" DESC");
        let bad = Query {
            filter: Some(Filter::IsNull {
                column: "secret".into(),
            }),
            ..q.clone()
        };
        assert!(matches!(
            bad.compile(&table(), &ctx()),
            Err(Error::InvalidInput(_))
        ));
        let bad_order = Query {
            order: vec![OrderBy {
                column: "secret".into(),
                descending: false,
            }],
            ..q
        };
        assert!(matches!(
            bad_order.compile(&table(), &ctx()),
            Err(Error::InvalidInput(_))
        ));
    }
}
