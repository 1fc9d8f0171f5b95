//! fieldsync fleet benchmark: `cargo bench --bench fleet`.
//!
//! What one server does for many devices at once, on the embedded SQLite
//! default, or on PostgreSQL when `FIELDSYNC_TEST_POSTGRES` names a cluster
//! (as `scripts/with-postgres.sh` sets it; the benchmark makes a fresh
//! database there):
//!
//! - **fleet**: `FIELDSYNC_FLEET_DEVICES` technicians (default 50), each
//!   given about `FIELDSYNC_FLEET_ROWS` device rows (default 20,000), make
//!   their first syncs at the same time, each device an engine of its own in
//!   this process. Printed: rows per second served, the latency of a pull
//!   page (median and p99, timed at a forwarding proxy in front of the
//!   server: from the request to the last byte of its answer), the server's
//!   peak RSS and CPU.
//! - **push**: `FIELDSYNC_PUSH_DEVICES` of those devices (default 10) each
//!   queue `FIELDSYNC_PUSH_EDITS` edits of work orders they hold (default
//!   1,000), then all sync at once. Printed: edits per second the server
//!   applied, next to the rate at which SQLite itself upserts the same number
//!   of work-order rows in one transaction in the same run.
//!
//! Speed is the benchmark's business; no test asserts it.

#[path = "../tests/testdb/mod.rs"]
mod testdb;

#[path = "proc/mod.rs"]
mod proc;
#[path = "server/mod.rs"]
mod server;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, StatusCode};
use axum::response::Response;
use fieldsync_core::{Engine, EngineConfig, Value};
use serde_json::json;

use server::ADMIN;

/// Work orders the seed generates per device row of a technician (the
/// default profile gives about 2.1 device rows per work order).
const WORK_ORDERS_PER_DEVICE_ROW: f64 = 1.0 / 2.1;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The forwarding proxy's state: where to, and how long each pull page
/// took, in seconds.
struct Forward {
    upstream: String,
    http: reqwest::Client,
    pulls: Mutex<Vec<f64>>,
}

/// Forwards one request as it came and times it when it is a pull page.
async fn forward(State(fwd): State<Arc<Forward>>, req: Request) -> Response {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let Ok(body) = axum::body::to_bytes(body, usize::MAX).await else {
        return bad_gateway();
    };
    let mut headers = HeaderMap::new();
    for (name, value) in &parts.headers {
        if name != "host" && name != "content-length" {
            headers.append(name.clone(), value.clone());
        }
    }
    let sent = fwd
        .http
        .request(parts.method, format!("{}{}", fwd.upstream, path))
        .headers(headers)
        .body(body)
        .send()
        .await;
    let Ok(answer) = sent else {
        return bad_gateway();
    };
    let status = answer.status();
    let answer_headers = answer.headers().clone();
    let Ok(bytes) = answer.bytes().await else {
        return bad_gateway();
    };
    if path.starts_with("/v1/sync/pull") {
        let secs = started.elapsed().as_secs_f64();
        fwd.pulls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(secs);
    }
    let mut out = Response::new(Body::from(bytes));
    *out.status_mut() = status;
    for (name, value) in &answer_headers {
        if name != "content-length" && name != "transfer-encoding" {
            out.headers_mut()
                .append(HeaderName::from(name), value.clone());
        }
    }
    out
}

fn bad_gateway() -> Response {
    let mut r = Response::new(Body::from(Bytes::new()));
    *r.status_mut() = StatusCode::BAD_GATEWAY;
    r
}

async fn start_forward(upstream: &str) -> (String, Arc<Forward>) {
    let fwd = Arc::new(Forward {
        upstream: upstream.to_owned(),
        // Pages pass as the server compressed them.
        http: reqwest::Client::builder()
            .no_gzip()
            .no_zstd()
            .pool_max_idle_per_host(256)
            .timeout(Duration::from_secs(600))
            .build()
            .expect("client"),
        pulls: Mutex::new(Vec::new()),
    });
    let app = axum::Router::new()
        .fallback(forward)
        .with_state(fwd.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, fwd)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The rate (rows per second) at which SQLite upserts `n` work-order rows
/// over as many already there, one prepared statement, one transaction,
/// WAL: the limit the push figure is set against.
fn sqlite_upsert_rate(dir: &std::path::Path, n: usize) -> f64 {
    let path = dir.join("upsert-limit.db");
    let conn = rusqlite::Connection::open(&path).expect("open");
    conn.pragma_update(None, "journal_mode", "WAL")
        .expect("wal");
    conn.execute_batch(
        "CREATE TABLE work_orders (id TEXT PRIMARY KEY, name TEXT, account_id TEXT,
             status TEXT, priority INTEGER, summary TEXT, version INTEGER)",
    )
    .expect("table");
    let write = |label: &str| {
        let tx = conn.unchecked_transaction().expect("tx");
        {
            let mut stmt = tx
                .prepare(
                    "INSERT INTO work_orders VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     ON CONFLICT(id) DO UPDATE SET summary = excluded.summary,
                         version = excluded.version",
                )
                .expect("prepare");
            for i in 0..n {
                stmt.execute(rusqlite::params![
                    format!("wo-{i:07}"),
                    format!("WO-{i}"),
                    format!("acc-{:06}", i % 1000),
                    "scheduled",
                    3,
                    format!("{label} {i}"),
                    i as i64,
                ])
                .expect("upsert");
            }
        }
        tx.commit().expect("commit");
    };
    write("first");
    let started = Instant::now();
    write("edited");
    n as f64 / started.elapsed().as_secs_f64()
}

async fn device_sync(engine: Arc<Engine>) -> (u64, f64) {
    let started = Instant::now();
    let report = engine.sync().await.expect("sync");
    let rows = report
        .tables
        .iter()
        .map(|t| t.rows_upserted + t.rows_removed)
        .sum();
    (rows, started.elapsed().as_secs_f64())
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}

async fn run() {
    let devices = env_usize("FIELDSYNC_FLEET_DEVICES", 50).max(1);
    let rows_each = env_usize("FIELDSYNC_FLEET_ROWS", 20_000).max(1);
    let pushers = env_usize("FIELDSYNC_PUSH_DEVICES", 10).min(devices);
    let edits_each = env_usize("FIELDSYNC_PUSH_EDITS", 1_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("server");
    let database_url = testdb::database_url(&data);
    let backend = if database_url.is_some() {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    println!(
        "fieldsync fleet benchmark ({} cores, {backend}): {devices} devices x ~{rows_each} rows, push {pushers} x {edits_each} edits",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );

    let mut extra = vec!["--request-timeout-secs", "600", "--max-connections", "1024"];
    if let Some(url) = &database_url {
        extra.extend(["--database-url", url.as_str()]);
    }
    let (server, api) = server::start(&data, &extra, Some(Duration::from_secs(1200))).await;
    let server_pid = server.id().expect("pid").to_string();

    let technicians: Vec<String> = (0..devices).map(|i| format!("fleet-{i:03}")).collect();
    let mut tokens = Vec::new();
    for t in &technicians {
        let user = api
            .call(
                reqwest::Method::POST,
                "/v1/admin/users",
                ADMIN,
                Some(json!({"id": t, "name": t, "role": "technician"})),
            )
            .await;
        tokens.push(user["token"].as_str().expect("token").to_owned());
    }
    let work_orders = ((devices * rows_each) as f64 * WORK_ORDERS_PER_DEVICE_ROW).ceil() as u64;
    let started = Instant::now();
    let seeded = api
        .call(
            reqwest::Method::POST,
            "/v1/admin/seed",
            ADMIN,
            Some(json!({"technicians": technicians, "work_orders": work_orders, "seed": 42})),
        )
        .await;
    let server_rows: u64 = seeded["rows"]
        .as_object()
        .map(|m| m.values().filter_map(|v| v.as_u64()).sum())
        .unwrap_or(0);
    eprintln!(
        "seeded {server_rows} rows ({work_orders} work orders) in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // ---- fleet: every first sync at once --------------------------------
    let (proxy, fwd) = start_forward(&api.url).await;
    let engines: Vec<Arc<Engine>> = tokens
        .iter()
        .enumerate()
        .map(|(i, token)| {
            let db = dir.path().join(format!("device-{i:03}.db"));
            Engine::open(EngineConfig::new(
                db.to_string_lossy().as_ref(),
                &proxy,
                token,
            ))
            .expect("open")
        })
        .collect();
    let cpu_before = proc::cpu_secs(&server_pid);
    let started = Instant::now();
    let runs: Vec<_> = engines
        .iter()
        .map(|e| tokio::spawn(device_sync(e.clone())))
        .collect();
    let mut rows = 0u64;
    let mut slowest = 0f64;
    for r in runs {
        let (n, secs) = r.await.expect("device");
        rows += n;
        slowest = slowest.max(secs);
    }
    let wall = started.elapsed().as_secs_f64();
    let server_cpu = proc::cpu_secs(&server_pid) - cpu_before;
    let mut pulls = std::mem::take(&mut *fwd.pulls.lock().unwrap_or_else(|p| p.into_inner()));
    pulls.sort_by(|a, b| a.total_cmp(b));
    let rss_mib = proc::status_kib(&server_pid, "VmHWM:") as f64 / 1024.0;
    println!();
    println!("| fleet: {devices} first syncs at once ({backend}) | value |");
    println!("|---|---|");
    println!(
        "| rows served | {rows} in {wall:.2} s = {:.0} rows/s (slowest device {slowest:.2} s) |",
        rows as f64 / wall
    );
    println!(
        "| pull page latency | median {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} pages |",
        percentile(&pulls, 0.5) * 1e3,
        percentile(&pulls, 0.99) * 1e3,
        pulls.last().copied().unwrap_or(0.0) * 1e3,
        pulls.len()
    );
    println!(
        "| server | peak RSS {rss_mib:.1} MiB, CPU {server_cpu:.2} s ({:.0}% of one core) |",
        100.0 * server_cpu / wall
    );

    // ---- push: many devices' queued edits at once ----------------------
    let mut queued = 0usize;
    for engine in engines.iter().take(pushers) {
        let mut ids: Vec<String> = Vec::new();
        while ids.len() < edits_each {
            let batch = engine
                .list("work_orders", ids.last().map(String::as_str), 500)
                .expect("list");
            if batch.is_empty() {
                break;
            }
            ids.extend(batch.into_iter().map(|r| r.id).take(edits_each - ids.len()));
        }
        for (i, id) in ids.iter().enumerate() {
            engine
                .update(
                    "work_orders",
                    id,
                    BTreeMap::from([("summary".into(), Value::Text(format!("fleet edit {i}")))]),
                )
                .expect("edit");
        }
        queued += ids.len();
    }
    let cpu_before = proc::cpu_secs(&server_pid);
    let started = Instant::now();
    let runs: Vec<_> = engines
        .iter()
        .take(pushers)
        .map(|e| {
            let e = e.clone();
            tokio::spawn(async move { e.sync().await.expect("sync").uploaded })
        })
        .collect();
    let mut uploaded = 0u64;
    for r in runs {
        uploaded += r.await.expect("device");
    }
    let wall = started.elapsed().as_secs_f64();
    let server_cpu = proc::cpu_secs(&server_pid) - cpu_before;
    let limit = sqlite_upsert_rate(dir.path(), queued.max(1));
    let rate = uploaded as f64 / wall;
    println!();
    println!("| push: {pushers} devices' queued edits at once ({backend}) | value | ratio |");
    println!("|---|---|---|");
    println!(
        "| **limit**: SQLite upsert of {queued} work-order rows, one transaction | {limit:.0} rows/s | |"
    );
    println!(
        "| edits applied (whole syncs, {uploaded} of {queued} uploaded) | {wall:.2} s = {rate:.0} edits/s | {:.1}% of the limit |",
        100.0 * rate / limit
    );
    println!("| server CPU | {server_cpu:.2} s | |");
    assert_eq!(uploaded as usize, queued, "every queued edit uploaded");
}
