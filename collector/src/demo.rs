//! `rally-collector demo`: Rally on one machine without a config file. A collector
//! on loopback (state in a temporary directory, removed on exit) and, in the same
//! process, an agent that reports this machine to it. Runs until Ctrl-C.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::sync::watch;

use crate::cli::DemoArgs;
use crate::config::Config;
use crate::{Collector, Error};

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
        let collector = Collector::bind(config).await?;
        let agent = rally_agent::Config {
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
    println!();
    println!("Press Ctrl-C to stop.");
    demo.serve(shutdown).await
}
