//! The kinds of column values ([`ColumnKind`]): what a data model, an
//! offline profile, a value and a filter agree a column holds.

use serde::{Deserialize, Serialize};

/// The kind of a column's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnKind {
    Text,
    Integer,
    Real,
    Boolean,
    /// `YYYY-MM-DD`, stored as text.
    Date,
    /// `YYYY-MM-DDTHH:MM:SSZ` (UTC), stored as text.
    #[serde(rename = "datetime")]
    DateTime,
    /// A JSON document, carried and stored as its text.
    Json,
    /// One of the column's `choices` (an option set), stored as text.
    Choice,
}

impl ColumnKind {
    /// SQLite column affinity for this kind.
    pub fn sql_type(self) -> &'static str {
        match self {
            ColumnKind::Text
            | ColumnKind::Date
            | ColumnKind::DateTime
            | ColumnKind::Json
            | ColumnKind::Choice => "TEXT",
            ColumnKind::Integer | ColumnKind::Boolean => "INTEGER",
            ColumnKind::Real => "REAL",
        }
    }

    /// Every kind, as a model file names them.
    pub const NAMES: &'static [&'static str] = &[
        "text", "integer", "real", "boolean", "date", "datetime", "json", "choice",
    ];
}
