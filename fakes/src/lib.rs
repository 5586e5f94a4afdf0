//! Stateful fakes of the services leadsync writes to, each following the "faithful fake"
//! checklist of `spec/crm-apis.md`: they keep records, enforce the rules the real service
//! enforces (lengths, required fields, keys), and can be told to misbehave (throttling,
//! token expiry, server errors, latency) so tests and benchmarks see the real failure
//! shapes. Each listens on 127.0.0.1 on a free port.

pub mod azure_table_faults;
pub mod dataverse;
pub mod https_receiver;
pub mod salesforce;
