//! HTTP handlers: the device API (`/v1/profile`, `/v1/sync/*`,
//! `/v1/telemetry`), the records API for back-office users and online reads
//! (`/v1/records/*`), and the admin API (`/v1/admin/*`). Handlers
//! authenticate ([`auth`]), decode ([`request`]), and hand the work to
//! [`crate::db::Db`] on the blocking pool; they hold no state of their own,
//! so several instances can serve one database. Storage failures become
//! HTTP answers in one place (`From<StoreError> for ApiError`).

pub mod admin;
pub mod auth;
pub mod profiles;
pub mod records;
pub mod request;
pub mod sync;
pub mod telemetry;

pub use request::blocking;
