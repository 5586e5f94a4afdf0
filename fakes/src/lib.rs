//! Stateful fakes of the services leadsync writes to, each following the "faithful fake"
//! checklist of `spec/crm-apis.md`: they keep records, enforce the rules the real service
//! enforces (lengths, required fields, keys), and can be told to misbehave (throttling,
//! token expiry, server errors, latency) so tests and benchmarks see the real failure
//! shapes. Each listens on 127.0.0.1 on a free port.

pub mod azure_table_faults;
pub mod chat_webhook;
pub mod dataverse;
pub mod https_receiver;
pub mod hubspot;
pub mod marketo;
pub mod salesforce;
pub mod smtp;

/// The faults scripted for a fake's coming requests, one entry per request in order (`None`
/// lets a request through): what every fake's `inject` and `inject_after` fill.
#[derive(Debug, Clone)]
pub struct FaultQueue<F> {
    queue: std::collections::VecDeque<Option<F>>,
}

impl<F> Default for FaultQueue<F> {
    fn default() -> Self {
        FaultQueue {
            queue: std::collections::VecDeque::new(),
        }
    }
}

impl<F: Clone> FaultQueue<F> {
    /// The coming `times` requests (after those already queued) fail with `fault`.
    pub fn inject(&mut self, fault: F, times: usize) {
        self.inject_after(0, fault, times);
    }

    /// Let the next `pass` requests through (after those already queued), then fail `times`.
    pub fn inject_after(&mut self, pass: usize, fault: F, times: usize) {
        self.queue.extend(std::iter::repeat_n(None, pass));
        self.queue.extend(std::iter::repeat_n(Some(fault), times));
    }

    /// The fault of the request arriving now, if any (its entry is used up either way).
    pub fn next_fault(&mut self) -> Option<F> {
        self.queue.pop_front().flatten()
    }

    pub fn clear(&mut self) {
        self.queue.clear();
    }
}

/// Announce a skipped test where the person running `cargo test` sees it: written straight
/// to the process's stderr, past the test harness's output capture, which would otherwise
/// hide the message of a test that then passes. Every line starts with `SKIPPED`, so a run's
/// skips can be counted with `grep -c '^SKIPPED'`.
pub fn announce_skip(message: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED: {message}");
}

/// How long before a deadline [`sleep_until_precise`] leaves tokio's timer for a thread's.
const PRECISE_TAIL: std::time::Duration = std::time::Duration::from_millis(2);

/// Wait until `deadline` to within tens of microseconds, where a round trip is what a
/// benchmark measures against (`set_round_trip`). tokio's timer has a millisecond tick and
/// measured 1.2 ms late on average at 50 ms (2 % of the limit the benchmark states); the
/// last [`PRECISE_TAIL`] is slept on a blocking thread (`nanosleep`) instead.
pub async fn sleep_until_precise(deadline: std::time::Instant) {
    if let Some(coarse) = deadline.checked_sub(PRECISE_TAIL) {
        tokio::time::sleep_until(coarse.into()).await;
    }
    let rest = deadline.saturating_duration_since(std::time::Instant::now());
    if !rest.is_zero() {
        let _ = tokio::task::spawn_blocking(move || std::thread::sleep(rest)).await;
    }
}
