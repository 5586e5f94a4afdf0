//! `log_format = "auto"` and `$JOURNAL_STREAM`, through the real binary: the journal is used
//! only when the variable names fd 2 itself (device and inode); a variable inherited by a
//! process whose stderr goes elsewhere leaves the logs as JSON lines on stderr; and when
//! stderr is the journal but its socket cannot be opened, the logs stay JSON lines after one
//! line saying so.

mod common;
use common::{copy_dir, text, Deployment};

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Stdio;

const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// `<device>:<inode>` of `path`, as systemd writes `$JOURNAL_STREAM`.
fn device_and_inode(path: &Path) -> String {
    let meta = std::fs::metadata(path).expect("metadata");
    format!("{}:{}", meta.dev(), meta.ino())
}

/// A deployment with the example leads in its spool and `log_format = "auto"`.
fn deployment() -> Deployment {
    let d = Deployment::new();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/leads");
    copy_dir(&examples, &d.spool());
    d
}

/// Every non-empty line is a JSON log line; their messages.
fn json_messages(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}\n{stderr}"));
            assert!(v["level"].is_string(), "{l}");
            v["message"].as_str().unwrap_or_default().to_string()
        })
        .collect()
}

#[test]
fn journal_stream_naming_another_file_leaves_json_lines() {
    let d = deployment();
    // Inherited from a service, but this process's stderr is a pipe: not the journal.
    let out = d
        .command()
        .args(["sync", "--wait", "0s"])
        .env("LEADSYNC_TELEMETRY__LOG_FORMAT", "auto")
        .env("JOURNAL_STREAM", device_and_inode(&d.config()))
        .output()
        .expect("run leadsync");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let messages = json_messages(&stderr);
    assert!(messages.iter().any(|m| m == "pulled"), "{stderr}");
    assert!(
        !stderr.contains("journal"),
        "no journal, no word of it: {stderr}"
    );
}

#[test]
fn journal_stream_naming_stderr_is_believed() {
    let d = deployment();
    let log = d.root().join("stderr.log");
    let file = std::fs::File::create(&log).expect("log file");
    let out = d
        .command()
        .args(["sync", "--wait", "0s"])
        .env("LEADSYNC_TELEMETRY__LOG_FORMAT", "auto")
        .env("JOURNAL_STREAM", device_and_inode(&log))
        .stderr(Stdio::from(file))
        .output()
        .expect("run leadsync");
    let stderr = std::fs::read_to_string(&log).expect("read the log");
    assert_eq!(out.status.code(), Some(0), "{}\n{stderr}", text(&out));
    let reachable = std::os::unix::net::UnixDatagram::unbound()
        .and_then(|s| s.send_to(&[], JOURNAL_SOCKET))
        .is_ok();
    if reachable {
        // The lines went to the journal, none to the file.
        assert!(
            json_messages(&stderr).is_empty(),
            "logged to stderr: {stderr}"
        );
        return;
    }
    // No journal here: one line says so, the rest are the usual JSON lines.
    let messages = json_messages(&stderr);
    assert_eq!(
        messages.first().map(String::as_str),
        Some("stderr is the journal but its socket cannot be opened; logging JSON lines to stderr"),
        "{stderr}"
    );
    assert_eq!(
        messages.iter().filter(|m| m.contains("journal")).count(),
        1,
        "{stderr}"
    );
    assert!(messages.iter().any(|m| m == "pulled"), "{stderr}");
}

/// Set (to the file for its findings) only in the copy of this test binary that
/// [`stderr_on_the_journal_logs_natively_with_priority_and_fields`] starts in a private mount
/// namespace.
const FAKE_JOURNAL_OUT: &str = "LEADSYNC_TEST_FAKE_JOURNAL_OUT";

/// One journal entry in the native protocol (systemd.io/JOURNAL_NATIVE_PROTOCOL):
/// `NAME=value\n`, or `NAME\n` + 64-bit little-endian length + value + `\n`.
fn parse_entry(mut b: &[u8]) -> serde_json::Map<String, serde_json::Value> {
    let mut entry = serde_json::Map::new();
    while let Some(end) = b.iter().position(|c| *c == b'\n' || *c == b'=') {
        let name = String::from_utf8_lossy(&b[..end]).into_owned();
        let value: &[u8];
        if b[end] == b'=' {
            let rest = &b[end + 1..];
            let nl = rest.iter().position(|c| *c == b'\n').unwrap_or(rest.len());
            value = &rest[..nl];
            b = rest.get(nl + 1..).unwrap_or_default();
        } else {
            let len_bytes: [u8; 8] = b[end + 1..end + 9].try_into().expect("length");
            let len = u64::from_le_bytes(len_bytes) as usize;
            value = &b[end + 9..end + 9 + len];
            b = b.get(end + 10 + len..).unwrap_or_default();
        }
        entry.insert(name, String::from_utf8_lossy(value).into_owned().into());
    }
    entry
}

/// Inside the private namespace: a journal socket of our own at the real path, a sync whose
/// stderr `$JOURNAL_STREAM` names, and a failing command; what arrived is written out.
#[test]
fn fake_journal_in_a_private_run() {
    let Some(findings) = std::env::var_os(FAKE_JOURNAL_OUT) else {
        return; // Only meaningful inside the namespace.
    };
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs", "/run"])
        .status()
        .expect("mount");
    assert!(mounted.success(), "mount a private /run");
    std::fs::create_dir_all("/run/systemd/journal").expect("journal dir");
    let journal = std::os::unix::net::UnixDatagram::bind(JOURNAL_SOCKET).expect("bind");
    journal
        .set_read_timeout(Some(std::time::Duration::from_millis(500)))
        .expect("timeout");

    let d = Deployment::new();
    let mut spool = b"{\"UserDetails\": {\"Email\": \"seen.person@contoso.example\"}, \"LeadSource\": \"SPZA\"}\n".to_vec();
    spool.extend_from_slice(
        b"{\"UserDetails\": {\"Email\": \"hidden.p\xe9rson@contoso.example\"}}\n",
    );
    std::fs::write(d.spool().join("mixed.jsonl"), spool).expect("spool");
    let log = d.root().join("stderr.log");
    let run = |args: &[&str], ledger: Option<&str>| {
        let file = std::fs::File::create(&log).expect("log file");
        let mut c = d.command();
        c.args(args)
            .env("LEADSYNC_TELEMETRY__LOG_FORMAT", "auto")
            .env("JOURNAL_STREAM", device_and_inode(&log))
            .stderr(Stdio::from(file));
        if let Some(path) = ledger {
            c.env("LEADSYNC_LEDGER__PATH", path);
        }
        let out = c.output().expect("run leadsync");
        (
            out.status.code(),
            std::fs::read_to_string(&log).unwrap_or_default(),
        )
    };
    let (synced, sync_stderr) = run(&["sync", "--wait", "0s"], None);
    assert_eq!(synced, Some(0), "{sync_stderr}");
    let (failed, _) = run(&["status"], Some("/nonexistent/leadsync/ledger.db"));
    assert_eq!(failed, Some(1));

    let mut entries = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    while let Ok(n) = journal.recv(&mut buf) {
        if n > 0 {
            entries.push(serde_json::Value::Object(parse_entry(&buf[..n])));
        }
    }
    let report = serde_json::json!({"entries": entries, "sync_stderr": sync_stderr});
    std::fs::write(findings, report.to_string()).expect("write findings");
}

#[test]
fn stderr_on_the_journal_logs_natively_with_priority_and_fields() {
    let test = "stderr_on_the_journal_logs_natively_with_priority_and_fields";
    let namespace = ["--user", "--map-root-user", "--mount", "--"];
    let permitted = std::process::Command::new("unshare")
        .args(namespace)
        .arg("true")
        .output()
        .is_ok_and(|o| o.status.success());
    if !permitted {
        leadsync_fakes::announce_skip(&format!(
            "{test}: unshare --user --mount is not permitted here, so no private journal socket; \
             the JSON fallback is tested by journal_stream_naming_stderr_is_believed"
        ));
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let findings = dir.path().join("journal.json");
    let out = std::process::Command::new("unshare")
        .args(namespace)
        .arg(std::env::current_exe().expect("this test binary"))
        .args(["--exact", "fake_journal_in_a_private_run", "--nocapture"])
        .env(FAKE_JOURNAL_OUT, &findings)
        .output()
        .expect("run the helper");
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&findings).expect("findings")).expect("JSON");
    let entries = report["entries"].as_array().expect("entries");
    let entry = |message: &str| {
        entries
            .iter()
            .find(|e| e["MESSAGE"] == message)
            .unwrap_or_else(|| panic!("no journal entry {message:?}: {entries:#?}"))
    };

    // Nothing went to stderr: the journal had it all.
    assert_eq!(report["sync_stderr"], "", "{report}");
    let quarantined = entry("record quarantined");
    assert_eq!(quarantined["PRIORITY"], "4", "WARN is warning");
    assert_eq!(quarantined["SYSLOG_IDENTIFIER"], "leadsync");
    assert_eq!(quarantined["LEADSYNC_FILE"], "mixed.jsonl");
    assert_eq!(quarantined["LEADSYNC_AT"], "line 2");
    assert_eq!(
        quarantined["LEADSYNC_REASON"],
        "UserDetails.Email holds bytes that are not UTF-8"
    );
    assert_eq!(entry("pulled")["PRIORITY"], "5", "INFO is notice");
    let delivered = entry("delivered");
    assert_eq!(delivered["LEADSYNC_TARGET"], "csv");
    assert!(delivered["LEADSYNC_LEAD"]
        .as_str()
        .is_some_and(|l| l.starts_with("spool:")));
    // `journalctl -p err` finds the failure.
    let failed = entry("failed");
    assert_eq!(failed["PRIORITY"], "3", "ERROR is err");
    assert!(failed["LEADSYNC_ERROR"]
        .as_str()
        .is_some_and(|e| e.contains("no ledger at")));
    let all = serde_json::to_string(entries).expect("JSON");
    assert!(!all.contains("contoso.example"), "personal data: {all}");
}
