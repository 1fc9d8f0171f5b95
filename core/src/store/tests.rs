use super::*;
use crate::protocol::MutationStatus;

fn profile() -> SyncProfile {
    serde_json::from_value(serde_json::json!({
        "name": "p", "version": 1, "user_id": "u1",
        "tables": [
            {"name": "jobs", "primary_key": "id", "sync_interval_secs": 60,
             "columns": [{"name": "id", "type": "text"}, {"name": "note", "type": "text"}],
             "rules": [{"kind": "all"}]}
        ]
    }))
    .expect("profile")
}

fn note(text: &str) -> BTreeMap<String, Value> {
    BTreeMap::from([("note".to_owned(), Value::Text(text.into()))])
}

fn local(op: Op, id: &str, text: &str) -> LocalWrite {
    LocalWrite {
        table: profile().tables[0].clone(),
        id: id.into(),
        op: Some(op),
        data: note(text),
    }
}

/// The outbox as (row, transaction id or none, op, note) in order.
fn outbox(store: &Store) -> Vec<(String, Option<String>, Op, Option<Value>)> {
    store
        .outbox()
        .expect("outbox")
        .into_iter()
        .map(|e| {
            let m = e.mutation;
            (
                m.id,
                m.transaction.map(|t| t.id),
                m.op,
                m.data.get("note").cloned(),
            )
        })
        .collect()
}

#[test]
fn a_transactions_entries_stay_its_own_and_travel_whole() {
    let dir = tempfile::tempdir().expect("dir");
    let store = Store::open(&dir.path().join("s.db")).expect("open");
    let p = profile();
    store.apply_profile(&p, 0).expect("profile");
    let jobs = &p.tables[0];
    store
        .write(&p, jobs, "a", Op::Insert, note("single"), 0)
        .expect("single insert");

    // Writes of one transaction to one row merge with each other, never
    // into the single write's unsent entry.
    let writes = [
        local(Op::Update, "a", "tx 1"),
        local(Op::Insert, "b", "tx 1"),
        local(Op::Update, "b", "tx 2"),
    ];
    let mut seen = Vec::new();
    store
        .write_transaction(&p, &writes, 0, &mut |i| seen.push(i))
        .expect("transaction");
    assert_eq!(seen, [0, 1, 2]);
    // A single write after it does not merge into it either.
    store
        .write(&p, jobs, "b", Op::Update, note("single after"), 0)
        .expect("single update");
    let entries = outbox(&store);
    let tx = entries[1].1.clone().expect("in a transaction");
    assert_eq!(
        entries,
        vec![
            (
                "a".into(),
                None,
                Op::Insert,
                Some(Value::Text("single".into()))
            ),
            (
                "a".into(),
                Some(tx.clone()),
                Op::Update,
                Some(Value::Text("tx 1".into()))
            ),
            (
                "b".into(),
                Some(tx.clone()),
                Op::Insert,
                Some(Value::Text("tx 2".into()))
            ),
            (
                "b".into(),
                None,
                Op::Update,
                Some(Value::Text("single after".into()))
            ),
        ]
    );
    let sizes: Vec<_> = store
        .outbox()
        .expect("outbox")
        .iter()
        .map(|e| e.mutation.transaction.as_ref().map(|t| t.size))
        .collect();
    assert_eq!(sizes, [None, Some(2), Some(2), None]);

    // The first batch stops before the transaction (it changes "a"
    // again); the next takes it whole, even past `max`, and stops
    // before the second change of "b".
    let first = store.take_batch(500).expect("batch");
    assert_eq!(first.len(), 1);
    let applied = MutationResult {
        idempotency_key: first[0].mutation.idempotency_key.clone(),
        status: MutationStatus::Applied,
        version: 1,
        row: Some(note("single")),
        error: None,
    };
    store
        .apply_push_results(&p, &first, &[applied], 0)
        .expect("results");
    let second = store.take_batch(1).expect("batch");
    assert_eq!(
        second
            .iter()
            .map(|e| e.mutation.id.as_str())
            .collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert!(
        second
            .iter()
            .all(|e| e.mutation.transaction.as_ref().map(|t| &t.id) == Some(&tx))
    );

    // A failing write rolls the whole transaction back.
    let before = outbox(&store);
    let err = store
        .write_transaction(
            &p,
            &[
                local(Op::Insert, "c", "x"),
                local(Op::Update, "missing", "x"),
            ],
            0,
            &mut |_| {},
        )
        .expect_err("the second write fails");
    assert!(matches!(err, Error::RecordNotFound { .. }));
    assert_eq!(outbox(&store), before);
    assert!(store.get(jobs, "c").is_err());
}

#[test]
fn a_dropped_table_takes_its_transactions_whole_into_the_sync_errors() {
    let dir = tempfile::tempdir().expect("dir");
    let store = Store::open(&dir.path().join("s.db")).expect("open");
    let mut p: SyncProfile = serde_json::from_value(serde_json::json!({
        "name": "p", "version": 1, "user_id": "u1",
        "tables": [
            {"name": "jobs", "primary_key": "id", "sync_interval_secs": 60,
             "columns": [{"name": "id", "type": "text"}, {"name": "note", "type": "text"}],
             "rules": [{"kind": "all"}]},
            {"name": "parts", "primary_key": "id", "sync_interval_secs": 60,
             "columns": [{"name": "id", "type": "text"}, {"name": "note", "type": "text"}],
             "rules": [{"kind": "all"}]}
        ]
    }))
    .expect("profile");
    store.apply_profile(&p, 0).expect("profile");
    let write = |t: usize, id: &str| LocalWrite {
        table: p.tables[t].clone(),
        id: id.into(),
        op: Some(Op::Insert),
        data: note("n"),
    };
    store
        .write_transaction(&p, &[write(0, "j1"), write(1, "p1")], 0, &mut |_| {})
        .expect("transaction");
    store
        .write(&p, &p.tables[0].clone(), "j2", Op::Insert, note("n"), 0)
        .expect("single");
    p.tables.truncate(1);
    p.version = 2;
    let change = store.apply_profile(&p, 0).expect("drop parts");
    assert_eq!(change.orphaned_changes, 2);
    let left: Vec<String> = store
        .outbox()
        .expect("outbox")
        .into_iter()
        .map(|e| e.mutation.id)
        .collect();
    assert_eq!(left, ["j2"]);
}
