//! Where a secret comes from, as written in configuration.
//!
//! A secret is never required inline: `{ env = "NAME" }`, `{ file = "PATH" }` (relative to
//! the config file's folder) or `{ credential = "NAME" }` (a systemd credential, read from
//! `$CREDENTIALS_DIRECTORY`). A plain string is accepted too, for tests and demos. Resolving
//! yields a [`Secret`]; errors name where the secret was looked for, never its value.

use serde::Deserialize;
use std::path::{Path, PathBuf};

use crate::pii::Secret;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum SecretRef {
    Env { env: String },
    File { file: PathBuf },
    Credential { credential: String },
    Inline(String),
}

/// Why a secret could not be read. Names where it was looked for, never its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("environment variable {0} is not set")]
    EnvUnset(String),
    #[error("secret file {path} cannot be read: {reason}")]
    File { path: String, reason: String },
    #[error("credential name {0:?} is not a plain name")]
    CredentialName(String),
    #[error(
        "credential {0:?} requested but $CREDENTIALS_DIRECTORY is not set and \
         {SERVICE_CREDENTIALS} cannot be read (systemd loads credentials with LoadCredential= \
         when the service starts)"
    )]
    NoCredentialsDirectory(String),
    #[error("credential {name:?} cannot be read from {path}: {reason}")]
    Credential {
        name: String,
        path: String,
        reason: String,
    },
    #[error("the secret is empty")]
    Empty,
}

/// Where systemd keeps the leadsync service's credentials while it runs: an operator's shell
/// (root) can read them there although `$CREDENTIALS_DIRECTORY` is set only for the service.
pub const SERVICE_CREDENTIALS: &str = "/run/credentials/leadsync.service";

/// The folder `{ credential = … }` secrets are read from, and why that one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialsDirectory {
    /// `$CREDENTIALS_DIRECTORY`, as systemd sets it for the service.
    Environment(PathBuf),
    /// [`SERVICE_CREDENTIALS`], when the variable is not set and the folder is readable.
    Service(PathBuf),
}

impl CredentialsDirectory {
    pub fn path(&self) -> &Path {
        match self {
            CredentialsDirectory::Environment(p) | CredentialsDirectory::Service(p) => p,
        }
    }
}

impl std::fmt::Display for CredentialsDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CredentialsDirectory::Environment(p) => {
                write!(f, "{} ($CREDENTIALS_DIRECTORY)", p.display())
            }
            CredentialsDirectory::Service(p) => {
                write!(
                    f,
                    "{} (the service's, $CREDENTIALS_DIRECTORY unset)",
                    p.display()
                )
            }
        }
    }
}

/// `$CREDENTIALS_DIRECTORY`, else the service's own folder when it can be read.
pub fn credentials_directory() -> Option<CredentialsDirectory> {
    if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
        return Some(CredentialsDirectory::Environment(PathBuf::from(dir)));
    }
    let service = Path::new(SERVICE_CREDENTIALS);
    std::fs::read_dir(service)
        .is_ok()
        .then(|| CredentialsDirectory::Service(service.to_path_buf()))
}

impl SecretRef {
    /// The systemd credential this secret names, if it is one.
    pub fn credential_name(&self) -> Option<&str> {
        match self {
            SecretRef::Credential { credential } => Some(credential),
            _ => None,
        }
    }

    /// Read the secret. `base_dir` resolves relative `file` paths. Trailing newlines of a
    /// file or credential are dropped (editors add them).
    pub fn resolve(&self, base_dir: &Path) -> Result<Secret, SecretError> {
        let trim = |s: String| s.trim_end_matches(['\r', '\n']).to_string();
        let value = match self {
            SecretRef::Inline(s) => s.clone(),
            SecretRef::Env { env } => {
                std::env::var(env).map_err(|_| SecretError::EnvUnset(env.clone()))?
            }
            SecretRef::File { file } => {
                let path = base_dir.join(file);
                trim(
                    std::fs::read_to_string(&path).map_err(|e| SecretError::File {
                        path: path.display().to_string(),
                        reason: e.to_string(),
                    })?,
                )
            }
            SecretRef::Credential { credential } => {
                if credential.contains('/') || credential.is_empty() {
                    return Err(SecretError::CredentialName(credential.clone()));
                }
                let dir = credentials_directory()
                    .ok_or_else(|| SecretError::NoCredentialsDirectory(credential.clone()))?;
                let path = dir.path().join(credential);
                trim(
                    std::fs::read_to_string(&path).map_err(|e| SecretError::Credential {
                        name: credential.clone(),
                        path: path.display().to_string(),
                        reason: e.to_string(),
                    })?,
                )
            }
        };
        if value.is_empty() {
            return Err(SecretError::Empty);
        }
        Ok(Secret::new(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_and_errors() {
        let dir = std::env::temp_dir().join(format!("leadsync-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("s.txt"), "abc\n").unwrap();
        let f: SecretRef = serde_json::from_str(r#"{"file":"s.txt"}"#).unwrap();
        assert_eq!(f.resolve(&dir).unwrap().expose(), "abc");
        let i: SecretRef = serde_json::from_str(r#""inline""#).unwrap();
        assert_eq!(i.resolve(&dir).unwrap().expose(), "inline");
        let e: SecretRef = serde_json::from_str(r#"{"env":"LEADSYNC_TEST_SURELY_UNSET"}"#).unwrap();
        assert!(e
            .resolve(&dir)
            .unwrap_err()
            .to_string()
            .contains("LEADSYNC_TEST_SURELY_UNSET"));
        let m: SecretRef = serde_json::from_str(r#"{"file":"missing.txt"}"#).unwrap();
        assert!(m
            .resolve(&dir)
            .unwrap_err()
            .to_string()
            .contains("missing.txt"));
        assert!(serde_json::from_str::<SecretRef>(r#"{"vault":"x"}"#).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
