//! Bytes that are not UTF-8 in a spool file, through the real binary: a record whose e-mail,
//! name or company holds them is quarantined with a reason naming the field (never the
//! value), a description holding them is delivered with U+FFFD and one `WARN` line naming the
//! field and the record's place, and every other record of the same files is delivered.

mod common;
use common::{text, Deployment};

/// A JSON-lines line of the HTTPS shape: `tag` in the description, `person` as given (bytes).
fn line(person: &[u8], description: &[u8]) -> Vec<u8> {
    let mut out = b"{\"UserDetails\": {".to_vec();
    out.extend_from_slice(person);
    out.extend_from_slice(
        b"}, \"LeadSource\": \"AzureMarketplace\", \"ActionCode\": \"INS\", \"Description\": \"",
    );
    out.extend_from_slice(description);
    out.extend_from_slice(b"\"}\n");
    out
}

/// Lines 1 and 5 good; 2 a Latin-1 e-mail, 3 a Latin-1 last name, 4 a Latin-1 description.
fn jsonl_file() -> Vec<u8> {
    [
        line(b"\"Email\": \"first.good@contoso.example\"", b"marker:good-1"),
        line(
            b"\"Email\": \"jos\xe9.quixote@contoso.example\"",
            b"marker:bad-email",
        ),
        line(
            b"\"FirstName\": \"Ana\", \"LastName\": \"Qu\xefxotica\", \"Email\": \"ana.q@contoso.example\"",
            b"marker:bad-name",
        ),
        line(
            b"\"Email\": \"desc.person@contoso.example\"",
            b"marker:latin1-description caf\xe9 cr\xe8me",
        ),
        line(b"\"Email\": \"last.good@contoso.example\"", b"marker:good-2"),
    ]
    .concat()
}

/// A `.json` array of Table entities: the first with a Latin-1 company inside `CustomerInfo`
/// (a JSON string holding JSON), the second good.
fn json_file() -> Vec<u8> {
    let entity = |info: &[u8], tag: &str| {
        let mut out = b"{\"PartitionKey\": \"p\", \"RowKey\": \"".to_vec();
        out.extend_from_slice(tag.as_bytes());
        out.extend_from_slice(b"\", \"LeadSource\": \"SPZA-PLT|a.b\", \"CustomerInfo\": \"{");
        out.extend_from_slice(info);
        out.extend_from_slice(b"}\", \"Description\": \"marker:");
        out.extend_from_slice(tag.as_bytes());
        out.extend_from_slice(b"\"}");
        out
    };
    [
        b"[".to_vec(),
        entity(
            b"\\\"Email\\\": \\\"co@contoso.example\\\", \\\"Company\\\": \\\"Soci\xe9t\xe9 Zyx\\\"",
            "bad-company",
        ),
        b", ".to_vec(),
        entity(b"\\\"Email\\\": \\\"table.good@contoso.example\\\"", "good-3"),
        b"]".to_vec(),
    ]
    .concat()
}

fn log_lines(stderr: &str) -> Vec<serde_json::Value> {
    stderr
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn latin1_identity_is_quarantined_and_latin1_description_delivered_with_a_warning() {
    let d = Deployment::new();
    std::fs::write(d.spool().join("leads.jsonl"), jsonl_file()).unwrap();
    std::fs::write(d.spool().join("table.json"), json_file()).unwrap();

    let out = d.run(&["sync", "--once", "--wait", "0s"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");

    // Quarantined: a reason per record, naming the file, the place and the field.
    let reasons = |file: &str| {
        std::fs::read_to_string(d.spool().join(format!("rejected/{file}.reason"))).unwrap()
    };
    assert_eq!(
        reasons("leads.jsonl"),
        "leads.jsonl: line 2: UserDetails.Email holds bytes that are not UTF-8\n\
         leads.jsonl: line 3: UserDetails.LastName holds bytes that are not UTF-8\n"
    );
    assert_eq!(
        reasons("table.json"),
        "table.json: element 1: CustomerInfo.Company holds bytes that are not UTF-8\n"
    );
    // The quarantined JSON-lines records keep their original bytes.
    let rejected = std::fs::read(d.spool().join("rejected/leads.jsonl")).unwrap();
    assert_eq!(
        rejected,
        [&jsonl_file_lines()[1][..], &jsonl_file_lines()[2][..]].concat()
    );

    // Delivered: everything else, the description with its replacement characters.
    let rows = d.csv_rows();
    let mut markers: Vec<&str> = rows.iter().map(|r| r["Description"].as_str()).collect();
    markers.sort();
    assert_eq!(
        markers,
        [
            "marker:good-1",
            "marker:good-2",
            "marker:good-3",
            "marker:latin1-description caf\u{FFFD} cr\u{FFFD}me",
        ]
    );
    let status = d.status_json();
    assert_eq!(status["leads"], 4);
    assert_eq!(status["quarantined"], 3);

    // The warning names the field and the record's place; no line carries a bad value.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines = log_lines(&stderr);
    let warned: Vec<_> = lines
        .iter()
        .filter(|l| {
            l["warnings"]
                .as_str()
                .is_some_and(|w| w.contains("held bytes that are not UTF-8"))
        })
        .collect();
    assert_eq!(warned.len(), 1, "one warning: {stderr}");
    let warned = warned[0];
    assert_eq!(warned["level"], "WARN");
    assert_eq!(warned["message"], "lead accepted with tolerated problems");
    assert_eq!(warned["file"], "leads.jsonl");
    assert_eq!(warned["at"], "line 4");
    assert_eq!(
        warned["warnings"],
        "[\"Description held bytes that are not UTF-8; kept with U+FFFD\"]"
    );
    let quarantine_lines: Vec<_> = lines
        .iter()
        .filter(|l| l["message"] == "record quarantined")
        .map(|l| l["reason"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        quarantine_lines,
        [
            "UserDetails.Email holds bytes that are not UTF-8",
            "UserDetails.LastName holds bytes that are not UTF-8",
            "CustomerInfo.Company holds bytes that are not UTF-8",
        ]
    );
    for personal in [
        "quixote",
        "xotica",
        "Zyx",
        "contoso.example",
        "caf",
        "cr\u{FFFD}me",
    ] {
        assert!(
            !stderr.contains(personal),
            "{personal:?} in the logs: {stderr}"
        );
    }
}

fn jsonl_file_lines() -> Vec<Vec<u8>> {
    jsonl_file()
        .split_inclusive(|b| *b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}
