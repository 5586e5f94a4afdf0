//! Where the push engine reads the time and waits. Production uses [`SystemClock`]; a round
//! driven at a given `now` uses [`OffsetClock`] (tests pass `now` without sleeping); a test
//! may bring its own clock whose waits take no real time, to run minutes of backoff in
//! milliseconds.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::time::{Duration, Instant};

#[async_trait]
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
    /// Return once `now()` has reached `t`.
    async fn sleep_until(&self, t: DateTime<Utc>);
}

/// The system's UTC clock and tokio's timers.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

#[async_trait]
impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
    async fn sleep_until(&self, t: DateTime<Utc>) {
        tokio::time::sleep(until(self.now(), t)).await;
    }
}

/// `start` plus the real time elapsed since it was made: a round that begins at a caller's
/// `now`, in which a CRM's answer still counts from when it came.
#[derive(Debug, Clone, Copy)]
pub struct OffsetClock {
    start: DateTime<Utc>,
    since: Instant,
}

impl OffsetClock {
    pub fn starting_at(start: DateTime<Utc>) -> Self {
        OffsetClock {
            start,
            since: Instant::now(),
        }
    }
}

#[async_trait]
impl Clock for OffsetClock {
    fn now(&self) -> DateTime<Utc> {
        self.start + chrono::Duration::from_std(self.since.elapsed()).unwrap_or_default()
    }
    async fn sleep_until(&self, t: DateTime<Utc>) {
        tokio::time::sleep(until(self.now(), t)).await;
    }
}

fn until(now: DateTime<Utc>, t: DateTime<Utc>) -> Duration {
    (t - now).to_std().unwrap_or(Duration::ZERO)
}
