//! `/api/v1/vms` and `/api/v1/vms/{vm}`: the fleet as JSON, each VM with its rung, its
//! group's rules as they read on it and its web-server sources; and the rows of
//! `/api/v1/groups`. Field names are a contract for scripts: add, never rename.

use std::collections::BTreeMap;
use std::time::SystemTime;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::{HttpState, JSON, accepts_gzip, encoded_response, json_body};
use crate::clock::unix_seconds;
use crate::engine::{GroupStatus, MemberNow, RuleReading, members_now};
use crate::fleet::{
    CpuShares, DiskIo, Filesystem, FleetView, MetricValues, NetInterface, Pressure, ReportCounters,
    SourceReport, VmSize, VmSummary,
};
use rally_policy::Timestamp;

/// `GET /api/v1/vms`: every VM the fleet holds, built on a read thread.
pub async fn vms(State(state): State<HttpState>, headers: HeaderMap) -> Response {
    let gzip = accepts_gzip(&headers);
    let body = super::over_snapshot(
        state,
        "/api/v1/vms",
        |state, _, now| members_by_vm(state, now),
        move |vms, members| {
            let list = VmList {
                vms: vms
                    .iter()
                    .map(|vm| VmJson::new(vm, members.get(&*vm.id)))
                    .collect(),
            };
            json_body(&list, gzip)
        },
    )
    .await;
    encoded_response("/api/v1/vms", JSON, gzip, body)
}

/// `GET /api/v1/vms/{vm}`: one VM, 404 when the fleet does not hold it. Its rung and
/// rules come from every group's members, so it is built on a read thread too.
pub async fn vm(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let gzip = accepts_gzip(&headers);
    let reads = state.reads.clone();
    let what = format!("/api/v1/vms/{id}");
    let missing = format!("no VM {id:?}\n");
    let found = reads
        .run(move || {
            let now = state.clock.now();
            let vm = state.fleet.summary(&id, now)?;
            let members = members_by_vm(&state, now);
            Some(json_body(&VmJson::new(&vm, members.get(&*vm.id)), gzip))
        })
        .await;
    match found {
        Ok(None) => (StatusCode::NOT_FOUND, missing).into_response(),
        Ok(Some(body)) => encoded_response(&what, JSON, gzip, Ok(body)),
        Err(e) => encoded_response(&what, JSON, gzip, Err(e)),
    }
}

/// Every group member's rung and rule readings at `now`, by VM id.
fn members_by_vm(state: &HttpState, now: SystemTime) -> BTreeMap<String, MemberNow> {
    let view = FleetView::new(&state.fleet, now);
    state
        .engine
        .stats()
        .groups()
        .iter()
        .flat_map(|g| members_now(g, &view, Timestamp::from(now)))
        .map(|m| (m.vm.clone(), m))
        .collect()
}

/// Every group with its members as they read at `now` (the `/api/v1/groups` rows).
pub fn groups_now(state: &HttpState, now: SystemTime) -> Vec<GroupJson> {
    let view = FleetView::new(&state.fleet, now);
    state
        .engine
        .stats()
        .groups()
        .into_iter()
        .map(|status| GroupJson {
            vms: members_now(&status, &view, Timestamp::from(now)),
            status,
        })
        .collect()
}

/// One group of `GET /api/v1/groups`: its status and its members now.
#[derive(Debug, Serialize)]
pub struct GroupJson {
    /// The engine's status of the group.
    #[serde(flatten)]
    pub status: GroupStatus,
    /// Each member's rung and what each rule reads on it, in `members` order.
    pub vms: Vec<MemberNow>,
}

impl From<GroupStatus> for GroupJson {
    /// A group whose members have no readings (none reported).
    fn from(status: GroupStatus) -> Self {
        Self {
            vms: Vec::new(),
            status,
        }
    }
}

/// `GET /api/v1/vms`.
#[derive(Debug, Serialize)]
pub struct VmList {
    /// Every VM, in (group, id) order.
    pub vms: Vec<VmJson>,
}

/// One VM.
#[derive(Debug, Serialize)]
pub struct VmJson {
    /// VM id.
    pub vm: String,
    /// Group (`ungrouped` if none names it).
    pub group: String,
    /// Hostname its agent reported.
    pub hostname: Option<String>,
    /// Agent version.
    pub agent_version: Option<String>,
    /// Labels from the agent's config.
    pub labels: BTreeMap<String, String>,
    /// Reported within `ingest.stale_after`.
    pub fresh: bool,
    /// Seconds since the latest report was applied.
    pub last_report_age_seconds: Option<f64>,
    /// When it was applied (Unix seconds).
    pub last_report_timestamp_seconds: Option<f64>,
    /// Open agent streams.
    pub streams: u32,
    /// Latest known usable size.
    pub size: Option<VmSize>,
    /// The latest report.
    pub latest: Option<LatestJson>,
    /// 1-minute means.
    pub avg_1m: MetricValues,
    /// 5-minute means.
    pub avg_5m: MetricValues,
    /// Report counters since the collector started.
    pub reports: ReportCounters,
    /// The rung of its group's ladder its size matches (`null`: not on the ladder, no
    /// size yet, or a group without a ladder).
    pub rung: Option<String>,
    /// That rung's position, 0 being the smallest.
    pub rung_index: Option<usize>,
    /// Its group's rules as they read on it now: value, threshold, time held.
    pub rules: Vec<RuleReading>,
    /// Its web-server sources in the latest report, with their last figures.
    pub sources: Vec<SourceReport>,
}

/// The latest report, flattened for scripts.
#[derive(Debug, Serialize)]
pub struct LatestJson {
    /// Sequence number.
    pub seq: u64,
    /// Sample time by the agent's clock (Unix seconds).
    pub timestamp_seconds: f64,
    /// Interval covered, seconds.
    pub interval_seconds: f64,
    /// CPU utilization (0..1).
    pub cpu_utilization: Option<f64>,
    /// CPU steal (0..1).
    pub cpu_steal: Option<f64>,
    /// CPU iowait (0..1).
    pub cpu_iowait: Option<f64>,
    /// All CPU shares.
    pub cpu: Option<CpuShares>,
    /// Per-core shares.
    pub cores: Vec<CpuShares>,
    /// MemTotal.
    pub memory_total_bytes: Option<u64>,
    /// MemAvailable.
    pub memory_available_bytes: Option<u64>,
    /// SwapTotal.
    pub swap_total_bytes: Option<u64>,
    /// SwapFree.
    pub swap_free_bytes: Option<u64>,
    /// 1-minute load.
    pub load1: Option<f64>,
    /// 5-minute load.
    pub load5: Option<f64>,
    /// 15-minute load.
    pub load15: Option<f64>,
    /// PSI, `null` without it.
    pub pressure: Option<Pressure>,
    /// Network interfaces.
    pub net: Vec<NetInterface>,
    /// Block devices.
    pub disks: Vec<DiskIo>,
    /// Filesystems.
    pub filesystems: Vec<Filesystem>,
}

impl VmJson {
    /// `vm` with its rung and rule readings (`member`: `None` outside resized groups).
    pub fn new(vm: &VmSummary, member: Option<&MemberNow>) -> Self {
        let latest = vm.latest.as_ref().map(|r| LatestJson {
            seq: r.seq,
            timestamp_seconds: unix_seconds(r.timestamp),
            interval_seconds: r.interval.as_secs_f64(),
            cpu_utilization: r.cpu.map(|c| c.utilization),
            cpu_steal: r.cpu.map(|c| c.steal),
            cpu_iowait: r.cpu.map(|c| c.iowait),
            cpu: r.cpu,
            cores: r.cores.clone(),
            memory_total_bytes: r.memory.map(|m| m.total_bytes),
            memory_available_bytes: r.memory.map(|m| m.available_bytes),
            swap_total_bytes: r.memory.map(|m| m.swap_total_bytes),
            swap_free_bytes: r.memory.map(|m| m.swap_free_bytes),
            load1: r.load.map(|l| l.one),
            load5: r.load.map(|l| l.five),
            load15: r.load.map(|l| l.fifteen),
            pressure: r.pressure,
            net: r.net.clone(),
            disks: r.disks.clone(),
            filesystems: r.filesystems.clone(),
        });
        VmJson {
            vm: vm.id.to_string(),
            group: vm.group.to_string(),
            hostname: vm.hostname.as_deref().map(str::to_owned),
            agent_version: vm.agent_version.as_deref().map(str::to_owned),
            labels: (*vm.labels).clone(),
            fresh: vm.fresh,
            last_report_age_seconds: vm.last_report_age.map(|d| d.as_secs_f64()),
            last_report_timestamp_seconds: vm.last_report_at.map(unix_seconds),
            streams: vm.streams,
            size: vm.size,
            latest,
            avg_1m: vm.mean_1m,
            avg_5m: vm.mean_5m,
            reports: vm.counters,
            rung: member.and_then(|m| m.rung.clone()),
            rung_index: member.and_then(|m| m.rung_index),
            rules: member.map(|m| m.rules.clone()).unwrap_or_default(),
            sources: vm
                .latest
                .as_ref()
                .map(|r| r.sources.clone())
                .unwrap_or_default(),
        }
    }
}
