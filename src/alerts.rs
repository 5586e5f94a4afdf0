//! Operator alerts (`[alerts]` in `leadsync.toml`): an e-mail or chat message when delivery
//! is in trouble, for operators who do not run Prometheus.
//!
//! Every `check_every` the daemon looks at what it knows ([`observe`]): targets down (the
//! push engine's circuit) and failed canaries (from [`Health`]), dead letters and leads past
//! the follow-up SLA (from the ledger), sources that have not pulled successfully for
//! `source_stale_after`. Each such [`Condition`] has a key; the [`AlertBook`] tells a
//! condition once when it appears, again at most every `repeat_after` while it lasts, and
//! once when it clears. Messages carry names, counts and error codes, never a lead's data.
//!
//! Sending never blocks the pipeline (the alerter is its own task) and is never retried: a
//! message that no channel took is logged, and the next reminder says it again.
//!
//! On a shared (PostgreSQL) ledger every instance observes and keeps its book, but only one
//! tells: the holder of the [`ALERTS_LEASE`], taken and renewed like a source's pull lease
//! and given back at a clean stop. An incident is one message, not one per instance, and
//! when the holder goes another goes on from a book that already knows what was told.

use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use crate::admin::Health;
use crate::config::AlertSettings;
use crate::ledger::Ledger;

use crate::alert_channel::{open as channel, Channel};

/// Something wrong now, as an operator reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    /// What it is about, stable while it lasts (`down:salesforce`, `dead:crm`).
    pub key: String,
    /// One line: "target salesforce is down".
    pub title: String,
    /// Labelled details: reason, counts, what to run.
    pub lines: Vec<(String, String)>,
}

/// A message the book decided to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertMessage {
    pub key: String,
    pub subject: String,
    pub lines: Vec<(String, String)>,
}

struct Active {
    since: DateTime<Utc>,
    last_told: DateTime<Utc>,
    title: String,
}

/// Which conditions are active and when each was last told (see the module comment).
pub struct AlertBook {
    repeat_after: chrono::Duration,
    active: BTreeMap<String, Active>,
}

impl AlertBook {
    pub fn new(repeat_after: Duration) -> AlertBook {
        AlertBook {
            repeat_after: chrono::Duration::from_std(repeat_after)
                .unwrap_or(chrono::Duration::hours(1)),
            active: BTreeMap::new(),
        }
    }

    /// The conditions seen at `now`: what to tell (new ones, reminders that are due, and
    /// those that cleared).
    pub fn update(&mut self, now: DateTime<Utc>, seen: Vec<Condition>) -> Vec<AlertMessage> {
        let mut out = Vec::new();
        let mut still: BTreeMap<String, Active> = BTreeMap::new();
        for c in seen {
            match self.active.remove(&c.key) {
                None => {
                    out.push(AlertMessage {
                        key: c.key.clone(),
                        subject: format!("[leadsync] {}", c.title),
                        lines: c.lines,
                    });
                    still.insert(
                        c.key,
                        Active {
                            since: now,
                            last_told: now,
                            title: c.title,
                        },
                    );
                }
                Some(mut a) => {
                    if now - a.last_told >= self.repeat_after {
                        let mut lines = c.lines;
                        lines.push(("Since".into(), since_line(a.since, now)));
                        out.push(AlertMessage {
                            key: c.key.clone(),
                            subject: format!("[leadsync] still: {}", c.title),
                            lines,
                        });
                        a.last_told = now;
                    }
                    a.title = c.title;
                    still.insert(c.key, a);
                }
            }
        }
        for (key, gone) in std::mem::replace(&mut self.active, still) {
            out.push(AlertMessage {
                subject: format!("[leadsync] resolved: {}", gone.title),
                lines: vec![("Lasted".into(), since_line(gone.since, now))],
                key,
            });
        }
        out
    }

    /// The keys of the active conditions.
    pub fn active(&self) -> Vec<&str> {
        self.active.keys().map(String::as_str).collect()
    }
}

fn since_line(since: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - since).num_seconds().max(0) as u64;
    format!(
        "{} ({})",
        since.format("%Y-%m-%d %H:%M:%S UTC"),
        humantime::format_duration(Duration::from_secs(secs))
    )
}

/// What the alerter watches, besides the ledger and [`Health`].
pub struct Watch {
    pub followup_sla: Duration,
    pub source_stale_after: Duration,
    /// The pulled sources (an inbox is pushed to: it has no pulls to miss).
    pub sources: Vec<String>,
    /// Per source, when it was last seen pulled without error (starts at the daemon's start).
    pub last_good: HashMap<String, DateTime<Utc>>,
    /// Per target, the dead-letter count and its reasons line when last read: the letters
    /// are listed again only when the count changes.
    pub dead_reasons: HashMap<String, (u64, String)>,
}

/// The conditions true at `now`.
pub async fn observe(
    ledger: &dyn Ledger,
    health: &Health,
    watch: &mut Watch,
    now: DateTime<Utc>,
) -> Vec<Condition> {
    let mut seen = Vec::new();
    let down: BTreeMap<String, String> = health.down.lock().map(|d| d.clone()).unwrap_or_default();
    for (target, reason) in down {
        seen.push(Condition {
            key: format!("down:{target}"),
            title: format!("target {target} is down"),
            lines: vec![
                ("Reason".into(), reason),
                ("Meanwhile".into(), "no lead spends an attempt; leadsync probes the target and delivers the backlog when it answers".into()),
            ],
        });
    }
    let canaries: BTreeMap<String, String> = health
        .canaries
        .lock()
        .map(|c| c.clone())
        .unwrap_or_default();
    for (target, reason) in canaries {
        seen.push(Condition {
            key: format!("canary:{target}"),
            title: format!("the canary of target {target} failed"),
            lines: vec![("Reason".into(), reason)],
        });
    }
    match ledger.status(now).await {
        Ok(status) => {
            for t in status.targets.iter().filter(|t| t.dead > 0) {
                let reasons = match watch.dead_reasons.get(&t.target) {
                    Some((n, r)) if *n == t.dead => r.clone(),
                    _ => {
                        let r = dead_reasons(ledger, &t.target).await;
                        watch
                            .dead_reasons
                            .insert(t.target.clone(), (t.dead, r.clone()));
                        r
                    }
                };
                seen.push(dead_letters(&t.target, t.dead, reasons));
            }
            // A target whose letters were all retried starts afresh: a later letter with the
            // same count must not be told with the old reasons.
            watch.dead_reasons.retain(|target, _| {
                status
                    .targets
                    .iter()
                    .any(|t| t.target == *target && t.dead > 0)
            });
            seen.extend(stale_sources(&status.sources, watch, now));
        }
        Err(e) => tracing::warn!(error = %e, "alerts: reading the ledger's status failed"),
    }
    let sla = chrono::Duration::from_std(watch.followup_sla).unwrap_or(chrono::Duration::hours(1));
    match ledger.overdue(now - sla).await {
        Ok(overdue) => {
            for (target, n) in overdue.into_iter().filter(|(_, n)| *n > 0) {
                seen.push(Condition {
                    key: format!("sla:{target}"),
                    title: format!(
                        "{n} lead(s) for target {target} waiting longer than the follow-up SLA"
                    ),
                    lines: vec![
                        (
                            "Follow-up SLA".into(),
                            humantime::format_duration(watch.followup_sla).to_string(),
                        ),
                        (
                            "See".into(),
                            "leadsync status; leadsync trace <lead>".to_string(),
                        ),
                    ],
                });
            }
        }
        Err(e) => tracing::warn!(error = %e, "alerts: reading overdue leads failed"),
    }
    seen
}

/// The CRM's codes of a target's dead letters, most frequent first (never its messages,
/// which may echo a lead's values).
async fn dead_reasons(ledger: &dyn Ledger, target: &str) -> String {
    let mut codes: BTreeMap<String, u64> = BTreeMap::new();
    if let Ok(letters) = ledger.dead_letters(Some(target)).await {
        for l in letters {
            *codes
                .entry(l.error_code.unwrap_or_else(|| "unknown".into()))
                .or_default() += 1;
        }
    }
    let mut by_count: Vec<(String, u64)> = codes.into_iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    by_count
        .iter()
        .take(5)
        .map(|(code, n)| format!("{code} ×{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn dead_letters(target: &str, dead: u64, reasons: String) -> Condition {
    Condition {
        key: format!("dead:{target}"),
        title: format!("target {target} has {dead} dead letter(s)"),
        lines: vec![
            ("Dead letters".into(), dead.to_string()),
            ("Reasons".into(), reasons),
            ("See".into(), format!("leadsync dead-letters list --target {target}; retry with leadsync dead-letters retry --target {target}")),
        ],
    }
}

fn stale_sources(
    sources: &[crate::ledger::SourceStatus],
    watch: &mut Watch,
    now: DateTime<Utc>,
) -> Vec<Condition> {
    let stale_after =
        chrono::Duration::from_std(watch.source_stale_after).unwrap_or(chrono::Duration::hours(1));
    let mut out = Vec::new();
    for name in &watch.sources {
        let status = sources.iter().find(|s| &s.source == name);
        if let Some(s) = status.filter(|s| s.last_error.is_none()) {
            let good = watch.last_good.entry(name.clone()).or_insert(s.updated_at);
            *good = (*good).max(s.updated_at);
        }
        let last_good = *watch.last_good.entry(name.clone()).or_insert(now);
        if now - last_good < stale_after {
            continue;
        }
        let mut lines = vec![("Last good pull".into(), since_line(last_good, now))];
        if let Some(err) = status.and_then(|s| s.last_error.clone()) {
            lines.push(("Last error".into(), err));
        }
        out.push(Condition {
            key: format!("source:{name}"),
            title: format!(
                "source {name} has not pulled successfully for {}",
                humantime::format_duration(Duration::from_secs(
                    (now - last_good).num_seconds().max(0) as u64
                ))
            ),
            lines,
        });
    }
    out
}

/// What the alerter runs on: the `[alerts]` settings and what they watch. A reload sends a
/// new one; the book of active conditions survives it, so a fix by reload still ends in its
/// "resolved" message.
#[derive(Clone)]
pub struct AlertConfig {
    pub settings: Option<AlertSettings>,
    pub base_dir: std::path::PathBuf,
    pub followup_sla: Duration,
    /// The pulled sources.
    pub sources: Vec<String>,
}

impl AlertConfig {
    pub fn of(settings: &crate::config::Settings) -> AlertConfig {
        AlertConfig {
            settings: settings.alerts.clone(),
            base_dir: settings.config_dir.clone(),
            followup_sla: settings.telemetry.followup_sla,
            sources: settings
                .sources
                .iter()
                .filter(|s| s.kind.is_pulled())
                .map(|s| s.name.clone())
                .collect(),
        }
    }
}

/// The lease (in the ledger's source leases, under a name no source can have) whose holder
/// is the one instance of a shared ledger that tells alerts.
pub const ALERTS_LEASE: &str = "(alerts)";

/// Whether this instance tells alerts now: it holds (or has just taken) the alerts lease
/// for three checks. A SQLite ledger has one process, which always does.
async fn holds_alerts(
    ledger: &dyn Ledger,
    owner: &str,
    every: Duration,
    now: DateTime<Utc>,
) -> bool {
    let ttl = (every * 3).max(Duration::from_secs(30));
    match ledger.acquire_source(ALERTS_LEASE, owner, ttl, now).await {
        Ok(held) => held,
        Err(e) => {
            tracing::warn!(error = %e, "alerts: taking the alerts lease failed");
            false
        }
    }
}

/// Give the alerts lease back (a clean stop), so another instance tells from now on.
async fn release_alerts(ledger: &dyn Ledger, owner: &str) {
    if let Err(e) = ledger.release_source(ALERTS_LEASE, owner).await {
        tracing::debug!(error = %e, "alerts: giving back the alerts lease failed");
    }
}

/// Run the alerter until `stop`: observe every `check_every`, tell what the book says (when
/// this instance holds the alerts lease); take a new configuration from `config` when one
/// comes.
pub async fn run(
    mut config: tokio::sync::watch::Receiver<AlertConfig>,
    ledger: Arc<dyn Ledger>,
    health: Arc<Health>,
    stop: CancellationToken,
) {
    let mut book: Option<AlertBook> = None;
    let mut watch = Watch {
        followup_sla: Duration::from_secs(3600),
        source_stale_after: Duration::from_secs(3600),
        sources: Vec::new(),
        last_good: HashMap::new(),
        dead_reasons: HashMap::new(),
    };
    let mut channels: Vec<(String, Channel)> = Vec::new();
    let mut every = Duration::from_secs(30);
    let owner = crate::identity::current().id.clone();
    config.mark_changed();
    loop {
        if config.has_changed().unwrap_or(false) {
            let c = config.borrow_and_update().clone();
            let Some(settings) = c.settings else {
                channels.clear();
                book = None;
                release_alerts(ledger.as_ref(), &owner).await;
                tokio::select! {
                    _ = stop.cancelled() => return,
                    r = config.changed() => if r.is_err() { return } else { continue },
                }
            };
            channels = open_channels(&settings, &c.base_dir);
            every = settings.check_every;
            watch.followup_sla = c.followup_sla;
            watch.source_stale_after = settings.source_stale_after;
            watch.sources = c.sources;
            match &mut book {
                Some(b) => {
                    b.repeat_after = chrono::Duration::from_std(settings.repeat_after)
                        .unwrap_or(chrono::Duration::hours(1))
                }
                None => book = Some(AlertBook::new(settings.repeat_after)),
            }
        }
        let now = Utc::now();
        let seen = observe(ledger.as_ref(), &health, &mut watch, now).await;
        let tells = holds_alerts(ledger.as_ref(), &owner, every, now).await;
        if let Some(book) = &mut book {
            // Another instance holds the lease: the book still learns what it tells.
            for message in book.update(now, seen).into_iter().filter(|_| tells) {
                tell(&channels, &message, now).await;
            }
        }
        tokio::select! {
            _ = stop.cancelled() => {
                release_alerts(ledger.as_ref(), &owner).await;
                return;
            }
            _ = tokio::time::sleep(every) => {}
            _ = config.changed() => {}
        }
    }
}

fn open_channels(settings: &AlertSettings, base_dir: &Path) -> Vec<(String, Channel)> {
    settings
        .channels
        .iter()
        .filter_map(|c| match channel(&c.kind, &c.connection, base_dir) {
            Ok(ch) => Some((c.name.clone(), ch)),
            Err((key, message)) => {
                tracing::error!(channel = %c.name, key = %key, error = %message, "alert channel unusable");
                None
            }
        })
        .collect()
}

/// Send one message to every channel at once, each bounded by a minute; failures are
/// logged (channel, code), never retried.
async fn tell(channels: &[(String, Channel)], message: &AlertMessage, now: DateTime<Utc>) {
    #[cfg(feature = "notify")]
    {
        let notice = leadsync_notify::Notice {
            subject: message.subject.clone(),
            leads: vec![leadsync_notify::LeadLines {
                heading: message.subject.clone(),
                lines: message.lines.clone(),
            }],
        };
        let id = format!("{}:{}", message.key, now.timestamp_millis());
        let sends = channels.iter().map(|(name, ch)| {
            let notice = &notice;
            let id = id.as_str();
            async move {
                let sent = tokio::time::timeout(Duration::from_secs(60), ch.send(notice, &[id])).await;
                match sent {
                    Ok(Ok(())) => tracing::info!(channel = %name, alert = %message.key, "alert sent"),
                    Ok(Err(f)) => tracing::warn!(channel = %name, alert = %message.key, class = f.class.as_str(), error_code = %f.code, "alert not sent"),
                    Err(_) => tracing::warn!(channel = %name, alert = %message.key, "alert not sent: no answer within a minute"),
                }
            }
        });
        futures::future::join_all(sends).await;
    }
    #[cfg(not(feature = "notify"))]
    let _ = (channels, message, now);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(min: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + min * 60, 0).unwrap()
    }

    fn down(target: &str) -> Condition {
        Condition {
            key: format!("down:{target}"),
            title: format!("target {target} is down"),
            lines: vec![("Reason".into(), "token_invalid_client".into())],
        }
    }

    /// Down → one alert; still down ten minutes on, checked every 30 s → nothing more
    /// before the hour; an hour on → one reminder; back up → one "resolved".
    #[test]
    fn a_condition_is_told_once_reminded_after_the_interval_and_cleared_once() {
        let mut book = AlertBook::new(Duration::from_secs(3600));
        let first = book.update(at(0), vec![down("crm")]);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].subject, "[leadsync] target crm is down");
        let mut told = 0;
        for half_minutes in 1..=20 {
            let now = at(0) + chrono::Duration::seconds(30 * half_minutes);
            told += book.update(now, vec![down("crm")]).len();
        }
        assert_eq!(told, 0, "no repeat within the interval");
        let reminder = book.update(at(61), vec![down("crm")]);
        assert_eq!(reminder.len(), 1);
        assert!(reminder[0]
            .subject
            .starts_with("[leadsync] still: target crm is down"));
        assert!(reminder[0].lines.iter().any(|(l, _)| l == "Since"));
        let cleared = book.update(at(70), vec![]);
        assert_eq!(cleared.len(), 1);
        assert_eq!(
            cleared[0].subject,
            "[leadsync] resolved: target crm is down"
        );
        assert!(book.update(at(71), vec![]).is_empty());
        assert!(book.active().is_empty());
    }

    #[test]
    fn conditions_are_told_and_cleared_each_on_their_own() {
        let mut book = AlertBook::new(Duration::from_secs(600));
        let dead = Condition {
            key: "dead:crm".into(),
            title: "target crm has 3 dead letter(s)".into(),
            lines: vec![],
        };
        assert_eq!(book.update(at(0), vec![down("a"), dead.clone()]).len(), 2);
        let out = book.update(at(1), vec![dead.clone()]);
        assert_eq!(out.len(), 1);
        assert!(out[0].subject.contains("resolved: target a is down"));
        assert_eq!(book.active(), vec!["dead:crm"]);
        assert!(book.update(at(5), vec![dead.clone()]).is_empty());
        assert_eq!(book.update(at(10), vec![dead]).len(), 1);
    }

    /// Leads past the follow-up SLA and dead letters, read from a real ledger, with time
    /// moved on by handing `observe` a later `now`: each told once, not repeated within the
    /// interval, resolved once when the leads are delivered and the letters retried.
    #[tokio::test]
    async fn follow_up_sla_and_dead_letters_from_the_ledger_are_told_once_and_resolved() {
        use crate::ledger::{
            sqlite::SqliteLedger, PlannedDelivery, RecordedOutcome, StageBatch, StagedLead,
        };
        let dir = tempfile::tempdir().unwrap();
        let ledger = SqliteLedger::open(&dir.path().join("l.db")).await.unwrap();
        let leads = (0..3)
            .map(|i| StagedLead {
                lead: leadsync_core::read_lead(
                    format!("lead-{i}"),
                    &serde_json::json!({"LeadSource": "SPZA", "UserDetails": {"Email": format!("p{i}@x.example")}}),
                )
                .unwrap(),
                deliveries: vec![PlannedDelivery {
                    target: "crm".into(),
                    idempotency_key: format!("k{i}"),
                    not_before: None,
                }],
            })
            .collect();
        ledger
            .stage(StageBatch {
                source: "spool".into(),
                leads,
                quarantined: vec![],
                cursor: None,
            })
            .await
            .unwrap();
        let health = Health::default();
        let mut watch = Watch {
            followup_sla: Duration::from_secs(3600),
            source_stale_after: Duration::from_secs(3600),
            sources: vec![],
            last_good: HashMap::new(),
            dead_reasons: HashMap::new(),
        };
        let mut book = AlertBook::new(Duration::from_secs(3600));
        let t0 = Utc::now();
        let later = |min: i64| t0 + chrono::Duration::minutes(min);
        assert!(book
            .update(t0, observe(&ledger, &health, &mut watch, t0).await)
            .is_empty());
        // Two hours on, nothing delivered: the SLA is passed.
        let told = book.update(
            later(120),
            observe(&ledger, &health, &mut watch, later(120)).await,
        );
        assert_eq!(told.len(), 1, "{told:?}");
        assert!(told[0]
            .subject
            .contains("3 lead(s) for target crm waiting longer than the follow-up SLA"));
        assert!(book
            .update(
                later(130),
                observe(&ledger, &health, &mut watch, later(130)).await
            )
            .is_empty());
        // Two delivered, one refused for good: the SLA clears, a dead letter appears.
        let claimed = ledger
            .claim("crm", later(131), 10, Duration::from_secs(60), "me")
            .await
            .unwrap();
        let outcomes: Vec<RecordedOutcome> = claimed
            .iter()
            .enumerate()
            .map(|(i, d)| match i {
                0 => RecordedOutcome::Dead {
                    delivery_id: d.delivery_id,
                    error_code: Some("INVALID_EMAIL_ADDRESS".into()),
                    error: "p0@x.example is not valid".into(),
                },
                _ => RecordedOutcome::Delivered {
                    delivery_id: d.delivery_id,
                    crm_ref: None,
                },
            })
            .collect();
        ledger.record(&outcomes, "me").await.unwrap();
        let told = book.update(
            later(132),
            observe(&ledger, &health, &mut watch, later(132)).await,
        );
        let subjects: Vec<&str> = told.iter().map(|m| m.subject.as_str()).collect();
        assert_eq!(subjects.len(), 2, "{subjects:?}");
        assert!(subjects.contains(&"[leadsync] target crm has 1 dead letter(s)"));
        assert!(subjects
            .iter()
            .any(|s| s.starts_with("[leadsync] resolved: 3 lead(s) for target crm")));
        let dead = told.iter().find(|m| m.key == "dead:crm").unwrap();
        let all = lines_of(dead);
        assert!(all.contains("INVALID_EMAIL_ADDRESS ×1"), "{all}");
        assert!(
            !all.contains("p0@x.example"),
            "codes, never the CRM's message: {all}"
        );
        // The operator retries the letter: the dead letters are resolved once, and the lead,
        // pending again and staged two hours ago, is past the SLA again.
        let filter = crate::ledger::DeadLetterFilter {
            target: Some("crm".into()),
            lead_id: None,
        };
        ledger.retry_dead(&filter, later(140)).await.unwrap();
        let told = book.update(
            later(141),
            observe(&ledger, &health, &mut watch, later(141)).await,
        );
        let subjects: Vec<&str> = told.iter().map(|m| m.subject.as_str()).collect();
        assert_eq!(subjects.len(), 2, "{subjects:?}");
        assert!(subjects.contains(&"[leadsync] resolved: target crm has 1 dead letter(s)"));
        assert!(subjects.contains(
            &"[leadsync] 1 lead(s) for target crm waiting longer than the follow-up SLA"
        ));
        // Refused again, for another reason: the new letter is told with its own code, not
        // the retried one's (the count is the same).
        let claimed = ledger
            .claim("crm", later(142), 10, Duration::from_secs(60), "me")
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);
        let refused = [RecordedOutcome::Dead {
            delivery_id: claimed[0].delivery_id,
            error_code: Some("REQUIRED_FIELD_MISSING".into()),
            error: "LastName is required".into(),
        }];
        ledger.record(&refused, "me").await.unwrap();
        let told = book.update(
            later(143),
            observe(&ledger, &health, &mut watch, later(143)).await,
        );
        let dead = told
            .iter()
            .find(|m| m.key == "dead:crm")
            .expect("the new dead letter is told");
        let all = lines_of(dead);
        assert!(all.contains("REQUIRED_FIELD_MISSING ×1"), "{all}");
        assert!(!all.contains("INVALID_EMAIL_ADDRESS"), "{all}");
    }

    /// An alert's lines as one text, to search.
    fn lines_of(alert: &AlertMessage) -> String {
        alert
            .lines
            .iter()
            .map(|(l, v)| format!("{l}: {v}\n"))
            .collect()
    }
}
