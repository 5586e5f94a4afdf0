//! Helpers for the connector's tests: reaching Azurite, unique table names, records.
#![allow(dead_code)]

use leadsync_azure_table::{
    default_mapping, Account, AzureTableConnector, AzureTableSettings, SharedKeyScheme, TableClient,
};
use leadsync_core::{read_lead, OutboundRecord};
use serde_json::{json, Value};
use std::sync::Arc;

pub const AZURITE: &str = "127.0.0.1:10002";

/// Whether Azurite answers on 127.0.0.1:10002. Absent: skip loudly, unless
/// LEADSYNC_REQUIRE_SERVICES=1 (CI), where that is a failure.
pub fn azurite_up() -> bool {
    let up = std::net::TcpStream::connect_timeout(
        &AZURITE.parse().unwrap(),
        std::time::Duration::from_secs(1),
    )
    .is_ok();
    if !up {
        if std::env::var("LEADSYNC_REQUIRE_SERVICES").as_deref() == Ok("1") {
            panic!("Azurite is not listening on {AZURITE} and LEADSYNC_REQUIRE_SERVICES=1");
        }
        leadsync_fakes::announce_skip(&format!(
            "Azurite is not listening on {AZURITE}; start it with \
             `azurite-table --tableHost 127.0.0.1 --tablePort 10002` to run this test"
        ));
    }
    up
}

/// A table name no other test uses.
pub fn unique_table(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}{}x{}x{}",
        std::process::id(),
        nanos % 1_000_000_000,
        N.fetch_add(1, Ordering::SeqCst)
    )
}

pub fn dev_client(scheme: SharedKeyScheme) -> TableClient {
    TableClient::new(
        Account::development().unwrap(),
        reqwest::Client::new(),
        scheme,
    )
}

pub fn settings(conn: &str, table: &str, extra: Value) -> AzureTableSettings {
    let mut v = json!({"connection_string": conn, "table": table});
    if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
        o.extend(e);
    }
    serde_json::from_value(v).unwrap()
}

pub fn connector(settings: AzureTableSettings) -> AzureTableConnector {
    AzureTableConnector::try_new(settings, std::path::Path::new(".")).unwrap()
}

/// A record for lead `n` through the default mapping; `key` is its idempotency key.
pub fn record(n: usize, key: &str, description: &str) -> OutboundRecord {
    let lead = read_lead(
        format!("azure-table:test/src/p/{n}"),
        &json!({
            "LeadSource": "SPZA-PLT|contoso.crm-offer",
            "OfferDisplayName": "Contoso CRM",
            "CustomerInfo": format!("{{\"FirstName\":\"Ann{n}\",\"LastName\":\"O'Brien\",\"Email\":\"ann{n}@contoso.example\"}}"),
            "Description": description,
        }),
    )
    .unwrap();
    let s = settings("UseDevelopmentStorage=true", "Leads", json!({}));
    let (fields, _) = default_mapping(&s).apply(&lead, key, &[]);
    OutboundRecord {
        lead_id: lead.id.clone(),
        idempotency_key: key.to_string(),
        attempt: 1,
        lead: Arc::new(lead),
        fields,
    }
}

pub fn key(n: usize) -> String {
    format!("{n:032x}")
}
