//! Property test of the custom filter language: random filters (every
//! operator, every relative-date form, nesting, current user and team) and
//! random rows; the server's compiled SQL run on a real SQLite table must
//! select exactly the rows the device's Rust evaluation selects; when the
//! test command runs the suites against PostgreSQL, the SQL compiled for
//! PostgreSQL must select them there too. A local query with the same
//! filter ([`fieldsync_core::Query`], compiled by the core and run by the
//! device store on a real SQLite file) must select them as well.

mod testdb;

use std::sync::{Mutex, OnceLock};

use fieldsync_core::Value;
use fieldsync_core::filter::{Filter, FilterContext};
use fieldsync_core::profile::{Column, ColumnKind, SyncTable};
use fieldsync_core::time::{format_date, format_datetime};
use proptest::prelude::*;

fn table() -> SyncTable {
    let col = |name: &str, kind| Column::new(name, kind);
    SyncTable {
        name: "rows".into(),
        primary_key: "id".into(),
        columns: vec![
            col("id", ColumnKind::Text),
            col("t", ColumnKind::Text),
            col("n", ColumnKind::Integer),
            col("r", ColumnKind::Real),
            col("b", ColumnKind::Boolean),
            col("d", ColumnKind::Date),
            col("ts", ColumnKind::DateTime),
        ],
        rules: vec![],
        sync_interval_secs: 300,
        writes: Default::default(),
        model_indexes: Vec::new(),
        indexes: Vec::new(),
    }
}

const BASE_DAY: i64 = 20_600; // 2026-05-27

fn text_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("tech-a".to_owned()),
        Just("team-1".to_owned()),
        Just("x'; DROP TABLE rows; --".to_owned()),
        Just("%_*".to_owned()),
        "[ab'%_;é-]{0,4}",
    ]
}

fn date_value() -> impl Strategy<Value = String> {
    (-70i64..70).prop_map(|d| format_date(BASE_DAY + d))
}

fn datetime_value() -> impl Strategy<Value = String> {
    (-70i64 * 24..70 * 24, 0i64..4)
        .prop_map(|(h, q)| format_datetime((BASE_DAY * 24 + h) * 3_600_000 + q * 15 * 60_000))
}

fn column_value(column: &'static str) -> BoxedStrategy<Value> {
    match column {
        "t" | "id" => text_value().prop_map(Value::Text).boxed(),
        "n" => (-3i64..4).prop_map(Value::Integer).boxed(),
        "r" => (-6i64..7).prop_map(|v| Value::Real(v as f64 / 2.0)).boxed(),
        "b" => any::<bool>().prop_map(Value::Boolean).boxed(),
        "d" => date_value().prop_map(Value::Text).boxed(),
        _ => datetime_value().prop_map(Value::Text).boxed(),
    }
}

fn nullable(column: &'static str) -> BoxedStrategy<Value> {
    prop_oneof![1 => Just(Value::Null), 4 => column_value(column)].boxed()
}

const COLUMNS: [&str; 6] = ["t", "n", "r", "b", "d", "ts"];

fn leaf() -> BoxedStrategy<Filter> {
    let any_col = proptest::sample::select(COLUMNS.to_vec());
    let date_col = proptest::sample::select(vec!["d", "ts"]);
    let text_col = proptest::sample::select(vec!["t", "d", "ts"]);
    prop_oneof![
        any_col
            .clone()
            .prop_flat_map(
                |c| (0..6usize, column_value(c)).prop_map(move |(op, value)| {
                    let column = c.to_owned();
                    match op {
                        0 => Filter::Eq { column, value },
                        1 => Filter::Ne { column, value },
                        2 => Filter::Gt { column, value },
                        3 => Filter::Ge { column, value },
                        4 => Filter::Lt { column, value },
                        _ => Filter::Le { column, value },
                    }
                })
            ),
        any_col.clone().prop_flat_map(|c| (
            any::<bool>(),
            proptest::collection::vec(column_value(c), 1..4)
        )
            .prop_map(move |(neg, values)| {
                let column = c.to_owned();
                if neg {
                    Filter::NotIn { column, values }
                } else {
                    Filter::In { column, values }
                }
            })),
        (any_col, any::<bool>()).prop_map(|(c, neg)| {
            let column = c.to_owned();
            if neg {
                Filter::NotNull { column }
            } else {
                Filter::IsNull { column }
            }
        }),
        (text_col.clone(), 0..3usize, text_value()).prop_map(|(c, op, value)| {
            let column = c.to_owned();
            match op {
                0 => Filter::BeginsWith { column, value },
                1 => Filter::EndsWith { column, value },
                _ => Filter::Contains { column, value },
            }
        }),
        (any::<bool>()).prop_map(|team| if team {
            Filter::EqCurrentTeam { column: "t".into() }
        } else {
            Filter::EqCurrentUser { column: "t".into() }
        }),
        (date_col, 0..9usize, 1u32..40).prop_map(|(c, op, days)| {
            let column = c.to_owned();
            match op {
                0 => Filter::Today { column },
                1 => Filter::Yesterday { column },
                2 => Filter::Tomorrow { column },
                3 => Filter::LastDays { column, days },
                4 => Filter::NextDays { column, days },
                5 => Filter::OnOrAfterToday { column },
                6 => Filter::ThisMonth { column },
                7 => Filter::LastMonth { column },
                _ => Filter::NextMonth { column },
            }
        }),
    ]
    .boxed()
}

fn filter() -> impl Strategy<Value = Filter> {
    leaf().prop_recursive(4, 24, 3, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 1..4)
                .prop_map(|filters| Filter::And { filters }),
            proptest::collection::vec(inner.clone(), 1..4)
                .prop_map(|filters| Filter::Or { filters }),
            inner.prop_map(|f| Filter::Not {
                filter: Box::new(f)
            }),
        ]
    })
}

fn row() -> impl Strategy<Value = Vec<Value>> {
    (
        nullable("t"),
        nullable("n"),
        nullable("r"),
        nullable("b"),
        nullable("d"),
        nullable("ts"),
    )
        .prop_map(|(t, n, r, b, d, ts)| vec![t, n, r, b, d, ts])
}

fn context() -> impl Strategy<Value = FilterContext> {
    (
        -3i64 * 24..3 * 24,
        prop_oneof![
            Just(0i32),
            Just(60),
            Just(-300),
            Just(330),
            Just(840),
            Just(-840)
        ],
        any::<bool>(),
    )
        .prop_map(|(h, offset, team)| FilterContext {
            user_id: "tech-a".into(),
            team_id: team.then(|| "team-1".to_owned()),
            now_ms: (BASE_DAY * 24 + h) * 3_600_000 + 17 * 60_000,
            utc_offset_minutes: offset,
        })
}

fn sql_select(rows: &[Vec<Value>], sql: &str, params: &[Value]) -> Vec<usize> {
    let conn = rusqlite::Connection::open_in_memory().expect("sqlite");
    let t = table();
    let cols: Vec<String> = t
        .columns
        .iter()
        .map(|c| format!("\"{}\" {}", c.name, c.kind.sql_type()))
        .collect();
    conn.execute_batch(&format!("CREATE TABLE rows ({})", cols.join(", ")))
        .expect("create");
    for (i, r) in rows.iter().enumerate() {
        let mut values = vec![Value::Text(format!("{i}"))];
        values.extend(r.iter().cloned());
        conn.execute(
            "INSERT INTO rows VALUES (?, ?, ?, ?, ?, ?, ?)",
            rusqlite::params_from_iter(values.iter()),
        )
        .expect("insert");
    }
    let mut stmt = conn
        .prepare(&format!("SELECT id FROM rows WHERE {sql}"))
        .expect("the compiled SQL prepares");
    let mut out: Vec<usize> = stmt
        .query_map(rusqlite::params_from_iter(params.iter()), |r| {
            r.get::<_, String>(0)
        })
        .expect("query")
        .map(|id| id.expect("id").parse().expect("index"))
        .collect();
    out.sort();
    out
}

/// The rows a local query with filter `f` selects on a device store (a real
/// SQLite file) holding `rows`, and what its count says.
fn local_select(rows: &[Vec<Value>], f: &Filter, ctx: &FilterContext) -> (Vec<usize>, u64) {
    use fieldsync_core::profile::{RowRule, SyncProfile};
    use fieldsync_core::protocol::Op;
    use fieldsync_core::store::Store;
    let dir = tempfile::tempdir().expect("dir");
    let store = Store::open(&dir.path().join("d.db")).expect("store");
    let mut t = table();
    t.rules = vec![RowRule::All];
    let profile = SyncProfile {
        name: "p".into(),
        version: 1,
        user_id: ctx.user_id.clone(),
        team_id: ctx.team_id.clone(),
        model_version: 0,
        utc_offset_minutes: ctx.utc_offset_minutes,
        tables: vec![t.clone()],
    };
    store.apply_profile(&profile, ctx.now_ms).expect("profile");
    for (i, r) in rows.iter().enumerate() {
        let data = t.columns[1..]
            .iter()
            .zip(r)
            .map(|(c, v)| (c.name.clone(), v.clone()))
            .collect();
        store
            .write(&profile, &t, &i.to_string(), Op::Insert, data, ctx.now_ms)
            .expect("write");
    }
    let query = fieldsync_core::Query {
        table: t.name.clone(),
        filter: Some(f.clone()),
        ..Default::default()
    };
    let compiled = query.compile(&t, ctx).expect("the query compiles");
    let mut out: Vec<usize> = store
        .query(&t, &compiled)
        .expect("query")
        .iter()
        .map(|r| r.id.parse().expect("index"))
        .collect();
    out.sort();
    let count = store.query_count(&t, &compiled).expect("count");
    (out, count)
}

/// One PostgreSQL connection for the whole property test, with its table.
fn postgres() -> Option<&'static Mutex<postgres::Client>> {
    static PG: OnceLock<Option<Mutex<postgres::Client>>> = OnceLock::new();
    PG.get_or_init(|| {
        let base = testdb::postgres_base()?;
        let url = testdb::fresh_database(&base);
        let mut client = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
        let cols: Vec<String> = table()
            .columns
            .iter()
            .map(|c| {
                format!(
                    "\"{}\" {}",
                    c.name,
                    fieldsync_server::sql::Dialect::Postgres.column_type(c.kind)
                )
            })
            .collect();
        client
            .batch_execute(&format!("CREATE TABLE rows ({})", cols.join(", ")))
            .expect("create");
        Some(Mutex::new(client))
    })
    .as_ref()
}

fn pg_select(
    client: &mut postgres::Client,
    rows: &[Vec<Value>],
    sql: &str,
    params: &[Value],
) -> Vec<usize> {
    use fieldsync_server::sql::{PgValue, pg_placeholders};
    let mut tx = client.transaction().expect("begin");
    tx.batch_execute("DELETE FROM rows").expect("clear");
    for (i, r) in rows.iter().enumerate() {
        let mut values = vec![Value::Text(format!("{i}"))];
        values.extend(r.iter().cloned());
        let bound: Vec<PgValue<'_>> = values.iter().map(PgValue).collect();
        let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
            bound.iter().map(|p| p as _).collect();
        tx.execute(
            "INSERT INTO rows VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &refs,
        )
        .expect("insert");
    }
    let bound: Vec<PgValue<'_>> = params.iter().map(PgValue).collect();
    let refs: Vec<&(dyn postgres::types::ToSql + Sync)> = bound.iter().map(|p| p as _).collect();
    let mut out: Vec<usize> = tx
        .query(
            pg_placeholders(&format!("SELECT id FROM rows WHERE {sql}")).as_str(),
            &refs,
        )
        .unwrap_or_else(|e| panic!("the compiled SQL runs on PostgreSQL: {e}\n{sql}"))
        .iter()
        .map(|r| r.get::<_, String>(0).parse().expect("index"))
        .collect();
    tx.rollback().expect("rollback");
    out.sort();
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]

    #[test]
    fn server_sql_and_device_evaluation_select_the_same_rows(
        f in filter(),
        rows in proptest::collection::vec(row(), 0..12),
        ctx in context(),
    ) {
        let t = table();
        let f = f.validate(&t).expect("generated filters are valid");
        let cond = f.lower(&t, &ctx);
        let mut params = Vec::new();
        let sql = fieldsync_server::rules::compile_cond(&cond, &mut params);
        let on_server = sql_select(&rows, &sql, &params);
        let on_device: Vec<usize> = rows
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                cond.eval(&|c: &str| {
                    t.columns
                        .iter()
                        .position(|col| col.name == c)
                        .and_then(|i| i.checked_sub(1))
                        .and_then(|i| r.get(i).cloned())
                })
            })
            .map(|(i, _)| i)
            .collect();
        prop_assert_eq!(&on_server, &on_device, "filter {:?}\nsql {}", f, sql);
        let (local, count) = local_select(&rows, &f, &ctx);
        prop_assert_eq!(&local, &on_server, "local query: filter {:?}", f);
        prop_assert_eq!(count, local.len() as u64);
        if let Some(pg) = postgres() {
            let mut pg_params = Vec::new();
            let pg_sql = fieldsync_server::rules::compile_cond_in(
                fieldsync_server::sql::Dialect::Postgres,
                &cond,
                &mut pg_params,
            );
            let mut client = pg.lock().unwrap_or_else(|p| p.into_inner());
            let on_postgres = pg_select(&mut client, &rows, &pg_sql, &pg_params);
            prop_assert_eq!(&on_postgres, &on_device, "PostgreSQL: filter {:?}\nsql {}", f, pg_sql);
        }
    }
}

#[test]
fn relative_dates_follow_the_documented_calendar() {
    let t = table();
    // 2026-05-27T23:30Z; at UTC+1 it is already 28 May.
    let now = BASE_DAY * 86_400_000 + 23 * 3_600_000 + 30 * 60_000;
    let ctx = |offset| FilterContext {
        user_id: "u".into(),
        team_id: None,
        now_ms: now,
        utc_offset_minutes: offset,
    };
    let rows = |d: &str| {
        let d = d.to_owned();
        move |c: &str| (c == "d").then(|| Value::Text(d.clone()))
    };
    let today = Filter::Today { column: "d".into() };
    assert!(today.lower(&t, &ctx(0)).eval(&rows("2026-05-27")));
    assert!(!today.lower(&t, &ctx(60)).eval(&rows("2026-05-27")));
    assert!(today.lower(&t, &ctx(60)).eval(&rows("2026-05-28")));
    let next = Filter::NextDays {
        column: "d".into(),
        days: 7,
    };
    assert!(next.lower(&t, &ctx(0)).eval(&rows("2026-06-03")));
    assert!(!next.lower(&t, &ctx(0)).eval(&rows("2026-06-04")));
    let last_month = Filter::LastMonth { column: "d".into() };
    assert!(last_month.lower(&t, &ctx(0)).eval(&rows("2026-04-30")));
    assert!(!last_month.lower(&t, &ctx(0)).eval(&rows("2026-05-01")));
}
