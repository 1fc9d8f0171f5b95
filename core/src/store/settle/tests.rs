use std::collections::{BTreeMap, BTreeSet};

use super::{remove_evaluated, unreached};
use crate::profile::SyncProfile;
use crate::protocol::PullPage;
use crate::store::Store;
use crate::value::Value;

const DAY: i64 = 86_400_000;
/// 2026-11-29T10:00:00Z.
const NOW: i64 = 1_795_946_400_000;

fn profile() -> SyncProfile {
    serde_json::from_value(serde_json::json!({
        "name": "p", "version": 1, "user_id": "u1",
        "tables": [
            {"name": "bookings", "primary_key": "id", "sync_interval_secs": 60,
             "columns": [{"name": "id", "type": "text"}, {"name": "work_order_id", "type": "text"},
                         {"name": "start_time", "type": "datetime"}],
             "rules": [{"kind": "custom", "filter": {"op": "next_days", "column": "start_time", "days": 7}}]},
            {"name": "work_orders", "primary_key": "id", "sync_interval_secs": 60,
             "columns": [{"name": "id", "type": "text"}, {"name": "title", "type": "text"}],
             "rules": [{"kind": "related", "table": "bookings", "column": "id", "foreign_column": "work_order_id"}]},
            {"name": "incidents", "primary_key": "id", "sync_interval_secs": 60,
             "columns": [{"name": "id", "type": "text"}, {"name": "work_order_id", "type": "text"}],
             "rules": [{"kind": "related", "table": "work_orders", "column": "work_order_id", "foreign_column": "id"}]}
        ]
    }))
    .expect("profile")
}

fn t(s: &str) -> Value {
    Value::Text(s.into())
}

fn page(table: &str, columns: &[&str], rows: Vec<Vec<Value>>, removed: &[&str]) -> PullPage {
    PullPage {
        table: table.into(),
        profile_version: 1,
        cursor: "c".into(),
        has_more: false,
        total: None,
        snapshot_rows: 0,
        columns: std::iter::once("_version")
            .chain(columns.iter().copied())
            .map(String::from)
            .collect(),
        rows: rows
            .into_iter()
            .map(|r| std::iter::once(Value::Integer(1)).chain(r).collect())
            .collect(),
        removed: removed.iter().map(|s| s.to_string()).collect(),
    }
}

/// Two bookings (b1 for w1, b2 for w2), their work orders, an incident
/// each, downloaded whole and settled.
fn settled_store(dir: &std::path::Path) -> (Store, SyncProfile) {
    let store = Store::open(&dir.join("d.db")).expect("open");
    let p = profile();
    store.apply_profile(&p, NOW).expect("profile");
    let start = t("2026-11-30T09:00:00Z");
    for pg in [
        bookings_page(
            vec![
                vec![t("b1"), t("w1"), start.clone()],
                vec![t("b2"), t("w2"), start],
            ],
            &[],
        ),
        page(
            "work_orders",
            &["id", "title"],
            vec![vec![t("w1"), t("one")], vec![t("w2"), t("two")]],
            &[],
        ),
        page(
            "incidents",
            &["id", "work_order_id"],
            vec![vec![t("i1"), t("w1")], vec![t("i2"), t("w2")]],
            &[],
        ),
    ] {
        let table = p.table(&pg.table).expect("table").clone();
        store.apply_page(None, &table, &pg, NOW).expect("page");
    }
    let removed = store.remove_unreached(&p, NOW).expect("settle");
    assert!(removed.iter().all(|(_, n)| *n == 0), "{removed:?}");
    (store, p)
}

/// A settled store made to look as an earlier version left it (`sql`),
/// closed; returns its path.
fn earlier_store(dir: &std::path::Path, sql: &str) -> std::path::PathBuf {
    let (store, _) = settled_store(dir);
    store
        .with_writer(|c| {
            c.execute_batch(sql)?;
            // Written before numbered migrations (and so before
            // migration 2's transactions).
            c.execute_batch(
                "DROP INDEX _fs_outbox_tx; ALTER TABLE _fs_outbox DROP COLUMN tx_id;
                 ALTER TABLE _fs_sync_run DROP COLUMN fraction;",
            )?;
            c.pragma_update(None, "user_version", 0)?;
            Ok(())
        })
        .expect("earlier version");
    dir.join("d.db")
}

fn ids(store: &Store, table: &str) -> Vec<String> {
    store
        .with_reader(|c| {
            let mut stmt = c.prepare(&format!("SELECT id FROM {table} ORDER BY id"))?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .expect("ids")
}

/// A first download evaluated table by table while it runs: bookings
/// (b2 starts after the seven days) and work orders (w2 is reached by b2
/// only) evaluated whole as each ends, incidents downloaded after them.
/// A booking no page wrote is then put in directly (it starts after the
/// seven days too): only an evaluation of every booking would find it.
/// Returns the tables evaluated early, with their day.
fn settled_early(dir: &std::path::Path) -> (Store, SyncProfile, BTreeMap<String, String>) {
    let store = Store::open(&dir.join("d.db")).expect("open");
    let p = profile();
    store.apply_profile(&p, NOW).expect("profile");
    let (soon, late) = (t("2026-11-30T09:00:00Z"), t("2026-12-20T09:00:00Z"));
    let apply = |pg: PullPage| {
        let table = p.table(&pg.table).expect("table").clone();
        store.apply_page(None, &table, &pg, NOW).expect("page");
    };
    let mut early = BTreeMap::new();
    let mut settled = BTreeSet::new();
    let day = p.filter_context(NOW).today().to_string();
    apply(bookings_page(
        vec![
            vec![t("b1"), t("w1"), soon],
            vec![t("b2"), t("w2"), late.clone()],
        ],
        &[],
    ));
    let removed = store
        .settle_table(&p, "bookings", &settled, NOW)
        .expect("settle");
    assert_eq!(removed, 1);
    assert_eq!(ids(&store, "bookings"), ["b1"]);
    settled.insert("bookings".to_string());
    early.insert("bookings".to_string(), day.clone());
    apply(page(
        "work_orders",
        &["id", "title"],
        vec![vec![t("w1"), t("one")], vec![t("w2"), t("two")]],
        &[],
    ));
    let removed = store
        .settle_table(&p, "work_orders", &settled, NOW)
        .expect("settle");
    assert_eq!(removed, 1);
    assert_eq!(ids(&store, "work_orders"), ["w1"]);
    early.insert("work_orders".to_string(), day);
    apply(page(
        "incidents",
        &["id", "work_order_id"],
        vec![vec![t("i1"), t("w1")], vec![t("i2"), t("w2")]],
        &[],
    ));
    store
        .with_writer(|c| {
            c.execute(
                "INSERT INTO bookings (id, work_order_id, start_time) VALUES ('stray', 'w1', ?1)",
                ["2026-12-20T09:00:00Z"],
            )?;
            Ok(())
        })
        .expect("stray");
    (store, p, early)
}

#[test]
fn tables_evaluated_during_the_download_are_not_evaluated_whole_again_the_same_day() {
    let dir = tempfile::tempdir().expect("dir");
    let (store, p, early) = settled_early(dir.path());
    let removed = store
        .remove_unreached_rest(&p, NOW + 1000, &early)
        .expect("settle");
    // The incidents, downloaded whole and not evaluated yet, are; the
    // bookings and work orders only for what changed since (nothing).
    assert_eq!(
        removed,
        vec![
            ("bookings".to_string(), 0),
            ("work_orders".to_string(), 0),
            ("incidents".to_string(), 1)
        ]
    );
    assert_eq!(ids(&store, "bookings"), ["b1", "stray"]);
    assert_eq!(ids(&store, "incidents"), ["i1"]);
}

#[test]
fn a_row_written_locally_between_the_evaluation_and_the_removal_stays() {
    let dir = tempfile::tempdir().expect("dir");
    let store = Store::open(&dir.path().join("d.db")).expect("open");
    let p = profile();
    store.apply_profile(&p, NOW).expect("profile");
    let (soon, late) = (t("2026-11-30T09:00:00Z"), t("2026-12-20T09:00:00Z"));
    for pg in [
        bookings_page(
            vec![
                vec![t("b1"), t("w1"), soon],
                vec![t("b2"), t("w2"), late.clone()],
                vec![t("b3"), t("w1"), late],
            ],
            &[],
        ),
        page(
            "work_orders",
            &["id", "title"],
            vec![
                vec![t("w1"), t("one")],
                vec![t("w2"), t("two")],
                vec![t("w3"), t("three")],
            ],
            &[],
        ),
    ] {
        let table = p.table(&pg.table).expect("table").clone();
        store.apply_page(None, &table, &pg, NOW).expect("page");
    }
    let ctx = p.filter_context(NOW);
    let bookings = p.table("bookings").expect("bookings").clone();
    let work_orders = p.table("work_orders").expect("work orders").clone();
    let edit = |table: &crate::profile::SyncTable, id: &str, column: &str, value: &str| {
        let mut data = BTreeMap::new();
        data.insert(column.to_string(), t(value));
        store
            .write(&p, table, id, crate::protocol::Op::Update, data, NOW)
            .expect("write");
    };
    // Bookings (own rules, evaluated in Rust): b2 and b3 start after the
    // seven days; b3 is edited before the removal.
    let none = BTreeSet::new();
    let doomed = store
        .with_reader(|c| unreached(c, &p, &bookings, &none, &ctx))
        .expect("evaluate");
    assert_eq!(doomed, ["b2", "b3"]);
    edit(&bookings, "b3", "work_order_id", "w3");
    let removed = store
        .with_writer(|c| remove_evaluated(c, &p, &bookings, &none, &ctx, &doomed))
        .expect("remove");
    assert_eq!(removed, 1);
    assert_eq!(ids(&store, "bookings"), ["b1", "b3"]);
    // Work orders (a related rule, evaluated in SQL): w2 and w3 are not
    // reached, then w3 is edited before the removal.
    let settled = BTreeSet::from(["bookings"]);
    let doomed = store
        .with_reader(|c| unreached(c, &p, &work_orders, &settled, &ctx))
        .expect("evaluate");
    assert_eq!(doomed, ["w2"], "b3, pending, reaches w3");
    let doomed = vec!["w2".to_string(), "w3".to_string()];
    edit(&work_orders, "w2", "title", "edited");
    let removed = store
        .with_writer(|c| remove_evaluated(c, &p, &work_orders, &settled, &ctx, &doomed))
        .expect("remove");
    assert_eq!(removed, 0, "w2 has a pending change, b3 reaches w3");
    assert_eq!(ids(&store, "work_orders"), ["w1", "w2", "w3"]);
}

#[test]
fn a_table_evaluated_during_the_download_on_an_earlier_day_is_evaluated_whole_again() {
    let dir = tempfile::tempdir().expect("dir");
    let (store, p, early) = settled_early(dir.path());
    // The day passed between the early evaluation and the final pass:
    // the bookings' seven days moved, so every booking is evaluated.
    let removed = store
        .remove_unreached_rest(&p, NOW + DAY, &early)
        .expect("settle");
    assert_eq!(removed[0], ("bookings".to_string(), 1));
    assert_eq!(ids(&store, "bookings"), ["b1"]);
    assert_eq!(ids(&store, "incidents"), ["i1"]);
}

#[test]
fn only_rows_new_to_the_device_or_with_a_rule_column_moved_are_listed_for_settling() {
    // Without the related-value queue, and with it (one lookup of the
    // device's copy then serves both).
    for queue in [false, true] {
        rows_listed_for_settling(queue);
    }
}

fn rows_listed_for_settling(queue: bool) {
    let dir = tempfile::tempdir().expect("dir");
    let (store, p) = settled_store(dir.path());
    let apply = |pg: PullPage| {
        let table = p.table(&pg.table).expect("table").clone();
        store
            .apply_page(queue.then_some(&p), &table, &pg, NOW)
            .expect("page");
    };
    // The work orders' rules read only their key: a new title is not a
    // reason to evaluate w1 again.
    apply(page(
        "work_orders",
        &["id", "title"],
        vec![vec![t("w1"), t("one, edited")]],
        &[],
    ));
    // The bookings' rules read `start_time`: b1 comes back with the
    // same one (and another work order, which the lost-value triggers
    // follow), b2 with a later one.
    apply(bookings_page(
        vec![
            vec![t("b1"), t("w2"), t("2026-11-30T09:00:00Z")],
            vec![t("b2"), t("w2"), t("2026-12-01T09:00:00Z")],
        ],
        &[],
    ));
    // An incident new to the device.
    apply(page(
        "incidents",
        &["id", "work_order_id"],
        vec![vec![t("i3"), t("w1")]],
        &[],
    ));
    let listed: Vec<(String, String)> = store
        .with_reader(|c| {
            let mut stmt = c.prepare("SELECT tbl, row_id FROM _fs_settle_rows ORDER BY 1, 2")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .expect("listed");
    assert_eq!(
        listed,
        [
            ("bookings".to_string(), "b2".to_string()),
            ("incidents".to_string(), "i3".to_string())
        ],
        "with the queue: {queue}"
    );
    if queue {
        // b1's new work order is queued (b2's is the same one).
        assert_eq!(pending(&store, &p, "work_orders"), ["w2"]);
    }
    // b1 moved to w2: w1 is reached by no booking, and goes with its
    // incidents; the edited title changed nothing else.
    store.remove_unreached(&p, NOW + 1000).expect("settle");
    assert_eq!(ids(&store, "work_orders"), ["w2"]);
    assert_eq!(ids(&store, "incidents"), ["i2"]);
}

#[test]
fn a_removed_booking_takes_its_work_order_and_incidents_and_nothing_else_is_read() {
    let dir = tempfile::tempdir().expect("dir");
    let (store, p) = settled_store(dir.path());
    // A row no change reaches: an incremental pass does not look at it.
    store
        .with_writer(|c| {
            c.execute(
                "INSERT INTO incidents (id, work_order_id) VALUES ('stray', 'w9')",
                [],
            )?;
            Ok(())
        })
        .expect("stray");
    let bookings = p.table("bookings").expect("bookings").clone();
    store
        .apply_page(None, &bookings, &bookings_page(vec![], &["b1"]), NOW)
        .expect("removal page");
    let removed = store.remove_unreached(&p, NOW + 1000).expect("settle");
    assert_eq!(
        removed,
        vec![
            ("bookings".to_string(), 0),
            ("work_orders".to_string(), 1),
            ("incidents".to_string(), 1)
        ]
    );
    assert_eq!(ids(&store, "work_orders"), ["w2"]);
    assert_eq!(ids(&store, "incidents"), ["i2", "stray"]);
    // A table evaluated whole (here: downloaded again) finds it.
    store.restart_table("incidents").expect("restart");
    store.remove_unreached(&p, NOW + 2000).expect("settle");
    assert_eq!(ids(&store, "incidents"), ["i2"]);
}

#[test]
fn a_whole_table_settling_reads_the_related_column_index_and_a_null_reaches_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let (store, p) = settled_store(dir.path());
    // The whole-table settling built the index on bookings.work_order_id;
    // the statement that evaluates work orders reads it for its `IN`
    // instead of building a temporary set of the bookings' values.
    let work_orders = p.table("work_orders").expect("table");
    let reached = super::related_only_sql(&p, work_orders, &["bookings"].into_iter().collect())
        .expect("related-only rules");
    let plan: Vec<String> = store
        .with_reader(|c| {
            let mut stmt = c.prepare(&format!(
                "EXPLAIN QUERY PLAN SELECT id FROM work_orders WHERE NOT ({reached})"
            ))?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(3))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .expect("plan");
    assert!(
        plan.iter()
            .any(|d| d.contains("FOR IN-OPERATOR") && d.contains("work_order_id")),
        "{plan:?}"
    );
    // The index was built with a small page cache (its sort stays
    // small); the store's own cache size is back.
    let cache: i64 = store
        .with_writer(|c| Ok(c.pragma_query_value(None, "cache_size", |r| r.get(0))?))
        .expect("cache_size");
    assert_eq!(cache, -2000);
    // A booking without a work order (NULL) makes the set hold a NULL:
    // a work order no booking names still leaves, one named stays.
    store
        .with_writer(|c| {
            c.execute_batch(
                "INSERT INTO bookings (id, work_order_id, start_time) VALUES ('b0', NULL, '2026-11-30T09:00:00Z');
                 INSERT INTO work_orders (id, title) VALUES ('w9', 'none');",
            )?;
            Ok(())
        })
        .expect("rows");
    store.restart_table("work_orders").expect("restart");
    store.remove_unreached(&p, NOW).expect("settle");
    assert_eq!(ids(&store, "work_orders"), ["w1", "w2"]);
}

#[test]
fn indexed_values_that_move_are_written_by_pages_and_by_local_writes() {
    let dir = tempfile::tempdir().expect("dir");
    let (store, p) = settled_store(dir.path());
    // bookings.work_order_id is indexed (the whole-table settling built
    // the index), so its upserts set it only when it moves.
    let work_order = |id: &str| {
        store
            .with_reader(|c| {
                Ok(c.query_row(
                    "SELECT work_order_id FROM bookings WHERE id = ?1",
                    [id],
                    |r| r.get::<_, Option<String>>(0),
                )?)
            })
            .expect("booking")
    };
    let bookings = p.table("bookings").expect("bookings").clone();
    // A page: b1 keeps its work order (other columns change), b2 moves.
    store
        .apply_page(
            None,
            &bookings,
            &bookings_page(
                vec![
                    vec![t("b1"), t("w1"), t("2026-12-01T09:00:00Z")],
                    vec![t("b2"), t("w1"), t("2026-11-30T09:00:00Z")],
                ],
                &[],
            ),
            NOW,
        )
        .expect("page");
    assert_eq!(work_order("b1").as_deref(), Some("w1"));
    assert_eq!(work_order("b2").as_deref(), Some("w1"));
    let start: String = store
        .with_reader(|c| {
            Ok(
                c.query_row("SELECT start_time FROM bookings WHERE id = 'b1'", [], |r| {
                    r.get(0)
                })?,
            )
        })
        .expect("start");
    assert_eq!(start, "2026-12-01T09:00:00Z");
    // A local write moves b1 to w2.
    let data = [("work_order_id".to_owned(), t("w2"))]
        .into_iter()
        .collect();
    store
        .write(&p, &bookings, "b1", crate::protocol::Op::Update, data, NOW)
        .expect("write");
    assert_eq!(work_order("b1").as_deref(), Some("w2"));
}

#[test]
fn a_work_order_kept_by_another_booking_stays() {
    let dir = tempfile::tempdir().expect("dir");
    let (store, p) = settled_store(dir.path());
    let bookings = p.table("bookings").expect("bookings").clone();
    // b2 now points at w1 as well; b1 leaves.
    store
        .apply_page(
            None,
            &bookings,
            &bookings_page(
                vec![vec![t("b2"), t("w1"), t("2026-11-30T09:00:00Z")]],
                &["b1"],
            ),
            NOW,
        )
        .expect("page");
    store.remove_unreached(&p, NOW).expect("settle");
    assert_eq!(ids(&store, "work_orders"), ["w1"]);
    assert_eq!(ids(&store, "incidents"), ["i1"]);
}

#[test]
fn a_value_lost_twice_before_settling_is_recorded_once_and_the_pages_apply() {
    let dir = tempfile::tempdir().expect("dir");
    let (store, p) = settled_store(dir.path());
    let bookings = p.table("bookings").expect("bookings").clone();
    let start = t("2026-11-30T09:00:00Z");
    // b3 also points at w1; b1 leaves (w1 lost once).
    store
        .apply_page(
            None,
            &bookings,
            &bookings_page(vec![vec![t("b3"), t("w1"), start.clone()]], &["b1"]),
            NOW,
        )
        .expect("first page");
    // b3 moves to w2 (w1 lost again), written by the page's upsert: the
    // trigger's insert must not trip over the value already recorded.
    store
        .apply_page(
            None,
            &bookings,
            &bookings_page(vec![vec![t("b3"), t("w2"), start]], &[]),
            NOW,
        )
        .expect("second page");
    let lost: Vec<String> = store
        .with_reader(|c| {
            let mut stmt = c.prepare("SELECT value FROM _fs_settle_lost ORDER BY value")?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .expect("lost");
    assert_eq!(lost, ["w1"]);
    store.remove_unreached(&p, NOW).expect("settle");
    assert_eq!(ids(&store, "work_orders"), ["w2"]);
    assert_eq!(ids(&store, "incidents"), ["i2"]);
}

#[test]
fn the_date_window_is_evaluated_again_when_the_day_changes() {
    let dir = tempfile::tempdir().expect("dir");
    let (store, p) = settled_store(dir.path());
    store
        .remove_unreached(&p, NOW + 3_600_000)
        .expect("same day");
    assert_eq!(ids(&store, "bookings"), ["b1", "b2"]);
    // Eight days on, both bookings are in the past: they leave with no
    // server change, and so does everything they reached.
    store
        .remove_unreached(&p, NOW + 8 * DAY)
        .expect("a week later");
    assert!(ids(&store, "bookings").is_empty());
    assert!(ids(&store, "work_orders").is_empty());
    assert!(ids(&store, "incidents").is_empty());
}

#[test]
fn a_row_with_a_pending_change_stays_until_its_change_leaves_the_outbox() {
    let dir = tempfile::tempdir().expect("dir");
    let (store, p) = settled_store(dir.path());
    let incidents = p.table("incidents").expect("incidents").clone();
    let mut data = std::collections::BTreeMap::new();
    data.insert("work_order_id".to_string(), t("w9"));
    store
        .write(&p, &incidents, "i1", crate::protocol::Op::Update, data, NOW)
        .expect("write");
    store.remove_unreached(&p, NOW).expect("settle");
    assert_eq!(ids(&store, "incidents"), ["i1", "i2"], "pending: kept");
    let batch = store.take_batch(10).expect("batch");
    store
        .apply_push_results(
            &p,
            &batch,
            &[crate::protocol::MutationResult {
                idempotency_key: batch[0].mutation.idempotency_key.clone(),
                status: crate::protocol::MutationStatus::Applied,
                version: 2,
                row: None,
                error: None,
            }],
            NOW,
        )
        .expect("results");
    // Applied, and the server says the row is outside the profile (row:
    // null): it is gone; a kept row with a value no work order holds
    // would be checked here too.
    store.remove_unreached(&p, NOW).expect("settle");
    assert_eq!(ids(&store, "incidents"), ["i2"]);
}

#[test]
fn related_values_are_queued_by_arriving_rows_and_leave_once_fetched() {
    let dir = tempfile::tempdir().expect("dir");
    let (store, p) = settled_store(dir.path());
    let key = crate::store::related_rule_key("work_orders", "id", "bookings", "work_order_id");
    let bookings = p.table("bookings").expect("bookings").clone();
    let work_orders = p.table("work_orders").expect("work_orders").clone();
    assert!(
        store
            .take_related_pending(&key, &bookings, "work_order_id")
            .expect("pending")
            .is_empty()
    );
    let pg = bookings_page(vec![vec![t("b3"), t("w3"), t("2026-11-30T09:00:00Z")]], &[]);
    // Queued as the page is written (a value no booking holds yet would
    // be dropped by `take_related_pending`).
    store
        .apply_page(Some(&p), &bookings, &pg, NOW)
        .expect("page");
    let pending = store
        .take_related_pending(&key, &bookings, "work_order_id")
        .expect("pending");
    assert_eq!(pending, ["w3"]);
    store.clear_related_pending(&key, &pending).expect("clear");
    assert!(
        store
            .take_related_pending(&key, &bookings, "work_order_id")
            .expect("pending")
            .is_empty()
    );
    // The children of a work order that arrives are queued too.
    let child_key =
        crate::store::related_rule_key("incidents", "work_order_id", "work_orders", "id");
    let wo = work_order("w3", "three");
    store
        .apply_page(Some(&p), &work_orders, &wo, NOW)
        .expect("page");
    assert_eq!(
        store
            .take_related_pending(&child_key, &work_orders, "id")
            .expect("pending"),
        ["w3"]
    );
}

fn arrive(store: &Store, p: &SyncProfile, pg: &PullPage) {
    let table = p.table(&pg.table).expect("table").clone();
    store.apply_page(Some(p), &table, pg, NOW).expect("page");
}

fn pending(store: &Store, p: &SyncProfile, child: &str) -> Vec<String> {
    let (key, other, f) = match child {
        "work_orders" => (
            crate::store::related_rule_key("work_orders", "id", "bookings", "work_order_id"),
            "bookings",
            "work_order_id",
        ),
        _ => (
            crate::store::related_rule_key("incidents", "work_order_id", "work_orders", "id"),
            "work_orders",
            "id",
        ),
    };
    store
        .take_related_pending(&key, p.table(other).expect("other"), f)
        .expect("pending")
}

fn bookings_page(rows: Vec<Vec<Value>>, removed: &[&str]) -> PullPage {
    page(
        "bookings",
        &["id", "work_order_id", "start_time"],
        rows,
        removed,
    )
}

fn work_order(id: &str, title: &str) -> PullPage {
    page(
        "work_orders",
        &["id", "title"],
        vec![vec![t(id), t(title)]],
        &[],
    )
}

fn booking(id: &str, wo: &str) -> PullPage {
    bookings_page(vec![vec![t(id), t(wo), t("2026-11-30T10:00:00Z")]], &[])
}

#[test]
fn a_row_that_arrives_changed_with_the_same_related_value_costs_no_fetch() {
    let dir = tempfile::tempdir().expect("dir");
    let (store, p) = settled_store(dir.path());
    arrive(&store, &p, &booking("b1", "w1"));
    let wo = work_order("w1", "edited");
    arrive(&store, &p, &wo);
    assert!(pending(&store, &p, "work_orders").is_empty());
    assert!(pending(&store, &p, "incidents").is_empty());
    // A new related value, or a new row, is fetched.
    arrive(&store, &p, &booking("b1", "w2"));
    arrive(&store, &p, &booking("b5", "w5"));
    assert_eq!(pending(&store, &p, "work_orders"), ["w2", "w5"]);
}

#[test]
fn rows_of_a_snapshot_are_queued_only_for_tables_whose_download_began_before_it() {
    let p = profile();
    let table = |name: &str| p.table(name).expect("table").clone();
    let (bookings, work_orders) = (table("bookings"), table("work_orders"));
    // Two bookings of the snapshot (b1, b2), then one changed since (b3).
    let body = |snapshot_rows: &str| {
        let rows = r#""rows": [[1, "b1", "w1", "2026-11-30T09:00:00Z"],
            [1, "b2", "w2", "2026-11-30T09:00:00Z"], [1, "b3", "w3", "2026-11-30T09:00:00Z"]]"#;
        let head = r#""table": "bookings", "profile_version": 1, "cursor": "c", "has_more": true"#;
        let columns = r#""columns": ["_version", "id", "work_order_id", "start_time"]"#;
        let body = match snapshot_rows {
            "before" => {
                format!(r#"{{{head}, "snapshot_rows": 2, {columns}, {rows}, "removed": []}}"#)
            }
            "after" => {
                format!(r#"{{{head}, {columns}, {rows}, "snapshot_rows": 2, "removed": []}}"#)
            }
            _ => format!(r#"{{{head}, {columns}, {rows}, "removed": []}}"#),
        };
        crate::codec::Body::plain(body.into_bytes())
    };
    let fresh = |name: &str| {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(&dir.path().join(format!("{name}.db"))).expect("open");
        store.apply_profile(&p, NOW).expect("profile");
        (dir, store)
    };
    let apply = |store: &Store, how: &str| {
        store
            .apply_page_json(Some(&p), &bookings, &body(how), NOW, |_| None)
            .expect("page");
    };
    // The work orders have begun no download: theirs selects it all.
    let (_d, store) = fresh("none");
    store.begin_pull(&bookings, NOW).expect("begin");
    apply(&store, "before");
    assert!(pending(&store, &p, "work_orders").is_empty());
    // Begun after the bookings: the snapshot's rows are covered.
    let (_d, store) = fresh("after");
    store.begin_pull(&bookings, NOW).expect("begin");
    store.begin_pull(&work_orders, NOW).expect("begin");
    apply(&store, "before");
    assert_eq!(pending(&store, &p, "work_orders"), ["w3"]);
    // A count that comes after the rows is not used; none at all
    // covers nothing.
    let (_d, store) = fresh("late");
    store.begin_pull(&bookings, NOW).expect("begin");
    store.begin_pull(&work_orders, NOW).expect("begin");
    apply(&store, "after");
    assert_eq!(pending(&store, &p, "work_orders"), ["w1", "w2", "w3"]);
    let (_d, store) = fresh("unsaid");
    store.begin_pull(&bookings, NOW).expect("begin");
    store.begin_pull(&work_orders, NOW).expect("begin");
    apply(&store, "none");
    assert_eq!(pending(&store, &p, "work_orders"), ["w1", "w2", "w3"]);
    // Begun before the bookings' download (which restarted since): its
    // walk may have passed what their snapshot reaches.
    let (_d, store) = fresh("before");
    store.begin_pull(&work_orders, NOW).expect("begin");
    store.begin_pull(&bookings, NOW).expect("begin");
    apply(&store, "before");
    assert_eq!(pending(&store, &p, "work_orders"), ["w1", "w2", "w3"]);
    // A download from the empty cursor drops what was queued for it.
    store.begin_pull(&bookings, NOW).expect("begin");
    apply(&store, "none");
    store.restart_table("work_orders").expect("restart");
    store.begin_pull(&work_orders, NOW).expect("begin");
    assert!(pending(&store, &p, "work_orders").is_empty());
}

#[test]
fn a_row_two_versions_on_fetches_again_and_so_do_the_rows_it_fetches() {
    let dir = tempfile::tempdir().expect("dir");
    let (store, p) = settled_store(dir.path());
    // b1 was deactivated and reactivated on the server since the
    // device's copy (version 1): what it reaches may have been
    // downloaded while it was hidden. It comes back as the device
    // holds it, the version aside.
    let unchanged = |id: &str, wo: &str, version: i64| {
        let mut b = bookings_page(vec![vec![t(id), t(wo), t("2026-11-30T09:00:00Z")]], &[]);
        b.rows[0][0] = Value::Integer(version);
        b
    };
    let b1 = unchanged("b1", "w1", 3);
    arrive(&store, &p, &b1);
    assert_eq!(pending(&store, &p, "work_orders"), ["w1"]);
    // w1 comes back by fetch: its incidents are fetched again.
    let work_orders = p.table("work_orders").expect("work_orders").clone();
    let wo = work_order("w1", "one");
    store
        .apply_fetched(&p, &work_orders, &wo.columns, &wo.rows)
        .expect("fetched");
    assert_eq!(pending(&store, &p, "incidents"), ["w1"]);
    // One version on is one edit: nothing to fetch, whether the
    // edit moved a column the bookings' rules read or not.
    arrive(&store, &p, &unchanged("b2", "w2", 2));
    let mut b2 = booking("b2", "w2");
    b2.rows[0][0] = Value::Integer(3);
    arrive(&store, &p, &b2);
    assert_eq!(pending(&store, &p, "work_orders"), ["w1"]);
    // Two on again from there, the start moved too.
    let mut b2 = booking("b2", "w2");
    b2.rows[0][0] = Value::Integer(5);
    arrive(&store, &p, &b2);
    assert_eq!(pending(&store, &p, "work_orders"), ["w1", "w2"]);
}

#[test]
fn a_store_of_the_previous_version_is_upgraded() {
    let dir = tempfile::tempdir().expect("dir");
    // What the previous version left: no settle column, no triggers,
    // and the settled related values in `_fs_related_seen` (w2 was
    // never fetched for work orders).
    let path = earlier_store(
        dir.path(),
        "DROP TRIGGER _fs_lost_0_d; DROP TRIGGER _fs_lost_0_u;
         DROP TRIGGER _fs_lost_1_d; DROP TRIGGER _fs_lost_1_u;
         ALTER TABLE _fs_tables DROP COLUMN settle_all;
         CREATE TABLE _fs_related_seen (rule TEXT NOT NULL, value TEXT NOT NULL,
             PRIMARY KEY (rule, value)) WITHOUT ROWID;
         INSERT INTO _fs_related_seen VALUES
             ('work_orders.id<-bookings.work_order_id', 'w1'),
             ('incidents.work_order_id<-work_orders.id', 'w1'),
             ('incidents.work_order_id<-work_orders.id', 'w2');",
    );
    let store = Store::open(&path).expect("reopen");
    let p = profile();
    let bookings = p.table("bookings").expect("bookings").clone();
    let key = crate::store::related_rule_key("work_orders", "id", "bookings", "work_order_id");
    assert_eq!(
        store
            .take_related_pending(&key, &bookings, "work_order_id")
            .expect("pending"),
        ["w2"]
    );
    let (triggers, whole): (i64, i64) = store
        .with_reader(|c| {
            Ok((
                c.query_row(
                    "SELECT COUNT(*) FROM sqlite_master WHERE type = 'trigger' AND name LIKE '_fs_lost_%'",
                    [],
                    |r| r.get(0),
                )?,
                c.query_row("SELECT MIN(settle_all) FROM _fs_tables", [], |r| r.get(0))?,
            ))
        })
        .expect("state");
    assert_eq!((triggers, whole), (4, 1));
    // A store that is current is left as it is (no full evaluation is
    // asked for again).
    store
        .with_writer(|c| {
            c.execute("UPDATE _fs_tables SET settle_all = 0", [])?;
            Ok(())
        })
        .expect("settled");
    drop(store);
    let store = Store::open(&path).expect("open again");
    let whole: i64 = store
        .with_reader(|c| {
            Ok(c.query_row("SELECT MAX(settle_all) FROM _fs_tables", [], |r| r.get(0))?)
        })
        .expect("state");
    assert_eq!(whole, 0);
}

#[test]
fn triggers_of_an_earlier_version_are_replaced_on_open() {
    let dir = tempfile::tempdir().expect("dir");
    // The earlier trigger: `INSERT OR IGNORE`, which a pulled row's
    // upsert overrides.
    let path = earlier_store(
        dir.path(),
        "DROP TRIGGER _fs_lost_0_u;
         CREATE TRIGGER _fs_lost_0_u AFTER UPDATE OF work_order_id ON bookings
           WHEN old.work_order_id IS NOT NULL AND old.work_order_id IS NOT new.work_order_id
           BEGIN INSERT OR IGNORE INTO _fs_settle_lost (tbl, col, value)
             VALUES ('bookings', 'work_order_id', CAST(old.work_order_id AS TEXT)); END;",
    );
    let store = Store::open(&path).expect("reopen");
    let sql: String = store
        .with_reader(|c| {
            Ok(c.query_row(
                "SELECT sql FROM sqlite_master WHERE name = '_fs_lost_0_u'",
                [],
                |r| r.get(0),
            )?)
        })
        .expect("trigger");
    assert!(sql.contains("WHERE NOT EXISTS"), "{sql}");
    assert!(!sql.contains("OR IGNORE"), "{sql}");
}
