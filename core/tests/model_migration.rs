//! The device's side of a data model change, on a real SQLite file: which
//! profile changes download a table again and which keep its rows and
//! cursor, and the model's indexes built and dropped with the profile.

use fieldsync_core::profile::SyncProfile;
use fieldsync_core::store::Store;
use serde_json::{Value, json};

fn profile(model_version: i64, jobs_columns: Value, jobs_indexes: Value) -> SyncProfile {
    serde_json::from_value(json!({
        "name": "p", "version": 1, "user_id": "u1", "model_version": model_version,
        "tables": [
            {"name": "jobs", "primary_key": "id", "sync_interval_secs": 300,
             "columns": jobs_columns, "rules": [{"kind": "all"}],
             "model_indexes": jobs_indexes},
            {"name": "sites", "primary_key": "id", "sync_interval_secs": 300,
             "columns": [{"name": "id", "type": "text"}, {"name": "name", "type": "text"}],
             "rules": [{"kind": "all"}]}
        ]
    }))
    .expect("profile")
}

fn base_columns() -> Value {
    json!([
        {"name": "id", "type": "text"},
        {"name": "state", "type": "choice", "choices": ["open", "done"]},
        {"name": "note", "type": "text"}
    ])
}

fn indexes(store_path: &std::path::Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(store_path).expect("open");
    let mut stmt = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'jobs' AND name LIKE '_fs_mx_%'")
        .expect("prepare");
    stmt.query_map([], |r| r.get::<_, String>(0))
        .expect("query")
        .map(|r| r.expect("row"))
        .collect()
}

#[test]
fn model_changes_download_again_only_the_tables_whose_columns_changed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("d.db");
    let store = Store::open(&path).expect("store");
    let v1 = profile(
        1,
        base_columns(),
        json!([{"name": "by_state", "columns": ["state"]}]),
    );
    let change = store.apply_profile(&v1, 0).expect("v1");
    assert_eq!(change.added_tables, vec!["jobs", "sites"]);
    assert_eq!(indexes(&path), vec!["_fs_mx_4_jobs_by_state"]);

    // A relaxed column (one more choice) and a new model version: nothing
    // to download again.
    let mut relaxed = base_columns();
    relaxed[1]["choices"] = json!(["open", "done", "held"]);
    let v2 = profile(
        2,
        relaxed.clone(),
        json!([{"name": "by_state", "columns": ["state"]}]),
    );
    let change = store.apply_profile(&v2, 0).expect("v2");
    assert!(change.resynced_tables.is_empty(), "{change:?}");

    // A column dropped (its index with it): still nothing to download.
    let mut dropped = relaxed.clone();
    dropped.as_array_mut().expect("columns").remove(1);
    let v3 = profile(3, dropped.clone(), json!([]));
    let change = store.apply_profile(&v3, 0).expect("v3");
    assert!(change.resynced_tables.is_empty(), "{change:?}");
    assert!(indexes(&path).is_empty());

    // A column added: that table downloads again, the other does not.
    let mut added = dropped;
    added
        .as_array_mut()
        .expect("columns")
        .push(json!({"name": "gate_code", "type": "text", "default": "none"}));
    let v4 = profile(
        4,
        added,
        json!([{"name": "by_gate", "columns": ["gate_code"]}]),
    );
    let change = store.apply_profile(&v4, 0).expect("v4");
    assert_eq!(change.resynced_tables, vec!["jobs"]);
    assert_eq!(indexes(&path), vec!["_fs_mx_4_jobs_by_gate"]);
    assert_eq!(
        store.profile().expect("profile").map(|p| p.model_version),
        Some(4)
    );
}
