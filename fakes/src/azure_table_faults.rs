//! A tiny stand-in for the Azure Table service, for the failures Azurite cannot produce.
//!
//! Azurite is the real emulator and the Table tests use it for everything it does; it never
//! throttles, times out or fails one operation of a change set on demand. This stub answers
//! the Table REST shapes leadsync uses (`POST /Tables`, `PUT <table>(PartitionKey=..,RowKey=..)`,
//! `POST $batch`, `GET <table>()`) on any path prefix, accepts any credential, stores the
//! entities it is sent (by table, PartitionKey, RowKey), and lets a test script faults:
//!
//! - [`AzureTableFaults::fail_next`]: the next N requests get a status and an `odata.error`
//!   code (e.g. 503 `ServerBusy` with `Retry-After`, 500 `OperationTimedOut`, 403
//!   `AuthorizationFailure`);
//! - [`AzureTableFaults::fail_batch_operation`]: the next `$batch` containing a given RowKey
//!   fails at that operation, answered as the service does (one error response whose
//!   message starts with the operation's index; the change set is not applied);
//! - [`AzureTableFaults::set_latency`]: delay every answer.
//!
//! It counts requests. It owns only its own state.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::net::TcpListener;

/// A scripted failure.
#[derive(Debug, Clone)]
pub struct Fault {
    pub status: u16,
    pub code: String,
    pub retry_after: Option<u64>,
}

/// One table's entities by (PartitionKey, RowKey).
pub type Entities = BTreeMap<(String, String), Map<String, Value>>;

#[derive(Default)]
struct Inner {
    faults: VecDeque<Fault>,
    batch_failure: Option<(String, u16, String)>,
    latency: Duration,
    requests: usize,
    batches: usize,
    /// table -> (PartitionKey, RowKey) -> entity
    tables: BTreeMap<String, Entities>,
}

/// A running stub; dropped with the test's runtime.
#[derive(Clone)]
pub struct AzureTableFaults {
    base: String,
    inner: Arc<Mutex<Inner>>,
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn error_body(code: &str, message: &str) -> String {
    serde_json::json!({"odata.error": {"code": code, "message": {"lang": "en-US", "value": message}}})
        .to_string()
}

fn error_response(f: &Fault) -> Response {
    let mut r = (
        StatusCode::from_u16(f.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [
            (
                "content-type",
                "application/json;odata=nometadata".to_string(),
            ),
            ("x-ms-error-code", f.code.clone()),
        ],
        error_body(&f.code, "Injected by the test.\nRequestId:0\nTime:0"),
    )
        .into_response();
    if let Some(s) = f.retry_after {
        if let Ok(v) = s.to_string().parse() {
            r.headers_mut().insert("retry-after", v);
        }
    }
    r
}

/// `(table, pk, rk)` from a path ending in `Table(PartitionKey='a',RowKey='b')`.
fn entity_address(path: &str) -> Option<(String, String, String)> {
    let last = path.rsplit('/').next()?;
    let last = percent_decode(last);
    let (table, rest) = last.split_once('(')?;
    let rest = rest.strip_suffix(')')?;
    let (pk, rk) = rest.split_once("',RowKey='")?;
    let pk = pk.strip_prefix("PartitionKey='")?;
    let rk = rk.strip_suffix('\'')?;
    Some((
        table.to_string(),
        pk.replace("''", "'"),
        rk.replace("''", "'"),
    ))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The operations of a `$batch` body: `(table, pk, rk, entity)`.
fn batch_ops(body: &str) -> Vec<(String, String, String, Map<String, Value>)> {
    let mut ops = Vec::new();
    for part in body.split("Content-Type: application/http").skip(1) {
        let Some(line) = part
            .lines()
            .find(|l| l.starts_with("PUT ") || l.starts_with("POST ") || l.starts_with("MERGE "))
        else {
            continue;
        };
        let url = line.split_whitespace().nth(1).unwrap_or("");
        let path = url.split('?').next().unwrap_or(url);
        let Some((table, pk, rk)) = entity_address(path) else {
            continue;
        };
        let json = part
            .find('{')
            .and_then(|s| part.rfind('}').map(|e| &part[s..=e]))
            .and_then(|j| serde_json::from_str::<Map<String, Value>>(j).ok())
            .unwrap_or_default();
        ops.push((table, pk, rk, json));
    }
    ops
}

async fn handle(
    State(inner): State<Arc<Mutex<Inner>>>,
    method: Method,
    uri: Uri,
    _headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (fault, latency) = {
        let mut g = lock(&inner);
        g.requests += 1;
        (g.faults.pop_front(), g.latency)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let Some(f) = fault {
        return error_response(&f);
    }
    let path = uri.path().to_string();
    let text = String::from_utf8_lossy(&body).into_owned();
    if path.ends_with("/$batch") || path.ends_with("/%24batch") {
        let ops = batch_ops(&text);
        let mut g = lock(&inner);
        g.batches += 1;
        let failing = g.batch_failure.as_ref().and_then(|(rk, status, code)| {
            ops.iter()
                .position(|(_, _, r, _)| r == rk)
                .map(|i| (i, *status, code.clone()))
        });
        let mut out = String::from(
            "--batchresponse_s\r\nContent-Type: multipart/mixed; boundary=changesetresponse_s\r\n\r\n",
        );
        if let Some((i, status, code)) = failing {
            g.batch_failure = None;
            out.push_str(&format!(
                "--changesetresponse_s\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n\
                 HTTP/1.1 {status} Bad Request\r\nContent-Type: application/json;odata=nometadata\r\n\r\n{}\r\n",
                error_body(&code, &format!("{i}:Injected failure of operation {i}.\nRequestId:0"))
            ));
        } else {
            for (table, pk, rk, entity) in ops {
                g.tables.entry(table).or_default().insert((pk, rk), entity);
                out.push_str(
                    "--changesetresponse_s\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n\
                     HTTP/1.1 204 No Content\r\nX-Content-Type-Options: nosniff\r\n\r\n\r\n",
                );
            }
        }
        out.push_str("--changesetresponse_s--\r\n--batchresponse_s--\r\n");
        return (
            StatusCode::ACCEPTED,
            [("content-type", "multipart/mixed; boundary=batchresponse_s")],
            out,
        )
            .into_response();
    }
    if path.ends_with("/Tables") && method == Method::POST {
        let name = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| {
                v.get("TableName")
                    .and_then(|n| n.as_str())
                    .map(str::to_string)
            })
            .unwrap_or_default();
        let mut g = lock(&inner);
        if g.tables.contains_key(&name) {
            return error_response(&Fault {
                status: 409,
                code: "TableAlreadyExists".into(),
                retry_after: None,
            });
        }
        g.tables.insert(name, BTreeMap::new());
        return StatusCode::NO_CONTENT.into_response();
    }
    if method == Method::PUT {
        if let Some((table, pk, rk)) = entity_address(&path) {
            let entity = serde_json::from_str::<Map<String, Value>>(&text).unwrap_or_default();
            lock(&inner)
                .tables
                .entry(table)
                .or_default()
                .insert((pk, rk), entity);
            return StatusCode::NO_CONTENT.into_response();
        }
    }
    if method == Method::GET {
        return (
            StatusCode::OK,
            [("content-type", "application/json;odata=nometadata")],
            r#"{"value":[]}"#,
        )
            .into_response();
    }
    error_response(&Fault {
        status: 400,
        code: "InvalidInput".into(),
        retry_after: None,
    })
}

impl AzureTableFaults {
    /// Start on 127.0.0.1 on a free port.
    pub async fn start() -> std::io::Result<Self> {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&inner));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(AzureTableFaults {
            base: format!("http://{addr}/devstoreaccount1"),
            inner,
        })
    }

    /// The Table endpoint (path style, account `devstoreaccount1`).
    pub fn table_endpoint(&self) -> &str {
        &self.base
    }

    /// A connection string for this stub with Azurite's well-known account.
    pub fn connection_string(&self) -> String {
        format!(
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;\
             AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;\
             TableEndpoint={}",
            self.base
        )
    }

    /// The next `n` requests fail with `status` and `code` (and `Retry-After`, if given).
    pub fn fail_next(&self, n: usize, status: u16, code: &str, retry_after: Option<u64>) {
        let mut g = lock(&self.inner);
        for _ in 0..n {
            g.faults.push_back(Fault {
                status,
                code: code.to_string(),
                retry_after,
            });
        }
    }

    /// The next `$batch` holding `row_key` fails at that operation with `status`/`code`.
    pub fn fail_batch_operation(&self, row_key: &str, status: u16, code: &str) {
        lock(&self.inner).batch_failure = Some((row_key.to_string(), status, code.to_string()));
    }

    /// Delay every answer by `d`.
    pub fn set_latency(&self, d: Duration) {
        lock(&self.inner).latency = d;
    }

    pub fn request_count(&self) -> usize {
        lock(&self.inner).requests
    }

    pub fn batch_count(&self) -> usize {
        lock(&self.inner).batches
    }

    /// The entities stored in `table`, keyed by (PartitionKey, RowKey).
    pub fn entities(&self, table: &str) -> Entities {
        lock(&self.inner)
            .tables
            .get(table)
            .cloned()
            .unwrap_or_default()
    }
}
