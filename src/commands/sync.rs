//! `sync --once`: one full cycle — pull every source (under its lease, as the daemon does),
//! then push every target until nothing is due or `--wait` runs out — and an exit code that
//! says whether everything arrived.

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
    let owner = wiring::instance_id();
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
    println!(
        "staged {} new lead(s), {} already known, {} quarantined",
        staged.staged, staged.already_known, staged.quarantined
    );
    let wait_until = Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default();
    let pushes = loaded.targets.iter().map(|t| {
        let ledger = Arc::clone(&ledger);
        let owner = owner.clone();
        async move {
            let r = pipeline::drain_target(&ledger, t, &owner, wait_until).await;
            (t.name.clone(), r)
        }
    });
    let mut dead = 0;
    for (name, result) in futures::future::join_all(pushes).await {
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
