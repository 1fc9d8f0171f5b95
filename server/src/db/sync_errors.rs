//! The Sync Errors log: entries, facets, retries recorded.

use std::collections::BTreeMap;

use fieldsync_protocol::Value;
use fieldsync_protocol::protocol::{Mutation, MutationResult, Op, codes};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::sql::int;
use crate::sql::{Conn, Row, opt_text, text};
use crate::store_error::StoreResult;

use super::backend::Db;
use super::devices::device_id_ok;
use super::records::json_opt;
use super::users::User;

/// An entry of the Sync Errors log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncErrorEntry {
    pub id: i64,
    pub at: String,
    /// `conflict` or `rejected`.
    pub kind: String,
    pub code: String,
    pub message: String,
    pub table: String,
    pub record_id: String,
    pub user_id: String,
    pub device_id: Option<String>,
    /// `insert`, `update` or `delete`.
    pub action: String,
    pub idempotency_key: String,
    pub base_version: i64,
    pub server_version: i64,
    pub device_data: Option<BTreeMap<String, Value>>,
    pub server_data: Option<BTreeMap<String, Value>>,
    /// Set when the device's data was larger than [`SYNC_ERROR_DATA_BYTES`]:
    /// `device_data` was not kept, only its size and digest.
    pub device_data_cut: Option<DataCut>,
    /// Likewise for the server's data.
    pub server_data_cut: Option<DataCut>,
}

/// What the Sync Errors log keeps of data too large to store: its size as
/// JSON and its SHA-256, enough to tell two versions apart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataCut {
    pub bytes: u64,
    pub sha256: String,
}

/// Largest device or server data, as JSON, one Sync Errors entry keeps.
pub const SYNC_ERROR_DATA_BYTES: usize = 16 * 1024;

/// The data of a Sync Errors entry as stored: the JSON, or, past
/// [`SYNC_ERROR_DATA_BYTES`], what is kept of it.
pub(super) fn kept_data(json: Option<String>) -> StoreResult<(Option<String>, Option<String>)> {
    match json {
        Some(j) if j.len() > SYNC_ERROR_DATA_BYTES => {
            let cut = DataCut {
                bytes: j.len() as u64,
                sha256: hex::encode(Sha256::digest(j.as_bytes())),
            };
            let cut = serde_json::to_string(&cut)?;
            Ok((None, Some(cut)))
        }
        other => Ok((other, None)),
    }
}

/// Filter of the Sync Errors log.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SyncErrorFilter {
    pub user: Option<String>,
    pub table: Option<String>,
    pub kind: Option<String>,
    /// Only entries older than this id (the last id of the previous page).
    pub before: Option<i64>,
    pub limit: Option<u32>,
}

/// The latest retry of a Sync Errors entry by an administrator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncErrorRetry {
    pub sync_error_id: i64,
    pub at: String,
    pub retried_by: String,
    /// Whether the device's change was applied.
    pub outcome: RetryOutcome,
    /// Version of the record after the retried change was applied (0 when
    /// it failed).
    pub version: i64,
    /// Why the change still could not be applied (a failed retry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// How a retry of a Sync Errors entry ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryOutcome {
    /// The device's change was applied; the entry cannot be retried again.
    Applied,
    /// A rule still refused the change; nothing changed, and the entry may
    /// be retried again.
    Failed,
}

impl RetryOutcome {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            RetryOutcome::Applied => "applied",
            RetryOutcome::Failed => "failed",
        }
    }

    pub(super) fn parse(s: &str) -> RetryOutcome {
        match s {
            "failed" => RetryOutcome::Failed,
            _ => RetryOutcome::Applied,
        }
    }
}

/// Distinct values of the Sync Errors log, for the console's filters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SyncErrorFacets {
    pub users: Vec<String>,
    pub tables: Vec<String>,
    pub kinds: Vec<String>,
}

pub(super) const SYNC_ERROR_COLUMNS: &str = "id, at, kind, code, message, tbl, row_id, user_id, device_id, action, idempotency_key, base_version, server_version, device_data, server_data, device_data_cut, server_data_cut";

pub(super) fn sync_error_from_row(r: &Row) -> StoreResult<SyncErrorEntry> {
    Ok(SyncErrorEntry {
        id: r.i64(0)?,
        at: r.text(1)?,
        kind: r.text(2)?,
        code: r.text(3)?,
        message: r.text(4)?,
        table: r.text(5)?,
        record_id: r.text(6)?,
        user_id: r.text(7)?,
        device_id: r.opt_text(8)?,
        action: r.text(9)?,
        idempotency_key: r.text(10)?,
        base_version: r.i64(11)?,
        server_version: r.i64(12)?,
        device_data: json_opt(r.opt_text(13)?),
        server_data: json_opt(r.opt_text(14)?),
        device_data_cut: json_opt(r.opt_text(15)?),
        server_data_cut: json_opt(r.opt_text(16)?),
    })
}

impl Db {
    pub(super) fn log_sync_error(
        &self,
        c: &mut dyn Conn,
        user: &User,
        device_id: Option<&str>,
        m: &Mutation,
        result: &MutationResult,
        kind: &str,
    ) -> StoreResult<()> {
        let device_data = if m.op == Op::Delete {
            None
        } else {
            Some(serde_json::to_string(&m.data)?)
        };
        let server_data = result.row.as_ref().map(serde_json::to_string).transpose()?;
        let (code, message) = match &result.error {
            Some(e) => (e.code.clone(), e.message.clone()),
            None => (codes::CONFLICT.to_owned(), "the record changed on the server since the device read it; the server's version was kept".to_owned()),
        };
        let (device_data, device_data_cut) = kept_data(device_data)?;
        let (server_data, server_data_cut) = kept_data(server_data)?;
        let last_error = format!("{}/{}: {code}: {message}", m.table, m.id);
        c.execute(
            "INSERT INTO _fs_sync_errors (at, kind, code, message, tbl, row_id, user_id, device_id, action, idempotency_key, base_version, server_version, device_data, server_data, device_data_cut, server_data_cut)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            &[
                text(self.now_text()),
                text(kind),
                text(code),
                text(message),
                text(m.table.clone()),
                text(m.id.clone()),
                text(user.id.clone()),
                opt_text(device_id),
                text(m.op.as_str()),
                text(m.idempotency_key.clone()),
                int(m.base_version),
                int(result.version),
                opt_text(device_data),
                opt_text(server_data),
                opt_text(device_data_cut),
                opt_text(server_data_cut),
            ],
        )?;
        // The device's last error, for the device list (`GET
        // /v1/admin/devices`); the device row may not exist yet (the push
        // is its first request).
        if let Some(device) = device_id.filter(|d| device_id_ok(d)) {
            let now = self.now_text();
            c.execute(
                "INSERT INTO _fs_devices (id, user_id, first_seen, last_seen, last_error)
                 VALUES (?, ?, ?, ?, ?)
                 ON CONFLICT (id, user_id) DO UPDATE SET last_error = excluded.last_error",
                &[
                    text(device),
                    text(user.id.clone()),
                    text(now.clone()),
                    text(now),
                    text(last_error),
                ],
            )?;
        }
        Ok(())
    }

    /// Entries of the Sync Errors log, newest first.
    pub fn sync_errors(&self, filter: &SyncErrorFilter) -> StoreResult<Vec<SyncErrorEntry>> {
        let mut sql = format!("SELECT {SYNC_ERROR_COLUMNS} FROM _fs_sync_errors WHERE 1 = 1");
        let mut params = Vec::new();
        for (column, value) in [
            ("user_id", &filter.user),
            ("tbl", &filter.table),
            ("kind", &filter.kind),
        ] {
            if let Some(v) = value {
                sql.push_str(&format!(" AND {column} = ?"));
                params.push(text(v.clone()));
            }
        }
        if let Some(before) = filter.before {
            sql.push_str(" AND id < ?");
            params.push(int(before));
        }
        sql.push_str(" ORDER BY id DESC LIMIT ?");
        params.push(int(i64::from(filter.limit.unwrap_or(200).min(1000))));
        self.read(|c| {
            c.query(&sql, &params)?
                .iter()
                .map(sync_error_from_row)
                .collect()
        })
    }

    /// One entry of the Sync Errors log.
    pub fn sync_error(&self, id: i64) -> StoreResult<Option<SyncErrorEntry>> {
        self.read(|c| {
            c.query_opt(
                &format!("SELECT {SYNC_ERROR_COLUMNS} FROM _fs_sync_errors WHERE id = ?"),
                &[int(id)],
            )?
            .as_ref()
            .map(sync_error_from_row)
            .transpose()
        })
    }

    /// Distinct users, tables and kinds of the Sync Errors log.
    pub fn sync_error_facets(&self) -> StoreResult<SyncErrorFacets> {
        self.read(|c| {
            let mut distinct = |column: &str| -> StoreResult<Vec<String>> {
                c.query(
                    &format!(
                        "SELECT DISTINCT {column} FROM _fs_sync_errors ORDER BY {column} LIMIT 500"
                    ),
                    &[],
                )?
                .iter()
                .map(|r| r.text(0))
                .collect()
            };
            Ok(SyncErrorFacets {
                users: distinct("user_id")?,
                tables: distinct("tbl")?,
                kinds: distinct("kind")?,
            })
        })
    }

    /// Retries of the given Sync Errors entries, by entry id.
    pub fn sync_error_retries(&self, ids: &[i64]) -> StoreResult<BTreeMap<i64, SyncErrorRetry>> {
        if ids.is_empty() {
            return Ok(BTreeMap::new());
        }
        let placeholders = vec!["?"; ids.len()].join(", ");
        let sql = format!(
            "SELECT sync_error_id, at, retried_by, version, outcome, message FROM _fs_sync_error_retries WHERE sync_error_id IN ({placeholders})"
        );
        let params: Vec<Value> = ids.iter().map(|i| int(*i)).collect();
        let rows = self.read(|c| c.query(&sql, &params))?;
        let mut out = BTreeMap::new();
        for r in &rows {
            let retry = SyncErrorRetry {
                sync_error_id: r.i64(0)?,
                at: r.text(1)?,
                retried_by: r.text(2)?,
                version: r.i64(3)?,
                outcome: RetryOutcome::parse(&r.text(4)?),
                message: r.opt_text(5)?,
            };
            out.insert(retry.sync_error_id, retry);
        }
        Ok(out)
    }
}
