//! The collector's data flows one way: no top-level module imports one that imports it
//! back, directly or through others. This reads `src/**/*.rs`, builds the graph of
//! `crate::<module>` references between top-level modules (`src/engine.rs` and
//! `src/engine/**` are both `engine`) and fails on any cycle, printing it.
//!
//! The crate root (`lib.rs`) assembles the pieces and `main.rs` is the binary: neither
//! is a node.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("reading src") {
        let path = entry.expect("reading src").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to, or `None` for the crate roots.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).expect("file under src");
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_owned())
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The first path segment of every item of a `use` group, `{a, b::c, d::{e, f}}`,
/// given the text just after its `{`.
fn group_heads(text: &str, out: &mut BTreeSet<String>) {
    let mut depth = 0;
    let mut at_item_start = true;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return,
            '}' => depth -= 1,
            ',' if depth == 0 => at_item_start = true,
            c if at_item_start && depth == 0 && is_ident(c) => {
                let end = text[i..]
                    .find(|c: char| !is_ident(c))
                    .map_or(text.len(), |n| i + n);
                out.insert(text[i..end].to_owned());
                at_item_start = false;
                while chars.peek().is_some_and(|&(j, _)| j < end) {
                    chars.next();
                }
            }
            _ => {}
        }
    }
}

/// The top-level modules a file's code names through `crate::` (comments left out).
fn references(source: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let code: String = source
        .lines()
        .map(|line| line.find("//").map_or(line, |i| &line[..i]))
        .collect::<Vec<_>>()
        .join("\n");
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        let preceded_by_ident = rest[..i].chars().next_back().is_some_and(is_ident);
        rest = &rest[i + "crate::".len()..];
        if preceded_by_ident {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            group_heads(group, &mut out);
        } else {
            let end = rest.find(|c: char| !is_ident(c)).unwrap_or(rest.len());
            out.insert(rest[..end].to_owned());
        }
    }
    out
}

fn graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeSet<String> = files.iter().filter_map(|f| module_of(src, f)).collect();
    let mut graph = Graph::new();
    for file in &files {
        let Some(from) = module_of(src, file) else {
            continue;
        };
        let source = std::fs::read_to_string(file).expect("reading a source file");
        let edges = graph.entry(from.clone()).or_default();
        for to in references(&source) {
            // Items of the crate root (`crate::Collector`) are not modules.
            if to != from && modules.contains(&to) {
                edges.insert(to);
            }
        }
    }
    graph
}

/// One cycle through each group of modules that reach each other, as `a -> b -> a`,
/// followed by the whole group when it is larger than the cycle.
fn cycles(graph: &Graph) -> Vec<String> {
    let reaches = |from: &str, to: &str| {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.to_owned()];
        while let Some(m) = stack.pop() {
            for next in graph.get(&m).into_iter().flatten() {
                if next == to {
                    return true;
                }
                if seen.insert(next.clone()) {
                    stack.push(next.clone());
                }
            }
        }
        false
    };
    let mut reported = BTreeSet::new();
    let mut found = Vec::new();
    for start in graph.keys() {
        if reported.contains(start) || !reaches(start, start) {
            continue;
        }
        // Walk from `start`, always to a module that leads back to it, until back.
        let mut path = vec![start.clone()];
        let mut at = start.clone();
        loop {
            let next = graph[&at]
                .iter()
                .find(|n| *n == start || (!path.contains(n) && reaches(n, start)))
                .expect("a module on a cycle has a successor on it")
                .clone();
            if next == *start {
                break;
            }
            path.push(next.clone());
            at = next;
        }
        let group: Vec<String> = graph
            .keys()
            .filter(|m| reaches(start, m) && reaches(m, start))
            .cloned()
            .collect();
        reported.extend(group.iter().cloned());
        let mut cycle = path.join(" -> ") + " -> " + start;
        if group.len() > path.len() {
            cycle += &format!(" (together with the others of {})", group.join(", "));
        }
        found.push(cycle);
    }
    found
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = graph(&src);
    assert!(
        graph.contains_key("engine") && graph["engine"].contains("store"),
        "the graph was not read: {graph:#?}"
    );
    let cycles = cycles(&graph);
    assert!(
        cycles.is_empty(),
        "modules that import each other (one of them is doing the other's job):\n  {}",
        cycles.join("\n  ")
    );
}

#[test]
fn the_reader_finds_paths_and_groups_and_skips_comments() {
    let refs = references(
        "use crate::config::Config;\nuse crate::{fleet::Fleet, store, engine::{a, b}};\n\
         // crate::metrics in a comment\nlet x = crate::clock::now(); my_crate::http::x();\n",
    );
    let want: BTreeSet<String> = ["clock", "config", "engine", "fleet", "store"]
        .map(String::from)
        .into();
    assert_eq!(refs, want);
    let mut g = Graph::new();
    for (a, b) in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")] {
        g.entry(a.into()).or_default().insert(b.into());
    }
    assert_eq!(cycles(&g), ["a -> b -> c -> a"]);
    g.get_mut("c").map(|e| e.remove("a"));
    assert!(cycles(&g).is_empty());
}
