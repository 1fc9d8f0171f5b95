//! Real-process crash tests: `kill -9` of a `fieldsync device` process at
//! random points during at least 100 syncs, until 30 were killed mid-way
//! (first downloads and incremental syncs, uploads and downloads), each
//! followed by a reopen. At the end the device
//! converges to the server's rows, every acknowledged local insert is on the
//! server, and no upload was applied twice.

mod common;

use std::time::Duration;

use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_points_during_100_syncs_then_converge() {
    let server = Server::start_with(&["--pull-delay-ms", "3"]).await;
    let tech = server.wide_technician("tech-1").await;
    let dispatcher = server.user("disp", "dispatcher").await;
    server.seed(&["tech-1", "tech-2"], 150).await;
    let dir = tempfile::tempdir().unwrap();
    let mut device = Device::new(dir.path().join("d.db"), &server.url, &tech);
    device.page_size = 40;
    let seed: u64 = std::env::var("FIELDSYNC_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261129);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut inserted = Vec::new();
    let mut killed = 0;
    let mut completed = 0;
    let mut fresh_starts = 0;

    // How many syncs a kill lands in depends on how fast this machine
    // syncs: rounds go on past 100 until 30 were killed mid-way.
    let mut round = 0;
    while round < 100 || killed < 30 {
        assert!(
            round < 400,
            "only {killed} of {round} syncs were killed mid-way"
        );
        // Every so often the app is reinstalled: a first download from zero.
        if round % 25 == 0 && round > 0 && device.ok(&["status"]).await["pending_uploads"] == 0 {
            device.ok(&["reset"]).await;
            fresh_starts += 1;
        }
        // Local work for the upload side.
        if device.run(&["status"]).await.json["profile_version"].is_number() {
            for _ in 0..rng.random_range(0..3) {
                let id = format!("crash-task-{round}-{}", rng.random_range(0..1_000_000));
                let out = device
                    .run(&[
                        "put",
                        "work_order_service_tasks",
                        &id,
                        "--set",
                        &format!("task_name=round {round}"),
                        "--set",
                        "work_order_id=wo-0000001",
                    ])
                    .await;
                if out.code == 0 {
                    inserted.push(id);
                }
            }
            let b = format!("bk-{:07}", 2 * rng.random_range(0..75));
            device
                .run(&[
                    "put",
                    "bookings",
                    &b,
                    "--set",
                    &format!("notes=round {round}"),
                ])
                .await;
        }
        // The dispatcher changes things on the server meanwhile.
        let wo = format!("wo-{:07}", rng.random_range(0..150));
        server
            .call(
                "PUT",
                &format!("/v1/records/work_orders/{wo}"),
                Some(&dispatcher),
                Some(json!({"data": {"summary": format!("round {round}")}})),
            )
            .await;
        // A sync, killed after a random delay (or allowed to finish).
        let mut child = device.command(&["sync"]).spawn().expect("spawn");
        let delay = rng.random_range(0..200);
        tokio::select! {
            status = child.wait() => {
                let _ = status;
                completed += 1;
            }
            _ = tokio::time::sleep(Duration::from_millis(delay)) => {
                child.start_kill().expect("kill -9");
                let _ = child.wait().await;
                killed += 1;
            }
        }
        let conn =
            rusqlite::Connection::open(&device.db).expect("the database opens after the kill");
        let integrity: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(integrity, "ok", "round {round} (seed {seed})");
        round += 1;
    }
    println!(
        "crash test: {killed} syncs killed, {completed} completed, {fresh_starts} fresh starts, {} local inserts",
        inserted.len()
    );
    assert!(killed >= 30, "most syncs were killed mid-way: {killed}");

    // Converge: the device settles and matches a fresh device of the same user.
    device.ok(&["sync"]).await;
    device.ok(&["sync"]).await;
    assert_eq!(device.ok(&["status"]).await["pending_uploads"], 0);
    let mut fresh = Device::new(dir.path().join("fresh.db"), &server.url, &tech);
    fresh.page_size = 500;
    fresh.ok(&["sync"]).await;
    for table in [
        "bookings",
        "work_orders",
        "work_order_service_tasks",
        "work_order_incidents",
        "accounts",
    ] {
        assert_eq!(
            device.local_rows(table),
            fresh.local_rows(table),
            "{table} (seed {seed})"
        );
    }
    // Every acknowledged insert reached the server.
    let on_server = server.rows(&dispatcher, "work_order_service_tasks").await;
    for id in &inserted {
        assert!(
            on_server.contains_key(id),
            "acknowledged insert {id} is missing on the server (seed {seed})"
        );
    }
    // Nothing was applied twice.
    let db = rusqlite::Connection::open_with_flags(
        server.data_dir.join("fieldsync.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let twice: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM (SELECT idempotency_key FROM _fs_change_log WHERE idempotency_key IS NOT NULL GROUP BY idempotency_key HAVING COUNT(*) > 1)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(twice, 0, "no upload applied twice");
}
