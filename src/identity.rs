//! This process's identity among the leadsync instances sharing a ledger: its lease owner
//! name `host:pid:nonce`, and what its heartbeat tells `status` (host, pid, version, start
//! time).
//!
//! The host name comes from gethostname(2), not from `/proc/sys/kernel/hostname`, which the
//! shipped unit's `ProcSubset=pid` hides. The nonce (six random hex digits, drawn once per
//! process) keeps apart two processes that share a host name and a pid (two machines
//! cloned from one image, two containers whose service is pid 1), so no two live processes
//! share an owner name and neither can take the other's leases for its own. Everything is
//! computed once per process; `localhost` stands in for the host only when the system gives
//! no name.
//!
//! It owns the owner name's format: [`host_and_pid`] reads it back for lease owners that
//! never sent a heartbeat. It must not touch the ledger itself.

use chrono::{DateTime, Utc};
use std::sync::OnceLock;

/// The version every heartbeat carries.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Who this process is, fixed for its lifetime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The lease owner name, `host:pid:nonce`.
    pub id: String,
    pub host: String,
    pub pid: u32,
    pub version: &'static str,
    /// When the identity was first asked for: the start of the command, in practice.
    pub started_at: DateTime<Utc>,
}

/// This process's identity, computed on first use.
pub fn current() -> &'static Identity {
    static IDENTITY: OnceLock<Identity> = OnceLock::new();
    IDENTITY.get_or_init(|| Identity::new(&host_name(), std::process::id(), random_nonce()))
}

impl Identity {
    fn new(host: &str, pid: u32, nonce: u32) -> Identity {
        Identity {
            id: format!("{host}:{pid}:{:06x}", nonce & 0xff_ffff),
            host: host.to_string(),
            pid,
            version: VERSION,
            started_at: Utc::now(),
        }
    }
}

/// The host name from gethostname(2), made safe to sit in `host:pid:nonce`.
fn host_name() -> String {
    usable_host_name(&gethostname::gethostname().to_string_lossy())
}

/// `name` without the separator or blanks; `localhost` when nothing is left.
fn usable_host_name(name: &str) -> String {
    let name: String = name
        .trim()
        .chars()
        .map(|c| {
            if c == ':' || c.is_whitespace() {
                '-'
            } else {
                c
            }
        })
        .collect();
    if name.is_empty() {
        "localhost".to_string()
    } else {
        name
    }
}

fn random_nonce() -> u32 {
    rand::random::<u32>()
}

/// The host and pid in a lease owner name: `host:pid:nonce`, or `host:pid` as written by
/// versions before the nonce. Anything else is all host, pid 0.
pub fn host_and_pid(owner: &str) -> (String, u32) {
    match owner.split(':').collect::<Vec<_>>().as_slice() {
        [host, pid] | [host, pid, _] => ((*host).to_string(), pid.parse().unwrap_or(0)),
        _ => (owner.to_string(), 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_is_host_pid_and_six_hex_digits() {
        let a = Identity::new("db-1", 4242, 0x00ab_cdef);
        assert_eq!(a.id, "db-1:4242:abcdef");
        assert_eq!(
            Identity::new("db-1", 4242, 0xff00_0001).id,
            "db-1:4242:000001"
        );
        assert_eq!((a.host.as_str(), a.pid, a.version), ("db-1", 4242, VERSION));
        assert_eq!(host_and_pid(&a.id), ("db-1".to_string(), 4242));
    }

    #[test]
    fn current_is_computed_once_and_names_this_host() {
        let id = current();
        assert!(std::ptr::eq(id, current()));
        assert_eq!(id.pid, std::process::id());
        let host = gethostname::gethostname().to_string_lossy().into_owned();
        if !host.trim().is_empty() {
            assert_eq!(id.host, usable_host_name(&host));
            assert!(id.id.starts_with(&format!("{}:{}:", id.host, id.pid)));
        }
        assert_eq!(id.version, VERSION);
    }

    #[test]
    fn unusable_host_names() {
        assert_eq!(usable_host_name(""), "localhost");
        assert_eq!(usable_host_name(" \n"), "localhost");
        assert_eq!(usable_host_name("a:b c\n"), "a-b-c");
    }

    #[test]
    fn owner_names_old_and_new() {
        assert_eq!(host_and_pid("h:12"), ("h".to_string(), 12));
        assert_eq!(host_and_pid("h:12:0a0b0c"), ("h".to_string(), 12));
        assert_eq!(host_and_pid("sync"), ("sync".to_string(), 0));
        assert_eq!(host_and_pid("h:x"), ("h".to_string(), 0));
        assert_eq!(host_and_pid("a:b:c:d"), ("a:b:c:d".to_string(), 0));
    }
}
