//! Sync telemetry on the wire (C14): the events a device uploads in batches
//! to `POST /v1/telemetry` and the server's answer. Events carry counts,
//! durations, table names and error classes, never field values. The
//! device-side queue lives in the core; storage and charts on the server.

use serde::{Deserialize, Serialize};

/// What an event describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TelemetryKind {
    /// A whole sync.
    Sync,
    /// The download of one table within a sync.
    TableDownload,
}

/// Defines a telemetry enum carried on the wire as a lowercase string: its
/// variants with their names, `as_str`, `from_name` and serde through
/// those names. A name this build does not know reads as `Unknown`
/// (`"unknown"`), so an event from an older or newer device still decodes;
/// what to do with it is the reader's decision.
macro_rules! wire_names {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)*
            /// A name this build does not know (`"unknown"` on the wire).
            Unknown,
        }

        impl $name {
            /// The name on the wire and in the server's database.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                    $name::Unknown => "unknown",
                }
            }

            /// Reads a name; one this build does not know is `Unknown`.
            pub fn from_name(name: &str) -> $name {
                match name {
                    $($text => $name::$variant,)*
                    _ => $name::Unknown,
                }
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<$name, D::Error> {
                let name = std::borrow::Cow::<'de, str>::deserialize(d)?;
                Ok($name::from_name(&name))
            }
        }
    };
}

wire_names! {
    /// How a sync ran (the scheduler's sync mode).
    TelemetryMode {
        /// The first download of one or more tables.
        First = "first",
        /// A scheduled incremental sync of due tables.
        Delta = "delta",
        /// A user's Refresh of a table.
        Refresh = "refresh",
        /// The user's "sync now" (or a direct sync call).
        Forced = "forced",
    }
}

wire_names! {
    /// How a sync ended.
    TelemetryResult {
        /// The sync completed (possibly with conflicts or refusals).
        Success = "success",
        /// The sync stopped on an error (`failure_type` says which).
        Failure = "failure",
    }
}

wire_names! {
    /// The kind of network a sync ran on, as the app shell reported it.
    TelemetryNetwork {
        /// Wi-Fi.
        Wifi = "wifi",
        /// Mobile data.
        Cellular = "cellular",
        /// Wired.
        Ethernet = "ethernet",
        /// A connection the OS reports as none of the above.
        Other = "other",
        /// No connection.
        None = "none",
    }
}

/// One telemetry event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetryEvent {
    /// Unique id of the event (uploads are idempotent by it).
    pub id: String,
    pub kind: TelemetryKind,
    pub device_id: String,
    /// Id shared by a sync's event and its table events.
    pub sync_id: String,
    /// How the sync ran.
    pub mode: TelemetryMode,
    /// Whether it succeeded.
    pub result: TelemetryResult,
    /// Error class on failure (`network_unavailable`, `unauthorized`, ...).
    pub failure_type: Option<String>,
    /// Start, ms since the epoch.
    pub started_at: i64,
    pub duration_ms: i64,
    /// Part of the duration the app was in the foreground.
    pub active_duration_ms: i64,
    pub rows_up: u64,
    pub rows_down: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// The table, for a table download.
    pub table: Option<String>,
    /// The network the sync ran on.
    pub network_type: TelemetryNetwork,
    pub app_version: String,
    pub device_model: String,
    pub os_version: String,
    /// A completed sync: the local changes where the server kept its
    /// version (conflict detection on). A sync with conflicts completed,
    /// but is not a clean success.
    #[serde(default)]
    pub conflicts: u64,
    /// A completed sync: the local changes the server refused.
    #[serde(default)]
    pub rejected: u64,
    /// Local changes still waiting for upload when the sync ended (a sync
    /// event; absent from older devices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_uploads: Option<u64>,
}

/// Body of `POST /v1/telemetry`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetryBatch {
    pub events: Vec<TelemetryEvent>,
}

/// Answer of `POST /v1/telemetry`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetryAccepted {
    /// Events stored (replays of known ids are not counted).
    pub accepted: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_read_as_unknown() {
        for m in [
            TelemetryMode::First,
            TelemetryMode::Delta,
            TelemetryMode::Refresh,
            TelemetryMode::Forced,
            TelemetryMode::Unknown,
        ] {
            let json = serde_json::to_string(&m).expect("encode");
            assert_eq!(json, format!("\"{}\"", m.as_str()));
            assert_eq!(serde_json::from_str::<TelemetryMode>(&json).ok(), Some(m));
        }
        assert_eq!(
            serde_json::from_str::<TelemetryNetwork>("\"satellite\"").ok(),
            Some(TelemetryNetwork::Unknown)
        );
        assert_eq!(
            TelemetryResult::from_name("Success"),
            TelemetryResult::Unknown
        );
        assert_eq!(TelemetryNetwork::from_name("none"), TelemetryNetwork::None);
        assert!(serde_json::from_str::<TelemetryResult>("1").is_err());
    }
}
