//! The per-VM limits on automatic resizes in one direction: a stopped roll, the cooldown
//! after the last resize, and the daily (up) or nightly (down) cap.

use super::Timestamp;
use super::decision::{Direction, SkipReason};
use super::evaluate::{Group, chrono};
use super::group::GroupPolicy;
use super::state::GroupState;
use super::window::local_day_start;

/// What holds back one direction of load-driven resizes of a VM.
pub(crate) struct Limits<'a> {
    /// The group's policy (which records are a forecast's notes, holding nothing back).
    cfg: &'a GroupPolicy,
    direction: Direction,
    /// A failed resize stopped this direction's roll until then.
    roll_stopped_until: Option<Timestamp>,
    /// Time after a completed resize in this direction before the next.
    cooldown: std::time::Duration,
    /// Load-driven resizes allowed per period.
    cap: u32,
    /// The cap's period: [start, end), open-ended when `end` is None.
    period: (Timestamp, Option<Timestamp>),
}

impl<'a> Limits<'a> {
    /// Roll stop, cooldown and daily cap of a load-driven scale-up at `now`.
    pub(crate) fn up(group: &Group<'a>, state: &GroupState, now: Timestamp) -> Self {
        let cfg = &group.policy.config;
        Self {
            cfg,
            direction: Direction::Up,
            roll_stopped_until: state.up_roll_stopped_until,
            cooldown: cfg.scale_up.cooldown,
            cap: cfg.scale_up.daily_cap,
            period: (local_day_start(cfg.timezone, now), None),
        }
    }

    /// Roll stop, cooldown and nightly cap of a scale-down in the window occurrence
    /// [start, end).
    pub(crate) fn down(
        group: &Group<'a>,
        state: &GroupState,
        start: Timestamp,
        end: Timestamp,
    ) -> Self {
        let cfg = &group.policy.config;
        Self {
            cfg,
            direction: Direction::Down,
            roll_stopped_until: state.down_roll_stopped_until,
            cooldown: cfg.scale_down.cooldown,
            cap: cfg.scale_down.nightly_cap,
            period: (start, Some(end)),
        }
    }

    /// The first limit that blocks a resize of `vm` at `now`, in the order roll stop,
    /// cooldown, cap.
    pub(crate) fn blocking(
        &self,
        state: &GroupState,
        vm: &str,
        now: Timestamp,
    ) -> Option<SkipReason> {
        let direction = self.direction;
        if let Some(until) = self.roll_stopped_until.filter(|u| *u > now) {
            return Some(SkipReason::RollStopped { direction, until });
        }
        let mine = || {
            state
                .resizes
                .iter()
                .filter(|r| r.vm == vm && r.direction == direction)
                .filter(|r| !r.is_forecast_note(self.cfg))
        };
        if let Some(until) = mine()
            .filter_map(|r| r.completed_at())
            .max()
            .map(|t| t + chrono(self.cooldown))
            .filter(|u| *u > now)
        {
            return Some(SkipReason::Cooldown { direction, until });
        }
        let (start, end) = self.period;
        let count = mine()
            .filter(|r| {
                r.trigger.is_load_driven()
                    && r.created_at >= start
                    && end.is_none_or(|end| r.created_at < end)
            })
            .count() as u32;
        (count >= self.cap).then_some(SkipReason::Cap {
            direction,
            count,
            cap: self.cap,
        })
    }
}
