//! Settling (C4), incrementally: which related rows to fetch, and which
//! local rows the offline profile no longer reaches.
//!
//! A sync used to evaluate every local row after its pulls and to compare
//! every related value with the set it had settled last time: O(rows) per
//! sync, seconds at a million rows, whatever the number of changes. Here a
//! sync only looks at what changed since the last settled run:
//!
//! - `_fs_related_pending (rule, value)`: related values whose rows must be
//!   fetched (`POST /v1/sync/fetch`), queued as rows arrive or are written
//!   (see [`RelatedQueue`] for when); a value leaves the queue when its
//!   fetch is applied, or when no local row holds it any more.
//! - `_fs_settle_rows (tbl, row_id)`: rows to evaluate again. Rows written
//!   by an incremental pull or a fetch are listed by the page apply when
//!   they are new to the device or a column their table's rules read
//!   changed (a row rewritten with the same values there was reached at the
//!   last settling and stays reached: the rest of what its evaluation reads
//!   is tracked below), and a trigger on `_fs_outbox` lists a row whose
//!   pending change leaves (a row with a pending change is never removed,
//!   so it is checked when it stops being pending).
//! - `_fs_settle_lost (tbl, col, value)`: related values a table lost.
//!   Triggers (one pair per related table and column a rule reads, installed
//!   with the profile) record the old value of every deleted row and of
//!   every update that changes the column. The rows of the tables that
//!   depend on a lost value, which the related table no longer holds, are
//!   evaluated again; removing them records their own lost values, so the
//!   removal cascades in dependency order within one pass.
//! - `_fs_tables.settle_all`: evaluate every row of the table (a table being
//!   downloaded from scratch, or after a profile change or an upgrade).
//!   Tables whose filters read the clock are evaluated whole when the local
//!   day changed since the last settled run (`_fs_meta.settle_day`): relative
//!   dates move by whole days.
//!
//! Inserts fire no trigger, so a bulk download pays nothing for this.
//! Indexes on the columns related rules compare (`incidents.work_order_id`,
//! `bookings.work_order_id`) are created the first time an incremental pass
//! needs them, after the bulk load, where building them is a sort.

use std::collections::{BTreeMap, BTreeSet};

use rusqlite::{Connection, OptionalExtension, params};

use super::{
    LOCAL_VERSION_COLUMN, delete_row, distinct_keys, has_pending, meta_value, put_meta,
    related_only_sql, related_rule_key, remove_unreached_rows, rule_columns, rule_columns_sql,
    rule_row, stored_profile, text_like, unreached_rows, value_key,
};
use crate::error::Result;
use crate::filter::{Cond, FilterContext};
use crate::profile::{RelatedRule, RowRule, SyncProfile, SyncTable, quote_ident};
use crate::protocol::VERSION_COLUMN;
use crate::value::Value;

/// The settle state tables, created with the store.
pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS _fs_related_pending (
    rule TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (rule, value)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS _fs_settle_rows (
    tbl TEXT NOT NULL,
    row_id TEXT NOT NULL,
    PRIMARY KEY (tbl, row_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS _fs_settle_lost (
    tbl TEXT NOT NULL,
    col TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (tbl, col, value)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS _fs_outbox_settle AFTER DELETE ON _fs_outbox BEGIN
    INSERT OR IGNORE INTO _fs_settle_rows (tbl, row_id) VALUES (old.tbl, old.row_id);
END;
"#;

const TRIGGER_PREFIX: &str = "_fs_lost_";

/// The key of a related-rows rule in `_fs_related_pending`.
fn rule_key(r: &RelatedRule<'_>) -> String {
    related_rule_key(&r.table.name, r.column, r.other, r.foreign_column)
}

/// The (related table, column) pairs the profile's related-rows rules read.
fn related_sources(profile: &SyncProfile) -> BTreeSet<(String, String)> {
    profile
        .related_rules()
        .filter(|r| {
            profile
                .table(r.other)
                .is_some_and(|o| o.column(r.foreign_column).is_some())
        })
        .map(|r| (r.other.to_owned(), r.foreign_column.to_owned()))
        .collect()
}

const INDEX_PREFIX: &str = "_fs_ix_";

/// Names of the schema objects of `kind` whose name starts with `prefix`,
/// on `table` when given.
fn object_names(
    conn: &Connection,
    kind: &str,
    prefix: &str,
    table: Option<&str>,
) -> Result<Vec<String>> {
    let mut stmt = conn.prepare(
        "SELECT name FROM sqlite_master WHERE type = ?1 AND substr(name, 1, length(?2)) = ?2
           AND (?3 IS NULL OR tbl_name = ?3)",
    )?;
    let rows = stmt.query_map(params![kind, prefix, table], |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Drops the schema objects `object_names` lists (`kind` is `trigger` or
/// `index`).
fn drop_objects(conn: &Connection, kind: &str, prefix: &str, table: Option<&str>) -> Result<()> {
    for name in object_names(conn, kind, prefix, table)? {
        conn.execute_batch(&format!("DROP {kind} IF EXISTS {}", quote_ident(&name)))?;
    }
    Ok(())
}

/// Drops the lost-value triggers (before columns are altered or tables
/// dropped; [`install_triggers`] puts them back).
pub(super) fn drop_triggers(conn: &Connection) -> Result<()> {
    drop_objects(conn, "trigger", TRIGGER_PREFIX, None)
}

/// The lost-value triggers for `profile`: (name, `CREATE TRIGGER` text).
/// Identifiers are checked profile names (`[a-z0-9_]`), quoted here.
///
/// The insert skips a value already recorded with `WHERE NOT EXISTS`, not
/// with `INSERT OR IGNORE`: SQLite replaces the conflict policy of a
/// trigger's statements with the one of the statement that fired it, and a
/// pulled row is written by an upsert (`ON CONFLICT DO UPDATE`), under which
/// `OR IGNORE` does not hold. A value lost twice before the next settling (a
/// booking deleted, another one moved off the same work order) made the
/// page fail on the table's primary key, and every sync after it.
fn trigger_sqls(profile: &SyncProfile) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (i, (table, column)) in related_sources(profile).iter().enumerate() {
        let (t, c) = (quote_ident(table), quote_ident(column));
        let insert = format!(
            "INSERT INTO _fs_settle_lost (tbl, col, value) \
             SELECT '{table}', '{column}', CAST(old.{c} AS TEXT) \
             WHERE NOT EXISTS (SELECT 1 FROM _fs_settle_lost \
             WHERE tbl = '{table}' AND col = '{column}' AND value = CAST(old.{c} AS TEXT));"
        );
        let (name_d, name_u) = (
            format!("{TRIGGER_PREFIX}{i}_d"),
            format!("{TRIGGER_PREFIX}{i}_u"),
        );
        out.push((
            name_d.clone(),
            format!(
                "CREATE TRIGGER {} AFTER DELETE ON {t} WHEN old.{c} IS NOT NULL BEGIN {insert} END",
                quote_ident(&name_d)
            ),
        ));
        out.push((
            name_u.clone(),
            format!(
                "CREATE TRIGGER {} AFTER UPDATE OF {c} ON {t} \
                 WHEN old.{c} IS NOT NULL AND old.{c} IS NOT new.{c} BEGIN {insert} END",
                quote_ident(&name_u)
            ),
        ));
    }
    out
}

/// Installs the lost-value triggers for `profile` (replacing any).
pub(super) fn install_triggers(conn: &Connection, profile: &SyncProfile) -> Result<()> {
    drop_triggers(conn)?;
    for (_, sql) in trigger_sqls(profile) {
        conn.execute_batch(&sql)?;
    }
    Ok(())
}

/// True when the installed triggers are the ones [`install_triggers`]
/// installs for `profile` (names and text: a store written by an earlier
/// version gets the current ones).
fn triggers_installed(conn: &Connection, profile: &SyncProfile) -> Result<bool> {
    let mut stmt = conn.prepare(
        "SELECT name, sql FROM sqlite_master WHERE type = 'trigger'
           AND substr(name, 1, length(?1)) = ?1",
    )?;
    let rows = stmt.query_map([TRIGGER_PREFIX], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
    })?;
    let installed: BTreeSet<(String, String)> = rows.collect::<rusqlite::Result<_>>()?;
    let expected: BTreeSet<(String, String)> = trigger_sqls(profile).into_iter().collect();
    Ok(installed == expected)
}

/// Drops the settle indexes of `table` (before its columns change; they are
/// created again when needed).
pub(super) fn drop_indexes(conn: &Connection, table: &str) -> Result<()> {
    drop_objects(conn, "index", INDEX_PREFIX, Some(table))
}

/// The query "does `table` hold a row whose `column` is ?1".
fn holds_sql(table: &str, column: &str) -> String {
    format!(
        "SELECT 1 FROM {} WHERE {} = ?1 LIMIT 1",
        quote_ident(table),
        quote_ident(column)
    )
}

/// Creates, if missing, an index on `table.column` (nothing for the primary
/// key). The name carries the table name's length, so no two pairs share it.
fn ensure_index(conn: &Connection, table: &SyncTable, column: &str) -> Result<()> {
    if column == table.primary_key {
        return Ok(());
    }
    let name = format!(
        "{INDEX_PREFIX}{}_{}_{}",
        table.name.len(),
        table.name,
        column
    );
    let exists = conn
        .prepare_cached("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?1")?
        .exists([&name])?;
    if exists {
        return Ok(());
    }
    // CREATE INDEX sorts the column's values in memory up to the page
    // cache's size before it spills to a file, so at 1M rows the sort
    // alone took 2 MiB more than at 100k. The build runs with a 256 KiB
    // cache (the sorter's minimum, `store::SORTER_MIN_PAGES`, is 64 pages),
    // which a 100k build fills too, and the store's cache size comes back
    // after it.
    let cache: i64 = conn.pragma_query_value(None, "cache_size", |r| r.get(0))?;
    conn.pragma_update(None, "cache_size", INDEX_BUILD_CACHE_KIB)?;
    let built = conn.execute_batch(&format!(
        "CREATE INDEX IF NOT EXISTS {} ON {} ({})",
        quote_ident(&name),
        quote_ident(&table.name),
        quote_ident(column)
    ));
    conn.pragma_update(None, "cache_size", cache)?;
    built?;
    Ok(())
}

/// The page cache an index build runs with (`cache_size`, negative: KiB).
const INDEX_BUILD_CACHE_KIB: i64 = -256;

/// Brings a store written before numbered migrations up to date, in the
/// caller's transaction (migration 1, `store::schema`): the `settle_all`
/// and `walk_order` columns, the lost-value triggers, and the related
/// values still to fetch (from the old `_fs_related_seen` sets).
pub(super) fn upgrade_unversioned(tx: &Connection) -> Result<()> {
    let conn = tx;
    let has_settle_all = conn
        .prepare("SELECT 1 FROM pragma_table_info('_fs_tables') WHERE name = 'settle_all'")?
        .exists([])?;
    let has_seen = conn
        .prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_fs_related_seen'")?
        .exists([])?;
    let profile = stored_profile(conn)?;
    let triggers_ok = match &profile {
        Some(p) => triggers_installed(conn, p)?,
        None => true,
    };
    let has_walk_order = conn
        .prepare("SELECT 1 FROM pragma_table_info('_fs_tables') WHERE name = 'walk_order'")?
        .exists([])?;
    if has_settle_all && has_walk_order && !has_seen && triggers_ok {
        return Ok(());
    }
    if !has_walk_order {
        // Downloads begun before it have none: their walks cover no
        // other table's (see `RelatedQueue`).
        tx.execute_batch("ALTER TABLE _fs_tables ADD COLUMN walk_order INTEGER")?;
    }
    if has_settle_all {
        if has_seen || !triggers_ok {
            tx.execute("UPDATE _fs_tables SET settle_all = 1", [])?;
        }
    } else {
        tx.execute_batch(
            "ALTER TABLE _fs_tables ADD COLUMN settle_all INTEGER NOT NULL DEFAULT 1",
        )?;
    }
    if let Some(profile) = &profile {
        if has_seen {
            // The values held now that were not settled: still to fetch.
            for r in profile.related_rules() {
                let Some(other_table) = profile.table(r.other) else {
                    continue;
                };
                let (foreign_column, key) = (r.foreign_column, rule_key(&r));
                let seen: BTreeSet<String> = {
                    let mut stmt =
                        tx.prepare("SELECT value FROM _fs_related_seen WHERE rule = ?1")?;
                    let rows = stmt.query_map([&key], |r| r.get::<_, String>(0))?;
                    rows.collect::<rusqlite::Result<_>>()?
                };
                let held = distinct_keys(tx, other_table, foreign_column)?;
                let mut insert = tx.prepare_cached(
                    "INSERT OR IGNORE INTO _fs_related_pending (rule, value) VALUES (?1, ?2)",
                )?;
                for v in held.difference(&seen) {
                    insert.execute(params![key, v])?;
                }
            }
        }
        install_triggers(tx, profile)?;
    }
    if has_seen {
        tx.execute_batch("DROP TABLE _fs_related_seen")?;
    }
    Ok(())
}

/// How rows of a table arrive, for [`RelatedQueue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Pulled, or taken from a push result: the rows carry their server
    /// version (`_version` in the page's columns).
    Server,
    /// Fetched because a related row asked for them.
    Fetched,
    /// Written on the device.
    Local,
}

/// Before each row of `table` is written (prepared once for the rows of a
/// page, a fetch or one write): queues, for every related-rows rule
/// that reads `table`, the related values whose rows must be fetched at the
/// next settling.
///
/// A value is queued when its row is new to the device or the row's related
/// column changed; when the row comes from the server at least two versions
/// past the device's copy (it may have left the profile and come back in
/// between, a booking deactivated and reactivated, while the device
/// downloaded or fetched the rows it reaches and got none of them: one
/// change cannot hide a row and show it again); and for every row fetched
/// because a related row asked for it (the suspicion travels down: the
/// reactivated booking's work order brings its incidents again). A row
/// edited once on the server costs no fetch, so a sync of edited work orders
/// does not download their children again.
///
/// Rules whose table has not begun a download yet are skipped: that
/// download, asked for after these rows were read, selects what they reach.
/// So are, for a rule whose table's download from an empty cursor began
/// after this table's (`walk_order`), the rows of this table's snapshot
/// (`snapshot_rows`, the first rows of a page of its walk): the server read
/// them before that download began, so it selected what they reach. The
/// rows after them changed since, and are queued.
pub(super) struct RelatedQueue<'c> {
    arrival: Arrival,
    pk: usize,
    version_at: Option<usize>,
    /// The rules reading the table whose table has begun a download: (queue
    /// key, position of the foreign column in the rows, whether that
    /// download began after this table's and so covers its snapshot rows).
    rules: Vec<(String, usize, bool)>,
    /// The device's copy of a row: its version and, per rule, its related
    /// value, in one lookup for every rule.
    held: rusqlite::CachedStatement<'c>,
    /// That lookup's select list, for a caller that reads the copy itself
    /// ([`Self::copy_columns`]).
    held_select: String,
    insert: rusqlite::CachedStatement<'c>,
    values: Vec<Option<String>>,
}

impl<'c> RelatedQueue<'c> {
    /// `None` when no rule needs the rows of `table` (nothing to queue).
    pub(super) fn new(
        conn: &'c Connection,
        profile: &SyncProfile,
        table: &SyncTable,
        columns: &[String],
        arrival: Arrival,
    ) -> Result<Option<RelatedQueue<'c>>> {
        let Some(pk) = columns.iter().position(|c| *c == table.primary_key) else {
            return Ok(None);
        };
        let version_at = columns.iter().position(|c| c == VERSION_COLUMN);
        let walk_order = |name: &str| -> Result<(bool, Option<i64>)> {
            Ok(conn
                .prepare_cached("SELECT initial_done, walk_order FROM _fs_tables WHERE name = ?1")?
                .query_row([name], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?
                .unwrap_or((false, None)))
        };
        let (_, own_order) = walk_order(&table.name)?;
        let mut rules: Vec<(String, usize, bool, &str)> = Vec::new();
        for r in profile.related_rules() {
            if r.other != table.name {
                continue;
            }
            let Some(i) = columns.iter().position(|c| c == r.foreign_column) else {
                continue;
            };
            let (initial_done, order) = walk_order(&r.table.name)?;
            if initial_done || order.is_some() {
                let covers = matches!((order, own_order), (Some(o), Some(own)) if o > own);
                rules.push((rule_key(&r), i, covers, r.foreign_column));
            }
        }
        if rules.is_empty() {
            return Ok(None);
        }
        let held_select = format!(
            "{LOCAL_VERSION_COLUMN}, {}",
            rules
                .iter()
                .map(|(_, _, _, f)| format!("CAST({} AS TEXT)", quote_ident(f)))
                .collect::<Vec<_>>()
                .join(", "),
        );
        let held_sql = format!(
            "SELECT {held_select} FROM {t} WHERE {pk} = ?1",
            t = quote_ident(&table.name),
            pk = quote_ident(&table.primary_key),
        );
        Ok(Some(RelatedQueue {
            arrival,
            pk,
            version_at,
            held: conn.prepare_cached(&held_sql)?,
            held_select,
            insert: conn.prepare_cached(
                "INSERT OR IGNORE INTO _fs_related_pending (rule, value) VALUES (?1, ?2)",
            )?,
            values: Vec::with_capacity(rules.len()),
            rules: rules
                .into_iter()
                .map(|(key, i, covers, _)| (key, i, covers))
                .collect(),
        }))
    }

    /// The select list of the device's copy of a row, as [`Self::row_with_copy`]
    /// reads it (its first [`Self::copy_width`] columns), for a caller that
    /// looks the row up for its own reasons too.
    pub(super) fn copy_columns(&self) -> &str {
        &self.held_select
    }

    /// The number of columns of [`Self::copy_columns`].
    pub(super) fn copy_width(&self) -> usize {
        self.rules.len() + 1
    }

    /// How the rows arrive.
    pub(super) fn arrival(&self) -> Arrival {
        self.arrival
    }

    /// The positions (in the rows given to [`Self::row`]) of the columns
    /// whose values it queues.
    pub(super) fn value_positions(&self) -> impl Iterator<Item = usize> + '_ {
        self.rules.iter().map(|(_, i, _)| *i)
    }

    /// Reads the device's copy from a row of [`Self::copy_columns`].
    pub(super) fn read_copy(&self, r: &rusqlite::Row<'_>) -> rusqlite::Result<HeldCopy> {
        read_held(r, self.rules.len())
    }

    /// Queues what `row` (aligned with the columns given to [`Self::new`])
    /// brings, before it is written; `in_snapshot` for a row of the table's
    /// snapshot (a pulled page's first `snapshot_rows`).
    pub(super) fn row(&mut self, row: &[Value], in_snapshot: bool) -> Result<()> {
        if !self.take_values(row, in_snapshot) {
            return Ok(());
        }
        let held = if self.arrival == Arrival::Fetched {
            None
        } else {
            let id = row.get(self.pk).and_then(value_key).unwrap_or_default();
            let rules = self.rules.len();
            self.held
                .query_row([&id], |r| read_held(r, rules))
                .optional()?
        };
        self.queue_values(row, held.as_ref())
    }

    /// [`Self::row`] with the device's copy of the row already read by the
    /// caller (`None`: the device does not hold it).
    pub(super) fn row_with_copy(
        &mut self,
        row: &[Value],
        in_snapshot: bool,
        copy: Option<&HeldCopy>,
    ) -> Result<()> {
        if !self.take_values(row, in_snapshot) {
            return Ok(());
        }
        let held = if self.arrival == Arrival::Fetched {
            None
        } else {
            copy
        };
        self.queue_values(row, held)
    }

    /// Takes the row's related values into `values`; false when it holds
    /// none to queue.
    fn take_values(&mut self, row: &[Value], in_snapshot: bool) -> bool {
        self.values.clear();
        self.values.extend(self.rules.iter().map(|(_, i, covers)| {
            if in_snapshot && *covers {
                None
            } else {
                row.get(*i).and_then(value_key)
            }
        }));
        self.values.iter().any(Option::is_some)
    }

    /// Queues the values taken, given the device's copy (`None`: new to
    /// the device, or fetched).
    fn queue_values(&mut self, row: &[Value], held: Option<&HeldCopy>) -> Result<()> {
        let moved_on = held.is_some_and(|(held_version, _)| {
            let version = match self.version_at.and_then(|at| row.get(at)) {
                Some(Value::Integer(n)) if self.arrival == Arrival::Server => *n,
                _ => *held_version,
            };
            version >= held_version.saturating_add(2)
        });
        for (k, (key, _, _)) in self.rules.iter().enumerate() {
            let Some(v) = &self.values[k] else { continue };
            let queue = match held {
                None => true,
                Some((_, old)) => moved_on || old[k].as_deref() != Some(v.as_str()),
            };
            if queue {
                self.insert.execute(params![key, v])?;
            }
        }
        Ok(())
    }
}

/// The device's copy of a row as [`RelatedQueue`] reads it: its version and,
/// per rule, its related value.
pub(super) type HeldCopy = (i64, Vec<Option<String>>);

/// A [`HeldCopy`] from a row of the queue's select list (`rules` related
/// values after the version).
fn read_held(r: &rusqlite::Row<'_>, rules: usize) -> rusqlite::Result<HeldCopy> {
    let mut old = Vec::with_capacity(rules);
    for k in 0..rules {
        old.push(r.get::<_, Option<String>>(k + 1)?);
    }
    Ok((r.get::<_, i64>(0)?, old))
}

/// [`RelatedQueue`] for one row given as a map, with its server version
/// (push results) or none (local writes).
pub(super) fn queue_related_row(
    conn: &Connection,
    profile: &SyncProfile,
    table: &SyncTable,
    fields: &BTreeMap<String, Value>,
    version: Option<i64>,
) -> Result<()> {
    let columns = super::page::page_columns(table);
    let mut row: Vec<Value> = vec![version.map(Value::Integer).unwrap_or(Value::Null)];
    row.extend(
        table
            .columns
            .iter()
            .map(|c| fields.get(&c.name).cloned().unwrap_or(Value::Null)),
    );
    let arrival = if version.is_some() {
        Arrival::Server
    } else {
        Arrival::Local
    };
    match RelatedQueue::new(conn, profile, table, &columns, arrival)? {
        Some(mut queue) => queue.row(&row, false),
        None => Ok(()),
    }
}

/// The queued values of a rule that `other` still holds, in order; values
/// it no longer holds leave the queue.
pub(super) fn take_pending(
    conn: &Connection,
    key: &str,
    other: &SyncTable,
    foreign_column: &str,
) -> Result<Vec<String>> {
    let queued: Vec<String> = {
        let mut stmt = conn.prepare_cached(
            "SELECT value FROM _fs_related_pending WHERE rule = ?1 ORDER BY value",
        )?;
        let rows = stmt.query_map([key], |r| r.get::<_, String>(0))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    if queued.is_empty() {
        return Ok(queued);
    }
    // Whether `other` holds the value: an index lookup when the values
    // compare as text, else the column's keys computed once.
    let (lookup, keys) = if other
        .column(foreign_column)
        .is_some_and(|c| text_like(c.kind))
    {
        ensure_index(conn, other, foreign_column)?;
        (
            Some(holds_sql(&other.name, foreign_column)),
            BTreeSet::new(),
        )
    } else {
        (None, distinct_keys(conn, other, foreign_column)?)
    };
    let mut out = Vec::with_capacity(queued.len());
    let mut gone = Vec::new();
    for v in queued {
        let held = match &lookup {
            Some(sql) => conn.prepare_cached(sql)?.exists([&v])?,
            None => keys.contains(&v),
        };
        if held {
            out.push(v);
        } else {
            gone.push(v);
        }
    }
    clear_pending(conn, key, &gone)?;
    Ok(out)
}

/// Takes values out of a rule's queue.
pub(super) fn clear_pending(conn: &Connection, key: &str, values: &[String]) -> Result<()> {
    let mut stmt =
        conn.prepare_cached("DELETE FROM _fs_related_pending WHERE rule = ?1 AND value = ?2")?;
    for v in values {
        stmt.execute(params![key, v])?;
    }
    Ok(())
}

/// Removes the rows the profile no longer reaches, in one transaction (the
/// caller's), and resets the settle state. See the module documentation.
///
/// `early`: the tables [`settle_table`] already evaluated whole in this
/// run, with the day each was evaluated on. They are evaluated here like
/// tables settled by an earlier run (only what changed since), but for a
/// table whose filters read the clock and whose day has passed since.
pub(super) fn remove_unreached(
    tx: &Connection,
    profile: &SyncProfile,
    ctx: &FilterContext,
    early: &BTreeMap<String, String>,
) -> Result<Vec<(String, u64)>> {
    let today = ctx.today().to_string();
    let day_changed = meta_value(tx, "settle_day")?.is_none_or(|d| d != today);
    let whole: BTreeSet<String> = {
        let mut stmt = tx.prepare("SELECT name FROM _fs_tables WHERE settle_all")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    // Tables are settled in dependency order and each table's doomed rows
    // are deleted before the next table, so the rows a related table still
    // holds are exactly the rows that stay.
    let mut settled: BTreeSet<&str> = BTreeSet::new();
    let mut out = Vec::new();
    for table in profile.tables_in_dependency_order() {
        let full = whole.contains(&table.name)
            || (day_changed && table.uses_clock() && early.get(&table.name) != Some(&today))
            || !incremental(profile, table, &settled);
        let timer = std::time::Instant::now();
        let removed = if full {
            remove_all_unreached(tx, profile, table, &settled, ctx)?
        } else {
            remove_candidates(tx, profile, table, ctx)?
        };
        tracing::debug!(target: "fieldsync::sync", table = %table.name, full, removed, ms = timer.elapsed().as_millis() as u64, "table settled");
        settled.insert(table.name.as_str());
        out.push((table.name.clone(), removed));
    }
    tx.execute_batch("UPDATE _fs_tables SET settle_all = 0;")?;
    put_meta(tx, "settle_day", &today)?;
    // Queued values of rules the profile no longer has.
    let keys: Vec<String> = profile.related_rules().map(|r| rule_key(&r)).collect();
    let list = serde_json::to_string(&keys)?;
    tx.execute(
        "DELETE FROM _fs_related_pending WHERE rule NOT IN (SELECT value FROM json_each(?1))",
        [list],
    )?;
    tx.execute_batch("DELETE FROM _fs_settle_rows; DELETE FROM _fs_settle_lost;")?;
    Ok(out)
}

// A table evaluated whole while the run's other tables still download
// (`Store::settle_table`): for a table downloaded whole whose related
// tables (`settled`) were downloaded whole and evaluated already in this
// run. Its rows and those of `settled` change no more in this run (a fetch
// writes only into tables not downloaded whole), so the evaluation holds
// for the run's final pass, which then looks only at what changed since
// (local writes, rows of these tables that a later settling removes). In
// three steps, so that the pages of the tables still downloading are
// written meanwhile: the indexes the evaluation reads ([`evaluation_indexes`],
// a write), the evaluation ([`unreached`], read on a connection of its own),
// the removal ([`remove_evaluated`], a write).

/// Builds the related columns' indexes a whole evaluation of `table` reads
/// (see [`remove_all_unreached`]).
pub(super) fn evaluation_indexes(
    tx: &Connection,
    profile: &SyncProfile,
    table: &SyncTable,
    settled: &BTreeSet<&str>,
) -> Result<()> {
    if related_only_sql(profile, table, settled).is_some() {
        related_indexes(tx, profile, table)?;
    }
    Ok(())
}

/// Builds the indexes on the related columns `table`'s rules read. Each
/// `IN (SELECT f FROM other)` of a whole evaluation reads the index on the
/// related column, the one incremental settling looks values up with:
/// built first, it replaces the temporary key set SQLite would build for
/// the statement (and spill to a file past its page cache), and the first
/// small sync after a download finds it.
fn related_indexes(tx: &Connection, profile: &SyncProfile, table: &SyncTable) -> Result<()> {
    for r in table.related_rules() {
        if let Some(other) = profile.table(r.other) {
            ensure_index(tx, other, r.foreign_column)?;
        }
    }
    Ok(())
}

/// The condition "not reached and without a pending change" on a row of
/// `table`, with `reached` from `related_only_sql`; `?1` is the table's name.
fn unreached_condition(table: &SyncTable, reached: &str) -> String {
    format!(
        "{pk} NOT IN (SELECT row_id FROM _fs_outbox WHERE tbl = ?1) AND NOT ({reached})",
        pk = quote_ident(&table.primary_key),
    )
}

/// The keys of the rows of `table` its rules no longer reach, but for rows
/// with a pending change; reads only.
pub(super) fn unreached(
    conn: &Connection,
    profile: &SyncProfile,
    table: &SyncTable,
    settled: &BTreeSet<&str>,
    ctx: &FilterContext,
) -> Result<Vec<String>> {
    match related_only_sql(profile, table, settled) {
        Some(reached) => {
            let sql = format!(
                "SELECT {} FROM {} WHERE {}",
                quote_ident(&table.primary_key),
                quote_ident(&table.name),
                unreached_condition(table, &reached)
            );
            let mut stmt = conn.prepare(&sql)?;
            let rows = stmt.query_map([&table.name], |r| r.get::<_, String>(0))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        }
        None => unreached_rows(conn, profile, table, settled, ctx),
    }
}

/// Removes the rows of `doomed` (from [`unreached`]) that are still not
/// reached and have no pending change, and takes `table` off the tables to
/// evaluate whole; returns the rows removed.
pub(super) fn remove_evaluated(
    tx: &Connection,
    profile: &SyncProfile,
    table: &SyncTable,
    settled: &BTreeSet<&str>,
    ctx: &FilterContext,
    doomed: &[String],
) -> Result<u64> {
    let mut removed = 0u64;
    if !doomed.is_empty() {
        match related_only_sql(profile, table, settled) {
            Some(reached) => {
                let sql = format!(
                    "DELETE FROM {} WHERE {} = ?2 AND {}",
                    quote_ident(&table.name),
                    quote_ident(&table.primary_key),
                    unreached_condition(table, &reached)
                );
                let mut stmt = tx.prepare(&sql)?;
                for id in doomed {
                    removed += stmt.execute(params![table.name, id])? as u64;
                }
            }
            None => {
                // Evaluated again in the write: the rows, the related values
                // and the pending changes as they are now.
                let now: BTreeSet<String> = unreached_rows(tx, profile, table, settled, ctx)?
                    .into_iter()
                    .collect();
                for id in doomed.iter().filter(|id| now.contains(*id)) {
                    if delete_row(tx, table, id)? {
                        removed += 1;
                    }
                }
            }
        }
    }
    tx.execute(
        "UPDATE _fs_tables SET settle_all = 0 WHERE name = ?1",
        [&table.name],
    )?;
    tx.execute("DELETE FROM _fs_settle_rows WHERE tbl = ?1", [&table.name])?;
    Ok(removed)
}

/// Every related rule of `table` reads another, already settled table
/// through columns that compare as text: its rows can be checked one by one.
fn incremental(profile: &SyncProfile, table: &SyncTable, settled: &BTreeSet<&str>) -> bool {
    table.rules.iter().all(|rule| match rule {
        RowRule::Related {
            table: other,
            column,
            foreign_column,
        } => {
            other != &table.name
                && settled.contains(other.as_str())
                && table.column(column).is_some_and(|c| text_like(c.kind))
                && profile
                    .table(other)
                    .and_then(|o| o.column(foreign_column))
                    .is_some_and(|c| text_like(c.kind))
        }
        _ => true,
    })
}

/// Evaluates every row of `table`.
fn remove_all_unreached(
    tx: &Connection,
    profile: &SyncProfile,
    table: &SyncTable,
    settled: &BTreeSet<&str>,
    ctx: &FilterContext,
) -> Result<u64> {
    Ok(match related_only_sql(profile, table, settled) {
        Some(reached) => {
            related_indexes(tx, profile, table)?;
            let sql = format!(
                "DELETE FROM {} WHERE {}",
                quote_ident(&table.name),
                unreached_condition(table, &reached)
            );
            tx.execute(&sql, [&table.name])? as u64
        }
        None => remove_unreached_rows(tx, profile, table, settled, ctx)?,
    })
}

/// The table's own rules (all, owned, custom) with custom filters lowered
/// once for the pass.
pub(super) struct OwnRules<'a> {
    table: &'a SyncTable,
    ctx: &'a FilterContext,
    lowered: Vec<Option<Cond>>,
}

impl<'a> OwnRules<'a> {
    pub(super) fn new(table: &'a SyncTable, ctx: &'a FilterContext) -> Self {
        let lowered = table
            .rules
            .iter()
            .map(|r| match r {
                RowRule::Custom { filter } => Some(filter.lower(table, ctx)),
                _ => None,
            })
            .collect();
        OwnRules {
            table,
            ctx,
            lowered,
        }
    }

    /// Whether rule `i` (not a related-rows rule) selects the row.
    pub(super) fn matches(&self, i: usize, row: &BTreeMap<String, Value>) -> bool {
        match (&self.table.rules[i], &self.lowered[i]) {
            (RowRule::Custom { .. }, Some(cond)) => cond.eval(&|c: &str| row.get(c).cloned()),
            (rule, _) => self.table.own_rule_matches(rule, row, self.ctx),
        }
    }
}

/// Evaluates the rows of `table` that may have stopped being reached: rows
/// listed in `_fs_settle_rows`, and rows whose related value the related
/// table lost.
fn remove_candidates(
    tx: &Connection,
    profile: &SyncProfile,
    table: &SyncTable,
    ctx: &FilterContext,
) -> Result<u64> {
    let mut ids: BTreeSet<String> = {
        let mut stmt = tx.prepare_cached("SELECT row_id FROM _fs_settle_rows WHERE tbl = ?1")?;
        let rows = stmt.query_map([&table.name], |r| r.get::<_, String>(0))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    for r in table.related_rules() {
        let (other, column, foreign_column) = (r.other, r.column, r.foreign_column);
        let Some(other_table) = profile.table(other) else {
            continue;
        };
        let any_lost = tx
            .prepare_cached("SELECT 1 FROM _fs_settle_lost WHERE tbl = ?1 AND col = ?2 LIMIT 1")?
            .exists(params![other, foreign_column])?;
        if !any_lost {
            continue;
        }
        ensure_index(tx, other_table, foreign_column)?;
        ensure_index(tx, table, column)?;
        let sql = format!(
            "SELECT t.{pk} FROM _fs_settle_lost l JOIN {t} t ON t.{c} = l.value
              WHERE l.tbl = ?1 AND l.col = ?2
                AND NOT EXISTS (SELECT 1 FROM {o} WHERE {f} = l.value)",
            pk = quote_ident(&table.primary_key),
            t = quote_ident(&table.name),
            c = quote_ident(column),
            o = quote_ident(other),
            f = quote_ident(foreign_column),
        );
        let mut stmt = tx.prepare_cached(&sql)?;
        let rows = stmt.query_map(params![other, foreign_column], |r| r.get::<_, String>(0))?;
        for id in rows {
            ids.insert(id?);
        }
    }
    if ids.is_empty() {
        return Ok(0);
    }
    // Per rule, the lookup that says whether the related table holds a
    // row's value (built once for the pass).
    let mut lookups: Vec<Option<String>> = Vec::with_capacity(table.rules.len());
    for rule in &table.rules {
        lookups.push(match rule {
            RowRule::Related {
                table: other,
                foreign_column,
                ..
            } => {
                if let Some(other_table) = profile.table(other) {
                    ensure_index(tx, other_table, foreign_column)?;
                }
                Some(holds_sql(other, foreign_column))
            }
            _ => None,
        });
    }
    let own = OwnRules::new(table, ctx);
    let columns = rule_columns(table);
    let by_id = format!(
        "{} WHERE {} = ?1",
        rule_columns_sql(table, &columns),
        quote_ident(&table.primary_key)
    );
    let mut removed = 0;
    for id in ids {
        if has_pending(tx, &table.name, &id)? {
            continue;
        }
        let fields = {
            let mut stmt = tx.prepare_cached(&by_id)?;
            let mut rows = stmt.query([&id])?;
            match rows.next()? {
                Some(row) => rule_row(row, &columns)?,
                None => continue,
            }
        };
        let mut stays = false;
        for (i, rule) in table.rules.iter().enumerate() {
            stays = match (rule, &lookups[i]) {
                (RowRule::Related { column, .. }, Some(sql)) => {
                    match fields.get(column).and_then(value_key) {
                        Some(k) => tx.prepare_cached(sql)?.exists([k])?,
                        None => false,
                    }
                }
                _ => own.matches(i, &fields),
            };
            if stays {
                break;
            }
        }
        if !stays && delete_row(tx, table, &id)? {
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::super::Store;
    use super::{remove_evaluated, unreached};
    use crate::profile::SyncProfile;
    use crate::protocol::PullPage;
    use crate::value::Value;

    const DAY: i64 = 86_400_000;
    /// 2026-11-29T10:00:00Z.
    const NOW: i64 = 1_795_946_400_000;

    fn profile() -> SyncProfile {
        serde_json::from_value(serde_json::json!({
            "name": "p", "version": 1, "user_id": "u1",
            "tables": [
                {"name": "bookings", "primary_key": "id", "sync_interval_secs": 60,
                 "columns": [{"name": "id", "type": "text"}, {"name": "work_order_id", "type": "text"},
                             {"name": "start_time", "type": "datetime"}],
                 "rules": [{"kind": "custom", "filter": {"op": "next_days", "column": "start_time", "days": 7}}]},
                {"name": "work_orders", "primary_key": "id", "sync_interval_secs": 60,
                 "columns": [{"name": "id", "type": "text"}, {"name": "title", "type": "text"}],
                 "rules": [{"kind": "related", "table": "bookings", "column": "id", "foreign_column": "work_order_id"}]},
                {"name": "incidents", "primary_key": "id", "sync_interval_secs": 60,
                 "columns": [{"name": "id", "type": "text"}, {"name": "work_order_id", "type": "text"}],
                 "rules": [{"kind": "related", "table": "work_orders", "column": "work_order_id", "foreign_column": "id"}]}
            ]
        }))
        .expect("profile")
    }

    fn t(s: &str) -> Value {
        Value::Text(s.into())
    }

    fn page(table: &str, columns: &[&str], rows: Vec<Vec<Value>>, removed: &[&str]) -> PullPage {
        PullPage {
            table: table.into(),
            profile_version: 1,
            cursor: "c".into(),
            has_more: false,
            total: None,
            snapshot_rows: 0,
            columns: std::iter::once("_version")
                .chain(columns.iter().copied())
                .map(String::from)
                .collect(),
            rows: rows
                .into_iter()
                .map(|r| std::iter::once(Value::Integer(1)).chain(r).collect())
                .collect(),
            removed: removed.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Two bookings (b1 for w1, b2 for w2), their work orders, an incident
    /// each, downloaded whole and settled.
    fn settled_store(dir: &std::path::Path) -> (Store, SyncProfile) {
        let store = Store::open(&dir.join("d.db")).expect("open");
        let p = profile();
        store.apply_profile(&p, NOW).expect("profile");
        let start = t("2026-11-30T09:00:00Z");
        for pg in [
            bookings_page(
                vec![
                    vec![t("b1"), t("w1"), start.clone()],
                    vec![t("b2"), t("w2"), start],
                ],
                &[],
            ),
            page(
                "work_orders",
                &["id", "title"],
                vec![vec![t("w1"), t("one")], vec![t("w2"), t("two")]],
                &[],
            ),
            page(
                "incidents",
                &["id", "work_order_id"],
                vec![vec![t("i1"), t("w1")], vec![t("i2"), t("w2")]],
                &[],
            ),
        ] {
            let table = p.table(&pg.table).expect("table").clone();
            store.apply_page(None, &table, &pg, NOW).expect("page");
        }
        let removed = store.remove_unreached(&p, NOW).expect("settle");
        assert!(removed.iter().all(|(_, n)| *n == 0), "{removed:?}");
        (store, p)
    }

    /// A settled store made to look as an earlier version left it (`sql`),
    /// closed; returns its path.
    fn earlier_store(dir: &std::path::Path, sql: &str) -> std::path::PathBuf {
        let (store, _) = settled_store(dir);
        store
            .with_writer(|c| {
                c.execute_batch(sql)?;
                // Written before numbered migrations (and so before
                // migration 2's transactions).
                c.execute_batch(
                    "DROP INDEX _fs_outbox_tx; ALTER TABLE _fs_outbox DROP COLUMN tx_id;",
                )?;
                c.pragma_update(None, "user_version", 0)?;
                Ok(())
            })
            .expect("earlier version");
        dir.join("d.db")
    }

    fn ids(store: &Store, table: &str) -> Vec<String> {
        store
            .with_reader(|c| {
                let mut stmt = c.prepare(&format!("SELECT id FROM {table} ORDER BY id"))?;
                let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
                Ok(rows.collect::<rusqlite::Result<_>>()?)
            })
            .expect("ids")
    }

    /// A first download evaluated table by table while it runs: bookings
    /// (b2 starts after the seven days) and work orders (w2 is reached by b2
    /// only) evaluated whole as each ends, incidents downloaded after them.
    /// A booking no page wrote is then put in directly (it starts after the
    /// seven days too): only an evaluation of every booking would find it.
    /// Returns the tables evaluated early, with their day.
    fn settled_early(dir: &std::path::Path) -> (Store, SyncProfile, BTreeMap<String, String>) {
        let store = Store::open(&dir.join("d.db")).expect("open");
        let p = profile();
        store.apply_profile(&p, NOW).expect("profile");
        let (soon, late) = (t("2026-11-30T09:00:00Z"), t("2026-12-20T09:00:00Z"));
        let apply = |pg: PullPage| {
            let table = p.table(&pg.table).expect("table").clone();
            store.apply_page(None, &table, &pg, NOW).expect("page");
        };
        let mut early = BTreeMap::new();
        let mut settled = BTreeSet::new();
        let day = p.filter_context(NOW).today().to_string();
        apply(bookings_page(
            vec![
                vec![t("b1"), t("w1"), soon],
                vec![t("b2"), t("w2"), late.clone()],
            ],
            &[],
        ));
        let removed = store
            .settle_table(&p, "bookings", &settled, NOW)
            .expect("settle");
        assert_eq!(removed, 1);
        assert_eq!(ids(&store, "bookings"), ["b1"]);
        settled.insert("bookings".to_string());
        early.insert("bookings".to_string(), day.clone());
        apply(page(
            "work_orders",
            &["id", "title"],
            vec![vec![t("w1"), t("one")], vec![t("w2"), t("two")]],
            &[],
        ));
        let removed = store
            .settle_table(&p, "work_orders", &settled, NOW)
            .expect("settle");
        assert_eq!(removed, 1);
        assert_eq!(ids(&store, "work_orders"), ["w1"]);
        early.insert("work_orders".to_string(), day);
        apply(page(
            "incidents",
            &["id", "work_order_id"],
            vec![vec![t("i1"), t("w1")], vec![t("i2"), t("w2")]],
            &[],
        ));
        store
            .with_writer(|c| {
                c.execute(
                    "INSERT INTO bookings (id, work_order_id, start_time) VALUES ('stray', 'w1', ?1)",
                    ["2026-12-20T09:00:00Z"],
                )?;
                Ok(())
            })
            .expect("stray");
        (store, p, early)
    }

    #[test]
    fn tables_evaluated_during_the_download_are_not_evaluated_whole_again_the_same_day() {
        let dir = tempfile::tempdir().expect("dir");
        let (store, p, early) = settled_early(dir.path());
        let removed = store
            .remove_unreached_rest(&p, NOW + 1000, &early)
            .expect("settle");
        // The incidents, downloaded whole and not evaluated yet, are; the
        // bookings and work orders only for what changed since (nothing).
        assert_eq!(
            removed,
            vec![
                ("bookings".to_string(), 0),
                ("work_orders".to_string(), 0),
                ("incidents".to_string(), 1)
            ]
        );
        assert_eq!(ids(&store, "bookings"), ["b1", "stray"]);
        assert_eq!(ids(&store, "incidents"), ["i1"]);
    }

    #[test]
    fn a_row_written_locally_between_the_evaluation_and_the_removal_stays() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(&dir.path().join("d.db")).expect("open");
        let p = profile();
        store.apply_profile(&p, NOW).expect("profile");
        let (soon, late) = (t("2026-11-30T09:00:00Z"), t("2026-12-20T09:00:00Z"));
        for pg in [
            bookings_page(
                vec![
                    vec![t("b1"), t("w1"), soon],
                    vec![t("b2"), t("w2"), late.clone()],
                    vec![t("b3"), t("w1"), late],
                ],
                &[],
            ),
            page(
                "work_orders",
                &["id", "title"],
                vec![
                    vec![t("w1"), t("one")],
                    vec![t("w2"), t("two")],
                    vec![t("w3"), t("three")],
                ],
                &[],
            ),
        ] {
            let table = p.table(&pg.table).expect("table").clone();
            store.apply_page(None, &table, &pg, NOW).expect("page");
        }
        let ctx = p.filter_context(NOW);
        let bookings = p.table("bookings").expect("bookings").clone();
        let work_orders = p.table("work_orders").expect("work orders").clone();
        let edit = |table: &crate::profile::SyncTable, id: &str, column: &str, value: &str| {
            let mut data = BTreeMap::new();
            data.insert(column.to_string(), t(value));
            store
                .write(&p, table, id, crate::protocol::Op::Update, data, NOW)
                .expect("write");
        };
        // Bookings (own rules, evaluated in Rust): b2 and b3 start after the
        // seven days; b3 is edited before the removal.
        let none = BTreeSet::new();
        let doomed = store
            .with_reader(|c| unreached(c, &p, &bookings, &none, &ctx))
            .expect("evaluate");
        assert_eq!(doomed, ["b2", "b3"]);
        edit(&bookings, "b3", "work_order_id", "w3");
        let removed = store
            .with_writer(|c| remove_evaluated(c, &p, &bookings, &none, &ctx, &doomed))
            .expect("remove");
        assert_eq!(removed, 1);
        assert_eq!(ids(&store, "bookings"), ["b1", "b3"]);
        // Work orders (a related rule, evaluated in SQL): w2 and w3 are not
        // reached, then w3 is edited before the removal.
        let settled = BTreeSet::from(["bookings"]);
        let doomed = store
            .with_reader(|c| unreached(c, &p, &work_orders, &settled, &ctx))
            .expect("evaluate");
        assert_eq!(doomed, ["w2"], "b3, pending, reaches w3");
        let doomed = vec!["w2".to_string(), "w3".to_string()];
        edit(&work_orders, "w2", "title", "edited");
        let removed = store
            .with_writer(|c| remove_evaluated(c, &p, &work_orders, &settled, &ctx, &doomed))
            .expect("remove");
        assert_eq!(removed, 0, "w2 has a pending change, b3 reaches w3");
        assert_eq!(ids(&store, "work_orders"), ["w1", "w2", "w3"]);
    }

    #[test]
    fn a_table_evaluated_during_the_download_on_an_earlier_day_is_evaluated_whole_again() {
        let dir = tempfile::tempdir().expect("dir");
        let (store, p, early) = settled_early(dir.path());
        // The day passed between the early evaluation and the final pass:
        // the bookings' seven days moved, so every booking is evaluated.
        let removed = store
            .remove_unreached_rest(&p, NOW + DAY, &early)
            .expect("settle");
        assert_eq!(removed[0], ("bookings".to_string(), 1));
        assert_eq!(ids(&store, "bookings"), ["b1"]);
        assert_eq!(ids(&store, "incidents"), ["i1"]);
    }

    #[test]
    fn only_rows_new_to_the_device_or_with_a_rule_column_moved_are_listed_for_settling() {
        // Without the related-value queue, and with it (one lookup of the
        // device's copy then serves both).
        for queue in [false, true] {
            rows_listed_for_settling(queue);
        }
    }

    fn rows_listed_for_settling(queue: bool) {
        let dir = tempfile::tempdir().expect("dir");
        let (store, p) = settled_store(dir.path());
        let apply = |pg: PullPage| {
            let table = p.table(&pg.table).expect("table").clone();
            store
                .apply_page(queue.then_some(&p), &table, &pg, NOW)
                .expect("page");
        };
        // The work orders' rules read only their key: a new title is not a
        // reason to evaluate w1 again.
        apply(page(
            "work_orders",
            &["id", "title"],
            vec![vec![t("w1"), t("one, edited")]],
            &[],
        ));
        // The bookings' rules read `start_time`: b1 comes back with the
        // same one (and another work order, which the lost-value triggers
        // follow), b2 with a later one.
        apply(bookings_page(
            vec![
                vec![t("b1"), t("w2"), t("2026-11-30T09:00:00Z")],
                vec![t("b2"), t("w2"), t("2026-12-01T09:00:00Z")],
            ],
            &[],
        ));
        // An incident new to the device.
        apply(page(
            "incidents",
            &["id", "work_order_id"],
            vec![vec![t("i3"), t("w1")]],
            &[],
        ));
        let listed: Vec<(String, String)> = store
            .with_reader(|c| {
                let mut stmt =
                    c.prepare("SELECT tbl, row_id FROM _fs_settle_rows ORDER BY 1, 2")?;
                let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
                Ok(rows.collect::<rusqlite::Result<_>>()?)
            })
            .expect("listed");
        assert_eq!(
            listed,
            [
                ("bookings".to_string(), "b2".to_string()),
                ("incidents".to_string(), "i3".to_string())
            ],
            "with the queue: {queue}"
        );
        if queue {
            // b1's new work order is queued (b2's is the same one).
            assert_eq!(pending(&store, &p, "work_orders"), ["w2"]);
        }
        // b1 moved to w2: w1 is reached by no booking, and goes with its
        // incidents; the edited title changed nothing else.
        store.remove_unreached(&p, NOW + 1000).expect("settle");
        assert_eq!(ids(&store, "work_orders"), ["w2"]);
        assert_eq!(ids(&store, "incidents"), ["i2"]);
    }

    #[test]
    fn a_removed_booking_takes_its_work_order_and_incidents_and_nothing_else_is_read() {
        let dir = tempfile::tempdir().expect("dir");
        let (store, p) = settled_store(dir.path());
        // A row no change reaches: an incremental pass does not look at it.
        store
            .with_writer(|c| {
                c.execute(
                    "INSERT INTO incidents (id, work_order_id) VALUES ('stray', 'w9')",
                    [],
                )?;
                Ok(())
            })
            .expect("stray");
        let bookings = p.table("bookings").expect("bookings").clone();
        store
            .apply_page(None, &bookings, &bookings_page(vec![], &["b1"]), NOW)
            .expect("removal page");
        let removed = store.remove_unreached(&p, NOW + 1000).expect("settle");
        assert_eq!(
            removed,
            vec![
                ("bookings".to_string(), 0),
                ("work_orders".to_string(), 1),
                ("incidents".to_string(), 1)
            ]
        );
        assert_eq!(ids(&store, "work_orders"), ["w2"]);
        assert_eq!(ids(&store, "incidents"), ["i2", "stray"]);
        // A table evaluated whole (here: downloaded again) finds it.
        store.restart_table("incidents").expect("restart");
        store.remove_unreached(&p, NOW + 2000).expect("settle");
        assert_eq!(ids(&store, "incidents"), ["i2"]);
    }

    #[test]
    fn a_whole_table_settling_reads_the_related_column_index_and_a_null_reaches_nothing() {
        let dir = tempfile::tempdir().expect("dir");
        let (store, p) = settled_store(dir.path());
        // The whole-table settling built the index on bookings.work_order_id;
        // the statement that evaluates work orders reads it for its `IN`
        // instead of building a temporary set of the bookings' values.
        let work_orders = p.table("work_orders").expect("table");
        let reached =
            super::super::related_only_sql(&p, work_orders, &["bookings"].into_iter().collect())
                .expect("related-only rules");
        let plan: Vec<String> = store
            .with_reader(|c| {
                let mut stmt = c.prepare(&format!(
                    "EXPLAIN QUERY PLAN SELECT id FROM work_orders WHERE NOT ({reached})"
                ))?;
                let rows = stmt.query_map([], |r| r.get::<_, String>(3))?;
                Ok(rows.collect::<rusqlite::Result<_>>()?)
            })
            .expect("plan");
        assert!(
            plan.iter()
                .any(|d| d.contains("FOR IN-OPERATOR") && d.contains("work_order_id")),
            "{plan:?}"
        );
        // The index was built with a small page cache (its sort stays
        // small); the store's own cache size is back.
        let cache: i64 = store
            .with_writer(|c| Ok(c.pragma_query_value(None, "cache_size", |r| r.get(0))?))
            .expect("cache_size");
        assert_eq!(cache, -2000);
        // A booking without a work order (NULL) makes the set hold a NULL:
        // a work order no booking names still leaves, one named stays.
        store
            .with_writer(|c| {
                c.execute_batch(
                    "INSERT INTO bookings (id, work_order_id, start_time) VALUES ('b0', NULL, '2026-11-30T09:00:00Z');
                     INSERT INTO work_orders (id, title) VALUES ('w9', 'none');",
                )?;
                Ok(())
            })
            .expect("rows");
        store.restart_table("work_orders").expect("restart");
        store.remove_unreached(&p, NOW).expect("settle");
        assert_eq!(ids(&store, "work_orders"), ["w1", "w2"]);
    }

    #[test]
    fn indexed_values_that_move_are_written_by_pages_and_by_local_writes() {
        let dir = tempfile::tempdir().expect("dir");
        let (store, p) = settled_store(dir.path());
        // bookings.work_order_id is indexed (the whole-table settling built
        // the index), so its upserts set it only when it moves.
        let work_order = |id: &str| {
            store
                .with_reader(|c| {
                    Ok(c.query_row(
                        "SELECT work_order_id FROM bookings WHERE id = ?1",
                        [id],
                        |r| r.get::<_, Option<String>>(0),
                    )?)
                })
                .expect("booking")
        };
        let bookings = p.table("bookings").expect("bookings").clone();
        // A page: b1 keeps its work order (other columns change), b2 moves.
        store
            .apply_page(
                None,
                &bookings,
                &bookings_page(
                    vec![
                        vec![t("b1"), t("w1"), t("2026-12-01T09:00:00Z")],
                        vec![t("b2"), t("w1"), t("2026-11-30T09:00:00Z")],
                    ],
                    &[],
                ),
                NOW,
            )
            .expect("page");
        assert_eq!(work_order("b1").as_deref(), Some("w1"));
        assert_eq!(work_order("b2").as_deref(), Some("w1"));
        let start: String = store
            .with_reader(|c| {
                Ok(
                    c.query_row("SELECT start_time FROM bookings WHERE id = 'b1'", [], |r| {
                        r.get(0)
                    })?,
                )
            })
            .expect("start");
        assert_eq!(start, "2026-12-01T09:00:00Z");
        // A local write moves b1 to w2.
        let data = [("work_order_id".to_owned(), t("w2"))]
            .into_iter()
            .collect();
        store
            .write(&p, &bookings, "b1", crate::protocol::Op::Update, data, NOW)
            .expect("write");
        assert_eq!(work_order("b1").as_deref(), Some("w2"));
    }

    #[test]
    fn a_work_order_kept_by_another_booking_stays() {
        let dir = tempfile::tempdir().expect("dir");
        let (store, p) = settled_store(dir.path());
        let bookings = p.table("bookings").expect("bookings").clone();
        // b2 now points at w1 as well; b1 leaves.
        store
            .apply_page(
                None,
                &bookings,
                &bookings_page(
                    vec![vec![t("b2"), t("w1"), t("2026-11-30T09:00:00Z")]],
                    &["b1"],
                ),
                NOW,
            )
            .expect("page");
        store.remove_unreached(&p, NOW).expect("settle");
        assert_eq!(ids(&store, "work_orders"), ["w1"]);
        assert_eq!(ids(&store, "incidents"), ["i1"]);
    }

    #[test]
    fn a_value_lost_twice_before_settling_is_recorded_once_and_the_pages_apply() {
        let dir = tempfile::tempdir().expect("dir");
        let (store, p) = settled_store(dir.path());
        let bookings = p.table("bookings").expect("bookings").clone();
        let start = t("2026-11-30T09:00:00Z");
        // b3 also points at w1; b1 leaves (w1 lost once).
        store
            .apply_page(
                None,
                &bookings,
                &bookings_page(vec![vec![t("b3"), t("w1"), start.clone()]], &["b1"]),
                NOW,
            )
            .expect("first page");
        // b3 moves to w2 (w1 lost again), written by the page's upsert: the
        // trigger's insert must not trip over the value already recorded.
        store
            .apply_page(
                None,
                &bookings,
                &bookings_page(vec![vec![t("b3"), t("w2"), start]], &[]),
                NOW,
            )
            .expect("second page");
        let lost: Vec<String> = store
            .with_reader(|c| {
                let mut stmt = c.prepare("SELECT value FROM _fs_settle_lost ORDER BY value")?;
                let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
                Ok(rows.collect::<rusqlite::Result<_>>()?)
            })
            .expect("lost");
        assert_eq!(lost, ["w1"]);
        store.remove_unreached(&p, NOW).expect("settle");
        assert_eq!(ids(&store, "work_orders"), ["w2"]);
        assert_eq!(ids(&store, "incidents"), ["i2"]);
    }

    #[test]
    fn the_date_window_is_evaluated_again_when_the_day_changes() {
        let dir = tempfile::tempdir().expect("dir");
        let (store, p) = settled_store(dir.path());
        store
            .remove_unreached(&p, NOW + 3_600_000)
            .expect("same day");
        assert_eq!(ids(&store, "bookings"), ["b1", "b2"]);
        // Eight days on, both bookings are in the past: they leave with no
        // server change, and so does everything they reached.
        store
            .remove_unreached(&p, NOW + 8 * DAY)
            .expect("a week later");
        assert!(ids(&store, "bookings").is_empty());
        assert!(ids(&store, "work_orders").is_empty());
        assert!(ids(&store, "incidents").is_empty());
    }

    #[test]
    fn a_row_with_a_pending_change_stays_until_its_change_leaves_the_outbox() {
        let dir = tempfile::tempdir().expect("dir");
        let (store, p) = settled_store(dir.path());
        let incidents = p.table("incidents").expect("incidents").clone();
        let mut data = std::collections::BTreeMap::new();
        data.insert("work_order_id".to_string(), t("w9"));
        store
            .write(&p, &incidents, "i1", crate::protocol::Op::Update, data, NOW)
            .expect("write");
        store.remove_unreached(&p, NOW).expect("settle");
        assert_eq!(ids(&store, "incidents"), ["i1", "i2"], "pending: kept");
        let batch = store.take_batch(10).expect("batch");
        store
            .apply_push_results(
                &p,
                &batch,
                &[crate::protocol::MutationResult {
                    idempotency_key: batch[0].mutation.idempotency_key.clone(),
                    status: crate::protocol::MutationStatus::Applied,
                    version: 2,
                    row: None,
                    error: None,
                }],
                NOW,
            )
            .expect("results");
        // Applied, and the server says the row is outside the profile (row:
        // null): it is gone; a kept row with a value no work order holds
        // would be checked here too.
        store.remove_unreached(&p, NOW).expect("settle");
        assert_eq!(ids(&store, "incidents"), ["i2"]);
    }

    #[test]
    fn related_values_are_queued_by_arriving_rows_and_leave_once_fetched() {
        let dir = tempfile::tempdir().expect("dir");
        let (store, p) = settled_store(dir.path());
        let key = crate::store::related_rule_key("work_orders", "id", "bookings", "work_order_id");
        let bookings = p.table("bookings").expect("bookings").clone();
        let work_orders = p.table("work_orders").expect("work_orders").clone();
        assert!(
            store
                .take_related_pending(&key, &bookings, "work_order_id")
                .expect("pending")
                .is_empty()
        );
        let pg = bookings_page(vec![vec![t("b3"), t("w3"), t("2026-11-30T09:00:00Z")]], &[]);
        // Queued as the page is written (a value no booking holds yet would
        // be dropped by `take_related_pending`).
        store
            .apply_page(Some(&p), &bookings, &pg, NOW)
            .expect("page");
        let pending = store
            .take_related_pending(&key, &bookings, "work_order_id")
            .expect("pending");
        assert_eq!(pending, ["w3"]);
        store.clear_related_pending(&key, &pending).expect("clear");
        assert!(
            store
                .take_related_pending(&key, &bookings, "work_order_id")
                .expect("pending")
                .is_empty()
        );
        // The children of a work order that arrives are queued too.
        let child_key =
            crate::store::related_rule_key("incidents", "work_order_id", "work_orders", "id");
        let wo = work_order("w3", "three");
        store
            .apply_page(Some(&p), &work_orders, &wo, NOW)
            .expect("page");
        assert_eq!(
            store
                .take_related_pending(&child_key, &work_orders, "id")
                .expect("pending"),
            ["w3"]
        );
    }

    fn arrive(store: &Store, p: &SyncProfile, pg: &PullPage) {
        let table = p.table(&pg.table).expect("table").clone();
        store.apply_page(Some(p), &table, pg, NOW).expect("page");
    }

    fn pending(store: &Store, p: &SyncProfile, child: &str) -> Vec<String> {
        let (key, other, f) = match child {
            "work_orders" => (
                crate::store::related_rule_key("work_orders", "id", "bookings", "work_order_id"),
                "bookings",
                "work_order_id",
            ),
            _ => (
                crate::store::related_rule_key("incidents", "work_order_id", "work_orders", "id"),
                "work_orders",
                "id",
            ),
        };
        store
            .take_related_pending(&key, p.table(other).expect("other"), f)
            .expect("pending")
    }

    fn bookings_page(rows: Vec<Vec<Value>>, removed: &[&str]) -> PullPage {
        page(
            "bookings",
            &["id", "work_order_id", "start_time"],
            rows,
            removed,
        )
    }

    fn work_order(id: &str, title: &str) -> PullPage {
        page(
            "work_orders",
            &["id", "title"],
            vec![vec![t(id), t(title)]],
            &[],
        )
    }

    fn booking(id: &str, wo: &str) -> PullPage {
        bookings_page(vec![vec![t(id), t(wo), t("2026-11-30T10:00:00Z")]], &[])
    }

    #[test]
    fn a_row_that_arrives_changed_with_the_same_related_value_costs_no_fetch() {
        let dir = tempfile::tempdir().expect("dir");
        let (store, p) = settled_store(dir.path());
        arrive(&store, &p, &booking("b1", "w1"));
        let wo = work_order("w1", "edited");
        arrive(&store, &p, &wo);
        assert!(pending(&store, &p, "work_orders").is_empty());
        assert!(pending(&store, &p, "incidents").is_empty());
        // A new related value, or a new row, is fetched.
        arrive(&store, &p, &booking("b1", "w2"));
        arrive(&store, &p, &booking("b5", "w5"));
        assert_eq!(pending(&store, &p, "work_orders"), ["w2", "w5"]);
    }

    #[test]
    fn rows_of_a_snapshot_are_queued_only_for_tables_whose_download_began_before_it() {
        let p = profile();
        let table = |name: &str| p.table(name).expect("table").clone();
        let (bookings, work_orders) = (table("bookings"), table("work_orders"));
        // Two bookings of the snapshot (b1, b2), then one changed since (b3).
        let body = |snapshot_rows: &str| {
            let rows = r#""rows": [[1, "b1", "w1", "2026-11-30T09:00:00Z"],
                [1, "b2", "w2", "2026-11-30T09:00:00Z"], [1, "b3", "w3", "2026-11-30T09:00:00Z"]]"#;
            let head =
                r#""table": "bookings", "profile_version": 1, "cursor": "c", "has_more": true"#;
            let columns = r#""columns": ["_version", "id", "work_order_id", "start_time"]"#;
            let body = match snapshot_rows {
                "before" => {
                    format!(r#"{{{head}, "snapshot_rows": 2, {columns}, {rows}, "removed": []}}"#)
                }
                "after" => {
                    format!(r#"{{{head}, {columns}, {rows}, "snapshot_rows": 2, "removed": []}}"#)
                }
                _ => format!(r#"{{{head}, {columns}, {rows}, "removed": []}}"#),
            };
            crate::codec::Body::plain(body.into_bytes())
        };
        let fresh = |name: &str| {
            let dir = tempfile::tempdir().expect("dir");
            let store = Store::open(&dir.path().join(format!("{name}.db"))).expect("open");
            store.apply_profile(&p, NOW).expect("profile");
            (dir, store)
        };
        let apply = |store: &Store, how: &str| {
            store
                .apply_page_json(Some(&p), &bookings, &body(how), NOW, |_| None)
                .expect("page");
        };
        // The work orders have begun no download: theirs selects it all.
        let (_d, store) = fresh("none");
        store.begin_pull(&bookings, NOW).expect("begin");
        apply(&store, "before");
        assert!(pending(&store, &p, "work_orders").is_empty());
        // Begun after the bookings: the snapshot's rows are covered.
        let (_d, store) = fresh("after");
        store.begin_pull(&bookings, NOW).expect("begin");
        store.begin_pull(&work_orders, NOW).expect("begin");
        apply(&store, "before");
        assert_eq!(pending(&store, &p, "work_orders"), ["w3"]);
        // A count that comes after the rows is not used; none at all
        // covers nothing.
        let (_d, store) = fresh("late");
        store.begin_pull(&bookings, NOW).expect("begin");
        store.begin_pull(&work_orders, NOW).expect("begin");
        apply(&store, "after");
        assert_eq!(pending(&store, &p, "work_orders"), ["w1", "w2", "w3"]);
        let (_d, store) = fresh("unsaid");
        store.begin_pull(&bookings, NOW).expect("begin");
        store.begin_pull(&work_orders, NOW).expect("begin");
        apply(&store, "none");
        assert_eq!(pending(&store, &p, "work_orders"), ["w1", "w2", "w3"]);
        // Begun before the bookings' download (which restarted since): its
        // walk may have passed what their snapshot reaches.
        let (_d, store) = fresh("before");
        store.begin_pull(&work_orders, NOW).expect("begin");
        store.begin_pull(&bookings, NOW).expect("begin");
        apply(&store, "before");
        assert_eq!(pending(&store, &p, "work_orders"), ["w1", "w2", "w3"]);
        // A download from the empty cursor drops what was queued for it.
        store.begin_pull(&bookings, NOW).expect("begin");
        apply(&store, "none");
        store.restart_table("work_orders").expect("restart");
        store.begin_pull(&work_orders, NOW).expect("begin");
        assert!(pending(&store, &p, "work_orders").is_empty());
    }

    #[test]
    fn a_row_two_versions_on_fetches_again_and_so_do_the_rows_it_fetches() {
        let dir = tempfile::tempdir().expect("dir");
        let (store, p) = settled_store(dir.path());
        // b1 was deactivated and reactivated on the server since the
        // device's copy (version 1): what it reaches may have been
        // downloaded while it was hidden. It comes back as the device
        // holds it, the version aside.
        let unchanged = |id: &str, wo: &str, version: i64| {
            let mut b = bookings_page(vec![vec![t(id), t(wo), t("2026-11-30T09:00:00Z")]], &[]);
            b.rows[0][0] = Value::Integer(version);
            b
        };
        let b1 = unchanged("b1", "w1", 3);
        arrive(&store, &p, &b1);
        assert_eq!(pending(&store, &p, "work_orders"), ["w1"]);
        // w1 comes back by fetch: its incidents are fetched again.
        let work_orders = p.table("work_orders").expect("work_orders").clone();
        let wo = work_order("w1", "one");
        store
            .apply_fetched(&p, &work_orders, &wo.columns, &wo.rows)
            .expect("fetched");
        assert_eq!(pending(&store, &p, "incidents"), ["w1"]);
        // One version on is one edit: nothing to fetch, whether the
        // edit moved a column the bookings' rules read or not.
        arrive(&store, &p, &unchanged("b2", "w2", 2));
        let mut b2 = booking("b2", "w2");
        b2.rows[0][0] = Value::Integer(3);
        arrive(&store, &p, &b2);
        assert_eq!(pending(&store, &p, "work_orders"), ["w1"]);
        // Two on again from there, the start moved too.
        let mut b2 = booking("b2", "w2");
        b2.rows[0][0] = Value::Integer(5);
        arrive(&store, &p, &b2);
        assert_eq!(pending(&store, &p, "work_orders"), ["w1", "w2"]);
    }

    #[test]
    fn a_store_of_the_previous_version_is_upgraded() {
        let dir = tempfile::tempdir().expect("dir");
        // What the previous version left: no settle column, no triggers,
        // and the settled related values in `_fs_related_seen` (w2 was
        // never fetched for work orders).
        let path = earlier_store(
            dir.path(),
            "DROP TRIGGER _fs_lost_0_d; DROP TRIGGER _fs_lost_0_u;
             DROP TRIGGER _fs_lost_1_d; DROP TRIGGER _fs_lost_1_u;
             ALTER TABLE _fs_tables DROP COLUMN settle_all;
             CREATE TABLE _fs_related_seen (rule TEXT NOT NULL, value TEXT NOT NULL,
                 PRIMARY KEY (rule, value)) WITHOUT ROWID;
             INSERT INTO _fs_related_seen VALUES
                 ('work_orders.id<-bookings.work_order_id', 'w1'),
                 ('incidents.work_order_id<-work_orders.id', 'w1'),
                 ('incidents.work_order_id<-work_orders.id', 'w2');",
        );
        let store = Store::open(&path).expect("reopen");
        let p = profile();
        let bookings = p.table("bookings").expect("bookings").clone();
        let key = crate::store::related_rule_key("work_orders", "id", "bookings", "work_order_id");
        assert_eq!(
            store
                .take_related_pending(&key, &bookings, "work_order_id")
                .expect("pending"),
            ["w2"]
        );
        let (triggers, whole): (i64, i64) = store
            .with_reader(|c| {
                Ok((
                    c.query_row(
                        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'trigger' AND name LIKE '_fs_lost_%'",
                        [],
                        |r| r.get(0),
                    )?,
                    c.query_row("SELECT MIN(settle_all) FROM _fs_tables", [], |r| r.get(0))?,
                ))
            })
            .expect("state");
        assert_eq!((triggers, whole), (4, 1));
        // A store that is current is left as it is (no full evaluation is
        // asked for again).
        store
            .with_writer(|c| {
                c.execute("UPDATE _fs_tables SET settle_all = 0", [])?;
                Ok(())
            })
            .expect("settled");
        drop(store);
        let store = Store::open(&path).expect("open again");
        let whole: i64 = store
            .with_reader(|c| {
                Ok(c.query_row("SELECT MAX(settle_all) FROM _fs_tables", [], |r| r.get(0))?)
            })
            .expect("state");
        assert_eq!(whole, 0);
    }

    #[test]
    fn triggers_of_an_earlier_version_are_replaced_on_open() {
        let dir = tempfile::tempdir().expect("dir");
        // The earlier trigger: `INSERT OR IGNORE`, which a pulled row's
        // upsert overrides.
        let path = earlier_store(
            dir.path(),
            "DROP TRIGGER _fs_lost_0_u;
             CREATE TRIGGER _fs_lost_0_u AFTER UPDATE OF work_order_id ON bookings
               WHEN old.work_order_id IS NOT NULL AND old.work_order_id IS NOT new.work_order_id
               BEGIN INSERT OR IGNORE INTO _fs_settle_lost (tbl, col, value)
                 VALUES ('bookings', 'work_order_id', CAST(old.work_order_id AS TEXT)); END;",
        );
        let store = Store::open(&path).expect("reopen");
        let sql: String = store
            .with_reader(|c| {
                Ok(c.query_row(
                    "SELECT sql FROM sqlite_master WHERE name = '_fs_lost_0_u'",
                    [],
                    |r| r.get(0),
                )?)
            })
            .expect("trigger");
        assert!(sql.contains("WHERE NOT EXISTS"), "{sql}");
        assert!(!sql.contains("OR IGNORE"), "{sql}");
    }
}
