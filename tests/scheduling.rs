//! Scheduler, network check, status, notifications, online mode and
//! telemetry of the device core (C7-C11, C14, C15), against the reference
//! server running in-process on a 127.0.0.1 listener (real HTTP, real SQLite
//! files). Time is a `ManualClock`; the network is the real HTTP transport
//! behind a thin scripted switch (up/down, hold pulls) so every rule is
//! exercised deterministically.

mod testdb;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use fieldsync_core::transport::HttpTimeouts;
use fieldsync_core::{
    Blocker, Decision, Engine, EngineConfig, EventListener, HttpRequest, HttpResponse,
    HttpTransport, ManualClock, NetworkType, NotificationKind, NotificationPhase, OnlineFilter,
    OsNetwork, Reachability, SyncEvent, SyncIcon, SyncMode, Transport, TransportError, Value,
};
use serde_json::{Value as Json, json};

const ADMIN: &str = "test-admin-token-0123456789";
const T0: i64 = 1_800_000_000_000;
const MIN: i64 = 60_000;

struct Server {
    url: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start() -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = testdb::server_config(&dir.path().join("server"), ADMIN);
        let app = fieldsync_server::router(&config).expect("router");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Server {
            url: format!("http://{addr}"),
            http: reqwest::Client::new(),
            _dir: dir,
        }
    }

    async fn call(&self, method: &str, path: &str, token: &str, body: Option<Json>) -> (u16, Json) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self
            .http
            .request(method, format!("{}{}", self.url, path))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Json::Null))
    }

    async fn admin(&self, method: &str, path: &str, body: Option<Json>) -> Json {
        let (status, v) = self.call(method, path, ADMIN, body).await;
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {v}"
        );
        v
    }

    async fn user(&self, id: &str, role: &str, profile: Option<&str>) -> String {
        let mut body = json!({"id": id, "name": id, "role": role});
        if let Some(p) = profile {
            body["profile"] = json!(p);
        }
        self.admin("POST", "/v1/admin/users", Some(body)).await["token"]
            .as_str()
            .expect("token")
            .to_owned()
    }

    /// A technician on a small profile: bookings every 5 minutes, work orders
    /// selected through bookings (hourly), accounts hourly.
    async fn technician(&self) -> String {
        self.admin(
            "PUT",
            "/v1/admin/profiles/sched",
            Some(json!({
                "name": "sched",
                "tables": [
                    {"name": "bookings", "columns": ["name", "work_order_id", "resource_id", "status"],
                     "rules": [{"kind": "owned", "column": "resource_id"}], "sync_interval_secs": 300},
                    {"name": "work_orders", "columns": ["name", "status", "priority"],
                     "rules": [{"kind": "related", "table": "bookings", "column": "id", "foreign_column": "work_order_id"}],
                     "sync_interval_secs": 3600},
                    {"name": "accounts", "columns": ["name", "city"],
                     "rules": [{"kind": "all"}], "sync_interval_secs": 3600}
                ]
            })),
        )
        .await;
        let token = self.user("tech1", "technician", Some("sched")).await;
        self.admin(
            "POST",
            "/v1/admin/seed",
            Some(json!({"technicians": ["tech1", "tech2"], "work_orders": 40, "seed": 11})),
        )
        .await;
        token
    }
}

/// The real HTTP transport behind a scripted switch: `up` false refuses
/// every request (no network); `hold_pulls` parks pull requests until
/// released; `bad_rows` answers pulls with pages whose head is sound but
/// whose first row holds a value no column can take. Every request path is
/// logged.
struct Net {
    inner: HttpTransport,
    up: AtomicBool,
    hold_pulls: AtomicBool,
    bad_rows: AtomicBool,
    held: tokio::sync::Notify,
    release: tokio::sync::Notify,
    log: Mutex<Vec<String>>,
    /// With `slow_pulls`, every pull answer waits 20 ms and is recorded as
    /// (table, sent, answered).
    slow_pulls: AtomicBool,
    spans: Mutex<Vec<(String, Instant, Instant)>>,
}

impl Net {
    fn new(url: &str) -> Arc<Net> {
        Arc::new(Net {
            inner: HttpTransport::new(url, HttpTimeouts::default(), &Default::default())
                .expect("transport"),
            up: AtomicBool::new(true),
            hold_pulls: AtomicBool::new(false),
            bad_rows: AtomicBool::new(false),
            held: tokio::sync::Notify::new(),
            release: tokio::sync::Notify::new(),
            log: Mutex::new(Vec::new()),
            slow_pulls: AtomicBool::new(false),
            spans: Mutex::new(Vec::new()),
        })
    }

    fn take_log(&self) -> Vec<String> {
        std::mem::take(&mut *self.log.lock().expect("log"))
    }

    fn pulled(log: &[String]) -> Vec<String> {
        let mut tables: Vec<String> = log
            .iter()
            .filter_map(|p| p.strip_prefix("/v1/sync/pull?table="))
            .map(|rest| rest.split('&').next().unwrap_or_default().to_owned())
            .collect();
        tables.sort();
        tables.dedup();
        tables
    }
}

#[async_trait]
impl Transport for Net {
    async fn send(&self, request: HttpRequest) -> Result<HttpResponse, TransportError> {
        self.log.lock().expect("log").push(request.path.clone());
        if !self.up.load(Ordering::SeqCst) {
            return Err(TransportError("could not connect to the server".into()));
        }
        if request.path.starts_with("/v1/sync/pull") && self.hold_pulls.load(Ordering::SeqCst) {
            let released = self.release.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            self.held.notify_one();
            released.await;
        }
        let pull = request.path.starts_with("/v1/sync/pull");
        let sent = Instant::now();
        let table = Net::pulled(std::slice::from_ref(&request.path));
        let mut response = self.inner.send(request).await?;
        if pull && self.slow_pulls.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let span = (table.concat(), sent, Instant::now());
            self.spans.lock().expect("spans").push(span);
        }
        if pull && self.bad_rows.load(Ordering::SeqCst) {
            let body = fieldsync_core::codec::Body {
                bytes: std::mem::take(&mut response.body),
                encoding: fieldsync_core::codec::Encoding::from_header(
                    response.content_encoding.take().as_deref(),
                )
                .expect("encoding"),
            };
            let mut page: Json =
                serde_json::from_slice(&body.decoded().expect("page")).expect("page");
            if let Some(row) = page["rows"].get_mut(0) {
                row[1] = json!({"not": "a value"});
            }
            response.body = serde_json::to_vec(&page).expect("page");
        }
        Ok(response)
    }
}

fn open(
    path: &std::path::Path,
    server: &Server,
    token: &str,
    net: &Arc<Net>,
    clock: &Arc<ManualClock>,
) -> Arc<Engine> {
    let mut config = EngineConfig::new(path, &server.url, token);
    config.probe_timeout_ms = 2_000;
    Engine::open_with(config, net.clone(), clock.clone()).expect("open engine")
}

/// Collects events delivered to a listener.
#[derive(Default)]
struct Events(Mutex<Vec<SyncEvent>>);

impl EventListener for Events {
    fn on_event(&self, event: SyncEvent) {
        self.0.lock().expect("events").push(event);
    }
}

impl Events {
    fn take(&self) -> Vec<SyncEvent> {
        std::mem::take(&mut *self.0.lock().expect("events"))
    }
}

fn notifications(
    events: &[SyncEvent],
) -> Vec<(NotificationKind, NotificationPhase, u64, Option<u64>)> {
    events
        .iter()
        .filter_map(|e| match e {
            SyncEvent::Notification { notification: n } => {
                Some((n.kind, n.phase, n.rows_done, n.rows_total))
            }
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intervals_dependency_closure_and_smart_sync() {
    let server = Server::start().await;
    let token = server.technician().await;
    let dispatcher = server.user("disp", "dispatcher", None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(T0));
    let net = Net::new(&server.url);
    let engine = open(&dir.path().join("d.db"), &server, &token, &net, &clock);

    // Offline until the first probe answers.
    assert_eq!(engine.network_status().reachability, Reachability::Checking);
    assert!(engine.run_due().await.expect("step").is_none());
    assert_eq!(
        engine.check_network().await.reachability,
        Reachability::Available
    );

    // First download of every table.
    let first = engine.run_due().await.expect("step").expect("ran");
    assert_eq!(first.mode, SyncMode::First);
    assert_eq!(
        Net::pulled(&net.take_log()),
        vec!["accounts", "bookings", "work_orders"]
    );

    // The dependency closure and effective intervals, in device status.
    let status = engine.status().expect("status");
    assert_eq!(status.dependency_closure["work_orders"], vec!["bookings"]);
    assert!(status.dependency_closure["bookings"].is_empty());
    let line = |t: &str| {
        status
            .tables
            .iter()
            .find(|x| x.table == t)
            .expect("table")
            .clone()
    };
    assert_eq!(line("work_orders").effective_interval_secs, Some(300));
    assert_eq!(line("work_orders").next_due_at, Some(T0 + 5 * MIN));
    assert_eq!(line("accounts").next_due_at, Some(T0 + 60 * MIN));

    // Nothing is due before 5 minutes.
    clock.set(T0 + 4 * MIN);
    assert!(engine.run_due().await.expect("step").is_none());
    assert_eq!(
        engine.scheduler_decision().expect("decide"),
        Decision::Wait {
            blocker: Blocker::UpToDate,
            next_at: Some(T0 + 5 * MIN)
        }
    );
    assert!(net.take_log().iter().all(|p| !p.starts_with("/v1/sync")));

    // A dispatcher changes one of tech1's bookings: at 5 minutes bookings and
    // work orders (which reach bookings) sync together; accounts wait. The
    // work orders did not change, so only the bookings are pulled: a pull
    // from an unchanged table's cursor returns nothing, and a work order a
    // booking now reaches comes by the related rows' fetch.
    let booking = engine.list("bookings", None, 1).expect("list")[0]
        .id
        .clone();
    let (code, v) = server
        .call(
            "PUT",
            &format!("/v1/records/bookings/{booking}"),
            &dispatcher,
            Some(json!({"data": {"status": "in_progress"}})),
        )
        .await;
    assert_eq!(code, 200, "{v}");
    clock.set(T0 + 5 * MIN);
    let run = engine.run_due().await.expect("step").expect("ran");
    assert_eq!(run.mode, SyncMode::Delta);
    assert_eq!(run.tables, vec!["bookings", "work_orders"]);
    assert_eq!(run.skipped_unchanged, vec!["work_orders"]);
    assert_eq!(run.report.skipped_unchanged, vec!["work_orders"]);
    assert_eq!(Net::pulled(&net.take_log()), vec!["bookings"]);
    assert_eq!(
        engine.get("bookings", &booking).expect("booking").fields["status"],
        Value::Text("in_progress".into())
    );

    // Smart sync: at 10 minutes nothing changed on the server, so the due
    // tables are skipped after one cheap check, and count as synced.
    clock.set(T0 + 10 * MIN);
    let run = engine.run_due().await.expect("step").expect("ran");
    assert_eq!(run.skipped_unchanged, vec!["bookings", "work_orders"]);
    let log = net.take_log();
    assert!(Net::pulled(&log).is_empty(), "{log:?}");
    assert!(log.iter().any(|p| p == "/v1/sync/changes"));
    assert_eq!(
        engine
            .status()
            .expect("status")
            .tables
            .iter()
            .find(|t| t.table == "bookings")
            .expect("b")
            .last_sync_at,
        Some(T0 + 10 * MIN)
    );

    // A change to an account: at 60 minutes accounts are due and downloaded;
    // the unchanged bookings and work orders are skipped.
    let account = engine.list("accounts", None, 1).expect("list")[0]
        .id
        .clone();
    let (code, _) = server
        .call(
            "PUT",
            &format!("/v1/records/accounts/{account}"),
            &dispatcher,
            Some(json!({"data": {"city": "Springfield"}})),
        )
        .await;
    assert_eq!(code, 200);
    clock.set(T0 + 60 * MIN);
    let run = engine.run_due().await.expect("step").expect("ran");
    assert_eq!(run.tables, vec!["bookings", "work_orders", "accounts"]);
    assert_eq!(run.skipped_unchanged, vec!["bookings", "work_orders"]);
    assert_eq!(Net::pulled(&net.take_log()), vec!["accounts"]);
    assert_eq!(
        engine.get("accounts", &account).expect("account").fields["city"],
        Value::Text("Springfield".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_only_wifi_only_manual_mode_sync_now_and_refresh() {
    let server = Server::start().await;
    let token = server.technician().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(T0));
    let net = Net::new(&server.url);
    let engine = open(&dir.path().join("d.db"), &server, &token, &net, &clock);
    engine.check_network().await;
    engine.run_due().await.expect("first").expect("ran");
    let events = Arc::new(Events::default());
    let _handle = engine.add_event_listener(events.clone());

    clock.set(T0 + 6 * MIN);
    // App in the background: nothing starts.
    engine.set_app_active(false);
    assert!(engine.run_due().await.expect("step").is_none());
    assert!(matches!(
        engine.scheduler_decision().expect("d"),
        Decision::Wait {
            blocker: Blocker::AppInactive,
            ..
        }
    ));
    engine.set_app_active(true);

    // Wi-Fi only on a metered network: nothing starts; on Wi-Fi it does.
    engine.set_setting("wifi_only", "true").expect("setting");
    engine.set_os_network(OsNetwork {
        connected: true,
        metered: true,
        network_type: NetworkType::Cellular,
    });
    engine.check_network().await;
    assert!(engine.run_due().await.expect("step").is_none());
    assert!(matches!(
        engine.scheduler_decision().expect("d"),
        Decision::Wait {
            blocker: Blocker::MeteredNetwork,
            ..
        }
    ));
    engine.set_os_network(OsNetwork {
        connected: true,
        metered: false,
        network_type: NetworkType::Wifi,
    });
    engine.check_network().await;
    assert_eq!(
        engine.run_due().await.expect("step").expect("ran").mode,
        SyncMode::Delta
    );

    // Manual only: a day later nothing starts on its own.
    engine.set_setting("frequency", "manual").expect("setting");
    clock.set(T0 + 24 * 60 * MIN);
    assert!(engine.run_due().await.expect("step").is_none());
    assert!(matches!(
        engine.scheduler_decision().expect("d"),
        Decision::Wait {
            blocker: Blocker::ManualOnly,
            ..
        }
    ));
    assert_eq!(engine.status().expect("s").tables[0].next_due_at, None);

    // "Sync now" runs every table.
    engine.sync_now();
    let run = engine.run_due().await.expect("step").expect("ran");
    assert_eq!(run.mode, SyncMode::Forced);
    assert!(engine.run_due().await.expect("step").is_none());

    // Refresh of bookings syncs bookings and work orders (which reach it),
    // with a Refresh notification that ends telling the UI to refresh.
    events.take();
    net.take_log();
    engine.request_refresh("bookings").expect("refresh");
    let run = engine.run_due().await.expect("step").expect("ran");
    assert_eq!(run.mode, SyncMode::Refresh);
    assert_eq!(
        Net::pulled(&net.take_log()),
        vec!["bookings", "work_orders"]
    );
    let notes = notifications(&events.take());
    assert!(
        notes
            .iter()
            .any(|n| n.0 == NotificationKind::TableRefresh && n.1 == NotificationPhase::Progress)
    );
    assert_eq!(
        notes.last().map(|n| (n.0, n.1)),
        Some((NotificationKind::TableRefresh, NotificationPhase::Completed))
    );
    assert!(engine.request_refresh("no_such_table").is_err());

    // Settings persist across a restart; online mode does not.
    drop(engine);
    let engine = open(&dir.path().join("d.db"), &server, &token, &net, &clock);
    let s = engine.settings();
    assert!(s.wifi_only);
    assert_eq!(s.frequency, fieldsync_core::SyncFrequency::ManualOnly);
    assert!(!engine.online_mode());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_started_sync_finishes_in_the_background() {
    let server = Server::start().await;
    let token = server.technician().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(T0));
    let net = Net::new(&server.url);
    let engine = open(&dir.path().join("d.db"), &server, &token, &net, &clock);
    engine.check_network().await;

    net.hold_pulls.store(true, Ordering::SeqCst);
    let held = net.held.notified();
    let e = engine.clone();
    let run = tokio::spawn(async move { e.run_due().await });
    tokio::time::timeout(Duration::from_secs(30), held)
        .await
        .expect("a pull started");
    assert_eq!(engine.sync_status().expect("s").icon, SyncIcon::Syncing);

    // The app goes to the background mid-sync, 2 s in; the sync goes on.
    clock.advance(2_000);
    engine.set_app_active(false);
    clock.advance(8_000);
    net.hold_pulls.store(false, Ordering::SeqCst);
    net.release.notify_waiters();
    let done = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("sync finished")
        .expect("task")
        .expect("sync ok")
        .expect("ran");
    assert_eq!(done.mode, SyncMode::First);
    assert_eq!(done.report.tables.len(), 3);
    assert!(!engine.list("accounts", None, 5).expect("rows").is_empty());
    // No new sync starts while in the background.
    clock.advance(60 * MIN);
    assert!(matches!(
        engine.scheduler_decision().expect("d"),
        Decision::Wait {
            blocker: Blocker::AppInactive,
            ..
        }
    ));

    // Its telemetry counts 2 s of the 10 s as active.
    let (_, events) = server
        .call(
            "GET",
            &format!(
                "/v1/admin/telemetry?device={}&kind=sync",
                engine.device_id()
            ),
            ADMIN,
            None,
        )
        .await;
    let e = &events.as_array().expect("events")[0];
    assert_eq!(e["duration_ms"], 10_000);
    assert_eq!(e["active_duration_ms"], 2_000);
    assert_eq!(e["result"], "success");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_network_works_locally_shows_unavailable_and_syncs_when_a_probe_succeeds() {
    let server = Server::start().await;
    let token = server.technician().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("d.db");
    let clock = Arc::new(ManualClock::new(T0));
    let net = Net::new(&server.url);
    {
        let engine = open(&path, &server, &token, &net, &clock);
        engine.sync().await.expect("first sync");
    }
    // Restart with no network.
    net.up.store(false, Ordering::SeqCst);
    let engine = open(&path, &server, &token, &net, &clock);
    let s = engine.sync_status().expect("status");
    assert_eq!(s.icon, SyncIcon::NotConnected);
    assert_eq!(s.network.reachability, Reachability::Checking);
    let account = engine.list("accounts", None, 1).expect("read offline")[0].clone();
    let mut fields = BTreeMap::new();
    fields.insert("city".to_owned(), Value::Text("Offline City".into()));
    engine
        .update("accounts", &account.id, fields)
        .expect("write offline");

    let events = Arc::new(Events::default());
    let _h = engine.add_event_listener(events.clone());
    engine.start();
    // The background task probes; the probe fails.
    let unavailable = wait_for(&engine, |s| {
        s.network.reachability == Reachability::Unavailable
    })
    .await;
    assert_eq!(unavailable.icon, SyncIcon::NotConnected);
    assert!(
        unavailable
            .message
            .as_deref()
            .unwrap_or("")
            .starts_with("Network or Service Unavailable")
    );
    assert_eq!(unavailable.pending_uploads, 1);

    // The network comes back: the next probe succeeds and the due sync runs.
    clock.advance(10 * MIN);
    net.up.store(true, Ordering::SeqCst);
    engine.set_os_network(OsNetwork {
        connected: true,
        metered: false,
        network_type: NetworkType::Wifi,
    });
    let synced = wait_for(&engine, |s| {
        s.pending_uploads == 0 && s.icon == SyncIcon::Connected
    })
    .await;
    assert_eq!(synced.network.reachability, Reachability::Available);
    engine.stop();
    let (_, row) = server
        .call(
            "GET",
            &format!("/v1/records/accounts/{}", account.id),
            &token,
            None,
        )
        .await;
    assert_eq!(row["row"]["city"], "Offline City");
    assert!(events.take().iter().any(|e| matches!(e, SyncEvent::NetworkChanged { status } if status.reachability == Reachability::Available)));
}

async fn wait_for(
    engine: &Arc<Engine>,
    ok: impl Fn(&fieldsync_core::SyncStatus) -> bool,
) -> fieldsync_core::SyncStatus {
    for _ in 0..600 {
        let s = engine.sync_status().expect("status");
        if ok(&s) {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("condition not reached: {:?}", engine.sync_status());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_slower_than_the_probe_timeout_is_unavailable() {
    // A server that accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let _silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = EngineConfig::new(dir.path().join("d.db"), &url, "token");
    config.probe_timeout_ms = 300;
    let engine = Engine::open(config).expect("open");
    let status = engine.check_network().await;
    assert_eq!(status.reachability, Reachability::Unavailable);
    let message = status.message.expect("message");
    assert!(
        message.starts_with("Network or Service Unavailable"),
        "{message}"
    );
    assert!(message.contains("300 ms"), "{message}");
    assert_eq!(
        engine.sync_status().expect("s").icon,
        SyncIcon::NotConnected
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_from_a_real_sync_arrives_with_correct_counts_and_none_while_disabled() {
    let server = Server::start().await;
    let token = server.technician().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(T0));
    let net = Net::new(&server.url);
    let engine = open(&dir.path().join("d.db"), &server, &token, &net, &clock);
    let report = engine.sync().await.expect("sync");
    let device = engine.device_id().to_owned();
    let (code, events) = server
        .call(
            "GET",
            &format!("/v1/admin/telemetry?device={device}"),
            ADMIN,
            None,
        )
        .await;
    assert_eq!(code, 200, "{events}");
    let events = events.as_array().expect("array").clone();
    let syncs: Vec<&Json> = events.iter().filter(|e| e["kind"] == "sync").collect();
    let tables: Vec<&Json> = events
        .iter()
        .filter(|e| e["kind"] == "table_download")
        .collect();
    assert_eq!(syncs.len(), 1);
    assert_eq!(tables.len(), report.tables.len());
    let rows: u64 = report
        .tables
        .iter()
        .map(|t| t.rows_upserted + t.rows_removed)
        .sum();
    assert!(rows > 0);
    assert_eq!(syncs[0]["rows_down"], rows);
    assert_eq!(syncs[0]["bytes_down"], report.bytes_down);
    assert_eq!(syncs[0]["mode"], "first");
    assert_eq!(syncs[0]["result"], "success");
    for t in &report.tables {
        let e = tables
            .iter()
            .find(|e| e["table"] == t.table.as_str())
            .expect("table event");
        assert_eq!(e["rows_down"], t.rows_upserted + t.rows_removed);
        assert_eq!(e["sync_id"], syncs[0]["sync_id"]);
    }
    // Upload of a local change is counted on the next sync.
    let account = engine.list("accounts", None, 1).expect("list")[0]
        .id
        .clone();
    let mut fields = BTreeMap::new();
    fields.insert("city".to_owned(), Value::Text("X".into()));
    engine.update("accounts", &account, fields).expect("update");
    engine.sync().await.expect("sync");
    let summary = server
        .admin(
            "GET",
            &format!("/v1/admin/telemetry/summary?device={device}"),
            None,
        )
        .await;
    assert_eq!(summary["syncs"], 2);
    assert_eq!(summary["failures"], 0);
    assert_eq!(summary["rows_up"], 1);
    assert_eq!(summary["by_mode"]["forced"]["syncs"], 1);
    assert!(summary["duration_ms"]["p50"].is_number());

    // Disabled: nothing is collected or sent, even from a failed sync.
    engine
        .set_setting("telemetry_enabled", "false")
        .expect("off");
    engine.sync().await.expect("sync");
    net.up.store(false, Ordering::SeqCst);
    assert!(engine.sync().await.is_err());
    net.up.store(true, Ordering::SeqCst);
    engine.sync().await.expect("sync");
    assert_eq!(engine.pending_telemetry().expect("count"), 0);
    let after = server
        .admin(
            "GET",
            &format!("/v1/admin/telemetry/summary?device={device}"),
            None,
        )
        .await;
    assert_eq!(after["syncs"], 2);
    // And on again: the next sync is reported.
    engine.set_setting("telemetry_enabled", "true").expect("on");
    engine.sync().await.expect("sync");
    let again = server
        .admin(
            "GET",
            &format!("/v1/admin/telemetry/summary?device={device}"),
            None,
        )
        .await;
    assert_eq!(again["syncs"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_mode_reads_outside_the_profile_and_stores_nothing() {
    let server = Server::start().await;
    let token = server.technician().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("d.db");
    let clock = Arc::new(ManualClock::new(T0));
    let net = Net::new(&server.url);
    let engine = open(&path, &server, &token, &net, &clock);
    engine.sync().await.expect("sync");
    let local_bookings = engine.list("bookings", None, 10_000).expect("list").len();

    // Off by default; reads refuse.
    assert!(!engine.online_mode());
    assert!(
        engine
            .online_list("customer_assets", vec![], None, 10)
            .await
            .is_err()
    );

    // The administrator permits customer assets and bookings online.
    server
        .admin(
            "PUT",
            "/v1/admin/online-access",
            Some(json!({"tables": ["customer_assets", "bookings"]})),
        )
        .await;
    let events = Arc::new(Events::default());
    let _h = engine.add_event_listener(events.clone());
    engine.set_online_mode(true).await.expect("online");
    assert!(engine.online_mode());

    // A table outside the profile.
    let assets = engine
        .online_list("customer_assets", vec![], None, 50)
        .await
        .expect("assets");
    assert!(!assets.rows.is_empty());
    let one = engine
        .online_get("customer_assets", &assets.rows[0].id)
        .await
        .expect("asset");
    assert_eq!(one.id, assets.rows[0].id);
    // Rows of a profile table outside the profile (another technician's bookings), filtered.
    let theirs = engine
        .online_list(
            "bookings",
            vec![OnlineFilter {
                column: "resource_id".into(),
                value: Value::Text("tech2".into()),
            }],
            None,
            1000,
        )
        .await
        .expect("bookings");
    assert!(!theirs.rows.is_empty());
    assert!(
        theirs
            .rows
            .iter()
            .all(|r| r.fields["resource_id"] == Value::Text("tech2".into()))
    );
    // A table not permitted is refused with a typed error.
    let err = engine
        .online_list("work_order_products", vec![], None, 10)
        .await
        .expect_err("forbidden");
    assert!(
        matches!(err, fieldsync_core::Error::Server { status: 403, .. }),
        "{err}"
    );
    // A bad filter column is refused.
    assert!(
        engine
            .online_list(
                "bookings",
                vec![OnlineFilter {
                    column: "nope".into(),
                    value: Value::Null
                }],
                None,
                10
            )
            .await
            .is_err()
    );

    // Sync keeps running in online mode.
    engine.sync().await.expect("sync in online mode");

    // Nothing was stored.
    assert!(engine.get("bookings", &theirs.rows[0].id).is_err());
    assert_eq!(
        engine.list("bookings", None, 10_000).expect("list").len(),
        local_bookings
    );
    let conn = rusqlite::Connection::open(&path).expect("sqlite");
    let has_assets: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE name = 'customer_assets'",
            [],
            |r| r.get(0),
        )
        .expect("query");
    assert_eq!(has_assets, 0);

    // Losing the network leaves online mode, and says so.
    engine.set_os_network(OsNetwork {
        connected: false,
        metered: false,
        network_type: NetworkType::None,
    });
    assert!(!engine.online_mode());
    assert!(
        events
            .take()
            .iter()
            .any(|e| matches!(e, SyncEvent::OnlineModeChanged { online: false, .. }))
    );
    assert!(
        engine
            .online_list("customer_assets", vec![], None, 10)
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_and_catch_up_notifications_report_progress_and_completion() {
    let server = Server::start().await;
    let token = server.technician().await;
    let dispatcher = server.user("disp", "dispatcher", None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(T0));
    let net = Net::new(&server.url);
    let mut config = EngineConfig::new(dir.path().join("d.db"), &server.url, &token);
    config.page_size = 5;
    config.notifications.rows = 3;
    config.notifications.idle_secs = 3600;
    let engine = Engine::open_with(config, net.clone(), clock.clone()).expect("open");
    let events = Arc::new(Events::default());
    let _h = engine.add_event_listener(events.clone());
    engine.sync().await.expect("sync");
    let notes = notifications(&events.take());
    assert!(notes.iter().any(|n| n.0 == NotificationKind::InitialSync
        && n.1 == NotificationPhase::Progress
        && n.3.is_some()));
    let last = notes.last().expect("completion");
    assert_eq!(
        (last.0, last.1),
        (NotificationKind::InitialSync, NotificationPhase::Completed)
    );
    assert_eq!(Some(last.2), last.3);

    // A small change soon after: no notification.
    clock.advance(10 * MIN);
    engine.sync().await.expect("sync");
    assert!(notifications(&events.take()).is_empty());

    // Two hours idle and more rows than the threshold: a catch-up notification.
    let accounts = engine.list("accounts", None, 5).expect("list");
    for a in &accounts {
        let (code, _) = server
            .call(
                "PUT",
                &format!("/v1/records/accounts/{}", a.id),
                &dispatcher,
                Some(json!({"data": {"city": "Later"}})),
            )
            .await;
        assert_eq!(code, 200);
    }
    clock.advance(120 * MIN);
    engine.sync().await.expect("sync");
    let notes = notifications(&events.take());
    assert!(
        notes
            .iter()
            .any(|n| n.0 == NotificationKind::CatchUp && n.1 == NotificationPhase::Progress)
    );
    assert_eq!(
        notes.last().map(|n| (n.0, n.1)),
        Some((NotificationKind::CatchUp, NotificationPhase::Completed))
    );
}

/// A page whose head is sound (table, cursor, `has_more`) but whose rows do
/// not decode is a protocol error: nothing of it is applied, the cursor
/// stays, and the next sync downloads it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_whose_rows_do_not_decode_is_refused_whole() {
    let server = Server::start().await;
    let token = server.technician().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(T0));
    let net = Net::new(&server.url);
    let mut config = EngineConfig::new(dir.path().join("d.db"), &server.url, &token);
    config.page_size = 5;
    let engine = Engine::open_with(config, net.clone(), clock.clone()).expect("open");
    net.bad_rows.store(true, Ordering::SeqCst);
    let err = engine.sync().await.expect_err("bad rows");
    assert!(err.to_string().contains("does not decode"), "{err}");
    let status = engine.status().expect("status");
    assert!(
        status.tables.iter().all(|t| t.rows == 0),
        "nothing applied: {:?}",
        status.tables
    );
    net.bad_rows.store(false, Ordering::SeqCst);
    let report = engine.sync().await.expect("sync");
    assert!(report.tables.iter().any(|t| t.rows_upserted > 0));
    assert!(engine.list("accounts", None, 100).expect("list").len() > 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_downloads_begin_beside_the_tables_they_read_and_tables_at_one_depth_download_together()
 {
    let server = Server::start().await;
    // The shipped profile: bookings, then work orders (read through
    // bookings), then six tables reading work orders, and booking statuses.
    let token = server.user("tech1", "technician", None).await;
    server
        .admin(
            "POST",
            "/v1/admin/seed",
            Some(json!({"technicians": ["tech1"], "work_orders": 60, "seed": 5})),
        )
        .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(T0));
    let net = Net::new(&server.url);
    net.slow_pulls.store(true, Ordering::SeqCst);
    for parallel in [2, 1] {
        let mut config = EngineConfig::new(
            dir.path().join(format!("d{parallel}.db")),
            &server.url,
            &token,
        );
        config.page_size = 20;
        config.parallel_pulls = parallel;
        let engine = Engine::open_with(config, net.clone(), clock.clone()).expect("open");
        engine.sync().await.expect("sync");
        let spans = std::mem::take(&mut *net.spans.lock().expect("spans"));
        let profile = engine.profile().expect("profile");
        assert_eq!(profile.tables.len(), 9);
        // Each table's pulls, from its first request to its last answer.
        let mut extent: BTreeMap<String, (Instant, Instant)> = BTreeMap::new();
        for (table, sent, answered) in &spans {
            let e = extent.entry(table.clone()).or_insert((*sent, *answered));
            e.0 = e.0.min(*sent);
            e.1 = e.1.max(*answered);
        }
        assert_eq!(extent.len(), 9, "every table pulled: {extent:?}");
        // A first download begins once each table it reads has had a page
        // answered (its snapshot taken first), not before.
        let mut first_answer: BTreeMap<String, Instant> = BTreeMap::new();
        for (table, _, answered) in &spans {
            let e = first_answer.entry(table.clone()).or_insert(*answered);
            *e = (*e).min(*answered);
        }
        for t in &profile.tables {
            for d in t.depends_on() {
                assert!(
                    first_answer[&d] <= extent[&t.name].0,
                    "{} started before {d}, which it reads, had a page",
                    t.name
                );
            }
        }
        // With room for two, the work orders download beside the bookings
        // (they used to wait for the bookings' last page).
        assert_eq!(
            extent["work_orders"].0 < extent["bookings"].1,
            parallel > 1,
            "work orders begun before the last page of bookings with {parallel} allowed: {extent:?}"
        );
        let overlapping = spans
            .iter()
            .any(|(a, a0, a1)| spans.iter().any(|(b, b0, b1)| a != b && a0 < b1 && b0 < a1));
        assert_eq!(
            overlapping,
            parallel > 1,
            "pulls of two tables at once with {parallel} allowed"
        );
        // Each table's pages ask for an eighth of the page size (20 rows)
        // first, then twice as many each time, up to the page size.
        let log = net.take_log();
        let mut longest = 0;
        for t in &profile.tables {
            let prefix = format!("/v1/sync/pull?table={}&", t.name);
            let limits: Vec<u32> = log
                .iter()
                .filter(|p| p.starts_with(&prefix))
                .filter_map(|p| p.split("&limit=").nth(1))
                .filter_map(|rest| rest.split('&').next())
                .filter_map(|n| n.parse().ok())
                .collect();
            let ramp = [2, 4, 8, 16, 20];
            let expected: Vec<u32> = (0..limits.len())
                .map(|i| ramp.get(i).copied().unwrap_or(20))
                .collect();
            assert_eq!(limits, expected, "{}", t.name);
            longest = longest.max(limits.len());
        }
        assert!(longest >= 5, "a table of several pages: {longest}");
        if parallel > 1 {
            // Never more than allowed at once.
            for (_, s0, _) in &spans {
                let at_once = spans
                    .iter()
                    .filter(|(_, b0, b1)| b0 <= s0 && s0 < b1)
                    .count();
                assert!(at_once <= parallel as usize, "{at_once} pulls at once");
            }
        }
    }
}

/// A direct `sync()` asks once which tables changed and pulls only those:
/// nothing changed is one `POST /v1/sync/changes` and no pull; a changed
/// work order pulls only the work orders; local changes waiting pull their
/// table; with smart sync off every table is pulled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_sync_pulls_only_the_tables_that_changed() {
    let server = Server::start().await;
    let token = server.technician().await;
    let dispatcher = server.user("disp", "dispatcher", None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(T0));
    let net = Net::new(&server.url);
    let engine = open(&dir.path().join("d.db"), &server, &token, &net, &clock);

    let first = engine.sync().await.expect("first sync");
    assert!(first.skipped_unchanged.is_empty());
    assert_eq!(
        Net::pulled(&net.take_log()),
        vec!["accounts", "bookings", "work_orders"]
    );

    // Nothing changed: one check, no pull, every table counts as synced.
    clock.set(T0 + MIN);
    let quiet = engine.sync().await.expect("sync");
    let log = net.take_log();
    assert!(Net::pulled(&log).is_empty(), "{log:?}");
    assert_eq!(
        log.iter().filter(|p| *p == "/v1/sync/changes").count(),
        1,
        "{log:?}"
    );
    assert_eq!(
        quiet.skipped_unchanged,
        vec!["bookings", "work_orders", "accounts"]
    );
    for t in engine.status().expect("status").tables {
        assert_eq!(t.last_sync_at, Some(T0 + MIN), "{}", t.table);
    }

    // A work order changes on the server: only the work orders are pulled,
    // and the change arrives.
    let wo = engine.list("work_orders", None, 1).expect("list")[0]
        .id
        .clone();
    let (code, v) = server
        .call(
            "PUT",
            &format!("/v1/records/work_orders/{wo}"),
            &dispatcher,
            Some(json!({"data": {"priority": 9}})),
        )
        .await;
    assert_eq!(code, 200, "{v}");
    let one = engine.sync().await.expect("sync");
    assert_eq!(Net::pulled(&net.take_log()), vec!["work_orders"]);
    assert_eq!(one.skipped_unchanged, vec!["bookings", "accounts"]);
    assert_eq!(
        engine.get("work_orders", &wo).expect("wo").fields["priority"],
        Value::Integer(9)
    );

    // A local edit: uploaded, and its table pulled (the server's copy). The
    // check made alongside the profile's request predates the upload, so
    // it is made again after it, which sees the uploaded row.
    let account = engine.list("accounts", None, 1).expect("list")[0]
        .id
        .clone();
    engine
        .update(
            "accounts",
            &account,
            [("city".to_owned(), Value::Text("Shelbyville".into()))]
                .into_iter()
                .collect(),
        )
        .expect("edit");
    let pushed = engine.sync().await.expect("sync");
    assert_eq!(pushed.uploaded, 1);
    let log = net.take_log();
    assert_eq!(Net::pulled(&log), vec!["accounts"]);
    assert_eq!(
        log.iter().filter(|p| *p == "/v1/sync/changes").count(),
        2,
        "{log:?}"
    );

    // Smart sync off: every table is pulled, no check is made.
    engine.set_setting("smart_sync", "false").expect("setting");
    let all = engine.sync().await.expect("sync");
    let log = net.take_log();
    assert!(all.skipped_unchanged.is_empty());
    assert_eq!(
        Net::pulled(&log),
        vec!["accounts", "bookings", "work_orders"]
    );
    assert!(!log.iter().any(|p| p == "/v1/sync/changes"), "{log:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_jobs_finish_a_running_sync_and_run_the_opt_in_periodic_sync() {
    use fieldsync_core::{BackgroundJob, BackgroundJobOutcome, PeriodicSync};
    let server = Server::start().await;
    let token = server.technician().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(T0));
    let net = Net::new(&server.url);
    let engine = open(&dir.path().join("d.db"), &server, &token, &net, &clock);
    engine.check_network().await;
    let plan = |e: &Engine| e.sync_status().expect("status").background;

    // A sync runs in the foreground: no job is needed.
    net.hold_pulls.store(true, Ordering::SeqCst);
    let held = net.held.notified();
    let e = engine.clone();
    let run = tokio::spawn(async move { e.run_due().await });
    tokio::time::timeout(Duration::from_secs(30), held)
        .await
        .expect("a pull started");
    assert!(!plan(&engine).finish_running_sync);

    // The app goes to the background: the core asks for a job, whose body
    // waits for the running sync and starts nothing of its own.
    engine.set_app_active(false);
    assert!(plan(&engine).finish_running_sync);
    let e = engine.clone();
    let job =
        tokio::spawn(async move { e.run_background_job(BackgroundJob::FinishRunningSync).await });
    net.hold_pulls.store(false, Ordering::SeqCst);
    net.release.notify_waiters();
    let outcome = tokio::time::timeout(Duration::from_secs(60), job)
        .await
        .expect("job finished")
        .expect("task")
        .expect("job ok");
    assert_eq!(outcome, BackgroundJobOutcome::Synced);
    run.await.expect("task").expect("sync ok").expect("ran");
    assert!(!plan(&engine).finish_running_sync);
    assert_eq!(plan(&engine).periodic, None, "the periodic sync is opt-in");

    // Without the opt-in, a periodic job syncs nothing in the background.
    clock.advance(60 * MIN);
    assert_eq!(
        engine
            .run_background_job(BackgroundJob::Periodic)
            .await
            .expect("job"),
        BackgroundJobOutcome::Idle {
            blocker: Some(Blocker::AppInactive)
        }
    );

    // Opted in: the shortest interval; the job syncs the due tables in the
    // background, once.
    engine
        .set_setting("background_sync", "true")
        .expect("setting");
    assert_eq!(
        plan(&engine).periodic,
        Some(PeriodicSync {
            interval_secs: 300,
            unmetered_only: false
        })
    );
    net.take_log();
    assert_eq!(
        engine
            .run_background_job(BackgroundJob::Periodic)
            .await
            .expect("job"),
        BackgroundJobOutcome::Synced
    );
    assert!(
        net.take_log().iter().any(|p| p.starts_with("/v1/sync/")),
        "it synced"
    );
    assert!(matches!(
        engine
            .run_background_job(BackgroundJob::Periodic)
            .await
            .expect("job"),
        BackgroundJobOutcome::Idle {
            blocker: Some(Blocker::UpToDate)
        }
    ));

    // Wi-Fi only: unmetered in the plan, and a metered network holds the job.
    engine.set_setting("wifi_only", "true").expect("setting");
    assert!(plan(&engine).periodic.expect("periodic").unmetered_only);
    engine.set_os_network(OsNetwork {
        connected: true,
        metered: true,
        network_type: NetworkType::Cellular,
    });
    clock.advance(60 * MIN);
    assert_eq!(
        engine
            .run_background_job(BackgroundJob::Periodic)
            .await
            .expect("job"),
        BackgroundJobOutcome::Idle {
            blocker: Some(Blocker::MeteredNetwork)
        }
    );
    assert!(
        !net.take_log().iter().any(|p| p.starts_with("/v1/sync/")),
        "nothing synced"
    );
}
