//! The shipped Prometheus rules (`packaging/prometheus/rally.rules.yml`): promtool
//! accepts them, their unit tests pass, every alert is tested firing and quiet, every
//! series they read exists, and `docs/prometheus.md` lists every alert and recorded
//! series. promtool (Debian package `prometheus`) must be installed: a missing one
//! fails these tests.

use rally_tests::packages::workspace_root;
use rally_tests::tool;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

const RULES: &str = include_str!("../../packaging/prometheus/rally.rules.yml");
const RULE_TESTS: &str = include_str!("../../packaging/prometheus/rally.rules.test.yml");
const METRICS_DOC: &str = include_str!("../../docs/metrics.md");
const PROMETHEUS_DOC: &str = include_str!("../../docs/prometheus.md");

fn rules_dir() -> PathBuf {
    workspace_root().join("packaging/prometheus")
}

/// Runs `promtool` with `args` in the rules' directory; panics with its output unless
/// it succeeds.
fn promtool(args: &[&str]) -> String {
    let promtool = tool::require("promtool", "prometheus");
    let out = Command::new(promtool)
        .args(args)
        .current_dir(rules_dir())
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {}:\n{text}", args.join(" "));
    text
}

/// The value of `key: value` on a YAML line, if the line holds that key (a list item's
/// dash allowed).
fn value_of<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let line = line.trim_start();
    let line = line.strip_prefix("- ").unwrap_or(line);
    line.strip_prefix(key)?.strip_prefix(':').map(str::trim)
}

/// The names given by `key` (`alert`, `record`) in the rules file, in order.
fn names(key: &str) -> Vec<String> {
    RULES
        .lines()
        .filter_map(|l| value_of(l, key))
        .map(str::to_owned)
        .collect()
}

/// Every `expr` of the rules file, inline or as a block scalar (`expr: |`).
fn expressions() -> Vec<String> {
    let lines: Vec<&str> = RULES.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(value) = value_of(line, "expr") else {
            continue;
        };
        if !value.starts_with('|') && !value.starts_with('>') {
            out.push(value.to_owned());
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let block: Vec<&str> = lines[i + 1..]
            .iter()
            .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
            .map(|l| l.trim())
            .collect();
        out.push(block.join("\n"));
    }
    out
}

/// The `rally_*` series names an expression reads: words starting with `rally_` that are
/// not part of a recorded name (`group:rally_vm_up:sum`).
fn rally_series(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = expr.as_bytes();
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let mut i = 0;
    while i < bytes.len() {
        if word(bytes[i]) {
            let start = i;
            while i < bytes.len() && word(bytes[i]) {
                i += 1;
            }
            let token = &expr[start..i];
            if token.starts_with("rally_") && !token.contains(':') {
                out.insert(token.to_owned());
            }
        } else {
            i += 1;
        }
    }
    out
}

/// The metric families `docs/metrics.md` documents (its tables' first column).
fn documented_metrics() -> BTreeSet<String> {
    METRICS_DOC
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn promtool_accepts_the_rules() {
    let out = promtool(&["check", "rules", "rally.rules.yml"]);
    let count = names("alert").len() + names("record").len();
    assert!(
        out.contains(&format!("SUCCESS: {count} rules found")),
        "promtool found another number of rules than the {count} alerts and records here:\n{out}"
    );
}

#[test]
fn promtool_unit_tests_of_the_rules_pass() {
    let out = promtool(&["test", "rules", "rally.rules.test.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn every_alert_is_tested_firing_and_quiet() {
    // In the unit tests each case names its alert (`alertname: X`) and then its
    // expected alerts: `exp_alerts: []` (quiet) or a list (firing).
    let mut cases: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in RULE_TESTS.lines() {
        if let Some(name) = value_of(line, "alertname") {
            current = Some(name.to_owned());
        } else if let Some(expected) = value_of(line, "exp_alerts") {
            let name = current
                .take()
                .unwrap_or_else(|| panic!("exp_alerts without an alertname: {line:?}"));
            let entry = cases.entry(name).or_default();
            if expected == "[]" {
                entry.1 += 1;
            } else {
                entry.0 += 1;
            }
        }
    }
    let alerts = names("alert");
    assert!(alerts.len() >= 10, "too few alerts found: {alerts:?}");
    for alert in &alerts {
        let (firing, quiet) = cases.get(alert).copied().unwrap_or_default();
        assert!(
            firing > 0 && quiet > 0,
            "{alert}: rally.rules.test.yml has {firing} firing and {quiet} quiet cases; \
             it needs at least one of each"
        );
    }
    for tested in cases.keys() {
        assert!(
            alerts.contains(tested),
            "rally.rules.test.yml tests {tested}, which rally.rules.yml does not define"
        );
    }
}

#[test]
fn rules_read_only_series_the_collector_serves() {
    let documented = documented_metrics();
    assert!(
        documented.contains("rally_vm_up"),
        "no metric in metrics.md"
    );
    let recorded: BTreeSet<String> = names("record").into_iter().collect();
    let exprs = expressions();
    assert_eq!(
        exprs.len(),
        names("alert").len() + recorded.len(),
        "an expression per rule"
    );
    for expr in &exprs {
        for series in rally_series(expr) {
            assert!(
                documented.contains(&series),
                "the rules read {series}, which docs/metrics.md (and so the collector) does \
                 not have:\n{expr}"
            );
        }
        // A recorded series read by an alert must be recorded here.
        for token in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')) {
            if token.contains(':') && token.contains("rally_") {
                assert!(
                    recorded.contains(token),
                    "{token} is read but not recorded:\n{expr}"
                );
            }
        }
    }
}

#[test]
fn docs_list_every_alert_and_recorded_series() {
    let rows: BTreeSet<String> = PROMETHEUS_DOC
        .lines()
        .filter_map(|l| l.strip_prefix("| `Rally"))
        .filter_map(|l| l.split('`').next())
        .map(|name| format!("Rally{name}"))
        .collect();
    let alerts: BTreeSet<String> = names("alert").into_iter().collect();
    assert_eq!(
        rows, alerts,
        "docs/prometheus.md's alert table and rally.rules.yml's alerts differ"
    );
    for record in names("record") {
        assert!(
            PROMETHEUS_DOC.contains(&format!("`{record}`")),
            "docs/prometheus.md does not describe the recorded series {record}"
        );
    }
}
