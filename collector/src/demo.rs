//! `rally-collector demo`: Rally on one machine without a config file. A collector
//! on loopback (state in a temporary directory, removed on exit) and, in the same
//! process, an agent that reports this machine to it. Runs until Ctrl-C.
//!
//! The machine is put in a group `demo` whose ladder is built from its own size
//! (`S` half, `M` as it is, `L` double), with a quick CPU rule (≥ 0.80 for 30 s) and
//! dry-run with the log actuator: load the CPU and a decision shows up on the status
//! page, in `/api/v1/decisions` and in the log, and nothing is sent anywhere.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::sync::watch;

use crate::cli::DemoArgs;
use crate::config::Config;
use crate::vm_id::validate_id;
use crate::{Collector, Error};
use rally_policy::GroupPolicy;
use rally_policy::ladder::Rung;
use rally_policy::metric::{Metric, Window};
use rally_policy::rule::Rule;

/// The demo group's name.
pub const DEMO_GROUP: &str = "demo";

/// This machine's VM id in the demo: its hostname when that is a valid id.
fn demo_vm_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| validate_id(h).is_ok())
        .unwrap_or_else(|| "this-machine".to_owned())
}

/// This machine's usable size (online CPUs, MemTotal), if readable.
fn this_size() -> Option<(u32, u64)> {
    let cpus = std::fs::read_to_string("/sys/devices/system/cpu/online").ok()?;
    let vcpus = rally_agent::sample::size::count_cpu_list(&cpus).ok()?;
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let memory = rally_agent::sample::memory::parse(&meminfo).ok()?;
    Some((vcpus, memory.total_bytes))
}

/// The demo group: this machine on the middle rung of S (half), M (itself), L (double),
/// a CPU rule that fires after 30 s, and dry-run (the global default).
pub fn demo_group(vm: &str) -> Option<GroupPolicy> {
    let (vcpus, memory) = this_size()?;
    let rung = |name: &str, vcpus: u32, memory_bytes: u64| Rung {
        name: name.into(),
        vcpus,
        memory_bytes,
        oktawave_type: None,
    };
    // A one-vCPU machine cannot halve its CPUs: its S keeps one and halves memory.
    let ladder = vec![
        rung("S", (vcpus / 2).max(1), memory / 2),
        rung("M", vcpus, memory),
        rung("L", vcpus * 2, memory * 2),
    ];
    let mut policy = GroupPolicy::new(DEMO_GROUP, vec![vm.to_owned()], ladder);
    policy.rules = vec![Rule {
        metric: Metric::CpuUtilization,
        window: Window::Last,
        threshold: 0.80,
        clear: Some(0.55),
        hold_for: Duration::from_secs(30),
    }];
    policy.scale_up.cooldown = Duration::from_secs(120);
    Some(policy)
}

/// The demo agent samples faster than the shipped 5 s, so the page fills up quickly.
pub const DEMO_INTERVAL: Duration = Duration::from_secs(2);

/// Why the demo stopped.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The temporary state directory could not be created.
    #[error("creating a temporary state directory")]
    StateDir(#[source] std::io::Error),
    /// The collector failed.
    #[error(transparent)]
    Collector(#[from] Error),
    /// The agent failed.
    #[error("agent")]
    Agent(#[from] rally_agent::Error),
}

/// A bound demo: the collector is listening, the agent not yet started.
#[derive(Debug)]
pub struct Demo {
    collector: Collector,
    agent: rally_agent::Config,
    /// Removed when the demo ends.
    _state: tempfile::TempDir,
}

/// Where an agent on this machine reaches a listener bound to `addr`.
fn reachable(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
    } else {
        addr
    }
}

impl Demo {
    /// Binds the demo collector on `args`' addresses.
    pub async fn bind(args: &DemoArgs) -> Result<Self, DemoError> {
        let state = tempfile::Builder::new()
            .prefix("rally-demo-")
            .tempdir()
            .map_err(DemoError::StateDir)?;
        let mut config = Config::default();
        config.listen.grpc = args.grpc;
        config.listen.http = args.http;
        config.state.dir = state.path().to_path_buf();
        config.engine.tick = DEMO_INTERVAL;
        let vm = demo_vm_id();
        config.groups.extend(demo_group(&vm));
        let collector = Collector::bind(config).await?;
        let agent = rally_agent::Config {
            vm_id: Some(vm),
            collectors: vec![format!("http://{}", reachable(collector.grpc_addr()))],
            interval: DEMO_INTERVAL,
            ..rally_agent::Config::default()
        };
        Ok(Self {
            collector,
            agent,
            _state: state,
        })
    }

    /// The collector's HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.collector.http_addr()
    }

    /// The collector's gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.collector.grpc_addr()
    }

    /// Runs the collector and the agent until `shutdown` completes.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), DemoError> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let collector = self.collector.serve(stopped(stop_rx.clone()));
        let agent = rally_agent::run(self.agent, stopped(stop_rx));
        let both = async {
            tokio::try_join!(async { Ok::<_, DemoError>(collector.await?) }, async {
                Ok::<_, DemoError>(agent.await?)
            })
        };
        tokio::pin!(both);
        tokio::select! {
            // Either side failing ends the demo (try_join stops at the first error).
            result = &mut both => result.map(|_| ()),
            () = shutdown => {
                let _ = stop_tx.send(true);
                both.await.map(|_| ())
            }
        }
    }
}

/// `rally-collector demo`: binds, says where to look, runs until `shutdown`.
pub async fn run(args: DemoArgs, shutdown: impl Future<Output = ()>) -> Result<(), DemoError> {
    let demo = Demo::bind(&args).await?;
    let http = reachable(demo.http_addr());
    println!(
        "Rally demo: a collector on {} (gRPC) and {http} (HTTP),",
        demo.grpc_addr()
    );
    println!(
        "with an agent reporting this machine every {} s.",
        DEMO_INTERVAL.as_secs()
    );
    println!();
    println!("  status page   http://{http}/");
    println!("  JSON          http://{http}/api/v1/vms");
    println!("  Prometheus    http://{http}/metrics");
    println!("  decisions     http://{http}/api/v1/decisions");
    println!();
    println!(
        "This machine is in group `{DEMO_GROUP}` with a ladder S (half) / M (as it is) / L (double),"
    );
    println!("a rule \"CPU >= 80 % for 30 s\", and dry-run with the log actuator: load the CPU");
    println!("(e.g. `stress-ng --cpu 0 --timeout 60s`) and a scale-up decision appears on the");
    println!("page and in the log; nothing is sent anywhere.");
    println!();
    println!("Press Ctrl-C to stop.");
    demo.serve(shutdown).await
}
