use std::sync::atomic::Ordering;

use crate::store::Store;

/// Pages of the main database file, as SQLite last synced it.
fn db_file_pages(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) / 4096
}

#[test]
fn the_wal_is_copied_into_the_database_file_off_the_writer() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("d.db");
    let store = Store::open(&path).expect("open");
    let before = db_file_pages(&path);
    // About 2,500 pages of WAL in commits of 100 rows, none of which
    // checkpoints itself (under HARD_FRAMES).
    let text = "x".repeat(1000);
    for batch in 0..100 {
        store
            .with_writer(|c| {
                let tx = c.transaction()?;
                if batch == 0 {
                    tx.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")?;
                }
                for _ in 0..100 {
                    tx.execute("INSERT INTO t (v) VALUES (?1)", [&text])?;
                }
                tx.commit()?;
                Ok(())
            })
            .expect("write");
    }
    // The checkpoint thread copies the WAL into the file meanwhile.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while db_file_pages(&path) < before + 1000 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        db_file_pages(&path) >= before + 1000,
        "the database file holds {} pages",
        db_file_pages(&path)
    );
    // By the thread: no commit checkpointed itself.
    let counts = store._checkpoints.counts();
    assert!(counts.background.load(Ordering::Relaxed) >= 1);
    assert_eq!(counts.inline.load(Ordering::Relaxed), 0);
    // And the rows are all there, read through the store.
    let n: i64 = store
        .with_reader(|c| Ok(c.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))?))
        .expect("count");
    assert_eq!(n, 10_000);
}

#[test]
fn a_run_of_small_commits_asks_once_per_thousand_frames() {
    let dir = tempfile::tempdir().expect("dir");
    let store = Store::open(&dir.path().join("d.db")).expect("open");
    store
        .with_writer(|c| {
            // Without an fsync per commit: the test counts checkpoints.
            c.pragma_update(None, "synchronous", "OFF")?;
            c.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")?;
            Ok(())
        })
        .expect("setup");
    // 3,000 commits of one row (a frame or two each), as local edits
    // come: SQLite's own checkpoint ran about once per 1,000 frames.
    for i in 0..3000 {
        store
            .with_writer(|c| {
                c.execute("INSERT INTO t (v) VALUES (?1)", [i.to_string()])?;
                Ok(())
            })
            .expect("write");
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    let counts = store._checkpoints.counts();
    let asked = counts.asked.load(Ordering::Relaxed);
    assert!(
        (1..=8).contains(&asked),
        "{asked} requests for 3,000 commits"
    );
    assert!(counts.background.load(Ordering::Relaxed) >= 1);
    assert_eq!(counts.inline.load(Ordering::Relaxed), 0);
}
