//! Command handlers: load the configuration, open the ledger, build sources and targets, and
//! run one command. This is the edge where errors become messages and exit codes:
//! 0 ok · 78 configuration error (EX_CONFIG) · 1 runtime failure · 2 a delivery ended dead
//! in `sync --once` · 75 deliveries still pending after `sync --once` (EX_TEMPFAIL).

use anyhow::Context;
use chrono::Utc;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{self, Settings, SourceKind};
use crate::ledger::{DeadLetterFilter, Ledger, OpenMode};
use crate::pipeline::{self, PushReport, Target};
use crate::registry;
use crate::sources::spool::{AfterStaging, SpoolSource};
use crate::sources::Source;
use crate::telemetry;

pub const EXIT_OK: u8 = 0;
pub const EXIT_RUNTIME: u8 = 1;
pub const EXIT_DEAD: u8 = 2;
pub const EXIT_TEMPFAIL: u8 = 75;
pub const EXIT_CONFIG: u8 = 78;

pub enum Command {
    Run,
    Check { connect: bool },
    SyncOnce { wait: Duration },
    Status { json: bool },
    Trace { lead: String, json: bool },
    DeadLetters(DeadLetterCommand),
    Replay { target: String, since: String },
    SendTest { target: String, wait: Duration },
    Forget { email: String },
}

pub enum DeadLetterCommand {
    List {
        target: Option<String>,
        json: bool,
    },
    Retry {
        target: Option<String>,
        lead: Option<String>,
    },
}

/// Errors at the edge, sorted by exit code.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    Config(String),
    #[error("{0:#}")]
    Runtime(#[from] anyhow::Error),
}

/// What a loaded configuration yields: settings plus built targets.
pub struct Loaded {
    pub settings: Settings,
    pub targets: Vec<Arc<Target>>,
}

/// Load and validate everything a command needs from the configuration, without I/O on
/// the ledger or the network.
pub fn load(config_path: &Path) -> Result<Loaded, AppError> {
    let settings = config::load(config_path, registry::KNOWN_KINDS)
        .map_err(|e| AppError::Config(e.to_string()))?;
    let mut targets = Vec::new();
    let mut errors = Vec::new();
    for t in settings.targets.iter().filter(|t| t.enabled) {
        match registry::build_target(t, settings.ledger.lease) {
            Ok(target) => targets.push(Arc::new(target)),
            Err(e) => errors.push(e.to_string()),
        }
    }
    if !errors.is_empty() {
        return Err(AppError::Config(errors.join("\n")));
    }
    // Sources are built for real when a command runs; building them here reports a bad
    // connection string or missing secret as a configuration error (exit 78).
    build_sources(&settings)?;
    Ok(Loaded { settings, targets })
}

pub fn build_sources(settings: &Settings) -> Result<Vec<Box<dyn Source>>, AppError> {
    settings
        .sources
        .iter()
        .map(|s| -> Result<Box<dyn Source>, AppError> {
            Ok(match &s.kind {
                SourceKind::Spool(spool) => Box::new(SpoolSource::new(
                    s.name.clone(),
                    spool.dir.clone(),
                    match spool.after {
                        config::AfterRead::Move => AfterStaging::Move,
                        config::AfterRead::Keep => AfterStaging::Keep,
                    },
                    spool.settle,
                )),
                SourceKind::AzureTable(a) => build_azure_table_source(settings, &s.name, a)?,
            })
        })
        .collect()
}

#[cfg(feature = "azure-table")]
fn build_azure_table_source(
    settings: &Settings,
    name: &str,
    a: &config::AzureTableSourceSettings,
) -> Result<Box<dyn Source>, AppError> {
    let err = |key: &str, message: String| {
        AppError::Config(format!(
            "{}: key `sources.{name}.{key}`: {message}",
            settings.config_path.display()
        ))
    };
    let secret = a
        .connection
        .resolve(&settings.config_dir)
        .map_err(|m| err("connection", m))?;
    let client = leadsync_azure_table::client_from_connection_string(
        secret.expose(),
        leadsync_azure_table::SharedKeyScheme::SharedKey,
        &leadsync_core::http::HttpSettings::default(),
        &settings.config_dir,
    )
    .map_err(|e| err("connection", e.message))?;
    Ok(Box::new(
        crate::sources::azure_table::AzureTableSource::new(
            name.to_string(),
            client,
            a.table.clone(),
            a.overlap,
            a.page_size,
        ),
    ))
}

#[cfg(not(feature = "azure-table"))]
fn build_azure_table_source(
    settings: &Settings,
    name: &str,
    _a: &config::AzureTableSourceSettings,
) -> Result<Box<dyn Source>, AppError> {
    Err(AppError::Config(format!(
        "{}: key `sources.{name}.kind`: this build has no Azure Table support \
         (build with the `azure-table` feature)",
        settings.config_path.display()
    )))
}

/// This process's lease owner name.
pub fn instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!("{host}:{}", std::process::id())
}

/// The process's heartbeat identity: its lease owner name, host and pid.
pub fn instance_info(started_at: chrono::DateTime<Utc>) -> crate::ledger::InstanceInfo {
    let id = instance_id();
    let host = id
        .rsplit_once(':')
        .map_or(id.as_str(), |(h, _)| h)
        .to_string();
    crate::ledger::InstanceInfo {
        id,
        host,
        pid: std::process::id(),
        started_at,
    }
}

/// Open the ledger the settings name (SQLite file or PostgreSQL) in `mode`.
pub async fn open_ledger_in(
    settings: &Settings,
    mode: OpenMode,
) -> anyhow::Result<Arc<dyn Ledger>> {
    crate::ledger::open(&settings.ledger, &settings.config_dir, mode)
        .await
        .with_context(|| format!("opening the ledger {}", settings.ledger.location.describe()))
}

async fn open_ledger(settings: &Settings) -> anyhow::Result<Arc<dyn Ledger>> {
    open_ledger_in(settings, OpenMode::Exclusive).await
}

/// Open the ledger beside a running daemon, creating it when there is none yet.
async fn open_ledger_shared_or_create(settings: &Settings) -> anyhow::Result<Arc<dyn Ledger>> {
    open_ledger_in(settings, OpenMode::SharedOrCreate).await
}

/// Open the ledger for a read-mostly operator command, alongside a running daemon.
async fn open_ledger_shared(settings: &Settings) -> anyhow::Result<Arc<dyn Ledger>> {
    open_ledger_in(settings, OpenMode::Shared).await
}

/// Run one command; returns the process exit code.
pub fn main(config_path: &Path, log_level: Option<&str>, command: Command) -> u8 {
    // Logging needs the config's telemetry section, but a config error must still be
    // reported: fall back to defaults when it cannot be read.
    let loaded = load(config_path);
    let (format, level) = match &loaded {
        Ok(l) => (
            l.settings.telemetry.log_format,
            log_level
                .unwrap_or(&l.settings.telemetry.log_level)
                .to_string(),
        ),
        Err(_) => (
            telemetry::LogFormat::Auto,
            log_level.unwrap_or("info").to_string(),
        ),
    };
    telemetry::init(format, &level);
    let loaded = match loaded {
        Ok(l) => l,
        Err(e) => return report(e),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return report(AppError::Runtime(e.into())),
    };
    match runtime.block_on(dispatch(loaded, command)) {
        Ok(code) => code,
        Err(e) => report(e),
    }
}

fn report(e: AppError) -> u8 {
    match e {
        AppError::Config(msg) => {
            eprintln!("configuration error:\n{msg}");
            EXIT_CONFIG
        }
        AppError::Runtime(err) => {
            tracing::error!(error = %format!("{err:#}"), "failed");
            eprintln!("error: {err:#}");
            EXIT_RUNTIME
        }
    }
}

async fn dispatch(loaded: Loaded, command: Command) -> Result<u8, AppError> {
    match command {
        Command::Check { connect } => check(&loaded, connect).await,
        Command::SyncOnce { wait } => sync_once(&loaded, wait).await,
        Command::Run => crate::daemon::run(loaded).await.map_err(AppError::Runtime),
        Command::Status { json } => status(&loaded, json).await,
        Command::Trace { lead, json } => trace(&loaded, &lead, json).await,
        Command::DeadLetters(DeadLetterCommand::List { target, json }) => {
            dead_letters_list(&loaded, target.as_deref(), json).await
        }
        Command::DeadLetters(DeadLetterCommand::Retry { target, lead }) => {
            let ledger = open_ledger_shared(&loaded.settings).await?;
            let n = ledger
                .retry_dead(
                    &DeadLetterFilter {
                        target,
                        lead_id: lead,
                    },
                    Utc::now(),
                )
                .await
                .context("retrying dead letters")?;
            println!("{n} dead deliveries put back in the queue");
            Ok(EXIT_OK)
        }
        Command::Replay { target, since } => replay(&loaded, &target, &since).await,
        Command::SendTest { target, wait } => send_test(&loaded, &target, wait).await,
        Command::Forget { email } => forget(&loaded, &email).await,
    }
}

fn target_named<'a>(loaded: &'a Loaded, name: &str) -> Result<&'a Arc<Target>, AppError> {
    loaded
        .targets
        .iter()
        .find(|t| t.name == name)
        .ok_or_else(|| {
            let known: Vec<&str> = loaded.targets.iter().map(|t| t.name.as_str()).collect();
            AppError::Config(format!(
                "no enabled target named {name:?}; enabled targets: {}",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ))
        })
}

/// `2026-11-01` (UTC midnight) or an RFC 3339 time.
fn parse_since(since: &str) -> Result<chrono::DateTime<Utc>, AppError> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(since.trim()) {
        return Ok(t.with_timezone(&Utc));
    }
    chrono::NaiveDate::parse_from_str(since.trim(), "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .ok_or_else(|| {
            AppError::Runtime(anyhow::anyhow!(
                "--since {since:?}: expected a date (2026-11-01) or an RFC 3339 time"
            ))
        })
}

async fn replay(loaded: &Loaded, target: &str, since: &str) -> Result<u8, AppError> {
    let t = target_named(loaded, target)?;
    let since = parse_since(since)?;
    let ledger = open_ledger_shared(&loaded.settings).await?;
    let n = ledger
        .replay(&t.name, since, Utc::now())
        .await
        .context("replaying deliveries")?;
    println!(
        "{n} delivered lead(s) of {} staged since {} queued again; the CRM writes are \
         idempotent, so existing records are updated, not duplicated",
        t.name,
        since.to_rfc3339()
    );
    Ok(EXIT_OK)
}

/// The lead `send-test` sends: flagged as a marketplace test lead, no real person.
fn send_test_lead() -> anyhow::Result<leadsync_core::Lead> {
    let stamp = Utc::now().format("%Y%m%dT%H%M%S%.3fZ").to_string();
    let record = serde_json::json!({
        "UserDetails": {
            "FirstName": "MSFT_TEST_leadsync",
            "LastName": format!("send-test {stamp}"),
            "Email": "msft_test_leadsync@example.invalid",
            "Company": "MSFT_TEST leadsync",
            "Country": "US",
        },
        "LeadSource": "AzureMarketplace",
        "ActionCode": "INS",
        "OfferTitle": "leadsync send-test",
        "Description": format!("MSFT_TEST lead sent by `leadsync send-test` at {stamp}"),
    });
    leadsync_core::read_lead(format!("send-test:{stamp}"), &record)
        .map_err(|e| anyhow::anyhow!("building the test lead: {e}"))
}

async fn send_test(loaded: &Loaded, target: &str, wait: Duration) -> Result<u8, AppError> {
    use crate::ledger::{DeliveryState, PlannedDelivery, StageBatch, StagedLead};
    let t = target_named(loaded, target)?;
    let lead = send_test_lead()?;
    let lead_id = lead.id.clone();
    // Works beside a running daemon: claims are transactional, so either process may
    // deliver it, never both.
    let ledger = open_ledger_shared_or_create(&loaded.settings).await?;
    let key = leadsync_core::idempotency_key(&t.key_namespace, t.key_scope, &lead);
    ledger
        .stage(StageBatch {
            source: "send-test".into(),
            leads: vec![StagedLead {
                lead,
                deliveries: vec![PlannedDelivery {
                    target: t.name.clone(),
                    idempotency_key: key,
                }],
            }],
            ..Default::default()
        })
        .await
        .context("staging the test lead")?;
    println!("test lead {lead_id} staged for {}", t.name);
    let deadline = tokio::time::Instant::now() + wait;
    let owner = instance_id();
    loop {
        pipeline::push_round(ledger.as_ref(), t, &owner, Utc::now())
            .await
            .context("pushing")?;
        let (_, _, deliveries) = ledger
            .trace(&lead_id)
            .await
            .context("reading the ledger")?
            .ok_or_else(|| anyhow::anyhow!("the test lead vanished from the ledger"))?;
        let Some(d) = deliveries.into_iter().next() else {
            return Err(AppError::Runtime(anyhow::anyhow!(
                "the test lead has no delivery"
            )));
        };
        match d.state {
            DeliveryState::Delivered => {
                println!(
                    "delivered to {} after {} attempt(s){}",
                    t.name,
                    d.attempts,
                    d.crm_ref
                        .map(|r| format!(": CRM record {r}"))
                        .unwrap_or_default()
                );
                return Ok(EXIT_OK);
            }
            DeliveryState::Dead => {
                println!(
                    "FAILED: {} refused the test lead: {} {}",
                    t.name,
                    d.error_code.as_deref().unwrap_or("-"),
                    d.error.as_deref().unwrap_or("")
                );
                return Ok(EXIT_DEAD);
            }
            DeliveryState::Pending if tokio::time::Instant::now() >= deadline => {
                println!(
                    "FAILED: not delivered within {}; last error {}: {}",
                    humantime::format_duration(wait),
                    d.error_code.as_deref().unwrap_or("-"),
                    d.error.as_deref().unwrap_or("-")
                );
                return Ok(EXIT_TEMPFAIL);
            }
            DeliveryState::Pending => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

async fn forget(loaded: &Loaded, email: &str) -> Result<u8, AppError> {
    let ledger = open_ledger_shared(&loaded.settings).await?;
    let erased = ledger
        .forget_email(email)
        .await
        .context("erasing personal data")?;
    if erased.is_empty() {
        println!("no lead in the ledger carries that e-mail address");
    } else {
        println!(
            "erased the personal data (names, e-mail, phone, company, title, description, \
             unknown columns, CRM error texts) of {} lead(s):",
            erased.len()
        );
        for id in &erased {
            println!("  {id}");
        }
        println!(
            "the CRMs keep their own copies: erase the person there too (e.g. by the ids \
             `leadsync trace <lead>` shows)"
        );
    }
    Ok(EXIT_OK)
}

async fn check(loaded: &Loaded, connect: bool) -> Result<u8, AppError> {
    let s = &loaded.settings;
    println!("configuration {} is valid", s.config_path.display());
    println!("  ledger: {}", s.ledger.location.describe());
    for src in &s.sources {
        println!("  source {}: schedule {}", src.name, src.schedule);
    }
    if loaded.targets.is_empty() {
        println!("  warning: no enabled target: leads will be staged but go nowhere");
    }
    let mut failed = false;
    if connect {
        for source in build_sources(s)?.iter_mut() {
            match source.check_connect().await {
                Ok(lines) => {
                    println!("  source {}: ok", source.name());
                    for v in lines {
                        println!("    - {v}");
                    }
                }
                Err(e) => {
                    failed = true;
                    println!("  source {}: FAILED: {e}", source.name());
                }
            }
        }
    }
    for t in &loaded.targets {
        match t.connector.check(connect).await {
            Ok(r) => {
                println!("  target {} ({}): ok", t.name, t.connector.kind());
                for v in r.verified {
                    println!("    - {v}");
                }
            }
            Err(e) => {
                failed = true;
                println!("  target {} ({}): FAILED: {e}", t.name, t.connector.kind());
            }
        }
    }
    Ok(if failed { EXIT_RUNTIME } else { EXIT_OK })
}

async fn sync_once(loaded: &Loaded, wait: Duration) -> Result<u8, AppError> {
    let ledger = open_ledger(&loaded.settings).await?;
    let mut sources = build_sources(&loaded.settings)?;
    let mut staged = crate::ledger::StageReport::default();
    let owner = instance_id();
    for source in sources.iter_mut() {
        // On a shared (PostgreSQL) ledger one instance pulls a source at a time.
        let name = source.name().to_string();
        let held = ledger
            .acquire_source(&name, &owner, loaded.settings.ledger.lease, Utc::now())
            .await
            .with_context(|| format!("taking the lease of source {name}"))?;
        if !held {
            println!("source {name}: skipped, another instance is pulling it");
            continue;
        }
        let r = pipeline::pull_source(ledger.as_ref(), source.as_mut(), &loaded.targets).await;
        if let Err(e) = ledger.release_source(&name, &owner).await {
            tracing::warn!(source = %name, error = %e, "releasing the source lease failed");
        }
        let r = r.with_context(|| format!("pulling source {name}"))?;
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
            let r = pipeline::drain_target(ledger.as_ref(), t, &owner, wait_until).await;
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

fn age(since: Option<chrono::DateTime<Utc>>) -> String {
    match since {
        None => "-".into(),
        Some(t) => {
            let secs = (Utc::now() - t).num_seconds().max(0) as u64;
            humantime::format_duration(Duration::from_secs(secs)).to_string()
        }
    }
}

async fn status(loaded: &Loaded, json: bool) -> Result<u8, AppError> {
    let ledger = open_ledger_shared(&loaded.settings).await?;
    let status = ledger.status(Utc::now()).await.context("reading status")?;
    if json {
        let out = serde_json::to_string_pretty(&status).context("encoding status")?;
        println!("{out}");
        return Ok(EXIT_OK);
    }
    println!(
        "{:<24} {:>9} {:>9} {:>10} {:>7} {:>14}  paused until / last error",
        "TARGET", "PENDING", "RETRYING", "DELIVERED", "DEAD", "OLDEST PENDING"
    );
    for t in &status.targets {
        let mut note = match (&t.paused_until, &t.last_error_code) {
            (Some(p), _) => format!("paused until {}", p.to_rfc3339()),
            (None, Some(c)) => c.clone(),
            _ => String::new(),
        };
        if let Some(n) = &t.note {
            if !note.is_empty() {
                note.push_str("; ");
            }
            note.push_str(n);
        }
        println!(
            "{:<24} {:>9} {:>9} {:>10} {:>7} {:>14}  {}",
            t.target,
            t.pending,
            t.retrying,
            t.delivered,
            t.dead,
            age(t.oldest_pending_staged_at),
            note
        );
    }
    println!(
        "{} lead(s) in the ledger, {} quarantined record(s)",
        status.leads, status.quarantined
    );
    for s in status.sources.iter().filter(|s| s.last_error.is_some()) {
        println!(
            "source {}: last pull FAILED: {}",
            s.source,
            s.last_error.as_deref().unwrap_or_default()
        );
    }
    if !status.instances.is_empty() {
        println!();
        println!(
            "{:<32} {:>6} {:>14} {:>9}  sources pulled",
            "INSTANCE", "STATE", "LAST SEEN", "LEASED"
        );
        for i in &status.instances {
            let state = match (i.alive, i.seen_at) {
                (true, _) => "up",
                (false, Some(_)) => "gone",
                (false, None) => "-",
            };
            println!(
                "{:<32} {:>6} {:>14} {:>9}  {}",
                i.id,
                state,
                age(i.seen_at),
                i.delivery_leases,
                if i.sources.is_empty() {
                    "-".to_string()
                } else {
                    i.sources.join(", ")
                }
            );
        }
    }
    Ok(EXIT_OK)
}

async fn trace(loaded: &Loaded, lead: &str, json: bool) -> Result<u8, AppError> {
    let ledger = open_ledger_shared(&loaded.settings).await?;
    let Some((l, staged_at, deliveries)) =
        ledger.trace(lead).await.context("reading the ledger")?
    else {
        println!("lead {lead} is not in the ledger");
        return Ok(EXIT_RUNTIME);
    };
    if json {
        let v = serde_json::json!({
            "lead": l.id, "staged_at": staged_at, "is_test": l.is_test,
            "action": l.action.as_ref().map(|a| a.code()),
            "origin": l.origin().map(|o| o.as_str()),
            "offer": l.offer.raw, "deliveries": deliveries,
        });
        println!("{}", serde_json::to_string_pretty(&v).context("encoding")?);
        return Ok(EXIT_OK);
    }
    println!("lead {} staged {}", l.id, staged_at.to_rfc3339());
    if deliveries.is_empty() {
        println!("  no target's filter selected it");
    }
    for d in deliveries {
        println!(
            "  {}: {} after {} attempt(s){}{}",
            d.target,
            d.state.as_str(),
            d.attempts,
            d.crm_ref
                .map(|r| format!(", CRM record {r}"))
                .unwrap_or_default(),
            d.error_code
                .map(|c| format!(", last error {c}"))
                .unwrap_or_default()
        );
    }
    Ok(EXIT_OK)
}

async fn dead_letters_list(
    loaded: &Loaded,
    target: Option<&str>,
    json: bool,
) -> Result<u8, AppError> {
    let ledger = open_ledger_shared(&loaded.settings).await?;
    let dead = ledger
        .dead_letters(target)
        .await
        .context("reading dead letters")?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&dead).context("encoding")?
        );
        return Ok(EXIT_OK);
    }
    if dead.is_empty() {
        println!("no dead letters");
    }
    for d in dead {
        println!(
            "{} {} attempts={} code={} reason={}",
            d.target,
            d.lead_id,
            d.attempts,
            d.error_code.as_deref().unwrap_or("-"),
            d.error.as_deref().unwrap_or("-")
        );
    }
    Ok(EXIT_OK)
}
