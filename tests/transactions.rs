//! Transactions: several writes atomic on the device and applied whole or
//! not at all by the server, under both conflict settings; the push
//! protocol's transaction groups over raw HTTP; and `kill -9` of a real
//! `fieldsync device` process between a transaction's writes and after its
//! local commit.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use fieldsync_core::{Engine, EngineConfig, ErrorKind, Value, Write, WriteOp};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

fn fields(pairs: &[(&str, &str)]) -> BTreeMap<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Value::Text((*v).to_owned())))
        .collect()
}

fn write(op: WriteOp, table: &str, id: &str, f: &[(&str, &str)]) -> Write {
    Write {
        op,
        table: table.into(),
        id: id.into(),
        fields: fields(f),
    }
}

fn text(engine: &Engine, table: &str, id: &str, column: &str) -> Value {
    engine.get(table, id).expect("on the device").fields[column].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_lands_whole_or_not_at_all_under_both_conflict_settings() {
    let server = Server::start().await;
    server.seed(&["tech1", "tech2"], 40).await;
    let tech = server.user("tech1", "technician").await;
    let dispatcher = server.user("disp", "dispatcher").await;
    let dir = tempfile::tempdir().expect("dir");
    let engine = Engine::open(EngineConfig::new(
        dir.path().join("d.db"),
        &server.url,
        &tech,
    ))
    .expect("open");
    engine.sync().await.expect("first sync");
    let bookings: Vec<String> = engine
        .list("bookings", None, 1000)
        .expect("bookings")
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert!(bookings.len() >= 3, "{bookings:?}");
    let local_wo = engine.list("work_orders", None, 1).expect("wo")[0]
        .id
        .clone();
    let foreign_wo = server
        .rows(&dispatcher, "work_orders")
        .await
        .into_keys()
        .find(|id| engine.get("work_orders", id).is_err())
        .expect("a work order outside tech1's profile");
    const TASKS: &str = "work_order_service_tasks";

    // Both writes commit locally, share one transaction in the outbox, and
    // land on the server together.
    engine
        .transaction(vec![
            write(
                WriteOp::Insert,
                TASKS,
                "tx-task-1",
                &[
                    ("work_order_id", &local_wo),
                    ("task_name", "replace filter"),
                ],
            ),
            write(
                WriteOp::Update,
                "bookings",
                &bookings[0],
                &[("notes", "filter replaced")],
            ),
        ])
        .expect("transaction");
    let outbox = engine.outbox().expect("outbox");
    assert_eq!(outbox.len(), 2);
    let marks: Vec<_> = outbox
        .iter()
        .map(|e| e.mutation.transaction.clone().expect("marked"))
        .collect();
    assert_eq!(marks[0], marks[1]);
    assert_eq!(marks[0].size, 2);
    let report = engine.sync().await.expect("sync");
    assert_eq!(report.uploaded, 2, "{report:?}");
    let tasks = server.rows(&dispatcher, TASKS).await;
    assert_eq!(tasks["tx-task-1"].1["task_name"], "replace filter");
    let server_bookings = server.rows(&dispatcher, "bookings").await;
    assert_eq!(server_bookings[&bookings[0]].1["notes"], "filter replaced");

    // Conflict detection off: the server refuses the second write (a task
    // for a work order outside the technician's profile), so the first,
    // applied before it, is rolled back too; the device takes the server's
    // rows back for both.
    let before = server_bookings[&bookings[1]].clone();
    engine
        .transaction(vec![
            write(
                WriteOp::Update,
                "bookings",
                &bookings[1],
                &[("notes", "must not land")],
            ),
            write(
                WriteOp::Put,
                TASKS,
                "tx-task-2",
                &[
                    ("work_order_id", &foreign_wo),
                    ("task_name", "out of scope"),
                ],
            ),
        ])
        .expect("transaction");
    assert_eq!(
        text(&engine, "bookings", &bookings[1], "notes"),
        Value::Text("must not land".into())
    );
    let report = engine.sync().await.expect("sync");
    assert_eq!(report.uploaded, 0, "{report:?}");
    assert_eq!(report.rejected.len(), 2, "{report:?}");
    let aborted = report
        .rejected
        .iter()
        .find(|e| e.record_id == bookings[1])
        .expect("the booking's result");
    assert!(
        aborted
            .message
            .contains("nothing of the transaction was applied"),
        "{aborted:?}"
    );
    assert!(
        !server
            .rows(&dispatcher, TASKS)
            .await
            .contains_key("tx-task-2")
    );
    assert_eq!(
        server.rows(&dispatcher, "bookings").await[&bookings[1]],
        before
    );
    assert_eq!(
        engine.get(TASKS, "tx-task-2").expect_err("gone").kind(),
        ErrorKind::RecordNotFound
    );
    assert_eq!(
        Value::from_json(&before.1["notes"]).expect("value"),
        text(&engine, "bookings", &bookings[1], "notes")
    );
    assert_eq!(engine.pending_uploads().expect("pending"), 0);

    // Conflict detection on: a dispatcher changed the booking meanwhile, so
    // the transaction's second write conflicts; the server keeps its row
    // and the first write (a valid task) is not applied either.
    server.set_conflict_detection(true).await;
    let (status, v) = server
        .call(
            "PUT",
            &format!("/v1/records/bookings/{}", bookings[2]),
            Some(&dispatcher),
            Some(json!({"data": {"notes": "dispatcher's note"}})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    engine
        .transaction(vec![
            write(
                WriteOp::Insert,
                TASKS,
                "tx-task-3",
                &[("work_order_id", &local_wo), ("task_name", "valid alone")],
            ),
            write(
                WriteOp::Update,
                "bookings",
                &bookings[2],
                &[("notes", "technician's note")],
            ),
        ])
        .expect("transaction");
    let report = engine.sync().await.expect("sync");
    assert_eq!(report.uploaded, 0, "{report:?}");
    assert_eq!(report.conflicts.len(), 1, "{report:?}");
    assert_eq!(report.conflicts[0].record_id, bookings[2]);
    assert_eq!(report.rejected.len(), 1, "{report:?}");
    assert_eq!(report.rejected[0].record_id, "tx-task-3");
    assert!(
        !server
            .rows(&dispatcher, TASKS)
            .await
            .contains_key("tx-task-3")
    );
    assert_eq!(
        server.rows(&dispatcher, "bookings").await[&bookings[2]].1["notes"],
        "dispatcher's note"
    );
    assert_eq!(
        text(&engine, "bookings", &bookings[2], "notes"),
        Value::Text("dispatcher's note".into())
    );
    assert!(engine.get(TASKS, "tx-task-3").is_err());
    // The server's Sync Errors log has every write of it.
    let log = server.admin("GET", "/v1/admin/sync-errors", None).await;
    let logged: Vec<&str> = log["errors"]
        .as_array()
        .or_else(|| log.as_array())
        .expect("entries")
        .iter()
        .filter_map(|e| e["code"].as_str())
        .collect();
    assert!(logged.contains(&"transaction_aborted"), "{log}");
    assert!(logged.contains(&"conflict"), "{log}");

    // On the device, a write that fails undoes the writes before it.
    let err = engine
        .transaction(vec![
            write(
                WriteOp::Insert,
                TASKS,
                "tx-task-4",
                &[("work_order_id", &local_wo)],
            ),
            write(
                WriteOp::Update,
                "bookings",
                "no-such-booking",
                &[("notes", "x")],
            ),
        ])
        .expect_err("the second write fails");
    assert_eq!(err.kind(), ErrorKind::RecordNotFound);
    assert!(engine.get(TASKS, "tx-task-4").is_err());
    assert_eq!(engine.pending_uploads().expect("pending"), 0);
    let err = engine.transaction(Vec::new()).expect_err("empty");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_push_applies_a_transaction_group_whole_and_replays_it() {
    let server = Server::start().await;
    server.seed(&["tech1"], 10).await;
    let tech = server.wide_technician("tech1").await;
    let dispatcher = server.user("disp", "dispatcher").await;
    let task = |key: &str, id: &str, tx: serde_json::Value| {
        json!({"idempotency_key": key, "table": "work_order_service_tasks", "id": id,
               "op": "insert", "base_version": 0,
               "data": {"work_order_id": "wo-0000001", "task_name": id},
               "transaction": tx})
    };
    let tasks = || server.rows(&dispatcher, "work_order_service_tasks");

    // Half a transaction: refused whole, nothing applied.
    let (status, v) = server
        .call(
            "POST",
            "/v1/sync/push",
            Some(&tech),
            Some(json!({"mutations": [task("k1", "raw-1", json!({"id": "t1", "size": 2}))]})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["results"][0]["status"], "rejected", "{v}");
    assert_eq!(v["results"][0]["error"]["code"], "bad_request", "{v}");
    assert!(!tasks().await.contains_key("raw-1"));

    // The whole transaction applies; a replay answers the same results and
    // applies nothing twice.
    let body = json!({"mutations": [
        task("k2", "raw-2", json!({"id": "t2", "size": 2})),
        task("k3", "raw-3", json!({"id": "t2", "size": 2})),
    ]});
    let (_, first) = server
        .call("POST", "/v1/sync/push", Some(&tech), Some(body.clone()))
        .await;
    assert_eq!(first["results"][0]["status"], "applied", "{first}");
    assert_eq!(first["results"][1]["status"], "applied", "{first}");
    let after_first = tasks().await;
    let (_, replay) = server
        .call("POST", "/v1/sync/push", Some(&tech), Some(body))
        .await;
    assert_eq!(replay, first);
    assert_eq!(tasks().await, after_first);

    // One write refused (an unknown column) takes the other down with it.
    let mut bad = task("k5", "raw-5", json!({"id": "t3", "size": 2}));
    bad["data"]["no_such_column"] = json!(1);
    let (_, v) = server
        .call(
            "POST",
            "/v1/sync/push",
            Some(&tech),
            Some(json!({"mutations": [task("k4", "raw-4", json!({"id": "t3", "size": 2})), bad]})),
        )
        .await;
    assert_eq!(
        v["results"][0]["error"]["code"], "transaction_aborted",
        "{v}"
    );
    assert_eq!(v["results"][1]["error"]["code"], "unknown_column", "{v}");
    let now = tasks().await;
    assert!(!now.contains_key("raw-4") && !now.contains_key("raw-5"));
}

/// Whether each of the tasks `a` and `b` holds the transaction's write on
/// the server.
async fn landed(server: &Server, token: &str, a: &str, b: &str) -> [bool; 2] {
    let rows = server.rows(token, "work_order_service_tasks").await;
    let written = |id: &str| {
        rows.get(id)
            .is_some_and(|r| r.1["task_name"] == "in transaction")
    };
    [written(a), written(b)]
}

/// The same, in the device's file.
fn in_transaction(device: &Device, a: &str, b: &str) -> [bool; 2] {
    let conn = rusqlite::Connection::open_with_flags(
        &device.db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open the device file");
    let written = |id: &str| {
        conn.query_row(
            "SELECT count(*) > 0 FROM work_order_service_tasks WHERE id = ?1 AND task_name = 'in transaction'",
            [id],
            |r| r.get::<_, bool>(0),
        )
        .expect("read")
    };
    [written(a), written(b)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_between_the_writes_of_a_transaction_and_after_its_commit() {
    let server = Server::start().await;
    server.seed(&["tech1"], 10).await;
    let tech = server.wide_technician("tech1").await;
    let dispatcher = server.user("disp", "dispatcher").await;
    let dir = tempfile::tempdir().expect("dir");
    let device = Device::new(dir.path().join("d.db"), &server.url, &tech);
    device.ok(&["sync"]).await;
    const TASKS: &str = "work_order_service_tasks";

    let mut syncs_killed = 0;
    for round in 0..10 {
        let a = format!("kill-a-{round}");
        let b = format!("kill-b-{round}");
        // Odd rounds: `a` is created first by a write of its own, still
        // queued, and the transaction changes it: the outbox then uploads
        // that write in one batch and the transaction in the next.
        let first_op = if round % 2 == 1 {
            device
                .ok(&[
                    "put",
                    TASKS,
                    &a,
                    "--set",
                    "work_order_id=wo-0000001",
                    "--set",
                    "task_name=before",
                ])
                .await;
            "update"
        } else {
            "insert"
        };
        let file = dir.path().join(format!("tx-{round}.json"));
        std::fs::write(
            &file,
            json!([
                {"op": first_op, "table": TASKS, "id": a,
                 "fields": {"work_order_id": "wo-0000001", "task_name": "in transaction"}},
                {"op": "insert", "table": TASKS, "id": b,
                 "fields": {"work_order_id": "wo-0000002", "task_name": "in transaction"}},
            ])
            .to_string(),
        )
        .expect("write the file");
        let file = file.to_string_lossy().into_owned();
        let pending_before = device.ok(&["status"]).await["pending_uploads"].clone();

        // Killed between the two writes, inside the open transaction:
        // neither is on the device, nor queued.
        kill_at(
            &device,
            &[&file, "--stop-after-write", "1"],
            "stopped after write 1",
        )
        .await;
        assert!(
            in_transaction(&device, &a, &b) == [false, false],
            "round {round}: a write of a killed transaction is on the device"
        );
        assert_eq!(
            device.ok(&["status"]).await["pending_uploads"],
            pending_before
        );

        // Killed once it committed: both are on the device.
        kill_at(
            &device,
            &[&file, "--stop-after-commit"],
            "stopped after commit",
        )
        .await;
        assert_eq!(in_transaction(&device, &a, &b), [true, true]);

        // A sync killed at a point that moves each round (before, during
        // and after its upload): the server holds both or neither, never
        // one of them.
        let mut child = device.command(&["sync"]).spawn().expect("spawn");
        let delay = Duration::from_millis(3 + 6 * round as u64);
        tokio::select! {
            _ = child.wait() => {}
            _ = tokio::time::sleep(delay) => {
                child.start_kill().expect("kill -9");
                let _ = child.wait().await;
                syncs_killed += 1;
            }
        }
        let on_server = landed(&server, &dispatcher, &a, &b).await;
        assert_eq!(
            on_server[0], on_server[1],
            "round {round}: the server holds one write of the transaction without the other"
        );
        // The next sync finishes the upload: both, once.
        device.ok(&["sync"]).await;
        assert_eq!(
            landed(&server, &dispatcher, &a, &b).await,
            [true, true],
            "round {round}"
        );
        assert_eq!(in_transaction(&device, &a, &b), [true, true]);
    }
    assert_eq!(device.ok(&["status"]).await["pending_uploads"], 0);
    println!("transaction kill test: {syncs_killed} of 10 syncs killed");
    assert!(syncs_killed >= 1, "no sync was killed");
}

/// Runs `device transaction ARGS`, waits for `line` on its standard error,
/// then kills it with SIGKILL.
async fn kill_at(device: &Device, args: &[&str], line: &str) {
    let mut command = vec!["transaction"];
    command.extend_from_slice(args);
    let mut child = device.command(&command).spawn().expect("spawn");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let got = tokio::time::timeout(Duration::from_secs(60), stderr.next_line())
        .await
        .expect("the device reaches the stop")
        .expect("read")
        .expect("a line");
    assert_eq!(got, line);
    child.start_kill().expect("kill -9");
    let _ = child.wait().await;
}
