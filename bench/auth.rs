//! Micro-benchmark of the per-request auth work, through the library API the proxy uses:
//!
//! * `verify/cold`: `Authenticator::authenticate` of a token never seen before (RS256 signature
//!   check, claims, and the insert into the verified-token cache);
//! * `verify/cached`: the same token again (verified-token cache hit: one SHA-256 and a lookup);
//! * `exchange/cached`: `TokenBroker::upstream_token` for a principal whose exchanged token is
//!   cached (the path of every request after the first with a given token);
//! * `exchange/miss`: the same with a new subject token each time, so one RFC 8693 exchange
//!   with an STS on loopback (mostly the HTTP round trip; for scale);
//! * `request/cached` and `request/cold`: both steps, as a request pays them.
//!
//! A small in-process IdP (RSA-2048 key made with aws-lc-rs, JWKS and token endpoint on
//! 127.0.0.1) stands in for the real one. `cargo bench --bench auth`; under `cargo test` each
//! benchmark runs once (criterion's test mode) with a small token pool.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{KeyPair, RsaKeyPair, RsaPublicKeyComponents, RSA_PKCS1_SHA256};
use axum::extract::State;
use axum::routing::{get, post};
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use criterion::{criterion_group, criterion_main, Criterion};
use jsonwebtoken::Algorithm;
use rungateway::auth::{Authenticator, Principal, TokenBroker};
use rungateway::config::{AuthConfig, AuthMode, Secret};
use serde_json::json;

const ISSUER_PATH: &str = "/realms/bench";
const AUDIENCE: &str = "arp-run-gateway";
const CLIENT_ID: &str = "arp-run-gateway";
const CLIENT_SECRET: &str = "bench-secret";

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

struct Idp {
    base: String,
    key: RsaKeyPair,
    serial: AtomicU64,
    _runtime: tokio::runtime::Runtime,
}

impl Idp {
    fn issuer(&self) -> String {
        format!("{}{ISSUER_PATH}", self.base)
    }

    fn start() -> Arc<Idp> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("idp runtime");
        let key = RsaKeyPair::generate(KeySize::Rsa2048).expect("RSA key");
        let pk = RsaPublicKeyComponents::<Vec<u8>>::from(key.public_key());
        let jwks = json!({"keys": [{"kty": "RSA", "kid": "k1", "use": "sig", "alg": "RS256",
                                     "n": b64(&pk.n), "e": b64(&pk.e)}]})
        .to_string();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let serial = Arc::new(AtomicU64::new(0));
        let app = Router::new()
            .route("/jwks", get(move || async move { jwks }))
            .route("/token", post(token))
            .with_state(serial);
        runtime.spawn(async move { axum::serve(listener, app).await });
        Arc::new(Idp {
            base,
            key,
            serial: AtomicU64::new(0),
            _runtime: runtime,
        })
    }

    /// A fresh RS256 token (distinct `jti`), valid for an hour.
    fn mint(&self) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let n = self.serial.fetch_add(1, Ordering::Relaxed);
        let header = json!({"alg": "RS256", "typ": "JWT", "kid": "k1"});
        let claims = json!({"iss": self.issuer(), "aud": AUDIENCE, "sub": format!("user-{n}"),
                            "iat": now, "nbf": now, "exp": now + 3600, "jti": n});
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let mut sig = vec![0; self.key.public_modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                input.as_bytes(),
                &mut sig,
            )
            .expect("sign");
        format!("{input}.{}", b64(&sig))
    }

    fn cfg(&self, cache_entries: u64) -> AuthConfig {
        AuthConfig {
            mode: AuthMode::Required,
            issuer: Some(self.issuer()),
            audience: Some(AUDIENCE.into()),
            jwks_uri: Some(format!("{}/jwks", self.base)),
            oidc_discovery_url: None,
            algorithms: vec![Algorithm::RS256],
            clock_skew: 60,
            exempt_paths: vec!["/v1/health".into(), "/v1/version".into()],
            dev_subject: "dev".into(),
            anonymous_subject: "anonymous".into(),
            client_id: Some(CLIENT_ID.into()),
            client_secret: Some(Secret::new(CLIENT_SECRET)),
            token_endpoint: Some(format!("{}/token", self.base)),
            sts_timeout: Duration::from_secs(5),
            scope: None,
            jwks_refresh: Duration::from_secs(300),
            unknown_kid_min_interval: Duration::from_secs(30),
            token_cache_max_entries: cache_entries,
            token_cache_margin: Duration::from_secs(30),
            verified_cache_max_entries: cache_entries,
        }
    }
}

async fn token(
    State(serial): State<Arc<AtomicU64>>,
    axum::Form(f): axum::Form<HashMap<String, String>>,
) -> axum::Json<serde_json::Value> {
    assert_eq!(
        f.get("client_secret").map(String::as_str),
        Some(CLIENT_SECRET)
    );
    let n = serial.fetch_add(1, Ordering::Relaxed);
    axum::Json(
        json!({"access_token": format!("upstream-{n}"), "token_type": "Bearer",
                      "expires_in": 300}),
    )
}

fn bearer(token: &str) -> Vec<u8> {
    format!("Bearer {token}").into_bytes()
}

fn benches(c: &mut Criterion) {
    rungateway::auth::install_crypto_provider();
    // `cargo bench` passes --bench; anything else (cargo test) is criterion's test mode.
    let measuring = std::env::args().any(|a| a == "--bench");
    let pool_size = if measuring { 2000 } else { 8 };
    let idp = Idp::start();
    let pool: Vec<Vec<u8>> = (0..pool_size).map(|_| bearer(&idp.mint())).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");

    // A warmed authenticator with keys loaded; the broker is built from the same config.
    let fresh = |entries: u64| {
        let cfg = idp.cfg(entries);
        let auth = Authenticator::new(&cfg, 16 * 1024);
        rt.block_on(auth.refresh_keys()).expect("JWKS fetch");
        (auth, TokenBroker::new(&cfg, "arp-run-coordinator"))
    };

    // Runs `iters` cold verifications: each token of the pool once per authenticator, with a
    // new authenticator (untimed) whenever the pool is used up.
    let cold = |iters: u64, exchange: bool| -> Duration {
        let mut total = Duration::ZERO;
        let mut left = iters as usize;
        while left > 0 {
            let (auth, broker) = fresh(pool.len() as u64 * 2);
            let batch = left.min(pool.len());
            total += rt.block_on(async {
                let start = Instant::now();
                for header in &pool[..batch] {
                    let p = auth
                        .authenticate("/v1/runs/r1", Some(header))
                        .await
                        .unwrap();
                    if exchange {
                        black_box(broker.upstream_token(&p).await.unwrap());
                    }
                    black_box(p);
                }
                start.elapsed()
            });
            left -= batch;
        }
        total
    };

    let mut g = c.benchmark_group("verify");
    g.bench_function("cold", |b| b.iter_custom(|iters| cold(iters, false)));
    let (auth, broker) = fresh(1000);
    let same = &pool[0];
    rt.block_on(auth.authenticate("/v1/runs/r1", Some(same)))
        .unwrap();
    g.bench_function("cached", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(auth.authenticate("/v1/runs/r1", Some(same)).await.unwrap());
                }
                start.elapsed()
            })
        })
    });
    g.finish();

    let mut g = c.benchmark_group("exchange");
    let principal = rt
        .block_on(auth.authenticate("/v1/runs/r1", Some(same)))
        .unwrap();
    rt.block_on(broker.upstream_token(&principal)).unwrap();
    g.bench_function("cached", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(broker.upstream_token(&principal).await.unwrap());
                }
                start.elapsed()
            })
        })
    });
    let serial = AtomicU64::new(0);
    g.bench_function("miss", |b| {
        b.iter_custom(|iters| {
            // The STS does not check subject tokens: any new string is a cache miss.
            let principals: Vec<Principal> = (0..iters)
                .map(|_| Principal::Token {
                    token: format!("subject-{}", serial.fetch_add(1, Ordering::Relaxed)),
                    subject: "bench".into(),
                    exp: u64::MAX / 2,
                })
                .collect();
            rt.block_on(async {
                let start = Instant::now();
                for p in &principals {
                    black_box(broker.upstream_token(p).await.unwrap());
                }
                start.elapsed()
            })
        })
    });
    g.finish();

    let mut g = c.benchmark_group("request");
    g.bench_function("cached", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let p = auth.authenticate("/v1/runs/r1", Some(same)).await.unwrap();
                    black_box(broker.upstream_token(&p).await.unwrap());
                }
                start.elapsed()
            })
        })
    });
    g.bench_function("cold", |b| b.iter_custom(|iters| cold(iters, true)));
    g.finish();
}

criterion_group! {
    name = auth;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = benches
}
criterion_main!(auth);
