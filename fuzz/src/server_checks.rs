//! What the server fuzz targets do with one input. Shared by the libFuzzer
//! target `fuzz/fuzz_targets/cursor.rs` and by the stable-Rust regression test
//! `server/tests/fuzz_regressions.rs` (which includes this file with
//! `#[path]`). Only `fieldsync_server` may be used here.

use fieldsync_server::db::Cursor;

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
