//! What each core fuzz target does with one input, and the properties it
//! checks. Shared by the libFuzzer targets (`fuzz/fuzz_targets/*.rs`) and by
//! the stable-Rust regression test `core/tests/fuzz_regressions.rs`, which
//! includes this file with `#[path]` and replays the saved inputs of
//! `fuzz/regressions/<target>/` through the same functions. Only
//! `fieldsync_core`, `fieldsync_protocol`, `serde_json`, `rusqlite` and
//! `tempfile` may be used here (they are what the core package's tests can
//! see).
//!
//! A check panics when a property fails: that is what the fuzzer reports.
//! Errors returned by the code under test are fine; panics inside it are not.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, OnceLock};

use fieldsync_core::Value;
use fieldsync_core::error::Error;
use fieldsync_core::profile::{
    ColumnKind, DataModel, MAX_SYNC_INTERVAL_SECS, MIN_SYNC_INTERVAL_SECS, OfflineProfile, RowRule,
    SyncProfile, SyncTable, check_identifier,
};
use fieldsync_core::protocol::{
    Mutation, MutationStatus, Op, PullPage, PushRequest, PushResponse, VERSION_COLUMN,
};
use fieldsync_core::store::{OutboxEntry, Store};
use fieldsync_core::time;

/// The data model the reference server ships.
const MODEL_JSON: &str = include_str!("../../server/model/field_service_model.json");
/// The offline profile the reference server ships.
const PROFILE_JSON: &str = include_str!("../../server/model/field_service_profile.json");
/// The user the fixed profile is issued to.
const USER: &str = "tech-1";
/// A row with a local change waiting for upload in the pull-page store.
const PENDING_ID: &str = "bk-pending";
/// The cursor the pull-page store holds before each input.
const CURSOR_BEFORE: &str = "before";

const ALL_KINDS: [ColumnKind; 6] = [
    ColumnKind::Text,
    ColumnKind::Integer,
    ColumnKind::Real,
    ColumnKind::Boolean,
    ColumnKind::Date,
    ColumnKind::DateTime,
];

/// The shipped data model.
pub fn model() -> &'static DataModel {
    static MODEL: OnceLock<DataModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        let model: DataModel = serde_json::from_str(MODEL_JSON).expect("shipped model parses");
        model.validate().expect("shipped model is valid");
        model
    })
}

/// The shipped profile resolved for [`USER`], as the server sends it.
pub fn sync_profile() -> SyncProfile {
    let profile: OfflineProfile =
        serde_json::from_str(PROFILE_JSON).expect("shipped profile parses");
    profile
        .resolve(model(), 1, USER, None)
        .expect("shipped profile resolves")
}

/// Encodes `value` to JSON and decodes it again; the result must be equal.
fn assert_json_round_trip<T>(value: &T)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let text = serde_json::to_string(value).expect("a decoded value encodes");
    let back: T = serde_json::from_str(&text).expect("an encoded value decodes");
    assert_eq!(
        &back, value,
        "JSON round trip changed the value; JSON: {text}"
    );
}

/// A store on a fresh file (in `/dev/shm` when there is one, so the fuzzer
/// does not wait for a disk), with the shipped profile installed.
struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    /// Second connection to the same file, to reset state between inputs.
    side: Mutex<rusqlite::Connection>,
    table: SyncTable,
    profile: SyncProfile,
}

impl Fixture {
    fn new(pending_row: bool) -> Fixture {
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm).or_else(|_| tempfile::tempdir())
        } else {
            tempfile::tempdir()
        }
        .expect("temporary directory");
        let path = dir.path().join("device.db");
        let store = Store::open(&path).expect("store opens");
        let profile = sync_profile();
        store.apply_profile(&profile, 0).expect("profile installs");
        let table = profile.table("bookings").expect("bookings table").clone();
        if pending_row {
            let data = BTreeMap::from([("name".to_owned(), Value::Text("local".into()))]);
            store
                .write(&profile, &table, PENDING_ID, Op::Insert, data, 0)
                .expect("local write");
        }
        let side = rusqlite::Connection::open(&path).expect("side connection");
        side.busy_timeout(std::time::Duration::from_secs(30))
            .expect("busy timeout");
        Fixture {
            _dir: dir,
            store,
            side: Mutex::new(side),
            table,
            profile,
        }
    }

    fn reset(&self, sql: &str) {
        self.side
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .execute_batch(sql)
            .expect("reset between inputs");
    }
}

fn pull_fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| Fixture::new(true))
}

fn push_fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| Fixture::new(false))
}

/// Target `pull_page`: bytes applied as a pulled page's JSON body to the
/// bookings table of a device store that also holds a row with a local
/// change, the way the device applies it (decoded row by row as it is
/// written), plain and zstd-compressed (cut into values a block at a time),
/// and, when the bytes decode as a `PullPage`, the decoded page
/// applied again from the same state. Checks: the decoded page survives a
/// JSON round trip; bytes that are not a `PullPage` are refused and change
/// nothing; all three ways of applying agree; applying never panics; a refused
/// page changes nothing (rows, cursor); an accepted page leaves exactly its
/// rows (coerced) and cursor, minus its removals, and never touches the row
/// with the pending change.
pub fn pull_page(data: &[u8]) {
    let decoded = serde_json::from_slice::<PullPage>(data).ok();
    if let Some(page) = &decoded {
        assert_json_round_trip(page);
    }
    let fx = pull_fixture();
    // The bytes as they come off the wire: plain, and compressed (decoded
    // through the value stream a block at a time). Both must agree.
    let compressed = fieldsync_core::codec::Body {
        bytes: zstd::encode_all(data, 1).expect("zstd"),
        encoding: fieldsync_core::codec::Encoding::Zstd,
    };
    let mut outcomes = Vec::new();
    for body in [
        fieldsync_core::codec::Body::plain(data.to_vec()),
        compressed,
    ] {
        let pending_before = reset_pull_fixture(fx);
        let streamed = fx
            .store
            .apply_page_json(None, &fx.table, &body, 1, |p| p.total)
            .map(|s| s.applied);
        outcomes.push(streamed.is_ok());
        if decoded.is_none() {
            assert!(
                streamed.is_err(),
                "bytes that are not a pull page were applied ({:?})",
                body.encoding
            );
        }
        check_pull_result(fx, &pending_before, decoded.as_ref(), streamed);
    }
    assert_eq!(
        outcomes[0], outcomes[1],
        "the page applied plain and compressed disagree"
    );
    let Some(page) = decoded else {
        return;
    };
    let pending_before = reset_pull_fixture(fx);
    let result = fx.store.apply_page(None, &fx.table, &page, 1);
    assert_eq!(
        result.is_ok(),
        outcomes[0],
        "the page applied from its JSON and decoded disagree: {result:?}"
    );
    check_pull_result(fx, &pending_before, Some(&page), result);
}

/// Puts the pull-page store back to one row with a pending change and the
/// cursor [`CURSOR_BEFORE`]; returns that row.
fn reset_pull_fixture(fx: &Fixture) -> fieldsync_core::value::Record {
    fx.reset(&format!(
        "DELETE FROM bookings WHERE id <> '{PENDING_ID}';
         UPDATE _fs_tables SET cursor = '{CURSOR_BEFORE}', received_rows = 0,
             expected_rows = NULL, initial_done = 0 WHERE name = 'bookings';"
    ));
    fx.store.get(&fx.table, PENDING_ID).expect("pending row")
}

/// Checks the store after a page was applied (`page`: the bytes decoded, if
/// they did) with `result`.
fn check_pull_result(
    fx: &Fixture,
    pending_before: &fieldsync_core::value::Record,
    page: Option<&PullPage>,
    result: Result<fieldsync_core::store::PageApplied, Error>,
) {
    let pending_after = fx.store.get(&fx.table, PENDING_ID).expect("pending row");
    assert_eq!(
        &pending_after, pending_before,
        "a pulled page overwrote a row with a pending local change"
    );
    let state = fx.store.table_state("bookings").expect("table state");
    let applied = match result {
        Err(e) => {
            assert_eq!(
                fx.store.count("bookings").expect("count"),
                1,
                "refused page left rows: {e}"
            );
            assert_eq!(
                state.cursor, CURSOR_BEFORE,
                "refused page moved the cursor: {e}"
            );
            return;
        }
        Ok(applied) => applied,
    };
    let page = page.expect("only a page that decodes is accepted");

    // The page was accepted: work out what the table must now hold.
    let columns = &page.columns;
    assert_eq!(columns.first().map(String::as_str), Some(VERSION_COLUMN));
    let unique: BTreeSet<&String> = columns.iter().collect();
    assert_eq!(
        unique.len(),
        columns.len(),
        "a page with a repeated column was accepted: {columns:?}"
    );
    let pk = columns
        .iter()
        .position(|c| c == &fx.table.primary_key)
        .expect("accepted page has the primary key");
    let mut expected: BTreeMap<String, (i64, BTreeMap<String, Value>)> = BTreeMap::new();
    let mut kept = 0u64;
    for row in &page.rows {
        let Value::Text(id) = &row[pk] else {
            panic!("accepted row with a non-text key: {row:?}");
        };
        if id == PENDING_ID {
            kept += 1;
            continue;
        }
        let Value::Integer(version) = row[0] else {
            panic!("accepted row with a non-integer version: {row:?}");
        };
        let mut fields = BTreeMap::new();
        for (name, value) in columns[1..].iter().zip(&row[1..]) {
            let kind = fx
                .table
                .column(name)
                .expect("accepted column is in the profile")
                .kind;
            let value = value
                .clone()
                .coerce(kind)
                .unwrap_or_else(|e| panic!("accepted a value coerce refuses: {e}"));
            fields.insert(name.clone(), value);
        }
        expected.insert(id.clone(), (version, fields));
    }
    let mut removed = 0u64;
    for id in &page.removed {
        if id == PENDING_ID {
            kept += 1;
        } else if expected.remove(id).is_some() {
            removed += 1;
        }
    }
    assert_eq!(
        applied.upserted,
        page.rows.len() as u64
            - page
                .rows
                .iter()
                .filter(|r| r[pk] == Value::Text(PENDING_ID.into()))
                .count() as u64
    );
    assert_eq!(applied.removed, removed, "removal count");
    assert_eq!(applied.kept_pending, kept, "kept-pending count");
    assert_eq!(
        fx.store.count("bookings").expect("count"),
        expected.len() as u64 + 1,
        "rows in the table after the page"
    );
    for (id, (version, fields)) in &expected {
        let record = fx.store.get(&fx.table, id).expect("pulled row is stored");
        assert_eq!(record.version, *version, "version of {id}");
        assert_eq!(&record.fields, fields, "fields of {id}");
    }
    assert_eq!(state.cursor, page.cursor, "cursor after the page");
    assert_eq!(
        state.initial_done, !page.has_more,
        "initial_done after the page"
    );
}

/// Checks [`Value::coerce`] of one value against every column kind: a value
/// accepted is canonical (coercing again keeps it), of the kind's type,
/// survives JSON, and a date or date-time text parses.
pub fn coerce_all(value: &Value) {
    for kind in ALL_KINDS {
        let Ok(c) = value.clone().coerce(kind) else {
            continue;
        };
        assert_eq!(
            c.clone().coerce(kind),
            Ok(c.clone()),
            "coerce is not idempotent for {kind:?}"
        );
        let type_ok = match (&c, kind) {
            (Value::Null, _) => true,
            (Value::Text(_), ColumnKind::Text) => true,
            (Value::Text(s), ColumnKind::Date) => time::is_date(s),
            (Value::Text(s), ColumnKind::DateTime) => time::is_datetime(s),
            (Value::Integer(_), ColumnKind::Integer) => true,
            (Value::Real(f), ColumnKind::Real) => f.is_finite(),
            (Value::Boolean(_), ColumnKind::Boolean) => true,
            _ => false,
        };
        assert!(type_ok, "{kind:?} accepted {c:?}");
        let text = serde_json::to_string(&c).expect("value encodes");
        let back: Value = serde_json::from_str(&text).expect("value decodes");
        assert_eq!(
            back.coerce(kind),
            Ok(c),
            "{kind:?} value changed over JSON: {text}"
        );
    }
}

/// Target `push_request`: bytes → `PushRequest` (what the server decodes).
/// Checks the JSON round trip, op names, and [`coerce_all`] on every value.
pub fn push_request(data: &[u8]) {
    let Ok(request) = serde_json::from_slice::<PushRequest>(data) else {
        return;
    };
    assert_json_round_trip(&request);
    for m in &request.mutations {
        assert_eq!(Op::parse(m.op.as_str()), Some(m.op));
        for value in m.data.values() {
            coerce_all(value);
        }
    }
}

/// Target `push_response`: bytes → `PushResponse` (what a device decodes); a
/// response that decodes is applied with `Store::apply_push_results` as the
/// answer to a batch of updates of bookings `bk-0`, `bk-1`, ... Checks: the
/// JSON round trip; no panic; on success each settled row is the server's row
/// (coerced) or gone, and each conflict or rejection is a sync error that
/// reads back exactly as recorded.
pub fn push_response(data: &[u8]) {
    let Ok(response) = serde_json::from_slice::<PushResponse>(data) else {
        return;
    };
    assert_json_round_trip(&response);
    for r in &response.results {
        for value in r.row.iter().flat_map(|row| row.values()) {
            coerce_all(value);
        }
    }
    let fx = push_fixture();
    fx.reset("DELETE FROM bookings; DELETE FROM _fs_outbox; DELETE FROM _fs_sync_errors;");
    let batch: Vec<OutboxEntry> = (0..response.results.len())
        .map(|i| OutboxEntry {
            seq: i as i64 + 1,
            mutation: Mutation {
                idempotency_key: format!("key-{i}"),
                table: "bookings".into(),
                id: format!("bk-{i}"),
                op: Op::Update,
                base_version: 1,
                data: BTreeMap::from([("notes".to_owned(), Value::Text("on site".into()))]),
                transaction: None,
            },
            attempts: 1,
        })
        .collect();
    let result = fx
        .store
        .apply_push_results(&fx.profile, &batch, &response.results, 5);
    let errors = fx.store.sync_errors(u32::MAX).expect("sync errors read");
    let Ok(applied) = result else {
        assert_eq!(
            fx.store.count("bookings").expect("count"),
            0,
            "refused results left rows"
        );
        assert!(errors.is_empty(), "refused results left sync errors");
        return;
    };
    let mut recorded = applied.conflicts.clone();
    recorded.extend(applied.rejected.iter().cloned());
    recorded.sort_by_key(|e| std::cmp::Reverse(e.id));
    assert_eq!(errors, recorded, "sync errors read back differently");
    let mut n_applied = 0;
    for (entry, r) in batch.iter().zip(&response.results) {
        if r.status == MutationStatus::Applied {
            n_applied += 1;
        }
        let id = &entry.mutation.id;
        match &r.row {
            None => assert!(fx.store.get(&fx.table, id).is_err(), "{id} should be gone"),
            Some(row) => {
                let record = fx.store.get(&fx.table, id).expect("settled row stored");
                assert_eq!(record.version, r.version);
                for c in &fx.table.columns {
                    let want = if c.name == fx.table.primary_key {
                        Value::Text(id.clone())
                    } else {
                        row.get(&c.name)
                            .cloned()
                            .unwrap_or(Value::Null)
                            .coerce(c.kind)
                            .expect("accepted value coerces")
                    };
                    assert_eq!(record.fields.get(&c.name), Some(&want), "{id}.{}", c.name);
                }
            }
        }
    }
    assert_eq!(applied.applied, n_applied);
}

/// What a device checks in a profile it receives (`refresh_profile`).
fn device_accepts(p: &SyncProfile) -> bool {
    p.tables.iter().all(|t| {
        check_identifier(&t.name).is_ok()
            && t.columns.iter().all(|c| check_identifier(&c.name).is_ok())
            && t.columns.first().map(|c| &c.name) == Some(&t.primary_key)
    })
}

/// Target `profile`: bytes → `OfflineProfile`, validated and resolved against
/// the shipped data model; and bytes → `SyncProfile`. Checks: JSON round
/// trips; `validate` and `resolve` agree; every profile the server accepts
/// resolves to one a device accepts and can create tables for (identifiers,
/// key first, each table and column once, kinds from the model, rules that
/// name synced columns).
pub fn profile(data: &[u8]) {
    if let Ok(p) = serde_json::from_slice::<OfflineProfile>(data) {
        assert_json_round_trip(&p);
        let model = model();
        let validated = p.validate(model);
        let resolved = p.resolve(model, 7, USER, None);
        assert_eq!(
            validated.is_ok(),
            resolved.is_ok(),
            "validate and resolve disagree: {validated:?} / {:?}",
            resolved.as_ref().err()
        );
        if let Ok(sp) = resolved {
            check_resolved(&p, &sp, model);
        } else if let Err(e) = validated {
            assert!(!e.to_string().is_empty());
            assert!(
                matches!(
                    e,
                    fieldsync_protocol::Error::InvalidProfile(_)
                        | fieldsync_protocol::Error::UnknownTable(_)
                        | fieldsync_protocol::Error::UnknownColumn { .. }
                ),
                "unexpected error kind {e:?}"
            );
        }
    }
    if let Ok(sp) = serde_json::from_slice::<SyncProfile>(data) {
        assert_json_round_trip(&sp);
        let empty = BTreeMap::new();
        for t in &sp.tables {
            assert!(sp.table(&t.name).is_some());
            let deps = t.depends_on();
            assert!(
                deps.windows(2).all(|w| w[0] < w[1]),
                "depends_on is sorted and unique"
            );
            let _ = t.row_qualifies(&empty, &sp.filter_context(0));
        }
        let _ = device_accepts(&sp);
    }
}

fn check_resolved(p: &OfflineProfile, sp: &SyncProfile, model: &DataModel) {
    assert_eq!(sp.user_id, USER);
    assert_eq!(sp.version, 7);
    assert_eq!(sp.tables.len(), p.tables.len());
    assert!(
        device_accepts(sp),
        "a device would refuse a profile the server accepted: {sp:?}"
    );
    let names: BTreeSet<&String> = sp.tables.iter().map(|t| &t.name).collect();
    assert_eq!(
        names.len(),
        sp.tables.len(),
        "a table listed twice was accepted"
    );
    for t in &sp.tables {
        let schema = model
            .table(&t.name)
            .expect("resolved table is in the model");
        assert_eq!(t.primary_key, schema.primary_key);
        let cols: BTreeSet<&String> = t.columns.iter().map(|c| &c.name).collect();
        assert_eq!(
            cols.len(),
            t.columns.len(),
            "table '{}' resolved with a repeated column: {:?}",
            t.name,
            t.columns
        );
        for c in &t.columns {
            assert_eq!(
                schema.column(&c.name),
                Some(c),
                "column kind comes from the model"
            );
        }
        assert!((MIN_SYNC_INTERVAL_SECS..=MAX_SYNC_INTERVAL_SECS).contains(&t.sync_interval_secs));
        assert!(!t.rules.is_empty());
        for rule in &t.rules {
            match rule {
                RowRule::All => {}
                RowRule::Owned { column } => {
                    assert_eq!(t.column(column).map(|c| c.kind), Some(ColumnKind::Text));
                }
                RowRule::Related {
                    table,
                    column,
                    foreign_column,
                } => {
                    assert!(t.column(column).is_some(), "related column is synced");
                    let other = sp.table(table).expect("related table is in the profile");
                    assert!(
                        other.column(foreign_column).is_some(),
                        "foreign column is synced"
                    );
                }
                RowRule::Custom { .. } => {}
            }
        }
    }
}

/// Target `datetime`: arbitrary text through `parse_date` /
/// `parse_datetime`, and arbitrary 64-bit numbers through the formatters.
/// Checks: parsing never panics; what parses formats back to the same text
/// (date-times lose only their fraction of a second) and re-parses to the
/// same value; what the formatters produce for years 0000 to 9999 parses back.
pub fn datetime(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Some(days) = time::parse_date(s) {
            assert!(time::is_date(s));
            assert_eq!(time::format_date(days), s, "date does not format back");
        }
        if let Some(ms) = time::parse_datetime(s) {
            assert!(time::is_datetime(s));
            let formatted = time::format_datetime(ms);
            let whole = ms.div_euclid(1000) * 1000;
            assert_eq!(
                time::parse_datetime(&formatted),
                Some(whole),
                "{s} -> {formatted}"
            );
            // The text without its fraction of a second is the canonical form.
            let canonical = match s.split_once('.') {
                Some((head, _)) => format!("{head}Z"),
                None => s.to_owned(),
            };
            assert_eq!(formatted, canonical, "date-time does not format back");
        }
    }
    if let Some(bytes) = data.get(..8) {
        let n = i64::from_le_bytes(bytes.try_into().expect("8 bytes"));
        check_format_datetime(n);
        check_format_date(n);
    }
}

/// Years the text forms can carry (four digits).
fn year_in_range(text: &str) -> bool {
    text.len() >= 4 && text.as_bytes()[..4].iter().all(u8::is_ascii_digit)
}

fn check_format_datetime(ms: i64) {
    let text = time::format_datetime(ms);
    let parsed = time::parse_datetime(&text);
    if year_in_range(&text) && text.len() == 20 {
        assert_eq!(parsed, Some(ms.div_euclid(1000) * 1000), "{ms} -> {text}");
    } else {
        assert_eq!(parsed, None, "{ms} -> {text} parsed");
    }
}

fn check_format_date(days: i64) {
    let text = time::format_date(days);
    let parsed = time::parse_date(&text);
    if year_in_range(&text) && text.len() == 10 {
        assert_eq!(parsed, Some(days), "{days} -> {text}");
    } else {
        assert_eq!(parsed, None, "{days} -> {text} parsed");
    }
}
