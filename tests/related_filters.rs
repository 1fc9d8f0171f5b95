//! Custom filters with conditions on related tables, end to end: a booking
//! kept when its work order's priority is high (two levels) or its work
//! order's service account is in the North (three levels), and rows that
//! come and go when only the related row changes. The server runs
//! in-process on 127.0.0.1 with an injected `ManualClock`; the device is
//! the core `Engine` over real HTTP and a real SQLite file.

mod inproc;
mod testdb;

use serde_json::{Value, json};

use inproc::{ADMIN, Env, held, set};

/// My bookings whose work order is urgent (priority 1, two levels), or whose work
/// order's service account is in the North (three levels); the work
/// orders and accounts they reach.
fn profile() -> Value {
    json!({
        "name": "urgent",
        "tables": [
            {"name": "bookings",
             "columns": ["work_order_id", "resource_id", "status"],
             "rules": [{"kind": "custom", "filter": {"op": "and", "filters": [
                 {"op": "eq_current_user", "column": "resource_id"},
                 {"op": "related", "column": "work_order_id", "table": "work_orders",
                  "filter": {"op": "or", "filters": [
                      {"op": "eq", "column": "priority", "value": 1},
                      {"op": "related", "column": "account_id", "table": "accounts",
                       "filter": {"op": "eq", "column": "city", "value": "North"}}]}}]}}],
             "sync_interval_secs": 300},
            {"name": "work_orders", "columns": ["name", "account_id", "priority"],
             "rules": [{"kind": "related", "table": "bookings", "column": "id",
                        "foreign_column": "work_order_id"}],
             "sync_interval_secs": 300},
            {"name": "accounts", "columns": ["name", "city"],
             "rules": [{"kind": "related", "table": "work_orders", "column": "id",
                        "foreign_column": "account_id"}],
             "sync_interval_secs": 300}
        ]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn related_conditions_follow_changes_of_the_related_rows_only() {
    let env = Env::start().await;
    env.admin("PUT", "/v1/admin/profiles/urgent", Some(profile()))
        .await;
    let disp = env.user("disp", "dispatcher", None).await;
    let tech = env.user("tech-a", "technician", Some("urgent")).await;
    for (id, city) in [("acc-n", "North"), ("acc-s", "South")] {
        env.put(&disp, "accounts", id, json!({"name": id, "city": city}))
            .await;
    }
    for (id, priority, account) in [
        ("wo-1", 1, "acc-s"),
        ("wo-2", 3, "acc-n"),
        ("wo-3", 3, "acc-s"),
    ] {
        env.put(
            &disp,
            "work_orders",
            id,
            json!({"name": id, "priority": priority, "account_id": account}),
        )
        .await;
    }
    for (id, wo, tech) in [
        ("bk-1", "wo-1", "tech-a"),
        ("bk-2", "wo-2", "tech-a"),
        ("bk-3", "wo-3", "tech-a"),
        ("bk-other", "wo-1", "tech-b"),
    ] {
        env.put(
            &disp,
            "bookings",
            id,
            json!({"work_order_id": wo, "resource_id": tech, "status": "active"}),
        )
        .await;
    }
    let device = env.device("d", &tech);
    device.sync().await.expect("first sync");
    // bk-1 by its work order's priority (two levels), bk-2 by its work
    // order's account (three levels); bk-3's work order is neither.
    assert_eq!(held(&device, "bookings"), set(&["bk-1", "bk-2"]));
    assert_eq!(held(&device, "work_orders"), set(&["wo-1", "wo-2"]));
    assert_eq!(held(&device, "accounts"), set(&["acc-n", "acc-s"]));

    // Only the work order changes: wo-3 becomes urgent, wo-1 stops being.
    env.put(
        &disp,
        "work_orders",
        "wo-3",
        json!({"name": "wo-3", "priority": 1, "account_id": "acc-s"}),
    )
    .await;
    env.put(
        &disp,
        "work_orders",
        "wo-1",
        json!({"name": "wo-1", "priority": 3, "account_id": "acc-s"}),
    )
    .await;
    device.sync().await.expect("sync");
    assert_eq!(held(&device, "bookings"), set(&["bk-2", "bk-3"]));
    assert_eq!(held(&device, "work_orders"), set(&["wo-2", "wo-3"]));

    // Only the account changes, two relationships away: the North moves.
    env.put(
        &disp,
        "accounts",
        "acc-n",
        json!({"name": "acc-n", "city": "South"}),
    )
    .await;
    env.put(
        &disp,
        "accounts",
        "acc-s",
        json!({"name": "acc-s", "city": "North"}),
    )
    .await;
    device.sync().await.expect("sync");
    // bk-2 leaves (its account is South now); bk-1 comes back (its work
    // order's account is North now), with its work order; bk-3 stays
    // (urgent).
    assert_eq!(held(&device, "bookings"), set(&["bk-1", "bk-3"]));
    assert_eq!(held(&device, "work_orders"), set(&["wo-1", "wo-3"]));
    assert_eq!(held(&device, "accounts"), set(&["acc-s"]));

    // A second device downloading from scratch agrees with the first.
    let fresh = env.device("fresh", &tech);
    fresh.sync().await.expect("first sync");
    for table in ["bookings", "work_orders", "accounts"] {
        assert_eq!(held(&fresh, table), held(&device, table), "{table}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn related_conditions_need_their_rows_on_the_device() {
    let env = Env::start().await;
    // The accounts are not kept through the work orders: the device could
    // not evaluate the condition, so the profile is refused.
    let mut p = profile();
    p["name"] = json!("broken");
    p["tables"][2]["rules"] = json!([{"kind": "owned", "column": "name"}]);
    let (s, v) = env
        .call("PUT", "/v1/admin/profiles/broken", ADMIN, Some(p))
        .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["code"], "invalid_profile");
    assert!(
        v["error"]["message"]
            .as_str()
            .expect("message")
            .contains("accounts"),
        "{v}"
    );
    // A column the related table does not sync.
    let mut p = profile();
    p["name"] = json!("unsynced");
    p["tables"][1]["columns"] = json!(["name", "account_id"]);
    let (s, v) = env
        .call("PUT", "/v1/admin/profiles/unsynced", ADMIN, Some(p))
        .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["code"], "unknown_column", "{v}");
    // Four relationships deep is refused.
    let deep = json!({"op": "related", "column": "work_order_id", "table": "work_orders",
        "filter": {"op": "related", "column": "account_id", "table": "accounts",
          "filter": {"op": "related", "column": "name", "table": "accounts",
            "filter": {"op": "related", "column": "name", "table": "accounts",
              "filter": {"op": "is_null", "column": "city"}}}}});
    let mut p = profile();
    p["name"] = json!("deep");
    p["tables"][0]["rules"] = json!([{"kind": "custom", "filter": deep}]);
    let (s, v) = env
        .call("PUT", "/v1/admin/profiles/deep", ADMIN, Some(p))
        .await;
    assert_eq!(s, 400, "{v}");
    let _ = &env.clock;
}
