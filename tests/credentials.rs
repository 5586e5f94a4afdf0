//! Secrets given as systemd credentials (`{ credential = "NAME" }`, what the README
//! recommends) are resolved only where a connector is built: outside the unit, the operator
//! commands that need only the ledger work, plain `check` notes the unreadable credential, and
//! `check --connect` (which must contact the CRM) says what is missing.

mod common;
use common::{text, Deployment};

const TARGET: &str = r#"kind = "dynamics"
[connection]
url = "https://acme.crm.dynamics.com"
tenant_id = "t"
client_id = "abc"
client_secret = { credential = "dv-secret" }
"#;

fn outside_the_unit(d: &Deployment, args: &[&str]) -> std::process::Output {
    d.command()
        .args(args)
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .unwrap()
}

#[test]
fn operator_commands_need_only_the_ledger() {
    // A ledger with leads in it, then the target's secret becomes a systemd credential.
    let d = Deployment::new();
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/leads");
    common::copy_dir(&examples, &d.spool());
    let out = d.run(&["sync"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    std::fs::write(d.root().join("config/targets/csv.toml"), TARGET).unwrap();
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["trace", "spool:nope"],
        &["dead-letters", "list", "--json"],
        &["dead-letters", "list"],
        &["dead-letters", "retry"],
        &["forget", "--email", "ann@contoso.example"],
        &["replay", "--target", "csv", "--since", "2026-11-01"],
    ] {
        let out = outside_the_unit(&d, args);
        // `trace` of an unknown lead says so with exit 1; nothing may exit 78.
        let expected = if args[0] == "trace" { 1 } else { 0 };
        assert_eq!(
            out.status.code(),
            Some(expected),
            "{args:?}: {}",
            text(&out)
        );
    }
}

#[test]
fn check_notes_an_unreadable_credential_and_check_connect_names_it() {
    let d = Deployment::with_target(TARGET);
    let out = outside_the_unit(&d, &["check"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(
            "note: target csv: credential dv-secret not readable here (loaded by systemd at start)"
        ),
        "{stdout}"
    );
    if std::path::Path::new(leadsync_core::secret_ref::SERVICE_CREDENTIALS).exists() {
        return; // a machine running the service: --connect would read its folder
    }
    let out = outside_the_unit(&d, &["check", "--connect"]);
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("key `connection.client_secret`") && stderr.contains("dv-secret"),
        "{stderr}"
    );
}

#[test]
fn check_connect_says_which_credentials_folder_it_used() {
    let d =
        Deployment::with_target("kind = \"file\"\n[connection]\npath = \"../../out/leads.csv\"\n");
    let creds = tempfile::tempdir().unwrap();
    let out = d
        .command()
        .args(["check", "--connect"])
        .env("CREDENTIALS_DIRECTORY", creds.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "credentials: {} ($CREDENTIALS_DIRECTORY)",
            creds.path().display()
        )),
        "{stdout}"
    );
}
