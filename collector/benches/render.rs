//! What one `/metrics` scrape and one `/api/v1/vms` read cost at fleet scale.
//!
//! Fills a real [`Fleet`] directly, without a network: N VMs (default 20 000), each
//! with a `Hello` and then a real agent's report every interval (default 1 s, the
//! fleet scenario's rate) for [`RAW_RETENTION`], so every window the scrape reads is
//! full. Then, a few times over, it times what a read thread does for each request:
//! the fleet snapshot alone, the `/metrics` text, `/metrics` compressed as it is
//! rendered (what Prometheus gets), and the API's JSON, plain and compressed. It
//! prints the resident memory and what the windows hold on the heap per VM (the rings
//! of the 24 h history are allocated whole at a VM's first minute), milliseconds per
//! request and microseconds per VM, and the bodies' sizes.
//!
//! Run: `cargo bench -p rally-collector --bench render`; `RALLY_BENCH_VMS` and
//! `RALLY_BENCH_INTERVAL_SECS` change the fleet. `scripts/bench --only render` runs it.

use std::time::{Duration, Instant, SystemTime};

use anyhow::Result;
use rally_collector::config::UnknownVms;
use rally_collector::engine::EngineStats;
use rally_collector::fleet::{Fleet, FleetSettings, Histories, RAW_RETENTION};
use rally_collector::ha::Leadership;
use rally_collector::http::api::{VmJson, VmList};
use rally_collector::ingest::{IngestStats, validate};

mod support;
use support::{env_or, hello, report, rss_kib};

/// How many times each request is timed.
const ROUNDS: usize = 3;

/// Best and mean of `ROUNDS` timings of `f`, and its last result.
fn timed<T>(mut f: impl FnMut() -> Result<T>) -> Result<(Duration, Duration, T)> {
    let mut best = Duration::MAX;
    let mut total = Duration::ZERO;
    let mut last = None;
    for _ in 0..ROUNDS {
        let began = Instant::now();
        let out = f()?;
        let took = began.elapsed();
        best = best.min(took);
        total += took;
        last = Some(out);
    }
    let last = last.ok_or_else(|| anyhow::anyhow!("no round ran"))?;
    Ok((best, total / ROUNDS as u32, last))
}

fn main() -> Result<()> {
    let vms = usize::try_from(env_or("RALLY_BENCH_VMS", 20_000)?)?;
    let interval = Duration::from_secs(env_or("RALLY_BENCH_INTERVAL_SECS", 1)?.max(1));
    let end = SystemTime::now();
    let start = end - RAW_RETENTION;
    let fleet = Fleet::new(FleetSettings {
        stale_after: Duration::from_secs(60),
        forget_after: Duration::from_secs(86_400),
        unknown_vms: UnknownVms::Ungrouped,
        max_vms: vms,
        groups: Vec::new(),
        histories: Histories::CHARTED,
    });
    let rss_before = rss_kib()?;
    let began = Instant::now();
    for vm in 0..vms {
        let session = fleet
            .hello(&hello(vm, interval), start)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut t = start;
        let mut seq = 0;
        while t <= end {
            seq += 1;
            let checked = validate::report(report(seq, t, interval)?)
                .map_err(|e| anyhow::anyhow!("report {seq} is invalid: {e}"))?;
            session.apply(checked, t);
            t += interval;
        }
    }
    println!(
        "render: {vms} VMs, {} of reports at {}s each, filled in {:.1} s",
        humantime::format_duration(RAW_RETENTION),
        interval.as_secs(),
        began.elapsed().as_secs_f64(),
    );
    let rss_after = rss_kib()?;
    let mut windows_bytes = 0usize;
    fleet.for_each_vm(|vm| windows_bytes += vm.windows().heap_bytes());
    println!(
        "render: RSS {} MiB before, {} MiB after: {:.1} KiB per VM; windows {:.1} KiB on the heap per VM",
        rss_before / 1024,
        rss_after / 1024,
        rss_after.saturating_sub(rss_before) as f64 / vms.max(1) as f64,
        windows_bytes as f64 / vms.max(1) as f64 / 1024.0,
    );

    let stats = IngestStats::default();
    let engine = EngineStats::default();
    let leadership = Leadership::Single;
    let collector = rally_collector::metrics::Collector {
        fleet: &fleet,
        stats: &stats,
        engine: &engine,
        leadership: &leadership,
    };
    let report = |what: &str, best: Duration, mean: Duration, bytes: Option<usize>| {
        let size = bytes.map_or(String::new(), |b| format!(", {:.1} MB", b as f64 / 1e6));
        println!(
            "render: {what:<24} best {:>7.1} ms, mean {:>7.1} ms ({:.1} µs per VM){size}",
            best.as_secs_f64() * 1e3,
            mean.as_secs_f64() * 1e3,
            mean.as_secs_f64() * 1e6 / vms.max(1) as f64,
        );
    };

    let (best, mean, snapshot) = timed(|| Ok(fleet.snapshot(end)))?;
    report("snapshot", best, mean, None);
    let (best, mean, text) = timed(|| Ok(rally_collector::metrics::render(&collector, end)))?;
    report("/metrics text", best, mean, Some(text.len()));
    let (best, mean, gzip) = timed(|| {
        let mut body = rally_collector::http::gzip_writer();
        let vms = fleet.snapshot(end);
        rally_collector::metrics::render_vms_to(&mut body, &vms)?;
        rally_collector::metrics::render_collector_to(&mut body, &collector, vms.len(), end)?;
        rally_collector::metrics::render_process_to(&mut body)?;
        Ok(body.finish()?)
    })?;
    report("/metrics gzip (rendered)", best, mean, Some(gzip.len()));
    // What `/api/v1/vms` serializes (no group, so no rung): a fresh snapshot each time.
    let vm_list = || VmList {
        vms: fleet
            .snapshot(end)
            .iter()
            .map(|vm| VmJson::new(vm, None))
            .collect(),
    };
    let (best, mean, json) = timed(|| Ok(serde_json::to_vec(&vm_list())?))?;
    report("/api/v1/vms JSON", best, mean, Some(json.len()));
    let (best, mean, json_gzip) = timed(|| {
        let list = vm_list();
        let mut body =
            std::io::BufWriter::with_capacity(64 * 1024, rally_collector::http::gzip_writer());
        serde_json::to_writer(&mut body, &list)?;
        Ok(body.into_inner().map_err(|e| e.into_error())?.finish()?)
    })?;
    report("/api/v1/vms JSON gzip", best, mean, Some(json_gzip.len()));
    drop(snapshot);
    Ok(())
}
