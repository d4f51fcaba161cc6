//! `GET /`: a server-rendered status page: one table of VMs per group with the last
//! hour's CPU, memory and requests drawn as inline SVG sparklines, each group's ladder
//! with its members' rungs, its rules with their values and timers, the decisions, and
//! pause/resume forms. No JavaScript; it reloads itself every 30 s. Every piece of
//! text is HTML-escaped.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use chrono_tz::Tz;
use rally_policy::Timestamp;

use super::HttpState;
use crate::engine::{DecisionRecord, GroupStatus, members_now, outcome_text};
use crate::fleet::{FleetView, Metric, TimeRange, VmSummary};

/// How far back the sparklines reach.
pub const CHART_SPAN: Duration = Duration::from_secs(3600);

/// One metric's 1-minute means, `(start of the minute, mean)`, oldest first.
pub type Series = Vec<(SystemTime, f64)>;

/// The last hour of one VM, for its sparklines.
#[derive(Debug, Clone, Default)]
pub struct VmCharts {
    /// CPU utilization, 0..1.
    pub cpu: Series,
    /// Memory used, 0..1.
    pub memory: Series,
    /// Requests per second.
    pub requests: Series,
}

/// Everything the page shows, read once per request.
#[derive(Debug)]
pub struct Page {
    /// VMs in (group, id) order.
    pub vms: Vec<VmSummary>,
    /// The resize engine's groups.
    pub groups: Vec<GroupStatus>,
    /// Recent decisions, newest first.
    pub recent: Vec<DecisionRecord>,
    /// The fleet's staleness limit.
    pub stale_after: Duration,
    /// When the page was read.
    pub now: SystemTime,
    /// Sparkline data by VM id.
    pub charts: BTreeMap<String, VmCharts>,
    /// Each rule's current value: (group, rule index, VM) → value.
    pub rule_values: BTreeMap<(String, usize, String), f64>,
    /// Each member's rung on its group's ladder: (group, VM) → index; absent when its
    /// size is unknown or matches no rung.
    pub rungs: BTreeMap<(String, String), usize>,
    /// Whether pause/resume need the API token (`[api] token_file` is set).
    pub token_required: bool,
    /// With `[ha]`: this collector's part in the election.
    pub ha: Option<crate::ha::HaStatus>,
}

/// `GET /`: reads the fleet and the engine and renders [`render`].
pub async fn handler(State(state): State<HttpState>) -> Response {
    let recent = state
        .engine
        .decisions(crate::store::DecisionFilter {
            limit: Some(RECENT_DECISIONS),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "status page: could not read decisions");
            Vec::new()
        });
    let reads = state.reads.clone();
    match reads.run(move || page_now(&state, recent)).await {
        Ok(page) => Html(page).into_response(),
        Err(e) => super::read_failed("the status page", &e, false),
    }
}

/// The page at `now`, with `recent` decisions: walks every VM, so it runs on a read
/// thread.
fn page_now(state: &HttpState, recent: Vec<DecisionRecord>) -> String {
    let now = state.clock.now();
    let vms = state.fleet.snapshot(now);
    let groups = state.engine.stats().groups();
    let range = TimeRange::last(CHART_SPAN, now);
    let mut charts = BTreeMap::new();
    for vm in &vms {
        let series = state.fleet.with_vm(&vm.id, |v| VmCharts {
            cpu: v.windows().chart(Metric::CpuUtilization, range),
            memory: v.windows().chart(Metric::MemoryUsedRatio, range),
            requests: v.windows().chart(Metric::RequestsPerSecond, range),
        });
        charts.insert(vm.id.to_string(), series.unwrap_or_default());
    }
    let view = FleetView::new(&state.fleet, now);
    let mut rule_values = BTreeMap::new();
    let mut rungs = BTreeMap::new();
    for g in &groups {
        for member in members_now(g, &view, Timestamp::from(now)) {
            if let Some(i) = member.rung_index {
                rungs.insert((g.group.clone(), member.vm.clone()), i);
            }
            for r in member.rules {
                if let Some(value) = r.value {
                    rule_values.insert((g.group.clone(), r.rule, member.vm.clone()), value);
                }
            }
        }
    }
    let token_required = state.api_token.borrow().is_some();
    render(&Page {
        vms,
        groups,
        recent,
        stale_after: state.fleet.stale_after(),
        now,
        charts,
        rule_values,
        rungs,
        token_required,
        ha: state.leadership.ha().map(|ha| ha.status()),
    })
}

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

/// Renders the page.
pub fn render(page: &Page) -> String {
    let vms = &page.vms;
    let mut html = String::from(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"refresh\" content=\"30\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>Rally collector</title>\n<style>\n\
         body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}\n\
         table{border-collapse:collapse;margin-bottom:1.5rem}\n\
         th,td{padding:.3rem .7rem;border-bottom:1px solid #ddd;text-align:right;vertical-align:middle}\n\
         th:first-child,td:first-child,td.text{text-align:left}\n\
         .fresh{color:#176f2c;font-weight:600}.stale{color:#b3261e;font-weight:600}\n\
         .spark{vertical-align:middle}.range,.nodata{color:#666;font-size:.8rem;margin-left:.3rem;white-space:nowrap}.range{display:block}\n\
         ol.ladder{display:flex;gap:.5rem;list-style:none;padding:0;flex-wrap:wrap}\n\
         ol.ladder li{border:1px solid #bbb;border-radius:4px;padding:.3rem .6rem;min-width:6rem}\n\
         ol.ladder li.occupied{border-color:#1a73e8;background:#e8f0fe}\n\
         .members{display:block;font-size:.8rem;color:#1a73e8}\n\
         form.order{display:inline-block;margin-right:.5rem}\n\
         </style>\n</head>\n<body>\n<h1>Rally collector</h1>\n",
    );
    let fresh = vms.iter().filter(|v| v.fresh).count();
    let _ = writeln!(
        html,
        "<p>{fresh} of {} VMs fresh (stale after {} s without a report). \
         <a href=\"/api/v1/vms\">JSON</a> · <a href=\"/metrics\">metrics</a></p>",
        vms.len(),
        page.stale_after.as_secs()
    );
    if let Some(ha) = &page.ha {
        leader_line(&mut html, ha);
    }
    if vms.is_empty() {
        html.push_str("<p>No VM has reported yet.</p>\n");
    }
    let mut names: Vec<&str> = vms.iter().map(|v| &*v.group).collect();
    names.dedup();
    for name in names {
        let members: Vec<&VmSummary> = vms.iter().filter(|v| &*v.group == name).collect();
        let group = page.groups.iter().find(|g| g.group == name);
        group_section(&mut html, page, name, group, &members);
    }
    resize_section(&mut html, &page.groups, &page.recent);
    html.push_str("</body>\n</html>\n");
    html
}

/// Who decides: this collector, or the leader it follows (with a link to its page).
fn leader_line(html: &mut String, ha: &crate::ha::HaStatus) {
    let lease = if ha.lease_healthy {
        "lease healthy"
    } else {
        "<span class=\"stale\">lease not renewed</span>"
    };
    let token = ha.fencing_token;
    let me = escape(&ha.name);
    match (&ha.role, &ha.leader) {
        (crate::ha::Role::Leader, _) => {
            let _ = writeln!(
                html,
                "<p id=\"leader\">This collector ({me}) <strong>leads</strong>: it decides and actuates (fencing token {token}, {lease}).</p>"
            );
        }
        (_, Some(l)) => {
            let _ = writeln!(
                html,
                "<p id=\"leader\">This collector ({me}) follows; <a href=\"{}\">{}</a> leads and decides (fencing token {token}, {lease}).</p>",
                escape(&l.url),
                escape(&l.name)
            );
        }
        (_, None) => {
            let _ = writeln!(
                html,
                "<p id=\"leader\" class=\"stale\">No collector leads: actuation is paused until etcd elects one (this collector: {me}, {lease}).</p>"
            );
        }
    }
}

fn group_section(
    html: &mut String,
    page: &Page,
    name: &str,
    group: Option<&GroupStatus>,
    members: &[&VmSummary],
) {
    let _ = writeln!(
        html,
        "<section class=\"group\" id=\"group-{0}\">\n<h2>Group {0}</h2>",
        escape(name)
    );
    if let Some(g) = group.filter(|g| g.resizes) {
        order_forms(html, &g.group, page.token_required);
        ladder(html, g, members, &page.rungs);
    }
    html.push_str(
        "<table class=\"vms\">\n<thead><tr><th>VM</th><th>hostname</th><th>state</th>\
         <th>last report</th><th>vCPUs</th><th>memory</th><th>CPU</th><th>steal</th>\
         <th>memory used</th><th>CPU, last hour</th><th>memory, last hour</th>\
         <th>requests, last hour</th><th>agent</th></tr></thead>\n<tbody>\n",
    );
    let empty = VmCharts::default();
    for vm in members {
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
        let charts = page.charts.get(&*vm.id).unwrap_or(&empty);
        let pct = |v: f64| format!("{:.0} %", v * 100.0);
        let rate = |v: f64| format!("{v:.1}/s");
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td class=\"text\">{}</td><td class=\"text\">{state}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td class=\"text\">{}</td><td class=\"text\">{}</td><td class=\"text\">{}</td>\
             <td class=\"text\">{}</td></tr>",
            escape(&vm.id),
            escape(vm.hostname.as_deref().unwrap_or("–")),
            age(vm.last_report_age),
            vm.size
                .map_or_else(|| "–".to_string(), |s| s.vcpus.to_string()),
            bytes(vm.size.map(|s| s.memory_bytes)),
            percent(vm.latest_values.get(Metric::CpuUtilization)),
            percent(vm.latest_values.get(Metric::CpuSteal)),
            percent(vm.latest_values.get(Metric::MemoryUsedRatio)),
            sparkline(&charts.cpu, page.now, &format!("{} CPU", vm.id), pct),
            sparkline(
                &charts.memory,
                page.now,
                &format!("{} memory used", vm.id),
                pct
            ),
            sparkline(
                &charts.requests,
                page.now,
                &format!("{} requests", vm.id),
                rate
            ),
            escape(vm.agent_version.as_deref().unwrap_or("–")),
        );
    }
    html.push_str("</tbody>\n</table>\n");
    if let Some(g) = group.filter(|g| !g.rules.is_empty()) {
        rules(html, page, g, members);
    }
    html.push_str("</section>\n");
}

/// A group name as a URL path segment (anything but letters, digits, `-`, `_` and `.`
/// percent-encoded), so the form's action reaches that group.
fn path_segment(name: &str) -> String {
    let mut out = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The pause and resume buttons: plain forms posting to the page's order routes, which
/// check the same token as the API (typed in, never put in the page).
fn order_forms(html: &mut String, group: &str, token_required: bool) {
    let token = if token_required {
        "<input type=\"password\" name=\"token\" placeholder=\"API token\" required \
         autocomplete=\"off\"> "
    } else {
        ""
    };
    for (action, label) in [("pause", "Pause"), ("resume", "Resume")] {
        let _ = writeln!(
            html,
            "<form class=\"order\" method=\"post\" action=\"/groups/{}/{action}\">{token}\
             <button type=\"submit\">{label} {}</button></form>",
            escape(&path_segment(group)),
            escape(group),
        );
    }
}

/// The ladder, smallest rung first, each with the members on it.
fn ladder(
    html: &mut String,
    g: &GroupStatus,
    members: &[&VmSummary],
    rungs: &BTreeMap<(String, String), usize>,
) {
    let mut on: Vec<Vec<&str>> = vec![Vec::new(); g.ladder.len()];
    let mut off = Vec::new();
    for vm in members {
        match rungs.get(&(g.group.clone(), vm.id.to_string())) {
            Some(&i) if i < on.len() => on[i].push(&vm.id),
            _ => off.push(&*vm.id),
        }
    }
    html.push_str("<h3>Ladder</h3>\n<ol class=\"ladder\">\n");
    for (rung, vms) in g.ladder.iter().zip(&on) {
        let _ = writeln!(
            html,
            "<li class=\"rung{}\"><b>{}</b> {} vCPUs, {}<span class=\"members\">{}</span></li>",
            if vms.is_empty() { "" } else { " occupied" },
            escape(&rung.name),
            rung.vcpus,
            bytes(Some(rung.memory_bytes)),
            escape(&vms.join(", ")),
        );
    }
    html.push_str("</ol>\n");
    if !off.is_empty() {
        let _ = writeln!(
            html,
            "<p>Not on the ladder (unknown size or none of its rungs): {}</p>",
            escape(&off.join(", "))
        );
    }
}

/// Each rule on each member: the value it reads, its threshold and how long it held.
fn rules(html: &mut String, page: &Page, g: &GroupStatus, members: &[&VmSummary]) {
    html.push_str(
        "<h3>Rules</h3>\n<table class=\"rules\">\n<thead><tr><th>rule</th><th>VM</th>\
         <th>value</th><th>threshold</th><th>held</th></tr></thead>\n<tbody>\n",
    );
    let now = Timestamp::from(page.now);
    for (i, rule) in g.rules.iter().enumerate() {
        for vm in members {
            let value = page
                .rule_values
                .get(&(g.group.clone(), i, vm.id.to_string()))
                .map_or_else(|| "–".to_string(), |v| format!("{v:.2}"));
            let held = rule.held.iter().find(|h| *h.vm == *vm.id).map_or_else(
                || "not holding".to_string(),
                |h| {
                    let since = h.since.map_or_else(String::new, |s| {
                        let secs = (now - s).num_seconds().max(0);
                        format!(
                            "{} min {} s since {}",
                            secs / 60,
                            secs % 60,
                            local_time(s, g.timezone)
                        )
                    });
                    if h.firing {
                        format!("fired; {since}")
                    } else {
                        format!("{since} of {} s", rule.for_seconds)
                    }
                },
            );
            let _ = writeln!(
                html,
                "<tr><td class=\"text\">{} {}</td><td class=\"text\">{}</td><td>{value}</td>\
                 <td>{} {}</td><td class=\"text\">{}</td></tr>",
                rule.metric,
                rule.window,
                escape(&vm.id),
                escape(rule.comparison),
                rule.threshold,
                escape(&held),
            );
        }
    }
    html.push_str("</tbody>\n</table>\n");
}

/// An inline SVG sparkline of `series` over the [`CHART_SPAN`] before `now`, with its
/// minimum and maximum written by `label`; "no data" when the series is empty.
pub fn sparkline(
    series: &[(SystemTime, f64)],
    now: SystemTime,
    title: &str,
    label: impl Fn(f64) -> String,
) -> String {
    const WIDTH: f64 = 120.0;
    const HEIGHT: f64 = 28.0;
    let values = series.iter().map(|(_, v)| *v).filter(|v| v.is_finite());
    let (Some(min), Some(max)) = (values.clone().reduce(f64::min), values.reduce(f64::max)) else {
        return format!(
            "<span class=\"nodata\" title=\"{}\">no data</span>",
            escape(title)
        );
    };
    let start = now
        .checked_sub(CHART_SPAN)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let span = CHART_SPAN.as_secs_f64();
    let mut points: Vec<(f64, f64)> = series
        .iter()
        .filter(|(_, v)| v.is_finite())
        .map(|(t, v)| {
            let age = t.duration_since(start).unwrap_or_default().as_secs_f64();
            let x = (age / span * WIDTH).clamp(0.0, WIDTH);
            // A flat series is drawn across the middle.
            let y = if max > min {
                2.0 + (HEIGHT - 4.0) * (1.0 - (v - min) / (max - min))
            } else {
                HEIGHT / 2.0
            };
            (x, y)
        })
        .collect();
    if let [(x, y)] = points[..] {
        // One minute of data: a short stroke, since a one-point polyline draws nothing.
        points.insert(0, ((x - 2.0).max(0.0), y));
    }
    let points = points
        .iter()
        .map(|(x, y)| format!("{x:.1},{y:.1}"))
        .collect::<Vec<_>>()
        .join(" ");
    let (low, high) = (escape(&label(min)), escape(&label(max)));
    format!(
        "<svg class=\"spark\" width=\"120\" height=\"28\" viewBox=\"0 0 120 28\" role=\"img\" \
         aria-label=\"{title}: {low} to {high}\"><title>{title}</title>\
         <polyline fill=\"none\" stroke=\"#1a73e8\" stroke-width=\"1.5\" points=\"{points}\"/>\
         </svg><span class=\"range\">{low} – {high}</span>",
        title = escape(title),
    )
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
            ladder: Vec::new(),
            rules: Vec::new(),
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
    fn the_page_says_who_leads_and_links_to_the_leader() {
        use crate::ha::{HaStatus, LeaderInfo, Role};
        let page = |role, leader: Option<LeaderInfo>, lease_healthy| {
            render(&Page {
                vms: Vec::new(),
                groups: Vec::new(),
                recent: Vec::new(),
                stale_after: Duration::from_secs(20),
                now: SystemTime::UNIX_EPOCH,
                charts: BTreeMap::new(),
                rule_values: BTreeMap::new(),
                rungs: BTreeMap::new(),
                token_required: false,
                ha: Some(HaStatus {
                    ha: true,
                    name: "c2".into(),
                    role,
                    leader,
                    lease_healthy,
                    fencing_token: 42,
                    fenced: 0,
                    terms: 1,
                }),
            })
        };
        let c1 = LeaderInfo {
            name: "c1".into(),
            url: "http://10.0.0.1:9471".into(),
            token: 42,
        };
        let follower = page(Role::Follower, Some(c1), true);
        assert!(
            follower.contains("This collector (c2) follows; <a href=\"http://10.0.0.1:9471\">c1</a> leads and decides (fencing token 42, lease healthy)"),
            "{follower}"
        );
        let leader = page(Role::Leader, None, true);
        assert!(
            leader.contains("This collector (c2) <strong>leads</strong>"),
            "{leader}"
        );
        let nobody = page(Role::Candidate, None, false);
        assert!(
            nobody.contains("No collector leads: actuation is paused"),
            "{nobody}"
        );
        assert!(nobody.contains("lease not renewed"), "{nobody}");
    }

    #[test]
    fn a_dry_run_reads_not_sent_and_a_warm_up_until_when_in_both_zones() {
        let html = render(&Page {
            vms: Vec::new(),
            groups: vec![warming_group()],
            recent: vec![dry_run_record()],
            stale_after: Duration::from_secs(20),
            now: SystemTime::UNIX_EPOCH,
            charts: BTreeMap::new(),
            rule_values: BTreeMap::new(),
            rungs: BTreeMap::new(),
            token_required: false,
            ha: None,
        });
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
    fn a_sparkline_draws_the_hour_and_labels_its_range() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(10_000);
        let series: Series = [(3600, 0.2), (1800, 0.5), (60, 0.9)]
            .iter()
            .map(|(ago, v)| (now - Duration::from_secs(*ago), *v))
            .collect();
        let svg = sparkline(&series, now, "web-1 CPU", |v| format!("{:.0} %", v * 100.0));
        assert!(svg.starts_with("<svg"), "{svg}");
        // Oldest at the left edge, the highest value at the top, the lowest at the bottom.
        assert!(
            svg.contains("points=\"0.0,26.0 60.0,15.7 118.0,2.0\""),
            "{svg}"
        );
        assert!(svg.contains("20 % – 90 %"), "{svg}");
        // One point still draws a visible stroke.
        let one = sparkline(&series[2..], now, "x", |v| v.to_string());
        assert!(one.contains("points=\"116.0,14.0 118.0,14.0\""), "{one}");
    }

    #[test]
    fn an_empty_sparkline_says_no_data_and_titles_are_escaped() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(10_000);
        let html = sparkline(&[], now, "<b>&", |v| v.to_string());
        assert_eq!(
            html,
            "<span class=\"nodata\" title=\"&lt;b&gt;&amp;\">no data</span>"
        );
        let svg = sparkline(&[(now, 1.0)], now, "a\"<x>", |_| "<1>".into());
        assert!(svg.contains("<title>a&quot;&lt;x&gt;</title>"), "{svg}");
        assert!(svg.contains("&lt;1&gt; – &lt;1&gt;"), "{svg}");
        assert!(!svg.contains("<x>"), "{svg}");
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            escape("<script>alert('x') & \"y\"</script>"),
            "&lt;script&gt;alert(&#39;x&#39;) &amp; &quot;y&quot;&lt;/script&gt;"
        );
    }
}
