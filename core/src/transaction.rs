//! Local transactions: several writes applied atomically on the device and
//! uploaded as one unit the server applies whole or not at all.
//!
//! Every write is checked first (its table, fields and the profile's write
//! rights), then all are applied in one SQLite transaction with their outbox
//! entries, marked with the transaction's id ([`crate::store::Store::write_transaction`]).
//! The outbox uploads a transaction's entries together, in one push request,
//! each carrying a [`crate::protocol::TransactionMark`]; the server applies
//! them whole, or refuses them all when one is refused or (conflict
//! detection on) conflicts, and the device then takes the server's rows
//! back for every one of them (`docs/protocol.md`, "Transactions").

use std::collections::BTreeMap;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::protocol::{MAX_TRANSACTION_WRITES, Op};
use crate::store::LocalWrite;
use crate::value::{Record, Value};

/// What one write of a transaction does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteOp {
    /// Create the record (it must not be on the device).
    Insert,
    /// Change fields of a record on the device.
    Update,
    /// Update the record if it is on the device, create it otherwise.
    Put,
    /// Delete a record on the device.
    Delete,
}

/// One write of a transaction ([`Engine::transaction`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Write {
    pub op: WriteOp,
    pub table: String,
    pub id: String,
    /// The fields to set (none for a delete).
    #[serde(default)]
    pub fields: BTreeMap<String, Value>,
}

impl Engine {
    /// Applies `writes` in order as one transaction: on the device all of
    /// them commit together or none does (the first failing write's error is
    /// returned and nothing is kept), and they are uploaded together for the
    /// server to apply whole or not at all. Returns each write's record
    /// (none for a delete). At most [`MAX_TRANSACTION_WRITES`] writes.
    pub fn transaction(&self, writes: Vec<Write>) -> Result<Vec<Option<Record>>> {
        self.transaction_with_probe(writes, &mut |_| {})
    }

    /// [`Engine::transaction`], calling `after_each` with each write's index
    /// once it is applied, before the transaction commits: the headless
    /// device's crash tests stop the process there.
    pub fn transaction_with_probe(
        &self,
        writes: Vec<Write>,
        after_each: &mut dyn FnMut(usize),
    ) -> Result<Vec<Option<Record>>> {
        if writes.is_empty() {
            return Err(Error::InvalidInput(
                "a transaction holds at least one write".into(),
            ));
        }
        if writes.len() > MAX_TRANSACTION_WRITES {
            return Err(Error::InvalidInput(format!(
                "a transaction holds at most {MAX_TRANSACTION_WRITES} writes"
            )));
        }
        let profile = self.profile().ok_or_else(|| {
            Error::NoProfile(writes.first().map(|w| w.table.clone()).unwrap_or_default())
        })?;
        let mut local = Vec::with_capacity(writes.len());
        for w in writes {
            let table = self.table_checked(&w.table)?;
            let fields = if w.op == WriteOp::Delete {
                if !w.fields.is_empty() {
                    return Err(Error::InvalidInput(format!(
                        "the delete of {}/{} carries fields",
                        w.table, w.id
                    )));
                }
                Engine::check_fields(&table, &w.id, BTreeMap::new())?
            } else {
                Engine::check_fields(&table, &w.id, w.fields)?
            };
            let op = match w.op {
                WriteOp::Insert => Op::Insert,
                WriteOp::Update => Op::Update,
                WriteOp::Delete => Op::Delete,
                // Decided by the write before it in the transaction, or
                // by the device's row.
                WriteOp::Put => {
                    let earlier = local.iter().rev().find_map(|l: &LocalWrite| {
                        (l.table.name == table.name && l.id == w.id).then_some(l.op)
                    });
                    match earlier {
                        Some(Some(Op::Delete)) => Op::Insert,
                        Some(_) => Op::Update,
                        None => match self.store.get(&table, &w.id) {
                            Ok(_) => Op::Update,
                            Err(Error::RecordNotFound { .. }) => Op::Insert,
                            Err(e) => return Err(e),
                        },
                    }
                }
            };
            Engine::check_rights(&table, op, &fields)?;
            let fields = if op == Op::Insert {
                Engine::with_defaults(&table, fields)?
            } else {
                fields
            };
            local.push(LocalWrite {
                table,
                id: w.id,
                op: Some(op),
                data: fields,
            });
        }
        let records =
            self.store
                .write_transaction(&profile, &local, self.clock.now_ms(), after_each)?;
        self.publish_status();
        Ok(records)
    }
}
