//! A stateful fake of the Salesforce REST API (`spec/crm-apis.md` §2, checklist §2.9), for
//! the Salesforce connector's tests and benchmarks.
//!
//! It owns an in-memory Lead table and answers like an org would:
//!
//! - `POST /services/oauth2/token`: the client-credentials grant (client id + secret) and the
//!   JWT bearer grant (an RS256 assertion verified with the configured public key or
//!   certificate: `iss` = client id, `sub` = username, `aud`, `exp` at most 3 minutes ahead).
//!   The answer has `access_token`, `instance_url` (this fake), `id`, `token_type`,
//!   `issued_at`, `signature`, `scope`, and no `expires_in`, like Salesforce.
//! - `GET  /services/data/vXX.X/sobjects/Lead/describe`: field metadata (`createable`,
//!   `updateable`, `nillable`, `defaultedOnCreate`, `externalId`, `length`, `type`,
//!   `picklistValues`, `restrictedPicklist`), extensible with [`SalesforceFake::add_field`].
//! - `POST /services/data/vXX.X/sobjects/Lead/`: create, 201 `{id,success,errors}`.
//! - `PATCH /services/data/vXX.X/sobjects/Lead/<ExtField>/<value>`: upsert; 201 created,
//!   200 `created:false` (v46.0+) or 204 (older) updated, 300 on several matches, 404
//!   `NOT_FOUND` for an unknown field.
//! - `POST /services/data/vXX.X/composite/sobjects` and
//!   `PATCH /services/data/vXX.X/composite/sobjects/Lead/<ExtField>`: collections (200 records
//!   at most, `allOrNone`), 200 with one result per record, errors with `statusCode`.
//! - `GET /services/data/vXX.X/sobjects/Lead/<Id>`: read one record back.
//!
//! Validation: unknown fields (whole request, `INVALID_FIELD`), `LastName` and `Company` and
//! any other required field (`REQUIRED_FIELD_MISSING`), the §2.6 lengths (`STRING_TOO_LONG`),
//! e-mail format (`INVALID_EMAIL_ADDRESS`; non-ASCII addresses only with
//! [`SalesforceFake::set_eai`], as with the org setting), restricted picklists, booleans.
//! Every data response carries `Sforce-Limit-Info: api-usage=N/M`; past the quota every call
//! gets 403 `REQUEST_LIMIT_EXCEEDED`. Tokens can be expired at will (401
//! `INVALID_SESSION_ID`), whole requests can be made to fail ([`Fault`]), single records can
//! be locked (`UNABLE_TO_LOCK_ROW`), a duplicate rule can be switched on
//! (`DUPLICATES_DETECTED`), and a latency can be added to every request. Requests are
//! counted with their arrival time, and the stored records are readable.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The external-ID field the fake's Lead has unless configured otherwise.
pub const DEFAULT_EXTERNAL_ID_FIELD: &str = "Leadsync_Key__c";

/// How the fake is set up at start. Everything else can be changed while it runs.
#[derive(Debug, Clone)]
pub struct SalesforceFakeConfig {
    /// The connected app's consumer key (`client_id`, and `iss` of a JWT).
    pub client_id: String,
    /// The client-credentials secret.
    pub client_secret: String,
    /// The pre-authorised user of the JWT bearer grant (`sub`).
    pub jwt_username: String,
    /// Accepted `aud` values of a JWT.
    pub jwt_audiences: Vec<String>,
    /// The certificate or public key (PEM) uploaded to the connected app; `None` refuses
    /// every JWT.
    pub jwt_public_key_pem: Option<String>,
    /// Daily API request allocation (`Sforce-Limit-Info` max).
    pub api_limit: u64,
    /// Custom text fields flagged External ID (and Unique) on Lead.
    pub external_id_fields: Vec<String>,
}

impl Default for SalesforceFakeConfig {
    fn default() -> Self {
        SalesforceFakeConfig {
            client_id: "fake-consumer-key".into(),
            client_secret: "fake-consumer-secret".into(),
            jwt_username: "integration@example.com".into(),
            jwt_audiences: vec![
                "https://login.salesforce.com".into(),
                "https://test.salesforce.com".into(),
            ],
            jwt_public_key_pem: None,
            api_limit: 15_000,
            external_id_fields: vec![DEFAULT_EXTERNAL_ID_FIELD.into()],
        }
    }
}

/// A whole-request failure to inject into the next data requests (not the token endpoint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// 429 with `Retry-After: <secs>` (not a documented Salesforce answer, but proxies send it).
    TooManyRequests { retry_after_secs: u64 },
    /// 503 `SERVER_UNAVAILABLE`.
    Unavailable,
    /// 500 `UNKNOWN_EXCEPTION`.
    ServerError,
    /// 401 `INVALID_SESSION_ID`, and every token issued so far expires.
    SessionExpired,
    /// 403 `REQUEST_LIMIT_EXCEEDED`, the daily allocation (`TotalRequests Limit exceeded.`).
    RequestLimitExceeded,
    /// 403 `REQUEST_LIMIT_EXCEEDED`, too many long-running requests at once
    /// (`ConcurrentPerOrgLongTxn Limit exceeded.`); the daily quota is not spent.
    ConcurrentRequestLimit,
    /// The request is carried out (records written) and then answered 500
    /// `UNKNOWN_EXCEPTION`: the ambiguous case a client must retry idempotently.
    CommittedThenFailed,
}

/// One Lead field as `describe` reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldSpec {
    pub name: String,
    pub label: String,
    /// `id`, `string`, `email`, `phone`, `url`, `textarea`, `picklist`, `boolean`, `datetime`.
    pub field_type: String,
    pub length: usize,
    pub createable: bool,
    pub updateable: bool,
    pub nillable: bool,
    pub defaulted_on_create: bool,
    pub external_id: bool,
    pub unique: bool,
    pub case_sensitive: bool,
    pub picklist_values: Vec<String>,
    pub restricted_picklist: bool,
}

impl FieldSpec {
    /// An optional, createable and updateable text field.
    pub fn text(name: &str, label: &str, length: usize) -> FieldSpec {
        FieldSpec {
            name: name.into(),
            label: label.into(),
            field_type: "string".into(),
            length,
            createable: true,
            updateable: true,
            nillable: true,
            defaulted_on_create: false,
            external_id: false,
            unique: false,
            case_sensitive: false,
            picklist_values: Vec::new(),
            restricted_picklist: false,
        }
    }
    fn typed(mut self, t: &str) -> Self {
        self.field_type = t.into();
        self
    }
    /// Required on create (nillable false, no default).
    pub fn required(mut self) -> Self {
        self.nillable = false;
        self
    }
    fn defaulted(mut self) -> Self {
        self.nillable = false;
        self.defaulted_on_create = true;
        self
    }
    /// A picklist with these values; `restricted` refuses any other value.
    pub fn picklist(name: &str, label: &str, values: &[&str], restricted: bool) -> FieldSpec {
        let mut f = FieldSpec::text(name, label, 255).typed("picklist");
        f.picklist_values = values.iter().map(|v| v.to_string()).collect();
        f.restricted_picklist = restricted;
        f
    }
    /// A checkbox (never null, defaults to false).
    pub fn boolean(name: &str, label: &str) -> FieldSpec {
        FieldSpec::text(name, label, 0).typed("boolean").defaulted()
    }
    /// A unique, case-insensitive External ID text field.
    pub fn external_id(name: &str, length: usize) -> FieldSpec {
        let mut f = FieldSpec::text(name, name, length);
        f.external_id = true;
        f.unique = true;
        f
    }

    fn describe(&self) -> Value {
        json!({
            "name": self.name,
            "label": self.label,
            "type": self.field_type,
            "length": self.length,
            "createable": self.createable,
            "updateable": self.updateable,
            "nillable": self.nillable,
            "defaultedOnCreate": self.defaulted_on_create,
            "externalId": self.external_id,
            "unique": self.unique,
            "caseSensitive": self.case_sensitive,
            "restrictedPicklist": self.restricted_picklist,
            "picklistValues": self.picklist_values.iter().map(|v| json!({
                "value": v, "label": v, "active": true, "defaultValue": false
            })).collect::<Vec<_>>(),
        })
    }
}

/// The standard Lead fields (spec §2.6 lengths) plus the configured external-ID fields.
fn lead_fields(external_ids: &[String]) -> Vec<FieldSpec> {
    let mut id = FieldSpec::text("Id", "Lead ID", 18).typed("id");
    id.createable = false;
    id.updateable = false;
    id.nillable = false;
    id.defaulted_on_create = true;
    let mut v = vec![
        id,
        FieldSpec::text("FirstName", "First Name", 40),
        FieldSpec::text("LastName", "Last Name", 80).required(),
        FieldSpec::text("MiddleName", "Middle Name", 40),
        FieldSpec::text("Suffix", "Suffix", 40),
        FieldSpec::text("Title", "Title", 128),
        FieldSpec::text("Company", "Company", 255).required(),
        FieldSpec::text("Email", "Email", 80).typed("email"),
        FieldSpec::text("Phone", "Phone", 40).typed("phone"),
        FieldSpec::text("MobilePhone", "Mobile Phone", 40).typed("phone"),
        FieldSpec::text("Fax", "Fax", 40).typed("phone"),
        FieldSpec::text("Website", "Website", 255).typed("url"),
        FieldSpec::text("Street", "Street", 255).typed("textarea"),
        FieldSpec::text("City", "City", 40),
        FieldSpec::text("State", "State/Province", 80),
        FieldSpec::text("PostalCode", "Zip/Postal Code", 20),
        FieldSpec::text("Country", "Country", 80),
        FieldSpec::text("Description", "Description", 32000).typed("textarea"),
        FieldSpec::picklist(
            "Industry",
            "Industry",
            &["Agriculture", "Banking", "Technology", "Other"],
            false,
        ),
        FieldSpec::picklist(
            "LeadSource",
            "Lead Source",
            &[
                "Web",
                "Phone Inquiry",
                "Partner Referral",
                "Purchased List",
                "Other",
            ],
            false,
        ),
        FieldSpec::picklist(
            "Status",
            "Status",
            &[
                "Open - Not Contacted",
                "Working - Contacted",
                "Closed - Converted",
                "Closed - Not Converted",
            ],
            false,
        )
        .defaulted(),
        FieldSpec::boolean("HasOptedOutOfEmail", "Email Opt Out"),
        FieldSpec::boolean("DoNotCall", "Do Not Call"),
    ];
    for name in external_ids {
        v.push(FieldSpec::external_id(name, 255));
    }
    v
}

/// One stored Lead.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredLead {
    pub id: String,
    /// Every field that was ever set, by API name (defaults applied on create).
    pub fields: Map<String, Value>,
    /// How many times it was updated after creation.
    pub updates: u32,
}

impl StoredLead {
    pub fn get_str(&self, field: &str) -> Option<&str> {
        self.fields.get(field).and_then(Value::as_str)
    }
}

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct RequestInfo {
    pub method: String,
    /// Path only (no query string).
    pub path: String,
    pub at: Instant,
    /// When the answer was ready (after any latency): a throttle's `Retry-After` counts
    /// from here.
    pub answered: Instant,
    pub status: u16,
    /// Records in the body (1 for a single-record call, 0 for token/describe).
    pub records: usize,
}

struct Inner {
    config: SalesforceFakeConfig,
    base_url: String,
    state: Mutex<FakeState>,
}

struct FakeState {
    fields: Vec<FieldSpec>,
    records: Vec<StoredLead>,
    next_id: u64,
    /// Token -> issued at.
    tokens: HashMap<String, Instant>,
    token_lifetime: Option<Duration>,
    token_counter: u64,
    token_requests: u64,
    /// One entry per coming data request: `None` lets it through.
    faults: crate::FaultQueue<Fault>,
    /// External-ID value (lower-cased) -> how many more times it is locked.
    locked: HashMap<String, u32>,
    duplicate_rule: bool,
    eai: bool,
    latency: Duration,
    /// `latency` is the whole round trip, the fake's own work inside it (`set_round_trip`).
    work_inside_latency: bool,
    api_used: u64,
    api_max: u64,
    requests: Vec<RequestInfo>,
    /// Records by lower-cased external-ID value, to narrow an upsert's lookup as the real
    /// org's index does (a scan of every record per request made the fake, not the client,
    /// the benchmarks' bottleneck). Extended as records are added; dropped when a record's
    /// external ID may have changed or records were taken back.
    ext_index: Option<ExtIndex>,
}

/// See [`FakeState::ext_index`]: candidates only, each checked with `matches_ext`.
struct ExtIndex {
    field: String,
    indexed: usize,
    by_value: HashMap<String, Vec<usize>>,
}

impl FakeState {
    /// The index over `field`, brought up to date with the records.
    fn ext_index(&mut self, field: &str) -> &HashMap<String, Vec<usize>> {
        let stale = self
            .ext_index
            .as_ref()
            .is_none_or(|x| x.field != field || x.indexed > self.records.len());
        if stale {
            self.ext_index = Some(ExtIndex {
                field: field.to_string(),
                indexed: 0,
                by_value: HashMap::new(),
            });
        }
        let Some(index) = self.ext_index.as_mut() else {
            unreachable!("set above")
        };
        for (i, r) in self.records.iter().enumerate().skip(index.indexed) {
            if let Some(v) = field_str(&r.fields, field) {
                index.by_value.entry(v.to_lowercase()).or_default().push(i);
            }
        }
        index.indexed = self.records.len();
        &index.by_value
    }
}

/// A running fake Salesforce org. Dropping it stops the server.
pub struct SalesforceFake {
    inner: Arc<Inner>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for SalesforceFake {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A Salesforce error for one record: `statusCode`/`errorCode`, message, fields.
#[derive(Debug, Clone)]
struct SfError {
    code: String,
    message: String,
    fields: Vec<String>,
    /// Extra members of the single-resource error object (`duplicateResult`).
    extra: Option<Box<(String, Value)>>,
}

impl SfError {
    fn new(code: &str, message: impl Into<String>, fields: &[&str]) -> Self {
        SfError {
            code: code.into(),
            message: message.into(),
            fields: fields.iter().map(|f| f.to_string()).collect(),
            extra: None,
        }
    }
    /// Single-resource shape: `errorCode`.
    fn rest(&self) -> Value {
        let mut o = json!({"message": self.message, "errorCode": self.code, "fields": self.fields});
        if let (Some(extra), Some(m)) = (&self.extra, o.as_object_mut()) {
            m.insert(extra.0.clone(), extra.1.clone());
        }
        o
    }
    /// Collections shape: `statusCode`.
    fn collection(&self) -> Value {
        json!({"statusCode": self.code, "message": self.message, "fields": self.fields})
    }
}

impl SalesforceFake {
    /// Start on 127.0.0.1 on a free port.
    pub async fn start(config: SalesforceFakeConfig) -> std::io::Result<SalesforceFake> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            base_url: format!("http://{addr}"),
            state: Mutex::new(FakeState {
                fields: lead_fields(&config.external_id_fields),
                records: Vec::new(),
                next_id: 1,
                tokens: HashMap::new(),
                token_lifetime: None,
                token_counter: 0,
                token_requests: 0,
                faults: crate::FaultQueue::default(),
                locked: HashMap::new(),
                duplicate_rule: false,
                eai: false,
                latency: Duration::ZERO,
                work_inside_latency: false,
                api_used: 0,
                api_max: config.api_limit,
                requests: Vec::new(),
                ext_index: None,
            }),
            config,
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&inner));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(SalesforceFake { inner, server })
    }

    /// `http://127.0.0.1:<port>`: the My Domain host and the `instance_url` at once.
    pub fn base_url(&self) -> &str {
        &self.inner.base_url
    }

    pub fn config(&self) -> &SalesforceFakeConfig {
        &self.inner.config
    }

    fn state(&self) -> MutexGuard<'_, FakeState> {
        lock(&self.inner)
    }

    /// Fail the coming `times` data requests with `fault` (after entries already queued).
    pub fn inject(&self, fault: Fault, times: usize) {
        self.state().faults.inject(fault, times);
    }

    /// Let the next `pass` data requests through (after any faults already queued), then
    /// fail `times` with `fault`: e.g. a session that expires in the middle of a run.
    pub fn inject_after(&self, pass: usize, fault: Fault, times: usize) {
        self.state().faults.inject_after(pass, fault, times);
    }

    /// Expire every token issued so far: the next data request with one gets 401
    /// `INVALID_SESSION_ID`.
    pub fn expire_tokens(&self) {
        self.state().tokens.clear();
    }

    /// Tokens stop working this long after they were issued (`None`: never).
    pub fn set_token_lifetime(&self, lifetime: Option<Duration>) {
        self.state().token_lifetime = lifetime;
    }

    /// Wait this long before answering any request.
    pub fn set_latency(&self, latency: Duration) {
        let mut st = self.state();
        st.latency = latency;
        st.work_inside_latency = false;
    }

    /// Answer every request `round_trip` after it arrived, the fake's own work done inside
    /// that time (as a CRM's is inside its round trip): a benchmark's limit of batch ÷
    /// round trip then measures the client alone. Work that takes longer answers late.
    pub fn set_round_trip(&self, round_trip: Duration) {
        let mut st = self.state();
        st.latency = round_trip;
        st.work_inside_latency = true;
    }

    /// Set the API usage counters (`Sforce-Limit-Info`); at `used >= max` calls get 403.
    pub fn set_api_usage(&self, used: u64, max: u64) {
        let mut s = self.state();
        s.api_used = used;
        s.api_max = max;
    }

    /// `(used, max)` API requests.
    pub fn api_usage(&self) -> (u64, u64) {
        let s = self.state();
        (s.api_used, s.api_max)
    }

    /// The record whose external-ID value is `value` answers `UNABLE_TO_LOCK_ROW` the next
    /// `times` times it is written.
    pub fn lock_row(&self, value: &str, times: u32) {
        self.state().locked.insert(value.to_lowercase(), times);
    }

    /// A Duplicate Rule that blocks creating a Lead whose e-mail another Lead has.
    pub fn set_duplicate_rule(&self, on: bool) {
        self.state().duplicate_rule = on;
    }

    /// Email Address Internationalization: accept non-ASCII e-mail addresses.
    pub fn set_eai(&self, on: bool) {
        self.state().eai = on;
    }

    /// Add (or replace, by name) a Lead field.
    pub fn add_field(&self, field: FieldSpec) {
        let mut s = self.state();
        s.fields.retain(|f| f.name != field.name);
        s.fields.push(field);
    }

    /// Store a record as is, bypassing validation and uniqueness (to seed the several-matches
    /// case). Returns its Id.
    pub fn insert_record(&self, fields: Map<String, Value>) -> String {
        let mut s = self.state();
        let id = s.new_id();
        s.records.push(StoredLead {
            id: id.clone(),
            fields,
            updates: 0,
        });
        id
    }

    /// Every stored Lead, in creation order.
    pub fn records(&self) -> Vec<StoredLead> {
        self.state().records.clone()
    }

    /// The Lead whose `field` equals `value` (case-insensitive), if exactly one has it.
    pub fn record_by_external_id(&self, field: &str, value: &str) -> Option<StoredLead> {
        let s = self.state();
        let found: Vec<&StoredLead> = s
            .records
            .iter()
            .filter(|r| matches_ext(r, field, value, false))
            .collect();
        (found.len() == 1).then(|| found[0].clone())
    }

    /// Every request received (token requests included), in arrival order.
    pub fn requests(&self) -> Vec<RequestInfo> {
        self.state().requests.clone()
    }

    /// Data requests received (everything but the token endpoint).
    pub fn data_request_count(&self) -> usize {
        self.state()
            .requests
            .iter()
            .filter(|r| !r.path.ends_with("/oauth2/token"))
            .count()
    }

    /// Token requests received, granted or not.
    pub fn token_request_count(&self) -> u64 {
        self.state().token_requests
    }

    /// Forget the request log.
    pub fn clear_requests(&self) {
        self.state().requests.clear();
    }
}

fn lock(inner: &Inner) -> MutexGuard<'_, FakeState> {
    // A test that panicked while holding the lock must not hide the state from others.
    inner.state.lock().unwrap_or_else(|p| p.into_inner())
}

impl FakeState {
    fn new_id(&mut self) -> String {
        let n = self.next_id;
        self.next_id += 1;
        format!("00Q{n:012}AAA")
    }
    fn field(&self, name: &str) -> Option<&FieldSpec> {
        self.fields
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case(name))
    }
    fn limit_header(&self) -> HeaderValue {
        HeaderValue::from_str(&format!("api-usage={}/{}", self.api_used, self.api_max))
            .unwrap_or(HeaderValue::from_static("api-usage=0/0"))
    }
}

fn matches_ext(r: &StoredLead, field: &str, value: &str, case_sensitive: bool) -> bool {
    r.fields.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case(field)
            && v.as_str().is_some_and(|s| {
                if case_sensitive {
                    s == value
                } else {
                    s.eq_ignore_ascii_case(value) || s.to_lowercase() == value.to_lowercase()
                }
            })
    })
}

fn json_response(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn rest_error(status: StatusCode, e: &SfError) -> Response {
    json_response(status, json!([e.rest()]))
}

async fn handle(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let at = Instant::now();
    let (latency, work_inside) = {
        let st = lock(&inner);
        (st.latency, st.work_inside_latency)
    };
    if !work_inside && !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let path = uri.path().to_string();
    let query = uri.query().unwrap_or("").to_string();
    let (response, records) = if path == "/services/oauth2/token" && method == Method::POST {
        (token(&inner, &body), 0)
    } else if let Some(rest) = path.strip_prefix("/services/data/") {
        data(&inner, &method, rest, &query, &headers, &body)
    } else {
        (
            rest_error(
                StatusCode::NOT_FOUND,
                &SfError::new("NOT_FOUND", "The requested resource does not exist", &[]),
            ),
            0,
        )
    };
    if work_inside {
        crate::sleep_until_precise(at + latency).await;
    }
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

fn token_error(status: StatusCode, error: &str, description: &str) -> Response {
    json_response(
        status,
        json!({"error": error, "error_description": description}),
    )
}

fn token(inner: &Inner, body: &[u8]) -> Response {
    let form: HashMap<String, String> = url_form(body);
    let cfg = &inner.config;
    lock(inner).token_requests += 1;
    let grant = form.get("grant_type").map(String::as_str).unwrap_or("");
    match grant {
        "client_credentials" => {
            if form.get("client_id") != Some(&cfg.client_id)
                || form.get("client_secret") != Some(&cfg.client_secret)
            {
                return token_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_client",
                    "invalid client credentials",
                );
            }
        }
        "urn:ietf:params:oauth:grant-type:jwt-bearer" => {
            let Some(assertion) = form.get("assertion") else {
                return token_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "assertion missing",
                );
            };
            if let Err(description) = verify_jwt(cfg, assertion) {
                return token_error(StatusCode::BAD_REQUEST, "invalid_grant", &description);
            }
        }
        _ => {
            return token_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "grant type not supported",
            )
        }
    }
    let mut s = lock(inner);
    s.token_counter += 1;
    let token = format!(
        "00DFAKE0000000001!AR{:08}.{:016x}",
        s.token_counter,
        rand::random::<u64>()
    );
    s.tokens.insert(token.clone(), Instant::now());
    json_response(
        StatusCode::OK,
        json!({
            "access_token": token,
            "signature": "ZmFrZS1zaWduYXR1cmU=",
            "scope": "api",
            "instance_url": inner.base_url,
            "id": format!("{}/id/00DFAKE0000000001/005FAKE0000000001", inner.base_url),
            "token_type": "Bearer",
            "issued_at": chrono::Utc::now().timestamp_millis().to_string(),
            "token_format": "opaque",
        }),
    )
}

/// Check a JWT bearer assertion the way Salesforce describes: RS256 only, signed by the key
/// of the uploaded certificate, `iss` the consumer key, `sub` a pre-authorised user, `aud` a
/// login host, `exp` in the future and no more than 3 minutes ahead.
fn verify_jwt(cfg: &SalesforceFakeConfig, assertion: &str) -> Result<(), String> {
    use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
    let header = decode_header(assertion).map_err(|_| "invalid assertion".to_string())?;
    if header.alg != Algorithm::RS256 {
        return Err("invalid assertion: algorithm must be RS256".into());
    }
    let pem = cfg
        .jwt_public_key_pem
        .as_deref()
        .ok_or_else(|| "no certificate uploaded for this connected app".to_string())?;
    let key = DecodingKey::from_rsa_pem(pem.as_bytes())
        .map_err(|e| format!("fake misconfigured: bad public key: {e}"))?;
    let mut v = Validation::new(Algorithm::RS256);
    v.set_audience(&cfg.jwt_audiences);
    v.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
    v.leeway = 0;
    let data = decode::<Map<String, Value>>(assertion, &key, &v).map_err(|e| {
        use jsonwebtoken::errors::ErrorKind;
        match e.kind() {
            ErrorKind::InvalidAudience => "audience is invalid".to_string(),
            ErrorKind::ExpiredSignature => "expired authorization code".to_string(),
            ErrorKind::InvalidSignature => "invalid assertion: signature".to_string(),
            _ => format!("invalid assertion: {e}"),
        }
    })?;
    let claims = data.claims;
    if claims.get("iss").and_then(Value::as_str) != Some(cfg.client_id.as_str()) {
        return Err("invalid client identifier".into());
    }
    let sub = claims
        .get("sub")
        .or_else(|| claims.get("prn"))
        .and_then(Value::as_str);
    if sub != Some(cfg.jwt_username.as_str()) {
        return Err("user hasn't approved this consumer".into());
    }
    let exp = claims.get("exp").and_then(Value::as_i64).unwrap_or(0);
    if exp > chrono::Utc::now().timestamp() + 180 {
        return Err("invalid assertion: exp more than 3 minutes ahead".into());
    }
    Ok(())
}

fn url_form(body: &[u8]) -> HashMap<String, String> {
    let text = String::from_utf8_lossy(body);
    text.split('&')
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

/// Everything under `/services/data/`: auth, quota, injected faults, then the resource.
fn data(
    inner: &Inner,
    method: &Method,
    rest: &str,
    query: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> (Response, usize) {
    // A body is read before the lock is taken, so that requests in flight together parse
    // in parallel, as a server's would.
    let parsed = matches!(*method, Method::POST | Method::PATCH)
        .then(|| serde_json::from_slice::<Value>(body).ok())
        .flatten();
    let mut s = lock(inner);
    let mut resp = data_locked(&mut s, method, rest, query, headers, body, parsed);
    resp.0
        .headers_mut()
        .insert("Sforce-Limit-Info", s.limit_header());
    resp
}

fn data_locked(
    s: &mut FakeState,
    method: &Method,
    rest: &str,
    _query: &str,
    headers: &HeaderMap,
    body: &[u8],
    mut parsed: Option<Value>,
) -> (Response, usize) {
    let session_expired = || {
        rest_error(
            StatusCode::UNAUTHORIZED,
            &SfError::new("INVALID_SESSION_ID", "Session expired or invalid", &[]),
        )
    };
    if let Some(fault) = s.faults.next_fault() {
        let r = match fault {
            Fault::TooManyRequests { retry_after_secs } => {
                let mut r = rest_error(
                    StatusCode::TOO_MANY_REQUESTS,
                    &SfError::new("REQUEST_LIMIT_EXCEEDED", "Too many requests", &[]),
                );
                if let Ok(v) = HeaderValue::from_str(&retry_after_secs.to_string()) {
                    r.headers_mut().insert("Retry-After", v);
                }
                r
            }
            Fault::Unavailable => rest_error(
                StatusCode::SERVICE_UNAVAILABLE,
                &SfError::new("SERVER_UNAVAILABLE", "Server temporarily unavailable", &[]),
            ),
            Fault::ServerError => rest_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &SfError::new(
                    "UNKNOWN_EXCEPTION",
                    "An unexpected error occurred. Please include this ErrorId if you contact support: 0-0 (-0)",
                    &[],
                ),
            ),
            Fault::SessionExpired => {
                s.tokens.clear();
                session_expired()
            }
            Fault::RequestLimitExceeded => rest_error(
                StatusCode::FORBIDDEN,
                &SfError::new("REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.", &[]),
            ),
            Fault::ConcurrentRequestLimit => rest_error(
                StatusCode::FORBIDDEN,
                &SfError::new(
                    "REQUEST_LIMIT_EXCEEDED",
                    "ConcurrentPerOrgLongTxn Limit exceeded.",
                    &[],
                ),
            ),
            Fault::CommittedThenFailed => {
                // Carry the request out with no other fault in the way, then fail it.
                let queued = std::mem::take(&mut s.faults);
                let (_, records) = data_locked(s, method, rest, _query, headers, body, parsed);
                s.faults = queued;
                let r = rest_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &SfError::new("UNKNOWN_EXCEPTION", "An unexpected error occurred.", &[]),
                );
                return (r, records);
            }
        };
        return (r, 0);
    }
    // Bearer token check.
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let valid = match token.and_then(|t| s.tokens.get(t)) {
        None => false,
        Some(issued) => s.token_lifetime.is_none_or(|l| issued.elapsed() < l),
    };
    if !valid {
        return (session_expired(), 0);
    }
    if s.api_used >= s.api_max {
        return (
            rest_error(
                StatusCode::FORBIDDEN,
                &SfError::new(
                    "REQUEST_LIMIT_EXCEEDED",
                    "TotalRequests Limit exceeded.",
                    &[],
                ),
            ),
            0,
        );
    }
    s.api_used += 1;

    // rest = "vXX.X/..."
    let (version, resource) = rest.split_once('/').unwrap_or((rest, ""));
    let Some(version_num) = version
        .strip_prefix('v')
        .and_then(|v| v.parse::<f64>().ok())
    else {
        return (not_found(), 0);
    };
    let segments: Vec<String> = resource
        .trim_end_matches('/')
        .split('/')
        .map(|p| pct_decode(p).unwrap_or_else(|| p.to_string()))
        .collect();
    let seg: Vec<&str> = segments.iter().map(String::as_str).collect();
    let mut parsed = || match parsed.take() {
        Some(v) => Ok(v),
        None => serde_json::from_slice::<Value>(body),
    };
    match (method.clone(), seg.as_slice()) {
        (Method::GET, ["sobjects", "Lead", "describe"]) => (describe(s), 0),
        (Method::GET, ["sobjects", "Lead", id]) => match s.records.iter().find(|r| r.id == *id) {
            Some(r) => {
                let mut o = r.fields.clone();
                o.insert("Id".into(), json!(r.id));
                o.insert(
                        "attributes".into(),
                        json!({"type": "Lead", "url": format!("/services/data/{version}/sobjects/Lead/{}", r.id)}),
                    );
                (json_response(StatusCode::OK, Value::Object(o)), 0)
            }
            None => (not_found(), 0),
        },
        (Method::POST, ["sobjects", "Lead"]) => {
            let Ok(Value::Object(rec)) = parsed() else {
                return (malformed(), 0);
            };
            if let Err(e) = unknown_fields(s, &rec) {
                return (rest_error(StatusCode::BAD_REQUEST, &e), 1);
            }
            if rec.contains_key("Id") {
                return (
                    rest_error(
                        StatusCode::BAD_REQUEST,
                        &SfError::new(
                            "INVALID_FIELD",
                            "The Id field should not be specified in the sobject data.",
                            &[],
                        ),
                    ),
                    1,
                );
            }
            match write(s, None, rec, None) {
                Ok((id, _)) => {
                    let mut r = json_response(
                        StatusCode::CREATED,
                        json!({"id": id, "success": true, "errors": []}),
                    );
                    if let Ok(v) = HeaderValue::from_str(&format!(
                        "/services/data/{version}/sobjects/Lead/{id}"
                    )) {
                        r.headers_mut().insert("Location", v);
                    }
                    (r, 1)
                }
                Err(e) => (rest_error(StatusCode::BAD_REQUEST, &e), 1),
            }
        }
        (Method::PATCH, ["sobjects", "Lead", field, value]) => {
            let Ok(Value::Object(rec)) = parsed() else {
                return (malformed(), 1);
            };
            (single_upsert(s, version, version_num, field, value, rec), 1)
        }
        (Method::PATCH, ["composite", "sobjects", "Lead", field]) => {
            let Ok(Value::Object(req)) = parsed() else {
                return (malformed(), 0);
            };
            collection(s, Some(field), req)
        }
        (Method::POST, ["composite", "sobjects"]) => {
            let Ok(Value::Object(req)) = parsed() else {
                return (malformed(), 0);
            };
            collection(s, None, req)
        }
        _ => (not_found(), 0),
    }
}

fn not_found() -> Response {
    rest_error(
        StatusCode::NOT_FOUND,
        &SfError::new("NOT_FOUND", "The requested resource does not exist", &[]),
    )
}

fn malformed() -> Response {
    rest_error(
        StatusCode::BAD_REQUEST,
        &SfError::new(
            "JSON_PARSER_ERROR",
            "Unexpected character: was expecting a JSON object",
            &[],
        ),
    )
}

fn describe(s: &FakeState) -> Response {
    json_response(
        StatusCode::OK,
        json!({
            "name": "Lead",
            "label": "Lead",
            "createable": true,
            "updateable": true,
            "fields": s.fields.iter().map(FieldSpec::describe).collect::<Vec<_>>(),
        }),
    )
}

/// A field in the body that Lead does not have fails the whole request, as Salesforce's
/// deserialiser does.
fn unknown_fields(s: &FakeState, rec: &Map<String, Value>) -> Result<(), SfError> {
    for k in rec.keys() {
        if k == "attributes" {
            continue;
        }
        if s.field(k).is_none() {
            return Err(SfError::new(
                "INVALID_FIELD",
                format!("No such column '{k}' on sobject of type Lead"),
                &[],
            ));
        }
    }
    Ok(())
}

fn single_upsert(
    s: &mut FakeState,
    version: &str,
    version_num: f64,
    field: &str,
    value: &str,
    mut rec: Map<String, Value>,
) -> Response {
    let spec = match s.field(field) {
        Some(f) if f.external_id || f.name == "Id" => f.clone(),
        Some(f) => {
            return rest_error(
                StatusCode::BAD_REQUEST,
                &SfError::new(
                    "INVALID_FIELD",
                    format!(
                        "Field {} is not an External ID or indexed field for Lead",
                        f.name
                    ),
                    &[],
                ),
            )
        }
        None => return not_found(),
    };
    if let Err(e) = unknown_fields(s, &rec) {
        return rest_error(StatusCode::BAD_REQUEST, &e);
    }
    rec.remove("attributes");
    let matches: Vec<usize> = s
        .records
        .iter()
        .enumerate()
        .filter(|(_, r)| matches_ext(r, &spec.name, value, spec.case_sensitive))
        .map(|(i, _)| i)
        .collect();
    if matches.len() > 1 {
        let urls: Vec<String> = matches
            .iter()
            .map(|i| {
                format!(
                    "/services/data/{version}/sobjects/Lead/{}",
                    s.records[*i].id
                )
            })
            .collect();
        return json_response(StatusCode::MULTIPLE_CHOICES, json!(urls));
    }
    if let Some(e) = take_lock(s, value) {
        return rest_error(StatusCode::BAD_REQUEST, &e);
    }
    match write(s, matches.first().copied(), rec, Some((&spec.name, value))) {
        Ok((id, true)) => {
            let mut r = json_response(
                StatusCode::CREATED,
                json!({"id": id, "success": true, "errors": [], "created": true}),
            );
            if let Ok(v) =
                HeaderValue::from_str(&format!("/services/data/{version}/sobjects/Lead/{id}"))
            {
                r.headers_mut().insert("Location", v);
            }
            r
        }
        Ok((id, false)) => {
            if version_num >= 46.0 {
                json_response(
                    StatusCode::OK,
                    json!({"id": id, "success": true, "errors": [], "created": false}),
                )
            } else {
                StatusCode::NO_CONTENT.into_response()
            }
        }
        Err(e) => rest_error(StatusCode::BAD_REQUEST, &e),
    }
}

fn take_lock(s: &mut FakeState, value: &str) -> Option<SfError> {
    let key = value.to_lowercase();
    let left = s.locked.get_mut(&key)?;
    if *left == 0 {
        s.locked.remove(&key);
        return None;
    }
    *left -= 1;
    Some(SfError::new(
        "UNABLE_TO_LOCK_ROW",
        "unable to obtain exclusive access to this record or 1 records",
        &[],
    ))
}

/// Collections create (`ext_field` None) or upsert. Returns the response and record count.
fn collection(
    s: &mut FakeState,
    ext_field: Option<&str>,
    mut req: Map<String, Value>,
) -> (Response, usize) {
    let all_or_none = req
        .get("allOrNone")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let Some(Value::Array(records)) = req.remove("records") else {
        return (malformed(), 0);
    };
    let n = records.len();
    if n > 200 {
        return (
            rest_error(
                StatusCode::BAD_REQUEST,
                &SfError::new(
                    "EXCEEDED_ID_LIMIT",
                    "record limit reached. cannot submit more than 200 records into this call",
                    &[],
                ),
            ),
            n,
        );
    }
    let spec = match ext_field {
        None => None,
        Some(f) => match s.field(f) {
            Some(spec) if spec.external_id => Some(spec.clone()),
            Some(spec) => {
                return (
                    rest_error(
                        StatusCode::BAD_REQUEST,
                        &SfError::new(
                            "INVALID_FIELD",
                            format!(
                                "Field {} is not an External ID or indexed field for Lead",
                                spec.name
                            ),
                            &[],
                        ),
                    ),
                    n,
                )
            }
            None => return (not_found(), n),
        },
    };
    let mut recs = Vec::with_capacity(n);
    for r in records {
        let Value::Object(o) = r else {
            return (malformed(), n);
        };
        if let Err(e) = unknown_fields(s, &o) {
            return (rest_error(StatusCode::BAD_REQUEST, &e), n);
        }
        recs.push(o);
    }
    // Values of the external ID appearing more than once in this request.
    let mut seen: HashMap<String, usize> = HashMap::new();
    if let Some(spec) = &spec {
        for r in &recs {
            if let Some(v) = field_str(r, &spec.name) {
                *seen.entry(v.to_lowercase()).or_default() += 1;
            }
        }
    }
    let snapshot = all_or_none.then(|| (s.records.clone(), s.next_id, s.locked.clone()));
    // Existing records by lower-cased external ID, as before this request. Records created
    // by this request cannot match a later one: a value sent twice is refused above.
    let by_ext: HashMap<String, Vec<usize>> = match &spec {
        Some(spec) => {
            let index = s.ext_index(&spec.name);
            recs.iter()
                .filter_map(|r| field_str(r, &spec.name))
                .filter_map(|v| {
                    let key = v.to_lowercase();
                    index.get(&key).map(|hits| (key, hits.clone()))
                })
                .collect()
        }
        None => HashMap::new(),
    };
    let mut results: Vec<Result<(String, bool), SfError>> = Vec::with_capacity(n);
    for mut rec in recs {
        let ty = rec
            .get("attributes")
            .and_then(|a| a.get("type"))
            .and_then(Value::as_str)
            .map(str::to_string);
        rec.remove("attributes");
        let result = (|| {
            if ty.as_deref() != Some("Lead") {
                return Err(SfError::new(
                    "INVALID_TYPE",
                    "Must send a concrete entity type (attributes.type Lead).",
                    &[],
                ));
            }
            if rec.contains_key("Id") {
                return Err(SfError::new(
                    "INVALID_FIELD",
                    "The Id field should not be specified in the sobject data.",
                    &["Id"],
                ));
            }
            let Some(spec) = &spec else {
                return write(s, None, rec, None);
            };
            let Some(value) = field_str(&rec, &spec.name).map(str::to_string) else {
                return Err(SfError::new(
                    "MISSING_ARGUMENT",
                    format!("{} not specified", spec.name),
                    &[spec.name.as_str()],
                ));
            };
            if seen.get(&value.to_lowercase()).copied().unwrap_or(0) > 1 {
                return Err(SfError::new(
                    "DUPLICATE_EXTERNAL_ID",
                    format!("Duplicate external id specified: {value}"),
                    &[spec.name.as_str()],
                ));
            }
            let matches: Vec<usize> = by_ext
                .get(&value.to_lowercase())
                .into_iter()
                .flatten()
                .copied()
                .filter(|i| matches_ext(&s.records[*i], &spec.name, &value, spec.case_sensitive))
                .collect();
            if matches.len() > 1 {
                let ids: Vec<&str> = matches.iter().map(|i| s.records[*i].id.as_str()).collect();
                return Err(SfError::new(
                    "DUPLICATE_EXTERNAL_ID",
                    format!(
                        "{}: more than one record found for external id field: [{}]",
                        spec.name,
                        ids.join(", ")
                    ),
                    &[spec.name.as_str()],
                ));
            }
            if let Some(e) = take_lock(s, &value) {
                return Err(e);
            }
            rec.remove(&spec.name);
            write(s, matches.first().copied(), rec, Some((&spec.name, &value)))
        })();
        results.push(result);
    }
    if let Some(snapshot) = snapshot.filter(|_| results.iter().any(Result::is_err)) {
        s.records = snapshot.0;
        s.ext_index = None;
        s.next_id = snapshot.1;
        s.locked = snapshot.2;
        for r in results.iter_mut() {
            if r.is_ok() {
                *r = Err(SfError::new(
                    "ALL_OR_NONE_OPERATION_ROLLED_BACK",
                    "Record rolled back because not all records were valid and the request was using AllOrNone header",
                    &[],
                ));
            }
        }
    }
    let body: Vec<Value> = results
        .into_iter()
        .map(|r| match r {
            Ok((id, created)) => {
                if spec.is_some() {
                    json!({"id": id, "success": true, "errors": [], "created": created})
                } else {
                    json!({"id": id, "success": true, "errors": []})
                }
            }
            Err(e) => json!({"success": false, "errors": [e.collection()]}),
        })
        .collect();
    (json_response(StatusCode::OK, Value::Array(body)), n)
}

fn field_str<'a>(rec: &'a Map<String, Value>, field: &str) -> Option<&'a str> {
    rec.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(field))
        .and_then(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

/// Validate and store one record: a create when `existing` is `None`, else an update of that
/// record. `ext` sets the external ID on create. Returns (Id, created).
fn write(
    s: &mut FakeState,
    existing: Option<usize>,
    rec: Map<String, Value>,
    ext: Option<(&str, &str)>,
) -> Result<(String, bool), SfError> {
    let creating = existing.is_none();
    validate(s, &rec, creating)?;
    match existing {
        Some(i) => {
            // An update may carry an external ID of its own: index anew.
            s.ext_index = None;
            let r = &mut s.records[i];
            for (k, v) in rec {
                let name = canonical(&s.fields, &k);
                r.fields.insert(name, v);
            }
            r.updates += 1;
            Ok((r.id.clone(), false))
        }
        None => {
            if s.duplicate_rule {
                if let Some(email) = field_str(&rec, "Email") {
                    let dup = s.records.iter().find(|r| {
                        r.get_str("Email")
                            .is_some_and(|e| e.eq_ignore_ascii_case(email))
                    });
                    if let Some(d) = dup {
                        let msg = "You're creating a duplicate record. We recommend you use an existing record instead.";
                        let mut e = SfError::new("DUPLICATES_DETECTED", msg, &[]);
                        e.extra = Some(Box::new((
                            "duplicateResult".into(),
                            json!({"allowSave": false, "duplicateRule": "Standard_Lead_Duplicate_Rule",
                                   "duplicateRuleEntityType": "Lead", "errorMessage": msg,
                                   "matchResults": [{"entityType": "Lead", "errors": [], "matchEngine": "FuzzyMatchEngine",
                                     "matchRecords": [{"additionalInformation": [], "fieldDiffs": [], "matchConfidence": 100.0,
                                       "record": {"attributes": {"type": "Lead"}, "Id": d.id}}],
                                     "rule": "Standard_Lead_Match_Rule_v1_0", "size": 1, "success": true}]}),
                        )));
                        return Err(e);
                    }
                }
            }
            let id = s.new_id();
            let mut fields = Map::new();
            for f in &s.fields {
                if f.field_type == "boolean" {
                    fields.insert(f.name.clone(), json!(false));
                } else if f.name == "Status" {
                    fields.insert(f.name.clone(), json!("Open - Not Contacted"));
                }
            }
            for (k, v) in rec {
                fields.insert(canonical(&s.fields, &k), v);
            }
            if let Some((name, value)) = ext {
                fields.insert(canonical(&s.fields, name), json!(value));
            }
            s.records.push(StoredLead {
                id: id.clone(),
                fields,
                updates: 0,
            });
            Ok((id, true))
        }
    }
}

fn canonical(fields: &[FieldSpec], name: &str) -> String {
    fields
        .iter()
        .find(|f| f.name.eq_ignore_ascii_case(name))
        .map(|f| f.name.clone())
        .unwrap_or_else(|| name.to_string())
}

fn validate(s: &FakeState, rec: &Map<String, Value>, creating: bool) -> Result<(), SfError> {
    let empty = |v: &Value| v.is_null() || v.as_str().is_some_and(str::is_empty);
    for (k, v) in rec {
        let Some(f) = s.field(k) else { continue };
        let name = f.name.as_str();
        if (creating && !f.createable) || (!creating && !f.updateable) {
            return Err(SfError::new(
                "INVALID_FIELD_FOR_INSERT_UPDATE",
                format!(
                    "Unable to {} fields: {name}. Please check the security settings of this field and verify that it is read/write for your profile or permission set.",
                    if creating { "create" } else { "update" }
                ),
                &[name],
            ));
        }
        if empty(v) {
            continue;
        }
        if f.field_type == "boolean" {
            if !v.is_boolean() {
                return Err(SfError::new(
                    "INVALID_TYPE_ON_FIELD_IN_RECORD",
                    format!("{}: value not of required type: {v}", f.label),
                    &[name],
                ));
            }
            continue;
        }
        let text = match v {
            Value::String(t) => t.clone(),
            Value::Number(n) => n.to_string(),
            other => {
                return Err(SfError::new(
                    "INVALID_TYPE_ON_FIELD_IN_RECORD",
                    format!("{}: value not of required type: {other}", f.label),
                    &[name],
                ))
            }
        };
        if f.length > 0 && text.chars().count() > f.length {
            return Err(SfError::new(
                "STRING_TOO_LONG",
                format!(
                    "{}: data value too large: {text} (max length={})",
                    f.label, f.length
                ),
                &[name],
            ));
        }
        if f.field_type == "email" && !valid_email(&text, s.eai) {
            return Err(SfError::new(
                "INVALID_EMAIL_ADDRESS",
                format!("{}: invalid email address: {text}", f.label),
                &[name],
            ));
        }
        if f.field_type == "picklist"
            && f.restricted_picklist
            && !f.picklist_values.iter().any(|p| p == &text)
        {
            return Err(SfError::new(
                "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                format!(
                    "{}: bad value for restricted picklist field: {text}",
                    f.label
                ),
                &[name],
            ));
        }
    }
    // Required fields: on create they must be given; on update they must not be blanked.
    let mut missing: Vec<&str> = Vec::new();
    for f in &s.fields {
        let required = !f.nillable && !f.defaulted_on_create && f.createable;
        if !required {
            continue;
        }
        let given = rec.iter().find(|(k, _)| k.eq_ignore_ascii_case(&f.name));
        let is_missing = match given {
            Some((_, v)) => empty(v),
            None => creating,
        };
        if is_missing {
            missing.push(&f.name);
        }
    }
    if !missing.is_empty() {
        return Err(SfError::new(
            "REQUIRED_FIELD_MISSING",
            format!("Required fields are missing: [{}]", missing.join(", ")),
            &missing,
        ));
    }
    Ok(())
}

/// Salesforce's e-mail check, approximately: one `@`, a dot-separated local part of allowed
/// characters, a domain of labels with a dot. Non-ASCII only with EAI switched on.
pub fn valid_email(email: &str, eai: bool) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    if domain.contains('@') || local.is_empty() || local.len() > 64 || domain.is_empty() {
        return false;
    }
    if !eai && !email.is_ascii() {
        return false;
    }
    let local_ok = local.split('.').all(|part| !part.is_empty())
        && local
            .chars()
            .all(|c| c.is_alphanumeric() || "!#$%&'*+/=?^_`{|}~-.".contains(c));
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_alphanumeric() || c == '-')
        })
        && labels.last().is_some_and(|t| t.chars().count() >= 2);
    local_ok && domain_ok
}

/// A fresh 2048-bit RSA key pair for JWT tests: (private key as PKCS#8 PEM, public key as
/// SubjectPublicKeyInfo PEM). Panics only if the system's RNG fails; for tests.
pub fn generate_rsa_key_pem() -> (String, String) {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::signature::KeyPair as _;
    let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
        .expect("RSA key generation");
    let private = kp.as_der().expect("PKCS#8 encoding");
    let public = kp.public_key().as_der().expect("SPKI encoding");
    (
        pem_block("PRIVATE KEY", private.as_ref()),
        pem_block("PUBLIC KEY", public.as_ref()),
    )
}

fn pem_block(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        assert!(valid_email("ada@contoso.com", false));
        assert!(valid_email("a.b+c@x-y.example", false));
        assert!(!valid_email("ada.müller@contoso.com", false));
        assert!(valid_email("ada.müller@contoso.com", true));
        assert!(!valid_email("not an email", false));
        assert!(!valid_email("a@b", false));
        assert!(!valid_email("a..b@x.com", false));
        assert!(!valid_email("a@x..com", false));
        assert!(!valid_email("@x.com", false));
    }

    #[test]
    fn forms_decode() {
        let f = url_form(b"grant_type=client_credentials&client_secret=a%2Bb%3D&x=1+2");
        assert_eq!(f["grant_type"], "client_credentials");
        assert_eq!(f["client_secret"], "a+b=");
        assert_eq!(f["x"], "1 2");
    }

    #[test]
    fn key_pair_pems() {
        let (private, public) = generate_rsa_key_pem();
        assert!(private.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(jsonwebtoken::EncodingKey::from_rsa_pem(private.as_bytes()).is_ok());
        assert!(jsonwebtoken::DecodingKey::from_rsa_pem(public.as_bytes()).is_ok());
    }
}
