//! Authentication end to end (issue 3): the real binary between a client, the test identity
//! provider / STS and the test coordinator.

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::idp::{self, Alg, TestIdp};
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

fn auth_env(
    idp: &TestIdp,
    coord: &TestCoordinator,
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    let mut env = idp.env();
    env.push(("JARVIS_RUN_COORDINATOR_URL".into(), coord.url()));
    env.push(("ARP_AUTH_ALGORITHMS".into(), "RS256,ES256".into()));
    for (k, v) in extra {
        env.retain(|(ek, _)| ek != k);
        env.push((k.to_string(), v.to_string()));
    }
    env
}

fn start(env: &[(String, String)]) -> Gateway {
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Gateway::start(&pairs, &[])
}

fn claims_of(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url"))
        .expect("JSON claims")
}

async fn get_run(gw: &Gateway, token: Option<&str>) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut rb = http_client().get(format!("{}/v1/runs/r1", gw.url()));
    if let Some(t) = token {
        rb = rb.header("authorization", format!("Bearer {t}"));
    }
    let r = rb.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let v = r.json().await.unwrap_or(Value::Null);
    (status, headers, v)
}

#[tokio::test]
async fn valid_tokens_pass_and_the_coordinator_sees_only_the_exchanged_token() {
    let idp = TestIdp::start();
    let coord = TestCoordinator::start();
    let gw = start(&auth_env(&idp, &coord, &[]));
    for alg in [Alg::RS256, Alg::ES256] {
        let inbound = idp.mint(alg, json!({}), None);
        let (status, _, v) = get_run(&gw, Some(&inbound)).await;
        assert_eq!(status, 200, "{alg:?}: {v}");
        let got = coord.forwarded().last().cloned().unwrap();
        let authz = got.header("authorization").expect("an upstream token");
        let upstream = authz.strip_prefix("Bearer ").expect("bearer");
        assert_ne!(
            upstream, inbound,
            "the inbound token never reaches the coordinator"
        );
        assert!(!got
            .headers
            .iter()
            .any(|(_, v)| v.as_bytes() == inbound.as_bytes()));
        let c = claims_of(upstream);
        assert_eq!(c["aud"], idp::COORDINATOR_AUDIENCE);
        assert_eq!(c["sub"], claims_of(&inbound)["sub"]);
    }
    // The exchange request carried exactly the RFC 8693 fields.
    let req = idp.token_requests().last().cloned().unwrap();
    assert_eq!(req.get("grant_type"), Some(idp::TOKEN_EXCHANGE));
    assert_eq!(req.get("subject_token_type"), Some(idp::ACCESS_TOKEN_TYPE));
    assert_eq!(
        req.get("requested_token_type"),
        Some(idp::ACCESS_TOKEN_TYPE)
    );
    assert_eq!(req.get("audience"), Some(idp::COORDINATOR_AUDIENCE));
    assert_eq!(req.get("client_id"), Some(idp::CLIENT_ID));
    assert_eq!(req.get("client_secret"), Some(idp::CLIENT_SECRET));
    assert!(req.get("subject_token").is_some());
}

#[tokio::test]
async fn every_bad_credential_gets_a_precise_401() {
    let idp = TestIdp::start();
    let coord = TestCoordinator::start();
    let gw = start(&auth_env(
        &idp,
        &coord,
        &[("ARP_AUTH_CLOCK_SKEW_SECONDS", "5")],
    ));
    let now = idp::now();
    let bad_sig = idp.mint_bad_signature(Alg::RS256, json!({}));
    let cases: Vec<(&str, Option<String>, &str, &str)> = vec![
        (
            "missing",
            None,
            "invalid_request",
            "Missing Authorization header",
        ),
        (
            "basic",
            Some("Basic dXNlcjpwYXNz".into()),
            "invalid_request",
            "Invalid Authorization header",
        ),
        (
            "three parts",
            Some("Bearer a b".into()),
            "invalid_request",
            "Invalid Authorization header",
        ),
        (
            "empty bearer",
            Some("Bearer ".into()),
            "invalid_request",
            "Invalid Authorization header",
        ),
        (
            "expired",
            Some(format!(
                "Bearer {}",
                idp.mint(Alg::RS256, json!({"exp": now - 120}), None)
            )),
            "invalid_token",
            "Token expired",
        ),
        (
            "not yet valid",
            Some(format!(
                "Bearer {}",
                idp.mint(Alg::RS256, json!({"nbf": now + 600}), None)
            )),
            "invalid_token",
            "Invalid token",
        ),
        (
            "wrong issuer",
            Some(format!(
                "Bearer {}",
                idp.mint(Alg::RS256, json!({"iss": "https://evil"}), None)
            )),
            "invalid_token",
            "Invalid token issuer",
        ),
        (
            "wrong audience",
            Some(format!(
                "Bearer {}",
                idp.mint(Alg::RS256, json!({"aud": "someone-else"}), None)
            )),
            "invalid_token",
            "Invalid token audience",
        ),
        (
            "bad signature",
            Some(format!("Bearer {bad_sig}")),
            "invalid_token",
            "Invalid token",
        ),
        (
            "alg none",
            Some(format!("Bearer {}", idp.mint_none(json!({})))),
            "invalid_token",
            "Invalid token",
        ),
        (
            "hs256 with public key",
            Some(format!(
                "Bearer {}",
                idp.mint_hs256_with_public_key(json!({}))
            )),
            "invalid_token",
            "Invalid token",
        ),
        (
            "unknown kid",
            Some(format!(
                "Bearer {}",
                idp.mint(Alg::RS256, json!({}), Some("nope"))
            )),
            "invalid_token",
            "Invalid token",
        ),
        (
            "garbage",
            Some("Bearer not.a.jwt".into()),
            "invalid_token",
            "Invalid token",
        ),
        (
            "oversized",
            Some(format!("Bearer {}", "a".repeat(17 * 1024))),
            "invalid_token",
            "Invalid token",
        ),
    ];
    for (name, header, error, message) in cases {
        let mut rb = http_client().get(format!("{}/v1/runs/r1", gw.url()));
        if let Some(h) = &header {
            rb = rb.header("authorization", h.as_str());
        }
        let r = rb.send().await.unwrap();
        assert_eq!(r.status(), 401, "{name}");
        let www = r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(www.starts_with("Bearer "), "{name}: {www}");
        assert!(www.contains(&format!("error=\"{error}\"")), "{name}: {www}");
        assert!(
            www.contains(&format!("error_description=\"{message}\"")),
            "{name}: {www}"
        );
        let v: Value = r.json().await.unwrap();
        assert_eq!(
            v,
            json!({"error": {"code": "unauthorized", "message": message}}),
            "{name}"
        );
    }
    assert!(
        coord.forwarded().is_empty(),
        "no rejected request reaches the coordinator"
    );
    // Exempt paths need no token.
    let r = http_client()
        .get(format!("{}/v1/version", gw.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn concurrent_requests_with_one_new_token_make_one_exchange() {
    let idp = TestIdp::start();
    let coord = TestCoordinator::start();
    let gw = start(&auth_env(&idp, &coord, &[]));
    // Warm the key set so the only STS traffic below is the exchange under test.
    let warm = idp.mint(Alg::RS256, json!({}), None);
    assert_eq!(get_run(&gw, Some(&warm)).await.0, 200);
    let before = idp.token_calls();

    let token = idp.mint(Alg::RS256, json!({}), None);
    let url = gw.url();
    let burst = |n: usize| {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                let (url, token) = (url.clone(), token.clone());
                tokio::spawn(async move {
                    http_client()
                        .get(format!("{url}/v1/runs/r1"))
                        .bearer_auth(token)
                        .send()
                        .await
                        .unwrap()
                        .status()
                        .as_u16()
                })
            })
            .collect();
        futures_util::future::join_all(handles)
    };
    for s in burst(32).await {
        assert_eq!(s.unwrap(), 200);
    }
    assert_eq!(
        idp.token_calls() - before,
        1,
        "32 concurrent misses share one exchange"
    );
    for s in burst(20).await {
        assert_eq!(s.unwrap(), 200);
    }
    assert_eq!(idp.token_calls() - before, 1, "cached: no further exchange");
}

#[tokio::test]
async fn key_rotation_is_followed_on_the_first_request_and_kid_floods_are_bounded() {
    let idp = TestIdp::start();
    let coord = TestCoordinator::start();
    let gw = start(&auth_env(&idp, &coord, &[]));
    let first = idp.mint(Alg::RS256, json!({}), None);
    assert_eq!(get_run(&gw, Some(&first)).await.0, 200);

    idp.rotate();
    let rotated = idp.mint(Alg::RS256, json!({}), None);
    let (status, _, v) = get_run(&gw, Some(&rotated)).await;
    assert_eq!(status, 200, "first request with the new key passes: {v}");

    let before = idp.jwks_calls();
    for i in 0..50 {
        let t = idp.mint(Alg::RS256, json!({}), Some(&format!("random-kid-{i}")));
        assert_eq!(get_run(&gw, Some(&t)).await.0, 401);
    }
    let fetches = idp.jwks_calls() - before;
    assert!(
        fetches <= 2,
        "50 unknown kids caused {fetches} JWKS fetches"
    );
}

#[tokio::test]
async fn sts_failures_are_clear_and_recover() {
    let idp = TestIdp::start();
    let coord = TestCoordinator::start();
    let gw = start(&auth_env(&idp, &coord, &[]));
    let warm = idp.mint(Alg::RS256, json!({}), None);
    assert_eq!(get_run(&gw, Some(&warm)).await.0, 200);

    idp.set_token_fail(Some(503));
    let t = idp.mint(Alg::RS256, json!({}), None);
    let (status, _, v) = get_run(&gw, Some(&t)).await;
    assert_eq!(status, 502, "{v}");
    assert_eq!(v["error"]["code"], "token_exchange_failed");
    assert_eq!(v["error"]["retryable"], true);
    assert!(!v.to_string().contains(idp::CLIENT_SECRET));

    idp.set_token_fail(Some(401));
    let (status, _, v) = get_run(&gw, Some(&t)).await;
    assert_eq!(status, 401, "{v}");
    assert_eq!(v["error"]["code"], "token_exchange_failed");

    idp.set_token_fail(None);
    let (status, _, _) = get_run(&gw, Some(&t)).await;
    assert_eq!(
        status, 200,
        "a failed exchange is not cached; the next request succeeds"
    );

    // STS unreachable altogether.
    let t2 = idp.mint(Alg::RS256, json!({}), None);
    idp.stop();
    let (status, _, v) = get_run(&gw, Some(&t2)).await;
    assert!(status == 502 || status == 503, "{status}: {v}");
    assert_eq!(v["error"]["retryable"], true);
    assert!(coord
        .forwarded()
        .iter()
        .all(|r| r.header("authorization").is_some()));
}

#[tokio::test]
async fn optional_mode_without_token_uses_client_credentials() {
    let idp = TestIdp::start();
    let coord = TestCoordinator::start();
    let gw = start(&auth_env(&idp, &coord, &[("ARP_AUTH_MODE", "optional")]));
    let (status, _, v) = get_run(&gw, None).await;
    assert_eq!(status, 200, "{v}");
    let req = idp.token_requests().last().cloned().unwrap();
    assert_eq!(req.get("grant_type"), Some("client_credentials"));
    assert_eq!(req.get("audience"), Some(idp::COORDINATOR_AUDIENCE));
    assert!(req.get("subject_token").is_none());
    let got = coord.forwarded().last().cloned().unwrap();
    let upstream = got
        .header("authorization")
        .unwrap()
        .strip_prefix("Bearer ")
        .unwrap()
        .to_string();
    assert_eq!(claims_of(&upstream)["aud"], idp::COORDINATOR_AUDIENCE);
    // A present header must still be valid in optional mode.
    let (status, _, _) = get_run(&gw, Some("garbage")).await;
    assert_eq!(status, 401);
    // Client-credentials tokens are cached too.
    let calls = idp.token_calls();
    assert_eq!(get_run(&gw, None).await.0, 200);
    assert_eq!(idp.token_calls(), calls);
}

#[tokio::test]
async fn disabled_mode_needs_no_sts() {
    let idp = TestIdp::start();
    let coord = TestCoordinator::start();
    let gw = Gateway::start(
        &[
            ("JARVIS_RUN_COORDINATOR_URL", &coord.url()),
            ("ARP_AUTH_MODE", "disabled"),
            ("ARP_AUTH_ISSUER", &idp.issuer()),
        ],
        &[],
    );
    let (status, _, _) = get_run(&gw, Some("whatever")).await;
    assert_eq!(status, 200);
    assert_eq!(
        coord.forwarded().last().unwrap().header("authorization"),
        None
    );
    assert_eq!(
        idp.token_calls() + idp.jwks_calls() + idp.discovery_calls(),
        0
    );
}

#[tokio::test]
async fn idp_down_at_startup_gives_503_then_recovers() {
    let idp = TestIdp::start();
    idp.stop();
    let coord = TestCoordinator::start();
    let gw = start(&auth_env(&idp, &coord, &[]));
    let r = http_client()
        .get(format!("{}/v1/health", gw.url()))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "degraded", "{v}");
    let check = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "identity_provider")
        .cloned()
        .expect("identity_provider check");
    assert_eq!(check["status"], "down");

    let token = idp.mint(Alg::RS256, json!({}), None);
    let (status, _, v) = get_run(&gw, Some(&token)).await;
    assert_eq!(status, 503, "no keys yet: {v}");
    assert_eq!(v["error"]["retryable"], true);

    idp.restart();
    let mut ok = false;
    for _ in 0..100 {
        if get_run(&gw, Some(&token)).await.0 == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "tokens pass once the IdP is back, without a restart");
}

#[tokio::test]
async fn no_token_or_secret_ever_reaches_the_log() {
    let idp = TestIdp::start();
    let coord = TestCoordinator::start();
    let gw = start(&auth_env(&idp, &coord, &[("RUST_LOG", "trace")]));
    let good = idp.mint(Alg::RS256, json!({}), None);
    let bad = idp.mint_bad_signature(Alg::RS256, json!({}));
    assert_eq!(get_run(&gw, Some(&good)).await.0, 200);
    assert_eq!(get_run(&gw, Some(&bad)).await.0, 401);
    idp.set_token_fail(Some(400));
    let other = idp.mint(Alg::RS256, json!({}), None);
    let _ = get_run(&gw, Some(&other)).await;
    idp.set_token_fail(None);
    let exchanged: Vec<String> = coord
        .forwarded()
        .iter()
        .filter_map(|r| {
            r.header("authorization")
                .map(|h| h.trim_start_matches("Bearer ").to_string())
        })
        .collect();
    assert!(!exchanged.is_empty());
    let logs = gw.logs();
    assert!(logs.contains("access"), "the log was captured: {logs}");
    for secret in [
        good.as_str(),
        bad.as_str(),
        other.as_str(),
        idp::CLIENT_SECRET,
    ]
    .into_iter()
    .chain(exchanged.iter().map(String::as_str))
    {
        // Any signature segment alone would be enough to leak a token.
        let sig = secret.rsplit('.').next().unwrap_or(secret);
        if let Some(line) = logs.lines().find(|l| l.contains(sig)) {
            let shown: String = line.chars().take(160).collect();
            panic!("a secret leaked into the log, in a line starting: {shown}");
        }
    }
}

#[tokio::test]
async fn a_coordinator_401_drops_the_cached_token_and_retries_gets_once() {
    let idp = TestIdp::start();
    let coord = TestCoordinator::start();
    let gw = start(&auth_env(&idp, &coord, &[]));
    let token = idp.mint(Alg::RS256, json!({}), None);
    assert_eq!(get_run(&gw, Some(&token)).await.0, 200);
    let calls = idp.token_calls();

    let refusal = json!({"error": {"code": "unauthorized", "message": "token revoked"}});
    coord.set_fail(Some((401, refusal.clone())));
    coord.clear();
    let (status, _, v) = get_run(&gw, Some(&token)).await;
    assert_eq!(status, 401);
    assert_eq!(v, refusal, "the second 401 goes to the client as is");
    assert_eq!(coord.forwarded().len(), 2, "retried exactly once");
    assert_eq!(
        idp.token_calls(),
        calls + 1,
        "the retry used a fresh exchange"
    );

    // Not idempotent: sent once, but the cached token is still dropped.
    coord.clear();
    let r = http_client()
        .post(format!("{}/v1/runs/r1:cancel", gw.url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(coord.forwarded().len(), 1);
    coord.set_fail(None);
    let before = idp.token_calls();
    assert_eq!(get_run(&gw, Some(&token)).await.0, 200);
    assert_eq!(
        idp.token_calls(),
        before + 1,
        "a fresh exchange after the refusal"
    );
}
