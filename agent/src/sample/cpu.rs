//! CPU time shares from `/proc/stat`, overall and per core.
//!
//! Utilization is (user + nice + system + irq + softirq) / all jiffies of the interval.
//! Steal (time the hypervisor gave to someone else) and iowait (idle with I/O pending)
//! are reported on their own and never count as busy: a bigger VM cures neither.
//! `sysinfo`'s usage figure counts steal as busy, hence `/proc/stat` itself.
//!
//! Parsed here rather than with procfs, which reads the whole file into a record
//! (the long `intr` and `softirq` lines included) at every sample: only the `cpu`
//! lines are needed, and the kernel prints them first.

use serde::Serialize;

use super::{SampleError, scan};

/// The file this signal reads, relative to the proc root.
pub const PATH: &str = "stat";

/// One line of `/proc/stat`, in jiffies since boot.
///
/// `guest` and `guest_nice` are left out: the kernel already counts them in `user` and
/// `nice`, and adding them again would count that time twice.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuCounters {
    /// Time in user mode.
    pub user: u64,
    /// Time in user mode at low priority.
    pub nice: u64,
    /// Time in kernel mode.
    pub system: u64,
    /// Idle time.
    pub idle: u64,
    /// Idle time with I/O outstanding (may decrease: see `shares`).
    pub iowait: u64,
    /// Time servicing interrupts.
    pub irq: u64,
    /// Time servicing softirqs.
    pub softirq: u64,
    /// Time stolen by the hypervisor.
    pub steal: u64,
}

impl CpuCounters {
    /// The counters of one `cpu` line, after its name: `user nice system idle`, then
    /// `iowait irq softirq steal` where the kernel has them (older ones count as
    /// zero); `guest` and `guest_nice` are left out (see the type's doc).
    fn parse(mut fields: scan::Words<'_>) -> Option<Self> {
        let mut next = |required: bool| match fields.next() {
            Some(word) => scan::u64(word),
            None if required => None,
            None => Some(0),
        };
        Some(Self {
            user: next(true)?,
            nice: next(true)?,
            system: next(true)?,
            idle: next(true)?,
            iowait: next(false)?,
            irq: next(false)?,
            softirq: next(false)?,
            steal: next(false)?,
        })
    }
}

/// One reading of `/proc/stat`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuReading {
    /// The `cpu` line: all online cores together.
    pub total: CpuCounters,
    /// The `cpuN` lines as `(N, counters)`, in file order. Offline cores have no line.
    pub cores: Vec<(u32, CpuCounters)>,
}

/// Shares of one interval's CPU time, each in 0..=1, adding up to 1.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CpuShares {
    /// User mode.
    pub user: f64,
    /// User mode at low priority.
    pub nice: f64,
    /// Kernel mode.
    pub system: f64,
    /// Interrupts.
    pub irq: f64,
    /// Softirqs.
    pub softirq: f64,
    /// Idle with I/O outstanding (not busy).
    pub iowait: f64,
    /// Stolen by the hypervisor (not busy).
    pub steal: f64,
    /// Idle.
    pub idle: f64,
    /// (user + nice + system + irq + softirq) / all.
    pub utilization: f64,
}

/// One core's shares over the interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CoreShares {
    /// The core's id (N of `cpuN`).
    pub id: u32,
    /// Its shares.
    #[serde(flatten)]
    pub shares: CpuShares,
}

/// Parses the text of `/proc/stat`: its `cpu` line and its `cpuN` lines, up to the
/// first line that is not a CPU's (the kernel prints them all first).
pub fn parse(text: impl AsRef<[u8]>) -> Result<CpuReading, SampleError> {
    let text = text.as_ref();
    let mut total = None;
    let mut cores = Vec::new();
    for line in scan::lines(text) {
        let Some(rest) = line.strip_prefix(b"cpu") else {
            break;
        };
        let name_end = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
        let (name, fields) = rest.split_at(name_end);
        let bad = |what: &str| {
            let name = String::from_utf8_lossy(name);
            SampleError::format(PATH, format!("cpu{name} {what}"))
        };
        let counters =
            CpuCounters::parse(scan::Words::new(fields)).ok_or_else(|| bad("is not counters"))?;
        if name.is_empty() {
            total = Some(counters);
        } else {
            // Cores are matched by id across CPU hot-plug, so the id is kept.
            let id = scan::u64(name)
                .and_then(|id| u32::try_from(id).ok())
                .ok_or_else(|| bad("has no numeric id"))?;
            cores.push((id, counters));
        }
    }
    let total = total.ok_or_else(|| SampleError::format(PATH, "no `cpu` line"))?;
    Ok(CpuReading { total, cores })
}

/// The shares of the interval between two readings of the same line, or `None` when
/// they cannot be trusted.
///
/// A counter that went backwards means the line was reset (or is garbage): the interval
/// is skipped rather than reported as a negative or >1 share. The one exception is
/// iowait, which the kernel documents may decrease; its delta then counts as zero.
/// An interval with no jiffies at all (readings taken within one tick) is skipped too.
pub fn shares(prev: &CpuCounters, cur: &CpuCounters) -> Option<CpuShares> {
    let d = |p: u64, c: u64| c.checked_sub(p);
    let user = d(prev.user, cur.user)?;
    let nice = d(prev.nice, cur.nice)?;
    let system = d(prev.system, cur.system)?;
    let idle = d(prev.idle, cur.idle)?;
    let irq = d(prev.irq, cur.irq)?;
    let softirq = d(prev.softirq, cur.softirq)?;
    let steal = d(prev.steal, cur.steal)?;
    let iowait = d(prev.iowait, cur.iowait).unwrap_or(0);
    let busy = user + nice + system + irq + softirq;
    let all = busy + idle + iowait + steal;
    if all == 0 {
        return None;
    }
    let share = |x: u64| x as f64 / all as f64;
    Some(CpuShares {
        user: share(user),
        nice: share(nice),
        system: share(system),
        irq: share(irq),
        softirq: share(softirq),
        iowait: share(iowait),
        steal: share(steal),
        idle: share(idle),
        utilization: share(busy),
    })
}

/// Per-core shares between two readings, matching cores by id. A core without a
/// previous reading (just brought online) or whose counters cannot be trusted is left
/// out of this interval.
pub fn core_shares(prev: &CpuReading, cur: &CpuReading) -> Vec<CoreShares> {
    cur.cores
        .iter()
        .filter_map(|(id, counters)| {
            let (_, before) = prev.cores.iter().find(|(p, _)| p == id)?;
            Some(CoreShares {
                id: *id,
                shares: shares(before, counters)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = include_str!("../../tests/fixtures/proc-stat-a.txt");
    const B: &str = include_str!("../../tests/fixtures/proc-stat-b.txt");
    const BACKWARDS: &str = include_str!("../../tests/fixtures/proc-stat-backwards.txt");
    const HOTPLUG: &str = include_str!("../../tests/fixtures/proc-stat-hotplug.txt");
    const STEAL_A: &str = include_str!("../../tests/fixtures/proc-stat-steal-a.txt");
    const STEAL_B: &str = include_str!("../../tests/fixtures/proc-stat-steal-b.txt");

    fn assert_valid(s: &CpuShares) {
        let parts = [
            s.user, s.nice, s.system, s.irq, s.softirq, s.iowait, s.steal, s.idle,
        ];
        for p in parts.into_iter().chain([s.utilization]) {
            assert!((0.0..=1.0).contains(&p), "share out of range: {s:?}");
        }
        let sum: f64 = parts.iter().sum();
        assert!((sum - 1.0).abs() < 1e-9, "shares add up to {sum}: {s:?}");
        let busy = s.user + s.nice + s.system + s.irq + s.softirq;
        assert!((busy - s.utilization).abs() < 1e-9);
    }

    #[test]
    fn parses_a_real_proc_stat() {
        let r = parse(A).unwrap();
        assert_eq!(r.total.user, 24530);
        assert_eq!(r.total.iowait, 1273);
        assert_eq!(r.total.steal, 141);
        assert_eq!(r.cores.iter().map(|c| c.0).collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(r.cores[1].1.softirq, 76);
    }

    #[test]
    fn shares_of_a_real_interval() {
        let (a, b) = (parse(A).unwrap(), parse(B).unwrap());
        let s = shares(&a.total, &b.total).unwrap();
        assert_valid(&s);
        // Δ: user 228, system 44, idle 6, iowait 2, softirq 1 → all 281.
        assert!((s.utilization - 273.0 / 281.0).abs() < 1e-12, "{s:?}");
        assert!((s.iowait - 2.0 / 281.0).abs() < 1e-12);
        let cores = core_shares(&a, &b);
        assert_eq!(cores.len(), 2);
        cores.iter().for_each(|c| assert_valid(&c.shares));
        // cpu0: user 111, system 25, idle 4, iowait 2 → 136/142.
        assert!((cores[0].shares.utilization - 136.0 / 142.0).abs() < 1e-12);
    }

    #[test]
    fn steal_and_iowait_are_never_busy() {
        let (a, b) = (parse(STEAL_A).unwrap(), parse(STEAL_B).unwrap());
        let s = shares(&a.total, &b.total).unwrap();
        assert_valid(&s);
        // Δ over 400 jiffies: user 100, system 20, iowait 40, steal 200, idle 40.
        assert!((s.utilization - 0.30).abs() < 1e-12, "{s:?}");
        assert!((s.steal - 0.50).abs() < 1e-12);
        assert!((s.iowait - 0.10).abs() < 1e-12);
    }

    #[test]
    fn a_counter_going_backwards_skips_that_core_only() {
        let (a, bad) = (parse(A).unwrap(), parse(BACKWARDS).unwrap());
        // cpu1's user counter went backwards; cpu0 and the total are sane except that
        // the total's iowait decreased, which the kernel allows.
        let cores = core_shares(&a, &bad);
        assert_eq!(cores.iter().map(|c| c.id).collect::<Vec<_>>(), vec![0]);
        assert_valid(&cores[0].shares);
        let total = shares(&a.total, &bad.total).unwrap();
        assert_valid(&total);
        assert_eq!(total.iowait, 0.0);
    }

    #[test]
    fn every_counter_going_backwards_yields_nothing() {
        let (a, b) = (parse(A).unwrap(), parse(B).unwrap());
        assert_eq!(shares(&b.total, &a.total), None);
        assert!(core_shares(&b, &a).is_empty());
    }

    #[test]
    fn no_jiffies_no_shares() {
        let a = parse(A).unwrap();
        assert_eq!(shares(&a.total, &a.total), None);
    }

    #[test]
    fn cores_are_matched_by_id_across_hotplug() {
        // In HOTPLUG, cpu1 went offline and cpu2 and cpu3 came online.
        let (a, h) = (parse(A).unwrap(), parse(HOTPLUG).unwrap());
        assert_eq!(
            h.cores.iter().map(|c| c.0).collect::<Vec<_>>(),
            vec![0, 2, 3]
        );
        let cores = core_shares(&a, &h);
        assert_eq!(cores.iter().map(|c| c.id).collect::<Vec<_>>(), vec![0]);
        // cpu0: user +100, idle +100 → 0.5; not cpu2 compared with cpu1's counters.
        assert!((cores[0].shares.utilization - 0.5).abs() < 1e-12);
        let back = core_shares(&h, &a);
        assert_eq!(
            back.iter().map(|c| c.id).collect::<Vec<_>>(),
            Vec::<u32>::new()
        );
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse("").is_err());
        assert!(parse("cpu  1 2 x 4\n").is_err());
        assert!(parse("cpu  1 2 3\n").is_err());
        assert!(parse("cpu  1 2 3 4\ncpuX 1 2 3 4\n").is_err());
        assert!(parse("intr 1 2 3\n").is_err());
    }

    #[test]
    fn an_old_kernels_short_lines_count_the_rest_as_zero() {
        let r = parse("cpu  10 1 5 100\ncpu0 10 1 5 100\nintr 7\n").unwrap();
        assert_eq!(r.total.idle, 100);
        assert_eq!((r.total.iowait, r.total.steal), (0, 0));
        assert_eq!(r.cores.len(), 1);
    }

    #[test]
    fn guest_time_is_not_counted_again_and_later_lines_are_not_read() {
        // guest 7 and guest_nice 9 are already in user and nice. After the cpu lines
        // the file is not parsed: a malformed later line changes nothing.
        let r = parse("cpu  10 1 5 100 2 3 4 6 7 9\ncpu3 10 1 5 100 2 3 4 6 7 9\nintr x\ncpu9 x\n")
            .unwrap();
        assert_eq!(r.total.steal, 6);
        assert_eq!(r.cores.iter().map(|c| c.0).collect::<Vec<_>>(), vec![3]);
    }
}
