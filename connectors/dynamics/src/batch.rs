//! The `$batch` wire format (OData 4.0 multipart/mixed, spec §1.6): building a request with
//! one change set per operation, and reading a response back into per-part answers.
//!
//! One change set per lead keeps every lead's write atomic on its own (a failing lead rolls
//! back nothing else) while `Content-ID` lets each answer be matched to its lead. Parsing is
//! tolerant: LF or CRLF line ends, quoted or bare boundaries, change-set answers or plain
//! parts, with or without an echoed `Content-ID`. Bodies are never logged here.
//!
//! Written by hand: we found no maintained Rust crate for OData `$batch` (change sets that
//! carry whole HTTP requests and responses, matched back by `Content-ID`); a general
//! multipart crate would only split the parts and leave the rest to us, and the OData batch
//! libraries are for .NET and JavaScript. Sending the request and turning the answers into
//! outcomes are `push`'s and `classify`'s.

use rand::Rng;

/// One operation of a batch.
#[derive(Debug, Clone)]
pub struct BatchOp {
    pub method: &'static str,
    /// Absolute URL of the operation.
    pub url: String,
    /// JSON body.
    pub body: String,
}

/// One answer inside a batch response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartResponse {
    /// The `Content-ID` the server echoed, when it did.
    pub content_id: Option<String>,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl PartResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        header_of(&self.headers, name)
    }
}

pub fn header_of<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// A random boundary suffix.
pub fn random_id() -> String {
    format!("{:032x}", rand::rng().random::<u128>())
}

/// The request body of a batch whose boundary is `batch_boundary`: every operation in its
/// own change set, `Content-ID` = its 1-based position.
pub fn build_request(batch_boundary: &str, ops: &[BatchOp]) -> String {
    use std::fmt::Write as _;
    let framing = 300 + 3 * batch_boundary.len();
    let size = ops
        .iter()
        .map(|op| framing + op.url.len() + op.body.len())
        .sum::<usize>();
    let mut out = String::with_capacity(size + batch_boundary.len() + 8);
    for (i, op) in ops.iter().enumerate() {
        let n = i + 1;
        // Writing into a String cannot fail.
        let _ = write!(
            out,
            "--{batch_boundary}\r\nContent-Type: multipart/mixed; boundary=changeset_{batch_boundary}_{n}\r\n\r\n\
             --changeset_{batch_boundary}_{n}\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\nContent-ID: {n}\r\n\r\n\
             {} {} HTTP/1.1\r\nContent-Type: application/json; type=entry\r\nPrefer: return=representation\r\n",
            op.method, op.url
        );
        // Reported to be needed by Dataverse for bodies inside a batch [C].
        let _ = write!(out, "Content-Length: {}\r\n\r\n", op.body.len());
        out.push_str(&op.body);
        let _ = write!(out, "\r\n--changeset_{batch_boundary}_{n}--\r\n");
    }
    let _ = write!(out, "--{batch_boundary}--\r\n");
    out
}

/// The `boundary` parameter of a multipart content type.
pub fn boundary_of(content_type: &str) -> Option<String> {
    content_type.split(';').find_map(|p| {
        let p = p.trim();
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| v.trim().trim_matches('"').to_string())
    })
}

/// A part's MIME headers and the rest of it (borrowed: a 500-lead answer is read without
/// copying each part).
fn split_head(text: &str) -> (Vec<(String, String)>, &str) {
    let mut headers = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (line, tail) = rest.split_once('\n').unwrap_or((rest, ""));
        rest = tail;
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    (headers, rest)
}

/// The parts of a multipart body: (MIME headers, content), the content borrowed from `body`
/// with its line ends as they came.
fn split_multipart<'a>(body: &'a str, boundary: &str) -> Vec<(Vec<(String, String)>, &'a str)> {
    let delim = format!("--{boundary}");
    let mut parts = Vec::new();
    // Byte offset where the current part's content starts, once a delimiter was seen.
    let mut current: Option<usize> = None;
    let mut offset = 0;
    for line in body.split_inclusive('\n') {
        let line_start = offset;
        offset += line.len();
        let Some(after) = line.trim_end().strip_prefix(delim.as_str()) else {
            continue;
        };
        let closes = after == "--";
        if !closes && !after.is_empty() {
            continue;
        }
        if let Some(start) = current.take() {
            parts.push(&body[start..line_start]);
        }
        if closes {
            break;
        }
        current = Some(offset);
    }
    // A body cut short keeps what was complete.
    if let Some(start) = current {
        if start < body.len() {
            parts.push(&body[start..]);
        }
    }
    parts.into_iter().map(split_head).collect()
}

fn parse_http_response(content_id: Option<String>, text: &str) -> Option<PartResponse> {
    let text = text.trim_start_matches(['\r', '\n']);
    let (first, rest) = text.split_once('\n').unwrap_or((text, ""));
    let mut words = first.split_whitespace();
    let proto = words.next()?;
    if !proto.starts_with("HTTP/") {
        return None;
    }
    let status: u16 = words.next()?.parse().ok()?;
    let (headers, body) = split_head(rest);
    let body = body.trim();
    Some(PartResponse {
        content_id,
        status,
        headers,
        // CRLF inside a body (a server's error page, say) reads as LF, as it always did.
        body: if body.contains('\r') {
            body.replace("\r\n", "\n")
        } else {
            body.to_string()
        },
    })
}

/// Read a batch response. Each item is one top-level part: a change set gives its answers,
/// a plain part one answer. `Err` when the body is not a multipart batch response at all.
pub fn parse_response(content_type: &str, body: &str) -> Result<Vec<Vec<PartResponse>>, String> {
    if !content_type
        .trim_start()
        .to_ascii_lowercase()
        .starts_with("multipart/mixed")
    {
        return Err(format!(
            "expected a multipart/mixed batch response, got {content_type:?}"
        ));
    }
    let boundary =
        boundary_of(content_type).ok_or("the batch response names no boundary".to_string())?;
    let mut items = Vec::new();
    for (headers, content) in split_multipart(body, &boundary) {
        let ct = header_of(&headers, "content-type").unwrap_or("");
        if ct.to_ascii_lowercase().starts_with("multipart/mixed") {
            let Some(cb) = boundary_of(ct) else {
                items.push(Vec::new());
                continue;
            };
            let answers = split_multipart(content, &cb)
                .into_iter()
                .filter_map(|(h, c)| {
                    let cid = header_of(&h, "content-id").map(str::to_string);
                    parse_http_response(cid, c)
                })
                .collect();
            items.push(answers);
        } else {
            let cid = header_of(&headers, "content-id").map(str::to_string);
            items.push(parse_http_response(cid, content).into_iter().collect());
        }
    }
    Ok(items)
}

/// Match answers to the `n` operations sent: by echoed `Content-ID` when there is one,
/// else by position (Dataverse answers in request order, one top-level part per change set).
pub fn assign(items: Vec<Vec<PartResponse>>, n: usize) -> Vec<Option<PartResponse>> {
    let mut slots: Vec<Option<PartResponse>> = vec![None; n];
    for (pos, answers) in items.into_iter().enumerate() {
        for a in answers {
            let idx = a
                .content_id
                .as_deref()
                .and_then(|c| c.trim().parse::<usize>().ok())
                .and_then(|c| c.checked_sub(1))
                .filter(|i| *i < n)
                .unwrap_or(pos);
            if idx < n && slots[idx].is_none() {
                slots[idx] = Some(a);
            }
        }
    }
    slots
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_one_change_set_per_operation() {
        let ops = vec![
            BatchOp {
                method: "PATCH",
                url: "https://o/api/data/v9.2/leads(k='a')".into(),
                body: "{\"x\":1}".into(),
            },
            BatchOp {
                method: "PATCH",
                url: "https://o/api/data/v9.2/leads(k='b')".into(),
                body: "{}".into(),
            },
        ];
        let b = build_request("batch_1", &ops);
        assert!(b.starts_with(
            "--batch_1\r\nContent-Type: multipart/mixed; boundary=changeset_batch_1_1\r\n"
        ));
        assert!(b.contains(
            "Content-ID: 2\r\n\r\nPATCH https://o/api/data/v9.2/leads(k='b') HTTP/1.1\r\n"
        ));
        assert!(b.contains("Content-Length: 7\r\n\r\n{\"x\":1}\r\n--changeset_batch_1_1--\r\n"));
        assert!(b.ends_with("--batch_1--\r\n"));
    }

    #[test]
    fn reads_change_set_answers_plain_failures_and_assigns_them() {
        let body = "--batchresponse_x\r\nContent-Type: multipart/mixed; boundary=\"changesetresponse_y\"\r\n\r\n--changesetresponse_y\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\nContent-ID: 1\r\n\r\nHTTP/1.1 201 Created\r\nContent-Type: application/json; odata.metadata=minimal\r\n\r\n{\"leadid\":\"g1\"}\r\n--changesetresponse_y--\r\n--batchresponse_x\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\nHTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n\r\n{\"error\":{\"code\":\"0x80044331\",\"message\":\"m\"}}\r\n--batchresponse_x--\r\n";
        let items = parse_response("multipart/mixed; boundary=batchresponse_x", body).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0][0].status, 201);
        assert_eq!(items[0][0].body, "{\"leadid\":\"g1\"}");
        assert_eq!(items[1][0].status, 400);
        assert_eq!(items[1][0].content_id, None);
        let slots = assign(items, 3);
        assert_eq!(slots[0].as_ref().unwrap().status, 201);
        assert_eq!(slots[1].as_ref().unwrap().status, 400);
        assert!(slots[2].is_none());
        // LF-only line ends and a content id pointing elsewhere.
        let lf = body
            .replace("\r\n", "\n")
            .replace("Content-ID: 1", "Content-ID: 2");
        let slots = assign(
            parse_response("multipart/mixed;boundary=batchresponse_x", &lf).unwrap(),
            2,
        );
        assert_eq!(slots[1].as_ref().unwrap().status, 201);
        assert!(parse_response("application/json", "{}").is_err());
    }

    #[test]
    fn reads_a_body_cut_short_look_alike_delimiters_and_crlf_inside_a_body() {
        let body = "preamble\r\n--b\r\nContent-Type: application/http\r\n\r\nHTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\n\r\nline one\r\n--bx not a delimiter\r\nline three\r\n--b  \r\nContent-Type: application/http\r\n\r\nHTTP/1.1 204 No Content\r\nOData-EntityId: u\r\n\r\n--b\r\nContent-Type: application/http\r\n\r\nHTTP/1.1 201 Cre";
        let items = parse_response("multipart/mixed; boundary=\"b\"", body).unwrap();
        assert_eq!(items.len(), 3, "{items:?}");
        assert_eq!(items[0][0].status, 500);
        assert_eq!(
            items[0][0].body,
            "line one\n--bx not a delimiter\nline three"
        );
        assert_eq!(items[1][0].status, 204);
        assert_eq!(items[1][0].header("odata-entityid"), Some("u"));
        assert_eq!(items[1][0].body, "");
        // The part cut inside its status line still reads: its answer is kept.
        assert_eq!(items[2][0].status, 201);
        // Nothing after the closing delimiter is read.
        let closed = format!(
            "{}\r\n--b--\r\n--b\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
            &body[..body
                .find("--b\r\nContent-Type: application/http\r\n\r\nHTTP/1.1 201")
                .unwrap()
                - 2]
        );
        assert_eq!(
            parse_response("multipart/mixed; boundary=b", &closed)
                .unwrap()
                .len(),
            2
        );
    }
}
