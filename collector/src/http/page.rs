//! `GET /`: a server-rendered status page, one table of VMs per group. No JavaScript;
//! it reloads itself every 5 s. Every piece of text is HTML-escaped.

use std::fmt::Write as _;
use std::time::Duration;

use crate::engine::{DecisionRecord, GroupStatus};
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
                    f.deadline.format("%H:%M:%S UTC")
                )
            },
        );
        let last = g.last_decision.as_ref().map_or_else(
            || "–".to_string(),
            |d| {
                format!(
                    "{} {} {}→{} at {}",
                    escape(&d.vm),
                    d.direction,
                    escape(&d.from),
                    escape(&d.to),
                    d.created_at.format("%Y-%m-%d %H:%M:%S UTC")
                )
            },
        );
        let waiting = g
            .skips
            .iter()
            .map(|s| match &s.vm {
                Some(vm) => format!("{}: {}", escape(vm), escape(&s.reason)),
                None => escape(&s.reason),
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
         <th>actuator</th><th>reason</th></tr></thead>\n<tbody>\n",
    );
    for r in recent {
        let d = &r.stored.decision;
        let _ = writeln!(
            html,
            "<tr><td class=\"text\">{}</td><td class=\"text\">{}</td><td class=\"text\">{}</td>\
             <td class=\"text\">{} {}→{}</td><td class=\"text\">{}</td><td class=\"text\">{}</td>\
             <td class=\"text\">{}</td></tr>",
            d.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
            escape(&d.group),
            escape(&d.vm),
            d.direction,
            escape(&d.from.rung),
            escape(&d.to.rung),
            escape(&r.stored.status),
            escape(r.stored.verdict.as_deref().unwrap_or("pending")),
            escape(&d.reason),
        );
    }
    html.push_str("</tbody>\n</table>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            escape("<script>alert('x') & \"y\"</script>"),
            "&lt;script&gt;alert(&#39;x&#39;) &amp; &quot;y&quot;&lt;/script&gt;"
        );
    }
}
