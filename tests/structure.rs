//! The workspace's shape, checked (issue #33): the server depends on the
//! shared protocol crate and not on the device engine, the protocol crate
//! forces SQLite on nobody, and its modules import each other without a
//! circle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

/// The packages `cargo tree` lists for `package` (every edge kind the
/// argument names), one `name vX.Y.Z` per line, without duplicates.
fn tree(package: &str, edges: &str, features: &[&str]) -> BTreeSet<String> {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(root).args([
        "tree",
        "--offline",
        "--locked",
        "--prefix",
        "none",
        "--edges",
        edges,
        "-p",
        package,
    ]);
    for f in features {
        cmd.args(["--features", f]);
    }
    let out = cmd.output().expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_server_does_not_depend_on_the_core() {
    let deps = tree("fieldsync-server", "normal,build,dev", &[]);
    assert!(
        deps.contains("fieldsync-protocol"),
        "the server builds on the protocol crate: {deps:?}"
    );
    assert!(deps.contains("axum"), "a full tree was read: {deps:?}");
    assert!(
        !deps.contains("fieldsync-core"),
        "the server (or one of its dependencies, dev ones included) depends on fieldsync-core"
    );
}

#[test]
fn the_protocol_crate_needs_sqlite_only_with_its_feature() {
    let plain = tree("fieldsync-protocol", "normal", &[]);
    assert!(plain.contains("serde"), "{plain:?}");
    assert!(!plain.contains("rusqlite"), "{plain:?}");
    assert!(!plain.contains("fieldsync-core"), "{plain:?}");
    let sqlite = tree("fieldsync-protocol", "normal", &["sqlite"]);
    assert!(sqlite.contains("rusqlite"), "{sqlite:?}");
}

/// The `crate::module` paths a source file names outside comments (its
/// own tests included: a `foo/tests.rs` counts as `foo`).
fn imports(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let mut rest = line.trim();
        if rest.starts_with("//") {
            continue;
        }
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            out.insert(name);
        }
    }
    out
}

#[test]
fn the_protocol_modules_import_each_other_without_a_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("protocol/src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut files = 0;
    let mut visit = |path: &Path, module: String| {
        let text = std::fs::read_to_string(path).expect("source file");
        let deps = graph.entry(module.clone()).or_default();
        deps.extend(imports(&text).into_iter().filter(|d| *d != module));
        files += 1;
    };
    for entry in std::fs::read_dir(&src).expect("protocol/src") {
        let path = entry.expect("entry").path();
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else {
            continue;
        };
        if path.is_dir() {
            for inner in std::fs::read_dir(&path).expect("module dir") {
                visit(&inner.expect("entry").path(), stem.clone());
            }
        } else if stem != "lib" {
            visit(&path, stem);
        }
    }
    assert!(files >= 10, "read {files} files");
    assert!(
        graph["profile"].contains("filter") && graph["filter"].contains("value"),
        "imports were read: {graph:?}"
    );
    // Depth-first search for a back edge.
    fn visit_node<'a>(
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        node: &'a str,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) {
        if done.contains(node) {
            return;
        }
        if let Some(at) = path.iter().position(|n| *n == node) {
            panic!("import circle: {:?} -> {node}", &path[at..]);
        }
        path.push(node);
        for dep in graph.get(node).into_iter().flatten() {
            visit_node(graph, dep, path, done);
        }
        path.pop();
        done.insert(node);
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        visit_node(&graph, node, &mut Vec::new(), &mut done);
    }
}
