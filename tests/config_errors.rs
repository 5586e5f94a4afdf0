//! `leadsync check` on broken configurations: exit 78 (EX_CONFIG) with the file and the key
//! named; the shipped example configuration passes.

mod common;
use common::{text, Deployment};

fn broken_target(toml: &str) -> (Deployment, std::process::Output) {
    let d = Deployment::with_target(toml);
    let out = d.run(&["check"]);
    (d, out)
}

fn assert_config_error(out: &std::process::Output, file: &str, key: &str) {
    let all = text(out);
    assert_eq!(out.status.code(), Some(78), "{all}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.contains(file) && l.contains(&format!("`{key}`")))
        .unwrap_or_else(|| panic!("no error line naming {file} and `{key}`:\n{all}"));
    assert!(!line.trim().is_empty());
}

#[test]
fn shipped_example_configuration_passes_check() {
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/leadsync.toml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_leadsync"))
        .args(["--config"])
        .arg(&config)
        .arg("check")
        .env_remove("LEADSYNC_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("target csv-export (file): ok"));
}

#[test]
fn unknown_key_in_a_target() {
    let (_d, out) =
        broken_target("kind = \"file\"\n[connection]\npath = \"x.csv\"\n[limits]\nbatchsize = 5\n");
    assert_config_error(&out, "csv.toml", "limits.batchsize");
}

#[test]
fn unknown_key_in_a_connection() {
    let (_d, out) =
        broken_target("kind = \"file\"\n[connection]\npath = \"x.csv\"\nformt = \"csv\"\n");
    assert_config_error(&out, "csv.toml", "connection.formt");
}

#[test]
fn wrong_type() {
    let (_d, out) = broken_target(
        "kind = \"file\"\n[connection]\npath = \"x.csv\"\n[limits]\nconcurrency = \"two\"\n",
    );
    assert_config_error(&out, "csv.toml", "limits.concurrency");
}

#[test]
fn bad_cron() {
    let (_d, out) = broken_target(
        "kind = \"file\"\nschedule = \"every minute\"\n[connection]\npath = \"x.csv\"\n",
    );
    assert_config_error(&out, "csv.toml", "schedule");
}

#[test]
fn unknown_target_kind() {
    let (_d, out) = broken_target("kind = \"pigeon\"\n[connection]\n");
    assert_config_error(&out, "csv.toml", "kind");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("file"),
        "lists the known kinds"
    );
}

#[test]
fn bad_mapping_field() {
    let (_d, out) = broken_target(
        "kind = \"file\"\n[connection]\npath = \"x.csv\"\n[mapping.fields]\nEmail = \"e_mail\"\n",
    );
    assert_config_error(&out, "csv.toml", "mapping.fields.Email");
}

#[test]
fn broken_main_file() {
    let d = Deployment::new();
    std::fs::write(d.config(), "[ledger]\npath = 5\n").unwrap();
    let out = d.run(&["check"]);
    assert_config_error(&out, "leadsync.toml", "ledger.path");
    // Every command refuses a broken configuration the same way.
    let out = d.run(&["sync", "--once"]);
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
}

#[test]
fn missing_config_file() {
    let d = Deployment::new();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_leadsync"))
        .arg("--config")
        .arg(d.root().join("nope.toml"))
        .arg("check")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nope.toml"),
        "{}",
        text(&out)
    );
}

#[test]
fn packaged_configuration_passes_check() {
    // What the .deb installs under /etc/leadsync, checked as `run` (and `systemctl reload`'s
    // `check`) would.
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/etc/leadsync.toml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_leadsync"))
        .arg("--config")
        .arg(&config)
        .arg("check")
        .env_remove("LEADSYNC_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("target csv-export (file): ok"));
}

// ---------------------------------------------------------------------------------------
// [qualify] rules (docs/qualification.md)
// ---------------------------------------------------------------------------------------

const FILE_TARGET: &str = "kind = \"file\"\n[connection]\npath = \"x.csv\"\n";

#[test]
fn qualify_rule_naming_an_unknown_field() {
    let (_d, out) = broken_target(&format!(
        "{FILE_TARGET}[qualify.rating]\ncases = [\n  {{ when = \"has email\", value = \"hot\" }},\n  \
         {{ when = \"has emial and has company\", value = \"warm\" }},\n]\ndefault = \"cold\"\n"
    ));
    assert_config_error(&out, "csv.toml", "qualify.rating.cases[1].when");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown field `emial`"), "{}", text(&out));
}

#[test]
fn qualify_rule_with_a_syntax_error() {
    let (_d, out) = broken_target(&format!(
        "{FILE_TARGET}[qualify.complete]\nwhen = \"has email and (has phone or\"\n"
    ));
    assert_config_error(&out, "csv.toml", "qualify.complete.when");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("expected a condition, found the end"),
        "{}",
        text(&out)
    );
}

#[test]
fn qualify_rule_with_an_unknown_key() {
    let (_d, out) = broken_target(&format!(
        "{FILE_TARGET}[qualify.score]\nbase = 10\nadd = [{{ when = \"has phone\", pionts = 5 }}]\n"
    ));
    assert_config_error(&out, "csv.toml", "qualify.score.add[0].pionts");
}

#[test]
fn qualify_values_using_each_other() {
    let (_d, out) = broken_target(&format!(
        "{FILE_TARGET}[qualify.hot]\nwhen = \"warm and has phone\"\n\
         [qualify.warm]\nwhen = \"hot or has email\"\n"
    ));
    assert_config_error(&out, "csv.toml", "qualify.hot");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("`hot` uses itself through"),
        "{}",
        text(&out)
    );
}

#[test]
fn filter_naming_an_unknown_qualify_value() {
    let (_d, out) = broken_target(&format!(
        "{FILE_TARGET}[qualify.complete]\nwhen = \"has email and has company\"\n\
         [filter]\nwhen = \"complet\"\n"
    ));
    assert_config_error(&out, "csv.toml", "filter.when");
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("unknown field `complet` (did you mean `complete`?)"),
        "{}",
        text(&out)
    );
}

#[test]
fn mapping_naming_an_undeclared_qualify_value() {
    let (_d, out) = broken_target(&format!(
        "{FILE_TARGET}[mapping.fields]\nRating = \"rating\"\n"
    ));
    assert_config_error(&out, "csv.toml", "mapping.fields.Rating");
}
