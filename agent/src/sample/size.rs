//! The VM's usable size: online CPUs and MemTotal, and the hot-plugged capacity the
//! guest has *not* brought online (present-but-offline CPUs, offline memory blocks).
//!
//! This is what a resize is verified against: hot-added CPUs count once they are
//! online, and hot-added memory once its blocks are online (MemTotal grows then). A
//! stock Debian 12 guest leaves hot-added memory offline unless a udev rule onlines it
//! (the agent package ships one); the offline counts let the collector say so instead
//! of waiting for a size that never comes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::SampleError;
use super::kernel_file::{End, KernelFile};

/// The file listing online CPUs, relative to the sys root.
pub const ONLINE_CPUS: &str = "devices/system/cpu/online";
/// The file listing present CPUs (plugged in, online or not), relative to the sys root.
pub const PRESENT_CPUS: &str = "devices/system/cpu/present";
/// The memory block directory, relative to the sys root.
pub const MEMORY_DIR: &str = "devices/system/memory";
/// The memory block size file (hexadecimal bytes), inside [`MEMORY_DIR`].
const BLOCK_SIZE: &str = "block_size_bytes";
/// Largest CPU number accepted in a CPU list (the kernel's `NR_CPUS` limit is 8192).
const MAX_CPU: u32 = 8191;
/// Memory blocks scanned at most (1 TiB of 128 MiB blocks is 8192), so a strange
/// sysfs cannot make a sample unbounded.
const MAX_MEMORY_BLOCKS: usize = 65_536;
/// Memory blocks are rescanned at least this often even when nothing hints at a
/// change (a block hot-added but left offline does not move MemTotal).
pub const MEMORY_RESCAN_EVERY: Duration = Duration::from_secs(60);

/// The size of a VM as the guest can use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct VmSize {
    /// Online CPUs.
    pub vcpus: u32,
    /// MemTotal, in bytes.
    pub memory_bytes: u64,
    /// CPUs present but offline (hot-added and not onlined).
    pub offline_cpus: u32,
    /// Memory blocks present but offline.
    pub offline_memory_blocks: u32,
    /// The memory block size in bytes; 0 when the kernel has no memory hotplug sysfs.
    pub memory_block_bytes: u64,
}

/// Parses a kernel CPU list such as `0-3,5,8-9` into inclusive ranges.
fn cpu_ranges(text: &str, file: &'static str) -> Result<Vec<(u32, u32)>, SampleError> {
    let bad = || SampleError::format(file, "not a CPU list");
    let text = text.trim();
    if text.is_empty() {
        return Err(bad());
    }
    let mut ranges = Vec::new();
    for range in text.split(',') {
        let (first, last) = match range.split_once('-') {
            Some((a, b)) => (a.trim().parse::<u32>(), b.trim().parse::<u32>()),
            None => (range.trim().parse::<u32>(), range.trim().parse::<u32>()),
        };
        let (first, last) = (first.map_err(|_| bad())?, last.map_err(|_| bad())?);
        if last < first || last > MAX_CPU {
            return Err(bad());
        }
        ranges.push((first, last));
    }
    Ok(ranges)
}

/// Counts the CPUs in a kernel CPU list such as `0-3,5,8-9` (the format of
/// `/sys/devices/system/cpu/online`).
pub fn count_cpu_list(text: &str) -> Result<u32, SampleError> {
    let ranges = cpu_ranges(text, ONLINE_CPUS)?;
    let mut count = 0u32;
    for (first, last) in ranges {
        count = count
            .checked_add(last - first + 1)
            .ok_or_else(|| SampleError::format(ONLINE_CPUS, "not a CPU list"))?;
    }
    Ok(count)
}

/// CPUs in the `present` list that are not in the `online` list.
pub fn offline_cpus(present: &str, online: &str) -> Result<u32, SampleError> {
    let online_ranges = cpu_ranges(online, ONLINE_CPUS)?;
    // The usual case, every present CPU online, without parsing the same list twice.
    if present.trim() == online.trim() {
        return Ok(0);
    }
    let present = cpu_ranges(present, PRESENT_CPUS)?;
    let is_online = |cpu: u32| online_ranges.iter().any(|&(a, b)| (a..=b).contains(&cpu));
    let mut offline = 0u32;
    for (first, last) in present {
        offline += (first..=last).filter(|&c| !is_online(c)).count() as u32;
    }
    Ok(offline)
}

/// The memory blocks' state: how many are offline, and the block size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemoryBlocks {
    /// Blocks whose `state` is `offline` (or `going-offline`).
    pub offline: u32,
    /// The block size in bytes (0: no memory hotplug sysfs).
    pub block_bytes: u64,
}

/// Which memory blocks exist: how many, and the sum of their numbers. A block
/// hot-added or removed changes it, and it takes one directory listing to read,
/// against one file read per block (one per 128 MiB of memory, usually) for their
/// states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct BlockListing {
    blocks: u32,
    number_sum: u64,
}

/// Lists the `memoryN` entries of `memory_dir` (at most [`MAX_MEMORY_BLOCKS`]), calling
/// `each` with every entry's name; `None` when the directory does not exist.
fn list_memory_blocks(
    memory_dir: &Path,
    mut each: impl FnMut(&std::ffi::OsStr) -> Result<(), SampleError>,
) -> Result<Option<BlockListing>, SampleError> {
    let read_error = |source| SampleError::Read {
        path: memory_dir.to_path_buf(),
        source,
    };
    let entries = match std::fs::read_dir(memory_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_error(e)),
    };
    let mut listing = BlockListing::default();
    for entry in entries.take(MAX_MEMORY_BLOCKS) {
        let name = entry.map_err(read_error)?.file_name();
        let number = name
            .to_str()
            .and_then(|n| n.strip_prefix("memory"))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse::<u32>().ok());
        let Some(number) = number else {
            continue;
        };
        listing.blocks += 1;
        listing.number_sum += u64::from(number);
        each(&name)?;
    }
    Ok(Some(listing))
}

/// Reads `<memory_dir>/block_size_bytes` and every `memoryN/state` below it, with the
/// listing the states were read from. A kernel without memory hotplug has no such
/// directory: that is "no blocks", not an error.
fn scan(memory_dir: &Path) -> Result<(MemoryBlocks, BlockListing), SampleError> {
    let size_path = memory_dir.join(BLOCK_SIZE);
    let size_text = match std::fs::read_to_string(&size_path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok((MemoryBlocks::default(), BlockListing::default()));
        }
        Err(source) => {
            return Err(SampleError::Read {
                path: size_path,
                source,
            });
        }
    };
    let block_bytes = u64::from_str_radix(size_text.trim().trim_start_matches("0x"), 16)
        .ok()
        .filter(|&b| b > 0)
        .ok_or_else(|| {
            SampleError::format(
                "devices/system/memory/block_size_bytes",
                "not a hexadecimal size",
            )
        })?;
    let mut offline = 0u32;
    let listing = list_memory_blocks(memory_dir, |name| {
        let path = memory_dir.join(name).join("state");
        let state = match std::fs::read_to_string(&path) {
            Ok(state) => state,
            // A block removed between the listing and the read.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(SampleError::Read { path, source }),
        };
        if matches!(state.trim(), "offline" | "going-offline") {
            offline += 1;
        }
        Ok(())
    })?
    .unwrap_or_default();
    Ok((
        MemoryBlocks {
            offline,
            block_bytes,
        },
        listing,
    ))
}

/// Reads the hot-plug state at each sample: present CPUs every time (one small file),
/// memory blocks' states when something hints at a change: MemTotal moved, blocks
/// were offline at the last scan, or the list of blocks differs when it is checked,
/// every [`MEMORY_RESCAN_EVERY`]. Reading every block's state costs ~2.5 ms of CPU
/// here, listing them 0.06 ms.
#[derive(Debug)]
pub struct Hotplug {
    present_cpus: KernelFile,
    memory_dir: PathBuf,
    /// The last scan: when the blocks were last listed, the MemTotal and the listing
    /// seen at the scan, and its result.
    last_scan: Option<Scan>,
}

impl Hotplug {
    /// Reads below `sys` (`/sys` on the VM).
    pub fn new(sys: &Path) -> Self {
        Self {
            present_cpus: KernelFile::new(sys.join(PRESENT_CPUS), End::ShortRead),
            memory_dir: sys.join(MEMORY_DIR),
            last_scan: None,
        }
    }

    /// Present-but-offline CPUs given the `online` list just read; a kernel without a
    /// `present` file (very old, or a fake root) counts as none offline.
    pub fn offline_cpus(&mut self, online: &str) -> Result<u32, SampleError> {
        match self.present_cpus.read() {
            Ok(present) => offline_cpus(present, online),
            Err(SampleError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(0)
            }
            Err(e) => Err(e),
        }
    }

    /// The memory blocks, rescanned only when due (see the type's doc).
    pub fn memory_blocks(
        &mut self,
        now: Instant,
        mem_total: u64,
    ) -> Result<MemoryBlocks, SampleError> {
        if let Some(last) = &mut self.last_scan
            && last.mem_total == mem_total
            && last.blocks.offline == 0
        {
            if now.duration_since(last.listed_at) < MEMORY_RESCAN_EVERY {
                return Ok(last.blocks);
            }
            // Only the listing is due: the states are read again if it changed.
            let listing = list_memory_blocks(&self.memory_dir, |_| Ok(()))?;
            if listing.unwrap_or_default() == last.listing {
                last.listed_at = now;
                return Ok(last.blocks);
            }
        }
        let (blocks, listing) = scan(&self.memory_dir)?;
        self.last_scan = Some(Scan {
            listed_at: now,
            mem_total,
            listing,
            blocks,
        });
        Ok(blocks)
    }
}

/// What [`Hotplug`] keeps of its last scan of the memory blocks.
#[derive(Debug, Clone, Copy)]
struct Scan {
    listed_at: Instant,
    mem_total: u64,
    listing: BlockListing,
    blocks: MemoryBlocks,
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

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
        for bad in ["", "\n", "a", "3-1", "0-", "0,,1", "1-2-3", "0-99999"] {
            assert!(count_cpu_list(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn offline_cpus_are_present_minus_online() {
        assert_eq!(offline_cpus("0-3\n", "0-3\n").unwrap(), 0);
        assert_eq!(offline_cpus("0-3\n", "0-1\n").unwrap(), 2);
        assert_eq!(offline_cpus("0-7\n", "0,2-3,6\n").unwrap(), 4);
        // Online but not present cannot happen; it never counts negative.
        assert_eq!(offline_cpus("0-1\n", "0-3\n").unwrap(), 0);
        assert!(offline_cpus("x", "0").is_err());
    }

    fn sys(tree: &str) -> PathBuf {
        Path::new(FIXTURES).join(tree).join("sys")
    }

    #[test]
    fn a_guest_that_onlined_everything_reports_nothing_offline() {
        let sys = sys("sysfs-online");
        let online = std::fs::read_to_string(sys.join(ONLINE_CPUS)).unwrap();
        let mut h = Hotplug::new(&sys);
        assert_eq!(count_cpu_list(&online).unwrap(), 2);
        assert_eq!(h.offline_cpus(&online).unwrap(), 0);
        let blocks = h.memory_blocks(Instant::now(), 1).unwrap();
        assert_eq!(
            blocks,
            MemoryBlocks {
                offline: 0,
                block_bytes: 128 << 20
            }
        );
    }

    #[test]
    fn hot_added_capacity_left_offline_is_counted() {
        // 2 CPUs and 2 GiB booted, then 2 CPUs and 1 GiB hot-added with no onlining rule.
        let sys = sys("sysfs-hotadd-offline");
        let online = std::fs::read_to_string(sys.join(ONLINE_CPUS)).unwrap();
        let mut h = Hotplug::new(&sys);
        assert_eq!(count_cpu_list(&online).unwrap(), 2);
        assert_eq!(h.offline_cpus(&online).unwrap(), 2);
        let blocks = h.memory_blocks(Instant::now(), 1).unwrap();
        assert_eq!(
            blocks,
            MemoryBlocks {
                offline: 8,
                block_bytes: 128 << 20
            }
        );
    }

    #[test]
    fn a_kernel_without_memory_hotplug_has_no_blocks() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(scan(dir.path()).unwrap().0, MemoryBlocks::default());
        std::fs::write(dir.path().join(BLOCK_SIZE), "zz\n").unwrap();
        assert!(scan(dir.path()).is_err());
    }

    #[test]
    fn memory_blocks_are_rescanned_when_due() {
        let dir = tempfile::tempdir().unwrap();
        let mem = dir.path().join(MEMORY_DIR);
        let block = |n: u32, state: &str| {
            let d = mem.join(format!("memory{n}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("state"), format!("{state}\n")).unwrap();
        };
        std::fs::create_dir_all(&mem).unwrap();
        std::fs::write(mem.join(BLOCK_SIZE), "8000000\n").unwrap();
        block(0, "online");
        let mut h = Hotplug::new(dir.path());
        let t0 = Instant::now();
        assert_eq!(h.memory_blocks(t0, 100).unwrap().offline, 0);
        // Hot-added, left offline: MemTotal does not move, so only the periodic scan sees it.
        block(1, "offline");
        assert_eq!(
            h.memory_blocks(t0 + Duration::from_secs(5), 100)
                .unwrap()
                .offline,
            0
        );
        let later = t0 + MEMORY_RESCAN_EVERY;
        assert_eq!(h.memory_blocks(later, 100).unwrap().offline, 1);
        // While blocks are offline, every sample rescans: onlining shows at once.
        block(1, "online");
        let online_at = later + Duration::from_secs(5);
        assert_eq!(h.memory_blocks(online_at, 228).unwrap().offline, 0);
        // When due, only the listing is read: a state changed behind it (a real
        // offlining also moves MemTotal) is not seen while the blocks stay the same...
        block(0, "offline");
        let listed = online_at + MEMORY_RESCAN_EVERY;
        assert_eq!(h.memory_blocks(listed, 228).unwrap().offline, 0);
        // ...and a different set of blocks, even as many of them, has its states read.
        std::fs::remove_dir_all(mem.join("memory1")).unwrap();
        block(2, "offline");
        let relisted = listed + MEMORY_RESCAN_EVERY;
        assert_eq!(h.memory_blocks(relisted, 228).unwrap().offline, 2);
    }
}
