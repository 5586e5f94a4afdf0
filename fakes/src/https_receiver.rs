//! A fake HTTPS endpoint: what a publisher's Power Automate flow or webhook receiver looks like
//! to leadsync's `https` target.
//!
//! It listens on 127.0.0.1 over plain HTTP or over TLS with certificates made at run time
//! ([`TestPki`], rcgen), optionally requiring a client certificate (mutual TLS). It records
//! every request (method, path, query, headers, body, arrival time, whether a client
//! certificate was shown), can require an auth header and a valid HMAC signature (the same
//! check a real receiver does: [`verify_signature`]), and stores each accepted body once per
//! `Idempotency-Key`, as an idempotent receiver would. Tests script its answers: N× 429 with
//! `Retry-After`, 5xx, 4xx with a body, a redirect to another host, slow replies, and added
//! latency on every request (benchmarks use it); and, for fault-injection tests, a connection
//! dropped without an answer ([`Reply::reset`]), a write stored and then answered with a
//! failure or too late ([`Reply::commit_then`]), and a slow normal answer ([`Reply::normal`]).
//!
//! It owns nothing but its own state; it never decides what leadsync should do.

use axum::body::Bytes;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_rustls::rustls;

/// Default header names leadsync signs with (kept in step with the connector's defaults).
pub const TIMESTAMP_HEADER: &str = "x-leadsync-timestamp";
pub const SIGNATURE_HEADER: &str = "x-leadsync-signature";

/// Certificates made at run time: a server CA and a server certificate for `127.0.0.1` and
/// `localhost`, and a separate client CA with one client certificate (for mutual TLS).
#[derive(Clone)]
pub struct TestPki {
    /// The CA that signed the server certificate (what a client must trust).
    pub ca_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    /// The CA the server trusts for client certificates.
    pub client_ca_pem: String,
    pub client_cert_pem: String,
    pub client_key_pem: String,
    server_cert_der: Vec<u8>,
    server_key_der: Vec<u8>,
    client_ca_der: Vec<u8>,
}

fn new_ca(
    name: &str,
) -> Result<(rcgen::Certificate, rcgen::Issuer<'static, rcgen::KeyPair>), rcgen::Error> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert, rcgen::Issuer::new(params, key)))
}

fn leaf(
    names: Vec<String>,
    cn: &str,
    usage: rcgen::ExtendedKeyUsagePurpose,
    issuer: &rcgen::Issuer<'static, rcgen::KeyPair>,
) -> Result<(rcgen::Certificate, rcgen::KeyPair), rcgen::Error> {
    let mut params = rcgen::CertificateParams::new(names)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    let key = rcgen::KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert, key))
}

impl TestPki {
    /// Make a fresh set. Two calls give two unrelated CAs (for "unknown CA" tests).
    pub fn generate() -> Result<TestPki, rcgen::Error> {
        let (ca, ca_issuer) = new_ca("leadsync test server CA")?;
        let (server, server_key) = leaf(
            vec!["127.0.0.1".into(), "localhost".into()],
            "leadsync test receiver",
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            &ca_issuer,
        )?;
        let (client_ca, client_issuer) = new_ca("leadsync test client CA")?;
        let (client, client_key) = leaf(
            Vec::new(),
            "leadsync test client",
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            &client_issuer,
        )?;
        Ok(TestPki {
            ca_pem: ca.pem(),
            server_cert_pem: server.pem(),
            server_key_pem: server_key.serialize_pem(),
            client_ca_pem: client_ca.pem(),
            client_cert_pem: client.pem(),
            client_key_pem: client_key.serialize_pem(),
            server_cert_der: server.der().to_vec(),
            server_key_der: server_key.serialize_der(),
            client_ca_der: client_ca.der().to_vec(),
        })
    }

    fn server_config(&self, mutual: bool) -> Result<rustls::ServerConfig, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = if mutual {
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(rustls::pki_types::CertificateDer::from(
                    self.client_ca_der.clone(),
                ))
                .map_err(|e| e.to_string())?;
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| e.to_string())?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        builder
            .with_single_cert(
                vec![rustls::pki_types::CertificateDer::from(
                    self.server_cert_der.clone(),
                )],
                rustls::pki_types::PrivateKeyDer::Pkcs8(self.server_key_der.clone().into()),
            )
            .map_err(|e| e.to_string())
    }
}

/// One scripted answer. Build with the constructors, then `.after(delay)` for a slow one.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Wait this long before answering (a slow endpoint; a client timeout shorter than this
    /// sees no answer).
    pub delay: Duration,
    /// What happens to the request besides the answer.
    pub effect: ReplyEffect,
}

/// What a scripted reply does with the request it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyEffect {
    /// Nothing is stored; the scripted status is the answer (the default).
    AnswerOnly,
    /// Handled as normal (auth, signature, idempotent store, normal answer), after `delay`.
    Normal,
    /// Stored as normal, then answered with the scripted status after `delay`: the write
    /// happened but the client sees a failure (or, with a delay past its timeout, nothing).
    CommitThenAnswer,
    /// Nothing stored; the connection is closed without an answer after `delay`.
    Reset,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: String::new(),
            delay: Duration::ZERO,
            effect: ReplyEffect::AnswerOnly,
        }
    }
    /// The normal handling (use with `.after(d)` for a slow but successful answer).
    pub fn normal() -> Reply {
        let mut r = Reply::status(0);
        r.effect = ReplyEffect::Normal;
        r
    }
    /// Store the body as normal, then answer `status` (after `.after(d)`, if given).
    pub fn commit_then(status: u16) -> Reply {
        let mut r = Reply::status(status);
        r.effect = ReplyEffect::CommitThenAnswer;
        r
    }
    /// Close the connection without answering (the client sees a reset / closed connection).
    pub fn reset() -> Reply {
        let mut r = Reply::status(0);
        r.effect = ReplyEffect::Reset;
        r
    }
    /// 429 with `Retry-After: <value>` (seconds or an HTTP date).
    pub fn throttled(retry_after: &str) -> Reply {
        Reply::status(429).header("retry-after", retry_after)
    }
    /// A status with a body (a 4xx a receiver explains, a 5xx page).
    pub fn with_body(status: u16, body: &str) -> Reply {
        let mut r = Reply::status(status);
        r.body = body.to_string();
        r
    }
    /// A 307 to `location` (another host, to check it is not followed).
    pub fn redirect(location: &str) -> Reply {
        Reply::status(307).header("location", location)
    }
    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
    pub fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
}

/// What a recorded request's signature looked like to the receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureCheck {
    /// No signing secret configured on the receiver.
    NotChecked,
    Valid,
    /// Headers absent.
    Missing,
    /// The HMAC does not match.
    Invalid,
    /// The HMAC matches but the timestamp is outside the replay window.
    Stale,
}

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct ReceivedRequest {
    pub method: String,
    pub path: String,
    /// The raw query string, if any.
    pub query: Option<String>,
    /// Header names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Monotonic arrival time (compare two requests with it).
    pub arrived: Instant,
    pub arrived_at: DateTime<Utc>,
    /// The connection presented a client certificate the server accepted.
    pub client_cert: bool,
    pub signature: SignatureCheck,
    /// The status the receiver answered.
    pub answered: u16,
}

impl ReceivedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// A body the receiver accepted and stored (once per `Idempotency-Key`).
#[derive(Debug, Clone)]
pub struct StoredLead {
    pub id: String,
    pub idempotency_key: Option<String>,
    pub body: Value,
}

/// How the receiver is set up. Start from [`ReceiverOptions::http`] or
/// [`ReceiverOptions::https`].
#[derive(Clone)]
pub struct ReceiverOptions {
    tls: Option<(Arc<TestPki>, bool)>,
    signing_secret: Option<String>,
    require_signature: bool,
    replay_window: Duration,
    timestamp_header: String,
    signature_header: String,
    required_header: Option<(String, String)>,
    success_status: u16,
    return_id: bool,
    options_status: u16,
    max_in_flight: Option<usize>,
}

impl ReceiverOptions {
    /// Plain HTTP.
    pub fn http() -> Self {
        ReceiverOptions {
            tls: None,
            signing_secret: None,
            require_signature: false,
            replay_window: Duration::from_secs(300),
            timestamp_header: TIMESTAMP_HEADER.into(),
            signature_header: SIGNATURE_HEADER.into(),
            required_header: None,
            success_status: 202,
            return_id: false,
            options_status: 405,
            max_in_flight: None,
        }
    }
    /// TLS with `pki`'s server certificate.
    pub fn https(pki: &TestPki) -> Self {
        ReceiverOptions {
            tls: Some((Arc::new(pki.clone()), false)),
            ..Self::http()
        }
    }
    /// Require a client certificate signed by `pki`'s client CA (the handshake fails without).
    pub fn mutual_tls(mut self) -> Self {
        if let Some((_, mutual)) = self.tls.as_mut() {
            *mutual = true;
        }
        self
    }
    /// Check signatures with `secret`; with `require`, answer 401 to a bad, missing or stale one.
    pub fn signing_secret(mut self, secret: &str, require: bool) -> Self {
        self.signing_secret = Some(secret.to_string());
        self.require_signature = require;
        self
    }
    pub fn signature_headers(mut self, timestamp: &str, signature: &str) -> Self {
        self.timestamp_header = timestamp.to_ascii_lowercase();
        self.signature_header = signature.to_ascii_lowercase();
        self
    }
    /// Answer 401 unless header `name` has exactly `value` (e.g. `authorization`,
    /// `Bearer t0ken`).
    pub fn require_header(mut self, name: &str, value: &str) -> Self {
        self.required_header = Some((name.to_ascii_lowercase(), value.to_string()));
        self
    }
    /// Answer accepted POSTs with this status (default 202, as Power Automate does).
    pub fn success_status(mut self, status: u16) -> Self {
        self.success_status = status;
        self
    }
    /// Answer accepted POSTs with `Location: /leads/<id>` and `{"id": "<id>"}`.
    pub fn return_id(mut self) -> Self {
        self.return_id = true;
        self
    }
    /// Answer `429 Too Many Requests` (no `Retry-After`) to a request that arrives while
    /// `n` others are in flight, as a CRM's per-user concurrency limit does.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = Some(n);
        self
    }
    /// The status for OPTIONS / HEAD requests (default 405).
    pub fn options_status(mut self, status: u16) -> Self {
        self.options_status = status;
        self
    }
}

#[derive(Default)]
struct ReceiverState {
    script: VecDeque<Reply>,
    latency: Duration,
    requests: Vec<ReceivedRequest>,
    stored: Vec<StoredLead>,
    by_key: HashMap<String, String>,
    handshake_failures: u64,
}

struct Shared {
    options: ReceiverOptions,
    state: Mutex<ReceiverState>,
    /// Requests being handled now, the most seen at once, and those refused for the limit.
    in_flight: std::sync::atomic::AtomicUsize,
    peak_in_flight: std::sync::atomic::AtomicUsize,
    over_limit: std::sync::atomic::AtomicU64,
}

/// Counts a request in flight for as long as its handler runs (even if the client drops it).
struct InFlight<'a>(&'a Shared);

impl<'a> InFlight<'a> {
    fn enter(shared: &'a Shared) -> (InFlight<'a>, usize) {
        use std::sync::atomic::Ordering;
        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.peak_in_flight.fetch_max(now, Ordering::SeqCst);
        (InFlight(shared), now)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, ReceiverState> {
        // A test that panicked while holding the lock must not hide the other tests' data.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Clone)]
struct ConnInfo {
    client_cert: bool,
    /// Notified by a handler to drop its connection without an answer.
    kill: Arc<tokio::sync::Notify>,
}

/// A running receiver. Dropping it stops it.
pub struct HttpsReceiver {
    base_url: String,
    port: u16,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HttpsReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The HMAC-SHA256 a receiver recomputes: over `<timestamp>.<body>`, compared with the
/// `sha256=<hex>` header value in constant time.
pub fn verify_signature(secret: &[u8], timestamp: &str, body: &[u8], header_value: &str) -> bool {
    let Some(hex_sig) = header_value.trim().strip_prefix("sha256=") else {
        return false;
    };
    let Ok(given) = hex::decode(hex_sig) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&given).is_ok()
}

impl HttpsReceiver {
    /// Start on 127.0.0.1 on a free port.
    pub async fn start(options: ReceiverOptions) -> std::io::Result<HttpsReceiver> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let acceptor = match &options.tls {
            Some((pki, mutual)) => Some(tokio_rustls::TlsAcceptor::from(Arc::new(
                pki.server_config(*mutual).map_err(std::io::Error::other)?,
            ))),
            None => None,
        };
        let scheme = if acceptor.is_some() { "https" } else { "http" };
        let shared = Arc::new(Shared {
            options,
            state: Mutex::new(ReceiverState::default()),
            in_flight: Default::default(),
            peak_in_flight: Default::default(),
            over_limit: Default::default(),
        });
        let app = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        let accept_shared = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let app = app.clone();
                let acceptor = acceptor.clone();
                let shared = Arc::clone(&accept_shared);
                tokio::spawn(async move {
                    match acceptor {
                        Some(acceptor) => match acceptor.accept(tcp).await {
                            Ok(tls) => {
                                let client_cert = tls
                                    .get_ref()
                                    .1
                                    .peer_certificates()
                                    .is_some_and(|c| !c.is_empty());
                                serve(tls, app, client_cert).await
                            }
                            Err(_) => shared.lock().handshake_failures += 1,
                        },
                        None => serve(tcp, app, false).await,
                    }
                });
            }
        });
        Ok(HttpsReceiver {
            base_url: format!("{scheme}://127.0.0.1:{port}"),
            port,
            shared,
            task,
        })
    }

    /// `http(s)://127.0.0.1:<port>`, no trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }
    /// The same server named `localhost`: another host as far as a client's redirect policy
    /// is concerned.
    pub fn other_host_url(&self, path: &str) -> String {
        let scheme = if self.shared.options.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://localhost:{}{path}", self.port)
    }
    pub fn url(&self, path_and_query: &str) -> String {
        format!("{}{path_and_query}", self.base_url)
    }

    /// Answer the next POSTs with these replies, in order, before going back to normal.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.shared.lock().script.extend(replies);
    }
    /// Answer the next `n` POSTs with `reply`.
    pub fn fail_next(&self, n: usize, reply: Reply) {
        self.script(std::iter::repeat_n(reply, n));
    }
    /// Latency added to every request.
    pub fn set_latency(&self, latency: Duration) {
        self.shared.lock().latency = latency;
    }

    /// Every request received, in arrival order.
    pub fn requests(&self) -> Vec<ReceivedRequest> {
        self.shared.lock().requests.clone()
    }
    pub fn request_count(&self) -> usize {
        self.shared.lock().requests.len()
    }
    /// The POSTs only.
    pub fn posts(&self) -> Vec<ReceivedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == "POST")
            .collect()
    }
    /// Accepted bodies, one per `Idempotency-Key`, in arrival order.
    pub fn stored(&self) -> Vec<StoredLead> {
        self.shared.lock().stored.clone()
    }
    /// TLS handshakes that failed (a client that did not trust us, or showed no certificate
    /// when one was required).
    /// The most requests that were being handled at once.
    pub fn peak_in_flight(&self) -> usize {
        self.shared
            .peak_in_flight
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Requests refused with 429 for arriving over [`ReceiverOptions::max_in_flight`].
    pub fn over_limit_count(&self) -> u64 {
        self.shared
            .over_limit
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn handshake_failures(&self) -> u64 {
        self.shared.lock().handshake_failures
    }
}

async fn serve<I>(io: I, app: Router, client_cert: bool)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use tower::ServiceExt;
    let info = ConnInfo {
        client_cert,
        kill: Arc::new(tokio::sync::Notify::new()),
    };
    let kill = Arc::clone(&info.kill);
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(info.clone());
        app.clone().oneshot(req)
    });
    let builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(io), svc);
    // A `Reply::reset` drops the connection (and the request in it) without an answer.
    tokio::select! {
        _ = conn => {}
        _ = kill.notified() => {}
    }
}

fn signature_check(o: &ReceiverOptions, headers: &HeaderMap, body: &[u8]) -> SignatureCheck {
    let Some(secret) = &o.signing_secret else {
        return SignatureCheck::NotChecked;
    };
    let get = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let (Some(ts), Some(sig)) = (get(&o.timestamp_header), get(&o.signature_header)) else {
        return SignatureCheck::Missing;
    };
    if !verify_signature(secret.as_bytes(), ts, body, sig) {
        return SignatureCheck::Invalid;
    }
    let fresh = ts
        .parse::<i64>()
        .is_ok_and(|t| (Utc::now().timestamp() - t).unsigned_abs() <= o.replay_window.as_secs());
    if fresh {
        SignatureCheck::Valid
    } else {
        SignatureCheck::Stale
    }
}

fn reply_response(r: &Reply) -> Response {
    let mut resp = (
        StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        r.body.clone(),
    )
        .into_response();
    for (k, v) in &r.headers {
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(k.as_str()), HeaderValue::from_str(v)) {
            resp.headers_mut().append(k, v);
        }
    }
    resp
}

fn json_error(status: u16, message: &str) -> (u16, Response) {
    let r = Reply::with_body(status, &serde_json::json!({ "error": message }).to_string())
        .header("content-type", "application/json");
    (status, reply_response(&r))
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    Extension(info): Extension<ConnInfo>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let arrived = Instant::now();
    let arrived_at = Utc::now();
    let o = &shared.options;
    let (_in_flight, now_in_flight) = InFlight::enter(&shared);
    if o.max_in_flight.is_some_and(|max| now_in_flight > max) && method == Method::POST {
        shared
            .over_limit
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let r = Reply::status(429);
        let signature = SignatureCheck::NotChecked;
        let record = received(
            &method, &uri, &headers, &body, arrived, arrived_at, &info, signature, 429,
        );
        insert_request(&shared, record);
        return reply_response(&r);
    }
    let signature = signature_check(o, &headers, &body);
    let (latency, scripted) = {
        let mut st = shared.lock();
        let scripted = if method == Method::POST {
            st.script.pop_front()
        } else {
            None
        };
        (st.latency, scripted)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let (status, response) = if let Some(r) = scripted {
        match r.effect {
            ReplyEffect::AnswerOnly => {
                if !r.delay.is_zero() {
                    tokio::time::sleep(r.delay).await;
                }
                (r.status, reply_response(&r))
            }
            // Stored and logged at once: a client that gives up waiting (and drops the
            // connection, and with it this handler) does not undo the write.
            ReplyEffect::Normal | ReplyEffect::CommitThenAnswer => {
                let (status, response) = accept(&shared, &headers, &body, signature);
                let (status, response) = if r.effect == ReplyEffect::Normal {
                    (status, response)
                } else {
                    (r.status, reply_response(&r))
                };
                let record = received(
                    &method, &uri, &headers, &body, arrived, arrived_at, &info, signature, status,
                );
                insert_request(&shared, record);
                tokio::time::sleep(r.delay).await;
                return response;
            }
            ReplyEffect::Reset => {
                tokio::time::sleep(r.delay).await;
                // Logged as answered 0: no answer was sent.
                let record = received(
                    &method, &uri, &headers, &body, arrived, arrived_at, &info, signature, 0,
                );
                insert_request(&shared, record);
                info.kill.notify_one();
                std::future::pending::<()>().await;
                unreachable!("the connection is dropped")
            }
        }
    } else if method != Method::POST {
        (
            o.options_status,
            reply_response(&Reply::status(o.options_status)),
        )
    } else {
        accept(&shared, &headers, &body, signature)
    };
    let record = received(
        &method, &uri, &headers, &body, arrived, arrived_at, &info, signature, status,
    );
    insert_request(&shared, record);
    response
}

#[allow(clippy::too_many_arguments)]
fn received(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    arrived: Instant,
    arrived_at: DateTime<Utc>,
    info: &ConnInfo,
    signature: SignatureCheck,
    answered: u16,
) -> ReceivedRequest {
    ReceivedRequest {
        method: method.to_string(),
        path: uri.path().to_string(),
        query: uri.query().map(str::to_string),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.to_vec(),
        arrived,
        arrived_at,
        client_cert: info.client_cert,
        signature,
        answered,
    }
}

fn insert_request(shared: &Shared, record: ReceivedRequest) {
    let mut st = shared.lock();
    // Keep arrival order even when a slow reply finished after a later request.
    let at = st.requests.partition_point(|r| r.arrived <= record.arrived);
    st.requests.insert(at, record);
}

/// The normal path of a POST: auth, signature, JSON, idempotent store.
fn accept(
    shared: &Shared,
    headers: &HeaderMap,
    body: &[u8],
    signature: SignatureCheck,
) -> (u16, Response) {
    let o = &shared.options;
    if let Some((name, value)) = &o.required_header {
        if headers.get(name.as_str()).and_then(|v| v.to_str().ok()) != Some(value.as_str()) {
            return json_error(401, "missing or wrong credentials");
        }
    }
    if o.require_signature && signature != SignatureCheck::Valid {
        return json_error(401, &format!("signature {signature:?}"));
    }
    let is_json = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !is_json {
        return json_error(415, "expected Content-Type: application/json");
    }
    let value: Value = match serde_json::from_slice(body) {
        Ok(v @ (Value::Object(_) | Value::Array(_))) => v,
        Ok(_) => return json_error(400, "expected a JSON object or array"),
        Err(e) => return json_error(400, &format!("invalid JSON: {e}")),
    };
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut st = shared.lock();
    let existing = key.as_ref().and_then(|k| st.by_key.get(k).cloned());
    let (id, status) = match existing {
        // A repeat: answered as before, stored once.
        Some(id) => (id, 200),
        None => {
            let id = format!("{}", st.stored.len() + 1);
            if let Some(k) = &key {
                st.by_key.insert(k.clone(), id.clone());
            }
            st.stored.push(StoredLead {
                id: id.clone(),
                idempotency_key: key,
                body: value,
            });
            (id, o.success_status)
        }
    };
    let reply = if o.return_id {
        Reply::with_body(status, &serde_json::json!({ "id": id }).to_string())
            .header("content-type", "application/json")
            .header("location", &format!("/leads/{id}"))
    } else {
        Reply::status(status)
    };
    (status, reply_response(&reply))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_verification_matches_a_known_vector() {
        // HMAC-SHA256(key="secret", "1700000000.{}")
        let mut mac = Hmac::<Sha256>::new_from_slice(b"secret").unwrap();
        mac.update(b"1700000000.{}");
        let sig = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        assert!(verify_signature(b"secret", "1700000000", b"{}", &sig));
        assert!(!verify_signature(b"other", "1700000000", b"{}", &sig));
        assert!(!verify_signature(b"secret", "1700000001", b"{}", &sig));
        assert!(!verify_signature(b"secret", "1700000000", b"{}", "sha1=00"));
    }

    #[test]
    fn pki_generates_distinct_cas() {
        let a = TestPki::generate().unwrap();
        let b = TestPki::generate().unwrap();
        assert_ne!(a.ca_pem, b.ca_pem);
        assert!(a.server_key_pem.contains("PRIVATE KEY"));
        assert!(a.server_config(true).is_ok());
    }
}
