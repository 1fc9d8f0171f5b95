//! fieldsync sync benchmark: `cargo bench --bench sync`.
//!
//! Starts the reference server (a real `fieldsync server` process) on
//! loopback with the default Field Service profile and generated data, puts a
//! byte-counting TCP proxy in front of it, and measures on a fresh device
//! database, in a separate device process so its peak memory (RSS) is its
//! own:
//! - initial sync: rows per second, wall time, peak RSS, bytes on the wire, pages;
//! - incremental sync of 1k and 10k server changes into the synced database;
//! - upload of 10k queued local edits;
//! - the physical limits in the same run: the same rows inserted into SQLite
//!   with one prepared statement in one transaction, and the raw HTTP
//!   transfer of the same pages;
//!
//! and prints each figure with its ratio to the limit.
//! `FIELDSYNC_BENCH_ROWS=100000,1000000` sets the sizes (device rows).

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fieldsync_core::{Engine, EngineConfig, Value};
use serde_json::{Value as Json, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const ADMIN: &str = "bench-admin-token";

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Child mode: open a device and sync once; print figures as JSON.
async fn device_sync(db: &str, url: &str, token: &str, page_size: u32) {
    let mut config = EngineConfig::new(db, url, token);
    config.page_size = page_size;
    let engine = Engine::open(config).expect("open");
    let started = Instant::now();
    let report = engine.sync().await.expect("sync");
    let secs = started.elapsed().as_secs_f64();
    let rows: u64 = report
        .tables
        .iter()
        .map(|t| t.rows_upserted + t.rows_removed)
        .sum();
    println!(
        "{}",
        json!({"rows": rows, "pages": report.pages(), "secs": secs, "peak_rss_kib": peak_rss_kib(), "bytes_down": report.bytes_down, "uploaded": report.uploaded})
    );
}

/// Child mode: queue `n` local edits, then sync; print figures as JSON.
async fn device_upload(db: &str, url: &str, token: &str, n: usize) {
    let engine = Engine::open(EngineConfig::new(db, url, token)).expect("open");
    let ids: Vec<String> = engine
        .list("work_orders", None, n as u32)
        .expect("list")
        .into_iter()
        .map(|r| r.id)
        .collect();
    let started = Instant::now();
    for (i, id) in ids.iter().enumerate() {
        engine
            .update(
                "work_orders",
                id,
                BTreeMap::from([("summary".into(), Value::Text(format!("bench edit {i}")))]),
            )
            .expect("edit");
    }
    let write_secs = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let report = engine.sync().await.expect("sync");
    let sync_secs = started.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({"edits": ids.len(), "write_secs": write_secs, "sync_secs": sync_secs, "uploaded": report.uploaded, "peak_rss_kib": peak_rss_kib(), "bytes_up": report.bytes_up})
    );
}

struct Proxy {
    url: String,
    down: Arc<AtomicU64>,
    up: Arc<AtomicU64>,
}

async fn start_proxy(upstream: String) -> Proxy {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let down = Arc::new(AtomicU64::new(0));
    let up = Arc::new(AtomicU64::new(0));
    let (d, u) = (down.clone(), up.clone());
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let (d, u, upstream) = (d.clone(), u.clone(), upstream.clone());
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let a = tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = cr.read(&mut buf).await {
                        if n == 0 || sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        u.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    let _ = sw.shutdown().await;
                });
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = sr.read(&mut buf).await {
                    if n == 0 || cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    d.fetch_add(n as u64, Ordering::Relaxed);
                }
                let _ = cw.shutdown().await;
                a.abort();
            });
        }
    });
    Proxy { url, down, up }
}

async fn child(args: &[&str]) -> Json {
    let out = tokio::process::Command::new(std::env::current_exe().expect("exe"))
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .await
        .expect("child");
    assert!(out.status.success(), "child {args:?} failed");
    serde_json::from_slice(&out.stdout).expect("child JSON")
}

struct Api {
    http: reqwest::Client,
    url: String,
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Json>,
    ) -> Json {
        let mut req = self
            .http
            .request(method, format!("{}{}", self.url, path))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        assert!(status.is_success(), "{path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Json::Null)
    }
}

/// The physical limits: raw HTTP transfer of the same pages, and the same
/// rows inserted with one prepared statement in one transaction.
async fn limits(
    api: &Api,
    token: &str,
    dir: &std::path::Path,
    page_size: u32,
) -> (u64, f64, f64, u64) {
    let profile = api
        .call(reqwest::Method::GET, "/v1/profile", token, None)
        .await;
    let mut pages_bytes: Vec<(String, Vec<u8>)> = Vec::new();
    let started = Instant::now();
    let mut total_bytes = 0u64;
    for t in profile["tables"].as_array().expect("tables") {
        let table = t["name"].as_str().expect("name").to_owned();
        let mut cursor = String::new();
        loop {
            let resp = api
                .http
                .get(format!(
                    "{}/v1/sync/pull?table={table}&cursor={cursor}&limit={page_size}",
                    api.url
                ))
                .bearer_auth(token)
                .send()
                .await
                .expect("pull");
            let bytes = resp.bytes().await.expect("bytes").to_vec();
            total_bytes += bytes.len() as u64;
            let head: Json = serde_json::from_slice(&bytes).expect("page");
            let more = head["has_more"].as_bool().unwrap_or(false);
            cursor = head["cursor"].as_str().unwrap_or_default().to_owned();
            pages_bytes.push((table.clone(), bytes));
            if !more {
                break;
            }
        }
    }
    let http_secs = started.elapsed().as_secs_f64();
    // Decode outside the timed insert: the limit is SQLite's.
    let mut rows_by_table: BTreeMap<String, (Vec<String>, Vec<Vec<Value>>)> = BTreeMap::new();
    for (table, bytes) in &pages_bytes {
        let page: fieldsync_core::protocol::PullPage = serde_json::from_slice(bytes).expect("page");
        let e = rows_by_table
            .entry(table.clone())
            .or_insert_with(|| (page.columns.clone(), Vec::new()));
        e.1.extend(page.rows);
    }
    let conn = rusqlite::Connection::open(dir.join("limit.db")).expect("open");
    conn.pragma_update(None, "journal_mode", "WAL")
        .expect("wal");
    conn.pragma_update(None, "synchronous", "NORMAL")
        .expect("sync");
    let mut rows = 0u64;
    let started = Instant::now();
    let tx = conn.unchecked_transaction().expect("tx");
    for (table, (columns, data)) in &rows_by_table {
        let cols: Vec<String> = columns.iter().map(|c| format!("\"{c}\"")).collect();
        tx.execute_batch(&format!(
            "CREATE TABLE \"{table}\" ({}, PRIMARY KEY (\"{}\"))",
            cols.join(", "),
            columns[1]
        ))
        .expect("create");
        let placeholders: Vec<&str> = columns.iter().map(|_| "?").collect();
        let mut stmt = tx
            .prepare(&format!(
                "INSERT INTO \"{table}\" VALUES ({})",
                placeholders.join(", ")
            ))
            .expect("prepare");
        for row in data {
            stmt.execute(rusqlite::params_from_iter(row.iter()))
                .expect("insert");
            rows += 1;
        }
    }
    tx.commit().expect("commit");
    let sqlite_secs = started.elapsed().as_secs_f64();
    (rows, http_secs, sqlite_secs, total_bytes)
}

fn rate(rows: f64, secs: f64) -> f64 {
    if secs > 0.0 { rows / secs } else { 0.0 }
}

async fn bench_size(target_rows: u64, dir: &std::path::Path) {
    let data = dir.join(format!("server-{target_rows}"));
    let mut server = tokio::process::Command::new(env!("CARGO_BIN_EXE_fieldsync"))
        .args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--admin-token",
            ADMIN,
            "--data-dir",
        ])
        .arg(&data)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("server");
    let mut lines = BufReader::new(server.stdout.take().expect("stdout")).lines();
    let line = lines.next_line().await.expect("line").expect("listening");
    let addr = serde_json::from_str::<Json>(&line).expect("json")["address"]
        .as_str()
        .expect("addr")
        .to_owned();
    let api = Api {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(600))
            .build()
            .expect("client"),
        url: format!("http://{addr}"),
    };
    let post = reqwest::Method::POST;
    let user = api
        .call(
            post.clone(),
            "/v1/admin/users",
            ADMIN,
            Some(json!({"id": "bench-tech", "name": "Bench", "role": "technician"})),
        )
        .await;
    let token = user["token"].as_str().expect("token").to_owned();
    let dispatcher = api
        .call(
            post.clone(),
            "/v1/admin/users",
            ADMIN,
            Some(json!({"id": "bench-disp", "name": "Dispatch", "role": "dispatcher"})),
        )
        .await["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let started = Instant::now();
    let seeded = api
        .call(post.clone(), "/v1/admin/seed", ADMIN, Some(json!({"technicians": ["bench-tech"], "work_orders": (target_rows / 7).max(1), "seed": 42})))
        .await;
    let server_rows: u64 = seeded["rows"]
        .as_object()
        .map(|m| m.values().filter_map(|v| v.as_u64()).sum())
        .unwrap_or(0);
    eprintln!(
        "seeded {server_rows} rows in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let proxy = start_proxy(addr.clone()).await;
    let page_size = 5000u32;
    let (limit_rows, http_secs, sqlite_secs, raw_bytes) =
        limits(&api, &token, dir, page_size).await;

    let db = dir.join(format!("device-{target_rows}.db"));
    let db_s = db.to_string_lossy().to_string();
    let before = proxy.down.load(Ordering::Relaxed);
    let initial = child(&[
        "device-sync",
        &db_s,
        &proxy.url,
        &token,
        &page_size.to_string(),
    ])
    .await;
    let wire = proxy.down.load(Ordering::Relaxed) - before;
    let rows = initial["rows"].as_f64().unwrap_or(0.0);
    let secs = initial["secs"].as_f64().unwrap_or(0.0);
    let initial_rate = rate(rows, secs);
    let sqlite_rate = rate(limit_rows as f64, sqlite_secs);
    let http_rate = rate(limit_rows as f64, http_secs);

    println!("\n## {target_rows} rows (server holds {server_rows})");
    println!(
        "physical limit, SQLite insert (prepared, one transaction): {sqlite_rate:>10.0} rows/s ({sqlite_secs:.2} s)"
    );
    println!(
        "physical limit, raw HTTP transfer of the same pages:      {http_rate:>10.0} rows/s ({http_secs:.2} s, {raw_bytes} bytes)"
    );
    println!(
        "initial sync: {rows:.0} rows in {secs:.2} s = {initial_rate:.0} rows/s ({:.0}% of SQLite, {:.0}% of HTTP), {} pages, peak RSS {} KiB, {wire} bytes on the wire (uncompressed JSON {}: {:.0}%)",
        100.0 * initial_rate / sqlite_rate.max(1.0),
        100.0 * initial_rate / http_rate.max(1.0),
        initial["pages"],
        initial["peak_rss_kib"],
        initial["bytes_down"],
        100.0 * wire as f64 / initial["bytes_down"].as_f64().unwrap_or(1.0).max(1.0)
    );

    for changes in [1_000u64, 10_000] {
        let started = Instant::now();
        let mut handles = Vec::new();
        let per = changes / 8;
        for w in 0..8u64 {
            let (http, url, disp) = (api.http.clone(), api.url.clone(), dispatcher.clone());
            handles.push(tokio::spawn(async move {
                for i in 0..per {
                    let wo = format!("wo-{:07}", (w * per + i) % (target_rows / 7).max(1));
                    let _ = http
                        .put(format!("{url}/v1/records/work_orders/{wo}"))
                        .bearer_auth(&disp)
                        .header("content-type", "application/json")
                        .body(json!({"data": {"summary": format!("change {i}")}}).to_string())
                        .send()
                        .await;
                }
            }));
        }
        for h in handles {
            let _ = h.await;
        }
        eprintln!(
            "made {changes} server changes in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let before = proxy.down.load(Ordering::Relaxed);
        let inc = child(&[
            "device-sync",
            &db_s,
            &proxy.url,
            &token,
            &page_size.to_string(),
        ])
        .await;
        let wire = proxy.down.load(Ordering::Relaxed) - before;
        let irows = inc["rows"].as_f64().unwrap_or(0.0);
        let isecs = inc["secs"].as_f64().unwrap_or(0.0);
        let per_row_inc = isecs / irows.max(1.0);
        let per_row_initial = secs / rows.max(1.0);
        println!(
            "incremental sync of {changes} changes: {irows:.0} rows in {isecs:.3} s = {:.0} rows/s, {:.2}x the initial cost per row, {wire} bytes on the wire, peak RSS {} KiB",
            rate(irows, isecs),
            per_row_inc / per_row_initial.max(f64::MIN_POSITIVE),
            inc["peak_rss_kib"]
        );
    }

    let before = proxy.up.load(Ordering::Relaxed);
    let up = child(&["device-upload", &db_s, &proxy.url, &token, "10000"]).await;
    let wire_up = proxy.up.load(Ordering::Relaxed) - before;
    println!(
        "upload of {} queued edits: queued in {:.2} s ({:.0} edits/s), uploaded {} in {:.2} s ({:.0} edits/s), {wire_up} bytes up, peak RSS {} KiB",
        up["edits"],
        up["write_secs"].as_f64().unwrap_or(0.0),
        rate(
            up["edits"].as_f64().unwrap_or(0.0),
            up["write_secs"].as_f64().unwrap_or(0.0)
        ),
        up["uploaded"],
        up["sync_secs"].as_f64().unwrap_or(0.0),
        rate(
            up["uploaded"].as_f64().unwrap_or(0.0),
            up["sync_secs"].as_f64().unwrap_or(0.0)
        ),
        up["peak_rss_kib"]
    );
    let _ = server.kill().await;
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if let Some(i) = args.iter().position(|a| a == "device-sync") {
        let a = &args[i + 1..];
        runtime.block_on(device_sync(
            &a[0],
            &a[1],
            &a[2],
            a[3].parse().unwrap_or(1000),
        ));
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "device-upload") {
        let a = &args[i + 1..];
        runtime.block_on(device_upload(
            &a[0],
            &a[1],
            &a[2],
            a[3].parse().unwrap_or(10_000),
        ));
        return;
    }
    let sizes: Vec<u64> = std::env::var("FIELDSYNC_BENCH_ROWS")
        .unwrap_or_else(|_| "100000,1000000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    println!(
        "fieldsync sync benchmark ({} cores)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    runtime.block_on(async {
        for n in sizes {
            bench_size(n, dir.path()).await;
        }
    });
}
