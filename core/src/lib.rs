//! fieldsync core: the device engine of an offline-first sync system for
//! field-service apps.
//!
//! A device keeps the slice of the server's data that its offline profile
//! selects in a local SQLite database, reads and writes it with or without a
//! network, and syncs with the server: local changes go up from an outbox,
//! server changes come down in pages from per-table cursors.
//!
//! The crate knows nothing of FFI; `bindings/` exports it through UniFFI.
//! Its public API is already shaped for that: plain records and enums, an
//! [`Engine`] object behind `Arc`, typed errors, async sync functions, and an
//! injected [`Transport`] and [`Clock`].
//!
//! The wire types in [`protocol`], values, filters, the offline profile, the
//! data model and time come from `fieldsync-protocol`, which the reference
//! server shares; they are re-exported here at their old paths.

pub mod client;
pub mod codec;
mod download;
pub mod engine;
pub mod error;
mod live;
mod mode;
pub mod network;
pub mod notifications;
pub mod online;
mod pull;
pub mod query;
pub mod scheduler;
pub mod service;
pub mod settings;
pub mod status;
pub mod store;
mod sync;
pub mod telemetry;
mod tracking;
pub mod transaction;
pub mod transport;

// The modules shared with the server live in `fieldsync-protocol`; they stay
// reachable at their old paths (`fieldsync_core::value::Value`, ...).
pub use fieldsync_protocol::{filter, model, profile, protocol, time, value, wal};

pub use client::TokenProvider;
pub use engine::{
    DeviceStatus, Engine, EngineConfig, OfflineTableStatus, ResetReport, SyncEvent, SyncReport,
    TableReport,
};
pub use error::{Error, ErrorKind, Result};
pub use network::{NetworkStatus, NetworkType, OsNetwork, Reachability};
pub use notifications::{
    Notification, NotificationKind, NotificationPhase, NotificationThresholds,
};
pub use online::{OnlineFilter, OnlinePage};
pub use query::{OrderBy, Query, QueryListener};
pub use scheduler::{BackgroundPlan, Backoff, Blocker, Decision, PeriodicSync, SyncMode};
pub use service::{BackgroundJob, BackgroundJobOutcome, ScheduledSync, SyncNowOutcome};
pub use settings::{SyncFrequency, SyncSettings};
pub use status::{
    EventListener, ListenerHandle, StatusListener, SyncIcon, SyncProgress, SyncStatus,
};
pub use store::{DatabaseKey, LocalSyncError, rekey_database};
pub use telemetry::{AppInfo, TelemetryEvent, TelemetryKind};
pub use time::{Clock, ManualClock, SystemClock};
pub use transaction::{Write, WriteOp};
pub use transport::{
    HttpRequest, HttpResponse, HttpTimeouts, HttpTransport, Method, TlsRoots, TlsTrust, Transport,
    TransportError,
};
pub use value::{Record, Value};
