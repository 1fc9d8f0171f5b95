//! Plain data of the engine as Kotlin and Swift see it: field values,
//! records, the reports of sync and reset, and sync errors. Each type is
//! converted from (and, for values, to) its core type with `From`.
//!
//! Counts cross the boundary as signed 64-bit integers (Kotlin `Long`, Swift
//! `Int64`) rather than unsigned ones, which Java cannot call comfortably.

use std::collections::{BTreeMap, HashMap};

use fieldsync_core::profile::ColumnKind as CoreColumnKind;
use fieldsync_core::{
    LocalSyncError, Record as CoreRecord, ResetReport as CoreResetReport,
    SyncReport as CoreSyncReport, TableReport as CoreTableReport, Value as CoreValue,
};

/// Saturating conversion of a core count.
pub(crate) fn count(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// One field value of a record.
#[derive(Debug, Clone, PartialEq, uniffi::Enum)]
pub enum Value {
    /// No value.
    Null,
    /// A whole number.
    Integer {
        /// The number.
        value: i64,
    },
    /// A floating-point number (finite).
    Real {
        /// The number.
        value: f64,
    },
    /// Text; dates are `YYYY-MM-DD`, date-times `YYYY-MM-DDTHH:MM:SSZ`.
    Text {
        /// The text.
        value: String,
    },
    /// True or false.
    Boolean {
        /// The flag.
        value: bool,
    },
}

impl From<CoreValue> for Value {
    fn from(v: CoreValue) -> Self {
        match v {
            CoreValue::Null => Value::Null,
            CoreValue::Integer(value) => Value::Integer { value },
            CoreValue::Real(value) => Value::Real { value },
            CoreValue::Text(value) => Value::Text { value },
            CoreValue::Boolean(value) => Value::Boolean { value },
        }
    }
}

impl From<Value> for CoreValue {
    fn from(v: Value) -> Self {
        match v {
            Value::Null => CoreValue::Null,
            Value::Integer { value } => CoreValue::Integer(value),
            Value::Real { value } => CoreValue::Real(value),
            Value::Text { value } => CoreValue::Text(value),
            Value::Boolean { value } => CoreValue::Boolean(value),
        }
    }
}

/// Converts a field map from the foreign side to the core's.
pub(crate) fn core_fields(fields: HashMap<String, Value>) -> BTreeMap<String, CoreValue> {
    fields.into_iter().map(|(k, v)| (k, v.into())).collect()
}

/// Converts a field map from the core to the foreign side.
pub(crate) fn fields(fields: BTreeMap<String, CoreValue>) -> HashMap<String, Value> {
    fields.into_iter().map(|(k, v)| (k, v.into())).collect()
}

/// A row of a synced table as the app sees it.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct Record {
    /// Name of the table.
    pub table: String,
    /// Primary key.
    pub id: String,
    /// Server version this copy is based on (0: created on this device, not yet uploaded).
    pub version: i64,
    /// Column values, primary key included.
    pub fields: HashMap<String, Value>,
}

impl From<CoreRecord> for Record {
    fn from(r: CoreRecord) -> Self {
        Record {
            table: r.table,
            id: r.id,
            version: r.version,
            fields: fields(r.fields),
        }
    }
}

/// The kind of a column in the offline profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum ColumnKind {
    /// Text.
    Text,
    /// Whole number.
    Integer,
    /// Floating-point number.
    Real,
    /// True or false.
    Boolean,
    /// A date, `YYYY-MM-DD` text.
    Date,
    /// A UTC date-time, `YYYY-MM-DDTHH:MM:SSZ` text.
    DateTime,
    /// A JSON document, as its text.
    Json,
    /// One of the column's choices (an option set), as text.
    Choice,
}

impl From<CoreColumnKind> for ColumnKind {
    fn from(k: CoreColumnKind) -> Self {
        match k {
            CoreColumnKind::Text => ColumnKind::Text,
            CoreColumnKind::Integer => ColumnKind::Integer,
            CoreColumnKind::Real => ColumnKind::Real,
            CoreColumnKind::Boolean => ColumnKind::Boolean,
            CoreColumnKind::Date => ColumnKind::Date,
            CoreColumnKind::DateTime => ColumnKind::DateTime,
            CoreColumnKind::Json => ColumnKind::Json,
            CoreColumnKind::Choice => ColumnKind::Choice,
        }
    }
}

/// Whether the server kept its version or refused the change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum SyncErrorKind {
    /// Conflict detection was on and the server kept its version of the record.
    Conflict,
    /// The server refused the change (a rule or a value it does not accept).
    Rejected,
}

/// What a local change did to its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum RecordAction {
    /// The record was created.
    Insert,
    /// Fields of the record were changed.
    Update,
    /// The record was deleted.
    Delete,
}

/// A sync error kept on the device: a local change the server did not apply.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct SyncError {
    /// Local id of the entry.
    pub id: i64,
    /// When it happened, milliseconds since the epoch.
    pub at_ms: i64,
    /// Conflict or rejection.
    pub kind: SyncErrorKind,
    /// Table of the record.
    pub table: String,
    /// Record id.
    pub record_id: String,
    /// What the local change did.
    pub action: RecordAction,
    /// The server's explanation.
    pub reason: String,
    /// The device's version of the fields, when known.
    pub device_data: Option<HashMap<String, Value>>,
    /// The server's version of the record (now also on the device), when it exists.
    pub server_data: Option<HashMap<String, Value>>,
}

impl From<LocalSyncError> for SyncError {
    fn from(e: LocalSyncError) -> Self {
        SyncError {
            id: e.id,
            at_ms: e.at,
            kind: if e.kind == "conflict" {
                SyncErrorKind::Conflict
            } else {
                SyncErrorKind::Rejected
            },
            table: e.table,
            record_id: e.record_id,
            action: match e.action.as_str() {
                "insert" => RecordAction::Insert,
                "delete" => RecordAction::Delete,
                _ => RecordAction::Update,
            },
            reason: e.message,
            device_data: e.device_data.map(fields),
            server_data: e.server_data.map(fields),
        }
    }
}

/// What one sync did to one table.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct TableReport {
    /// Name of the table.
    pub table: String,
    /// True while the table's first download was (still) under way.
    pub initial: bool,
    /// Pages downloaded.
    pub pages: i64,
    /// Rows inserted or updated on the device.
    pub rows_upserted: i64,
    /// Rows removed from the device (deleted, or no longer in the offline profile).
    pub rows_removed: i64,
    /// Downloaded rows left alone because a local change waits for upload.
    pub rows_kept_pending: i64,
    /// Bytes downloaded for this table.
    pub bytes_down: i64,
}

impl From<CoreTableReport> for TableReport {
    fn from(t: CoreTableReport) -> Self {
        TableReport {
            table: t.table,
            initial: t.initial,
            pages: count(t.pages),
            rows_upserted: count(t.rows_upserted),
            rows_removed: count(t.rows_removed),
            rows_kept_pending: count(t.rows_kept_pending),
            bytes_down: count(t.bytes_down),
        }
    }
}

/// What one sync did.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct SyncReport {
    /// Start time, milliseconds since the epoch.
    pub started_at_ms: i64,
    /// Duration in milliseconds.
    pub duration_ms: i64,
    /// Local changes the server applied.
    pub uploaded: i64,
    /// Local changes where the server kept its version (conflict detection on).
    pub conflicts: Vec<SyncError>,
    /// Local changes the server refused.
    pub rejected: Vec<SyncError>,
    /// Per-table results.
    pub tables: Vec<TableReport>,
    /// Version of the offline profile in force after the sync.
    pub profile_version: i64,
    /// True when the sync picked up a changed offline profile.
    pub profile_changed: bool,
    /// Tables the changed profile added (downloaded by this sync).
    pub tables_added: Vec<String>,
    /// Tables the changed profile dropped (removed from the device).
    pub tables_dropped: Vec<String>,
    /// Bytes uploaded.
    pub bytes_up: i64,
    /// Bytes downloaded.
    pub bytes_down: i64,
    /// Tables not downloaded because the server reported nothing new for
    /// them (smart sync); they count as synced.
    pub skipped_unchanged: Vec<String>,
}

impl From<CoreSyncReport> for SyncReport {
    fn from(r: CoreSyncReport) -> Self {
        SyncReport {
            started_at_ms: r.started_at,
            duration_ms: r.duration_ms,
            uploaded: count(r.uploaded),
            conflicts: r.conflicts.into_iter().map(Into::into).collect(),
            rejected: r.rejected.into_iter().map(Into::into).collect(),
            tables: r.tables.into_iter().map(Into::into).collect(),
            profile_version: r.profile_version,
            profile_changed: r.profile_changed,
            tables_added: r.tables_added,
            tables_dropped: r.tables_dropped,
            bytes_up: count(r.bytes_up),
            bytes_down: count(r.bytes_down),
            skipped_unchanged: r.skipped_unchanged,
        }
    }
}

/// What a reset did.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ResetReport {
    /// Unsynced changes that were discarded (only with force).
    pub discarded_changes: i64,
}

impl From<CoreResetReport> for ResetReport {
    fn from(r: CoreResetReport) -> Self {
        ResetReport {
            discarded_changes: count(r.discarded_changes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_through_the_core_type() {
        let all = [
            Value::Null,
            Value::Integer { value: -7 },
            Value::Real { value: 2.5 },
            Value::Text {
                value: "zürich".into(),
            },
            Value::Boolean { value: true },
        ];
        for v in all {
            assert_eq!(Value::from(CoreValue::from(v.clone())), v);
        }
    }

    #[test]
    fn sync_error_kinds_and_actions_are_typed() {
        let e = LocalSyncError {
            id: 4,
            at: 10,
            kind: "conflict".into(),
            table: "bookings".into(),
            record_id: "b1".into(),
            action: "delete".into(),
            message: "kept".into(),
            device_data: None,
            server_data: Some(BTreeMap::from([("n".into(), CoreValue::Integer(1))])),
        };
        let s = SyncError::from(e);
        assert_eq!(s.kind, SyncErrorKind::Conflict);
        assert_eq!(s.action, RecordAction::Delete);
        assert_eq!(
            s.server_data.unwrap()["n"],
            Value::Integer { value: 1 },
            "server data is converted"
        );
    }

    #[test]
    fn huge_counts_saturate() {
        assert_eq!(count(u64::MAX), i64::MAX);
        assert_eq!(count(3), 3);
    }
}
