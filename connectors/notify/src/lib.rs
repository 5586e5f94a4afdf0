//! Targets that tell people rather than store leads: a new-lead **e-mail** (`kind =
//! "email"`, SMTP), a **Teams** message (`kind = "teams"`, a Workflows webhook) or a
//! **Slack** message (`kind = "slack"`, an incoming webhook, or any webhook taking
//! `{"text": …}`). They are targets like any other: the filter picks the leads (hot ones to
//! a channel at once, the rest to a digest, DNC and test leads never), the mapping is the
//! message's lines, the ledger holds one delivery per lead, and retries, the target's
//! circuit and dead letters work as for a CRM. A batch is one message: a target with a
//! `digest` interval has its leads come due together at the interval's end, so a burst of
//! 500 leads is one e-mail listing them.
//!
//! The same senders carry the operator's alerts ([`AlertChannel`], used by the daemon's
//! `[alerts]`).
//!
//! The crate by concern: `message` (what a message says, from the mapped records), `email`
//! (SMTP with lettre), `chat` (the webhooks' payloads and answers). This file holds the
//! connector, its `build` functions (the registry's way in) and the alert channel.

mod chat;
mod email;
mod message;

use async_trait::async_trait;
use leadsync_core::{
    BuildContext, BuildError, CheckError, CheckReport, Connector, DeliveryFailure, DeliveryOutcome,
    Mapping, OutboundRecord,
};
use std::path::Path;
use std::sync::Arc;

pub use chat::{ChatKind, ChatSender, ChatSettings, SlackFormat};
pub use email::{EmailSender, EmailSettings, TlsMode};
pub use message::{default_mapping, escape_html, LeadLines, Notice, DEFAULT_SUBJECT, SUBJECT};

/// Leads one e-mail lists at most (a digest of a burst).
pub const EMAIL_MAX_BATCH: usize = 1000;
/// Leads one chat message lists at most (Slack takes 50 blocks, Teams cards stay small).
pub const CHAT_MAX_BATCH: usize = 15;

/// A settings mistake, naming the key under `[connection]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct NotifyError {
    /// `connection.<key>`.
    pub key: String,
    pub message: String,
}

impl NotifyError {
    pub(crate) fn new(key: &str, message: impl Into<String>) -> Self {
        NotifyError {
            key: format!("connection.{key}"),
            message: message.into(),
        }
    }
}

/// Where a notification goes.
pub enum Channel {
    Email(Box<EmailSender>),
    Chat(ChatSender),
}

impl Channel {
    /// A channel of `kind` (`email`, `teams`, `slack`) from its settings table.
    pub fn try_new(
        kind: &str,
        settings: &serde_json::Value,
        base_dir: &Path,
    ) -> Result<Channel, NotifyError> {
        let read = |e: serde_json::Error| NotifyError::new("", e.to_string());
        match kind {
            "email" => {
                let s: EmailSettings = serde_json::from_value(settings.clone()).map_err(read)?;
                Ok(Channel::Email(Box::new(EmailSender::try_new(
                    &s, base_dir,
                )?)))
            }
            "teams" | "slack" => {
                let s: ChatSettings = serde_json::from_value(settings.clone()).map_err(read)?;
                let k = if kind == "teams" {
                    ChatKind::Teams
                } else {
                    ChatKind::Slack
                };
                Ok(Channel::Chat(ChatSender::try_new(k, &s, base_dir)?))
            }
            other => Err(NotifyError::new(
                "kind",
                format!("expected \"email\", \"teams\" or \"slack\", found {other:?}"),
            )),
        }
    }

    /// Send `notice`; `keys` identify what it carries (an e-mail's `Message-ID`).
    pub async fn send(&self, notice: &Notice, keys: &[&str]) -> Result<(), DeliveryFailure> {
        match self {
            Channel::Email(e) => e.send(notice, keys).await,
            Channel::Chat(c) => c.send(notice).await,
        }
    }

    /// What `check` says of the channel offline (no secrets, no webhook path).
    pub fn describe(&self) -> String {
        match self {
            Channel::Email(e) => format!("SMTP server {}", e.server()),
            Channel::Chat(c) => format!("webhook on {}", c.host()),
        }
    }

    /// `check --connect`: an SMTP session with its login, without sending; a webhook's host
    /// answering at all (nothing is posted).
    pub async fn check_connection(&self) -> Result<String, String> {
        match self {
            Channel::Email(e) => e
                .test_connection()
                .await
                .map(|_| {
                    format!(
                        "SMTP session with {} opened and logged in (nothing sent)",
                        e.server()
                    )
                })
                .map_err(|f| format!("{} ({})", f.message, f.code)),
            Channel::Chat(c) => c.reachable().await.map(|status| {
                format!(
                    "webhook host {} answers (HTTP {} to a GET; nothing posted)",
                    c.host(),
                    status.as_u16()
                )
            }),
        }
    }
}

/// A notification target.
pub struct NotifyConnector {
    kind: &'static str,
    channel: Channel,
    mapping: Mapping,
}

fn build_kind(
    kind: &'static str,
    ctx: &BuildContext<'_>,
) -> Result<Arc<dyn Connector>, BuildError> {
    let channel = Channel::try_new(kind, ctx.connection, ctx.base_dir)
        .map_err(|e| BuildError::in_connection(&e.key, e.message))?;
    Ok(Arc::new(NotifyConnector {
        kind,
        channel,
        mapping: ctx.mapping(default_mapping()),
    }))
}

/// The registry's entry for kind `email`.
pub fn build_email(ctx: &BuildContext<'_>) -> Result<Arc<dyn Connector>, BuildError> {
    build_kind("email", ctx)
}

/// The registry's entry for kind `teams`.
pub fn build_teams(ctx: &BuildContext<'_>) -> Result<Arc<dyn Connector>, BuildError> {
    build_kind("teams", ctx)
}

/// The registry's entry for kind `slack`.
pub fn build_slack(ctx: &BuildContext<'_>) -> Result<Arc<dyn Connector>, BuildError> {
    build_kind("slack", ctx)
}

#[async_trait]
impl Connector for NotifyConnector {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn max_batch(&self) -> usize {
        match self.channel {
            Channel::Email(_) => EMAIL_MAX_BATCH,
            Channel::Chat(_) => CHAT_MAX_BATCH,
        }
    }

    fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    async fn check(&self, connect: bool) -> Result<CheckReport, CheckError> {
        let mut report = CheckReport::default();
        report.verified.push(self.channel.describe());
        if connect {
            let line = self
                .channel
                .check_connection()
                .await
                .map_err(|reason| CheckError {
                    what: "connection".into(),
                    reason,
                })?;
            report.verified.push(line);
        }
        Ok(report)
    }

    /// While the target is down: an SMTP session with its login (nothing sent). A webhook
    /// has nothing to ask: the probe is the next single message.
    async fn probe(&self) -> Option<Result<(), DeliveryFailure>> {
        match &self.channel {
            Channel::Email(e) => Some(e.test_connection().await),
            Channel::Chat(_) => None,
        }
    }

    /// One message for the whole batch; every record shares its outcome.
    async fn push(&self, batch: &[OutboundRecord]) -> Vec<DeliveryOutcome> {
        if batch.is_empty() {
            return Vec::new();
        }
        let notice = Notice::of(batch);
        let keys: Vec<&str> = batch.iter().map(|r| r.idempotency_key.as_str()).collect();
        let outcome = match self.channel.send(&notice, &keys).await {
            Ok(()) => DeliveryOutcome::delivered(None, None),
            Err(f) => DeliveryOutcome::Failed(f),
        };
        vec![outcome; batch.len()]
    }
}
