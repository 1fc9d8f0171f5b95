//! What the server fuzz targets do with one input. Shared by the libFuzzer
//! targets `fuzz/fuzz_targets/cursor.rs` and `fuzz/fuzz_targets/filter.rs`
//! and by the stable-Rust regression test `server/tests/fuzz_regressions.rs`
//! (which includes this file with `#[path]`). Only `fieldsync_server` and
//! the server's own dependencies `fieldsync_protocol`, `rusqlite` and
//! `serde_json` may be used here (they are what the server package's tests
//! can see).

use std::sync::{Mutex, OnceLock};

use fieldsync_protocol::Value;
use fieldsync_protocol::error::Error;
use fieldsync_protocol::filter::{Filter, FilterContext};
use fieldsync_protocol::profile::{Column, ColumnKind, DataModel, SyncTable};
use fieldsync_protocol::time::{Zone, civil_from_days, parse_date, parse_datetime};
use fieldsync_server::db::Cursor;
use fieldsync_server::rules::compile_cond;

/// Target `cursor`: arbitrary text through `Cursor::parse`, and arbitrary
/// pairs of numbers through `Cursor::encode`. Checks: parsing never panics;
/// only the empty string is the start; a cursor that parses has non-negative
/// positions and is exactly the text `encode` gives for it (the server
/// accepts only cursors it could have issued); every cursor the server
/// issues parses back to itself.
pub fn cursor(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        match Cursor::parse(s) {
            None => {}
            Some(None) => assert!(s.is_empty(), "{s:?} parsed as the start"),
            Some(Some(c)) => {
                assert!(c.since >= 0 && c.snapshot >= 0, "{s:?} -> {c:?}");
                if s.starts_with("v2.") {
                    assert_eq!(c.encode(), s, "accepted a cursor the server never issues");
                    assert_eq!(Cursor::parse(&c.encode()), Some(Some(c)));
                } else {
                    // An older server's v1 cursor: accepted in its exact
                    // spelling and re-issued in the v2 form.
                    assert!(s.starts_with("v1."), "{s:?}");
                    let reissued = c.encode();
                    assert!(reissued.starts_with("v2."), "{reissued}");
                }
            }
        }
    }
    if let (Some(a), Some(b)) = (data.get(..8), data.get(8..16)) {
        let since = i64::from_le_bytes(a.try_into().expect("8 bytes")).saturating_abs();
        let snapshot = i64::from_le_bytes(b.try_into().expect("8 bytes")).saturating_abs();
        let c = Cursor {
            since,
            snapshot,
            evaluated_at: Some(since / 2),
            phase: fieldsync_server::db::Phase::Changes,
        };
        assert_eq!(
            Cursor::parse(&c.encode()),
            Some(Some(c)),
            "issued cursor does not parse"
        );
    }
}

/// The data model the reference server ships.
const MODEL_JSON: &str = include_str!("../../server/model/field_service_model.json");

/// The columns of the `filter` target's table, each taken with its kind from
/// the shipped model: `bookings` has text, date-time and integer columns; a
/// date, a boolean and a real column come from two other tables.
const FILTER_COLUMNS: [(&str, &str); 11] = [
    ("bookings", "id"),
    ("bookings", "name"),
    ("bookings", "resource_id"),
    ("bookings", "status"),
    ("bookings", "start_time"),
    ("bookings", "end_time"),
    ("bookings", "travel_minutes"),
    ("bookings", "notes"),
    ("customer_assets", "installed_on"),
    ("work_order_service_tasks", "completed"),
    ("work_order_service_tasks", "percent_complete"),
];

/// The `filter` target's table: [`FILTER_COLUMNS`], key `id`.
pub fn filter_table() -> &'static SyncTable {
    static TABLE: OnceLock<SyncTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let model: DataModel = serde_json::from_str(MODEL_JSON).expect("shipped model parses");
        let columns: Vec<Column> = FILTER_COLUMNS
            .iter()
            .map(|(table, column)| {
                model
                    .table(table)
                    .and_then(|t| t.column(column))
                    .unwrap_or_else(|| panic!("{table}.{column} is in the shipped model"))
                    .clone()
            })
            .collect();
        for kind in [
            ColumnKind::Text,
            ColumnKind::Integer,
            ColumnKind::Real,
            ColumnKind::Boolean,
            ColumnKind::Date,
            ColumnKind::DateTime,
        ] {
            assert!(columns.iter().any(|c| c.kind == kind), "no {kind:?} column");
        }
        SyncTable {
            name: "fuzz_rows".into(),
            primary_key: "id".into(),
            columns,
            rules: vec![],
            sync_interval_secs: 300,
            writes: Default::default(),
            model_indexes: Vec::new(),
            indexes: Vec::new(),
        }
    })
}

/// The fixed rows the `filter` target selects from, in [`FILTER_COLUMNS`]
/// order (the id is the row's index): nulls, empty and non-ASCII text, text
/// with a NUL byte, SQL and LIKE metacharacters, dates and date-times at day,
/// month, year and leap-day edges and at the ends of the 4-digit years, a
/// date-time with a fraction of a second, extreme integers and reals.
pub fn filter_rows() -> Vec<Vec<Value>> {
    use Value::{Boolean as B, Integer as I, Null as N, Real as R};
    let t = |s: &str| Value::Text(s.to_owned());
    let rows = vec![
        // id, name, resource_id, status, start_time, end_time, travel_minutes, notes,
        // installed_on, completed, percent_complete
        vec![N, N, N, N, N, N, N, N, N, N],
        vec![
            t(""),
            t("tech-1"),
            t("active"),
            t("2026-01-31T23:30:00Z"),
            t("2026-02-01T00:00:00Z"),
            I(0),
            t("a\u{0}b"),
            t("2026-02-01"),
            B(true),
            R(0.5),
        ],
        vec![
            t("Ünïcödé ß"),
            t("team-1"),
            t("Active"),
            t("2024-02-29T12:00:00Z"),
            t("2024-03-01T00:00:00Z"),
            I(-1),
            t("%_'\"; --"),
            t("2024-02-29"),
            B(false),
            R(-0.0),
        ],
        vec![
            t("tech-1"),
            t("tech-10"),
            t("active "),
            t("1970-01-01T00:00:00Z"),
            t("9999-12-31T23:59:59Z"),
            I(i64::MAX),
            t("x"),
            t("0000-01-01"),
            N,
            R(1e308),
        ],
        vec![
            t("a"),
            t(""),
            t("done"),
            t("2026-03-01T00:00:00.500Z"),
            t("2025-12-31T23:59:59Z"),
            I(i64::MIN),
            t("ab"),
            t("9999-12-31"),
            B(true),
            R(-1.0),
        ],
        vec![
            t("\u{0}"),
            t("TECH-1"),
            N,
            t("2026-02-28T23:59:59Z"),
            N,
            I(42),
            t(""),
            t("2026-01-31"),
            B(false),
            N,
        ],
        vec![
            t("b\u{0}"),
            N,
            t("active"),
            t("2026-05-27T00:00:00Z"),
            t("2026-05-27T23:59:59Z"),
            I(9_007_199_254_740_993),
            t("éa"),
            t("2026-05-27"),
            N,
            R(9_007_199_254_740_992.0),
        ],
    ];
    rows.into_iter()
        .enumerate()
        .map(|(i, rest)| {
            let mut row = vec![Value::Text(i.to_string())];
            row.extend(rest);
            row
        })
        .collect()
}

/// In-memory SQLite table holding [`filter_rows`], created once.
fn filter_db() -> &'static Mutex<rusqlite::Connection> {
    static DB: OnceLock<Mutex<rusqlite::Connection>> = OnceLock::new();
    DB.get_or_init(|| {
        let conn = rusqlite::Connection::open_in_memory().expect("sqlite");
        let table = filter_table();
        let cols: Vec<String> = table
            .columns
            .iter()
            .map(|c| format!("\"{}\" {}", c.name, c.kind.sql_type()))
            .collect();
        conn.execute_batch(&format!(
            "CREATE TABLE {} ({})",
            table.name,
            cols.join(", ")
        ))
        .expect("create");
        let marks = vec!["?"; table.columns.len()].join(", ");
        for row in filter_rows() {
            conn.execute(
                &format!("INSERT INTO {} VALUES ({marks})", table.name),
                rusqlite::params_from_iter(row.iter()),
            )
            .expect("insert");
        }
        Mutex::new(conn)
    })
}

/// Instants the `filter` target's clock starts from: near the fixed rows'
/// day, month and year edges.
const FILTER_ANCHORS: [&str; 8] = [
    "2026-01-31T23:30:00Z",
    "2026-02-01T00:00:00Z",
    "2024-02-29T12:00:00Z",
    "2026-02-28T23:59:59Z",
    "2025-12-31T23:59:59Z",
    "1970-01-01T00:00:00Z",
    "2026-03-01T00:00:00Z",
    "2026-05-27T08:17:00Z",
];

/// UTC offsets the `filter` target uses (profiles accept -840 to 840).
const FILTER_OFFSETS: [i32; 16] = [
    0, 60, -60, 330, 345, 525, -570, -210, 840, -840, 1, -1, 720, -720, 59, 839,
];

/// The evaluation context of a `filter` input, from the bytes after its JSON
/// (missing bytes read as 0): byte 0 bit 0 gives the user a team; byte 1
/// picks the UTC offset, byte 2 the anchor instant; bytes 3..7 (i32 LE) are
/// seconds added to the anchor (about ±68 years) and byte 7 milliseconds.
pub fn filter_context(rest: &[u8]) -> FilterContext {
    let byte = |i: usize| rest.get(i).copied().unwrap_or(0);
    let anchor = parse_datetime(FILTER_ANCHORS[usize::from(byte(2)) % FILTER_ANCHORS.len()])
        .expect("anchor parses");
    let secs = i32::from_le_bytes([byte(3), byte(4), byte(5), byte(6)]);
    FilterContext {
        user_id: "tech-1".into(),
        team_id: (byte(0) & 1 == 1).then(|| "team-1".to_owned()),
        now_ms: anchor + i64::from(secs) * 1000 + i64::from(byte(7)) * 4,
        zone: filter_zone(byte(1)),
    }
}

/// IANA zones the `filter` target uses besides the fixed offsets: daylight
/// saving of an hour (both hemispheres), of half an hour, and none.
const FILTER_ZONES: [&str; 4] = [
    "Europe/Berlin",
    "America/Santiago",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
];

/// Byte 1 of a `filter` input: one of the fixed offsets or of the zones.
fn filter_zone(b: u8) -> Zone {
    let i = usize::from(b) % (FILTER_OFFSETS.len() + FILTER_ZONES.len());
    match FILTER_OFFSETS.get(i) {
        Some(m) => Zone::Fixed(*m),
        None => Zone::named(FILTER_ZONES[i - FILTER_OFFSETS.len()]).unwrap_or_default(),
    }
}

const DAY_MS: i64 = 86_400_000;

/// What a relative-date filter means for one value, worked out from day
/// numbers and calendar months rather than from the text bounds `lower`
/// writes. `None` when this reference cannot judge: a date-time with a
/// fraction of a second (compared as text it sorts before the whole second;
/// a known gap, docs/protocol.md "Date-times with fractions").
fn relative_date_matches(
    f: &Filter,
    kind: ColumnKind,
    value: &Value,
    ctx: &FilterContext,
) -> Option<bool> {
    let Value::Text(s) = value else {
        return Some(false); // null
    };
    let day = match kind {
        ColumnKind::Date => parse_date(s)?,
        _ if s.contains('.') => return None,
        _ => ctx.zone.local_day(parse_datetime(s)?),
    };
    let today = ctx.today();
    let month = |d: i64| {
        let (y, m, _) = civil_from_days(d);
        y * 12 + i64::from(m) - 1
    };
    let in_days = |from: i64, to: i64| (from..to).contains(&day);
    Some(match f {
        Filter::Today { .. } => day == today,
        Filter::Yesterday { .. } => day == today - 1,
        Filter::Tomorrow { .. } => day == today + 1,
        Filter::LastDays { days, .. } => in_days(today - i64::from(*days), today + 1),
        Filter::NextDays { days, .. } => in_days(today, today + i64::from(*days) + 1),
        Filter::OnOrAfterToday { .. } => day >= today,
        Filter::ThisMonth { .. } => month(day) == month(today),
        Filter::LastMonth { .. } => month(day) == month(today) - 1,
        Filter::NextMonth { .. } => month(day) == month(today) + 1,
        _ => unreachable!("not a relative date: {f:?}"),
    })
}

/// Reference meaning of a validated filter for one row: `and` / `or` / `not`
/// composed here, relative dates by [`relative_date_matches`], the other
/// leaves by the lowered leaf alone (`None` when the reference cannot judge).
fn reference(
    f: &Filter,
    table: &SyncTable,
    ctx: &FilterContext,
    row: &dyn Fn(&str) -> Option<Value>,
) -> Option<bool> {
    match f {
        Filter::And { filters } => filters.iter().try_fold(true, |acc, f| {
            reference(f, table, ctx, row).map(|v| acc && v)
        }),
        Filter::Or { filters } => filters.iter().try_fold(false, |acc, f| {
            reference(f, table, ctx, row).map(|v| acc || v)
        }),
        Filter::Not { filter } => reference(filter, table, ctx, row).map(|v| !v),
        f if f.uses_clock() => {
            let column = f.columns()[0];
            let kind = table.column(column).expect("validated column").kind;
            relative_date_matches(f, kind, &row(column).unwrap_or(Value::Null), ctx)
        }
        f => Some(f.lower(table, ctx).eval(row)),
    }
}

/// Target `filter`: bytes → the custom row filter of an offline profile
/// (`Filter`, JSON; the bytes after the JSON value choose the context, see
/// [`filter_context`]), validated against [`filter_table`], lowered, and
/// compiled to SQL by the server. Checks: `validate` never panics and refuses
/// with a profile error (`InvalidProfile`, or `UnknownColumn`); a validated
/// filter validates again to itself, survives JSON and reads only the
/// table's columns; a filter without relative dates lowers the same at any
/// time; the server's SQL, run on a SQLite table of [`filter_rows`], is never
/// NULL and selects exactly the rows the device's `Cond::eval` selects; and
/// relative dates select the rows whose local day is in the window.
pub fn filter(data: &[u8]) {
    let mut stream = serde_json::Deserializer::from_slice(data).into_iter::<Filter>();
    let Some(Ok(filter)) = stream.next() else {
        return;
    };
    let ctx = filter_context(&data[stream.byte_offset()..]);
    let table = filter_table();
    let validated = match filter.validate(table) {
        Ok(v) => v,
        Err(e) => {
            assert!(
                matches!(e, Error::InvalidProfile(_) | Error::UnknownColumn { .. }),
                "unexpected error kind {e:?}"
            );
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    assert_eq!(
        validated
            .validate(table)
            .expect("a validated filter validates"),
        validated,
        "validate is not idempotent"
    );
    let text = serde_json::to_string(&validated).expect("a filter encodes");
    let back: Filter = serde_json::from_str(&text).expect("an encoded filter decodes");
    assert_eq!(
        back, validated,
        "JSON round trip changed the filter: {text}"
    );
    for c in validated.columns() {
        assert!(table.column(c).is_some(), "validated filter reads '{c}'");
    }

    let cond = validated.lower(table, &ctx);
    if !validated.uses_clock() {
        let later = FilterContext {
            now_ms: ctx.now_ms + 40 * DAY_MS + 1234,
            ..ctx.clone()
        };
        assert_eq!(
            validated.lower(table, &later),
            cond,
            "a filter without relative dates depends on the clock"
        );
    }

    let mut params = Vec::new();
    let sql = compile_cond(&cond, &mut params);
    let on_server: Vec<bool> = {
        let conn = filter_db().lock().unwrap_or_else(|p| p.into_inner());
        let mut stmt = conn
            .prepare(&format!(
                "SELECT ({sql}) FROM {} ORDER BY rowid",
                table.name
            ))
            .unwrap_or_else(|e| panic!("the compiled SQL does not prepare: {e}\n{sql}"));
        let selected: Vec<bool> = stmt
            .query_map(rusqlite::params_from_iter(params.iter()), |r| {
                r.get::<_, Option<i64>>(0)
            })
            .unwrap_or_else(|e| panic!("the compiled SQL does not run: {e}\n{sql}"))
            .map(|v| match v.expect("a row") {
                Some(0) => false,
                Some(1) => true,
                other => panic!("the compiled SQL gave {other:?}, not 0 or 1\n{sql}"),
            })
            .collect();
        selected
    };
    let rows = filter_rows();
    assert_eq!(on_server.len(), rows.len());
    for (row, server) in rows.iter().zip(on_server) {
        let get = |c: &str| {
            table
                .columns
                .iter()
                .position(|col| col.name == c)
                .map(|i| row[i].clone())
        };
        let device = cond.eval(&get);
        assert_eq!(
            server, device,
            "server SQL and device disagree on row {row:?}\nfilter {validated:?}\ncond {cond:?}\nsql {sql}\nparams {params:?}\ncontext {ctx:?}"
        );
        if let Some(want) = reference(&validated, table, &ctx, &get) {
            assert_eq!(
                device, want,
                "relative dates select the wrong rows: row {row:?}\nfilter {validated:?}\ncond {cond:?}\ncontext {ctx:?}"
            );
        }
    }
}
