use super::*;
use crate::sql::SqliteConn;

#[test]
fn migrations_are_numbered_in_order_and_reach_the_server_version() {
    assert!(MIGRATIONS.windows(2).all(|w| w[0].version < w[1].version));
    assert_eq!(latest_version(), crate::db::SCHEMA_VERSION);
}

#[test]
fn migrating_twice_changes_nothing_and_a_newer_database_is_refused() {
    let model = crate::field_service_model();
    let conn = rusqlite::Connection::open_in_memory().expect("sqlite");
    let latest = latest_version();
    assert_eq!(
        migrate(&mut SqliteConn(&conn), &model).expect("first"),
        latest
    );
    assert_eq!(
        migrate(&mut SqliteConn(&conn), &model).expect("again"),
        latest
    );
    let versions: i64 = conn
        .query_row("SELECT COUNT(*) FROM _fs_schema", [], |r| r.get(0))
        .expect("count");
    assert_eq!(versions, 1);
    conn.execute("UPDATE _fs_schema SET version = 99", [])
        .expect("bump");
    let err = migrate(&mut SqliteConn(&conn), &model).expect_err("newer");
    assert!(err.to_string().contains("newer than this server"), "{err}");
}

fn has_index(conn: &rusqlite::Connection, table: &str, columns: &[&str]) -> bool {
    let columns: Vec<String> = columns.iter().map(|c| (*c).to_owned()).collect();
    conn.prepare("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ? AND tbl_name = ?")
        .expect("prepare")
        .exists([rule_index_name(table, &columns), table.to_owned()])
        .expect("exists")
}

#[test]
fn related_rules_on_a_foreign_column_get_an_index_at_start_and_when_published() {
    let model = crate::field_service_model();
    let profile = crate::field_service_profile();
    let wanted: Vec<(String, Vec<String>)> = rule_indexes(&model, &profile).into_iter().collect();
    let expected: Vec<(String, Vec<String>)> = [
        (
            "bookings",
            &[
                "work_order_id",
                "_deleted",
                "status",
                "resource_id",
                "start_time",
                "end_time",
            ][..],
        ),
        ("work_order_incidents", &["work_order_id", "_deleted"][..]),
        ("work_order_products", &["work_order_id", "_deleted"][..]),
        (
            "work_order_service_tasks",
            &["work_order_id", "_deleted"][..],
        ),
        ("work_order_services", &["work_order_id", "_deleted"][..]),
        ("work_orders", &["account_id", "_deleted", "id"][..]),
        ("work_orders", &["customer_asset_id", "_deleted", "id"][..]),
    ]
    .iter()
    .map(|(t, cs)| {
        (
            (*t).to_owned(),
            cs.iter().map(|c| (*c).to_owned()).collect(),
        )
    })
    .collect();
    assert_eq!(wanted, expected);
    let dir = tempfile::tempdir().expect("dir");
    let db = crate::db::Db::open(dir.path(), model.clone(), &profile).expect("open");
    let conn = rusqlite::Connection::open(dir.path().join("fieldsync.db")).expect("sqlite");
    for (t, cs) in &wanted {
        let cs: Vec<&str> = cs.iter().map(String::as_str).collect();
        assert!(has_index(&conn, t, &cs), "{t}: {cs:?}");
    }

    let edited = assets_reached_by_incidents(&profile);
    let new_index = ["customer_asset_id", "_deleted", "work_order_id"];
    assert!(!has_index(&conn, "work_order_incidents", &new_index));
    db.put_profile(&edited).expect("publish");
    assert!(has_index(&conn, "work_order_incidents", &new_index));
    assert_ne!(
        rule_index_name("work_orders", &["account_id".into()]),
        rule_index_name("work_order", &["saccount_id".into()])
    );
}

#[test]
fn a_page_of_a_related_table_looks_related_rows_up_by_index() {
    let model = crate::field_service_model();
    let profile = crate::field_service_profile();
    let dir = tempfile::tempdir().expect("dir");
    let _db = crate::db::Db::open(dir.path(), model.clone(), &profile).expect("open");
    let conn = rusqlite::Connection::open(dir.path().join("fieldsync.db")).expect("sqlite");
    let sync = profile.resolve(&model, 1, "tech-1", None).expect("resolve");
    for table in ["work_orders", "work_order_incidents", "accounts"] {
        let t = sync.table(table).expect("table");
        let p = crate::rules::compile(&sync, t, &sync.filter_context(0));
        let sql = format!(
            "SELECT id FROM {} WHERE _seq > ? AND _deleted = 0 AND {} ORDER BY _seq LIMIT 10",
            quote_ident(table),
            p.sql
        );
        let mut params: Vec<Value> = vec![Value::Integer(0)];
        params.extend(p.params);
        let plan = plan(&conn, &sql, &params);
        // The table walks its `_seq` index; every related table is a
        // key or index lookup, never a scan or a set built per run.
        let scans: Vec<&String> = plan
            .iter()
            .filter(|d| d.starts_with("SCAN") && !d.contains("__seq"))
            .collect();
        assert!(scans.is_empty(), "{table}: {plan:?}");
        assert!(
            !plan.iter().any(|d| d.contains("LIST SUBQUERY")),
            "{table}: {plan:?}"
        );
        // A work order reached by its key is checked live from the
        // (key, `_deleted`) index, without reading the row.
        if table == "work_order_incidents" {
            assert!(
                plan.iter()
                    .any(|d| d.contains("COVERING INDEX work_orders__live")),
                "{table}: {plan:?}"
            );
        }
    }
}

/// `profile` with the customer assets reached by incidents instead of
/// work orders: a rule whose index the default profile lacks
/// (`work_order_incidents (customer_asset_id, _deleted, work_order_id)`).
fn assets_reached_by_incidents(profile: &OfflineProfile) -> OfflineProfile {
    let mut edited = profile.clone();
    let assets = edited
        .tables
        .iter_mut()
        .find(|t| t.name == "customer_assets")
        .expect("customer_assets");
    assets.rules = vec![RowRule::Related {
        table: "work_order_incidents".into(),
        column: "id".into(),
        foreign_column: "customer_asset_id".into(),
    }];
    edited
}

/// `EXPLAIN QUERY PLAN` of `sql`: each step's description.
fn plan(conn: &rusqlite::Connection, sql: &str, params: &[Value]) -> Vec<String> {
    conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
        .expect("prepare")
        .query_map(rusqlite::params_from_iter(params.iter()), |r| {
            r.get::<_, String>(3)
        })
        .expect("plan")
        .collect::<Result<_, _>>()
        .expect("rows")
}

/// On PostgreSQL the rules' indexes are built concurrently (writes go
/// on meanwhile) and valid; one a failed concurrent build left invalid
/// is built again when the profile is published.
#[test]
fn postgres_rule_indexes_are_built_concurrently_and_invalid_ones_again_on_postgres() {
    let Some(db) = crate::db::test_support::fresh_postgres_db() else {
        return;
    };
    let model = crate::field_service_model();
    let profile = crate::field_service_profile();
    let valid = |db: &crate::db::Db, name: String| {
        db.with_pg_client(move |c| {
            c.query_opt(
                "SELECT i.indisvalid, i.indisunique FROM pg_index i
                     JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = $1",
                &[&name],
            )
            .expect("pg_index")
            .map(|r| (r.get::<_, bool>(0), r.get::<_, bool>(1)))
        })
        .expect("postgres")
    };
    // At start-up: every rule index of the default profile, valid.
    for (table, columns) in rule_indexes(&model, &profile) {
        assert_eq!(
            valid(&db, rule_index_name(&table, &columns)),
            Some((true, false)),
            "{table} {columns:?}"
        );
    }
    // A concurrent build that failed: a unique index on duplicate
    // values, under the name a new rule's index will have.
    let edited = assets_reached_by_incidents(&profile);
    let columns: Vec<String> = ["customer_asset_id", "_deleted", "work_order_id"]
        .map(String::from)
        .into();
    let name = rule_index_name("work_order_incidents", &columns);
    let sql = format!(
        "CREATE UNIQUE INDEX CONCURRENTLY {} ON work_order_incidents (customer_asset_id, _deleted, work_order_id)",
        quote_ident(&name)
    );
    let failed = db
        .with_pg_client(move |c| {
            c.batch_execute(
                "INSERT INTO work_order_incidents (id, work_order_id, customer_asset_id, _version, _seq, _updated_at)
                       VALUES ('a', 'w', 'x', 1, 1, 'now'), ('b', 'w', 'x', 1, 2, 'now')",
            )
            .expect("rows");
            // Its own statement: a concurrent build runs outside a
            // transaction block.
            c.batch_execute(&sql)
        })
        .expect("postgres");
    assert!(failed.is_err(), "the unique build should fail");
    assert_eq!(valid(&db, name.clone()), Some((false, true)));
    db.put_profile(&edited).expect("publish");
    assert_eq!(valid(&db, name), Some((true, false)));
}

#[test]
fn a_fetch_of_related_rows_reads_its_column_index() {
    let model = crate::field_service_model();
    let profile = crate::field_service_profile();
    let dir = tempfile::tempdir().expect("dir");
    let _db = crate::db::Db::open(dir.path(), model.clone(), &profile).expect("open");
    let conn = rusqlite::Connection::open(dir.path().join("fieldsync.db")).expect("sqlite");
    let sync = profile.resolve(&model, 1, "tech-1", None).expect("resolve");
    // A work order's incidents by `work_order_id` (not the key), and
    // accounts by their key.
    for (table, column, index) in [
        (
            "work_order_incidents",
            "work_order_id",
            rule_index_name(
                "work_order_incidents",
                &["work_order_id".into(), "_deleted".into()],
            ),
        ),
        (
            "work_order_service_tasks",
            "work_order_id",
            rule_index_name(
                "work_order_service_tasks",
                &["work_order_id".into(), "_deleted".into()],
            ),
        ),
        ("accounts", "id", live_index_name("accounts")),
    ] {
        let t = sync.table(table).expect("table");
        let p = crate::rules::compile(&sync, t, &sync.filter_context(0));
        let sql = crate::db::fetch_sql(t, column, 3, &p.sql);
        let mut params: Vec<Value> = ["a", "b", "c"].map(|v| Value::Text(v.into())).into();
        params.extend(p.params);
        let steps = plan(&conn, &sql, &params);
        // The first step reads the table: by the index, never a scan.
        assert!(
            steps[0].starts_with(&format!("SEARCH {table} USING INDEX {index} ")),
            "{table}: {steps:?}"
        );
        assert!(
            !steps.iter().any(|d| d.starts_with("SCAN")),
            "{table}: {steps:?}"
        );
    }
}

#[test]
fn every_table_gets_its_live_index_at_start_up() {
    let model = crate::field_service_model();
    let conn = rusqlite::Connection::open_in_memory().expect("sqlite");
    migrate(&mut SqliteConn(&conn), &model).expect("migrate");
    // A database from before the index: it comes back at start-up.
    conn.execute_batch("DROP INDEX work_orders__live")
        .expect("drop");
    migrate(&mut SqliteConn(&conn), &model).expect("migrate again");
    for t in &model.tables {
        let sql: String = conn
            .query_row(
                "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = ?1",
                [live_index_name(&t.name)],
                |r| r.get(0),
            )
            .unwrap_or_else(|e| panic!("{}: {e}", t.name));
        assert!(
            sql.ends_with(&format!("({}, _deleted)", quote_ident(&t.primary_key))),
            "{sql}"
        );
    }
}

#[test]
fn columns_added_to_the_model_are_added_to_the_table() {
    let mut model = crate::field_service_model();
    let conn = rusqlite::Connection::open_in_memory().expect("sqlite");
    migrate(&mut SqliteConn(&conn), &model).expect("migrate");
    let accounts = model
        .tables
        .iter_mut()
        .find(|t| t.name == "accounts")
        .expect("accounts");
    accounts
        .columns
        .push(fieldsync_protocol::profile::Column::new(
            "region",
            fieldsync_protocol::profile::ColumnKind::Text,
        ));
    migrate(&mut SqliteConn(&conn), &model).expect("migrate again");
    let has: bool = conn
        .prepare("SELECT 1 FROM pragma_table_info('accounts') WHERE name = 'region'")
        .expect("prepare")
        .exists([])
        .expect("exists");
    assert!(has);
}
