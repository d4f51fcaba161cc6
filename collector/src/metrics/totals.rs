//! Per-VM counters integrated from the report stream (network, disks, CPU seconds,
//! requests) and the per-filesystem space gauges.

use crate::fleet::{DiskTotals, Filesystem, NetTotals, VmSummary};

use super::encoder::{Exposition, Kind};

/// A family's name, help and how its value is read from `T`.
type Family<T> = (&'static str, &'static str, fn(T) -> f64);

/// One family with a sample per VM and entry of `entries` (a device, a mode, ...).
fn per_entry<'a, T: 'a, I: Iterator<Item = (&'a str, T)>>(
    e: &mut Exposition,
    vms: &'a [VmSummary],
    name: &str,
    help: &str,
    label: &str,
    entries: impl Fn(&'a VmSummary) -> I,
    value: impl Fn(T) -> f64,
) {
    e.family(name, Kind::Counter, help);
    for vm in vms {
        for (key, t) in entries(vm) {
            e.sample(
                name,
                &[("vm", &vm.id), ("group", &vm.group), (label, key)],
                value(t),
            );
        }
    }
}

fn net(vm: &VmSummary) -> impl Iterator<Item = (&str, NetTotals)> {
    vm.totals.net.iter().map(|(k, v)| (k.as_str(), *v))
}

fn disks(vm: &VmSummary) -> impl Iterator<Item = (&str, DiskTotals)> {
    vm.totals.disks.iter().map(|(k, v)| (k.as_str(), *v))
}

/// Network, disk, CPU-seconds and request counters of every VM.
pub(super) fn integrated_counters(e: &mut Exposition, vms: &[VmSummary]) {
    let net_families: [Family<NetTotals>; 6] = [
        (
            "rally_vm_network_receive_bytes_total",
            "Bytes received by the interface, integrated from the reported rates.",
            |t| t.rx_bytes,
        ),
        (
            "rally_vm_network_transmit_bytes_total",
            "Bytes sent by the interface, integrated from the reported rates.",
            |t| t.tx_bytes,
        ),
        (
            "rally_vm_network_receive_packets_total",
            "Packets received by the interface, integrated from the reported rates.",
            |t| t.rx_packets,
        ),
        (
            "rally_vm_network_transmit_packets_total",
            "Packets sent by the interface, integrated from the reported rates.",
            |t| t.tx_packets,
        ),
        (
            "rally_vm_network_receive_errors_total",
            "Receive errors plus drops of the interface.",
            |t| t.rx_errors,
        ),
        (
            "rally_vm_network_transmit_errors_total",
            "Send errors plus drops of the interface.",
            |t| t.tx_errors,
        ),
    ];
    for (name, help, value) in net_families {
        per_entry(e, vms, name, help, "device", net, value);
    }
    let disk_families: [Family<DiskTotals>; 5] = [
        (
            "rally_vm_disk_read_bytes_total",
            "Bytes read from the block device, integrated from the reported rates.",
            |t| t.read_bytes,
        ),
        (
            "rally_vm_disk_written_bytes_total",
            "Bytes written to the block device, integrated from the reported rates.",
            |t| t.written_bytes,
        ),
        (
            "rally_vm_disk_io_time_seconds_total",
            "Seconds the block device was busy, integrated from the reported busy share.",
            |t| t.io_seconds,
        ),
        (
            "rally_vm_disk_reads_completed_total",
            "Reads completed by the block device, integrated from the reported rates.",
            |t| t.reads,
        ),
        (
            "rally_vm_disk_writes_completed_total",
            "Writes completed by the block device, integrated from the reported rates.",
            |t| t.writes,
        ),
    ];
    for (name, help, value) in disk_families {
        per_entry(e, vms, name, help, "device", disks, value);
    }
    per_entry(
        e,
        vms,
        "rally_vm_cpu_seconds_total",
        "CPU seconds by mode, all vCPUs together: interval shares x interval x vCPUs.",
        "mode",
        |vm| vm.totals.cpu.map(|c| c.by_mode()).into_iter().flatten(),
        |v| v,
    );
    e.family(
        "rally_vm_requests_total",
        Kind::Counter,
        "Requests of a web-server source by status class (unknown: a source without classes).",
    );
    for vm in vms {
        for (source, classes) in &vm.totals.requests {
            for (class, n) in classes {
                e.sample(
                    "rally_vm_requests_total",
                    &[
                        ("vm", &vm.id),
                        ("group", &vm.group),
                        ("source", source),
                        ("status_class", class),
                    ],
                    *n,
                );
            }
        }
    }
}

/// Space and inodes of the filesystems in every VM's latest report; a figure an older
/// agent does not send is left out rather than shown as 0.
pub(super) fn filesystem_gauges(e: &mut Exposition, vms: &[VmSummary]) {
    type FsFamily = (&'static str, &'static str, fn(&Filesystem) -> Option<u64>);
    let families: [FsFamily; 5] = [
        (
            "rally_vm_filesystem_size_bytes",
            "Size of the filesystem.",
            |f| Some(f.total_bytes),
        ),
        (
            "rally_vm_filesystem_avail_bytes",
            "Bytes of the filesystem available to unprivileged users.",
            |f| Some(f.available_bytes),
        ),
        (
            "rally_vm_filesystem_free_bytes",
            "Free bytes of the filesystem, the blocks reserved for root included.",
            |f| f.free_bytes,
        ),
        (
            "rally_vm_filesystem_files",
            "Inodes of the filesystem in all.",
            |f| f.files,
        ),
        (
            "rally_vm_filesystem_files_free",
            "Free inodes of the filesystem.",
            |f| f.files_free,
        ),
    ];
    for (name, help, value) in families {
        e.family(name, Kind::Gauge, help);
        for vm in vms {
            let Some(report) = &vm.latest else { continue };
            for fs in &report.filesystems {
                let Some(v) = value(fs) else { continue };
                e.sample(
                    name,
                    &[
                        ("vm", &vm.id),
                        ("group", &vm.group),
                        ("device", &fs.device),
                        ("mountpoint", &fs.mount_point),
                        ("fstype", &fs.fs_type),
                    ],
                    v as f64,
                );
            }
        }
    }
}
