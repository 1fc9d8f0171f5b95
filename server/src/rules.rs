//! Row rules compiled to SQL. Every value a rule carries, and the user id,
//! is bound as a parameter; only identifiers that passed
//! [`fieldsync_core::profile::check_identifier`] are written into the SQL
//! text, quoted. A row qualifies when any rule of its table matches.

use fieldsync_core::Value;
use fieldsync_core::profile::{RowRule, SyncTable, quote_ident};

/// A SQL boolean expression and its parameters, in order of appearance.
#[derive(Debug, Clone, PartialEq)]
pub struct SqlPredicate {
    pub sql: String,
    pub params: Vec<Value>,
}

/// Compiles a table's rules for one user.
pub fn compile(table: &SyncTable, user_id: &str) -> SqlPredicate {
    let mut parts = Vec::new();
    let mut params = Vec::new();
    for rule in &table.rules {
        match rule {
            RowRule::All => parts.push("1".to_owned()),
            RowRule::Owned { column } => {
                parts.push(format!("{} = ?", quote_ident(column)));
                params.push(Value::Text(user_id.to_owned()));
            }
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
