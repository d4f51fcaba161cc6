//! Checks every field of an agent's message and converts it into the fleet's types.
//! Anything the rest of the collector relies on (ratios in 0..1, finite numbers,
//! bounded strings and lists) is guaranteed here, so nothing past the edge re-checks.
//!
//! A valid message costs no allocation beyond the converted values: a field's path
//! (`report.cores[3].steal`) is a chain of borrowed `Field`s on the stack, written
//! out only when a check fails.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use rally_proto::v1;

use crate::fleet::{
    AgentHealth, CpuShares, DiskIo, Filesystem, Hello, Latency, LoadAverage, MAX_SOURCES, Memory,
    NetInterface, PhpFpm, Pressure, PressureLine, PressureResource, Report, RunKey, SourceKind,
    SourceReport, StatusClasses, VmSize,
};
use crate::vm_id::validate_id;

/// Floating-point slack around the 0..1 (and 0..100) bounds of shares.
const EPSILON: f64 = 1e-6;
/// Longer texts (hostname, names) are refused.
const MAX_TEXT: usize = 253;
/// At most this many labels per agent.
const MAX_LABELS: usize = 64;
/// Longest label value.
const MAX_LABEL_VALUE: usize = 1024;
/// At most this many CPU cores in a report.
const MAX_CORES: usize = 8192;
/// At most this many interfaces, disks or filesystems in a report.
const MAX_DEVICES: usize = 1024;
/// An interval longer than a day is not a sampling interval.
const MAX_INTERVAL_MS: u64 = 86_400_000;
/// A VM larger than this many vCPUs is a bug, not a VM.
const MAX_VCPUS: u32 = 65_536;

/// Why a message was refused: the field path and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct Invalid {
    /// The field, e.g. `report.cpu.steal`.
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
}

/// The path of the field being checked, built on the stack as the checks descend and
/// rendered (by `Display`) only into an [`Invalid`].
#[derive(Debug, Clone, Copy)]
enum Field<'a> {
    /// A top-level path such as `report.cpu`.
    Root(&'static str),
    /// `parent.name`.
    Member(&'a Field<'a>, &'static str),
    /// `parent[index]`.
    Index(&'a Field<'a>, usize),
    /// `parent["key"]` (a map entry, the key quoted as Rust's `Debug` does).
    Key(&'a Field<'a>, &'a str),
}

impl<'a> Field<'a> {
    /// The member `name` of this field.
    fn at(&'a self, name: &'static str) -> Field<'a> {
        Field::Member(self, name)
    }

    /// The element `index` of this list.
    fn index(&'a self, index: usize) -> Field<'a> {
        Field::Index(self, index)
    }

    /// A refusal of this field.
    fn invalid(&self, problem: impl Into<String>) -> Invalid {
        Invalid {
            field: self.to_string(),
            problem: problem.into(),
        }
    }
}

impl fmt::Display for Field<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::Root(path) => f.write_str(path),
            Field::Member(parent, name) => write!(f, "{parent}.{name}"),
            Field::Index(parent, i) => write!(f, "{parent}[{i}]"),
            Field::Key(parent, key) => write!(f, "{parent}[{key:?}]"),
        }
    }
}

fn text(field: &Field, value: &str, max: usize, required: bool) -> Result<(), Invalid> {
    if required && value.is_empty() {
        return Err(field.invalid("must not be empty"));
    }
    if value.len() > max {
        return Err(field.invalid(format!("{} bytes long, at most {max} allowed", value.len())));
    }
    if value.chars().any(char::is_control) {
        return Err(field.invalid("contains control characters"));
    }
    Ok(())
}

fn finite_non_negative(field: &Field, value: f64) -> Result<f64, Invalid> {
    if !value.is_finite() || value < 0.0 {
        return Err(field.invalid(format!("{value} is not a finite number ≥ 0")));
    }
    Ok(value)
}

/// A value in `0..=max` (within [`EPSILON`]), clamped into the range.
fn bounded(field: &Field, value: f64, max: f64) -> Result<f64, Invalid> {
    if !value.is_finite() || value < -EPSILON || value > max + EPSILON {
        return Err(field.invalid(format!("{value} is outside 0..{max}")));
    }
    Ok(value.clamp(0.0, max))
}

fn size(field: &Field, size: Option<v1::VmSize>) -> Result<Option<VmSize>, Invalid> {
    let Some(size) = size else { return Ok(None) };
    if size.vcpus == 0 || size.vcpus > MAX_VCPUS {
        return Err(field
            .at("vcpus")
            .invalid(format!("{} is outside 1..={MAX_VCPUS}", size.vcpus)));
    }
    if size.memory_bytes == 0 {
        return Err(field.at("memory_bytes").invalid("must be more than 0"));
    }
    if size.offline_cpus > MAX_VCPUS {
        return Err(field
            .at("offline_cpus")
            .invalid(format!("{} is more than {MAX_VCPUS}", size.offline_cpus)));
    }
    // Offline memory as bytes; a product that overflows is nonsense from the agent.
    let offline_memory_bytes = u64::from(size.offline_memory_blocks)
        .checked_mul(size.memory_block_bytes)
        .ok_or_else(|| {
            field
                .at("offline_memory_blocks")
                .invalid("times memory_block_bytes overflows")
        })?;
    if size.offline_memory_blocks > 0 && size.memory_block_bytes == 0 {
        return Err(field
            .at("memory_block_bytes")
            .invalid("must be set when offline_memory_blocks is"));
    }
    Ok(Some(VmSize {
        vcpus: size.vcpus,
        memory_bytes: size.memory_bytes,
        offline_cpus: size.offline_cpus,
        offline_memory_bytes,
    }))
}

fn interval(field: &Field, ms: u32) -> Result<Duration, Invalid> {
    if u64::from(ms) > MAX_INTERVAL_MS {
        return Err(field.invalid(format!("{ms} ms is longer than a day")));
    }
    Ok(Duration::from_millis(u64::from(ms)))
}

/// Checks a `Hello`.
pub fn hello(msg: v1::Hello) -> Result<Hello, Invalid> {
    let root = Field::Root("hello");
    validate_id(&msg.vm_id).map_err(|why| root.at("vm_id").invalid(why))?;
    text(&root.at("hostname"), &msg.hostname, MAX_TEXT, false)?;
    text(&root.at("agent_version"), &msg.agent_version, 64, false)?;
    text(&root.at("boot_id"), &msg.boot_id, 64, true)?;
    let labels_field = root.at("labels");
    if msg.labels.len() > MAX_LABELS {
        return Err(labels_field.invalid(format!(
            "{} labels, at most {MAX_LABELS} allowed",
            msg.labels.len()
        )));
    }
    let mut labels = BTreeMap::new();
    for (key, value) in msg.labels {
        let field = Field::Key(&labels_field, &key);
        let valid_key = !key.is_empty()
            && key.len() <= 128
            && key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !valid_key {
            return Err(field.invalid(
                "a label name is 1..=128 characters of A-Z a-z 0-9 _ . - starting with a letter or _",
            ));
        }
        text(&field, &value, MAX_LABEL_VALUE, false)?;
        labels.insert(key, value);
    }
    let interval = match msg.interval_ms {
        0 => None,
        ms => Some(interval(&root.at("interval_ms"), ms)?),
    };
    Ok(Hello {
        vm_id: msg.vm_id,
        hostname: msg.hostname,
        agent_version: msg.agent_version,
        run: RunKey {
            boot_id: msg.boot_id,
            run_id: msg.run_id,
        },
        labels,
        size: size(&root.at("size"), msg.size)?,
        interval,
    })
}

fn cpu(field: &Field, c: v1::CpuTimes) -> Result<CpuShares, Invalid> {
    let share = |name: &'static str, v: f64| bounded(&field.at(name), v, 1.0);
    Ok(CpuShares {
        id: c.id,
        user: share("user", c.user)?,
        nice: share("nice", c.nice)?,
        system: share("system", c.system)?,
        irq: share("irq", c.irq)?,
        softirq: share("softirq", c.softirq)?,
        iowait: share("iowait", c.iowait)?,
        steal: share("steal", c.steal)?,
        idle: share("idle", c.idle)?,
        utilization: share("utilization", c.utilization)?,
    })
}

fn pressure_line(
    field: &Field,
    line: Option<v1::PressureLine>,
) -> Result<Option<PressureLine>, Invalid> {
    let Some(line) = line else { return Ok(None) };
    Ok(Some(PressureLine {
        avg10: bounded(&field.at("avg10"), line.avg10, 100.0)?,
        avg60: bounded(&field.at("avg60"), line.avg60, 100.0)?,
        avg300: bounded(&field.at("avg300"), line.avg300, 100.0)?,
        total_us: line.total_us,
    }))
}

fn pressure_resource(
    field: &Field,
    resource: Option<v1::PressureResource>,
) -> Result<Option<PressureResource>, Invalid> {
    let Some(resource) = resource else {
        return Ok(None);
    };
    Ok(Some(PressureResource {
        some: pressure_line(&field.at("some"), resource.some)?,
        full: pressure_line(&field.at("full"), resource.full)?,
    }))
}

fn devices<T, U>(
    field: &Field,
    items: Vec<T>,
    convert: impl Fn(&Field, T) -> Result<U, Invalid>,
) -> Result<Vec<U>, Invalid> {
    if items.len() > MAX_DEVICES {
        return Err(field.invalid(format!(
            "{} entries, at most {MAX_DEVICES} allowed",
            items.len()
        )));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| convert(&field.index(i), item))
        .collect()
}

/// Checks the web-server sources of a report: bounded, names unique and label-safe,
/// figures finite and non-negative, quantiles in order.
fn sources(field: &Field, items: Vec<v1::SourceReport>) -> Result<Vec<SourceReport>, Invalid> {
    if items.len() > MAX_SOURCES {
        return Err(field.invalid(format!(
            "{} sources, at most {MAX_SOURCES} allowed",
            items.len()
        )));
    }
    let mut out: Vec<SourceReport> = Vec::with_capacity(items.len());
    for (i, s) in items.into_iter().enumerate() {
        let field = field.index(i);
        let valid_name = !s.name.is_empty()
            && s.name.len() <= 64
            && s.name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if !valid_name {
            return Err(field
                .at("name")
                .invalid("a source name is 1..=64 characters of a-z 0-9 _ -"));
        }
        if out.iter().any(|o| o.name == s.name) {
            return Err(field
                .at("name")
                .invalid(format!("`{}` appears twice", s.name)));
        }
        let kind = SourceKind::ALL
            .into_iter()
            .find(|k| k.name() == s.kind)
            .ok_or_else(|| {
                field
                    .at("kind")
                    .invalid(format!("unknown source kind {:?}", s.kind))
            })?;
        text(&field.at("error"), &s.error, 1024, false)?;
        let rate = s
            .requests_per_second
            .map(|r| finite_non_negative(&field.at("requests_per_second"), r))
            .transpose()?;
        let latency = match s.latency {
            None => None,
            Some(l) => {
                let latency_field = field.at("latency");
                let q = |name: &'static str, v| finite_non_negative(&latency_field.at(name), v);
                let (p50, p95, p99) = (
                    q("p50_seconds", l.p50_seconds)?,
                    q("p95_seconds", l.p95_seconds)?,
                    q("p99_seconds", l.p99_seconds)?,
                );
                if !(p50 <= p95 && p95 <= p99) {
                    return Err(latency_field.invalid(format!(
                        "quantiles out of order: p50 {p50}, p95 {p95}, p99 {p99}"
                    )));
                }
                Some(Latency {
                    count: l.count,
                    p50_seconds: p50,
                    p95_seconds: p95,
                    p99_seconds: p99,
                })
            }
        };
        let busy = s
            .nginx
            .map(|n| n.reading.saturating_add(n.writing))
            .or(s.apache.as_ref().map(|a| a.busy_workers))
            .or(s.php_fpm.map(|p| p.active_processes));
        out.push(SourceReport {
            name: s.name,
            kind,
            counted_by: Some(s.counted_by).filter(|c| !c.is_empty()),
            // A source that is down carries no figures, whatever the message says.
            up: s.up,
            down_total: s.down_total,
            interval: interval(&field.at("interval_ms"), s.interval_ms)?,
            requests: if s.up { s.requests } else { 0 },
            requests_per_second: rate.filter(|_| s.up && s.interval_ms > 0),
            statuses: s.statuses.filter(|_| s.up).map(|c| StatusClasses {
                informational: c.informational,
                success: c.success,
                redirection: c.redirection,
                client_error: c.client_error,
                server_error: c.server_error,
            }),
            latency: latency.filter(|_| s.up),
            busy: busy.filter(|_| s.up),
            php_fpm: s.php_fpm.filter(|_| s.up).map(|p| PhpFpm {
                listen_queue: p.listen_queue,
                idle_processes: p.idle_processes,
                active_processes: p.active_processes,
                total_processes: p.total_processes,
                max_children_reached: p.max_children_reached,
                slow_requests: p.slow_requests,
            }),
        });
    }
    for (i, s) in out.iter().enumerate() {
        if let Some(counter) = &s.counted_by {
            let counts_for_itself = out
                .iter()
                .any(|c| &c.name == counter && c.name != s.name && c.counted_by.is_none());
            if !counts_for_itself {
                return Err(field.index(i).at("counted_by").invalid(format!(
                    "`{counter}` is not another source of the report that counts for itself"
                )));
            }
        }
    }
    Ok(out)
}

/// Checks a `Report`.
pub fn report(msg: v1::Report) -> Result<Report, Invalid> {
    let root = Field::Root("report");
    if msg.seq == 0 {
        return Err(root.at("seq").invalid("must be more than 0"));
    }
    if msg.timestamp_ms <= 0 {
        return Err(root
            .at("timestamp_ms")
            .invalid(format!("{} is not after 1970", msg.timestamp_ms)));
    }
    let timestamp = SystemTime::UNIX_EPOCH + Duration::from_millis(msg.timestamp_ms.unsigned_abs());
    let cores_field = root.at("cores");
    if msg.cores.len() > MAX_CORES {
        return Err(cores_field.invalid(format!(
            "{} cores, at most {MAX_CORES} allowed",
            msg.cores.len()
        )));
    }
    let memory = match msg.memory {
        None => None,
        Some(m) => {
            let memory_field = root.at("memory");
            if m.available_bytes > m.total_bytes {
                return Err(memory_field.at("available_bytes").invalid(format!(
                    "{} is more than total_bytes {}",
                    m.available_bytes, m.total_bytes
                )));
            }
            if m.swap_free_bytes > m.swap_total_bytes {
                return Err(memory_field.at("swap_free_bytes").invalid(format!(
                    "{} is more than swap_total_bytes {}",
                    m.swap_free_bytes, m.swap_total_bytes
                )));
            }
            Some(Memory {
                total_bytes: m.total_bytes,
                available_bytes: m.available_bytes,
                swap_total_bytes: m.swap_total_bytes,
                swap_free_bytes: m.swap_free_bytes,
            })
        }
    };
    let load = match msg.load {
        None => None,
        Some(l) => {
            let load_field = root.at("load");
            Some(LoadAverage {
                one: finite_non_negative(&load_field.at("one"), l.one)?,
                five: finite_non_negative(&load_field.at("five"), l.five)?,
                fifteen: finite_non_negative(&load_field.at("fifteen"), l.fifteen)?,
            })
        }
    };
    let pressure = match msg.pressure {
        None => None,
        Some(p) => {
            let pressure_field = root.at("pressure");
            Some(Pressure {
                cpu: pressure_resource(&pressure_field.at("cpu"), p.cpu)?,
                memory: pressure_resource(&pressure_field.at("memory"), p.memory)?,
                io: pressure_resource(&pressure_field.at("io"), p.io)?,
            })
        }
    };
    Ok(Report {
        seq: msg.seq,
        timestamp,
        interval: interval(&root.at("interval_ms"), msg.interval_ms)?,
        size: size(&root.at("size"), msg.size)?,
        cpu: msg.cpu.map(|c| cpu(&root.at("cpu"), c)).transpose()?,
        cores: msg
            .cores
            .into_iter()
            .enumerate()
            .map(|(i, c)| cpu(&cores_field.index(i), c))
            .collect::<Result<_, _>>()?,
        load,
        memory,
        pressure,
        net: devices(&root.at("net"), msg.net, |field, n| {
            text(&field.at("name"), &n.name, 64, true)?;
            let rate = |name: &'static str, v| finite_non_negative(&field.at(name), v);
            Ok(NetInterface {
                rx_bytes_per_second: rate("rx_bytes_per_second", n.rx_bytes_per_second)?,
                tx_bytes_per_second: rate("tx_bytes_per_second", n.tx_bytes_per_second)?,
                rx_packets_per_second: rate("rx_packets_per_second", n.rx_packets_per_second)?,
                tx_packets_per_second: rate("tx_packets_per_second", n.tx_packets_per_second)?,
                rx_errors: n.rx_errors,
                tx_errors: n.tx_errors,
                name: n.name,
            })
        })?,
        disks: devices(&root.at("disks"), msg.disks, |field, d| {
            text(&field.at("name"), &d.name, 64, true)?;
            let rate = |name: &'static str, v| finite_non_negative(&field.at(name), v);
            Ok(DiskIo {
                read_bytes_per_second: rate("read_bytes_per_second", d.read_bytes_per_second)?,
                write_bytes_per_second: rate("write_bytes_per_second", d.write_bytes_per_second)?,
                busy_ratio: bounded(&field.at("busy_ratio"), d.busy_ratio, 1.0)?,
                reads_per_second: d
                    .reads_per_second
                    .map(|v| rate("reads_per_second", v))
                    .transpose()?,
                writes_per_second: d
                    .writes_per_second
                    .map(|v| rate("writes_per_second", v))
                    .transpose()?,
                name: d.name,
            })
        })?,
        filesystems: devices(&root.at("filesystems"), msg.filesystems, |field, f| {
            text(&field.at("mount_point"), &f.mount_point, 4096, true)?;
            text(&field.at("fs_type"), &f.fs_type, 64, false)?;
            text(&field.at("device"), &f.device, 4096, false)?;
            let at_most = |name: &'static str, v: Option<u64>, max: Option<u64>| match (v, max) {
                (Some(v), Some(max)) if v > max => Err(field
                    .at(name)
                    .invalid(format!("{v} is more than the {max} in all"))),
                _ => Ok(v),
            };
            Ok(Filesystem {
                free_bytes: at_most("free_bytes", f.free_bytes, Some(f.total_bytes))?,
                files_free: at_most("files_free", f.files_free, f.files)?,
                files: f.files,
                device: f.device,
                mount_point: f.mount_point,
                fs_type: f.fs_type,
                total_bytes: f.total_bytes,
                available_bytes: f.available_bytes,
            })
        })?,
        dropped: msg.dropped,
        agent: AgentHealth {
            buffered: msg.agent_buffered,
            reconnects: msg.agent_reconnects,
        },
        sources: sources(&root.at("sources"), msg.sources)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Breaks one field of a good message.
    type Spoil<T> = Box<dyn Fn(&mut T)>;

    fn good_hello() -> v1::Hello {
        v1::Hello {
            vm_id: "web-1".into(),
            hostname: "web-1.shop".into(),
            agent_version: "0.1.0".into(),
            boot_id: "2f0c7c1e-4e7b-4c36-9d1e-0f8f8a1d2b3c".into(),
            run_id: 42,
            labels: [("role".to_string(), "web".to_string())].into(),
            size: Some(v1::VmSize {
                vcpus: 2,
                memory_bytes: 4 << 30,
                ..Default::default()
            }),
            interval_ms: 5000,
        }
    }

    fn good_report() -> v1::Report {
        v1::Report {
            seq: 1,
            timestamp_ms: 1_700_000_000_000,
            interval_ms: 5000,
            size: Some(v1::VmSize {
                vcpus: 2,
                memory_bytes: 4 << 30,
                ..Default::default()
            }),
            cpu: Some(v1::CpuTimes {
                user: 0.3,
                system: 0.1,
                steal: 0.05,
                idle: 0.55,
                utilization: 0.4,
                ..Default::default()
            }),
            memory: Some(v1::Memory {
                total_bytes: 4 << 30,
                available_bytes: 1 << 30,
                swap_total_bytes: 0,
                swap_free_bytes: 0,
            }),
            pressure: Some(v1::Pressure {
                cpu: Some(v1::PressureResource {
                    some: Some(v1::PressureLine {
                        avg10: 12.5,
                        ..Default::default()
                    }),
                    full: None,
                }),
                memory: None,
                io: None,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn good_messages_convert() {
        let hello = hello(good_hello()).unwrap();
        assert_eq!(hello.vm_id, "web-1");
        assert_eq!(hello.run.run_id, 42);
        assert_eq!(hello.labels["role"], "web");
        assert_eq!(hello.interval, Some(Duration::from_secs(5)));
        let report = report(good_report()).unwrap();
        assert_eq!(report.cpu.unwrap().utilization, 0.4);
        let psi = report.pressure.unwrap().cpu.unwrap().some.unwrap();
        assert_eq!(psi.avg10, 12.5);
    }

    fn good_source() -> v1::SourceReport {
        v1::SourceReport {
            name: "shop-log".into(),
            kind: "access_log".into(),
            up: true,
            interval_ms: 5000,
            requests: 500,
            requests_per_second: Some(100.0),
            statuses: Some(v1::StatusClasses {
                success: 490,
                server_error: 10,
                ..Default::default()
            }),
            latency: Some(v1::Latency {
                count: 500,
                p50_seconds: 0.01,
                p95_seconds: 0.2,
                p99_seconds: 0.5,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn sources_convert_and_a_down_one_carries_no_figures() {
        let mut r = good_report();
        let mut down = good_source();
        down.name = "nginx".into();
        down.kind = "nginx".into();
        down.up = false;
        down.down_total = 3;
        r.sources = vec![good_source(), down];
        let report = report(r).unwrap();
        let s = &report.sources[0];
        assert_eq!(
            (s.kind, s.requests, s.requests_per_second),
            (SourceKind::AccessLog, 500, Some(100.0))
        );
        assert_eq!(s.statuses.unwrap().server_error, 10);
        let d = &report.sources[1];
        assert_eq!(
            (d.up, d.down_total, d.requests_per_second, d.requests),
            (false, 3, None, 0)
        );
        assert_eq!(report.requests_per_second(), Some(100.0));
        assert_eq!(report.server_error_ratio(), Some(0.02));
        assert_eq!(report.latency_p95_seconds(), Some(0.2));
    }

    #[test]
    fn bad_sources_name_their_field() {
        let cases: Vec<(&str, Spoil<v1::SourceReport>)> = vec![
            (
                "report.sources[0].name",
                Box::new(|s| s.name = "Shop Log".into()),
            ),
            (
                "report.sources[0].kind",
                Box::new(|s| s.kind = "squid".into()),
            ),
            (
                "report.sources[0].requests_per_second",
                Box::new(|s| s.requests_per_second = Some(-1.0)),
            ),
            (
                "report.sources[0].latency",
                Box::new(|s| s.latency.as_mut().unwrap().p50_seconds = 9.0),
            ),
            (
                "report.sources[0].latency.p99_seconds",
                Box::new(|s| s.latency.as_mut().unwrap().p99_seconds = f64::NAN),
            ),
            (
                "report.sources[0].counted_by",
                Box::new(|s| s.counted_by = "nginx".into()),
            ),
            (
                "report.sources[0].counted_by",
                Box::new(|s| s.counted_by = "shop-log".into()),
            ),
        ];
        for (field, spoil) in cases {
            let mut source = good_source();
            spoil(&mut source);
            let mut r = good_report();
            r.sources = vec![source];
            let err = report(r).unwrap_err();
            assert_eq!(err.field, field, "{err}");
        }
        let mut r = good_report();
        r.sources = vec![good_source(), good_source()];
        assert_eq!(report(r).unwrap_err().field, "report.sources[1].name");
        let mut r = good_report();
        r.sources = vec![good_source(); MAX_SOURCES + 1];
        assert_eq!(report(r).unwrap_err().field, "report.sources");
    }

    #[test]
    fn a_source_counted_by_another_converts_and_a_chain_is_refused() {
        let nginx = v1::SourceReport {
            name: "nginx".into(),
            kind: "nginx".into(),
            up: true,
            interval_ms: 5000,
            requests: 500,
            requests_per_second: Some(100.0),
            ..Default::default()
        };
        let log = v1::SourceReport {
            counted_by: "nginx".into(),
            ..good_source()
        };
        let mut r = good_report();
        r.sources = vec![log.clone(), nginx.clone()];
        let converted = report(r).unwrap();
        assert_eq!(converted.sources[0].counted_by.as_deref(), Some("nginx"));
        assert_eq!(
            converted.sources[1].counted_by, None,
            "empty: counts for itself"
        );
        assert_eq!(converted.requests_per_second(), Some(100.0));
        assert_eq!(converted.server_error_ratio(), Some(0.02));

        let copy = v1::SourceReport {
            name: "copy".into(),
            counted_by: "shop-log".into(),
            ..good_source()
        };
        let mut r = good_report();
        r.sources = vec![nginx, log, copy];
        assert_eq!(report(r).unwrap_err().field, "report.sources[2].counted_by");
    }

    #[test]
    fn offline_capacity_converts_to_bytes() {
        let mut r = good_report();
        let size = r.size.as_mut().unwrap();
        (
            size.offline_cpus,
            size.offline_memory_blocks,
            size.memory_block_bytes,
        ) = (2, 8, 128 << 20);
        let size = report(r).unwrap().size.unwrap();
        assert_eq!((size.offline_cpus, size.offline_memory_bytes), (2, 1 << 30));
        assert!(size.has_offline_capacity());
        // An agent older than these fields sends zeros: nothing offline.
        let size = report(good_report()).unwrap().size.unwrap();
        assert!(!size.has_offline_capacity());
    }

    #[test]
    fn ratios_get_a_small_epsilon_and_are_clamped() {
        let mut r = good_report();
        r.cpu.as_mut().unwrap().utilization = 1.0 + 1e-9;
        assert_eq!(report(r).unwrap().cpu.unwrap().utilization, 1.0);
    }

    #[test]
    fn bad_values_name_their_field() {
        let cases: Vec<(&str, Spoil<v1::Report>)> = vec![
            ("report.seq", Box::new(|r| r.seq = 0)),
            ("report.timestamp_ms", Box::new(|r| r.timestamp_ms = -5)),
            (
                "report.cpu.steal",
                Box::new(|r| r.cpu.as_mut().unwrap().steal = 1.5),
            ),
            (
                "report.cpu.utilization",
                Box::new(|r| r.cpu.as_mut().unwrap().utilization = f64::NAN),
            ),
            (
                "report.cpu.user",
                Box::new(|r| r.cpu.as_mut().unwrap().user = -0.1),
            ),
            (
                "report.memory.available_bytes",
                Box::new(|r| r.memory.as_mut().unwrap().available_bytes = 5 << 30),
            ),
            (
                "report.size.vcpus",
                Box::new(|r| r.size.as_mut().unwrap().vcpus = 0),
            ),
            (
                "report.size.memory_block_bytes",
                Box::new(|r| r.size.as_mut().unwrap().offline_memory_blocks = 3),
            ),
            (
                "report.size.offline_memory_blocks",
                Box::new(|r| {
                    let s = r.size.as_mut().unwrap();
                    (s.offline_memory_blocks, s.memory_block_bytes) = (u32::MAX, u64::MAX);
                }),
            ),
            (
                "report.size.offline_cpus",
                Box::new(|r| r.size.as_mut().unwrap().offline_cpus = u32::MAX),
            ),
            (
                "report.load.one",
                Box::new(|r| {
                    r.load = Some(v1::LoadAverage {
                        one: f64::INFINITY,
                        five: 0.0,
                        fifteen: 0.0,
                    })
                }),
            ),
            (
                "report.pressure.cpu.some.avg10",
                Box::new(|r| {
                    r.pressure
                        .as_mut()
                        .unwrap()
                        .cpu
                        .as_mut()
                        .unwrap()
                        .some
                        .as_mut()
                        .unwrap()
                        .avg10 = 101.0
                }),
            ),
            ("report.interval_ms", Box::new(|r| r.interval_ms = u32::MAX)),
            (
                "report.net[0].name",
                Box::new(|r| r.net = vec![v1::NetInterface::default()]),
            ),
            (
                "report.disks[0].busy_ratio",
                Box::new(|r| {
                    r.disks = vec![v1::DiskIo {
                        name: "vda".into(),
                        busy_ratio: 2.0,
                        ..Default::default()
                    }]
                }),
            ),
            (
                "report.disks[0].reads_per_second",
                Box::new(|r| {
                    r.disks = vec![v1::DiskIo {
                        name: "vda".into(),
                        reads_per_second: Some(f64::NAN),
                        ..Default::default()
                    }]
                }),
            ),
            (
                "report.filesystems[0].free_bytes",
                Box::new(|r| {
                    r.filesystems = vec![v1::Filesystem {
                        mount_point: "/".into(),
                        total_bytes: 100,
                        free_bytes: Some(101),
                        ..Default::default()
                    }]
                }),
            ),
            (
                "report.filesystems[0].files_free",
                Box::new(|r| {
                    r.filesystems = vec![v1::Filesystem {
                        mount_point: "/".into(),
                        total_bytes: 100,
                        files: Some(10),
                        files_free: Some(11),
                        ..Default::default()
                    }]
                }),
            ),
            (
                "report.cores[1].idle",
                Box::new(|r| {
                    r.cores = vec![
                        v1::CpuTimes::default(),
                        v1::CpuTimes {
                            idle: -1.0,
                            ..Default::default()
                        },
                    ]
                }),
            ),
        ];
        for (field, spoil) in cases {
            let mut r = good_report();
            spoil(&mut r);
            let err = report(r).unwrap_err();
            assert_eq!(err.field, field, "{err}");
        }
    }

    #[test]
    fn bad_hellos_name_their_field() {
        let cases: Vec<(&str, Spoil<v1::Hello>)> = vec![
            ("hello.vm_id", Box::new(|h| h.vm_id.clear())),
            ("hello.vm_id", Box::new(|h| h.vm_id = "web 1".into())),
            ("hello.vm_id", Box::new(|h| h.vm_id = "x".repeat(300))),
            ("hello.boot_id", Box::new(|h| h.boot_id.clear())),
            ("hello.hostname", Box::new(|h| h.hostname = "a\nb".into())),
            (
                "hello.labels[\"9x\"]",
                Box::new(|h| {
                    h.labels.insert("9x".into(), "v".into());
                }),
            ),
            (
                "hello.size.memory_bytes",
                Box::new(|h| h.size.as_mut().unwrap().memory_bytes = 0),
            ),
        ];
        for (field, spoil) in cases {
            let mut h = good_hello();
            spoil(&mut h);
            let err = hello(h).unwrap_err();
            assert_eq!(err.field, field, "{err}");
        }
    }
}
