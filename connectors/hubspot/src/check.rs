//! `check` and `check --connect` for a HubSpot target. Offline it states the API base and
//! id property from the settings; with `--connect` it asks HubSpot about the token (its
//! scopes) and reads the contact properties to verify, before any lead is sent, what would
//! otherwise refuse every lead: the id property exists and holds unique values, and every
//! mapped property exists, is writable and, for an enumeration written with a constant,
//! has that option.
//!
//! It writes nothing to the portal and reports property names only, never a lead's data or
//! the token.

use leadsync_core::http::redact_url;
use leadsync_core::mapping::ValueSource;
use leadsync_core::{CheckError, CheckReport};
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::HashMap;

use crate::HubSpotConnector;

/// The scopes a target needs: write contacts, read them back, read their properties.
const NEEDED_SCOPES: &[&str] = &[
    "crm.objects.contacts.write",
    "crm.objects.contacts.read",
    "crm.schemas.contacts.read",
];

fn fail(what: &str, reason: impl Into<String>) -> CheckError {
    CheckError {
        what: what.into(),
        reason: reason.into(),
    }
}

impl HubSpotConnector {
    /// What `Connector::check` reports; `connect` asks the portal.
    pub(crate) async fn check_portal(&self, connect: bool) -> Result<CheckReport, CheckError> {
        let mut report = CheckReport::default();
        report.verified.push(format!(
            "API {}, contacts batch upsert matched on {}",
            redact_url(&self.base_url),
            self.id_property
        ));
        if !connect {
            return Ok(report);
        }
        self.check_token(&mut report).await?;
        let answer = self
            .call(Method::GET, "crm/v3/properties/contacts", None)
            .await
            .map_err(|f| fail("properties", format!("{} ({})", f.message, f.code)))?;
        let props: HashMap<&str, &Value> = answer
            .body
            .get("results")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| Some((p.get("name")?.as_str()?, p)))
            .collect();
        self.check_id_property(&props, &mut report)?;
        for rule in &self.mapping.rules {
            check_mapped(&props, &rule.crm_field, &rule.source)?;
        }
        report.verified.push(format!(
            "{} mapped propert(ies) exist and are writable",
            self.mapping.rules.len()
        ));
        Ok(report)
    }

    /// The token's scopes, from HubSpot's access-token-info call.
    async fn check_token(&self, report: &mut CheckReport) -> Result<(), CheckError> {
        let body = json!({"tokenKey": self.token.expose()});
        let info = self
            .call(
                Method::POST,
                "oauth/v2/private-apps/get/access-token-info",
                Some(&body),
            )
            .await
            .map_err(|f| fail("access_token", format!("{} ({})", f.message, f.code)))?;
        let scopes: Vec<&str> = info
            .body
            .get("scopes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let missing: Vec<&str> = NEEDED_SCOPES
            .iter()
            .copied()
            .filter(|s| !scopes.contains(s))
            .collect();
        if !missing.is_empty() {
            return Err(fail(
                "connection.access_token",
                format!("the private app lacks the scope(s) {}", missing.join(", ")),
            ));
        }
        report.verified.push(format!(
            "token accepted, scopes {}",
            NEEDED_SCOPES.join(", ")
        ));
        Ok(())
    }

    fn check_id_property(
        &self,
        props: &HashMap<&str, &Value>,
        report: &mut CheckReport,
    ) -> Result<(), CheckError> {
        let key = "connection.id_property";
        let Some(p) = props.get(self.id_property.as_str()) else {
            return Err(fail(
                key,
                format!(
                    "contacts have no property {}; create a single-line text property with \"unique values\" for leadsync's key, or use \"email\"",
                    self.id_property
                ),
            ));
        };
        let unique = p.get("hasUniqueValue").and_then(Value::as_bool) == Some(true);
        if !self.matches_on_email() && !unique {
            return Err(fail(
                key,
                format!(
                    "contact property {} does not require unique values: HubSpot upserts only on email or a unique property",
                    self.id_property
                ),
            ));
        }
        report.verified.push(format!(
            "id property {} exists and is unique",
            self.id_property
        ));
        Ok(())
    }
}

/// One mapped property: it exists, is writable, and a constant written to an enumeration
/// is one of its options.
fn check_mapped(
    props: &HashMap<&str, &Value>,
    name: &str,
    source: &ValueSource,
) -> Result<(), CheckError> {
    let key = format!("mapping.fields.{name}");
    let Some(p) = props.get(name) else {
        return Err(fail(
            &key,
            format!(
                "contacts have no property {name} (internal name); create it or change the mapping"
            ),
        ));
    };
    let read_only = p
        .get("modificationMetadata")
        .and_then(|m| m.get("readOnlyValue"))
        .and_then(Value::as_bool)
        == Some(true);
    if read_only {
        return Err(fail(&key, format!("contact property {name} is read-only")));
    }
    let is_enum = p.get("type").and_then(Value::as_str) == Some("enumeration");
    if let (true, ValueSource::Constant(Value::String(c))) = (is_enum, source) {
        let options: Vec<&str> = p
            .get("options")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|o| o.get("value").and_then(Value::as_str))
            .collect();
        if !options.contains(&c.as_str()) {
            return Err(fail(
                &key,
                format!(
                    "{c:?} is not an option of {name} (options: {})",
                    options.join(", ")
                ),
            ));
        }
    }
    Ok(())
}
