//! `rally-policy`: Rally's resize policy: pure decisions from a group's policy, a view
//! of each VM's metrics, the group's remembered state and the time `now`.
//!
//! Nothing here does I/O or reads a clock: [`evaluate()`] takes `now` and a [`MetricView`],
//! and returns an [`Evaluation`] (decisions with evidence, events about resizes in flight,
//! and notes saying why a VM was skipped). The caller persists decisions before sending
//! them and feeds actuation failures back with [`GroupState::actuation_failed`].
//!
//! All times are wall-clock UTC ([`Timestamp`]); windows and caps convert to the group's
//! IANA zone where local time matters.
//!
//! # Layout
//!
//! - `group`: a group's policy keys in `collector.toml` ([`GroupPolicy`]) and their
//!   validated form ([`Policy`]).
//! - `ladder`: ordered rungs and the group's min/max.
//! - `metric`: the metrics rules can watch and the windows they read.
//! - `view`: the [`MetricView`] trait the fleet implements.
//! - `memory_view`: an in-memory [`MetricView`] over recorded samples (tests, benches).
//! - `rule`: threshold rules with `for` and hysteresis.
//! - `target`: HPA-style target tracking.
//! - `window`: daily scale-down windows in a time zone, DST-correct.
//! - `boost`: scheduled floors.
//! - `forecast`: growing before a rule's threshold is crossed, from its metric's trend.
//! - `scale_down`: the 24 h evidence a shrink needs.
//! - `decision`: decisions, evidence, skip reasons, events.
//! - `state`: what a group remembers between ticks (in flight, history, pause, circuit).
//! - `evaluate`: one evaluation of one group, and manual resizes.
//! - `candidate`: what one VM asks for on one tick (its gates, rules, targets, grow,
//!   shrink).
//! - `limits`: roll stop, cooldown and cap of one direction.
//!
//! **Invariant:** no I/O and no clock: this crate's manifest has no tokio, tonic, axum
//! or rusqlite, so Cargo enforces it.

// unwrap() is fine in tests (a panic is the failure report).
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod boost;
mod candidate;
pub mod decision;
pub mod evaluate;
pub mod forecast;
pub mod group;
pub mod ladder;
mod limits;
pub mod memory_view;
pub mod metric;
pub mod rule;
pub mod scale_down;
pub mod state;
pub mod target;
pub mod view;
pub mod window;

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests;

/// Wall-clock time, the only clock type in the engine.
pub type Timestamp = chrono::DateTime<chrono::Utc>;

pub use decision::{
    Decision, Direction, Evaluation, Event, Evidence, ForecastEvidence, Skip, SkipReason, Trigger,
};
pub use evaluate::{Group, ManualError, evaluate, manual_resize};
pub use group::{GroupPolicy, Policy, PolicyError};
pub use ladder::{Ladder, Rung, Size};
pub use metric::{Metric, Window};
pub use state::{GroupState, ResizeRecord, ResizeStatus};
pub use view::{Freshness, MetricView, Observation, ReportedSize, Series, WindowStat};
