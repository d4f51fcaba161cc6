//! The sampling clock: a Linux timerfd that wakes the agent once per sample.
//!
//! tokio's timer wheel files a sleep of more than 64 ms in a coarse level and wakes the
//! runtime at each level boundary to move it to a finer one: a 5 s sleep costs up to
//! three wake-ups. On a small VM every wake-up of an idle process costs tens to hundreds
//! of microseconds (cold caches, the exit from idle), which is most of the agent's CPU
//! per sample. A periodic timerfd, polled through tokio's reactor, is one wake-up.
//! Where a timerfd cannot be created (a seccomp filter, say), tokio's sleep is used.

use std::io;
use std::os::fd::OwnedFd;
use std::time::Duration;

use rustix::time::{Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::time::Instant;

/// Fires every `period`, from a given first deadline.
#[derive(Debug)]
pub struct Ticker {
    clock: Clock,
    period: Duration,
}

#[derive(Debug)]
enum Clock {
    /// A periodic kernel timer; `period` is also programmed into it.
    Timerfd(AsyncFd<OwnedFd>),
    /// tokio's timer: the next deadline.
    Tokio(Instant),
}

impl Ticker {
    /// A ticker whose first tick is `first` from now, then every `period`.
    pub fn new(first: Duration, period: Duration) -> Self {
        let clock = match timerfd(first, period) {
            Ok(fd) => Clock::Timerfd(fd),
            Err(error) => {
                tracing::info!(%error, "no timerfd; sampling on tokio's timer (more wake-ups)");
                Clock::Tokio(Instant::now() + first)
            }
        };
        Self { clock, period }
    }

    /// Whether the kernel timer is in use (false: tokio's fallback).
    pub fn is_timerfd(&self) -> bool {
        matches!(self.clock, Clock::Timerfd(_))
    }

    /// Re-programs the ticker: next tick `first` from now, then every `period`.
    pub fn reset(&mut self, first: Duration, period: Duration) {
        self.period = period;
        match &mut self.clock {
            Clock::Timerfd(fd) => {
                if let Err(error) = arm(fd.get_ref(), first, period) {
                    tracing::warn!(%error, "cannot re-arm the timerfd; sampling on tokio's timer");
                    self.clock = Clock::Tokio(Instant::now() + first);
                }
            }
            Clock::Tokio(next) => *next = Instant::now() + first,
        }
    }

    /// Waits for the next tick. Ticks missed while the process was not polling them
    /// (suspend, a stall) collapse into one: the next sample simply covers a longer
    /// interval.
    pub async fn tick(&mut self) {
        loop {
            match &mut self.clock {
                Clock::Tokio(next) => {
                    tokio::time::sleep_until(*next).await;
                    *next = following(*next, Instant::now(), self.period);
                    return;
                }
                Clock::Timerfd(fd) => match read_expirations(fd).await {
                    Ok(_) => return,
                    Err(error) => {
                        tracing::warn!(%error, "timerfd failed; sampling on tokio's timer");
                        self.clock = Clock::Tokio(Instant::now() + self.period);
                    }
                },
            }
        }
    }
}

/// The tick after the one due at `due`, seen at `now`: ticks missed in a stall are
/// skipped rather than burst through.
fn following(due: Instant, now: Instant, period: Duration) -> Instant {
    let mut next = due + period;
    if next <= now {
        let behind = now.duration_since(next);
        let skipped = behind.as_nanos() / period.as_nanos().max(1) + 1;
        let skipped = u32::try_from(skipped).unwrap_or(u32::MAX);
        next += period.saturating_mul(skipped);
    }
    next
}

fn timerfd(first: Duration, period: Duration) -> io::Result<AsyncFd<OwnedFd>> {
    let fd = rustix::time::timerfd_create(
        TimerfdClockId::Monotonic,
        TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
    )?;
    arm(&fd, first, period)?;
    // tokio 1.54 deprecated its safe constructors because a caller holding a mere
    // `RawFd` could close it while it is registered; the replacement is `unsafe`,
    // which this workspace forbids. Here the `OwnedFd` moves into the `AsyncFd` and is
    // never replaced, so nothing can close it behind tokio's back.
    #[allow(deprecated)]
    AsyncFd::with_interest(fd, Interest::READABLE)
}

fn arm(fd: &OwnedFd, first: Duration, period: Duration) -> io::Result<()> {
    let spec = |d: Duration| {
        Timespec::try_from(d)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "duration too long"))
    };
    // A zero it_value disarms a timerfd: the first tick is at least 1 ns away.
    let first = first.max(Duration::from_nanos(1));
    rustix::time::timerfd_settime(
        fd,
        TimerfdTimerFlags::empty(),
        &Itimerspec {
            it_interval: spec(period)?,
            it_value: spec(first)?,
        },
    )?;
    Ok(())
}

/// Waits until the timer fired and returns how many periods elapsed since the last read.
async fn read_expirations(fd: &AsyncFd<OwnedFd>) -> io::Result<u64> {
    loop {
        let mut guard = fd.readable().await?;
        let mut count = [0u8; 8];
        match guard.try_io(|fd| Ok(rustix::io::read(fd.get_ref(), &mut count)?)) {
            Ok(Ok(8)) => {
                // The read took every expiration: the timer is not readable again
                // before its next one, so the next tick waits for that event instead
                // of first trying a read that would fail. (tokio keeps a readiness
                // event that arrived since this guard was taken.)
                guard.clear_ready();
                return Ok(u64::from_ne_bytes(count));
            }
            Ok(Ok(n)) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("timerfd read {n} bytes"),
                ));
            }
            Ok(Err(e)) => return Err(e),
            // Spurious readiness: wait again.
            Err(_would_block) => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn timerfd_ticks_repeatedly_and_can_be_reset() {
        let mut t = Ticker::new(Duration::ZERO, Duration::from_millis(5));
        assert!(t.is_timerfd(), "this kernel has timerfd");
        for _ in 0..3 {
            t.tick().await;
        }
        t.reset(Duration::from_millis(1), Duration::from_millis(2));
        t.tick().await;
        t.tick().await;
    }

    #[test]
    fn the_fallback_skips_missed_ticks() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        // On time: the next period.
        assert_eq!(following(t0 + s(5), t0 + s(5), s(5)), t0 + s(10));
        // Late but within the period: still the next one on the grid.
        assert_eq!(following(t0 + s(5), t0 + s(9), s(5)), t0 + s(10));
        // Stalled for three periods: back on the grid after now, no burst.
        assert_eq!(following(t0 + s(5), t0 + s(20), s(5)), t0 + s(25));
        assert_eq!(following(t0 + s(5), t0 + s(21), s(5)), t0 + s(25));
    }
}
