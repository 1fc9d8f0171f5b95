//! The reference server as the benchmarks run it: a real `fieldsync server`
//! process on 127.0.0.1, and a client for its HTTP API.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value as Json;
use tokio::io::{AsyncBufReadExt, BufReader};

/// The admin token every benchmark's server is started with.
pub const ADMIN: &str = "bench-admin-token-0123456789";

/// The server's HTTP API.
pub struct Api {
    pub http: reqwest::Client,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
}

impl Api {
    /// One request with `token`; panics unless the answer is a success.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Json>,
    ) -> Json {
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
        let status = resp.status();
        let text = resp.text().await.expect("body");
        assert!(status.is_success(), "{path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Json::Null)
    }
}

/// Starts `fieldsync server` on an ephemeral loopback port with `data` as
/// its data directory and `extra` arguments, and waits for its listening
/// line. The process is killed when the returned child is dropped; the
/// client's requests time out after `timeout` when one is given.
pub async fn start(
    data: &Path,
    extra: &[&str],
    timeout: Option<Duration>,
) -> (tokio::process::Child, Api) {
    let mut server = tokio::process::Command::new(env!("CARGO_BIN_EXE_fieldsync"))
        .args(["server", "--listen", "127.0.0.1:0", "--admin-token", ADMIN])
        .args(extra)
        .arg("--data-dir")
        .arg(data)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("server");
    let mut lines = BufReader::new(server.stdout.take().expect("stdout")).lines();
    let line = lines.next_line().await.expect("line").expect("listening");
    let addr = serde_json::from_str::<Json>(&line).expect("json")["address"]
        .as_str()
        .expect("addr")
        .to_owned();
    let mut http = reqwest::Client::builder();
    if let Some(t) = timeout {
        http = http.timeout(t);
    }
    let api = Api {
        http: http.build().expect("client"),
        url: format!("http://{addr}"),
    };
    (server, api)
}
