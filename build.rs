// Rebuild when a migration is added: `sqlx::migrate!` embeds the folder at compile time.
// `--version` carries the git commit the binary was built from (`LEADSYNC_GIT_COMMIT` from the
// environment wins, for builds outside a checkout such as a source package).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-env-changed=LEADSYNC_GIT_COMMIT");
    let commit = std::env::var("LEADSYNC_GIT_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=LEADSYNC_GIT_COMMIT={}", commit.trim());
}

/// The short hash of HEAD, and where git keeps it so that a new commit rebuilds.
fn git_commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    if let Ok(head) = std::process::Command::new("git")
        .args(["rev-parse", "--git-path", "HEAD"])
        .output()
    {
        let head = String::from_utf8_lossy(&head.stdout).trim().to_string();
        println!("cargo:rerun-if-changed={head}");
        if let Ok(text) = std::fs::read_to_string(&head) {
            if let Some(r) = text.trim().strip_prefix("ref: ") {
                if let Ok(p) = std::process::Command::new("git")
                    .args(["rev-parse", "--git-path", r])
                    .output()
                {
                    println!(
                        "cargo:rerun-if-changed={}",
                        String::from_utf8_lossy(&p.stdout).trim()
                    );
                }
            }
        }
    }
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
