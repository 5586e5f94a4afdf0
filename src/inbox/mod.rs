//! The `https_inbox` source: an HTTPS endpoint the marketplace POSTs each lead to, once.
//!
//! The marketplace does not resend a lead it could not deliver, so this is where a lead
//! becomes durable: a POST is answered `200` only after its lead is committed to the ledger
//! ([`store::group_commit`], concurrent POSTs sharing one transaction); if the ledger cannot
//! take it, `503` with `Retry-After`. A staged lead is pushed at once through the current
//! configuration's [`InboxRoute`].
//!
//! The listener is bound once for the life of the process and survives SIGHUP: a reload
//! swaps the [`gate::Gate`] (secrets, networks, limits) and the TLS certificate in place, so
//! the marketplace never meets a closed port during a reload. Connections are served by
//! hyper (HTTP/1.1) behind tokio-rustls, with a header read timeout against slow clients, a
//! body timeout and size limit, and a cap on open connections.

pub mod gate;
pub mod refusals;
pub mod store;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{HttpsInboxSettings, InboxTls, SourceKind, SourceSettings};
use crate::ledger::Ledger;
use crate::metrics as m;
use crate::pipeline::Target;
use gate::{Admission, Gate};
use refusals::{network_of, Refusal, RefusalLog};
use store::{Arrival, ReadBody};

/// How long a client may take to send its request headers (slow-loris) or its TLS handshake.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send its body.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Open connections at most; beyond it new ones are closed at once.
const MAX_CONNECTIONS: usize = 512;
/// POSTs waiting for the group commit at most; beyond it, `503`.
const QUEUE: usize = 4096;
/// What a `503` asks the client to wait.
const RETRY_AFTER_SECS: u64 = 5;

/// Where staged leads go: the current configuration's targets, and how to start their push.
pub struct InboxRoute {
    pub targets: Vec<Arc<Target>>,
    pub on_staged: Box<dyn Fn() + Send + Sync>,
}

impl InboxRoute {
    /// No targets yet (before the first configuration starts its jobs).
    pub fn none() -> InboxRoute {
        InboxRoute {
            targets: Vec::new(),
            on_staged: Box::new(|| {}),
        }
    }
}

/// What each connection reads: swapped as a whole on reload.
struct Live {
    gate: Gate,
    tls: Option<TlsAcceptor>,
}

/// A running inbox.
pub struct Inbox {
    name: String,
    listen: SocketAddr,
    config_dir: PathBuf,
    live: Arc<RwLock<Arc<Live>>>,
    route: Arc<RwLock<Arc<InboxRoute>>>,
    stop: CancellationToken,
    connections: TaskTracker,
    committer: tokio::task::JoinHandle<()>,
}

/// The inbox of `settings`, if it has one (at most one: `check` refuses two).
pub fn inbox_settings(sources: &[SourceSettings]) -> Option<(&str, &HttpsInboxSettings)> {
    sources.iter().find_map(|s| match &s.kind {
        SourceKind::HttpsInbox(i) => Some((s.name.as_str(), i)),
        _ => None,
    })
}

/// The TLS acceptor of `tls`'s PEM files; the error names the file.
pub fn tls_acceptor(tls: &InboxTls) -> Result<TlsAcceptor, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls;
    let named = |p: &Path, e: &dyn std::fmt::Display| format!("{}: {e}", p.display());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert)
        .map_err(|e| named(&tls.cert, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| named(&tls.cert, &e))?;
    if certs.is_empty() {
        return Err(named(&tls.cert, &"no PEM certificate in it"));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(|e| named(&tls.key, &e))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("{} and {}: {e}", tls.cert.display(), tls.key.display()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn live_of(s: &HttpsInboxSettings, name: &str, base: &Path) -> Result<Live, String> {
    let gate = Gate::try_new(s, name, base)?;
    let tls = match &s.tls {
        Some(t) => Some(tls_acceptor(t).map_err(|e| format!("source {name}: TLS: {e}"))?),
        None => None,
    };
    Ok(Live { gate, tls })
}

/// `check`: the listener's settings as `run` would take them (secrets, certificate, key).
pub fn check(name: &str, s: &HttpsInboxSettings, config_dir: &Path) -> Result<String, String> {
    live_of(s, name, config_dir)?;
    let scheme = if s.tls.is_some() { "https" } else { "http" };
    Ok(format!(
        "source {name}: listens on {scheme}://{}{}/<secret>",
        s.listen, s.path
    ))
}

impl Inbox {
    /// Bind the listener and start serving; staged leads have nowhere to go until
    /// [`Inbox::set_route`].
    pub async fn start(
        name: &str,
        s: &HttpsInboxSettings,
        config_dir: &Path,
        ledger: Arc<dyn Ledger>,
    ) -> anyhow::Result<Inbox> {
        let live = Arc::new(RwLock::new(Arc::new(
            live_of(s, name, config_dir).map_err(anyhow::Error::msg)?,
        )));
        let listener = TcpListener::bind(s.listen)
            .await
            .map_err(|e| anyhow::anyhow!("source {name}: binding {}: {e}", s.listen))?;
        let route = Arc::new(RwLock::new(Arc::new(InboxRoute::none())));
        let (arrive, arrivals) = mpsc::channel(QUEUE);
        let committer = tokio::spawn(store::group_commit(
            name.to_string(),
            ledger,
            Arc::clone(&route),
            arrivals,
        ));
        let stop = CancellationToken::new();
        let connections = TaskTracker::new();
        let server = Server {
            name: name.to_string(),
            live: Arc::clone(&live),
            arrive,
            refusals: RefusalLog::default(),
        };
        tokio::spawn(accept_loop(
            listener,
            Arc::new(server),
            stop.clone(),
            connections.clone(),
        ));
        let scheme = if s.tls.is_some() { "https" } else { "http" };
        tracing::info!(source = %name, listen = %s.listen, scheme, "inbox listening");
        Ok(Inbox {
            name: name.to_string(),
            listen: s.listen,
            config_dir: config_dir.to_path_buf(),
            live,
            route,
            stop,
            connections,
            committer,
        })
    }

    /// Where staged leads go from now on.
    pub fn set_route(&self, route: InboxRoute) {
        if let Ok(mut r) = self.route.write() {
            *r = Arc::new(route);
        }
    }

    /// Take the reloaded settings: secrets, networks, limits, and the certificate re-read.
    /// The listener stays; another `listen` (or source name) needs a restart.
    pub fn reload(&self, name: &str, s: &HttpsInboxSettings) -> Result<(), String> {
        if name != self.name || s.listen != self.listen {
            return Err(format!(
                "source {name}: the inbox's name or listen address changed; restart to rebind \
                 (still serving {} on {})",
                self.name, self.listen
            ));
        }
        let live = live_of(s, name, &self.config_dir)?;
        if let Ok(mut l) = self.live.write() {
            *l = Arc::new(live);
        }
        Ok(())
    }

    /// Stop accepting, let the requests being served finish (bounded), then the last commit.
    pub async fn stop(self) {
        self.stop.cancel();
        self.connections.close();
        if tokio::time::timeout(BODY_TIMEOUT, self.connections.wait())
            .await
            .is_err()
        {
            tracing::warn!(source = %self.name, "inbox: requests still open at shutdown were cut off");
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), self.committer).await;
    }
}

/// What every connection shares.
struct Server {
    name: String,
    live: Arc<RwLock<Arc<Live>>>,
    arrive: mpsc::Sender<Arrival>,
    /// Refused requests reach the log at `WARN` once a minute per kind.
    refusals: RefusalLog,
}

impl Server {
    fn live(&self) -> Option<Arc<Live>> {
        self.live.read().ok().map(|l| Arc::clone(&l))
    }
}

async fn accept_loop(
    listener: TcpListener,
    server: Arc<Server>,
    stop: CancellationToken,
    connections: TaskTracker,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut accepted: u64 = 0;
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(source = %server.name, error = %e, "inbox: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!(source = %server.name, "inbox: too many open connections; one closed");
            continue;
        };
        accepted += 1;
        if accepted.is_multiple_of(1024) {
            if let Some(live) = server.live() {
                live.gate.forget_idle_clients();
            }
        }
        let server = Arc::clone(&server);
        let stop = stop.clone();
        connections.spawn(async move {
            let _slot = slot;
            serve_connection(stream, peer, server, stop).await;
        });
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    server: Arc<Server>,
    stop: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let Some(live) = server.live() else { return };
    match &live.tls {
        Some(acceptor) => {
            let Ok(Ok(tls)) = tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream)).await
            else {
                tracing::debug!(source = %server.name, network = %network_of(peer.ip()), "inbox: TLS handshake failed or timed out");
                return;
            };
            serve_http(TokioIo::new(tls), peer.ip(), server, stop).await;
        }
        None => serve_http(TokioIo::new(stream), peer.ip(), server, stop).await,
    }
}

async fn serve_http<I>(io: I, peer: IpAddr, server: Arc<Server>, stop: CancellationToken)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let server = Arc::clone(&server);
        async move { Ok::<_, Infallible>(answer(req, peer, &server).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// One request, counted and timed.
async fn answer(req: Request<Incoming>, peer: IpAddr, server: &Server) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let response = respond(req, peer, server).await;
    let label = server.name.clone();
    metrics::counter!(m::INBOX_REQUESTS, "source" => label.clone(), "code" => response.status().as_str().to_string())
        .increment(1);
    metrics::histogram!(m::INBOX_REQUEST_DURATION, "source" => label)
        .record(started.elapsed().as_secs_f64());
    response
}

async fn respond(req: Request<Incoming>, peer: IpAddr, server: &Server) -> Response<Full<Bytes>> {
    let Some(live) = server.live() else {
        return reply(StatusCode::SERVICE_UNAVAILABLE, "not ready");
    };
    let auth = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    match live
        .gate
        .admit(peer, req.uri().path(), req.uri().query(), auth)
    {
        Admission::Admitted => {}
        Admission::Forbidden => {
            log_refusal(server, Refusal::Network, peer, req.method());
            return reply(StatusCode::FORBIDDEN, "forbidden");
        }
        Admission::Throttled(wait) => {
            tracing::debug!(source = %server.name, network = %network_of(peer), "inbox: client over its rate limit");
            let mut r = reply(StatusCode::TOO_MANY_REQUESTS, "too many requests");
            let secs = wait.as_secs().max(1).to_string();
            if let Ok(v) = hyper::header::HeaderValue::from_str(&secs) {
                r.headers_mut().insert(hyper::header::RETRY_AFTER, v);
            }
            return r;
        }
        Admission::Unknown => {
            // Never the path: it may hold a (wrong, or someone's old) secret.
            log_refusal(server, Refusal::Secret, peer, req.method());
            return reply(StatusCode::NOT_FOUND, "not found");
        }
    }
    if req.method() != Method::POST {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "POST a lead here");
    }
    let body = match read_limited(req.into_body(), live.gate.max_body_bytes).await {
        Ok(b) => b,
        Err(status) => {
            tracing::info!(source = %server.name, network = %network_of(peer), status = status.as_u16(), "inbox: body refused");
            return reply(status, status.canonical_reason().unwrap_or("refused"));
        }
    };
    store_and_answer(store::read_body(&server.name, &body), server).await
}

/// Log a request the gate refused: at `WARN` at most once a minute per kind, counting the
/// others, and at `debug` otherwise (see `refusals`).
fn log_refusal(server: &Server, kind: Refusal, peer: IpAddr, method: &Method) {
    let (what, network) = (kind.describe(), network_of(peer));
    match server.refusals.note(kind, Instant::now()) {
        Some(refused) => tracing::warn!(
            source = %server.name, %network, %method, refused,
            "inbox: {what} (`refused`: such requests since the last of these lines, at most one a minute)"
        ),
        None => tracing::debug!(source = %server.name, %network, %method, "inbox: {what}"),
    }
}

/// The body, at most `max` bytes, within [`BODY_TIMEOUT`].
async fn read_limited(body: Incoming, max: usize) -> Result<Bytes, StatusCode> {
    match tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, max).collect()).await {
        Err(_) => Err(StatusCode::REQUEST_TIMEOUT),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(StatusCode::PAYLOAD_TOO_LARGE)
        }
        Ok(Err(_)) => Err(StatusCode::BAD_REQUEST),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// Hand the body's leads (and rejects) to the group commit; answer once it is durable.
async fn store_and_answer(body: ReadBody, server: &Server) -> Response<Full<Bytes>> {
    let (leads, rejected) = (body.leads.len(), body.rejected.len());
    let reasons: Vec<String> = body
        .rejected
        .iter()
        .map(|r| {
            format!(
                "{}: {}",
                r.origin.rsplit(':').next().unwrap_or(""),
                r.reason
            )
        })
        .collect();
    let (done, durable) = oneshot::channel();
    if server.arrive.try_send(Arrival { body, done }).is_err() {
        return unavailable("the inbox is overloaded");
    }
    match durable.await {
        Ok(Ok(())) if rejected == 0 => json(StatusCode::OK, serde_json::json!({"stored": leads})),
        Ok(Ok(())) => {
            tracing::info!(source = %server.name, stored = leads, rejected, "inbox: body held records that are not leads; quarantined");
            json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"stored": leads, "rejected": reasons}),
            )
        }
        _ => unavailable("the lead could not be stored yet"),
    }
}

fn unavailable(why: &str) -> Response<Full<Bytes>> {
    let mut r = reply(StatusCode::SERVICE_UNAVAILABLE, why);
    r.headers_mut().insert(
        hyper::header::RETRY_AFTER,
        hyper::header::HeaderValue::from(RETRY_AFTER_SECS),
    );
    r
}

fn reply(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json(status, serde_json::json!({ "error": message }))
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}
