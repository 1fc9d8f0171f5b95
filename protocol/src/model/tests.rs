//! Tests of the data model.

use super::*;

fn model(json: &str) -> Result<DataModel, Error> {
    DataModel::parse(json)
}

#[test]
fn bad_models_are_refused_naming_the_problem() {
    let unknown = model(
        r#"{"tables": [{"name": "jobs", "primary_key": "id", "columns": [{"name": "id", "type": "text"}, {"name": "due", "type": "timestamp"}]}]}"#,
    )
    .expect_err("unknown kind");
    let m = unknown.to_string();
    assert!(
        m.contains("'jobs'")
            && m.contains("'due'")
            && m.contains("timestamp")
            && m.contains("datetime"),
        "{m}"
    );
    let twice = model(
        r#"{"tables": [{"name": "jobs", "primary_key": "id", "columns": [{"name": "id", "type": "text"}]}, {"name": "jobs", "primary_key": "id", "columns": [{"name": "id", "type": "text"}]}]}"#,
    )
    .expect_err("duplicate table");
    assert!(
        twice.to_string().contains("table 'jobs' is defined twice"),
        "{twice}"
    );
    let dangling = model(
        r#"{"tables": [{"name": "jobs", "primary_key": "id", "columns": [{"name": "id", "type": "text"}, {"name": "site_id", "type": "text", "references": "sites"}]}]}"#,
    )
    .expect_err("dangling relationship");
    let m = dangling.to_string();
    assert!(m.contains("jobs.site_id") && m.contains("'sites'"), "{m}");
    let choice = model(
        r#"{"tables": [{"name": "jobs", "primary_key": "id", "columns": [{"name": "id", "type": "text"}, {"name": "state", "type": "choice", "choices": ["open", "done"], "default": "late"}]}]}"#,
    )
    .expect_err("default outside the choices");
    assert!(choice.to_string().contains("jobs.state"), "{choice}");
    let typo = model(
        r#"{"tables": [{"name": "jobs", "primary_key": "id", "columns": [{"name": "id", "type": "text"}, {"name": "state", "type": "choice", "choise": ["open"]}]}]}"#,
    )
    .expect_err("a misspelt field");
    assert!(typo.to_string().contains("\"choise\""), "{typo}");
    let reserved = model(
        r#"{"tables": [{"name": "jobs", "primary_key": "id", "columns": [{"name": "id", "type": "text"}, {"name": "xmin", "type": "integer"}]}]}"#,
    )
    .expect_err("a system column's name");
    assert!(reserved.to_string().contains("jobs.xmin"), "{reserved}");
    assert!(matches!(choice, Error::InvalidModel(_)));
}

#[test]
fn choices_and_json_are_checked_on_write() {
    let m = model(
        r#"{"tables": [{"name": "jobs", "primary_key": "id", "columns": [{"name": "id", "type": "text"}, {"name": "state", "type": "choice", "choices": ["open", "done"]}, {"name": "extra", "type": "json"}]}]}"#,
    )
    .expect("model");
    let t = m.table("jobs").expect("jobs");
    let state = t.column("state").expect("state");
    assert_eq!(
        state.check(Value::Text("open".into())),
        Ok(Value::Text("open".into()))
    );
    assert!(state.check(Value::Text("lost".into())).is_err());
    assert!(state.check(Value::Integer(1)).is_err());
    let extra = t.column("extra").expect("extra");
    assert!(extra.check(Value::Text(r#"{"a": [1, 2]}"#.into())).is_ok());
    assert!(extra.check(Value::Text("{oops".into())).is_err());
}

#[test]
fn a_model_grows_but_never_retypes_or_narrows() {
    let v1 = model(
        r#"{"tables": [{"name": "jobs", "primary_key": "id", "columns": [{"name": "id", "type": "text"}, {"name": "state", "type": "choice", "choices": ["open", "done"]}, {"name": "hours", "type": "real", "required": true, "default": 1}]}]}"#,
    )
    .expect("v1");
    let v2 = model(
        r#"{"tables": [{"name": "jobs", "primary_key": "id", "columns": [{"name": "id", "type": "text"}, {"name": "state", "type": "choice", "choices": ["open", "done", "held"]}, {"name": "hours", "type": "real"}, {"name": "gate_code", "type": "text", "default": "none"}], "indexes": [{"name": "by_state", "columns": ["state"]}]}, {"name": "permits", "primary_key": "id", "columns": [{"name": "id", "type": "text"}, {"name": "job_id", "type": "text", "references": "jobs"}]}]}"#,
    )
    .expect("v2");
    let changes = v1.changes_to(&v2).expect("a valid evolution");
    for c in [
        ModelChange::AddColumn {
            table: "jobs".into(),
            column: "gate_code".into(),
        },
        ModelChange::RelaxColumn {
            table: "jobs".into(),
            column: "state".into(),
        },
        ModelChange::RelaxColumn {
            table: "jobs".into(),
            column: "hours".into(),
        },
        ModelChange::AddTable {
            table: "permits".into(),
        },
        ModelChange::AddIndex {
            table: "jobs".into(),
            index: "by_state".into(),
        },
    ] {
        assert!(changes.contains(&c), "{c:?} in {changes:?}");
    }
    // Back again: narrows the choices.
    let err = v2.changes_to(&v1).expect_err("narrowing");
    assert!(err.to_string().contains("choice 'held'"), "{err}");
    // Retyping.
    let mut retyped = v2.clone();
    retyped.tables[0].columns[3].kind = ColumnKind::Integer;
    retyped.tables[0].columns[3].default = None;
    let err = v2.changes_to(&retyped).expect_err("retype");
    assert!(err.to_string().contains("jobs.gate_code"), "{err}");
    // Dropping is a change (the server checks the profiles).
    let mut dropped = v2.clone();
    dropped.tables.pop();
    assert_eq!(
        v2.changes_to(&dropped).expect("drop"),
        vec![ModelChange::DropTable {
            table: "permits".into()
        }]
    );
}

#[test]
fn default_literals_quote_text() {
    assert_eq!(default_literal(&Value::Text("it's".into())), "'it''s'");
    assert_eq!(default_literal(&Value::Integer(-3)), "-3");
    assert_eq!(default_literal(&Value::Real(1.5)), "1.5");
    assert_eq!(default_literal(&Value::Boolean(true)), "1");
}
