//! The daemon (`leadsync run`): pulls each source and pushes each target on its cron
//! schedule (tokio-cron-scheduler, UTC), never lets a job overlap itself, starts a push right
//! after a pull staged new leads, and on SIGTERM/SIGINT stops scheduling, lets in-flight
//! pushes finish and record their outcomes, then exits 0.
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

use crate::app::{build_sources, instance_id, Loaded, EXIT_OK};
use crate::ledger::{sqlite::SqliteLedger, Ledger};
use crate::pipeline::{self, Target};
use crate::sources::Source;

/// How long in-flight work may take to finish after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// One target's push job: the mutex keeps the job from overlapping itself, `dirty` records
/// that new work arrived while a push was running so the push loops once more.
struct PushJob {
    target: Arc<Target>,
    running: Mutex<()>,
    dirty: AtomicBool,
}

struct Shared {
    ledger: Arc<dyn Ledger>,
    owner: String,
    targets: Vec<Arc<Target>>,
    pushes: Vec<Arc<PushJob>>,
    stop: CancellationToken,
}

impl Shared {
    /// Push `job` until nothing is due now. Skips if the job is already running (it will
    /// see the dirty flag).
    async fn push(&self, job: &PushJob) {
        job.dirty.store(true, Ordering::SeqCst);
        let Ok(_guard) = job.running.try_lock() else {
            return;
        };
        while job.dirty.swap(false, Ordering::SeqCst) && !self.stop.is_cancelled() {
            loop {
                match pipeline::push_round(
                    self.ledger.as_ref(),
                    &job.target,
                    &self.owner,
                    Utc::now(),
                )
                .await
                {
                    Ok(r) if r.attempted > 0 && !self.stop.is_cancelled() => continue,
                    Ok(_) => break,
                    Err(e) => {
                        tracing::error!(target = %job.target.name, error = %e, "push failed");
                        break;
                    }
                }
            }
        }
    }

    async fn pull(&self, source: &Mutex<Box<dyn Source>>) {
        let Ok(mut source) = source.try_lock() else {
            return;
        };
        match pipeline::pull_source(self.ledger.as_ref(), source.as_mut(), &self.targets).await {
            Ok(r) if r.deliveries > 0 => {
                // Push at once rather than wait for each target's next tick.
                futures::future::join_all(self.pushes.iter().map(|job| self.push(job))).await;
            }
            Ok(_) => {}
            Err(e) => tracing::error!(source = %source.name(), error = %e, "pull failed"),
        }
    }
}

pub async fn run(loaded: Loaded) -> anyhow::Result<u8> {
    let settings = &loaded.settings;
    let ledger: Arc<dyn Ledger> = Arc::new(
        SqliteLedger::open(&settings.ledger.path)
            .await
            .with_context(|| format!("opening the ledger {}", settings.ledger.path.display()))?,
    );
    let stop = CancellationToken::new();
    let shared = Arc::new(Shared {
        ledger,
        owner: instance_id(),
        targets: loaded.targets.clone(),
        pushes: loaded
            .targets
            .iter()
            .map(|t| {
                Arc::new(PushJob {
                    target: Arc::clone(t),
                    running: Mutex::new(()),
                    dirty: AtomicBool::new(false),
                })
            })
            .collect(),
        stop: stop.clone(),
    });

    let mut scheduler = JobScheduler::new()
        .await
        .context("starting the scheduler")?;
    let in_flight = tokio_util::task::TaskTracker::new();
    let sources = build_sources(settings);
    for (src, source) in settings.sources.iter().zip(sources) {
        let source = Arc::new(Mutex::new(source));
        let shared = Arc::clone(&shared);
        let tracker = in_flight.clone();
        let job = Job::new_async(src.schedule.as_str(), move |_, _| {
            let shared = Arc::clone(&shared);
            let source = Arc::clone(&source);
            let tracker = tracker.clone();
            Box::pin(async move {
                if shared.stop.is_cancelled() {
                    return;
                }
                let _ = tracker
                    .spawn(async move { shared.pull(&source).await })
                    .await;
            })
        })
        .with_context(|| format!("scheduling source {}", src.name))?;
        scheduler.add(job).await.context("adding a job")?;
    }
    for (t, job) in settings
        .targets
        .iter()
        .filter(|t| t.enabled)
        .zip(shared.pushes.iter())
    {
        let shared2 = Arc::clone(&shared);
        let job = Arc::clone(job);
        let tracker = in_flight.clone();
        let cron = Job::new_async(t.schedule.as_str(), move |_, _| {
            let shared = Arc::clone(&shared2);
            let job = Arc::clone(&job);
            let tracker = tracker.clone();
            Box::pin(async move {
                if shared.stop.is_cancelled() {
                    return;
                }
                let _ = tracker.spawn(async move { shared.push(&job).await }).await;
            })
        })
        .with_context(|| format!("scheduling target {}", t.name))?;
        scheduler.add(cron).await.context("adding a job")?;
    }
    scheduler.start().await.context("starting the scheduler")?;
    tracing::info!(
        sources = settings.sources.len(),
        targets = loaded.targets.len(),
        "leadsync running"
    );

    wait_for_shutdown().await;
    tracing::info!("stopping: no new work; waiting for in-flight pushes");
    stop.cancel();
    let _ = scheduler.shutdown().await;
    in_flight.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, in_flight.wait())
        .await
        .is_err()
    {
        tracing::warn!("in-flight work did not finish within the grace period; leases will expire and it will be retried");
    }
    tracing::info!("stopped");
    Ok(EXIT_OK)
}

async fn wait_for_shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
