//! The one response repair the gateway makes. JARVIS coordinator 0.3.8 answers
//! `GET /v1/runs/{id}/events` with `200 application/json` whose body is the NDJSON text encoded
//! as a single JSON string. On that route, and only for that exact shape, the gateway relays the
//! decoded text as `application/x-ndjson`. Every other response stays opaque bytes.

use bytes::{Bytes, BytesMut};
use pingora::http::ResponseHeader;

/// Above this the body is not a small buffered answer any more; give up repairing and relay
/// the bytes as they are rather than hold an unbounded buffer.
const MAX_REPAIR_BYTES: usize = 32 * 1024 * 1024;

/// Whether an events response has the shape of the known defect (decided on headers; the body
/// is checked again at the end).
pub fn needs_repair(resp: &ResponseHeader) -> bool {
    resp.status.as_u16() == 200
        && resp
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|ct| {
                ct.split(';')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .eq_ignore_ascii_case("application/json")
            })
            .unwrap_or(false)
}

/// Decodes the body when it is one JSON string; `None` for anything else.
pub fn decode_json_string(body: &[u8]) -> Option<String> {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::String(s)) => Some(s),
        _ => None,
    }
}

#[derive(Default)]
pub struct JsonStringRepair {
    buf: BytesMut,
    gave_up: bool,
}

impl JsonStringRepair {
    /// Takes one body chunk and returns what to send downstream now.
    pub fn feed(&mut self, chunk: Option<Bytes>, end: bool) -> Option<Bytes> {
        if self.gave_up {
            return chunk;
        }
        if let Some(c) = chunk {
            self.buf.extend_from_slice(&c);
        }
        if self.buf.len() > MAX_REPAIR_BYTES {
            log::warn!("events body too large to repair; relaying it unchanged");
            self.gave_up = true;
            return Some(std::mem::take(&mut self.buf).freeze());
        }
        if !end {
            return None;
        }
        let raw = std::mem::take(&mut self.buf).freeze();
        match decode_json_string(&raw) {
            Some(text) => Some(Bytes::from(text)),
            // Valid JSON of another shape (an object, say) is relayed as it came.
            None => Some(raw),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_only_a_json_string() {
        let ndjson = "{\"seq\":1}\n{\"seq\":2}\n";
        let encoded = serde_json::to_vec(ndjson).unwrap();
        let mut r = JsonStringRepair::default();
        let (a, b) = encoded.split_at(5);
        assert_eq!(r.feed(Some(Bytes::copy_from_slice(a)), false), None);
        assert_eq!(
            r.feed(Some(Bytes::copy_from_slice(b)), true),
            Some(Bytes::from(ndjson))
        );
        let mut r = JsonStringRepair::default();
        assert_eq!(
            r.feed(Some(Bytes::from_static(b"{\"a\":1}")), true),
            Some(Bytes::from_static(b"{\"a\":1}"))
        );
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
