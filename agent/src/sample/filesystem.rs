//! Space and inodes of the real mounted filesystems: the mount table from
//! `/proc/mounts` (through `procfs`), then one `statvfs` per mount kept.
//!
//! Which types are skipped is configurable (`filesystem_exclude_types`); the default
//! list holds the pseudo and in-memory types (proc, sysfs, cgroup, tmpfs, ...) and the
//! network ones, whose `statvfs` can hang on a lost server. It reads the host's own
//! mount table, so this signal ignores the configured root.

use std::collections::BTreeMap;

use serde::Serialize;

use super::SampleError;

/// Filesystem types skipped unless configured otherwise: no data of the VM's own
/// disks, or (network filesystems) a `statvfs` that may block the sampling loop. An
/// entry ending in `*` matches every type with that prefix.
pub const DEFAULT_EXCLUDED_TYPES: [&str; 31] = [
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup*",
    "configfs",
    "debugfs",
    "devpts",
    "devtmpfs",
    "efivarfs",
    "fuse.*",
    "fusectl",
    "hugetlbfs",
    "mqueue",
    "nsfs",
    "overlay",
    "proc",
    "pstore",
    "ramfs",
    "rpc_pipefs",
    "securityfs",
    "squashfs",
    "sysfs",
    "tmpfs",
    "tracefs",
    // Network filesystems.
    "9p",
    "ceph",
    "cifs",
    "glusterfs",
    "nfs*",
    "smb3",
    "smbfs",
];

/// Space and inodes of one mounted filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FilesystemSpace {
    /// Where it is mounted.
    pub mount_point: String,
    /// Its type (e.g. `ext4`).
    pub fs_type: String,
    /// What is mounted (e.g. `/dev/vda1`).
    pub device: String,
    /// Size, in bytes.
    pub total_bytes: u64,
    /// Space an unprivileged user can still use, in bytes.
    pub available_bytes: u64,
    /// Free space, including the blocks reserved for root, in bytes.
    pub free_bytes: u64,
    /// Inodes in all (0 where the filesystem has no fixed count, as btrfs).
    pub files: u64,
    /// Free inodes.
    pub files_free: u64,
}

/// Which filesystem types are skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeFilter {
    excluded: Vec<String>,
}

impl Default for TypeFilter {
    fn default() -> Self {
        Self::excluding(DEFAULT_EXCLUDED_TYPES.iter().map(|t| (*t).to_owned()))
    }
}

impl TypeFilter {
    /// Skips these types (an entry ending in `*` is a prefix).
    pub fn excluding(types: impl IntoIterator<Item = String>) -> Self {
        Self {
            excluded: types.into_iter().collect(),
        }
    }

    /// Whether a filesystem of this type is measured.
    pub fn keeps(&self, fs_type: &str) -> bool {
        !self.excluded.iter().any(|e| match e.strip_suffix('*') {
            Some(prefix) => fs_type.starts_with(prefix),
            None => fs_type == e,
        })
    }
}

/// One line of the mount table, as much of it as the sampler needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// What is mounted.
    pub device: String,
    /// Where.
    pub mount_point: String,
    /// The filesystem type.
    pub fs_type: String,
}

/// The mounts to measure: kept types, one per mount point (the last mounted one, which
/// hides the others); sorted by mount point.
pub fn select(mounts: impl IntoIterator<Item = Mount>, filter: &TypeFilter) -> Vec<Mount> {
    let mut by_mount_point = BTreeMap::new();
    for m in mounts {
        if filter.keeps(&m.fs_type) {
            by_mount_point.insert(m.mount_point.clone(), m);
        }
    }
    by_mount_point.into_values().collect()
}

/// Space and inodes from a `statvfs` answer; `None` for an empty filesystem.
fn measure(mount: Mount, st: &rustix::fs::StatVfs) -> Option<FilesystemSpace> {
    let block = st.f_frsize.max(1);
    let total_bytes = st.f_blocks.saturating_mul(block);
    (total_bytes > 0).then(|| FilesystemSpace {
        mount_point: mount.mount_point,
        fs_type: mount.fs_type,
        device: mount.device,
        total_bytes,
        available_bytes: st.f_bavail.saturating_mul(block),
        free_bytes: st.f_bfree.saturating_mul(block),
        files: st.f_files,
        files_free: st.f_ffree,
    })
}

/// The mount table's path: the host's own, whatever the configured root.
const MOUNTS: &str = "/proc/mounts";

/// Reads filesystem space and inodes.
#[derive(Debug, Default)]
pub struct FilesystemSampler {
    filter: TypeFilter,
    /// The mount table last parsed, and the mounts it selected: a table that has not
    /// changed since (the usual case) is not parsed again. procfs parses every line's
    /// options into a map, about 200 000 instructions for twenty mounts.
    last: Option<(Vec<u8>, Vec<Mount>)>,
}

impl FilesystemSampler {
    /// A sampler skipping the default types.
    pub fn new() -> Self {
        Self::default()
    }

    /// A sampler skipping the given types.
    pub fn with_filter(filter: TypeFilter) -> Self {
        Self { filter, last: None }
    }

    /// The kept filesystems mounted now. A mount whose `statvfs` fails (unmounted
    /// meanwhile, or not readable by the agent) is left out, not an error.
    pub fn sample(&mut self) -> Result<Vec<FilesystemSpace>, SampleError> {
        let table = std::fs::read(MOUNTS).map_err(|source| SampleError::Read {
            path: MOUNTS.into(),
            source,
        })?;
        self.measure_table(table)
    }

    /// The kept filesystems of the mount table `table`.
    fn measure_table(&mut self, table: Vec<u8>) -> Result<Vec<FilesystemSpace>, SampleError> {
        let selected = match self.last.take() {
            Some((last, selected)) if last == table => selected,
            _ => {
                use procfs::FromBufRead;
                let entries = Vec::<procfs::MountEntry>::from_buf_read(&table[..])
                    .map_err(|e| SampleError::format(MOUNTS, e.to_string()))?;
                let mounts = entries.into_iter().map(|m| Mount {
                    device: m.fs_spec,
                    mount_point: m.fs_file,
                    fs_type: m.fs_vfstype,
                });
                select(mounts, &self.filter)
            }
        };
        let measured = selected
            .iter()
            .cloned()
            .filter_map(|m| {
                let st = rustix::fs::statvfs(m.mount_point.as_str()).ok()?;
                measure(m, &st)
            })
            .collect();
        self.last = Some((table, selected));
        Ok(measured)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(mount_point: &str, fs_type: &str) -> Mount {
        Mount {
            device: format!("dev-{mount_point}"),
            mount_point: mount_point.into(),
            fs_type: fs_type.into(),
        }
    }

    fn mount_points(v: &[Mount]) -> Vec<&str> {
        v.iter().map(|m| m.mount_point.as_str()).collect()
    }

    #[test]
    fn a_mount_table_is_parsed_again_only_when_it_changed() {
        let mut sampler = FilesystemSampler::new();
        let root = b"/dev/vda1 / ext4 rw,relatime 0 0\nproc /proc proc rw 0 0\n".to_vec();
        let measured = sampler.measure_table(root.clone()).unwrap();
        assert_eq!(mount_points_of(&measured), ["/"]);
        assert_eq!(measured[0].device, "/dev/vda1");
        // Unchanged: the selection is reused, and the space measured again.
        let again = sampler.measure_table(root.clone()).unwrap();
        assert_eq!(mount_points_of(&again), ["/"]);
        // Changed: a new mount shows, a garbled table is an error, and the next good
        // table is parsed afresh.
        let mut more = root.clone();
        more.extend_from_slice(b"/dev/vdb /tmp xfs rw 0 0\n");
        let measured = sampler.measure_table(more.clone()).unwrap();
        assert_eq!(mount_points_of(&measured), ["/", "/tmp"]);
        assert_eq!(measured[1].fs_type, "xfs");
        assert!(sampler.measure_table(b"garbled\n".to_vec()).is_err());
        assert_eq!(
            mount_points_of(&sampler.measure_table(root).unwrap()),
            ["/"]
        );
    }

    fn mount_points_of(v: &[FilesystemSpace]) -> Vec<&str> {
        v.iter().map(|m| m.mount_point.as_str()).collect()
    }

    #[test]
    fn keeps_real_filesystems_sorted() {
        let v = select(
            [
                mount("/var", "xfs"),
                mount("/", "ext4"),
                mount("/dev/shm", "tmpfs"),
                mount("/var/lib/docker/overlay2/x/merged", "overlay"),
                mount("/sys/fs/cgroup/unified", "cgroup2"),
                mount("/var/lib/lxcfs", "fuse.lxcfs"),
                mount("/snap/core/1", "squashfs"),
                mount("/mnt/share", "nfs4"),
                mount("/boot/efi", "vfat"),
            ],
            &TypeFilter::default(),
        );
        assert_eq!(mount_points(&v), vec!["/", "/boot/efi", "/var"]);
    }

    #[test]
    fn the_exclusions_are_configurable() {
        let filter = TypeFilter::excluding(["vfat".to_owned(), "ext*".to_owned()]);
        let v = select(
            [
                mount("/", "ext4"),
                mount("/boot/efi", "vfat"),
                mount("/mnt/share", "nfs4"),
                mount("/run", "tmpfs"),
            ],
            &filter,
        );
        assert_eq!(mount_points(&v), vec!["/mnt/share", "/run"]);
    }

    #[test]
    fn the_last_mount_on_a_mount_point_wins() {
        let v = select(
            [mount("/data", "ext4"), mount("/data", "xfs")],
            &TypeFilter::default(),
        );
        assert_eq!(v, vec![mount("/data", "xfs")]);
    }

    #[test]
    fn the_root_filesystem_of_this_machine_is_measured_like_df() {
        let v = FilesystemSampler::new().sample().unwrap();
        let root = v
            .iter()
            .find(|f| f.mount_point == "/")
            .expect("/ is mounted");
        assert!(root.total_bytes > 0);
        assert!(root.available_bytes <= root.free_bytes && root.free_bytes <= root.total_bytes);
        assert!(root.files_free <= root.files);
        assert!(!root.device.is_empty());
        let filter = TypeFilter::default();
        assert!(v.iter().all(|f| filter.keeps(&f.fs_type)));
        // The same figures as statvfs(3) gives `df`.
        let st = rustix::fs::statvfs("/").unwrap();
        assert_eq!(root.total_bytes, st.f_blocks * st.f_frsize);
    }
}
