//! The first download of a table from the values its related-rows rules
//! select, kept between pages.
//!
//! A pull walks the table in change order (`_seq`). Rows at or before the
//! download's snapshot are sent when the rules select them, and for a
//! related-rows rule that costs one or two index lookups per walked row,
//! through every table of the chain (a service task reaches its work order,
//! which needs one of the technician's bookings): the same work orders are
//! looked up again for the incidents, the products, the services and the
//! tasks, page after page. Here each related rule's side is computed once
//! instead: the set of `foreign_column` values of the related table's live,
//! selected rows ([`SelectionCache`]), built by reading that table's few
//! columns once, and a walked row is selected when its own rules hold or its
//! column's value is in a set. The walk reads each row once, with its
//! rules' columns, and copies the values of the selected ones only.
//!
//! Only the walk of rows at or before the snapshot uses the sets. They are
//! evaluated on the database as it was at some moment after the download's
//! snapshot (a set is used only when it was built at or after it), which is
//! what the page-by-page walk gives too: each page evaluates the rules when
//! it is read, and related rows that change later reach the device through
//! its own settling (`docs/protocol.md` §6). Rows changed after the snapshot
//! are decided by the compiled rules, as before.
//!
//! A set is derived state of the database, like a query plan's cache: an
//! instance that lacks one builds it, so several instances still serve one
//! database. The sets are bounded in bytes; a set too large for its share,
//! one that would cost more rows to build than the walk it replaces, or one
//! evicted for room while its download goes on, is not built, and the walk
//! evaluates the compiled rules instead.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use fieldsync_protocol::Value;
use fieldsync_protocol::filter::FilterContext;
use fieldsync_protocol::profile::{
    ColumnKind, DataModel, RowRule, SyncProfile, SyncTable, quote_ident,
};
use fieldsync_protocol::protocol::MAX_PAGE_BYTES;

use crate::page::{PageRows, RowAt};
use crate::rules;
use crate::sql::{Cell, Cells, Conn, Dialect};
use crate::store_error::StoreResult;

/// Bytes all kept sets may take by default, estimated (see [`KeySet`]);
/// `fieldsync server --selection-cache-mib` sets it. One set may take a
/// quarter of it; a larger one is not built.
pub const DEFAULT_CACHE_BYTES: usize = 64 << 20;

/// Keys of evicted sets remembered at most (see `SelectionCache::evicted_for`).
const EVICTED_KEPT: usize = 4_096;

/// Rows one statement of a walk reads at most.
const CHUNK_ROWS: i64 = 20_000;

/// A set is built only if it reads at most this many rows per row of the
/// walk it serves (plus [`BUILD_ROWS_SPARE`]): a row read for a set costs
/// about a tenth of a row walked with its rules' lookups (at 1M device rows:
/// 476k incidents walked with their work order's and booking's lookups in
/// 1.2-1.4 s, 476k rows of a table's few columns read in 0.2 s).
const BUILD_ROWS_PER_WALKED_ROW: u64 = 10;

/// Rows a set may read however small the walk.
const BUILD_ROWS_SPARE: u64 = 20_000;

/// How a column's values are matched, or `None` when this module does not
/// match them (reals: the walk evaluates the compiled rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Int,
    Text,
}

fn key_kind(kind: ColumnKind) -> Option<KeyKind> {
    match kind {
        ColumnKind::Text
        | ColumnKind::Date
        | ColumnKind::DateTime
        | ColumnKind::Json
        | ColumnKind::Choice => Some(KeyKind::Text),
        ColumnKind::Integer | ColumnKind::Boolean => Some(KeyKind::Int),
        ColumnKind::Real => None,
    }
}

/// The selected values of one table's column: integers, or text compared
/// byte for byte, which SQL `=` matches exactly when they are equal here
/// (text columns compare as binary on SQLite and in the "C" collation on
/// PostgreSQL).
#[derive(Debug, Default)]
pub struct KeySet {
    // A walk looks every row up: foldhash, seeded per process, hashes a
    // short key several times faster than the standard SipHash.
    ints: HashSet<i64, foldhash::fast::RandomState>,
    texts: HashSet<Box<str>, foldhash::fast::RandomState>,
    /// Estimated bytes: each key, its text, the table's slot and control
    /// byte.
    bytes: usize,
}

/// A value looked up in (or added to) a [`KeySet`], borrowed.
enum Probe<'a> {
    Int(i64),
    Text(&'a str),
}

/// A stored value of a column matched as `kind`: `Ok(None)` for NULL (which
/// matches nothing), `Err(())` for a value of another type than its
/// column's, which this module cannot match as SQL would.
fn probe<'a>(c: &'a Cell<'_>, kind: KeyKind) -> Result<Option<Probe<'a>>, ()> {
    match (c, kind) {
        (Cell::Null, _) => Ok(None),
        (Cell::Int(n), KeyKind::Int) => Ok(Some(Probe::Int(*n))),
        (Cell::Bool(b), KeyKind::Int) => Ok(Some(Probe::Int(i64::from(*b)))),
        (Cell::Text(t), KeyKind::Text) => Ok(Some(Probe::Text(t))),
        _ => Err(()),
    }
}

impl KeySet {
    fn contains(&self, p: &Probe<'_>) -> bool {
        match p {
            Probe::Int(n) => self.ints.contains(n),
            Probe::Text(t) => self.texts.contains(*t),
        }
    }

    fn insert(&mut self, p: &Probe<'_>) {
        let added = match p {
            Probe::Int(n) => self.ints.insert(*n).then_some(0),
            Probe::Text(t) if self.texts.contains(*t) => None,
            Probe::Text(t) => {
                self.texts.insert((*t).into());
                Some(t.len() + std::mem::size_of::<Box<str>>())
            }
        };
        if let Some(extra) = added {
            self.bytes += 16 + extra;
        }
    }

    /// How many values the set holds.
    pub fn len(&self) -> usize {
        self.ints.len() + self.texts.len()
    }

    /// Whether the set holds no value.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

struct Entry {
    /// The change log's high-water mark the set was built at.
    hwm: i64,
    set: Arc<KeySet>,
    used: u64,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    bytes: usize,
    tick: u64,
    builds: u64,
    hits: u64,
    misses: u64,
    /// Sets evicted for room, with the high-water mark each was built at.
    evicted: HashMap<String, i64>,
}

/// Selected-value sets, least recently used evicted first.
pub struct SelectionCache {
    inner: Mutex<Inner>,
    /// Bytes all sets may take; 0 keeps none (every walk evaluates the
    /// compiled rules).
    capacity: usize,
    /// Rows a set may read however small the walk ([`BUILD_ROWS_SPARE`]).
    build_spare: u64,
}

impl Default for SelectionCache {
    fn default() -> Self {
        Self::new(DEFAULT_CACHE_BYTES)
    }
}

impl SelectionCache {
    /// A cache of at most `capacity` bytes of sets; 0 keeps none.
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::default(),
            capacity,
            build_spare: BUILD_ROWS_SPARE,
        }
    }

    /// Bytes one set may take.
    fn set_bytes(&self) -> usize {
        self.capacity / 4
    }

    /// Whether a set under `key` that a download of `snapshot` could use
    /// was evicted for room. Building it again would likely be undone
    /// before the download's next page: the download walks with the
    /// compiled rules instead, as without the sets.
    fn evicted_for(&self, key: &str, snapshot: i64) -> bool {
        self.lock()
            .evicted
            .get(key)
            .is_some_and(|hwm| *hwm >= snapshot)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The set under `key` if it was built at or after `snapshot`.
    fn get(&self, key: &str, snapshot: i64) -> Option<Arc<KeySet>> {
        let mut inner = self.lock();
        inner.tick += 1;
        let tick = inner.tick;
        let found = match inner.entries.get_mut(key).filter(|e| e.hwm >= snapshot) {
            Some(entry) => {
                entry.used = tick;
                Some(entry.set.clone())
            }
            None => None,
        };
        if found.is_some() {
            inner.hits += 1;
        } else {
            inner.misses += 1;
        }
        found
    }

    fn put(&self, key: String, hwm: i64, set: Arc<KeySet>) {
        let bytes = set.bytes;
        let mut inner = self.lock();
        inner.builds += 1;
        if let Some(old) = inner.entries.remove(&key) {
            inner.bytes -= old.set.bytes;
        }
        inner.evicted.remove(&key);
        while inner.bytes + bytes > self.capacity {
            let Some(oldest) = inner
                .entries
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(e) = inner.entries.remove(&oldest) {
                inner.bytes -= e.set.bytes;
                if inner.evicted.len() >= EVICTED_KEPT {
                    inner.evicted.clear();
                }
                inner.evicted.insert(oldest, e.hwm);
            }
        }
        inner.tick += 1;
        let used = inner.tick;
        inner.bytes += bytes;
        inner.entries.insert(key, Entry { hwm, set, used });
    }

    /// Bytes the kept sets take, estimated.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// How many sets are kept.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether no set is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many sets were built since start (one read of a table builds
    /// every set of it the profile reads).
    pub fn builds(&self) -> u64 {
        self.lock().builds
    }

    /// Lookups answered from a kept set, and lookups that found none, since
    /// start.
    pub fn lookups(&self) -> (u64, u64) {
        let inner = self.lock();
        (inner.hits, inner.misses)
    }

    /// A cache whose builds may read only `spare` rows besides their share
    /// of the walk (tests of the budget).
    #[cfg(test)]
    pub(crate) fn with_build_spare(spare: u64) -> Self {
        Self {
            build_spare: spare,
            ..Self::default()
        }
    }
}

/// What one pull page needs to find its sets.
pub struct Scope<'a> {
    pub dialect: Dialect,
    pub model: &'a DataModel,
    pub profile: &'a SyncProfile,
    pub ctx: &'a FilterContext,
    /// The change log's high-water mark in the page's read snapshot.
    pub hwm: i64,
    /// The download's snapshot: sets built before it are not used.
    pub snapshot: i64,
    pub cache: &'a SelectionCache,
}

/// Decides a table's rules for a row from the columns the walk read: its
/// own rules' flag, then each related rule's column against its set.
struct Matcher {
    /// The table's rules that read no other table, if any.
    own: Option<rules::SqlPredicate>,
    /// Each related rule: its column (quoted), how it is matched, its set.
    related: Vec<(String, KeyKind, Arc<KeySet>)>,
}

impl Matcher {
    /// The select-list items, the own rules' flag last (`CASE WHEN <own
    /// rules> THEN 1 ELSE 0 END`, or `0`); its parameters are
    /// [`Matcher::own_params`].
    fn columns(&self) -> String {
        let mut cols: Vec<String> = self.related.iter().map(|(c, _, _)| c.clone()).collect();
        cols.push(match &self.own {
            Some(p) => format!("CASE WHEN {} THEN 1 ELSE 0 END", p.sql),
            None => "0".to_owned(),
        });
        cols.join(", ")
    }

    fn own_params(&self) -> Vec<Value> {
        self.own
            .as_ref()
            .map(|p| p.params.clone())
            .unwrap_or_default()
    }

    fn width(&self) -> usize {
        self.related.len() + 1
    }

    /// Whether the row's columns at `at..at + width()` select it; `None`
    /// for a value this module cannot match.
    fn selects(&self, r: &dyn Cells, at: usize) -> StoreResult<Option<bool>> {
        if r.int(at + self.related.len())? == 1 {
            return Ok(Some(true));
        }
        for (i, (_, kind, set)) in self.related.iter().enumerate() {
            let cell = r.cell(at + i)?;
            match probe(&cell, *kind) {
                Ok(Some(p)) if set.contains(&p) => return Ok(Some(true)),
                Ok(_) => {}
                Err(()) => return Ok(None),
            }
        }
        Ok(Some(false))
    }
}

/// Builds sets within a budget of rows read.
struct Builder<'s, 'a> {
    scope: &'s Scope<'a>,
    /// Rows the builds of this page may still read; computed at the first
    /// set not found in the cache.
    rows_left: Option<u64>,
    /// Rows the walk would read (at or before the snapshot).
    walk_rows: &'s dyn Fn(&mut dyn Conn) -> StoreResult<u64>,
}

impl Builder<'_, '_> {
    /// The matcher of `table`'s rules, or `None` when some rule is not
    /// matched here (its columns' kinds, a set over budget).
    fn matcher(
        &mut self,
        c: &mut dyn Conn,
        table: &SyncTable,
        depth: usize,
    ) -> StoreResult<Option<Matcher>> {
        let s = self.scope;
        let own = rules::compile_own_in(s.dialect, s.profile, table, s.ctx);
        let mut related = Vec::new();
        for rule in &table.rules {
            let RowRule::Related {
                table: other,
                column,
                foreign_column,
            } = rule
            else {
                continue;
            };
            // As the compiled rules: a related table outside the profile,
            // or past the depth bound, selects nothing.
            let Some(other_table) = s.profile.table(other).filter(|_| depth < rules::MAX_DEPTH)
            else {
                continue;
            };
            let kinds = (
                self.kind(&table.name, column),
                self.kind(other, foreign_column),
            );
            let kind = match kinds {
                (Some(a), Some(b)) if a == b => a,
                _ => return Ok(None),
            };
            let Some(set) = self.set(c, other_table, foreign_column, kind, depth + 1)? else {
                return Ok(None);
            };
            related.push((quote_ident(column), kind, set));
        }
        Ok(Some(Matcher { own, related }))
    }

    fn kind(&self, table: &str, column: &str) -> Option<KeyKind> {
        key_kind(self.scope.model.table(table)?.column(column)?.kind)
    }

    /// The values of `column` over `table`'s live rows that its rules
    /// select, from the cache or built now; `None` when not built. A build
    /// reads the table once for every column of it that a related rule of
    /// the profile reads (a work order's id, account and asset).
    fn set(
        &mut self,
        c: &mut dyn Conn,
        table: &SyncTable,
        column: &str,
        kind: KeyKind,
        depth: usize,
    ) -> StoreResult<Option<Arc<KeySet>>> {
        let s = self.scope;
        // The compiled rules name the set: the same table, column, rules,
        // user, team and day give the same set for the same database.
        let pred = rules::compile_in(s.dialect, s.profile, table, s.ctx);
        let key_of = |column: &str| {
            format!(
                "{}\u{0}{}\u{0}{}\u{0}{:?}",
                table.name, column, pred.sql, pred.params
            )
        };
        if let Some(set) = s.cache.get(&key_of(column), s.snapshot) {
            return Ok(Some(set));
        }
        if s.cache.evicted_for(&key_of(column), s.snapshot) {
            return Ok(None);
        }
        if self.rows_left.is_none() {
            let walk = (self.walk_rows)(c)?;
            self.rows_left = Some(
                walk.saturating_mul(BUILD_ROWS_PER_WALKED_ROW)
                    .saturating_add(s.cache.build_spare),
            );
        }
        let Some(matcher) = self.matcher(c, table, depth)? else {
            return Ok(None);
        };
        // This column first, then the others the profile's rules read.
        let mut columns = vec![(column.to_owned(), kind)];
        for t in &s.profile.tables {
            for rule in &t.rules {
                if let RowRule::Related {
                    table: other,
                    foreign_column,
                    ..
                } = rule
                    && *other == table.name
                    && !columns.iter().any(|(c, _)| c == foreign_column)
                    && let Some(k) = self.kind(other, foreign_column)
                {
                    columns.push((foreign_column.clone(), k));
                }
            }
        }
        // The table's live rows, counted no further than the budget: an
        // index's entries, cheaper than the scan they spare when over it.
        let left = self.rows_left.unwrap_or(0);
        let live = c
            .query_one(
                &format!(
                    "SELECT COUNT(*) FROM (SELECT 1 FROM {} WHERE _deleted = 0 LIMIT ?) AS live",
                    quote_ident(&table.name)
                ),
                &[Value::Integer(
                    i64::try_from(left).unwrap_or(i64::MAX).saturating_add(1),
                )],
            )?
            .i64(0)?
            .max(0) as u64;
        if live > left {
            return Ok(None);
        }
        self.rows_left = Some(left - live);
        // One statement over the whole table, read a row at a time. When the
        // table's rules read no other table they are the statement's
        // condition, and its index may answer them.
        let own_where = matcher.own.as_ref().filter(|_| matcher.related.is_empty());
        let sql = format!(
            "SELECT {cols}, {m} FROM {t} WHERE _deleted = 0{own}",
            cols = columns
                .iter()
                .map(|(c, _)| quote_ident(c))
                .collect::<Vec<_>>()
                .join(", "),
            m = matcher.columns(),
            t = quote_ident(&table.name),
            own = match own_where {
                Some(p) => format!(" AND {}", p.sql),
                None => String::new(),
            },
        );
        let mut params = matcher.own_params();
        if let Some(p) = own_where {
            params.extend(p.params.iter().cloned());
        }
        // A set that outgrows its bytes, or meets a value of another type
        // than its column's, is dropped; the scan stops when none is left.
        let mut sets: Vec<Option<KeySet>> =
            columns.iter().map(|_| Some(KeySet::default())).collect();
        let mut unmatched = false;
        c.query_each(&sql, &params, &mut |r| {
            match matcher.selects(r, columns.len())? {
                Some(true) => {}
                Some(false) => return Ok(true),
                None => {
                    unmatched = true;
                    return Ok(false);
                }
            }
            for (i, (_, kind)) in columns.iter().enumerate() {
                let Some(set) = sets[i].as_mut() else {
                    continue;
                };
                let cell = r.cell(i)?;
                match probe(&cell, *kind) {
                    Ok(Some(p)) => set.insert(&p),
                    Ok(None) => {}
                    Err(()) => sets[i] = None,
                }
                if sets[i]
                    .as_ref()
                    .is_some_and(|set| set.bytes > s.cache.set_bytes())
                {
                    sets[i] = None;
                }
            }
            Ok(sets.iter().any(Option::is_some))
        })?;
        if unmatched {
            return Ok(None);
        }
        // The first column is the one asked for: `None` if it was dropped.
        let mut wanted = None;
        for (i, ((column, _), set)) in columns.iter().zip(sets).enumerate() {
            let Some(set) = set else {
                continue;
            };
            let set = Arc::new(set);
            if i == 0 {
                wanted = Some(set.clone());
            }
            s.cache.put(key_of(column), s.hwm, set);
        }
        Ok(wanted)
    }
}

/// One entry of a pull page.
pub enum Walked {
    /// A row to send, written to the page's rows (`_version`, then the
    /// table's columns).
    Row(RowAt),
    /// A row changed after the snapshot that the rules no longer select:
    /// its key, for `removed`.
    Removed(String),
}

impl Walked {
    /// Bytes the entry adds to a page, roughly (see
    /// [`fieldsync_protocol::protocol::MAX_PAGE_BYTES`]).
    pub fn approx_size(&self) -> usize {
        match self {
            Walked::Row(row) => row.size,
            Walked::Removed(key) => key.len() + 2,
        }
    }
}

/// A page's entries in change order, with each one's `_seq`; `more` when an
/// entry follows them.
pub struct Walk {
    pub entries: Vec<(i64, Walked)>,
    pub more: bool,
}

/// How the walk reads a row: the select list's first items, and the
/// kinds of the table's columns a selected row is written with
/// ([`PageRows::push`]).
pub struct Read<'a> {
    /// `_version` and the table's columns, primary key first.
    pub select_cols: &'a str,
    /// The kinds of the table's columns (the items after `_version`).
    pub kinds: &'a [ColumnKind],
}

/// Walks `table` after `since` for at most `room` entries, fewer once they
/// pass [`MAX_PAGE_BYTES`]: rows at or before `scope.snapshot` that are
/// live and selected, and every row after it (a row when `predicate`
/// selects it, else removed). `None` when the
/// table has no related-rows rule or a set is not available: the caller
/// evaluates the compiled rules instead. The selected rows are written to
/// `out` (and none when the answer is `None`).
#[allow(clippy::too_many_arguments)]
pub fn walk(
    c: &mut dyn Conn,
    scope: &Scope<'_>,
    table: &SyncTable,
    predicate: &rules::SqlPredicate,
    read: &Read<'_>,
    since: i64,
    room: u32,
    out: &mut PageRows,
) -> StoreResult<Option<Walk>> {
    if since >= scope.snapshot
        || scope.cache.capacity == 0
        || !table
            .rules
            .iter()
            .any(|r| matches!(r, RowRule::Related { .. }))
    {
        return Ok(None);
    }
    let t = quote_ident(&table.name);
    let walk_rows = |c: &mut dyn Conn| -> StoreResult<u64> {
        crate::schema::count_seq(c, &table.name, since, Some(scope.snapshot))
    };
    let mut builder = Builder {
        scope,
        rows_left: None,
        walk_rows: &walk_rows,
    };
    let Some(matcher) = builder.matcher(c, table, 0)? else {
        return Ok(None);
    };
    // The whole row is read with its flags and rules' columns (a second
    // read of the selected rows by key cost more than it saved); only a
    // selected row's values are copied out of it. Rows after the snapshot
    // are decided by the compiled rules, which the `CASE` evaluates for
    // them only.
    let sql = format!(
        "SELECT {cols}, _seq, _deleted, {m},
                CASE WHEN _seq <= ? THEN 0 WHEN _deleted = 0 AND {pred} THEN 1 ELSE 0 END
         FROM {t} WHERE _seq > ? ORDER BY _seq LIMIT ?",
        cols = read.select_cols,
        m = matcher.columns(),
        pred = predicate.sql,
    );
    let seq_at = read.kinds.len() + 1;
    let start = out.mark();
    let later_at = seq_at + 2 + matcher.width();
    let want = room as usize + 1;
    // A chunk of about four times the entries wanted: a technician's rows
    // are about one in 3.5 of a table in the reference data.
    let limit = CHUNK_ROWS.min(want as i64 * 4).max(1_000);
    let mut entries = Vec::new();
    let mut bytes = 0usize;
    let mut full = false;
    let mut after = since;
    let mut matched = true;
    loop {
        let mut params = matcher.own_params();
        params.push(Value::Integer(scope.snapshot));
        params.extend(predicate.params.iter().cloned());
        params.push(Value::Integer(after));
        params.push(Value::Integer(limit));
        let mut rows = 0i64;
        c.query_each(&sql, &params, &mut |r| {
            if bytes >= MAX_PAGE_BYTES {
                full = true;
                return Ok(false);
            }
            rows += 1;
            let seq = r.int(seq_at)?;
            after = seq;
            let entry = if seq > scope.snapshot {
                if r.int(later_at)? == 1 {
                    Walked::Row(out.push(r, read.kinds)?)
                } else {
                    Walked::Removed(r.text(1)?)
                }
            } else if r.int(seq_at + 1)? != 0 {
                return Ok(true);
            } else {
                match matcher.selects(r, seq_at + 2)? {
                    Some(true) => Walked::Row(out.push(r, read.kinds)?),
                    Some(false) => return Ok(true),
                    None => {
                        matched = false;
                        return Ok(false);
                    }
                }
            };
            bytes += entry.approx_size();
            entries.push((seq, entry));
            Ok(entries.len() < want)
        })?;
        if !matched {
            out.back_to(start);
            return Ok(None);
        }
        if full || entries.len() == want || rows < limit {
            break;
        }
    }
    let more = full || entries.len() == want;
    // The entry read past the room only says that more follow.
    if entries.len() > room as usize
        && let Some((_, Walked::Row(extra))) = entries.last()
    {
        out.back_to(*extra);
    }
    entries.truncate(room as usize);
    Ok(Some(Walk { entries, more }))
}

#[cfg(test)]
mod tests;
