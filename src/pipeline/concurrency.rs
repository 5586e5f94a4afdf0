//! How many requests a target keeps in flight.
//!
//! Fixed (the default) is `limits.concurrency`. Adaptive (`limits.concurrency = "adaptive"`,
//! up to `limits.max_concurrency`) is AIMD, as Vector's adaptive request concurrency: start at
//! 1, add one per window of answers while round trips stay near their recent average, halve
//! on a throttle, a timeout or a round trip well above that average, at most once per round
//! trip so that one congested moment is one cut. CRMs publish per-user concurrency limits
//! (Dataverse 52, Salesforce's long-running requests); adaptive finds the knee without the
//! operator knowing it. A throttle that says "too many at once" (Salesforce's concurrent
//! long-request limit) lowers a fixed limit too, which then recovers one step per window.

use std::time::{Duration, Instant};

/// A round trip this many times the recent average counts as congestion (adaptive only).
const SLOW_FACTOR: f64 = 2.0;
/// Round trips up to this many times the average count as flat: the limit may grow.
const FLAT_FACTOR: f64 = 1.5;
/// Weight of one new round trip in the moving average.
const EWMA_WEIGHT: f64 = 0.1;
/// Answered round trips kept for [`ConcurrencyLimit::rtt_recent_max`].
const RECENT_RTTS: usize = 64;

/// What one answered request says about the target's capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Congestion {
    /// Answered normally (delivered, rejected, or a failure that is not about load).
    None,
    /// Throttled (429 and cousins) or timed out: back off.
    Overloaded,
    /// Throttled because too many requests were in flight at once.
    TooManyInFlight,
}

#[derive(Debug, Clone)]
pub struct ConcurrencyLimit {
    max: usize,
    adaptive: bool,
    current: f64,
    rtt_avg: Option<f64>,
    /// The last `RECENT_RTTS` round trips of requests that were answered (not throttled).
    recent: std::collections::VecDeque<Duration>,
    last_cut: Option<Instant>,
}

impl ConcurrencyLimit {
    /// A fixed limit of `max`, or an adaptive one that starts at 1 and never exceeds `max`.
    pub fn new(max: usize, adaptive: bool) -> Self {
        let max = max.max(1);
        ConcurrencyLimit {
            max,
            adaptive,
            current: if adaptive { 1.0 } else { max as f64 },
            rtt_avg: None,
            recent: std::collections::VecDeque::with_capacity(RECENT_RTTS),
            last_cut: None,
        }
    }

    /// Requests that may be in flight now.
    pub fn current(&self) -> usize {
        (self.current.floor() as usize).clamp(1, self.max)
    }

    /// The recent average round trip, when one was seen.
    pub fn rtt_average(&self) -> Option<Duration> {
        self.rtt_avg.map(Duration::from_secs_f64)
    }

    /// The longest of the recent answered round trips: what this target's normal answers
    /// take at worst (the engine sets a request aside as stalled well past it).
    pub fn rtt_recent_max(&self) -> Option<Duration> {
        self.recent.iter().max().copied()
    }

    /// Learn from one answered request.
    pub fn observe(&mut self, rtt: Duration, congestion: Congestion, at: Instant) {
        if congestion != Congestion::Overloaded {
            if self.recent.len() == RECENT_RTTS {
                self.recent.pop_front();
            }
            self.recent.push_back(rtt);
        }
        let rtt = rtt.as_secs_f64();
        let ratio = self.rtt_avg.map(|avg| rtt / avg.max(1e-6));
        let congested = match congestion {
            Congestion::TooManyInFlight => true,
            Congestion::Overloaded => self.adaptive,
            Congestion::None => self.adaptive && ratio.is_some_and(|r| r > SLOW_FACTOR),
        };
        if congested {
            self.cut(at);
        } else if ratio.is_none_or(|r| r <= FLAT_FACTOR) || !self.adaptive {
            // One step per window of `current` answers.
            self.current = (self.current + 1.0 / self.current.max(1.0)).min(self.max as f64);
        }
        if congestion != Congestion::Overloaded {
            self.rtt_avg = Some(match self.rtt_avg {
                None => rtt,
                Some(avg) => avg + EWMA_WEIGHT * (rtt - avg),
            });
        }
    }

    /// Halve, unless the last cut was within one average round trip (the same congestion).
    fn cut(&mut self, at: Instant) {
        let window = self
            .rtt_average()
            .unwrap_or(Duration::from_millis(100))
            .max(Duration::from_millis(10));
        if self.last_cut.is_some_and(|t| at.duration_since(t) < window) {
            return;
        }
        self.last_cut = Some(at);
        self.current = (self.current / 2.0).max(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn fixed_stays_fixed_unless_told_too_many_in_flight() {
        let mut l = ConcurrencyLimit::new(4, false);
        let t = Instant::now();
        l.observe(ms(50), Congestion::Overloaded, t);
        l.observe(ms(500), Congestion::None, t);
        assert_eq!(l.current(), 4);
        l.observe(ms(50), Congestion::TooManyInFlight, t);
        assert_eq!(l.current(), 2);
        for _ in 0..10 {
            l.observe(ms(50), Congestion::None, t);
        }
        assert_eq!(l.current(), 4, "recovers to the configured number");
    }

    #[test]
    fn adaptive_grows_while_flat_and_halves_on_congestion() {
        let mut l = ConcurrencyLimit::new(32, true);
        let mut t = Instant::now();
        assert_eq!(l.current(), 1);
        for _ in 0..60 {
            l.observe(ms(50), Congestion::None, t);
        }
        let grown = l.current();
        assert!((8..=12).contains(&grown), "{grown}");
        t += ms(200);
        l.observe(ms(50), Congestion::Overloaded, t);
        assert_eq!(l.current(), grown / 2);
        // A second failure of the same moment is not a second cut.
        l.observe(ms(50), Congestion::Overloaded, t + ms(1));
        assert_eq!(l.current(), grown / 2);
        // A round trip far above the average is congestion too.
        l.observe(ms(400), Congestion::None, t + ms(500));
        assert_eq!(l.current(), (grown / 2) / 2);
        for _ in 0..10_000 {
            l.observe(ms(50), Congestion::None, t);
        }
        assert_eq!(l.current(), 32, "never above the maximum");
    }
}
