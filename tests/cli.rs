//! The command line's rough edges, each checked by exit code, stdout and
//! stderr against a real server on loopback: values read by the column's
//! kind, clean `--json` output, a closed pipe, `--version`, the messages
//! that name the flag to use, `status` text, online reads, `watch`,
//! request timeouts and the progress line.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{Device, Server, bin};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

/// `fieldsync device` for `device`, in text mode (no `--json`) unless the
/// arguments ask for it.
fn text_command(device: &Device, args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.arg("device")
        .arg("--db")
        .arg(&device.db)
        .args(["--server", &device.url, "--token", &device.token])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("FIELDSYNC_LOG")
        .kill_on_drop(true);
    c
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn run_text(device: &Device, args: &[&str]) -> Run {
    let out = text_command(device, args).output().await.expect("run");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A server with sample data, and a synced device on the wide profile.
async fn synced(work_orders: usize) -> (Server, Device, tempfile::TempDir) {
    let server = Server::start().await;
    server.seed(&["tech-1"], work_orders).await;
    let token = server.wide_technician("tech-c").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let device = Device::new(dir.path().join("d.db"), &server.url, &token);
    device.ok(&["sync"]).await;
    (server, device, dir)
}

async fn first_id(device: &Device, table: &str) -> String {
    device.ok(&["list", table, "--limit", "1"]).await[0]["id"]
        .as_str()
        .expect("id")
        .to_owned()
}

#[tokio::test]
async fn version_is_printed_by_the_program_and_its_commands() {
    for args in [
        &["--version"][..],
        &["-V"],
        &["device", "--version"],
        &["server", "--version"],
    ] {
        let out = Command::new(bin()).args(args).output().await.expect("run");
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stdout = stdout.trim();
        assert!(stdout.starts_with("fieldsync"), "{stdout}");
        assert!(
            stdout.ends_with(&format!(" {}", env!("CARGO_PKG_VERSION"))),
            "{args:?}: {stdout}"
        );
        assert_eq!(stdout.lines().count(), 1);
        assert!(out.stderr.is_empty(), "{args:?}");
    }
}

#[tokio::test]
async fn set_values_are_read_as_the_columns_kind() {
    let (_server, device, _dir) = synced(3).await;
    let wo = first_id(&device, "work_orders").await;
    // A number into a text column is text; into an integer column a number.
    let record = device
        .ok(&[
            "put",
            "work_orders",
            &wo,
            "--set",
            "summary=123",
            "--set",
            "priority=2",
        ])
        .await;
    assert_eq!(record["fields"]["summary"], json!("123"), "{record}");
    assert_eq!(record["fields"]["priority"], json!(2), "{record}");
    let record = device
        .ok(&[
            "put",
            "work_orders",
            &wo,
            "--set",
            "summary=true",
            "--set",
            "instructions=null",
        ])
        .await;
    assert_eq!(record["fields"]["summary"], json!("true"));
    assert_eq!(record["fields"]["instructions"], Value::Null);

    // What the kind cannot read is refused, naming the column; nothing written.
    let out = device
        .run(&["put", "work_orders", &wo, "--set", "priority=high"])
        .await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert_eq!(out.json["error"]["kind"], "invalid_input");
    assert!(
        out.stderr
            .contains("--set priority: 'high' is not an integer"),
        "{}",
        out.stderr
    );
    assert_eq!(
        device.ok(&["get", "work_orders", &wo]).await["fields"]["priority"],
        json!(2)
    );
}

#[tokio::test]
async fn json_output_is_only_json_and_stderr_has_no_colour() {
    let (_server, device, _dir) = synced(3).await;
    let out = device
        .command(&["sync"])
        .env("FIELDSYNC_LOG", "debug")
        .output()
        .await
        .expect("run");
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let _: Value = serde_json::from_str(&stdout).expect("stdout is one JSON document");
    assert!(!stderr.trim().is_empty(), "debug log lines were written");
    assert!(
        !stderr.contains('\u{1b}'),
        "no colour codes off a terminal: {stderr:?}"
    );

    // An error: JSON on stdout, a plain line on stderr.
    let out = device.run(&["get", "work_orders", "no-such-id"]).await;
    assert_eq!(out.code, 3);
    assert_eq!(
        out.json["error"]["kind"], "record_not_found",
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.starts_with("fieldsync device: Record Not Found"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains('\u{1b}'));
}

#[tokio::test]
async fn a_closed_pipe_ends_the_output_quietly() {
    let (_server, device, _dir) = synced(300).await;
    let mut child = device
        .command(&["list", "work_orders", "--limit", "1000"])
        .spawn()
        .expect("spawn");
    // Read a little, then close the pipe as `head` does; the rest of the
    // output (well over a pipe's buffer) meets a closed pipe.
    let mut stdout = child.stdout.take().expect("stdout");
    let mut first = [0u8; 16];
    stdout.read_exact(&mut first).await.expect("some output");
    drop(stdout);
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .await
        .expect("stderr");
    let status = child.wait().await.expect("wait");
    assert_eq!(status.code(), Some(141), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}

#[tokio::test]
async fn reset_and_reads_after_it_say_what_to_do() {
    let (_server, device, _dir) = synced(3).await;
    let wo = first_id(&device, "work_orders").await;
    device
        .ok(&["put", "work_orders", &wo, "--set", "summary=x"])
        .await;
    let out = run_text(&device, &["reset"]).await;
    assert_eq!(out.code, 7);
    assert!(out.stdout.is_empty());
    assert!(
        out.stderr.contains(
            "1 unsynced change(s) would be lost; `fieldsync device reset --force` discards them"
        ),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("use force"));

    let out = run_text(&device, &["reset", "--force"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = run_text(&device, &["get", "bookings", "bk-1"]).await;
    assert_eq!(out.code, 2);
    assert_eq!(
        out.stderr.trim(),
        "fieldsync device: no offline profile on this device yet (sync once first), so table 'bookings' is unknown"
    );
}

#[tokio::test]
async fn status_text_lists_each_table_once() {
    let (_server, device, _dir) = synced(3).await;
    let wo = first_id(&device, "work_orders").await;
    device
        .ok(&["put", "work_orders", &wo, "--set", "summary=x"])
        .await;
    let out = run_text(&device, &["status"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let tables = device.ok(&["status"]).await["offline_status"]
        .as_array()
        .expect("tables")
        .len();
    assert!(tables >= 5);
    for t in ["work_orders", "bookings", "accounts"] {
        let lines = out
            .stdout
            .lines()
            .filter(|l| l.trim_start().starts_with(&format!("{t} ")))
            .count();
        assert_eq!(lines, 1, "{t} once:\n{}", out.stdout);
    }
    let line = out
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("work_orders "))
        .expect("work_orders");
    assert!(line.contains("(1 pending)"), "{line}");
    assert!(out.stdout.contains("pending uploads: 1"), "{}", out.stdout);
}

#[tokio::test]
async fn online_reads_say_server_and_forbidden() {
    let server = Server::start().await;
    server.seed(&["tech-1"], 3).await;
    let narrow = json!({"name": "narrow", "description": "bookings only", "tables": [
        {"name": "bookings", "columns": ["name", "resource_id"],
         "rules": [{"kind": "owned", "column": "resource_id"}], "sync_interval_secs": 300}]});
    server
        .admin("PUT", "/v1/admin/profiles/narrow", Some(narrow))
        .await;
    let token = server
        .user_with_profile("tech-n", "technician", Some("narrow"))
        .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let device = Device::new(dir.path().join("d.db"), &server.url, &token);
    device.ok(&["sync"]).await;

    let out = device.run(&["online", "get", "bookings", "bk-none"]).await;
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert_eq!(out.json["error"]["kind"], "record_not_found");
    assert!(
        out.stderr.contains("bookings/bk-none is not on the server"),
        "{}",
        out.stderr
    );

    // A table outside the profile and the online-access list: forbidden.
    let out = device.run(&["online", "get", "accounts", "acc-1"]).await;
    assert_eq!(out.code, 11, "{}", out.stderr);
    assert_eq!(out.json["error"]["kind"], "forbidden", "{}", out.stdout);
    assert!(out.stderr.contains("403"), "{}", out.stderr);
}

#[tokio::test]
async fn watch_keeps_watching_until_stopped() {
    let server = Server::start().await;
    server.seed(&["tech-1"], 3).await;
    let token = server.wide_technician("tech-w").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let device = Device::new(dir.path().join("d.db"), &server.url, &token);
    let mut child = device.command(&["watch"]).spawn().expect("spawn");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut seen = Vec::new();
    loop {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("a line")
            .expect("read")
            .expect("watch ended before its first sync finished");
        let v: Value = serde_json::from_str(&line).expect("a JSON line");
        let event = v["event"].as_str().unwrap_or_default().to_owned();
        seen.push(event.clone());
        assert_ne!(event, "watch_finished", "watch must not end by itself");
        if event == "sync_finished" {
            break;
        }
    }
    // Still watching: it stops when told, and says so.
    let pid = child.id().expect("pid") as i32;
    // SAFETY: kill(2) on the child's pid, which has not been reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let mut rest = Vec::new();
    while let Some(line) = lines.next_line().await.expect("read") {
        rest.push(serde_json::from_str::<Value>(&line).expect("a JSON line"));
    }
    let status = child.wait().await.expect("wait");
    assert_eq!(status.code(), Some(0));
    let last = rest.last().expect("a last line");
    assert_eq!(last["event"], "watch_stopped", "{rest:?}");
    assert_eq!(last["reason"], "terminate");
}

/// A server that answers the network probe and nothing else: every other
/// request is read and left without an answer.
async fn silent_server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let Ok(n) = socket.read(&mut buf).await else {
                    return;
                };
                let head = String::from_utf8_lossy(&buf[..n]);
                if head.starts_with("GET /v1/health") {
                    let body = r#"{"status":"ok","protocol":1}"#;
                    let _ = socket
                        .write_all(
                            format!(
                                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                                body.len()
                            )
                            .as_bytes(),
                        )
                        .await;
                    return;
                }
                // Hold the connection open, never answering.
                let _ = socket.read(&mut buf).await;
                tokio::time::sleep(Duration::from_secs(3600)).await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn a_server_that_never_answers_fails_after_the_request_timeout() {
    let url = silent_server().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let device = Device::new(dir.path().join("d.db"), &url, "some-token");
    // The default (120 s) would outlast this test's own limit.
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        device.run(&["--request-timeout-secs", "1", "sync"]),
    )
    .await
    .expect("the request timeout ended the sync");
    assert_eq!(out.code, 5, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(
        out.json["error"]["kind"], "network_unavailable",
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.contains("Network or Service Unavailable"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn a_progress_line_is_shown_on_request_and_not_in_a_pipe() {
    let server = Server::start().await;
    server.seed(&["tech-1"], 60).await;
    let token = server.wide_technician("tech-p").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut device = Device::new(dir.path().join("d.db"), &server.url, &token);
    device.page_size = 10;
    let out = run_text(
        &device,
        &["--page-size", "10", "--progress", "always", "sync"],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("\rsyncing work_orders: "),
        "{:?}",
        out.stderr
    );
    assert!(out.stderr.contains(" rows, "), "{:?}", out.stderr);
    assert!(out.stderr.contains(" down"), "{:?}", out.stderr);
    assert!(out.stdout.starts_with("synced in "), "{}", out.stdout);
    assert!(!out.stdout.contains("syncing"), "progress stays off stdout");

    // Off a terminal, no progress line by default.
    let other = Device::new(dir.path().join("e.db"), &server.url, &token);
    let out = run_text(&other, &["--page-size", "10", "sync"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!out.stderr.contains("syncing"), "{:?}", out.stderr);
}
