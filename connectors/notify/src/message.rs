//! What a notification says, whatever carries it: a [`Notice`] is one message about one
//! lead or, for a batch (a digest), about several, built from the records' mapped fields.
//!
//! A notification target's mapping is its message: the entry `subject` (a template) heads
//! a one-lead message, and every other entry is a labelled line ("Company: Contoso") in
//! mapping order, so `[mapping.fields]` adds (`Rating = "rating"`), relabels or drops
//! (`{ omit = true }`) lines like any target's fields. The renderings (plain text, HTML,
//! Slack blocks, an Adaptive Card) live with their channels; the escaping of HTML lives
//! here.

use leadsync_core::{FieldRule, Mapping, OutboundRecord};
use serde_json::Value;

/// The mapping entry that is the subject of a one-lead message.
pub const SUBJECT: &str = "subject";

/// The default subject of a one-lead message.
pub const DEFAULT_SUBJECT: &str =
    "New marketplace lead: {full_name}, {company} ({action}, {offer_title})";

/// The lines of a message about one lead, as mapped.
#[derive(Debug, Clone, PartialEq)]
pub struct LeadLines {
    /// The lead's own subject line (its mapped `subject`).
    pub heading: String,
    /// `(label, value)` in mapping order; empty values left out.
    pub lines: Vec<(String, String)>,
}

/// One message: about one lead, or a digest of several.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    pub subject: String,
    pub leads: Vec<LeadLines>,
}

impl Notice {
    /// The message for `batch`: its one lead's subject, or "N new marketplace leads".
    pub fn of(batch: &[OutboundRecord]) -> Notice {
        let leads: Vec<LeadLines> = batch.iter().map(lead_lines).collect();
        let subject = match leads.as_slice() {
            [one] => one.heading.clone(),
            many => format!("{} new marketplace leads", many.len()),
        };
        Notice { subject, leads }
    }

    /// Plain text: the subject, then each lead's heading (in a digest) and lines.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let digest = self.leads.len() > 1;
        for (i, lead) in self.leads.iter().enumerate() {
            if digest {
                out.push_str(&format!("{}. {}\n", i + 1, lead.heading));
            }
            for (label, value) in &lead.lines {
                let indent = if digest { "   " } else { "" };
                out.push_str(&format!(
                    "{indent}{label}: {}\n",
                    value.replace('\n', &format!("\n{indent}  "))
                ));
            }
            out.push('\n');
        }
        out.push_str("-- \nSent by leadsync from Microsoft commercial-marketplace leads.\n");
        out
    }

    /// A simple HTML part: a heading and a table of lines per lead, every value escaped.
    pub fn html(&self) -> String {
        let mut out = String::from("<!DOCTYPE html><html><body style=\"font-family:sans-serif\">");
        out.push_str(&format!("<h2>{}</h2>", escape_html(&self.subject)));
        for lead in &self.leads {
            if self.leads.len() > 1 {
                out.push_str(&format!("<h3>{}</h3>", escape_html(&lead.heading)));
            }
            out.push_str("<table cellpadding=\"4\">");
            for (label, value) in &lead.lines {
                out.push_str(&format!(
                    "<tr><th align=\"left\" valign=\"top\">{}</th><td>{}</td></tr>",
                    escape_html(label),
                    escape_html(value).replace('\n', "<br>")
                ));
            }
            out.push_str("</table>");
        }
        out.push_str("<p style=\"color:#777\">Sent by leadsync from Microsoft commercial-marketplace leads.</p></body></html>");
        out
    }
}

/// The heading and lines of one mapped record.
fn lead_lines(rec: &OutboundRecord) -> LeadLines {
    let mut heading = None;
    let mut lines = Vec::new();
    for (label, value) in &rec.fields.fields {
        let text = match value {
            Value::String(s) => s.trim().to_string(),
            Value::Null => continue,
            Value::Bool(b) => if *b { "yes" } else { "no" }.to_string(),
            other => other.to_string(),
        };
        if label.eq_ignore_ascii_case(SUBJECT) {
            heading = Some(text);
        } else if !text.is_empty() {
            lines.push((label.clone(), text));
        }
    }
    LeadLines {
        heading: heading
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "New marketplace lead".into()),
        lines,
    }
}

/// The default message of a notification target: the subject, then who, what and where.
pub fn default_mapping() -> Mapping {
    let field = FieldRule::field;
    let rules = [
        FieldRule::template(SUBJECT, DEFAULT_SUBJECT),
        field("Name", "full_name"),
        field("E-mail", "email"),
        field("Phone", "phone"),
        field("Company", "company"),
        field("Title", "title"),
        field("Country", "country"),
        field("Action", "action"),
        field("Offer", "offer_title"),
        field("Offer id", "offer"),
        field("From", "origin"),
        field("Received", "created_at"),
        field("Note", "description"),
    ];
    Mapping::new(rules.into_iter().filter_map(Result::ok).collect())
}

/// `&`, `<`, `>`, `"` and `'` as HTML entities.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use leadsync_core::{read_lead, MappedRecord};
    use serde_json::json;
    use std::sync::Arc;

    pub(crate) fn record(i: usize, company: &str) -> OutboundRecord {
        let lead = read_lead(
            format!("lead-{i}"),
            &json!({"UserDetails": {"FirstName": format!("Ada{i}"), "LastName": "Lovelace",
                    "Email": format!("ada{i}@contoso.example"), "Company": company},
                    "LeadSource": "AppSource", "ActionCode": "INS", "OfferTitle": "Contoso CRM"}),
        )
        .unwrap();
        let (fields, _) = default_mapping().apply(&lead, "key", &[]);
        OutboundRecord {
            lead_id: lead.id.clone(),
            idempotency_key: format!("key-{i}"),
            attempt: 1,
            lead: Arc::new(lead),
            fields,
        }
    }

    #[test]
    fn one_lead_and_a_digest() {
        let one = Notice::of(&[record(1, "Contoso")]);
        assert_eq!(
            one.subject,
            "New marketplace lead: Ada1 Lovelace, Contoso (INS, Contoso CRM)"
        );
        let text = one.text();
        assert!(text.contains("E-mail: ada1@contoso.example"), "{text}");
        assert!(text.contains("Company: Contoso"));
        assert!(!text.contains("subject"));
        let digest = Notice::of(&[record(1, "A"), record(2, "B"), record(3, "C")]);
        assert_eq!(digest.subject, "3 new marketplace leads");
        assert!(digest
            .text()
            .contains("3. New marketplace lead: Ada3 Lovelace, C"));
    }

    #[test]
    fn html_escapes_every_value() {
        let mut r = record(1, "<script>alert('x')</script> & Co");
        r.fields = MappedRecord {
            fields: vec![("Company".into(), json!("<b>&\"'"))],
        };
        let html = Notice::of(&[r]).html();
        assert!(html.contains("&lt;b&gt;&amp;&quot;&#39;"), "{html}");
        assert!(!html.contains("<b>&"));
    }
}
