//! The one `ProxyHttp` implementation. Each hook stays short: the decisions live in plain
//! modules (`routes`, `validate`, `auth`, `upstream`, `headers`, `local`), this file only wires
//! them into Pingora's request path.

use crate::auth::exchange::TokenBroker;
use crate::auth::{Authenticator, Principal};
use crate::config::Config;
use crate::errors::ApiError;
use crate::headers;
use crate::local;
use crate::routes::{self, Operation, Route};
use crate::upstream::{Target, Upstreams};
use crate::{direct, events, validate};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Everything the hooks share; built once at startup.
pub struct State {
    pub cfg: Config,
    pub upstreams: Upstreams,
    pub auth: Arc<Authenticator>,
    pub broker: Arc<TokenBroker>,
    pub metrics: crate::metrics::Metrics,
    pub lifecycle: Arc<crate::lifecycle::Lifecycle>,
    pub connections: Arc<crate::connections::Connections>,
}

pub struct Gateway {
    pub state: Arc<State>,
}

/// Per-request state.
pub struct Ctx {
    start: Instant,
    pub request_id: String,
    pub route: Option<Route>,
    traceparent: Option<String>,
    principal: Option<Principal>,
    upstream_token: Option<Arc<str>>,
    pub(crate) tried: Vec<Target>,
    current: Option<Target>,
    response_started: bool,
    /// The answer the gateway gave itself (status), when it did.
    local_status: Option<u16>,
    /// An error decided in a hook, written by `fail_to_proxy`.
    pending: Option<ApiError>,
    stream_guard: Option<crate::metrics::StreamGuard>,
    stream_socket: Option<crate::lifecycle::StreamSocket>,
    in_flight: Option<crate::lifecycle::InFlight>,
    sent_upstream: Option<Instant>,
    upstream_latency: Option<Duration>,
    /// The coordinator refused our cached token once; the retry needs a fresh exchange.
    refresh_token: bool,
    token_retried: bool,
    /// The events answer has the JSON-string defect; `fail_to_proxy` refetches and repairs it.
    repair_refetch: bool,
}

impl Ctx {
    pub fn op(&self) -> Option<Operation> {
        self.route.as_ref().map(|r| r.op)
    }
}

/// A client trickling its body must not hold a worker forever.
const MAX_BODY_READ_TIME: Duration = Duration::from_secs(30);

fn custom_error(e: &ApiError) -> Box<Error> {
    Error::explain(ErrorType::HTTPStatus(e.status), e.code)
}

/// Writes a complete JSON answer (a local body or an error envelope).
async fn write_json(
    session: &mut Session,
    ctx: &mut Ctx,
    status: u16,
    extra: &[(&'static str, String)],
    body: Vec<u8>,
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(4 + extra.len()))?;
    resp.insert_header("Content-Type", "application/json")?;
    resp.insert_header("Content-Length", body.len().to_string())?;
    resp.insert_header("X-Request-Id", ctx.request_id.as_str())?;
    resp.insert_header("Cache-Control", "no-store")?;
    for (k, v) in extra {
        resp.insert_header(*k, v.as_str())?;
    }
    ctx.local_status = Some(status);
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::from(body)), true)
        .await?;
    Ok(())
}

async fn write_error(session: &mut Session, ctx: &mut Ctx, e: &ApiError) -> Result<()> {
    if e.status >= 500 {
        log::warn!("request {}: {} {}", ctx.request_id, e.status, e.code);
    }
    // A body we did not read would be parsed as the next request on this connection.
    if !session.is_body_done() {
        session.set_keepalive(None);
    }
    write_json(session, ctx, e.status, &e.headers, e.body()).await
}

/// Reads the start-run body, bounded in size and time. Retry buffering is switched on first so
/// that Pingora replays what we read (up to its 64 KiB buffer) to the coordinator.
async fn read_body(session: &mut Session, limit: usize) -> std::result::Result<Bytes, ApiError> {
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::payload_too_large(limit));
    }
    session.enable_retry_buffering();
    let mut buf = BytesMut::new();
    let read_all = async {
        while let Some(chunk) = session
            .read_request_body()
            .await
            .map_err(|_| ApiError::new(400, "invalid_request", "Could not read request body"))?
        {
            if buf.len() + chunk.len() > limit {
                return Err(ApiError::payload_too_large(limit));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(())
    };
    match tokio::time::timeout(MAX_BODY_READ_TIME, read_all).await {
        Ok(Ok(())) => Ok(buf.freeze()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ApiError::new(
            408,
            "request_timeout",
            "Request body not received in time",
        )),
    }
}

fn is_json_content_type(v: Option<&http::HeaderValue>) -> bool {
    match v.and_then(|v| v.to_str().ok()) {
        None => true,
        Some(ct) => {
            let mime = headers::media_type(ct);
            mime == "application/json"
                || (mime.starts_with("application/") && mime.ends_with("+json"))
        }
    }
}

/// The client's IP address, for X-Forwarded-For.
fn client_ip(session: &Session) -> Option<String> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip().to_string())
}

/// The request head a coordinator receives: hop-by-hop headers and the client's credentials
/// removed, the coordinator token, origin-form target, forwarding and tracing headers set.
/// Used by the proxy loop and by the gateway's own client (`direct`) alike.
pub(crate) fn prepare_upstream_request(
    req: &mut RequestHeader,
    ctx: &Ctx,
    client_ip: Option<&str>,
    coordinator: Option<&crate::config::Coordinator>,
) -> Result<()> {
    for name in headers::hop_by_hop_names(&req.headers) {
        req.remove_header(name.as_ref());
    }
    req.remove_header("authorization");
    if let Some(token) = &ctx.upstream_token {
        req.insert_header("Authorization", format!("Bearer {token}"))?;
    }
    // Origin-form target only: an absolute-form request must not carry its host upstream.
    if req.uri.scheme().is_some() || req.uri.authority().is_some() {
        let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
        let uri = target
            .parse::<http::Uri>()
            .or_err(ErrorType::InternalError, "bad target")?;
        req.set_uri(uri);
    }
    if let Some(c) = coordinator {
        req.insert_header("Host", format!("{}:{}", c.host, c.port))?;
    }
    if let Some(ip) = client_ip {
        let xff = match req
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
        {
            Some(prev) if !prev.trim().is_empty() => format!("{prev}, {ip}"),
            _ => ip.to_string(),
        };
        req.insert_header("X-Forwarded-For", xff)?;
    }
    req.insert_header("X-Forwarded-Proto", "http")?;
    req.insert_header("X-Request-Id", ctx.request_id.as_str())?;
    if let Some(tp) = &ctx.traceparent {
        req.insert_header("traceparent", tp.as_str())?;
    }
    if ctx.op() == Some(Operation::StreamRunEvents) {
        // Compressed streams are buffered by zlib on both sides; ask for identity.
        req.insert_header("Accept-Encoding", "identity")?;
    }
    Ok(())
}

impl Gateway {
    pub fn new(state: Arc<State>) -> Self {
        Gateway { state }
    }

    /// Everything `request_filter` decides, as one fallible function: `Ok(true)` when the
    /// gateway answered itself.
    async fn admit(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> std::result::Result<bool, ApiError> {
        let cfg = &self.state.cfg;
        if self
            .state
            .connections
            .refuse_if_over_limit(session.as_ref().stream())
        {
            // Refuse quickly rather than degrade everyone already being served.
            session.set_keepalive(None);
            return Err(
                ApiError::new(503, "overloaded", "Too many concurrent connections")
                    .retryable(true)
                    .header("Retry-After", "1"),
            );
        }
        let req = session.req_header();
        let target = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        if headers::head_size(&req.headers, target.len()) > cfg.max_header_bytes {
            return Err(ApiError::headers_too_large(cfg.max_header_bytes));
        }
        let (path, _query) = routes::split_target(target);
        let route = routes::match_route(req.method.as_str(), path)?;
        let op = route.op;
        let path = path.to_string();
        ctx.route = Some(route);

        let principal = if self.state.auth.is_exempt(&path) {
            None
        } else {
            let authz = session
                .req_header()
                .headers
                .get(http::header::AUTHORIZATION)
                .map(|v| v.as_bytes());
            Some(self.state.auth.authenticate(&path, authz).await?)
        };

        match op {
            Operation::Version => {
                let body = serde_json::to_vec(&local::version_body()).unwrap_or_default();
                write_json(session, ctx, 200, &[], body)
                    .await
                    .map_err(|_| ApiError::internal())?;
                return Ok(true);
            }
            Operation::Health => {
                let v = local::health_body(
                    &self.state.upstreams,
                    self.state.auth.identity_provider_check(),
                )
                .await;
                let body = serde_json::to_vec(&v).unwrap_or_default();
                write_json(session, ctx, 200, &[], body)
                    .await
                    .map_err(|_| ApiError::internal())?;
                return Ok(true);
            }
            _ => {}
        }

        let mut body = None;
        if op == Operation::StartRun {
            if !is_json_content_type(session.req_header().headers.get(http::header::CONTENT_TYPE)) {
                return Err(ApiError::new(
                    415,
                    "unsupported_media_type",
                    "Content-Type must be application/json",
                ));
            }
            let bytes = read_body(session, cfg.max_body_bytes).await?;
            validate::validate_run_start(&bytes).map_err(ApiError::invalid_request)?;
            body = Some(bytes);
        }

        let principal =
            principal.unwrap_or_else(|| Principal::Anonymous(cfg.auth.anonymous_subject.clone()));
        ctx.upstream_token = self.state.broker.upstream_token(&principal).await?;
        ctx.principal = Some(principal);

        if let Some(bytes) = body {
            if session.as_ref().retry_buffer_truncated() {
                let req = session.req_header().clone();
                let client_ip = client_ip(session);
                let answer = direct::send(
                    &self.state,
                    ctx,
                    &req,
                    client_ip.as_deref(),
                    Some(bytes),
                    None,
                )
                .await?;
                ctx.local_status = Some(answer.status);
                direct::write(session, ctx, answer)
                    .await
                    .map_err(|_| ApiError::internal())?;
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn map_proxy_error(&self, e: &Error, ctx: &Ctx) -> ApiError {
        if let Some(p) = &ctx.pending {
            return p.clone();
        }
        let url = ctx
            .current
            .map(|t| self.state.upstreams.coordinator(t.id).base_url.clone());
        if ctx.stream_socket.as_ref().is_some_and(|s| s.was_cut_idle()) {
            return ApiError::coordinator_timeout(url.as_deref());
        }
        let all_tried = self.state.upstreams.coordinators().len() > 1
            && self.state.upstreams.all_tried(&ctx.tried);
        match e.etype() {
            ErrorType::HTTPStatus(code) => ApiError::new(*code, "http_error", "Request failed"),
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                ApiError::coordinator_timeout(url.as_deref())
            }
            _ if e.esource() == &ErrorSource::Upstream => {
                let status = if all_tried { 503 } else { 502 };
                ApiError::coordinator_unavailable(status, url.as_deref(), e.etype().as_str())
            }
            _ => ApiError::internal(),
        }
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            start: Instant::now(),
            request_id: String::new(),
            route: None,
            traceparent: None,
            principal: None,
            upstream_token: None,
            tried: Vec::new(),
            current: None,
            response_started: false,
            local_status: None,
            pending: None,
            stream_guard: None,
            stream_socket: None,
            in_flight: None,
            sent_upstream: None,
            upstream_latency: None,
            refresh_token: false,
            token_retried: false,
            repair_refetch: false,
        }
    }

    async fn early_request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        ctx.in_flight = Some(self.state.lifecycle.enter());
        // Without a write timeout a client that stops reading would pin a stream forever.
        session.set_write_timeout(Some(self.state.cfg.client_write_timeout));
        let h = &session.req_header().headers;
        ctx.request_id = headers::request_id(h.get("x-request-id").map(|v| v.as_bytes()));
        ctx.traceparent = match h.get("traceparent") {
            Some(v) if headers::is_valid_traceparent(v.as_bytes()) => None,
            _ => Some(headers::new_traceparent()),
        };
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        match self.admit(session, ctx).await {
            Ok(answered) => Ok(answered),
            Err(e) => {
                write_error(session, ctx, &e).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let route = ctx.route.as_ref();
        let key = route
            .and_then(|r| r.run_id.as_deref())
            .unwrap_or("")
            .as_bytes();
        let streaming = ctx.op() == Some(Operation::StreamRunEvents);
        if ctx.refresh_token {
            // The retry after a refused token may go to the same coordinator again.
            ctx.tried.pop();
        }
        match self.state.upstreams.select(key, &ctx.tried) {
            Some(t) => {
                ctx.tried.push(t);
                ctx.current = Some(t);
                Ok(self.state.upstreams.peer(t, streaming))
            }
            None => {
                let e = ApiError::coordinator_unavailable(503, None, "no coordinator available");
                let err = custom_error(&e);
                ctx.pending = Some(e);
                Err(err)
            }
        }
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(t) = ctx.current {
            self.state.upstreams.eject(t);
            self.state
                .metrics
                .upstream_connect_failure(&self.state.upstreams.coordinator(t.id).base_url);
        }
        // Nothing reached the coordinator: any operation may go to another one.
        e.set_retry(!self.state.upstreams.all_tried(&ctx.tried));
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        _session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        e.retry.decide_reuse(client_reused);
        // A request whose bytes reached a coordinator is resent only when it is idempotent,
        // nothing of the answer has been relayed yet, and it is the first such retry.
        let idempotent = ctx.op().is_some_and(Operation::is_idempotent);
        if ctx.refresh_token {
            e.set_retry(true);
            return e;
        }
        if ctx.repair_refetch {
            e.set_retry(false);
            return e;
        }
        let may_retry = idempotent
            && !ctx.response_started
            && ctx.tried.len() < 2
            && !self.state.upstreams.all_tried(&ctx.tried);
        e.set_retry(may_retry || (e.retry() && idempotent && !ctx.response_started));
        e
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.sent_upstream = Some(Instant::now());
        if ctx.op() == Some(Operation::StreamRunEvents) {
            ctx.stream_socket = Some(self.state.lifecycle.register_stream(fd));
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if std::mem::take(&mut ctx.refresh_token) {
            if let Some(p) = &ctx.principal {
                match self.state.broker.upstream_token(p).await {
                    Ok(t) => ctx.upstream_token = t,
                    Err(e) => {
                        let err = custom_error(&e);
                        ctx.pending = Some(e);
                        return Err(err);
                    }
                }
            }
        }
        let client_ip = client_ip(session);
        let coordinator = ctx.current.map(|t| self.state.upstreams.coordinator(t.id));
        prepare_upstream_request(req, ctx, client_ip.as_deref(), coordinator)
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if resp.status.as_u16() == 401 && ctx.upstream_token.is_some() {
            // The coordinator refused a token we may have cached: never reuse it. An idempotent
            // call is retried once with a fresh exchange; a second 401 goes to the client.
            if let Some(p) = &ctx.principal {
                self.state.broker.invalidate(p);
            }
            let idempotent = ctx.op().is_some_and(Operation::is_idempotent);
            if idempotent && !ctx.token_retried {
                ctx.token_retried = true;
                ctx.refresh_token = true;
                let mut e = Error::explain(ErrorType::HTTPStatus(401), "coordinator refused token");
                e.set_retry(true);
                return Err(e);
            }
        }
        if ctx.op() == Some(Operation::StreamRunEvents)
            && self.state.cfg.repair_json_string_events
            && events::needs_repair(resp)
        {
            // The content type can only be decided after the whole body is seen, but Pingora
            // writes the head first: drop this attempt and fetch the (small, already complete)
            // answer with our own client in `fail_to_proxy` instead.
            ctx.repair_refetch = true;
            return Err(Error::explain(
                ErrorType::HTTPStatus(200),
                "events answer needs the JSON-string repair",
            ));
        }
        if !resp.status.is_informational() {
            ctx.response_started = true;
            ctx.upstream_latency = ctx.sent_upstream.map(|t| t.elapsed());
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        for name in headers::hop_by_hop_names(&resp.headers) {
            resp.remove_header(name.as_ref());
        }
        resp.insert_header("X-Request-Id", ctx.request_id.as_str())?;
        if ctx.op() == Some(Operation::StreamRunEvents) {
            // Proxies further along must not buffer (or cache) the stream either.
            resp.insert_header("X-Accel-Buffering", "no")?;
            resp.insert_header("Cache-Control", "no-cache")?;
            // Pingora closes the client connection when the coordinator fails mid-stream (after
            // `fail_to_proxy` has ended the body cleanly), whatever the head said. Announcing the
            // close up front keeps a client from sending its next request into that socket; a
            // stream lasts far longer than the connect it costs.
            session.set_keepalive(None);
            if resp.status.is_success() {
                // A Content-Length body is flushed only at its end (PINGORA-NOTES): relay it
                // chunked so every line goes out as it arrives.
                resp.remove_header("Content-Length");
                resp.insert_header("Transfer-Encoding", "chunked")?;
                ctx.stream_guard = Some(self.state.metrics.stream_opened());
            }
        }
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        if let Some(s) = &ctx.stream_socket {
            s.touch();
        }
        Ok(None)
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let downstream_gone = e.esource() == &ErrorSource::Downstream
            && matches!(
                e.etype(),
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed
            );
        if downstream_gone {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        if ctx.repair_refetch && session.response_written().is_none() {
            let req = session.req_header().clone();
            let client_ip = client_ip(session);
            let pinned = ctx.current;
            let answer = direct::send(&self.state, ctx, &req, client_ip.as_deref(), None, pinned)
                .await
                .map(events::repair_answer);
            let status = match answer {
                Ok(a) => {
                    let status = a.status;
                    ctx.local_status = Some(status);
                    if direct::write(session, ctx, a).await.is_err() {
                        return FailToProxy {
                            error_code: 0,
                            can_reuse_downstream: false,
                        };
                    }
                    status
                }
                Err(api) => {
                    if write_error(session, ctx, &api).await.is_err() {
                        return FailToProxy {
                            error_code: 0,
                            can_reuse_downstream: false,
                        };
                    }
                    api.status
                }
            };
            return FailToProxy {
                error_code: status,
                can_reuse_downstream: false,
            };
        }
        if session.response_written().is_some() {
            // Mid-stream failure: end the chunked body cleanly so the client sees the end and
            // can reconnect, rather than a torn connection.
            let _ = session.write_response_body(None, true).await;
            let code = session
                .response_written()
                .map(|r| r.status.as_u16())
                .unwrap_or(0);
            return FailToProxy {
                error_code: code,
                can_reuse_downstream: false,
            };
        }
        let api = self.map_proxy_error(e, ctx);
        // Pingora does not reuse the connection after this; say so, so that a client does not
        // send its next request into a socket about to close.
        session.set_keepalive(None);
        if write_error(session, ctx, &api).await.is_err() {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        FailToProxy {
            error_code: api.status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let status = ctx
            .local_status
            .or_else(|| session.response_written().map(|r| r.status.as_u16()))
            .unwrap_or(0);
        let upstream = ctx
            .current
            .map(|t| self.state.upstreams.coordinator(t.id).base_url.as_str());
        let record = crate::metrics::RequestRecord {
            request_id: &ctx.request_id,
            operation: ctx.op().map(Operation::name).unwrap_or("unmatched"),
            method: session.req_header().method.as_str(),
            path: session.req_header().uri.path(),
            status,
            duration: ctx.start.elapsed(),
            upstream,
            upstream_latency: ctx.upstream_latency,
            bytes_out: session.as_ref().body_bytes_sent() as u64,
            error: e.map(|e| e.etype().as_str()),
        };
        self.state
            .metrics
            .record(&record, self.state.cfg.access_log);
        ctx.stream_guard.take();
        ctx.stream_socket.take();
        ctx.in_flight.take();
    }
}
