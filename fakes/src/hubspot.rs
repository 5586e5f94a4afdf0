//! A stateful fake of the HubSpot CRM v3 API (`spec/crm-apis.md` §5), for the HubSpot
//! connector's tests and benchmarks. It stands in for `https://api.hubapi.com`.
//!
//! It owns an in-memory contact table and a contact property schema, and answers:
//!
//! - `POST /oauth/v2/private-apps/get/access-token-info`, body `{"tokenKey":"<token>"}`: the
//!   private-app token introspection HubSpot documents ("View private app access token
//!   information"), answering `{"userId","hubId","appId","scopes"}`. No `Authorization`
//!   header is needed (HubSpot wants one only for `pat-eu1` tokens). Not rate limited, no
//!   injected faults.
//! - `GET /crm/v3/properties/contacts` (also `0-1` and the date-versioned
//!   `/crm/properties/2026-03/contacts`): `{"results":[Property…]}` in the v3 `Property`
//!   shape (`name`, `label`, `type`, `fieldType`, `groupName`, `options`, `hasUniqueValue`,
//!   `hubspotDefined`, `modificationMetadata`, …).
//! - `GET /crm/v3/properties/contacts/{name}`: one property, 404 `OBJECT_NOT_FOUND` when
//!   missing.
//! - `POST /crm/v3/objects/contacts/batch/upsert` (also `/crm/objects/2026-03/…`): the batch
//!   upsert described below.
//! - `GET /crm/v3/objects/contacts/{id}[?idProperty=email&properties=a,b]`: read one back.
//!
//! Batch upsert, as HubSpot's "Using Object APIs" guide describes it:
//!
//! - At most `max_batch` (100) inputs, else 400 `VALIDATION_ERROR` for the whole request.
//! - `idProperty` must be `email` or a property with `hasUniqueValue`; anything else is a
//!   whole-request 400 `Unable to perform update/upsert by non-unique 0-1 property <p> in
//!   portal ID <hub>` (the message seen from the real service). The same `id` twice in one
//!   batch is a whole-request 400 `Duplicate IDs found in batch input: [..]. IDs must be
//!   unique` with `context.ids` (seen from `batch/update`; assumed for upsert).
//! - E-mail matches case-insensitively and is stored lower-cased; other unique properties
//!   match exactly. A match is updated (`"new":false`), otherwise a contact is created with
//!   the `id` written into the `idProperty` (`"new":true`).
//! - Property values are checked against the schema: unknown name (`PROPERTY_DOESNT_EXIST`),
//!   read-only (`READ_ONLY_VALUE`), bad e-mail (`INVALID_EMAIL`), enumeration value not
//!   among the options (`INVALID_OPTION`), non-numeric number (`INVALID_LONG`), bad
//!   boolean / date / datetime (`INVALID_BOOLEAN` / `INVALID_DATE` / `INVALID_DATETIME`).
//!   An empty string (or `null`) clears a property. A unique value (e-mail included) that
//!   another contact already holds is a `CONFLICT` (`Contact already exists. Existing ID:
//!   <id>`).
//! - **All or nothing by default.** Without multi-status, one bad input fails the whole
//!   request: 400 `{"status":"error","message":"Property values were not valid: [..]",
//!   "correlationId","errors":[{"message","code","context":{"propertyName":[..]}}],
//!   "category":"VALIDATION_ERROR"}` (409 `CONFLICT` for a conflict) and nothing is written.
//!   The error does not say which input failed, only which property (and the bad value in
//!   the message).
//! - **Multi-status** is switched on by giving *every* input a unique `objectWriteTraceId`.
//!   Then the good inputs are written and the answer is HTTP 207 with `numErrors` and
//!   `errors[]`, each `{"status":"error","category","message","context":
//!   {"objectWriteTraceId":["<trace>"]}}`: the trace id is the only thing tying an error to
//!   its input. HubSpot's guide warns that partial upserts are not supported with `email`
//!   as the `idProperty`; the fake reads that as "no multi-status for e-mail-keyed batches"
//!   (all or nothing even with trace ids) unless [`HubSpotFake::set_email_multi_status`]
//!   says otherwise.
//! - Success is 200 `{"status":"COMPLETE","results":[..],"startedAt","completedAt"}`; each
//!   result is `{"id","properties","createdAt","updatedAt","archived":false,"new"}` whose
//!   `properties` hold the values written plus `hs_object_id`, `createdate`,
//!   `lastmodifieddate` and the `idProperty`. HubSpot does not keep `results` in input order
//!   (HubSpot/hubspot-api-nodejs#190), so the fake shuffles them
//!   ([`HubSpotFake::set_shuffle_results`]): match results to inputs by the `idProperty`
//!   value in `properties` (case-insensitively for e-mail).
//!
//! Around every `/crm/` call: `Authorization: Bearer <token>` (401 `INVALID_AUTHENTICATION`
//! with `X-HubSpot-Auth-Failure` otherwise, also after [`HubSpotFake::revoke_token`]); the
//! scopes of the token (403 `MISSING_SCOPES`); the limits, enforced by the fake itself —
//! `burst_max` calls per sliding `burst_window` (429 `TEN_SECONDLY_ROLLING`) and `daily_max`
//! per day (429 `DAILY`), with `X-HubSpot-RateLimit-Max`, `-Remaining`,
//! `-Interval-Milliseconds`, `-Daily` and `-Daily-Remaining` on every authenticated answer.
//! Whole-call failures can be queued ([`Fault`]), a latency added, the request log read
//! (arrival `Instant`s, statuses, inputs per call) and the busiest window measured.
//!
//! Confirmed against HubSpot's docs or real responses quoted in public code: the token-info
//! endpoint and its fields; the 401 body; the 400 `Property values were not valid` body and
//! its `errors[]`; the 403 `MISSING_SCOPES` body; the 207 multi-status shape keyed by
//! `objectWriteTraceId`; the 100-input limit; the 423 meaning; the `DAILY` 429 body; the
//! non-unique `idProperty` message; `INVALID_EMAIL`, `INVALID_OPTION`, `INVALID_LONG` and
//! `PROPERTY_DOESNT_EXIST` messages; unordered results; `description` not being a contact
//! property (use `message`).
//!
//! Not confirmed, so assumed: the message of the over-100 error; the bodies of 423, 500,
//! 502/503/504 (502/503/504 answer a small HTML page, as a gateway would; 423 and 500 a
//! HubSpot-style JSON error); the 401 message for a wrong or revoked (rather than missing)
//! token; what the token-info endpoint answers for a bad token (401 here); `Retry-After` on
//! 429 (absent unless injected); the `INVALID_BOOLEAN`/`INVALID_DATE`/`INVALID_DATETIME`/
//! `READ_ONLY_VALUE` messages; the 404 messages; duplicate-id and conflict handling in
//! upserts; whether HubSpot lower-cases stored e-mail; `hasUniqueValue` of `email` (false
//! here, as e-mail is HubSpot's built-in identity rather than a flagged unique property —
//! the upsert still accepts `idProperty: email`); whether 429'd calls count against the
//! window (they do not here); what the reading of "partial upserts are not supported with
//! email" really means.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use rand::seq::SliceRandom;
use serde_json::{json, Map, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The private-app token the fake accepts unless configured otherwise.
pub const DEFAULT_TOKEN: &str = "pat-na1-00000000-0000-0000-0000-000000000000";
/// The portal (`hubId`) the fake pretends to be.
pub const HUB_ID: u64 = 20_211_234;
/// The private app's id (`appId` of the token-info answer).
pub const APP_ID: u64 = 3_030_303;
/// The user who created the private app (`userId` of the token-info answer).
pub const USER_ID: u64 = 1_010_101;

/// Scopes a leadsync private app needs.
pub const SCOPE_CONTACTS_WRITE: &str = "crm.objects.contacts.write";
pub const SCOPE_CONTACTS_READ: &str = "crm.objects.contacts.read";
pub const SCOPE_SCHEMAS_READ: &str = "crm.schemas.contacts.read";

const AUTH_MESSAGE: &str = "Authentication credentials not found. This API supports OAuth 2.0 authentication and you can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview";

/// How the fake is set up at start. Everything else can be changed while it runs.
#[derive(Debug, Clone)]
pub struct HubSpotFakeConfig {
    /// The private app's access token.
    pub token: String,
    /// The scopes granted to the token.
    pub scopes: Vec<String>,
    /// Calls allowed per `burst_window` (100 for Free/Starter private apps).
    pub burst_max: usize,
    /// The sliding burst window (10 s).
    pub burst_window: Duration,
    /// Calls allowed per day (250,000 for Free/Starter).
    pub daily_max: u64,
    /// Inputs allowed per batch request (100).
    pub max_batch: usize,
}

impl Default for HubSpotFakeConfig {
    fn default() -> Self {
        HubSpotFakeConfig {
            token: DEFAULT_TOKEN.into(),
            scopes: vec![
                SCOPE_CONTACTS_WRITE.into(),
                SCOPE_CONTACTS_READ.into(),
                SCOPE_SCHEMAS_READ.into(),
            ],
            burst_max: 100,
            burst_window: Duration::from_secs(10),
            daily_max: 250_000,
            max_batch: 100,
        }
    }
}

/// A whole-call failure to inject into the coming `/crm/` calls (not token introspection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// 429 `TEN_SECONDLY_ROLLING`; `Retry-After: <secs>` when given (HubSpot does not
    /// document one). The call does not count against the limits.
    TenSecondlyRolling { retry_after_secs: Option<u64> },
    /// 429 `DAILY` (`You have reached your daily limit.`).
    Daily,
    /// 500 with a HubSpot-style JSON error; nothing written.
    ServerError,
    /// 503 from the edge (an HTML page, no rate-limit headers); nothing written.
    Unavailable,
    /// 502 from the edge (HTML); nothing written. HubSpot documents 502/504 as timeouts to
    /// retry after a pause.
    BadGateway,
    /// 504 from the edge (HTML); nothing written.
    GatewayTimeout,
    /// 423 Locked ("wait at least 2 seconds"); nothing written.
    Locked423,
    /// 401 `INVALID_AUTHENTICATION` for this call only (see also
    /// [`HubSpotFake::revoke_token`]).
    Unauthorized401,
    /// The call is carried out (contacts written) and then answered 500: the ambiguous case
    /// a client must retry idempotently.
    CommittedThenFailed,
}

/// One contact property as the properties API reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PropertySpec {
    pub name: String,
    pub label: String,
    /// `string`, `number`, `bool`, `enumeration`, `date`, `datetime`, `phone_number`.
    pub type_: String,
    /// `text`, `textarea`, `number`, `booleancheckbox`, `select`, `radio`, `checkbox`,
    /// `date`, `phonenumber`, …
    pub field_type: String,
    pub has_unique_value: bool,
    /// Option values, for enumerations.
    pub options: Vec<String>,
}

impl PropertySpec {
    fn new(name: &str, label: &str, type_: &str, field_type: &str) -> PropertySpec {
        PropertySpec {
            name: name.into(),
            label: label.into(),
            type_: type_.into(),
            field_type: field_type.into(),
            has_unique_value: false,
            options: Vec::new(),
        }
    }
    /// A single-line text property.
    pub fn text(name: &str) -> PropertySpec {
        PropertySpec::new(name, name, "string", "text")
    }
    /// A multi-line text property.
    pub fn textarea(name: &str) -> PropertySpec {
        PropertySpec::new(name, name, "string", "textarea")
    }
    /// A text property flagged "require unique values" (e.g. `leadsync_key`), usable as
    /// `idProperty`.
    pub fn unique_text(name: &str) -> PropertySpec {
        let mut p = PropertySpec::text(name);
        p.has_unique_value = true;
        p
    }
    /// A dropdown (`select`) with these option values.
    pub fn enumeration(name: &str, options: &[&str]) -> PropertySpec {
        let mut p = PropertySpec::new(name, name, "enumeration", "select");
        p.options = options.iter().map(|o| o.to_string()).collect();
        p
    }
    /// A number property.
    pub fn number(name: &str) -> PropertySpec {
        PropertySpec::new(name, name, "number", "number")
    }
    /// A single checkbox (`true`/`false`).
    pub fn boolean(name: &str) -> PropertySpec {
        PropertySpec::new(name, name, "bool", "booleancheckbox")
    }
    /// A date picker (midnight UTC in milliseconds, or `YYYY-MM-DD`).
    pub fn date(name: &str) -> PropertySpec {
        PropertySpec::new(name, name, "date", "date")
    }
    /// A date and time (milliseconds, or ISO 8601).
    pub fn datetime(name: &str) -> PropertySpec {
        PropertySpec::new(name, name, "datetime", "date")
    }
    fn labelled(mut self, label: &str) -> PropertySpec {
        self.label = label.into();
        self
    }
    fn field(mut self, field_type: &str) -> PropertySpec {
        self.field_type = field_type.into();
        self
    }
}

/// Properties whose values the API never accepts.
const READ_ONLY: &[&str] = &["hs_object_id", "lastmodifieddate"];

/// The standard contact properties leadsync can meet (a subset of a real portal's).
fn contact_properties() -> Vec<PropertySpec> {
    vec![
        PropertySpec::text("email").labelled("Email"),
        PropertySpec::text("firstname").labelled("First Name"),
        PropertySpec::text("lastname").labelled("Last Name"),
        PropertySpec::text("company").labelled("Company Name"),
        PropertySpec::text("jobtitle").labelled("Job Title"),
        PropertySpec::text("phone")
            .labelled("Phone Number")
            .field("phonenumber"),
        PropertySpec::text("mobilephone")
            .labelled("Mobile Phone Number")
            .field("phonenumber"),
        PropertySpec::text("website").labelled("Website URL"),
        PropertySpec::text("address").labelled("Street Address"),
        PropertySpec::text("city").labelled("City"),
        PropertySpec::text("state").labelled("State/Region"),
        PropertySpec::text("zip").labelled("Postal Code"),
        PropertySpec::text("country").labelled("Country/Region"),
        PropertySpec::text("industry").labelled("Industry"),
        PropertySpec::textarea("message").labelled("Message"),
        PropertySpec::enumeration(
            "numemployees",
            &[
                "1-5", "5-25", "25-50", "50-100", "100-500", "500-1000", "1000+",
            ],
        )
        .labelled("Number of Employees"),
        PropertySpec::enumeration(
            "hs_lead_status",
            &[
                "NEW",
                "OPEN",
                "IN_PROGRESS",
                "OPEN_DEAL",
                "UNQUALIFIED",
                "ATTEMPTED_TO_CONTACT",
                "CONNECTED",
                "BAD_TIMING",
            ],
        )
        .labelled("Lead Status")
        .field("radio"),
        PropertySpec::enumeration(
            "lifecyclestage",
            &[
                "subscriber",
                "lead",
                "marketingqualifiedlead",
                "salesqualifiedlead",
                "opportunity",
                "customer",
                "evangelist",
                "other",
            ],
        )
        .labelled("Lifecycle Stage")
        .field("radio"),
        PropertySpec::number("hs_object_id").labelled("Record ID"),
        PropertySpec::datetime("createdate").labelled("Create Date"),
        PropertySpec::datetime("lastmodifieddate").labelled("Last Modified Date"),
    ]
}

fn option_label(value: &str) -> String {
    let known = [
        ("IN_PROGRESS", "In Progress"),
        ("OPEN_DEAL", "Open Deal"),
        ("ATTEMPTED_TO_CONTACT", "Attempted to Contact"),
        ("BAD_TIMING", "Bad Timing"),
        ("NEW", "New"),
        ("OPEN", "Open"),
        ("UNQUALIFIED", "Unqualified"),
        ("CONNECTED", "Connected"),
        ("marketingqualifiedlead", "Marketing Qualified Lead"),
        ("salesqualifiedlead", "Sales Qualified Lead"),
        ("subscriber", "Subscriber"),
        ("lead", "Lead"),
        ("opportunity", "Opportunity"),
        ("customer", "Customer"),
        ("evangelist", "Evangelist"),
        ("other", "Other"),
    ];
    known
        .iter()
        .find(|(v, _)| *v == value)
        .map(|(_, l)| l.to_string())
        .unwrap_or_else(|| value.to_string())
}

struct PropDef {
    spec: PropertySpec,
    hubspot_defined: bool,
    created_at: String,
}

impl PropDef {
    fn read_only(&self) -> bool {
        READ_ONLY.contains(&self.spec.name.as_str())
    }
    /// A key for the unique index: `email` and flagged-unique properties only.
    fn is_unique(&self) -> bool {
        self.spec.name == "email" || self.spec.has_unique_value
    }
    fn json(&self, order: usize) -> Value {
        let s = &self.spec;
        json!({
            "updatedAt": self.created_at,
            "createdAt": self.created_at,
            "name": s.name,
            "label": s.label,
            "type": s.type_,
            "fieldType": s.field_type,
            "description": "",
            "groupName": "contactinformation",
            "options": s.options.iter().enumerate().map(|(i, o)| json!({
                "label": option_label(o), "value": o, "description": "",
                "displayOrder": i, "hidden": false
            })).collect::<Vec<_>>(),
            "displayOrder": if self.hubspot_defined { -1 } else { order as i64 },
            "calculated": false,
            "externalOptions": false,
            "hasUniqueValue": s.has_unique_value,
            "hidden": false,
            "hubspotDefined": self.hubspot_defined,
            "showCurrencySymbol": false,
            "modificationMetadata": {
                "archivable": !self.hubspot_defined,
                "readOnlyDefinition": self.hubspot_defined,
                "readOnlyValue": self.read_only(),
            },
            "formField": !self.read_only(),
            "dataSensitivity": "non_sensitive",
            "archived": false,
        })
    }
}

/// One stored contact.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredContact {
    /// The record id (`hs_object_id`).
    pub id: String,
    /// Every property that has a value, as strings (HubSpot stores strings), including
    /// `hs_object_id`, `createdate` and `lastmodifieddate`.
    pub properties: Map<String, Value>,
    /// How many times it was updated after creation.
    pub updates: u32,
}

impl StoredContact {
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.properties.get(name).and_then(Value::as_str)
    }
}

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct RequestInfo {
    pub method: String,
    /// Path only (no query string).
    pub path: String,
    /// Arrival time (before any configured latency).
    pub at: Instant,
    /// When the answer was ready (after any latency): a throttle's wait counts from here.
    pub answered: Instant,
    pub status: u16,
    /// Inputs in the body (batch upsert), else 0.
    pub records: usize,
}

struct Inner {
    config: HubSpotFakeConfig,
    base_url: String,
    state: Mutex<FakeState>,
}

struct FakeState {
    properties: Vec<PropDef>,
    contacts: Vec<StoredContact>,
    /// Unique property -> normalised value -> index into `contacts`.
    unique: HashMap<String, HashMap<String, usize>>,
    next_id: u64,
    revoked: bool,
    /// One entry per coming `/crm/` call: `None` lets it through.
    faults: crate::FaultQueue<Fault>,
    latency: Duration,
    /// Calls counted against the burst limit, oldest first.
    window: VecDeque<Instant>,
    daily_used: u64,
    requests: Vec<RequestInfo>,
    shuffle: bool,
    email_multi_status: bool,
}

/// A running fake HubSpot portal. Dropping it stops the server.
pub struct HubSpotFake {
    inner: Arc<Inner>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for HubSpotFake {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn lock(inner: &Inner) -> MutexGuard<'_, FakeState> {
    // A test that panicked while holding the lock must not hide the state from others.
    inner.state.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_iso() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn correlation_id() -> String {
    let a: u128 = rand::random();
    let h = format!("{a:032x}");
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// The key a value has in the unique index.
fn unique_key(property: &str, value: &str) -> String {
    if property == "email" {
        value.trim().to_lowercase()
    } else {
        value.to_string()
    }
}

impl HubSpotFake {
    /// Start on 127.0.0.1 on a free port.
    pub async fn start(config: HubSpotFakeConfig) -> std::io::Result<HubSpotFake> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let created = now_iso();
        let properties = contact_properties()
            .into_iter()
            .map(|spec| PropDef {
                spec,
                hubspot_defined: true,
                created_at: created.clone(),
            })
            .collect();
        let inner = Arc::new(Inner {
            base_url: format!("http://{addr}"),
            state: Mutex::new(FakeState {
                properties,
                contacts: Vec::new(),
                unique: HashMap::new(),
                next_id: 1_000_000_001,
                revoked: false,
                faults: crate::FaultQueue::default(),
                latency: Duration::ZERO,
                window: VecDeque::new(),
                daily_used: 0,
                requests: Vec::new(),
                shuffle: true,
                email_multi_status: false,
            }),
            config,
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&inner));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(HubSpotFake { inner, server })
    }

    /// `http://127.0.0.1:<port>`, standing in for `https://api.hubapi.com`.
    pub fn base_url(&self) -> &str {
        &self.inner.base_url
    }

    pub fn config(&self) -> &HubSpotFakeConfig {
        &self.inner.config
    }

    fn state(&self) -> MutexGuard<'_, FakeState> {
        lock(&self.inner)
    }

    /// Fail the coming `times` `/crm/` calls with `fault` (after entries already queued).
    pub fn inject(&self, fault: Fault, times: usize) {
        self.state().faults.inject(fault, times);
    }

    /// Let the next `pass` `/crm/` calls through (after anything already queued), then fail
    /// `times` with `fault`.
    pub fn inject_after(&self, pass: usize, fault: Fault, times: usize) {
        self.state().faults.inject_after(pass, fault, times);
    }

    /// Wait this long before answering any request.
    pub fn set_latency(&self, latency: Duration) {
        self.state().latency = latency;
    }

    /// The token stops working: every call with it gets 401, token-info included.
    pub fn revoke_token(&self) {
        self.state().revoked = true;
    }

    /// Undo [`HubSpotFake::revoke_token`].
    pub fn restore_token(&self) {
        self.state().revoked = false;
    }

    /// Add (or replace, by name) a contact property, as a custom property.
    pub fn add_property(&self, p: PropertySpec) {
        let mut s = self.state();
        s.properties.retain(|d| d.spec.name != p.name);
        s.properties.push(PropDef {
            spec: p,
            hubspot_defined: false,
            created_at: now_iso(),
        });
        s.reindex();
    }

    /// Remove a property (as if archived): it no longer exists for the API. Stored values
    /// stay on the contacts.
    pub fn remove_property(&self, name: &str) {
        let mut s = self.state();
        s.properties.retain(|d| d.spec.name != name);
        s.reindex();
    }

    /// The current property schema.
    pub fn properties(&self) -> Vec<PropertySpec> {
        self.state()
            .properties
            .iter()
            .map(|d| d.spec.clone())
            .collect()
    }

    /// Store a contact as is, bypassing validation and uniqueness. Values are stored as
    /// strings. Returns its id.
    pub fn seed_contact(&self, properties: Map<String, Value>) -> String {
        let mut s = self.state();
        let id = s.new_id();
        let now = now_iso();
        let mut props = Map::new();
        props.insert("hs_object_id".into(), json!(id));
        props.insert("createdate".into(), json!(now));
        props.insert("lastmodifieddate".into(), json!(now));
        for (k, v) in properties {
            let text = match v {
                Value::String(t) => t,
                Value::Null => continue,
                other => other.to_string(),
            };
            props.insert(k, Value::String(text));
        }
        s.contacts.push(StoredContact {
            id: id.clone(),
            properties: props,
            updates: 0,
        });
        let i = s.contacts.len() - 1;
        s.index_contact(i);
        id
    }

    /// Every stored contact, in creation order.
    pub fn contacts(&self) -> Vec<StoredContact> {
        self.state().contacts.clone()
    }

    /// The contact with this e-mail (case-insensitive).
    pub fn contact_by_email(&self, email: &str) -> Option<StoredContact> {
        self.contact_by("email", email)
    }

    /// The contact whose unique `property` (e-mail or a `hasUniqueValue` property) has this
    /// value.
    pub fn contact_by(&self, property: &str, value: &str) -> Option<StoredContact> {
        let s = self.state();
        let i = s.find(property, value)?;
        Some(s.contacts[i].clone())
    }

    /// Every request received, in order of completion.
    pub fn requests(&self) -> Vec<RequestInfo> {
        self.state().requests.clone()
    }

    /// Forget the request log (not the rate-limit counters).
    pub fn clear_requests(&self) {
        self.state().requests.clear();
    }

    /// The most `/crm/` calls (whatever their answer) that arrived within any sliding
    /// `burst_window`, from the request log.
    pub fn max_calls_in_window(&self) -> usize {
        let window = self.inner.config.burst_window;
        let mut times: Vec<Instant> = self
            .state()
            .requests
            .iter()
            .filter(|r| r.path.starts_with("/crm/"))
            .map(|r| r.at)
            .collect();
        times.sort();
        let mut best = 0;
        let mut start = 0;
        for end in 0..times.len() {
            while times[end].duration_since(times[start]) >= window {
                start += 1;
            }
            best = best.max(end - start + 1);
        }
        best
    }

    /// Set the calls used today (at `daily_max` every call gets 429 `DAILY`).
    pub fn set_daily_used(&self, used: u64) {
        self.state().daily_used = used;
    }

    /// Calls counted against the daily limit so far.
    pub fn daily_used(&self) -> u64 {
        self.state().daily_used
    }

    /// Shuffle batch results (the default, as HubSpot does not keep input order) or answer
    /// them in input order.
    pub fn set_shuffle_results(&self, on: bool) {
        self.state().shuffle = on;
    }

    /// Allow multi-status (207) for batches keyed by `email` too. Off by default: HubSpot's
    /// guide says partial upserts are not supported with `email` as the `idProperty`.
    pub fn set_email_multi_status(&self, on: bool) {
        self.state().email_multi_status = on;
    }
}

impl FakeState {
    fn new_id(&mut self) -> String {
        let n = self.next_id;
        self.next_id += 1;
        n.to_string()
    }
    fn property(&self, name: &str) -> Option<&PropDef> {
        self.properties.iter().find(|d| d.spec.name == name)
    }
    fn is_unique(&self, name: &str) -> bool {
        self.property(name).is_some_and(PropDef::is_unique)
    }
    fn find(&self, property: &str, value: &str) -> Option<usize> {
        self.unique
            .get(property)
            .and_then(|m| m.get(&unique_key(property, value)))
            .copied()
    }
    fn index_contact(&mut self, i: usize) {
        let names: Vec<String> = self
            .properties
            .iter()
            .filter(|d| d.is_unique())
            .map(|d| d.spec.name.clone())
            .collect();
        for name in names {
            if let Some(v) = self.contacts[i].get_str(&name) {
                let key = unique_key(&name, v);
                if !key.is_empty() {
                    self.unique.entry(name).or_default().insert(key, i);
                }
            }
        }
    }
    fn reindex(&mut self) {
        self.unique.clear();
        for i in 0..self.contacts.len() {
            self.index_contact(i);
        }
    }
    fn rate_headers(&self, cfg: &HubSpotFakeConfig, r: &mut Response) {
        let remaining = cfg.burst_max.saturating_sub(self.window.len());
        let daily_remaining = cfg.daily_max.saturating_sub(self.daily_used);
        let h = r.headers_mut();
        let mut set = |name: &'static str, v: String| {
            if let Ok(v) = HeaderValue::from_str(&v) {
                h.insert(name, v);
            }
        };
        set("x-hubspot-ratelimit-max", cfg.burst_max.to_string());
        set("x-hubspot-ratelimit-remaining", remaining.to_string());
        set(
            "x-hubspot-ratelimit-interval-milliseconds",
            cfg.burst_window.as_millis().to_string(),
        );
        set("x-hubspot-ratelimit-daily", cfg.daily_max.to_string());
        set(
            "x-hubspot-ratelimit-daily-remaining",
            daily_remaining.to_string(),
        );
    }
}

// ---------------------------------------------------------------------------------------
// Responses.

fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut r = (
        status,
        [(header::CONTENT_TYPE, "application/json;charset=utf-8")],
        body.to_string(),
    )
        .into_response();
    if let Some(id) = body.get("correlationId").and_then(Value::as_str) {
        if let Ok(v) = HeaderValue::from_str(id) {
            r.headers_mut().insert("x-hubspot-correlation-id", v);
        }
    }
    r
}

/// `{"status":"error","message","correlationId","category"}` plus extra members.
fn error_body(message: &str, category: Option<&str>, extra: Value) -> Value {
    let mut o = Map::new();
    o.insert("status".into(), json!("error"));
    o.insert("message".into(), json!(message));
    o.insert("correlationId".into(), json!(correlation_id()));
    if let Value::Object(extra) = extra {
        o.extend(extra);
    }
    if let Some(c) = category {
        o.insert("category".into(), json!(c));
    }
    Value::Object(o)
}

fn unauthorized() -> Response {
    let mut r = json_response(
        StatusCode::UNAUTHORIZED,
        &error_body(AUTH_MESSAGE, Some("INVALID_AUTHENTICATION"), json!({})),
    );
    r.headers_mut().insert(
        "x-hubspot-auth-failure",
        HeaderValue::from_static("401 Unauthorized"),
    );
    r
}

fn not_found(message: &str) -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        &error_body(message, Some("OBJECT_NOT_FOUND"), json!({})),
    )
}

fn validation_error(message: &str, extra: Value) -> Response {
    json_response(
        StatusCode::BAD_REQUEST,
        &error_body(message, Some("VALIDATION_ERROR"), extra),
    )
}

/// A body that does not deserialise: HubSpot's Jackson message, without a category.
fn invalid_json(line: usize, column: usize, detail: &str) -> Response {
    json_response(
        StatusCode::BAD_REQUEST,
        &error_body(
            &format!("Invalid input JSON on line {line}, column {column}: {detail}"),
            None,
            json!({}),
        ),
    )
}

fn missing_scopes(required: &[&str]) -> Response {
    json_response(
        StatusCode::FORBIDDEN,
        &error_body(
            "This app hasn't been granted all required scopes to make this call. Read more about required scopes here: https://developers.hubspot.com/scopes.",
            Some("MISSING_SCOPES"),
            json!({
                "errors": [{
                    "message": "One or more of the following scopes are required.",
                    "context": {"requiredGranularScopes": required},
                }],
                "links": {"scopes": "https://developers.hubspot.com/scopes"},
            }),
        ),
    )
}

fn rate_limited(daily: bool, retry_after: Option<u64>) -> Response {
    let (message, policy) = if daily {
        ("You have reached your daily limit.", "DAILY")
    } else {
        (
            "You have reached your ten_secondly_rolling limit.",
            "TEN_SECONDLY_ROLLING",
        )
    };
    let mut r = json_response(
        StatusCode::TOO_MANY_REQUESTS,
        &json!({
            "status": "error",
            "message": message,
            "errorType": "RATE_LIMIT",
            "correlationId": correlation_id(),
            "policyName": policy,
            "requestId": correlation_id(),
        }),
    );
    if let Some(secs) = retry_after {
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    r
}

fn server_error() -> Response {
    json_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        &error_body("internal error", None, json!({})),
    )
}

fn locked() -> Response {
    json_response(
        StatusCode::LOCKED,
        &error_body(
            "The request could not be processed because the resource is locked. Please retry after a short delay.",
            Some("LOCKED"),
            json!({}),
        ),
    )
}

/// What an edge proxy answers: an HTML page, no HubSpot headers.
fn gateway(status: StatusCode) -> Response {
    let text = format!(
        "<html><head><title>{status}</title></head><body><center><h1>{status}</h1></center></body></html>"
    );
    (status, [(header::CONTENT_TYPE, "text/html")], text).into_response()
}

// ---------------------------------------------------------------------------------------
// Routing.

async fn handle(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let at = Instant::now();
    let latency = lock(&inner).latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let path = uri.path().to_string();
    let query = uri.query().unwrap_or("").to_string();
    let (response, records) = {
        let mut s = lock(&inner);
        route(
            &inner.config,
            &mut s,
            &method,
            &path,
            &query,
            &headers,
            &body,
        )
    };
    lock(&inner).requests.push(RequestInfo {
        method: method.to_string(),
        path,
        at,
        answered: Instant::now(),
        status: response.status().as_u16(),
        records,
    });
    response
}

enum Endpoint {
    Upsert,
    ListProperties,
    GetProperty(String),
    GetContact(String),
}

fn is_version(seg: &str) -> bool {
    // Date-versioned paths: `2026-03`.
    let b = seg.as_bytes();
    b.len() == 7 && b[4] == b'-' && seg.chars().filter(|c| c.is_ascii_digit()).count() == 6
}

fn is_contacts(seg: &str) -> bool {
    seg == "contacts" || seg == "0-1"
}

fn parse_endpoint(method: &Method, path: &str) -> Option<Endpoint> {
    let segs: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .map(|p| pct_decode(p).unwrap_or_else(|| p.to_string()))
        .collect();
    let seg: Vec<&str> = segs.iter().map(String::as_str).collect();
    // Normalise `crm/v3/<api>/…` and `crm/<api>/<version>/…` to `<api>/…`.
    let rest: &[&str] = match seg.as_slice() {
        ["crm", "v3", rest @ ..] => rest,
        ["crm", api, version, rest @ ..] if is_version(version) => {
            return parse_api(method, api, rest);
        }
        _ => return None,
    };
    let (api, rest) = rest.split_first()?;
    parse_api(method, api, rest)
}

fn parse_api(method: &Method, api: &str, rest: &[&str]) -> Option<Endpoint> {
    match (method.clone(), api, rest) {
        (Method::POST, "objects", [obj, "batch", "upsert"]) if is_contacts(obj) => {
            Some(Endpoint::Upsert)
        }
        (Method::GET, "objects", [obj, id]) if is_contacts(obj) && *id != "batch" => {
            Some(Endpoint::GetContact(id.to_string()))
        }
        (Method::GET, "properties", [obj]) if is_contacts(obj) => Some(Endpoint::ListProperties),
        (Method::GET, "properties", [obj, name]) if is_contacts(obj) => {
            Some(Endpoint::GetProperty(name.to_string()))
        }
        _ => None,
    }
}

fn route(
    cfg: &HubSpotFakeConfig,
    s: &mut FakeState,
    method: &Method,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> (Response, usize) {
    if path == "/oauth/v2/private-apps/get/access-token-info" {
        if *method != Method::POST {
            return (not_found("resource not found"), 0);
        }
        return (token_info(cfg, s, body), 0);
    }
    match parse_endpoint(method, path) {
        Some(ep) => crm(cfg, s, ep, query, headers, body),
        None => (not_found("resource not found"), 0),
    }
}

fn token_info(cfg: &HubSpotFakeConfig, s: &FakeState, body: &[u8]) -> Response {
    let parsed: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return invalid_json(e.line(), e.column(), &e.to_string()),
    };
    let key = parsed.get("tokenKey").and_then(Value::as_str);
    if key != Some(cfg.token.as_str()) || s.revoked {
        return unauthorized();
    }
    json_response(
        StatusCode::OK,
        &json!({"userId": USER_ID, "hubId": HUB_ID, "appId": APP_ID, "scopes": cfg.scopes}),
    )
}

fn authorized(cfg: &HubSpotFakeConfig, s: &FakeState, headers: &HeaderMap) -> bool {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    !s.revoked && token == Some(cfg.token.as_str())
}

/// Every `/crm/` call: faults, auth, limits, then the endpoint.
fn crm(
    cfg: &HubSpotFakeConfig,
    s: &mut FakeState,
    ep: Endpoint,
    query: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> (Response, usize) {
    // The upsert body is parsed once, here, so that even a refused call reports its size.
    let parsed = match ep {
        Endpoint::Upsert => Some(serde_json::from_slice::<Value>(body)),
        _ => None,
    };
    let records = match &parsed {
        Some(Ok(v)) => v
            .get("inputs")
            .and_then(Value::as_array)
            .map_or(0, Vec::len),
        _ => 0,
    };
    let fault = s.faults.next_fault();
    match fault {
        Some(Fault::Unavailable) => return (gateway(StatusCode::SERVICE_UNAVAILABLE), records),
        Some(Fault::BadGateway) => return (gateway(StatusCode::BAD_GATEWAY), records),
        Some(Fault::GatewayTimeout) => return (gateway(StatusCode::GATEWAY_TIMEOUT), records),
        Some(Fault::Unauthorized401) => return (unauthorized(), records),
        _ => {}
    }
    if !authorized(cfg, s, headers) {
        return (unauthorized(), records);
    }
    let refuse = |s: &FakeState, mut r: Response, remaining_zero: bool| {
        s.rate_headers(cfg, &mut r);
        if remaining_zero {
            r.headers_mut().insert(
                "x-hubspot-ratelimit-remaining",
                HeaderValue::from_static("0"),
            );
        }
        (r, records)
    };
    match fault {
        Some(Fault::TenSecondlyRolling { retry_after_secs }) => {
            return refuse(s, rate_limited(false, retry_after_secs), true);
        }
        Some(Fault::Daily) => {
            let mut r = rate_limited(true, None);
            s.rate_headers(cfg, &mut r);
            r.headers_mut().insert(
                "x-hubspot-ratelimit-daily-remaining",
                HeaderValue::from_static("0"),
            );
            return (r, records);
        }
        _ => {}
    }
    // The limits the fake enforces itself.
    let now = Instant::now();
    while s
        .window
        .front()
        .is_some_and(|t| now.duration_since(*t) >= cfg.burst_window)
    {
        s.window.pop_front();
    }
    if s.daily_used >= cfg.daily_max {
        return refuse(s, rate_limited(true, None), false);
    }
    if s.window.len() >= cfg.burst_max {
        return refuse(s, rate_limited(false, None), true);
    }
    s.window.push_back(now);
    s.daily_used += 1;

    let mut response = match fault {
        Some(Fault::Locked423) => locked(),
        Some(Fault::ServerError) => server_error(),
        Some(Fault::CommittedThenFailed) => {
            let _ = endpoint(cfg, s, ep, query, parsed);
            server_error()
        }
        _ => endpoint(cfg, s, ep, query, parsed),
    };
    s.rate_headers(cfg, &mut response);
    (response, records)
}

fn has_scope(cfg: &HubSpotFakeConfig, any_of: &[&str]) -> bool {
    cfg.scopes.iter().any(|s| any_of.contains(&s.as_str()))
}

fn endpoint(
    cfg: &HubSpotFakeConfig,
    s: &mut FakeState,
    ep: Endpoint,
    query: &str,
    parsed: Option<Result<Value, serde_json::Error>>,
) -> Response {
    match ep {
        Endpoint::ListProperties | Endpoint::GetProperty(_) => {
            let read = [SCOPE_SCHEMAS_READ, SCOPE_CONTACTS_READ];
            if !has_scope(cfg, &read) {
                return missing_scopes(&read);
            }
            match ep {
                Endpoint::GetProperty(name) => {
                    match s
                        .properties
                        .iter()
                        .enumerate()
                        .find(|(_, d)| d.spec.name == name)
                    {
                        Some((i, d)) => json_response(StatusCode::OK, &d.json(i)),
                        None => not_found(&format!(
                            "Unable to find property with name {name} for object type 0-1"
                        )),
                    }
                }
                _ => {
                    let results: Vec<Value> = s
                        .properties
                        .iter()
                        .enumerate()
                        .map(|(i, d)| d.json(i))
                        .collect();
                    json_response(StatusCode::OK, &json!({ "results": results }))
                }
            }
        }
        Endpoint::GetContact(id) => {
            let read = [SCOPE_CONTACTS_READ];
            if !has_scope(cfg, &read) {
                return missing_scopes(&read);
            }
            get_contact(s, &id, query)
        }
        Endpoint::Upsert => {
            let write = [SCOPE_CONTACTS_WRITE];
            if !has_scope(cfg, &write) {
                return missing_scopes(&write);
            }
            match parsed {
                Some(Ok(v)) => upsert(cfg, s, v),
                Some(Err(e)) => invalid_json(e.line(), e.column(), &e.to_string()),
                None => server_error(),
            }
        }
    }
}

fn query_params(query: &str) -> HashMap<String, String> {
    query
        .split('&')
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

fn get_contact(s: &FakeState, id: &str, query: &str) -> Response {
    let q = query_params(query);
    let index = match q.get("idProperty").map(String::as_str) {
        None | Some("") | Some("hs_object_id") => s.contacts.iter().position(|c| c.id == id),
        Some(p) if s.is_unique(p) => s.find(p, id),
        Some(p) => {
            return validation_error(
                &format!(
                    "Unable to perform read by non-unique 0-1 property {p} in portal ID {HUB_ID}"
                ),
                json!({}),
            )
        }
    };
    let Some(c) = index.map(|i| &s.contacts[i]) else {
        return not_found("resource not found");
    };
    let wanted: Vec<String> = match q.get("properties") {
        Some(list) if !list.is_empty() => list.split(',').map(str::to_string).collect(),
        _ => [
            "createdate",
            "email",
            "firstname",
            "lastname",
            "lastmodifieddate",
        ]
        .iter()
        .map(|p| p.to_string())
        .collect(),
    };
    let mut props = Map::new();
    for p in wanted.iter().map(String::as_str).chain(["hs_object_id"]) {
        if s.property(p).is_some() {
            props.insert(
                p.into(),
                c.properties.get(p).cloned().unwrap_or(Value::Null),
            );
        }
    }
    json_response(StatusCode::OK, &contact_json(c, props, None))
}

fn contact_json(c: &StoredContact, properties: Map<String, Value>, new: Option<bool>) -> Value {
    let mut o = json!({
        "id": c.id,
        "properties": properties,
        "createdAt": c.get_str("createdate").unwrap_or_default(),
        "updatedAt": c.get_str("lastmodifieddate").unwrap_or_default(),
        "archived": false,
    });
    if let (Some(new), Some(m)) = (new, o.as_object_mut()) {
        m.insert("new".into(), json!(new));
    }
    o
}

// ---------------------------------------------------------------------------------------
// Batch upsert.

/// One property value that HubSpot refuses.
#[derive(Debug, Clone)]
struct PropError {
    name: String,
    code: &'static str,
    message: String,
}

impl PropError {
    fn new(name: &str, code: &'static str, message: String) -> PropError {
        PropError {
            name: name.into(),
            code,
            message,
        }
    }
}

/// `Property values were not valid: [{"isValid":false,…}]`, keys in HubSpot's order.
fn validation_message(errors: &[PropError]) -> String {
    let items: Vec<String> = errors
        .iter()
        .map(|e| {
            let m = json!(e.message).to_string();
            format!(
                "{{\"isValid\":false,\"message\":{m},\"error\":{},\"name\":{},\"localizedErrorMessage\":{m},\"portalId\":{HUB_ID}}}",
                json!(e.code),
                json!(e.name)
            )
        })
        .collect();
    format!("Property values were not valid: [{}]", items.join(","))
}

struct Input {
    id: String,
    id_property: String,
    /// `None` clears the property.
    properties: Vec<(String, Option<String>)>,
    trace: Option<String>,
}

/// Why one input fails.
enum InputError {
    Invalid(Vec<PropError>),
    Conflict(String),
}

fn json_type_error(what: &str) -> Response {
    invalid_json(
        1,
        1,
        &format!(
            "Cannot deserialize value of type `{what}` (through reference chain: com.hubspot.inbounddb.publicobject.core.v2.BatchInputSimplePublicObjectBatchInputUpsert[\"inputs\"])"
        ),
    )
}

/// Read the request into inputs, or answer the whole request (boxed: a `Response` is large).
fn read_inputs(body: Value) -> Result<Vec<Input>, Box<Response>> {
    let fail = |r: Response| Err(Box::new(r));
    let Value::Object(mut body) = body else {
        return fail(json_type_error(
            "BatchInputSimplePublicObjectBatchInputUpsert",
        ));
    };
    let Some(Value::Array(inputs)) = body.remove("inputs") else {
        return fail(validation_error(
            "Required field inputs is missing or null",
            json!({}),
        ));
    };
    let mut out = Vec::with_capacity(inputs.len());
    for input in inputs {
        let Value::Object(mut input) = input else {
            return fail(json_type_error("SimplePublicObjectBatchInputUpsert"));
        };
        let id = match input.remove("id") {
            Some(Value::String(id)) => id,
            Some(Value::Number(n)) => n.to_string(),
            _ => {
                return fail(validation_error(
                    "Required field id is missing or null",
                    json!({}),
                ))
            }
        };
        let id_property = match input.remove("idProperty") {
            Some(Value::String(p)) if !p.is_empty() => p,
            _ => {
                return fail(validation_error(
                    &format!("Unable to perform update/upsert by non-unique 0-1 property hs_object_id in portal ID {HUB_ID}"),
                    json!({}),
                ))
            }
        };
        let properties = match input.remove("properties") {
            Some(Value::Object(p)) => p,
            Some(Value::Null) | None => {
                return fail(validation_error(
                    "Required field properties is missing or null",
                    json!({}),
                ))
            }
            Some(_) => return fail(json_type_error("java.util.Map")),
        };
        let mut props = Vec::with_capacity(properties.len());
        for (k, v) in properties {
            let v = match v {
                Value::String(t) if t.is_empty() => None,
                Value::String(t) => Some(t),
                Value::Null => None,
                Value::Bool(b) => Some(b.to_string()),
                Value::Number(n) => Some(n.to_string()),
                Value::Array(_) | Value::Object(_) => {
                    return fail(json_type_error("java.lang.String"))
                }
            };
            props.push((k, v));
        }
        let trace = match input.remove("objectWriteTraceId") {
            Some(Value::String(t)) if !t.is_empty() => Some(t),
            _ => None,
        };
        out.push(Input {
            id,
            id_property,
            properties: props,
            trace,
        });
    }
    Ok(out)
}

/// HubSpot's e-mail check, approximately (the same shape as the Salesforce fake's).
fn valid_email(email: &str) -> bool {
    crate::salesforce::valid_email(email, true)
}

fn check_value(def: &PropDef, value: &str) -> Option<PropError> {
    let name = def.spec.name.as_str();
    if def.read_only() {
        return Some(PropError::new(
            name,
            "READ_ONLY_VALUE",
            format!("{name} is a read only property; its value cannot be set."),
        ));
    }
    if name == "email" && !valid_email(value) {
        return Some(PropError::new(
            name,
            "INVALID_EMAIL",
            format!("Email address {value} is invalid"),
        ));
    }
    match def.spec.type_.as_str() {
        "number" => {
            let ok = value.trim().parse::<f64>().is_ok_and(f64::is_finite);
            (!ok).then(|| {
                PropError::new(
                    name,
                    "INVALID_LONG",
                    format!("{value} was not a valid long."),
                )
            })
        }
        "bool" => {
            let ok = value.eq_ignore_ascii_case("true") || value.eq_ignore_ascii_case("false");
            (!ok).then(|| {
                PropError::new(
                    name,
                    "INVALID_BOOLEAN",
                    format!("{value} was not a valid boolean."),
                )
            })
        }
        "enumeration" => {
            let values: Vec<&str> = if def.spec.field_type == "checkbox" {
                value.split(';').collect()
            } else {
                vec![value]
            };
            let bad = values
                .iter()
                .find(|v| !def.spec.options.iter().any(|o| o == *v))?;
            Some(PropError::new(
                name,
                "INVALID_OPTION",
                format!(
                    "{bad} was not one of the allowed options: [{}]",
                    def.spec.options.join(", ")
                ),
            ))
        }
        "date" => check_date(name, value),
        "datetime" => {
            let ok = value.parse::<i64>().is_ok()
                || chrono::DateTime::parse_from_rfc3339(value).is_ok()
                || chrono::NaiveDate::parse_from_str(value, "%Y-%m-%d").is_ok();
            (!ok).then(|| {
                PropError::new(
                    name,
                    "INVALID_DATETIME",
                    format!("{value} was not a valid datetime."),
                )
            })
        }
        _ => None,
    }
}

fn check_date(name: &str, value: &str) -> Option<PropError> {
    if chrono::NaiveDate::parse_from_str(value, "%Y-%m-%d").is_ok() {
        return None;
    }
    let Ok(ms) = value.parse::<i64>() else {
        return Some(PropError::new(
            name,
            "INVALID_DATE",
            format!("{value} was not a valid date."),
        ));
    };
    let past_midnight = ms.rem_euclid(86_400_000);
    if past_midnight == 0 {
        return None;
    }
    let (h, m, sec, milli) = (
        past_midnight / 3_600_000,
        past_midnight / 60_000 % 60,
        past_midnight / 1000 % 60,
        past_midnight % 1000,
    );
    Some(PropError::new(
        name,
        "INVALID_DATE",
        format!("{value} is at {h:02}:{m:02}:{sec:02}.{milli:03} UTC, not midnight!"),
    ))
}

/// The stored form of a value.
fn normalise(name: &str, type_: &str, value: &str) -> String {
    if name == "email" {
        value.trim().to_lowercase()
    } else if type_ == "bool" {
        value.to_lowercase()
    } else {
        value.to_string()
    }
}

fn upsert(cfg: &HubSpotFakeConfig, s: &mut FakeState, body: Value) -> Response {
    let started = now_iso();
    let inputs = match read_inputs(body) {
        Ok(i) => i,
        Err(r) => return *r,
    };
    if inputs.len() > cfg.max_batch {
        return validation_error(
            &format!(
                "The maximum number of inputs supported in a batch request is {}. Please reduce the number of items and try again",
                cfg.max_batch
            ),
            json!({}),
        );
    }
    // Request-level checks: the id property, then duplicate ids.
    for input in &inputs {
        let p = input.id_property.as_str();
        if !s.is_unique(p) {
            return validation_error(
                &format!(
                    "Unable to perform update/upsert by non-unique 0-1 property {p} in portal ID {HUB_ID}"
                ),
                json!({}),
            );
        }
    }
    let mut seen: HashMap<(String, String), usize> = HashMap::new();
    let mut duplicates: Vec<String> = Vec::new();
    for input in &inputs {
        let key = (
            input.id_property.clone(),
            unique_key(&input.id_property, &input.id),
        );
        let n = seen.entry(key).or_default();
        *n += 1;
        if *n == 2 {
            duplicates.push(input.id.clone());
        }
    }
    if !duplicates.is_empty() {
        return validation_error(
            &format!(
                "Duplicate IDs found in batch input: [{}]. IDs must be unique",
                duplicates.join(", ")
            ),
            json!({"context": {"ids": duplicates}}),
        );
    }

    // Per-input checks.
    let mut outcome: Vec<Result<Option<usize>, InputError>> = Vec::with_capacity(inputs.len());
    // Unique values claimed by earlier inputs of this batch: (property, key) -> input.
    let mut claimed: HashMap<(String, String), usize> = HashMap::new();
    for (n, input) in inputs.iter().enumerate() {
        let mut errors = Vec::new();
        if input.id_property == "email" && !valid_email(&input.id) {
            errors.push(PropError::new(
                "email",
                "INVALID_EMAIL",
                format!("Email address {} is invalid", input.id),
            ));
        }
        for (name, value) in &input.properties {
            let Some(def) = s.property(name) else {
                errors.push(PropError::new(
                    name,
                    "PROPERTY_DOESNT_EXIST",
                    format!("Property \"{name}\" does not exist"),
                ));
                continue;
            };
            if let Some(value) = value {
                if let Some(e) = check_value(def, value) {
                    errors.push(e);
                }
            } else if def.read_only() {
                errors.extend(check_value(def, ""));
            }
        }
        if !errors.is_empty() {
            outcome.push(Err(InputError::Invalid(errors)));
            continue;
        }
        let target = s.find(&input.id_property, &input.id);
        // Unique values this input would set, the id property included.
        let mut sets: Vec<(String, String)> = vec![(
            input.id_property.clone(),
            unique_key(&input.id_property, &input.id),
        )];
        for (name, value) in &input.properties {
            if let Some(v) = value {
                if s.is_unique(name) && *name != input.id_property {
                    sets.push((name.clone(), unique_key(name, v)));
                }
            }
        }
        let mut conflict = None;
        for (p, key) in &sets {
            let holder = s.unique.get(p).and_then(|m| m.get(key)).copied();
            if let Some(h) = holder.filter(|h| Some(*h) != target) {
                conflict = Some(s.contacts[h].id.clone());
                break;
            }
            if let Some(other) = claimed.get(&(p.clone(), key.clone())) {
                if *other != n {
                    conflict = Some(format!("(input {other} of this batch)"));
                    break;
                }
            }
        }
        if let Some(existing) = conflict {
            outcome.push(Err(InputError::Conflict(existing)));
            continue;
        }
        for (p, key) in sets {
            claimed.insert((p, key), n);
        }
        outcome.push(Ok(target));
    }

    let multi_status = !inputs.is_empty()
        && inputs.iter().all(|i| i.trace.is_some())
        && (s.email_multi_status || inputs.iter().all(|i| i.id_property != "email"));
    if !multi_status {
        let invalid: Vec<PropError> = outcome
            .iter()
            .filter_map(|o| match o {
                Err(InputError::Invalid(e)) => Some(e.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        if !invalid.is_empty() {
            let errors: Vec<Value> = invalid
                .iter()
                .map(|e| {
                    json!({"message": e.message, "code": e.code,
                           "context": {"propertyName": [e.name]}})
                })
                .collect();
            return validation_error(&validation_message(&invalid), json!({ "errors": errors }));
        }
        if let Some(existing) = outcome.iter().find_map(|o| match o {
            Err(InputError::Conflict(id)) => Some(id.clone()),
            _ => None,
        }) {
            return json_response(
                StatusCode::CONFLICT,
                &error_body(
                    &format!("Contact already exists. Existing ID: {existing}"),
                    Some("CONFLICT"),
                    json!({}),
                ),
            );
        }
    }

    let mut results = Vec::new();
    let mut errors = Vec::new();
    for (input, result) in inputs.into_iter().zip(outcome) {
        match result {
            Ok(target) => results.push(write(s, input, target)),
            Err(e) => {
                let (category, message) = match e {
                    InputError::Invalid(errs) => ("VALIDATION_ERROR", validation_message(&errs)),
                    InputError::Conflict(id) => (
                        "CONFLICT",
                        format!("Contact already exists. Existing ID: {id}"),
                    ),
                };
                errors.push(json!({
                    "status": "error",
                    "category": category,
                    "message": message,
                    "context": {"objectWriteTraceId": [input.trace]},
                }));
            }
        }
    }
    if s.shuffle {
        results.shuffle(&mut rand::rng());
    }
    let mut body = json!({
        "status": "COMPLETE",
        "results": results,
        "startedAt": started,
        "completedAt": now_iso(),
    });
    let status = if errors.is_empty() {
        StatusCode::OK
    } else {
        if let Some(m) = body.as_object_mut() {
            m.insert("numErrors".into(), json!(errors.len()));
            m.insert("errors".into(), Value::Array(errors));
        }
        StatusCode::MULTI_STATUS
    };
    json_response(status, &body)
}

/// Create or update one contact from a checked input; its result object.
fn write(s: &mut FakeState, input: Input, target: Option<usize>) -> Value {
    let now = now_iso();
    let id_value = normalise(&input.id_property, "string", &input.id);
    let (i, new) = match target {
        Some(i) => (i, false),
        None => {
            let id = s.new_id();
            let mut props = Map::new();
            props.insert("hs_object_id".into(), json!(id));
            props.insert("createdate".into(), json!(now));
            s.contacts.push(StoredContact {
                id,
                properties: props,
                updates: 0,
            });
            (s.contacts.len() - 1, true)
        }
    };
    let mut written = Map::new();
    let mut changes: Vec<(String, Option<String>)> = input
        .properties
        .into_iter()
        .map(|(name, value)| {
            let type_ = s
                .property(&name)
                .map(|d| d.spec.type_.clone())
                .unwrap_or_default();
            let value = value.map(|v| normalise(&name, &type_, &v));
            (name, value)
        })
        .collect();
    changes.push((input.id_property.clone(), Some(id_value)));
    for (name, value) in changes {
        let unique = s.is_unique(&name);
        if unique {
            if let Some(old) = s.contacts[i].get_str(&name).map(|v| unique_key(&name, v)) {
                if let Some(m) = s.unique.get_mut(&name) {
                    m.remove(&old);
                }
            }
        }
        let c = &mut s.contacts[i];
        match value {
            Some(v) => {
                c.properties.insert(name.clone(), json!(v));
                written.insert(name.clone(), json!(v));
                if unique {
                    let key = unique_key(&name, &v);
                    s.unique.entry(name).or_default().insert(key, i);
                }
            }
            None => {
                c.properties.remove(&name);
                written.insert(name, json!(""));
            }
        }
    }
    let c = &mut s.contacts[i];
    c.properties.insert("lastmodifieddate".into(), json!(now));
    if !new {
        c.updates += 1;
    }
    for p in ["hs_object_id", "createdate", "lastmodifieddate"] {
        if let Some(v) = c.properties.get(p) {
            written.insert(p.into(), v.clone());
        }
    }
    contact_json(c, written, Some(new))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> reqwest::Client {
        reqwest::Client::new()
    }

    async fn fake() -> HubSpotFake {
        let f = HubSpotFake::start(HubSpotFakeConfig::default())
            .await
            .expect("fake starts");
        f.add_property(PropertySpec::unique_text("leadsync_key"));
        f
    }

    async fn post(f: &HubSpotFake, path: &str, body: &Value) -> (u16, HeaderMap, Value) {
        post_with(f, path, body, DEFAULT_TOKEN).await
    }

    async fn post_with(
        f: &HubSpotFake,
        path: &str,
        body: &Value,
        token: &str,
    ) -> (u16, HeaderMap, Value) {
        let r = client()
            .post(format!("{}{path}", f.base_url()))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let body = r.json::<Value>().await.unwrap_or(Value::Null);
        (status, headers, body)
    }

    async fn get(f: &HubSpotFake, path: &str) -> (u16, Value) {
        let r = client()
            .get(format!("{}{path}", f.base_url()))
            .bearer_auth(DEFAULT_TOKEN)
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        (status, r.json::<Value>().await.unwrap_or(Value::Null))
    }

    const UPSERT: &str = "/crm/v3/objects/contacts/batch/upsert";

    fn by_email(email: &str, props: Value) -> Value {
        json!({"idProperty": "email", "id": email, "properties": props})
    }

    fn by_key(key: &str, trace: &str, props: Value) -> Value {
        json!({"idProperty": "leadsync_key", "id": key, "objectWriteTraceId": trace,
               "properties": props})
    }

    #[tokio::test]
    async fn auth_and_token_info() {
        let f = fake().await;
        let body = json!({"inputs": [by_email("a@b.com", json!({}))]});
        let (status, headers, b) = post_with(&f, UPSERT, &body, "pat-na1-wrong").await;
        assert_eq!(status, 401);
        assert_eq!(b["category"], "INVALID_AUTHENTICATION");
        assert!(b["message"]
            .as_str()
            .unwrap()
            .starts_with("Authentication credentials not found"));
        assert!(b["correlationId"].is_string());
        assert!(headers.get("x-hubspot-auth-failure").is_some());

        let info = "/oauth/v2/private-apps/get/access-token-info";
        let (status, _, b) = post_with(&f, info, &json!({"tokenKey": DEFAULT_TOKEN}), "").await;
        assert_eq!(status, 200);
        assert_eq!(b["hubId"], HUB_ID);
        assert_eq!(b["appId"], APP_ID);
        assert_eq!(b["userId"], USER_ID);
        assert!(b["scopes"]
            .as_array()
            .unwrap()
            .contains(&json!(SCOPE_CONTACTS_WRITE)));

        let (status, _, _) = post(&f, UPSERT, &body).await;
        assert_eq!(status, 200);
        f.revoke_token();
        let (status, _, _) = post(&f, UPSERT, &body).await;
        assert_eq!(status, 401);
        let (status, _, _) = post_with(&f, info, &json!({"tokenKey": DEFAULT_TOKEN}), "").await;
        assert_eq!(status, 401);
    }

    #[tokio::test]
    async fn missing_scope_is_403() {
        let config = HubSpotFakeConfig {
            scopes: vec![SCOPE_CONTACTS_READ.into()],
            ..HubSpotFakeConfig::default()
        };
        let f = HubSpotFake::start(config).await.unwrap();
        let body = json!({"inputs": [by_email("a@b.com", json!({}))]});
        let (status, _, b) = post(&f, UPSERT, &body).await;
        assert_eq!(status, 403);
        assert_eq!(b["category"], "MISSING_SCOPES");
        assert_eq!(
            b["errors"][0]["context"]["requiredGranularScopes"][0],
            SCOPE_CONTACTS_WRITE
        );
    }

    #[tokio::test]
    async fn create_then_update_by_email() {
        let f = fake().await;
        let body = json!({"inputs": [
            by_email("Ada@Example.com", json!({"firstname": "Ada", "company": "Contoso",
                                              "hs_lead_status": "NEW"})),
            by_email("bob@example.com", json!({"firstname": "Bob"})),
        ]});
        let (status, headers, b) =
            post(&f, "/crm/objects/2026-03/contacts/batch/upsert", &body).await;
        assert_eq!(status, 200, "{b}");
        assert_eq!(b["status"], "COMPLETE");
        assert!(b["startedAt"].is_string() && b["completedAt"].is_string());
        let results = b["results"].as_array().unwrap();
        assert_eq!(results.len(), 2);
        assert!(results
            .iter()
            .all(|r| r["new"] == true && r["archived"] == false));
        let ada = results
            .iter()
            .find(|r| r["properties"]["email"] == "ada@example.com")
            .expect("result carries the (lower-cased) e-mail");
        assert_eq!(ada["properties"]["firstname"], "Ada");
        assert_eq!(ada["properties"]["hs_object_id"], ada["id"]);
        assert_eq!(headers["x-hubspot-ratelimit-max"], "100");

        let again = json!({"inputs": [by_email("ADA@example.COM", json!({"jobtitle": "CTO"}))]});
        let (status, _, b) = post(&f, UPSERT, &again).await;
        assert_eq!(status, 200);
        assert_eq!(b["results"][0]["new"], false);
        assert_eq!(b["results"][0]["id"], ada["id"]);
        let stored = f.contact_by_email("ada@example.com").unwrap();
        assert_eq!(stored.updates, 1);
        assert_eq!(stored.get_str("jobtitle"), Some("CTO"));
        assert_eq!(stored.get_str("company"), Some("Contoso"));
        assert_eq!(f.contacts().len(), 2);
    }

    #[tokio::test]
    async fn upsert_by_unique_property_and_seeded_contacts() {
        let f = fake().await;
        let seeded = f.seed_contact(
            json!({"leadsync_key": "k-1", "email": "old@example.com"})
                .as_object()
                .unwrap()
                .clone(),
        );
        let body = json!({"inputs": [
            by_key("k-1", "t1", json!({"firstname": "Old"})),
            by_key("k-2", "t2", json!({"email": "new@example.com"})),
        ]});
        let (status, _, b) = post(&f, UPSERT, &body).await;
        assert_eq!(status, 200, "{b}");
        let results = b["results"].as_array().unwrap();
        let k1 = results
            .iter()
            .find(|r| r["properties"]["leadsync_key"] == "k-1")
            .unwrap();
        assert_eq!(k1["id"], json!(seeded));
        assert_eq!(k1["new"], false);
        assert_eq!(
            f.contact_by("leadsync_key", "k-2")
                .unwrap()
                .get_str("email"),
            Some("new@example.com")
        );
        // An e-mail another contact holds is a conflict.
        let body = json!({"inputs": [by_key("k-3", "t3", json!({"email": "OLD@example.com"}))]});
        let (status, _, b) = post(&f, UPSERT, &body).await;
        assert_eq!(status, 207, "{b}");
        assert_eq!(b["errors"][0]["category"], "CONFLICT");
    }

    #[tokio::test]
    async fn one_bad_input_fails_the_whole_batch_without_trace_ids() {
        let f = fake().await;
        let body = json!({"inputs": [
            by_email("good@example.com", json!({"firstname": "G"})),
            by_email("bad@example.com", json!({"hs_lead_status": "HOT"})),
        ]});
        let (status, _, b) = post(&f, UPSERT, &body).await;
        assert_eq!(status, 400);
        assert_eq!(b["category"], "VALIDATION_ERROR");
        let message = b["message"].as_str().unwrap();
        assert!(message.starts_with("Property values were not valid: [{\"isValid\":false,"));
        assert!(message.contains("HOT was not one of the allowed options: [NEW, OPEN"));
        assert_eq!(b["errors"][0]["code"], "INVALID_OPTION");
        assert_eq!(
            b["errors"][0]["context"]["propertyName"][0],
            "hs_lead_status"
        );
        assert!(f.contacts().is_empty(), "nothing written");

        // Even with trace ids, an e-mail-keyed batch is all or nothing.
        let body = json!({"inputs": [
            {"idProperty": "email", "id": "not-an-email", "objectWriteTraceId": "x",
             "properties": {}},
        ]});
        let (status, _, b) = post(&f, UPSERT, &body).await;
        assert_eq!(status, 400);
        assert_eq!(b["errors"][0]["code"], "INVALID_EMAIL");
        assert!(b["message"]
            .as_str()
            .unwrap()
            .contains("Email address not-an-email is invalid"));
    }

    #[tokio::test]
    async fn partial_failure_is_207_keyed_by_trace_id() {
        let f = fake().await;
        let body = json!({"inputs": [
            by_key("k-1", "trace-1", json!({"firstname": "A"})),
            by_key("k-2", "trace-2", json!({"nosuchprop": "x"})),
            by_key("k-3", "trace-3", json!({"email": "nope"})),
            by_key("k-4", "trace-4", json!({"lastname": "D"})),
        ]});
        let (status, _, b) = post(&f, UPSERT, &body).await;
        assert_eq!(status, 207, "{b}");
        assert_eq!(b["status"], "COMPLETE");
        assert_eq!(b["numErrors"], 2);
        assert_eq!(b["results"].as_array().unwrap().len(), 2);
        let errors = b["errors"].as_array().unwrap();
        let traces: Vec<&str> = errors
            .iter()
            .map(|e| e["context"]["objectWriteTraceId"][0].as_str().unwrap())
            .collect();
        assert_eq!(traces, ["trace-2", "trace-3"]);
        assert_eq!(errors[0]["status"], "error");
        assert_eq!(errors[0]["category"], "VALIDATION_ERROR");
        assert!(errors[0]["message"]
            .as_str()
            .unwrap()
            .contains("PROPERTY_DOESNT_EXIST"));
        assert!(errors[1]["message"]
            .as_str()
            .unwrap()
            .contains("INVALID_EMAIL"));
        assert_eq!(f.contacts().len(), 2);
    }

    #[tokio::test]
    async fn batch_limits_and_id_property() {
        let f = fake().await;
        let inputs: Vec<Value> = (0..101)
            .map(|i| by_email(&format!("u{i}@example.com"), json!({})))
            .collect();
        let (status, _, b) = post(&f, UPSERT, &json!({ "inputs": inputs })).await;
        assert_eq!(status, 400);
        assert_eq!(b["category"], "VALIDATION_ERROR");
        assert_eq!(f.requests().last().unwrap().records, 101);

        let body = json!({"inputs": [
            {"idProperty": "firstname", "id": "Ada", "properties": {}}
        ]});
        let (status, _, b) = post(&f, UPSERT, &body).await;
        assert_eq!(status, 400);
        assert_eq!(
            b["message"],
            format!(
                "Unable to perform update/upsert by non-unique 0-1 property firstname in portal ID {HUB_ID}"
            )
        );

        let body = json!({"inputs": [
            by_email("a@example.com", json!({})), by_email("A@example.com", json!({}))
        ]});
        let (status, _, b) = post(&f, UPSERT, &body).await;
        assert_eq!(status, 400);
        assert!(b["message"].as_str().unwrap().starts_with("Duplicate IDs"));

        let r = client()
            .post(format!("{}{UPSERT}", f.base_url()))
            .bearer_auth(DEFAULT_TOKEN)
            .header("content-type", "application/json")
            .body("{\"inputs\": [")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400);
        let b: Value = r.json().await.unwrap();
        assert!(b["message"]
            .as_str()
            .unwrap()
            .starts_with("Invalid input JSON on line 1"));
        assert!(f.contacts().is_empty());
    }

    #[tokio::test]
    async fn burst_limit_headers_and_429() {
        let config = HubSpotFakeConfig {
            burst_max: 5,
            burst_window: Duration::from_secs(60),
            daily_max: 7,
            ..HubSpotFakeConfig::default()
        };
        let f = HubSpotFake::start(config).await.unwrap();
        let body = json!({"inputs": []});
        let mut seen = Vec::new();
        for _ in 0..6 {
            let (status, headers, b) = post(&f, UPSERT, &body).await;
            seen.push((
                status,
                headers["x-hubspot-ratelimit-remaining"]
                    .to_str()
                    .unwrap()
                    .to_string(),
                b,
            ));
        }
        let remaining: Vec<&str> = seen.iter().map(|s| s.1.as_str()).collect();
        assert_eq!(remaining, ["4", "3", "2", "1", "0", "0"]);
        assert!(seen[..5].iter().all(|s| s.0 == 200));
        assert_eq!(seen[5].0, 429);
        assert_eq!(seen[5].2["policyName"], "TEN_SECONDLY_ROLLING");
        assert_eq!(seen[5].2["errorType"], "RATE_LIMIT");
        assert_eq!(
            seen[5].2["message"],
            "You have reached your ten_secondly_rolling limit."
        );
        assert_eq!(f.max_calls_in_window(), 6);
        assert_eq!(f.daily_used(), 5);

        f.set_daily_used(7);
        let (status, headers, b) = post(&f, UPSERT, &body).await;
        assert_eq!(status, 429);
        assert_eq!(b["policyName"], "DAILY");
        assert_eq!(headers["x-hubspot-ratelimit-daily-remaining"], "0");
        assert_eq!(headers["x-hubspot-ratelimit-daily"], "7");
        assert_eq!(
            headers["x-hubspot-ratelimit-interval-milliseconds"],
            "60000"
        );
    }

    #[tokio::test]
    async fn injected_faults() {
        let f = fake().await;
        let body = json!({"inputs": [by_email("x@example.com", json!({}))]});
        f.inject(
            Fault::TenSecondlyRolling {
                retry_after_secs: Some(3),
            },
            1,
        );
        f.inject(Fault::Locked423, 1);
        f.inject(Fault::Unavailable, 1);
        f.inject(Fault::Unauthorized401, 1);
        f.inject_after(1, Fault::CommittedThenFailed, 1);
        let (s1, h1, b1) = post(&f, UPSERT, &body).await;
        assert_eq!(
            (s1, b1["policyName"].as_str()),
            (429, Some("TEN_SECONDLY_ROLLING"))
        );
        assert_eq!(h1["retry-after"], "3");
        let (s2, _, b2) = post(&f, UPSERT, &body).await;
        assert_eq!((s2, b2["category"].as_str()), (423, Some("LOCKED")));
        let (s3, h3, _) = post(&f, UPSERT, &body).await;
        assert_eq!(s3, 503);
        assert!(h3.get("x-hubspot-ratelimit-max").is_none());
        let (s4, _, _) = post(&f, UPSERT, &body).await;
        assert_eq!(s4, 401);
        assert!(f.contacts().is_empty());
        let (s5, _, _) = post(&f, UPSERT, &body).await;
        assert_eq!(s5, 200);
        let other = json!({"inputs": [by_email("y@example.com", json!({}))]});
        let (s6, _, _) = post(&f, UPSERT, &other).await;
        assert_eq!(s6, 500);
        assert!(f.contact_by_email("y@example.com").is_some(), "written");
        let statuses: Vec<u16> = f.requests().iter().map(|r| r.status).collect();
        assert_eq!(statuses, [429, 423, 503, 401, 200, 500]);
    }

    #[tokio::test]
    async fn properties_endpoint() {
        let f = fake().await;
        f.add_property(PropertySpec::enumeration(
            "lead_source",
            &["Azure", "AppSource"],
        ));
        let (status, b) = get(&f, "/crm/v3/properties/contacts").await;
        assert_eq!(status, 200);
        let results = b["results"].as_array().unwrap();
        let named = |n: &str| results.iter().find(|p| p["name"] == n).cloned();
        let key = named("leadsync_key").unwrap();
        assert_eq!(key["hasUniqueValue"], true);
        assert_eq!(key["hubspotDefined"], false);
        let status_prop = named("hs_lead_status").unwrap();
        assert_eq!(status_prop["type"], "enumeration");
        assert_eq!(status_prop["options"][2]["value"], "IN_PROGRESS");
        assert_eq!(status_prop["options"][2]["label"], "In Progress");
        assert_eq!(named("message").unwrap()["fieldType"], "textarea");
        assert!(named("description").is_none());

        let (status, b) = get(&f, "/crm/v3/properties/contacts/email").await;
        assert_eq!(status, 200);
        assert_eq!(b["name"], "email");
        assert_eq!(b["hubspotDefined"], true);
        let (status, b) = get(&f, "/crm/v3/properties/contacts/nope").await;
        assert_eq!(status, 404);
        assert_eq!(b["category"], "OBJECT_NOT_FOUND");

        f.remove_property("lead_source");
        let (status, _) = get(&f, "/crm/v3/properties/contacts/lead_source").await;
        assert_eq!(status, 404);
    }

    #[tokio::test]
    async fn value_types_and_read_back() {
        let f = fake().await;
        f.add_property(PropertySpec::number("seats"));
        f.add_property(PropertySpec::boolean("consent"));
        f.add_property(PropertySpec::date("signup_date"));
        let body = json!({"inputs": [by_email("t@example.com", json!({
            "seats": "many", "consent": "maybe", "signup_date": "1572480000001",
            "hs_object_id": "5"
        }))]});
        let (status, _, b) = post(&f, UPSERT, &body).await;
        assert_eq!(status, 400);
        let mut codes: Vec<&str> = b["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["code"].as_str().unwrap())
            .collect();
        codes.sort();
        assert_eq!(
            codes,
            [
                "INVALID_BOOLEAN",
                "INVALID_DATE",
                "INVALID_LONG",
                "READ_ONLY_VALUE"
            ]
        );

        let body = json!({"inputs": [by_email("t@example.com", json!({
            "seats": 12, "consent": true, "signup_date": "2024-05-01", "firstname": "T"
        }))]});
        let (status, _, _) = post(&f, UPSERT, &body).await;
        assert_eq!(status, 200);
        let (status, b) = get(
            &f,
            "/crm/v3/objects/contacts/T%40example.com?idProperty=email&properties=seats,consent",
        )
        .await;
        assert_eq!(status, 200, "{b}");
        assert_eq!(b["properties"]["seats"], "12");
        assert_eq!(b["properties"]["consent"], "true");
        // Clearing with an empty string.
        let body = json!({"inputs": [by_email("t@example.com", json!({"firstname": ""}))]});
        post(&f, UPSERT, &body).await;
        assert_eq!(
            f.contact_by_email("t@example.com")
                .unwrap()
                .get_str("firstname"),
            None
        );
    }
}
