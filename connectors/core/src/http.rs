//! HTTP helpers every HTTP connector shares: building a client with timeouts and TLS
//! settings, classifying a response status, reading a bounded excerpt of an error body, and
//! printing a URL without its query string (which may carry a signature).
//!
//! Connectors call these rather than re-deriving them, so that every CRM gets the same
//! timeouts, the same TLS rules (verification always on) and the same failure classes for
//! the same HTTP facts.

use reqwest::StatusCode;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::connector::{DeliveryFailure, FailureClass};
use crate::pii::Secret;
use crate::retry_after::parse_retry_after;
use crate::secret_ref::SecretRef;

/// Connection settings common to HTTP connectors (`[connection.http]` or inline, as each
/// connector chooses).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// Time to establish a connection (TCP + TLS). Default 10 s.
    #[serde(default = "default_connect_timeout", with = "humantime_serde_compat")]
    pub connect_timeout: Duration,
    /// Time for a whole request, response body included. Default 60 s.
    #[serde(default = "default_timeout", with = "humantime_serde_compat")]
    pub timeout: Duration,
    /// Extra CA certificates (PEM bundle) trusted besides the system roots; relative to the
    /// target file's folder.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Trust only `ca_file`, not the system roots.
    #[serde(default)]
    pub ca_only: bool,
    /// Client certificate and key (PEM, both in one file or as two secrets) for mutual TLS.
    #[serde(default)]
    pub client_cert: Option<SecretRef>,
    #[serde(default)]
    pub client_key: Option<SecretRef>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            connect_timeout: default_connect_timeout(),
            timeout: default_timeout(),
            ca_file: None,
            ca_only: false,
            client_cert: None,
            client_key: None,
        }
    }
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_timeout() -> Duration {
    Duration::from_secs(60)
}

/// Durations written as humantime strings ("10s", "2m").
mod humantime_serde_compat {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "expected a duration such as \"10s\", found {s:?}: {e}"
            ))
        })
    }
}

/// Why a client could not be built (bad CA file, bad client certificate).
#[derive(Debug, thiserror::Error)]
pub enum HttpSetupError {
    #[error("ca_file {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("client certificate: {0}")]
    ClientCert(String),
    #[error("HTTP client: {0}")]
    Client(String),
}

/// Build a client: connect and total timeouts, TLS verification always on, extra CAs and
/// client certificate as configured, redirects only within the same host (a CRM that
/// redirects elsewhere is not followed with our credentials), and a user agent naming us.
pub fn build_client(
    settings: &HttpSettings,
    base_dir: &Path,
) -> Result<reqwest::Client, HttpSetupError> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(settings.connect_timeout)
        .timeout(settings.timeout)
        .user_agent(concat!("leadsync/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::custom(|attempt| {
            let same_host = attempt
                .previous()
                .first()
                .map(|first| first.host_str() == attempt.url().host_str())
                .unwrap_or(false);
            if same_host && attempt.previous().len() < 5 {
                attempt.follow()
            } else {
                attempt.stop()
            }
        }));
    if let Some(ca) = &settings.ca_file {
        let path = base_dir.join(ca);
        let err = |reason: String| HttpSetupError::CaFile {
            path: path.display().to_string(),
            reason,
        };
        let pem = std::fs::read(&path).map_err(|e| err(e.to_string()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| err(e.to_string()))?;
        if certs.is_empty() {
            return Err(err("no PEM certificate found".into()));
        }
        builder = if settings.ca_only {
            builder.tls_certs_only(certs)
        } else {
            builder.tls_certs_merge(certs)
        };
    }
    match (&settings.client_cert, &settings.client_key) {
        (None, None) => {}
        (Some(cert), key) => {
            let mut pem = cert
                .resolve(base_dir)
                .map_err(|e| HttpSetupError::ClientCert(e.to_string()))?
                .expose()
                .as_bytes()
                .to_vec();
            if let Some(key) = key {
                pem.push(b'\n');
                pem.extend_from_slice(
                    key.resolve(base_dir)
                        .map_err(|e| HttpSetupError::ClientCert(e.to_string()))?
                        .expose()
                        .as_bytes(),
                );
            }
            let identity = reqwest::Identity::from_pem(&pem)
                .map_err(|e| HttpSetupError::ClientCert(e.to_string()))?;
            builder = builder.identity(identity);
        }
        (None, Some(_)) => {
            return Err(HttpSetupError::ClientCert(
                "client_key given without client_cert".into(),
            ))
        }
    }
    builder
        .build()
        .map_err(|e| HttpSetupError::Client(e.to_string()))
}

/// A URL as it may appear in logs and messages: scheme, host, port and path only. The query
/// string (Power Automate and SAS URLs carry signatures there) and any user info are dropped.
pub fn redact_url(url: &reqwest::Url) -> String {
    let mut s = format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""));
    if let Some(port) = url.port() {
        s.push_str(&format!(":{port}"));
    }
    s.push_str(url.path());
    s
}

/// At most `max` characters of a response body, for an error message.
pub fn body_excerpt(body: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let mut out: String = text.chars().take(max).collect();
    if text.chars().count() > max {
        out.push('…');
    }
    out
}

/// The `Retry-After` of a response, if it had one we understand.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, chrono::Utc::now()))
}

/// The failure class HTTP itself implies for a non-success status: 408/5xx transient,
/// 429 throttled, 401 auth expired, other 4xx rejected. Connectors refine this with what
/// the CRM's error body says (e.g. Dataverse's throttling codes on a 503... or a 400 that
/// is really a lock).
pub fn class_of_status(status: StatusCode) -> FailureClass {
    match status.as_u16() {
        401 => FailureClass::AuthExpired,
        429 => FailureClass::Throttled,
        408 | 425 => FailureClass::Transient,
        s if s >= 500 => FailureClass::Transient,
        _ => FailureClass::Rejected,
    }
}

/// A failure for a non-success response: class from the status, code `http_<status>`,
/// message = status and a bounded body excerpt, `Retry-After` kept.
pub fn failure_from_response(
    status: StatusCode,
    headers: &reqwest::header::HeaderMap,
    body: &[u8],
) -> DeliveryFailure {
    DeliveryFailure::new(
        class_of_status(status),
        format!("http_{}", status.as_u16()),
        format!("HTTP {status}: {}", body_excerpt(body, 500)),
    )
    .with_retry_after(retry_after(headers))
}

/// A failure for a request that got no response. A request that could not connect at all
/// (refused, no such host, a certificate that does not verify) says the target is down, not
/// the record: [`FailureClass::TargetDown`]. Timeouts and resets after connecting are
/// transient (the write may or may not have happened: idempotent writes make a retry safe).
pub fn failure_from_transport(err: &reqwest::Error) -> DeliveryFailure {
    // reqwest's Display includes the URL; strip it to keep signed query strings out.
    let text = err.without_url_ref();
    if err.is_connect() {
        let code = connect_failure_code(&text);
        return DeliveryFailure::target_down(code, format!("{code}: {text}"));
    }
    let code = if err.is_timeout() {
        "timeout"
    } else if err.is_body() || err.is_decode() {
        "body_error"
    } else {
        "transport_error"
    };
    DeliveryFailure::transient(code, format!("{code}: {text}"))
}

/// A short code for why a connection could not be made, read from the error chain's text
/// (hyper and rustls expose no stable kinds for these).
fn connect_failure_code(text: &str) -> &'static str {
    let t = text.to_ascii_lowercase();
    if t.contains("dns error") || t.contains("failed to lookup") || t.contains("name or service") {
        "dns_error"
    } else if t.contains("certificate") || t.contains("tls") || t.contains("handshake") {
        "tls_error"
    } else if t.contains("refused") {
        "connection_refused"
    } else if t.contains("timed out") || t.contains("timeout") {
        "connect_timeout"
    } else {
        "connect_error"
    }
}

trait WithoutUrl {
    fn without_url_ref(&self) -> String;
}

impl WithoutUrl for reqwest::Error {
    fn without_url_ref(&self) -> String {
        let mut msg = self.to_string();
        if let Some(url) = self.url() {
            msg = msg.replace(url.as_str(), &redact_url(url));
        }
        // The source chain often says more (e.g. "certificate verify failed").
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            let s_text = s.to_string();
            if !msg.contains(&s_text) {
                msg.push_str(": ");
                msg.push_str(&s_text);
            }
            source = s.source();
        }
        msg
    }
}

/// `https`, or plain `http` to this machine only (tests, local fakes and proxies): tokens
/// and lead data travel in these requests.
pub fn is_https_or_loopback(url: &reqwest::Url) -> bool {
    match url.scheme() {
        "https" => true,
        "http" => matches!(
            url.host_str(),
            Some("127.0.0.1" | "localhost" | "[::1]" | "::1")
        ),
        _ => false,
    }
}

/// A CRM's base URL from configuration: https (or loopback http, see
/// [`is_https_or_loopback`]), with no query string or user name. The error says what is
/// wrong, for the caller to put under its key.
pub fn parse_service_url(s: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(s.trim()).map_err(|e| format!("{s:?} is not a URL: {e}"))?;
    if !is_https_or_loopback(&url) {
        return Err(format!(
            "expected an https:// URL, found scheme {:?}",
            url.scheme()
        ));
    }
    if url.query().is_some() || !url.username().is_empty() {
        return Err("the URL must not carry a query string or user name".into());
    }
    Ok(url)
}

/// A webhook URL: https (or loopback http), no user name; its query is kept (a Teams
/// Workflows URL carries its signature there). The error does not repeat the URL, which is
/// a credential.
pub fn parse_webhook_url(s: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(s.trim()).map_err(|e| format!("not a URL: {e}"))?;
    if !is_https_or_loopback(&url) {
        return Err(format!(
            "expected an https:// URL, found scheme {:?}",
            url.scheme()
        ));
    }
    if !url.username().is_empty() {
        return Err("the URL must not carry a user name".into());
    }
    Ok(url)
}

/// `Authorization: Bearer <token>` value from a secret.
pub fn bearer(token: &Secret) -> String {
    format!("Bearer {}", token.expose())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_query_and_user() {
        let u = reqwest::Url::parse("https://user:pw@prod-12.westus.logic.azure.com:443/workflows/abc/triggers/manual/paths/invoke?api-version=2016&sig=SECRET").unwrap();
        let r = redact_url(&u);
        assert_eq!(
            r,
            "https://prod-12.westus.logic.azure.com/workflows/abc/triggers/manual/paths/invoke"
        );
        let u = reqwest::Url::parse("http://127.0.0.1:8080/x?sig=1").unwrap();
        assert_eq!(redact_url(&u), "http://127.0.0.1:8080/x");
    }

    #[tokio::test]
    async fn a_closed_port_is_a_target_down_failure() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{port}/x?sig=SECRET"))
            .send()
            .await
            .unwrap_err();
        let f = failure_from_transport(&err);
        assert_eq!(f.class, FailureClass::TargetDown);
        assert_eq!(f.code, "connection_refused");
        assert!(!f.message.contains("SECRET"));
    }

    #[test]
    fn statuses() {
        assert_eq!(
            class_of_status(StatusCode::TOO_MANY_REQUESTS),
            FailureClass::Throttled
        );
        assert_eq!(
            class_of_status(StatusCode::UNAUTHORIZED),
            FailureClass::AuthExpired
        );
        assert_eq!(
            class_of_status(StatusCode::REQUEST_TIMEOUT),
            FailureClass::Transient
        );
        assert_eq!(
            class_of_status(StatusCode::BAD_GATEWAY),
            FailureClass::Transient
        );
        assert_eq!(
            class_of_status(StatusCode::BAD_REQUEST),
            FailureClass::Rejected
        );
        let body = "x".repeat(2000);
        let f = failure_from_response(
            StatusCode::BAD_REQUEST,
            &Default::default(),
            body.as_bytes(),
        );
        assert!(f.message.chars().count() < 600);
        assert_eq!(f.code, "http_400");
    }
}
