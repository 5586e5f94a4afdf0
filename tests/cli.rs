//! Command-line conventions: usage errors exit 64 (EX_USAGE; 2 means "a delivery ended
//! dead"), `sync` needs no `--once`, `--version` names the commit, and the completion scripts
//! and the manual page are printed without a configuration.

mod common;
use common::{text, Deployment};

fn leadsync() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_leadsync"));
    c.env_remove("LEADSYNC_CONFIG");
    c
}

#[test]
fn usage_errors_exit_64_and_help_exits_0() {
    for args in [
        &["bogus"][..],
        &["status", "--nope"],
        &["sync", "--wait", "soon"],
    ] {
        let out = leadsync().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(64), "{args:?}: {}", text(&out));
    }
    let out = leadsync().arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn version_names_the_commit() {
    let out = leadsync().arg("--version").output().unwrap();
    let v = String::from_utf8_lossy(&out.stdout);
    assert!(
        v.starts_with(&format!("leadsync {} (", env!("CARGO_PKG_VERSION"))),
        "{v}"
    );
    assert!(!v.contains("()"), "{v}");
}

#[test]
fn sync_without_once_runs_one_cycle() {
    let d = Deployment::new();
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/leads");
    common::copy_dir(&examples, &d.spool());
    let out = d.run(&["sync"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!d.csv_rows().is_empty(), "{}", text(&out));
}

#[test]
fn completions_and_the_manual_need_no_configuration() {
    for shell in ["bash", "zsh", "fish"] {
        let out = leadsync()
            .args([
                "--config",
                "/nonexistent/leadsync.toml",
                "completions",
                shell,
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{shell}: {}", text(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains("dead-letters"));
    }
    let out = leadsync().arg("man").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(page.contains(".TH leadsync 1"), "{page}");
}
