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
    let out = device.run(&["watch"]).await;
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
