//! Request accounting: the access log line and the Prometheus metrics the admin listener serves.
//! Counters owned by other parts (token cache, JWKS, coordinator health) are read at scrape time
//! from their owners rather than duplicated here.

use crate::config::AccessLog;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};
use serde_json::json;
use std::fmt::Write as _;
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
    /// Time from sending to the coordinator until its response head, when one came.
    pub upstream_latency: Option<Duration>,
    pub bytes_out: u64,
    pub error: Option<&'a str>,
}

struct Inner {
    registry: Registry,
    requests: IntCounterVec,
    upstream_latency: HistogramVec,
    active_streams: IntGauge,
    connect_failures: IntCounterVec,
}

#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

/// Values sampled from other components at scrape time.
#[derive(Debug, Default, Clone)]
pub struct Sampled {
    pub token_cache_hits: u64,
    pub token_cache_misses: u64,
    pub sts_calls: u64,
    pub sts_errors: u64,
    pub jwks_fetches: u64,
    /// (coordinator URL, healthy)
    pub coordinators: Vec<(String, bool)>,
    pub in_flight: usize,
    pub open_connections: usize,
    pub connections_refused: u64,
    pub header_timeouts: u64,
}

/// Decrements the active-stream gauge when the stream's request ends, however it ends.
pub struct StreamGuard(IntGauge);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new_custom(Some("arp_gateway".into()), None)
            .unwrap_or_else(|_| Registry::new());
        // Metric definitions are static; construction only fails on invalid names.
        let requests = IntCounterVec::new(
            Opts::new("requests_total", "Requests by operation and status"),
            &["operation", "status"],
        )
        .expect("static metric definition");
        let upstream_latency = HistogramVec::new(
            HistogramOpts::new(
                "upstream_response_seconds",
                "Time from forwarding to the coordinator's response head",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["operation"],
        )
        .expect("static metric definition");
        let active_streams = IntGauge::new("active_streams", "Event streams being relayed")
            .expect("static metric definition");
        let connect_failures = IntCounterVec::new(
            Opts::new(
                "upstream_connect_failures_total",
                "Failed connections to coordinators",
            ),
            &["coordinator"],
        )
        .expect("static metric definition");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(upstream_latency.clone()),
            Box::new(active_streams.clone()),
            Box::new(connect_failures.clone()),
        ] {
            let _ = registry.register(c);
        }
        Metrics {
            inner: Arc::new(Inner {
                registry,
                requests,
                upstream_latency,
                active_streams,
                connect_failures,
            }),
        }
    }

    pub fn stream_opened(&self) -> StreamGuard {
        self.inner.active_streams.inc();
        StreamGuard(self.inner.active_streams.clone())
    }

    pub fn active_streams(&self) -> i64 {
        self.inner.active_streams.get()
    }

    pub fn upstream_connect_failure(&self, url: &str) {
        self.inner.connect_failures.with_label_values(&[url]).inc();
        log::warn!("connection to coordinator {url} failed");
    }

    pub fn record(&self, r: &RequestRecord<'_>, format: AccessLog) {
        let status = r.status.to_string();
        self.inner
            .requests
            .with_label_values(&[r.operation, status.as_str()])
            .inc();
        if let Some(l) = r.upstream_latency {
            self.inner
                .upstream_latency
                .with_label_values(&[r.operation])
                .observe(l.as_secs_f64());
        }
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
            AccessLog::Json => {
                let mut v = json!({
                    "request_id": r.request_id,
                    "operation": r.operation,
                    "method": r.method,
                    "path": r.path,
                    "status": r.status,
                    "duration_ms": (ms * 10.0).round() / 10.0,
                    "bytes": r.bytes_out,
                });
                if let Some(u) = r.upstream {
                    v["upstream"] = json!(u);
                }
                if let Some(e) = r.error {
                    v["error"] = json!(e);
                }
                log::info!(target: "access", "{v}");
            }
        }
    }

    /// The Prometheus text exposition: registered metrics plus the sampled ones.
    pub fn render(&self, s: &Sampled) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.inner.registry.gather(), &mut buf);
        let mut out = String::from_utf8(buf).unwrap_or_default();
        let mut sample = |kind: &str, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP arp_gateway_{name} {help}");
            let _ = writeln!(out, "# TYPE arp_gateway_{name} {kind}");
            let _ = writeln!(out, "arp_gateway_{name} {v}");
        };
        for (name, help, v) in [
            (
                "token_cache_hits_total",
                "Exchanged-token cache hits",
                s.token_cache_hits,
            ),
            (
                "token_cache_misses_total",
                "Exchanged-token cache misses",
                s.token_cache_misses,
            ),
            (
                "sts_calls_total",
                "Calls to the token endpoint",
                s.sts_calls,
            ),
            (
                "sts_errors_total",
                "Failed calls to the token endpoint",
                s.sts_errors,
            ),
            ("jwks_refreshes_total", "JWKS fetches", s.jwks_fetches),
            (
                "connections_refused_total",
                "Requests refused 503 because their connection was over limits.max_connections",
                s.connections_refused,
            ),
            (
                "header_read_timeouts_total",
                "Client connections dropped because a request head did not arrive in time",
                s.header_timeouts,
            ),
        ] {
            sample("counter", name, help, v);
        }
        sample(
            "gauge",
            "client_connections",
            "Open client connections",
            s.open_connections as u64,
        );
        sample(
            "gauge",
            "requests_in_flight",
            "Requests being handled",
            s.in_flight as u64,
        );
        let _ = writeln!(
            out,
            "# HELP arp_gateway_coordinator_up Whether health checks count the coordinator as up"
        );
        let _ = writeln!(out, "# TYPE arp_gateway_coordinator_up gauge");
        for (url, up) in &s.coordinators {
            let url = url.replace('\\', "\\\\").replace('"', "\\\"");
            let _ = writeln!(
                out,
                "arp_gateway_coordinator_up{{coordinator=\"{url}\"}} {}",
                u8::from(*up)
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_has_requests_streams_and_sampled_values() {
        let m = Metrics::new();
        let g = m.stream_opened();
        m.record(
            &RequestRecord {
                request_id: "r",
                operation: "get_run",
                method: "GET",
                path: "/v1/runs/x",
                status: 200,
                duration: Duration::from_millis(3),
                upstream: Some("http://c"),
                upstream_latency: Some(Duration::from_millis(2)),
                bytes_out: 10,
                error: None,
            },
            AccessLog::Off,
        );
        let text = m.render(&Sampled {
            token_cache_hits: 7,
            coordinators: vec![("http://c".into(), true)],
            ..Default::default()
        });
        assert!(
            text.contains("arp_gateway_requests_total{operation=\"get_run\",status=\"200\"} 1"),
            "{text}"
        );
        assert!(text.contains("arp_gateway_active_streams 1"));
        assert!(text.contains("arp_gateway_upstream_response_seconds_bucket"));
        assert!(text.contains("arp_gateway_token_cache_hits_total 7"));
        assert!(text.contains("arp_gateway_coordinator_up{coordinator=\"http://c\"} 1"));
        drop(g);
        assert_eq!(m.active_streams(), 0);
    }
}
