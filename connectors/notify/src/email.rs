//! New-lead e-mails over SMTP, with `lettre`: STARTTLS (default, port 587) or implicit TLS
//! (port 465), authentication when a user name is set, to a list of addresses; a plain-text
//! part and a simple HTML part ([`crate::message::Notice`]).
//!
//! Each message's `Message-ID` is derived from the idempotency keys it carries, so a
//! notification sent again after a crash (sent, but its outcome not yet recorded) has the
//! same id and mail systems can tell the copy.
//!
//! Answers: a refused login (530, 534, 535), a TLS failure or a server that cannot be reached
//! is the target down (no lead charged, the circuit probes with `test_connection`); other
//! 5xx answers reject the message; 4xx answers and time-outs are transient. The password is
//! a secret reference and never appears in a log line.

use leadsync_core::{DeliveryFailure, SecretRef};
use lettre::message::{header::ContentType, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::message::Notice;
use crate::NotifyError;

/// How the SMTP connection is protected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    /// Plain connection upgraded with STARTTLS, which is required (port 587).
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Implicit,
    /// No TLS: only to a relay on this machine (127.0.0.1, localhost).
    None,
}

fn default_timeout() -> String {
    "30s".into()
}

/// `[connection]` of a `kind = "email"` target (and an e-mail alert channel).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailSettings {
    /// The SMTP server (`smtp.office365.com`, `smtp.sendgrid.net`, a local relay).
    pub host: String,
    /// Default 587 (`starttls`), 465 (`implicit`), 25 (`none`).
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub tls: TlsMode,
    /// Log in with these when set (both or neither).
    #[serde(default)]
    pub username: Option<SecretRef>,
    #[serde(default)]
    pub password: Option<SecretRef>,
    /// The sender, `"leadsync <leads@example.com>"` or a bare address.
    pub from: String,
    /// The recipients.
    pub to: Vec<String>,
    #[serde(default)]
    pub reply_to: Option<String>,
    /// Extra CA certificates (PEM) trusted for the server, beside the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The whole SMTP conversation of one message. Default `"30s"`.
    #[serde(default = "default_timeout")]
    pub timeout: String,
}

/// Sends notices as e-mails through one SMTP server.
pub struct EmailSender {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<Mailbox>,
    reply_to: Option<Mailbox>,
    server: String,
}

impl EmailSender {
    /// Validate the settings, read the secrets and the CA file. No network.
    pub fn try_new(settings: &EmailSettings, base_dir: &Path) -> Result<EmailSender, NotifyError> {
        let host = settings.host.trim().to_string();
        if host.is_empty() {
            return Err(NotifyError::new("host", "required: the SMTP server's name"));
        }
        let loopback = matches!(host.as_str(), "127.0.0.1" | "localhost" | "::1" | "[::1]");
        if settings.tls == TlsMode::None && !loopback {
            return Err(NotifyError::new(
                "tls",
                "\"none\" only to a relay on this machine (127.0.0.1, localhost): use \"starttls\" or \"implicit\"",
            ));
        }
        let mailbox = |key: &str, s: &str| {
            s.parse::<Mailbox>().map_err(|e| {
                NotifyError::new(
                    key,
                    format!("expected an e-mail address such as \"leads@example.com\": {e}"),
                )
            })
        };
        let from = mailbox("from", &settings.from)?;
        if settings.to.is_empty() {
            return Err(NotifyError::new("to", "expected at least one recipient"));
        }
        let to = settings
            .to
            .iter()
            .map(|t| mailbox("to", t))
            .collect::<Result<Vec<_>, _>>()?;
        let reply_to = settings
            .reply_to
            .as_deref()
            .map(|r| mailbox("reply_to", r))
            .transpose()?;
        let timeout = humantime_duration("timeout", &settings.timeout)?;
        let port = settings.port.unwrap_or(match settings.tls {
            TlsMode::Starttls => 587,
            TlsMode::Implicit => 465,
            TlsMode::None => 25,
        });
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host.as_str())
            .port(port)
            .timeout(Some(timeout));
        let tls = match settings.tls {
            TlsMode::None => Tls::None,
            mode => {
                let params = tls_parameters(&host, settings.ca_file.as_deref(), base_dir)?;
                if mode == TlsMode::Implicit {
                    Tls::Wrapper(params)
                } else {
                    Tls::Required(params)
                }
            }
        };
        builder = builder.tls(tls);
        match (&settings.username, &settings.password) {
            (Some(u), Some(p)) => {
                let read = |key: &str, r: &SecretRef| {
                    r.resolve(base_dir)
                        .map(|s| s.expose().to_string())
                        .map_err(|e| NotifyError::new(key, e.to_string()))
                };
                builder = builder
                    .credentials(Credentials::new(read("username", u)?, read("password", p)?));
            }
            (None, None) => {}
            (Some(_), None) => return Err(NotifyError::new("password", "required with username")),
            (None, Some(_)) => return Err(NotifyError::new("username", "required with password")),
        }
        Ok(EmailSender {
            transport: builder.build(),
            from,
            to,
            reply_to,
            server: format!("{host}:{port}"),
        })
    }

    /// `host:port`, for `check` and logs.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Send `notice`; `keys` (the idempotency keys it carries) make its `Message-ID`.
    pub async fn send(&self, notice: &Notice, keys: &[&str]) -> Result<(), DeliveryFailure> {
        let message = self.message(notice, keys)?;
        self.transport
            .send(message)
            .await
            .map(|_| ())
            .map_err(|e| classify(&e))
    }

    /// Open a session (TLS and login included) without sending: `check --connect` and the
    /// circuit's probe.
    pub async fn test_connection(&self) -> Result<(), DeliveryFailure> {
        match self.transport.test_connection().await {
            Ok(true) => Ok(()),
            Ok(false) => Err(DeliveryFailure::target_down(
                "smtp_unavailable",
                "the SMTP server did not accept a session",
            )),
            Err(e) => Err(classify(&e)),
        }
    }

    fn message(&self, notice: &Notice, keys: &[&str]) -> Result<Message, DeliveryFailure> {
        let mut digest = Sha256::new();
        for k in keys {
            digest.update(k.as_bytes());
            digest.update([0]);
        }
        let id = hex::encode(&digest.finalize()[..16]);
        let mut builder = Message::builder()
            .from(self.from.clone())
            .subject(notice.subject.clone())
            .message_id(Some(format!("<{id}@leadsync>")));
        for t in &self.to {
            builder = builder.to(t.clone());
        }
        if let Some(r) = &self.reply_to {
            builder = builder.reply_to(r.clone());
        }
        builder
            .multipart(
                MultiPart::alternative()
                    .singlepart(
                        SinglePart::builder()
                            .header(ContentType::TEXT_PLAIN)
                            .body(notice.text()),
                    )
                    .singlepart(
                        SinglePart::builder()
                            .header(ContentType::TEXT_HTML)
                            .body(notice.html()),
                    ),
            )
            .map_err(|e| {
                DeliveryFailure::rejected(
                    "email_build",
                    format!("the message could not be built: {e}"),
                )
            })
    }
}

/// TLS for `host`, trusting `ca_file` beside the system roots.
fn tls_parameters(
    host: &str,
    ca_file: Option<&Path>,
    base_dir: &Path,
) -> Result<TlsParameters, NotifyError> {
    let mut builder = TlsParameters::builder(host.to_string());
    if let Some(ca) = ca_file {
        let path = base_dir.join(ca);
        let pem = std::fs::read(&path)
            .map_err(|e| NotifyError::new("ca_file", format!("{}: {e}", path.display())))?;
        let cert = Certificate::from_pem(&pem)
            .map_err(|e| NotifyError::new("ca_file", format!("{}: {e}", path.display())))?;
        builder = builder.add_root_certificate(cert);
    }
    builder
        .build()
        .map_err(|e| NotifyError::new("tls", e.to_string()))
}

fn humantime_duration(key: &str, s: &str) -> Result<Duration, NotifyError> {
    humantime::parse_duration(s)
        .map_err(|e| NotifyError::new(key, format!("expected a duration such as \"30s\": {e}")))
}

/// An SMTP error as a failure class (see the module comment).
fn classify(e: &lettre::transport::smtp::Error) -> DeliveryFailure {
    let code = e.status().map(|c| c.to_string());
    let text = format!("SMTP: {e}");
    match code.as_deref() {
        Some("530" | "534" | "535" | "538") => {
            return DeliveryFailure::target_down(
                "smtp_auth",
                format!("{text} (the server refused the login)"),
            )
        }
        Some(c) if e.is_permanent() => return DeliveryFailure::rejected(format!("smtp_{c}"), text),
        Some(c) if e.is_transient() => {
            return DeliveryFailure::transient(format!("smtp_{c}"), text)
        }
        _ => {}
    }
    if e.is_timeout() {
        DeliveryFailure::transient("timeout", text)
    } else if e.is_tls() {
        DeliveryFailure::target_down("tls_error", text)
    } else {
        DeliveryFailure::target_down("smtp_connect", text)
    }
}
