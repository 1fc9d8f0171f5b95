//! When to sync (C7): a pure, deterministic decision function over the
//! device's situation at an instant, plus the dependency closure and the
//! retry backoff it relies on. The engine's background task
//! ([`crate::Engine::start`]) asks [`decide`] what to do at the injected
//! clock's time and sleeps until the answer's next instant or an event.
//!
//! Rules, in order:
//! 1. Nothing starts while the app is not active, the network is not
//!    available (the last probe failed or the OS reports no network), or the
//!    network is metered and the user chose Wi-Fi only. A sync that already
//!    started is never stopped by these: it finishes in the background.
//! 2. A user's Refresh of tables, then "sync now", run at once (no backoff).
//! 3. A device that has never finished its first download starts it even in
//!    manual mode.
//! 4. With frequency "manual only", nothing else starts on its own.
//! 5. After a failed scheduled sync, nothing starts before the backoff's retry
//!    instant (exponential, with jitter, capped: never a stuck state).
//! 6. A table is due when its effective interval has passed since its last
//!    successful sync. Its effective interval is the shortest chosen interval
//!    among itself and every table its related-rows rules reach,
//!    transitively (the *dependency closure*). When a table is due, every
//!    table whose closure contains it syncs with it, so rows selected through
//!    a relationship arrive together with the rows that select them.
//!
//! A periodic background job (the opt-in `background_sync` setting) runs one
//! step with rule 1's app-active condition lifted and every other rule kept;
//! [`background_plan`] says which OS jobs a shell keeps scheduled.
//!
//! The chosen interval of a table is its profile interval with frequency
//! "auto", and the longer of the profile interval and the user's interval with
//! a chosen frequency.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

pub use crate::mode::SyncMode;
use crate::profile::SyncProfile;
use crate::settings::SyncFrequency;

/// Why no sync starts now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
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

impl Blocker {
    /// Why no sync starts, in words fit for a user.
    pub fn message(self) -> &'static str {
        match self {
            Blocker::AppInactive => "no sync started: the app is in the background",
            Blocker::NetworkUnavailable => "no sync started: Network or Service Unavailable",
            Blocker::MeteredNetwork => {
                "no sync started: Wi-Fi only is on and the network is metered"
            }
            Blocker::ManualOnly => "no sync started: the sync frequency is manual only",
            Blocker::Backoff => "no sync started: waiting to retry after a failed sync",
            Blocker::UpToDate => "no sync started: every table is up to date",
        }
    }
}

/// Sync state of one table, as the scheduler needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableTiming {
    /// Table name.
    pub name: String,
    /// The offline profile's interval, seconds.
    pub profile_interval_secs: u32,
    /// Last successful sync, ms since the epoch.
    pub last_success_at: Option<i64>,
    /// True once the table's first download finished.
    pub initial_done: bool,
}

/// Everything [`decide`] looks at.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerInput {
    /// Now, ms since the epoch (from the injected clock).
    pub now: i64,
    /// The app is in the foreground.
    pub app_active: bool,
    /// The network check says the server is reachable.
    pub network_available: bool,
    /// The OS reports a metered network (cellular).
    pub metered: bool,
    /// The user's Wi-Fi only setting.
    pub wifi_only: bool,
    /// The user's frequency choice.
    pub frequency: SyncFrequency,
    /// False until the device holds an offline profile.
    pub has_profile: bool,
    /// Tables of the profile.
    pub tables: Vec<TableTiming>,
    /// Dependency closure: table -> every table its rules reach.
    pub closure: BTreeMap<String, Vec<String>>,
    /// The user asked for "sync now".
    pub sync_now: bool,
    /// Tables the user asked to Refresh.
    pub refresh: Vec<String>,
    /// No scheduled sync before this instant (backoff after a failure).
    pub retry_at: Option<i64>,
}

/// What to do now.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Decision {
    /// Start a sync of these tables (`None`: every table) in this mode.
    Run {
        tables: Option<Vec<String>>,
        mode: SyncMode,
    },
    /// Start nothing; look again at `next_at` (ms) or on an event.
    Wait {
        blocker: Blocker,
        next_at: Option<i64>,
    },
}

/// The dependency closure of every table of a profile: the tables its
/// related-rows rules reach, directly or through other tables, sorted.
/// Profiles are acyclic (checked when published); a cycle would still end
/// because each table is visited once.
pub fn dependency_closure(profile: &SyncProfile) -> BTreeMap<String, Vec<String>> {
    let direct: BTreeMap<String, Vec<String>> = profile
        .tables
        .iter()
        .map(|t| (t.name.clone(), t.depends_on()))
        .collect();
    closure_of(&direct)
}

/// Transitive closure of a direct-dependency map.
pub fn closure_of(direct: &BTreeMap<String, Vec<String>>) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for start in direct.keys() {
        let mut reached = BTreeSet::new();
        let mut stack: Vec<&String> = direct.get(start).into_iter().flatten().collect();
        while let Some(t) = stack.pop() {
            if t == start || !reached.insert(t.clone()) {
                continue;
            }
            stack.extend(direct.get(t).into_iter().flatten());
        }
        out.insert(start.clone(), reached.into_iter().collect());
    }
    out
}

/// A table's chosen interval under the user's frequency, seconds (`None`:
/// manual only).
pub fn chosen_interval(profile_interval_secs: u32, frequency: SyncFrequency) -> Option<u32> {
    match frequency {
        SyncFrequency::Auto => Some(profile_interval_secs),
        SyncFrequency::Every { secs } => Some(profile_interval_secs.max(secs)),
        SyncFrequency::ManualOnly => None,
    }
}

/// Effective interval of every table: the shortest chosen interval among the
/// table and its closure. Empty with "manual only".
pub fn effective_intervals(input: &SchedulerInput) -> BTreeMap<String, u32> {
    let chosen: BTreeMap<&str, u32> = input
        .tables
        .iter()
        .filter_map(|t| {
            chosen_interval(t.profile_interval_secs, input.frequency).map(|i| (t.name.as_str(), i))
        })
        .collect();
    let mut out = BTreeMap::new();
    for t in &input.tables {
        let Some(own) = chosen.get(t.name.as_str()) else {
            continue;
        };
        let reach = input.closure.get(&t.name).into_iter().flatten();
        let eff = reach
            .filter_map(|r| chosen.get(r.as_str()))
            .fold(*own, |a, b| a.min(*b));
        out.insert(t.name.clone(), eff);
    }
    out
}

/// When each table is next due (ms), from its last success and effective
/// interval; `None` for a table never synced (due now) or in manual mode.
pub fn next_due(input: &SchedulerInput) -> BTreeMap<String, Option<i64>> {
    let eff = effective_intervals(input);
    input
        .tables
        .iter()
        .map(|t| {
            let due = match (eff.get(&t.name), t.last_success_at) {
                (Some(i), Some(last)) if t.initial_done => Some(last + i64::from(*i) * 1000),
                (Some(_), _) => Some(input.now),
                (None, _) => None,
            };
            (t.name.clone(), due)
        })
        .collect()
}

/// Adds every table whose closure contains one of `tables`.
pub fn with_dependents(
    tables: &BTreeSet<String>,
    closure: &BTreeMap<String, Vec<String>>,
) -> BTreeSet<String> {
    let mut out = tables.clone();
    for (t, reach) in closure {
        if reach.iter().any(|r| tables.contains(r)) {
            out.insert(t.clone());
        }
    }
    out
}

/// Decides what to do at `input.now`.
pub fn decide(input: &SchedulerInput) -> Decision {
    let wait = |blocker, next_at| Decision::Wait { blocker, next_at };
    if !input.app_active {
        return wait(Blocker::AppInactive, None);
    }
    if !input.network_available {
        return wait(Blocker::NetworkUnavailable, None);
    }
    if input.wifi_only && input.metered {
        return wait(Blocker::MeteredNetwork, None);
    }
    if !input.refresh.is_empty() {
        let asked: BTreeSet<String> = input.refresh.iter().cloned().collect();
        let tables = with_dependents(&asked, &input.closure);
        return Decision::Run {
            tables: Some(order_like_profile(&tables, input)),
            mode: SyncMode::Refresh,
        };
    }
    if input.sync_now {
        return Decision::Run {
            tables: None,
            mode: SyncMode::Forced,
        };
    }
    let first_pending = !input.has_profile || input.tables.iter().any(|t| !t.initial_done);
    if let Some(retry_at) = input.retry_at.filter(|r| *r > input.now) {
        return wait(Blocker::Backoff, Some(retry_at));
    }
    if first_pending {
        return Decision::Run {
            tables: None,
            mode: SyncMode::First,
        };
    }
    if input.frequency == SyncFrequency::ManualOnly {
        return wait(Blocker::ManualOnly, None);
    }
    let due_at = next_due(input);
    let due: BTreeSet<String> = due_at
        .iter()
        .filter(|(_, at)| at.is_some_and(|at| at <= input.now))
        .map(|(t, _)| t.clone())
        .collect();
    if due.is_empty() {
        let next = due_at.values().flatten().min().copied();
        return wait(Blocker::UpToDate, next);
    }
    let tables = with_dependents(&due, &input.closure);
    Decision::Run {
        tables: Some(order_like_profile(&tables, input)),
        mode: SyncMode::Delta,
    }
}

/// The OS background work a shell keeps scheduled, as the core decides it.
/// The shell turns it into OS jobs (JobScheduler, BGTaskScheduler) and
/// decides nothing of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackgroundPlan {
    /// A sync of this process is running while the app is in the
    /// background: keep an OS job that needs a network until it ends, so the
    /// sync started in the foreground finishes in the background.
    pub finish_running_sync: bool,
    /// The opt-in periodic background sync (the `background_sync` setting,
    /// off by default); `None` when off or when nothing would sync.
    pub periodic: Option<PeriodicSync>,
}

/// When the OS may run the periodic background sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodicSync {
    /// Run about this often, seconds: the shortest effective interval of
    /// the profile's tables. The OS may run it less often (Android's floor
    /// is 15 minutes).
    pub interval_secs: u32,
    /// Run only on an unmetered network (the user chose Wi-Fi only).
    pub unmetered_only: bool,
}

/// The background work to keep scheduled. `background_sync` is the user's
/// opt-in; `sync_running` is true while a sync of this process runs.
/// A periodic job exists only with the opt-in, an offline profile and a
/// frequency other than "manual only"; a job that finishes a running sync
/// only while that sync runs with the app in the background.
pub fn background_plan(
    input: &SchedulerInput,
    background_sync: bool,
    sync_running: bool,
) -> BackgroundPlan {
    let periodic = if background_sync && input.has_profile {
        effective_intervals(input)
            .values()
            .min()
            .map(|secs| PeriodicSync {
                interval_secs: *secs,
                unmetered_only: input.wifi_only,
            })
    } else {
        None
    };
    BackgroundPlan {
        finish_running_sync: sync_running && !input.app_active,
        periodic,
    }
}

fn order_like_profile(tables: &BTreeSet<String>, input: &SchedulerInput) -> Vec<String> {
    let mut out: Vec<String> = input
        .tables
        .iter()
        .filter(|t| tables.contains(&t.name))
        .map(|t| t.name.clone())
        .collect();
    // Refreshed names unknown to the profile are kept so the sync reports them.
    out.extend(
        tables
            .iter()
            .filter(|t| !input.tables.iter().any(|x| &x.name == *t))
            .cloned(),
    );
    out
}

/// Retry delays after failures: exponential from `base_ms`, capped at
/// `max_ms`, each drawn uniformly from the upper half of its step (jitter), so
/// many devices that failed together do not retry together. The jitter comes
/// from a seed, so tests get the same delays every run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backoff {
    /// First delay, ms (default 30 s).
    pub base_ms: i64,
    /// Longest delay, ms (default 30 min).
    pub max_ms: i64,
    /// Seed of the jitter.
    pub seed: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base_ms: 30_000,
            max_ms: 30 * 60_000,
            seed: 0x5eed,
        }
    }
}

impl Backoff {
    /// The delay before retry number `failures` (1 = after the first failure).
    pub fn delay_ms(&self, failures: u32) -> i64 {
        let exp = failures.saturating_sub(1).min(30);
        let step = self
            .base_ms
            .max(1)
            .saturating_mul(1i64 << exp)
            .min(self.max_ms.max(1));
        let half = step / 2;
        let r = splitmix64(self.seed ^ u64::from(failures).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        half + (r % (step - half + 1) as u64) as i64
    }
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    fn input(now: i64) -> SchedulerInput {
        let t = |name: &str, secs: u32| TableTiming {
            name: name.into(),
            profile_interval_secs: secs,
            last_success_at: Some(0),
            initial_done: true,
        };
        let mut direct = BTreeMap::new();
        // work_orders are selected through bookings; incidents through work_orders.
        direct.insert("bookings".to_owned(), vec![]);
        direct.insert("work_orders".to_owned(), vec!["bookings".to_owned()]);
        direct.insert("incidents".to_owned(), vec!["work_orders".to_owned()]);
        direct.insert("accounts".to_owned(), vec![]);
        SchedulerInput {
            now,
            app_active: true,
            network_available: true,
            metered: false,
            wifi_only: false,
            frequency: SyncFrequency::Auto,
            has_profile: true,
            tables: vec![
                t("bookings", 300),
                t("work_orders", 3600),
                t("incidents", 7200),
                t("accounts", 3600),
            ],
            closure: closure_of(&direct),
            sync_now: false,
            refresh: vec![],
            retry_at: None,
        }
    }

    fn run(tables: &[&str], mode: SyncMode) -> Decision {
        Decision::Run {
            tables: Some(tables.iter().map(|s| s.to_string()).collect()),
            mode,
        }
    }

    #[test]
    fn background_plan_follows_the_opt_in_intervals_and_wifi_only() {
        let mut i = input(0);
        // Off by default: no periodic job; a sync running in the foreground
        // needs no job either.
        assert_eq!(
            background_plan(&i, false, true),
            BackgroundPlan {
                finish_running_sync: false,
                periodic: None
            }
        );
        // The app went to the background during a sync: keep a job until it ends.
        i.app_active = false;
        assert!(background_plan(&i, false, true).finish_running_sync);
        assert!(!background_plan(&i, false, false).finish_running_sync);
        // Opted in: the shortest effective interval, unmetered with Wi-Fi only.
        assert_eq!(
            background_plan(&i, true, false).periodic,
            Some(PeriodicSync {
                interval_secs: 300,
                unmetered_only: false
            })
        );
        i.wifi_only = true;
        i.frequency = SyncFrequency::Every { secs: 7200 };
        assert_eq!(
            background_plan(&i, true, false).periodic,
            Some(PeriodicSync {
                interval_secs: 7200,
                unmetered_only: true
            })
        );
        i.frequency = SyncFrequency::ManualOnly;
        assert_eq!(background_plan(&i, true, false).periodic, None);
        i.frequency = SyncFrequency::Auto;
        i.has_profile = false;
        assert_eq!(background_plan(&i, true, false).periodic, None);
    }

    #[test]
    fn closure_is_transitive() {
        let i = input(0);
        assert_eq!(i.closure["incidents"], vec!["bookings", "work_orders"]);
        assert_eq!(i.closure["work_orders"], vec!["bookings"]);
        assert!(i.closure["accounts"].is_empty());
    }

    #[test]
    fn intervals_and_dependency_closure() {
        // Before 5 minutes nothing is due; the next instant is bookings' due time.
        assert_eq!(
            decide(&input(4 * MIN)),
            Decision::Wait {
                blocker: Blocker::UpToDate,
                next_at: Some(5 * MIN)
            }
        );
        // At 5 minutes bookings are due, and every table reaching bookings
        // (work_orders directly, incidents through work_orders) syncs with it.
        assert_eq!(
            decide(&input(5 * MIN)),
            run(&["bookings", "work_orders", "incidents"], SyncMode::Delta)
        );
        // accounts (no relationship, 1 hour) only at 60 minutes.
        let mut i = input(60 * MIN);
        for t in &mut i.tables {
            if t.name != "accounts" {
                t.last_success_at = Some(57 * MIN);
            }
        }
        assert_eq!(decide(&i), run(&["accounts"], SyncMode::Delta));
    }

    #[test]
    fn only_while_active_and_connected_and_wifi_when_asked() {
        let mut i = input(10 * MIN);
        i.app_active = false;
        assert!(matches!(
            decide(&i),
            Decision::Wait {
                blocker: Blocker::AppInactive,
                ..
            }
        ));
        i.app_active = true;
        i.network_available = false;
        assert!(matches!(
            decide(&i),
            Decision::Wait {
                blocker: Blocker::NetworkUnavailable,
                ..
            }
        ));
        i.network_available = true;
        i.metered = true;
        assert!(matches!(decide(&i), Decision::Run { .. }));
        i.wifi_only = true;
        assert!(matches!(
            decide(&i),
            Decision::Wait {
                blocker: Blocker::MeteredNetwork,
                ..
            }
        ));
        i.metered = false;
        assert!(matches!(decide(&i), Decision::Run { .. }));
    }

    #[test]
    fn manual_mode_longer_interval_sync_now_and_refresh() {
        let mut i = input(10 * 24 * 60 * MIN);
        i.frequency = SyncFrequency::ManualOnly;
        assert_eq!(
            decide(&i),
            Decision::Wait {
                blocker: Blocker::ManualOnly,
                next_at: None
            }
        );
        i.sync_now = true;
        assert_eq!(
            decide(&i),
            Decision::Run {
                tables: None,
                mode: SyncMode::Forced
            }
        );
        i.refresh = vec!["work_orders".into()];
        assert_eq!(
            decide(&i),
            run(&["work_orders", "incidents"], SyncMode::Refresh)
        );
        // A longer interval: 2 hours; bookings and work_orders at 2 h, incidents too.
        let mut i = input(119 * MIN);
        i.frequency = SyncFrequency::Every { secs: 7200 };
        assert!(matches!(
            decide(&i),
            Decision::Wait {
                next_at: Some(t),
                ..
            } if t == 120 * MIN
        ));
        i.now = 120 * MIN;
        assert_eq!(
            decide(&i),
            run(
                &["bookings", "work_orders", "incidents", "accounts"],
                SyncMode::Delta
            )
        );
    }

    #[test]
    fn first_download_starts_even_in_manual_mode_and_backoff_delays() {
        let mut i = input(0);
        i.frequency = SyncFrequency::ManualOnly;
        i.has_profile = false;
        i.tables.clear();
        assert_eq!(
            decide(&i),
            Decision::Run {
                tables: None,
                mode: SyncMode::First
            }
        );
        i.retry_at = Some(30_000);
        assert_eq!(
            decide(&i),
            Decision::Wait {
                blocker: Blocker::Backoff,
                next_at: Some(30_000)
            }
        );
        // "Sync now" ignores the backoff.
        i.sync_now = true;
        assert!(matches!(decide(&i), Decision::Run { .. }));
    }

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let b = Backoff::default();
        let mut prev_step = 0;
        for n in 1..=12 {
            let d = b.delay_ms(n);
            let step = (30_000i64 << (n - 1).min(30)).min(30 * MIN);
            assert!(d >= step / 2 && d <= step, "retry {n}: {d} outside {step}");
            assert!(step >= prev_step);
            prev_step = step;
        }
        assert_eq!(b.delay_ms(3), Backoff::default().delay_ms(3));
        let other = Backoff { seed: 7, ..b };
        assert!((1..=10).any(|n| other.delay_ms(n) != b.delay_ms(n)));
        assert!(b.delay_ms(u32::MAX) <= 30 * MIN);
    }
}
