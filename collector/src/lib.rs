//! `rally-collector`: receives Rally agents' report streams, keeps a windowed,
//! in-memory picture of every VM and group, and serves it to Prometheus (`/metrics`),
//! scripts (`/api/v1`) and people (the status page).
//!
//! # Layout
//!
//! - [`config`]: `collector.toml` (listeners, ingest limits, state, auth, groups), with
//!   errors that name file, line and key.
//! - [`clock`]: the injectable wall clock (simulated time in tests).
//! - [`fleet`]: the in-memory picture: per VM identity, size, latest report,
//!   freshness, counters and metric windows (raw 5 min, 1-minute buckets for 24 h),
//!   with the queries the policy engine asks.

pub mod clock;
pub mod config;
pub mod fleet;
