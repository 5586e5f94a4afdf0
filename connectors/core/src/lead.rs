//! The marketplace lead: its typed model and the readers for both wire shapes.
//!
//! A lead reaches us either as an Azure Table entity (`MarketplaceLeads`, with `CustomerInfo`
//! as a JSON *string* and `LeadSource` = `Source-Action|Offer`) or as the HTTPS payload
//! (`UserDetails{...}`, `LeadSource` = source only, `ActionCode`, `OfferTitle`). Both go through
//! [`read_lead`], which follows the tolerance rules of `spec/marketplace-leads.md` §11: keys
//! are matched case-insensitively at every level, every field is optional, unknown columns are
//! kept, numbers become strings, control characters are stripped, unknown sources and actions
//! are kept raw. Only a record that is not a JSON object, or carries no lead content at all,
//! is refused ([`ReadError`]), and the caller quarantines it.
//!
//! This module knows nothing of targets, ledgers or CRMs.

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;

use crate::decode::{self, DecodedRecord, InvalidMark};
use crate::pii::Pii;
pub use crate::read_error::{ReadError, MAX_RECORD_BYTES};

/// Where the lead came from, normalised; the raw string is kept in [`LeadSource::raw`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "raw")]
pub enum Origin {
    AzureMarketplace,
    AzurePortal,
    AppSource,
    TestDrive,
    Other(String),
}

impl Origin {
    pub fn parse(raw: &str) -> Origin {
        let t = raw.trim();
        let lower = t.to_ascii_lowercase();
        match lower.as_str() {
            "azuremarketplace" => Origin::AzureMarketplace,
            "azureportal" => Origin::AzurePortal,
            "appsource (spza)" | "spza" | "appsource" => Origin::AppSource,
            "testdrive" => Origin::TestDrive,
            _ => Origin::Other(t.to_string()),
        }
    }
    /// The canonical name used in filters, mappings and logs.
    pub fn as_str(&self) -> &str {
        match self {
            Origin::AzureMarketplace => "AzureMarketplace",
            Origin::AzurePortal => "AzurePortal",
            Origin::AppSource => "AppSource",
            Origin::TestDrive => "TestDrive",
            Origin::Other(s) => s,
        }
    }
}

/// What the customer did. Codes are matched case-insensitively (`Create` is mixed case in
/// the docs); unknown codes are kept.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "raw")]
pub enum Action {
    /// `INS`: install / acquire.
    Install,
    /// `PLT`: partner-led trial, "Contact me".
    ContactMe,
    /// `DNC`: do not contact (notification only).
    DoNotContact,
    /// `Create`: Azure portal purchase.
    Create,
    /// `StartTestDrive`.
    StartTestDrive,
    Other(String),
}

impl Action {
    pub fn parse(raw: &str) -> Action {
        let t = raw.trim();
        match t.to_ascii_lowercase().as_str() {
            "ins" => Action::Install,
            "plt" => Action::ContactMe,
            "dnc" => Action::DoNotContact,
            "create" => Action::Create,
            "starttestdrive" => Action::StartTestDrive,
            _ => Action::Other(t.to_string()),
        }
    }
    /// The marketplace's code (`INS`, `PLT`, `DNC`, `Create`, `StartTestDrive`, or the raw one).
    pub fn code(&self) -> &str {
        match self {
            Action::Install => "INS",
            Action::ContactMe => "PLT",
            Action::DoNotContact => "DNC",
            Action::Create => "Create",
            Action::StartTestDrive => "StartTestDrive",
            Action::Other(s) => s,
        }
    }
}

/// The parsed `LeadSource` value: `Source-Action|Offer`, or only the source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeadSource {
    /// The value exactly as received (after control characters were stripped).
    pub raw: String,
    pub origin: Origin,
    /// The action embedded in `Source-Action`, if the value had one.
    pub action: Option<Action>,
    /// The part after the first `|`, verbatim.
    pub offer: Option<String>,
}

impl LeadSource {
    /// Parse a `LeadSource` value. Never fails: what cannot be split is kept whole.
    pub fn parse(raw: &str) -> LeadSource {
        let (left, offer) = match raw.split_once('|') {
            Some((l, r)) => (l, Some(r.trim().to_string()).filter(|s| !s.is_empty())),
            None => (raw, None),
        };
        let left = left.trim();
        // No documented source or action contains a hyphen: split only when there is
        // exactly one and both sides are non-empty; otherwise the whole left part is the source.
        let (origin, action) = match left.split_once('-') {
            Some((s, a)) if !a.contains('-') && !s.trim().is_empty() && !a.trim().is_empty() => {
                (Origin::parse(s), Some(Action::parse(a)))
            }
            _ => (Origin::parse(left), None),
        };
        LeadSource {
            raw: raw.to_string(),
            origin,
            action,
            offer,
        }
    }
}

/// The offer a lead is about. Any part may be missing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    /// `publisherid.offerid` (or whatever followed `|`), verbatim.
    pub raw: Option<String>,
    pub publisher_id: Option<String>,
    pub offer_id: Option<String>,
    /// `OfferTitle` (HTTPS) or `OfferDisplayName` (Table).
    pub display_title: Option<String>,
}

impl Offer {
    fn from_parts(raw: Option<String>, display_title: Option<String>) -> Offer {
        let (publisher_id, offer_id) = match raw.as_deref().and_then(|r| r.split_once('.')) {
            Some((p, o)) if !p.is_empty() && !o.is_empty() => {
                (Some(p.to_string()), Some(o.to_string()))
            }
            _ => (None, None),
        };
        Offer {
            raw,
            publisher_id,
            offer_id,
            display_title,
        }
    }
}

/// The person behind the lead. Every field is optional and redacted in `Debug`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Customer {
    pub first_name: Option<Pii>,
    pub last_name: Option<Pii>,
    pub email: Option<Pii>,
    pub phone: Option<Pii>,
    pub country: Option<String>,
    pub company: Option<Pii>,
    pub title: Option<Pii>,
    /// `CustomerInfo` kept verbatim when it could not be read as a JSON object.
    pub unparsed: Option<Pii>,
}

/// A normalised marketplace lead.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Lead {
    /// Stable identity from its source (Table: account/table/PartitionKey/RowKey; spool: a
    /// hash of the record).
    pub id: String,
    pub source: Option<LeadSource>,
    /// The effective action: `ActionCode` when present, else the one inside `LeadSource`.
    pub action: Option<Action>,
    /// `ActionCode` as given, when it disagrees with the action inside `LeadSource`.
    pub action_conflict: Option<String>,
    pub offer: Offer,
    pub customer: Customer,
    /// Trimmed; `None` when empty, whitespace or a bare `Campaigns:`.
    pub description: Option<Pii>,
    /// The description as received, when it differed from the trimmed one.
    pub description_raw: Option<Pii>,
    /// `CreatedTime`, else the Table `Timestamp`, else `None`.
    pub created_at: Option<DateTime<Utc>>,
    /// The raw `CreatedTime` string when it could not be parsed.
    pub created_raw: Option<String>,
    /// A marketplace test lead (`MSFT_TEST...` in any value).
    pub is_test: bool,
    /// Table `PartitionKey`/`RowKey`, when the record had them.
    pub partition_key: Option<String>,
    pub row_key: Option<String>,
    /// Columns and keys we do not know, kept as they came.
    pub extra: BTreeMap<String, Value>,
    /// What the reader had to tolerate (no personal data): shown in logs as warnings.
    pub warnings: Vec<String>,
    /// Personal data was erased (retention or `forget`); only the lead's shape is left.
    #[serde(default)]
    pub redacted: bool,
}

impl fmt::Debug for Lead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only non-personal fields; the customer prints through Pii's redaction.
        f.debug_struct("Lead")
            .field("id", &self.id)
            .field("source", &self.source)
            .field("action", &self.action)
            .field("offer", &self.offer)
            .field("customer", &self.customer)
            .field("created_at", &self.created_at)
            .field("is_test", &self.is_test)
            .field("extra_keys", &self.extra.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Lead {
    /// The origin, if the lead named one.
    pub fn origin(&self) -> Option<&Origin> {
        self.source.as_ref().map(|s| &s.origin)
    }
    /// The lead without its personal data: the customer, the description and the unknown
    /// columns (which may hold anything) are dropped; ids, source, action, offer and times
    /// stay, so `status` and `trace` still make sense.
    pub fn redact(&mut self) {
        self.customer = Customer::default();
        self.description = None;
        self.description_raw = None;
        self.extra.clear();
        self.redacted = true;
    }

    /// `message` with this lead's personal values replaced by `[redacted]`: CRMs echo what
    /// they refuse (Salesforce: "invalid email address: <the address>"), and such a message is
    /// stored in the ledger and shown by `dead-letters list` and `trace`.
    pub fn scrub_personal_values(&self, message: &str) -> String {
        let c = &self.customer;
        let mut out = message.to_string();
        for v in [
            &c.email,
            &c.first_name,
            &c.last_name,
            &c.phone,
            &c.company,
            &c.title,
            &c.unparsed,
        ]
        .into_iter()
        .flatten()
        {
            let v = v.expose().trim();
            if v.chars().count() < 3 {
                continue;
            }
            for form in [v.to_string(), v.to_lowercase()] {
                out = replace_whole(&out, &form, "[redacted]");
            }
        }
        out
    }

    /// The customer's e-mail, lower-cased and trimmed, when there is one.
    pub fn email_normalised(&self) -> Option<String> {
        self.customer
            .email
            .as_ref()
            .map(|e| e.expose().trim().to_lowercase())
            .filter(|e| !e.is_empty())
    }

    /// A `DNC` lead: the customer must not be contacted.
    pub fn is_do_not_contact(&self) -> bool {
        matches!(self.action, Some(Action::DoNotContact))
    }
}

/// Replace `needle` where it stands as a whole value: not inside a longer word, so that a
/// person titled "title" does not turn Dataverse's `jobtitle` into `job[redacted]`.
fn replace_whole(hay: &str, needle: &str, with: &str) -> String {
    if needle.is_empty() || !hay.contains(needle) {
        return hay.to_string();
    }
    let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    let starts_word = needle.chars().next().is_some_and(|c| c.is_alphanumeric());
    let ends_word = needle
        .chars()
        .next_back()
        .is_some_and(|c| c.is_alphanumeric());
    let mut out = String::with_capacity(hay.len());
    let mut rest = hay;
    while let Some(i) = rest.find(needle) {
        let before = rest[..i].chars().next_back();
        let after = rest[i + needle.len()..].chars().next();
        let inside = (starts_word && word(before)) || (ends_word && word(after));
        out.push_str(&rest[..i]);
        out.push_str(if inside { needle } else { with });
        rest = &rest[i + needle.len()..];
    }
    out.push_str(rest);
    out
}

/// A record a source could not turn into a lead, quarantined with its reason (a
/// [`ReadError`] and where the record was).
#[derive(Debug, Clone)]
pub struct QuarantinedRecord {
    /// Where it came from, e.g. `spool/inbox/leads.jsonl:3` (no personal data).
    pub origin: String,
    pub reason: String,
}

impl DecodedRecord {
    /// The lead in this record, carrying the decoding warnings beside the reader's own.
    pub fn read_lead(&self, id: String) -> Result<Lead, ReadError> {
        let mut lead = read_lead(id, &self.value)?;
        lead.warnings.extend(self.warnings.iter().cloned());
        Ok(lead)
    }
}

/// Which shape a record came in (for warnings and the Table id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireShape {
    TableEntity,
    HttpsPayload,
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Parse one record's bytes (a `.json` element or a `.jsonl` line) into a JSON value,
/// enforcing the size limit first. Bytes that are not UTF-8 refuse the record when they sit
/// in an identity field, and are kept as U+FFFD with a warning elsewhere ([`crate::decode`]).
pub fn parse_record(bytes: &[u8]) -> Result<DecodedRecord, ReadError> {
    if bytes.len() > MAX_RECORD_BYTES {
        return Err(ReadError::TooLarge(bytes.len()));
    }
    let text = decode::decode(bytes)?;
    decode::parse_json(text.text.trim_start_matches('\u{feff}'), text.mark)
}

/// [`parse_record`] for a record cut from a text already decoded (an element of a `.json`
/// array), with the mark that text's bad bytes were decoded as.
pub fn parse_record_text(
    text: &str,
    mark: Option<InvalidMark>,
) -> Result<DecodedRecord, ReadError> {
    if text.len() > MAX_RECORD_BYTES {
        return Err(ReadError::TooLarge(text.len()));
    }
    decode::parse_json(text.trim_start_matches('\u{feff}'), mark)
}

/// Read a lead from a JSON value in either wire shape. `id` is the lead's stable id, chosen
/// by the source.
pub fn read_lead(id: String, record: &Value) -> Result<Lead, ReadError> {
    let obj = match record {
        Value::Object(o) => o,
        other => return Err(ReadError::NotAnObject(json_kind(other))),
    };
    let mut fields = CaseInsensitive::new(obj);
    let mut warnings = Vec::new();

    let partition_key = fields.take_string("PartitionKey", &mut warnings);
    let row_key = fields.take_string("RowKey", &mut warnings);
    let timestamp = fields.take_string("Timestamp", &mut warnings);
    let lead_source_raw = fields.take_string("LeadSource", &mut warnings);
    let action_code = fields.take_string("ActionCode", &mut warnings);
    let created_raw = fields.take_string("CreatedTime", &mut warnings);
    let description_in = fields.take_string("Description", &mut warnings);
    let offer_title = fields.take_string("OfferTitle", &mut warnings);
    let offer_display = fields.take_string("OfferDisplayName", &mut warnings);
    let user_details = fields.take("UserDetails");
    let customer_info = fields.take("CustomerInfo");
    // OData annotations a Table query may add are not lead data.
    let extra: BTreeMap<String, Value> = fields
        .rest()
        .filter(|(k, _)| !k.starts_with("odata.") && !k.contains("@odata."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();

    let mut customer = Customer::default();
    let mut has_customer = false;
    for (label, value) in [
        ("UserDetails", user_details),
        ("CustomerInfo", customer_info),
    ] {
        let Some(value) = value else { continue };
        match value {
            Value::Null => {}
            Value::Object(o) => {
                has_customer = true;
                read_customer(o, &mut customer, &mut warnings);
            }
            Value::String(s) => {
                if s.trim().is_empty() {
                    continue;
                }
                has_customer = true;
                match serde_json::from_str::<Value>(s.trim_start_matches('\u{feff}')) {
                    Ok(Value::Object(o)) => read_customer(&o, &mut customer, &mut warnings),
                    Ok(other) => {
                        warnings.push(format!(
                            "{label} holds {} instead of an object; kept raw",
                            json_kind(&other)
                        ));
                        customer.unparsed = Some(Pii::new(clean_text(s, true)));
                    }
                    Err(_) => {
                        warnings.push(format!("{label} is not valid JSON; kept raw"));
                        customer.unparsed = Some(Pii::new(clean_text(s, true)));
                    }
                }
            }
            other => {
                has_customer = true;
                warnings.push(format!(
                    "{label} is {} instead of an object; kept raw",
                    json_kind(other)
                ));
                customer.unparsed = Some(Pii::new(scalar_to_string(other)));
            }
        }
    }

    for (name, value) in [
        ("LeadSource", &lead_source_raw),
        ("ActionCode", &action_code),
    ] {
        if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
            warnings.push(format!("{name} is empty"));
        }
    }
    let source = lead_source_raw
        .as_deref()
        .filter(|s| !s.trim().is_empty())
        .map(LeadSource::parse);
    if let Some(Origin::Other(raw)) = source.as_ref().map(|s| &s.origin) {
        warnings.push(format!("unknown lead source {raw:?}; kept raw"));
    }
    let explicit_action = action_code
        .as_deref()
        .filter(|s| !s.trim().is_empty())
        .map(Action::parse);
    let embedded_action = source.as_ref().and_then(|s| s.action.clone());
    let mut action_conflict = None;
    let action = match (explicit_action, embedded_action) {
        (Some(e), Some(m)) if e != m => {
            warnings.push(format!(
                "ActionCode {:?} disagrees with LeadSource action {:?}; using ActionCode",
                e.code(),
                m.code()
            ));
            action_conflict = Some(e.code().to_string());
            Some(e)
        }
        (Some(e), _) => Some(e),
        (None, m) => m,
    };
    if let Some(Action::Other(raw)) = &action {
        warnings.push(format!("unknown action code {raw:?}; kept raw"));
    }

    let display_title = offer_title
        .or(offer_display)
        .filter(|s| !s.trim().is_empty());
    let offer = Offer::from_parts(source.as_ref().and_then(|s| s.offer.clone()), display_title);

    let (description, description_raw) = match description_in {
        None => (None, None),
        Some(raw) => {
            let normalised = normalise_description(&raw);
            let raw_kept = (normalised.as_deref() != Some(raw.as_str())).then(|| Pii::new(raw));
            (normalised.map(Pii::new), raw_kept)
        }
    };

    let mut created_unparsed = None;
    let created_at = match created_raw.as_deref().filter(|s| !s.trim().is_empty()) {
        Some(raw) => match parse_created_time(raw) {
            Some(t) => Some(t),
            None => {
                warnings.push("CreatedTime not understood; kept raw".to_string());
                created_unparsed = Some(raw.to_string());
                timestamp.as_deref().and_then(parse_created_time)
            }
        },
        None => timestamp.as_deref().and_then(parse_created_time),
    };

    // An empty `UserDetails: {}` (or one of empty strings) carries no customer details.
    let has_customer = has_customer
        && (customer.first_name.is_some()
            || customer.last_name.is_some()
            || customer.email.is_some()
            || customer.phone.is_some()
            || customer.country.is_some()
            || customer.company.is_some()
            || customer.title.is_some()
            || customer.unparsed.is_some());
    let has_content = has_customer
        || source.is_some()
        || action.is_some()
        || offer.display_title.is_some()
        || (partition_key.is_some() && row_key.is_some());
    if !has_content {
        return Err(ReadError::Empty);
    }

    let mut lead = Lead {
        id,
        source,
        action,
        action_conflict,
        offer,
        customer,
        description,
        description_raw,
        created_at,
        created_raw: created_unparsed,
        is_test: false,
        partition_key,
        row_key,
        extra,
        warnings,
        redacted: false,
    };
    lead.is_test = detect_test_lead(&lead);
    Ok(lead)
}

/// Which wire shape a record looks like.
pub fn wire_shape(record: &Value) -> WireShape {
    match record {
        Value::Object(o)
            if o.keys().any(|k| {
                k.eq_ignore_ascii_case("CustomerInfo") || k.eq_ignore_ascii_case("PartitionKey")
            }) =>
        {
            WireShape::TableEntity
        }
        _ => WireShape::HttpsPayload,
    }
}

fn read_customer(obj: &Map<String, Value>, customer: &mut Customer, warnings: &mut Vec<String>) {
    let mut f = CaseInsensitive::new(obj);
    let pii = |v: Option<String>| v.filter(|s| !s.trim().is_empty()).map(Pii::new);
    customer.first_name = pii(f.take_string("FirstName", warnings)).or(customer.first_name.take());
    customer.last_name = pii(f.take_string("LastName", warnings)).or(customer.last_name.take());
    customer.email = pii(f.take_string("Email", warnings)).or(customer.email.take());
    customer.phone = pii(f.take_string("Phone", warnings)).or(customer.phone.take());
    customer.country = f
        .take_string("Country", warnings)
        .filter(|s| !s.trim().is_empty())
        .or(customer.country.take());
    customer.company = pii(f.take_string("Company", warnings)).or(customer.company.take());
    customer.title = pii(f.take_string("Title", warnings)).or(customer.title.take());
    let unknown: Vec<&String> = f.rest().map(|(k, _)| k).collect();
    if !unknown.is_empty() {
        warnings.push(format!(
            "customer details carry {} unknown key(s); ignored",
            unknown.len()
        ));
    }
}

/// `Campaigns: ` and whitespace mean "no description".
fn normalise_description(raw: &str) -> Option<String> {
    let t = raw.trim();
    if t.is_empty() {
        return None;
    }
    if let Some(rest) = t.strip_prefix("Campaigns:") {
        if rest.trim().is_empty() {
            return None;
        }
    }
    Some(t.to_string())
}

/// `CreatedTime` as seen (`11/01/2026 08:00:00 AM`), RFC 3339, or a few close variants.
pub fn parse_created_time(raw: &str) -> Option<DateTime<Utc>> {
    let t = raw.trim();
    if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
        return Some(dt.with_timezone(&Utc));
    }
    const FORMATS: &[&str] = &[
        "%m/%d/%Y %I:%M:%S %p",
        "%m/%d/%Y %H:%M:%S",
        "%m/%d/%Y %I:%M %p",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S",
    ];
    FORMATS
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(t, f).ok())
        .map(|n| Utc.from_utc_datetime(&n))
}

fn detect_test_lead(lead: &Lead) -> bool {
    let is = |s: &str| s.trim_start().starts_with("MSFT_TEST");
    let c = &lead.customer;
    [
        &c.first_name,
        &c.last_name,
        &c.email,
        &c.company,
        &c.title,
        &lead.description,
    ]
    .iter()
    .any(|v| v.as_ref().is_some_and(|p| is(p.expose())))
        || lead.source.as_ref().is_some_and(|s| is(&s.raw))
        || lead.offer.display_title.as_deref().is_some_and(is)
}

/// Strip control characters. Multi-line fields keep `\n` and `\t`; single-line ones turn
/// them into spaces.
pub fn clean_text(s: &str, multiline: bool) -> String {
    if !s.chars().any(|c| c.is_control()) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\n' | '\t' if multiline => out.push(c),
            '\r' if multiline => {
                // CRLF becomes LF.
                if chars.peek() != Some(&'\n') {
                    out.push('\n');
                }
            }
            '\n' | '\t' | '\r' => out.push(' '),
            // ESC [ ... letter: drop a whole ANSI sequence, not only the ESC.
            '\u{1b}' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    while let Some(&n) = chars.peek() {
                        chars.next();
                        if n.is_ascii_alphabetic() {
                            break;
                        }
                    }
                }
            }
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

fn scalar_to_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => other.to_string(),
    }
}

/// Case-insensitive, take-once view of a JSON object's keys.
struct CaseInsensitive<'a> {
    entries: Vec<(&'a String, &'a Value, bool)>,
}

impl<'a> CaseInsensitive<'a> {
    fn new(obj: &'a Map<String, Value>) -> Self {
        CaseInsensitive {
            entries: obj.iter().map(|(k, v)| (k, v, false)).collect(),
        }
    }

    /// The first non-null value whose key matches `name` ignoring case; every matching key
    /// is consumed.
    fn take(&mut self, name: &str) -> Option<&'a Value> {
        let mut found: Option<&'a Value> = None;
        for (k, v, taken) in self.entries.iter_mut() {
            if !*taken && k.eq_ignore_ascii_case(name) {
                *taken = true;
                if found.is_none() && !v.is_null() {
                    found = Some(*v);
                }
            }
        }
        found
    }

    /// A string field: numbers and booleans become strings (with a warning), objects and
    /// arrays are kept as their JSON text, control characters are stripped.
    fn take_string(&mut self, name: &str, warnings: &mut Vec<String>) -> Option<String> {
        let v = self.take(name)?;
        let multiline = name.eq_ignore_ascii_case("Description");
        let s = match v {
            Value::String(s) => s.clone(),
            other => {
                warnings.push(format!(
                    "{name} is {} instead of a string; converted",
                    json_kind(other)
                ));
                scalar_to_string(other)
            }
        };
        let cleaned = clean_text(&s, multiline);
        if cleaned.len() != s.len() {
            warnings.push(format!("{name} contained control characters; stripped"));
        }
        Some(cleaned)
    }

    fn rest(&self) -> impl Iterator<Item = (&'a String, &'a Value)> + '_ {
        self.entries
            .iter()
            .filter(|(_, _, taken)| !taken)
            .map(|(k, v, _)| (*k, *v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn personal_values_are_scrubbed_as_whole_words_only() {
        let lead = read_lead(
            "l".into(),
            &serde_json::json!({"UserDetails": {"FirstName": "Ada", "Email": "Ada.L@Example.com", "Title": "title"}}),
        )
        .unwrap();
        let m = lead.scrub_personal_values(
            "invalid email address: ada.l@example.com; the length of the 'jobtitle' attribute; title too long; Adam",
        );
        assert_eq!(
            m,
            "invalid email address: [redacted]; the length of the 'jobtitle' attribute; [redacted] too long; Adam"
        );
    }
    use serde_json::json;

    #[test]
    fn lead_source_full_shape() {
        let s = LeadSource::parse("AppSource (SPZA)-INS|bitnami.openedxcypress");
        assert_eq!(s.origin, Origin::AppSource);
        assert_eq!(s.action, Some(Action::Install));
        assert_eq!(s.offer.as_deref(), Some("bitnami.openedxcypress"));
        let o = Offer::from_parts(s.offer.clone(), None);
        assert_eq!(o.publisher_id.as_deref(), Some("bitnami"));
        assert_eq!(o.offer_id.as_deref(), Some("openedxcypress"));
    }

    #[test]
    fn lead_source_source_only_and_odd_shapes() {
        assert_eq!(LeadSource::parse("SPZA").origin, Origin::AppSource);
        assert_eq!(LeadSource::parse("SPZA").action, None);
        let s = LeadSource::parse("a-b-c|x");
        assert_eq!(s.origin, Origin::Other("a-b-c".into()));
        assert_eq!(s.action, None);
        let s = LeadSource::parse("MSFT_TEST_1-MSFT_TEST_1|<Offer Name>");
        assert_eq!(s.action, Some(Action::Other("MSFT_TEST_1".into())));
        assert_eq!(s.offer.as_deref(), Some("<Offer Name>"));
        let o = Offer::from_parts(s.offer, None);
        assert_eq!(o.offer_id, None);
        assert_eq!(o.raw.as_deref(), Some("<Offer Name>"));
        assert_eq!(
            LeadSource::parse("azureportal-create").action,
            Some(Action::Create)
        );
    }

    #[test]
    fn table_entity_with_customerinfo_string() {
        let rec = json!({
            "PartitionKey": "9:2F28:2F2018", "RowKey": "r1",
            "Timestamp": "2026-11-01T08:00:00.8990608Z",
            "LeadSource": "SPZA-PLT|docusign.3701c77e-1cfa-4c56-91e6-3ed0b622145",
            "ActionCode": "PLT", "CreatedTime": "11/01/2026 08:00:00 PM",
            "CustomerInfo": "{\"firstname\": \"John\", \"EMAIL\": \"j@x.example\", \"Phone\": 123}",
            "Description": "Campaigns: ", "OfferDisplayName": "DocuSign",
            "SomeFutureColumn": "kept"
        });
        let l = read_lead("t/1".into(), &rec).unwrap();
        assert_eq!(l.customer.first_name.as_ref().unwrap().expose(), "John");
        assert_eq!(l.customer.email.as_ref().unwrap().expose(), "j@x.example");
        assert_eq!(l.customer.phone.as_ref().unwrap().expose(), "123");
        assert_eq!(l.action, Some(Action::ContactMe));
        assert_eq!(l.offer.publisher_id.as_deref(), Some("docusign"));
        assert_eq!(l.offer.display_title.as_deref(), Some("DocuSign"));
        assert_eq!(l.description, None);
        assert_eq!(l.description_raw.as_ref().unwrap().expose(), "Campaigns: ");
        assert_eq!(
            l.created_at.unwrap().to_rfc3339(),
            "2026-11-01T20:00:00+00:00"
        );
        assert_eq!(l.extra.get("SomeFutureColumn"), Some(&json!("kept")));
        assert_eq!(l.partition_key.as_deref(), Some("9:2F28:2F2018"));
        assert!(!l.is_test);
    }

    #[test]
    fn https_payload_lowercase_userdetails_test_lead() {
        let rec = json!({"userDetails": {"FirstName": "MSFT_TEST_6365", "Email": "MSFT_TEST_6365@test.com"},
            "leadsource": "AzureMarketplace", "ActionCode": "INS", "OfferTitle": "Contoso Test"});
        let l = read_lead("x".into(), &rec).unwrap();
        assert!(l.is_test);
        assert_eq!(l.origin(), Some(&Origin::AzureMarketplace));
        assert_eq!(l.action, Some(Action::Install));
    }

    #[test]
    fn tolerated_inputs_keep_what_they_can() {
        let l = read_lead(
            "x".into(),
            &json!({"CustomerInfo": "{FirstName: John", "LeadSource": "X"}),
        )
        .unwrap();
        assert_eq!(
            l.customer.unparsed.as_ref().unwrap().expose(),
            "{FirstName: John"
        );
        assert!(!l.warnings.is_empty());
        let l = read_lead(
            "x".into(),
            &json!({"CustomerInfo": 42, "ActionCode": "Renew"}),
        )
        .unwrap();
        assert_eq!(l.customer.unparsed.as_ref().unwrap().expose(), "42");
        assert_eq!(l.action, Some(Action::Other("Renew".into())));
        let l = read_lead(
            "x".into(),
            &json!({"OfferTitle": "bad\u{0}title\u{1b}[31m", "LeadSource": "TestDrive"}),
        )
        .unwrap();
        assert_eq!(l.offer.display_title.as_deref(), Some("badtitle"));
    }

    #[test]
    fn conflicting_action_keeps_both() {
        let l = read_lead(
            "x".into(),
            &json!({"LeadSource": "AzurePortal-Create|a.b", "ActionCode": "INS"}),
        )
        .unwrap();
        assert_eq!(l.action, Some(Action::Install));
        assert_eq!(l.source.unwrap().action, Some(Action::Create));
        assert_eq!(l.action_conflict.as_deref(), Some("INS"));
    }

    #[test]
    fn empty_customer_details_are_no_lead() {
        assert_eq!(
            read_lead(
                "x".into(),
                &json!({"UserDetails": {}, "LeadSource": "", "ActionCode": ""})
            ),
            Err(ReadError::Empty)
        );
        assert_eq!(
            read_lead(
                "x".into(),
                &json!({"UserDetails": {"FirstName": " ", "Email": ""}})
            ),
            Err(ReadError::Empty)
        );
        assert!(read_lead("x".into(), &json!({"UserDetails": {"Email": "a@b.c"}})).is_ok());
    }

    #[test]
    fn refused_records() {
        assert_eq!(
            read_lead("x".into(), &json!([1])),
            Err(ReadError::NotAnObject("an array"))
        );
        assert_eq!(
            read_lead("x".into(), &json!(1)),
            Err(ReadError::NotAnObject("a number"))
        );
        assert_eq!(
            read_lead(
                "x".into(),
                &json!({"UserDetails": null, "LeadSource": null, "ActionCode": null})
            ),
            Err(ReadError::Empty)
        );
        assert!(matches!(parse_record(b"{\"a\":"), Err(ReadError::Json(_))));
        let big = vec![b' '; MAX_RECORD_BYTES + 1];
        assert_eq!(
            parse_record(&big),
            Err(ReadError::TooLarge(MAX_RECORD_BYTES + 1))
        );
    }

    #[test]
    fn debug_never_shows_the_person() {
        let l = read_lead("x".into(), &json!({"UserDetails": {"FirstName": "Zoë", "Email": "zoe@x.example", "Phone": "555"}, "Description": "call me at 555"})).unwrap();
        let dbg = format!("{l:?}");
        assert!(
            !dbg.contains("Zoë") && !dbg.contains("zoe@") && !dbg.contains("555"),
            "{dbg}"
        );
    }

    proptest::proptest! {
        #[test]
        fn lead_source_parser_never_panics_and_keeps_raw(s in "\\PC*") {
            let p = LeadSource::parse(&s);
            proptest::prop_assert_eq!(&p.raw, &s);
        }

        #[test]
        fn lead_source_structured_round_trip(src in "[A-Za-z][A-Za-z ()]{0,19}", act in "[A-Za-z]{1,15}", off in "[a-z0-9.-]{0,30}") {
            let raw = format!("{src}-{act}|{off}");
            let p = LeadSource::parse(&raw);
            proptest::prop_assert_eq!(p.action.map(|a| a.code().to_ascii_lowercase()), Some(act.trim().to_ascii_lowercase()));
            proptest::prop_assert_eq!(p.offer.unwrap_or_default(), off.trim().to_string());
        }

        #[test]
        fn reader_never_panics(s in "\\PC{0,200}") {
            if let Ok(r) = parse_record(s.as_bytes()) {
                let _ = r.read_lead("p".into());
            }
        }
    }
}
