//! `sync --once`: one full cycle — pull every source (under its lease, as the daemon does),
//! then push every target until nothing is due or `--wait` runs out — and an exit code that
//! says whether everything arrived. On a terminal a progress line (indicatif) shows what the
//! ledger holds as it goes: staged, delivered, retrying, dead, and the delivery rate; piped
//! or under systemd, it stays silent.

use anyhow::Context;
use chrono::Utc;
use std::sync::Arc;
use std::time::Duration;

use super::{EXIT_DEAD, EXIT_OK, EXIT_TEMPFAIL};
use crate::ledger::OpenMode;
use crate::pipeline::{self, PullOutcome, PushReport, SourceLease};
use crate::wiring::{self, Loaded, WiringError};

pub(super) async fn sync_once(loaded: &Loaded, wait: Duration) -> Result<u8, WiringError> {
    let ledger = wiring::open_ledger(&loaded.settings, OpenMode::Exclusive).await?;
    let mut sources = wiring::build_sources(&loaded.settings)?;
    let mut staged = crate::ledger::StageReport::default();
    let owner = crate::identity::current().id.clone();
    let lease = SourceLease {
        owner: &owner,
        ttl: loaded.settings.ledger.lease,
        release_after: true,
    };
    for source in sources.iter_mut() {
        // On a shared (PostgreSQL) ledger one instance pulls a source at a time.
        let name = source.name().to_string();
        let pulled =
            pipeline::pull_leased(ledger.as_ref(), source.as_mut(), &loaded.targets, lease)
                .await
                .with_context(|| format!("pulling source {name}"))?;
        let r = match pulled {
            PullOutcome::Pulled(r) => r,
            PullOutcome::HeldElsewhere => {
                println!("source {name}: skipped, another instance is pulling it");
                continue;
            }
            PullOutcome::LeaseLost => {
                println!("source {name}: lease lost to another instance; pull stopped");
                continue;
            }
        };
        staged.staged += r.staged;
        staged.already_known += r.already_known;
        staged.quarantined += r.quarantined;
    }
    for s in loaded
        .settings
        .sources
        .iter()
        .filter(|s| !s.kind.is_pulled())
    {
        println!(
            "source {}: an https_inbox receives only while `leadsync run` serves it",
            s.name
        );
    }
    println!(
        "staged {} new lead(s), {} already known, {} quarantined",
        staged.staged, staged.already_known, staged.quarantined
    );
    let wait_until = Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default();
    let progress = std::io::IsTerminal::is_terminal(&std::io::stderr())
        .then(|| Progress::start(Arc::clone(&ledger)));
    let pushes = loaded.targets.iter().map(|t| {
        let ledger = Arc::clone(&ledger);
        let owner = owner.clone();
        async move {
            let r = pipeline::drain_target(&ledger, t, &owner, wait_until).await;
            (t.name.clone(), r)
        }
    });
    let results = futures::future::join_all(pushes).await;
    if let Some(p) = progress {
        p.finish().await;
    }
    let mut dead = 0;
    for (name, result) in results {
        let r: PushReport = result.with_context(|| format!("pushing target {name}"))?;
        dead += r.dead;
        println!(
            "target {name}: {} delivered, {} retrying, {} dead",
            r.delivered, r.retrying, r.dead
        );
    }
    let status = ledger.status(Utc::now()).await.context("reading status")?;
    let pending: u64 = status.targets.iter().map(|t| t.pending).sum();
    if dead > 0 {
        println!("{dead} delivery(ies) ended dead: see `leadsync dead-letters list`");
        return Ok(EXIT_DEAD);
    }
    if pending > 0 {
        println!("{pending} delivery(ies) still pending (retrying later): see `leadsync status`");
        return Ok(EXIT_TEMPFAIL);
    }
    Ok(EXIT_OK)
}

/// The progress line of a `sync` on a terminal: the ledger's counts every half second.
struct Progress {
    bar: indicatif::ProgressBar,
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    fn start(ledger: Arc<dyn crate::ledger::Ledger>) -> Progress {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.enable_steady_tick(Duration::from_millis(120));
        let shown = bar.clone();
        let task = tokio::spawn(async move {
            let started = std::time::Instant::now();
            let mut first: Option<u64> = None;
            loop {
                if let Ok(s) = ledger.status(Utc::now()).await {
                    let sum = |f: fn(&crate::ledger::TargetStatus) -> u64| -> u64 {
                        s.targets.iter().map(f).sum()
                    };
                    let delivered = sum(|t| t.delivered);
                    let base = *first.get_or_insert(delivered);
                    let rate = (delivered - base.min(delivered)) as f64
                        / started.elapsed().as_secs_f64().max(0.001);
                    shown.set_message(format!(
                        "{} lead(s) staged · {delivered} delivered · {} retrying · {} dead · {rate:.0} leads/s",
                        s.leads,
                        sum(|t| t.retrying),
                        sum(|t| t.dead)
                    ));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        Progress { bar, task }
    }

    async fn finish(self) {
        self.task.abort();
        let _ = self.task.await;
        self.bar.finish_and_clear();
    }
}
