//! The store's key-value tables: `_fs_meta` (device id, installed
//! profile, settle day) and `_fs_settings` (the sync settings).

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::{Error, Result};
use crate::profile::SyncProfile;
use crate::value::Value;

/// A value of `_fs_meta`.
pub(super) fn meta_value(conn: &Connection, key: &str) -> Result<Option<String>> {
    Ok(conn
        .query_row("SELECT value FROM _fs_meta WHERE key = ?1", [key], |r| {
            r.get(0)
        })
        .optional()?)
}

/// Writes a value of `_fs_meta`.
pub(super) fn put_meta(conn: &Connection, key: &str, value: &str) -> Result<()> {
    conn.execute(
        "INSERT INTO _fs_meta (key, value) VALUES (?1, ?2)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )?;
    Ok(())
}

/// The offline profile stored with the data, if any.
pub(super) fn stored_profile(conn: &Connection) -> Result<Option<SyncProfile>> {
    meta_value(conn, "profile")?
        .map(|text| {
            serde_json::from_str(&text).map_err(|source| Error::CorruptStored {
                what: "profile",
                source,
            })
        })
        .transpose()
}

pub(super) fn json_map(text: &str) -> Result<BTreeMap<String, Value>> {
    serde_json::from_str(text).map_err(|source| Error::CorruptStored {
        what: "JSON",
        source,
    })
}

/// Reads a persisted setting.
pub(super) fn setting(conn: &Connection, key: &str) -> Result<Option<String>> {
    Ok(conn
        .query_row(
            "SELECT value FROM _fs_settings WHERE key = ?1",
            [key],
            |r| r.get(0),
        )
        .optional()?)
}

/// Persists a setting.
pub(super) fn set_setting(conn: &Connection, key: &str, value: &str) -> Result<()> {
    conn.execute(
        "INSERT INTO _fs_settings (key, value) VALUES (?1, ?2)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )?;
    Ok(())
}
