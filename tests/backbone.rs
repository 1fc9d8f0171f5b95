//! End-to-end tests of the sync backbone: a real `fieldsync server` process
//! on loopback and real `fieldsync device` processes on SQLite files.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn table_report<'a>(report: &'a serde_json::Value, table: &str) -> &'a serde_json::Value {
    report["tables"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["table"] == table))
        .unwrap_or_else(|| panic!("no report for {table}: {report}"))
}

fn pages(report: &serde_json::Value) -> u64 {
    report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["pages"].as_u64().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_sync_then_incremental_insert_update_delete() {
    let server = Server::start().await;
    let tech = server.wide_technician("tech-a").await;
    let dispatcher = server.user("disp", "dispatcher").await;
    let seed_rows = server.seed(&["tech-a", "tech-b"], 600).await;
    let dir = tempfile::tempdir().unwrap();
    let mut device = Device::new(dir.path().join("d.db"), &server.url, &tech);
    device.page_size = 250;

    let report = device.ok(&["sync"]).await;
    let total: u64 = report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["rows_upserted"].as_u64().unwrap())
        .sum();
    assert!(total > 2000, "a few thousand rows: {total}");
    assert!(
        table_report(&report, "work_orders")["pages"]
            .as_u64()
            .unwrap()
            >= 3
    );
    for table in [
        "work_orders",
        "work_order_service_tasks",
        "accounts",
        "customer_assets",
    ] {
        assert_eq!(
            device.local_rows(table).len() as u64,
            seeded(&seed_rows, table),
            "{table}"
        );
    }
    // "Rows owned by me": only tech-a's bookings, every one of them.
    let server_bookings = server.rows(&dispatcher, "bookings").await;
    let mine: Vec<&String> = server_bookings
        .iter()
        .filter(|(_, (_, row))| row["resource_id"] == "tech-a")
        .map(|(id, _)| id)
        .collect();
    let local = device.local_rows("bookings");
    assert_eq!(local.len(), mine.len());
    assert!(mine.iter().all(|id| local.contains_key(*id)));

    // The server changes: an insert, an update and a delete.
    let (s, _) = server
        .call(
            "PUT",
            "/v1/records/work_orders/wo-new-1",
            Some(&dispatcher),
            Some(json!({"data": {"name": "WO-NEW", "status": "scheduled", "priority": 2}})),
        )
        .await;
    assert_eq!(s, 201, "a PUT that creates the row answers 201");
    let (s, updated) = server
        .call(
            "PUT",
            "/v1/records/work_orders/wo-0000005",
            Some(&dispatcher),
            Some(json!({"data": {"summary": "Changed by dispatch"}})),
        )
        .await;
    assert_eq!(s, 200);
    // A delete that names a version the row is not at is refused (the row
    // stays, as the sync below shows until the real delete); one that names
    // its version deletes it.
    for (path, status, code) in [
        ("wo-0000007?base_version=2", 409, "conflict"),
        ("wo-0000007?base_version=x", 400, "bad_request"),
        ("wo-no-such?base_version=1", 404, "not_found"),
    ] {
        let (s, v) = server
            .call(
                "DELETE",
                &format!("/v1/records/work_orders/{path}"),
                Some(&dispatcher),
                None,
            )
            .await;
        assert_eq!(s, status, "{path}: {v}");
        assert_eq!(v["error"]["code"], code, "{path}: {v}");
    }
    let (s, kept) = server
        .call(
            "GET",
            "/v1/records/work_orders/wo-0000007",
            Some(&dispatcher),
            None,
        )
        .await;
    assert_eq!(s, 200, "{kept}");
    let (s, _) = server
        .call(
            "DELETE",
            &format!(
                "/v1/records/work_orders/wo-0000007?base_version={}",
                kept["version"]
            ),
            Some(&dispatcher),
            None,
        )
        .await;
    assert_eq!(s, 204);

    let report = device.ok(&["sync"]).await;
    let wo = table_report(&report, "work_orders");
    assert_eq!(wo["rows_upserted"], 2, "{report}");
    assert_eq!(wo["rows_removed"], 1, "{report}");
    assert_eq!(wo["initial"], false);
    let incremental_rows: u64 = report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["rows_upserted"].as_u64().unwrap())
        .sum();
    assert_eq!(incremental_rows, 2, "only the changes travel: {report}");

    let inserted = device.ok(&["get", "work_orders", "wo-new-1"]).await;
    assert_eq!(inserted["fields"]["name"], "WO-NEW");
    let changed = device.ok(&["get", "work_orders", "wo-0000005"]).await;
    assert_eq!(changed["fields"]["summary"], "Changed by dispatch");
    assert_eq!(changed["version"], updated["version"]);
    // Reading the row deleted on the server: Record Not Found (exit 3).
    let gone = device.run(&["get", "work_orders", "wo-0000007"]).await;
    assert_eq!(gone.code, 3, "{gone:?}");
    assert_eq!(gone.json["error"]["kind"], "record_not_found");
    assert_eq!(
        device.local_rows("work_orders").len() as u64,
        seeded(&seed_rows, "work_orders")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_edit_survives_restart_and_reaches_server() {
    let server = Server::start().await;
    let tech = server.wide_technician("tech-a").await;
    let dispatcher = server.user("disp", "dispatcher").await;
    server.seed(&["tech-a"], 50).await;
    let dir = tempfile::tempdir().unwrap();
    let device = Device::new(dir.path().join("d.db"), &server.url, &tech);
    device.ok(&["sync"]).await;

    // Offline: the server is unreachable, the edit still lands locally.
    let offline = Device::new(device.db.clone(), "http://127.0.0.1:9", &tech);
    offline
        .ok(&[
            "put",
            "bookings",
            "bk-0000003",
            "--set",
            "notes=fixed the valve",
        ])
        .await;
    offline
        .ok(&[
            "put",
            "work_order_service_tasks",
            "wot-0000003-0",
            "--set",
            "completed=true",
            "--set",
            "percent_complete=100",
        ])
        .await;
    let failed = offline.run(&["sync"]).await;
    assert_eq!(failed.code, 5, "network unavailable: {failed:?}");
    assert_eq!(failed.json["error"]["kind"], "network_unavailable");

    // A new process (the app restarted) still has both edits pending.
    let status = offline.ok(&["status"]).await;
    assert_eq!(status["pending_uploads"], 2);
    let local = offline.ok(&["get", "bookings", "bk-0000003"]).await;
    assert_eq!(local["fields"]["notes"], "fixed the valve");

    device.ok(&["sync"]).await;
    assert_eq!(device.ok(&["status"]).await["pending_uploads"], 0);
    let (_, row) = server
        .call(
            "GET",
            "/v1/records/bookings/bk-0000003",
            Some(&dispatcher),
            None,
        )
        .await;
    assert_eq!(row["row"]["notes"], "fixed the valve");
    let (_, task) = server
        .call(
            "GET",
            "/v1/records/work_order_service_tasks/wot-0000003-0",
            Some(&dispatcher),
            None,
        )
        .await;
    assert_eq!(task["row"]["completed"], true);
    assert_eq!(task["row"]["percent_complete"], 100.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_mid_initial_sync_resumes_from_last_committed_page() {
    let server = Server::start_with(&["--pull-delay-ms", "40"]).await;
    let tech = server.wide_technician("tech-a").await;
    server.seed(&["tech-a"], 400).await;
    let dir = tempfile::tempdir().unwrap();

    // A reference device syncs from zero: the number of pages a full download takes.
    let mut reference = Device::new(dir.path().join("ref.db"), &server.url, &tech);
    reference.page_size = 50;
    let full = reference.ok(&["sync"]).await;
    let full_pages = pages(&full);

    let mut device = Device::new(dir.path().join("d.db"), &server.url, &tech);
    device.page_size = 50;
    let mut child = device.command(&["sync"]).spawn().expect("spawn");
    // Wait until some pages are committed, then kill -9 mid-download.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "no page committed in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
        let committed = rusqlite::Connection::open_with_flags(
            &device.db,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .and_then(|c| {
            c.query_row(
                "SELECT COALESCE(SUM(received_rows), 0) FROM _fs_tables",
                [],
                |r| r.get::<_, i64>(0),
            )
        })
        .unwrap_or(0);
        if committed >= 300 {
            break;
        }
    }
    child.start_kill().expect("kill");
    let status = child.wait().await.expect("wait");
    assert!(!status.success(), "the device was killed, not finished");

    // The database opens, is intact, and the next sync resumes.
    let conn = rusqlite::Connection::open(&device.db).unwrap();
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    drop(conn);
    let resumed = device.ok(&["sync"]).await;
    let resumed_pages = pages(&resumed);
    assert!(
        resumed_pages < full_pages,
        "resumed with {resumed_pages} pages, from zero takes {full_pages}"
    );
    for table in [
        "bookings",
        "work_orders",
        "work_order_service_tasks",
        "accounts",
    ] {
        assert_eq!(
            device.local_rows(table),
            reference.local_rows(table),
            "{table}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_push_response_then_retry_applies_once() {
    let server = Server::start().await;
    let tech = server.wide_technician("tech-a").await;
    let dispatcher = server.user("disp", "dispatcher").await;
    server.seed(&["tech-a"], 20).await;
    let proxy = Proxy::start(&server.addr).await;
    let dir = tempfile::tempdir().unwrap();
    let device = Device::new(dir.path().join("d.db"), &proxy.url, &tech);
    device.ok(&["sync"]).await;
    let (_, before) = server
        .call(
            "GET",
            "/v1/records/bookings/bk-0000002",
            Some(&dispatcher),
            None,
        )
        .await;
    let v0 = before["version"].as_i64().unwrap();

    device
        .ok(&["put", "bookings", "bk-0000002", "--set", "notes=on site"])
        .await;
    device
        .ok(&[
            "put",
            "bookings",
            "bk-0000004",
            "--set",
            "travel_minutes=42",
        ])
        .await;
    proxy.set(LOSE_NEXT_PUSH_RESPONSE);
    let lost = device.run(&["sync"]).await;
    assert_eq!(lost.code, 5, "{lost:?}");
    assert_eq!(
        proxy
            .push_responses_lost
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    // The server applied it, but the device does not know: the entries stay.
    let (_, applied) = server
        .call(
            "GET",
            "/v1/records/bookings/bk-0000002",
            Some(&dispatcher),
            None,
        )
        .await;
    assert_eq!(applied["row"]["notes"], "on site");
    assert_eq!(applied["version"].as_i64().unwrap(), v0 + 1);
    assert_eq!(device.ok(&["status"]).await["pending_uploads"], 2);

    // Retry with the same idempotency keys: the original results come back.
    let report = device.ok(&["sync"]).await;
    assert_eq!(report["uploaded"], 2);
    let (_, after) = server
        .call(
            "GET",
            "/v1/records/bookings/bk-0000002",
            Some(&dispatcher),
            None,
        )
        .await;
    assert_eq!(
        after["version"].as_i64().unwrap(),
        v0 + 1,
        "applied once, not twice"
    );
    let local = device.ok(&["get", "bookings", "bk-0000002"]).await;
    assert_eq!(local["version"].as_i64().unwrap(), v0 + 1);
    assert_eq!(device.ok(&["status"]).await["pending_uploads"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflict_settings_behave_as_the_seed_says() {
    let server = Server::start().await;
    let tech = server.wide_technician("tech-a").await;
    let dispatcher = server.user("disp", "dispatcher").await;
    server.seed(&["tech-a"], 20).await;
    let dir = tempfile::tempdir().unwrap();
    let device = Device::new(dir.path().join("d.db"), &server.url, &tech);
    device.ok(&["sync"]).await;

    // Off (the default): the technician's offline change wins.
    device
        .ok(&[
            "put",
            "bookings",
            "bk-0000001",
            "--set",
            "notes=technician text",
        ])
        .await;
    let (s, _) = server
        .call(
            "PUT",
            "/v1/records/bookings/bk-0000001",
            Some(&dispatcher),
            Some(json!({"data": {"notes": "dispatcher text", "travel_minutes": 77}})),
        )
        .await;
    assert_eq!(s, 200);
    let report = device.ok(&["sync"]).await;
    assert_eq!(report["uploaded"], 1);
    assert_eq!(report["conflicts"].as_array().unwrap().len(), 0);
    let (_, row) = server
        .call(
            "GET",
            "/v1/records/bookings/bk-0000001",
            Some(&dispatcher),
            None,
        )
        .await;
    assert_eq!(row["row"]["notes"], "technician text");
    // Record level: the device's change overwrites the record as the device saw it;
    // the device ends with the server's full row.
    let local = device.ok(&["get", "bookings", "bk-0000001"]).await;
    assert_eq!(local["fields"], row["row"]);
    assert_eq!(
        server
            .admin("GET", "/v1/admin/sync-errors", None)
            .await
            .as_array()
            .unwrap()
            .len(),
        0
    );

    // On: the dispatcher's change wins; the device shows a sync conflict error.
    server.set_conflict_detection(true).await;
    device
        .ok(&[
            "put",
            "bookings",
            "bk-0000001",
            "--set",
            "notes=technician again",
        ])
        .await;
    server
        .call(
            "PUT",
            "/v1/records/bookings/bk-0000001",
            Some(&dispatcher),
            Some(json!({"data": {"notes": "dispatcher wins"}})),
        )
        .await;
    let out = device.run(&["sync"]).await;
    assert_eq!(out.code, 4, "conflict exit code: {out:?}");
    assert_eq!(out.json["conflicts"].as_array().unwrap().len(), 1);
    let local = device.ok(&["get", "bookings", "bk-0000001"]).await;
    assert_eq!(local["fields"]["notes"], "dispatcher wins");
    let (_, row) = server
        .call(
            "GET",
            "/v1/records/bookings/bk-0000001",
            Some(&dispatcher),
            None,
        )
        .await;
    assert_eq!(row["row"]["notes"], "dispatcher wins");
    assert_eq!(local["version"], row["version"]);
    let errors = device.ok(&["errors"]).await;
    assert_eq!(errors[0]["kind"], "conflict");

    // The server's Sync Errors log holds both versions.
    let log = server
        .admin("GET", "/v1/admin/sync-errors?kind=conflict", None)
        .await;
    let entry = &log.as_array().unwrap()[0];
    assert_eq!(entry["table"], "bookings");
    assert_eq!(entry["record_id"], "bk-0000001");
    assert_eq!(entry["user_id"], "tech-a");
    assert_eq!(entry["action"], "update");
    assert_eq!(entry["device_data"]["notes"], "technician again");
    assert_eq!(entry["server_data"]["notes"], "dispatcher wins");
    assert!(entry["at"].as_str().unwrap().ends_with('Z'));

    // Conflict on a record the server deleted: the deletion wins.
    device
        .ok(&[
            "put",
            "bookings",
            "bk-0000002",
            "--set",
            "notes=still here?",
        ])
        .await;
    server
        .call(
            "DELETE",
            "/v1/records/bookings/bk-0000002",
            Some(&dispatcher),
            None,
        )
        .await;
    let out = device.run(&["sync"]).await;
    assert_eq!(out.code, 4, "{out:?}");
    assert_eq!(device.run(&["get", "bookings", "bk-0000002"]).await.code, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_refuses_with_pending_then_forces_and_syncs_again() {
    let server = Server::start().await;
    let tech = server.wide_technician("tech-a").await;
    server.seed(&["tech-a"], 30).await;
    let dir = tempfile::tempdir().unwrap();
    let device = Device::new(dir.path().join("d.db"), &server.url, &tech);
    device.ok(&["sync"]).await;
    let rows_before = device.local_rows("work_orders").len();
    device
        .ok(&["put", "work_orders", "wo-0000001", "--set", "summary=x"])
        .await;
    device.ok(&["delete", "bookings", "bk-0000000"]).await;

    let refused = device.run(&["reset"]).await;
    assert_eq!(refused.code, 7, "{refused:?}");
    assert_eq!(refused.json["error"]["kind"], "pending_uploads");
    assert_eq!(refused.json["error"]["pending_uploads"], 2);
    assert!(
        refused.stderr.contains("2 unsynced change"),
        "{}",
        refused.stderr
    );
    assert_eq!(
        device.ok(&["status"]).await["pending_uploads"],
        2,
        "nothing was cleared"
    );

    let done = device.ok(&["reset", "--force"]).await;
    assert_eq!(done["discarded_changes"], 2);
    let status = device.ok(&["status"]).await;
    assert_eq!(status["pending_uploads"], 0);
    assert!(status["profile_version"].is_null());
    assert_eq!(status["tables"].as_array().unwrap().len(), 0);
    let conn = rusqlite::Connection::open(&device.db).unwrap();
    let user_tables: i64 = conn
        .query_row("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name NOT LIKE '\\_fs\\_%' ESCAPE '\\' AND name NOT LIKE 'sqlite%'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(user_tables, 0, "the offline database is empty");
    drop(conn);

    device.ok(&["sync"]).await;
    assert_eq!(device.local_rows("work_orders").len(), rows_before);
    let restored = device.ok(&["get", "bookings", "bk-0000000"]).await;
    assert_eq!(restored["id"], "bk-0000000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_typed_errors_and_changes_nothing() {
    let server = Server::start().await;
    let tech = server.wide_technician("tech-a").await;
    let dispatcher = server.user("disp", "dispatcher").await;
    server.seed(&["tech-a"], 20).await;
    let dir = tempfile::tempdir().unwrap();
    let device = Device::new(dir.path().join("d.db"), &server.url, &tech);
    device.ok(&["sync"]).await;

    // Wrong token.
    let wrong = Device::new(device.db.clone(), &server.url, "not-a-token");
    let out = wrong.run(&["sync"]).await;
    assert_eq!(out.code, 6, "{out:?}");
    assert_eq!(out.json["error"]["kind"], "unauthorized");
    let (s, v) = server.call("GET", "/v1/profile", None, None).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );

    // Unknown table or column, on the device and on the server.
    let out = device.run(&["get", "no_such_table", "x"]).await;
    assert_eq!(
        (out.code, out.json["error"]["kind"].as_str()),
        (2, Some("invalid_input"))
    );
    let out = device
        .run(&["put", "bookings", "bk-0000001", "--set", "no_such_column=1"])
        .await;
    assert_eq!(out.code, 2, "{out:?}");
    let out = device
        .run(&[
            "put",
            "bookings",
            "bk-0000001",
            "--set",
            "travel_minutes=\"many\"",
        ])
        .await;
    assert_eq!(out.code, 2, "wrong type: {out:?}");
    assert_eq!(device.ok(&["status"]).await["pending_uploads"], 0);
    let (s, v) = server
        .call(
            "GET",
            "/v1/sync/pull?table=no_such_table",
            Some(&tech),
            None,
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("unknown_table"))
    );
    let (s, v) = server
        .call(
            "GET",
            "/v1/sync/pull?table=bookings&cursor=v1.999999.0",
            Some(&tech),
            None,
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("invalid_cursor"))
    );
    let (s, v) = server
        .call(
            "GET",
            "/v1/sync/pull?table=bookings&limit=1000000",
            Some(&tech),
            None,
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("page_too_large"))
    );
    let (s, v) = server
        .call(
            "PUT",
            "/v1/records/bookings/bk-0000001",
            Some(&dispatcher),
            Some(json!({"data": {"no_such_column": 1}})),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("unknown_column"))
    );

    // Malformed JSON from the device side.
    let before = server.rows(&dispatcher, "bookings").await;
    let (s, v) = server
        .call_raw(
            "POST",
            "/v1/sync/push",
            Some(&tech),
            Some(b"{\"mutations\": [".to_vec()),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("malformed_json"))
    );

    // A push for a table not in the user's profile, and for an unknown column.
    let minimal = json!({"name": "minimal", "tables": [
        {"name": "bookings", "columns": ["name", "resource_id", "notes"], "rules": [{"kind": "owned", "column": "resource_id"}], "sync_interval_secs": 300}
    ]});
    server
        .admin("PUT", "/v1/admin/profiles/minimal", Some(minimal))
        .await;
    let narrow = server
        .user_with_profile("tech-min", "technician", Some("minimal"))
        .await;
    let push = json!({"mutations": [
        {"idempotency_key": "k1", "table": "accounts", "id": "acc-000000", "op": "update", "base_version": 1, "data": {"name": "hijack"}},
        {"idempotency_key": "k2", "table": "bookings", "id": "bk-0000001", "op": "update", "base_version": 1, "data": {"notes": "not mine"}}
    ]});
    let (s, v) = server
        .call("POST", "/v1/sync/push", Some(&narrow), Some(push))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["results"][0]["status"], "rejected");
    assert_eq!(v["results"][0]["error"]["code"], "not_in_profile");
    assert_eq!(v["results"][1]["status"], "rejected");
    assert_eq!(v["results"][1]["error"]["code"], "forbidden");
    let (_, acc) = server
        .call(
            "GET",
            "/v1/records/accounts/acc-000000",
            Some(&dispatcher),
            None,
        )
        .await;
    assert_ne!(acc["row"]["name"], "hijack");

    // An oversized request.
    let huge = vec![b'x'; 9 * 1024 * 1024];
    let (s, v) = server
        .call_raw("POST", "/v1/sync/push", Some(&tech), Some(huge))
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (413, Some("payload_too_large"))
    );
    let big = dir.path().join("big.json");
    std::fs::write(&big, json!({"notes": "y".repeat(1_100_000)}).to_string()).unwrap();
    let out = device
        .run(&[
            "put",
            "bookings",
            "bk-0000001",
            "--data",
            &format!("@{}", big.display()),
        ])
        .await;
    assert_eq!(out.code, 2, "oversized row refused on the device");
    assert_eq!(
        server.rows(&dispatcher, "bookings").await,
        before,
        "the server's rows did not change"
    );

    // Malformed JSON from the server side: a typed error, nothing applied.
    let proxy = Proxy::start(&server.addr).await;
    let dispatcher_edit = json!({"data": {"summary": "after garbage"}});
    server
        .call(
            "PUT",
            "/v1/records/work_orders/wo-0000001",
            Some(&dispatcher),
            Some(dispatcher_edit),
        )
        .await;
    let via_proxy = Device::new(device.db.clone(), &proxy.url, &tech);
    let cursor_before: Vec<String> = {
        let c = rusqlite::Connection::open(&device.db).unwrap();
        let mut st = c
            .prepare("SELECT cursor FROM _fs_tables ORDER BY name")
            .unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .map(|r| r.unwrap())
            .collect()
    };
    proxy.set(GARBAGE_PULL);
    let out = via_proxy.run(&["sync"]).await;
    assert_eq!(out.code, 1, "protocol error is internal: {out:?}");
    assert!(
        out.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("protocol"),
        "{out:?}"
    );
    let cursor_after: Vec<String> = {
        let c = rusqlite::Connection::open(&device.db).unwrap();
        let mut st = c
            .prepare("SELECT cursor FROM _fs_tables ORDER BY name")
            .unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .map(|r| r.unwrap())
            .collect()
    };
    assert_eq!(cursor_before, cursor_after);
    assert_ne!(
        via_proxy.ok(&["get", "work_orders", "wo-0000001"]).await["fields"]["summary"],
        "after garbage"
    );
    proxy.set(PASS);
    via_proxy.ok(&["sync"]).await;
    assert_eq!(
        via_proxy.ok(&["get", "work_orders", "wo-0000001"]).await["fields"]["summary"],
        "after garbage"
    );
}

/// `total` is the progress of a download: estimated from the share of the
/// walked rows the rules selected while pages remain (so that asking for it
/// does not evaluate every rule on every row again), exact on the last page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_total_estimates_the_rest_and_is_exact_on_the_last_page() {
    let server = Server::start().await;
    let tech = server.wide_technician("tech-a").await;
    let seed_rows = server.seed(&["tech-a", "tech-b", "tech-c"], 300).await;
    let mut cursor = String::new();
    let mut pages: Vec<(u64, u64, bool)> = Vec::new();
    loop {
        let (s, page) = server
            .call(
                "GET",
                &format!("/v1/sync/pull?table=bookings&cursor={cursor}&limit=20&total=true"),
                Some(&tech),
                None,
            )
            .await;
        assert_eq!(s, 200, "{page}");
        let entries = (page["rows"].as_array().unwrap().len()
            + page["removed"].as_array().unwrap().len()) as u64;
        let total = page["total"].as_u64().expect("total when asked");
        let more = page["has_more"].as_bool().unwrap();
        pages.push((entries, total, more));
        cursor = page["cursor"].as_str().unwrap().to_owned();
        if !more {
            break;
        }
    }
    assert!(pages.len() >= 4, "several pages: {pages:?}");
    let all: u64 = pages.iter().map(|p| p.0).sum();
    assert!(all * 2 < seeded(&seed_rows, "bookings"), "{all}");
    // Only the technician's own bookings are selected: the rules skip most
    // rows, and the estimate follows what they select, not the table's size.
    let first = pages[0].1;
    assert!(
        first * 10 >= all * 7 && first * 10 <= all * 13,
        "first estimate {first} for {all} entries: {pages:?}"
    );
    let mut done = 0;
    for (entries, total, more) in &pages {
        assert!(*total >= *entries, "{pages:?}");
        if !more {
            assert_eq!(*total, *entries, "exact on the last page: {pages:?}");
        }
        done += entries;
    }
    assert_eq!(done, all);
}

/// Pages come zstd-compressed because the device asks for it itself (its
/// HTTP client does not decompress; the engine does, a block at a time as it
/// writes each page): the bytes a sync receives are a fraction of the pages'
/// JSON, and the rows are the ones the server holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_come_compressed_and_apply_as_the_rows_the_server_holds() {
    let server = Server::start().await;
    let tech = server.wide_technician("tech-a").await;
    let seed_rows = server.seed(&["tech-a"], 400).await;
    let (s, profile) = server.call("GET", "/v1/profile", Some(&tech), None).await;
    assert_eq!(s, 200, "{profile}");
    let tables: Vec<String> = profile["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();

    // The same pages as JSON, and the encoding the server answers with.
    let http = reqwest::Client::builder()
        .gzip(false)
        .zstd(false)
        .build()
        .unwrap();
    let mut json_bytes = 0usize;
    for table in &tables {
        let mut cursor = String::new();
        loop {
            let url = format!(
                "{}/v1/sync/pull?table={table}&cursor={cursor}&limit=500",
                server.url
            );
            for (accept, expected) in [("zstd, gzip", Some("zstd")), ("identity", None)] {
                let resp = http
                    .get(&url)
                    .bearer_auth(&tech)
                    .header("accept-encoding", accept)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 200);
                let encoding = resp
                    .headers()
                    .get("content-encoding")
                    .map(|v| v.to_str().unwrap().to_owned());
                let body = resp.bytes().await.unwrap();
                if expected.is_none() {
                    assert_eq!(encoding, None);
                    json_bytes += body.len();
                    let page: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    cursor = page["cursor"].as_str().unwrap().to_owned();
                    if !page["has_more"].as_bool().unwrap() {
                        cursor.clear();
                    }
                } else if body.len() >= 32 {
                    assert_eq!(encoding.as_deref(), expected, "{table}");
                }
            }
            if cursor.is_empty() {
                break;
            }
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let mut device = Device::new(dir.path().join("d.db"), &server.url, &tech);
    device.page_size = 500;
    let report = device.ok(&["sync"]).await;
    let bytes_down = report["bytes_down"].as_u64().unwrap() as usize;
    assert!(
        bytes_down > 0 && bytes_down * 4 < json_bytes,
        "{bytes_down} bytes received for {json_bytes} bytes of JSON"
    );
    for table in ["work_orders", "work_order_service_tasks", "accounts"] {
        assert_eq!(
            device.local_rows(table).len() as u64,
            seeded(&seed_rows, table),
            "{table}"
        );
    }
}

/// A device's insert over a live row (detection off: the device wins)
/// states the row as the device's profile sees it: its columns the insert
/// does not carry become null, and columns outside its profile keep the
/// server's values (before, they were nulled too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insert_over_a_live_row_leaves_columns_outside_the_profile_alone() {
    let server = Server::start().await;
    // Bookings without `notes` and `travel_minutes`.
    let mut profile: serde_json::Value = serde_json::from_str(WIDE_PROFILE).expect("profile");
    profile["name"] = json!("no-notes");
    for t in profile["tables"].as_array_mut().expect("tables") {
        if t["name"] == "bookings" {
            t["columns"] = json!([
                "name",
                "work_order_id",
                "resource_id",
                "booking_status_id",
                "status",
                "start_time",
                "end_time"
            ]);
        }
    }
    server
        .admin("PUT", "/v1/admin/profiles/no-notes", Some(profile))
        .await;
    let tech = server
        .user_with_profile("tech-1", "technician", Some("no-notes"))
        .await;
    let dispatcher = server.user("disp", "dispatcher").await;
    let (s, v) = server
        .call(
            "PUT",
            "/v1/records/bookings/bk-x",
            Some(&dispatcher),
            Some(
                json!({"data": {"resource_id": "tech-1", "name": "Visit", "status": "active",
                                 "notes": "gate code 1234", "travel_minutes": 25}}),
            ),
        )
        .await;
    assert_eq!(s, 201, "{v}");

    let push = json!({"mutations": [{"idempotency_key": "k-1", "table": "bookings", "id": "bk-x",
        "op": "insert", "base_version": 0, "data": {"resource_id": "tech-1", "name": "Visit (device)"}}]});
    let (s, v) = server
        .call("POST", "/v1/sync/push", Some(&tech), Some(push))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["results"][0]["status"], "applied", "{v}");

    let (s, row) = server
        .call("GET", "/v1/records/bookings/bk-x", Some(&dispatcher), None)
        .await;
    assert_eq!(s, 200, "{row}");
    assert_eq!(row["row"]["name"], "Visit (device)", "{row}");
    assert_eq!(row["row"]["status"], serde_json::Value::Null, "{row}");
    assert_eq!(row["row"]["notes"], "gate code 1234", "{row}");
    assert_eq!(row["row"]["travel_minutes"], 25, "{row}");
}

/// With conflict detection on, a device's delete of a row someone already
/// deleted is what the device asked for: applied (with the tombstone's
/// version), not a conflict in the Sync Errors log. A delete of a row that
/// changed since the device read it is still a conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_already_deleted_row_is_applied_not_a_conflict() {
    let server = Server::start().await;
    let tech = server.wide_technician("tech-a").await;
    let dispatcher = server.user("disp", "dispatcher").await;
    server.seed(&["tech-a"], 5).await;
    server.set_conflict_detection(true).await;
    let (s, _) = server
        .call_raw(
            "DELETE",
            "/v1/records/bookings/bk-0000001",
            Some(&dispatcher),
            None,
        )
        .await;
    assert_eq!(s, 204);
    let (s, _) = server
        .call(
            "PUT",
            "/v1/records/bookings/bk-0000002",
            Some(&dispatcher),
            Some(json!({"data": {"notes": "moved on"}})),
        )
        .await;
    assert_eq!(s, 200);
    let delete = |key: &str, id: &str| {
        json!({"idempotency_key": key, "table": "bookings", "id": id, "op": "delete",
               "base_version": 1, "data": {}})
    };
    let push = json!({"mutations": [
        delete("d-1", "bk-0000001"),
        delete("d-2", "bk-never"),
        delete("d-3", "bk-0000002")]});
    let (s, v) = server
        .call("POST", "/v1/sync/push", Some(&tech), Some(push))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["results"][0]["status"], "applied", "{v}");
    assert_eq!(
        v["results"][0]["version"], 2,
        "the tombstone's version: {v}"
    );
    assert_eq!(v["results"][1]["status"], "applied", "{v}");
    assert_eq!(v["results"][1]["version"], 0, "{v}");
    assert_eq!(v["results"][2]["status"], "conflict", "{v}");
    let log = server
        .admin("GET", "/v1/admin/sync-errors?kind=conflict", None)
        .await;
    let ids: Vec<&str> = log
        .as_array()
        .expect("log")
        .iter()
        .filter_map(|e| e["record_id"].as_str())
        .collect();
    assert_eq!(ids, ["bk-0000002"], "{log}");
}

/// A row cannot pass the row-size limit a field at a time: the limit counts
/// the whole row after the change, on the device (the write is refused and
/// nothing is queued) and on the server (push and records writes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_cannot_outgrow_the_size_limit_a_field_at_a_time() {
    use std::collections::BTreeMap;

    use fieldsync_core::{Engine, EngineConfig, ErrorKind, Value};

    let server = Server::start().await;
    let tech = server.wide_technician("tech-a").await;
    let dispatcher = server.user("disp", "dispatcher").await;
    server.seed(&["tech-a"], 5).await;
    let big = "z".repeat(600_000);

    // Server, push: the first half fits, the second would make 1.2 MB.
    let update = |key: &str, column: &str| {
        json!({"idempotency_key": key, "table": "bookings", "id": "bk-0000001", "op": "update",
               "base_version": 0, "data": {column: big.clone()}})
    };
    let push = json!({"mutations": [update("u-1", "notes"), update("u-2", "name")]});
    let (s, v) = server
        .call("POST", "/v1/sync/push", Some(&tech), Some(push))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["results"][0]["status"], "applied", "{v}");
    assert_eq!(v["results"][1]["status"], "rejected", "{v}");
    assert_eq!(v["results"][1]["error"]["code"], "payload_too_large", "{v}");
    // Records API: the same.
    let (s, v) = server
        .call(
            "PUT",
            "/v1/records/bookings/bk-0000001",
            Some(&dispatcher),
            Some(json!({"data": {"name": big.clone()}})),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (413, Some("payload_too_large"))
    );

    // Device: the second write is refused and nothing of it is queued.
    let dir = tempfile::tempdir().expect("dir");
    let engine = Engine::open(EngineConfig::new(
        dir.path().join("d.db"),
        &server.url,
        &tech,
    ))
    .expect("open");
    engine.sync().await.expect("sync");
    let set = |column: &str| BTreeMap::from([(column.to_owned(), Value::Text(big.clone()))]);
    engine
        .update("bookings", "bk-0000002", set("notes"))
        .expect("first half");
    let err = engine
        .update("bookings", "bk-0000002", set("name"))
        .expect_err("past the limit");
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert_eq!(engine.pending_uploads().expect("pending"), 1);
    let local = engine.get("bookings", "bk-0000002").expect("row");
    assert_ne!(local.fields["name"], Value::Text(big.clone()));
}
