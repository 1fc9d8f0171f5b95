//! The [`Engine`] object apps hold: opens the device database and delegates
//! every call to [`fieldsync_core::Engine`]. Reads and writes go to the local
//! database (offline-first); sync, refresh and reset talk to the server.
//!
//! Every call is async for the foreign side (Kotlin `suspend`, Swift `async`)
//! and runs on the library runtime, so no app thread waits on disk or
//! network. Cancelling the caller cancels the call.

use std::collections::HashMap;
use std::sync::Arc;

use fieldsync_core::profile::{SyncProfile, SyncTable};
use fieldsync_core::{DatabaseKey, Engine as CoreEngine, EngineConfig as CoreEngineConfig};

use crate::errors::{FieldSyncError, non_negative};
use crate::events::SyncEventListener;
use crate::listeners::{Delivery, ListenerHandle};
use crate::records::{ColumnKind, Record, ResetReport, SyncError, SyncReport, core_fields};
use crate::runtime::{run, run_blocking};
use crate::service::{AppInfo, ProviderAdapter, TestClock, TokenProvider};
use crate::status::DeviceStatus;

/// How to open an engine.
#[derive(Clone, uniffi::Record)]
pub struct EngineConfig {
    /// Path of the device database file (created if missing), for example
    /// in the app's files directory.
    pub database_path: String,
    /// Base URL of the sync server, for example `https://sync.example.com`.
    pub server_url: String,
    /// The user's bearer token; leave empty when a token provider gives it
    /// ([`Engine::open_with_token_provider`]).
    pub token: String,
    /// Rows per download page (1 to 10000).
    #[uniffi(default = 1000)]
    pub page_size: i32,
    /// Which certificates an `https://` server may present; `null` is the
    /// default of the platform the library runs on (the bundled roots on
    /// Android, the system's elsewhere).
    #[uniffi(default = None)]
    pub tls_roots: Option<TlsRoots>,
    /// PEM certificates trusted besides `tls_roots` (a company's own
    /// certificate authority), or the only ones with `ExtraOnly`.
    #[uniffi(default = None)]
    pub tls_extra_roots_pem: Option<String>,
    /// The app and device, carried in telemetry; null: the library's
    /// version and the OS name.
    #[uniffi(default = None)]
    pub app: Option<AppInfo>,
    /// The 32-byte key of the device database, kept by the app in the
    /// platform's key store (Android Keystore, iOS Keychain): the database
    /// is encrypted with it (SQLCipher). Null: not encrypted. A key that
    /// does not open the database is `WrongKey`; change it with
    /// [`rekey_database`].
    #[uniffi(default = None)]
    pub encryption_key: Option<Vec<u8>>,
}

impl std::fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineConfig")
            .field("database_path", &self.database_path)
            .field("server_url", &self.server_url)
            .field("token", &"<redacted>")
            .field("page_size", &self.page_size)
            .field("tls_roots", &self.tls_roots)
            .field("tls_extra_roots_pem", &self.tls_extra_roots_pem.is_some())
            .field("app", &self.app)
            .field(
                "encryption_key",
                &self.encryption_key.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// A database key from the bytes the app gave; the bytes are wiped.
fn database_key(bytes: Option<Vec<u8>>) -> Result<Option<DatabaseKey>, FieldSyncError> {
    let Some(mut bytes) = bytes else {
        return Ok(None);
    };
    let key = DatabaseKey::from_slice(&bytes);
    bytes.iter_mut().for_each(|b| *b = 0);
    std::hint::black_box(&bytes);
    Ok(Some(key?))
}

/// Changes the key of the closed device database at `database_path` from
/// `current_key` to `new_key` (null: not encrypted), keeping everything in
/// it, pending uploads included. Close the engine first (an open database is
/// refused with `InvalidInput`); a wrong `current_key` is `WrongKey`, the
/// file untouched. Encrypting or decrypting writes a new copy beside the
/// database and renames it over the old one once it opens with the new key:
/// it needs as much free space as the database takes.
#[uniffi::export]
pub async fn rekey_database(
    database_path: String,
    current_key: Option<Vec<u8>>,
    new_key: Option<Vec<u8>>,
) -> Result<(), FieldSyncError> {
    let current = database_key(current_key)?;
    let new = database_key(new_key)?;
    run_blocking(move || {
        fieldsync_core::rekey_database(
            std::path::Path::new(&database_path),
            current.as_ref(),
            new.as_ref(),
        )
        .map_err(FieldSyncError::from)
    })
    .await
}

/// The certificates an `https://` server may present, and from which
/// authorities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum TlsRoots {
    /// The operating system's verifier and trust store (device management
    /// certificates included). Not on Android, whose verifier needs JNI
    /// initialisation this library does not do: opening fails there.
    System,
    /// Mozilla's root certificates compiled into the library: the same on
    /// every device. The default on Android.
    Bundled,
    /// Only the certificates of `tls_extra_roots_pem`.
    ExtraOnly,
}

impl From<TlsRoots> for fieldsync_core::TlsRoots {
    fn from(r: TlsRoots) -> Self {
        match r {
            TlsRoots::System => fieldsync_core::TlsRoots::System,
            TlsRoots::Bundled => fieldsync_core::TlsRoots::Bundled,
            TlsRoots::ExtraOnly => fieldsync_core::TlsRoots::ExtraOnly,
        }
    }
}

impl TryFrom<EngineConfig> for CoreEngineConfig {
    type Error = FieldSyncError;

    fn try_from(c: EngineConfig) -> Result<Self, FieldSyncError> {
        let page_size = u32::try_from(c.page_size).map_err(|_| FieldSyncError::InvalidInput {
            reason: "page size must be 1 to 10000".into(),
        })?;
        let mut config = CoreEngineConfig::new(c.database_path, &c.server_url, &c.token);
        config.page_size = page_size;
        config.tls = fieldsync_core::TlsTrust {
            roots: c.tls_roots.map(Into::into).unwrap_or_default(),
            extra_roots_pem: c.tls_extra_roots_pem,
        };
        if let Some(app) = c.app {
            config.app = app.into();
        }
        config.encryption_key = database_key(c.encryption_key)?;
        Ok(config)
    }
}

/// One column of a table in the offline profile.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct ProfileColumn {
    /// Column name.
    pub name: String,
    /// Column kind.
    pub kind: ColumnKind,
    /// The values a choice column accepts (empty for other kinds).
    pub choices: Vec<String>,
}

/// One table of the offline profile.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct ProfileTable {
    /// Table name.
    pub name: String,
    /// Name of the primary key column (always the first column).
    pub primary_key: String,
    /// The columns that sync to the device.
    pub columns: Vec<ProfileColumn>,
    /// Sync interval, in seconds.
    pub sync_interval_secs: i64,
}

impl From<SyncTable> for ProfileTable {
    fn from(t: SyncTable) -> Self {
        ProfileTable {
            name: t.name,
            primary_key: t.primary_key,
            columns: t
                .columns
                .into_iter()
                .map(|c| ProfileColumn {
                    name: c.name,
                    kind: c.kind.into(),
                    choices: c.choices.unwrap_or_default(),
                })
                .collect(),
            sync_interval_secs: i64::from(t.sync_interval_secs),
        }
    }
}

/// The offline profile in force on the device: which tables and columns sync.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct SyncProfileInfo {
    /// Profile name.
    pub name: String,
    /// Profile version; a new version is picked up at the next sync.
    pub version: i64,
    /// The user the profile was resolved for.
    pub user_id: String,
    /// The version of the server's data model the profile follows; a new
    /// version is picked up at the next sync.
    pub model_version: i64,
    /// The tables, in sync order.
    pub tables: Vec<ProfileTable>,
}

impl From<SyncProfile> for SyncProfileInfo {
    fn from(p: SyncProfile) -> Self {
        SyncProfileInfo {
            name: p.name,
            version: p.version,
            user_id: p.user_id,
            model_version: p.model_version,
            tables: p.tables.into_iter().map(Into::into).collect(),
        }
    }
}

/// The device engine: the offline database of one user and its sync.
/// Open one per database file and share it.
#[derive(uniffi::Object)]
pub struct Engine {
    pub(crate) core: Arc<CoreEngine>,
}

impl Engine {
    /// Runs a local-database call of the core on the blocking pool.
    pub(crate) async fn local<T, F>(&self, f: F) -> Result<T, FieldSyncError>
    where
        F: FnOnce(&CoreEngine) -> Result<T, fieldsync_core::Error> + Send + 'static,
        T: Send + 'static,
    {
        let core = self.core.clone();
        run_blocking(move || f(&core).map_err(FieldSyncError::from)).await
    }
}

#[uniffi::export]
impl Engine {
    /// Opens (or creates) the device database and prepares sync with the
    /// server. Does not touch the network; sync with [`Engine::sync_now`].
    #[uniffi::constructor]
    pub fn open(config: EngineConfig) -> Result<Arc<Engine>, FieldSyncError> {
        crate::logging::ensure_logging();
        let core = CoreEngine::open(config.try_into()?)?;
        Ok(Arc::new(Engine { core }))
    }

    /// Opens the engine with tokens from `provider`: asked now (the
    /// config's `token` is not used) and again whenever the server refuses
    /// the token, after which the refused request is sent once more. Tokens
    /// stay in memory; none is written to the database or the log.
    #[uniffi::constructor]
    pub fn open_with_token_provider(
        config: EngineConfig,
        provider: Arc<dyn TokenProvider>,
    ) -> Result<Arc<Engine>, FieldSyncError> {
        crate::logging::ensure_logging();
        let mut config: CoreEngineConfig = config.try_into()?;
        config.token_provider = Some(Arc::new(ProviderAdapter(provider)));
        let core = CoreEngine::open(config)?;
        Ok(Arc::new(Engine { core }))
    }

    /// For tests only: opens the engine on `clock`, a clock the test moves
    /// by hand, so the scheduler's intervals pass when the test says so.
    /// `provider` as in [`Engine::open_with_token_provider`] (null: the
    /// config's token). Apps use `open` or `open_with_token_provider`.
    #[uniffi::constructor]
    pub fn open_for_tests(
        config: EngineConfig,
        provider: Option<Arc<dyn TokenProvider>>,
        clock: Arc<TestClock>,
    ) -> Result<Arc<Engine>, FieldSyncError> {
        crate::logging::ensure_logging();
        let mut config: CoreEngineConfig = config.try_into()?;
        config.token_provider = provider
            .map(|p| Arc::new(ProviderAdapter(p)) as Arc<dyn fieldsync_core::TokenProvider>);
        let transport = Arc::new(fieldsync_core::HttpTransport::new(
            &config.server_url,
            Default::default(),
            &config.tls,
        )?);
        let core = CoreEngine::open_with(config, transport, clock.clock())?;
        clock.attach(&core);
        Ok(Arc::new(Engine { core }))
    }

    /// This device's id (stable for the life of the database).
    pub fn device_id(&self) -> String {
        self.core.device_id().to_owned()
    }

    /// The offline profile in force; none before the first sync.
    pub fn offline_profile(&self) -> Option<SyncProfileInfo> {
        self.core.profile().map(Into::into)
    }

    /// Reads a record from the device (never from the network). Fails with
    /// `RecordNotFound` when it is not (or no longer) on the device.
    pub async fn get(&self, table: String, id: String) -> Result<Record, FieldSyncError> {
        self.local(move |e| e.get(&table, &id).map(Into::into))
            .await
    }

    /// Lists records of a table ordered by id, after `after` (exclusive), at
    /// most `limit`. Page with the last id of the previous call.
    pub async fn list(
        &self,
        table: String,
        after: Option<String>,
        limit: i32,
    ) -> Result<Vec<Record>, FieldSyncError> {
        let limit = u32::try_from(non_negative("limit", i64::from(limit))?).unwrap_or(u32::MAX);
        self.local(move |e| {
            e.list(&table, after.as_deref(), limit)
                .map(|v| v.into_iter().map(Into::into).collect())
        })
        .await
    }

    /// Creates a record on the device and queues it for upload. Fails with
    /// `InvalidInput` if it exists or a field does not fit its column.
    pub async fn insert(
        &self,
        table: String,
        id: String,
        fields: HashMap<String, crate::Value>,
    ) -> Result<Record, FieldSyncError> {
        self.local(move |e| e.insert(&table, &id, core_fields(fields)).map(Into::into))
            .await
    }

    /// Changes the given fields of a record on the device and queues the
    /// change. Fails with `RecordNotFound` if it is not on the device.
    pub async fn update(
        &self,
        table: String,
        id: String,
        fields: HashMap<String, crate::Value>,
    ) -> Result<Record, FieldSyncError> {
        self.local(move |e| e.update(&table, &id, core_fields(fields)).map(Into::into))
            .await
    }

    /// Updates the record if it is on the device, creates it otherwise.
    pub async fn put(
        &self,
        table: String,
        id: String,
        fields: HashMap<String, crate::Value>,
    ) -> Result<Record, FieldSyncError> {
        self.local(move |e| e.put(&table, &id, core_fields(fields)).map(Into::into))
            .await
    }

    /// Deletes a record on the device and queues the deletion.
    pub async fn delete(&self, table: String, id: String) -> Result<(), FieldSyncError> {
        self.local(move |e| e.delete(&table, &id)).await
    }

    /// Number of local changes waiting for upload (the outbox).
    pub async fn pending_uploads(&self) -> Result<i64, FieldSyncError> {
        self.local(|e| e.pending_uploads().map(crate::records::count))
            .await
    }

    /// Sync errors kept on the device, newest first, at most `limit`.
    pub async fn sync_errors(&self, limit: i32) -> Result<Vec<SyncError>, FieldSyncError> {
        let limit = u32::try_from(non_negative("limit", i64::from(limit))?).unwrap_or(u32::MAX);
        self.local(move |e| {
            e.sync_errors(limit)
                .map(|v| v.into_iter().map(Into::into).collect())
        })
        .await
    }

    /// Sync now: uploads pending changes, then downloads every table of the
    /// offline profile (picking up a changed profile first), and waits for
    /// the result. Status, notifications and telemetry follow it as they
    /// follow a scheduled sync. Conflicts and refused changes are in the
    /// report, not errors. (To ask the running service instead, use
    /// `request_sync`.)
    pub async fn sync_now(&self) -> Result<SyncReport, FieldSyncError> {
        let core = self.core.clone();
        run(async move { Ok(core.sync().await?.into()) }).await
    }

    /// Uploads pending changes, then downloads only the named tables, and
    /// waits for the result (no Refresh notification: see `refresh`).
    pub async fn sync_tables(&self, tables: Vec<String>) -> Result<SyncReport, FieldSyncError> {
        let core = self.core.clone();
        run(async move { Ok(core.sync_tables(tables).await?.into()) }).await
    }

    /// Device Status snapshot, with the Offline Status of every table.
    pub async fn status(&self) -> Result<DeviceStatus, FieldSyncError> {
        self.local(|e| e.status().map(Into::into)).await
    }

    /// Clears the offline database. Fails with `PendingUploads` (saying how
    /// many) while local changes wait for upload, unless `force` is true.
    pub async fn reset(&self, force: bool) -> Result<ResetReport, FieldSyncError> {
        let core = self.core.clone();
        run(async move { Ok(core.reset(force).await?.into()) }).await
    }

    /// Subscribes `listener` to sync events: first the current status (a
    /// `Status` event), then every event. Keep the returned handle: the
    /// subscription ends when it is cancelled or dropped.
    pub fn add_event_listener(
        &self,
        listener: Arc<dyn SyncEventListener>,
    ) -> Result<Arc<ListenerHandle>, FieldSyncError> {
        let core = self.core.clone();
        ListenerHandle::start(
            move |queue| Ok(core.add_event_listener(Arc::new(queue))),
            Box::new(move |delivery| {
                if let Delivery::Event(event) = delivery {
                    listener.on_event(event.into());
                }
            }),
        )
    }
}
