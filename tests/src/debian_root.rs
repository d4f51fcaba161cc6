//! A clean Debian 12 (bookworm) root in a temporary directory, unpacked from a
//! tarball that `debootstrap` builds once and caches under [`CACHE_DIR`].
//!
//! Each [`Variant`] is its own cached tarball: `minbase` (what a package's
//! dependencies are installed onto), and `systemd` (minbase with systemd as init,
//! dbus, and the tools a booted container's test uses). A tarball is rebuilt when
//! missing or older than [`CACHE_MAX_AGE`]; concurrent runs serialise on a lock file,
//! and a half-built root is never published. Building and using one needs root.

use crate::command::{bounded, run_ok};
use crate::tool;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

/// Where the clean Debian roots and the downloaded `.deb`s are cached between runs.
pub const CACHE_DIR: &str = "/var/cache/rally-tests";
/// A cached root older than this is rebuilt, so that it follows the point releases.
pub const CACHE_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// A kind of root: its name in the cache and what debootstrap adds to minbase.
#[derive(Debug, Clone, Copy)]
pub struct Variant {
    /// The tarball's name: `bookworm-<name>-<date>.tar`.
    pub name: &'static str,
    /// Packages installed on top of `--variant=minbase` (`debootstrap --include`).
    pub include: &'static [&'static str],
}

/// `debootstrap --variant=minbase bookworm`: the smallest system apt works in.
pub const MINBASE: Variant = Variant {
    name: "minbase",
    include: &[],
};

/// Minbase that boots with systemd as PID 1 (`systemd-nspawn -b`): systemd and
/// dbus; procps, which the packaged units' `ExecReload` (`/bin/kill`) needs; and
/// curl, to query a daemon's HTTP API from inside.
pub const SYSTEMD: Variant = Variant {
    name: "systemd",
    include: &["systemd", "systemd-sysv", "dbus", "procps", "curl"],
};

/// The Debian mirror this machine uses (deb822 sources, then sources.list).
fn debian_mirror() -> String {
    let deb822 = fs::read_to_string("/etc/apt/sources.list.d/debian.sources").unwrap_or_default();
    for stanza in deb822.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
        };
        let suites = field("Suites:").unwrap_or_default();
        if suites.split_whitespace().any(|s| s == "bookworm")
            && let Some(uri) =
                field("URIs:").and_then(|u| u.split_whitespace().next().map(String::from))
        {
            return uri;
        }
    }
    let list = fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    for line in list.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.len() >= 3 && words[0] == "deb" && words[2] == "bookworm" {
            return words[1].to_owned();
        }
    }
    "http://deb.debian.org/debian".to_owned()
}

/// Panics unless this process runs as root, naming what needs it.
pub fn assert_root(what: &str) {
    let uid = run_ok(Command::new("id").arg("-u"));
    assert_eq!(
        uid.trim(),
        "0",
        "{what} needs root (debootstrap, chroot, mount): run it as scripts/test does in CI"
    );
}

/// The cached tarball of a `variant` root, built when missing or older than
/// [`CACHE_MAX_AGE`]. Concurrent runs serialise on a lock file; a half-built root is
/// never published (built aside, then renamed).
pub fn bookworm_tarball(variant: Variant) -> PathBuf {
    let debootstrap = tool::require("debootstrap", "debootstrap");
    let cache = Path::new(CACHE_DIR);
    fs::create_dir_all(cache).expect("create a directory");
    let lock = fs::File::create(cache.join("bookworm.lock")).expect("create the lock file");
    lock.lock().expect("lock the root cache");

    let prefix = format!("bookworm-{}-", variant.name);
    let mut cached: Vec<(SystemTime, PathBuf)> = fs::read_dir(cache)
        .expect("list the cache directory")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with(&prefix) && name.ends_with(".tar")
        })
        .filter_map(|p| Some((fs::metadata(&p).ok()?.modified().ok()?, p)))
        .collect();
    cached.sort();
    if let Some((modified, path)) = cached.last()
        && modified.elapsed().unwrap_or_default() < CACHE_MAX_AGE
    {
        return path.clone();
    }

    let date = run_ok(Command::new("date").args(["-u", "+%Y%m%d"]));
    let tarball = cache.join(format!("{prefix}{}.tar", date.trim()));
    let build = tempfile::Builder::new()
        .prefix("build-")
        .tempdir_in(cache)
        .expect("create a temporary directory");
    let root = build.path().join("root");
    eprintln!(
        "building a clean Debian 12 root ({}) with debootstrap into {} (cached for later runs)",
        variant.name,
        tarball.display()
    );
    let mut debootstrap = bounded(1200, debootstrap.to_str().expect("a UTF-8 path"));
    debootstrap.arg("--variant=minbase");
    if !variant.include.is_empty() {
        debootstrap.arg(format!("--include={}", variant.include.join(",")));
    }
    run_ok(debootstrap.arg("bookworm").arg(&root).arg(debian_mirror()));
    // debootstrap leaves the base system's .debs in apt's cache: not worth caching.
    run_ok(Command::new("chroot").arg(&root).args(["apt-get", "clean"]));
    let partial = build.path().join("root.tar");
    run_ok(
        Command::new("tar")
            .args(["--numeric-owner", "-C"])
            .arg(&root)
            .arg("-cf")
            .arg(&partial)
            .arg("."),
    );
    fs::rename(&partial, &tarball).expect("publish the root tarball");
    for (_, old) in cached {
        let _ = fs::remove_file(old);
    }
    tarball
}

/// A Debian root unpacked from a cached tarball into a temporary directory, with
/// /proc and /sys mounted for the commands run in it. Dropping it unmounts them
/// (lazily if they are busy) and removes the directory; should an unmount fail, the
/// directory is kept (and named) rather than removed through a live mount.
pub struct DebianRoot {
    dir: Option<tempfile::TempDir>,
    mounts: Vec<PathBuf>,
}

impl DebianRoot {
    /// A fresh root of `variant`; `what` names the test in the message when not root.
    pub fn new(variant: Variant, what: &str) -> DebianRoot {
        assert_root(what);
        let tarball = bookworm_tarball(variant);
        let dir = tempfile::Builder::new()
            .prefix("rally-debian-")
            .tempdir()
            .expect("create a temporary directory");
        let mut root = DebianRoot {
            dir: Some(dir),
            mounts: Vec::new(),
        };
        run_ok(
            Command::new("tar")
                .args(["--numeric-owner", "-xpf"])
                .arg(&tarball)
                .arg("-C")
                .arg(root.path()),
        );
        fs::copy("/etc/resolv.conf", root.path().join("etc/resolv.conf")).expect("copy a file");
        root.mount("proc", "proc");
        root.mount("sysfs", "sys");
        root
    }

    /// The root's directory on this machine.
    pub fn path(&self) -> &Path {
        self.dir.as_ref().expect("root directory").path()
    }

    fn mount(&mut self, fstype: &str, at: &str) {
        let target = self.path().join(at);
        run_ok(
            Command::new("mount")
                .args(["-t", fstype, fstype])
                .arg(&target),
        );
        self.mounts.push(target);
    }

    /// Unmounts /proc and /sys (lazily if they are busy), e.g. before the root is
    /// booted as a container; returns whether every unmount succeeded.
    pub fn unmount(&mut self) -> bool {
        let mut clean = true;
        for target in self.mounts.drain(..).rev() {
            let unmounted = |lazy: bool| {
                let mut cmd = Command::new("umount");
                if lazy {
                    cmd.arg("-l");
                }
                cmd.arg(&target)
                    .status()
                    .is_ok_and(|status| status.success())
            };
            if !unmounted(false) && !unmounted(true) {
                clean = false;
                eprintln!("could not unmount {}", target.display());
            }
        }
        clean
    }

    /// `chroot <root> [--userspec user] program args...` with a clean environment.
    pub fn command(&self, user: Option<&str>, args: &[&str]) -> Command {
        let mut cmd = bounded(600, "chroot");
        if let Some(user) = user {
            cmd.arg(format!("--userspec={user}:{user}"));
        }
        cmd.arg(self.path())
            .args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("LANG", "C.UTF-8")
            .env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    }

    /// Runs a command in the root as root; panics with its output unless it succeeds.
    pub fn run(&self, args: &[&str]) -> String {
        run_ok(&mut self.command(None, args))
    }

    /// Runs a command in the root as `user`.
    pub fn run_as(&self, user: &str, args: &[&str]) -> String {
        run_ok(&mut self.command(Some(user), args))
    }

    /// `stat -c '%U:%G %a'` of a path in the root.
    pub fn owner_and_mode(&self, path: &str) -> String {
        self.run(&["stat", "-c", "%U:%G %a", path])
            .trim()
            .to_owned()
    }

    /// Whether `path` (absolute, in the root) exists, a dangling symlink included.
    pub fn exists(&self, path: &str) -> bool {
        self.path()
            .join(path.trim_start_matches('/'))
            .symlink_metadata()
            .is_ok()
    }

    /// The text of `path` (absolute, in the root).
    pub fn read(&self, path: &str) -> String {
        fs::read_to_string(self.path().join(path.trim_start_matches('/')))
            .unwrap_or_else(|e| panic!("read {path} in the Debian root: {e}"))
    }

    /// Writes `text` to `path` (absolute, in the root).
    pub fn write(&self, path: &str, text: &str) {
        fs::write(self.path().join(path.trim_start_matches('/')), text).expect("write a file");
    }

    /// `dpkg-query -W -f=<format> <package>`.
    pub fn query(&self, package: &str, format: &str) -> String {
        self.run(&["dpkg-query", "-W", &format!("-f={format}"), package])
    }

    /// Copies the `.deb`s apt downloaded in an earlier run into the root, and back
    /// after `f`, so that the dependencies are fetched once.
    pub fn with_apt_cache<T>(&self, f: impl FnOnce() -> T) -> T {
        let cache = Path::new(CACHE_DIR).join("archives");
        fs::create_dir_all(&cache).expect("create a directory");
        let archives = self.path().join("var/cache/apt/archives");
        let debs = |dir: &Path| -> Vec<PathBuf> {
            fs::read_dir(dir)
                .map(|entries| {
                    entries
                        .filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
                        .collect()
                })
                .unwrap_or_default()
        };
        for deb in debs(&cache) {
            fs::copy(&deb, archives.join(deb.file_name().expect("a file name")))
                .expect("copy a file");
        }
        let result = f();
        // Published by rename, so that a concurrent run never copies half a file.
        for deb in debs(&archives) {
            let name = deb.file_name().expect("a file name");
            if cache.join(name).exists() {
                continue;
            }
            let partial = cache.join(format!(".{}.partial", name.to_string_lossy()));
            if fs::copy(&deb, &partial).is_ok() {
                let _ = fs::rename(&partial, cache.join(name));
            }
        }
        result
    }
}

impl Drop for DebianRoot {
    fn drop(&mut self) {
        if !self.unmount()
            && let Some(dir) = self.dir.take()
        {
            eprintln!("keeping {} (a mount is still in it)", dir.keep().display());
        }
    }
}
