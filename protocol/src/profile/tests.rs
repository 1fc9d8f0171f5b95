//! Tests of the offline profile.

use super::*;

/// A model of `n` tables `t0..t{n-1}`, each with `id` and `parent_id`.
fn chain_model(n: usize) -> DataModel {
    DataModel {
        tables: (0..n)
            .map(|i| TableSchema {
                name: format!("t{i}"),
                primary_key: "id".into(),
                columns: vec![
                    Column::new("id", ColumnKind::Text),
                    Column::new("parent_id", ColumnKind::Text),
                ],
                indexes: Vec::new(),
            })
            .collect(),
    }
}

/// A profile where `t{i}` is related to `t{i+1}`: `t0` reaches every other table.
fn chain_profile(n: usize) -> OfflineProfile {
    OfflineProfile {
        name: "chain".into(),
        description: String::new(),
        utc_offset_minutes: 0,
        time_zone: None,
        tables: (0..n)
            .map(|i| TableProfile {
                name: format!("t{i}"),
                columns: vec!["parent_id".into()],
                rules: if i + 1 < n {
                    vec![RowRule::Related {
                        table: format!("t{}", i + 1),
                        column: "parent_id".into(),
                        foreign_column: "id".into(),
                    }]
                } else {
                    vec![RowRule::All]
                },
                sync_interval_secs: 300,
                writes: Default::default(),
                indexes: Vec::new(),
            })
            .collect(),
    }
}

#[test]
fn at_most_fifteen_related_tables_counted_transitively() {
    // t0 reaches 15 tables through the chain: allowed.
    assert!(chain_profile(16).validate(&chain_model(16)).is_ok());
    // t0 reaches 16 tables: refused, naming the table and the limit.
    let err = chain_profile(17)
        .validate(&chain_model(17))
        .expect_err("16 related tables are too many");
    let message = err.to_string();
    assert!(matches!(err, Error::InvalidProfile(_)), "{err:?}");
    assert!(
        message.contains("'t0'") && message.contains("16 tables") && message.contains("15"),
        "{message}"
    );
}

#[test]
fn local_indexes_name_synced_columns_and_are_carried_to_the_device() {
    let mut p = chain_profile(2);
    p.tables[0].indexes = vec![LocalIndex {
        columns: vec!["parent_id".into(), "id".into()],
    }];
    let resolved = p.resolve(&chain_model(2), 1, "u", None).expect("valid");
    assert_eq!(resolved.tables[0].indexes, p.tables[0].indexes);
    for columns in [
        vec![],
        vec!["no_such".to_owned()],
        vec!["id".into(), "id".into()],
    ] {
        p.tables[0].indexes = vec![LocalIndex { columns }];
        assert!(matches!(
            p.validate(&chain_model(2)),
            Err(Error::InvalidProfile(_))
        ));
    }
    p.tables[0].indexes = vec![
        LocalIndex {
            columns: vec!["parent_id".into()],
        };
        MAX_LOCAL_INDEXES + 1
    ];
    assert!(p.validate(&chain_model(2)).is_err());
}

#[test]
fn circular_relationships_are_refused() {
    let mut p = chain_profile(3);
    p.tables[2].rules = vec![RowRule::Related {
        table: "t0".into(),
        column: "parent_id".into(),
        foreign_column: "id".into(),
    }];
    let err = p.validate(&chain_model(3)).expect_err("a cycle");
    assert!(err.to_string().contains("circular relationship"), "{err}");
}
