//! The data model: the company's tables, columns (kinds, choice lists,
//! defaults, required columns, lookups to other tables) and indexes, as a
//! server loads it from a model file and publishes it in versions.
//!
//! This module owns reading a model file ([`DataModel::parse`], whose errors
//! name the table and column at fault), checking a model on its own
//! ([`DataModel::validate`]) and checking that one version may follow
//! another ([`DataModel::changes_to`]): a model grows (tables, columns,
//! indexes, wider choice lists, optional columns) and may drop what no
//! profile uses; it never retypes a column or narrows what a column
//! accepts, so rows stored under the older version stay valid.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::ident::check_identifier;
use crate::kind::ColumnKind;
use crate::value::Value;

/// Most columns a table of the data model may have.
pub const MAX_COLUMNS_PER_TABLE: usize = 1_000;

/// A column of the data model (and of a synced table). Unknown fields are
/// ignored here, so a device reads a newer server's profile; a model file
/// refuses them ([`DataModel::parse`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ColumnKind,
    /// The allowed values of a `choice` column (an option set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choices: Option<Vec<String>>,
    /// A row created without this column gets this value (and the rows a
    /// model change adds the column to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    /// A row may not leave this column null.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub required: bool,
    /// A lookup: the column holds the primary key of a row of this table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub references: Option<String>,
}

impl Column {
    /// A plain column of `kind`, without constraints.
    pub fn new(name: impl Into<String>, kind: ColumnKind) -> Column {
        Column {
            name: name.into(),
            kind,
            choices: None,
            default: None,
            required: false,
            references: None,
        }
    }

    /// Checks a value written to this column (kind, choice list, JSON
    /// text) and returns it in the column's canonical form.
    pub fn check(&self, value: Value) -> Result<Value, String> {
        let value = value.coerce(self.kind)?;
        if let Value::Text(s) = &value {
            match self.kind {
                ColumnKind::Choice => {
                    let choices = self.choices.as_deref().unwrap_or_default();
                    if !choices.iter().any(|c| c == s) {
                        return Err(format!(
                            "'{}' is not one of the choices ({})",
                            s.chars().take(64).collect::<String>(),
                            choices.join(", ")
                        ));
                    }
                }
                ColumnKind::Json => {
                    if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(s) {
                        return Err(format!("the text is not a JSON document: {e}"));
                    }
                }
                _ => {}
            }
        }
        if self.required && value == Value::Null {
            return Err("the column is required".into());
        }
        Ok(value)
    }
}

/// A table of the server's data model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableSchema {
    pub name: String,
    pub primary_key: String,
    pub columns: Vec<Column>,
    /// Indexes the server builds on this table and devices build on the
    /// columns they hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub indexes: Vec<ModelIndex>,
}

impl TableSchema {
    /// The column with this name.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// The server's data model: every table a profile may name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataModel {
    pub tables: Vec<TableSchema>,
}

impl DataModel {
    /// The table with this name.
    pub fn table(&self, name: &str) -> Option<&TableSchema> {
        self.tables.iter().find(|t| t.name == name)
    }
}

/// Most columns in one model index.
pub const MAX_INDEX_COLUMNS: usize = 8;
/// Most values in one choice list.
pub const MAX_CHOICES: usize = 1_000;
/// Longest value of a choice list, in bytes.
pub const MAX_CHOICE_BYTES: usize = 256;
/// Column names a database keeps for itself (PostgreSQL's system
/// columns, SQLite's row id): a table cannot be given them.
const RESERVED_COLUMNS: &[&str] = &[
    "tableoid", "xmin", "cmin", "xmax", "cmax", "ctid", "oid", "rowid",
];

/// The fields a model file's column may have.
const COLUMN_FIELDS: &[&str] = &[
    "name",
    "type",
    "choices",
    "default",
    "required",
    "references",
];

/// Most tables in a model.
pub const MAX_TABLES: usize = 1_000;

/// An index of the data model on one table. Unknown fields are ignored
/// here (devices read newer servers' profiles); a model file refuses them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelIndex {
    /// Unique within its table.
    pub name: String,
    /// Indexed columns, in order.
    pub columns: Vec<String>,
}

/// One difference between two versions of a data model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum ModelChange {
    AddTable {
        table: String,
    },
    DropTable {
        table: String,
    },
    AddColumn {
        table: String,
        column: String,
    },
    DropColumn {
        table: String,
        column: String,
    },
    /// Choices added, a column made optional, a default or lookup changed.
    RelaxColumn {
        table: String,
        column: String,
    },
    AddIndex {
        table: String,
        index: String,
    },
    DropIndex {
        table: String,
        index: String,
    },
}

fn invalid(message: String) -> Error {
    Error::InvalidModel(message)
}

impl DataModel {
    /// Reads and validates a model file's JSON. Every error names the
    /// table and column at fault (an unknown kind lists the known ones).
    pub fn parse(json: &str) -> Result<DataModel, Error> {
        let raw: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| invalid(format!("the model is not valid JSON: {e}")))?;
        // Unknown kinds first, by name: serde would only say where.
        if let Some(tables) = raw.get("tables").and_then(|t| t.as_array()) {
            for (i, t) in tables.iter().enumerate() {
                let table = t
                    .get("name")
                    .and_then(|n| n.as_str())
                    .map_or_else(|| format!("#{}", i + 1), |n| format!("'{n}'"));
                for ix in t
                    .get("indexes")
                    .and_then(|x| x.as_array())
                    .into_iter()
                    .flatten()
                {
                    if let Some(field) = ix
                        .as_object()
                        .and_then(|o| o.keys().find(|k| *k != "name" && *k != "columns"))
                    {
                        return Err(invalid(format!(
                            "table {table}, an index: unknown field \"{field}\" (the fields are name, columns)"
                        )));
                    }
                }
                for c in t
                    .get("columns")
                    .and_then(|c| c.as_array())
                    .into_iter()
                    .flatten()
                {
                    let column = c.get("name").and_then(|n| n.as_str()).unwrap_or("?");
                    if let Some(field) = c
                        .as_object()
                        .and_then(|o| o.keys().find(|k| !COLUMN_FIELDS.contains(&k.as_str())))
                    {
                        return Err(invalid(format!(
                            "table {table}, column '{column}': unknown field \"{field}\" (the fields are {})",
                            COLUMN_FIELDS.join(", ")
                        )));
                    }
                    match c.get("type") {
                        Some(serde_json::Value::String(k))
                            if ColumnKind::NAMES.contains(&k.as_str()) => {}
                        Some(k) => {
                            return Err(invalid(format!(
                                "table {table}, column '{column}': unknown kind {k} (the kinds are {})",
                                ColumnKind::NAMES.join(", ")
                            )));
                        }
                        None => {
                            return Err(invalid(format!(
                                "table {table}, column '{column}' has no \"type\" (one of {})",
                                ColumnKind::NAMES.join(", ")
                            )));
                        }
                    }
                }
            }
        }
        let model: DataModel = serde_json::from_value(raw)
            .map_err(|e| invalid(format!("the model does not read: {e}")))?;
        model.validate()?;
        Ok(model)
    }

    /// Checks the model on its own: names, keys, kinds' constraints,
    /// lookups and indexes. The first problem is named.
    pub fn validate(&self) -> Result<(), Error> {
        if self.tables.is_empty() {
            return Err(invalid("the model has no table".into()));
        }
        if self.tables.len() > MAX_TABLES {
            return Err(invalid(format!(
                "the model has {} tables; at most {MAX_TABLES} are allowed",
                self.tables.len()
            )));
        }
        let mut seen = BTreeSet::new();
        for t in &self.tables {
            check_identifier(&t.name).map_err(|e| invalid(format!("table name: {e}")))?;
            if !seen.insert(&t.name) {
                return Err(invalid(format!("table '{}' is defined twice", t.name)));
            }
            validate_table(self, t)?;
        }
        Ok(())
    }

    /// What changes from this model to `new`, refusing a change that would
    /// leave stored rows invalid or a device unable to follow: a changed
    /// primary key, a retyped column, a narrowed choice list, a column made
    /// required. Whether a dropped table or column is still used by a
    /// profile is the server's to check (it holds the profiles).
    pub fn changes_to(&self, new: &DataModel) -> Result<Vec<ModelChange>, Error> {
        new.validate()?;
        let mut out = Vec::new();
        for old in &self.tables {
            let Some(t) = new.table(&old.name) else {
                out.push(ModelChange::DropTable {
                    table: old.name.clone(),
                });
                continue;
            };
            if t.primary_key != old.primary_key {
                return Err(invalid(format!(
                    "table '{}': the primary key cannot change ('{}' to '{}')",
                    t.name, old.primary_key, t.primary_key
                )));
            }
            for oc in &old.columns {
                let Some(c) = t.column(&oc.name) else {
                    out.push(ModelChange::DropColumn {
                        table: t.name.clone(),
                        column: oc.name.clone(),
                    });
                    continue;
                };
                if c.kind != oc.kind {
                    return Err(invalid(format!(
                        "column '{}.{}' cannot change kind ({:?} to {:?}): add a new column instead",
                        t.name, c.name, oc.kind, c.kind
                    )));
                }
                if c.required && !oc.required {
                    return Err(invalid(format!(
                        "column '{}.{}' cannot become required: stored rows may hold no value",
                        t.name, c.name
                    )));
                }
                if let (Some(old_choices), Some(new_choices)) = (&oc.choices, &c.choices)
                    && let Some(gone) = old_choices.iter().find(|v| !new_choices.contains(v))
                {
                    return Err(invalid(format!(
                        "column '{}.{}': choice '{gone}' cannot be removed: stored rows may hold it",
                        t.name, c.name
                    )));
                }
                if c != oc {
                    out.push(ModelChange::RelaxColumn {
                        table: t.name.clone(),
                        column: c.name.clone(),
                    });
                }
            }
            for c in &t.columns {
                if old.column(&c.name).is_none() {
                    if c.required && c.default.is_none() {
                        return Err(invalid(format!(
                            "column '{}.{}' is added as required: give it a default for the rows that exist",
                            t.name, c.name
                        )));
                    }
                    out.push(ModelChange::AddColumn {
                        table: t.name.clone(),
                        column: c.name.clone(),
                    });
                }
            }
            for ix in &old.indexes {
                if !t.indexes.contains(ix) {
                    out.push(ModelChange::DropIndex {
                        table: t.name.clone(),
                        index: ix.name.clone(),
                    });
                }
            }
            for ix in &t.indexes {
                if !old.indexes.contains(ix) {
                    out.push(ModelChange::AddIndex {
                        table: t.name.clone(),
                        index: ix.name.clone(),
                    });
                }
            }
        }
        for t in &new.tables {
            if self.table(&t.name).is_none() {
                out.push(ModelChange::AddTable {
                    table: t.name.clone(),
                });
                for ix in &t.indexes {
                    out.push(ModelChange::AddIndex {
                        table: t.name.clone(),
                        index: ix.name.clone(),
                    });
                }
            }
        }
        Ok(out)
    }
}

fn validate_table(model: &DataModel, t: &TableSchema) -> Result<(), Error> {
    if t.columns.len() > MAX_COLUMNS_PER_TABLE {
        return Err(invalid(format!(
            "table '{}' has {} columns; at most {MAX_COLUMNS_PER_TABLE} are allowed",
            t.name,
            t.columns.len()
        )));
    }
    let mut cols = BTreeSet::new();
    for c in &t.columns {
        check_identifier(&c.name)
            .map_err(|e| invalid(format!("table '{}', column name: {e}", t.name)))?;
        if RESERVED_COLUMNS.contains(&c.name.as_str()) {
            return Err(invalid(format!(
                "column '{}.{}': the name is reserved by the databases ({})",
                t.name,
                c.name,
                RESERVED_COLUMNS.join(", ")
            )));
        }
        if !cols.insert(&c.name) {
            return Err(invalid(format!(
                "column '{}.{}' is defined twice",
                t.name, c.name
            )));
        }
        validate_column(model, t, c)?;
    }
    match t.column(&t.primary_key) {
        Some(c) if c.kind == ColumnKind::Text => {}
        _ => {
            return Err(invalid(format!(
                "table '{}' needs a text primary key column '{}'",
                t.name, t.primary_key
            )));
        }
    }
    let mut names = BTreeSet::new();
    for ix in &t.indexes {
        check_identifier(&ix.name)
            .map_err(|e| invalid(format!("table '{}', index name: {e}", t.name)))?;
        if !names.insert(&ix.name) {
            return Err(invalid(format!(
                "index '{}' of table '{}' is defined twice",
                ix.name, t.name
            )));
        }
        if ix.columns.is_empty() || ix.columns.len() > MAX_INDEX_COLUMNS {
            return Err(invalid(format!(
                "index '{}' of table '{}' needs 1 to {MAX_INDEX_COLUMNS} columns",
                ix.name, t.name
            )));
        }
        let mut listed = BTreeSet::new();
        for c in &ix.columns {
            if t.column(c).is_none() {
                return Err(invalid(format!(
                    "index '{}' of table '{}' names column '{c}', which the table does not have",
                    ix.name, t.name
                )));
            }
            if !listed.insert(c) {
                return Err(invalid(format!(
                    "index '{}' of table '{}' lists column '{c}' twice",
                    ix.name, t.name
                )));
            }
        }
    }
    Ok(())
}

fn validate_column(model: &DataModel, t: &TableSchema, c: &Column) -> Result<(), Error> {
    let at = format!("column '{}.{}'", t.name, c.name);
    match (&c.choices, c.kind) {
        (None, ColumnKind::Choice) => {
            return Err(invalid(format!(
                "{at} is a choice column without \"choices\""
            )));
        }
        (Some(choices), ColumnKind::Choice) => {
            if choices.is_empty() || choices.len() > MAX_CHOICES {
                return Err(invalid(format!("{at} needs 1 to {MAX_CHOICES} choices")));
            }
            let mut seen = BTreeSet::new();
            for v in choices {
                if v.is_empty() || v.len() > MAX_CHOICE_BYTES || v.contains('\0') {
                    return Err(invalid(format!(
                        "{at}: a choice is 1 to {MAX_CHOICE_BYTES} bytes of text"
                    )));
                }
                if !seen.insert(v) {
                    return Err(invalid(format!("{at}: choice '{v}' is listed twice")));
                }
            }
        }
        (Some(_), _) => {
            return Err(invalid(format!(
                "{at} has \"choices\" but is not of kind choice"
            )));
        }
        (None, _) => {}
    }
    if let Some(default) = &c.default {
        if c.name == t.primary_key {
            return Err(invalid(format!(
                "{at} is the primary key and has no default"
            )));
        }
        if *default == Value::Null {
            return Err(invalid(format!(
                "{at}: a null default is no default; leave it out"
            )));
        }
        if matches!(default, Value::Text(s) if s.contains('\0')) {
            return Err(invalid(format!("{at}: the default holds U+0000")));
        }
        let mut plain = c.clone();
        plain.required = false;
        plain
            .check(default.clone())
            .map_err(|e| invalid(format!("{at}: the default does not fit the column: {e}")))?;
    }
    if let Some(other) = &c.references {
        if model.table(other).is_none() {
            return Err(invalid(format!(
                "{at} references table '{other}', which the model does not define"
            )));
        }
        if c.kind != ColumnKind::Text {
            return Err(invalid(format!(
                "{at} references table '{other}' and must be of kind text (keys are text)"
            )));
        }
    }
    Ok(())
}

/// A SQL literal of a default value (checked by [`DataModel::validate`]:
/// never null, never holding U+0000), for `ALTER TABLE … ADD COLUMN …
/// DEFAULT`, where SQL takes no parameter: numbers as written, text
/// quoted with every quote doubled, booleans as 0/1.
pub fn default_literal(value: &Value) -> String {
    match value {
        Value::Null => "NULL".into(),
        Value::Integer(i) => i.to_string(),
        Value::Real(f) if f.is_finite() => format!("{f:?}"),
        Value::Real(_) => "NULL".into(),
        Value::Boolean(b) => i64::from(*b).to_string(),
        Value::Text(s) => format!("'{}'", s.replace('\'', "''")),
    }
}

#[cfg(test)]
mod tests;
