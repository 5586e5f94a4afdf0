//! Keeping writes to one CRM record in order: CRMs whose upsert looks a record up by a key
//! (Marketo by e-mail, HubSpot by a unique property, Salesforce by External ID) either refuse
//! a batch naming one key twice or, under concurrent calls, create the record twice
//! (Marketo documents the race). Two tools, for every connector that needs them:
//!
//! - [`rounds_by_key`] splits one batch into rounds in which no key appears twice, keeping
//!   each key's records in their order, so the rounds go out one after the other, and
//!   [`write_in_rounds`] drives a connector's push through them, chunk by chunk, putting each
//!   outcome back in its record's place;
//! - [`KeyLocks`] makes calls of different pushes in flight at once wait for each other when
//!   they share a key (the lock is for the set of keys of one call, taken all at once, so
//!   two calls cannot deadlock).

use std::collections::HashSet;
use std::future::Future;
use std::sync::Mutex;
use tokio::sync::Notify;

use crate::connector::{DeliveryFailure, DeliveryOutcome, OutboundRecord};

/// A record of a batch being written: its index in the batch and its key.
pub type KeyedRecord = (usize, String);

/// Split items, given by their keys in order, into rounds with no key twice in a round;
/// each key's items keep their order (a later item lands in a later round). Keys compare
/// case-insensitively. Returns indices into the input.
pub fn rounds_by_key<'a>(keys: impl IntoIterator<Item = &'a str>) -> Vec<Vec<usize>> {
    let mut rounds: Vec<(HashSet<String>, Vec<usize>)> = Vec::new();
    for (i, key) in keys.into_iter().enumerate() {
        let key = key.to_lowercase();
        // After the last round holding this key, so that later events land later.
        let last = rounds.iter().rposition(|(keys, _)| keys.contains(&key));
        let start = last.map(|l| l + 1).unwrap_or(0);
        match rounds[start..]
            .iter_mut()
            .find(|(keys, _)| !keys.contains(&key))
        {
            Some((keys, idx)) => {
                keys.insert(key);
                idx.push(i);
            }
            None => rounds.push((HashSet::from([key]), vec![i])),
        }
    }
    rounds.into_iter().map(|(_, idx)| idx).collect()
}

/// Write `batch` in rounds by key: `key` gives each record's key (or the failure of a record
/// that has none), the rounds of [`rounds_by_key`] go out one after the other in chunks of
/// at most `chunk_size`, and `write` sends one chunk, answering one outcome per record in
/// order. Returns one outcome per record of `batch`, in order.
pub async fn write_in_rounds<F, Fut>(
    batch: &[OutboundRecord],
    chunk_size: usize,
    key: impl Fn(&OutboundRecord) -> Result<String, DeliveryFailure>,
    mut write: F,
) -> Vec<DeliveryOutcome>
where
    F: FnMut(Vec<KeyedRecord>) -> Fut,
    Fut: Future<Output = Vec<DeliveryOutcome>>,
{
    let mut out: Vec<Option<DeliveryOutcome>> = vec![None; batch.len()];
    let mut keyed: Vec<KeyedRecord> = Vec::with_capacity(batch.len());
    for (i, rec) in batch.iter().enumerate() {
        match key(rec) {
            Ok(k) => keyed.push((i, k)),
            Err(f) => out[i] = Some(DeliveryOutcome::Failed(f)),
        }
    }
    for round in rounds_by_key(keyed.iter().map(|(_, k)| k.as_str())) {
        for chunk in round.chunks(chunk_size.max(1)) {
            let records: Vec<KeyedRecord> = chunk.iter().map(|&j| keyed[j].clone()).collect();
            let places: Vec<usize> = records.iter().map(|(i, _)| *i).collect();
            for (i, o) in places.into_iter().zip(write(records).await) {
                out[i] = Some(o);
            }
        }
    }
    out.into_iter()
        .map(|o| {
            o.unwrap_or_else(|| {
                DeliveryOutcome::Failed(DeliveryFailure::transient(
                    "internal",
                    "record was not sent",
                ))
            })
        })
        .collect()
}

/// The keys of calls in flight (lower-cased); see the module comment.
#[derive(Debug, Default)]
pub struct KeyLocks {
    held: Mutex<HashSet<String>>,
    released: Notify,
}

/// Releases its keys when dropped.
pub struct KeyGuard<'a> {
    locks: &'a KeyLocks,
    keys: Vec<String>,
}

impl KeyLocks {
    pub fn new() -> KeyLocks {
        KeyLocks::default()
    }

    /// Wait until no call in flight holds any of `keys`, then hold them all.
    pub async fn lock<'a>(&'a self, keys: impl IntoIterator<Item = &str>) -> KeyGuard<'a> {
        let mut keys: Vec<String> = keys.into_iter().map(str::to_lowercase).collect();
        keys.sort();
        keys.dedup();
        loop {
            // Registered before the check, so a release in between is not missed.
            let released = self.released.notified();
            {
                let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
                if keys.iter().all(|k| !held.contains(k)) {
                    held.extend(keys.iter().cloned());
                    return KeyGuard { locks: self, keys };
                }
            }
            released.await;
        }
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        let mut held = self.locks.held.lock().unwrap_or_else(|p| p.into_inner());
        for k in &self.keys {
            held.remove(k);
        }
        drop(held);
        self.locks.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn rounds_keep_keys_apart_and_in_order() {
        assert_eq!(
            rounds_by_key(["a", "b", "A", "c", "a", "b"]),
            vec![vec![0, 1, 3], vec![2, 5], vec![4]]
        );
        assert!(rounds_by_key(Vec::<&str>::new()).is_empty());
    }

    #[tokio::test]
    async fn calls_sharing_a_key_wait_for_each_other() {
        let locks = Arc::new(KeyLocks::new());
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let first = locks.lock(["x@example.com", "y@example.com"]).await;
        let (l, o) = (locks.clone(), order.clone());
        let waiter = tokio::spawn(async move {
            let _g = l.lock(["Y@example.com"]).await;
            o.lock().unwrap().push("second");
        });
        // A call with other keys is not held up.
        drop(locks.lock(["z@example.com"]).await);
        tokio::time::sleep(Duration::from_millis(30)).await;
        order.lock().unwrap().push("first done");
        drop(first);
        waiter.await.unwrap();
        assert_eq!(*order.lock().unwrap(), vec!["first done", "second"]);
    }
}
