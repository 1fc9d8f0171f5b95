//! Deterministic simulation of devices, a dispatcher and the server under
//! network and process faults, driven from one seed.
//!
//! The server runs in-process (the real axum router and its storage: SQLite
//! in a temporary directory, or a fresh PostgreSQL database when the test
//! command runs the suites against PostgreSQL); each device is a real `Engine` on its own SQLite
//! file whose `Transport` is a simulated network. From the seed, the network
//! cuts requests before they reach the server, loses responses after the
//! server applied them, duplicates requests, replays stale pushes out of
//! order, truncates pages mid-body, delays requests (simulated clock), and
//! kills the device mid-request; the harness also restarts the server and
//! kills idle devices. After the run comes a quiet period on a healthy
//! network, then the invariants are checked:
//!
//! - every local change the device acknowledged reached the server: it has a
//!   receipt there, and it was applied exactly once or is in the Sync Errors
//!   log (conflict or rejected);
//! - no change was applied twice;
//! - every outbox is empty (no stuck state);
//! - each device holds exactly the rows its profile selects, with the
//!   server's versions (compared with a fresh device of the same user).
//!
//! `FIELDSYNC_SIM_SEEDS=N` runs N seeds (default 120), `FIELDSYNC_SIM_SEED=S`
//! replays one seed. A failing seed is printed with the command to replay it.

mod testdb;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use fieldsync_core::transport::{HttpRequest, HttpResponse, Method, Transport, TransportError};
use fieldsync_core::{Engine, EngineConfig, ManualClock, Value, Write, WriteOp};
use http_body_util::BodyExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value as Json, json};
use tower::ServiceExt;

const ADMIN: &str = "simulation-admin-token-0123";

/// Faults injected, per kind.
#[derive(Debug, Default, Clone)]
struct Stats {
    requests: u64,
    cut_before_server: u64,
    response_lost: u64,
    duplicated: u64,
    stale_push_replayed: u64,
    truncated_page: u64,
    delayed: u64,
    device_killed_mid_request: u64,
    device_killed_idle: u64,
    server_restarts: u64,
    local_writes: u64,
    /// Local transactions (a task created and a booking changed together).
    transactions: u64,
    dispatcher_edits: u64,
    syncs: u64,
    /// Local changes the server acknowledged (applied or logged as a
    /// conflict or a rejection).
    uploaded: u64,
    /// Conflicts in the server's Sync Errors log.
    conflicts: u64,
    /// Rows held by the device that held the fewest at the end.
    fewest_rows_held: u64,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.requests += o.requests;
        self.cut_before_server += o.cut_before_server;
        self.response_lost += o.response_lost;
        self.duplicated += o.duplicated;
        self.stale_push_replayed += o.stale_push_replayed;
        self.truncated_page += o.truncated_page;
        self.delayed += o.delayed;
        self.device_killed_mid_request += o.device_killed_mid_request;
        self.device_killed_idle += o.device_killed_idle;
        self.server_restarts += o.server_restarts;
        self.local_writes += o.local_writes;
        self.transactions += o.transactions;
        self.dispatcher_edits += o.dispatcher_edits;
        self.syncs += o.syncs;
        self.uploaded += o.uploaded;
        self.conflicts += o.conflicts;
        self.fewest_rows_held += o.fewest_rows_held;
    }

    /// Faults the network and the harness injected.
    fn faults(&self) -> u64 {
        self.cut_before_server
            + self.response_lost
            + self.duplicated
            + self.stale_push_replayed
            + self.truncated_page
            + self.delayed
            + self.device_killed_mid_request
            + self.device_killed_idle
            + self.server_restarts
    }

    /// Refuses a seed that exercised less than the minimum: one that held,
    /// edited, uploaded or broke too little proves nothing by passing.
    fn check_exercised(&self, detection: bool) -> Result<(), String> {
        let mut short = Vec::new();
        if self.fewest_rows_held < MIN_ROWS_HELD {
            short.push(format!(
                "a device held {} rows (at least {MIN_ROWS_HELD})",
                self.fewest_rows_held
            ));
        }
        if self.local_writes < MIN_LOCAL_WRITES {
            short.push(format!(
                "{} local edits (at least {MIN_LOCAL_WRITES})",
                self.local_writes
            ));
        }
        if self.uploaded < MIN_UPLOADED {
            short.push(format!(
                "{} edits uploaded (at least {MIN_UPLOADED})",
                self.uploaded
            ));
        }
        if detection && self.conflicts < 1 {
            short.push("no conflict met with conflict detection on".to_owned());
        }
        if self.faults() < MIN_FAULTS {
            short.push(format!(
                "{} faults injected (at least {MIN_FAULTS})",
                self.faults()
            ));
        }
        match short.is_empty() {
            true => Ok(()),
            false => Err(format!(
                "the seed exercised less than the minimum: {}",
                short.join("; ")
            )),
        }
    }
}

/// What every seed must reach (see [`Stats::check_exercised`]).
const MIN_ROWS_HELD: u64 = 20;
const MIN_LOCAL_WRITES: u64 = 3;
const MIN_UPLOADED: u64 = 2;
const MIN_FAULTS: u64 = 5;

/// The simulated network with the in-process server behind it.
struct Net {
    config: fieldsync_server::ServerConfig,
    server: Mutex<Option<Router>>,
    rng: Mutex<StdRng>,
    faults: AtomicBool,
    kill: tokio::sync::Notify,
    last_push: Mutex<Option<HttpRequest>>,
    stats: Mutex<Stats>,
    clock: Arc<ManualClock>,
}

impl Net {
    fn router(&self) -> Router {
        let mut guard = self.server.lock().unwrap();
        if guard.is_none() {
            *guard = Some(fieldsync_server::router(&self.config).expect("server starts"));
        }
        guard.clone().expect("router")
    }

    fn restart(&self) {
        // Dropping the router closes the database; the next request reopens it.
        *self.server.lock().unwrap() = None;
        self.stats.lock().unwrap().server_restarts += 1;
    }

    async fn forward(&self, req: &HttpRequest) -> HttpResponse {
        let method = match req.method {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
        };
        let mut builder = axum::http::Request::builder().method(method).uri(&req.path);
        for (k, v) in &req.headers {
            builder = builder.header(k, v);
        }
        if !req.body.is_empty() {
            builder = builder.header("content-type", "application/json");
        }
        let request = builder.body(Body::from(req.body.clone())).expect("request");
        let response = self
            .router()
            .oneshot(request)
            .await
            .expect("router answers");
        let status = response.status().as_u16();
        let content_encoding = response
            .headers()
            .get("content-encoding")
            .map(|v| v.to_str().expect("content-encoding").to_owned());
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
            .to_vec();
        HttpResponse {
            status,
            content_encoding,
            body,
        }
    }

    fn roll(&self) -> u32 {
        self.rng.lock().unwrap().random_range(0..100)
    }

    async fn call(&self, method: &str, path: &str, token: &str, body: Option<Json>) -> (u16, Json) {
        let req = HttpRequest {
            method: match method {
                "GET" => Method::Get,
                "POST" => Method::Post,
                "PUT" => Method::Put,
                _ => Method::Delete,
            },
            path: path.to_owned(),
            headers: vec![("authorization".into(), format!("Bearer {token}"))],
            body: body.map(|b| b.to_string().into_bytes()).unwrap_or_default(),
        };
        let resp = self.forward(&req).await;
        (
            resp.status,
            serde_json::from_slice(&resp.body).unwrap_or(Json::Null),
        )
    }
}

struct SimTransport(Arc<Net>);

#[async_trait]
impl Transport for SimTransport {
    async fn send(&self, request: HttpRequest) -> Result<HttpResponse, TransportError> {
        let net = &self.0;
        net.stats.lock().unwrap().requests += 1;
        let is_push = request.path.starts_with("/v1/sync/push");
        if !net.faults.load(Ordering::SeqCst) {
            return Ok(net.forward(&request).await);
        }
        let roll = net.roll();
        let result = match roll {
            0..4 => {
                net.stats.lock().unwrap().cut_before_server += 1;
                Err(TransportError("connection cut before the server".into()))
            }
            4..8 => {
                net.forward(&request).await;
                net.stats.lock().unwrap().response_lost += 1;
                Err(TransportError("response lost".into()))
            }
            8..11 => {
                net.forward(&request).await;
                net.stats.lock().unwrap().duplicated += 1;
                Ok(net.forward(&request).await)
            }
            11..14 => {
                let stale = net.last_push.lock().unwrap().clone();
                if let Some(stale) = stale {
                    net.forward(&stale).await;
                    net.stats.lock().unwrap().stale_push_replayed += 1;
                }
                Ok(net.forward(&request).await)
            }
            14..17 => {
                let mut resp = net.forward(&request).await;
                if resp.status == 200 && resp.body.len() > 8 {
                    resp.body.truncate(resp.body.len() / 2);
                    net.stats.lock().unwrap().truncated_page += 1;
                }
                Ok(resp)
            }
            17..19 => {
                // The device process dies during this request, before or after
                // the server handled it.
                if net.roll() < 50 {
                    net.forward(&request).await;
                }
                net.stats.lock().unwrap().device_killed_mid_request += 1;
                net.kill.notify_one();
                std::future::pending::<()>().await;
                unreachable!("a killed device never continues")
            }
            19..24 => {
                let ms = i64::from(net.roll()) * 100;
                net.clock.advance(ms);
                net.stats.lock().unwrap().delayed += 1;
                Ok(net.forward(&request).await)
            }
            _ => Ok(net.forward(&request).await),
        };
        if is_push {
            *net.last_push.lock().unwrap() = Some(request);
        }
        result
    }
}

struct Device {
    user: String,
    token: String,
    db: std::path::PathBuf,
    engine: Option<Arc<Engine>>,
    /// The run's seed (how many tables download at once).
    seed: u64,
}

impl Device {
    fn open(&mut self, net: &Arc<Net>) -> Arc<Engine> {
        if self.engine.is_none() {
            let config = EngineConfig::new(&self.db, "http://simulated", &self.token);
            let mut config = config;
            config.page_size = 10;
            // Tables downloaded one at a time make the order of requests,
            // and so the faults drawn for them, a function of the seed: odd
            // seeds (and the replay test's seed 7) replay exactly. Even
            // seeds download two tables at once, the engine's default, whose
            // interleaving follows the scheduler: a failure they find
            // replays with the same faults drawn, not always in the same
            // order.
            config.parallel_pulls = if self.seed.is_multiple_of(2) { 2 } else { 1 };
            self.engine = Some(
                Engine::open_with(
                    config,
                    Arc::new(SimTransport(net.clone())),
                    net.clock.clone(),
                )
                .expect("device opens"),
            );
        }
        self.engine.clone().expect("engine")
    }
}

/// Rows of one table: id -> (version, fields).
type TableRows = BTreeMap<String, (i64, BTreeMap<String, Value>)>;

/// Everything a device holds, per table.
fn snapshot(engine: &Engine) -> BTreeMap<String, TableRows> {
    let mut out = BTreeMap::new();
    let Some(profile) = engine.profile() else {
        return out;
    };
    for t in &profile.tables {
        let mut rows = BTreeMap::new();
        let mut after: Option<String> = None;
        loop {
            let page = engine.list(&t.name, after.as_deref(), 500).expect("list");
            if page.is_empty() {
                break;
            }
            after = page.last().map(|r| r.id.clone());
            for r in page {
                rows.insert(r.id.clone(), (r.version, r.fields));
            }
        }
        out.insert(t.name.clone(), rows);
    }
    out
}

/// Whether a run seeds the server with field-service data (always, but in
/// the test that proves a run without data fails its minimum).
#[derive(Clone, Copy, PartialEq)]
enum Data {
    Seeded,
    None,
}

/// Runs one seed; returns what it exercised, or the violated invariant.
async fn run_seed(seed: u64) -> Result<Stats, String> {
    run_seed_with(seed, Data::Seeded).await
}

async fn run_seed_with(seed: u64, data: Data) -> Result<Stats, String> {
    // Memory-backed files where the machine has them: the simulation checks
    // logic, not fsync; crash safety on disk is tested with real processes.
    let dir = match std::path::Path::new("/dev/shm").is_dir() {
        true => tempfile::tempdir_in("/dev/shm"),
        false => tempfile::tempdir(),
    }
    .map_err(|e| e.to_string())?;
    // Server and devices share one clock: the server's "today" in the
    // profile's relative dates is the instant the data was seeded around.
    let clock = Arc::new(ManualClock::new(1_796_000_000_000));
    let mut config = testdb::server_config(&dir.path().join("server"), ADMIN);
    config.clock = clock.clone();
    let net = Arc::new(Net {
        config,
        server: Mutex::new(None),
        rng: Mutex::new(StdRng::seed_from_u64(seed)),
        faults: AtomicBool::new(false),
        kill: tokio::sync::Notify::new(),
        last_push: Mutex::new(None),
        stats: Mutex::new(Stats::default()),
        clock: clock.clone(),
    });
    let detection = seed % 2 == 1;
    let mut tokens = BTreeMap::new();
    for (id, role) in [
        ("tech-1", "technician"),
        ("tech-2", "technician"),
        ("disp", "dispatcher"),
    ] {
        let (s, v) = net
            .call(
                "POST",
                "/v1/admin/users",
                ADMIN,
                Some(json!({"id": id, "name": id, "role": role})),
            )
            .await;
        if s != 201 {
            return Err(format!("create user: {s} {v}"));
        }
        tokens.insert(id, v["token"].as_str().unwrap_or_default().to_owned());
    }
    if data == Data::Seeded {
        let (s, _) = net
            .call(
                "POST",
                "/v1/admin/seed",
                ADMIN,
                Some(json!({"technicians": ["tech-1", "tech-2"], "work_orders": 12, "seed": seed})),
            )
            .await;
        if s != 200 {
            return Err(format!("seed: {s}"));
        }
    }
    net.call(
        "PUT",
        "/v1/admin/settings",
        ADMIN,
        Some(json!({"conflict_detection": detection})),
    )
    .await;

    let mut devices: Vec<Device> = [("tech-1", "a"), ("tech-1", "b"), ("tech-2", "c")]
        .iter()
        .map(|(user, name)| Device {
            user: (*user).to_owned(),
            token: tokens[user].clone(),
            db: dir.path().join(format!("{name}.db")),
            engine: None,
            seed,
        })
        .collect();
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let mut keys: BTreeMap<String, String> = BTreeMap::new(); // idempotency key -> user
    let mut local_ids: Vec<Vec<String>> = vec![Vec::new(); devices.len()];
    // Each local transaction: its user and the idempotency keys of its writes.
    let mut transactions: Vec<(String, Vec<String>)> = Vec::new();

    net.faults.store(true, Ordering::SeqCst);
    for step in 0..60u32 {
        let d = rng.random_range(0..devices.len());
        let action = rng.random_range(0..100);
        match action {
            0..30 => {
                // A sync, possibly killed mid-request.
                let engine = devices[d].open(&net);
                net.stats.lock().unwrap().syncs += 1;
                let killed = tokio::select! {
                    _ = engine.sync() => false,
                    _ = net.kill.notified() => true,
                };
                if killed {
                    drop(engine);
                    devices[d].engine = None;
                    // Let an in-flight local transaction finish, as a crash
                    // after its commit would.
                    tokio::time::sleep(Duration::from_millis(30)).await;
                }
            }
            30..65 => {
                let engine = devices[d].open(&net);
                if engine.profile().is_none() {
                    continue;
                }
                let before: BTreeSet<String> = engine
                    .outbox()
                    .expect("outbox")
                    .into_iter()
                    .map(|e| e.mutation.idempotency_key)
                    .collect();
                let result = match rng.random_range(0..4) {
                    0 => {
                        let bookings = engine.list("bookings", None, 100).expect("list");
                        if bookings.is_empty() {
                            continue;
                        }
                        let b = &bookings[rng.random_range(0..bookings.len())];
                        engine.update(
                            "bookings",
                            &b.id,
                            BTreeMap::from([
                                ("notes".into(), Value::Text(format!("dev{d}-step{step}"))),
                                ("travel_minutes".into(), Value::Integer(i64::from(step))),
                            ]),
                        )
                    }
                    1 => {
                        let wos = engine.list("work_orders", None, 100).expect("list");
                        if wos.is_empty() {
                            continue;
                        }
                        let wo = wos[rng.random_range(0..wos.len())].id.clone();
                        let id = format!("sim-{d}-{step}");
                        local_ids[d].push(id.clone());
                        engine.insert(
                            "work_order_service_tasks",
                            &id,
                            BTreeMap::from([
                                ("work_order_id".into(), Value::Text(wo)),
                                ("task_name".into(), Value::Text(format!("task {step}"))),
                                ("completed".into(), Value::Boolean(false)),
                            ]),
                        )
                    }
                    3 => {
                        // A task and its booking's note, together.
                        let bookings = engine.list("bookings", None, 100).expect("list");
                        if bookings.is_empty() {
                            continue;
                        }
                        let b = bookings[rng.random_range(0..bookings.len())].clone();
                        let Some(Value::Text(wo)) = b.fields.get("work_order_id").cloned() else {
                            continue;
                        };
                        let id = format!("sim-tx-{d}-{step}");
                        local_ids[d].push(id.clone());
                        let done = engine.transaction(vec![
                            Write {
                                op: WriteOp::Insert,
                                table: "work_order_service_tasks".into(),
                                id: id.clone(),
                                fields: BTreeMap::from([
                                    ("work_order_id".into(), Value::Text(wo)),
                                    ("task_name".into(), Value::Text(format!("tx {step}"))),
                                ]),
                            },
                            Write {
                                op: WriteOp::Update,
                                table: "bookings".into(),
                                id: b.id.clone(),
                                fields: BTreeMap::from([(
                                    "notes".into(),
                                    Value::Text(format!("task {id} added")),
                                )]),
                            },
                        ]);
                        if done.is_ok() {
                            let group: Vec<String> = engine
                                .outbox()
                                .expect("outbox")
                                .into_iter()
                                .filter(|e| !before.contains(&e.mutation.idempotency_key))
                                .filter(|e| e.mutation.transaction.is_some())
                                .map(|e| e.mutation.idempotency_key)
                                .collect();
                            if group.len() != 2 {
                                return Err(format!(
                                    "a transaction of two writes queued {} entries",
                                    group.len()
                                ));
                            }
                            transactions.push((devices[d].user.clone(), group));
                            net.stats.lock().unwrap().transactions += 1;
                        }
                        done.map(|mut records| {
                            records.pop().flatten().unwrap_or(fieldsync_core::Record {
                                table: String::new(),
                                id,
                                version: 0,
                                fields: BTreeMap::new(),
                            })
                        })
                    }
                    _ => {
                        if local_ids[d].is_empty() {
                            continue;
                        }
                        let id = local_ids[d][rng.random_range(0..local_ids[d].len())].clone();
                        engine.delete("work_order_service_tasks", &id).map(|_| {
                            fieldsync_core::Record {
                                table: String::new(),
                                id,
                                version: 0,
                                fields: BTreeMap::new(),
                            }
                        })
                    }
                };
                if result.is_ok() {
                    net.stats.lock().unwrap().local_writes += 1;
                    let after: BTreeSet<String> = engine
                        .outbox()
                        .expect("outbox")
                        .into_iter()
                        .map(|e| e.mutation.idempotency_key)
                        .collect();
                    // A change that cancels an unsent one (create then delete)
                    // leaves nothing to upload: that entry is gone by design.
                    for cancelled in before.difference(&after) {
                        keys.remove(cancelled);
                    }
                    for key in after {
                        keys.insert(key, devices[d].user.clone());
                    }
                }
            }
            65..80 if data == Data::None => {}
            65..80 => {
                let n = rng.random_range(0..12);
                let (s, v) = net
                    .call(
                        "PUT",
                        &format!("/v1/records/bookings/bk-{n:07}"),
                        &tokens["disp"],
                        Some(json!({"data": {"notes": format!("dispatcher step {step}")}})),
                    )
                    .await;
                if s != 200 {
                    return Err(format!("dispatcher edit: {s} {v}"));
                }
                net.stats.lock().unwrap().dispatcher_edits += 1;
            }
            80..86 => net.restart(),
            86..92 => {
                if devices[d].engine.take().is_some() {
                    net.stats.lock().unwrap().device_killed_idle += 1;
                }
            }
            _ => clock.advance(i64::from(rng.random_range(1..600u32)) * 1000),
        }
    }

    // Quiet period: a healthy network until every device has settled.
    net.faults.store(false, Ordering::SeqCst);
    for round in 0..2 {
        if round == 1 && data == Data::Seeded {
            // The same booking edited on a device and by the dispatcher
            // before the device syncs again: a conflict the server logs
            // when detection is on, the device's win when it is off. Every
            // seed meets one, whatever its draws.
            let engine = devices[0].open(&net);
            let bookings = engine
                .list("bookings", None, 1)
                .map_err(|e| e.to_string())?;
            let Some(b) = bookings.first() else {
                return Err("device 0 holds no booking after a healthy sync".into());
            };
            engine
                .update(
                    "bookings",
                    &b.id,
                    BTreeMap::from([("notes".into(), Value::Text("device, quiet period".into()))]),
                )
                .map_err(|e| e.to_string())?;
            net.stats.lock().unwrap().local_writes += 1;
            for entry in engine.outbox().map_err(|e| e.to_string())? {
                keys.insert(entry.mutation.idempotency_key, devices[0].user.clone());
            }
            let (s, v) = net
                .call(
                    "PUT",
                    &format!("/v1/records/bookings/{}", b.id),
                    &tokens["disp"],
                    Some(json!({"data": {"notes": "dispatcher, quiet period"}})),
                )
                .await;
            if s != 200 {
                return Err(format!("dispatcher edit: {s} {v}"));
            }
            net.stats.lock().unwrap().dispatcher_edits += 1;
        }
        for dev in devices.iter_mut() {
            let engine = dev.open(&net);
            let mut ok = false;
            for _ in 0..3 {
                if engine.sync().await.is_ok() {
                    ok = true;
                    break;
                }
            }
            if !ok {
                return Err(format!(
                    "device of {} cannot sync on a healthy network (stuck)",
                    dev.user
                ));
            }
        }
    }

    // Invariants.
    for dev in devices.iter_mut() {
        let engine = dev.open(&net);
        let pending = engine.pending_uploads().map_err(|e| e.to_string())?;
        if pending != 0 {
            return Err(format!(
                "device of {} still has {pending} pending upload(s)",
                dev.user
            ));
        }
    }
    let server_db = ServerDb::open(&dir.path().join("server"))?;
    let twice = server_db.count(
        "SELECT COUNT(*) FROM (SELECT idempotency_key FROM _fs_change_log WHERE idempotency_key IS NOT NULL GROUP BY idempotency_key HAVING COUNT(*) > 1) AS t",
        &[],
    )?;
    if twice > 0 {
        return Err(format!("{twice} change(s) applied twice"));
    }
    let mut uploaded = 0;
    for (key, user) in &keys {
        uploaded += 1;
        let receipt = server_db.text(
            "SELECT result FROM _fs_push_receipts WHERE user_id = ?1 AND idempotency_key = ?2",
            &[user.as_str(), key.as_str()],
        )?;
        let Some(receipt) = receipt else {
            return Err(format!(
                "local change {key} of {user} never reached the server"
            ));
        };
        let receipt: Json = serde_json::from_str(&receipt).map_err(|e| e.to_string())?;
        let applied = server_db.count(
            "SELECT COUNT(*) FROM _fs_change_log WHERE idempotency_key = ?1",
            &[key.as_str()],
        )?;
        match receipt["status"].as_str() {
            Some("applied") => {
                if applied != 1 && receipt["version"] != 0 {
                    return Err(format!("change {key} applied {applied} times"));
                }
            }
            Some(_) => {
                let logged = server_db.count(
                    "SELECT COUNT(*) FROM _fs_sync_errors WHERE idempotency_key = ?1",
                    &[key.as_str()],
                )?;
                if logged == 0 || applied != 0 {
                    return Err(format!(
                        "change {key} ({}) is not in Sync Errors",
                        receipt["status"]
                    ));
                }
            }
            None => return Err(format!("receipt of {key} has no status")),
        }
    }
    // A transaction's writes were applied all or none.
    for (user, group) in &transactions {
        let mut applied = 0;
        for key in group {
            let receipt = server_db
                .text(
                    "SELECT result FROM _fs_push_receipts WHERE user_id = ?1 AND idempotency_key = ?2",
                    &[user.as_str(), key.as_str()],
                )?
                .unwrap_or_default();
            let receipt: Json = serde_json::from_str(&receipt).map_err(|e| e.to_string())?;
            if receipt["status"] == "applied" {
                applied += 1;
            }
        }
        if applied != 0 && applied != group.len() {
            return Err(format!(
                "{applied} of the {} writes of a transaction were applied",
                group.len()
            ));
        }
    }
    let conflicts = server_db.count(
        "SELECT COUNT(*) FROM _fs_sync_errors WHERE kind = 'conflict'",
        &[],
    )?;
    let mut fewest_rows_held = u64::MAX;
    for (i, dev) in devices.iter_mut().enumerate() {
        let mut fresh = Device {
            user: dev.user.clone(),
            token: dev.token.clone(),
            db: dir.path().join(format!("fresh-{i}.db")),
            engine: None,
            seed,
        };
        let fresh_engine = fresh.open(&net);
        fresh_engine
            .sync()
            .await
            .map_err(|e| format!("fresh device: {e}"))?;
        let expected = snapshot(&fresh_engine);
        let got = snapshot(&dev.open(&net));
        let held: usize = got.values().map(BTreeMap::len).sum();
        fewest_rows_held = fewest_rows_held.min(held as u64);
        if got != expected {
            let diff: BTreeSet<String> = expected
                .iter()
                .filter(|(t, rows)| got.get(*t) != Some(rows))
                .map(|(t, _)| t.clone())
                .collect();
            return Err(format!(
                "device {i} of {} differs from the server in {diff:?}",
                dev.user
            ));
        }
    }
    let mut stats = net.stats.lock().unwrap().clone();
    stats.uploaded = uploaded;
    stats.conflicts = conflicts.max(0) as u64;
    stats.fewest_rows_held = fewest_rows_held;
    stats.check_exercised(detection)?;
    Ok(stats)
}

/// The server's database, read directly for the invariants.
enum ServerDb {
    Sqlite(rusqlite::Connection),
    Postgres(String),
}

impl ServerDb {
    fn open(data_dir: &std::path::Path) -> Result<ServerDb, String> {
        match testdb::database_url(data_dir) {
            Some(url) => Ok(ServerDb::Postgres(url)),
            None => rusqlite::Connection::open(data_dir.join("fieldsync.db"))
                .map(ServerDb::Sqlite)
                .map_err(|e| e.to_string()),
        }
    }

    /// The first column of the first row, if any; `?N` placeholders.
    fn first(&self, sql: &str, params: &[&str]) -> Result<Option<Json>, String> {
        match self {
            ServerDb::Sqlite(c) => {
                let mut stmt = c.prepare(sql).map_err(|e| e.to_string())?;
                let mut rows = stmt
                    .query(rusqlite::params_from_iter(params.iter()))
                    .map_err(|e| e.to_string())?;
                match rows.next().map_err(|e| e.to_string())? {
                    None => Ok(None),
                    Some(r) => Ok(Some(match r.get_ref(0).map_err(|e| e.to_string())? {
                        rusqlite::types::ValueRef::Integer(n) => json!(n),
                        rusqlite::types::ValueRef::Text(t) => json!(String::from_utf8_lossy(t)),
                        _ => Json::Null,
                    })),
                }
            }
            ServerDb::Postgres(url) => {
                let sql = fieldsync_server::sql::pg_placeholders(sql);
                let params: Vec<String> = params.iter().map(|p| p.to_string()).collect();
                testdb::blocking_pg(url, move |c| {
                    let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
                        params.iter().map(|p| p as _).collect();
                    let rows = c.query(sql.as_str(), &refs).map_err(|e| e.to_string())?;
                    Ok(rows.first().map(|r| {
                        r.try_get::<_, i64>(0)
                            .map(|n| json!(n))
                            .or_else(|_| r.try_get::<_, String>(0).map(|t| json!(t)))
                            .unwrap_or(Json::Null)
                    }))
                })
            }
        }
    }

    fn count(&self, sql: &str, params: &[&str]) -> Result<i64, String> {
        Ok(self
            .first(sql, params)?
            .and_then(|v| v.as_i64())
            .unwrap_or(0))
    }

    fn text(&self, sql: &str, params: &[&str]) -> Result<Option<String>, String> {
        Ok(self
            .first(sql, params)?
            .and_then(|v| v.as_str().map(str::to_owned)))
    }
}

fn seeds() -> Vec<u64> {
    if let Some(seed) = std::env::var("FIELDSYNC_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![seed];
    }
    let n: u64 = std::env::var("FIELDSYNC_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    (1..=n).collect()
}

#[cfg(not(feature = "planted-bug"))]
#[tokio::test]
async fn simulated_faults_lose_nothing_and_converge() {
    let mut total = Stats::default();
    let seeds = seeds();
    for &seed in &seeds {
        match run_seed(seed).await {
            Ok(stats) => total.add(&stats),
            Err(e) => panic!(
                "seed {seed} failed: {e}\nreplay with: FIELDSYNC_SIM_SEED={seed} cargo test --test simulation"
            ),
        }
    }
    println!(
        "simulation: {} seeds, nothing lost; {total:#?}",
        seeds.len()
    );
}

#[cfg(not(feature = "planted-bug"))]
#[tokio::test]
async fn a_seed_replays_exactly() {
    let first = run_seed(7).await.expect("seed 7");
    let second = run_seed(7).await.expect("seed 7 again");
    assert_eq!(format!("{first:?}"), format!("{second:?}"));
    assert!(first.requests > 0);
}

/// A run with nothing to sync must not pass: the minimum each seed must
/// exercise is what fails it.
#[cfg(not(feature = "planted-bug"))]
#[tokio::test]
async fn a_seed_without_data_fails_its_minimum() {
    let err = run_seed_with(7, Data::None)
        .await
        .expect_err("a seed that synced no data passed");
    assert!(
        err.starts_with("the seed exercised less than the minimum"),
        "{err}"
    );
    assert!(err.contains("rows (at least"), "{err}");
}

/// With the planted bug (outbox entries dropped before acknowledgement) the
/// harness must fail some seed on an invariant, not on its minimum:
/// `cargo test --test simulation --features planted-bug`.
#[cfg(feature = "planted-bug")]
#[tokio::test]
async fn harness_finds_the_planted_bug() {
    for seed in 1..=60 {
        match run_seed(seed).await {
            Ok(_) => {}
            Err(e) if e.starts_with("the seed exercised less than the minimum") => {
                panic!("seed {seed} did not exercise the system: {e}")
            }
            Err(e) => {
                println!("planted bug found by seed {seed}: {e}");
                return;
            }
        }
    }
    panic!("the harness did not find the planted bug in 60 seeds");
}
