//! Chat messages through incoming webhooks: a Microsoft Teams **Workflows** webhook (an
//! Adaptive Card in a `message` envelope) and a Slack **incoming webhook** (Block Kit, or
//! `{"text": …}` alone, which most chat tools' webhooks take: Mattermost, Rocket.Chat,
//! Google Chat, Discord's Slack-compatible endpoint).
//!
//! A webhook URL is its own credential (Slack's secret is in the path, Teams' in the query
//! `sig`), so it is a secret reference and never appears in a log line or a stored failure.
//! Answers: 2xx delivered; 429 throttled for `Retry-After`; 403/404/410 (a webhook revoked,
//! a channel archived) the target down; other 4xx rejected; 5xx and transport errors as
//! core classifies them.

use leadsync_core::http::{
    build_client, failure_from_response, failure_from_transport, HttpSettings,
};
use leadsync_core::{DeliveryFailure, Secret, SecretRef};
use reqwest::{StatusCode, Url};
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

use crate::message::Notice;
use crate::NotifyError;

/// Which chat service's payload to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatKind {
    Teams,
    Slack,
}

/// What a Slack-kind webhook is sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlackFormat {
    /// Block Kit blocks with `text` as the fallback.
    #[default]
    Blocks,
    /// `{"text": …}` only: any webhook that takes Slack's simplest payload.
    Text,
}

/// `[connection]` of a `kind = "teams"` or `kind = "slack"` target.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatSettings {
    /// The webhook URL, a secret reference: it is the credential.
    pub url: SecretRef,
    /// Slack only: `"blocks"` (default) or `"text"`.
    #[serde(default)]
    pub format: Option<SlackFormat>,
    #[serde(default)]
    pub http: HttpSettings,
}

/// Posts notices to one webhook.
pub struct ChatSender {
    kind: ChatKind,
    format: SlackFormat,
    client: reqwest::Client,
    url: Url,
}

impl ChatSender {
    /// Read the URL and build the client. No network.
    pub fn try_new(
        kind: ChatKind,
        settings: &ChatSettings,
        base_dir: &Path,
    ) -> Result<ChatSender, NotifyError> {
        let url: Secret = settings
            .url
            .resolve(base_dir)
            .map_err(|e| NotifyError::new("url", e.to_string()))?;
        // The URL is a secret: its parse error must not echo it.
        let url = leadsync_core::http::parse_webhook_url(url.expose())
            .map_err(|_| NotifyError::new("url", "expected an https:// webhook URL"))?;
        if kind == ChatKind::Teams && settings.format.is_some() {
            return Err(NotifyError::new("format", "only for kind = \"slack\""));
        }
        let client = build_client(&settings.http, base_dir)
            .map_err(|e| NotifyError::new("http", e.to_string()))?;
        Ok(ChatSender {
            kind,
            format: settings.format.unwrap_or_default(),
            client,
            url,
        })
    }

    /// The JSON this webhook is sent for `notice`.
    pub fn payload(&self, notice: &Notice) -> Value {
        match (self.kind, self.format) {
            (ChatKind::Teams, _) => adaptive_card(notice),
            (ChatKind::Slack, SlackFormat::Blocks) => slack_blocks(notice),
            (ChatKind::Slack, SlackFormat::Text) => json!({"text": slack_text(notice)}),
        }
    }

    /// Post `notice`.
    pub async fn send(&self, notice: &Notice) -> Result<(), DeliveryFailure> {
        let resp = self
            .client
            .post(self.url.clone())
            .json(&self.payload(notice))
            .send()
            .await
            .map_err(|e| self.scrub(failure_from_transport(&e)))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.unwrap_or_default();
        if status.is_success() {
            return Ok(());
        }
        let f = failure_from_response(status, &headers, &body);
        Err(self.scrub(match status.as_u16() {
            429 => DeliveryFailure::throttled(
                "chat_429",
                f.message,
                Some(f.retry_after.unwrap_or(Duration::from_secs(5))),
            ),
            403 | 404 | 410 => DeliveryFailure::target_down(
                format!("chat_{}", status.as_u16()),
                format!(
                    "{} (the webhook was removed or its channel archived?)",
                    f.message
                ),
            ),
            _ => f,
        }))
    }

    /// Whether the webhook's host answers at all (for `check --connect`): an empty `GET`,
    /// which webhooks refuse (405, 400) without posting anything.
    pub async fn reachable(&self) -> Result<StatusCode, String> {
        self.client
            .get(self.url.clone())
            .send()
            .await
            .map(|r| r.status())
            .map_err(|e| self.scrub(failure_from_transport(&e)).message)
    }

    /// The failure without the URL (its path or query is the credential).
    fn scrub(&self, mut f: DeliveryFailure) -> DeliveryFailure {
        let full = self.url.as_str();
        let redacted = leadsync_core::http::redact_url(&self.url);
        f.message = f
            .message
            .replace(full, "<webhook>")
            .replace(&redacted, "<webhook>");
        if let Some(path) = Some(self.url.path()).filter(|p| p.len() > 1) {
            f.message = f.message.replace(path, "/<webhook>");
        }
        f
    }

    /// The host the webhook lives on, for `check` (never the path or query).
    pub fn host(&self) -> String {
        self.url.host_str().unwrap_or("?").to_string()
    }
}

/// Slack mrkdwn: `&`, `<` and `>` escaped, as Slack requires.
fn mrkdwn(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A character-bounded copy (Slack and Teams cap text lengths).
fn cap(s: &str, max: usize) -> String {
    match s.char_indices().nth(max.saturating_sub(1)) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

fn slack_text(notice: &Notice) -> String {
    cap(
        &mrkdwn(&format!("*{}*\n{}", notice.subject, notice.text())),
        39_000,
    )
}

/// Block Kit: a header, then per lead a section of fields (ten at most per section, as
/// Slack allows) and a divider.
fn slack_blocks(notice: &Notice) -> Value {
    let mut blocks = vec![json!({"type": "header",
        "text": {"type": "plain_text", "text": cap(&notice.subject, 150)}})];
    for lead in &notice.leads {
        if notice.leads.len() > 1 {
            blocks.push(json!({"type": "section",
                "text": {"type": "mrkdwn", "text": cap(&format!("*{}*", mrkdwn(&lead.heading)), 3000)}}));
        }
        for chunk in lead.lines.chunks(10) {
            let fields: Vec<Value> = chunk
                .iter()
                .map(|(label, value)| {
                    json!({"type": "mrkdwn", "text": cap(&format!("*{}*\n{}", mrkdwn(label), mrkdwn(value)), 2000)})
                })
                .collect();
            blocks.push(json!({"type": "section", "fields": fields}));
        }
        blocks.push(json!({"type": "divider"}));
    }
    blocks.truncate(50);
    json!({"text": cap(&mrkdwn(&notice.subject), 3000), "blocks": blocks})
}

/// An Adaptive Card (1.4) in the envelope Teams Workflows webhooks take: the subject, then
/// per lead a heading (in a digest) and a fact set.
fn adaptive_card(notice: &Notice) -> Value {
    let mut body = vec![json!({"type": "TextBlock", "text": notice.subject,
        "weight": "Bolder", "size": "Medium", "wrap": true})];
    for lead in &notice.leads {
        if notice.leads.len() > 1 {
            body.push(
                json!({"type": "TextBlock", "text": lead.heading, "weight": "Bolder",
                "wrap": true, "separator": true}),
            );
        }
        let facts: Vec<Value> = lead
            .lines
            .iter()
            .map(|(label, value)| json!({"title": label, "value": cap(value, 2000)}))
            .collect();
        body.push(json!({"type": "FactSet", "facts": facts}));
    }
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": body,
            }
        }]
    })
}
