//! The progress of a first sync, as every observer sees it: the status's
//! progress, the table events, the notifications and the headless device's
//! `watch` lines. The server runs in-process on 127.0.0.1 with an injected
//! `ManualClock`; the device is the core `Engine` (or the `fieldsync
//! device` process) over real HTTP and a real SQLite file.

mod inproc;
mod testdb;

use std::sync::{Arc, Mutex};

use fieldsync_core::SyncEvent;
use fieldsync_core::notifications::NotificationPhase;
use fieldsync_core::status::{EventListener, SyncProgress};
use fieldsync_core::time::parse_datetime;
use serde_json::{Value, json};

use inproc::Env;

impl Env {
    /// A technician whose profile selects whole tables (many rows in
    /// several tables).
    async fn wide_technician(&self, id: &str) -> String {
        let mut profile = self
            .admin("GET", "/v1/admin/profiles/field-service", None)
            .await["profile"]
            .clone();
        profile["name"] = json!("field-service-wide");
        for t in profile["tables"].as_array_mut().expect("tables") {
            if t["name"] != "bookings" {
                t["rules"] = json!([{"kind": "all"}]);
            }
        }
        self.admin(
            "PUT",
            "/v1/admin/profiles/field-service-wide",
            Some(profile),
        )
        .await;
        self.admin(
            "POST",
            "/v1/admin/users",
            Some(json!({"id": id, "name": id, "role": "technician",
                        "profile": "field-service-wide"})),
        )
        .await["token"]
            .as_str()
            .expect("token")
            .to_owned()
    }
}

/// Rows in the synced tables of the device's file, read on a connection of
/// its own (what another process would see).
fn rows_in_file(path: &std::path::Path, tables: &[String]) -> u64 {
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open the device file");
    tables
        .iter()
        .map(|t| {
            conn.query_row(&format!("SELECT COUNT(*) FROM \"{t}\""), [], |r| {
                r.get::<_, i64>(0)
            })
            .map_or(0, |n| n as u64)
        })
        .sum()
}

/// What one progress observation said, and what the file held then.
#[derive(Debug, Clone)]
struct Seen {
    source: &'static str,
    rows_done: u64,
    rows_total: Option<u64>,
    fraction: Option<f64>,
    in_file: u64,
}

struct Recorder {
    path: std::path::PathBuf,
    tables: Mutex<Vec<String>>,
    seen: Mutex<Vec<Seen>>,
    table_events: Mutex<Vec<(String, u64, Option<u64>)>>,
}

impl Recorder {
    fn note(
        &self,
        source: &'static str,
        p: Option<&SyncProgress>,
        n: Option<(u64, Option<u64>, Option<f64>)>,
    ) {
        let (rows_done, rows_total, fraction) = match (p, n) {
            (Some(p), _) => (p.rows_done, p.rows_total, p.fraction),
            (None, Some(n)) => n,
            (None, None) => return,
        };
        let tables = self.tables.lock().expect("tables").clone();
        let in_file = rows_in_file(&self.path, &tables);
        self.seen.lock().expect("seen").push(Seen {
            source,
            rows_done,
            rows_total,
            fraction,
            in_file,
        });
    }
}

impl EventListener for Recorder {
    fn on_event(&self, event: SyncEvent) {
        match &event {
            SyncEvent::TableProgress {
                table,
                rows_done,
                rows_total,
                ..
            } => {
                self.table_events.lock().expect("events").push((
                    table.clone(),
                    *rows_done,
                    *rows_total,
                ));
            }
            SyncEvent::Notification { notification: n }
                if n.phase == NotificationPhase::Progress =>
            {
                self.note(
                    "notification",
                    None,
                    Some((n.rows_done, n.rows_total, n.fraction)),
                );
            }
            _ => {}
        }
    }
}

impl fieldsync_core::status::StatusListener for Recorder {
    fn on_status(&self, status: fieldsync_core::status::SyncStatus) {
        self.note("status", status.progress.as_ref(), None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_sync_progress_never_goes_back_and_ends_exact() {
    let env = Env::start().await;
    env.admin(
        "POST",
        "/v1/admin/seed",
        Some(
            json!({"technicians": ["tech-a"], "work_orders": 1700, "seed": 7,
                    "now_ms": parse_datetime("2026-03-10T08:00:00Z")}),
        ),
    )
    .await;
    let token = env.wide_technician("tech-a").await;
    // Small pages: many pages per table, several tables at once.
    let (engine, path) = env.device_with_pages("d", &token, Some(96));
    let recorder = Arc::new(Recorder {
        path: path.clone(),
        tables: Mutex::new(Vec::new()),
        seen: Mutex::new(Vec::new()),
        table_events: Mutex::new(Vec::new()),
    });
    let _events = engine.add_event_listener(recorder.clone());
    let _status = engine.add_status_listener(recorder.clone());
    // The tables exist once the profile is installed; before that the
    // recorder counts nothing (and no progress is shown yet).
    let profile_tables = {
        let (status, body) = {
            let resp = env
                .http
                .get(format!("{}/v1/profile", env.url))
                .bearer_auth(&token)
                .send()
                .await
                .expect("profile");
            (
                resp.status().as_u16(),
                serde_json::from_str::<Value>(&resp.text().await.expect("body")).expect("json"),
            )
        };
        assert_eq!(status, 200, "{body}");
        body["profile"]["tables"]
            .as_array()
            .or_else(|| body["tables"].as_array())
            .expect("tables")
            .iter()
            .map(|t| t["name"].as_str().expect("name").to_owned())
            .collect::<Vec<_>>()
    };
    *recorder.tables.lock().expect("tables") = profile_tables.clone();

    let report = engine.sync().await.expect("first sync");
    let received: u64 = report
        .tables
        .iter()
        .map(|t| t.rows_upserted + t.rows_removed)
        .sum();
    let in_file = rows_in_file(&path, &profile_tables);
    assert!(
        received >= 10_000,
        "a first sync of 10k+ rows, got {received}"
    );
    assert_eq!(in_file, received, "every received row is in the file");
    let tables_pulled = report.tables.iter().filter(|t| t.pages > 1).count();
    assert!(
        tables_pulled >= 3,
        "several tables in several pages each: {report:?}"
    );

    let seen = recorder.seen.lock().expect("seen").clone();
    let progress: Vec<&Seen> = seen.iter().filter(|s| s.fraction.is_some()).collect();
    assert!(
        progress.len() > 50,
        "progress was observed {} times",
        progress.len()
    );
    // The total is exact from the first observation that has one, and the
    // same for status and notifications.
    for s in &seen {
        if let Some(total) = s.rows_total {
            assert_eq!(total, received, "the total at {s:?}");
        }
    }
    let mut last = 0.0f64;
    for s in &progress {
        let f = s.fraction.expect("fraction");
        assert!(
            f >= last,
            "the fraction went back from {last} to {f} at {s:?}"
        );
        assert!((0.0..=1.0).contains(&f));
        last = f;
        // Never more done than the file holds.
        assert!(
            s.rows_done <= s.in_file,
            "{s:?}: rows done before they are in the file"
        );
        if f >= 1.0 {
            assert!(
                s.in_file >= received,
                "done at {s:?} before every row is in the file"
            );
        }
        assert_eq!(
            f,
            s.rows_done as f64 / received as f64,
            "the fraction is rows done over the exact total at {s:?}"
        );
    }
    assert_eq!(last, 1.0, "the last progress says done");
    assert!(seen.iter().any(|s| s.source == "notification"));
    // The table events agree: per table, rows done grow to the table's
    // exact total, which never changes once known.
    let events = recorder.table_events.lock().expect("events").clone();
    for t in &report.tables {
        let mine: Vec<&(String, u64, Option<u64>)> =
            events.iter().filter(|e| e.0 == t.table).collect();
        let exact = t.rows_upserted + t.rows_removed;
        // The counts are asked beside the first pages: a table's pages
        // that came before them carry the server's estimate; every one
        // after has the exact total.
        let from = mine
            .iter()
            .position(|e| e.2 == Some(exact))
            .unwrap_or(mine.len());
        for e in &mine[from..] {
            assert_eq!(e.2, Some(exact), "{} total", t.table);
        }
        assert!(mine.windows(2).all(|w| w[0].1 <= w[1].1));
        if let Some(e) = mine.last() {
            assert_eq!(e.1, exact);
        }
    }
}

/// The headless device's `watch` prints the same progress: every status
/// line's fraction only grows, its total is the rows finally received,
/// and the notifications carry the same numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_watch_shows_the_same_progress() {
    let env = Env::start().await;
    env.admin(
        "POST",
        "/v1/admin/seed",
        Some(
            json!({"technicians": ["tech-a"], "work_orders": 300, "seed": 7,
                    "now_ms": parse_datetime("2026-03-10T08:00:00Z")}),
        ),
    )
    .await;
    let token = env.wide_technician("tech-a").await;
    let db = env.dir.path().join("cli.db");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_fieldsync"))
        .arg("device")
        .arg("--db")
        .arg(&db)
        .args([
            "--server",
            &env.url,
            "--token",
            &token,
            "--json",
            "--page-size",
            "64",
            "watch",
            "--once",
        ])
        .output()
        .await
        .expect("run the device");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let finished = lines.last().expect("lines");
    assert_eq!(finished["event"], "watch_finished", "{finished}");
    // The rows received: each table's last `table_progress` (the report's
    // removals also count rows the device's own clock, the wall clock of
    // this process, let go of after the download).
    let mut last_done = std::collections::BTreeMap::new();
    for l in &lines {
        if l["event"] == "table_progress" {
            last_done.insert(
                l["table"].as_str().expect("table").to_owned(),
                l["rows_done"].as_u64().expect("rows done"),
            );
        }
    }
    let received: u64 = last_done.values().sum();
    assert!(received > 1000, "{received}");
    let mut progress = Vec::new();
    for l in &lines {
        let p = match l["event"].as_str() {
            Some("status_changed") => &l["status"]["progress"],
            Some("notification") if l["notification"]["phase"] == "progress" => &l["notification"],
            _ => continue,
        };
        if p["fraction"].is_f64() {
            assert_eq!(p["rows_total"].as_u64(), Some(received), "{l}");
            progress.push(p["fraction"].as_f64().expect("fraction"));
        }
    }
    assert!(progress.len() > 20, "{} progress lines", progress.len());
    assert!(
        progress.windows(2).all(|w| w[0] <= w[1]),
        "the fraction went back: {progress:?}"
    );
    assert_eq!(progress.last(), Some(&1.0));
}
