//! A fake chat webhook: what a Slack incoming webhook, a Microsoft Teams "Workflows"
//! webhook (Power Automate, trigger "When a Teams webhook request is received") or a
//! generic JSON webhook looks like to leadsync's chat notification targets.
//!
//! It listens on 127.0.0.1 on a free port, at one secret path
//! ([`ChatWebhookFake::url`], `http://127.0.0.1:<port>/webhook/<random hex>`), and checks
//! each POSTed JSON body against the shape the service documents:
//!
//! - [`ChatFlavor::Slack`] takes an object with `text` (a string; required unless `blocks` or
//!   legacy `attachments` are given, in which case it is the notification fallback) and
//!   optional Block Kit `blocks` (50 at most; each an object whose `type` is `section`,
//!   `header`, `divider`, `context`, `actions`, `image`, `rich_text` or `markdown`; text
//!   objects are `{type: mrkdwn|plain_text, text}` with non-empty text; a section has `text`
//!   (3000 characters at most) and/or `fields` (10 at most, 2000 characters each); a header
//!   is `plain_text`, 150 characters at most; `context` has 1-10 elements, `actions` 1-25,
//!   an image `image_url` and `alt_text`). Answers `200` `ok`; errors are `400` with
//!   `invalid_payload` (not a JSON object, `text` not a string), `no_text` (nothing to
//!   show), `invalid_blocks_format` (`blocks` not an array of objects) or `invalid_blocks`
//!   (a block breaks a rule), as plain strings like Slack's (`Content-Type: text/html`,
//!   which is what Slack sends).
//! - [`ChatFlavor::Teams`] takes the documented Workflows body,
//!   `{"type":"message","attachments":[{"contentType":"application/vnd.microsoft.card.adaptive",
//!   "contentUrl":null,"content":{"$schema":"http://adaptivecards.io/schemas/adaptive-card.json",
//!   "type":"AdaptiveCard","version":"1.x","body":[...]}}]}`: `type` must be `message`,
//!   `attachments` a non-empty array of objects that each have `contentType`, `contentUrl`
//!   (null is fine, but the member must be there: the trigger's schema requires it) and
//!   `content`; at least one must be an Adaptive Card whose `content.type` is
//!   `AdaptiveCard`, `version` `1.<n>`, and `body` an array of elements with a known `type`
//!   (`TextBlock` needs `text`, `FactSet` `facts` of `{title, value}`, `Container` `items`,
//!   `ColumnSet` `columns` of `{items}`, ...), checked recursively. Answers
//!   `202 Accepted` with an empty body, as Power Automate does; a malformed body is `400`
//!   with `{"error":{"code":"TriggerInputSchemaMismatch","message":"The input body for
//!   trigger 'manual' of type 'Request' did not match its schema definition. Error
//!   details: '...'."}}` (`InvalidRequestContent` when the body is not JSON). The real
//!   trigger only checks its request schema and answers 202 to a well-formed body whose
//!   card is wrong (the flow run then fails, and nothing is posted); the fake answers 400
//!   to both, so a test sees the mistake.
//! - [`ChatFlavor::Generic`] answers any JSON object with `200` and an empty body;
//!   anything else `400` with a JSON error.
//!
//! Another path is answered `404` (Slack: `no_service`), another method `405`. Faults
//! ([`ChatFault`]) replace the answer to the next POSTs: 429 with `Retry-After`, 500, a
//! webhook whose channel is archived (Slack `410 channel_is_archived`) or that was revoked
//! (Slack `404 no_service`); a latency can be added to every request. Every request is
//! recorded ([`ReceivedChat`]: headers, body and parsed JSON, arrival time, answered
//! status) and [`ReceivedChat::texts`] pulls the human-readable text out of a message.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Block Kit limits the Slack flavor enforces.
pub const SLACK_MAX_BLOCKS: usize = 50;
pub const SLACK_MAX_SECTION_TEXT: usize = 3000;
pub const SLACK_MAX_SECTION_FIELDS: usize = 10;
pub const SLACK_MAX_FIELD_TEXT: usize = 2000;
pub const SLACK_MAX_HEADER_TEXT: usize = 150;

/// The `contentType` of an Adaptive Card attachment.
pub const ADAPTIVE_CARD_CONTENT_TYPE: &str = "application/vnd.microsoft.card.adaptive";

/// Which service the fake plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatFlavor {
    Slack,
    Teams,
    Generic,
}

/// A failure to answer the next POSTs with (before the body is looked at).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatFault {
    /// 429 with `Retry-After: <secs>` (Slack body `rate_limited`).
    TooManyRequests { retry_after_secs: u64 },
    /// 500 (Slack body `rollup_error`).
    ServerError,
    /// The destination is gone: Slack `410 channel_is_archived`, Teams `404`
    /// `WorkflowNotFound`, Generic `410`.
    Gone,
    /// The webhook was revoked or deleted: Slack `404 no_service`, Teams 404, Generic 404.
    Revoked,
}

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct ReceivedChat {
    pub flavor: ChatFlavor,
    pub method: String,
    pub path: String,
    /// Header names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The body as text (lossy UTF-8).
    pub body: String,
    /// The body parsed as JSON, if it is JSON.
    pub json: Option<Value>,
    pub at: Instant,
    /// The status answered.
    pub status: u16,
    /// What the fake objected to (the Slack error string, the Teams error details), or the
    /// injected fault; `None` when accepted.
    pub error: Option<String>,
}

impl ReceivedChat {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// Answered 2xx.
    pub fn accepted(&self) -> bool {
        (200..300).contains(&self.status)
    }
    /// The human-readable text of the message, in document order: Slack `text`, then each
    /// block's texts (section text and fields, header, context, markdown) and legacy
    /// attachments' `pretext`/`title`/`text`; Teams every `TextBlock` text, each `FactSet`
    /// fact as `title: value`, and `RichTextBlock` runs, through containers, columns and
    /// tables. Generic: both.
    pub fn texts(&self) -> Vec<String> {
        let Some(v) = &self.json else {
            return Vec::new();
        };
        let mut out = Vec::new();
        match self.flavor {
            ChatFlavor::Slack => slack_texts(v, &mut out),
            ChatFlavor::Teams => teams_texts(v, &mut out),
            ChatFlavor::Generic => {
                slack_texts(v, &mut out);
                teams_texts(v, &mut out);
            }
        }
        out
    }
}

#[derive(Default)]
struct ChatState {
    faults: VecDeque<(ChatFault, usize)>,
    latency: Duration,
    received: Vec<ReceivedChat>,
}

struct Inner {
    flavor: ChatFlavor,
    path: String,
    state: Mutex<ChatState>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, ChatState> {
        // A test that panicked while holding the lock must not hide the other tests' data.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running fake webhook. Dropping it stops the server.
pub struct ChatWebhookFake {
    inner: Arc<Inner>,
    base_url: String,
    url: String,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for ChatWebhookFake {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl ChatWebhookFake {
    /// Start on 127.0.0.1 on a free port, with a fresh secret path.
    pub async fn start(flavor: ChatFlavor) -> std::io::Result<ChatWebhookFake> {
        use rand::Rng;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let token: u128 = rand::rng().random();
        let path = format!("/webhook/{token:032x}");
        let base_url = format!("http://{addr}");
        let inner = Arc::new(Inner {
            flavor,
            path: path.clone(),
            state: Mutex::new(ChatState::default()),
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&inner));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(ChatWebhookFake {
            url: format!("{base_url}{path}"),
            base_url,
            inner,
            server,
        })
    }

    /// The webhook URL: `http://127.0.0.1:<port>/webhook/<32 hex digits>`.
    pub fn url(&self) -> &str {
        &self.url
    }
    /// `http://127.0.0.1:<port>` (any path under it but the webhook's is a 404).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }
    pub fn flavor(&self) -> ChatFlavor {
        self.inner.flavor
    }

    /// Answer the next `times` POSTs to the webhook with `fault` (after faults already queued).
    pub fn inject(&self, fault: ChatFault, times: usize) {
        if times > 0 {
            self.inner.lock().faults.push_back((fault, times));
        }
    }
    /// Latency added to every request.
    pub fn set_latency(&self, latency: Duration) {
        self.inner.lock().latency = latency;
    }

    /// Every request, in arrival order.
    pub fn received(&self) -> Vec<ReceivedChat> {
        self.inner.lock().received.clone()
    }
    /// The requests answered 2xx (the messages that would have been posted).
    pub fn accepted(&self) -> Vec<ReceivedChat> {
        self.received()
            .into_iter()
            .filter(|r| r.accepted())
            .collect()
    }
    /// [`ReceivedChat::texts`] of each accepted message.
    pub fn texts(&self) -> Vec<Vec<String>> {
        self.accepted().iter().map(ReceivedChat::texts).collect()
    }
    pub fn request_count(&self) -> usize {
        self.inner.lock().received.len()
    }
    /// Forget the recorded requests (faults and latency stay).
    pub fn clear(&self) {
        self.inner.lock().received.clear();
    }
}

/// An answer: status, body, content type, extra headers.
struct Answer {
    status: u16,
    body: String,
    content_type: Option<&'static str>,
    retry_after: Option<u64>,
    error: Option<String>,
}

impl Answer {
    fn ok(status: u16, body: &str, content_type: Option<&'static str>) -> Answer {
        Answer {
            status,
            body: body.to_string(),
            content_type,
            retry_after: None,
            error: None,
        }
    }
    /// Slack's answers are short strings sent as `text/html`.
    fn slack(status: u16, text: &str) -> Answer {
        Answer {
            error: (status >= 300).then(|| text.to_string()),
            ..Answer::ok(status, text, Some("text/html"))
        }
    }
    fn json_error(status: u16, code: &str, message: &str) -> Answer {
        let body = json!({"error": {"code": code, "message": message}}).to_string();
        Answer {
            error: Some(message.to_string()),
            ..Answer::ok(status, &body, Some("application/json; charset=utf-8"))
        }
    }
    fn empty(status: u16, error: &str) -> Answer {
        Answer {
            error: Some(error.to_string()),
            ..Answer::ok(status, "", None)
        }
    }
    fn response(&self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, self.body.clone()).into_response();
        let headers = resp.headers_mut();
        match self.content_type {
            Some(ct) => {
                headers.insert("content-type", HeaderValue::from_static(ct));
            }
            None => {
                headers.remove("content-type");
            }
        }
        if let Some(secs) = self.retry_after {
            headers.insert("retry-after", HeaderValue::from(secs));
        }
        resp
    }
}

fn teams_schema_error(details: &str) -> Answer {
    Answer::json_error(
        400,
        "TriggerInputSchemaMismatch",
        &format!(
            "The input body for trigger 'manual' of type 'Request' did not match its schema \
             definition. Error details: '{details}'."
        ),
    )
}

/// The answer to a request for an unknown or revoked webhook.
fn not_found(flavor: ChatFlavor) -> Answer {
    match flavor {
        ChatFlavor::Slack => Answer::slack(404, "no_service"),
        ChatFlavor::Teams => Answer::json_error(
            404,
            "WorkflowNotFound",
            "The workflow could not be found or has been deleted.",
        ),
        ChatFlavor::Generic => Answer::empty(404, "not found"),
    }
}

fn fault_answer(flavor: ChatFlavor, fault: ChatFault) -> Answer {
    match (fault, flavor) {
        (ChatFault::TooManyRequests { retry_after_secs }, _) => {
            let mut a = match flavor {
                ChatFlavor::Slack => Answer::slack(429, "rate_limited"),
                ChatFlavor::Teams => Answer::json_error(
                    429,
                    "WorkflowRequestsThrottled",
                    &format!("Rate limit is exceeded. Try again in {retry_after_secs} seconds."),
                ),
                ChatFlavor::Generic => Answer::empty(429, "too many requests"),
            };
            a.retry_after = Some(retry_after_secs);
            a
        }
        (ChatFault::ServerError, ChatFlavor::Slack) => Answer::slack(500, "rollup_error"),
        (ChatFault::ServerError, ChatFlavor::Teams) => Answer::json_error(
            500,
            "InternalServerError",
            "The server encountered an internal error.",
        ),
        (ChatFault::ServerError, ChatFlavor::Generic) => Answer::empty(500, "server error"),
        (ChatFault::Gone, ChatFlavor::Slack) => Answer::slack(410, "channel_is_archived"),
        (ChatFault::Gone, ChatFlavor::Generic) => Answer::empty(410, "gone"),
        (ChatFault::Gone | ChatFault::Revoked, _) => not_found(flavor),
    }
}

async fn handle(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let at = Instant::now();
    let on_hook = uri.path() == inner.path;
    let (latency, fault) = {
        let mut st = inner.lock();
        let fault = if on_hook && method == Method::POST {
            let fault = st.faults.front_mut().map(|(f, n)| {
                *n -= 1;
                *f
            });
            if st.faults.front().is_some_and(|(_, n)| *n == 0) {
                st.faults.pop_front();
            }
            fault
        } else {
            None
        };
        (st.latency, fault)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let json: Option<Value> = serde_json::from_slice(&body).ok();
    let answer = if !on_hook {
        not_found(inner.flavor)
    } else if method != Method::POST {
        Answer::empty(405, "method not allowed")
    } else if let Some(fault) = fault {
        let mut a = fault_answer(inner.flavor, fault);
        a.error = Some(format!("{fault:?}"));
        a
    } else {
        check(inner.flavor, json.as_ref(), &body)
    };
    let record = ReceivedChat {
        flavor: inner.flavor,
        method: method.to_string(),
        path: uri.path().to_string(),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: String::from_utf8_lossy(&body).into_owned(),
        json,
        at,
        status: answer.status,
        error: answer.error.clone(),
    };
    inner.lock().received.push(record);
    answer.response()
}

/// The normal answer to a POST on the webhook path.
fn check(flavor: ChatFlavor, json: Option<&Value>, raw: &[u8]) -> Answer {
    match flavor {
        ChatFlavor::Slack => match json.map(check_slack) {
            None => Answer::slack(400, "invalid_payload"),
            Some(Err(e)) => Answer::slack(400, e),
            Some(Ok(())) => Answer::slack(200, "ok"),
        },
        ChatFlavor::Teams => {
            let Some(v) = json else {
                let e = serde_json::from_slice::<Value>(raw)
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_default();
                return Answer::json_error(
                    400,
                    "InvalidRequestContent",
                    &format!(
                        "The request content is not valid and could not be deserialized: '{e}'."
                    ),
                );
            };
            match check_teams(v) {
                Ok(()) => Answer::ok(202, "", None),
                Err(details) => teams_schema_error(&details),
            }
        }
        ChatFlavor::Generic => match json {
            Some(Value::Object(_)) => Answer::ok(200, "", None),
            _ => Answer::json_error(400, "invalid_payload", "expected a JSON object"),
        },
    }
}

// ---- Slack ----

fn check_slack(v: &Value) -> Result<(), &'static str> {
    let Some(o) = v.as_object() else {
        return Err("invalid_payload");
    };
    let text = match o.get("text") {
        None | Some(Value::Null) => "",
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err("invalid_payload"),
    };
    let blocks = match o.get("blocks") {
        None | Some(Value::Null) => &[][..],
        Some(Value::Array(a)) => a.as_slice(),
        Some(_) => return Err("invalid_blocks_format"),
    };
    if blocks.iter().any(|b| !b.is_object()) {
        return Err("invalid_blocks_format");
    }
    if blocks.len() > SLACK_MAX_BLOCKS || !blocks.iter().all(slack_block_ok) {
        return Err("invalid_blocks");
    }
    let attachments = match o.get("attachments") {
        None | Some(Value::Null) => 0,
        Some(Value::Array(a)) if a.iter().all(Value::is_object) => a.len(),
        Some(_) => return Err("invalid_payload"),
    };
    if text.trim().is_empty() && blocks.is_empty() && attachments == 0 {
        return Err("no_text");
    }
    Ok(())
}

fn chars(s: &str) -> usize {
    s.chars().count()
}

/// A composition text object: `{type: plain_text|mrkdwn, text}`, non-empty, `max` chars.
fn slack_text_ok(v: &Value, max: usize, plain_only: bool) -> bool {
    let kind = v.get("type").and_then(Value::as_str);
    let kind_ok = match kind {
        Some("plain_text") => true,
        Some("mrkdwn") => !plain_only,
        _ => false,
    };
    let text = v.get("text").and_then(Value::as_str).unwrap_or("");
    kind_ok && !text.is_empty() && chars(text) <= max
}

fn slack_elements(b: &Value, max: usize) -> Option<&Vec<Value>> {
    b.get("elements")
        .and_then(Value::as_array)
        .filter(|e| !e.is_empty() && e.len() <= max)
}

fn slack_block_ok(b: &Value) -> bool {
    if b.get("block_id")
        .is_some_and(|id| id.as_str().is_none_or(|s| s.is_empty() || chars(s) > 255))
    {
        return false;
    }
    match b.get("type").and_then(Value::as_str) {
        Some("section") => {
            let text = b.get("text");
            let fields = b.get("fields");
            if text.is_none() && fields.is_none() {
                return false;
            }
            let text_ok = text.is_none_or(|t| slack_text_ok(t, SLACK_MAX_SECTION_TEXT, false));
            let fields_ok = fields.is_none_or(|f| {
                f.as_array().is_some_and(|f| {
                    !f.is_empty()
                        && f.len() <= SLACK_MAX_SECTION_FIELDS
                        && f.iter()
                            .all(|x| slack_text_ok(x, SLACK_MAX_FIELD_TEXT, false))
                })
            });
            text_ok && fields_ok
        }
        Some("header") => b
            .get("text")
            .is_some_and(|t| slack_text_ok(t, SLACK_MAX_HEADER_TEXT, true)),
        Some("divider") => true,
        Some("context") => slack_elements(b, 10).is_some_and(|els| {
            els.iter()
                .all(|e| match e.get("type").and_then(Value::as_str) {
                    Some("image") => slack_image_ok(e),
                    _ => slack_text_ok(e, 3000, false),
                })
        }),
        Some("actions") => slack_elements(b, 25).is_some_and(|els| {
            els.iter()
                .all(|e| e.get("type").and_then(Value::as_str).is_some())
        }),
        Some("image") => {
            slack_image_ok(b) && b.get("title").is_none_or(|t| slack_text_ok(t, 2000, true))
        }
        Some("rich_text") => b
            .get("elements")
            .and_then(Value::as_array)
            .is_some_and(|e| !e.is_empty()),
        Some("markdown") => b
            .get("text")
            .and_then(Value::as_str)
            .is_some_and(|t| !t.is_empty() && chars(t) <= 12_000),
        _ => false,
    }
}

fn slack_image_ok(v: &Value) -> bool {
    let url = v.get("image_url").and_then(Value::as_str);
    let file = v.get("slack_file").is_some_and(Value::is_object);
    let alt = v.get("alt_text").and_then(Value::as_str).unwrap_or("");
    (url.is_some_and(|u| !u.is_empty() && chars(u) <= 3000) || file)
        && !alt.is_empty()
        && chars(alt) <= 2000
}

fn push_str(out: &mut Vec<String>, v: Option<&Value>) {
    if let Some(s) = v.and_then(Value::as_str) {
        if !s.is_empty() {
            out.push(s.to_string());
        }
    }
}

fn slack_texts(v: &Value, out: &mut Vec<String>) {
    push_str(out, v.get("text"));
    for b in v
        .get("blocks")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match b.get("type").and_then(Value::as_str) {
            Some("section") => {
                push_str(out, b.get("text").and_then(|t| t.get("text")));
                for f in b
                    .get("fields")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    push_str(out, f.get("text"));
                }
            }
            Some("header") => push_str(out, b.get("text").and_then(|t| t.get("text"))),
            Some("context") => {
                for e in b
                    .get("elements")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    push_str(out, e.get("text"));
                }
            }
            Some("markdown") => push_str(out, b.get("text")),
            _ => {}
        }
    }
    for a in v
        .get("attachments")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        // Slack's legacy attachments, not Teams cards.
        if a.get("content").is_none() {
            push_str(out, a.get("pretext"));
            push_str(out, a.get("title"));
            push_str(out, a.get("text"));
        }
    }
}

// ---- Teams ----

fn check_teams(v: &Value) -> Result<(), String> {
    let Some(o) = v.as_object() else {
        return Err("Invalid type. Expected Object but got Array or value.".into());
    };
    match o.get("type") {
        None => return Err("Required properties are missing from object: type.".into()),
        Some(Value::String(t)) if t == "message" => {}
        Some(t) => return Err(format!("Value {t} is not 'message'. Path 'type'.")),
    }
    let Some(attachments) = o.get("attachments") else {
        return Err("Required properties are missing from object: attachments.".into());
    };
    let Some(attachments) = attachments.as_array() else {
        return Err("Invalid type. Expected Array. Path 'attachments'.".into());
    };
    if attachments.is_empty() {
        return Err(
            "Array item count 0 is less than minimum count of 1. Path 'attachments'.".into(),
        );
    }
    let mut cards = 0;
    for (i, a) in attachments.iter().enumerate() {
        let path = format!("attachments[{i}]");
        let Some(a) = a.as_object() else {
            return Err(format!("Invalid type. Expected Object. Path '{path}'."));
        };
        let missing: Vec<&str> = ["contentType", "contentUrl", "content"]
            .into_iter()
            .filter(|k| !a.contains_key(*k))
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "Required properties are missing from object: {}. Path '{path}'.",
                missing.join(", ")
            ));
        }
        if !(a["contentUrl"].is_null() || a["contentUrl"].is_string()) {
            return Err(format!(
                "Invalid type. Expected String, Null. Path '{path}.contentUrl'."
            ));
        }
        let Some(content_type) = a["contentType"].as_str() else {
            return Err(format!(
                "Invalid type. Expected String. Path '{path}.contentType'."
            ));
        };
        if content_type == ADAPTIVE_CARD_CONTENT_TYPE {
            check_card(&a["content"], &format!("{path}.content"))?;
            cards += 1;
        }
    }
    if cards == 0 {
        return Err(format!(
            "No attachment has contentType '{ADAPTIVE_CARD_CONTENT_TYPE}'."
        ));
    }
    Ok(())
}

fn check_card(card: &Value, path: &str) -> Result<(), String> {
    let Some(c) = card.as_object() else {
        return Err(format!("Invalid type. Expected Object. Path '{path}'."));
    };
    if c.get("type").and_then(Value::as_str) != Some("AdaptiveCard") {
        return Err(format!(
            "Card type must be 'AdaptiveCard'. Path '{path}.type'."
        ));
    }
    let version_ok = c
        .get("version")
        .and_then(Value::as_str)
        .and_then(|v| v.strip_prefix("1."))
        .is_some_and(|minor| !minor.is_empty() && minor.bytes().all(|b| b.is_ascii_digit()));
    if !version_ok {
        return Err(format!(
            "Card version must be a string '1.<n>'. Path '{path}.version'."
        ));
    }
    let Some(body) = c.get("body").and_then(Value::as_array) else {
        return Err(format!("Card body must be an array. Path '{path}.body'."));
    };
    check_elements(body, &format!("{path}.body"), 0)?;
    if let Some(actions) = c.get("actions") {
        let ok = actions.as_array().is_some_and(|a| {
            a.iter().all(|x| {
                x.get("type")
                    .and_then(Value::as_str)
                    .is_some_and(|t| t.starts_with("Action."))
            })
        });
        if !ok {
            return Err(format!(
                "Card actions must be Action.* objects. Path '{path}.actions'."
            ));
        }
    }
    Ok(())
}

const CARD_ELEMENTS: &[&str] = &[
    "TextBlock",
    "RichTextBlock",
    "Image",
    "ImageSet",
    "Media",
    "FactSet",
    "ColumnSet",
    "Column",
    "Container",
    "ActionSet",
    "Table",
    "CodeBlock",
    "Icon",
    "Badge",
    "Rating",
];

fn items<'a>(e: &'a Value, key: &str) -> Option<&'a Vec<Value>> {
    e.get(key).and_then(Value::as_array)
}

fn check_elements(elements: &[Value], path: &str, depth: usize) -> Result<(), String> {
    if depth > 16 {
        return Err(format!("Card nested too deep. Path '{path}'."));
    }
    for (i, e) in elements.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let Some(t) = e.get("type").and_then(Value::as_str) else {
            return Err(format!("Element has no type. Path '{p}'."));
        };
        if !CARD_ELEMENTS.contains(&t) && !t.starts_with("Input.") {
            return Err(format!("Unknown element type '{t}'. Path '{p}'."));
        }
        let err = |what: &str| Err(format!("{t} {what}. Path '{p}'."));
        match t {
            "TextBlock" if !e.get("text").is_some_and(Value::is_string) => {
                return err("needs a string 'text'")
            }
            "FactSet" => {
                let ok = items(e, "facts").is_some_and(|f| {
                    f.iter().all(|f| {
                        f.get("title").is_some_and(Value::is_string)
                            && f.get("value").is_some_and(Value::is_string)
                    })
                });
                if !ok {
                    return err("needs 'facts' of {title, value} strings");
                }
            }
            "Container" => match items(e, "items") {
                Some(x) => check_elements(x, &format!("{p}.items"), depth + 1)?,
                None => return err("needs an 'items' array"),
            },
            "Column" => {
                if let Some(x) = items(e, "items") {
                    check_elements(x, &format!("{p}.items"), depth + 1)?;
                }
            }
            "ColumnSet" => {
                for (j, col) in items(e, "columns").into_iter().flatten().enumerate() {
                    let cp = format!("{p}.columns[{j}]");
                    if !col.is_object() {
                        return Err(format!("Column must be an object. Path '{cp}'."));
                    }
                    if let Some(x) = items(col, "items") {
                        check_elements(x, &format!("{cp}.items"), depth + 1)?;
                    }
                }
            }
            "RichTextBlock" if items(e, "inlines").is_none() => {
                return err("needs an 'inlines' array")
            }
            "Image" if !e.get("url").is_some_and(Value::is_string) => {
                return err("needs a string 'url'")
            }
            "ImageSet" if items(e, "images").is_none() => return err("needs an 'images' array"),
            "ActionSet" if items(e, "actions").is_none() => return err("needs an 'actions' array"),
            _ if t.starts_with("Input.") && !e.get("id").is_some_and(Value::is_string) => {
                return err("needs a string 'id'")
            }
            _ => {}
        }
    }
    Ok(())
}

fn teams_texts(v: &Value, out: &mut Vec<String>) {
    for a in v
        .get("attachments")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(body) = a
            .get("content")
            .and_then(|c| c.get("body"))
            .and_then(Value::as_array)
        {
            card_texts(body, out, 0);
        }
    }
}

fn card_texts(elements: &[Value], out: &mut Vec<String>, depth: usize) {
    if depth > 16 {
        return;
    }
    for e in elements {
        match e.get("type").and_then(Value::as_str) {
            Some("TextBlock") => push_str(out, e.get("text")),
            Some("FactSet") => {
                for f in items(e, "facts").into_iter().flatten() {
                    let title = f.get("title").and_then(Value::as_str).unwrap_or("");
                    let value = f.get("value").and_then(Value::as_str).unwrap_or("");
                    out.push(format!("{title}: {value}"));
                }
            }
            Some("RichTextBlock") => {
                let text: String = items(e, "inlines")
                    .into_iter()
                    .flatten()
                    .filter_map(|i| i.as_str().or_else(|| i.get("text").and_then(Value::as_str)))
                    .collect();
                if !text.is_empty() {
                    out.push(text);
                }
            }
            Some("Container") | Some("Column") => {
                if let Some(x) = items(e, "items") {
                    card_texts(x, out, depth + 1);
                }
            }
            Some("ColumnSet") => {
                for col in items(e, "columns").into_iter().flatten() {
                    if let Some(x) = items(col, "items") {
                        card_texts(x, out, depth + 1);
                    }
                }
            }
            Some("Table") => {
                for row in items(e, "rows").into_iter().flatten() {
                    for cell in items(row, "cells").into_iter().flatten() {
                        if let Some(x) = items(cell, "items") {
                            card_texts(x, out, depth + 1);
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn post(url: &str, body: &str) -> (u16, Option<String>, String) {
        let r = reqwest::Client::new()
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let retry = r
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        (status, retry, r.text().await.unwrap())
    }

    fn teams_card(body: Value) -> Value {
        json!({
            "type": "message",
            "attachments": [{
                "contentType": ADAPTIVE_CARD_CONTENT_TYPE,
                "contentUrl": null,
                "content": {
                    "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                    "type": "AdaptiveCard",
                    "version": "1.4",
                    "body": body
                }
            }]
        })
    }

    #[tokio::test]
    async fn slack_accepts_text_and_blocks() {
        let fake = ChatWebhookFake::start(ChatFlavor::Slack).await.unwrap();
        assert!(fake.url().starts_with("http://127.0.0.1:"));
        assert!(fake.url().contains("/webhook/"));
        let (status, _, body) = post(fake.url(), r#"{"text":"New lead: Ada"}"#).await;
        assert_eq!((status, body.as_str()), (200, "ok"));
        let payload = json!({
            "text": "New lead: Ada Lovelace",
            "blocks": [
                {"type": "header", "text": {"type": "plain_text", "text": "New lead"}},
                {"type": "section", "text": {"type": "mrkdwn", "text": "*Ada Lovelace* at Contoso"},
                 "fields": [{"type": "mrkdwn", "text": "*Offer:* Widgets"},
                            {"type": "plain_text", "text": "Germany"}]},
                {"type": "divider"},
                {"type": "context", "elements": [{"type": "mrkdwn", "text": "via leadsync"}]},
                {"type": "actions", "elements": [{"type": "button",
                 "text": {"type": "plain_text", "text": "Open"}, "url": "https://example.com"}]},
                {"type": "image", "image_url": "https://example.com/a.png", "alt_text": "logo"}
            ]
        });
        let (status, _, _) = post(fake.url(), &payload.to_string()).await;
        assert_eq!(status, 200);
        assert_eq!(
            fake.texts(),
            vec![
                vec!["New lead: Ada".to_string()],
                vec![
                    "New lead: Ada Lovelace".to_string(),
                    "New lead".into(),
                    "*Ada Lovelace* at Contoso".into(),
                    "*Offer:* Widgets".into(),
                    "Germany".into(),
                    "via leadsync".into(),
                ]
            ]
        );
        let r = &fake.received()[1];
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.status, 200);
        assert!(r.error.is_none());
    }

    #[tokio::test]
    async fn slack_rejects_malformed_payloads() {
        let fake = ChatWebhookFake::start(ChatFlavor::Slack).await.unwrap();
        let header = |n: usize| json!({"type": "header", "text": {"type": "plain_text", "text": "h".repeat(n)}});
        let cases = [
            ("not json".to_string(), "invalid_payload"),
            ("[1]".into(), "invalid_payload"),
            (r#"{"text": 5}"#.into(), "invalid_payload"),
            ("{}".into(), "no_text"),
            (r#"{"text": "  "}"#.into(), "no_text"),
            (r#"{"text": "x", "blocks": {}}"#.into(), "invalid_blocks_format"),
            (r#"{"text": "x", "blocks": [1]}"#.into(), "invalid_blocks_format"),
            (json!({"blocks": vec![json!({"type": "divider"}); 51]}).to_string(), "invalid_blocks"),
            (json!({"blocks": [header(151)]}).to_string(), "invalid_blocks"),
            (json!({"blocks": [{"type": "header", "text": {"type": "mrkdwn", "text": "h"}}]}).to_string(), "invalid_blocks"),
            (json!({"blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "x".repeat(3001)}}]}).to_string(), "invalid_blocks"),
            (json!({"blocks": [{"type": "section", "fields": [{"type": "mrkdwn", "text": ""}]}]}).to_string(), "invalid_blocks"),
            (json!({"blocks": [{"type": "section"}]}).to_string(), "invalid_blocks"),
            (json!({"blocks": [{"type": "table"}]}).to_string(), "invalid_blocks"),
        ];
        for (body, expected) in &cases {
            let (status, _, answer) = post(fake.url(), body).await;
            assert_eq!((status, answer.as_str()), (400, *expected), "{body}");
        }
        // The limits themselves are fine.
        let ok = json!({"blocks": [header(150)], "text": "fallback"});
        assert_eq!(post(fake.url(), &ok.to_string()).await.0, 200);
        let ok = json!({"blocks": vec![json!({"type": "divider"}); 50]});
        assert_eq!(post(fake.url(), &ok.to_string()).await.0, 200);
        assert_eq!(fake.accepted().len(), 2);
        assert_eq!(fake.received()[3].error.as_deref(), Some("no_text"));
    }

    #[tokio::test]
    async fn teams_accepts_an_adaptive_card() {
        let fake = ChatWebhookFake::start(ChatFlavor::Teams).await.unwrap();
        let card = teams_card(json!([
            {"type": "TextBlock", "text": "New lead", "weight": "Bolder", "size": "Medium"},
            {"type": "FactSet", "facts": [{"title": "Name", "value": "Ada Lovelace"},
                                          {"title": "Company", "value": "Contoso"}]},
            {"type": "ColumnSet", "columns": [{"type": "Column", "items": [
                {"type": "TextBlock", "text": "left", "wrap": true}]}]},
            {"type": "Container", "items": [{"type": "TextBlock", "text": "inner"}]}
        ]));
        let (status, _, body) = post(fake.url(), &card.to_string()).await;
        assert_eq!((status, body.as_str()), (202, ""));
        assert_eq!(
            fake.texts(),
            vec![vec![
                "New lead".to_string(),
                "Name: Ada Lovelace".into(),
                "Company: Contoso".into(),
                "left".into(),
                "inner".into(),
            ]]
        );
    }

    #[tokio::test]
    async fn teams_rejects_malformed_payloads() {
        let fake = ChatWebhookFake::start(ChatFlavor::Teams).await.unwrap();
        let mut no_url = teams_card(json!([{"type": "TextBlock", "text": "x"}]));
        no_url["attachments"][0]
            .as_object_mut()
            .unwrap()
            .remove("contentUrl");
        let mut wrong_type = teams_card(json!([]));
        wrong_type["attachments"][0]["contentType"] = json!("application/vnd.microsoft.card.hero");
        let mut no_version = teams_card(json!([]));
        no_version["attachments"][0]["content"]["version"] = json!(1.4);
        let cases = [
            no_url.to_string(),
            wrong_type.to_string(),
            no_version.to_string(),
            json!({"text": "legacy connector payload"}).to_string(),
            json!({"type": "message", "attachments": []}).to_string(),
            teams_card(json!({"type": "TextBlock"})).to_string(),
            teams_card(json!([{"type": "TextBlock"}])).to_string(),
            teams_card(json!([{"type": "FactSet", "facts": [{"title": "a"}]}])).to_string(),
            teams_card(json!([{"type": "Container", "items": [{"text": "no type"}]}])).to_string(),
            teams_card(json!([{"type": "Marquee"}])).to_string(),
        ];
        for body in &cases {
            let (status, _, answer) = post(fake.url(), body).await;
            assert_eq!(status, 400, "{body}");
            let v: Value = serde_json::from_str(&answer).unwrap();
            assert_eq!(v["error"]["code"], "TriggerInputSchemaMismatch", "{body}");
        }
        let (_, _, answer) = post(fake.url(), &no_url.to_string()).await;
        assert!(
            answer.contains("Required properties are missing from object: contentUrl."),
            "{answer}"
        );
        let (status, _, answer) = post(fake.url(), "{not json").await;
        assert_eq!(status, 400);
        assert!(answer.contains("InvalidRequestContent"));
        assert!(fake.accepted().is_empty());
    }

    #[tokio::test]
    async fn generic_accepts_any_object() {
        let fake = ChatWebhookFake::start(ChatFlavor::Generic).await.unwrap();
        let (status, _, body) =
            post(fake.url(), r#"{"lead": {"name": "Ada"}, "text": "hi"}"#).await;
        assert_eq!((status, body.as_str()), (200, ""));
        assert_eq!(post(fake.url(), "[1, 2]").await.0, 400);
        assert_eq!(post(fake.url(), "nope").await.0, 400);
        assert_eq!(fake.texts(), vec![vec!["hi".to_string()]]);
    }

    #[tokio::test]
    async fn faults_paths_and_latency() {
        let fake = ChatWebhookFake::start(ChatFlavor::Slack).await.unwrap();
        let ok = r#"{"text":"x"}"#;
        fake.inject(
            ChatFault::TooManyRequests {
                retry_after_secs: 7,
            },
            2,
        );
        fake.inject(ChatFault::ServerError, 1);
        fake.inject(ChatFault::Gone, 1);
        fake.inject(ChatFault::Revoked, 1);
        let answers = [
            (429, Some("7".to_string()), "rate_limited".to_string()),
            (429, Some("7".into()), "rate_limited".into()),
            (500, None, "rollup_error".into()),
            (410, None, "channel_is_archived".into()),
            (404, None, "no_service".into()),
            (200, None, "ok".into()),
        ];
        for expected in answers {
            assert_eq!(post(fake.url(), ok).await, expected);
        }
        // Another path, another method.
        let other = format!("{}/webhook/0000", fake.base_url());
        assert_eq!(post(&other, ok).await.0, 404);
        let get = reqwest::get(fake.url()).await.unwrap();
        assert_eq!(get.status().as_u16(), 405);
        let statuses: Vec<u16> = fake.received().iter().map(|r| r.status).collect();
        assert_eq!(statuses, [429, 429, 500, 410, 404, 200, 404, 405]);
        assert_eq!(fake.accepted().len(), 1);

        fake.set_latency(Duration::from_millis(150));
        let t = Instant::now();
        assert_eq!(post(fake.url(), ok).await.0, 200);
        assert!(t.elapsed() >= Duration::from_millis(150));

        let teams = ChatWebhookFake::start(ChatFlavor::Teams).await.unwrap();
        teams.inject(
            ChatFault::TooManyRequests {
                retry_after_secs: 3,
            },
            1,
        );
        let (status, retry, _) = post(teams.url(), "{}").await;
        assert_eq!((status, retry.as_deref()), (429, Some("3")));
    }
}
