//! From a POST's body to durable leads: reading the body (one lead object or an array of
//! them, every tolerance rule of the spool's reader) and the group commit that stages what
//! concurrent POSTs bring in one ledger transaction, answering each only once it is durable.

use std::sync::Arc;

use chrono::Utc;
use leadsync_core::decode;
use leadsync_core::{Lead, QuarantinedRecord};
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};

use crate::ledger::{Ledger, StageBatch, StagedLead};
use crate::metrics as m;
use crate::sources::spool::content_lead_id;

use super::InboxRoute;

/// POSTs whose leads one ledger transaction stages at most.
const GROUP_MAX: usize = 256;

/// How a rejected item's origin ends: `item <n>` (1-based).
const ITEM: &str = "item ";

/// What the client is told of a rejected item: its number and why.
pub fn rejection(r: &QuarantinedRecord) -> String {
    let item = r.origin.rsplit_once(ITEM).map_or("", |(_, n)| n);
    format!("{ITEM}{item}: {}", r.reason)
}

/// What one body held: its leads, and the items that are not leads, with why.
#[derive(Debug, Default)]
pub struct ReadBody {
    pub leads: Vec<Lead>,
    pub rejected: Vec<QuarantinedRecord>,
}

/// Read a body: a lead object, or an array of them. An item that is not a lead is rejected
/// with the reader's reason; a body that is not JSON at all is one rejected item.
pub fn read_body(source: &str, bytes: &[u8]) -> ReadBody {
    let origin = |i: usize| format!("{source}:POST at {}:{ITEM}{i}", Utc::now().to_rfc3339());
    let mut out = ReadBody::default();
    let reject = |out: &mut ReadBody, i: usize, reason: String| {
        out.rejected.push(QuarantinedRecord {
            origin: origin(i),
            reason,
        })
    };
    let text = match decode::decode(bytes) {
        Ok(t) => t,
        Err(e) => {
            reject(&mut out, 1, e.to_string());
            return out;
        }
    };
    let trimmed = text.text.trim_start_matches('\u{feff}').trim();
    if trimmed.is_empty() {
        reject(
            &mut out,
            1,
            "the body is empty; expected a lead as JSON".into(),
        );
        return out;
    }
    let items: Result<Vec<Box<RawValue>>, _> = if trimmed.starts_with('[') {
        serde_json::from_str(trimmed)
    } else {
        serde_json::from_str::<Box<RawValue>>(trimmed).map(|v| vec![v])
    };
    let items = match items {
        Ok(items) if !items.is_empty() => items,
        Ok(_) => {
            reject(
                &mut out,
                1,
                "the body is an empty array; expected leads".into(),
            );
            return out;
        }
        Err(e) => {
            reject(&mut out, 1, format!("the body is not JSON: {e}"));
            return out;
        }
    };
    for (i, item) in items.iter().enumerate() {
        let lead = decode::parse_json(item.get(), text.mark)
            .and_then(|record| record.read_lead(content_lead_id("inbox", &record.value)));
        match lead {
            Ok(lead) => out.leads.push(lead),
            Err(e) => reject(&mut out, i + 1, e.to_string()),
        }
    }
    out
}

/// One POST's leads waiting for the group commit, and where to say how it went.
pub struct Arrival {
    pub body: ReadBody,
    pub done: oneshot::Sender<Result<(), String>>,
}

/// Stage what arrives, several POSTs a transaction (those that came while the last one
/// committed), then answer each. Ends when every sender is gone.
pub async fn group_commit(
    source: String,
    ledger: Arc<dyn Ledger>,
    route: Arc<std::sync::RwLock<Arc<InboxRoute>>>,
    mut arrivals: mpsc::Receiver<Arrival>,
) {
    while let Some(first) = arrivals.recv().await {
        let mut group = vec![first];
        while group.len() < GROUP_MAX {
            match arrivals.try_recv() {
                Ok(a) => group.push(a),
                Err(_) => break,
            }
        }
        let route = route.read().map(|r| Arc::clone(&r)).ok();
        let result = stage_group(&source, ledger.as_ref(), route.as_deref(), &group).await;
        for arrival in group {
            let _ = arrival.done.send(result.clone());
        }
    }
}

async fn stage_group(
    source: &str,
    ledger: &dyn Ledger,
    route: Option<&InboxRoute>,
    group: &[Arrival],
) -> Result<(), String> {
    let targets = route.map(|r| r.targets.as_slice()).unwrap_or_default();
    let leads: Vec<StagedLead> = group
        .iter()
        .flat_map(|a| &a.body.leads)
        .map(|lead| StagedLead {
            deliveries: targets.iter().filter_map(|t| t.plan(lead)).collect(),
            lead: lead.clone(),
        })
        .collect();
    let quarantined = group
        .iter()
        .flat_map(|a| a.body.rejected.iter().cloned())
        .collect();
    let batch = StageBatch {
        source: source.to_string(),
        leads,
        quarantined,
        cursor: None,
    };
    match ledger.stage(batch).await {
        Ok(report) => {
            metrics::counter!(m::LEADS_STAGED, "source" => source.to_string())
                .increment(report.staged);
            metrics::counter!(m::RECORDS_QUARANTINED, "source" => source.to_string())
                .increment(report.quarantined);
            metrics::gauge!(m::SOURCE_LAST_SUCCESS, "source" => source.to_string())
                .set(Utc::now().timestamp_millis() as f64 / 1000.0);
            if report.deliveries > 0 {
                if let Some(route) = route {
                    (route.on_staged)();
                }
            }
            Ok(())
        }
        Err(e) => {
            tracing::error!(source = %source, posts = group.len(), error = %e, "inbox: the ledger could not take the leads; answered 503");
            Err(e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_casings_arrays_and_rejects() {
        let one = read_body(
            "inbox",
            br#"{"userDetails": {"FirstName": "A", "Email": "a@example.com"}, "LeadSource": "AzureMarketplace", "ActionCode": "INS", "OfferTitle": "T"}"#,
        );
        assert_eq!((one.leads.len(), one.rejected.len()), (1, 0));
        assert!(one.leads[0].id.starts_with("inbox:"));
        let again = read_body(
            "inbox",
            br#"{ "userDetails": {"Email": "a@example.com", "FirstName": "A"}, "ActionCode": "INS", "LeadSource": "AzureMarketplace", "OfferTitle": "T"}"#,
        );
        assert_eq!(
            again.leads[0].id, one.leads[0].id,
            "same content, same lead"
        );
        let mixed = read_body(
            "inbox",
            br#"[{"UserDetails": {"Email": "b@example.com"}, "LeadSource": "AzureMarketplace"}, 42]"#,
        );
        assert_eq!((mixed.leads.len(), mixed.rejected.len()), (1, 1));
        assert!(mixed.rejected[0].origin.ends_with("item 2"));
        assert!(rejection(&mixed.rejected[0]).starts_with("item 2: "));
        for bad in [&b"not json"[..], b"", b"[]", b"{\"a\": "] {
            let r = read_body("inbox", bad);
            assert_eq!((r.leads.len(), r.rejected.len()), (0, 1), "{bad:?}");
        }
    }
}
