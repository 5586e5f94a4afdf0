//! Configuration errors: each one names the file, the key and what was expected.
//!
//! It owns the shape and wording of a configuration mistake as the operator reads it in
//! `leadsync check`; it must not decide what is valid (that is `validate.rs`).

use std::fmt;
use std::path::PathBuf;

/// What kind of mistake a [`ConfigError`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The file (or the targets directory) could not be read.
    Io,
    /// The file is not valid TOML.
    Syntax,
    /// A key that this section does not have (usually a typo).
    UnknownKey,
    /// A key is missing, has the wrong type or a value that is not allowed.
    Invalid,
}

/// One configuration mistake.
///
/// Displays as `FILE: key `a.b`: MESSAGE`, as `FILE: unknown key `a.b` (MESSAGE)` for an
/// unknown key, or `FILE: MESSAGE` when the mistake is not about one key (syntax, I/O).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", Rendered(self))]
pub struct ConfigError {
    /// The file the mistake is in (for a missing targets directory: the main file).
    pub file: PathBuf,
    /// Dotted key path (`limits.concurrency`, `mapping.fields.FirstName`); empty when the
    /// mistake is about the whole file.
    pub key: String,
    pub kind: ErrorKind,
    /// What was expected, and what was found.
    pub message: String,
}

impl ConfigError {
    pub fn new(
        file: impl Into<PathBuf>,
        key: impl Into<String>,
        kind: ErrorKind,
        message: impl Into<String>,
    ) -> Self {
        ConfigError {
            file: file.into(),
            key: key.into(),
            kind,
            message: message.into(),
        }
    }
}

struct Rendered<'a>(&'a ConfigError);

impl fmt::Display for Rendered<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = self.0;
        let file = e.file.display();
        match (e.kind, e.key.is_empty()) {
            (_, true) => write!(f, "{file}: {}", e.message),
            (ErrorKind::UnknownKey, false) => {
                write!(f, "{file}: unknown key `{}` ({})", e.key, e.message)
            }
            (_, false) => write!(f, "{file}: key `{}`: {}", e.key, e.message),
        }
    }
}

/// Every mistake found in one load, in file order; never empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", Lines(&self.0))]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// The first mistake (the list is never empty when built by [`super::load`]).
    pub fn first(&self) -> Option<&ConfigError> {
        self.0.first()
    }
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl IntoIterator for ConfigErrors {
    type Item = ConfigError;
    type IntoIter = std::vec::IntoIter<ConfigError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

struct Lines<'a>(&'a [ConfigError]);

impl fmt::Display for Lines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_file_key_and_expectation() {
        let e = ConfigError::new(
            "/etc/leadsync/targets/crm.toml",
            "limits.concurrency",
            ErrorKind::Invalid,
            "expected an integer from 1 to 64, found 0",
        );
        assert_eq!(
            e.to_string(),
            "/etc/leadsync/targets/crm.toml: key `limits.concurrency`: expected an integer from 1 to 64, found 0"
        );
        let u = ConfigError::new(
            "targets/csv.toml",
            "limits.batchsize",
            ErrorKind::UnknownKey,
            "expected one of batch_size, concurrency, max_age",
        );
        assert_eq!(
            u.to_string(),
            "targets/csv.toml: unknown key `limits.batchsize` (expected one of batch_size, concurrency, max_age)"
        );
        let s = ConfigError::new(
            "a.toml",
            "",
            ErrorKind::Syntax,
            "TOML syntax error at line 2",
        );
        assert_eq!(s.to_string(), "a.toml: TOML syntax error at line 2");
        let all = ConfigErrors(vec![e, s]);
        assert_eq!(all.to_string().lines().count(), 2);
    }
}
