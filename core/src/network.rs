//! The network check (C8): what the OS reports about the network (the shells
//! pass it in, the core never asks the OS itself) and whether the sync server
//! answers a probe in time.
//!
//! The probe is `GET /v1/health` through the injected transport, bounded by a
//! timeout. No answer, an error status, or an answer slower than the timeout
//! is "Network or Service Unavailable". The engine starts in offline mode
//! ([`Reachability::Checking`]) and treats the network as unavailable for
//! sync until the first probe answers.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::client::ServerApi;
use crate::error::Result;
use crate::store::Store;

/// The text the product shows when the server cannot be reached.
pub const UNAVAILABLE_MESSAGE: &str = "Network or Service Unavailable";

/// Default probe timeout, ms.
pub const DEFAULT_PROBE_TIMEOUT_MS: u64 = 5_000;

/// Kind of network the OS reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkType {
    /// Wi-Fi.
    Wifi,
    /// Mobile data.
    Cellular,
    /// Wired.
    Ethernet,
    /// Connected, kind unknown.
    Other,
    /// No network.
    None,
}

impl NetworkType {
    /// Telemetry name.
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkType::Wifi => "wifi",
            NetworkType::Cellular => "cellular",
            NetworkType::Ethernet => "ethernet",
            NetworkType::Other => "other",
            NetworkType::None => "none",
        }
    }
}

impl From<NetworkType> for crate::telemetry::TelemetryNetwork {
    fn from(t: NetworkType) -> Self {
        use crate::telemetry::TelemetryNetwork as N;
        match t {
            NetworkType::Wifi => N::Wifi,
            NetworkType::Cellular => N::Cellular,
            NetworkType::Ethernet => N::Ethernet,
            NetworkType::Other => N::Other,
            NetworkType::None => N::None,
        }
    }
}

/// What the OS says about the network (reported by the app shell).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OsNetwork {
    /// The OS has a network connection.
    pub connected: bool,
    /// The connection is metered (mobile data, a hotspot).
    pub metered: bool,
    /// The kind of connection.
    pub network_type: NetworkType,
}

impl Default for OsNetwork {
    /// Connected on an unmetered network of unknown kind: what the headless
    /// device and tests assume until told otherwise.
    fn default() -> Self {
        Self {
            connected: true,
            metered: false,
            network_type: NetworkType::Other,
        }
    }
}

/// The key of the kept report in `_fs_settings`.
const OS_NETWORK_KEY: &str = "os_network";

impl OsNetwork {
    /// The network report kept in the device database, if one was kept (see
    /// `EngineConfig::persist_os_network`); a report that no longer decodes
    /// counts as none.
    pub fn load(store: &Store) -> Result<Option<OsNetwork>> {
        Ok(store
            .setting(OS_NETWORK_KEY)?
            .and_then(|text| serde_json::from_str(&text).ok()))
    }

    /// Keeps this report in the device database.
    pub fn save(&self, store: &Store) -> Result<()> {
        store.set_setting(OS_NETWORK_KEY, &serde_json::to_string(self)?)
    }
}

/// Whether the sync server can be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reachability {
    /// No probe has answered yet (offline mode until one does).
    Checking,
    /// The last probe answered in time.
    Available,
    /// Network or Service Unavailable.
    Unavailable,
}

/// The device's view of the network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkStatus {
    /// Whether the server can be reached.
    pub reachability: Reachability,
    /// What the OS reports.
    pub os: OsNetwork,
    /// Why the server is unavailable, starting with [`UNAVAILABLE_MESSAGE`].
    pub message: Option<String>,
    /// When the last probe finished, ms since the epoch.
    pub last_probe_at: Option<i64>,
}

impl NetworkStatus {
    /// The state of a freshly opened engine: offline, checking.
    pub fn starting() -> Self {
        Self {
            reachability: Reachability::Checking,
            os: OsNetwork::default(),
            message: None,
            last_probe_at: None,
        }
    }

    /// True when syncs and online reads may use the network.
    pub fn available(&self) -> bool {
        self.reachability == Reachability::Available && self.os.connected
    }
}

/// Probes the server: `Ok` when `/v1/health` answers 2xx within `timeout`,
/// else the reason (for the "Network or Service Unavailable" message).
pub(crate) async fn probe(api: &ServerApi, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, api.health()).await {
        Err(_) => Err(format!(
            "{UNAVAILABLE_MESSAGE}: the server did not answer within {} ms",
            timeout.as_millis()
        )),
        Ok(Err(e)) => {
            let text = e.to_string();
            if text.starts_with(UNAVAILABLE_MESSAGE) {
                Err(text)
            } else {
                Err(format!("{UNAVAILABLE_MESSAGE}: {text}"))
            }
        }
        Ok(Ok(())) => Ok(()),
    }
}
