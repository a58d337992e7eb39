//! The gateway's own error answers. Every error the gateway produces itself is an
//! `ErrorEnvelope` (`{"error": {code, message, details?, retryable?}}`); coordinator errors are
//! never rewritten.

use serde_json::{json, Map, Value};

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    pub details: Option<Map<String, Value>>,
    pub retryable: Option<bool>,
    /// Extra response headers (`WWW-Authenticate`, `Allow`, `Retry-After`).
    pub headers: Vec<(&'static str, String)>,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            details: None,
            retryable: None,
            headers: Vec::new(),
        }
    }

    pub fn detail(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details
            .get_or_insert_with(Map::new)
            .insert(key.to_string(), value.into());
        self
    }

    pub fn retryable(mut self, retryable: bool) -> Self {
        self.retryable = Some(retryable);
        self
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn not_found() -> Self {
        ApiError::new(404, "not_found", "Not Found")
    }

    pub fn method_not_allowed(allow: &'static str) -> Self {
        ApiError::new(405, "method_not_allowed", "Method Not Allowed").header("Allow", allow)
    }

    pub fn invalid_request(errors: Vec<String>) -> Self {
        ApiError::new(400, "invalid_request", "Request validation failed").detail("errors", errors)
    }

    pub fn payload_too_large(limit: usize) -> Self {
        ApiError::new(413, "payload_too_large", "Request body too large").detail("max_bytes", limit)
    }

    pub fn headers_too_large(limit: usize) -> Self {
        ApiError::new(
            431,
            "request_header_fields_too_large",
            "Request header fields too large",
        )
        .detail("max_bytes", limit)
    }

    /// 401 with the RFC 6750 challenge. `error` is `invalid_request` for a missing or
    /// malformed header and `invalid_token` for a token that failed verification.
    pub fn unauthorized(error: &'static str, message: &str) -> Self {
        ApiError::new(401, "unauthorized", message).header(
            "WWW-Authenticate",
            format!(
                "Bearer error=\"{error}\", error_description=\"{}\"",
                message.replace(['"', '\\'], "")
            ),
        )
    }

    pub fn coordinator_unavailable(status: u16, url: Option<&str>, error: &str) -> Self {
        let mut e = ApiError::new(
            status,
            "run_coordinator_unavailable",
            "Run coordinator unavailable",
        )
        .detail("error", error)
        .retryable(true);
        if let Some(url) = url {
            e = e.detail("run_coordinator_url", url);
        }
        e
    }

    pub fn coordinator_timeout(url: Option<&str>) -> Self {
        let mut e = ApiError::new(504, "run_coordinator_timeout", "Run coordinator timed out")
            .retryable(true);
        if let Some(url) = url {
            e = e.detail("run_coordinator_url", url);
        }
        e
    }

    pub fn internal() -> Self {
        ApiError::new(500, "internal_error", "Internal server error")
    }

    pub fn envelope(&self) -> Value {
        let mut err = Map::new();
        err.insert("code".into(), json!(self.code));
        err.insert("message".into(), json!(self.message));
        if let Some(d) = &self.details {
            err.insert("details".into(), Value::Object(d.clone()));
        }
        if let Some(r) = self.retryable {
            err.insert("retryable".into(), json!(r));
        }
        json!({ "error": Value::Object(err) })
    }

    pub fn body(&self) -> Vec<u8> {
        // Serialising a Value built from strings and numbers cannot fail.
        serde_json::to_vec(&self.envelope()).unwrap_or_default()
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_omits_absent_fields() {
        let v = ApiError::not_found().envelope();
        assert_eq!(
            v,
            json!({"error": {"code": "not_found", "message": "Not Found"}})
        );
        let v = ApiError::coordinator_unavailable(502, Some("http://c"), "refused").envelope();
        assert_eq!(v["error"]["retryable"], json!(true));
        assert_eq!(
            v["error"]["details"]["run_coordinator_url"],
            json!("http://c")
        );
    }

    #[test]
    fn unauthorized_has_challenge() {
        let e = ApiError::unauthorized("invalid_token", "Token expired");
        assert_eq!(e.status, 401);
        assert_eq!(
            e.headers,
            vec![(
                "WWW-Authenticate",
                "Bearer error=\"invalid_token\", error_description=\"Token expired\"".to_string()
            )]
        );
    }
}
