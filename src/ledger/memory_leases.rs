//! The delivery leases of the SQLite ledger, held in the memory of the process that owns it.
//!
//! A SQLite ledger belongs to one process (its lock file), and the leases a dead process
//! left were void at reopen anyway: no other process ever needs to see one. Held here, a
//! claim is a plain read on a connection of its own, beside SQLite's single writer, instead
//! of a write transaction that leases row by row and waits for its commit; and renewing the
//! leases of a slow request writes nothing. The rules are the contract's (see
//! [`super::Ledger::claim`], [`super::Ledger::record`], [`super::Ledger::renew_leases`]),
//! which PostgreSQL keeps in its rows:
//!
//! - a lease makes its delivery unclaimable until it runs out; an expired one is free for
//!   any owner to take over;
//! - `Retry`, `Release` and `Dead` apply only for the lease's holder (or when nobody holds
//!   it); `Delivered` applies whoever holds it;
//! - an outcome ends its lease once it is committed, never before (see `SqliteLedger::record`
//!   for why that order keeps a claim from reading a delivery twice).

use std::collections::HashMap;

/// One delivery's lease: its target (claims and `next_due` are per target), who holds it
/// and until when (unix milliseconds).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Lease {
    target: String,
    owner: String,
    until: i64,
}

/// Every delivery lease of this process, by delivery id.
#[derive(Debug, Default)]
pub(super) struct MemoryLeases {
    held: HashMap<i64, Lease>,
}

impl MemoryLeases {
    /// Forget `target`'s leases that ran out by `now` (they are free to be claimed), and give
    /// the ids of the others, which a claim at `now` must skip, as a JSON array.
    pub(super) fn busy_at(&mut self, target: &str, now: i64) -> String {
        self.held
            .retain(|_, lease| lease.target != target || lease.until > now);
        let busy: Vec<i64> = self
            .held
            .iter()
            .filter(|(_, lease)| lease.target == target)
            .map(|(id, _)| *id)
            .collect();
        serde_json::Value::from(busy).to_string()
    }

    /// Lease `ids` of `target` to `owner` until `until`.
    pub(super) fn grant(&mut self, target: &str, ids: &[i64], owner: &str, until: i64) {
        for id in ids {
            let lease = Lease {
                target: target.to_owned(),
                owner: owner.to_owned(),
                until,
            };
            self.held.insert(*id, lease);
        }
    }

    /// Whether `owner` may decide `Retry`, `Release` or `Dead` for `id`: nobody holds its
    /// lease, or `owner` does.
    pub(super) fn may_decide(&self, id: i64, owner: &str) -> bool {
        self.held.get(&id).is_none_or(|lease| lease.owner == owner)
    }

    /// End the leases of `ids` (their outcomes are committed).
    pub(super) fn end(&mut self, ids: impl IntoIterator<Item = i64>) {
        for id in ids {
            self.held.remove(&id);
        }
    }

    /// Extend to `until` (never shorten) the leases `owner` holds among `ids`; returns how
    /// many it holds. A lease is held only while its delivery is pending (an outcome ends
    /// it), so these are the owner's pending ones.
    pub(super) fn renew(&mut self, ids: &[i64], owner: &str, until: i64) -> u64 {
        let mut renewed = 0;
        for id in ids {
            if let Some(lease) = self.held.get_mut(id).filter(|l| l.owner == owner) {
                lease.until = lease.until.max(until);
                renewed += 1;
            }
        }
        renewed
    }

    /// `target`'s leases as a JSON array of `[delivery id, until]`, for `next_due`: a leased
    /// delivery is due again when its lease runs out.
    pub(super) fn held_json(&self, target: &str) -> String {
        let held: Vec<(i64, i64)> = self
            .held
            .iter()
            .filter(|(_, lease)| lease.target == target)
            .map(|(id, lease)| (*id, lease.until))
            .collect();
        serde_json::to_string(&held).unwrap_or_else(|_| "[]".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ids a claim at `now` must skip, sorted (the map has no order).
    fn busy(leases: &mut MemoryLeases, target: &str, now: i64) -> Vec<i64> {
        let mut ids: Vec<i64> = serde_json::from_str(&leases.busy_at(target, now)).expect("JSON");
        ids.sort_unstable();
        ids
    }

    #[test]
    fn a_lease_holds_until_it_runs_out_then_anyone_takes_it_over() {
        let mut leases = MemoryLeases::default();
        leases.grant("crm", &[1, 2], "a", 100);
        leases.grant("other", &[3], "a", 100);
        assert_eq!(busy(&mut leases, "crm", 99), [1, 2]);
        assert!(leases.may_decide(1, "a"));
        assert!(!leases.may_decide(1, "b"));
        assert!(leases.may_decide(9, "b"), "nobody holds it");

        assert!(busy(&mut leases, "crm", 100).is_empty());
        assert!(leases.may_decide(1, "b"), "the expired lease was dropped");
        assert_eq!(
            busy(&mut leases, "other", 99),
            [3],
            "other targets keep theirs"
        );
    }

    #[test]
    fn renewing_extends_only_the_holders_leases_and_never_shortens() {
        let mut leases = MemoryLeases::default();
        leases.grant("crm", &[1, 2], "a", 100);
        leases.grant("crm", &[3], "b", 100);
        assert_eq!(leases.renew(&[1, 2, 3, 4], "a", 500), 2);
        assert_eq!(leases.renew(&[1, 2], "a", 50), 2);
        assert_eq!(busy(&mut leases, "crm", 200), [1, 2], "b's ran out");
        leases.end([1]);
        assert_eq!(leases.renew(&[1, 2], "a", 600), 1);
        assert_eq!(leases.held_json("crm"), "[[2,600]]");
    }
}
