//! Property tests of the input parsers, the stable-toolchain counterpart of the cargo-fuzz
//! targets in `fuzz/` (same entry points): the lead reader (`parse_record` + `read_lead`,
//! and the spool's lead id), the `LeadSource` parser, and the configuration loader. Any
//! input gives a value or a typed error, never a panic.
//!
//! Cases per property: `PROPTEST_CASES` (default 2,000; an eighth of it for the config
//! loader, whose cases are slow). Failures are minimised by proptest
//! and printed with their input.

use leadsync_core::lead::{parse_record, read_lead, ReadError, MAX_RECORD_BYTES};
use leadsync_core::LeadSource;
use proptest::prelude::*;
use serde_json::{Map, Value};
use std::path::Path;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Keys a lead reader looks at, in odd cases, plus some it does not know.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("UserDetails".to_string()),
        Just("userDetails".to_string()),
        Just("CustomerInfo".to_string()),
        Just("LeadSource".to_string()),
        Just("leadsource".to_string()),
        Just("ActionCode".to_string()),
        Just("OfferTitle".to_string()),
        Just("OfferDisplayName".to_string()),
        Just("Description".to_string()),
        Just("CreatedTime".to_string()),
        Just("PartitionKey".to_string()),
        Just("RowKey".to_string()),
        Just("Timestamp".to_string()),
        Just("FirstName".to_string()),
        Just("LastName".to_string()),
        Just("Email".to_string()),
        Just("Phone".to_string()),
        Just("Country".to_string()),
        Just("Company".to_string()),
        Just("Title".to_string()),
        Just("odata.etag".to_string()),
        "\\PC{0,12}",
    ]
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        // Any text: control characters, RTL, emoji, lone surrogates are not representable.
        any::<String>().prop_map(Value::String),
        "[A-Za-z]{1,12}-(INS|PLT|DNC|Create|StartTestDrive|[a-z]{0,5})(\\|[a-z.]{0,12})?"
            .prop_map(Value::String),
        "\\d{1,2}/\\d{1,2}/\\d{4} \\d{1,2}:\\d{2}:\\d{2} (AM|PM)".prop_map(Value::String),
    ]
}

/// JSON values shaped like (and unlike) lead records, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(4, 48, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner.clone()), 0..8)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
            // CustomerInfo holds its object as a JSON string.
            inner.prop_map(|v| Value::String(v.to_string())),
        ]
    })
}

fn record() -> impl Strategy<Value = Value> {
    prop::collection::vec((key(), json_value()), 0..10)
        .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>()))
}

/// Bytes a spool line may hold: JSON text mutated, or raw bytes.
fn record_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        any::<Vec<u8>>(),
        record().prop_map(|v| v.to_string().into_bytes()),
        (record(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(v, at, b)| {
            let mut bytes = v.to_string().into_bytes();
            let i = at.index(bytes.len().max(1));
            if i < bytes.len() {
                bytes[i] = b;
            }
            bytes
        }),
        (record(), any::<prop::sample::Index>()).prop_map(|(v, at)| {
            let mut bytes = v.to_string().into_bytes();
            let len = bytes.len();
            bytes.truncate(at.index(len.max(1)));
            bytes
        }),
        (1usize..400, any::<bool>()).prop_map(|(depth, arrays)| {
            let (open, close) = if arrays { ("[", "]") } else { ("{\"a\":", "}") };
            let mid = if arrays { "" } else { "1" };
            format!("{}{mid}{}", open.repeat(depth), close.repeat(depth)).into_bytes()
        }),
        record().prop_map(|v| {
            let mut b = "\u{feff}".as_bytes().to_vec();
            b.extend(v.to_string().into_bytes());
            b.extend(b"\r");
            b
        }),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn lead_reader_never_panics(bytes in record_bytes()) {
        match parse_record(&bytes) {
            Ok(record) => {
                let value = &record.value;
                let id = leadsync::sources::spool::spool_lead_id(value);
                match record.read_lead(id.clone()) {
                    Ok(lead) => {
                        prop_assert_eq!(&lead.id, &id);
                        // Text comes out without control characters (line breaks aside).
                        if let Some(src) = &lead.source {
                            prop_assert!(!src.raw.chars().any(|c| c.is_control()));
                        }
                    }
                    Err(ReadError::NotAnObject(_)) => prop_assert!(!value.is_object()),
                    Err(ReadError::Empty) => prop_assert!(value.is_object()),
                    Err(e) => prop_assert!(false, "unexpected {e:?} after parsing"),
                }
            }
            Err(ReadError::TooLarge(n)) => prop_assert!(n > MAX_RECORD_BYTES),
            Err(ReadError::Json(_)) => {}
            // Only bytes that are not UTF-8 can refuse a record for its encoding.
            Err(ReadError::NotUtf8 { .. }) => prop_assert!(std::str::from_utf8(&bytes).is_err()),
            Err(e) => prop_assert!(false, "parse_record gave {e:?}"),
        }
    }

    #[test]
    fn read_lead_takes_any_json_value(v in json_value(), r in record()) {
        for value in [v, r] {
            let a = read_lead("x".into(), &value);
            // Deterministic, and the spool id does not depend on key order.
            prop_assert_eq!(a.is_ok(), read_lead("x".into(), &value).is_ok());
            if let Value::Object(o) = &value {
                let reversed: Map<String, Value> =
                    o.iter().rev().map(|(k, v)| (k.clone(), v.clone())).collect();
                prop_assert_eq!(
                    leadsync::sources::spool::spool_lead_id(&value),
                    leadsync::sources::spool::spool_lead_id(&Value::Object(reversed))
                );
            }
        }
    }

    #[test]
    fn lead_source_parser_never_fails(raw in prop_oneof![
        any::<String>(),
        "[A-Za-z ()]{0,20}(-[A-Za-z]{0,15}){0,3}(\\|[A-Za-z0-9.|-]{0,20})?",
    ]) {
        let p = LeadSource::parse(&raw);
        prop_assert_eq!(&p.raw, &raw);
        match raw.split_once('|') {
            Some((_, offer)) => {
                let offer = offer.trim();
                prop_assert_eq!(p.offer.as_deref(), (!offer.is_empty()).then_some(offer));
            }
            None => prop_assert!(p.offer.is_none()),
        }
        if let Some(action) = &p.action {
            // An action comes only from a single hyphen with both sides non-empty.
            let left = raw.split('|').next().unwrap_or("");
            prop_assert_eq!(left.matches('-').count(), 1);
            prop_assert!(!action.code().is_empty());
        }
    }
}

/// The shipped example configuration, the base the config properties mutate.
fn example_main() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/leadsync.toml"))
        .unwrap()
}

fn example_targets() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/examples/targets");
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    v.sort();
    v
}

/// A TOML value of any type, or broken TOML.
fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("\"\"".to_string()),
        Just("true".to_string()),
        Just("-1".to_string()),
        Just("99999999999999999999".to_string()),
        Just("1.5".to_string()),
        Just("[]".to_string()),
        Just("[1, \"a\"]".to_string()),
        Just("{}".to_string()),
        Just("{ env = \"LEADSYNC_PROPTEST_UNSET\" }".to_string()),
        Just("{ file = \"/nonexistent/secret\" }".to_string()),
        Just("{ credential = \"x\" }".to_string()),
        Just("\"*/0 * * * * *\"".to_string()),
        Just("\"http://[::1\"".to_string()),
        Just("\"0s\"".to_string()),
        Just("\"10000000000h\"".to_string()),
        Just("1979-05-27T07:32:00Z".to_string()),
        Just("\"unclosed".to_string()),
        Just("= =".to_string()),
        "\"[^\"\\\\]{0,20}\"",
    ]
}

/// Replace the value of one `key = value` line of `text` (chosen by `at`), or insert a
/// stray line, or cut the text short.
fn mutate(text: &str, at: prop::sample::Index, value: &str, how: u8) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let assigns: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| !l.trim_start().starts_with('#') && l.contains(" = "))
        .map(|(i, _)| i)
        .collect();
    let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    match how % 4 {
        0 if !assigns.is_empty() => {
            let i = assigns[at.index(assigns.len())];
            let key = out[i].split(" = ").next().unwrap_or("").to_string();
            out[i] = format!("{key} = {value}");
        }
        1 if !assigns.is_empty() => {
            out.remove(assigns[at.index(assigns.len())]);
        }
        2 => {
            let i = at.index(out.len() + 1);
            out.insert(i, format!("stray_key = {value}"));
        }
        _ => {
            let joined = out.join("\n");
            let mut cut = at.index(joined.len() + 1);
            while !joined.is_char_boundary(cut) {
                cut -= 1;
            }
            return joined[..cut].to_string();
        }
    }
    out.join("\n")
}

fn load_in_dir(main: &str, target: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("config/targets")).unwrap();
    std::fs::create_dir_all(root.join("examples/leads")).unwrap();
    std::fs::write(root.join("config/leadsync.toml"), main).unwrap();
    std::fs::write(root.join("config/targets/t.toml"), target).unwrap();
    leadsync::wiring::load(&root.join("config/leadsync.toml"))
        .map(|_| ())
        .map_err(|e| match e {
            leadsync::wiring::WiringError::Config(msg) => msg,
            leadsync::wiring::WiringError::Runtime(e) => format!("RUNTIME: {e:#}"),
        })
}

/// Loading a valid-looking configuration builds every target's HTTP client (TLS roots
/// included), some 40 ms a case: these run an eighth of `PROPTEST_CASES`.
fn config_cases() -> ProptestConfig {
    ProptestConfig {
        cases: (cases() / 8).max(1),
        ..config()
    }
}

proptest! {
    #![proptest_config(config_cases())]

    #[test]
    fn config_loader_never_panics_on_bytes(main in any::<Vec<u8>>(), target in any::<Vec<u8>>()) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("targets")).unwrap();
        let config = dir.path().join("leadsync.toml");
        std::fs::write(&config, &main).unwrap();
        std::fs::write(dir.path().join("targets/t.toml"), &target).unwrap();
        let _ = leadsync::wiring::load(&config);
    }

    #[test]
    fn mutated_configs_load_or_name_the_file(
        which in any::<prop::sample::Index>(),
        in_target in any::<bool>(),
        at in any::<prop::sample::Index>(),
        value in toml_value(),
        how in any::<u8>(),
    ) {
        let targets = example_targets();
        let target = targets[which.index(targets.len())].clone();
        let main = example_main();
        let (main, target) = if in_target {
            (main, mutate(&target, at, &value, how))
        } else {
            (mutate(&main, at, &value, how), target)
        };
        if let Err(msg) = load_in_dir(&main, &target) {
            prop_assert!(!msg.starts_with("RUNTIME"), "{msg}");
            // Every error line names a file it comes from.
            for line in msg.lines().filter(|l| !l.trim().is_empty() && !l.starts_with(' ')) {
                prop_assert!(
                    line.contains(".toml") || line.contains("target ") || line.contains("source "),
                    "an error that names no file: {line}\n{msg}"
                );
            }
        }
    }
}
