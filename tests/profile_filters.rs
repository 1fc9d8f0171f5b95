//! End-to-end suite of the offline profile: the default Field Service
//! profile's removal rules (completed bookings, related rows, date windows
//! under a controlled clock), profile versions, validation errors and SQL in
//! filter values. The server runs in-process (`fieldsync_server::router`) on
//! a 127.0.0.1 listener with an injected `ManualClock`; the device is the
//! core `Engine` with the same clock, over real HTTP and real SQLite files.

mod inproc;
mod testdb;

use std::sync::Arc;

use fieldsync_core::time::format_datetime;
use fieldsync_core::{Engine, EngineConfig, Error, HttpTransport};
use serde_json::{Value, json};

use inproc::{ADMIN, Env};
const DAY: i64 = 86_400_000;

impl Env {
    async fn seed(&self, techs: &[&str], n: usize) {
        self.admin(
            "POST",
            "/v1/admin/seed",
            Some(json!({"technicians": techs, "work_orders": n, "seed": 5, "now_ms": self.clock_now()})),
        )
        .await;
    }

    /// Puts the work order `wo` and its incident `inc`, which no booking
    /// reaches yet.
    async fn work_order_with_incident(&self, disp: &str, wo: &str, inc: &str) {
        self.put(
            disp,
            "work_orders",
            wo,
            json!({"name": wo, "status": "scheduled"}),
        )
        .await;
        self.put(
            disp,
            "work_order_incidents",
            inc,
            json!({"work_order_id": wo}),
        )
        .await;
    }
}

fn txt(v: &fieldsync_core::Value) -> Option<&str> {
    match v {
        fieldsync_core::Value::Text(s) => Some(s),
        _ => None,
    }
}

fn has(engine: &Engine, table: &str, id: &str) -> bool {
    match engine.get(table, id) {
        Ok(_) => true,
        Err(Error::RecordNotFound { .. }) => false,
        Err(e) => panic!("get {table}/{id}: {e}"),
    }
}

/// The device holds exactly the work orders its bookings reach.
fn assert_work_orders_are_those_the_bookings_reach(device: &Engine) {
    let bookings = device.list("bookings", None, 10_000).expect("list");
    let mut reached: Vec<String> = bookings
        .iter()
        .filter_map(|b| txt(&b.fields["work_order_id"]).map(str::to_owned))
        .collect();
    reached.sort();
    reached.dedup();
    assert_eq!(ids(device, "work_orders"), reached);
}

fn ids(engine: &Engine, table: &str) -> Vec<String> {
    engine
        .list(table, None, 100_000)
        .expect("list")
        .into_iter()
        .map(|r| r.id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completed_booking_leaves_with_its_work_order_unless_still_related() {
    let env = Env::start().await;
    let tech = env.user("tech-a", "technician", None).await;
    let disp = env.user("disp", "dispatcher", None).await;
    env.seed(&["tech-a"], 30).await;
    let device = env.device("d", &tech);
    device.sync().await.expect("first sync");

    // The first ten bookings are active and inside the 7-day window.
    for k in 0..3 {
        assert!(has(&device, "bookings", &format!("bk-000000{k}")));
        assert!(has(&device, "work_orders", &format!("wo-000000{k}")));
        assert!(has(
            &device,
            "work_order_incidents",
            &format!("inc-000000{k}")
        ));
    }
    // Only work orders reached through my bookings are on the device.
    assert_work_orders_are_those_the_bookings_reach(&device);

    // A second booking of mine also refers to wo-0000001.
    let start = format_datetime(env.clock_now() + DAY);
    let end = format_datetime(env.clock_now() + DAY + 3_600_000);
    env.put(&disp, "bookings", "bk-extra", json!({"work_order_id": "wo-0000001", "resource_id": "tech-a", "status": "active", "start_time": start, "end_time": end})).await;
    device.sync().await.expect("sync");
    assert!(has(&device, "bookings", "bk-extra"));

    // Both bookings of wo-0000000 and wo-0000001 are completed on the server.
    env.put(
        &disp,
        "bookings",
        "bk-0000000",
        json!({"status": "completed", "booking_status_id": "bs-completed"}),
    )
    .await;
    env.put(
        &disp,
        "bookings",
        "bk-0000001",
        json!({"status": "completed", "booking_status_id": "bs-completed"}),
    )
    .await;
    let report = device.sync().await.expect("sync");
    // Record Not Found for the booking, its work order and its children.
    for (table, id) in [
        ("bookings", "bk-0000000"),
        ("work_orders", "wo-0000000"),
        ("work_order_incidents", "inc-0000000"),
        ("work_order_service_tasks", "wot-0000000-0"),
    ] {
        match device.get(table, id) {
            Err(e @ Error::RecordNotFound { .. }) => {
                assert_eq!(e.kind(), fieldsync_core::ErrorKind::RecordNotFound)
            }
            other => panic!("{table}/{id} should be gone: {other:?} ({report:?})"),
        }
    }
    // wo-0000001 stays: bk-extra still refers to it; so do its children.
    assert!(!has(&device, "bookings", "bk-0000001"));
    assert!(has(&device, "work_orders", "wo-0000001"));
    assert!(has(&device, "work_order_incidents", "inc-0000001"));

    // A new booking for a work order the device does not hold brings the
    // work order and its children although they did not change.
    let absent = (10..30)
        .map(|k| format!("wo-{k:07}"))
        .find(|id| !has(&device, "work_orders", id))
        .expect("some work order is not on the device");
    let inc = absent.replace("wo-", "inc-");
    env.put(&disp, "bookings", "bk-new", json!({"work_order_id": absent, "resource_id": "tech-a", "status": "active", "start_time": start, "end_time": end})).await;
    device.sync().await.expect("sync");
    assert!(has(&device, "work_orders", &absent));
    assert!(has(&device, "work_order_incidents", &inc));
}

/// tech-a and a dispatcher over 12 seeded work orders, and `bk-later`: an
/// active booking of tech-a 9 days ahead (outside "today and the next 7
/// days") for `wo-later`, which has the incident `inc-later`.
async fn with_a_later_booking() -> (Env, String, String) {
    let env = Env::start().await;
    let tech = env.user("tech-a", "technician", None).await;
    let disp = env.user("disp", "dispatcher", None).await;
    env.seed(&["tech-a"], 12).await;
    let start = format_datetime(env.clock_now() + 9 * DAY);
    let end = format_datetime(env.clock_now() + 9 * DAY + 3_600_000);
    env.work_order_with_incident(&disp, "wo-later", "inc-later")
        .await;
    env.put(&disp, "bookings", "bk-later", json!({"work_order_id": "wo-later", "resource_id": "tech-a", "status": "active", "start_time": start, "end_time": end})).await;
    (env, tech, disp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn booking_window_passes_and_enters_without_server_change() {
    let (env, tech, _) = with_a_later_booking().await;
    let device = env.device("d", &tech);
    device.sync().await.expect("sync");
    assert!(has(&device, "bookings", "bk-0000000"));
    assert!(!has(&device, "bookings", "bk-later"));
    assert!(!has(&device, "work_orders", "wo-later"));

    // Three days later bk-later is 6 days ahead: it arrives with its work
    // order and incident, although nothing changed on the server.
    env.clock.advance(3 * DAY);
    device.sync().await.expect("sync");
    assert!(has(&device, "bookings", "bk-later"));
    assert!(has(&device, "work_orders", "wo-later"));
    assert!(has(&device, "work_order_incidents", "inc-later"));

    // Two weeks on, the seeded bookings (0 to 5 days ahead of the start)
    // have passed: they leave with their work orders, no server change.
    env.clock.advance(14 * DAY);
    device.sync().await.expect("sync");
    assert!(!has(&device, "bookings", "bk-0000000"));
    assert!(!has(&device, "work_orders", "wo-0000000"));
    assert!(!has(&device, "work_order_incidents", "inc-0000000"));
    assert!(!has(&device, "bookings", "bk-later"));
    for k in 0..10 {
        assert!(!has(&device, "bookings", &format!("bk-{k:07}")));
    }
    // What stays is inside the window as the device evaluates it now, and
    // every work order left is reached by a booking left.
    let today = format_datetime(env.clock_now() - env.clock_now().rem_euclid(DAY));
    let bookings = device.list("bookings", None, 10_000).expect("list");
    let mut reached: Vec<String> = Vec::new();
    for b in &bookings {
        let start = txt(&b.fields["start_time"]).unwrap_or_default();
        let end = txt(&b.fields["end_time"]).unwrap_or_default();
        assert!(start >= today.as_str() || end >= today.as_str(), "{b:?}");
        reached.extend(txt(&b.fields["work_order_id"]).map(str::to_owned));
    }
    reached.sort();
    reached.dedup();
    assert_eq!(ids(&device, "work_orders"), reached);
}

/// Books `wo-new` for tech-a through `bk-new` (a dispatcher's write on the
/// server), tomorrow.
struct Booker {
    url: String,
    disp: String,
    start: String,
    end: String,
}

impl Booker {
    fn new(env: &Env, disp: &str) -> Booker {
        Booker {
            url: env.url.clone(),
            disp: disp.to_owned(),
            start: format_datetime(env.clock_now() + DAY),
            end: format_datetime(env.clock_now() + DAY + 3_600_000),
        }
    }

    async fn book_wo_new(&self) {
        let resp = reqwest::Client::new()
            .put(format!("{}/v1/records/bookings/bk-new", self.url))
            .bearer_auth(&self.disp)
            .header("content-type", "application/json")
            .body(json!({"data": {"work_order_id": "wo-new", "resource_id": "tech-a", "status": "active", "start_time": self.start, "end_time": self.end}}).to_string())
            .send()
            .await
            .expect("book");
        assert_eq!(resp.status().as_u16(), 201, "the booking is new");
    }
}

/// The device's transport, with two hooks into a first download: before
/// the work orders' first page is asked for, the dispatcher books tech-a on
/// `wo-new` (so the server now selects it, while the bookings the device
/// already holds do not reach it); and the incidents' first page waits
/// until `wo-new` has left the device's file, or 20 seconds.
struct Hook {
    inner: HttpTransport,
    booker: Booker,
    device_db: std::path::PathBuf,
    booked: std::sync::atomic::AtomicBool,
    held: std::sync::atomic::AtomicBool,
    /// Whether `wo-new` was gone when the incidents' first page went on.
    gone_while_downloading: std::sync::Mutex<Option<bool>>,
}

impl Hook {
    fn holds_wo_new(&self) -> bool {
        let Ok(conn) = rusqlite::Connection::open_with_flags(
            &self.device_db,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        ) else {
            return true;
        };
        conn.query_row(
            "SELECT COUNT(*) FROM work_orders WHERE id = 'wo-new'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map_or(true, |n| n > 0)
    }
}

#[async_trait::async_trait]
impl fieldsync_core::Transport for Hook {
    async fn send(
        &self,
        request: fieldsync_core::HttpRequest,
    ) -> Result<fieldsync_core::HttpResponse, fieldsync_core::TransportError> {
        use std::sync::atomic::Ordering;
        if request
            .path
            .starts_with("/v1/sync/pull?table=work_orders&cursor=&")
            && !self.booked.swap(true, Ordering::SeqCst)
        {
            self.booker.book_wo_new().await;
        }
        if request
            .path
            .starts_with("/v1/sync/pull?table=work_order_incidents&cursor=&")
            && !self.held.swap(true, Ordering::SeqCst)
        {
            let mut gone = false;
            for _ in 0..400 {
                if !self.holds_wo_new() {
                    gone = true;
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            *self.gone_while_downloading.lock().expect("lock") = Some(gone);
        }
        self.inner.send(request).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_download_evaluates_each_table_while_the_next_ones_download() {
    let env = Env::start().await;
    let tech = env.user("tech-a", "technician", None).await;
    let disp = env.user("disp", "dispatcher", None).await;
    env.seed(&["tech-a"], 12).await;
    env.work_order_with_incident(&disp, "wo-new", "inc-new")
        .await;
    let device_db = env.dir.path().join("d.db");
    let hook = Arc::new(Hook {
        inner: HttpTransport::new(&env.url, Default::default(), &Default::default())
            .expect("transport"),
        booker: Booker::new(&env, &disp),
        device_db: device_db.clone(),
        booked: Default::default(),
        held: Default::default(),
        gone_while_downloading: Default::default(),
    });
    let device = Engine::open_with(
        EngineConfig::new(&device_db, &env.url, &tech),
        hook.clone(),
        env.clock.clone(),
    )
    .expect("engine");
    let report = device.sync().await.expect("first sync");

    // The bookings were downloaded before bk-new; the work orders after it,
    // so wo-new came down although no booking on the device reaches it.
    // The work orders were evaluated, and wo-new removed, while the
    // incidents' download waited: before the last tables were pulled.
    assert_eq!(
        *hook.gone_while_downloading.lock().expect("lock"),
        Some(true),
        "wo-new should leave the device while the later tables download"
    );
    assert!(!has(&device, "bookings", "bk-new"));
    assert!(!has(&device, "work_orders", "wo-new"));
    assert!(!has(&device, "work_order_incidents", "inc-new"));
    let removed = |table: &str| {
        report
            .tables
            .iter()
            .find(|t| t.table == table)
            .map_or(0, |t| t.rows_removed)
    };
    assert_eq!(removed("work_orders"), 1, "{report:?}");
    assert_eq!(removed("work_order_incidents"), 1, "{report:?}");
    // What the device reaches is what it holds.
    assert_work_orders_are_those_the_bookings_reach(&device);

    // The next sync brings bk-new, and with it wo-new and its incident.
    device.sync().await.expect("second sync");
    assert!(has(&device, "bookings", "bk-new"));
    assert!(has(&device, "work_orders", "wo-new"));
    assert!(has(&device, "work_order_incidents", "inc-new"));
}

/// `snapshot_rows`: a download's pages say how many of their rows come
/// from the table as it stood when the download began; rows changed since
/// follow them, and once the walk is over pages carry none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_count_the_rows_of_the_snapshot_before_the_rows_changed_since() {
    let env = Env::start().await;
    let tech = env.user("tech-a", "technician", None).await;
    let disp = env.user("disp", "dispatcher", None).await;
    env.seed(&["tech-a"], 12).await;
    let pull = |cursor: String, limit: u32| {
        let env = &env;
        let tech = tech.clone();
        async move {
            let (s, page) = env
                .call(
                    "GET",
                    &format!("/v1/sync/pull?table=bookings&cursor={cursor}&limit={limit}"),
                    &tech,
                    None,
                )
                .await;
            assert_eq!(s, 200, "{page}");
            page
        }
    };
    let ids = |page: &Value| -> Vec<String> {
        let at = page["columns"]
            .as_array()
            .and_then(|c| c.iter().position(|n| n == "id"))
            .expect("id column");
        page["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .map(|r| r[at].as_str().expect("id").to_owned())
            .collect()
    };
    let first = pull(String::new(), 4).await;
    assert_eq!(first["snapshot_rows"], json!(4), "{first}");
    assert_eq!(ids(&first).len(), 4);
    // A booking made now is a change since the snapshot: after its rows.
    env.put(
        &disp,
        "bookings",
        "bk-late",
        json!({"resource_id": "tech-a", "status": "active",
               "start_time": format_datetime(env.clock_now() + DAY),
               "end_time": format_datetime(env.clock_now() + DAY + 3_600_000)}),
    )
    .await;
    let rest = pull(first["cursor"].as_str().expect("cursor").to_owned(), 100).await;
    let rest_ids = ids(&rest);
    let snapshot = rest["snapshot_rows"].as_u64().expect("snapshot_rows");
    assert_eq!(snapshot as usize, rest_ids.len() - 1, "{rest}");
    assert_eq!(rest_ids.last().map(String::as_str), Some("bk-late"));
    assert!(!rest_ids[..snapshot as usize].contains(&"bk-late".to_owned()));
    // The next sync's page of changes has no snapshot rows.
    env.put(&disp, "bookings", "bk-late", json!({"notes": "moved"}))
        .await;
    let changes = pull(rest["cursor"].as_str().expect("cursor").to_owned(), 100).await;
    assert_eq!(ids(&changes), vec!["bk-late".to_owned()]);
    assert!(changes.get("snapshot_rows").is_none(), "{changes}");
}

/// Between the work orders' first page and the bookings' second: books
/// `wo-new` (which the work orders' walk has passed) through `bk-new`, so
/// `bk-new` comes down in the bookings' changes after their snapshot. Keeps
/// the values the device fetches, per table.
struct BookDuringWalk {
    inner: HttpTransport,
    booker: Booker,
    booked: tokio::sync::Notify,
    booked_flag: std::sync::atomic::AtomicBool,
    fetched: std::sync::Mutex<Vec<(String, Vec<Value>)>>,
}

#[async_trait::async_trait]
impl fieldsync_core::Transport for BookDuringWalk {
    async fn send(
        &self,
        request: fieldsync_core::HttpRequest,
    ) -> Result<fieldsync_core::HttpResponse, fieldsync_core::TransportError> {
        use std::sync::atomic::Ordering;
        let path = request.path.clone();
        if path.starts_with("/v1/sync/fetch")
            && let Ok(body) = serde_json::from_slice::<Value>(&request.body)
        {
            let values = body["values"].as_array().cloned().unwrap_or_default();
            let table = body["table"].as_str().unwrap_or_default().to_owned();
            self.fetched.lock().expect("lock").push((table, values));
        }
        // The bookings' later pages wait for bk-new (at most 10 s: without
        // the work orders beside them, nobody books it).
        if path.starts_with("/v1/sync/pull?table=bookings&cursor=")
            && !path.starts_with("/v1/sync/pull?table=bookings&cursor=&")
            && !self.booked_flag.load(Ordering::SeqCst)
        {
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(10), self.booked.notified())
                    .await;
        }
        let first_work_orders = path.starts_with("/v1/sync/pull?table=work_orders&cursor=&");
        let response = self.inner.send(request).await;
        if first_work_orders && !self.booked_flag.swap(true, Ordering::SeqCst) {
            self.booker.book_wo_new().await;
            self.booked.notify_waiters();
        }
        response
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_booking_made_after_the_work_orders_download_began_brings_its_work_order_in_that_sync() {
    let env = Env::start().await;
    let tech = env.user("tech-a", "technician", None).await;
    let disp = env.user("disp", "dispatcher", None).await;
    // wo-new first: the work orders' walk passes it on its first page.
    env.work_order_with_incident(&disp, "wo-new", "inc-new")
        .await;
    env.seed(&["tech-a"], 30).await;
    let hook = Arc::new(BookDuringWalk {
        inner: HttpTransport::new(&env.url, Default::default(), &Default::default())
            .expect("transport"),
        booker: Booker::new(&env, &disp),
        booked: tokio::sync::Notify::new(),
        booked_flag: Default::default(),
        fetched: Default::default(),
    });
    let mut config = EngineConfig::new(env.dir.path().join("d.db"), &env.url, &tech);
    config.page_size = 8;
    let device = Engine::open_with(config, hook.clone(), env.clock.clone()).expect("engine");
    device.sync().await.expect("first sync");

    // The work orders began while the bookings downloaded; bk-new, made
    // after that, came down with the bookings' changes, and what it reaches
    // was fetched in the same sync.
    assert!(has(&device, "bookings", "bk-new"));
    assert!(has(&device, "work_orders", "wo-new"));
    assert!(has(&device, "work_order_incidents", "inc-new"));
    assert_work_orders_are_those_the_bookings_reach(&device);
    // Only bk-new's work order was fetched: the bookings of the snapshot
    // were covered by the work orders' own download.
    let fetched = hook.fetched.lock().expect("lock").clone();
    let work_orders: Vec<&Vec<Value>> = fetched
        .iter()
        .filter(|(t, _)| t == "work_orders")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(work_orders, vec![&vec![json!("wo-new")]], "{fetched:?}");
}

fn profile(tables: Value) -> Value {
    json!({"name": "versions", "tables": tables})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_changes_apply_at_next_sync() {
    let env = Env::start().await;
    env.seed(&["tech-a"], 20).await;
    let bookings_all = json!({"name": "bookings", "columns": ["name", "status", "resource_id", "notes"], "rules": [{"kind": "owned", "column": "resource_id"}], "sync_interval_secs": 300});
    let statuses = json!({"name": "booking_statuses", "columns": ["name", "status"], "rules": [{"kind": "all"}], "sync_interval_secs": 3600});
    env.admin(
        "PUT",
        "/v1/admin/profiles/versions",
        Some(profile(json!([bookings_all, statuses]))),
    )
    .await;
    let tech = env.user("tech-a", "technician", Some("versions")).await;
    let device = env.device("d", &tech);
    device.sync().await.expect("sync");
    assert_eq!(ids(&device, "bookings").len(), 20);
    assert_eq!(ids(&device, "booking_statuses").len(), 5);

    // Table added (accounts), table dropped (booking_statuses), filter narrowed.
    let narrowed = json!({"name": "bookings", "columns": ["name", "status", "resource_id", "notes"], "rules": [{"kind": "custom", "filter": {"op": "and", "filters": [{"op": "eq_current_user", "column": "resource_id"}, {"op": "eq", "column": "status", "value": "active"}]}}], "sync_interval_secs": 300});
    let accounts = json!({"name": "accounts", "columns": ["name"], "rules": [{"kind": "all"}], "sync_interval_secs": 3600});
    env.admin(
        "PUT",
        "/v1/admin/profiles/versions",
        Some(profile(json!([narrowed, accounts]))),
    )
    .await;
    device.sync().await.expect("sync");
    assert!(!ids(&device, "accounts").is_empty());
    assert!(matches!(
        device.list("booking_statuses", None, 10),
        Err(Error::UnknownTable(_))
    ));
    let active = device.list("bookings", None, 1000).expect("list");
    assert!(!active.is_empty() && active.len() < 20, "{}", active.len());
    assert!(
        active
            .iter()
            .all(|b| txt(&b.fields["status"]) == Some("active"))
    );

    // Filter widened again (and a column dropped): the completed ones return.
    let widened = json!({"name": "bookings", "columns": ["name", "status", "resource_id"], "rules": [{"kind": "owned", "column": "resource_id"}], "sync_interval_secs": 300});
    env.admin(
        "PUT",
        "/v1/admin/profiles/versions",
        Some(profile(json!([widened, accounts]))),
    )
    .await;
    device.sync().await.expect("sync");
    let all = device.list("bookings", None, 1000).expect("list");
    assert_eq!(all.len(), 20);
    assert!(all.iter().all(|b| !b.fields.contains_key("notes")));

    // A column added, nothing else changed on the server: the table is
    // downloaded again in this one sync, though the check of which tables
    // changed (made alongside the profile's request, with the cursors of
    // before) answers that nothing did.
    let with_start = json!({"name": "bookings", "columns": ["name", "status", "resource_id", "start_time"], "rules": [{"kind": "owned", "column": "resource_id"}], "sync_interval_secs": 300});
    env.admin(
        "PUT",
        "/v1/admin/profiles/versions",
        Some(profile(json!([with_start, accounts]))),
    )
    .await;
    let report = device.sync().await.expect("sync");
    assert_eq!(report.skipped_unchanged, vec!["accounts"], "{report:?}");
    let all = device.list("bookings", None, 1000).expect("list");
    assert_eq!(all.len(), 20);
    assert!(
        all.iter()
            .all(|b| b.fields.get("start_time").and_then(txt).is_some()),
        "{all:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_profiles_are_refused_naming_the_problem() {
    let env = Env::start().await;
    let t = |name: &str, rules: Value, interval: u32| json!({"name": name, "columns": ["name"], "rules": rules, "sync_interval_secs": interval});
    let all = json!([{"kind": "all"}]);
    let related = |table: &str| json!([{"kind": "related", "table": table, "column": "id", "foreign_column": "id"}]);
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            json!([t("no_such_table", all.clone(), 300)]),
            "unknown_table",
            "no_such_table",
        ),
        (
            json!([{"name": "accounts", "columns": ["nope"], "rules": all, "sync_interval_secs": 300}]),
            "unknown_column",
            "nope",
        ),
        (
            json!([t("accounts", related("bookings"), 300)]),
            "invalid_profile",
            "bookings",
        ),
        (
            json!([
                t("accounts", related("customer_assets"), 300),
                t("customer_assets", related("accounts"), 300)
            ]),
            "invalid_profile",
            "circular",
        ),
        (
            json!([t("accounts", all.clone(), 60)]),
            "invalid_profile",
            "5 minutes",
        ),
        (
            json!([t("accounts", all.clone(), 90_000)]),
            "invalid_profile",
            "1 day",
        ),
        (
            json!([t(
                "accounts",
                json!([{"kind": "custom", "filter": {"op": "today", "column": "name"}}]),
                300
            )]),
            "invalid_profile",
            "date",
        ),
        (
            json!([t(
                "accounts",
                json!([{"kind": "custom", "filter": {"op": "eq", "column": "city", "value": "Lyon"}}]),
                300
            )]),
            "unknown_column",
            "city",
        ),
    ];
    for (tables, code, needle) in cases {
        let (s, v) = env
            .call(
                "PUT",
                "/v1/admin/profiles/bad",
                ADMIN,
                Some(json!({"name": "bad", "tables": tables})),
            )
            .await;
        assert_eq!(s, 400, "{v}");
        assert_eq!(v["error"]["code"], code, "{v}");
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(needle), "{needle}: {msg}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_in_a_filter_value_matches_literally() {
    let env = Env::start().await;
    env.seed(&["tech-a"], 10).await;
    let disp = env.user("disp", "dispatcher", None).await;
    let evil = "x'); DROP TABLE bookings; -- /* \" ; SELECT 1";
    env.put(&disp, "bookings", "bk-0000003", json!({"notes": evil}))
        .await;
    env.put(&disp, "bookings", "bk-0000004", json!({"notes": "x"}))
        .await;
    let p = json!({"name": "evil", "tables": [{"name": "bookings", "columns": ["name", "notes"], "rules": [{"kind": "custom", "filter": {"op": "or", "filters": [{"op": "eq", "column": "notes", "value": evil}, {"op": "begins_with", "column": "notes", "value": "' OR 1=1 --"}]}}], "sync_interval_secs": 300}]});
    env.admin("PUT", "/v1/admin/profiles/evil", Some(p)).await;
    let tech = env.user("tech-a", "technician", Some("evil")).await;
    let device = env.device("d", &tech);
    device.sync().await.expect("sync");
    assert_eq!(ids(&device, "bookings"), vec!["bk-0000003".to_owned()]);
    assert_eq!(
        txt(&device.get("bookings", "bk-0000003").expect("row").fields["notes"]),
        Some(evil)
    );
    // Nothing changed on the server: every booking is still there.
    let (s, v) = env
        .call("GET", "/v1/records/bookings?limit=1000", &disp, None)
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["rows"].as_array().map(Vec::len), Some(10), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removal_never_drops_a_pending_local_edit_silently() {
    let env = Env::start().await;
    let tech = env.user("tech-a", "technician", None).await;
    let disp = env.user("disp", "dispatcher", None).await;
    env.seed(&["tech-a"], 12).await;
    let device = env.device("d", &tech);
    device.sync().await.expect("sync");

    // Offline edits: the booking itself and the work order of another booking.
    let mut notes = std::collections::BTreeMap::new();
    notes.insert(
        "notes".to_owned(),
        fieldsync_core::Value::Text("left key under mat".into()),
    );
    device
        .update("bookings", "bk-0000002", notes)
        .expect("edit booking");
    let mut summary = std::collections::BTreeMap::new();
    summary.insert(
        "summary".to_owned(),
        fieldsync_core::Value::Text("edited offline".into()),
    );
    device
        .update("work_orders", "wo-0000003", summary)
        .expect("edit work order");
    // Meanwhile dispatch completes both bookings.
    env.put(
        &disp,
        "bookings",
        "bk-0000002",
        json!({"status": "completed"}),
    )
    .await;
    env.put(
        &disp,
        "bookings",
        "bk-0000003",
        json!({"status": "completed"}),
    )
    .await;

    let report = device.sync().await.expect("sync");
    // Both rows had left the technician's profile before the edits arrived:
    // the server refused them (nothing changed there), the device keeps each
    // refused change, with its data, in its sync errors, and the rows leave.
    let (s, v) = env
        .call("GET", "/v1/records/bookings/bk-0000002", &disp, None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["row"]["status"], "completed", "{v}");
    assert!(!has(&device, "bookings", "bk-0000002"));
    assert!(!has(&device, "work_orders", "wo-0000003"));
    let errors = device.sync_errors(50).expect("errors");
    for (id, column, value) in [
        ("bk-0000002", "notes", "left key under mat"),
        ("wo-0000003", "summary", "edited offline"),
    ] {
        let e = errors
            .iter()
            .find(|e| e.record_id == id)
            .unwrap_or_else(|| panic!("a sync error for the refused edit of {id}: {report:?}"));
        assert_eq!(e.kind, "rejected");
        assert_eq!(
            e.device_data
                .as_ref()
                .and_then(|d| d.get(column))
                .and_then(txt),
            Some(value)
        );
    }
    assert_eq!(device.pending_uploads().expect("pending"), 0);
}

/// The scheduled (smart) sync asks `POST /v1/sync/changes` before it pulls.
/// A booking that enters the date window while nothing changes on the server
/// must still arrive: "nothing changed" is not "nothing new to select".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smart_sync_downloads_rows_that_entered_a_window_without_a_change() {
    let (env, tech, disp) = with_a_later_booking().await;
    let device = env.device("d", &tech);
    device.check_network().await;
    let first = device.run_due().await.expect("step").expect("ran");
    assert!(first.skipped_unchanged.is_empty(), "{first:?}");
    assert!(has(&device, "bookings", "bk-0000000"));
    assert!(!has(&device, "bookings", "bk-later"));

    // Three days on, with no server change: bk-later is 6 days ahead. The
    // bookings are due (every 5 minutes), and the check must not skip them.
    env.clock.advance(3 * DAY);
    let run = device.run_due().await.expect("step").expect("ran");
    assert!(
        !run.skipped_unchanged.contains(&"bookings".to_owned()),
        "{run:?}"
    );
    assert!(has(&device, "bookings", "bk-later"));
    assert!(has(&device, "work_orders", "wo-later"));

    // Five minutes later the same day nothing entered: the check skips them.
    env.clock.advance(5 * 60_000);
    let run = device.run_due().await.expect("step").expect("ran");
    assert!(
        run.skipped_unchanged.contains(&"bookings".to_owned()),
        "{run:?}"
    );

    // On the wire: a cursor at rest answers `false` the same day and `true`
    // once the day moved; so does a cursor inside the window phase, whose
    // rows lie before its `since`.
    let start = format_datetime(env.clock_now() + 9 * DAY);
    for id in ["bk-w1", "bk-w2"] {
        env.put(&disp, "bookings", id, json!({"work_order_id": "wo-later", "resource_id": "tech-a", "status": "active", "start_time": start, "end_time": start})).await;
    }
    let pull = |cursor: String, limit: u32| {
        let env = &env;
        let tech = &tech;
        async move {
            let (s, v) = env
                .call(
                    "GET",
                    &format!("/v1/sync/pull?table=bookings&cursor={cursor}&limit={limit}"),
                    tech,
                    None,
                )
                .await;
            assert_eq!(s, 200, "{v}");
            v
        }
    };
    let mut rest = String::new();
    loop {
        let page = pull(rest, 1000).await;
        rest = page["cursor"].as_str().expect("cursor").to_owned();
        if page["has_more"] == json!(false) {
            break;
        }
    }
    let changed = |cursor: String| {
        let env = &env;
        let tech = &tech;
        async move {
            let (s, v) = env
                .call(
                    "POST",
                    "/v1/sync/changes",
                    tech,
                    Some(json!({"tables": {"bookings": cursor}})),
                )
                .await;
            assert_eq!(s, 200, "{v}");
            v["tables"]["bookings"].clone()
        }
    };
    assert_eq!(changed(rest.clone()).await, json!(false));
    env.clock.advance(3 * DAY);
    assert_eq!(changed(rest.clone()).await, json!(true));
    let window = pull(rest, 1).await;
    assert_eq!(window["has_more"], json!(true), "{window}");
    let inside = window["cursor"].as_str().expect("cursor").to_owned();
    assert!(inside.contains(".w."), "{inside}");
    assert_eq!(changed(inside).await, json!(true));
}

/// A table's compiled rules bind each filter value, and a pull binds them
/// twice: past SQLite's 32,766 parameters every pull of the table would
/// fail with a 500. Publishing refuses such a profile by name, and a
/// profile just under the bound pulls, its related table included (whose
/// rules carry the related table's values too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_values_are_bounded_at_publish_and_pulls_work_under_the_bound() {
    let env = Env::start().await;
    env.seed(&["tech-a"], 10).await;
    let lists = |n: usize| {
        json!({"op": "or", "filters": (0..n).map(|k| json!({
            "op": "in", "column": "name",
            "values": (0..1000).map(|i| format!("Booking {}", k * 1000 + i + 1)).collect::<Vec<_>>()
        })).collect::<Vec<_>>()})
    };
    let tables = |n: usize| {
        json!([
            {"name": "bookings", "columns": ["name", "work_order_id", "resource_id"],
             "rules": [{"kind": "custom", "filter": lists(n)}], "sync_interval_secs": 300},
            {"name": "work_orders", "columns": ["name"],
             "rules": [{"kind": "related", "table": "bookings", "column": "id", "foreign_column": "work_order_id"}],
             "sync_interval_secs": 300}
        ])
    };
    let (s, v) = env
        .call(
            "PUT",
            "/v1/admin/profiles/wide",
            ADMIN,
            Some(json!({"name": "wide", "tables": tables(17)})),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["code"], "invalid_profile", "{v}");
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("bookings") && msg.contains("17000 values"),
        "{msg}"
    );

    env.admin(
        "PUT",
        "/v1/admin/profiles/wide",
        Some(json!({"name": "wide", "tables": tables(15)})),
    )
    .await;
    let tech = env.user("tech-a", "technician", Some("wide")).await;
    let device = env.device("d", &tech);
    device.sync().await.expect("sync under the bound");
    // Seeded bookings are named "Booking 1" to "Booking 10": all listed.
    assert_eq!(ids(&device, "bookings").len(), 10);
    assert_eq!(ids(&device, "work_orders").len(), 10);
}
