//! rally-agent: samples a Debian VM and streams the samples to Rally's collectors.
//!
//! Every interval (5 s by default) the agent reads `/proc` and `/sys`, turns counters
//! into shares and rates over the interval, and streams a `Report` with the next
//! sequence number to every configured collector over `rally.v1.Ingest/Stream`. Reports
//! stay in a bounded per-collector buffer until acknowledged, and are replayed after a
//! reconnect.
//!
//! # Layout
//!
//! - [`sample`]: one module per signal (`cpu`, `memory`, `load`, `pressure`, `net`,
//!   `disk`, `filesystem`, `size`), each a file read plus pure functions over its text,
//!   the byte scanner the per-sample parsers share (`scan`), and the
//!   [`sample::Sampler`] that reads them all and keeps previous counters.
//! - [`source`]: one module per web-server source (`nginx`, `apache`, `php_fpm`,
//!   `access_log` with its rotation-proof `tail`, `prometheus`), the bounded HTTP
//!   reader they share, counter-reset math, and [`source::Sources`] that reads them all.
//! - [`buffer`]: the bounded queue of un-acknowledged reports (drops the oldest, counts
//!   it, trims on acknowledgement).
//! - [`backoff`]: gRPC's connection backoff (1 s × 1.6, ±20 %, cap 120 s).
//! - [`tick`]: the sampling clock (a timerfd: one wake-up per sample).
//! - [`transport`]: one stream per collector: `Hello`, replay, follow, reconnect.
//! - [`lowat`]: acknowledgements held in the kernel (the socket's receive low-water
//!   mark) and read on a sampling tick at most 5 s later, so that a sample costs one
//!   wake-up.
//! - [`tls`]: the `[tls]` files for `https://` collectors, and TLS failures explained.
//! - [`wire`]: the transport edge, domain samples to `rally.v1` messages.
//! - [`status`]: `rally-agent status`: the running agent's answer on its Unix socket
//!   (connected collectors, buffered reports, last acknowledgements) and the client.
//! - [`agent`]: one run: identity, the sampling loop, the stream tasks ([`run`]).
//! - [`config`]: `agent.toml` ([`Config`], [`load_config`]).
//! - [`cli`]: the command line ([`Cli`]), shared with the man page generator.

// unwrap() is fine in tests (a panic is the failure report).
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod agent;
pub mod backoff;
pub mod buffer;
pub mod cli;
pub mod config;
pub mod lowat;
pub mod sample;
pub mod source;
pub mod status;
pub mod tick;
pub mod tls;
pub mod transport;
pub mod wire;

pub use agent::{Error, run};
pub use cli::Cli;
pub use config::{Config, ConfigError, load_config};
