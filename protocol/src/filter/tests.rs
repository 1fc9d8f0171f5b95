//! Tests of the filter language.

use super::*;
/// A table as the filter sees it, without an offline profile: the
/// filter reads tables only through [`FilterTable`].
struct Table {
    columns: Vec<(&'static str, ColumnKind)>,
}

impl FilterTable for Table {
    fn table_name(&self) -> &str {
        "t"
    }

    fn primary_key(&self) -> &str {
        "id"
    }

    fn column_kind(&self, column: &str) -> Option<ColumnKind> {
        self.columns
            .iter()
            .find(|(name, _)| *name == column)
            .map(|(_, kind)| *kind)
    }
}

fn table() -> Table {
    Table {
        columns: vec![
            ("id", ColumnKind::Text),
            ("d", ColumnKind::Date),
            ("ts", ColumnKind::DateTime),
            ("n", ColumnKind::Integer),
        ],
    }
}

fn ctx(now: &str, offset: i32) -> FilterContext {
    FilterContext {
        user_id: "u".into(),
        team_id: None,
        now_ms: crate::time::parse_datetime(now).unwrap_or(0),
        zone: Zone::Fixed(offset),
    }
}

#[test]
fn relative_dates_lower_to_bounds() {
    let t = table();
    let c = ctx("2026-01-31T23:30:00Z", 0);
    let f = Filter::NextMonth { column: "d".into() };
    assert_eq!(
        f.lower(&t, &c),
        Cond::And(vec![
            Cond::Cmp {
                column: "d".into(),
                op: CmpOp::Ge,
                value: Value::Text("2026-02-01".into())
            },
            Cond::Cmp {
                column: "d".into(),
                op: CmpOp::Lt,
                value: Value::Text("2026-03-01".into())
            },
        ])
    );
    // One hour east of UTC it is already 1 February.
    let c = ctx("2026-01-31T23:30:00Z", 60);
    let f = Filter::Today {
        column: "ts".into(),
    };
    assert_eq!(
        f.lower(&t, &c),
        Cond::And(vec![
            Cond::Cmp {
                column: "ts".into(),
                op: CmpOp::Ge,
                value: Value::Text("2026-01-31T23:00:00Z".into())
            },
            Cond::Cmp {
                column: "ts".into(),
                op: CmpOp::Lt,
                value: Value::Text("2026-02-01T23:00:00Z".into())
            },
        ])
    );
}

#[test]
fn validation_names_the_problem() {
    let t = table();
    let e = Filter::Today { column: "n".into() }
        .validate(&t)
        .unwrap_err();
    assert!(e.to_string().contains("date"), "{e}");
    let e = Filter::Eq {
        column: "zz".into(),
        value: Value::Integer(1),
    }
    .validate(&t)
    .unwrap_err();
    assert!(e.to_string().contains("zz"), "{e}");
    let e = Filter::Eq {
        column: "n".into(),
        value: Value::Text("x".into()),
    }
    .validate(&t)
    .unwrap_err();
    assert!(e.to_string().contains("'n'"), "{e}");
}
