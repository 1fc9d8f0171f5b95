//! Replays the server fuzz targets' saved inputs on stable Rust: every file
//! under `fuzz/regressions/<target>/` (inputs that once failed a target) and
//! the seeds `fuzz/corpus/<target>/seed-*` go through the same check the
//! libFuzzer target runs (`fuzz/src/server_checks.rs`, included here), for the
//! targets `cursor` and `filter`.

#[path = "../../fuzz/src/server_checks.rs"]
mod server_checks;

use std::path::{Path, PathBuf};

/// The saved inputs of one target: regressions first, then seeds.
fn inputs(target: &str) -> Vec<PathBuf> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut out = Vec::new();
    for (dir, seeds_only) in [("regressions", false), ("corpus", true)] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(dir).join(target)) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .filter(|p| {
                !seeds_only
                    || p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("seed-"))
            })
            .collect();
        files.sort();
        out.extend(files);
    }
    out
}

/// Runs `check` on every saved input of `target`, naming the file on failure.
fn replay(target: &str, check: fn(&[u8])) {
    let files = inputs(target);
    assert!(
        !files.is_empty(),
        "no saved inputs for fuzz target {target}"
    );
    for file in files {
        let data = std::fs::read(&file).expect("read saved input");
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "fuzz input {} fails", file.display());
    }
}

#[test]
fn cursor_inputs() {
    replay("cursor", server_checks::cursor);
}

#[test]
fn filter_inputs() {
    replay("filter", server_checks::filter);
}
