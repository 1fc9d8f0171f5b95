//! Telemetry's mode, result and network type on the wire (issue #33): they
//! are enums in `fieldsync-protocol`, carried as the same lowercase strings
//! as before. Against a real server process over HTTP with its SQLite
//! file: every name an older device sends is still accepted and stored
//! as sent; a network type the server does not know is kept as `unknown`;
//! a mode or result it does not know refuses the batch with a 400 that
//! says which field, and stores nothing of it.

mod common;

use common::Server;
use serde_json::{Value, json};

fn event(id: &str, mode: &str, result: &str, network: &str) -> Value {
    json!({"id": id, "kind": "sync", "device_id": "dev-wire", "sync_id": format!("s-{id}"),
        "mode": mode, "result": result,
        "failure_type": if result == "failure" { json!("network_unavailable") } else { Value::Null },
        "started_at": 1_800_000_000_000i64, "duration_ms": 5, "active_duration_ms": 5,
        "rows_up": 0, "rows_down": 0, "bytes_up": 0, "bytes_down": 0, "table": null,
        "network_type": network, "app_version": "1.0.0", "device_model": "Pixel 8",
        "os_version": "Android 15"})
}

async fn upload(server: &Server, token: &str, events: Vec<Value>) -> (u16, Value) {
    server
        .call(
            "POST",
            "/v1/telemetry",
            Some(token),
            Some(json!({ "events": events })),
        )
        .await
}

async fn stored(server: &Server) -> Vec<Value> {
    let list = server
        .admin("GET", "/v1/admin/telemetry?device=dev-wire", None)
        .await;
    list.as_array().expect("a list of events").clone()
}

#[tokio::test]
async fn telemetry_names_keep_their_wire_strings_and_unknown_ones_are_handled() {
    let server = Server::start().await;
    let tech = server.user("tech-1", "technician").await;

    // Every name a device sends today, plus a network type from a newer one.
    let sent = [
        ("e-1", "first", "success", "wifi"),
        ("e-2", "delta", "failure", "cellular"),
        ("e-3", "refresh", "success", "ethernet"),
        ("e-4", "forced", "success", "other"),
        ("e-5", "delta", "failure", "none"),
        ("e-6", "delta", "success", "satellite"),
    ];
    let events = sent
        .iter()
        .map(|(id, m, r, n)| event(id, m, r, n))
        .collect();
    let (status, body) = upload(&server, &tech, events).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], 6, "{body}");

    let list = stored(&server).await;
    assert_eq!(list.len(), 6, "{list:?}");
    for (id, mode, result, network) in sent {
        let e = list
            .iter()
            .find(|e| e["id"] == id)
            .unwrap_or_else(|| panic!("{id} not stored: {list:?}"));
        assert_eq!(e["mode"], mode, "{e}");
        assert_eq!(e["result"], result, "{e}");
        let expected = if network == "satellite" {
            "unknown"
        } else {
            network
        };
        assert_eq!(e["network_type"], expected, "{e}");
    }
    let summary = server
        .admin("GET", "/v1/admin/telemetry/summary?device=dev-wire", None)
        .await;
    assert_eq!(summary["syncs"], 6, "{summary}");
    assert_eq!(summary["failures"], 2, "{summary}");
    assert_eq!(summary["by_mode"]["delta"]["syncs"], 3, "{summary}");
    assert_eq!(
        summary["by_network_type"]["unknown"]["syncs"], 1,
        "{summary}"
    );
    assert_eq!(summary["by_network_type"]["wifi"]["syncs"], 1, "{summary}");

    // A mode or result the server does not know: the batch is refused,
    // naming the field, and none of it is stored.
    for (bad, field) in [
        (event("e-7", "turbo", "success", "wifi"), "mode must be"),
        (event("e-8", "delta", "partial", "wifi"), "result must be"),
    ] {
        let (status, body) = upload(
            &server,
            &tech,
            vec![event("e-9", "delta", "success", "wifi"), bad],
        )
        .await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["code"], "invalid_value", "{body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.starts_with("event 1: ") && message.contains(field),
            "{body}"
        );
    }
    assert_eq!(stored(&server).await.len(), 6);
}
