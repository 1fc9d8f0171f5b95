use std::collections::BTreeMap;

use fieldsync_protocol::protocol::PullPage;

use super::*;
use crate::db::{Db, Role, User};
use crate::seed::{SeedSpec, generate};

/// Every page of a download of `table` from its start, `limit` rows at
/// a time; `between` runs after each page with the pages so far.
fn download(
    db: &Db,
    user: &User,
    table: &str,
    limit: u32,
    between: &mut dyn FnMut(usize),
) -> Vec<PullPage> {
    let profile = db.sync_profile(user).expect("profile");
    let t = profile.table(table).expect("table").clone();
    let mut pages = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = db
            .pull(user, &profile, &t, &cursor, limit, true)
            .expect("pull")
            .decoded()
            .expect("decode");
        cursor = page.cursor.clone();
        let more = page.has_more;
        pages.push(page);
        between(pages.len());
        if !more {
            return pages;
        }
    }
}

/// Field Service data for two technicians; the same rows, ids and
/// change sequence on every database it is given.
fn seeded(db: Db, sets: bool, now: i64) -> (Db, User) {
    // One clock reading for both databases: cursors carry it.
    let mut db = db.with_clock(Arc::new(fieldsync_protocol::time::ManualClock::new(now)));
    let (tech, _) = db
        .create_user(
            Some("tech".into()),
            "T",
            Role::Technician,
            "field-service",
            None,
        )
        .expect("user");
    let spec = SeedSpec {
        technicians: vec!["tech".into(), "other".into()],
        work_orders: 400,
        seed: 7,
        now_ms: Some(now),
    };
    for (table, rows) in generate(&spec, now) {
        db.bulk_insert(&table, &rows).expect("seed");
    }
    db.set_selections(if sets {
        SelectionCache::default()
    } else {
        SelectionCache::new(0)
    });
    (db, tech)
}

/// The default profile's tables, in its order: bookings, work orders,
/// their four child tables, booking statuses, accounts, assets.
fn tables() -> Vec<String> {
    crate::field_service_profile()
        .tables
        .iter()
        .map(|t| t.name.clone())
        .collect()
}

fn column<'a>(page: &PullPage, row: &'a [Value], name: &str) -> &'a Value {
    let i = page.columns.iter().position(|c| c == name).expect("column");
    &row[i]
}

fn text(v: &Value) -> String {
    match v {
        Value::Text(t) => t.clone(),
        other => panic!("not text: {other:?}"),
    }
}

fn fields(pairs: &[(&str, &str)]) -> BTreeMap<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Value::Text((*v).to_owned())))
        .collect()
}

/// Two databases with the same data: the first walks first downloads
/// with the selected-value sets, the second with the compiled rules.
/// Every download, with the same changes made at the same pages, must
/// answer the same pages (rows, removals, cursors, totals).
fn the_sets_answer_what_the_compiled_rules_answer(with: Db, without: Db) {
    let now = with.now_ms();
    let (with, tech) = seeded(with, true, now);
    let (without, _) = seeded(without, false, now);

    // 1. First downloads of every table, at rest.
    let mut pages = Vec::new();
    for table in tables() {
        let a = download(&with, &tech, &table, 37, &mut |_| {});
        let b = download(&without, &tech, &table, 37, &mut |_| {});
        assert_eq!(a, b, "{table}");
        pages.push(a);
    }
    let selected: usize = pages.iter().flatten().map(|p| p.rows.len()).sum();
    assert!(selected > 300, "the technician's rows: {selected}");
    // Bookings' work orders; work orders' ids, accounts and assets (one
    // read of the work orders): each built once, whatever the tables and
    // pages that read it.
    assert_eq!(with.selections().builds(), 4);
    assert_eq!(without.selections().builds(), 0);

    // 2. Rows of the walked table changed during its download: a
    // selected task edited, one deleted, one moved to a work order the
    // technician does not have. They come after the snapshot, decided
    // by the compiled rules, on both.
    let table = "work_order_service_tasks";
    let tasks = &pages[5];
    let ids: Vec<String> = tasks
        .iter()
        .flat_map(|p| p.rows.iter().map(move |r| text(column(p, r, "id"))))
        .collect();
    let mine: Vec<String> = pages[1]
        .iter()
        .flat_map(|p| p.rows.iter().map(move |r| text(column(p, r, "id"))))
        .collect();
    let elsewhere = (0..400)
        .map(|i| format!("wo-{i:07}"))
        .find(|w| {
            with.record("work_orders", w, None)
                .expect("record")
                .is_some()
                && !mine.contains(w)
        })
        .expect("a work order of the other technician");
    let change = |db: &Db| {
        db.write_record(
            table,
            &ids[0],
            &fields(&[("task_name", "renamed")]),
            None,
            "admin",
        )
        .expect("edit");
        db.delete_record(table, &ids[1], None, "admin")
            .expect("delete");
        db.write_record(
            table,
            &ids[2],
            &fields(&[("work_order_id", elsewhere.as_str())]),
            None,
            "admin",
        )
        .expect("move");
    };
    let a = download(&with, &tech, table, 25, &mut |n| {
        if n == 2 {
            change(&with)
        }
    });
    let b = download(&without, &tech, table, 25, &mut |n| {
        if n == 2 {
            change(&without)
        }
    });
    assert_eq!(a, b);
    let removed: Vec<&String> = a.iter().flat_map(|p| p.removed.iter()).collect();
    assert!(
        removed.contains(&&ids[1]) && removed.contains(&&ids[2]),
        "{removed:?}"
    );
    assert!(a.iter().any(|p| {
        p.rows.iter().any(|r| {
            text(column(p, r, "id")) == ids[0] && text(column(p, r, "task_name")) == "renamed"
        })
    }));

    // 3. A booking deleted between downloads takes its work order out
    // of the selection: the next download's snapshot is later than the
    // sets, which are built again, and its tasks are not sent.
    let booking = pages[0]
        .iter()
        .flat_map(|p| {
            p.rows.iter().map(move |r| {
                (
                    text(column(p, r, "id")),
                    text(column(p, r, "work_order_id")),
                )
            })
        })
        .find(|(_, wo)| *wo != elsewhere)
        .expect("a booking");
    let builds = with.selections().builds();
    for db in [&with, &without] {
        db.delete_record("bookings", &booking.0, None, "admin")
            .expect("delete booking");
    }
    let a = download(&with, &tech, table, 25, &mut |_| {});
    let b = download(&without, &tech, table, 25, &mut |_| {});
    assert_eq!(a, b);
    assert!(with.selections().builds() > builds);
    let left = a
        .iter()
        .flat_map(|p| {
            p.rows
                .iter()
                .map(move |r| text(column(p, r, "work_order_id")))
        })
        .filter(|wo| *wo == booking.1)
        .count();
    assert_eq!(left, 0, "tasks of the work order whose booking was deleted");
}

fn sqlite_db(dir: &tempfile::TempDir) -> Db {
    let profile = crate::field_service_profile();
    Db::open(dir.path(), crate::field_service_model(), &profile).expect("open")
}

/// Two SQLite databases with the same data: the first walks with the
/// sets, the second with the compiled rules only; and the technician.
/// The directories live as long as the first item.
fn pair() -> ((tempfile::TempDir, tempfile::TempDir), Db, Db, User) {
    let dirs = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let now = sqlite_db(&dirs.0).now_ms();
    let (with, tech) = seeded(sqlite_db(&dirs.0), true, now);
    let (without, _) = seeded(sqlite_db(&dirs.1), false, now);
    (dirs, with, without, tech)
}

#[test]
fn the_sets_answer_what_the_compiled_rules_answer_on_sqlite() {
    let (a, b) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    the_sets_answer_what_the_compiled_rules_answer(sqlite_db(&a), sqlite_db(&b));
}

#[test]
fn the_sets_answer_what_the_compiled_rules_answer_on_postgres() {
    let a = crate::db::test_support::fresh_postgres_db();
    let b = crate::db::test_support::fresh_postgres_db();
    if let (Some(a), Some(b)) = (a, b) {
        the_sets_answer_what_the_compiled_rules_answer(a, b);
    }
}

/// A set that would read more rows than its share of the walk it
/// serves is not built: the walk evaluates the compiled rules, and the
/// pages are the same.
#[test]
fn a_set_over_its_budget_is_not_built() {
    let (_dirs, mut with, without, tech) = pair();
    with.set_selections(SelectionCache::with_build_spare(0));
    // Accounts: 40 rows to walk, ten times that is the 400 bookings
    // their work orders' set reads, and nothing is left for the 400 work
    // orders their own set reads: only the bookings' set is built.
    let x = download(&with, &tech, "accounts", 10, &mut |_| {});
    let y = download(&without, &tech, "accounts", 10, &mut |_| {});
    assert_eq!(x, y);
    assert_eq!(with.selections().builds(), 1);
    // Tasks: enough rows to walk for the work orders' sets (their ids,
    // and in the same read their accounts and assets); the bookings'
    // set is found in the cache.
    let x = download(&with, &tech, "work_order_service_tasks", 50, &mut |_| {});
    let y = download(&without, &tech, "work_order_service_tasks", 50, &mut |_| {});
    assert_eq!(x, y);
    assert_eq!(with.selections().builds(), 4);
}

/// A walked row whose related value has another type than its column
/// (text in an integer column, which SQLite keeps as text) cannot be
/// matched against the sets: the page is walked again with the compiled
/// rules, and the rows the first walk had written are taken back, so
/// the page holds each row once, as the walk without sets gives it.
#[test]
fn a_walk_that_cannot_match_a_row_starts_the_page_again_with_the_rules() {
    let model: DataModel = serde_json::from_value(serde_json::json!({"tables": [
        {"name": "parents", "primary_key": "id", "columns": [
            {"name": "id", "type": "text"},
            {"name": "code", "type": "integer"},
            {"name": "owner_id", "type": "text"}]},
        {"name": "children", "primary_key": "id", "columns": [
            {"name": "id", "type": "text"},
            {"name": "parent_code", "type": "integer"},
            {"name": "note", "type": "text"}]}
    ]}))
    .expect("model");
    let profile: fieldsync_protocol::profile::OfflineProfile =
        serde_json::from_value(serde_json::json!({
            "name": "codes",
            "tables": [
                {"name": "parents", "columns": ["code", "owner_id"],
                 "rules": [{"kind": "owned", "column": "owner_id"}], "sync_interval_secs": 300},
                {"name": "children", "columns": ["parent_code", "note"],
                 "rules": [{"kind": "related", "table": "parents",
                            "column": "parent_code", "foreign_column": "code"}], "sync_interval_secs": 300}
            ]
        }))
        .expect("profile");
    let dirs = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let mut dbs = Vec::new();
    // One clock reading for both databases: cursors carry it.
    let clock = Arc::new(fieldsync_protocol::time::ManualClock::new(
        1_796_000_000_000,
    ));
    for (dir, sets) in [(&dirs.0, true), (&dirs.1, false)] {
        let mut db = Db::open(dir.path(), model.clone(), &profile)
            .expect("open")
            .with_clock(clock.clone());
        let (tech, _) = db
            .create_user(Some("tech".into()), "T", Role::Technician, "codes", None)
            .expect("user");
        let parents: Vec<_> = (0..20)
            .map(|i| {
                let owner = if i % 2 == 0 { "tech" } else { "other" };
                (
                    format!("p{i:02}"),
                    BTreeMap::from([
                        ("code".to_owned(), Value::Integer(i)),
                        ("owner_id".to_owned(), Value::Text(owner.into())),
                    ]),
                )
            })
            .collect();
        db.bulk_insert("parents", &parents).expect("parents");
        let children: Vec<_> = (0..120)
            .map(|i| {
                (
                    format!("c{i:03}"),
                    BTreeMap::from([
                        ("parent_code".to_owned(), Value::Integer(i % 20)),
                        ("note".to_owned(), Value::Text(format!("note {i}"))),
                    ]),
                )
            })
            .collect();
        db.bulk_insert("children", &children).expect("children");
        db.write(|c| {
            c.execute(
                "UPDATE children SET parent_code = 'x' WHERE id = 'c030'",
                &[],
            )
        })
        .expect("a code of another type");
        db.set_selections(if sets {
            SelectionCache::default()
        } else {
            SelectionCache::new(0)
        });
        dbs.push((db, tech));
    }
    let x = download(&dbs[0].0, &dbs[0].1, "children", 37, &mut |_| {});
    let y = download(&dbs[1].0, &dbs[1].1, "children", 37, &mut |_| {});
    assert_eq!(x, y);
    let ids: Vec<String> = x
        .iter()
        .flat_map(|p| p.rows.iter().map(move |r| text(column(p, r, "id"))))
        .collect();
    // The technician's parents' children but the one whose code is text.
    assert_eq!(ids.len(), 59, "{ids:?}");
    assert!(!ids.contains(&"c030".to_owned()));
    let mut once = ids.clone();
    once.sort();
    once.dedup();
    assert_eq!(once.len(), ids.len(), "a row sent twice: {ids:?}");
}

/// Wide rows end a page before its `limit`: a page's rows pass
/// `MAX_PAGE_BYTES` by at most one row, on both walks, and the download
/// still holds every row.
#[test]
fn wide_rows_end_a_page_early_on_both_walks() {
    let (_dirs, with, without, tech) = pair();
    let wide = "w".repeat(700 * 1024);
    let mine: Vec<String> = download(&with, &tech, "work_orders", 1000, &mut |_| {})
        .iter()
        .flat_map(|p| p.rows.iter().map(move |r| text(column(p, r, "id"))))
        .collect();
    assert!(mine.len() > 30);
    for db in [&with, &without] {
        for id in &mine[..30] {
            db.write_record(
                "work_orders",
                id,
                &fields(&[("instructions", &wide)]),
                None,
                "admin",
            )
            .expect("wide work order");
        }
        for i in 0..14 {
            db.write_record(
                "booking_statuses",
                &format!("bs-wide-{i}"),
                &fields(&[("name", &wide)]),
                None,
                "admin",
            )
            .expect("wide status");
        }
    }
    let page_bytes = |p: &PullPage| -> usize {
        p.rows
            .iter()
            .map(|r| r.iter().map(Value::approx_size).sum::<usize>())
            .sum()
    };
    for (table, rows) in [("work_orders", mine.len()), ("booking_statuses", 14)] {
        let x = download(&with, &tech, table, 1000, &mut |_| {});
        let y = download(&without, &tech, table, 1000, &mut |_| {});
        assert_eq!(x, y, "{table}");
        assert!(x.len() >= 2, "{table}: {} pages", x.len());
        for p in &x {
            assert!(page_bytes(p) < MAX_PAGE_BYTES + 800 * 1024, "{table}");
        }
        let held: usize = x.iter().map(|p| p.rows.len()).sum();
        assert!(held >= rows, "{table}: {held} rows");
    }
}

/// Two technicians' first downloads, a page each in turn, with room for
/// about one technician's sets: a set evicted for the other's is not
/// built again for the same download, which walks on with the compiled
/// rules, and the pages are the same as without the sets.
#[test]
fn a_download_whose_sets_were_evicted_walks_on_without_them() {
    let (_dirs, mut with, mut without, tech) = pair();
    let mut users = vec![tech.clone()];
    for db in [&mut with, &mut without] {
        let (other, _) = db
            .create_user(
                Some("other".into()),
                "O",
                Role::Technician,
                "field-service",
                None,
            )
            .expect("user");
        users.truncate(1);
        users.push(other);
    }
    let table = "work_order_service_tasks";
    // One technician's sets, measured on a cache of the default size.
    download(&with, &tech, table, 1000, &mut |_| {});
    let one = with.selections().bytes();
    assert!(one > 0);
    with.set_selections(SelectionCache::new(one + one / 2));

    let profiles: Vec<_> = users
        .iter()
        .map(|u| with.sync_profile(u).expect("profile"))
        .collect();
    let mut cursors = [String::new(), String::new()];
    let mut done = [false, false];
    let mut builds_at_first_page = [0, 0];
    let mut page = 0;
    while !done.iter().all(|d| *d) {
        for (u, user) in users.iter().enumerate() {
            if done[u] {
                continue;
            }
            let p = &profiles[u];
            let t = p.table(table).expect("table");
            let x = with.pull(user, p, t, &cursors[u], 30, true).expect("pull");
            let y = without
                .pull(user, p, t, &cursors[u], 30, true)
                .expect("pull");
            assert_eq!(x.json, y.json, "user {u}, page {page}");
            let x = x.decoded().expect("decode");
            if page == 0 {
                builds_at_first_page[u] = with.selections().builds();
            }
            cursors[u] = x.cursor.clone();
            done[u] = !x.has_more;
        }
        page += 1;
    }
    assert!(page > 3, "pages: {page}");
    // The first pages built each technician's sets (the bookings' and
    // the work orders' three); the later pages built none again, though
    // the other technician's sets pushed them out.
    assert_eq!(builds_at_first_page[0], 4);
    assert_eq!(builds_at_first_page[1], 8);
    assert_eq!(with.selections().builds(), 8);
    assert!(with.selections().bytes() <= one + one / 2);
}

/// The cache keeps its sets within its bytes, least recently used
/// evicted first, and answers a set only for downloads whose snapshot
/// it was built at or after.
#[test]
fn sets_are_evicted_oldest_first_and_never_used_before_their_snapshot() {
    let cache = SelectionCache::default();
    let set = |n: usize| {
        let mut s = KeySet::default();
        for i in 0..n {
            s.insert(&Probe::Int(i as i64));
        }
        s
    };
    // A set of one value said to take `bytes`.
    let sized = |bytes: usize| {
        let mut s = set(1);
        s.bytes = bytes;
        Arc::new(s)
    };
    cache.put("a".into(), 10, sized(DEFAULT_CACHE_BYTES / 2));
    cache.put("b".into(), 10, sized(DEFAULT_CACHE_BYTES / 3));
    assert!(cache.get("a", 10).is_some());
    assert!(cache.get("a", 11).is_none(), "built before the snapshot");
    cache.put("c".into(), 12, sized(DEFAULT_CACHE_BYTES / 3));
    // "b" was used least recently ("a" was read after it was put).
    assert!(cache.get("b", 0).is_none());
    assert!(cache.get("a", 0).is_some() && cache.get("c", 12).is_some());
    assert!(cache.bytes() <= DEFAULT_CACHE_BYTES);
    assert_eq!(cache.len(), 2);
    assert_eq!(set(3).len(), 3);
}
