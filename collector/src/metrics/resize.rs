//! The resize engine's families: requests, verifications, and each resized group's
//! state.

use crate::engine::EngineStats;

use super::encoder::{Exposition, Kind};

/// The resize engine's families. Counters have a sample only once something happened
/// (no invented zeros for label sets that never occurred); gauges one per resized group.
pub(super) fn resize_metrics(e: &mut Exposition, engine: &EngineStats) {
    use Kind::{Counter, Gauge};
    e.family(
        "rally_resize_requests_total",
        Counter,
        "Resize requests that got a final word, by outcome (accepted, rejected, gave_up, dry_run).",
    );
    for ((group, vm, direction, outcome), n) in engine.requests() {
        e.sample(
            "rally_resize_requests_total",
            &[
                ("group", &group),
                ("vm", &vm),
                ("direction", direction),
                ("outcome", outcome),
            ],
            n,
        );
    }
    e.family(
        "rally_resize_verifications_total",
        Counter,
        "Resizes verified from the agent's reported size, or failed (not verified in time).",
    );
    for ((group, result), n) in engine.verifications() {
        e.sample(
            "rally_resize_verifications_total",
            &[("group", &group), ("result", result)],
            n,
        );
    }
    let groups: Vec<_> = engine.groups().into_iter().filter(|g| g.resizes).collect();
    e.family(
        "rally_group_paused",
        Gauge,
        "1 while the group is paused (by an operator or the circuit breaker).",
    );
    for g in &groups {
        e.sample("rally_group_paused", &[("group", &g.group)], g.paused);
    }
    e.family(
        "rally_group_circuit_open",
        Gauge,
        "1 while the circuit breaker holds the group paused after failed resizes.",
    );
    for g in &groups {
        e.sample(
            "rally_group_circuit_open",
            &[("group", &g.group)],
            g.circuit_open,
        );
    }
    e.family(
        "rally_group_consecutive_failed_resizes",
        Gauge,
        "Failed or unverified resizes in a row (the circuit breaker's count).",
    );
    for g in &groups {
        e.sample(
            "rally_group_consecutive_failed_resizes",
            &[("group", &g.group)],
            g.consecutive_failures,
        );
    }
    e.family(
        "rally_group_resizes_in_flight",
        Gauge,
        "Resizes sent and waiting for the agent to report the new size.",
    );
    for g in &groups {
        e.sample(
            "rally_group_resizes_in_flight",
            &[("group", &g.group)],
            u64::from(g.in_flight.is_some()),
        );
    }
    e.family(
        "rally_resize_skips",
        Gauge,
        "Why VMs got no resize at the last evaluation: notes per reason.",
    );
    for g in &groups {
        let mut counts = std::collections::BTreeMap::<&str, u64>::new();
        for s in &g.skips {
            *counts.entry(s.kind).or_default() += 1;
        }
        for (reason, n) in counts {
            e.sample(
                "rally_resize_skips",
                &[("group", &g.group), ("reason", reason)],
                n,
            );
        }
    }
}
