//! Microsoft Entra ID client-credentials tokens for Dataverse (spec §1.1): with a client
//! secret ([`leadsync_core::oauth::FormTokenSource`]) or with a certificate, as a freshly
//! signed RS256 `client_assertion` per request ([`AssertionTokenSource`]); `token_source`
//! picks one from the settings and reads the secrets and PEM blocks it needs.
//!
//! The token cache around the source (renewal before expiry, one refresh on a 401) is
//! `leadsync_core::oauth::TokenCache`, not this module. Secrets and assertions stay inside
//! [`Secret`]s and request bodies; nothing here logs.

use async_trait::async_trait;
use leadsync_core::jwt::RsaSigner;
use leadsync_core::oauth::{AccessToken, FormTokenSource, TokenError, TokenSource};
use leadsync_core::{FailureClass, Secret, SecretRef};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::settings::{DynamicsError, DynamicsSettings};

pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How long a signed assertion is valid: Entra ID only needs it for the one request.
const ASSERTION_LIFETIME_SECS: u64 = 600;

/// The certificate flow: every fetch signs a new assertion
/// (`aud` = the token endpoint, `iss` = `sub` = the client id, a fresh `jti`).
pub struct AssertionTokenSource {
    pub client: reqwest::Client,
    pub url: reqwest::Url,
    pub client_id: String,
    pub scope: String,
    pub signer: RsaSigner,
    pub default_lifetime: Duration,
}

impl AssertionTokenSource {
    /// The claims of a new assertion.
    pub fn claims(&self, now_secs: u64) -> serde_json::Value {
        serde_json::json!({
            "aud": self.url.as_str(),
            "iss": self.client_id,
            "sub": self.client_id,
            "jti": crate::batch::random_id(),
            "nbf": now_secs,
            "iat": now_secs,
            "exp": now_secs + ASSERTION_LIFETIME_SECS,
        })
    }
}

fn token_error(class: FailureClass, code: &str, message: String) -> TokenError {
    TokenError {
        class,
        code: code.to_string(),
        message,
        retry_after: None,
    }
}

#[async_trait]
impl TokenSource for AssertionTokenSource {
    async fn fetch(&self) -> Result<AccessToken, TokenError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let assertion = Secret::new(self.signer.sign(&self.claims(now)).map_err(|e| {
            token_error(
                FailureClass::Rejected,
                "token_assertion_sign",
                e.to_string(),
            )
        })?);
        // The same form POST as the client-secret grant, with the assertion for a secret.
        FormTokenSource {
            client: self.client.clone(),
            url: self.url.clone(),
            form: vec![
                ("grant_type".into(), Secret::new("client_credentials")),
                ("client_id".into(), Secret::new(self.client_id.as_str())),
                ("scope".into(), Secret::new(self.scope.as_str())),
                ("client_assertion_type".into(), Secret::new(JWT_BEARER)),
                ("client_assertion".into(), assertion),
            ],
            default_lifetime: self.default_lifetime,
        }
        .fetch()
        .await
    }
}

/// The first PEM block of `kind` (e.g. `PRIVATE KEY`, `RSA PRIVATE KEY`) in `pem`, so that a
/// key and certificate may share one file.
pub fn pem_block(pem: &str, kind: &str) -> Option<String> {
    let begin = format!("-----BEGIN {kind}-----");
    let end = format!("-----END {kind}-----");
    let s = pem.find(&begin)?;
    let e = s + pem[s..].find(&end)? + end.len();
    Some(pem[s..e].to_string())
}

/// The private key block of a PEM text (PKCS#8 or PKCS#1).
pub fn private_key_block(pem: &str) -> Option<String> {
    pem_block(pem, "PRIVATE KEY").or_else(|| pem_block(pem, "RSA PRIVATE KEY"))
}

/// The token source the settings ask for (`client_secret`, or `certificate` with its
/// `private_key`), and its name for `check`. Secrets are read from `base_dir`; no network.
pub(crate) fn token_source(
    settings: &DynamicsSettings,
    client: &reqwest::Client,
    token_url: &reqwest::Url,
    scope: String,
    base_dir: &Path,
) -> Result<(Box<dyn TokenSource>, &'static str), DynamicsError> {
    let default_lifetime = Duration::from_secs(3000);
    let resolve = |key: &str, r: &SecretRef| -> Result<Secret, DynamicsError> {
        r.resolve(base_dir)
            .map_err(|e| DynamicsError::new(key, e.to_string()))
    };
    let (source, auth_kind): (Box<dyn leadsync_core::oauth::TokenSource>, &'static str) = match (
        &settings.client_secret,
        &settings.certificate,
    ) {
        (Some(secret), None) => {
            if settings.private_key.is_some() {
                return Err(DynamicsError::new(
                    "private_key",
                    "private_key goes with certificate, not with client_secret",
                ));
            }
            let secret = resolve("client_secret", secret)?;
            let form = vec![
                ("grant_type".to_string(), Secret::new("client_credentials")),
                (
                    "client_id".to_string(),
                    Secret::new(settings.client_id.clone()),
                ),
                ("client_secret".to_string(), secret),
                ("scope".to_string(), Secret::new(scope.clone())),
            ];
            (
                Box::new(FormTokenSource {
                    client: client.clone(),
                    url: token_url.clone(),
                    form,
                    default_lifetime,
                }),
                "client secret",
            )
        }
        (None, Some(cert)) => {
            let cert_pem = resolve("certificate", cert)?;
            let key_text = match &settings.private_key {
                Some(k) => resolve("private_key", k)?,
                None => cert_pem.clone(),
            };
            let key_pem = private_key_block(key_text.expose()).ok_or_else(|| {
                        DynamicsError::new(
                            "private_key",
                            "no PEM private key found (give private_key, or put the key in the certificate's PEM file)",
                        )
                    })?;
            let signer = leadsync_core::jwt::RsaSigner::from_pem(&key_pem, Some(cert_pem.expose()))
                .map_err(|e| DynamicsError::new("certificate", e.to_string()))?;
            (
                Box::new(AssertionTokenSource {
                    client: client.clone(),
                    url: token_url.clone(),
                    client_id: settings.client_id.clone(),
                    scope: scope.clone(),
                    signer,
                    default_lifetime,
                }),
                "certificate",
            )
        }
        (Some(_), Some(_)) => {
            return Err(DynamicsError::new(
                "certificate",
                "give either client_secret or certificate, not both",
            ))
        }
        (None, None) => {
            return Err(DynamicsError::new(
                "client_secret",
                "give client_secret or certificate (with private_key)",
            ))
        }
    };
    Ok((source, auth_kind))
}
