//! The Salesforce target: leads upserted into `Lead` through the REST API on an External ID
//! field that carries leadsync's idempotency key (`spec/crm-apis.md` §2).
//!
//! It owns the Salesforce wire protocol: OAuth (client credentials against the org's My
//! Domain host, or the JWT bearer grant signed with an RSA key), the token and
//! `instance_url` it reuses until Salesforce says `INVALID_SESSION_ID`, the single-record
//! upsert (`PATCH .../sobjects/Lead/<Field>/<key>`) and the sObject Collections upsert
//! (`PATCH .../composite/sobjects/Lead/<Field>`, 200 records, `allOrNone=false`), and the
//! classification of every answer into one outcome per record. It reads the API quota from
//! `Sforce-Limit-Info` and keeps the last reading for `check` and `status`.
//!
//! It must not sleep or retry in time (the pipeline does), and it never logs a field value,
//! a Salesforce message (they echo values) or a token: only counts, statuses and codes.
//!
//! The crate by concern: `settings` (the `[connection]` types, defaults, default mapping
//! and field lengths), `auth` (the two OAuth grants), `rest` (one authenticated REST call
//! and the API usage it reports), `push` (the upserts), `classify` (every answer into a
//! failure class) and `check` (`check --connect`). This file holds the connector itself:
//! [`build`], the registry's only way in, and [`SalesforceConnector::try_new`] beneath it.

mod auth;
mod check;
mod classify;
mod push;
mod rest;
mod settings;

use async_trait::async_trait;
use leadsync_core::http::build_client;
use leadsync_core::oauth::TokenCache;
use leadsync_core::{
    BuildContext, BuildError, CheckError, CheckReport, Connector, DeliveryFailure, DeliveryOutcome,
    FieldLimit, FieldRule, Mapping, OutboundRecord, PreparedBatch,
};
use reqwest::Url;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use auth::JWT_BEARER_GRANT;
pub use push::MAX_BATCH;
pub use rest::ApiUsage;
pub use settings::{
    default_mapping, lead_field_limits, AuthKind, SalesforceError, SalesforceSettings,
    DEFAULT_DESCRIPTION_TEMPLATE,
};

use leadsync_core::http::is_https_or_loopback as acceptable_url;
use settings::{duration, valid_field_name};

/// Build a Salesforce target from its settings (the registry's entry for kind `salesforce`):
/// the only way a target's own mapping gets in.
pub fn build(ctx: &BuildContext<'_>) -> Result<Arc<dyn Connector>, BuildError> {
    let settings: SalesforceSettings = ctx.settings()?;
    let mapping = ctx.mapping(default_mapping(&settings));
    let mut connector = SalesforceConnector::try_new(settings, ctx.base_dir)
        .map_err(|e| BuildError::new(e.key, e.message))?;
    connector.mapping = mapping;
    Ok(Arc::new(connector))
}

/// A Salesforce target.
pub struct SalesforceConnector {
    client: reqwest::Client,
    tokens: TokenCache,
    login_url: Url,
    token_url: Url,
    auth: AuthKind,
    api_version: String,
    external_id_field: String,
    opt_out_fields: Vec<String>,
    request_limit_pause: Duration,
    /// The target's effective mapping, for `check --connect`: the default mapping from
    /// `try_new`, the target's own when [`build`] made the connector.
    mapping: Mapping,
    usage: Mutex<Option<ApiUsage>>,
}

impl SalesforceConnector {
    /// Validate the settings, read the secrets and build the HTTP client. No network.
    pub fn try_new(settings: SalesforceSettings, base_dir: &Path) -> Result<Self, SalesforceError> {
        let login_url = Url::parse(settings.login_url.trim_end_matches('/')).map_err(|e| {
            SalesforceError::new(
                "login_url",
                format!(
                    "expected the org's My Domain URL (https://<domain>.my.salesforce.com): {e}"
                ),
            )
        })?;
        if !acceptable_url(&login_url) {
            return Err(SalesforceError::new(
                "login_url",
                "must be an https:// URL (the org's My Domain)",
            ));
        }
        let token_url = login_url
            .join("/services/oauth2/token")
            .map_err(|e| SalesforceError::new("login_url", e.to_string()))?;
        let version_ok = settings
            .api_version
            .strip_prefix('v')
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(|v| v >= 46.0)
            && settings.api_version.contains('.');
        if !version_ok {
            return Err(SalesforceError::new(
                "api_version",
                format!(
                    "expected a REST API version such as \"v62.0\" (v46.0 or later, for collections upsert), found {:?}",
                    settings.api_version
                ),
            ));
        }
        if !valid_field_name(&settings.external_id_field) {
            return Err(SalesforceError::new(
                "external_id_field",
                format!(
                    "expected a field API name such as \"Leadsync_Key__c\", found {:?}",
                    settings.external_id_field
                ),
            ));
        }
        for f in &settings.opt_out_fields {
            if !valid_field_name(f) {
                return Err(SalesforceError::new(
                    "opt_out_fields",
                    format!("expected field API names, found {f:?}"),
                ));
            }
        }
        if let Err(e) = FieldRule::template("Description", &settings.description_template) {
            return Err(SalesforceError::new("description_template", e.reason));
        }
        let session_lifetime = duration("session_lifetime", &settings.session_lifetime)?;
        let request_limit_pause = duration("request_limit_pause", &settings.request_limit_pause)?;
        let client = build_client(&settings.http, base_dir)
            .map_err(|e| SalesforceError::new("http", e.to_string()))?;
        let client_id = settings
            .client_id
            .resolve(base_dir)
            .map_err(|e| SalesforceError::new("client_id", e.to_string()))?;
        let source = auth::token_source(
            &settings,
            &client,
            &token_url,
            client_id,
            session_lifetime,
            base_dir,
        )?;
        let mapping = default_mapping(&settings);
        Ok(SalesforceConnector {
            client,
            tokens: TokenCache::new(source),
            login_url,
            token_url,
            auth: settings.auth,
            api_version: settings.api_version,
            external_id_field: settings.external_id_field,
            opt_out_fields: settings.opt_out_fields,
            request_limit_pause,
            mapping,
            usage: Mutex::new(None),
        })
    }
}

#[async_trait]
impl Connector for SalesforceConnector {
    fn kind(&self) -> &'static str {
        "salesforce"
    }

    fn max_batch(&self) -> usize {
        MAX_BATCH
    }

    fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    fn field_limits(&self) -> Vec<FieldLimit> {
        lead_field_limits()
    }

    fn status_note(&self) -> Option<String> {
        self.last_api_usage().map(|u| {
            format!(
                "API requests in the last 24 h: {} of {} ({}%)",
                u.used,
                u.max,
                u.used.saturating_mul(100).checked_div(u.max).unwrap_or(0)
            )
        })
    }

    async fn check(&self, connect: bool) -> Result<CheckReport, CheckError> {
        self.check_org(connect).await
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
        self.push_batch(batch).await
    }

    /// A batch's collections upsert body, written while other requests are in flight.
    fn prepare(&self, batch: &[OutboundRecord]) -> Option<PreparedBatch> {
        self.prepared_collection(batch)
            .map(|body| PreparedBatch::new(batch, body))
    }

    async fn push_prepared(
        &self,
        batch: &[OutboundRecord],
        prepared: PreparedBatch,
    ) -> Vec<DeliveryOutcome> {
        let prepared = prepared.take_for::<push::PreparedCollection>(batch);
        self.push_prepared_collection(batch, prepared).await
    }
}
