//! The token the gateway presents to the coordinator: an RFC 8693 exchange of the caller's
//! token, or a client-credentials token when there is no caller token. Results are cached
//! until shortly before they expire and concurrent misses share one STS call.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moka::future::Cache;
use moka::Expiry;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::http::{describe, read_limited, BodyError, LazyClient};
use super::jwt::now_unix;
use super::Principal;
use crate::config::{AuthConfig, Secret};
use crate::errors::ApiError;

const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// Used when the STS does not say how long its token lives.
const DEFAULT_EXPIRES_IN: u64 = 60;
/// Tokens living less than this are used once and not cached.
const MIN_CACHEABLE_SECS: u64 = 2;
const MAX_STS_BODY_BYTES: usize = 64 << 10;
/// However long the STS says a token lives, it is fetched again after a day (and a huge
/// `expires_in` cannot overflow the cache's clock arithmetic).
const MAX_CACHE_SECS: u64 = 24 * 3600;
/// Bound on `invalidate()` marks not yet consumed by a request.
const MAX_PENDING_INVALIDATIONS: usize = 1024;

type CacheKey = [u8; 32];

/// Which grant a request needs; decides the form fields and the error code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum GrantKind {
    Exchange,
    ClientCredentials,
}

impl GrantKind {
    fn code(self) -> &'static str {
        match self {
            GrantKind::Exchange => "token_exchange_failed",
            GrantKind::ClientCredentials => "token_request_failed",
        }
    }

    fn failed(self) -> &'static str {
        match self {
            GrantKind::Exchange => "Token exchange failed",
            GrantKind::ClientCredentials => "Token request failed",
        }
    }

    fn not_configured(self) -> ApiError {
        let message = match self {
            GrantKind::Exchange => "Token exchange is not configured",
            GrantKind::ClientCredentials => "Token request is not configured",
        };
        ApiError::new(502, self.code(), message).retryable(false)
    }
}

enum Grant<'a> {
    Exchange { subject_token: &'a str, exp: u64 },
    ClientCredentials,
}

impl Grant<'_> {
    fn kind(&self) -> GrantKind {
        match self {
            Grant::Exchange { .. } => GrantKind::Exchange,
            Grant::ClientCredentials => GrantKind::ClientCredentials,
        }
    }
}

/// A token from the STS, with how long we may keep using it.
struct UpstreamToken {
    token: Arc<str>,
    cache_for: Duration,
}

impl std::fmt::Debug for UpstreamToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamToken")
            .field("token", &"***")
            .field("cache_for", &self.cache_for)
            .finish()
    }
}

struct CacheFor;

impl Expiry<CacheKey, Arc<UpstreamToken>> for CacheFor {
    fn expire_after_create(
        &self,
        _key: &CacheKey,
        value: &Arc<UpstreamToken>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.cache_for)
    }
}

/// How long an STS token may be reused: `expires_in` minus the margin (half of `expires_in`
/// when the margin would eat it all), never past the subject token's own `exp`, and not at
/// all for tokens that live under two seconds.
fn cache_lifetime(
    expires_in: u64,
    margin: Duration,
    subject_exp: Option<u64>,
    now: u64,
) -> Duration {
    if expires_in < MIN_CACHEABLE_SECS {
        return Duration::ZERO;
    }
    let margin = margin.as_secs();
    let mut secs = if expires_in > margin {
        expires_in - margin
    } else {
        expires_in / 2
    };
    if let Some(exp) = subject_exp {
        secs = secs.min(exp.saturating_sub(now));
    }
    Duration::from_secs(secs.min(MAX_CACHE_SECS))
}

/// The STS's `error` code, only if it looks like an OAuth error code: its description (or
/// anything else in its body) may echo what we sent.
fn short_error_code(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let code = v.get("error")?.as_str()?;
    let ok = !code.is_empty()
        && code.len() <= 64
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    ok.then(|| code.to_string())
}

/// A token we will put in an `Authorization` header: printable ASCII without spaces, so a
/// hostile STS answer cannot inject header lines.
fn acceptable_token(t: &str) -> bool {
    !t.is_empty() && t.len() <= MAX_STS_BODY_BYTES && t.bytes().all(|b| b.is_ascii_graphic())
}

fn expires_in(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
        // Some STSs send it as a string.
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Obtains (and caches) the token the gateway sends to the coordinator.
pub struct TokenBroker {
    endpoint: Option<String>,
    credentials: Option<(String, Secret)>,
    audience: String,
    scope: Option<String>,
    margin: Duration,
    cache: Cache<CacheKey, Arc<UpstreamToken>>,
    /// `invalidate()` is synchronous and moka's removal is not: marks are consumed by the
    /// next request for the same key, before it looks at the cache.
    invalidated: Mutex<HashSet<CacheKey>>,
    any_invalidated: AtomicBool,
    http: LazyClient,
    hits: AtomicU64,
    misses: AtomicU64,
    sts_calls: AtomicU64,
    sts_errors: AtomicU64,
}

impl std::fmt::Debug for TokenBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenBroker")
            .field("endpoint", &self.endpoint)
            .field("client_id", &self.credentials.as_ref().map(|(id, _)| id))
            .field("audience", &self.audience)
            .field("scope", &self.scope)
            .field("cached", &self.cache.entry_count())
            .finish_non_exhaustive()
    }
}

impl TokenBroker {
    pub fn new(cfg: &AuthConfig, audience: &str) -> Arc<TokenBroker> {
        Arc::new(TokenBroker {
            endpoint: cfg.token_endpoint.clone(),
            credentials: cfg
                .client_credentials()
                .map(|(id, secret)| (id.to_string(), secret.clone())),
            audience: audience.to_string(),
            scope: cfg.scope.clone(),
            margin: cfg.token_cache_margin,
            cache: Cache::builder()
                .max_capacity(cfg.token_cache_max_entries)
                .expire_after(CacheFor)
                .build(),
            invalidated: Mutex::new(HashSet::new()),
            any_invalidated: AtomicBool::new(false),
            http: LazyClient::new(cfg.sts_timeout),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            sts_calls: AtomicU64::new(0),
            sts_errors: AtomicU64::new(0),
        })
    }

    /// The token to send upstream for `principal`; `None` means send no `Authorization`.
    pub async fn upstream_token(
        &self,
        principal: &Principal,
    ) -> Result<Option<Arc<str>>, ApiError> {
        let grant = match principal {
            Principal::Token { token, exp, .. } => Grant::Exchange {
                subject_token: token,
                exp: *exp,
            },
            Principal::Anonymous(_) | Principal::Dev(_) => Grant::ClientCredentials,
        };
        let Some((client_id, secret)) = &self.credentials else {
            return match grant {
                // Nothing to present and nothing configured: the coordinator gets no token.
                Grant::ClientCredentials => Ok(None),
                Grant::Exchange { .. } => Err(GrantKind::Exchange.not_configured()),
            };
        };
        let Some(endpoint) = &self.endpoint else {
            return Err(grant.kind().not_configured());
        };
        let key = self.cache_key(&grant);
        self.consume_invalidation(&key).await;
        if let Some(hit) = self.cache.get(&key).await {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(hit.token.clone()));
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        // Single flight: concurrent misses on one key wait for this one call; errors are
        // handed to every waiter and not cached.
        self.cache
            .try_get_with(key, self.request(endpoint, client_id, secret, &grant))
            .await
            .map(|t| Some(t.token.clone()))
            .map_err(|e| (*e).clone())
    }

    /// Forget the cached token for `principal` (the coordinator refused it).
    pub fn invalidate(&self, principal: &Principal) {
        let grant = match principal {
            Principal::Token { token, exp, .. } => Grant::Exchange {
                subject_token: token,
                exp: *exp,
            },
            _ => Grant::ClientCredentials,
        };
        let key = self.cache_key(&grant);
        let mut marks = self.invalidated.lock().unwrap_or_else(|p| p.into_inner());
        if marks.len() >= MAX_PENDING_INVALIDATIONS {
            // Too many marks nobody came back for: dropping everything is always safe.
            marks.clear();
            self.cache.invalidate_all();
        }
        marks.insert(key);
        self.any_invalidated.store(true, Ordering::Release);
    }

    /// (cache hits, cache misses, STS calls, STS errors)
    pub fn stats(&self) -> (u64, u64, u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
            self.sts_calls.load(Ordering::Relaxed),
            self.sts_errors.load(Ordering::Relaxed),
        )
    }

    /// Tokens currently cached (approximate, for metrics).
    pub fn cached_tokens(&self) -> u64 {
        self.cache.entry_count()
    }

    async fn consume_invalidation(&self, key: &CacheKey) {
        if !self.any_invalidated.load(Ordering::Acquire) {
            return;
        }
        let marked = {
            let mut marks = self.invalidated.lock().unwrap_or_else(|p| p.into_inner());
            let marked = marks.remove(key);
            if marks.is_empty() {
                self.any_invalidated.store(false, Ordering::Release);
            }
            marked
        };
        if marked {
            self.cache.invalidate(key).await;
        }
    }

    fn cache_key(&self, grant: &Grant<'_>) -> CacheKey {
        let mut h = Sha256::new();
        let subject = match grant {
            Grant::Exchange { subject_token, .. } => *subject_token,
            Grant::ClientCredentials => "",
        };
        // Length-prefixed parts: no two different inputs can hash the same bytes.
        for part in [
            match grant.kind() {
                GrantKind::Exchange => "exchange",
                GrantKind::ClientCredentials => "client_credentials",
            },
            subject,
            &self.audience,
            self.scope.as_deref().unwrap_or(""),
        ] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        h.finalize().into()
    }

    async fn request(
        &self,
        endpoint: &str,
        client_id: &str,
        secret: &Secret,
        grant: &Grant<'_>,
    ) -> Result<Arc<UpstreamToken>, ApiError> {
        self.sts_calls.fetch_add(1, Ordering::Relaxed);
        let result = self.call_sts(endpoint, client_id, secret, grant).await;
        if let Err(e) = &result {
            self.sts_errors.fetch_add(1, Ordering::Relaxed);
            log::warn!(
                "{} at {endpoint}: {} {}",
                grant.kind().failed(),
                e.status,
                e.details
                    .as_ref()
                    .map(|d| Value::Object(d.clone()).to_string())
                    .unwrap_or_default()
            );
        }
        result
    }

    async fn call_sts(
        &self,
        endpoint: &str,
        client_id: &str,
        secret: &Secret,
        grant: &Grant<'_>,
    ) -> Result<Arc<UpstreamToken>, ApiError> {
        let kind = grant.kind();
        let mut form: Vec<(&str, &str)> = Vec::with_capacity(8);
        match grant {
            Grant::Exchange { subject_token, .. } => {
                form.extend([
                    ("grant_type", TOKEN_EXCHANGE),
                    ("client_id", client_id),
                    ("client_secret", secret.expose()),
                    ("subject_token", subject_token),
                    ("subject_token_type", ACCESS_TOKEN_TYPE),
                    ("requested_token_type", ACCESS_TOKEN_TYPE),
                ]);
            }
            Grant::ClientCredentials => {
                form.extend([
                    ("grant_type", "client_credentials"),
                    ("client_id", client_id),
                    ("client_secret", secret.expose()),
                ]);
            }
        }
        form.push(("audience", &self.audience));
        if let Some(scope) = &self.scope {
            form.push(("scope", scope));
        }

        let unavailable = |error: &str| {
            ApiError::new(502, kind.code(), kind.failed())
                .detail("error", error)
                .retryable(true)
        };
        let client = self
            .http
            .get()
            .map_err(|_| unavailable("client unavailable"))?;
        let resp = client
            .post(endpoint)
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&form)
            .send()
            .await
            .map_err(|e| unavailable(describe(&e)))?;
        let status = resp.status().as_u16();
        let body = read_limited(resp, MAX_STS_BODY_BYTES)
            .await
            .map_err(|e| match e {
                BodyError::TooLarge => unavailable("invalid response"),
                BodyError::Transport(e) => unavailable(describe(&e)),
            })?;

        if !(200..300).contains(&status) {
            let mut err = match status {
                401 | 403 => ApiError::new(status, kind.code(), kind.failed()).retryable(false),
                400..=499 => ApiError::new(502, kind.code(), kind.failed()).retryable(false),
                _ => ApiError::new(502, kind.code(), kind.failed()).retryable(true),
            }
            .detail("status", status);
            if let Some(code) = short_error_code(&body) {
                err = err.detail("error", code);
            }
            return Err(err);
        }

        let doc: Value =
            serde_json::from_slice(&body).map_err(|_| unavailable("invalid response"))?;
        let token = doc
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|t| acceptable_token(t))
            .ok_or_else(|| unavailable("invalid response"))?;
        let lifetime = expires_in(doc.get("expires_in")).unwrap_or(DEFAULT_EXPIRES_IN);
        let subject_exp = match grant {
            Grant::Exchange { exp, .. } => Some(*exp),
            Grant::ClientCredentials => None,
        };
        Ok(Arc::new(UpstreamToken {
            token: Arc::from(token),
            cache_for: cache_lifetime(lifetime, self.margin, subject_exp, now_unix()),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AuthMode;

    #[test]
    fn lifetimes() {
        let m = Duration::from_secs(30);
        let s = Duration::from_secs;
        assert_eq!(cache_lifetime(300, m, None, 0), s(270));
        assert_eq!(cache_lifetime(30, m, None, 0), s(15));
        assert_eq!(cache_lifetime(20, m, None, 0), s(10));
        assert_eq!(cache_lifetime(1, m, None, 0), s(0));
        assert_eq!(cache_lifetime(2, m, None, 0), s(1));
        // Never past the subject token's exp.
        assert_eq!(cache_lifetime(300, m, Some(1_000_100), 1_000_000), s(100));
        assert_eq!(cache_lifetime(300, m, Some(5), 1_000_000), s(0));
        assert_eq!(cache_lifetime(300, Duration::ZERO, None, 0), s(300));
        assert_eq!(cache_lifetime(u64::MAX, m, None, 0), s(MAX_CACHE_SECS));
    }

    #[test]
    fn error_codes_are_short_or_dropped() {
        assert_eq!(
            short_error_code(br#"{"error":"invalid_grant","error_description":"secret stuff"}"#),
            Some("invalid_grant".into())
        );
        assert_eq!(short_error_code(br#"{"error":"has spaces in it"}"#), None);
        assert_eq!(
            short_error_code(format!(r#"{{"error":"{}"}}"#, "a".repeat(65)).as_bytes()),
            None
        );
        assert_eq!(short_error_code(b"<html>oops</html>"), None);
        assert_eq!(short_error_code(br#"{"error":{"nested":1}}"#), None);
    }

    #[test]
    fn tokens_are_header_safe() {
        assert!(acceptable_token("eyJ.abc-_~+/="));
        assert!(!acceptable_token(""));
        assert!(!acceptable_token("a b"));
        assert!(!acceptable_token("a\r\nX-Evil: 1"));
    }

    #[test]
    fn expires_in_forms() {
        assert_eq!(expires_in(Some(&serde_json::json!(300))), Some(300));
        assert_eq!(expires_in(Some(&serde_json::json!("120"))), Some(120));
        assert_eq!(expires_in(Some(&serde_json::json!(12.9))), Some(12));
        assert_eq!(expires_in(Some(&serde_json::json!(-3))), None);
        assert_eq!(expires_in(None), None);
    }

    fn cfg() -> AuthConfig {
        let mut c = super::super::tests::cfg(AuthMode::Required);
        c.token_endpoint = Some("http://127.0.0.1:9/token".into());
        c
    }

    #[tokio::test]
    async fn without_credentials() {
        let broker = TokenBroker::new(&cfg(), "coord");
        assert_eq!(
            broker
                .upstream_token(&Principal::Anonymous("a".into()))
                .await
                .unwrap(),
            None
        );
        let e = broker
            .upstream_token(&Principal::Token {
                token: "t".into(),
                subject: "s".into(),
                exp: u64::MAX,
            })
            .await
            .unwrap_err();
        assert_eq!((e.status, e.code), (502, "token_exchange_failed"));
        assert_eq!(e.message, "Token exchange is not configured");
        assert_eq!(broker.stats(), (0, 0, 0, 0));
    }

    #[tokio::test]
    async fn unreachable_sts_is_retryable_502_and_not_cached() {
        let mut c = cfg();
        c.client_id = Some("gw".into());
        c.client_secret = Some(Secret::new("top-secret-value"));
        let broker = TokenBroker::new(&c, "coord");
        for _ in 0..2 {
            let e = broker
                .upstream_token(&Principal::Dev("dev".into()))
                .await
                .unwrap_err();
            assert_eq!((e.status, e.code), (502, "token_request_failed"));
            assert_eq!(e.retryable, Some(true));
            assert!(!String::from_utf8_lossy(&e.body()).contains("top-secret-value"));
        }
        assert_eq!(broker.stats(), (0, 2, 2, 2));
        assert!(!format!("{broker:?}").contains("top-secret-value"));
    }

    #[test]
    fn cached_value_debug_is_redacted() {
        let t = UpstreamToken {
            token: Arc::from("eyJ-exchanged"),
            cache_for: Duration::from_secs(1),
        };
        assert!(!format!("{t:?}").contains("eyJ"));
    }
}
