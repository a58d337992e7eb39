//! The admin listener: `/livez`, `/readyz` and `/metrics`, apart from the public port (which
//! exposes only the spec's six operations). Probes never look at coordinators or the identity
//! provider: every replica shares those, and a probe that followed them would take every
//! replica out of its Service at once.

use crate::metrics::Sampled;
use crate::proxy::State;
use async_trait::async_trait;
use http::Response;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct Admin {
    pub state: Arc<State>,
}

fn text(status: u16, content_type: &str, body: String) -> Response<Vec<u8>> {
    let body = body.into_bytes();
    Response::builder()
        .status(status)
        .header("Content-Type", content_type)
        .header("Content-Length", body.len())
        .header("Cache-Control", "no-store")
        .body(body)
        .unwrap_or_default()
}

impl Admin {
    pub fn sample(&self) -> Sampled {
        let s = &self.state;
        let (hits, misses, calls, errors) = s.broker.stats();
        Sampled {
            token_cache_hits: hits,
            token_cache_misses: misses,
            sts_calls: calls,
            sts_errors: errors,
            jwks_fetches: s.auth.jwks_fetches(),
            coordinators: s
                .upstreams
                .coordinators()
                .iter()
                .enumerate()
                .map(|(i, c)| (c.base_url.clone(), s.upstreams.is_healthy(i)))
                .collect(),
            in_flight: s.lifecycle.in_flight(),
            open_connections: s.connections.open(),
            connections_refused: s.connections.refused(),
            header_timeouts: s.connections.head_timeouts(),
        }
    }

    pub fn answer(&self, method: &str, path: &str) -> Response<Vec<u8>> {
        if method != "GET" {
            return text(405, "text/plain", "method not allowed\n".into());
        }
        match path {
            "/livez" => text(200, "text/plain", "ok\n".into()),
            "/readyz" if self.state.lifecycle.is_ready() => {
                text(200, "text/plain", "ready\n".into())
            }
            "/readyz" if self.state.lifecycle.is_draining() => {
                text(503, "text/plain", "shutting down\n".into())
            }
            "/readyz" => text(503, "text/plain", "starting\n".into()),
            "/metrics" => text(
                200,
                "text/plain; version=0.0.4",
                self.state.metrics.render(&self.sample()),
            ),
            _ => text(404, "text/plain", "not found\n".into()),
        }
    }
}

/// Longest request head the admin listener reads; probes and scrapes send a few hundred bytes.
const MAX_HEAD: usize = 8 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads one request head and answers it, then closes: enough for probes and scrapers, and
/// small enough to reason about. A plain tokio listener rather than a Pingora service so that
/// it keeps answering (`/readyz` 503) while the public listener drains.
async fn serve_one(admin: Arc<Admin>, mut sock: TcpStream) {
    let mut buf = Vec::with_capacity(512);
    let head_end = tokio::time::timeout(READ_TIMEOUT, async {
        let mut chunk = [0u8; 1024];
        loop {
            let n = sock.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                return Some(i);
            }
            if buf.len() > MAX_HEAD {
                return None;
            }
        }
    })
    .await;
    let Ok(Some(end)) = head_end else {
        return;
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut parts = head.lines().next().unwrap_or_default().split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let resp = admin.answer(method, path);
    let mut out = format!("HTTP/1.1 {}\r\nConnection: close\r\n", resp.status());
    for (k, v) in resp.headers() {
        out.push_str(&format!("{}: {}\r\n", k, v.to_str().unwrap_or("")));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(resp.body());
    let _ = sock.write_all(&bytes).await;
    let _ = sock.shutdown().await;
}

/// Runs the admin listener until the process exits (deliberately not stopped by the shutdown
/// signal: readiness must be observable as 503 during the drain).
pub struct AdminService {
    pub admin: Arc<Admin>,
    pub listener: std::sync::Mutex<Option<std::net::TcpListener>>,
}

impl AdminService {
    /// Binds at startup so a bad address is a startup error, not a silent missing endpoint.
    /// SO_REUSEPORT lets the new process of a zero-downtime upgrade bind the same port while
    /// the old one still drains.
    pub fn bind(admin: Admin, addr: &str) -> Result<AdminService, crate::config::ConfigError> {
        use socket2::{Domain, Socket, Type};
        let fail = |e: std::io::Error| {
            crate::config::ConfigError(format!("admin.listen {addr:?}: cannot listen: {e}"))
        };
        let sockaddr: std::net::SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(addr)
            .map_err(fail)?
            .next()
            .ok_or_else(|| {
                crate::config::ConfigError(format!("admin.listen {addr:?}: no address"))
            })?;
        let socket =
            Socket::new(Domain::for_address(sockaddr), Type::STREAM, None).map_err(fail)?;
        socket.set_reuse_address(true).map_err(fail)?;
        socket.set_reuse_port(true).map_err(fail)?;
        socket.set_nonblocking(true).map_err(fail)?;
        socket.bind(&sockaddr.into()).map_err(fail)?;
        socket.listen(128).map_err(fail)?;
        Ok(AdminService {
            admin: Arc::new(admin),
            listener: std::sync::Mutex::new(Some(socket.into())),
        })
    }
}

#[async_trait]
impl BackgroundService for AdminService {
    async fn start(&self, _shutdown: ShutdownWatch) {
        let std_listener = self
            .listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some(listener) = std_listener.and_then(|l| TcpListener::from_std(l).ok()) else {
            log::error!("admin listener could not start");
            return;
        };
        loop {
            match listener.accept().await {
                Ok((sock, _)) => {
                    tokio::spawn(serve_one(self.admin.clone(), sock));
                }
                Err(e) => {
                    log::warn!("admin listener: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}
