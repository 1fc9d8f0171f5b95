//! Fetch: rows of a table selected by the profile whose column holds one
//! of the given values.

use fieldsync_protocol::Value;
use fieldsync_protocol::profile::{SyncProfile, SyncTable, quote_ident};
use fieldsync_protocol::protocol::{FetchResponse, MAX_FETCH_VALUES, VERSION_COLUMN, codes};

use crate::rules;
use crate::store_error::{StoreError, StoreResult};

use super::backend::Db;

/// The query of [`Db::fetch`]: the live rows of `table` whose `column`
/// holds one of `values` placeholders and that `predicate` selects, by key.
/// The column's index (see [`crate::schema::rule_indexes`]) answers the
/// `IN`.
pub(crate) fn fetch_sql(table: &SyncTable, column: &str, values: usize, predicate: &str) -> String {
    let mut cols: Vec<String> = vec!["_version".into()];
    cols.extend(table.columns.iter().map(|c| quote_ident(&c.name)));
    let marks = vec!["?"; values].join(", ");
    format!(
        "SELECT {} FROM {} WHERE _deleted = 0 AND {} IN ({marks}) AND {predicate} ORDER BY {}",
        cols.join(", "),
        quote_ident(&table.name),
        quote_ident(column),
        quote_ident(&table.primary_key)
    )
}

impl Db {
    /// Live rows of `table` whose `column` holds one of `values` and that
    /// the user's rules select (`POST /v1/sync/fetch`).
    pub fn fetch(
        &self,
        profile: &SyncProfile,
        table: &SyncTable,
        column: &str,
        values: &[Value],
    ) -> StoreResult<FetchResponse> {
        let col = table.column(column).ok_or_else(|| {
            StoreError::invalid(
                codes::UNKNOWN_COLUMN,
                format!("column '{column}' is not synced for table '{}'", table.name),
            )
        })?;
        if values.is_empty() || values.len() > MAX_FETCH_VALUES {
            return Err(StoreError::invalid(
                codes::BAD_REQUEST,
                format!("a fetch asks for 1 to {MAX_FETCH_VALUES} values"),
            ));
        }
        let mut clean = Vec::with_capacity(values.len());
        for v in values {
            if *v == Value::Null {
                return Err(StoreError::invalid(
                    codes::INVALID_VALUE,
                    "a fetch value is null",
                ));
            }
            clean.push(v.clone().coerce(col.kind).map_err(|e| {
                StoreError::invalid(codes::INVALID_VALUE, format!("column '{column}': {e}"))
            })?);
        }
        let predicate = rules::compile_in(self.dialect(), profile, table, &self.ctx(profile));
        let sql = fetch_sql(table, column, clean.len(), &predicate.sql);
        let mut params = clean;
        params.extend(predicate.params.iter().cloned());
        let rows = self.read(|c| c.query(&sql, &params))?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let mut values = Vec::with_capacity(table.columns.len() + 1);
            values.push(Value::Integer(r.i64(0)?));
            for (i, c) in table.columns.iter().enumerate() {
                values.push(r.value(i + 1, c.kind));
            }
            out.push(values);
        }
        let mut columns = vec![VERSION_COLUMN.to_owned()];
        columns.extend(table.columns.iter().map(|c| c.name.clone()));
        Ok(FetchResponse {
            table: table.name.clone(),
            profile_version: profile.version,
            columns,
            rows: out,
        })
    }
}
