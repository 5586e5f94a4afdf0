//! Turning a mapped record into a Table entity that the service will accept.
//!
//! It owns the data-model rules of `spec/crm-apis.md` §3.8: key characters, property names,
//! at most 252 custom properties, strings of at most 32 Ki UTF-16 units (64 KiB), 1 MiB per
//! entity. A value over a limit is truncated (with a warning naming the lead and property,
//! never the value) or the record is refused with a reason, as the target's `oversize`
//! setting says; the service never sees an entity it would refuse for size.

use serde_json::{Map, Number, Value};

/// The longest string property, in UTF-16 code units (64 KiB).
pub const MAX_STRING_UNITS: usize = 32 * 1024;
/// The largest entity, by the service's own size formula.
pub const MAX_ENTITY_BYTES: usize = 1024 * 1024;
/// Custom properties per entity (255 minus PartitionKey, RowKey, Timestamp).
pub const MAX_PROPERTIES: usize = 252;
/// Longest key we write, in characters (the service allows 1 KiB).
pub const MAX_KEY_CHARS: usize = 255;

/// What to do with a value over a limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Oversize {
    /// Cut it to fit and log a warning.
    #[default]
    Truncate,
    /// Refuse the record (dead letter) with the reason.
    Reject,
}

/// Why a record cannot be written; `code` is safe for logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityRefusal {
    pub code: &'static str,
    pub message: String,
}

/// A property that was cut to fit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    pub property: String,
    pub from_units: usize,
    pub to_units: usize,
}

/// Is `name` a valid property name (C# identifier rules, at most 255 characters, not one of
/// the system properties)?
pub fn check_property_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok_start = chars.next().is_some_and(|c| c.is_alphabetic() || c == '_');
    if !ok_start || !chars.all(|c| c.is_alphanumeric() || c == '_') {
        return Err(format!(
            "{name:?} is not a valid Azure Table property name: use letters, digits and `_`, \
             starting with a letter or `_` (no spaces or `-`)"
        ));
    }
    if name.chars().count() > 255 {
        return Err(format!("{name:?} is longer than 255 characters"));
    }
    if ["PartitionKey", "RowKey", "Timestamp"].contains(&name) {
        return Err(format!(
            "{name:?} is a system property; leadsync sets PartitionKey and RowKey itself"
        ));
    }
    Ok(())
}

/// Make `raw` a valid PartitionKey/RowKey: forbidden characters (`/ \ # ?`, control
/// characters) and the troublesome `% + '` become `_`; at most [`MAX_KEY_CHARS`].
pub fn sanitize_key(raw: &str) -> String {
    raw.trim()
        .chars()
        .map(|c| {
            if matches!(c, '/' | '\\' | '#' | '?' | '%' | '+' | '\'')
                || (c as u32) < 0x20
                || (0x7f..=0x9f).contains(&(c as u32))
            {
                '_'
            } else {
                c
            }
        })
        .take(MAX_KEY_CHARS)
        .collect()
}

fn utf16_len(s: &str) -> usize {
    s.encode_utf16().count()
}

/// Cut `s` to at most `max` UTF-16 units, on a character boundary.
fn cut_utf16(s: &mut String, max: usize) {
    let mut units = 0;
    for (idx, c) in s.char_indices() {
        units += c.len_utf16();
        if units > max {
            s.truncate(idx);
            return;
        }
    }
}

/// The service's size of one property (name and value).
fn property_size(name: &str, v: &Value) -> usize {
    let value = match v {
        Value::String(s) => 4 + 2 * utf16_len(s),
        Value::Bool(_) => 1,
        Value::Number(_) => 8,
        _ => 0,
    };
    8 + 2 * utf16_len(name) + value
}

/// The service's size of a whole entity.
pub fn entity_size(entity: &Map<String, Value>) -> usize {
    4 + entity
        .iter()
        .filter(|(k, _)| !k.contains("@odata."))
        .map(|(k, v)| property_size(k, v))
        .sum::<usize>()
}

/// Build the entity for one record: keys, then the mapped fields as Table types (null
/// values are left out; integers beyond 32 bits become `Edm.Int64`; arrays and objects are
/// written as JSON text).
pub fn build_entity(
    partition_key: &str,
    row_key: &str,
    fields: &[(String, Value)],
    oversize: Oversize,
) -> Result<(Map<String, Value>, Vec<Cut>), EntityRefusal> {
    let mut entity = Map::new();
    entity.insert("PartitionKey".into(), Value::String(partition_key.into()));
    entity.insert("RowKey".into(), Value::String(row_key.into()));
    let mut cuts = Vec::new();
    let mut count = 0usize;
    for (name, value) in fields {
        if let Err(reason) = check_property_name(name) {
            return Err(EntityRefusal {
                code: "InvalidPropertyName",
                message: reason,
            });
        }
        let value = match value {
            Value::Null => continue,
            Value::Bool(_) => value.clone(),
            Value::Number(n) => match (n.as_i64(), n.as_f64()) {
                (Some(i), _) if i32::try_from(i).is_ok() => value.clone(),
                (Some(i), _) => {
                    entity.insert(
                        format!("{name}@odata.type"),
                        Value::String("Edm.Int64".into()),
                    );
                    Value::String(i.to_string())
                }
                (None, Some(f)) => Number::from_f64(f)
                    .map(Value::Number)
                    .unwrap_or(Value::Null),
                (None, None) => Value::String(n.to_string()),
            },
            Value::String(_) => value.clone(),
            other => Value::String(other.to_string()),
        };
        let value = match value {
            Value::String(mut s) => {
                let units = utf16_len(&s);
                if units > MAX_STRING_UNITS {
                    if oversize == Oversize::Reject {
                        return Err(EntityRefusal {
                            code: "PropertyValueTooLarge",
                            message: format!(
                                "property {name} is {units} UTF-16 characters, over Azure \
                                 Table's limit of {MAX_STRING_UNITS} (64 KiB); not written \
                                 (set oversize = \"truncate\" to cut it instead)"
                            ),
                        });
                    }
                    cut_utf16(&mut s, MAX_STRING_UNITS);
                    cuts.push(Cut {
                        property: name.clone(),
                        from_units: units,
                        to_units: utf16_len(&s),
                    });
                }
                Value::String(s)
            }
            other => other,
        };
        count += 1;
        entity.insert(name.clone(), value);
    }
    if count > MAX_PROPERTIES {
        return Err(EntityRefusal {
            code: "TooManyProperties",
            message: format!(
                "the mapping writes {count} properties, over Azure Table's limit of \
                 {MAX_PROPERTIES}"
            ),
        });
    }
    let mut size = entity_size(&entity);
    if size > MAX_ENTITY_BYTES {
        if oversize == Oversize::Reject {
            return Err(EntityRefusal {
                code: "EntityTooLarge",
                message: format!(
                    "the entity is {size} bytes, over Azure Table's limit of \
                     {MAX_ENTITY_BYTES} (1 MiB); not written"
                ),
            });
        }
        // Cut the longest strings until it fits; bounded by the property count.
        for _ in 0..=MAX_PROPERTIES {
            if size <= MAX_ENTITY_BYTES {
                break;
            }
            let longest = entity
                .iter()
                .filter(|(k, _)| *k != "PartitionKey" && *k != "RowKey")
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), utf16_len(s))))
                .max_by_key(|(_, n)| *n);
            let Some((name, units)) = longest else { break };
            let excess_units = (size - MAX_ENTITY_BYTES).div_ceil(2);
            let keep = units.saturating_sub(excess_units);
            if let Some(Value::String(s)) = entity.get_mut(&name) {
                cut_utf16(s, keep);
                let now = utf16_len(s);
                match cuts.iter_mut().find(|c| c.property == name) {
                    Some(c) => c.to_units = now,
                    None => cuts.push(Cut {
                        property: name.clone(),
                        from_units: units,
                        to_units: now,
                    }),
                }
            }
            size = entity_size(&entity);
        }
        if size > MAX_ENTITY_BYTES {
            return Err(EntityRefusal {
                code: "EntityTooLarge",
                message: format!("the entity is {size} bytes even after truncation"),
            });
        }
    }
    Ok((entity, cuts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_and_keys() {
        assert!(check_property_name("FirstName").is_ok());
        assert!(check_property_name("_x1").is_ok());
        assert!(check_property_name("First Name").is_err());
        assert!(check_property_name("a-b").is_err());
        assert!(check_property_name("1a").is_err());
        assert!(check_property_name("RowKey").is_err());
        assert_eq!(sanitize_key(" a/b\\c#d?e%f+g'h\ni "), "a_b_c_d_e_f_g_h_i");
        assert_eq!(sanitize_key(&"x".repeat(1000)).len(), MAX_KEY_CHARS);
    }

    #[test]
    fn types_and_nulls() {
        let fields = vec![
            ("A".to_string(), json!(null)),
            ("B".to_string(), json!(true)),
            ("C".to_string(), json!(5)),
            ("D".to_string(), json!(5_000_000_000i64)),
            ("E".to_string(), json!(["x"])),
        ];
        let (e, cuts) = build_entity("p", "r", &fields, Oversize::Reject).unwrap();
        assert!(cuts.is_empty());
        assert!(!e.contains_key("A"));
        assert_eq!(e["B"], json!(true));
        assert_eq!(e["C"], json!(5));
        assert_eq!(e["D"], json!("5000000000"));
        assert_eq!(e["D@odata.type"], json!("Edm.Int64"));
        assert_eq!(e["E"], json!("[\"x\"]"));
        assert_eq!(e["PartitionKey"], json!("p"));
    }

    #[test]
    fn long_strings_truncate_or_reject() {
        // 20,000 emoji are 40,000 UTF-16 units: over the limit though under 32K chars.
        let long = "🚀".repeat(20_000);
        let fields = vec![("Description".to_string(), json!(long))];
        let err = build_entity("p", "r", &fields, Oversize::Reject).unwrap_err();
        assert_eq!(err.code, "PropertyValueTooLarge");
        let (e, cuts) = build_entity("p", "r", &fields, Oversize::Truncate).unwrap();
        assert_eq!(cuts.len(), 1);
        assert_eq!(cuts[0].to_units, MAX_STRING_UNITS);
        assert_eq!(
            utf16_len(e["Description"].as_str().unwrap()),
            MAX_STRING_UNITS
        );
    }

    #[test]
    fn big_entities_are_cut_to_one_mib_or_rejected() {
        let fields: Vec<(String, Value)> = (0..20)
            .map(|i| (format!("P{i}"), json!("x".repeat(30_000))))
            .collect();
        let err = build_entity("p", "r", &fields, Oversize::Reject).unwrap_err();
        assert_eq!(err.code, "EntityTooLarge");
        let (e, cuts) = build_entity("p", "r", &fields, Oversize::Truncate).unwrap();
        assert!(entity_size(&e) <= MAX_ENTITY_BYTES);
        assert!(!cuts.is_empty());
        let too_many: Vec<(String, Value)> =
            (0..300).map(|i| (format!("P{i}"), json!(1))).collect();
        assert_eq!(
            build_entity("p", "r", &too_many, Oversize::Truncate)
                .unwrap_err()
                .code,
            "TooManyProperties"
        );
    }
}
