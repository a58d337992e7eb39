//! `TestIdp`: a fake OpenID Connect identity provider and token service (STS) for tests.
//!
//! A real HTTP/1.1 server (axum) on `127.0.0.1`, served by a current-thread tokio runtime on its
//! own OS thread, so it works from sync tests, `#[tokio::test]`s and blocking waits alike. It
//! mimics Keycloak's layout: the issuer is `{url}/realms/test`, discovery lives at
//! `{issuer}/.well-known/openid-configuration`, keys at `{issuer}/protocol/openid-connect/certs`
//! and the STS at `{issuer}/protocol/openid-connect/token` (the gateway's default token
//! endpoint for an issuer). Short aliases `/jwks` and `/token` are served too.
//!
//! Keys are generated at start (RSA-2048 `rsa-1` for RS256, P-256 `ec-1` for ES256) with
//! aws-lc-rs; tokens are signed here by hand, independently of the code under test.
//! Every endpoint counts its calls; the STS records each request's form fields.

#![allow(dead_code)]

use std::future::IntoFuture;
use std::io;
use std::net::{Ipv4Addr, TcpListener as StdTcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair, RsaPublicKeyComponents,
    ECDSA_P256_SHA256_FIXED_SIGNING, RSA_PKCS1_SHA256, RSA_PSS_SHA256,
};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::{json, Map, Value};
use tokio::sync::oneshot;

pub const CLIENT_ID: &str = "arp-run-gateway";
pub const CLIENT_SECRET: &str = "client-s3cr3t-never-log-me";
pub const GATEWAY_AUDIENCE: &str = "arp-run-gateway";
pub const COORDINATOR_AUDIENCE: &str = "arp-run-coordinator";
pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// Signing algorithms the IdP can mint with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    RS256,
    PS256,
    ES256,
    EdDSA,
}

impl Alg {
    pub fn name(self) -> &'static str {
        match self {
            Alg::RS256 => "RS256",
            Alg::PS256 => "PS256",
            Alg::ES256 => "ES256",
            Alg::EdDSA => "EdDSA",
        }
    }
}

enum Signer {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

impl Signer {
    fn generate(alg: Alg) -> Signer {
        match alg {
            Alg::RS256 | Alg::PS256 => {
                Signer::Rsa(RsaKeyPair::generate(KeySize::Rsa2048).expect("generate RSA key"))
            }
            Alg::ES256 => Signer::Ec(
                EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("generate EC key"),
            ),
            Alg::EdDSA => Signer::Ed(Ed25519KeyPair::generate().expect("generate Ed25519 key")),
        }
    }

    /// Signs with `alg`; panics if the key cannot do it (a test bug).
    fn sign(&self, alg: Alg, msg: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match (self, alg) {
            (Signer::Rsa(k), Alg::RS256 | Alg::PS256) => {
                let padding = if alg == Alg::RS256 {
                    &RSA_PKCS1_SHA256
                } else {
                    &RSA_PSS_SHA256
                };
                let mut sig = vec![0; k.public_modulus_len()];
                k.sign(padding, &rng, msg, &mut sig).expect("RSA sign");
                sig
            }
            (Signer::Ec(k), Alg::ES256) => k.sign(&rng, msg).expect("EC sign").as_ref().to_vec(),
            (Signer::Ed(k), Alg::EdDSA) => k.sign(msg).as_ref().to_vec(),
            _ => panic!("test IdP: this key cannot sign {alg:?}"),
        }
    }

    fn public_jwk(&self) -> Value {
        match self {
            Signer::Rsa(k) => {
                let c = RsaPublicKeyComponents::<Vec<u8>>::from(k.public_key());
                json!({"kty": "RSA", "n": b64(&c.n), "e": b64(&c.e)})
            }
            Signer::Ec(k) => {
                let point = k.public_key().as_ref();
                json!({"kty": "EC", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..65])})
            }
            Signer::Ed(k) => {
                json!({"kty": "OKP", "crv": "Ed25519", "x": b64(k.public_key().as_ref())})
            }
        }
    }
}

struct Key {
    kid: String,
    alg: Alg,
    signer: Arc<Signer>,
    jwk: Value,
}

impl Key {
    fn new(kid: String, alg: Alg) -> Key {
        let signer = Signer::generate(alg);
        let mut jwk = signer.public_jwk();
        jwk["kid"] = json!(kid);
        jwk["use"] = json!("sig");
        jwk["alg"] = json!(alg.name());
        Key {
            kid,
            alg,
            signer: Arc::new(signer),
            jwk,
        }
    }
}

#[derive(Debug, Clone)]
struct Behaviour {
    jwks_fail: Option<u16>,
    token_fail: Option<u16>,
    stall: Duration,
    jwks_cache_control: Option<String>,
    expires_in: Option<u64>,
    extra_jwks: Vec<Value>,
    default_audience: String,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            jwks_fail: None,
            token_fail: None,
            stall: Duration::ZERO,
            jwks_cache_control: None,
            expires_in: Some(300),
            extra_jwks: Vec::new(),
            default_audience: GATEWAY_AUDIENCE.to_string(),
        }
    }
}

/// One request to the token endpoint, as received.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub fields: Vec<(String, String)>,
}

impl TokenRequest {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn names(&self) -> Vec<&str> {
        self.fields.iter().map(|(k, _)| k.as_str()).collect()
    }
}

struct Shared {
    issuer: String,
    keys: Mutex<Vec<Key>>,
    behaviour: Mutex<Behaviour>,
    discovery_calls: AtomicUsize,
    jwks_calls: AtomicUsize,
    token_calls: AtomicUsize,
    token_requests: Mutex<Vec<TokenRequest>>,
    serial: AtomicUsize,
}

/// Lock a mutex even if a panicking test thread poisoned it: the data is plain test state.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Merges `overrides` (a JSON object) into `base`; a `null` value removes the claim.
fn merge(mut base: Map<String, Value>, overrides: Value) -> Value {
    if let Value::Object(o) = overrides {
        for (k, v) in o {
            if v.is_null() {
                base.remove(&k);
            } else {
                base.insert(k, v);
            }
        }
    }
    Value::Object(base)
}

fn jws(header: &Value, claims: &Value, sign: impl FnOnce(&[u8]) -> Vec<u8>) -> String {
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sig = sign(input.as_bytes());
    format!("{input}.{}", b64(&sig))
}

struct Serving {
    stop: oneshot::Sender<()>,
    thread: JoinHandle<()>,
}

pub struct TestIdp {
    port: u16,
    shared: Arc<Shared>,
    serving: Mutex<Option<Serving>>,
}

impl TestIdp {
    /// Start on a fresh port with keys `rsa-1` (RS256) and `ec-1` (ES256). The socket is bound
    /// before this returns, so the IdP is ready at once.
    pub fn start() -> TestIdp {
        let listener = StdTcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind test IdP");
        let port = listener.local_addr().expect("local_addr").port();
        let shared = Arc::new(Shared {
            issuer: format!("http://127.0.0.1:{port}/realms/test"),
            keys: Mutex::new(vec![
                Key::new("rsa-1".into(), Alg::RS256),
                Key::new("ec-1".into(), Alg::ES256),
            ]),
            behaviour: Mutex::new(Behaviour::default()),
            discovery_calls: AtomicUsize::new(0),
            jwks_calls: AtomicUsize::new(0),
            token_calls: AtomicUsize::new(0),
            token_requests: Mutex::new(Vec::new()),
            serial: AtomicUsize::new(1),
        });
        let serving = serve(listener, shared.clone());
        TestIdp {
            port,
            shared,
            serving: Mutex::new(Some(serving)),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:{port}` without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `iss` of every token and the base of the Keycloak-style paths.
    pub fn issuer(&self) -> String {
        self.shared.issuer.clone()
    }

    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.shared.issuer)
    }

    pub fn jwks_uri(&self) -> String {
        format!("{}/protocol/openid-connect/certs", self.shared.issuer)
    }

    pub fn token_endpoint(&self) -> String {
        format!("{}/protocol/openid-connect/token", self.shared.issuer)
    }

    /// The gateway environment for this IdP (mode required, issuer, audience, client
    /// credentials); the JWKS and token endpoint follow from the issuer.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("ARP_AUTH_MODE", "required".to_string()),
            ("ARP_AUTH_ISSUER", self.issuer()),
            ("ARP_AUTH_AUDIENCE", GATEWAY_AUDIENCE.to_string()),
            ("ARP_AUTH_CLIENT_ID", CLIENT_ID.to_string()),
            ("ARP_AUTH_CLIENT_SECRET", CLIENT_SECRET.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    // ---- calls and records -------------------------------------------------------------

    pub fn discovery_calls(&self) -> usize {
        self.shared.discovery_calls.load(Ordering::SeqCst)
    }

    pub fn jwks_calls(&self) -> usize {
        self.shared.jwks_calls.load(Ordering::SeqCst)
    }

    pub fn token_calls(&self) -> usize {
        self.shared.token_calls.load(Ordering::SeqCst)
    }

    /// Every token-endpoint request so far, in arrival order.
    pub fn token_requests(&self) -> Vec<TokenRequest> {
        lock(&self.shared.token_requests).clone()
    }

    // ---- behaviour ---------------------------------------------------------------------

    /// `Some(status)`: the JWKS endpoint answers that status.
    pub fn set_jwks_fail(&self, status: Option<u16>) {
        self.behaviour().jwks_fail = status;
    }

    /// `Some(status)`: the token endpoint answers that status with an OAuth error body (whose
    /// description echoes the client secret it received, to catch a gateway that relays it).
    pub fn set_token_fail(&self, status: Option<u16>) {
        self.behaviour().token_fail = status;
    }

    /// Every endpoint waits this long before answering (after counting the call).
    pub fn set_stall(&self, stall: Duration) {
        self.behaviour().stall = stall;
    }

    /// `Cache-Control` of the JWKS answer.
    pub fn set_jwks_cache_control(&self, value: Option<&str>) {
        self.behaviour().jwks_cache_control = value.map(str::to_string);
    }

    /// `expires_in` of issued tokens; `None` leaves the field out (tokens then live 300 s).
    pub fn set_expires_in(&self, secs: Option<u64>) {
        self.behaviour().expires_in = secs;
    }

    /// Extra raw entries appended to the JWKS (e.g. `oct` or `use: enc` keys).
    pub fn set_extra_jwks(&self, entries: Vec<Value>) {
        self.behaviour().extra_jwks = entries;
    }

    /// `aud` of minted inbound tokens (default `arp-run-gateway`).
    pub fn set_default_audience(&self, aud: &str) {
        self.behaviour().default_audience = aud.to_string();
    }

    // ---- keys --------------------------------------------------------------------------

    /// Replaces every RS256 key with a new one under a new kid; returns that kid.
    pub fn rotate(&self) -> String {
        let kid = format!("rsa-{}", self.next_serial());
        let key = Key::new(kid.clone(), Alg::RS256);
        let mut keys = lock(&self.shared.keys);
        keys.retain(|k| k.alg != Alg::RS256);
        keys.push(key);
        kid
    }

    /// Publishes one more key for `alg` (kept alongside the others; minting with `alg` now
    /// uses it); returns its kid.
    pub fn add_key(&self, alg: Alg) -> String {
        let prefix = match alg {
            Alg::RS256 => "rsa",
            Alg::PS256 => "ps",
            Alg::ES256 => "ec",
            Alg::EdDSA => "ed",
        };
        let kid = format!("{prefix}-{}", self.next_serial());
        let key = Key::new(kid.clone(), alg);
        lock(&self.shared.keys).push(key);
        kid
    }

    pub fn remove_key(&self, kid: &str) {
        lock(&self.shared.keys).retain(|k| k.kid != kid);
    }

    /// Published kids, oldest first.
    pub fn kids(&self) -> Vec<String> {
        lock(&self.shared.keys)
            .iter()
            .map(|k| k.kid.clone())
            .collect()
    }

    /// The current RS256 public key as a PEM `PUBLIC KEY` (SubjectPublicKeyInfo).
    pub fn public_key_pem(&self) -> String {
        let keys = lock(&self.shared.keys);
        let key = keys
            .iter()
            .rev()
            .find(|k| k.alg == Alg::RS256)
            .expect("an RS256 key");
        let Signer::Rsa(k) = key.signer.as_ref() else {
            unreachable!("RS256 keys are RSA")
        };
        let der = k.public_key().as_der().expect("SPKI DER");
        let body = STANDARD.encode(der.as_ref());
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
            .collect();
        format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            lines.join("\n")
        )
    }

    // ---- minting -----------------------------------------------------------------------

    /// Default claims: iss = issuer, aud = default audience, sub = `user-<n>`,
    /// iat = nbf = now, exp = now + 300. `overrides` (an object) replace or, with `null`,
    /// remove claims.
    pub fn claims(&self, overrides: Value) -> Value {
        let now = now();
        let mut base = Map::new();
        base.insert("iss".into(), json!(self.shared.issuer));
        base.insert("aud".into(), json!(self.behaviour().default_audience));
        base.insert("sub".into(), json!(format!("user-{}", self.next_serial())));
        base.insert("iat".into(), json!(now));
        base.insert("nbf".into(), json!(now));
        base.insert("exp".into(), json!(now + 300));
        merge(base, overrides)
    }

    /// A token signed by the newest key made for `alg`; the header's kid is `kid` if given,
    /// else that key's kid.
    pub fn mint(&self, alg: Alg, overrides: Value, kid: Option<&str>) -> String {
        let key = self.newest(alg);
        let kid = kid.unwrap_or(&key.0).to_string();
        self.sign(
            &key.1,
            alg,
            json!({"alg": alg.name(), "typ": "JWT", "kid": kid}),
            overrides,
        )
    }

    /// Like `mint`, without a `kid` in the header.
    pub fn mint_without_kid(&self, alg: Alg, overrides: Value) -> String {
        let key = self.newest(alg);
        self.sign(
            &key.1,
            alg,
            json!({"alg": alg.name(), "typ": "JWT"}),
            overrides,
        )
    }

    /// Signed by the key `kid` using `alg` (which may differ from the alg the key is
    /// published for, e.g. PS256 with an RS256 key); the header names `kid`.
    pub fn mint_signed_by(&self, kid: &str, alg: Alg, overrides: Value) -> String {
        let signer = {
            let keys = lock(&self.shared.keys);
            keys.iter()
                .find(|k| k.kid == kid)
                .map(|k| k.signer.clone())
                .unwrap_or_else(|| panic!("test IdP has no key {kid}"))
        };
        self.sign(
            &signer,
            alg,
            json!({"alg": alg.name(), "typ": "JWT", "kid": kid}),
            overrides,
        )
    }

    /// `alg: none`, empty signature.
    pub fn mint_none(&self, overrides: Value) -> String {
        let claims = self.claims(overrides);
        jws(&json!({"alg": "none", "typ": "JWT"}), &claims, |_| {
            Vec::new()
        })
    }

    /// The classic key-confusion attack: HS256 "signed" with the RSA public key PEM as the
    /// HMAC secret, naming the RSA key's kid.
    pub fn mint_hs256_with_public_key(&self, overrides: Value) -> String {
        let pem = self.public_key_pem();
        let kid = self.newest(Alg::RS256).0;
        let claims = self.claims(overrides);
        jws(
            &json!({"alg": "HS256", "typ": "JWT", "kid": kid}),
            &claims,
            |msg| {
                let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, pem.as_bytes());
                aws_lc_rs::hmac::sign(&key, msg).as_ref().to_vec()
            },
        )
    }

    /// A well-formed token for a published kid whose signature belongs to other claims.
    pub fn mint_bad_signature(&self, alg: Alg, overrides: Value) -> String {
        let good = self.mint(alg, overrides, None);
        let other = self.mint(alg, json!({"sub": "someone-else"}), None);
        let (head, _) = good.rsplit_once('.').expect("three parts");
        let (_, sig) = other.rsplit_once('.').expect("three parts");
        format!("{head}.{sig}")
    }

    /// Things that are not JWTs at all.
    pub fn garbage() -> Vec<String> {
        vec![
            "garbage".into(),
            "a.b.c".into(),
            "....".into(),
            format!("{}.{}.", b64(b"{\"alg\":\"RS256\"}"), b64(b"not json")),
            format!("{}.{}.sig", b64(b"[1,2]"), b64(b"{}")),
        ]
    }

    fn newest(&self, alg: Alg) -> (String, Arc<Signer>) {
        lock(&self.shared.keys)
            .iter()
            .rev()
            .find(|k| k.alg == alg)
            .map(|k| (k.kid.clone(), k.signer.clone()))
            .unwrap_or_else(|| panic!("test IdP has no {alg:?} key; add_key({alg:?}) first"))
    }

    fn sign(&self, signer: &Signer, alg: Alg, header: Value, overrides: Value) -> String {
        let claims = self.claims(overrides);
        jws(&header, &claims, |msg| signer.sign(alg, msg))
    }

    fn next_serial(&self) -> usize {
        self.shared.serial.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn behaviour(&self) -> MutexGuard<'_, Behaviour> {
        lock(&self.shared.behaviour)
    }

    // ---- lifecycle ---------------------------------------------------------------------

    /// Stop listening and cut every open connection; afterwards connections are refused.
    /// Idempotent.
    pub fn stop(&self) {
        let serving = lock(&self.serving).take();
        if let Some(Serving { stop, thread }) = serving {
            let _ = stop.send(());
            thread.join().expect("test IdP thread panicked");
        }
    }

    /// Listen again on the same port; keys, counters and behaviour are kept.
    pub fn restart(&self) {
        self.stop();
        let listener = rebind(self.port).expect("re-bind test IdP port");
        *lock(&self.serving) = Some(serve(listener, self.shared.clone()));
    }
}

impl Drop for TestIdp {
    fn drop(&mut self) {
        self.stop();
    }
}

/// std sets SO_REUSEADDR on Unix, so TIME_WAIT sockets do not block the re-bind; the short
/// retry only covers the kernel finishing the old close.
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

/// Serves on a new thread with its own runtime; dropping the runtime on stop drops every
/// connection task, which is what makes `stop()` cut kept-alive connections too.
fn serve(listener: StdTcpListener, shared: Arc<Shared>) -> Serving {
    listener.set_nonblocking(true).expect("set_nonblocking");
    let port = listener.local_addr().expect("local_addr").port();
    let (stop, stopped) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name(format!("test-idp-{port}"))
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("build IdP runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("from_std");
                let realm = "/realms/test";
                let app = Router::new()
                    .route(
                        &format!("{realm}/.well-known/openid-configuration"),
                        get(discovery),
                    )
                    .route("/.well-known/openid-configuration", get(discovery))
                    .route(&format!("{realm}/protocol/openid-connect/certs"), get(jwks))
                    .route("/jwks", get(jwks))
                    .route(
                        &format!("{realm}/protocol/openid-connect/token"),
                        post(token),
                    )
                    .route("/token", post(token))
                    .with_state(shared);
                let server = axum::serve(listener, app).into_future();
                tokio::select! {
                    _ = server => {}
                    _ = stopped => {}
                }
            });
            drop(rt);
        })
        .expect("spawn test IdP thread");
    Serving { stop, thread }
}

fn json_response(status: u16, body: Value) -> Response {
    let status = StatusCode::from_u16(status).expect("valid status");
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn stall(shared: &Shared) -> Behaviour {
    let b = lock(&shared.behaviour).clone();
    if !b.stall.is_zero() {
        tokio::time::sleep(b.stall).await;
    }
    b
}

async fn discovery(State(shared): State<Arc<Shared>>) -> Response {
    shared.discovery_calls.fetch_add(1, Ordering::SeqCst);
    stall(&shared).await;
    let iss = &shared.issuer;
    json_response(
        200,
        json!({
            "issuer": iss,
            "jwks_uri": format!("{iss}/protocol/openid-connect/certs"),
            "token_endpoint": format!("{iss}/protocol/openid-connect/token"),
            "id_token_signing_alg_values_supported": ["RS256", "PS256", "ES256", "EdDSA"],
            "grant_types_supported": ["client_credentials", TOKEN_EXCHANGE],
        }),
    )
}

async fn jwks(State(shared): State<Arc<Shared>>) -> Response {
    shared.jwks_calls.fetch_add(1, Ordering::SeqCst);
    let b = stall(&shared).await;
    if let Some(status) = b.jwks_fail {
        return json_response(status, json!({"error": "injected failure"}));
    }
    let mut keys: Vec<Value> = lock(&shared.keys).iter().map(|k| k.jwk.clone()).collect();
    keys.extend(b.extra_jwks);
    let mut resp = json_response(200, json!({ "keys": keys }));
    if let Some(cc) = b.jwks_cache_control {
        resp.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_str(&cc).expect("valid Cache-Control"),
        );
    }
    resp
}

fn oauth_error(status: u16, error: &str, description: &str) -> Response {
    json_response(
        status,
        json!({"error": error, "error_description": description}),
    )
}

async fn token(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    shared.token_calls.fetch_add(1, Ordering::SeqCst);
    let fields: Vec<(String, String)> = url::form_urlencoded::parse(&body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let request = TokenRequest { fields };
    lock(&shared.token_requests).push(request.clone());
    let b = stall(&shared).await;
    let sent_secret = request.get("client_secret").unwrap_or_default();

    if let Some(status) = b.token_fail {
        let error = match status {
            400 => "invalid_grant",
            401 => "invalid_client",
            403 => "access_denied",
            _ => "server_error",
        };
        // Echo what we were sent: a gateway that relays STS bodies would leak it.
        return oauth_error(
            status,
            error,
            &format!("injected failure; client_secret was {sent_secret}"),
        );
    }
    if request.get("client_id") != Some(CLIENT_ID) || sent_secret != CLIENT_SECRET {
        return oauth_error(401, "invalid_client", "bad client credentials");
    }
    let subject = match request.get("grant_type") {
        Some(TOKEN_EXCHANGE) => {
            if request.get("subject_token_type") != Some(ACCESS_TOKEN_TYPE) {
                return oauth_error(400, "invalid_request", "bad subject_token_type");
            }
            let sub = request
                .get("subject_token")
                .and_then(|t| t.split('.').nth(1))
                .and_then(|p| URL_SAFE_NO_PAD.decode(p).ok())
                .and_then(|p| serde_json::from_slice::<Value>(&p).ok())
                .and_then(|c| c.get("sub").and_then(Value::as_str).map(str::to_string));
            match sub {
                Some(sub) => sub,
                None => return oauth_error(400, "invalid_grant", "bad subject_token"),
            }
        }
        Some("client_credentials") => format!("service-account-{CLIENT_ID}"),
        _ => return oauth_error(400, "unsupported_grant_type", "unsupported grant_type"),
    };
    let audience = request
        .get("audience")
        .unwrap_or(COORDINATOR_AUDIENCE)
        .to_string();
    let now = now();
    let lifetime = b.expires_in.unwrap_or(300);
    let serial = shared.serial.fetch_add(1, Ordering::SeqCst);
    let mut claims = json!({
        "iss": shared.issuer, "sub": subject, "aud": audience, "azp": CLIENT_ID,
        "iat": now, "nbf": now, "exp": now + lifetime, "jti": format!("issued-{serial}"),
    });
    if let Some(scope) = request.get("scope") {
        claims["scope"] = json!(scope);
    }
    let (kid, signer) = {
        let keys = lock(&shared.keys);
        let key = keys
            .iter()
            .rev()
            .find(|k| k.alg == Alg::RS256)
            .expect("an RS256 key");
        (key.kid.clone(), key.signer.clone())
    };
    let access_token = jws(
        &json!({"alg": "RS256", "typ": "JWT", "kid": kid}),
        &claims,
        |msg| signer.sign(Alg::RS256, msg),
    );
    let mut answer = json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "issued_token_type": ACCESS_TOKEN_TYPE,
    });
    if let Some(secs) = b.expires_in {
        answer["expires_in"] = json!(secs);
    }
    json_response(200, answer)
}
