//! The public error of the bindings: a small, stable enum apps branch on,
//! mapped from the core's rich [`fieldsync_core::Error`] in exactly one place
//! ([`From<fieldsync_core::Error>`]), through
//! [`fieldsync_core::Error::report`], which also logs the failures a
//! maintainer must see. Kotlin sees it as the sealed class
//! `FieldSyncException`, Swift as the enum `FieldSyncError`.
//!
//! Every variant carries `reason`, the core's message: it names tables,
//! columns and counts, never field values, so a UI may show it.

use fieldsync_core::{Error as CoreError, ErrorKind};

/// Why an engine call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error, uniffi::Error)]
pub enum FieldSyncError {
    /// The record is not (or no longer) on this device.
    #[error("{reason}")]
    RecordNotFound {
        /// Table that was read.
        table: String,
        /// Record id that was asked for.
        id: String,
        /// Human-readable explanation.
        reason: String,
    },
    /// The server kept its version of a record; the device copy was replaced.
    #[error("{reason}")]
    Conflict {
        /// Table of the record.
        table: String,
        /// Record id.
        id: String,
        /// Human-readable explanation.
        reason: String,
    },
    /// Network or Service Unavailable: no answer, too slow, or a server fault.
    #[error("{reason}")]
    NetworkUnavailable {
        /// Human-readable explanation.
        reason: String,
    },
    /// The server refused the credentials.
    #[error("{reason}")]
    Unauthorized {
        /// Human-readable explanation.
        reason: String,
    },
    /// The call was malformed: unknown table or column, bad value, bad id,
    /// a record that already exists.
    #[error("{reason}")]
    InvalidInput {
        /// Human-readable explanation.
        reason: String,
    },
    /// Reset refused because this many unsynced changes would be lost.
    #[error("{reason}")]
    PendingUploads {
        /// Unsynced local changes.
        count: i64,
        /// Human-readable explanation.
        reason: String,
    },
    /// The local database failed (disk full, corruption, I/O).
    #[error("{reason}")]
    Storage {
        /// Human-readable explanation.
        reason: String,
    },
    /// The device database did not open with the key given: a wrong key,
    /// no key for an encrypted database, or a key for a plain one. Nothing
    /// was read or changed; open again with the right key.
    #[error("{reason}")]
    WrongKey {
        /// Human-readable explanation.
        reason: String,
    },
    /// A bug, or a server answer the protocol does not allow.
    #[error("{reason}")]
    Internal {
        /// Human-readable explanation.
        reason: String,
    },
}

impl From<CoreError> for FieldSyncError {
    fn from(e: CoreError) -> Self {
        let reason = e.to_string();
        match (e.report(), e) {
            (_, CoreError::RecordNotFound { table, id } | CoreError::NotOnServer { table, id }) => {
                FieldSyncError::RecordNotFound { table, id, reason }
            }
            (_, CoreError::Conflict { table, id }) => {
                FieldSyncError::Conflict { table, id, reason }
            }
            (_, CoreError::PendingUploads { count }) => FieldSyncError::PendingUploads {
                count: i64::try_from(count).unwrap_or(i64::MAX),
                reason,
            },
            // A refusal of the server's scope reads as invalid input to the
            // shells (the reason says which rule).
            (
                ErrorKind::RecordNotFound
                | ErrorKind::Conflict
                | ErrorKind::InvalidInput
                | ErrorKind::Forbidden,
                _,
            ) => FieldSyncError::InvalidInput { reason },
            (ErrorKind::PendingUploads | ErrorKind::Internal, _) => {
                FieldSyncError::Internal { reason }
            }
            (ErrorKind::NetworkUnavailable, _) => FieldSyncError::NetworkUnavailable { reason },
            (ErrorKind::Unauthorized, _) => FieldSyncError::Unauthorized { reason },
            (ErrorKind::Storage, _) => FieldSyncError::Storage { reason },
            (ErrorKind::WrongKey, _) => FieldSyncError::WrongKey { reason },
        }
    }
}

/// A foreign callback that threw something else than a `FieldSyncError`.
impl From<uniffi::UnexpectedUniFFICallbackError> for FieldSyncError {
    fn from(e: uniffi::UnexpectedUniFFICallbackError) -> Self {
        FieldSyncError::Internal {
            reason: format!("callback failed: {}", e.reason),
        }
    }
}

/// Checks that a count coming from Kotlin or Swift is not negative.
pub(crate) fn non_negative(name: &str, v: i64) -> Result<u64, FieldSyncError> {
    u64::try_from(v).map_err(|_| FieldSyncError::InvalidInput {
        reason: format!("{name} must not be negative"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_core_error_maps_to_its_public_class() {
        let cases = [
            (
                CoreError::RecordNotFound {
                    table: "t".into(),
                    id: "1".into(),
                },
                "RecordNotFound",
            ),
            (
                CoreError::Conflict {
                    table: "t".into(),
                    id: "1".into(),
                },
                "Conflict",
            ),
            (CoreError::PendingUploads { count: 3 }, "PendingUploads"),
            (
                CoreError::NetworkUnavailable("x".into()),
                "NetworkUnavailable",
            ),
            (CoreError::Unauthorized, "Unauthorized"),
            (CoreError::UnknownTable("t".into()), "InvalidInput"),
            (
                CoreError::AlreadyExists {
                    table: "t".into(),
                    id: "1".into(),
                },
                "InvalidInput",
            ),
            (
                CoreError::Server {
                    status: 503,
                    code: "x".into(),
                    message: "down".into(),
                },
                "NetworkUnavailable",
            ),
            (
                CoreError::Server {
                    status: 401,
                    code: "x".into(),
                    message: "no".into(),
                },
                "Unauthorized",
            ),
            (CoreError::StorageFull("disk".into()), "Storage"),
            (CoreError::Storage("io".into()), "Storage"),
            (CoreError::Protocol("bad".into()), "Internal"),
            (CoreError::Internal("bug".into()), "Internal"),
            (CoreError::WrongKey("wrong".into()), "WrongKey"),
        ];
        for (core, want) in cases {
            let text = core.to_string();
            let public = FieldSyncError::from(core);
            let got = format!("{public:?}");
            assert!(got.starts_with(want), "{got} should be {want}");
            assert_eq!(public.to_string(), text, "the reason is the core's message");
        }
        assert!(matches!(
            FieldSyncError::from(CoreError::PendingUploads { count: 3 }),
            FieldSyncError::PendingUploads { count: 3, .. }
        ));
    }

    /// What the shared protocol code refuses (a filter, a name, a data
    /// model, a profile's time zone) reaches the shells as invalid input,
    /// with the protocol crate's message, as before it had its own crate.
    #[test]
    fn protocol_errors_reach_the_shells_as_invalid_input() {
        use fieldsync_core::{filter::Filter, model::DataModel, profile};
        let refusals = [
            Filter::from_json("not a filter").expect_err("refused"),
            profile::check_identifier("Bad Name").expect_err("refused"),
            profile::check_time_zone("Mars/Olympus").expect_err("refused"),
            DataModel::parse("{\"tables\": 3}").expect_err("refused"),
        ];
        for refusal in refusals {
            let text = refusal.to_string();
            let public = FieldSyncError::from(CoreError::from(refusal));
            assert_eq!(public, FieldSyncError::InvalidInput { reason: text });
        }
    }
}
