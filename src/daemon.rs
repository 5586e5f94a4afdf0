//! The daemon (`leadsync run`): pulls each source and pushes each target on its cron
//! schedule (tokio-cron-scheduler, UTC), never lets a job overlap itself, and starts a push
//! right after a pull staged new leads so a lead never waits for the target's next tick.
//!
//! Signals: SIGTERM/SIGINT stop scheduling, let in-flight pushes finish and record their
//! outcomes within a grace period, then exit 0. SIGHUP re-reads and validates the
//! configuration and applies it if it is valid; otherwise the old one keeps running and the
//! log says why.
//!
//! systemd (`Type=notify`): `READY=1` once the configuration and ledger are open;
//! `WATCHDOG=1` at half of `WATCHDOG_USEC`, sent only while the scheduler's own one-second
//! tick job keeps running (a stuck loop starves the watchdog and systemd restarts us);
//! `STATUS=` with a one-line summary; `STOPPING=1` on the way out.
//!
//! Missed ticks are not replayed (tokio-cron-scheduler never does); the ledger and the source
//! cursors make that harmless: the next run picks everything up.

use anyhow::Context;
use chrono::Utc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, Health};
use crate::inbox::{inbox_settings, Inbox, InboxRoute};
use crate::ledger::{InstanceInfo, Ledger, OpenMode};
use crate::pipeline::{self, HealthSink, PullOutcome, SourceLease, Target, TargetEngine};
use crate::sources::Source;
use crate::wiring::{self, build_sources, Loaded};

/// How long in-flight work may take to finish after SIGTERM or a reload.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// How often the housekeeping job runs (status line, SLA check, retention, re-checks).
const HOUSEKEEPING: &str = "*/10 * * * * *";
/// Retention purges run at most this often.
const PURGE_EVERY: Duration = Duration::from_secs(3600);
/// How often the instance's heartbeat is written to the ledger (for `status`, and failover:
/// three missed beats and the others free its leases).
const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);

/// One target's push job: its engine (circuit and concurrency live there across pushes),
/// a mutex that keeps the job from overlapping itself, `dirty` for new work that arrived
/// while a push was running (the push loops once more), and one pending wake-up for the end
/// of a pause or the next probe of a down target, so those need no cron tick.
struct PushJob {
    engine: Arc<TargetEngine>,
    running: Mutex<()>,
    dirty: AtomicBool,
    wake_pending: AtomicBool,
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl PushJob {
    /// Push until nothing is due now. Skips if the job is already running (it will see the
    /// dirty flag).
    async fn push(self: Arc<Self>) {
        self.dirty.store(true, Ordering::SeqCst);
        let Ok(_guard) = self.running.try_lock() else {
            return;
        };
        while self.dirty.swap(false, Ordering::SeqCst) && !self.stop.is_cancelled() {
            if let Err(e) = self.engine.push_due(&self.stop, true).await {
                let target = &self.engine.target().name;
                tracing::error!(target = %target, error = %e, "push failed");
            }
        }
        self.wake_later();
    }

    /// Come back when the pause ends or the next probe is due, once.
    fn wake_later(self: &Arc<Self>) {
        let Some(at) = self.engine.next_wake() else {
            return;
        };
        if self.wake_pending.swap(true, Ordering::SeqCst) || self.stop.is_cancelled() {
            return;
        }
        let job = Arc::clone(self);
        let wait = (at - Utc::now()).to_std().unwrap_or_default();
        self.tracker.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = job.stop.cancelled() => return,
            }
            job.wake_pending.store(false, Ordering::SeqCst);
            let push: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> =
                Box::pin(Arc::clone(&job).push());
            push.await;
        });
    }
}

/// What the jobs of one configuration generation share.
struct Shared {
    ledger: Arc<dyn Ledger>,
    owner: String,
    /// This process as its heartbeat describes it.
    instance: InstanceInfo,
    /// How long a source lease lasts without renewal (`ledger.lease`); renewed at a third.
    source_ttl: Duration,
    /// The sources this generation pulls, for releasing their leases on the way out.
    source_names: Vec<String>,
    /// When the heartbeat was last written, whether that write succeeded, and whether a
    /// beat is in flight.
    last_beat: std::sync::Mutex<Option<std::time::Instant>>,
    beat_written: AtomicBool,
    beating: AtomicBool,
    targets: Vec<Arc<Target>>,
    pushes: Vec<Arc<PushJob>>,
    stop: CancellationToken,
    health: Arc<Health>,
}

impl Shared {
    async fn pull(&self, source: &Mutex<Box<dyn Source>>) {
        let Ok(mut source) = source.try_lock() else {
            return;
        };
        let name = source.name().to_string();
        // The lease is kept from one tick to the next; `Generation::stop` gives it back.
        let lease = SourceLease {
            owner: &self.owner,
            ttl: self.source_ttl,
            release_after: false,
        };
        let pulled =
            pipeline::pull_leased(self.ledger.as_ref(), source.as_mut(), &self.targets, lease)
                .await;
        match pulled {
            Ok(PullOutcome::Pulled(r)) if r.deliveries > 0 => {
                // Push at once rather than wait for each target's next tick.
                futures::future::join_all(self.pushes.iter().map(|job| Arc::clone(job).push()))
                    .await;
            }
            Ok(_) => {}
            Err(e) => tracing::error!(source = %name, error = %e, "pull failed"),
        }
    }

    /// Write the heartbeat to the ledger every [`HEARTBEAT_EVERY`], and at every call (each
    /// second) free the leases of instances whose heartbeat stopped (3 missed beats), so
    /// their work is taken over within a second of that, not of this instance's next beat.
    /// Never two at once (a slow database must not pile them up).
    async fn beat(&self) {
        if self.beating.swap(true, Ordering::SeqCst) {
            return;
        }
        let now = Utc::now();
        let write_due = self
            .last_beat
            .lock()
            .map(|l| l.is_none_or(|t| t.elapsed() >= HEARTBEAT_EVERY))
            .unwrap_or(false);
        if write_due {
            if let Ok(mut l) = self.last_beat.lock() {
                *l = Some(std::time::Instant::now());
            }
            let written = self.ledger.heartbeat(&self.instance, now).await;
            if let Err(e) = &written {
                tracing::warn!(error = %e, "writing the instance heartbeat failed");
            }
            self.beat_written.store(written.is_ok(), Ordering::SeqCst);
        }
        // Only an instance whose own heartbeat is current judges the others.
        if self.beat_written.load(Ordering::SeqCst) {
            let stale_after = 3 * HEARTBEAT_EVERY;
            if let Err(e) = self.ledger.release_stale_leases(now, stale_after).await {
                tracing::warn!(error = %e, "releasing the leases of stale instances failed");
            }
        }
        self.beating.store(false, Ordering::SeqCst);
    }

    /// Verify each target (credentials, reachability) for `/readyz`.
    /// A target that is down is its push engine's to probe (once per backoff step): it is
    /// not re-checked here. A failing check is logged when it starts failing or its reason
    /// changes, not at every re-check.
    async fn check_targets(&self, only_failing: bool) {
        let failing: std::collections::BTreeMap<String, String> =
            self.health.failing_checks().into_iter().collect();
        for job in &self.pushes {
            let t = job.engine.target();
            if only_failing && (!failing.contains_key(&t.name) || job.engine.down().is_some()) {
                continue;
            }
            let result = match t.connector.check(true).await {
                Ok(_) => None,
                Err(e) => {
                    let reason = e.to_string();
                    if failing.get(&t.name) != Some(&reason) {
                        tracing::warn!(target = %t.name, error = %reason, "target check failed");
                    }
                    Some(reason)
                }
            };
            self.health.set_check(&t.name, result);
        }
    }
}

/// Where the inbox's staged leads go under this generation: its targets, pushed at once.
fn inbox_route(shared: &Arc<Shared>, tracker: &TaskTracker) -> InboxRoute {
    let pushes = shared.pushes.clone();
    let tracker = tracker.clone();
    let stop = shared.stop.clone();
    InboxRoute {
        targets: shared.targets.clone(),
        on_staged: Box::new(move || {
            if stop.is_cancelled() {
                return;
            }
            for job in &pushes {
                tracker.spawn(Arc::clone(job).push());
            }
        }),
    }
}

/// The scheduler and jobs of one configuration; replaced on SIGHUP.
struct Generation {
    scheduler: JobScheduler,
    shared: Arc<Shared>,
    in_flight: TaskTracker,
}

/// Add a cron job that runs `work` unless the generation is stopping.
async fn add_job<F, Fut>(
    scheduler: &JobScheduler,
    schedule: &str,
    what: &str,
    shared: &Arc<Shared>,
    tracker: &TaskTracker,
    work: F,
) -> anyhow::Result<()>
where
    F: Fn(Arc<Shared>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let shared = Arc::clone(shared);
    let tracker = tracker.clone();
    let work = Arc::new(work);
    let job = Job::new_async(schedule, move |_, _| {
        let shared = Arc::clone(&shared);
        let tracker = tracker.clone();
        let work = Arc::clone(&work);
        Box::pin(async move {
            if shared.stop.is_cancelled() {
                return;
            }
            let _ = tracker.spawn(work(shared)).await;
        })
    })
    .with_context(|| format!("scheduling {what} on {schedule:?}"))?;
    scheduler
        .add(job)
        .await
        .with_context(|| format!("adding {what}"))?;
    Ok(())
}

struct Housekeeping {
    followup_sla: Duration,
    retention: Duration,
    last_purge: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Generation {
    async fn start(
        loaded: &Loaded,
        ledger: Arc<dyn Ledger>,
        health: Arc<Health>,
        inbox: Option<&Inbox>,
    ) -> anyhow::Result<Generation> {
        let settings = &loaded.settings;
        let identity = crate::identity::current();
        let owner = identity.id.clone();
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        let pushes = loaded
            .targets
            .iter()
            .map(|t| {
                let engine = TargetEngine::new(Arc::clone(t), Arc::clone(&ledger), &owner)
                    .with_health(Arc::clone(&health) as Arc<dyn HealthSink>);
                Arc::new(PushJob {
                    engine: Arc::new(engine),
                    running: Mutex::new(()),
                    dirty: AtomicBool::new(false),
                    wake_pending: AtomicBool::new(false),
                    tracker: tracker.clone(),
                    stop: stop.clone(),
                })
            })
            .collect();
        let shared = Arc::new(Shared {
            ledger,
            owner,
            instance: crate::ledger::InstanceInfo::from(identity),
            source_ttl: settings.ledger.lease.max(Duration::from_secs(1)),
            source_names: settings.sources.iter().map(|s| s.name.clone()).collect(),
            last_beat: std::sync::Mutex::new(None),
            beat_written: AtomicBool::new(false),
            beating: AtomicBool::new(false),
            targets: loaded.targets.clone(),
            pushes,
            stop,
            health: Arc::clone(&health),
        });
        if let Ok(mut c) = health.checks.lock() {
            c.clear();
            for t in &loaded.targets {
                c.insert(t.name.clone(), Some("not checked yet".into()));
            }
        }

        let scheduler = JobScheduler::new()
            .await
            .context("starting the scheduler")?;
        let sources = build_sources(settings).map_err(|e| anyhow::anyhow!("{e}"))?;
        let pulled = settings.sources.iter().filter(|s| s.kind.is_pulled());
        for (src, source) in pulled.zip(sources) {
            let source = Arc::new(Mutex::new(source));
            add_job(
                &scheduler,
                src.schedule.as_str(),
                &format!("source {}", src.name),
                &shared,
                &tracker,
                move |s| {
                    let source = Arc::clone(&source);
                    async move { s.pull(&source).await }
                },
            )
            .await?;
        }
        for (t, job) in settings
            .targets
            .iter()
            .filter(|t| t.enabled)
            .zip(shared.pushes.iter())
        {
            if let Some(canary) = &t.canary {
                let target = Arc::clone(job.engine.target());
                add_job(
                    &scheduler,
                    canary.as_str(),
                    &format!("canary of target {}", t.name),
                    &shared,
                    &tracker,
                    move |s| {
                        let target = Arc::clone(&target);
                        async move { run_canary(&s.health, &target).await }
                    },
                )
                .await?;
            }
            let job = Arc::clone(job);
            add_job(
                &scheduler,
                t.schedule.as_str(),
                &format!("target {}", t.name),
                &shared,
                &tracker,
                move |_| Arc::clone(&job).push(),
            )
            .await?;
        }
        // The heartbeat the watchdog and /healthz watch: it runs on the scheduler itself.
        add_job(
            &scheduler,
            "* * * * * *",
            "heartbeat",
            &shared,
            &tracker,
            |s| async move {
                s.health.tick();
                s.beat().await;
            },
        )
        .await?;
        let hk = Arc::new(Housekeeping {
            followup_sla: settings.telemetry.followup_sla,
            retention: settings.ledger.retention,
            last_purge: std::sync::Mutex::new(None),
        });
        add_job(
            &scheduler,
            HOUSEKEEPING,
            "housekeeping",
            &shared,
            &tracker,
            move |s| {
                let hk = Arc::clone(&hk);
                async move { housekeeping(&s, &hk).await }
            },
        )
        .await?;
        health.tick();
        scheduler.start().await.context("starting the scheduler")?;
        if let Some(inbox) = inbox {
            inbox.set_route(inbox_route(&shared, &tracker));
        }
        // Checks talk to the CRMs: run them beside the jobs, not before them.
        let s = Arc::clone(&shared);
        tracker.spawn(async move { s.check_targets(false).await });
        // Push what is already due at once (a restart, or a reload that fixed a target's
        // credentials) rather than at each target's next tick.
        for job in &shared.pushes {
            tracker.spawn(Arc::clone(job).push());
        }
        tracing::info!(
            instance = %shared.owner,
            version = crate::identity::VERSION,
            sources = settings.sources.len(),
            targets = loaded.targets.len(),
            "leadsync running"
        );
        Ok(Generation {
            scheduler,
            shared,
            in_flight: tracker,
        })
    }

    /// Stop scheduling, let in-flight work finish (bounded), and return.
    async fn stop(mut self) {
        self.shared.stop.cancel();
        if let Err(e) = self.scheduler.shutdown().await {
            tracing::warn!(error = %e, "scheduler shutdown");
        }
        self.in_flight.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.in_flight.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "in-flight work did not finish within the grace period; its leases will \
                 expire and it will be retried"
            );
        }
        // Hand the sources to the other instances at once rather than when the leases end.
        for source in &self.shared.source_names {
            if let Err(e) = self
                .shared
                .ledger
                .release_source(source, &self.shared.owner)
                .await
            {
                tracing::warn!(source = %source, error = %e, "releasing the source lease failed");
            }
        }
    }
}

/// Send `target`'s canary; its success time and latency go to `/metrics`, a failure makes
/// `/readyz` red until the next canary arrives.
async fn run_canary(health: &Health, target: &Target) {
    let label = [("target", target.name.clone())];
    match pipeline::canary::send_canary(target).await {
        Ok(took) => {
            let now = Utc::now().timestamp_millis() as f64 / 1000.0;
            metrics::gauge!(crate::metrics::CANARY_LAST_SUCCESS, &label).set(now);
            metrics::gauge!(crate::metrics::CANARY_LATENCY, &label).set(took.as_secs_f64());
            tracing::debug!(target = %target.name, took_ms = took.as_millis() as u64, "canary arrived");
            health.set_canary(&target.name, None);
        }
        Err(e) => {
            tracing::warn!(target = %target.name, error = %e, "canary failed");
            health.set_canary(&target.name, Some(e.to_string()));
        }
    }
}

/// Every ten seconds: the systemd status line, the follow-up SLA warning, failed target
/// checks retried, and (hourly) the retention purge.
async fn housekeeping(s: &Shared, hk: &Housekeeping) {
    let now = Utc::now();
    match s.ledger.status(now).await {
        Ok(status) => {
            let pending: u64 = status.targets.iter().map(|t| t.pending).sum();
            let delivered: u64 = status.targets.iter().map(|t| t.delivered).sum();
            let dead: u64 = status.targets.iter().map(|t| t.dead).sum();
            let paused = status
                .targets
                .iter()
                .filter(|t| t.paused_until.is_some_and(|p| p > now))
                .count();
            let line = format!(
                "{} target(s): {pending} pending, {delivered} delivered, {dead} dead, {paused} throttled",
                status.targets.len()
            );
            notify(&[sd_notify::NotifyState::Status(&line)]);
        }
        Err(e) => tracing::error!(error = %e, "reading status failed"),
    }
    let sla = chrono::Duration::from_std(hk.followup_sla).unwrap_or(chrono::Duration::hours(1));
    match s.ledger.overdue(now - sla).await {
        Ok(overdue) => {
            for (target, n) in overdue {
                tracing::warn!(
                    target = %target,
                    leads = n,
                    followup_sla = %humantime::format_duration(hk.followup_sla),
                    "leads waiting longer than the follow-up SLA; see `leadsync status`"
                );
            }
        }
        Err(e) => tracing::error!(error = %e, "reading overdue leads failed"),
    }
    s.check_targets(true).await;
    let due = hk
        .last_purge
        .lock()
        .map(|l| l.is_none_or(|t| t.elapsed() >= PURGE_EVERY))
        .unwrap_or(false);
    if due {
        if let Ok(mut l) = hk.last_purge.lock() {
            *l = Some(std::time::Instant::now());
        }
        let before =
            now - chrono::Duration::from_std(hk.retention).unwrap_or(chrono::Duration::days(30));
        match s.ledger.purge_personal_data(before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                leads = n,
                "personal data past retention erased from the ledger"
            ),
            Err(e) => tracing::error!(error = %e, "retention purge failed"),
        }
    }
}

fn notify(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "systemd notification failed");
    }
}

/// The watchdog interval systemd asked for, if any: `WATCHDOG_USEC`, for this process
/// (`WATCHDOG_PID` absent or ours).
fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Whether the reloaded configuration's inbox can be taken in place (logs why not; the old
/// configuration stays).
fn inbox_reloads(inbox: Option<&Inbox>, new: &Loaded) -> bool {
    let wanted = inbox_settings(&new.settings.sources);
    let result = match (inbox, wanted) {
        (None, None) => Ok(()),
        (Some(inbox), Some((name, s))) => inbox.reload(name, s),
        (None, Some((name, _))) => Err(format!(
            "source {name}: a new https_inbox needs a restart to listen"
        )),
        (Some(_), None) => {
            Err("the https_inbox was removed; restart to stop listening".to_string())
        }
    };
    match result {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %e, "configuration reload refused; still running on the old configuration");
            false
        }
    }
}

pub async fn run(mut loaded: Loaded) -> anyhow::Result<()> {
    // Fix the identity (and its start time) before anything slow.
    crate::identity::current();
    let ledger_location = loaded.settings.ledger.location.clone();
    let ledger = wiring::open_ledger(&loaded.settings, OpenMode::Exclusive).await?;
    let health = Arc::new(Health::default());
    let process_stop = CancellationToken::new();

    if let Some(admin) = &loaded.settings.admin {
        let handle = crate::metrics::install();
        admin::serve(
            admin.listen,
            Arc::clone(&ledger),
            Arc::clone(&health),
            handle,
            loaded.settings.telemetry.followup_sla,
            process_stop.clone(),
        )
        .await
        .with_context(|| format!("binding the admin endpoint on {}", admin.listen))?;
    }

    // The inbox outlives generations: a reload must not close the port the marketplace
    // POSTs to.
    let inbox = match inbox_settings(&loaded.settings.sources) {
        Some((name, s)) => {
            Some(Inbox::start(name, s, &loaded.settings.config_dir, Arc::clone(&ledger)).await?)
        }
        None => None,
    };
    let mut generation = Generation::start(
        &loaded,
        Arc::clone(&ledger),
        Arc::clone(&health),
        inbox.as_ref(),
    )
    .await?;
    // The alerter outlives generations too: its book of active conditions must see a fix
    // made by a reload, to say it is resolved.
    let (alert_config, alert_rx) =
        tokio::sync::watch::channel(crate::alerts::AlertConfig::of(&loaded.settings));
    let alerter = tokio::spawn(crate::alerts::run(
        alert_rx,
        Arc::clone(&ledger),
        Arc::clone(&health),
        process_stop.clone(),
    ));
    notify(&[sd_notify::NotifyState::Ready]);

    if let Some(interval) = watchdog_interval() {
        let health = Arc::clone(&health);
        let stop = process_stop.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(interval / 2);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = every.tick() => {}
                }
                // Only a loop that ticked recently earns a WATCHDOG=1.
                if health.is_live(interval) {
                    notify(&[sd_notify::NotifyState::Watchdog]);
                } else {
                    tracing::error!("scheduler loop stalled; withholding the watchdog ping");
                }
            }
        });
    }

    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                notify(&[sd_notify::NotifyState::Reloading, sd_notify::NotifyState::monotonic_usec_now().unwrap_or(sd_notify::NotifyState::Status("reloading"))]);
                let config_path = loaded.settings.config_path.clone();
                match wiring::load(&config_path) {
                    Ok(new) if new.settings.ledger.location != ledger_location => {
                        tracing::error!(
                            "configuration reload refused: ledger.path/ledger.url changed (restart to move the ledger); still running on the old configuration"
                        );
                    }
                    Ok(new) if !inbox_reloads(inbox.as_ref(), &new) => {}
                    Ok(new) => {
                        tracing::info!("configuration reloaded; restarting jobs");
                        generation.stop().await;
                        loaded = new;
                        let _ = alert_config.send(crate::alerts::AlertConfig::of(&loaded.settings));
                        generation = match Generation::start(&loaded, Arc::clone(&ledger), Arc::clone(&health), inbox.as_ref()).await {
                            Ok(g) => g,
                            Err(e) => {
                                notify(&[sd_notify::NotifyState::Stopping]);
                                return Err(e.context("starting the reloaded configuration"));
                            }
                        };
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "configuration reload refused; still running on the old configuration");
                    }
                }
                notify(&[sd_notify::NotifyState::Ready]);
            }
        }
    }
    tracing::info!("stopping: no new work; waiting for in-flight pushes");
    notify(&[sd_notify::NotifyState::Stopping]);
    if let Some(inbox) = inbox {
        // Answer what is being received before the jobs that push it stop.
        inbox.stop().await;
    }
    generation.stop().await;
    process_stop.cancel();
    // An alert being sent gets a moment to finish; a stop never waits on a slow SMTP server.
    if tokio::time::timeout(Duration::from_secs(5), alerter)
        .await
        .is_err()
    {
        tracing::warn!("an alert was still being sent at stop; not waited for");
    }
    tracing::info!("stopped");
    Ok(())
}
