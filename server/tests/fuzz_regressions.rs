//! Replays the `cursor` fuzzer's saved inputs on stable Rust: every file
//! under `fuzz/regressions/cursor/` (inputs that once failed the target) and
//! the seeds `fuzz/corpus/cursor/seed-*` go through the same check the
//! libFuzzer target runs (`fuzz/src/server_checks.rs`, included here).

#[path = "../../fuzz/src/server_checks.rs"]
mod server_checks;

use std::path::{Path, PathBuf};

/// The saved inputs of the cursor target: regressions first, then seeds.
fn inputs() -> Vec<PathBuf> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut out = Vec::new();
    for (dir, seeds_only) in [("regressions", false), ("corpus", true)] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(dir).join("cursor")) else {
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

#[test]
fn cursor_inputs() {
    let files = inputs();
    assert!(!files.is_empty(), "no saved inputs for fuzz target cursor");
    for file in files {
        let data = std::fs::read(&file).expect("read saved input");
        let outcome = std::panic::catch_unwind(|| server_checks::cursor(&data));
        assert!(outcome.is_ok(), "fuzz input {} fails", file.display());
    }
}
