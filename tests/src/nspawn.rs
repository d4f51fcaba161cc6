//! Debian roots booted with systemd as PID 1 (`systemd-nspawn -b`), each on a
//! network namespace of the test's own, so that daemons run under a real systemd
//! and talk to each other across hosts with their own addresses.
//!
//! No machined is involved (`--register=no --keep-unit`): commands run in a
//! container through `nsenter` into its PID 1's namespaces. Dropping a
//! [`Container`] kills its PID 1 (which ends every process in it) and `nspawn`;
//! dropping a [`Netns`] deletes the namespace. Both need root.

use crate::command::{bounded, output, output_with_stdin, run_ok};
use crate::debian_root::DebianRoot;
use crate::process::Process;
use crate::tool;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Polls `f` every 200 ms until it returns `Some`, or panics with `what` (and the
/// last state `f` reported through `last`) after `timeout`.
pub fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut f: impl FnMut(&mut String) -> Option<T>,
) -> T {
    let start = Instant::now();
    let mut last = String::new();
    loop {
        if let Some(v) = f(&mut last) {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}; last seen:\n{last}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs `nft -f -` with `script` inside the network namespace named `netns` and
/// returns what it said; the caller decides how strict to be.
pub fn nft(netns: &str, script: &str) -> Output {
    let nft = tool::require("nft", "nftables");
    let mut cmd = Command::new(tool::require("ip", "iproute2"));
    cmd.args(["netns", "exec", netns])
        .arg(nft)
        .args(["-f", "-"]);
    output_with_stdin(&mut cmd, script.as_bytes())
}

/// A named network namespace (`ip netns add`), deleted when dropped.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace `name` with its loopback up; panics when `ip` is missing
    /// or the name is taken.
    pub fn create(name: &str) -> Netns {
        let ip = tool::require("ip", "iproute2");
        run_ok(Command::new(&ip).args(["netns", "add", name]));
        let netns = Netns {
            name: name.to_owned(),
        };
        netns.ip(&["link", "set", "lo", "up"]);
        netns
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The file that holds the namespace (for `--network-namespace-path`).
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// `ip -n <name> args...`; panics unless it succeeds.
    pub fn ip(&self, args: &[&str]) -> String {
        run_ok(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// Joins `a` and `b` with a veth pair, `eth0` on both sides, with the addresses
    /// (CIDR, e.g. `10.77.0.1/24`) given, and brings it up.
    pub fn link(a: &Netns, a_address: &str, b: &Netns, b_address: &str) {
        run_ok(Command::new("ip").args([
            "link", "add", "name", "eth0", "netns", &a.name, "type", "veth", "peer", "name",
            "eth0", "netns", &b.name,
        ]));
        for (netns, address) in [(a, a_address), (b, b_address)] {
            netns.ip(&["addr", "add", address, "dev", "eth0"]);
            netns.ip(&["link", "set", "eth0", "up"]);
        }
    }
}

impl Netns {
    /// Joins the namespace to this machine with a veth pair: `host_veth` here with
    /// `host_address`, `eth0` inside with `address` (CIDR), both up. A process inside
    /// then reaches this machine's listeners from a non-loopback address.
    pub fn link_to_host(&self, host_veth: &str, host_address: &str, address: &str) {
        run_ok(Command::new("ip").args([
            "link", "add", "name", host_veth, "type", "veth", "peer", "name", "eth0", "netns",
            &self.name,
        ]));
        run_ok(Command::new("ip").args(["addr", "add", host_address, "dev", host_veth]));
        run_ok(Command::new("ip").args(["link", "set", host_veth, "up"]));
        self.ip(&["addr", "add", address, "dev", "eth0"]);
        self.ip(&["link", "set", "eth0", "up"]);
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(tool::require("ip", "iproute2"));
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }
}

/// A switch: a namespace holding a Linux bridge (`br0`) that joins any number of
/// namespaces (and this machine) on one network, each through a veth pair of its own.
/// Dropping it deletes the namespace, and with it every veth pair it holds.
pub struct Bridge {
    netns: Netns,
    ports: std::sync::atomic::AtomicU32,
    /// This machine's veth, once attached: deleted at once when dropped (the kernel
    /// removes a deleted namespace's devices a while later).
    host_veth: std::sync::Mutex<Option<String>>,
}

impl Bridge {
    /// Creates the namespace `name` with the bridge `br0` up in it.
    pub fn create(name: &str) -> Bridge {
        let netns = Netns::create(name);
        netns.ip(&["link", "add", "br0", "type", "bridge"]);
        netns.ip(&["link", "set", "br0", "up"]);
        Bridge {
            netns,
            ports: std::sync::atomic::AtomicU32::new(0),
            host_veth: std::sync::Mutex::default(),
        }
    }

    /// The bridge's namespace.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// A new port of the bridge, up: the name of its veth in the bridge's namespace.
    fn port(&self) -> String {
        let n = self
            .ports
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("p{n}")
    }

    /// Plugs `host` in: `eth0` there with `address` (CIDR, e.g. `10.99.0.11/24`), up.
    pub fn attach(&self, host: &Netns, address: &str) {
        let port = self.port();
        run_ok(Command::new("ip").args([
            "link",
            "add",
            "name",
            &port,
            "netns",
            &self.netns.name,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &host.name,
        ]));
        self.netns.ip(&["link", "set", &port, "master", "br0"]);
        self.netns.ip(&["link", "set", &port, "up"]);
        host.ip(&["addr", "add", address, "dev", "eth0"]);
        host.ip(&["link", "set", "eth0", "up"]);
    }

    /// Plugs this machine in: `host_veth` here with `address` (CIDR), up, so that the
    /// test reaches every namespace on the bridge and they reach its listeners.
    pub fn attach_this_machine(&self, host_veth: &str, address: &str) {
        let port = self.port();
        run_ok(Command::new("ip").args([
            "link",
            "add",
            "name",
            host_veth,
            "type",
            "veth",
            "peer",
            "name",
            &port,
            "netns",
            &self.netns.name,
        ]));
        self.netns.ip(&["link", "set", &port, "master", "br0"]);
        self.netns.ip(&["link", "set", &port, "up"]);
        run_ok(Command::new("ip").args(["addr", "add", address, "dev", host_veth]));
        run_ok(Command::new("ip").args(["link", "set", host_veth, "up"]));
        *self
            .host_veth
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(host_veth.to_owned());
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let host_veth = self
            .host_veth
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(veth) = host_veth {
            let deleted = Command::new("ip")
                .args(["link", "del", &veth])
                .status()
                .is_ok_and(|s| s.success());
            if !deleted {
                eprintln!("could not delete the veth {veth}");
            }
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let deleted = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status()
            .is_ok_and(|s| s.success());
        if !deleted {
            eprintln!("could not delete the network namespace {}", self.name);
        }
    }
}

/// A Debian root booted by `systemd-nspawn -b` with systemd as PID 1.
pub struct Container {
    name: String,
    leader: Option<u32>,
    nspawn: Option<Process>,
    // Dropped last: the directory outlives every process that used it.
    root: DebianRoot,
}

impl Container {
    /// Boots `root` as the machine `name` (also its hostname) in `netns`, with the
    /// console written to `console`, and waits (at most `timeout`) until its systemd
    /// has finished starting up. Panics naming the package when a tool is missing.
    pub fn boot(
        name: &str,
        mut root: DebianRoot,
        netns: &Netns,
        console: &Path,
        timeout: Duration,
    ) -> Container {
        let nspawn = tool::require("systemd-nspawn", "systemd-container");
        tool::require("nsenter", "util-linux");
        // nspawn mounts its own /proc and /sys; the root's chroot mounts go first.
        assert!(
            root.unmount(),
            "unmount /proc and /sys of the root of {name}"
        );
        let mut cmd = Command::new(nspawn);
        cmd.args(["--quiet", "--register=no", "--keep-unit", "--boot"])
            .arg(format!("--machine={name}"))
            .arg("--directory")
            .arg(root.path())
            .arg(format!(
                "--network-namespace-path={}",
                netns.path().display()
            ))
            // The root's own files, untouched by this machine's.
            .args(["--resolv-conf=off", "--timezone=off", "--link-journal=no"])
            // The console, without a terminal, as a log.
            .args(["--console=passive", "--setenv=SYSTEMD_COLORS=0"]);
        let mut container = Container {
            name: name.to_owned(),
            leader: None,
            nspawn: Some(Process::spawn(
                &format!("systemd-nspawn {name}"),
                cmd,
                console,
            )),
            root,
        };
        let nspawn_pid = container.nspawn.as_ref().map(Process::pid).unwrap_or(0);
        let leader = wait_for(timeout, &format!("{name}'s PID 1"), |last| {
            if !container.nspawn.as_mut().is_some_and(Process::is_running) {
                panic!("systemd-nspawn {name} exited:\n{}", container.console());
            }
            *last = container.console();
            child_of(nspawn_pid)
        });
        container.leader = Some(leader);
        // Finished starting up: "running", or "degraded" when a unit failed (the
        // caller checks its own units). Polled: systemctl fails until PID 1 listens.
        wait_for(timeout, &format!("{name} to finish booting"), |last| {
            let out = container.output(&["systemctl", "is-system-running"]);
            let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            *last = format!(
                "{state:?} {}\n{}",
                String::from_utf8_lossy(&out.stderr).trim(),
                container.console()
            );
            (state == "running" || state == "degraded").then_some(())
        });
        container
    }

    /// The machine's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The root directory on this machine.
    pub fn root(&self) -> &DebianRoot {
        &self.root
    }

    /// What the container printed on its console (`systemd-nspawn`'s output).
    pub fn console(&self) -> String {
        self.nspawn.as_ref().map(Process::log).unwrap_or_default()
    }

    /// A command run in the container, as root, bounded to two minutes:
    /// `nsenter` into its PID 1's namespaces, with a clean environment.
    pub fn command(&self, args: &[&str]) -> Command {
        let leader = self.leader.expect("the container has booted");
        let mut cmd = bounded(120, "nsenter");
        cmd.arg(format!("--target={leader}"))
            .args(["--mount", "--uts", "--ipc", "--net", "--pid", "--"])
            .args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("LANG", "C.UTF-8")
            .env("SYSTEMD_PAGER", "")
            .env("SYSTEMD_COLORS", "0");
        cmd
    }

    /// Runs a command in the container; its output, whatever its exit status.
    pub fn output(&self, args: &[&str]) -> Output {
        output(&mut self.command(args))
    }

    /// Runs a command in the container; panics with its output unless it succeeds.
    pub fn run(&self, args: &[&str]) -> String {
        run_ok(&mut self.command(args))
    }

    /// `systemctl show -p <properties> <unit>` as (name, value) pairs.
    pub fn unit_properties(&self, unit: &str, properties: &[&str]) -> Vec<(String, String)> {
        self.run(&[
            "systemctl",
            "show",
            unit,
            &format!("--property={}", properties.join(",")),
        ])
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// One property of a unit (`systemctl show -p <property> --value`).
    pub fn unit_property(&self, unit: &str, property: &str) -> String {
        self.run(&[
            "systemctl",
            "show",
            unit,
            "--value",
            &format!("--property={property}"),
        ])
        .trim()
        .to_owned()
    }

    /// The unit's journal since boot, message text only.
    pub fn journal(&self, unit: &str) -> String {
        self.run(&["journalctl", "--no-pager", "--output=cat", "--unit", unit])
    }
}

/// The child of `parent` in another PID namespace than this process's: the PID 1
/// that `systemd-nspawn` started (its helper children stay in this namespace).
fn child_of(parent: u32) -> Option<u32> {
    let own = fs::read_link("/proc/self/ns/pid").ok()?;
    fs::read_dir("/proc").ok()?.find_map(|entry| {
        let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        let ppid: u32 = stat
            .rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        let ns = fs::read_link(format!("/proc/{pid}/ns/pid")).ok()?;
        (ppid == parent && ns != own).then_some(pid)
    })
}

impl Drop for Container {
    fn drop(&mut self) {
        // SIGKILL to PID 1 of a PID namespace ends every process in it at once.
        if let Some(leader) = self.leader.take() {
            let _ = Command::new("kill")
                .args(["-s", "KILL", &leader.to_string()])
                .status();
        }
        // nspawn then exits on its own (removing what it made on this machine); it
        // is killed only when it does not.
        if let Some(mut nspawn) = self.nspawn.take() {
            let start = Instant::now();
            while nspawn.is_running() && start.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(50));
            }
            if nspawn.is_running() {
                eprintln!("systemd-nspawn {} had to be killed", self.name);
            }
        }
    }
}
