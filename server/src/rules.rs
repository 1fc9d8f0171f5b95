//! Row rules compiled to SQL. Every value a rule carries, the user and team
//! ids and the bounds of relative dates are bound as parameters; only
//! identifiers that passed [`fieldsync_protocol::profile::check_identifier`] are
//! written into the SQL text, quoted. A row qualifies when any rule of its
//! table matches.
//!
//! Custom filters are first lowered by the core
//! ([`fieldsync_protocol::filter::Filter::lower`]) — the same lowered form the
//! device evaluates — and the lowered condition is compiled here, so server
//! and device select the same rows. Every compiled leaf is two-valued (never
//! SQL NULL), so `NOT` behaves as on the device.

use fieldsync_protocol::Value;
use fieldsync_protocol::filter::{Cond, FilterContext, TextOp};
use fieldsync_protocol::profile::{RowRule, SyncProfile, SyncTable, quote_ident};

use crate::sql::Dialect;

/// Deepest chain of related-rows rules compiled (validation refuses cycles
/// and more than 15 related tables, so a valid profile never reaches it).
pub(crate) const MAX_DEPTH: usize = 16;

/// A SQL boolean expression and its parameters, in order of appearance.
#[derive(Debug, Clone, PartialEq)]
pub struct SqlPredicate {
    pub sql: String,
    pub params: Vec<Value>,
}

/// Compiles a table's rules for one evaluation context (user, team, clock).
/// Related-rows rules become sub-queries over the related table and its own
/// rules.
pub fn compile(profile: &SyncProfile, table: &SyncTable, ctx: &FilterContext) -> SqlPredicate {
    compile_in(Dialect::Sqlite, profile, table, ctx)
}

/// [`compile`] for one SQL dialect.
pub fn compile_in(
    dialect: Dialect,
    profile: &SyncProfile,
    table: &SyncTable,
    ctx: &FilterContext,
) -> SqlPredicate {
    compile_at(dialect, profile, table, ctx, 0, &quote_ident(&table.name))
}

/// Compiles only the custom filters of a table that read the clock (their
/// OR), or `None` when it has none. Used to find rows that entered a
/// relative-date window without changing.
pub fn compile_clock_rules(
    dialect: Dialect,
    profile: &SyncProfile,
    table: &SyncTable,
    ctx: &FilterContext,
) -> Option<SqlPredicate> {
    let mut parts = Vec::new();
    let mut params = Vec::new();
    let scope = quote_ident(&table.name);
    for rule in &table.rules {
        if let RowRule::Custom { filter } = rule
            && filter.uses_clock()
        {
            parts.push(compile_cond_at(
                dialect,
                &filter.lower_in(table, ctx, &|n| profile.table(n)),
                &mut params,
                Some(&scope),
                0,
            ));
        }
    }
    if parts.is_empty() {
        return None;
    }
    Some(SqlPredicate {
        sql: format!("({})", parts.join(" OR ")),
        params,
    })
}

/// Compiles only the rules of `table` that read no other table (all rows,
/// owned rows, custom filters), their OR, or `None` when every rule is a
/// related-rows rule. With the related-rows rules' selected values (see
/// [`crate::selection`]) it decides the same rows as [`compile_in`].
pub fn compile_own_in(
    dialect: Dialect,
    profile: &SyncProfile,
    table: &SyncTable,
    ctx: &FilterContext,
) -> Option<SqlPredicate> {
    let mut params = Vec::new();
    let scope = quote_ident(&table.name);
    let parts: Vec<String> = table
        .rules
        .iter()
        .filter_map(|rule| {
            compile_own_rule(dialect, profile, table, rule, ctx, &scope, &mut params)
        })
        .collect();
    (!parts.is_empty()).then(|| SqlPredicate {
        sql: format!("({})", parts.join(" OR ")),
        params,
    })
}

/// One rule that is not a related-rows rule (a custom filter may still
/// read related tables' rows, `related`); `None` for a related-rows rule.
/// `scope` is how the query names `table`.
fn compile_own_rule(
    dialect: Dialect,
    profile: &SyncProfile,
    table: &SyncTable,
    rule: &RowRule,
    ctx: &FilterContext,
    scope: &str,
    params: &mut Vec<Value>,
) -> Option<String> {
    match rule {
        RowRule::All => Some(dialect.true_sql().to_owned()),
        RowRule::Owned { column } => {
            params.push(Value::Text(ctx.user_id.clone()));
            Some(format!("{} = ?", quote_ident(column)))
        }
        RowRule::Custom { filter } => Some(compile_cond_at(
            dialect,
            &filter.lower_in(table, ctx, &|n| profile.table(n)),
            params,
            Some(scope),
            0,
        )),
        RowRule::Related { .. } => None,
    }
}

/// `scope` is how the query around the predicate names `table` (its name,
/// or the alias of an enclosing `EXISTS`).
fn compile_at(
    dialect: Dialect,
    profile: &SyncProfile,
    table: &SyncTable,
    ctx: &FilterContext,
    depth: usize,
    scope: &str,
) -> SqlPredicate {
    let mut parts = Vec::new();
    let mut params = Vec::new();
    for rule in &table.rules {
        match rule {
            RowRule::All | RowRule::Owned { .. } | RowRule::Custom { .. } => {
                parts.extend(compile_own_rule(
                    dialect,
                    profile,
                    table,
                    rule,
                    ctx,
                    scope,
                    &mut params,
                ));
            }
            RowRule::Related {
                table: other,
                column,
                foreign_column,
            } => match profile.table(other) {
                Some(other_table) if depth < MAX_DEPTH => {
                    // A correlated `EXISTS`: one lookup per row through the
                    // related column's index (the related table's primary
                    // key, or the index `crate::schema::ensure_rule_indexes`
                    // keeps on its foreign column), where `IN (SELECT ...)`
                    // would build the whole set of selected related keys
                    // each time the statement runs (every pull page, every
                    // pushed row). A NULL on either side matches nothing, as
                    // the set never held NULL. Never NULL, like the other
                    // leaves.
                    let alias = format!("_fs_rel{depth}");
                    let inner = compile_at(dialect, profile, other_table, ctx, depth + 1, &alias);
                    // By key: (key, `_deleted`) answers "is it live"
                    // without reading the row, which SQLite's planner does
                    // not see by itself (see `schema::live_index_name`).
                    let hint = if dialect == Dialect::Sqlite
                        && other_table.primary_key == *foreign_column
                    {
                        format!(
                            " INDEXED BY {}",
                            quote_ident(&crate::schema::live_index_name(other))
                        )
                    } else {
                        String::new()
                    };
                    parts.push(format!(
                        "EXISTS (SELECT 1 FROM {o} AS {alias}{hint} WHERE {alias}.{f} = {scope}.{c} AND {alias}._deleted = 0 AND {inner})",
                        o = quote_ident(other),
                        f = quote_ident(foreign_column),
                        c = quote_ident(column),
                        inner = inner.sql,
                    ));
                    params.extend(inner.params);
                }
                _ => parts.push(dialect.false_sql().into()),
            },
        }
    }
    if parts.is_empty() {
        parts.push(dialect.false_sql().into());
    }
    SqlPredicate {
        sql: format!("({})", parts.join(" OR ")),
        params,
    }
}

/// Compiles a lowered filter condition; appends its parameters to `params`.
/// The result is never SQL NULL.
pub fn compile_cond(cond: &Cond, params: &mut Vec<Value>) -> String {
    compile_cond_in(Dialect::Sqlite, cond, params)
}

/// [`compile_cond`] for one SQL dialect.
pub fn compile_cond_in(dialect: Dialect, cond: &Cond, params: &mut Vec<Value>) -> String {
    compile_cond_at(dialect, cond, params, None, 0)
}

/// [`compile_cond_in`] with the columns qualified by `scope` (how the query
/// names the row's table, when given). A condition on a related table is a
/// correlated `EXISTS` over that table's live row with the key, its own
/// condition qualified by the sub-query's alias (`_fs_cond{depth}`); the
/// related table's primary key answers it by its index.
pub fn compile_cond_at(
    dialect: Dialect,
    cond: &Cond,
    params: &mut Vec<Value>,
    scope: Option<&str>,
    depth: usize,
) -> String {
    let (t, f) = (dialect.true_sql(), dialect.false_sql());
    let q = |column: &str| match scope {
        Some(s) => format!("{s}.{}", quote_ident(column)),
        None => quote_ident(column),
    };
    match cond {
        Cond::Related {
            column,
            table,
            key,
            cond,
        } => {
            let alias = format!("_fs_cond{depth}");
            let inner = compile_cond_at(dialect, cond, params, Some(&alias), depth + 1);
            format!(
                "EXISTS (SELECT 1 FROM {o} AS {alias} WHERE {alias}.{k} = {c} AND {alias}._deleted = 0 AND {inner})",
                o = quote_ident(table),
                k = quote_ident(key),
                c = q(column),
            )
        }
        Cond::True => t.into(),
        Cond::False => f.into(),
        Cond::And(cs) if cs.is_empty() => t.into(),
        Cond::Or(cs) if cs.is_empty() => f.into(),
        Cond::And(cs) => {
            let parts: Vec<String> = cs
                .iter()
                .map(|c| compile_cond_at(dialect, c, params, scope, depth))
                .collect();
            format!("({})", parts.join(" AND "))
        }
        Cond::Or(cs) => {
            let parts: Vec<String> = cs
                .iter()
                .map(|c| compile_cond_at(dialect, c, params, scope, depth))
                .collect();
            format!("({})", parts.join(" OR "))
        }
        Cond::Not(c) => format!(
            "(NOT {})",
            compile_cond_at(dialect, c, params, scope, depth)
        ),
        Cond::Cmp { column, op, value } => {
            params.push(value.clone());
            let c = q(column);
            format!("({c} IS NOT NULL AND {c} {} ?)", op.sql())
        }
        Cond::In {
            column,
            values,
            negated,
        } => {
            let c = q(column);
            if values.is_empty() {
                return if *negated {
                    format!("({c} IS NOT NULL)")
                } else {
                    f.into()
                };
            }
            params.extend(values.iter().cloned());
            let marks = vec!["?"; values.len()].join(", ");
            let not = if *negated { "NOT " } else { "" };
            format!("({c} IS NOT NULL AND {c} {not}IN ({marks}))")
        }
        Cond::IsNull { column, negated } => {
            let not = if *negated { "NOT " } else { "" };
            format!("({} IS {not}NULL)", q(column))
        }
        Cond::Text { column, op, needle } => {
            let c = q(column);
            let n = Value::Text(needle.clone());
            match op {
                TextOp::BeginsWith => {
                    params.push(n);
                    format!("({c} IS NOT NULL AND {} = 1)", dialect.instr(&c))
                }
                TextOp::Contains => {
                    params.push(n);
                    format!("({c} IS NOT NULL AND {} > 0)", dialect.instr(&c))
                }
                TextOp::EndsWith => {
                    params.extend([n.clone(), n.clone(), n]);
                    match dialect {
                        // Compared as the hex of the bytes: SQLite's
                        // length() and substr() of a text stop at its first
                        // NUL character, Rust's ends_with does not (and an
                        // empty BLOB's substr is not an empty BLOB).
                        Dialect::Sqlite => format!(
                            "({c} IS NOT NULL AND length(hex({c})) >= length(hex(?)) AND substr(hex({c}), length(hex({c})) - length(hex(?)) + 1) = hex(?))"
                        ),
                        // PostgreSQL text holds no NUL; characters are whole
                        // UTF-8 sequences, so a character suffix is a byte
                        // suffix.
                        Dialect::Postgres => format!(
                            "({c} IS NOT NULL AND length({c}) >= length(CAST(? AS TEXT)) AND substr({c}, length({c}) - length(CAST(? AS TEXT)) + 1) = ?)"
                        ),
                    }
                }
            }
        }
    }
}
