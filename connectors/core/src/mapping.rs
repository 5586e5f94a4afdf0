//! The field-mapping engine: turns a [`Lead`] into the CRM fields one target writes.
//!
//! A target's TOML `[mapping.fields]` table says, for each CRM field, where its value comes
//! from: a lead field (`"email"`), a constant (`{ value = 8 }`), or a simple template
//! (`{ template = "{offer_title} ({action})" }`), with an optional `default` for a missing
//! value and an optional `max_chars`. Connectors supply a default mapping that the TOML
//! overrides field by field. Values longer than the limit are truncated, with a warning that
//! names the field and the lengths but never the value.
//!
//! A target's `[qualify]` values ([`crate::qualify`]) are sources too: `"rating"` or
//! `{ template = "{rating} ({score})" }`. The checked overrides carry the qualification, and
//! [`MappingOverrides::apply_to`] attaches it to the effective [`Mapping`], which computes the
//! values once per lead before its rules.

use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::lead::Lead;
use crate::qualify::{Qualification, Qualified};

/// The declared maximum length of one CRM field, in characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldLimit {
    pub field: String,
    pub max_chars: usize,
}

/// Truncate a string to at most `max_chars` characters, on a char boundary.
pub fn truncate_in_place(s: &mut String, max_chars: usize) -> bool {
    match s.char_indices().nth(max_chars) {
        Some((idx, _)) => {
            s.truncate(idx);
            true
        }
        None => false,
    }
}

pub use crate::lead_field::LeadField;

impl LeadField {
    /// The value of this field for one lead, with the lead's `[qualify]` values when they
    /// were computed.
    pub fn value_with(
        &self,
        lead: &Lead,
        idempotency_key: &str,
        qualified: Option<&Qualified>,
    ) -> Option<Value> {
        match self {
            LeadField::Qualified(name) => qualified.and_then(|q| q.get(name)).cloned(),
            other => other.value(lead, idempotency_key),
        }
    }
}

/// "unknown lead field ...; expected one of ..." for mapping entries and templates.
fn unknown_field(what: &str, name: &str, qualified: &[String]) -> String {
    let named = if qualified.is_empty() {
        String::new()
    } else {
        format!(", or a [qualify] value ({})", qualified.join(", "))
    };
    format!(
        "{what}unknown lead field {name:?}; expected one of {}{named}",
        LeadField::NAMES.join(", ")
    )
}

/// A piece of a template: literal text or a lead field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePart {
    Literal(String),
    Field(LeadField),
}

/// Where one CRM field's value comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum ValueSource {
    Field(LeadField),
    Constant(Value),
    Template(Vec<TemplatePart>),
}

/// One CRM field of a mapping.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldRule {
    pub crm_field: String,
    pub source: ValueSource,
    pub default: Option<Value>,
    pub max_chars: Option<usize>,
}

impl FieldRule {
    /// A rule reading one lead field; panics never: an unknown name is a programming error in
    /// a connector's default mapping, so it is reported as `Err` like any other.
    pub fn field(crm_field: &str, lead_field: &str) -> Result<FieldRule, MappingError> {
        FieldRule::from_raw(crm_field, RawRule::Field(lead_field.to_string()))
    }
    pub fn constant(crm_field: &str, value: Value) -> FieldRule {
        FieldRule {
            crm_field: crm_field.to_string(),
            source: ValueSource::Constant(value),
            default: None,
            max_chars: None,
        }
    }
    pub fn template(crm_field: &str, template: &str) -> Result<FieldRule, MappingError> {
        FieldRule::from_raw(
            crm_field,
            RawRule::Spec(RawRuleSpec {
                template: Some(template.to_string()),
                ..Default::default()
            }),
        )
    }
    pub fn with_default(mut self, default: Value) -> Self {
        self.default = Some(default);
        self
    }
    pub fn with_max_chars(mut self, max: usize) -> Self {
        self.max_chars = Some(max);
        self
    }

    /// Validate one TOML entry.
    pub fn from_raw(crm_field: &str, raw: RawRule) -> Result<FieldRule, MappingError> {
        FieldRule::from_raw_named(crm_field, raw, &[])
    }

    /// Validate one TOML entry that may read the target's `[qualify]` values (`qualified`:
    /// their names).
    pub fn from_raw_named(
        crm_field: &str,
        raw: RawRule,
        qualified: &[String],
    ) -> Result<FieldRule, MappingError> {
        let err = |reason: String| MappingError {
            field: crm_field.to_string(),
            reason,
        };
        let parse_field = |name: &str| {
            LeadField::parse_named(name, qualified)
                .ok_or_else(|| err(unknown_field("", name, qualified)))
        };
        let (source, default, max_chars) = match raw {
            RawRule::Field(name) => (ValueSource::Field(parse_field(&name)?), None, None),
            RawRule::Spec(spec) => {
                let given = [
                    spec.from.is_some(),
                    spec.value.is_some(),
                    spec.template.is_some(),
                ]
                .iter()
                .filter(|b| **b)
                .count();
                if given != 1 {
                    return Err(err(
                        "give exactly one of `from` (a lead field), `value` (a constant) or `template`"
                            .into(),
                    ));
                }
                let source = if let Some(f) = spec.from {
                    ValueSource::Field(parse_field(&f)?)
                } else if let Some(v) = spec.value {
                    ValueSource::Constant(v)
                } else {
                    let t = spec.template.unwrap_or_default();
                    ValueSource::Template(parse_template(&t, qualified).map_err(err)?)
                };
                if spec.max_chars == Some(0) {
                    return Err(err("max_chars must be at least 1".into()));
                }
                (source, spec.default, spec.max_chars)
            }
        };
        Ok(FieldRule {
            crm_field: crm_field.to_string(),
            source,
            default,
            max_chars,
        })
    }

    fn evaluate(&self, lead: &Lead, key: &str, q: Option<&Qualified>) -> Option<Value> {
        let v = match &self.source {
            ValueSource::Field(f) => f.value_with(lead, key, q),
            ValueSource::Constant(v) => Some(v.clone()),
            ValueSource::Template(parts) => {
                let mut out = String::new();
                for p in parts {
                    match p {
                        TemplatePart::Literal(l) => out.push_str(l),
                        TemplatePart::Field(f) => match f.value_with(lead, key, q) {
                            Some(Value::String(s)) => out.push_str(&s),
                            Some(other) => out.push_str(&other.to_string()),
                            None => {}
                        },
                    }
                }
                let t = out.trim();
                (!t.is_empty()).then(|| Value::String(t.to_string()))
            }
        };
        v.or_else(|| self.default.clone())
    }
}

fn parse_template(t: &str, qualified: &[String]) -> Result<Vec<TemplatePart>, String> {
    let mut parts = Vec::new();
    let mut lit = String::new();
    let mut chars = t.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                lit.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                lit.push('}');
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) => name.push(c),
                        None => return Err(format!("template {t:?} has an unclosed `{{`")),
                    }
                }
                let field = LeadField::parse_named(name.trim(), qualified).ok_or_else(|| {
                    unknown_field(&format!("template {t:?} names "), &name, qualified)
                })?;
                if !lit.is_empty() {
                    parts.push(TemplatePart::Literal(std::mem::take(&mut lit)));
                }
                parts.push(TemplatePart::Field(field));
            }
            '}' => return Err(format!("template {t:?} has a stray `}}` (write `}}}}`)")),
            c => lit.push(c),
        }
    }
    if !lit.is_empty() {
        parts.push(TemplatePart::Literal(lit));
    }
    Ok(parts)
}

/// One `[mapping.fields]` entry as written in TOML.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum RawRule {
    /// `Email = "email"`.
    Field(String),
    /// `Company = { from = "company", default = "Unknown", max_chars = 40 }`.
    Spec(RawRuleSpec),
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRuleSpec {
    pub from: Option<String>,
    pub value: Option<Value>,
    pub template: Option<String>,
    pub default: Option<Value>,
    pub max_chars: Option<usize>,
    /// `true` drops a field of the connector's default mapping.
    #[serde(default)]
    pub omit: bool,
}

/// A mapping mistake, naming the CRM field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("mapping for {field:?}: {reason}")]
pub struct MappingError {
    pub field: String,
    pub reason: String,
}

/// The CRM fields of one record, in mapping order.
#[derive(Clone, Default, PartialEq)]
pub struct MappedRecord {
    pub fields: Vec<(String, Value)>,
}

impl fmt::Debug for MappedRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Values are personal data: show only the field names.
        f.debug_struct("MappedRecord")
            .field(
                "fields",
                &self.fields.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl MappedRecord {
    pub fn get(&self, field: &str) -> Option<&Value> {
        self.fields.iter().find(|(k, _)| k == field).map(|(_, v)| v)
    }
    /// The string value of a field, if it is a string.
    pub fn get_str(&self, field: &str) -> Option<&str> {
        self.get(field).and_then(|v| v.as_str())
    }
    /// The fields a CRM write carries: not `key_field` (the value the record is matched
    /// on travels on its own), and no opt-out flag of `opt_out_fields` that is false (a later
    /// event never clears an opt-out). Names compare case-insensitively.
    pub fn fields_to_write<'a>(
        &'a self,
        key_field: &'a str,
        opt_out_fields: &'a [String],
    ) -> impl Iterator<Item = (&'a String, &'a Value)> + 'a {
        self.fields
            .iter()
            .map(|(k, v)| (k, v))
            .filter(move |(k, v)| {
                let false_opt_out = || {
                    **v == Value::Bool(false)
                        && opt_out_fields.iter().any(|f| f.eq_ignore_ascii_case(k))
                };
                !(k.eq_ignore_ascii_case(key_field) || false_opt_out())
            })
    }

    /// As a JSON object (field order kept by insertion where the map preserves it).
    pub fn to_json_object(&self) -> serde_json::Map<String, Value> {
        self.fields.iter().cloned().collect()
    }
}

/// A truncation the mapping made, for the caller to log (no values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncation {
    pub field: String,
    pub original_chars: usize,
    pub max_chars: usize,
}

/// A validated mapping: the rules of one target, in order, and the target's `[qualify]`
/// values they may read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Mapping {
    pub rules: Vec<FieldRule>,
    /// Computed once per lead before the rules; `None`: no `[qualify]` table.
    pub qualification: Option<Arc<Qualification>>,
}

impl Mapping {
    pub const fn new(rules: Vec<FieldRule>) -> Self {
        Mapping {
            rules,
            qualification: None,
        }
    }

    /// The lead's `[qualify]` values, when the mapping has any.
    pub fn qualify(&self, lead: &Lead) -> Option<Qualified> {
        self.qualification
            .as_deref()
            .filter(|q| !q.is_empty())
            .map(|q| q.evaluate(lead))
    }

    /// Merge the TOML table over a connector's defaults (see [`MappingOverrides`]); for
    /// tests and callers that hold the raw table.
    pub fn with_overrides(
        defaults: Mapping,
        replace_defaults: bool,
        overrides: &BTreeMap<String, RawRule>,
    ) -> Result<Mapping, MappingError> {
        Ok(MappingOverrides::from_raw(replace_defaults, overrides)?.apply_to(defaults))
    }

    /// Map one lead. String values are truncated to the rule's `max_chars`, else to the
    /// connector's declared limit for that field.
    pub fn apply(
        &self,
        lead: &Lead,
        idempotency_key: &str,
        limits: &[FieldLimit],
    ) -> (MappedRecord, Vec<Truncation>) {
        let mut out = MappedRecord::default();
        let mut truncations = Vec::new();
        let qualified = self.qualify(lead);
        for rule in &self.rules {
            let Some(mut v) = rule.evaluate(lead, idempotency_key, qualified.as_ref()) else {
                continue;
            };
            let max = rule.max_chars.or_else(|| {
                limits
                    .iter()
                    .find(|l| l.field.eq_ignore_ascii_case(&rule.crm_field))
                    .map(|l| l.max_chars)
            });
            if let (Some(max), Value::String(s)) = (max, &mut v) {
                let original = s.chars().count();
                if truncate_in_place(s, max) {
                    truncations.push(Truncation {
                        field: rule.crm_field.clone(),
                        original_chars: original,
                        max_chars: max,
                    });
                }
            }
            out.fields.push((rule.crm_field.clone(), v));
        }
        (out, truncations)
    }
}

/// One entry of a target's `[mapping.fields]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldOverride {
    /// Write this field by this rule, replacing a default of the same name.
    Set(FieldRule),
    /// Drop the default of this name (`{ omit = true }`).
    Omit(String),
}

/// A target's `[mapping]` table, validated once when the configuration is checked: what to
/// change in its connector's default mapping. Applying it cannot fail.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MappingOverrides {
    /// `true`: only these fields are written, not the connector's defaults.
    pub replace_defaults: bool,
    pub fields: Vec<FieldOverride>,
    /// The target's `[qualify]` values, which `fields` may read; attached to the effective
    /// mapping by [`MappingOverrides::apply_to`].
    pub qualification: Option<Arc<Qualification>>,
}

impl MappingOverrides {
    /// Validate the TOML table, naming the CRM field of the first mistake.
    pub fn from_raw(
        replace_defaults: bool,
        table: &BTreeMap<String, RawRule>,
    ) -> Result<MappingOverrides, MappingError> {
        let fields = table
            .iter()
            .map(|(crm_field, raw)| FieldOverride::from_raw(crm_field, raw))
            .collect::<Result<_, _>>()?;
        Ok(MappingOverrides {
            replace_defaults,
            fields,
            qualification: None,
        })
    }

    /// These overrides with the target's `[qualify]` values.
    pub fn with_qualification(mut self, qualification: Arc<Qualification>) -> Self {
        self.qualification = Some(qualification);
        self
    }

    /// No `[mapping.fields]` entries (the connector's defaults as they are).
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The CRM fields the table names (set or omitted), in order.
    pub fn field_names(&self) -> impl Iterator<Item = &str> {
        self.fields.iter().map(|f| match f {
            FieldOverride::Set(rule) => rule.crm_field.as_str(),
            FieldOverride::Omit(name) => name.as_str(),
        })
    }

    /// The effective mapping: entries override fields of the same name (case-sensitive, as
    /// CRMs are), add new ones, or drop them; the target's `[qualify]` values come along.
    pub fn apply_to(&self, defaults: Mapping) -> Mapping {
        let qualification = self
            .qualification
            .clone()
            .or_else(|| defaults.qualification.clone());
        let mut rules = if self.replace_defaults {
            Vec::new()
        } else {
            defaults.rules
        };
        for change in &self.fields {
            match change {
                FieldOverride::Omit(name) => rules.retain(|r| &r.crm_field != name),
                FieldOverride::Set(rule) => {
                    match rules.iter_mut().find(|r| r.crm_field == rule.crm_field) {
                        Some(existing) => *existing = rule.clone(),
                        None => rules.push(rule.clone()),
                    }
                }
            }
        }
        Mapping {
            rules,
            qualification,
        }
    }
}

impl FieldOverride {
    /// Validate one `[mapping.fields]` entry.
    pub fn from_raw(crm_field: &str, raw: &RawRule) -> Result<FieldOverride, MappingError> {
        FieldOverride::from_raw_named(crm_field, raw, &[])
    }

    /// Validate one `[mapping.fields]` entry that may read the target's `[qualify]` values
    /// (`qualified`: their names).
    pub fn from_raw_named(
        crm_field: &str,
        raw: &RawRule,
        qualified: &[String],
    ) -> Result<FieldOverride, MappingError> {
        if crm_field.trim().is_empty() {
            return Err(MappingError {
                field: crm_field.to_string(),
                reason: "a CRM field name cannot be empty".into(),
            });
        }
        match raw {
            RawRule::Spec(spec) if spec.omit => Ok(FieldOverride::Omit(crm_field.to_string())),
            raw => {
                FieldRule::from_raw_named(crm_field, raw.clone(), qualified).map(FieldOverride::Set)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lead::read_lead;
    use serde_json::json;

    #[test]
    fn fields_to_write_drop_the_key_field_and_false_opt_outs_only() {
        let rec = MappedRecord {
            fields: vec![
                ("LeadSync_Key__c".into(), json!("k1")),
                ("Email".into(), json!("a@b.example")),
                ("HasOptedOutOfEmail".into(), json!(false)),
                ("DoNotCall".into(), json!(true)),
                ("IsConverted".into(), json!(false)),
            ],
        };
        let opt_outs = vec!["hasoptedoutofemail".to_string(), "DoNotCall".to_string()];
        let kept: Vec<&str> = rec
            .fields_to_write("leadsync_key__c", &opt_outs)
            .map(|(k, _)| k.as_str())
            .collect();
        // An opt-out that is true is written; a false boolean that is no opt-out is too.
        assert_eq!(kept, ["Email", "DoNotCall", "IsConverted"]);
    }

    fn lead() -> Lead {
        read_lead(
            "id1".into(),
            &json!({"UserDetails": {"FirstName": "Ada", "LastName": "Lovelace", "Email": "ada@x.example"},
                    "LeadSource": "SPZA-DNC|pub.offer", "OfferTitle": "Contoso", "Extra Col": 5}),
        )
        .unwrap()
    }

    #[test]
    fn fields_constants_templates_defaults_and_truncation() {
        let defaults = Mapping::new(vec![
            FieldRule::field("FirstName", "first_name").unwrap(),
            FieldRule::field("Company", "company")
                .unwrap()
                .with_default(json!("[not provided]")),
            FieldRule::field("Phone", "phone").unwrap(),
        ]);
        let mut o = BTreeMap::new();
        o.insert(
            "Subject".into(),
            RawRule::Spec(RawRuleSpec {
                template: Some("{offer_title} ({action}) {{x}}".into()),
                ..Default::default()
            }),
        );
        o.insert(
            "Source".into(),
            RawRule::Spec(RawRuleSpec {
                value: Some(json!(8)),
                ..Default::default()
            }),
        );
        o.insert(
            "Phone".into(),
            RawRule::Spec(RawRuleSpec {
                omit: true,
                ..Default::default()
            }),
        );
        o.insert("Col".into(), RawRule::Field("extra.extra col".into()));
        o.insert("Dnc".into(), RawRule::Field("dnc".into()));
        let m = Mapping::with_overrides(defaults, false, &o).unwrap();
        let limits = [FieldLimit {
            field: "firstname".into(),
            max_chars: 2,
        }];
        let (rec, tr) = m.apply(&lead(), "k", &limits);
        assert_eq!(rec.get_str("FirstName"), Some("Ad"));
        assert_eq!(
            tr,
            vec![Truncation {
                field: "FirstName".into(),
                original_chars: 3,
                max_chars: 2
            }]
        );
        assert_eq!(rec.get_str("Company"), Some("[not provided]"));
        assert_eq!(rec.get("Phone"), None);
        assert_eq!(rec.get_str("Subject"), Some("Contoso (DNC) {x}"));
        assert_eq!(rec.get("Source"), Some(&json!(8)));
        assert_eq!(rec.get("Col"), Some(&json!(5)));
        assert_eq!(rec.get("Dnc"), Some(&json!(true)));
        assert!(!format!("{rec:?}").contains("Ad\""));
    }

    #[test]
    fn bad_rules_name_the_field() {
        let e = FieldRule::from_raw("X", RawRule::Field("nope".into())).unwrap_err();
        assert_eq!(e.field, "X");
        assert!(e.reason.contains("unknown lead field"));
        assert!(FieldRule::template("Y", "{offer").is_err());
        assert!(FieldRule::template("Y", "{bogus}").is_err());
        let e = FieldRule::from_raw(
            "Z",
            RawRule::Spec(RawRuleSpec {
                from: Some("email".into()),
                value: Some(json!(1)),
                ..Default::default()
            }),
        )
        .unwrap_err();
        assert!(e.reason.contains("exactly one"));
    }
}
