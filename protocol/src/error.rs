//! Errors of the shared protocol code: a filter, offline profile, data
//! model or value that does not hold. Messages name tables, columns and
//! counts, never field values. The device engine wraps this error in its
//! own (keeping it as the source); the server maps it to HTTP answers.

use thiserror::Error;

/// What reading or checking a filter, profile, model or value can fail with.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Error {
    /// A table the data model or profile does not have.
    #[error("unknown table '{0}'")]
    UnknownTable(String),
    /// A column the table does not have (or does not sync).
    #[error("unknown column '{column}' in table '{table}'")]
    UnknownColumn { table: String, column: String },
    /// An offline profile (or one of its filters) that does not hold.
    #[error("invalid offline profile: {0}")]
    InvalidProfile(String),
    /// A data model that does not hold, or may not follow the current one.
    #[error("invalid data model: {0}")]
    InvalidModel(String),
    /// Malformed input: a name, a value, a filter's text.
    #[error("invalid input: {0}")]
    InvalidInput(String),
}

/// Result alias of the protocol crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
