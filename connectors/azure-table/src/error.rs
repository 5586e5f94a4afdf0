//! What the Table service said when it refused, and what that means for leadsync.
//!
//! It owns reading the `odata.error` JSON body (or the XML one, or just `x-ms-error-code`)
//! and classifying it (`spec/crm-apis.md` §3.7): `ServerBusy`/503, `OperationTimedOut` and 429
//! are throttling; other 5xx, timeouts and connection errors are transient; the 403
//! authentication codes are a configuration problem (wrong key, expired SAS), reported
//! with a message saying so; `TableNotFound` is its own case (the target creates the
//! table, the source reads it as "no leads yet"); other 4xx refuse the record. Messages
//! here may quote the service but never a request value or URL query.

use leadsync_core::http::{body_excerpt, failure_from_transport, retry_after};
use leadsync_core::{DeliveryFailure, FailureClass};
use reqwest::header::HeaderMap;
use std::time::Duration;

/// Codes the service uses when the credential itself is refused.
const AUTH_CODES: &[&str] = &[
    "AuthorizationFailure",
    "AuthenticationFailed",
    "AuthorizationPermissionMismatch",
    "AuthorizationResourceTypeMismatch",
    "AuthorizationServiceMismatch",
    "AuthorizationProtocolMismatch",
    "AuthorizationSourceIPMismatch",
    "InvalidAuthenticationInfo",
];

/// A failed Table request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// No response: connect error, timeout, reset. `unreachable`: no connection could be made
    /// at all (refused, DNS, TLS), which says the account is down, not the record.
    #[error("{message}")]
    Transport {
        code: String,
        message: String,
        unreachable: bool,
    },
    /// The service answered with an error.
    #[error("HTTP {status} {code}: {message}")]
    Service {
        status: u16,
        code: String,
        message: String,
        retry_after: Option<Duration>,
    },
    /// The service answered in a shape we do not understand.
    #[error("unexpected response: {0}")]
    Protocol(String),
}

impl TableError {
    /// From a non-success response.
    pub fn from_response(status: u16, headers: &HeaderMap, body: &[u8]) -> TableError {
        let (code, message) = parse_error_body(body);
        let code = code
            .or_else(|| {
                headers
                    .get("x-ms-error-code")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| format!("http_{status}"));
        let message = message.unwrap_or_else(|| body_excerpt(body, 300));
        TableError::Service {
            status,
            code,
            message,
            retry_after: retry_after(headers),
        }
    }

    /// From a request that got no response (the URL, which may carry a SAS, is redacted).
    pub fn from_transport(err: &reqwest::Error) -> TableError {
        let f = failure_from_transport(err);
        TableError::Transport {
            unreachable: f.class == FailureClass::TargetDown,
            code: f.code,
            message: f.message,
        }
    }

    /// A short code safe for logs (`ServerBusy`, `AuthorizationFailure`, `timeout`, ...).
    pub fn code(&self) -> &str {
        match self {
            TableError::Transport { code, .. } => code,
            TableError::Service { code, .. } => code,
            TableError::Protocol(_) => "unexpected_response",
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            TableError::Service { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The credential was refused: a wrong account key, an expired or too narrow SAS.
    pub fn is_auth(&self) -> bool {
        matches!(self, TableError::Service { status: 403 | 401, code, .. }
            if AUTH_CODES.contains(&code.as_str()) || code.starts_with("http_"))
    }

    pub fn is_table_not_found(&self) -> bool {
        matches!(self, TableError::Service { status: 404, code, .. } if code == "TableNotFound")
    }

    /// The service asked us to slow down.
    pub fn is_throttled(&self) -> bool {
        matches!(self, TableError::Service { status, code, .. }
            if *status == 429 || *status == 503 || code == "ServerBusy" || code == "OperationTimedOut")
    }

    /// How the pipeline must treat a record that failed this way.
    pub fn class(&self) -> FailureClass {
        match self {
            TableError::Transport {
                unreachable: true, ..
            } => FailureClass::TargetDown,
            TableError::Transport { .. } | TableError::Protocol(_) => FailureClass::Transient,
            _ if self.is_throttled() => FailureClass::Throttled,
            // A refused credential is the target's problem, not the record's: the pipeline
            // pauses the target and probes it until the operator fixes the key.
            _ if self.is_auth() => FailureClass::TargetDown,
            _ if self.is_table_not_found() => FailureClass::Transient,
            TableError::Service { status, .. } => match *status {
                408 => FailureClass::Transient,
                s if s >= 500 => FailureClass::Transient,
                _ => FailureClass::Rejected,
            },
        }
    }

    /// A human explanation, naming what to fix when it is configuration.
    pub fn explain(&self) -> String {
        if self.is_auth() {
            format!(
                "the storage account refused the credentials ({}): check the AccountKey or \
                 SAS in the connection string (a SAS needs the right permissions and must \
                 not have expired); service said: {}",
                self.code(),
                self.service_message()
            )
        } else {
            self.to_string()
        }
    }

    fn service_message(&self) -> &str {
        match self {
            TableError::Service { message, .. } | TableError::Transport { message, .. } => message,
            TableError::Protocol(m) => m,
        }
    }

    /// As a per-record failure.
    pub fn to_failure(&self) -> DeliveryFailure {
        let retry_after = match self {
            TableError::Service { retry_after, .. } => *retry_after,
            _ => None,
        };
        DeliveryFailure::new(self.class(), self.code(), self.explain())
            .with_retry_after(retry_after)
    }
}

/// `(code, message)` from an `odata.error` JSON body or an XML `<Error>` body. The message
/// loses the `RequestId:`/`Time:` lines the service appends.
pub fn parse_error_body(body: &[u8]) -> (Option<String>, Option<String>) {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        let err = v.get("odata.error").or_else(|| v.get("error"));
        if let Some(err) = err {
            let code = err.get("code").and_then(|c| c.as_str()).map(str::to_string);
            let message = err
                .get("message")
                .and_then(|m| m.get("value").or(Some(m)))
                .and_then(|m| m.as_str())
                .map(first_line);
            return (code, message);
        }
    }
    let text = String::from_utf8_lossy(body);
    let tag = |name: &str| -> Option<String> {
        let open = format!("<{name}>");
        let close = format!("</{name}>");
        let start = text.find(&open)? + open.len();
        let end = text[start..].find(&close)? + start;
        Some(first_line(&text[start..end]))
    };
    (tag("Code"), tag("Message"))
}

fn first_line(s: &str) -> String {
    s.split("\nRequestId:")
        .next()
        .unwrap_or(s)
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(status: u16, body: &str) -> TableError {
        TableError::from_response(status, &HeaderMap::new(), body.as_bytes())
    }

    #[test]
    fn classification() {
        let busy = service(
            503,
            r#"{"odata.error":{"code":"ServerBusy","message":{"lang":"en-US","value":"The server is busy.\nRequestId:1\nTime:x"}}}"#,
        );
        assert_eq!(busy.code(), "ServerBusy");
        assert_eq!(busy.class(), FailureClass::Throttled);
        assert_eq!(
            busy.to_failure().message,
            "HTTP 503 ServerBusy: The server is busy."
        );
        let auth = service(
            403,
            r#"{"odata.error":{"code":"AuthorizationFailure","message":{"lang":"en-US","value":"Server failed to authenticate the request."}}}"#,
        );
        assert!(auth.is_auth());
        assert_eq!(auth.class(), FailureClass::TargetDown);
        assert!(auth.explain().contains("AccountKey"), "{}", auth.explain());
        let missing = service(
            404,
            r#"{"odata.error":{"code":"TableNotFound","message":{"value":"The table specified does not exist."}}}"#,
        );
        assert!(missing.is_table_not_found());
        let bad = service(
            400,
            "<?xml version=\"1.0\"?><Error><Code>PropertyValueTooLarge</Code><Message>too big</Message></Error>",
        );
        assert_eq!(bad.code(), "PropertyValueTooLarge");
        assert_eq!(bad.class(), FailureClass::Rejected);
        assert_eq!(
            service(
                500,
                r#"{"odata.error":{"code":"OperationTimedOut","message":{"value":"t"}}}"#
            )
            .class(),
            FailureClass::Throttled
        );
        assert_eq!(service(502, "").class(), FailureClass::Transient);
        assert_eq!(service(502, "").code(), "http_502");
    }
}
