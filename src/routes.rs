//! Route matching on the raw request target. Only the six Run Gateway operations exist; anything
//! else is answered by the gateway and never forwarded. Matching works on the path exactly as the
//! client sent it (still percent-encoded) because that is what the coordinator will receive: a
//! `run_id` that decodes to a slash or a dot segment could otherwise smuggle a request onto an
//! internal coordinator path.

use crate::errors::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    Health,
    Version,
    StartRun,
    GetRun,
    CancelRun,
    StreamRunEvents,
}

impl Operation {
    /// The spec's `operationId`, used in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Operation::Health => "health",
            Operation::Version => "version",
            Operation::StartRun => "start_run",
            Operation::GetRun => "get_run",
            Operation::CancelRun => "cancel_run",
            Operation::StreamRunEvents => "stream_run_events",
        }
    }

    /// Whether the operation is proxied to a coordinator (health and version are answered here).
    pub fn is_forwarded(self) -> bool {
        !matches!(self, Operation::Health | Operation::Version)
    }

    /// Safe to send twice: only these may be retried after their bytes reached a coordinator.
    pub fn is_idempotent(self) -> bool {
        matches!(self, Operation::GetRun | Operation::StreamRunEvents)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub op: Operation,
    /// The run id as it appears in the path (still percent-encoded), when the route has one.
    pub run_id: Option<String>,
}

const CANCEL_SUFFIX: &str = ":cancel";

/// Matches a method and a raw request path (no query) against the six operations.
pub fn match_route(method: &str, path: &str) -> Result<Route, ApiError> {
    let (allow, op, run_id) = match path {
        "/v1/health" => ("GET", Operation::Health, None),
        "/v1/version" => ("GET", Operation::Version, None),
        "/v1/runs" => ("POST", Operation::StartRun, None),
        _ => {
            let rest = path
                .strip_prefix("/v1/runs/")
                .ok_or_else(ApiError::not_found)?;
            let (segment, op, allow) = match rest.split_once('/') {
                Some((seg, "events")) => (seg, Operation::StreamRunEvents, "GET"),
                Some(_) => return Err(ApiError::not_found()),
                None => match rest.strip_suffix(CANCEL_SUFFIX) {
                    Some(seg) => (seg, Operation::CancelRun, "POST"),
                    None => (rest, Operation::GetRun, "GET"),
                },
            };
            if !is_valid_run_id_segment(segment) {
                return Err(ApiError::not_found());
            }
            (allow, op, Some(segment.to_string()))
        }
    };
    if method != allow {
        return Err(ApiError::method_not_allowed(allow));
    }
    Ok(Route { op, run_id })
}

/// A run id must stay one opaque path segment after any decoding a server along the way might
/// apply: no (encoded) slash or backslash, not a dot segment, no control characters, and only
/// well-formed percent escapes.
pub fn is_valid_run_id_segment(raw: &str) -> bool {
    if raw.is_empty() || raw.len() > 512 {
        return false;
    }
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                Some(v) => decoded.push(v),
                None => return false,
            }
            i += 3;
        } else {
            decoded.push(b);
            i += 1;
        }
    }
    let forbidden = |c: &u8| matches!(c, b'/' | b'\\' | b'?' | b'#') || c.is_ascii_control();
    if decoded.iter().any(forbidden) || bytes.iter().any(|c| *c == b' ' || c.is_ascii_control()) {
        return false;
    }
    // A segment that still decodes further (double encoding, "%252F") would let a second
    // decoding pass turn it into a slash; refuse percent signs in the decoded form.
    if decoded.contains(&b'%') {
        return false;
    }
    !matches!(decoded.as_slice(), b"." | b"..")
}

/// Splits a request target into path and query, normalising an absolute-form target
/// (`http://host/path`) to its path so that the host part never reaches the coordinator.
pub fn split_target(target: &str) -> (&str, Option<&str>) {
    let without_origin = if let Some(rest) = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    {
        rest.find('/').map(|i| &rest[i..]).unwrap_or("/")
    } else {
        target
    };
    let without_fragment = without_origin.split('#').next().unwrap_or_default();
    match without_fragment.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (without_fragment, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(method: &str, path: &str) -> Result<Operation, u16> {
        match_route(method, path)
            .map(|r| r.op)
            .map_err(|e| e.status)
    }

    #[test]
    fn the_six_operations() {
        assert_eq!(op("GET", "/v1/health"), Ok(Operation::Health));
        assert_eq!(op("GET", "/v1/version"), Ok(Operation::Version));
        assert_eq!(op("POST", "/v1/runs"), Ok(Operation::StartRun));
        assert_eq!(op("GET", "/v1/runs/r1"), Ok(Operation::GetRun));
        assert_eq!(op("POST", "/v1/runs/r1:cancel"), Ok(Operation::CancelRun));
        assert_eq!(
            op("GET", "/v1/runs/r1/events"),
            Ok(Operation::StreamRunEvents)
        );
        let r = match_route("POST", "/v1/runs/abc:cancel").unwrap();
        assert_eq!(r.run_id.as_deref(), Some("abc"));
        // Only `:cancel` is a custom method here; any other colon is part of an opaque run id
        // (the coordinator has no `/v1/runs/{id}:evaluation`; that is a node-run path).
        let r = match_route("GET", "/v1/runs/r1:evaluation").unwrap();
        assert_eq!(r.run_id.as_deref(), Some("r1:evaluation"));
    }

    #[test]
    fn wrong_method_is_405_with_allow() {
        let e = match_route("DELETE", "/v1/runs/r1").unwrap_err();
        assert_eq!(e.status, 405);
        assert_eq!(e.headers, vec![("Allow", "GET".to_string())]);
        assert_eq!(op("GET", "/v1/runs"), Err(405));
        assert_eq!(op("GET", "/v1/runs/r1:cancel"), Err(405));
        assert_eq!(op("POST", "/v1/health"), Err(405));
        assert_eq!(op("HEAD", "/v1/version"), Err(405));
    }

    #[test]
    fn unknown_and_internal_paths_are_404() {
        for p in [
            "/",
            "/v1",
            "/v1/runs/",
            "/v1/runs//events",
            "/v1/runs/:cancel",
            "/v1/runs/r1/",
            "/v1/runs/r1/events/",
            "/v1/runs/r1/node-runs",
            "/v1/node-runs/n1",
            "/v1/node-runs/n1:complete",
            "/v2/runs",
            "//v1/runs",
            "/v1/health/",
        ] {
            let got = op("GET", p).or_else(|_| op("POST", p));
            assert_eq!(got, Err(404), "{p}");
        }
    }

    #[test]
    fn encoded_slashes_and_dot_segments_cannot_escape() {
        for seg in [
            "%2F", "a%2Fb", "a%2fb", "%5C", "..", ".", "%2e%2e", "%2E", ".%2e", "%252F", "a%2",
            "a%zz", "a%00", "a\\b", "%3F", "%23",
        ] {
            assert!(!is_valid_run_id_segment(seg), "{seg}");
            assert_eq!(op("GET", &format!("/v1/runs/{seg}")), Err(404), "{seg}");
            assert_eq!(
                op("GET", &format!("/v1/runs/{seg}/events")),
                Err(404),
                "{seg}"
            );
        }
        for seg in ["run-1", "a.b", "...", "a%20b", "ünï", "a:b", "run_01HX"] {
            assert!(is_valid_run_id_segment(seg), "{seg}");
        }
    }

    #[test]
    fn targets_split_and_lose_their_origin() {
        assert_eq!(split_target("/v1/runs?x=1"), ("/v1/runs", Some("x=1")));
        assert_eq!(split_target("http://evil/v1/runs/a"), ("/v1/runs/a", None));
        assert_eq!(split_target("http://evil"), ("/", None));
        assert_eq!(split_target("/v1/health#frag"), ("/v1/health", None));
    }
}
