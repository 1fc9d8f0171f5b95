//! The workspace's shape, checked (issue #33): the server depends on the
//! shared protocol crate and not on the device engine, the protocol crate
//! forces SQLite on nobody, no source file is over 800 lines of code, and
//! no crate's modules import each other in a circle. Each check first
//! proves it read a meaningful amount of code.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
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

/// The crates whose library and binary code is checked (tests and benches
/// are not: a test file may be as long as its scenarios need).
const CRATES: &[&str] = &[
    "src",
    "core/src",
    "protocol/src",
    "server/src",
    "bindings/src",
];

const MAX_CODE_LINES: usize = 800;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// A unit-test module file (`tests.rs`) belongs with the tests.
fn is_test_file(path: &Path) -> bool {
    path.file_stem().is_some_and(|s| s == "tests")
}

/// The file's code without comments, string contents (raw and multi-line
/// strings included) and its `#[cfg(test)]` tail, one entry per line.
fn code_lines(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut in_block = 0usize;
    // Inside a string: `None` for a plain one, `Some(n)` for a raw one
    // closed by `"` and n `#`.
    let mut in_str: Option<Option<usize>> = None;
    for raw in text.lines() {
        if in_str.is_none() && in_block == 0 && raw.starts_with("#[cfg(test)]") {
            break;
        }
        let mut line = String::new();
        let chars: Vec<char> = raw.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            let next = chars.get(i + 1).copied();
            if in_block > 0 {
                if c == '*' && next == Some('/') {
                    in_block -= 1;
                    i += 2;
                } else if c == '/' && next == Some('*') {
                    in_block += 1;
                    i += 2;
                } else {
                    i += 1;
                }
                continue;
            }
            if let Some(kind) = in_str {
                match kind {
                    None if c == '\\' => i += 2,
                    None if c == '"' => {
                        in_str = None;
                        line.push('"');
                        i += 1;
                    }
                    Some(n)
                        if c == '"'
                            && chars[i + 1..].iter().take(n).filter(|h| **h == '#').count()
                                == n =>
                    {
                        in_str = None;
                        line.push('"');
                        i += 1 + n;
                    }
                    _ => i += 1,
                }
                continue;
            }
            let after_ident = i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_');
            match (c, next) {
                ('/', Some('/')) => break,
                ('/', Some('*')) => {
                    in_block += 1;
                    i += 2;
                }
                ('r', Some('"' | '#')) if !after_ident => {
                    let hashes = chars[i + 1..].iter().take_while(|h| **h == '#').count();
                    if chars.get(i + 1 + hashes) == Some(&'"') {
                        in_str = Some(Some(hashes));
                        line.push('"');
                        i += 2 + hashes;
                    } else {
                        line.push(c);
                        i += 1;
                    }
                }
                ('"', _) => {
                    // A char literal '"' is not a string's start.
                    if i > 0 && chars[i - 1] == '\'' {
                        line.push(c);
                    } else {
                        in_str = Some(None);
                        line.push('"');
                    }
                    i += 1;
                }
                _ => {
                    line.push(c);
                    i += 1;
                }
            }
        }
        lines.push(line);
    }
    lines
}

fn count_code(text: &str) -> usize {
    code_lines(text)
        .iter()
        .filter(|l| !l.trim().is_empty())
        .count()
}

#[test]
fn no_source_file_is_over_800_lines_of_code() {
    let mut files = Vec::new();
    for dir in CRATES {
        rust_files(&root().join(dir), &mut files);
    }
    let mut checked = 0;
    let mut over = Vec::new();
    for file in files.iter().filter(|f| !is_test_file(f)) {
        let text = std::fs::read_to_string(file).expect("read source");
        let n = count_code(&text);
        checked += n;
        if n > MAX_CODE_LINES {
            over.push(format!("{} ({n} lines of code)", file.display()));
        }
    }
    assert!(checked > 20_000, "read only {checked} lines of code");
    assert!(
        over.is_empty(),
        "over {MAX_CODE_LINES} lines of code:\n{}",
        over.join("\n")
    );
}

/// A crate's modules by path (`store::page`) and the file of each; the
/// crate root itself is left out (its re-exports are not a module's code).
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut out = BTreeMap::new();
    for file in files.into_iter().filter(|f| !is_test_file(f)) {
        let rel = file.strip_prefix(src).expect("under src");
        let mut parts: Vec<String> = rel
            .with_extension("")
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if parts.last().is_some_and(|p| p == "mod") {
            parts.pop();
        }
        let name = parts.join("::");
        if matches!(name.as_str(), "lib" | "main") || name.starts_with("bin::") {
            continue;
        }
        out.insert(name, file);
    }
    out
}

/// The path segments that follow `prefix` at every place in `code`,
/// expanding one level of `{a, b::c}` groups.
fn paths_after(code: &str, prefix: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find(prefix) {
        let before = rest[..at].chars().last();
        rest = &rest[at + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut end = 0;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            end = i;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let mut item = String::new();
            let mut depth = 0;
            for c in group[..end].chars().chain([',']) {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.push(segments(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 {
                    item.push(c);
                }
            }
        } else {
            out.push(segments(rest));
        }
    }
    out
}

fn segments(text: &str) -> Vec<String> {
    let mut segs = Vec::new();
    let mut rest = text.trim_start();
    loop {
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if end == 0 {
            break;
        }
        segs.push(rest[..end].to_owned());
        rest = &rest[end..];
        match rest.strip_prefix("::") {
            Some(r) if !r.starts_with('{') && !r.starts_with('*') => rest = r,
            _ => break,
        }
    }
    segs
}

/// Whether `child::` occurs as a path's first segment (not after `::`).
fn code_mentions_bare(code: &str, child: &str) -> bool {
    let needle = format!("{child}::");
    code.match_indices(&needle).any(|(at, _)| {
        let before = &code[..at];
        !before.ends_with("::")
            && !before
                .chars()
                .last()
                .is_some_and(|c| c.is_alphanumeric() || c == '_')
    })
}

/// The module that a path names: the longest known module it starts with.
fn resolve(known: &BTreeMap<String, PathBuf>, segs: &[String]) -> Option<String> {
    (1..=segs.len())
        .rev()
        .map(|n| segs[..n].join("::"))
        .find(|m| known.contains_key(m))
}

/// Edges `from -> to` with the file that makes each.
fn import_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let known = modules(src);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, file) in &known {
        let text = std::fs::read_to_string(file).expect("read source");
        let code = code_lines(&text).join("\n");
        let parent: Vec<String> = name.split("::").map(str::to_owned).collect();
        let mut targets = Vec::new();
        for segs in paths_after(&code, "crate::") {
            targets.push(segs);
        }
        for segs in paths_after(&code, "super::") {
            let mut full = parent[..parent.len() - 1].to_vec();
            full.extend(segs);
            targets.push(full);
        }
        for segs in paths_after(&code, "self::") {
            let mut full = parent.clone();
            full.extend(segs);
            targets.push(full);
        }
        // A module naming its own child by a bare path (`page::apply`).
        for child in known.keys().filter_map(|m| {
            m.strip_prefix(name.as_str())
                .and_then(|r| r.strip_prefix("::"))
                .filter(|r| !r.contains("::"))
        }) {
            for segs in paths_after(&code, &format!("{child}::")) {
                if code_mentions_bare(&code, child) {
                    let mut full = parent.clone();
                    full.push(child.to_owned());
                    full.extend(segs);
                    targets.push(full);
                    break;
                }
            }
        }
        let edges = graph.entry(name.clone()).or_default();
        for segs in targets {
            if let Some(to) = resolve(&known, &segs)
                && &to != name
            {
                edges.insert(to);
            }
        }
    }
    graph
}

/// Strongly connected components with more than one module (Tarjan).
fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        let graph = s.graph;
        for w in graph.get(v).into_iter().flatten() {
            if !s.index.contains_key(w.as_str()) {
                visit(s, w);
                let lw = s.low[w.as_str()];
                let lv = s.low[v];
                s.low.insert(v, lv.min(lw));
            } else if s.on_stack.contains(w.as_str()) {
                let iw = s.index[w.as_str()];
                let lv = s.low[v];
                s.low.insert(v, lv.min(iw));
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                comp.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                s.out.push(comp);
            }
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

#[test]
fn the_cycle_finder_finds_a_planted_circle() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec!["a"]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.into_iter().map(str::to_owned).collect()))
    .collect();
    assert_eq!(circles(&graph), vec![vec!["a", "b", "c"]]);
    let parsed = paths_after("use crate::{store::page::{A, B}, value::Value};", "crate::");
    assert_eq!(
        parsed,
        vec![
            vec!["store".to_owned(), "page".to_owned()],
            vec!["value".to_owned(), "Value".to_owned()]
        ]
    );
}

#[test]
fn no_crate_has_a_circle_of_imports() {
    let mut edges = 0;
    let mut found = Vec::new();
    for dir in CRATES {
        let src = root().join(dir);
        if !src.exists() {
            continue;
        }
        let graph = import_graph(&src);
        edges += graph.values().map(BTreeSet::len).sum::<usize>();
        for circle in circles(&graph) {
            let detail: Vec<String> = circle
                .iter()
                .map(|m| {
                    let to: Vec<&str> = graph[m]
                        .iter()
                        .filter(|t| circle.contains(t))
                        .map(String::as_str)
                        .collect();
                    format!("{m} -> {}", to.join(", "))
                })
                .collect();
            found.push(format!("{dir}: {}", detail.join("; ")));
        }
    }
    assert!(edges > 100, "found only {edges} imports between modules");
    assert!(
        found.is_empty(),
        "circles of imports:\n{}",
        found.join("\n")
    );
}

/// Lines that say something: at least three letters or digits (a lone
/// `}` or `)?;` is shape, not code worth comparing).
fn telling(line: &str) -> bool {
    line.chars().filter(|c| c.is_alphanumeric()).count() >= 3
}

/// How many telling lines in a row make a copied block.
const COPY_LINES: usize = 8;

#[test]
fn no_block_of_code_stands_in_two_places() {
    let mut places: BTreeMap<String, Vec<(PathBuf, usize)>> = BTreeMap::new();
    let mut read = 0;
    for dir in CRATES {
        let mut files = Vec::new();
        rust_files(&root().join(dir), &mut files);
        for file in files.iter().filter(|f| !is_test_file(f)) {
            let text = std::fs::read_to_string(file).expect("read source");
            let lines: Vec<(usize, String)> = code_lines(&text)
                .into_iter()
                .enumerate()
                .map(|(i, l)| (i + 1, l.split_whitespace().collect::<Vec<_>>().join(" ")))
                .filter(|(_, l)| telling(l))
                .collect();
            read += lines.len();
            for window in lines.windows(COPY_LINES) {
                let key: Vec<&str> = window.iter().map(|(_, l)| l.as_str()).collect();
                places
                    .entry(key.join("\n"))
                    .or_default()
                    .push((file.clone(), window[0].0));
            }
        }
    }
    assert!(read > 20_000, "read only {read} telling lines");
    // One report per pair of places, at the first window they share.
    let mut pairs: BTreeMap<(String, String), (usize, usize)> = BTreeMap::new();
    for spots in places.values().filter(|s| s.len() > 1) {
        for (i, a) in spots.iter().enumerate() {
            for b in &spots[i + 1..] {
                if a.0 == b.0 && a.1.abs_diff(b.1) < COPY_LINES {
                    continue;
                }
                let key = (a.0.display().to_string(), b.0.display().to_string());
                let first = pairs.entry(key).or_insert((a.1, b.1));
                *first = (first.0.min(a.1), first.1.min(b.1));
            }
        }
    }
    let found: Vec<String> = pairs
        .iter()
        .map(|((a, b), (la, lb))| format!("{a}:{la} ~ {b}:{lb}"))
        .collect();
    assert!(
        found.is_empty(),
        "{COPY_LINES} or more lines of code stand in two places:\n{}",
        found.join("\n")
    );
}

#[test]
fn strings_and_comments_are_not_code() {
    let text = "let a = r#\"\nSELECT \"x\"\nFROM t\n\"#;\n// use crate::b;\nlet s = \"use crate::c;\nstill a string\";\n/* crate::d */ let e = 1;\n#[cfg(test)]\nmod tests {}\n";
    let lines = code_lines(text);
    assert_eq!(
        lines,
        vec![
            "let a = \"",
            "",
            "",
            "\";",
            "",
            "let s = \"",
            "\";",
            " let e = 1;"
        ]
    );
    assert_eq!(count_code(text), 5);
    assert!(paths_after(&lines.join("\n"), "crate::").is_empty());
}
