//! Switching a connection's database to WAL, safe against other processes
//! opening the same file at the same moment.
//!
//! `PRAGMA journal_mode = WAL` on a connection that has not read the file
//! yet takes a read lock and then, on a file still in rollback mode (a
//! fresh one), upgrades it to write the WAL mark into the header. SQLite
//! does not call the busy handler for that upgrade: when a second process
//! holds a read lock of the same fresh file at that instant, the pragma
//! fails at once with "database is locked", whatever the busy timeout. A
//! device's sync and its `status`, or two server instances started
//! together on a new file, met exactly that. Here the pragma is tried
//! again until the connection's own patience runs out.

use std::time::{Duration, Instant};

use rusqlite::{Connection, ErrorCode};

/// How long [`enable`] keeps trying by default (the busy timeout the
/// device and the server give their connections).
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Puts the database of `conn` in WAL mode, retrying while another
/// connection holds the lock the switch needs, for at most `patience`.
pub fn enable(conn: &Connection, patience: Duration) -> rusqlite::Result<()> {
    let deadline = Instant::now() + patience;
    let mut pause = Duration::from_millis(1);
    loop {
        match conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0)) {
            Ok(_) => return Ok(()),
            Err(rusqlite::Error::SqliteFailure(f, _))
                if f.code == ErrorCode::DatabaseBusy && Instant::now() < deadline =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};

    use super::*;

    /// Connections of several threads open one fresh file at the same
    /// instant, each switching it to WAL and creating a table, as separate
    /// processes starting together do (SQLite's locks behave the same
    /// between two connections of one process).
    #[test]
    fn connections_opening_one_fresh_file_together_all_succeed() {
        let dir = tempfile::tempdir().expect("dir");
        let mut opened = 0;
        for round in 0..40 {
            let path = dir.path().join(format!("fresh-{round}.db"));
            let start = Arc::new(Barrier::new(4));
            let threads: Vec<_> = (0..4)
                .map(|i| {
                    let path = path.clone();
                    let start = Arc::clone(&start);
                    std::thread::spawn(move || -> rusqlite::Result<()> {
                        let conn = Connection::open(&path)?;
                        conn.busy_timeout(PATIENCE)?;
                        start.wait();
                        enable(&conn, PATIENCE)?;
                        conn.execute_batch(&format!(
                            "BEGIN IMMEDIATE; CREATE TABLE IF NOT EXISTS t{i} (x); COMMIT;"
                        ))
                    })
                })
                .collect();
            for t in threads {
                t.join().expect("thread").expect("open, WAL and create");
                opened += 1;
            }
            let conn = Connection::open(&path).expect("open");
            let mode: String = conn
                .query_row("PRAGMA journal_mode", [], |r| r.get(0))
                .expect("mode");
            assert_eq!(mode, "wal");
        }
        assert_eq!(opened, 160);
    }
}
