//! Where each member of a resized group stands: its rung, and each of the group's rules
//! with its threshold, the value it reads and how long it has held. The figures are the
//! ones the status page and the API show, from [`members_now`].

use std::time::SystemTime;

use crate::engine::{EngineStats, RuleStatus, members_now};
use crate::fleet::{Fleet, FleetView};
use rally_policy::Timestamp;

use super::encoder::{Exposition, Kind, Value};

/// The rung and rule families, one sample set per member of every resized group.
pub(super) fn rule_metrics(
    e: &mut Exposition,
    engine: &EngineStats,
    fleet: &Fleet,
    now: SystemTime,
) {
    use Kind::Gauge;
    let view = FleetView::new(fleet, now);
    let groups: Vec<_> = engine
        .groups()
        .into_iter()
        .filter(|g| g.resizes)
        .map(|g| {
            let members = members_now(&g, &view, Timestamp::from(now));
            (g, members)
        })
        .collect();

    e.family(
        "rally_vm_rung",
        Gauge,
        "1 for the ladder rung the VM's reported size matches, 0 for the group's other rungs.",
    );
    for (g, members) in &groups {
        for m in members {
            for (i, rung) in g.ladder.iter().enumerate() {
                e.sample(
                    "rally_vm_rung",
                    &[("vm", &m.vm), ("group", &g.group), ("rung", &rung.name)],
                    m.rung_index == Some(i),
                );
            }
        }
    }
    e.family(
        "rally_vm_rung_index",
        Gauge,
        "Position on its group's ladder of the rung the VM's size matches, 0 being the smallest.",
    );
    for (g, members) in &groups {
        for m in members {
            if let Some(i) = m.rung_index {
                e.sample(
                    "rally_vm_rung_index",
                    &[("vm", &m.vm), ("group", &g.group)],
                    i as u64,
                );
            }
        }
    }

    type RuleFamily = (&'static str, &'static str, fn(&RuleStatus) -> Value);
    let rule_families: [RuleFamily; 2] = [
        (
            "rally_rule_threshold",
            "The value at which a group's rule starts holding (in the unit of its metric).",
            |r| r.threshold.into(),
        ),
        (
            "rally_rule_for_seconds",
            "How long a group's rule must hold before it fires.",
            |r| r.for_seconds.into(),
        ),
    ];
    for (name, help, value) in rule_families {
        e.family(name, Gauge, help);
        for (g, _) in &groups {
            for (i, rule) in g.rules.iter().enumerate() {
                let (index, metric, window) = (
                    i.to_string(),
                    rule.metric.to_string(),
                    rule.window.to_string(),
                );
                e.sample(
                    name,
                    &[
                        ("group", &g.group),
                        ("rule", &index),
                        ("metric", &metric),
                        ("window", &window),
                    ],
                    value(rule),
                );
            }
        }
    }

    let per_member =
        |e: &mut Exposition,
         name: &str,
         value: &dyn Fn(&crate::engine::RuleReading) -> Option<f64>| {
            for (g, members) in &groups {
                for m in members {
                    for r in &m.rules {
                        let Some(v) = value(r) else { continue };
                        let (index, metric, window) = (
                            r.rule.to_string(),
                            r.metric.to_string(),
                            r.window.to_string(),
                        );
                        e.sample(
                            name,
                            &[
                                ("vm", &m.vm),
                                ("group", &g.group),
                                ("rule", &index),
                                ("metric", &metric),
                                ("window", &window),
                            ],
                            v,
                        );
                    }
                }
            }
        };
    e.family(
        "rally_rule_value",
        Gauge,
        "What a rule reads on the VM now (complete windows only; absent when the metric is).",
    );
    per_member(e, "rally_rule_value", &|r| r.value);
    e.family(
        "rally_rule_held_seconds",
        Gauge,
        "How long the rule has held on the VM without interruption; 0 while it does not hold.",
    );
    per_member(e, "rally_rule_held_seconds", &|r| {
        Some(r.held_seconds.unwrap_or(0.0))
    });
    e.family(
        "rally_rule_firing",
        Gauge,
        "1 while the rule has fired on the VM and not cleared yet.",
    );
    per_member(e, "rally_rule_firing", &|r| {
        Some(if r.firing { 1.0 } else { 0.0 })
    });
}
