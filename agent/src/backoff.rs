//! Reconnect delays, as in gRPC's connection-backoff protocol.
//!
//! The first retry waits `initial` exactly; each later one waits the previous base
//! delay × `multiplier`, capped at `max`, and then spread by ±`jitter`. The jitter is
//! applied *after* the cap, so a fleet that lost its collector at the same moment keeps
//! spreading out even once every agent waits the maximum, and does not return in step.
//! (tonic's `Channel` has no backoff of its own, hence this module.)

use std::time::Duration;

use rand::Rng;

/// The parameters of a backoff sequence.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackoffPolicy {
    /// The first delay.
    pub initial: Duration,
    /// How much each delay grows over the previous one.
    pub multiplier: f64,
    /// The relative spread of each delay after the first (0.2 = ±20 %).
    pub jitter: f64,
    /// The largest base delay (before jitter).
    pub max: Duration,
}

impl BackoffPolicy {
    /// gRPC's connection-backoff defaults (gRPC's `connection-backoff.md`): 1 s × 1.6,
    /// ±20 %, cap 120 s.
    pub const GRPC: Self = Self {
        initial: Duration::from_secs(1),
        multiplier: 1.6,
        jitter: 0.2,
        max: Duration::from_secs(120),
    };
}

/// The state of one reconnect loop: how many attempts failed since the last success.
#[derive(Debug)]
pub struct Backoff<R> {
    policy: BackoffPolicy,
    retries: u32,
    rng: R,
}

impl<R: Rng> Backoff<R> {
    /// A fresh sequence; `rng` supplies the jitter (seed it in tests).
    pub fn new(policy: BackoffPolicy, rng: R) -> Self {
        Self {
            policy,
            retries: 0,
            rng,
        }
    }

    /// The delay before the next attempt; each call advances the sequence.
    pub fn next_delay(&mut self) -> Duration {
        let p = &self.policy;
        let delay = if self.retries == 0 {
            p.initial
        } else {
            // Computed in f64 seconds; `powi` saturates to infinity long before the
            // retry count wraps, and `min` then yields the cap.
            let exp = i32::try_from(self.retries).unwrap_or(i32::MAX);
            let base = (p.initial.as_secs_f64() * p.multiplier.powi(exp)).min(p.max.as_secs_f64());
            let spread = if p.jitter > 0.0 {
                self.rng.random_range(-p.jitter..=p.jitter)
            } else {
                0.0
            };
            Duration::from_secs_f64((base * (1.0 + spread)).max(0.0))
        };
        self.retries = self.retries.saturating_add(1);
        delay
    }

    /// Starts over after a healthy connection (gRPC: reset once connected).
    pub fn reset(&mut self) {
        self.retries = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn backoff(seed: u64) -> Backoff<StdRng> {
        Backoff::new(BackoffPolicy::GRPC, StdRng::seed_from_u64(seed))
    }

    #[test]
    fn first_delay_is_the_initial_one_without_jitter() {
        for seed in 0..20 {
            assert_eq!(backoff(seed).next_delay(), Duration::from_secs(1));
        }
    }

    #[test]
    fn delays_grow_by_1_6_within_20_percent() {
        let mut b = backoff(7);
        b.next_delay();
        for n in 1..10 {
            let base = 1.6f64.powi(n);
            let d = b.next_delay().as_secs_f64();
            assert!(
                (base * 0.8..=base * 1.2).contains(&d),
                "retry {n}: {d} s is not within ±20 % of {base} s"
            );
        }
    }

    #[test]
    fn delays_are_capped_at_120_s_with_the_jitter_kept() {
        let mut b = backoff(42);
        let delays: Vec<f64> = (0..200).map(|_| b.next_delay().as_secs_f64()).collect();
        // 1.6^11 ≈ 176 > 120, so from retry 11 on the base is the cap.
        let capped = &delays[11..];
        assert!(
            capped.iter().all(|d| (96.0..=144.0).contains(d)),
            "{capped:?}"
        );
        assert!(
            capped.iter().any(|&d| d > 120.0),
            "jitter must go above the cap"
        );
        assert!(
            capped.iter().any(|&d| d < 120.0),
            "jitter must go below the cap"
        );
        let min = capped.iter().copied().fold(f64::MAX, f64::min);
        let max = capped.iter().copied().fold(0.0, f64::max);
        assert!(
            max - min > 24.0,
            "capped delays barely spread: {min}..{max}"
        );
    }

    #[test]
    fn same_seed_same_sequence_other_seed_other_sequence() {
        let a: Vec<_> = {
            let mut b = backoff(1);
            (0..15).map(|_| b.next_delay()).collect()
        };
        let b: Vec<_> = {
            let mut b = backoff(1);
            (0..15).map(|_| b.next_delay()).collect()
        };
        let c: Vec<_> = {
            let mut b = backoff(2);
            (0..15).map(|_| b.next_delay()).collect()
        };
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn reset_starts_over() {
        let mut b = backoff(3);
        for _ in 0..8 {
            b.next_delay();
        }
        assert!(b.next_delay() > Duration::from_secs(10));
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_secs(1));
        let second = b.next_delay().as_secs_f64();
        assert!((1.28..=1.92).contains(&second), "{second}");
    }

    #[test]
    fn a_huge_retry_count_stays_at_the_cap() {
        let mut b = backoff(5);
        b.retries = u32::MAX - 1;
        for _ in 0..3 {
            let d = b.next_delay().as_secs_f64();
            assert!((96.0..=144.0).contains(&d), "{d}");
        }
    }
}
