//! Wiring: build what a command needs from the checked configuration — the targets (through
//! the registry), the sources and the ledger. (This process's identity is `identity.rs`.)
//!
//! Secrets are resolved only where a connector or source is really built (`run`, `sync`,
//! `send-test`, `check`): the operator commands that only read or change the ledger
//! (`status`, `trace`, `dead-letters`, `replay`, `forget`) need [`load_settings`] alone, so they
//! work in a shell where the service's systemd credentials are not readable.
//!
//! It owns no behaviour of its own: commands (`commands/`) and the daemon (`daemon.rs`) call
//! it, and it calls nothing of theirs, so there is no import circle between them. Errors are
//! [`WiringError`]s: a configuration mistake (exit 78) or a runtime failure.

use anyhow::Context;
use std::path::Path;
use std::sync::Arc;

use crate::config::{self, Settings, SourceKind};
use crate::ledger::{Ledger, OpenMode};
use crate::pipeline::Target;
use crate::registry;
use crate::sources::spool::SpoolSource;
use crate::sources::Source;

/// Why a command could not be set up or run, sorted by exit code.
#[derive(Debug, thiserror::Error)]
pub enum WiringError {
    /// A configuration mistake, naming the file and key (exit 78).
    #[error("{0}")]
    Config(String),
    /// Anything else (exit 1).
    #[error("{0:#}")]
    Runtime(#[from] anyhow::Error),
}

/// What a loaded configuration yields: settings plus built targets.
pub struct Loaded {
    pub settings: Settings,
    pub targets: Vec<Arc<Target>>,
}

impl Loaded {
    /// The enabled target named `name`, or a configuration error listing the known ones.
    pub fn target(&self, name: &str) -> Result<&Arc<Target>, WiringError> {
        match self.targets.iter().find(|t| t.name == name) {
            Some(t) => Ok(t),
            None => {
                find_target(name, self.targets.iter().map(|t| t.name.as_str()))?;
                Err(WiringError::Config(format!(
                    "no enabled target named {name:?}"
                )))
            }
        }
    }
}

/// `name` among the enabled targets `known`, or a configuration error listing them.
pub fn find_target<'a>(
    name: &str,
    known: impl Iterator<Item = &'a str> + Clone,
) -> Result<(), WiringError> {
    if known.clone().any(|k| k == name) {
        return Ok(());
    }
    let known: Vec<&str> = known.collect();
    Err(WiringError::Config(format!(
        "no enabled target named {name:?}; enabled targets: {}",
        if known.is_empty() {
            "none".to_string()
        } else {
            known.join(", ")
        }
    )))
}

/// The checked configuration alone: no secret resolved, no connector built.
pub fn load_settings(config_path: &Path) -> Result<Settings, WiringError> {
    config::load(config_path, &registry::known_kinds())
        .map_err(|e| WiringError::Config(e.to_string()))
}

/// Load the configuration and build every enabled target and source, resolving their secrets:
/// what `run` and `sync` need. Any mistake is a configuration error (exit 78).
pub fn load(config_path: &Path) -> Result<Loaded, WiringError> {
    build(load_settings(config_path)?)
}

/// Build every enabled target and source of `settings`, resolving their secrets.
pub fn build(settings: Settings) -> Result<Loaded, WiringError> {
    let mut targets = Vec::new();
    let mut errors = Vec::new();
    for t in settings.targets.iter().filter(|t| t.enabled) {
        match registry::build_target(t, settings.ledger.lease) {
            Ok(target) => targets.push(Arc::new(target)),
            Err(e) => errors.push(e.to_string()),
        }
    }
    if !errors.is_empty() {
        return Err(WiringError::Config(errors.join("\n")));
    }
    // Sources are built for real when a command runs; building them here reports a bad
    // connection string or missing secret as a configuration error (exit 78).
    build_sources(&settings)?;
    check_inboxes(&settings).map_err(WiringError::Config)?;
    Ok(Loaded { settings, targets })
}

/// The `https_inbox` sources: at most one, its secrets readable, its certificate and key
/// usable. Returns a line per inbox saying where it listens.
pub fn check_inboxes(settings: &Settings) -> Result<Vec<String>, String> {
    let inboxes: Vec<_> = settings
        .sources
        .iter()
        .filter_map(|s| match &s.kind {
            SourceKind::HttpsInbox(i) => Some((s.name.as_str(), i)),
            _ => None,
        })
        .collect();
    if inboxes.len() > 1 {
        return Err(format!(
            "{}: at most one source of kind \"https_inbox\" (found {}); one inbox takes \
             several secrets and senders",
            settings.config_path.display(),
            inboxes.len()
        ));
    }
    inboxes
        .into_iter()
        .map(|(name, i)| {
            crate::inbox::check(name, i, &settings.config_dir)
                .map_err(|e| format!("{}: {e}", settings.config_path.display()))
        })
        .collect()
}

/// What `check` without `--connect` could build: outside the service, a `{ credential = … }`
/// secret is often unreadable (systemd loads it at start); a target or source that fails only
/// for that is a note, not an error.
pub struct CheckedBuild {
    pub targets: Vec<Arc<Target>>,
    pub notes: Vec<String>,
    pub errors: Vec<String>,
}

/// Build every enabled target (and source) for `check`, sorting failures into notes (an
/// unreadable systemd credential) and errors.
pub fn build_for_check(settings: &Settings) -> CheckedBuild {
    let mut out = CheckedBuild {
        targets: Vec::new(),
        notes: Vec::new(),
        errors: Vec::new(),
    };
    for t in settings.targets.iter().filter(|t| t.enabled) {
        match registry::build_target(t, settings.ledger.lease) {
            Ok(target) => out.targets.push(Arc::new(target)),
            Err(e) => match unreadable_credentials(&t.connection) {
                names if !names.is_empty() => out
                    .notes
                    .push(credential_note(&format!("target {}", t.name), &names)),
                _ => out.errors.push(e.to_string()),
            },
        }
    }
    for s in &settings.sources {
        let SourceKind::AzureTable(a) = &s.kind else {
            continue;
        };
        let unreadable = a
            .connection
            .credential_name()
            .filter(|n| !credential_readable(n))
            .map(|n| vec![n.to_string()])
            .unwrap_or_default();
        if let Err(e) = build_azure_table_source(settings, &s.name, a) {
            if unreadable.is_empty() {
                out.errors.push(e.to_string());
            } else {
                out.notes
                    .push(credential_note(&format!("source {}", s.name), &unreadable));
            }
        }
    }
    out
}

fn credential_note(what: &str, names: &[String]) -> String {
    format!(
        "{what}: credential {} not readable here (loaded by systemd at start); the settings \
         that need it are checked by `check --connect` with the credentials readable, or by \
         the service",
        names.join(", ")
    )
}

/// The `{ credential = "NAME" }` secrets in a `[connection]` table that cannot be read now.
fn unreadable_credentials(connection: &serde_json::Value) -> Vec<String> {
    let mut names = Vec::new();
    collect_credentials(connection, &mut names);
    names.retain(|n| !credential_readable(n));
    names
}

fn collect_credentials(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(o) => {
            if let (1, Some(serde_json::Value::String(n))) = (o.len(), o.get("credential")) {
                out.push(n.clone());
            }
            o.values().for_each(|v| collect_credentials(v, out));
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| collect_credentials(v, out)),
        _ => {}
    }
}

fn credential_readable(name: &str) -> bool {
    leadsync_core::secret_ref::credentials_directory()
        .is_some_and(|d| std::fs::File::open(d.path().join(name)).is_ok())
}

/// The configured sources, ready to pull.
pub fn build_sources(settings: &Settings) -> Result<Vec<Box<dyn Source>>, WiringError> {
    settings
        .sources
        .iter()
        .filter(|s| s.kind.is_pulled())
        .map(|s| -> Result<Box<dyn Source>, WiringError> {
            Ok(match &s.kind {
                SourceKind::Spool(spool) => Box::new(SpoolSource::new(
                    s.name.clone(),
                    spool.dir.clone(),
                    spool.after,
                    spool.settle,
                )),
                SourceKind::AzureTable(a) => build_azure_table_source(settings, &s.name, a)?,
                SourceKind::HttpsInbox(_) => unreachable!("filtered out above: not pulled"),
            })
        })
        .collect()
}

#[cfg(feature = "azure-table")]
fn build_azure_table_source(
    settings: &Settings,
    name: &str,
    a: &config::AzureTableSourceSettings,
) -> Result<Box<dyn Source>, WiringError> {
    let err = |key: &str, message: String| {
        WiringError::Config(format!(
            "{}: key `sources.{name}.{key}`: {message}",
            settings.config_path.display()
        ))
    };
    let secret = a
        .connection
        .resolve(&settings.config_dir)
        .map_err(|e| err("connection", e.to_string()))?;
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
) -> Result<Box<dyn Source>, WiringError> {
    Err(WiringError::Config(format!(
        "{}: key `sources.{name}.kind`: this build has no Azure Table support \
         (build with the `azure-table` feature)",
        settings.config_path.display()
    )))
}

/// Open the ledger the settings name (SQLite file or PostgreSQL) in `mode`: `Exclusive`
/// for the daemon and `sync`, `Shared` beside a running daemon for operator commands,
/// `SharedOrCreate` for `send-test`.
pub async fn open_ledger(settings: &Settings, mode: OpenMode) -> anyhow::Result<Arc<dyn Ledger>> {
    crate::ledger::open(&settings.ledger, &settings.config_dir, mode)
        .await
        .with_context(|| format!("opening the ledger {}", settings.ledger.location.describe()))
}
