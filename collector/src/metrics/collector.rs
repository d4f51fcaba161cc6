//! The collector's own families: reports and streams accepted, rejected, duplicated or
//! lost at the ingest edge, and the VMs held in memory.

use crate::ingest::{IngestStats, Reason};

use super::encoder::{Exposition, Kind};

/// The ingest counters, and `vm_count` VMs held in memory.
pub(super) fn collector_metrics(e: &mut Exposition, stats: &IngestStats, vm_count: usize) {
    use Kind::{Counter, Gauge};

    e.family(
        "rally_collector_reports_total",
        Counter,
        "Agent reports accepted and applied.",
    );
    e.sample("rally_collector_reports_total", &[], stats.reports());
    e.family(
        "rally_collector_reports_rejected_total",
        Counter,
        "Agent messages and streams rejected, by reason.",
    );
    for reason in Reason::ALL {
        e.sample(
            "rally_collector_reports_rejected_total",
            &[("reason", reason.as_str())],
            stats.rejected(reason),
        );
    }
    e.family(
        "rally_collector_reports_duplicate_total",
        Counter,
        "Reports received again and not applied twice.",
    );
    e.sample(
        "rally_collector_reports_duplicate_total",
        &[],
        stats.duplicates(),
    );
    e.family(
        "rally_collector_reports_lost_total",
        Counter,
        "Sequence numbers skipped within agent runs.",
    );
    e.sample("rally_collector_reports_lost_total", &[], stats.lost());
    e.family(
        "rally_collector_streams",
        Gauge,
        "Agent streams open (past their Hello).",
    );
    e.sample("rally_collector_streams", &[], stats.streams_open());
    e.family(
        "rally_collector_streams_accepted_total",
        Counter,
        "Agent streams whose Hello was accepted.",
    );
    e.sample(
        "rally_collector_streams_accepted_total",
        &[],
        stats.streams_accepted(),
    );
    e.family(
        "rally_collector_seq_jumps_total",
        Counter,
        "Reports whose sequence number jumped implausibly far: taken as a new baseline.",
    );
    e.sample("rally_collector_seq_jumps_total", &[], stats.seq_jumps());
    connection_metrics(e, stats);
    e.family(
        "rally_collector_vms",
        Gauge,
        "VMs the collector holds in memory.",
    );
    e.sample("rally_collector_vms", &[], vm_count as u64);
}

/// The listeners' connection counters, per port.
fn connection_metrics(e: &mut Exposition, stats: &IngestStats) {
    use Kind::{Counter, Gauge};

    let listeners = stats.listeners();
    let ports = [("grpc", &listeners.grpc), ("http", &listeners.http)];
    e.family(
        "rally_collector_connections",
        Gauge,
        "TCP connections open, by listener.",
    );
    for (name, port) in ports {
        e.sample(
            "rally_collector_connections",
            &[("listener", name)],
            port.open(),
        );
    }
    e.family(
        "rally_collector_connections_accepted_total",
        Counter,
        "TCP connections accepted and served, by listener.",
    );
    for (name, port) in ports {
        e.sample(
            "rally_collector_connections_accepted_total",
            &[("listener", name)],
            port.accepted(),
        );
    }
    e.family(
        "rally_collector_connections_closed_total",
        Counter,
        "TCP connections the collector closed, by listener and reason.",
    );
    for (name, port) in ports {
        for (reason, value) in [
            ("over_limit", port.over_limit()),
            ("handshake_timeout", port.handshake_timeouts()),
            ("idle", port.idle_closed()),
        ] {
            e.sample(
                "rally_collector_connections_closed_total",
                &[("listener", name), ("reason", reason)],
                value,
            );
        }
    }
    e.family(
        "rally_collector_accept_errors_total",
        Counter,
        "Failed accept calls (out of file descriptors, ...), by listener.",
    );
    for (name, port) in ports {
        e.sample(
            "rally_collector_accept_errors_total",
            &[("listener", name)],
            port.accept_errors(),
        );
    }
}
