//! Who leads: `rally_collector_leader` for every collector (a single one always leads),
//! and, with `[ha]`, the lease's health, the fencing token, refused work of ended terms,
//! terms begun and ended, and failed calls to etcd.

use crate::ha::{Fence, Leadership, Lost};

use super::encoder::{Exposition, Kind};

/// The leadership families.
pub(super) fn ha_metrics(e: &mut Exposition, leadership: &Leadership) {
    use Kind::{Counter, Gauge};

    let status = leadership.ha().map(|ha| (ha, ha.status()));
    e.family(
        "rally_collector_leader",
        Gauge,
        "1 while this collector decides and actuates (a collector without [ha] always does).",
    );
    let leads = status
        .as_ref()
        .is_none_or(|(_, s)| s.role == crate::ha::Role::Leader);
    e.sample("rally_collector_leader", &[], u64::from(leads));
    let Some((ha, status)) = status else { return };
    e.family(
        "rally_collector_lease_healthy",
        Gauge,
        "1 while this collector's etcd lease is renewed within its TTL.",
    );
    e.sample(
        "rally_collector_lease_healthy",
        &[],
        u64::from(status.lease_healthy),
    );
    e.family(
        "rally_collector_fencing_token",
        Gauge,
        "The fencing token of the newest leader's term this collector knows of.",
    );
    e.sample("rally_collector_fencing_token", &[], status.fencing_token);
    e.family(
        "rally_collector_fenced_total",
        Counter,
        "Work of an ended term refused, by stage: lease (not decided), commit (etcd refused the decision), dispatch (not sent, or no further attempt).",
    );
    for stage in Fence::ALL {
        e.sample(
            "rally_collector_fenced_total",
            &[("stage", stage.as_str())],
            ha.fenced(stage),
        );
    }
    e.family(
        "rally_collector_leader_terms_total",
        Counter,
        "Terms this collector began as leader.",
    );
    e.sample("rally_collector_leader_terms_total", &[], status.terms);
    e.family(
        "rally_collector_actuation_pauses_total",
        Counter,
        "Terms that ended without a hand-over, by reason (actuation paused until a leader is elected).",
    );
    for reason in [Lost::LeaseExpired, Lost::EtcdUnreachable] {
        e.sample(
            "rally_collector_actuation_pauses_total",
            &[("reason", reason.as_str())],
            ha.pauses(reason),
        );
    }
    e.family(
        "rally_collector_etcd_errors_total",
        Counter,
        "Calls to etcd that failed or timed out.",
    );
    e.sample("rally_collector_etcd_errors_total", &[], ha.etcd_errors());
}
