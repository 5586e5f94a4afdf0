//! A strict serde deserializer over `config::Value` that knows the key path of every error.
//!
//! The `config` crate merges the TOML file with `LEADSYNC_` environment variables into a tree
//! of `config::Value`s; its own deserializer converts freely between types (`5` becomes the
//! string `"5"`, `1.5` becomes the integer `2`, `"yes"` becomes `true`) and loses the path
//! of unknown keys. This one accepts exactly the TOML type asked for, except for values that
//! came from the environment (always strings), which are parsed into the number, boolean or
//! comma-separated list the key expects. It reports the full key path, whether the offending
//! value came from the environment, and unknown keys with the list of keys allowed there.
//! It must not validate values beyond their type: that is `validate.rs`.

use std::collections::BTreeMap;
use std::fmt;

use config::{Value, ValueKind};
use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, Visitor};

/// The origin the `config` crate gives values read from environment variables.
pub(crate) const ENV_ORIGIN: &str = "the environment";

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    Key(String),
    Index(usize),
}

/// Render a key path as written in TOML: `limits.concurrency`, `filter.actions[1]`,
/// `mapping.fields."Name With Space"`.
pub(crate) fn render_path(path: &[Segment]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Segment::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                let bare = !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                if bare {
                    out.push_str(k);
                } else {
                    out.push_str(&format!("{k:?}"));
                }
            }
            Segment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// What went wrong, without the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DeErrorKind {
    /// The last segment of the path is a key this table does not have.
    UnknownKey { expected: &'static [&'static str] },
    /// The last segment of the path is a required key that is absent.
    Missing,
    /// Wrong type or value; the message says what was expected and found.
    Invalid(String),
}

/// A deserialization error with the key path it happened at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeError {
    pub path: Vec<Segment>,
    pub kind: DeErrorKind,
    /// `Some(true)` when the offending value came from an environment variable.
    env: Option<bool>,
}

impl DeError {
    fn invalid(message: String) -> Self {
        DeError {
            path: Vec::new(),
            kind: DeErrorKind::Invalid(message),
            env: None,
        }
    }
    fn prepend(mut self, seg: Segment) -> Self {
        self.path.insert(0, seg);
        self
    }
    /// The innermost value decides whether the culprit came from the environment.
    fn mark_env(mut self, env: bool) -> Self {
        if self.env.is_none() {
            self.env = Some(env);
        }
        self
    }
    pub fn is_from_env(&self) -> bool {
        self.env.unwrap_or(false)
    }
    /// The text after the key: what was expected (and found).
    pub fn message(&self) -> String {
        match &self.kind {
            DeErrorKind::UnknownKey { expected: [] } => "this table takes no keys".to_string(),
            DeErrorKind::UnknownKey { expected } => {
                format!("expected one of {}", expected.join(", "))
            }
            DeErrorKind::Missing => "missing; this key is required".to_string(),
            DeErrorKind::Invalid(m) => m.clone(),
        }
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key `{}`: {}", render_path(&self.path), self.message())
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError::invalid(msg.to_string())
    }
    fn invalid_type(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        DeError::invalid(format!("expected {exp}, found {unexp}"))
    }
    fn invalid_value(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        DeError::invalid(format!("expected {exp}, found {unexp}"))
    }
    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        DeError::invalid(format!(
            "expected one of {}, found {variant:?}",
            expected.join(", ")
        ))
    }
    fn unknown_field(_field: &str, expected: &'static [&'static str]) -> Self {
        // The map access adds the field itself to the path.
        DeError {
            path: Vec::new(),
            kind: DeErrorKind::UnknownKey { expected },
            env: None,
        }
    }
    fn missing_field(field: &'static str) -> Self {
        DeError {
            path: vec![Segment::Key(field.to_string())],
            kind: DeErrorKind::Missing,
            env: None,
        }
    }
}

/// Deserialize `T` from a merged configuration value.
pub(crate) fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, DeError> {
    T::deserialize(ValueDe(value))
}

/// Is this a scalar that came from an environment variable?
pub(crate) fn is_env_scalar(v: &Value) -> bool {
    v.origin() == Some(ENV_ORIGIN) && !matches!(v.kind, ValueKind::Table(_) | ValueKind::Array(_))
}

/// How a value is named in "found ..." messages.
pub(crate) fn describe(v: &Value) -> String {
    match &v.kind {
        ValueKind::Nil => "nothing".to_string(),
        ValueKind::Boolean(b) => format!("boolean {b}"),
        ValueKind::I64(i) => format!("integer {i}"),
        ValueKind::I128(i) => format!("integer {i}"),
        ValueKind::U64(i) => format!("integer {i}"),
        ValueKind::U128(i) => format!("integer {i}"),
        ValueKind::Float(x) => format!("number {x}"),
        ValueKind::String(s) => format!("string {s:?}"),
        ValueKind::Table(_) => "a table".to_string(),
        ValueKind::Array(_) => "an array".to_string(),
    }
}

fn mismatch(expected: &str, v: &Value) -> DeError {
    DeError::invalid(format!("expected {expected}, found {}", describe(v)))
}

/// Deserializer for one `config::Value`.
struct ValueDe(Value);

impl ValueDe {
    fn env_str(&self) -> Option<&str> {
        match &self.0.kind {
            ValueKind::String(s) if self.0.origin() == Some(ENV_ORIGIN) => Some(s.trim()),
            _ => None,
        }
    }

    fn integer<'de, V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.0.kind {
            ValueKind::I64(i) => visitor.visit_i64(i),
            ValueKind::U64(u) => visitor.visit_u64(u),
            ValueKind::I128(i) => visitor.visit_i128(i),
            ValueKind::U128(u) => visitor.visit_u128(u),
            _ => match self.env_str().map(str::parse::<i64>) {
                Some(Ok(i)) => visitor.visit_i64(i),
                _ => Err(mismatch("an integer", &self.0)),
            },
        }
    }

    fn float<'de, V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.0.kind {
            ValueKind::Float(x) => visitor.visit_f64(x),
            ValueKind::I64(i) => visitor.visit_i64(i),
            ValueKind::U64(u) => visitor.visit_u64(u),
            _ => match self.env_str().map(str::parse::<f64>) {
                Some(Ok(x)) => visitor.visit_f64(x),
                _ => Err(mismatch("a number", &self.0)),
            },
        }
    }

    fn string<'de, V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.0.kind {
            ValueKind::String(s) => visitor.visit_string(s),
            _ => Err(mismatch("a string", &self.0)),
        }
    }

    fn seq<'de, V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let env = self.env_str().is_some();
        match self.0.kind {
            ValueKind::Array(items) => visitor.visit_seq(SeqDe::new(items)),
            // From the environment a list is written `INS,PLT`.
            ValueKind::String(s) if env => {
                let origin = ENV_ORIGIN.to_string();
                let items = s
                    .split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(|p| Value::new(Some(&origin), p))
                    .collect();
                visitor.visit_seq(SeqDe::new(items))
            }
            _ => Err(mismatch("an array", &self.0)),
        }
    }

    fn table<'de, V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.0.kind {
            ValueKind::Table(t) => visitor.visit_map(MapDe::new(t.into_iter().collect())),
            _ => Err(mismatch("a table", &self.0)),
        }
    }
}

macro_rules! forward_integers {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
            self.integer(visitor)
        }
    )*};
}

impl<'de> de::Deserializer<'de> for ValueDe {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.0.kind {
            ValueKind::Nil => visitor.visit_unit(),
            ValueKind::Boolean(b) => visitor.visit_bool(b),
            ValueKind::I64(i) => visitor.visit_i64(i),
            ValueKind::I128(i) => visitor.visit_i128(i),
            ValueKind::U64(u) => visitor.visit_u64(u),
            ValueKind::U128(u) => visitor.visit_u128(u),
            ValueKind::Float(x) => visitor.visit_f64(x),
            ValueKind::String(s) => visitor.visit_string(s),
            ValueKind::Array(items) => visitor.visit_seq(SeqDe::new(items)),
            ValueKind::Table(t) => visitor.visit_map(MapDe::new(t.into_iter().collect())),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        if let ValueKind::Boolean(b) = self.0.kind {
            return visitor.visit_bool(b);
        }
        match self.env_str().map(str::to_ascii_lowercase).as_deref() {
            Some("true") => visitor.visit_bool(true),
            Some("false") => visitor.visit_bool(false),
            _ => Err(mismatch("true or false", &self.0)),
        }
    }

    forward_integers! {
        deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_i128
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_u128
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.float(visitor)
    }
    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.float(visitor)
    }
    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.string(visitor)
    }
    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.string(visitor)
    }
    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.string(visitor)
    }
    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.string(visitor)
    }
    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.string(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.0.kind {
            ValueKind::Nil => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.0.kind {
            ValueKind::Nil => visitor.visit_unit(),
            _ => Err(mismatch("nothing", &self.0)),
        }
    }
    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_unit(visitor)
    }
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.seq(visitor)
    }
    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.seq(visitor)
    }
    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.table(visitor)
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.table(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match self.0.kind {
            ValueKind::String(s) => {
                visitor.visit_enum(IntoDeserializer::<DeError>::into_deserializer(s))
            }
            _ => Err(mismatch("a string", &self.0)),
        }
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.string(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }
}

struct SeqDe {
    items: std::iter::Enumerate<std::vec::IntoIter<Value>>,
}

impl SeqDe {
    fn new(items: Vec<Value>) -> Self {
        SeqDe {
            items: items.into_iter().enumerate(),
        }
    }
}

impl<'de> de::SeqAccess<'de> for SeqDe {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        let Some((i, v)) = self.items.next() else {
            return Ok(None);
        };
        let env = is_env_scalar(&v);
        seed.deserialize(ValueDe(v))
            .map(Some)
            .map_err(|e| e.mark_env(env).prepend(Segment::Index(i)))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

/// Tables are visited in key order, so the first error reported is stable.
struct MapDe {
    entries: std::collections::btree_map::IntoIter<String, Value>,
    pending: Option<(String, Value)>,
}

impl MapDe {
    fn new(entries: BTreeMap<String, Value>) -> Self {
        MapDe {
            entries: entries.into_iter(),
            pending: None,
        }
    }
}

impl<'de> de::MapAccess<'de> for MapDe {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some((k, v)) = self.entries.next() else {
            return Ok(None);
        };
        let env = is_env_scalar(&v);
        let key = seed
            .deserialize(IntoDeserializer::<DeError>::into_deserializer(k.clone()))
            .map_err(|e| e.mark_env(env).prepend(Segment::Key(k.clone())))?;
        self.pending = Some((k, v));
        Ok(Some(key))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let Some((k, v)) = self.pending.take() else {
            return Err(DeError::invalid(
                "internal error: a value was asked for before its key".to_string(),
            ));
        };
        let env = is_env_scalar(&v);
        seed.deserialize(ValueDe(v))
            .map_err(|e| e.mark_env(env).prepend(Segment::Key(k)))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        count: Option<i64>,
        flag: Option<bool>,
        list: Option<Vec<String>>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        name: String,
        inner: Option<Inner>,
    }

    fn table(entries: Vec<(&str, Value)>) -> Value {
        let m: config::Map<String, Value> = entries
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        Value::new(None, ValueKind::Table(m))
    }

    fn file(kind: impl Into<ValueKind>) -> Value {
        Value::new(Some(&"f.toml".to_string()), kind)
    }

    fn env(s: &str) -> Value {
        Value::new(Some(&ENV_ORIGIN.to_string()), s)
    }

    #[test]
    fn strict_types_with_paths() {
        let v = table(vec![
            ("name", file("x")),
            ("inner", table(vec![("count", file("7"))])),
        ]);
        let e = from_value::<Outer>(v).unwrap_err();
        assert_eq!(render_path(&e.path), "inner.count");
        assert_eq!(e.message(), "expected an integer, found string \"7\"");
        assert!(!e.is_from_env());

        let v = table(vec![("name", file(5i64))]);
        let e = from_value::<Outer>(v).unwrap_err();
        assert_eq!(
            e.to_string(),
            "key `name`: expected a string, found integer 5"
        );

        let v = table(vec![
            ("name", file("x")),
            (
                "inner",
                table(vec![(
                    "list",
                    file(ValueKind::Array(vec![file("a"), file(3i64)])),
                )]),
            ),
        ]);
        let e = from_value::<Outer>(v).unwrap_err();
        assert_eq!(render_path(&e.path), "inner.list[1]");
    }

    #[test]
    fn unknown_and_missing_keys_name_the_key() {
        let v = table(vec![
            ("name", file("x")),
            ("inner", table(vec![("cuont", file(1i64))])),
        ]);
        let e = from_value::<Outer>(v).unwrap_err();
        assert_eq!(render_path(&e.path), "inner.cuont");
        assert_eq!(e.message(), "expected one of count, flag, list");
        let e = from_value::<Outer>(table(vec![])).unwrap_err();
        assert_eq!(e.kind, DeErrorKind::Missing);
        assert_eq!(render_path(&e.path), "name");
    }

    #[test]
    fn environment_strings_are_parsed() {
        let v = table(vec![
            ("name", env("007")),
            (
                "inner",
                table(vec![
                    ("count", env("42")),
                    ("flag", env("TRUE")),
                    ("list", env("INS, PLT")),
                ]),
            ),
        ]);
        let o = from_value::<Outer>(v).unwrap();
        assert_eq!(o.name, "007");
        assert_eq!(
            o.inner,
            Some(Inner {
                count: Some(42),
                flag: Some(true),
                list: Some(vec!["INS".into(), "PLT".into()])
            })
        );
        let v = table(vec![
            ("name", env("x")),
            ("inner", table(vec![("count", env("many"))])),
        ]);
        let e = from_value::<Outer>(v).unwrap_err();
        assert!(e.is_from_env());
        assert_eq!(render_path(&e.path), "inner.count");
    }

    #[test]
    fn odd_keys_are_quoted() {
        let p = vec![
            Segment::Key("mapping".into()),
            Segment::Key("fields".into()),
            Segment::Key("Custom.Field".into()),
        ];
        assert_eq!(render_path(&p), "mapping.fields.\"Custom.Field\"");
    }
}
