//! What an operator watches: `GET /metrics` after a real sync, OTLP traces
//! received by a collector of the test's own on loopback, JSON log lines,
//! and the Sync Errors retry API.

mod common;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use common::{ADMIN_TOKEN, Device, Server};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;

/// The samples of one metric family in OpenMetrics text: labels -> value.
fn samples(text: &str, name: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (key, value) = match line.rsplit_once(' ') {
            Some(kv) => kv,
            None => continue,
        };
        let (metric, labels) = match key.split_once('{') {
            Some((m, l)) => (m, l.trim_end_matches('}')),
            None => (key, ""),
        };
        if metric == name {
            out.insert(labels.to_owned(), value.parse().expect("sample value"));
        }
    }
    out
}

async fn scrape(server: &Server, token: Option<&str>) -> (u16, String, String) {
    let mut req = server.http.get(format!("{}/metrics", server.url));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("scrape");
    let status = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, ctype, resp.text().await.expect("body"))
}

#[tokio::test]
async fn metrics_count_a_syncs_pages_rows_and_push_outcomes() {
    let server = Server::start().await;
    server.seed(&["tech-1"], 40).await;
    let token = server.wide_technician("tech-m").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut device = Device::new(dir.path().join("d.db"), &server.url, &token);
    device.page_size = 7;

    let (status, ctype, before) = scrape(&server, None).await;
    assert_eq!(status, 200);
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    assert!(
        samples(&before, "fieldsync_sync_pull_rows_total").is_empty(),
        "nothing pulled yet:\n{before}"
    );

    let report = device.ok(&["sync"]).await;
    let (_, _, text) = scrape(&server, None).await;
    let pages = samples(&text, "fieldsync_sync_pull_pages_total");
    let rows = samples(&text, "fieldsync_sync_pull_rows_total");
    let mut checked = 0;
    for t in report["tables"].as_array().expect("tables") {
        let table = t["table"].as_str().expect("table");
        let label = format!("table=\"{table}\"");
        let local = device.local_rows(table).len() as f64;
        assert_eq!(
            rows.get(&label).copied().unwrap_or(0.0),
            t["rows_upserted"].as_f64().expect("rows"),
            "{table}: rows served = rows the device took in\n{text}"
        );
        assert_eq!(rows.get(&label).copied().unwrap_or(0.0), local, "{table}");
        assert_eq!(
            pages.get(&label).copied().unwrap_or(0.0),
            t["pages"].as_f64().expect("pages"),
            "{table}: pages served = pages the device applied"
        );
        if local > 7.0 {
            assert!(pages[&label] >= (local / 7.0).ceil(), "{table}: paged");
            checked += 1;
        }
    }
    assert!(checked >= 2, "several tables spanned several pages");
    let pull_requests: f64 = samples(&text, "fieldsync_http_requests_total")
        .iter()
        .filter(|(l, _)| l.contains("route=\"/v1/sync/pull\"") && l.contains("status=\"200\""))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(
        pull_requests,
        pages.values().sum::<f64>(),
        "each page is one request, counted by route template and status"
    );
    assert!(
        !text.contains("wo-"),
        "no record id (raw path) in a label:\n{text}"
    );
    assert!(text.contains("fieldsync_db_connections_open "), "{text}");
    assert!(text.contains("fieldsync_selection_cache_hits "), "{text}");

    // A change uploaded, then one refused as a conflict.
    server.set_conflict_detection(true).await;
    let wo = device
        .ok(&["list", "work_orders", "--limit", "1"])
        .await
        .as_array()
        .expect("list")[0]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    device
        .ok(&["put", "work_orders", &wo, "--set", "summary=first"])
        .await;
    device.ok(&["sync"]).await;
    let dispatcher = server.user("disp-m", "dispatcher").await;
    let (status, v) = server
        .call(
            "PUT",
            &format!("/v1/records/work_orders/{wo}"),
            Some(&dispatcher),
            Some(json!({"data": {"summary": "server"}})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    device
        .ok(&["put", "work_orders", &wo, "--set", "summary=second"])
        .await;
    let out = device.run(&["sync"]).await;
    assert_eq!(out.code, 4, "a conflict: {}", out.stderr);
    let (_, _, text) = scrape(&server, None).await;
    let push = samples(&text, "fieldsync_sync_push_mutations_total");
    assert_eq!(push.get("outcome=\"applied\""), Some(&1.0), "{text}");
    assert_eq!(push.get("outcome=\"conflict\""), Some(&1.0), "{text}");
    assert_eq!(
        samples(&text, "fieldsync_sync_conflicts_total").get("table=\"work_orders\""),
        Some(&1.0)
    );
}

#[tokio::test]
async fn a_metrics_token_closes_the_endpoint_to_others() {
    let server = Server::start_with(&["--metrics-token", "scrape-secret-0123456789"]).await;
    let (status, _, _) = scrape(&server, None).await;
    assert_eq!(status, 401);
    let (status, _, _) = scrape(&server, Some("wrong")).await;
    assert_eq!(status, 401);
    let (status, _, text) = scrape(&server, Some("scrape-secret-0123456789")).await;
    assert_eq!(status, 200);
    assert!(text.contains("fieldsync_http_requests_total"), "{text}");
}

/// A minimal OTLP/HTTP collector: every `POST /v1/traces` body, decoded.
async fn collector() -> (String, mpsc::UnboundedReceiver<ExportTraceServiceRequest>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let tx = tx.clone();
            async move {
                let request =
                    ExportTraceServiceRequest::decode(body.as_ref()).expect("OTLP protobuf");
                let _ = tx.send(request);
                (
                    [("content-type", "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), rx)
}

#[derive(Debug)]
struct SpanSeen {
    name: String,
    trace_id: String,
    attributes: BTreeMap<String, String>,
    events: Vec<String>,
    service: String,
}

fn flatten(request: &ExportTraceServiceRequest) -> Vec<SpanSeen> {
    let text = |v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>| match v
        .as_ref()
        .and_then(|v| v.value.as_ref())
    {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    };
    let mut out = Vec::new();
    for rs in &request.resource_spans {
        let service = rs
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
            .map(|a| text(&a.value))
            .unwrap_or_default();
        for ss in &rs.scope_spans {
            for span in &ss.spans {
                out.push(SpanSeen {
                    name: span.name.clone(),
                    trace_id: hex(&span.trace_id),
                    attributes: span
                        .attributes
                        .iter()
                        .map(|a| (a.key.clone(), text(&a.value)))
                        .collect(),
                    events: span.events.iter().map(|e| e.name.clone()).collect(),
                    service: service.clone(),
                });
            }
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Receives spans until `done` holds of all received so far.
async fn spans_until(
    rx: &mut mpsc::UnboundedReceiver<ExportTraceServiceRequest>,
    seen: &mut Vec<SpanSeen>,
    done: impl Fn(&[SpanSeen]) -> bool,
) {
    while !done(seen) {
        let request = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no more spans; received: {seen:#?}"))
            .expect("collector stopped");
        seen.extend(flatten(&request));
    }
}

#[tokio::test]
async fn the_server_exports_a_syncs_trace_to_the_otlp_endpoint() {
    let (endpoint, mut rx) = collector().await;
    let temp = tempfile::tempdir().expect("tempdir");
    let server = Server::start_prepared(&temp.path().join("server"), &[], |c| {
        c.env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .env_remove("OTEL_SERVICE_NAME")
            .env_remove("OTEL_SDK_DISABLED")
            .env_remove("OTEL_EXPORTER_OTLP_PROTOCOL");
    })
    .await;
    server.seed(&["tech-1"], 10).await;
    let token = server.wide_technician("tech-t").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let device = Device::new(dir.path().join("d.db"), &server.url, &token);
    device.ok(&["sync"]).await;

    let mut seen = Vec::new();
    spans_until(&mut rx, &mut seen, |s| {
        s.iter().any(|s| s.name == "GET /v1/sync/pull")
            && s.iter().any(|s| s.name == "GET /v1/profile")
    })
    .await;
    let pull = seen
        .iter()
        .find(|s| s.name == "GET /v1/sync/pull")
        .expect("pull span");
    assert_eq!(pull.service, "fieldsync-server");
    assert_eq!(
        pull.attributes.get("http.route").map(String::as_str),
        Some("/v1/sync/pull")
    );
    assert_eq!(
        pull.attributes
            .get("http.response.status_code")
            .map(String::as_str),
        Some("200")
    );
    assert!(
        seen.iter()
            .filter(|s| s.name == "GET /v1/sync/pull")
            .any(|s| s.events.iter().any(|e| e == "pull page served")),
        "the page's rows are an event of the request's span: {seen:#?}"
    );

    // A caller's W3C trace context is continued.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let resp = server
        .http
        .get(format!("{}/v1/health", server.url))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .send()
        .await
        .expect("health");
    assert_eq!(resp.status(), 200);
    // (The device's network probe made health spans of their own traces.)
    spans_until(&mut rx, &mut seen, |s| {
        s.iter()
            .any(|s| s.name == "GET /v1/health" && s.trace_id == trace_id)
    })
    .await;
}

#[tokio::test]
async fn the_server_logs_json_lines_on_request() {
    let temp = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start_prepared(
        &temp.path().join("server"),
        &["--log-format", "json"],
        |c| {
            c.env("FIELDSYNC_LOG", "fieldsync_server=info")
                .stderr(Stdio::piped());
        },
    )
    .await;
    server.seed(&["tech-1"], 3).await;
    let token = server.wide_technician("tech-j").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let device = Device::new(dir.path().join("d.db"), &server.url, &token);
    device.ok(&["sync"]).await;
    let stderr = server.child.stderr.take().expect("stderr");
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("a log line")
            .expect("read")
            .expect("stderr open");
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"));
        assert!(v["timestamp"].is_string(), "{v}");
        assert!(!line.contains('\u{1b}'), "no colour codes: {line:?}");
        if v["fields"]["message"] == "pull page served" {
            assert_eq!(v["level"], "INFO");
            assert!(v["fields"]["rows"].is_u64(), "{v}");
            assert_eq!(v["span"]["http.route"], "/v1/sync/pull", "{v}");
            break;
        }
    }
}

#[tokio::test]
async fn an_unsupported_otlp_protocol_is_refused_at_start() {
    let temp = tempfile::tempdir().expect("tempdir");
    let out = Server::command(&temp.path().join("server"))
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("http/protobuf"), "{stderr}");
    assert!(out.stdout.is_empty(), "no listening line");
    let _ = ADMIN_TOKEN;
}

async fn sync_errors(server: &Server) -> Vec<Value> {
    server
        .admin("GET", "/v1/admin/sync-errors", None)
        .await
        .as_array()
        .expect("entries")
        .clone()
}

#[tokio::test]
async fn the_retry_api_applies_a_conflicts_device_change_once_and_marks_the_entry() {
    let server = Server::start().await;
    server.seed(&["tech-1"], 5).await;
    let token = server.wide_technician("tech-r").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let device = Device::new(dir.path().join("d.db"), &server.url, &token);
    device.ok(&["sync"]).await;
    server.set_conflict_detection(true).await;
    let wo = device.ok(&["list", "work_orders", "--limit", "1"]).await[0]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let dispatcher = server.user("disp-r", "dispatcher").await;
    let (status, v) = server
        .call(
            "PUT",
            &format!("/v1/records/work_orders/{wo}"),
            Some(&dispatcher),
            Some(json!({"data": {"summary": "server's"}})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    device
        .ok(&["put", "work_orders", &wo, "--set", "summary=device's"])
        .await;
    assert_eq!(device.run(&["sync"]).await.code, 4, "a conflict");

    let entries = sync_errors(&server).await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    let entry = &entries[0];
    assert_eq!(entry["kind"], "conflict");
    assert_eq!(entry["retried"], false);
    assert!(entry["retry"].is_null());
    let id = entry["id"].as_i64().expect("id");

    // Not an admin; no such entry; not a number.
    let path = format!("/v1/admin/sync-errors/{id}/retry");
    let (status, _) = server.call("POST", &path, Some(&dispatcher), None).await;
    assert_eq!(status, 403);
    let (status, _) = server.call("POST", &path, None, None).await;
    assert_eq!(status, 401);
    let (status, v) = server
        .call(
            "POST",
            "/v1/admin/sync-errors/999999/retry",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (status, _) = server
        .call(
            "POST",
            "/v1/admin/sync-errors/abc/retry",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 404);
    assert_eq!(
        server.rows(&dispatcher, "work_orders").await[&wo].1["summary"],
        "server's"
    );

    let (status, retry) = server.call("POST", &path, Some(ADMIN_TOKEN), None).await;
    assert_eq!(status, 200, "{retry}");
    assert_eq!(retry["outcome"], "applied");
    assert_eq!(retry["retried_by"], "admin token");
    assert!(retry["version"].as_i64().expect("version") > 0);
    let (version, row) = server.rows(&dispatcher, "work_orders").await[&wo].clone();
    assert_eq!(row["summary"], "device's", "the device's change won");
    assert_eq!(version, retry["version"].as_i64().expect("version"));

    let entries = sync_errors(&server).await;
    assert_eq!(entries[0]["retried"], true);
    assert_eq!(entries[0]["retry"]["outcome"], "applied");
    assert_eq!(entries[0]["retry"]["at"], retry["at"]);

    let (status, v) = server.call("POST", &path, Some(ADMIN_TOKEN), None).await;
    assert_eq!(status, 409, "once only: {v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .expect("message")
            .contains("already retried"),
        "{v}"
    );
    // The device pulls the retried change.
    device.ok(&["sync"]).await;
    assert_eq!(
        device.ok(&["get", "work_orders", &wo]).await["fields"]["summary"],
        "device's"
    );
}

#[tokio::test]
async fn a_retry_a_rule_still_refuses_is_recorded_as_failed_and_may_be_retried() {
    let server = Server::start().await;
    server.seed(&["tech-1"], 3).await;
    let token = server.wide_technician("tech-f").await;
    // A change the server refuses: a column the data model does not have.
    let (status, v) = server
        .call(
            "POST",
            "/v1/sync/push",
            Some(&token),
            Some(json!({"mutations": [{
                "idempotency_key": "k-1", "table": "work_orders", "id": "wo-new-f",
                "op": "insert", "base_version": 0,
                "data": {"name": "x", "no_such_column": 1}
            }]})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["results"][0]["status"], "rejected", "{v}");
    let entries = sync_errors(&server).await;
    assert_eq!(entries[0]["kind"], "rejected");
    let id = entries[0]["id"].as_i64().expect("id");
    let path = format!("/v1/admin/sync-errors/{id}/retry");
    for attempt in 1..=2 {
        let (status, v) = server.call("POST", &path, Some(ADMIN_TOKEN), None).await;
        assert_eq!(status, 409, "attempt {attempt}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .expect("message")
                .contains("still cannot be applied"),
            "{v}"
        );
        let entries = sync_errors(&server).await;
        assert_eq!(entries[0]["retried"], true);
        assert_eq!(entries[0]["retry"]["outcome"], "failed");
        assert!(entries[0]["retry"]["message"].is_string());
    }
    let (status, _) = server
        .call(
            "GET",
            "/v1/records/work_orders/wo-new-f",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_ne!(status, 200, "nothing was written");
    let (_, _, text) = scrape(&server, None).await;
    assert_eq!(
        samples(&text, "fieldsync_sync_error_retries_total").get("outcome=\"failed\""),
        Some(&2.0),
        "{text}"
    );
}

/// A database the server cannot open at start-up is told to the operator
/// with its cause (the storage error's chain), and the server exits 1
/// without listening; a request's database failure keeps its cause in the
/// log instead (`server/src/error.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_cannot_be_opened_is_reported_with_its_cause() {
    let temp = tempfile::tempdir().expect("tempdir");
    let file = temp.path().join("not-a-database.db");
    std::fs::write(&file, b"this is not an SQLite database, just text").expect("write");
    let out = Server::command(&temp.path().join("data"))
        .arg("--database-url")
        .arg(format!("sqlite:{}", file.display()))
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run the server");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening"));
    assert!(
        stderr.contains("fieldsync server: SQLite: file is not a database"),
        "{stderr}"
    );
}
