//! The documentation is checked against the code, so it cannot drift:
//!
//! - every configuration key of both daemons has a row in `docs/configuration.md`, with
//!   the default the code fills in, and every row there is a real key;
//! - every metric family `/metrics` serves is described in `docs/metrics.md`;
//! - the TOML snippets of `README.md`, pasted together per file, pass the real
//!   binaries' `check-config`.
//!
//! The key lists come from the two top-level `Config` types only, through TOML text: a
//! document with an unknown key at some place makes serde name every key allowed there
//! (`deny_unknown_fields`), and a document without it, deserialized and serialized
//! back, shows the defaults. So the test does not depend on how the config types are
//! split into structs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

const CONFIGURATION: &str = include_str!("../../docs/configuration.md");
const METRICS: &str = include_str!("../../docs/metrics.md");
const README: &str = include_str!("../../README.md");

/// The key inserted where a section's keys are asked for.
const UNKNOWN: &str = "zzz_not_a_key";

/// Which daemon's configuration a section belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Daemon {
    Agent,
    Collector,
}

/// One place of a configuration file whose keys the reference lists.
struct Section {
    daemon: Daemon,
    /// The keys' prefix in the reference (`ingest.`, `groups[].scale_up.`).
    prefix: &'static str,
    /// The qualifier written after keys that differ by kind (`webhook`), else "".
    kind: &'static str,
    /// A document holding what the section needs; `@` marks where its keys go.
    document: &'static str,
    /// Where the section's table is in that document (`groups.0.rules.0`), "" = the root.
    path: &'static str,
}

const fn section(
    daemon: Daemon,
    prefix: &'static str,
    kind: &'static str,
    document: &'static str,
    path: &'static str,
) -> Section {
    Section {
        daemon,
        prefix,
        kind,
        document,
        path,
    }
}

use Daemon::{Agent, Collector};

/// Every section of both files. A new struct-valued key needs a line here; a new plain
/// key needs nothing (it is found by itself and must then be documented).
const SECTIONS: &[Section] = &[
    section(Agent, "", "", "@\n", ""),
    section(
        Agent,
        "sources[].",
        "",
        "[[sources]]\nname = \"web\"\nkind = \"nginx\"\nurl = \"http://127.0.0.1/nginx_status\"\n@\n",
        "sources.0",
    ),
    section(Agent, "tls.", "", "[tls]\n@\n", "tls"),
    section(Collector, "", "", "@\n", ""),
    section(Collector, "listen.", "", "[listen]\n@\n", "listen"),
    section(Collector, "ingest.", "", "[ingest]\n@\n", "ingest"),
    section(Collector, "state.", "", "[state]\n@\n", "state"),
    section(Collector, "auth.", "", "[auth]\n@\n", "auth"),
    section(
        Collector,
        "auth.tokens[].",
        "",
        "[[auth.tokens]]\nvm = \"web-1\"\nfile = \"/etc/rally/tokens/web-1\"\n@\n",
        "auth.tokens.0",
    ),
    section(
        Collector,
        "tls.",
        "",
        "[tls]\ncert_file = \"/etc/rally/pki/server.pem\"\nkey_file = \"/etc/rally/pki/server.key\"\n@\n",
        "tls",
    ),
    section(
        Collector,
        "ha.",
        "",
        "[ha]\netcd = [\"http://10.0.0.11:2379\"]\n@\n",
        "ha",
    ),
    section(Collector, "api.", "", "[api]\n@\n", "api"),
    section(Collector, "engine.", "", "[engine]\n@\n", "engine"),
    section(
        Collector,
        "actuator.",
        "webhook",
        "[actuator]\nkind = \"webhook\"\nurl = \"https://hooks.example/resize\"\nsecret_file = \"/etc/rally/webhook.secret\"\n@\n",
        "actuator",
    ),
    section(
        Collector,
        "actuator.",
        "command",
        "[actuator]\nkind = \"command\"\nprogram = \"/usr/local/bin/resize\"\n@\n",
        "actuator",
    ),
    section(
        Collector,
        "actuator.",
        "oktawave",
        "[actuator]\nkind = \"oktawave\"\nclient_id = \"rally\"\nclient_secret_file = \"/etc/rally/s\"\nusername = \"ops@shop.example\"\npassword_file = \"/etc/rally/p\"\n@\n",
        "actuator",
    ),
    section(
        Collector,
        "actuator.",
        "log",
        "[actuator]\nkind = \"log\"\n@\n",
        "actuator",
    ),
    section(
        Collector,
        "groups[].",
        "",
        "[[groups]]\nname = \"web\"\n@\n",
        "groups.0",
    ),
    section(
        Collector,
        "groups[].ladder[].",
        "",
        "[[groups]]\nname = \"web\"\n[[groups.ladder]]\nname = \"M\"\n@\n",
        "groups.0.ladder.0",
    ),
    section(
        Collector,
        "groups[].rules[].",
        "",
        "[[groups]]\nname = \"web\"\n[[groups.rules]]\nmetric = \"cpu_utilization\"\nthreshold = 0.8\n@\n",
        "groups.0.rules.0",
    ),
    section(
        Collector,
        "groups[].targets[].",
        "",
        "[[groups]]\nname = \"web\"\n[[groups.targets]]\nmetric = \"cpu_utilization\"\n@\n",
        "groups.0.targets.0",
    ),
    section(
        Collector,
        "groups[].scale_up.",
        "",
        "[[groups]]\nname = \"web\"\n[groups.scale_up]\n@\n",
        "groups.0.scale_up",
    ),
    section(
        Collector,
        "groups[].scale_down.",
        "",
        "[[groups]]\nname = \"web\"\n[groups.scale_down]\n@\n",
        "groups.0.scale_down",
    ),
    section(
        Collector,
        "groups[].forecast.",
        "",
        "[[groups]]\nname = \"web\"\n[groups.forecast]\n@\n",
        "groups.0.forecast",
    ),
    section(
        Collector,
        "groups[].boosts[].",
        "",
        "[[groups]]\nname = \"web\"\n[[groups.boosts]]\nrung = \"L\"\nstart = \"2026-12-04T18:00\"\nend = \"2026-12-06T23:00\"\n@\n",
        "groups.0.boosts.0",
    ),
];

/// The error message of deserializing `document` as the daemon's configuration.
fn parse_error(daemon: Daemon, document: &str) -> Option<String> {
    match daemon {
        Agent => toml::from_str::<rally_agent::config::Config>(document)
            .err()
            .map(|e| e.message().to_owned()),
        Collector => toml::from_str::<rally_collector::config::Config>(document)
            .err()
            .map(|e| e.message().to_owned()),
    }
}

/// The daemon's configuration from `document`, serialized back: every default filled in.
fn with_defaults(daemon: Daemon, document: &str) -> toml::Value {
    let value = match daemon {
        Agent => toml::from_str::<rally_agent::config::Config>(document)
            .map_err(|e| e.to_string())
            .and_then(|c| toml::Value::try_from(c).map_err(|e| e.to_string())),
        Collector => toml::from_str::<rally_collector::config::Config>(document)
            .map_err(|e| e.to_string())
            .and_then(|c| toml::Value::try_from(c).map_err(|e| e.to_string())),
    };
    value.unwrap_or_else(|e| panic!("{daemon:?} document does not parse:\n{document}\n{e}"))
}

/// The keys serde allows in a section, from its "unknown field" message.
fn section_keys(s: &Section) -> Vec<String> {
    let document = s.document.replace('@', &format!("{UNKNOWN} = 1"));
    let message = parse_error(s.daemon, &document)
        .unwrap_or_else(|| panic!("`{UNKNOWN}` was accepted in:\n{document}"));
    assert!(
        message.contains(&format!("unknown field `{UNKNOWN}`")),
        "not an unknown-field error for {}: {message}",
        s.prefix
    );
    if message.contains("there are no fields") {
        return Vec::new();
    }
    let (_, expected) = message
        .split_once("expected")
        .unwrap_or_else(|| panic!("no key list in: {message}"));
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// The value at `path` (`groups.0.rules.0`) below `value`.
fn at<'a>(value: &'a toml::Value, path: &str) -> Option<&'a toml::Value> {
    path.split('.')
        .filter(|p| !p.is_empty())
        .try_fold(value, |v, part| match part.parse::<usize>() {
            Ok(i) => v.get(i),
            Err(_) => v.get(part),
        })
}

/// One row of the reference: key, the kind qualifier, and the default cell.
#[derive(Debug)]
struct Row {
    /// The daemon whose section (`## Agent`, `## Collector`) holds the row: both files
    /// have a `[tls]`.
    daemon: Daemon,
    key: String,
    kind: String,
    default: String,
}

/// The first `code span` of a Markdown table cell.
fn code_span(cell: &str) -> Option<&str> {
    cell.split('`')
        .nth(1)
        .filter(|_| cell.matches('`').count() >= 2)
}

/// Every row of every `| key | default | range | meaning |` table in `markdown`.
fn reference_rows(markdown: &str) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut in_table = false;
    let mut daemon = Agent;
    for (n, line) in markdown.lines().enumerate() {
        let line = line.trim();
        if line.starts_with("## Agent") {
            daemon = Agent;
        } else if line.starts_with("## Collector") {
            daemon = Collector;
        }
        if !line.starts_with('|') {
            in_table = false;
            continue;
        }
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        if !in_table {
            assert_eq!(
                cells,
                ["key", "default", "range", "meaning"],
                "docs/configuration.md:{}: every table has the columns key, default, range, meaning",
                n + 1
            );
            in_table = true;
            continue;
        }
        if cells
            .iter()
            .all(|c| c.chars().all(|ch| ch == '-' || ch == ':'))
        {
            continue;
        }
        assert_eq!(
            cells.len(),
            4,
            "docs/configuration.md:{}: a row has four cells (write `|` as \"or\"): {line}",
            n + 1
        );
        let key = code_span(cells[0])
            .unwrap_or_else(|| panic!("docs/configuration.md:{}: key not in backticks", n + 1));
        let rest = cells[0].rsplit('`').next().unwrap_or_default().trim();
        let kind = rest
            .strip_prefix('(')
            .and_then(|r| r.strip_suffix(')'))
            .unwrap_or_default();
        rows.push(Row {
            daemon,
            key: key.to_owned(),
            kind: kind.to_owned(),
            default: cells[1].to_owned(),
        });
    }
    rows
}

/// Whether the documented default `doc` is the code's `code`: durations compare as
/// durations ("24h" is "1day"), numbers as numbers (0.80 is 0.8).
fn same_default(code: &toml::Value, doc: &toml::Value) -> bool {
    use toml::Value::{Array, Float, Integer, String};
    match (code, doc) {
        (String(a), String(b)) if a != b => {
            match (humantime::parse_duration(a), humantime::parse_duration(b)) {
                (Ok(a), Ok(b)) => a == b,
                _ => false,
            }
        }
        (Integer(a), Float(b)) | (Float(b), Integer(a)) => (*a as f64 - b).abs() < 1e-12,
        (Float(a), Float(b)) => (a - b).abs() < 1e-12,
        (Array(a), Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| same_default(a, b))
        }
        _ => code == doc,
    }
}

/// Whether a default can be written in one cell (not a table, nor a list of tables).
fn is_plain(value: &toml::Value) -> bool {
    match value {
        toml::Value::Table(_) => false,
        toml::Value::Array(items) => items.iter().all(is_plain),
        _ => true,
    }
}

#[test]
fn every_configuration_key_is_documented_with_its_default() {
    let rows = reference_rows(CONFIGURATION);
    assert!(rows.len() > 50, "only {} rows found", rows.len());
    let mut documented: BTreeMap<(Daemon, String, String), &Row> = BTreeMap::new();
    for row in &rows {
        let id = (row.daemon, row.key.clone(), row.kind.clone());
        assert!(
            documented.insert(id, row).is_none(),
            "`{}` ({}) is documented twice",
            row.key,
            row.kind
        );
    }

    let mut problems = Vec::new();
    // The actuator's tag is no field of any kind's struct.
    let mut expected: BTreeSet<(Daemon, String, String)> =
        BTreeSet::from([(Collector, "actuator.kind".to_owned(), String::new())]);
    for s in SECTIONS {
        let defaults = with_defaults(s.daemon, &s.document.replace('@', ""));
        let given: toml::Value =
            toml::from_str(&s.document.replace('@', "")).expect("section documents are TOML");
        let table = at(&defaults, s.path)
            .unwrap_or_else(|| panic!("{} not found at `{}`", s.prefix, s.path));
        let given = at(&given, s.path);
        for key in section_keys(s) {
            let full = format!("{}{key}", s.prefix);
            expected.insert((s.daemon, full.clone(), s.kind.to_owned()));
            let Some(row) = documented.get(&(s.daemon, full.clone(), s.kind.to_owned())) else {
                let kind = if s.kind.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", s.kind)
                };
                problems.push(format!("`{full}`{kind} is not in docs/configuration.md"));
                continue;
            };
            // A key the section's document had to give has no default to compare.
            if given.and_then(|g| g.get(&key)).is_some() {
                continue;
            }
            let Some(code) = table.get(&key).filter(|v| is_plain(v)) else {
                continue;
            };
            let doc = code_span(&row.default)
                .and_then(|d| toml::from_str::<toml::Table>(&format!("v = {d}")).ok())
                .and_then(|mut t| t.remove("v"));
            match doc {
                Some(doc) if same_default(code, &doc) => {}
                Some(doc) => problems.push(format!(
                    "`{full}`: documented default {doc}, the code's is {code}"
                )),
                None => problems.push(format!(
                    "`{full}`: the default cell {:?} has no TOML value in backticks; the code's is {code}",
                    row.default
                )),
            }
        }
    }
    for row in &rows {
        if !expected.contains(&(row.daemon, row.key.clone(), row.kind.clone())) {
            problems.push(format!(
                "docs/configuration.md documents `{}` ({}), which no configuration has",
                row.key, row.kind
            ));
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// Every metric family name the collector's sources declare, outside their tests.
fn metric_families() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut dirs = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("../collector/src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read collector/src") {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read a source file");
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            for piece in code.split("\"rally_").skip(1) {
                let name: String = piece
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if piece[name.len()..].starts_with('"') {
                    names.insert(format!("rally_{name}"));
                }
            }
        }
    }
    names
}

#[test]
fn every_metric_family_is_documented() {
    let families = metric_families();
    assert!(
        families.contains("rally_vm_up") && families.len() > 40,
        "metric names not found: {families:?}"
    );
    let missing: Vec<_> = families
        .iter()
        .filter(|name| !METRICS.contains(&format!("| `{name}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "not in docs/metrics.md's table: {missing:?}"
    );
}

/// The README's ```toml blocks with the line each starts on.
fn toml_blocks(markdown: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (n, line) in markdown.lines().enumerate() {
        match current.as_mut() {
            None if line.trim() == "```toml" => current = Some((n + 2, String::new())),
            None => {}
            Some(_) if line.trim() == "```" => blocks.extend(current.take()),
            Some((_, text)) => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    blocks
}

/// Points every `/etc/rally/...` path of `text` into `dir`, creating each file with a
/// token of its own (`check-config` reads secret files, and refuses shared tokens).
fn with_files_in(text: &str, dir: &Path) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("\"/etc/rally/") {
        out.push_str(&rest[..=i]);
        let after = &rest[i + 1..];
        let end = after.find('"').expect("a closed string");
        let relative = &after["/etc/rally/".len()..end];
        let file: PathBuf = dir.join(relative);
        std::fs::create_dir_all(file.parent().expect("a parent")).expect("create dirs");
        std::fs::write(&file, format!("readme-{}\n", relative.replace('/', "-")))
            .expect("write a secret file");
        out.push_str(&file.display().to_string());
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

#[test]
fn readme_snippets_pass_check_config_when_pasted_together() {
    // Each block names its file on its first line: `# agent.toml`, `# collector.toml`,
    // or a separate example such as `# collector.toml (Oktawave)`. A block that adds to
    // a file named before says so (`# collector.toml, continued`); the blocks of one file
    // are pasted together in README order.
    let mut files: Vec<(String, String)> = Vec::new();
    for (line, block) in toml_blocks(README) {
        let first = block.lines().next().unwrap_or_default().trim();
        let (marker, continued) = match first.strip_suffix(", continued") {
            Some(marker) => (marker.to_owned(), true),
            None => (first.to_owned(), false),
        };
        assert!(
            marker.starts_with("# agent.toml") || marker.starts_with("# collector.toml"),
            "README.md:{line}: a toml block starts with the file it belongs to \
             (`# agent.toml` or `# collector.toml`), not {marker:?}"
        );
        let known = files.iter_mut().find(|(m, _)| *m == marker);
        assert_eq!(
            known.is_some(),
            continued,
            "README.md:{line}: `{marker}, continued` adds to a file named before; \
             a file's first block says `{marker}` alone"
        );
        match known {
            Some((_, text)) => {
                // Keys before the first table header would land in the previous block's
                // last table once pasted.
                let first = block
                    .lines()
                    .map(str::trim)
                    .find(|l| !l.is_empty() && !l.starts_with('#'));
                assert!(
                    first.is_none_or(|l| l.starts_with('[')),
                    "README.md:{line}: a continued {marker} block must start with a [table], not {first:?}"
                );
                text.push_str(&block);
            }
            None => files.push((marker, block)),
        }
    }
    let markers: Vec<&str> = files.iter().map(|(m, _)| m.as_str()).collect();
    assert!(
        markers.contains(&"# agent.toml") && markers.contains(&"# collector.toml"),
        "README.md has no agent.toml or no collector.toml snippet: {markers:?}"
    );

    let dir = tempfile::tempdir().expect("temp dir");
    for (i, (marker, text)) in files.iter().enumerate() {
        let binary = if marker.starts_with("# agent.toml") {
            "rally-agent"
        } else {
            "rally-collector"
        };
        let secrets = dir.path().join(format!("etc-{i}"));
        let config = dir.path().join(format!("{i}.toml"));
        std::fs::write(&config, with_files_in(text, &secrets)).expect("write the config");
        let out = Command::new(rally_tests::bin::path(binary))
            .arg("--config")
            .arg(&config)
            .arg("check-config")
            .output()
            .expect("run check-config");
        assert!(
            out.status.success(),
            "{binary} check-config refuses README's {marker} snippets:\n{}{}\n--- pasted together:\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
