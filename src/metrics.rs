//! Request accounting: the access log line and the live counters the admin endpoint exposes.

use crate::config::AccessLog;
use serde_json::json;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What one finished request leaves behind. Never holds a token.
pub struct RequestRecord<'a> {
    pub request_id: &'a str,
    pub operation: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub duration: Duration,
    pub upstream: Option<&'a str>,
    pub bytes_out: u64,
    pub error: Option<&'a str>,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    active_streams: AtomicI64,
    connect_failures: AtomicU64,
}

#[derive(Clone, Default)]
pub struct Metrics {
    inner: Arc<Counters>,
}

/// Decrements the active-stream gauge when the stream's request ends, however it ends.
pub struct StreamGuard(Arc<Counters>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.active_streams.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    pub fn stream_opened(&self) -> StreamGuard {
        self.inner.active_streams.fetch_add(1, Ordering::Relaxed);
        StreamGuard(self.inner.clone())
    }

    pub fn active_streams(&self) -> i64 {
        self.inner.active_streams.load(Ordering::Relaxed)
    }

    pub fn upstream_connect_failure(&self, url: &str) {
        self.inner.connect_failures.fetch_add(1, Ordering::Relaxed);
        log::warn!("connection to coordinator {url} failed");
    }

    pub fn record(&self, r: &RequestRecord<'_>, format: AccessLog) {
        self.inner.requests.fetch_add(1, Ordering::Relaxed);
        let ms = r.duration.as_secs_f64() * 1000.0;
        match format {
            AccessLog::Off => {}
            AccessLog::Text => log::info!(
                target: "access",
                "{} {} {} {} {} {:.1}ms upstream={} bytes={}{}",
                r.request_id,
                r.operation,
                r.method,
                r.path,
                r.status,
                ms,
                r.upstream.unwrap_or("-"),
                r.bytes_out,
                r.error.map(|e| format!(" error={e}")).unwrap_or_default()
            ),
            AccessLog::Json => log::info!(
                target: "access",
                "{}",
                json!({
                    "request_id": r.request_id,
                    "operation": r.operation,
                    "method": r.method,
                    "path": r.path,
                    "status": r.status,
                    "duration_ms": (ms * 10.0).round() / 10.0,
                    "upstream": r.upstream,
                    "bytes": r.bytes_out,
                    "error": r.error,
                })
            ),
        }
    }
}
