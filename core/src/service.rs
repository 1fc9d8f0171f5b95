//! The sync service (C7-C11, C14): the engine's live state and the
//! background scheduler task that makes every sync decision. The shell
//! reports facts (app active, OS network, a clock change); the service keeps
//! the network check, "sync now" and Refresh requests, retry backoff, the
//! running sync's progress, notifications, the settings and telemetry around
//! every sync, and delivers the sync status to listeners on every change.
//!
//! Every sync goes through [`Engine::run_tracked`], so direct calls
//! ([`Engine::sync`]), the user's requests and the scheduler all update the
//! status, raise notifications and record telemetry the same way. The
//! scheduler's decisions come from the pure [`crate::scheduler::decide`];
//! [`Engine::run_due`] is one step of it (tests drive it with a manual
//! clock), [`Engine::start`] runs it in a tokio task that sleeps until the
//! next due instant or an event, [`Engine::stop`] ends that task.
//!
//! Subscriptions are the listeners of [`crate::status`]: the only way the
//! engine delivers events and status.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use tracing::{debug, warn};

use crate::engine::Engine;
use crate::error::{Error, ErrorKind, Result};
use crate::live::Live;
use crate::network::{self, NetworkStatus, OsNetwork, Reachability, UNAVAILABLE_MESSAGE};
use crate::scheduler::{self, Blocker, Decision, SchedulerInput, SyncMode, TableTiming};
use crate::settings::SyncSettings;
use crate::status::{SyncEvent, SyncReport};
use crate::telemetry;

/// How long the background task sleeps at most before looking again (real
/// time), so a clock change is noticed.
const MAX_SLEEP_MS: i64 = 60_000;
/// Probe again at most this often while the server is unavailable (clock ms).
pub const PROBE_INTERVAL_MS: i64 = 30_000;

/// What [`Engine::try_sync_now`] did.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
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

/// Which OS background job runs ([`Engine::run_background_job`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BackgroundJob {
    /// Keeps the process alive until the running sync ends
    /// ([`crate::scheduler::BackgroundPlan::finish_running_sync`]).
    FinishRunningSync,
    /// The opt-in periodic background sync
    /// ([`crate::scheduler::BackgroundPlan::periodic`]).
    Periodic,
}

/// How an OS background job ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum BackgroundJobOutcome {
    /// A sync ran to its end and succeeded (the running one, or one the
    /// periodic job started).
    Synced,
    /// The sync failed; `retry` asks the OS to run the job again later (a
    /// periodic sync that found the network or service unavailable).
    Failed { message: String, retry: bool },
    /// Nothing ran; `blocker` says why when the scheduler refused.
    Idle { blocker: Option<Blocker> },
}

/// What one scheduler step ran.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScheduledSync {
    pub mode: SyncMode,
    /// Tables the scheduler chose (empty: every table).
    pub tables: Vec<String>,
    /// Due tables not downloaded because the server reported them unchanged
    /// (smart sync).
    pub skipped_unchanged: Vec<String>,
    pub report: SyncReport,
}

impl Engine {
    pub(crate) fn live(&self) -> MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    // ---- what the shell reports --------------------------------------------

    /// The app came to the foreground (`true`) or went to the background. A
    /// running sync is not stopped; new syncs start only while active.
    pub fn set_app_active(&self, active: bool) {
        let now = self.clock.now_ms();
        {
            let mut live = self.live();
            live.app_active = active;
            if let Some(run) = live.run.as_mut() {
                match (active, run.active_since) {
                    (false, Some(since)) => {
                        run.active_ms += now - since;
                        run.active_since = None;
                    }
                    (true, None) => run.active_since = Some(now),
                    _ => {}
                }
            }
        }
        self.wake.notify_one();
        self.publish_status();
    }

    /// The OS network changed. Without a connection the server is unavailable
    /// at once (and online mode ends); with one, the next step probes. With
    /// `EngineConfig::persist_os_network` the report is also kept in the
    /// device database for the next open.
    pub fn set_os_network(&self, os: OsNetwork) {
        if self.options.persist_os_network
            && let Err(e) = os.save(&self.store)
        {
            warn!(target: "fieldsync::network", error = %e, "cannot keep the network report");
        }
        self.apply_os_network(os);
    }

    pub(crate) fn apply_os_network(&self, os: OsNetwork) {
        let changed = {
            let mut live = self.live();
            let before = live.network.clone();
            live.network.os = os;
            if !os.connected {
                live.network.reachability = Reachability::Unavailable;
                live.network.message = Some(format!(
                    "{UNAVAILABLE_MESSAGE}: the device has no network connection"
                ));
            } else {
                live.probe_requested = true;
            }
            (before != live.network).then(|| live.network.clone())
        };
        if !os.connected {
            self.leave_online_mode("the network was lost");
        }
        if let Some(status) = changed {
            self.emit(SyncEvent::NetworkChanged { status });
        }
        self.wake.notify_one();
        self.publish_status();
    }

    /// The device's clock or time zone changed (or a test clock moved): the
    /// scheduler looks again at once instead of at the instant it chose.
    pub fn time_changed(&self) {
        self.wake.notify_one();
    }

    /// The network as the engine sees it.
    pub fn network_status(&self) -> NetworkStatus {
        self.live().network.clone()
    }

    /// Probes the server now (`GET /v1/health` with the probe timeout) and
    /// returns the resulting network status.
    pub async fn check_network(&self) -> NetworkStatus {
        let os = self.live().network.os;
        let result = if os.connected {
            network::probe(
                &self.api,
                Duration::from_millis(self.options.probe_timeout_ms),
            )
            .await
        } else {
            Err(format!(
                "{UNAVAILABLE_MESSAGE}: the device has no network connection"
            ))
        };
        let now = self.clock.now_ms();
        let (changed, status) = {
            let mut live = self.live();
            let before = live.network.clone();
            live.probe_requested = false;
            live.network.last_probe_at = Some(now);
            match &result {
                // The OS reported the network lost while the probe ran: its
                // report stands over the probe's late answer.
                Ok(()) if !live.network.os.connected => {}
                Ok(()) => {
                    live.network.reachability = Reachability::Available;
                    live.network.message = None;
                }
                Err(m) => {
                    live.network.reachability = Reachability::Unavailable;
                    live.network.message = Some(m.clone());
                }
            }
            let changed = before.reachability != live.network.reachability
                || before.message != live.network.message;
            (changed, live.network.clone())
        };
        debug!(target: "fieldsync::network", reachability = ?status.reachability, "network check");
        if result.is_err() {
            self.leave_online_mode("Network or Service Unavailable");
        }
        if changed {
            self.emit(SyncEvent::NetworkChanged {
                status: status.clone(),
            });
            self.wake.notify_one();
        }
        self.publish_status();
        status
    }

    pub(crate) fn network_failed(&self, message: &str) {
        let status = {
            let mut live = self.live();
            live.network.reachability = Reachability::Unavailable;
            live.network.message = Some(if message.starts_with(UNAVAILABLE_MESSAGE) {
                message.to_owned()
            } else {
                format!("{UNAVAILABLE_MESSAGE}: {message}")
            });
            live.network.clone()
        };
        self.leave_online_mode("Network or Service Unavailable");
        self.emit(SyncEvent::NetworkChanged { status });
    }

    // ---- user requests ------------------------------------------------------

    /// "Sync now": the scheduler runs a full sync at its next step (at once
    /// when the background task runs), ignoring the interval and backoff but
    /// not the app-active, network and Wi-Fi-only conditions.
    pub fn sync_now(&self) {
        self.live().sync_now = true;
        self.wake.notify_one();
    }

    /// "Sync now", awaited: when the scheduler's conditions allow a sync now
    /// (app active, network available, not a metered network with Wi-Fi
    /// only on; interval and backoff do not count), syncs `only` those
    /// tables (`None`: every table) at once and returns the report;
    /// otherwise starts nothing and returns why. The network is checked
    /// first when the engine does not know it to be available.
    pub async fn try_sync_now(&self, only: Option<Vec<String>>) -> Result<SyncNowOutcome> {
        let check = {
            let live = self.live();
            live.network.os.connected && (live.probe_requested || !live.network.available())
        };
        if check {
            self.check_network().await;
        }
        let mut input = self.scheduler_input()?;
        input.sync_now = true;
        input.refresh.clear();
        if let Decision::Wait { blocker, next_at } = scheduler::decide(&input) {
            {
                let mut live = self.live();
                live.waiting_for = Some(blocker);
                live.next_at = next_at;
            }
            self.publish_status();
            let message = match (blocker, self.live().network.message.clone()) {
                (Blocker::NetworkUnavailable, Some(m)) => format!("no sync started: {m}"),
                _ => blocker.message().to_owned(),
            };
            return Ok(SyncNowOutcome::Blocked { blocker, message });
        }
        {
            let mut live = self.live();
            live.waiting_for = None;
            live.sync_now = false;
        }
        let mode = self.direct_mode();
        Ok(SyncNowOutcome::Synced {
            report: self.run_tracked(only, mode).await?,
        })
    }

    /// Asks the scheduler to Refresh a table (and the tables whose rules
    /// reach it) at its next step, with a Refresh notification.
    pub fn request_refresh(&self, table: &str) -> Result<()> {
        self.table_checked(table)?;
        self.live().refresh.insert(table.to_owned());
        self.wake.notify_one();
        Ok(())
    }

    /// Refreshes a table now (and the tables whose rules reach it), with a
    /// Refresh notification; waits for the result.
    pub async fn refresh(&self, table: &str) -> Result<SyncReport> {
        self.table_checked(table)?;
        let profile = self
            .profile()
            .ok_or_else(|| Error::UnknownTable(table.to_owned()))?;
        let closure = scheduler::dependency_closure(&profile);
        let asked: BTreeSet<String> = [table.to_owned()].into_iter().collect();
        let set = scheduler::with_dependents(&asked, &closure);
        let tables: Vec<String> = profile
            .tables
            .iter()
            .filter(|t| set.contains(&t.name))
            .map(|t| t.name.clone())
            .collect();
        self.run_tracked(Some(tables), SyncMode::Refresh).await
    }

    // ---- settings ------------------------------------------------------------

    /// The device's sync settings.
    pub fn settings(&self) -> SyncSettings {
        *self.settings.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes and persists the settings. Turning telemetry off discards
    /// events not yet uploaded and stops collection at once.
    pub fn set_settings(&self, settings: SyncSettings) -> Result<()> {
        if let crate::settings::SyncFrequency::Every { secs } = settings.frequency {
            crate::settings::SyncFrequency::parse(&secs.to_string())?;
        }
        settings.save(&self.store)?;
        let before = {
            let mut s = self.settings.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::replace(&mut *s, settings)
        };
        if before.telemetry_enabled && !settings.telemetry_enabled {
            telemetry::clear(&self.store)?;
        }
        if before.online_mode_enabled && !settings.online_mode_enabled {
            self.leave_online_mode("online mode was disabled in the settings");
        }
        self.wake.notify_one();
        self.publish_status();
        Ok(())
    }

    /// Changes one setting by name (`wifi_only`, `online_mode_enabled`,
    /// `telemetry_enabled`, `frequency`, `smart_sync`, `background_sync`)
    /// from text.
    pub fn set_setting(&self, name: &str, value: &str) -> Result<SyncSettings> {
        let mut s = self.settings();
        s.set(name, value)?;
        self.set_settings(s)?;
        Ok(s)
    }

    // ---- the scheduler -------------------------------------------------------------

    pub(crate) fn scheduler_input(&self) -> Result<SchedulerInput> {
        let now = self.clock.now_ms();
        let settings = self.settings();
        let profile = self.profile();
        let mut tables = Vec::new();
        if let Some(p) = &profile {
            for t in &p.tables {
                let s = self.store.table_state(&t.name)?;
                tables.push(TableTiming {
                    name: t.name.clone(),
                    profile_interval_secs: t.sync_interval_secs,
                    last_success_at: s.last_sync_at,
                    initial_done: s.initial_done,
                });
            }
        }
        let live = self.live().clone();
        Ok(SchedulerInput {
            now,
            app_active: live.app_active,
            network_available: live.network.available(),
            metered: live.network.os.metered,
            wifi_only: settings.wifi_only,
            frequency: settings.frequency,
            has_profile: profile.is_some(),
            tables,
            closure: profile
                .as_ref()
                .map(scheduler::dependency_closure)
                .unwrap_or_default(),
            sync_now: live.sync_now,
            refresh: live.refresh.iter().cloned().collect(),
            retry_at: live.retry_at,
        })
    }

    /// The OS background work to keep scheduled (part of the status). Only
    /// intervals matter to it, so the tables' sync state is not read.
    pub(crate) fn background_plan(&self, live: &Live) -> scheduler::BackgroundPlan {
        let settings = self.settings();
        let profile = self.profile();
        let input = SchedulerInput {
            now: self.clock.now_ms(),
            app_active: live.app_active,
            network_available: live.network.available(),
            metered: live.network.os.metered,
            wifi_only: settings.wifi_only,
            frequency: settings.frequency,
            has_profile: profile.is_some(),
            tables: profile
                .iter()
                .flat_map(|p| &p.tables)
                .map(|t| TableTiming {
                    name: t.name.clone(),
                    profile_interval_secs: t.sync_interval_secs,
                    last_success_at: None,
                    initial_done: false,
                })
                .collect(),
            closure: profile
                .as_ref()
                .map(scheduler::dependency_closure)
                .unwrap_or_default(),
            sync_now: false,
            refresh: Vec::new(),
            retry_at: None,
        };
        scheduler::background_plan(&input, settings.background_sync, live.run.is_some())
    }

    /// What the scheduler would do now.
    pub fn scheduler_decision(&self) -> Result<Decision> {
        Ok(scheduler::decide(&self.scheduler_input()?))
    }

    /// When each table of the profile is next due (ms; `None` in manual mode).
    pub fn next_due(&self) -> Result<BTreeMap<String, Option<i64>>> {
        Ok(scheduler::next_due(&self.scheduler_input()?))
    }

    /// One scheduler step at the clock's current time: runs the sync the
    /// scheduler decides on, if any, and waits for it.
    pub async fn run_due(&self) -> Result<Option<ScheduledSync>> {
        let decision = self.scheduler_decision()?;
        let (tables, mode) = match decision {
            Decision::Wait { blocker, next_at } => {
                {
                    let mut live = self.live();
                    live.waiting_for = Some(blocker);
                    live.next_at = next_at;
                }
                self.publish_status();
                return Ok(None);
            }
            Decision::Run { tables, mode } => (tables, mode),
        };
        {
            let mut live = self.live();
            live.waiting_for = None;
            live.next_at = None;
            match mode {
                SyncMode::Refresh => live.refresh.clear(),
                SyncMode::Forced => live.sync_now = false,
                _ => {}
            }
        }
        let report = self.run_tracked(tables.clone(), mode).await?;
        Ok(Some(ScheduledSync {
            mode,
            tables: tables.unwrap_or_default(),
            skipped_unchanged: report.skipped_unchanged.clone(),
            report,
        }))
    }

    /// The body of an OS background job. Both kinds first wait for a
    /// running sync of this process to end (a sync started in the
    /// foreground finishes in the background). The periodic job then runs
    /// one scheduler step with the app-active rule lifted, only while the
    /// `background_sync` setting is on; the network, Wi-Fi only, intervals
    /// and backoff still apply. A finishing job starts nothing.
    pub async fn run_background_job(&self, job: BackgroundJob) -> Result<BackgroundJobOutcome> {
        let running = self.live().run.is_some();
        if running {
            // `run_tracked` holds the lock for the whole sync (fair: this
            // waits for the running one only).
            drop(self.run_lock.lock().await);
            let error = self.live().last_error.clone();
            if job == BackgroundJob::FinishRunningSync || error.is_some() {
                return Ok(match error {
                    None => BackgroundJobOutcome::Synced,
                    Some(message) => BackgroundJobOutcome::Failed {
                        message,
                        retry: false,
                    },
                });
            }
        }
        if job == BackgroundJob::FinishRunningSync {
            return Ok(BackgroundJobOutcome::Idle { blocker: None });
        }
        if !self.settings().background_sync {
            return Ok(BackgroundJobOutcome::Idle {
                blocker: Some(Blocker::AppInactive),
            });
        }
        let check = {
            let live = self.live();
            live.network.os.connected && (live.probe_requested || !live.network.available())
        };
        if check {
            self.check_network().await;
        }
        let mut input = self.scheduler_input()?;
        input.app_active = true;
        let (tables, mode) = match scheduler::decide(&input) {
            Decision::Wait { blocker, .. } => {
                return Ok(BackgroundJobOutcome::Idle {
                    blocker: Some(blocker),
                });
            }
            Decision::Run { tables, mode } => (tables, mode),
        };
        {
            let mut live = self.live();
            match mode {
                SyncMode::Refresh => live.refresh.clear(),
                SyncMode::Forced => live.sync_now = false,
                _ => {}
            }
        }
        Ok(match self.run_tracked(tables, mode).await {
            Ok(_) => BackgroundJobOutcome::Synced,
            Err(e) => BackgroundJobOutcome::Failed {
                retry: e.kind() == ErrorKind::NetworkUnavailable,
                message: e.to_string(),
            },
        })
    }

    /// Starts the background scheduler task on the current tokio runtime
    /// (idempotent). It probes the network while it is not available, runs
    /// due syncs, and sleeps until the next due instant or an event (app
    /// state, network change, sync now, Refresh, settings).
    pub fn start(self: &Arc<Self>) {
        let mut task = self.task.lock().unwrap_or_else(|p| p.into_inner());
        if task.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        let weak = Arc::downgrade(self);
        let wake = self.wake.clone();
        *task = Some(tokio::spawn(async move {
            loop {
                let sleep_ms = {
                    let Some(engine) = weak.upgrade() else { return };
                    engine.step().await
                };
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(sleep_ms as u64)) => {}
                    _ = wake.notified() => {}
                }
            }
        }));
    }

    /// Stops the background scheduler task (a running sync is cut off and
    /// resumes from its last committed page next time).
    pub fn stop(&self) {
        if let Some(t) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            t.abort();
        }
    }

    /// One iteration of the background task; returns how long to sleep (ms).
    async fn step(&self) -> i64 {
        let now = self.clock.now_ms();
        let (probe, connected) = {
            let live = self.live();
            let due = live.probe_requested
                || (!live.network.available()
                    && live
                        .network
                        .last_probe_at
                        .is_none_or(|at| now - at >= PROBE_INTERVAL_MS));
            (due, live.network.os.connected)
        };
        if probe && connected {
            self.check_network().await;
        }
        match self.run_due().await {
            Err(e) => debug!(target: "fieldsync::sync", error = %e, "scheduled sync failed"),
            // A sync ran: decide again at once, so the status says what the
            // scheduler waits for next and when.
            Ok(Some(_)) => return 0,
            Ok(None) => {}
        }
        let now = self.clock.now_ms();
        let live = self.live();
        let mut sleep = live
            .next_at
            .map(|at| at - now)
            .unwrap_or(MAX_SLEEP_MS)
            .clamp(0, MAX_SLEEP_MS);
        if !live.network.available() && connected {
            sleep = sleep.min(PROBE_INTERVAL_MS);
        }
        if let Some(retry_at) = live.retry_at.filter(|r| *r > now) {
            sleep = sleep.min(retry_at - now);
        }
        sleep.max(10)
    }
}
