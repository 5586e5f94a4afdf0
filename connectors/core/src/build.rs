//! The construction contract: how the binary turns one target file into a connector.
//!
//! Every connector crate exposes one function of type [`BuildFn`]. It receives a
//! [`BuildContext`] (the target's name, its `[connection]` table, the folder relative paths
//! resolve against, the checked `[mapping]` and `limits.batch_size`) and returns the ready
//! connector or a [`BuildError`] naming the key at fault. The binary keeps a table of kind →
//! build function (`src/registry.rs`) and adds the file name to the error; a connector never
//! reads configuration files or the environment beyond the secrets its settings reference.

use serde::de::DeserializeOwned;
use std::path::Path;
use std::sync::Arc;

use crate::connector::Connector;
use crate::mapping::{Mapping, MappingOverrides};

/// Builds one kind of connector from a target's settings.
pub type BuildFn = fn(&BuildContext<'_>) -> Result<Arc<dyn Connector>, BuildError>;

/// What a connector's `build` function is given.
#[derive(Debug, Clone, Copy)]
pub struct BuildContext<'a> {
    /// The target's name (its file stem), for connectors that report or key by it.
    pub target: &'a str,
    /// The target's `[connection]` table, as JSON.
    pub connection: &'a serde_json::Value,
    /// The folder of the target's file: relative paths and `{ file = … }` secrets resolve here.
    pub base_dir: &'a Path,
    /// The target's `[mapping]`, already validated.
    pub mapping: &'a MappingOverrides,
    /// `limits.batch_size`, when the target sets it (the pipeline checks it against
    /// [`Connector::max_batch`]).
    pub batch_size: Option<usize>,
}

impl BuildContext<'_> {
    /// The `[connection]` table as the connector's settings type; an error names the key.
    pub fn settings<T: DeserializeOwned>(&self) -> Result<T, BuildError> {
        serde_path_to_error::deserialize(self.connection).map_err(|e| {
            let path = e.path().to_string();
            let key = if path == "." || path.is_empty() {
                "connection".to_string()
            } else {
                format!("connection.{path}")
            };
            BuildError::new(key, e.into_inner().to_string())
        })
    }

    /// The effective mapping: the connector's `defaults` with the target's `[mapping]` applied.
    pub fn mapping(&self, defaults: Mapping) -> Mapping {
        self.mapping.apply_to(defaults)
    }
}

/// A target that could not be built: the key at fault (`connection.url`,
/// `mapping.fields.Email`, …) and what is wrong, without secret values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key `{key}`: {message}")]
pub struct BuildError {
    pub key: String,
    pub message: String,
}

impl BuildError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        BuildError {
            key: key.into(),
            message: message.into(),
        }
    }

    /// The same error under `connection.`: connector settings errors name their own key.
    pub fn in_connection(key: &str, message: impl Into<String>) -> Self {
        let key = if key.is_empty() || key == "connection" {
            "connection".to_string()
        } else if key.starts_with("connection.") {
            key.to_string()
        } else {
            format!("connection.{key}")
        };
        BuildError::new(key, message)
    }
}
