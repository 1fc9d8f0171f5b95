//! Sync settings the user chooses on the device (C15): Wi-Fi only, whether
//! online mode may be used, telemetry, the sync frequency, smart sync and the
//! opt-in background sync.
//!
//! Settings persist in the store's `_fs_settings` table, one key per setting,
//! so they survive restarts and a reset of the offline database. Unknown or
//! corrupt stored values fall back to the documented defaults rather than
//! failing the engine. Online mode itself (the live session) is not a
//! setting: it is off after every restart, see [`crate::online`].

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::profile::{MAX_SYNC_INTERVAL_SECS, MIN_SYNC_INTERVAL_SECS};
use crate::store::Store;

/// How often scheduled syncs run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SyncFrequency {
    /// Each table at its offline profile's sync interval (default).
    Auto,
    /// At least this many seconds between syncs of a table: a table syncs at
    /// the longer of this and its profile interval.
    Every {
        /// Seconds, 300 to 86400.
        secs: u32,
    },
    /// Only when the user asks ("sync now", Refresh). The first download of a
    /// new profile still starts on its own.
    ManualOnly,
}

/// The device's sync settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncSettings {
    /// Scheduled syncs start only on an unmetered network (Wi-Fi, Ethernet).
    /// Default off.
    pub wifi_only: bool,
    /// The user may switch to online mode. Default on.
    pub online_mode_enabled: bool,
    /// Sync telemetry is collected and uploaded. Default on.
    pub telemetry_enabled: bool,
    /// Scheduled sync frequency. Default [`SyncFrequency::Auto`].
    pub frequency: SyncFrequency,
    /// Skip downloading tables the server reports unchanged. Default on.
    pub smart_sync: bool,
    /// Opt-in periodic sync while the app is in the background (beyond the
    /// seed, whose syncs start only while the app is active). Default off.
    #[serde(default)]
    pub background_sync: bool,
}

impl Default for SyncSettings {
    fn default() -> Self {
        Self {
            wifi_only: false,
            online_mode_enabled: true,
            telemetry_enabled: true,
            frequency: SyncFrequency::Auto,
            smart_sync: true,
            background_sync: false,
        }
    }
}

/// Names of the settings, as the headless device and `_fs_settings` spell them.
pub const SETTING_NAMES: [&str; 6] = [
    "wifi_only",
    "online_mode_enabled",
    "telemetry_enabled",
    "frequency",
    "smart_sync",
    "background_sync",
];

impl SyncFrequency {
    /// Text form: `auto`, `manual`, or a number of seconds.
    pub fn to_text(self) -> String {
        match self {
            SyncFrequency::Auto => "auto".into(),
            SyncFrequency::ManualOnly => "manual".into(),
            SyncFrequency::Every { secs } => secs.to_string(),
        }
    }

    /// Parses the text form, checking the interval's range.
    pub fn parse(text: &str) -> Result<SyncFrequency> {
        match text.trim() {
            "auto" => Ok(SyncFrequency::Auto),
            "manual" | "manual_only" => Ok(SyncFrequency::ManualOnly),
            other => {
                let secs: u32 = other.parse().map_err(|_| {
                    Error::InvalidInput(format!(
                        "frequency must be 'auto', 'manual' or seconds, not '{}'",
                        other.chars().take(40).collect::<String>()
                    ))
                })?;
                if !(MIN_SYNC_INTERVAL_SECS..=MAX_SYNC_INTERVAL_SECS).contains(&secs) {
                    return Err(Error::InvalidInput(format!(
                        "frequency must be {MIN_SYNC_INTERVAL_SECS} to {MAX_SYNC_INTERVAL_SECS} seconds"
                    )));
                }
                Ok(SyncFrequency::Every { secs })
            }
        }
    }
}

fn parse_bool(name: &str, text: &str) -> Result<bool> {
    match text.trim() {
        "true" | "on" | "1" | "yes" => Ok(true),
        "false" | "off" | "0" | "no" => Ok(false),
        _ => Err(Error::InvalidInput(format!(
            "setting '{name}' must be true or false"
        ))),
    }
}

impl SyncSettings {
    /// Reads the settings from the store (defaults for missing or bad values).
    pub fn load(store: &Store) -> Result<SyncSettings> {
        let mut s = SyncSettings::default();
        for name in SETTING_NAMES {
            if let Some(text) = store.setting(name)? {
                // A stored value that no longer parses keeps the default.
                let _ = s.set(name, &text);
            }
        }
        Ok(s)
    }

    /// Writes every setting to the store.
    pub fn save(&self, store: &Store) -> Result<()> {
        for name in SETTING_NAMES {
            store.set_setting(name, &self.get(name)?)?;
        }
        Ok(())
    }

    /// One setting's value as text.
    pub fn get(&self, name: &str) -> Result<String> {
        Ok(match name {
            "wifi_only" => self.wifi_only.to_string(),
            "online_mode_enabled" => self.online_mode_enabled.to_string(),
            "telemetry_enabled" => self.telemetry_enabled.to_string(),
            "frequency" => self.frequency.to_text(),
            "smart_sync" => self.smart_sync.to_string(),
            "background_sync" => self.background_sync.to_string(),
            _ => return Err(unknown(name)),
        })
    }

    /// Changes one setting from text; a bad value changes nothing.
    pub fn set(&mut self, name: &str, value: &str) -> Result<()> {
        match name {
            "wifi_only" => self.wifi_only = parse_bool(name, value)?,
            "online_mode_enabled" => self.online_mode_enabled = parse_bool(name, value)?,
            "telemetry_enabled" => self.telemetry_enabled = parse_bool(name, value)?,
            "frequency" => self.frequency = SyncFrequency::parse(value)?,
            "smart_sync" => self.smart_sync = parse_bool(name, value)?,
            "background_sync" => self.background_sync = parse_bool(name, value)?,
            _ => return Err(unknown(name)),
        }
        Ok(())
    }
}

fn unknown(name: &str) -> Error {
    Error::InvalidInput(format!(
        "unknown setting '{}' (one of {})",
        name.chars().take(40).collect::<String>(),
        SETTING_NAMES.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_persist_and_bad_values_change_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("d.db");
        {
            let store = Store::open(&path).expect("open");
            assert_eq!(
                SyncSettings::load(&store).expect("load"),
                SyncSettings::default()
            );
            let mut s = SyncSettings::default();
            s.set("wifi_only", "true").expect("set");
            s.set("frequency", "3600").expect("set");
            s.set("telemetry_enabled", "off").expect("set");
            assert!(s.set("frequency", "10").is_err());
            assert!(s.set("wifi_only", "maybe").is_err());
            assert!(s.set("colour", "blue").is_err());
            s.save(&store).expect("save");
        }
        let store = Store::open(&path).expect("reopen");
        let s = SyncSettings::load(&store).expect("load");
        assert!(s.wifi_only);
        assert!(!s.telemetry_enabled);
        assert_eq!(s.frequency, SyncFrequency::Every { secs: 3600 });
        assert!(s.online_mode_enabled);
    }
}
