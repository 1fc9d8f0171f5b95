//! Server settings (key and value), conflict detection among them.

use fieldsync_protocol::protocol::codes;

use crate::sql::{Conn, text};
use crate::store_error::{StoreError, StoreResult};

use super::backend::Db;

/// Reads a user from a row of `SELECT id, name, role, profile, team_id, time_zone`.
/// A server setting, inside the caller's transaction.
pub(super) fn setting_in(c: &mut dyn Conn, key: &str) -> StoreResult<Option<String>> {
    c.query_opt("SELECT value FROM _fs_settings WHERE key = ?", &[text(key)])?
        .map(|r| r.text(0))
        .transpose()
}

impl Db {
    /// A server setting.
    pub(crate) fn setting(&self, key: &str) -> StoreResult<Option<String>> {
        self.read(|c| setting_in(c, key))
    }

    /// Sets a server setting.
    pub(crate) fn set_setting(&self, key: &str, value: &str) -> StoreResult<()> {
        self.write(|c| {
            c.execute(
                "INSERT INTO _fs_settings (key, value) VALUES (?, ?)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                &[text(key), text(value)],
            )?;
            Ok(())
        })
    }

    /// Whether conflict detection is on (off by default: the device wins).
    pub fn conflict_detection(&self) -> StoreResult<bool> {
        self.read(|c| Self::conflict_detection_in(c))
    }

    /// [`Db::conflict_detection`] inside the caller's transaction: a push
    /// reads it in its own write transaction, so a settings change is
    /// either wholly before the push or wholly after it.
    pub(super) fn conflict_detection_in(c: &mut dyn Conn) -> StoreResult<bool> {
        Ok(setting_in(c, "conflict_detection")?.as_deref() == Some("true"))
    }

    /// Turns conflict detection on or off.
    pub fn set_conflict_detection(&self, on: bool) -> StoreResult<()> {
        self.set_setting("conflict_detection", if on { "true" } else { "false" })
    }
}

const ONLINE_TABLES_KEY: &str = "online_tables";

/// The tables technicians may read whole in online mode.
pub fn online_tables(db: &Db) -> StoreResult<Vec<String>> {
    let text = db.setting(ONLINE_TABLES_KEY)?;
    Ok(text
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default())
}

/// Replaces the online-access allow-list (every name must be a model table).
pub fn set_online_tables(db: &Db, tables: &[String]) -> StoreResult<()> {
    for t in tables {
        if db.model()?.model.table(t).is_none() {
            return Err(StoreError::invalid(
                codes::UNKNOWN_TABLE,
                format!("unknown table '{t}'"),
            ));
        }
    }
    let mut sorted = tables.to_vec();
    sorted.sort();
    sorted.dedup();
    let text = serde_json::to_string(&sorted)?;
    db.set_setting(ONLINE_TABLES_KEY, &text)
}
