//! Soak and chaos driver (`cargo run --release --example soak`; normally through
//! `tests/soak/run`, see `tests/soak/README.md`).
//!
//! One process holds everything around the gateway under test: three recording Run
//! Coordinators (restartable: a restart drops every connection, like a crash), the test
//! identity provider and STS of `tests/common/idp.rs` (whose token endpoint can be made to fail),
//! and the load: start-runs (each with a unique `run_id`), gets, cancels (each with a unique
//! run id), requests with bad tokens, start-runs with freshly minted tokens (so the STS is
//! needed while it fails), and a fixed number of concurrent event streams. The gateway is the
//! real binary (`--gateway`). On a schedule one coordinator is restarted (every minute by
//! default) and the STS fails for 20 s in the middle. The gateway's RSS and open file
//! descriptors are sampled from /proc throughout.
//!
//! The checks, each printed as PASS/FAIL and summed up as `soak: N passed, M failed`: no
//! failed GET, no POST seen twice by the coordinators (and every acknowledged start seen once),
//! every event stream completed or ended with a clean close, bad tokens refused 401 and never
//! forwarded, no client token or unauthenticated request reaching a coordinator, nothing but
//! the five operations reaching one, the STS outage seen only inside its window and recovered
//! from, RSS flat after warm-up (<= +10 %), no file-descriptor leak, the gateway alive and free
//! of panics at the end, and the planned load actually delivered.

#[path = "../common/idp.rs"]
mod idp;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::fs;
use std::future::IntoFuture;
use std::io;
use std::net::{Ipv4Addr, TcpListener as StdTcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::response::Response;
use axum::serve::ListenerExt;
use axum::Router;
use clap::Parser;
use idp::{Alg, TestIdp};
use serde_json::{json, Value};
use tokio::sync::oneshot;

/// Soak and chaos test of the Run Gateway.
#[derive(Parser, Debug, Clone)]
#[command(name = "soak")]
struct Opts {
    /// Length of the load phase in minutes (default 10; 1.25 with --ci)
    #[arg(long)]
    minutes: Option<f64>,
    /// Short CI mode: 75 s, 100 streams, 150 operations/s, a restart every 20 s
    #[arg(long)]
    ci: bool,
    /// The gateway binary to test
    #[arg(long)]
    gateway: PathBuf,
    /// Concurrent event streams (default 500; 100 with --ci)
    #[arg(long)]
    streams: Option<usize>,
    /// Start/get/cancel/bad-token operations per second (default 300; 150 with --ci)
    #[arg(long)]
    rate: Option<u32>,
    /// Seconds between coordinator restarts (default 60; 20 with --ci)
    #[arg(long)]
    restart_every: Option<u64>,
    /// Seconds the STS fails, centred in the run
    #[arg(long, default_value_t = 20)]
    sts_outage: u64,
    /// Seconds to wait idle after the load before the final RSS / descriptor figures (default
    /// 100, past the 90 s idle timeout of pooled IdP connections; 25 with --ci)
    #[arg(long)]
    idle_wait: Option<f64>,
    /// Extra environment for the gateway, KEY=VALUE (repeatable; e.g. MALLOC_ARENA_MAX=2)
    #[arg(long = "gateway-env")]
    gateway_env: Vec<String>,
    /// Largest RSS growth after warm-up that passes, in percent
    #[arg(long, default_value_t = 10.0)]
    rss_limit: f64,
    /// Write the figures as Markdown to this file
    #[arg(long)]
    report: Option<PathBuf>,
}

struct Plan {
    total: Duration,
    streams: usize,
    rate: u32,
    restart_every: Duration,
    warmup: Duration,
    sample_every: Duration,
    sts_from: Duration,
    sts_until: Duration,
    events_per_stream: u32,
    event_interval_ms: u64,
}

impl Plan {
    fn from(o: &Opts) -> Plan {
        let minutes = o.minutes.unwrap_or(if o.ci { 1.25 } else { 10.0 });
        let total = Duration::from_secs_f64(minutes * 60.0);
        let warmup = if o.ci {
            Duration::from_secs(15)
        } else {
            Duration::from_secs(60).min(total / 5)
        };
        let outage = Duration::from_secs(o.sts_outage);
        let sts_from = (total / 2).saturating_sub(outage / 2);
        Plan {
            total,
            streams: o.streams.unwrap_or(if o.ci { 100 } else { 500 }),
            rate: o.rate.unwrap_or(if o.ci { 150 } else { 300 }),
            restart_every: Duration::from_secs(o.restart_every.unwrap_or(if o.ci {
                20
            } else {
                60
            })),
            warmup,
            sample_every: Duration::from_secs(if o.ci { 2 } else { 5 }),
            sts_from,
            sts_until: sts_from + outage,
            events_per_stream: 10,
            event_interval_ms: 300,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// ---------------------------------------------------------------------------------------------
// The coordinators
// ---------------------------------------------------------------------------------------------

/// What the three coordinators saw, together.
#[derive(Default)]
struct Ledger {
    starts: Mutex<HashMap<String, u32>>,
    cancels: Mutex<HashMap<String, u32>>,
    requests: AtomicU64,
    leaked: Mutex<Vec<String>>,
    /// Requests without `Authorization`, or carrying a token a client holds.
    bad_auth: AtomicU64,
    client_tokens: RwLock<HashSet<String>>,
    open_streams: AtomicI64,
}

struct Serving {
    stop: oneshot::Sender<()>,
    thread: JoinHandle<()>,
}

struct Coordinator {
    port: u16,
    ledger: Arc<Ledger>,
    serving: Mutex<Option<Serving>>,
}

impl Coordinator {
    fn start(ledger: Arc<Ledger>) -> Coordinator {
        let listener = StdTcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind coordinator");
        let port = listener.local_addr().expect("local_addr").port();
        let serving = serve(listener, ledger.clone());
        Coordinator {
            port,
            ledger,
            serving: Mutex::new(Some(serving)),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Drops the listener and every connection at once (in-flight requests and streams cut).
    fn stop(&self) {
        if let Some(Serving { stop, thread }) = lock(&self.serving).take() {
            let _ = stop.send(());
            let _ = thread.join();
        }
    }

    fn restart(&self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match StdTcpListener::bind((Ipv4Addr::LOCALHOST, self.port)) {
                Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => break other.expect("re-bind coordinator port"),
            }
        };
        *lock(&self.serving) = Some(serve(listener, self.ledger.clone()));
    }
}

fn serve(listener: StdTcpListener, ledger: Arc<Ledger>) -> Serving {
    listener.set_nonblocking(true).expect("set_nonblocking");
    let (stop, stopped) = oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("coordinator runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("from_std");
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            let app = Router::new().fallback(handle).with_state(ledger);
            tokio::select! {
                _ = axum::serve(listener, app).into_future() => {}
                _ = stopped => {}
            }
        });
        // Dropping the runtime drops every connection task: the sockets close at once.
        drop(rt);
    });
    Serving { stop, thread }
}

fn json_response(status: StatusCode, v: &Value) -> Response {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(v.to_string()))
        .expect("response")
}

fn run_json(run_id: &str, state: &str) -> Value {
    json!({"run_id": run_id, "state": state,
           "root_node_run_id": format!("{run_id}.root"),
           "started_at": "2026-01-01T00:00:00Z"})
}

fn query_u64(query: Option<&str>, name: &str) -> Option<u64> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| v.parse().ok())
}

/// Decrements the open-stream count when the body is dropped (completed or cut).
struct StreamGuard(Arc<Ledger>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.open_streams.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn handle(State(ledger): State<Arc<Ledger>>, req: Request) -> Response {
    ledger.requests.fetch_add(1, Ordering::Relaxed);
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    if method == Method::GET && path == "/v1/health" {
        return json_response(StatusCode::OK, &json!({"status": "ok", "checks": []}));
    }
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let auth_ok = auth.as_deref().is_some_and(|t| {
        !ledger
            .client_tokens
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(t)
    });
    if !auth_ok {
        ledger.bad_auth.fetch_add(1, Ordering::Relaxed);
    }
    let body = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let rest = path.strip_prefix("/v1/runs/");
    match (method.as_str(), path.as_str(), rest) {
        ("POST", "/v1/runs", _) => {
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let Some(run_id) = v.get("run_id").and_then(Value::as_str) else {
                return json_response(
                    StatusCode::BAD_REQUEST,
                    &json!({"error": {"code": "invalid_request", "message": "soak: no run_id"}}),
                );
            };
            *lock(&ledger.starts).entry(run_id.to_string()).or_default() += 1;
            json_response(StatusCode::OK, &run_json(run_id, "running"))
        }
        ("POST", _, Some(rest)) if rest.ends_with(":cancel") && !rest.contains('/') => {
            let id = rest.trim_end_matches(":cancel").to_string();
            *lock(&ledger.cancels).entry(id.clone()).or_default() += 1;
            json_response(StatusCode::OK, &run_json(&id, "canceled"))
        }
        ("GET", _, Some(rest)) if !rest.contains('/') && !rest.is_empty() => {
            json_response(StatusCode::OK, &run_json(rest, "running"))
        }
        ("GET", _, Some(rest)) if rest.ends_with("/events") && rest.matches('/').count() == 1 => {
            let id = rest.trim_end_matches("/events").to_string();
            let n = query_u64(query.as_deref(), "n").unwrap_or(10).max(2);
            let interval =
                Duration::from_millis(query_u64(query.as_deref(), "interval_ms").unwrap_or(300));
            ledger.open_streams.fetch_add(1, Ordering::SeqCst);
            let guard = StreamGuard(ledger.clone());
            let stream = futures_util::stream::unfold((0u64, guard), move |(seq, guard)| {
                let id = id.clone();
                async move {
                    if seq >= n {
                        return None;
                    }
                    if seq > 0 {
                        tokio::time::sleep(interval).await;
                    }
                    let kind = match seq {
                        0 => "run_started",
                        s if s + 1 == n => "run_completed",
                        _ => "node_run_assigned",
                    };
                    let line = format!("{}\n", json!({"run_id": id, "seq": seq, "type": kind}));
                    Some((Ok::<_, Infallible>(Bytes::from(line)), (seq + 1, guard)))
                }
            });
            Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/x-ndjson")
                .body(Body::from_stream(stream))
                .expect("response")
        }
        _ => {
            lock(&ledger.leaked).push(format!("{method} {path}"));
            json_response(
                StatusCode::NOT_FOUND,
                &json!({"error": {"code": "not_found", "message": "soak"}}),
            )
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The gateway process and its resources
// ---------------------------------------------------------------------------------------------

struct GatewayProc {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl GatewayProc {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for GatewayProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    StdTcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn start_gateway(bin: &Path, dir: &Path, env: &[(String, String)]) -> GatewayProc {
    let port = free_port();
    let config = dir.join("gateway.yaml");
    fs::write(
        &config,
        format!(
            "server:\n  upgrade_sock: {d}/upgrade.sock\n  pid_file: {d}/gateway.pid\n\
             upstream:\n  health_check:\n    interval_ms: 500\n    timeout_ms: 500\n    failures_to_eject: 1\n\
             logging:\n  access_log: \"off\"\n",
            d = dir.display()
        ),
    )
    .expect("write gateway config");
    let log = dir.join("gateway.log");
    let out = fs::File::create(&log).expect("gateway log");
    let err = out.try_clone().expect("clone log");
    let mut cmd = Command::new(bin);
    cmd.env_clear();
    for key in ["PATH", "HOME"] {
        if let Some(v) = std::env::var_os(key) {
            cmd.env(key, v);
        }
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)))
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .arg("--config")
        .arg(&config)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
    let mut gw = GatewayProc { child, port, log };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = gw.child.try_wait().expect("try_wait") {
            panic!(
                "gateway exited at start ({status}):\n{}",
                fs::read_to_string(&gw.log).unwrap_or_default()
            );
        }
        if std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return gw;
        }
        assert!(
            Instant::now() < deadline,
            "gateway not listening after 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The gateway's TCP sockets by kind ("from a client", "to a coordinator", "to the IdP",
/// "listening"), from /proc (the socket inodes of its fds matched against /proc/net/tcp).
fn socket_kinds(
    pid: u32,
    coordinators: &[Arc<Coordinator>],
    idp_port: u16,
) -> BTreeMap<&'static str, usize> {
    let mut inodes = HashSet::new();
    if let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) {
        for entry in dir.flatten() {
            if let Ok(target) = fs::read_link(entry.path()) {
                let t = target.to_string_lossy();
                if let Some(inode) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                    inodes.insert(inode.to_string());
                }
            }
        }
    }
    let mut kinds = BTreeMap::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 10 || !inodes.contains(cols[9]) {
                continue;
            }
            let port = |a: &str| {
                a.rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
            };
            let kind = match (cols[3], port(cols[2])) {
                ("0A", _) => "listening",
                (_, Some(p)) if coordinators.iter().any(|c| c.port == p) => "to a coordinator",
                (_, Some(p)) if p == idp_port => "to the IdP",
                _ => "from a client",
            };
            *kinds.entry(kind).or_default() += 1;
        }
    }
    kinds
}

/// VmRSS in KiB and the number of open file descriptors of `pid`.
fn resources(pid: u32) -> Option<(u64, usize)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some((rss, fds))
}

// ---------------------------------------------------------------------------------------------
// The load
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Tally {
    /// (operation, outcome) -> count.
    outcomes: Mutex<BTreeMap<(String, String), u64>>,
    /// Failures that break a check, with the time they happened.
    failures: Mutex<Vec<String>>,
    /// Run ids whose start the client saw acknowledged (200).
    acked_starts: Mutex<Vec<String>>,
    acked_cancels: Mutex<Vec<String>>,
    /// Fresh-token starts refused for want of a token: seconds since start.
    sts_refusals: Mutex<Vec<f64>>,
    /// Fresh-token starts that succeeded: seconds since start.
    fresh_ok: Mutex<Vec<f64>>,
    streams_open: AtomicI64,
    streams_peak: AtomicI64,
    get_latency_ms: Mutex<Vec<f64>>,
}

impl Tally {
    fn count(&self, op: &str, outcome: impl Into<String>) {
        *lock(&self.outcomes)
            .entry((op.to_string(), outcome.into()))
            .or_default() += 1;
    }

    fn fail(&self, t: f64, what: String) {
        let mut f = lock(&self.failures);
        if f.len() < 5000 {
            f.push(format!("t={t:.1}s {what}"));
        }
    }

    fn total(&self, op: &str) -> u64 {
        lock(&self.outcomes)
            .iter()
            .filter(|((o, _), _)| o == op)
            .map(|(_, n)| n)
            .sum()
    }

    fn outcome(&self, op: &str, outcome: &str) -> u64 {
        lock(&self.outcomes)
            .get(&(op.to_string(), outcome.to_string()))
            .copied()
            .unwrap_or(0)
    }
}

struct Load {
    client: reqwest::Client,
    base: String,
    tokens: Vec<String>,
    bad_tokens: Vec<String>,
    tally: Tally,
    t0: Instant,
    stop: AtomicBool,
    serial: AtomicU64,
    plan_streams: usize,
    events_per_stream: u32,
    event_interval_ms: u64,
}

impl Load {
    fn t(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    fn next_id(&self, prefix: &str) -> String {
        format!(
            "{prefix}-{}-{}",
            std::process::id(),
            self.serial.fetch_add(1, Ordering::Relaxed)
        )
    }

    fn token(&self, n: u64) -> &str {
        &self.tokens[n as usize % self.tokens.len()]
    }
}

fn error_code(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_string))
        .unwrap_or_else(|| "-".to_string())
}

async fn send(
    load: &Load,
    method: Method,
    path: &str,
    token: &str,
    body: Option<String>,
) -> Result<(u16, Bytes), String> {
    let url = format!("{}{path}", load.base);
    let mut req = load
        .client
        .request(method, url)
        .header("Authorization", format!("Bearer {token}"))
        .timeout(Duration::from_secs(20));
    if let Some(b) = body {
        req = req.header("Content-Type", "application/json").body(b);
    }
    let resp = req.send().await.map_err(|e| format!("send: {e:?}"))?;
    let status = resp.status().as_u16();
    let body = resp.bytes().await.map_err(|e| format!("body: {e:?}"))?;
    Ok((status, body))
}

fn start_body(run_id: &str) -> String {
    json!({"run_id": run_id,
           "root_node_type_ref": {"node_type_id": "soak.root", "version": "1.0.0"},
           "input": {"goal": "soak"}})
    .to_string()
}

/// One mixed operation: 30 % starts, 45 % gets, 10 % cancels, 15 % bad tokens.
async fn one_op(load: &Load, n: u64) {
    let pick = n % 20;
    let t = load.t();
    if pick < 6 {
        let id = load.next_id("start");
        match send(
            load,
            Method::POST,
            "/v1/runs",
            load.token(n),
            Some(start_body(&id)),
        )
        .await
        {
            Ok((200, _)) => {
                load.tally.count("start", "200");
                lock(&load.tally.acked_starts).push(id);
            }
            // The coordinator it went to was cut: refused, never sent twice; allowed.
            Ok((s @ (502..=504), b)) => {
                load.tally.count("start", format!("{s} {}", error_code(&b)))
            }
            Ok((s, b)) => {
                load.tally.count("start", format!("{s} {}", error_code(&b)));
                load.tally.fail(
                    t,
                    format!("start {id}: unexpected {s} {}", String::from_utf8_lossy(&b)),
                );
            }
            Err(e) => {
                load.tally.count("start", "transport error");
                load.tally.fail(t, format!("start {id}: {e}"));
            }
        }
    } else if pick < 15 {
        let id = format!("run-{}", n % 997);
        let started = Instant::now();
        match send(
            load,
            Method::GET,
            &format!("/v1/runs/{id}"),
            load.token(n),
            None,
        )
        .await
        {
            Ok((200, _)) => {
                load.tally.count("get", "200");
                let ms = started.elapsed().as_secs_f64() * 1000.0;
                let mut l = lock(&load.tally.get_latency_ms);
                if l.len() < 2_000_000 {
                    l.push(ms);
                }
            }
            Ok((s, b)) => {
                load.tally.count("get", format!("{s} {}", error_code(&b)));
                load.tally
                    .fail(t, format!("GET {id}: {s} {}", String::from_utf8_lossy(&b)));
            }
            Err(e) => {
                load.tally.count("get", "transport error");
                load.tally.fail(t, format!("GET {id}: {e}"));
            }
        }
    } else if pick < 17 {
        let id = load.next_id("cancel");
        match send(
            load,
            Method::POST,
            &format!("/v1/runs/{id}:cancel"),
            load.token(n),
            None,
        )
        .await
        {
            Ok((200, _)) => {
                load.tally.count("cancel", "200");
                lock(&load.tally.acked_cancels).push(id);
            }
            Ok((s @ (502..=504), b)) => load
                .tally
                .count("cancel", format!("{s} {}", error_code(&b))),
            Ok((s, b)) => {
                load.tally
                    .count("cancel", format!("{s} {}", error_code(&b)));
                load.tally.fail(t, format!("cancel {id}: unexpected {s}"));
            }
            Err(e) => {
                load.tally.count("cancel", "transport error");
                load.tally.fail(t, format!("cancel {id}: {e}"));
            }
        }
    } else {
        let bad = &load.bad_tokens[n as usize % load.bad_tokens.len()];
        let (method, path, body) = match n % 3 {
            0 => (Method::GET, "/v1/runs/run-1".to_string(), None),
            1 => (
                Method::POST,
                "/v1/runs".to_string(),
                Some(start_body(&load.next_id("bad"))),
            ),
            _ => (Method::GET, "/v1/runs/run-1/events".to_string(), None),
        };
        match send(load, method, &path, bad, body).await {
            Ok((401, _)) => load.tally.count("bad_token", "401"),
            Ok((s, b)) => {
                load.tally
                    .count("bad_token", format!("{s} {}", error_code(&b)));
                load.tally.fail(t, format!("bad token on {path}: {s}"));
            }
            Err(e) => {
                load.tally.count("bad_token", "transport error");
                load.tally.fail(t, format!("bad token on {path}: {e}"));
            }
        }
    }
}

async fn op_worker(load: Arc<Load>, worker: u64, workers: u64, rate: u32) {
    let period = Duration::from_secs_f64(workers as f64 / f64::from(rate.max(1)));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = worker;
    while !load.stop.load(Ordering::Relaxed) {
        tick.tick().await;
        one_op(&load, n).await;
        n += workers;
    }
}

/// Streams one run's events to the end; returns the outcome.
async fn one_stream(load: &Load, n: u64) -> &'static str {
    let id = format!("stream-{}", n % 10_000);
    let path = format!(
        "/v1/runs/{id}/events?n={}&interval_ms={}",
        load.events_per_stream, load.event_interval_ms
    );
    let t = load.t();
    let resp = match load
        .client
        .get(format!("{}{path}", load.base))
        .header("Authorization", format!("Bearer {}", load.token(n)))
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => {
            load.tally.fail(
                t,
                format!("stream {id}: request failed before any answer: {e:?}"),
            );
            return "request dropped before an answer";
        }
    };
    let status = resp.status().as_u16();
    if status != 200 {
        let code = error_code(&resp.bytes().await.unwrap_or_default());
        // A stream the gateway could not open (its coordinator just cut) is a clean refusal.
        return match status {
            502..=504 => "refused 5xx (clean)",
            _ => {
                load.tally
                    .fail(t, format!("stream {id}: status {status} {code}"));
                "refused other"
            }
        };
    }
    let open = load.tally.streams_open.fetch_add(1, Ordering::SeqCst) + 1;
    load.tally.streams_peak.fetch_max(open, Ordering::SeqCst);
    let mut resp = resp;
    let mut data = Vec::new();
    let outcome = loop {
        match resp.chunk().await {
            Ok(Some(c)) => data.extend_from_slice(&c),
            Ok(None) => {
                let lines = data
                    .split(|b| *b == b'\n')
                    .filter(|l| !l.is_empty())
                    .count();
                let complete = data.ends_with(b"\n")
                    && lines == load.events_per_stream as usize
                    && data
                        .split(|b| *b == b'\n')
                        .rev()
                        .find(|l| !l.is_empty())
                        .is_some_and(|l| l.windows(13).any(|w| w == b"run_completed"));
                break if complete { "completed" } else { "clean close" };
            }
            Err(e) => {
                load.tally.fail(
                    load.t(),
                    format!("stream {id}: broken after {} bytes: {e:?}", data.len()),
                );
                break "broken";
            }
        }
    };
    load.tally.streams_open.fetch_sub(1, Ordering::SeqCst);
    outcome
}

async fn stream_worker(load: Arc<Load>, worker: u64) {
    let mut n = worker;
    while !load.stop.load(Ordering::Relaxed) {
        let outcome = one_stream(&load, n).await;
        load.tally.count("stream", outcome);
        if outcome != "completed" && outcome != "clean close" {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        n += load.plan_streams as u64;
    }
}

/// Start-runs with a token minted just now: the gateway has no exchanged token for it yet.
async fn fresh_worker(load: Arc<Load>, idp: Arc<TestIdp>, exp: u64) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    while !load.stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let idp = idp.clone();
        let token =
            tokio::task::spawn_blocking(move || idp.mint(Alg::RS256, json!({"exp": exp}), None))
                .await
                .expect("mint");
        load.tally.count("fresh_token", "minted");
        let id = load.next_id("fresh");
        let t = load.t();
        match send(
            &load,
            Method::POST,
            "/v1/runs",
            &token,
            Some(start_body(&id)),
        )
        .await
        {
            Ok((200, _)) => {
                load.tally.count("fresh_start", "200");
                lock(&load.tally.acked_starts).push(id);
                lock(&load.tally.fresh_ok).push(t);
            }
            Ok((s, b)) => {
                let code = error_code(&b);
                load.tally.count("fresh_start", format!("{s} {code}"));
                if code.starts_with("token_") {
                    lock(&load.tally.sts_refusals).push(t);
                } else if !(502..=504).contains(&s) {
                    load.tally.fail(t, format!("fresh start {id}: {s} {code}"));
                }
            }
            Err(e) => {
                load.tally.count("fresh_start", "transport error");
                load.tally.fail(t, format!("fresh start {id}: {e}"));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------------

struct Check {
    name: &'static str,
    pass: bool,
    detail: String,
}

fn median(v: &mut [u64]) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[v.len() / 2]
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let mut opts = Opts::parse();
    opts.gateway = opts
        .gateway
        .canonicalize()
        .unwrap_or_else(|e| panic!("--gateway {}: {e}", opts.gateway.display()));
    let plan = Plan::from(&opts);
    let idle_wait = opts.idle_wait.unwrap_or(if opts.ci { 25.0 } else { 100.0 });
    opts.idle_wait = Some(idle_wait);
    let dir = std::env::temp_dir().join(format!("rungateway-soak-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("work dir");

    // Everything around the gateway.
    let ledger = Arc::new(Ledger::default());
    let coordinators: Vec<Arc<Coordinator>> = (0..3)
        .map(|_| Arc::new(Coordinator::start(ledger.clone())))
        .collect();
    let idp = Arc::new(TestIdp::start());
    let exp = idp::now() + plan.total.as_secs() + 3600;
    let tokens: Vec<String> = (0..32)
        .map(|i| {
            idp.mint(
                Alg::RS256,
                json!({"exp": exp, "sub": format!("soak-{i}")}),
                None,
            )
        })
        .collect();
    let mut bad_tokens = TestIdp::garbage();
    bad_tokens.push(idp.mint(Alg::RS256, json!({"exp": idp::now() - 3600}), None));
    bad_tokens.push(idp.mint_bad_signature(Alg::RS256, json!({"exp": exp})));
    bad_tokens.push(idp.mint_none(json!({"exp": exp})));
    bad_tokens.push(idp.mint(Alg::RS256, json!({"exp": exp, "aud": "someone-else"}), None));
    {
        let mut known = ledger
            .client_tokens
            .write()
            .unwrap_or_else(|p| p.into_inner());
        known.extend(tokens.iter().cloned());
        known.extend(bad_tokens.iter().cloned());
    }

    let mut env = idp.env();
    let urls: Vec<String> = coordinators.iter().map(|c| c.url()).collect();
    env.push(("JARVIS_RUN_COORDINATOR_URL".into(), urls.join(",")));
    env.push(("RUST_LOG".into(), "warn".into()));
    for kv in &opts.gateway_env {
        let (k, v) = kv
            .split_once('=')
            .unwrap_or_else(|| panic!("--gateway-env {kv:?}: expected KEY=VALUE"));
        env.push((k.to_string(), v.to_string()));
    }
    let gw = start_gateway(&opts.gateway, &dir, &env);
    let pid = gw.pid();
    println!(
        "soak: gateway pid {pid} on port {} ({}); {} coordinators; IdP {}; plan: {:?} load, {} streams, {} ops/s, restart every {:?}, STS down {:?}..{:?}",
        gw.port,
        opts.gateway.display(),
        coordinators.len(),
        idp.url(),
        plan.total,
        plan.streams,
        plan.rate,
        plan.restart_every,
        plan.sts_from,
        plan.sts_until
    );
    // Let the gateway fetch its keys and see every coordinator healthy.
    std::thread::sleep(Duration::from_secs(2));
    let (rss_start, fds_start) = resources(pid).expect("gateway /proc");
    let sockets_start = socket_kinds(pid, &coordinators, idp.port());

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("load runtime");
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_idle_timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(5))
        .read_timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let load = Arc::new(Load {
        client,
        base: format!("http://127.0.0.1:{}", gw.port),
        tokens,
        bad_tokens,
        tally: Tally::default(),
        t0: Instant::now(),
        stop: AtomicBool::new(false),
        serial: AtomicU64::new(0),
        plan_streams: plan.streams,
        events_per_stream: plan.events_per_stream,
        event_interval_ms: plan.event_interval_ms,
    });

    let mut tasks = Vec::new();
    let workers = 48u64;
    for w in 0..workers {
        tasks.push(rt.spawn(op_worker(load.clone(), w, workers, plan.rate)));
    }
    for s in 0..plan.streams as u64 {
        tasks.push(rt.spawn(stream_worker(load.clone(), s)));
    }
    tasks.push(rt.spawn(fresh_worker(load.clone(), idp.clone(), exp)));

    // The schedule: samples, restarts, the STS outage.
    let mut samples: Vec<(f64, u64, usize)> = Vec::new();
    let mut events: Vec<String> = Vec::new();
    let mut next_sample = Duration::ZERO;
    let mut next_restart = plan.restart_every;
    let mut restarts = 0usize;
    let mut sts_down = false;
    let mut sts_done = false;
    loop {
        let now = load.t0.elapsed();
        if now >= plan.total {
            break;
        }
        if now >= next_sample {
            if let Some((rss, fds)) = resources(pid) {
                samples.push((now.as_secs_f64(), rss, fds));
            }
            next_sample += plan.sample_every;
        }
        if !sts_down && !sts_done && now >= plan.sts_from {
            idp.set_token_fail(Some(503));
            sts_down = true;
            events.push(format!("t={:.1}s STS fails (503)", now.as_secs_f64()));
        }
        if sts_down && now >= plan.sts_until {
            idp.set_token_fail(None);
            sts_down = false;
            sts_done = true;
            events.push(format!("t={:.1}s STS back", now.as_secs_f64()));
        }
        if now >= next_restart && now + Duration::from_secs(5) < plan.total {
            let c = &coordinators[restarts % coordinators.len()];
            c.stop();
            std::thread::sleep(Duration::from_secs(1));
            c.restart();
            events.push(format!(
                "t={:.1}s coordinator {} (port {}) restarted (down 1 s)",
                now.as_secs_f64(),
                restarts % coordinators.len(),
                c.port
            ));
            restarts += 1;
            next_restart += plan.restart_every;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if sts_down {
        idp.set_token_fail(None);
    }
    load.stop.store(true, Ordering::SeqCst);
    let drain_deadline = Instant::now() + Duration::from_secs(30);
    rt.block_on(async {
        for t in tasks {
            let left = drain_deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, t).await.is_err() {
                break;
            }
        }
    });
    let load_secs = load.t();
    println!("soak: load stopped, tasks drained at t={load_secs:.1}s");
    // Idle: pooled connections expire (ours after 5 s, the gateway's upstream pool after 4 s).
    drop(rt);
    std::thread::sleep(Duration::from_secs_f64(idle_wait));
    let (rss_end, fds_end) = resources(pid).unwrap_or((0, 0));
    let sockets_end = socket_kinds(pid, &coordinators, idp.port());
    println!("soak: idle measurements done at t={:.1}s", load.t());
    let alive = resources(pid).is_some();
    let log = fs::read_to_string(&gw.log).unwrap_or_default();
    let panics = log.matches("panicked").count();

    let pooled = |k: &BTreeMap<&str, usize>| {
        k.get("to the IdP").copied().unwrap_or(0) + k.get("to a coordinator").copied().unwrap_or(0)
    };
    let (pooled_start, pooled_end) = (pooled(&sockets_start), pooled(&sockets_end));
    let clients_left = sockets_end.get("from a client").copied().unwrap_or(0);

    // ---- checks -------------------------------------------------------------------------
    let tally = &load.tally;
    let failures = lock(&tally.failures).clone();
    let starts = lock(&ledger.starts).clone();
    let cancels = lock(&ledger.cancels).clone();
    let dup_starts: Vec<_> = starts.iter().filter(|(_, n)| **n > 1).collect();
    let dup_cancels: Vec<_> = cancels.iter().filter(|(_, n)| **n > 1).collect();
    let acked = lock(&tally.acked_starts).clone();
    let lost_acked = acked.iter().filter(|id| !starts.contains_key(*id)).count();
    let acked_cancels = lock(&tally.acked_cancels).clone();
    let lost_cancels = acked_cancels
        .iter()
        .filter(|id| !cancels.contains_key(*id))
        .count();
    let get_fail = tally.total("get") - tally.outcome("get", "200");
    let streams_total = tally.total("stream");
    let streams_completed = tally.outcome("stream", "completed");
    let streams_clean = tally.outcome("stream", "clean close");
    let streams_refused = tally.outcome("stream", "refused 5xx (clean)");
    let streams_dropped = tally.outcome("stream", "request dropped before an answer");
    let streams_bad =
        streams_total - streams_completed - streams_clean - streams_refused - streams_dropped;
    let bad_total = tally.total("bad_token");
    let bad_401 = tally.outcome("bad_token", "401");
    let leaked = lock(&ledger.leaked).clone();
    let sts_refusals = lock(&tally.sts_refusals).clone();
    let fresh_ok = lock(&tally.fresh_ok).clone();
    let window = (
        plan.sts_from.as_secs_f64() - 1.0,
        plan.sts_until.as_secs_f64() + 3.0,
    );
    let outside: Vec<f64> = sts_refusals
        .iter()
        .copied()
        .filter(|t| *t < window.0 || *t > window.1)
        .collect();
    let recovered_at = fresh_ok
        .iter()
        .copied()
        .filter(|t| *t >= plan.sts_until.as_secs_f64())
        .fold(f64::INFINITY, f64::min);
    let recovery = recovered_at - plan.sts_until.as_secs_f64();

    let warm: Vec<&(f64, u64, usize)> = samples
        .iter()
        .filter(|s| s.0 >= plan.warmup.as_secs_f64())
        .collect();
    let mut first: Vec<u64> = warm.iter().take(3).map(|s| s.1).collect();
    let mut last: Vec<u64> = warm.iter().rev().take(3).map(|s| s.1).collect();
    let rss_warm = median(&mut first);
    let rss_last = median(&mut last);
    let rss_max = warm.iter().map(|s| s.1).max().unwrap_or(0);
    let rss_growth = if rss_warm > 0 {
        (rss_last as f64 / rss_warm as f64 - 1.0) * 100.0
    } else {
        f64::NAN
    };
    let fds_max = samples.iter().map(|s| s.2).max().unwrap_or(0);
    let mut lat = lock(&tally.get_latency_ms).clone();
    let (p50, p99, pmax) = (
        percentile(&mut lat, 0.5),
        percentile(&mut lat, 0.99),
        percentile(&mut lat, 1.0),
    );
    let ops = tally.total("start") + tally.total("get") + tally.total("cancel") + bad_total;
    let expected_ops = (f64::from(plan.rate) * plan.total.as_secs_f64() * 0.8) as u64;

    let checks = vec![
        Check {
            name: "zero failed GETs",
            pass: get_fail == 0 && tally.total("get") > 0,
            detail: format!("{} GETs, {get_fail} failed", tally.total("get")),
        },
        Check {
            name: "zero duplicated POSTs",
            pass: dup_starts.is_empty() && dup_cancels.is_empty(),
            detail: format!(
                "{} start-runs and {} cancels reached the coordinators; {} start run_ids and {} cancel ids seen more than once",
                starts.len(),
                cancels.len(),
                dup_starts.len(),
                dup_cancels.len()
            ),
        },
        Check {
            name: "every acknowledged POST reached a coordinator",
            pass: lost_acked == 0 && lost_cancels == 0,
            detail: format!(
                "{} starts and {} cancels acknowledged 200; {lost_acked} / {lost_cancels} not seen",
                acked.len(),
                acked_cancels.len()
            ),
        },
        Check {
            name: "every stream completed or closed cleanly",
            pass: streams_bad == 0 && streams_completed > 0,
            detail: format!(
                "{} streams opened: {streams_completed} completed, {streams_clean} clean close (coordinator cut), {streams_bad} broken; {streams_refused} more refused 502-504 before starting",
                streams_completed + streams_clean + streams_bad
            ),
        },
        Check {
            name: "every stream request answered (none dropped)",
            pass: streams_dropped == 0,
            detail: format!(
                "{streams_dropped} stream requests failed before any answer (connection closed under them)"
            ),
        },
        Check {
            name: "bad tokens refused 401",
            pass: bad_total > 0 && bad_401 == bad_total,
            detail: format!("{bad_total} requests with bad tokens, {bad_401} got 401"),
        },
        Check {
            name: "no client token or unauthenticated request reached a coordinator",
            pass: ledger.bad_auth.load(Ordering::SeqCst) == 0,
            detail: format!(
                "{} coordinator requests, {} without an exchanged token",
                ledger.requests.load(Ordering::SeqCst),
                ledger.bad_auth.load(Ordering::SeqCst)
            ),
        },
        Check {
            name: "only the five operations reached the coordinators",
            pass: leaked.is_empty(),
            detail: format!("{} leaked {:?}", leaked.len(), leaked.iter().take(5).collect::<Vec<_>>()),
        },
        Check {
            name: "STS outage: refusals only inside the window, then recovery",
            pass: !sts_refusals.is_empty() && outside.is_empty() && recovery <= 5.0,
            detail: format!(
                "{} fresh-token starts refused (token_*), {} outside {:.0}..{:.0}s; first success {:.1}s after the STS came back",
                sts_refusals.len(),
                outside.len(),
                window.0,
                window.1,
                recovery
            ),
        },
        Check {
            name: "RSS flat after warm-up",
            pass: rss_warm > 0 && rss_growth <= opts.rss_limit,
            detail: format!(
                "limit +{}%: start {} MiB, after warm-up {:.1} MiB, end of load {:.1} MiB ({rss_growth:+.1}%), max {:.1} MiB, idle after {:.1} MiB",
                opts.rss_limit,
                rss_start / 1024,
                rss_warm as f64 / 1024.0,
                rss_last as f64 / 1024.0,
                rss_max as f64 / 1024.0,
                rss_end as f64 / 1024.0
            ),
        },
        Check {
            name: "no file-descriptor leak",
            pass: alive && clients_left == 0 && fds_end.saturating_sub(pooled_end) <= fds_start.saturating_sub(pooled_start) + 8,
            detail: format!(
                "fds at start {fds_start} (sockets {sockets_start:?}), max under load {fds_max}, {:.0} s after the load {fds_end} (sockets {sockets_end:?}); {clients_left} client connections left; besides pooled upstream/IdP connections {} then vs {} at start",
                idle_wait,
                fds_end.saturating_sub(pooled_end),
                fds_start.saturating_sub(pooled_start)
            ),
        },
        Check {
            name: "gateway alive, no panic in its log",
            pass: alive && panics == 0,
            detail: format!("alive: {alive}, panics logged: {panics}"),
        },
        Check {
            name: "planned load delivered",
            pass: ops >= expected_ops
                && tally.streams_peak.load(Ordering::SeqCst) as usize >= plan.streams * 9 / 10,
            detail: format!(
                "{ops} operations in {load_secs:.0}s (>= {expected_ops} expected), peak concurrent streams {} of {}",
                tally.streams_peak.load(Ordering::SeqCst),
                plan.streams
            ),
        },
    ];

    // ---- report -------------------------------------------------------------------------
    let mut md = String::new();
    md.push_str(&format!(
        "Run: {:.1} min of load, {} streams, {} ops/s planned, {} coordinator restarts, STS failing {:.0}..{:.0}s; gateway {}\n\n",
        load_secs / 60.0,
        plan.streams,
        plan.rate,
        restarts,
        plan.sts_from.as_secs_f64(),
        plan.sts_until.as_secs_f64(),
        opts.gateway.display()
    ));
    md.push_str("| check | result | figures |\n|---|---|---|\n");
    for c in &checks {
        md.push_str(&format!(
            "| {} | {} | {} |\n",
            c.name,
            if c.pass { "PASS" } else { "FAIL" },
            c.detail
        ));
    }
    md.push_str(&format!(
        "\nGET latency through the gateway: p50 {p50:.1} ms, p99 {p99:.1} ms, max {pmax:.0} ms.\n\nOutcomes (operation, outcome: count):\n\n"
    ));
    for ((op, outcome), n) in lock(&tally.outcomes).iter() {
        md.push_str(&format!("- {op}, {outcome}: {n}\n"));
    }
    md.push_str("\nTimeline:\n\n");
    for e in &events {
        md.push_str(&format!("- {e}\n"));
    }
    md.push_str("\nGateway RSS / open fds over time (t s: RSS MiB, fds):\n\n```\n");
    let step = (samples.len() / 40).max(1);
    for s in samples.iter().step_by(step) {
        md.push_str(&format!(
            "{:6.0}: {:7.1} {:5}\n",
            s.0,
            s.1 as f64 / 1024.0,
            s.2
        ));
    }
    md.push_str("```\n");
    if !failures.is_empty() {
        md.push_str(&format!(
            "\nFailures ({} recorded; the first 5 of each kind):\n\n",
            failures.len()
        ));
        let mut shown: BTreeMap<&str, usize> = BTreeMap::new();
        for f in &failures {
            let kind = f.split_whitespace().nth(1).unwrap_or("-");
            let n = shown.entry(kind).or_default();
            *n += 1;
            if *n <= 5 {
                md.push_str(&format!("- {}\n", &f[..f.len().min(400)]));
            }
        }
    }
    println!("{md}");
    if let Some(path) = &opts.report {
        fs::write(path, &md).expect("write report");
    }
    let passed = checks.iter().filter(|c| c.pass).count();
    let failed = checks.len() - passed;
    for c in &checks {
        println!(
            "{} {}: {}",
            if c.pass { "PASS" } else { "FAIL" },
            c.name,
            c.detail
        );
    }
    let log_path = gw.log.clone();
    drop(gw);
    if failed > 0 || panics > 0 {
        eprintln!("gateway log kept: {}", log_path.display());
    } else {
        let _ = fs::remove_dir_all(&dir);
    }
    for c in &coordinators {
        c.stop();
    }
    println!("soak: {passed} passed, {failed} failed");
    std::process::exit(i32::from(failed > 0));
}
