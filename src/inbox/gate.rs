//! Who may hand the inbox a lead: the client's network (`allow_from`), its rate
//! (`rate_limit`, per client address, by governor), and the secret (in the path, as
//! `?code=`, or a bearer token), compared in constant time. Built from the settings on
//! start and on every reload, so a rotated secret or a new certificate needs no restart.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::path::Path;
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use subtle::ConstantTimeEq;

use crate::config::HttpsInboxSettings;

/// Shortest secret accepted: a URL secret is the only thing between the internet and the
/// ledger, so it must not be guessable.
pub const MIN_SECRET_LEN: usize = 16;

/// The inbox's checked access rules.
pub struct Gate {
    path: String,
    secrets: Vec<Vec<u8>>,
    bearer: Option<Vec<u8>>,
    allow_from: Vec<ipnet::IpNet>,
    pub max_body_bytes: usize,
    limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
}

/// What the gate says of one request, before its body is read.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    Admitted,
    /// The client's network is not in `allow_from`.
    Forbidden,
    /// Over the client's rate: come back after this long.
    Throttled(Duration),
    /// Wrong path or missing/wrong secret: answered as if nothing were here.
    Unknown,
}

impl Gate {
    /// Resolve the secrets and build the limiter; the error names the key, never a value.
    pub fn try_new(s: &HttpsInboxSettings, source: &str, base: &Path) -> Result<Gate, String> {
        let secret = s
            .secret
            .resolve(base)
            .map_err(|e| format!("source {source}: key `secret`: {e}"))?;
        let secrets: Vec<Vec<u8>> = secret
            .expose()
            .split_whitespace()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        if secrets.is_empty() || secrets.iter().any(|s| s.len() < MIN_SECRET_LEN) {
            return Err(format!(
                "source {source}: key `secret`: each secret must be at least {MIN_SECRET_LEN} \
                 characters (URL-safe; e.g. `openssl rand -hex 24`)"
            ));
        }
        if secrets.iter().any(|s| {
            !s.iter()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(b))
        }) {
            return Err(format!(
                "source {source}: key `secret`: use only letters, digits and - _ . ~ (it \
                 travels in the URL)"
            ));
        }
        let bearer = match &s.bearer_token {
            None => None,
            Some(b) => Some(
                b.resolve(base)
                    .map_err(|e| format!("source {source}: key `bearer_token`: {e}"))?
                    .expose()
                    .as_bytes()
                    .to_vec(),
            ),
        };
        let limiter = NonZeroU32::new(s.rate_limit).map(|per_second| {
            let burst = per_second.saturating_mul(NonZeroU32::MIN.saturating_add(1));
            RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst))
        });
        Ok(Gate {
            path: s.path.clone(),
            secrets,
            bearer,
            allow_from: s.allow_from.clone(),
            max_body_bytes: s.max_body_bytes,
            limiter,
        })
    }

    /// Network, rate, then path and secret (in that order: a flood of guesses is throttled
    /// before any is compared).
    pub fn admit(
        &self,
        peer: IpAddr,
        path: &str,
        query: Option<&str>,
        authorization: Option<&[u8]>,
    ) -> Admission {
        let peer = peer.to_canonical();
        if !self.allow_from.is_empty() && !self.allow_from.iter().any(|n| n.contains(&peer)) {
            return Admission::Forbidden;
        }
        if let Some(limiter) = &self.limiter {
            if let Err(not_until) = limiter.check_key(&peer) {
                let wait = not_until.wait_time_from(governor::clock::Clock::now(
                    &governor::clock::DefaultClock::default(),
                ));
                return Admission::Throttled(wait);
            }
        }
        if self.authorized(path, query, authorization) {
            Admission::Admitted
        } else {
            Admission::Unknown
        }
    }

    fn authorized(&self, path: &str, query: Option<&str>, authorization: Option<&[u8]>) -> bool {
        if let Some(rest) = path.strip_prefix(self.path.as_str()) {
            if let Some(secret) = rest.strip_prefix('/') {
                return self.is_secret(secret.as_bytes());
            }
            if !rest.is_empty() {
                return false;
            }
            if let Some(code) = query.and_then(code_param) {
                return self.is_secret(code.as_bytes());
            }
            if let (Some(expected), Some(given)) = (&self.bearer, authorization) {
                let token = given
                    .strip_prefix(b"Bearer ")
                    .or_else(|| given.strip_prefix(b"bearer "));
                return token.is_some_and(|t| bool::from(t.ct_eq(expected)));
            }
        }
        false
    }

    /// Compared with every secret, in constant time each (no early exit on a match).
    fn is_secret(&self, given: &[u8]) -> bool {
        self.secrets
            .iter()
            .fold(false, |found, s| found | bool::from(given.ct_eq(s)))
    }

    /// Forget clients not seen for a while (bounds the limiter's memory).
    pub fn forget_idle_clients(&self) {
        if let Some(l) = &self.limiter {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

/// The `code` parameter of a query string (URL secrets use no characters needing escapes).
fn code_param(query: &str) -> Option<&str> {
    query.split('&').find_map(|pair| pair.strip_prefix("code="))
}

#[cfg(test)]
mod tests {
    use super::*;
    use leadsync_core::SecretRef;

    fn settings(secret: &str) -> HttpsInboxSettings {
        HttpsInboxSettings {
            listen: "127.0.0.1:0".parse().unwrap(),
            path: "/leads".into(),
            secret: SecretRef::Inline(secret.into()),
            bearer_token: Some(SecretRef::Inline("bearer-token-0123456789".into())),
            tls: None,
            allow_from: vec![
                "10.0.0.0/8".parse().unwrap(),
                "127.0.0.1/32".parse().unwrap(),
            ],
            max_body_bytes: 1 << 20,
            rate_limit: 2,
        }
    }

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn secrets_in_path_query_or_bearer_and_rotation() {
        let g = Gate::try_new(
            &settings("new-secret-0123456789 old-secret-0123456789"),
            "inbox",
            Path::new("/"),
        )
        .unwrap();
        let ok = |p: &str, q: Option<&str>, a: Option<&[u8]>| g.authorized(p, q, a);
        assert!(ok("/leads/new-secret-0123456789", None, None));
        assert!(ok("/leads/old-secret-0123456789", None, None));
        assert!(ok("/leads", Some("x=1&code=new-secret-0123456789"), None));
        assert!(ok("/leads", None, Some(b"Bearer bearer-token-0123456789")));
        assert!(!ok("/leads/new-secret-012345678", None, None));
        assert!(!ok("/leads", None, None));
        assert!(!ok("/leadsX/new-secret-0123456789", None, None));
        assert!(!ok("/leads/new-secret-0123456789/x", None, None));
        assert!(!ok("/other/new-secret-0123456789", None, None));
        assert!(!ok("/leads", None, Some(b"Bearer wrong")));
    }

    #[test]
    fn networks_then_rate_then_secret() {
        let g = Gate::try_new(&settings("new-secret-0123456789"), "inbox", Path::new("/")).unwrap();
        let outside: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(
            g.admit(outside, "/leads/new-secret-0123456789", None, None),
            Admission::Forbidden
        );
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(
            g.admit(mapped, "/leads/new-secret-0123456789", None, None),
            Admission::Admitted
        );
        // 2 a second, bursts of 4: the fifth at once is throttled, wrong secret or not.
        let mut answers = Vec::new();
        for _ in 0..5 {
            answers.push(g.admit(LOCAL, "/leads/wrong", None, None));
        }
        assert_eq!(
            answers[..4],
            [
                Admission::Unknown,
                Admission::Unknown,
                Admission::Unknown,
                Admission::Unknown
            ]
        );
        assert!(matches!(answers[4], Admission::Throttled(_)));
    }

    #[test]
    fn short_or_unsafe_secrets_are_refused_without_echoing_them() {
        for bad in ["short", "has/slash-0123456789abc", "has?query=0123456789"] {
            let e = Gate::try_new(&settings(bad), "inbox", Path::new("/"))
                .err()
                .unwrap();
            assert!(e.contains("`secret`") && !e.contains(bad), "{e}");
        }
    }
}
