//! The server's error type and its one mapping onto HTTP: every failure
//! becomes a status code and a JSON body `{"error": {"code", "message"}}`
//! (see `docs/protocol.md`). Storage failures ([`StoreError`]) are mapped
//! here, once.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use fieldsync_protocol::protocol::{ErrorBody, ErrorResponse, codes};

use crate::store_error::StoreError;

/// An error answered to a client.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            codes::UNAUTHORIZED,
            "missing or unknown bearer token",
        )
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, codes::FORBIDDEN, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, codes::NOT_FOUND, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, codes::INTERNAL, message)
    }
    /// The wire form of this error.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            code: self.code.to_owned(),
            message: self.message.clone(),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(code = self.code, message = %self.message, "request failed");
        }
        (self.status, Json(ErrorResponse { error: self.body() })).into_response()
    }
}

/// The one mapping of a storage failure onto HTTP. Domain outcomes keep
/// their message; a failure of the database itself is logged here with its
/// whole chain of causes and answered with a fixed message (503 when a retry
/// may succeed: busy, full, connection lost), never with its internals.
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let unavailable = match e {
            StoreError::Invalid { code, message } => return ApiError::bad_request(code, message),
            StoreError::NotFound(m) => return ApiError::not_found(m),
            StoreError::Forbidden(m) => return ApiError::forbidden(m),
            StoreError::Conflict { code, message } => {
                return ApiError::new(StatusCode::CONFLICT, code, message);
            }
            StoreError::TooLarge { code, message } => {
                return ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, code, message);
            }
            StoreError::Unavailable(m) => {
                return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, codes::UNAVAILABLE, m);
            }
            StoreError::Protocol(e) => return ApiError::from(e),
            StoreError::Postgres(ref p) if pg_unstorable(p) => {
                return ApiError::bad_request(
                    codes::INVALID_VALUE,
                    "text holding the character U+0000 cannot be stored by this server (PostgreSQL)",
                );
            }
            StoreError::Sqlite(ref s) => sqlite_unavailable(s),
            StoreError::Postgres(ref p) => pg_unavailable(p),
            StoreError::Json(_)
            | StoreError::Decode { .. }
            | StoreError::Io { .. }
            | StoreError::Context { .. }
            | StoreError::Internal(_) => false,
        };
        let chain = e.report();
        if unavailable {
            tracing::warn!(error = %chain, "storage unavailable");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                codes::UNAVAILABLE,
                "the database is unavailable; retry later",
            )
        } else {
            tracing::error!(error = %chain, "storage failure");
            ApiError::internal("internal server error")
        }
    }
}

/// SQLite busy, locked or full: a retry may succeed.
fn sqlite_unavailable(e: &rusqlite::Error) -> bool {
    use rusqlite::ffi::ErrorCode;
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(
                f.code,
                ErrorCode::DiskFull | ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked
            )
    )
}

/// PostgreSQL unreachable, full, shutting down, or a transaction that lost
/// a race: a retry may succeed.
fn pg_unavailable(e: &postgres::Error) -> bool {
    use postgres::error::SqlState;
    e.is_closed()
        || std::error::Error::source(e)
            .is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some())
        || matches!(
            e.code(),
            Some(c) if *c == SqlState::DISK_FULL
                || *c == SqlState::TOO_MANY_CONNECTIONS
                || *c == SqlState::ADMIN_SHUTDOWN
                || *c == SqlState::CANNOT_CONNECT_NOW
                || *c == SqlState::T_R_SERIALIZATION_FAILURE
                || *c == SqlState::T_R_DEADLOCK_DETECTED
                || *c == SqlState::LOCK_NOT_AVAILABLE
        )
}

/// Text PostgreSQL cannot store (U+0000): the client's value, not a fault.
fn pg_unstorable(e: &postgres::Error) -> bool {
    use postgres::error::SqlState;
    matches!(
        e.code(),
        Some(c) if *c == SqlState::CHARACTER_NOT_IN_REPERTOIRE
            || *c == SqlState::UNTRANSLATABLE_CHARACTER
    )
}

impl From<fieldsync_protocol::Error> for ApiError {
    fn from(e: fieldsync_protocol::Error) -> Self {
        use fieldsync_protocol::Error as E;
        match e {
            E::UnknownTable(t) => {
                ApiError::bad_request(codes::UNKNOWN_TABLE, format!("unknown table '{t}'"))
            }
            E::UnknownColumn { table, column } => ApiError::bad_request(
                codes::UNKNOWN_COLUMN,
                format!("unknown column '{column}' in table '{table}'"),
            ),
            E::InvalidProfile(m) => ApiError::bad_request(codes::INVALID_PROFILE, m),
            E::InvalidModel(m) => ApiError::bad_request(codes::INVALID_MODEL, m),
            E::InvalidInput(m) => ApiError::bad_request(codes::BAD_REQUEST, m),
        }
    }
}

/// Result alias of request handlers.
pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite_failure(code: rusqlite::ffi::ErrorCode, detail: &str) -> StoreError {
        StoreError::Sqlite(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error {
                code,
                extended_code: 0,
            },
            Some(detail.into()),
        ))
    }

    #[test]
    fn domain_outcomes_keep_their_status_code_and_message() {
        let cases = [
            (
                StoreError::invalid(codes::UNKNOWN_TABLE, "unknown table 'x'"),
                StatusCode::BAD_REQUEST,
                codes::UNKNOWN_TABLE,
                "unknown table 'x'",
            ),
            (
                StoreError::not_found("no sync error 7"),
                StatusCode::NOT_FOUND,
                codes::NOT_FOUND,
                "no sync error 7",
            ),
            (
                StoreError::forbidden("not yours"),
                StatusCode::FORBIDDEN,
                codes::FORBIDDEN,
                "not yours",
            ),
            (
                StoreError::conflict(codes::PROFILE_CHANGED, "fetch it again"),
                StatusCode::CONFLICT,
                codes::PROFILE_CHANGED,
                "fetch it again",
            ),
            (
                StoreError::too_large(codes::PAYLOAD_TOO_LARGE, "the row is 2 MB"),
                StatusCode::PAYLOAD_TOO_LARGE,
                codes::PAYLOAD_TOO_LARGE,
                "the row is 2 MB",
            ),
            (
                StoreError::unavailable("every PostgreSQL connection is busy"),
                StatusCode::SERVICE_UNAVAILABLE,
                codes::UNAVAILABLE,
                "every PostgreSQL connection is busy",
            ),
        ];
        for (store, status, code, message) in cases {
            let api = ApiError::from(store);
            assert_eq!(
                (api.status, api.code, api.message.as_str()),
                (status, code, message)
            );
        }
    }

    #[test]
    fn a_database_failure_is_answered_without_its_cause() {
        let busy = ApiError::from(sqlite_failure(
            rusqlite::ffi::ErrorCode::DatabaseBusy,
            "database is locked in /srv/secret/path.db",
        ));
        assert_eq!(busy.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(busy.code, codes::UNAVAILABLE);
        assert!(!busy.message.contains("secret"), "{}", busy.message);

        let corrupt = ApiError::from(sqlite_failure(
            rusqlite::ffi::ErrorCode::DatabaseCorrupt,
            "malformed page 42 of /srv/secret/path.db",
        ));
        assert_eq!(corrupt.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(corrupt.code, codes::INTERNAL);
        assert!(!corrupt.message.contains("secret"), "{}", corrupt.message);

        let decode = serde_json::from_str::<i64>("{").unwrap_err();
        let stored = ApiError::from(StoreError::decode("a stored profile")(decode));
        assert_eq!(stored.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(stored.message, "internal server error");
    }

    #[test]
    fn the_log_line_keeps_the_whole_chain_of_causes() {
        let failure = sqlite_failure(
            rusqlite::ffi::ErrorCode::DatabaseCorrupt,
            "malformed page 42",
        );
        let migration = StoreError::context("migration 9 (indexes)")(failure);
        let report = migration.report();
        assert!(
            report.starts_with("migration 9 (indexes): SQLite: "),
            "{report}"
        );
        assert!(report.contains("malformed page 42"), "{report}");
    }
}
