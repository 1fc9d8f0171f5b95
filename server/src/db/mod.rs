//! The server's storage: the data model's tables, users, offline profiles,
//! settings, the change log, push receipts, the Sync Errors log and devices,
//! on one of two back ends chosen by the database URL at start-up: embedded
//! SQLite (the default) or PostgreSQL. The logic is written once against
//! [`crate::sql::Conn`]; only transactions, pooling and the change cursor's
//! commit ordering differ per back end.
//!
//! Every data table carries `_version` (bumped on each change), `_seq` (the
//! change-log sequence of its last change, which orders pulls) and
//! `_deleted` (deleted rows stay as tombstones so devices learn of the
//! deletion). Reads run in a snapshot (a SQLite read transaction on a pooled
//! connection; a PostgreSQL `REPEATABLE READ READ ONLY` transaction), so a
//! pull page and the high-water mark it reports always come from the same
//! snapshot.
//!
//! # The change cursor under concurrent writers
//!
//! A pull cursor says "every change with `_seq` at or below `since` was
//! seen". That is only true if no change with a smaller sequence can become
//! visible *after* a reader saw a larger one: sequence order must be commit
//! order. A naive sequence (taken when the row is written) breaks it as soon
//! as two transactions overlap: A takes 41, B takes 42, B commits, a device
//! pulls and moves its cursor to 42, A commits 41 — and the device never
//! sees A's change.
//!
//! - SQLite: one writer at a time (the writer connection, `BEGIN
//!   IMMEDIATE`, and SQLite's file lock across processes), and the sequence
//!   is taken inside the write transaction, so sequence order is commit
//!   order by construction.
//! - PostgreSQL: writers run concurrently (`SERIALIZABLE`, run again on a
//!   serialization failure or deadlock). A change is written with a
//!   *pending* `_seq` (minus its change-log id) and a change-log row whose
//!   `seq` is NULL. Just before `COMMIT` the transaction takes a
//!   transaction-scoped advisory lock, draws its sequence numbers from a
//!   sequence and stamps them on its change-log rows and data rows; the lock
//!   is released only after the commit is visible. Stamping therefore
//!   happens in commit order: a transaction that stamps later commits later,
//!   and a reader that sees sequence `n` sees every committed change below
//!   `n`. Only the stamping (two statements per touched table) is
//!   serialised, not the transactions' work. Uncommitted pending rows are
//!   invisible to readers, and a pull's high-water mark (`MAX(seq)`) skips
//!   them.
//!
//! # Modules
//!
//! `backend` holds the [`Db`] handle and the only code that differs per
//! back end (connections, pool, transactions, sequence stamping); every
//! other module is one concern written once over `sql::Conn` and returns
//! [`StoreError`], never an HTTP status. Siblings import from each other
//! without circles; nothing imports from this file but its re-exports.

mod backend;
mod cursor;
mod devices;
mod fetch;
mod models;
mod open;
mod profiles;
mod pull;
mod push;
mod receipts;
mod records;
mod retention;
mod retry;
mod sessions;
mod settings;
mod sync_errors;
pub mod telemetry;
#[cfg(test)]
pub(crate) mod test_support;
#[cfg(test)]
mod tests;
mod tokens;
mod users;

pub use crate::store_error::{StoreError, StoreResult};
pub use backend::{DatabaseUrl, Db, PoolStats, SCHEMA_VERSION, SelectionCacheStats};
pub use cursor::{Cursor, Phase};
pub(crate) use devices::device_id_ok;
pub use devices::{DeviceEntry, DeviceLastError};
#[cfg(test)]
pub(crate) use fetch::fetch_sql;
pub use profiles::MAX_RULE_PARAMETERS;
pub use pull::PageOut;
pub use records::RecordWritten;
pub use retention::{Purged, Retention};
pub use sessions::ConsoleSession;
pub use settings::{online_tables, set_online_tables};
pub use sync_errors::{
    DataCut, RetryOutcome, SYNC_ERROR_DATA_BYTES, SyncErrorEntry, SyncErrorFacets, SyncErrorFilter,
    SyncErrorRetry,
};
pub use tokens::hash_token;
pub use users::{Role, User};
