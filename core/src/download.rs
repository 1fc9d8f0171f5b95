//! One table's download: pages fetched one ahead of the one being written,
//! their sizes ramped up and down, progress and the table's report.

use std::sync::Arc;

use tracing::debug;

use crate::client::PulledPage;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::profile::SyncTable;
use crate::status::{SyncEvent, SyncReport, TableReport};
use crate::store::{PageSummary, Store};

pub(crate) fn table_report<'a>(report: &'a mut SyncReport, table: &str) -> &'a mut TableReport {
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
pub(crate) type PageWritten = tokio::sync::mpsc::UnboundedSender<String>;

/// Downloads one table from its cursor to the end, page by page.
pub(crate) async fn pull_table(
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
