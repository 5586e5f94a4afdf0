//! How the inbox logs the requests its gate refuses: at most one `WARN` line a minute for
//! each kind of refusal, naming how many such requests there were since the last one; the
//! rest at `debug`. An endpoint on the internet meets scanners, and a marketplace offer
//! left with an old secret retries every lead: one line per request would fill the journal.
//! (Every refusal is still counted by `leadsync_inbox_requests_total{code}`.)
//!
//! A line names the peer's network (its /24, or /48 for IPv6), never its address: the
//! address of someone probing the endpoint from home is personal data, and the network is
//! enough to tell a marketplace's or a partner's range from a scanner's and to extend
//! `allow_from`.
//!
//! It owns only this counting and the network shown; the gate decides, and `mod.rs` writes
//! the lines.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a kind of refusal may reach the log at `WARN`.
pub const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(60);

/// A kind of request the gate refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// From a network not in `allow_from`.
    Network,
    /// A wrong or missing secret.
    Secret,
}

impl Refusal {
    /// What the log line says about it.
    pub fn describe(self) -> &'static str {
        match self {
            Refusal::Network => "request from a network not in allow_from; refused",
            Refusal::Secret => "wrong or missing secret; answered 404",
        }
    }
}

/// The network a peer's address is in, as the log shows it: the /24 of an IPv4 address
/// (an IPv4-mapped IPv6 one included), the /48 of an IPv6 one.
pub fn network_of(peer: IpAddr) -> ipnet::IpNet {
    let peer = peer.to_canonical();
    let prefix = if peer.is_ipv4() { 24 } else { 48 };
    ipnet::IpNet::new(peer, prefix).map_or(ipnet::IpNet::from(peer), |net| net.trunc())
}

#[derive(Debug, Default, Clone, Copy)]
struct Window {
    /// When the last `WARN` line of this kind was written.
    logged: Option<Instant>,
    /// Refusals of this kind since then.
    since: u64,
}

/// The refusals counted since each kind's last `WARN` line.
#[derive(Debug)]
pub struct RefusalLog {
    every: Duration,
    windows: Mutex<[Window; 2]>,
}

impl RefusalLog {
    pub fn new(every: Duration) -> Self {
        RefusalLog {
            every,
            windows: Mutex::new([Window::default(); 2]),
        }
    }

    /// Count one refusal of `kind` at `now`. `Some(n)`: write a `WARN` line for it, `n`
    /// being the refusals of this kind since the last line, this one included; `None`:
    /// `debug` only.
    pub fn note(&self, kind: Refusal, now: Instant) -> Option<u64> {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let w = &mut windows[kind as usize];
        w.since += 1;
        let due = w
            .logged
            .is_none_or(|at| now.saturating_duration_since(at) >= self.every);
        if !due {
            return None;
        }
        let n = w.since;
        *w = Window {
            logged: Some(now),
            since: 0,
        };
        Some(n)
    }
}

impl Default for RefusalLog {
    fn default() -> Self {
        RefusalLog::new(REFUSAL_LOG_EVERY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_shown_as_its_network_only() {
        let shown = |ip: &str| network_of(ip.parse().expect("address")).to_string();
        assert_eq!(shown("203.0.113.77"), "203.0.113.0/24");
        assert_eq!(shown("::ffff:203.0.113.77"), "203.0.113.0/24");
        assert_eq!(shown("2001:db8:1234:5678::9"), "2001:db8:1234::/48");
    }

    #[test]
    fn one_warn_line_a_minute_per_kind_counting_the_rest() {
        let log = RefusalLog::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(log.note(Refusal::Secret, t0), Some(1));
        for s in 1..=30 {
            assert_eq!(log.note(Refusal::Secret, t0 + Duration::from_secs(s)), None);
        }
        // The other kind has a window of its own.
        assert_eq!(log.note(Refusal::Network, t0), Some(1));
        // A minute after the last line: the 30 in between and this one.
        assert_eq!(
            log.note(Refusal::Secret, t0 + Duration::from_secs(60)),
            Some(31)
        );
        assert_eq!(
            log.note(Refusal::Secret, t0 + Duration::from_secs(61)),
            None
        );
    }
}
