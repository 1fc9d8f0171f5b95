//! Retention: receipts, telemetry and sync errors purged in batches after
//! their time.

use std::time::Duration;

use fieldsync_protocol::Value;
use fieldsync_protocol::time::format_datetime;

use crate::sql::int;
use crate::sql::text;
use crate::store_error::StoreResult;

use super::backend::Db;

/// Rows [`Db::purge`] deletes per write transaction.
pub(super) const PURGE_BATCH: i64 = 5_000;

/// What [`Db::purge`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    pub receipts: u64,
    pub telemetry: u64,
    pub sync_errors: u64,
}

/// How long the server keeps what it purges (see [`Db::purge`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Push receipts, which answer a retried push.
    pub receipts: Duration,
    /// Device telemetry.
    pub telemetry: Duration,
    /// Sync Errors entries (and their retry records).
    pub sync_errors: Duration,
}

impl Db {
    /// Removes push receipts written longer than `receipts_for` ago and
    /// telemetry received longer than `telemetry_for` ago, by the server's
    /// clock. Deletes a batch at a time, each in its own short write
    /// transaction, so pushes wait at most for one batch.
    ///
    /// A receipt makes a retried push answer the stored result instead of
    /// applying the change again; after its retention, a device retrying a
    /// push whose answer it lost that long ago would apply it again.
    pub fn purge(&self, retention: &Retention) -> StoreResult<Purged> {
        let now = self.clock.now_ms();
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let receipts_before = format_datetime(now.saturating_sub(ms(retention.receipts)));
        let telemetry_before = now.saturating_sub(ms(retention.telemetry));
        let errors_before = format_datetime(now.saturating_sub(ms(retention.sync_errors)));
        // An entry's retry record goes before the entry.
        self.delete_in_batches(
            "DELETE FROM _fs_sync_error_retries WHERE sync_error_id IN
               (SELECT id FROM _fs_sync_errors WHERE at < ? LIMIT ?)",
            text(errors_before.clone()),
        )?;
        Ok(Purged {
            receipts: self.delete_in_batches(
                "DELETE FROM _fs_push_receipts WHERE (user_id, idempotency_key) IN
                   (SELECT user_id, idempotency_key FROM _fs_push_receipts WHERE at < ? LIMIT ?)",
                text(receipts_before),
            )?,
            telemetry: self.delete_in_batches(
                "DELETE FROM _fs_telemetry WHERE id IN
                   (SELECT id FROM _fs_telemetry WHERE received_at < ? LIMIT ?)",
                int(telemetry_before),
            )?,
            sync_errors: self.delete_in_batches(
                "DELETE FROM _fs_sync_errors WHERE id IN
                   (SELECT id FROM _fs_sync_errors WHERE at < ? LIMIT ?)",
                text(errors_before),
            )?,
        })
    }

    /// Runs `delete` (parameters: the cutoff, then the batch size) in write
    /// transactions of [`PURGE_BATCH`] rows until a batch comes up short;
    /// the rows deleted.
    pub(super) fn delete_in_batches(&self, delete: &str, cutoff: Value) -> StoreResult<u64> {
        let mut deleted = 0;
        loop {
            let n = self.write(|c| c.execute(delete, &[cutoff.clone(), int(PURGE_BATCH)]))?;
            deleted += n;
            if n < PURGE_BATCH as u64 {
                return Ok(deleted);
            }
        }
    }
}
