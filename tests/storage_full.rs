//! Disk full on the device: a real `fieldsync device` on a small tmpfs. A
//! local write and a download on a full disk get a typed storage error (exit
//! code 8), lose nothing already committed, and everything recovers when
//! space returns. Needs root to mount the tmpfs (CI runs as root); elsewhere
//! the test says so and returns.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use common::*;
use serde_json::json;

struct Mount(PathBuf);

impl Mount {
    fn new(dir: &Path, size: &str) -> Option<Mount> {
        std::fs::create_dir_all(dir).ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then(|| Mount(dir.to_owned()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("filler");
    let chunk = vec![0u8; 16 * 1024];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.flush();
    path
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_during_write_and_pull_loses_nothing_and_recovers() {
    if !is_root() {
        eprintln!(
            "storage_full: not root, cannot mount a small tmpfs; this test runs in CI as root"
        );
        return;
    }
    let server = Server::start().await;
    let tech = server.wide_technician("tech-1").await;
    let dispatcher = server.user("disp", "dispatcher").await;
    server.seed(&["tech-1"], 300).await;
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("device-disk");
    let _mount = Mount::new(&mnt, "16m").expect("mount a tmpfs (root)");
    let mut device = Device::new(mnt.join("d.db"), &server.url, &tech);
    device.page_size = 100;
    device.ok(&["sync"]).await;
    device
        .ok(&[
            "put",
            "bookings",
            "bk-0000000",
            "--set",
            "notes=written before the disk filled",
        ])
        .await;
    assert_eq!(device.ok(&["status"]).await["pending_uploads"], 1);

    // The disk fills up (another app's download, photos...).
    let filler = fill(&mnt);

    // A local write: typed storage error, nothing lost.
    let fields = dir.path().join("fields.json");
    std::fs::write(&fields, json!({"notes": "n".repeat(200_000)}).to_string()).unwrap();
    let out = device
        .run(&[
            "put",
            "bookings",
            "bk-0000001",
            "--data",
            &format!("@{}", fields.display()),
        ])
        .await;
    assert_eq!(out.code, 8, "storage error: {out:?}");
    assert_eq!(out.json["error"]["kind"], "storage");
    let status = device.ok(&["status"]).await;
    assert_eq!(
        status["pending_uploads"], 1,
        "the earlier change is still queued"
    );
    assert_eq!(
        device.ok(&["get", "bookings", "bk-0000000"]).await["fields"]["notes"],
        "written before the disk filled"
    );

    // A download on a full disk: many server changes, then sync.
    for i in 0..300 {
        server
            .call(
                "PUT",
                &format!("/v1/records/work_orders/wo-{i:07}"),
                Some(&dispatcher),
                Some(json!({"data": {"instructions": "x".repeat(8000)}})),
            )
            .await;
    }
    let cursors_before = {
        let c = rusqlite::Connection::open(&device.db).unwrap();
        let v: i64 = c
            .query_row(
                "SELECT COUNT(*) FROM work_orders WHERE length(instructions) = 8000",
                [],
                |r| r.get(0),
            )
            .unwrap();
        v
    };
    assert_eq!(cursors_before, 0);
    let out = device.run(&["sync"]).await;
    assert_eq!(out.code, 8, "storage error during the sync: {out:?}");
    let conn = rusqlite::Connection::open(&device.db).unwrap();
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    drop(conn);
    assert_eq!(
        device.ok(&["get", "bookings", "bk-0000000"]).await["fields"]["notes"],
        "written before the disk filled"
    );

    // Space returns: everything recovers and converges.
    std::fs::remove_file(&filler).unwrap();
    device.ok(&["sync"]).await;
    assert_eq!(device.ok(&["status"]).await["pending_uploads"], 0);
    let (_, row) = server
        .call(
            "GET",
            "/v1/records/bookings/bk-0000000",
            Some(&dispatcher),
            None,
        )
        .await;
    assert_eq!(row["row"]["notes"], "written before the disk filled");
    let mut fresh = Device::new(dir.path().join("fresh.db"), &server.url, &tech);
    fresh.page_size = 1000;
    fresh.ok(&["sync"]).await;
    for table in ["bookings", "work_orders", "work_order_service_tasks"] {
        assert_eq!(device.local_rows(table), fresh.local_rows(table), "{table}");
    }
}
