//! Hostile input: the corpus in `tests/data/hostile/` (small files, committed) plus big ones
//! made at test time (100,000-deep nesting, 10 MB lines and files). Each record is accepted,
//! tolerated (accepted with a warning, its oddity kept or cleaned) or quarantined with a
//! reason naming the file and line, never a panic; a running daemon fed all of it keeps
//! running and delivers the good leads that come after. Oversized fields reach every CRM fake
//! cut to the field's limit, never as a service error.

mod common;
use common::{text, Deployment};
use leadsync_fakes::azure_table_faults::AzureTableFaults;
use leadsync_fakes::dataverse::FakeDataverse;
use leadsync_fakes::https_receiver::{HttpsReceiver, ReceiverOptions};
use leadsync_fakes::salesforce::{SalesforceFake, SalesforceFakeConfig};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

const DEPTH: usize = 100_000;
const TEN_MB: usize = 10 * 1024 * 1024;

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/hostile")
}

/// Write the generated part of the corpus into `dir`; returns the file names.
fn generate_big(dir: &Path) -> Vec<String> {
    let mut files = Vec::new();
    let mut put = |name: &str, bytes: Vec<u8>| {
        std::fs::write(dir.join(name), bytes).unwrap();
        files.push(name.to_string());
    };
    let good = |tag: &str| {
        serde_json::json!({
            "UserDetails": {"FirstName": "Hostile", "LastName": tag, "Email": format!("{tag}@example.com")},
            "LeadSource": "AzureMarketplace", "ActionCode": "INS", "OfferTitle": "Contoso CRM",
            "Description": format!("marker:{tag}")
        })
        .to_string()
    };
    let arrays = format!("{}{}", "[".repeat(DEPTH), "]".repeat(DEPTH));
    let objects = format!("{}1{}", "{\"a\":".repeat(DEPTH), "}".repeat(DEPTH));
    // 100,000 nested arrays and objects: as a line, inside a field, and as a .json file.
    put(
        "gen-deep.jsonl",
        format!(
            "{arrays}\n{objects}\n{{\"UserDetails\": {arrays}, \"LeadSource\": \"AzureMarketplace\"}}\n{}\n",
            good("deep-after")
        )
        .into_bytes(),
    );
    put("gen-deep-array.json", format!("[{arrays}]").into_bytes());
    put("gen-deep-object.json", objects.clone().into_bytes());
    // CustomerInfo is a JSON *string* in the Table shape: deeply nested inside the string.
    put(
        "gen-deep-customerinfo.jsonl",
        format!(
            "{}\n",
            serde_json::json!({
                "PartitionKey": "p", "RowKey": "deep-ci", "LeadSource": "AzureMarketplace-INS|pub.offer",
                "CustomerInfo": arrays, "Description": "marker:deep-customerinfo"
            })
        )
        .into_bytes(),
    );
    // A 10 MB line between two good ones, and a 10 MB line with no final newline.
    let huge = format!(
        "{{\"UserDetails\": {{\"FirstName\": \"Huge\"}}, \"Description\": \"{}\"}}",
        "A".repeat(TEN_MB)
    );
    put(
        "gen-huge-line.jsonl",
        format!("{}\n{huge}\n{}\n", good("huge-before"), good("huge-after")).into_bytes(),
    );
    put("gen-huge-unterminated.jsonl", huge.clone().into_bytes());
    // A 10 MB .json record, and a 10 MB line of no JSON at all.
    put("gen-huge.json", huge.into_bytes());
    put("gen-huge-garbage.jsonl", vec![b'x'; TEN_MB]);
    files
}

/// What must become of each file: quarantined records, and the markers of the leads kept.
fn expectations() -> BTreeMap<&'static str, (usize, Vec<&'static str>)> {
    let mut m = BTreeMap::new();
    let mut e = |f, q, ok: &[&'static str]| {
        m.insert(f, (q, ok.to_vec()));
    };
    e("broken-json.jsonl", 6, &["broken-1", "broken-2"]);
    e("truncated.json", 1, &[]);
    e("array-mixed.json", 4, &["array-1", "array-2"]);
    e(
        "wrong-types.jsonl",
        6,
        &["wrong-types-1", "wrong-types-2", "wrong-types-3"],
    );
    e("numbers-for-strings.jsonl", 0, &["numbers-1", "numbers-2"]);
    e("duplicate-keys.jsonl", 0, &["duplicate-keys"]);
    e("bom.json", 0, &["bom-json"]);
    e("bom.jsonl", 0, &["bom-jsonl-1", "bom-jsonl-2"]);
    e("crlf.jsonl", 0, &["crlf-1", "crlf-2"]);
    e("nul-bytes.jsonl", 2, &["nul-1"]);
    // A bad first name is quarantined; a bad description is delivered with U+FFFD.
    e("invalid-utf8.jsonl", 2, &["invalid-utf8-description"]);
    e("emoji-rtl.jsonl", 0, &["emoji", "rtl"]);
    e("injection.jsonl", 0, &["sql", "csv"]);
    e("empty-records.jsonl", 2, &[]);
    e("gen-deep.jsonl", 3, &["deep-after"]);
    e("gen-deep-array.json", 1, &[]);
    e("gen-deep-object.json", 1, &[]);
    e("gen-deep-customerinfo.jsonl", 0, &["deep-customerinfo"]);
    e("gen-huge-line.jsonl", 1, &["huge-before", "huge-after"]);
    e("gen-huge-unterminated.jsonl", 1, &[]);
    e("gen-huge.json", 1, &[]);
    e("gen-huge-garbage.jsonl", 1, &[]);
    m
}

fn fill_spool(spool: &Path) -> Vec<String> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(corpus_dir()).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".json") || name.ends_with(".jsonl") {
            std::fs::copy(&p, spool.join(&name)).unwrap();
            names.push(name);
        }
    }
    names.extend(generate_big(spool));
    names.sort();
    names
}

/// Quarantined records per file, from `rejected/<file>.reason`.
fn quarantined(spool: &Path) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    let dir = spool.join("rejected");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return out;
    };
    for e in entries {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if let Some(file) = name.strip_suffix(".reason") {
            let text = std::fs::read_to_string(&p).unwrap();
            for line in text.lines() {
                assert!(
                    line.starts_with(&format!("{file}: ")),
                    "a reason names its file: {line}"
                );
                assert!(
                    line.contains(": line ") || line.contains(": element "),
                    "a reason names the line or element: {line}"
                );
            }
            out.insert(file.to_string(), text.lines().count());
        }
    }
    out
}

fn markers(rows: &[std::collections::HashMap<String, String>]) -> Vec<String> {
    let mut m: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            r["Description"]
                .strip_prefix("marker:")
                .map(|s| s.split_whitespace().next().unwrap_or("").to_string())
        })
        .collect();
    m.sort();
    m
}

#[test]
fn hostile_corpus_is_accepted_tolerated_or_quarantined_never_a_panic() {
    let d = Deployment::new();
    let names = fill_spool(&d.spool());
    let expect = expectations();
    assert_eq!(
        names,
        expect.keys().map(|s| s.to_string()).collect::<Vec<_>>(),
        "every corpus file has an expectation"
    );
    let out = d.run(&["sync", "--once", "--wait", "0s"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(!all.contains("panicked"), "{all}");
    assert!(all.contains("record quarantined"), "quarantines are logged");

    let q = quarantined(&d.spool());
    let rows = d.csv_rows();
    let got = markers(&rows);
    let mut want: Vec<String> = Vec::new();
    let mut total_q = 0;
    let mut want_q = BTreeMap::new();
    for (file, (nq, ok)) in &expect {
        want_q.insert(file.to_string(), *nq);
        total_q += nq;
        want.extend(ok.iter().map(|s| s.to_string()));
    }
    let got_q: BTreeMap<String, usize> = expect
        .keys()
        .map(|f| (f.to_string(), q.get(*f).copied().unwrap_or(0)))
        .collect();
    assert_eq!(got_q, want_q, "quarantined records per file");
    want.sort();
    assert_eq!(got, want, "the leads kept");
    assert_eq!(rows.len(), want.len(), "every row is one of the good leads");
    let status = d.status_json();
    assert_eq!(status["leads"], want.len() as u64);
    assert_eq!(status["targets"][0]["delivered"], want.len() as u64);
    // Nothing is left behind in the spool: every file went to processed/ or rejected/.
    let left: Vec<_> = std::fs::read_dir(d.spool())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .collect();
    assert!(left.is_empty(), "files left unread: {left:?}");

    // What "tolerated" means, cell by cell.
    let row = |tag: &str| {
        rows.iter()
            .find(|r| r["Description"].starts_with(&format!("marker:{tag}")))
            .unwrap_or_else(|| panic!("no row for {tag}"))
    };
    assert_eq!(row("numbers-1")["First Name"], "123");
    assert_eq!(row("numbers-1")["Phone"], "16175555555");
    assert_eq!(
        row("duplicate-keys")["Email"],
        "dup@example.com",
        "the last duplicate wins"
    );
    assert_eq!(
        row("emoji")["First Name"],
        "\u{1F600}\u{1F469}\u{200D}\u{1F4BB}"
    );
    assert_eq!(row("rtl")["First Name"], "\u{0645}\u{062d}\u{0645}\u{062f}");
    assert_eq!(row("sql")["First Name"], "Robert'); DROP TABLE leads;--");
    assert!(
        row("csv")["First Name"].starts_with("'="),
        "formula neutralised"
    );
    assert!(row("csv")["Last Name"].starts_with("'+"));
    assert!(row("csv")["Company"].starts_with("'@"));
    assert!(row("csv")["Title"].starts_with("'-"));
    assert!(!row("nul-1")["Description"].contains('\0'), "NUL stripped");
    assert_eq!(
        row("invalid-utf8-description")["Description"],
        "marker:invalid-utf8-description caf\u{FFFD} cr\u{FFFD}me"
    );
    assert!(
        rows.iter()
            .all(|r| r.values().all(|v| !v.contains('\u{FFFD}'))
                || r["Description"].contains("invalid-utf8-description")),
        "no other cell holds a replacement character"
    );
    eprintln!(
        "hostile corpus: {} files ({} generated, up to {} MB and {DEPTH} levels deep), \
         {} leads kept, {total_q} records quarantined, no panic",
        names.len(),
        names.iter().filter(|n| n.starts_with("gen-")).count(),
        TEN_MB / 1024 / 1024,
        want.len()
    );
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn good_line(tag: &str) -> String {
    format!(
        "{}\n",
        serde_json::json!({
            "UserDetails": {"FirstName": "Good", "LastName": tag, "Email": format!("{tag}@example.com")},
            "LeadSource": "AzureMarketplace", "ActionCode": "INS", "OfferTitle": "Contoso CRM",
            "Description": format!("marker:{tag}")
        })
    )
}

#[test]
fn a_running_daemon_fed_the_corpus_keeps_running_and_delivering() {
    let d = Deployment::new();
    let log = std::fs::File::create(d.root().join("daemon.log")).unwrap();
    let mut child = d
        .command()
        .arg("run")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let has = |d: &Deployment, tag: &str| markers(&d.csv_rows()).iter().any(|m| m == tag);
    std::fs::write(d.spool().join("before.jsonl"), good_line("daemon-before")).unwrap();
    wait_for("the first good lead", Duration::from_secs(30), || {
        has(&d, "daemon-before")
    });

    let names = fill_spool(&d.spool());
    let spool = d.spool();
    wait_for("the corpus to be read", Duration::from_secs(60), || {
        std::fs::read_dir(&spool)
            .unwrap()
            .filter_map(|e| e.ok())
            .all(|e| !e.path().is_file())
    });
    std::fs::write(d.spool().join("after.jsonl"), good_line("daemon-after")).unwrap();
    wait_for(
        "a good lead after the corpus",
        Duration::from_secs(30),
        || has(&d, "daemon-after"),
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "the daemon is still running"
    );
    child.kill().unwrap();
    child.wait().unwrap();

    let logs = std::fs::read_to_string(d.root().join("daemon.log")).unwrap();
    assert!(!logs.contains("panicked"), "{logs}");
    let expect = expectations();
    let kept: usize = expect.values().map(|(_, ok)| ok.len()).sum();
    assert_eq!(d.csv_rows().len(), kept + 2);
    assert_eq!(
        quarantined(&d.spool()).values().sum::<usize>(),
        expect.values().map(|(q, _)| q).sum::<usize>()
    );
    eprintln!(
        "daemon fed {} hostile files: still running, {} leads delivered",
        names.len(),
        kept + 2
    );
}

/// A lead with every text field far over every CRM's column length.
fn oversized_line(tag: &str, email: &str) -> String {
    format!(
        "{}\n",
        serde_json::json!({
            "UserDetails": {
                "FirstName": "F".repeat(5_000), "LastName": format!("{tag}{}", "L".repeat(5_000)),
                "Email": email, "Phone": "1".repeat(500), "Country": "C".repeat(500),
                "Company": "\u{1F3E2}".repeat(5_000), "Title": "T".repeat(5_000)
            },
            "LeadSource": "AzureMarketplace", "ActionCode": "INS",
            "OfferTitle": "O".repeat(5_000),
            "Description": format!("marker:{tag} {}", "D\u{05D0}".repeat(100_000))
        })
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_fields_are_cut_to_each_crms_limits_never_refused() {
    let sf = SalesforceFake::start(SalesforceFakeConfig::default())
        .await
        .unwrap();
    let dv = FakeDataverse::start().await;
    let rx = HttpsReceiver::start(ReceiverOptions::http()).await.unwrap();
    let at = AzureTableFaults::start().await.unwrap();

    let d = Deployment::with_target(&format!(
        "kind = \"salesforce\"\n[connection]\nlogin_url = \"{}\"\nclient_id = \"{}\"\nclient_secret = {{ env = \"OV_SF\" }}\n",
        sf.base_url(),
        sf.config().client_id
    ));
    let targets = d.root().join("config/targets");
    std::fs::rename(targets.join("csv.toml"), targets.join("salesforce.toml")).unwrap();
    std::fs::write(
        targets.join("dynamics.toml"),
        format!(
            "kind = \"dynamics\"\n[connection]\nurl = \"{u}\"\nauthority = \"{u}\"\ntenant_id = \"{t}\"\nclient_id = \"leadsync-app\"\nclient_secret = {{ env = \"OV_DV\" }}\n",
            u = dv.base_url(),
            t = dv.tenant()
        ),
    )
    .unwrap();
    std::fs::write(
        targets.join("https.toml"),
        format!(
            "kind = \"https\"\n[connection]\nurl = \"{}\"\nallow_http = true\n",
            rx.url("/hook")
        ),
    )
    .unwrap();
    std::fs::write(
        targets.join("table.toml"),
        "kind = \"azure_table\"\n[connection]\nconnection_string = { env = \"OV_AT\" }\ntable = \"Leads\"\n",
    )
    .unwrap();
    std::fs::write(
        d.spool().join("oversized.jsonl"),
        oversized_line("big", "big@example.com"),
    )
    .unwrap();

    let mut cmd = d.command();
    cmd.args(["sync", "--once", "--wait", "10s"])
        .env("OV_SF", &sf.config().client_secret)
        .env("OV_DV", "s3cret")
        .env("OV_AT", at.connection_string());
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(
        logs.contains("value truncated to the field's limit"),
        "{logs}"
    );

    let status: serde_json::Value = {
        let mut cmd = d.command();
        cmd.args(["status", "--json"])
            .env("OV_SF", &sf.config().client_secret)
            .env("OV_DV", "s3cret")
            .env("OV_AT", at.connection_string());
        let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    for t in status["targets"].as_array().unwrap() {
        assert_eq!(t["delivered"], 1, "{status}");
        assert_eq!(t["dead"], 0, "{status}");
    }
    assert_eq!(status["targets"].as_array().unwrap().len(), 4, "{status}");

    // Salesforce: within the Lead field lengths (the fake refuses STRING_TOO_LONG).
    let rec = &sf.records()[0];
    for (field, max) in [
        ("FirstName", 40),
        ("LastName", 80),
        ("Company", 255),
        ("Title", 128),
        ("Phone", 40),
    ] {
        let n = rec.get_str(field).unwrap_or_default().chars().count();
        assert!(n > 0 && n <= max, "Salesforce {field}: {n} chars");
    }
    // Dataverse: within the lead column lengths.
    let lead = &dv.leads()[0];
    for (col, max) in [
        ("firstname", 50),
        ("lastname", 50),
        ("jobtitle", 100),
        ("companyname", 100),
    ] {
        let n = lead[col].as_str().unwrap_or_default().chars().count();
        assert!(n > 0 && n <= max, "Dataverse {col}: {n} chars");
    }
    // HTTPS: the marketplace body, whole (an endpoint has no column lengths).
    assert_eq!(rx.stored().len(), 1);
    // Azure Table: every string within 64 KiB (32 K UTF-16 units), the entity within 1 MiB.
    let entities = at.entities("Leads");
    assert_eq!(entities.len(), 1);
    let (_, props) = entities.iter().next().unwrap();
    for (k, v) in props {
        if let Some(s) = v.as_str() {
            assert!(s.encode_utf16().count() <= 32 * 1024, "Azure Table {k}");
        }
    }
}
