//! More broken configurations (beside `tests/config_errors.rs`), across the main file, the
//! sources and every connector's `[connection]`: each makes `leadsync check` exit 78 with an
//! error line naming the file and the key.

mod common;
use common::{text, Deployment};

/// (name, file the error is in, what the error line says about the key (the key in
/// backticks, or the TOML position), main file or None, target file or None)
type Case = (
    &'static str,
    &'static str,
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
);

const MAIN_OK: &str = r#"
[ledger]
path = "../state/ledger.db"
[sources.inbox]
kind = "spool"
dir = "../spool"
"#;

const CASES: &[Case] = &[
    // The main file.
    ("ledger lease not a duration", "leadsync.toml", "`ledger.lease`",
     Some("[ledger]\npath = \"../state/l.db\"\nlease = \"forever\"\n"), None),
    ("unknown log level", "leadsync.toml", "`telemetry.log_level`",
     Some("[ledger]\npath = \"../state/l.db\"\n[telemetry]\nlog_level = \"loud\"\n"), None),
    ("unknown source kind", "leadsync.toml", "`sources.inbox.kind`",
     Some("[ledger]\npath = \"../state/l.db\"\n[sources.inbox]\nkind = \"carrier-pigeon\"\n"), None),
    ("spool after", "leadsync.toml", "`sources.inbox.after`",
     Some("[ledger]\npath = \"../state/l.db\"\n[sources.inbox]\nkind = \"spool\"\ndir = \"../spool\"\nafter = \"delete\"\n"), None),
    ("source schedule", "leadsync.toml", "`sources.inbox.schedule`",
     Some("[ledger]\npath = \"../state/l.db\"\n[sources.inbox]\nkind = \"spool\"\ndir = \"../spool\"\nschedule = \"61 * * * * *\"\n"), None),
    ("admin listen", "leadsync.toml", "`admin.listen`",
     Some("[ledger]\npath = \"../state/l.db\"\n[admin]\nlisten = \"not an address\"\n"), None),
    ("targets dir missing", "leadsync.toml", "`targets_dir`",
     Some("targets_dir = \"no-such-folder\"\n[ledger]\npath = \"../state/l.db\"\n"), None),
    ("not TOML at all", "leadsync.toml", "line 1, column 8",
     Some("[ledger\npath = \n"), None),
    // Target settings every kind shares.
    ("retry min over max", "t.toml", "`retry.max_delay`",
     None, Some("kind = \"file\"\n[connection]\npath = \"x.csv\"\n[retry]\nmin_delay = \"10m\"\nmax_delay = \"1s\"\n")),
    ("unknown filter action", "t.toml", "`filter.actions[1]`",
     None, Some("kind = \"file\"\n[connection]\npath = \"x.csv\"\n[filter]\nactions = [\"INS\", \"BUY\"]\n")),
    ("idempotency scope", "t.toml", "`idempotency.scope`",
     None, Some("kind = \"file\"\n[connection]\npath = \"x.csv\"\n[idempotency]\nscope = \"global\"\n")),
    ("batch size zero", "t.toml", "`limits.batch_size`",
     None, Some("kind = \"file\"\n[connection]\npath = \"x.csv\"\n[limits]\nbatch_size = 0\n")),
    // https
    ("https without url", "t.toml", "key `connection`: missing field `url`",
     None, Some("kind = \"https\"\n[connection]\nbody = \"marketplace\"\n")),
    ("https url not a url", "t.toml", "`connection.url`",
     None, Some("kind = \"https\"\n[connection]\nurl = \"hooks.example.com/x\"\n")),
    ("https plain http", "t.toml", "`connection.url`",
     None, Some("kind = \"https\"\n[connection]\nurl = \"http://hooks.example.com/x\"\n")),
    ("https url secret file missing", "t.toml", "`connection.url`",
     None, Some("kind = \"https\"\n[connection]\nurl = { file = \"no-such-secret.txt\" }\n")),
    ("https token env unset", "t.toml", "`connection.auth`: environment variable LEADSYNC_TEST_SURELY_UNSET is not set",
     None, Some("kind = \"https\"\n[connection]\nurl = \"https://hooks.example.com/x\"\n[connection.auth]\ntype = \"bearer\"\ntoken = { env = \"LEADSYNC_TEST_SURELY_UNSET\" }\n")),
    ("https auth type", "t.toml", "`connection.auth.type`",
     None, Some("kind = \"https\"\n[connection]\nurl = \"https://hooks.example.com/x\"\n[connection.auth]\ntype = \"kerberos\"\n")),
    ("https batch over 100", "t.toml", "`limits.batch_size`",
     None, Some("kind = \"https\"\n[connection]\nurl = \"https://hooks.example.com/x\"\nbatch = true\n[limits]\nbatch_size = 500\n")),
    ("https ca file missing", "t.toml", "`connection.http`: ca_file",
     None, Some("kind = \"https\"\n[connection]\nurl = \"https://hooks.example.com/x\"\n[connection.http]\nca_file = \"no-such-ca.pem\"\n")),
    // salesforce
    ("salesforce without secret", "t.toml", "`connection.client_secret`",
     None, Some("kind = \"salesforce\"\n[connection]\nlogin_url = \"https://acme.my.salesforce.com\"\nclient_id = \"abc\"\n")),
    ("salesforce api version", "t.toml", "`connection.api_version`",
     None, Some("kind = \"salesforce\"\n[connection]\nlogin_url = \"https://acme.my.salesforce.com\"\nclient_id = \"abc\"\nclient_secret = \"s\"\napi_version = \"v12\"\n")),
    ("salesforce auth", "t.toml", "`connection.auth`",
     None, Some("kind = \"salesforce\"\n[connection]\nlogin_url = \"https://acme.my.salesforce.com\"\nclient_id = \"abc\"\nauth = \"password\"\n")),
    ("salesforce login url", "t.toml", "`connection.login_url`",
     None, Some("kind = \"salesforce\"\n[connection]\nlogin_url = \"acme\"\nclient_id = \"abc\"\nclient_secret = \"s\"\n")),
    // dynamics
    ("dynamics without tenant", "t.toml", "key `connection`: missing field `tenant_id`",
     None, Some("kind = \"dynamics\"\n[connection]\nurl = \"https://acme.crm.dynamics.com\"\nclient_id = \"abc\"\nclient_secret = \"s\"\n")),
    ("dynamics without credentials", "t.toml", "`connection.client_secret`",
     None, Some("kind = \"dynamics\"\n[connection]\nurl = \"https://acme.crm.dynamics.com\"\ntenant_id = \"t\"\nclient_id = \"abc\"\n")),
    ("dynamics mode", "t.toml", "`connection.mode`",
     None, Some("kind = \"dynamics\"\n[connection]\nurl = \"https://acme.crm.dynamics.com\"\ntenant_id = \"t\"\nclient_id = \"abc\"\nclient_secret = \"s\"\nmode = \"merge\"\n")),
    // azure table
    ("azure table name", "t.toml", "`connection.table`",
     None, Some("kind = \"azure_table\"\n[connection]\nconnection_string = \"UseDevelopmentStorage=true\"\ntable = \"1-bad\"\n")),
    ("azure partition_by", "t.toml", "`connection.partition_by`",
     None, Some("kind = \"azure_table\"\n[connection]\nconnection_string = \"UseDevelopmentStorage=true\"\ntable = \"Leads\"\npartition_by = \"weekday\"\n")),
    ("azure connection string", "t.toml", "`connection.connection_string`",
     None, Some("kind = \"azure_table\"\n[connection]\nconnection_string = \"AccountName=x\"\ntable = \"Leads\"\n")),
    // file
    ("file format", "t.toml", "`connection.format`",
     None, Some("kind = \"file\"\n[connection]\npath = \"x.csv\"\nformat = \"xlsx\"\n")),
];

fn run_case(case: &Case) -> Result<(), String> {
    let (name, file, key, main, target) = *case;
    let d = Deployment::new();
    std::fs::write(d.config(), main.unwrap_or(MAIN_OK)).unwrap();
    let targets = d.root().join("config/targets");
    std::fs::remove_file(targets.join("csv.toml")).unwrap();
    std::fs::write(
        targets.join("t.toml"),
        target.unwrap_or("kind = \"file\"\n[connection]\npath = \"x.csv\"\n"),
    )
    .unwrap();
    let out = d
        .command()
        .arg("check")
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("LEADSYNC_TEST_SURELY_UNSET")
        .output()
        .unwrap();
    let all = text(&out);
    if out.status.code() != Some(78) {
        return Err(format!("{name}: expected exit 78\n{all}"));
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let named = stderr.lines().any(|l| l.contains(file) && l.contains(key));
    if !named {
        return Err(format!(
            "{name}: no error line naming {file} and {key}\n{all}"
        ));
    }
    Ok(())
}

#[test]
fn broken_configurations_exit_78_naming_file_and_key() {
    let failures: Vec<String> = CASES.iter().filter_map(|c| run_case(c).err()).collect();
    eprintln!(
        "{} broken configurations checked ({} failed)",
        CASES.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
