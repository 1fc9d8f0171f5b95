//! The wire protocol shared by the device engine and the reference server.
//!
//! Every type here is what travels as JSON over HTTP; `docs/protocol.md` and
//! `docs/openapi.yaml` describe the same shapes for teams that implement the
//! server side themselves. Pull pages are columnar (a header of column names,
//! then one array of values per row) so they can be decoded and applied row by
//! row, and so a compact encoding can replace JSON later behind content
//! negotiation without changing the model.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::value::Value;

/// Version of this protocol, sent in `X-Fieldsync-Protocol`.
pub const PROTOCOL_VERSION: u32 = 1;
/// Rows per pull page when the device does not ask for a size.
pub const DEFAULT_PAGE_SIZE: u32 = 1000;
/// Largest page a server hands out; larger requests are refused.
pub const MAX_PAGE_SIZE: u32 = 10_000;
/// A pull page ends early, `has_more` set, once its rows' values pass this
/// many bytes (their approximate size, [`crate::Value::approx_size`]): wide
/// rows never make a page of `limit` of them. A page always holds at least
/// one entry.
pub const MAX_PAGE_BYTES: usize = 8 * 1024 * 1024;
/// Most mutations in one push request.
pub const MAX_MUTATIONS_PER_PUSH: usize = 500;
/// Most fields in one mutation's data (a table has at most this many
/// columns, see [`crate::model::MAX_COLUMNS_PER_TABLE`]).
pub const MAX_FIELDS_PER_MUTATION: usize = 1_000;
/// How the decoding error of a body that passed one of the limits above
/// starts: decoding stops there, before the rest is built, and the server
/// answers `payload_too_large`.
pub const LIMIT_EXCEEDED: &str = "limit exceeded: ";
/// Largest request body the server accepts, in bytes.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024 * 1024;
/// Largest single row (sum of its values) a device may write, in bytes.
pub const MAX_ROW_BYTES: usize = 1024 * 1024;
/// Name of the version column in pull pages.
pub const VERSION_COLUMN: &str = "_version";

/// Header carrying the device's id.
pub const DEVICE_HEADER: &str = "x-fieldsync-device";
/// Header carrying the protocol version.
pub const PROTOCOL_HEADER: &str = "x-fieldsync-protocol";

/// Body of every error response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub error: ErrorBody,
}

/// A machine-readable error code and a human-readable message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
}

/// Error codes the server uses (the `code` of [`ErrorBody`]).
pub mod codes {
    pub const UNAUTHORIZED: &str = "unauthorized";
    pub const FORBIDDEN: &str = "forbidden";
    pub const NOT_FOUND: &str = "not_found";
    pub const BAD_REQUEST: &str = "bad_request";
    pub const MALFORMED_JSON: &str = "malformed_json";
    pub const UNKNOWN_TABLE: &str = "unknown_table";
    pub const UNKNOWN_COLUMN: &str = "unknown_column";
    pub const INVALID_VALUE: &str = "invalid_value";
    pub const NOT_IN_PROFILE: &str = "not_in_profile";
    pub const INVALID_CURSOR: &str = "invalid_cursor";
    pub const PAGE_TOO_LARGE: &str = "page_too_large";
    pub const PAYLOAD_TOO_LARGE: &str = "payload_too_large";
    pub const PROFILE_CHANGED: &str = "profile_changed";
    pub const INVALID_PROFILE: &str = "invalid_profile";
    /// A data model (a model file or a published version) is refused.
    pub const INVALID_MODEL: &str = "invalid_model";
    pub const CONFLICT: &str = "conflict";
    pub const INTERNAL: &str = "internal";
    pub const UNAVAILABLE: &str = "unavailable";
    /// `x-fieldsync-protocol` names a version this server does not speak.
    pub const UNSUPPORTED_PROTOCOL: &str = "unsupported_protocol";
    /// A known path asked with a method it does not take (405).
    pub const METHOD_NOT_ALLOWED: &str = "method_not_allowed";
    /// Too many failed sign-ins from the request's source address (429,
    /// with `Retry-After` in seconds).
    pub const TOO_MANY_REQUESTS: &str = "too_many_requests";
    /// A push result code (HTTP 200): the mutation's `idempotency_key`
    /// already has a receipt for another change (another table, row,
    /// operation, base version or data); the first change's receipt stands.
    pub const IDEMPOTENCY_KEY_REUSED: &str = "idempotency_key_reused";
    /// A push result code (HTTP 200): another write of the same transaction
    /// was refused or conflicted, so none of the transaction was applied.
    pub const TRANSACTION_ABORTED: &str = "transaction_aborted";
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One page of changes for one table (`GET /v1/sync/pull`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PullPage {
    pub table: String,
    /// The profile version the page was computed for.
    pub profile_version: i64,
    /// Opaque cursor to send with the next request.
    pub cursor: String,
    /// True when more changes follow this page.
    pub has_more: bool,
    /// Number of rows from the request's cursor to the end (upserts and
    /// removals), when the device asked for it with `total=true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    /// How many of `rows`, from the first, are the table as it stood when
    /// this download began (its snapshot, walked in order); the rows after
    /// them changed since. A table whose download began after that moment
    /// already selects what these rows reach (see `docs/protocol.md`,
    /// "Snapshot rows"). Zero (and left out) once the walk is over.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub snapshot_rows: u64,
    /// Column names of `rows`: `_version`, then the primary key, then the
    /// synced columns in profile order.
    pub columns: Vec<String>,
    /// Rows to insert or replace, each aligned with `columns`.
    pub rows: Vec<Vec<Value>>,
    /// Primary keys of rows to remove: deleted on the server or no longer
    /// selected by the profile.
    pub removed: Vec<String>,
}

/// Most values in one fetch request (`POST /v1/sync/fetch`).
pub const MAX_FETCH_VALUES: usize = 200;

/// Body of `POST /v1/sync/fetch`: rows of `table` whose `column` holds one
/// of `values` and that the caller's offline profile selects. The device
/// uses it for related rows that arrive without a change of their own (a
/// new booking's existing work order, that work order's incidents).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FetchRequest {
    pub table: String,
    /// A synced column of `table`.
    pub column: String,
    /// 1 to [`MAX_FETCH_VALUES`] non-null values.
    pub values: Vec<Value>,
    /// The profile version the device holds (409 `profile_changed` otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile_version: Option<i64>,
}

/// Answer of `POST /v1/sync/fetch`: live rows the profile selects, laid out
/// as in a [`PullPage`] (`_version`, primary key, synced columns).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FetchResponse {
    pub table: String,
    pub profile_version: i64,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
}

/// What a mutation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Create the row (fields not given are null).
    Insert,
    /// Set the given fields of the row.
    Update,
    /// Delete the row.
    Delete,
}

impl Op {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
        }
    }
    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Op> {
        match s {
            "insert" => Some(Op::Insert),
            "update" => Some(Op::Update),
            "delete" => Some(Op::Delete),
            _ => None,
        }
    }
}

/// One local change uploaded from a device's outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mutation {
    /// Unique per change; a replay with the same key returns the first
    /// result, and another change sent with it is rejected
    /// (`idempotency_key_reused`).
    pub idempotency_key: String,
    pub table: String,
    pub id: String,
    pub op: Op,
    /// Server version the change was based on (0 for a row created on the device).
    pub base_version: i64,
    /// Field values (insert, update); empty for delete. At most
    /// [`MAX_FIELDS_PER_MUTATION`].
    #[serde(default, deserialize_with = "bounded::fields")]
    pub data: BTreeMap<String, Value>,
    /// Set when the change is one write of a device transaction: the server
    /// applies the transaction's writes whole or not at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction: Option<TransactionMark>,
}

/// Most writes in one device transaction: a transaction travels in one
/// push request.
pub const MAX_TRANSACTION_WRITES: usize = MAX_MUTATIONS_PER_PUSH;

/// Marks a [`Mutation`] as one write of a device transaction. The writes of
/// a transaction travel one after the other in one push request, each
/// marked with the same id and size; the server applies all of them or none
/// (`docs/protocol.md`, "Transactions").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionMark {
    /// The transaction's id (1 to 128 characters), the same on each write.
    pub id: String,
    /// How many writes the transaction holds (1 to
    /// [`MAX_TRANSACTION_WRITES`]).
    pub size: u32,
}

/// Body of `POST /v1/sync/push`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushRequest {
    /// At most [`MAX_MUTATIONS_PER_PUSH`].
    #[serde(deserialize_with = "bounded::mutations")]
    pub mutations: Vec<Mutation>,
}

/// Decoders that stop at a limit instead of building what lies past it: a
/// push of 100,000 mutations, or a mutation of 700,000 fields, fails after
/// the first one too many, with an error starting with [`LIMIT_EXCEEDED`].
mod bounded {
    use std::collections::BTreeMap;
    use std::fmt;
    use std::marker::PhantomData;

    use serde::Deserializer;
    use serde::de::{Error, MapAccess, SeqAccess, Visitor};

    use super::{LIMIT_EXCEEDED, MAX_FIELDS_PER_MUTATION, MAX_MUTATIONS_PER_PUSH, Mutation};
    use crate::value::Value;

    pub fn mutations<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Mutation>, D::Error> {
        struct Seq;
        impl<'de> Visitor<'de> for Seq {
            type Value = Vec<Mutation>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "a list of at most {MAX_MUTATIONS_PER_PUSH} mutations")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
                while let Some(m) = seq.next_element()? {
                    if out.len() == MAX_MUTATIONS_PER_PUSH {
                        return Err(A::Error::custom(format!(
                            "{LIMIT_EXCEEDED}at most {MAX_MUTATIONS_PER_PUSH} mutations per request"
                        )));
                    }
                    out.push(m);
                }
                Ok(out)
            }
        }
        d.deserialize_seq(Seq)
    }

    pub fn fields<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, Value>, D::Error> {
        struct Map(PhantomData<Value>);
        impl<'de> Visitor<'de> for Map {
            type Value = BTreeMap<String, Value>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "an object of at most {MAX_FIELDS_PER_MUTATION} fields")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((k, v)) = map.next_entry::<String, Value>()? {
                    if out.len() == MAX_FIELDS_PER_MUTATION {
                        return Err(A::Error::custom(format!(
                            "{LIMIT_EXCEEDED}at most {MAX_FIELDS_PER_MUTATION} fields per mutation"
                        )));
                    }
                    out.insert(k, v);
                }
                Ok(out)
            }
        }
        d.deserialize_map(Map(PhantomData))
    }
}

/// Outcome of one mutation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MutationStatus {
    /// The change was applied (device wins, or no conflict).
    Applied,
    /// Conflict detection is on and the server's row differed from the base
    /// version: the server kept its row, returned in `row`.
    Conflict,
    /// The change was refused (not allowed, invalid); `error` says why and
    /// `row` holds the server's row, if the device may see it.
    Rejected,
}

/// Result of one mutation, in the order of the request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MutationResult {
    pub idempotency_key: String,
    pub status: MutationStatus,
    /// Server version of the row after this mutation: for an applied delete,
    /// the tombstone's (the deleted row's version plus one, with `row`
    /// null); 0 when there is no row to report (docs/openapi.yaml lists the
    /// cases).
    pub version: i64,
    /// The server's row after this mutation, in the device's columns; null
    /// when the row does not exist (deleted) or is not visible to the device.
    pub row: Option<BTreeMap<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

/// Body of the push response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushResponse {
    pub results: Vec<MutationResult>,
}

/// Body of `GET /v1/records/{table}/{id}` and of record writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordResponse {
    pub table: String,
    pub id: String,
    pub version: i64,
    pub row: BTreeMap<String, Value>,
}

/// Body of `PUT /v1/records/{table}/{id}`: set these fields (create the row
/// if missing). With `base_version`, the write is refused with 409 when the
/// row has changed since.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordWrite {
    pub data: BTreeMap<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_version: Option<i64>,
}

/// Body of `GET /v1/records/{table}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordList {
    pub table: String,
    pub rows: Vec<RecordResponse>,
    /// Pass as `after` for the next page; absent at the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
}

/// Body of `POST /v1/sync/counts`: the cursor per table the device is
/// about to pull from (empty for a first download).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CountsRequest {
    pub tables: BTreeMap<String, String>,
}

/// Answer of `POST /v1/sync/counts`: per table, the exact number of entries
/// (rows and removals) a pull from the given cursor sends, as the server's
/// data stands now. Tables outside the caller's profile, and cursors the
/// server did not issue, are left out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CountsResponse {
    /// The profile version the counts were computed for.
    pub profile_version: i64,
    pub tables: BTreeMap<String, u64>,
}

/// Body of `POST /v1/sync/changes` (smart sync): the device's cursor per
/// table, as its last completed pull left it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangesRequest {
    pub tables: BTreeMap<String, String>,
}

/// Answer of `POST /v1/sync/changes`: per table, whether any row of the
/// table changed on the server after the cursor. `false` means a pull from
/// that cursor would return nothing, so the device skips it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangesResponse {
    /// The profile version the answer was computed for.
    pub profile_version: i64,
    pub tables: BTreeMap<String, bool>,
}
