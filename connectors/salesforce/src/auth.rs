//! How the Salesforce target gets its access token: the OAuth 2.0 client-credentials grant
//! (a form POST, [`FormTokenSource`]) or the JWT bearer grant (`JwtTokenSource`: an RS256
//! assertion signed with the connected app's key, fresh for every token request), both
//! against `<login_url>/services/oauth2/token`. `token_source` picks one from the settings
//! and reads the secrets it needs.
//!
//! The token cache around the source (reuse, one refresh on `INVALID_SESSION_ID`) is
//! `leadsync_core::oauth::TokenCache`, not this module. Secrets and assertions stay inside
//! [`Secret`]s and request bodies: nothing here logs.

use async_trait::async_trait;
use leadsync_core::jwt::RsaSigner;
use leadsync_core::oauth::{AccessToken, FormTokenSource, TokenError, TokenSource};
use leadsync_core::{FailureClass, Secret};
use reqwest::Url;
use serde_json::json;
use std::path::Path;
use std::time::Duration;

use crate::settings::{AuthKind, SalesforceError, SalesforceSettings};

/// The grant type of the JWT bearer flow.
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// The JWT bearer grant: a fresh assertion signed for every token request.
struct JwtTokenSource {
    client: reqwest::Client,
    url: Url,
    signer: RsaSigner,
    client_id: Secret,
    username: String,
    audience: String,
    default_lifetime: Duration,
}

#[async_trait]
impl TokenSource for JwtTokenSource {
    async fn fetch(&self) -> Result<AccessToken, TokenError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        // Salesforce accepts `exp` at most 3 minutes ahead.
        let claims = json!({
            "iss": self.client_id.expose(),
            "sub": self.username,
            "aud": self.audience,
            "exp": now + 150,
        });
        let assertion = self.signer.sign(&claims).map_err(|e| TokenError {
            class: FailureClass::Rejected,
            code: "token_jwt_signing".into(),
            message: e.to_string(),
            retry_after: None,
        })?;
        FormTokenSource {
            client: self.client.clone(),
            url: self.url.clone(),
            form: vec![
                ("grant_type".into(), Secret::new(JWT_BEARER_GRANT)),
                ("assertion".into(), Secret::new(assertion)),
            ],
            default_lifetime: self.default_lifetime,
        }
        .fetch()
        .await
    }
}

/// The token source `settings.auth` asks for, with the resolved `client_id` and the secrets
/// the settings reference (read from `base_dir`). No network.
pub(crate) fn token_source(
    settings: &SalesforceSettings,
    client: &reqwest::Client,
    token_url: &Url,
    client_id: Secret,
    session_lifetime: Duration,
    base_dir: &Path,
) -> Result<Box<dyn TokenSource>, SalesforceError> {
    let source: Box<dyn TokenSource> = match settings.auth {
        AuthKind::ClientCredentials => {
            let secret = settings
                .client_secret
                .as_ref()
                .ok_or_else(|| {
                    SalesforceError::new(
                        "client_secret",
                        "required with auth = \"client_credentials\"",
                    )
                })?
                .resolve(base_dir)
                .map_err(|e| SalesforceError::new("client_secret", e.to_string()))?;
            Box::new(FormTokenSource {
                client: client.clone(),
                url: token_url.clone(),
                form: vec![
                    ("grant_type".into(), Secret::new("client_credentials")),
                    ("client_id".into(), client_id),
                    ("client_secret".into(), secret),
                ],
                default_lifetime: session_lifetime,
            })
        }
        AuthKind::JwtBearer => {
            let username = settings
                .username
                .clone()
                .filter(|u| !u.trim().is_empty())
                .ok_or_else(|| {
                    SalesforceError::new("username", "required with auth = \"jwt_bearer\"")
                })?;
            let key = settings
                .private_key
                .as_ref()
                .ok_or_else(|| {
                    SalesforceError::new("private_key", "required with auth = \"jwt_bearer\"")
                })?
                .resolve(base_dir)
                .map_err(|e| SalesforceError::new("private_key", e.to_string()))?;
            let signer = RsaSigner::from_pem(key.expose(), None)
                .map_err(|e| SalesforceError::new("private_key", e.to_string()))?;
            if settings.client_secret.is_some() {
                return Err(SalesforceError::new(
                    "client_secret",
                    "not used with auth = \"jwt_bearer\"; remove it",
                ));
            }
            Box::new(JwtTokenSource {
                client: client.clone(),
                url: token_url.clone(),
                signer,
                client_id,
                username,
                audience: settings.audience.clone(),
                default_lifetime: session_lifetime,
            })
        }
    };
    Ok(source)
}
