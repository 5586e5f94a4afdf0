//! Configuration: `leadsync.toml` plus one `targets/*.toml` per CRM target, each overridable
//! by `LEADSYNC_` environment variables, validated into [`Settings`].
//!
//! It owns reading those files and variables (with the `config` crate), the raw -> checked
//! validation and the wording of every mistake: each [`ConfigError`] names the file, the
//! key and what was expected, and [`load`] reports all it can find at once. It must not
//! open connections or validate a connector's own `[connection]` keys: `[connection]` is
//! handed over as written (secret references such as `{ env = "NAME" }` included) for the
//! connector to check with its own strict struct.
//!
//! Environment overrides use `__` between key levels:
//!
//! - `leadsync.toml`: `LEADSYNC_<SECTION>__<KEY>`, e.g. `LEADSYNC_LEDGER__PATH=/x` sets
//!   `ledger.path`, `LEADSYNC_TARGETS_DIR=/y` sets `targets_dir`. Only variables whose first
//!   part is a top-level key of the file (`targets_dir`, `ledger`, `telemetry`, `admin`,
//!   `sources`) are read, so `LEADSYNC_CONFIG` and friends are left to the command line.
//! - `targets/crm-eu.toml`: `LEADSYNC_TARGET_CRM_EU__<SECTION>__<KEY>` (the file stem upper-
//!   cased, other characters as `_`), e.g. `LEADSYNC_TARGET_CRM_EU__LIMITS__BATCH_SIZE=50`.
//!
//! Environment values are strings, parsed into the type the key expects (lists are written
//! `INS,PLT`). Names come out lower-case (`LEADSYNC_SOURCES__INBOX__DIR` is source `inbox`),
//! so `mapping.fields`, whose CRM field names are case-sensitive, cannot be set this way.
//! Keys inside the files keep their case (`FirstName` stays `FirstName`).

mod checked;
mod de;
mod error;
mod raw;
mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use config::{Config, Environment, File, FileFormat, Map, Source, Value};

pub use checked::{
    redact_database_url, AdminSettings, AfterRead, AlertChannelSettings, AlertSettings,
    AzureTableSourceSettings, Concurrency, CronSchedule, DncPolicy, HttpsInboxSettings, InboxTls,
    LedgerLocation, LedgerSettings, Limits, LogFormat, PostgresLedgerSettings, RetryPolicy,
    Settings, SourceKind, SourceSettings, SpoolSettings, TargetFilter, TargetSettings,
    TelemetrySettings, TestLeads,
};
pub use error::{ConfigError, ConfigErrors, ErrorKind};

use validate::FileCheck;

/// The prefix of every environment variable leadsync reads.
pub const ENV_PREFIX: &str = "LEADSYNC";

/// Load and validate `config_path` and every `*.toml` of its targets directory, with
/// `LEADSYNC_` environment overrides. `known_target_kinds` are the connector kinds this
/// build registers; a target of another kind is an error listing them.
pub fn load(config_path: &Path, known_target_kinds: &[&str]) -> Result<Settings, ConfigErrors> {
    let env = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
    load_with_env(config_path, known_target_kinds, env)
}

/// [`load`] with the environment given explicitly (for tests and tools).
pub fn load_with_env<I>(
    config_path: &Path,
    known_target_kinds: &[&str],
    env: I,
) -> Result<Settings, ConfigErrors>
where
    I: IntoIterator<Item = (String, String)>,
{
    let env: Vec<(String, String)> = env.into_iter().collect();
    let mut errors = Vec::new();

    let config_path = match std::path::absolute(config_path) {
        Ok(p) => p,
        Err(e) => {
            return Err(ConfigErrors(vec![ConfigError::new(
                config_path,
                "",
                ErrorKind::Io,
                format!("cannot resolve the configuration file's path: {e}"),
            )]))
        }
    };
    let config_dir = config_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();

    // leadsync.toml
    let main_env = main_env(&env);
    let root = match read_layered(&config_path, "LEADSYNC", "_", main_env) {
        Ok(root) => root,
        Err(e) => return Err(ConfigErrors(vec![e])),
    };
    let main = validate::check_main(
        &mut FileCheck {
            file: &config_path,
            env_prefix: "LEADSYNC_",
            root: &root,
            errors: &mut errors,
        },
        &config_dir,
    );

    // targets/*.toml
    let mut targets = Vec::new();
    let mut targets_ok = true;
    if let Some(dir) = &main.targets_dir {
        match list_targets(dir) {
            Err(message) => errors.push(ConfigError::new(
                &config_path,
                "targets_dir",
                ErrorKind::Io,
                message,
            )),
            Ok(files) => {
                let mut seen: BTreeMap<String, PathBuf> = BTreeMap::new();
                for file in files {
                    match load_target(&file, known_target_kinds, &env, &mut errors) {
                        Some(t) => {
                            if let Some(first) = seen.get(&t.name) {
                                errors.push(ConfigError::new(
                                    &file,
                                    "name",
                                    ErrorKind::Invalid,
                                    format!(
                                        "target name {:?} is already used by {}; names must be \
                                         unique (set `name` to tell them apart)",
                                        t.name,
                                        first.display()
                                    ),
                                ));
                                targets_ok = false;
                            } else {
                                seen.insert(t.name.clone(), file.clone());
                                targets.push(t);
                            }
                        }
                        None => targets_ok = false,
                    }
                }
            }
        }
    }

    match (main, errors.is_empty() && targets_ok) {
        (
            validate::MainParts {
                targets_dir: Some(targets_dir),
                ledger: Some(ledger),
                telemetry: Some(telemetry),
                admin: Some(admin),
                sources: Some(sources),
                alerts: Some(alerts),
            },
            true,
        ) => Ok(Settings {
            config_path,
            config_dir,
            targets_dir,
            ledger,
            telemetry,
            admin,
            sources,
            targets,
            alerts,
        }),
        _ if errors.is_empty() => Err(ConfigErrors(vec![ConfigError::new(
            &config_path,
            "",
            ErrorKind::Invalid,
            "invalid configuration (no detail was recorded; this is a bug in leadsync)",
        )])),
        _ => Err(ConfigErrors(errors)),
    }
}

/// The environment variable prefix of one target file: `LEADSYNC_TARGET_CRM_EU` for
/// `crm-eu.toml`.
pub fn target_env_prefix(stem: &str) -> String {
    let stem: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("{ENV_PREFIX}_TARGET_{stem}")
}

/// The `LEADSYNC_*` variables meant for `leadsync.toml`.
fn main_env(env: &[(String, String)]) -> Map<String, String> {
    env.iter()
        .filter(|(k, _)| {
            k.strip_prefix("LEADSYNC_")
                .and_then(|rest| rest.split("__").next())
                .is_some_and(|first| {
                    raw::MAIN_SECTIONS.contains(&first.to_ascii_lowercase().as_str())
                })
        })
        .cloned()
        .collect()
}

/// Read one TOML file and merge the environment over it.
fn read_layered(
    file: &Path,
    prefix: &str,
    prefix_separator: &str,
    env: Map<String, String>,
) -> Result<Map<String, Value>, ConfigError> {
    let io = |message: String| ConfigError::new(file, "", ErrorKind::Io, message);
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(io("file not found".to_string()))
        }
        Err(e) => return Err(io(format!("cannot read the file: {e}"))),
    };
    if let Err(e) = toml::from_str::<toml::Table>(&text) {
        let at = e
            .span()
            .map(|s| {
                let (line, col) = line_col(&text, s.start);
                format!(" at line {line}, column {col}")
            })
            .unwrap_or_default();
        return Err(ConfigError::new(
            file,
            "",
            ErrorKind::Syntax,
            format!("TOML syntax error{at}: {}", e.message().trim()),
        ));
    }
    let built = Config::builder()
        .add_source(File::from_str(&text, FileFormat::Toml))
        .add_source(
            Environment::with_prefix(prefix)
                .prefix_separator(prefix_separator)
                .separator("__")
                .ignore_empty(true)
                .source(Some(env)),
        )
        .build()
        .and_then(|c| c.collect());
    built.map_err(|e| ConfigError::new(file, "", ErrorKind::Invalid, e.to_string()))
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// The target files, sorted by name: every `*.toml` (not hidden) directly in `dir`.
fn list_targets(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!(
                "the targets directory {} does not exist \
                 (create it, even empty, or set targets_dir)",
                dir.display()
            ));
        }
        Err(e) => {
            return Err(format!(
                "cannot read the targets directory {}: {e}",
                dir.display()
            ))
        }
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry
            .map_err(|e| format!("cannot read the targets directory {}: {e}", dir.display()))?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || path.extension().is_none_or(|x| x != "toml") {
            continue;
        }
        // Follows symlinks; skips folders named `*.toml`.
        if std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn load_target(
    file: &Path,
    known_kinds: &[&str],
    env: &[(String, String)],
    errors: &mut Vec<ConfigError>,
) -> Option<TargetSettings> {
    let Some(stem) = file.file_stem().and_then(|s| s.to_str()) else {
        errors.push(ConfigError::new(
            file,
            "",
            ErrorKind::Invalid,
            "expected a UTF-8 file name",
        ));
        return None;
    };
    let prefix = target_env_prefix(stem);
    let var_prefix = format!("{prefix}__");
    let mut target_env = Map::new();
    for (k, v) in env {
        let Some(rest) = k.strip_prefix(&var_prefix) else {
            continue;
        };
        if rest.to_ascii_uppercase().starts_with("MAPPING__FIELDS") {
            errors.push(ConfigError::new(
                file,
                rest.to_ascii_lowercase().replace("__", "."),
                ErrorKind::Invalid,
                format!(
                    "cannot be set from the environment (variable {k}): CRM field names are \
                     case-sensitive and variable names are not; set it in the file"
                ),
            ));
            continue;
        }
        target_env.insert(k.clone(), v.clone());
    }
    let root = match read_layered(file, &prefix, "__", target_env) {
        Ok(r) => r,
        Err(e) => {
            errors.push(e);
            return None;
        }
    };
    let before = errors.len();
    let target = validate::check_target(
        &mut FileCheck {
            file,
            env_prefix: &var_prefix,
            root: &root,
            errors,
        },
        stem,
        known_kinds,
    );
    if errors.len() > before {
        return None;
    }
    target
}

#[cfg(test)]
mod tests;
