//! Request plumbing shared by every handler: the blocking pool, JSON bodies
//! and query strings decoded into typed errors, the protocol-version check,
//! health and the fallbacks.

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use fieldsync_protocol::protocol::{DEVICE_HEADER, LIMIT_EXCEEDED, codes};
use http_body_util::BodyExt;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::App;
use crate::error::{ApiError, ApiResult};

/// Runs blocking storage work off the async threads.
pub async fn blocking<T: Send + 'static, E: Into<ApiError> + Send + 'static>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("worker: {e}")))?
        .map_err(Into::into)
}

/// Reads and drops the rest of an authenticated request's body that is too
/// large, up to three times `limit`, holding none of it: a connection
/// closed with unread data is reset, and the client would lose the 413
/// while still sending.
pub(super) async fn discard(mut body: Body, limit: usize) {
    let mut read = 0usize;
    while read <= limit.saturating_mul(3) {
        match body.frame().await {
            Some(Ok(frame)) => read += frame.data_ref().map_or(0, |d| d.len()),
            _ => return,
        }
    }
}

/// Reads and decodes a request's JSON body. Handlers call it once the
/// request is authenticated, so a request without credentials costs no more
/// than its headers. A body past the server's limit (by its
/// `Content-Length`, or as it arrives) is refused with `payload_too_large`
/// without being read further, as is one whose decoding passes a limit of
/// the protocol (see [`LIMIT_EXCEEDED`]); a malformed one gets
/// `malformed_json`.
pub async fn read_json<T: DeserializeOwned>(
    app: &App,
    headers: &HeaderMap,
    mut body: Body,
) -> ApiResult<T> {
    let limit = app.max_body_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            codes::PAYLOAD_TOO_LARGE,
            format!("the request body is too large (at most {limit} bytes)"),
        )
    };
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        discard(body, limit).await;
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(declared.map_or(0, |n| n as usize));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ApiError::bad_request(
                codes::BAD_REQUEST,
                format!("cannot read the request body: {e}"),
            )
        })?;
        if let Ok(data) = frame.into_data() {
            if bytes.len() + data.len() > limit {
                discard(body, limit).await;
                return Err(too_large());
            }
            bytes.extend_from_slice(&data);
        }
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        let message = e.to_string();
        match message.strip_prefix(LIMIT_EXCEEDED) {
            Some(rest) => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                codes::PAYLOAD_TOO_LARGE,
                rest.to_owned(),
            ),
            None => {
                ApiError::bad_request(codes::MALFORMED_JSON, format!("malformed JSON: {message}"))
            }
        }
    })
}

pub(super) fn query<T>(q: Result<Query<T>, QueryRejection>) -> ApiResult<T> {
    q.map(|Query(v)| v).map_err(|e| {
        ApiError::bad_request(
            codes::BAD_REQUEST,
            format!("bad query string: {}", e.body_text()),
        )
    })
}

/// The path's segments; one that is not valid UTF-8 (or not what the route
/// takes) is a 400 in the error format, where axum answers in plain text.
pub(super) fn path<T>(p: Result<Path<T>, PathRejection>) -> ApiResult<T> {
    p.map(|Path(v)| v).map_err(|e| {
        ApiError::bad_request(codes::BAD_REQUEST, format!("bad path: {}", e.body_text()))
    })
}

#[derive(Serialize)]
pub(super) struct Health {
    status: &'static str,
    protocol: u32,
}

/// `GET /v1/health`: answers without credentials (the network check's probe).
pub async fn health() -> impl IntoResponse {
    Json(Health {
        status: "ok",
        protocol: fieldsync_protocol::protocol::PROTOCOL_VERSION,
    })
}

/// Answers unknown routes with a typed error.
pub async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}

/// A known path asked with a method it does not take: 405 in the error
/// format (axum adds the `allow` header).
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        codes::METHOD_NOT_ALLOWED,
        "this endpoint does not take that method",
    )
}

/// Refuses a request whose `x-fieldsync-protocol` header names another
/// protocol version than this server's (400 `unsupported_protocol`), before
/// anything else reads it. A request without the header is served:
/// browsers, the console and records clients do not send it.
pub async fn check_protocol(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if let Some(device) = request.headers().get(DEVICE_HEADER)
        && !device.to_str().is_ok_and(crate::db::device_id_ok)
    {
        return ApiError::bad_request(
            codes::BAD_REQUEST,
            format!("the {DEVICE_HEADER} header is 1 to 128 characters of visible text"),
        )
        .into_response();
    }
    let Some(sent) = request
        .headers()
        .get(fieldsync_protocol::protocol::PROTOCOL_HEADER)
    else {
        return next.run(request).await;
    };
    let version = fieldsync_protocol::protocol::PROTOCOL_VERSION;
    match sent.to_str().map(str::trim) {
        Ok(v) if v.parse::<u32>() == Ok(version) => next.run(request).await,
        Ok(v) => ApiError::bad_request(
            codes::UNSUPPORTED_PROTOCOL,
            format!("this server speaks protocol {version}; the request asked for '{v}'"),
        )
        .into_response(),
        Err(_) => ApiError::bad_request(
            codes::UNSUPPORTED_PROTOCOL,
            format!("this server speaks protocol {version}; the request's version is not text"),
        )
        .into_response(),
    }
}
