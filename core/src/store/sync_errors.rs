//! Sync errors kept on the device (`_fs_sync_errors`): conflicts and
//! rejected changes, with the device's and the server's versions.

use std::collections::BTreeMap;

use rusqlite::{Connection, params};

use super::meta::json_map;
use crate::error::Result;
use crate::protocol::{Mutation, Op};
use crate::value::Value;

/// A sync error kept on the device.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LocalSyncError {
    pub id: i64,
    /// Milliseconds since the epoch.
    pub at: i64,
    /// `conflict` or `rejected`.
    pub kind: String,
    pub table: String,
    pub record_id: String,
    pub action: String,
    pub message: String,
    pub device_data: Option<BTreeMap<String, Value>>,
    pub server_data: Option<BTreeMap<String, Value>>,
}

pub(super) fn record_error(
    conn: &Connection,
    now: i64,
    kind: &str,
    m: &Mutation,
    message: &str,
    server: Option<&BTreeMap<String, Value>>,
) -> Result<LocalSyncError> {
    let device_data = if m.op == Op::Delete {
        None
    } else {
        Some(m.data.clone())
    };
    let device_json = device_data
        .as_ref()
        .map(serde_json::to_string)
        .transpose()?;
    let server_json = server.map(serde_json::to_string).transpose()?;
    conn.execute(
        "INSERT INTO _fs_sync_errors (at, kind, tbl, row_id, op, message, device_data, server_data)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            now,
            kind,
            m.table,
            m.id,
            m.op.as_str(),
            message,
            device_json,
            server_json
        ],
    )?;
    Ok(LocalSyncError {
        id: conn.last_insert_rowid(),
        at: now,
        kind: kind.into(),
        table: m.table.clone(),
        record_id: m.id.clone(),
        action: m.op.as_str().into(),
        message: message.into(),
        device_data,
        server_data: server.cloned(),
    })
}

/// Sync errors kept on the device, newest first.
pub(super) fn list(conn: &Connection, limit: u32) -> Result<Vec<LocalSyncError>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, at, kind, tbl, row_id, op, message, device_data, server_data
         FROM _fs_sync_errors ORDER BY id DESC LIMIT ?1",
    )?;
    let mut rows = stmt.query([limit])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let device: Option<String> = r.get(7)?;
        let server: Option<String> = r.get(8)?;
        out.push(LocalSyncError {
            id: r.get(0)?,
            at: r.get(1)?,
            kind: r.get(2)?,
            table: r.get(3)?,
            record_id: r.get(4)?,
            action: r.get(5)?,
            message: r.get(6)?,
            device_data: device.as_deref().map(json_map).transpose()?,
            server_data: server.as_deref().map(json_map).transpose()?,
        });
    }
    Ok(out)
}
