//! A server in the test's own process (`fieldsync_server::router` on a
//! 127.0.0.1 listener) whose clock is an injected `ManualClock`, and devices
//! (the core `Engine` on the same clock) over real HTTP and real SQLite
//! files: the harness of the suites that move time. A suite declares
//! `mod testdb;` and `mod inproc;` and may add its own `impl Env` helpers.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use fieldsync_core::time::parse_datetime;
use fieldsync_core::{Clock, Engine, EngineConfig, HttpTransport, ManualClock};
use serde_json::{Value, json};

use crate::testdb;

pub const ADMIN: &str = "test-admin-token-0123456789";

pub struct Env {
    pub url: String,
    pub http: reqwest::Client,
    pub clock: Arc<ManualClock>,
    pub dir: tempfile::TempDir,
    _task: tokio::task::JoinHandle<()>,
}

impl Env {
    /// A server whose clock reads 2026-03-10 08:00 UTC.
    pub async fn start() -> Env {
        Self::start_at("2026-03-10T08:00:00Z").await
    }

    /// A server whose clock reads `at` (RFC 3339).
    pub async fn start_at(at: &str) -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = Arc::new(ManualClock::new(parse_datetime(at).expect("time")));
        let mut config = testdb::server_config(&dir.path().join("server"), ADMIN);
        config.clock = clock.clone();
        let app = fieldsync_server::router(&config).expect("router");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Env {
            url,
            http: reqwest::Client::new(),
            clock,
            dir,
            _task: task,
        }
    }

    /// The shared clock's time, ms since the epoch.
    pub fn clock_now(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Calls the API with `token`; returns (status, JSON body or null).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self
            .http
            .request(m, format!("{}{path}", self.url))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(serde_json::to_vec(&b).expect("json"));
        }
        let resp = req.send().await.expect("send");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// An administrator's call that must succeed.
    pub async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (s, v) = self.call(method, path, ADMIN, body).await;
        assert!((200..300).contains(&s), "{method} {path}: {s} {v}");
        v
    }

    /// Creates a user (on `profile`, else the role's default); its token.
    pub async fn user(&self, id: &str, role: &str, profile: Option<&str>) -> String {
        self.user_in_zone(id, role, profile, None).await
    }

    /// [`Env::user`] with the user's own IANA time zone.
    pub async fn user_in_zone(
        &self,
        id: &str,
        role: &str,
        profile: Option<&str>,
        zone: Option<&str>,
    ) -> String {
        let mut body = json!({"id": id, "name": id, "role": role});
        if let Some(p) = profile {
            body["profile"] = json!(p);
        }
        if let Some(z) = zone {
            body["time_zone"] = json!(z);
        }
        self.admin("POST", "/v1/admin/users", Some(body)).await["token"]
            .as_str()
            .expect("token")
            .to_owned()
    }

    /// A back-office write of `table/id` with `token` that must succeed.
    pub async fn put(&self, token: &str, table: &str, id: &str, data: Value) {
        let (s, v) = self
            .call(
                "PUT",
                &format!("/v1/records/{table}/{id}"),
                token,
                Some(json!({"data": data})),
            )
            .await;
        assert!(s == 200 || s == 201, "{s}: {v}");
    }

    /// A device named `name` (its file in the test's directory) on the
    /// shared clock.
    pub fn device(&self, name: &str, token: &str) -> Arc<Engine> {
        self.device_with_pages(name, token, None).0
    }

    /// [`Env::device`] with its page size; also the device file's path.
    pub fn device_with_pages(
        &self,
        name: &str,
        token: &str,
        page_size: Option<u32>,
    ) -> (Arc<Engine>, PathBuf) {
        let path = self.dir.path().join(format!("{name}.db"));
        let mut config = EngineConfig::new(&path, &self.url, token);
        if let Some(p) = page_size {
            config.page_size = p;
        }
        let transport = Arc::new(
            HttpTransport::new(&self.url, Default::default(), &Default::default())
                .expect("transport"),
        );
        (
            Engine::open_with(config, transport, self.clock.clone()).expect("engine"),
            path,
        )
    }
}

/// The ids of the rows of `table` a device holds.
pub fn held(device: &Engine, table: &str) -> BTreeSet<String> {
    device
        .list(table, None, 1000)
        .expect("list")
        .into_iter()
        .map(|r| r.id)
        .collect()
}

/// A set of ids, to compare with [`held`].
pub fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| (*s).to_owned()).collect()
}
