//! The push engine of one target: continuous, target-aware, adaptive.
//!
//! It keeps up to the target's concurrency of requests in flight at all times: when one
//! finishes, its outcome is recorded and the next batch starts at once, and the next batch is
//! claimed (and leased) and mapped while requests are in flight, so that claiming, mapping
//! and ledger writes overlap the network. A request that hangs holds its one slot until its timeout, never the
//! others, and its batch's lease is renewed while it runs. A request that has run twice as
//! long as the target's slowest recent answer (a stall, see [`Flights`]) is set aside: it
//! keeps its connection and lease until it is answered or times out, but no longer holds a
//! slot, so a receiver that hangs on some requests does not slow the rest down to its
//! timeout. `limits.max_stalled` bounds how many are set aside at once (0: none).
//!
//! The engine keeps the target's health circuit ([`super::health`]) and concurrency limit
//! ([`super::concurrency`]) across pushes, writes one log line per failed request (per-lead
//! detail at `debug`), one line when the target goes down and one when it comes back (with a
//! reminder at most every five minutes), and tells the ledger, the metrics and the admin
//! endpoint (through a [`HealthSink`]) whether the target is up.
//!
//! Per-delivery decisions (backoff, `Retry-After`, dead letters) are [`super::decide`]'s.

use chrono::{DateTime, Utc};
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use leadsync_core::{
    DeliveryFailure, DeliveryOutcome, FailureClass, OutboundRecord, PreparedBatch,
};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::clock::{Clock, SystemClock};
use super::concurrency::{ConcurrencyLimit, Congestion};
use super::decide::{chrono_after, decide_outcome, outbound, DeliveredMetrics};
use super::health::{Circuit, Gate, Transition, Verdict};
use super::{PipelineError, PushReport, Target};
use crate::ledger::{ClaimedDelivery, Ledger, RecordedOutcome, TargetDown};
use crate::metrics as m;

/// Where the engine reports a target going down or coming back (the admin endpoint's
/// `/readyz` reads it).
pub trait HealthSink: Send + Sync {
    fn target_down(&self, target: &str, reason: Option<&str>);
}

/// Batches claimed ahead in one ledger transaction, at most (as many as the concurrency, at
/// least one): the loop waits for a claim once per that many answers, and few leads are
/// leased before they fly. (Eight measured no better than four at 10 in flight.)
const MAX_CLAIM_AHEAD: usize = 4;
/// Judged answers waiting for the committer, at most, before the request loop waits for it:
/// a slow ledger slows the pushing down instead of piling up unwritten answers (which a
/// crash would push again).
const WRITES_AHEAD: usize = 2;
/// A request running this many times the longest recent answered round trip is stalled.
const STALL_FACTOR: u32 = 2;
/// ... but never sooner than this (a fast receiver's jitter is not a stall).
const STALL_FLOOR: Duration = Duration::from_millis(100);

/// The requests in flight, with when each started: those running longer than the stall
/// threshold are set aside and do not count against the concurrency limit.
struct Flights {
    running: FuturesUnordered<JoinHandle<Trip>>,
    started: std::collections::HashMap<tokio::task::Id, Instant>,
}

impl Flights {
    fn new() -> Self {
        Flights {
            running: FuturesUnordered::new(),
            started: std::collections::HashMap::new(),
        }
    }

    fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    fn push(&mut self, flight: JoinHandle<Trip>) {
        self.started.insert(flight.id(), Instant::now());
        self.running.push(flight);
    }

    /// Whether one more request may start under `limit`, with up to `max_stalled` stalled
    /// requests set aside (beyond that, a stalled request holds its slot again, so the
    /// connections to a target stay bounded).
    fn may_start(&self, limit: usize, max_stalled: usize, stall_after: Option<Duration>) -> bool {
        let total = self.running.len();
        let Some(stall_after) = stall_after.filter(|_| max_stalled > 0) else {
            return total < limit;
        };
        let holding = self
            .started
            .values()
            .filter(|s| s.elapsed() < stall_after)
            .count();
        holding < limit && total < limit + max_stalled
    }

    /// When the next request still holding a slot turns into a stall.
    fn next_stall(&self, stall_after: Option<Duration>) -> Option<Instant> {
        let stall_after = stall_after?;
        let now = Instant::now();
        self.started
            .values()
            .map(|s| *s + stall_after)
            .filter(|at| *at > now)
            .min()
    }

    /// The next request to come back (its slot freed), or `None` when none is in flight.
    async fn next(&mut self) -> Option<Result<Trip, tokio::task::JoinError>> {
        let joined = self.running.next().await?;
        let task = match &joined {
            Ok(trip) => trip.task,
            Err(e) => e.id(),
        };
        self.started.remove(&task);
        Some(joined)
    }
}

/// One batch's trip to the CRM and back.
struct Trip {
    /// The task that flew it (the key of its start time in [`Flights`]).
    task: tokio::task::Id,
    batch: Arc<Vec<ClaimedDelivery>>,
    outcomes: Vec<DeliveryOutcome>,
    rtt: Duration,
    /// The circuit's probe: its verdict moves the circuit's steps.
    probe: bool,
}

/// A trip whose target-wide part has been observed ([`TargetEngine::observe_joined`]), its
/// deliveries not yet judged; `trip` is `None` when the engine's state was unreadable.
struct Observed {
    trip: Option<Trip>,
    landing: Landing,
    down: bool,
}

impl Observed {
    /// Every lead of the trip was delivered: nothing in it can pause the target.
    fn all_delivered(&self) -> bool {
        self.trip.as_ref().is_some_and(|t| {
            t.outcomes
                .iter()
                .all(|o| matches!(o, DeliveryOutcome::Delivered { .. }))
        })
    }
}

struct EngineState {
    circuit: Circuit,
    limit: ConcurrencyLimit,
    /// The target's pause (throttling), as last read from or written to the ledger.
    paused_until: Option<DateTime<Utc>>,
    /// The target has answered this engine: a "down" left by the engine before it (a
    /// restart, a reload that fixed the credentials) has been cleared.
    confirmed_up: bool,
}

/// A batch's records, and its request as far as the connector could make it ahead.
type Outbound = (Vec<OutboundRecord>, Option<PreparedBatch>);

/// A batch claimed ahead, its records being mapped (and its request prepared by the
/// connector) on a task of their own meanwhile, so that this work overlaps the requests in
/// flight instead of delaying the next one or lengthening its round trip.
struct MappedAhead {
    batch: Arc<Vec<ClaimedDelivery>>,
    outbound: JoinHandle<Outbound>,
}

impl MappedAhead {
    fn start(target: &Arc<Target>, batch: Vec<ClaimedDelivery>) -> Self {
        let batch = Arc::new(batch);
        let (target, claimed) = (Arc::clone(target), Arc::clone(&batch));
        let outbound = tokio::spawn(async move {
            let records = map_batch(&target, &claimed);
            let prepared = target.connector.prepare(&records);
            (records, prepared)
        });
        MappedAhead { batch, outbound }
    }
}

/// A batch about to fly: mapped ahead, or to be mapped by its flight.
enum Mapping {
    Ahead(MappedAhead),
    Now(Vec<ClaimedDelivery>),
}

impl Mapping {
    /// The batch and its records (with its prepared request, if made ahead). A mapping task
    /// that failed (a panic) is mapped again here, so that its failure is the flight's, as a
    /// mapping's always was.
    async fn finish(self, target: &Target) -> (Arc<Vec<ClaimedDelivery>>, Outbound) {
        match self {
            Mapping::Ahead(MappedAhead { batch, outbound }) => {
                let outbound = match outbound.await {
                    Ok(outbound) => outbound,
                    Err(_) => (map_batch(target, &batch), None),
                };
                (batch, outbound)
            }
            Mapping::Now(batch) => {
                let records = map_batch(target, &batch);
                (Arc::new(batch), (records, None))
            }
        }
    }
}

fn map_batch(target: &Target, batch: &[ClaimedDelivery]) -> Vec<OutboundRecord> {
    batch.iter().map(|d| outbound(target, d)).collect()
}

/// Trips' answers, judged and waiting to be written to the ledger.
struct Landing {
    answered: DateTime<Utc>,
    recorded: Vec<RecordedOutcome>,
    pause: Option<DateTime<Utc>>,
    /// The circuit's transitions, in the order the answers were judged.
    transitions: Vec<Transition>,
    report: PushReport,
}

impl Landing {
    fn empty(answered: DateTime<Utc>) -> Self {
        Landing {
            answered,
            recorded: Vec::new(),
            pause: None,
            transitions: Vec::new(),
            report: PushReport::default(),
        }
    }

    /// Both landings, to be written in one go.
    fn merge(mut self, other: Landing) -> Landing {
        self.answered = self.answered.max(other.answered);
        self.recorded.extend(other.recorded);
        self.pause = self.pause.max(other.pause);
        self.transitions.extend(other.transitions);
        self.report.add(other.report);
        self
    }
}

/// Where the request loop hands judged answers to the committer.
type Writes = tokio::sync::mpsc::Sender<Landing>;

/// A claim ahead in progress, on a task of its own: it holds the ledger's write lock while
/// it runs, so it must go on whatever the request loop is waiting for.
type ClaimAhead = JoinHandle<Result<Vec<ClaimedDelivery>, PipelineError>>;

/// What woke the request loop.
enum Woke {
    Answered(Option<Result<Trip, tokio::task::JoinError>>),
    Claimed(Result<Vec<ClaimedDelivery>, PipelineError>),
    Stalled,
}

/// What may start next.
enum Start {
    Batch,
    Probe(Vec<ClaimedDelivery>),
    Wait,
}

/// Pushes one target's due deliveries; one engine per target, kept for the life of a
/// configuration so that its circuit and concurrency persist from one push to the next.
pub struct TargetEngine {
    target: Arc<Target>,
    ledger: Arc<dyn Ledger>,
    owner: String,
    clock: Arc<dyn Clock>,
    health: Option<Arc<dyn HealthSink>>,
    state: Mutex<EngineState>,
}

impl TargetEngine {
    pub fn new(target: Arc<Target>, ledger: Arc<dyn Ledger>, owner: impl Into<String>) -> Self {
        let state = EngineState {
            circuit: Circuit::new(target.retry.max_delay),
            limit: ConcurrencyLimit::new(target.concurrency, target.adaptive),
            paused_until: None,
            confirmed_up: false,
        };
        metrics::gauge!(m::TARGET_UP, "target" => target.name.clone()).set(1.0);
        TargetEngine {
            target,
            ledger,
            owner: owner.into(),
            clock: Arc::new(SystemClock),
            health: None,
            state: Mutex::new(state),
        }
    }

    /// Read time and wait through `clock` (tests drive time with their own).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Report the target's health to `sink` as well as to the ledger and metrics.
    pub fn with_health(mut self, sink: Arc<dyn HealthSink>) -> Self {
        self.health = Some(sink);
        self
    }

    pub fn target(&self) -> &Arc<Target> {
        &self.target
    }

    /// Requests the engine would keep in flight now.
    pub fn concurrency(&self) -> usize {
        self.state().map(|s| s.limit.current()).unwrap_or(1)
    }

    /// Since when and why the target is down, while its circuit is open.
    pub fn down(&self) -> Option<(DateTime<Utc>, String)> {
        let s = self.state()?;
        s.circuit.down().map(|(since, r)| (since, r.to_string()))
    }

    /// When waiting work could go next without a new lead: the end of a pause or the next
    /// probe of a down target (what the daemon wakes up for).
    pub fn next_wake(&self) -> Option<DateTime<Utc>> {
        let s = self.state()?;
        let now = self.clock.now();
        let pause = s.paused_until.filter(|p| *p > now);
        match (pause, s.circuit.next_probe()) {
            (Some(p), Some(q)) => Some(p.max(q)),
            (p, q) => p.or(q),
        }
    }

    /// Push until nothing is due, then wait for what comes due before `wait_until` (backoff,
    /// pauses, probes), and stop there; with `None`, return as soon as nothing is due now.
    pub async fn drain(
        &self,
        stop: &CancellationToken,
        wait_until: Option<DateTime<Utc>>,
    ) -> Result<PushReport, PipelineError> {
        let mut total = PushReport::default();
        loop {
            total.add(self.push_due(stop, true).await?);
            let Some(wait_until) = wait_until else { break };
            if stop.is_cancelled() {
                break;
            }
            let due = self.ledger.next_due(&self.target.name).await?;
            let Some(due) = due else { break };
            let next = match self.next_wake() {
                Some(w) => due.max(w),
                None => due,
            };
            let now = self.clock.now();
            if next > wait_until || now > wait_until {
                break;
            }
            tokio::select! {
                _ = self.clock.sleep_until(next.max(now + chrono::Duration::milliseconds(10))) => {}
                _ = stop.cancelled() => break,
            }
        }
        Ok(total)
    }

    /// Push what is due now, keeping the concurrency limit's worth of requests in flight,
    /// until nothing more is due, the target pauses or goes down, or `stop`. Without
    /// `refill`, one round: start up to the limit, record them all, return.
    ///
    /// Answers are written to the ledger by a committer polled beside the request loop (in
    /// this task, so both always make progress): the loop judges an answer, starts the next
    /// request and goes on claiming while the committer writes, in order, everything
    /// answered meanwhile in one transaction.
    pub async fn push_due(
        &self,
        stop: &CancellationToken,
        refill: bool,
    ) -> Result<PushReport, PipelineError> {
        self.read_pause().await?;
        let now = self.clock.now();
        let paused_until = self
            .state()
            .and_then(|s| s.paused_until.filter(|p| *p > now));
        // A failed ledger write stops the loop from starting anything more.
        let halt = stop.child_token();
        let (writes, pending) = tokio::sync::mpsc::channel::<Landing>(WRITES_AHEAD);
        let requests = async {
            let mut flights = Flights::new();
            let mut ready: VecDeque<MappedAhead> = VecDeque::new();
            let mut claiming: Option<ClaimAhead> = None;
            let mut more = true;
            let result = self
                .keep_in_flight(
                    &halt,
                    refill,
                    (&mut flights, &mut ready, &mut claiming),
                    &mut more,
                    &writes,
                )
                .await;
            // Whatever happened, nothing claimed is left leased and nothing answered
            // unrecorded.
            let released = async {
                if let Some(claim) = claiming {
                    self.release(&joined_claim(claim.await)?).await?;
                }
                for mapped in ready {
                    mapped.outbound.abort();
                    self.release(&mapped.batch).await?;
                }
                Ok::<(), PipelineError>(())
            }
            .await;
            while let Some(joined) = flights.next().await {
                let _ = writes.send(self.judge_joined(joined)).await;
            }
            drop(writes);
            result.and(released)
        };
        let (looped, committed) = tokio::join!(requests, self.committer(pending, &halt));
        let mut report = committed?;
        looped?;
        report.paused_until = report.paused_until.max(paused_until);
        Ok(report)
    }

    /// Write each judged answer to the ledger as it comes, several at once when several
    /// are waiting; on a failed write, stop the loop (`halt`) and return the error once
    /// everything sent has been tried.
    async fn committer(
        &self,
        mut pending: tokio::sync::mpsc::Receiver<Landing>,
        halt: &CancellationToken,
    ) -> Result<PushReport, PipelineError> {
        let mut report = PushReport::default();
        let mut failed = None;
        while let Some(mut landing) = pending.recv().await {
            while let Ok(next) = pending.try_recv() {
                landing = landing.merge(next);
            }
            match self.commit(landing).await {
                Ok(r) => report.add(r),
                Err(e) => {
                    halt.cancel();
                    failed.get_or_insert(e);
                }
            }
        }
        failed.map_or(Ok(report), Err)
    }

    /// The loop of [`TargetEngine::push_due`]: start what the limit allows, claim ahead, hand
    /// each trip's judged answer to the committer as it comes back. The claim ahead runs on
    /// its own task beside the answers: one that comes back meanwhile is judged and its slot
    /// refilled from what is ready, instead of waiting for the ledger. Whatever is left in
    /// `ready` or `claiming` when it returns, the caller releases.
    async fn keep_in_flight(
        &self,
        stop: &CancellationToken,
        refill: bool,
        (flights, ready, claiming): (
            &mut Flights,
            &mut VecDeque<MappedAhead>,
            &mut Option<ClaimAhead>,
        ),
        more: &mut bool,
        writes: &Writes,
    ) -> Result<(), PipelineError> {
        let mut filled = false;
        loop {
            if !filled {
                self.fill(stop, flights, ready, more, writes, claiming.is_some())
                    .await?;
                filled = !refill;
            }
            let ahead = self.concurrency().clamp(1, MAX_CLAIM_AHEAD);
            if claiming.is_none()
                && refill
                && *more
                && !stop.is_cancelled()
                && ready.len() < ahead
                && !flights.is_empty()
                && self.may_claim_ahead()
            {
                // Claim the next batches while requests are in flight, several in one
                // transaction when several slots are to be fed.
                *claiming = Some(self.claim_ahead(self.target.batch_size * ahead));
            }
            // Wait for an answer, the claim ahead, or (refilling) for a request to stall
            // and free its slot.
            let stall = if refill && self.target.max_stalled > 0 {
                flights.next_stall(self.stall_after())
            } else {
                None
            };
            let woke = tokio::select! {
                // An answer first: it may pause the target before anything else starts.
                biased;
                joined = flights.next() => Woke::Answered(joined),
                claimed = claim_opt(claiming) => Woke::Claimed(claimed),
                _ = sleep_until_opt(stall) => Woke::Stalled,
            };
            let joined = match woke {
                Woke::Answered(Some(joined)) => joined,
                Woke::Answered(None) => match claiming.take() {
                    // Nothing in flight: the claim ahead decides whether there is more.
                    Some(claim) => {
                        self.ready_ahead(joined_claim(claim.await)?, ready, more);
                        filled = ready.is_empty();
                        if filled {
                            return Ok(());
                        }
                        continue;
                    }
                    None => return Ok(()),
                },
                Woke::Claimed(claimed) => {
                    *claiming = None;
                    self.ready_ahead(claimed?, ready, more);
                    // Slots freed while the claim ran take what it brought.
                    self.fill(stop, flights, ready, more, writes, claiming.is_some())
                        .await?;
                    continue;
                }
                Woke::Stalled => continue,
            };
            // Judge this answer and any others already back, start the freed slots' next
            // requests, then hand all the answers to the committer. An answer that
            // delivered every lead can pause nothing: its slot is refilled before its leads
            // are judged one by one (0.2 to 0.6 ms for 500).
            let first = self.observe_joined(joined);
            if refill && first.all_delivered() {
                self.fill(stop, flights, ready, more, writes, claiming.is_some())
                    .await?;
            }
            let mut landing = self.judge(first);
            while let Some(Some(joined)) = flights.next().now_or_never() {
                landing = landing.merge(self.judge_joined(joined));
            }
            if refill {
                self.fill(stop, flights, ready, more, writes, claiming.is_some())
                    .await?;
            }
            let _ = writes.send(landing).await;
            // An answer may have made work due again (a released batch, a closed circuit).
            *more = *more || refill;
        }
    }

    /// Split what a claim ahead brought into batches and start mapping them; nothing
    /// brought means nothing more is due.
    fn ready_ahead(
        &self,
        claimed: Vec<ClaimedDelivery>,
        ready: &mut VecDeque<MappedAhead>,
        more: &mut bool,
    ) {
        if claimed.is_empty() {
            *more = false;
        }
        ready.extend(
            split_batches(claimed, self.target.batch_size)
                .into_iter()
                .map(|batch| MappedAhead::start(&self.target, batch)),
        );
    }

    /// Start batches (or the circuit's probe) until the limit is reached or nothing may go.
    async fn fill(
        &self,
        stop: &CancellationToken,
        flights: &mut Flights,
        ready: &mut VecDeque<MappedAhead>,
        more: &mut bool,
        writes: &Writes,
        claim_running: bool,
    ) -> Result<(), PipelineError> {
        while *more
            && !stop.is_cancelled()
            && flights.may_start(
                self.concurrency(),
                self.target.max_stalled,
                self.stall_after(),
            )
        {
            match self.next_start(flights.is_empty(), writes).await? {
                Start::Wait => {
                    *more = false;
                    return Ok(());
                }
                Start::Probe(batch) => {
                    flights.push(self.fly(Mapping::Now(batch), true));
                    return Ok(());
                }
                Start::Batch => {}
            }
            let mapping = match ready.pop_front() {
                Some(mapped) => Mapping::Ahead(mapped),
                // What the claim ahead brings fills this slot when it comes.
                None if claim_running => return Ok(()),
                None => {
                    let batch = self.claim(self.target.batch_size).await?;
                    if batch.is_empty() {
                        *more = false;
                        return Ok(());
                    }
                    Mapping::Now(batch)
                }
            };
            flights.push(self.fly(mapping, false));
        }
        Ok(())
    }

    fn state(&self) -> Option<std::sync::MutexGuard<'_, EngineState>> {
        self.state.lock().ok()
    }

    /// How long a request may run before it is set aside as stalled: `STALL_FACTOR` times the
    /// longest recent answered round trip, at least `STALL_FLOOR`; `None` before any answer.
    fn stall_after(&self) -> Option<Duration> {
        let longest = self.state()?.limit.rtt_recent_max()?;
        Some((longest * STALL_FACTOR).max(STALL_FLOOR))
    }

    fn may_claim_ahead(&self) -> bool {
        let now = self.clock.now();
        self.state()
            .is_some_and(|s| !s.circuit.is_open() && s.paused_until.is_none_or(|p| p <= now))
    }

    async fn read_pause(&self) -> Result<(), PipelineError> {
        let paused = self.ledger.paused_until(&self.target.name).await?;
        if let Some(mut s) = self.state() {
            s.paused_until = paused;
        }
        Ok(())
    }

    /// Decide what may start: a batch, the circuit's probe, or nothing yet.
    async fn next_start(&self, idle: bool, writes: &Writes) -> Result<Start, PipelineError> {
        let now = self.clock.now();
        let gate = {
            let Some(s) = self.state() else {
                return Ok(Start::Wait);
            };
            if s.paused_until.is_some_and(|p| p > now) {
                return Ok(Start::Wait);
            }
            s.circuit.gate(now)
        };
        match gate {
            Gate::Open => Ok(Start::Batch),
            Gate::Wait => Ok(Start::Wait),
            Gate::Probe if !idle => Ok(Start::Wait),
            Gate::Probe => self.probe(now, writes).await,
        }
    }

    /// The circuit's probe: the connector's own check (a token request), then one lead.
    async fn probe(&self, now: DateTime<Utc>, writes: &Writes) -> Result<Start, PipelineError> {
        let asked = self.target.connector.probe().await;
        if let Some(Err(f)) = &asked {
            tracing::debug!(target = %self.target.name, class = f.class.as_str(), error_code = %f.code, "probe: the target is still down");
            if let Some(mut s) = self.state() {
                s.circuit.probe_failed(self.clock.now());
            }
            self.remind(now);
            return Ok(Start::Wait);
        }
        let batch = self.claim(1).await?;
        if batch.is_empty() {
            if asked.is_some() {
                // The connector's own check passed and there is nothing to send: it is up.
                // Written by the committer, after the answers before it.
                let t = self
                    .state()
                    .map(|mut s| s.circuit.observe(Verdict::Up, now, true))
                    .unwrap_or(Transition::None);
                let mut up = Landing::empty(now);
                up.transitions.push(t);
                let _ = writes.send(up).await;
            } else if let Some(mut s) = self.state() {
                s.circuit.probe_failed(now);
            }
            return Ok(Start::Wait);
        }
        if let Some(mut s) = self.state() {
            s.circuit.begin_probe();
        }
        Ok(Start::Probe(batch))
    }

    /// [`TargetEngine::claim`] on a task of its own.
    fn claim_ahead(&self, size: usize) -> ClaimAhead {
        let (ledger, target) = (Arc::clone(&self.ledger), self.target.name.clone());
        let (clock, owner, lease) = (
            Arc::clone(&self.clock),
            self.owner.clone(),
            self.target.lease,
        );
        tokio::spawn(async move {
            let size = size.clamp(1, u32::MAX as usize) as u32;
            Ok(ledger
                .claim(&target, clock.now(), size, lease, &owner)
                .await?)
        })
    }

    async fn claim(&self, size: usize) -> Result<Vec<ClaimedDelivery>, PipelineError> {
        let size = size.clamp(1, u32::MAX as usize) as u32;
        let now = self.clock.now();
        let batch = self
            .ledger
            .claim(&self.target.name, now, size, self.target.lease, &self.owner)
            .await?;
        if !batch.is_empty() {
            tracing::trace!(target = %self.target.name, claimed = batch.len(), "pushing claimed deliveries");
        }
        Ok(batch)
    }

    /// Give claimed deliveries back untouched (no attempt counted), due at once.
    async fn release(&self, batch: &[ClaimedDelivery]) -> Result<(), PipelineError> {
        let now = self.clock.now();
        let outcomes: Vec<RecordedOutcome> = batch
            .iter()
            .map(|d| RecordedOutcome::Release {
                delivery_id: d.delivery_id,
                next_attempt_at: now,
            })
            .collect();
        self.ledger.record(&outcomes, &self.owner).await?;
        Ok(())
    }

    /// Start one batch's request on its own task: map (unless mapped ahead), push
    /// (renewing the batch's lease while it runs), and come back with the outcomes.
    fn fly(&self, mapping: Mapping, probe: bool) -> JoinHandle<Trip> {
        let target = Arc::clone(&self.target);
        let ledger = Arc::clone(&self.ledger);
        let owner = self.owner.clone();
        let clock = Arc::clone(&self.clock);
        tokio::spawn(async move {
            let task = tokio::task::id();
            let (batch, outbound) = mapping.finish(&target).await;
            let started = Instant::now();
            let ids: Vec<i64> = batch.iter().map(|d| d.delivery_id).collect();
            let push = std::panic::AssertUnwindSafe(push_batch(&target, outbound)).catch_unwind();
            let renew = renew_leases(ledger.as_ref(), &ids, &owner, target.lease, clock.as_ref());
            let outcomes = tokio::select! {
                o = push => o.unwrap_or_else(|_| {
                    tracing::error!(target = %target.name, "connector panicked; the batch will be retried");
                    failed_all(ids.len(), DeliveryFailure::transient("connector_panicked", "the connector panicked"))
                }),
                never = renew => match never {},
            };
            Trip {
                task,
                batch,
                outcomes,
                rtt: started.elapsed(),
                probe,
            }
        })
    }

    /// [`TargetEngine::judge`] a joined flight. `fly` catches a connector's panic; a join
    /// error means the runtime is shutting down: the batch's leases run out and it is pushed
    /// again.
    fn judge_joined(&self, joined: Result<Trip, tokio::task::JoinError>) -> Landing {
        self.judge(self.observe_joined(joined))
    }

    /// The target-wide half of what a trip's answer means, which decides what may start
    /// next: the circuit, the concurrency limit, the request's metrics.
    fn observe_joined(&self, joined: Result<Trip, tokio::task::JoinError>) -> Observed {
        let answered = self.clock.now();
        let Ok(trip) = joined else {
            return Observed {
                trip: None,
                landing: Landing::empty(answered),
                down: false,
            };
        };
        let verdict = Verdict::of(&trip.outcomes);
        let mut landing = Landing::empty(answered);
        landing.recorded.reserve(trip.batch.len());
        landing.report.requests = 1;
        landing.report.request_time = trip.rtt;
        metrics::histogram!(m::REQUEST_DURATION, "target" => self.target.name.clone())
            .record(trip.rtt.as_secs_f64());
        let Some(mut s) = self.state() else {
            return Observed {
                trip: None,
                landing,
                down: false,
            };
        };
        let first_answer = verdict == Verdict::Up && !s.confirmed_up;
        s.confirmed_up |= verdict == Verdict::Up;
        let t = s.circuit.observe(verdict, answered, trip.probe);
        landing.transitions.push(match t {
            Transition::None if first_answer => Transition::Confirmed,
            t => t,
        });
        s.limit
            .observe(trip.rtt, congestion(&trip.outcomes), Instant::now());
        let down = s.circuit.is_open();
        Observed {
            trip: Some(trip),
            landing,
            down,
        }
    }

    /// The rest of what a trip's answer means, without waiting for the ledger: decide each
    /// delivery, log one line if the request failed, pause the target (in memory) if it was
    /// throttled. The next request may start on this knowledge while
    /// [`TargetEngine::commit`] writes it down.
    fn judge(&self, observed: Observed) -> Landing {
        let Observed {
            trip,
            mut landing,
            down,
        } = observed;
        let Some(trip) = trip else {
            return landing;
        };
        let answered = landing.answered;
        let delivered = DeliveredMetrics::of(&self.target);
        let mut first_failure: Option<DeliveryFailure> = None;
        let mut released = 0u64;
        for (d, outcome) in trip.batch.iter().zip(trip.outcomes) {
            if let DeliveryOutcome::Failed(f) = &outcome {
                first_failure.get_or_insert_with(|| f.clone());
                let about_target = f.class == FailureClass::TargetDown
                    || (down && f.class == FailureClass::Transient);
                if about_target {
                    // The target's failure, not the lead's: no attempt is charged.
                    tracing::debug!(target = %self.target.name, lead = %d.lead.id, class = f.class.as_str(), error_code = %f.code, "target down; delivery put back");
                    released += 1;
                    landing.recorded.push(RecordedOutcome::Release {
                        delivery_id: d.delivery_id,
                        next_attempt_at: answered,
                    });
                    continue;
                }
            }
            let (rec, p) = decide_outcome(
                &self.target,
                d,
                outcome,
                answered,
                (&mut landing.report, &delivered),
            );
            landing.pause = landing.pause.max(p);
            landing.recorded.push(rec);
        }
        landing.report.retrying += released;
        if let Some(f) = &first_failure {
            self.log_failed_request(f, trip.batch.len(), &landing.report, released, down);
        }
        if let Some(until) = landing.pause {
            if let Some(mut s) = self.state() {
                s.paused_until = Some(until);
            }
            landing.report.paused_until = Some(until);
        }
        landing
    }

    /// Write a judged trip to the ledger: the pause, each delivery's outcome, the circuit's
    /// transition and the connector's status note.
    async fn commit(&self, landing: Landing) -> Result<PushReport, PipelineError> {
        let Landing {
            answered,
            recorded,
            pause,
            transitions,
            report,
        } = landing;
        if let Some(until) = pause {
            tracing::warn!(target = %self.target.name, paused_until = %until.to_rfc3339(), "target throttled; paused as a whole");
            self.ledger
                .pause_target(&self.target.name, until, "throttled by the CRM")
                .await?;
        }
        if !recorded.is_empty() {
            self.ledger.record(&recorded, &self.owner).await?;
        }
        for t in transitions {
            self.transition(t).await?;
        }
        self.remind(answered);
        if let Some(note) = self.target.connector.status_note() {
            self.ledger
                .set_target_note(&self.target.name, &note, answered)
                .await?;
        }
        Ok(report)
    }

    /// One line per failed request: how many records, the class, the CRM's code. While the
    /// target is down, its requests (probes) are `debug`: the down line and reminders say it.
    fn log_failed_request(
        &self,
        f: &DeliveryFailure,
        records: usize,
        r: &PushReport,
        released: u64,
        down: bool,
    ) {
        let failed = r.retrying + r.dead;
        if down {
            tracing::debug!(target = %self.target.name, records, class = f.class.as_str(), error_code = %f.code, "request failed while the target is down");
        } else if failed + released > 0 {
            tracing::warn!(
                target = %self.target.name,
                records,
                delivered = r.delivered,
                retrying = r.retrying,
                dead = r.dead,
                class = f.class.as_str(),
                error_code = %f.code,
                "request failed"
            );
        }
    }

    /// Act on the circuit's transition: ledger, metrics, health sink, one log line.
    async fn transition(&self, t: Transition) -> Result<(), PipelineError> {
        let name = &self.target.name;
        match t {
            Transition::None => {}
            Transition::Opened { reason } => {
                let since = self.clock.now();
                let next = self.next_wake().map(|n| n.to_rfc3339());
                tracing::warn!(target = %name, reason = %reason, next_probe = next.as_deref().unwrap_or("-"), "target down: paused as a whole and probed with backoff; leads keep their attempts");
                metrics::gauge!(m::TARGET_UP, "target" => name.clone()).set(0.0);
                metrics::counter!(m::CIRCUIT_OPENED, "target" => name.clone(), "reason" => reason_label(&reason)).increment(1);
                if let Some(h) = &self.health {
                    h.target_down(name, Some(&reason));
                }
                let down = TargetDown { since, reason };
                self.ledger.set_target_down(name, Some(&down)).await?;
            }
            Transition::Confirmed => {
                // Clear what an earlier engine of this target left: the ledger's "down" (with
                // its outage credited to the leads, as a close would) and the health report.
                metrics::gauge!(m::TARGET_UP, "target" => name.clone()).set(1.0);
                if let Some(h) = &self.health {
                    h.target_down(name, None);
                }
                if let Some(outage) = self.ledger.target_up(name, self.clock.now()).await? {
                    tracing::info!(target = %name, down_for = %humantime::format_duration(Duration::from_secs(outage.as_secs())), "target back up");
                }
            }
            Transition::Closed { outage } => {
                tracing::info!(target = %name, down_for = %humantime::format_duration(Duration::from_secs(outage.as_secs())), "target back up");
                metrics::gauge!(m::TARGET_UP, "target" => name.clone()).set(1.0);
                if let Some(h) = &self.health {
                    h.target_down(name, None);
                }
                // The outage does not count towards any lead's max_age: credited from the
                // ledger's down row, by the one instance that clears it.
                self.ledger.target_up(name, self.clock.now()).await?;
            }
        }
        Ok(())
    }

    /// While the target stays down, a reminder at most every five minutes.
    fn remind(&self, now: DateTime<Utc>) {
        let due = self.state().and_then(|mut s| s.circuit.reminder_due(now));
        if let Some((since, reason, probes)) = due {
            tracing::warn!(target = %self.target.name, down_since = %since.to_rfc3339(), reason = %reason, probes, "target still down");
        }
    }
}

/// Push one batch, retrying at once (once) the records whose token had expired.
async fn push_batch(target: &Target, (records, prepared): Outbound) -> Vec<DeliveryOutcome> {
    let mut outcomes = match prepared {
        Some(prepared) => target.connector.push_prepared(&records, prepared).await,
        None => target.connector.push(&records).await,
    };
    if outcomes.len() != records.len() {
        // A connector bug must not lose or mis-attribute leads: treat the batch as failed.
        tracing::error!(target = %target.name, sent = records.len(), answered = outcomes.len(), "connector returned the wrong number of outcomes");
        return failed_all(
            records.len(),
            DeliveryFailure::transient(
                "connector_outcome_mismatch",
                "connector returned the wrong number of outcomes",
            ),
        );
    }
    let expired: Vec<usize> = outcomes
        .iter()
        .enumerate()
        .filter(|(_, o)| matches!(o, DeliveryOutcome::Failed(f) if f.class == FailureClass::AuthExpired))
        .map(|(i, _)| i)
        .collect();
    if !expired.is_empty() {
        tracing::info!(target = %target.name, records = expired.len(), "credentials expired; retrying once at once");
        let again: Vec<OutboundRecord> = expired.iter().map(|i| records[*i].clone()).collect();
        let second = target.connector.push(&again).await;
        for (slot, outcome) in expired.iter().zip(second) {
            outcomes[*slot] = match outcome {
                DeliveryOutcome::Failed(mut f) if f.class == FailureClass::AuthExpired => {
                    // Refreshed and still refused: back off like any transient failure.
                    f.class = FailureClass::Transient;
                    DeliveryOutcome::Failed(f)
                }
                other => other,
            };
        }
    }
    outcomes
}

/// Split a claim of several batches' worth into batches of `size`.
fn split_batches(mut claimed: Vec<ClaimedDelivery>, size: usize) -> Vec<Vec<ClaimedDelivery>> {
    let size = size.max(1);
    let mut batches = Vec::with_capacity(claimed.len().div_ceil(size));
    while claimed.len() > size {
        let rest = claimed.split_off(size);
        batches.push(std::mem::replace(&mut claimed, rest));
    }
    if !claimed.is_empty() {
        batches.push(claimed);
    }
    batches
}

/// The claim ahead's result, or never when none is running.
async fn claim_opt(claim: &mut Option<ClaimAhead>) -> Result<Vec<ClaimedDelivery>, PipelineError> {
    match claim {
        Some(claim) => joined_claim(claim.await),
        None => std::future::pending().await,
    }
}

fn joined_claim(
    joined: Result<Result<Vec<ClaimedDelivery>, PipelineError>, tokio::task::JoinError>,
) -> Result<Vec<ClaimedDelivery>, PipelineError> {
    // A panic goes on here, as it did when the claim ran in the loop; a cancelled task (the
    // runtime shutting down) claimed nothing that a lease will not give back.
    joined.unwrap_or_else(|e| match e.try_into_panic() {
        Ok(panic) => std::panic::resume_unwind(panic),
        Err(_) => Ok(Vec::new()),
    })
}

/// Sleep until `at`, or forever when there is nothing to wait for.
async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

fn failed_all(n: usize, f: DeliveryFailure) -> Vec<DeliveryOutcome> {
    vec![DeliveryOutcome::Failed(f); n]
}

/// Renew the batch's leases every third of the lease while its request runs; never ends
/// (the caller selects it against the request).
async fn renew_leases(
    ledger: &dyn Ledger,
    ids: &[i64],
    owner: &str,
    lease: Duration,
    clock: &dyn Clock,
) -> std::convert::Infallible {
    let every = (lease / 3).max(Duration::from_millis(10));
    let mut warned = false;
    loop {
        tokio::time::sleep(every).await;
        let until = chrono_after(clock.now(), lease);
        if let Err(e) = ledger.renew_leases(ids, owner, until).await {
            if !warned {
                tracing::warn!(error = %e, "renewing the leases of a request in flight failed");
                warned = true;
            }
        }
    }
}

/// What a request's outcomes say about load, for the concurrency limit.
fn congestion(outcomes: &[DeliveryOutcome]) -> Congestion {
    let failures = || {
        outcomes.iter().filter_map(|o| match o {
            DeliveryOutcome::Failed(f) => Some(f),
            DeliveryOutcome::Delivered { .. } => None,
        })
    };
    if failures().any(|f| f.concurrency_limit) {
        Congestion::TooManyInFlight
    } else if failures().any(|f| f.class == FailureClass::Throttled || f.code == "timeout") {
        Congestion::Overloaded
    } else {
        Congestion::None
    }
}

/// A bounded label for the circuit metric: the code, without the run count.
fn reason_label(reason: &str) -> String {
    match reason.split_once('(') {
        Some((_, code)) => code.trim_end_matches(')').to_string(),
        None => reason.to_string(),
    }
}
