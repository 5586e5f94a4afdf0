//! A stateful fake of the Marketo REST API (`spec/crm-apis.md` §4), for the Marketo
//! connector's tests and benchmarks.
//!
//! It owns an in-memory lead database and answers like a Marketo instance would:
//!
//! - `GET|POST /identity/oauth/token?grant_type=client_credentials&client_id=..&client_secret=..`
//!   (the parameters may also come in a form body): `{access_token, token_type: "bearer",
//!   expires_in, scope}`. While a token lives, asking again returns the same token with the
//!   remaining lifetime in whole seconds (3599 for a fresh one of 3600 s). A wrong secret is
//!   HTTP 401 `{"error":"invalid_client","error_description":"Bad client credentials"}`, an
//!   unknown client id 401 `{"error":"unauthorized","error_description":"No client with
//!   requested id: <id>"}`. Answers carry `Cache-Control: no-store` and `Pragma: no-cache`.
//! - Every `/rest/...` call: `Authorization: Bearer <token>` (or the `access_token` query
//!   parameter); no token is `600 Empty access token`, an unknown one `601 Access token
//!   invalid`, an expired one `602 Access token expired`. Response-level errors are HTTP 200
//!   `{"requestId","success":false,"errors":[{"code":"6xx","message"}]}`, codes quoted.
//! - `POST /rest/v1/leads.json` (Sync Leads): `action` (`createOrUpdate` default,
//!   `createOnly`, `updateOnly`, `createDuplicate`), `lookupField` (default `email`; it must
//!   be a searchable field: unknown is `1006`, not searchable `1011 Field '<f>' not
//!   supported`), `partitionName` (only `Default` exists), `input` (1 to 300 records, else
//!   `1003`). One result per record in input order: `{id, status: created|updated}` or
//!   `{status: skipped, reasons: [{code, message}]}` with `1003 Invalid value for field
//!   '<f>'` (type, length, e-mail format: ASCII only), `1004 Lead not found`, `1005 Lead
//!   already exists`, `1006 Field '<f>' not found`, `1007 Multiple lead match lookup
//!   criteria`, `1008 Access denied to partition '<p>'`. String lookups are
//!   case-insensitive. Content type other than JSON is `612`, a body that is not JSON `609`,
//!   over 1 MB HTTP 413. No uniqueness is enforced on any field: the key is looked up
//!   *before* the added latency and the records written *after* it, so two concurrent calls
//!   creating the same new key both create a lead (the §4.2 duplicate race), and later
//!   calls on that key get 1007.
//! - `GET /rest/v1/leads.json?filterType=..&filterValues=..&fields=..` (also `POST` with
//!   `_method=GET` and a form body), `GET /rest/v1/lead/<id>.json`: read leads back.
//! - `GET /rest/v1/leads/describe.json` (`result[]` of `{id, displayName, dataType, length,
//!   rest{name,readOnly}, soap{name,readOnly}}`, ids and metadata as a real instance reports
//!   them) and `GET /rest/v1/leads/describe2.json` (`result[0]` = `{name: "API Lead",
//!   searchableFields: [[..]], dedupeFields, fields: [{name, displayName, dataType, length,
//!   updateable, crmManaged}]}`). Standard fields include `email`, `firstName`, `lastName`,
//!   `company`, `title`, `phone`, `mobilePhone`, `country`, `leadSource`, `leadStatus`,
//!   `mktoPersonNotes` ("Person Notes", `text`: Marketo's standard free-text field; the lead
//!   has no `description`), `unsubscribed`, `marketingSuspended`, `id`, `createdAt`,
//!   `updatedAt`; custom ones come from [`MarketoFake::add_field`].
//! - Any other `/rest` path: HTTP 200 with `610 Requested resource not found`; a known path
//!   with another method `605 HTTP Method not supported`. Paths outside `/rest` and
//!   `/identity`: HTTP 404.
//!
//! Limits are enforced by the fake itself: more than `calls_per_window` calls in the sliding
//! `window` is `606 Max rate limit '100' exceeded with in '20' secs`, more than
//! `max_concurrent` in flight `615 Concurrent access limit '10' reached`, the daily quota
//! used up `607 Daily quota reached` (the day turns at 00:00 UTC-6). Which calls count: per
//! the error-codes page, a call answered with one of the asterisked codes (600, 601, 602,
//! 604, 605, 608, 611) counts against neither the rate limit nor the quota; every other REST
//! call counts, the ones refused with 606, 607 or 615 included (so hammering a throttled
//! instance keeps it throttled). Token calls never count. Faults can be queued per REST call
//! ([`Fault`]), tokens expired, latency added, and the requests (with arrival `Instant`),
//! peak calls per window, peak concurrency and stored leads read back.
//!
//! Not confirmed against a live instance (chosen from the docs or by analogy):
//! - The identity answers other than a wrong secret: an unknown client id (`unauthorized`,
//!   "No client with requested id"), a missing one, a missing or other `grant_type` (400).
//! - 600 "Empty access token" for a missing token (Adobe KCS ka-28813 lists 600; the current
//!   error-codes page does not).
//! - The code and message for more than 300 records (response-level `1003` here).
//! - Whether an unknown field in a record skips that record (done here, `1006`) or fails the
//!   call; whether field names are case-sensitive (exact match here).
//! - `1011` as a response-level error for a non-searchable `lookupField` or `filterType`.
//! - A record without a value for the lookup field (skipped `1003` here), a read-only field
//!   in a record (skipped `1003`), `id` with an action other than `updateOnly` (skipped
//!   `1003`), a partition other than `Default` (skipped `1008`).
//! - That a string over its length is refused (`1003`) rather than truncated.
//! - The quota day turning at 00:00 UTC-6 all year (CST; the spec's [U] on CDT).
//! - The 65,535-character limit of `text` fields (describe reports no length for them).
//! - `dedupeFields` in the lead `describe2` answer (the swagger only requires `name`,
//!   `searchableFields`, `fields`).
//! - Whether 606/607/615 answers count against the limits (the spec's [U]; counted here).

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The most records one Sync Leads call (or one filter query) takes.
pub const MAX_BATCH: usize = 300;
/// Request bodies above this get HTTP 413.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// The `scope` of issued tokens (the API-only user owning the custom service).
pub const SCOPE: &str = "apis@example.com";

/// Limit of `text` fields, for which describe reports no length (not confirmed).
const TEXT_LIMIT: usize = 65_535;
/// Response-level codes whose calls count against neither the rate limit nor the quota.
const EXEMPT_CODES: [&str; 7] = ["600", "601", "602", "604", "605", "608", "611"];

/// How the fake is set up at start.
#[derive(Debug, Clone)]
pub struct MarketoFakeConfig {
    pub client_id: String,
    pub client_secret: String,
    /// REST calls allowed in any sliding `window` (Marketo: 100 per 20 s).
    pub calls_per_window: usize,
    pub window: Duration,
    /// REST calls allowed in flight at once (Marketo: 10).
    pub max_concurrent: usize,
    /// REST calls allowed per day (Marketo default: 50,000).
    pub daily_quota: u64,
    /// How long an access token lives (Marketo: 3600 s).
    pub token_lifetime: Duration,
}

impl Default for MarketoFakeConfig {
    fn default() -> Self {
        MarketoFakeConfig {
            client_id: "leadsync-client".into(),
            client_secret: "leadsync-secret-0123456789".into(),
            calls_per_window: 100,
            window: Duration::from_secs(20),
            max_concurrent: 10,
            daily_quota: 50_000,
            token_lifetime: Duration::from_secs(3600),
        }
    }
}

/// A whole-call failure to inject into the coming REST calls (not the token endpoint). Each
/// answers HTTP 200 with `success:false` and the response-level code in its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 606 `Max rate limit '<n>' exceeded with in '<s>' secs`.
    RateLimit606,
    /// 615 `Concurrent access limit '<n>' reached`.
    Concurrency615,
    /// 607 `Daily quota reached`.
    DailyQuota607,
    /// 604 `Request timed out`.
    Timeout604,
    /// 608 `API Temporarily Unavailable`.
    Unavailable608,
    /// 611 `System error`.
    SystemError611,
    /// 1029 `Too many jobs in queue`.
    TooManyJobs1029,
    /// 601 `Access token invalid` (the tokens stay valid).
    TokenInvalid601,
    /// 602 `Access token expired`; every token issued so far expires, so the next token
    /// request gets a new one.
    TokenExpired602,
    /// The call is carried out (records written) and then answered 611 `System error`: the
    /// ambiguous case a client must retry idempotently.
    CommittedThenFailed,
}

impl Fault {
    fn answer(self, cfg: &MarketoFakeConfig) -> (&'static str, String) {
        match self {
            Fault::RateLimit606 => ("606", rate_message(cfg)),
            Fault::Concurrency615 => ("615", concurrency_message(cfg)),
            Fault::DailyQuota607 => ("607", "Daily quota reached".into()),
            Fault::Timeout604 => ("604", "Request timed out".into()),
            Fault::Unavailable608 => ("608", "API Temporarily Unavailable".into()),
            Fault::SystemError611 | Fault::CommittedThenFailed => ("611", "System error".into()),
            Fault::TooManyJobs1029 => ("1029", "Too many jobs in queue".into()),
            Fault::TokenInvalid601 => ("601", "Access token invalid".into()),
            Fault::TokenExpired602 => ("602", "Access token expired".into()),
        }
    }
}

fn rate_message(cfg: &MarketoFakeConfig) -> String {
    format!(
        "Max rate limit '{}' exceeded with in '{}' secs",
        cfg.calls_per_window,
        cfg.window.as_secs()
    )
}

fn concurrency_message(cfg: &MarketoFakeConfig) -> String {
    format!("Concurrent access limit '{}' reached", cfg.max_concurrent)
}

/// One lead field as describe reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldSpec {
    /// The REST API name (`rest.name`), also the key in Sync Leads records.
    pub rest_name: String,
    pub display_name: String,
    /// `string`, `email`, `phone`, `url`, `text`, `boolean`, `integer`, `float`, `currency`,
    /// `percent`, `score`, `date`, `datetime`, `reference`.
    pub data_type: String,
    /// Maximum characters; `None` for non-text types, and for `string`-like types it means
    /// 255 (for `text`, 65,535).
    pub length: Option<usize>,
    pub read_only: bool,
    /// Usable as `lookupField` and `filterType` (listed in describe2 `searchableFields`).
    pub searchable: bool,
    /// Listed in describe2 `dedupeFields`.
    pub dedupe: bool,
}

impl FieldSpec {
    fn new(rest_name: &str, data_type: &str, length: Option<usize>) -> FieldSpec {
        FieldSpec {
            rest_name: rest_name.into(),
            display_name: rest_name.into(),
            data_type: data_type.into(),
            length,
            read_only: false,
            searchable: false,
            dedupe: false,
        }
    }
    /// A writable string field of at most `length` characters, not searchable.
    pub fn string(rest_name: &str, length: usize) -> FieldSpec {
        FieldSpec::new(rest_name, "string", Some(length))
    }
    /// A custom key: a searchable string field of 255 characters, usable as `lookupField`
    /// (e.g. `leadsyncKey`). Marketo enforces no uniqueness on it.
    pub fn custom_key(rest_name: &str) -> FieldSpec {
        FieldSpec::new(rest_name, "string", Some(255)).searchable()
    }
    /// A text-area field (no length in describe).
    pub fn text(rest_name: &str) -> FieldSpec {
        FieldSpec::new(rest_name, "text", None)
    }
    pub fn email(rest_name: &str) -> FieldSpec {
        FieldSpec::new(rest_name, "email", Some(255))
    }
    pub fn boolean(rest_name: &str) -> FieldSpec {
        FieldSpec::new(rest_name, "boolean", None)
    }
    pub fn integer(rest_name: &str) -> FieldSpec {
        FieldSpec::new(rest_name, "integer", None)
    }
    pub fn date(rest_name: &str) -> FieldSpec {
        FieldSpec::new(rest_name, "date", None)
    }
    pub fn datetime(rest_name: &str) -> FieldSpec {
        FieldSpec::new(rest_name, "datetime", None)
    }
    /// Any other data type.
    pub fn typed(rest_name: &str, data_type: &str, length: Option<usize>) -> FieldSpec {
        FieldSpec::new(rest_name, data_type, length)
    }
    pub fn display(mut self, display_name: &str) -> FieldSpec {
        self.display_name = display_name.into();
        self
    }
    pub fn searchable(mut self) -> FieldSpec {
        self.searchable = true;
        self
    }
    pub fn read_only(mut self) -> FieldSpec {
        self.read_only = true;
        self
    }
    pub fn dedupe(mut self) -> FieldSpec {
        self.dedupe = true;
        self
    }

    fn is_textual(&self) -> bool {
        matches!(
            self.data_type.as_str(),
            "string" | "email" | "phone" | "url" | "text" | "textarea"
        )
    }

    fn limit(&self) -> usize {
        self.length.unwrap_or(if self.data_type == "text" {
            TEXT_LIMIT
        } else {
            255
        })
    }
}

/// A field as stored: describe id and SOAP name besides the spec.
#[derive(Debug, Clone)]
struct Field {
    id: u32,
    spec: FieldSpec,
    soap: Option<String>,
}

/// The standard lead fields as a real instance's describe reports them, one a line:
/// `id|REST name|display name|data type|length|SOAP name` (length and SOAP name may be
/// empty).
const STANDARD_FIELDS: &str = "
4|company|Company Name|string|255|Company
11|website|Website|url|255|Website
15|annualRevenue|Annual Revenue|currency||AnnualRevenue
16|numberOfEmployees|Num Employees|integer||NumberOfEmployees
17|industry|Industry|string|255|Industry
44|id|Id|integer||Id
52|salutation|Salutation|string|255|Salutation
53|firstName|First Name|string|255|FirstName
54|middleName|Middle Name|string|255|MiddleName
55|lastName|Last Name|string|255|LastName
56|email|Email Address|email|255|Email
57|phone|Phone Number|phone|255|Phone
58|mobilePhone|Mobile Phone Number|phone|255|MobilePhone
62|title|Job Title|string|255|Title
64|dateOfBirth|Date of Birth|date||DateofBirth
65|address|Address|text||Address
66|city|City|string|255|City
67|state|State|string|255|State
68|country|Country|string|255|Country
69|postalCode|Postal Code|string|255|PostalCode
72|originalSourceType|Original Source Type|string|255|OriginalSourceType
79|emailInvalid|Email Invalid|boolean||EmailInvalid
81|unsubscribed|Unsubscribed|boolean||Unsubscribed
83|unsubscribedReason|Unsubscribed Reason|string|2000|UnsubscribedReason
84|doNotCall|Do Not Call|boolean||DoNotCall
87|marketingSuspended|Marketing Suspended|boolean||
91|mktoPersonNotes|Person Notes|text||MktoPersonNotes
128|department|Department|string|255|Department
132|createdAt|Created At|datetime||
133|updatedAt|Updated At|datetime||
146|leadSource|Lead Source|string|255|LeadSource
147|leadStatus|Lead Status|string|255|LeadStatus
148|leadScore|Lead Score|integer||LeadScore
";

/// [`STANDARD_FIELDS`] with their flags: `email` searchable and the dedupe field, `id`
/// searchable, the system-managed ones read-only.
fn standard_fields() -> Vec<Field> {
    STANDARD_FIELDS
        .lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            let c: Vec<&str> = line.split('|').collect();
            let (name, soap) = (c[1], c[5]);
            let mut spec = FieldSpec::new(name, c[3], c[4].parse().ok()).display(c[2]);
            match name {
                "email" => spec = spec.searchable().dedupe(),
                "id" => spec = spec.searchable(),
                "createdAt" | "updatedAt" | "originalSourceType" => spec = spec.read_only(),
                _ => {}
            }
            Field {
                id: c[0].parse().unwrap_or(0),
                spec,
                soap: (!soap.is_empty()).then(|| soap.to_string()),
            }
        })
        .collect()
}

/// One stored lead.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredLead {
    pub id: u64,
    /// Every field set, by REST name (plus `createdAt`, `updatedAt`, boolean defaults and
    /// `originalSourceType` for leads created through the API).
    pub fields: Map<String, Value>,
    /// How many times it was updated after creation.
    pub updates: u32,
}

impl StoredLead {
    pub fn get_str(&self, field: &str) -> Option<&str> {
        self.fields.get(field).and_then(Value::as_str)
    }
}

/// One request the fake received (token requests included).
#[derive(Debug, Clone)]
pub struct RequestInfo {
    pub method: String,
    /// Path only (no query string).
    pub path: String,
    /// Arrival time.
    pub at: Instant,
    /// When the answer was ready (after any latency): a throttle's wait counts from here.
    pub answered: Instant,
    /// HTTP status (200 for every response-level error).
    pub status: u16,
    /// The response-level error code (`"606"`), or the OAuth `error` of a refused token
    /// request; `None` on success (records may still have been skipped).
    pub code: Option<String>,
    /// Records in the `input` of a Sync Leads call, else 0.
    pub records: usize,
}

#[derive(Debug, Clone)]
struct TokenInfo {
    issued: Instant,
    expired: bool,
}

struct Inner {
    config: MarketoFakeConfig,
    base_url: String,
    state: Mutex<FakeState>,
}

struct FakeState {
    fields: Vec<Field>,
    next_field_id: u32,
    leads: Vec<StoredLead>,
    /// Searchable field -> normalised value -> lead indexes (candidates, checked on use).
    index: HashMap<String, HashMap<String, Vec<usize>>>,
    tokens: HashMap<String, TokenInfo>,
    current_token: Option<String>,
    token_requests: u64,
    faults: crate::FaultQueue<Fault>,
    latency: Duration,
    in_flight: usize,
    max_in_flight: usize,
    /// Counted calls still inside the window: (call id, arrival).
    window: VecDeque<(u64, Instant)>,
    /// Every counted call.
    history: Vec<(u64, Instant)>,
    next_call_id: u64,
    daily_used: u64,
    quota_day: chrono::NaiveDate,
    requests: Vec<RequestInfo>,
}

/// A running fake Marketo instance. Dropping it stops the server.
pub struct MarketoFake {
    inner: Arc<Inner>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for MarketoFake {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn lock(inner: &Inner) -> MutexGuard<'_, FakeState> {
    // A test that panicked while holding the lock must not hide the state from others.
    inner.state.lock().unwrap_or_else(|p| p.into_inner())
}

/// Marketo's quota day starts at 00:00 CST (UTC-6).
fn quota_day() -> chrono::NaiveDate {
    (chrono::Utc::now() - chrono::TimeDelta::hours(6)).date_naive()
}

fn now_stamp() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

impl MarketoFake {
    /// Start on 127.0.0.1 on a free port.
    pub async fn start(config: MarketoFakeConfig) -> std::io::Result<MarketoFake> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            base_url: format!("http://{addr}"),
            state: Mutex::new(FakeState {
                fields: standard_fields(),
                next_field_id: 1000,
                leads: Vec::new(),
                index: HashMap::new(),
                tokens: HashMap::new(),
                current_token: None,
                token_requests: 0,
                faults: crate::FaultQueue::default(),
                latency: Duration::ZERO,
                in_flight: 0,
                max_in_flight: 0,
                window: VecDeque::new(),
                history: Vec::new(),
                next_call_id: 0,
                daily_used: 0,
                quota_day: quota_day(),
                requests: Vec::new(),
            }),
            config,
        });
        // The fake answers 413 itself above 1 MB; the extractor's own limit sits higher so
        // that such requests still reach the handler and the request log.
        let app = axum::Router::new()
            .fallback(handle)
            .layer(DefaultBodyLimit::max(64 * 1024 * 1024))
            .with_state(Arc::clone(&inner));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(MarketoFake { inner, server })
    }

    /// `http://127.0.0.1:<port>`: the identity endpoint is `{base}/identity`, REST
    /// `{base}/rest`.
    pub fn base_url(&self) -> &str {
        &self.inner.base_url
    }

    /// `{base}/identity`, the "Identity URL" of Admin > Web Services.
    pub fn identity_url(&self) -> String {
        format!("{}/identity", self.inner.base_url)
    }

    /// `{base}/rest`, the "REST endpoint" of Admin > Web Services.
    pub fn rest_url(&self) -> String {
        format!("{}/rest", self.inner.base_url)
    }

    pub fn config(&self) -> &MarketoFakeConfig {
        &self.inner.config
    }

    fn state(&self) -> MutexGuard<'_, FakeState> {
        lock(&self.inner)
    }

    /// Fail the coming `times` REST calls with `fault` (after entries already queued).
    pub fn inject(&self, fault: Fault, times: usize) {
        self.state().faults.inject(fault, times);
    }

    /// Let the next `pass` REST calls through (after entries already queued), then fail
    /// `times` with `fault`.
    pub fn inject_after(&self, pass: usize, fault: Fault, times: usize) {
        self.state().faults.inject_after(pass, fault, times);
    }

    /// Drop every queued fault.
    pub fn clear_faults(&self) {
        self.state().faults.clear();
    }

    /// Expire every token issued so far: the next REST call with one gets 602, and the next
    /// token request issues a new token.
    pub fn expire_tokens(&self) {
        let mut s = self.state();
        for t in s.tokens.values_mut() {
            t.expired = true;
        }
        s.current_token = None;
    }

    /// Wait this long in every REST call (not the token endpoint). In Sync Leads the wait
    /// falls between looking the keys up and writing the records.
    pub fn set_latency(&self, latency: Duration) {
        self.state().latency = latency;
    }

    /// Add (or replace, by REST name) a lead field.
    pub fn add_field(&self, field: FieldSpec) {
        let mut s = self.state();
        let existing = s
            .fields
            .iter()
            .position(|f| f.spec.rest_name == field.rest_name);
        match existing {
            Some(i) => s.fields[i].spec = field.clone(),
            None => {
                let id = s.next_field_id;
                s.next_field_id += 1;
                s.fields.push(Field {
                    id,
                    soap: Some(field.rest_name.clone()),
                    spec: field,
                });
            }
        }
        s.rebuild_index();
    }

    /// Remove a lead field (stored values stay on the leads).
    pub fn remove_field(&self, rest_name: &str) {
        let mut s = self.state();
        s.fields.retain(|f| f.spec.rest_name != rest_name);
        s.rebuild_index();
    }

    /// Store a lead as is, bypassing validation (e.g. two leads with one e-mail, to get
    /// 1007). Returns its id.
    pub fn seed_lead(&self, fields: Map<String, Value>) -> u64 {
        let mut s = self.state();
        let id = s.leads.len() as u64 + 1;
        s.leads.push(StoredLead {
            id,
            fields,
            updates: 0,
        });
        let i = s.leads.len() - 1;
        s.index_lead(i);
        id
    }

    /// Every stored lead, in creation order.
    pub fn leads(&self) -> Vec<StoredLead> {
        self.state().leads.clone()
    }

    pub fn lead(&self, id: u64) -> Option<StoredLead> {
        let s = self.state();
        s.lead_index(id).map(|i| s.leads[i].clone())
    }

    /// The leads whose `field` holds `value` (strings compared case-insensitively).
    pub fn leads_where(&self, field: &str, value: &str) -> Vec<StoredLead> {
        let s = self.state();
        let wanted = value.to_lowercase();
        s.leads
            .iter()
            .filter(|l| l.fields.get(field).and_then(norm).as_deref() == Some(wanted.as_str()))
            .cloned()
            .collect()
    }

    /// Every request received (token requests included), in arrival order.
    pub fn requests(&self) -> Vec<RequestInfo> {
        self.state().requests.clone()
    }

    /// REST calls received (everything under `/rest`).
    pub fn rest_request_count(&self) -> usize {
        self.state()
            .requests
            .iter()
            .filter(|r| r.path.starts_with("/rest/"))
            .count()
    }

    /// Forget the request log (the rate-limit history stays).
    pub fn clear_requests(&self) {
        self.state().requests.clear();
    }

    /// Token requests received, granted or not.
    pub fn token_requests(&self) -> u64 {
        self.state().token_requests
    }

    /// The most REST calls the fake counted against the rate limit in any sliding window
    /// (token calls and calls answered with an exempt code excluded; calls refused with
    /// 606/607/615 included).
    pub fn max_calls_in_window(&self) -> usize {
        let mut at: Vec<Instant> = self.state().history.iter().map(|(_, t)| *t).collect();
        at.sort();
        let window = self.inner.config.window;
        let mut best = 0;
        let mut start = 0;
        for end in 0..at.len() {
            while at[end].duration_since(at[start]) >= window {
                start += 1;
            }
            best = best.max(end - start + 1);
        }
        best
    }

    /// The most REST calls in flight at once, refused ones included.
    pub fn max_in_flight(&self) -> usize {
        self.state().max_in_flight
    }

    /// Set the calls used today; at `daily_quota` every counted call gets 607.
    pub fn set_daily_used(&self, used: u64) {
        let mut s = self.state();
        s.quota_day = quota_day();
        s.daily_used = used;
    }

    pub fn daily_used(&self) -> u64 {
        self.state().daily_used
    }
}

/// A comparable form of a lookup value: strings lower-cased, numbers as text.
fn norm(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.to_lowercase()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl FakeState {
    fn field(&self, name: &str) -> Option<&FieldSpec> {
        self.fields
            .iter()
            .find(|f| f.spec.rest_name == name)
            .map(|f| &f.spec)
    }

    fn lead_index(&self, id: u64) -> Option<usize> {
        let i = usize::try_from(id).ok()?.checked_sub(1)?;
        (i < self.leads.len()).then_some(i)
    }

    fn indexed_fields(&self) -> Vec<String> {
        self.fields
            .iter()
            .filter(|f| f.spec.searchable && f.spec.rest_name != "id")
            .map(|f| f.spec.rest_name.clone())
            .collect()
    }

    fn index_lead(&mut self, i: usize) {
        for name in self.indexed_fields() {
            let Some(v) = self.leads[i].fields.get(&name).and_then(norm) else {
                continue;
            };
            let hits = self.index.entry(name).or_default().entry(v).or_default();
            if hits.last() != Some(&i) {
                hits.push(i);
            }
        }
    }

    fn rebuild_index(&mut self) {
        self.index.clear();
        for i in 0..self.leads.len() {
            self.index_lead(i);
        }
    }

    /// Leads whose `field` matches the normalised `value`.
    fn find(&self, field: &str, value: &str) -> Vec<usize> {
        if field == "id" {
            return value
                .parse::<u64>()
                .ok()
                .and_then(|id| self.lead_index(id))
                .into_iter()
                .collect();
        }
        let mut out: Vec<usize> = self
            .index
            .get(field)
            .and_then(|m| m.get(value))
            .into_iter()
            .flatten()
            .copied()
            .filter(|i| self.leads[*i].fields.get(field).and_then(norm).as_deref() == Some(value))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    fn count_call(&mut self, at: Instant) -> u64 {
        let id = self.next_call_id;
        self.next_call_id += 1;
        self.window.push_back((id, at));
        self.history.push((id, at));
        self.daily_used += 1;
        id
    }

    fn uncount_call(&mut self, id: u64) {
        if let Some(p) = self.window.iter().position(|(i, _)| *i == id) {
            self.window.remove(p);
        }
        if let Some(p) = self.history.iter().rposition(|(i, _)| *i == id) {
            self.history.remove(p);
        }
        self.daily_used = self.daily_used.saturating_sub(1);
    }

    fn prune_window(&mut self, now: Instant, window: Duration) {
        while let Some((_, t)) = self.window.front() {
            if now.saturating_duration_since(*t) >= window {
                self.window.pop_front();
            } else {
                break;
            }
        }
    }

    fn create(&mut self, values: Map<String, Value>) -> usize {
        let id = self.leads.len() as u64 + 1;
        let mut fields = Map::new();
        for f in &self.fields {
            if f.spec.data_type == "boolean" {
                fields.insert(f.spec.rest_name.clone(), Value::Bool(false));
            }
        }
        fields.insert("originalSourceType".into(), json!("Web service API"));
        let stamp = now_stamp();
        fields.insert("createdAt".into(), json!(stamp));
        fields.insert("updatedAt".into(), json!(stamp));
        fields.extend(values);
        self.leads.push(StoredLead {
            id,
            fields,
            updates: 0,
        });
        let i = self.leads.len() - 1;
        self.index_lead(i);
        i
    }

    fn update(&mut self, i: usize, values: Map<String, Value>) {
        let lead = &mut self.leads[i];
        lead.fields.extend(values);
        lead.fields.insert("updatedAt".into(), json!(now_stamp()));
        lead.updates += 1;
        self.index_lead(i);
    }

    fn lead_json(&self, i: usize, fields: &[String]) -> Value {
        let lead = &self.leads[i];
        let mut o = Map::new();
        o.insert("id".into(), json!(lead.id));
        for f in fields {
            if f != "id" {
                o.insert(
                    f.clone(),
                    lead.fields.get(f).cloned().unwrap_or(Value::Null),
                );
            }
        }
        Value::Object(o)
    }
}

/// Keeps the in-flight count while a REST call is handled, even if the client goes away.
struct InFlight<'a>(&'a Inner);

impl<'a> InFlight<'a> {
    fn enter(inner: &'a Inner) -> (Self, usize) {
        let mut s = lock(inner);
        s.in_flight += 1;
        s.max_in_flight = s.max_in_flight.max(s.in_flight);
        (InFlight(inner), s.in_flight)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut s = lock(self.0);
        s.in_flight = s.in_flight.saturating_sub(1);
    }
}

fn request_id() -> String {
    format!(
        "{:x}#{:x}",
        rand::random::<u16>(),
        chrono::Utc::now().timestamp_millis()
    )
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json;charset=UTF-8")],
        body.to_string(),
    )
        .into_response()
}

fn error_body(code: &str, message: &str) -> Value {
    json!({"requestId": request_id(), "success": false,
           "errors": [{"code": code, "message": message}]})
}

fn ok_body(result: Vec<Value>) -> Value {
    json!({"requestId": request_id(), "result": result, "success": true})
}

fn uuid_v4() -> String {
    let b = (rand::random::<u128>() & !(0xF000u128 << 64) & !(0xC000u128 << 48))
        | (0x4000u128 << 64)
        | (0x8000u128 << 48);
    let h = format!("{b:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

async fn handle(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let at = Instant::now();
    let path = uri.path().to_string();
    let (response, code, records) = if path == "/identity/oauth/token" {
        let (r, c) = token(&inner, &method, &uri, &body);
        (r, c, 0)
    } else if path.starts_with("/rest/") {
        let (_guard, in_flight) = InFlight::enter(&inner);
        rest(&inner, &method, &uri, &headers, &body, at, in_flight).await
    } else {
        (
            (StatusCode::NOT_FOUND, "Not Found").into_response(),
            None,
            0,
        )
    };
    lock(&inner).requests.push(RequestInfo {
        method: method.to_string(),
        path,
        at,
        answered: Instant::now(),
        status: response.status().as_u16(),
        code,
        records,
    });
    response
}

fn token(inner: &Inner, method: &Method, uri: &Uri, body: &[u8]) -> (Response, Option<String>) {
    let mut params = url_form(uri.query().unwrap_or("").as_bytes());
    if method == Method::POST {
        for (k, v) in url_form(body) {
            params.entry(k).or_insert(v);
        }
    } else if method != Method::GET {
        return (
            (StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed").into_response(),
            None,
        );
    }
    let cfg = &inner.config;
    let mut s = lock(inner);
    s.token_requests += 1;
    let refuse = |status: StatusCode, error: &str, description: &str| {
        let mut r = json_response(
            status,
            &json!({"error": error, "error_description": description}),
        );
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        (r, Some(error.to_string()))
    };
    match params.get("client_id").map(String::as_str) {
        None | Some("") => {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Full authentication is required to access this resource",
            )
        }
        Some(id) if id != cfg.client_id => {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                &format!("No client with requested id: {id}"),
            )
        }
        Some(_) => {}
    }
    if params.get("client_secret") != Some(&cfg.client_secret) {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Bad client credentials",
        );
    }
    match params.get("grant_type").map(String::as_str) {
        Some("client_credentials") => {}
        None | Some("") => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Missing grant type",
            )
        }
        Some(other) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                &format!("Unsupported grant type: {other}"),
            )
        }
    }
    let lifetime = cfg.token_lifetime;
    let live = s.current_token.clone().and_then(|t| {
        let info = s.tokens.get(&t)?;
        let age = info.issued.elapsed();
        (!info.expired && age < lifetime).then(|| (t, lifetime - age))
    });
    let (token, remaining) = match live {
        Some(live) => live,
        None => {
            let t = format!("{}:ab", uuid_v4());
            let issued = Instant::now();
            s.tokens.insert(
                t.clone(),
                TokenInfo {
                    issued,
                    expired: false,
                },
            );
            s.current_token = Some(t.clone());
            (t, lifetime.saturating_sub(issued.elapsed()))
        }
    };
    let mut r = json_response(
        StatusCode::OK,
        &json!({"access_token": token, "token_type": "bearer",
                "expires_in": remaining.as_secs(), "scope": SCOPE}),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r.headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    (r, None)
}

/// What stage one decided: answer as is, or write a Sync Leads plan after the latency.
enum Decision {
    Answer(Value, Option<String>),
    Sync(Vec<Step>),
}

/// One Sync Leads record, decided before the latency.
enum Step {
    Skip { code: &'static str, message: String },
    Create(Map<String, Value>),
    Update(Target, Map<String, Value>),
}

enum Target {
    /// An existing lead (index).
    Existing(usize),
    /// The lead an earlier record of this call creates (step number).
    Pending(usize),
}

fn answer(code: &str, message: &str) -> Decision {
    Decision::Answer(error_body(code, message), Some(code.to_string()))
}

async fn rest(
    inner: &Inner,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
    at: Instant,
    in_flight: usize,
) -> (Response, Option<String>, usize) {
    let path = uri.path();
    let query = url_form(uri.query().unwrap_or("").as_bytes());
    let is_sync = path == "/rest/v1/leads.json"
        && method == Method::POST
        && query
            .get("_method")
            .is_none_or(|m| m.eq_ignore_ascii_case("POST"));
    let parsed: Option<Result<Value, serde_json::Error>> =
        is_sync.then(|| serde_json::from_slice::<Value>(body));
    let records = match &parsed {
        Some(Ok(v)) => v.get("input").and_then(Value::as_array).map_or(0, Vec::len),
        _ => 0,
    };
    if body.len() > MAX_BODY_BYTES {
        let r = (StatusCode::PAYLOAD_TOO_LARGE, "Request Entity Too Large").into_response();
        return (r, None, records);
    }
    let cfg = &inner.config;
    let (decision, counted, latency, fail_611) = {
        let mut s = lock(inner);
        let latency = s.latency;
        let (decision, counted, fail_611) = stage_one(
            &mut s, cfg, method, path, &query, headers, body, parsed, at, in_flight,
        );
        (decision, counted, latency, fail_611)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let mut s = lock(inner);
    let (mut body, mut code) = match decision {
        Decision::Answer(body, code) => (body, code),
        Decision::Sync(steps) => (ok_body(commit(&mut s, steps)), None),
    };
    if fail_611 {
        body = error_body("611", "System error");
        code = Some("611".into());
    }
    if let (Some(id), Some(c)) = (counted, &code) {
        if EXEMPT_CODES.contains(&c.as_str()) {
            s.uncount_call(id);
        }
    }
    (json_response(StatusCode::OK, &body), code, records)
}

/// Faults, auth and limits, then the resource. Returns the decision, the counted call's id
/// (if it counts) and whether to answer 611 after carrying the call out.
#[allow(clippy::too_many_arguments)]
fn stage_one(
    s: &mut FakeState,
    cfg: &MarketoFakeConfig,
    method: &Method,
    path: &str,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
    parsed: Option<Result<Value, serde_json::Error>>,
    at: Instant,
    in_flight: usize,
) -> (Decision, Option<u64>, bool) {
    let mut fail_611 = false;
    if let Some(fault) = s.faults.next_fault() {
        match fault {
            Fault::CommittedThenFailed => fail_611 = true,
            Fault::TokenExpired602 => {
                for t in s.tokens.values_mut() {
                    t.expired = true;
                }
                s.current_token = None;
                let (code, message) = fault.answer(cfg);
                return (answer(code, &message), None, false);
            }
            other => {
                let (code, message) = other.answer(cfg);
                let counted = (!EXEMPT_CODES.contains(&code)).then(|| s.count_call(at));
                return (answer(code, &message), counted, false);
            }
        }
    }
    if let Err((code, message)) = check_token(s, cfg, headers, query) {
        return (answer(code, message), None, fail_611);
    }
    s.prune_window(at, cfg.window);
    if s.quota_day != quota_day() {
        s.quota_day = quota_day();
        s.daily_used = 0;
    }
    let limited = if in_flight > cfg.max_concurrent {
        Some(("615", concurrency_message(cfg)))
    } else if s.window.len() >= cfg.calls_per_window {
        Some(("606", rate_message(cfg)))
    } else if s.daily_used >= cfg.daily_quota {
        Some(("607", "Daily quota reached".to_string()))
    } else {
        None
    };
    let counted = Some(s.count_call(at));
    if let Some((code, message)) = limited {
        return (answer(code, &message), counted, fail_611);
    }
    let decision = route(s, method, path, query, headers, body, parsed);
    (decision, counted, fail_611)
}

fn check_token(
    s: &FakeState,
    cfg: &MarketoFakeConfig,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Result<(), (&'static str, &'static str)> {
    let from_header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        });
    let token = from_header
        .or_else(|| query.get("access_token").map(String::as_str))
        .filter(|t| !t.is_empty());
    let Some(token) = token else {
        return Err(("600", "Empty access token"));
    };
    match s.tokens.get(token) {
        None => Err(("601", "Access token invalid")),
        Some(t) if t.expired || t.issued.elapsed() >= cfg.token_lifetime => {
            Err(("602", "Access token expired"))
        }
        Some(_) => Ok(()),
    }
}

fn route(
    s: &FakeState,
    method: &Method,
    path: &str,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
    parsed: Option<Result<Value, serde_json::Error>>,
) -> Decision {
    let method_override = query.get("_method").map(|m| m.to_ascii_uppercase());
    match path {
        "/rest/v1/leads.json" => {
            if method == Method::GET {
                return read_by_filter(s, query);
            }
            if method != Method::POST {
                return answer("605", "HTTP Method not supported");
            }
            if method_override.as_deref() == Some("GET") {
                let mut params = url_form(body);
                for (k, v) in query {
                    params.entry(k.clone()).or_insert_with(|| v.clone());
                }
                return read_by_filter(s, &params);
            }
            let json_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(';').next())
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
            if !json_type {
                return answer("612", "Invalid Content Type");
            }
            match parsed {
                Some(Ok(Value::Object(req))) => match plan_sync(s, &req) {
                    Ok(steps) => Decision::Sync(steps),
                    Err((code, message)) => answer(code, &message),
                },
                _ => answer("609", "Invalid JSON"),
            }
        }
        "/rest/v1/leads/describe.json" | "/rest/v1/leads/describe2.json" => {
            if method != Method::GET {
                return answer("605", "HTTP Method not supported");
            }
            let result = if path.ends_with("describe2.json") {
                vec![describe2(s)]
            } else {
                s.fields.iter().map(describe_field).collect()
            };
            Decision::Answer(ok_body(result), None)
        }
        _ => {
            let id = path
                .strip_prefix("/rest/v1/lead/")
                .and_then(|p| p.strip_suffix(".json"))
                .and_then(|p| p.parse::<u64>().ok());
            match id {
                Some(_) if method != Method::GET => answer("605", "HTTP Method not supported"),
                Some(id) => {
                    let fields = match requested_fields(s, query) {
                        Ok(f) => f,
                        Err(d) => return d,
                    };
                    let result: Vec<Value> = s
                        .lead_index(id)
                        .map(|i| s.lead_json(i, &fields))
                        .into_iter()
                        .collect();
                    Decision::Answer(ok_body(result), None)
                }
                None => answer("610", "Requested resource not found"),
            }
        }
    }
}

fn describe_field(f: &Field) -> Value {
    let mut o = Map::new();
    o.insert("id".into(), json!(f.id));
    o.insert("displayName".into(), json!(f.spec.display_name));
    o.insert("dataType".into(), json!(f.spec.data_type));
    if let Some(len) = f.spec.length {
        o.insert("length".into(), json!(len));
    }
    o.insert(
        "rest".into(),
        json!({"name": f.spec.rest_name, "readOnly": f.spec.read_only}),
    );
    if let Some(soap) = &f.soap {
        o.insert(
            "soap".into(),
            json!({"name": soap, "readOnly": f.spec.read_only}),
        );
    }
    Value::Object(o)
}

fn describe2(s: &FakeState) -> Value {
    let names = |pick: fn(&FieldSpec) -> bool| -> Vec<String> {
        s.fields
            .iter()
            .filter(|f| pick(&f.spec))
            .map(|f| f.spec.rest_name.clone())
            .collect()
    };
    let searchable: Vec<Vec<String>> = names(|f| f.searchable)
        .into_iter()
        .map(|n| vec![n])
        .collect();
    let fields: Vec<Value> = s
        .fields
        .iter()
        .map(|f| {
            let mut o = Map::new();
            o.insert("name".into(), json!(f.spec.rest_name));
            o.insert("displayName".into(), json!(f.spec.display_name));
            o.insert("dataType".into(), json!(f.spec.data_type));
            if let Some(len) = f.spec.length {
                o.insert("length".into(), json!(len));
            }
            o.insert("updateable".into(), json!(!f.spec.read_only));
            o.insert("crmManaged".into(), json!(false));
            Value::Object(o)
        })
        .collect();
    json!({"name": "API Lead", "searchableFields": searchable,
           "dedupeFields": names(|f| f.dedupe), "fields": fields})
}

/// The `fields` parameter (default: Marketo's six), unknown names refused.
fn requested_fields(
    s: &FakeState,
    params: &HashMap<String, String>,
) -> Result<Vec<String>, Decision> {
    let Some(list) = params.get("fields").filter(|f| !f.trim().is_empty()) else {
        return Ok([
            "id",
            "firstName",
            "lastName",
            "email",
            "updatedAt",
            "createdAt",
        ]
        .iter()
        .map(|f| f.to_string())
        .collect());
    };
    let mut out = Vec::new();
    for f in list.split(',').map(str::trim).filter(|f| !f.is_empty()) {
        if s.field(f).is_none() {
            return Err(answer("1006", &format!("Field '{f}' not found")));
        }
        out.push(f.to_string());
    }
    Ok(out)
}

fn read_by_filter(s: &FakeState, params: &HashMap<String, String>) -> Decision {
    let Some(filter) = params.get("filterType").filter(|f| !f.is_empty()) else {
        return answer("701", "filterType cannot be blank");
    };
    let Some(values) = params.get("filterValues").filter(|f| !f.is_empty()) else {
        return answer("701", "filterValues cannot be blank");
    };
    match s.field(filter) {
        None => return answer("1006", &format!("Field '{filter}' not found")),
        Some(f) if !f.searchable => {
            return answer("1011", &format!("Field '{filter}' not supported"))
        }
        Some(_) => {}
    }
    let values: Vec<&str> = values.split(',').map(str::trim).collect();
    if values.len() > MAX_BATCH {
        return answer("1003", "Too many filter values");
    }
    let fields = match requested_fields(s, params) {
        Ok(f) => f,
        Err(d) => return d,
    };
    let mut hits: Vec<usize> = values
        .iter()
        .flat_map(|v| s.find(filter, &v.to_lowercase()))
        .collect();
    hits.sort_unstable();
    hits.dedup();
    let result = hits.iter().map(|i| s.lead_json(*i, &fields)).collect();
    Decision::Answer(ok_body(result), None)
}

const ACTIONS: [&str; 4] = [
    "createOrUpdate",
    "createOnly",
    "updateOnly",
    "createDuplicate",
];

/// Stage one of Sync Leads: validate, look the keys up, decide per record.
fn plan_sync(s: &FakeState, req: &Map<String, Value>) -> Result<Vec<Step>, (&'static str, String)> {
    let action = match req.get("action") {
        None | Some(Value::Null) => "createOrUpdate",
        Some(Value::String(a)) if ACTIONS.contains(&a.as_str()) => a.as_str(),
        Some(other) => return Err(("1003", format!("Invalid action {other}"))),
    };
    let lookup = match req.get("lookupField") {
        None | Some(Value::Null) => "email",
        Some(Value::String(l)) => l.as_str(),
        Some(other) => return Err(("1003", format!("Invalid lookupField {other}"))),
    };
    match s.field(lookup) {
        None => return Err(("1006", format!("Field '{lookup}' not found"))),
        Some(f) if !f.searchable => {
            return Err(("1011", format!("Field '{lookup}' not supported")))
        }
        Some(_) => {}
    }
    let partition = req.get("partitionName").and_then(Value::as_str);
    let input = match req.get("input") {
        Some(Value::Array(a)) if !a.is_empty() => a,
        _ => return Err(("1003", "Leads not specified".into())),
    };
    if input.len() > MAX_BATCH {
        return Err((
            "1003",
            format!(
                "Input size {} exceeds the maximum of {MAX_BATCH} records",
                input.len()
            ),
        ));
    }
    let mut steps = Vec::with_capacity(input.len());
    // Keys created by earlier records of this call: (field, value) -> step.
    let mut pending: HashMap<(String, String), usize> = HashMap::new();
    for item in input {
        let step = plan_record(s, action, lookup, partition, item, &pending);
        if matches!(step, Step::Create(_)) {
            if let Some(key) = record_key(action, lookup, item) {
                pending.entry(key).or_insert(steps.len());
            }
        }
        steps.push(step);
    }
    Ok(steps)
}

/// The (field, normalised value) a record is looked up by, if it has one.
fn record_key(action: &str, lookup: &str, item: &Value) -> Option<(String, String)> {
    let rec = item.as_object()?;
    if action == "updateOnly" {
        if let Some(id) = rec.get("id").filter(|v| !v.is_null()) {
            return Some(("id".into(), norm(id)?));
        }
    }
    Some((lookup.to_string(), norm(rec.get(lookup)?)?))
}

fn skip(code: &'static str, message: String) -> Step {
    Step::Skip { code, message }
}

fn plan_record(
    s: &FakeState,
    action: &str,
    lookup: &str,
    partition: Option<&str>,
    item: &Value,
    pending: &HashMap<(String, String), usize>,
) -> Step {
    let Some(rec) = item.as_object() else {
        return skip("1003", "Invalid data".into());
    };
    if let Some(k) = rec.keys().find(|k| s.field(k).is_none()) {
        return skip("1006", format!("Field '{k}' not found"));
    }
    if let Some(p) = partition.filter(|p| !p.eq_ignore_ascii_case("Default")) {
        return skip("1008", format!("Access denied to partition '{p}'"));
    }
    let has_id = rec.get("id").is_some_and(|v| !v.is_null());
    if has_id && action != "updateOnly" {
        return skip("1003", "Invalid data".into());
    }
    let mut values = Map::new();
    for (k, v) in rec {
        if k == "id" {
            continue;
        }
        let Some(f) = s.field(k) else { continue };
        if f.read_only {
            return skip("1003", format!("Field '{k}' is read only"));
        }
        match check_value(f, v) {
            Some(clean) => {
                values.insert(k.clone(), clean);
            }
            None => return skip("1003", format!("Invalid value for field '{k}'")),
        }
    }
    if has_id
        && rec
            .get("id")
            .and_then(norm)
            .and_then(|v| v.parse::<u64>().ok())
            .is_none()
    {
        return skip("1003", "Invalid value for field 'id'".into());
    }
    let key = record_key(action, lookup, item);
    if action == "createDuplicate" {
        return Step::Create(values);
    }
    let Some(key) = key else {
        return if action == "createOnly" {
            Step::Create(values)
        } else {
            skip(
                "1003",
                format!("Value for lookup field '{lookup}' not specified"),
            )
        };
    };
    let existing = s.find(&key.0, &key.1);
    let earlier = pending.get(&key).copied();
    match action {
        "createOnly" => {
            if existing.is_empty() && earlier.is_none() {
                Step::Create(values)
            } else {
                skip("1005", "Lead already exists".into())
            }
        }
        _ => match (existing.as_slice(), earlier) {
            ([], Some(step)) => Step::Update(Target::Pending(step), values),
            ([], None) if action == "updateOnly" => skip("1004", "Lead not found".into()),
            ([], None) => Step::Create(values),
            ([one], None) => Step::Update(Target::Existing(*one), values),
            _ => skip("1007", "Multiple lead match lookup criteria".into()),
        },
    }
}

/// The value as stored, or `None` if Marketo would refuse it (1003).
fn check_value(f: &FieldSpec, v: &Value) -> Option<Value> {
    if v.is_null() {
        return Some(Value::Null);
    }
    match f.data_type.as_str() {
        "boolean" => match v {
            Value::Bool(_) => Some(v.clone()),
            Value::String(t) if t.eq_ignore_ascii_case("true") => Some(Value::Bool(true)),
            Value::String(t) if t.eq_ignore_ascii_case("false") => Some(Value::Bool(false)),
            _ => None,
        },
        "integer" | "score" | "reference" => match v {
            Value::Number(n) if n.is_i64() || n.is_u64() => Some(v.clone()),
            Value::String(t) => t.trim().parse::<i64>().ok().map(|n| json!(n)),
            _ => None,
        },
        "float" | "currency" | "percent" => match v {
            Value::Number(_) => Some(v.clone()),
            Value::String(t) => t
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .map(|x| json!(x)),
            _ => None,
        },
        "date" => {
            let t = v.as_str()?;
            let d = chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d")
                .ok()
                .or_else(|| {
                    chrono::DateTime::parse_from_rfc3339(t)
                        .ok()
                        .map(|d| d.date_naive())
                })?;
            Some(json!(d.format("%Y-%m-%d").to_string()))
        }
        "datetime" => {
            let t = v.as_str()?;
            let d = chrono::DateTime::parse_from_rfc3339(t)
                .ok()
                .map(|d| d.with_timezone(&chrono::Utc))
                .or_else(|| {
                    chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d")
                        .ok()
                        .and_then(|d| d.and_hms_opt(0, 0, 0))
                        .map(|d| d.and_utc())
                })?;
            Some(json!(d.format("%Y-%m-%dT%H:%M:%SZ").to_string()))
        }
        _ if f.is_textual() => {
            let text = match v {
                Value::String(t) => t.clone(),
                Value::Number(n) => n.to_string(),
                _ => return None,
            };
            if text.chars().count() > f.limit() {
                return None;
            }
            if f.data_type == "email" && !text.is_empty() && !valid_email(&text) {
                return None;
            }
            Some(Value::String(text))
        }
        _ => Some(v.clone()),
    }
}

/// An e-mail address Marketo takes: ASCII only, one `@`, a dot-separated local part, a
/// domain of at least two labels.
pub fn valid_email(email: &str) -> bool {
    crate::salesforce::valid_email(email, false)
}

/// Stage two of Sync Leads: write what stage one decided. One result per record.
fn commit(s: &mut FakeState, steps: Vec<Step>) -> Vec<Value> {
    let mut created: Vec<Option<usize>> = vec![None; steps.len()];
    let mut results = Vec::with_capacity(steps.len());
    for (n, step) in steps.into_iter().enumerate() {
        let result = match step {
            Step::Skip { code, message } => {
                json!({"status": "skipped", "reasons": [{"code": code, "message": message}]})
            }
            Step::Create(values) => {
                let i = s.create(values);
                created[n] = Some(i);
                json!({"id": s.leads[i].id, "status": "created"})
            }
            Step::Update(target, values) => {
                let i = match target {
                    Target::Existing(i) => Some(i),
                    Target::Pending(step) => created.get(step).copied().flatten(),
                };
                match i {
                    Some(i) => {
                        s.update(i, values);
                        json!({"id": s.leads[i].id, "status": "updated"})
                    }
                    None => json!({"status": "skipped",
                                   "reasons": [{"code": "1004", "message": "Lead not found"}]}),
                }
            }
        };
        results.push(result);
    }
    results
}

fn url_form(body: &[u8]) -> HashMap<String, String> {
    let text = String::from_utf8_lossy(body);
    text.split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Some((pct_decode(k)?, pct_decode(v)?))
        })
        .collect()
}

fn pct_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Client {
        http: reqwest::Client,
        base: String,
        token: String,
    }

    impl Client {
        async fn new(fake: &MarketoFake) -> Client {
            let http = reqwest::Client::new();
            let token = fetch_token(&http, fake).await["access_token"]
                .as_str()
                .expect("a token")
                .to_string();
            Client {
                http,
                base: fake.base_url().to_string(),
                token,
            }
        }
        async fn get(&self, path: &str) -> Value {
            self.http
                .get(format!("{}{path}", self.base))
                .bearer_auth(&self.token)
                .send()
                .await
                .expect("send")
                .json()
                .await
                .expect("json")
        }
        async fn sync(&self, body: Value) -> Value {
            let r = self
                .http
                .post(format!("{}/rest/v1/leads.json", self.base))
                .bearer_auth(&self.token)
                .json(&body)
                .send()
                .await
                .expect("send");
            assert_eq!(r.status(), 200);
            r.json().await.expect("json")
        }
    }

    async fn fetch_token(http: &reqwest::Client, fake: &MarketoFake) -> Value {
        let cfg = fake.config();
        http.get(format!(
            "{}/oauth/token?grant_type=client_credentials&client_id={}&client_secret={}",
            fake.identity_url(),
            cfg.client_id,
            cfg.client_secret
        ))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json")
    }

    fn error_code(v: &Value) -> Option<&str> {
        v["errors"][0]["code"].as_str()
    }

    fn lead(email: &str) -> Value {
        json!({"email": email, "firstName": "Ada", "lastName": "Lovelace", "company": "Contoso"})
    }

    #[tokio::test]
    async fn token_is_reused_while_it_lives_and_bad_credentials_get_401() {
        let fake = MarketoFake::start(MarketoFakeConfig::default())
            .await
            .unwrap();
        let http = reqwest::Client::new();
        let first = fetch_token(&http, &fake).await;
        let second = fetch_token(&http, &fake).await;
        assert_eq!(first["access_token"], second["access_token"]);
        assert!(first["access_token"].as_str().unwrap().ends_with(":ab"));
        assert_eq!(first["token_type"], "bearer");
        assert_eq!(first["expires_in"], 3599);
        assert!(second["expires_in"].as_u64().unwrap() <= 3599);
        assert_eq!(first["scope"], SCOPE);
        // POST with a form body works too.
        let cfg = fake.config();
        let form = http
            .post(format!("{}/oauth/token", fake.identity_url()))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", cfg.client_id.as_str()),
                ("client_secret", cfg.client_secret.as_str()),
            ])
            .send()
            .await
            .unwrap();
        let form: Value = form.json().await.unwrap();
        assert_eq!(form["access_token"], first["access_token"]);

        let bad = http
            .get(format!(
                "{}/oauth/token?grant_type=client_credentials&client_id={}&client_secret=nope",
                fake.identity_url(),
                cfg.client_id
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(bad.status(), 401);
        let bad: Value = bad.json().await.unwrap();
        assert_eq!(bad["error"], "invalid_client");
        assert_eq!(bad["error_description"], "Bad client credentials");
        assert_eq!(fake.token_requests(), 4);
    }

    #[tokio::test]
    async fn missing_unknown_and_expired_tokens() {
        let fake = MarketoFake::start(MarketoFakeConfig::default())
            .await
            .unwrap();
        let c = Client::new(&fake).await;
        let http = reqwest::Client::new();
        let url = format!("{}/rest/v1/leads/describe.json", fake.base_url());
        let none: Value = http.get(&url).send().await.unwrap().json().await.unwrap();
        assert_eq!(none["success"], false);
        assert_eq!(error_code(&none), Some("600"));
        let unknown: Value = http
            .get(&url)
            .bearer_auth("not-a-token:ab")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(error_code(&unknown), Some("601"));
        assert_eq!(unknown["errors"][0]["message"], "Access token invalid");
        assert!(unknown["requestId"].as_str().unwrap().contains('#'));
        // The query parameter is still accepted.
        let via_query: Value = http
            .get(format!("{url}?access_token={}", c.token))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(via_query["success"], true);

        fake.expire_tokens();
        let expired = c.get("/rest/v1/leads/describe.json").await;
        assert_eq!(error_code(&expired), Some("602"));
        assert_eq!(expired["errors"][0]["message"], "Access token expired");
        let fresh = Client::new(&fake).await;
        assert_ne!(fresh.token, c.token);
        assert_eq!(
            fresh.get("/rest/v1/leads/describe.json").await["success"],
            true
        );
        // Auth failures count against nothing.
        assert_eq!(fake.max_calls_in_window(), 2);
    }

    #[tokio::test]
    async fn sliding_window_gives_606_and_counts_refused_calls() {
        let fake = MarketoFake::start(MarketoFakeConfig {
            calls_per_window: 5,
            window: Duration::from_secs(2),
            ..MarketoFakeConfig::default()
        })
        .await
        .unwrap();
        let c = Client::new(&fake).await;
        for _ in 0..3 {
            assert_eq!(
                c.get("/rest/v1/leads/describe2.json").await["success"],
                true
            );
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
        for _ in 0..2 {
            assert_eq!(
                c.get("/rest/v1/leads/describe2.json").await["success"],
                true
            );
        }
        let refused = c.get("/rest/v1/leads/describe2.json").await;
        assert_eq!(error_code(&refused), Some("606"));
        assert_eq!(
            refused["errors"][0]["message"],
            "Max rate limit '5' exceeded with in '2' secs"
        );
        // Once the first three leave the window there is room again: two calls and the
        // refused one are still in it.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert_eq!(
            c.get("/rest/v1/leads/describe2.json").await["success"],
            true
        );
        assert_eq!(
            c.get("/rest/v1/leads/describe2.json").await["success"],
            true
        );
        assert_eq!(
            error_code(&c.get("/rest/v1/leads/describe2.json").await),
            Some("606")
        );
        assert_eq!(fake.max_calls_in_window(), 6);
        let codes: Vec<_> = fake.requests().into_iter().filter_map(|r| r.code).collect();
        assert_eq!(codes, vec!["606", "606"]);
    }

    #[tokio::test]
    async fn more_than_max_concurrent_in_flight_gets_615() {
        let fake = MarketoFake::start(MarketoFakeConfig {
            max_concurrent: 3,
            ..MarketoFakeConfig::default()
        })
        .await
        .unwrap();
        fake.set_latency(Duration::from_millis(400));
        let c = Arc::new(Client::new(&fake).await);
        let calls: Vec<_> = (0..5)
            .map(|_| {
                let c = Arc::clone(&c);
                tokio::spawn(async move { c.get("/rest/v1/leads/describe.json").await })
            })
            .collect();
        let mut refused = 0;
        for call in calls {
            let v = call.await.unwrap();
            if error_code(&v) == Some("615") {
                assert_eq!(
                    v["errors"][0]["message"],
                    "Concurrent access limit '3' reached"
                );
                refused += 1;
            } else {
                assert_eq!(v["success"], true);
            }
        }
        assert_eq!(refused, 2);
        assert_eq!(fake.max_in_flight(), 5);
        // Sequential calls are fine again.
        assert_eq!(c.get("/rest/v1/leads/describe.json").await["success"], true);
    }

    #[tokio::test]
    async fn sync_creates_updates_and_skips_in_input_order() {
        let fake = MarketoFake::start(MarketoFakeConfig::default())
            .await
            .unwrap();
        let c = Client::new(&fake).await;
        let twin = || {
            let mut m = Map::new();
            m.insert("email".into(), json!("twin@contoso.com"));
            m
        };
        fake.seed_lead(twin());
        fake.seed_lead(twin());
        let long = "x".repeat(256);
        let r = c
            .sync(json!({"input": [
                lead("ada@contoso.com"),
                lead("ADA@contoso.com"),
                lead("Twin@Contoso.com"),
                lead("adä@contoso.com"),
                {"email": "grace@contoso.com", "company": long},
                {"email": "grace@contoso.com", "noSuchField": "x"},
                {"email": "grace@contoso.com", "unsubscribed": "maybe"},
                {"firstName": "No Key"},
                {"email": "grace@contoso.com", "mktoPersonNotes": "a note", "unsubscribed": true},
            ]}))
            .await;
        assert_eq!(r["success"], true);
        let res = r["result"].as_array().unwrap();
        assert_eq!(res.len(), 9);
        assert_eq!(res[0]["status"], "created");
        let ada = res[0]["id"].as_u64().unwrap();
        assert_eq!(res[1], json!({"id": ada, "status": "updated"}));
        assert_eq!(res[2]["reasons"][0]["code"], "1007");
        assert_eq!(
            res[2]["reasons"][0]["message"],
            "Multiple lead match lookup criteria"
        );
        assert!(res[2].get("id").is_none());
        assert_eq!(res[3]["reasons"][0]["code"], "1003");
        assert_eq!(
            res[3]["reasons"][0]["message"],
            "Invalid value for field 'email'"
        );
        assert_eq!(
            res[4]["reasons"][0]["message"],
            "Invalid value for field 'company'"
        );
        assert_eq!(res[5]["reasons"][0]["code"], "1006");
        assert_eq!(
            res[5]["reasons"][0]["message"],
            "Field 'noSuchField' not found"
        );
        assert_eq!(res[6]["reasons"][0]["code"], "1003");
        assert_eq!(res[7]["status"], "skipped");
        assert_eq!(res[8]["status"], "created");
        let stored = fake.lead(ada).unwrap();
        assert_eq!(stored.updates, 1);
        assert_eq!(stored.get_str("email"), Some("ADA@contoso.com"));
        assert_eq!(stored.fields["marketingSuspended"], false);
        let grace = fake.leads_where("email", "GRACE@contoso.com");
        assert_eq!(grace.len(), 1);
        assert_eq!(grace[0].get_str("mktoPersonNotes"), Some("a note"));
        assert_eq!(grace[0].fields["unsubscribed"], true);
        assert_eq!(fake.leads().len(), 4);
        assert_eq!(fake.requests().last().unwrap().records, 9);

        let only = c
            .sync(json!({"action": "createOnly", "input": [lead("ada@contoso.com")]}))
            .await;
        assert_eq!(only["result"][0]["reasons"][0]["code"], "1005");
        let upd = c
            .sync(json!({"action": "updateOnly", "input": [lead("nobody@contoso.com")]}))
            .await;
        assert_eq!(upd["result"][0]["reasons"][0]["code"], "1004");
        let by_id = c
            .sync(json!({"action": "updateOnly", "lookupField": "id",
                         "input": [{"id": ada, "title": "Countess"}]}))
            .await;
        assert_eq!(by_id["result"][0], json!({"id": ada, "status": "updated"}));
        let dup = c
            .sync(json!({"action": "createDuplicate", "input": [lead("ada@contoso.com")]}))
            .await;
        assert_eq!(dup["result"][0]["status"], "created");
        assert_eq!(fake.leads_where("email", "ada@contoso.com").len(), 2);

        let not_searchable = c
            .sync(json!({"lookupField": "firstName", "input": [lead("x@contoso.com")]}))
            .await;
        assert_eq!(error_code(&not_searchable), Some("1011"));
        let unknown = c
            .sync(json!({"lookupField": "leadsyncKey", "input": [lead("x@contoso.com")]}))
            .await;
        assert_eq!(error_code(&unknown), Some("1006"));
    }

    #[tokio::test]
    async fn over_300_records_bad_json_and_content_type() {
        let fake = MarketoFake::start(MarketoFakeConfig::default())
            .await
            .unwrap();
        let c = Client::new(&fake).await;
        let input: Vec<Value> = (0..301)
            .map(|i| lead(&format!("p{i}@contoso.com")))
            .collect();
        let r = c.sync(json!({"input": input})).await;
        assert_eq!(r["success"], false);
        assert_eq!(error_code(&r), Some("1003"));
        assert!(fake.leads().is_empty());
        let input: Vec<Value> = (0..300)
            .map(|i| lead(&format!("p{i}@contoso.com")))
            .collect();
        let r = c.sync(json!({"input": input})).await;
        assert_eq!(r["result"].as_array().unwrap().len(), 300);
        assert_eq!(fake.leads().len(), 300);

        let url = format!("{}/rest/v1/leads.json", fake.base_url());
        let bad: Value = c
            .http
            .post(&url)
            .bearer_auth(&c.token)
            .header("Content-Type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(error_code(&bad), Some("609"));
        let form: Value = c
            .http
            .post(&url)
            .bearer_auth(&c.token)
            .header("Content-Type", "text/plain")
            .body("{}")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(error_code(&form), Some("612"));
        let nowhere = c.get("/rest/v1/nowhere.json").await;
        assert_eq!(error_code(&nowhere), Some("610"));
        let outside = c
            .http
            .get(format!("{}/elsewhere", fake.base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(outside.status(), 404);
    }

    #[tokio::test]
    async fn describe_and_describe2_shapes() {
        let fake = MarketoFake::start(MarketoFakeConfig::default())
            .await
            .unwrap();
        fake.add_field(FieldSpec::custom_key("leadsyncKey").display("Leadsync Key"));
        let c = Client::new(&fake).await;
        let d = c.get("/rest/v1/leads/describe.json").await;
        let email = d["result"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["rest"]["name"] == "email")
            .unwrap();
        assert_eq!(
            *email,
            json!({"id": 56, "displayName": "Email Address", "dataType": "email", "length": 255,
                   "rest": {"name": "email", "readOnly": false},
                   "soap": {"name": "Email", "readOnly": false}})
        );
        let d2 = c.get("/rest/v1/leads/describe2.json").await;
        let lead_desc = &d2["result"][0];
        assert_eq!(lead_desc["name"], "API Lead");
        let searchable = lead_desc["searchableFields"].as_array().unwrap();
        assert!(searchable.contains(&json!(["email"])));
        assert!(searchable.contains(&json!(["leadsyncKey"])));
        assert!(!searchable.contains(&json!(["firstName"])));
        assert_eq!(lead_desc["dedupeFields"], json!(["email"]));
        let fields = lead_desc["fields"].as_array().unwrap();
        let notes = fields
            .iter()
            .find(|f| f["name"] == "mktoPersonNotes")
            .unwrap();
        assert_eq!(
            *notes,
            json!({"name": "mktoPersonNotes", "displayName": "Person Notes", "dataType": "text",
                   "updateable": true, "crmManaged": false})
        );
        let created = fields.iter().find(|f| f["name"] == "createdAt").unwrap();
        assert_eq!(created["updateable"], false);

        fake.remove_field("leadsyncKey");
        let d2 = c.get("/rest/v1/leads/describe2.json").await;
        assert!(!d2["result"][0]["searchableFields"]
            .as_array()
            .unwrap()
            .contains(&json!(["leadsyncKey"])));
    }

    #[tokio::test]
    async fn concurrent_creates_of_one_new_key_duplicate_it() {
        let fake = MarketoFake::start(MarketoFakeConfig::default())
            .await
            .unwrap();
        fake.add_field(FieldSpec::custom_key("leadsyncKey"));
        fake.set_latency(Duration::from_millis(300));
        let c = Arc::new(Client::new(&fake).await);
        let body = json!({"lookupField": "leadsyncKey",
                          "input": [{"leadsyncKey": "K-1", "email": "k1@contoso.com"}]});
        let (a, b) = tokio::join!(c.sync(body.clone()), c.sync(body.clone()));
        assert_eq!(a["result"][0]["status"], "created");
        assert_eq!(b["result"][0]["status"], "created");
        assert_eq!(fake.leads_where("leadsyncKey", "k-1").len(), 2);
        // From then on the key matches two leads.
        let third = c.sync(body.clone()).await;
        assert_eq!(third["result"][0]["reasons"][0]["code"], "1007");

        // One after the other, the second call updates.
        let body = json!({"lookupField": "leadsyncKey",
                          "input": [{"leadsyncKey": "K-2"}, {"leadsyncKey": "k-2", "title": "CTO"}]});
        let first = c.sync(body.clone()).await;
        assert_eq!(first["result"][0]["status"], "created");
        assert_eq!(first["result"][1]["status"], "updated");
        assert_eq!(first["result"][0]["id"], first["result"][1]["id"]);
        let again = c.sync(body).await;
        assert_eq!(again["result"][0]["status"], "updated");
        assert_eq!(fake.leads_where("leadsyncKey", "K-2").len(), 1);
    }

    #[tokio::test]
    async fn injected_faults_and_committed_then_failed() {
        let fake = MarketoFake::start(MarketoFakeConfig::default())
            .await
            .unwrap();
        let c = Client::new(&fake).await;
        fake.inject(Fault::RateLimit606, 1);
        fake.inject_after(1, Fault::Unavailable608, 1);
        let first = c.get("/rest/v1/leads/describe.json").await;
        assert_eq!(error_code(&first), Some("606"));
        assert_eq!(
            first["errors"][0]["message"],
            "Max rate limit '100' exceeded with in '20' secs"
        );
        assert_eq!(c.get("/rest/v1/leads/describe.json").await["success"], true);
        assert_eq!(
            error_code(&c.get("/rest/v1/leads/describe.json").await),
            Some("608")
        );
        assert_eq!(c.get("/rest/v1/leads/describe.json").await["success"], true);
        // 606 counts against the limits, 608 does not.
        assert_eq!(fake.max_calls_in_window(), 3);

        fake.inject(Fault::CommittedThenFailed, 1);
        let r = c.sync(json!({"input": [lead("ct@contoso.com")]})).await;
        assert_eq!(error_code(&r), Some("611"));
        assert_eq!(fake.leads_where("email", "ct@contoso.com").len(), 1);
        let retry = c.sync(json!({"input": [lead("ct@contoso.com")]})).await;
        assert_eq!(retry["result"][0]["status"], "updated");

        fake.inject(Fault::TokenExpired602, 1);
        assert_eq!(
            error_code(&c.get("/rest/v1/leads/describe.json").await),
            Some("602")
        );
        let renewed = Client::new(&fake).await;
        assert_ne!(renewed.token, c.token);

        fake.set_daily_used(50_000);
        assert_eq!(
            error_code(&renewed.get("/rest/v1/leads/describe.json").await),
            Some("607")
        );
    }

    #[tokio::test]
    async fn read_back_by_filter_and_id() {
        let fake = MarketoFake::start(MarketoFakeConfig::default())
            .await
            .unwrap();
        let c = Client::new(&fake).await;
        let r = c.sync(json!({"input": [lead("ada@contoso.com")]})).await;
        let id = r["result"][0]["id"].as_u64().unwrap();
        let found = c
            .get("/rest/v1/leads.json?filterType=email&filterValues=ADA%40contoso.com,x%40y.com&fields=email,company,title")
            .await;
        assert_eq!(
            found["result"],
            json!([{"id": id, "email": "ada@contoso.com", "company": "Contoso", "title": null}])
        );
        let one = c.get(&format!("/rest/v1/lead/{id}.json")).await;
        assert_eq!(one["result"][0]["firstName"], "Ada");
        let bad = c
            .get("/rest/v1/leads.json?filterType=firstName&filterValues=Ada")
            .await;
        assert_eq!(error_code(&bad), Some("1011"));
    }

    #[test]
    fn uuid_shape_and_values() {
        let u = uuid_v4();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"));
        let f = FieldSpec::integer("n");
        assert_eq!(check_value(&f, &json!(14.1)), None);
        assert_eq!(check_value(&f, &json!("14")), Some(json!(14)));
        let d = FieldSpec::datetime("d");
        assert_eq!(
            check_value(&d, &json!("2020-08-30T05:49:48.000Z")),
            Some(json!("2020-08-30T05:49:48Z"))
        );
        assert_eq!(check_value(&d, &json!("yesterday")), None);
        assert!(check_value(&FieldSpec::text("t"), &json!("x".repeat(300))).is_some());
    }
}
