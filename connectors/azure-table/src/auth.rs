//! Request signing for the Table service: Shared Key, Shared Key Lite and service SAS.
//!
//! Facts from `spec/crm-apis.md` §3.2–3.3: the Table flavour of Shared Key signs
//! `VERB\nContent-MD5\nContent-Type\nDate\nCanonicalizedResource` (no `x-ms-` headers), Lite
//! signs `Date\nCanonicalizedResource`, and the canonicalized resource is `/` + account +
//! the encoded request path, plus `?comp=` when present. With a path-style URL (Azurite,
//! `http://127.0.0.1:10002/devstoreaccount1/T`) the path already starts with the account,
//! so the account appears twice: `/devstoreaccount1/devstoreaccount1/T`. This module only
//! computes strings; it never logs them (a signature is a credential).

use base64::Engine;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use reqwest::Url;
use sha2::Sha256;

use crate::conn::AccountKey;

/// Which Shared Key flavour signs requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SharedKeyScheme {
    #[default]
    SharedKey,
    SharedKeyLite,
}

impl SharedKeyScheme {
    pub fn header_prefix(self) -> &'static str {
        match self {
            SharedKeyScheme::SharedKey => "SharedKey",
            SharedKeyScheme::SharedKeyLite => "SharedKeyLite",
        }
    }
}

/// The canonicalized resource of a request URL for `account`.
pub fn canonicalized_resource(account: &str, url: &Url) -> String {
    let mut s = format!("/{account}{}", url.path());
    if let Some((_, comp)) = url
        .query_pairs()
        .find(|(k, _)| k.eq_ignore_ascii_case("comp"))
    {
        s.push_str("?comp=");
        s.push_str(&comp);
    }
    s
}

/// The string a Table request signs.
pub fn string_to_sign(
    scheme: SharedKeyScheme,
    method: &str,
    content_md5: &str,
    content_type: &str,
    date: &str,
    canonicalized_resource: &str,
) -> String {
    match scheme {
        SharedKeyScheme::SharedKey => format!(
            "{}\n{content_md5}\n{content_type}\n{date}\n{canonicalized_resource}",
            method.to_ascii_uppercase()
        ),
        SharedKeyScheme::SharedKeyLite => format!("{date}\n{canonicalized_resource}"),
    }
}

/// Base64 of HMAC-SHA256 over `text` with the decoded account key.
pub fn sign(key: &AccountKey, text: &str) -> String {
    sign_bytes(key.bytes(), text)
}

fn sign_bytes(key: &[u8], text: &str) -> String {
    // HMAC accepts keys of any length, so this cannot fail; an empty MAC would only make
    // the service refuse the request.
    match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(text.as_bytes());
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        }
        Err(_) => String::new(),
    }
}

/// The `Authorization` header value for a request.
pub fn authorization(
    scheme: SharedKeyScheme,
    account: &str,
    key: &AccountKey,
    method: &str,
    content_type: &str,
    date: &str,
    url: &Url,
) -> String {
    let sts = string_to_sign(
        scheme,
        method,
        "",
        content_type,
        date,
        &canonicalized_resource(account, url),
    );
    format!("{} {account}:{}", scheme.header_prefix(), sign(key, &sts))
}

/// An RFC 1123 date as the `x-ms-date` header wants it.
pub fn rfc1123(t: DateTime<Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

/// Percent-encode everything but RFC 3986 unreserved characters.
pub fn pct(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A service SAS for one table (`spec/crm-apis.md` §3.3). Times are ISO 8601 UTC strings
/// such as `2030-01-01T00:00:00Z`.
#[derive(Debug, Clone, Default)]
pub struct TableSas {
    pub table: String,
    /// Any of `r` (query), `a` (add), `u` (update), `d` (delete), in that order.
    pub permissions: String,
    pub start: Option<String>,
    pub expiry: String,
    pub version: String,
    pub identifier: Option<String>,
    pub ip: Option<String>,
    pub protocol: Option<String>,
    pub start_pk: Option<String>,
    pub start_rk: Option<String>,
    pub end_pk: Option<String>,
    pub end_rk: Option<String>,
}

impl TableSas {
    /// The string the SAS signs.
    pub fn string_to_sign(&self, account: &str) -> String {
        let o = |v: &Option<String>| v.clone().unwrap_or_default();
        [
            self.permissions.clone(),
            o(&self.start),
            self.expiry.clone(),
            format!("/table/{account}/{}", self.table.to_lowercase()),
            o(&self.identifier),
            o(&self.ip),
            o(&self.protocol),
            self.version.clone(),
            o(&self.start_pk),
            o(&self.start_rk),
            o(&self.end_pk),
            o(&self.end_rk),
        ]
        .join("\n")
    }

    /// The token (a query string without `?`), signed with the account key.
    pub fn token(&self, account: &str, key: &AccountKey) -> String {
        let sig = sign(key, &self.string_to_sign(account));
        let mut params: Vec<(&str, String)> = vec![("sv", self.version.clone())];
        params.push(("tn", self.table.clone()));
        params.push(("sp", self.permissions.clone()));
        if let Some(st) = &self.start {
            params.push(("st", st.clone()));
        }
        params.push(("se", self.expiry.clone()));
        for (k, v) in [
            ("si", &self.identifier),
            ("sip", &self.ip),
            ("spr", &self.protocol),
            ("spk", &self.start_pk),
            ("srk", &self.start_rk),
            ("epk", &self.end_pk),
            ("erk", &self.end_rk),
        ] {
            if let Some(v) = v {
                params.push((k, v.clone()));
            }
        }
        params.push(("sig", sig));
        params
            .iter()
            .map(|(k, v)| format!("{k}={}", pct(v)))
            .collect::<Vec<_>>()
            .join("&")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::{DEV_ACCOUNT, DEV_ACCOUNT_KEY};

    #[test]
    fn canonicalized_resource_path_style_names_the_account_twice() {
        let url = Url::parse("http://127.0.0.1:10002/devstoreaccount1/mytable").unwrap();
        assert_eq!(
            canonicalized_resource(DEV_ACCOUNT, &url),
            "/devstoreaccount1/devstoreaccount1/mytable"
        );
        let url = Url::parse(
            "http://127.0.0.1:10002/devstoreaccount1/mytable(PartitionKey='a',RowKey='b')?$filter=x",
        )
        .unwrap();
        assert_eq!(
            canonicalized_resource(DEV_ACCOUNT, &url),
            "/devstoreaccount1/devstoreaccount1/mytable(PartitionKey='a',RowKey='b')"
        );
    }

    #[test]
    fn canonicalized_resource_host_style_and_comp() {
        let url = Url::parse(
            "https://myaccount.table.core.windows.net/mytable(PartitionKey='a',RowKey='b')",
        )
        .unwrap();
        assert_eq!(
            canonicalized_resource("myaccount", &url),
            "/myaccount/mytable(PartitionKey='a',RowKey='b')"
        );
        let url = Url::parse("https://myaccount.table.core.windows.net/mytable?comp=acl&timeout=5")
            .unwrap();
        assert_eq!(
            canonicalized_resource("myaccount", &url),
            "/myaccount/mytable?comp=acl"
        );
        let url = Url::parse("https://myaccount.table.core.windows.net/Tables").unwrap();
        assert_eq!(
            canonicalized_resource("myaccount", &url),
            "/myaccount/Tables"
        );
    }

    #[test]
    fn strings_to_sign() {
        assert_eq!(
            string_to_sign(
                SharedKeyScheme::SharedKey,
                "put",
                "",
                "application/json",
                "Mon, 01 Jan 2024 00:00:00 GMT",
                "/a/a/T"
            ),
            "PUT\n\napplication/json\nMon, 01 Jan 2024 00:00:00 GMT\n/a/a/T"
        );
        assert_eq!(
            string_to_sign(
                SharedKeyScheme::SharedKeyLite,
                "GET",
                "",
                "",
                "Mon, 01 Jan 2024 00:00:00 GMT",
                "/a/T"
            ),
            "Mon, 01 Jan 2024 00:00:00 GMT\n/a/T"
        );
        let d = DateTime::parse_from_rfc3339("2024-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(rfc1123(d), "Mon, 01 Jan 2024 00:00:00 GMT");
    }

    #[test]
    fn hmac_matches_a_known_vector() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let key = AccountKey::from_base64("SmVmZQ==").unwrap();
        let sig = sign(&key, "what do ya want for nothing?");
        let hex: String = base64::engine::general_purpose::STANDARD
            .decode(sig)
            .unwrap()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn sas_token_shape() {
        let key = AccountKey::from_base64(DEV_ACCOUNT_KEY).unwrap();
        let sas = TableSas {
            table: "MyTable".into(),
            permissions: "raud".into(),
            expiry: "2030-01-01T00:00:00Z".into(),
            version: "2019-02-02".into(),
            ..Default::default()
        };
        assert_eq!(
            sas.string_to_sign(DEV_ACCOUNT),
            "raud\n\n2030-01-01T00:00:00Z\n/table/devstoreaccount1/mytable\n\n\n\n2019-02-02\n\n\n\n"
        );
        let token = sas.token(DEV_ACCOUNT, &key);
        assert!(
            token.starts_with("sv=2019-02-02&tn=MyTable&sp=raud&se=2030-01-01T00%3A00%3A00Z&sig=")
        );
    }
}
