//! Target health: a circuit per target, so an outage of the target is handled once, not once
//! per lead.
//!
//! Failures about the target rather than the record — its token endpoint refusing the client,
//! connect/DNS/TLS errors ([`FailureClass::TargetDown`]), or a run of [`TRANSIENT_RUN`]
//! requests that all failed transiently — open the circuit: the target pauses as a whole with
//! its own exponential backoff (1 s doubling to `retry.max_delay`, jittered) and, once per
//! step, one probe tests it (the connector's token request, then a single small batch). The
//! first answer about a record (delivered, refused, even throttled) closes it. While it is
//! open no lead spends an attempt, so an outage never turns leads into dead letters.
//!
//! This module only keeps the state and decides transitions; the engine acts on them
//! (ledger, logs, metrics).

use chrono::{DateTime, Utc};
use leadsync_core::{DeliveryOutcome, FailureClass};
use rand::Rng;
use std::time::Duration;

/// Requests in a row that all failed transiently before the target counts as down.
pub const TRANSIENT_RUN: u32 = 5;
/// The first probe waits about this long; each failed probe doubles it.
const FIRST_STEP: Duration = Duration::from_secs(1);
/// While the target stays down, a reminder is logged at most this often.
pub const REMINDER_EVERY: Duration = Duration::from_secs(300);

/// What one answered request (or probe) says about the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The target handled records (delivered or refused them) or throttled us: it is up.
    Up,
    /// The target itself failed (class `target_down`), with the CRM's or transport's code.
    Down(String),
    /// Every record failed transiently (5xx, timeout, reset), with the first code.
    Transient(String),
}

impl Verdict {
    /// The verdict of one request's outcomes.
    pub fn of(outcomes: &[DeliveryOutcome]) -> Verdict {
        let failure = |class: FailureClass| {
            outcomes.iter().find_map(|o| match o {
                DeliveryOutcome::Failed(f) if f.class == class => Some(f.code.clone()),
                _ => None,
            })
        };
        let answered = outcomes.iter().any(|o| match o {
            DeliveryOutcome::Delivered { .. } => true,
            DeliveryOutcome::Failed(f) => {
                matches!(f.class, FailureClass::Rejected | FailureClass::Throttled)
            }
        });
        if answered || outcomes.is_empty() {
            Verdict::Up
        } else if let Some(code) = failure(FailureClass::TargetDown) {
            Verdict::Down(code)
        } else {
            let code = failure(FailureClass::Transient)
                .or_else(|| failure(FailureClass::AuthExpired))
                .unwrap_or_else(|| "transient".into());
            Verdict::Transient(code)
        }
    }
}

/// What the engine must do after a verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    None,
    /// The target just went down: log once, tell the ledger and metrics.
    Opened {
        reason: String,
    },
    /// The target is back after `outage`.
    Closed {
        outage: Duration,
    },
    /// (The engine's own:) the first answer of a new engine, which clears what an earlier one
    /// may have left.
    Confirmed,
}

/// Whether a batch may start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// The circuit is closed: go.
    Open,
    /// The circuit is open and a probe is due.
    Probe,
    /// The circuit is open: wait (until the next probe, or for the probe in flight).
    Wait,
}

#[derive(Debug, Clone)]
struct Outage {
    since: DateTime<Utc>,
    reason: String,
    /// Failed probes so far; the next waits about `FIRST_STEP × 2^step`.
    step: u32,
    next_probe: DateTime<Utc>,
    probing: bool,
    last_reminder: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct Circuit {
    max_step: Duration,
    transient_run: u32,
    outage: Option<Outage>,
}

impl Circuit {
    /// A closed circuit whose backoff steps grow to `max_step` (`retry.max_delay`).
    pub fn new(max_step: Duration) -> Self {
        Circuit {
            max_step: max_step.max(FIRST_STEP),
            transient_run: 0,
            outage: None,
        }
    }

    pub fn is_open(&self) -> bool {
        self.outage.is_some()
    }

    /// Since when and why the target is down, while it is.
    pub fn down(&self) -> Option<(DateTime<Utc>, &str)> {
        self.outage.as_ref().map(|o| (o.since, o.reason.as_str()))
    }

    /// When the next probe may go, while the target is down and none is in flight.
    pub fn next_probe(&self) -> Option<DateTime<Utc>> {
        self.outage
            .as_ref()
            .filter(|o| !o.probing)
            .map(|o| o.next_probe)
    }

    pub fn gate(&self, now: DateTime<Utc>) -> Gate {
        match &self.outage {
            None => Gate::Open,
            Some(o) if !o.probing && now >= o.next_probe => Gate::Probe,
            Some(_) => Gate::Wait,
        }
    }

    /// A probe is in flight: no other until it is answered.
    pub fn begin_probe(&mut self) {
        if let Some(o) = &mut self.outage {
            o.probing = true;
        }
    }

    /// Learn from one request; `probe` says whether it was the circuit's own probe.
    pub fn observe(&mut self, verdict: Verdict, now: DateTime<Utc>, probe: bool) -> Transition {
        match (&mut self.outage, verdict) {
            (None, Verdict::Up) => {
                self.transient_run = 0;
                Transition::None
            }
            (None, Verdict::Down(code)) => self.open(now, code),
            (None, Verdict::Transient(code)) => {
                self.transient_run += 1;
                if self.transient_run >= TRANSIENT_RUN {
                    let reason =
                        format!("{} requests in a row failed ({code})", self.transient_run);
                    self.open(now, reason)
                } else {
                    Transition::None
                }
            }
            (Some(o), Verdict::Up) => {
                let outage = (now - o.since).to_std().unwrap_or_default();
                self.outage = None;
                self.transient_run = 0;
                Transition::Closed { outage }
            }
            (Some(_), Verdict::Down(_) | Verdict::Transient(_)) => {
                if probe {
                    self.probe_failed(now);
                }
                Transition::None
            }
        }
    }

    /// The probe could not tell (nothing to send): try again one step later.
    pub fn probe_failed(&mut self, now: DateTime<Utc>) {
        let max_step = self.max_step;
        if let Some(o) = &mut self.outage {
            o.step = o.step.saturating_add(1);
            o.probing = false;
            o.next_probe = now + jittered(step_delay(o.step, max_step));
        }
    }

    /// A reminder line is due (at most every [`REMINDER_EVERY`]); marks it written.
    pub fn reminder_due(&mut self, now: DateTime<Utc>) -> Option<(DateTime<Utc>, String, u32)> {
        let o = self.outage.as_mut()?;
        let every = chrono::Duration::from_std(REMINDER_EVERY).unwrap_or_default();
        if now - o.last_reminder < every {
            return None;
        }
        o.last_reminder = now;
        Some((o.since, o.reason.clone(), o.step))
    }

    fn open(&mut self, now: DateTime<Utc>, reason: String) -> Transition {
        self.transient_run = 0;
        self.outage = Some(Outage {
            since: now,
            reason: reason.clone(),
            step: 0,
            next_probe: now + jittered(step_delay(0, self.max_step)),
            probing: false,
            last_reminder: now,
        });
        Transition::Opened { reason }
    }
}

/// `FIRST_STEP × 2^step`, at most `max`.
fn step_delay(step: u32, max: Duration) -> Duration {
    FIRST_STEP
        .checked_mul(1u32.checked_shl(step.min(31)).unwrap_or(u32::MAX))
        .unwrap_or(max)
        .min(max)
}

/// Between half and all of `d`: spread, yet still growing step by step.
fn jittered(d: Duration) -> chrono::Duration {
    let ms = d.as_millis().min(u64::MAX as u128) as u64;
    let ms = ms / 2 + rand::rng().random_range(0..=ms / 2);
    chrono::Duration::milliseconds(ms as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use leadsync_core::DeliveryFailure;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    #[test]
    fn verdicts() {
        let down = DeliveryOutcome::Failed(DeliveryFailure::target_down("invalid_client", "x"));
        let busy = DeliveryOutcome::Failed(DeliveryFailure::transient("http_503", "x"));
        let ok = DeliveryOutcome::delivered(None, None);
        assert_eq!(
            Verdict::of(&[down.clone(), busy.clone()]),
            Verdict::Down("invalid_client".into())
        );
        assert_eq!(
            Verdict::of(&[busy.clone(), busy.clone()]),
            Verdict::Transient("http_503".into())
        );
        assert_eq!(Verdict::of(&[busy, ok, down]), Verdict::Up);
    }

    #[test]
    fn opens_on_target_down_probes_with_growing_steps_and_closes_on_an_answer() {
        let mut c = Circuit::new(Duration::from_secs(300));
        assert_eq!(c.gate(t(0)), Gate::Open);
        let tr = c.observe(Verdict::Down("invalid_client".into()), t(0), false);
        assert_eq!(
            tr,
            Transition::Opened {
                reason: "invalid_client".into()
            }
        );
        assert_eq!(c.gate(t(0)), Gate::Wait);
        let mut now = t(0);
        let mut probes = 0;
        let mut last_gap = chrono::Duration::zero();
        while now < t(600) {
            let next = c.next_probe().unwrap();
            assert!(next > now);
            let gap = next - now;
            assert!(gap <= chrono::Duration::seconds(300));
            if probes > 2 && gap < chrono::Duration::seconds(300) / 2 {
                assert!(gap * 2 >= last_gap, "steps grow: {gap} after {last_gap}");
            }
            last_gap = gap;
            now = next;
            assert_eq!(c.gate(now), Gate::Probe);
            c.begin_probe();
            assert_eq!(c.gate(now), Gate::Wait, "one probe at a time");
            probes += 1;
            c.observe(Verdict::Down("invalid_client".into()), now, true);
        }
        assert!((8..=14).contains(&probes), "{probes} probes in ten minutes");
        // An in-flight request of before the outage does not advance the steps.
        let before = c.next_probe();
        c.observe(Verdict::Transient("timeout".into()), now, false);
        assert_eq!(c.next_probe(), before);
        let tr = c.observe(Verdict::Up, t(700), true);
        assert_eq!(
            tr,
            Transition::Closed {
                outage: Duration::from_secs(700)
            }
        );
        assert_eq!(c.gate(t(700)), Gate::Open);
    }

    #[test]
    fn a_run_of_transient_failures_opens_it_and_an_answer_resets_the_run() {
        let mut c = Circuit::new(Duration::from_secs(60));
        for _ in 0..TRANSIENT_RUN - 1 {
            assert_eq!(
                c.observe(Verdict::Transient("http_503".into()), t(0), false),
                Transition::None
            );
        }
        c.observe(Verdict::Up, t(0), false);
        for _ in 0..TRANSIENT_RUN - 1 {
            c.observe(Verdict::Transient("http_503".into()), t(0), false);
        }
        assert!(!c.is_open());
        let tr = c.observe(Verdict::Transient("http_503".into()), t(1), false);
        assert!(matches!(tr, Transition::Opened { reason } if reason.contains("http_503")));
    }

    #[test]
    fn reminders_come_at_most_every_five_minutes() {
        let mut c = Circuit::new(Duration::from_secs(60));
        c.observe(Verdict::Down("connection_refused".into()), t(0), false);
        assert!(c.reminder_due(t(10)).is_none());
        assert!(c.reminder_due(t(300)).is_some());
        assert!(c.reminder_due(t(400)).is_none());
        assert!(c.reminder_due(t(601)).is_some());
    }
}
