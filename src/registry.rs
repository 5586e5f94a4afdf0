//! The one place connectors are registered: a target's `kind` names a connector crate, and
//! this module turns the target's checked settings into a ready [`Target`].
//!
//! Adding a CRM is adding a crate under `connectors/` and one arm here.

use leadsync_core::{Connector, Mapping};
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::Duration;

use crate::config::TargetSettings;
use crate::pipeline::Target;

/// The target kinds this build knows.
pub const KNOWN_KINDS: &[&str] = &[
    #[cfg(feature = "file")]
    "file",
    #[cfg(feature = "https")]
    "https",
    #[cfg(feature = "dynamics")]
    "dynamics",
    #[cfg(feature = "salesforce")]
    "salesforce",
    #[cfg(feature = "azure-table")]
    "azure_table",
];

/// A target that could not be built, naming its file and key.
#[derive(Debug, thiserror::Error)]
#[error("{file}: key `{key}`: {message}")]
pub struct TargetBuildError {
    pub file: String,
    pub key: String,
    pub message: String,
}

fn error(
    t: &TargetSettings,
    key: impl Into<String>,
    message: impl Into<String>,
) -> TargetBuildError {
    TargetBuildError {
        file: t.file.display().to_string(),
        key: key.into(),
        message: message.into(),
    }
}

/// Deserialize `[connection]` into a connector's settings, naming the key that failed.
fn connection<T: DeserializeOwned>(t: &TargetSettings) -> Result<T, TargetBuildError> {
    serde_path_to_error::deserialize(&t.connection).map_err(|e| {
        let path = e.path().to_string();
        let key = if path == "." || path.is_empty() {
            "connection".to_string()
        } else {
            format!("connection.{path}")
        };
        error(t, key, e.into_inner().to_string())
    })
}

fn mapping(t: &TargetSettings, defaults: Mapping) -> Result<Mapping, TargetBuildError> {
    Mapping::with_overrides(defaults, t.mapping_replace_defaults, &t.mapping_fields)
        .map_err(|e| error(t, format!("mapping.fields.{}", e.field), e.reason))
}

/// Build the connector and effective mapping of one target.
fn connector(t: &TargetSettings) -> Result<(Arc<dyn Connector>, Mapping), TargetBuildError> {
    match t.kind.as_str() {
        #[cfg(feature = "file")]
        "file" => {
            let settings: leadsync_file::FileSettings = connection(t)?;
            let mapping = mapping(t, leadsync_file::default_mapping())?;
            let columns = mapping.rules.iter().map(|r| r.crm_field.clone()).collect();
            let c = leadsync_file::FileConnector::try_new(settings, &t.base_dir, columns)
                .map_err(|e| error(t, "connection.path", e.to_string()))?;
            Ok((Arc::new(c), mapping))
        }
        #[cfg(feature = "https")]
        "https" => {
            let settings: leadsync_https::HttpsSettings = connection(t)?;
            if !settings.uses_mapping() && !t.mapping_fields.is_empty() {
                return Err(error(
                    t,
                    "mapping.fields",
                    "the marketplace body is fixed and uses no mapping; set connection.body = \"mapped\" to send mapped fields",
                ));
            }
            let mapping = mapping(t, leadsync_https::default_mapping(&settings))?;
            let c = leadsync_https::HttpsConnector::try_new(settings, &t.base_dir)
                .map_err(|e| error(t, e.key(), e.to_string()))?;
            Ok((Arc::new(c), mapping))
        }
        #[cfg(feature = "dynamics")]
        "dynamics" => {
            let settings: leadsync_dynamics::DynamicsSettings = connection(t)?;
            let mapping = mapping(t, leadsync_dynamics::default_mapping(&settings))?;
            let fields = mapping.rules.iter().map(|r| r.crm_field.clone()).collect();
            let c = leadsync_dynamics::DynamicsConnector::try_new(settings, &t.base_dir)
                .map_err(|e| error(t, format!("connection.{}", e.key()), e.to_string()))?
                .with_batch_size(t.limits.batch_size)
                .with_mapped_fields(fields);
            Ok((Arc::new(c), mapping))
        }
        #[cfg(feature = "salesforce")]
        "salesforce" => {
            let settings: leadsync_salesforce::SalesforceSettings = connection(t)?;
            let mapping = mapping(t, leadsync_salesforce::default_mapping(&settings))?;
            let c = leadsync_salesforce::SalesforceConnector::try_new(settings, &t.base_dir)
                .map_err(|e| error(t, e.key.clone(), e.message))?
                .with_mapping(mapping.clone());
            Ok((Arc::new(c), mapping))
        }
        #[cfg(feature = "azure-table")]
        "azure_table" => {
            let settings: leadsync_azure_table::AzureTableSettings = connection(t)?;
            let mapping = mapping(t, leadsync_azure_table::default_mapping(&settings))?;
            for r in &mapping.rules {
                leadsync_azure_table::check_property_name(&r.crm_field)
                    .map_err(|m| error(t, format!("mapping.fields.{}", r.crm_field), m))?;
            }
            let c = leadsync_azure_table::AzureTableConnector::try_new(settings, &t.base_dir)
                .map_err(|e| error(t, format!("connection.{}", e.key), e.message))?
                .with_target_name(&t.name);
            Ok((Arc::new(c), mapping))
        }
        other => Err(error(
            t,
            "kind",
            format!(
                "unknown target kind {other:?}; this build knows {}",
                KNOWN_KINDS.join(", ")
            ),
        )),
    }
}

/// Build a ready target from its settings.
pub fn build_target(
    t: &TargetSettings,
    default_lease: Duration,
) -> Result<Target, TargetBuildError> {
    let (connector, mapping) = connector(t)?;
    let max = connector.max_batch().max(1);
    let batch_size = t.limits.batch_size.unwrap_or(max);
    if batch_size > max {
        return Err(error(
            t,
            "limits.batch_size",
            format!("{batch_size} is over this connector's maximum batch of {max}"),
        ));
    }
    Ok(Target {
        name: t.name.clone(),
        field_limits: connector.field_limits(),
        connector,
        mapping,
        filter: t.filter.clone(),
        key_scope: t.key_scope,
        key_namespace: t.key_namespace.clone(),
        batch_size,
        concurrency: t.limits.concurrency.max(1),
        max_age: t.limits.max_age,
        lease: t.limits.lease.unwrap_or(default_lease),
        retry: t.retry,
    })
}
