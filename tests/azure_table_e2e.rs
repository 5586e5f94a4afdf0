//! The Azure Table source and target end to end: the real binary against Azurite.
//!
//! The staging table is seeded exactly as the marketplace writes it (the entities of
//! `../shared/fixtures/leads/table-entities.jsonl` when present, `CustomerInfo` a JSON
//! string; generated ones otherwise); leadsync pulls it and delivers every lead to a second
//! table (azure_table target) and to a JSONL file. Skips loudly when Azurite is not on
//! 127.0.0.1:10002, fails then when LEADSYNC_REQUIRE_SERVICES=1 (CI). Each test uses its
//! own tables.
#![cfg(feature = "azure-table")]

mod common;

use common::text;
use leadsync_azure_table::{BatchOp, Query, SharedKeyScheme, TableClient, TableSas};
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const AZURITE: &str = "127.0.0.1:10002";
const DEV: &str = "UseDevelopmentStorage=true";
const WRONG_KEY: &str = "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;\
     AccountKey=d3Jvbmcga2V5IHdyb25nIGtleQ==;TableEndpoint=http://127.0.0.1:10002/devstoreaccount1";

fn azurite_up() -> bool {
    let up =
        std::net::TcpStream::connect_timeout(&AZURITE.parse().unwrap(), Duration::from_secs(1))
            .is_ok();
    if !up {
        if std::env::var("LEADSYNC_REQUIRE_SERVICES").as_deref() == Ok("1") {
            panic!("Azurite is not listening on {AZURITE} and LEADSYNC_REQUIRE_SERVICES=1");
        }
        leadsync_fakes::announce_skip(&format!(
            "Azurite is not listening on {AZURITE}; Azure Table e2e not tested"
        ));
    }
    up
}

fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}{}x{nanos}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn client() -> TableClient {
    leadsync_azure_table::client_from_connection_string(
        DEV,
        SharedKeyScheme::SharedKey,
        &leadsync_core::http::HttpSettings::default(),
        Path::new("."),
    )
    .unwrap()
}

/// Every entity of `table` (empty when it does not exist).
fn entities(table: &str) -> Vec<Map<String, Value>> {
    rt().block_on(async {
        let c = client();
        let mut out = Vec::new();
        let mut next = None;
        loop {
            let page = match c.query_page(table, &Query::default(), next.as_ref()).await {
                Ok(p) => p,
                Err(e) if e.is_table_not_found() => return out,
                Err(e) => panic!("{e}"),
            };
            out.extend(page.entities);
            match page.next {
                Some(n) => next = Some(n),
                None => return out,
            }
        }
    })
}

/// The marketplace's entities: the shared fixtures when present, else generated ones.
fn marketplace_entities() -> Vec<Map<String, Value>> {
    let from_fixtures = common::shared_fixtures().map(|dir| {
        std::fs::read_to_string(dir.join("leads/table-entities.jsonl"))
            .unwrap()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let mut e: Map<String, Value> = serde_json::from_str(l).unwrap();
                // The service assigns Timestamp itself.
                e.remove("Timestamp");
                e
            })
            .collect()
    });
    from_fixtures.unwrap_or_else(|| (0..40).map(|i| generated(i, "11:2F1:2F2026")).collect())
}

fn generated(i: usize, pk: &str) -> Map<String, Value> {
    let info = json!({"FirstName": format!("Gen{i}"), "LastName": "Lee",
                      "Email": format!("gen{i}@contoso.example"), "Company": "Contoso"});
    json!({
        "PartitionKey": pk,
        "RowKey": format!("{i:08}-0c5c-7fd0-a6a3-a4506513270e"),
        "LeadSource": "SPZA-PLT|contoso.crm-offer",
        "ActionCode": "PLT",
        "CreatedTime": "11/01/2026 08:00:00 AM",
        "CustomerInfo": info.to_string(),
        "Description": "Campaigns: ",
        "OfferDisplayName": "Contoso CRM",
    })
    .as_object()
    .unwrap()
    .clone()
}

/// Write `rows` into `table` (created when missing), as the marketplace does: one insert
/// each, or transactions of 100 per partition for big seeds.
fn seed(table: &str, rows: &[Map<String, Value>]) {
    rt().block_on(async {
        let c = client();
        c.create_table(table).await.unwrap();
        if rows.len() <= 100 {
            for r in rows {
                c.insert_entity(table, r).await.unwrap();
            }
            return;
        }
        let mut by_pk: Vec<(String, Vec<BatchOp>)> = Vec::new();
        for r in rows {
            let pk = r["PartitionKey"].as_str().unwrap().to_string();
            let op = BatchOp {
                row_key: r["RowKey"].as_str().unwrap().to_string(),
                entity: r.clone(),
            };
            match by_pk.iter_mut().find(|(p, _)| *p == pk) {
                Some((_, ops)) => ops.push(op),
                None => by_pk.push((pk, vec![op])),
            }
        }
        for (pk, ops) in by_pk {
            for chunk in ops.chunks(100) {
                c.submit_batch(table, &pk, chunk).await.unwrap();
            }
        }
    });
}

fn drop_tables(tables: &[&str]) {
    rt().block_on(async {
        for t in tables {
            let _ = client().delete_table(t).await;
        }
    });
}

/// A deployment: the staging table as source, a second table and a JSONL file as targets.
struct Deployment {
    dir: tempfile::TempDir,
    source_conn: String,
    target_conn: String,
}

impl Deployment {
    fn new(staging: &str, target_table: &str, source_conn: &str, target_conn: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("config/targets")).unwrap();
        std::fs::write(
            root.join("config/leadsync.toml"),
            format!(
                r#"
[ledger]
path = "../state/ledger.db"

[telemetry]
log_format = "json"
log_level = "info"

[sources.marketplace]
kind = "azure_table"
connection = {{ env = "LEADSYNC_TEST_SOURCE_CONN" }}
table = "{staging}"
overlap = "5m"
page_size = 1000
schedule = "*/1 * * * * *"
"#
            ),
        )
        .unwrap();
        std::fs::write(
            root.join("config/targets/table.toml"),
            format!(
                r#"
kind = "azure_table"
schedule = "*/1 * * * * *"
[connection]
connection_string = {{ env = "LEADSYNC_TEST_TARGET_CONN" }}
table = "{target_table}"
[retry]
min_delay = "1s"
max_delay = "2s"
"#
            ),
        )
        .unwrap();
        std::fs::write(
            root.join("config/targets/file.toml"),
            r#"
kind = "file"
schedule = "*/1 * * * * *"
[connection]
path = "../../out/leads.jsonl"
format = "jsonl"
"#,
        )
        .unwrap();
        Deployment {
            dir,
            source_conn: source_conn.to_string(),
            target_conn: target_conn.to_string(),
        }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn command(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_leadsync"));
        c.arg("--config")
            .arg(self.root().join("config/leadsync.toml"))
            .env_remove("LEADSYNC_CONFIG")
            .env("LEADSYNC_TEST_SOURCE_CONN", &self.source_conn)
            .env("LEADSYNC_TEST_TARGET_CONN", &self.target_conn);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().unwrap()
    }

    fn file_rows(&self) -> Vec<Value> {
        let p: PathBuf = self.root().join("out/leads.jsonl");
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn status(&self) -> Value {
        let out = self.run(&["status", "--json"]);
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

fn delivered(status: &Value, target: &str) -> u64 {
    status["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["target"] == target)
        .map(|t| t["delivered"].as_u64().unwrap())
        .unwrap_or(0)
}

#[test]
fn the_staging_table_reaches_a_second_table_and_a_file_once() {
    if !azurite_up() {
        return;
    }
    let staging = unique("MarketplaceLeads");
    let target = unique("CrmLeads");
    let rows = marketplace_entities();
    seed(&staging, &rows);
    // Configured in lower case, as the marketplace docs sometimes show it.
    let d = Deployment::new(&staging.to_lowercase(), &target, DEV, DEV);

    let out = d.run(&["check", "--connect"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("source marketplace: ok"), "{stdout}");
    assert!(stdout.contains("readable"), "{stdout}");

    let out = d.run(&["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let n = rows.len();
    let written = entities(&target);
    assert_eq!(written.len(), n, "{}", text(&out));
    assert_eq!(d.file_rows().len(), n);
    // Every marketplace entity arrived, read through its CustomerInfo JSON string.
    for r in &rows {
        let info: Value = serde_json::from_str(r["CustomerInfo"].as_str().unwrap()).unwrap();
        if let Some(email) = info
            .get("Email")
            .and_then(|e| e.as_str())
            .filter(|e| !e.is_empty())
        {
            assert!(
                written
                    .iter()
                    .any(|w| w.get("Email").and_then(|e| e.as_str()) == Some(email)),
                "no entity with the e-mail of {}",
                r["RowKey"]
            );
        }
        let id = format!(
            "azure-table:devstoreaccount1/{}/{}/{}",
            staging.to_lowercase(),
            r["PartitionKey"].as_str().unwrap(),
            r["RowKey"].as_str().unwrap()
        );
        assert!(
            written.iter().any(|w| w["LeadId"] == id.as_str()),
            "no entity for lead {id}"
        );
    }
    assert!(written.iter().all(|w| w["PartitionKey"] == "leads"));
    assert!(written
        .iter()
        .all(|w| w["RowKey"].as_str().unwrap().len() == 32));
    let status = d.status();
    assert_eq!(delivered(&status, "table"), n as u64);
    assert_eq!(delivered(&status, "file"), n as u64);

    // Re-running adds nothing anywhere.
    let out = d.run(&["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("staged 0 new lead(s)"),
        "{}",
        text(&out)
    );
    assert_eq!(entities(&target).len(), n);
    assert_eq!(d.file_rows().len(), n);
    drop_tables(&[&staging, &target]);
}

#[test]
fn entities_added_while_the_daemon_runs_arrive_on_the_next_poll() {
    if !azurite_up() {
        return;
    }
    let staging = unique("Staging");
    let target = unique("Delivered");
    seed(
        &staging,
        &(0..3)
            .map(|i| generated(i, "1:2F1:2F2026"))
            .collect::<Vec<_>>(),
    );
    let d = Deployment::new(&staging, &target, DEV, DEV);
    let log = std::fs::File::create(d.root().join("daemon.log")).unwrap();
    let mut child = d
        .command()
        .arg("run")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let wait_for = |count: usize| {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if entities(&target).len() >= count && d.file_rows().len() >= count {
                return true;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        false
    };
    let first = wait_for(3);
    // New leads while it runs, in another partition.
    seed(
        &staging,
        &(3..5)
            .map(|i| generated(i, "1:2F2:2F2026"))
            .collect::<Vec<_>>(),
    );
    let second = first && wait_for(5);
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let start = Instant::now();
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        if start.elapsed() > Duration::from_secs(40) {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = std::fs::read_to_string(d.root().join("daemon.log")).unwrap_or_default();
    assert!(first, "the first 3 leads never arrived:\n{log}");
    assert!(second, "the 2 leads added later never arrived:\n{log}");
    assert_eq!(
        code,
        Some(0),
        "daemon did not stop cleanly on SIGTERM:\n{log}"
    );
    assert_eq!(entities(&target).len(), 5);
    assert_eq!(d.file_rows().len(), 5);
    drop_tables(&[&staging, &target]);
}

#[test]
fn more_than_a_thousand_entities_across_partitions_are_paged_through() {
    if !azurite_up() {
        return;
    }
    let staging = unique("Big");
    let target = unique("BigOut");
    let rows: Vec<_> = (0..1_100)
        .map(|i| {
            generated(
                i,
                ["10:2F1:2F2026", "10:2F2:2F2026", "10:2F3:2F2026"][i % 3],
            )
        })
        .collect();
    seed(&staging, &rows);
    let d = Deployment::new(&staging, &target, DEV, DEV);
    let out = d.run(&["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("staged 1100 new lead(s)"),
        "{}",
        text(&out)
    );
    assert_eq!(entities(&target).len(), 1_100);
    assert_eq!(d.file_rows().len(), 1_100);
    drop_tables(&[&staging, &target]);
}

#[test]
fn a_sas_reads_the_staging_table() {
    if !azurite_up() {
        return;
    }
    let staging = unique("SasStaging");
    let target = unique("SasOut");
    seed(
        &staging,
        &(0..4).map(|i| generated(i, "p")).collect::<Vec<_>>(),
    );
    let key =
        leadsync_azure_table::AccountKey::from_base64(leadsync_azure_table::conn::DEV_ACCOUNT_KEY)
            .unwrap();
    let sas = TableSas {
        table: staging.clone(),
        permissions: "r".into(),
        expiry: (chrono::Utc::now() + chrono::Duration::hours(1))
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string(),
        version: "2019-02-02".into(),
        ..Default::default()
    }
    .token("devstoreaccount1", &key);
    let conn = format!(
        "TableEndpoint=http://127.0.0.1:10002/devstoreaccount1;SharedAccessSignature={sas}"
    );
    let d = Deployment::new(&staging, &target, &conn, DEV);
    let out = d.run(&["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(entities(&target).len(), 4);
    drop_tables(&[&staging, &target]);
}

#[test]
fn a_wrong_account_key_is_a_clear_error_naming_the_target_or_source() {
    if !azurite_up() {
        return;
    }
    let staging = unique("WrongKey");
    let target = unique("WrongKeyOut");
    seed(
        &staging,
        &(0..2).map(|i| generated(i, "p")).collect::<Vec<_>>(),
    );

    // The target's key is wrong: leads stay pending, the log names the target and why.
    let d = Deployment::new(&staging, &target, DEV, WRONG_KEY);
    let out = d.run(&["check", "--connect"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("target table (azure_table): FAILED")
            && stdout.contains("refused the credentials"),
        "{}",
        text(&out)
    );
    let out = d.run(&["sync", "--once", "--wait", "0s"]);
    assert_eq!(out.status.code(), Some(75), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.lines().any(|l| l.contains("AuthorizationFailure")
            && l.contains("\"target_name\":\"table\"")
            && l.contains("refused the credentials")),
        "{}",
        text(&out)
    );
    assert_eq!(delivered(&d.status(), "file"), 2);
    assert!(entities(&target).is_empty());

    // The source's key is wrong: the pull fails with a message naming the source.
    let d = Deployment::new(&staging, &target, WRONG_KEY, DEV);
    let out = d.run(&["check", "--connect"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("source marketplace: FAILED"),
        "{}",
        text(&out)
    );
    let out = d.run(&["sync", "--once", "--wait", "0s"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("marketplace") && stderr.contains("refused the credentials"),
        "{}",
        text(&out)
    );
    drop_tables(&[&staging, &target]);
}

#[test]
fn a_missing_staging_table_means_no_leads_yet() {
    if !azurite_up() {
        return;
    }
    let d = Deployment::new(&unique("NotYet"), &unique("NotYetOut"), DEV, DEV);
    let out = d.run(&["sync", "--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("staged 0 new lead(s)"),
        "{}",
        text(&out)
    );
}

#[test]
fn example_configs_load_through_the_registry() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/examples");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("targets")).unwrap();
    std::fs::write(
        dir.path().join("leadsync.toml"),
        "[ledger]\npath = \"ledger.db\"\n",
    )
    .unwrap();
    std::fs::copy(
        examples.join("targets/azure_table.toml"),
        dir.path().join("targets/azure_table.toml"),
    )
    .unwrap();
    std::env::set_var("LEADSYNC_AZURE_TABLE_CONNECTION", DEV);
    let s = leadsync::config::load_with_env(
        &dir.path().join("leadsync.toml"),
        &leadsync::registry::known_kinds(),
        Vec::new(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let t = leadsync::registry::build_target(&s.targets[0], Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(t.connector.kind(), "azure_table");
    assert_eq!(t.batch_size, 100);

    // The source example, with its targets folder pointed at an empty one.
    let empty = tempfile::tempdir().unwrap();
    let s = leadsync::config::load_with_env(
        &examples.join("leadsync-azure.toml"),
        &leadsync::registry::known_kinds(),
        vec![(
            "LEADSYNC_TARGETS_DIR".to_string(),
            empty.path().display().to_string(),
        )],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    match &s.sources[0].kind {
        leadsync::config::SourceKind::AzureTable(a) => {
            assert_eq!(a.table, "MarketplaceLeads");
            assert_eq!(a.overlap, Duration::from_secs(300));
        }
        other => panic!("{other:?}"),
    }
}
