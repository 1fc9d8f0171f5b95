//! Pull: one page of a table's changes from a device's cursor, and the
//! count of what a pull would send.

use std::collections::BTreeMap;

use fieldsync_protocol::Value;
use fieldsync_protocol::profile::{ColumnKind, RowRule, SyncProfile, SyncTable, quote_ident};
use fieldsync_protocol::protocol::{
    MAX_PAGE_BYTES, MAX_PAGE_SIZE, PullPage, VERSION_COLUMN, codes,
};

use crate::page::PageRows;
use crate::rules;
use crate::schema::count_seq;
use crate::selection::Walked;
use crate::sql::Conn;
use crate::sql::int;
use crate::store_error::{StoreError, StoreResult};

use super::backend::Db;
use super::cursor::{Cursor, Phase};
use super::users::User;

/// One page of a pull: its head (a [`PullPage`] whose `rows` and
/// `removed` are empty) and the whole page as the JSON it is sent as
/// (`crate::page`).
#[derive(Debug)]
pub struct PageOut {
    pub head: PullPage,
    pub json: Vec<u8>,
    /// Rows the page inserts or replaces.
    pub rows: usize,
    /// Rows the page removes.
    pub removed: usize,
}

impl PageOut {
    /// The page decoded whole, rows and all.
    pub fn decoded(&self) -> StoreResult<PullPage> {
        serde_json::from_slice(&self.json).map_err(StoreError::decode("a page"))
    }
}

/// Rows of `table` whose custom filters read a related row (`related`)
/// changed after `since`: an SQL condition over `table` (named as such)
/// with its parameters, or `None` when no filter reads a related table.
/// One `EXISTS` per relationship path, the last table's `_seq` compared.
pub(crate) fn related_changed_sql(
    profile: &SyncProfile,
    table: &SyncTable,
    since: i64,
) -> Option<(String, Vec<Value>)> {
    let mut parts = Vec::new();
    let mut params = Vec::new();
    for path in related_paths(table) {
        let Some((_, first_column, _)) = path.first() else {
            continue;
        };
        let mut from = String::new();
        let mut ok = true;
        for (k, (_, column, other)) in path.iter().enumerate() {
            let Some(o) = profile.table(other) else {
                ok = false;
                break;
            };
            if k == 0 {
                from.push_str(&format!("{} AS _fs_ch0", quote_ident(other)));
            } else {
                from.push_str(&format!(
                    " JOIN {} AS _fs_ch{k} ON _fs_ch{k}.{} = _fs_ch{}.{}",
                    quote_ident(other),
                    quote_ident(&o.primary_key),
                    k - 1,
                    quote_ident(column)
                ));
            }
        }
        let Some(first) = path.first().and_then(|(_, _, o)| profile.table(o)) else {
            continue;
        };
        if !ok {
            continue;
        }
        parts.push(format!(
            "EXISTS (SELECT 1 FROM {from} WHERE _fs_ch0.{} = {}.{} AND _fs_ch{}._seq > ?)",
            quote_ident(&first.primary_key),
            quote_ident(&table.name),
            quote_ident(first_column),
            path.len() - 1
        ));
        params.push(int(since));
    }
    (!parts.is_empty()).then(|| (format!("({})", parts.join(" OR ")), params))
}

/// Every relationship path the custom filters of `table` follow.
pub(super) fn related_paths(table: &SyncTable) -> Vec<Vec<fieldsync_protocol::filter::Hop>> {
    let mut out = Vec::new();
    for rule in &table.rules {
        if let RowRule::Custom { filter } = rule {
            for p in filter.related_paths(&table.name) {
                if !out.contains(&p) {
                    out.push(p);
                }
            }
        }
    }
    out
}

/// Whether a table a `related` condition of `table` reads changed after
/// `since` (one indexed `EXISTS` per table).
pub(crate) fn related_tables_changed(
    c: &mut dyn Conn,
    table: &SyncTable,
    since: i64,
) -> StoreResult<bool> {
    let mut seen = std::collections::BTreeSet::new();
    for path in related_paths(table) {
        for (_, _, other) in path {
            if seen.insert(other.clone()) {
                let sql = format!(
                    "SELECT EXISTS (SELECT 1 FROM {} WHERE _seq > ?)",
                    quote_ident(&other)
                );
                if c.query_one(&sql, &[int(since)])?.bool(0)? {
                    return Ok(true);
                }
            }
        }
    }
    Ok(false)
}

/// The phase after the related phase of a new download: the window
/// phase when rows may have entered a relative-date window, else the
/// changes (the evaluation recorded at `now`).
pub(super) fn after_related(
    cursor: &mut Cursor,
    profile: &SyncProfile,
    table: &SyncTable,
    now: i64,
) -> Phase {
    if cursor.window_due(profile, table, now) {
        Phase::Window { to: now, after: 0 }
    } else {
        cursor.evaluated_at = Some(now);
        Phase::Changes
    }
}

/// The entries of a pull after this page, estimated for `total` (the
/// progress of a download) without evaluating the profile's rules again.
///
/// Rows changed after the snapshot are entries whatever they hold, so they
/// are counted. Rows at or before the snapshot are entries only when the
/// rules select them: their number is the rows still to walk times the share
/// of the rows this page walked that were entries. Every count is a range of
/// the table's `_seq` index, so the estimate costs a fraction of the page,
/// where counting exactly would evaluate every rule on every row again (as
/// much as the whole download: 10 s of 26 s for 1M device rows).
///
/// Each count is a `COUNT(*)` of its own over one range, which SQLite
/// answers from the index alone without reading a column, and ranges open
/// at the top where they can be (the rows still to walk are the rows after
/// the page less those after the snapshot): one statement summing three
/// `CASE`s over every row after `since` took three to seven times as long
/// (0.24 s for the 952k server rows of a 1M device's service tasks, against
/// 0.035 s for one open range), and the first page of a download and every
/// tenth after it ask.
pub(super) fn estimate_rest(
    c: &mut dyn Conn,
    table: &str,
    since: i64,
    snapshot: i64,
    last_seq: i64,
    entries_in_snapshot: u64,
) -> StoreResult<u64> {
    let after_snapshot = count_seq(c, table, last_seq.max(snapshot), None)?;
    let to_walk = if last_seq < snapshot {
        count_seq(c, table, last_seq, None)?.saturating_sub(after_snapshot)
    } else {
        0
    };
    let walked_to = last_seq.min(snapshot);
    let walked = if since < walked_to {
        count_seq(c, table, since, Some(walked_to))?
    } else {
        0
    };
    let selected = if walked == 0 {
        to_walk
    } else {
        (to_walk as u128 * u128::from(entries_in_snapshot.min(walked)) / walked as u128) as u64
    };
    Ok(after_snapshot + selected)
}

impl Db {
    /// One page of `table`'s changes after `cursor` for `user`.
    pub fn pull(
        &self,
        _user: &User,
        profile: &SyncProfile,
        table: &SyncTable,
        cursor: &str,
        limit: u32,
        want_total: bool,
    ) -> StoreResult<PageOut> {
        let profile_version = profile.version;
        if limit == 0 || limit > MAX_PAGE_SIZE {
            return Err(StoreError::invalid(
                codes::PAGE_TOO_LARGE,
                format!("limit must be 1 to {MAX_PAGE_SIZE}"),
            ));
        }
        let parsed = Cursor::parse(cursor).ok_or_else(|| {
            StoreError::invalid(
                codes::INVALID_CURSOR,
                "the cursor is not one this server issued",
            )
        })?;
        let now = self.clock.now_ms();
        let dialect = self.dialect();
        let predicate = rules::compile_in(dialect, profile, table, &profile.filter_context(now));
        let mut cols: Vec<String> = vec!["_version".into()];
        cols.extend(table.columns.iter().map(|c| quote_ident(&c.name)));
        let select_cols = cols.join(", ");
        let ncols = table.columns.len();
        let kinds: Vec<ColumnKind> = table.columns.iter().map(|c| c.kind).collect();
        self.read(|c| {
            let hwm = c
                .query_one("SELECT COALESCE(MAX(seq), 0) FROM _fs_change_log", &[])?
                .i64(0)?;
            let mut cursor = parsed.unwrap_or(Cursor {
                since: 0,
                snapshot: hwm,
                evaluated_at: Some(now),
                phase: Phase::Changes,
            });
            if cursor.since > hwm || cursor.snapshot > hwm {
                return Err(StoreError::invalid(
                    codes::INVALID_CURSOR,
                    "the cursor is ahead of this server's change log; download the table again",
                ));
            }
            // A new download: look for rows that entered a relative-date
            // window since the device's copy was selected. Relative dates
            // move by whole local days, so within the same day nothing can
            // have entered (and the scan of the table is skipped).
            if cursor.phase == Phase::Rest {
                cursor.phase = if related_tables_changed(c, table, cursor.since)? {
                    Phase::Related { after: 0 }
                } else {
                    after_related(&mut cursor, profile, table, now)
                };
            }
            if cursor.evaluated_at.is_none() {
                cursor.evaluated_at = Some(now);
            }
            let mut rows = PageRows::default();
            let mut removed = Vec::new();
            let mut has_more = false;
            let mut total: Option<u64> = want_total.then_some(0);
            let mut snapshot_rows = 0u64;
            let mut room = limit;
            let mut page_bytes = 0usize;

            let mut fill = PageFill {
                table: &table.name,
                select_cols: &select_cols,
                ncols,
                kinds: &kinds,
                rows: &mut rows,
                bytes: &mut page_bytes,
                room: &mut room,
                total: total.as_mut(),
            };

            // Related phase: unchanged rows that qualify now because a row
            // their filter reads changed (the device removes the rows that
            // stop qualifying itself, when it gets the related row).
            if let Phase::Related { after } = cursor.phase {
                match related_changed_sql(profile, table, cursor.since) {
                    Some((changed, changed_params)) => {
                        let filter = format!("{} AND {changed}", predicate.sql);
                        let mut params = predicate.params.clone();
                        params.extend(changed_params);
                        let (last, more) =
                            fill.read_phase(c, cursor.since, after, &filter, params)?;
                        if more {
                            has_more = true;
                            cursor.phase = Phase::Related { after: last };
                        } else {
                            cursor.phase = after_related(&mut cursor, profile, table, now);
                        }
                    }
                    None => cursor.phase = after_related(&mut cursor, profile, table, now),
                }
            }

            // Window phase: unchanged rows (`_seq <= since`) that qualify now
            // and did not at `evaluated_at`, by their own clock rules.
            if let Phase::Window { to, after } = cursor.phase {
                let then = cursor.evaluated_at.unwrap_or(to);
                let now_ctx = profile.filter_context(to);
                let then_ctx = profile.filter_context(then);
                match (
                    rules::compile_clock_rules(dialect, profile, table, &now_ctx),
                    rules::compile_clock_rules(dialect, profile, table, &then_ctx),
                ) {
                    (Some(now_p), Some(then_p)) => {
                        let filter = format!("{} AND NOT {}", now_p.sql, then_p.sql);
                        let mut params = now_p.params.clone();
                        params.extend(then_p.params.iter().cloned());
                        let (last, more) =
                            fill.read_phase(c, cursor.since, after, &filter, params)?;
                        if more {
                            has_more = true;
                            cursor.phase = Phase::Window { to, after: last };
                        } else {
                            cursor.evaluated_at = Some(to);
                            cursor.phase = Phase::Changes;
                        }
                    }
                    _ => {
                        cursor.evaluated_at = Some(to);
                        cursor.phase = Phase::Changes;
                    }
                }
            }

            let scope = format!(
                "_seq > ? AND (_seq > ? OR (_deleted = 0 AND {}))",
                predicate.sql
            );
            if cursor.phase == Phase::Changes && room == 0 {
                has_more = true;
            } else if cursor.phase == Phase::Changes {
                let selection = crate::selection::Scope {
                    dialect,
                    model: &self.cached_model().model,
                    profile,
                    ctx: &profile.filter_context(now),
                    hwm,
                    snapshot: cursor.snapshot,
                    cache: &self.selections,
                };
                let read = crate::selection::Read {
                    select_cols: &select_cols,
                    kinds: &kinds,
                };
                // The walk's rows lead the page's rows (in `_seq` order, the
                // snapshot's first) unless rows of the window phase do.
                let walk_leads = rows.is_empty();
                let walked = crate::selection::walk(
                    c,
                    &selection,
                    table,
                    &predicate,
                    &read,
                    cursor.since,
                    room,
                    &mut rows,
                )?;
                let (entries, more) = match walked {
                    Some(w) => (w.entries, w.more),
                    None => {
                        // A row at or before the snapshot is only in the
                        // result when it qualifies (the scope says so), so
                        // the select list evaluates the predicate only for
                        // later rows: every related rule's sub-query is then
                        // built once per page, not twice.
                        let sql = format!(
                            "SELECT {select_cols}, _seq,
                               CASE WHEN _seq <= ? THEN 1 WHEN _deleted = 0 AND {pred} THEN 1 ELSE 0 END
                             FROM {t} WHERE {scope} ORDER BY _seq LIMIT ?",
                            pred = predicate.sql,
                            t = quote_ident(&table.name),
                        );
                        let mut params: Vec<Value> = vec![int(cursor.snapshot)];
                        params.extend(predicate.params.iter().cloned());
                        params.push(int(cursor.since));
                        params.push(int(cursor.snapshot));
                        params.extend(predicate.params.iter().cloned());
                        params.push(int(i64::from(room) + 1));
                        let mut entries = Vec::new();
                        // The window phase's rows count toward the page's bytes.
                        let (mut more, mut bytes) = (false, page_bytes);
                        c.query_each(&sql, &params, &mut |r| {
                            if entries.len() == room as usize || bytes >= MAX_PAGE_BYTES {
                                more = true;
                                return Ok(false);
                            }
                            let seq = r.int(ncols + 1)?;
                            let entry = if r.int(ncols + 2)? == 1 {
                                Walked::Row(rows.push(r, &kinds)?)
                            } else {
                                Walked::Removed(r.text(1)?)
                            };
                            bytes += entry.approx_size();
                            entries.push((seq, entry));
                            Ok(true)
                        })?;
                        (entries, more)
                    }
                };
                let mut last_seq = cursor.since;
                let mut entries_in_snapshot = 0u64;
                let walked = entries.len() as u64;
                for (seq, entry) in entries {
                    last_seq = seq;
                    if seq <= cursor.snapshot {
                        entries_in_snapshot += 1;
                    }
                    match entry {
                        Walked::Row(_) => {
                            if walk_leads && seq <= cursor.snapshot {
                                snapshot_rows += 1;
                            }
                        }
                        Walked::Removed(id) => removed.push(id),
                    }
                }
                if let Some(t) = total.as_mut() {
                    *t += walked;
                    if more {
                        *t += estimate_rest(
                            c,
                            &table.name,
                            cursor.since,
                            cursor.snapshot,
                            last_seq,
                            entries_in_snapshot,
                        )?;
                    }
                }
                if more {
                    has_more = true;
                    cursor.since = last_seq;
                } else {
                    cursor.since = hwm.max(cursor.since);
                    cursor.phase = Phase::Rest;
                }
            }
            let mut columns = vec![VERSION_COLUMN.to_owned()];
            columns.extend(table.columns.iter().map(|c| c.name.clone()));
            let head = PullPage {
                table: table.name.clone(),
                profile_version,
                cursor: cursor.encode(),
                has_more,
                total,
                snapshot_rows,
                columns,
                rows: Vec::new(),
                removed: Vec::new(),
            };
            Ok(PageOut {
                json: rows.page_json(&head, &removed)?,
                rows: rows.len(),
                removed: removed.len(),
                head,
            })
        })
    }

    /// The entries a pull of `table` from `cursor` would send, counted
    /// exactly for the progress of a download (`POST /v1/sync/counts`):
    /// the rows the rules select at or before the cursor's snapshot (every
    /// live selected row for the empty cursor), every row changed after it,
    /// and the rows a due relative-date window lets in. `None` for a cursor
    /// this server did not issue. It evaluates the rules on every row of
    /// the table once, as the download's walk does (the cost is in
    /// `docs/performance.md`); the pages' own `total` stays an estimate.
    pub fn count_entries(
        &self,
        profile: &SyncProfile,
        table: &SyncTable,
        cursor: &str,
    ) -> StoreResult<Option<u64>> {
        let Some(parsed) = Cursor::parse(cursor) else {
            return Ok(None);
        };
        let now = self.clock.now_ms();
        let dialect = self.dialect();
        let ctx = profile.filter_context(now);
        let predicate = rules::compile_in(dialect, profile, table, &ctx);
        let t = quote_ident(&table.name);
        self.read(|c| {
            let count = |c: &mut dyn Conn, sql: &str, params: &[Value]| -> StoreResult<u64> {
                Ok(c.query_one(sql, params)?.i64(0)?.max(0) as u64)
            };
            let Some(cur) = parsed else {
                return count(
                    c,
                    &format!("SELECT COUNT(*) FROM {t} WHERE _deleted = 0 AND {}", predicate.sql),
                    &predicate.params,
                )
                .map(Some);
            };
            let mut params = vec![int(cur.since), int(cur.snapshot)];
            params.extend(predicate.params.iter().cloned());
            let mut n = count(
                c,
                &format!(
                    "SELECT COUNT(*) FROM {t} WHERE _seq > ? AND (_seq > ? OR (_deleted = 0 AND {}))",
                    predicate.sql
                ),
                &params,
            )?;
            let related_after = match cur.phase {
                Phase::Rest if related_tables_changed(c, table, cur.since)? => Some(0),
                Phase::Related { after } => Some(after),
                _ => None,
            };
            if let Some(after) = related_after
                && let Some((changed, changed_params)) =
                    related_changed_sql(profile, table, cur.since)
            {
                let mut params = vec![int(cur.since), int(after)];
                params.extend(predicate.params.iter().cloned());
                params.extend(changed_params);
                n += count(
                    c,
                    &format!(
                        "SELECT COUNT(*) FROM {t} WHERE _deleted = 0 AND _seq <= ? AND _seq > ? AND {} AND {changed}",
                        predicate.sql
                    ),
                    &params,
                )?;
            }
            let window = match cur.phase {
                Phase::Rest | Phase::Related { .. } if cur.window_due(profile, table, now) => {
                    Some((now, 0))
                }
                Phase::Window { to, after } => Some((to, after)),
                _ => None,
            };
            if let Some((to, after)) = window {
                let then = cur.evaluated_at.unwrap_or(to);
                if let (Some(now_p), Some(then_p)) = (
                    rules::compile_clock_rules(dialect, profile, table, &profile.filter_context(to)),
                    rules::compile_clock_rules(dialect, profile, table, &profile.filter_context(then)),
                ) {
                    let mut params = vec![int(cur.since), int(after)];
                    params.extend(now_p.params.iter().cloned());
                    params.extend(then_p.params.iter().cloned());
                    n += count(
                        c,
                        &format!(
                            "SELECT COUNT(*) FROM {t} WHERE _deleted = 0 AND _seq <= ? AND _seq > ? AND {} AND NOT {}",
                            now_p.sql, then_p.sql
                        ),
                        &params,
                    )?;
                }
            }
            Ok(Some(n))
        })
    }

    /// Per table of `cursors` in the profile, the exact number of entries a
    /// pull from that cursor sends ([`Db::count_entries`]); tables outside
    /// the profile and cursors the server did not issue are left out.
    pub fn count_tables(
        &self,
        profile: &SyncProfile,
        cursors: &BTreeMap<String, String>,
    ) -> StoreResult<BTreeMap<String, u64>> {
        let mut tables = BTreeMap::new();
        for (name, cursor) in cursors {
            let Some(table) = profile.table(name) else {
                continue;
            };
            if let Some(n) = self.count_entries(profile, table, cursor)? {
                tables.insert(name.clone(), n);
            }
        }
        Ok(tables)
    }

    /// Per table of `cursors` in the profile, whether a pull from that
    /// cursor may send anything: one indexed `EXISTS (... WHERE _seq > ?)`
    /// per table (and per related table its filter reads). A cursor the
    /// server did not issue, a table still in its first download, or a
    /// relative-date window due answers `true`.
    pub fn tables_changed(
        &self,
        profile: &SyncProfile,
        cursors: &BTreeMap<String, String>,
    ) -> StoreResult<BTreeMap<String, bool>> {
        let now = self.now_ms();
        self.read(|c| {
            let mut tables = BTreeMap::new();
            for (name, cursor) in cursors {
                let Some(table) = profile.table(name) else {
                    continue;
                };
                // Rows that entered a relative-date window changed nothing,
                // but the next pull sends them (its window phase; a window
                // under way keeps the earlier `evaluated_at`, so it answers
                // `true` here too until it is done).
                let changed = match Cursor::parse(cursor) {
                    Some(Some(cur)) if cur.window_due(profile, table, now) => true,
                    Some(Some(cur)) if cur.since >= cur.snapshot => {
                        let sql = format!(
                            "SELECT EXISTS (SELECT 1 FROM {} WHERE _seq > ?)",
                            quote_ident(name)
                        );
                        // A table whose filter reads related rows changes
                        // with them (its related phase may send rows).
                        c.query_one(&sql, &[Value::Integer(cur.since)])?.bool(0)?
                            || related_tables_changed(c, table, cur.since)?
                    }
                    _ => true,
                };
                tables.insert(name.clone(), changed);
            }
            Ok(tables)
        })
    }
}

/// Where the rows of a pull phase go: the page's rows, their columns, the
/// bytes and the room the page has left, and the total the device asked for.
struct PageFill<'a> {
    table: &'a str,
    select_cols: &'a str,
    ncols: usize,
    kinds: &'a [ColumnKind],
    rows: &'a mut PageRows,
    bytes: &'a mut usize,
    room: &'a mut u32,
    total: Option<&'a mut u64>,
}

impl PageFill<'_> {
    /// Reads the rows of a phase that sends unchanged rows (related,
    /// window): live rows with `after < _seq <= since` that pass `filter`, in
    /// `_seq` order. Counts them into the total when the device asked for
    /// it, then reads as many as the page's room and byte budget take.
    /// Answers the `_seq` of the last row read (`after` when none) and
    /// whether rows remain for the next page.
    fn read_phase(
        &mut self,
        c: &mut dyn Conn,
        since: i64,
        after: i64,
        filter: &str,
        filter_params: Vec<Value>,
    ) -> StoreResult<(i64, bool)> {
        let t = quote_ident(self.table);
        let scope = format!("_deleted = 0 AND _seq <= ? AND _seq > ? AND {filter}");
        let mut params = vec![int(since), int(after)];
        params.extend(filter_params);
        if let Some(total) = self.total.as_mut() {
            let n = c
                .query_one(&format!("SELECT COUNT(*) FROM {t} WHERE {scope}"), &params)?
                .i64(0)?;
            **total += n.max(0) as u64;
        }
        let sql = format!(
            "SELECT {}, _seq FROM {t} WHERE {scope} ORDER BY _seq LIMIT ?",
            self.select_cols
        );
        let room = *self.room;
        params.push(int(i64::from(room) + 1));
        let mut last = after;
        let (mut read, mut more) = (0u32, false);
        let (rows, bytes, kinds, ncols) =
            (&mut *self.rows, &mut *self.bytes, self.kinds, self.ncols);
        c.query_each(&sql, &params, &mut |r| {
            if read == room || *bytes >= MAX_PAGE_BYTES {
                more = true;
                return Ok(false);
            }
            read += 1;
            last = r.int(ncols + 1)?;
            *bytes += rows.push(r, kinds)?.size;
            Ok(true)
        })?;
        *self.room -= read;
        Ok((last, more))
    }
}
