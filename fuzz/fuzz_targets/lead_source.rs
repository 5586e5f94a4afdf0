//! The `LeadSource` parser (`Source-Action|Offer`): never fails, keeps the raw value, and
//! splits the offer at the first `|`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let raw = String::from_utf8_lossy(data);
    let parsed = leadsync_core::LeadSource::parse(&raw);
    assert_eq!(parsed.raw, raw);
    if parsed.offer.is_some() {
        assert!(raw.contains('|'));
    }
});
