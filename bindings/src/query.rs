//! Local queries, exported: a table, a condition in the offline profile's
//! filter language (its JSON form, as in a profile's custom filter), an
//! order, a limit and an offset; their count; and observed queries, whose
//! listener receives the result at once and again after each local write or
//! sync that changes a row of the table, until its [`ListenerHandle`] is
//! cancelled or dropped. Everything is the core's ([`fieldsync_core::Query`]);
//! this module converts and delegates.

use std::sync::Arc;

use fieldsync_core::filter::Filter;

use crate::Engine;
use crate::errors::FieldSyncError;
use crate::listeners::{Delivery, ListenerHandle};
use crate::records::Record;

/// One column of a query's order.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct QueryOrder {
    /// A synced column of the table.
    pub column: String,
    /// Largest first when true.
    pub descending: bool,
}

/// A query over one synced table of the device.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Query {
    /// The table.
    pub table: String,
    /// The condition rows meet, as filter JSON (`{"op": "eq", "column":
    /// "status", "value": "open"}`, relative dates and "current user"
    /// included); none: every row.
    pub condition: Option<String>,
    /// The order, column by column; the primary key breaks ties (in the
    /// direction of the last column).
    pub order: Vec<QueryOrder>,
    /// At most this many rows (none: the core's maximum, 100,000).
    pub limit: Option<u32>,
    /// Rows skipped first.
    pub offset: u32,
}

impl TryFrom<Query> for fieldsync_core::Query {
    type Error = FieldSyncError;
    fn try_from(q: Query) -> Result<Self, FieldSyncError> {
        let filter = q
            .condition
            .map(|text| Filter::from_json(&text))
            .transpose()
            .map_err(fieldsync_core::Error::from)?;
        Ok(fieldsync_core::Query {
            table: q.table,
            filter,
            order: q
                .order
                .into_iter()
                .map(|o| fieldsync_core::OrderBy {
                    column: o.column,
                    descending: o.descending,
                })
                .collect(),
            limit: q.limit,
            offset: q.offset,
        })
    }
}

/// Receives an observed query's results, in order, on a background thread.
#[uniffi::export(with_foreign)]
pub trait QueryResultListener: Send + Sync {
    /// The query's current rows: at once, then after each change.
    fn on_result(&self, records: Vec<Record>);
    /// The query could not be run (its table left the profile, storage).
    fn on_error(&self, error: FieldSyncError);
}

#[uniffi::export]
impl Engine {
    /// The records of the device `query` selects, in its order (never from
    /// the network). A condition or order on a column the table does not
    /// sync, or a condition that is not filter JSON, is `InvalidInput`.
    pub async fn query(&self, query: Query) -> Result<Vec<Record>, FieldSyncError> {
        let query = fieldsync_core::Query::try_from(query)?;
        self.local(move |e| {
            e.query(&query)
                .map(|v| v.into_iter().map(Into::into).collect())
        })
        .await
    }

    /// How many records of the device `query`'s condition selects (its
    /// limit and offset not applied).
    pub async fn count(&self, query: Query) -> Result<u64, FieldSyncError> {
        let query = fieldsync_core::Query::try_from(query)?;
        self.local(move |e| e.count(&query)).await
    }

    /// How SQLite runs `query` on the device: the lines of its `EXPLAIN
    /// QUERY PLAN` (`SEARCH ... USING INDEX ...` when one of the table's
    /// local indexes serves it). For diagnostics.
    pub async fn query_plan(&self, query: Query) -> Result<Vec<String>, FieldSyncError> {
        let query = fieldsync_core::Query::try_from(query)?;
        self.local(move |e| e.query_plan(&query)).await
    }

    /// Observes `query`: `listener` receives its result at once, then again
    /// after each local write or sync that commits a change to its table
    /// (once per commit; never for other tables). When the table leaves the
    /// device (dropped from the offline profile, or a reset) it receives an
    /// empty result and stays registered: rows come again if the table
    /// returns. Keep the returned handle: observation ends when it is
    /// cancelled or dropped.
    pub fn observe(
        &self,
        query: Query,
        listener: Arc<dyn QueryResultListener>,
    ) -> Result<Arc<ListenerHandle>, FieldSyncError> {
        let query = fieldsync_core::Query::try_from(query)?;
        let core = self.core.clone();
        ListenerHandle::start(
            move |queue| Ok(core.observe(query, Arc::new(queue))?),
            Box::new(move |delivery| match delivery {
                Delivery::Query(Ok(records)) => {
                    listener.on_result(records.into_iter().map(Into::into).collect());
                }
                Delivery::Query(Err(error)) => listener.on_error(error.into()),
                _ => {}
            }),
        )
    }
}
