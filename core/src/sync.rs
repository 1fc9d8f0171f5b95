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
//!
//! The downloads are in `pull` (the rounds over the tables) and
//! `download` (one table, page by page).

use std::collections::BTreeMap;

use tracing::{debug, info, warn};

use crate::download::table_report;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::profile::{SyncProfile, SyncTable};
use crate::protocol::{FetchRequest, MAX_FETCH_VALUES, MAX_MUTATIONS_PER_PUSH};
use crate::pull::{EarlySettled, count_removed, pull_tables, refresh_profile};
use crate::status::{SyncEvent, SyncReport};
use crate::store::related_rule_key;
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

/// Uploads the outbox in order, batch after batch, until it is empty;
/// whether there was anything to upload.
pub(crate) async fn upload(engine: &Engine, report: &mut SyncReport) -> Result<bool> {
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
