//! Field values and records: the plain data that crosses every boundary
//! (SQLite on the device, JSON on the wire, UniFFI to Kotlin and Swift).
//!
//! A record is a primary key, the server version it was based on, and a map of
//! column name to [`Value`]. Values are typed by the column kinds of the offline
//! profile ([`crate::kind::ColumnKind`]); booleans are stored as 0/1 in SQLite
//! and turned back into booleans when read.

use std::collections::BTreeMap;

#[cfg(feature = "sqlite")]
use rusqlite::types::{ToSqlOutput, ValueRef};
use serde::{Deserialize, Serialize};

use crate::kind::ColumnKind;

/// Text read from SQLite, which does not check that what it stores as text
/// is UTF-8: borrowed when it is (the common case, checked a word at a
/// time), with U+FFFD for each invalid sequence otherwise. (The standard
/// `from_utf8_lossy` alone walks every byte; a page of rows spent 3% of the
/// server's time there.)
pub fn utf8_text(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => std::borrow::Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// One field value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Boolean(bool),
}

impl Value {
    /// Converts a JSON value into a field value; arrays and objects are not field values.
    pub fn from_json(v: &serde_json::Value) -> Option<Value> {
        Some(match v {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Boolean(*b),
            serde_json::Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Value::Integer(i)
                } else {
                    Value::Real(n.as_f64()?)
                }
            }
            serde_json::Value::String(s) => Value::Text(s.clone()),
            _ => return None,
        })
    }

    /// The JSON form of this value (non-finite reals become null).
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Null => serde_json::Value::Null,
            Value::Integer(i) => (*i).into(),
            Value::Real(f) => serde_json::Number::from_f64(*f)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
            Value::Text(s) => serde_json::Value::String(s.clone()),
            Value::Boolean(b) => serde_json::Value::Bool(*b),
        }
    }

    /// Reads a value typed as text (a command line's `column=value`) as the
    /// column's kind says: `notes=123` is the text "123", `quantity=3` the
    /// integer 3. `null` (for any kind) is null; booleans are `true`,
    /// `false`, `1` or `0`.
    pub fn parse_as(kind: ColumnKind, text: &str) -> Result<Value, String> {
        if text == "null" {
            return Ok(Value::Null);
        }
        match kind {
            ColumnKind::Text
            | ColumnKind::Date
            | ColumnKind::DateTime
            | ColumnKind::Json
            | ColumnKind::Choice => Value::Text(text.to_owned()).coerce(kind),
            ColumnKind::Integer => text
                .trim()
                .parse::<i64>()
                .map(Value::Integer)
                .map_err(|_| format!("'{text}' is not an integer")),
            ColumnKind::Real => match text.trim().parse::<f64>() {
                Ok(f) if f.is_finite() => Ok(Value::Real(f)),
                _ => Err(format!("'{text}' is not a number")),
            },
            ColumnKind::Boolean => match text.trim().to_ascii_lowercase().as_str() {
                "true" | "1" => Ok(Value::Boolean(true)),
                "false" | "0" => Ok(Value::Boolean(false)),
                _ => Err(format!("'{text}' is not a boolean (true or false)")),
            },
        }
    }

    /// Checks this value against a column kind and returns it in the column's
    /// canonical form (integers widen to reals; 0/1 become booleans).
    pub fn coerce(self, kind: ColumnKind) -> Result<Value, String> {
        match (kind, self) {
            (_, Value::Null) => Ok(Value::Null),
            (
                ColumnKind::Text
                | ColumnKind::Date
                | ColumnKind::DateTime
                | ColumnKind::Json
                | ColumnKind::Choice,
                Value::Text(s),
            ) => {
                if matches!(kind, ColumnKind::Date) && !crate::time::is_date(&s) {
                    return Err(format!("'{s}' is not a date (YYYY-MM-DD)"));
                }
                if matches!(kind, ColumnKind::DateTime) && !crate::time::is_datetime(&s) {
                    return Err(format!(
                        "'{s}' is not a UTC date-time (YYYY-MM-DDTHH:MM:SSZ)"
                    ));
                }
                Ok(Value::Text(s))
            }
            (ColumnKind::Integer, Value::Integer(i)) => Ok(Value::Integer(i)),
            (ColumnKind::Real, Value::Integer(i)) => Ok(Value::Real(i as f64)),
            (ColumnKind::Real, Value::Real(f)) if f.is_finite() => Ok(Value::Real(f)),
            (ColumnKind::Boolean, Value::Boolean(b)) => Ok(Value::Boolean(b)),
            (ColumnKind::Boolean, Value::Integer(i)) if i == 0 || i == 1 => {
                Ok(Value::Boolean(i == 1))
            }
            (kind, v) => Err(format!("{} is not a valid {kind:?} value", v.type_name())),
        }
    }

    /// Checks this value against a column kind without taking it: `None`
    /// when it is already in the column's canonical form (the common case),
    /// the converted value when it must change (integers to reals, 0/1 to
    /// booleans), or the error [`Value::coerce`] would give.
    pub fn converted_for(&self, kind: ColumnKind) -> Result<Option<Value>, String> {
        match (kind, self) {
            (_, Value::Null) => Ok(None),
            (ColumnKind::Text | ColumnKind::Json | ColumnKind::Choice, Value::Text(_)) => Ok(None),
            (ColumnKind::Date, Value::Text(s)) if crate::time::is_date(s) => Ok(None),
            (ColumnKind::DateTime, Value::Text(s)) if crate::time::is_datetime(s) => Ok(None),
            (ColumnKind::Integer, Value::Integer(_)) => Ok(None),
            (ColumnKind::Real, Value::Real(f)) if f.is_finite() => Ok(None),
            (ColumnKind::Real, Value::Integer(i)) => Ok(Some(Value::Real(*i as f64))),
            (ColumnKind::Boolean, Value::Boolean(_)) => Ok(None),
            (ColumnKind::Boolean, Value::Integer(i)) if *i == 0 || *i == 1 => {
                Ok(Some(Value::Boolean(*i == 1)))
            }
            _ => self.clone().coerce(kind).map(Some),
        }
    }

    /// A short name of this value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Integer(_) => "integer",
            Value::Real(_) => "real",
            Value::Text(_) => "text",
            Value::Boolean(_) => "boolean",
        }
    }

    /// Reads a SQLite value as the given column kind.
    #[cfg(feature = "sqlite")]
    pub fn from_sql(v: ValueRef<'_>, kind: ColumnKind) -> Value {
        match v {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(i) => match kind {
                ColumnKind::Boolean => Value::Boolean(i != 0),
                ColumnKind::Real => Value::Real(i as f64),
                _ => Value::Integer(i),
            },
            ValueRef::Real(f) => Value::Real(f),
            ValueRef::Text(t) | ValueRef::Blob(t) => Value::Text(utf8_text(t).into_owned()),
        }
    }

    /// Approximate encoded size in bytes, for size limits.
    pub fn approx_size(&self) -> usize {
        match self {
            Value::Text(s) => s.len() + 2,
            _ => 8,
        }
    }
}

#[cfg(feature = "sqlite")]
impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Integer(i) => ToSqlOutput::Borrowed(ValueRef::Integer(*i)),
            Value::Real(f) => ToSqlOutput::Borrowed(ValueRef::Real(*f)),
            Value::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Value::Boolean(b) => ToSqlOutput::Borrowed(ValueRef::Integer(i64::from(*b))),
        })
    }
}

impl Serialize for Value {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null => s.serialize_unit(),
            Value::Integer(i) => s.serialize_i64(*i),
            Value::Real(f) if f.is_finite() => s.serialize_f64(*f),
            Value::Real(_) => s.serialize_unit(),
            Value::Text(t) => s.serialize_str(t),
            Value::Boolean(b) => s.serialize_bool(*b),
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Value;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("null, a boolean, a number or a string")
            }
            fn visit_unit<E>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }
            fn visit_none<E>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
                Ok(Value::Boolean(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
                Ok(Value::Integer(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Value, E> {
                i64::try_from(v)
                    .map(Value::Integer)
                    .map_err(|_| E::custom("integer out of range"))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
                Ok(Value::Real(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Value, E> {
                Ok(Value::Text(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<Value, E> {
                Ok(Value::Text(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// A row of a synced table as the app sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Name of the table.
    pub table: String,
    /// Primary key.
    pub id: String,
    /// Server version this copy is based on (0: created on this device, not yet uploaded).
    pub version: i64,
    /// Column values, primary key included.
    pub fields: BTreeMap<String, Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_read_from_sqlite_is_borrowed_when_valid_and_replaced_where_not() {
        let valid = "Chiller 42 – Kältemaschine".as_bytes();
        assert!(matches!(utf8_text(valid), std::borrow::Cow::Borrowed(t) if t.as_bytes() == valid));
        assert_eq!(utf8_text(b"ok \xff\xfe end"), "ok \u{FFFD}\u{FFFD} end");
        assert_eq!(utf8_text(b"cut \xe2\x82"), "cut \u{FFFD}");
    }

    #[test]
    fn text_from_a_command_line_is_read_as_the_columns_kind() {
        use ColumnKind::*;
        assert_eq!(Value::parse_as(Text, "123"), Ok(Value::Text("123".into())));
        assert_eq!(
            Value::parse_as(Text, "true"),
            Ok(Value::Text("true".into()))
        );
        assert_eq!(Value::parse_as(Integer, "123"), Ok(Value::Integer(123)));
        assert_eq!(Value::parse_as(Real, "2"), Ok(Value::Real(2.0)));
        assert_eq!(Value::parse_as(Boolean, "0"), Ok(Value::Boolean(false)));
        assert_eq!(Value::parse_as(Text, "null"), Ok(Value::Null));
        assert!(Value::parse_as(Integer, "12a").is_err());
        assert!(Value::parse_as(Real, "NaN").is_err());
        assert!(Value::parse_as(Date, "2026-13-45").is_err());
        assert!(Value::parse_as(Boolean, "yes").is_err());
    }

    #[test]
    fn converted_for_agrees_with_coerce() {
        let kinds = [
            ColumnKind::Text,
            ColumnKind::Integer,
            ColumnKind::Real,
            ColumnKind::Boolean,
            ColumnKind::Date,
            ColumnKind::DateTime,
        ];
        let values = [
            Value::Null,
            Value::Integer(0),
            Value::Integer(1),
            Value::Integer(7),
            Value::Real(1.5),
            Value::Real(f64::NAN),
            Value::Boolean(true),
            Value::Text("x".into()),
            Value::Text("2026-01-02".into()),
            Value::Text("2026-01-02T03:04:05Z".into()),
        ];
        for kind in kinds {
            for v in &values {
                let by_ref = v
                    .converted_for(kind)
                    .map(|c| c.unwrap_or_else(|| v.clone()));
                let by_value = v.clone().coerce(kind);
                match (by_ref, by_value) {
                    (Ok(a), Ok(b)) => assert!(
                        a == b
                            || matches!((&a, &b), (Value::Real(x), Value::Real(y)) if x.is_nan() && y.is_nan()),
                        "{kind:?} {v:?}"
                    ),
                    (Err(a), Err(b)) => assert_eq!(a, b, "{kind:?} {v:?}"),
                    (a, b) => panic!("{kind:?} {v:?}: {a:?} vs {b:?}"),
                }
            }
        }
    }
}
