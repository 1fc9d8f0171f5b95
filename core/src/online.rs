//! Online mode (C11): on the user's request, read live server rows of any
//! table the server permits, with equality filters, outside the offline
//! profile and without storing them. Sync keeps running meanwhile.
//!
//! Online mode is a session state, not a setting: it is off after every
//! restart, it needs the `online_mode_enabled` setting and an available
//! network to turn on, and the engine leaves it (with a
//! [`crate::SyncEvent::OnlineModeChanged`] event saying why) when the
//! network is lost or a live read finds the server unreachable.
//!
//! Which tables and rows an online read may see is the server's decision:
//! the reference server lets technicians read their profile's rows plus
//! whole tables an administrator lists in `PUT /v1/admin/online-access`
//! (see docs/protocol.md); dispatchers and admins read every row.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::engine::Engine;
use crate::error::{Error, ErrorKind, Result};
use crate::profile::check_identifier;
use crate::status::SyncEvent;
use crate::value::{Record, Value};

/// Most rows one online list returns.
pub const MAX_ONLINE_PAGE: u32 = 1000;

/// An equality filter of an online read: `column = value` (null matches
/// missing values).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OnlineFilter {
    pub column: String,
    pub value: Value,
}

/// One page of live rows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OnlinePage {
    pub table: String,
    pub rows: Vec<Record>,
    /// Pass as `after` for the next page; `None` at the end.
    pub next_after: Option<String>,
}

impl Engine {
    /// True while online mode is on.
    pub fn online_mode(&self) -> bool {
        self.live().online
    }

    /// Turns online mode on (checking the network first) or off. Refuses to
    /// turn on when the setting is off ([`Error::InvalidInput`]) or the server
    /// is unreachable ([`Error::NetworkUnavailable`]).
    pub async fn set_online_mode(&self, on: bool) -> Result<()> {
        if !on {
            self.leave_online_mode("turned off by the user");
            return Ok(());
        }
        if !self.settings().online_mode_enabled {
            return Err(Error::InvalidInput(
                "online mode is disabled in the settings".into(),
            ));
        }
        let status = self.check_network().await;
        if !status.available() {
            return Err(Error::NetworkUnavailable(
                status
                    .message
                    .unwrap_or_else(|| "the server cannot be reached".into()),
            ));
        }
        let changed = {
            let mut live = self.live();
            !std::mem::replace(&mut live.online, true)
        };
        if changed {
            self.emit(SyncEvent::OnlineModeChanged {
                online: true,
                reason: "turned on by the user".into(),
            });
            self.publish_status();
        }
        Ok(())
    }

    /// Leaves online mode, saying why (no-op when it is off).
    pub(crate) fn leave_online_mode(&self, reason: &str) {
        let changed = {
            let mut live = self.live();
            std::mem::replace(&mut live.online, false)
        };
        if changed {
            self.emit(SyncEvent::OnlineModeChanged {
                online: false,
                reason: reason.to_owned(),
            });
            self.publish_status();
        }
    }

    fn require_online(&self, table: &str) -> Result<()> {
        check_identifier(table)?;
        if !self.online_mode() {
            return Err(Error::InvalidInput(
                "online mode is off; turn it on to read live server data".into(),
            ));
        }
        Ok(())
    }

    fn online_failed<T>(&self, e: Error) -> Result<T> {
        if e.kind() == ErrorKind::NetworkUnavailable {
            self.leave_online_mode("Network or Service Unavailable");
        }
        Err(e)
    }

    /// Reads one live row from the server; nothing is stored.
    pub async fn online_get(&self, table: &str, id: &str) -> Result<Record> {
        self.require_online(table)?;
        match self.api.record(table, id).await {
            Ok(r) => Ok(Record {
                table: r.value.table,
                id: r.value.id,
                version: r.value.version,
                fields: r.value.row,
            }),
            Err(Error::Server { status: 404, .. }) => Err(Error::NotOnServer {
                table: table.to_owned(),
                id: id.to_owned(),
            }),
            Err(e) => self.online_failed(e),
        }
    }

    /// Lists live rows of `table` matching every filter, ordered by primary
    /// key after `after`, at most `limit` (1 to 1000); nothing is stored.
    pub async fn online_list(
        &self,
        table: &str,
        filters: Vec<OnlineFilter>,
        after: Option<String>,
        limit: u32,
    ) -> Result<OnlinePage> {
        self.require_online(table)?;
        let mut filter = BTreeMap::new();
        for f in filters {
            check_identifier(&f.column)?;
            filter.insert(f.column, f.value);
        }
        let limit = limit.clamp(1, MAX_ONLINE_PAGE);
        match self
            .api
            .records_where(table, &filter, after.as_deref(), limit)
            .await
        {
            Ok(list) => Ok(OnlinePage {
                table: list.value.table,
                rows: list
                    .value
                    .rows
                    .into_iter()
                    .map(|r| Record {
                        table: r.table,
                        id: r.id,
                        version: r.version,
                        fields: r.row,
                    })
                    .collect(),
                next_after: list.value.next_after,
            }),
            Err(e) => self.online_failed(e),
        }
    }
}
