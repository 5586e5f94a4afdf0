//! One spool record's bytes through the lead reader: `parse_record` (size limit, BOM,
//! invalid UTF-8, serde_json's recursion limit) then `read_lead`. Any input must give a lead
//! or a `ReadError`, never a panic or a stack overflow.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = leadsync_core::lead::parse_record(data) {
        let id = leadsync::sources::spool::spool_lead_id(&record.value);
        if let Ok(lead) = record.read_lead(id.clone()) {
            assert_eq!(lead.id, id);
        }
    }
});
