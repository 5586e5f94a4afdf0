//! Helpers shared by the end-to-end tests: a throw-away deployment (config, spool, output)
//! in a temporary folder, a way to run the real binary against it, and the test PostgreSQL.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;

pub struct Deployment {
    pub dir: tempfile::TempDir,
}

impl Deployment {
    /// A deployment with a spool source in `move` mode and a CSV file target.
    pub fn new() -> Self {
        Self::with_target(
            r#"
kind = "file"
schedule = "*/1 * * * * *"
[connection]
path = "../../out/leads.csv"
format = "csv"
"#,
        )
    }

    pub fn with_target(target_toml: &str) -> Self {
        Self::with_sources(
            r#"
[sources.inbox]
kind = "spool"
dir = "../spool"
after = "move"
settle = "0s"
schedule = "*/1 * * * * *"
"#,
            target_toml,
        )
    }

    /// A deployment whose main file holds `sources_toml` after the ledger and telemetry
    /// settings, with one target file `targets/csv.toml`.
    pub fn with_sources(sources_toml: &str, target_toml: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("config/targets")).unwrap();
        std::fs::create_dir_all(root.join("spool")).unwrap();
        std::fs::write(
            root.join("config/leadsync.toml"),
            format!(
                r#"
[ledger]
path = "../state/ledger.db"

[telemetry]
log_format = "json"
log_level = "info"
{sources_toml}"#
            ),
        )
        .unwrap();
        std::fs::write(root.join("config/targets/csv.toml"), target_toml).unwrap();
        Deployment { dir }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }
    pub fn config(&self) -> PathBuf {
        self.root().join("config/leadsync.toml")
    }
    pub fn spool(&self) -> PathBuf {
        self.root().join("spool")
    }
    pub fn csv(&self) -> PathBuf {
        self.root().join("out/leads.csv")
    }

    pub fn command(&self) -> std::process::Command {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_leadsync"));
        c.arg("--config").arg(self.config());
        c.env_remove("LEADSYNC_CONFIG");
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("run leadsync")
    }

    /// Rows of the CSV output (header excluded), as maps of column -> value.
    pub fn csv_rows(&self) -> Vec<std::collections::HashMap<String, String>> {
        if !self.csv().exists() {
            return Vec::new();
        }
        let mut r = csv::Reader::from_path(self.csv()).unwrap();
        let headers = r.headers().unwrap().clone();
        r.records()
            .map(|rec| {
                let rec = rec.unwrap();
                headers
                    .iter()
                    .map(String::from)
                    .zip(rec.iter().map(String::from))
                    .collect()
            })
            .collect()
    }

    pub fn status_json(&self) -> serde_json::Value {
        let out = self.run(&["status", "--json"]);
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status --json is JSON")
    }
}

/// A TCP port free on 127.0.0.1 now (another process could take it before it is bound).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Poll `f` every 100 ms until it is true, for at most `limit` (a liveness bound, not a
/// performance assertion).
pub fn eventually(limit: std::time::Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if f() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("timed out waiting for: {what}");
}

pub fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `../shared/fixtures`, when present. Absent on a user's fresh clone: the caller skips
/// loudly, unless `LEADSYNC_REQUIRE_SERVICES=1` (CI), where absence is a failure.
///
/// `LEADSYNC_SHARED_FIXTURES` overrides where they are looked for; set to `none` it hides
/// them, so CI can run the suite once exactly as a newcomer's clone sees it (no design folder
/// beside the checkout), whatever `LEADSYNC_REQUIRE_SERVICES` says.
pub fn shared_fixtures() -> Option<PathBuf> {
    let default = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures");
    let p = match std::env::var_os("LEADSYNC_SHARED_FIXTURES") {
        Some(v) if v == "none" => {
            leadsync_fakes::announce_skip(
                "LEADSYNC_SHARED_FIXTURES=none hides ../shared/fixtures (as on a newcomer's clone); \
                 conformance with them not tested",
            );
            return None;
        }
        Some(v) => PathBuf::from(v),
        None => default,
    };
    if p.is_dir() {
        return Some(p);
    }
    if std::env::var("LEADSYNC_REQUIRE_SERVICES").as_deref() == Ok("1") {
        panic!("{} is missing and LEADSYNC_REQUIRE_SERVICES=1", p.display());
    }
    leadsync_fakes::announce_skip(&format!(
        "{} not found beside the checkout; conformance with the shared fixtures not tested",
        p.display()
    ));
    None
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// The daemon under test: its log read as it comes (a full pipe would stall it), and the
/// process killed if the test fails before stopping it.
pub struct Daemon {
    child: Option<std::process::Child>,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Daemon {
    pub fn spawn(mut cmd: std::process::Command) -> Daemon {
        let mut child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut stderr = child.stderr.take().unwrap();
        let sink = std::sync::Arc::clone(&log);
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = std::io::Read::read(&mut stderr, &mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Daemon {
            child: Some(child),
            log,
        }
    }
    pub fn id(&self) -> String {
        self.child
            .as_ref()
            .map(|c| c.id().to_string())
            .unwrap_or_default()
    }
    /// Its log so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
    /// SIGKILL it and wait for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    /// Wait for it to exit; its whole log.
    pub fn wait_with_output(mut self) -> String {
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        let log = self.log.lock().unwrap().clone();
        log
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The test PostgreSQL (`LEADSYNC_TEST_PG_URL` to change it).
pub fn pg_url() -> String {
    std::env::var("LEADSYNC_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

/// Drop a test's PostgreSQL schema, from a `Drop` (so on its own thread and runtime, whether
/// or not the caller is inside one); failures are ignored: the schema is throw-away.
pub fn drop_pg_schema(schema: String) {
    let _ = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            use sqlx::{Connection, Executor};
            if let Ok(mut conn) = sqlx::PgConnection::connect(&pg_url()).await {
                let _ = conn
                    .execute(format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE").as_str())
                    .await;
            }
        });
    })
    .join();
}

/// A connection, or `None` with a loud message (a failure under LEADSYNC_REQUIRE_SERVICES=1).
pub async fn pg_or_skip(test: &str) -> Option<sqlx::PgConnection> {
    use sqlx::Connection;
    let conn = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        sqlx::PgConnection::connect(&pg_url()),
    )
    .await
    .map_err(|_| "no answer within 5 s".to_string())
    .and_then(|r| r.map_err(|e| e.to_string()));
    match conn {
        Ok(c) => Some(c),
        Err(e) if std::env::var("LEADSYNC_REQUIRE_SERVICES").as_deref() == Ok("1") => {
            panic!("PostgreSQL unreachable and LEADSYNC_REQUIRE_SERVICES=1: {e}")
        }
        Err(e) => {
            leadsync_fakes::announce_skip(&format!(
                "{test}: PostgreSQL is unreachable ({e}); \
                 set LEADSYNC_REQUIRE_SERVICES=1 to make this a failure"
            ));
            None
        }
    }
}
