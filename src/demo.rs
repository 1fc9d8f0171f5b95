//! `fieldsync demo`: a server on embedded SQLite with sample field-service
//! data, and a device walked through first sync, an offline edit, a
//! dispatcher's edit of the same booking, and sync under both conflict
//! settings. Everything runs over real HTTP on loopback.

use std::collections::BTreeMap;
use std::process::ExitCode;

use fieldsync_core::{Engine, EngineConfig, Value};
use serde_json::{Value as Json, json};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Work orders to generate (each with a booking and child rows).
    #[arg(long, default_value_t = 300)]
    work_orders: usize,
    /// Technicians to spread the bookings over.
    #[arg(long, default_value_t = 3)]
    technicians: usize,
    /// Keep the data in this directory instead of a temporary one.
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

struct Http {
    client: reqwest::Client,
    base: String,
}

impl Http {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Json>,
    ) -> Result<Json, String> {
        let mut req = self
            .client
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("{status}: {text}"));
        }
        if text.is_empty() {
            return Ok(Json::Null);
        }
        serde_json::from_str(&text).map_err(|e| e.to_string())
    }
}

fn step(n: u32, title: &str) {
    println!("\n== {n}. {title}");
}

fn show(v: &Value) -> String {
    v.to_json().to_string()
}

pub async fn run(args: DemoArgs) -> ExitCode {
    match demo(args).await {
        Ok(()) => {
            println!("\ndemo finished");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fieldsync demo failed: {e}");
            ExitCode::from(1)
        }
    }
}

async fn demo(args: DemoArgs) -> Result<(), String> {
    let temp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let dir = args.dir.clone().unwrap_or_else(|| temp.path().to_owned());
    let admin_token = "demo-admin-token-0123456789";
    let config = fieldsync_server::ServerConfig::new(dir.join("server"), admin_token);
    let app = fieldsync_server::router(&config).map_err(|e| e.message)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let http = Http {
        client: reqwest::Client::new(),
        base: format!("http://{addr}"),
    };
    let post = reqwest::Method::POST;
    let put = reqwest::Method::PUT;
    let get = reqwest::Method::GET;

    step(
        1,
        &format!(
            "Server on http://{addr} (embedded SQLite in {})",
            dir.join("server").display()
        ),
    );
    let mut techs = Vec::new();
    for i in 1..=args.technicians.max(1) {
        let u = http
            .call(post.clone(), "/v1/admin/users", admin_token, Some(json!({"id": format!("tech-{i}"), "name": format!("Technician {i}"), "role": "technician"})))
            .await?;
        techs.push(u);
    }
    let dispatcher = http
        .call(
            post.clone(),
            "/v1/admin/users",
            admin_token,
            Some(json!({"id": "dispatch-1", "name": "Dispatcher", "role": "dispatcher"})),
        )
        .await?;
    let tech_ids: Vec<String> = techs
        .iter()
        .filter_map(|u| u["id"].as_str().map(str::to_owned))
        .collect();
    let seeded = http
        .call(
            post.clone(),
            "/v1/admin/seed",
            admin_token,
            Some(json!({"technicians": tech_ids, "work_orders": args.work_orders, "seed": 7})),
        )
        .await?;
    println!("seeded sample data: {}", seeded["rows"]);
    let tech_token = techs[0]["token"].as_str().ok_or("no token")?.to_owned();
    let dispatcher_token = dispatcher["token"].as_str().ok_or("no token")?.to_owned();

    step(2, "First sync of technician tech-1's device");
    let engine = Engine::open(EngineConfig::new(
        dir.join("device.db"),
        &http.base,
        &tech_token,
    ))
    .map_err(|e| e.to_string())?;
    let report = engine.sync().await.map_err(|e| e.to_string())?;
    for t in &report.tables {
        println!(
            "  {:<28} {:>6} rows in {} page(s)",
            t.table, t.rows_upserted, t.pages
        );
    }
    let bookings = engine
        .list("bookings", None, 1)
        .map_err(|e| e.to_string())?;
    let booking = bookings
        .first()
        .ok_or("the technician has no bookings")?
        .clone();
    println!(
        "the device holds only tech-1's bookings, for example {}",
        booking.id
    );

    step(3, "Offline edit on the device (no network needed)");
    engine
        .update(
            "bookings",
            &booking.id,
            BTreeMap::from([(
                "notes".into(),
                Value::Text("Gate code 4711, ring twice".into()),
            )]),
        )
        .map_err(|e| e.to_string())?;
    println!(
        "pending uploads: {}",
        engine.pending_uploads().map_err(|e| e.to_string())?
    );

    step(4, "A dispatcher edits the same booking on the server");
    http.call(
        put.clone(),
        &format!("/v1/records/bookings/{}", booking.id),
        &dispatcher_token,
        Some(json!({"data": {"notes": "Customer asks to come after 2 pm"}})),
    )
    .await?;
    println!("server notes now: \"Customer asks to come after 2 pm\"");

    step(
        5,
        "Sync with conflict detection OFF (the default): the device's change wins",
    );
    let report = engine.sync().await.map_err(|e| e.to_string())?;
    let server_row = http
        .call(
            get.clone(),
            &format!("/v1/records/bookings/{}", booking.id),
            &dispatcher_token,
            None,
        )
        .await?;
    println!(
        "uploaded {}, conflicts {}; server notes now: {}",
        report.uploaded,
        report.conflicts.len(),
        server_row["row"]["notes"]
    );

    step(
        6,
        "Conflict detection ON: edit on both sides again, then sync",
    );
    http.call(
        put.clone(),
        "/v1/admin/settings",
        admin_token,
        Some(json!({"conflict_detection": true})),
    )
    .await?;
    engine
        .update(
            "bookings",
            &booking.id,
            BTreeMap::from([(
                "notes".into(),
                Value::Text("Technician: parts missing".into()),
            )]),
        )
        .map_err(|e| e.to_string())?;
    http.call(
        put.clone(),
        &format!("/v1/records/bookings/{}", booking.id),
        &dispatcher_token,
        Some(json!({"data": {"notes": "Dispatcher: rescheduled to 3 pm"}})),
    )
    .await?;
    let report = engine.sync().await.map_err(|e| e.to_string())?;
    let local = engine
        .get("bookings", &booking.id)
        .map_err(|e| e.to_string())?;
    println!(
        "conflicts: {}; the device now shows the server's version: notes = {}",
        report.conflicts.len(),
        local.fields.get("notes").map(show).unwrap_or_default()
    );
    for c in &report.conflicts {
        println!(
            "  sync conflict error on the device: {}/{}: {}",
            c.table, c.record_id, c.message
        );
    }

    step(7, "Server: Settings > Sync Errors");
    let errors = http
        .call(get.clone(), "/v1/admin/sync-errors", admin_token, None)
        .await?;
    for e in errors.as_array().into_iter().flatten() {
        println!(
            "  {} {} {} {}/{} by {}\n    device: {}\n    server: {}",
            e["at"].as_str().unwrap_or(""),
            e["kind"].as_str().unwrap_or(""),
            e["action"].as_str().unwrap_or(""),
            e["table"].as_str().unwrap_or(""),
            e["record_id"].as_str().unwrap_or(""),
            e["user_id"].as_str().unwrap_or(""),
            e["device_data"],
            e["server_data"]
        );
    }

    step(8, "Device status");
    let status = engine.status().map_err(|e| e.to_string())?;
    println!(
        "profile {} v{}, pending uploads {}, database {} bytes",
        status.profile_name.unwrap_or_default(),
        status.profile_version.unwrap_or_default(),
        status.pending_uploads,
        status.database_bytes
    );
    for t in &status.tables {
        println!("  {:<28} {:>6} rows", t.table, t.rows);
    }
    Ok(())
}
