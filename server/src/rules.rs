//! Row rules compiled to SQL. Every value a rule carries, and the user id,
//! is bound as a parameter; only identifiers that passed
//! [`fieldsync_core::profile::check_identifier`] are written into the SQL
//! text, quoted. A row qualifies when any rule of its table matches.

use fieldsync_core::Value;
use fieldsync_core::profile::{RowRule, SyncProfile, SyncTable, quote_ident};

/// Deepest chain of related-rows rules compiled (validation refuses cycles
/// and more than 15 related tables, so a valid profile never reaches it).
const MAX_DEPTH: usize = 16;

/// A SQL boolean expression and its parameters, in order of appearance.
#[derive(Debug, Clone, PartialEq)]
pub struct SqlPredicate {
    pub sql: String,
    pub params: Vec<Value>,
}

/// Compiles a table's rules for one user. Related-rows rules become
/// sub-queries over the related table and its own rules.
pub fn compile(profile: &SyncProfile, table: &SyncTable, user_id: &str) -> SqlPredicate {
    compile_at(profile, table, user_id, 0)
}

fn compile_at(
    profile: &SyncProfile,
    table: &SyncTable,
    user_id: &str,
    depth: usize,
) -> SqlPredicate {
    let mut parts = Vec::new();
    let mut params = Vec::new();
    for rule in &table.rules {
        match rule {
            RowRule::All => parts.push("1".to_owned()),
            RowRule::Owned { column } => {
                parts.push(format!("{} = ?", quote_ident(column)));
                params.push(Value::Text(user_id.to_owned()));
            }
            RowRule::Related {
                table: other,
                column,
                foreign_column,
            } => match profile.table(other) {
                Some(other_table) if depth < MAX_DEPTH => {
                    let inner = compile_at(profile, other_table, user_id, depth + 1);
                    parts.push(format!(
                        "{} IN (SELECT {} FROM {} WHERE _deleted = 0 AND {} AND {} IS NOT NULL)",
                        quote_ident(column),
                        quote_ident(foreign_column),
                        quote_ident(other),
                        inner.sql,
                        quote_ident(foreign_column)
                    ));
                    params.extend(inner.params);
                }
                _ => parts.push("0".into()),
            },
        }
    }
    if parts.is_empty() {
        parts.push("0".into());
    }
    SqlPredicate {
        sql: format!("({})", parts.join(" OR ")),
        params,
    }
}
