//! Scale-down evidence: the last lookback (24 h) must fit the next smaller rung with a
//! margin, and every metric must be present for all of it.

use std::time::Duration;

use super::decision::Evidence;
use super::group::ScaleDown;
use super::ladder::Rung;
use super::metric::Metric;
use super::view::MetricView;

/// Checks that `vm`, now on `current` with `memory_total_bytes` of MemTotal, would fit
/// `smaller`: p95 CPU × (vcpus now / vcpus smaller) × (1 + margin) < cpu_ceiling, and peak
/// memory used × (1 + margin) < memory_ceiling × smaller memory. The caller has checked
/// that the lookback starts after the VM's last warm-up.
pub fn evidence<V: MetricView + ?Sized>(
    view: &V,
    vm: &str,
    cfg: &ScaleDown,
    current: &Rung,
    smaller: &Rung,
    memory_total_bytes: u64,
) -> Result<Vec<Evidence>, String> {
    let lookback = cfg.lookback;
    let span = humantime::format_duration(Duration::from_secs(lookback.as_secs())).to_string();
    let cpu = view
        .p95_of_minute_means(vm, Metric::CpuUtilization, lookback)
        .filter(|s| s.complete)
        .ok_or_else(|| format!("cpu_utilization not present for the whole {span}"))?;
    let mem = view
        .max(vm, Metric::MemoryUsedRatio, lookback)
        .filter(|s| s.complete)
        .ok_or_else(|| format!("memory_used_ratio not present for the whole {span}"))?;
    let factor = 1.0 + cfg.margin;
    let cpu_projected = cpu.value * f64::from(current.vcpus) / f64::from(smaller.vcpus) * factor;
    if cpu_projected >= cfg.cpu_ceiling {
        return Err(format!(
            "p95 cpu {:.3} over {span} projects to {cpu_projected:.3} on {} (needs < {})",
            cpu.value, smaller.name, cfg.cpu_ceiling
        ));
    }
    let peak_used = mem.value * memory_total_bytes as f64;
    let mem_limit = cfg.memory_ceiling * smaller.memory_bytes as f64;
    if peak_used * factor >= mem_limit {
        return Err(format!(
            "peak memory used {:.0} B over {span} (+{:.0} %) does not fit {:.0} B on {}",
            peak_used,
            cfg.margin * 100.0,
            mem_limit,
            smaller.name
        ));
    }
    Ok(vec![
        Evidence {
            metric: Metric::CpuUtilization,
            window: format!("{span} p95 of 1m means"),
            value: cpu_projected,
            threshold: cfg.cpu_ceiling,
            comparison: "<".into(),
            rule: format!(
                "p95 cpu {:.3} × {}/{} vCPUs × {factor} fits {}",
                cpu.value, current.vcpus, smaller.vcpus, smaller.name
            ),
            held_for_seconds: Some(lookback.as_secs()),
            forecast: None,
        },
        Evidence {
            metric: Metric::MemoryUsedRatio,
            window: format!("{span} peak of 1m means"),
            value: peak_used * factor / smaller.memory_bytes as f64,
            threshold: cfg.memory_ceiling,
            comparison: "<".into(),
            rule: format!(
                "peak memory used {:.0} B × {factor} < {} × {} B of {}",
                peak_used, cfg.memory_ceiling, smaller.memory_bytes, smaller.name
            ),
            held_for_seconds: Some(lookback.as_secs()),
            forecast: None,
        },
    ])
}
