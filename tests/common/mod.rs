//! Shared helpers of the end-to-end suites: a real `fieldsync server`
//! process on loopback, real `fieldsync device` processes on real SQLite
//! files, admin and dispatcher calls over real HTTP, and a TCP proxy that
//! injects network faults between them.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

#[path = "../testdb/mod.rs"]
pub mod testdb;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// A wide offline profile (see [`Server::wide_technician`]).
pub const WIDE_PROFILE: &str = r#"{"name": "field-service-wide", "description": "The backbone suites' profile: every work order, account and asset, and my bookings", "tables": [{"name": "bookings", "columns": ["name", "work_order_id", "resource_id", "booking_status_id", "status", "start_time", "end_time", "travel_minutes", "notes"], "rules": [{"kind": "owned", "column": "resource_id"}], "sync_interval_secs": 300}, {"name": "work_orders", "columns": ["name", "account_id", "customer_asset_id", "status", "priority", "summary", "instructions", "owner_id", "created_on", "modified_on"], "rules": [{"kind": "all"}], "sync_interval_secs": 300}, {"name": "work_order_incidents", "columns": ["work_order_id", "customer_asset_id", "incident_type", "description", "estimated_minutes"], "rules": [{"kind": "all"}], "sync_interval_secs": 300}, {"name": "work_order_products", "columns": ["work_order_id", "product_name", "quantity", "unit_price", "line_status"], "rules": [{"kind": "all"}], "sync_interval_secs": 300}, {"name": "work_order_services", "columns": ["work_order_id", "service_name", "duration_minutes", "line_status"], "rules": [{"kind": "all"}], "sync_interval_secs": 300}, {"name": "work_order_service_tasks", "columns": ["work_order_id", "task_name", "sequence", "completed", "percent_complete"], "rules": [{"kind": "all"}], "sync_interval_secs": 300}, {"name": "booking_statuses", "columns": ["name", "status"], "rules": [{"kind": "all"}], "sync_interval_secs": 86400}, {"name": "accounts", "columns": ["name", "address", "city", "phone", "modified_on"], "rules": [{"kind": "all"}], "sync_interval_secs": 3600}, {"name": "customer_assets", "columns": ["name", "account_id", "serial_number", "installed_on"], "rules": [{"kind": "all"}], "sync_interval_secs": 3600}]}"#;

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_fieldsync")
}

/// A `fieldsync server` process; killed on drop.
pub struct Server {
    pub child: Child,
    pub url: String,
    pub addr: String,
    pub data_dir: PathBuf,
    pub http: reqwest::Client,
    _temp: Option<tempfile::TempDir>,
}

impl Server {
    pub async fn start() -> Server {
        Self::start_with(&[]).await
    }

    pub async fn start_with(extra: &[&str]) -> Server {
        let temp = tempfile::tempdir().expect("tempdir");
        let dir = temp.path().join("server");
        let mut s = Self::start_in(&dir, extra).await;
        s._temp = Some(temp);
        s
    }

    /// `fieldsync server` on a free loopback port with the tests' admin
    /// token and `data_dir`; the caller adds the database and the rest.
    pub fn command(data_dir: &Path) -> Command {
        let mut command = Command::new(bin());
        command
            .args([
                "server",
                "--listen",
                "127.0.0.1:0",
                "--admin-token",
                ADMIN_TOKEN,
                "--data-dir",
            ])
            .arg(data_dir);
        command
    }

    pub async fn start_in(data_dir: &Path, extra: &[&str]) -> Server {
        Self::start_prepared(data_dir, extra, |_| {}).await
    }

    /// [`Server::start_in`], with `prepare` given the command last (to pipe
    /// its stderr, limit its resources, …).
    pub async fn start_prepared(
        data_dir: &Path,
        extra: &[&str],
        prepare: impl FnOnce(&mut Command),
    ) -> Server {
        let database = match testdb::database_url(data_dir) {
            Some(url) => vec!["--database-url".to_owned(), url],
            None => Vec::new(),
        };
        let mut command = Self::command(data_dir);
        command
            .args(&database)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        prepare(&mut command);
        let mut child = command.spawn().expect("spawn server");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("server start timed out")
            .expect("read")
            .expect("server printed nothing");
        let v: Value = serde_json::from_str(&line).expect("listening line");
        let addr = v["address"].as_str().expect("address").to_owned();
        let expected = if database.is_empty() {
            "sqlite"
        } else {
            "postgresql"
        };
        assert_eq!(
            v["database"], expected,
            "the server runs on the back end under test"
        );
        Server {
            child,
            url: format!("http://{addr}"),
            addr,
            data_dir: data_dir.to_owned(),
            http: reqwest::Client::new(),
            _temp: None,
        }
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }

    /// Calls the API; returns (status, JSON body or null).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.call_raw(
            method,
            path,
            token,
            body.map(|b| b.to_string().into_bytes()),
        )
        .await
    }

    pub async fn call_raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(method, format!("{}{}", self.url, path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.call(method, path, Some(ADMIN_TOKEN), body).await;
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {v}"
        );
        v
    }

    /// Creates a user; returns its token.
    pub async fn user(&self, id: &str, role: &str) -> String {
        self.user_with_profile(id, role, None).await
    }

    pub async fn user_with_profile(&self, id: &str, role: &str, profile: Option<&str>) -> String {
        let mut body = json!({"id": id, "name": id, "role": role});
        if let Some(p) = profile {
            body["profile"] = json!(p);
        }
        let v = self.admin("POST", "/v1/admin/users", Some(body)).await;
        v["token"].as_str().expect("token").to_owned()
    }

    /// Creates a technician on a wide profile (every work order, account and
    /// asset; the technician's own bookings) for suites that exercise sync
    /// mechanics rather than the default profile's filters; returns its token.
    pub async fn wide_technician(&self, id: &str) -> String {
        let profile: Value = serde_json::from_str(WIDE_PROFILE).expect("wide profile");
        self.admin(
            "PUT",
            "/v1/admin/profiles/field-service-wide",
            Some(profile),
        )
        .await;
        self.user_with_profile(id, "technician", Some("field-service-wide"))
            .await
    }

    pub async fn seed(&self, technicians: &[&str], work_orders: usize) -> Value {
        self.admin(
            "POST",
            "/v1/admin/seed",
            Some(json!({"technicians": technicians, "work_orders": work_orders, "seed": 11})),
        )
        .await["rows"]
            .clone()
    }

    pub async fn set_conflict_detection(&self, on: bool) {
        self.admin(
            "PUT",
            "/v1/admin/settings",
            Some(json!({"conflict_detection": on})),
        )
        .await;
    }

    /// Every live row of a table as a dispatcher sees it: id -> (version, row).
    pub async fn rows(
        &self,
        token: &str,
        table: &str,
    ) -> std::collections::BTreeMap<String, (i64, Value)> {
        let mut out = std::collections::BTreeMap::new();
        let mut after: Option<String> = None;
        loop {
            let mut path = format!("/v1/records/{table}?limit=1000");
            if let Some(a) = &after {
                path.push_str(&format!("&after={a}"));
            }
            let (status, v) = self.call("GET", &path, Some(token), None).await;
            assert_eq!(status, 200, "{v}");
            for r in v["rows"].as_array().expect("rows") {
                out.insert(
                    r["id"].as_str().unwrap().to_owned(),
                    (r["version"].as_i64().unwrap(), r["row"].clone()),
                );
            }
            match v["next_after"].as_str() {
                Some(a) => after = Some(a.to_owned()),
                None => return out,
            }
        }
    }
}

/// Output of a device command.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub json: Value,
    pub stdout: String,
    pub stderr: String,
}

/// A headless device: a database file, a server URL and a token.
#[derive(Clone)]
pub struct Device {
    pub db: PathBuf,
    pub url: String,
    pub token: String,
    pub page_size: u32,
}

impl Device {
    pub fn new(db: PathBuf, url: &str, token: &str) -> Device {
        Device {
            db,
            url: url.to_owned(),
            token: token.to_owned(),
            page_size: 1000,
        }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.arg("device")
            .arg("--db")
            .arg(&self.db)
            .args([
                "--server",
                &self.url,
                "--token",
                &self.token,
                "--json",
                "--page-size",
            ])
            .arg(self.page_size.to_string())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        c
    }

    pub async fn run(&self, args: &[&str]) -> Out {
        let out = self.command(args).output().await.expect("run device");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        Out {
            code: out.status.code().unwrap_or(-1),
            json: serde_json::from_str(&stdout).unwrap_or(Value::Null),
            stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs a command that must succeed.
    pub async fn ok(&self, args: &[&str]) -> Value {
        let out = self.run(args).await;
        assert_eq!(
            out.code, 0,
            "device {args:?} failed: {}\n{}",
            out.stdout, out.stderr
        );
        out.json
    }

    /// Rows of a table on the device, read straight from its SQLite file.
    pub fn local_rows(&self, table: &str) -> std::collections::BTreeMap<String, i64> {
        let conn = rusqlite::Connection::open_with_flags(
            &self.db,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("open");
        let mut stmt = conn
            .prepare(&format!("SELECT id, _fs_version FROM \"{table}\""))
            .expect("prepare");
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .expect("query");
        rows.map(|r| r.expect("row")).collect()
    }
}

/// Fault modes of the proxy.
pub const PASS: u8 = 0;
/// Forward the next push, let the server apply it, then cut the connection
/// before the response reaches the device (one shot).
pub const LOSE_NEXT_PUSH_RESPONSE: u8 = 1;
/// Answer every pull with a truncated JSON body.
pub const GARBAGE_PULL: u8 = 2;
/// Refuse every connection (network down).
pub const DOWN: u8 = 3;

/// A TCP proxy in front of the server that injects faults.
pub struct Proxy {
    pub url: String,
    pub mode: Arc<AtomicU8>,
    pub push_responses_lost: Arc<AtomicU8>,
}

impl Proxy {
    pub async fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let mode = Arc::new(AtomicU8::new(PASS));
        let lost = Arc::new(AtomicU8::new(0));
        let upstream = upstream.to_owned();
        let (m, l) = (mode.clone(), lost.clone());
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let (m, l, upstream) = (m.clone(), l.clone(), upstream.clone());
                tokio::spawn(async move {
                    let _ = proxy_connection(client, &upstream, m, l).await;
                });
            }
        });
        Proxy {
            url,
            mode,
            push_responses_lost: lost,
        }
    }

    pub fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }
}

async fn proxy_connection(
    client: TcpStream,
    upstream: &str,
    mode: Arc<AtomicU8>,
    lost: Arc<AtomicU8>,
) -> std::io::Result<()> {
    if mode.load(Ordering::SeqCst) == DOWN {
        return Ok(());
    }
    let server = TcpStream::connect(upstream).await?;
    let (mut sr, mut sw) = server.into_split();
    let (mut cr, cw) = client.into_split();
    let cw = Arc::new(tokio::sync::Mutex::new(cw));
    let drop_response = Arc::new(AtomicBool::new(false));
    let (dr, cw_up, mode_up) = (drop_response.clone(), cw.clone(), mode.clone());
    // Client to server: watch each request as it starts.
    let up = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = cr.read(&mut buf).await?;
            if n == 0 {
                let _ = sw.shutdown().await;
                return Ok::<_, std::io::Error>(());
            }
            let chunk = &buf[..n];
            let current = mode_up.load(Ordering::SeqCst);
            if current == DOWN {
                let _ = cw_up.lock().await.shutdown().await;
                return Ok(());
            }
            if current == GARBAGE_PULL && chunk.starts_with(b"GET /v1/sync/pull") {
                let body = "{\"rows\": [[1, \"x\"";
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let mut w = cw_up.lock().await;
                w.write_all(resp.as_bytes()).await?;
                let _ = w.shutdown().await;
                return Ok(());
            }
            if chunk.starts_with(b"POST /v1/sync/push")
                && mode_up
                    .compare_exchange(
                        LOSE_NEXT_PUSH_RESPONSE,
                        PASS,
                        Ordering::SeqCst,
                        Ordering::SeqCst,
                    )
                    .is_ok()
            {
                dr.store(true, Ordering::SeqCst);
            }
            sw.write_all(chunk).await?;
        }
    });
    // Server to client.
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match sr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if drop_response.load(Ordering::SeqCst) {
            // The server answered: it has applied the push. Lose the answer.
            lost.fetch_add(1, Ordering::SeqCst);
            break;
        }
        if cw.lock().await.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    up.abort();
    let _ = cw.lock().await.shutdown().await;
    Ok(())
}

/// Server row counts per table, from the seed result.
pub fn seeded(rows: &Value, table: &str) -> u64 {
    rows[table].as_u64().unwrap_or(0)
}

/// An `application/x-www-form-urlencoded` body.
pub fn encode_form(fields: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}
