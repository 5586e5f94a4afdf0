//! The request signature: HMAC-SHA256 over `<timestamp>.<body>` with a shared secret, sent as
//! `<signature_header>: sha256=<hex>` beside `<timestamp_header>: <unix seconds>`.
//!
//! Signing the timestamp with the body lets a receiver reject replays (an old timestamp) as
//! well as forgeries. The secret never leaves this module except as the MAC.

use hmac::{Hmac, Mac};
use leadsync_core::Secret;
use sha2::Sha256;

/// The default header names.
pub const DEFAULT_TIMESTAMP_HEADER: &str = "X-Leadsync-Timestamp";
pub const DEFAULT_SIGNATURE_HEADER: &str = "X-Leadsync-Signature";

/// `sha256=<lowercase hex of HMAC-SHA256(secret, "<timestamp>.<body>")>`.
pub fn sign(secret: &Secret, timestamp: i64, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail; an empty key is refused
    // earlier (SecretRef::resolve rejects empty secrets).
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector() {
        // printf '1700000000.{}' | openssl dgst -sha256 -hmac secret
        let s = sign(&Secret::new("secret"), 1_700_000_000, b"{}");
        assert_eq!(
            s,
            "sha256=b8569b78799ff9e3cbff0fc2d63a33a2b57f3282abd07c37ae5e8e7d79a5f163"
        );
        assert!(leadsync_fakes::https_receiver::verify_signature(
            b"secret",
            "1700000000",
            b"{}",
            &s
        ));
    }
}
