//! Push receipts: the idempotency key's answer, kept so a retried
//! mutation is answered again and never applied twice.

use std::collections::BTreeMap;

use fieldsync_protocol::Value;
use fieldsync_protocol::protocol::{
    ErrorBody, Mutation, MutationResult, MutationStatus, Op, codes,
};
use fieldsync_protocol::time::format_datetime;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::sql::{Conn, text};
use crate::store_error::{StoreError, StoreResult};

use super::backend::Db;
use super::users::User;

/// The result of a mutation refused for its idempotency key (no receipt is
/// written for it).
pub(super) fn refused_key(m: &Mutation, code: &str, message: &str) -> MutationResult {
    MutationResult {
        idempotency_key: m.idempotency_key.clone(),
        status: MutationStatus::Rejected,
        version: 0,
        row: None,
        error: Some(ErrorBody {
            code: code.into(),
            message: message.into(),
        }),
    }
}

/// What a push receipt keeps of its mutation to tell a replay from another
/// change sent with the same key: the SHA-256 of the mutation without its
/// key, serialised as the protocol's JSON (its `data` keys sorted), so the
/// same change digests the same however its request was written.
pub(super) fn mutation_digest(m: &Mutation) -> StoreResult<String> {
    #[derive(Serialize)]
    struct Change<'a> {
        table: &'a str,
        id: &'a str,
        op: Op,
        base_version: i64,
        data: &'a BTreeMap<String, Value>,
    }
    let json = serde_json::to_vec(&Change {
        table: &m.table,
        id: &m.id,
        op: m.op,
        base_version: m.base_version,
        data: &m.data,
    })
    .map_err(|e| StoreError::internal(format!("mutation digest: {e}")))?;
    Ok(hex::encode(Sha256::digest(&json)))
}

impl Db {
    /// What the receipts say of `m`: its stored result (a replay), a refusal
    /// of its key (logged; no receipt is written for it), or the digest of a
    /// change not yet seen.
    pub(super) fn receipt_answer(
        &self,
        c: &mut dyn Conn,
        user: &User,
        device_id: Option<&str>,
        m: &Mutation,
    ) -> StoreResult<Answer> {
        // A key that cannot name a receipt refuses its mutation alone, like
        // every other problem of one mutation; with no receipt, a retry is
        // refused the same way.
        if m.idempotency_key.is_empty() || m.idempotency_key.len() > 128 {
            let result = refused_key(
                m,
                codes::BAD_REQUEST,
                "an idempotency key is 1 to 128 characters",
            );
            self.log_sync_error(c, user, device_id, m, &result, "rejected")?;
            return Ok(Answer::Refused(result));
        }
        let digest = mutation_digest(m)?;
        let stored = c.query_opt(
            "SELECT result, mutation_digest FROM _fs_push_receipts WHERE user_id = ? AND idempotency_key = ?",
            &[text(user.id.clone()), text(m.idempotency_key.clone())],
        )?;
        let Some(stored) = stored else {
            return Ok(Answer::New(digest));
        };
        // A receipt written before digests were kept (NULL) answers any
        // replay, as it did then.
        let reused = stored.opt_text(1)?.is_some_and(|first| first != digest);
        if reused {
            let result = refused_key(
                m,
                codes::IDEMPOTENCY_KEY_REUSED,
                "this idempotency key was used for another change; the first change's result stands (send each change with a key of its own)",
            );
            self.log_sync_error(c, user, device_id, m, &result, "rejected")?;
            return Ok(Answer::Refused(result));
        }
        let result = serde_json::from_str(&stored.text(0)?)
            .map_err(StoreError::decode("a stored receipt"))?;
        Ok(Answer::Known(result))
    }

    pub(super) fn write_receipt(
        &self,
        c: &mut dyn Conn,
        user: &User,
        m: &Mutation,
        result: &MutationResult,
        digest: String,
    ) -> StoreResult<()> {
        let body = serde_json::to_string(result)?;
        c.execute(
            "INSERT INTO _fs_push_receipts (user_id, idempotency_key, result, at, mutation_digest) VALUES (?, ?, ?, ?, ?)",
            &[
                text(user.id.clone()),
                text(m.idempotency_key.clone()),
                text(body),
                text(format_datetime(self.clock.now_ms())),
                text(digest),
            ],
        )?;
        Ok(())
    }
}

/// What the receipts say of a mutation (see `Db::receipt_answer`).
pub(super) enum Answer {
    /// A replay: the first result stands.
    Known(MutationResult),
    /// Refused for its key; no receipt is written.
    Refused(MutationResult),
    /// Not seen before: the digest its receipt will keep.
    New(String),
}
