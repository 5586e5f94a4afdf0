//! Raw -> checked: every rule a configuration value must follow, with defaults.
//!
//! It owns what is valid (ranges, formats, names, kinds, defaults) and reports each mistake
//! with its file and key, carrying on so that one run shows as many mistakes as it can. It
//! reads values only from the merged tree it is given; it must not touch files or the
//! environment (that is `mod.rs`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use config::{Map, Value, ValueKind};
use leadsync_core::mapping::{FieldOverride, MappingOverrides, RawRule, RawRuleSpec};
use leadsync_core::qualify::{KeyPart, RawQualify};
use leadsync_core::{Action, KeyScope, Origin, Predicate, Qualification};
use serde::de::DeserializeOwned;

use super::checked::*;
use super::de::{self, describe, is_env_scalar, render_path, DeError, DeErrorKind, Segment};
use super::error::{ConfigError, ErrorKind};
use super::raw::*;

/// Collects the mistakes of one file.
pub(crate) struct FileCheck<'a> {
    pub file: &'a Path,
    /// What an environment override of this file starts with: `LEADSYNC_` or
    /// `LEADSYNC_TARGET_CRM__`; used to name the variable behind a bad value.
    pub env_prefix: &'a str,
    /// The merged tree (file + environment), to tell where a value came from.
    pub root: &'a Map<String, Value>,
    pub errors: &'a mut Vec<ConfigError>,
}

fn keys(path: &[&str]) -> Vec<Segment> {
    path.iter().map(|k| Segment::Key(k.to_string())).collect()
}

fn lookup<'v>(root: &'v Map<String, Value>, path: &[Segment]) -> Option<&'v Value> {
    let (Segment::Key(first), rest) = path.split_first()? else {
        return None;
    };
    let mut v = root.get(first)?;
    for seg in rest {
        v = match (seg, &v.kind) {
            (Segment::Key(k), ValueKind::Table(t)) => t.get(k)?,
            (Segment::Index(i), ValueKind::Array(a)) => a.get(*i)?,
            _ => return None,
        };
    }
    Some(v)
}

const DURATION_HINT: &str = "a duration such as \"90s\", \"2m\" or \"1h 30m\"";

fn fmt_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Names of targets and sources: they appear in logs, metrics and ledger rows.
pub(crate) fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

const NAME_RULE: &str = "a name made of letters, digits, `_`, `.` and `-`";

impl FileCheck<'_> {
    fn push(&mut self, path: &[Segment], kind: ErrorKind, message: String, env: bool) {
        let message = if env {
            let var: Vec<String> = path
                .iter()
                .filter_map(|s| match s {
                    Segment::Key(k) => Some(k.to_ascii_uppercase()),
                    Segment::Index(_) => None,
                })
                .collect();
            format!(
                "{message} (set by environment variable {}{})",
                self.env_prefix,
                var.join("__")
            )
        } else {
            message
        };
        self.errors.push(ConfigError::new(
            self.file,
            render_path(path),
            kind,
            message,
        ));
    }

    /// A mistake about the value at `path`.
    pub fn err_at(&mut self, path: &[Segment], message: impl Into<String>) {
        let env = lookup(self.root, path).is_some_and(is_env_scalar)
            || path.len() > 1
                && matches!(path.last(), Some(Segment::Index(_)))
                && lookup(self.root, &path[..path.len() - 1]).is_some_and(is_env_scalar);
        self.push(path, ErrorKind::Invalid, message.into(), env);
    }

    pub fn err(&mut self, path: &[&str], message: impl Into<String>) {
        self.err_at(&keys(path), message);
    }

    pub fn de_err(&mut self, base: &[Segment], e: DeError) {
        let mut path = base.to_vec();
        path.extend(e.path.iter().cloned());
        let kind = match e.kind {
            DeErrorKind::UnknownKey { .. } => ErrorKind::UnknownKey,
            _ => ErrorKind::Invalid,
        };
        let env = e.is_from_env();
        self.push(&path, kind, e.message(), env);
    }

    /// Deserialize the value at `base` (its default when absent).
    fn read<T: DeserializeOwned + Default>(&mut self, base: &[Segment]) -> Option<T> {
        match lookup(self.root, base) {
            None => Some(T::default()),
            Some(v) => match de::from_value::<T>(v.clone()) {
                Ok(t) => Some(t),
                Err(e) => {
                    self.de_err(base, e);
                    None
                }
            },
        }
    }

    fn read_top<T: DeserializeOwned>(&mut self) -> Option<T> {
        let root = Value::new(None, ValueKind::Table(self.root.clone()));
        match de::from_value::<T>(root) {
            Ok(t) => Some(t),
            Err(e) => {
                self.de_err(&[], e);
                None
            }
        }
    }

    fn duration(
        &mut self,
        path: &[&str],
        raw: Option<&str>,
        default: Duration,
        allow_zero: bool,
    ) -> Option<Duration> {
        let Some(s) = raw else {
            return Some(default);
        };
        match humantime::parse_duration(s.trim()) {
            Ok(d) if d.is_zero() && !allow_zero => {
                self.err(
                    path,
                    format!("expected {DURATION_HINT} above zero, found {s:?}"),
                );
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.err(path, format!("expected {DURATION_HINT}, found {s:?} ({e})"));
                None
            }
        }
    }

    fn opt_duration(&mut self, path: &[&str], raw: Option<&str>) -> Option<Option<Duration>> {
        match raw {
            None => Some(None),
            Some(s) => self
                .duration(path, Some(s), Duration::ZERO, false)
                .map(Some),
        }
    }

    fn cron(&mut self, path: &[&str], raw: Option<&str>) -> Option<CronSchedule> {
        match CronSchedule::parse(raw.unwrap_or(CronSchedule::DEFAULT)) {
            Ok(c) => Some(c),
            Err(e) => {
                self.err(path, e.to_string());
                None
            }
        }
    }

    fn word<T: Copy>(
        &mut self,
        path: &[&str],
        raw: Option<&str>,
        choices: &[(&str, T)],
        default: T,
    ) -> Option<T> {
        let Some(s) = raw else {
            return Some(default);
        };
        match choices.iter().find(|(w, _)| *w == s.trim()) {
            Some((_, t)) => Some(*t),
            None => {
                let names: Vec<&str> = choices.iter().map(|(w, _)| *w).collect();
                self.err(
                    path,
                    format!("expected one of {}, found {s:?}", names.join(", ")),
                );
                None
            }
        }
    }

    fn int_in(&mut self, path: &[&str], v: i64, lo: i64, hi: i64) -> Option<usize> {
        if (lo..=hi).contains(&v) {
            usize::try_from(v).ok()
        } else {
            self.err(
                path,
                format!("expected an integer from {lo} to {hi}, found {v}"),
            );
            None
        }
    }

    /// A path relative to `base` (absolute paths are kept).
    fn path(&mut self, path: &[&str], raw: Option<&str>, base: &Path) -> Option<PathBuf> {
        match raw.map(str::trim) {
            None => {
                self.err(path, "missing; expected a file system path");
                None
            }
            Some("") => {
                self.err(path, "expected a file system path, found an empty string");
                None
            }
            Some(p) => Some(base.join(p)),
        }
    }
}

// ---------------------------------------------------------------------------------------
// leadsync.toml
// ---------------------------------------------------------------------------------------

/// The parts of `leadsync.toml`; `None` fields had mistakes (already reported).
pub(crate) struct MainParts {
    /// `None` only when `targets_dir` itself is wrong; a mistake elsewhere in the file still
    /// leaves it (or its default), so the targets are checked too.
    pub targets_dir: Option<PathBuf>,
    pub ledger: Option<LedgerSettings>,
    pub telemetry: Option<TelemetrySettings>,
    pub admin: Option<Option<AdminSettings>>,
    pub sources: Option<Vec<SourceSettings>>,
    pub alerts: Option<Option<AlertSettings>>,
}

pub(crate) fn check_main(fc: &mut FileCheck<'_>, config_dir: &Path) -> MainParts {
    let top = fc.read_top::<MainTop>();
    let targets_dir_raw = match &top {
        Some(t) => t.targets_dir.clone(),
        // The top level had a mistake elsewhere: still find the targets.
        None => match fc.root.get("targets_dir").map(|v| &v.kind) {
            Some(ValueKind::String(s)) => Some(s.clone()),
            None => None,
            // Already reported as a type mistake: do not guess the folder.
            Some(_) => return main_parts_without_targets(fc, config_dir),
        },
    };
    let targets_dir = fc.path(
        &["targets_dir"],
        Some(targets_dir_raw.as_deref().unwrap_or("targets")),
        config_dir,
    );
    MainParts {
        targets_dir,
        ledger: check_ledger(fc, config_dir),
        telemetry: check_telemetry(fc),
        admin: check_admin(fc),
        sources: check_sources(fc, config_dir),
        alerts: check_alerts(fc, config_dir),
    }
}

fn main_parts_without_targets(fc: &mut FileCheck<'_>, config_dir: &Path) -> MainParts {
    MainParts {
        targets_dir: None,
        ledger: check_ledger(fc, config_dir),
        telemetry: check_telemetry(fc),
        admin: check_admin(fc),
        sources: check_sources(fc, config_dir),
        alerts: check_alerts(fc, config_dir),
    }
}

fn check_ledger(fc: &mut FileCheck<'_>, config_dir: &Path) -> Option<LedgerSettings> {
    if fc.root.get("ledger").is_none() {
        fc.err(
            &["ledger"],
            "missing; expected a [ledger] table with at least `path`",
        );
        return None;
    }
    let raw: RawLedger = fc.read(&keys(&["ledger"]))?;
    let location = check_ledger_location(fc, &raw, config_dir);
    let lease = fc.duration(
        &["ledger", "lease"],
        raw.lease.as_deref(),
        Duration::from_secs(120),
        false,
    );
    let retention = fc.duration(
        &["ledger", "retention"],
        raw.retention.as_deref(),
        Duration::from_secs(30 * 86400),
        false,
    );
    Some(LedgerSettings {
        location: location?,
        lease: lease?,
        retention: retention?,
    })
}

/// `[ledger] path` (SQLite) or `url` (PostgreSQL, with `schema` and `max_connections`):
/// exactly one of them.
fn check_ledger_location(
    fc: &mut FileCheck<'_>,
    raw: &RawLedger,
    config_dir: &Path,
) -> Option<LedgerLocation> {
    let has_url = lookup(fc.root, &keys(&["ledger", "url"])).is_some();
    if !has_url {
        for key in ["schema", "max_connections"] {
            if lookup(fc.root, &keys(&["ledger", key])).is_some() {
                fc.err(
                    &["ledger", key],
                    "only applies to a PostgreSQL ledger (`url`); remove it or set `url`",
                );
                return None;
            }
        }
        if raw.path.is_none() {
            fc.err(
                &["ledger", "path"],
                "missing; expected `path` (a SQLite file) or `url` (a PostgreSQL database)",
            );
            return None;
        }
        let path = fc.path(&["ledger", "path"], raw.path.as_deref(), config_dir)?;
        return Some(LedgerLocation::Sqlite(path));
    }
    if raw.path.is_some() {
        fc.err(
            &["ledger", "url"],
            "expected either `path` (a SQLite file) or `url` (PostgreSQL), not both",
        );
        return None;
    }
    let url = check_secret(fc, &["ledger", "url"], config_dir);
    if let Some(leadsync_core::SecretRef::Inline(u)) = &url {
        let u = u.trim();
        if !(u.starts_with("postgres://") || u.starts_with("postgresql://")) {
            fc.err(
                &["ledger", "url"],
                "expected a PostgreSQL URL such as \"postgres://leadsync@db.internal/leadsync\" \
                 (or a secret reference to one)",
            );
            return None;
        }
    }
    let schema = match raw.schema.as_deref().map(str::trim) {
        None => Some(None),
        Some(s)
            if !s.is_empty()
                && s.len() <= 63
                && s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') =>
        {
            Some(Some(s.to_string()))
        }
        Some(s) => {
            fc.err(
                &["ledger", "schema"],
                format!(
                    "expected a schema name of up to 63 lower-case letters, digits and `_`, \
                     not starting with a digit, found {s:?}"
                ),
            );
            None
        }
    };
    let max_connections = fc.int_in(
        &["ledger", "max_connections"],
        raw.max_connections.unwrap_or(8),
        1,
        1000,
    );
    Some(LedgerLocation::Postgres(PostgresLedgerSettings {
        url: url?,
        schema: schema?,
        max_connections: u32::try_from(max_connections?).ok()?,
    }))
}

fn check_telemetry(fc: &mut FileCheck<'_>) -> Option<TelemetrySettings> {
    let raw: RawTelemetry = fc.read(&keys(&["telemetry"]))?;
    let log_format = fc.word(
        &["telemetry", "log_format"],
        raw.log_format.as_deref(),
        &[
            ("auto", LogFormat::Auto),
            ("json", LogFormat::Json),
            ("text", LogFormat::Text),
        ],
        LogFormat::Auto,
    );
    let log_level = fc.word(
        &["telemetry", "log_level"],
        raw.log_level.as_deref(),
        &[
            ("trace", "trace"),
            ("debug", "debug"),
            ("info", "info"),
            ("warn", "warn"),
            ("error", "error"),
        ],
        "info",
    );
    let followup_sla = fc.duration(
        &["telemetry", "followup_sla"],
        raw.followup_sla.as_deref(),
        Duration::from_secs(3600),
        false,
    );
    Some(TelemetrySettings {
        log_format: log_format?,
        log_level: log_level?.to_string(),
        followup_sla: followup_sla?,
    })
}

fn check_admin(fc: &mut FileCheck<'_>) -> Option<Option<AdminSettings>> {
    if fc.root.get("admin").is_none() {
        return Some(None);
    }
    let raw: RawAdmin = fc.read(&keys(&["admin"]))?;
    let path = ["admin", "listen"];
    match raw.listen.as_deref().map(str::trim) {
        None => {
            fc.err(
                &path,
                "missing; expected an address and port such as \"127.0.0.1:9464\" \
                 (remove [admin] to serve no admin endpoint)",
            );
            None
        }
        Some(s) => match s.parse::<SocketAddr>() {
            Ok(listen) => Some(Some(AdminSettings { listen })),
            Err(_) => {
                fc.err(
                    &path,
                    format!(
                        "expected an address and port such as \"127.0.0.1:9464\" or \
                         \"[::1]:9464\", found {s:?}"
                    ),
                );
                None
            }
        },
    }
}

/// `[alerts]`: durations, and each channel built once (secrets read, addresses parsed) so
/// that a mistake names `alerts.channels.<name>.<key>` now rather than at the first alert.
fn check_alerts(fc: &mut FileCheck<'_>, config_dir: &Path) -> Option<Option<AlertSettings>> {
    if fc.root.get("alerts").is_none() {
        return Some(None);
    }
    let raw: RawAlerts = fc.read(&keys(&["alerts"]))?;
    let hour = Duration::from_secs(3600);
    let repeat_after = fc.duration(
        &["alerts", "repeat_after"],
        raw.repeat_after.as_deref(),
        hour,
        false,
    );
    let stale = fc.duration(
        &["alerts", "source_stale_after"],
        raw.source_stale_after.as_deref(),
        hour,
        false,
    );
    let every = fc.duration(
        &["alerts", "check_every"],
        raw.check_every.as_deref(),
        Duration::from_secs(30),
        false,
    );
    let mut channels = Vec::new();
    let mut ok = true;
    for (name, table) in raw.channels.unwrap_or_default() {
        match check_alert_channel(&name, table, config_dir) {
            Ok(c) => channels.push(c),
            Err((key, message)) => {
                let mut path = vec!["alerts", "channels", name.as_str()];
                path.extend(key.iter().map(String::as_str));
                fc.err(&path, message);
                ok = false;
            }
        }
    }
    if ok && channels.is_empty() {
        fc.err(
            &["alerts", "channels"],
            "expected at least one [alerts.channels.<name>] table with a kind (email, teams, slack)",
        );
        return None;
    }
    Some(Some(AlertSettings {
        channels: ok.then_some(channels)?,
        repeat_after: repeat_after?,
        source_stale_after: stale?,
        check_every: every?,
    }))
}

/// One `[alerts.channels.<name>]`: its `kind` and the rest as that kind's connection; the
/// error's key path below the channel.
fn check_alert_channel(
    name: &str,
    table: serde_json::Value,
    config_dir: &Path,
) -> Result<AlertChannelSettings, (Vec<String>, String)> {
    let serde_json::Value::Object(mut map) = table else {
        return Err((
            Vec::new(),
            "expected a table with a kind (email, teams, slack)".into(),
        ));
    };
    let kind = match map.remove("kind") {
        Some(serde_json::Value::String(k)) => k,
        _ => {
            return Err((
                vec!["kind".into()],
                "expected \"email\", \"teams\" or \"slack\"".into(),
            ))
        }
    };
    let connection = serde_json::Value::Object(map);
    crate::alert_channel::open(&kind, &connection, config_dir).map_err(|(key, message)| {
        let key: Vec<String> = key
            .split('.')
            .filter(|k| !k.is_empty() && *k != "connection")
            .map(str::to_string)
            .collect();
        (key, message)
    })?;
    Ok(AlertChannelSettings {
        name: name.to_string(),
        kind,
        connection,
    })
}

fn check_sources(fc: &mut FileCheck<'_>, config_dir: &Path) -> Option<Vec<SourceSettings>> {
    let table = match fc.root.get("sources").map(|v| &v.kind) {
        None => return Some(Vec::new()),
        Some(ValueKind::Table(t)) => t.clone(),
        Some(_) => {
            let found = fc.root.get("sources").map(describe).unwrap_or_default();
            fc.err(
                &["sources"],
                format!("expected one [sources.<name>] table per source, found {found}"),
            );
            return None;
        }
    };
    let table: BTreeMap<String, Value> = table.into_iter().collect();
    let mut out = Some(Vec::new());
    for (name, value) in table {
        let checked = check_source(fc, config_dir, &name, &value);
        match (&mut out, checked) {
            (Some(list), Some(s)) => list.push(s),
            _ => out = None,
        }
    }
    out
}

fn check_source(
    fc: &mut FileCheck<'_>,
    config_dir: &Path,
    name: &str,
    value: &Value,
) -> Option<SourceSettings> {
    let base = ["sources", name];
    let name_ok = valid_name(name);
    if !name_ok {
        fc.err(
            &base,
            format!("expected {NAME_RULE} as the source name, found {name:?}"),
        );
    }
    let ValueKind::Table(t) = &value.kind else {
        fc.err(
            &base,
            format!(
                "expected a table with `kind = \"spool\"`, `kind = \"azure_table\"` or \
                 `kind = \"https_inbox\"` and its settings, found {}",
                describe(value)
            ),
        );
        return None;
    };
    let kinds = SOURCE_KINDS.join(", ");
    let kind_path = ["sources", name, "kind"];
    let raw = match t.get("kind").map(|v| &v.kind) {
        None => {
            fc.err(&kind_path, format!("missing; expected one of {kinds}"));
            return None;
        }
        Some(ValueKind::String(k)) if k == "spool" => {
            RawSourceKind::Spool(fc.read::<RawSpool>(&keys(&base))?)
        }
        Some(ValueKind::String(k)) if k == "azure_table" => {
            RawSourceKind::AzureTable(fc.read::<RawAzureTable>(&keys(&base))?)
        }
        Some(ValueKind::String(k)) if k == "https_inbox" => {
            RawSourceKind::HttpsInbox(fc.read::<RawHttpsInbox>(&keys(&base))?)
        }
        Some(ValueKind::String(k)) => {
            fc.err(&kind_path, format!("expected one of {kinds}, found {k:?}"));
            return None;
        }
        Some(_) => {
            let found = t.get("kind").map(describe).unwrap_or_default();
            fc.err(
                &kind_path,
                format!("expected one of {kinds} (a string), found {found}"),
            );
            return None;
        }
    };
    match raw {
        RawSourceKind::Spool(s) => {
            let schedule = fc.cron(&["sources", name, "schedule"], s.schedule.as_deref());
            let tz_ok = check_timezone(fc, &["sources", name, "timezone"], s.timezone.as_deref());
            let dir = fc.path(&["sources", name, "dir"], s.dir.as_deref(), config_dir);
            let after = fc.word(
                &["sources", name, "after"],
                s.after.as_deref(),
                &[("move", AfterRead::Move), ("keep", AfterRead::Keep)],
                AfterRead::Move,
            );
            let settle = fc.duration(
                &["sources", name, "settle"],
                s.settle.as_deref(),
                Duration::from_secs(2),
                true,
            );
            let kind = SourceKind::Spool(SpoolSettings {
                dir: dir?,
                after: after?,
                settle: settle?,
            });
            (name_ok && tz_ok).then_some(())?;
            Some(SourceSettings {
                name: name.to_string(),
                schedule: schedule?,
                kind,
            })
        }
        RawSourceKind::AzureTable(a) => {
            let schedule = fc.cron(&["sources", name, "schedule"], a.schedule.as_deref());
            let tz_ok = check_timezone(fc, &["sources", name, "timezone"], a.timezone.as_deref());
            let connection = check_secret(fc, &["sources", name, "connection"], config_dir);
            let table = check_table_name(fc, &["sources", name, "table"], a.table.as_deref());
            let overlap = fc.duration(
                &["sources", name, "overlap"],
                a.overlap.as_deref(),
                Duration::from_secs(300),
                true,
            );
            let page_size = fc.int_in(
                &["sources", name, "page_size"],
                a.page_size.unwrap_or(1000),
                1,
                1000,
            );
            let kind = SourceKind::AzureTable(AzureTableSourceSettings {
                connection: connection?,
                table: table?,
                overlap: overlap?,
                page_size: u32::try_from(page_size?).ok()?,
            });
            (name_ok && tz_ok).then_some(())?;
            Some(SourceSettings {
                name: name.to_string(),
                schedule: schedule?,
                kind,
            })
        }
        RawSourceKind::HttpsInbox(raw) => {
            let kind = check_https_inbox(fc, config_dir, name, raw);
            name_ok.then_some(())?;
            Some(SourceSettings {
                name: name.to_string(),
                schedule: CronSchedule::parse(CronSchedule::DEFAULT).ok()?,
                kind: SourceKind::HttpsInbox(kind?),
            })
        }
    }
}

/// The settings of an `https_inbox` source: listener, secrets, TLS or an acknowledged plain
/// HTTP, client networks and limits.
fn check_https_inbox(
    fc: &mut FileCheck<'_>,
    config_dir: &Path,
    name: &str,
    raw: RawHttpsInbox,
) -> Option<HttpsInboxSettings> {
    let at = |key: &'static str| ["sources", name, key];
    let listen = match raw.listen.as_deref().map(str::trim) {
        None => {
            fc.err(&at("listen"), "missing; expected an address and port such as \"0.0.0.0:8443\"");
            None
        }
        Some(s) => s.parse::<SocketAddr>().map_err(|_| {
            fc.err(&at("listen"), format!("expected an address and port such as \"0.0.0.0:8443\" or \"[::]:8443\", found {s:?}"));
        }).ok(),
    };
    let path = check_inbox_path(fc, &at("path"), raw.path.as_deref());
    let secret = check_secret(fc, &at("secret"), config_dir);
    let bearer_token = if lookup(fc.root, &keys(&at("bearer_token"))).is_some() {
        Some(check_secret(fc, &at("bearer_token"), config_dir))
    } else {
        None
    };
    let tls = match (raw.tls_cert.as_deref(), raw.tls_key.as_deref()) {
        (None, None) => Some(None),
        (cert, key) => {
            let cert = fc.path(&at("tls_cert"), cert, config_dir);
            let key = fc.path(&at("tls_key"), key, config_dir);
            Some(Some(InboxTls {
                cert: cert?,
                key: key?,
            }))
        }
    };
    if let (Some(listen), Some(None)) = (listen, &tls) {
        if !listen.ip().is_loopback() && raw.plain_http != Some(true) {
            fc.err(
                &at("listen"),
                format!(
                    "{listen} is not a loopback address and no `tls_cert`/`tls_key` are set: \
                     leads would travel unencrypted; set both, listen on 127.0.0.1 behind a TLS \
                     reverse proxy, or set `plain_http = true` if a proxy on this network \
                     terminates TLS"
                ),
            );
            return None;
        }
    }
    let allow_from = check_networks(fc, &at("allow_from"), raw.allow_from.unwrap_or_default());
    let max_body = fc.int_in(
        &at("max_body_bytes"),
        raw.max_body_bytes.unwrap_or(1 << 20),
        1024,
        16 << 20,
    );
    let rate_limit = fc.int_in(
        &at("rate_limit"),
        raw.rate_limit.unwrap_or(20),
        0,
        1_000_000,
    );
    Some(HttpsInboxSettings {
        listen: listen?,
        path: path?,
        secret: secret?,
        bearer_token: bearer_token.map(|b| b.ok_or(())).transpose().ok()?,
        tls: tls?,
        allow_from: allow_from?,
        max_body_bytes: max_body?,
        rate_limit: u32::try_from(rate_limit?).ok()?,
    })
}

/// The inbox path: starts with `/`, no trailing `/`, plain characters (default `/leads`).
fn check_inbox_path(fc: &mut FileCheck<'_>, at: &[&str], raw: Option<&str>) -> Option<String> {
    let path = raw.map(str::trim).unwrap_or("/leads");
    let plain = path
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/-_.".contains(c));
    if path.len() < 2 || !path.starts_with('/') || path.ends_with('/') || !plain {
        fc.err(
            at,
            format!("expected a path such as \"/leads\" (letters, digits, - _ . /; no trailing /), found {path:?}"),
        );
        return None;
    }
    Some(path.to_string())
}

/// Client networks such as `"10.0.0.0/8"` or a single address.
fn check_networks(
    fc: &mut FileCheck<'_>,
    at: &[&str],
    raw: Vec<String>,
) -> Option<Vec<ipnet::IpNet>> {
    let mut nets = Vec::new();
    let mut ok = true;
    for s in raw {
        let s = s.trim();
        let net = s
            .parse::<ipnet::IpNet>()
            .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
        match net {
            Ok(n) => nets.push(n),
            Err(_) => {
                fc.err(
                    at,
                    format!("expected networks such as \"10.0.0.0/8\" or addresses, found {s:?}"),
                );
                ok = false;
            }
        }
    }
    ok.then_some(nets)
}

const SECRET_HINT: &str = "a secret: { env = \"NAME\" }, { file = \"PATH\" }, \
     { credential = \"NAME\" } (a systemd credential), or the value itself as a string";

/// A secret reference at `path`; a relative `file` resolves against `base`.
fn check_secret(
    fc: &mut FileCheck<'_>,
    path: &[&str],
    base: &Path,
) -> Option<leadsync_core::SecretRef> {
    use leadsync_core::SecretRef;
    let value = lookup(fc.root, &keys(path)).cloned();
    match value.as_ref().map(|v| &v.kind) {
        None => {
            fc.err(path, format!("missing; expected {SECRET_HINT}"));
            None
        }
        Some(ValueKind::String(s)) if !s.trim().is_empty() => Some(SecretRef::Inline(s.clone())),
        Some(ValueKind::Table(t)) if t.len() == 1 => {
            let (k, v) = t.iter().next()?;
            let s = match &v.kind {
                ValueKind::String(s) if !s.trim().is_empty() => s.trim().to_string(),
                _ => {
                    let mut p: Vec<&str> = path.to_vec();
                    p.push(k.as_str());
                    fc.err(
                        &p,
                        format!("expected a non-empty string, found {}", describe(v)),
                    );
                    return None;
                }
            };
            match k.as_str() {
                "env" => Some(SecretRef::Env { env: s }),
                "file" => Some(SecretRef::File { file: base.join(s) }),
                "credential" => Some(SecretRef::Credential { credential: s }),
                other => {
                    fc.err(
                        path,
                        format!("expected {SECRET_HINT}, found a table with key `{other}`"),
                    );
                    None
                }
            }
        }
        Some(_) => {
            let found = value.as_ref().map(describe).unwrap_or_default();
            fc.err(path, format!("expected {SECRET_HINT}, found {found}"));
            None
        }
    }
}

/// An Azure table name (default `MarketplaceLeads`), checked by the Azure Table crate's own
/// rule, the one its target uses. A build without that crate rejects the source kind itself.
fn check_table_name(fc: &mut FileCheck<'_>, path: &[&str], raw: Option<&str>) -> Option<String> {
    let name = raw.map(str::trim).unwrap_or("MarketplaceLeads");
    #[cfg(feature = "azure-table")]
    if let Err(message) = leadsync_azure_table::check_table_name(name) {
        fc.err(path, message);
        return None;
    }
    #[cfg(not(feature = "azure-table"))]
    let _ = (&fc, path);
    Some(name.to_string())
}

fn check_timezone(fc: &mut FileCheck<'_>, path: &[&str], raw: Option<&str>) -> bool {
    match raw.map(str::trim) {
        None => true,
        Some(tz) if tz.eq_ignore_ascii_case("utc") => true,
        Some(tz) => {
            fc.err(
                path,
                format!(
                    "expected \"UTC\", the only time zone supported for now \
                     (write the schedule in UTC), found {tz:?}"
                ),
            );
            false
        }
    }
}

// ---------------------------------------------------------------------------------------
// targets/<name>.toml
// ---------------------------------------------------------------------------------------

pub(crate) fn check_target(
    fc: &mut FileCheck<'_>,
    stem: &str,
    known_kinds: &[&str],
) -> Option<TargetSettings> {
    let file = fc.file.to_path_buf();
    let base_dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let top = fc.read_top::<TargetTop>();
    let top_ok = top.is_some();
    let (name, kind, enabled, schedule, canary, connection, digest) = match top {
        Some(t) => (
            t.name,
            t.kind,
            t.enabled,
            t.schedule,
            t.canary,
            t.connection,
            t.digest,
        ),
        None => (None, None, None, None, None, None, None),
    };

    let name = match name {
        Some(n) if valid_name(n.trim()) => Some(n.trim().to_string()),
        Some(n) => {
            fc.err(&["name"], format!("expected {NAME_RULE}, found {n:?}"));
            None
        }
        None if valid_name(stem) => Some(stem.to_string()),
        None if top_ok => {
            fc.err(
                &["name"],
                format!(
                    "missing, and the file name {stem:?} is not {NAME_RULE}: \
                     set `name` or rename the file"
                ),
            );
            None
        }
        None => None,
    };

    let kind = if top_ok {
        check_kind(fc, kind.as_deref(), known_kinds)
    } else {
        None
    };
    let schedule = fc.cron(&["schedule"], schedule.as_deref());
    let canary = match canary.as_deref() {
        None => Some(None),
        Some(expr) => fc.cron(&["canary"], Some(expr)).map(Some),
    };
    let digest = match digest.as_deref() {
        None => Some(None),
        Some(d) => fc
            .duration(&["digest"], Some(d), Duration::ZERO, false)
            .map(Some),
    };
    let connection = match connection {
        None => Some(serde_json::Value::Object(Default::default())),
        Some(v @ serde_json::Value::Object(_)) => Some(v),
        Some(_) => {
            let found = fc.root.get("connection").map(describe).unwrap_or_default();
            fc.err(
                &["connection"],
                format!("expected a [connection] table (its keys depend on `kind`), found {found}"),
            );
            None
        }
    };
    let (qualification, qualified_names) = check_qualify(fc);
    let filter = check_filter(fc, qualification.as_ref());
    let mapping = check_mapping(fc, &qualified_names, qualification.as_ref());
    let limits = check_limits(fc);
    let retry = check_retry(fc);
    let idempotency = check_idempotency(fc);

    let name = name?;
    let (key_scope, namespace) = idempotency?;
    let mapping = mapping?;
    qualification.as_ref()?;
    if !top_ok {
        return None;
    }
    Some(TargetSettings {
        key_namespace: namespace.unwrap_or_else(|| name.clone()),
        name,
        kind: kind?,
        file,
        base_dir,
        enabled: enabled.unwrap_or(true),
        schedule: schedule?,
        canary: canary?,
        digest: digest?,
        connection: connection?,
        filter: filter?,
        mapping,
        limits: limits?,
        retry: retry?,
        key_scope,
    })
}

fn check_kind(fc: &mut FileCheck<'_>, raw: Option<&str>, known: &[&str]) -> Option<String> {
    let expected = if known.is_empty() {
        "a target kind, but this build has no connectors".to_string()
    } else {
        format!("one of {}", known.join(", "))
    };
    match raw.map(str::trim) {
        None => {
            fc.err(&["kind"], format!("missing; expected {expected}"));
            None
        }
        Some(k) if known.contains(&k) => Some(k.to_string()),
        Some(k) => {
            fc.err(
                &["kind"],
                format!("expected {expected}, found {k:?} (unknown or not compiled in)"),
            );
            None
        }
    }
}

/// `[qualify]`: name -> the table of one named value. Returns the checked qualification
/// (`None` when it had mistakes, already reported) and the names it declares, which the
/// mapping may read either way (so a broken rule is not reported again as an unknown field).
fn check_qualify(fc: &mut FileCheck<'_>) -> (Option<Arc<Qualification>>, Vec<String>) {
    let path = keys(&["qualify"]);
    let table = match lookup(fc.root, &path) {
        None => return (Some(Arc::new(Qualification::default())), Vec::new()),
        Some(Value {
            kind: ValueKind::Table(t),
            ..
        }) => t.clone(),
        Some(v) => {
            let found = describe(v);
            fc.err_at(
                &path,
                format!("expected a [qualify] table of [qualify.<name>] tables, found {found}"),
            );
            return (None, Vec::new());
        }
    };
    let table: BTreeMap<String, Value> = table.into_iter().collect();
    let names: Vec<String> = table.keys().cloned().collect();
    let mut raws = BTreeMap::new();
    let mut ok = true;
    for (name, value) in table {
        let mut at = path.clone();
        at.push(Segment::Key(name.clone()));
        if !matches!(value.kind, ValueKind::Table(_)) {
            fc.err_at(
                &at,
                format!(
                    "expected a table with `when`, `cases` or `add` (see docs/qualification.md),                      found {}",
                    describe(&value)
                ),
            );
            ok = false;
            continue;
        }
        match de::from_value::<RawQualify>(value) {
            Ok(raw) => {
                raws.insert(name, raw);
            }
            Err(e) => {
                fc.de_err(&at, e);
                ok = false;
            }
        }
    }
    if !ok {
        return (None, names);
    }
    match Qualification::from_raw(&raws) {
        Ok(q) => {
            let ordered = q.names().map(String::from).collect();
            (Some(Arc::new(q)), ordered)
        }
        Err(errors) => {
            for e in errors {
                let mut at = path.clone();
                at.extend(e.path.iter().map(|p| match p {
                    KeyPart::Key(k) => Segment::Key(k.clone()),
                    KeyPart::Index(i) => Segment::Index(*i),
                }));
                fc.err_at(&at, e.message);
            }
            (None, names)
        }
    }
}

fn check_filter(
    fc: &mut FileCheck<'_>,
    qualification: Option<&Arc<Qualification>>,
) -> Option<TargetFilter> {
    let raw: RawFilter = fc.read(&keys(&["filter"]))?;
    let mut ok = true;

    let actions = raw.actions.map(|list| {
        check_list(fc, "actions", &list, |s| match Action::parse(s) {
            Action::Other(_) => Err(format!(
                "expected an action code, one of INS, PLT, DNC, Create, StartTestDrive \
                 (any case), found {s:?}"
            )),
            a => Ok(a),
        })
    });
    let origins = raw.origins.map(|list| {
        check_list(fc, "origins", &list, |s| match Origin::parse(s) {
            Origin::Other(_) => Err(format!(
                "expected an origin, one of AzureMarketplace, AzurePortal, AppSource, \
                 TestDrive (any case), found {s:?}"
            )),
            o => Ok(o),
        })
    });
    let offers = raw.offers.map(|list| {
        check_list(fc, "offers", &list, |s| {
            let t = s.trim();
            if t.is_empty() {
                Err("expected an offer id (`publisher.offer`) or offer title, \
                     found an empty string"
                    .to_string())
            } else {
                Ok(t.to_lowercase())
            }
        })
    });
    let test_leads = fc.word(
        &["filter", "test_leads"],
        raw.test_leads.as_deref(),
        &[("skip", TestLeads::Skip), ("include", TestLeads::Include)],
        TestLeads::Skip,
    );
    let dnc = fc.word(
        &["filter", "dnc"],
        raw.dnc.as_deref(),
        &[("mark", DncPolicy::Mark), ("skip", DncPolicy::Skip)],
        DncPolicy::Mark,
    );
    let when = match (raw.when.as_deref(), qualification) {
        (None, _) => None,
        // [qualify] has mistakes, already reported: its names cannot be checked.
        (Some(_), None) => {
            ok = false;
            None
        }
        (Some(text), Some(q)) => match Predicate::parse(Arc::clone(q), text) {
            Ok(p) => Some(p),
            Err(m) => {
                fc.err(&["filter", "when"], m);
                ok = false;
                None
            }
        },
    };
    let actions = flatten(actions, &mut ok);
    let origins = flatten(origins, &mut ok);
    let offers = flatten(offers, &mut ok);
    let filter = TargetFilter {
        actions,
        origins,
        offers,
        test_leads: test_leads?,
        dnc: dnc?,
        when,
    };
    ok.then_some(filter)
}

/// An optional list that was checked: `None` when absent; clears `ok` when it was wrong.
fn flatten<T>(list: Option<Option<Vec<T>>>, ok: &mut bool) -> Option<Vec<T>> {
    match list {
        None => None,
        Some(Some(v)) => Some(v),
        Some(None) => {
            *ok = false;
            None
        }
    }
}

/// Check each entry of a `[filter]` list; `None` when any entry (or the list) is wrong.
fn check_list<T>(
    fc: &mut FileCheck<'_>,
    key: &str,
    list: &[String],
    parse: impl Fn(&str) -> Result<T, String>,
) -> Option<Vec<T>> {
    if list.is_empty() {
        fc.err(
            &["filter", key],
            "expected at least one entry \
             (an empty list admits no lead; remove the key to admit all)",
        );
        return None;
    }
    let mut out = Some(Vec::new());
    for (i, s) in list.iter().enumerate() {
        match (parse(s), &mut out) {
            (Ok(v), Some(o)) => o.push(v),
            (Ok(_), None) => {}
            (Err(m), _) => {
                let path = [
                    Segment::Key("filter".into()),
                    Segment::Key(key.into()),
                    Segment::Index(i),
                ];
                fc.err_at(&path, m);
                out = None;
            }
        }
    }
    out
}

/// `[mapping]`; its fields may read the `[qualify]` values named `qualified`.
fn check_mapping(
    fc: &mut FileCheck<'_>,
    qualified: &[String],
    qualification: Option<&Arc<Qualification>>,
) -> Option<MappingOverrides> {
    let raw: RawMapping = fc.read(&keys(&["mapping"]))?;
    let fields_path = keys(&["mapping", "fields"]);
    let table = match lookup(fc.root, &fields_path) {
        None => Map::new(),
        Some(Value {
            kind: ValueKind::Table(t),
            ..
        }) => t.clone(),
        Some(v) => {
            let found = describe(v);
            fc.err_at(
                &fields_path,
                format!("expected a [mapping.fields] table of CRM field = rule, found {found}"),
            );
            return None;
        }
    };
    let table: BTreeMap<String, Value> = table.into_iter().collect();
    let mut fields = Some(Vec::new());
    for (crm_field, value) in table {
        let mut path = fields_path.clone();
        path.push(Segment::Key(crm_field.clone()));
        let rule = check_rule(fc, &path, &crm_field, value, qualified);
        match (rule, &mut fields) {
            (Some(r), Some(f)) => f.push(r),
            (Some(_), None) => {}
            (None, _) => fields = None,
        }
    }
    Some(MappingOverrides {
        replace_defaults: raw.replace_defaults.unwrap_or(false),
        fields: fields?,
        qualification: qualification.filter(|q| !q.is_empty()).cloned(),
    })
}

fn check_rule(
    fc: &mut FileCheck<'_>,
    path: &[Segment],
    crm_field: &str,
    value: Value,
    qualified: &[String],
) -> Option<FieldOverride> {
    if crm_field.trim().is_empty() {
        fc.err_at(path, "a CRM field name cannot be empty");
        return None;
    }
    let rule = match &value.kind {
        ValueKind::String(s) => RawRule::Field(s.clone()),
        ValueKind::Table(_) => match de::from_value::<RawRuleSpec>(value) {
            Ok(spec) => RawRule::Spec(spec),
            Err(e) => {
                fc.de_err(path, e);
                return None;
            }
        },
        _ => {
            fc.err_at(
                path,
                format!(
                    "expected a lead field name (such as \"email\") or a table with one of \
                     `from`, `value` or `template`, found {}",
                    describe(&value)
                ),
            );
            return None;
        }
    };
    match FieldOverride::from_raw_named(crm_field, &rule, qualified) {
        Ok(checked) => Some(checked),
        Err(e) => {
            fc.err_at(path, e.reason);
            None
        }
    }
}

fn check_limits(fc: &mut FileCheck<'_>) -> Option<Limits> {
    let raw: RawLimits = fc.read(&keys(&["limits"]))?;
    let batch_size = match raw.batch_size {
        None => Some(None),
        Some(v) => fc.int_in(&["limits", "batch_size"], v, 1, 10_000).map(Some),
    };
    let concurrency = check_concurrency(fc, raw.max_concurrency);
    let max_stalled = match raw.max_stalled {
        None => Some(None),
        Some(v) => fc.int_in(&["limits", "max_stalled"], v, 0, 64).map(Some),
    };
    let max_age = fc.duration(
        &["limits", "max_age"],
        raw.max_age.as_deref(),
        Duration::from_secs(72 * 3600),
        false,
    );
    let lease = fc.opt_duration(&["limits", "lease"], raw.lease.as_deref());
    Some(Limits {
        batch_size: batch_size?,
        concurrency: concurrency?,
        max_stalled: max_stalled?,
        max_age: max_age?,
        lease: lease?,
    })
}

/// `limits.concurrency`: an integer from 1 to 64 (default 1), or `"adaptive"` with
/// `limits.max_concurrency` (default 16) as its ceiling.
fn check_concurrency(fc: &mut FileCheck<'_>, max: Option<i64>) -> Option<Concurrency> {
    let path = ["limits", "concurrency"];
    let adaptive = match lookup(fc.root, &keys(&path)).map(|v| &v.kind) {
        None => false,
        Some(ValueKind::I64(n)) => {
            if max.is_some() {
                fc.err(
                    &["limits", "max_concurrency"],
                    "only with concurrency = \"adaptive\"; a fixed concurrency is its own maximum",
                );
            }
            return fc.int_in(&path, *n, 1, 64).map(Concurrency::Fixed);
        }
        Some(ValueKind::String(s)) if s.trim() == "adaptive" => true,
        Some(_) => {
            let found = lookup(fc.root, &keys(&path))
                .map(describe)
                .unwrap_or_default();
            fc.err(
                &path,
                format!("expected an integer from 1 to 64 or \"adaptive\", found {found}"),
            );
            return None;
        }
    };
    if !adaptive {
        return Some(Concurrency::Fixed(1));
    }
    let max = fc.int_in(&["limits", "max_concurrency"], max.unwrap_or(16), 1, 64)?;
    Some(Concurrency::Adaptive { max })
}

fn check_retry(fc: &mut FileCheck<'_>) -> Option<RetryPolicy> {
    let raw: RawRetry = fc.read(&keys(&["retry"]))?;
    let min_delay = fc.duration(
        &["retry", "min_delay"],
        raw.min_delay.as_deref(),
        Duration::from_secs(1),
        false,
    );
    let max_delay = fc.duration(
        &["retry", "max_delay"],
        raw.max_delay.as_deref(),
        Duration::from_secs(15 * 60),
        false,
    );
    let max_retry_after = fc.duration(
        &["retry", "max_retry_after"],
        raw.max_retry_after.as_deref(),
        Duration::from_secs(3600),
        false,
    );
    let (min_delay, max_delay) = (min_delay?, max_delay?);
    if max_delay < min_delay {
        fc.err(
            &["retry", "max_delay"],
            format!(
                "expected a duration of at least retry.min_delay ({}), found {}",
                fmt_duration(min_delay),
                fmt_duration(max_delay)
            ),
        );
        return None;
    }
    Some(RetryPolicy {
        min_delay,
        max_delay,
        max_retry_after: max_retry_after?,
    })
}

fn check_idempotency(fc: &mut FileCheck<'_>) -> Option<(KeyScope, Option<String>)> {
    let raw: RawIdempotency = fc.read(&keys(&["idempotency"]))?;
    let scope = fc.word(
        &["idempotency", "scope"],
        raw.scope.as_deref(),
        &[("lead", KeyScope::Lead), ("customer", KeyScope::Customer)],
        KeyScope::Lead,
    );
    let namespace = match raw.namespace {
        Some(n) if n.trim().is_empty() => {
            fc.err(
                &["idempotency", "namespace"],
                "expected a non-empty string (remove the key to use the target name)",
            );
            None
        }
        other => Some(other),
    };
    Some((scope?, namespace?))
}
