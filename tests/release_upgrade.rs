//! A device database and a server data directory written by an earlier
//! release (`tests/fixtures/release-2026-12-07`) open with this one: the
//! device's schema is upgraded by its numbered migrations, its data and its
//! pending upload are kept, and the upload reaches the server.

mod common;

use std::path::Path;

use common::*;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/release-2026-12-07"
);

/// Writes the earlier release's database files from their dumps (SQL
/// text, as `sqlite3 .dump` writes it: the fixture stays readable and no
/// binary is tracked), and copies the rest of the fixture.
fn restore(into: &Path) {
    let fixture = Path::new(FIXTURE);
    for (dump, db) in [
        ("device.sql", into.join("device.db")),
        ("server.sql", into.join("server").join("fieldsync.db")),
    ] {
        let sql = std::fs::read_to_string(fixture.join(dump)).expect("dump");
        std::fs::create_dir_all(db.parent().expect("dir")).expect("mkdir");
        rusqlite::Connection::open(&db)
            .expect("create")
            .execute_batch(&sql)
            .expect("load the dump");
    }
    for name in ["token", "edited"] {
        std::fs::copy(fixture.join(name), into.join(name)).expect("copy");
    }
}

fn user_version(db: &Path) -> i64 {
    rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("open")
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("user_version")
}

#[tokio::test]
async fn a_device_database_of_the_previous_release_opens_upgrades_and_uploads() {
    let dir = tempfile::tempdir().expect("tempdir");
    restore(dir.path());
    let db = dir.path().join("device.db");
    assert_eq!(user_version(&db), 0, "the fixture predates the migrations");
    let token = std::fs::read_to_string(dir.path().join("token")).expect("token");
    let edited = std::fs::read_to_string(dir.path().join("edited")).expect("edited");

    // The earlier release's server data, which this release's server
    // migrates (a SQLite file: the suite is not in the PostgreSQL pass).
    let server = Server::start_in(&dir.path().join("server"), &[]).await;

    let device = Device::new(db.clone(), &server.url, token.trim());
    // Opened by this release: the data and the pending edit are there.
    let record = device.ok(&["get", "work_orders", edited.trim()]).await;
    assert_eq!(
        record["fields"]["summary"], "Edited before the upgrade",
        "{record}"
    );
    let status = device.ok(&["status"]).await;
    assert_eq!(status["pending_uploads"], 1, "{status}");
    assert_eq!(
        user_version(&db),
        fieldsync_core::store::SCHEMA_VERSION,
        "the open ran every migration"
    );

    // The edit made before the upgrade reaches the server. The technician
    // must still reach the work order when it arrives (a write outside the
    // writer's scope is refused): the fixture's booking was for its own
    // week, so a dispatcher books the technician on it for today, whatever
    // today is.
    let admin = server.user("dispatcher1", "dispatcher").await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let (status, body) = server
        .call(
            "PUT",
            "/v1/records/bookings/bk-after-upgrade",
            Some(&admin),
            Some(serde_json::json!({"data": {
                "name": "Booked after the upgrade",
                "work_order_id": edited.trim(),
                "resource_id": "tech1",
                "booking_status_id": "bs-scheduled",
                "status": "active",
                "start_time": fieldsync_core::time::format_datetime(now),
                "end_time": fieldsync_core::time::format_datetime(now + 3_600_000),
            }})),
        )
        .await;
    assert!(status == 200 || status == 201, "{status} {body}");
    device.ok(&["sync"]).await;
    let status = device.ok(&["status"]).await;
    assert_eq!(status["pending_uploads"], 0, "{status}");
    assert_eq!(status["recent_errors"], serde_json::json!([]), "{status}");
    let rows = server.rows(&admin, "work_orders").await;
    let (_, row) = rows
        .get(edited.trim())
        .expect("the work order is on the server");
    assert_eq!(row["summary"], "Edited before the upgrade", "{row}");
}
