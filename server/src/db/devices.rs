//! Devices: last seen, last sync, profile version.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::sql::{Conn, opt_text, text};
use crate::store_error::StoreResult;

use super::backend::Db;

/// Whether a device id is one the server records (1 to 128 bytes): the
/// `x-fieldsync-device-id` header is read only within this bound, and the
/// device list and its last errors keep only such ids.
pub(crate) fn device_id_ok(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128
}

/// A device seen by the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceEntry {
    pub id: String,
    pub user_id: String,
    pub first_seen: String,
    pub last_seen: String,
    pub last_sync_at: Option<String>,
    pub app_version: Option<String>,
    pub last_error: Option<String>,
}

/// The newest Sync Errors entry of one device.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceLastError {
    pub at: String,
    pub message: String,
}

/// [`Db::touch_device`] inside the caller's write transaction (telemetry
/// records a device's app version with its events). Ignores a device id
/// that is empty or longer than 128 bytes.
pub(crate) fn touch_device_in(
    c: &mut dyn Conn,
    now: &str,
    device_id: &str,
    user_id: &str,
    synced: bool,
    app_version: Option<&str>,
) -> StoreResult<()> {
    if !device_id_ok(device_id) {
        return Ok(());
    }
    let now = now.to_owned();
    let synced_at = synced.then(|| now.clone());
    c.execute(
        "INSERT INTO _fs_devices (id, user_id, first_seen, last_seen, last_sync_at, app_version)
         VALUES (?1, ?2, ?3, ?3, ?4, ?5)
         ON CONFLICT (id, user_id) DO UPDATE SET last_seen = excluded.last_seen,
           last_sync_at = COALESCE(excluded.last_sync_at, _fs_devices.last_sync_at),
           app_version = COALESCE(excluded.app_version, _fs_devices.app_version)",
        &[
            text(device_id),
            text(user_id),
            text(now),
            opt_text(synced_at),
            opt_text(app_version),
        ],
    )?;
    Ok(())
}

impl Db {
    /// Records that a device was seen (and, with `synced`, that it synced).
    pub fn touch_device(
        &self,
        device_id: &str,
        user_id: &str,
        synced: bool,
        app_version: Option<&str>,
    ) -> StoreResult<()> {
        if !device_id_ok(device_id) {
            return Ok(());
        }
        let now = self.now_text();
        self.write(|c| touch_device_in(c, &now, device_id, user_id, synced, app_version))
    }

    /// Every device seen.
    pub fn devices(&self) -> StoreResult<Vec<DeviceEntry>> {
        self.read(|c| {
            c.query(
                "SELECT id, user_id, first_seen, last_seen, last_sync_at, app_version, last_error
                 FROM _fs_devices ORDER BY last_seen DESC",
                &[],
            )?
            .iter()
            .map(|r| {
                Ok(DeviceEntry {
                    id: r.text(0)?,
                    user_id: r.text(1)?,
                    first_seen: r.text(2)?,
                    last_seen: r.text(3)?,
                    last_sync_at: r.opt_text(4)?,
                    app_version: r.opt_text(5)?,
                    last_error: r.opt_text(6)?,
                })
            })
            .collect()
        })
    }

    /// The newest Sync Errors entry of each (device, user).
    pub fn device_last_errors(&self) -> StoreResult<BTreeMap<(String, String), DeviceLastError>> {
        let rows = self.read(|c| {
            c.query(
                "SELECT e.device_id, e.user_id, e.at, e.message FROM _fs_sync_errors e
                 JOIN (SELECT device_id, user_id, MAX(id) AS id FROM _fs_sync_errors
                       WHERE device_id IS NOT NULL GROUP BY device_id, user_id) last ON last.id = e.id",
                &[],
            )
        })?;
        rows.iter()
            .map(|r| {
                Ok((
                    (r.text(0)?, r.text(1)?),
                    DeviceLastError {
                        at: r.text(2)?,
                        message: r.text(3)?,
                    },
                ))
            })
            .collect()
    }
}
