//! The end-to-end harness: starts Rally's real binaries and real third-party
//! components on loopback, and fails loudly when one of them is missing.
//!
//! # Layout
//!
//! - [`bin`]: finds the built `rally-agent` / `rally-collector` binaries.
//! - [`browser`]: headless Chromium driven over the DevTools Protocol (navigate,
//!   read the DOM, click with the mouse, type, screenshot).
//! - [`command`]: runs an external command to completion, bounded in time.
//! - [`debian_root`]: a clean Debian 12 root from a cached `debootstrap` tarball.
//! - [`etcd`]: a cluster of real etcd members (on loopback, or wrapped in a network
//!   namespace by the caller), stopped and restarted on their data.
//! - [`fuzz`]: one function per fuzz target, shared by `fuzz/` and the corpus replay.
//! - [`ledger`]: what a collector says it applied (its accept log lines, its
//!   `/metrics` samples), for the tests that account for every report.
//! - [`nspawn`]: Debian roots booted with systemd as PID 1 (`systemd-nspawn`) on a
//!   network of the test's own (network namespaces joined by a veth pair, or many on
//!   a bridge), and test hosts linked to this machine (for what must come from a
//!   non-loopback address).
//! - [`packages`]: the `.deb`s `scripts/package` built.
//! - [`prometheus`]: a real Prometheus server scraping one job.
//! - [`proxy`]: a TCP proxy that delays, resets, stalls or cuts connections (a bad
//!   network, as this kernel has no netem), listening on loopback or in a namespace.
//! - [`process`]: a child process that is killed when dropped, with its log on disk.
//! - [`rally`]: starts a collector or an agent from a config written by the test.
//! - [`tool`]: requires an external program (promtool, nginx, ...): a missing one is
//!   a test failure, never a skip.
//! - [`raw`]: a gRPC client that can send bytes the generated client never would.
//! - [`web`]: real nginx, Apache and php-fpm on loopback with the test's own configs,
//!   and a paced load generator.
//! - [`webhook`]: a real HTTP receiver of resize webhooks that checks signatures and
//!   refuses a fencing token lower than one it has seen.

pub mod bin;
pub mod browser;
pub mod command;
pub mod debian_root;
pub mod etcd;
pub mod fuzz;
pub mod ledger;
pub mod nspawn;
pub mod packages;
pub mod process;
pub mod prometheus;
pub mod proxy;
pub mod rally;
pub mod raw;
pub mod tool;
pub mod web;
pub mod webhook;

use std::time::{Duration, Instant};

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    eventually_explained(timeout, what, f, String::new).await
}

/// [`eventually`], adding what `explain` says (logs, say) when it times out.
pub async fn eventually_explained<T, F, Fut>(
    timeout: Duration,
    what: &str,
    mut f: F,
    explain: impl Fn() -> String,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if start.elapsed() >= timeout {
            let why = explain();
            let sep = if why.is_empty() { "" } else { "\n" };
            panic!("timed out after {timeout:?} waiting for {what}{sep}{why}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Returns a TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// Online CPUs of this machine (`/sys/devices/system/cpu/online`, e.g. `0-3,6`).
pub fn online_cpus() -> u32 {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online")
        .expect("read /sys/devices/system/cpu/online");
    text.trim()
        .split(',')
        .filter(|r| !r.is_empty())
        .map(|range| match range.split_once('-') {
            Some((a, b)) => {
                let a: u32 = a.parse().expect("cpu range start");
                let b: u32 = b.parse().expect("cpu range end");
                b - a + 1
            }
            None => 1,
        })
        .sum()
}

/// MemTotal from this machine's `/proc/meminfo`, in bytes.
pub fn proc_mem_total_bytes() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").expect("read /proc/meminfo");
    let line = text
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .expect("MemTotal in /proc/meminfo");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("MemTotal value");
    kib * 1024
}
