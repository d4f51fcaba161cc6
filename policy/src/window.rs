//! Scale-down windows: a daily local-time range ("02:00-05:00") in an IANA zone,
//! DST-correct, plus the local-day boundaries the daily caps count in.

use std::fmt;
use std::str::FromStr;

use chrono::{
    Duration as ChronoDuration, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, TimeZone,
};
use chrono_tz::Tz;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::Timestamp;

/// A daily range of local wall-clock time. `end` ≤ `start` means it crosses midnight
/// ("23:00-02:00").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DailyWindow {
    /// Local time the window opens.
    pub start: NaiveTime,
    /// Local time the window closes (exclusive).
    pub end: NaiveTime,
}

/// One concrete night of a [`DailyWindow`], in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Occurrence {
    /// When this occurrence opens.
    pub start: Timestamp,
    /// When it closes (exclusive).
    pub end: Timestamp,
}

/// Why a window string does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid window {0:?}: expected \"HH:MM-HH:MM\" in local time, e.g. \"02:00-05:00\"")]
pub struct WindowParseError(String);

impl FromStr for DailyWindow {
    type Err = WindowParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || WindowParseError(s.to_owned());
        let (a, b) = s.split_once('-').ok_or_else(err)?;
        let parse = |t: &str| NaiveTime::parse_from_str(t.trim(), "%H:%M").map_err(|_| err());
        let (start, end) = (parse(a)?, parse(b)?);
        if start == end {
            return Err(err());
        }
        Ok(Self { start, end })
    }
}

impl fmt::Display for DailyWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}-{}",
            self.start.format("%H:%M"),
            self.end.format("%H:%M")
        )
    }
}

impl Serialize for DailyWindow {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DailyWindow {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The instant a local wall-clock time stands for in `tz`. An ambiguous time (the hour
/// repeated when clocks fall back) is its first occurrence; a time skipped when clocks
/// spring forward is the first instant after the gap.
pub fn resolve_local(tz: Tz, local: NaiveDateTime) -> Timestamp {
    let mut probe = local;
    // DST gaps are at most a few hours; a day bounds the search whatever the zone does.
    for _ in 0..(24 * 60) {
        match tz.from_local_datetime(&probe) {
            LocalResult::Single(t) => return t.to_utc(),
            LocalResult::Ambiguous(first, _) => return first.to_utc(),
            LocalResult::None => probe += ChronoDuration::minutes(1),
        }
    }
    // Unreachable for real zones; fall back to reading the time as UTC rather than panic.
    local.and_utc()
}

/// The start of the local calendar day containing `now` in `tz` (daily caps count from it).
pub fn local_day_start(tz: Tz, now: Timestamp) -> Timestamp {
    let date = now.with_timezone(&tz).date_naive();
    resolve_local(tz, date.and_time(NaiveTime::MIN))
}

impl DailyWindow {
    fn occurrence_on(&self, tz: Tz, date: NaiveDate) -> Occurrence {
        let end_date = if self.end <= self.start {
            date.succ_opt().unwrap_or(date)
        } else {
            date
        };
        Occurrence {
            start: resolve_local(tz, date.and_time(self.start)),
            end: resolve_local(tz, end_date.and_time(self.end)),
        }
    }

    /// The occurrence containing `now`, if the window is open.
    pub fn occurrence_at(&self, tz: Tz, now: Timestamp) -> Option<Occurrence> {
        let today = now.with_timezone(&tz).date_naive();
        [today.pred_opt(), Some(today)]
            .into_iter()
            .flatten()
            .map(|d| self.occurrence_on(tz, d))
            .find(|o| o.start <= now && now < o.end)
    }

    /// When the window next opens strictly after `now`.
    pub fn next_start(&self, tz: Tz, now: Timestamp) -> Timestamp {
        let today = now.with_timezone(&tz).date_naive();
        let mut date = today;
        for _ in 0..3 {
            let o = self.occurrence_on(tz, date);
            if o.start > now {
                return o.start;
            }
            date = date.succ_opt().unwrap_or(date);
        }
        self.occurrence_on(tz, date).start
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use chrono::Utc;

    fn utc(s: &str) -> Timestamp {
        s.parse::<chrono::DateTime<Utc>>().unwrap()
    }

    const WARSAW: Tz = chrono_tz::Europe::Warsaw;

    #[test]
    fn parses_and_prints() {
        let w: DailyWindow = "02:00-05:00".parse().unwrap();
        assert_eq!(w.to_string(), "02:00-05:00");
        for bad in [
            "",
            "02:00",
            "2-5",
            "02:00-02:00",
            "25:00-03:00",
            "02:00 05:00",
        ] {
            assert!(bad.parse::<DailyWindow>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_warsaw_window_is_open_from_two_to_five_local_on_every_kind_of_night() {
        let w: DailyWindow = "02:00-05:00".parse().unwrap();
        // (case, instant in UTC, open?)
        let cases = [
            // Winter (CET, UTC+1): 02:00-05:00 local = 01:00-04:00 UTC.
            (
                "winter 00:59 UTC = 01:59 CET",
                "2026-01-15T00:59:00Z",
                false,
            ),
            ("winter 01:00 UTC = 02:00 CET", "2026-01-15T01:00:00Z", true),
            ("winter 03:59 UTC = 04:59 CET", "2026-01-15T03:59:00Z", true),
            (
                "winter 04:00 UTC = 05:00 CET",
                "2026-01-15T04:00:00Z",
                false,
            ),
            // Summer (CEST, UTC+2): 00:00-03:00 UTC.
            (
                "summer 00:00 UTC = 02:00 CEST",
                "2026-07-15T00:00:00Z",
                true,
            ),
            (
                "summer 03:00 UTC = 05:00 CEST",
                "2026-07-15T03:00:00Z",
                false,
            ),
            (
                "summer 23:59 UTC the day before",
                "2026-07-14T23:59:00Z",
                false,
            ),
            // Spring forward, 2026-03-29: 02:00 CET jumps to 03:00 CEST (01:00 UTC).
            // Local 02:00 does not exist; the window opens at 03:00 CEST and closes at 05:00 CEST.
            (
                "spring-forward 00:59 UTC = 01:59 CET",
                "2026-03-29T00:59:00Z",
                false,
            ),
            (
                "spring-forward 01:00 UTC = 03:00 CEST",
                "2026-03-29T01:00:00Z",
                true,
            ),
            (
                "spring-forward 02:59 UTC = 04:59 CEST",
                "2026-03-29T02:59:00Z",
                true,
            ),
            (
                "spring-forward 03:00 UTC = 05:00 CEST",
                "2026-03-29T03:00:00Z",
                false,
            ),
            // Fall back, 2026-10-25: 03:00 CEST goes back to 02:00 CET (01:00 UTC).
            // The window opens at the first 02:00 (CEST, 00:00 UTC) and closes at 05:00 CET (04:00 UTC).
            (
                "fall-back 23:59 UTC = 01:59 CEST",
                "2026-10-24T23:59:00Z",
                false,
            ),
            (
                "fall-back 00:00 UTC = first 02:00 (CEST)",
                "2026-10-25T00:00:00Z",
                true,
            ),
            (
                "fall-back 01:30 UTC = second 02:30 (CET)",
                "2026-10-25T01:30:00Z",
                true,
            ),
            (
                "fall-back 03:59 UTC = 04:59 CET",
                "2026-10-25T03:59:00Z",
                true,
            ),
            (
                "fall-back 04:00 UTC = 05:00 CET",
                "2026-10-25T04:00:00Z",
                false,
            ),
        ];
        for (case, t, open) in cases {
            assert_eq!(w.occurrence_at(WARSAW, utc(t)).is_some(), open, "{case}");
        }
        // The length of each night follows the clocks: 2 h in spring, 4 h in autumn.
        let spring = w
            .occurrence_at(WARSAW, utc("2026-03-29T01:30:00Z"))
            .unwrap();
        assert_eq!(
            spring,
            Occurrence {
                start: utc("2026-03-29T01:00:00Z"),
                end: utc("2026-03-29T03:00:00Z")
            }
        );
        let autumn = w
            .occurrence_at(WARSAW, utc("2026-10-25T02:00:00Z"))
            .unwrap();
        assert_eq!(
            autumn,
            Occurrence {
                start: utc("2026-10-25T00:00:00Z"),
                end: utc("2026-10-25T04:00:00Z")
            }
        );
    }

    #[test]
    fn a_window_may_cross_midnight() {
        let w: DailyWindow = "23:00-01:00".parse().unwrap();
        let o = w
            .occurrence_at(WARSAW, utc("2026-01-15T23:30:00Z"))
            .unwrap(); // 00:30 CET on the 16th
        assert_eq!(
            o,
            Occurrence {
                start: utc("2026-01-15T22:00:00Z"),
                end: utc("2026-01-16T00:00:00Z")
            }
        );
        assert!(
            w.occurrence_at(WARSAW, utc("2026-01-16T00:00:00Z"))
                .is_none()
        );
    }

    #[test]
    fn next_start_and_day_start() {
        let w: DailyWindow = "02:00-05:00".parse().unwrap();
        assert_eq!(
            w.next_start(WARSAW, utc("2026-01-15T12:00:00Z")),
            utc("2026-01-16T01:00:00Z")
        );
        assert_eq!(
            w.next_start(WARSAW, utc("2026-03-28T12:00:00Z")),
            utc("2026-03-29T01:00:00Z")
        );
        assert_eq!(
            local_day_start(WARSAW, utc("2026-07-15T21:59:00Z")),
            utc("2026-07-14T22:00:00Z")
        );
        assert_eq!(
            local_day_start(WARSAW, utc("2026-07-15T22:00:00Z")),
            utc("2026-07-15T22:00:00Z")
        );
    }
}
