//! The push engine against scripted connectors and the fakes: a hanging request holds one
//! slot, never the target; a wrong client secret opens the target's circuit (one token request
//! per backoff step, a bounded log, no attempt charged, no dead letter) and the fix delivers
//! everything at once; adaptive concurrency finds a receiver's concurrency limit.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use leadsync::config::{RetryPolicy, TargetFilter};
use leadsync::ledger::sqlite::SqliteLedger;
use leadsync::ledger::{DeliveryState, Ledger, PlannedDelivery, StageBatch, StagedLead};
use leadsync::pipeline::{Clock, Target, TargetEngine};
use leadsync_core::{
    read_lead, BuildContext, CheckError, CheckReport, Connector, DeliveryFailure, DeliveryOutcome,
    KeyScope, Mapping, MappingOverrides, OutboundRecord,
};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// A clock whose waits take no real time: minutes of backoff run in milliseconds.
struct SimClock(Mutex<DateTime<Utc>>);

#[async_trait]
impl Clock for SimClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap()
    }
    async fn sleep_until(&self, t: DateTime<Utc>) {
        {
            let mut now = self.0.lock().unwrap();
            *now = (*now).max(t);
        }
        tokio::task::yield_now().await;
    }
}

fn retry(min_ms: u64, max_ms: u64) -> RetryPolicy {
    RetryPolicy {
        min_delay: Duration::from_millis(min_ms),
        max_delay: Duration::from_millis(max_ms),
        max_retry_after: Duration::from_secs(3600),
    }
}

fn target(connector: Arc<dyn Connector>, batch_size: usize, concurrency: usize) -> Target {
    Target {
        name: "crm".into(),
        mapping: connector.mapping().clone(),
        field_limits: connector.field_limits(),
        connector,
        filter: TargetFilter::default(),
        key_scope: KeyScope::Lead,
        key_namespace: "crm".into(),
        batch_size,
        concurrency,
        adaptive: false,
        max_stalled: 0,
        max_age: Duration::from_secs(72 * 3600),
        lease: Duration::from_secs(120),
        retry: retry(10, 100),
        digest: None,
    }
}

/// A ledger holding `n` leads, each owed to target `crm`.
async fn ledger_with(n: usize) -> (tempfile::TempDir, Arc<dyn Ledger>) {
    let dir = tempfile::tempdir().unwrap();
    let ledger: Arc<dyn Ledger> =
        Arc::new(SqliteLedger::open(&dir.path().join("l.db")).await.unwrap());
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let leads = chunk
            .iter()
            .map(|i| {
                let lead = read_lead(
                    format!("lead-{i}"),
                    &serde_json::json!({
                        "UserDetails": {"FirstName": "Ann", "LastName": format!("Lee{i}"),
                            "Email": format!("ann{i}@contoso.example"), "Company": "Contoso"},
                        "LeadSource": "AzureMarketplace", "ActionCode": "INS",
                        "OfferTitle": "Contoso CRM"}),
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
    }
    (dir, ledger)
}

/// Delivers after 20 ms, except the request carrying `hang_lead`, which hangs `hang` and
/// then times out. Keeps when each lead was delivered and the most requests in flight.
struct OneHangs {
    hang_lead: &'static str,
    hang: Duration,
    delivered_at: Mutex<Vec<Instant>>,
    hung: Mutex<Option<(Instant, Instant)>>,
    in_flight: std::sync::atomic::AtomicUsize,
    peak: std::sync::atomic::AtomicUsize,
}

impl OneHangs {
    fn new(hang_lead: &'static str, hang: Duration) -> Self {
        OneHangs {
            hang_lead,
            hang,
            delivered_at: Mutex::default(),
            hung: Mutex::default(),
            in_flight: Default::default(),
            peak: Default::default(),
        }
    }

    /// Leads delivered while the request hung.
    fn delivered_during_hang(&self) -> usize {
        let (start, end) = self.hung.lock().unwrap().expect("the request hung");
        self.delivered_at
            .lock()
            .unwrap()
            .iter()
            .filter(|t| **t > start && **t < end)
            .count()
    }
}

#[async_trait]
impl Connector for OneHangs {
    fn kind(&self) -> &'static str {
        "scripted"
    }
    fn max_batch(&self) -> usize {
        100
    }
    fn mapping(&self) -> &Mapping {
        static EMPTY: Mapping = Mapping::new(Vec::new());
        &EMPTY
    }
    async fn check(&self, _: bool) -> Result<CheckReport, CheckError> {
        Ok(CheckReport::default())
    }
    async fn push(&self, batch: &[OutboundRecord]) -> Vec<DeliveryOutcome> {
        use std::sync::atomic::Ordering::SeqCst;
        let now_in_flight = self.in_flight.fetch_add(1, SeqCst) + 1;
        self.peak.fetch_max(now_in_flight, SeqCst);
        let outcomes = self.answer(batch).await;
        self.in_flight.fetch_sub(1, SeqCst);
        outcomes
    }
}

impl OneHangs {
    async fn answer(&self, batch: &[OutboundRecord]) -> Vec<DeliveryOutcome> {
        if batch.iter().any(|r| r.lead_id == self.hang_lead) && self.hung.lock().unwrap().is_none()
        {
            let start = Instant::now();
            tokio::time::sleep(self.hang).await;
            *self.hung.lock().unwrap() = Some((start, Instant::now()));
            let f = DeliveryFailure::transient("timeout", "timed out");
            return vec![DeliveryOutcome::Failed(f); batch.len()];
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = Instant::now();
        self.delivered_at
            .lock()
            .unwrap()
            .extend(batch.iter().map(|_| now));
        vec![DeliveryOutcome::delivered(None, Some(true)); batch.len()]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_request_holds_one_slot_and_the_others_keep_delivering() {
    let (_d, ledger) = ledger_with(400).await;
    let conn = Arc::new(OneHangs::new("lead-0", Duration::from_millis(1500)));
    // No stalled request set aside: the hanging one holds its slot until it times out.
    let t = Arc::new(target(conn.clone(), 5, 4));
    let engine = TargetEngine::new(t, Arc::clone(&ledger), "me");
    let wait_until = Utc::now() + chrono::Duration::seconds(30);
    let r = engine
        .drain(&CancellationToken::new(), Some(wait_until))
        .await
        .unwrap();
    let during = conn.delivered_during_hang();
    eprintln!("{during} leads delivered while one request hung for 1.5 s");
    // Three slots of five leads, 20 ms a request: far more than a round's worth.
    assert!(during >= 100, "only {during} delivered during the hang");
    assert_eq!(conn.peak.load(std::sync::atomic::Ordering::SeqCst), 4);
    assert_eq!(r.delivered, 400, "{r:?}");
    let status = ledger.status(Utc::now()).await.unwrap();
    assert_eq!(status.targets[0].delivered, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_is_set_aside_and_frees_its_slot() {
    let (_d, ledger) = ledger_with(400).await;
    // One request at a time; the hang comes once answers have set the usual round trip.
    let conn = Arc::new(OneHangs::new("lead-100", Duration::from_millis(1500)));
    let mut t = target(conn.clone(), 5, 1);
    t.max_stalled = 1;
    let engine = TargetEngine::new(Arc::new(t), Arc::clone(&ledger), "me");
    let wait_until = Utc::now() + chrono::Duration::seconds(30);
    let r = engine
        .drain(&CancellationToken::new(), Some(wait_until))
        .await
        .unwrap();
    let during = conn.delivered_during_hang();
    let peak = conn.peak.load(std::sync::atomic::Ordering::SeqCst);
    eprintln!("{during} leads delivered while the only slot's request hung for 1.5 s; peak {peak} in flight");
    // Set aside after 100 ms (twice the slowest answer, at least 100 ms), the slot goes on:
    // 20 ms a request of five leads for the remaining 1.4 s.
    assert!(during >= 100, "only {during} delivered during the hang");
    assert_eq!(
        peak, 2,
        "one request in its slot, one set aside, never more"
    );
    assert_eq!(r.delivered, 400, "{r:?}");
}

/// Log lines written while `f` runs (at `info`, the daemon's default), in this thread.
fn capture_logs() -> (tracing::subscriber::DefaultGuard, Arc<Mutex<Vec<u8>>>) {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let writer = {
        let buf = Arc::clone(&buf);
        move || LogWriter(Arc::clone(&buf))
    };
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_writer(writer)
        .with_ansi(false)
        .finish();
    (tracing::subscriber::set_default(subscriber), buf)
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn salesforce_target(
    fake: &leadsync_fakes::salesforce::SalesforceFake,
    secret: &str,
) -> Arc<Target> {
    let connection = serde_json::json!({
        "login_url": fake.base_url(), "client_id": fake.config().client_id,
        "client_secret": secret,
    });
    let ctx = BuildContext {
        target: "crm",
        connection: &connection,
        base_dir: std::path::Path::new("."),
        mapping: &MappingOverrides::default(),
        batch_size: None,
    };
    let connector = leadsync_salesforce::build(&ctx).unwrap();
    let mut t = target(connector, 200, 4);
    t.retry = retry(1000, 300_000);
    Arc::new(t)
}

// One thread: the captured log sees every task.
#[tokio::test(flavor = "current_thread")]
async fn a_wrong_client_secret_opens_the_circuit_and_the_fix_delivers_everything_at_once() {
    use leadsync_fakes::salesforce::{SalesforceFake, SalesforceFakeConfig};
    let fake = SalesforceFake::start(SalesforceFakeConfig::default())
        .await
        .unwrap();
    let (_d, ledger) = ledger_with(10_000).await;
    let start = Utc::now();
    let clock = Arc::new(SimClock(Mutex::new(start)));
    let (guard, logs) = capture_logs();

    // Ten simulated minutes against a refused secret.
    let engine = TargetEngine::new(
        salesforce_target(&fake, "wrong-secret"),
        Arc::clone(&ledger),
        "me",
    )
    .with_clock(clock.clone());
    let stop = CancellationToken::new();
    let ten_minutes = start + chrono::Duration::minutes(10);
    let r = engine.drain(&stop, Some(ten_minutes)).await.unwrap();
    drop(guard);
    let logs = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    let token_requests = fake.token_request_count();
    let lines = logs.lines().count();
    eprintln!("10 simulated minutes: {token_requests} token requests, {lines} log lines:\n{logs}");
    assert_eq!(r.delivered + r.dead, 0, "{r:?}");
    assert_eq!(
        fake.data_request_count(),
        0,
        "no data request without a token"
    );
    // One request at the start, then one per backoff step (1 s doubling to the 5-minute
    // max_delay, jittered between half and all of it): at most 14 in ten minutes.
    assert!((2..=15).contains(&token_requests), "{token_requests}");
    assert!(lines <= 10, "{lines} log lines");
    assert!(logs.contains("target down"), "{logs}");
    assert!(logs.contains("token_invalid_client"), "{logs}");
    let status = ledger.status(clock.now()).await.unwrap();
    let t = &status.targets[0];
    assert_eq!((t.pending, t.dead, t.delivered), (10_000, 0, 0));
    for lead in ["lead-0", "lead-199", "lead-9999"] {
        let (_, _, d) = ledger.trace(lead).await.unwrap().unwrap();
        assert_eq!(d[0].attempts, 0, "{lead}: no attempt charged");
        assert_eq!(d[0].state, DeliveryState::Pending);
    }

    // The operator fixes the secret (a reload builds the target anew): everything is due at
    // once, nothing waits out a backoff of its own.
    let fixed = TargetEngine::new(
        salesforce_target(&fake, &fake.config().client_secret),
        Arc::clone(&ledger),
        "me",
    );
    let r = fixed.drain(&stop, Some(Utc::now())).await.unwrap();
    assert_eq!(r.delivered, 10_000, "{r:?}");
    assert_eq!(fake.records().len(), 10_000);
    let status = ledger.status(Utc::now()).await.unwrap();
    assert_eq!(status.targets[0].dead, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_concurrency_settles_near_the_receivers_limit() {
    use leadsync_fakes::https_receiver::{HttpsReceiver, ReceiverOptions};
    const LIMIT: usize = 6;
    let rx = HttpsReceiver::start(ReceiverOptions::http().max_in_flight(LIMIT))
        .await
        .unwrap();
    rx.set_latency(Duration::from_millis(40));
    let connection = serde_json::json!({"url": rx.url("/hook"), "allow_http": true});
    let ctx = BuildContext {
        target: "crm",
        connection: &connection,
        base_dir: std::path::Path::new("."),
        mapping: &MappingOverrides::default(),
        batch_size: Some(1),
    };
    let connector = leadsync_https::build(&ctx).unwrap();
    let mut t = target(connector, 1, 32);
    t.adaptive = true;
    let (_d, ledger) = ledger_with(1500).await;
    let engine = Arc::new(TargetEngine::new(Arc::new(t), Arc::clone(&ledger), "me"));

    // Sample the limit while it runs.
    let samples = Arc::new(Mutex::new(Vec::new()));
    let sampler = {
        let (engine, samples) = (Arc::clone(&engine), Arc::clone(&samples));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(20)).await;
                samples.lock().unwrap().push(engine.concurrency());
            }
        })
    };
    let r = engine
        .drain(
            &CancellationToken::new(),
            Some(Utc::now() + chrono::Duration::seconds(60)),
        )
        .await
        .unwrap();
    sampler.abort();
    let mut s = samples.lock().unwrap().clone();
    let late = s.split_off(s.len() / 3); // after the climb
    let mut sorted = late.clone();
    sorted.sort();
    let median = sorted[sorted.len() / 2];
    let above = late.iter().filter(|c| **c > LIMIT).count() as f64 / late.len() as f64;
    let refused = rx.over_limit_count();
    eprintln!(
        "adaptive: median {median}, {:.0} % of samples above the limit {LIMIT}, {refused} of {} requests refused",
        above * 100.0,
        rx.request_count()
    );
    assert_eq!(r.delivered, 1500, "{r:?}");
    assert!((LIMIT / 2..=LIMIT + 1).contains(&median), "median {median}");
    assert!(above < 0.25, "{:.2} of the time above the limit", above);
    assert!((refused as f64) < 0.1 * 1500.0, "{refused} refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_concurrency_keeps_its_number_in_flight() {
    use leadsync_fakes::https_receiver::{HttpsReceiver, ReceiverOptions};
    let rx = HttpsReceiver::start(ReceiverOptions::http()).await.unwrap();
    rx.set_latency(Duration::from_millis(30));
    let connection = serde_json::json!({"url": rx.url("/hook"), "allow_http": true});
    let ctx = BuildContext {
        target: "crm",
        connection: &connection,
        base_dir: std::path::Path::new("."),
        mapping: &MappingOverrides::default(),
        batch_size: Some(1),
    };
    let t = target(leadsync_https::build(&ctx).unwrap(), 1, 4);
    let (_d, ledger) = ledger_with(200).await;
    let engine = TargetEngine::new(Arc::new(t), Arc::clone(&ledger), "me");
    let r = engine
        .drain(
            &CancellationToken::new(),
            Some(Utc::now() + chrono::Duration::seconds(30)),
        )
        .await
        .unwrap();
    assert_eq!(r.delivered, 200);
    assert_eq!(engine.concurrency(), 4);
    assert_eq!(rx.peak_in_flight(), 4, "four in flight, never more");
}

/// A connector that prepares each batch ahead (the batch's lead ids) and checks, when the
/// request goes, that what it is handed was made of that very batch.
#[derive(Default)]
struct Prepares {
    prepared: std::sync::atomic::AtomicUsize,
    pushed_prepared: std::sync::atomic::AtomicUsize,
    pushed_plain: std::sync::atomic::AtomicUsize,
    mismatched: std::sync::atomic::AtomicUsize,
    delivered: Mutex<Vec<String>>,
}

impl Prepares {
    async fn answer(&self, batch: &[OutboundRecord]) -> Vec<DeliveryOutcome> {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let mut delivered = self.delivered.lock().unwrap();
        delivered.extend(batch.iter().map(|r| r.lead_id.clone()));
        vec![DeliveryOutcome::delivered(None, Some(true)); batch.len()]
    }
}

#[async_trait]
impl Connector for Prepares {
    fn kind(&self) -> &'static str {
        "scripted"
    }
    fn max_batch(&self) -> usize {
        100
    }
    fn mapping(&self) -> &Mapping {
        static EMPTY: Mapping = Mapping::new(Vec::new());
        &EMPTY
    }
    async fn check(&self, _: bool) -> Result<CheckReport, CheckError> {
        Ok(CheckReport::default())
    }
    fn prepare(&self, batch: &[OutboundRecord]) -> Option<leadsync_core::PreparedBatch> {
        use std::sync::atomic::Ordering::SeqCst;
        self.prepared.fetch_add(1, SeqCst);
        let ids: Vec<String> = batch.iter().map(|r| r.lead_id.clone()).collect();
        Some(leadsync_core::PreparedBatch::new(batch, ids))
    }
    async fn push(&self, batch: &[OutboundRecord]) -> Vec<DeliveryOutcome> {
        use std::sync::atomic::Ordering::SeqCst;
        self.pushed_plain.fetch_add(1, SeqCst);
        self.answer(batch).await
    }
    async fn push_prepared(
        &self,
        batch: &[OutboundRecord],
        prepared: leadsync_core::PreparedBatch,
    ) -> Vec<DeliveryOutcome> {
        use std::sync::atomic::Ordering::SeqCst;
        self.pushed_prepared.fetch_add(1, SeqCst);
        let ids: Vec<String> = batch.iter().map(|r| r.lead_id.clone()).collect();
        if prepared.take_for::<Vec<String>>(batch) != Some(ids) {
            self.mismatched.fetch_add(1, SeqCst);
        }
        self.answer(batch).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_claimed_ahead_fly_with_what_the_connector_prepared_of_them() {
    use std::sync::atomic::Ordering::SeqCst;
    let conn = Arc::new(Prepares::default());
    let t = target(conn.clone(), 10, 3);
    let (_d, ledger) = ledger_with(300).await;
    let engine = TargetEngine::new(Arc::new(t), Arc::clone(&ledger), "me");
    let r = engine
        .drain(
            &CancellationToken::new(),
            Some(Utc::now() + chrono::Duration::seconds(30)),
        )
        .await
        .unwrap();
    assert_eq!(r.delivered, 300);
    let mut delivered = conn.delivered.lock().unwrap().clone();
    delivered.sort();
    delivered.dedup();
    assert_eq!(delivered.len(), 300, "every lead once");
    assert_eq!(
        conn.mismatched.load(SeqCst),
        0,
        "prepared for another batch"
    );
    let (prepared, plain) = (
        conn.pushed_prepared.load(SeqCst),
        conn.pushed_plain.load(SeqCst),
    );
    // The first requests of a drain are claimed with nothing in flight and go unprepared;
    // once requests are in flight, batches are claimed and prepared ahead.
    assert!(
        prepared >= 20,
        "{prepared} prepared, {plain} plain of 30 requests"
    );
    assert_eq!(prepared + plain, 30);
    assert_eq!(
        conn.prepared.load(SeqCst),
        prepared,
        "each prepared batch flew once"
    );
}
