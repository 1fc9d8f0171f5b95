//! The storage layer's error: what went wrong in the database (its cause
//! kept as the error's source) or which domain outcome a request met (not
//! found, conflict, forbidden, invalid). It knows nothing of HTTP:
//! `impl From<StoreError> for ApiError` in [`crate::error`] is the one place
//! that maps it onto status codes and decides what is logged.

/// A failure of the storage layer ([`crate::db`] and the SQL it runs).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed (busy, full, corrupt, a bad statement...).
    #[error("SQLite")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL failed (connection lost, serialization failure...).
    #[error("PostgreSQL")]
    Postgres(#[from] postgres::Error),
    /// A value did not encode to JSON.
    #[error("JSON")]
    Json(#[from] serde_json::Error),
    /// Something stored does not decode (a profile, a receipt, a model...).
    #[error("{what} does not decode")]
    Decode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// A file of the database could not be reached.
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A filter, profile, model or value the protocol's rules refuse.
    #[error(transparent)]
    Protocol(#[from] fieldsync_protocol::Error),
    /// The request is invalid: `code` is the wire error code.
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    /// What the request names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The caller's scope does not allow it.
    #[error("{0}")]
    Forbidden(String),
    /// The request meets the state it was based on no longer (a record's
    /// version, a profile's version, an existing user...).
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// A row or batch is over its size limit.
    #[error("{message}")]
    TooLarge { code: &'static str, message: String },
    /// The database cannot take the request now (every connection busy);
    /// the client retries.
    #[error("{0}")]
    Unavailable(String),
    /// A step that failed, with the failure as its source (a migration, the
    /// model given at start).
    #[error("{context}")]
    Context {
        context: String,
        #[source]
        source: Box<StoreError>,
    },
    /// A broken invariant of the stored data or of the server's own
    /// configuration.
    #[error("{0}")]
    Internal(String),
}

/// Result of the storage layer.
pub type StoreResult<T> = Result<T, StoreError>;

impl StoreError {
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            code,
            message: message.into(),
        }
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::NotFound(message.into())
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::Forbidden(message.into())
    }
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::Conflict {
            code,
            message: message.into(),
        }
    }
    pub fn too_large(code: &'static str, message: impl Into<String>) -> Self {
        Self::TooLarge {
            code,
            message: message.into(),
        }
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::Unavailable(message.into())
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::Internal(message.into())
    }
    /// Wraps a failure with the step that met it.
    pub fn context(context: impl Into<String>) -> impl FnOnce(StoreError) -> Self {
        let context = context.into();
        move |source| Self::Context {
            context,
            source: Box::new(source),
        }
    }
    /// The error and its chain of causes on one line, for the log.
    pub fn report(&self) -> String {
        let mut line = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            line.push_str(": ");
            line.push_str(&cause.to_string());
            source = cause.source();
        }
        line
    }
    /// A stored JSON document that does not decode.
    pub fn decode(what: &'static str) -> impl FnOnce(serde_json::Error) -> Self {
        move |source| Self::Decode { what, source }
    }
    /// A file-system failure, with what was being done.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }
}
