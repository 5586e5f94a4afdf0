//! Retry timing, driven through the real pipeline and SQLite ledger with a scripted fake
//! connector and a simulated clock (`now` is passed in, nothing sleeps).

use async_trait::async_trait;
use chrono::{DateTime, Duration as CDuration, Utc};
use leadsync::config::{RetryPolicy, TargetFilter};
use leadsync::ledger::sqlite::SqliteLedger;
use leadsync::ledger::{
    DeadLetterFilter, DeliveryState, Ledger, PlannedDelivery, StageBatch, StagedLead,
};
use leadsync::pipeline::{backoff_delay, push_round, Target};
use leadsync_core::{
    read_lead, CheckError, CheckReport, Connector, DeliveryFailure, DeliveryOutcome, KeyScope,
    Mapping, OutboundRecord,
};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the fake answers, call by call; once the script runs out every record is delivered.
#[derive(Clone)]
enum Answer {
    AllDelivered,
    All(DeliveryFailure),
    /// Per record, in order.
    Each(Vec<Option<DeliveryFailure>>),
}

#[derive(Default)]
struct Scripted {
    script: Mutex<VecDeque<Answer>>,
    /// Lead ids of every call, in order.
    calls: Mutex<Vec<Vec<String>>>,
    mapping: Mapping,
}

impl Scripted {
    fn new(answers: Vec<Answer>) -> Arc<Self> {
        Arc::new(Scripted {
            script: Mutex::new(answers.into()),
            ..Scripted::default()
        })
    }
    fn calls(&self) -> usize {
        self.calls.lock().unwrap().len()
    }
}

#[async_trait]
impl Connector for Scripted {
    fn kind(&self) -> &'static str {
        "scripted"
    }
    fn max_batch(&self) -> usize {
        100
    }
    fn mapping(&self) -> &Mapping {
        &self.mapping
    }
    async fn check(&self, _: bool) -> Result<CheckReport, CheckError> {
        Ok(CheckReport::default())
    }
    async fn push(&self, batch: &[OutboundRecord]) -> Vec<DeliveryOutcome> {
        self.calls
            .lock()
            .unwrap()
            .push(batch.iter().map(|r| r.lead_id.clone()).collect());
        let answer = self
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Answer::AllDelivered);
        let ok = || DeliveryOutcome::delivered(Some("crm-1".into()), Some(true));
        match answer {
            Answer::AllDelivered => batch.iter().map(|_| ok()).collect(),
            Answer::All(f) => batch
                .iter()
                .map(|_| DeliveryOutcome::Failed(f.clone()))
                .collect(),
            Answer::Each(v) => v
                .into_iter()
                .map(|f| f.map(DeliveryOutcome::Failed).unwrap_or_else(ok))
                .collect(),
        }
    }
}

/// A fixed simulated "now", a minute after the leads were staged (staging uses the wall clock).
fn t0() -> DateTime<Utc> {
    static T0: std::sync::OnceLock<DateTime<Utc>> = std::sync::OnceLock::new();
    *T0.get_or_init(|| Utc::now() + CDuration::minutes(1))
}

fn target(conn: Arc<Scripted>, batch_size: usize, concurrency: usize) -> Arc<Target> {
    Arc::new(Target {
        name: "crm".into(),
        connector: conn,
        mapping: Mapping::default(),
        field_limits: vec![],
        filter: TargetFilter::default(),
        key_scope: KeyScope::Lead,
        key_namespace: "crm".into(),
        batch_size,
        concurrency,
        max_age: Duration::from_secs(72 * 3600),
        lease: Duration::from_secs(120),
        retry: RetryPolicy {
            min_delay: Duration::from_secs(10),
            max_delay: Duration::from_secs(900),
            max_retry_after: Duration::from_secs(3600),
        },
        adaptive: false,
        max_stalled: 0,
        digest: None,
    })
}

async fn ledger_with(n: usize) -> (tempfile::TempDir, Arc<dyn Ledger>) {
    let dir = tempfile::tempdir().unwrap();
    let ledger: Arc<dyn Ledger> =
        Arc::new(SqliteLedger::open(&dir.path().join("l.db")).await.unwrap());
    let leads = (0..n)
        .map(|i| {
            let lead = read_lead(
                format!("lead-{i}"),
                &serde_json::json!({"LeadSource": "SPZA", "ActionCode": "PLT"}),
            )
            .unwrap();
            StagedLead {
                deliveries: vec![PlannedDelivery {
                    target: "crm".into(),
                    idempotency_key: format!("key-{i}"),
                    not_before: None,
                }],
                lead,
            }
        })
        .collect();
    ledger
        .stage(StageBatch {
            source: "s".into(),
            leads,
            ..Default::default()
        })
        .await
        .unwrap();
    (dir, ledger)
}

async fn next_attempt(ledger: &Arc<dyn Ledger>, lead: &str) -> DateTime<Utc> {
    let (_, _, d) = ledger.trace(lead).await.unwrap().unwrap();
    d[0].next_attempt_at.unwrap()
}

#[tokio::test]
async fn nothing_is_attempted_before_retry_after_and_the_whole_target_pauses() {
    let (_d, ledger) = ledger_with(4).await;
    let throttled =
        DeliveryFailure::throttled("http_429", "slow down", Some(Duration::from_secs(60)));
    // Two batches of two run at once; only the first is throttled.
    let conn = Scripted::new(vec![Answer::All(throttled)]);
    let t = target(conn.clone(), 2, 2);
    let r = push_round(&ledger, &t, "me", t0()).await.unwrap();
    assert_eq!(conn.calls(), 2);
    assert_eq!(r.delivered, 2);
    assert_eq!(r.retrying, 2);
    let until = r.paused_until.expect("target paused");
    assert!(until >= t0() + CDuration::seconds(60), "{until}");
    assert!(
        until <= t0() + CDuration::seconds(70),
        "backoff for attempt 1 is at most 10 s: {until}"
    );
    assert_eq!(ledger.paused_until("crm").await.unwrap(), Some(until));

    // Just before the pause ends: no request at all, for any lead of the target.
    let r = push_round(&ledger, &t, "me", until - CDuration::milliseconds(1))
        .await
        .unwrap();
    assert_eq!(conn.calls(), 2, "a request was sent to a throttled target");
    assert_eq!(r.attempted, 0);
    // Once it ends, the throttled leads go out.
    let r = push_round(&ledger, &t, "me", until).await.unwrap();
    assert_eq!(r.delivered, 2);
    assert_eq!(conn.calls(), 3);
}

#[tokio::test]
async fn transient_failures_wait_for_their_backoff() {
    let (_d, ledger) = ledger_with(1).await;
    let conn = Scripted::new(vec![Answer::All(DeliveryFailure::transient(
        "http_503",
        "unavailable",
    ))]);
    let t = target(conn.clone(), 10, 1);
    let r = push_round(&ledger, &t, "me", t0()).await.unwrap();
    assert_eq!(r.retrying, 1);
    assert_eq!(
        r.paused_until, None,
        "a transient failure does not pause the target"
    );
    let next = next_attempt(&ledger, "lead-0").await;
    assert!(
        next >= t0() && next <= t0() + CDuration::seconds(10),
        "{next}"
    );
    if next > t0() {
        push_round(&ledger, &t, "me", next - CDuration::milliseconds(1))
            .await
            .unwrap();
        assert_eq!(conn.calls(), 1, "retried before its backoff ran out");
    }
    let r = push_round(&ledger, &t, "me", next).await.unwrap();
    assert_eq!(r.delivered, 1);
    let (_, _, d) = ledger.trace("lead-0").await.unwrap().unwrap();
    assert_eq!(d[0].attempts, 2);
    assert_eq!(d[0].state, DeliveryState::Delivered);
}

#[test]
fn backoff_grows_exponentially_with_full_jitter() {
    let policy = RetryPolicy {
        min_delay: Duration::from_secs(1),
        max_delay: Duration::from_secs(60),
        max_retry_after: Duration::from_secs(3600),
    };
    let mut means = Vec::new();
    for attempt in 1..=8u32 {
        let ceiling = Duration::from_secs((1u64 << (attempt - 1)).min(60));
        let samples: Vec<Duration> = (0..400).map(|_| backoff_delay(&policy, attempt)).collect();
        assert!(
            samples.iter().all(|s| *s <= ceiling),
            "attempt {attempt} over {ceiling:?}"
        );
        let distinct: std::collections::HashSet<_> = samples.iter().collect();
        assert!(distinct.len() > 50, "attempt {attempt}: no jitter");
        let mean = samples.iter().map(|s| s.as_secs_f64()).sum::<f64>() / samples.len() as f64;
        // Full jitter: the mean sits near half the ceiling.
        let half = ceiling.as_secs_f64() / 2.0;
        assert!(
            (mean - half).abs() < half * 0.25,
            "attempt {attempt}: mean {mean} vs {half}"
        );
        means.push(mean);
    }
    assert!(means.windows(2).take(5).all(|w| w[1] > w[0]), "{means:?}");
}

#[tokio::test]
async fn rejected_goes_to_dead_letters_and_an_operator_brings_it_back() {
    let (_d, ledger) = ledger_with(2).await;
    let conn = Scripted::new(vec![Answer::Each(vec![
        Some(DeliveryFailure::rejected(
            "REQUIRED_FIELD_MISSING",
            "Required fields are missing: [LastName]",
        )),
        None,
    ])]);
    let t = target(conn.clone(), 10, 1);
    let r = push_round(&ledger, &t, "me", t0()).await.unwrap();
    assert_eq!((r.delivered, r.dead), (1, 1));
    let dead = ledger.dead_letters(Some("crm")).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].lead_id, "lead-0");
    assert_eq!(
        dead[0].error_code.as_deref(),
        Some("REQUIRED_FIELD_MISSING")
    );
    assert_eq!(
        dead[0].error.as_deref(),
        Some("Required fields are missing: [LastName]")
    );
    // Never retried by itself.
    push_round(&ledger, &t, "me", t0() + CDuration::days(1))
        .await
        .unwrap();
    assert_eq!(conn.calls(), 1);
    // The operator's retry.
    let n = ledger
        .retry_dead(
            &DeadLetterFilter {
                target: Some("crm".into()),
                lead_id: None,
            },
            t0() + CDuration::days(1),
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    let r = push_round(&ledger, &t, "me", t0() + CDuration::days(1))
        .await
        .unwrap();
    assert_eq!(r.delivered, 1);
    assert!(ledger.dead_letters(None).await.unwrap().is_empty());
}

#[tokio::test]
async fn expired_token_is_retried_once_at_once() {
    let (_d, ledger) = ledger_with(1).await;
    let expired = DeliveryFailure::new(
        leadsync_core::FailureClass::AuthExpired,
        "http_401",
        "token expired",
    );
    let conn = Scripted::new(vec![Answer::All(expired.clone())]);
    let t = target(conn.clone(), 10, 1);
    let r = push_round(&ledger, &t, "me", t0()).await.unwrap();
    assert_eq!(r.delivered, 1);
    assert_eq!(conn.calls(), 2);

    // Refused twice: backs off like a transient failure rather than looping.
    let (_d2, ledger2) = ledger_with(1).await;
    let conn = Scripted::new(vec![Answer::All(expired.clone()), Answer::All(expired)]);
    let t = target(conn.clone(), 10, 1);
    let r = push_round(&ledger2, &t, "me", t0()).await.unwrap();
    assert_eq!((r.delivered, r.retrying), (0, 1));
    assert_eq!(conn.calls(), 2);
}

#[tokio::test]
async fn a_lead_past_max_age_is_given_up() {
    let (_d, ledger) = ledger_with(1).await;
    let conn = Scripted::new(vec![Answer::All(DeliveryFailure::transient(
        "timeout",
        "timed out",
    ))]);
    let mut t = target(conn.clone(), 10, 1);
    Arc::make_mut(&mut t).max_age = Duration::from_secs(3600);
    // Staged "now" (wall clock); fail it two hours later.
    let later = Utc::now() + CDuration::hours(2);
    let r = push_round(&ledger, &t, "me", later).await.unwrap();
    assert_eq!(r.dead, 1);
    let dead = ledger.dead_letters(None).await.unwrap();
    assert!(
        dead[0]
            .error
            .as_deref()
            .unwrap()
            .contains("older than max_age"),
        "{dead:?}"
    );
}
