//! fieldsync local query benchmark: `cargo bench --bench local`.
//!
//! What the app's local reads and observed queries cost on a large table:
//!
//! - **query**: a filtered, ordered query of 100 rows on the declared local
//!   index of a `FIELDSYNC_LOCAL_ROWS`-row work-orders table (default 1M),
//!   through the engine, next to the same SQL run raw on the same file with
//!   rusqlite (the limit);
//! - **observers**: `FIELDSYNC_LOCAL_WRITES` local edits (default 500), each
//!   its own durable transaction, with no observer, then with ten observers
//!   of ten different such queries on the table (each re-run after each
//!   commit).
//!
//! The device syncs a small data set from a real server once (so its profile,
//! with the declared index, is installed), then the benchmark fills the
//! work-orders table straight through SQLite, in the device's own layout:
//! downloading a million work orders would measure the sync, which
//! `benches/sync.rs` does.

#[path = "server/mod.rs"]
mod server;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fieldsync_core::filter::Filter;
use fieldsync_core::{Engine, EngineConfig, Error, OrderBy, Query, QueryListener, Record, Value};
use serde_json::json;
use server::ADMIN;

const STATUSES: [&str; 5] = ["open", "scheduled", "in_progress", "completed", "canceled"];

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Observes without doing anything with the rows: the cost measured is the
/// engine's (the query and the records built), not the app's.
struct Discard;

impl QueryListener for Discard {
    fn on_result(&self, records: Vec<Record>) {
        std::hint::black_box(records);
    }
    fn on_error(&self, error: Error) {
        panic!("observed query failed: {error}");
    }
}

/// Fills `work_orders` with `n` rows in the device's layout (its synced
/// columns and `_fs_version`), one transaction.
fn fill(db: &std::path::Path, n: usize) {
    let mut conn = rusqlite::Connection::open(db).expect("open");
    conn.busy_timeout(Duration::from_secs(30)).expect("busy");
    let columns: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('work_orders')")
        .expect("columns")
        .query_map([], |r| r.get(0))
        .expect("columns")
        .collect::<rusqlite::Result<_>>()
        .expect("columns");
    let sql = format!(
        "INSERT OR REPLACE INTO work_orders ({}) VALUES ({})",
        columns.join(", "),
        vec!["?"; columns.len()].join(", ")
    );
    let tx = conn.transaction().expect("tx");
    {
        let mut stmt = tx.prepare(&sql).expect("prepare");
        for i in 0..n {
            let values: Vec<rusqlite::types::Value> = columns
                .iter()
                .map(|c| match c.as_str() {
                    "id" => rusqlite::types::Value::Text(format!("bench-wo-{i:08}")),
                    "priority" => rusqlite::types::Value::Integer(((i / 5) % 5) as i64 + 1),
                    "status" => rusqlite::types::Value::Text(STATUSES[i % 5].to_owned()),
                    "_fs_version" => rusqlite::types::Value::Integer(1),
                    other => rusqlite::types::Value::Text(format!("{other} {i}")),
                })
                .collect();
            stmt.execute(rusqlite::params_from_iter(values))
                .expect("insert");
        }
    }
    tx.commit().expect("commit");
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}

async fn run() {
    let rows = env_usize("FIELDSYNC_LOCAL_ROWS", 1_000_000);
    let writes = env_usize("FIELDSYNC_LOCAL_WRITES", 500).max(1);
    let repeats = 200;
    let dir = tempfile::tempdir().expect("tempdir");
    let (_server, api) = server::start(&dir.path().join("server"), &[], None).await;
    let get = reqwest::Method::GET;
    let post = reqwest::Method::POST;
    // The default profile, with a local index on the work orders' status
    // and priority, published for the benchmark's technician.
    let profiles = api.call(get, "/v1/admin/profiles", ADMIN, None).await;
    let mut profile = profiles[0]["profile"].clone();
    profile["name"] = json!("bench-indexed");
    for t in profile["tables"].as_array_mut().expect("tables") {
        if t["name"] == "work_orders" {
            t["indexes"] = json!([{"columns": ["status", "priority"]}]);
        }
    }
    api.call(
        reqwest::Method::PUT,
        "/v1/admin/profiles/bench-indexed",
        ADMIN,
        Some(profile),
    )
    .await;
    let user = api.call(
        post.clone(),
        "/v1/admin/users",
        ADMIN,
        Some(json!({"id": "bench-tech", "name": "Bench", "role": "technician", "profile": "bench-indexed"})),
    )
    .await;
    let token = user["token"].as_str().expect("token").to_owned();
    api.call(
        post,
        "/v1/admin/seed",
        ADMIN,
        Some(json!({"technicians": ["bench-tech"], "work_orders": 20, "seed": 42})),
    )
    .await;
    let db = dir.path().join("device.db");
    let engine = Engine::open(EngineConfig::new(&db, &api.url, &token)).expect("open");
    engine.sync().await.expect("sync");
    let started = Instant::now();
    fill(&db, rows);
    eprintln!(
        "filled {rows} work orders in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // ---- query ---------------------------------------------------------
    let query = Query {
        table: "work_orders".into(),
        filter: Some(Filter::Eq {
            column: "status".into(),
            value: Value::Text("scheduled".into()),
        }),
        order: vec![OrderBy {
            column: "priority".into(),
            descending: false,
        }],
        limit: Some(100),
        offset: 0,
    };
    let plan = engine.query_plan(&query).expect("plan").join("; ");
    let got = engine.query(&query).expect("query");
    assert_eq!(
        got.len(),
        100.min(rows / 5),
        "the query returns its 100 rows"
    );
    let started = Instant::now();
    for _ in 0..repeats {
        std::hint::black_box(engine.query(&query).expect("query"));
    }
    let engine_secs = started.elapsed().as_secs_f64() / repeats as f64;
    let raw =
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open raw");
    let columns: Vec<String> = raw
        .prepare("SELECT name FROM pragma_table_info('work_orders')")
        .expect("columns")
        .query_map([], |r| r.get(0))
        .expect("columns")
        .collect::<rusqlite::Result<_>>()
        .expect("columns");
    let sql = format!(
        "SELECT {} FROM work_orders WHERE status = ?1 ORDER BY priority, id LIMIT 100",
        columns.join(", ")
    );
    let started = Instant::now();
    for _ in 0..repeats {
        let mut stmt = raw.prepare_cached(&sql).expect("prepare");
        let mut rows_out = stmt.query(["scheduled"]).expect("query");
        let mut n = 0;
        while let Some(row) = rows_out.next().expect("row") {
            for i in 0..columns.len() {
                std::hint::black_box(row.get::<_, rusqlite::types::Value>(i).expect("value"));
            }
            n += 1;
        }
        assert_eq!(n, got.len());
    }
    let raw_secs = started.elapsed().as_secs_f64() / repeats as f64;

    // ---- observers -------------------------------------------------------
    let edit = |round: &str, i: usize| {
        engine
            .update(
                "work_orders",
                &format!("bench-wo-{:08}", (i * 7919) % rows),
                BTreeMap::from([("summary".into(), Value::Text(format!("{round} {i}")))]),
            )
            .expect("edit");
    };
    let started = Instant::now();
    for i in 0..writes {
        edit("plain", i);
    }
    let plain_secs = started.elapsed().as_secs_f64() / writes as f64;
    // Ten different queries (five statuses, both orders), as ten screens
    // of an app would observe: none shares another's run.
    let handles: Vec<_> = (0..10)
        .map(|i| {
            let mut q = query.clone();
            q.filter = Some(Filter::Eq {
                column: "status".into(),
                value: Value::Text(STATUSES[i % 5].into()),
            });
            q.order[0].descending = i >= 5;
            engine.observe(q, Arc::new(Discard)).expect("observe")
        })
        .collect();
    let started = Instant::now();
    for i in 0..writes {
        edit("observed", i);
    }
    let observed_secs = started.elapsed().as_secs_f64() / writes as f64;
    drop(handles);

    println!("fieldsync local query benchmark: {rows} work orders on the device");
    println!("plan: {plan}");
    println!();
    println!("| figure | value | ratio |");
    println!("|---|---|---|");
    println!(
        "| **limit**: the same SQL run raw (rusqlite, 100 rows read) | {:.3} ms | |",
        raw_secs * 1e3
    );
    println!(
        "| query: status = 'scheduled' ordered by priority, 100 rows, engine | {:.3} ms | {:.2}x the raw SQL |",
        engine_secs * 1e3,
        engine_secs / raw_secs
    );
    println!(
        "| a local edit, no observer ({writes} edits, each durable) | {:.3} ms | |",
        plain_secs * 1e3
    );
    println!(
        "| a local edit with ten observers (ten such queries) | {:.3} ms | {:.2}x no observer |",
        observed_secs * 1e3,
        observed_secs / plain_secs
    );
}
