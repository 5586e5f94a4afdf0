//! The Marketo target: leads written to Marketo Engage through the REST API's Sync Leads
//! call (`POST /rest/v1/leads.json`, `createOrUpdate`), looked up by e-mail or by a custom
//! unique field holding leadsync's idempotency key (`spec/crm-apis.md` §4; Marketo is one
//! of the marketplace's own lead destinations, `spec/marketplace-leads.md` §6).
//!
//! It owns the Marketo wire protocol: the client-credentials token from the Identity
//! endpoint (reused until it expires; a 601/602 answer refreshes it once), Sync Leads with
//! up to 300 records a call, per-record results, and the response-level error codes that
//! Marketo sends with HTTP 200. Marketo's own limits (100 calls per 20 s, 10 at once) are
//! kept by a pacer from core (`leadsync_core::pace`), and writes that share a lookup value
//! never run at once (`leadsync_core::serial`: Marketo documents that concurrent upserts
//! of one key can create duplicates).
//!
//! It must not retry in time (the pipeline does), and never logs a field value, a Marketo
//! message or a token: only counts, codes and statuses.
//!
//! The crate by concern: `settings` (the `[connection]` type, defaults, default mapping),
//! `rest` (one paced, authenticated call and its response envelope), `classify` (Marketo's
//! codes into failure classes), `push` (Sync Leads) and `check` (`check --connect`). This
//! file holds the connector itself: [`build`], the registry's only way in, and
//! [`MarketoConnector::try_new`] beneath it.

mod check;
mod classify;
mod push;
mod rest;
mod settings;

use async_trait::async_trait;
use leadsync_core::http::{build_client, parse_service_url};
use leadsync_core::oauth::{FormTokenSource, TokenCache};
use leadsync_core::pace::CallPacer;
use leadsync_core::serial::KeyLocks;
use leadsync_core::{
    BuildContext, BuildError, CheckError, CheckReport, Connector, DeliveryFailure, DeliveryOutcome,
    FieldLimit, FieldRule, Mapping, OutboundRecord, Secret,
};
use reqwest::Url;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use classify::next_quota_reset;
pub use push::MAX_BATCH;
pub use settings::{
    default_mapping, lead_field_limits, MarketoError, MarketoSettings, DEFAULT_DESCRIPTION_FIELD,
    DEFAULT_DESCRIPTION_TEMPLATE,
};

use settings::{valid_field_name, valid_munchkin_id};

/// Build a Marketo target from its settings (the registry's entry for kind `marketo`).
pub fn build(ctx: &BuildContext<'_>) -> Result<Arc<dyn Connector>, BuildError> {
    let settings: MarketoSettings = ctx.settings()?;
    let mapping = ctx.mapping(default_mapping(&settings));
    let mut connector = MarketoConnector::try_new(settings, ctx.base_dir)
        .map_err(|e| BuildError::new(e.key, e.message))?;
    connector.mapping = mapping;
    Ok(Arc::new(connector))
}

/// A Marketo target.
pub struct MarketoConnector {
    client: reqwest::Client,
    tokens: TokenCache,
    /// `<endpoint>/rest/`.
    rest_url: Url,
    lookup_field: String,
    partition_name: Option<String>,
    opt_out_fields: Vec<String>,
    field_limits: Vec<FieldLimit>,
    pacer: CallPacer,
    key_locks: KeyLocks,
    mapping: Mapping,
}

impl MarketoConnector {
    /// Validate the settings, read the secrets and build the HTTP client. No network.
    pub fn try_new(settings: MarketoSettings, base_dir: &Path) -> Result<Self, MarketoError> {
        let endpoint = endpoint(&settings)?;
        let join = |path: &str| {
            endpoint
                .join(path)
                .map_err(|e| MarketoError::new("endpoint", e.to_string()))
        };
        let (token_url, rest_url) = (join("identity/oauth/token")?, join("rest/")?);
        for (key, name) in std::iter::once(("lookup_field", &settings.lookup_field))
            .chain(std::iter::once((
                "description_field",
                &settings.description_field,
            )))
            .chain(
                settings
                    .opt_out_fields
                    .iter()
                    .map(|f| ("opt_out_fields", f)),
            )
        {
            if !valid_field_name(name) {
                return Err(MarketoError::new(
                    key,
                    format!("expected a Marketo REST field name such as \"email\", found {name:?}"),
                ));
            }
        }
        if let Err(e) =
            FieldRule::template(&settings.description_field, &settings.description_template)
        {
            return Err(MarketoError::new("description_template", e.reason));
        }
        let pacer = CallPacer::from_settings(
            settings.calls_per_window,
            &settings.window,
            settings.max_in_flight,
        )
        .map_err(|(key, message)| MarketoError::new(key, message))?;
        let client = build_client(&settings.http, base_dir)
            .map_err(|e| MarketoError::new("http", e.to_string()))?;
        let secret = |key: &str, r: &leadsync_core::SecretRef| {
            r.resolve(base_dir)
                .map_err(|e| MarketoError::new(key, e.to_string()))
        };
        let source = FormTokenSource {
            client: client.clone(),
            url: token_url,
            form: vec![
                ("grant_type".into(), Secret::new("client_credentials")),
                (
                    "client_id".into(),
                    secret("client_id", &settings.client_id)?,
                ),
                (
                    "client_secret".into(),
                    secret("client_secret", &settings.client_secret)?,
                ),
            ],
            default_lifetime: Duration::from_secs(3600),
        };
        Ok(MarketoConnector {
            client,
            // Marketo hands out the same token until it expires, with the lifetime left:
            // renewing early would only fetch it again, so use it to the end and refresh
            // on 601/602.
            tokens: TokenCache::with_margin(Box::new(source), Duration::ZERO),
            rest_url,
            lookup_field: settings.lookup_field.clone(),
            partition_name: settings.partition_name.clone(),
            opt_out_fields: settings.opt_out_fields.clone(),
            field_limits: lead_field_limits(&settings),
            pacer,
            key_locks: KeyLocks::new(),
            mapping: default_mapping(&settings),
        })
    }

    /// Whether the lookup field is the e-mail (else a custom field holding the key).
    fn looks_up_by_email(&self) -> bool {
        self.lookup_field.eq_ignore_ascii_case("email")
    }
}

/// `endpoint`, else `https://<munchkin_id>.mktorest.com`, as a base ending in `/`.
fn endpoint(settings: &MarketoSettings) -> Result<Url, MarketoError> {
    let raw = match (&settings.endpoint, &settings.munchkin_id) {
        (Some(e), None) => e.trim().trim_end_matches('/').trim_end_matches("/rest").to_string(),
        (None, Some(m)) if valid_munchkin_id(m.trim()) => {
            format!("https://{}.mktorest.com", m.trim())
        }
        (None, Some(m)) => {
            return Err(MarketoError::new(
                "munchkin_id",
                format!("expected a Munchkin id such as \"123-ABC-456\", found {m:?}"),
            ))
        }
        (Some(_), Some(_)) => {
            return Err(MarketoError::new(
                "endpoint",
                "set either endpoint or munchkin_id, not both",
            ))
        }
        (None, None) => {
            return Err(MarketoError::new(
                "endpoint",
                "required (or munchkin_id): the REST endpoint from Admin → Web Services, e.g. \"https://123-ABC-456.mktorest.com\"",
            ))
        }
    };
    parse_service_url(&format!("{raw}/")).map_err(|reason| MarketoError::new("endpoint", reason))
}

#[async_trait]
impl Connector for MarketoConnector {
    fn kind(&self) -> &'static str {
        "marketo"
    }

    fn max_batch(&self) -> usize {
        MAX_BATCH
    }

    fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    fn field_limits(&self) -> Vec<FieldLimit> {
        self.field_limits.clone()
    }

    async fn check(&self, connect: bool) -> Result<CheckReport, CheckError> {
        self.check_instance(connect).await
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
}
