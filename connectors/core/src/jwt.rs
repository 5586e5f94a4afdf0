//! RS256-signed JWTs for the OAuth grants that need one: Microsoft Entra ID's certificate
//! client assertion (Dataverse) and Salesforce's JWT bearer flow. The private key and
//! certificate come from secrets; the signer never prints them.

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use sha1::Digest as _;

/// Why a key could not be loaded or a JWT signed. Never carries key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("private key is not an RSA key in PEM: {0}")]
    Key(String),
    #[error("certificate: no PEM CERTIFICATE block found")]
    NoCertificate,
    #[error("signing a JWT: {0}")]
    Sign(String),
}

/// Signs RS256 JWTs with one private key, naming its certificate (when given) in the
/// `x5t` / `x5t#S256` headers as Entra ID expects.
pub struct RsaSigner {
    key: EncodingKey,
    x5t: Option<String>,
    x5t_s256: Option<String>,
}

impl std::fmt::Debug for RsaSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RsaSigner")
            .field("x5t", &self.x5t)
            .finish_non_exhaustive()
    }
}

/// The DER bytes of the first `CERTIFICATE` block of a PEM text.
fn first_certificate_der(pem: &str) -> Option<Vec<u8>> {
    let start = pem.find("-----BEGIN CERTIFICATE-----")? + "-----BEGIN CERTIFICATE-----".len();
    let end = start + pem[start..].find("-----END CERTIFICATE-----")?;
    let b64: String = pem[start..end]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

impl RsaSigner {
    /// `key_pem`: an RSA private key (PKCS#1 or PKCS#8 PEM). `cert_pem`: its certificate, for
    /// the thumbprint headers (may be the same text as the key when both are in one file).
    pub fn from_pem(key_pem: &str, cert_pem: Option<&str>) -> Result<Self, JwtError> {
        let key = EncodingKey::from_rsa_pem(key_pem.as_bytes())
            .map_err(|e| JwtError::Key(e.to_string()))?;
        let (x5t, x5t_s256) = match cert_pem {
            None => (None, None),
            Some(pem) => {
                let der = first_certificate_der(pem).ok_or(JwtError::NoCertificate)?;
                let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
                (
                    Some(b64.encode(sha1::Sha1::digest(&der))),
                    Some(b64.encode(sha2::Sha256::digest(&der))),
                )
            }
        };
        Ok(RsaSigner { key, x5t, x5t_s256 })
    }

    /// Sign `claims` (a JSON object) with RS256.
    pub fn sign(&self, claims: &serde_json::Value) -> Result<String, JwtError> {
        let mut header = Header::new(Algorithm::RS256);
        header.x5t = self.x5t.clone();
        header.x5t_s256 = self.x5t_s256.clone();
        jsonwebtoken::encode(&header, claims, &self.key).map_err(|e| JwtError::Sign(e.to_string()))
    }
}
