//! The Dynamics 365 / Dataverse target (`kind = "dynamics"`): leads written to the `lead`
//! table through the Dataverse Web API (spec `crm-apis.md` §1).
//!
//! It owns: Entra ID client-credentials auth (client secret or certificate assertion; one
//! token cache per target, renewed before expiry and once on a 401), idempotent writes
//! (upsert by an alternate key holding the idempotency key, or, in create-only mode, a
//! create that is never repeated after an ambiguous failure without first looking the lead
//! up by its key column), `$batch` with `Prefer: odata.continue-on-error`, the default
//! `lead` mapping, and the classification of every Dataverse answer into a failure class.
//!
//! It must not sleep, schedule or retry in time (the pipeline does), and never logs bodies,
//! field values, tokens or query strings: only counts, status codes and error codes.
//!
//! The crate by concern: `settings` (the `[connection]` types, defaults, default mapping,
//! column lengths, batch limits), [`auth`] (Entra ID tokens), `push` (the writes and the
//! requests they are made of), [`batch`] (the `$batch` wire format), `classify` (every
//! answer into an outcome or failure class) and `check` (`check --connect`). This file holds
//! the connector itself: [`build`], the registry's only way in, and
//! [`DynamicsConnector::try_new`] beneath it.

pub mod auth;
pub mod batch;
mod check;
mod classify;
mod push;
mod settings;

use async_trait::async_trait;
use leadsync_core::http::build_client;
use leadsync_core::oauth::TokenCache;
use leadsync_core::{
    BuildContext, BuildError, CheckError, CheckReport, Connector, DeliveryFailure, DeliveryOutcome,
    FieldLimit, Mapping, OutboundRecord, PreparedBatch,
};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

pub use classify::{classify, THROTTLE_CODES};
pub use push::{odata_literal, DO_NOT_CONTACT_FIELDS};
pub use settings::{
    default_lead_quality, default_mapping, DynamicsError, DynamicsSettings, WriteMode,
    DEFAULT_BATCH, LEAD_LIMITS, MAX_BATCH,
};

use push::BatchRequest;
use settings::parse_url;

/// Build a Dynamics 365 target from its settings (the registry's entry for kind `dynamics`):
/// the only way a target's own mapping and `[limits] batch_size` get in.
pub fn build(ctx: &BuildContext<'_>) -> Result<Arc<dyn Connector>, BuildError> {
    let settings: DynamicsSettings = ctx.settings()?;
    let mapping = ctx.mapping(default_mapping(&settings));
    let mut connector = DynamicsConnector::try_new(settings, ctx.base_dir)
        .map_err(|e| BuildError::in_connection(&e.key, e.reason))?;
    // Leads per push (one `$batch`). Absent: DEFAULT_BATCH; above MAX_BATCH the registry
    // reports it as over the maximum.
    connector.batch_size = ctx.batch_size.unwrap_or(DEFAULT_BATCH).clamp(1, MAX_BATCH);
    connector.mapping = mapping;
    Ok(Arc::new(connector))
}

/// A Dataverse target.
pub struct DynamicsConnector {
    client: reqwest::Client,
    /// `{url}/api/data/{version}`, no trailing slash.
    api: String,
    org: reqwest::Url,
    api_version: String,
    token_url: reqwest::Url,
    client_id: String,
    auth_kind: &'static str,
    tokens: Arc<TokenCache>,
    key_column: String,
    mode: WriteMode,
    lead_quality: BTreeMap<String, i64>,
    /// Leads per push: [`DEFAULT_BATCH`] from `try_new`, `[limits] batch_size` from [`build`].
    batch_size: usize,
    /// The effective mapping, whose CRM fields `check --connect` verifies: empty from
    /// `try_new`, the default mapping with the target's `[mapping]` from [`build`].
    mapping: Mapping,
}

impl DynamicsConnector {
    /// Validate the settings, read the secrets and build the HTTP client and token source.
    pub fn try_new(settings: DynamicsSettings, base_dir: &Path) -> Result<Self, DynamicsError> {
        let org = parse_url("url", &settings.url)?;
        let org_str = org.as_str().trim_end_matches('/').to_string();
        if settings.tenant_id.trim().is_empty() || settings.tenant_id.contains(['/', '?', '#', ' '])
        {
            return Err(DynamicsError::new(
                "tenant_id",
                "expected a tenant GUID or domain name",
            ));
        }
        if settings.client_id.trim().is_empty() {
            return Err(DynamicsError::new("client_id", "must not be empty"));
        }
        let v = &settings.api_version;
        if !(v.starts_with("v9.") && v[3..].chars().all(|c| c.is_ascii_digit()) && v.len() > 3) {
            return Err(DynamicsError::new(
                "api_version",
                format!("expected a Web API version such as \"v9.2\", found {v:?}"),
            ));
        }
        let kc = &settings.key_column;
        if kc.is_empty()
            || !kc
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(DynamicsError::new(
                "key_column",
                format!(
                    "expected a column logical name (lower-case letters, digits, _), found {kc:?}"
                ),
            ));
        }
        let token_url = match &settings.token_url {
            Some(t) => parse_url("token_url", t)?,
            None => {
                let a = parse_url("authority", &settings.authority)?;
                let s = format!(
                    "{}/{}/oauth2/v2.0/token",
                    a.as_str().trim_end_matches('/'),
                    settings.tenant_id.trim()
                );
                parse_url("authority", &s)?
            }
        };
        let scope = settings
            .scope
            .clone()
            .unwrap_or_else(|| format!("{org_str}/.default"));
        let mut lead_quality = default_lead_quality();
        for (k, v) in &settings.lead_quality {
            lead_quality.insert(k.to_ascii_lowercase(), *v);
        }
        let client = build_client(&settings.http, base_dir)
            .map_err(|e| DynamicsError::new("http", e.to_string()))?;
        let (source, auth_kind) =
            auth::token_source(&settings, &client, &token_url, scope, base_dir)?;
        Ok(DynamicsConnector {
            client,
            api: format!("{org_str}/api/data/{}", settings.api_version),
            org,
            api_version: settings.api_version,
            token_url,
            client_id: settings.client_id,
            auth_kind,
            tokens: Arc::new(TokenCache::new(source)),
            key_column: settings.key_column,
            mode: settings.mode,
            lead_quality,
            batch_size: DEFAULT_BATCH,
            mapping: Mapping::default(),
        })
    }

    pub fn mode(&self) -> WriteMode {
        self.mode
    }
}

#[async_trait]
impl Connector for DynamicsConnector {
    fn kind(&self) -> &'static str {
        "dynamics"
    }

    fn max_batch(&self) -> usize {
        self.batch_size
    }

    fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    fn field_limits(&self) -> Vec<FieldLimit> {
        LEAD_LIMITS
            .iter()
            .map(|(f, n)| FieldLimit {
                field: f.to_string(),
                max_chars: *n,
            })
            .collect()
    }

    async fn check(&self, connect: bool) -> Result<CheckReport, CheckError> {
        self.check_environment(connect).await
    }

    /// While the target is down: one token request (the cached token if it is still good).
    async fn probe(&self) -> Option<Result<(), DeliveryFailure>> {
        Some(
            self.tokens
                .get()
                .await
                .map(|_| ())
                .map_err(|e| e.to_failure()),
        )
    }

    async fn push(&self, batch: &[OutboundRecord]) -> Vec<DeliveryOutcome> {
        self.push_batch(batch, None).await
    }

    /// An upsert batch's `$batch` request, written out while other requests are in flight.
    fn prepare(&self, batch: &[OutboundRecord]) -> Option<PreparedBatch> {
        self.prepared_upsert(batch)
            .map(|request| PreparedBatch::new(batch, request))
    }

    async fn push_prepared(
        &self,
        batch: &[OutboundRecord],
        prepared: PreparedBatch,
    ) -> Vec<DeliveryOutcome> {
        let request = prepared.take_for::<BatchRequest>(batch);
        self.push_batch(batch, request).await
    }
}
