//! A record's bytes into a JSON value, when those bytes may not be UTF-8.
//!
//! The marketplace writes UTF-8, but a spool file may come from anything (a Latin-1 export, a
//! copy cut in the middle of a character). What a byte that is not UTF-8 may do depends on the
//! field it sits in:
//!
//! * an **identity field** (the customer's e-mail, first and last name, company and phone, in
//!   `UserDetails` or `CustomerInfo`) must never reach a CRM with U+FFFD in it: the record is
//!   refused with [`ReadError::NotUtf8`], which names the field and never its value, and the
//!   caller quarantines it. `CustomerInfo` that is not a JSON object counts as identity too:
//!   it is the customer's details in a form nobody could check.
//! * **any other field** (the description, the offer title, the job title, unknown columns)
//!   keeps U+FFFD in place of each bad sequence, and the record carries a warning naming the
//!   field, which the source logs with the record's position.
//!
//! How: valid UTF-8 (nearly every record) is parsed as it is, at no extra cost. Otherwise each
//! invalid sequence is decoded as a marker character that occurs nowhere else in the text (a
//! Unicode noncharacter from U+FDD0..=U+FDEF, absent both as a character and as a `\u`
//! escape), the JSON is parsed, and the marker shows which field each bad sequence landed in,
//! even inside `CustomerInfo`, whose JSON is itself a string. The markers are then replaced by
//! U+FFFD, so none leaves this module.
//!
//! This module knows nothing of files, sources or logging.

use serde_json::{Map, Value};
use std::borrow::Cow;

use crate::read_error::ReadError;

/// The customer fields that identify a person: never delivered with replaced bytes.
pub const IDENTITY_FIELDS: [&str; 5] = ["FirstName", "LastName", "Email", "Phone", "Company"];

/// The objects (or JSON strings) that hold the customer's fields.
const CUSTOMER_CONTAINERS: [&str; 2] = ["UserDetails", "CustomerInfo"];

/// The character invalid bytes were decoded as, in one text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidMark(char);

/// Text decoded from bytes: borrowed when they were UTF-8, else with each invalid sequence
/// replaced by `mark`.
#[derive(Debug)]
pub struct MarkedText<'a> {
    pub text: Cow<'a, str>,
    pub mark: Option<InvalidMark>,
}

/// A record's JSON value (no marker left in it) and what decoding it had to tolerate.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedRecord {
    pub value: Value,
    /// One per field whose bad bytes became U+FFFD, naming the field (no personal data).
    pub warnings: Vec<String>,
}

/// Decode `bytes` as UTF-8, marking each invalid sequence. Fails only when every candidate
/// marker already occurs in the text, where no field could be told from another.
pub fn decode(bytes: &[u8]) -> Result<MarkedText<'_>, ReadError> {
    if let Ok(text) = std::str::from_utf8(bytes) {
        return Ok(MarkedText {
            text: Cow::Borrowed(text),
            mark: None,
        });
    }
    let valid: String = bytes.utf8_chunks().map(|c| c.valid()).collect();
    let mark = pick_mark(&valid).ok_or_else(|| ReadError::NotUtf8 {
        field: "a field".to_string(),
    })?;
    let mut text = String::with_capacity(bytes.len() + 8);
    for chunk in bytes.utf8_chunks() {
        text.push_str(chunk.valid());
        if !chunk.invalid().is_empty() {
            text.push(mark.0);
        }
    }
    Ok(MarkedText {
        text: Cow::Owned(text),
        mark: Some(mark),
    })
}

/// A noncharacter that `text` holds neither as itself nor as a `\u` escape.
fn pick_mark(text: &str) -> Option<InvalidMark> {
    let lower = text.to_ascii_lowercase();
    ('\u{FDD0}'..='\u{FDEF}')
        .find(|c| !text.contains(*c) && !lower.contains(&format!("u{:04x}", u32::from(*c))))
        .map(InvalidMark)
}

/// `text` with the marks shown as U+FFFD (what `String::from_utf8_lossy` would have given).
pub fn unmark<'t>(text: &'t str, mark: Option<InvalidMark>) -> Cow<'t, str> {
    match mark {
        Some(InvalidMark(m)) if text.contains(m) => Cow::Owned(text.replace(m, "\u{FFFD}")),
        _ => Cow::Borrowed(text),
    }
}

/// Parse one record from `text` (all or part of a [`MarkedText`], with its mark), refusing
/// it when an identity field holds bad bytes.
pub fn parse_json(text: &str, mark: Option<InvalidMark>) -> Result<DecodedRecord, ReadError> {
    let value: Value = serde_json::from_str(text).map_err(|e| ReadError::Json(e.to_string()))?;
    let Some(mark) = mark.filter(|m| text.contains(m.0)) else {
        return Ok(DecodedRecord {
            value,
            warnings: Vec::new(),
        });
    };
    let mut warnings = Vec::new();
    let value = match value {
        Value::Object(map) => Value::Object(settle_record(map, mark, &mut warnings)?),
        other => tolerate("the record", other, mark, &mut warnings),
    };
    Ok(DecodedRecord { value, warnings })
}

/// Every top-level field: customer containers are checked field by field, the rest tolerated.
fn settle_record(
    map: Map<String, Value>,
    mark: InvalidMark,
    warnings: &mut Vec<String>,
) -> Result<Map<String, Value>, ReadError> {
    let mut out = Map::new();
    for (key, value) in map {
        let key = settle_key(key, mark, warnings);
        let value = match canonical(&key, &CUSTOMER_CONTAINERS) {
            Some(container) => settle_customer(container, value, mark, warnings)?,
            None => tolerate(&key, value, mark, warnings),
        };
        out.insert(key, value);
    }
    Ok(out)
}

/// `UserDetails` or `CustomerInfo`: an object, or (Table) a string holding one.
fn settle_customer(
    container: &str,
    value: Value,
    mark: InvalidMark,
    warnings: &mut Vec<String>,
) -> Result<Value, ReadError> {
    match value {
        Value::Object(fields) => Ok(Value::Object(settle_customer_fields(
            container, fields, mark, warnings,
        )?)),
        Value::String(s) if s.contains(mark.0) => {
            let not_utf8 = || ReadError::NotUtf8 {
                field: container.to_string(),
            };
            match serde_json::from_str::<Value>(s.trim_start_matches('\u{feff}')) {
                Ok(Value::Object(fields)) => {
                    settle_customer_fields(container, fields, mark, warnings)?;
                    Ok(Value::String(unmark(&s, Some(mark)).into_owned()))
                }
                _ => Err(not_utf8()),
            }
        }
        other => Ok(tolerate(container, other, mark, warnings)),
    }
}

fn settle_customer_fields(
    container: &str,
    fields: Map<String, Value>,
    mark: InvalidMark,
    warnings: &mut Vec<String>,
) -> Result<Map<String, Value>, ReadError> {
    let mut out = Map::new();
    for (key, value) in fields {
        if let Some(name) = canonical(&key, &IDENTITY_FIELDS) {
            if holds_mark(&value, mark) {
                return Err(ReadError::NotUtf8 {
                    field: format!("{container}.{name}"),
                });
            }
        }
        let key = settle_key(key, mark, warnings);
        let value = tolerate(&format!("{container}.{key}"), value, mark, warnings);
        out.insert(key, value);
    }
    Ok(out)
}

/// A key with bad bytes keeps U+FFFD (it can only be an unknown column), with a warning.
fn settle_key(key: String, mark: InvalidMark, warnings: &mut Vec<String>) -> String {
    if !key.contains(mark.0) {
        return key;
    }
    warnings.push("a field name held bytes that are not UTF-8; kept with U+FFFD".to_string());
    unmark(&key, Some(mark)).into_owned()
}

/// A field where bad bytes are tolerated: shown as U+FFFD, with one warning naming it.
fn tolerate(field: &str, value: Value, mark: InvalidMark, warnings: &mut Vec<String>) -> Value {
    if !holds_mark(&value, mark) {
        return value;
    }
    warnings.push(format!(
        "{field} held bytes that are not UTF-8; kept with U+FFFD"
    ));
    unmark_value(value, mark)
}

fn holds_mark(value: &Value, mark: InvalidMark) -> bool {
    match value {
        Value::String(s) => s.contains(mark.0),
        Value::Array(items) => items.iter().any(|v| holds_mark(v, mark)),
        Value::Object(map) => map
            .iter()
            .any(|(k, v)| k.contains(mark.0) || holds_mark(v, mark)),
        _ => false,
    }
}

fn unmark_value(value: Value, mark: InvalidMark) -> Value {
    let unmark_str = |s: String| match unmark(&s, Some(mark)) {
        Cow::Owned(o) => o,
        Cow::Borrowed(_) => s,
    };
    match value {
        Value::String(s) => Value::String(unmark_str(s)),
        Value::Array(items) => {
            Value::Array(items.into_iter().map(|v| unmark_value(v, mark)).collect())
        }
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (unmark_str(k), unmark_value(v, mark)))
                .collect(),
        ),
        other => other,
    }
}

/// The name in `names` that `key` matches ignoring ASCII case (keys are case-insensitive).
fn canonical(key: &str, names: &[&'static str]) -> Option<&'static str> {
    names.iter().copied().find(|n| key.eq_ignore_ascii_case(n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decode_record(bytes: &[u8]) -> Result<DecodedRecord, ReadError> {
        let text = decode(bytes)?;
        parse_json(&text.text, text.mark)
    }

    fn no_mark_left(v: &Value) -> bool {
        !v.to_string()
            .chars()
            .any(|c| ('\u{FDD0}'..='\u{FDEF}').contains(&c))
    }

    #[test]
    fn valid_utf8_is_borrowed_and_untouched() {
        let bytes = "{\"UserDetails\":{\"FirstName\":\"Zoë\"}}".as_bytes();
        let text = decode(bytes).unwrap();
        assert!(matches!(text.text, Cow::Borrowed(_)));
        assert_eq!(text.mark, None);
        let rec = parse_json(&text.text, text.mark).unwrap();
        assert_eq!(rec.value["UserDetails"]["FirstName"], "Zoë");
        assert!(rec.warnings.is_empty());
    }

    #[test]
    fn latin1_in_an_identity_field_names_the_field_not_the_value() {
        for (bytes, field) in [
            (
                &b"{\"UserDetails\":{\"Email\":\"jos\xe9@example.com\"}}"[..],
                "UserDetails.Email",
            ),
            (
                &b"{\"userdetails\":{\"lastname\":\"M\xfcller\"}}"[..],
                "UserDetails.LastName",
            ),
            (
                &b"{\"CustomerInfo\":\"{\\\"FirstName\\\":\\\"Ren\xe9\\\"}\"}"[..],
                "CustomerInfo.FirstName",
            ),
            (
                &b"{\"CustomerInfo\":\"Ren\xe9, not JSON\"}"[..],
                "CustomerInfo",
            ),
            (
                &b"{\"UserDetails\":{\"Phone\":[\"1\xff\"]}}"[..],
                "UserDetails.Phone",
            ),
            (
                &b"{\"UserDetails\":{\"Company\":\"\xc3\"}}"[..],
                "UserDetails.Company",
            ),
        ] {
            let err = decode_record(bytes).unwrap_err();
            assert_eq!(
                err,
                ReadError::NotUtf8 {
                    field: field.to_string()
                }
            );
            let msg = err.to_string();
            assert_eq!(msg, format!("{field} holds bytes that are not UTF-8"));
        }
    }

    #[test]
    fn free_text_keeps_replacement_characters_with_a_warning() {
        let rec = decode_record(
            b"{\"UserDetails\":{\"Email\":\"a@b.example\",\"Title\":\"Chef \xe0 Paris\"},\
              \"Description\":\"caf\xe9\",\"Odd\xff\":1,\"LeadSource\":\"SPZA\"}",
        )
        .unwrap();
        assert_eq!(rec.value["Description"], "caf\u{FFFD}");
        assert_eq!(rec.value["UserDetails"]["Title"], "Chef \u{FFFD} Paris");
        assert_eq!(rec.value["UserDetails"]["Email"], "a@b.example");
        assert_eq!(rec.value["Odd\u{FFFD}"], 1);
        assert!(no_mark_left(&rec.value));
        let mut w = rec.warnings.clone();
        w.sort();
        assert_eq!(
            w,
            [
                "Description held bytes that are not UTF-8; kept with U+FFFD",
                "UserDetails.Title held bytes that are not UTF-8; kept with U+FFFD",
                "a field name held bytes that are not UTF-8; kept with U+FFFD",
            ]
        );
        let lead = rec.read_lead("x".into()).unwrap();
        assert_eq!(lead.description.unwrap().expose(), "caf\u{FFFD}");
        assert!(lead
            .warnings
            .iter()
            .any(|w| w.starts_with("Description held")));
    }

    #[test]
    fn customerinfo_string_with_bad_free_text_is_kept() {
        let rec = decode_record(b"{\"CustomerInfo\":\"{\\\"Email\\\":\\\"a@b.example\\\",\\\"Country\\\":\\\"C\xf4te\\\"}\"}")
            .unwrap();
        assert!(no_mark_left(&rec.value));
        assert_eq!(
            rec.warnings,
            ["CustomerInfo.Country held bytes that are not UTF-8; kept with U+FFFD"]
        );
        let lead = rec.read_lead("x".into()).unwrap();
        assert_eq!(lead.customer.country.as_deref(), Some("C\u{FFFD}te"));
        assert_eq!(lead.customer.email.unwrap().expose(), "a@b.example");
    }

    #[test]
    fn the_mark_avoids_characters_and_escapes_already_in_the_text() {
        let rec = decode_record(
            b"{\"Description\":\"\xef\xb7\x90 \\ufdd1 \\\\uFDD2 \xff\",\"UserDetails\":{\"Email\":\"\\uFDD3@x\"}}",
        )
        .unwrap();
        assert_eq!(
            rec.value["Description"],
            "\u{FDD0} \u{FDD1} \\uFDD2 \u{FFFD}"
        );
        assert_eq!(rec.value["UserDetails"]["Email"], "\u{FDD3}@x");
        assert_eq!(rec.warnings.len(), 1);
        assert_eq!(decode(b"\xff").unwrap().mark, Some(InvalidMark('\u{FDD0}')));
        let all: String = ('\u{FDD0}'..='\u{FDEF}').collect();
        let mut crowded = format!("{{\"Description\":\"{all}").into_bytes();
        crowded.extend_from_slice(b"\xff\"}");
        assert_eq!(
            decode(&crowded).unwrap_err(),
            ReadError::NotUtf8 {
                field: "a field".into()
            }
        );
    }

    #[test]
    fn invalid_bytes_outside_strings_are_bad_json() {
        assert!(matches!(
            decode_record(b"{\"a\":1\xff}"),
            Err(ReadError::Json(_))
        ));
        let rec = decode_record(b"\"\xff\"").unwrap();
        assert_eq!(rec.value, json!("\u{FFFD}"));
    }

    proptest::proptest! {
        #[test]
        fn no_mark_ever_leaves(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64), field in 0usize..3) {
            let key = ["Description", "Email", "Other"][field];
            let mut rec = format!("{{\"UserDetails\":{{\"{key}\":\"").into_bytes();
            rec.extend(bytes.iter().filter(|b| **b != b'"' && **b != b'\\' && **b >= 0x20));
            rec.extend_from_slice(b"\"}, \"Description\": \"d\"}");
            if let Ok(r) = decode_record(&rec) {
                proptest::prop_assert!(no_mark_left(&r.value));
            }
        }
    }
}
