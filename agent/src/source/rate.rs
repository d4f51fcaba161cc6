//! Rates from counters: a per-second rate over the interval between two readings, with
//! counter resets (a server restart or reload) handled so that a rate is never negative
//! and never a spike.

use std::time::{Duration, Instant};

/// What a counter that went backwards means for a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reset {
    /// The server restarted and counts from zero again: the new value is what was counted
    /// since the restart (nginx, php-fpm after a restart, a Prometheus counter).
    FromZero,
    /// The counter went down without the count starting over (Apache sums per-worker
    /// slots, some of which a graceful restart clears): the interval gets no rate, and
    /// the new value is the baseline for the next one.
    Unknown,
}

/// The count over one interval between two readings of a counter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Delta {
    /// Events during the interval (never negative).
    pub count: u64,
    /// The interval.
    pub interval: Duration,
}

impl Delta {
    /// Events per second over the interval (`None` for an empty interval).
    pub fn per_second(&self) -> Option<f64> {
        let secs = self.interval.as_secs_f64();
        (secs > 0.0).then(|| self.count as f64 / secs)
    }
}

/// One counter's previous reading.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counter {
    previous: Option<(Instant, u64)>,
}

impl Counter {
    /// Time since the previous reading, if there was one.
    pub fn since(&self, now: Instant) -> Option<Duration> {
        self.previous
            .and_then(|(at, _)| now.checked_duration_since(at))
    }

    /// Records `value` read at `now` and returns the delta since the previous reading:
    /// `None` for the first reading (no interval yet) and for a reset the source cannot
    /// account for.
    pub fn update(&mut self, value: u64, now: Instant, reset: Reset) -> Option<Delta> {
        let previous = self.previous.replace((now, value));
        let (at, before) = previous?;
        let interval = now.checked_duration_since(at)?;
        let count = match value.checked_sub(before) {
            Some(count) => count,
            None => match reset {
                Reset::FromZero => value,
                Reset::Unknown => return None,
            },
        };
        Some(Delta { count, interval })
    }
}

/// The agent's own scrape is one of the requests a status page counts between two
/// readings (nginx counts the request being answered, Apache and php-fpm the previous
/// one): the server's own traffic is the rest.
pub fn own_scrape(delta: Option<Delta>) -> Option<Delta> {
    delta.map(|d| Delta {
        count: d.count.saturating_sub(1),
        ..d
    })
}

/// A counter that went backwards counts from zero if the server says it restarted
/// since the previous reading; otherwise the decrease is not a restart.
pub fn restart_reset(uptime_seconds: Option<u64>, since_previous: Option<Duration>) -> Reset {
    match (uptime_seconds, since_previous) {
        (Some(up), Some(since)) if Duration::from_secs(up) <= since + Duration::from_secs(1) => {
            Reset::FromZero
        }
        (None, _) => Reset::FromZero,
        _ => Reset::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn first_reading_has_no_rate() {
        let mut c = Counter::default();
        assert_eq!(c.update(1000, Instant::now(), Reset::FromZero), None);
    }

    #[test]
    fn rate_is_the_delta_over_the_interval() {
        let t0 = Instant::now();
        let mut c = Counter::default();
        c.update(100, t0, Reset::FromZero);
        let d = c.update(600, t0 + secs(5), Reset::FromZero).unwrap();
        assert_eq!(d.count, 500);
        assert_eq!(d.per_second(), Some(100.0));
        let idle = c.update(600, t0 + secs(10), Reset::FromZero).unwrap();
        assert_eq!(idle.per_second(), Some(0.0));
    }

    #[test]
    fn a_restart_counts_from_zero_never_negative_nor_a_spike() {
        let t0 = Instant::now();
        let mut c = Counter::default();
        c.update(1_000_000, t0, Reset::FromZero);
        // Restarted: 40 requests since.
        let d = c.update(40, t0 + secs(5), Reset::FromZero).unwrap();
        assert_eq!(d.count, 40);
        assert_eq!(d.per_second(), Some(8.0));
        let d = c.update(90, t0 + secs(10), Reset::FromZero).unwrap();
        assert_eq!(d.count, 50);
    }

    #[test]
    fn an_unexplained_decrease_skips_one_interval_then_goes_on() {
        let t0 = Instant::now();
        let mut c = Counter::default();
        c.update(1000, t0, Reset::Unknown);
        assert_eq!(c.update(950, t0 + secs(5), Reset::Unknown), None);
        let d = c.update(1010, t0 + secs(10), Reset::Unknown).unwrap();
        assert_eq!((d.count, d.interval), (60, secs(5)));
    }

    #[test]
    fn a_restart_is_recognised_by_the_server_uptime() {
        let five = Some(Duration::from_secs(5));
        assert_eq!(restart_reset(Some(3), five), Reset::FromZero);
        assert_eq!(restart_reset(Some(3600), five), Reset::Unknown);
        assert_eq!(restart_reset(None, five), Reset::FromZero);
        assert_eq!(restart_reset(Some(3), None), Reset::Unknown);
    }

    #[test]
    fn the_own_scrape_is_taken_off_never_below_zero() {
        let d = |count| {
            Some(Delta {
                count,
                interval: Duration::from_secs(1),
            })
        };
        assert_eq!(own_scrape(d(101)).unwrap().count, 100);
        assert_eq!(own_scrape(d(0)).unwrap().count, 0);
        assert_eq!(own_scrape(None), None);
    }
}
