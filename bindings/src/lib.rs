//! UniFFI bindings of the fieldsync device engine: the one library that
//! Kotlin (Android) and Swift (iOS) apps load.
//!
//! The crate only delegates to `fieldsync-core`; it holds no sync logic. It
//! owns three things the core leaves to its host: the multi-threaded tokio
//! runtime async calls run on ([`runtime`]), the public error enum the apps
//! branch on ([`errors`]), and logging initialisation ([`logging`]). Every
//! other module converts one concept of the core with `From` impls and
//! exports it:
//!
//! - [`engine`]: the [`Engine`] object (open, reads and writes, sync now,
//!   refresh, reset, status, sync errors, sync event listeners) and
//!   [`rekey_database`], which changes the key of a closed database;
//! - [`records`]: field values, records, sync and reset reports, sync errors;
//! - [`status`]: the Device Status and Offline Status snapshots;
//! - [`events`]: sync events, the listener callback and its cancel handle;
//! - [`query`]: local queries (a condition in the filter language, order,
//!   limit, offset), their count, their query plan, and observed queries;
//! - [`transaction`]: several writes applied atomically, uploaded as one
//!   unit;
//! - [`service`]: the sync service (start and stop, app and network
//!   reports, network check, sync now, Refresh, settings, online mode,
//!   telemetry, the live sync status and its listener, token provider).
//!
//! Generate the Kotlin and Swift with the workspace's `uniffi-bindgen` in
//! library mode (see `scripts/kotlin-test.sh`); `bindings/uniffi.toml` names
//! the Kotlin package `dev.fieldsync` and the Swift module `FieldSync`.

uniffi::setup_scaffolding!();

pub mod engine;
pub mod errors;
pub mod events;
pub mod listeners;
pub mod logging;
pub mod query;
pub mod records;
pub mod runtime;
pub mod service;
pub mod status;
pub mod transaction;

pub use engine::{
    Engine, EngineConfig, ProfileColumn, ProfileTable, SyncProfileInfo, TlsRoots, rekey_database,
};
pub use errors::FieldSyncError;
pub use events::{SyncEvent, SyncEventListener};
pub use listeners::ListenerHandle;
pub use logging::{LogLevel, init_logging};
pub use query::{Query, QueryOrder, QueryResultListener};
pub use records::{
    ColumnKind, Record, RecordAction, ResetReport, SyncError, SyncErrorKind, SyncReport,
    TableReport, Value,
};
pub use service::{
    AppInfo, Blocker, Decision, NetworkStatus, NetworkType, OnlineFilter, OnlinePage, OsNetwork,
    Reachability, ScheduledSync, StatusListener, SyncFrequency, SyncIcon, SyncMode, SyncNowOutcome,
    SyncProgress, SyncSettings, SyncStatus, TestClock, TokenProvider,
};
pub use status::{DeviceStatus, OfflineTableStatus};
pub use transaction::{Write, WriteOp};
