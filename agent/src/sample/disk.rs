//! Block device throughput from `/proc/diskstats`, whole disks only.
//!
//! A whole disk is a device listed in `/sys/block` (partitions live under their disk
//! there); loop, RAM and floppy devices are left out, as node_exporter does.

use std::time::Duration;

use serde::Serialize;

use super::{SampleError, scan};

/// The file this signal reads, relative to the proc root.
pub const PATH: &str = "diskstats";

/// The directory listing whole disks, relative to the sys root.
pub const SYS_BLOCK: &str = "block";

/// `/proc/diskstats` counts 512-byte sectors whatever the device's sector size.
const SECTOR_BYTES: u64 = 512;

/// Name prefixes of block devices that are not disks.
const NOT_DISKS: [&str; 4] = ["loop", "ram", "zram", "fd"];

/// One disk's counters since boot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskCounters {
    /// Reads completed.
    pub reads: u64,
    /// Writes completed.
    pub writes: u64,
    /// Sectors read.
    pub sectors_read: u64,
    /// Sectors written.
    pub sectors_written: u64,
    /// Milliseconds the device had I/O in flight.
    pub io_ms: u64,
}

/// One disk's throughput over an interval.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiskRate {
    /// Device name (e.g. `vda`).
    pub name: String,
    /// Bytes read per second.
    pub read_bytes_per_second: f64,
    /// Bytes written per second.
    pub write_bytes_per_second: f64,
    /// Share of the interval the device was busy (0..=1).
    pub busy_ratio: f64,
    /// Reads completed per second.
    pub reads_per_second: f64,
    /// Writes completed per second.
    pub writes_per_second: f64,
}

/// Whether a device listed in `/sys/block` is reported.
pub fn is_reported(name: &[u8]) -> bool {
    !NOT_DISKS.iter().any(|p| name.starts_with(p.as_bytes()))
}

/// One reading of `/proc/diskstats`.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// The whole disks that are reported, sorted by name.
    pub disks: Vec<(String, DiskCounters)>,
    /// Whether the file named the devices it was compared with, in the same order: if
    /// not, a disk came or went, and `/sys/block` must be listed again.
    pub same_devices: bool,
}

/// Parses `/proc/diskstats`, keeping the devices in `whole_disks` that are reported,
/// and compares every device it names with `devices` in the same pass. Parsed
/// directly: procfs would allocate a record (and its name) for every device, loop
/// devices and partitions included, at every sample.
pub fn parse(
    text: impl AsRef<[u8]>,
    whole_disks: &[String],
    devices: &[String],
) -> Result<Reading, SampleError> {
    let text = text.as_ref();
    let mut out = Vec::new();
    let mut named = 0;
    let mut same_devices = true;
    for line in scan::lines(text) {
        let mut words = scan::Words::new(line);
        // Major and minor numbers, then the name.
        let Some(name) = words.nth(2) else {
            continue;
        };
        same_devices &= devices.get(named).is_some_and(|d| d.as_bytes() == name);
        named += 1;
        if !is_reported(name) {
            continue;
        }
        let Some(name) = whole_disks.iter().find(|w| w.as_bytes() == name) else {
            continue;
        };
        // After the name: reads, reads merged, sectors read, ms reading, writes,
        // writes merged, sectors written, ms writing, I/Os in flight, ms doing I/O.
        let mut fields = [0u64; 10];
        let mut n = 0;
        for (slot, word) in fields.iter_mut().zip(words.by_ref()) {
            *slot = scan::u64(word).ok_or_else(|| {
                SampleError::format(PATH, format!("{name}: a counter is not a number"))
            })?;
            n += 1;
        }
        if n < fields.len() {
            return Err(SampleError::format(
                PATH,
                format!("{name}: too few counters"),
            ));
        }
        out.push((
            name.clone(),
            DiskCounters {
                reads: fields[0],
                writes: fields[4],
                sectors_read: fields[2],
                sectors_written: fields[6],
                io_ms: fields[9],
            },
        ));
    }
    out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    Ok(Reading {
        disks: out,
        same_devices: same_devices && named == devices.len(),
    })
}

/// The devices `/proc/diskstats` names, in its order (what [`parse`] compares with).
pub fn devices(text: impl AsRef<[u8]>) -> Vec<String> {
    let text = text.as_ref();
    scan::lines(text)
        .filter_map(|l| scan::Words::new(l).nth(2))
        .map(|name| String::from_utf8_lossy(name).into_owned())
        .collect()
}

/// Rates between two readings `elapsed` apart, for disks present in both. A disk whose
/// counters went backwards (re-attached) is left out of this interval.
pub fn rates(
    prev: &[(String, DiskCounters)],
    cur: &[(String, DiskCounters)],
    elapsed: Duration,
) -> Vec<DiskRate> {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return Vec::new();
    }
    cur.iter()
        .filter_map(|(name, c)| {
            let i = prev.binary_search_by(|(n, _)| n.as_str().cmp(name)).ok()?;
            let p = &prev[i].1;
            let read = c.sectors_read.checked_sub(p.sectors_read)?;
            let written = c.sectors_written.checked_sub(p.sectors_written)?;
            let io_ms = c.io_ms.checked_sub(p.io_ms)?;
            let reads = c.reads.checked_sub(p.reads)?;
            let writes = c.writes.checked_sub(p.writes)?;
            Some(DiskRate {
                name: name.clone(),
                read_bytes_per_second: (read * SECTOR_BYTES) as f64 / secs,
                write_bytes_per_second: (written * SECTOR_BYTES) as f64 / secs,
                // io_ms is sampled at a different instant than our clock; clamp.
                busy_ratio: (io_ms as f64 / 1000.0 / secs).min(1.0),
                reads_per_second: reads as f64 / secs,
                writes_per_second: writes as f64 / secs,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = include_str!("../../tests/fixtures/diskstats-a.txt");
    const B: &str = include_str!("../../tests/fixtures/diskstats-b.txt");

    /// `/sys/block` on the machine the fixtures come from.
    fn sys_block() -> Vec<String> {
        let mut v: Vec<String> = (0..8).map(|i| format!("loop{i}")).collect();
        v.extend(["vda".to_owned(), "zram0".to_owned()]);
        v
    }

    /// The whole disks of one reading.
    fn disks(text: &str) -> Vec<(String, DiskCounters)> {
        parse(text, &sys_block(), &[]).unwrap().disks
    }

    #[test]
    fn a_reading_tells_whether_the_devices_changed() {
        let listed = devices(A);
        assert_eq!(listed.len(), A.lines().count());
        assert!(parse(A, &sys_block(), &listed).unwrap().same_devices);
        assert!(
            parse(B, &sys_block(), &listed).unwrap().same_devices,
            "same devices, other counters"
        );
        assert!(
            !parse(A, &sys_block(), &[]).unwrap().same_devices,
            "nothing listed yet"
        );
        let added = format!("{A} 254       1 vda1 10 0 80 1 0 0 0 0 0 1 1 0 0 0 0 0 0\n");
        assert!(
            !parse(&added, &sys_block(), &listed).unwrap().same_devices,
            "one more"
        );
        assert!(
            !parse(A, &sys_block(), &listed[1..]).unwrap().same_devices,
            "one fewer"
        );
        let mut renamed = listed.clone();
        renamed[0] = "sdz".to_owned();
        assert!(
            !parse(A, &sys_block(), &renamed).unwrap().same_devices,
            "another name"
        );
    }

    #[test]
    fn keeps_whole_disks_only() {
        let a = disks(A);
        assert_eq!(
            a.iter().map(|d| d.0.as_str()).collect::<Vec<_>>(),
            vec!["vda"]
        );
        assert_eq!(a[0].1.sectors_read, 3871546);
        assert_eq!(a[0].1.io_ms, 16024);
    }

    #[test]
    fn partitions_are_not_whole_disks() {
        let text = format!("{A} 254       1 vda1 10 0 80 1 0 0 0 0 0 1 1 0 0 0 0 0 0\n");
        let d = disks(&text);
        assert!(d.iter().all(|(n, _)| n != "vda1"));
    }

    #[test]
    fn rates_of_a_real_interval() {
        let (a, b) = (disks(A), disks(B));
        let r = rates(&a, &b, Duration::from_secs(2));
        assert_eq!(r.len(), 1);
        // Δ sectors read 133016, written 884680, io 340 ms over 2 s.
        assert_eq!(r[0].read_bytes_per_second, 133016.0 * 512.0 / 2.0);
        assert_eq!(r[0].write_bytes_per_second, 884680.0 * 512.0 / 2.0);
        assert!((r[0].busy_ratio - 0.17).abs() < 1e-12);
        // Δ reads 45403 − 45164, writes 36793 − 36295.
        assert_eq!(r[0].reads_per_second, 239.0 / 2.0);
        assert_eq!(r[0].writes_per_second, 498.0 / 2.0);
    }

    #[test]
    fn busy_ratio_never_exceeds_one() {
        let (a, b) = (disks(A), disks(B));
        let r = rates(&a, &b, Duration::from_millis(100));
        assert_eq!(r[0].busy_ratio, 1.0);
    }

    #[test]
    fn counters_going_backwards_skip_the_disk() {
        let (a, b) = (disks(A), disks(B));
        assert!(rates(&b, &a, Duration::from_secs(1)).is_empty());
    }

    #[test]
    fn garbage_is_an_error() {
        let whole = vec!["vda".to_owned()];
        assert!(parse(" 254 0 vda 1 2 x 4 5 6 7 8 9 10 11\n", &whole, &[]).is_err());
        assert!(parse(" 254 0 vda 1 2 3\n", &whole, &[]).is_err());
        assert!(
            parse(" 254 0 sdz 1 2 x\n", &whole, &[])
                .unwrap()
                .disks
                .is_empty(),
            "not a disk of ours"
        );
    }

    #[test]
    fn loop_ram_and_floppy_are_not_reported() {
        assert!(is_reported(b"vda") && is_reported(b"nvme0n1") && is_reported(b"dm-0"));
        assert!(!is_reported(b"loop3") && !is_reported(b"zram0") && !is_reported(b"ram1"));
    }
}
