//! Local queries and observed queries on an in-process engine against a real
//! `fieldsync server` process, compared with a direct read of the device's
//! SQLite file.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};

use common::*;
use fieldsync_core::filter::Filter;
use fieldsync_core::{
    Engine, EngineConfig, Error, ErrorKind, OrderBy, Query, QueryListener, Record, Value,
};
use serde_json::json;

struct Collect(std::sync::Mutex<Sender<Vec<Record>>>);

impl QueryListener for Collect {
    fn on_result(&self, records: Vec<Record>) {
        let _ = self.0.lock().expect("lock").send(records);
    }
    fn on_error(&self, error: Error) {
        panic!("observed query failed: {error}");
    }
}

fn ids(records: &[Record]) -> Vec<String> {
    records.iter().map(|r| r.id.clone()).collect()
}

fn next(rx: &Receiver<Vec<Record>>) -> Vec<Record> {
    rx.try_recv()
        .expect("an emission delivered before the write returned")
}

fn drain(rx: &Receiver<Vec<Record>>) -> Option<Vec<Record>> {
    let mut last = None;
    while let Ok(r) = rx.try_recv() {
        last = Some(r);
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_matches_the_device_file_and_observation_follows_its_table() {
    let server = Server::start().await;
    server.seed(&["tech1"], 30).await;
    let tech = server.user("tech1", "technician").await;
    let dispatcher = server.user("disp", "dispatcher").await;
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("d.db");
    let engine = Engine::open(EngineConfig::new(&db, &server.url, &tech)).expect("open");
    engine.sync().await.expect("sync");

    // A condition and an order: exactly the rows the same condition selects
    // in the device file, in that order.
    let filter: Filter = serde_json::from_value(json!({"op": "or", "filters": [
        {"op": "ge", "column": "priority", "value": 2},
        {"op": "begins_with", "column": "name", "value": "WO-00000"}
    ]}))
    .expect("filter");
    let query = Query {
        table: "work_orders".into(),
        filter: Some(filter),
        order: vec![
            OrderBy {
                column: "priority".into(),
                descending: true,
            },
            OrderBy {
                column: "name".into(),
                descending: false,
            },
        ],
        limit: None,
        offset: 0,
    };
    let got = engine.query(&query).expect("query");
    let conn =
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open the device file");
    let mut stmt = conn
        .prepare("SELECT id, priority, name FROM work_orders")
        .expect("prepare");
    let mut want: Vec<(Option<i64>, Option<String>, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .expect("read")
        .map(|r| r.expect("row"))
        .filter(|(_, p, n): &(String, Option<i64>, Option<String>)| {
            p.is_some_and(|p| p >= 2) || n.as_deref().is_some_and(|n| n.starts_with("WO-00000"))
        })
        .map(|(id, p, n)| (p, n, id))
        .collect();
    want.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let want: Vec<String> = want.into_iter().map(|(_, _, id)| id).collect();
    assert!(!want.is_empty());
    assert_eq!(ids(&got), want);
    assert_eq!(engine.count(&query).expect("count"), want.len() as u64);
    let page = engine
        .query(&Query {
            limit: Some(3),
            offset: 2,
            ..query.clone()
        })
        .expect("page");
    assert_eq!(ids(&page), want[2..5.min(want.len())].to_vec());

    // A condition on a column the table does not sync.
    let bad: Filter =
        serde_json::from_value(json!({"op": "eq", "column": "no_such", "value": 1})).expect("f");
    let err = engine
        .query(&Query {
            table: "work_orders".into(),
            filter: Some(bad),
            ..Query::default()
        })
        .expect_err("unknown column");
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");

    // Observe every work order.
    let (tx, rx) = channel();
    let all = Query {
        table: "work_orders".into(),
        ..Query::default()
    };
    let handle = engine
        .observe(all.clone(), Arc::new(Collect(std::sync::Mutex::new(tx))))
        .expect("observe");
    let first = next(&rx);
    assert_eq!(ids(&first), ids(&engine.query(&all).expect("q")));
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));

    // A local write to the observed table: one emission, with it.
    let wo = first[0].id.clone();
    let set = |k: &str, v: &str| BTreeMap::from([(k.to_owned(), Value::Text(v.into()))]);
    engine
        .update("work_orders", &wo, set("summary", "local edit"))
        .expect("update");
    let after = next(&rx);
    let edited = after.iter().find(|r| r.id == wo).expect("the row");
    assert_eq!(edited.fields["summary"], Value::Text("local edit".into()));
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));

    // A write to another table: no emission; the next one is the observed
    // table's change.
    let booking = engine.list("bookings", None, 1).expect("bookings")[0]
        .id
        .clone();
    engine
        .update("bookings", &booking, set("notes", "other table"))
        .expect("update booking");
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    engine
        .update("work_orders", &wo, set("summary", "second edit"))
        .expect("update");
    let after = next(&rx);
    let edited = after.iter().find(|r| r.id == wo).expect("the row");
    assert_eq!(edited.fields["summary"], Value::Text("second edit".into()));

    // A second observer of the same query: both are told, each once, with
    // the same rows (one run of the query shared).
    let (tx2, rx2) = channel();
    let _twin = engine
        .observe(all.clone(), Arc::new(Collect(std::sync::Mutex::new(tx2))))
        .expect("observe");
    next(&rx2);
    engine
        .update("work_orders", &wo, set("summary", "twin edit"))
        .expect("update");
    for rx in [&rx, &rx2] {
        let after = next(rx);
        let edited = after.iter().find(|r| r.id == wo).expect("the row");
        assert_eq!(edited.fields["summary"], Value::Text("twin edit".into()));
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    }

    // Upload; then a dispatcher's change arrives by sync.
    engine.sync().await.expect("sync");
    drain(&rx);
    let (s, _) = server
        .call(
            "PUT",
            &format!("/v1/records/work_orders/{wo}"),
            Some(&dispatcher),
            Some(json!({"data": {"summary": "Changed by dispatch"}})),
        )
        .await;
    assert_eq!(s, 200);
    engine.sync().await.expect("sync");
    let after = drain(&rx).expect("an emission after the sync");
    let edited = after.iter().find(|r| r.id == wo).expect("the row");
    assert_eq!(
        edited.fields["summary"],
        Value::Text("Changed by dispatch".into())
    );

    // Cancelled: no more emissions.
    handle.cancel();
    engine
        .update("work_orders", &wo, set("summary", "after cancel"))
        .expect("update");
    while let Ok(r) = rx.try_recv() {
        let row = r.iter().find(|r| r.id == wo).expect("the row");
        assert_ne!(row.fields["summary"], Value::Text("after cancel".into()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_query_command_prints_the_selected_rows_as_json() {
    let server = Server::start().await;
    server.seed(&["tech1"], 20).await;
    let tech = server.user("tech1", "technician").await;
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("d.db");
    let device = Device::new(db.clone(), &server.url, &tech);
    device.ok(&["sync"]).await;

    let condition = r#"{"op":"ge","column":"priority","value":2}"#;
    let rows = device
        .ok(&[
            "query",
            "work_orders",
            "--where",
            condition,
            "--order",
            "priority:desc",
            "--order",
            "name",
        ])
        .await;
    let got: Vec<String> = rows
        .as_array()
        .expect("an array")
        .iter()
        .map(|r| r["id"].as_str().expect("id").to_owned())
        .collect();
    let conn =
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open the device file");
    let mut stmt = conn
        .prepare("SELECT id, priority, name FROM work_orders")
        .expect("prepare");
    let mut want: Vec<(i64, Option<String>, String)> = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<i64>>(1)?,
                r.get(2)?,
            ))
        })
        .expect("read")
        .map(|r| r.expect("row"))
        .filter_map(|(id, p, n)| p.filter(|p| *p >= 2).map(|p| (p, n, id)))
        .collect();
    want.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let want: Vec<String> = want.into_iter().map(|(_, _, id)| id).collect();
    assert!(!want.is_empty());
    assert_eq!(got, want);

    let count = device
        .ok(&["query", "work_orders", "--where", condition, "--count"])
        .await;
    assert_eq!(count["count"], want.len() as u64);
    let page = device
        .ok(&[
            "query",
            "work_orders",
            "--where",
            condition,
            "--order",
            "priority:desc",
            "--order",
            "name",
            "--limit",
            "2",
            "--offset",
            "1",
        ])
        .await;
    let page: Vec<&str> = page
        .as_array()
        .expect("an array")
        .iter()
        .map(|r| r["id"].as_str().expect("id"))
        .collect();
    assert_eq!(page, want[1..3.min(want.len())].to_vec());

    let bad = device
        .run(&[
            "query",
            "work_orders",
            "--where",
            r#"{"op":"eq","column":"no_such","value":1}"#,
        ])
        .await;
    assert_eq!(bad.code, 2, "InvalidInput: {}", bad.stderr);
}

/// The latest emission delivered (delivery is synchronous on the writing
/// thread, so it is there when the write or sync returns).
fn last(rx: &Receiver<Vec<Record>>) -> Vec<Record> {
    drain(rx).expect("an emission")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_local_indexes_serve_queries_and_observers_see_a_table_leave() {
    let server = Server::start().await;
    server.seed(&["tech1"], 30).await;
    let mut profile: serde_json::Value = serde_json::from_str(WIDE_PROFILE).expect("profile");
    profile["name"] = json!("indexed");
    for t in profile["tables"].as_array_mut().expect("tables") {
        if t["name"] == "work_orders" {
            t["indexes"] = json!([{"columns": ["status", "priority"]}]);
        }
    }
    server
        .admin("PUT", "/v1/admin/profiles/indexed", Some(profile.clone()))
        .await;
    let tech = server
        .user_with_profile("tech1", "technician", Some("indexed"))
        .await;
    let dir = tempfile::tempdir().expect("dir");
    let engine = Engine::open(EngineConfig::new(
        dir.path().join("d.db"),
        &server.url,
        &tech,
    ))
    .expect("open");
    engine.sync().await.expect("sync");

    // A condition on the indexed columns searches the declared index; one
    // on another column scans.
    let status = engine.list("work_orders", None, 1).expect("wo")[0].fields["status"].clone();
    let on_index = Query {
        table: "work_orders".into(),
        filter: Some(Filter::Eq {
            column: "status".into(),
            value: status.clone(),
        }),
        order: vec![OrderBy {
            column: "priority".into(),
            descending: false,
        }],
        ..Query::default()
    };
    let index = fieldsync_core::store::local_index_name(
        "work_orders",
        &fieldsync_core::profile::LocalIndex {
            columns: vec!["status".into(), "priority".into()],
        },
    );
    let plan = engine.query_plan(&on_index).expect("plan").join("\n");
    assert!(
        plan.contains(&format!("SEARCH work_orders USING INDEX {index}")),
        "{plan}"
    );
    // The index serves the whole order, ties included, either way: no sort
    // of every selected row before the limit.
    assert!(!plan.contains("TEMP B-TREE"), "{plan}");
    let mut backward = on_index.clone();
    backward.order[0].descending = true;
    let plan = engine.query_plan(&backward).expect("plan").join("\n");
    assert!(
        plan.contains(&format!("USING INDEX {index}")) && !plan.contains("TEMP B-TREE"),
        "{plan}"
    );
    assert!(!engine.query(&on_index).expect("query").is_empty());
    let off_index = Query {
        table: "work_orders".into(),
        filter: Some(Filter::Eq {
            column: "summary".into(),
            value: Value::Text("x".into()),
        }),
        ..Query::default()
    };
    let plan = engine.query_plan(&off_index).expect("plan").join("\n");
    assert!(plan.contains("SCAN work_orders"), "{plan}");
    assert!(!plan.contains("_fs_lix_"), "{plan}");

    // A transaction of two writes to an observed table: one emission, with
    // both.
    let (tx_tasks, tasks) = channel();
    let _tasks = engine
        .observe(
            Query {
                table: "work_order_service_tasks".into(),
                ..Query::default()
            },
            Arc::new(Collect(std::sync::Mutex::new(tx_tasks))),
        )
        .expect("observe tasks");
    next(&tasks);
    let wo = engine.list("work_orders", None, 1).expect("wo")[0]
        .id
        .clone();
    let task = |id: &str| fieldsync_core::Write {
        op: fieldsync_core::WriteOp::Insert,
        table: "work_order_service_tasks".into(),
        id: id.into(),
        fields: BTreeMap::from([("work_order_id".to_owned(), Value::Text(wo.clone()))]),
    };
    engine
        .transaction(vec![task("obs-task-1"), task("obs-task-2")])
        .expect("transaction");
    let after = next(&tasks);
    assert!(
        ["obs-task-1", "obs-task-2"]
            .iter()
            .all(|id| after.iter().any(|r| r.id == *id))
    );
    assert!(matches!(tasks.try_recv(), Err(TryRecvError::Empty)));

    // Observers of a table that leaves the profile, and of one a reset
    // clears, receive an empty result.
    let (tx_assets, assets) = channel();
    let _assets = engine
        .observe(
            Query {
                table: "customer_assets".into(),
                ..Query::default()
            },
            Arc::new(Collect(std::sync::Mutex::new(tx_assets))),
        )
        .expect("observe assets");
    assert!(!next(&assets).is_empty());
    let (tx_accounts, accounts) = channel();
    let _accounts = engine
        .observe(
            Query {
                table: "accounts".into(),
                ..Query::default()
            },
            Arc::new(Collect(std::sync::Mutex::new(tx_accounts))),
        )
        .expect("observe accounts");
    assert!(!next(&accounts).is_empty());
    let tables = profile["tables"].as_array_mut().expect("tables");
    tables.retain(|t| t["name"] != "customer_assets");
    for t in tables.iter_mut() {
        if t["name"] == "work_orders" {
            t.as_object_mut().expect("table").remove("indexes");
        }
    }
    server
        .admin("PUT", "/v1/admin/profiles/indexed", Some(profile))
        .await;
    let report = engine.sync().await.expect("sync");
    assert_eq!(report.tables_dropped, vec!["customer_assets".to_owned()]);
    assert!(last(&assets).is_empty());
    // The index the profile no longer declares is gone.
    let plan = engine.query_plan(&on_index).expect("plan").join("\n");
    assert!(!plan.contains("_fs_lix_"), "{plan}");

    drain(&accounts);
    engine.reset(true).await.expect("reset");
    assert!(last(&accounts).is_empty());
    // The observation goes on: the next sync brings the rows again.
    engine.sync().await.expect("sync");
    assert!(!last(&accounts).is_empty());
}
