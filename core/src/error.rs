//! Errors of the device engine.
//!
//! [`Error`] is the rich error used inside the core and by the headless
//! device. [`ErrorKind`] is the small, stable classification a UI (and the
//! FFI layer) branches on; [`Error::kind`] is the one place that maps the
//! first to the second. Messages name tables, columns and counts, never
//! field values, so they carry no personal data.

use thiserror::Error;

/// The stable classes of failure an app reacts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The record is not (or no longer) on this device.
    RecordNotFound,
    /// The server kept its version of a record; the device copy was replaced.
    Conflict,
    /// Network or Service Unavailable: no answer, too slow, or a server fault.
    NetworkUnavailable,
    /// The server refused the credentials.
    Unauthorized,
    /// The server knows the caller but does not let them do this (a table
    /// outside their offline profile and the online-access list, a write
    /// their role may not make on the server).
    Forbidden,
    /// The request was malformed or refers to something that does not exist.
    InvalidInput,
    /// Reset refused because unsynced changes would be lost.
    PendingUploads,
    /// The local database failed (disk full, corruption, I/O).
    Storage,
    /// The device database did not open with the key given: a wrong key, no
    /// key for an encrypted database, or a key for a plain one. Nothing was
    /// read or changed.
    WrongKey,
    /// The server answered something the protocol does not allow, or a bug.
    Internal,
}

impl ErrorKind {
    /// The kind's stable name in JSON output and telemetry (`wrong_key`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Internal => "internal",
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::RecordNotFound => "record_not_found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::NetworkUnavailable => "network_unavailable",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::PendingUploads => "pending_uploads",
            ErrorKind::Storage => "storage",
            ErrorKind::WrongKey => "wrong_key",
        }
    }
}

/// Errors returned by the device engine.
#[derive(Debug, Error)]
pub enum Error {
    #[error("Record Not Found: {table}/{id} is not on this device")]
    RecordNotFound { table: String, id: String },
    /// An online read of a record the server does not have (or does not
    /// show the caller).
    #[error("Record Not Found: {table}/{id} is not on the server")]
    NotOnServer { table: String, id: String },
    /// A table named before the device has an offline profile.
    #[error("no offline profile on this device yet (sync once first), so table '{0}' is unknown")]
    NoProfile(String),
    #[error("record {table}/{id} already exists")]
    AlreadyExists { table: String, id: String },
    #[error("unknown table '{0}'")]
    UnknownTable(String),
    #[error("unknown column '{column}' in table '{table}'")]
    UnknownColumn { table: String, column: String },
    /// A filter, offline profile, data model or value that does not hold,
    /// as the shared protocol code found it (kept as the source).
    #[error("{0}")]
    Invalid(#[from] fieldsync_protocol::Error),
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("not allowed: {0}")]
    NotAllowed(String),
    #[error("sync conflict on {table}/{id}: the server's version was kept")]
    Conflict { table: String, id: String },
    #[error(
        "reset refused: {count} unsynced change(s) would be lost (reset with force to discard them)"
    )]
    PendingUploads { count: u64 },
    #[error("Network or Service Unavailable: {0}")]
    NetworkUnavailable(String),
    #[error("unauthorized: the server refused the credentials")]
    Unauthorized,
    #[error("server refused the request ({status} {code}): {message}")]
    Server {
        status: u16,
        code: String,
        message: String,
    },
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("storage is full: {0}")]
    StorageFull(String),
    #[error("storage error: {0}")]
    Storage(String),
    /// A JSON document the device database holds (`what`: the stored
    /// profile, an outbox entry's data) that no longer decodes; the serde
    /// error kept as the source.
    #[error("storage error: corrupt stored {what}: {source}")]
    CorruptStored {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// A failure of the device database, its SQLite error kept as the
    /// source (extended code included) for logs and diagnosis.
    #[error("{}", sqlite_message(.0))]
    Sqlite(#[source] rusqlite::Error),
    /// A JSON document of the engine's own (an outbox entry, a request it
    /// built) that did not encode or decode; the serde error kept as the
    /// source.
    #[error("internal error: JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("wrong database key: {0}")]
    WrongKey(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The stable class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::RecordNotFound { .. } | Error::NotOnServer { .. } => ErrorKind::RecordNotFound,
            Error::Conflict { .. } => ErrorKind::Conflict,
            Error::AlreadyExists { .. }
            | Error::UnknownTable(_)
            | Error::NoProfile(_)
            | Error::UnknownColumn { .. }
            | Error::Invalid(_)
            | Error::InvalidInput(_)
            | Error::NotAllowed(_) => ErrorKind::InvalidInput,
            Error::PendingUploads { .. } => ErrorKind::PendingUploads,
            Error::NetworkUnavailable(_) => ErrorKind::NetworkUnavailable,
            Error::Unauthorized => ErrorKind::Unauthorized,
            Error::Server { status, .. } if *status >= 500 => ErrorKind::NetworkUnavailable,
            Error::Server { status, .. } if *status == 401 => ErrorKind::Unauthorized,
            Error::Server { status, .. } if *status == 403 => ErrorKind::Forbidden,
            Error::Server { .. } => ErrorKind::InvalidInput,
            Error::StorageFull(_)
            | Error::Storage(_)
            | Error::CorruptStored { .. }
            | Error::Sqlite(_) => ErrorKind::Storage,
            Error::WrongKey(_) => ErrorKind::WrongKey,
            Error::Protocol(_) | Error::Internal(_) | Error::Json(_) => ErrorKind::Internal,
        }
    }

    /// The public kind of this error as it leaves the library (the
    /// bindings call this, once per error), logging it when it is one a
    /// maintainer must see: storage failures and internal errors, with
    /// their causes. The others (a record not found, bad input, no network,
    /// refused credentials, pending uploads, a wrong key) are outcomes the
    /// app shows and are not logged here.
    pub fn report(&self) -> ErrorKind {
        let kind = self.kind();
        if matches!(kind, ErrorKind::Storage | ErrorKind::Internal) {
            let mut causes = Vec::new();
            let mut source = std::error::Error::source(self);
            while let Some(s) = source {
                causes.push(s.to_string());
                source = s.source();
            }
            tracing::error!(
                target: "fieldsync::error",
                kind = kind.as_str(),
                error = %self,
                causes = ?causes,
                "operation failed"
            );
        }
        kind
    }

    /// True for failures a later retry may cure (network, server faults).
    pub fn is_transient(&self) -> bool {
        matches!(self.kind(), ErrorKind::NetworkUnavailable)
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::Sqlite(e)
    }
}

/// Whether `e` is SQLite's "database or disk is full".
pub(crate) fn is_disk_full(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DiskFull)
}

/// What a user reads of a SQLite failure: a full disk said as such, the
/// rest with SQLite's own message.
fn sqlite_message(e: &rusqlite::Error) -> String {
    if is_disk_full(e) {
        format!("storage is full: {e}")
    } else {
        format!("storage error: {e}")
    }
}

/// Result alias of the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    fn busy() -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY_SNAPSHOT),
            Some("database is locked".into()),
        )
    }

    #[test]
    fn a_sqlite_failure_keeps_its_cause_and_extended_code() {
        let e = Error::from(busy());
        assert_eq!(e.kind(), ErrorKind::Storage);
        assert_eq!(e.to_string(), "storage error: database is locked");
        let source = e.source().expect("the SQLite error is the source");
        let sqlite = source
            .downcast_ref::<rusqlite::Error>()
            .expect("a rusqlite error");
        assert_eq!(
            sqlite.sqlite_error().map(|f| f.extended_code),
            Some(rusqlite::ffi::SQLITE_BUSY_SNAPSHOT)
        );
    }

    #[test]
    fn a_json_failure_keeps_its_cause_and_reads_as_before() {
        let cause = serde_json::from_str::<u32>("x").expect_err("not a number");
        let text = cause.to_string();
        let e = Error::from(cause);
        assert_eq!(e.kind(), ErrorKind::Internal);
        assert_eq!(e.to_string(), format!("internal error: JSON: {text}"));
        let source = e.source().expect("the serde error is the source");
        assert!(source.downcast_ref::<serde_json::Error>().is_some());
    }

    #[test]
    fn report_gives_the_kind_of_every_error() {
        let cases = [
            Error::from(busy()),
            Error::Internal("bug".into()),
            Error::UnknownTable("t".into()),
            Error::NetworkUnavailable("down".into()),
            Error::PendingUploads { count: 2 },
            Error::WrongKey("k".into()),
        ];
        for e in cases {
            assert_eq!(e.report(), e.kind(), "{e}");
        }
    }

    #[test]
    fn a_full_disk_says_so_and_is_a_storage_error() {
        let full = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            None,
        );
        let e = Error::from(full);
        assert_eq!(e.kind(), ErrorKind::Storage);
        assert!(e.to_string().starts_with("storage is full: "), "{e}");
    }

    #[test]
    fn a_protocol_error_keeps_its_cause_and_is_invalid_input() {
        let refused = crate::profile::check_time_zone("Mars/Olympus").expect_err("refused");
        let e = Error::from(refused.clone());
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert_eq!(e.to_string(), refused.to_string());
        assert!(
            e.to_string().starts_with("invalid offline profile: "),
            "{e}"
        );
        let source = e.source().expect("the protocol error is the source");
        assert_eq!(
            source.downcast_ref::<fieldsync_protocol::Error>(),
            Some(&refused)
        );
    }
}
