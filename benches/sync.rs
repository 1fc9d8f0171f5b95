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
//! - the cost of encryption at rest: the initial sync (and its device side
//!   alone) again into a database encrypted with SQLCipher, beside the plain
//!   one's figures;
//! - the physical limits in the same run: the same rows inserted into SQLite
//!   with one prepared statement in one transaction, and the raw HTTP
//!   transfer of the same pages;
//!
//! and prints each figure with its ratio to the limit.
//! `FIELDSYNC_BENCH_ROWS=100000,1000000` sets the sizes (device rows),
//! `FIELDSYNC_BENCH_PAGE` the page size (default 10000, the largest),
//! `FIELDSYNC_BENCH_EDITS` the queued local edits (default 10000), and
//! `FIELDSYNC_LOG=fieldsync::sync=debug` shows the device's phase timings.

#[path = "proc/mod.rs"]
mod proc;
#[path = "server/mod.rs"]
mod server;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fieldsync_core::{DatabaseKey, Engine, EngineConfig, Value};
use proc::cpu_secs;
use serde_json::{Value as Json, json};
use server::{ADMIN, Api};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A field of this process's `/proc/self/status`, in KiB.
fn status_kib(field: &str) -> u64 {
    proc::status_kib("self", field)
}

fn peak_rss_kib() -> u64 {
    status_kib("VmHWM:")
}

/// The most the allocator held in live allocations at once in this process
/// (the engine's and SQLite's), sampled every 5 ms by [`sample_heap`]: the
/// resident set also holds what glibc keeps free in its arenas.
static HEAP_PEAK_KIB: AtomicU64 = AtomicU64::new(0);

/// Samples glibc's count of bytes in live allocations (`mallinfo2`,
/// `uordblks`, summed over its arenas) every 5 ms into [`HEAP_PEAK_KIB`].
fn sample_heap() {
    std::thread::spawn(|| {
        loop {
            // SAFETY: mallinfo2 takes no argument and returns a plain
            // struct of counters (glibc 2.33 and later).
            let used = unsafe { libc::mallinfo2() }.uordblks as u64 / 1024;
            let before = HEAP_PEAK_KIB.fetch_max(used, Ordering::Relaxed);
            if used > before + 128 && std::env::var_os("FIELDSYNC_BENCH_RSS").is_some() {
                tracing::info!(target: "fieldsync::bench", used, "heap peak");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    });
}

/// `FIELDSYNC_BENCH_RSS=1`: the device child logs its resident set every time
/// it grows by a MiB (target `fieldsync::bench`, with the sync's phase logs),
/// to see which phase the peak belongs to.
fn trace_rss() {
    if std::env::var_os("FIELDSYNC_BENCH_RSS").is_none() {
        return;
    }
    std::thread::spawn(|| {
        let mut logged = 0;
        loop {
            let rss = status_kib("VmRSS:");
            if rss >= logged + 1024 {
                tracing::info!(target: "fieldsync::bench", rss_kib = rss, anon_kib = status_kib("RssAnon:"), file_kib = status_kib("RssFile:"), shmem_kib = status_kib("RssShmem:"), "rss");
                logged = rss;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
}

/// The key of the encrypted runs (any 32 bytes: SQLCipher's cost does not
/// depend on them).
const BENCH_KEY: [u8; 32] = [0x5a; 32];

/// Child mode: open a device (encrypted with `encrypted`) and sync once;
/// print figures as JSON.
async fn device_sync(db: &str, url: &str, token: &str, page_size: u32, encrypted: bool) {
    let mut config = EngineConfig::new(db, url, token);
    config.page_size = page_size;
    if encrypted {
        config.encryption_key = Some(DatabaseKey::from_bytes(BENCH_KEY));
    }
    trace_rss();
    sample_heap();
    let engine = Engine::open(config).expect("open");
    let started = Instant::now();
    let cpu_before = cpu_secs("self");
    let report = engine.sync().await.expect("sync");
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_secs("self") - cpu_before;
    let rows: u64 = report
        .tables
        .iter()
        .map(|t| t.rows_upserted + t.rows_removed)
        .sum();
    println!(
        "{}",
        json!({"rows": rows, "pages": report.pages(), "secs": secs, "cpu_secs": cpu, "peak_rss_kib": peak_rss_kib(), "sqlite_peak_kib": sqlite_peak_kib(), "heap_peak_kib": HEAP_PEAK_KIB.load(Ordering::Relaxed), "bytes_down": report.bytes_down, "uploaded": report.uploaded})
    );
}

/// The most memory SQLite's allocator held at once in this process (its
/// page caches, statements, temporary b-trees), to tell it apart from the
/// engine's own in the peak RSS.
fn sqlite_peak_kib() -> i64 {
    // SAFETY: sqlite3_memory_highwater only reads SQLite's global counter
    // (the argument 0 leaves it as it is); it takes no pointer.
    unsafe { rusqlite::ffi::sqlite3_memory_highwater(0) / 1024 }
}

/// Child mode: queue `n` local edits, then sync; print figures as JSON.
async fn device_upload(db: &str, url: &str, token: &str, n: usize) {
    let engine = Engine::open(EngineConfig::new(db, url, token)).expect("open");
    // The keys only, 500 records at a time: the peak RSS printed below is
    // the engine's, not a list of whole records held by the benchmark.
    let mut ids: Vec<String> = Vec::with_capacity(n);
    while ids.len() < n {
        let batch = engine
            .list("work_orders", ids.last().map(String::as_str), 500)
            .expect("list");
        if batch.is_empty() {
            break;
        }
        ids.extend(batch.into_iter().map(|r| r.id).take(n - ids.len()));
    }
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
        .output()
        .await
        .expect("child");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "child {args:?} failed");
    serde_json::from_slice(&out.stdout).expect("child JSON")
}

/// Figures of the limits pass.
struct Limits {
    /// Rows the profile gives the device (all pages, all tables).
    rows: u64,
    /// Pages pulled at the device's page size.
    pages: u64,
    /// Uncompressed JSON bytes of those pages.
    json_bytes: u64,
    /// Server alone: every page pulled over HTTP, no apply.
    server_secs: f64,
    /// Raw HTTP: the same page bodies served from memory on loopback.
    http_secs: f64,
    /// SQLite: the same rows inserted with one prepared statement in one
    /// transaction.
    sqlite_secs: f64,
    /// SQLite: rows changed over the loaded file (the first 10,000 work
    /// orders by key, upserted in one transaction), and the seconds it took.
    sqlite_update: (u64, f64),
    /// The profile and every page, by (table, cursor asked), for the replay.
    recorded: Recorded,
}

/// Server answers recorded during the limits pass.
#[derive(Clone, Default)]
struct Recorded {
    profile: axum::body::Bytes,
    pages: Arc<std::collections::HashMap<(String, String), axum::body::Bytes>>,
}

#[derive(serde::Deserialize)]
struct PullArgs {
    table: String,
    #[serde(default)]
    cursor: String,
}

/// A server that answers the device from the recorded pages (compressed as
/// the reference server does): the device side alone, at full speed.
async fn serve_replay(recorded: Recorded) -> String {
    use axum::extract::{Query, State};
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    const JSON: [(header::HeaderName, &str); 1] = [(header::CONTENT_TYPE, "application/json")];
    let app = axum::Router::new()
        .route(
            "/v1/profile",
            axum::routing::get(|State(r): State<Recorded>| async move {
                (JSON, r.profile.clone()).into_response()
            }),
        )
        .route(
            "/v1/sync/pull",
            axum::routing::get(
                |State(r): State<Recorded>, Query(q): Query<PullArgs>| async move {
                    match r.pages.get(&(q.table, q.cursor)) {
                        Some(b) => (JSON, b.clone()).into_response(),
                        None => (
                            StatusCode::NOT_FOUND,
                            JSON,
                            r#"{"error":{"code":"not_found","message":"not recorded"}}"#,
                        )
                            .into_response(),
                    }
                },
            ),
        )
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                [(header::CONTENT_TYPE, "application/json")],
                r#"{"error":{"code":"not_found","message":"not recorded"}}"#,
            )
        })
        .layer(
            tower_http::compression::CompressionLayer::new()
                .quality(tower_http::compression::CompressionLevel::Fastest),
        )
        .with_state(recorded);
    serve(app).await
}

/// Serves `app` on a loopback port; returns its base URL.
async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    url
}

/// Serves `bodies` from memory (`GET /{i}`), as raw as HTTP gets.
async fn serve_static(bodies: Arc<Vec<axum::body::Bytes>>) -> String {
    use axum::extract::{Path, State};
    let app = axum::Router::new()
        .route(
            "/{i}",
            axum::routing::get(
                |State(b): State<Arc<Vec<axum::body::Bytes>>>, Path(i): Path<usize>| async move {
                    b[i].clone()
                },
            ),
        )
        .with_state(bodies);
    serve(app).await
}

/// The physical limits: raw HTTP transfer of the same pages, and the same
/// rows inserted with one prepared statement in one transaction; also the
/// server's own page rate (every page pulled, nothing applied).
async fn limits(api: &Api, token: &str, dir: &std::path::Path, page_size: u32) -> Limits {
    let profile_bytes = api
        .http
        .get(format!("{}/v1/profile", api.url))
        .bearer_auth(token)
        .send()
        .await
        .expect("profile")
        .bytes()
        .await
        .expect("profile body");
    let profile: Json = serde_json::from_slice(&profile_bytes).expect("profile JSON");
    let mut recorded_pages = std::collections::HashMap::new();
    let mut pages_bytes: Vec<(String, axum::body::Bytes)> = Vec::new();
    let started = Instant::now();
    let mut json_bytes = 0u64;
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
            let bytes = resp.bytes().await.expect("bytes");
            json_bytes += bytes.len() as u64;
            #[derive(serde::Deserialize)]
            struct Head {
                has_more: bool,
                cursor: String,
            }
            let head: Head = serde_json::from_slice(&bytes).expect("page");
            recorded_pages.insert((table.clone(), cursor.clone()), bytes.clone());
            cursor = head.cursor;
            pages_bytes.push((table.clone(), bytes));
            if !head.has_more {
                break;
            }
        }
    }
    let server_secs = started.elapsed().as_secs_f64();

    // Raw HTTP: the same bodies, served from memory, fetched one after the
    // other with a plain client (no compression).
    let bodies: Arc<Vec<axum::body::Bytes>> =
        Arc::new(pages_bytes.iter().map(|(_, b)| b.clone()).collect());
    let static_url = serve_static(bodies.clone()).await;
    let raw = reqwest::Client::builder()
        .no_gzip()
        .build()
        .expect("client");
    let started = Instant::now();
    let mut got = 0usize;
    for i in 0..bodies.len() {
        got += raw
            .get(format!("{static_url}/{i}"))
            .send()
            .await
            .expect("get")
            .bytes()
            .await
            .expect("bytes")
            .len();
    }
    let http_secs = started.elapsed().as_secs_f64();
    assert_eq!(got as u64, json_bytes);

    // Decode outside the timed insert: the limit is SQLite's.
    let mut rows_by_table: BTreeMap<String, (Vec<String>, Vec<Vec<Value>>)> = BTreeMap::new();
    for (table, bytes) in &pages_bytes {
        let page: fieldsync_core::protocol::PullPage = serde_json::from_slice(bytes).expect("page");
        let e = rows_by_table
            .entry(table.clone())
            .or_insert_with(|| (page.columns.clone(), Vec::new()));
        e.1.extend(page.rows);
    }
    let pages = pages_bytes.len() as u64;
    drop(pages_bytes);
    // A fresh file: a run of several sizes shares `dir`.
    let limit_db = dir.join("limit.db");
    remove_db(&limit_db);
    let conn = rusqlite::Connection::open(&limit_db).expect("open");
    conn.pragma_update(None, "journal_mode", "WAL")
        .expect("wal");
    conn.pragma_update(None, "synchronous", "NORMAL")
        .expect("sync");
    let mut rows = 0u64;
    let started = Instant::now();
    let tx = conn.unchecked_transaction().expect("tx");
    for (table, (columns, data)) in &rows_by_table {
        // The device's layout: text primary key, then the other columns.
        let cols: Vec<String> = columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i == 1 {
                    format!("\"{c}\" TEXT PRIMARY KEY NOT NULL")
                } else {
                    format!("\"{c}\"")
                }
            })
            .collect();
        tx.execute_batch(&format!("CREATE TABLE \"{table}\" ({})", cols.join(", ")))
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
    // The incremental syncs' limit: the rows they change (the first work
    // orders by key, a new summary each) written over the loaded file with
    // one prepared upsert in one transaction. A change lands wherever its
    // row is in the table's b-tree, so each dirties a page of its own where
    // the load appended pages.
    let mut sqlite_update = (0u64, 0.0f64);
    if let Some((columns, data)) = rows_by_table.get("work_orders") {
        let summary = columns.iter().position(|c| c == "summary");
        let mut changed: Vec<&Vec<Value>> = data.iter().collect();
        changed.sort_by_key(|r| match r.get(1) {
            Some(Value::Text(id)) => id.clone(),
            _ => String::new(),
        });
        changed.truncate(10_000);
        let sets: Vec<String> = columns
            .iter()
            .skip(2)
            .map(|c| format!("\"{c}\" = excluded.\"{c}\""))
            .collect();
        let placeholders: Vec<&str> = columns.iter().map(|_| "?").collect();
        let started = Instant::now();
        let tx = conn.unchecked_transaction().expect("tx");
        {
            let mut stmt = tx
                .prepare(&format!(
                    "INSERT INTO work_orders VALUES ({}) ON CONFLICT (\"{}\") DO UPDATE SET {}, \"{}\" = excluded.\"{}\"",
                    placeholders.join(", "),
                    columns[1],
                    sets.join(", "),
                    columns[0],
                    columns[0]
                ))
                .expect("prepare");
            for (n, row) in changed.iter().enumerate() {
                let mut row: Vec<Value> = (*row).clone();
                if let Some(i) = summary {
                    row[i] = Value::Text(format!("limit change {n}"));
                }
                stmt.execute(rusqlite::params_from_iter(row.iter()))
                    .expect("upsert");
            }
        }
        tx.commit().expect("commit");
        sqlite_update = (changed.len() as u64, started.elapsed().as_secs_f64());
    }
    drop(conn);
    remove_db(&limit_db);
    Limits {
        rows,
        pages,
        json_bytes,
        server_secs,
        http_secs,
        sqlite_secs,
        sqlite_update,
        recorded: Recorded {
            profile: profile_bytes,
            pages: Arc::new(recorded_pages),
        },
    }
}

/// Deletes a SQLite database and its WAL files, if any.
fn remove_db(path: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
}

fn rate(rows: f64, secs: f64) -> f64 {
    if secs > 0.0 { rows / secs } else { 0.0 }
}

/// Work orders to seed per row the device should hold: the default profile
/// selects a technician's active bookings of the next seven days (about a
/// quarter of the generated bookings) and the rows they reach, about 2.1
/// device rows per generated work order.
const WORK_ORDERS_PER_DEVICE_ROW: f64 = 1.0 / 2.1;

struct Row3(String, String, String);

/// Adds a figure and shows it at once (the table is printed at the end).
fn push(out: &mut Vec<Row3>, row: Row3) {
    eprintln!("{}: {} {}", row.0, row.1, row.2);
    out.push(row);
}

async fn bench_size(target_rows: u64, dir: &std::path::Path) {
    let data = dir.join(format!("server-{target_rows}"));
    let (mut server, api) = server::start(
        &data,
        &["--request-timeout-secs", "600"],
        Some(Duration::from_secs(600)),
    )
    .await;
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
    let work_orders = ((target_rows as f64 * WORK_ORDERS_PER_DEVICE_ROW) as u64).max(1);
    let seeded = api
        .call(
            post.clone(),
            "/v1/admin/seed",
            ADMIN,
            Some(json!({"technicians": ["bench-tech"], "work_orders": work_orders, "seed": 42})),
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

    let addr = api.url.trim_start_matches("http://").to_owned();
    let proxy = start_proxy(addr.clone()).await;
    let page_size = std::env::var("FIELDSYNC_BENCH_PAGE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000u32);
    let lim = limits(&api, &token, dir, page_size).await;
    eprintln!(
        "limits: {} rows, {} pages, {} JSON bytes; server alone {:.2} s, raw HTTP {:.2} s, SQLite {:.2} s",
        lim.rows, lim.pages, lim.json_bytes, lim.server_secs, lim.http_secs, lim.sqlite_secs
    );

    let db = dir.join(format!("device-{target_rows}.db"));
    let db_s = db.to_string_lossy().to_string();
    let before = proxy.down.load(Ordering::Relaxed);
    let server_pid = server.id().map(|p| p.to_string()).unwrap_or_default();
    let server_cpu_before = cpu_secs(&server_pid);
    let initial = child(&[
        "device-sync",
        &db_s,
        &proxy.url,
        &token,
        &page_size.to_string(),
    ])
    .await;
    let wire = proxy.down.load(Ordering::Relaxed) - before;
    let server_cpu = cpu_secs(&server_pid) - server_cpu_before;
    // The exact counts a first sync asks for at its start (every table of
    // the profile from the empty cursor), alone: the server's cost of a
    // progress total that is exact from the first page.
    let counts_server_cpu_before = cpu_secs(&server_pid);
    let counts_started = Instant::now();
    let tables: BTreeMap<String, String> = api
        .call(reqwest::Method::GET, "/v1/profile", &token, None)
        .await["tables"]
        .as_array()
        .expect("profile tables")
        .iter()
        .filter_map(|t| t["name"].as_str().map(|n| (n.to_owned(), String::new())))
        .collect();
    let counted = api
        .call(
            post.clone(),
            "/v1/sync/counts",
            &token,
            Some(json!({ "tables": tables })),
        )
        .await;
    let counts_secs = counts_started.elapsed().as_secs_f64();
    let counts_cpu = cpu_secs(&server_pid) - counts_server_cpu_before;
    let counted_rows: u64 = counted["tables"]
        .as_object()
        .map(|m| m.values().filter_map(Json::as_u64).sum())
        .unwrap_or(0);
    // The device side alone: the same pages replayed from memory.
    let replay_url = serve_replay(lim.recorded.clone()).await;
    let replay_db = dir.join(format!("replay-{target_rows}.db"));
    let replay = child(&[
        "device-sync",
        &replay_db.to_string_lossy(),
        &replay_url,
        &token,
        &page_size.to_string(),
    ])
    .await;
    remove_db(&replay_db);
    // Encryption at rest: the same two runs into encrypted databases.
    let encrypted_db = dir.join(format!("encrypted-{target_rows}.db"));
    let encrypted = child(&[
        "device-sync",
        &encrypted_db.to_string_lossy(),
        &proxy.url,
        &token,
        &page_size.to_string(),
        "encrypted",
    ])
    .await;
    remove_db(&encrypted_db);
    let encrypted_replay = child(&[
        "device-sync",
        &replay_db.to_string_lossy(),
        &replay_url,
        &token,
        &page_size.to_string(),
        "encrypted",
    ])
    .await;
    remove_db(&replay_db);
    let rows = initial["rows"].as_f64().unwrap_or(0.0);
    let secs = initial["secs"].as_f64().unwrap_or(0.0);
    let initial_rate = rate(rows, secs);
    let sqlite_rate = rate(lim.rows as f64, lim.sqlite_secs);
    let http_rate = rate(lim.rows as f64, lim.http_secs);
    let server_rate = rate(lim.rows as f64, lim.server_secs);
    let rss_mib = initial["peak_rss_kib"].as_f64().unwrap_or(0.0) / 1024.0;
    let pct = |a: f64, b: f64| format!("{:.0}%", 100.0 * a / b.max(f64::MIN_POSITIVE));
    let mut out = Vec::new();
    for row in [
        Row3(
            "SQLite insert, prepared, one transaction (limit)".into(),
            format!("{sqlite_rate:.0} rows/s ({:.2} s)", lim.sqlite_secs),
            String::new(),
        ),
        Row3(
            format!(
                "SQLite upsert of {} of the same work orders over the loaded file, one transaction (limit of the incremental syncs)",
                lim.sqlite_update.0
            ),
            format!(
                "{:.0} rows/s ({:.2} µs/row)",
                rate(lim.sqlite_update.0 as f64, lim.sqlite_update.1),
                1e6 * lim.sqlite_update.1 / (lim.sqlite_update.0 as f64).max(1.0)
            ),
            format!(
                "{:.1}x the insert's cost per row",
                (lim.sqlite_update.1 / (lim.sqlite_update.0 as f64).max(1.0))
                    / (lim.sqlite_secs / (lim.rows as f64).max(1.0)).max(f64::MIN_POSITIVE)
            ),
        ),
        Row3(
            "raw HTTP transfer of the same JSON pages (limit)".into(),
            format!(
                "{http_rate:.0} rows/s ({:.2} s, {} bytes)",
                lim.http_secs, lim.json_bytes
            ),
            String::new(),
        ),
        Row3(
            "server alone: every page pulled, nothing applied".into(),
            format!("{server_rate:.0} rows/s ({:.2} s)", lim.server_secs),
            format!("{} of raw HTTP", pct(server_rate, http_rate)),
        ),
        Row3(
            "initial sync".into(),
            format!("{rows:.0} rows in {secs:.2} s = {initial_rate:.0} rows/s"),
            format!(
                "{} of SQLite, {} of raw HTTP",
                pct(initial_rate, sqlite_rate),
                pct(initial_rate, http_rate)
            ),
        ),
        Row3(
            "initial sync, device side alone (the same pages replayed from memory)".into(),
            format!(
                "{:.0} rows in {:.2} s = {:.0} rows/s, peak RSS {:.1} MiB",
                replay["rows"].as_f64().unwrap_or(0.0),
                replay["secs"].as_f64().unwrap_or(0.0),
                rate(
                    replay["rows"].as_f64().unwrap_or(0.0),
                    replay["secs"].as_f64().unwrap_or(0.0)
                ),
                replay["peak_rss_kib"].as_f64().unwrap_or(0.0) / 1024.0
            ),
            format!(
                "{} of SQLite",
                pct(
                    rate(
                        replay["rows"].as_f64().unwrap_or(0.0),
                        replay["secs"].as_f64().unwrap_or(0.0)
                    ),
                    sqlite_rate
                )
            ),
        ),
        Row3(
            "initial sync: CPU time (user and system)".into(),
            format!(
                "device {:.2} s, server {server_cpu:.2} s",
                initial["cpu_secs"].as_f64().unwrap_or(0.0)
            ),
            format!(
                "{} of the {:.2} s two cores had",
                pct(
                    initial["cpu_secs"].as_f64().unwrap_or(0.0) + server_cpu,
                    2.0 * secs
                ),
                2.0 * secs
            ),
        ),
        Row3(
            format!(
                "initial sync: exact counts at its start (POST /v1/sync/counts, {} tables, {counted_rows} rows)",
                tables.len()
            ),
            format!("{counts_secs:.3} s wall, server CPU {counts_cpu:.3} s"),
            format!(
                "{} of the server's CPU for the initial sync",
                pct(counts_cpu, server_cpu)
            ),
        ),
        Row3(
            "initial sync: pages".into(),
            format!("{}", initial["pages"]),
            String::new(),
        ),
        Row3(
            "initial sync: device peak RSS".into(),
            format!(
                "{rss_mib:.1} MiB; live allocations at most {:.1} MiB, of which SQLite's at most {:.1} MiB",
                initial["heap_peak_kib"].as_f64().unwrap_or(0.0) / 1024.0,
                initial["sqlite_peak_kib"].as_f64().unwrap_or(0.0) / 1024.0
            ),
            format!("{} of 64 MiB", pct(rss_mib, 64.0)),
        ),
        Row3(
            "initial sync into an encrypted database (SQLCipher)".into(),
            format!(
                "{:.0} rows in {:.2} s = {:.0} rows/s, CPU {:.2} s, peak RSS {:.1} MiB (SQLite's at most {:.1} MiB)",
                encrypted["rows"].as_f64().unwrap_or(0.0),
                encrypted["secs"].as_f64().unwrap_or(0.0),
                rate(
                    encrypted["rows"].as_f64().unwrap_or(0.0),
                    encrypted["secs"].as_f64().unwrap_or(0.0)
                ),
                encrypted["cpu_secs"].as_f64().unwrap_or(0.0),
                encrypted["peak_rss_kib"].as_f64().unwrap_or(0.0) / 1024.0,
                encrypted["sqlite_peak_kib"].as_f64().unwrap_or(0.0) / 1024.0
            ),
            format!(
                "{} of the plain time, device CPU {} of plain, peak RSS {:+.1} MiB",
                pct(encrypted["secs"].as_f64().unwrap_or(0.0), secs),
                pct(
                    encrypted["cpu_secs"].as_f64().unwrap_or(0.0),
                    initial["cpu_secs"].as_f64().unwrap_or(0.0)
                ),
                (encrypted["peak_rss_kib"].as_f64().unwrap_or(0.0)
                    - initial["peak_rss_kib"].as_f64().unwrap_or(0.0))
                    / 1024.0
            ),
        ),
        Row3(
            "initial sync, device side alone, encrypted".into(),
            format!(
                "{:.0} rows in {:.2} s = {:.0} rows/s, peak RSS {:.1} MiB",
                encrypted_replay["rows"].as_f64().unwrap_or(0.0),
                encrypted_replay["secs"].as_f64().unwrap_or(0.0),
                rate(
                    encrypted_replay["rows"].as_f64().unwrap_or(0.0),
                    encrypted_replay["secs"].as_f64().unwrap_or(0.0)
                ),
                encrypted_replay["peak_rss_kib"].as_f64().unwrap_or(0.0) / 1024.0
            ),
            format!(
                "{} of the plain time, peak RSS {:+.1} MiB",
                pct(
                    encrypted_replay["secs"].as_f64().unwrap_or(0.0),
                    replay["secs"].as_f64().unwrap_or(0.0)
                ),
                (encrypted_replay["peak_rss_kib"].as_f64().unwrap_or(0.0)
                    - replay["peak_rss_kib"].as_f64().unwrap_or(0.0))
                    / 1024.0
            ),
        ),
        Row3(
            "initial sync: bytes on the wire (down)".into(),
            format!("{wire}"),
            format!(
                "{} of the uncompressed JSON ({})",
                pct(wire as f64, lim.json_bytes as f64),
                lim.json_bytes
            ),
        ),
    ] {
        push(&mut out, row);
    }

    // Incremental: dispatcher edits of work orders the device holds.
    let ids: Vec<String> = {
        let conn = rusqlite::Connection::open(&db).expect("open device db");
        let mut stmt = conn
            .prepare("SELECT id FROM work_orders ORDER BY id LIMIT 10000")
            .expect("prepare");
        stmt.query_map([], |r| r.get(0))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("ids")
    };
    let ids = Arc::new(ids);
    let per_row_initial = secs / rows.max(1.0);
    let mut inc_secs = Vec::new();
    // The third round edits each work order twice: a row that comes back
    // two versions past the device's copy has its related rows fetched
    // again (`core/src/store/related.rs`, `RelatedQueue`), which measures
    // `POST /v1/sync/fetch`.
    for (round, (changes, times)) in [(1_000usize, 1usize), (10_000, 1), (1_000, 2)]
        .into_iter()
        .enumerate()
    {
        let changes = changes.min(ids.len());
        let started = Instant::now();
        let mut handles = Vec::new();
        let workers = 8;
        for w in 0..workers {
            let (http, url, disp, ids) = (
                api.http.clone(),
                api.url.clone(),
                dispatcher.clone(),
                ids.clone(),
            );
            handles.push(tokio::spawn(async move {
                for n in (w..changes * times).step_by(workers) {
                    let i = n % changes;
                    let resp = http
                        .put(format!("{url}/v1/records/work_orders/{}", ids[i]))
                        .bearer_auth(&disp)
                        .header("content-type", "application/json")
                        .body(
                            json!({"data": {"summary": format!("change {round}.{n}")}}).to_string(),
                        )
                        .send()
                        .await
                        .expect("put");
                    assert!(resp.status().is_success(), "put: {}", resp.status());
                }
            }));
        }
        for h in handles {
            h.await.expect("writer");
        }
        eprintln!(
            "made {} server changes in {:.1} s",
            changes * times,
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
        let what = if times == 1 {
            inc_secs.push((irows, isecs));
            format!("incremental sync of {changes} server changes")
        } else {
            format!(
                "incremental sync of {changes} work orders edited {times} times (their related rows fetched again)"
            )
        };
        push(
            &mut out,
            Row3(
                what,
                format!(
                    "{irows:.0} rows in {isecs:.3} s = {:.0} rows/s, {wire} bytes down, peak RSS {:.1} MiB",
                    rate(irows, isecs),
                    inc["peak_rss_kib"].as_f64().unwrap_or(0.0) / 1024.0
                ),
                format!(
                    "{:.1}x the initial cost per row",
                    (isecs / irows.max(1.0)) / per_row_initial.max(f64::MIN_POSITIVE)
                ),
            ),
        );
    }
    if let [(r1, s1), (r2, s2)] = inc_secs[..]
        && r2 > r1
    {
        let marginal = (s2 - s1) / (r2 - r1);
        push(
            &mut out,
            Row3(
                "incremental sync, marginal cost per row (10k minus 1k)".into(),
                format!("{:.2} µs/row", marginal * 1e6),
                format!(
                    "{:.1}x the initial cost per row ({:.2} µs)",
                    marginal / per_row_initial.max(f64::MIN_POSITIVE),
                    per_row_initial * 1e6
                ),
            ),
        );
    }

    let before = proxy.up.load(Ordering::Relaxed);
    let edits = std::env::var("FIELDSYNC_BENCH_EDITS").unwrap_or_else(|_| "10000".into());
    let up = child(&["device-upload", &db_s, &proxy.url, &token, &edits]).await;
    let wire_up = proxy.up.load(Ordering::Relaxed) - before;
    let edits = up["edits"].as_f64().unwrap_or(0.0);
    let write_secs = up["write_secs"].as_f64().unwrap_or(0.0);
    let sync_secs = up["sync_secs"].as_f64().unwrap_or(0.0);
    push(
        &mut out,
        Row3(
            format!("queue {edits:.0} local edits (one transaction each)"),
            format!("{write_secs:.2} s = {:.0} edits/s", rate(edits, write_secs)),
            String::new(),
        ),
    );
    push(
        &mut out,
        Row3(
            format!("upload of {edits:.0} queued edits"),
            format!(
                "{} applied in {sync_secs:.2} s = {:.0} edits/s, {wire_up} bytes up, peak RSS {:.1} MiB",
                up["uploaded"],
                rate(up["uploaded"].as_f64().unwrap_or(0.0), sync_secs),
                up["peak_rss_kib"].as_f64().unwrap_or(0.0) / 1024.0
            ),
            String::new(),
        ),
    );
    let _ = server.kill().await;
    println!("\n## {target_rows} rows (server holds {server_rows})\n");
    println!("| figure | value | ratio to the limit |");
    println!("|---|---|---|");
    for Row3(a, b, c) in &out {
        println!("| {a} | {b} | {c} |");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if std::env::var_os("FIELDSYNC_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("FIELDSYNC_LOG"))
            .with_ansi(false)
            .with_writer(std::io::stderr)
            .try_init();
    }
    if let Some(i) = args.iter().position(|a| a == "device-sync") {
        let a = &args[i + 1..];
        runtime.block_on(device_sync(
            &a[0],
            &a[1],
            &a[2],
            a[3].parse().unwrap_or(1000),
            a.get(4).is_some_and(|m| m == "encrypted"),
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
