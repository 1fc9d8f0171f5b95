//! Every public operation of the core's `Engine` reaches Kotlin and Swift:
//! the table "Engine operations and their bindings" in docs/architecture.md
//! names, for each, the exported operation of the bindings' `Engine`, or
//! marks it an exception with its reason. This test reads the sources and
//! the table and fails when they disagree.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Most operations allowed without a binding.
const MAX_EXCEPTIONS: usize = 3;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `pub fn` / `pub async fn` names inside top-level `impl Engine {` blocks;
/// with `exported`, only blocks under `#[uniffi::export]`.
fn engine_operations(dir: &Path, exported: bool) -> BTreeSet<String> {
    let mut files = Vec::new();
    rust_files(dir, &mut files);
    let mut ops = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read");
        let mut inside = false;
        let mut previous = "";
        for line in text.lines() {
            if line.starts_with("impl Engine {") {
                inside = !exported || previous.trim() == "#[uniffi::export]";
            } else if line == "}" {
                inside = false;
            } else if inside {
                let rest = line
                    .strip_prefix("    pub fn ")
                    .or_else(|| line.strip_prefix("    pub async fn "));
                if let Some(rest) = rest {
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    ops.insert(name);
                }
            }
            previous = line;
        }
    }
    ops
}

/// The table's rows: core operation -> (bindings, note).
fn documented() -> BTreeMap<String, (Vec<String>, String)> {
    let doc =
        std::fs::read_to_string(root().join("docs/architecture.md")).expect("architecture.md");
    let section = doc
        .split("## Engine operations and their bindings")
        .nth(1)
        .expect("the operations section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let mut rows = BTreeMap::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        assert_eq!(cells.len(), 3, "a row has three cells: {line}");
        let core = cells[0].trim_matches('`').to_owned();
        let bindings: Vec<String> = cells[1]
            .split(',')
            .map(|b| b.trim().trim_matches('`').to_owned())
            .filter(|b| !b.is_empty() && b != "none")
            .collect();
        assert!(
            rows.insert(core.clone(), (bindings, cells[2].to_owned()))
                .is_none(),
            "{core} is listed twice"
        );
    }
    rows
}

#[test]
fn every_public_core_operation_has_a_binding_or_a_justified_exception() {
    let core = engine_operations(&root().join("core/src"), false);
    let exported = engine_operations(&root().join("bindings/src"), true);
    let table = documented();
    assert!(
        core.len() > 30,
        "the core's operations were found: {core:?}"
    );

    let missing: Vec<&String> = core.iter().filter(|op| !table.contains_key(*op)).collect();
    assert!(
        missing.is_empty(),
        "public core operations missing from docs/architecture.md: {missing:?}"
    );
    let stale: Vec<&String> = table.keys().filter(|op| !core.contains(*op)).collect();
    assert!(
        stale.is_empty(),
        "rows for operations the core no longer has: {stale:?}"
    );

    let mut exceptions = Vec::new();
    for (op, (bindings, note)) in &table {
        if bindings.is_empty() {
            assert!(
                note.starts_with("exception:") && note.len() > "exception: ".len() + 20,
                "{op} has no binding and no reason"
            );
            exceptions.push(op.clone());
        }
        for b in bindings {
            assert!(
                exported.contains(b),
                "{op}: the binding {b} is not an exported operation of the bindings' Engine"
            );
        }
    }
    assert!(
        exceptions.len() <= MAX_EXCEPTIONS,
        "too many operations without a binding: {exceptions:?}"
    );
}
