//! Retention, receipts and the Sync Errors log on both back ends.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use fieldsync_protocol::Value;
use fieldsync_protocol::protocol::codes;
use sha2::{Digest, Sha256};

use super::retention::PURGE_BATCH;
use super::*;
use crate::sql::text;
use fieldsync_protocol::protocol::{Mutation, MutationStatus, Op};
use fieldsync_protocol::telemetry::{
    TelemetryEvent, TelemetryKind, TelemetryMode, TelemetryNetwork, TelemetryResult,
};
use fieldsync_protocol::time::{ManualClock, format_datetime};

const DAY: i64 = 86_400_000;

fn count(db: &Db, table: &str) -> i64 {
    db.read(|c| {
        c.query_one(&format!("SELECT COUNT(*) FROM {table}"), &[])?
            .i64(0)
    })
    .expect("count")
}

fn event(id: &str) -> TelemetryEvent {
    TelemetryEvent {
        id: id.into(),
        kind: TelemetryKind::Sync,
        device_id: "d1".into(),
        sync_id: "s1".into(),
        mode: TelemetryMode::Delta,
        result: TelemetryResult::Success,
        failure_type: None,
        started_at: 0,
        duration_ms: 1,
        active_duration_ms: 1,
        rows_up: 0,
        rows_down: 0,
        bytes_up: 0,
        bytes_down: 0,
        table: None,
        network_type: TelemetryNetwork::Wifi,
        app_version: "1".into(),
        device_model: "m".into(),
        os_version: "o".into(),
        conflicts: 0,
        rejected: 0,
        pending_uploads: None,
    }
}

/// Receipts answer replays for their retention and are purged after it,
/// telemetry likewise; the purge reads the server's clock and deletes in
/// batches.
#[test]
fn receipts_and_telemetry_are_purged_after_their_retention() {
    on_sqlite(purge_scenario);
}

/// The same on PostgreSQL, when the test command provides a cluster
/// (`scripts/with-postgres.sh` sets `FIELDSYNC_TEST_POSTGRES`).
#[test]
fn receipts_and_telemetry_are_purged_after_their_retention_on_postgres() {
    if let Some(db) = test_support::fresh_postgres_db() {
        purge_scenario(db);
    }
}

/// The Sync Errors log is bounded: a rejected change's data past
/// [`SYNC_ERROR_DATA_BYTES`] is kept as its size and digest only (and
/// cannot be retried), the log pages by id, and entries go after their
/// retention with their retry records.
#[test]
fn sync_errors_are_bounded_paged_and_purged() {
    on_sqlite(sync_errors_scenario);
}

#[test]
fn sync_errors_are_bounded_paged_and_purged_on_postgres() {
    if let Some(db) = test_support::fresh_postgres_db() {
        sync_errors_scenario(db);
    }
}

fn sync_errors_scenario(db: Db) {
    let clock = Arc::new(ManualClock::new(1_800_000_000_000));
    let db = db.with_clock(clock.clone());
    let user = technician(&db);
    let sync = db.sync_profile(&user).expect("profile");
    // A row over the row size limit: rejected, and logged.
    let mut huge = booking_insert(&db, "huge", "bk-huge", "huge");
    let notes = "n".repeat(fieldsync_protocol::protocol::MAX_ROW_BYTES + 1);
    huge.data.insert("notes".into(), Value::Text(notes));
    let result = db.push(&user, None, &sync, &[huge.clone()]).expect("push");
    assert_eq!(result[0].status, MutationStatus::Rejected);
    let json = serde_json::to_string(&huge.data).expect("json");
    let all = SyncErrorFilter::default();
    let logged = db.sync_errors(&all).expect("log");
    assert_eq!(logged.len(), 1);
    assert_eq!(logged[0].device_data, None);
    assert_eq!(
        logged[0].device_data_cut,
        Some(DataCut {
            bytes: json.len() as u64,
            sha256: hex::encode(Sha256::digest(json.as_bytes())),
        })
    );
    let stored: i64 = db
        .read(|c| {
            c.query_one(
                "SELECT SUM(LENGTH(COALESCE(device_data, '')) + LENGTH(COALESCE(server_data, ''))) FROM _fs_sync_errors",
                &[],
            )?
            .i64(0)
        })
        .expect("stored");
    assert!(
        stored <= 2 * SYNC_ERROR_DATA_BYTES as i64,
        "{stored} bytes kept"
    );
    let retry = db
        .retry_sync_error(logged[0].id, "admin")
        .expect_err("retry");
    assert!(
        matches!(retry, StoreError::Conflict { code, .. } if code == codes::CONFLICT),
        "{retry:?}"
    );

    // Small rejected changes keep their data; the log pages by id.
    for i in 0..5 {
        let mut m = booking_insert(&db, &format!("bad{i}"), &format!("bk-bad{i}"), "x");
        m.data.insert("no_such_column".into(), Value::Integer(i));
        db.push(&user, None, &sync, &[m]).expect("push");
    }
    let first = db
        .sync_errors(&SyncErrorFilter {
            limit: Some(4),
            ..Default::default()
        })
        .expect("page 1");
    assert_eq!(first.len(), 4);
    assert!(
        first
            .iter()
            .all(|e| e.device_data.is_some() && e.device_data_cut.is_none())
    );
    let rest = db
        .sync_errors(&SyncErrorFilter {
            limit: Some(4),
            before: first.last().map(|e| e.id),
            ..Default::default()
        })
        .expect("page 2");
    assert_eq!(rest.len(), 2);
    assert!(rest[0].id < first[3].id);
    assert_eq!(rest[1].id, logged[0].id);

    // Past the retention, every entry goes.
    let retention = Retention {
        receipts: Duration::from_secs(30 * 86_400),
        telemetry: Duration::from_secs(90 * 86_400),
        sync_errors: Duration::from_secs(90 * 86_400),
    };
    clock.advance(89 * DAY);
    assert_eq!(db.purge(&retention).expect("purge").sync_errors, 0);
    clock.advance(2 * DAY);
    assert_eq!(db.purge(&retention).expect("purge").sync_errors, 6);
    assert_eq!(count(&db, "_fs_sync_errors"), 0);
}

/// Runs `scenario` on a fresh SQLite database with the default model.
fn on_sqlite(scenario: fn(Db)) {
    let dir = tempfile::tempdir().expect("dir");
    let profile = crate::field_service_profile();
    scenario(Db::open(dir.path(), crate::field_service_model(), &profile).expect("open"));
}

/// A technician with the default profile.
fn technician(db: &Db) -> User {
    db.create_user(
        Some("tech-1".into()),
        "T",
        Role::Technician,
        "field-service",
        None,
    )
    .expect("user")
    .0
}

/// A receipt written before receipts kept their mutation's digest
/// (migration 3 leaves it NULL) answers any replay of its key, as it
/// did then; a receipt with a digest refuses another change.
#[test]
fn receipts_without_a_digest_answer_any_replay() {
    on_sqlite(digest_scenario);
}

#[test]
fn receipts_without_a_digest_answer_any_replay_on_postgres() {
    if let Some(db) = test_support::fresh_postgres_db() {
        digest_scenario(db);
    }
}

/// The technician's new booking `id`, named `name`, starting within the
/// next hour of the database's clock (so the technician's rules select
/// it).
fn booking_insert(db: &Db, key: &str, id: &str, name: &str) -> Mutation {
    Mutation {
        idempotency_key: key.into(),
        table: "bookings".into(),
        id: id.into(),
        op: Op::Insert,
        base_version: 0,
        data: BTreeMap::from([
            ("resource_id".into(), Value::Text("tech-1".into())),
            ("status".into(), Value::Text("active".into())),
            (
                "start_time".into(),
                Value::Text(format_datetime(db.now_ms() + 3_600_000)),
            ),
            ("name".into(), Value::Text(name.into())),
        ]),
        transaction: None,
    }
}

fn digest_scenario(db: Db) {
    let user = technician(&db);
    let sync = db.sync_profile(&user).expect("profile");
    let insert = |key: &str, id: &str, name: &str| booking_insert(&db, key, id, name);
    let first = db
        .push(
            &user,
            None,
            &sync,
            &[insert("old", "bk-1", "a"), insert("new", "bk-2", "a")],
        )
        .expect("push");
    assert!(
        first.iter().all(|r| r.status == MutationStatus::Applied),
        "{first:?}"
    );
    db.write(|c| {
        c.execute(
            "UPDATE _fs_push_receipts SET mutation_digest = NULL WHERE idempotency_key = ?",
            &[text("old")],
        )
    })
    .expect("receipt as before migration 3");
    let again = db
        .push(
            &user,
            None,
            &sync,
            &[insert("old", "bk-1", "b"), insert("new", "bk-2", "b")],
        )
        .expect("push");
    assert_eq!(again[0], first[0]);
    assert_eq!(again[1].status, MutationStatus::Rejected);
    assert_eq!(
        again[1].error.as_ref().map(|e| e.code.as_str()),
        Some(codes::IDEMPOTENCY_KEY_REUSED)
    );
    for id in ["bk-1", "bk-2"] {
        assert_eq!(db.change_count("bookings", id).expect("changes"), 1);
    }
}

fn purge_scenario(db: Db) {
    let clock = Arc::new(ManualClock::new(1_800_000_000_000));
    let db = db.with_clock(clock.clone());
    let user = technician(&db);
    let sync = db.sync_profile(&user).expect("profile");
    let insert = |key: &str, id: &str| booking_insert(&db, key, id, "visit");
    // More receipts than one batch, so the purge loops.
    let batch: Vec<Mutation> = (0..PURGE_BATCH + 7)
        .map(|i| insert(&format!("k{i}"), &format!("bk-{i}")))
        .collect();
    for chunk in batch.chunks(500) {
        db.push(&user, None, &sync, chunk).expect("push");
    }
    crate::db::telemetry::store(&db, "tech-1", &[event("e1"), event("e2")], db.now_ms())
        .expect("telemetry");
    let retention = Retention {
        receipts: Duration::from_secs(30 * 86_400),
        telemetry: Duration::from_secs(90 * 86_400),
        sync_errors: Duration::from_secs(90 * 86_400),
    };

    // Within the retention: nothing goes, and a replay answers the
    // stored result (the row is not written again).
    clock.advance(29 * DAY);
    assert_eq!(db.purge(&retention).expect("purge"), Purged::default());
    let replay = db.push(&user, None, &sync, &batch[..1]).expect("replay");
    assert_eq!(
        replay[0].status,
        MutationStatus::Applied,
        "{:?}",
        replay[0].error
    );
    assert_eq!(replay[0].version, 1);
    assert_eq!(db.change_count("bookings", "bk-0").expect("changes"), 1);

    // Past it: every receipt goes, telemetry stays until its own.
    clock.advance(2 * DAY);
    let purged = db.purge(&retention).expect("purge");
    assert_eq!(
        purged,
        Purged {
            receipts: PURGE_BATCH as u64 + 7,
            telemetry: 0,
            sync_errors: 0,
        }
    );
    assert_eq!(count(&db, "_fs_push_receipts"), 0);
    assert_eq!(count(&db, "_fs_telemetry"), 2);
    clock.advance(60 * DAY);
    let purged = db.purge(&retention).expect("purge");
    assert_eq!(purged.telemetry, 2);
    assert_eq!(count(&db, "_fs_telemetry"), 0);
    // The rows themselves stay.
    assert_eq!(count(&db, "bookings"), PURGE_BATCH + 7);
}

/// One request mixing every kind of answer: a replayed key, new writes, a
/// creation refused after it was written (outside the profile), a write
/// refused before, a transaction rolled back whole, a key repeated in the
/// request, and a transaction applied. Each result is the one it would
/// get alone, in request order; refused writes change nothing; a replay
/// of the whole request answers the same from the receipts and writes
/// nothing more.
#[test]
fn a_mixed_push_request_answers_each_write_in_order() {
    on_sqlite(mixed_request_scenario);
}

#[test]
fn a_mixed_push_request_answers_each_write_in_order_on_postgres() {
    if let Some(db) = test_support::fresh_postgres_db() {
        mixed_request_scenario(db);
    }
}

fn mixed_request_scenario(db: Db) {
    use fieldsync_protocol::protocol::TransactionMark;
    let user = technician(&db);
    let sync = db.sync_profile(&user).expect("profile");
    let insert = |key: &str, id: &str| booking_insert(&db, key, id, "visit");
    // Starts in a year: outside the technician's next seven days.
    let far = |key: &str, id: &str| {
        let mut m = booking_insert(&db, key, id, "later");
        m.data.insert(
            "start_time".into(),
            Value::Text(format_datetime(db.now_ms() + 365 * DAY)),
        );
        m
    };
    let in_tx = |mut m: Mutation, id: &str| {
        m.transaction = Some(TransactionMark {
            id: id.into(),
            size: 2,
        });
        m
    };
    let first = db
        .push(&user, None, &sync, &[insert("k1", "bk-1")])
        .expect("push");
    assert_eq!(first[0].status, MutationStatus::Applied);

    let mut bad_column = insert("k4", "bk-2");
    bad_column.op = Op::Update;
    bad_column.base_version = 1;
    bad_column.data = BTreeMap::from([("nope".into(), Value::Text("x".into()))]);
    let request = vec![
        insert("k1", "bk-1"),
        insert("k2", "bk-2"),
        far("k3", "bk-3"),
        bad_column,
        in_tx(insert("t1a", "bk-4"), "tx-1"),
        in_tx(far("t1b", "bk-5"), "tx-1"),
        insert("k2", "bk-2"),
        in_tx(insert("t2a", "bk-6"), "tx-2"),
        in_tx(insert("t2b", "bk-7"), "tx-2"),
    ];
    let results = db.push(&user, None, &sync, &request).expect("push");
    let keys: Vec<&str> = results.iter().map(|r| r.idempotency_key.as_str()).collect();
    assert_eq!(
        keys,
        ["k1", "k2", "k3", "k4", "t1a", "t1b", "k2", "t2a", "t2b"]
    );
    let code = |i: usize| results[i].error.as_ref().map(|e| e.code.as_str());
    let status: Vec<MutationStatus> = results.iter().map(|r| r.status).collect();
    use MutationStatus::{Applied, Rejected};
    assert_eq!(
        status,
        [
            Applied, Applied, Rejected, Rejected, Rejected, Rejected, Applied, Applied, Applied
        ],
        "{results:?}"
    );
    assert_eq!(results[0], first[0], "a replay answers the first result");
    assert_eq!(
        results[6], results[1],
        "a repeated key answers its first result"
    );
    assert_eq!(code(2), Some(codes::FORBIDDEN));
    assert_eq!(code(3), Some(codes::UNKNOWN_COLUMN));
    assert_eq!(code(4), Some(codes::TRANSACTION_ABORTED));
    assert_eq!(code(5), Some(codes::FORBIDDEN));
    assert!(results[7].row.is_some() && results[8].row.is_some());

    let changes = |id: &str| db.change_count("bookings", id).expect("changes");
    let stored = |id: &str| {
        db.read(|c| {
            c.query_one("SELECT COUNT(*) FROM bookings WHERE id = ?", &[text(id)])?
                .i64(0)
        })
        .expect("count")
    };
    for id in ["bk-1", "bk-2", "bk-6", "bk-7"] {
        assert_eq!((changes(id), stored(id)), (1, 1), "{id}");
    }
    // Refused: not a row, not a change, not a trace of the creation.
    for id in ["bk-3", "bk-4", "bk-5"] {
        assert_eq!((changes(id), stored(id)), (0, 0), "{id}");
    }
    let name = db
        .read(|c| {
            c.query_one("SELECT name FROM bookings WHERE id = ?", &[text("bk-2")])?
                .text(0)
        })
        .expect("name");
    assert_eq!(name, "visit", "the refused update left the row alone");
    // Every key but the replayed one got its receipt, once; every refusal
    // is in the Sync Errors log; the change log names each upload.
    assert_eq!(count(&db, "_fs_push_receipts"), 8);
    assert_eq!(count(&db, "_fs_sync_errors"), 4);
    let audited = db
        .read(|c| {
            c.query_one(
                "SELECT idempotency_key FROM _fs_change_log WHERE row_id = ?",
                &[text("bk-7")],
            )?
            .text(0)
        })
        .expect("audit");
    assert_eq!(audited, "t2b");

    let replay = db.push(&user, None, &sync, &request).expect("replay");
    assert_eq!(replay, results, "a replay answers from the receipts");
    assert_eq!(count(&db, "_fs_push_receipts"), 8);
    assert_eq!(count(&db, "_fs_sync_errors"), 4);
    for id in ["bk-1", "bk-2", "bk-6", "bk-7"] {
        assert_eq!(changes(id), 1, "{id}");
    }
}
