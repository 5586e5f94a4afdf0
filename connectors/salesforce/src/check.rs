//! `check` and `check --connect` for a Salesforce target. Offline it states the token
//! endpoint, grant and API version from the settings; with `--connect` it gets a token and
//! describes `Lead` to verify, before any lead is sent, what would otherwise reject every
//! lead: the external ID field (exists, flagged External ID, createable and updateable, long
//! enough for a key), every mapped field (exists, writable for the integration user, a
//! constant that a restricted picklist accepts) and every required field (mapped, or
//! defaulted by Salesforce).
//!
//! It writes nothing to the org, and reports field names and picklist values, never a
//! lead's data.

use leadsync_core::http::redact_url;
use leadsync_core::mapping::ValueSource;
use leadsync_core::{CheckError, CheckReport, FieldRule};
use reqwest::Method;
use serde_json::Value;

use crate::SalesforceConnector;

impl SalesforceConnector {
    /// What `Connector::check` reports; `connect` asks the org.
    pub(crate) async fn check_org(&self, connect: bool) -> Result<CheckReport, CheckError> {
        let mut report = CheckReport::default();
        report.verified.push(format!(
            "token endpoint {} ({})",
            redact_url(&self.token_url),
            self.auth.as_str()
        ));
        report.verified.push(format!(
            "REST API {}, upsert on Lead.{}",
            self.api_version, self.external_id_field
        ));
        if !connect {
            return Ok(report);
        }
        let token = self.tokens.get().await.map_err(|e| CheckError {
            what: "token".into(),
            reason: format!("{} ({})", e.message, e.code),
        })?;
        let instance = self.instance(&token).map_err(|f| CheckError {
            what: "token".into(),
            reason: f.message,
        })?;
        report.verified.push(format!(
            "token obtained; instance {}",
            redact_url(&instance)
        ));
        let fields = self.describe_lead().await?;
        let fail = |what: &str, reason: String| CheckError {
            what: what.into(),
            reason,
        };
        // The external ID field.
        let ext = describe_field(&fields, &self.external_id_field).ok_or_else(|| {
            fail(
                "connection.external_id_field",
                format!(
                    "Lead has no field {}; create a Text field with \"External ID\" and \"Unique\" ticked",
                    self.external_id_field
                ),
            )
        })?;
        if !flag(ext, "externalId") {
            return Err(fail(
                "connection.external_id_field",
                format!(
                    "Lead.{} exists but is not flagged External ID",
                    self.external_id_field
                ),
            ));
        }
        if !flag(ext, "createable") || !flag(ext, "updateable") {
            return Err(fail(
                "connection.external_id_field",
                format!(
                    "Lead.{} is not createable and updateable for the integration user",
                    self.external_id_field
                ),
            ));
        }
        if let Some(len) = ext.get("length").and_then(Value::as_u64) {
            if len > 0 && len < 32 {
                return Err(fail(
                    "connection.external_id_field",
                    format!(
                        "Lead.{} holds {len} characters; keys are 32",
                        self.external_id_field
                    ),
                ));
            }
        }
        report.verified.push(format!(
            "Lead.{} is an External ID{}",
            self.external_id_field,
            if flag(ext, "unique") {
                " (unique)"
            } else {
                " (not unique: tick Unique to be safe from duplicates)"
            }
        ));
        // Mapped fields.
        let rules: &[FieldRule] = &self.mapping.rules;
        for rule in rules {
            let name = &rule.crm_field;
            if name.eq_ignore_ascii_case(&self.external_id_field) {
                continue;
            }
            let key = format!("mapping.fields.{name}");
            let f = describe_field(&fields, name)
                .ok_or_else(|| fail(&key, format!("Lead has no field {name}")))?;
            if !flag(f, "createable") || !flag(f, "updateable") {
                return Err(fail(
                    &key,
                    format!(
                        "Lead.{name} is not createable and updateable for the integration user (field-level security)"
                    ),
                ));
            }
            let is_picklist = f.get("type").and_then(Value::as_str) == Some("picklist");
            if let (true, ValueSource::Constant(Value::String(v))) = (is_picklist, &rule.source) {
                let values = picklist_values(f);
                if !values.contains(&v.as_str()) {
                    if flag(f, "restrictedPicklist") {
                        return Err(fail(
                            &key,
                            format!(
                                "{v:?} is not a value of the restricted picklist Lead.{name}: every lead would be rejected; add it in Setup or map one of: {}",
                                values.join(", ")
                            ),
                        ));
                    }
                    report.verified.push(format!(
                        "warning: {v:?} is not among the values of picklist Lead.{name}; Salesforce stores it, but add it in Setup so reports and filters show it"
                    ));
                }
            }
        }
        report.verified.push(format!(
            "{} mapped field(s) exist on Lead and are createable and updateable",
            rules.len()
        ));
        // Required fields the mapping leaves empty would reject every lead (the Web-to-Lead
        // trap of a required custom picklist).
        for f in &fields {
            let Some(name) = f.get("name").and_then(Value::as_str) else {
                continue;
            };
            let required = flag(f, "createable")
                && !flag(f, "nillable")
                && !flag(f, "defaultedOnCreate")
                && f.get("type").and_then(Value::as_str) != Some("boolean");
            if !required || name.eq_ignore_ascii_case(&self.external_id_field) {
                continue;
            }
            match rules.iter().find(|r| r.crm_field.eq_ignore_ascii_case(name)) {
                None => {
                    return Err(fail(
                        &format!("mapping.fields.{name}"),
                        format!(
                            "Lead.{name} is required and not mapped: Salesforce would reject every lead (REQUIRED_FIELD_MISSING); map it, e.g. {name} = {{ value = \"...\" }}"
                        ),
                    ))
                }
                Some(r) if r.default.is_none() && !matches!(r.source, ValueSource::Constant(_)) => {
                    report.verified.push(format!(
                        "warning: Lead.{name} is required and its mapping has no default: leads without a value will be rejected"
                    ));
                }
                Some(_) => {}
            }
        }
        report
            .verified
            .push("every required Lead field is mapped".to_string());
        if let Some(u) = self.last_api_usage() {
            report.verified.push(format!(
                "API requests used in the last 24 h: {} of {}",
                u.used, u.max
            ));
        }
        Ok(report)
    }

    async fn describe_lead(&self) -> Result<Vec<Value>, CheckError> {
        let err = |reason: String| CheckError {
            what: "describe Lead".into(),
            reason,
        };
        let answer = self
            .call(
                Method::GET,
                &["sobjects", "Lead", "describe"],
                None::<&Value>,
            )
            .await
            .map_err(|f| err(format!("{}: {}", f.code, f.message)))?;
        if !answer.status.is_success() {
            let f = self.request_failure(&answer);
            return Err(err(format!("{}: {}", f.code, f.message)));
        }
        let v: Value = serde_json::from_slice(&answer.body)
            .map_err(|e| err(format!("answer is not JSON: {e}")))?;
        match v.get("fields") {
            Some(Value::Array(fields)) => Ok(fields.clone()),
            _ => Err(err("answer has no `fields` list".into())),
        }
    }
}

fn describe_field<'a>(fields: &'a [Value], name: &str) -> Option<&'a Value> {
    fields.iter().find(|f| {
        f.get("name")
            .and_then(Value::as_str)
            .is_some_and(|n| n.eq_ignore_ascii_case(name))
    })
}

fn flag(f: &Value, name: &str) -> bool {
    f.get(name).and_then(Value::as_bool).unwrap_or(false)
}

fn picklist_values(f: &Value) -> Vec<&str> {
    f.get("picklistValues")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter(|p| p.get("active").and_then(Value::as_bool).unwrap_or(true))
                .filter_map(|p| p.get("value").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default()
}
