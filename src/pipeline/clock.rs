//! Where the push engine reads the time and waits. Production uses [`SystemClock`]; a round
//! driven at a given `now` uses [`FixedClock`] (tests pass `now` without sleeping); a test
//! may bring its own clock whose waits take no real time, to run minutes of backoff in
//! milliseconds.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::time::Duration;

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

/// A clock that stays at `now`: one round driven at a caller's time (tests, `send-test`), in
/// which every decision and every stored time counts from that `now`. It never sleeps: time
/// does not move.
#[derive(Debug, Clone, Copy)]
pub struct FixedClock(pub DateTime<Utc>);

#[async_trait]
impl Clock for FixedClock {
    fn now(&self) -> DateTime<Utc> {
        self.0
    }
    async fn sleep_until(&self, _t: DateTime<Utc>) {
        tokio::task::yield_now().await;
    }
}

fn until(now: DateTime<Utc>, t: DateTime<Utc>) -> Duration {
    (t - now).to_std().unwrap_or(Duration::ZERO)
}
