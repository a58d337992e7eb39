//! Header rules of a well-behaved proxy, as plain functions: hop-by-hop headers, request ids,
//! W3C trace context, and the size budget for request heads.

use http::HeaderMap;
use std::borrow::Cow;

/// RFC 9110 §7.6.1 hop-by-hop headers, plus the proxy ones nobody should forward.
/// `Transfer-Encoding` and `Content-Length` are left to Pingora, which owns body framing.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "upgrade",
];

/// Names of the headers to drop before forwarding: the fixed hop-by-hop set plus every header
/// the `Connection` header lists. Borrowed where fixed: this runs twice on every request.
pub fn hop_by_hop_names(headers: &HeaderMap) -> Vec<Cow<'static, str>> {
    let mut names: Vec<Cow<'static, str>> = HOP_BY_HOP.iter().map(|s| Cow::Borrowed(*s)).collect();
    names.push(Cow::Borrowed("trailer"));
    for v in headers.get_all(http::header::CONNECTION) {
        if let Ok(s) = v.to_str() {
            for token in s.split(',') {
                let t = token.trim().to_ascii_lowercase();
                // Never let a client make us drop the headers that frame the body.
                if !t.is_empty() && t != "content-length" && t != "transfer-encoding" {
                    names.push(Cow::Owned(t));
                }
            }
        }
    }
    names
}

/// A client-supplied request id is kept when it is short and plain; otherwise we make one, so
/// that logs cannot be injected into through it.
pub fn request_id(client: Option<&[u8]>) -> String {
    match client {
        Some(v)
            if !v.is_empty()
                && v.len() <= 128
                && v.iter()
                    .all(|c| c.is_ascii_alphanumeric() || b"-_.:".contains(c)) =>
        {
            String::from_utf8_lossy(v).into_owned()
        }
        _ => uuid::Uuid::new_v4().to_string(),
    }
}

/// Whether a `traceparent` value is a well-formed W3C trace context (version 00 layout).
pub fn is_valid_traceparent(v: &[u8]) -> bool {
    let Ok(s) = std::str::from_utf8(v) else {
        return false;
    };
    let parts: Vec<&str> = s.split('-').collect();
    let hex = |p: &str, n: usize| {
        p.len() == n
            && p.bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
    };
    parts.len() >= 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && parts[1].bytes().any(|c| c != b'0')
        && hex(parts[2], 16)
        && parts[2].bytes().any(|c| c != b'0')
        && hex(parts[3], 2)
}

/// A new sampled trace context for a request that arrived without one. Random bits of two v4
/// UUIDs: never all zero, as the W3C format requires.
pub fn new_traceparent() -> String {
    let trace = uuid::Uuid::new_v4().as_u128();
    let span = uuid::Uuid::new_v4().as_u64_pair().1;
    format!("00-{trace:032x}-{span:016x}-01")
}

/// The media type of a `Content-Type` value, lower-cased and without parameters.
pub fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// Bytes of a request head as counted against the configured limit.
pub fn head_size(headers: &HeaderMap, target_len: usize) -> usize {
    target_len
        + headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_listed_headers_are_hop_by_hop() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            "keep-alive, X-Secret, Content-Length".parse().unwrap(),
        );
        let names = hop_by_hop_names(&h);
        assert!(names.iter().any(|n| n == "x-secret"));
        assert!(names.iter().any(|n| n == "proxy-authorization"));
        assert!(!names.iter().any(|n| n == "content-length"));
    }

    #[test]
    fn request_ids() {
        assert_eq!(request_id(Some(b"abc-123")), "abc-123");
        for bad in [&b""[..], b"a b", b"x\r\ny", &[b'a'; 129][..]] {
            let id = request_id(Some(bad));
            assert_eq!(id.len(), 36, "{bad:?}");
        }
        assert_ne!(request_id(None), request_id(None));
    }

    #[test]
    fn traceparents() {
        assert!(is_valid_traceparent(
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        assert!(!is_valid_traceparent(
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"
        ));
        assert!(!is_valid_traceparent(b"garbage"));
        assert!(is_valid_traceparent(new_traceparent().as_bytes()));
    }
}
