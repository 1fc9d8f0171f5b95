//! Push: a device's mutations applied in order, transactions whole or not
//! at all, conflicts detected when the setting is on.

use std::collections::BTreeMap;

use fieldsync_protocol::Value;
use fieldsync_protocol::profile::SyncProfile;
use fieldsync_protocol::protocol::{
    ErrorBody, MAX_ROW_BYTES, Mutation, MutationResult, MutationStatus, Op, codes,
};

use crate::sql::{Conn, Dialect};
use crate::store_error::{StoreError, StoreResult};

use super::backend::Db;
use super::receipts::{Answer, RequestReceipts, refused_key};
use super::records::{Writer, merged_size, missing_required, row_size, unstorable_text};
use super::users::User;

/// A mutation the server refuses; it still gets a receipt.
pub(super) struct Rejection {
    pub(super) code: &'static str,
    pub(super) message: String,
    pub(super) row: Option<BTreeMap<String, Value>>,
    pub(super) version: i64,
}

impl Rejection {
    pub(super) fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            row: None,
            version: 0,
        }
    }
}

/// What applying one mutation did (see `Db::apply_one`).
pub(super) enum Outcome {
    Applied(MutationResult),
    /// A conflict (logged) or a refusal (not yet logged).
    Failed(MutationResult),
}

impl Outcome {
    pub(super) fn into_result(self) -> MutationResult {
        match self {
            Outcome::Applied(r) | Outcome::Failed(r) => r,
        }
    }
}

/// Why a mutation did not apply: refused (answered, with a receipt) or a
/// server fault (the whole batch fails and the device retries it).
pub(super) enum PushFail {
    Reject(Rejection),
    Fatal(StoreError),
}

impl From<Rejection> for PushFail {
    fn from(r: Rejection) -> Self {
        PushFail::Reject(r)
    }
}

impl From<StoreError> for PushFail {
    fn from(e: StoreError) -> Self {
        PushFail::Fatal(e)
    }
}

impl Db {
    /// Applies a device's mutations in order, idempotently, in one transaction.
    /// The writes of a device transaction (marked with a `TransactionMark`, one
    /// after the other) apply whole or not at all (see `push_transaction`).
    pub fn push(
        &self,
        user: &User,
        device_id: Option<&str>,
        profile: &SyncProfile,
        mutations: &[Mutation],
    ) -> StoreResult<Vec<MutationResult>> {
        self.write(|c| {
            let detection = Self::conflict_detection_in(c)?;
            let mut receipts = self.request_receipts(c, user, mutations)?;
            let mut results = Vec::with_capacity(mutations.len());
            let mut rest = mutations;
            while let Some(first) = rest.first() {
                let len = match &first.transaction {
                    None => 1,
                    Some(t) => rest
                        .iter()
                        .take_while(|m| m.transaction.as_ref().is_some_and(|u| u.id == t.id))
                        .count(),
                };
                let (group, tail) = rest.split_at(len);
                rest = tail;
                if first.transaction.is_some() {
                    results.extend(self.push_transaction(
                        c,
                        &mut receipts,
                        user,
                        device_id,
                        profile,
                        group,
                        detection,
                    )?);
                    continue;
                }
                let m = first;
                let digest = match self.receipt_answer(c, &receipts, user, device_id, m)? {
                    Answer::Known(result) | Answer::Refused(result) => {
                        results.push(result);
                        continue;
                    }
                    Answer::New(digest) => digest,
                };
                let result = self.apply_one(c, user, device_id, profile, m, detection)?;
                if let Outcome::Failed(result) = &result
                    && result.status == MutationStatus::Rejected
                {
                    self.log_sync_error(c, user, device_id, m, result, "rejected")?;
                }
                let result = result.into_result();
                self.write_receipt(&mut receipts, m, &result, digest)?;
                results.push(result);
            }
            self.flush_receipts(c, user, &receipts)?;
            Ok(results)
        })
    }

    /// Applies one mutation: applied, or failed (a conflict, logged by
    /// `push_one`, or a refusal, which changed nothing and is not yet
    /// logged).
    pub(super) fn apply_one(
        &self,
        c: &mut dyn Conn,
        user: &User,
        device_id: Option<&str>,
        profile: &SyncProfile,
        m: &Mutation,
        detection: bool,
    ) -> StoreResult<Outcome> {
        match self.push_one(c, user, device_id, profile, m, detection) {
            Ok(r) => Ok(if r.status == MutationStatus::Applied {
                Outcome::Applied(r)
            } else {
                Outcome::Failed(r)
            }),
            Err(PushFail::Fatal(e)) => Err(e),
            Err(PushFail::Reject(Rejection {
                code,
                message,
                row,
                version,
            })) => Ok(Outcome::Failed(MutationResult {
                idempotency_key: m.idempotency_key.clone(),
                status: MutationStatus::Rejected,
                version,
                row,
                error: Some(ErrorBody {
                    code: code.into(),
                    message,
                }),
            })),
        }
    }

    /// The server's row of `table`/`id` as the device may see it, and its
    /// version (0 and none when the row is gone or outside the profile).
    pub(super) fn device_view(
        &self,
        c: &mut dyn Conn,
        profile: &SyncProfile,
        table: &str,
        id: &str,
    ) -> StoreResult<(i64, Option<BTreeMap<String, Value>>)> {
        let in_force = self.cached_model();
        let (Some(t), Some(schema)) = (profile.table(table), in_force.model.table(table)) else {
            return Ok((0, None));
        };
        match Self::read_row(c, schema, id)? {
            Some(r) if !r.deleted && self.visible(c, profile, t, id)? => {
                Ok((r.version, Some(Self::project(&r.fields, t))))
            }
            _ => Ok((0, None)),
        }
    }

    /// Applies the writes of one device transaction, whole or not at all.
    ///
    /// The group must be complete (as many writes as each one's
    /// `TransactionMark::size` says) and every key must name a receipt;
    /// otherwise every write is refused and nothing applies. A replay
    /// answers from the receipts. Otherwise the writes apply in order under
    /// one savepoint; the first that is refused (either conflict setting) or
    /// conflicts (detection on) rolls the whole transaction back: it keeps
    /// its own result, every other write is refused with
    /// `transaction_aborted`, each result carries the server's row as it
    /// stands after the rollback, and every result is logged as a sync
    /// error and kept as the write's receipt.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn push_transaction(
        &self,
        c: &mut dyn Conn,
        receipts: &mut RequestReceipts,
        user: &User,
        device_id: Option<&str>,
        profile: &SyncProfile,
        group: &[Mutation],
        detection: bool,
    ) -> StoreResult<Vec<MutationResult>> {
        let refuse_all = |this: &Self, c: &mut dyn Conn, code: &str, message: &str| {
            let mut out = Vec::with_capacity(group.len());
            for m in group {
                let result = refused_key(m, code, message);
                this.log_sync_error(c, user, device_id, m, &result, "rejected")?;
                out.push(result);
            }
            Ok::<_, StoreError>(out)
        };
        let declared = group
            .first()
            .and_then(|m| m.transaction.as_ref())
            .map(|t| (t.id.clone(), t.size));
        let Some((tx_id, size)) = declared else {
            return Ok(Vec::new());
        };
        if tx_id.is_empty() || tx_id.len() > 128 {
            return refuse_all(
                self,
                c,
                codes::BAD_REQUEST,
                "a transaction id is 1 to 128 characters; nothing of the transaction was applied",
            );
        }
        if group
            .iter()
            .any(|m| m.transaction.as_ref().is_none_or(|t| t.size != size))
            || size as usize != group.len()
        {
            return refuse_all(
                self,
                c,
                codes::BAD_REQUEST,
                &format!(
                    "transaction '{tx_id}' declares {size} writes but the request holds {} of them in a row; a transaction travels whole in one request, nothing of it was applied",
                    group.len()
                ),
            );
        }
        let mut answers = Vec::with_capacity(group.len());
        for m in group {
            answers.push(self.receipt_answer(c, receipts, user, device_id, m)?);
        }
        let known = answers
            .iter()
            .filter(|a| matches!(a, Answer::Known(_)))
            .count();
        let all_new = answers.iter().all(|a| matches!(a, Answer::New(_)));
        if !all_new {
            // A replay (every write known) answers from the receipts; a
            // refused key, or a group part known and part new, applies
            // nothing.
            let mut out = Vec::with_capacity(group.len());
            for (m, a) in group.iter().zip(answers) {
                out.push(match a {
                    Answer::Known(r) | Answer::Refused(r) => r,
                    Answer::New(_) => {
                        let message = if known > 0 {
                            "other writes of this transaction were already answered under their keys; nothing more of it was applied"
                        } else {
                            "another write of this transaction was refused for its idempotency key; nothing of the transaction was applied"
                        };
                        let r = refused_key(m, codes::TRANSACTION_ABORTED, message);
                        self.log_sync_error(c, user, device_id, m, &r, "rejected")?;
                        r
                    }
                });
            }
            return Ok(out);
        }
        c.batch("SAVEPOINT device_transaction")?;
        let mut applied = Vec::with_capacity(group.len());
        let mut failed = None;
        for (i, m) in group.iter().enumerate() {
            match self.apply_one(c, user, device_id, profile, m, detection)? {
                Outcome::Applied(r) => applied.push(r),
                Outcome::Failed(r) => {
                    failed = Some((i, r));
                    break;
                }
            }
        }
        let mut results = Vec::with_capacity(group.len());
        match failed {
            None => {
                c.batch("RELEASE SAVEPOINT device_transaction")?;
                results = applied;
            }
            Some((culprit, failure)) => {
                // Everything the transaction wrote goes, the culprit's
                // conflict log entry included (logged again below).
                c.batch(
                    "ROLLBACK TO SAVEPOINT device_transaction; RELEASE SAVEPOINT device_transaction",
                )?;
                let what = if failure.status == MutationStatus::Conflict {
                    "conflicted with the server's row"
                } else {
                    "was refused"
                };
                let reason = failure
                    .error
                    .as_ref()
                    .map(|e| format!(": {}", e.message))
                    .unwrap_or_default();
                let bad = &group[culprit];
                for (i, m) in group.iter().enumerate() {
                    let (version, row) = self.device_view(c, profile, &m.table, &m.id)?;
                    let (result, kind) = if i == culprit {
                        let kind = if failure.status == MutationStatus::Conflict {
                            "conflict"
                        } else {
                            "rejected"
                        };
                        (
                            MutationResult {
                                version,
                                row,
                                ..failure.clone()
                            },
                            kind,
                        )
                    } else {
                        (
                            MutationResult {
                                idempotency_key: m.idempotency_key.clone(),
                                status: MutationStatus::Rejected,
                                version,
                                row,
                                error: Some(ErrorBody {
                                    code: codes::TRANSACTION_ABORTED.into(),
                                    message: format!(
                                        "write {} of this transaction ({}/{}) {what}{reason}; nothing of the transaction was applied",
                                        culprit + 1,
                                        bad.table,
                                        bad.id
                                    ),
                                }),
                            },
                            "rejected",
                        )
                    };
                    self.log_sync_error(c, user, device_id, m, &result, kind)?;
                    results.push(result);
                }
            }
        }
        for ((m, result), answer) in group.iter().zip(&results).zip(answers) {
            if let Answer::New(digest) = answer {
                self.write_receipt(receipts, m, result, digest)?;
            }
        }
        Ok(results)
    }

    /// Checks and applies one mutation. A refusal (`PushFail::Reject`)
    /// leaves the database as it found it; a conflict is logged and
    /// answered with the server's row.
    pub(super) fn push_one(
        &self,
        c: &mut dyn Conn,
        user: &User,
        device_id: Option<&str>,
        profile: &SyncProfile,
        m: &Mutation,
        detection: bool,
    ) -> Result<MutationResult, PushFail> {
        let Some(table) = profile.table(&m.table) else {
            return Err(Rejection::new(
                codes::NOT_IN_PROFILE,
                format!("table '{}' is not in your offline profile", m.table),
            )
            .into());
        };
        let schema = &self.schema(&m.table)?;
        if m.id.is_empty() || m.id.len() > 256 {
            return Err(
                Rejection::new(codes::BAD_REQUEST, "a record id is 1 to 256 characters").into(),
            );
        }
        if c.dialect() == Dialect::Postgres && m.id.contains('\0') {
            return Err(Rejection::new(
                codes::INVALID_VALUE,
                "a record id holding U+0000 cannot be stored by this server",
            )
            .into());
        }
        let (current, visible_before) = self.read_row_seen(c, profile, table, schema, &m.id)?;
        let exists = current.as_ref().is_some_and(|r| !r.deleted);
        let server_version = current.as_ref().map(|r| r.version).unwrap_or(0);
        let live_version = if exists { server_version } else { 0 };
        let server_row = if visible_before {
            current.as_ref().map(|r| Self::project(&r.fields, table))
        } else {
            None
        };
        let reject = |code: &'static str, message: String| -> PushFail {
            PushFail::Reject(Rejection {
                code,
                message,
                row: server_row.clone(),
                version: if server_row.is_some() {
                    live_version
                } else {
                    0
                },
            })
        };
        if exists && !visible_before {
            return Err(Rejection::new(
                codes::FORBIDDEN,
                "this record is outside your offline profile",
            )
            .into());
        }
        let size = row_size(&m.data);
        if size > MAX_ROW_BYTES {
            return Err(reject(
                codes::PAYLOAD_TOO_LARGE,
                format!("the row is {size} bytes; at most {MAX_ROW_BYTES} are allowed"),
            ));
        }
        let mut data = BTreeMap::new();
        for (name, value) in &m.data {
            if name == &table.primary_key {
                if value != &Value::Text(m.id.clone()) {
                    return Err(reject(
                        codes::INVALID_VALUE,
                        "the primary key field differs from the record id".into(),
                    ));
                }
                continue;
            }
            let Some(column) = table.column(name) else {
                return Err(reject(
                    codes::UNKNOWN_COLUMN,
                    format!("column '{name}' is not synced for table '{}'", m.table),
                ));
            };
            let v = column
                .check(value.clone())
                .map_err(|e| reject(codes::INVALID_VALUE, format!("column '{name}': {e}")))?;
            data.insert(name.clone(), v);
        }
        if let Some(name) = unstorable_text(c.dialect(), &data) {
            return Err(reject(
                codes::INVALID_VALUE,
                format!("column '{name}': text holding U+0000 cannot be stored by this server"),
            ));
        }
        if let Some(message) = table.writes.refusal(table, m.op, data.keys()) {
            return Err(reject(codes::FORBIDDEN, message));
        }
        if m.op == Op::Insert
            && !exists
            && let Some(col) = missing_required(schema, &data)
        {
            return Err(reject(
                codes::INVALID_VALUE,
                format!("column '{col}': the column is required"),
            ));
        }
        if m.op != Op::Delete
            && let Some(message) = self.reach_gained(c, profile, table, current.as_ref(), &data)?
        {
            return Err(reject(codes::FORBIDDEN, message));
        }
        if m.op != Op::Delete {
            let size = merged_size(current.as_ref(), &data);
            if size > MAX_ROW_BYTES {
                return Err(reject(
                    codes::PAYLOAD_TOO_LARGE,
                    format!(
                        "the row would be {size} bytes with this change; at most {MAX_ROW_BYTES} are allowed"
                    ),
                ));
            }
        }
        if detection {
            let conflict = match m.op {
                Op::Insert => exists,
                Op::Update => !exists || server_version != m.base_version,
                // A row already gone is what the delete asks for: not a
                // conflict, whoever deleted it first.
                Op::Delete => exists && server_version != m.base_version,
            };
            if conflict {
                let result = MutationResult {
                    idempotency_key: m.idempotency_key.clone(),
                    status: MutationStatus::Conflict,
                    version: live_version,
                    row: server_row.clone(),
                    error: None,
                };
                self.log_sync_error(c, user, device_id, m, &result, "conflict")?;
                return Ok(result);
            }
        }
        let writer = Some(Writer {
            user_id: Some(&user.id),
            device_id,
            // Audit: which upload produced this change (replays never add one).
            idempotency_key: Some(&m.idempotency_key),
        });
        // A row this write creates must be one the profile selects, which
        // only the stored row can tell: the creation is undone if not.
        let creates = !exists && m.op != Op::Delete;
        if creates {
            c.batch("SAVEPOINT mutation")?;
        }
        let change = match m.op {
            Op::Delete if !exists => None,
            Op::Delete => {
                Some(self.apply_write_over(c, schema, &m.id, current.as_ref(), None, writer)?)
            }
            // A new row: every column not sent is null. Over a live row
            // (the device wins): the device states the row as its profile
            // sees it, so its columns it did not send become null; columns
            // outside its profile are not its to clear.
            Op::Insert => {
                let replace = !exists;
                if exists {
                    for col in &table.columns {
                        if col.name != table.primary_key {
                            data.entry(col.name.clone()).or_insert(Value::Null);
                        }
                    }
                }
                Some(self.apply_write_over(
                    c,
                    schema,
                    &m.id,
                    current.as_ref(),
                    Some((&data, replace)),
                    writer,
                )?)
            }
            Op::Update => Some(self.apply_write_over(
                c,
                schema,
                &m.id,
                current.as_ref(),
                Some((&data, false)),
                writer,
            )?),
        };
        // A delete of a row already deleted answers the tombstone's version
        // (0 when the row never existed), like a delete applied now.
        let version = change.map_or(
            if m.op == Op::Delete {
                server_version
            } else {
                0
            },
            |(v, _)| v,
        );
        let after = if m.op == Op::Delete {
            None
        } else {
            self.read_visible_row(c, profile, table, schema, &m.id)?
        };
        if creates {
            if after.is_none() {
                c.batch("ROLLBACK TO SAVEPOINT mutation; RELEASE SAVEPOINT mutation")?;
                return Err(Rejection::new(
                    codes::FORBIDDEN,
                    "you may only create records your offline profile selects",
                )
                .into());
            }
            c.batch("RELEASE SAVEPOINT mutation")?;
        }
        let row = after.map(|r| Self::project(&r.fields, table));
        Ok(MutationResult {
            idempotency_key: m.idempotency_key.clone(),
            status: MutationStatus::Applied,
            version,
            row,
            error: None,
        })
    }
}
