//! Who is asking: bearer tokens of users and of the administrator (compared
//! in constant time), the device header, and the back-office check.

use std::sync::Arc;

use axum::http::HeaderMap;
use fieldsync_protocol::protocol::DEVICE_HEADER;

use super::request::blocking;
use crate::App;
use crate::db::{Role, User, hash_token};
use crate::error::{ApiError, ApiResult};

pub(super) fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("authorization")?.to_str().ok()?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))?;
    let token = token.trim();
    (!token.is_empty() && token.len() <= 512).then(|| token.to_owned())
}

pub(super) fn device_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get(DEVICE_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| crate::db::device_id_ok(v))
        .map(str::to_owned)
}

/// The user behind the request's bearer token.
pub async fn authenticate(app: &Arc<App>, headers: &HeaderMap) -> ApiResult<User> {
    let token = bearer(headers).ok_or_else(ApiError::unauthorized)?;
    let db = app.db.clone();
    blocking(move || db.user_by_token(&token))
        .await?
        .ok_or_else(ApiError::unauthorized)
}

/// Checks admin credentials: the server's admin token, or an admin user's.
pub async fn authenticate_admin(app: &Arc<App>, headers: &HeaderMap) -> ApiResult<()> {
    authenticate_admin_as(app, headers).await.map(|_| ())
}

/// [`authenticate_admin`], answering who: `admin token` or `user <id>` (as
/// the console names its sessions).
pub async fn authenticate_admin_as(app: &Arc<App>, headers: &HeaderMap) -> ApiResult<String> {
    let token = bearer(headers).ok_or_else(ApiError::unauthorized)?;
    if constant_time_eq(
        hash_token(&token).as_bytes(),
        app.admin_token_hash.as_bytes(),
    ) {
        return Ok("admin token".to_owned());
    }
    let db = app.db.clone();
    match blocking(move || db.user_by_token(&token)).await? {
        Some(u) if u.role == Role::Admin => Ok(format!("user {}", u.id)),
        Some(_) => Err(ApiError::forbidden("admin credentials are required")),
        None => Err(ApiError::unauthorized()),
    }
}

pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(super) fn require_back_office(user: &User) -> ApiResult<()> {
    match user.role {
        Role::Dispatcher | Role::Admin => Ok(()),
        Role::Technician => Err(ApiError::forbidden(
            "only dispatchers and admins write through the records API; devices upload through /v1/sync/push",
        )),
    }
}
