//! Tests of loading whole configurations from files, as an operator writes them.

use super::*;
use leadsync_core::mapping::{FieldOverride, FieldRule};
use std::sync::Mutex;
use std::time::Duration;
use tempfile::TempDir;

const KINDS: &[&str] = &["file"];
const MAIN: &str = "[ledger]\npath = \"ledger.db\"\n";
const TARGET: &str = "kind = \"file\"\n[connection]\npath = \"out.csv\"\n";
const CONNECTION: &str = "[connection]\npath = \"out.csv\"\n";

struct Fixture {
    dir: TempDir,
}

impl Fixture {
    /// A config folder with `leadsync.toml` = `main` and an empty `targets/`.
    fn new(main: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("targets")).unwrap();
        let f = Fixture { dir };
        f.write("leadsync.toml", main);
        f
    }
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    fn write(&self, rel: &str, text: &str) -> &Self {
        let p = self.path(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(p, text).unwrap();
        self
    }
    fn load_env(&self, env: &[(&str, &str)]) -> Result<Settings, ConfigErrors> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        load_with_env(&self.path("leadsync.toml"), KINDS, env)
    }
    fn load(&self) -> Result<Settings, ConfigErrors> {
        self.load_env(&[])
    }
    /// The errors of a load that must fail.
    fn errors(&self) -> Vec<ConfigError> {
        match self.load() {
            Ok(s) => panic!("expected errors, loaded {s:?}"),
            Err(e) => e.0,
        }
    }
    /// The one error about `key` in `file` (relative to the folder).
    fn error(&self, file: &str, key: &str) -> ConfigError {
        let errors = self.errors();
        let want = self.path(file);
        let found: Vec<&ConfigError> = errors
            .iter()
            .filter(|e| e.file == want && e.key == key)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "want one error for {file} key {key:?}, got:\n{}",
            ConfigErrors(errors.clone())
        );
        found[0].clone()
    }
}

/// A valid target plus `extra` (top-level keys first, then tables).
fn target(extra: &str) -> String {
    format!("kind = \"file\"\n{extra}\n{CONNECTION}")
}

// ---------------------------------------------------------------------------------------
// The shipped example
// ---------------------------------------------------------------------------------------

fn repo_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config")
}

/// Remove `.` and `..` lexically, to compare paths.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[test]
fn shipped_example_loads() {
    let dir = repo_config();
    let s = load_with_env(&dir.join("leadsync.toml"), KINDS, Vec::new())
        .unwrap_or_else(|e| panic!("{e}"));
    let root = normalize(&dir.join(".."));
    assert_eq!(
        normalize(s.ledger.location.sqlite_path().expect("a SQLite ledger")),
        root.join("var/leadsync.db")
    );
    assert_eq!(s.ledger.lease, Duration::from_secs(120));
    assert_eq!(s.telemetry.log_format, LogFormat::Auto);
    assert_eq!(s.telemetry.log_level, "info");
    assert_eq!(s.admin, None);
    assert_eq!(s.sources.len(), 1);
    let src = &s.sources[0];
    assert_eq!(src.name, "examples");
    assert_eq!(src.schedule.as_str(), "*/10 * * * * *");
    let SourceKind::Spool(spool) = &src.kind else {
        panic!("expected a spool source")
    };
    assert_eq!(spool.after, AfterRead::Keep);
    assert_eq!(spool.settle, Duration::from_secs(2));
    assert_eq!(normalize(&spool.dir), root.join("examples/leads"));
    assert!(spool.dir.is_dir(), "{} should exist", spool.dir.display());

    assert_eq!(s.targets.len(), 1);
    let t = &s.targets[0];
    assert_eq!(t.name, "csv-export");
    assert_eq!(t.kind, "file");
    assert!(t.enabled);
    assert_eq!(normalize(&t.base_dir), root.join("config/targets"));
    let out = t.connection["path"].as_str().unwrap();
    // The target's relative paths resolve against its own folder: into the repo's var/.
    assert_eq!(
        normalize(&t.base_dir.join(out)),
        root.join("var/out/leads.csv")
    );
    assert_eq!(t.connection["format"], "csv");
    assert_eq!(t.filter, TargetFilter::default());
    assert_eq!(t.limits.concurrency, Concurrency::Fixed(1));
    assert_eq!(t.limits.batch_size, None);
    assert_eq!(t.key_namespace, "csv-export");
}

#[cfg(feature = "file")]
#[test]
fn shipped_example_connection_suits_the_file_connector() {
    let s = load_with_env(&repo_config().join("leadsync.toml"), KINDS, Vec::new()).unwrap();
    let t = &s.targets[0];
    let settings: leadsync_file::FileSettings =
        serde_json::from_value(t.connection.clone()).unwrap();
    assert_eq!(settings.format, leadsync_file::FileFormat::Csv);
}

/// The commented-out examples are valid too, once uncommented.
#[test]
fn shipped_example_comments_are_valid_settings() {
    fn uncomment(text: &str) -> String {
        let is_key = |k: &str| {
            (k.starts_with('"')
                && k.ends_with('"')
                && k.len() > 2
                && k[1..k.len() - 1].chars().all(|c| c != '"'))
                || (!k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        };
        let is_value = |v: &str| {
            v.starts_with(['"', '[', '{'])
                || v.starts_with(|c: char| c.is_ascii_digit())
                || v == "true"
                || v == "false"
        };
        text.lines()
            .map(|line| match line.strip_prefix("# ") {
                Some(rest)
                    if rest
                        .split_once(" = ")
                        .is_some_and(|(k, v)| is_key(k) && is_value(v))
                        || (rest.starts_with('[')
                            && rest.ends_with(']')
                            && !rest.contains(' ')) =>
                {
                    rest.to_string()
                }
                _ => line.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
    let f = Fixture::new(&uncomment(
        &std::fs::read_to_string(repo_config().join("leadsync.toml")).unwrap(),
    ));
    f.write(
        "targets/csv-export.toml",
        &uncomment(
            &std::fs::read_to_string(repo_config().join("targets/csv-export.toml")).unwrap(),
        ),
    );
    let s = f.load().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        s.admin.map(|a| a.listen.to_string()).as_deref(),
        Some("127.0.0.1:9464")
    );
    let t = &s.targets[0];
    assert_eq!(t.filter.actions.as_ref().map(Vec::len), Some(2));
    assert_eq!(t.filter.origins.as_ref().map(Vec::len), Some(2));
    let named: Vec<&str> = t.mapping.field_names().collect();
    assert!(named.contains(&"Full Name"));
    assert!(named.contains(&"Phone"));
    assert_eq!(t.limits.batch_size, Some(100));
    assert_eq!(t.limits.lease, Some(Duration::from_secs(300)));
}

// ---------------------------------------------------------------------------------------
// Good configurations
// ---------------------------------------------------------------------------------------

#[test]
fn minimal_config_gets_defaults() {
    let f = Fixture::new(MAIN);
    f.write("targets/crm.toml", TARGET);
    let s = f.load().unwrap();
    assert_eq!(s.config_path, f.path("leadsync.toml"));
    assert_eq!(s.config_dir, f.dir.path());
    assert_eq!(s.targets_dir, f.path("targets"));
    assert_eq!(s.telemetry.log_format, LogFormat::Auto);
    assert_eq!(s.telemetry.log_level, "info");
    assert!(s.sources.is_empty());
    let t = &s.targets[0];
    assert_eq!(t.name, "crm");
    assert_eq!(t.file, f.path("targets/crm.toml"));
    assert_eq!(t.base_dir, f.path("targets"));
    assert!(t.enabled);
    assert_eq!(t.schedule.as_str(), CronSchedule::DEFAULT);
    assert_eq!(
        t.limits,
        Limits {
            batch_size: None,
            concurrency: Concurrency::Fixed(1),
            max_stalled: None,
            max_age: Duration::from_secs(72 * 3600),
            lease: None
        }
    );
    assert_eq!(
        t.retry,
        RetryPolicy {
            min_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(900),
            max_retry_after: Duration::from_secs(3600)
        }
    );
    assert_eq!(t.key_scope, leadsync_core::KeyScope::Lead);
    assert_eq!(t.key_namespace, "crm");
    assert!(!t.mapping.replace_defaults);
    assert!(t.filter.marks_dnc());
}

#[test]
fn empty_targets_dir_is_allowed() {
    let f = Fixture::new(MAIN);
    f.write("targets/README.md", "not a target");
    f.write("targets/.hidden.toml", "garbage = [");
    assert_eq!(f.load().unwrap().targets.len(), 0);
}

#[test]
fn relative_paths_resolve_against_their_files_folder() {
    let f = Fixture::new(
        "targets_dir = \"conf.d/targets\"\n\
         [ledger]\npath = \"data/ledger.db\"\n\
         [sources.inbox]\nkind = \"spool\"\ndir = \"spool\"\n\
         [sources.abs]\nkind = \"spool\"\ndir = \"/srv/spool\"\n",
    );
    f.write("conf.d/targets/b.toml", TARGET);
    f.write("conf.d/targets/a.toml", TARGET);
    let s = f.load().unwrap();
    assert_eq!(
        s.ledger.location,
        LedgerLocation::Sqlite(f.path("data/ledger.db"))
    );
    assert_eq!(s.targets_dir, f.path("conf.d/targets"));
    let dirs: Vec<(&str, &Path)> = s
        .sources
        .iter()
        .map(|s| {
            let SourceKind::Spool(sp) = &s.kind else {
                panic!("expected a spool source")
            };
            (s.name.as_str(), sp.dir.as_path())
        })
        .collect();
    assert_eq!(
        dirs,
        vec![
            ("abs", Path::new("/srv/spool")),
            ("inbox", f.path("spool").as_path())
        ]
    );
    // Sorted by file name; each target's base is its own folder.
    let names: Vec<&str> = s.targets.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(s.targets[0].base_dir, f.path("conf.d/targets"));
}

#[test]
fn relative_config_path_becomes_absolute() {
    // `cargo test` runs in the package folder, which holds `config/`.
    let s = load_with_env(Path::new("config/leadsync.toml"), KINDS, Vec::new())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(s.config_path.is_absolute());
    assert_eq!(
        s.config_path,
        std::env::current_dir()
            .unwrap()
            .join("config/leadsync.toml")
    );
    assert!(s
        .ledger
        .location
        .sqlite_path()
        .is_some_and(Path::is_absolute));
    assert!(s.targets[0].base_dir.is_absolute());
}

#[test]
fn mapping_field_names_keep_their_case() {
    let f = Fixture::new(MAIN);
    f.write(
        "targets/crm.toml",
        &target(
            "[connection.Headers]\nX-Api-Version = \"2\"\n\
             [mapping]\nreplace_defaults = true\n\
             [mapping.fields]\nFirstName = \"first_name\"\n\
             lastName = { from = \"last_name\", max_chars = 40 }\n\
             \"Lead Source\" = { value = \"Marketplace\" }\n\
             Topic = { template = \"{offer_title} ({action})\" }\n\
             OldField = { omit = true }\n",
        ),
    );
    let s = f.load().unwrap();
    let t = &s.targets[0];
    let names: Vec<&str> = t.mapping.field_names().collect();
    assert_eq!(
        names,
        ["FirstName", "Lead Source", "OldField", "Topic", "lastName"]
    );
    assert_eq!(
        t.mapping.fields[0],
        FieldOverride::Set(FieldRule::field("FirstName", "first_name").unwrap())
    );
    assert_eq!(t.mapping.fields[2], FieldOverride::Omit("OldField".into()));
    assert!(t.mapping.replace_defaults);
    assert_eq!(t.connection["Headers"]["X-Api-Version"], "2");
    // The checked rules build a mapping as the connector will.
    let m = t.mapping.apply_to(leadsync_core::Mapping::default());
    assert_eq!(m.rules.len(), 4);
}

#[test]
fn full_target_is_read() {
    let f = Fixture::new(MAIN);
    f.write(
        "targets/crm.toml",
        &target(
            "name = \"crm.eu\"\nenabled = false\nschedule = \"0 */5 * * * *\"\n\
             [filter]\nactions = [\"ins\", \"PLT\"]\norigins = [\"SPZA\"]\n\
             offers = [\"Pub.Offer\"]\n\
             test_leads = \"include\"\ndnc = \"skip\"\n\
             [limits]\nbatch_size = 10000\nconcurrency = 64\nmax_age = \"1d\"\nlease = \"90s\"\n\
             [retry]\nmin_delay = \"2s\"\nmax_delay = \"2s\"\nmax_retry_after = \"10m\"\n\
             [idempotency]\nscope = \"customer\"\nnamespace = \"crm\"\n",
        ),
    );
    let s = f.load().unwrap();
    let t = &s.targets[0];
    assert_eq!(t.name, "crm.eu");
    assert!(!t.enabled);
    assert_eq!(t.schedule.as_str(), "0 */5 * * * *");
    assert_eq!(
        t.filter,
        TargetFilter {
            actions: Some(vec![
                leadsync_core::Action::Install,
                leadsync_core::Action::ContactMe
            ]),
            origins: Some(vec![leadsync_core::Origin::AppSource]),
            offers: Some(vec!["pub.offer".into()]),
            test_leads: TestLeads::Include,
            dnc: DncPolicy::Skip,
            when: None,
        }
    );
    assert_eq!(
        t.limits,
        Limits {
            batch_size: Some(10000),
            concurrency: Concurrency::Fixed(64),
            max_stalled: None,
            max_age: Duration::from_secs(86400),
            lease: Some(Duration::from_secs(90))
        }
    );
    assert_eq!(t.retry.max_delay, Duration::from_secs(2));
    assert_eq!(t.key_scope, leadsync_core::KeyScope::Customer);
    assert_eq!(t.key_namespace, "crm");
}

// ---------------------------------------------------------------------------------------
// Broken configurations: each names the file, the key and what was expected
// ---------------------------------------------------------------------------------------

#[test]
fn unknown_top_level_key() {
    let f = Fixture::new(&format!("ledgr = 1\n{MAIN}"));
    let e = f.error("leadsync.toml", "ledgr");
    assert_eq!(e.kind, ErrorKind::UnknownKey);
    assert_eq!(
        e.message,
        "expected one of targets_dir, ledger, telemetry, admin, sources, alerts"
    );
}

#[test]
fn unknown_nested_key_in_a_target() {
    let f = Fixture::new(MAIN);
    f.write("targets/csv.toml", &target("[limits]\nbatchsize = 5\n"));
    let e = f.error("targets/csv.toml", "limits.batchsize");
    assert_eq!(
        e.to_string(),
        format!(
            "{}: unknown key `limits.batchsize` \
             (expected one of batch_size, concurrency, max_concurrency, max_stalled, max_age, lease)",
            f.path("targets/csv.toml").display()
        )
    );
}

#[test]
fn unknown_key_in_a_source_and_in_a_mapping_rule() {
    let f = Fixture::new(&format!(
        "{MAIN}[sources.inbox]\nkind = \"spool\"\ndir = \"s\"\ndri = \"x\"\n"
    ));
    f.write(
        "targets/crm.toml",
        &target("[mapping.fields]\nCompany = { form = \"company\" }\n"),
    );
    let e = f.error("leadsync.toml", "sources.inbox.dri");
    assert_eq!(e.kind, ErrorKind::UnknownKey);
    assert!(
        e.message
            .contains("kind, schedule, timezone, dir, after, settle"),
        "{e}"
    );
    let e = f.error("targets/crm.toml", "mapping.fields.Company.form");
    assert_eq!(e.kind, ErrorKind::UnknownKey);
    assert!(e.message.contains("from"), "{e}");
}

#[test]
fn wrong_types_name_the_expected_type() {
    let f = Fixture::new(MAIN);
    f.write(
        "targets/crm.toml",
        &target("enabled = \"yes\"\n[limits]\nconcurrency = \"4\"\n"),
    );
    let e = f.error("targets/crm.toml", "enabled");
    assert_eq!(e.message, "expected true or false, found string \"yes\"");
    // Sections are read one by one, so the mistake in [limits] is reported too.
    let e = f.error("targets/crm.toml", "limits.concurrency");
    assert_eq!(
        e.message,
        "expected an integer from 1 to 64 or \"adaptive\", found string \"4\""
    );

    let f = Fixture::new("[ledger]\npath = 5\n");
    let e = f.error("leadsync.toml", "ledger.path");
    assert_eq!(e.message, "expected a string, found integer 5");

    // A wrong `targets_dir` is reported once, without guessing another folder.
    let f = Fixture::new(&format!("targets_dir = 5\n{MAIN}"));
    let e = f.error("leadsync.toml", "targets_dir");
    assert_eq!(e.message, "expected a string, found integer 5");
    assert_eq!(f.errors().len(), 1);
}

#[test]
fn bad_cron() {
    let f = Fixture::new(MAIN);
    f.write("targets/crm.toml", &target("schedule = \"*/5 * * * *\"\n"));
    let e = f.error("targets/crm.toml", "schedule");
    assert!(e.message.contains("6 or 7 fields"), "{e}");
    assert!(e.message.contains("\"*/5 * * * *\""), "{e}");

    let f = Fixture::new(&format!(
        "{MAIN}[sources.inbox]\nkind = \"spool\"\ndir = \"s\"\nschedule = \"0 0 25 * * *\"\n"
    ));
    f.error("leadsync.toml", "sources.inbox.schedule");
}

#[test]
fn bad_duration() {
    let f = Fixture::new(MAIN);
    f.write(
        "targets/crm.toml",
        &target("[retry]\nmin_delay = \"5 parsecs\"\n"),
    );
    let e = f.error("targets/crm.toml", "retry.min_delay");
    assert!(e.message.starts_with("expected a duration"), "{e}");
    assert!(e.message.contains("\"5 parsecs\""), "{e}");

    let f = Fixture::new("[ledger]\npath = \"l.db\"\nlease = \"0s\"\n");
    let e = f.error("leadsync.toml", "ledger.lease");
    assert!(e.message.contains("above zero"), "{e}");
}

#[test]
fn bad_enum_values() {
    let f = Fixture::new(&format!(
        "{MAIN}[telemetry]\nlog_format = \"xml\"\n\
         [sources.inbox]\nkind = \"spool\"\ndir = \"s\"\nafter = \"mov\"\n"
    ));
    f.write(
        "targets/crm.toml",
        &target("[idempotency]\nscope = \"person\"\n"),
    );
    let e = f.error("leadsync.toml", "sources.inbox.after");
    assert_eq!(e.message, "expected one of move, keep, found \"mov\"");
    let e = f.error("leadsync.toml", "telemetry.log_format");
    assert_eq!(e.message, "expected one of auto, json, text, found \"xml\"");
    let e = f.error("targets/crm.toml", "idempotency.scope");
    assert_eq!(
        e.message,
        "expected one of lead, customer, found \"person\""
    );
}

#[test]
fn missing_targets_dir_names_it() {
    let f = Fixture::new("targets_dir = \"nowhere\"\n[ledger]\npath = \"l.db\"\n");
    let e = f.error("leadsync.toml", "targets_dir");
    assert!(
        e.message.contains(&f.path("nowhere").display().to_string()),
        "{e}"
    );
    assert!(e.message.contains("does not exist"), "{e}");
}

#[test]
fn duplicate_target_names_name_both_files() {
    let f = Fixture::new(MAIN);
    f.write("targets/a.toml", &target("name = \"crm\"\n"));
    f.write("targets/crm.toml", TARGET);
    let e = f.error("targets/crm.toml", "name");
    assert!(
        e.message
            .contains(&f.path("targets/a.toml").display().to_string()),
        "{e}"
    );
    assert!(e.message.contains("unique"), "{e}");
}

#[test]
fn unknown_target_kind_lists_known_kinds() {
    let f = Fixture::new(MAIN);
    f.write("targets/crm.toml", "kind = \"salesforce\"\n");
    let e = f.error("targets/crm.toml", "kind");
    assert!(
        e.message
            .starts_with("expected one of file, found \"salesforce\""),
        "{e}"
    );
    f.write("targets/crm.toml", "enabled = true\n");
    let e = f.error("targets/crm.toml", "kind");
    assert_eq!(e.message, "missing; expected one of file");
}

#[test]
fn bad_mapping_field_name() {
    let f = Fixture::new(MAIN);
    f.write(
        "targets/crm.toml",
        &target(
            "[mapping.fields]\nFirstName = \"frist_name\"\n\
             Subject = { template = \"{offer_titel}\" }\nCount = 5\n\
             Skipped = { from = \"nonsense\", omit = true }\n",
        ),
    );
    let e = f.error("targets/crm.toml", "mapping.fields.FirstName");
    assert!(
        e.message.contains("unknown lead field \"frist_name\""),
        "{e}"
    );
    assert!(e.message.contains("first_name"), "{e}");
    f.error("targets/crm.toml", "mapping.fields.Subject");
    let e = f.error("targets/crm.toml", "mapping.fields.Count");
    assert!(e.message.contains("found integer 5"), "{e}");
    assert_eq!(f.errors().len(), 3, "omitted entries are not checked");
}

#[test]
fn concurrency_may_be_adaptive_with_a_ceiling() {
    let f = Fixture::new(MAIN);
    f.write(
        "targets/crm.toml",
        &target("[limits]\nconcurrency = \"adaptive\"\nmax_concurrency = 24\n"),
    );
    let s = f.load().unwrap();
    assert_eq!(
        s.targets[0].limits.concurrency,
        Concurrency::Adaptive { max: 24 }
    );
    f.write(
        "targets/crm.toml",
        &target("[limits]\nconcurrency = \"adaptive\"\n"),
    );
    let s = f.load().unwrap();
    assert_eq!(
        s.targets[0].limits.concurrency,
        Concurrency::Adaptive { max: 16 }
    );
    f.write(
        "targets/crm.toml",
        &target("[limits]\nconcurrency = 4\nmax_concurrency = 8\n"),
    );
    let e = f.error("targets/crm.toml", "limits.max_concurrency");
    assert!(
        e.message.contains("only with concurrency = \"adaptive\""),
        "{e}"
    );
}

#[test]
fn concurrency_zero() {
    let f = Fixture::new(MAIN);
    f.write("targets/crm.toml", &target("[limits]\nconcurrency = 0\n"));
    let e = f.error("targets/crm.toml", "limits.concurrency");
    assert_eq!(
        e.to_string(),
        format!(
            "{}: key `limits.concurrency`: expected an integer from 1 to 64, found 0",
            f.path("targets/crm.toml").display()
        )
    );
    f.write(
        "targets/crm.toml",
        &target("[limits]\nbatch_size = 10001\n"),
    );
    f.error("targets/crm.toml", "limits.batch_size");
}

#[test]
fn toml_syntax_error_names_the_line() {
    let f = Fixture::new(MAIN);
    f.write(
        "targets/crm.toml",
        "kind = \"file\"\n\n[limits\nconcurrency = 1\n",
    );
    let e = f.error("targets/crm.toml", "");
    assert_eq!(e.kind, ErrorKind::Syntax);
    assert!(e.message.contains("line 3"), "{e}");
    assert!(!e.message.contains('\n'), "one line: {e:?}");

    let f = Fixture::new("[ledger]\npath = \"a\"\npath = \"b\"\n");
    let e = f.error("leadsync.toml", "");
    assert!(e.message.contains("line 3"), "{e}");
}

#[test]
fn max_delay_below_min_delay() {
    let f = Fixture::new(MAIN);
    f.write(
        "targets/crm.toml",
        &target("[retry]\nmin_delay = \"1m\"\nmax_delay = \"30s\"\n"),
    );
    let e = f.error("targets/crm.toml", "retry.max_delay");
    assert_eq!(
        e.message,
        "expected a duration of at least retry.min_delay (1m), found 30s"
    );
}

#[test]
fn bad_target_name_characters() {
    let f = Fixture::new(MAIN);
    f.write("targets/crm.toml", &target("name = \"crm eu/1\"\n"));
    let e = f.error("targets/crm.toml", "name");
    assert!(e.message.contains("letters, digits"), "{e}");
    assert!(e.message.contains("\"crm eu/1\""), "{e}");

    // A file name that is no valid name needs `name`.
    let f = Fixture::new(MAIN);
    f.write("targets/crm eu.toml", TARGET);
    let e = f.error("targets/crm eu.toml", "name");
    assert!(e.message.contains("set `name`"), "{e}");
}

#[test]
fn other_source_mistakes() {
    let f = Fixture::new(&format!(
        "{MAIN}[sources.inbox]\nkind = \"spool\"\ndir = \"s\"\ntimezone = \"Europe/Paris\"\n\
         [sources.table]\nkind = \"azure_tabel\"\n\
         [sources.\"bad name\"]\nkind = \"spool\"\ndir = \"x\"\n\
         [sources.nodir]\nkind = \"spool\"\n"
    ));
    let e = f.error("leadsync.toml", "sources.inbox.timezone");
    assert!(e.message.contains("\"UTC\""), "{e}");
    let e = f.error("leadsync.toml", "sources.table.kind");
    assert_eq!(
        e.message,
        "expected one of spool, azure_table, https_inbox, found \"azure_tabel\""
    );
    f.error("leadsync.toml", "sources.\"bad name\"");
    let e = f.error("leadsync.toml", "sources.nodir.dir");
    assert!(e.message.starts_with("missing"), "{e}");
}

#[test]
fn main_file_mistakes() {
    let f = Fixture::new("[telemetry]\nlog_level = \"loud\"\n[admin]\nlisten = \"localhost\"\n");
    let e = f.error("leadsync.toml", "ledger");
    assert!(e.message.contains("[ledger]"), "{e}");
    let e = f.error("leadsync.toml", "telemetry.log_level");
    assert_eq!(
        e.message,
        "expected one of trace, debug, info, warn, error, found \"loud\""
    );
    let e = f.error("leadsync.toml", "admin.listen");
    assert!(e.message.contains("127.0.0.1:9464"), "{e}");

    let missing = load_with_env(&f.path("nope.toml"), KINDS, Vec::new()).unwrap_err();
    assert_eq!(missing.len(), 1);
    assert_eq!(
        missing.first().map(|e| (e.kind, e.message.as_str())),
        Some((ErrorKind::Io, "file not found"))
    );
}

#[test]
fn filter_mistakes_name_the_entry() {
    let f = Fixture::new(MAIN);
    f.write(
        "targets/crm.toml",
        &target(
            "[filter]\nactions = [\"INS\", \"INZ\"]\norigins = []\n\
             offers = [\"\"]\ndnc = \"ignore\"\n",
        ),
    );
    let e = f.error("targets/crm.toml", "filter.actions[1]");
    assert!(e.message.contains("\"INZ\""), "{e}");
    let e = f.error("targets/crm.toml", "filter.origins");
    assert!(e.message.contains("at least one"), "{e}");
    f.error("targets/crm.toml", "filter.offers[0]");
    f.error("targets/crm.toml", "filter.dnc");
}

#[test]
fn errors_from_several_files_are_collected() {
    let f = Fixture::new("[ledger]\npath = \"l.db\"\nlease = \"soon\"\n");
    f.write(
        "targets/a.toml",
        &target("[limits]\nconcurrency = 0\n[retry]\nmax_delay = \"x\"\n"),
    );
    f.write("targets/b.toml", "kind = \"file\"\nbogus = true\n");
    f.write("targets/c.toml", TARGET);
    let errors = f.errors();
    let keys: Vec<(String, &str)> = errors
        .iter()
        .map(|e| {
            (
                e.file.file_name().unwrap().to_string_lossy().into_owned(),
                e.key.as_str(),
            )
        })
        .collect();
    assert_eq!(
        keys,
        [
            ("leadsync.toml".to_string(), "ledger.lease"),
            ("a.toml".to_string(), "limits.concurrency"),
            ("a.toml".to_string(), "retry.max_delay"),
            ("b.toml".to_string(), "bogus"),
        ]
    );
}

// ---------------------------------------------------------------------------------------
// Environment overrides
// ---------------------------------------------------------------------------------------

#[test]
fn env_overrides_main_keys_and_ignores_cli_variables() {
    let f = Fixture::new(&format!(
        "{MAIN}[sources.inbox]\nkind = \"spool\"\ndir = \"s\"\n"
    ));
    f.write("targets/crm-eu.toml", TARGET);
    let s = f
        .load_env(&[
            ("LEADSYNC_LEDGER__PATH", "/x/ledger.db"),
            ("LEADSYNC_CONFIG", "/etc/elsewhere/leadsync.toml"),
            ("LEADSYNC_REQUIRE_SERVICES", "postgres"),
            ("LEADSYNC_TELEMETRY__LOG_LEVEL", "debug"),
            ("LEADSYNC_SOURCES__INBOX__SETTLE", "5s"),
            ("LEADSYNC_TARGET_CRM_EU__LIMITS__BATCH_SIZE", "50"),
            ("LEADSYNC_TARGET_CRM_EU__IDEMPOTENCY__NAMESPACE", "007"),
            ("LEADSYNC_TARGET_CRM_EU__FILTER__ACTIONS", "INS,plt"),
            ("LEADSYNC_TARGET_CRM_EU__ENABLED", "false"),
            ("LEADSYNC_TARGET_OTHER__LIMITS__BATCH_SIZE", "nonsense"),
            ("LEADSYNC_ADMIN__LISTEN", ""),
            ("UNRELATED", "1"),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        s.ledger.location,
        LedgerLocation::Sqlite(PathBuf::from("/x/ledger.db"))
    );
    assert_eq!(s.telemetry.log_level, "debug");
    assert_eq!(s.admin, None, "empty variables are unset");
    let SourceKind::Spool(sp) = &s.sources[0].kind else {
        panic!("expected a spool source")
    };
    assert_eq!(sp.settle, Duration::from_secs(5));
    let t = &s.targets[0];
    assert_eq!(t.limits.batch_size, Some(50));
    assert_eq!(t.key_namespace, "007", "no number parsing of strings");
    assert_eq!(t.filter.actions.as_ref().map(Vec::len), Some(2));
    assert!(!t.enabled);
}

#[test]
fn env_mistakes_name_the_variable() {
    let f = Fixture::new(MAIN);
    f.write("targets/crm-eu.toml", TARGET);
    let errors = f
        .load_env(&[
            ("LEADSYNC_TARGET_CRM_EU__LIMITS__CONCURRENCY", "lots"),
            ("LEADSYNC_TARGET_CRM_EU__RETRY__MIN_DELAY", "soon"),
            (
                "LEADSYNC_TARGET_CRM_EU__MAPPING__FIELDS__FIRSTNAME",
                "email",
            ),
            ("LEADSYNC_LEDGER__LEASE", "0s"),
        ])
        .unwrap_err();
    let by_key = |k: &str| {
        errors
            .iter()
            .find(|e| e.key == k)
            .unwrap_or_else(|| panic!("no error for {k}: {errors}"))
    };
    assert!(by_key("limits.concurrency")
        .message
        .ends_with("(set by environment variable LEADSYNC_TARGET_CRM_EU__LIMITS__CONCURRENCY)"));
    assert!(by_key("retry.min_delay")
        .message
        .contains("LEADSYNC_TARGET_CRM_EU__RETRY__MIN_DELAY"));
    assert!(by_key("mapping.fields.firstname")
        .message
        .contains("case-sensitive"));
    assert!(by_key("ledger.lease")
        .message
        .contains("LEADSYNC_LEDGER__LEASE"));
}

/// The real process environment (only this test changes it; the others pass theirs).
#[test]
fn load_reads_the_process_environment() {
    static ENV: Mutex<()> = Mutex::new(());
    let _guard = ENV.lock().unwrap_or_else(|e| e.into_inner());
    let f = Fixture::new(MAIN);
    let path_var = "LEADSYNC_LEDGER__PATH";
    std::env::set_var(path_var, "/from/env.db");
    std::env::set_var("LEADSYNC_CONFIG", "/not/a/config/key");
    let s = load(&f.path("leadsync.toml"), KINDS);
    std::env::remove_var(path_var);
    std::env::remove_var("LEADSYNC_CONFIG");
    let s = s.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        s.ledger.location,
        LedgerLocation::Sqlite(PathBuf::from("/from/env.db"))
    );
}

#[test]
fn target_env_prefix_follows_the_file_stem() {
    assert_eq!(target_env_prefix("crm-eu"), "LEADSYNC_TARGET_CRM_EU");
    assert_eq!(
        target_env_prefix("csv.export"),
        "LEADSYNC_TARGET_CSV_EXPORT"
    );
}

// ---------------------------------------------------------------------------------------
// The Azure Table source
// ---------------------------------------------------------------------------------------

#[test]
fn azure_table_source_defaults_and_secret_forms() {
    let f = Fixture::new(&format!(
        "{MAIN}[sources.marketplace]\nkind = \"azure_table\"\n\
         connection = {{ env = \"LEADS_STORAGE\" }}\n\
         [sources.second]\nkind = \"azure_table\"\nconnection = {{ file = \"conn.txt\" }}\n\
         table = \"marketplaceleads\"\noverlap = \"0s\"\npage_size = 100\n\
         schedule = \"0 */5 * * * *\"\n\
         [sources.third]\nkind = \"azure_table\"\nconnection = {{ credential = \"leads\" }}\n\
         [sources.inline]\nkind = \"azure_table\"\nconnection = \"UseDevelopmentStorage=true\"\n"
    ));
    let s = f.load().unwrap_or_else(|e| panic!("{e}"));
    let get = |name: &str| {
        let src = s.sources.iter().find(|x| x.name == name).unwrap();
        match &src.kind {
            SourceKind::AzureTable(a) => (src.clone(), a.clone()),
            other => panic!("{other:?}"),
        }
    };
    let (src, a) = get("marketplace");
    assert_eq!(src.kind.name(), "azure_table");
    assert_eq!(src.schedule.as_str(), CronSchedule::DEFAULT);
    assert_eq!(a.table, "MarketplaceLeads");
    assert_eq!(a.overlap, Duration::from_secs(300));
    assert_eq!(a.page_size, 1000);
    assert_eq!(
        a.connection,
        leadsync_core::SecretRef::Env {
            env: "LEADS_STORAGE".into()
        }
    );
    let (src, a) = get("second");
    assert_eq!(src.schedule.as_str(), "0 */5 * * * *");
    assert_eq!(a.table, "marketplaceleads");
    assert_eq!(a.overlap, Duration::ZERO);
    assert_eq!(a.page_size, 100);
    assert_eq!(
        a.connection,
        leadsync_core::SecretRef::File {
            file: f.path("conn.txt")
        }
    );
    assert_eq!(
        get("third").1.connection,
        leadsync_core::SecretRef::Credential {
            credential: "leads".into()
        }
    );
    assert_eq!(
        get("inline").1.connection,
        leadsync_core::SecretRef::Inline("UseDevelopmentStorage=true".into())
    );
}

#[test]
fn azure_table_source_mistakes_name_file_and_key() {
    let f = Fixture::new(&format!(
        "{MAIN}[sources.noconn]\nkind = \"azure_table\"\n\
         [sources.bad]\nkind = \"azure_table\"\nconnection = {{ vault = \"x\" }}\n\
         table = \"my-table\"\npage_size = 5000\noverlap = \"soon\"\n\
         [sources.typo]\nkind = \"azure_table\"\nconnection = \"x\"\ntabel = \"T\"\n\
         [sources.wrongtype]\nkind = \"azure_table\"\nconnection = 5\n"
    ));
    let e = f.error("leadsync.toml", "sources.noconn.connection");
    assert!(e.message.starts_with("missing; expected a secret"), "{e}");
    let e = f.error("leadsync.toml", "sources.bad.connection");
    assert!(e.message.contains("`vault`"), "{e}");
    let e = f.error("leadsync.toml", "sources.bad.table");
    assert!(e.message.contains("\"my-table\""), "{e}");
    let e = f.error("leadsync.toml", "sources.bad.page_size");
    assert!(e.message.contains("1 to 1000"), "{e}");
    f.error("leadsync.toml", "sources.bad.overlap");
    let e = f.error("leadsync.toml", "sources.typo.tabel");
    assert!(e.message.contains("table"), "{e}");
    let e = f.error("leadsync.toml", "sources.wrongtype.connection");
    assert!(e.message.contains("integer 5"), "{e}");
}

// ---------------------------------------------------------------------------------------
// The PostgreSQL ledger
// ---------------------------------------------------------------------------------------

#[test]
fn ledger_url_selects_postgres() {
    let f = Fixture::new(
        "[ledger]\nurl = \"postgres://leadsync@db.internal/leadsync\"\nschema = \"eu_1\"\n\
         max_connections = 20\nlease = \"30s\"\n",
    );
    let s = f.load().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        s.ledger.location,
        LedgerLocation::Postgres(PostgresLedgerSettings {
            url: leadsync_core::SecretRef::Inline(
                "postgres://leadsync@db.internal/leadsync".to_string()
            ),
            schema: Some("eu_1".to_string()),
            max_connections: 20,
        })
    );
    assert_eq!(s.ledger.lease, Duration::from_secs(30));
    assert_eq!(s.ledger.location.sqlite_path(), None);

    // A secret reference, and the defaults.
    let f = Fixture::new("[ledger]\nurl = { env = \"LEDGER_URL\" }\n");
    let s = f.load().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        s.ledger.location,
        LedgerLocation::Postgres(PostgresLedgerSettings {
            url: leadsync_core::SecretRef::Env {
                env: "LEDGER_URL".to_string()
            },
            schema: None,
            max_connections: 8,
        })
    );
    let f = Fixture::new("[ledger]\nurl = { file = \"secrets/ledger-url\" }\n");
    let s = f.load().unwrap_or_else(|e| panic!("{e}"));
    let LedgerLocation::Postgres(pg) = &s.ledger.location else {
        panic!("expected PostgreSQL")
    };
    assert_eq!(
        pg.url,
        leadsync_core::SecretRef::File {
            file: f.path("secrets/ledger-url")
        }
    );

    // From the environment.
    let f = Fixture::new("[ledger]\nlease = \"1m\"\n");
    let s = f
        .load_env(&[("LEADSYNC_LEDGER__URL", "postgresql://h/db")])
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(s.ledger.location, LedgerLocation::Postgres(_)));
}

#[test]
fn ledger_location_mistakes_name_the_key() {
    let f = Fixture::new("[ledger]\npath = \"l.db\"\nurl = \"postgres://h/db\"\n");
    let e = f.error("leadsync.toml", "ledger.url");
    assert!(e.message.contains("not both"), "{e}");

    let f = Fixture::new("[ledger]\nurl = \"mysql://h/db\"\n");
    let e = f.error("leadsync.toml", "ledger.url");
    assert!(e.message.contains("PostgreSQL URL"), "{e}");

    let f = Fixture::new("[ledger]\nurl = { vault = \"x\" }\n");
    let e = f.error("leadsync.toml", "ledger.url");
    assert!(e.message.contains("{ env = \"NAME\" }"), "{e}");

    let f = Fixture::new("[ledger]\nurl = \"postgres://h/db\"\nschema = \"Bad-Name\"\n");
    let e = f.error("leadsync.toml", "ledger.schema");
    assert!(e.message.contains("\"Bad-Name\""), "{e}");

    let f = Fixture::new("[ledger]\nurl = \"postgres://h/db\"\nmax_connections = 0\n");
    let e = f.error("leadsync.toml", "ledger.max_connections");
    assert_eq!(e.message, "expected an integer from 1 to 1000, found 0");

    let f = Fixture::new("[ledger]\npath = \"l.db\"\nschema = \"s\"\n");
    let e = f.error("leadsync.toml", "ledger.schema");
    assert!(
        e.message.contains("only applies to a PostgreSQL ledger"),
        "{e}"
    );

    let f = Fixture::new("[ledger]\nlease = \"1m\"\n");
    let e = f.error("leadsync.toml", "ledger.path");
    assert!(e.message.starts_with("missing"), "{e}");

    let f = Fixture::new("[ledger]\nurl = \"postgres://h/db\"\nhost = \"h\"\n");
    let e = f.error("leadsync.toml", "ledger.host");
    assert!(e.message.contains("url"), "{e}");
}

#[test]
fn max_stalled_is_a_bounded_count_and_zero_is_allowed() {
    let f = Fixture::new(MAIN);
    f.write(
        "targets/crm.toml",
        &target("[limits]\nconcurrency = 4\nmax_stalled = 0\n"),
    );
    let s = f.load().unwrap();
    assert_eq!(s.targets[0].limits.max_stalled, Some(0));
    f.write(
        "targets/crm.toml",
        &target("[limits]\nconcurrency = 4\nmax_stalled = 65\n"),
    );
    let e = f.error("targets/crm.toml", "limits.max_stalled");
    assert!(e.message.contains("65"), "{e}");
}

// ---------------------------------------------------------------------------------------
// [qualify] (docs/qualification.md)
// ---------------------------------------------------------------------------------------

fn read(record: serde_json::Value) -> leadsync_core::Lead {
    leadsync_core::read_lead("l".into(), &record).unwrap()
}

#[test]
fn qualify_feeds_the_filter_and_the_mapping() {
    let f = Fixture::new(MAIN);
    f.write(
        "targets/crm.toml",
        &target(
            "[qualify.rating]\n\
             cases = [{ when = \"complete and action = PLT\", value = \"Hot\" }]\n\
             default = \"Cold\"\n\
             [qualify.complete]\nwhen = \"has email and has company and not free_mail\"\n\
             [filter]\nwhen = \"complete\"\n\
             [mapping.fields]\nRating = \"rating\"\n\
             Summary = { template = \"{rating} (complete: {complete})\" }\n",
        ),
    );
    let s = f.load().unwrap_or_else(|e| panic!("{e}"));
    let t = &s.targets[0];
    let q = t.mapping.qualification.as_deref().expect("a qualification");
    assert_eq!(q.names().collect::<Vec<_>>(), ["complete", "rating"]);
    let full = read(serde_json::json!({"UserDetails": {"Email": "a@contoso.com",
        "Company": "Contoso"}, "LeadSource": "SPZA", "ActionCode": "PLT"}));
    let free = read(serde_json::json!({"UserDetails": {"Email": "a@gmail.com",
        "Company": "Contoso"}, "LeadSource": "SPZA", "ActionCode": "PLT"}));
    assert_eq!(t.filter.admits(&full), Ok(()));
    assert_eq!(
        t.filter.admits(&free),
        Err("qualification: `when` is false")
    );
    let m = t.mapping.apply_to(leadsync_core::Mapping::default());
    let (rec, _) = m.apply(&full, "k", &[]);
    assert_eq!(rec.get_str("Rating"), Some("Hot"));
    assert_eq!(rec.get_str("Summary"), Some("Hot (complete: true)"));
    let (rec, _) = m.apply(&free, "k", &[]);
    assert_eq!(rec.get_str("Summary"), Some("Cold (complete: false)"));

    // A filter condition without any [qualify] table uses lead fields only.
    let f = Fixture::new(MAIN);
    f.write(
        "targets/crm.toml",
        &target("[filter]\nwhen = \"country in [US, USA] and not free_mail\"\n"),
    );
    let s = f.load().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.targets[0].mapping.qualification, None);
    assert!(s.targets[0].filter.when.is_some());
}

#[test]
fn qualify_mistakes_name_file_and_key() {
    let f = Fixture::new(MAIN);
    f.write(
        "targets/crm.toml",
        &target(
            "[qualify.rating]\ncases = [{ when = \"has email\", value = \"Hot\" },\n\
             { when = \"emial = x\", value = \"Warm\" }]\n",
        ),
    );
    let e = f.error("targets/crm.toml", "qualify.rating.cases[1].when");
    assert!(e.message.starts_with("unknown field `emial`"), "{e}");

    // A broken rule is reported once: the mapping that reads it is not blamed as well.
    let f = Fixture::new(MAIN);
    f.write(
        "targets/crm.toml",
        &target(
            "[qualify.score]\nbase = 500\n[mapping.fields]\nScore = \"score\"\n\
             [filter]\nwhen = \"score > 3\"\n",
        ),
    );
    let errors = f.errors();
    assert_eq!(errors.len(), 1, "{}", ConfigErrors(errors.clone()));
    assert_eq!(errors[0].key, "qualify.score.base");

    for (toml, key) in [
        ("qualify = 3\n", "qualify"),
        ("[qualify]\nrating = \"hot\"\n", "qualify.rating"),
        ("[qualify.Rating]\nwhen = \"true\"\n", "qualify.Rating"),
        ("[qualify.x]\nwhen = 5\n", "qualify.x.when"),
        ("[filter]\nwhen = \"rating = hot\"\n", "filter.when"),
    ] {
        let f = Fixture::new(MAIN);
        f.write("targets/crm.toml", &target(toml));
        f.error("targets/crm.toml", key);
    }
}

#[test]
fn qualify_rules_may_come_from_the_environment() {
    let f = Fixture::new(MAIN);
    f.write(
        "targets/crm.toml",
        &target("[qualify.complete]\nwhen = \"has email\"\n"),
    );
    let s = f
        .load_env(&[("LEADSYNC_TARGET_CRM__QUALIFY__COMPLETE__WHEN", "has phone")])
        .unwrap_or_else(|e| panic!("{e}"));
    let m = s.targets[0]
        .mapping
        .apply_to(leadsync_core::Mapping::default());
    let v = m
        .qualify(&read(
            serde_json::json!({"UserDetails": {"Email": "a@b.example"}}),
        ))
        .unwrap();
    assert_eq!(v.get("complete"), Some(&serde_json::json!(false)));
    let errors = f
        .load_env(&[("LEADSYNC_TARGET_CRM__QUALIFY__COMPLETE__WHEN", "has emial")])
        .unwrap_err();
    let e = errors.first().unwrap();
    assert_eq!(e.key, "qualify.complete.when");
    assert!(
        e.message.ends_with(
            "(set by environment variable LEADSYNC_TARGET_CRM__QUALIFY__COMPLETE__WHEN)"
        ),
        "{e}"
    );
}

/// The shipped Salesforce and Dataverse examples rate leads as their comments say.
#[test]
fn shipped_example_rules_rate_leads() {
    let examples = repo_config().join("examples/targets");
    let f = Fixture::new(MAIN);
    for name in ["salesforce.toml", "dynamics.toml"] {
        f.write(
            &format!("targets/{name}"),
            &std::fs::read_to_string(examples.join(name)).unwrap(),
        );
    }
    let s = load_with_env(
        &f.path("leadsync.toml"),
        &["salesforce", "dynamics"],
        Vec::new(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let hot = read(
        serde_json::json!({"UserDetails": {"Email": "ann@contoso.com",
        "Company": "Contoso", "Phone": "+1 425 555 0100", "Title": "CTO"},
        "LeadSource": "AzureMarketplace", "ActionCode": "INS"}),
    );
    // PLT 40 + company 15 - free mail 20 + base 10 = 45: warm, not complete.
    let warm = read(
        serde_json::json!({"UserDetails": {"Email": "bo@gmail.com", "Company": "Bo's"},
        "LeadSource": "SPZA", "ActionCode": "PLT"}),
    );
    let cold = read(
        serde_json::json!({"UserDetails": {"Email": "cy@contoso.com",
        "Company": "Contoso", "Phone": "1"}, "LeadSource": "SPZA", "ActionCode": "DNC"}),
    );
    let map = |target: &str, lead: &leadsync_core::Lead, field: &str| {
        let t = s.target(target).unwrap();
        let (rec, _) = t
            .mapping
            .apply_to(leadsync_core::Mapping::default())
            .apply(lead, "k", &[]);
        rec.get(field).cloned()
    };
    use serde_json::json;
    assert_eq!(map("salesforce", &hot, "Rating"), Some(json!("Hot")));
    assert_eq!(map("salesforce", &warm, "Rating"), Some(json!("Warm")));
    assert_eq!(map("salesforce", &cold, "Rating"), Some(json!("Cold")));
    assert_eq!(map("dynamics", &hot, "leadqualitycode"), Some(json!(1)));
    assert_eq!(map("dynamics", &warm, "leadqualitycode"), Some(json!(2)));
    assert_eq!(map("dynamics", &cold, "leadqualitycode"), Some(json!(3)));
}
