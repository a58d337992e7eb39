//! Route matching and request-target normalisation (`rungateway::routes`).
//!
//! Input: one byte choosing the method, then the request target (UTF-8) exactly as it would
//! appear on the request line. Invariants checked:
//! - `split_target`: the path has no `?`/`#`, the query no `#`; an origin-form target keeps its
//!   path as a prefix; an absolute-form target loses its origin (path starts with `/`).
//! - `match_route` Ok: the path is exactly one of the six operations for that method, built from
//!   `/v1/` and the returned run id; a run id is one segment that stays one segment and never
//!   becomes a dot segment however many times it is percent-decoded.
//! - `match_route` Err: 404, or 405 with an `Allow` method for which the same path matches.
//! - `is_valid_run_id_segment` true on any string: the same single-segment guarantee.
#![no_main]

use libfuzzer_sys::fuzz_target;
use percent_encoding::percent_decode;
use rungateway::routes::{is_valid_run_id_segment, match_route, split_target, Operation};

const METHODS: [&str; 8] = [
    "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "get",
];

/// Independent of the code under test: what a server along the way could make of a segment.
fn assert_single_safe_segment(raw: &str) {
    assert!(!raw.is_empty(), "empty run id");
    assert!(raw.len() <= 512, "run id longer than 512 bytes");
    for c in raw.bytes() {
        assert!(
            !matches!(c, b'/' | b'\\' | b'?' | b'#' | b' ') && !c.is_ascii_control(),
            "raw run id {raw:?} contains {c:#x}"
        );
    }
    // Decode up to three times (a double-decoding proxy, then the coordinator's framework).
    let mut current = raw.as_bytes().to_vec();
    for round in 0..3 {
        let decoded: Vec<u8> = percent_decode(&current).collect();
        for c in &decoded {
            assert!(
                !matches!(c, b'/' | b'\\' | b'?' | b'#') && !c.is_ascii_control(),
                "run id {raw:?} decodes (round {round}) to {decoded:?}"
            );
        }
        assert!(
            decoded != b"." && decoded != b"..",
            "run id {raw:?} decodes (round {round}) to a dot segment"
        );
        if round == 0 {
            // One decoding must be final: no percent sign may survive it.
            assert!(!decoded.contains(&b'%'), "run id {raw:?} is double-encoded");
        }
        current = decoded;
    }
}

fn check_split(target: &str) -> &str {
    let (path, query) = split_target(target);
    assert!(
        !path.contains('?') && !path.contains('#'),
        "{target:?} -> path {path:?}"
    );
    if let Some(q) = query {
        assert!(!q.contains('#'), "{target:?} -> query {q:?}");
    }
    if target.starts_with("http://") || target.starts_with("https://") {
        assert!(
            path.starts_with('/'),
            "absolute {target:?} -> path {path:?}"
        );
    } else {
        assert!(target.starts_with(path), "{target:?} -> path {path:?}");
        let end = target.find(['?', '#']).unwrap_or(target.len());
        assert_eq!(
            path,
            &target[..end],
            "origin-form path must be kept verbatim"
        );
        if let Some(q) = query {
            assert!(target[end..].starts_with('?'));
            assert!(target[end + 1..].starts_with(q));
        }
    }
    path
}

fn check_route(method: &str, path: &str) {
    match match_route(method, path) {
        Ok(route) => {
            assert!(path.starts_with("/v1/"), "{method} {path:?} matched");
            let expected = match (route.op, route.run_id.as_deref()) {
                (Operation::Health, None) => ("GET", "/v1/health".to_string()),
                (Operation::Version, None) => ("GET", "/v1/version".to_string()),
                (Operation::StartRun, None) => ("POST", "/v1/runs".to_string()),
                (Operation::GetRun, Some(id)) => ("GET", format!("/v1/runs/{id}")),
                (Operation::CancelRun, Some(id)) => ("POST", format!("/v1/runs/{id}:cancel")),
                (Operation::StreamRunEvents, Some(id)) => ("GET", format!("/v1/runs/{id}/events")),
                other => panic!("{method} {path:?}: inconsistent route {other:?}"),
            };
            assert_eq!(expected.0, method, "{path:?} matched with the wrong method");
            assert_eq!(expected.1, path, "route does not rebuild the path");
            if let Some(id) = route.run_id.as_deref() {
                assert_single_safe_segment(id);
                assert!(is_valid_run_id_segment(id));
            }
        }
        Err(e) => match e.status {
            404 => {
                assert_eq!(e.code, "not_found");
                for m in ["GET", "POST"] {
                    let again =
                        match_route(m, path).expect_err("404 for one method, 2xx for another");
                    assert_eq!(again.status, 404, "{m} {path:?}");
                }
            }
            405 => {
                assert_eq!(e.code, "method_not_allowed");
                let allow = e
                    .headers
                    .iter()
                    .find(|(k, _)| *k == "Allow")
                    .map(|(_, v)| v.clone())
                    .expect("405 without Allow");
                assert_ne!(allow, method);
                assert!(
                    match_route(&allow, path).is_ok(),
                    "Allow: {allow} but {allow} {path:?} does not match"
                );
            }
            other => panic!("{method} {path:?}: unexpected status {other}"),
        },
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    let method = METHODS[(m & 7) as usize];
    let Ok(target) = std::str::from_utf8(rest) else {
        return;
    };
    let path = check_split(target);
    check_route(method, path);
    // The raw target too (a caller that forgot to split must still be safe).
    check_route(method, target);
    if is_valid_run_id_segment(target) {
        assert_single_safe_segment(target);
    }
});
