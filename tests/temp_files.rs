//! Where SQLite's temporary files go. A sort or a key set that outgrows the
//! page cache spills to a temporary file; SQLite's default places (`TMPDIR`,
//! `/var/tmp`, `/tmp`, the working directory) do not exist for an Android
//! app, so the store points them beside its database. This file is its own
//! test binary: the setting is per process and taken from the first store
//! opened, which must be this test's.

#![cfg(target_os = "linux")]

use fieldsync_core::store::Store;

/// The temporary files this process holds open (SQLite unlinks them as it
/// opens them, so they show only among the open descriptors).
fn open_temp_files() -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").expect("fds").flatten() {
        if let Ok(target) = std::fs::read_link(entry.path()) {
            let target = target.to_string_lossy().into_owned();
            if target.contains("etilqs_") {
                out.push(target);
            }
        }
    }
    out
}

#[test]
fn a_sort_larger_than_the_cache_spills_beside_the_database() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store_dir = dir.path().join("device");
    let _store = Store::open(&store_dir.join("fieldsync.db")).expect("store");

    // Any connection of this process's SQLite that keeps temporary data in
    // files (as the store's plain connections do; SQLCipher's build keeps
    // it in memory by default) now spills there: a tiny page cache and a
    // sort of about 10 MB without an index.
    let other = tempfile::tempdir().expect("tempdir");
    let conn = rusqlite::Connection::open(other.path().join("scratch.db")).expect("open");
    conn.execute_batch(
        "PRAGMA temp_store = FILE;
         PRAGMA cache_size = 10;
         CREATE TABLE t (k TEXT, v TEXT);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100000)
         INSERT INTO t SELECT hex(randomblob(16)), hex(randomblob(32)) FROM n;",
    )
    .expect("fill");
    let mut stmt = conn
        .prepare("SELECT k, v FROM t ORDER BY k")
        .expect("prepare");
    let mut rows = stmt.query([]).expect("query");
    rows.next().expect("step").expect("a row");
    let spilled = open_temp_files();
    assert!(!spilled.is_empty(), "the sort did not spill to a file");
    let expected = std::fs::canonicalize(&store_dir).expect("dir");
    for f in &spilled {
        assert!(
            f.starts_with(&*expected.to_string_lossy()),
            "temporary file {f} is not beside the database in {}",
            expected.display()
        );
    }
}
