//! Push receipts: the idempotency key's answer, kept so a retried
//! mutation is answered again and never applied twice.

use std::collections::{BTreeMap, HashMap};

use fieldsync_protocol::Value;
use fieldsync_protocol::protocol::{
    ErrorBody, Mutation, MutationResult, MutationStatus, Op, codes,
};
use fieldsync_protocol::time::format_datetime;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::sql::{Conn, opt_text, text};
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

/// Most keys one receipt lookup binds, and most receipts one insert
/// writes: statements of a few fixed sizes, so each is prepared once.
const LOOKUP_KEYS: usize = 256;
const INSERT_ROWS: usize = 64;

/// The receipts of one push request: those stored before it, read for all
/// of its keys at once, and those it writes, kept until
/// [`Db::flush_receipts`] inserts them in a few statements.
pub(super) struct RequestReceipts {
    /// By key: the stored result (JSON) and digest (none for receipts
    /// written before digests were kept).
    stored: HashMap<String, (String, Option<String>)>,
    /// Keys of the receipts this request writes, in order.
    written: Vec<String>,
}

impl Db {
    /// Reads the stored receipts of every key of `mutations`.
    pub(super) fn request_receipts(
        &self,
        c: &mut dyn Conn,
        user: &User,
        mutations: &[Mutation],
    ) -> StoreResult<RequestReceipts> {
        let mut keys: Vec<&str> = mutations
            .iter()
            .map(|m| m.idempotency_key.as_str())
            .filter(|k| key_is_valid(k))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let mut stored = HashMap::with_capacity(keys.len());
        for chunk in keys.chunks(LOOKUP_KEYS) {
            // Padded to a power of two with the last key repeated.
            let width = chunk.len().next_power_of_two();
            let Some(last) = chunk.last() else {
                continue;
            };
            let mut params = Vec::with_capacity(width + 1);
            params.push(text(user.id.clone()));
            params.extend(chunk.iter().map(|k| text(*k)));
            params.resize(width + 1, text(*last));
            let sql = format!(
                "SELECT idempotency_key, result, mutation_digest FROM _fs_push_receipts WHERE user_id = ? AND idempotency_key IN ({})",
                vec!["?"; width].join(", ")
            );
            for r in c.query(&sql, &params)? {
                stored.insert(r.text(0)?, (r.text(1)?, r.opt_text(2)?));
            }
        }
        Ok(RequestReceipts {
            stored,
            written: Vec::new(),
        })
    }

    /// What the receipts say of `m`: its stored result (a replay), a refusal
    /// of its key (logged; no receipt is written for it), or the digest of a
    /// change not yet seen.
    pub(super) fn receipt_answer(
        &self,
        c: &mut dyn Conn,
        receipts: &RequestReceipts,
        user: &User,
        device_id: Option<&str>,
        m: &Mutation,
    ) -> StoreResult<Answer> {
        // A key that cannot name a receipt refuses its mutation alone, like
        // every other problem of one mutation; with no receipt, a retry is
        // refused the same way.
        if !key_is_valid(&m.idempotency_key) {
            let result = refused_key(
                m,
                codes::BAD_REQUEST,
                "an idempotency key is 1 to 128 characters",
            );
            self.log_sync_error(c, user, device_id, m, &result, "rejected")?;
            return Ok(Answer::Refused(result));
        }
        let digest = mutation_digest(m)?;
        let Some((result, first)) = receipts.stored.get(&m.idempotency_key) else {
            return Ok(Answer::New(digest));
        };
        // A receipt written before digests were kept (NULL) answers any
        // replay, as it did then.
        let reused = first.as_ref().is_some_and(|first| *first != digest);
        if reused {
            let result = refused_key(
                m,
                codes::IDEMPOTENCY_KEY_REUSED,
                "this idempotency key was used for another change; the first change's result stands (send each change with a key of its own)",
            );
            self.log_sync_error(c, user, device_id, m, &result, "rejected")?;
            return Ok(Answer::Refused(result));
        }
        let result =
            serde_json::from_str(result).map_err(StoreError::decode("a stored receipt"))?;
        Ok(Answer::Known(result))
    }

    /// Keeps `result` as the receipt of `m`'s key: later mutations of the
    /// request see it at once, the database at [`Db::flush_receipts`]. A
    /// key answered already keeps its first receipt.
    pub(super) fn write_receipt(
        &self,
        receipts: &mut RequestReceipts,
        m: &Mutation,
        result: &MutationResult,
        digest: String,
    ) -> StoreResult<()> {
        if receipts.stored.contains_key(&m.idempotency_key) {
            return Ok(());
        }
        let body = serde_json::to_string(result)?;
        receipts
            .stored
            .insert(m.idempotency_key.clone(), (body, Some(digest)));
        receipts.written.push(m.idempotency_key.clone());
        Ok(())
    }

    /// Inserts the receipts the request wrote, many per statement.
    pub(super) fn flush_receipts(
        &self,
        c: &mut dyn Conn,
        user: &User,
        receipts: &RequestReceipts,
    ) -> StoreResult<()> {
        let at = format_datetime(self.clock.now_ms());
        let mut rest = receipts.written.as_slice();
        while !rest.is_empty() {
            // 64 rows a statement, then the remainder in powers of two.
            let n = if rest.len() >= INSERT_ROWS {
                INSERT_ROWS
            } else {
                1 << rest.len().ilog2()
            };
            let (chunk, tail) = rest.split_at(n);
            rest = tail;
            let mut params = Vec::with_capacity(n * 5);
            for key in chunk {
                let Some((body, digest)) = receipts.stored.get(key) else {
                    return Err(StoreError::internal("a written receipt went missing"));
                };
                params.extend([
                    text(user.id.clone()),
                    text(key.clone()),
                    text(body.clone()),
                    text(at.clone()),
                    opt_text(digest.clone()),
                ]);
            }
            let sql = format!(
                "INSERT INTO _fs_push_receipts (user_id, idempotency_key, result, at, mutation_digest) VALUES {}",
                vec!["(?, ?, ?, ?, ?)"; n].join(", ")
            );
            c.execute(&sql, &params)?;
        }
        Ok(())
    }
}

/// Whether `key` can name a receipt (1 to 128 bytes).
fn key_is_valid(key: &str) -> bool {
    !key.is_empty() && key.len() <= 128
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
