//! `TestCoordinator`: a fake ARP Run Coordinator that the gateway under test forwards to.
//!
//! It is a real HTTP/1.1 server (axum) on `127.0.0.1`, served by a current-thread tokio runtime
//! on its own OS thread, so it keeps answering whatever the test itself is doing (a sync
//! `#[test]`, a `#[tokio::test]`, or a blocking wait on the gateway). Every request is recorded
//! exactly as received, and its behaviour can be switched at any time through shared state.
//!
//! Routing is done by hand on the *raw* path instead of with axum's router: the fake must see
//! `%2F` and `..` exactly as the gateway sent them, and anything that is not one of the six
//! known operations must land in the "leaked" catch-all rather than in a router 404/405.

use std::convert::Infallible;
use std::future::IntoFuture;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdTcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::Response;
use axum::serve::ListenerExt;
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::oneshot;

/// One request as the coordinator received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query exactly as they appeared on the request line (never decoded or normalised).
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When the handler started, i.e. when the request head had arrived.
    pub at: Instant,
}

impl Recorded {
    /// The first value of header `name` (case-insensitive), if present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body parsed as JSON; panics with the body text if it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "recorded body of {} {} is not JSON ({e}): {:?}",
                self.method,
                self.path,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// The switchable behaviour; read once per request so a request sees one consistent snapshot.
#[derive(Debug, Clone)]
struct Behaviour {
    events: usize,
    interval: Duration,
    fail: Option<(u16, Value)>,
    delay: Duration,
    health: String,
    content_length_events: bool,
    json_string_events: bool,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            events: 3,
            interval: Duration::ZERO,
            fail: None,
            delay: Duration::ZERO,
            health: "ok".to_string(),
            content_length_events: false,
            json_string_events: false,
        }
    }
}

/// State shared by the test thread and the server; it outlives `stop()`/`restart()`.
#[derive(Default)]
struct Shared {
    behaviour: Mutex<Behaviour>,
    requests: Mutex<Vec<Recorded>>,
    open_streams: AtomicUsize,
    next_run: AtomicUsize,
}

/// Lock a mutex even if a panicking test thread poisoned it: the data is plain test records.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A running server: the signal that ends it and the thread that owns its runtime.
struct Serving {
    stop: oneshot::Sender<()>,
    thread: JoinHandle<()>,
}

pub struct TestCoordinator {
    port: u16,
    shared: Arc<Shared>,
    serving: Mutex<Option<Serving>>,
}

impl TestCoordinator {
    /// Start on a fresh port. The socket is bound before this returns, so the coordinator is
    /// ready at once: early connections wait in the listen backlog, no polling needed.
    pub fn start() -> TestCoordinator {
        let listener =
            StdTcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind test coordinator");
        let port = listener.local_addr().expect("local_addr").port();
        // No gateway of this test binary may be given this port while the coordinator is
        // stopped.
        super::gateway::reserve_port(port);
        let shared = Arc::new(Shared::default());
        let serving = serve(listener, shared.clone());
        TestCoordinator {
            port,
            shared,
            serving: Mutex::new(Some(serving)),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Base URL without a trailing slash, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Every request received so far (including by the catch-all), in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.shared.requests).clone()
    }

    /// What reached the coordinator apart from the gateway's own health checks.
    pub fn forwarded(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path != "/v1/health")
            .collect()
    }

    pub fn last_request(&self) -> Option<Recorded> {
        lock(&self.shared.requests).last().cloned()
    }

    pub fn clear(&self) {
        lock(&self.shared.requests).clear();
    }

    /// Event streams currently being served; drops when the stream ends or the client goes away.
    pub fn open_streams(&self) -> usize {
        self.shared.open_streams.load(Ordering::SeqCst)
    }

    /// Each events request answers `n` RunEvent lines, `interval` apart (none before the first).
    pub fn set_events(&self, n: usize, interval: Duration) {
        let mut b = self.behaviour();
        b.events = n;
        b.interval = interval;
    }

    /// `Some((status, body))`: the four run routes answer that status and JSON body.
    /// Health, version and the catch-all are unaffected.
    pub fn set_fail(&self, fail: Option<(u16, Value)>) {
        self.behaviour().fail = fail;
    }

    /// Sleep this long (after recording) before answering any known route.
    pub fn set_delay(&self, delay: Duration) {
        self.behaviour().delay = delay;
    }

    /// The `status` field of `GET /v1/health` ("ok", "degraded", "down"); the code stays 200.
    pub fn set_health(&self, status: &str) {
        self.behaviour().health = status.to_string();
    }

    /// Send event streams with a `Content-Length` (still paced line by line) instead of chunked.
    pub fn set_content_length_events(&self, on: bool) {
        self.behaviour().content_length_events = on;
    }

    /// Answer events with `200 application/json` whose body is the NDJSON text as one JSON
    /// string, like a buggy real coordinator does.
    pub fn set_json_string_events(&self, on: bool) {
        self.behaviour().json_string_events = on;
    }

    /// Stop listening and drop every open connection; in-flight streams are cut. When this
    /// returns, connections to the port are refused. Idempotent.
    pub fn stop(&self) {
        let serving = lock(&self.serving).take();
        if let Some(Serving { stop, thread }) = serving {
            // The thread may already be gone if the server died; the join surfaces a panic.
            let _ = stop.send(());
            thread.join().expect("test coordinator thread panicked");
        }
    }

    /// Listen again on the same port, with recorded requests and behaviour retained.
    /// Stops first if still running.
    pub fn restart(&self) {
        self.stop();
        let listener = rebind(self.port).expect("re-bind test coordinator port");
        *lock(&self.serving) = Some(serve(listener, self.shared.clone()));
    }

    fn behaviour(&self) -> MutexGuard<'_, Behaviour> {
        lock(&self.shared.behaviour)
    }
}

impl Drop for TestCoordinator {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Bind the old port again. std sets SO_REUSEADDR on Unix, so the TIME_WAIT sockets left by
/// `stop()` do not block us; the short retry only covers the kernel finishing the old close.
fn rebind(port: u16) -> io::Result<StdTcpListener> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match StdTcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// Serve `listener` on a new thread with its own current-thread runtime. On stop, the runtime
/// is dropped, which drops every connection task and so closes their sockets: that is what
/// gives `stop()` its "connections cut" semantics (graceful shutdown would wait for them).
fn serve(listener: StdTcpListener, shared: Arc<Shared>) -> Serving {
    listener.set_nonblocking(true).expect("set_nonblocking");
    let port = listener.local_addr().expect("local_addr").port();
    let (stop, stopped) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name(format!("test-coordinator-{port}"))
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("build coordinator runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("from_std");
                // No Nagle: each NDJSON line must leave as soon as it is written, or the
                // timing assertions measure delayed ACKs instead of the gateway.
                let listener = listener.tap_io(|tcp| {
                    let _ = tcp.set_nodelay(true);
                });
                let app = Router::new().fallback(handle).with_state(shared);
                let server = axum::serve(listener, app).into_future();
                // A dropped sender (coordinator dropped) also stops the server.
                tokio::select! {
                    _ = server => {}
                    _ = stopped => {}
                }
            });
            drop(rt);
        })
        .expect("spawn test coordinator thread");
    Serving { stop, thread }
}

/// The operations the fake knows, recognised on the raw (undecoded) path.
#[derive(Debug, PartialEq)]
enum Route {
    Health,
    Version,
    StartRun,
    GetRun(String),
    CancelRun(String),
    Events(String),
    Leaked,
}

impl Route {
    fn parse(method: &Method, path: &str) -> Route {
        match (method.as_str(), path) {
            ("GET", "/v1/health") => return Route::Health,
            ("GET", "/v1/version") => return Route::Version,
            ("POST", "/v1/runs") => return Route::StartRun,
            _ => {}
        }
        let Some(rest) = path.strip_prefix("/v1/runs/") else {
            return Route::Leaked;
        };
        let run_id = |raw: &str| (!raw.is_empty() && !raw.contains('/')).then(|| decode(raw));
        let route = match method.as_str() {
            "POST" => rest
                .strip_suffix(":cancel")
                .and_then(run_id)
                .map(Route::CancelRun),
            "GET" => match rest.strip_suffix("/events") {
                Some(raw) => run_id(raw).map(Route::Events),
                None => run_id(rest).map(Route::GetRun),
            },
            _ => None,
        };
        route.unwrap_or(Route::Leaked)
    }

    fn is_run_route(&self) -> bool {
        !matches!(self, Route::Health | Route::Version | Route::Leaked)
    }
}

fn decode(raw: &str) -> String {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8_lossy()
        .into_owned()
}

async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let at = Instant::now();
    let (parts, body) = req.into_parts();
    // A client that hangs up mid-body still gets recorded, with what arrived.
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.to_string(), |pq| pq.as_str().to_string());
    let route = Route::parse(&parts.method, parts.uri.path());
    lock(&shared.requests).push(Recorded {
        method: parts.method.to_string(),
        path,
        headers: parts.headers,
        body: body.clone(),
        at,
    });

    let behaviour = lock(&shared.behaviour).clone();
    if route == Route::Leaked {
        return json_response(StatusCode::OK, &json!({ "leaked": true }));
    }
    if !behaviour.delay.is_zero() {
        tokio::time::sleep(behaviour.delay).await;
    }
    if let (true, Some((status, fail_body))) = (route.is_run_route(), &behaviour.fail) {
        let status = StatusCode::from_u16(*status).expect("set_fail: invalid status code");
        return json_response(status, fail_body);
    }
    match route {
        Route::Health => json_response(
            StatusCode::OK,
            &json!({ "status": behaviour.health, "time": now_rfc3339() }),
        ),
        Route::Version => json_response(
            StatusCode::OK,
            &json!({
                "service_name": "test-coordinator",
                "service_version": "0.0.0-test",
                "supported_api_versions": ["v1"],
            }),
        ),
        Route::StartRun => start_run(&shared, &body),
        Route::GetRun(run_id) => json_response(StatusCode::OK, &run_json(&run_id, "running")),
        Route::CancelRun(run_id) => json_response(StatusCode::OK, &run_json(&run_id, "canceled")),
        Route::Events(run_id) => events_response(&shared, &behaviour, &run_id),
        Route::Leaked => unreachable!("answered above"),
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .expect("valid response")
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// A schema-valid Run (core/run.schema.json: no nulls, no unknown keys).
fn run_json(run_id: &str, state: &str) -> Value {
    json!({
        "run_id": run_id,
        "state": state,
        "root_node_run_id": format!("{run_id}.root"),
        "started_at": now_rfc3339(),
    })
}

/// Echo a Run for a RunStartRequest. Run has no `root_node_type_ref` property, so the echo goes
/// under a namespaced extension key (the only schema-valid place for it).
fn start_run(shared: &Shared, body: &[u8]) -> Response {
    let request: Value = match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            let error = json!({ "error": {
                "code": "invalid_request",
                "message": "test coordinator: body is not a JSON object",
            }});
            return json_response(StatusCode::BAD_REQUEST, &error);
        }
    };
    let run_id = match request.get("run_id").and_then(Value::as_str) {
        Some(id) => id.to_string(),
        None => format!("run-{}", shared.next_run.fetch_add(1, Ordering::SeqCst) + 1),
    };
    let mut run = run_json(&run_id, "running");
    if let Some(ctx @ Value::Object(_)) = request.get("run_context") {
        run["run_context"] = ctx.clone();
    }
    if let Some(node_type @ Value::Object(_)) = request.get("root_node_type_ref") {
        run["extensions"] = json!({ "arp_test.root_node_type_ref": node_type });
    }
    json_response(StatusCode::OK, &run)
}

/// `n` schema-valid RunEvent lines, each ending in `\n`.
fn event_lines(run_id: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|seq| {
            let mut event = json!({ "run_id": run_id, "seq": seq, "time": now_rfc3339() });
            if seq == 0 {
                event["type"] = json!("run_started");
            } else if seq + 1 == n {
                event["type"] = json!("run_completed");
            } else {
                event["type"] = json!("node_run_assigned");
                event["node_run_id"] = json!(format!("{run_id}.node-{seq}"));
            }
            format!("{event}\n")
        })
        .collect()
}

fn events_response(shared: &Arc<Shared>, behaviour: &Behaviour, run_id: &str) -> Response {
    let lines = event_lines(run_id, behaviour.events);
    if behaviour.json_string_events {
        let text: String = lines.concat();
        return json_response(StatusCode::OK, &Value::String(text));
    }
    let total: usize = lines.iter().map(String::len).sum();
    let mut response = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/x-ndjson");
    // With an explicit length hyper sends the paced body as-is instead of chunking it.
    if behaviour.content_length_events {
        response = response.header(header::CONTENT_LENGTH, total);
    }
    let body = paced_body(lines, behaviour.interval, StreamGuard::new(shared.clone()));
    response.body(body).expect("valid response")
}

/// Counts an open event stream for as long as the body stream exists. hyper drops the body
/// when the stream completes or when the client connection goes away, so `Drop` is exactly
/// "the upstream request was closed".
struct StreamGuard(Arc<Shared>);

impl StreamGuard {
    fn new(shared: Arc<Shared>) -> Self {
        shared.open_streams.fetch_add(1, Ordering::SeqCst);
        StreamGuard(shared)
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.open_streams.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One body frame per line, with `interval` between lines, so every line is flushed on its own.
fn paced_body(lines: Vec<String>, interval: Duration, guard: StreamGuard) -> Body {
    let stream = futures_util::stream::unfold(
        (lines.into_iter(), guard, true),
        move |(mut lines, guard, first)| async move {
            let line = lines.next()?;
            if !first && !interval.is_zero() {
                tokio::time::sleep(interval).await;
            }
            Some((
                Ok::<_, Infallible>(Bytes::from(line)),
                (lines, guard, false),
            ))
        },
    );
    Body::from_stream(stream)
}
