//! Space on real (non-virtual) mounted filesystems, through `sysinfo::Disks`.
//!
//! sysinfo reads the mount table and calls `statvfs`, which needs no parsing of ours;
//! it already skips pseudo filesystems (proc, sysfs, cgroup, tmpfs, ...) and network
//! ones whose `statvfs` could hang (NFS, CIFS). What is left is filtered once more
//! here for the virtual types it lets through. It reads the host's own mount table, so
//! this signal ignores the configured root.

use std::collections::BTreeMap;

use serde::Serialize;
use sysinfo::{DiskRefreshKind, Disks};

use super::SampleError;

/// Filesystem types that hold no data of the VM's own disks.
const VIRTUAL_TYPES: [&str; 18] = [
    "autofs",
    "binfmt_misc",
    "bpf",
    "configfs",
    "debugfs",
    "devpts",
    "devtmpfs",
    "efivarfs",
    "fusectl",
    "nsfs",
    "overlay",
    "proc",
    "ramfs",
    "securityfs",
    "squashfs",
    "sysfs",
    "tmpfs",
    "tracefs",
];

/// Space on one mounted filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FilesystemSpace {
    /// Where it is mounted.
    pub mount_point: String,
    /// Its type (e.g. `ext4`).
    pub fs_type: String,
    /// Size, in bytes.
    pub total_bytes: u64,
    /// Space an unprivileged user can still use, in bytes.
    pub available_bytes: u64,
}

/// Whether a filesystem type stores real data (not a pseudo or in-memory filesystem).
pub fn is_real(fs_type: &str) -> bool {
    !(VIRTUAL_TYPES.contains(&fs_type)
        || fs_type.starts_with("cgroup")
        || fs_type.starts_with("fuse."))
}

/// Keeps the real filesystems of a mount table, one per mount point (the last mounted
/// one, which hides the others), skipping empty ones; sorted by mount point.
pub fn select(mounts: impl IntoIterator<Item = FilesystemSpace>) -> Vec<FilesystemSpace> {
    let mut by_mount_point = BTreeMap::new();
    for fs in mounts {
        if is_real(&fs.fs_type) && fs.total_bytes > 0 {
            by_mount_point.insert(fs.mount_point.clone(), fs);
        }
    }
    by_mount_point.into_values().collect()
}

/// Reads filesystem space; keeps sysinfo's list between samples.
#[derive(Default)]
pub struct FilesystemSampler {
    /// Created on first use, and again after a failure.
    disks: Option<Disks>,
}

impl FilesystemSampler {
    /// A sampler whose list is filled by the first `sample`.
    pub fn new() -> Self {
        Self::default()
    }

    /// The real filesystems mounted now.
    pub fn sample(&mut self) -> Result<Vec<FilesystemSpace>, SampleError> {
        let disks = match &mut self.disks {
            Some(disks) => disks,
            None => {
                let disks =
                    Disks::new().map_err(|e| SampleError::format("mounts", e.to_string()))?;
                self.disks.insert(disks)
            }
        };
        // Only sizes: no device kind (sysfs walks) and no I/O counters (disk.rs has them).
        disks.refresh_specifics(true, DiskRefreshKind::nothing().with_storage());
        Ok(select(disks.iter().map(|d| FilesystemSpace {
            mount_point: d.mount_point().to_string_lossy().into_owned(),
            fs_type: d.file_system().to_string_lossy().into_owned(),
            total_bytes: d.total_space(),
            available_bytes: d.available_space(),
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fs(mount_point: &str, fs_type: &str, total: u64) -> FilesystemSpace {
        FilesystemSpace {
            mount_point: mount_point.into(),
            fs_type: fs_type.into(),
            total_bytes: total,
            available_bytes: total / 2,
        }
    }

    #[test]
    fn keeps_real_filesystems_sorted() {
        let v = select([
            fs("/var", "xfs", 10),
            fs("/", "ext4", 100),
            fs("/dev/shm", "tmpfs", 50),
            fs("/var/lib/docker/overlay2/x/merged", "overlay", 100),
            fs("/sys/fs/cgroup/unified", "cgroup2", 1),
            fs("/var/lib/lxcfs", "fuse.lxcfs", 1),
            fs("/snap/core/1", "squashfs", 1),
            fs("/boot/efi", "vfat", 5),
        ]);
        let mounts: Vec<&str> = v.iter().map(|f| f.mount_point.as_str()).collect();
        assert_eq!(mounts, vec!["/", "/boot/efi", "/var"]);
    }

    #[test]
    fn the_last_mount_on_a_mount_point_wins_and_empty_ones_are_skipped() {
        let v = select([
            fs("/data", "ext4", 10),
            fs("/data", "xfs", 20),
            fs("/empty", "ext4", 0),
        ]);
        assert_eq!(v, vec![fs("/data", "xfs", 20)]);
    }

    #[test]
    fn the_root_filesystem_of_this_machine_is_seen() {
        let v = FilesystemSampler::new().sample().unwrap();
        let root = v
            .iter()
            .find(|f| f.mount_point == "/")
            .expect("/ is mounted");
        assert!(root.total_bytes > 0 && root.available_bytes <= root.total_bytes);
        assert!(v.iter().all(|f| is_real(&f.fs_type)));
    }
}
