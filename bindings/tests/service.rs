//! The exported sync service and credentials, called from Rust the way the
//! generated Kotlin and Swift call them, against the reference server
//! running in-process on a 127.0.0.1 listener (real HTTP, real SQLite
//! files): the token provider asked at open and once on a 401, status
//! delivered on local writes, the scheduler's Wi-Fi-only decision, settings
//! kept in the device database. Waits poll for a state, never for a time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use fieldsync_ffi::{
    Blocker, Engine, EngineConfig, FieldSyncError, NetworkType, OsNetwork, StatusListener,
    SyncFrequency, SyncStatus, TestClock, TokenProvider, Value,
};
use serde_json::{Value as Json, json};

const ADMIN: &str = "bindings-test-admin-token-0123";

struct Server {
    url: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start() -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = fieldsync_server::ServerConfig::new(dir.path().join("server"), ADMIN);
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

    /// A technician with seeded bookings; returns the token.
    async fn technician(&self) -> String {
        let v = self
            .admin(
                "POST",
                "/v1/admin/users",
                Some(json!({"id": "tech1", "name": "tech1", "role": "technician"})),
            )
            .await;
        self.admin(
            "POST",
            "/v1/admin/seed",
            Some(json!({"technicians": ["tech1"], "work_orders": 20, "seed": 3})),
        )
        .await;
        v["token"].as_str().expect("token").to_owned()
    }
}

fn config(server: &Server, path: &std::path::Path, token: &str) -> EngineConfig {
    EngineConfig {
        database_path: path.display().to_string(),
        server_url: server.url.clone(),
        token: token.into(),
        page_size: 100,
        tls_roots: None,
        tls_extra_roots_pem: None,
        app: None,
        encryption_key: None,
    }
}

/// Hands out the token it holds and records every ask.
struct Provider {
    token: Mutex<String>,
    asks: Mutex<Vec<bool>>,
}

impl TokenProvider for Provider {
    fn token(&self, refused: bool) -> Result<String, FieldSyncError> {
        self.asks.lock().unwrap().push(refused);
        Ok(self.token.lock().unwrap().clone())
    }
}

/// Records every status delivered.
#[derive(Default)]
struct Statuses(Mutex<Vec<SyncStatus>>);

impl StatusListener for Statuses {
    fn on_status(&self, status: SyncStatus) {
        self.0.lock().unwrap().push(status);
    }
}

impl Statuses {
    fn all(&self) -> Vec<SyncStatus> {
        self.0.lock().unwrap().clone()
    }

    /// Waits until a delivered status after the first `from` matches.
    async fn wait(&self, from: usize, what: &str, ok: impl Fn(&SyncStatus) -> bool) -> usize {
        for _ in 0..6000 {
            if let Some(i) = self.all().iter().skip(from).position(&ok) {
                return from + i;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        panic!("no status where {what}: {:#?}", self.all().last());
    }
}

fn bytes_contain(path: &std::path::Path, needle: &str) -> bool {
    let Ok(bytes) = std::fs::read(path) else {
        return false;
    };
    bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_token_is_asked_of_the_provider_once_and_the_sync_loses_nothing() {
    let server = Server::start().await;
    let first = server.technician().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("d.db");
    let provider = Arc::new(Provider {
        token: Mutex::new(first.clone()),
        asks: Mutex::new(Vec::new()),
    });
    let engine = Engine::open_with_token_provider(config(&server, &path, ""), provider.clone())
        .expect("open");
    assert_eq!(*provider.asks.lock().unwrap(), vec![false], "asked at open");
    engine.sync_now().await.expect("first sync");

    let booking = engine
        .list("bookings".into(), None, 1)
        .await
        .expect("list")
        .remove(0);
    engine
        .put(
            "bookings".into(),
            booking.id.clone(),
            HashMap::from([(
                "notes".into(),
                Value::Text {
                    value: "rotated".into(),
                },
            )]),
        )
        .await
        .expect("edit");

    // The server rotates the token: the old one is refused from now on.
    let rotated = server
        .admin("POST", "/v1/admin/users/tech1/token", None)
        .await["token"]
        .as_str()
        .expect("token")
        .to_owned();
    assert_ne!(rotated, first);
    *provider.token.lock().unwrap() = rotated.clone();

    let report = engine.sync_now().await.expect("sync after rotation");
    assert_eq!(report.uploaded, 1, "the edit went up");
    assert_eq!(
        *provider.asks.lock().unwrap(),
        vec![false, true],
        "asked once more, after the 401"
    );
    assert_eq!(engine.pending_uploads().await.unwrap(), 0);
    let (status, row) = server
        .call(
            "GET",
            &format!("/v1/records/bookings/{}", booking.id),
            &rotated,
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(row["row"]["notes"], json!("rotated"), "{row}");

    // Tokens live in memory only: not in the database nor its WAL.
    drop(engine);
    for file in ["d.db", "d.db-wal"] {
        for token in [&first, &rotated] {
            assert!(
                !bytes_contain(&dir.path().join(file), token),
                "a token is in {file}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_provider_a_refused_token_is_unauthorized_and_set_token_recovers() {
    let server = Server::start().await;
    let first = server.technician().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(config(&server, &dir.path().join("d.db"), &first)).expect("open");
    engine.sync_now().await.expect("sync");
    let rotated = server
        .admin("POST", "/v1/admin/users/tech1/token", None)
        .await["token"]
        .as_str()
        .expect("token")
        .to_owned();
    assert!(matches!(
        engine.sync_now().await,
        Err(FieldSyncError::Unauthorized { .. })
    ));
    assert!(matches!(
        engine.set_token("  ".into()),
        Err(FieldSyncError::InvalidInput { .. })
    ));
    engine.set_token(rotated).expect("set token");
    engine.sync_now().await.expect("sync with the new token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_write_delivers_a_status_with_one_pending_upload() {
    let server = Server::start().await;
    let token = server.technician().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(config(&server, &dir.path().join("d.db"), &token)).expect("open");
    engine.sync_now().await.expect("sync");
    let statuses = Arc::new(Statuses::default());
    let _handle = engine
        .add_status_listener(statuses.clone())
        .expect("listen");
    let first = statuses.wait(0, "the current one", |_| true).await;
    assert_eq!(statuses.all()[first].pending_uploads, 0);

    let id = engine.list("bookings".into(), None, 1).await.unwrap()[0]
        .id
        .clone();
    engine
        .update(
            "bookings".into(),
            id,
            HashMap::from([(
                "notes".into(),
                Value::Text {
                    value: "local".into(),
                },
            )]),
        )
        .await
        .expect("edit");
    let at = statuses
        .wait(first + 1, "one upload waits", |s| s.pending_uploads == 1)
        .await;
    assert_eq!(
        statuses.all()[at].icon,
        fieldsync_ffi::SyncIcon::PendingUploads
    );
    assert_eq!(engine.sync_status().await.unwrap().pending_uploads, 1);

    // The sync that uploads it shows progress, then nothing pending.
    engine.sync_now().await.expect("sync");
    let syncing = statuses.wait(at, "syncing", |s| s.progress.is_some()).await;
    statuses
        .wait(syncing, "uploaded", |s| {
            s.progress.is_none() && s.pending_uploads == 0
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_started_service_syncs_by_itself_and_wifi_only_holds_it_on_a_metered_network() {
    let server = Server::start().await;
    let token = server.technician().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("d.db");
    let clock = TestClock::new(1_800_000_000_000);
    let engine =
        Engine::open_for_tests(config(&server, &path, &token), None, clock.clone()).expect("open");
    let mut settings = engine.settings();
    settings.wifi_only = true;
    settings.frequency = SyncFrequency::Auto;
    engine.set_settings(settings).expect("settings");
    engine.set_os_network(OsNetwork {
        connected: true,
        metered: true,
        network_type: NetworkType::Cellular,
    });
    let statuses = Arc::new(Statuses::default());
    let _handle = engine
        .add_status_listener(statuses.clone())
        .expect("listen");
    engine.start().expect("start");
    let held = statuses
        .wait(0, "held by the metered network", |s| {
            s.waiting_for == Some(Blocker::MeteredNetwork)
        })
        .await;
    assert!(
        statuses.all()[..held].iter().all(|s| s.progress.is_none()),
        "no sync started on the metered network"
    );
    assert!(engine.offline_profile().is_none());

    // Wi-Fi: the service downloads the profile by itself.
    engine.set_os_network(OsNetwork {
        connected: true,
        metered: false,
        network_type: NetworkType::Wifi,
    });
    let started = statuses
        .wait(held, "syncing", |s| s.progress.is_some())
        .await;
    statuses
        .wait(started, "up to date", |s| {
            s.waiting_for == Some(Blocker::UpToDate)
        })
        .await;
    assert!(engine.offline_profile().is_some());
    engine.stop();

    // The settings were kept in the device database.
    drop(engine);
    let again = Engine::open(config(&server, &path, &token)).expect("reopen");
    assert!(again.settings().wifi_only);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_status_carries_settings_network_closure_and_online_mode() {
    let server = Server::start().await;
    let token = server.technician().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(config(&server, &dir.path().join("d.db"), &token)).expect("open");
    engine.sync_now().await.expect("sync");
    engine
        .set_setting("wifi_only".into(), "true".into())
        .expect("wifi only");
    let status = engine.status().await.expect("status");
    assert!(status.settings.wifi_only, "{:?}", status.settings);
    assert!(!status.online_mode);
    // The default profile's work orders are reached from the bookings.
    assert_eq!(
        status.dependency_closure.get("work_orders"),
        Some(&vec!["bookings".to_owned()]),
        "{:?}",
        status.dependency_closure
    );
    assert!(status.network.os.connected, "{:?}", status.network);
}
