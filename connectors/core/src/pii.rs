//! Wrappers that keep personal data and secrets out of logs.
//!
//! [`Pii`] holds a customer's name, e-mail, phone and the like: it serialises transparently
//! (the ledger and the CRM need the value) but `Debug` and `Display` print only a redaction
//! marker, so a `{:?}` in a log line can never leak a person. [`Secret`] does the same for
//! credentials and never serialises its value at all.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A piece of personal data. Read it with [`Pii::expose`], deliberately.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct Pii(String);

impl Pii {
    pub fn new(value: impl Into<String>) -> Self {
        Pii(value.into())
    }
    /// The value itself: only for mapping into a CRM record or the ledger, never for logs.
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl fmt::Debug for Pii {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pii(<redacted {} chars>)", self.0.chars().count())
    }
}

impl fmt::Display for Pii {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A credential (client secret, API key, signing key, signed URL). Never printed, never
/// serialised.
#[derive(Clone)]
pub struct Secret(secrecy::SecretString);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(secrecy::SecretString::from(value.into()))
    }
    pub fn expose(&self) -> &str {
        use secrecy::ExposeSecret;
        self.0.expose_secret()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<secret>")
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_redact() {
        let p = Pii::new("jsmith@microsoft.com");
        assert!(!format!("{p:?}").contains("jsmith"));
        assert!(!format!("{p}").contains("jsmith"));
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            "\"jsmith@microsoft.com\""
        );
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?}{s}").contains("hunter2"));
        assert_eq!(s.expose(), "hunter2");
    }
}
