//! Local transactions, exported: several writes applied atomically on the
//! device and uploaded as one unit that the server applies whole or not at
//! all (the core's [`fieldsync_core::Engine::transaction`]); this module
//! converts and delegates.

use std::collections::HashMap;

use crate::Engine;
use crate::errors::FieldSyncError;
use crate::records::{Record, core_fields};

/// What one write of a transaction does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum WriteOp {
    /// Create the record (it must not be on the device).
    Insert,
    /// Change the given fields of a record on the device.
    Update,
    /// Update the record if it is on the device, create it otherwise.
    Put,
    /// Delete a record on the device (no fields).
    Delete,
}

/// One write of a transaction.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct Write {
    /// What the write does.
    pub op: WriteOp,
    /// A synced table.
    pub table: String,
    /// The record's id.
    pub id: String,
    /// The fields to set (empty for a delete).
    pub fields: HashMap<String, crate::Value>,
}

impl From<Write> for fieldsync_core::Write {
    fn from(w: Write) -> Self {
        fieldsync_core::Write {
            op: match w.op {
                WriteOp::Insert => fieldsync_core::WriteOp::Insert,
                WriteOp::Update => fieldsync_core::WriteOp::Update,
                WriteOp::Put => fieldsync_core::WriteOp::Put,
                WriteOp::Delete => fieldsync_core::WriteOp::Delete,
            },
            table: w.table,
            id: w.id,
            fields: core_fields(w.fields),
        }
    }
}

#[uniffi::export]
impl Engine {
    /// Applies `writes` in order as one transaction: on the device all of
    /// them commit together or none does (the first failing write's error
    /// is returned and nothing is kept), and the next sync uploads them
    /// together for the server to apply whole or not at all. If the server
    /// refuses one (or, with conflict detection on, one conflicts), it
    /// applies none, each write is reported as a sync error and the device
    /// takes the server's rows back. Returns each write's record (none for a
    /// delete). At most 500 writes.
    pub async fn transaction(
        &self,
        writes: Vec<Write>,
    ) -> Result<Vec<Option<Record>>, FieldSyncError> {
        let writes: Vec<fieldsync_core::Write> = writes.into_iter().map(Into::into).collect();
        self.local(move |e| {
            e.transaction(writes)
                .map(|v| v.into_iter().map(|r| r.map(Into::into)).collect())
        })
        .await
    }
}
