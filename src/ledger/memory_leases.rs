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

/// A delivery's place in its target's claim order: (`next_attempt_at`, `id`).
pub(super) type QueuePlace = (i64, i64);

/// The longest a claim cursor stands before a claim reads from the queue's head again, so
/// that a delivery that came due behind it waits at most this long (milliseconds).
pub(super) const CURSOR_TTL_MS: i64 = 1_000;

/// One delivery's lease: its target (claims and `next_due` are per target), who holds it,
/// until when (unix milliseconds) and the delivery's place in the claim order.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Lease {
    target: String,
    owner: String,
    until: i64,
    place: QueuePlace,
}

/// Where a target's next claim reads on: after `after`, moved on by the claims since one
/// read from the queue's head at `anchored_at`.
#[derive(Debug, Clone, Copy)]
struct ClaimCursor {
    after: QueuePlace,
    anchored_at: i64,
}

/// Every delivery lease of this process, by delivery id, and each target's claim cursor.
#[derive(Debug, Default)]
pub(super) struct MemoryLeases {
    held: HashMap<i64, Lease>,
    cursors: HashMap<String, ClaimCursor>,
}

impl MemoryLeases {
    /// Forget `target`'s leases that ran out by `now` (they are free to be claimed), and say
    /// where its claim at `now` may read on from (`None`: from the queue's head, which an
    /// expired lease, a cursor older than [`CURSOR_TTL_MS`] or none at all calls for).
    pub(super) fn resume_point(&mut self, target: &str, now: i64) -> Option<QueuePlace> {
        let before = self.held.len();
        self.held
            .retain(|_, lease| lease.target != target || lease.until > now);
        let expired = self.held.len() != before;
        match self.cursors.get(target).copied() {
            Some(c) if !expired && now >= c.anchored_at && now < c.anchored_at + CURSOR_TTL_MS => {
                Some(c.after)
            }
            _ => {
                self.cursors.remove(target);
                None
            }
        }
    }

    /// The deliveries a claim of `target` must skip, as a JSON array of ids: its leases
    /// (reading on from `after`, only those past it) and `also`.
    pub(super) fn busy(&self, target: &str, after: Option<QueuePlace>, also: &[i64]) -> String {
        let busy: Vec<i64> = self
            .held
            .iter()
            .filter(|(_, lease)| lease.target == target && after.is_none_or(|a| lease.place > a))
            .map(|(id, _)| *id)
            .chain(also.iter().copied())
            .collect();
        serde_json::Value::from(busy).to_string()
    }

    /// Where `target`'s claim stopped: `last` is the furthest place it read; `from_head` when
    /// it read from the queue's head, which anchors the cursor anew (`None` then: nothing is
    /// due, no cursor).
    pub(super) fn claimed_up_to(
        &mut self,
        target: &str,
        last: Option<QueuePlace>,
        from_head: bool,
        now: i64,
    ) {
        match (last, from_head, self.cursors.get_mut(target)) {
            (Some(after), true, _) => {
                let cursor = ClaimCursor {
                    after,
                    anchored_at: now,
                };
                self.cursors.insert(target.to_owned(), cursor);
            }
            (None, true, _) => {
                self.cursors.remove(target);
            }
            (Some(after), false, Some(cursor)) => cursor.after = cursor.after.max(after),
            (_, false, _) => {}
        }
    }

    /// Forget every target's cursor: a delivery went back to the queue, maybe behind one.
    pub(super) fn forget_cursors(&mut self) {
        self.cursors.clear();
    }

    /// Lease the `claimed` deliveries (id, place) of `target` to `owner` until `until`.
    pub(super) fn grant(
        &mut self,
        target: &str,
        claimed: &[(i64, QueuePlace)],
        owner: &str,
        until: i64,
    ) {
        for (id, place) in claimed {
            let lease = Lease {
                target: target.to_owned(),
                owner: owner.to_owned(),
                until,
                place: *place,
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
        let after = leases.resume_point(target, now);
        let mut ids: Vec<i64> =
            serde_json::from_str(&leases.busy(target, after, &[])).expect("JSON");
        ids.sort_unstable();
        ids
    }

    /// Leases on `ids`, each at place (`id`, `id`).
    fn grant(leases: &mut MemoryLeases, target: &str, ids: &[i64], owner: &str, until: i64) {
        let claimed: Vec<(i64, QueuePlace)> = ids.iter().map(|id| (*id, (*id, *id))).collect();
        leases.grant(target, &claimed, owner, until);
    }

    #[test]
    fn a_lease_holds_until_it_runs_out_then_anyone_takes_it_over() {
        let mut leases = MemoryLeases::default();
        grant(&mut leases, "crm", &[1, 2], "a", 100);
        grant(&mut leases, "other", &[3], "a", 100);
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
        grant(&mut leases, "crm", &[1, 2], "a", 100);
        grant(&mut leases, "crm", &[3], "b", 100);
        assert_eq!(leases.renew(&[1, 2, 3, 4], "a", 500), 2);
        assert_eq!(leases.renew(&[1, 2], "a", 50), 2);
        assert_eq!(busy(&mut leases, "crm", 200), [1, 2], "b's ran out");
        leases.end([1]);
        assert_eq!(leases.renew(&[1, 2], "a", 600), 1);
        assert_eq!(leases.held_json("crm"), "[[2,600]]");
    }

    #[test]
    fn a_cursor_reads_on_until_it_runs_out_a_lease_expires_or_one_is_requeued() {
        let mut leases = MemoryLeases::default();
        assert_eq!(
            leases.resume_point("crm", 0),
            None,
            "the first claim reads from the head"
        );
        grant(&mut leases, "crm", &[1, 2], "a", 60_000);
        leases.claimed_up_to("crm", Some((2, 2)), true, 0);
        assert_eq!(leases.resume_point("crm", 10), Some((2, 2)));
        assert_eq!(
            leases.busy("crm", Some((2, 2)), &[7]),
            "[7]",
            "leases behind are not read"
        );
        grant(&mut leases, "crm", &[3], "a", 60_000);
        leases.claimed_up_to("crm", Some((3, 3)), false, 20);
        assert_eq!(leases.resume_point("crm", 30), Some((3, 3)));
        assert_eq!(
            leases.resume_point("other", 30),
            None,
            "cursors are per target"
        );

        // A claim from the head that stopped short of leases further on skips them later.
        leases.claimed_up_to("crm", Some((1, 1)), true, 40);
        let mut ahead: Vec<i64> =
            serde_json::from_str(&leases.busy("crm", Some((1, 1)), &[])).expect("JSON");
        ahead.sort_unstable();
        assert_eq!(ahead, [2, 3]);

        // It stands for CURSOR_TTL_MS after its anchor, and not when the clock went back.
        assert_eq!(
            leases.resume_point("crm", 40 + CURSOR_TTL_MS - 1),
            Some((1, 1))
        );
        assert_eq!(leases.resume_point("crm", 40 + CURSOR_TTL_MS), None);
        leases.claimed_up_to("crm", Some((3, 3)), true, 5_000);
        assert_eq!(leases.resume_point("crm", 4_999), None);

        leases.claimed_up_to("crm", Some((3, 3)), true, 5_000);
        leases.forget_cursors();
        assert_eq!(
            leases.resume_point("crm", 5_001),
            None,
            "a lease went back to the queue"
        );

        leases.claimed_up_to("crm", Some((3, 3)), true, 5_000);
        assert_eq!(
            leases.resume_point("crm", 60_000),
            None,
            "the leases ran out"
        );
        leases.claimed_up_to("crm", None, true, 60_001);
        assert_eq!(
            leases.resume_point("crm", 60_002),
            None,
            "a claim from the head found nothing"
        );
    }
}
