//! leadsync-core: what every part of leadsync shares.
//!
//! The lead model and its readers ([`lead`]), the connector contract and failure classes
//! ([`connector`]), the field-mapping engine ([`mapping`]), idempotency keys ([`key`]),
//! redaction of personal data and secrets ([`pii`]), secret references ([`secret_ref`]),
//! `Retry-After` parsing ([`retry_after`]), and the HTTP pieces every HTTP connector shares:
//! client setup and status classification ([`http`]) and the OAuth token cache ([`oauth`]).

pub mod connector;
pub mod http;
pub mod jwt;
pub mod key;
pub mod lead;
pub mod mapping;
pub mod oauth;
pub mod pii;
pub mod retry_after;
pub mod secret_ref;

pub use connector::{
    CheckError, CheckReport, Connector, DeliveryFailure, DeliveryOutcome, FailureClass, FieldLimit,
    OutboundRecord,
};
pub use key::{idempotency_key, KeyScope};
pub use lead::{read_lead, Action, Customer, Lead, LeadSource, Offer, Origin, ReadError};
pub use mapping::{FieldRule, MappedRecord, Mapping, MappingError, RawRule};
pub use pii::{Pii, Secret};
pub use secret_ref::SecretRef;
