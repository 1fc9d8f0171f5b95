//! The core's sync service, exported: what the shell reports (app active,
//! OS network, a clock change), the scheduler's start and stop, the network
//! check, sync now and Refresh with the core's semantics, the settings,
//! online mode, telemetry, the live sync status and its listener, and the
//! credentials (token provider, new token).
//!
//! Every decision stays in the core: a shell reports OS facts with
//! `set_app_active` and `set_os_network`, starts the service with `start`,
//! renders the [`SyncStatus`] its status listener receives and the
//! notifications among the sync events, and nothing else.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use fieldsync_core::{
    BackgroundJob as CoreBackgroundJob, BackgroundJobOutcome as CoreBackgroundJobOutcome,
    BackgroundPlan as CoreBackgroundPlan, Blocker as CoreBlocker, Clock, Decision as CoreDecision,
    Engine as CoreEngine, ManualClock, NetworkStatus as CoreNetworkStatus,
    NetworkType as CoreNetworkType, OsNetwork as CoreOsNetwork, Reachability as CoreReachability,
    ScheduledSync as CoreScheduledSync, SyncFrequency as CoreSyncFrequency,
    SyncMode as CoreSyncMode, SyncNowOutcome as CoreSyncNowOutcome,
    SyncProgress as CoreSyncProgress, SyncSettings as CoreSyncSettings,
    SyncStatus as CoreSyncStatus,
};

use crate::Engine;
use crate::errors::FieldSyncError;
use crate::listeners::{Delivery, ListenerHandle};
use crate::records::{Record, SyncReport, count};

/// The kind of network the OS reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum NetworkType {
    /// Wi-Fi.
    Wifi,
    /// Mobile data.
    Cellular,
    /// Wired.
    Ethernet,
    /// Connected, kind unknown.
    Other,
    /// No network.
    None,
}

impl From<NetworkType> for CoreNetworkType {
    fn from(t: NetworkType) -> Self {
        match t {
            NetworkType::Wifi => CoreNetworkType::Wifi,
            NetworkType::Cellular => CoreNetworkType::Cellular,
            NetworkType::Ethernet => CoreNetworkType::Ethernet,
            NetworkType::Other => CoreNetworkType::Other,
            NetworkType::None => CoreNetworkType::None,
        }
    }
}

impl From<CoreNetworkType> for NetworkType {
    fn from(t: CoreNetworkType) -> Self {
        match t {
            CoreNetworkType::Wifi => NetworkType::Wifi,
            CoreNetworkType::Cellular => NetworkType::Cellular,
            CoreNetworkType::Ethernet => NetworkType::Ethernet,
            CoreNetworkType::Other => NetworkType::Other,
            CoreNetworkType::None => NetworkType::None,
        }
    }
}

/// What the OS says about the network; the shell reports it on every change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Record)]
pub struct OsNetwork {
    /// The OS has a network connection.
    pub connected: bool,
    /// The connection is metered (mobile data, a hotspot): Wi-Fi only
    /// blocks scheduled syncs on it.
    pub metered: bool,
    /// The kind of connection.
    pub network_type: NetworkType,
}

impl From<OsNetwork> for CoreOsNetwork {
    fn from(n: OsNetwork) -> Self {
        CoreOsNetwork {
            connected: n.connected,
            metered: n.metered,
            network_type: n.network_type.into(),
        }
    }
}

impl From<CoreOsNetwork> for OsNetwork {
    fn from(n: CoreOsNetwork) -> Self {
        OsNetwork {
            connected: n.connected,
            metered: n.metered,
            network_type: n.network_type.into(),
        }
    }
}

/// Whether the sync server can be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum Reachability {
    /// No probe has answered yet (offline mode until one does).
    Checking,
    /// The last probe answered in time.
    Available,
    /// Network or Service Unavailable.
    Unavailable,
}

impl From<CoreReachability> for Reachability {
    fn from(r: CoreReachability) -> Self {
        match r {
            CoreReachability::Checking => Reachability::Checking,
            CoreReachability::Available => Reachability::Available,
            CoreReachability::Unavailable => Reachability::Unavailable,
        }
    }
}

/// The engine's view of the network: the OS's report and the network check.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct NetworkStatus {
    /// Whether the server can be reached.
    pub reachability: Reachability,
    /// What the OS reported last.
    pub os: OsNetwork,
    /// "Network or Service Unavailable: ..." when unavailable.
    pub message: Option<String>,
    /// When the last probe finished, ms since the epoch.
    pub last_probe_at_ms: Option<i64>,
}

impl From<CoreNetworkStatus> for NetworkStatus {
    fn from(s: CoreNetworkStatus) -> Self {
        NetworkStatus {
            reachability: s.reachability.into(),
            os: s.os.into(),
            message: s.message,
            last_probe_at_ms: s.last_probe_at,
        }
    }
}

/// How often scheduled syncs run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum SyncFrequency {
    /// Each table at its offline profile's sync interval.
    Auto,
    /// A table syncs at the longer of this and its profile interval.
    Every {
        /// Seconds, 300 to 86400.
        secs: u32,
    },
    /// Only when the user asks (sync now, Refresh); a new profile's first
    /// download still starts on its own.
    ManualOnly,
}

/// The device's sync settings, kept in the device database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Record)]
pub struct SyncSettings {
    /// Scheduled syncs start only on an unmetered network.
    pub wifi_only: bool,
    /// The user may switch to online mode.
    pub online_mode_enabled: bool,
    /// Sync telemetry is collected and uploaded.
    pub telemetry_enabled: bool,
    /// Scheduled sync frequency.
    pub frequency: SyncFrequency,
    /// Skip downloading tables the server reports unchanged.
    pub smart_sync: bool,
    /// Opt-in periodic sync while the app is in the background (off by
    /// default: the seed starts syncs only while the app is active).
    pub background_sync: bool,
}

impl From<CoreSyncSettings> for SyncSettings {
    fn from(s: CoreSyncSettings) -> Self {
        SyncSettings {
            wifi_only: s.wifi_only,
            online_mode_enabled: s.online_mode_enabled,
            telemetry_enabled: s.telemetry_enabled,
            frequency: match s.frequency {
                CoreSyncFrequency::Auto => SyncFrequency::Auto,
                CoreSyncFrequency::Every { secs } => SyncFrequency::Every { secs },
                CoreSyncFrequency::ManualOnly => SyncFrequency::ManualOnly,
            },
            smart_sync: s.smart_sync,
            background_sync: s.background_sync,
        }
    }
}

impl From<SyncSettings> for CoreSyncSettings {
    fn from(s: SyncSettings) -> Self {
        CoreSyncSettings {
            wifi_only: s.wifi_only,
            online_mode_enabled: s.online_mode_enabled,
            telemetry_enabled: s.telemetry_enabled,
            frequency: match s.frequency {
                SyncFrequency::Auto => CoreSyncFrequency::Auto,
                SyncFrequency::Every { secs } => CoreSyncFrequency::Every { secs },
                SyncFrequency::ManualOnly => CoreSyncFrequency::ManualOnly,
            },
            smart_sync: s.smart_sync,
            background_sync: s.background_sync,
        }
    }
}

/// Why a sync runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum SyncMode {
    /// The first download of one or more tables.
    First,
    /// A scheduled sync of the due tables.
    Delta,
    /// The user's Refresh of a table.
    Refresh,
    /// The user's sync now.
    Forced,
}

impl From<CoreSyncMode> for SyncMode {
    fn from(m: CoreSyncMode) -> Self {
        match m {
            CoreSyncMode::First => SyncMode::First,
            CoreSyncMode::Delta => SyncMode::Delta,
            CoreSyncMode::Refresh => SyncMode::Refresh,
            CoreSyncMode::Forced => SyncMode::Forced,
        }
    }
}

/// Why the scheduler starts no sync now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum Blocker {
    /// The app is in the background.
    AppInactive,
    /// Network or Service Unavailable.
    NetworkUnavailable,
    /// Wi-Fi only is on and the network is metered.
    MeteredNetwork,
    /// Frequency "manual only": waiting for the user.
    ManualOnly,
    /// Waiting for the retry instant after a failure.
    Backoff,
    /// Every table is up to date; waiting for the next due time.
    UpToDate,
}

impl From<CoreBlocker> for Blocker {
    fn from(b: CoreBlocker) -> Self {
        match b {
            CoreBlocker::AppInactive => Blocker::AppInactive,
            CoreBlocker::NetworkUnavailable => Blocker::NetworkUnavailable,
            CoreBlocker::MeteredNetwork => Blocker::MeteredNetwork,
            CoreBlocker::ManualOnly => Blocker::ManualOnly,
            CoreBlocker::Backoff => Blocker::Backoff,
            CoreBlocker::UpToDate => Blocker::UpToDate,
        }
    }
}

/// What `try_sync_now` did.
#[derive(Debug, Clone, uniffi::Enum)]
pub enum SyncNowOutcome {
    /// The sync ran.
    Synced {
        /// Its report.
        report: SyncReport,
    },
    /// No sync started: a condition of the scheduler blocks it.
    Blocked {
        /// The condition.
        blocker: Blocker,
        /// Why, in words fit for a user.
        message: String,
    },
}

impl From<CoreSyncNowOutcome> for SyncNowOutcome {
    fn from(o: CoreSyncNowOutcome) -> Self {
        match o {
            CoreSyncNowOutcome::Synced { report } => SyncNowOutcome::Synced {
                report: report.into(),
            },
            CoreSyncNowOutcome::Blocked { blocker, message } => SyncNowOutcome::Blocked {
                blocker: blocker.into(),
                message,
            },
        }
    }
}

/// Progress of the running sync.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct SyncProgress {
    /// Id of the sync (shared with its telemetry and notifications).
    pub sync_id: String,
    /// Why it runs.
    pub mode: SyncMode,
    /// The table downloading now.
    pub table: Option<String>,
    /// Rows received so far in this sync.
    pub rows_done: i64,
    /// Rows expected, over the tables whose size is known so far.
    pub rows_total: Option<i64>,
    /// Bytes downloaded so far.
    pub bytes_down: i64,
    /// The share done, 0.0 to 1.0, when a total is known; it never
    /// decreases within a sync and is 1.0 only once every row is stored.
    pub fraction: Option<f64>,
}

impl From<CoreSyncProgress> for SyncProgress {
    fn from(p: CoreSyncProgress) -> Self {
        SyncProgress {
            sync_id: p.sync_id,
            mode: p.mode.into(),
            table: p.table,
            rows_done: count(p.rows_done),
            rows_total: p.rows_total.map(count),
            bytes_down: count(p.bytes_down),
            fraction: p.fraction,
        }
    }
}

/// The sync icon's states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum SyncIcon {
    /// Offline mode: no network, or Network or Service Unavailable.
    NotConnected,
    /// Connected and up to date.
    Connected,
    /// A sync is running.
    Syncing,
    /// Connected; local changes wait for upload.
    PendingUploads,
    /// The last sync failed.
    Error,
    /// The last sync finished with conflicts or rejected changes.
    Warning,
}

impl From<fieldsync_core::status::SyncIcon> for SyncIcon {
    fn from(i: fieldsync_core::status::SyncIcon) -> Self {
        use fieldsync_core::status::SyncIcon as C;
        match i {
            C::NotConnected => SyncIcon::NotConnected,
            C::Connected => SyncIcon::Connected,
            C::Syncing => SyncIcon::Syncing,
            C::PendingUploads => SyncIcon::PendingUploads,
            C::Error => SyncIcon::Error,
            C::Warning => SyncIcon::Warning,
        }
    }
}

/// The sync status behind the sync icon, delivered on every change.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct SyncStatus {
    /// The icon's state.
    pub icon: SyncIcon,
    /// Text for the icon's tooltip or banner.
    pub message: Option<String>,
    /// The network as the engine sees it.
    pub network: NetworkStatus,
    /// Online mode is on.
    pub online_mode: bool,
    /// The app is in the foreground (as last reported).
    pub app_active: bool,
    /// The running sync; none when no sync runs.
    pub progress: Option<SyncProgress>,
    /// Local changes waiting for upload.
    pub pending_uploads: i64,
    /// Latest successful sync of any table, ms since the epoch.
    pub last_sync_at_ms: Option<i64>,
    /// When the scheduler looks again, ms since the epoch.
    pub next_sync_at_ms: Option<i64>,
    /// Why the scheduler started no sync when it last looked.
    pub waiting_for: Option<Blocker>,
    /// Consecutive failed syncs (0 after a success).
    pub failures: u32,
    /// The OS background jobs to keep scheduled now.
    pub background: BackgroundPlan,
}

impl From<CoreSyncStatus> for SyncStatus {
    fn from(s: CoreSyncStatus) -> Self {
        SyncStatus {
            icon: s.icon.into(),
            message: s.message,
            network: s.network.into(),
            online_mode: s.online_mode,
            app_active: s.app_active,
            progress: s.progress.map(Into::into),
            pending_uploads: count(s.pending_uploads),
            last_sync_at_ms: s.last_sync_at,
            next_sync_at_ms: s.next_sync_at,
            waiting_for: s.waiting_for.map(Into::into),
            failures: s.failures,
            background: s.background.into(),
        }
    }
}

/// The OS background work a shell keeps scheduled, as the core decides it
/// (delivered in every [`SyncStatus`]). The shell turns it into OS jobs and
/// decides nothing of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Record)]
pub struct BackgroundPlan {
    /// A sync is running while the app is in the background: keep a job
    /// that needs a network until it ends
    /// ([`BackgroundJob::FinishRunningSync`]).
    pub finish_running_sync: bool,
    /// The opt-in periodic background sync ([`BackgroundJob::Periodic`]);
    /// none when the `background_sync` setting is off or nothing would sync.
    pub periodic: Option<PeriodicSync>,
}

/// When the OS may run the periodic background sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Record)]
pub struct PeriodicSync {
    /// Run about this often, ms (the OS may stretch it: Android's floor is
    /// 15 minutes).
    pub interval_ms: i64,
    /// Run only on an unmetered network (the user chose Wi-Fi only).
    pub unmetered_only: bool,
}

impl From<CoreBackgroundPlan> for BackgroundPlan {
    fn from(p: CoreBackgroundPlan) -> Self {
        BackgroundPlan {
            finish_running_sync: p.finish_running_sync,
            periodic: p.periodic.map(|p| PeriodicSync {
                interval_ms: i64::from(p.interval_secs) * 1000,
                unmetered_only: p.unmetered_only,
            }),
        }
    }
}

/// Which OS background job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum BackgroundJob {
    /// Keeps the process alive until the running sync ends.
    FinishRunningSync,
    /// The opt-in periodic background sync.
    Periodic,
}

impl From<BackgroundJob> for CoreBackgroundJob {
    fn from(j: BackgroundJob) -> Self {
        match j {
            BackgroundJob::FinishRunningSync => CoreBackgroundJob::FinishRunningSync,
            BackgroundJob::Periodic => CoreBackgroundJob::Periodic,
        }
    }
}

/// How an OS background job ended.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum BackgroundJobOutcome {
    /// A sync ran to its end and succeeded.
    Synced,
    /// The sync failed; `retry`: ask the OS to run the job again later.
    Failed {
        /// Why, fit for a log.
        message: String,
        /// Ask the OS to run the job again later (with its backoff).
        retry: bool,
    },
    /// Nothing ran; `blocker` says why when the scheduler refused.
    Idle {
        /// The scheduler's reason, if it was asked.
        blocker: Option<Blocker>,
    },
}

impl From<CoreBackgroundJobOutcome> for BackgroundJobOutcome {
    fn from(o: CoreBackgroundJobOutcome) -> Self {
        match o {
            CoreBackgroundJobOutcome::Synced => BackgroundJobOutcome::Synced,
            CoreBackgroundJobOutcome::Failed { message, retry } => {
                BackgroundJobOutcome::Failed { message, retry }
            }
            CoreBackgroundJobOutcome::Idle { blocker } => BackgroundJobOutcome::Idle {
                blocker: blocker.map(Into::into),
            },
        }
    }
}

/// What the scheduler decides now.
#[derive(Debug, Clone, PartialEq, uniffi::Enum)]
pub enum Decision {
    /// Start a sync of these tables (none: every table) in this mode.
    Run {
        /// The tables; none means every table.
        tables: Option<Vec<String>>,
        /// Why.
        mode: SyncMode,
    },
    /// Start nothing; look again at `next_at_ms` or on an event.
    Wait {
        /// Why not now.
        blocker: Blocker,
        /// When to look again, ms since the epoch.
        next_at_ms: Option<i64>,
    },
}

impl From<CoreDecision> for Decision {
    fn from(d: CoreDecision) -> Self {
        match d {
            CoreDecision::Run { tables, mode } => Decision::Run {
                tables,
                mode: mode.into(),
            },
            CoreDecision::Wait { blocker, next_at } => Decision::Wait {
                blocker: blocker.into(),
                next_at_ms: next_at,
            },
        }
    }
}

/// What one scheduler step ran.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct ScheduledSync {
    /// Why it ran.
    pub mode: SyncMode,
    /// Tables the scheduler chose (empty: every table).
    pub tables: Vec<String>,
    /// Due tables not downloaded because the server reported them unchanged.
    pub skipped_unchanged: Vec<String>,
    /// What the sync did.
    pub report: SyncReport,
}

impl From<CoreScheduledSync> for ScheduledSync {
    fn from(s: CoreScheduledSync) -> Self {
        ScheduledSync {
            mode: s.mode.into(),
            tables: s.tables,
            skipped_unchanged: s.skipped_unchanged,
            report: s.report.into(),
        }
    }
}

/// An equality filter of an online read: `column = value`.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct OnlineFilter {
    /// Column name.
    pub column: String,
    /// The value it must hold (null matches missing values).
    pub value: crate::Value,
}

/// One page of live server rows (online mode); nothing of it is stored.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct OnlinePage {
    /// The table read.
    pub table: String,
    /// The rows, ordered by primary key.
    pub rows: Vec<Record>,
    /// Pass as `after` for the next page; none at the end.
    pub next_after: Option<String>,
}

impl From<fieldsync_core::OnlinePage> for OnlinePage {
    fn from(p: fieldsync_core::OnlinePage) -> Self {
        OnlinePage {
            table: p.table,
            rows: p.rows.into_iter().map(Into::into).collect(),
            next_after: p.next_after,
        }
    }
}

/// The app and device, carried in telemetry.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct AppInfo {
    /// The app's version, for example "4.2.0".
    pub app_version: String,
    /// The device model, for example "Pixel 8".
    pub device_model: String,
    /// The OS version, for example "Android 15".
    pub os_version: String,
}

impl From<AppInfo> for fieldsync_core::AppInfo {
    fn from(a: AppInfo) -> Self {
        fieldsync_core::AppInfo {
            app_version: a.app_version,
            device_model: a.device_model,
            os_version: a.os_version,
        }
    }
}

/// Receives the sync status: the current one at registration, then every
/// change (a sync's start, its progress and end, a local write, a network
/// or app-state report, a settings change).
#[uniffi::export(with_foreign)]
pub trait StatusListener: Send + Sync {
    /// Called with each status, in order, on a background thread.
    fn on_status(&self, status: SyncStatus);
}

/// Gives the engine the user's bearer token. Asked at open, and again when
/// the server refuses the token (401), after which the refused request is
/// sent once more. The engine keeps the token in memory only.
#[uniffi::export(with_foreign)]
pub trait TokenProvider: Send + Sync {
    /// The user's current token; `refused` is true when the server has just
    /// refused the previous one (fetch a fresh one). Throw `Unauthorized`
    /// when there is none (the user must sign in again).
    fn token(&self, refused: bool) -> Result<String, FieldSyncError>;
}

/// Adapts the app's provider to the core's.
pub(crate) struct ProviderAdapter(pub(crate) Arc<dyn TokenProvider>);

impl fieldsync_core::TokenProvider for ProviderAdapter {
    fn token(&self, refused: bool) -> fieldsync_core::Result<String> {
        self.0.token(refused).map_err(|e| match e {
            FieldSyncError::NetworkUnavailable { reason } => {
                fieldsync_core::Error::NetworkUnavailable(reason)
            }
            FieldSyncError::Unauthorized { .. } => fieldsync_core::Error::Unauthorized,
            other => fieldsync_core::Error::Internal(format!("the token provider failed: {other}")),
        })
    }
}

/// A clock tests set by hand, passed to [`crate::Engine::open_for_tests`]:
/// the scheduler's intervals pass when the test says so. For tests only;
/// apps use the system clock ([`crate::Engine::open`]).
#[derive(uniffi::Object)]
pub struct TestClock {
    clock: Arc<ManualClock>,
    engines: Mutex<Vec<Weak<CoreEngine>>>,
}

#[uniffi::export]
impl TestClock {
    /// A clock at `now_ms` (ms since the epoch).
    #[uniffi::constructor]
    pub fn new(now_ms: i64) -> Arc<TestClock> {
        Arc::new(TestClock {
            clock: Arc::new(ManualClock::new(now_ms)),
            engines: Mutex::new(Vec::new()),
        })
    }

    /// The clock's time, ms since the epoch.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Moves the clock forward by `ms`; the engines opened with it look at
    /// their schedule again at once.
    pub fn advance(&self, ms: i64) {
        self.clock.advance(ms);
        let engines = self.engines.lock().unwrap_or_else(|p| p.into_inner());
        for e in engines.iter().filter_map(Weak::upgrade) {
            e.time_changed();
        }
    }
}

impl TestClock {
    pub(crate) fn clock(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }

    pub(crate) fn attach(&self, engine: &Arc<CoreEngine>) {
        let mut engines = self.engines.lock().unwrap_or_else(|p| p.into_inner());
        engines.retain(|w| w.strong_count() > 0);
        engines.push(Arc::downgrade(engine));
    }
}

/// When each table is next due, ms since the epoch (none: manual only).
pub(crate) fn next_due_map(
    due: std::collections::BTreeMap<String, Option<i64>>,
) -> HashMap<String, Option<i64>> {
    due.into_iter().collect()
}

#[uniffi::export]
impl Engine {
    // ---- the service ---------------------------------------------------------

    /// Starts the sync service: the core's scheduler runs on the library's
    /// runtime and starts every sync itself (per-table intervals, the
    /// dependency closure, the user's frequency, Wi-Fi only, only while the
    /// app is active; smart sync; backoff after failures). Idempotent.
    pub fn start(&self) -> Result<(), FieldSyncError> {
        let _runtime = crate::runtime::runtime()?.enter();
        self.core.start();
        Ok(())
    }

    /// Stops the sync service (a running sync is cut off and resumes from
    /// its last committed page next time).
    pub fn stop(&self) {
        self.core.stop();
    }

    /// One step of the scheduler now: runs the sync it decides on, if any,
    /// and waits for it (for a background job woken by the OS).
    pub async fn run_due(&self) -> Result<Option<ScheduledSync>, FieldSyncError> {
        let core = self.core.clone();
        crate::runtime::run(async move { Ok(core.run_due().await?.map(Into::into)) }).await
    }

    /// The body of an OS background job (the shell runs it when the OS
    /// starts the job the [`BackgroundPlan`] asked for). Waits for a running
    /// sync to end; the periodic job then runs one scheduler step with the
    /// app-active rule lifted while the `background_sync` setting is on.
    pub async fn run_background_job(
        &self,
        job: BackgroundJob,
    ) -> Result<BackgroundJobOutcome, FieldSyncError> {
        let core = self.core.clone();
        crate::runtime::run(async move { Ok(core.run_background_job(job.into()).await?.into()) })
            .await
    }

    /// What the scheduler would do now, and why.
    pub async fn scheduler_decision(&self) -> Result<Decision, FieldSyncError> {
        let core = self.core.clone();
        crate::runtime::run_blocking(move || Ok(core.scheduler_decision()?.into())).await
    }

    /// When each table is next due, ms since the epoch (null: manual only).
    pub async fn next_due(&self) -> Result<HashMap<String, Option<i64>>, FieldSyncError> {
        let core = self.core.clone();
        crate::runtime::run_blocking(move || Ok(next_due_map(core.next_due()?))).await
    }

    // ---- what the shell reports --------------------------------------------

    /// The app came to the foreground (true) or went to the background. A
    /// running sync finishes; new syncs start only while active.
    pub fn set_app_active(&self, active: bool) {
        self.core.set_app_active(active);
    }

    /// The OS network changed (connected, metered, its kind). Without a
    /// connection the engine is offline at once; with one it checks the
    /// server.
    pub fn set_os_network(&self, network: OsNetwork) {
        self.core.set_os_network(network.into());
    }

    /// The device's clock or time zone changed: the scheduler looks again.
    pub fn time_changed(&self) {
        self.core.time_changed();
    }

    // ---- the network ------------------------------------------------------------

    /// The network as the engine sees it.
    pub fn network_status(&self) -> NetworkStatus {
        self.core.network_status().into()
    }

    /// Probes the server now (with the probe timeout) and returns the result.
    pub async fn check_network(&self) -> Result<NetworkStatus, FieldSyncError> {
        let core = self.core.clone();
        crate::runtime::run(async move { Ok(core.check_network().await.into()) }).await
    }

    // ---- the user's requests -------------------------------------------------------

    /// Sync now, through the service: the scheduler runs a full sync at its
    /// next step (at once while started), ignoring intervals and backoff but
    /// not the app-active, network and Wi-Fi-only conditions.
    pub fn request_sync(&self) {
        self.core.sync_now();
    }

    /// Refresh through the service: the scheduler refreshes `table` (and the
    /// tables whose rules reach it) at its next step, with a Refresh
    /// notification.
    pub fn request_refresh(&self, table: String) -> Result<(), FieldSyncError> {
        Ok(self.core.request_refresh(&table)?)
    }

    /// Sync now, awaited: syncs `tables` (null: every table) at once when the
    /// scheduler's conditions allow it (app active, network available, not a
    /// metered network with Wi-Fi only on; interval and backoff do not
    /// count), or starts nothing and says why.
    pub async fn try_sync_now(
        &self,
        tables: Option<Vec<String>>,
    ) -> Result<SyncNowOutcome, FieldSyncError> {
        let core = self.core.clone();
        crate::runtime::run(async move { Ok(core.try_sync_now(tables).await?.into()) }).await
    }

    /// Refreshes `table` now (and the tables whose rules reach it), always
    /// downloading, with a Refresh notification; waits for the result.
    pub async fn refresh(&self, table: String) -> Result<SyncReport, FieldSyncError> {
        let core = self.core.clone();
        crate::runtime::run(async move { Ok(core.refresh(&table).await?.into()) }).await
    }

    // ---- settings ------------------------------------------------------------------

    /// The device's sync settings.
    pub fn settings(&self) -> SyncSettings {
        self.core.settings().into()
    }

    /// Changes the settings and keeps them in the device database. Turning
    /// telemetry off discards events not yet uploaded.
    pub fn set_settings(&self, settings: SyncSettings) -> Result<(), FieldSyncError> {
        Ok(self.core.set_settings(settings.into())?)
    }

    /// Changes one setting by name (`wifi_only`, `online_mode_enabled`,
    /// `telemetry_enabled`, `frequency`, `smart_sync`, `background_sync`) from text, as the
    /// headless device does; returns the settings.
    pub fn set_setting(&self, name: String, value: String) -> Result<SyncSettings, FieldSyncError> {
        Ok(self.core.set_setting(&name, &value)?.into())
    }

    // ---- status ----------------------------------------------------------------------

    /// The sync status now (the icon's state, progress, pending uploads,
    /// last error).
    pub async fn sync_status(&self) -> Result<SyncStatus, FieldSyncError> {
        let core = self.core.clone();
        crate::runtime::run_blocking(move || Ok(core.sync_status()?.into())).await
    }

    /// Subscribes `listener` to the sync status: the current status at
    /// once, then every change. Keep the handle: the subscription ends when
    /// it is cancelled or dropped.
    pub fn add_status_listener(
        &self,
        listener: Arc<dyn StatusListener>,
    ) -> Result<Arc<ListenerHandle>, FieldSyncError> {
        let core = self.core.clone();
        ListenerHandle::start(
            move |queue| Ok(core.add_status_listener(Arc::new(queue))),
            Box::new(move |delivery| {
                if let Delivery::Status(status) = delivery {
                    listener.on_status(status.into());
                }
            }),
        )
    }

    /// The Offline Status of every table of the profile.
    pub async fn offline_status(&self) -> Result<Vec<crate::OfflineTableStatus>, FieldSyncError> {
        let core = self.core.clone();
        crate::runtime::run_blocking(move || {
            Ok(core.offline_status()?.into_iter().map(Into::into).collect())
        })
        .await
    }

    // ---- online mode ------------------------------------------------------------------

    /// True while online mode is on.
    pub fn online_mode(&self) -> bool {
        self.core.online_mode()
    }

    /// Turns online mode on (after a network check) or off. Fails with
    /// `InvalidInput` when the setting forbids it, `NetworkUnavailable` when
    /// the server cannot be reached.
    pub async fn set_online_mode(&self, on: bool) -> Result<(), FieldSyncError> {
        let core = self.core.clone();
        crate::runtime::run(async move { Ok(core.set_online_mode(on).await?) }).await
    }

    /// Reads one live row from the server (online mode); nothing is stored.
    pub async fn online_get(&self, table: String, id: String) -> Result<Record, FieldSyncError> {
        let core = self.core.clone();
        crate::runtime::run(async move { Ok(core.online_get(&table, &id).await?.into()) }).await
    }

    /// Lists live rows of `table` matching every filter, ordered by id after
    /// `after`, at most `limit` (1 to 1000); nothing is stored.
    pub async fn online_list(
        &self,
        table: String,
        filters: Vec<OnlineFilter>,
        after: Option<String>,
        limit: u32,
    ) -> Result<OnlinePage, FieldSyncError> {
        let core = self.core.clone();
        let filters = filters
            .into_iter()
            .map(|f| fieldsync_core::OnlineFilter {
                column: f.column,
                value: f.value.into(),
            })
            .collect();
        crate::runtime::run(async move {
            Ok(core
                .online_list(&table, filters, after, limit)
                .await?
                .into())
        })
        .await
    }

    // ---- telemetry ---------------------------------------------------------------------

    /// Uploads kept telemetry now (while enabled); returns the events sent.
    pub async fn upload_telemetry(&self) -> Result<i64, FieldSyncError> {
        let core = self.core.clone();
        crate::runtime::run(async move { Ok(count(core.upload_telemetry().await)) }).await
    }

    /// Telemetry events waiting for upload.
    pub async fn pending_telemetry(&self) -> Result<i64, FieldSyncError> {
        let core = self.core.clone();
        crate::runtime::run_blocking(move || Ok(count(core.pending_telemetry()?))).await
    }

    // ---- credentials ---------------------------------------------------------------------

    /// Replaces the bearer token for every later request (kept in memory
    /// only). Fails with `InvalidInput` for a blank token.
    pub fn set_token(&self, token: String) -> Result<(), FieldSyncError> {
        Ok(self.core.set_token(&token)?)
    }
}
