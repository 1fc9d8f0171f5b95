//! Retrying a logged sync error from the admin API or console.

use fieldsync_protocol::protocol::{Mutation, Op, codes};

use crate::sql::int;
use crate::sql::{opt_text, text};
use crate::store_error::{StoreError, StoreResult};

use super::backend::Db;
use super::push::PushFail;
use super::sync_errors::{RetryOutcome, SyncErrorRetry};

impl Db {
    /// Re-applies the device's change logged in Sync Errors entry `id`, as
    /// the logged user would push it but with conflict detection bypassed:
    /// the device's data wins. The write goes into the change log (with the
    /// logged user and device), so devices pull it; the entry is marked
    /// retried (outcome `applied`). Refuses an entry already retried with
    /// success (409). When a rule still refuses the change (for example a
    /// record outside the user's offline profile), nothing changes but the
    /// entry's retry record, marked `failed` with the reason, and the
    /// answer is that refusal (409, or 400 when the user was deleted), with
    /// the failed retry's record; such an entry may be retried again.
    pub fn retry_sync_error(
        &self,
        id: i64,
        retried_by: &str,
    ) -> StoreResult<Result<SyncErrorRetry, (SyncErrorRetry, StoreError)>> {
        let entry = self
            .sync_error(id)?
            .ok_or_else(|| StoreError::not_found(format!("no sync error {id}")))?;
        if entry.device_data_cut.is_some() {
            return Err(StoreError::conflict(
                codes::CONFLICT,
                "the device's data was too large to keep in the log; this change cannot be retried",
            ));
        }
        let op = Op::parse(&entry.action).ok_or_else(|| {
            StoreError::internal(format!("logged action '{}' is unknown", entry.action))
        })?;
        let at = self.now_text();
        let user = self.user_by_id(&entry.user_id)?;
        let profile = user.as_ref().map(|u| self.sync_profile(u)).transpose()?;
        let mutation = Mutation {
            idempotency_key: format!("console-retry-{id}"),
            table: entry.table.clone(),
            id: entry.record_id.clone(),
            op,
            base_version: entry.base_version,
            data: entry.device_data.clone().unwrap_or_default(),
            transaction: None,
        };
        let retry = self.write(|c| {
            let done = c.query_opt(
                "SELECT at FROM _fs_sync_error_retries WHERE sync_error_id = ? AND outcome = 'applied'",
                &[int(id)],
            )?;
            if let Some(when) = done.map(|r| r.text(0)).transpose()? {
                return Err(StoreError::conflict(codes::CONFLICT,
                    format!("sync error {id} was already retried at {when}"),
                ));
            }
            let outcome = match (&user, &profile) {
                (Some(user), Some(profile)) => {
                    c.batch("SAVEPOINT retry")?;
                    match self.push_one(
                        c,
                        user,
                        entry.device_id.as_deref(),
                        profile,
                        &mutation,
                        false,
                    ) {
                        Ok(r) => {
                            c.batch("RELEASE SAVEPOINT retry")?;
                            Ok(r.version)
                        }
                        Err(PushFail::Fatal(e)) => return Err(e),
                        Err(PushFail::Reject(r)) => {
                            c.batch("ROLLBACK TO SAVEPOINT retry; RELEASE SAVEPOINT retry")?;
                            Err((
                                r.code,
                                format!("the device's change still cannot be applied: {}", r.message),
                            ))
                        }
                    }
                }
                _ => Err((
                    codes::BAD_REQUEST,
                    format!("user '{}' no longer exists", entry.user_id),
                )),
            };
            let retry = match &outcome {
                Ok(version) => SyncErrorRetry {
                    sync_error_id: id,
                    at: at.clone(),
                    retried_by: retried_by.to_owned(),
                    outcome: RetryOutcome::Applied,
                    version: *version,
                    message: None,
                },
                Err((_, message)) => SyncErrorRetry {
                    sync_error_id: id,
                    at: at.clone(),
                    retried_by: retried_by.to_owned(),
                    outcome: RetryOutcome::Failed,
                    version: 0,
                    message: Some(message.clone()),
                },
            };
            c.execute(
                "DELETE FROM _fs_sync_error_retries WHERE sync_error_id = ?",
                &[int(id)],
            )?;
            c.execute(
                "INSERT INTO _fs_sync_error_retries (sync_error_id, at, retried_by, version, outcome, message) VALUES (?, ?, ?, ?, ?, ?)",
                &[
                    int(id),
                    text(at.clone()),
                    text(retried_by),
                    int(retry.version),
                    text(retry.outcome.as_str()),
                    opt_text(retry.message.clone()),
                ],
            )?;
            Ok((retry, outcome.err()))
        })?;
        Ok(match retry {
            (retry, None) => Ok(retry),
            (retry, Some((code, message))) => {
                let error = if code == codes::BAD_REQUEST {
                    StoreError::invalid(code, message)
                } else {
                    StoreError::conflict(code, message)
                };
                Err((retry, error))
            }
        })
    }
}
