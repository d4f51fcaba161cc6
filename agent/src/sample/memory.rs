//! Memory and swap from `/proc/meminfo`.
//!
//! "Available" is the kernel's MemAvailable (what can be allocated without swapping),
//! never MemFree, which leaves out reclaimable page cache.

use serde::Serialize;

use super::{SampleError, scan};

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

/// Parses the text of `/proc/meminfo`, converting kB to bytes.
///
/// Only four of its ~50 lines are needed, so they are picked out directly rather than
/// through procfs, which allocates a map entry and a string for every line of every
/// sample.
pub fn parse(text: impl AsRef<[u8]>) -> Result<Memory, SampleError> {
    let text = text.as_ref();
    let mut fields = [None; 4];
    const KEYS: [&str; 4] = ["MemTotal", "MemAvailable", "SwapTotal", "SwapFree"];
    for line in scan::lines(text) {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let Some(i) = KEYS.iter().position(|k| k.as_bytes() == &line[..colon]) else {
            continue;
        };
        let key = KEYS[i];
        let mut words = scan::Words::new(&line[colon + 1..]);
        let number = words
            .next()
            .and_then(scan::u64)
            .ok_or_else(|| SampleError::format(PATH, format!("{key} is not a number")))?;
        let bytes = match words.next() {
            Some(b"kB") => number.checked_mul(1024),
            None => Some(number),
            Some(unit) => {
                let unit = String::from_utf8_lossy(unit);
                return Err(SampleError::format(PATH, format!("{key} has unit {unit}")));
            }
        };
        fields[i] =
            Some(bytes.ok_or_else(|| SampleError::format(PATH, format!("{key} overflows")))?);
        // The kernel prints them within the first twenty lines; the rest is not read.
        if fields.iter().all(Option::is_some) {
            break;
        }
    }
    let missing = |i: usize, why: &str| SampleError::format(PATH, format!("no {}{why}", KEYS[i]));
    Ok(Memory {
        total_bytes: fields[0].ok_or_else(|| missing(0, ""))?,
        available_bytes: fields[1].ok_or_else(|| missing(1, " (kernel older than 3.14)"))?,
        swap_total_bytes: fields[2].ok_or_else(|| missing(2, ""))?,
        swap_free_bytes: fields[3].ok_or_else(|| missing(3, ""))?,
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

    #[test]
    fn garbage_is_an_error() {
        assert!(parse("").is_err());
        assert!(parse("MemTotal: lots kB\n").is_err());
        assert!(
            parse("MemTotal: 1 MB\nMemAvailable: 1 kB\nSwapTotal: 0 kB\nSwapFree: 0 kB\n").is_err()
        );
        let tiny =
            parse("MemTotal: 2 kB\nMemAvailable: 1 kB\nSwapTotal: 0 kB\nSwapFree: 0 kB\n").unwrap();
        assert_eq!((tiny.total_bytes, tiny.available_bytes), (2048, 1024));
    }
}
