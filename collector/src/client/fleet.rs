//! `rally-collector status` and `rally-collector vms`: the fleet as text for a terminal,
//! from the answers of `/api/v1/groups` and `/api/v1/vms`. Fields an older collector
//! does not send read as "–", never as an error. Colours come from [`Paint`], which the
//! caller turns on only for a terminal ([`crate::cli::colour_wanted`]).

use std::fmt::Write as _;

use serde_json::Value;

use super::{group_state, in_flight, last_decision, skip_text, zone};

/// How a piece of text reads: fine, worth a look, or wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    /// Working as it should (green).
    Good,
    /// Worth a look: paused, a rule holding (yellow).
    Warn,
    /// Wrong: stale, circuit open, a rule fired (red).
    Bad,
    /// Absent or quiet (dim).
    Dim,
}

/// Writes text with ANSI colours, or plain when colours are off.
#[derive(Debug, Clone, Copy)]
pub struct Paint {
    colour: bool,
}

impl Paint {
    /// Colours on or off.
    pub fn new(colour: bool) -> Self {
        Self { colour }
    }

    /// `text` in `tone` (as is when colours are off or there is no tone).
    pub fn paint(&self, text: &str, tone: Option<Tone>) -> String {
        let code = match (self.colour, tone) {
            (true, Some(Tone::Good)) => "32",
            (true, Some(Tone::Warn)) => "33",
            (true, Some(Tone::Bad)) => "1;31",
            (true, Some(Tone::Dim)) => "2",
            _ => return text.to_owned(),
        };
        format!("\x1b[{code}m{text}\x1b[0m")
    }
}

/// One cell of a table.
#[derive(Debug, Clone)]
struct Cell {
    text: String,
    tone: Option<Tone>,
}

impl Cell {
    fn plain(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            tone: None,
        }
    }

    fn toned(text: impl Into<String>, tone: Tone) -> Self {
        Self {
            text: text.into(),
            tone: Some(tone),
        }
    }

    /// "–", dimmed, when `text` is `None`.
    fn or_dash(text: Option<String>) -> Self {
        match text {
            Some(text) => Self::plain(text),
            None => Self::toned("–", Tone::Dim),
        }
    }
}

/// Columns padded to their widest cell (counted in characters, before colours are
/// added, so colour codes never break the alignment), each line indented.
fn table(header: &[&str], rows: &[Vec<Cell>], indent: &str, paint: &Paint) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.text.chars().count());
            }
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: Vec<(String, Option<Tone>)>| {
        out.push_str(indent);
        let last = cells.len().saturating_sub(1);
        for (i, (text, tone)) in cells.into_iter().enumerate() {
            let pad = widths[i].saturating_sub(text.chars().count());
            out.push_str(&paint.paint(&text, tone));
            if i < last {
                out.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push('\n');
    };
    line(
        &mut out,
        header
            .iter()
            .map(|h| (h.to_string(), Some(Tone::Dim)))
            .collect(),
    );
    for row in rows {
        line(
            &mut out,
            row.iter().map(|c| (c.text.clone(), c.tone)).collect(),
        );
    }
    out
}

fn percent(v: Option<f64>) -> Option<String> {
    v.map(|v| format!("{:.1} %", v * 100.0))
}

fn gib(v: Option<f64>) -> Option<String> {
    v.map(|v| format!("{:.1} GiB", v / (1024.0 * 1024.0 * 1024.0)))
}

fn age(seconds: Option<f64>) -> Option<String> {
    let s = seconds?.max(0.0) as u64;
    Some(match s {
        0..120 => format!("{s} s ago"),
        120..7200 => format!("{} min ago", s / 60),
        _ => format!("{} h ago", s / 3600),
    })
}

/// A whole number of seconds as "45 s", "3 min 5 s" or "2 h 10 min".
fn span(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}

/// A figure as the rules compare it: ratios and small values with two decimals.
fn figure(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// The VM's memory in use now (1 − available / total, from the latest report).
fn memory_used(vm: &Value) -> Option<f64> {
    let latest = &vm["latest"];
    let total = latest["memory_total_bytes"].as_f64()?;
    let available = latest["memory_available_bytes"].as_f64()?;
    (total > 0.0).then(|| 1.0 - available / total)
}

/// The VM's request rate: the sum of its sources that count for themselves (a source
/// `counted_by` another is already in that one's rate), `None` without a source.
fn requests_per_second(vm: &Value) -> Option<f64> {
    let sources = vm["sources"].as_array()?;
    let counted: Vec<f64> = sources
        .iter()
        .filter(|s| s["counted_by"].is_null())
        .filter_map(|s| s["requests_per_second"].as_f64())
        .collect();
    (!counted.is_empty()).then(|| counted.iter().sum())
}

/// "up" or "stale", and the capacity the guest left offline.
fn vm_state(vm: &Value) -> Cell {
    let offline_cpus = vm["size"]["offline_cpus"].as_u64().unwrap_or(0);
    let offline_memory = vm["size"]["offline_memory_bytes"].as_f64().unwrap_or(0.0);
    let offline = if offline_cpus > 0 || offline_memory > 0.0 {
        format!(
            ", offline: {offline_cpus} CPUs, {}",
            gib(Some(offline_memory)).unwrap_or_default()
        )
    } else {
        String::new()
    };
    // A configured member the collector never heard from has no report age.
    let reported = !vm["last_report_age_seconds"].is_null();
    match vm["fresh"].as_bool() {
        Some(true) if offline.is_empty() => Cell::toned("up", Tone::Good),
        Some(true) => Cell::toned(format!("up{offline}"), Tone::Warn),
        Some(false) if reported => Cell::toned(format!("stale{offline}"), Tone::Bad),
        _ => Cell::toned("never reported", Tone::Bad),
    }
}

fn rung(vm: &Value) -> Cell {
    Cell::or_dash(vm["rung"].as_str().map(str::to_owned))
}

/// The table of `vms`: one row per VM of `/api/v1/vms`.
pub fn format_vms(vms: &Value, paint: &Paint) -> String {
    let rows: Vec<Vec<Cell>> = vms["vms"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|vm| {
            vec![
                Cell::plain(vm["vm"].as_str().unwrap_or("?")),
                Cell::plain(vm["group"].as_str().unwrap_or("?")),
                rung(vm),
                vm_state(vm),
                Cell::or_dash(age(vm["last_report_age_seconds"].as_f64())),
                Cell::or_dash(vm["size"]["vcpus"].as_u64().map(|n| n.to_string())),
                Cell::or_dash(gib(vm["size"]["memory_bytes"].as_f64())),
                Cell::or_dash(percent(vm["latest"]["cpu_utilization"].as_f64())),
                Cell::or_dash(percent(memory_used(vm))),
                Cell::or_dash(requests_per_second(vm).map(|r| format!("{r:.1}/s"))),
                Cell::or_dash(vm["agent_version"].as_str().map(str::to_owned)),
            ]
        })
        .collect();
    if rows.is_empty() {
        return "no VMs\n".to_owned();
    }
    table(
        &[
            "VM",
            "group",
            "rung",
            "state",
            "last report",
            "vCPUs",
            "memory",
            "CPU",
            "mem used",
            "requests",
            "agent",
        ],
        &rows,
        "",
        paint,
    )
}

/// The group's state word, toned.
fn group_state_cell(g: &Value) -> Cell {
    let state = group_state(g);
    let tone = if g["resizes"] != true {
        Tone::Dim
    } else if g["circuit_open"] == true {
        Tone::Bad
    } else if g["paused"] == true {
        Tone::Warn
    } else {
        Tone::Good
    };
    Cell::toned(state, tone)
}

/// What a rule reads on one member: its value and whether it holds or fired.
fn rule_row(vm: &str, r: &Value) -> Vec<Cell> {
    let rule = format!(
        "{} {} {} {}",
        r["metric"].as_str().unwrap_or("?"),
        r["window"].as_str().unwrap_or("?"),
        r["comparison"].as_str().unwrap_or("?"),
        r["threshold"]
            .as_f64()
            .map_or_else(|| "?".to_owned(), figure),
    );
    let held = r["held_seconds"].as_f64();
    let state = if r["firing"] == true {
        Cell::toned(
            match held {
                Some(h) => format!("fired (held {})", span(h)),
                None => "fired".to_owned(),
            },
            Tone::Bad,
        )
    } else if let Some(h) = held {
        Cell::toned(
            format!(
                "holding {} of {}",
                span(h),
                span(r["for_seconds"].as_f64().unwrap_or(0.0))
            ),
            Tone::Warn,
        )
    } else {
        Cell::toned("not holding", Tone::Dim)
    };
    vec![
        Cell::plain(vm),
        Cell::plain(rule),
        Cell::or_dash(r["value"].as_f64().map(figure)),
        state,
    ]
}

/// The first line of `rally-collector status` with `[ha]`: who this collector is in
/// the election and who leads (empty without `[ha]`).
pub fn format_leader(leader: &Value) -> String {
    if leader["ha"] != true {
        return String::new();
    }
    let name = leader["name"].as_str().unwrap_or("?");
    let lease = if leader["lease_healthy"] == true {
        "lease healthy"
    } else {
        "lease NOT renewed"
    };
    let token = leader["fencing_token"].as_u64().unwrap_or_default();
    match leader["role"].as_str() {
        Some("leader") => format!("collector {name}: leader (fencing token {token}, {lease})\n"),
        role => {
            let l = &leader["leader"];
            let who = match l["name"].as_str() {
                Some(n) => format!("{n} at {}", l["url"].as_str().unwrap_or("?")),
                None => "none (actuation paused)".to_owned(),
            };
            format!(
                "collector {name}: {}; leader: {who} (fencing token {token}, {lease})\n",
                role.unwrap_or("?")
            )
        }
    }
}

/// The picture of `status`: the fleet in one line, then each group (its state, the
/// resize in flight, the last decision, its members' rungs, CPU and memory, its rules
/// on each member, why members wait), then the VMs no group names.
pub fn format_status(groups: &Value, vms: &Value, paint: &Paint) -> String {
    let vms: &[Value] = vms["vms"].as_array().map_or(&[], Vec::as_slice);
    let groups: &[Value] = groups["groups"].as_array().map_or(&[], Vec::as_slice);
    let fresh = vms.iter().filter(|v| v["fresh"] == true).count();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "fleet: {} VMs, {} fresh, {} stale; {} groups",
        vms.len(),
        paint.paint(&fresh.to_string(), Some(Tone::Good)),
        paint.paint(
            &(vms.len() - fresh).to_string(),
            (vms.len() > fresh).then_some(Tone::Bad)
        ),
        groups.len()
    );
    for g in groups {
        let name = g["group"].as_str().unwrap_or("?");
        let tz = zone(&g["timezone"]);
        let state = group_state_cell(g);
        let _ = writeln!(
            out,
            "\ngroup {}: {}{}",
            name,
            paint.paint(&state.text, state.tone),
            if g["dry_run"] == true && g["resizes"] == true {
                ", dry-run"
            } else {
                ""
            }
        );
        if g["resizes"] == true {
            let failures = g["consecutive_failures"].as_u64().unwrap_or(0);
            let _ = writeln!(
                out,
                "  in flight: {}; failed in a row: {}",
                in_flight(&g["in_flight"], tz),
                paint.paint(&failures.to_string(), (failures > 0).then_some(Tone::Warn))
            );
            let _ = writeln!(
                out,
                "  last decision: {}",
                last_decision(&g["last_decision"], tz)
            );
        }
        let members: Vec<&str> = g["members"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let now = |vm: &str| {
            g["vms"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|m| m["vm"] == vm)
        };
        let rows: Vec<Vec<Cell>> = members
            .iter()
            .map(|&id| {
                let vm = vms.iter().find(|v| v["vm"] == id).unwrap_or(&Value::Null);
                let rung = now(id).map_or_else(|| rung(vm), rung);
                vec![
                    Cell::plain(id),
                    rung,
                    vm_state(vm),
                    Cell::or_dash(age(vm["last_report_age_seconds"].as_f64())),
                    Cell::or_dash(percent(vm["latest"]["cpu_utilization"].as_f64())),
                    Cell::or_dash(percent(memory_used(vm))),
                ]
            })
            .collect();
        if rows.is_empty() {
            out.push_str("  no members\n");
        } else {
            out.push_str(&table(
                &["VM", "rung", "state", "last report", "CPU", "mem used"],
                &rows,
                "  ",
                paint,
            ));
        }
        let rules: Vec<Vec<Cell>> = members
            .iter()
            .filter_map(|&id| Some((id, now(id)?)))
            .flat_map(|(id, m)| {
                m["rules"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(move |r| rule_row(id, r))
            })
            .collect();
        if !rules.is_empty() {
            out.push_str("  rules:\n");
            out.push_str(&table(
                &["VM", "rule", "value", "state"],
                &rules,
                "    ",
                paint,
            ));
        }
        let skips: Vec<String> = g["skips"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|skip| {
                let reason = skip_text(skip, tz);
                match skip["vm"].as_str() {
                    Some(vm) => format!("{vm}: {reason}"),
                    None => reason,
                }
            })
            .collect();
        if !skips.is_empty() {
            out.push_str("  waiting:\n");
            for skip in skips {
                let _ = writeln!(out, "    {skip}");
            }
        }
    }
    // VMs of no configured group (`ungrouped`, or a group removed from the config).
    let grouped = |vm: &Value| groups.iter().any(|g| g["group"] == vm["group"]);
    let others: Vec<Vec<Cell>> = vms
        .iter()
        .filter(|vm| !grouped(vm))
        .map(|vm| {
            vec![
                Cell::plain(vm["vm"].as_str().unwrap_or("?")),
                Cell::plain(vm["group"].as_str().unwrap_or("?")),
                vm_state(vm),
                Cell::or_dash(age(vm["last_report_age_seconds"].as_f64())),
                Cell::or_dash(percent(vm["latest"]["cpu_utilization"].as_f64())),
                Cell::or_dash(percent(memory_used(vm))),
            ]
        })
        .collect();
    if !others.is_empty() {
        out.push_str("\nin no configured group:\n");
        out.push_str(&table(
            &["VM", "group", "state", "last report", "CPU", "mem used"],
            &others,
            "  ",
            paint,
        ));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use serde_json::json;

    fn vms() -> Value {
        json!({"vms": [
            {
                "vm": "web-1", "group": "web", "fresh": true, "rung": "M", "rung_index": 0,
                "last_report_age_seconds": 2.4, "agent_version": "0.1.0",
                "size": {"vcpus": 2, "memory_bytes": 4294967296u64, "offline_cpus": 0, "offline_memory_bytes": 0},
                "latest": {"cpu_utilization": 0.123, "memory_total_bytes": 4294967296u64, "memory_available_bytes": 3221225472u64},
                "sources": [
                    {"name": "nginx", "counted_by": null, "requests_per_second": 40.0},
                    {"name": "log", "counted_by": "nginx", "requests_per_second": 40.0},
                ],
            },
            {
                "vm": "web-2", "group": "web", "fresh": false, "rung": null,
                "last_report_age_seconds": 300.0,
                "size": {"vcpus": 4, "memory_bytes": 8589934592u64, "offline_cpus": 2, "offline_memory_bytes": 0},
                "latest": null, "sources": [],
            },
            {"vm": "cache-1", "group": "ungrouped", "fresh": true, "last_report_age_seconds": 1.0},
        ]})
    }

    fn groups() -> Value {
        json!({"groups": [{
            "group": "web", "timezone": "Europe/Warsaw", "members": ["web-1", "web-2", "web-3"],
            "resizes": true, "dry_run": true, "paused": false, "circuit_open": true,
            "consecutive_failures": 3, "in_flight": null,
            "last_decision": {"vm": "web-1", "direction": "up", "from": "M", "to": "L",
                              "created_at": "2026-12-04T18:02:00Z", "dry_run": true},
            "skips": [{"vm": "web-2", "kind": "stale", "reason": "no report for 300 s"}],
            "vms": [
                {"vm": "web-1", "rung": "M", "rung_index": 0, "rules": [
                    {"rule": 0, "metric": "cpu_utilization", "window": "1m", "comparison": ">=",
                     "threshold": 0.8, "for_seconds": 180, "value": 0.912, "held_seconds": 45.2, "firing": false},
                ]},
                {"vm": "web-2", "rung": null, "rung_index": null, "rules": [
                    {"rule": 0, "metric": "cpu_utilization", "window": "1m", "comparison": ">=",
                     "threshold": 0.8, "for_seconds": 180, "value": null, "held_seconds": 200.0, "firing": true},
                ]},
            ],
        }]})
    }

    #[test]
    fn vms_read_as_an_aligned_table() {
        let out = format_vms(&vms(), &Paint::new(false));
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4, "{out}");
        assert!(
            lines[0].starts_with("VM       group      rung  state"),
            "{out}"
        );
        assert!(
            lines[1].starts_with("web-1    web        M     up  "),
            "{out}"
        );
        // The request rate counts nginx once, not the log it also counts.
        assert!(
            lines[1].contains("12.3 %  25.0 %    40.0/s    0.1.0"),
            "{out}"
        );
        assert!(
            lines[2].contains("stale, offline: 2 CPUs, 0.0 GiB"),
            "{out}"
        );
        assert!(lines[2].contains("5 min ago"), "{out}");
        // Every column starts at the same place on every line.
        let state_at = lines[0].find("state").unwrap();
        for line in &lines[1..] {
            assert_ne!(line.as_bytes()[state_at - 1], b'?', "{out}");
            assert_eq!(&line[state_at - 2..state_at], "  ", "{out}");
        }
        assert!(!out.contains('\x1b'), "no colour when off: {out}");
    }

    #[test]
    fn colours_wrap_the_text_without_moving_the_columns() {
        let plain = format_vms(&vms(), &Paint::new(false));
        let coloured = format_vms(&vms(), &Paint::new(true));
        assert!(coloured.contains("\x1b[32mup\x1b[0m"), "{coloured}");
        assert!(coloured.contains("\x1b[1;31mstale"), "{coloured}");
        let strip = |s: &str| {
            let mut out = String::new();
            let mut rest = s;
            while let Some(i) = rest.find('\x1b') {
                out.push_str(&rest[..i]);
                rest = &rest[i + rest[i..].find('m').unwrap() + 1..];
            }
            out.push_str(rest);
            out
        };
        assert_eq!(strip(&coloured), plain);
    }

    #[test]
    fn status_shows_each_group_its_members_rules_and_why_they_wait() {
        let out = format_status(&groups(), &vms(), &Paint::new(false));
        assert!(
            out.starts_with("fleet: 3 VMs, 2 fresh, 1 stale; 1 groups\n\ngroup web: CIRCUIT OPEN (resume to close), dry-run\n"),
            "{out}"
        );
        assert!(
            out.contains("  in flight: none; failed in a row: 3\n"),
            "{out}"
        );
        assert!(
            out.contains(
                "  last decision: web-1 up M→L at 2026-12-04 19:02 CET (18:02 UTC) (dry run: not sent)\n"
            ),
            "{out}"
        );
        assert!(out.contains("\n  web-1  M     up"), "{out}");
        assert!(out.contains("\n  web-3  –     never reported"), "{out}");
        assert!(
            out.contains(
                "    web-1  cpu_utilization 1m >= 0.80  0.91   holding 45 s of 3 min 0 s\n"
            ),
            "{out}"
        );
        assert!(
            out.contains("    web-2  cpu_utilization 1m >= 0.80  –      fired (held 3 min 20 s)\n"),
            "{out}"
        );
        assert!(
            out.contains("  waiting:\n    web-2: no report for 300 s\n"),
            "{out}"
        );
        assert!(out.contains("\nin no configured group:\n"), "{out}");
        assert!(out.contains("  cache-1  ungrouped  up"), "{out}");
    }

    #[test]
    fn the_leader_line_says_who_leads_and_how_the_lease_stands() {
        assert_eq!(format_leader(&json!({"ha": false, "role": "leader"})), "");
        assert_eq!(
            format_leader(
                &json!({"ha": true, "name": "c1", "role": "leader", "lease_healthy": true,
                "fencing_token": 42, "leader": {"name": "c1", "url": "http://a:9471", "token": 42}})
            ),
            "collector c1: leader (fencing token 42, lease healthy)\n"
        );
        assert_eq!(
            format_leader(
                &json!({"ha": true, "name": "c2", "role": "follower", "lease_healthy": true,
                "fencing_token": 42, "leader": {"name": "c1", "url": "http://a:9471", "token": 42}})
            ),
            "collector c2: follower; leader: c1 at http://a:9471 (fencing token 42, lease healthy)\n"
        );
        assert_eq!(
            format_leader(
                &json!({"ha": true, "name": "c2", "role": "candidate", "lease_healthy": false,
                "fencing_token": 42, "leader": null})
            ),
            "collector c2: candidate; leader: none (actuation paused) (fencing token 42, lease NOT renewed)\n"
        );
    }

    #[test]
    fn an_empty_fleet_says_so() {
        let out = format_status(
            &json!({"groups": []}),
            &json!({"vms": []}),
            &Paint::new(true),
        );
        assert!(out.starts_with("fleet: 0 VMs, "), "{out}");
        assert_eq!(
            format_vms(&json!({"vms": []}), &Paint::new(false)),
            "no VMs\n"
        );
    }
}
