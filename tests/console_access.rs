//! Access to the admin web console and the admin API, walked route by route
//! against a real `fieldsync server` process: without credentials, with a
//! technician's token and with a dispatcher's token nothing is reachable;
//! only the admin token opens a console session, and that session (kept in
//! the database) works on a second server instance sharing the database.

mod common;

use common::{ADMIN_TOKEN, Device, Server, encode_form};
use reqwest::redirect::Policy;
use serde_json::json;

/// Every admin API route with its methods.
const ADMIN_ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/admin/users"),
    ("POST", "/v1/admin/users"),
    ("DELETE", "/v1/admin/users/{id}"),
    ("POST", "/v1/admin/users/{id}/token"),
    ("GET", "/v1/admin/settings"),
    ("PUT", "/v1/admin/settings"),
    ("GET", "/v1/admin/sync-errors"),
    ("POST", "/v1/admin/sync-errors/{id}/retry"),
    ("GET", "/v1/admin/profiles"),
    ("GET", "/v1/admin/profiles/{name}"),
    ("PUT", "/v1/admin/profiles/{name}"),
    ("GET", "/v1/admin/model"),
    ("PUT", "/v1/admin/model"),
    ("GET", "/v1/admin/model/versions"),
    ("GET", "/v1/admin/devices"),
    ("POST", "/v1/admin/seed"),
    ("GET", "/v1/admin/telemetry"),
    ("GET", "/v1/admin/telemetry/summary"),
    ("GET", "/v1/admin/online-access"),
    ("PUT", "/v1/admin/online-access"),
];

/// Console routes open to anyone: the sign-in form and the two static
/// assets (no data in either).
const PUBLIC_CONSOLE: &[(&str, &str)] = &[
    ("GET", "/console/login"),
    ("POST", "/console/login"),
    ("GET", "/console/assets/console.css"),
    ("GET", "/console/assets/console.js"),
];

fn concrete(path: &str) -> String {
    path.replace("{name}", "field-service").replace("{id}", "1")
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .expect("client")
}

/// Sends a request; returns (status, headers, body text).
async fn send(
    server: &Server,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    cookie: Option<&str>,
    form: Option<&[(&str, &str)]>,
) -> (u16, reqwest::header::HeaderMap, String) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = client().request(method, format!("{}{}", server.url, path));
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    if let Some(f) = form {
        req = req
            .header("content-type", "application/x-www-form-urlencoded")
            .body(encode_form(f));
    } else {
        req = req.header("content-type", "application/json").body("{}");
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.text().await.unwrap_or_default())
}

/// Signs in with a token; returns the session cookie (`name=value`) if one was set.
async fn sign_in(server: &Server, token: &str) -> (u16, Option<String>, String) {
    let (status, headers, body) = send(
        server,
        "POST",
        "/console/login",
        None,
        None,
        Some(&[("token", token)]),
    )
    .await;
    let cookie = headers
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, cookie, body)
}

#[tokio::test]
async fn admin_routes_refuse_missing_and_device_tokens() {
    let server = Server::start().await;
    let tech = server.user("tech-1", "technician").await;
    let dispatcher = server.user("disp-1", "dispatcher").await;

    // The list above covers every admin route the router registers.
    let lib = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/server/src/lib.rs"))
        .expect("read server/src/lib.rs");
    for piece in lib.split('"').filter(|s| s.starts_with("/v1/admin")) {
        assert!(
            ADMIN_ROUTES.iter().any(|(_, p)| *p == piece),
            "admin route {piece} is not walked by this test"
        );
    }

    for (method, path) in ADMIN_ROUTES {
        let path = concrete(path);
        let (status, _) = server.call(method, &path, None, Some(json!({}))).await;
        assert_eq!(status, 401, "{method} {path} without a token");
        for (who, token) in [("technician", &tech), ("dispatcher", &dispatcher)] {
            let (status, body) = server
                .call(method, &path, Some(token), Some(json!({})))
                .await;
            assert_eq!(status, 403, "{method} {path} with a {who} token: {body}");
            assert_eq!(body["error"]["code"], "forbidden");
        }
        if *method == "GET" {
            let (status, _) = server.call(method, &path, Some(ADMIN_TOKEN), None).await;
            assert_eq!(status, 200, "{method} {path} with the admin token");
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn console_is_closed_without_an_admin_session() {
    let server = Server::start().await;
    let tech = server.user("tech-1", "technician").await;
    let dispatcher = server.user("disp-1", "dispatcher").await;
    let private: Vec<(&str, &str)> = fieldsync_server::console::ROUTES
        .iter()
        .copied()
        .filter(|r| !PUBLIC_CONSOLE.contains(r))
        .collect();
    assert!(private.len() >= 10, "{private:?}");

    // Device tokens cannot open a session.
    for (who, token) in [("technician", &tech), ("dispatcher", &dispatcher)] {
        let (status, cookie, body) = sign_in(&server, token).await;
        assert_eq!(status, 403, "{who} sign-in");
        assert!(cookie.is_none(), "{who} got a session cookie");
        assert!(body.contains("only admins"), "{body}");
    }
    let (status, cookie, _) = sign_in(&server, "not-a-token").await;
    assert_eq!((status, cookie), (401, None));

    // No session, a device token as bearer, or a made-up cookie: every
    // private console route turns the request away without data.
    let bogus = format!("fieldsync_console={}", "a".repeat(64));
    let attempts: [(&str, Option<&str>, Option<&str>); 4] = [
        ("no credentials", None, None),
        ("technician bearer", Some(tech.as_str()), None),
        ("dispatcher bearer", Some(dispatcher.as_str()), None),
        ("unknown session cookie", None, Some(bogus.as_str())),
    ];
    for (method, path) in &private {
        let path = concrete(path);
        for (who, bearer, cookie) in attempts {
            let (status, headers, body) = send(
                &server,
                method,
                &path,
                bearer,
                cookie,
                Some(&[("conflict_detection", "on")]),
            )
            .await;
            if *method == "GET" {
                assert_eq!(status, 303, "{method} {path} with {who}");
                assert_eq!(
                    headers.get("location").and_then(|v| v.to_str().ok()),
                    Some("/console/login"),
                    "{method} {path} with {who}"
                );
            } else {
                assert_eq!(status, 401, "{method} {path} with {who}: {body}");
            }
            assert!(!body.contains("tech-1"), "{method} {path} leaked data");
        }
    }
    // Nothing changed: the POSTs above tried to switch conflict detection on.
    let settings = server.admin("GET", "/v1/admin/settings", None).await;
    assert_eq!(settings["conflict_detection"], false);
    // A console session cookie does not open the admin API.
    let (_, cookie, _) = sign_in(&server, ADMIN_TOKEN).await;
    let cookie = cookie.expect("admin session");
    let pair = cookie.split(';').next().unwrap_or_default().to_owned();
    let (status, _, _) = send(&server, "GET", "/v1/admin/users", None, Some(&pair), None).await;
    assert_eq!(status, 401);
    server.stop().await;
}

#[tokio::test]
async fn admin_session_is_strict_http_only_and_shared_by_instances() {
    let first = Server::start().await;
    let second = Server::start_in(&first.data_dir, &[]).await;
    first.user("tech-1", "technician").await;

    let (status, cookie, _) = sign_in(&first, ADMIN_TOKEN).await;
    assert_eq!(status, 303);
    let cookie = cookie.expect("session cookie");
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(cookie.contains(attr), "{cookie} lacks {attr}");
    }
    let pair = cookie.split(';').next().unwrap_or_default().to_owned();

    // Every private console page opens with the session, on either instance.
    for server in [&first, &second] {
        for (method, path) in fieldsync_server::console::ROUTES {
            if *method != "GET" || PUBLIC_CONSOLE.contains(&(*method, *path)) {
                continue;
            }
            let path = concrete(path);
            let (status, headers, body) =
                send(server, method, &path, None, Some(&pair), None).await;
            if path == "/console" {
                assert_eq!(status, 303, "{path}");
                continue;
            }
            assert_eq!(status, 200, "{path}: {body}");
            assert!(
                headers.get("content-security-policy").is_some_and(|v| v
                    .to_str()
                    .unwrap_or_default()
                    .contains("default-src 'none'")),
                "{path} has no content security policy"
            );
        }
    }

    // A form without the session's anti-forgery token is refused; with it, it works.
    let (status, _, _) = send(
        &second,
        "POST",
        "/console/settings",
        None,
        Some(&pair),
        Some(&[("conflict_detection", "on")]),
    )
    .await;
    assert_eq!(status, 403);
    let (_, _, page) = send(&second, "GET", "/console/settings", None, Some(&pair), None).await;
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("csrf field")
        .to_owned();
    // A cross-site post is refused even with the token.
    let resp = client()
        .post(format!("{}/console/settings", second.url))
        .header("cookie", &pair)
        .header("origin", "http://evil.example")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(encode_form(&[
            ("conflict_detection", "on"),
            ("csrf", csrf.as_str()),
        ]))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 403);
    let (status, _, _) = send(
        &second,
        "POST",
        "/console/settings",
        None,
        Some(&pair),
        Some(&[("conflict_detection", "on"), ("csrf", csrf.as_str())]),
    )
    .await;
    assert_eq!(status, 303);
    let settings = first.admin("GET", "/v1/admin/settings", None).await;
    assert_eq!(settings["conflict_detection"], true);

    // Signing out on one instance ends the session on both.
    let (status, _, _) = send(
        &first,
        "POST",
        "/console/logout",
        None,
        Some(&pair),
        Some(&[("csrf", csrf.as_str())]),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _, _) = send(&second, "GET", "/console/devices", None, Some(&pair), None).await;
    assert_eq!(status, 303);
    second.stop().await;
    first.stop().await;
}

/// A lost device or a leaked token: rotating a user's token or deleting the
/// user stops the old token at once, on the device API, the admin API and
/// in the console sessions an admin user opened with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_or_deleting_a_user_revokes_its_token_and_console_sessions_at_once() {
    let server = Server::start().await;
    let tech = server.user("tech-1", "technician").await;
    let boss = server.user("boss", "admin").await;
    server.seed(&["tech-1"], 5).await;
    let dir = tempfile::tempdir().expect("dir");
    let device = Device::new(dir.path().join("d.db"), &server.url, &tech);
    device.ok(&["sync"]).await;
    let booking = device
        .local_rows("bookings")
        .into_keys()
        .next()
        .expect("a booking on the device");
    let profile_status = |token: String| {
        let server = &server;
        async move {
            server
                .call("GET", "/v1/profile", Some(&token), None)
                .await
                .0
        }
    };
    assert_eq!(profile_status(tech.clone()).await, 200);
    let (status, cookie, _) = sign_in(&server, &boss).await;
    assert_eq!(status, 303);
    let pair = cookie
        .expect("session cookie")
        .split(';')
        .next()
        .unwrap_or_default()
        .to_owned();
    let (status, _, body) = send(&server, "GET", "/console/devices", None, Some(&pair), None).await;
    assert_eq!(status, 200, "{body}");

    // Rotate the technician's token: the old one is refused, the new works.
    let rotated = server
        .admin("POST", "/v1/admin/users/tech-1/token", None)
        .await;
    assert_eq!(rotated["id"], "tech-1", "{rotated}");
    let new_tech = rotated["token"].as_str().expect("token").to_owned();
    assert_ne!(new_tech, tech);
    assert_eq!(profile_status(tech.clone()).await, 401);
    assert_eq!(profile_status(new_tech.clone()).await, 200);
    // The device still holding the old token: refused, its edit kept; signed
    // in again with the new one, the edit goes up.
    device
        .ok(&["put", "bookings", &booking, "--set", "notes=after rotation"])
        .await;
    let refused = device.run(&["sync"]).await;
    assert_eq!(refused.json["error"]["kind"], "unauthorized", "{refused:?}");
    assert_eq!(device.ok(&["status"]).await["pending_uploads"], 1);
    let again = Device::new(device.db.clone(), &server.url, &new_tech);
    assert_eq!(again.ok(&["sync"]).await["uploaded"], 1);

    // Rotate the admin user's: its console session ends, its old token no
    // longer opens the admin API.
    let (status, _) = server
        .call("POST", "/v1/admin/users/boss/token", Some(&boss), None)
        .await;
    assert_eq!(status, 200);
    let (status, headers, _) =
        send(&server, "GET", "/console/devices", None, Some(&pair), None).await;
    assert_eq!(status, 303, "the session outlived the rotation");
    assert_eq!(
        headers.get("location").and_then(|v| v.to_str().ok()),
        Some("/console/login")
    );
    let (status, _) = server
        .call("GET", "/v1/admin/users", Some(&boss), None)
        .await;
    assert_eq!(status, 401);

    // Delete the technician: the rotated token is refused too, and the
    // user is gone from the list; a second delete or a rotation is 404.
    let (status, _) = server
        .call_raw("DELETE", "/v1/admin/users/tech-1", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(status, 204);
    assert_eq!(profile_status(new_tech).await, 401);
    let users = server.admin("GET", "/v1/admin/users", None).await;
    assert!(
        !users
            .as_array()
            .expect("users")
            .iter()
            .any(|u| u["id"] == "tech-1"),
        "{users}"
    );
    for (method, path) in [
        ("DELETE", "/v1/admin/users/tech-1"),
        ("POST", "/v1/admin/users/tech-1/token"),
    ] {
        let (status, body) = server.call_raw(method, path, Some(ADMIN_TOKEN), None).await;
        assert_eq!(status, 404, "{method} {path}");
        assert_eq!(body["error"]["code"], "not_found", "{body}");
    }
}

/// The device list of the admin API says which app version each device
/// runs (from its telemetry) and its last refused or conflicting change
/// (from the Sync Errors log); before, both were always null there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_list_shows_app_versions_and_last_errors() {
    let server = Server::start().await;
    let tech = server.user("tech-1", "technician").await;
    server.seed(&["tech-1"], 3).await;
    let send = |path: &'static str, body: serde_json::Value| {
        let (server, tech) = (&server, tech.clone());
        async move {
            let resp = server
                .http
                .post(format!("{}{path}", server.url))
                .bearer_auth(&tech)
                .header("x-fieldsync-device", "dev-1")
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .expect("request");
            let status = resp.status().as_u16();
            let body: serde_json::Value =
                serde_json::from_str(&resp.text().await.expect("body")).expect("json");
            (status, body)
        }
    };
    let event = json!({"id": "e-1", "kind": "sync", "device_id": "dev-1", "sync_id": "s-1",
        "mode": "delta", "result": "success", "failure_type": null, "started_at": 1_800_000_000_000i64,
        "duration_ms": 5, "active_duration_ms": 5, "rows_up": 0, "rows_down": 0, "bytes_up": 0,
        "bytes_down": 0, "table": null, "network_type": "wifi", "app_version": "2.3.1",
        "device_model": "Pixel 8", "os_version": "Android 15"});
    let (status, body) = send("/v1/telemetry", json!({"events": [event]})).await;
    assert_eq!(status, 200, "{body}");
    let push = json!({"mutations": [{"idempotency_key": "k-1", "table": "bookings",
        "id": "bk-0000000", "op": "update", "base_version": 1, "data": {"no_such_column": 1}}]});
    let (status, body) = send("/v1/sync/push", push).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["status"], "rejected", "{body}");

    let devices = server.admin("GET", "/v1/admin/devices", None).await;
    let dev = devices
        .as_array()
        .expect("devices")
        .iter()
        .find(|d| d["id"] == "dev-1")
        .unwrap_or_else(|| panic!("dev-1 not listed: {devices}"));
    assert_eq!(dev["app_version"], "2.3.1", "{dev}");
    let last_error = dev["last_error"].as_str().unwrap_or_default();
    assert!(
        last_error.contains("bookings/bk-0000000") && last_error.contains("unknown_column"),
        "{dev}"
    );
}

/// The `; `-separated attributes of a `Set-Cookie` value, trimmed.
fn cookie_attributes(cookie: &str) -> Vec<String> {
    cookie.split(';').map(|a| a.trim().to_owned()).collect()
}

/// Issue #29, break 6: the console's session cookie never got `Secure`, even
/// behind TLS. It does when the server is told it sits behind a TLS proxy,
/// or the proxy says the browser came over HTTPS; over plain HTTP it does
/// not (a browser would drop it).
#[tokio::test]
async fn the_session_cookie_is_secure_behind_tls() {
    let plain = Server::start().await;
    let (status, cookie, _) = sign_in(&plain, ADMIN_TOKEN).await;
    assert_eq!(status, 303);
    let cookie = cookie.expect("session cookie");
    assert!(
        !cookie_attributes(&cookie).contains(&"Secure".to_owned()),
        "{cookie}"
    );
    let resp = client()
        .post(format!("{}/console/login", plain.url))
        .header("x-forwarded-proto", "https")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(encode_form(&[("token", ADMIN_TOKEN)]))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 303);
    let cookie = resp
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("session cookie")
        .to_owned();
    assert!(
        cookie_attributes(&cookie).contains(&"Secure".to_owned()),
        "X-Forwarded-Proto: https gave {cookie}"
    );
    plain.stop().await;

    let proxied = Server::start_with(&["--behind-tls-proxy"]).await;
    let (status, cookie, _) = sign_in(&proxied, ADMIN_TOKEN).await;
    assert_eq!(status, 303);
    let cookie = cookie.expect("session cookie");
    let attributes = cookie_attributes(&cookie);
    for attr in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(
            attributes.contains(&attr.to_owned()),
            "{cookie} lacks {attr}"
        );
    }
    // Signing out clears it with the same attributes.
    let pair = attributes[0].clone();
    let (_, _, page) = send(
        &proxied,
        "GET",
        "/console/settings",
        None,
        Some(&pair),
        None,
    )
    .await;
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("csrf field")
        .to_owned();
    let (status, headers, _) = send(
        &proxied,
        "POST",
        "/console/logout",
        None,
        Some(&pair),
        Some(&[("csrf", csrf.as_str())]),
    )
    .await;
    assert_eq!(status, 200);
    let cleared = headers
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("cleared cookie");
    let cleared = cookie_attributes(cleared);
    assert!(
        cleared.contains(&"Secure".to_owned()) && cleared.contains(&"Max-Age=0".to_owned()),
        "{cleared:?}"
    );
    proxied.stop().await;
}
