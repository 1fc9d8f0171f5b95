//! The related-value queue (`_fs_related_pending`): related values whose
//! rows must be fetched (`POST /v1/sync/fetch`), queued as rows arrive or
//! are written (see [`RelatedQueue`] for when); a value leaves the queue
//! when its fetch is applied, or when no local row holds it any more.

use std::collections::{BTreeMap, BTreeSet};

use rusqlite::{Connection, OptionalExtension, params};

use super::rows::{LOCAL_VERSION_COLUMN, distinct_keys, page_columns, text_like, value_key};
use super::triggers::{ensure_index, holds_sql};
use crate::error::Result;
use crate::profile::{RelatedRule, SyncProfile, SyncTable, quote_ident};
use crate::protocol::VERSION_COLUMN;
use crate::value::Value;

/// The comparison key of a related value (text as is, numbers as written).
/// The key under which the values a related-rows rule was settled for are
/// queued in `_fs_related_pending` (the sync's settling and
/// `related::RelatedQueue` must agree on it).
pub(crate) fn related_rule_key(
    table: &str,
    column: &str,
    other: &str,
    foreign_column: &str,
) -> String {
    format!("{table}.{column}<-{other}.{foreign_column}")
}

/// The key of a related-rows rule in `_fs_related_pending`.
pub(super) fn rule_key(r: &RelatedRule<'_>) -> String {
    related_rule_key(&r.table.name, r.column, r.other, r.foreign_column)
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
pub(super) fn read_held(r: &rusqlite::Row<'_>, rules: usize) -> rusqlite::Result<HeldCopy> {
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
    let columns = page_columns(table);
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
