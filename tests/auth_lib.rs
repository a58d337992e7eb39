//! The auth library (`rungateway::auth`) driven directly against the test IdP over real
//! sockets: inbound JWT verification, key rotation and IdP outages, the verified-token cache,
//! and the outbound token exchange.

#[path = "common/idp.rs"]
mod idp;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use idp::{Alg, TestIdp, ACCESS_TOKEN_TYPE, CLIENT_ID, CLIENT_SECRET, COORDINATOR_AUDIENCE};
use jsonwebtoken::Algorithm;
use rungateway::auth::{Authenticator, Principal, TokenBroker};
use rungateway::config::{AuthConfig, AuthMode, Secret};
use rungateway::errors::ApiError;
use serde_json::{json, Value};

const MAX_TOKEN: usize = 16 * 1024;

fn cfg(idp: &TestIdp) -> AuthConfig {
    AuthConfig {
        mode: AuthMode::Required,
        issuer: Some(idp.issuer()),
        audience: Some(idp::GATEWAY_AUDIENCE.to_string()),
        jwks_uri: Some(idp.jwks_uri()),
        oidc_discovery_url: None,
        algorithms: vec![Algorithm::RS256, Algorithm::ES256],
        clock_skew: 60,
        exempt_paths: vec!["/v1/health".into(), "/v1/version".into()],
        dev_subject: "dev".into(),
        anonymous_subject: "anonymous".into(),
        client_id: Some(CLIENT_ID.into()),
        client_secret: Some(Secret::new(CLIENT_SECRET)),
        token_endpoint: Some(idp.token_endpoint()),
        sts_timeout: Duration::from_secs(2),
        scope: None,
        jwks_refresh: Duration::from_secs(300),
        unknown_kid_min_interval: Duration::from_secs(30),
        token_cache_max_entries: 1000,
        token_cache_margin: Duration::from_secs(30),
        verified_cache_max_entries: 1000,
    }
}

fn bearer(token: &str) -> Vec<u8> {
    format!("Bearer {token}").into_bytes()
}

async fn auth_token(auth: &Authenticator, token: &str) -> Result<Principal, ApiError> {
    auth.authenticate("/v1/runs", Some(&bearer(token))).await
}

fn challenge(e: &ApiError) -> &str {
    e.headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("WWW-Authenticate"))
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no WWW-Authenticate on {e:?}"))
}

#[track_caller]
fn assert_401(result: Result<Principal, ApiError>, error: &str, message: &str, what: &str) {
    let e = match result {
        Ok(p) => panic!("{what}: accepted as {p:?}"),
        Err(e) => e,
    };
    assert_eq!(
        (e.status, e.code, e.message.as_str()),
        (401, "unauthorized", message),
        "{what}"
    );
    assert_eq!(
        challenge(&e),
        format!("Bearer error=\"{error}\", error_description=\"{message}\""),
        "{what}"
    );
}

#[track_caller]
fn assert_idp_unavailable(result: Result<Principal, ApiError>) {
    let e = result.expect_err("must fail while the IdP is down");
    assert_eq!(
        (e.status, e.code),
        (503, "identity_provider_unavailable"),
        "{e:?}"
    );
    assert_eq!(e.message, "Unable to fetch JWKS");
    assert_eq!(e.retryable, Some(true));
}

/// Polls `cond` every 50 ms for up to `limit`.
async fn eventually<F, Fut>(limit: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn principal(token: &str, sub: &str, exp: u64) -> Principal {
    Principal::Token {
        token: token.to_string(),
        subject: sub.to_string(),
        exp,
    }
}

/// The claims of a JWT, unverified (to inspect what the STS issued).
fn claims_of(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("JWT payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url payload");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

// ---------------------------------------------------------------------------------------------
// Inbound
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn valid_rs256_and_es256_tokens_pass() {
    let idp = TestIdp::start();
    let auth = Authenticator::new(&cfg(&idp), MAX_TOKEN);
    for alg in [Alg::RS256, Alg::ES256] {
        let token = idp.mint(alg, json!({"sub": format!("alice-{}", alg.name())}), None);
        let p = auth_token(&auth, &token)
            .await
            .unwrap_or_else(|e| panic!("{alg:?}: {e:?}"));
        assert_eq!(p.subject(), format!("alice-{}", alg.name()));
        assert_eq!(p.bearer(), Some(token.as_str()));
        assert!(matches!(p, Principal::Token { exp, .. } if exp > idp::now()));
    }
    // Both verified with one fetch; a token without kid works too (single usable key).
    let kidless = idp.mint_without_kid(Alg::RS256, json!({}));
    auth_token(&auth, &kidless).await.expect("kidless token");
    assert_eq!((idp.jwks_calls(), auth.jwks_fetches()), (1, 1));

    let check = auth.identity_provider_check().expect("auth is enabled");
    assert_eq!(check["name"], "identity_provider");
    assert_eq!(check["status"], "ok");
    assert_eq!(check["details"]["keys"], 2);
    assert_eq!(check["details"]["jwks_uri"], json!(idp.jwks_uri()));
    assert!(check["details"]["last_refresh"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    assert!(check.get("message").is_none(), "{check}");
}

#[tokio::test]
async fn bad_tokens_get_401_with_the_right_message() {
    let idp = TestIdp::start();
    let mut c = cfg(&idp);
    c.algorithms.push(Algorithm::PS256);
    let auth = Authenticator::new(&c, MAX_TOKEN);
    let now = idp::now();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            idp.mint(
                Alg::RS256,
                json!({"exp": now - 120, "iat": now - 400, "nbf": now - 400}),
                None,
            ),
            "Token expired",
        ),
        (
            "expired ES256",
            idp.mint(Alg::ES256, json!({"exp": now - 61}), None),
            "Token expired",
        ),
        (
            "nbf in the future",
            idp.mint(Alg::RS256, json!({"nbf": now + 600}), None),
            "Invalid token",
        ),
        (
            "iat in the future",
            idp.mint(Alg::RS256, json!({"iat": now + 600}), None),
            "Invalid token",
        ),
        (
            "no exp",
            idp.mint(Alg::RS256, json!({"exp": null}), None),
            "Invalid token",
        ),
        (
            "wrong iss",
            idp.mint(Alg::RS256, json!({"iss": "https://evil.example"}), None),
            "Invalid token issuer",
        ),
        (
            "no iss",
            idp.mint(Alg::RS256, json!({"iss": null}), None),
            "Invalid token issuer",
        ),
        (
            "wrong aud",
            idp.mint(Alg::RS256, json!({"aud": "someone-else"}), None),
            "Invalid token audience",
        ),
        (
            "no aud",
            idp.mint(Alg::RS256, json!({"aud": null}), None),
            "Invalid token audience",
        ),
        (
            "bad signature",
            idp.mint_bad_signature(Alg::RS256, json!({})),
            "Invalid token",
        ),
        (
            "bad ES256 signature",
            idp.mint_bad_signature(Alg::ES256, json!({})),
            "Invalid token",
        ),
        ("alg none", idp.mint_none(json!({})), "Invalid token"),
        (
            "HS256 with the public key",
            idp.mint_hs256_with_public_key(json!({})),
            "Invalid token",
        ),
        (
            "ES256 naming the RSA kid",
            idp.mint(Alg::ES256, json!({}), Some("rsa-1")),
            "Invalid token",
        ),
        (
            "PS256 with a key published for RS256",
            idp.mint_signed_by("rsa-1", Alg::PS256, json!({})),
            "Invalid token",
        ),
        (
            "unknown kid",
            idp.mint(Alg::RS256, json!({}), Some("no-such-kid")),
            "Invalid token",
        ),
    ];
    for (what, token, message) in cases {
        assert_401(
            auth_token(&auth, &token).await,
            "invalid_token",
            message,
            what,
        );
    }
    for g in TestIdp::garbage() {
        assert_401(
            auth_token(&auth, &g).await,
            "invalid_token",
            "Invalid token",
            &g,
        );
    }
    let oversized = idp.mint(Alg::RS256, json!({"pad": "x".repeat(MAX_TOKEN)}), None);
    assert_401(
        auth_token(&auth, &oversized).await,
        "invalid_token",
        "Invalid token",
        "oversized",
    );

    assert_401(
        auth.authenticate("/v1/runs", None).await,
        "invalid_request",
        "Missing Authorization header",
        "missing header",
    );
    let good = idp.mint(Alg::RS256, json!({}), None);
    for header in [
        format!("Basic {good}"),
        format!("Bearer {good} extra"),
        "Bearer".to_string(),
        format!("Bearer{good}"),
    ] {
        assert_401(
            auth.authenticate("/v1/runs", Some(header.as_bytes())).await,
            "invalid_request",
            "Invalid Authorization header",
            &header,
        );
    }
    // Lower-case scheme and extra whitespace are fine.
    let relaxed = format!("bearer   {good} ");
    auth.authenticate("/v1/runs", Some(relaxed.as_bytes()))
        .await
        .expect("lower-case bearer");
}

#[tokio::test]
async fn eddsa_and_ps256_keys_and_the_allow_list() {
    let idp = TestIdp::start();
    let ed = idp.add_key(Alg::EdDSA);
    let ps = idp.add_key(Alg::PS256);
    let mut c = cfg(&idp);
    c.algorithms = vec![Algorithm::EdDSA, Algorithm::PS256, Algorithm::RS256];
    let auth = Authenticator::new(&c, MAX_TOKEN);
    auth_token(&auth, &idp.mint(Alg::EdDSA, json!({}), None))
        .await
        .expect("EdDSA");
    auth_token(&auth, &idp.mint(Alg::PS256, json!({}), None))
        .await
        .expect("PS256");
    // ES256 is not in this allow-list: refused although the key is published.
    let es = idp.mint(Alg::ES256, json!({}), None);
    assert_401(
        auth_token(&auth, &es).await,
        "invalid_token",
        "Invalid token",
        "ES256 not allowed",
    );
    // A kid of another key type never verifies.
    let wrong = idp.mint(Alg::PS256, json!({}), Some(&ed));
    assert_401(
        auth_token(&auth, &wrong).await,
        "invalid_token",
        "Invalid token",
        "PS256 with Ed kid",
    );
    assert!(idp.kids().contains(&ps));
    assert_eq!(idp.jwks_calls(), 1);
}

#[tokio::test]
async fn symmetric_and_encryption_entries_in_the_jwks_are_ignored() {
    use base64::Engine;
    let idp = TestIdp::start();
    let pem = idp.public_key_pem();
    let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pem.as_bytes());
    // An `oct` key under the RSA key's kid: a verifier that let `from_jwk` build an HMAC
    // key from it would accept the key-confusion token below.
    idp.set_extra_jwks(vec![
        json!({"kty": "oct", "kid": "rsa-1", "k": k, "alg": "HS256"}),
        json!({"kty": "oct", "kid": "hmac", "k": k}),
    ]);
    let mut c = cfg(&idp);
    c.algorithms = vec![Algorithm::RS256];
    let auth = Authenticator::new(&c, MAX_TOKEN);
    auth_token(&auth, &idp.mint(Alg::RS256, json!({}), None))
        .await
        .expect("RS256 still works");
    let hs = idp.mint_hs256_with_public_key(json!({}));
    assert_401(
        auth_token(&auth, &hs).await,
        "invalid_token",
        "Invalid token",
        "HS256 + oct",
    );
    let check = auth.identity_provider_check().unwrap();
    assert_eq!(
        check["details"]["keys"], 2,
        "only rsa-1 and ec-1 are usable: {check}"
    );
}

#[tokio::test]
async fn discovery_finds_the_jwks() {
    let idp = TestIdp::start();
    let mut c = cfg(&idp);
    c.jwks_uri = None;
    let auth = Authenticator::new(&c, MAX_TOKEN);
    auth_token(&auth, &idp.mint(Alg::RS256, json!({}), None))
        .await
        .expect("via discovery");
    assert_eq!((idp.discovery_calls(), idp.jwks_calls()), (1, 1));
    // The discovered location is remembered.
    auth.refresh_keys().await.expect("refresh");
    assert_eq!((idp.discovery_calls(), idp.jwks_calls()), (1, 2));
    let check = auth.identity_provider_check().unwrap();
    assert_eq!(check["details"]["jwks_uri"], json!(idp.jwks_uri()));
}

#[tokio::test]
async fn optional_mode_and_exempt_paths() {
    let idp = TestIdp::start();
    let mut c = cfg(&idp);
    c.mode = AuthMode::Optional;
    let auth = Authenticator::new(&c, MAX_TOKEN);
    assert_eq!(
        auth.authenticate("/v1/runs", None).await.unwrap(),
        Principal::Anonymous("anonymous".into())
    );
    let bad = idp.mint(Alg::RS256, json!({"aud": "other"}), None);
    assert_401(
        auth_token(&auth, &bad).await,
        "invalid_token",
        "Invalid token audience",
        "optional + bad",
    );
    let good = idp.mint(Alg::RS256, json!({"sub": "bob"}), None);
    assert_eq!(auth_token(&auth, &good).await.unwrap().subject(), "bob");
    // Exempt paths skip auth entirely, even with a bad header.
    assert!(auth.is_exempt("/v1/health"));
    assert!(auth
        .authenticate("/v1/health", Some(b"Basic x"))
        .await
        .is_ok());

    let mut d = cfg(&idp);
    d.mode = AuthMode::Disabled;
    let dev = Authenticator::new(&d, MAX_TOKEN);
    assert_eq!(
        dev.authenticate("/v1/runs", Some(b"Bearer whatever"))
            .await
            .unwrap(),
        Principal::Dev("dev".into())
    );
    assert!(dev.identity_provider_check().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_random_kids_cause_at_most_two_fetches() {
    let idp = TestIdp::start();
    let auth = Authenticator::new(&cfg(&idp), MAX_TOKEN);
    let good = idp.mint(Alg::RS256, json!({}), None);
    auth_token(&auth, &good).await.expect("valid token");
    // Half of them concurrently, half one after another.
    let tokens: Vec<String> = (0..50)
        .map(|i| idp.mint(Alg::RS256, json!({}), Some(&format!("random-kid-{i}"))))
        .collect();
    let concurrent = join_all(tokens[..25].iter().map(|t| {
        let auth = auth.clone();
        let t = t.clone();
        tokio::spawn(async move { auth_token(&auth, &t).await })
    }))
    .await;
    for r in concurrent {
        assert_401(
            r.expect("task"),
            "invalid_token",
            "Invalid token",
            "random kid",
        );
    }
    for t in &tokens[25..] {
        assert_401(
            auth_token(&auth, t).await,
            "invalid_token",
            "Invalid token",
            "random kid",
        );
    }
    // The same unknown kid again is answered from the negative cache.
    assert_401(
        auth_token(&auth, &tokens[0]).await,
        "invalid_token",
        "Invalid token",
        "repeat",
    );
    assert!(
        idp.jwks_calls() <= 2,
        "JWKS fetched {} times",
        idp.jwks_calls()
    );
    assert_eq!(auth.jwks_fetches() as usize, idp.jwks_calls());
    auth_token(&auth, &good)
        .await
        .expect("valid token still accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_is_followed_on_the_first_request() {
    let idp = TestIdp::start();
    let auth = Authenticator::new(&cfg(&idp), MAX_TOKEN);
    auth_token(&auth, &idp.mint(Alg::RS256, json!({}), None))
        .await
        .expect("old key");
    let new_kid = idp.rotate();
    // Several clients switch to the new key at once: one shared fetch serves them all.
    let tokens: Vec<String> = (0..8)
        .map(|_| idp.mint(Alg::RS256, json!({}), None))
        .collect();
    let results = join_all(tokens.iter().map(|t| {
        let auth = auth.clone();
        let t = t.clone();
        tokio::spawn(async move { auth_token(&auth, &t).await })
    }))
    .await;
    for r in results {
        r.expect("task").expect("token signed by the new key");
    }
    assert_eq!(idp.jwks_calls(), 2, "one refresh for the rotation");
    assert!(idp.kids().contains(&new_kid));
}

#[tokio::test]
async fn verified_cache_forgets_tokens_of_rotated_keys() {
    let idp = TestIdp::start();
    let auth = Authenticator::new(&cfg(&idp), MAX_TOKEN);
    let old = idp.mint(Alg::RS256, json!({}), None);
    auth_token(&auth, &old).await.expect("verified and cached");
    auth_token(&auth, &old).await.expect("cache hit");
    assert_eq!(auth.jwks_fetches(), 1);
    idp.rotate();
    auth.refresh_keys().await.expect("refresh");
    assert_401(
        auth_token(&auth, &old).await,
        "invalid_token",
        "Invalid token",
        "key rotated away",
    );
    auth_token(&auth, &idp.mint(Alg::RS256, json!({}), None))
        .await
        .expect("new key");
}

#[tokio::test]
async fn verified_cache_never_outlives_exp() {
    let idp = TestIdp::start();
    let mut c = cfg(&idp);
    c.clock_skew = 0;
    let auth = Authenticator::new(&c, MAX_TOKEN);
    let exp = idp::now() + 2;
    let token = idp.mint(Alg::ES256, json!({"exp": exp}), None);
    auth_token(&auth, &token).await.expect("fresh");
    auth_token(&auth, &token).await.expect("cached");
    assert!(auth.verified_cache_entries() <= 1);
    // jsonwebtoken accepts up to and including `exp`; wait until strictly after it.
    assert!(eventually(Duration::from_secs(6), || async { idp::now() > exp }).await);
    assert_401(
        auth_token(&auth, &token).await,
        "invalid_token",
        "Token expired",
        "after exp",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idp_down_at_start_is_503_then_recovers_without_restart() {
    let idp = TestIdp::start();
    let token = idp.mint(Alg::RS256, json!({}), None);
    idp.stop();
    let auth = Authenticator::new(&cfg(&idp), MAX_TOKEN);
    // 20 requests at once while there are no keys: one shared fetch attempt between them.
    let results = join_all((0..20).map(|_| {
        let auth = auth.clone();
        let token = token.clone();
        tokio::spawn(async move { auth_token(&auth, &token).await })
    }))
    .await;
    for r in results {
        assert_idp_unavailable(r.expect("task"));
    }
    assert_eq!(auth.jwks_fetches(), 1);
    // Within the back-off, requests do not fetch again.
    assert_idp_unavailable(auth_token(&auth, &token).await);
    assert_eq!(auth.jwks_fetches(), 1);
    let check = auth.identity_provider_check().unwrap();
    assert_eq!(check["status"], "down");
    assert!(
        check["message"]
            .as_str()
            .unwrap()
            .starts_with("Unable to fetch JWKS"),
        "{check}"
    );

    idp.restart();
    assert!(
        eventually(Duration::from_secs(10), || async {
            auth_token(&auth, &token).await.is_ok()
        })
        .await,
        "token accepted once the IdP is back"
    );
    assert_eq!(auth.identity_provider_check().unwrap()["status"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_loop_fetches_in_the_background_and_keeps_the_last_good_set() {
    let idp = TestIdp::start();
    idp.stop();
    let auth = Authenticator::new(&cfg(&idp), MAX_TOKEN);
    let loop_task = tokio::spawn(auth.clone().run_refresh_loop());
    assert!(
        eventually(Duration::from_secs(5), || async {
            auth.jwks_fetches() >= 1
        })
        .await
    );
    idp.restart();
    // No request needed: the loop's back-off retries bring the keys in.
    assert!(
        eventually(Duration::from_secs(10), || async {
            auth.identity_provider_check().unwrap()["status"] == "ok"
        })
        .await
    );
    let fetches = auth.jwks_fetches();
    auth_token(&auth, &idp.mint(Alg::RS256, json!({}), None))
        .await
        .expect("keys present");
    assert_eq!(auth.jwks_fetches(), fetches, "no fetch on the request path");

    // A failing refresh keeps the last good set.
    idp.set_jwks_fail(Some(500));
    assert!(auth.refresh_keys().await.is_err());
    auth_token(&auth, &idp.mint(Alg::ES256, json!({}), None))
        .await
        .expect("old set kept");
    let check = auth.identity_provider_check().unwrap();
    assert_eq!(check["status"], "ok");
    assert!(
        check["message"].as_str().unwrap().contains("500"),
        "{check}"
    );
    loop_task.abort();
}

// ---------------------------------------------------------------------------------------------
// Outbound
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_share_one_exchange() {
    let idp = TestIdp::start();
    idp.set_stall(Duration::from_millis(200));
    let broker = TokenBroker::new(&cfg(&idp), COORDINATOR_AUDIENCE);
    let inbound = idp.mint(Alg::RS256, json!({"sub": "carol"}), None);
    let p = principal(&inbound, "carol", idp::now() + 300);
    let results = join_all((0..32).map(|_| {
        let broker = broker.clone();
        let p = p.clone();
        tokio::spawn(async move { broker.upstream_token(&p).await })
    }))
    .await;
    let tokens: Vec<Arc<str>> = results
        .into_iter()
        .map(|r| r.expect("task").expect("exchange").expect("a token"))
        .collect();
    assert!(tokens.iter().all(|t| *t == tokens[0]));
    assert_eq!(idp.token_calls(), 1);
    idp.set_stall(Duration::ZERO);
    for _ in 0..20 {
        assert_eq!(broker.upstream_token(&p).await.unwrap().unwrap(), tokens[0]);
    }
    assert_eq!(idp.token_calls(), 1);
    let (hits, misses, calls, errors) = broker.stats();
    assert_eq!((hits + misses, calls, errors), (52, 1, 0));
    assert!(hits >= 20);
}

#[tokio::test]
async fn exchange_sends_exactly_the_rfc8693_fields() {
    let idp = TestIdp::start();
    let mut c = cfg(&idp);
    c.scope = Some("runs:write".into());
    let broker = TokenBroker::new(&c, COORDINATOR_AUDIENCE);
    let inbound = idp.mint(Alg::RS256, json!({"sub": "dave"}), None);
    let upstream = broker
        .upstream_token(&principal(&inbound, "dave", idp::now() + 300))
        .await
        .unwrap()
        .unwrap();
    let reqs = idp.token_requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(
        r.names(),
        [
            "grant_type",
            "client_id",
            "client_secret",
            "subject_token",
            "subject_token_type",
            "requested_token_type",
            "audience",
            "scope"
        ]
    );
    assert_eq!(r.get("grant_type"), Some(idp::TOKEN_EXCHANGE));
    assert_eq!(r.get("client_id"), Some(CLIENT_ID));
    assert_eq!(r.get("client_secret"), Some(CLIENT_SECRET));
    assert_eq!(r.get("subject_token"), Some(inbound.as_str()));
    assert_eq!(r.get("subject_token_type"), Some(ACCESS_TOKEN_TYPE));
    assert_eq!(r.get("requested_token_type"), Some(ACCESS_TOKEN_TYPE));
    assert_eq!(r.get("audience"), Some(COORDINATOR_AUDIENCE));
    assert_eq!(r.get("scope"), Some("runs:write"));
    // The upstream token is the STS's, for the coordinator, on behalf of the caller.
    let claims = claims_of(&upstream);
    assert_eq!(claims["aud"], COORDINATOR_AUDIENCE);
    assert_eq!(claims["sub"], "dave");
    assert_ne!(&*upstream, inbound.as_str());
}

#[tokio::test]
async fn anonymous_gets_a_client_credentials_token() {
    let idp = TestIdp::start();
    let mut c = cfg(&idp);
    c.mode = AuthMode::Optional;
    let broker = TokenBroker::new(&c, COORDINATOR_AUDIENCE);
    let token = broker
        .upstream_token(&Principal::Anonymous("anonymous".into()))
        .await
        .unwrap()
        .expect("a token");
    let r = &idp.token_requests()[0];
    assert_eq!(
        r.names(),
        ["grant_type", "client_id", "client_secret", "audience"]
    );
    assert_eq!(r.get("grant_type"), Some("client_credentials"));
    assert_eq!(r.get("audience"), Some(COORDINATOR_AUDIENCE));
    assert_eq!(
        claims_of(&token)["sub"],
        format!("service-account-{CLIENT_ID}")
    );
    // Dev principals share the same client-credentials token: cached, no second call.
    let again = broker
        .upstream_token(&Principal::Dev("dev".into()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again, token);
    assert_eq!(idp.token_calls(), 1);
}

#[tokio::test]
async fn disabled_without_credentials_sends_no_token_and_never_calls_the_sts() {
    let idp = TestIdp::start();
    let mut c = cfg(&idp);
    c.mode = AuthMode::Disabled;
    c.client_id = None;
    c.client_secret = None;
    let broker = TokenBroker::new(&c, COORDINATOR_AUDIENCE);
    for p in [
        Principal::Dev("dev".into()),
        Principal::Anonymous("anonymous".into()),
    ] {
        assert_eq!(broker.upstream_token(&p).await.unwrap(), None);
    }
    assert_eq!(idp.token_calls(), 0);
    assert!(rungateway::auth::config_warnings(&c).is_empty());
    // With a caller token but nothing to exchange it with: a clear 502.
    c.mode = AuthMode::Required;
    let broker = TokenBroker::new(&c, COORDINATOR_AUDIENCE);
    let e = broker
        .upstream_token(&principal("t", "s", idp::now() + 60))
        .await
        .unwrap_err();
    assert_eq!((e.status, e.code), (502, "token_exchange_failed"));
    assert!(rungateway::auth::config_warnings(&c)
        .iter()
        .any(|w| w.contains("ARP_AUTH_CLIENT_ID")));
}

#[tokio::test]
async fn sts_down_is_retryable_502_then_recovers() {
    let idp = TestIdp::start();
    let broker = TokenBroker::new(&cfg(&idp), COORDINATOR_AUDIENCE);
    let inbound = idp.mint(Alg::RS256, json!({}), None);
    let p = principal(&inbound, "erin", idp::now() + 300);
    idp.stop();
    for _ in 0..2 {
        let e = broker.upstream_token(&p).await.unwrap_err();
        assert_eq!((e.status, e.code), (502, "token_exchange_failed"), "{e:?}");
        assert_eq!(e.retryable, Some(true));
    }
    idp.restart();
    broker
        .upstream_token(&p)
        .await
        .expect("STS back")
        .expect("token");
    let (_, _, calls, errors) = broker.stats();
    assert_eq!((calls, errors), (3, 2), "errors are not cached");

    // 5xx is retryable too, and shows the STS status.
    let other = principal(
        &idp.mint(Alg::RS256, json!({}), None),
        "x",
        idp::now() + 300,
    );
    idp.set_token_fail(Some(503));
    let e = broker.upstream_token(&other).await.unwrap_err();
    assert_eq!((e.status, e.retryable), (502, Some(true)));
    assert_eq!(e.details.as_ref().unwrap()["status"], 503);
}

#[tokio::test]
async fn sts_timeout_is_retryable_502() {
    let idp = TestIdp::start();
    let mut c = cfg(&idp);
    c.sts_timeout = Duration::from_millis(300);
    let broker = TokenBroker::new(&c, COORDINATOR_AUDIENCE);
    idp.set_stall(Duration::from_secs(3));
    let started = Instant::now();
    let e = broker
        .upstream_token(&Principal::Anonymous("anonymous".into()))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "timeout honoured"
    );
    assert_eq!((e.status, e.code), (502, "token_request_failed"));
    assert_eq!(e.retryable, Some(true));
    assert_eq!(e.details.as_ref().unwrap()["error"], "timeout");
}

#[tokio::test]
async fn sts_refusals_keep_their_status_and_never_leak() {
    let idp = TestIdp::start();
    let broker = TokenBroker::new(&cfg(&idp), COORDINATOR_AUDIENCE);
    let inbound = idp.mint(Alg::RS256, json!({}), None);
    let p = principal(&inbound, "frank", idp::now() + 300);
    for (sts, status, error) in [
        (401, 401, "invalid_client"),
        (403, 403, "access_denied"),
        (400, 502, "invalid_grant"),
    ] {
        idp.set_token_fail(Some(sts));
        let e = broker.upstream_token(&p).await.unwrap_err();
        assert_eq!(
            (e.status, e.code),
            (status, "token_exchange_failed"),
            "STS {sts}"
        );
        assert_eq!(e.message, "Token exchange failed");
        assert_eq!(e.retryable, Some(false));
        let details = e.details.as_ref().unwrap();
        assert_eq!(
            (details["status"].as_u64(), details["error"].as_str()),
            (Some(sts as u64), Some(error))
        );
        let body = String::from_utf8(e.body()).unwrap();
        assert!(
            !body.contains(CLIENT_SECRET) && !body.contains(&inbound),
            "{body}"
        );
        assert!(!format!("{e:?}").contains(CLIENT_SECRET));
    }
    // Client credentials use their own code.
    idp.set_token_fail(Some(401));
    let e = broker
        .upstream_token(&Principal::Anonymous("anonymous".into()))
        .await
        .unwrap_err();
    assert_eq!((e.status, e.code), (401, "token_request_failed"));
}

#[tokio::test]
async fn invalidate_and_short_lived_tokens_force_new_exchanges() {
    let idp = TestIdp::start();
    let broker = TokenBroker::new(&cfg(&idp), COORDINATOR_AUDIENCE);
    let p = principal(
        &idp.mint(Alg::RS256, json!({}), None),
        "gina",
        idp::now() + 300,
    );
    let first = broker.upstream_token(&p).await.unwrap().unwrap();
    broker.invalidate(&p);
    let second = broker.upstream_token(&p).await.unwrap().unwrap();
    assert_ne!(first, second);
    assert_eq!(broker.upstream_token(&p).await.unwrap().unwrap(), second);
    assert_eq!(idp.token_calls(), 2);

    // A token living 1 s is used but never cached.
    idp.set_expires_in(Some(1));
    let q = principal(
        &idp.mint(Alg::RS256, json!({}), None),
        "hal",
        idp::now() + 300,
    );
    broker.upstream_token(&q).await.unwrap().unwrap();
    broker.upstream_token(&q).await.unwrap().unwrap();
    assert_eq!(idp.token_calls(), 4);

    // No `expires_in` at all: a default lifetime, cached.
    idp.set_expires_in(None);
    let r = principal(
        &idp.mint(Alg::RS256, json!({}), None),
        "ian",
        idp::now() + 300,
    );
    broker.upstream_token(&r).await.unwrap().unwrap();
    broker.upstream_token(&r).await.unwrap().unwrap();
    assert_eq!(idp.token_calls(), 5);

    // A subject token about to expire: the exchanged token is not kept past it.
    idp.set_expires_in(Some(300));
    let s = principal(&idp.mint(Alg::RS256, json!({}), None), "jo", idp::now());
    broker.upstream_token(&s).await.unwrap().unwrap();
    broker.upstream_token(&s).await.unwrap().unwrap();
    assert_eq!(idp.token_calls(), 7);
}

#[tokio::test]
async fn debug_output_never_contains_tokens_or_the_secret() {
    let idp = TestIdp::start();
    let c = cfg(&idp);
    let auth = Authenticator::new(&c, MAX_TOKEN);
    let broker = TokenBroker::new(&c, COORDINATOR_AUDIENCE);
    let inbound = idp.mint(Alg::RS256, json!({}), None);
    let p = auth_token(&auth, &inbound).await.unwrap();
    let upstream = broker.upstream_token(&p).await.unwrap().unwrap();
    let dump = format!("{p:?} {p:#?} {broker:?} {auth:?} {c:?}");
    for secret in [inbound.as_str(), &upstream, CLIENT_SECRET] {
        assert!(!dump.contains(secret), "leaked into {dump}");
    }
}
