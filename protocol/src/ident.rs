//! Table and column names: which names are allowed ([`check_identifier`])
//! and how a checked one is quoted into SQL ([`quote_ident`]).

use crate::error::Error;

/// Checks that a table or column name is a plain identifier that can be
/// quoted into SQL: lower-case ASCII letters, digits and `_`, starting with a
/// letter, at most 63 characters. Names starting with `_` are reserved.
pub fn check_identifier(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.as_bytes()[0].is_ascii_lowercase()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.starts_with("sqlite_");
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "'{}' is not a valid name (lower-case letters, digits and _, starting with a letter)",
            name.chars().take(64).collect::<String>()
        )))
    }
}

/// Quotes a checked identifier for SQL.
pub fn quote_ident(name: &str) -> String {
    format!("\"{name}\"")
}
