//! The engine's live state: what the shell last reported (app active, OS
//! network), the network check's result, requests waiting for the
//! scheduler, backoff, and the running sync's progress. Held by the
//! engine behind one mutex; the service and the sync run update it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use tracing::warn;

use crate::network::NetworkStatus;
use crate::notifications::NotificationKind;
use crate::scheduler::{Blocker, SyncMode};
use crate::status::SyncProgress;

/// Progress of one table in the running sync.
#[derive(Debug, Clone, Default)]
pub(crate) struct TableProgress {
    pub(crate) rows_done: u64,
    pub(crate) rows_total: Option<u64>,
    pub(crate) bytes_down: u64,
}

/// Where the exact sizes of a sync's downloads stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Asked, not answered yet (or nothing to download).
    Pending,
    /// Answered: the sync's total counts every table.
    Known,
    /// The server could not say: totals from the pages' estimates.
    Unavailable,
}

/// The exact size of one table's download, known before its first page
/// (`POST /v1/sync/counts`): the rows a resumed first download already
/// holds, and its total with them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PlannedTable {
    pub(crate) rows_done: u64,
    pub(crate) rows_total: u64,
}

/// The running sync.
#[derive(Debug, Clone)]
pub(crate) struct RunState {
    pub(crate) sync_id: String,
    pub(crate) mode: SyncMode,
    pub(crate) started_at: i64,
    pub(crate) active_ms: i64,
    pub(crate) active_since: Option<i64>,
    pub(crate) idle_ms: Option<i64>,
    pub(crate) tables: BTreeMap<String, TableProgress>,
    pub(crate) requested: Vec<String>,
    pub(crate) current: Option<String>,
    pub(crate) notification: Option<NotificationKind>,
    /// The exact sizes of the run's downloads, when the server gave them.
    pub(crate) planned: BTreeMap<String, PlannedTable>,
    pub(crate) plan: Plan,
    /// The largest fraction done so far: what is shown, so it never goes
    /// back when a total grows (rows the server changed during the
    /// download, or a table whose size was not known before).
    pub(crate) fraction: Option<f64>,
}

impl RunState {
    /// The row other processes read (`_fs_sync_run`).
    pub(crate) fn shared(&self, now: i64) -> crate::store::SharedRun {
        let (rows_done, rows_total, bytes_down) = self.totals();
        crate::store::SharedRun {
            sync_id: self.sync_id.clone(),
            pid: std::process::id(),
            mode: self.mode,
            started_at: self.started_at,
            updated_at: now,
            table: self.current.clone(),
            rows_done,
            rows_total,
            bytes_down,
            fraction: self.fraction,
        }
    }

    pub(crate) fn totals(&self) -> (u64, Option<u64>, u64) {
        let done = self.tables.values().map(|t| t.rows_done).sum();
        let bytes = self.tables.values().map(|t| t.bytes_down).sum();
        let total = match self.plan {
            // The counts are on their way: no total yet (a sum of the
            // tables begun so far would grow).
            Plan::Pending => None,
            Plan::Known => Some(
                self.tables
                    .iter()
                    .map(|(name, t)| match self.planned.get(name) {
                        Some(p) => t.rows_total.unwrap_or(p.rows_total).max(t.rows_done),
                        None => t.rows_total.unwrap_or(t.rows_done).max(t.rows_done),
                    })
                    .sum(),
            ),
            Plan::Unavailable => {
                let known: Vec<u64> = self.tables.values().filter_map(|t| t.rows_total).collect();
                (!known.is_empty()).then(|| known.iter().sum())
            }
        };
        (done, total, bytes)
    }

    /// Recomputes the shown fraction after the tables' progress changed:
    /// rows done over rows expected, and never less than it was.
    pub(crate) fn note_fraction(&mut self) {
        let (done, total, _) = self.totals();
        let Some(total) = total else {
            return;
        };
        let now = if done >= total {
            1.0
        } else {
            done as f64 / total as f64
        };
        self.fraction = Some(self.fraction.map_or(now, |f| f.max(now)));
    }

    pub(crate) fn progress(&self) -> SyncProgress {
        let (rows_done, rows_total, bytes_down) = self.totals();
        SyncProgress {
            sync_id: self.sync_id.clone(),
            mode: self.mode,
            table: self.current.clone(),
            rows_done,
            rows_total,
            bytes_down,
            fraction: self.fraction,
        }
    }
}

/// Live state the shells and the scheduler change.
#[derive(Debug, Clone)]
pub(crate) struct Live {
    pub(crate) app_active: bool,
    pub(crate) network: NetworkStatus,
    pub(crate) probe_requested: bool,
    pub(crate) sync_now: bool,
    pub(crate) refresh: BTreeSet<String>,
    pub(crate) failures: u32,
    pub(crate) retry_at: Option<i64>,
    pub(crate) run: Option<RunState>,
    pub(crate) online: bool,
    pub(crate) last_error: Option<String>,
    pub(crate) last_warning: Option<String>,
    pub(crate) waiting_for: Option<Blocker>,
    pub(crate) next_at: Option<i64>,
}

impl Default for Live {
    fn default() -> Self {
        Self {
            app_active: true,
            network: NetworkStatus::starting(),
            probe_requested: true,
            sync_now: false,
            refresh: BTreeSet::new(),
            failures: 0,
            retry_at: None,
            run: None,
            online: false,
            last_error: None,
            last_warning: None,
            waiting_for: None,
            next_at: None,
        }
    }
}

/// Removes the running sync's `_fs_sync_run` row when dropped: when the
/// run ends, and when its future is dropped mid-sync ([`Engine::stop`]).
pub(crate) struct RunRow {
    pub(crate) store: Arc<crate::store::Store>,
    pub(crate) sync_id: String,
}

impl Drop for RunRow {
    fn drop(&mut self) {
        if let Err(e) = self.store.clear_run(&self.sync_id) {
            warn!(target: "fieldsync::status", error = %e, "cannot clear the finished sync's row");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run() -> RunState {
        RunState {
            sync_id: "s".into(),
            mode: SyncMode::First,
            started_at: 0,
            active_ms: 0,
            active_since: None,
            idle_ms: None,
            tables: BTreeMap::new(),
            requested: Vec::new(),
            current: None,
            notification: None,
            planned: BTreeMap::new(),
            plan: Plan::Unavailable,
            fraction: None,
        }
    }

    fn set(run: &mut RunState, table: &str, done: u64, total: Option<u64>) {
        let t = run.tables.entry(table.into()).or_default();
        t.rows_done = done;
        t.rows_total = total;
        run.note_fraction();
    }

    #[test]
    fn the_fraction_holds_when_a_total_grows() {
        let mut r = run();
        r.note_fraction();
        assert_eq!(r.fraction, None, "no total, no fraction");
        set(&mut r, "a", 50, Some(100));
        assert_eq!(r.fraction, Some(0.5));
        // Rows changed on the server during the download: the total grows.
        set(&mut r, "a", 50, Some(200));
        assert_eq!(r.fraction, Some(0.5), "held, not 0.25");
        assert_eq!(
            r.progress().rows_total,
            Some(200),
            "the total is told as it is"
        );
        set(&mut r, "a", 150, Some(200));
        assert_eq!(r.fraction, Some(0.75));
        // A table whose size was not known before joins.
        set(&mut r, "b", 0, Some(200));
        assert_eq!(r.fraction, Some(0.75));
        set(&mut r, "b", 200, Some(200));
        set(&mut r, "a", 200, Some(200));
        assert_eq!(r.fraction, Some(1.0));
    }

    #[test]
    fn done_is_one_only_when_every_row_is_in() {
        let mut r = run();
        set(&mut r, "a", 999_999, Some(1_000_000));
        assert!(r.fraction.expect("fraction") < 1.0);
        set(&mut r, "a", 1_000_000, Some(1_000_000));
        assert_eq!(r.fraction, Some(1.0));
    }
}
