//! Idempotency keys: the one identity a CRM record is written under.
//!
//! Every (target, lead) pair gets a deterministic key, so that a lead pushed twice (after a
//! crash, a lost response, an operator's replay) lands on the same CRM record. A target may
//! key on the *customer* instead (lower-cased e-mail + offer), so the funnel's later events
//! (`PLT` then `INS`) update one CRM lead. The key is 32 lowercase hex characters: valid as a
//! Salesforce External ID, a Dataverse alternate key value, an Azure Table RowKey and an HTTP
//! header.

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::lead::Lead;

/// What a target's records are keyed on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyScope {
    /// One CRM record per marketplace event (the default).
    #[default]
    Lead,
    /// One CRM record per customer and offer; falls back to the lead when there is no e-mail.
    Customer,
}

/// The idempotency key of `lead` for a target whose key namespace is `namespace` (by default
/// the target's name; set it explicitly to keep keys when renaming a target).
pub fn idempotency_key(namespace: &str, scope: KeyScope, lead: &Lead) -> String {
    let mut h = Sha256::new();
    h.update(namespace.as_bytes());
    h.update([0u8]);
    let email = lead
        .customer
        .email
        .as_ref()
        .map(|e| e.expose().trim().to_lowercase())
        .filter(|e| !e.is_empty());
    match (scope, email) {
        (KeyScope::Customer, Some(email)) => {
            h.update(b"customer\0");
            h.update(email.as_bytes());
            h.update([0u8]);
            let offer = lead
                .offer
                .raw
                .as_deref()
                .or(lead.offer.display_title.as_deref())
                .unwrap_or("");
            h.update(offer.trim().to_lowercase().as_bytes());
        }
        _ => {
            h.update(b"lead\0");
            h.update(lead.id.as_bytes());
        }
    }
    let digest = h.finalize();
    hex::encode(&digest[..16])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lead::read_lead;
    use serde_json::json;

    #[test]
    fn keys_are_stable_scoped_and_customer_aware() {
        let a = read_lead(
            "a".into(),
            &json!({"UserDetails": {"Email": "Ann@X.example"}, "LeadSource": "SPZA-PLT|p.o"}),
        )
        .unwrap();
        let b = read_lead(
            "b".into(),
            &json!({"UserDetails": {"Email": "ann@x.example "}, "LeadSource": "SPZA-INS|p.o"}),
        )
        .unwrap();
        let k = idempotency_key("crm", KeyScope::Lead, &a);
        assert_eq!(k.len(), 32);
        assert!(k.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(k, idempotency_key("crm", KeyScope::Lead, &a));
        assert_ne!(k, idempotency_key("crm", KeyScope::Lead, &b));
        assert_ne!(k, idempotency_key("other", KeyScope::Lead, &a));
        assert_eq!(
            idempotency_key("crm", KeyScope::Customer, &a),
            idempotency_key("crm", KeyScope::Customer, &b)
        );
        let no_mail = read_lead("c".into(), &json!({"LeadSource": "SPZA"})).unwrap();
        assert_eq!(
            idempotency_key("crm", KeyScope::Customer, &no_mail),
            idempotency_key("crm", KeyScope::Lead, &no_mail)
        );
    }
}
