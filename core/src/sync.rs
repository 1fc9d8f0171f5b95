//! One sync run: pick up the offline profile (C2), upload the outbox (C5),
//! download each table from its cursor in pages (C3, C4), then settle
//! related rows and remove what no longer belongs on the device (C4).
//!
//! Settling related rows: for each related-rows rule, the related values
//! queued since the last settled run (the work order id of a booking that
//! arrived or was written, the id of a work order that arrived) are fetched
//! with `POST /v1/sync/fetch` (the server returns only rows the user's rules
//! select), in dependency order so a fetched work order brings its incidents.
//! Then the local rows that may have stopped being reached (rows written
//! since, rows whose related row is gone, every row of a table downloaded
//! whole or whose date window moved) are evaluated against their table's
//! rules at the engine's clock, following related rows through the device's
//! own tables, and rows no longer reached are removed (rows with pending
//! local changes stay until the server settles them). See `store::settle`.
//!
//! Upload comes before download so the server settles every local change
//! (applied, conflict or rejected) before rows are pulled over it. Each page is applied
//! in one transaction with its cursor; the next page downloads while the
//! current one is written. A failure stops the run with everything committed
//! so far kept, and the next run resumes from there.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures::stream::{FuturesUnordered, StreamExt};

use tracing::{debug, info, warn};

use crate::client::PulledPage;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::profile::{RowRule, SyncProfile, SyncTable};
use crate::protocol::{FetchRequest, MAX_FETCH_VALUES, MAX_MUTATIONS_PER_PUSH, codes};
use crate::status::{SyncEvent, SyncReport, TableReport};
use crate::store::{PageSummary, Store, related_rule_key};
use crate::value::Value;

/// Runs a sync of all tables (`None`) or of the named ones.
/// With `smart`, tables the server reports unchanged are not pulled
/// ([`skip_unchanged`]).
pub(crate) async fn run(
    engine: &Engine,
    only: Option<Vec<String>>,
    smart: bool,
) -> Result<SyncReport> {
    let _guard = engine.sync_lock.lock().await;
    let started = engine.clock.now_ms();
    engine.emit(SyncEvent::SyncStarted);
    info!(target: "fieldsync::sync", "sync started");
    let mut report = SyncReport {
        started_at: started,
        ..Default::default()
    };
    let result = run_inner(engine, only, smart, &mut report).await;
    crate::codec::release_zstd_contexts();
    report.duration_ms = engine.clock.now_ms() - started;
    match result {
        Ok(()) => {
            info!(
                target: "fieldsync::sync",
                uploaded = report.uploaded,
                conflicts = report.conflicts.len(),
                pages = report.pages(),
                bytes_down = report.bytes_down,
                bytes_up = report.bytes_up,
                duration_ms = report.duration_ms,
                "sync finished"
            );
            engine.emit(SyncEvent::SyncFinished {
                report: report.clone(),
            });
            Ok(report)
        }
        Err(e) => {
            warn!(target: "fieldsync::sync", error = %e, "sync failed");
            engine.emit(SyncEvent::SyncFailed {
                message: e.to_string(),
            });
            Err(e)
        }
    }
}

async fn run_inner(
    engine: &Engine,
    only: Option<Vec<String>>,
    smart: bool,
    report: &mut SyncReport,
) -> Result<()> {
    // The profile first (it says which tables exist), then uploads, then pulls.
    // A smart sync over an installed profile asks which tables changed
    // alongside the profile: the answer holds when the profile comes back
    // the same and nothing is uploaded (else it is asked again below, after
    // the upload, whose rows it must see). One round trip less before the
    // first page, for the common sync of a device with nothing to send.
    let installed = engine.profile();
    let early_check = match &installed {
        Some(p) if smart => {
            let asked = p
                .tables
                .iter()
                .filter(|t| only.as_ref().is_none_or(|names| names.contains(&t.name)));
            let cursors = check_cursors(engine, asked);
            let (refreshed, answer) = tokio::join!(
                refresh_profile(engine, report),
                ask_changes(engine, &cursors)
            );
            refreshed?;
            answer.map(|a| (cursors, a))
        }
        _ => {
            refresh_profile(engine, report).await?;
            None
        }
    };
    let uploaded = upload(engine, report).await?;

    let profile = engine
        .profile()
        .ok_or_else(|| Error::Internal("no profile after refresh".into()))?;
    let tables: Vec<SyncTable> = match &only {
        None => profile.tables.clone(),
        Some(names) => {
            let mut out = Vec::new();
            for n in names {
                out.push(
                    profile
                        .table(n)
                        .cloned()
                        .ok_or_else(|| Error::UnknownTable(n.clone()))?,
                );
            }
            out
        }
    };
    let tables = if smart {
        let mut answered = None;
        if let Some((cursors, answer)) = early_check {
            report.bytes_up += answer.bytes_up;
            report.bytes_down += answer.bytes_down;
            if !uploaded && installed.as_ref() == Some(&profile) {
                answered = Some((cursors, answer.value));
            }
        }
        skip_unchanged(engine, tables, report, answered).await
    } else {
        tables
    };
    let mut early = EarlySettled::default();
    pull_tables(engine, tables, report, &mut early).await?;
    let timer = std::time::Instant::now();
    let settled = settle_related(engine, report, &early.days).await;
    debug!(target: "fieldsync::sync", ms = timer.elapsed().as_millis() as u64, "related rows settled");
    settled
}

/// Smart sync: one `POST /v1/sync/changes` for every table whose first
/// download is done, and only the tables the server reports changed (or that
/// still have local changes waiting) are pulled; the others go to
/// `report.skipped_unchanged`. A pull from an unchanged table's cursor would
/// return nothing: a changes phase sends only rows changed after the cursor,
/// and the server answers `true` when a relative-date window may have let
/// rows in. Rows a changed related table now reaches are fetched by the
/// settling, as after any pull. When the check fails, every table is
/// pulled. `answered`: the cursors and the answer of a check already made
/// in this run (alongside the profile, see [`run_inner`]), used instead of
/// asking again.
async fn skip_unchanged(
    engine: &Engine,
    tables: Vec<SyncTable>,
    report: &mut SyncReport,
    answered: Option<(BTreeMap<String, String>, crate::protocol::ChangesResponse)>,
) -> Vec<SyncTable> {
    let (cursors, answer) = match answered {
        Some(a) => a,
        None => {
            let cursors = check_cursors(engine, &tables);
            let Some(answer) = ask_changes(engine, &cursors).await else {
                return tables;
            };
            report.bytes_up += answer.bytes_up;
            report.bytes_down += answer.bytes_down;
            (cursors, answer.value)
        }
    };
    let pending = engine.store.pending_by_table().unwrap_or_default();
    let (skip, pull): (Vec<SyncTable>, Vec<SyncTable>) = tables.into_iter().partition(|t| {
        cursors.contains_key(&t.name)
            && answer.tables.get(&t.name) == Some(&false)
            && pending.get(&t.name).copied().unwrap_or(0) == 0
    });
    report.skipped_unchanged = skip.into_iter().map(|t| t.name).collect();
    pull
}

/// The cursors of the tables among `tables` whose first download is done:
/// what a smart sync asks the server about.
fn check_cursors<'t>(
    engine: &Engine,
    tables: impl IntoIterator<Item = &'t SyncTable>,
) -> BTreeMap<String, String> {
    let mut cursors = BTreeMap::new();
    for t in tables {
        if let Ok(state) = engine.store.table_state(&t.name)
            && state.initial_done
        {
            cursors.insert(t.name.clone(), state.cursor);
        }
    }
    cursors
}

/// `POST /v1/sync/changes` for `cursors`; `None` when there are none or the
/// check failed (every table is then pulled).
async fn ask_changes(
    engine: &Engine,
    cursors: &BTreeMap<String, String>,
) -> Option<crate::client::Sized<crate::protocol::ChangesResponse>> {
    if cursors.is_empty() {
        return None;
    }
    match engine
        .api
        .changes(&crate::protocol::ChangesRequest {
            tables: cursors.clone(),
        })
        .await
    {
        Ok(a) => Some(a),
        Err(e) => {
            debug!(target: "fieldsync::sync", error = %e, "smart sync check failed; pulling every table");
            None
        }
    }
}

/// Tables of this run evaluated whole while other tables still downloaded
/// (see [`next_early_settle`]): each with the day it was evaluated on, and
/// the rows removed.
#[derive(Default)]
struct EarlySettled {
    days: BTreeMap<String, String>,
    removed: Vec<(String, u64)>,
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
async fn pull_tables(
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
fn count_removed(report: &mut SyncReport, removed: &[(String, u64)]) {
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

/// Fetches related rows that arrived without a change of their own, then
/// removes local rows that no longer meet their table's rules.
async fn settle_related(
    engine: &Engine,
    report: &mut SyncReport,
    early: &BTreeMap<String, String>,
) -> Result<()> {
    let profile: SyncProfile = engine
        .profile()
        .ok_or_else(|| Error::Internal("no profile after pull".into()))?;
    for table in profile.tables_in_dependency_order() {
        for r in table.related_rules() {
            let (column, other, foreign_column) = (r.column, r.other, r.foreign_column);
            let Some(other_table) = profile.table(other) else {
                continue;
            };
            // A table's download from an empty cursor dropped what was
            // queued for its rules before it began (`Store::begin_pull`):
            // what is queued now arrived since, and may reach rows that
            // download did not select.
            let key = related_rule_key(&table.name, column, other, foreign_column);
            let new = engine
                .store
                .take_related_pending(&key, other_table, foreign_column)?;
            if new.is_empty() {
                continue;
            }
            let kind = table
                .column(column)
                .map(|c| c.kind)
                .ok_or_else(|| Error::Internal(format!("column '{column}' missing")))?;
            debug!(target: "fieldsync::sync", table = %table.name, count = new.len(), "fetching related rows");
            for chunk in new.chunks(MAX_FETCH_VALUES) {
                let values: Vec<Value> = chunk
                    .iter()
                    .filter_map(|k| related_value(k, kind))
                    .collect();
                if values.is_empty() {
                    engine.store.clear_related_pending(&key, chunk)?;
                    continue;
                }
                let response = engine
                    .api
                    .fetch(&FetchRequest {
                        table: table.name.clone(),
                        column: column.to_owned(),
                        values,
                        profile_version: Some(profile.version),
                    })
                    .await?;
                report.bytes_up += response.bytes_up;
                report.bytes_down += response.bytes_down;
                let store = engine.store.clone();
                let t = table.clone();
                let fetched = response.value;
                let p = profile.clone();
                let done: Vec<String> = chunk.to_vec();
                let rule = key.clone();
                let written = tokio::task::spawn_blocking(move || {
                    let written = store.apply_fetched(&p, &t, &fetched.columns, &fetched.rows)?;
                    store.clear_related_pending(&rule, &done)?;
                    Ok::<_, Error>(written)
                })
                .await
                .map_err(|e| Error::Internal(format!("store task: {e}")))??;
                table_report(report, &table.name).rows_upserted += written;
            }
        }
    }
    let store = engine.store.clone();
    let now = engine.clock.now_ms();
    let p = profile.clone();
    let timer = std::time::Instant::now();
    let early = early.clone();
    let removed = tokio::task::spawn_blocking(move || store.remove_unreached_rest(&p, now, &early))
        .await
        .map_err(|e| Error::Internal(format!("store task: {e}")))??;
    debug!(target: "fieldsync::sync", ms = timer.elapsed().as_millis() as u64, "removal of unreached rows");
    count_removed(report, &removed);
    Ok(())
}

/// Turns a related-value key back into a value of the column's kind.
fn related_value(key: &str, kind: crate::profile::ColumnKind) -> Option<Value> {
    use crate::profile::ColumnKind as K;
    match kind {
        K::Text | K::Date | K::DateTime | K::Json | K::Choice => Some(Value::Text(key.to_owned())),
        K::Integer => key.parse().ok().map(Value::Integer),
        K::Real => key.parse().ok().map(Value::Real),
        K::Boolean => match key {
            "1" => Some(Value::Boolean(true)),
            "0" => Some(Value::Boolean(false)),
            _ => None,
        },
    }
}

fn table_report<'a>(report: &'a mut SyncReport, table: &str) -> &'a mut TableReport {
    if let Some(i) = report.tables.iter().position(|t| t.table == table) {
        return &mut report.tables[i];
    }
    report.tables.push(TableReport {
        table: table.to_owned(),
        ..Default::default()
    });
    let last = report.tables.len() - 1;
    &mut report.tables[last]
}

async fn refresh_profile(engine: &Engine, report: &mut SyncReport) -> Result<()> {
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

/// Uploads the outbox in order, batch after batch, until it is empty;
/// whether there was anything to upload.
async fn upload(engine: &Engine, report: &mut SyncReport) -> Result<bool> {
    let mut any = false;
    loop {
        let store = engine.store.clone();
        let batch = tokio::task::spawn_blocking(move || store.take_batch(MAX_MUTATIONS_PER_PUSH))
            .await
            .map_err(|e| Error::Internal(format!("outbox task: {e}")))??;
        if batch.is_empty() {
            return Ok(any);
        }
        any = true;
        debug!(target: "fieldsync::sync", count = batch.len(), "uploading");
        let mutations = batch.iter().map(|e| e.mutation.clone()).collect();
        let response = engine.api.push(mutations).await?;
        report.bytes_up += response.bytes_up;
        report.bytes_down += response.bytes_down;
        let profile = engine
            .profile()
            .ok_or_else(|| Error::Internal("no profile during upload".into()))?;
        let store = engine.store.clone();
        let now = engine.clock.now_ms();
        let results = response.value.results;
        let applied = tokio::task::spawn_blocking(move || {
            store.apply_push_results(&profile, &batch, &results, now)
        })
        .await
        .map_err(|e| Error::Internal(format!("outbox task: {e}")))??;
        report.uploaded += applied.applied;
        report.conflicts.extend(applied.conflicts);
        report.rejected.extend(applied.rejected);
        engine.emit(SyncEvent::Uploaded {
            count: applied.applied,
            pending: engine.store.pending_count()?,
        });
    }
}

/// How often a download asks the server for its `total` again (the first
/// page always does): each answer refines the progress estimate.
const TOTAL_EVERY_PAGES: u64 = 10;

/// The first page of a table's pull asks for this share of the page size
/// (an eighth: 1,250 rows of 10,000); each next page asks for twice as many,
/// up to the page size.
const FIRST_PAGE_SHARE: u32 = 8;

/// About the most a page should take as it comes off the wire (compressed,
/// as a rule). A table's download holds two pages, the one being written and
/// the next arriving, so this, not the page size (a count of rows) times the
/// rows' width, bounds what pages take of the device's memory: a table of
/// rows near the 1 MiB row limit would have held gigabytes. Each next page
/// asks for as many rows as fit this many bytes at the last page's bytes per
/// row. The reference data's widest pages (10,000 work orders, 190 kB of
/// zstd) stay under it; a 64 kB bound cut them to 3,400 rows and measured no
/// smaller peak, only more pages (`docs/performance.md`).
const PAGE_BYTES: u64 = 256 * 1024;

/// The rows the next page asks for after a page of `asked` rows that took
/// `held` bytes: twice as many, up to the page size and to about
/// [`PAGE_BYTES`] at this page's bytes per row, and at least one.
fn next_limit(asked: u32, held: usize, page_size: u32) -> u32 {
    let doubled = asked.saturating_mul(2).min(page_size);
    let Ok(held) = u64::try_from(held) else {
        return 1;
    };
    if held == 0 {
        return doubled.max(1);
    }
    let fit = u64::from(asked).saturating_mul(PAGE_BYTES) / held;
    u32::try_from(fit)
        .map_or(doubled, |fit| doubled.min(fit))
        .max(1)
}

/// The rows the next page of a download of changes asks for, `limit` at
/// most, when the server said about `left` rows remain beyond the pages
/// asked for: half of them, and never fewer than the first page's `first`.
/// Pages then shrink toward the end of the changes, so the write of the
/// last page, which no download overlaps, is short: the server computes
/// the next page while the device writes this one, and after the last page
/// there is nothing left to compute.
///
/// Only downloads of changes ramp down: their `total` counts the changed
/// rows exactly, where a first download's is an estimate that may fall
/// short (it would shrink its pages for no end in sight).
fn ramp_down(limit: u32, left: Option<u64>, first: u32) -> u32 {
    match left {
        Some(left) => {
            let half = u32::try_from(left / 2).unwrap_or(u32::MAX);
            limit.min(half.max(first)).max(1)
        }
        None => limit,
    }
}

/// Hands the memory of an applied page back to the system. glibc keeps what
/// is freed in its arenas (one per thread that allocated, and the blocking
/// pool runs pages on whichever thread is free): without a trim the process
/// kept growing with the number of pages, not with the size of one. Other
/// allocators (Android's, Apple's) return it themselves.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own free lists; it takes no
    // pointer and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The rows a table's download is expected to hold once `page` (applied
/// after `rows_done` entries) is in: from the page's total while pages
/// remain (it counts from the request's cursor, this page included), else
/// what was received.
fn progress_total(rows_done: u64, rows_total: Option<u64>, page: &PageSummary) -> Option<u64> {
    if page.has_more {
        // Never fewer than the rows in: the page's entries and at least
        // one more (pages remain).
        page.total
            .map(|total| rows_done + total)
            .or(rows_total)
            .map(|t| t.max(rows_done + page.entries + 1))
    } else {
        Some(rows_done + page.entries)
    }
}

type PageFetch = tokio::task::JoinHandle<Result<crate::client::Sized<PulledPage>>>;

fn fetch(
    engine: &Engine,
    table: &SyncTable,
    cursor: String,
    limit: u32,
    want_total: bool,
    profile_version: i64,
) -> PageFetch {
    let api = engine.api.clone();
    let name = table.name.clone();
    tokio::spawn(async move {
        api.pull(&name, &cursor, limit, want_total, profile_version)
            .await
    })
}

/// Told the name of a table once a page of it is written in a pull.
type PageWritten = tokio::sync::mpsc::UnboundedSender<String>;

/// Downloads one table from its cursor to the end, page by page.
async fn pull_table(
    engine: &Engine,
    table: &SyncTable,
    report: &mut SyncReport,
    page_written: &PageWritten,
) -> Result<()> {
    let now = engine.clock.now_ms();
    let store: Arc<Store> = engine.store.clone();
    let profile = engine.profile();
    let profile_version = profile.as_ref().map(|p| p.version).unwrap_or(0);
    // A short first page, then pages doubling up to the page size (and to
    // about PAGE_BYTES on the wire, see `next_limit`): the
    // device starts writing after a short wait, and from then on the server
    // computes the next page while the device writes this one (one page of
    // the full size would keep them waiting on each other).
    let mut limit = (engine.page_size / FIRST_PAGE_SHARE).max(1);
    let first = limit;
    // A download of changes asks for its first page before its start is
    // marked: the marking only resets counters a written page reads, and
    // the statements that write the page are prepared while the server
    // reads it. A first download is marked first: its place among the
    // downloads that began (`walk_order`) must be taken before the server
    // takes its snapshot (see `Store::begin_pull`).
    let cursor = store.table_state(&table.name)?.cursor;
    let asked_early =
        (!cursor.is_empty()).then(|| fetch(engine, table, cursor, limit, true, profile_version));
    {
        let store = store.clone();
        let t = table.clone();
        let begun = tokio::task::spawn_blocking(move || {
            store.begin_pull(&t, now)?;
            store.prepare_page_writes(profile.as_ref(), &t);
            Ok::<_, Error>(())
        })
        .await
        .map_err(|e| Error::Internal(format!("store task: {e}")))
        .and_then(|r| r);
        if let Err(e) = begun {
            if let Some(h) = &asked_early {
                h.abort();
            }
            return Err(e);
        }
    }
    let state = store.table_state(&table.name)?;
    let initial = !state.initial_done;
    let mut table_report = TableReport {
        table: table.name.clone(),
        initial,
        ..Default::default()
    };
    let mut rows_done = state.received_rows;
    // The server's count at the start of the sync is exact; a first
    // download then asks the pages for no estimate of their own.
    // The server's count (asked beside the first pages, so perhaps not
    // here yet) is exact; a first download that has it asks the pages for
    // no estimate of their own.
    let planned = engine.planned_total(&table.name);
    let mut rows_total = planned.map(|p| p.rows_total).or(state.expected_rows);
    let page_totals = !(initial && planned.is_some());
    // Of a download of changes, the rows the server said remain beyond the
    // pages asked for (see `ramp_down`).
    let mut left: Option<u64> = None;
    let mut pending = Some(asked_early.unwrap_or_else(|| {
        fetch(
            engine,
            table,
            state.cursor.clone(),
            limit,
            page_totals,
            profile_version,
        )
    }));
    while let Some(handle) = pending.take() {
        let fetched = handle
            .await
            .map_err(|e| Error::Internal(format!("pull task: {e}")))??;
        report.bytes_up += fetched.bytes_up;
        report.bytes_down += fetched.bytes_down;
        table_report.bytes_down += fetched.bytes_down;
        let pulled = fetched.value;
        let page = &pulled.head;
        let held = pulled.body().bytes.len();
        debug!(target: "fieldsync::sync", table = %table.name, limit, held, "page arrived");
        if page.has_more {
            // The server's total is an estimate until the last page: ask
            // again now and then so the progress follows what is selected.
            let ask_total =
                page_totals && (table_report.pages + 1).is_multiple_of(TOTAL_EVERY_PAGES);
            limit = next_limit(limit, held, engine.page_size);
            if !initial {
                limit = ramp_down(limit, left, first);
                left = left.map(|l| l.saturating_sub(u64::from(limit)));
            }
            pending = Some(fetch(
                engine,
                table,
                page.cursor.clone(),
                limit,
                ask_total,
                profile_version,
            ));
        }
        let store = store.clone();
        let t = table.clone();
        let now = engine.clock.now_ms();
        let profile = engine.profile();
        let applied = match tokio::task::spawn_blocking(move || {
            let summary = store.apply_page_json(profile.as_ref(), &t, pulled.body(), now, |page| {
                progress_total(rows_done, rows_total, page)
            });
            drop(pulled);
            release_freed_memory();
            summary
        })
        .await
        {
            Ok(result) => result,
            Err(e) => Err(Error::Internal(format!("store task: {e}"))),
        };
        let summary = match applied {
            Ok(s) => s,
            Err(e) => {
                if let Some(h) = pending.take() {
                    h.abort();
                }
                return Err(e);
            }
        };
        let (applied, page_rows) = (summary.applied, summary.entries);
        if let Some(total) = summary.total.filter(|_| !initial) {
            // The total counts this page; the page in flight, if any,
            // asked for `limit` rows of what follows it.
            let in_flight = if pending.is_some() {
                u64::from(limit)
            } else {
                0
            };
            left = Some(total.saturating_sub(page_rows).saturating_sub(in_flight));
        }
        if table_report.pages == 0 && summary.snapshot_rows > 0 {
            // The tables reading this one may begin their first downloads
            // beside it: the server said which rows its snapshot holds
            // (one that does not say would have every row queued, so
            // they wait as before). Nobody listening is fine: the round
            // has ended.
            let _ = page_written.send(table.name.clone());
        }
        table_report.pages += 1;
        table_report.rows_upserted += applied.upserted;
        table_report.rows_removed += applied.removed;
        table_report.rows_kept_pending += applied.kept_pending;
        rows_done += page_rows;
        rows_total = match engine.planned_total(&table.name) {
            // Exact, unless rows changed on the server since the count.
            Some(p) if pending.is_some() => Some(p.rows_total.max(rows_done + 1)),
            _ => summary.expected,
        };
        engine.emit(SyncEvent::TableProgress {
            table: table.name.clone(),
            initial,
            rows_done,
            rows_total,
            bytes_down: table_report.bytes_down,
        });
    }
    engine.emit(SyncEvent::TableDone {
        table: table.name.clone(),
        initial,
    });
    report.tables.push(table_report);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{PAGE_BYTES, next_limit, ramp_down};

    #[test]
    fn pages_of_changes_shrink_toward_the_end() {
        // 10,000 changes in pages from 1,250 rows doubling to 10,000: the
        // server said 10,000 with the first page, which was written while
        // the second (2,500 rows) was on its way.
        let (first, mut limit, mut asked) = (1_250u32, 2_500u32, 3_750u64);
        let mut left = Some(10_000 - 1_250 - 2_500);
        let mut pages = vec![first, limit];
        while asked < 10_000 {
            limit = ramp_down(next_limit(limit, 0, 10_000), left, first);
            left = left.map(|l| l.saturating_sub(u64::from(limit)));
            asked += u64::from(limit);
            pages.push(limit);
        }
        assert_eq!(pages, [1_250, 2_500, 3_125, 1_562, 1_250, 1_250]);
        // Many left: pages as large as they would be; none known: the same.
        assert_eq!(ramp_down(10_000, Some(1_000_000), first), 10_000);
        assert_eq!(ramp_down(10_000, None, first), 10_000);
        // Fewer left than the first page: the first page's rows, never
        // fewer (a short total must not make pages of a row).
        assert_eq!(ramp_down(10_000, Some(10), first), first);
        assert_eq!(ramp_down(10_000, Some(0), 1), 1);
    }

    #[test]
    fn pages_double_up_to_the_page_size_and_to_about_page_bytes() {
        // Narrow rows: doubling, then the page size.
        assert_eq!(next_limit(1_250, 5_000, 10_000), 2_500);
        assert_eq!(next_limit(5_000, 20_000, 10_000), 10_000);
        assert_eq!(next_limit(10_000, 40_000, 10_000), 10_000);
        // Wide rows: as many as fit PAGE_BYTES at this page's bytes per row,
        // even fewer than this page when it was over.
        let per_row = 80;
        let held = |rows: u32| rows as usize * per_row;
        let fit = (PAGE_BYTES / per_row as u64) as u32;
        assert_eq!(next_limit(1_250, held(1_250), 10_000), 2_500);
        assert_eq!(next_limit(2_500, held(2_500), 10_000), fit);
        assert_eq!(next_limit(5_000, held(5_000), 10_000), fit);
        assert_eq!(next_limit(fit, held(fit), 10_000), fit);
        // One row wider than the budget: pages of one row, never none.
        assert_eq!(next_limit(1, 1 << 20, 10_000), 1);
        assert_eq!(next_limit(3, 1 << 22, 10_000), 1);
        // An empty body (nothing held) only doubles.
        assert_eq!(next_limit(100, 0, 10_000), 200);
    }
}
