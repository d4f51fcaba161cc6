//! The VM's usable size: online CPUs and MemTotal.
//!
//! This is what a resize is verified against: hot-added CPUs count once they are
//! online, and hot-added memory once its blocks are online (MemTotal grows then).

use serde::Serialize;

use super::SampleError;

/// The file listing online CPUs, relative to the sys root.
pub const ONLINE_CPUS: &str = "devices/system/cpu/online";

/// The size of a VM as the guest can use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct VmSize {
    /// Online CPUs.
    pub vcpus: u32,
    /// MemTotal, in bytes.
    pub memory_bytes: u64,
}

/// Counts the CPUs in a kernel CPU list such as `0-3,5,8-9` (the format of
/// `/sys/devices/system/cpu/online`).
pub fn count_cpu_list(text: &str) -> Result<u32, SampleError> {
    let bad = || SampleError::format(ONLINE_CPUS, "not a CPU list");
    let text = text.trim();
    if text.is_empty() {
        return Err(bad());
    }
    let mut count = 0u32;
    for range in text.split(',') {
        let (first, last) = match range.split_once('-') {
            Some((a, b)) => (a.trim().parse::<u32>(), b.trim().parse::<u32>()),
            None => (range.trim().parse::<u32>(), range.trim().parse::<u32>()),
        };
        let (first, last) = (first.map_err(|_| bad())?, last.map_err(|_| bad())?);
        if last < first {
            return Err(bad());
        }
        count = count.checked_add(last - first + 1).ok_or_else(bad)?;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_cpu_lists() {
        assert_eq!(
            count_cpu_list(include_str!("../../tests/fixtures/cpu-online.txt")).unwrap(),
            2
        );
        assert_eq!(count_cpu_list("0\n").unwrap(), 1);
        assert_eq!(count_cpu_list("0-3,5").unwrap(), 5);
        assert_eq!(count_cpu_list("0-3,5,8-9\n").unwrap(), 7);
        assert_eq!(count_cpu_list("0,2,4,6").unwrap(), 4);
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "\n", "a", "3-1", "0-", "0,,1", "1-2-3"] {
            assert!(count_cpu_list(bad).is_err(), "{bad:?}");
        }
    }
}
