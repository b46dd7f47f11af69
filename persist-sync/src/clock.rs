//! Time for the sync and redundancy code: one injected clock.
//!
//! The state machines in [`crate::engine`] and [`crate::redundancy::machine`]
//! never read a clock: every input comes with `now`, a [`Time`] (a monotonic
//! offset from the clock's origin), and they answer with the next
//! [`Time`] at which they want to be woken. The tokio drivers take `now` from
//! a [`TokioClock`], which follows tokio's clock, so tests on paused tokio
//! time run the real code without real sleeps; the simulator counts its own
//! virtual time.

use std::time::{Duration, SystemTime};

/// A point in monotonic time: how long after its clock's origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Time(Duration);

impl Time {
    /// The clock's origin.
    pub const ZERO: Time = Time(Duration::ZERO);

    /// The time `offset` after the origin.
    pub const fn from_offset(offset: Duration) -> Time {
        Time(offset)
    }

    /// How long after the origin.
    pub const fn offset(self) -> Duration {
        self.0
    }

    /// How long after `earlier` this is (zero if it is not later).
    pub fn since(self, earlier: Time) -> Duration {
        self.0.saturating_sub(earlier.0)
    }
}

impl std::ops::Add<Duration> for Time {
    type Output = Time;
    fn add(self, d: Duration) -> Time {
        Time(self.0.saturating_add(d))
    }
}

impl std::ops::AddAssign<Duration> for Time {
    fn add_assign(&mut self, d: Duration) {
        self.0 = self.0.saturating_add(d);
    }
}

impl std::fmt::Display for Time {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.3}s", self.0.as_secs_f64())
    }
}

/// A source of [`Time`], and of wall-clock time for what operators read
/// (last sync, log ages).
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now(&self) -> Time;
    /// The wall-clock time at `t`.
    fn wall(&self, t: Time) -> SystemTime;
}

/// The drivers' clock: tokio's (paused in tests that pause it), with the
/// wall clock read once at the origin.
#[derive(Debug, Clone)]
pub struct TokioClock {
    origin: tokio::time::Instant,
    wall_origin: SystemTime,
}

impl TokioClock {
    /// A clock whose origin is now. Call it inside a tokio runtime when the
    /// runtime's time is paused, so the origin is on the paused clock.
    pub fn new() -> TokioClock {
        TokioClock {
            origin: tokio::time::Instant::now(),
            wall_origin: SystemTime::now(),
        }
    }

    /// The tokio instant of `t` (to sleep until it).
    pub fn instant(&self, t: Time) -> tokio::time::Instant {
        self.origin + t.offset()
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        TokioClock::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Time {
        Time(tokio::time::Instant::now().saturating_duration_since(self.origin))
    }

    fn wall(&self, t: Time) -> SystemTime {
        self.wall_origin + t.offset()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        let t = Time::from_offset(Duration::from_millis(5));
        assert_eq!(
            (t + Duration::from_millis(5)).since(t),
            Duration::from_millis(5)
        );
        assert_eq!(t.since(t + Duration::from_secs(1)), Duration::ZERO);
        assert_eq!(Time::ZERO.since(Time::ZERO), Duration::ZERO);
        assert_eq!(t.to_string(), "0.005s");
    }

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_paused_time() {
        let c = TokioClock::new();
        let t0 = c.now();
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(c.now().since(t0), Duration::from_secs(3));
        assert_eq!(
            c.wall(c.now()).duration_since(c.wall(t0)).unwrap(),
            Duration::from_secs(3)
        );
    }
}
