//! Memory and swap from `/proc/meminfo`.
//!
//! "Available" is the kernel's MemAvailable (what can be allocated without swapping),
//! never MemFree, which leaves out reclaimable page cache.

use procfs::{FromBufRead, Meminfo};
use serde::Serialize;

use super::SampleError;

/// The file this signal reads, relative to the proc root.
pub const PATH: &str = "meminfo";

/// Memory and swap, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Memory {
    /// MemTotal: usable RAM.
    pub total_bytes: u64,
    /// MemAvailable: what can be allocated without swapping.
    pub available_bytes: u64,
    /// SwapTotal.
    pub swap_total_bytes: u64,
    /// SwapFree.
    pub swap_free_bytes: u64,
}

/// Parses the text of `/proc/meminfo` (procfs converts kB to bytes).
pub fn parse(text: &str) -> Result<Memory, SampleError> {
    let m = Meminfo::from_buf_read(text.as_bytes()).map_err(|e| SampleError::parse(PATH, e))?;
    let available_bytes = m
        .mem_available
        .ok_or_else(|| SampleError::format(PATH, "no MemAvailable (kernel older than 3.14)"))?;
    Ok(Memory {
        total_bytes: m.mem_total,
        available_bytes,
        swap_total_bytes: m.swap_total,
        swap_free_bytes: m.swap_free,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMINFO: &str = include_str!("../../tests/fixtures/meminfo.txt");

    #[test]
    fn parses_a_real_meminfo_in_bytes() {
        let m = parse(MEMINFO).unwrap();
        let kib = |line: &str| -> u64 {
            let l = MEMINFO.lines().find(|l| l.starts_with(line)).unwrap();
            l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
        };
        assert_eq!(m.total_bytes, kib("MemTotal:"));
        assert_eq!(m.available_bytes, kib("MemAvailable:"));
        assert_eq!(m.swap_total_bytes, kib("SwapTotal:"));
        assert_eq!(m.swap_free_bytes, kib("SwapFree:"));
        assert!(m.available_bytes <= m.total_bytes);
        assert_ne!(
            m.available_bytes,
            kib("MemFree:"),
            "available must not be MemFree"
        );
    }

    #[test]
    fn without_mem_available_it_is_an_error_not_mem_free() {
        let old: String = MEMINFO
            .lines()
            .filter(|l| !l.starts_with("MemAvailable:"))
            .map(|l| format!("{l}\n"))
            .collect();
        let err = parse(&old).unwrap_err();
        assert!(err.to_string().contains("MemAvailable"), "{err}");
    }
}
