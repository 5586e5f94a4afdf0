//! A small, real SMTP server (RFC 5321) for the tests of e-mail notification targets: a real
//! client (lettre's `AsyncSmtpTransport<Tokio1Executor>`) talks to it over TCP, in plain text,
//! with STARTTLS (RFC 3207) or with TLS from the first byte (port 465 style), and with
//! SMTP AUTH (RFC 4954).
//!
//! It listens on 127.0.0.1 on a free port and answers:
//!
//! - the greeting `220 <hostname> ESMTP ...`, then `EHLO` (a multi-line `250-` ... `250 `
//!   reply advertising `PIPELINING`, `SIZE <max>`, `8BITMIME`, `SMTPUTF8`,
//!   `ENHANCEDSTATUSCODES`, `STARTTLS` when offered and not yet active, and `AUTH PLAIN LOGIN`
//!   when credentials are configured and, in STARTTLS mode, TLS is active) and `HELO`;
//! - `STARTTLS`: `220 2.0.0`, then the TLS handshake; whatever the client had pipelined
//!   before it is thrown away and the session starts over (a new `EHLO` is needed), as
//!   RFC 3207 requires. In [`SmtpTls::StartTls`] mode nothing but `EHLO`/`HELO`/`NOOP`/
//!   `RSET`/`QUIT`/`STARTTLS` is allowed before TLS (`530 5.7.0 Must issue a STARTTLS
//!   command first`);
//! - `AUTH PLAIN` (with an initial response, or the empty `334 ` challenge and the
//!   response on its own line) and `AUTH LOGIN` (`334 VXNlcm5hbWU6` / `334 UGFzc3dvcmQ6`,
//!   or the user name as initial response): `235 2.7.0` or
//!   `535 5.7.8 Authentication credentials invalid`; `*` cancels (`501`), bad base64 is
//!   `501 5.5.2`, another mechanism `504 5.5.4`. With credentials configured, `MAIL` before
//!   a successful AUTH is `530 5.7.0 Authentication required`;
//! - `MAIL FROM:<addr> [SIZE=n] [BODY=7BIT|8BITMIME] [SMTPUTF8]` (`552 5.3.4` over the
//!   size limit, `555 5.5.4` for another parameter, `503` for a nested MAIL), `RCPT TO:<addr>`
//!   (100 at most: `452 4.5.3`), `DATA` (`354`, then the message up to the `.` line, with
//!   dot-stuffing undone; `552 5.3.4` when it is larger than the limit), `RSET`, `NOOP`,
//!   `QUIT` (`221`); anything else is `502 5.5.2`, and commands out of order get `503 5.5.1`.
//!
//! Pipelined commands are read in order from one buffer, so a client that pipelines works.
//! Every accepted message is kept as a [`ReceivedMessage`]: envelope, the raw RFC 5322 text
//! with line endings normalised to `\n` (CRLF and bare LF alike), who was authenticated,
//! whether TLS was active, and its arrival time; its helpers read headers (RFC 2047
//! encoded words decoded), and the text/plain and text/html parts of a MIME message
//! (quoted-printable and base64 decoded). Sessions are logged too ([`SmtpSession`]: TLS,
//! AUTH attempted and succeeded, the commands seen with credentials redacted).
//!
//! Faults: every AUTH refused ([`SmtpFake::refuse_auth`]), the next transactions failed
//! ([`SmtpFault`]: 451 at MAIL FROM, 550 at RCPT TO, or the connection closed after the
//! message data without an answer), and a latency before every reply.
//!
//! The TLS certificate is made at run time ([`TestPki`], rcgen): a CA and a server
//! certificate for `localhost` and `127.0.0.1`; a client trusts
//! [`SmtpFake::ca_certificate_pem`]. It owns nothing but its own state.

use crate::https_receiver::TestPki;
use base64::Engine;
use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls;

/// The longest command line read (an `AUTH PLAIN` line may be long; RFC 4954 allows 12288).
const MAX_COMMAND_LINE: usize = 16 * 1024;
/// The longest text line read inside DATA (longer lines are a client bug; kept anyway).
const MAX_DATA_LINE: usize = 1024 * 1024;
/// RFC 5321 §4.5.3.1.8: a server must accept at least 100 recipients.
const MAX_RECIPIENTS: usize = 100;

/// How the fake does TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain text only; `STARTTLS` is not offered (port 25/587 without TLS).
    None,
    /// Plain text first, `STARTTLS` offered and required before AUTH and MAIL (port 587).
    StartTls,
    /// TLS from the first byte (port 465, "SMTPS").
    Implicit,
}

/// How the fake is set up at start.
#[derive(Debug, Clone)]
pub struct SmtpFakeConfig {
    pub tls: SmtpTls,
    /// User name and password. When set, `AUTH PLAIN LOGIN` is advertised and a successful
    /// AUTH is required before `MAIL FROM`.
    pub credentials: Option<(String, String)>,
    /// The `SIZE` limit: the most bytes of message data accepted (line endings counted as
    /// CRLF, after dot-stuffing is undone).
    pub max_message_bytes: usize,
    /// The name in the greeting and the first `EHLO` line.
    pub hostname: String,
}

impl Default for SmtpFakeConfig {
    /// Plain text, no AUTH, 10 MiB, `smtp.fake.test`.
    fn default() -> Self {
        SmtpFakeConfig {
            tls: SmtpTls::None,
            credentials: None,
            max_message_bytes: 10 * 1024 * 1024,
            hostname: "smtp.fake.test".into(),
        }
    }
}

impl SmtpFakeConfig {
    /// The usual submission setup: STARTTLS required, AUTH with these credentials.
    pub fn starttls(user: &str, password: &str) -> Self {
        SmtpFakeConfig {
            tls: SmtpTls::StartTls,
            credentials: Some((user.into(), password.into())),
            ..Self::default()
        }
    }
    /// TLS from the first byte, AUTH with these credentials.
    pub fn implicit_tls(user: &str, password: &str) -> Self {
        SmtpFakeConfig {
            tls: SmtpTls::Implicit,
            credentials: Some((user.into(), password.into())),
            ..Self::default()
        }
    }
}

/// A failure for one coming mail transaction (counted from `MAIL FROM`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpFault {
    /// `451 4.3.0` to `MAIL FROM` (a transient failure: the client may retry later).
    TempFailure,
    /// `550 5.7.1` to every `RCPT TO` of the transaction (a permanent rejection).
    PermanentReject,
    /// The message data is read to the final `.` and the connection is then closed
    /// without an answer: the client cannot know whether the message was taken. The
    /// message is not stored (the session log shows `dropped`).
    DropConnection,
}

/// One message the fake accepted (answered `250` after DATA).
#[derive(Debug, Clone)]
pub struct ReceivedMessage {
    /// The reverse path of `MAIL FROM`, without the angle brackets (empty for `<>`).
    pub mail_from: String,
    /// The accepted `RCPT TO` paths, without angle brackets, in order.
    pub rcpt_to: Vec<String>,
    /// The `MAIL FROM` parameters as sent (`SIZE=123`, `BODY=8BITMIME`, ...).
    pub mail_params: Vec<String>,
    /// The raw RFC 5322 message (headers, blank line, body) with dot-stuffing undone and
    /// every line ending normalised to `\n`; non-UTF-8 bytes replaced (lossy).
    pub data: String,
    /// The user name of the session's successful AUTH, if any.
    pub authenticated_as: Option<String>,
    /// TLS was active (STARTTLS done, or implicit TLS).
    pub tls: bool,
    /// The name the client gave in `EHLO`/`HELO`.
    pub helo: String,
    /// Index of the session in [`SmtpFake::sessions`].
    pub session: usize,
    pub at: Instant,
}

impl ReceivedMessage {
    fn head_body(&self) -> (&str, &str) {
        split_head_body(&self.data)
    }

    /// Every top-level header field, unfolded, in order (values raw: not RFC 2047 decoded).
    pub fn headers(&self) -> Vec<(String, String)> {
        header_fields(self.head_body().0)
    }

    /// The first top-level header field named `name` (case-insensitive), unfolded and
    /// trimmed, raw (encoded words left as they are).
    pub fn header(&self, name: &str) -> Option<String> {
        header_value(&self.headers(), name)
    }

    /// [`ReceivedMessage::header`] with RFC 2047 encoded words (`=?utf-8?b?...?=`,
    /// `=?utf-8?q?...?=`) decoded.
    pub fn decoded_header(&self, name: &str) -> Option<String> {
        self.header(name).map(|v| decode_encoded_words(&v))
    }

    /// The decoded `Subject`.
    pub fn subject(&self) -> Option<String> {
        self.decoded_header("subject")
    }

    /// The message body after the header block, undecoded (`\n` line endings).
    pub fn raw_body(&self) -> &str {
        self.head_body().1
    }

    /// The first `text/plain` part that is not an attachment (the whole body for a
    /// single-part message without `Content-Type`), with its transfer encoding
    /// (quoted-printable, base64) and charset (UTF-8, US-ASCII, ISO-8859-1) decoded and
    /// line endings normalised to `\n`. Searches nested multiparts (`multipart/mixed`
    /// around `multipart/alternative`, ...).
    pub fn text_body(&self) -> Option<String> {
        let (head, body) = self.head_body();
        find_part(&header_fields(head), body, "text/plain", 0)
    }

    /// The first `text/html` part, decoded like [`ReceivedMessage::text_body`].
    pub fn html_body(&self) -> Option<String> {
        let (head, body) = self.head_body();
        find_part(&header_fields(head), body, "text/html", 0)
    }
}

/// One SMTP connection as the fake saw it.
#[derive(Debug, Clone)]
pub struct SmtpSession {
    pub started: Instant,
    /// TLS was active at the end of the session (implicit, or after STARTTLS).
    pub tls: bool,
    /// STARTTLS was completed in this session.
    pub starttls: bool,
    /// The last `EHLO`/`HELO` name.
    pub helo: Option<String>,
    /// An `AUTH` command was received.
    pub auth_attempted: bool,
    /// The mechanisms of the AUTH commands received, upper-cased, in order.
    pub auth_mechanisms: Vec<String>,
    /// The user name of a successful AUTH.
    pub authenticated_as: Option<String>,
    /// AUTH attempts answered 535.
    pub auth_failures: usize,
    /// Messages accepted in this session.
    pub messages: usize,
    /// The command lines received, in order; AUTH arguments and responses are replaced
    /// with `***`, message data is not included.
    pub commands: Vec<String>,
    /// The client ended with `QUIT`.
    pub quit: bool,
    /// The connection was closed by a [`SmtpFault::DropConnection`].
    pub dropped: bool,
}

impl SmtpSession {
    fn new(tls: bool) -> SmtpSession {
        SmtpSession {
            started: Instant::now(),
            tls,
            starttls: false,
            helo: None,
            auth_attempted: false,
            auth_mechanisms: Vec::new(),
            authenticated_as: None,
            auth_failures: 0,
            messages: 0,
            commands: Vec::new(),
            quit: false,
            dropped: false,
        }
    }
}

#[derive(Default)]
struct SmtpState {
    messages: Vec<ReceivedMessage>,
    sessions: Vec<SmtpSession>,
    /// Faults for the coming transactions, each with how many more times it applies.
    faults: VecDeque<(SmtpFault, usize)>,
    refuse_auth: bool,
    latency: Duration,
    connections: u64,
    handshake_failures: u64,
}

struct Shared {
    config: SmtpFakeConfig,
    acceptor: tokio_rustls::TlsAcceptor,
    state: Mutex<SmtpState>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, SmtpState> {
        // A test that panicked while holding the lock must not hide the other tests' data.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn session(&self, id: usize, f: impl FnOnce(&mut SmtpSession)) {
        if let Some(s) = self.lock().sessions.get_mut(id) {
            f(s);
        }
    }
}

/// A running SMTP fake. Dropping it stops it (the listener and every open session).
pub struct SmtpFake {
    shared: Arc<Shared>,
    port: u16,
    ca_pem: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SmtpFake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn tls_acceptor(pki: &TestPki) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let cert = CertificateDer::from_pem_slice(pki.server_cert_pem.as_bytes())
        .map_err(|e| e.to_string())?;
    let key =
        PrivateKeyDer::from_pem_slice(pki.server_key_pem.as_bytes()).map_err(|e| e.to_string())?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .map_err(|e| e.to_string())?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

impl SmtpFake {
    /// Start on 127.0.0.1 on a free port, with a fresh certificate.
    pub async fn start(config: SmtpFakeConfig) -> io::Result<SmtpFake> {
        let pki = TestPki::generate().map_err(io::Error::other)?;
        let acceptor = tls_acceptor(&pki).map_err(io::Error::other)?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            config,
            acceptor,
            state: Mutex::new(SmtpState::default()),
        });
        let accept_shared = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            // Sessions live in the set, so aborting this task (Drop) ends them too.
            let mut sessions = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        if let Ok((tcp, _)) = accepted {
                            sessions.spawn(connection(Arc::clone(&accept_shared), tcp));
                        }
                    }
                    Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
                }
            }
        });
        Ok(SmtpFake {
            shared,
            port,
            ca_pem: pki.ca_pem,
            task,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }
    /// `127.0.0.1`.
    pub fn host(&self) -> &str {
        "127.0.0.1"
    }
    pub fn config(&self) -> &SmtpFakeConfig {
        &self.shared.config
    }
    /// The PEM of the CA that signed the server certificate (valid for `localhost` and
    /// `127.0.0.1`): what a client adds as its root certificate.
    pub fn ca_certificate_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Answer every coming AUTH with `535 5.7.8` (or, with `false`, check credentials again).
    pub fn refuse_auth(&self, refuse: bool) {
        self.shared.lock().refuse_auth = refuse;
    }
    /// Fail the next `times` mail transactions with `fault` (after faults already queued).
    pub fn inject(&self, fault: SmtpFault, times: usize) {
        if times > 0 {
            self.shared.lock().faults.push_back((fault, times));
        }
    }
    /// Wait this long before every reply (the greeting included).
    pub fn set_latency(&self, latency: Duration) {
        self.shared.lock().latency = latency;
    }

    /// Every accepted message, in order of acceptance.
    pub fn messages(&self) -> Vec<ReceivedMessage> {
        self.shared.lock().messages.clone()
    }
    pub fn message_count(&self) -> usize {
        self.shared.lock().messages.len()
    }
    /// Every session (one per TCP connection), in order of connection.
    pub fn sessions(&self) -> Vec<SmtpSession> {
        self.shared.lock().sessions.clone()
    }
    /// TCP connections accepted.
    pub fn connections(&self) -> u64 {
        self.shared.lock().connections
    }
    /// TLS handshakes that failed (a client that does not trust the certificate).
    pub fn handshake_failures(&self) -> u64 {
        self.shared.lock().handshake_failures
    }
    /// Forget the messages and sessions (faults and settings stay).
    pub fn clear(&self) {
        let mut st = self.shared.lock();
        st.messages.clear();
        st.sessions.clear();
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

enum Line {
    Text(Vec<u8>),
    TooLong,
    Eof,
}

/// A connection with its read buffer (pipelined commands wait in it).
struct Conn {
    io: Box<dyn Io>,
    buf: Vec<u8>,
    /// Skip up to the next line feed (the rest of a line that was too long).
    skip_line: bool,
    tls: bool,
}

impl Conn {
    fn new(io: Box<dyn Io>, tls: bool) -> Conn {
        Conn {
            io,
            buf: Vec::new(),
            skip_line: false,
            tls,
        }
    }

    /// One line without its line ending (CRLF or a bare LF).
    async fn read_line(&mut self, max: usize) -> io::Result<Line> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if std::mem::take(&mut self.skip_line) {
                    continue;
                }
                return Ok(Line::Text(line));
            }
            if self.buf.len() > max {
                self.buf.clear();
                if !self.skip_line {
                    self.skip_line = true;
                    return Ok(Line::TooLong);
                }
            }
            let mut chunk = [0u8; 8192];
            let n = self.io.read(&mut chunk).await?;
            if n == 0 {
                return Ok(Line::Eof);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn send(&mut self, shared: &Shared, text: &str) -> io::Result<()> {
        let latency = shared.lock().latency;
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        self.io.write_all(text.as_bytes()).await?;
        self.io.write_all(b"\r\n").await?;
        self.io.flush().await
    }

    /// A multi-line reply: `code-line` for all but the last, `code line` for the last.
    async fn send_lines(&mut self, shared: &Shared, code: u16, lines: &[String]) -> io::Result<()> {
        let last = lines.len().saturating_sub(1);
        let text = lines
            .iter()
            .enumerate()
            .map(|(i, l)| format!("{code}{}{l}", if i == last { ' ' } else { '-' }))
            .collect::<Vec<_>>()
            .join("\r\n");
        self.send(shared, &text).await
    }
}

/// The mail transaction in progress.
struct Transaction {
    from: String,
    params: Vec<String>,
    rcpts: Vec<String>,
    fault: Option<SmtpFault>,
}

/// What the session knows; reset by STARTTLS.
#[derive(Default)]
struct SessionState {
    helo: Option<String>,
    authenticated_as: Option<String>,
    tx: Option<Transaction>,
}

async fn connection(shared: Arc<Shared>, tcp: TcpStream) {
    let _ = tcp.set_nodelay(true);
    let implicit = shared.config.tls == SmtpTls::Implicit;
    let id = {
        let mut st = shared.lock();
        st.connections += 1;
        st.sessions.push(SmtpSession::new(implicit));
        st.sessions.len() - 1
    };
    let conn = if implicit {
        match shared.acceptor.accept(tcp).await {
            Ok(tls) => Conn::new(Box::new(tls), true),
            Err(_) => {
                shared.lock().handshake_failures += 1;
                return;
            }
        }
    } else {
        Conn::new(Box::new(tcp), false)
    };
    if let Some(mut conn) = dialogue(&shared, conn, id).await.ok().flatten() {
        // A clean end (QUIT): close TLS properly.
        let _ = conn.io.shutdown().await;
    }
}

fn redact_auth(line: &str) -> String {
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next(), parts.next()) {
        (Some(verb), Some(mech), Some(_)) => format!("{verb} {mech} ***"),
        _ => line.to_string(),
    }
}

/// The SMTP dialogue. `Ok(Some(conn))` after QUIT, `Ok(None)` when the client went away
/// or the connection was dropped on purpose.
async fn dialogue(shared: &Shared, mut conn: Conn, id: usize) -> io::Result<Option<Conn>> {
    let cfg = &shared.config;
    let host = cfg.hostname.as_str();
    conn.send(
        shared,
        &format!("220 {host} ESMTP leadsync fake SMTP ready"),
    )
    .await?;
    let mut s = SessionState::default();
    loop {
        let line = match conn.read_line(MAX_COMMAND_LINE).await? {
            Line::Eof => return Ok(None),
            Line::TooLong => {
                conn.send(shared, "500 5.5.2 Error: line too long").await?;
                continue;
            }
            Line::Text(l) => String::from_utf8_lossy(&l).into_owned(),
        };
        let (verb, args) = match line.split_once(' ') {
            Some((v, a)) => (v.to_ascii_uppercase(), a.trim().to_string()),
            None => (line.trim().to_ascii_uppercase(), String::new()),
        };
        let logged = if verb == "AUTH" {
            redact_auth(&line)
        } else {
            line.clone()
        };
        shared.session(id, |x| x.commands.push(logged));
        let tls_required = cfg.tls == SmtpTls::StartTls && !conn.tls;
        match verb.as_str() {
            "" => conn.send(shared, "500 5.5.2 Error: bad syntax").await?,
            "EHLO" | "HELO" => {
                if args.is_empty() {
                    conn.send(shared, &format!("501 5.5.4 Syntax: {verb} hostname"))
                        .await?;
                    continue;
                }
                s.helo = Some(args.clone());
                s.tx = None;
                shared.session(id, |x| x.helo = Some(args.clone()));
                if verb == "HELO" {
                    conn.send(shared, &format!("250 {host}")).await?;
                    continue;
                }
                let mut lines = vec![
                    format!("{host} greets {args}"),
                    "PIPELINING".to_string(),
                    format!("SIZE {}", cfg.max_message_bytes),
                    "8BITMIME".into(),
                    "SMTPUTF8".into(),
                    "ENHANCEDSTATUSCODES".into(),
                ];
                if cfg.tls == SmtpTls::StartTls && !conn.tls {
                    lines.push("STARTTLS".into());
                }
                if cfg.credentials.is_some() && !tls_required {
                    lines.push("AUTH PLAIN LOGIN".into());
                }
                conn.send_lines(shared, 250, &lines).await?;
            }
            "STARTTLS" => {
                if cfg.tls != SmtpTls::StartTls {
                    conn.send(shared, "502 5.5.1 Error: command not implemented")
                        .await?;
                } else if conn.tls {
                    conn.send(shared, "554 5.5.1 Error: TLS already active")
                        .await?;
                } else if !args.is_empty() {
                    conn.send(shared, "501 5.5.4 Syntax: STARTTLS").await?;
                } else {
                    conn.send(shared, "220 2.0.0 Ready to start TLS").await?;
                    // RFC 3207 §4.2: nothing pipelined before the handshake counts, and the
                    // session starts over.
                    match shared.acceptor.accept(conn.io).await {
                        Ok(tls) => conn = Conn::new(Box::new(tls), true),
                        Err(_) => {
                            shared.lock().handshake_failures += 1;
                            return Ok(None);
                        }
                    }
                    s = SessionState::default();
                    shared.session(id, |x| {
                        x.tls = true;
                        x.starttls = true;
                        x.helo = None;
                    });
                }
            }
            "AUTH" => {
                if cfg.credentials.is_none() {
                    conn.send(shared, "503 5.5.1 Error: authentication not enabled")
                        .await?;
                } else if tls_required {
                    conn.send(shared, "530 5.7.0 Must issue a STARTTLS command first")
                        .await?;
                } else if s.helo.is_none() {
                    conn.send(shared, "503 5.5.1 Error: send EHLO first")
                        .await?;
                } else if s.authenticated_as.is_some() {
                    conn.send(shared, "503 5.5.1 Error: already authenticated")
                        .await?;
                } else if s.tx.is_some() {
                    conn.send(shared, "503 5.5.1 Error: MAIL transaction in progress")
                        .await?;
                } else {
                    match auth(shared, &mut conn, id, &args).await? {
                        AuthOutcome::Eof => return Ok(None),
                        AuthOutcome::Done(user) => s.authenticated_as = user,
                    }
                }
            }
            "MAIL" => {
                let reply = mail_from(shared, &mut s, tls_required, &args);
                conn.send(shared, &reply).await?;
            }
            "RCPT" => {
                let reply = rcpt_to(&mut s, &args);
                conn.send(shared, &reply).await?;
            }
            "DATA" => {
                if !args.is_empty() {
                    conn.send(shared, "501 5.5.4 Syntax: DATA").await?;
                    continue;
                }
                let Some(tx) = s.tx.as_ref() else {
                    conn.send(shared, "503 5.5.1 Error: need MAIL command")
                        .await?;
                    continue;
                };
                if tx.rcpts.is_empty() {
                    conn.send(shared, "554 5.5.1 Error: no valid recipients")
                        .await?;
                    continue;
                }
                conn.send(shared, "354 End data with <CR><LF>.<CR><LF>")
                    .await?;
                let Some((data, size)) = read_data(&mut conn, cfg.max_message_bytes).await? else {
                    return Ok(None);
                };
                let Some(tx) = s.tx.take() else {
                    unreachable!("checked above")
                };
                if tx.fault == Some(SmtpFault::DropConnection) {
                    shared.session(id, |x| x.dropped = true);
                    return Ok(None);
                }
                if size > cfg.max_message_bytes {
                    conn.send(
                        shared,
                        "552 5.3.4 Message size exceeds fixed maximum message size",
                    )
                    .await?;
                    continue;
                }
                let queued = {
                    let mut st = shared.lock();
                    st.messages.push(ReceivedMessage {
                        mail_from: tx.from,
                        rcpt_to: tx.rcpts,
                        mail_params: tx.params,
                        data,
                        authenticated_as: s.authenticated_as.clone(),
                        tls: conn.tls,
                        helo: s.helo.clone().unwrap_or_default(),
                        session: id,
                        at: Instant::now(),
                    });
                    if let Some(x) = st.sessions.get_mut(id) {
                        x.messages += 1;
                    }
                    st.messages.len()
                };
                conn.send(shared, &format!("250 2.0.0 Ok: queued as FAKE{queued:06}"))
                    .await?;
            }
            "RSET" => {
                s.tx = None;
                conn.send(shared, "250 2.0.0 Ok").await?;
            }
            "NOOP" => conn.send(shared, "250 2.0.0 Ok").await?,
            "QUIT" => {
                shared.session(id, |x| x.quit = true);
                conn.send(shared, "221 2.0.0 Bye").await?;
                return Ok(Some(conn));
            }
            _ => {
                conn.send(shared, "502 5.5.2 Error: command not recognized")
                    .await?
            }
        }
    }
}

enum AuthOutcome {
    /// The exchange ended (success gives the user name).
    Done(Option<String>),
    Eof,
}

async fn auth(shared: &Shared, conn: &mut Conn, id: usize, args: &str) -> io::Result<AuthOutcome> {
    let mut parts = args.split_whitespace();
    let mechanism = parts.next().unwrap_or("").to_ascii_uppercase();
    let initial = parts.next().map(str::to_string);
    shared.session(id, |x| {
        x.auth_attempted = true;
        x.auth_mechanisms.push(mechanism.clone());
    });
    // Read one client response to a 334 challenge.
    async fn response(
        conn: &mut Conn,
        shared: &Shared,
        challenge: &str,
    ) -> io::Result<Option<String>> {
        conn.send(shared, &format!("334 {challenge}")).await?;
        Ok(match conn.read_line(MAX_COMMAND_LINE).await? {
            Line::Text(l) => Some(String::from_utf8_lossy(&l).trim().to_string()),
            Line::TooLong => Some(String::new()),
            Line::Eof => None,
        })
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let decode = |s: &str| -> Option<Vec<u8>> {
        if s == "=" {
            Some(Vec::new())
        } else {
            b64.decode(s).ok()
        }
    };
    let (user, password) = match mechanism.as_str() {
        "PLAIN" => {
            let resp = match initial {
                Some(r) => r,
                None => match response(conn, shared, "").await? {
                    Some(r) => r,
                    None => return Ok(AuthOutcome::Eof),
                },
            };
            if resp == "*" {
                conn.send(shared, "501 5.7.0 Authentication aborted")
                    .await?;
                return Ok(AuthOutcome::Done(None));
            }
            let Some(raw) = decode(&resp) else {
                conn.send(shared, "501 5.5.2 Cannot decode response")
                    .await?;
                return Ok(AuthOutcome::Done(None));
            };
            // authzid NUL authcid NUL passwd
            let fields: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
            if fields.len() != 3 {
                conn.send(shared, "501 5.5.2 Invalid PLAIN response")
                    .await?;
                return Ok(AuthOutcome::Done(None));
            }
            (
                String::from_utf8_lossy(fields[1]).into_owned(),
                String::from_utf8_lossy(fields[2]).into_owned(),
            )
        }
        "LOGIN" => {
            let user = match initial {
                Some(r) => r,
                None => match response(conn, shared, "VXNlcm5hbWU6").await? {
                    Some(r) => r,
                    None => return Ok(AuthOutcome::Eof),
                },
            };
            if user == "*" {
                conn.send(shared, "501 5.7.0 Authentication aborted")
                    .await?;
                return Ok(AuthOutcome::Done(None));
            }
            let password = match response(conn, shared, "UGFzc3dvcmQ6").await? {
                Some(r) => r,
                None => return Ok(AuthOutcome::Eof),
            };
            if password == "*" {
                conn.send(shared, "501 5.7.0 Authentication aborted")
                    .await?;
                return Ok(AuthOutcome::Done(None));
            }
            let (Some(u), Some(p)) = (decode(&user), decode(&password)) else {
                conn.send(shared, "501 5.5.2 Cannot decode response")
                    .await?;
                return Ok(AuthOutcome::Done(None));
            };
            (
                String::from_utf8_lossy(&u).into_owned(),
                String::from_utf8_lossy(&p).into_owned(),
            )
        }
        _ => {
            conn.send(shared, "504 5.5.4 Unrecognized authentication type")
                .await?;
            return Ok(AuthOutcome::Done(None));
        }
    };
    let refused = shared.lock().refuse_auth;
    let valid = shared
        .config
        .credentials
        .as_ref()
        .is_some_and(|(u, p)| *u == user && *p == password);
    if valid && !refused {
        shared.session(id, |x| x.authenticated_as = Some(user.clone()));
        conn.send(shared, "235 2.7.0 Authentication successful")
            .await?;
        Ok(AuthOutcome::Done(Some(user)))
    } else {
        shared.session(id, |x| x.auth_failures += 1);
        conn.send(shared, "535 5.7.8 Authentication credentials invalid")
            .await?;
        Ok(AuthOutcome::Done(None))
    }
}

/// `<path> params...` after `FROM:` / `TO:`: the path without brackets and the params.
fn parse_path<'a>(args: &'a str, keyword: &str) -> Option<(String, Vec<&'a str>)> {
    let rest = args.get(..keyword.len())?;
    if !rest.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = args[keyword.len()..].trim_start();
    let rest = rest.strip_prefix('<')?;
    let end = rest.find('>')?;
    let path = rest[..end].to_string();
    let params = rest[end + 1..].split_whitespace().collect();
    Some((path, params))
}

fn mail_from(shared: &Shared, s: &mut SessionState, tls_required: bool, args: &str) -> String {
    let cfg = &shared.config;
    if s.helo.is_none() {
        return "503 5.5.1 Error: send HELO/EHLO first".into();
    }
    if tls_required {
        return "530 5.7.0 Must issue a STARTTLS command first".into();
    }
    if cfg.credentials.is_some() && s.authenticated_as.is_none() {
        return "530 5.7.0 Authentication required".into();
    }
    if s.tx.is_some() {
        return "503 5.5.1 Error: nested MAIL command".into();
    }
    let Some((from, params)) = parse_path(args, "FROM:") else {
        return "501 5.5.4 Syntax: MAIL FROM:<address>".into();
    };
    if !from.is_empty() && !from.contains('@') {
        return "501 5.1.7 Bad sender address syntax".into();
    }
    for p in params.iter().copied() {
        let (key, value) = p.split_once('=').unwrap_or((p, ""));
        match key.to_ascii_uppercase().as_str() {
            "SIZE" => match value.parse::<usize>() {
                Ok(n) if n > cfg.max_message_bytes => {
                    return "552 5.3.4 Message size exceeds fixed maximum message size".into()
                }
                Ok(_) => {}
                Err(_) => return "501 5.5.4 Bad SIZE parameter".into(),
            },
            "BODY" if ["7BIT", "8BITMIME"].contains(&value.to_ascii_uppercase().as_str()) => {}
            "SMTPUTF8" if value.is_empty() => {}
            _ => return format!("555 5.5.4 Unsupported option: {p}"),
        }
    }
    let fault = {
        let mut st = shared.lock();
        let fault = st.faults.front_mut().map(|(f, n)| {
            *n -= 1;
            *f
        });
        if st.faults.front().is_some_and(|(_, n)| *n == 0) {
            st.faults.pop_front();
        }
        fault
    };
    if fault == Some(SmtpFault::TempFailure) {
        return "451 4.3.0 Temporary failure, please try again later".into();
    }
    s.tx = Some(Transaction {
        from,
        params: params.iter().map(|p| p.to_string()).collect(),
        rcpts: Vec::new(),
        fault,
    });
    "250 2.1.0 Ok".into()
}

fn rcpt_to(s: &mut SessionState, args: &str) -> String {
    let Some(tx) = s.tx.as_mut() else {
        return "503 5.5.1 Error: need MAIL command".into();
    };
    let Some((to, params)) = parse_path(args, "TO:") else {
        return "501 5.5.4 Syntax: RCPT TO:<address>".into();
    };
    if to.is_empty() || (!to.contains('@') && !to.eq_ignore_ascii_case("postmaster")) {
        return "501 5.1.3 Bad recipient address syntax".into();
    }
    if let Some(p) = params.first() {
        return format!("555 5.5.4 Unsupported option: {p}");
    }
    if tx.fault == Some(SmtpFault::PermanentReject) {
        return format!("550 5.7.1 <{to}>: Recipient address rejected: Access denied");
    }
    if tx.rcpts.len() >= MAX_RECIPIENTS {
        return "452 4.5.3 Error: too many recipients".into();
    }
    tx.rcpts.push(to);
    "250 2.1.5 Ok".into()
}

/// The message up to the `.` line: dot-stuffing undone, lines joined with `\n`, and its
/// size counted with CRLF line endings. `None` if the client went away first.
async fn read_data(conn: &mut Conn, max: usize) -> io::Result<Option<(String, usize)>> {
    let mut data = Vec::new();
    let mut size = 0usize;
    loop {
        let line = match conn.read_line(MAX_DATA_LINE).await? {
            Line::Eof => return Ok(None),
            Line::TooLong => continue,
            Line::Text(l) => l,
        };
        if line == b"." {
            return Ok(Some((String::from_utf8_lossy(&data).into_owned(), size)));
        }
        let line = line.strip_prefix(b".").unwrap_or(&line);
        size += line.len() + 2;
        // Past the limit only the size is counted: the answer is 552 anyway.
        if size <= max {
            data.extend_from_slice(line);
            data.push(b'\n');
        }
    }
}

// ---- message parsing (RFC 5322 headers, RFC 2045/2046 MIME, RFC 2047 encoded words) ----

fn split_head_body(data: &str) -> (&str, &str) {
    if let Some(rest) = data.strip_prefix('\n') {
        return ("", rest);
    }
    match data.find("\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, ""),
    }
}

/// Unfolded header fields (RFC 5322 §2.2.3: a line starting with white space continues
/// the previous one; only the line break is removed).
fn header_fields(head: &str) -> Vec<(String, String)> {
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in head.lines() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = fields.last_mut() {
                v.push_str(line);
            }
        } else if let Some((name, value)) = line.split_once(':') {
            fields.push((name.trim().to_string(), value.to_string()));
        }
    }
    fields
        .into_iter()
        .map(|(n, v)| (n, v.trim().to_string()))
        .collect()
}

fn header_value(fields: &[(String, String)], name: &str) -> Option<String> {
    fields
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
}

/// The media type of a `Content-Type` value, lower-cased (`text/plain`).
fn media_type(value: &str) -> String {
    value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// A parameter of a structured header value (`boundary`, `charset`), unquoted.
fn header_param(value: &str, name: &str) -> Option<String> {
    let mut rest = value.split_once(';')?.1;
    loop {
        let (key, after) = rest.split_once('=')?;
        let key = key.trim().trim_start_matches(';').trim();
        let after = after.trim_start();
        let (val, next) = if let Some(q) = after.strip_prefix('"') {
            let mut out = String::new();
            let mut chars = q.char_indices();
            let mut end = q.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, e)) = chars.next() {
                            out.push(e);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    _ => out.push(c),
                }
            }
            (out, &q[end..])
        } else {
            let end = after.find(';').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        if key.eq_ignore_ascii_case(name) {
            return Some(val);
        }
        rest = next.split_once(';').map(|(_, r)| r).unwrap_or("");
        if rest.is_empty() {
            return None;
        }
    }
}

/// The body parts of a multipart body (RFC 2046 §5.1.1), each with its own headers.
fn multipart_parts<'a>(body: &'a str, boundary: &str) -> Vec<&'a str> {
    let open = format!("--{boundary}");
    let close = format!("--{boundary}--");
    let mut parts = Vec::new();
    let mut start: Option<usize> = None;
    let mut offset = 0usize;
    for line in body.split_inclusive('\n') {
        let bare = line.trim_end();
        if bare == open || bare == close {
            if let Some(s) = start {
                // The line break before a delimiter belongs to the delimiter.
                let end = offset.saturating_sub(1).max(s);
                parts.push(&body[s..end]);
            }
            if bare == close {
                return parts;
            }
            start = Some(offset + line.len());
        }
        offset += line.len();
    }
    parts
}

fn find_part(headers: &[(String, String)], body: &str, want: &str, depth: usize) -> Option<String> {
    if depth > 16 {
        return None;
    }
    let content_type =
        header_value(headers, "content-type").unwrap_or_else(|| "text/plain".to_string());
    let media = media_type(&content_type);
    if media.starts_with("multipart/") {
        let boundary = header_param(&content_type, "boundary")?;
        return multipart_parts(body, &boundary)
            .into_iter()
            .find_map(|part| {
                let (head, body) = split_head_body(part);
                find_part(&header_fields(head), body, want, depth + 1)
            });
    }
    let attachment = header_value(headers, "content-disposition")
        .is_some_and(|d| media_type(&d) == "attachment");
    if media != want || attachment {
        return None;
    }
    let encoding = header_value(headers, "content-transfer-encoding")
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let bytes = match encoding.as_str() {
        "base64" => {
            let compact: String = body.chars().filter(|c| !c.is_whitespace()).collect();
            base64::engine::general_purpose::STANDARD
                .decode(compact)
                .ok()?
        }
        "quoted-printable" => decode_quoted_printable(body),
        _ => body.as_bytes().to_vec(),
    };
    let charset = header_param(&content_type, "charset").unwrap_or_else(|| "utf-8".into());
    Some(decode_charset(&charset, &bytes).replace("\r\n", "\n"))
}

fn decode_charset(charset: &str, bytes: &[u8]) -> String {
    match charset.to_ascii_lowercase().as_str() {
        "iso-8859-1" | "latin1" | "iso_8859-1" | "l1" => bytes.iter().map(|b| *b as char).collect(),
        _ => String::from_utf8_lossy(bytes).into_owned(),
    }
}

fn hex_value(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Quoted-printable (RFC 2045 §6.7) over `\n`-separated lines: `=XX` octets, `=` at the
/// end of a line is a soft line break, trailing white space is dropped.
pub fn decode_quoted_printable(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let lines: Vec<&str> = text.split('\n').collect();
    for (i, line) in lines.iter().enumerate() {
        let line = line.trim_end_matches(['\r', ' ', '\t']);
        let (line, soft) = match line.strip_suffix('=') {
            Some(l) => (l, true),
            None => (line, false),
        };
        let bytes = line.as_bytes();
        let mut j = 0;
        while j < bytes.len() {
            if bytes[j] == b'=' {
                if let (Some(h), Some(l)) = (
                    bytes.get(j + 1).copied().and_then(hex_value),
                    bytes.get(j + 2).copied().and_then(hex_value),
                ) {
                    out.push(h * 16 + l);
                    j += 3;
                    continue;
                }
            }
            out.push(bytes[j]);
            j += 1;
        }
        if !soft && i + 1 < lines.len() {
            out.push(b'\n');
        }
    }
    out
}

/// Decode RFC 2047 encoded words (`=?charset?B?...?=`, `=?charset?Q?...?=`) in a header
/// value; white space between two adjacent encoded words is dropped, and adjacent words of
/// one charset are joined before decoding (a character may be split across two words).
pub fn decode_encoded_words(value: &str) -> String {
    let mut out = String::new();
    // Bytes of adjacent encoded words not yet turned into text, with their charset.
    let mut pending: Option<(String, Vec<u8>)> = None;
    // White space seen after an encoded word (dropped if another encoded word follows).
    let mut gap = String::new();
    let mut rest = value;
    let flush = |pending: &mut Option<(String, Vec<u8>)>, out: &mut String| {
        if let Some((cs, bytes)) = pending.take() {
            out.push_str(&decode_charset(&cs, &bytes));
        }
    };
    while !rest.is_empty() {
        if let Some((charset, bytes, len)) = encoded_word(rest) {
            gap.clear();
            let same = matches!(&pending, Some((cs, _)) if cs.eq_ignore_ascii_case(&charset));
            if same {
                if let Some((_, b)) = pending.as_mut() {
                    b.extend_from_slice(&bytes);
                }
            } else {
                flush(&mut pending, &mut out);
                pending = Some((charset, bytes));
            }
            rest = &rest[len..];
            continue;
        }
        let Some(c) = rest.chars().next() else { break };
        if pending.is_some() && c.is_whitespace() {
            gap.push(c);
        } else {
            flush(&mut pending, &mut out);
            out.push_str(&gap);
            gap.clear();
            out.push(c);
        }
        rest = &rest[c.len_utf8()..];
    }
    flush(&mut pending, &mut out);
    out.push_str(&gap);
    out
}

/// One encoded word at the start of `s`: charset, decoded bytes, length in `s`.
fn encoded_word(s: &str) -> Option<(String, Vec<u8>, usize)> {
    let inner = s.strip_prefix("=?")?;
    let (charset, rest) = inner.split_once('?')?;
    let (encoding, rest) = rest.split_once('?')?;
    let end = rest.find("?=")?;
    let text = &rest[..end];
    if charset.is_empty() || text.contains(char::is_whitespace) {
        return None;
    }
    // RFC 2231 language suffix: `utf-8*en`.
    let charset = charset.split('*').next().unwrap_or(charset).to_string();
    let bytes = match encoding {
        "B" | "b" => base64::engine::general_purpose::STANDARD
            .decode(text)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(text))
            .ok()?,
        "Q" | "q" => {
            let b = text.as_bytes();
            let mut out = Vec::new();
            let mut i = 0;
            while i < b.len() {
                match b[i] {
                    b'_' => out.push(b' '),
                    b'=' => {
                        let h = b.get(i + 1).copied().and_then(hex_value)?;
                        let l = b.get(i + 2).copied().and_then(hex_value)?;
                        out.push(h * 16 + l);
                        i += 2;
                    }
                    c => out.push(c),
                }
                i += 1;
            }
            out
        }
        _ => return None,
    };
    let len = 2 + charset_len(inner) + 1 + encoding.len() + 1 + end + 2;
    Some((charset, bytes, len))
}

/// Length of the raw charset token (before the first `?`) of an encoded word's inside.
fn charset_len(inner: &str) -> usize {
    inner.find('?').unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

    /// A raw SMTP client over TCP.
    struct Client {
        r: BufReader<OwnedReadHalf>,
        w: OwnedWriteHalf,
    }

    impl Client {
        async fn connect(fake: &SmtpFake) -> (Client, u16, Vec<String>) {
            let tcp = TcpStream::connect((fake.host(), fake.port()))
                .await
                .unwrap();
            let (r, w) = tcp.into_split();
            let mut c = Client {
                r: BufReader::new(r),
                w,
            };
            let (code, lines) = c.reply().await;
            (c, code, lines)
        }
        async fn reply(&mut self) -> (u16, Vec<String>) {
            let mut lines = Vec::new();
            loop {
                let mut line = String::new();
                let n = self.r.read_line(&mut line).await.unwrap();
                assert!(n > 0, "connection closed; got {lines:?}");
                let line = line.trim_end().to_string();
                let code: u16 = line[..3].parse().unwrap();
                let last = line.as_bytes().get(3) != Some(&b'-');
                lines.push(line[4.min(line.len())..].to_string());
                if last {
                    return (code, lines);
                }
            }
        }
        async fn send(&mut self, raw: &str) {
            self.w.write_all(raw.as_bytes()).await.unwrap();
        }
        async fn cmd(&mut self, line: &str) -> (u16, Vec<String>) {
            self.send(&format!("{line}\r\n")).await;
            self.reply().await
        }
        async fn code(&mut self, line: &str) -> u16 {
            self.cmd(line).await.0
        }
    }

    fn plain(user: &str, pass: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{pass}"))
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn with_auth() -> SmtpFakeConfig {
        SmtpFakeConfig {
            credentials: Some(("leadsync".into(), "s3cret".into())),
            ..SmtpFakeConfig::default()
        }
    }

    #[tokio::test]
    async fn basic_dialogue_with_auth_plain() {
        let fake = SmtpFake::start(with_auth()).await.unwrap();
        let (mut c, code, greeting) = Client::connect(&fake).await;
        assert_eq!(code, 220);
        assert!(greeting[0].starts_with("smtp.fake.test "));
        let (code, ehlo) = c.cmd("EHLO client.example").await;
        assert_eq!(code, 250);
        assert_eq!(ehlo[0], "smtp.fake.test greets client.example");
        assert!(ehlo.contains(&"AUTH PLAIN LOGIN".to_string()), "{ehlo:?}");
        assert!(ehlo.contains(&"SIZE 10485760".to_string()));
        assert!(!ehlo.contains(&"STARTTLS".to_string()));
        assert_eq!(c.code("MAIL FROM:<a@example.com>").await, 530);
        let (code, text) = c
            .cmd(&format!("AUTH PLAIN {}", plain("leadsync", "s3cret")))
            .await;
        assert_eq!(
            (code, text[0].as_str()),
            (235, "2.7.0 Authentication successful")
        );
        assert_eq!(
            c.code("MAIL FROM:<noreply@example.com> SIZE=120").await,
            250
        );
        assert_eq!(c.code("RCPT TO:<sales@contoso.com>").await, 250);
        assert_eq!(c.code("RCPT TO:<ops@contoso.com>").await, 250);
        assert_eq!(c.code("DATA").await, 354);
        let (code, text) = c
            .cmd("Subject: New lead\r\nFrom: noreply@example.com\r\n\r\nHello\r\nAda Lovelace\r\n.")
            .await;
        assert_eq!(code, 250);
        assert!(text[0].starts_with("2.0.0 Ok: queued as"));
        assert_eq!(c.code("QUIT").await, 221);

        let m = &fake.messages()[0];
        assert_eq!(m.mail_from, "noreply@example.com");
        assert_eq!(m.rcpt_to, ["sales@contoso.com", "ops@contoso.com"]);
        assert_eq!(m.mail_params, ["SIZE=120"]);
        assert_eq!(
            m.data,
            "Subject: New lead\nFrom: noreply@example.com\n\nHello\nAda Lovelace\n"
        );
        assert_eq!(m.authenticated_as.as_deref(), Some("leadsync"));
        assert!(!m.tls);
        assert_eq!(m.helo, "client.example");
        assert_eq!(m.subject().as_deref(), Some("New lead"));
        assert_eq!(m.text_body().as_deref(), Some("Hello\nAda Lovelace\n"));
        assert_eq!(m.html_body(), None);
        let s = &fake.sessions()[0];
        assert!(s.auth_attempted && s.quit && !s.tls);
        assert_eq!(s.authenticated_as.as_deref(), Some("leadsync"));
        assert_eq!(s.commands[2], "AUTH PLAIN ***");
        assert_eq!(fake.connections(), 1);
    }

    #[tokio::test]
    async fn dot_stuffing_is_undone() {
        let fake = SmtpFake::start(SmtpFakeConfig::default()).await.unwrap();
        let (mut c, _, _) = Client::connect(&fake).await;
        c.cmd("HELO x").await;
        c.cmd("MAIL FROM:<>").await;
        c.cmd("RCPT TO:<postmaster>").await;
        assert_eq!(c.code("DATA").await, 354);
        let (code, _) = c
            .cmd("Subject: dots\r\n\r\n..\r\n...leading\r\nmid.dle\r\n..\r\n.")
            .await;
        assert_eq!(code, 250);
        let m = &fake.messages()[0];
        assert_eq!(m.mail_from, "");
        assert_eq!(m.raw_body(), ".\n..leading\nmid.dle\n.\n");
    }

    #[tokio::test]
    async fn auth_continuations_and_wrong_credentials() {
        let fake = SmtpFake::start(with_auth()).await.unwrap();
        let (mut c, _, _) = Client::connect(&fake).await;
        c.cmd("EHLO x").await;
        // PLAIN, the response on its own line.
        let (code, ch) = c.cmd("AUTH PLAIN").await;
        assert_eq!((code, ch[0].as_str()), (334, ""));
        let (code, text) = c.cmd(&plain("leadsync", "wrong")).await;
        assert_eq!(code, 535);
        assert_eq!(text[0], "5.7.8 Authentication credentials invalid");
        // Cancelled.
        assert_eq!(c.code("AUTH PLAIN").await, 334);
        assert_eq!(c.code("*").await, 501);
        // Bad base64.
        assert_eq!(c.code("AUTH PLAIN !!!").await, 501);
        assert_eq!(c.code("AUTH CRAM-MD5").await, 504);
        // LOGIN.
        let (code, ch) = c.cmd("AUTH LOGIN").await;
        assert_eq!((code, ch[0].as_str()), (334, "VXNlcm5hbWU6"));
        let (code, ch) = c.cmd(&b64("leadsync")).await;
        assert_eq!((code, ch[0].as_str()), (334, "UGFzc3dvcmQ6"));
        assert_eq!(c.code(&b64("s3cret")).await, 235);
        assert_eq!(c.code("AUTH LOGIN").await, 503);
        let s = &fake.sessions()[0];
        assert_eq!(s.auth_failures, 1);
        // The second LOGIN was refused before it started (already authenticated).
        assert_eq!(
            s.auth_mechanisms,
            ["PLAIN", "PLAIN", "PLAIN", "CRAM-MD5", "LOGIN"]
        );
        assert_eq!(s.authenticated_as.as_deref(), Some("leadsync"));

        // LOGIN with the user name as initial response; refused on demand.
        fake.refuse_auth(true);
        let (mut c, _, _) = Client::connect(&fake).await;
        c.cmd("EHLO x").await;
        let (code, ch) = c.cmd(&format!("AUTH LOGIN {}", b64("leadsync"))).await;
        assert_eq!((code, ch[0].as_str()), (334, "UGFzc3dvcmQ6"));
        assert_eq!(c.code(&b64("s3cret")).await, 535);
    }

    #[tokio::test]
    async fn injected_faults_and_ordering_errors() {
        let fake = SmtpFake::start(SmtpFakeConfig::default()).await.unwrap();
        fake.inject(SmtpFault::TempFailure, 1);
        fake.inject(SmtpFault::PermanentReject, 1);
        fake.inject(SmtpFault::DropConnection, 1);
        let (mut c, _, _) = Client::connect(&fake).await;
        assert_eq!(c.code("MAIL FROM:<a@x.com>").await, 503);
        assert_eq!(c.code("EHLO x").await, 250);
        assert_eq!(c.code("RCPT TO:<b@x.com>").await, 503);
        assert_eq!(c.code("DATA").await, 503);
        assert_eq!(c.code("VRFY b").await, 502);
        assert_eq!(c.code("STARTTLS").await, 502);
        assert_eq!(c.code("AUTH PLAIN AGFAYg==").await, 503);
        assert_eq!(c.code("MAIL FROM:<a@x.com> FOO=1").await, 555);
        let (code, text) = c.cmd("MAIL FROM:<a@x.com>").await;
        assert_eq!(code, 451);
        assert!(text[0].starts_with("4.3.0"));
        assert_eq!(c.code("MAIL FROM:<a@x.com>").await, 250);
        assert_eq!(c.code("MAIL FROM:<a@x.com>").await, 503);
        let (code, text) = c.cmd("RCPT TO:<b@x.com>").await;
        assert_eq!(code, 550);
        assert!(text[0].starts_with("5.7.1"));
        assert_eq!(c.code("DATA").await, 554);
        assert_eq!(c.code("RSET").await, 250);
        assert_eq!(c.code("MAIL FROM:<a@x.com>").await, 250);
        assert_eq!(c.code("RCPT TO:<b@x.com>").await, 250);
        assert_eq!(c.code("DATA").await, 354);
        c.send("Subject: lost\r\n\r\nbody\r\n.\r\n").await;
        let mut rest = String::new();
        let n = c.r.read_line(&mut rest).await.unwrap();
        assert_eq!(n, 0, "closed without an answer, got {rest:?}");
        assert_eq!(fake.message_count(), 0);
        assert!(fake.sessions()[0].dropped);

        // Faults are used up: the next transaction goes through.
        let (mut c, _, _) = Client::connect(&fake).await;
        c.cmd("EHLO x").await;
        assert_eq!(c.code("MAIL FROM:<a@x.com>").await, 250);
        assert_eq!(c.code("RCPT TO:<b@x.com>").await, 250);
        assert_eq!(c.code("DATA").await, 354);
        assert_eq!(c.code("Subject: ok\r\n\r\nbody\r\n.").await, 250);
        assert_eq!(fake.message_count(), 1);
        assert_eq!(fake.connections(), 2);
    }

    #[tokio::test]
    async fn size_limit_and_pipelining() {
        let fake = SmtpFake::start(SmtpFakeConfig {
            max_message_bytes: 40,
            ..SmtpFakeConfig::default()
        })
        .await
        .unwrap();
        let (mut c, _, _) = Client::connect(&fake).await;
        let (_, ehlo) = c.cmd("EHLO x").await;
        assert!(ehlo.contains(&"SIZE 40".to_string()));
        assert!(ehlo.contains(&"PIPELINING".to_string()));
        assert_eq!(c.code("MAIL FROM:<a@x.com> SIZE=41").await, 552);
        // MAIL, RCPT and DATA in one write.
        c.send("MAIL FROM:<a@x.com>\r\nRCPT TO:<b@x.com>\r\nDATA\r\n")
            .await;
        assert_eq!(c.reply().await.0, 250);
        assert_eq!(c.reply().await.0, 250);
        assert_eq!(c.reply().await.0, 354);
        let long = "x".repeat(60);
        assert_eq!(
            c.code(&format!("Subject: big\r\n\r\n{long}\r\n.")).await,
            552
        );
        assert_eq!(fake.message_count(), 0);
        // The session goes on.
        assert_eq!(c.code("NOOP").await, 250);
    }

    #[tokio::test]
    async fn starttls_mode_refuses_auth_and_mail_before_tls() {
        let fake = SmtpFake::start(SmtpFakeConfig::starttls("u", "p"))
            .await
            .unwrap();
        let (mut c, _, _) = Client::connect(&fake).await;
        let (_, ehlo) = c.cmd("EHLO x").await;
        assert!(ehlo.contains(&"STARTTLS".to_string()));
        assert!(!ehlo.iter().any(|l| l.starts_with("AUTH")), "{ehlo:?}");
        assert_eq!(
            c.code(&format!("AUTH PLAIN {}", plain("u", "p"))).await,
            530
        );
        assert_eq!(c.code("MAIL FROM:<a@x.com>").await, 530);
        assert_eq!(c.code("STARTTLS").await, 220);
        assert!(fake
            .ca_certificate_pem()
            .starts_with("-----BEGIN CERTIFICATE-----"));
    }

    #[test]
    fn encoded_words() {
        assert_eq!(
            decode_encoded_words("=?utf-8?b?TmV1ZXIgTGVhZDogTcO8bGxlcg==?="),
            "Neuer Lead: Müller"
        );
        assert_eq!(
            decode_encoded_words("=?UTF-8?Q?M=C3=BCller_GmbH?="),
            "Müller GmbH"
        );
        // Adjacent words: the white space between them goes, a split character is joined.
        assert_eq!(
            decode_encoded_words("=?utf-8?q?M=C3?= =?utf-8?q?=BCller?= AG"),
            "Müller AG"
        );
        assert_eq!(
            decode_encoded_words("Re: =?iso-8859-1?q?caf=E9?= ok"),
            "Re: café ok"
        );
        assert_eq!(
            decode_encoded_words("plain =? not encoded"),
            "plain =? not encoded"
        );
    }

    #[test]
    fn quoted_printable() {
        let qp = "Gr=C3=BC=C3=9Fe, caf=C3=A9 =3D ok=\n and on  \nnext";
        assert_eq!(
            String::from_utf8(decode_quoted_printable(qp)).unwrap(),
            "Grüße, café = ok and on\nnext"
        );
    }

    #[test]
    fn multipart_alternative_parts() {
        let data = "From: a@x.com\nSubject: =?utf-8?b?w5xiZXI=?=\nMIME-Version: 1.0\n\
            Content-Type: multipart/mixed; boundary=\"outer\"\n\npreamble\n--outer\n\
            Content-Type: multipart/alternative;\n boundary=\"in\\\"ner\"\n\n--in\"ner\n\
            Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\n\
            Gr=C3=BC=C3=9Fe\n--in\"ner\nContent-Type: text/html; charset=utf-8\n\
            Content-Transfer-Encoding: base64\n\nPHA+R3LDvMOfZTwvcD4=\n--in\"ner--\n--outer\n\
            Content-Type: text/plain\nContent-Disposition: attachment; filename=a.txt\n\nno\n--outer--\n";
        let m = ReceivedMessage {
            mail_from: String::new(),
            rcpt_to: Vec::new(),
            mail_params: Vec::new(),
            data: data.into(),
            authenticated_as: None,
            tls: false,
            helo: String::new(),
            session: 0,
            at: Instant::now(),
        };
        assert_eq!(m.subject().as_deref(), Some("Über"));
        assert_eq!(m.header("FROM").as_deref(), Some("a@x.com"));
        assert_eq!(m.text_body().as_deref(), Some("Grüße"));
        assert_eq!(m.html_body().as_deref(), Some("<p>Grüße</p>"));
    }

    mod lettre_client {
        use super::*;
        use lettre::message::{header::ContentType, Mailbox, MultiPart, SinglePart};
        use lettre::transport::smtp::authentication::Credentials;
        use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
        use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

        fn tls_params(fake: &SmtpFake, domain: &str) -> TlsParameters {
            let ca = Certificate::from_pem(fake.ca_certificate_pem().as_bytes()).unwrap();
            TlsParameters::builder(domain.to_string())
                .add_root_certificate(ca)
                .build_rustls()
                .unwrap()
        }

        fn mailer(fake: &SmtpFake, tls: Tls) -> AsyncSmtpTransport<Tokio1Executor> {
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(fake.host())
                .port(fake.port())
                .tls(tls)
                .credentials(Credentials::new("leadsync".into(), "s3cret".into()))
                .timeout(Some(Duration::from_secs(10)))
                .build()
        }

        fn email() -> Message {
            let text = "Neuer Lead: Ada Müller\nFirma: Contoso — Zürich\n\
                Eine sehr lange Zeile, damit der Text als quoted-printable kodiert wird, \
                weil sie länger als sechsundsiebzig Zeichen ist und Umlaute enthält.\n";
            let html = "<p>Neuer Lead: <b>Ada Müller</b></p><p>Firma: Contoso — Zürich</p>";
            Message::builder()
                .from("Leadsync <noreply@example.com>".parse::<Mailbox>().unwrap())
                .to("Vertrieb <sales@contoso.com>".parse::<Mailbox>().unwrap())
                .subject("Neuer Lead: Müller GmbH ✓")
                .multipart(
                    MultiPart::alternative()
                        .singlepart(
                            SinglePart::builder()
                                .header(ContentType::TEXT_PLAIN)
                                .body(text.to_string()),
                        )
                        .singlepart(
                            SinglePart::builder()
                                .header(ContentType::TEXT_HTML)
                                .body(html.to_string()),
                        ),
                )
                .unwrap()
        }

        #[tokio::test]
        async fn multipart_over_starttls_with_auth() {
            let fake = SmtpFake::start(SmtpFakeConfig::starttls("leadsync", "s3cret"))
                .await
                .unwrap();
            let tls = Tls::Required(tls_params(&fake, "localhost"));
            let response = mailer(&fake, tls).send(email()).await.unwrap();
            assert!(response.is_positive());

            let m = &fake.messages()[0];
            assert_eq!(m.mail_from, "noreply@example.com");
            assert_eq!(m.rcpt_to, ["sales@contoso.com"]);
            assert!(m.tls);
            assert_eq!(m.authenticated_as.as_deref(), Some("leadsync"));
            assert_eq!(m.subject().as_deref(), Some("Neuer Lead: Müller GmbH ✓"));
            let text = m.text_body().unwrap();
            assert!(
                text.starts_with("Neuer Lead: Ada Müller\nFirma: Contoso — Zürich\n"),
                "{text:?}"
            );
            assert!(
                text.contains("sechsundsiebzig Zeichen ist und Umlaute enthält."),
                "{text:?}"
            );
            assert_eq!(
                m.html_body().as_deref(),
                Some("<p>Neuer Lead: <b>Ada Müller</b></p><p>Firma: Contoso — Zürich</p>")
            );
            let s = &fake.sessions()[0];
            assert!(s.starttls && s.tls && s.quit);
            assert_eq!(s.auth_mechanisms, ["PLAIN"]);
        }

        #[tokio::test]
        async fn implicit_tls_by_ip_address() {
            let fake = SmtpFake::start(SmtpFakeConfig::implicit_tls("leadsync", "s3cret"))
                .await
                .unwrap();
            let tls = Tls::Wrapper(tls_params(&fake, "127.0.0.1"));
            mailer(&fake, tls).send(email()).await.unwrap();
            assert!(fake.messages()[0].tls);
        }

        /// What lettre reports for each injected fault (the classes a connector maps).
        #[tokio::test]
        async fn faults_as_lettre_sees_them() {
            let fake = SmtpFake::start(SmtpFakeConfig::starttls("leadsync", "s3cret"))
                .await
                .unwrap();
            let send = || async {
                let tls = Tls::Required(tls_params(&fake, "localhost"));
                mailer(&fake, tls).send(email()).await
            };
            fake.inject(SmtpFault::TempFailure, 1);
            let e = send().await.unwrap_err();
            assert!(e.is_transient(), "{e}");
            assert_eq!(e.status().map(|c| c.to_string()).as_deref(), Some("451"));

            fake.inject(SmtpFault::PermanentReject, 1);
            let e = send().await.unwrap_err();
            assert!(e.is_permanent(), "{e}");
            assert_eq!(e.status().map(|c| c.to_string()).as_deref(), Some("550"));

            // No answer after the data: no status, neither transient nor permanent.
            fake.inject(SmtpFault::DropConnection, 1);
            let e = send().await.unwrap_err();
            assert!(
                e.status().is_none() && !e.is_transient() && !e.is_permanent(),
                "{e}"
            );
            assert_eq!(fake.message_count(), 0);

            fake.refuse_auth(true);
            let e = send().await.unwrap_err();
            assert_eq!(e.status().map(|c| c.to_string()).as_deref(), Some("535"));
            fake.refuse_auth(false);

            send().await.unwrap();
            assert_eq!(fake.message_count(), 1);
            assert_eq!(fake.connections(), 5);
        }

        #[tokio::test]
        async fn untrusted_certificate_and_wrong_password_fail() {
            let fake = SmtpFake::start(SmtpFakeConfig::starttls("leadsync", "s3cret"))
                .await
                .unwrap();
            let other = SmtpFake::start(SmtpFakeConfig::default()).await.unwrap();
            let tls = Tls::Required(tls_params(&other, "localhost"));
            assert!(mailer(&fake, tls).send(email()).await.is_err());
            // The server sees the client's alert a moment after the client gave up.
            for _ in 0..100 {
                if fake.handshake_failures() > 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert_eq!(fake.handshake_failures(), 1);

            fake.refuse_auth(true);
            let tls = Tls::Required(tls_params(&fake, "localhost"));
            let err = mailer(&fake, tls).send(email()).await.unwrap_err();
            assert!(err.is_permanent(), "{err}");
            assert_eq!(fake.message_count(), 0);
        }
    }
}
