//! Scheduled boosts: "group at least rung L from T1 to T2" for a planned promotion.

use std::time::Duration;

use chrono::NaiveDateTime;
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use super::Timestamp;
use super::ladder::{Ladder, RungIndex};
use super::window::resolve_local;

/// One `[[groups.boosts]]` entry. Times are local wall-clock times in `timezone`, written
/// as quoted strings ("2026-12-04T18:00").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoostConfig {
    /// A label shown in decisions ("black-friday").
    #[serde(default)]
    pub name: Option<String>,
    /// The floor: every member is at least this rung while the boost is on.
    pub rung: String,
    /// Local start time, `YYYY-MM-DDTHH:MM[:SS]`.
    pub start: String,
    /// Local end time (exclusive), `YYYY-MM-DDTHH:MM[:SS]`.
    pub end: String,
    /// IANA zone of `start`/`end`; defaults to the group's `timezone`.
    #[serde(default)]
    pub timezone: Option<Tz>,
    /// How long before `start` the floor is applied, so a roll finishes in time ("10m").
    #[serde(default = "default_lead", with = "humantime_serde")]
    pub lead: Duration,
}

fn default_lead() -> Duration {
    Duration::from_secs(600)
}

/// A boost resolved against the ladder and its zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Boost {
    /// Label used in reasons.
    pub name: String,
    /// The floor rung.
    pub rung: RungIndex,
    /// When the floor starts to apply (start − lead).
    pub applies_from: Timestamp,
    /// The configured start.
    pub start: Timestamp,
    /// The configured end (exclusive).
    pub end: Timestamp,
}

fn parse_local(s: &str) -> Option<NaiveDateTime> {
    [
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
    ]
    .iter()
    .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
}

impl BoostConfig {
    /// Resolves the rung and the times; `index` names the boost when it has no `name`.
    pub fn resolve(&self, ladder: &Ladder, group_tz: Tz, index: usize) -> Result<Boost, String> {
        let rung = ladder
            .index_of(&self.rung)
            .ok_or_else(|| format!("no rung named {:?}", self.rung))?;
        if rung < ladder.min() || rung > ladder.max() {
            return Err(format!(
                "rung {:?} is outside min_rung..max_rung",
                self.rung
            ));
        }
        let tz = self.timezone.unwrap_or(group_tz);
        let local = |s: &str| {
            parse_local(s)
                .ok_or_else(|| format!("{s:?} is not a local time like \"2026-12-04T18:00\""))
        };
        let start = resolve_local(tz, local(&self.start)?);
        let end = resolve_local(tz, local(&self.end)?);
        if end <= start {
            return Err(format!(
                "end {:?} is not after start {:?}",
                self.end, self.start
            ));
        }
        let lead =
            chrono::Duration::from_std(self.lead).map_err(|_| "lead is too long".to_owned())?;
        Ok(Boost {
            name: self
                .name
                .clone()
                .unwrap_or_else(|| format!("boost #{}", index + 1)),
            rung,
            applies_from: start - lead,
            start,
            end,
        })
    }
}

/// The boost setting the highest floor at `now` (the largest overlapping floor wins).
pub fn floor_at(boosts: &[Boost], now: Timestamp) -> Option<&Boost> {
    boosts
        .iter()
        .filter(|b| b.applies_from <= now && now < b.end)
        .max_by_key(|b| b.rung)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::ladder::Rung;

    fn ladder() -> Ladder {
        let r = |name: &str, vcpus| Rung {
            name: name.into(),
            vcpus,
            memory_bytes: u64::from(vcpus) << 31,
            oktawave_type: None,
        };
        Ladder::new(
            vec![r("S", 1), r("M", 2), r("L", 4), r("XL", 8)],
            None,
            Some("L"),
        )
        .unwrap()
    }

    fn utc(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn boost(name: &str, rung: &str, start: &str, end: &str) -> BoostConfig {
        BoostConfig {
            name: Some(name.into()),
            rung: rung.into(),
            start: start.into(),
            end: end.into(),
            timezone: None,
            lead: default_lead(),
        }
    }

    #[test]
    fn boosts_apply_ten_minutes_early_and_the_largest_floor_wins() {
        let l = ladder();
        let tz = chrono_tz::Europe::Warsaw;
        let boosts: Vec<Boost> = [
            boost("promo", "L", "2026-12-04T18:00", "2026-12-06T23:00"),
            boost("weekend", "M", "2026-12-04T12:00", "2026-12-07T00:00"),
        ]
        .iter()
        .enumerate()
        .map(|(i, b)| b.resolve(&l, tz, i).unwrap())
        .collect();
        // (case, instant, expected floor)
        let cases = [
            ("before everything", "2026-12-04T10:00:00Z", None),
            (
                "weekend only (13:00 CET)",
                "2026-12-04T12:00:00Z",
                Some("weekend"),
            ),
            (
                "16:49 UTC = 17:49 CET: promo not yet",
                "2026-12-04T16:49:00Z",
                Some("weekend"),
            ),
            (
                "16:50 UTC = 17:50 CET: promo applies 10 min early",
                "2026-12-04T16:50:00Z",
                Some("promo"),
            ),
            (
                "during both: L beats M",
                "2026-12-05T12:00:00Z",
                Some("promo"),
            ),
            (
                "22:00 UTC = 23:00 CET: promo over",
                "2026-12-06T22:00:00Z",
                Some("weekend"),
            ),
            ("after both", "2026-12-06T23:00:00Z", None),
        ];
        for (case, t, want) in cases {
            assert_eq!(
                floor_at(&boosts, utc(t)).map(|b| b.name.as_str()),
                want,
                "{case}"
            );
        }
    }

    #[test]
    fn resolve_rejects_bad_boosts() {
        let l = ladder();
        let tz = chrono_tz::Europe::Warsaw;
        assert!(
            boost("x", "XL", "2026-12-04T18:00", "2026-12-05T18:00")
                .resolve(&l, tz, 0)
                .is_err()
        );
        assert!(
            boost("x", "Q", "2026-12-04T18:00", "2026-12-05T18:00")
                .resolve(&l, tz, 0)
                .is_err()
        );
        assert!(
            boost("x", "M", "2026-12-05T18:00", "2026-12-04T18:00")
                .resolve(&l, tz, 0)
                .is_err()
        );
        assert!(
            boost("x", "M", "Friday 18:00", "2026-12-04T18:00")
                .resolve(&l, tz, 0)
                .is_err()
        );
        let ok = boost("x", "M", "2026-12-04 18:00:30", "2026-12-04T19:00")
            .resolve(&l, tz, 0)
            .unwrap();
        assert_eq!(ok.start, utc("2026-12-04T17:00:30Z"));
    }
}
