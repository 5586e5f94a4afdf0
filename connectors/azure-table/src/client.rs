//! The Table REST client: tables, entity writes, paged queries and entity group
//! transactions, signed with Shared Key / Shared Key Lite or carried by a SAS.
//!
//! It owns the wire format of `spec/crm-apis.md` §3 (JSON `odata=nometadata`, key literals
//! with doubled quotes, continuation headers, the multipart `$batch` body) and turns every
//! non-success answer into a [`TableError`]. It does not retry, sleep or classify for the
//! pipeline beyond that: callers decide. It logs nothing with values: only table names,
//! status codes and error codes, at debug level.

use chrono::Utc;
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use reqwest::{Method, StatusCode, Url};
use serde_json::{Map, Value};

use crate::auth::{authorization, pct, rfc1123, SharedKeyScheme};
use crate::conn::{Account, Credential};
use crate::error::TableError;

/// The service version sent with every request (accepted by Azure and by Azurite).
pub const API_VERSION: &str = "2019-02-02";
/// The most entities one query page returns.
pub const MAX_PAGE: u32 = 1000;
/// The most operations in one entity group transaction.
pub const MAX_BATCH_OPS: usize = 100;
/// The most payload bytes in one entity group transaction.
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

const JSON_NOMETADATA: &str = "application/json;odata=nometadata";

/// Where a query continues: the `x-ms-continuation-*` headers of the previous page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Continuation {
    pub next_partition_key: String,
    pub next_row_key: Option<String>,
}

/// A query over one table's entities.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// An OData filter, e.g. `Timestamp gt datetime'2024-01-01T00:00:00Z'`.
    pub filter: Option<String>,
    pub select: Option<Vec<String>>,
    /// Entities per page (at most [`MAX_PAGE`]; the service caps it anyway).
    pub top: Option<u32>,
}

/// One page of a query.
#[derive(Debug, Clone)]
pub struct Page {
    pub entities: Vec<Map<String, Value>>,
    /// `None` when the query is complete. A page may be empty and still continue.
    pub next: Option<Continuation>,
}

/// One write of an entity group transaction.
#[derive(Debug, Clone)]
pub struct BatchOp {
    pub row_key: String,
    /// The whole entity, `PartitionKey` and `RowKey` included.
    pub entity: Map<String, Value>,
}

/// What a transaction did: all applied, or none, because operation `index` failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOutcome {
    Applied,
    Failed {
        /// The failing operation, when the service named it.
        index: Option<usize>,
        error: TableError,
    },
}

/// A client for one storage account's Table service.
#[derive(Clone)]
pub struct TableClient {
    http: reqwest::Client,
    account: Account,
    scheme: SharedKeyScheme,
}

/// A key literal for a URL: quotes doubled, then percent-encoded.
pub fn key_literal(key: &str) -> String {
    pct(&key.replace('\'', "''"))
}

/// A string literal for `$filter`: `'` doubled and the whole quoted.
pub fn filter_string(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

impl TableClient {
    pub fn new(account: Account, http: reqwest::Client, scheme: SharedKeyScheme) -> Self {
        TableClient {
            http,
            account,
            scheme,
        }
    }

    pub fn account(&self) -> &Account {
        &self.account
    }

    pub fn account_name(&self) -> &str {
        &self.account.name
    }

    /// `<endpoint>/<resource>?<query>`; `resource` is already encoded.
    fn url(&self, resource: &str, query: &[(&str, String)]) -> Result<Url, TableError> {
        let base = self.account.table_endpoint.as_str().trim_end_matches('/');
        let mut text = format!("{base}/{resource}");
        let mut parts: Vec<String> = query
            .iter()
            .map(|(k, v)| format!("{k}={}", pct(v)))
            .collect();
        if let Credential::Sas(sas) = &self.account.credential {
            parts.push(sas.expose().to_string());
        }
        if !parts.is_empty() {
            text.push('?');
            text.push_str(&parts.join("&"));
        }
        Url::parse(&text).map_err(|e| TableError::Protocol(format!("bad request URL: {e}")))
    }

    /// The absolute URL of an entity, as a batch's request line names it (no SAS).
    fn entity_url_text(&self, table: &str, pk: &str, rk: &str) -> String {
        let base = self.account.table_endpoint.as_str().trim_end_matches('/');
        format!(
            "{base}/{table}(PartitionKey='{}',RowKey='{}')",
            key_literal(pk),
            key_literal(rk)
        )
    }

    /// Send one signed request; a non-success status becomes a [`TableError`].
    async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<(&str, Vec<u8>)>,
        extra: &[(&'static str, &str)],
    ) -> Result<(StatusCode, HeaderMap, Vec<u8>), TableError> {
        let date = rfc1123(Utc::now());
        let content_type = body.as_ref().map(|(ct, _)| *ct).unwrap_or("");
        let mut req = self
            .http
            .request(method.clone(), url.clone())
            .header("x-ms-date", &date)
            .header("x-ms-version", API_VERSION)
            .header("Accept", JSON_NOMETADATA)
            .header("DataServiceVersion", "3.0;NetFx")
            .header("MaxDataServiceVersion", "3.0;NetFx");
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        if let Credential::SharedKey(key) = &self.account.credential {
            let auth = authorization(
                self.scheme,
                &self.account.name,
                key,
                method.as_str(),
                content_type,
                &date,
                &url,
            );
            let mut value = HeaderValue::from_str(&auth)
                .map_err(|_| TableError::Protocol("authorization header".into()))?;
            value.set_sensitive(true);
            req = req.header("Authorization", value);
        }
        if let Some((ct, bytes)) = body {
            req = req.header(CONTENT_TYPE, ct).body(bytes);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| TableError::from_transport(&e))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| TableError::from_transport(&e))?
            .to_vec();
        if status.is_success() {
            Ok((status, headers, bytes))
        } else {
            let err = TableError::from_response(status.as_u16(), &headers, &bytes);
            tracing::debug!(account = %self.account.name, status = status.as_u16(), code = err.code(), "table request failed");
            Err(err)
        }
    }

    /// Create `table`. `Ok(true)` when created, `Ok(false)` when it already existed.
    pub async fn create_table(&self, table: &str) -> Result<bool, TableError> {
        let url = self.url("Tables", &[])?;
        let body = serde_json::to_vec(&serde_json::json!({ "TableName": table }))
            .map_err(|e| TableError::Protocol(e.to_string()))?;
        match self
            .send(
                Method::POST,
                url,
                Some(("application/json", body)),
                &[("Prefer", "return-no-content")],
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(TableError::Service { status: 409, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Delete `table` (tests and tools).
    pub async fn delete_table(&self, table: &str) -> Result<(), TableError> {
        let url = self.url(&format!("Tables('{}')", key_literal(table)), &[])?;
        self.send(Method::DELETE, url, None, &[]).await.map(|_| ())
    }

    /// Whether `table` exists, under exactly this name as the service compares names.
    pub async fn table_exists(&self, table: &str) -> Result<bool, TableError> {
        let url = self.url(&format!("Tables('{}')", key_literal(table)), &[])?;
        match self.send(Method::GET, url, None, &[]).await {
            Ok(_) => Ok(true),
            Err(e) if e.status() == Some(404) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Every table name of the account (following `x-ms-continuation-NextTableName`).
    pub async fn list_tables(&self) -> Result<Vec<String>, TableError> {
        let mut names = Vec::new();
        let mut next: Option<String> = None;
        // Bounded: an account holds far fewer than 1000 pages of tables in practice.
        for _ in 0..1000 {
            let mut q = Vec::new();
            if let Some(n) = &next {
                q.push(("NextTableName", n.clone()));
            }
            let url = self.url("Tables", &q)?;
            let (_, headers, body) = self.send(Method::GET, url, None, &[]).await?;
            let v: Value = serde_json::from_slice(&body)
                .map_err(|e| TableError::Protocol(format!("table list is not JSON: {e}")))?;
            for t in v
                .get("value")
                .and_then(|v| v.as_array())
                .into_iter()
                .flatten()
            {
                if let Some(name) = t.get("TableName").and_then(|n| n.as_str()) {
                    names.push(name.to_string());
                }
            }
            next = header(&headers, "x-ms-continuation-NextTableName");
            if next.is_none() {
                break;
            }
        }
        Ok(names)
    }

    /// One page of a query; pass the previous page's `next` to continue.
    pub async fn query_page(
        &self,
        table: &str,
        query: &Query,
        continuation: Option<&Continuation>,
    ) -> Result<Page, TableError> {
        let mut q: Vec<(&str, String)> = Vec::new();
        if let Some(f) = &query.filter {
            q.push(("$filter", f.clone()));
        }
        if let Some(s) = &query.select {
            q.push(("$select", s.join(",")));
        }
        if let Some(top) = query.top {
            q.push(("$top", top.clamp(1, MAX_PAGE).to_string()));
        }
        if let Some(c) = continuation {
            q.push(("NextPartitionKey", c.next_partition_key.clone()));
            if let Some(rk) = &c.next_row_key {
                q.push(("NextRowKey", rk.clone()));
            }
        }
        let url = self.url(&format!("{table}()"), &q)?;
        let (_, headers, body) = self.send(Method::GET, url, None, &[]).await?;
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| TableError::Protocol(format!("query result is not JSON: {e}")))?;
        let entities = match v.get("value") {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|e| e.as_object().cloned())
                .collect(),
            _ => {
                return Err(TableError::Protocol(
                    "query result has no `value` array".into(),
                ))
            }
        };
        let next = header(&headers, "x-ms-continuation-NextPartitionKey").map(|pk| Continuation {
            next_partition_key: pk,
            next_row_key: header(&headers, "x-ms-continuation-NextRowKey"),
        });
        Ok(Page { entities, next })
    }

    /// Insert Entity (fails with 409 `EntityAlreadyExists` when the keys are taken).
    pub async fn insert_entity(
        &self,
        table: &str,
        entity: &Map<String, Value>,
    ) -> Result<(), TableError> {
        let url = self.url(table, &[])?;
        let body = serde_json::to_vec(entity).map_err(|e| TableError::Protocol(e.to_string()))?;
        self.send(
            Method::POST,
            url,
            Some(("application/json", body)),
            &[("Prefer", "return-no-content")],
        )
        .await
        .map(|_| ())
    }

    /// Insert Or Replace: the idempotent upsert (no `If-Match`).
    pub async fn insert_or_replace(
        &self,
        table: &str,
        pk: &str,
        rk: &str,
        entity: &Map<String, Value>,
    ) -> Result<(), TableError> {
        let url = self.url(
            &format!(
                "{table}(PartitionKey='{}',RowKey='{}')",
                key_literal(pk),
                key_literal(rk)
            ),
            &[],
        )?;
        let body = serde_json::to_vec(entity).map_err(|e| TableError::Protocol(e.to_string()))?;
        self.send(Method::PUT, url, Some(("application/json", body)), &[])
            .await
            .map(|_| ())
    }

    /// The body of an entity group transaction of Insert Or Replace operations.
    pub fn batch_body(
        &self,
        table: &str,
        partition_key: &str,
        ops: &[BatchOp],
        batch_id: &str,
    ) -> Result<Vec<u8>, TableError> {
        let changeset = format!("changeset_{batch_id}");
        let mut body = String::new();
        body.push_str(&format!(
            "--batch_{batch_id}\r\nContent-Type: multipart/mixed; boundary={changeset}\r\n\r\n"
        ));
        for (i, op) in ops.iter().enumerate() {
            let json = serde_json::to_string(&op.entity)
                .map_err(|e| TableError::Protocol(e.to_string()))?;
            body.push_str(&format!(
                "--{changeset}\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n\
                 PUT {} HTTP/1.1\r\nContent-ID: {}\r\nContent-Type: application/json\r\nAccept: {JSON_NOMETADATA}\r\n\
                 DataServiceVersion: 3.0;\r\n\r\n{json}\r\n",
                self.entity_url_text(table, partition_key, &op.row_key),
                i + 1
            ));
        }
        body.push_str(&format!("--{changeset}--\r\n\r\n--batch_{batch_id}--\r\n"));
        Ok(body.into_bytes())
    }

    /// Run Insert Or Replace of `ops` (one partition, distinct row keys, at most
    /// [`MAX_BATCH_OPS`]) as one atomic entity group transaction.
    pub async fn submit_batch(
        &self,
        table: &str,
        partition_key: &str,
        ops: &[BatchOp],
    ) -> Result<BatchOutcome, TableError> {
        let batch_id = boundary_id();
        let body = self.batch_body(table, partition_key, ops, &batch_id)?;
        let url = self.url("$batch", &[])?;
        let content_type = format!("multipart/mixed; boundary=batch_{batch_id}");
        let (_, _, resp) = self
            .send(Method::POST, url, Some((&content_type, body)), &[])
            .await?;
        Ok(parse_batch_response(&resp, ops.len()))
    }
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .filter(|s| !s.is_empty())
}

fn boundary_id() -> String {
    use rand::Rng;
    let n: u128 = rand::rng().random();
    format!("{n:032x}")
}

/// Read a `$batch` response: every operation answered 2xx, or the one error response the
/// change set holds, whose message starts with the failing operation's index.
pub fn parse_batch_response(body: &[u8], ops: usize) -> BatchOutcome {
    let text = String::from_utf8_lossy(body);
    let mut statuses = Vec::new();
    let mut rest: &str = &text;
    while let Some(pos) = rest.find("HTTP/1.1 ") {
        let after = &rest[pos + 9..];
        let code: String = after.chars().take_while(|c| c.is_ascii_digit()).collect();
        if let Ok(code) = code.parse::<u16>() {
            statuses.push((code, after));
        }
        rest = &after[code.len().max(1).min(after.len())..];
    }
    let failed = statuses.iter().find(|(code, _)| !(200..300).contains(code));
    match failed {
        None if statuses.len() >= ops => BatchOutcome::Applied,
        None => BatchOutcome::Failed {
            index: None,
            error: TableError::Protocol(format!(
                "batch response answered {} of {ops} operations",
                statuses.len()
            )),
        },
        Some((code, after)) => {
            // The part's body follows the first blank line after its status line.
            let part_body = after
                .split_once("\r\n\r\n")
                .or_else(|| after.split_once("\n\n"))
                .map(|(_, b)| b)
                .unwrap_or("");
            let part_body = part_body.split("\r\n--").next().unwrap_or(part_body).trim();
            let mut error =
                TableError::from_response(*code, &HeaderMap::new(), part_body.as_bytes());
            let mut index = None;
            if let TableError::Service { message, .. } = &mut error {
                if let Some((n, msg)) = message.split_once(':') {
                    if let Ok(i) = n.trim().parse::<usize>() {
                        index = (i < ops).then_some(i);
                        *message = msg.trim().to_string();
                    }
                }
            }
            BatchOutcome::Failed { index, error }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_literals_double_quotes_and_encode() {
        assert_eq!(key_literal("O'Brien"), "O%27%27Brien");
        assert_eq!(key_literal("11:2F1:2F2026"), "11%3A2F1%3A2F2026");
        assert_eq!(filter_string("a'b"), "'a''b'");
    }

    #[test]
    fn batch_responses() {
        let ok = "--batchresponse_1\r\nContent-Type: multipart/mixed; boundary=changesetresponse_2\r\n\r\n\
                  --changesetresponse_2\r\nContent-Type: application/http\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n\r\n\
                  --changesetresponse_2\r\nContent-Type: application/http\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n\r\n\
                  --changesetresponse_2--\r\n--batchresponse_1--\r\n";
        assert_eq!(
            parse_batch_response(ok.as_bytes(), 2),
            BatchOutcome::Applied
        );
        let failed = "--batchresponse_1\r\nContent-Type: multipart/mixed; boundary=changesetresponse_2\r\n\r\n\
                      --changesetresponse_2\r\nContent-Type: application/http\r\n\r\n\
                      HTTP/1.1 400 Bad Request\r\nContent-Type: application/json;odata=nometadata\r\n\r\n\
                      {\"odata.error\":{\"code\":\"PropertiesNeedValue\",\"message\":{\"lang\":\"en-US\",\"value\":\"1:The values are not specified for all properties in the entity.\\nRequestId:x\"}}}\r\n\
                      --changesetresponse_2--\r\n--batchresponse_1--\r\n";
        match parse_batch_response(failed.as_bytes(), 3) {
            BatchOutcome::Failed { index, error } => {
                assert_eq!(index, Some(1));
                assert_eq!(error.code(), "PropertiesNeedValue");
                assert_eq!(error.status(), Some(400));
            }
            other => panic!("{other:?}"),
        }
    }
}
