//! The rule language against fixture-like leads, and every mistake it must refuse.

use super::*;
use crate::lead::read_lead;
use crate::mapping::{Mapping, MappingOverrides, RawRule, RawRuleSpec};
use serde_json::json;

fn table(v: Value) -> BTreeMap<String, RawQualify> {
    serde_json::from_value(v).unwrap()
}

fn qualification(v: Value) -> Qualification {
    Qualification::from_raw(&table(v)).unwrap_or_else(|e| panic!("{e:?}"))
}

/// The mistakes of a table that must be refused, as `key: message` lines.
fn refused(v: Value) -> Vec<String> {
    match Qualification::from_raw(&table(v)) {
        Ok(q) => panic!("expected errors, got {q:?}"),
        Err(errors) => errors.iter().map(|e| e.to_string()).collect(),
    }
}

fn lead(v: Value) -> Lead {
    read_lead("l".into(), &v).unwrap()
}

/// The rules of `docs/qualification.md`'s first example.
fn example() -> Qualification {
    qualification(json!({
        "complete": { "when": "has email and has company and has phone and not free_mail" },
        "score": {
            "base": 10,
            "add": [
                { "when": "action in [PLT, StartTestDrive]", "points": 30 },
                { "when": "action in [INS, Create]", "points": 20 },
                { "when": "has company", "points": 15 },
                { "when": "has phone", "points": 15 },
                { "when": "has title", "points": 10 },
                { "when": "free_mail", "points": -20 },
                { "when": "country in [US, USA, 'United States', GB, DE, FR]", "points": 10 }
            ]
        },
        "rating": {
            "cases": [
                { "when": "dnc or test", "value": "Cold" },
                { "when": "score >= 60 and complete", "value": "Hot" },
                { "when": "score >= 40", "value": "Warm" }
            ],
            "default": "Cold"
        },
        "rating_code": {
            "cases": [
                { "when": "rating = hot", "value": 1 },
                { "when": "rating = 'WARM'", "value": 2 }
            ],
            "default": 3
        }
    }))
}

#[test]
fn a_table_of_leads_and_the_values_each_rule_gives() {
    let q = example();
    // Dependencies first (complete and score before rating, rating before rating_code),
    // then alphabetical order.
    assert_eq!(
        q.names().collect::<Vec<_>>(),
        ["complete", "score", "rating", "rating_code"]
    );
    let https = |ud: Value, source: &str, action: &str| {
        json!({"UserDetails": ud, "LeadSource": source, "ActionCode": action,
               "OfferTitle": "Contoso Analytics"})
    };
    // (what the lead is, the record, complete, score, rating, rating_code)
    let table: Vec<(&str, Value, bool, i64, &str, i64)> = vec![
        (
            "a full business lead installing",
            https(
                json!({"FirstName": "Ann", "Email": "ann@contoso.com", "Company": "Contoso",
                       "Phone": "+1 425 555 0100", "Title": "CTO", "Country": "US"}),
                "AzureMarketplace",
                "INS",
            ),
            true,
            80,
            "Hot",
            1,
        ),
        (
            "contact me from a free-mail address",
            https(
                json!({"Email": "bo@Gmail.com", "Company": "Bo's", "Phone": "0301234",
                       "Country": "DE"}),
                "SPZA",
                "PLT",
            ),
            false,
            60,
            "Warm",
            2,
        ),
        (
            "do not contact, otherwise complete",
            https(
                json!({"Email": "cy@fabrikam.example", "Company": "Fabrikam", "Phone": "1",
                       "Title": "CIO", "Country": "FR"}),
                "AppSource (SPZA)",
                "DNC",
            ),
            true,
            60,
            "Cold",
            3,
        ),
        (
            "the marketplace's test lead",
            json!({"userDetails": {"FirstName": "MSFT_TEST_636573304831318844",
                    "Email": "MSFT_TEST_636573304831318844@test.com", "Phone": "1234567890",
                    "Country": "US", "Company": "MSFT_TEST_636573304831318844",
                    "Title": "MSFT_TEST_636573304831318844"},
                   "LeadSource": "AzureMarketplace", "ActionCode": "INS",
                   "OfferTitle": "Contoso Test"}),
            true,
            80,
            "Cold",
            3,
        ),
        (
            "a student: .edu, no company, no phone",
            https(
                json!({"FirstName": "Tim", "Email": "tim@example.edu", "Country": "US"}),
                "AppSource (SPZA)",
                "PLT",
            ),
            false,
            50,
            "Warm",
            2,
        ),
        (
            "empty customer details but a country",
            https(
                json!({"Email": "", "FirstName": "", "Phone": "", "Country": "NG",
                       "Company": " "}),
                "SPZA",
                "PLT",
            ),
            false,
            40,
            "Warm",
            2,
        ),
        (
            "an Azure portal purchase from outlook.com without a phone",
            json!({"PartitionKey": "p", "RowKey": "r", "LeadSource": "AzurePortal-Create|contoso.analytics",
                   "CustomerInfo": "{\"Email\": \"hedy@outlook.com\", \"Company\": \"Hedy Ltd\", \"Title\": \"Inventor\", \"Country\": \"GB\"}",
                   "OfferDisplayName": "Contoso Analytics"}),
            false,
            45,
            "Warm",
            2,
        ),
        (
            "a test drive with everything",
            https(
                json!({"Email": "x@northwind.example", "Company": "Northwind", "Phone": "5",
                       "Title": "VP", "Country": "United States"}),
                "TestDrive",
                "StartTestDrive",
            ),
            true,
            90,
            "Hot",
            1,
        ),
        (
            "an unknown action code, complete",
            https(
                json!({"Email": "a@b.example", "Company": "B", "Phone": "5", "Country": "JP"}),
                "AzureMarketplace",
                "Renew",
            ),
            true,
            40,
            "Warm",
            2,
        ),
        (
            "gmx.de (a wildcard entry) with an unlisted country",
            https(
                json!({"Email": "k@gmx.de", "Company": "K", "Phone": "5", "Title": "CEO",
                       "Country": "Deutschland"}),
                "AzureMarketplace",
                "INS",
            ),
            false,
            50,
            "Warm",
            2,
        ),
        (
            "only a free-mail address: the score is clamped at 0",
            json!({"UserDetails": {"Email": "z@yahoo.com"}, "LeadSource": "AzureMarketplace"}),
            false,
            0,
            "Cold",
            3,
        ),
    ];
    for (what, record, complete, score, rating, code) in table {
        let v = q.evaluate(&lead(record));
        let got = (
            v.get("complete").cloned(),
            v.get("score").cloned(),
            v.get("rating").cloned(),
            v.get("rating_code").cloned(),
        );
        let want = (
            Some(json!(complete)),
            Some(json!(score)),
            Some(json!(rating)),
            Some(json!(code)),
        );
        assert_eq!(got, want, "{what}");
    }
}

#[test]
fn every_atom_and_operator() {
    let l = lead(json!({
        "LeadSource": "SPZA-PLT|Contoso.CRM-Connector", "OfferTitle": "Contoso CRM",
        "UserDetails": {"Email": "Ada@Sub.Contoso.com ", "Country": " us ", "Title": "CTO"},
        "Region": "EMEA"
    }));
    let q = Qualification::default();
    let holds = |text: &str| {
        let c = q.condition(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        c.holds(&l, &q.evaluate(&l))
    };
    for (text, want) in [
        ("true", true),
        ("false", false),
        ("has email", true),
        ("has phone", false),
        ("has extra.region", true),
        ("has extra.nope", false),
        ("free_mail", false),
        ("test", false),
        ("dnc", false),
        ("action = plt", true),
        ("action == PLT", true),
        ("action != PLT", false),
        ("action in [INS, Create]", false),
        ("action not in [INS, Create]", true),
        ("origin = AppSource", true),
        ("origin = spza", true),
        ("origin in [AzureMarketplace, AzurePortal]", false),
        ("offer = contoso.crm-connector", true),
        ("offer = 'contoso crm'", true),
        ("offer = \"Contoso CRM\"", true),
        ("offer = other", false),
        ("offer_id = crm-connector", true),
        ("publisher_id = CONTOSO", true),
        ("email_domain = sub.contoso.com", true),
        ("email_domain = contoso.com", false),
        ("email_domain in [@sub.contoso.com]", true),
        ("country = US", true),
        ("country in [DE, FR,]", false),
        ("lead_source = 'spza-plt|contoso.crm-connector'", true),
        ("extra.region = emea", true),
        ("title != CEO", true),
        ("phone != 123", true),
        ("phone = 123", false),
        ("dnc = false", true),
        ("not has phone and has email", true),
        ("has phone or has email and has title", true),
        ("(has phone or has email) and not has title", false),
        ("not not has email", true),
        (
            "has phone or (has email and (country = us or country = gb))",
            true,
        ),
    ] {
        assert_eq!(holds(text), want, "{text}");
    }
}

#[test]
fn free_mail_list() {
    assert!(
        free_mail_domain_count() >= 100,
        "{}",
        free_mail_domain_count()
    );
    for d in [
        "gmail.com",
        "GMAIL.COM",
        "outlook.com",
        "hotmail.co.uk",
        "yahoo.com",
        "icloud.com",
        "proton.me",
        "gmx.de",
        "gmx.net",
        "web.de",
        "qq.com",
        "163.com",
        "mail.ru",
        "yandex.ru",
        "gmail.com.",
    ] {
        assert!(is_free_mail_domain(d), "{d}");
    }
    for d in [
        "contoso.com",
        "gmx",
        "mail.gmail.com",
        "gmail.co",
        "example.edu",
        "",
    ] {
        assert!(!is_free_mail_domain(d), "{d}");
    }
    let l = lead(json!({"UserDetails": {"Email": "Someone@GMX.at"}}));
    assert!(Condition::FreeMail.holds(&l, &Qualified::default()));
    let no_email = lead(json!({"UserDetails": {"FirstName": "X"}}));
    assert!(!Condition::FreeMail.holds(&no_email, &Qualified::default()));
}

#[test]
fn unknown_fields_and_names_are_refused_naming_the_key() {
    let e = refused(json!({
        "rating": {"cases": [
            {"when": "has email", "value": "hot"},
            {"when": "has emial", "value": "warm"}
        ]},
        "complete": {"when": "emial = x"},
        "score": {"add": [{"when": "ratng = hot", "points": 5}]}
    }));
    assert_eq!(e.len(), 3, "{e:#?}");
    assert!(
        e[0].starts_with(
            "key `qualify.complete.when`: unknown field `emial` (did you mean `email`?); \
             expected a lead field (first_name, "
        ),
        "{e:#?}"
    );
    assert!(
        e[1].starts_with(
            "key `qualify.rating.cases[1].when`: unknown field `emial` after `has` \
             (did you mean `email`?)"
        ),
        "{e:#?}"
    );
    assert!(
        e[2].starts_with(
            "key `qualify.score.add[0].when`: unknown field `ratng` (did you mean `rating`?)"
        ),
        "{e:#?}"
    );
    // The message lists what is known, [qualify] names included.
    assert!(
        e[2].contains("or a [qualify] value (complete, rating, score)"),
        "{e:#?}"
    );
}

#[test]
fn syntax_and_type_mistakes_are_explained() {
    let q = qualification(json!({
        "complete": {"when": "has email"},
        "score": {"base": 50},
        "rating": {"cases": [{"when": "complete", "value": "Hot"}], "default": "Cold"}
    }));
    for (text, want) in [
        ("", "expected a condition, found an empty string"),
        ("has email and", "expected a condition, found the end"),
        ("(has email", "expected `)`, found the end"),
        (
            "has email has phone",
            "expected `and`, `or` or the end of the condition, found `has` at column 11",
        ),
        (
            "or has email",
            "expected a condition, found `or` at column 1",
        ),
        ("has", "expected a lead field after `has`"),
        ("!has email", "write `not` or `!=`"),
        ("country = 'US", "never closed"),
        ("country =", "expected a value after `=`, found the end"),
        ("country in US", "expected a list such as `[a, b]`"),
        ("country in [US DE]", "expected `,` or `]`, found `DE`"),
        ("country in []", "expected a value after `[` or `,`"),
        ("country", "`country` needs a comparison"),
        ("action = BUY", "expected an action code"),
        ("origin = Store", "expected an origin"),
        ("country >= 3", "`country` is text"),
        (
            "rating = hto",
            "`rating` is never \"hto\"; its values are Hot, Cold",
        ),
        ("rating >= 1", "`rating` is not a number"),
        ("rating", "`rating` is not true/false"),
        ("score", "`score` is not true/false"),
        ("score >= high", "expected an integer, found \"high\""),
        ("score = high", "`score` is a score from 0 to 100"),
        ("complete = maybe", "`complete` is true or false"),
        ("idempotency_key = x", "unknown field `idempotency_key`"),
        ("offer = ''", "found an empty value"),
    ] {
        let e = q
            .condition(text)
            .err()
            .unwrap_or_else(|| panic!("{text:?} parsed"));
        assert!(e.contains(want), "{text:?}: {e}");
    }
    // And the right ones parse.
    for ok in [
        "complete = true",
        "rating in [hot, COLD]",
        "score < 10",
        "rating != cold",
    ] {
        q.condition(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
}

#[test]
fn order_follows_dependencies_and_cycles_are_refused() {
    // Alphabetically `a_total` comes first, but it uses `z_complete`.
    let q = qualification(json!({
        "a_total": {"add": [{"when": "z_complete", "points": 70}]},
        "m_label": {"cases": [{"when": "a_total >= 50", "value": "good"}], "default": "poor"},
        "z_complete": {"when": "has email"}
    }));
    assert_eq!(
        q.names().collect::<Vec<_>>(),
        ["z_complete", "a_total", "m_label"]
    );
    let v = q.evaluate(&lead(json!({"UserDetails": {"Email": "a@b.example"}})));
    assert_eq!(v.get("m_label"), Some(&json!("good")));

    let e = refused(json!({
        "a": {"when": "b"},
        "b": {"when": "c and has email"},
        "c": {"when": "not a"},
        "d": {"when": "has phone"}
    }));
    assert_eq!(
        e,
        [
            "key `qualify.a`: `a` uses itself through `a` → `b` → `c` → `a`; a value may use \
          only values that do not use it"
        ]
    );
    let e = refused(json!({"a": {"when": "a or has email"}}));
    assert_eq!(e, ["key `qualify.a`: `a` uses itself"]);
}

#[test]
fn table_forms_are_checked() {
    let cases = [
        (
            json!({"x": {"when": "true", "cases": [{"when": "true", "value": 1}]}}),
            "key `qualify.x`: give exactly one of",
        ),
        (json!({"x": {}}), "key `qualify.x`: give exactly one of"),
        (
            json!({"x": {"cases": []}}),
            "key `qualify.x.cases`: expected at least one",
        ),
        (
            json!({"x": {"cases": [{"when": "true", "value": "a"}], "default": 3}}),
            "key `qualify.x.default`: expected a string like the first value of `x`, found an integer",
        ),
        (
            json!({"x": {"cases": [{"when": "true", "value": 1.5}]}}),
            "key `qualify.x.cases[0].value`: expected a string, an integer or a boolean",
        ),
        (
            json!({"x": {"base": 101}}),
            "key `qualify.x.base`: expected an integer from 0 to 100, found 101",
        ),
        (
            json!({"x": {"add": [{"when": "true", "points": 500}]}}),
            "key `qualify.x.add[0].points`: expected an integer from -100 to 100",
        ),
        (json!({"Rating": {"when": "true"}}), "key `qualify.Rating`: expected a name of lower-case"),
        (json!({"email": {"when": "true"}}), "key `qualify.email`: `email` is a lead field"),
        (json!({"free_mail": {"when": "true"}}), "is a lead field or a keyword"),
    ];
    for (t, want) in cases {
        let e = refused(t.clone());
        assert!(
            e.iter().any(|l| l.starts_with(want) || l.contains(want)),
            "{t}: {e:#?}"
        );
    }
    // A name whose table is wrong does not make its users fail too.
    let e = refused(json!({"x": {"base": 101}, "y": {"when": "x >= 3"}}));
    assert_eq!(e.len(), 1, "{e:#?}");
}

#[test]
fn a_case_without_a_match_or_default_has_no_value() {
    let q = qualification(json!({
        "tier": {"cases": [{"when": "origin = AzurePortal", "value": "gold"}]},
        "gold": {"when": "tier = gold"},
        "not_gold": {"when": "tier != gold"}
    }));
    let v = q.evaluate(&lead(
        json!({"LeadSource": "AzureMarketplace", "ActionCode": "INS"}),
    ));
    assert_eq!(v.get("tier"), None);
    assert_eq!(v.get("gold"), Some(&json!(false)));
    assert_eq!(v.get("not_gold"), Some(&json!(true)));
}

#[test]
fn mappings_and_templates_read_the_values() {
    let q = Arc::new(example());
    let names: Vec<String> = q.names().map(String::from).collect();
    let mut table = BTreeMap::new();
    table.insert("Rating".to_string(), RawRule::Field("rating".into()));
    table.insert(
        "Summary".to_string(),
        RawRule::Spec(RawRuleSpec {
            template: Some("{rating} lead ({score}/100), complete: {complete}".into()),
            ..Default::default()
        }),
    );
    table.insert(
        "leadqualitycode".to_string(),
        RawRule::Spec(RawRuleSpec {
            from: Some("rating_code".into()),
            ..Default::default()
        }),
    );
    let fields = table
        .iter()
        .map(|(k, v)| crate::mapping::FieldOverride::from_raw_named(k, v, &names))
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let overrides = MappingOverrides {
        replace_defaults: false,
        fields,
        qualification: None,
    }
    .with_qualification(Arc::clone(&q));
    let defaults = Mapping::new(vec![
        crate::mapping::FieldRule::field("Email", "email").unwrap()
    ]);
    let m = overrides.apply_to(defaults);
    assert_eq!(m.qualification.as_deref(), Some(&*q));
    let l = lead(
        json!({"UserDetails": {"Email": "ann@contoso.com", "Company": "Contoso",
        "Phone": "1", "Title": "CTO", "Country": "US"}, "LeadSource": "AzureMarketplace",
        "ActionCode": "INS"}),
    );
    let (rec, _) = m.apply(&l, "k", &[]);
    assert_eq!(rec.get_str("Email"), Some("ann@contoso.com"));
    assert_eq!(rec.get_str("Rating"), Some("Hot"));
    assert_eq!(
        rec.get_str("Summary"),
        Some("Hot lead (80/100), complete: true")
    );
    assert_eq!(rec.get("leadqualitycode"), Some(&json!(1)));

    // Without the qualification a named value is unknown, and the message says what is.
    let e =
        crate::mapping::FieldRule::from_raw("Rating", RawRule::Field("rating".into())).unwrap_err();
    assert!(e.reason.contains("unknown lead field \"rating\""), "{e}");
    let e = crate::mapping::FieldRule::from_raw_named(
        "X",
        RawRule::Spec(RawRuleSpec {
            template: Some("{ratng}".into()),
            ..Default::default()
        }),
        &names,
    )
    .unwrap_err();
    assert!(
        e.reason
            .contains("or a [qualify] value (complete, score, rating, rating_code)"),
        "{e}"
    );
    // The plain accessor has no qualification to read.
    assert_eq!(LeadField::Qualified("rating".into()).value(&l, "k"), None);
}

#[test]
fn a_filter_predicate_uses_the_values() {
    let q = Arc::new(example());
    let p = Predicate::parse(Arc::clone(&q), "complete and rating != cold").unwrap();
    let full = lead(
        json!({"UserDetails": {"Email": "ann@contoso.com", "Company": "C",
        "Phone": "1"}, "LeadSource": "AzureMarketplace", "ActionCode": "INS"}),
    );
    let partial = lead(json!({"UserDetails": {"Email": "ann@gmail.com"},
        "LeadSource": "AzureMarketplace", "ActionCode": "INS"}));
    assert!(p.holds(&full));
    assert!(!p.holds(&partial));
    assert!(Predicate::parse(q, "complet")
        .unwrap_err()
        .contains("unknown field `complet`"));
}

proptest::proptest! {
    /// Any text either parses or is refused with a message; a parsed condition evaluates.
    #[test]
    fn the_parser_never_panics(text in "[ a-z_=!<>()\\[\\],'\"0-9.@-]{0,60}|\\PC{0,40}") {
        let q = example();
        if let Ok(c) = q.condition(&text) {
            let l = lead(json!({"UserDetails": {"Email": "a@gmail.com"}, "LeadSource": "SPZA-PLT|p.o"}));
            let _ = c.holds(&l, &q.evaluate(&l));
        }
    }

    /// Conditions built from the language's own words parse or fail, never panic.
    #[test]
    fn word_salad_never_panics(words in proptest::collection::vec(proptest::sample::select(vec![
        "has", "email", "and", "or", "not", "(", ")", "in", "[", "]", ",", "=", "!=", ">=",
        "score", "rating", "hot", "complete", "free_mail", "action", "PLT", "'x y'", "60",
    ]), 0..12)) {
        let _ = example().condition(&words.join(" "));
    }
}
