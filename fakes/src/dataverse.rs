//! A stateful fake of Microsoft Dataverse (Dynamics 365 Web API v9.2) and of the Microsoft
//! Entra ID token endpoint, following the checklist of `spec/crm-apis.md` §1.9.
//!
//! It owns: the client-credentials token endpoint (`POST /{tenant}/oauth2/v2.0/token`, with a
//! client secret or an RS256 `client_assertion` verified against a configured public key),
//! bearer-token checks (401 for a missing, unknown or expired token), `WhoAmI`, the
//! `EntityDefinitions(LogicalName='lead')` `Attributes` and `Keys` metadata, the `leads`
//! entity set (create, upsert by primary or alternate key with the §1.5 If-Match /
//! If-None-Match rules, `$filter=<col> eq '<v>'` queries), `$batch` (multipart/mixed with
//! change sets, `Content-ID`, `$n` references, stop-at-first-error unless
//! `Prefer: odata.continue-on-error`), the §1.8 lengths with Dataverse's `0x80044331` error,
//! and `412` on a create that repeats an alternate-key value.
//!
//! Tests steer it at run time: inject 429s (service protection, with `Retry-After` and the
//! §1.7 codes), 5xx answers per request or per operation (also "committed, then failed", the
//! ambiguous case), token expiry, a concurrency limit, added latency; and read back the stored
//! records, the requests received with their arrival times, and token counters.
//!
//! It is a test double, not a security boundary: tokens are random strings kept in memory.

use axum::body::{Body, Bytes};
use axum::extract::State as AxState;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::Response;
use axum::Router;
use base64::Engine;
use rand::Rng;
use serde_json::{json, Map, Value};
use sha2::Digest;
use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The service root path of the Web API.
pub const API_PATH: &str = "/api/data/v9.2";

/// The §1.7 service-protection error codes and their messages.
pub const CODE_REQUESTS: &str = "0x80072322";
pub const CODE_EXECUTION_TIME: &str = "0x80072321";
pub const CODE_CONCURRENCY: &str = "0x80072326";

fn throttle_message(code: &str) -> &'static str {
    match code {
        CODE_EXECUTION_TIME => "Combined execution time of incoming requests exceeded limit of 1,200,000 milliseconds over time window of 300 seconds. Decrease number of concurrent requests or reduce the duration of requests and try again later.",
        CODE_CONCURRENCY => "Number of concurrent requests exceeded the limit of 52.",
        _ => "Number of requests exceeded the limit of 6000 over time window of 300 seconds.",
    }
}

/// A certificate credential the token endpoint accepts as a `client_assertion`.
#[derive(Debug, Clone)]
pub struct AssertionKey {
    /// The certificate's public key, PEM (`-----BEGIN PUBLIC KEY-----`).
    pub public_key_pem: String,
    /// The certificate, PEM: when given, the assertion's `x5t#S256` header must name it.
    pub cert_pem: Option<String>,
}

/// How the fake starts. `Default` is a tenant `tenant-1` with app `leadsync-app` /
/// secret `s3cret`, an active alternate key on `new_leadsynckey`, one-hour tokens.
#[derive(Debug, Clone)]
pub struct DataverseConfig {
    pub tenant: String,
    pub client_id: String,
    /// `None`: secrets are refused (certificate only).
    pub client_secret: Option<String>,
    /// `None`: assertions are refused (secret only).
    pub assertion_key: Option<AssertionKey>,
    /// The custom column of `lead` holding leadsync's key, always present as an attribute.
    pub key_column: String,
    /// `Some(status)`: an alternate key on `key_column` exists with this
    /// `EntityKeyIndexStatus` (`Active`, `Pending`, `InProgress`, `Failed`); `None`: no
    /// alternate key (an org for create-only mode).
    pub alternate_key_status: Option<String>,
    /// How long an issued token is really accepted.
    pub token_lifetime: Duration,
    /// The `expires_in` the token endpoint announces (seconds).
    pub advertised_expires_in: u64,
}

impl Default for DataverseConfig {
    fn default() -> Self {
        DataverseConfig {
            tenant: "tenant-1".into(),
            client_id: "leadsync-app".into(),
            client_secret: Some("s3cret".into()),
            assertion_key: None,
            key_column: "new_leadsynckey".into(),
            alternate_key_status: Some("Active".into()),
            token_lifetime: Duration::from_secs(3599),
            advertised_expires_in: 3599,
        }
    }
}

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    pub method: String,
    /// Path without the query string.
    pub path: String,
    pub at: Instant,
    pub status: u16,
    /// Lead operations carried: 1 for a single request, the part count for a `$batch`.
    pub operations: usize,
}

#[derive(Debug, Clone)]
enum AttrType {
    Text(usize),
    Picklist(Vec<i64>),
    Boolean,
    Guid,
    Other,
}

#[derive(Debug, Clone)]
struct StoredLead {
    id: String,
    version: u64,
    fields: Map<String, Value>,
}

#[derive(Debug, Clone)]
struct Fault {
    status: u16,
    code: String,
    message: String,
    retry_after: Option<u64>,
}

#[derive(Debug, Clone)]
enum OpFault {
    /// Answer with this status without doing anything.
    Fail(u16),
    /// Do the operation, then answer with this status anyway (a lost response).
    CommitThenFail(u16),
}

/// Undo entries for change-set rollback: before-images.
enum Undo {
    Created,
    Updated(usize, StoredLead),
}

struct State {
    cfg: DataverseConfig,
    base_url: String,
    attributes: Vec<(String, AttrType)>,
    leads: Vec<StoredLead>,
    by_id: HashMap<String, usize>,
    by_key: HashMap<String, usize>,
    version: u64,
    tokens: HashMap<String, Instant>,
    token_requests: usize,
    tokens_issued: usize,
    assertions_verified: usize,
    unauthorized: usize,
    faults: VecDeque<Fault>,
    op_faults: VecDeque<OpFault>,
    latency: Duration,
    /// `latency` is the whole round trip, the fake's own work inside it (`set_round_trip`).
    work_inside_latency: bool,
    concurrency_limit: Option<usize>,
    requests: Vec<RequestRecord>,
}

struct Shared {
    state: Mutex<State>,
    in_flight: AtomicUsize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock must not hide its own failure.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running fake Dataverse. Dropping it stops the server.
pub struct FakeDataverse {
    base_url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeDataverse {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn default_attributes(key_column: &str) -> Vec<(String, AttrType)> {
    let mut a: Vec<(String, AttrType)> = [
        ("firstname", 50),
        ("lastname", 50),
        ("middlename", 50),
        ("fullname", 160),
        ("emailaddress1", 100),
        ("emailaddress2", 100),
        ("emailaddress3", 100),
        ("telephone1", 50),
        ("mobilephone", 20),
        ("companyname", 100),
        ("jobtitle", 100),
        ("subject", 300),
        ("description", 2000),
        ("address1_country", 80),
        ("address1_city", 80),
        ("address1_line1", 250),
        ("address1_line2", 250),
        ("address1_line3", 250),
        ("address1_county", 50),
        ("websiteurl", 200),
    ]
    .into_iter()
    .map(|(n, l)| (n.to_string(), AttrType::Text(l)))
    .collect();
    a.push((
        "leadsourcecode".into(),
        AttrType::Picklist((1..=10).collect()),
    ));
    a.push(("leadqualitycode".into(), AttrType::Picklist(vec![1, 2, 3])));
    a.push(("statecode".into(), AttrType::Picklist(vec![0, 1, 2])));
    a.push(("statuscode".into(), AttrType::Picklist((1..=7).collect())));
    for b in [
        "donotemail",
        "donotphone",
        "donotbulkemail",
        "donotpostalmail",
        "donotfax",
        "donotsendmm",
    ] {
        a.push((b.into(), AttrType::Boolean));
    }
    a.push(("leadid".into(), AttrType::Guid));
    a.push(("createdon".into(), AttrType::Other));
    a.push(("modifiedon".into(), AttrType::Other));
    a.push((key_column.to_string(), AttrType::Text(100)));
    a
}

fn guid() -> String {
    let b: u128 = rand::rng().random();
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        b >> 96,
        (b >> 80) & 0xffff,
        (b >> 64) & 0xffff,
        (b >> 48) & 0xffff,
        b & 0xffff_ffff_ffff
    )
}

impl FakeDataverse {
    /// Start with [`DataverseConfig::default`].
    pub async fn start() -> Self {
        Self::start_with(DataverseConfig::default()).await
    }

    pub async fn start_with(cfg: DataverseConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let base_url = format!("http://{addr}");
        let state = State {
            attributes: default_attributes(&cfg.key_column),
            cfg,
            base_url: base_url.clone(),
            leads: Vec::new(),
            by_id: HashMap::new(),
            by_key: HashMap::new(),
            version: 1000,
            tokens: HashMap::new(),
            token_requests: 0,
            tokens_issued: 0,
            assertions_verified: 0,
            unauthorized: 0,
            faults: VecDeque::new(),
            op_faults: VecDeque::new(),
            latency: Duration::ZERO,
            work_inside_latency: false,
            concurrency_limit: None,
            requests: Vec::new(),
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            in_flight: AtomicUsize::new(0),
        });
        let app = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeDataverse {
            base_url,
            shared,
            task,
        }
    }

    /// The organisation URL (`https://org.crm.dynamics.com` in real life).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }
    /// The authority host: the token endpoint is `{authority}/{tenant}/oauth2/v2.0/token`.
    pub fn authority(&self) -> &str {
        &self.base_url
    }
    pub fn token_url(&self) -> String {
        format!(
            "{}/{}/oauth2/v2.0/token",
            self.base_url,
            self.shared.lock().cfg.tenant
        )
    }
    pub fn tenant(&self) -> String {
        self.shared.lock().cfg.tenant.clone()
    }

    // ---- reading what happened -------------------------------------------------------

    /// Every stored lead: its columns plus `leadid`, in creation order.
    pub fn leads(&self) -> Vec<Map<String, Value>> {
        let st = self.shared.lock();
        st.leads
            .iter()
            .map(|l| st.representation(l, None))
            .collect()
    }
    /// The lead whose key column holds `key`.
    pub fn lead_by_key(&self, key: &str) -> Option<Map<String, Value>> {
        let st = self.shared.lock();
        st.by_key
            .get(key)
            .map(|i| st.representation(&st.leads[*i], None))
    }
    pub fn lead_count(&self) -> usize {
        self.shared.lock().leads.len()
    }
    /// Every request received (token endpoint included), in arrival order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.lock().requests.clone()
    }
    pub fn request_count(&self) -> usize {
        self.shared.lock().requests.len()
    }
    /// Requests to the token endpoint, and how many tokens it issued.
    pub fn token_requests(&self) -> usize {
        self.shared.lock().token_requests
    }
    pub fn tokens_issued(&self) -> usize {
        self.shared.lock().tokens_issued
    }
    /// Client assertions whose signature verified.
    pub fn assertions_verified(&self) -> usize {
        self.shared.lock().assertions_verified
    }
    /// 401 answers given for a missing, unknown or expired token.
    pub fn unauthorized_count(&self) -> usize {
        self.shared.lock().unauthorized
    }

    // ---- steering ----------------------------------------------------------------------

    /// Store a lead directly (as if created in the CRM by someone else). Returns its id.
    pub fn insert_lead(&self, fields: Map<String, Value>) -> String {
        let mut st = self.shared.lock();
        let mut j = Vec::new();
        st.insert(fields, None, &mut j)
    }
    /// The next `n` Web API requests answer 429 with `Retry-After: retry_after_secs` and
    /// the requests-per-window code `0x80072322`.
    pub fn throttle_next(&self, n: usize, retry_after_secs: u64) {
        self.throttle_next_with(n, retry_after_secs, CODE_REQUESTS);
    }
    /// As [`Self::throttle_next`] with one of the §1.7 codes.
    pub fn throttle_next_with(&self, n: usize, retry_after_secs: u64, code: &str) {
        let mut st = self.shared.lock();
        for _ in 0..n {
            st.faults.push_back(Fault {
                status: 429,
                code: code.to_string(),
                message: throttle_message(code).to_string(),
                retry_after: Some(retry_after_secs),
            });
        }
    }
    /// The next `n` Web API requests (a whole `$batch` counts as one) answer `status`.
    pub fn fail_next_requests(&self, n: usize, status: u16) {
        let mut st = self.shared.lock();
        for _ in 0..n {
            st.faults.push_back(Fault {
                status,
                code: "0x80040216".into(),
                message: "An unexpected error occurred.".into(),
                retry_after: None,
            });
        }
    }
    /// The next `n` lead writes (single or inside a `$batch`) answer `status`, unwritten.
    pub fn fail_next_operations(&self, n: usize, status: u16) {
        let mut st = self.shared.lock();
        for _ in 0..n {
            st.op_faults.push_back(OpFault::Fail(status));
        }
    }
    /// The next `n` lead writes are stored, then answered with `status` (the response was
    /// "lost": the client cannot know the write happened).
    pub fn commit_then_fail_next_operations(&self, n: usize, status: u16) {
        let mut st = self.shared.lock();
        for _ in 0..n {
            st.op_faults.push_back(OpFault::CommitThenFail(status));
        }
    }
    /// Every token issued so far stops working (next use: 401).
    pub fn expire_tokens(&self) {
        self.shared.lock().tokens.clear();
    }
    /// How long tokens issued from now on are really accepted (the announced `expires_in`
    /// does not change: a token can die before its announced end, as after a revocation).
    pub fn set_token_lifetime(&self, d: Duration) {
        self.shared.lock().cfg.token_lifetime = d;
    }
    pub fn set_advertised_expires_in(&self, secs: u64) {
        self.shared.lock().cfg.advertised_expires_in = secs;
    }
    /// Added delay before every answer (benchmarks use 50 ms).
    pub fn set_latency(&self, d: Duration) {
        let mut st = self.shared.lock();
        st.latency = d;
        st.work_inside_latency = false;
    }

    /// Answer every request `round_trip` after it arrived, the fake's own work done inside
    /// that time (as a CRM's is inside its round trip): a benchmark's limit of batch ÷
    /// round trip then measures the client alone. Work that takes longer answers late.
    pub fn set_round_trip(&self, round_trip: Duration) {
        let mut st = self.shared.lock();
        st.latency = round_trip;
        st.work_inside_latency = true;
    }
    /// More requests than this in flight at once answer 429 `0x80072326`.
    pub fn set_concurrency_limit(&self, limit: Option<usize>) {
        self.shared.lock().concurrency_limit = limit;
    }
    /// Change a text column's MaxLength (organisations customise them).
    pub fn set_max_length(&self, attribute: &str, max: usize) {
        let mut st = self.shared.lock();
        match st.attributes.iter_mut().find(|(n, _)| n == attribute) {
            Some((_, t)) => *t = AttrType::Text(max),
            None => st
                .attributes
                .push((attribute.to_string(), AttrType::Text(max))),
        }
    }
    /// Add a custom text column to `lead`.
    pub fn add_text_attribute(&self, attribute: &str, max: usize) {
        self.set_max_length(attribute, max);
    }
    /// Set the alternate key's index status, or remove the key (`None`).
    pub fn set_alternate_key_status(&self, status: Option<&str>) {
        self.shared.lock().cfg.alternate_key_status = status.map(str::to_string);
    }
}

// ---- HTTP plumbing --------------------------------------------------------------------

/// An answer being built (also used for the parts of a `$batch`).
#[derive(Debug, Clone)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn new(status: u16) -> Self {
        Resp {
            status,
            headers: vec![("OData-Version".into(), "4.0".into())],
            body: String::new(),
        }
    }
    fn json(status: u16, v: &Value) -> Self {
        let mut r = Resp::new(status);
        r.headers.push((
            "Content-Type".into(),
            "application/json; odata.metadata=minimal".into(),
        ));
        r.body = v.to_string();
        r
    }
    fn error(status: u16, code: &str, message: &str) -> Self {
        Resp::json(
            status,
            &json!({"error": {"code": code, "message": message}}),
        )
    }
    fn header(mut self, k: &str, v: impl Into<String>) -> Self {
        self.headers.push((k.to_string(), v.into()));
        self
    }
    fn into_response(self) -> Response {
        let mut b = Response::builder().status(self.status);
        for (k, v) in &self.headers {
            b = b.header(k.as_str(), v.as_str());
        }
        b.body(Body::from(self.body))
            .unwrap_or_else(|_| Response::new(Body::empty()))
    }
    /// As an `application/http` message inside a batch response, appended to `out`.
    fn write_http(&self, out: &mut String) {
        let _ = write!(out, "HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        for (k, v) in &self.headers {
            let _ = write!(out, "{k}: {v}\r\n");
        }
        out.push_str("\r\n");
        out.push_str(&self.body);
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        412 => "Precondition Failed",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

fn header_of<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(hex, 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn form_decode(body: &str) -> HashMap<String, String> {
    body.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                percent_decode(&k.replace('+', " ")),
                percent_decode(&v.replace('+', " ")),
            )
        })
        .collect()
}

fn query_decode(q: Option<&str>) -> HashMap<String, String> {
    q.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

async fn handle(
    AxState(sh): AxState<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let arrived = Instant::now();
    let in_flight = sh.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    let (latency, work_inside) = {
        let st = sh.lock();
        (st.latency, st.work_inside_latency)
    };
    if !work_inside && !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let hdrs: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = String::from_utf8_lossy(&body).into_owned();
    let path = percent_decode(uri.path());
    // A `$batch` is read before the lock is taken, so that requests in flight together
    // parse in parallel as a server's would; `route` still decides what to answer first.
    let batch =
        (method == Method::POST && path.ends_with("/$batch")).then(|| parse_batch(&hdrs, &body));
    let (resp, ops) = {
        let mut st = sh.lock();
        let call = Call {
            method: &method,
            path: &path,
            query: uri.query(),
            headers: &hdrs,
            body: &body,
            batch,
        };
        st.route(call, in_flight)
    };
    if work_inside {
        crate::sleep_until_precise(arrived + latency).await;
    }
    sh.in_flight.fetch_sub(1, Ordering::SeqCst);
    sh.lock().requests.push(RequestRecord {
        method: method.to_string(),
        path,
        at: arrived,
        status: resp.status,
        operations: ops,
    });
    resp.into_response()
}

// ---- the service ----------------------------------------------------------------------

/// One request as `State::route` reads it; a `$batch` already parsed (or refused) outside
/// the lock.
struct Call<'a> {
    method: &'a Method,
    path: &'a str,
    query: Option<&'a str>,
    headers: &'a [(String, String)],
    body: &'a str,
    batch: Option<Result<ParsedBatch<'a>, (Resp, usize)>>,
}

/// A parsed key segment: `leads(<guid>)`, `leads(leadid=<guid>)`, `leads(col='v')`.
enum KeySpec {
    Id(String),
    Alt(String, String),
}

fn parse_key(inner: &str) -> Result<KeySpec, String> {
    let inner = inner.trim();
    match inner.split_once('=') {
        None => Ok(KeySpec::Id(inner.trim_matches('\'').to_string())),
        Some((col, v)) => {
            let col = col.trim();
            if col.contains(',') || v.contains(",") && !v.trim().ends_with('\'') {
                return Err("multi-part keys are not supported by this fake".into());
            }
            let v = v.trim();
            if col == "leadid" {
                return Ok(KeySpec::Id(v.trim_matches('\'').to_string()));
            }
            let unq = v
                .strip_prefix('\'')
                .and_then(|x| x.strip_suffix('\''))
                .ok_or_else(|| format!("key value {v} is not a quoted string"))?;
            Ok(KeySpec::Alt(col.to_string(), unq.replace("''", "'")))
        }
    }
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl State {
    fn alt_key_active(&self) -> bool {
        self.cfg.alternate_key_status.as_deref() == Some("Active")
    }

    fn representation(&self, l: &StoredLead, select: Option<&str>) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert(
            "@odata.etag".into(),
            Value::String(format!("W/\"{}\"", l.version)),
        );
        match select {
            Some(sel) => {
                for c in sel.split(',').map(str::trim) {
                    if c == "leadid" {
                        continue;
                    }
                    m.insert(
                        c.to_string(),
                        l.fields.get(c).cloned().unwrap_or(Value::Null),
                    );
                }
            }
            None => {
                for (k, v) in &l.fields {
                    m.insert(k.clone(), v.clone());
                }
            }
        }
        m.insert("leadid".into(), Value::String(l.id.clone()));
        m
    }

    fn route(&mut self, call: Call<'_>, in_flight: usize) -> (Resp, usize) {
        let Call {
            method,
            path,
            query,
            headers,
            body,
            batch,
        } = call;
        let token_path = format!("/{}/oauth2/v2.0/token", self.cfg.tenant);
        if path.ends_with("/oauth2/v2.0/token") {
            if *method != Method::POST {
                return (Resp::new(405), 0);
            }
            if path != token_path {
                let tenant = path.trim_start_matches('/').split('/').next().unwrap_or("");
                return (
                    self.token_error(
                        400,
                        "invalid_request",
                        90002,
                        &format!("AADSTS90002: Tenant '{tenant}' not found."),
                    ),
                    0,
                );
            }
            self.token_requests += 1;
            return (self.token(headers, body), 0);
        }
        let Some(rel) = path.strip_prefix(API_PATH) else {
            return (Resp::error(404, "", "Resource not found."), 0);
        };
        let rel = rel.trim_start_matches('/').to_string();
        if !self.authorized(headers) {
            self.unauthorized += 1;
            let r = Resp::new(401).header(
                "WWW-Authenticate",
                format!(
                    "Bearer authorization_uri=https://login.microsoftonline.com/{}/oauth2/authorize, resource_id={}",
                    self.cfg.tenant, self.base_url
                ),
            );
            return (r, 0);
        }
        if let Some(limit) = self.concurrency_limit {
            if in_flight > limit {
                return (
                    Resp::error(429, CODE_CONCURRENCY, throttle_message(CODE_CONCURRENCY))
                        .header("Retry-After", "1"),
                    0,
                );
            }
        }
        if let Some(f) = self.faults.pop_front() {
            let mut r = Resp::error(f.status, &f.code, &f.message);
            if let Some(s) = f.retry_after {
                r = r.header("Retry-After", s.to_string());
            }
            return (r, 0);
        }
        if rel == "$batch" {
            if *method != Method::POST {
                return (Resp::new(405), 0);
            }
            // Read here when the handler's cheaper test of the path did not match.
            return match batch.unwrap_or_else(|| parse_batch(headers, body)) {
                Ok(parsed) => self.batch(parsed),
                Err(refused) => refused,
            };
        }
        let q = query_decode(query);
        let mut journal = Vec::new();
        let (r, _) = self.operation(method.as_str(), &rel, &q, headers, body, &mut journal);
        (r, 1)
    }

    // ---- tokens ------------------------------------------------------------------------

    fn token_error(&self, status: u16, error: &str, code: u32, desc: &str) -> Resp {
        let now = chrono::Utc::now();
        Resp::json(
            status,
            &json!({
                "error": error,
                "error_description": format!("{desc}\r\nTrace ID: {}\r\nCorrelation ID: {}\r\nTimestamp: {}", guid(), guid(), now.format("%Y-%m-%d %H:%M:%SZ")),
                "error_codes": [code],
                "timestamp": now.format("%Y-%m-%d %H:%M:%SZ").to_string(),
                "trace_id": guid(),
                "correlation_id": guid(),
                "error_uri": "https://login.microsoftonline.com/error?code=".to_string() + &code.to_string(),
            }),
        )
    }

    fn token(&mut self, headers: &[(String, String)], body: &str) -> Resp {
        let ct = header_of(headers, "content-type").unwrap_or("");
        if !ct.starts_with("application/x-www-form-urlencoded") {
            return self.token_error(
                400,
                "invalid_request",
                900144,
                "AADSTS900144: The request body must contain the following parameter: 'grant_type'.",
            );
        }
        let f = form_decode(body);
        if f.get("grant_type").map(String::as_str) != Some("client_credentials") {
            return self.token_error(
                400,
                "unsupported_grant_type",
                70003,
                "AADSTS70003: The app requested an unsupported grant type.",
            );
        }
        let client_id = f.get("client_id").cloned().unwrap_or_default();
        if client_id != self.cfg.client_id {
            return self.token_error(
                400,
                "unauthorized_client",
                700016,
                &format!("AADSTS700016: Application with identifier '{client_id}' was not found in the directory."),
            );
        }
        let scope = f.get("scope").cloned().unwrap_or_default();
        let good = [
            format!("{}/.default", self.base_url),
            format!("{}//.default", self.base_url),
        ];
        if !good.contains(&scope) {
            return self.token_error(
                400,
                "invalid_scope",
                70011,
                "AADSTS70011: The provided value for the input parameter 'scope' is not valid.",
            );
        }
        if let Some(secret) = f.get("client_secret") {
            if self.cfg.client_secret.as_deref() != Some(secret.as_str()) {
                return self.token_error(
                    401,
                    "invalid_client",
                    7000215,
                    "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.",
                );
            }
        } else if let Some(assertion) = f.get("client_assertion") {
            if f.get("client_assertion_type").map(String::as_str)
                != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
            {
                return self.token_error(
                    400,
                    "invalid_request",
                    90014,
                    "AADSTS90014: The required field 'client_assertion_type' is missing from the credential.",
                );
            }
            if let Err(why) = self.verify_assertion(assertion, &client_id) {
                return self.token_error(
                    401,
                    "invalid_client",
                    700027,
                    &format!("AADSTS700027: Client assertion failed signature validation. ({why})"),
                );
            }
            self.assertions_verified += 1;
        } else {
            return self.token_error(
                401,
                "invalid_client",
                7000218,
                "AADSTS7000218: The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            );
        }
        let token = format!("fake-dv-{}-{}", self.tokens_issued, guid());
        self.tokens_issued += 1;
        self.tokens
            .insert(token.clone(), Instant::now() + self.cfg.token_lifetime);
        Resp::json(
            200,
            &json!({
                "token_type": "Bearer",
                "expires_in": self.cfg.advertised_expires_in,
                "ext_expires_in": self.cfg.advertised_expires_in,
                "access_token": token,
            }),
        )
    }

    fn verify_assertion(&self, jwt: &str, client_id: &str) -> Result<(), String> {
        let key = self
            .cfg
            .assertion_key
            .as_ref()
            .ok_or("no certificate is registered for this application")?;
        let header = jsonwebtoken::decode_header(jwt).map_err(|e| e.to_string())?;
        if header.alg != jsonwebtoken::Algorithm::RS256 {
            return Err(format!("alg {:?} is not RS256", header.alg));
        }
        if header.x5t.is_none() && header.x5t_s256.is_none() {
            return Err("the assertion names no certificate (x5t / x5t#S256)".into());
        }
        if let Some(cert) = &key.cert_pem {
            let expected = cert_sha256_thumbprint(cert).ok_or("registered cert unreadable")?;
            if let Some(t) = &header.x5t_s256 {
                if *t != expected {
                    return Err("x5t#S256 names another certificate".into());
                }
            }
        }
        let dk = jsonwebtoken::DecodingKey::from_rsa_pem(key.public_key_pem.as_bytes())
            .map_err(|e| e.to_string())?;
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        let aud = format!("{}/{}/oauth2/v2.0/token", self.base_url, self.cfg.tenant);
        v.set_audience(&[aud]);
        v.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        let data = jsonwebtoken::decode::<Value>(jwt, &dk, &v).map_err(|e| e.to_string())?;
        let c = data.claims;
        if c["iss"] != client_id || c["sub"] != client_id {
            return Err("iss and sub must be the client id".into());
        }
        if c["jti"].as_str().is_none_or(str::is_empty) {
            return Err("jti missing".into());
        }
        Ok(())
    }

    fn authorized(&mut self, headers: &[(String, String)]) -> bool {
        let Some(tok) = header_of(headers, "authorization").and_then(|a| a.strip_prefix("Bearer "))
        else {
            return false;
        };
        match self.tokens.get(tok.trim()) {
            Some(exp) if *exp > Instant::now() => true,
            Some(_) => {
                self.tokens.remove(tok.trim());
                false
            }
            None => false,
        }
    }

    // ---- single operations ---------------------------------------------------------

    /// One operation (a top-level request or a batch part). Returns the answer and, for a
    /// write, the entity path it touched (for `$n` references).
    fn operation(
        &mut self,
        method: &str,
        rel: &str,
        q: &HashMap<String, String>,
        headers: &[(String, String)],
        body: &str,
        journal: &mut Vec<Undo>,
    ) -> (Resp, Option<String>) {
        let select = q.get("$select").map(String::as_str);
        let prefer_repr =
            header_of(headers, "prefer").is_some_and(|p| p.contains("return=representation"));
        match (method, rel) {
            ("GET", "WhoAmI") | ("GET", "WhoAmI()") => (
                Resp::json(
                    200,
                    &json!({
                        "@odata.context": format!("{}{API_PATH}/$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse", self.base_url),
                        "BusinessUnitId": "0f9e1a2b-0000-0000-0000-000000000001",
                        "UserId": "0f9e1a2b-0000-0000-0000-000000000002",
                        "OrganizationId": "0f9e1a2b-0000-0000-0000-000000000003",
                    }),
                ),
                None,
            ),
            ("GET", r) if r.starts_with("EntityDefinitions(") => (self.metadata(r), None),
            ("GET", "leads") => (self.query(q), None),
            ("POST", "leads") => self.create(headers, body, prefer_repr, select, journal),
            (m, r) if r.starts_with("leads(") && r.ends_with(')') => {
                let inner = &r["leads(".len()..r.len() - 1];
                let key = match parse_key(inner) {
                    Ok(k) => k,
                    Err(e) => return (Resp::error(400, "0x80060888", &e), None),
                };
                if let KeySpec::Alt(col, _) = &key {
                    if *col != self.cfg.key_column || self.cfg.alternate_key_status.is_none() {
                        return (
                            Resp::error(
                                400,
                                "0x80060888",
                                "The key in the request URI is not valid for resource 'Microsoft.Dynamics.CRM.lead'. Ensure that the names and number of key properties match the declared or alternate key properties for the resource 'Microsoft.Dynamics.CRM.lead'.",
                            ),
                            None,
                        );
                    }
                }
                match m {
                    "GET" => match self.find(&key) {
                        Some(i) => (
                            Resp::json(
                                200,
                                &Value::Object(self.representation(&self.leads[i], select)),
                            )
                            .header("ETag", format!("W/\"{}\"", self.leads[i].version)),
                            None,
                        ),
                        None => (self.not_found(&key), None),
                    },
                    "PATCH" => self.upsert(key, headers, body, prefer_repr, select, journal),
                    _ => (Resp::error(405, "", "Method not allowed."), None),
                }
            }
            _ => (
                Resp::error(
                    404,
                    "0x80060888",
                    &format!("Resource not found for the segment '{rel}'."),
                ),
                None,
            ),
        }
    }

    fn not_found(&self, key: &KeySpec) -> Resp {
        let id = match key {
            KeySpec::Id(id) => id.clone(),
            KeySpec::Alt(c, v) => format!("{c}={v}"),
        };
        Resp::error(
            404,
            "0x80040217",
            &format!("lead With Id = {id} Does Not Exist"),
        )
    }

    fn metadata(&self, r: &str) -> Resp {
        let Some(rest) = r.strip_prefix("EntityDefinitions(LogicalName='lead')") else {
            return Resp::error(404, "0x80040217", "Could not find entity.");
        };
        let ctx = format!("{}{API_PATH}/$metadata", self.base_url);
        match rest {
            "/Attributes" => {
                let value: Vec<Value> = self
                    .attributes
                    .iter()
                    .map(|(n, t)| {
                        let (ty, odt) = match t {
                            AttrType::Text(_) => ("String", "StringAttributeMetadata"),
                            AttrType::Picklist(_) => ("Picklist", "PicklistAttributeMetadata"),
                            AttrType::Boolean => ("Boolean", "BooleanAttributeMetadata"),
                            AttrType::Guid => ("Uniqueidentifier", "AttributeMetadata"),
                            AttrType::Other => ("DateTime", "DateTimeAttributeMetadata"),
                        };
                        json!({"@odata.type": format!("#Microsoft.Dynamics.CRM.{odt}"), "LogicalName": n, "AttributeType": ty, "MetadataId": guid()})
                    })
                    .collect();
                Resp::json(
                    200,
                    &json!({"@odata.context": format!("{ctx}#EntityDefinitions('lead')/Attributes"), "value": value}),
                )
            }
            "/Keys" => {
                let value: Vec<Value> = match &self.cfg.alternate_key_status {
                    Some(status) => vec![json!({
                        "LogicalName": format!("{}_key", self.cfg.key_column),
                        "KeyAttributes": [self.cfg.key_column],
                        "EntityKeyIndexStatus": status,
                        "MetadataId": "6c3b2a10-0000-0000-0000-0000000000aa",
                    })],
                    None => vec![],
                };
                Resp::json(
                    200,
                    &json!({"@odata.context": format!("{ctx}#EntityDefinitions('lead')/Keys"), "value": value}),
                )
            }
            "" => Resp::json(
                200,
                &json!({"LogicalName": "lead", "EntitySetName": "leads", "PrimaryIdAttribute": "leadid"}),
            ),
            _ => Resp::error(404, "0x80060888", "Resource not found."),
        }
    }

    fn query(&self, q: &HashMap<String, String>) -> Resp {
        let select = q.get("$select").map(String::as_str);
        let mut rows: Vec<&StoredLead> = self.leads.iter().collect();
        if let Some(f) = q.get("$filter") {
            let Some((col, v)) = f.split_once(" eq ") else {
                return Resp::error(
                    400,
                    "0x80060888",
                    "This fake understands only `<column> eq '<value>'`.",
                );
            };
            let col = col.trim();
            let v = v.trim();
            if !self.attributes.iter().any(|(n, _)| n == col) {
                return Resp::error(
                    400,
                    "0x80060888",
                    &format!("Could not find a property named '{col}' on type 'Microsoft.Dynamics.CRM.lead'."),
                );
            }
            let want: Value = match v.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')) {
                Some(s) => Value::String(s.replace("''", "'")),
                None => serde_json::from_str(v).unwrap_or(Value::Null),
            };
            rows.retain(|l| {
                if col == "leadid" {
                    Value::String(l.id.clone()) == want
                } else {
                    l.fields.get(col) == Some(&want)
                }
            });
        }
        if let Some(top) = q.get("$top").and_then(|t| t.parse::<usize>().ok()) {
            rows.truncate(top);
        }
        let value: Vec<Value> = rows
            .into_iter()
            .map(|l| Value::Object(self.representation(l, select)))
            .collect();
        Resp::json(
            200,
            &json!({"@odata.context": format!("{}{API_PATH}/$metadata#leads", self.base_url), "value": value}),
        )
    }

    /// Check a body against the lead's columns: names, types, lengths, choice values.
    fn validate(&self, body: &Map<String, Value>) -> Result<(), Resp> {
        for (k, v) in body {
            if k.starts_with('@') || k.contains("@odata.") {
                continue;
            }
            let Some((_, ty)) = self.attributes.iter().find(|(n, _)| n == k) else {
                return Err(Resp::error(
                    400,
                    "0x80060888",
                    &format!(
                        "Invalid property '{k}' was found in entity 'Microsoft.Dynamics.CRM.lead'."
                    ),
                ));
            };
            if v.is_null() {
                continue;
            }
            let mismatch = |edm: &str| {
                Resp::error(
                    400,
                    "0x80060888",
                    &format!(
                        "Cannot convert the literal '{}' to the expected type '{edm}'.",
                        v
                    ),
                )
            };
            match ty {
                AttrType::Text(max) => {
                    let Some(s) = v.as_str() else {
                        return Err(mismatch("Edm.String"));
                    };
                    // .NET strings count UTF-16 code units.
                    if s.encode_utf16().count() > *max {
                        return Err(Resp::error(
                            400,
                            "0x80044331",
                            &format!("A validation error occurred.  The length of the '{k}' attribute of the 'lead' entity exceeded the maximum allowed length of '{max}'."),
                        ));
                    }
                }
                AttrType::Picklist(opts) => {
                    let Some(n) = v.as_i64() else {
                        return Err(mismatch("Edm.Int32"));
                    };
                    if !opts.contains(&n) {
                        let accepted: Vec<String> = opts.iter().map(|o| o.to_string()).collect();
                        return Err(Resp::error(
                            400,
                            "0x80044331",
                            &format!("A validation error occurred. The value {n} of '{k}' on record of type 'lead' is outside the valid range. Accepted Values: {}", accepted.join(",")),
                        ));
                    }
                }
                AttrType::Boolean => {
                    if !v.is_boolean() {
                        return Err(mismatch("Edm.Boolean"));
                    }
                }
                AttrType::Guid | AttrType::Other => {}
            }
        }
        Ok(())
    }

    fn parse_body(&self, body: &str) -> Result<Map<String, Value>, Resp> {
        match serde_json::from_str::<Value>(body) {
            Ok(Value::Object(m)) => Ok(m),
            _ => Err(Resp::error(
                400,
                "0x80048d19",
                "Error identified in Payload provided by the user for Entity :'leads', For more information on this error please follow this help link https://go.microsoft.com/fwlink/?linkid=2195293",
            )),
        }
    }

    fn find(&self, key: &KeySpec) -> Option<usize> {
        match key {
            KeySpec::Id(id) => self.by_id.get(&id.to_ascii_lowercase()).copied(),
            KeySpec::Alt(_, v) => self.by_key.get(v).copied(),
        }
    }

    fn key_value_of(&self, fields: &Map<String, Value>) -> Option<String> {
        fields
            .get(&self.cfg.key_column)
            .and_then(Value::as_str)
            .map(str::to_string)
    }

    fn insert(
        &mut self,
        mut fields: Map<String, Value>,
        id: Option<String>,
        journal: &mut Vec<Undo>,
    ) -> String {
        let id = id.unwrap_or_else(guid).to_ascii_lowercase();
        fields.remove("leadid");
        let now = now_rfc3339();
        fields.insert("createdon".into(), Value::String(now.clone()));
        fields.insert("modifiedon".into(), Value::String(now));
        self.version += 1;
        let idx = self.leads.len();
        if let Some(k) = self.key_value_of(&fields) {
            self.by_key.insert(k, idx);
        }
        self.by_id.insert(id.clone(), idx);
        self.leads.push(StoredLead {
            id: id.clone(),
            version: self.version,
            fields,
        });
        journal.push(Undo::Created);
        id
    }

    fn update(&mut self, idx: usize, changes: Map<String, Value>, journal: &mut Vec<Undo>) {
        journal.push(Undo::Updated(idx, self.leads[idx].clone()));
        if let Some(old) = self.key_value_of(&self.leads[idx].fields) {
            self.by_key.remove(&old);
        }
        self.version += 1;
        let v = self.version;
        let l = &mut self.leads[idx];
        for (k, val) in changes {
            if k == "leadid" || k == "createdon" {
                continue;
            }
            l.fields.insert(k, val);
        }
        l.fields
            .insert("modifiedon".into(), Value::String(now_rfc3339()));
        l.version = v;
        if let Some(k) = self.key_value_of(&self.leads[idx].fields) {
            self.by_key.insert(k, idx);
        }
    }

    fn rollback(&mut self, journal: Vec<Undo>) {
        for u in journal.into_iter().rev() {
            match u {
                Undo::Created => {
                    if let Some(l) = self.leads.pop() {
                        self.by_id.remove(&l.id);
                        if let Some(k) = self.key_value_of(&l.fields) {
                            self.by_key.remove(&k);
                        }
                    }
                }
                Undo::Updated(idx, before) => {
                    if let Some(k) = self.key_value_of(&self.leads[idx].fields) {
                        self.by_key.remove(&k);
                    }
                    if let Some(k) = self.key_value_of(&before.fields) {
                        self.by_key.insert(k, idx);
                    }
                    self.leads[idx] = before;
                }
            }
        }
    }

    fn written(
        &self,
        idx: usize,
        status: u16,
        prefer_repr: bool,
        select: Option<&str>,
        key_path: &str,
    ) -> Resp {
        let l = &self.leads[idx];
        if prefer_repr {
            let mut m = Map::new();
            m.insert(
                "@odata.context".into(),
                Value::String(format!(
                    "{}{API_PATH}/$metadata#leads/$entity",
                    self.base_url
                )),
            );
            m.extend(self.representation(l, select));
            Resp::json(status, &Value::Object(m))
                .header("ETag", format!("W/\"{}\"", l.version))
                .header("Preference-Applied", "return=representation")
        } else {
            Resp::new(204).header(
                "OData-EntityId",
                format!("{}{API_PATH}/leads({key_path})", self.base_url),
            )
        }
    }

    fn take_op_fault(&mut self) -> Option<OpFault> {
        self.op_faults.pop_front()
    }

    fn op_fault_resp(status: u16) -> Resp {
        if status == 429 {
            Resp::error(429, CODE_REQUESTS, throttle_message(CODE_REQUESTS))
                .header("Retry-After", "1")
        } else {
            Resp::error(status, "0x80040216", "An unexpected error occurred.")
        }
    }

    fn create(
        &mut self,
        headers: &[(String, String)],
        body: &str,
        prefer_repr: bool,
        select: Option<&str>,
        journal: &mut Vec<Undo>,
    ) -> (Resp, Option<String>) {
        let fault = self.take_op_fault();
        if let Some(OpFault::Fail(s)) = fault {
            return (Self::op_fault_resp(s), None);
        }
        let fields = match self.parse_body(body) {
            Ok(f) => f,
            Err(r) => return (r, None),
        };
        if let Err(r) = self.validate(&fields) {
            return (r, None);
        }
        let _ = headers;
        if self.alt_key_active() {
            if let Some(k) = self.key_value_of(&fields) {
                if self.by_key.contains_key(&k) {
                    let kc = &self.cfg.key_column;
                    return (
                        Resp::error(
                            412,
                            "0x80040237",
                            &format!("A record that has the attribute values {kc} already exists. The entity key {kc}_key requires that this set of attributes contains unique values. Select unique values and try again."),
                        ),
                        None,
                    );
                }
            }
        }
        let id = fields
            .get("leadid")
            .and_then(Value::as_str)
            .map(str::to_string);
        let id = self.insert(fields, id, journal);
        let idx = self.by_id[&id];
        if let Some(OpFault::CommitThenFail(s)) = fault {
            return (Self::op_fault_resp(s), Some(format!("leads({id})")));
        }
        let r = if prefer_repr {
            self.written(idx, 201, true, select, &id)
        } else {
            self.written(idx, 204, false, select, &id)
        };
        (r, Some(format!("leads({id})")))
    }

    fn upsert(
        &mut self,
        key: KeySpec,
        headers: &[(String, String)],
        body: &str,
        prefer_repr: bool,
        select: Option<&str>,
        journal: &mut Vec<Undo>,
    ) -> (Resp, Option<String>) {
        let fault = self.take_op_fault();
        if let Some(OpFault::Fail(s)) = fault {
            return (Self::op_fault_resp(s), None);
        }
        let mut fields = match self.parse_body(body) {
            Ok(f) => f,
            Err(r) => return (r, None),
        };
        if let Err(r) = self.validate(&fields) {
            return (r, None);
        }
        let existing = self.find(&key);
        let if_match = header_of(headers, "if-match");
        let if_none_match = header_of(headers, "if-none-match").filter(|v| *v != "null");
        let key_path = match &key {
            KeySpec::Id(id) => id.clone(),
            KeySpec::Alt(c, v) => format!("{c}='{}'", v.replace('\'', "''")),
        };
        let (idx, status) = match (existing, if_match, if_none_match) {
            (None, Some(_), _) => return (self.not_found(&key), None),
            (Some(_), _, Some("*")) => {
                return (
                    Resp::error(412, "", "A record with matching key values already exists."),
                    None,
                )
            }
            (Some(i), Some(m), _) if m != "*" && m != format!("W/\"{}\"", self.leads[i].version) => {
                return (
                    Resp::error(412, "0x80060882", "The version of the existing record doesn't match the RowVersion property provided."),
                    None,
                )
            }
            (Some(i), _, _) => {
                // Key columns are removed from an update's body.
                if let KeySpec::Alt(c, _) = &key {
                    fields.remove(c);
                }
                self.update(i, fields, journal);
                (i, 200)
            }
            (None, None, _) => {
                let mut f = Map::new();
                let mut id = None;
                match &key {
                    KeySpec::Alt(c, v) => {
                        f.insert(c.clone(), Value::String(v.clone()));
                    }
                    KeySpec::Id(i) => id = Some(i.clone()),
                }
                // On create the body's values override the URL's key values.
                f.extend(fields);
                let id = self.insert(f, id, journal);
                (self.by_id[&id], 201)
            }
        };
        let entity = format!("leads({})", self.leads[idx].id);
        if let Some(OpFault::CommitThenFail(s)) = fault {
            return (Self::op_fault_resp(s), Some(entity));
        }
        let r = if prefer_repr {
            self.written(idx, status, true, select, &key_path)
        } else {
            self.written(idx, 204, false, select, &key_path)
        };
        (r, Some(entity))
    }

    // ---- $batch -----------------------------------------------------------------------

    fn batch(&mut self, parsed: ParsedBatch<'_>) -> (Resp, usize) {
        let ParsedBatch {
            units,
            ops,
            continue_on_error,
        } = parsed;
        let rb = format!("batchresponse_{}", guid());
        let mut out = String::with_capacity(ops * 1024);
        let mut failed_alone: Option<String> = None;
        for unit in units {
            match unit {
                BatchUnit::Single(cid, r) => {
                    let mut j = Vec::new();
                    let (resp, _) = self.batch_op(&r, &HashMap::new(), &mut j);
                    if resp.status >= 400 && !continue_on_error {
                        failed_alone = Some(http_part(cid, &resp));
                        break;
                    }
                    let _ = write!(out, "--{rb}\r\n");
                    write_http_part(&mut out, cid, &resp);
                    out.push_str("\r\n");
                }
                BatchUnit::ChangeSet(reqs) => {
                    let mut journal = Vec::new();
                    let mut refs: HashMap<String, String> = HashMap::new();
                    let mut resps = Vec::new();
                    let mut failure: Option<String> = None;
                    for (cid, r) in reqs {
                        let (resp, entity) = self.batch_op(&r, &refs, &mut journal);
                        if resp.status >= 400 {
                            failure = Some(http_part(cid, &resp));
                            break;
                        }
                        if let (Some(c), Some(e)) = (cid, entity) {
                            refs.insert(c.to_string(), e);
                        }
                        resps.push((cid, resp));
                    }
                    match failure {
                        Some(part) => {
                            // A change set is atomic: undo its earlier parts.
                            self.rollback(journal);
                            if !continue_on_error {
                                failed_alone = Some(part);
                                break;
                            }
                            let _ = write!(out, "--{rb}\r\n{part}\r\n");
                        }
                        None => {
                            let cb = format!("changesetresponse_{}", guid());
                            let _ = write!(
                                out,
                                "--{rb}\r\nContent-Type: multipart/mixed; boundary={cb}\r\n\r\n"
                            );
                            for (cid, resp) in resps {
                                let _ = write!(out, "--{cb}\r\n");
                                write_http_part(&mut out, cid, &resp);
                                out.push_str("\r\n");
                            }
                            let _ = write!(out, "--{cb}--\r\n");
                        }
                    }
                }
            }
        }
        let ct = format!("multipart/mixed; boundary={rb}");
        if let Some(part) = failed_alone {
            let mut r = Resp::new(400).header("Content-Type", ct);
            r.body = format!("--{rb}\r\n{part}\r\n--{rb}--\r\n");
            return (r, ops);
        }
        let _ = write!(out, "--{rb}--\r\n");
        let mut r = Resp::new(200).header("Content-Type", ct);
        if continue_on_error {
            r = r.header("Preference-Applied", "odata.continue-on-error");
        }
        r.body = out;
        (r, ops)
    }

    fn batch_op(
        &mut self,
        r: &HttpRequest,
        refs: &HashMap<String, String>,
        journal: &mut Vec<Undo>,
    ) -> (Resp, Option<String>) {
        // The URL may be absolute, absolute-path, relative to the service root, or `$n`.
        let url = r.url;
        let (path, query) = url.split_once('?').unwrap_or((url, ""));
        let path = percent_decode(path);
        let rel = if let Some(n) = path.strip_prefix('$') {
            match refs.get(n) {
                Some(e) => e.clone(),
                None => {
                    return (
                        Resp::error(
                            400,
                            "0x80060888",
                            &format!(
                                "Content-ID Reference: '${n}' does not exist in the batch context."
                            ),
                        ),
                        None,
                    )
                }
            }
        } else if let Some(i) = path.find(API_PATH) {
            path[i + API_PATH.len()..]
                .trim_start_matches('/')
                .to_string()
        } else {
            path.trim_start_matches('/').to_string()
        };
        let q = query_decode(Some(query));
        self.operation(&r.method, &rel, &q, &r.headers, r.body, journal)
    }
}

/// A `$batch` request read and checked, not yet applied: its parts borrow the body.
struct ParsedBatch<'a> {
    units: Vec<BatchUnit<'a>>,
    ops: usize,
    continue_on_error: bool,
}

enum BatchUnit<'a> {
    Single(Option<&'a str>, HttpRequest<'a>),
    ChangeSet(Vec<(Option<&'a str>, HttpRequest<'a>)>),
}

struct MimePart<'a> {
    headers: Vec<(&'a str, &'a str)>,
    body: &'a str,
}

impl<'a> MimePart<'a> {
    fn header(&self, name: &str) -> Option<&'a str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }
}

struct HttpRequest<'a> {
    method: String,
    url: &'a str,
    headers: Vec<(String, String)>,
    body: &'a str,
}

fn batch_error(message: &str, ops: usize) -> (Resp, usize) {
    (Resp::error(400, "0x80060888", message), ops)
}

/// Read a `$batch` request into its units, or the answer that refuses it (with the number of
/// operations counted).
fn parse_batch<'a>(
    headers: &[(String, String)],
    body: &'a str,
) -> Result<ParsedBatch<'a>, (Resp, usize)> {
    let ct = header_of(headers, "content-type").unwrap_or("");
    let Some(boundary) = boundary_of(ct).filter(|_| ct.starts_with("multipart/mixed")) else {
        return Err(batch_error("The batch request must have a \"Content-Type\" header of \"multipart/mixed\" with a boundary.", 0));
    };
    let continue_on_error =
        header_of(headers, "prefer").is_some_and(|p| p.contains("odata.continue-on-error"));
    let parts = split_multipart(body, &boundary).map_err(|e| batch_error(&e, 0))?;
    let mut units: Vec<BatchUnit> = Vec::with_capacity(parts.len());
    let mut ops = 0usize;
    for p in &parts {
        let pct = p.header("content-type").unwrap_or("");
        if pct.starts_with("multipart/mixed") {
            let Some(cb) = boundary_of(pct) else {
                return Err(batch_error("A change set has no boundary.", 0));
            };
            let inner = split_multipart(p.body, &cb).map_err(|e| batch_error(&e, 0))?;
            let mut reqs = Vec::with_capacity(inner.len());
            for ip in inner {
                let Some(cid) = ip.header("content-id") else {
                    return Err(batch_error(
                        "Content-ID header not present in a change set part.",
                        0,
                    ));
                };
                let r = parse_http_request(ip.body).map_err(|e| batch_error(&e, 0))?;
                if r.method == "GET" {
                    return Err(batch_error(
                        "GET requests are not allowed inside a change set.",
                        0,
                    ));
                }
                reqs.push((Some(cid), r));
            }
            ops += reqs.len();
            units.push(BatchUnit::ChangeSet(reqs));
        } else {
            let cid = p.header("content-id");
            let r = parse_http_request(p.body).map_err(|e| batch_error(&e, 0))?;
            units.push(BatchUnit::Single(cid, r));
            ops += 1;
        }
    }
    if ops > 1000 {
        return Err((
            Resp::error(
                400,
                "0x8006088a",
                "The number of requests in a batch exceeded the limit of 1000.",
            ),
            ops,
        ));
    }
    Ok(ParsedBatch {
        units,
        ops,
        continue_on_error,
    })
}

fn boundary_of(content_type: &str) -> Option<String> {
    content_type.split(';').find_map(|p| {
        let p = p.trim();
        p.strip_prefix("boundary=")
            .map(|b| b.trim_matches('"').to_string())
    })
}

/// A part's headers and the rest of it, both borrowed.
fn split_head(text: &str) -> (Vec<(&str, &str)>, &str) {
    let mut headers = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (line, tail) = rest.split_once('\n').unwrap_or((rest, ""));
        rest = tail;
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim(), v.trim()));
        }
    }
    (headers, rest)
}

/// Split a multipart body into its parts (preamble and epilogue dropped), borrowed.
fn split_multipart<'a>(body: &'a str, boundary: &str) -> Result<Vec<MimePart<'a>>, String> {
    let delim = format!("--{boundary}");
    let mut parts = Vec::new();
    let mut current: Option<usize> = None;
    let mut offset = 0;
    let mut closed = false;
    for line in body.split_inclusive('\n') {
        let line_start = offset;
        offset += line.len();
        let Some(after) = line.trim_end().strip_prefix(delim.as_str()) else {
            continue;
        };
        if after != "--" && !after.is_empty() {
            continue;
        }
        if let Some(start) = current.take() {
            parts.push(&body[start..line_start]);
        }
        if after == "--" {
            closed = true;
            break;
        }
        current = Some(offset);
    }
    if !closed {
        return Err(format!(
            "The multipart body is not closed by --{boundary}--."
        ));
    }
    Ok(parts
        .into_iter()
        .map(|text| {
            let (headers, body) = split_head(text);
            MimePart { headers, body }
        })
        .collect())
}

fn parse_http_request(text: &str) -> Result<HttpRequest<'_>, String> {
    let text = text.trim_start_matches(['\r', '\n']);
    let (first, rest) = text.split_once('\n').unwrap_or((text, ""));
    let mut words = first.trim_end_matches('\r').split_whitespace();
    let (Some(method), Some(url)) = (words.next(), words.next()) else {
        return Err(format!("A batch part has no request line: {first:?}"));
    };
    let (headers, body) = split_head(rest);
    Ok(HttpRequest {
        method: method.to_ascii_uppercase(),
        url,
        headers: headers
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        body: body.trim(),
    })
}

fn http_part(content_id: Option<&str>, resp: &Resp) -> String {
    let mut s = String::new();
    write_http_part(&mut s, content_id, resp);
    s
}

fn write_http_part(out: &mut String, content_id: Option<&str>, resp: &Resp) {
    out.push_str("Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n");
    // Dataverse echoes the Content-ID of successful change-set parts; the failing part of a
    // change set comes back alone, without one [U].
    if let Some(c) = content_id.filter(|_| resp.status < 400) {
        let _ = write!(out, "Content-ID: {c}\r\n");
    }
    out.push_str("\r\n");
    resp.write_http(out);
}

/// `x5t#S256` of the first certificate of a PEM text.
pub fn cert_sha256_thumbprint(pem: &str) -> Option<String> {
    let start = pem.find("-----BEGIN CERTIFICATE-----")? + "-----BEGIN CERTIFICATE-----".len();
    let end = start + pem[start..].find("-----END CERTIFICATE-----")?;
    let b64: String = pem[start..end]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let der = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(&der)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_round_trip_and_keys() {
        let body = "--b\r\nContent-Type: application/http\r\n\r\nPOST /api/data/v9.2/leads HTTP/1.1\r\nContent-Type: application/json\r\n\r\n{\"a\":1}\r\n--b--\r\n";
        let parts = split_multipart(body, "b").unwrap();
        assert_eq!(parts.len(), 1);
        let r = parse_http_request(parts[0].body).unwrap();
        assert_eq!(r.method, "POST");
        assert_eq!(r.body, "{\"a\":1}");
        assert!(split_multipart("--b\r\n", "b").is_err());
        match parse_key("new_k='it''s'").unwrap() {
            KeySpec::Alt(c, v) => {
                assert_eq!(c, "new_k");
                assert_eq!(v, "it's");
            }
            KeySpec::Id(_) => panic!("alt key expected"),
        }
        assert!(matches!(parse_key("0000-1").unwrap(), KeySpec::Id(_)));
        assert_eq!(percent_decode("a%27b%2"), "a'b%2");
    }
}
