//! Authentication: who is calling (inbound bearer JWTs, verified against the IdP's JWKS) and
//! which token we present to the coordinator on their behalf (`exchange`).
//!
//! Tokens, exchanged tokens and the client secret never reach a log line or an error body:
//! every type that holds one has a redacting `Debug`.

mod http;
mod jwks;
mod jwt;
mod verified;

pub mod exchange;

pub use exchange::TokenBroker;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::config::{AuthConfig, AuthMode};
use crate::errors::ApiError;

use jwks::{KeySet, KeyStore, Selection};
use jwt::{Rejection, Verifier};
use verified::VerifiedCache;

/// Who a request acts for.
#[derive(Clone, PartialEq, Eq)]
pub enum Principal {
    /// A verified bearer token.
    Token {
        token: String,
        subject: String,
        exp: u64,
    },
    /// Mode `optional`, no `Authorization` header (or an exempt path).
    Anonymous(String),
    /// Mode `disabled`.
    Dev(String),
}

impl Principal {
    pub fn subject(&self) -> &str {
        match self {
            Principal::Token { subject, .. } => subject,
            Principal::Anonymous(s) | Principal::Dev(s) => s,
        }
    }

    /// The inbound bearer token, when there is one.
    pub fn bearer(&self) -> Option<&str> {
        match self {
            Principal::Token { token, .. } => Some(token),
            _ => None,
        }
    }
}

impl std::fmt::Debug for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Principal::Token { subject, exp, .. } => f
                .debug_struct("Token")
                .field("subject", subject)
                .field("exp", exp)
                .field("token", &"***")
                .finish(),
            Principal::Anonymous(s) => f.debug_tuple("Anonymous").field(s).finish(),
            Principal::Dev(s) => f.debug_tuple("Dev").field(s).finish(),
        }
    }
}

/// Installs jsonwebtoken's aws-lc crypto provider for the process. Call it first thing in
/// `main`; calling it again is harmless.
pub fn install_crypto_provider() {
    // `Err` only means a provider is installed already, which is what we want.
    let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
}

/// Signs and verifies one token with a built-in Ed25519 key through the same path as real
/// requests, and checks that tampering is caught, so a broken crypto setup (wrong crate
/// features, no provider) stops the gateway at startup instead of failing every request.
pub fn self_test() -> Result<(), String> {
    std::panic::catch_unwind(self_test_inner).unwrap_or_else(|_| {
        Err(
            "JWT self-test panicked: jsonwebtoken has no usable crypto provider \
             (enable exactly its aws_lc_rs feature and call auth::install_crypto_provider())"
                .to_string(),
        )
    })
}

fn self_test_inner() -> Result<(), String> {
    use jsonwebtoken::{jwk::Jwk, Algorithm, EncodingKey, Header};
    use sha2::{Digest, Sha256};

    // PKCS#8 v1 wrapping of an Ed25519 seed; the key only ever signs this self-test token.
    const ED25519_PKCS8_PREFIX: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    let fail = |what: &str, e: &dyn std::fmt::Display| format!("JWT self-test: {what}: {e}");
    let mut pkcs8 = ED25519_PKCS8_PREFIX.to_vec();
    pkcs8.extend_from_slice(&Sha256::digest(b"arp-jarvis-rungateway jwt self-test"));
    let signing = EncodingKey::from_ed_der(&pkcs8);
    let mut jwk = serde_json::to_value(
        Jwk::from_encoding_key(&signing, Algorithm::EdDSA).map_err(|e| fail("public key", &e))?,
    )
    .map_err(|e| fail("public key", &e))?;
    jwk["kid"] = json!("self-test");
    let keys = KeySet::parse(&json!({ "keys": [jwk] }))?;

    let verifier = Verifier::new(&[Algorithm::EdDSA], Some("self-test"), Some("self-test"), 0);
    let now = jwt::now_unix();
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some("self-test".into());
    let sign = |aud: &str| {
        let claims = json!({"iss": "self-test", "aud": aud, "sub": "self-test",
                            "exp": now + 60, "iat": now, "nbf": now});
        jsonwebtoken::encode(&header, &claims, &signing).map_err(|e| fail("signing", &e))
    };
    let verify = |token: &str| -> Result<jwt::Verified, Rejection> {
        let header = verifier.header(token)?;
        match keys.select(header.alg, header.kid.as_deref()) {
            Selection::Candidates(c) => verifier.verify(token, header.alg, &c),
            _ => Err(Rejection::Invalid),
        }
    };

    let good = sign("self-test")?;
    match verify(&good) {
        Ok(v) if v.subject == "self-test" => {}
        other => {
            return Err(format!(
                "JWT self-test: a valid token was refused ({other:?})"
            ))
        }
    }
    // Flip one character of the payload: the signature must no longer match.
    let mut tampered = good.into_bytes();
    let i = tampered.iter().position(|&b| b == b'.').unwrap_or(0) + 3;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).map_err(|e| fail("tampering", &e))?;
    if verify(&tampered).is_ok() {
        return Err("JWT self-test: a tampered token was accepted".to_string());
    }
    if verify(&sign("someone-else")?) != Err(Rejection::Audience) {
        return Err("JWT self-test: a token for another audience was not refused".to_string());
    }
    Ok(())
}

/// Things an operator should know about the auth configuration; log them at startup.
pub fn config_warnings(cfg: &AuthConfig) -> Vec<String> {
    let mut w = Vec::new();
    let verifying = cfg.mode != AuthMode::Disabled;
    if verifying {
        if cfg.jwks_uri.is_none() && cfg.discovery_url().is_none() {
            w.push(
                "no ARP_AUTH_JWKS_URI, ARP_AUTH_ISSUER or ARP_AUTH_OIDC_DISCOVERY_URL: no key to \
                 verify tokens with, every authenticated request will get 503"
                    .to_string(),
            );
        }
        if cfg.issuer.is_none() {
            w.push("ARP_AUTH_ISSUER is not set: the token issuer (iss) is not checked".to_string());
        }
        if cfg.audience.is_none() {
            w.push(
                "ARP_AUTH_AUDIENCE is not set: the token audience (aud) is not checked".to_string(),
            );
        }
    }
    match (&cfg.client_id, &cfg.client_secret) {
        (Some(_), None) => w.push(
            "ARP_AUTH_CLIENT_ID is set but ARP_AUTH_CLIENT_SECRET is not: client credentials are ignored"
                .to_string(),
        ),
        (None, Some(_)) => w.push(
            "ARP_AUTH_CLIENT_SECRET is set but ARP_AUTH_CLIENT_ID is not: client credentials are ignored"
                .to_string(),
        ),
        _ => {}
    }
    match cfg.client_credentials() {
        None if verifying => w.push(
            "no client credentials (ARP_AUTH_CLIENT_ID / ARP_AUTH_CLIENT_SECRET): requests with a \
             bearer token will fail with 502 token_exchange_failed (token exchange is not configured)"
                .to_string(),
        ),
        None => {}
        Some(_) => match cfg.token_endpoint.as_deref() {
            None => w.push(
                "client credentials are set but no token endpoint (ARP_AUTH_TOKEN_ENDPOINT or \
                 ARP_AUTH_ISSUER): outbound token requests will fail with 502"
                    .to_string(),
            ),
            Some(ep) if ep.starts_with("http://") && !is_loopback_url(ep) => w.push(format!(
                "the token endpoint {ep} is plain http: the client secret and tokens cross the \
                 network unencrypted"
            )),
            Some(_) => {}
        },
    }
    w
}

fn is_loopback_url(u: &str) -> bool {
    url::Url::parse(u).is_ok_and(|u| match u.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    })
}

/// Verifies inbound requests.
pub struct Authenticator {
    mode: AuthMode,
    exempt_paths: Vec<String>,
    dev_subject: String,
    anonymous_subject: String,
    max_token_bytes: usize,
    verifier: Verifier,
    keys: KeyStore,
    verified: VerifiedCache,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("mode", &self.mode)
            .field("exempt_paths", &self.exempt_paths)
            .field("keys", &self.keys.current().len())
            .finish_non_exhaustive()
    }
}

fn invalid_header() -> ApiError {
    ApiError::unauthorized("invalid_request", "Invalid Authorization header")
}

fn rejected(r: Rejection) -> ApiError {
    ApiError::unauthorized("invalid_token", r.message())
}

/// 503, not 401: the token may be fine, we just cannot check it right now, and a client must
/// not throw a good token away because our link to the IdP is down.
fn idp_unavailable(retry_after: Duration) -> ApiError {
    let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
    ApiError::new(503, "identity_provider_unavailable", "Unable to fetch JWKS")
        .retryable(true)
        .header("Retry-After", secs.to_string())
}

/// Splits `Bearer <token>`: exactly two whitespace-separated parts, the scheme in any case.
fn bearer_token(header: &[u8]) -> Result<&str, ApiError> {
    let text = std::str::from_utf8(header).map_err(|_| invalid_header())?;
    let mut parts = text.split_whitespace();
    match (parts.next(), parts.next(), parts.next()) {
        (Some(scheme), Some(token), None) if scheme.eq_ignore_ascii_case("bearer") => Ok(token),
        _ => Err(invalid_header()),
    }
}

impl Authenticator {
    pub fn new(cfg: &AuthConfig, max_token_bytes: usize) -> Arc<Authenticator> {
        Arc::new(Authenticator {
            mode: cfg.mode,
            exempt_paths: cfg.exempt_paths.clone(),
            dev_subject: cfg.dev_subject.clone(),
            anonymous_subject: cfg.anonymous_subject.clone(),
            max_token_bytes,
            verifier: Verifier::new(
                &cfg.algorithms,
                cfg.issuer.as_deref(),
                cfg.audience.as_deref(),
                cfg.clock_skew,
            ),
            keys: KeyStore::new(
                cfg.jwks_uri.clone(),
                cfg.discovery_url(),
                cfg.jwks_refresh,
                cfg.unknown_kid_min_interval,
                cfg.sts_timeout,
            ),
            verified: VerifiedCache::new(cfg.verified_cache_max_entries),
        })
    }

    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    pub fn is_exempt(&self, path: &str) -> bool {
        self.exempt_paths.iter().any(|p| p == path)
    }

    /// `path` is the request path without its query; `authorization` the raw header value.
    pub async fn authenticate(
        &self,
        path: &str,
        authorization: Option<&[u8]>,
    ) -> Result<Principal, ApiError> {
        if self.mode == AuthMode::Disabled {
            return Ok(Principal::Dev(self.dev_subject.clone()));
        }
        if self.is_exempt(path) {
            return Ok(Principal::Anonymous(self.anonymous_subject.clone()));
        }
        match authorization.filter(|h| !h.is_empty()) {
            None if self.mode == AuthMode::Optional => {
                Ok(Principal::Anonymous(self.anonymous_subject.clone()))
            }
            None => Err(ApiError::unauthorized(
                "invalid_request",
                "Missing Authorization header",
            )),
            Some(header) => {
                let token = bearer_token(header)?;
                if token.len() > self.max_token_bytes {
                    return Err(rejected(Rejection::Invalid));
                }
                self.verify(token).await
            }
        }
    }

    async fn verify(&self, token: &str) -> Result<Principal, ApiError> {
        let digest = verified::digest(token);
        let mut keys = self.keys.current();
        if let Some(hit) = self.verified.get(&digest, &keys).await {
            return Ok(Principal::Token {
                token: token.to_owned(),
                subject: hit.subject.clone(),
                exp: hit.exp,
            });
        }
        let header = self.verifier.header(token).map_err(rejected)?;
        if keys.is_empty() {
            keys = self.keys.ensure_keys().await;
            if keys.is_empty() {
                return Err(idp_unavailable(self.keys.retry_after()));
            }
        }
        let kid = header.kid.as_deref();
        let mut outcome = self.verify_with(&keys, token, &header);
        if outcome.is_none() {
            // Unknown kid: maybe a rotation we have not seen yet.
            keys = self.keys.lookup_unknown_kid(kid.unwrap_or_default()).await;
            outcome = self.verify_with(&keys, token, &header);
            if outcome.is_none() && self.keys.failing() {
                return Err(idp_unavailable(self.keys.retry_after()));
            }
        }
        let verified = outcome
            .unwrap_or(Err(Rejection::Invalid))
            .map_err(rejected)?;
        let principal = Principal::Token {
            token: token.to_owned(),
            subject: verified.subject.clone(),
            exp: verified.exp,
        };
        self.verified.insert(digest, verified).await;
        Ok(principal)
    }

    /// `None` when the token's kid is not in `keys`.
    fn verify_with(
        &self,
        keys: &KeySet,
        token: &str,
        header: &jsonwebtoken::Header,
    ) -> Option<Result<jwt::Verified, Rejection>> {
        match keys.select(header.alg, header.kid.as_deref()) {
            Selection::Candidates(c) => Some(self.verifier.verify(token, header.alg, &c)),
            Selection::NoUsableKey => Some(Err(Rejection::Invalid)),
            Selection::UnknownKid => None,
        }
    }

    /// Fetches the JWKS now, whatever the schedule (admin endpoints, tests).
    pub async fn refresh_keys(&self) -> Result<usize, String> {
        self.keys.refresh().await
    }

    /// JWKS fetch attempts so far, successful or not.
    pub fn jwks_fetches(&self) -> u64 {
        self.keys.fetches()
    }

    /// Tokens currently in the verified-token cache (approximate, for metrics).
    pub fn verified_cache_entries(&self) -> u64 {
        self.verified.entry_count()
    }

    /// The `identity_provider` entry of `/v1/health`; `None` when auth is disabled.
    pub fn identity_provider_check(&self) -> Option<Value> {
        if self.mode == AuthMode::Disabled {
            return None;
        }
        let status = self.keys.status();
        let mut details = Map::new();
        if let Some(uri) = &status.jwks_uri {
            details.insert("jwks_uri".into(), json!(uri));
        }
        details.insert("keys".into(), json!(status.keys));
        if let Some(at) = status.last_refresh {
            details.insert(
                "last_refresh".into(),
                json!(humantime::format_rfc3339_seconds(at).to_string()),
            );
        }
        let mut check = Map::new();
        check.insert("name".into(), json!("identity_provider"));
        let up = status.keys > 0;
        check.insert("status".into(), json!(if up { "ok" } else { "down" }));
        check.insert("details".into(), Value::Object(details));
        let message = match (&status.last_error, up) {
            (Some(e), true) => Some(format!("Last JWKS refresh failed: {e}")),
            (Some(e), false) => Some(format!("Unable to fetch JWKS: {e}")),
            (None, false) if !status.attempted => Some("JWKS not fetched yet".to_string()),
            _ => None,
        };
        if let Some(m) = message {
            check.insert("message".into(), json!(m));
        }
        Some(Value::Object(check))
    }

    /// Keeps the key set fresh: fetches at start, then again when the JWKS `max-age` (or the
    /// configured interval) runs out, with exponential back-off while the IdP fails. Never
    /// returns; with auth disabled it just waits forever.
    pub async fn run_refresh_loop(self: Arc<Self>) {
        if self.mode == AuthMode::Disabled {
            return std::future::pending().await;
        }
        loop {
            let wait = self.keys.until_next_refresh();
            if wait.is_zero() {
                let _ = self.keys.refresh().await;
            } else {
                tokio::time::sleep(wait).await;
            }
        }
    }

    /// The timeout used for IdP requests (discovery and JWKS).
    pub fn idp_timeout(&self) -> Duration {
        self.keys.timeout()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::Algorithm;

    pub(crate) fn cfg(mode: AuthMode) -> AuthConfig {
        AuthConfig {
            mode,
            issuer: Some("https://idp.example/realms/x".into()),
            audience: Some("gw".into()),
            jwks_uri: Some("http://127.0.0.1:9/jwks".into()),
            oidc_discovery_url: None,
            algorithms: vec![Algorithm::RS256],
            clock_skew: 60,
            exempt_paths: vec!["/v1/health".into(), "/v1/version".into()],
            dev_subject: "dev".into(),
            anonymous_subject: "anonymous".into(),
            client_id: None,
            client_secret: None,
            token_endpoint: None,
            sts_timeout: Duration::from_secs(1),
            scope: None,
            jwks_refresh: Duration::from_secs(300),
            unknown_kid_min_interval: Duration::from_secs(30),
            token_cache_max_entries: 100,
            token_cache_margin: Duration::from_secs(30),
            verified_cache_max_entries: 100,
        }
    }

    fn message(e: &ApiError) -> (u16, &str, &str) {
        let challenge = e
            .headers
            .iter()
            .find(|(n, _)| *n == "WWW-Authenticate")
            .map(|(_, v)| v.as_str())
            .unwrap_or("");
        (e.status, e.message.as_str(), challenge)
    }

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(bearer_token(b"Bearer abc").ok(), Some("abc"));
        assert_eq!(bearer_token(b"bEaReR \t abc  ").ok(), Some("abc"));
        for bad in [
            &b"Bearer"[..],
            b"Bearer ",
            b"Basic abc",
            b"Bearer a b",
            b"abc",
            b"   ",
            b"Bearer \xff\xfe",
        ] {
            let e = bearer_token(bad).unwrap_err();
            assert_eq!(e.status, 401);
            assert_eq!(e.message, "Invalid Authorization header");
        }
    }

    #[tokio::test]
    async fn modes_and_header_errors() {
        let required = Authenticator::new(&cfg(AuthMode::Required), 16 * 1024);
        let e = required.authenticate("/v1/runs", None).await.unwrap_err();
        let (status, msg, challenge) = message(&e);
        assert_eq!((status, msg), (401, "Missing Authorization header"));
        assert!(
            challenge.contains("error=\"invalid_request\""),
            "{challenge}"
        );
        let e = required
            .authenticate("/v1/runs", Some(b"Basic x"))
            .await
            .unwrap_err();
        assert_eq!(e.message, "Invalid Authorization header");
        assert!(required.is_exempt("/v1/health"));
        assert!(!required.is_exempt("/v1/health/"));
        assert_eq!(
            required.authenticate("/v1/health", None).await.unwrap(),
            Principal::Anonymous("anonymous".into())
        );

        let big = format!("Bearer {}", "a".repeat(16 * 1024 + 1));
        let e = required
            .authenticate("/v1/runs", Some(big.as_bytes()))
            .await
            .unwrap_err();
        let (status, msg, challenge) = message(&e);
        assert_eq!((status, msg), (401, "Invalid token"));
        assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
        // Oversized tokens are refused before any key is fetched.
        assert_eq!(required.jwks_fetches(), 0);

        let optional = Authenticator::new(&cfg(AuthMode::Optional), 16 * 1024);
        assert_eq!(
            optional.authenticate("/v1/runs", None).await.unwrap(),
            Principal::Anonymous("anonymous".into())
        );
        assert_eq!(
            optional.authenticate("/v1/runs", Some(b"")).await.unwrap(),
            Principal::Anonymous("anonymous".into())
        );
        assert!(optional
            .authenticate("/v1/runs", Some(b"Bearer x y"))
            .await
            .is_err());

        let disabled = Authenticator::new(&cfg(AuthMode::Disabled), 16 * 1024);
        assert_eq!(
            disabled
                .authenticate("/v1/runs", Some(b"garbage"))
                .await
                .unwrap(),
            Principal::Dev("dev".into())
        );
        assert!(disabled.identity_provider_check().is_none());
    }

    #[tokio::test]
    async fn garbage_is_refused_without_fetching() {
        let a = Authenticator::new(&cfg(AuthMode::Required), 16 * 1024);
        let e = a
            .authenticate("/v1/runs", Some(b"Bearer not-a-jwt"))
            .await
            .unwrap_err();
        assert_eq!(e.message, "Invalid token");
        assert_eq!(a.jwks_fetches(), 0);
    }

    #[tokio::test]
    async fn no_keys_means_503_and_health_down() {
        let a = Authenticator::new(&cfg(AuthMode::Required), 16 * 1024);
        // A well-formed RS256 token (`{"alg":"RS256"}.{}.sig`): judging it needs keys, and the
        // JWKS URI points at a closed port.
        let token = "eyJhbGciOiJSUzI1NiJ9.e30.c2ln";
        let header = format!("Bearer {token}");
        let e = a
            .authenticate("/v1/runs", Some(header.as_bytes()))
            .await
            .unwrap_err();
        assert_eq!((e.status, e.code), (503, "identity_provider_unavailable"));
        assert_eq!(e.message, "Unable to fetch JWKS");
        assert_eq!(e.retryable, Some(true));
        assert!(e.headers.iter().any(|(n, _)| *n == "Retry-After"));
        let check = a.identity_provider_check().unwrap();
        assert_eq!(check["status"], "down");
        assert_eq!(check["details"]["keys"], 0);
        assert!(check["message"]
            .as_str()
            .unwrap()
            .starts_with("Unable to fetch JWKS"));
        assert!(check["details"].get("last_refresh").is_none());
    }

    #[test]
    fn self_test_passes() {
        install_crypto_provider();
        self_test().unwrap();
    }

    #[test]
    fn principal_debug_hides_the_token() {
        let p = Principal::Token {
            token: "eyJ-secret-token".into(),
            subject: "alice".into(),
            exp: 5,
        };
        let dbg = format!("{p:?}");
        assert!(!dbg.contains("secret"), "{dbg}");
        assert!(dbg.contains("alice"));
        assert_eq!(p.bearer(), Some("eyJ-secret-token"));
        assert_eq!(p.subject(), "alice");
        assert_eq!(Principal::Dev("d".into()).bearer(), None);
    }

    #[test]
    fn warnings() {
        let mut c = cfg(AuthMode::Required);
        let w = config_warnings(&c).join("\n");
        assert!(w.contains("token_exchange_failed"), "{w}");
        c.client_id = Some("gw".into());
        c.client_secret = Some(crate::config::Secret::new("s"));
        c.token_endpoint = Some("http://sts.example/token".into());
        let w = config_warnings(&c).join("\n");
        assert!(w.contains("plain http"), "{w}");
        c.token_endpoint = Some("http://127.0.0.1:8080/token".into());
        assert!(config_warnings(&c).is_empty(), "{:?}", config_warnings(&c));
        let mut d = cfg(AuthMode::Disabled);
        d.issuer = None;
        d.audience = None;
        assert!(config_warnings(&d).is_empty());
    }
}
