//! leadsync-core: what every part of leadsync shares.
//!
//! The lead model, its readers and the quarantine record of what could not be read
//! ([`lead`]), the decoding of record bytes that may not be UTF-8 ([`decode`]), the
//! connector contract and failure classes ([`connector`]), how a connector is built from a
//! target's settings ([`build`]), the lead fields read by name ([`lead_field`]), the
//! field-mapping engine ([`mapping`]) and the `[qualify]` rule language it computes named
//! values with ([`qualify`]), idempotency keys
//! ([`key`]), redaction of personal data and secrets ([`pii`]), secret references
//! ([`secret_ref`]), `Retry-After` parsing ([`retry_after`]), and the HTTP pieces every HTTP
//! connector shares: client setup and status classification ([`http`]) and the OAuth token
//! cache ([`oauth`]), pacing calls under a CRM's published call-rate limits ([`pace`]) and
//! keeping writes to one record in order ([`serial`]).

pub mod build;
pub mod connector;
pub mod decode;
pub mod http;
pub mod jwt;
pub mod key;
pub mod lead;
pub mod lead_field;
pub mod mapping;
pub mod oauth;
pub mod pace;
pub mod pii;
pub mod qualify;
pub mod read_error;
pub mod retry_after;
pub mod secret_ref;
pub mod serial;

pub use build::{BuildContext, BuildError, BuildFn};
pub use connector::{
    CheckError, CheckReport, Connector, DeliveryFailure, DeliveryOutcome, FailureClass,
    OutboundRecord, PreparedBatch,
};
pub use key::{idempotency_key, KeyScope};
pub use lead::{
    read_lead, Action, Customer, Lead, LeadSource, Offer, Origin, QuarantinedRecord, ReadError,
};
pub use mapping::{
    truncate_in_place, FieldLimit, FieldOverride, FieldRule, MappedRecord, Mapping, MappingError,
    MappingOverrides, RawRule,
};
pub use pii::{Pii, Secret};
pub use qualify::{Predicate, Qualification, Qualified};
pub use secret_ref::{SecretError, SecretRef};
