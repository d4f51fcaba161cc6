//! `rally-daemon`: what `rally-agent` and `rally-collector` share as daemons, declared
//! once so that both behave alike.
//!
//! # Layout
//!
//! - [`config_file`]: reads a TOML configuration file into a serde type and locates
//!   every error (file, line, column and key path such as `sources[2].url`).
//! - [`secret`]: reads a secret (token, password, signing key) from a file, with one
//!   rule for every secret of both daemons.
//! - [`signals`]: SIGTERM/SIGINT end the daemon, SIGHUP reloads its configuration.
//! - [`notify`]: tells systemd the daemon is ready, reloading or stopping.
//! - [`logging`]: logs to standard error, filtered by `RUST_LOG`.
//!
//! **Invariant:** no knowledge of either daemon's configuration: callers pass their
//! types and their checks in.

// unwrap() is fine in tests (a panic is the failure report).
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod config_file;
pub mod logging;
pub mod notify;
pub mod secret;
pub mod signals;
