//! Every sync, tracked: [`Engine::run_tracked`] runs one sync (direct
//! calls, the user's requests and the scheduler all come through it) and
//! keeps the running sync's progress, the sync status and its listeners,
//! notifications, backoff and telemetry up to date around it.

use std::collections::BTreeMap;
use std::sync::Arc;

use tracing::{debug, warn};

use crate::engine::Engine;
use crate::error::{ErrorKind, Result};
use crate::live::{Plan, PlannedTable, RunRow, RunState};
use crate::network::{NetworkType, Reachability};
use crate::notifications::{
    Notification, NotificationKind, NotificationPhase, estimate_bytes, message,
};
use crate::scheduler::SyncMode;
use crate::status::{
    EventListener, ListenerHandle, StatusListener, SyncEvent, SyncIcon, SyncProgress, SyncReport,
    SyncStatus,
};
use crate::telemetry::{self, TelemetryEvent, TelemetryKind, TelemetryResult};

impl Engine {
    // ---- status ----------------------------------------------------------------

    /// Registers a status listener; it gets the current status at once.
    pub fn add_status_listener(&self, listener: Arc<dyn StatusListener>) -> Arc<ListenerHandle> {
        let handle = self.listeners.add_status(listener.clone());
        if let Ok(s) = self.sync_status() {
            listener.on_status(s);
        }
        Arc::new(handle)
    }

    /// Registers an event listener; it gets the current status as a
    /// [`SyncEvent::Status`] at once, then every event.
    pub fn add_event_listener(&self, listener: Arc<dyn EventListener>) -> Arc<ListenerHandle> {
        let handle = self.listeners.add_events(listener.clone());
        if let Ok(s) = self.sync_status() {
            listener.on_event(SyncEvent::Status { status: s });
        }
        Arc::new(handle)
    }

    /// The sync status snapshot (the icon's state).
    pub fn sync_status(&self) -> Result<SyncStatus> {
        let pending = self.store.pending_count()?;
        let last_sync_at = self.last_sync_at()?;
        let live = self.live().clone();
        let progress = match live.run.as_ref() {
            Some(run) => Some(run.progress()),
            // A sync of another process (or another engine of this one) on
            // the same database, as it keeps it in `_fs_sync_run`.
            None => self.store.shared_run()?.map(|run| SyncProgress {
                sync_id: run.sync_id,
                mode: run.mode,
                table: run.table,
                rows_done: run.rows_done,
                rows_total: run.rows_total,
                bytes_down: run.bytes_down,
                fraction: run.fraction,
            }),
        };
        let (icon, message) = if progress.is_some() {
            (SyncIcon::Syncing, None)
        } else if !live.network.available() {
            let m = live
                .network
                .message
                .clone()
                .unwrap_or_else(|| "Offline mode: checking the network".to_owned());
            (SyncIcon::NotConnected, Some(m))
        } else if let Some(e) = &live.last_error {
            (SyncIcon::Error, Some(e.clone()))
        } else if let Some(w) = &live.last_warning {
            (SyncIcon::Warning, Some(w.clone()))
        } else if pending > 0 {
            (
                SyncIcon::PendingUploads,
                Some(format!("{pending} change(s) waiting for upload")),
            )
        } else {
            (SyncIcon::Connected, None)
        };
        let background = self.background_plan(&live);
        Ok(SyncStatus {
            background,
            icon,
            message,
            network: live.network.clone(),
            online_mode: live.online,
            app_active: live.app_active,
            progress,
            pending_uploads: pending,
            last_sync_at,
            next_sync_at: live.next_at,
            waiting_for: live.waiting_for,
            failures: live.failures,
        })
    }

    fn last_sync_at(&self) -> Result<Option<i64>> {
        let Some(profile) = self.profile() else {
            return Ok(None);
        };
        let mut last = None;
        for t in &profile.tables {
            if let Ok(s) = self.store.table_state(&t.name) {
                last = last.max(s.last_sync_at);
            }
        }
        Ok(last)
    }

    pub(crate) fn publish_status(&self) {
        match self.sync_status() {
            Ok(s) => self.listeners.publish_status(s),
            Err(e) => warn!(target: "fieldsync::status", error = %e, "cannot compute the status"),
        }
    }

    /// Follows the sync's own events: progress, notifications, status.
    pub(crate) fn follow_event(&self, event: &SyncEvent) {
        let SyncEvent::TableProgress {
            table,
            initial,
            rows_done,
            rows_total,
            bytes_down,
        } = event
        else {
            return;
        };
        let thresholds = self.options.notifications;
        let note = {
            let mut live = self.live();
            let Some(run) = live.run.as_mut() else {
                return;
            };
            let entry = run.tables.entry(table.clone()).or_default();
            // rows_done/rows_total of a resumed first download count from the
            // table's start; the sync's share is what arrives now.
            entry.rows_done = *rows_done;
            entry.rows_total = *rows_total;
            entry.bytes_down = *bytes_down;
            run.current = Some(table.clone());
            run.note_fraction();
            if run.notification.is_none() {
                let (_, total, _) = run.totals();
                if *initial {
                    run.notification = Some(NotificationKind::InitialSync);
                } else if matches!(run.mode, SyncMode::Delta | SyncMode::Forced)
                    && run
                        .idle_ms
                        .is_some_and(|idle| idle >= (thresholds.idle_secs as i64) * 1000)
                    && total.is_some_and(|t| t >= thresholds.rows)
                {
                    run.notification = Some(NotificationKind::CatchUp);
                }
            }
            let shared = run.shared(self.clock.now_ms());
            (
                shared,
                run.notification
                    .map(|kind| notification(run, kind, NotificationPhase::Progress)),
            )
        };
        let (shared, note) = note;
        if let Err(e) = self.store.publish_run_progress(&shared) {
            warn!(target: "fieldsync::status", error = %e, "cannot keep the sync's progress for other processes");
        }
        if let Some(n) = note {
            self.emit(SyncEvent::Notification { notification: n });
        }
        self.publish_status();
    }

    /// Records the exact sizes of the downloads a sync is about to make,
    /// before their first pages: from then on the run's total counts every
    /// table, not only those begun, so the fraction done only grows.
    /// `None`: the server could not say; the totals come from the pages.
    pub(crate) fn plan_progress(&self, planned: Option<&BTreeMap<String, PlannedTable>>) {
        let shared = {
            let mut live = self.live();
            let Some(run) = live.run.as_mut() else {
                return;
            };
            let Some(planned) = planned else {
                run.plan = Plan::Unavailable;
                run.note_fraction();
                return;
            };
            run.plan = Plan::Known;
            run.planned = planned.clone();
            for (table, p) in planned {
                let entry = run.tables.entry(table.clone()).or_default();
                entry.rows_done = entry.rows_done.max(p.rows_done);
                // A table whose download ended keeps its total (what it
                // received: only then do its rows done reach its total).
                entry.rows_total = Some(match entry.rows_total {
                    Some(t) if t == entry.rows_done && t > 0 => t,
                    _ => p.rows_total.max(entry.rows_done),
                });
            }
            run.note_fraction();
            run.shared(self.clock.now_ms())
        };
        if let Err(e) = self.store.publish_run_progress(&shared) {
            warn!(target: "fieldsync::status", error = %e, "cannot keep the sync's progress for other processes");
        }
        self.publish_status();
    }

    /// The planned size of a table's download in the running sync, if the
    /// server gave one (see [`Engine::plan_progress`]).
    pub(crate) fn planned_total(&self, table: &str) -> Option<PlannedTable> {
        self.live().run.as_ref()?.planned.get(table).copied()
    }

    // ---- running syncs -----------------------------------------------------------

    pub(crate) fn direct_mode(&self) -> SyncMode {
        match self.profile() {
            None => SyncMode::First,
            Some(p) => {
                if p.tables.iter().any(|t| {
                    self.store
                        .table_state(&t.name)
                        .map(|s| !s.initial_done)
                        .unwrap_or(true)
                }) {
                    SyncMode::First
                } else {
                    SyncMode::Forced
                }
            }
        }
    }

    /// Direct syncs ([`Engine::sync`], [`Engine::sync_tables`]).
    pub(crate) async fn run_direct(&self, only: Option<Vec<String>>) -> Result<SyncReport> {
        let mode = self.direct_mode();
        self.run_tracked(only, mode).await
    }

    /// Runs one sync with status, notifications, backoff and telemetry.
    pub(crate) async fn run_tracked(
        &self,
        only: Option<Vec<String>>,
        mode: SyncMode,
    ) -> Result<SyncReport> {
        let _run = self.run_lock.lock().await;
        let now = self.clock.now_ms();
        let sync_id = uuid::Uuid::new_v4().to_string();
        let idle_ms = self.last_sync_at()?.map(|last| now - last);
        {
            let mut live = self.live();
            let active = live.app_active;
            live.run = Some(RunState {
                sync_id: sync_id.clone(),
                mode,
                started_at: now,
                active_ms: 0,
                active_since: active.then_some(now),
                idle_ms,
                tables: BTreeMap::new(),
                requested: only.clone().unwrap_or_default(),
                current: None,
                planned: BTreeMap::new(),
                plan: Plan::Pending,
                fraction: None,
                notification: match mode {
                    SyncMode::Refresh => Some(NotificationKind::TableRefresh),
                    SyncMode::First => Some(NotificationKind::InitialSync),
                    _ => None,
                },
            });
        }
        // Other processes on the database see this sync from here on; the
        // guard removes the row however the run ends (a dropped future too).
        let shared = RunRow {
            store: self.store.clone(),
            sync_id: sync_id.clone(),
        };
        let first = self.live().run.as_ref().map(|r| r.shared(now));
        if let Some(first) = first
            && let Err(e) = self.store.publish_run(&first)
        {
            warn!(target: "fieldsync::status", error = %e, "cannot show the sync to other processes");
        }
        self.publish_status();
        // A Refresh the user asked for pulls its tables whatever the smart
        // sync check would say, with the progress it shows.
        let smart = mode != SyncMode::Refresh && self.settings().smart_sync;
        let result = crate::sync::run(self, only, smart).await;
        let end = self.clock.now_ms();
        let (run, network_type) = {
            let mut live = self.live();
            let mut run = live.run.take();
            if let Some(r) = run.as_mut()
                && let Some(since) = r.active_since.take()
            {
                r.active_ms += end - since;
            }
            match &result {
                Ok(report) => {
                    live.failures = 0;
                    live.retry_at = None;
                    live.last_error = None;
                    live.last_warning = (!report.conflicts.is_empty()
                        || !report.rejected.is_empty())
                    .then(|| {
                        format!(
                            "the last sync left {} conflict(s) and {} rejected change(s); see Sync Errors",
                            report.conflicts.len(),
                            report.rejected.len()
                        )
                    });
                    if live.network.os.connected {
                        live.network.reachability = Reachability::Available;
                        live.network.message = None;
                    }
                }
                Err(e) => {
                    live.failures = live.failures.saturating_add(1);
                    live.retry_at = Some(end + self.options.backoff.delay_ms(live.failures));
                    live.last_error = Some(e.to_string());
                }
            }
            (run, live.network.os.network_type)
        };
        drop(shared);
        if let Err(e) = &result
            && e.kind() == ErrorKind::NetworkUnavailable
        {
            self.network_failed(&e.to_string());
        }
        if let Ok(report) = &result {
            let _ = self
                .store
                .mark_tables_current(&report.skipped_unchanged, end);
        }
        if let Some(run) = &run {
            if let Some(kind) = run.notification {
                let phase = if result.is_ok() {
                    NotificationPhase::Completed
                } else {
                    NotificationPhase::Failed
                };
                self.emit(SyncEvent::Notification {
                    notification: notification(run, kind, phase),
                });
            }
            if self.settings().telemetry_enabled {
                let events = self.telemetry_events(run, &result, end, network_type);
                if let Err(e) = telemetry::record(&self.store, &events) {
                    warn!(target: "fieldsync::telemetry", error = %e, "cannot keep telemetry");
                }
                if result.is_ok() {
                    self.upload_telemetry().await;
                }
            }
        }
        self.publish_status();
        result
    }

    fn telemetry_events(
        &self,
        run: &RunState,
        result: &Result<SyncReport>,
        end: i64,
        network_type: NetworkType,
    ) -> Vec<TelemetryEvent> {
        let app = &self.options.app;
        let base = |kind, table: Option<String>| TelemetryEvent {
            id: uuid::Uuid::new_v4().to_string(),
            kind,
            device_id: self.device_id().to_owned(),
            sync_id: run.sync_id.clone(),
            mode: run.mode.into(),
            result: if result.is_ok() {
                TelemetryResult::Success
            } else {
                TelemetryResult::Failure
            },
            failure_type: result.as_ref().err().map(|e| e.kind().as_str().to_owned()),
            started_at: run.started_at,
            duration_ms: end - run.started_at,
            active_duration_ms: run.active_ms,
            rows_up: 0,
            rows_down: 0,
            bytes_up: 0,
            bytes_down: 0,
            table,
            network_type: network_type.into(),
            app_version: app.app_version.clone(),
            device_model: app.device_model.clone(),
            os_version: app.os_version.clone(),
            conflicts: 0,
            rejected: 0,
            pending_uploads: None,
        };
        let mut events = Vec::new();
        let mut sync = base(TelemetryKind::Sync, None);
        sync.pending_uploads = self.store.pending_count().ok();
        match result {
            Ok(report) => {
                sync.rows_up =
                    report.uploaded + (report.conflicts.len() + report.rejected.len()) as u64;
                sync.rows_down = report
                    .tables
                    .iter()
                    .map(|t| t.rows_upserted + t.rows_removed)
                    .sum();
                sync.bytes_up = report.bytes_up;
                sync.bytes_down = report.bytes_down;
                sync.conflicts = report.conflicts.len() as u64;
                sync.rejected = report.rejected.len() as u64;
                events.push(sync);
                for t in &report.tables {
                    let mut e = base(TelemetryKind::TableDownload, Some(t.table.clone()));
                    e.rows_down = t.rows_upserted + t.rows_removed;
                    e.bytes_down = t.bytes_down;
                    events.push(e);
                }
            }
            Err(_) => {
                let (rows, _, bytes) = run.totals();
                sync.rows_down = rows;
                sync.bytes_down = bytes;
                events.push(sync);
            }
        }
        events
    }

    /// Uploads kept telemetry in batches while enabled; failures keep the
    /// events for the next sync. Returns the number of events uploaded.
    pub async fn upload_telemetry(&self) -> u64 {
        let mut sent = 0;
        loop {
            if !self.settings().telemetry_enabled {
                return sent;
            }
            let batch = match telemetry::pending(&self.store, telemetry::TELEMETRY_BATCH) {
                Ok(b) if !b.is_empty() => b,
                _ => return sent,
            };
            let last = batch.last().map(|(s, _)| *s).unwrap_or(0);
            let events: Vec<TelemetryEvent> = batch
                .into_iter()
                .map(|(_, e)| e)
                .filter(|e| !e.id.is_empty())
                .collect();
            let n = events.len() as u64;
            if !events.is_empty() {
                let body = telemetry::TelemetryBatch { events };
                if let Err(e) = self.api.upload_telemetry(&body).await {
                    debug!(target: "fieldsync::telemetry", error = %e, "telemetry upload failed; kept for later");
                    return sent;
                }
            }
            if telemetry::remove_through(&self.store, last).is_err() {
                return sent;
            }
            sent += n;
        }
    }

    /// Telemetry events waiting for upload.
    pub fn pending_telemetry(&self) -> Result<u64> {
        telemetry::count(&self.store)
    }
}

fn notification(run: &RunState, kind: NotificationKind, phase: NotificationPhase) -> Notification {
    let (rows_done, rows_total, bytes_done) = run.totals();
    let tables: Vec<String> = if run.requested.is_empty() {
        run.tables.keys().cloned().collect()
    } else {
        run.requested.clone()
    };
    Notification {
        kind,
        phase,
        sync_id: run.sync_id.clone(),
        message: message(kind, phase, &tables),
        tables,
        rows_done,
        rows_total,
        fraction: match phase {
            NotificationPhase::Completed => Some(1.0),
            _ => run.fraction,
        },
        bytes_done,
        bytes_total: estimate_bytes(rows_done, bytes_done, rows_total),
        refresh_view: phase == NotificationPhase::Completed,
    }
}
