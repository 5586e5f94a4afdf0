//! `check` and `check --connect` for a Marketo target. Offline it states the endpoint and
//! lookup field from the settings; with `--connect` it gets a token and describes the lead
//! object (`describe2`, falling back to `describe`) to verify, before any lead is sent, what
//! would otherwise reject every lead: the lookup field exists and Marketo can search by it,
//! and every mapped field exists and is writable.
//!
//! It writes nothing to the instance and reports field names only, never a lead's data.

use leadsync_core::http::redact_url;
use leadsync_core::{CheckError, CheckReport};
use reqwest::Method;
use serde_json::Value;
use std::collections::HashMap;

use crate::MarketoConnector;

/// What `describe` says of one lead field.
struct FieldInfo {
    read_only: bool,
}

/// The lead object as described.
struct LeadDescription {
    fields: HashMap<String, FieldInfo>,
    /// Field names Marketo can look leads up by (`searchableFields`), lower-cased; `None`
    /// when only the older `describe` answered.
    searchable: Option<Vec<String>>,
    dedupe: Vec<String>,
}

fn fail(what: &str, reason: impl Into<String>) -> CheckError {
    CheckError {
        what: what.into(),
        reason: reason.into(),
    }
}

impl MarketoConnector {
    /// What `Connector::check` reports; `connect` asks the instance.
    pub(crate) async fn check_instance(&self, connect: bool) -> Result<CheckReport, CheckError> {
        let mut report = CheckReport::default();
        report.verified.push(format!(
            "REST endpoint {}, Sync Leads (createOrUpdate) looked up by {}",
            redact_url(&self.rest_url),
            self.lookup_field
        ));
        if !connect {
            return Ok(report);
        }
        self.tokens
            .get()
            .await
            .map_err(|e| fail("token", format!("{} ({})", e.message, e.code)))?;
        report.verified.push("token obtained".into());
        let lead = self.describe().await?;
        self.check_lookup_field(&lead, &mut report)?;
        let mut mapped = 0;
        for rule in &self.mapping.rules {
            let name = rule.crm_field.to_lowercase();
            let key = format!("mapping.fields.{}", rule.crm_field);
            match lead.fields.get(&name) {
                None => {
                    return Err(fail(
                        &key,
                        format!(
                        "Marketo has no lead field {} (REST name); create it or change the mapping",
                        rule.crm_field
                    ),
                    ))
                }
                Some(f) if f.read_only => {
                    return Err(fail(
                        &key,
                        format!("lead field {} is read-only", rule.crm_field),
                    ))
                }
                Some(_) => mapped += 1,
            }
        }
        report
            .verified
            .push(format!("{mapped} mapped field(s) exist and are writable"));
        Ok(report)
    }

    fn check_lookup_field(
        &self,
        lead: &LeadDescription,
        report: &mut CheckReport,
    ) -> Result<(), CheckError> {
        let name = self.lookup_field.to_lowercase();
        let key = "connection.lookup_field";
        if !lead.fields.contains_key(&name) {
            return Err(fail(
                key,
                format!(
                    "Marketo has no lead field {}; create a unique string field for leadsync's key, or use \"email\"",
                    self.lookup_field
                ),
            ));
        }
        match &lead.searchable {
            Some(s) if !s.contains(&name) => {
                return Err(fail(
                    key,
                    format!(
                        "lead field {} is not searchable: Sync Leads cannot look leads up by it",
                        self.lookup_field
                    ),
                ))
            }
            Some(_) => report.verified.push(format!(
                "lookup field {} exists and is searchable",
                self.lookup_field
            )),
            None => report.verified.push(format!(
                "lookup field {} exists (this instance does not report searchable fields)",
                self.lookup_field
            )),
        }
        if !self.looks_up_by_email() && !lead.dedupe.contains(&name) {
            report.verified.push(format!(
                "note: Marketo does not list {} among its dedupe fields; keep it unique (leadsync writes one key per lead)",
                self.lookup_field
            ));
        }
        Ok(())
    }

    /// `describe2.json`, else `describe.json`.
    async fn describe(&self) -> Result<LeadDescription, CheckError> {
        match self
            .call(Method::GET, "v1/leads/describe2.json", None)
            .await
        {
            Ok(result) => {
                if let Some(d) = result.first().and_then(from_describe2) {
                    return Ok(d);
                }
            }
            Err(f) if f.code == "http_404" || f.code == "marketo_610" => {}
            Err(f) => return Err(fail("describe", format!("{} ({})", f.message, f.code))),
        }
        let result = self
            .call(Method::GET, "v1/leads/describe.json", None)
            .await
            .map_err(|f| fail("describe", format!("{} ({})", f.message, f.code)))?;
        Ok(from_describe(&result))
    }
}

/// `describe2`: `result[0]` with `fields[]` (`name`, `updateable`), `searchableFields`
/// (lists of field names) and `dedupeFields`.
fn from_describe2(v: &Value) -> Option<LeadDescription> {
    let names = |k: &str| -> Vec<String> {
        v.get(k)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .flat_map(|x| match x {
                        Value::Array(inner) => inner.iter().filter_map(Value::as_str).collect(),
                        Value::String(s) => vec![s.as_str()],
                        _ => Vec::new(),
                    })
                    .map(str::to_lowercase)
                    .collect()
            })
            .unwrap_or_default()
    };
    let fields = v.get("fields")?.as_array()?;
    Some(LeadDescription {
        fields: fields
            .iter()
            .filter_map(|f| {
                let name = f.get("name").and_then(Value::as_str)?;
                let read_only = f.get("updateable").and_then(Value::as_bool) == Some(false);
                Some((name.to_lowercase(), FieldInfo { read_only }))
            })
            .collect(),
        searchable: Some(names("searchableFields")),
        dedupe: names("dedupeFields"),
    })
}

/// `describe`: `result[]` with `rest.name` and `rest.readOnly`.
fn from_describe(result: &[Value]) -> LeadDescription {
    LeadDescription {
        fields: result
            .iter()
            .filter_map(|f| {
                let rest = f.get("rest")?;
                let name = rest.get("name").and_then(Value::as_str)?;
                let read_only = rest.get("readOnly").and_then(Value::as_bool) == Some(true);
                Some((name.to_lowercase(), FieldInfo { read_only }))
            })
            .collect(),
        searchable: None,
        dedupe: Vec::new(),
    }
}
