//! `check [--connect]`: the configuration is valid (it was loaded to get here); with
//! `--connect`, each source and target is asked whether its credentials and settings work.

use super::{EXIT_OK, EXIT_RUNTIME};
use crate::wiring::{self, Loaded, WiringError};

pub(super) async fn check(loaded: &Loaded, connect: bool) -> Result<u8, WiringError> {
    let s = &loaded.settings;
    println!("configuration {} is valid", s.config_path.display());
    println!("  ledger: {}", s.ledger.location.describe());
    for src in &s.sources {
        println!("  source {}: schedule {}", src.name, src.schedule);
    }
    if loaded.targets.is_empty() {
        println!("  warning: no enabled target: leads will be staged but go nowhere");
    }
    let mut failed = false;
    if connect {
        for source in wiring::build_sources(s)?.iter_mut() {
            match source.check_connect().await {
                Ok(lines) => {
                    println!("  source {}: ok", source.name());
                    for v in lines {
                        println!("    - {v}");
                    }
                }
                Err(e) => {
                    failed = true;
                    println!("  source {}: FAILED: {e}", source.name());
                }
            }
        }
    }
    for t in &loaded.targets {
        match t.connector.check(connect).await {
            Ok(r) => {
                println!("  target {} ({}): ok", t.name, t.connector.kind());
                for v in r.verified {
                    println!("    - {v}");
                }
            }
            Err(e) => {
                failed = true;
                println!("  target {} ({}): FAILED: {e}", t.name, t.connector.kind());
            }
        }
    }
    Ok(if failed { EXIT_RUNTIME } else { EXIT_OK })
}
