//! `mock-coordinator`: a fast stand-in for everything the gateway talks to, in one process.
//!
//! * Run Coordinator (ARP v1): `POST /v1/runs`, `GET /v1/runs/{id}`, `POST /v1/runs/{id}:cancel`
//!   answer small fixed `Run` bodies; `GET /v1/runs/{id}/events` streams chunked NDJSON
//!   `RunEvent`s (`?n=20&interval_ms=100`, defaults from `--events`/`--interval-ms`), each one
//!   carrying `data.sent_unix_ns` so a client can measure per-event delay; `GET /v1/health`,
//!   `GET /v1/version`.
//! * Identity provider: an RSA-2048 key generated at start (aws-lc-rs), served as JWKS at
//!   `/jwks` and `{issuer}/protocol/openid-connect/certs`, discovery at
//!   `{issuer}/.well-known/openid-configuration`, issuer `http://HOST:PORT/realms/bench`.
//!   `GET /mint?n=100&sub=alice&ttl=3600&aud=arp-run-gateway` returns `n` RS256 tokens, one a line.
//! * STS: `POST /token` (and `{issuer}/protocol/openid-connect/token`) answers both RFC 8693
//!   token exchange and client credentials with an opaque token (no signing: the STS must never
//!   be the bottleneck of a benchmark).
//! * `GET /stats`: counters (requests by operation, exchanges, requests that carried an
//!   exchanged token, ...), for checking what a benchmark row really exercised.
//!
//! Used by `bench/run` as the upstream of every row, and usable as a local dev coordinator:
//! `cargo run --example mock-coordinator -- --port 8081`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{KeyPair, RsaKeyPair, RsaPublicKeyComponents, RSA_PKCS1_SHA256};
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::Response;
use axum::serve::ListenerExt;
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use clap::Parser;
use serde_json::{json, Value};

const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
const KID: &str = "bench-rsa-1";
/// Prefix of every token the STS issues; `/stats` counts coordinator requests carrying one.
const ISSUED_PREFIX: &str = "Bearer mock-sts.";
const EVENT_TYPES: [&str; 8] = [
    "node_run_assigned",
    "composite_decomposed",
    "candidate_set_generated",
    "subtask_mapped",
    "atomic_executed",
    "node_evaluated",
    "policy_decided",
    "recovery_applied",
];

/// Mock ARP Run Coordinator + OIDC identity provider + token service, for benchmarks and dev.
#[derive(Parser, Debug)]
#[command(name = "mock-coordinator")]
struct Opts {
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0: any free port; the chosen one is printed)
    #[arg(long, default_value_t = 8081)]
    port: u16,
    /// Tokio worker threads
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Events per stream when the request has no `n`
    #[arg(long, default_value_t = 20)]
    events: u64,
    /// Pause between events when the request has no `interval_ms`
    #[arg(long, default_value_t = 100)]
    interval_ms: u64,
    /// Client id the STS accepts
    #[arg(long, default_value = "arp-run-gateway")]
    client_id: String,
    /// Client secret the STS accepts
    #[arg(long, default_value = "bench-secret")]
    client_secret: String,
    /// `expires_in` of issued tokens
    #[arg(long, default_value_t = 300)]
    expires_in: u64,
    /// Realm name in the issuer URL (`http://HOST:PORT/realms/NAME`)
    #[arg(long, default_value = "bench")]
    realm: String,
}

#[derive(Default)]
struct Counters {
    start_run: AtomicU64,
    get_run: AtomicU64,
    cancel_run: AtomicU64,
    streams: AtomicU64,
    events_sent: AtomicU64,
    health: AtomicU64,
    version: AtomicU64,
    jwks: AtomicU64,
    discovery: AtomicU64,
    token_exchange: AtomicU64,
    client_credentials: AtomicU64,
    token_rejected: AtomicU64,
    minted: AtomicU64,
    /// Coordinator operations whose `Authorization` was a token this STS issued.
    with_issued_token: AtomicU64,
    /// Coordinator operations with no `Authorization` at all.
    without_token: AtomicU64,
    not_found: AtomicU64,
}

struct App {
    opts: Opts,
    issuer: String,
    issuer_path: String,
    key: RsaKeyPair,
    jwks: Bytes,
    discovery: Bytes,
    started_at: String,
    serial: AtomicU64,
    c: Counters,
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}

fn rfc3339_now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

fn json_response(status: StatusCode, body: impl Into<Body>) -> Response {
    let mut r = Response::new(body.into());
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({"error": {"code": code, "message": message}}).to_string();
    json_response(status, body)
}

fn query_map(query: Option<&str>) -> HashMap<String, String> {
    url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

impl App {
    fn run_body(&self, run_id: &str, state: &str) -> String {
        // Run ids come from the URL: keep them JSON-safe without a serializer on the hot path.
        if run_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            format!(
                r#"{{"run_id":"{run_id}","state":"{state}","root_node_run_id":"node-{run_id}","started_at":"{}"}}"#,
                self.started_at
            )
        } else {
            json!({"run_id": run_id, "state": state, "root_node_run_id": format!("node-{run_id}"),
                   "started_at": self.started_at})
            .to_string()
        }
    }

    fn count_auth(&self, req: &Request) {
        match req.headers().get(header::AUTHORIZATION) {
            None => self.c.without_token.fetch_add(1, Ordering::Relaxed),
            Some(v) if v.as_bytes().starts_with(ISSUED_PREFIX.as_bytes()) => {
                self.c.with_issued_token.fetch_add(1, Ordering::Relaxed)
            }
            Some(_) => 0,
        };
    }

    fn mint(&self, n: usize, sub: &str, aud: &str, ttl: u64) -> String {
        let rng = SystemRandom::new();
        let header = b64(json!({"alg": "RS256", "typ": "JWT", "kid": KID})
            .to_string()
            .as_bytes());
        let now = now_unix();
        let mut out = String::with_capacity(n * 700);
        for _ in 0..n {
            let serial = self.serial.fetch_add(1, Ordering::Relaxed);
            let claims = json!({
                "iss": self.issuer, "aud": aud, "sub": sub, "iat": now, "nbf": now,
                "exp": now + ttl, "jti": format!("bench-{serial}"),
            });
            let input = format!("{header}.{}", b64(claims.to_string().as_bytes()));
            let mut sig = vec![0; self.key.public_modulus_len()];
            self.key
                .sign(&RSA_PKCS1_SHA256, &rng, input.as_bytes(), &mut sig)
                .expect("RSA sign");
            out.push_str(&input);
            out.push('.');
            out.push_str(&b64(&sig));
            out.push('\n');
        }
        self.c.minted.fetch_add(n as u64, Ordering::Relaxed);
        out
    }

    fn token(&self, form: &[u8]) -> Response {
        let f: HashMap<String, String> = url::form_urlencoded::parse(form).into_owned().collect();
        let field = |k: &str| f.get(k).map(String::as_str).unwrap_or_default();
        if field("client_id") != self.opts.client_id
            || field("client_secret") != self.opts.client_secret
        {
            self.c.token_rejected.fetch_add(1, Ordering::Relaxed);
            return json_response(
                StatusCode::UNAUTHORIZED,
                r#"{"error":"invalid_client","error_description":"bad client credentials"}"#,
            );
        }
        let kind = match field("grant_type") {
            TOKEN_EXCHANGE if !field("subject_token").is_empty() => {
                self.c.token_exchange.fetch_add(1, Ordering::Relaxed);
                "x"
            }
            "client_credentials" => {
                self.c.client_credentials.fetch_add(1, Ordering::Relaxed);
                "cc"
            }
            _ => {
                self.c.token_rejected.fetch_add(1, Ordering::Relaxed);
                return json_response(
                    StatusCode::BAD_REQUEST,
                    r#"{"error":"invalid_request","error_description":"unsupported grant"}"#,
                );
            }
        };
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        let body = format!(
            r#"{{"access_token":"mock-sts.{kind}.{serial}","issued_token_type":"{ACCESS_TOKEN_TYPE}","token_type":"Bearer","expires_in":{}}}"#,
            self.opts.expires_in
        );
        json_response(StatusCode::OK, body)
    }

    fn stats(&self) -> Value {
        let c = &self.c;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        json!({
            "start_run": l(&c.start_run), "get_run": l(&c.get_run), "cancel_run": l(&c.cancel_run),
            "streams": l(&c.streams), "events_sent": l(&c.events_sent), "health": l(&c.health),
            "version": l(&c.version), "jwks": l(&c.jwks), "discovery": l(&c.discovery),
            "token_exchange": l(&c.token_exchange), "client_credentials": l(&c.client_credentials),
            "token_rejected": l(&c.token_rejected), "minted": l(&c.minted),
            "with_issued_token": l(&c.with_issued_token), "without_token": l(&c.without_token),
            "not_found": l(&c.not_found),
        })
    }
}

/// NDJSON `RunEvent`s, `n` of them, `interval` apart (by deadline, so no drift), the last
/// one `run_completed`. Each line is its own chunk, written when it is due.
fn event_stream(app: Arc<App>, run_id: String, n: u64, interval: Duration) -> Body {
    let start = tokio::time::Instant::now();
    let stream = futures_util::stream::unfold(0u64, move |seq| {
        let app = app.clone();
        let run_id = run_id.clone();
        async move {
            if seq >= n {
                return None;
            }
            tokio::time::sleep_until(start + interval * seq as u32).await;
            let kind = match seq {
                0 => "run_started",
                s if s + 1 == n => "run_completed",
                s => EVENT_TYPES[(s as usize - 1) % EVENT_TYPES.len()],
            };
            let event = json!({
                "run_id": run_id, "seq": seq, "type": kind, "time": rfc3339_now(),
                "node_run_id": format!("node-{run_id}"),
                "data": {"sent_unix_ns": now_ns() as u64},
            });
            let mut line = event.to_string().into_bytes();
            line.push(b'\n');
            app.c.events_sent.fetch_add(1, Ordering::Relaxed);
            Some((Ok::<_, Infallible>(Bytes::from(line)), seq + 1))
        }
    });
    Body::from_stream(stream)
}

async fn handle(State(app): State<Arc<App>>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let method = req.method().clone();
    let c = &app.c;

    if let Some(rest) = path.strip_prefix("/v1/runs") {
        app.count_auth(&req);
        if rest.is_empty() || rest == "/" {
            if method != Method::POST {
                return error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "http_error",
                    "Method Not Allowed",
                );
            }
            // Read (and drop) the body so the connection stays reusable.
            let _ = axum::body::to_bytes(req.into_body(), 16 << 20).await;
            c.start_run.fetch_add(1, Ordering::Relaxed);
            let id = format!("run-{}", app.serial.fetch_add(1, Ordering::Relaxed));
            return json_response(StatusCode::OK, app.run_body(&id, "queued"));
        }
        let rest = &rest[1..];
        if let Some(id) = rest.strip_suffix("/events") {
            if method == Method::GET && !id.contains('/') {
                c.streams.fetch_add(1, Ordering::Relaxed);
                let q = query_map(query.as_deref());
                let n = q
                    .get("n")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(app.opts.events);
                let ms = q
                    .get("interval_ms")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(app.opts.interval_ms);
                let body = event_stream(app.clone(), id.to_string(), n, Duration::from_millis(ms));
                let mut r = Response::new(body);
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/x-ndjson"),
                );
                return r;
            }
        } else if let Some(id) = rest.strip_suffix(":cancel") {
            if method == Method::POST && !id.contains('/') {
                c.cancel_run.fetch_add(1, Ordering::Relaxed);
                return json_response(StatusCode::OK, app.run_body(id, "canceled"));
            }
        } else if method == Method::GET && !rest.contains('/') && !rest.is_empty() {
            c.get_run.fetch_add(1, Ordering::Relaxed);
            return json_response(StatusCode::OK, app.run_body(rest, "running"));
        }
        c.not_found.fetch_add(1, Ordering::Relaxed);
        return error(StatusCode::NOT_FOUND, "not_found", "Not Found");
    }

    let ip = app.issuer_path.as_str();
    match (&method, path.as_str()) {
        (&Method::GET, "/v1/health") => {
            c.health.fetch_add(1, Ordering::Relaxed);
            json_response(
                StatusCode::OK,
                format!(r#"{{"status":"ok","time":"{}"}}"#, rfc3339_now()),
            )
        }
        (&Method::GET, "/v1/version") => {
            c.version.fetch_add(1, Ordering::Relaxed);
            json_response(
                StatusCode::OK,
                json!({"service_name": "mock-coordinator",
                       "service_version": env!("CARGO_PKG_VERSION"),
                       "supported_api_versions": ["v1"]})
                .to_string(),
            )
        }
        (&Method::GET, p)
            if p == "/jwks" || p.strip_prefix(ip) == Some("/protocol/openid-connect/certs") =>
        {
            c.jwks.fetch_add(1, Ordering::Relaxed);
            json_response(StatusCode::OK, app.jwks.clone())
        }
        (&Method::GET, p) if p.strip_prefix(ip) == Some("/.well-known/openid-configuration") => {
            c.discovery.fetch_add(1, Ordering::Relaxed);
            json_response(StatusCode::OK, app.discovery.clone())
        }
        (&Method::POST, p)
            if p == "/token" || p.strip_prefix(ip) == Some("/protocol/openid-connect/token") =>
        {
            match axum::body::to_bytes(req.into_body(), 1 << 20).await {
                Ok(form) => app.token(&form),
                Err(_) => error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "unreadable body",
                ),
            }
        }
        (&Method::GET, "/mint") => {
            let q = query_map(query.as_deref());
            let n = q
                .get("n")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1usize)
                .min(1_000_000);
            let sub = q.get("sub").cloned().unwrap_or_else(|| "bench-user".into());
            let aud = q
                .get("aud")
                .cloned()
                .unwrap_or_else(|| "arp-run-gateway".into());
            let ttl = q.get("ttl").and_then(|v| v.parse().ok()).unwrap_or(3600u64);
            let a = app.clone();
            match tokio::task::spawn_blocking(move || a.mint(n, &sub, &aud, ttl)).await {
                Ok(tokens) => {
                    let mut r = Response::new(Body::from(tokens));
                    r.headers_mut()
                        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                    r
                }
                Err(_) => error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    "mint failed",
                ),
            }
        }
        (&Method::GET, "/stats") => json_response(StatusCode::OK, app.stats().to_string()),
        _ => {
            c.not_found.fetch_add(1, Ordering::Relaxed);
            error(StatusCode::NOT_FOUND, "not_found", "Not Found")
        }
    }
}

fn main() {
    let opts = Opts::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.threads.max(1))
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(serve(opts));
}

async fn serve(opts: Opts) {
    let listener = tokio::net::TcpListener::bind((opts.host.as_str(), opts.port))
        .await
        .unwrap_or_else(|e| {
            eprintln!(
                "mock-coordinator: cannot listen on {}:{}: {e}",
                opts.host, opts.port
            );
            std::process::exit(2);
        });
    let addr: SocketAddr = listener.local_addr().expect("local addr");
    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        addr.ip().to_string()
    };
    let base = format!("http://{host}:{}", addr.port());
    let issuer_path = format!("/realms/{}", opts.realm);
    let issuer = format!("{base}{issuer_path}");

    let key = RsaKeyPair::generate(KeySize::Rsa2048).expect("generate RSA key");
    let pk = RsaPublicKeyComponents::<Vec<u8>>::from(key.public_key());
    let jwks = json!({"keys": [{"kty": "RSA", "kid": KID, "use": "sig", "alg": "RS256",
                                 "n": b64(&pk.n), "e": b64(&pk.e)}]});
    let discovery = json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}/protocol/openid-connect/certs"),
        "token_endpoint": format!("{issuer}/protocol/openid-connect/token"),
        "grant_types_supported": ["client_credentials", TOKEN_EXCHANGE],
        "id_token_signing_alg_values_supported": ["RS256"],
    });
    let app = Arc::new(App {
        issuer: issuer.clone(),
        issuer_path,
        key,
        jwks: Bytes::from(jwks.to_string()),
        discovery: Bytes::from(discovery.to_string()),
        started_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        serial: AtomicU64::new(1),
        c: Counters::default(),
        opts,
    });
    println!(
        "mock-coordinator listening on {base} (issuer {issuer}, jwks {base}/jwks, token endpoint {base}/token)"
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();

    let router = Router::new().fallback(handle).with_state(app);
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        // Open event streams and idle keep-alive connections may hold the graceful shutdown:
        // give them a moment, then go.
        tokio::spawn(async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            std::process::exit(0);
        });
    };
    if let Err(e) = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
    {
        eprintln!("mock-coordinator: {e}");
        std::process::exit(1);
    }
}
