//! `GET /`: a server-rendered status page, one table of VMs per group. No JavaScript;
//! it reloads itself every 5 s. Every piece of text is HTML-escaped.

use std::fmt::Write as _;
use std::time::Duration;

use chrono_tz::Tz;
use rally_policy::Timestamp;

use crate::engine::{DecisionRecord, GroupStatus, outcome_text};
use crate::fleet::{Metric, VmSummary};

/// How many recent decisions the page lists.
pub const RECENT_DECISIONS: u32 = 20;

/// Escapes text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `t` in the zone `tz` and in UTC, as the page and the CLI show every time:
/// "2026-12-04 19:02 CET (18:02 UTC)". The UTC date is repeated when it differs; a zone
/// that is UTC itself is shown once.
pub fn local_time(t: Timestamp, tz: Tz) -> String {
    let local = t.with_timezone(&tz);
    let local_text = local.format("%Y-%m-%d %H:%M %Z").to_string();
    if local_text.ends_with(" UTC") {
        local_text
    } else if local.date_naive() == t.date_naive() {
        format!("{local_text} ({} UTC)", t.format("%H:%M"))
    } else {
        format!("{local_text} ({} UTC)", t.format("%Y-%m-%d %H:%M"))
    }
}

fn percent(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_string(), |v| format!("{:.1} %", v * 100.0))
}

fn bytes(v: Option<u64>) -> String {
    const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
    v.map_or_else(|| "–".to_string(), |v| format!("{:.1} GiB", v as f64 / GIB))
}

fn age(d: Option<Duration>) -> String {
    match d {
        None => "never".to_string(),
        Some(d) if d.as_secs() < 120 => format!("{} s ago", d.as_secs()),
        Some(d) if d.as_secs() < 7200 => format!("{} min ago", d.as_secs() / 60),
        Some(d) => format!("{} h ago", d.as_secs() / 3600),
    }
}

/// Renders the page for `vms` (in (group, id) order), the resize engine's `groups` and
/// its `recent` decisions (newest first).
pub fn render(
    vms: &[VmSummary],
    groups: &[GroupStatus],
    recent: &[DecisionRecord],
    stale_after: Duration,
) -> String {
    let mut html = String::from(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"refresh\" content=\"5\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>Rally collector</title>\n<style>\n\
         body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}\n\
         table{border-collapse:collapse;margin-bottom:1.5rem}\n\
         th,td{padding:.3rem .7rem;border-bottom:1px solid #ddd;text-align:right}\n\
         th:first-child,td:first-child,td.text{text-align:left}\n\
         .fresh{color:#176f2c;font-weight:600}.stale{color:#b3261e;font-weight:600}\n\
         </style>\n</head>\n<body>\n<h1>Rally collector</h1>\n",
    );
    let fresh = vms.iter().filter(|v| v.fresh).count();
    let _ = writeln!(
        html,
        "<p>{fresh} of {} VMs fresh (stale after {} s without a report). \
         <a href=\"/api/v1/vms\">JSON</a> · <a href=\"/metrics\">metrics</a></p>",
        vms.len(),
        stale_after.as_secs()
    );
    if vms.is_empty() {
        html.push_str("<p>No VM has reported yet.</p>\n");
    }
    let mut current_group: Option<&str> = None;
    for vm in vms {
        if current_group != Some(vm.group.as_str()) {
            if current_group.is_some() {
                html.push_str("</tbody>\n</table>\n");
            }
            current_group = Some(&vm.group);
            let _ = writeln!(html, "<h2>Group {}</h2>", escape(&vm.group));
            html.push_str(
                "<table>\n<thead><tr><th>VM</th><th>hostname</th><th>state</th>\
                 <th>last report</th><th>vCPUs</th><th>memory</th><th>CPU</th>\
                 <th>CPU 1 min</th><th>CPU 5 min</th><th>steal</th><th>memory used</th>\
                 <th>CPU pressure</th><th>agent</th></tr></thead>\n<tbody>\n",
            );
        }
        let mut state = if vm.fresh {
            "<span class=\"fresh\">up</span>".to_string()
        } else {
            "<span class=\"stale\">stale</span>".to_string()
        };
        // Hot-added capacity the guest did not online: the VM is not as big as it looks
        // from the cloud, and a resize to it is not verified.
        if let Some(s) = vm.size.filter(|s| s.has_offline_capacity()) {
            let _ = write!(
                state,
                " <span class=\"stale\" title=\"hot-added capacity stayed offline in the guest\">\
                 offline: {} CPUs, {}</span>",
                s.offline_cpus,
                bytes(Some(s.offline_memory_bytes))
            );
        }
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td class=\"text\">{}</td><td class=\"text\">{state}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td class=\"text\">{}</td></tr>",
            escape(&vm.id),
            escape(vm.hostname.as_deref().unwrap_or("–")),
            age(vm.last_report_age),
            vm.size
                .map_or_else(|| "–".to_string(), |s| s.vcpus.to_string()),
            bytes(vm.size.map(|s| s.memory_bytes)),
            percent(vm.latest_values.get(Metric::CpuUtilization)),
            percent(vm.mean_1m.get(Metric::CpuUtilization)),
            percent(vm.mean_5m.get(Metric::CpuUtilization)),
            percent(vm.latest_values.get(Metric::CpuSteal)),
            percent(vm.latest_values.get(Metric::MemoryUsedRatio)),
            percent(vm.latest_values.get(Metric::PsiCpuSomeAvg10)),
            escape(vm.agent_version.as_deref().unwrap_or("–")),
        );
    }
    if current_group.is_some() {
        html.push_str("</tbody>\n</table>\n");
    }
    resize_section(&mut html, groups, recent);
    html.push_str("</body>\n</html>\n");
    html
}

fn resize_section(html: &mut String, groups: &[GroupStatus], recent: &[DecisionRecord]) {
    let resized: Vec<&GroupStatus> = groups.iter().filter(|g| g.resizes).collect();
    if resized.is_empty() {
        return;
    }
    html.push_str(
        "<h2>Resizing</h2>\n<table>\n<thead><tr><th>group</th><th>mode</th><th>state</th>\
         <th>failures in a row</th><th>in flight</th><th>last decision</th><th>why waiting</th>\
         </tr></thead>\n<tbody>\n",
    );
    for g in resized {
        let mode = if g.dry_run { "dry-run" } else { "live" };
        let state = if g.circuit_open {
            "<span class=\"stale\">circuit open</span>".to_string()
        } else if g.paused {
            "<span class=\"stale\">paused</span>".to_string()
        } else {
            "<span class=\"fresh\">active</span>".to_string()
        };
        let in_flight = g.in_flight.as_ref().map_or_else(
            || "–".to_string(),
            |f| {
                format!(
                    "{} {} → {} vCPUs (until {})",
                    escape(&f.vm),
                    f.direction,
                    f.to.vcpus,
                    local_time(f.deadline, g.timezone)
                )
            },
        );
        let last = g.last_decision.as_ref().map_or_else(
            || "–".to_string(),
            |d| {
                format!(
                    "{} {} {}→{} at {}{}",
                    escape(&d.vm),
                    d.direction,
                    escape(&d.from),
                    escape(&d.to),
                    local_time(d.created_at, g.timezone),
                    if d.dry_run {
                        " (dry run: not sent)"
                    } else {
                        ""
                    }
                )
            },
        );
        let waiting = g
            .skips
            .iter()
            .map(|s| {
                let reason = escape(&s.detail.describe(&|t| local_time(t, g.timezone)));
                match &s.vm {
                    Some(vm) => format!("{}: {reason}", escape(vm)),
                    None => reason,
                }
            })
            .collect::<Vec<_>>()
            .join("<br>");
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td class=\"text\">{mode}</td><td class=\"text\">{state}</td>\
             <td>{}</td><td class=\"text\">{in_flight}</td><td class=\"text\">{last}</td>\
             <td class=\"text\">{}</td></tr>",
            escape(&g.group),
            g.consecutive_failures,
            if waiting.is_empty() {
                "–".to_string()
            } else {
                waiting
            },
        );
    }
    html.push_str("</tbody>\n</table>\n");
    if recent.is_empty() {
        return;
    }
    html.push_str(
        "<h2>Recent decisions</h2>\n<p><a href=\"/api/v1/decisions\">JSON</a></p>\n<table>\n\
         <thead><tr><th>when</th><th>group</th><th>VM</th><th>resize</th><th>status</th>\
         <th>request</th><th>reason</th></tr></thead>\n<tbody>\n",
    );
    for r in recent {
        let d = &r.stored.decision;
        // A decision of a group no longer configured is shown in UTC only.
        let tz = groups
            .iter()
            .find(|g| g.group == d.group)
            .map_or(Tz::UTC, |g| g.timezone);
        let outcome = match &r.stored.verdict_reason {
            Some(why) if r.sent() => format!("{}: {why}", r.outcome()),
            _ => outcome_text(r.outcome()).to_owned(),
        };
        let _ = writeln!(
            html,
            "<tr><td class=\"text\">{}</td><td class=\"text\">{}</td><td class=\"text\">{}</td>\
             <td class=\"text\">{} {}→{}</td><td class=\"text\">{}</td><td class=\"text\">{}</td>\
             <td class=\"text\">{}</td></tr>",
            local_time(d.created_at, tz),
            escape(&d.group),
            escape(&d.vm),
            d.direction,
            escape(&d.from.rung),
            escape(&d.to.rung),
            escape(&r.stored.status),
            escape(&outcome),
            escape(&d.reason),
        );
    }
    html.push_str("</tbody>\n</table>\n");
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
pub(crate) mod tests {
    use super::*;
    use crate::engine::SkipNote;
    use crate::store::StoredDecision;
    use rally_policy::decision::{
        Baseline, Decision, Direction, SizedRung, Skip, SkipReason, Trigger,
    };
    use rally_policy::{Metric, Timestamp};

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    /// A dry-run decision of group `web` (Europe/Warsaw) at 18:02 UTC, which the log
    /// actuator `accepted`.
    pub(crate) fn dry_run_record() -> DecisionRecord {
        let rung = |name: &str, vcpus| SizedRung {
            rung: name.into(),
            vcpus,
            memory_bytes: u64::from(vcpus) << 31,
        };
        DecisionRecord {
            stored: StoredDecision {
                decision: Decision {
                    id: "d-1".into(),
                    group: "web".into(),
                    vm: "web-1".into(),
                    direction: Direction::Up,
                    from: rung("M", 2),
                    to: rung("L", 4),
                    trigger: Trigger::Rule,
                    reason: "CPU high".into(),
                    evidence: Vec::new(),
                    dry_run: true,
                    created_at: at("2026-12-04T18:02:00Z"),
                    verify_deadline: at("2026-12-04T18:07:00Z"),
                    baseline: Baseline {
                        vcpus: 2,
                        memory_total_bytes: 4 << 30,
                    },
                },
                fencing_token: 1,
                status: "dry_run".into(),
                status_at: None,
                verdict: Some("accepted".into()),
                verdict_reason: None,
                accepted_at: Some(at("2026-12-04T18:02:00Z")),
            },
            attempts: Vec::new(),
            verification: None,
        }
    }

    /// Group `web` in dry-run, its newest decision [`dry_run_record`]'s, web-1 warming
    /// up until 18:04 UTC.
    pub(crate) fn warming_group() -> GroupStatus {
        let warming = Skip {
            vm: Some("web-1".into()),
            reason: SkipReason::MissingMetric {
                metric: Metric::CpuUtilization,
                window: "1m".into(),
                warming_up_until: Some(at("2026-12-04T18:04:00Z")),
            },
        };
        GroupStatus {
            group: "web".into(),
            timezone: chrono_tz::Europe::Warsaw,
            members: vec!["web-1".into()],
            resizes: true,
            dry_run: true,
            paused: false,
            paused_by: None,
            paused_at: None,
            circuit_open: false,
            consecutive_failures: 0,
            in_flight: None,
            last_decision: Some((&dry_run_record().stored.decision).into()),
            skips: vec![SkipNote::from(&warming)],
        }
    }

    #[test]
    fn times_read_in_the_group_zone_and_in_utc() {
        let warsaw = chrono_tz::Europe::Warsaw;
        assert_eq!(
            local_time(at("2026-12-04T18:02:00Z"), warsaw),
            "2026-12-04 19:02 CET (18:02 UTC)"
        );
        assert_eq!(
            local_time(at("2026-07-04T18:02:00Z"), warsaw),
            "2026-07-04 20:02 CEST (18:02 UTC)"
        );
        assert_eq!(
            local_time(at("2026-12-04T23:30:00Z"), warsaw),
            "2026-12-05 00:30 CET (2026-12-04 23:30 UTC)"
        );
        assert_eq!(
            local_time(at("2026-12-04T18:02:00Z"), Tz::UTC),
            "2026-12-04 18:02 UTC"
        );
    }

    #[test]
    fn a_dry_run_reads_not_sent_and_a_warm_up_until_when_in_both_zones() {
        let html = render(
            &[],
            &[warming_group()],
            &[dry_run_record()],
            Duration::from_secs(20),
        );
        assert!(html.contains("dry run: not sent"), "{html}");
        assert!(!html.contains("accepted"), "{html}");
        assert!(
            html.contains(
                "web-1: warming up until 2026-12-04 19:04 CET (18:04 UTC): metric cpu_utilization"
            ),
            "{html}"
        );
        assert!(
            html.contains("<td class=\"text\">2026-12-04 19:02 CET (18:02 UTC)</td>"),
            "{html}"
        );
        assert!(
            html.contains("web-1 up M→L at 2026-12-04 19:02 CET (18:02 UTC) (dry run: not sent)"),
            "{html}"
        );
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            escape("<script>alert('x') & \"y\"</script>"),
            "&lt;script&gt;alert(&#39;x&#39;) &amp; &quot;y&quot;&lt;/script&gt;"
        );
    }
}
