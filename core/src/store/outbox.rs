//! The outbox (`_fs_outbox`): local writes and the changes they queue for
//! upload, committed together; batches taken in order; the server's
//! results applied.

use std::collections::{BTreeMap, HashMap};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::meta::json_map;
use super::related;
use super::rows::{LOCAL_VERSION_COLUMN, Upsert, delete_row, read_row, row_size, upsert_row};
use super::sync_errors::{LocalSyncError, record_error};
use crate::error::{Error, Result};
use crate::profile::{SyncProfile, SyncTable, quote_ident};
use crate::protocol::{
    MAX_MUTATIONS_PER_PUSH, MAX_ROW_BYTES, Mutation, MutationResult, MutationStatus, Op,
    TransactionMark,
};
use crate::value::{Record, Value};

/// One write of a local transaction ([`Store::write_transaction`]), already
/// checked against the profile.
#[derive(Debug, Clone)]
pub struct LocalWrite {
    pub table: SyncTable,
    pub id: String,
    /// The operation; none: update the row if the device has it, else
    /// create it.
    pub op: Option<Op>,
    pub data: BTreeMap<String, Value>,
}

/// A change waiting in the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEntry {
    pub seq: i64,
    pub mutation: Mutation,
    pub attempts: i64,
}

/// What applying push results did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PushApplied {
    pub applied: u64,
    pub conflicts: Vec<LocalSyncError>,
    pub rejected: Vec<LocalSyncError>,
}

pub(super) fn has_pending(conn: &Connection, table: &str, id: &str) -> Result<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM _fs_outbox WHERE tbl = ?1 AND row_id = ?2 LIMIT 1")?
        .exists(params![table, id])?)
}

/// Applies a local change and queues it for upload inside the open
/// transaction `tx`. A change merges into the row's latest outbox entry only
/// while that entry was never sent and belongs to the same local transaction
/// (`tx_id`; none: single writes), so a transaction's entries stay its own.
#[allow(clippy::too_many_arguments)]
pub(super) fn write_in(
    tx: &Connection,
    profile: &SyncProfile,
    table: &SyncTable,
    id: &str,
    op: Op,
    mut data: BTreeMap<String, Value>,
    now: i64,
    tx_id: Option<&str>,
) -> Result<Option<Record>> {
    let size = row_size(data.values(), id);
    if size > MAX_ROW_BYTES {
        return Err(Error::InvalidInput(format!(
            "the row is {size} bytes; at most {MAX_ROW_BYTES} are allowed"
        )));
    }
    data.remove(&table.primary_key);
    let current = read_row(tx, table, id)?;
    let not_found = || Error::RecordNotFound {
        table: table.name.clone(),
        id: id.to_owned(),
    };
    let base_version = current.as_ref().map(|(_, v)| *v).unwrap_or(0);
    let result = match op {
        Op::Insert => {
            if current.is_some() {
                return Err(Error::AlreadyExists {
                    table: table.name.clone(),
                    id: id.to_owned(),
                });
            }
            let mut fields = data.clone();
            fields.insert(table.primary_key.clone(), Value::Text(id.to_owned()));
            for c in &table.columns {
                fields.entry(c.name.clone()).or_insert(Value::Null);
            }
            // New related values (a booking written for another work
            // order) have their related rows fetched at the next settling.
            related::queue_related_row(tx, profile, table, &fields, None)?;
            upsert_row(tx, &Upsert::whole_row(tx, table)?, table, &fields, 0)?;
            Some(Record {
                table: table.name.clone(),
                id: id.to_owned(),
                version: 0,
                fields,
            })
        }
        Op::Update => {
            let (mut fields, version) = current.ok_or_else(not_found)?;
            for (k, v) in &data {
                fields.insert(k.clone(), v.clone());
            }
            // The whole row counts, so it cannot grow past the limit a
            // field at a time (nothing is written: the transaction ends
            // unused).
            let size = row_size(
                fields
                    .iter()
                    .filter(|(k, _)| **k != table.primary_key)
                    .map(|(_, v)| v),
                id,
            );
            if size > MAX_ROW_BYTES {
                return Err(Error::InvalidInput(format!(
                    "the row would be {size} bytes with this change; at most {MAX_ROW_BYTES} are allowed"
                )));
            }
            related::queue_related_row(tx, profile, table, &fields, None)?;
            upsert_row(tx, &Upsert::whole_row(tx, table)?, table, &fields, version)?;
            Some(Record {
                table: table.name.clone(),
                id: id.to_owned(),
                version,
                fields,
            })
        }
        Op::Delete => {
            current.ok_or_else(not_found)?;
            delete_row(tx, table, id)?;
            data.clear();
            None
        }
    };

    // Merge into the row's latest entry when that entry was never sent:
    // a sent entry may already be applied on the server under its key.
    let latest: Option<(i64, String, String)> = tx
        .query_row(
            "SELECT seq, op, data FROM _fs_outbox WHERE tbl = ?1 AND row_id = ?2 AND attempts = 0
             AND tx_id IS ?3
             AND seq = (SELECT MAX(seq) FROM _fs_outbox WHERE tbl = ?1 AND row_id = ?2)",
            params![table.name, id, tx_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    match latest {
        Some((seq, prev_op, prev_data)) => {
            let prev_op = Op::parse(&prev_op)
                .ok_or_else(|| Error::Storage(format!("corrupt outbox op '{prev_op}'")))?;
            let mut merged = json_map(&prev_data)?;
            let merged_op = match (prev_op, op) {
                (Op::Insert, Op::Update) => {
                    merged.extend(data);
                    Some(Op::Insert)
                }
                (Op::Insert, Op::Delete) => None,
                (Op::Update, Op::Update) => {
                    merged.extend(data);
                    Some(Op::Update)
                }
                (Op::Update, Op::Delete) => {
                    merged.clear();
                    Some(Op::Delete)
                }
                (Op::Delete, Op::Insert) => {
                    // Deleted then created again: replace every column.
                    merged = table
                        .columns
                        .iter()
                        .filter(|c| c.name != table.primary_key)
                        .map(|c| {
                            (
                                c.name.clone(),
                                data.get(&c.name).cloned().unwrap_or(Value::Null),
                            )
                        })
                        .collect();
                    Some(Op::Update)
                }
                (prev, op) => {
                    return Err(Error::Internal(format!(
                        "outbox cannot follow {} with {}",
                        prev.as_str(),
                        op.as_str()
                    )));
                }
            };
            match merged_op {
                Some(merged_op) => {
                    tx.execute(
                        "UPDATE _fs_outbox SET op = ?2, data = ?3 WHERE seq = ?1",
                        params![seq, merged_op.as_str(), serde_json::to_string(&merged)?],
                    )?;
                }
                None => {
                    tx.execute("DELETE FROM _fs_outbox WHERE seq = ?1", [seq])?;
                }
            }
        }
        None => {
            tx.execute(
                "INSERT INTO _fs_outbox (idempotency_key, tbl, row_id, op, base_version, data, created_at, tx_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    uuid::Uuid::new_v4().to_string(),
                    table.name,
                    id,
                    op.as_str(),
                    base_version,
                    serde_json::to_string(&data)?,
                    now,
                    tx_id
                ],
            )?;
        }
    }
    Ok(result)
}

pub(super) fn outbox_entries(conn: &Connection, table: Option<&str>) -> Result<Vec<OutboxEntry>> {
    outbox_entries_limited(conn, table, -1)
}

pub(super) fn outbox_entries_limited(
    conn: &Connection,
    table: Option<&str>,
    limit: i64,
) -> Result<Vec<OutboxEntry>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, idempotency_key, tbl, row_id, op, base_version, data, attempts, tx_id,
                CASE WHEN tx_id IS NULL THEN 0
                     ELSE (SELECT count(*) FROM _fs_outbox o WHERE o.tx_id = _fs_outbox.tx_id) END
         FROM _fs_outbox WHERE ?1 IS NULL OR tbl = ?1 ORDER BY seq LIMIT ?2",
    )?;
    let mut rows = stmt.query(params![table, limit])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let op: String = r.get(4)?;
        let data: String = r.get(6)?;
        out.push(OutboxEntry {
            seq: r.get(0)?,
            mutation: Mutation {
                idempotency_key: r.get(1)?,
                table: r.get(2)?,
                id: r.get(3)?,
                op: Op::parse(&op)
                    .ok_or_else(|| Error::Storage(format!("corrupt outbox op '{op}'")))?,
                base_version: r.get(5)?,
                data: json_map(&data)?,
                transaction: match r.get::<_, Option<String>>(8)? {
                    Some(id) => Some(TransactionMark {
                        id,
                        size: r.get(9)?,
                    }),
                    None => None,
                },
            },
            attempts: r.get(7)?,
        });
    }
    Ok(out)
}

/// Applies a local change and queues it for upload, in one transaction.
/// `data` must already be checked against the profile.
pub(super) fn write(
    conn: &mut Connection,
    profile: &SyncProfile,
    table: &SyncTable,
    id: &str,
    op: Op,
    data: BTreeMap<String, Value>,
    now: i64,
) -> Result<Option<Record>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let result = write_in(&tx, profile, table, id, op, data, now, None)?;
    tx.commit()?;
    Ok(result)
}

/// Applies several local changes and queues them for upload as one
/// transaction: all of them commit together, or none (the first error
/// rolls every one back), and they are uploaded in one request that the
/// server applies whole or not at all. `after_each` is called with the
/// index of each write once it is applied, inside the open transaction
/// (crash tests stop the process there). Returns each write's record
/// (none for a delete).
pub(super) fn write_transaction(
    conn: &mut Connection,
    profile: &SyncProfile,
    writes: &[LocalWrite],
    now: i64,
    after_each: &mut dyn FnMut(usize),
) -> Result<Vec<Option<Record>>> {
    let tx_id = uuid::Uuid::new_v4().to_string();
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut out = Vec::with_capacity(writes.len());
    for (i, w) in writes.iter().enumerate() {
        let write = |op| {
            write_in(
                &tx,
                profile,
                &w.table,
                &w.id,
                op,
                w.data.clone(),
                now,
                Some(&tx_id),
            )
        };
        let record = match w.op {
            None => match write(Op::Update) {
                Err(Error::RecordNotFound { .. }) => write(Op::Insert),
                other => other,
            },
            Some(op) => write(op),
        }?;
        out.push(record);
        after_each(i);
    }
    tx.commit()?;
    Ok(out)
}

/// Number of changes waiting for upload.
pub(super) fn pending_count(conn: &Connection) -> Result<u64> {
    let n: i64 = conn.query_row("SELECT COUNT(*) FROM _fs_outbox", [], |r| r.get(0))?;
    Ok(n.max(0) as u64)
}

/// Pending changes per table.
pub(super) fn pending_by_table(conn: &Connection) -> Result<HashMap<String, u64>> {
    let mut stmt = conn.prepare_cached("SELECT tbl, COUNT(*) FROM _fs_outbox GROUP BY tbl")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    let mut out = HashMap::new();
    for row in rows {
        let (t, n) = row?;
        out.insert(t, n.max(0) as u64);
    }
    Ok(out)
}

/// Takes the next batch to upload, in order, at most `max` entries and
/// never two entries of the same row (the second waits for the first's
/// result, which gives it its base version). A local transaction's
/// entries (one after the other in the outbox) go whole into one batch
/// or wait for the next, even past `max` when they alone make the
/// batch (a transaction holds at most one request's mutations). The
/// entries are marked as sent before this returns, so later local
/// writes never merge into them.
pub(super) fn take_batch(conn: &mut Connection, max: usize) -> Result<Vec<OutboxEntry>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // A transaction starting within the first `max` entries ends
    // within this many.
    let read = max.saturating_add(MAX_MUTATIONS_PER_PUSH);
    let all = outbox_entries_limited(&tx, None, i64::try_from(read).unwrap_or(i64::MAX))?;
    let mut seen = std::collections::HashSet::new();
    let mut batch = Vec::new();
    let mut rest = all.as_slice();
    while let Some(first) = rest.first() {
        let len = match &first.mutation.transaction {
            None => 1,
            Some(t) => rest
                .iter()
                .take_while(|e| {
                    e.mutation
                        .transaction
                        .as_ref()
                        .is_some_and(|u| u.id == t.id)
                })
                .count(),
        };
        let (group, tail) = rest.split_at(len);
        if !batch.is_empty() && batch.len() + group.len() > max {
            break;
        }
        if group
            .iter()
            .any(|e| seen.contains(&(e.mutation.table.as_str(), e.mutation.id.as_str())))
        {
            break;
        }
        for e in group {
            seen.insert((e.mutation.table.as_str(), e.mutation.id.as_str()));
        }
        batch.extend(group.iter().cloned());
        rest = tail;
    }
    for e in &batch {
        tx.execute(
            "UPDATE _fs_outbox SET attempts = attempts + 1 WHERE seq = ?1",
            [e.seq],
        )?;
        // A bug planted on purpose so the simulation harness can show it
        // finds one: the entry leaves before the server acknowledged it.
        #[cfg(feature = "planted-bug")]
        tx.execute("DELETE FROM _fs_outbox WHERE seq = ?1", [e.seq])?;
    }
    tx.commit()?;
    Ok(batch)
}

/// Applies the server's results for a batch, in one transaction.
pub(super) fn apply_push_results(
    conn: &mut Connection,
    profile: &SyncProfile,
    batch: &[OutboxEntry],
    results: &[MutationResult],
    now: i64,
) -> Result<PushApplied> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut out = PushApplied::default();
    let mut upserts: BTreeMap<String, Upsert> = BTreeMap::new();
    for (entry, result) in batch.iter().zip(results) {
        let m = &entry.mutation;
        tx.execute("DELETE FROM _fs_outbox WHERE seq = ?1", [entry.seq])?;
        let Some(table) = profile.table(&m.table) else {
            continue;
        };
        let remaining = has_pending(&tx, &m.table, &m.id)?;
        match result.status {
            MutationStatus::Applied => {
                out.applied += 1;
                if remaining {
                    tx.execute(
                        &format!(
                            "UPDATE {} SET {LOCAL_VERSION_COLUMN} = ?2 WHERE {} = ?1",
                            quote_ident(&table.name),
                            quote_ident(&table.primary_key)
                        ),
                        params![m.id, result.version],
                    )?;
                    tx.execute(
                        "UPDATE _fs_outbox SET base_version = ?3 WHERE tbl = ?1 AND row_id = ?2",
                        params![m.table, m.id, result.version],
                    )?;
                    continue;
                }
            }
            MutationStatus::Conflict | MutationStatus::Rejected => {
                let (kind, default_message) = if result.status == MutationStatus::Conflict {
                    ("conflict", "the server's version was kept")
                } else {
                    ("rejected", "the server refused this change")
                };
                let message = result
                    .error
                    .as_ref()
                    .map(|e| e.message.as_str())
                    .unwrap_or(default_message);
                let err = record_error(&tx, now, kind, m, message, result.row.as_ref())?;
                if result.status == MutationStatus::Conflict {
                    out.conflicts.push(err);
                } else {
                    out.rejected.push(err);
                }
                if remaining {
                    continue;
                }
            }
        }
        // No other local change waits for this row: take the server's row.
        match &result.row {
            Some(row) => {
                let mut fields = BTreeMap::new();
                for c in &table.columns {
                    let v = row.get(&c.name).cloned().unwrap_or(Value::Null);
                    let v = v
                        .coerce(c.kind)
                        .map_err(|e| Error::Protocol(format!("column '{}': {e}", c.name)))?;
                    fields.insert(c.name.clone(), v);
                }
                fields.insert(table.primary_key.clone(), Value::Text(m.id.clone()));
                related::queue_related_row(&tx, profile, table, &fields, Some(result.version))?;
                // One upsert per table for the batch: which columns are
                // indexed does not change while its results apply.
                if !upserts.contains_key(&table.name) {
                    upserts.insert(table.name.clone(), Upsert::whole_row(&tx, table)?);
                }
                upsert_row(&tx, &upserts[&table.name], table, &fields, result.version)?;
            }
            None => {
                delete_row(&tx, table, &m.id)?;
            }
        }
    }
    tx.commit()?;
    Ok(out)
}
