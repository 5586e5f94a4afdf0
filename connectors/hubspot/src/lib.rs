//! The HubSpot target: marketplace leads upserted as HubSpot contacts through the CRM v3
//! batch upsert (`POST /crm/v3/objects/contacts/batch/upsert`), matched on `email` or on a
//! custom unique property holding leadsync's idempotency key (`spec/crm-apis.md` §5).
//!
//! It owns the HubSpot wire protocol: the private app's static token (a 401 means the
//! token is wrong or revoked, not stale: the target is down until an operator fixes it),
//! batch upserts of up to 100 inputs, the 207 multi-status answer whose errors name the
//! inputs they belong to, a batch refused as a whole for one bad input (split until the bad
//! one stands alone, so the good ones are delivered), and 429 with HubSpot's rate-limit
//! policies and headers. The portal's burst limit is kept by a pacer from core
//! (`leadsync_core::pace`); writes that share an id value never run at once
//! (`leadsync_core::serial`).
//!
//! It must not retry in time (the pipeline does), and never logs a property value, a
//! HubSpot message or the token: only counts, codes and statuses.
//!
//! The crate by concern: `settings` (the `[connection]` type, defaults, default mapping),
//! `rest` (one paced, authenticated call and the rate-limit headers it reads), `classify`
//! (HubSpot's answers into failure classes), `push` (batch upserts) and `check`
//! (`check --connect`). This file holds the connector itself: [`build`], the registry's
//! only way in, and [`HubSpotConnector::try_new`] beneath it.

mod check;
mod classify;
mod push;
mod rest;
mod settings;

use async_trait::async_trait;
use leadsync_core::http::{build_client, parse_service_url};
use leadsync_core::pace::CallPacer;
use leadsync_core::serial::KeyLocks;
use leadsync_core::{
    BuildContext, BuildError, CheckError, CheckReport, Connector, DeliveryFailure, DeliveryOutcome,
    FieldRule, Mapping, OutboundRecord, Secret,
};
use reqwest::Url;
use std::path::Path;
use std::sync::{Arc, Mutex};

pub use push::MAX_BATCH;
pub use rest::DailyUsage;
pub use settings::{
    default_mapping, HubSpotError, HubSpotSettings, DEFAULT_DESCRIPTION_PROPERTY,
    DEFAULT_DESCRIPTION_TEMPLATE,
};

use settings::valid_property_name;

/// Build a HubSpot target from its settings (the registry's entry for kind `hubspot`).
pub fn build(ctx: &BuildContext<'_>) -> Result<Arc<dyn Connector>, BuildError> {
    let settings: HubSpotSettings = ctx.settings()?;
    let mapping = ctx.mapping(default_mapping(&settings));
    let mut connector = HubSpotConnector::try_new(settings, ctx.base_dir)
        .map_err(|e| BuildError::new(e.key, e.message))?;
    connector.mapping = mapping;
    Ok(Arc::new(connector))
}

/// A HubSpot target.
pub struct HubSpotConnector {
    client: reqwest::Client,
    token: Secret,
    /// The API base, ending in `/`.
    base_url: Url,
    id_property: String,
    do_not_contact_property: Option<String>,
    pacer: CallPacer,
    key_locks: KeyLocks,
    mapping: Mapping,
    daily: Mutex<Option<DailyUsage>>,
}

impl HubSpotConnector {
    /// Validate the settings, read the token and build the HTTP client. No network.
    pub fn try_new(settings: HubSpotSettings, base_dir: &Path) -> Result<Self, HubSpotError> {
        let base = format!("{}/", settings.base_url.trim().trim_end_matches('/'));
        let base_url =
            parse_service_url(&base).map_err(|reason| HubSpotError::new("base_url", reason))?;
        let names = [
            ("id_property", Some(&settings.id_property)),
            ("description_property", Some(&settings.description_property)),
            (
                "do_not_contact_property",
                settings.do_not_contact_property.as_ref(),
            ),
        ];
        for (key, name) in names {
            if let Some(name) = name.filter(|n| !valid_property_name(n)) {
                return Err(HubSpotError::new(
                    key,
                    format!(
                        "expected a property's internal name such as \"email\" (lower case, digits, _), found {name:?}"
                    ),
                ));
            }
        }
        if let Err(e) = FieldRule::template(
            &settings.description_property,
            &settings.description_template,
        ) {
            return Err(HubSpotError::new("description_template", e.reason));
        }
        let pacer = CallPacer::from_settings(
            settings.calls_per_window,
            &settings.window,
            settings.max_in_flight,
        )
        .map_err(|(key, message)| HubSpotError::new(key, message))?;
        let client = build_client(&settings.http, base_dir)
            .map_err(|e| HubSpotError::new("http", e.to_string()))?;
        let token = settings
            .access_token
            .resolve(base_dir)
            .map_err(|e| HubSpotError::new("access_token", e.to_string()))?;
        Ok(HubSpotConnector {
            client,
            token,
            base_url,
            id_property: settings.id_property.clone(),
            do_not_contact_property: settings.do_not_contact_property.clone(),
            pacer,
            key_locks: KeyLocks::new(),
            mapping: default_mapping(&settings),
            daily: Mutex::new(None),
        })
    }

    /// Whether contacts are matched on e-mail (else on a custom property holding the key).
    fn matches_on_email(&self) -> bool {
        self.id_property == "email"
    }
}

#[async_trait]
impl Connector for HubSpotConnector {
    fn kind(&self) -> &'static str {
        "hubspot"
    }

    fn max_batch(&self) -> usize {
        MAX_BATCH
    }

    fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    fn status_note(&self) -> Option<String> {
        self.last_daily_usage()
            .map(|d| format!("HubSpot API calls left today: {} of {}", d.remaining, d.max))
    }

    async fn check(&self, connect: bool) -> Result<CheckReport, CheckError> {
        self.check_portal(connect).await
    }

    /// While the target is down: one cheap authenticated read (the id property's
    /// definition). A static token has no token endpoint to ask.
    async fn probe(&self) -> Option<Result<(), DeliveryFailure>> {
        let path = format!("crm/v3/properties/contacts/{}", self.id_property);
        Some(
            self.call(reqwest::Method::GET, &path, None)
                .await
                .map(|_| ()),
        )
    }

    async fn push(&self, batch: &[OutboundRecord]) -> Vec<DeliveryOutcome> {
        self.push_batch(batch).await
    }
}
