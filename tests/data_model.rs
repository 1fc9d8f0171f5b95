//! The company's own data model, end to end: a real `fieldsync server`
//! started with `--model` on a 20-table model (inspections and their
//! checklist items among them), profiles validated against it, a second
//! model version published through the admin API while devices hold
//! pending edits, and real `fieldsync device` processes migrating in place.
//! Runs on SQLite, and on PostgreSQL under `scripts/with-postgres.sh`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name)
}

fn fixture_json(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name)).expect("fixture")).expect("json")
}

/// Starts `fieldsync server --model FILE` and returns its exit code and
/// stderr; the server must stop by itself.
async fn refused_start(model: &str) -> (Option<i32>, String) {
    let temp = tempfile::tempdir().expect("tempdir");
    let file = temp.path().join("model.json");
    std::fs::write(&file, model).expect("write model");
    let mut command = Server::command(&temp.path().join("server"));
    if let Some(url) = common::testdb::database_url(&temp.path().join("server")) {
        command.args(["--database-url", &url]);
    }
    command
        .arg("--model")
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .expect("the server stops by itself")
        .expect("run server");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("listening"),
        "a refused model must not serve"
    );
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_bad_model_file_stops_the_server_naming_the_problem() {
    let cases = [
        (
            r#"{"tables": [{"name": "inspections", "primary_key": "id", "columns": [{"name": "id", "type": "text"}, {"name": "due", "type": "timestamp"}]}]}"#,
            vec!["'inspections'", "'due'", "unknown kind", "timestamp"],
        ),
        (
            r#"{"tables": [{"name": "sites", "primary_key": "id", "columns": [{"name": "id", "type": "text"}]}, {"name": "sites", "primary_key": "id", "columns": [{"name": "id", "type": "text"}]}]}"#,
            vec!["table 'sites' is defined twice"],
        ),
        (
            r#"{"tables": [{"name": "inspections", "primary_key": "id", "columns": [{"name": "id", "type": "text"}, {"name": "equipment_id", "type": "text", "references": "equipment"}]}]}"#,
            vec!["inspections.equipment_id", "references table 'equipment'"],
        ),
    ];
    for (model, expected) in cases {
        let (code, stderr) = refused_start(model).await;
        assert_eq!(code, Some(2), "{stderr}");
        for e in expected {
            assert!(stderr.contains(e), "'{e}' not in: {stderr}");
        }
    }
}

/// A profile where `photos` reaches `related` other tables through its
/// related-rows rules (16 with every table below, 15 without
/// `work_order_products`).
fn related_profile(name: &str, with_products: bool) -> Value {
    let rel = |table: &str, column: &str, foreign: &str| json!({"kind": "related", "table": table, "column": column, "foreign_column": foreign});
    let t = |name: &str, columns: &[&str], rules: Vec<Value>| json!({"name": name, "columns": columns, "rules": rules, "sync_interval_secs": 3600});
    let all = || vec![json!({"kind": "all"})];
    let mut work_order_rules = vec![
        rel("accounts", "account_id", "id"),
        rel("customer_assets", "customer_asset_id", "id"),
        rel("work_order_incidents", "id", "work_order_id"),
    ];
    let mut tables = vec![
        t(
            "photos",
            &["checklist_item_id"],
            vec![rel("inspection_checklist_items", "checklist_item_id", "id")],
        ),
        t(
            "inspection_checklist_items",
            &["inspection_id"],
            vec![rel("inspections", "inspection_id", "id")],
        ),
        t(
            "inspections",
            &["booking_id", "equipment_id", "template_id"],
            vec![
                rel("bookings", "booking_id", "id"),
                rel("equipment", "equipment_id", "id"),
                rel("inspection_templates", "template_id", "id"),
            ],
        ),
        t(
            "bookings",
            &["work_order_id", "booking_status_id"],
            vec![
                rel("work_orders", "work_order_id", "id"),
                rel("booking_statuses", "booking_status_id", "id"),
            ],
        ),
        t(
            "equipment",
            &["site_id", "customer_asset_id"],
            vec![
                rel("sites", "site_id", "id"),
                rel("customer_assets", "customer_asset_id", "id"),
                rel("meters", "id", "equipment_id"),
            ],
        ),
        t(
            "meters",
            &["equipment_id"],
            vec![rel("meter_readings", "id", "meter_id")],
        ),
        t("meter_readings", &["meter_id"], all()),
        t(
            "sites",
            &["account_id", "region_id"],
            vec![
                rel("accounts", "account_id", "id"),
                rel("regions", "region_id", "id"),
                rel("site_contacts", "id", "site_id"),
            ],
        ),
        t("site_contacts", &["site_id"], all()),
        t("regions", &["name"], all()),
        t("inspection_templates", &["name"], all()),
        t("booking_statuses", &["name"], all()),
        t("accounts", &["name"], all()),
        t("customer_assets", &["account_id"], all()),
        t("work_order_incidents", &["work_order_id"], all()),
    ];
    if with_products {
        work_order_rules.push(rel("work_order_products", "id", "work_order_id"));
        tables.push(t("work_order_products", &["work_order_id"], all()));
    }
    tables.push(t(
        "work_orders",
        &["account_id", "customer_asset_id"],
        work_order_rules,
    ));
    json!({"name": name, "tables": tables})
}

/// The inspectors' profile; `v2` adds the column and the table model v2
/// brought.
fn inspectors_profile(v2: bool) -> Value {
    let t = |name: &str, columns: Vec<&str>, rules: Value| json!({"name": name, "columns": columns, "rules": rules, "sync_interval_secs": 300});
    let mut booking_columns = vec!["name", "work_order_id", "resource_id", "status", "notes"];
    if v2 {
        booking_columns.push("gate_code");
    }
    let mut tables = vec![
        t(
            "bookings",
            booking_columns,
            json!([{"kind": "owned", "column": "resource_id"}]),
        ),
        t(
            "work_orders",
            vec!["name", "account_id"],
            json!([{"kind": "related", "table": "bookings", "column": "id", "foreign_column": "work_order_id"}]),
        ),
        t("accounts", vec!["name", "city"], json!([{"kind": "all"}])),
        t(
            "sites",
            vec!["name", "account_id"],
            json!([{"kind": "all"}]),
        ),
        t(
            "inspections",
            vec![
                "booking_id",
                "status",
                "due_on",
                "score",
                "passed",
                "findings",
            ],
            json!([{"kind": "related", "table": "bookings", "column": "booking_id", "foreign_column": "id"}]),
        ),
        t(
            "inspection_checklist_items",
            vec!["inspection_id", "sequence", "question", "answer", "checked"],
            json!([{"kind": "related", "table": "inspections", "column": "inspection_id", "foreign_column": "id"}]),
        ),
    ];
    if v2 {
        tables.push(t(
            "permits",
            vec!["site_id", "kind", "valid_until"],
            json!([{"kind": "all"}]),
        ));
    }
    json!({"name": "inspectors", "tables": tables})
}

fn table_report<'a>(report: &'a Value, table: &str) -> Option<&'a Value> {
    report["tables"]
        .as_array()
        .expect("tables")
        .iter()
        .find(|t| t["table"] == table)
}

/// Rows a sync downloaded into `table` (0 when it did not pull it).
fn downloaded(report: &Value, table: &str) -> u64 {
    table_report(report, table).map_or(0, |t| t["rows_upserted"].as_u64().expect("rows"))
}

async fn put(server: &Server, token: &str, table: &str, id: &str, data: Value) -> (u16, Value) {
    server
        .call(
            "PUT",
            &format!("/v1/records/{table}/{id}"),
            Some(token),
            Some(json!({ "data": data })),
        )
        .await
}

async fn put_ok(server: &Server, token: &str, table: &str, id: &str, data: Value) {
    let (status, body) = put(server, token, table, id, data).await;
    assert!(
        status == 200 || status == 201,
        "{table}/{id}: {status} {body}"
    );
}

/// The server's copy of a row, as the dispatcher reads it.
async fn server_row(server: &Server, token: &str, table: &str, id: &str) -> Value {
    let (status, body) = server
        .call(
            "GET",
            &format!("/v1/records/{table}/{id}"),
            Some(token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{table}/{id}: {body}");
    body["row"].clone()
}

/// The names of the indexes of `table` in the server's database.
fn server_indexes(server: &Server, table: &str) -> Vec<String> {
    match common::testdb::database_url(&server.data_dir) {
        Some(url) => {
            let table = table.to_owned();
            common::testdb::blocking_pg(&url, move |c| {
                c.query(
                    "SELECT indexname::text FROM pg_indexes WHERE schemaname = current_schema() AND tablename = $1",
                    &[&table],
                )
                .expect("indexes")
                .iter()
                .map(|r| r.get::<_, String>(0))
                .collect()
            })
        }
        None => {
            let conn = rusqlite::Connection::open_with_flags(
                server.data_dir.join("fieldsync.db"),
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )
            .expect("open server db");
            let mut stmt = conn
                .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?1")
                .expect("prepare");
            stmt.query_map([table], |r| r.get::<_, String>(0))
                .expect("query")
                .map(|r| r.expect("row"))
                .collect()
        }
    }
}

/// The profile a device installed (from its own database file).
fn device_profile(device: &Device) -> Value {
    let conn = rusqlite::Connection::open_with_flags(
        &device.db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open device db");
    let text: String = conn
        .query_row(
            "SELECT value FROM _fs_meta WHERE key = 'profile'",
            [],
            |r| r.get(0),
        )
        .expect("installed profile");
    serde_json::from_str(&text).expect("profile json")
}

fn device_indexes(device: &Device, table: &str) -> Vec<String> {
    let conn = rusqlite::Connection::open_with_flags(
        &device.db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open device db");
    let mut stmt = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?1")
        .expect("prepare");
    stmt.query_map([table], |r| r.get::<_, String>(0))
        .expect("query")
        .map(|r| r.expect("row"))
        .collect()
}

#[tokio::test]
async fn a_company_model_evolves_while_devices_keep_their_edits() {
    let temp = tempfile::tempdir().expect("tempdir");
    let data_dir = temp.path().join("server");
    let v1_file = fixture("company_v1.json");
    let v1_arg = v1_file.to_str().expect("path");
    let server = Server::start_in(&data_dir, &["--model", v1_arg]).await;

    // The model in force: 20 tables, inspections and their checklist.
    let model = server.admin("GET", "/v1/admin/model", None).await;
    assert_eq!(model["version"], 1, "{model}");
    assert_eq!(model["source"], "start");
    let tables = model["tables"].as_array().expect("tables");
    assert_eq!(tables.len(), 20);
    let checklist = tables
        .iter()
        .find(|t| t["name"] == "inspection_checklist_items")
        .expect("checklist table");
    assert!(
        checklist["columns"]
            .as_array()
            .expect("columns")
            .iter()
            .any(|c| c["name"] == "inspection_id" && c["references"] == "inspections"),
        "{checklist}"
    );
    let inspection_index = schema_index_of(&server, "inspections").await;
    assert!(
        server_indexes(&server, "inspections").contains(&inspection_index),
        "the model's index on inspections is built"
    );
    // Sample data is the Field Service model's: with this model it still
    // fits (the model keeps those tables), so only the refusal of a model
    // without them is shown elsewhere.

    // Profiles are validated against the model in force.
    let (status, body) = server
        .call(
            "PUT",
            "/v1/admin/profiles/too-wide",
            Some(ADMIN_TOKEN),
            Some(related_profile("too-wide", true)),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_profile", "{body}");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(
        message.contains("'photos'") && message.contains("16 tables") && message.contains("15"),
        "{message}"
    );
    server
        .admin(
            "PUT",
            "/v1/admin/profiles/wide-enough",
            Some(related_profile("wide-enough", false)),
        )
        .await;
    let (status, body) = server
        .call(
            "PUT",
            "/v1/admin/profiles/no-such-column",
            Some(ADMIN_TOKEN),
            Some(json!({"name": "no-such-column", "tables": [{"name": "inspections", "columns": ["gate_code"], "rules": [{"kind": "all"}], "sync_interval_secs": 300}]})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("gate_code"), "{body}");

    server
        .admin(
            "PUT",
            "/v1/admin/profiles/inspectors",
            Some(inspectors_profile(false)),
        )
        .await;
    let dispatcher = server
        .user_with_profile("disp", "dispatcher", Some("inspectors"))
        .await;
    let tech1 = server
        .user_with_profile("tech-1", "technician", Some("inspectors"))
        .await;
    let tech2 = server
        .user_with_profile("tech-2", "technician", Some("inspectors"))
        .await;
    let tech3 = server
        .user_with_profile("tech-3", "technician", Some("inspectors"))
        .await;

    // The back office's data.
    put_ok(
        &server,
        &dispatcher,
        "accounts",
        "a-1",
        json!({"name": "Contoso", "city": "Oslo"}),
    )
    .await;
    put_ok(
        &server,
        &dispatcher,
        "accounts",
        "a-2",
        json!({"name": "Fabrikam", "city": "Bergen"}),
    )
    .await;
    put_ok(
        &server,
        &dispatcher,
        "sites",
        "s-1",
        json!({"name": "Plant 1", "account_id": "a-1"}),
    )
    .await;
    for (wo, account) in [("wo-1", "a-1"), ("wo-2", "a-2"), ("wo-3", "a-1")] {
        put_ok(
            &server,
            &dispatcher,
            "work_orders",
            wo,
            json!({"name": wo, "account_id": account}),
        )
        .await;
    }
    for (b, tech, wo) in [
        ("b-1", "tech-1", "wo-1"),
        ("b-2", "tech-2", "wo-2"),
        ("b-3", "tech-1", "wo-3"),
    ] {
        put_ok(
            &server,
            &dispatcher,
            "bookings",
            b,
            json!({"name": b, "resource_id": tech, "work_order_id": wo, "status": "scheduled"}),
        )
        .await;
    }
    put_ok(
        &server,
        &dispatcher,
        "inspections",
        "i-1",
        json!({"booking_id": "b-1", "due_on": "2030-01-15", "findings": "{\"leaks\": []}"}),
    )
    .await;
    put_ok(
        &server,
        &dispatcher,
        "inspections",
        "i-2",
        json!({"booking_id": "b-2", "status": "scheduled"}),
    )
    .await;
    for (c, inspection, seq) in [("c-1", "i-1", 1), ("c-2", "i-1", 2), ("c-3", "i-2", 1)] {
        put_ok(
            &server,
            &dispatcher,
            "inspection_checklist_items",
            c,
            json!({"inspection_id": inspection, "sequence": seq, "question": format!("Check {seq}")}),
        )
        .await;
    }
    // The model's defaults fill what a new row leaves out.
    let i1 = server_row(&server, &dispatcher, "inspections", "i-1").await;
    assert_eq!(i1["status"], "scheduled", "{i1}");
    // Choice lists and JSON are checked by the server.
    let (status, body) = put(
        &server,
        &dispatcher,
        "inspections",
        "i-9",
        json!({"booking_id": "b-1", "status": "lost"}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_value");
    assert!(
        body.to_string()
            .contains("scheduled, in_progress, passed, failed"),
        "{body}"
    );
    let (status, body) = put(
        &server,
        &dispatcher,
        "inspections",
        "i-9",
        json!({"booking_id": "b-1", "findings": "{not json"}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("findings"), "{body}");
    // A required column without a default must be given.
    let (status, body) = put(&server, &dispatcher, "regions", "r-1", json!({})).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.to_string()
            .contains("column 'name': the column is required"),
        "{body}"
    );

    // Two devices sync model v1.
    let d1 = Device::new(temp.path().join("d1.db"), &server.url, &tech1);
    let d2 = Device::new(temp.path().join("d2.db"), &server.url, &tech2);
    d1.ok(&["sync"]).await;
    d2.ok(&["sync"]).await;
    assert_eq!(d1.local_rows("bookings").len(), 2);
    assert_eq!(d1.local_rows("inspection_checklist_items").len(), 2);
    assert_eq!(d2.local_rows("inspection_checklist_items").len(), 1);
    assert_eq!(device_profile(&d1)["model_version"], 1);
    assert!(
        device_indexes(&d1, "inspections")
            .iter()
            .any(|n| n.starts_with("_fs_mx_") && n.ends_with("_by_status")),
        "the device builds the model's index"
    );
    // The device checks choice lists too, and queues nothing it refuses.
    let refused = d1
        .run(&[
            "put",
            "inspection_checklist_items",
            "c-1",
            "--set",
            "answer=maybe",
        ])
        .await;
    assert_ne!(refused.code, 0, "{}", refused.stdout);
    assert!(
        format!("{}{}", refused.stdout, refused.stderr).contains("choices"),
        "{refused:?}"
    );
    let required = d1
        .run(&["put", "inspections", "i-1", "--set", "status=null"])
        .await;
    assert_ne!(required.code, 0, "{}", required.stdout);
    assert!(
        format!("{}{}", required.stdout, required.stderr).contains("required"),
        "{required:?}"
    );
    assert_eq!(d1.ok(&["status"]).await["pending_uploads"], 0);

    // Pending edits on both devices.
    d1.ok(&["put", "bookings", "b-1", "--set", "notes=bring the ladder"])
        .await;
    d1.ok(&[
        "put",
        "inspection_checklist_items",
        "c-1",
        "--set",
        "answer=yes",
        "--set",
        "checked=true",
    ])
    .await;
    d1.ok(&[
        "put",
        "inspection_checklist_items",
        "c-new",
        "--data",
        r#"{"inspection_id": "i-1", "sequence": 3, "question": "Seal intact?", "answer": "no"}"#,
    ])
    .await;
    d2.ok(&["put", "bookings", "b-2", "--set", "notes=gate is locked"])
        .await;
    d2.ok(&[
        "put",
        "inspections",
        "i-2",
        "--set",
        "status=in_progress",
        "--set",
        "score=7.5",
    ])
    .await;
    assert_eq!(d1.ok(&["status"]).await["pending_uploads"], 3);
    assert_eq!(d2.ok(&["status"]).await["pending_uploads"], 2);

    // Changes the model cannot take are refused, naming the problem.
    let v2 = fixture_json("company_v2.json");
    let mut drops_notes = v2.clone();
    for t in drops_notes["tables"].as_array_mut().expect("tables") {
        if t["name"] == "bookings" {
            t["columns"]
                .as_array_mut()
                .expect("columns")
                .retain(|c| c["name"] != "notes");
        }
    }
    let (status, body) = server
        .call(
            "PUT",
            "/v1/admin/model",
            Some(ADMIN_TOKEN),
            Some(drops_notes),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_model");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(
        message.contains("profile '") && message.contains("column 'notes' in table 'bookings'"),
        "{message}"
    );
    let mut retyped = fixture_json("company_v1.json");
    for t in retyped["tables"].as_array_mut().expect("tables") {
        if t["name"] == "inspections" {
            for c in t["columns"].as_array_mut().expect("columns") {
                if c["name"] == "score" {
                    c["type"] = json!("text");
                }
            }
        }
    }
    let (status, body) = server
        .call("PUT", "/v1/admin/model", Some(ADMIN_TOKEN), Some(retyped))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("inspections.score"), "{body}");

    // Model v2 is published while a third device syncs: the server
    // migrates its own tables and keeps serving.
    let d3 = Device::new(temp.path().join("d3.db"), &server.url, &tech3);
    let (published, during) = tokio::join!(
        server.admin("PUT", "/v1/admin/model", Some(v2.clone())),
        d3.run(&["sync"])
    );
    assert_eq!(during.code, 0, "{}\n{}", during.stdout, during.stderr);
    assert_eq!(published["version"], 2, "{published}");
    let changes = published["changes"].to_string();
    assert!(
        changes.contains(r#""change":"add_column","column":"gate_code","table":"bookings""#)
            && changes.contains(r#""change":"add_table","table":"permits""#),
        "{changes}"
    );
    // Publishing the same model again changes nothing.
    let again = server.admin("PUT", "/v1/admin/model", Some(v2)).await;
    assert_eq!(again["version"], 2);
    assert_eq!(again["changes"], json!([]));
    let gate_index = schema_index_of(&server, "bookings").await;
    assert!(server_indexes(&server, "bookings").contains(&gate_index));
    // Existing rows took the new column's default.
    assert_eq!(
        server_row(&server, &dispatcher, "bookings", "b-3").await["gate_code"],
        "none"
    );

    // The back office uses the new column and table.
    put_ok(
        &server,
        &dispatcher,
        "bookings",
        "b-1",
        json!({"gate_code": "4711"}),
    )
    .await;
    put_ok(
        &server,
        &dispatcher,
        "bookings",
        "b-2",
        json!({"gate_code": "0815"}),
    )
    .await;
    put_ok(
        &server,
        &dispatcher,
        "permits",
        "p-1",
        json!({"site_id": "s-1", "kind": "hot_work", "valid_until": "2030-02-01"}),
    )
    .await;
    server
        .admin(
            "PUT",
            "/v1/admin/profiles/inspectors",
            Some(inspectors_profile(true)),
        )
        .await;

    // Both devices migrate in place at their next sync and upload the
    // edits they held; the column the edits did not know is kept.
    for (device, edits) in [(&d1, 3), (&d2, 2)] {
        let report = device.ok(&["sync"]).await;
        assert_eq!(report["uploaded"], edits, "{report}");
        assert_eq!(report["profile_changed"], true, "{report}");
        assert_eq!(report["rejected"], json!([]), "{report}");
        assert_eq!(report["tables_added"], json!(["permits"]), "{report}");
        assert_eq!(device.ok(&["status"]).await["pending_uploads"], 0);
        // Untouched tables are not downloaded again: tables unrelated to
        // the bookings get nothing, and the tables that read them get the
        // rows of the bookings that moved (fetched by key) and their own
        // changes (the edits uploaded), never a new first download.
        for table in ["accounts", "sites"] {
            assert_eq!(
                downloaded(&report, table),
                0,
                "{table} downloaded again: {report}"
            );
        }
        for table in ["work_orders", "inspections", "inspection_checklist_items"] {
            if let Some(t) = table_report(&report, table) {
                assert_eq!(t["initial"], false, "{table} downloaded again: {report}");
            }
        }
        if let Some(t) = table_report(&report, "work_orders") {
            assert_eq!(t["pages"], 0, "work orders pulled again: {report}");
        }
        // The table that gained a column downloads again (its rows' new
        // values), the new table for the first time.
        assert_eq!(
            table_report(&report, "bookings").expect("bookings")["initial"],
            true,
            "{report}"
        );
        assert!(downloaded(&report, "bookings") >= 1, "{report}");
        assert_eq!(downloaded(&report, "permits"), 1, "{report}");
        assert_eq!(device_profile(device)["model_version"], 2);
        assert!(
            device_indexes(device, "bookings")
                .iter()
                .any(|n| n.ends_with("_by_gate_code")),
            "the device builds the new index"
        );
    }
    let b1 = server_row(&server, &dispatcher, "bookings", "b-1").await;
    assert_eq!(b1["notes"], "bring the ladder", "{b1}");
    assert_eq!(b1["gate_code"], "4711", "{b1}");
    let b2 = server_row(&server, &dispatcher, "bookings", "b-2").await;
    assert_eq!(b2["notes"], "gate is locked", "{b2}");
    assert_eq!(b2["gate_code"], "0815", "{b2}");
    assert_eq!(
        server_row(&server, &dispatcher, "inspection_checklist_items", "c-1").await["answer"],
        "yes"
    );
    let c_new = server_row(&server, &dispatcher, "inspection_checklist_items", "c-new").await;
    assert_eq!(c_new["question"], "Seal intact?");
    // A column the new row was not given takes the model's default.
    assert_eq!(c_new["checked"], false, "{c_new}");
    let i2 = server_row(&server, &dispatcher, "inspections", "i-2").await;
    assert_eq!(
        (i2["status"].clone(), i2["score"].clone()),
        (json!("in_progress"), json!(7.5))
    );

    let local_b1 = d1.ok(&["get", "bookings", "b-1"]).await;
    assert_eq!(local_b1["fields"]["gate_code"], "4711", "{local_b1}");
    assert_eq!(
        local_b1["fields"]["notes"], "bring the ladder",
        "{local_b1}"
    );
    assert_eq!(
        d1.ok(&["get", "bookings", "b-3"]).await["fields"]["gate_code"],
        "none"
    );
    assert_eq!(
        d2.ok(&["get", "bookings", "b-2"]).await["fields"]["gate_code"],
        "0815"
    );
    assert_eq!(
        d1.ok(&["get", "permits", "p-1"]).await["fields"]["kind"],
        "hot_work"
    );
    assert_eq!(d1.local_rows("inspection_checklist_items").len(), 3);
    // Choice and JSON columns answer local queries like text.
    let answered = d1
        .ok(&[
            "query",
            "inspection_checklist_items",
            "--where",
            r#"{"op": "in", "column": "answer", "values": ["yes", "no"]}"#,
            "--count",
        ])
        .await;
    assert_eq!(answered["count"], 2, "{answered}");
    let with_leaks = d1
        .ok(&[
            "query",
            "inspections",
            "--where",
            r#"{"op": "contains", "column": "findings", "value": "leaks"}"#,
            "--count",
        ])
        .await;
    assert_eq!(with_leaks["count"], 1, "{with_leaks}");

    // A device that starts fresh gets model v2 directly.
    let fresh = Device::new(temp.path().join("fresh.db"), &server.url, &tech1);
    let report = fresh.ok(&["sync"]).await;
    assert_eq!(report["profile_changed"], false, "{report}");
    assert_eq!(device_profile(&fresh)["model_version"], 2);
    assert_eq!(fresh.ok(&["status"]).await["model_version"], 2);
    assert_eq!(
        fresh.ok(&["get", "bookings", "b-1"]).await["fields"]["gate_code"],
        "4711"
    );
    assert_eq!(
        fresh.ok(&["get", "permits", "p-1"]).await["fields"]["site_id"],
        "s-1"
    );
    assert_eq!(fresh.local_rows("inspection_checklist_items").len(), 3);

    // The versions, and a restart with the same model file: the version
    // the admin published stays in force.
    let versions = server.admin("GET", "/v1/admin/model/versions", None).await;
    let versions = versions.as_array().expect("versions");
    assert_eq!(versions.len(), 2);
    assert_eq!(
        (
            versions[0]["version"].clone(),
            versions[0]["source"].clone()
        ),
        (json!(2), json!("admin"))
    );
    server.stop().await;
    let server = Server::start_in(&data_dir, &["--model", v1_arg]).await;
    assert_eq!(
        server.admin("GET", "/v1/admin/model", None).await["version"],
        2
    );
    let d2 = Device::new(d2.db.clone(), &server.url, &tech2);
    let report = d2.ok(&["sync"]).await;
    assert_eq!(report["profile_changed"], false, "{report}");
    server.stop().await;
}

/// The server's name of the model index of `table` (the model in force
/// declares one per table used here).
async fn schema_index_of(server: &Server, table: &str) -> String {
    let model = server.admin("GET", "/v1/admin/model", None).await;
    let t = model["tables"]
        .as_array()
        .expect("tables")
        .iter()
        .find(|t| t["name"] == table)
        .expect("table");
    let columns: Vec<String> = t["indexes"][0]["columns"]
        .as_array()
        .expect("an index")
        .iter()
        .map(|c| c.as_str().expect("column").to_owned())
        .collect();
    fieldsync_server::schema::model_index_name(table, &columns)
}

#[tokio::test]
async fn sample_data_says_it_is_for_the_field_service_model() {
    let temp = tempfile::tempdir().expect("tempdir");
    let model = temp.path().join("model.json");
    std::fs::write(
        &model,
        r#"{"tables": [{"name": "inspections", "primary_key": "id", "columns": [{"name": "id", "type": "text"}, {"name": "status", "type": "choice", "choices": ["open", "done"]}]}]}"#,
    )
    .expect("write");
    let server = Server::start_in(
        &temp.path().join("server"),
        &["--model", model.to_str().expect("path")],
    )
    .await;
    let (status, body) = server
        .call(
            "POST",
            "/v1/admin/seed",
            Some(ADMIN_TOKEN),
            Some(json!({"technicians": ["t"], "work_orders": 5})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.to_string().contains("Field Service model") && body.to_string().contains("accounts"),
        "{body}"
    );
    // The server runs without the built-in profile (it does not fit).
    let profiles = server.admin("GET", "/v1/admin/profiles", None).await;
    assert_eq!(profiles.as_array().map(Vec::len), Some(0), "{profiles}");
    server.stop().await;
}

/// A console form post (or a GET without `form`) with a session cookie;
/// (status, the `location` header, or `set-cookie` of a sign-in, body).
async fn console(
    server: &Server,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    form: Option<&[(&str, &str)]>,
) -> (u16, String, String) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = client.request(method, format!("{}{}", server.url, path));
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    if let Some(f) = form {
        req = req
            .header("content-type", "application/x-www-form-urlencoded")
            .body(encode_form(f));
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let header = if path == "/console/login" {
        "set-cookie"
    } else {
        "location"
    };
    let location = resp
        .headers()
        .get(header)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, location, resp.text().await.unwrap_or_default())
}

#[tokio::test]
async fn the_console_shows_the_model_and_publishes_a_version() {
    let temp = tempfile::tempdir().expect("tempdir");
    let v1 = fixture("company_v1.json");
    let server = Server::start_in(
        &temp.path().join("server"),
        &["--model", v1.to_str().expect("path")],
    )
    .await;
    let (status, set_cookie, _) = console(
        &server,
        "POST",
        "/console/login",
        None,
        Some(&[("token", ADMIN_TOKEN)]),
    )
    .await;
    assert_eq!(status, 303);
    let cookie = set_cookie.split(';').next().unwrap_or_default().to_owned();
    let (status, _, page) = console(&server, "GET", "/console/model", Some(&cookie), None).await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("Version 1 in force") && page.contains("20 tables"),
        "{page}"
    );
    assert!(
        page.contains("<code>inspection_checklist_items</code>"),
        "{page}"
    );
    assert!(
        page.contains("scheduled, in_progress, passed, failed"),
        "{page}"
    );
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("csrf token")
        .to_owned();

    // A model that cannot follow is refused on the page, the text kept.
    let bad = r#"{"tables": [{"name": "jobs", "primary_key": "id", "columns": [{"name": "id", "type": "uuid"}]}]}"#;
    let (status, _, page) = console(
        &server,
        "POST",
        "/console/model",
        Some(&cookie),
        Some(&[("csrf", &csrf), ("model", bad)]),
    )
    .await;
    assert_eq!(status, 400, "{page}");
    assert!(
        page.contains("Not published") && page.contains("unknown kind"),
        "{page}"
    );
    assert!(
        page.contains("&quot;uuid&quot;"),
        "the text is kept: {page}"
    );
    // Without the anti-forgery token nothing is published.
    let v2 = std::fs::read_to_string(fixture("company_v2.json")).expect("v2");
    let (status, _, _) = console(
        &server,
        "POST",
        "/console/model",
        Some(&cookie),
        Some(&[("model", &v2)]),
    )
    .await;
    assert_eq!(status, 403);
    let (status, location, _) = console(
        &server,
        "POST",
        "/console/model",
        Some(&cookie),
        Some(&[("csrf", &csrf), ("model", &v2)]),
    )
    .await;
    assert_eq!(
        (status, location.as_str()),
        (303, "/console/model?published=2")
    );
    let (_, _, page) = console(&server, "GET", &location, Some(&cookie), None).await;
    assert!(
        page.contains("Version 2 is in force") && page.contains("added table permits"),
        "{page}"
    );
    assert_eq!(
        server.admin("GET", "/v1/admin/model", None).await["version"],
        2
    );
    server.stop().await;
}

#[tokio::test]
async fn another_instance_serves_the_version_one_instance_published() {
    let temp = tempfile::tempdir().expect("tempdir");
    let data_dir = temp.path().join("server");
    let v1 = fixture("company_v1.json");
    let v1_arg = v1.to_str().expect("path");
    let a = Server::start_in(&data_dir, &["--model", v1_arg]).await;
    let b = Server::start_in(&data_dir, &["--model", v1_arg]).await;
    a.admin(
        "PUT",
        "/v1/admin/profiles/inspectors",
        Some(inspectors_profile(false)),
    )
    .await;
    let dispatcher = a
        .user_with_profile("disp", "dispatcher", Some("inspectors"))
        .await;
    let tech = a
        .user_with_profile("tech-1", "technician", Some("inspectors"))
        .await;
    put_ok(
        &a,
        &dispatcher,
        "bookings",
        "b-1",
        json!({"name": "b-1", "resource_id": "tech-1"}),
    )
    .await;
    let device = Device::new(temp.path().join("d.db"), &b.url, &tech);
    device.ok(&["sync"]).await;
    assert_eq!(device_profile(&device)["model_version"], 1);
    assert_eq!(b.admin("GET", "/v1/admin/model", None).await["version"], 1);

    // Published through the first instance, served by the second.
    let published = a
        .admin(
            "PUT",
            "/v1/admin/model",
            Some(fixture_json("company_v2.json")),
        )
        .await;
    assert_eq!(published["version"], 2);
    a.admin(
        "PUT",
        "/v1/admin/profiles/inspectors",
        Some(inspectors_profile(true)),
    )
    .await;
    assert_eq!(b.admin("GET", "/v1/admin/model", None).await["version"], 2);
    put_ok(&b, &dispatcher, "permits", "p-1", json!({"kind": "height"})).await;
    let report = device.ok(&["sync"]).await;
    assert_eq!(report["tables_added"], json!(["permits"]), "{report}");
    assert_eq!(device_profile(&device)["model_version"], 2);
    assert_eq!(
        device.ok(&["get", "bookings", "b-1"]).await["fields"]["gate_code"],
        "none"
    );
    assert_eq!(
        device.ok(&["get", "permits", "p-1"]).await["fields"]["kind"],
        "height"
    );
    a.stop().await;
    b.stop().await;
}
