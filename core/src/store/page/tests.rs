use crate::codec::{Body, Encoding};
use crate::profile::SyncProfile;
use crate::protocol::PullPage;
use crate::store::Store;

fn profile() -> SyncProfile {
    serde_json::from_value(serde_json::json!({
        "name": "p", "version": 1, "user_id": "u1",
        "tables": [
            {"name": "jobs", "primary_key": "id", "sync_interval_secs": 60,
             "columns": [{"name": "id", "type": "text"}, {"name": "note", "type": "text"},
                         {"name": "hours", "type": "real"}, {"name": "done", "type": "boolean"}],
             "rules": [{"kind": "all"}]}
        ]
    }))
    .expect("profile")
}

fn store(dir: &std::path::Path, name: &str) -> Store {
    let store = Store::open(&dir.join(name)).expect("open");
    store.apply_profile(&profile(), 0).expect("profile");
    store
}

/// A row of `jobs`: id, version, note, hours, done.
type Job = (String, i64, Option<String>, Option<f64>, Option<i64>);

/// Every row of `jobs`, in key order.
fn rows(store: &Store) -> Vec<Job> {
    store
        .with_reader(|c| {
            let mut stmt =
                c.prepare("SELECT id, _fs_version, note, hours, done FROM jobs ORDER BY id")?;
            let rows = stmt.query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .expect("rows")
}

const HEAD: &str =
    r#""table": "jobs", "profile_version": 1, "cursor": "c9", "has_more": true, "total": 7"#;
const COLUMNS: &str = r#""columns": ["_version", "id", "note", "hours", "done"]"#;
/// Text, null and text again in one column (the reused buffer), an
/// escaped string, integers widened to reals, 0/1 as booleans.
const ROWS: &str = r#""rows": [
    [1, "a", "first note", 1, true],
    [2, "b", null, 2.5, 0],
    [3, "c", "th\u00efrd \"quoted\"", null, null],
    [4, "d", "x", 4, 1]
]"#;

/// A whole page in the reference server's field order: 4 rows, then a
/// removal of a row it holds ("b") and of one it does not ("zz").
fn full_page() -> String {
    format!(r#"{{{HEAD}, {COLUMNS}, {ROWS}, "removed": ["b", "zz"]}}"#)
}

#[test]
fn a_page_applied_from_its_json_matches_the_page_applied_decoded() {
    let dir = tempfile::tempdir().expect("dir");
    let p = profile();
    let jobs = p.table("jobs").expect("jobs");
    let body = full_page();
    let streamed = store(dir.path(), "s.db");
    let summary = streamed
        .apply_page_json(None, jobs, &Body::plain(body.as_bytes().to_vec()), 5, |s| {
            s.total.map(|t| t + 100)
        })
        .expect("streamed");
    assert_eq!(
        (
            summary.has_more,
            summary.total,
            summary.entries,
            summary.expected
        ),
        (true, Some(7), 6, Some(107))
    );
    assert_eq!((summary.applied.upserted, summary.applied.removed), (4, 1));
    let decoded = store(dir.path(), "d.db");
    let page: PullPage = serde_json::from_str(&body).expect("page");
    decoded.apply_page(None, jobs, &page, 5).expect("decoded");
    assert_eq!(rows(&streamed), rows(&decoded));
    assert_eq!(
        rows(&streamed)[1],
        ("c".into(), 3, Some("thïrd \"quoted\"".into()), None, None)
    );
    let state = streamed.table_state("jobs").expect("state");
    assert_eq!(
        (
            state.cursor.as_str(),
            state.received_rows,
            state.expected_rows
        ),
        ("c9", 6, Some(107))
    );
}

#[test]
fn a_compressed_page_applies_as_its_json_and_a_cut_one_writes_nothing() {
    use std::io::Write;
    let dir = tempfile::tempdir().expect("dir");
    let p = profile();
    let jobs = p.table("jobs").expect("jobs");
    let body = full_page();
    let plain = store(dir.path(), "plain.db");
    plain
        .apply_page_json(None, jobs, &Body::plain(body.as_bytes().to_vec()), 5, |s| {
            s.total
        })
        .expect("plain");
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gzip.write_all(body.as_bytes()).expect("gzip");
    let compressed = [
        Body {
            bytes: zstd::encode_all(body.as_bytes(), 1).expect("zstd"),
            encoding: Encoding::Zstd,
        },
        Body {
            bytes: gzip.finish().expect("gzip"),
            encoding: Encoding::Gzip,
        },
    ];
    for (i, page) in compressed.iter().enumerate() {
        let store = store(dir.path(), &format!("c{i}.db"));
        let summary = store
            .apply_page_json(None, jobs, page, 5, |s| s.total)
            .expect("compressed");
        assert_eq!((summary.entries, summary.applied.upserted), (6, 4));
        assert_eq!(rows(&store), rows(&plain));
        assert_eq!(store.table_state("jobs").expect("state").cursor, "c9");

        // The same page cut short: an error, no row, no cursor.
        let cut = Body {
            bytes: page.bytes[..page.bytes.len() - 8].to_vec(),
            encoding: page.encoding,
        };
        let fresh =
            crate::store::Store::open(&dir.path().join(format!("cut{i}.db"))).expect("open");
        fresh.apply_profile(&p, 0).expect("profile");
        let err = fresh
            .apply_page_json(None, jobs, &cut, 5, |s| s.total)
            .expect_err("cut page");
        assert!(matches!(err, crate::error::Error::Protocol(_)), "{err:?}");
        assert!(rows(&fresh).is_empty());
        assert_eq!(fresh.table_state("jobs").expect("state").cursor, "");
    }
}

#[test]
fn a_large_compressed_page_applies_as_its_json_across_many_windows() {
    let dir = tempfile::tempdir().expect("dir");
    let p = profile();
    let jobs = p.table("jobs").expect("jobs");
    // Notes that do not compress away: the body spans many 64 kB
    // windows of the value stream, compressed and decompressed.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let lines: Vec<String> = (0..20_000)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            format!(r#"[{i}, "k{i:06}", "note {x:016x}", {}, {}]"#, i % 9, i % 2)
        })
        .collect();
    let body = format!(
        r#"{{{HEAD}, {COLUMNS}, "rows": [{}], "removed": ["k000003"]}}"#,
        lines.join(",")
    );
    let compressed = Body {
        bytes: zstd::encode_all(body.as_bytes(), 1).expect("zstd"),
        encoding: Encoding::Zstd,
    };
    assert!(compressed.bytes.len() > 4 * 64 * 1024);
    let plain = store(dir.path(), "plain.db");
    let streamed = store(dir.path(), "streamed.db");
    plain
        .apply_page_json(None, jobs, &Body::plain(body.into_bytes()), 5, |s| s.total)
        .expect("plain");
    let summary = streamed
        .apply_page_json(None, jobs, &compressed, 5, |s| s.total)
        .expect("streamed");
    assert_eq!(
        (summary.entries, summary.applied.upserted),
        (20_001, 20_000)
    );
    assert_eq!(rows(&streamed), rows(&plain));
    assert_eq!(rows(&streamed).len(), 19_999);

    // Cut short: an error, nothing written, whatever had been decoded.
    let cut = Body {
        bytes: compressed.bytes[..compressed.bytes.len() * 3 / 4].to_vec(),
        encoding: Encoding::Zstd,
    };
    let fresh = store(dir.path(), "cut.db");
    let err = fresh
        .apply_page_json(None, jobs, &cut, 5, |s| s.total)
        .expect_err("cut page");
    assert!(matches!(err, crate::error::Error::Protocol(_)), "{err:?}");
    assert!(rows(&fresh).is_empty());
}

#[test]
fn plain_and_compressed_bodies_agree_on_every_cut_and_every_broken_byte() {
    let dir = tempfile::tempdir().expect("dir");
    let p = profile();
    let jobs = p.table("jobs").expect("jobs");
    let store = store(dir.path(), "s.db");
    let body = full_page();
    let outcome = |bytes: &[u8], encoding: Encoding| {
        let body = Body {
            bytes: match encoding {
                Encoding::Zstd => zstd::encode_all(bytes, 1).expect("zstd"),
                _ => bytes.to_vec(),
            },
            encoding,
        };
        let result = store
            .apply_page_json(None, jobs, &body, 5, |s| s.total)
            .map(|s| (s.entries, s.applied.upserted, s.applied.removed));
        // Back to an empty table and no cursor for the next one.
        store
            .with_writer(|c| {
                c.execute_batch(
                    "DELETE FROM jobs; UPDATE _fs_tables SET cursor = '', received_rows = 0",
                )?;
                Ok(())
            })
            .expect("reset");
        result.map_err(|e| matches!(e, crate::error::Error::Protocol(_)))
    };
    let mut variants: Vec<Vec<u8>> = (0..body.len())
        .map(|n| body.as_bytes()[..n].to_vec())
        .collect();
    for i in 0..body.len() {
        for b in [b'"', b',', b']', b'}', b'[', b'{', b'\\', b' ', b'1', b':'] {
            let mut v = body.as_bytes().to_vec();
            v[i] = b;
            variants.push(v);
        }
    }
    let mut accepted = 0;
    for v in &variants {
        let plain = outcome(v, Encoding::Identity);
        let zstd = outcome(v, Encoding::Zstd);
        assert_eq!(plain, zstd, "{}", String::from_utf8_lossy(v));
        accepted += usize::from(plain.is_ok());
    }
    // Some broken bytes still make a valid page (a space in a string).
    assert!(accepted > 0 && accepted < variants.len() / 2, "{accepted}");
    assert_eq!(outcome(body.as_bytes(), Encoding::Zstd), Ok((6, 4, 1)));
}

#[test]
fn rows_before_the_columns_and_removals_before_the_rows_apply_in_page_order() {
    let dir = tempfile::tempdir().expect("dir");
    let p = profile();
    let jobs = p.table("jobs").expect("jobs");
    let store = store(dir.path(), "s.db");
    // Removals are applied after the rows whatever their place: a key
    // both written and removed (not something a server sends) ends removed,
    // as with the decoded page.
    let body = format!(r#"{{"removed": ["a"], {ROWS}, {HEAD}, {COLUMNS}}}"#);
    let summary = store
        .apply_page_json(None, jobs, &Body::plain(body.as_bytes().to_vec()), 5, |s| {
            s.total
        })
        .expect("applied");
    assert_eq!(summary.entries, 5);
    let ids: Vec<String> = rows(&store).into_iter().map(|r| r.0).collect();
    assert_eq!(ids, ["b", "c", "d"]);
}

#[test]
fn a_page_that_fails_part_way_writes_nothing_and_keeps_the_cursor() {
    let dir = tempfile::tempdir().expect("dir");
    let p = profile();
    let jobs = p.table("jobs").expect("jobs");
    let store = store(dir.path(), "s.db");
    let bad_rows = [
        // A value of the wrong type in the third row.
        r#"[[1, "a", "n", 1, true], [2, "b", "n", 1, true], [3, "c", "n", "many", true]]"#,
        // A short row.
        r#"[[1, "a", "n", 1, true], [2, "b"]]"#,
        // An array where a value goes.
        r#"[[1, "a", "n", 1, true], [2, "b", ["n"], 1, true]]"#,
        // Cut off.
        r#"[[1, "a", "n", 1, true], [2, "b", "n""#,
    ];
    for rows_json in bad_rows {
        let body = format!(r#"{{{HEAD}, {COLUMNS}, "rows": {rows_json}, "removed": []}}"#);
        let err = store
            .apply_page_json(None, jobs, &Body::plain(body.as_bytes().to_vec()), 5, |s| {
                s.total
            })
            .expect_err(rows_json);
        assert!(
            matches!(err, crate::error::Error::Protocol(_)),
            "{rows_json}: {err:?}"
        );
        assert!(rows(&store).is_empty(), "{rows_json}");
        assert_eq!(store.table_state("jobs").expect("state").cursor, "");
    }
    // Trailing bytes after the page, a field twice, a field missing.
    for body in [
        format!(r#"{{{HEAD}, {COLUMNS}, {ROWS}, "removed": []}} x"#),
        format!(r#"{{{HEAD}, {COLUMNS}, {ROWS}, {ROWS}, "removed": []}}"#),
        format!(r#"{{{HEAD}, {COLUMNS}, {ROWS}}}"#),
    ] {
        assert!(
            store
                .apply_page_json(None, jobs, &Body::plain(body.as_bytes().to_vec()), 5, |s| s
                    .total)
                .is_err(),
            "{body}"
        );
        assert!(rows(&store).is_empty(), "{body}");
    }
}
