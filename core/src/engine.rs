//! The engine object apps hold: opens the local store, answers reads and
//! writes from it (offline-first), and runs sync against the server through
//! the injected transport and clock. Every public method takes and returns
//! plain data, so the bindings crate can export it as it is.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use serde::Serialize;

use crate::client::{Credentials, ServerApi, TokenProvider};
use crate::error::{Error, Result};
use crate::live::Live;
use crate::network::{DEFAULT_PROBE_TIMEOUT_MS, NetworkStatus};
use crate::notifications::NotificationThresholds;
use crate::profile::{SyncProfile, SyncTable};
use crate::protocol::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, Op};
use crate::query::{CompiledQuery, Query, QueryListener};
use crate::scheduler::Backoff;
use crate::settings::SyncSettings;
use crate::status::{ListenerHandle, Listeners, QueryObserver};
pub use crate::status::{SyncEvent, SyncReport, TableReport};
use crate::store::{DatabaseKey, LocalSyncError, Store};
use crate::telemetry::AppInfo;
use crate::time::{Clock, SystemClock};
use crate::transport::{HttpTimeouts, HttpTransport, TlsTrust, Transport};
use crate::value::{Record, Value};

/// How to open an engine.
#[derive(Clone)]
pub struct EngineConfig {
    /// Path of the device database file (created if missing).
    pub database_path: PathBuf,
    /// Base URL of the sync server, for example `https://sync.example.com`.
    pub server_url: String,
    /// The user's bearer token; unused when `token_provider` is set.
    pub token: String,
    /// Where tokens come from: asked at open (instead of `token`) and again
    /// when the server refuses the token. `None`: `token` until
    /// [`Engine::set_token`] replaces it.
    pub token_provider: Option<Arc<dyn TokenProvider>>,
    /// Rows per pull page (1 to 10000).
    pub page_size: u32,
    /// Most tables downloaded at once (1 to 8, default 2; see
    /// `pull::pull_tables`). 1 downloads them one after the other.
    pub parallel_pulls: u32,
    /// Network check timeout, ms (default 5000).
    pub probe_timeout_ms: u64,
    /// Connect and whole-request timeouts of the default transport
    /// (defaults 10 s and 120 s): a server that accepts the connection but
    /// never answers fails the request after `request`.
    pub http_timeouts: HttpTimeouts,
    /// Retry delays after failed syncs.
    pub backoff: Backoff,
    /// When a catch-up notification is shown.
    pub notifications: NotificationThresholds,
    /// App and device, for telemetry.
    pub app: AppInfo,
    /// Which certificates an `https://` server may present (the default
    /// transport only).
    pub tls: TlsTrust,
    /// Keep every OS network report ([`Engine::set_os_network`]) in the
    /// device database and apply the kept one at open (default off). For a
    /// shell whose reports outlive its process (the headless device); an
    /// app reports the OS's network at every start instead.
    pub persist_os_network: bool,
    /// The key of the device database (see [`crate::store::DatabaseKey`]):
    /// `Some` encrypts it with SQLCipher, `None` keeps it plain. A key that
    /// does not match the database refuses the open with
    /// [`crate::ErrorKind::WrongKey`].
    pub encryption_key: Option<DatabaseKey>,
}

impl std::fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineConfig")
            .field("database_path", &self.database_path)
            .field("server_url", &self.server_url)
            .field("token", &"<redacted>")
            .field("token_provider", &self.token_provider.is_some())
            .field("page_size", &self.page_size)
            .field("parallel_pulls", &self.parallel_pulls)
            .field("probe_timeout_ms", &self.probe_timeout_ms)
            .field("http_timeouts", &self.http_timeouts)
            .field("backoff", &self.backoff)
            .field("notifications", &self.notifications)
            .field("app", &self.app)
            .field("tls", &self.tls)
            .field("persist_os_network", &self.persist_os_network)
            .field("encryption_key", &self.encryption_key)
            .finish()
    }
}

/// Tables downloaded at once by default. Two keep both ends busy with a
/// nearby server (one page computed while another is written) and hide
/// round trips to a far one, without taking more of a server than a
/// device's share.
pub const DEFAULT_PARALLEL_PULLS: u32 = 2;
/// Most tables downloaded at once.
pub const MAX_PARALLEL_PULLS: u32 = 8;

impl EngineConfig {
    /// A configuration with the default page size.
    pub fn new(database_path: impl Into<PathBuf>, server_url: &str, token: &str) -> Self {
        Self {
            database_path: database_path.into(),
            server_url: server_url.to_owned(),
            token: token.to_owned(),
            token_provider: None,
            page_size: DEFAULT_PAGE_SIZE,
            parallel_pulls: DEFAULT_PARALLEL_PULLS,
            probe_timeout_ms: DEFAULT_PROBE_TIMEOUT_MS,
            http_timeouts: HttpTimeouts::default(),
            backoff: Backoff::default(),
            notifications: NotificationThresholds::default(),
            app: AppInfo::default(),
            tls: TlsTrust::default(),
            persist_os_network: false,
            encryption_key: None,
        }
    }
}

/// Per-table line of the offline status.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OfflineTableStatus {
    pub table: String,
    pub rows: u64,
    /// Last successful sync, milliseconds since the epoch.
    pub last_sync_at: Option<i64>,
    pub initial_sync_done: bool,
    pub pending_uploads: u64,
    pub sync_interval_secs: u32,
    pub last_error: Option<String>,
    /// The interval the scheduler uses: the shortest chosen interval of the
    /// table and the tables in its dependency closure (`None`: manual only).
    pub effective_interval_secs: Option<u32>,
    /// When the table is next due, ms since the epoch (`None`: manual only).
    pub next_due_at: Option<i64>,
}

/// A snapshot of the device's state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceStatus {
    pub device_id: String,
    pub profile_name: Option<String>,
    pub profile_version: Option<i64>,
    /// The version of the server's data model the profile follows.
    pub model_version: Option<i64>,
    pub pending_uploads: u64,
    pub database_bytes: u64,
    pub tables: Vec<OfflineTableStatus>,
    pub recent_errors: Vec<LocalSyncError>,
    /// The network check's view.
    pub network: NetworkStatus,
    /// The device's sync settings.
    pub settings: SyncSettings,
    /// Per table, the tables its related-rows rules reach (transitively);
    /// it syncs together with any of them.
    pub dependency_closure: BTreeMap<String, Vec<String>>,
    /// Telemetry events waiting for upload.
    pub pending_telemetry: u64,
    /// Online mode is on.
    pub online_mode: bool,
}

/// What a reset did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ResetReport {
    /// Unsynced changes that were discarded (only with force).
    pub discarded_changes: u64,
}

/// The device engine. Cheap to share behind an `Arc`.
pub struct Engine {
    pub(crate) store: Arc<Store>,
    pub(crate) api: ServerApi,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) profile: RwLock<Option<SyncProfile>>,
    pub(crate) page_size: u32,
    pub(crate) sync_lock: tokio::sync::Mutex<()>,
    device_id: String,
    pub(crate) live: Mutex<Live>,
    pub(crate) settings: Mutex<SyncSettings>,
    pub(crate) wake: Arc<tokio::sync::Notify>,
    pub(crate) listeners: Arc<Listeners>,
    pub(crate) options: EngineConfig,
    pub(crate) run_lock: tokio::sync::Mutex<()>,
    pub(crate) task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Engine {
    /// Opens the engine with the HTTP transport and the system clock.
    pub fn open(config: EngineConfig) -> Result<Arc<Engine>> {
        let transport = Arc::new(HttpTransport::new(
            &config.server_url,
            config.http_timeouts,
            &config.tls,
        )?);
        Self::open_with(config, transport, Arc::new(SystemClock))
    }

    /// Opens the engine with an injected transport and clock.
    pub fn open_with(
        config: EngineConfig,
        transport: Arc<dyn Transport>,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Engine>> {
        if config.page_size == 0 || config.page_size > MAX_PAGE_SIZE {
            return Err(Error::InvalidInput(format!(
                "page size must be 1 to {MAX_PAGE_SIZE}"
            )));
        }
        if config.parallel_pulls == 0 || config.parallel_pulls > MAX_PARALLEL_PULLS {
            return Err(Error::InvalidInput(format!(
                "parallel pulls must be 1 to {MAX_PARALLEL_PULLS}"
            )));
        }
        let token = match &config.token_provider {
            Some(provider) => provider.token(false)?,
            None => config.token.clone(),
        };
        if token.trim().is_empty() {
            return Err(Error::InvalidInput("a token is required".into()));
        }
        let store = Store::open_with_key(&config.database_path, config.encryption_key.as_ref())?;
        let device_id = match store.meta("device_id")? {
            Some(id) => id,
            None => {
                let id = uuid::Uuid::new_v4().to_string();
                store.set_meta("device_id", &id)?;
                id
            }
        };
        let profile = store.profile()?;
        crate::telemetry::init(&store)?;
        let settings = SyncSettings::load(&store)?;
        let kept_network = if config.persist_os_network {
            crate::network::OsNetwork::load(&store)?
        } else {
            None
        };
        let mut options = config.clone();
        // The token lives in the client only, the key in the store only.
        options.token = String::new();
        options.encryption_key = None;
        let engine = Arc::new(Engine {
            api: ServerApi::with_provider(
                transport,
                Credentials {
                    token,
                    device_id: device_id.clone(),
                },
                config.token_provider,
            ),
            store: Arc::new(store),
            clock,
            profile: RwLock::new(profile),
            page_size: config.page_size,
            sync_lock: tokio::sync::Mutex::new(()),
            device_id,
            live: Mutex::new(Live::default()),
            settings: Mutex::new(settings),
            wake: Arc::new(tokio::sync::Notify::new()),
            listeners: Arc::new(Listeners::default()),
            options,
            run_lock: tokio::sync::Mutex::new(()),
            task: Mutex::new(None),
        });
        if let Some(os) = kept_network {
            engine.apply_os_network(os);
        }
        let weak = Arc::downgrade(&engine);
        engine
            .store
            .set_change_callback(Some(Arc::new(move |tables: &BTreeSet<String>| {
                if let Some(engine) = weak.upgrade() {
                    engine.deliver_queries(tables);
                }
            })));
        Ok(engine)
    }

    /// This device's id.
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// The offline profile in force on this device.
    pub fn profile(&self) -> Option<SyncProfile> {
        self.profile
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn set_profile(&self, p: SyncProfile) {
        *self.profile.write().unwrap_or_else(|p| p.into_inner()) = Some(p);
    }

    pub(crate) fn emit(&self, event: SyncEvent) {
        self.follow_event(&event);
        self.listeners.publish_event(&event);
    }

    /// Replaces the bearer token for every later request (kept in memory
    /// only). Fails with [`Error::InvalidInput`] for a blank token.
    pub fn set_token(&self, token: &str) -> Result<()> {
        self.api.set_token(token)
    }

    pub(crate) fn table_checked(&self, name: &str) -> Result<SyncTable> {
        self.table(name)
    }

    /// The profile and the named table of it, for a local write.
    /// Refuses a write the profile does not let its users make (its write
    /// rights for the table), before anything is queued.
    pub(crate) fn check_rights(
        table: &SyncTable,
        op: Op,
        fields: &BTreeMap<String, Value>,
    ) -> Result<()> {
        match table.writes.refusal(table, op, fields.keys()) {
            Some(why) => Err(Error::NotAllowed(why)),
            None => Ok(()),
        }
    }

    fn write_target(&self, name: &str) -> Result<(SyncProfile, SyncTable)> {
        let table = self.table(name)?;
        let profile = self
            .profile()
            .ok_or_else(|| Error::UnknownTable(name.to_owned()))?;
        Ok((profile, table))
    }

    fn table(&self, name: &str) -> Result<SyncTable> {
        let profile = self.profile.read().unwrap_or_else(|p| p.into_inner());
        let profile = profile
            .as_ref()
            .ok_or_else(|| Error::NoProfile(name.to_owned()))?;
        profile
            .table(name)
            .cloned()
            .ok_or_else(|| Error::UnknownTable(name.to_owned()))
    }

    pub(crate) fn check_fields(
        table: &SyncTable,
        id: &str,
        fields: BTreeMap<String, Value>,
    ) -> Result<BTreeMap<String, Value>> {
        if id.is_empty() || id.len() > 256 {
            return Err(Error::InvalidInput(
                "a record id is 1 to 256 characters".into(),
            ));
        }
        let mut out = BTreeMap::new();
        for (name, value) in fields {
            let column = table.column(&name).ok_or_else(|| Error::UnknownColumn {
                table: table.name.clone(),
                column: name.clone(),
            })?;
            if name == table.primary_key {
                if value != Value::Text(id.to_owned()) {
                    return Err(Error::InvalidInput(
                        "the primary key field differs from the record id".into(),
                    ));
                }
                continue;
            }
            let value = column
                .check(value)
                .map_err(|e| Error::InvalidInput(format!("column '{name}': {e}")))?;
            out.insert(name, value);
        }
        Ok(out)
    }

    /// A new row's fields with the data model's defaults for the columns
    /// not given; a required column left without a value is refused.
    pub(crate) fn with_defaults(
        table: &SyncTable,
        mut fields: BTreeMap<String, Value>,
    ) -> Result<BTreeMap<String, Value>> {
        for c in &table.columns {
            if c.name == table.primary_key || fields.contains_key(&c.name) {
                continue;
            }
            match &c.default {
                Some(v) => {
                    fields.insert(c.name.clone(), v.clone());
                }
                None if c.required => {
                    return Err(Error::InvalidInput(format!(
                        "column '{}': the column is required",
                        c.name
                    )));
                }
                None => {}
            }
        }
        Ok(fields)
    }

    /// Reads a record from the device (never from the network).
    pub fn get(&self, table: &str, id: &str) -> Result<Record> {
        let table = self.table(table)?;
        self.store.get(&table, id)
    }

    /// Lists records ordered by primary key, after `after`, at most `limit`.
    pub fn list(&self, table: &str, after: Option<&str>, limit: u32) -> Result<Vec<Record>> {
        let table = self.table(table)?;
        self.store.list(&table, after, limit.min(100_000))
    }

    /// Compiles `query` for its table and the engine's clock and user.
    fn compile_query(&self, query: &Query) -> Result<(SyncTable, CompiledQuery)> {
        let table = self.table(&query.table)?;
        let ctx = {
            let profile = self.profile.read().unwrap_or_else(|p| p.into_inner());
            match profile.as_ref() {
                Some(p) => p.filter_context(self.clock.now_ms()),
                None => return Err(Error::UnknownTable(query.table.clone())),
            }
        };
        let compiled = query.compile(&table, &ctx)?;
        Ok((table, compiled))
    }

    /// The records of the device that `query` selects, in its order (never
    /// from the network). A condition or order on a column the table does not
    /// sync is [`Error::InvalidInput`].
    pub fn query(&self, query: &Query) -> Result<Vec<Record>> {
        let (table, compiled) = self.compile_query(query)?;
        self.store.query(&table, &compiled)
    }

    /// How SQLite runs `query` on the device: the lines of its `EXPLAIN
    /// QUERY PLAN` (`SEARCH ... USING INDEX ...` when an index serves it).
    /// For diagnostics and tests.
    pub fn query_plan(&self, query: &Query) -> Result<Vec<String>> {
        let (table, compiled) = self.compile_query(query)?;
        self.store.query_plan(&table, &compiled)
    }

    /// How many records of the device `query`'s condition selects (its
    /// limit and offset are not applied).
    pub fn count(&self, query: &Query) -> Result<u64> {
        let (table, compiled) = self.compile_query(query)?;
        self.store.query_count(&table, &compiled)
    }

    /// Observes `query`: `listener` receives its result at once, then again
    /// after each local write or sync that commits a change to a row of its
    /// table (once per commit, not per row; never for other tables), until
    /// the returned handle is cancelled or dropped. When the table leaves
    /// the device (dropped from the offline profile, or a reset) the
    /// listener receives an empty result and stays registered: rows come
    /// again if the table returns. An invalid query is refused here.
    pub fn observe(
        &self,
        query: Query,
        listener: Arc<dyn QueryListener>,
    ) -> Result<Arc<ListenerHandle>> {
        self.compile_query(&query)?;
        let observer = Arc::new(QueryObserver { query, listener });
        let handle = self.listeners.add_query(observer.clone());
        self.deliver(&observer);
        Ok(Arc::new(handle))
    }

    /// Runs an observed query and hands its result to its listener. A
    /// table no longer on the device (it left the offline profile, or a
    /// reset cleared the database) gives an empty result: the observation
    /// goes on and delivers rows again if the table comes back.
    fn deliver(&self, observer: &QueryObserver) {
        match self.query(&observer.query) {
            Ok(records) => observer.listener.on_result(records),
            Err(Error::UnknownTable(_) | Error::NoProfile(_)) => {
                observer.listener.on_result(Vec::new())
            }
            Err(e) => observer.listener.on_error(e),
        }
    }

    /// Delivers the observed queries over `tables` (a commit changed them,
    /// or they left the device).
    /// Observers of the same query share one run of it (an app's screens
    /// often observe the same list more than once); each gets its copy.
    pub(crate) fn deliver_queries(&self, tables: &BTreeSet<String>) {
        let mut ran: Vec<(crate::query::Query, Vec<Record>)> = Vec::new();
        for observer in self.listeners.queries_over(tables) {
            if let Some((_, records)) = ran.iter().find(|(q, _)| *q == observer.query) {
                observer.listener.on_result(records.clone());
                continue;
            }
            match self.query(&observer.query) {
                Ok(records) => {
                    observer.listener.on_result(records.clone());
                    ran.push((observer.query.clone(), records));
                }
                Err(Error::UnknownTable(_) | Error::NoProfile(_)) => {
                    observer.listener.on_result(Vec::new())
                }
                Err(e) => observer.listener.on_error(e),
            }
        }
    }

    /// Creates a record on the device and queues it for upload.
    pub fn insert(&self, table: &str, id: &str, fields: BTreeMap<String, Value>) -> Result<Record> {
        let (profile, table) = self.write_target(table)?;
        let fields = Self::check_fields(&table, id, fields)?;
        Self::check_rights(&table, Op::Insert, &fields)?;
        let fields = Self::with_defaults(&table, fields)?;
        let record = self
            .store
            .write(
                &profile,
                &table,
                id,
                Op::Insert,
                fields,
                self.clock.now_ms(),
            )?
            .ok_or_else(|| Error::Internal("insert returned no record".into()));
        self.publish_status();
        record
    }

    /// Changes fields of a record on the device and queues the change.
    pub fn update(&self, table: &str, id: &str, fields: BTreeMap<String, Value>) -> Result<Record> {
        let (profile, table) = self.write_target(table)?;
        let fields = Self::check_fields(&table, id, fields)?;
        Self::check_rights(&table, Op::Update, &fields)?;
        let record = self
            .store
            .write(
                &profile,
                &table,
                id,
                Op::Update,
                fields,
                self.clock.now_ms(),
            )?
            .ok_or_else(|| Error::Internal("update returned no record".into()));
        self.publish_status();
        record
    }

    /// Updates the record if it is on the device, creates it otherwise.
    pub fn put(&self, table: &str, id: &str, fields: BTreeMap<String, Value>) -> Result<Record> {
        match self.update(table, id, fields.clone()) {
            Err(Error::RecordNotFound { .. }) => self.insert(table, id, fields),
            other => other,
        }
    }

    /// Deletes a record on the device and queues the deletion.
    pub fn delete(&self, table: &str, id: &str) -> Result<()> {
        let (profile, table) = self.write_target(table)?;
        Self::check_fields(&table, id, BTreeMap::new())?;
        Self::check_rights(&table, Op::Delete, &BTreeMap::new())?;
        self.store.write(
            &profile,
            &table,
            id,
            Op::Delete,
            BTreeMap::new(),
            self.clock.now_ms(),
        )?;
        self.publish_status();
        Ok(())
    }

    /// Number of local changes waiting for upload.
    pub fn pending_uploads(&self) -> Result<u64> {
        self.store.pending_count()
    }

    /// Local changes waiting for upload, in upload order.
    pub fn outbox(&self) -> Result<Vec<crate::store::OutboxEntry>> {
        self.store.outbox()
    }

    /// Sync errors kept on the device, newest first.
    pub fn sync_errors(&self, limit: u32) -> Result<Vec<LocalSyncError>> {
        self.store.sync_errors(limit)
    }

    /// Uploads pending changes, then downloads every table of the profile.
    pub async fn sync(&self) -> Result<SyncReport> {
        self.run_direct(None).await
    }

    /// Uploads pending changes, then downloads only the named tables.
    pub async fn sync_tables(&self, tables: Vec<String>) -> Result<SyncReport> {
        self.run_direct(Some(tables)).await
    }

    /// A snapshot of the device's state.
    pub fn status(&self) -> Result<DeviceStatus> {
        let profile = self.profile();
        let pending = self.store.pending_by_table()?;
        let input = self.scheduler_input()?;
        let effective = crate::scheduler::effective_intervals(&input);
        let due = crate::scheduler::next_due(&input);
        let mut tables = Vec::new();
        if let Some(p) = &profile {
            for t in &p.tables {
                let state = self.store.table_state(&t.name)?;
                tables.push(OfflineTableStatus {
                    table: t.name.clone(),
                    rows: self.store.count(&t.name)?,
                    last_sync_at: state.last_sync_at,
                    initial_sync_done: state.initial_done,
                    pending_uploads: pending.get(&t.name).copied().unwrap_or(0),
                    sync_interval_secs: t.sync_interval_secs,
                    last_error: state.last_error,
                    effective_interval_secs: effective.get(&t.name).copied(),
                    next_due_at: due.get(&t.name).copied().flatten(),
                });
            }
        }
        Ok(DeviceStatus {
            device_id: self.device_id.clone(),
            profile_name: profile.as_ref().map(|p| p.name.clone()),
            profile_version: profile.as_ref().map(|p| p.version),
            model_version: profile.as_ref().map(|p| p.model_version),
            pending_uploads: pending.values().sum(),
            database_bytes: self.store.size_bytes(),
            tables,
            recent_errors: self.store.sync_errors(20)?,
            network: self.network_status(),
            settings: self.settings(),
            dependency_closure: input.closure,
            pending_telemetry: crate::telemetry::count(&self.store)?,
            online_mode: self.online_mode(),
        })
    }

    /// The offline status: per table, rows, last successful sync and next due time.
    pub fn offline_status(&self) -> Result<Vec<OfflineTableStatus>> {
        Ok(self.status()?.tables)
    }

    /// Clears the offline database. Refuses with [`Error::PendingUploads`]
    /// (saying how many) while local changes wait for upload, unless `force`.
    pub async fn reset(&self, force: bool) -> Result<ResetReport> {
        let _run = self.run_lock.lock().await;
        let _guard = self.sync_lock.lock().await;
        let discarded = self.store.reset(force)?;
        let tables: BTreeSet<String> = self
            .profile()
            .map(|p| p.tables.iter().map(|t| t.name.clone()).collect())
            .unwrap_or_default();
        *self.profile.write().unwrap_or_else(|p| p.into_inner()) = None;
        // Every observed query of a cleared table is told: an empty result.
        self.deliver_queries(&tables);
        self.publish_status();
        Ok(ResetReport {
            discarded_changes: discarded,
        })
    }
}
