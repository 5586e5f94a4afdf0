//! The one place connectors are registered: a table of target kind → the connector crate's
//! `build` function (core's [`BuildFn`] contract), and the step that turns a target's checked
//! settings into a ready [`Target`] through it.
//!
//! Adding a CRM is adding a crate under `connectors/` and one line in [`KINDS`].

use leadsync_core::{BuildContext, BuildFn};
use std::time::Duration;

use crate::config::TargetSettings;
use crate::pipeline::Target;

/// One target kind this build can run.
#[derive(Clone, Copy)]
pub struct ConnectorKind {
    /// The `kind = "…"` of a target file.
    pub name: &'static str,
    pub build: BuildFn,
}

/// The target kinds of this build, by Cargo feature.
pub const KINDS: &[ConnectorKind] = &[
    #[cfg(feature = "file")]
    ConnectorKind {
        name: "file",
        build: leadsync_file::build,
    },
    #[cfg(feature = "https")]
    ConnectorKind {
        name: "https",
        build: leadsync_https::build,
    },
    #[cfg(feature = "dynamics")]
    ConnectorKind {
        name: "dynamics",
        build: leadsync_dynamics::build,
    },
    #[cfg(feature = "salesforce")]
    ConnectorKind {
        name: "salesforce",
        build: leadsync_salesforce::build,
    },
    #[cfg(feature = "azure-table")]
    ConnectorKind {
        name: "azure_table",
        build: leadsync_azure_table::build,
    },
    #[cfg(feature = "marketo")]
    ConnectorKind {
        name: "marketo",
        build: leadsync_marketo::build,
    },
    #[cfg(feature = "hubspot")]
    ConnectorKind {
        name: "hubspot",
        build: leadsync_hubspot::build,
    },
    #[cfg(feature = "notify")]
    ConnectorKind {
        name: "email",
        build: leadsync_notify::build_email,
    },
    #[cfg(feature = "notify")]
    ConnectorKind {
        name: "teams",
        build: leadsync_notify::build_teams,
    },
    #[cfg(feature = "notify")]
    ConnectorKind {
        name: "slack",
        build: leadsync_notify::build_slack,
    },
];

/// The names of this build's target kinds, for the configuration check and its messages.
pub fn known_kinds() -> Vec<&'static str> {
    KINDS.iter().map(|k| k.name).collect()
}

/// A target that could not be built, naming its file and key.
#[derive(Debug, thiserror::Error)]
#[error("{file}: key `{key}`: {message}")]
pub struct TargetBuildError {
    pub file: String,
    pub key: String,
    pub message: String,
}

/// Build a ready target from its settings with this build's connectors.
pub fn build_target(
    t: &TargetSettings,
    default_lease: Duration,
) -> Result<Target, TargetBuildError> {
    build_target_from(KINDS, t, default_lease)
}

/// Build a ready target with the connector `kinds` offer (tests register their own).
pub fn build_target_from(
    kinds: &[ConnectorKind],
    t: &TargetSettings,
    default_lease: Duration,
) -> Result<Target, TargetBuildError> {
    let error = |key: String, message: String| TargetBuildError {
        file: t.file.display().to_string(),
        key,
        message,
    };
    let kind = kinds.iter().find(|k| k.name == t.kind).ok_or_else(|| {
        error(
            "kind".into(),
            format!(
                "unknown target kind {:?}; this build knows {}",
                t.kind,
                kinds.iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
            ),
        )
    })?;
    let context = BuildContext {
        target: &t.name,
        connection: &t.connection,
        base_dir: &t.base_dir,
        mapping: &t.mapping,
        batch_size: t.limits.batch_size,
    };
    let connector = (kind.build)(&context).map_err(|e| error(e.key, e.message))?;
    let max = connector.max_batch().max(1);
    let batch_size = t.limits.batch_size.unwrap_or(max);
    if batch_size > max {
        return Err(error(
            "limits.batch_size".into(),
            format!("{batch_size} is over this connector's maximum batch of {max}"),
        ));
    }
    Ok(Target {
        name: t.name.clone(),
        field_limits: connector.field_limits(),
        mapping: connector.mapping().clone(),
        connector,
        filter: t.filter.clone(),
        key_scope: t.key_scope,
        key_namespace: t.key_namespace.clone(),
        batch_size,
        concurrency: t.limits.concurrency.max(),
        adaptive: t.limits.concurrency.is_adaptive(),
        max_stalled: t
            .limits
            .max_stalled
            .unwrap_or(2 * t.limits.concurrency.max()),
        max_age: t.limits.max_age,
        lease: t.limits.lease.unwrap_or(default_lease),
        retry: t.retry,
        digest: t.digest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use leadsync_core::{
        BuildError, CheckError, CheckReport, Connector, DeliveryOutcome, FieldRule, Mapping,
        OutboundRecord,
    };
    use std::sync::Arc;

    /// A throwaway kind: delivers everything, maps `Email` by default.
    struct Echo(Mapping);

    #[async_trait]
    impl Connector for Echo {
        fn kind(&self) -> &'static str {
            "echo"
        }
        fn max_batch(&self) -> usize {
            10
        }
        fn mapping(&self) -> &Mapping {
            &self.0
        }
        async fn check(&self, _connect: bool) -> Result<CheckReport, CheckError> {
            Ok(CheckReport::default())
        }
        async fn push(&self, batch: &[OutboundRecord]) -> Vec<DeliveryOutcome> {
            vec![DeliveryOutcome::delivered(None, Some(true)); batch.len()]
        }
    }

    fn build_echo(ctx: &BuildContext<'_>) -> Result<Arc<dyn Connector>, BuildError> {
        if ctx.connection.get("fail").is_some() {
            return Err(BuildError::new("connection.fail", "asked to fail"));
        }
        let defaults = Mapping::new(vec![FieldRule::field("Email", "email")
            .map_err(|e| BuildError::new("mapping", e.to_string()))?]);
        Ok(Arc::new(Echo(ctx.mapping(defaults))))
    }

    const ECHO: &[ConnectorKind] = &[ConnectorKind {
        name: "echo",
        build: build_echo,
    }];

    fn settings(target_toml: &str) -> crate::config::Settings {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("targets")).unwrap();
        std::fs::write(
            dir.path().join("leadsync.toml"),
            "[ledger]\npath = \"l.db\"\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("targets/crm.toml"), target_toml).unwrap();
        crate::config::load(&dir.path().join("leadsync.toml"), &["echo"]).unwrap()
    }

    #[test]
    fn a_new_kind_registers_through_the_build_contract() {
        let s = settings(
            "kind = \"echo\"\n[connection]\n[mapping.fields]\nCompany = \"company\"\n\
             [limits]\nbatch_size = 5\n",
        );
        let t = build_target_from(ECHO, &s.targets[0], Duration::from_secs(60)).unwrap();
        assert_eq!(t.connector.kind(), "echo");
        assert_eq!(t.batch_size, 5);
        let fields: Vec<&str> = t
            .mapping
            .rules
            .iter()
            .map(|r| r.crm_field.as_str())
            .collect();
        assert_eq!(
            fields,
            ["Email", "Company"],
            "defaults plus the target's mapping"
        );
    }

    #[test]
    fn build_errors_name_the_file_and_key() {
        let s = settings("kind = \"echo\"\n[connection]\nfail = true\n");
        let e = build_target_from(ECHO, &s.targets[0], Duration::from_secs(60))
            .err()
            .unwrap();
        assert_eq!(e.key, "connection.fail");
        assert!(e.file.ends_with("crm.toml"), "{e}");
        let s = settings("kind = \"echo\"\n[connection]\n[limits]\nbatch_size = 11\n");
        let e = build_target_from(ECHO, &s.targets[0], Duration::from_secs(60))
            .err()
            .unwrap();
        assert_eq!(e.key, "limits.batch_size");
        let e = build_target_from(&[], &s.targets[0], Duration::from_secs(60))
            .err()
            .unwrap();
        assert_eq!(e.key, "kind");
    }
}
