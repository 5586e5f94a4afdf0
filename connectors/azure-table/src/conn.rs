//! Storage account connection strings: which account, which Table endpoint, which credential.
//!
//! It owns reading the forms operators paste (Partner Center's
//! `DefaultEndpointsProtocol=https;AccountName=..;AccountKey=..;EndpointSuffix=..`, an explicit
//! `TableEndpoint=..`, `SharedAccessSignature=..`, `UseDevelopmentStorage=true` for Azurite,
//! and the 2017 JSON wrapper `{"connectionString":"..."}`). Errors name the keys involved,
//! never a value: a connection string carries the account key.

use base64::Engine;
use reqwest::Url;
use std::fmt;
use std::sync::Arc;

use leadsync_core::Secret;

/// Azurite's (and the old storage emulator's) well-known account.
pub const DEV_ACCOUNT: &str = "devstoreaccount1";
/// The well-known key of [`DEV_ACCOUNT`]; public, printed in Microsoft's docs.
pub const DEV_ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
/// Azurite's Table endpoint, path style.
pub const DEV_TABLE_ENDPOINT: &str = "http://127.0.0.1:10002/devstoreaccount1";

/// How requests are authorized.
#[derive(Clone)]
pub enum Credential {
    /// The account key, base64-decoded (the HMAC key).
    SharedKey(AccountKey),
    /// A SAS token: the query string without its leading `?`.
    Sas(Secret),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::SharedKey(_) => f.write_str("SharedKey(<redacted>)"),
            Credential::Sas(_) => f.write_str("Sas(<redacted>)"),
        }
    }
}

/// A decoded account key. Never printed.
#[derive(Clone)]
pub struct AccountKey(Arc<Vec<u8>>);

impl AccountKey {
    /// Decode a base64 account key as the portal shows it.
    pub fn from_base64(key: &str) -> Result<AccountKey, ConnError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(key.trim())
            .map_err(|_| ConnError("AccountKey is not valid base64".into()))?;
        if bytes.is_empty() {
            return Err(ConnError("AccountKey is empty".into()));
        }
        Ok(AccountKey(Arc::new(bytes)))
    }
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// A storage account as far as the Table service is concerned.
#[derive(Debug, Clone)]
pub struct Account {
    /// The account name (lower-case as Azure has it).
    pub name: String,
    /// The Table endpoint without a trailing `/`: `https://acct.table.core.windows.net` or,
    /// path style, `http://127.0.0.1:10002/devstoreaccount1`.
    pub table_endpoint: Url,
    pub credential: Credential,
}

/// A connection string that cannot be used. The message names keys, never values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("connection string: {0}")]
pub struct ConnError(pub String);

impl Account {
    /// An account authorized with its key.
    pub fn with_key(name: &str, table_endpoint: &str, key_base64: &str) -> Result<Self, ConnError> {
        Ok(Account {
            name: name.to_string(),
            table_endpoint: parse_endpoint(table_endpoint)?,
            credential: Credential::SharedKey(AccountKey::from_base64(key_base64)?),
        })
    }

    /// An account reached with a SAS token (`sv=...&sig=...`, with or without `?`).
    pub fn with_sas(name: &str, table_endpoint: &str, sas: &str) -> Result<Self, ConnError> {
        let sas = sas.trim().trim_start_matches('?');
        if !sas.contains("sig=") {
            return Err(ConnError(
                "SharedAccessSignature has no `sig=` parameter".into(),
            ));
        }
        Ok(Account {
            name: name.to_string(),
            table_endpoint: parse_endpoint(table_endpoint)?,
            credential: Credential::Sas(Secret::new(sas.to_string())),
        })
    }

    /// Azurite's well-known account on 127.0.0.1:10002.
    pub fn development() -> Result<Self, ConnError> {
        Account::with_key(DEV_ACCOUNT, DEV_TABLE_ENDPOINT, DEV_ACCOUNT_KEY)
    }

    /// Whether the endpoint is path style (the account name is the first path segment), as
    /// with Azurite and other IP-addressed endpoints.
    pub fn is_path_style(&self) -> bool {
        !matches!(self.table_endpoint.path(), "" | "/")
    }

    /// Read a connection string (see the module comment for the forms accepted).
    pub fn from_connection_string(input: &str) -> Result<Self, ConnError> {
        let text = input.trim();
        let unwrapped;
        let text = if text.starts_with('{') {
            unwrapped = unwrap_json(text)?;
            unwrapped.as_str()
        } else {
            text
        };
        let mut protocol = None;
        let mut name = None;
        let mut key = None;
        let mut suffix = None;
        let mut endpoint = None;
        let mut sas = None;
        let mut dev = false;
        for part in text.split(';') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let Some((k, v)) = part.split_once('=') else {
                return Err(ConnError(
                    "expected `Key=Value` pairs separated by `;`".into(),
                ));
            };
            let v = v.trim().to_string();
            match k.trim().to_ascii_lowercase().as_str() {
                "defaultendpointsprotocol" => protocol = Some(v),
                "accountname" => name = Some(v),
                "accountkey" => key = Some(v),
                "endpointsuffix" => suffix = Some(v),
                "tableendpoint" => endpoint = Some(v),
                "sharedaccesssignature" => sas = Some(v),
                "usedevelopmentstorage" => dev = v.eq_ignore_ascii_case("true"),
                // Other services' endpoints and proxies do not concern the Table service.
                _ => {}
            }
        }
        if dev {
            let mut account = Account::development()?;
            if let Some(e) = endpoint {
                account.table_endpoint = parse_endpoint(&e)?;
            }
            return Ok(account);
        }
        let endpoint = match (endpoint, &name) {
            (Some(e), _) => e,
            (None, Some(n)) => {
                let protocol = protocol.unwrap_or_else(|| "https".into());
                if protocol != "https" && protocol != "http" {
                    return Err(ConnError(
                        "DefaultEndpointsProtocol must be `https` or `http`".into(),
                    ));
                }
                let suffix = suffix.unwrap_or_else(|| "core.windows.net".into());
                format!("{protocol}://{n}.table.{suffix}")
            }
            (None, None) => {
                return Err(ConnError(
                    "needs AccountName (with AccountKey), TableEndpoint, or \
                     UseDevelopmentStorage=true"
                        .into(),
                ))
            }
        };
        let table_endpoint = parse_endpoint(&endpoint)?;
        let name = match name {
            Some(n) if !n.is_empty() => n,
            _ => account_from_endpoint(&table_endpoint).ok_or_else(|| {
                ConnError("AccountName is missing and cannot be read from TableEndpoint".into())
            })?,
        };
        let credential = match (key, sas) {
            (Some(k), _) => Credential::SharedKey(AccountKey::from_base64(&k)?),
            (None, Some(s)) => {
                return Account::with_sas(&name, table_endpoint.as_str(), &s);
            }
            (None, None) => {
                return Err(ConnError(
                    "needs AccountKey or SharedAccessSignature".into(),
                ))
            }
        };
        Ok(Account {
            name,
            table_endpoint,
            credential,
        })
    }
}

/// `{"connectionString": "..."}` (the 2017 Partner Center form).
fn unwrap_json(text: &str) -> Result<String, ConnError> {
    let v: serde_json::Value = serde_json::from_str(text)
        .map_err(|_| ConnError("starts with `{` but is not valid JSON".into()))?;
    v.as_object()
        .and_then(|o| {
            o.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("connectionString"))
                .and_then(|(_, v)| v.as_str())
        })
        .map(str::to_string)
        .ok_or_else(|| ConnError("JSON form needs a `connectionString` string".into()))
}

fn parse_endpoint(raw: &str) -> Result<Url, ConnError> {
    let trimmed = raw.trim().trim_end_matches('/');
    let url = Url::parse(trimmed)
        .map_err(|e| ConnError(format!("TableEndpoint is not a valid URL ({e})")))?;
    if url.scheme() != "https" && url.scheme() != "http" {
        return Err(ConnError("TableEndpoint must be an http(s) URL".into()));
    }
    if url.query().is_some() {
        return Err(ConnError(
            "TableEndpoint must not carry a query string (put a SAS in SharedAccessSignature)"
                .into(),
        ));
    }
    Ok(url)
}

/// The account of an endpoint: the first path segment (path style) or the first label of
/// the host (`acct.table.core.windows.net`).
fn account_from_endpoint(url: &Url) -> Option<String> {
    let path = url.path().trim_matches('/');
    if !path.is_empty() {
        return path.split('/').next().map(str::to_string);
    }
    let host = url.host_str()?;
    let first = host.split('.').next()?;
    (host.contains('.') && !first.chars().all(|c| c.is_ascii_digit())).then(|| first.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partner_center_form() {
        let a = Account::from_connection_string(
            "DefaultEndpointsProtocol=https;AccountName=leadacct;AccountKey=a2V5;EndpointSuffix=core.windows.net",
        )
        .unwrap();
        assert_eq!(a.name, "leadacct");
        assert_eq!(
            a.table_endpoint.as_str(),
            "https://leadacct.table.core.windows.net/"
        );
        assert!(!a.is_path_style());
        assert!(matches!(a.credential, Credential::SharedKey(_)));
        let json = Account::from_connection_string(
            r#"{"connectionString":"DefaultEndpointsProtocol=https;AccountName=leadaccount;AccountKey=a2V5"}"#,
        )
        .unwrap();
        assert_eq!(json.name, "leadaccount");
    }

    #[test]
    fn development_storage_and_explicit_endpoint() {
        let a = Account::from_connection_string("UseDevelopmentStorage=true").unwrap();
        assert_eq!(a.name, DEV_ACCOUNT);
        assert!(a.is_path_style());
        assert_eq!(a.table_endpoint.as_str(), DEV_TABLE_ENDPOINT);
        let b = Account::from_connection_string(&format!(
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={DEV_ACCOUNT_KEY};TableEndpoint=http://127.0.0.1:10002/devstoreaccount1/;"
        ))
        .unwrap();
        assert!(b.is_path_style());
        assert_eq!(b.table_endpoint.path(), "/devstoreaccount1");
        let sas = Account::from_connection_string(
            "TableEndpoint=https://acct.table.core.windows.net;SharedAccessSignature=sv=2019-02-02&tn=t&sig=abc",
        )
        .unwrap();
        assert_eq!(sas.name, "acct");
        assert!(matches!(sas.credential, Credential::Sas(_)));
    }

    #[test]
    fn errors_name_keys_not_values() {
        let e =
            Account::from_connection_string("AccountName=x;AccountKey=not*base64!").unwrap_err();
        assert!(e.to_string().contains("AccountKey"), "{e}");
        assert!(!e.to_string().contains("not*base64"), "{e}");
        assert!(Account::from_connection_string("AccountName=x").is_err());
        assert!(Account::from_connection_string("garbage").is_err());
        assert!(Account::from_connection_string("").is_err());
    }
}
