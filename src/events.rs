//! The one response repair the gateway makes. JARVIS coordinator 0.3.8 answers
//! `GET /v1/runs/{id}/events` with `200 application/json` whose body is the NDJSON text encoded
//! as a single JSON string. On that route, and only for that exact shape, the gateway relays the
//! decoded text as `application/x-ndjson`. Every other response stays opaque bytes: a candidate
//! (200 `application/json`) is refetched whole by `direct` and left untouched unless its body is
//! one JSON string, so even its content type changes only in the defect case.

use crate::direct::Answer;
use bytes::Bytes;
use pingora::http::ResponseHeader;

/// Whether an events response has the shape of the known defect (decided on headers; the body
/// is checked again at the end).
pub fn needs_repair(resp: &ResponseHeader) -> bool {
    resp.status.as_u16() == 200
        && resp
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(is_json_media_type)
            .unwrap_or(false)
}

fn is_json_media_type(ct: &str) -> bool {
    crate::headers::media_type(ct) == "application/json"
}

/// Decodes the body when it is one JSON string; `None` for anything else.
pub fn decode_json_string(body: &[u8]) -> Option<String> {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::String(s)) => Some(s),
        _ => None,
    }
}

/// Applies the repair to a complete answer: only a 200 `application/json` whose body is one
/// JSON string changes (to its decoded text, as `application/x-ndjson`); anything else is
/// returned exactly as it came.
pub fn repair_answer(mut a: Answer) -> Answer {
    let is_json = a
        .header("content-type")
        .and_then(|v| std::str::from_utf8(v).ok())
        .map(is_json_media_type)
        .unwrap_or(false);
    if a.status != 200 || !is_json {
        return a;
    }
    if let Some(text) = decode_json_string(&a.body) {
        a.body = Bytes::from(text);
        a.set_header("content-type", "application/x-ndjson");
        a.set_header("x-accel-buffering", "no");
        a.set_header("cache-control", "no-cache");
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, ct: &str, body: &[u8]) -> Answer {
        Answer {
            status,
            headers: vec![("content-type".into(), ct.as_bytes().to_vec())],
            body: Bytes::copy_from_slice(body),
        }
    }

    #[test]
    fn decodes_only_a_json_string() {
        let ndjson = "{\"seq\":1}\n{\"seq\":2}\n";
        let encoded = serde_json::to_vec(ndjson).unwrap();
        let a = repair_answer(answer(200, "application/json", &encoded));
        assert_eq!(a.body, Bytes::from(ndjson));
        assert_eq!(a.header("content-type"), Some(&b"application/x-ndjson"[..]));
        for (status, ct, body) in [
            (200, "application/json", &b"{\"a\":1}"[..]),
            (404, "application/json", &encoded[..]),
            (200, "application/x-ndjson", &encoded[..]),
            (200, "application/json", b"not json"),
        ] {
            let a = repair_answer(answer(status, ct, body));
            assert_eq!(&a.body[..], body, "{status} {ct}");
            assert_eq!(
                a.header("content-type"),
                Some(ct.as_bytes()),
                "{status} {ct}"
            );
        }
    }

    #[test]
    fn only_200_json_is_a_candidate() {
        let mut ok = ResponseHeader::build(200, None).unwrap();
        ok.insert_header("Content-Type", "application/json; charset=utf-8")
            .unwrap();
        assert!(needs_repair(&ok));
        let mut nd = ResponseHeader::build(200, None).unwrap();
        nd.insert_header("Content-Type", "application/x-ndjson")
            .unwrap();
        assert!(!needs_repair(&nd));
        let mut err = ResponseHeader::build(404, None).unwrap();
        err.insert_header("Content-Type", "application/json")
            .unwrap();
        assert!(!needs_repair(&err));
    }
}
