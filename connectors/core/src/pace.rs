//! Pacing calls to a CRM that publishes its own call-rate and concurrency limits (Marketo:
//! 100 calls per 20 s and 10 at once; HubSpot: 100 or 190 per 10 s), so that leadsync stays
//! under them without an operator knowing them.
//!
//! A [`CallPacer`] is one target's: a GCRA limiter from `governor` whose burst and rate are
//! chosen so that no sliding window of the CRM's length ever holds more than the allowed
//! calls, and a semaphore for the calls in flight. A connector awaits [`CallPacer::acquire`]
//! before each HTTP call and holds the permit until the answer is read. Waiting for a permit
//! is pacing, not retrying: the pipeline still owns every decision about failures and time.

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::time::Duration;
use tokio::sync::{Semaphore, SemaphorePermit};

/// A call-rate limit as a CRM states it: at most `calls` in any `window`, at most
/// `in_flight` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallRate {
    pub calls: u32,
    pub window: Duration,
    pub in_flight: usize,
}

/// Why a [`CallRate`] cannot be paced: which of its values, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaceError {
    #[error("expected at least 2 calls per window, found {0}")]
    Calls(u32),
    #[error("too many calls for the window: one would be due every less than a nanosecond")]
    TooManyCalls,
    /// Published limits are per seconds to per day; the bound also keeps the window within
    /// what the limiter's nanosecond clock can hold (a huge one panicked it).
    #[error("expected a window from 1 ms to 24 h, found {0}")]
    Window(String),
    #[error("expected 1 to 10,000 calls in flight, found {0}")]
    InFlight(usize),
}

/// Paces one target's calls; see the module comment.
#[derive(Debug)]
pub struct CallPacer {
    rate: CallRate,
    limiter: DefaultDirectRateLimiter,
    slots: Semaphore,
}

/// Held while one call is in flight.
pub struct CallPermit<'a> {
    _slot: SemaphorePermit<'a>,
}

impl CallPacer {
    /// A pacer that keeps every sliding `window` at or under `calls` (bounds: `calls` ≥ 2,
    /// `window` ≥ 1 ms, `in_flight` ≥ 1).
    pub fn try_new(rate: CallRate) -> Result<CallPacer, PaceError> {
        if rate.calls < 2 {
            return Err(PaceError::Calls(rate.calls));
        }
        if rate.window < Duration::from_millis(1) || rate.window > Duration::from_secs(86_400) {
            return Err(PaceError::Window(
                humantime::format_duration(rate.window).to_string(),
            ));
        }
        if rate.in_flight == 0 || rate.in_flight > 10_000 {
            return Err(PaceError::InFlight(rate.in_flight));
        }
        // GCRA lets `burst` calls at once and then one per `period`: any window of length
        // W holds at most burst + W / period calls. With period = W / (calls - burst) that
        // is `calls`; one call of margin covers the edges of the window.
        let allowed = rate.calls - 1;
        let burst = (allowed / 10).clamp(1, 10);
        let period = rate.window / (allowed - burst).max(1);
        let quota = Quota::with_period(period)
            .ok_or(PaceError::TooManyCalls)?
            .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
        Ok(CallPacer {
            rate,
            limiter: RateLimiter::direct(quota),
            slots: Semaphore::new(rate.in_flight),
        })
    }

    /// A pacer from a connector's settings as written: `calls_per_window`, `window` (a
    /// duration such as "20s") and `max_in_flight`. The error names the settings key at
    /// fault and what is wrong.
    pub fn from_settings(
        calls_per_window: u32,
        window: &str,
        max_in_flight: usize,
    ) -> Result<CallPacer, (&'static str, String)> {
        let window = humantime::parse_duration(window).map_err(|e| {
            (
                "window",
                format!("expected a duration such as \"20s\", found {window:?}: {e}"),
            )
        })?;
        CallPacer::try_new(CallRate {
            calls: calls_per_window,
            window,
            in_flight: max_in_flight,
        })
        .map_err(|e| {
            let key = match e {
                PaceError::Calls(_) | PaceError::TooManyCalls => "calls_per_window",
                PaceError::Window(_) => "window",
                PaceError::InFlight(_) => "max_in_flight",
            };
            (key, e.to_string())
        })
    }

    pub fn rate(&self) -> CallRate {
        self.rate
    }

    /// Wait for a free slot, then for the rate to allow one more call.
    pub async fn acquire(&self) -> CallPermit<'_> {
        // The semaphore is never closed, so `acquire` cannot fail; a closed one would only
        // mean no pacing, which the CRM's own limit answers then catch.
        let slot = match self.slots.acquire().await {
            Ok(p) => p,
            Err(_) => unreachable!("the pacer's semaphore is never closed"),
        };
        self.limiter.until_ready().await;
        CallPermit { _slot: slot }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn bounds_are_checked() {
        let ok = CallRate {
            calls: 100,
            window: Duration::from_secs(20),
            in_flight: 10,
        };
        assert!(CallPacer::try_new(ok).is_ok());
        assert!(CallPacer::try_new(CallRate { calls: 1, ..ok }).is_err());
        assert!(CallPacer::try_new(CallRate { in_flight: 0, ..ok }).is_err());
        assert!(CallPacer::try_new(CallRate {
            window: Duration::ZERO,
            ..ok
        })
        .is_err());
        assert!(CallPacer::try_new(CallRate {
            in_flight: usize::MAX,
            ..ok
        })
        .is_err());
        // A window past what the limiter's clock holds is refused, not a panic.
        assert!(CallPacer::try_new(CallRate {
            window: Duration::from_secs(20_000_000_000_000),
            ..ok
        })
        .is_err());
        // The error names the key at fault.
        let key = |calls, window, in_flight| {
            CallPacer::from_settings(calls, window, in_flight)
                .err()
                .map(|(k, _)| k)
        };
        assert_eq!(key(100, "20000000000000s", 10), Some("window"));
        assert_eq!(key(100, "20 parsecs", 10), Some("window"));
        assert_eq!(key(1, "20s", 10), Some("calls_per_window"));
        assert_eq!(key(100, "20s", 20_000), Some("max_in_flight"));
        assert_eq!(key(100, "20s", 10), None);
    }

    /// 20 calls per 200 ms, 4 at once: count calls in every sliding window of a 1 s run.
    #[tokio::test]
    async fn no_window_holds_more_than_the_limit_and_in_flight_is_capped() {
        let rate = CallRate {
            calls: 20,
            window: Duration::from_millis(200),
            in_flight: 4,
        };
        let pacer = Arc::new(CallPacer::try_new(rate).unwrap());
        let started = Arc::new(std::sync::Mutex::new(Vec::new()));
        let busy = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..60 {
            let (p, s, b, m) = (pacer.clone(), started.clone(), busy.clone(), most.clone());
            tasks.push(tokio::spawn(async move {
                let _permit = p.acquire().await;
                s.lock().unwrap().push(Instant::now());
                let now = b.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                m.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
                b.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let mut at = started.lock().unwrap().clone();
        at.sort();
        let worst = at
            .iter()
            .map(|t0| {
                at.iter()
                    .filter(|t| **t >= *t0 && **t - *t0 < rate.window)
                    .count()
            })
            .max()
            .unwrap();
        assert!(worst <= 20, "{worst} calls in one window");
        assert!(most.load(std::sync::atomic::Ordering::SeqCst) <= 4);
        assert_eq!(at.len(), 60);
    }
}
