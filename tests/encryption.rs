//! Encryption at rest of the device database: a real `fieldsync server`
//! process on loopback, engines on real SQLCipher files, and plain SQLite
//! opens and byte scans of the files to check what a lost phone would give
//! away.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::*;
use fieldsync_core::{DatabaseKey, Engine, EngineConfig, ErrorKind, Value, rekey_database};
use serde_json::json;

/// Text the dispatcher writes on the server: the device downloads it.
const SERVER_MARKER: &str = "Gate code QZXJ-4711, ring Mrs Okonkwo-Larsen";
/// Text the technician writes on the device: the device uploads it.
const DEVICE_MARKER: &str = "Replaced valve VX-99812 at 17 Birchwood Lane";

fn key(byte: u8) -> DatabaseKey {
    DatabaseKey::from_bytes([byte; 32])
}

fn open(
    path: &Path,
    url: &str,
    token: &str,
    key: Option<DatabaseKey>,
) -> fieldsync_core::Result<Arc<Engine>> {
    let mut config = EngineConfig::new(path, url, token);
    config.encryption_key = key;
    Engine::open(config)
}

/// The database file and the files SQLite keeps beside it (WAL, shared
/// memory, journal), each with its bytes.
fn files(db: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let name = db.file_name().and_then(|n| n.to_str()).expect("name");
    let dir = db.parent().expect("dir");
    std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(name))
        })
        .map(|p| {
            let bytes = std::fs::read(&p).expect("read");
            (p, bytes)
        })
        .collect()
}

/// Asserts that the files of a database are what they were, naming the
/// ones that changed (not their bytes): the database and its WAL byte for
/// byte; the shared-memory index (`-shm`, which SQLite rebuilds from the WAL
/// and which holds no data) only in that it is still there.
fn assert_unchanged(before: &BTreeMap<PathBuf, Vec<u8>>, db: &Path, what: &str) {
    let now = files(db);
    let names = |m: &BTreeMap<PathBuf, Vec<u8>>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        names(&now),
        names(before),
        "{what}: the files are not the same"
    );
    for (path, bytes) in &now {
        if path.to_string_lossy().ends_with("-shm") {
            continue;
        }
        let old = &before[path];
        let first = bytes.iter().zip(old.iter()).position(|(a, b)| a != b);
        assert!(
            bytes == old,
            "{what}: {} changed ({} bytes, was {}; first difference at {first:?})",
            path.display(),
            bytes.len(),
            old.len()
        );
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// A plain SQLite open (no key) reading the schema.
fn plain_read(db: &Path) -> rusqlite::Result<i64> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
}

fn text(record: &fieldsync_core::Record, column: &str) -> String {
    match &record.fields[column] {
        Value::Text(s) => s.clone(),
        other => panic!("{column} is {other:?}"),
    }
}

fn notes(s: &str) -> BTreeMap<String, Value> {
    BTreeMap::from([("notes".to_owned(), Value::Text(s.to_owned()))])
}

/// A server with a technician whose bookings hold the server's marker.
async fn server_with_marker() -> (Server, String, String) {
    let server = Server::start().await;
    let tech = server.wide_technician("tech-a").await;
    let dispatcher = server.user("disp", "dispatcher").await;
    server.seed(&["tech-a"], 20).await;
    let (s, v) = server
        .call(
            "PUT",
            "/v1/records/bookings/bk-0000001",
            Some(&dispatcher),
            Some(json!({"data": {"notes": SERVER_MARKER}})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    (server, tech, dispatcher)
}

/// A full sync (download, local edit, upload) on an encrypted database;
/// neither the downloaded nor the uploaded text is anywhere in the files,
/// WAL included, and a plain SQLite open cannot read them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_sync_on_an_encrypted_database_leaves_no_plaintext() {
    let (server, tech, dispatcher) = server_with_marker().await;
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("device.db");

    let engine = open(&db, &server.url, &tech, Some(key(7))).expect("open");
    let report = engine.sync().await.expect("first sync");
    assert!(
        report.tables.iter().any(|t| t.rows_upserted > 0),
        "{report:?}"
    );
    assert_eq!(
        text(&engine.get("bookings", "bk-0000001").expect("row"), "notes"),
        SERVER_MARKER
    );
    engine
        .update("bookings", "bk-0000002", notes(DEVICE_MARKER))
        .expect("local edit");
    assert_eq!(engine.pending_uploads().expect("pending"), 1);
    let report = engine.sync().await.expect("second sync");
    assert_eq!(report.uploaded, 1, "{report:?}");
    assert_eq!(engine.pending_uploads().expect("pending"), 0);
    let on_server = server.rows(&dispatcher, "bookings").await;
    assert_eq!(on_server["bk-0000002"].1["notes"], DEVICE_MARKER);

    // While the engine is open (the WAL holds the last commits) and after.
    let no_plaintext = |moment: &str| {
        let now = files(&db);
        assert!(now.contains_key(&db), "{moment}: {:?}", now.keys());
        for (path, bytes) in &now {
            for marker in [SERVER_MARKER, DEVICE_MARKER, "bk-0000001", "CREATE TABLE"] {
                assert!(
                    !contains(bytes, marker),
                    "{moment}: {} holds '{marker}' in plain text",
                    path.display()
                );
            }
        }
        assert!(
            !now[&db].starts_with(b"SQLite format 3\0"),
            "{moment}: a plain SQLite header"
        );
        let err = plain_read(&db).expect_err("a plain open reads an encrypted database");
        assert_eq!(
            err.sqlite_error_code(),
            Some(rusqlite::ErrorCode::NotADatabase),
            "{moment}: {err}"
        );
    };
    no_plaintext("open");
    drop(engine);
    no_plaintext("closed");

    // The same key opens it again, everything there.
    let engine = open(&db, &server.url, &tech, Some(key(7))).expect("reopen");
    assert_eq!(
        text(&engine.get("bookings", "bk-0000002").expect("row"), "notes"),
        DEVICE_MARKER
    );
    let report = engine.sync().await.expect("sync after reopen");
    assert_eq!(report.uploaded, 0);
}

/// A wrong key, no key, and a key for a plain database: each refused with
/// `WrongKey`, and not a byte of the files changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_is_refused_and_the_file_is_unchanged() {
    let (server, tech, _) = server_with_marker().await;
    let dir = tempfile::tempdir().expect("dir");
    let encrypted = dir.path().join("encrypted.db");
    let plain = dir.path().join("plain.db");
    for (db, k) in [(&encrypted, Some(key(1))), (&plain, None)] {
        let engine = open(db, &server.url, &tech, k).expect("open");
        engine.sync().await.expect("sync");
        engine
            .update("bookings", "bk-0000002", notes(DEVICE_MARKER))
            .expect("local edit");
    }
    let before = (files(&encrypted), files(&plain));
    // The scan finds plain text where there is some.
    assert!(before.1.values().any(|b| contains(b, DEVICE_MARKER)));

    for (db, k, says) in [
        (&encrypted, Some(key(2)), "wrong"),
        (&encrypted, None, "encrypted"),
        (&plain, Some(key(1)), "not encrypted"),
    ] {
        let err = open(db, &server.url, &tech, k)
            .map(|_| ())
            .expect_err("opened with the wrong key");
        assert_eq!(err.kind(), ErrorKind::WrongKey, "{err}");
        assert!(err.to_string().contains(says), "{err}");
    }
    assert_unchanged(&before.0, &encrypted, "the encrypted database");
    assert_unchanged(&before.1, &plain, "the plain database");

    // The right keys open both, the pending change there.
    for (db, k) in [(&encrypted, Some(key(1))), (&plain, None)] {
        let engine = open(db, &server.url, &tech, k).expect("open with the right key");
        assert_eq!(engine.pending_uploads().expect("pending"), 1);
        assert_eq!(
            text(&engine.get("bookings", "bk-0000002").expect("row"), "notes"),
            DEVICE_MARKER
        );
    }

    // The headless device says the same: kind wrong_key, exit code 9.
    let key_file = dir.path().join("wrong.key");
    std::fs::write(&key_file, "02".repeat(32)).expect("key file");
    let before = files(&encrypted);
    let device = Device::new(encrypted.clone(), &server.url, &tech);
    let out = device
        .run(&["--key-file", key_file.to_str().expect("utf-8"), "status"])
        .await;
    assert_eq!(out.code, 10, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(out.json["error"]["kind"], "wrong_key", "{}", out.stdout);
    assert_unchanged(&before, &encrypted, "the encrypted database, from the CLI");
}

/// Plain to encrypted, key to key, encrypted to plain: each keeps the rows
/// and the pending uploads, each leaves the old key refused, and the
/// change still uploads at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rekey_in_each_direction_keeps_data_and_pending_uploads() {
    let (server, tech, dispatcher) = server_with_marker().await;
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("device.db");
    let rows = {
        let engine = open(&db, &server.url, &tech, None).expect("open");
        engine.sync().await.expect("sync");
        engine
            .update("bookings", "bk-0000002", notes(DEVICE_MARKER))
            .expect("local edit");
        // An open database is refused, and stays as it was.
        let err = rekey_database(&db, None, Some(&key(1))).expect_err("rekeyed while open");
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
        engine.list("bookings", None, 10_000).expect("list").len()
    };
    assert!(rows > 1);

    let steps = [
        (None, Some(key(1))),
        (Some(key(1)), Some(key(2))),
        (Some(key(2)), None),
    ];
    for (from, to) in steps {
        // A wrong current key is refused and changes nothing.
        let before = files(&db);
        let err = rekey_database(&db, Some(&key(9)), to.as_ref()).expect_err("wrong current key");
        assert_eq!(err.kind(), ErrorKind::WrongKey, "{err}");
        assert_unchanged(&before, &db, "a refused rekey");

        rekey_database(&db, from.as_ref(), to.as_ref()).expect("rekey");
        let name = |k: &Option<DatabaseKey>| if k.is_some() { "encrypted" } else { "plain" };
        let step = format!("{} to {}", name(&from), name(&to));
        let err = open(&db, &server.url, &tech, from.clone())
            .map(|_| ())
            .expect_err("the old key still opens it");
        assert_eq!(err.kind(), ErrorKind::WrongKey, "{step}: {err}");
        assert_eq!(
            plain_read(&db).is_ok(),
            to.is_none(),
            "{step}: a plain open"
        );
        if to.is_some() {
            for (path, bytes) in files(&db) {
                assert!(
                    !contains(&bytes, DEVICE_MARKER),
                    "{step}: {}",
                    path.display()
                );
            }
        }
        let engine = open(&db, &server.url, &tech, to.clone()).expect("open with the new key");
        assert_eq!(engine.pending_uploads().expect("pending"), 1, "{step}");
        assert_eq!(
            engine.list("bookings", None, 10_000).expect("list").len(),
            rows,
            "{step}"
        );
        assert_eq!(
            text(&engine.get("bookings", "bk-0000002").expect("row"), "notes"),
            DEVICE_MARKER,
            "{step}"
        );
    }
    // Plain again: the bytes are readable, and the pending change uploads.
    assert!(files(&db).values().any(|b| contains(b, DEVICE_MARKER)));
    let engine = open(&db, &server.url, &tech, None).expect("open");
    let report = engine.sync().await.expect("sync");
    assert_eq!(report.uploaded, 1, "{report:?}");
    let on_server = server.rows(&dispatcher, "bookings").await;
    assert_eq!(on_server["bk-0000002"].1["notes"], DEVICE_MARKER);
}
