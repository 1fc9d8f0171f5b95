//! The downloads of one sync run: which tables are pulled, in rounds, with
//! the profile picked up again when the server says it changed, a table
//! restarted when the server no longer knows its cursor, and the tables
//! downloaded whole settled early while the others still download.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;

use futures::stream::{FuturesUnordered, StreamExt};

use tracing::{debug, info, warn};

use crate::download::{PageWritten, pull_table, table_report};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::profile::{RowRule, SyncProfile, SyncTable};
use crate::protocol::codes;
use crate::status::{SyncReport, TableReport};

/// Tables of this run evaluated whole while other tables still downloaded
/// (see [`next_early_settle`]): each with the day it was evaluated on, and
/// the rows removed.
#[derive(Default)]
pub(crate) struct EarlySettled {
    pub(crate) days: BTreeMap<String, String>,
    pub(crate) removed: Vec<(String, u64)>,
}

/// A table of this run to evaluate whole now, while others still download:
/// the first, in dependency order, that was downloaded whole in this run
/// (`whole`), is not evaluated yet, and whose related-rows rules read only
/// tables evaluated this way before it. Its rows and theirs change no more
/// in this run, so the evaluation holds for the final pass, which then
/// skips it (`Store::settle_table`). The first download of a device ends
/// with every table evaluated whole; this way most of that work runs while
/// the server prepares the last tables' pages instead of after them.
fn next_early_settle(
    profile: &SyncProfile,
    whole: &BTreeSet<String>,
    early: &EarlySettled,
) -> Option<String> {
    profile
        .tables_in_dependency_order()
        .into_iter()
        .find(|t| {
            whole.contains(&t.name)
                && !early.days.contains_key(&t.name)
                // A filter reading related tables' rows waits for the final
                // pass, when every table it reads is in.
                && !t.rules.iter().any(|r| matches!(r, RowRule::Custom { filter } if filter.reads_related()))
                && t.depends_on()
                    .iter()
                    .all(|d| *d == t.name || early.days.contains_key(d))
        })
        .map(|t| t.name.clone())
}

/// What one future of [`pull_round`] did: pulled a table, or evaluated one
/// early (the removed rows and the day of the evaluation).
enum Step {
    Pulled(Box<(SyncTable, SyncReport, Result<()>)>),
    Settled(String, Result<(u64, String)>),
}

/// Pulls `tables`, up to `EngineConfig::parallel_pulls` at once. A table starts once
/// the tables its related-rows rules read (those in this run) are pulled;
/// a table's first download, once they have begun theirs (a page of theirs
/// is written, so their snapshot is taken before its own). The server
/// selects the first download's rows from its own copy of those tables, as
/// it stands when each page is read: the rows of their snapshots are
/// covered, and the rows that changed since are queued for a fetch
/// (`related::RelatedQueue`, told which rows are which by the page's
/// `snapshot_rows`). So the bookings and the work orders of a first sync
/// download side by side, where the work orders used to wait for the last
/// page of bookings. Tables at the same depth (a work order's incidents,
/// products, services) do not read one another, so downloading them
/// together changes nothing a device can see but the time it takes. When
/// the server says the profile changed, no table starts; the running ones
/// finish, then the profile is installed (never under a running download)
/// and the tables not pulled yet go on. The first other error stops the
/// run the same way.
///
/// While tables download, the tables downloaded whole are evaluated against
/// their rules one at a time ([`next_early_settle`]), until the profile
/// changes (a new profile is evaluated whole by the final pass).
pub(crate) async fn pull_tables(
    engine: &Engine,
    tables: Vec<SyncTable>,
    report: &mut SyncReport,
    early: &mut EarlySettled,
) -> Result<()> {
    let names: Vec<String> = tables.iter().map(|t| t.name.clone()).collect();
    // The counts are asked beside the first pages: the server counts while
    // it prepares them, and the device's wait does not grow.
    let plan = plan_progress(engine, &tables);
    let pulls = async {
        let mut done: BTreeSet<String> = BTreeSet::new();
        let mut refreshes = 0;
        let mut parts: Vec<SyncReport> = Vec::new();
        let result = loop {
            let settle_early = refreshes == 0;
            match pull_round(engine, &names, &mut done, &mut parts, early, settle_early).await {
                Err(Error::Server {
                    status: 409, code, ..
                }) if code == codes::PROFILE_CHANGED && refreshes < 2 => {
                    refreshes += 1;
                    if let Err(e) = refresh_profile(engine, report).await {
                        break Err(e);
                    }
                }
                other => break other,
            }
        };
        (parts, result)
    };
    let ((plan_up, plan_down), (parts, result)) = tokio::join!(plan, pulls);
    report.bytes_up += plan_up;
    report.bytes_down += plan_down;
    // The table reports in the order of the run, whatever order they ended in.
    let mut tables: Vec<TableReport> = Vec::new();
    for part in parts {
        report.bytes_up += part.bytes_up;
        report.bytes_down += part.bytes_down;
        tables.extend(part.tables);
    }
    tables.sort_by_key(|t| names.iter().position(|n| *n == t.table));
    report.tables.extend(tables);
    count_removed(report, &early.removed);
    result
}

/// Asks the server how many entries each table's download will bring
/// (`POST /v1/sync/counts`, one round trip for every table of the run) and
/// gives the sizes to the run's progress before any page arrives, so its
/// total is exact from the start and its fraction only grows. A server that
/// cannot say (an older one, or a failure) leaves the totals to the pages'
/// estimates; the sync goes on either way.
fn plan_progress<'a>(
    engine: &'a Engine,
    tables: &[SyncTable],
) -> impl Future<Output = (u64, u64)> + 'a {
    // The cursors and rows held as the downloads begin, read before any
    // of them moves.
    let mut cursors = BTreeMap::new();
    let mut before = BTreeMap::new();
    for t in tables {
        let Ok(state) = engine.store.table_state(&t.name) else {
            continue;
        };
        // A first download resumed from a page keeps the rows it holds;
        // a download of changes starts its count again.
        let resumed = !state.initial_done && !state.cursor.is_empty();
        before.insert(
            t.name.clone(),
            if resumed { state.received_rows } else { 0 },
        );
        cursors.insert(t.name.clone(), state.cursor);
    }
    async move {
        if cursors.is_empty() {
            return (0, 0);
        }
        let answer = match engine
            .api
            .counts(&crate::protocol::CountsRequest { tables: cursors })
            .await
        {
            Ok(a) => a,
            Err(e) => {
                debug!(target: "fieldsync::sync", error = %e, "no download counts; the pages' totals are estimates");
                engine.plan_progress(None);
                return (0, 0);
            }
        };
        let bytes = (answer.bytes_up, answer.bytes_down);
        let planned: BTreeMap<String, crate::live::PlannedTable> = answer
            .value
            .tables
            .into_iter()
            .filter_map(|(name, count)| {
                let done = *before.get(&name)?;
                Some((
                    name,
                    crate::live::PlannedTable {
                        rows_done: done,
                        rows_total: done.saturating_add(count),
                    },
                ))
            })
            .collect();
        engine.plan_progress(Some(&planned));
        bytes
    }
}

/// Adds rows a settling removed (per table) to the run's table reports.
pub(crate) fn count_removed(report: &mut SyncReport, removed: &[(String, u64)]) {
    for (table, n) in removed {
        if *n > 0 {
            info!(target: "fieldsync::sync", table = %table, rows = n, "removed rows that no longer meet the offline profile");
            table_report(report, table).rows_removed += n;
        }
    }
}

/// One pass of [`pull_tables`] over the tables of `names` still in the
/// profile and not yet in `done`; with `settle_early`, tables downloaded
/// whole are evaluated as soon as they can be, while others download.
async fn pull_round(
    engine: &Engine,
    names: &[String],
    done: &mut BTreeSet<String>,
    parts: &mut Vec<SyncReport>,
    early: &mut EarlySettled,
    settle_early: bool,
) -> Result<()> {
    let profile = engine
        .profile()
        .ok_or_else(|| Error::Internal("no profile after refresh".into()))?;
    let mut waiting: Vec<SyncTable> = profile
        .tables_in_dependency_order()
        .into_iter()
        .filter(|t| names.contains(&t.name) && !done.contains(&t.name))
        .cloned()
        .collect();
    let in_run: BTreeSet<String> = waiting.iter().map(|t| t.name.clone()).collect();
    // Tables whose download holds a cursor (its snapshot is taken), and
    // the tables of this round not downloaded whole yet.
    let mut begun: BTreeSet<String> = BTreeSet::new();
    let mut first_downloads: BTreeSet<String> = BTreeSet::new();
    for t in &waiting {
        let state = engine.store.table_state(&t.name)?;
        if !state.cursor.is_empty() {
            begun.insert(t.name.clone());
        }
        if !state.initial_done {
            first_downloads.insert(t.name.clone());
        }
    }
    let (page_written, mut first_pages) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut running: FuturesUnordered<Pin<Box<dyn Future<Output = Step> + Send + '_>>> =
        FuturesUnordered::new();
    let mut pulling = 0;
    let mut settling = false;
    // Tables of this round downloaded whole (their first download ended in it).
    let mut whole: BTreeSet<String> = BTreeSet::new();
    let mut first_error: Option<Error> = None;
    let room = engine.options.parallel_pulls.max(1) as usize;
    loop {
        while first_error.is_none() && pulling < room {
            let ready = waiting.iter().position(|t| {
                t.depends_on().iter().all(|d| {
                    done.contains(d)
                        || !in_run.contains(d)
                        || (first_downloads.contains(&t.name) && begun.contains(d))
                })
            });
            let Some(i) = ready else { break };
            let table = waiting.remove(i);
            pulling += 1;
            let page_written = page_written.clone();
            running.push(Box::pin(async move {
                let mut part = SyncReport::default();
                let timer = std::time::Instant::now();
                let pulled = pull_with_restarts(engine, &table, &mut part, &page_written).await;
                debug!(target: "fieldsync::sync", table = %table.name, ms = timer.elapsed().as_millis() as u64, "table pulled");
                Step::Pulled(Box::new((table, part, pulled)))
            }));
        }
        // One evaluation at a time, and only while downloads remain: once
        // the last one ends, the final pass evaluates the rest in one
        // transaction.
        if settle_early
            && !settling
            && first_error.is_none()
            && (pulling > 0 || !waiting.is_empty())
            && let Some(name) = next_early_settle(&profile, &whole, early)
        {
            settling = true;
            let store = engine.store.clone();
            let p = profile.clone();
            let settled: BTreeSet<String> = early.days.keys().cloned().collect();
            let now = engine.clock.now_ms();
            let day = p.filter_context(now).today().to_string();
            running.push(Box::pin(async move {
                let t = name.clone();
                let result =
                    tokio::task::spawn_blocking(move || store.settle_table(&p, &t, &settled, now))
                        .await
                        .map_err(|e| Error::Internal(format!("store task: {e}")))
                        .and_then(|r| r)
                        .map(|n| (n, day));
                Step::Settled(name, result)
            }));
        }
        let step = tokio::select! {
            step = running.next() => step,
            Some(name) = first_pages.recv() => {
                begun.insert(name);
                continue;
            }
        };
        let Some(step) = step else {
            break;
        };
        match step {
            Step::Pulled(pulled) => {
                let (table, part, pulled) = *pulled;
                pulling -= 1;
                let downloaded_whole = part.tables.iter().any(|t| t.initial);
                parts.push(part);
                match pulled {
                    Ok(()) => {
                        if downloaded_whole {
                            whole.insert(table.name.clone());
                        }
                        done.insert(table.name);
                    }
                    Err(e) => {
                        let changed = matches!(&e, Error::Server { status: 409, code, .. } if code == codes::PROFILE_CHANGED);
                        if !changed {
                            let _ = engine.store.record_table_error(&table.name, &e.to_string());
                        }
                        first_error.get_or_insert(e);
                    }
                }
            }
            Step::Settled(name, result) => {
                settling = false;
                match result {
                    Ok((removed, day)) => {
                        early.removed.push((name.clone(), removed));
                        early.days.insert(name, day);
                    }
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Pulls one table; when the server refuses its cursor, downloads the table
/// again from the start (twice at most).
async fn pull_with_restarts(
    engine: &Engine,
    table: &SyncTable,
    report: &mut SyncReport,
    page_written: &PageWritten,
) -> Result<()> {
    let mut attempts = 0;
    loop {
        match pull_table(engine, table, report, page_written).await {
            Err(Error::Server {
                status: 400, code, ..
            }) if code == codes::INVALID_CURSOR && attempts < 2 => {
                attempts += 1;
                warn!(target: "fieldsync::sync", table = %table.name, "the server refused the cursor; downloading the table again");
                engine.store.restart_table(&table.name)?;
            }
            other => return other,
        }
    }
}

pub(crate) async fn refresh_profile(engine: &Engine, report: &mut SyncReport) -> Result<()> {
    let fetched = engine.api.profile().await?;
    report.bytes_up += fetched.bytes_up;
    report.bytes_down += fetched.bytes_down;
    let profile = fetched.value;
    for t in &profile.tables {
        crate::profile::check_identifier(&t.name)
            .map_err(|e| Error::Protocol(format!("profile: {e}")))?;
        for c in &t.columns {
            crate::profile::check_identifier(&c.name)
                .map_err(|e| Error::Protocol(format!("profile: {e}")))?;
        }
        if t.columns.first().map(|c| &c.name) != Some(&t.primary_key) {
            return Err(Error::Protocol(format!(
                "profile: table '{}' must list its primary key first",
                t.name
            )));
        }
    }
    report.profile_version = profile.version;
    let store = engine.store.clone();
    let now = engine.clock.now_ms();
    let before = engine.profile();
    if before.as_ref() == Some(&profile) {
        return Ok(());
    }
    let p = profile.clone();
    let change = tokio::task::spawn_blocking(move || store.apply_profile(&p, now))
        .await
        .map_err(|e| Error::Internal(format!("profile task: {e}")))??;
    engine.set_profile(profile);
    // A dropped table (and a table created again for a new primary key)
    // changed without a row write the store's hooks see.
    let gone: std::collections::BTreeSet<String> = change
        .dropped_tables
        .iter()
        .chain(&change.resynced_tables)
        .cloned()
        .collect();
    engine.deliver_queries(&gone);
    report.profile_changed = before.is_some();
    report.tables_added.extend(change.added_tables);
    report.tables_dropped.extend(change.dropped_tables);
    Ok(())
}
