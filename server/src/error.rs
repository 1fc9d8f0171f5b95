//! The server's error type and its one mapping onto HTTP: every failure
//! becomes a status code and a JSON body `{"error": {"code", "message"}}`
//! (see `docs/protocol.md`).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use fieldsync_protocol::protocol::{ErrorBody, ErrorResponse, codes};

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

impl From<rusqlite::Error> for ApiError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ffi::ErrorCode;
        match &e {
            rusqlite::Error::SqliteFailure(f, _)
                if matches!(
                    f.code,
                    ErrorCode::DiskFull | ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked
                ) =>
            {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    codes::UNAVAILABLE,
                    e.to_string(),
                )
            }
            _ => ApiError::internal(format!("database: {e}")),
        }
    }
}

/// A filter, profile, model or value the protocol code refused: the
/// client's fault, a 400 with the matching code.
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
