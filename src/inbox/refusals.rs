//! How the inbox logs the requests its gate refuses: at most one `WARN` line a minute for
//! each kind of refusal, naming how many such requests there were since the last one; the
//! rest at `debug`. An endpoint on the internet meets scanners, and a marketplace offer
//! left with an old secret retries every lead: one line per request would fill the journal.
//! (Every refusal is still counted by `leadsync_inbox_requests_total{code}`.)
//!
//! It owns only this counting; the gate decides, and `mod.rs` writes the lines.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a kind of refusal may reach the log at `WARN`.
pub const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(60);

/// A kind of request the gate refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// From a network not in `allow_from`.
    Network,
    /// A wrong or missing secret.
    Secret,
}

#[derive(Debug, Default, Clone, Copy)]
struct Window {
    /// When the last `WARN` line of this kind was written.
    logged: Option<Instant>,
    /// Refusals of this kind since then.
    since: u64,
}

/// The refusals counted since each kind's last `WARN` line.
#[derive(Debug)]
pub struct RefusalLog {
    every: Duration,
    windows: Mutex<[Window; 2]>,
}

impl RefusalLog {
    pub fn new(every: Duration) -> Self {
        RefusalLog {
            every,
            windows: Mutex::new([Window::default(); 2]),
        }
    }

    /// Count one refusal of `kind` at `now`. `Some(n)`: write a `WARN` line for it, `n`
    /// being the refusals of this kind since the last line, this one included; `None`:
    /// `debug` only.
    pub fn note(&self, kind: Refusal, now: Instant) -> Option<u64> {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let w = &mut windows[kind as usize];
        w.since += 1;
        let due = w
            .logged
            .is_none_or(|at| now.saturating_duration_since(at) >= self.every);
        if !due {
            return None;
        }
        let n = w.since;
        *w = Window {
            logged: Some(now),
            since: 0,
        };
        Some(n)
    }
}

impl Default for RefusalLog {
    fn default() -> Self {
        RefusalLog::new(REFUSAL_LOG_EVERY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_warn_line_a_minute_per_kind_counting_the_rest() {
        let log = RefusalLog::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(log.note(Refusal::Secret, t0), Some(1));
        for s in 1..=30 {
            assert_eq!(log.note(Refusal::Secret, t0 + Duration::from_secs(s)), None);
        }
        // The other kind has a window of its own.
        assert_eq!(log.note(Refusal::Network, t0), Some(1));
        // A minute after the last line: the 30 in between and this one.
        assert_eq!(
            log.note(Refusal::Secret, t0 + Duration::from_secs(60)),
            Some(31)
        );
        assert_eq!(
            log.note(Refusal::Secret, t0 + Duration::from_secs(61)),
            None
        );
    }
}
