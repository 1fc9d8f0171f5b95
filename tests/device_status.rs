//! The headless device's status, watch, refresh, online and settings
//! commands, as real `fieldsync device` processes against a real
//! `fieldsync server` process on loopback.

mod common;

use common::{Device, Server};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_watch_refresh_online_and_settings() {
    let server = Server::start().await;
    server.seed(&["tech1", "tech2"], 30).await;
    let token = server.user("tech1", "technician").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let device = Device::new(dir.path().join("d.db"), &server.url, &token);

    // Watch a first sync: every event is a JSON line.
    let out = device.run(&["watch", "--once"]).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let lines: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let kinds: Vec<&str> = lines.iter().filter_map(|l| l["event"].as_str()).collect();
    assert_eq!(kinds.first(), Some(&"status"), "{kinds:?}");
    assert!(kinds.contains(&"sync_started"));
    assert!(kinds.contains(&"table_progress"));
    assert!(kinds.contains(&"status_changed"));
    assert_eq!(kinds.last(), Some(&"watch_finished"));
    let done = lines
        .iter()
        .find(|l| l["event"] == "notification" && l["notification"]["phase"] == "completed")
        .expect("a completion notification");
    assert_eq!(done["notification"]["kind"], "initial_sync");
    assert_eq!(done["notification"]["refresh_view"], true);
    assert!(
        lines
            .iter()
            .any(|l| l["event"] == "status_changed" && l["status"]["icon"] == "syncing")
    );

    // Status: sync icon, offline status, device status.
    let status = device.ok(&["status"]).await;
    assert_eq!(status["sync_status"]["icon"], "connected", "{status}");
    assert_eq!(
        status["sync_status"]["network"]["reachability"],
        "available"
    );
    let offline = status["offline_status"].as_array().expect("offline status");
    assert_eq!(offline.len(), 9);
    for t in offline {
        assert!(t["last_sync_at"].is_i64(), "{t}");
        assert!(t["rows"].is_u64());
        assert!(t["next_due_at"].is_i64());
    }
    assert_eq!(status["pending_uploads"], 0);
    assert_eq!(status["settings"]["wifi_only"], false);
    assert!(status["dependency_closure"].is_object());
    assert!(status["profile_version"].is_i64());
    assert!(status["database_bytes"].as_u64().expect("size") > 0);

    // A local change shows as pending uploads.
    let wo = device.ok(&["list", "work_orders", "--limit", "1"]).await[0]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    device
        .ok(&["put", "work_orders", &wo, "--set", "status=closed"])
        .await;
    let status = device.ok(&["status"]).await;
    assert_eq!(status["sync_status"]["icon"], "pending_uploads");
    assert_eq!(status["sync_status"]["pending_uploads"], 1);

    // Refresh one table (a Refresh pulls whatever the smart sync check
    // would say).
    let report = device.ok(&["refresh", "accounts"]).await;
    assert_eq!(report["tables"][0]["table"], "accounts");
    assert_eq!(report["uploaded"], 1);

    // Settings persist between runs; bad values are refused.
    device.ok(&["settings", "set", "wifi_only", "true"]).await;
    device.ok(&["settings", "set", "frequency", "3600"]).await;
    let s = device.ok(&["settings"]).await;
    assert_eq!(s["wifi_only"], true);
    assert_eq!(s["frequency"], json!({"kind": "every", "secs": 3600}));
    let bad = device.run(&["settings", "set", "frequency", "5"]).await;
    assert_eq!(bad.code, 2);
    assert_eq!(
        device.ok(&["settings", "get", "frequency"]).await["frequency"],
        "3600"
    );

    // Online mode: another technician's bookings, once the admin permits it.
    let refused = device
        .run(&["online", "list", "bookings", "--where", "resource_id=tech2"])
        .await;
    assert_eq!(refused.code, 0, "{}", refused.stderr);
    assert!(refused.json["rows"].as_array().expect("rows").is_empty());
    server
        .admin(
            "PUT",
            "/v1/admin/online-access",
            Some(json!({"tables": ["bookings"]})),
        )
        .await;
    let theirs = device
        .ok(&["online", "list", "bookings", "--where", "resource_id=tech2"])
        .await;
    let rows = theirs["rows"].as_array().expect("rows");
    assert!(!rows.is_empty());
    let id = rows[0]["id"].as_str().expect("id").to_owned();
    assert!(!device.local_rows("bookings").contains_key(&id));
    assert_eq!(device.run(&["get", "bookings", &id]).await.code, 3);

    // Server gone: Network or Service Unavailable, local reads still work.
    server.stop().await;
    let status = device.ok(&["status"]).await;
    assert_eq!(status["sync_status"]["icon"], "not_connected");
    assert!(
        status["sync_status"]["message"]
            .as_str()
            .expect("message")
            .starts_with("Network or Service Unavailable")
    );
    assert_eq!(status["network"]["reachability"], "unavailable");
    device.ok(&["get", "work_orders", &wo]).await;
    assert_eq!(device.run(&["online", "list", "accounts"]).await.code, 5);
}

/// Names of the device database's synced tables (not the `_fs_` ones).
fn synced_tables(device: &Device) -> Vec<String> {
    let conn = rusqlite::Connection::open_with_flags(
        &device.db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open");
    let mut stmt = conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table'
             AND name NOT LIKE '\\_fs\\_%' ESCAPE '\\' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'",
        )
        .expect("prepare");
    stmt.query_map([], |r| r.get::<_, String>(0))
        .expect("query")
        .map(|r| r.expect("row"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wifi_only_on_a_metered_network_starts_no_sync() {
    let server = Server::start().await;
    server.seed(&["tech1"], 10).await;
    let token = server.user("tech1", "technician").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let device = Device::new(dir.path().join("d.db"), &server.url, &token);

    // The report is kept in the device database: a later process reads it.
    let os = device
        .ok(&["network", "--type", "cellular", "--metered"])
        .await;
    assert_eq!(
        os,
        json!({"connected": true, "metered": true, "network_type": "cellular"})
    );
    assert_eq!(device.ok(&["network"]).await, os);
    device.ok(&["settings", "set", "wifi_only", "true"]).await;

    // Sync now: the scheduler's Wi-Fi only condition holds, nothing starts.
    for command in [&["sync"][..], &["sync", "--table", "bookings"][..]] {
        let out = device.run(command).await;
        assert_eq!(out.code, 9, "{command:?}: {}\n{}", out.stdout, out.stderr);
        assert_eq!(out.json["error"]["kind"], "sync_blocked", "{}", out.stdout);
        assert_eq!(out.json["error"]["blocker"], "metered_network");
        let message = out.json["error"]["message"].as_str().expect("message");
        assert!(message.contains("Wi-Fi only"), "{message}");
        assert!(out.stderr.contains("Wi-Fi only"), "{}", out.stderr);
    }
    // No pull reached the device: no profile, no synced table, no row.
    assert!(
        synced_tables(&device).is_empty(),
        "{:?}",
        synced_tables(&device)
    );
    let status = device.ok(&["status"]).await;
    assert_eq!(status["profile_name"], Value::Null, "{status}");
    assert_eq!(status["sync_status"]["last_sync_at"], Value::Null);
    assert_eq!(status["sync_status"]["network"]["os"]["metered"], true);

    // Watch is a sync now too.
    let out = device.run(&["watch", "--once"]).await;
    assert_eq!(out.code, 9, "{}\n{}", out.stdout, out.stderr);
    assert!(synced_tables(&device).is_empty());

    // An unmetered network lets the same sync run.
    device.ok(&["network", "--type", "wifi"]).await;
    device.ok(&["sync"]).await;
    assert!(!device.local_rows("bookings").is_empty());

    // Wi-Fi only off: a metered network syncs too.
    device
        .ok(&["network", "--type", "cellular", "--metered"])
        .await;
    device.ok(&["settings", "set", "wifi_only", "false"]).await;
    device.ok(&["sync"]).await;

    // No network at all: Network or Service Unavailable (exit 5).
    device.ok(&["network", "--type", "none"]).await;
    let out = device.run(&["sync"]).await;
    assert_eq!(out.code, 5, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(out.json["error"]["blocker"], "network_unavailable");
}

/// Polls `device status` until `done` holds for its output; the bound only
/// keeps a broken build from hanging.
async fn status_until(device: &Device, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..2_000 {
        let status = device.ok(&["status"]).await;
        if done(&status) {
            return status;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("device status never showed {what}");
}

fn syncing_with_rows(status: &Value) -> bool {
    status["sync_status"]["icon"] == "syncing"
        && status["sync_status"]["progress"]["rows_done"]
            .as_u64()
            .is_some_and(|n| n > 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_from_another_process_shows_a_running_sync() {
    // Every pull page waits on the server, and pages hold a few rows: the
    // first sync takes many slow pages.
    let server = Server::start_with(&["--pull-delay-ms", "150"]).await;
    server.seed(&["tech1", "tech2"], 30).await;
    let token = server.user("tech1", "technician").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut device = Device::new(dir.path().join("d.db"), &server.url, &token);
    device.page_size = 8;

    // Nothing runs yet.
    let status = device.ok(&["status"]).await;
    assert_eq!(status["sync_status"]["progress"], Value::Null, "{status}");

    let sync = device.command(&["sync"]).spawn().expect("spawn sync");
    let seen = status_until(&device, "the sync with progress", syncing_with_rows).await;
    let progress = &seen["sync_status"]["progress"];
    assert_eq!(progress["mode"], "first", "{seen}");
    assert!(progress["sync_id"].is_string());
    // It grows while the sync runs: a later status shows more rows.
    let first = progress["rows_done"].as_u64().expect("rows");
    let later = status_until(&device, "more rows or the end", |s| {
        !syncing_with_rows(s) || s["sync_status"]["progress"]["rows_done"].as_u64() > Some(first)
    })
    .await;
    assert!(
        syncing_with_rows(&later),
        "the sync ended before a second status: {later}"
    );

    let out = sync.wait_with_output().await.expect("sync");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = device.ok(&["status"]).await;
    assert_ne!(after["sync_status"]["icon"], "syncing", "{after}");
    assert_eq!(after["sync_status"]["progress"], Value::Null);

    // A sync killed mid-way leaves no "syncing" behind: its process is gone.
    let token2 = server.user("tech2", "technician").await;
    let mut other = Device::new(dir.path().join("d2.db"), &server.url, &token2);
    other.page_size = 8;
    let mut sync = other.command(&["sync"]).spawn().expect("spawn sync");
    status_until(&other, "the second sync", syncing_with_rows).await;
    sync.kill().await.expect("kill");
    let after = other.ok(&["status"]).await;
    assert_eq!(after["sync_status"]["progress"], Value::Null, "{after}");
    assert_ne!(after["sync_status"]["icon"], "syncing");
}
