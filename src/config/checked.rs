//! The validated configuration: the types the rest of leadsync reads.
//!
//! Everything here has passed validation: paths are absolute, durations parsed, cron
//! expressions compiled, defaults applied, names checked. It owns these types and the
//! target filter's decision ([`TargetFilter::admits`]); it must not read files or the
//! environment (that is `mod.rs`) nor validate raw input (that is `validate.rs`).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use leadsync_core::mapping::MappingOverrides;
use leadsync_core::{Action, KeyScope, Lead, Origin, Predicate, SecretRef};

/// The whole validated configuration: `leadsync.toml` and every `targets/*.toml`.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The main file, absolute.
    pub config_path: PathBuf,
    /// Its folder: relative paths in `leadsync.toml` resolve against it.
    pub config_dir: PathBuf,
    /// The folder the target files were read from, absolute.
    pub targets_dir: PathBuf,
    pub ledger: LedgerSettings,
    pub telemetry: TelemetrySettings,
    /// `None` when there is no `[admin]` section: no admin endpoint.
    pub admin: Option<AdminSettings>,
    /// In name order.
    pub sources: Vec<SourceSettings>,
    /// In file-name order. May be empty (`check` should warn).
    pub targets: Vec<TargetSettings>,
    /// `None` when there is no `[alerts]` section.
    pub alerts: Option<AlertSettings>,
}

/// `[alerts]`: conditions an operator hears about, and the channels they go to.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertSettings {
    /// In name order; at least one.
    pub channels: Vec<AlertChannelSettings>,
    /// A condition still true is told again at most this often (default 1h).
    pub repeat_after: Duration,
    /// A source that has not pulled successfully for this long is an alert (default 1h).
    pub source_stale_after: Duration,
    /// How often the conditions are looked at (default 30s).
    pub check_every: Duration,
}

/// One alert channel: a notification kind (`email`, `teams`, `slack`) and its settings,
/// already checked by building it once.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertChannelSettings {
    pub name: String,
    pub kind: String,
    /// The kind's connection keys (as a notification target's `[connection]`).
    pub connection: serde_json::Value,
}

impl Settings {
    /// The target called `name`, if any.
    pub fn target(&self, name: &str) -> Option<&TargetSettings> {
        self.targets.iter().find(|t| t.name == name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerSettings {
    /// Where the ledger lives: `path` (SQLite) or `url` (PostgreSQL).
    pub location: LedgerLocation,
    /// How long a claimed delivery stays leased to this process (default 2m).
    pub lease: Duration,
    /// Personal data is erased from the ledger this long after every target has the lead
    /// (default 30 days).
    pub retention: Duration,
}

/// `[ledger] path` or `[ledger] url`: exactly one of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerLocation {
    /// The SQLite database file, absolute: one process at a time.
    Sqlite(PathBuf),
    /// A PostgreSQL database shared by several instances.
    Postgres(PostgresLedgerSettings),
}

impl LedgerLocation {
    /// The SQLite file, when the ledger is one.
    pub fn sqlite_path(&self) -> Option<&std::path::Path> {
        match self {
            LedgerLocation::Sqlite(p) => Some(p),
            LedgerLocation::Postgres(_) => None,
        }
    }
}

impl LedgerLocation {
    /// Where the ledger is, for messages: the SQLite path, or the PostgreSQL host and
    /// database (never the password).
    pub fn describe(&self) -> String {
        match self {
            LedgerLocation::Sqlite(path) => path.display().to_string(),
            LedgerLocation::Postgres(pg) => format!(
                "PostgreSQL ({}{})",
                match &pg.url {
                    leadsync_core::SecretRef::Inline(url) => redact_database_url(url),
                    other => format!("url from {}", describe_secret_ref(other)),
                },
                pg.schema
                    .as_deref()
                    .map(|s| format!(", schema {s}"))
                    .unwrap_or_default()
            ),
        }
    }
}

fn describe_secret_ref(r: &leadsync_core::SecretRef) -> String {
    use leadsync_core::SecretRef;
    match r {
        SecretRef::Env { env } => format!("environment variable {env}"),
        SecretRef::File { file } => format!("file {}", file.display()),
        SecretRef::Credential { credential } => format!("credential {credential}"),
        SecretRef::Inline(_) => "the configuration".to_string(),
    }
}

/// `postgres://user:***@host/db` for messages: the password never shows.
pub fn redact_database_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "postgres://…".to_string();
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let tail = tail.split('?').next().unwrap_or_default();
    let authority = match authority.rsplit_once('@') {
        Some((user, host)) => {
            let user = user.split(':').next().unwrap_or_default();
            format!("{user}@{host}")
        }
        None => authority.to_string(),
    };
    format!("{scheme}://{authority}{tail}")
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresLedgerSettings {
    /// `postgres://user:password@host:5432/db`; a secret, since it may carry a password.
    pub url: SecretRef,
    /// The schema the ledger's tables live in (created if missing); `None`: the server's
    /// `search_path` (normally `public`).
    pub schema: Option<String>,
    /// Pool size per instance (default 8).
    pub max_connections: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetrySettings {
    pub log_format: LogFormat,
    /// One of `trace`, `debug`, `info`, `warn`, `error` (validated, lower-case).
    pub log_level: String,
    /// A lead still undelivered this long after staging is reported (warning log and the
    /// `leadsync_followup_overdue` gauge); the marketplace advises following up within 24 h.
    /// Default 1 h.
    pub followup_sla: Duration,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// The journal's native protocol when stderr is the journal, JSON lines when stderr is
    /// not a terminal, text otherwise (see `telemetry.rs`).
    #[default]
    Auto,
    Json,
    Text,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminSettings {
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub listen: SocketAddr,
}

/// A cron expression with seconds (6 or 7 fields), as written and compiled.
///
/// The daemon hands [`CronSchedule::as_str`] to its scheduler; [`CronSchedule::schedule`]
/// is there to compute upcoming times (e.g. for `status`).
#[derive(Debug, Clone)]
pub struct CronSchedule {
    expr: String,
    schedule: croner::Cron,
}

/// Why a schedule is not a cron expression the daemon can run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error(
        "expected a cron expression with seconds, 6 or 7 fields \
         (sec min hour day-of-month month day-of-week [year]) such as {default:?}, \
         found {expr:?} ({fields} field{plural})",
        default = CronSchedule::DEFAULT,
        plural = if *fields == 1 { "" } else { "s" }
    )]
    FieldCount { expr: String, fields: usize },
    #[error(
        "expected a cron expression with seconds such as {default:?}, found {expr:?} ({reason})",
        default = CronSchedule::DEFAULT
    )]
    Invalid { expr: String, reason: String },
}

impl CronSchedule {
    /// The default schedule of sources and targets: every ten seconds.
    pub const DEFAULT: &'static str = "*/10 * * * * *";

    /// Parse a cron expression with seconds; the error says what was expected.
    pub fn parse(expr: &str) -> Result<CronSchedule, ScheduleError> {
        let trimmed = expr.trim();
        let fields = trimmed.split_whitespace().count();
        if !trimmed.starts_with('@') && !(6..=7).contains(&fields) {
            return Err(ScheduleError::FieldCount {
                expr: expr.to_string(),
                fields,
            });
        }
        // The same parser, with the same options, as tokio-cron-scheduler uses to run it: an
        // expression accepted here is one the daemon can schedule.
        let parsed = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Required)
            .dom_and_dow(true)
            .build()
            .parse(trimmed);
        match parsed {
            Ok(schedule) => Ok(CronSchedule {
                expr: trimmed.to_string(),
                schedule,
            }),
            Err(e) => Err(ScheduleError::Invalid {
                expr: expr.to_string(),
                reason: e.to_string(),
            }),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.expr
    }

    pub fn schedule(&self) -> &croner::Cron {
        &self.schedule
    }
}

impl PartialEq for CronSchedule {
    fn eq(&self, other: &Self) -> bool {
        self.expr == other.expr
    }
}

impl Eq for CronSchedule {}

impl fmt::Display for CronSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.expr)
    }
}

/// One `[sources.<name>]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceSettings {
    /// The table's key; also the name the ledger keeps this source's cursor under.
    pub name: String,
    /// When to pull (UTC); an `https_inbox` is not pulled and keeps the default, unused.
    pub schedule: CronSchedule,
    pub kind: SourceKind,
}

/// The kind-specific settings of a source.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceKind {
    Spool(SpoolSettings),
    AzureTable(AzureTableSourceSettings),
    HttpsInbox(HttpsInboxSettings),
}

impl SourceKind {
    /// Whether the source is read on its schedule (an `https_inbox` receives instead).
    pub fn is_pulled(&self) -> bool {
        !matches!(self, SourceKind::HttpsInbox(_))
    }

    /// The `kind` value as written in TOML.
    pub fn name(&self) -> &'static str {
        match self {
            SourceKind::Spool(_) => "spool",
            SourceKind::AzureTable(_) => "azure_table",
            SourceKind::HttpsInbox(_) => "https_inbox",
        }
    }
}

/// A spool directory of lead files (`*.json`, `*.jsonl`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolSettings {
    /// Absolute.
    pub dir: PathBuf,
    pub after: AfterRead,
    /// A file that looks unfinished and was modified less recently than this is left for
    /// the next pull (it may still be being written).
    pub settle: Duration,
}

/// The marketplace's staging table in an Azure Storage account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzureTableSourceSettings {
    /// The storage account connection string (a secret; a `file` path is absolute).
    pub connection: SecretRef,
    /// The table to read (default `MarketplaceLeads`); matched case-insensitively.
    pub table: String,
    /// How far before the stored cursor each pull starts again (default 5m): timestamps are
    /// assigned at commit and writers can commit out of order.
    pub overlap: Duration,
    /// Entities per page requested from the service (1 to 1000, default 1000).
    pub page_size: u32,
}

/// An HTTPS endpoint the marketplace POSTs each lead to (`kind = "https_inbox"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpsInboxSettings {
    pub listen: SocketAddr,
    /// The path leads are POSTed to; the secret follows it (`/leads/<secret>`) or comes as
    /// `?code=<secret>`. Starts with `/`, no trailing `/`.
    pub path: String,
    /// One or more secrets (whitespace-separated in the resolved value: rotation).
    pub secret: SecretRef,
    /// Accepted as `Authorization: Bearer <token>` on the bare path, for other senders.
    pub bearer_token: Option<SecretRef>,
    /// PEM certificate chain and key; `None` serves plain HTTP (for a local reverse proxy).
    pub tls: Option<InboxTls>,
    /// Client networks allowed to connect; empty: any.
    pub allow_from: Vec<ipnet::IpNet>,
    pub max_body_bytes: usize,
    /// Requests a second per client address (bursts of twice that); 0: no limit.
    pub rate_limit: u32,
}

/// The inbox's certificate and key files (absolute; re-read on SIGHUP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What a spool source does with a file once its lead is staged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AfterRead {
    /// Move it into the spool's `processed/` folder (unreadable records to `rejected/`).
    #[default]
    Move,
    /// Leave it in place; it is read again after a restart or a change, and the ledger
    /// ignores the leads it already has.
    Keep,
}

/// One `targets/<name>.toml`.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetSettings {
    /// Unique across targets; `[A-Za-z0-9_.-]+`; default: the file stem.
    pub name: String,
    /// A connector kind known to the registry (`file`, `dynamics`, ...).
    pub kind: String,
    /// The target file, absolute.
    pub file: PathBuf,
    /// The target file's folder: the connector resolves its relative paths against it.
    pub base_dir: PathBuf,
    pub enabled: bool,
    pub schedule: CronSchedule,
    /// When to send the target's canary (a marked test lead, end to end); `None`: never.
    pub canary: Option<CronSchedule>,
    /// `digest`: new leads wait for the end of this interval (counted from the Unix epoch)
    /// and go out together; `None`: at once.
    pub digest: Option<Duration>,
    /// The `[connection]` table, for the connector to validate (`{}` when absent).
    pub connection: serde_json::Value,
    pub filter: TargetFilter,
    /// `[mapping]`, validated: what the target changes in its connector's default mapping.
    pub mapping: MappingOverrides,
    pub limits: Limits,
    pub retry: RetryPolicy,
    pub key_scope: KeyScope,
    /// Default: the target name. Keep it when renaming a target to keep its keys.
    pub key_namespace: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `None`: the connector's maximum.
    pub batch_size: Option<usize>,
    pub concurrency: Concurrency,
    /// Stalled requests that may be set aside at once (`limits.max_stalled`); `None`: twice
    /// the concurrency's maximum.
    pub max_stalled: Option<usize>,
    /// A lead older than this is given up (dead) instead of retried.
    pub max_age: Duration,
    /// Overrides `ledger.lease` for this target.
    pub lease: Option<Duration>,
}

/// How many requests a target keeps in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Concurrency {
    /// Exactly this many (the default, 1).
    Fixed(usize),
    /// Found by the pipeline (AIMD), from 1 up to `max`.
    Adaptive { max: usize },
}

impl Concurrency {
    /// The most requests in flight.
    pub fn max(self) -> usize {
        match self {
            Concurrency::Fixed(n) | Concurrency::Adaptive { max: n } => n.max(1),
        }
    }
    pub fn is_adaptive(self) -> bool {
        matches!(self, Concurrency::Adaptive { .. })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub min_delay: Duration,
    /// At least `min_delay`.
    pub max_delay: Duration,
    /// The longest `Retry-After` honoured; longer ones are clamped to it.
    pub max_retry_after: Duration,
}

/// What to do with marketplace test leads (`MSFT_TEST...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TestLeads {
    #[default]
    Skip,
    Include,
}

/// What to do with `DNC` (do not contact) leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DncPolicy {
    /// Deliver them so the CRM record is marked do-not-contact.
    #[default]
    Mark,
    /// Do not deliver them.
    Skip,
}

/// Which leads a target receives.
///
/// `DNC` leads are governed by `dnc` alone, not by `actions`: with `dnc = "mark"` (the
/// default) a do-not-contact notice reaches the target even when `actions` does not list
/// `DNC`, so that a customer who asked not to be contacted is marked in the CRM. The
/// `origins`, `offers` and `when` selections apply to every lead (write `when = "... or dnc"`
/// to let do-not-contact notices through a `when` condition).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TargetFilter {
    /// `None`: every action.
    pub actions: Option<Vec<Action>>,
    /// `None`: every origin.
    pub origins: Option<Vec<Origin>>,
    /// Lower-cased; matched against the offer id (`publisher.offer`) or its display title.
    /// `None`: every offer.
    pub offers: Option<Vec<String>>,
    pub test_leads: TestLeads,
    pub dnc: DncPolicy,
    /// `when`: a condition of the `[qualify]` language, which may use the target's named
    /// values (`"complete"`, `"score >= 60"`). `None`: every lead.
    pub when: Option<Predicate>,
}

impl TargetFilter {
    /// `Ok(())` when the target takes this lead, else why not.
    pub fn admits(&self, lead: &Lead) -> Result<(), &'static str> {
        if lead.is_test && self.test_leads == TestLeads::Skip {
            return Err("test lead");
        }
        let dnc = lead.is_do_not_contact();
        if dnc && self.dnc == DncPolicy::Skip {
            return Err("do-not-contact lead (dnc = skip)");
        }
        if let Some(origins) = &self.origins {
            let selected = lead
                .origin()
                .is_some_and(|o| origins.iter().any(|x| same_origin(x, o)));
            if !selected {
                return Err("origin not selected");
            }
        }
        if let Some(offers) = &self.offers {
            let matches = |v: &Option<String>| {
                v.as_deref()
                    .map(|s| s.trim().to_lowercase())
                    .is_some_and(|s| offers.contains(&s))
            };
            if !(matches(&lead.offer.raw) || matches(&lead.offer.display_title)) {
                return Err("offer not selected");
            }
        }
        if let Some(actions) = &self.actions {
            let selected = dnc
                || lead
                    .action
                    .as_ref()
                    .is_some_and(|a| actions.iter().any(|x| same_action(x, a)));
            if !selected {
                return Err("action not selected");
            }
        }
        if let Some(when) = &self.when {
            if !when.holds(lead) {
                return Err("qualification: `when` is false");
            }
        }
        Ok(())
    }

    /// Whether `DNC` leads are delivered marked do-not-contact (rather than skipped).
    pub fn marks_dnc(&self) -> bool {
        self.dnc == DncPolicy::Mark
    }
}

fn same_action(a: &Action, b: &Action) -> bool {
    a.code().eq_ignore_ascii_case(b.code())
}

fn same_origin(a: &Origin, b: &Origin) -> bool {
    a.as_str().eq_ignore_ascii_case(b.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted_for_messages() {
        assert_eq!(
            redact_database_url(
                "postgres://leadsync:s3cret@db.internal:5432/leads?sslmode=require"
            ),
            "postgres://leadsync@db.internal:5432/leads"
        );
        assert_eq!(
            redact_database_url("postgresql://db.internal/leads"),
            "postgresql://db.internal/leads"
        );
        assert_eq!(redact_database_url("not a url s3cret"), "postgres://…");
        assert_eq!(redact_database_url("postgres://u:p@h"), "postgres://u@h");
    }

    use leadsync_core::read_lead;
    use serde_json::json;

    fn lead(source: &str, title: &str) -> Lead {
        read_lead(
            "id".into(),
            &json!({"LeadSource": source, "OfferTitle": title,
                    "UserDetails": {"Email": "a@b.example"}}),
        )
        .unwrap()
    }

    #[test]
    fn filter_admits_and_explains() {
        let f = TargetFilter {
            actions: Some(vec![Action::parse("ins"), Action::parse("PLT")]),
            origins: Some(vec![Origin::parse("AppSource")]),
            offers: Some(vec!["pub.offer".into()]),
            ..Default::default()
        };
        assert_eq!(f.admits(&lead("SPZA-INS|pub.offer", "Contoso")), Ok(()));
        assert_eq!(f.admits(&lead("AppSource-plt|PUB.Offer", "x")), Ok(()));
        assert_eq!(
            f.admits(&lead("SPZA-Create|pub.offer", "x")),
            Err("action not selected")
        );
        assert_eq!(
            f.admits(&lead("AzureMarketplace-INS|pub.offer", "x")),
            Err("origin not selected")
        );
        assert_eq!(
            f.admits(&lead("SPZA-INS|pub.other", "x")),
            Err("offer not selected")
        );
        // DNC is governed by `dnc`, not `actions`.
        assert_eq!(f.admits(&lead("SPZA-DNC|pub.offer", "x")), Ok(()));
        assert!(f.marks_dnc());
        let skip_dnc = TargetFilter {
            dnc: DncPolicy::Skip,
            ..f.clone()
        };
        assert_eq!(
            skip_dnc.admits(&lead("SPZA-DNC|pub.offer", "x")),
            Err("do-not-contact lead (dnc = skip)")
        );
        assert!(!skip_dnc.marks_dnc());
        // Offer display titles match too.
        let by_title = TargetFilter {
            offers: Some(vec!["contoso crm".into()]),
            ..Default::default()
        };
        assert_eq!(
            by_title.admits(&lead("SPZA-INS|p.o", "Contoso CRM")),
            Ok(())
        );
    }

    #[test]
    fn test_leads_are_skipped_unless_included() {
        let t = read_lead(
            "t".into(),
            &json!({"LeadSource": "SPZA-INS|p.o", "UserDetails": {"FirstName": "MSFT_TEST"}}),
        )
        .unwrap();
        assert!(t.is_test);
        assert_eq!(TargetFilter::default().admits(&t), Err("test lead"));
        let include = TargetFilter {
            test_leads: TestLeads::Include,
            ..Default::default()
        };
        assert_eq!(include.admits(&t), Ok(()));
    }

    #[test]
    fn cron_needs_seconds() {
        assert_eq!(
            CronSchedule::parse(" */10 * * * * * ").unwrap().as_str(),
            "*/10 * * * * *"
        );
        assert!(CronSchedule::parse("0 0 * * * * 2030").is_ok());
        let e = CronSchedule::parse("*/5 * * * *").unwrap_err().to_string();
        assert!(e.contains("6 or 7 fields"), "{e}");
        assert!(e.contains("5 fields"), "{e}");
        assert!(CronSchedule::parse("61 * * * * *").is_err());
    }
}
