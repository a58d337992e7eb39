//! The identity provider's signing keys: which JWKS entries we accept, which of them may verify
//! which token, and when (and how often) we fetch the set again.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::http::{describe, read_limited, BodyError, LazyClient};

/// More keys than this in one JWKS is not a real IdP; the rest are ignored.
const MAX_KEYS: usize = 64;
/// A token without `kid` is tried against at most this many keys of the right type.
const MAX_KIDLESS_CANDIDATES: usize = 4;
const MAX_JWKS_BYTES: usize = 1 << 20;
const MAX_DISCOVERY_BYTES: usize = 256 << 10;
/// Kids that a fetch did not find; bounded so random kids cannot grow it without limit.
const NOT_FOUND_MAX: usize = 256;
const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// `Cache-Control: max-age` is honoured only inside these bounds: a tiny max-age would turn
/// into a fetch storm, a huge one would delay picking up a revoked key.
const MAX_AGE_MIN: Duration = Duration::from_secs(30);
const MAX_AGE_MAX: Duration = Duration::from_secs(3600);

pub(crate) type Fingerprint = [u8; 32];

/// Key types we can verify with, down to the curve: the token's `alg` must match exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyKind {
    pub(crate) fn accepts(self, alg: Algorithm) -> bool {
        use Algorithm as A;
        matches!(
            (self, alg),
            (
                KeyKind::Rsa,
                A::RS256 | A::RS384 | A::RS512 | A::PS256 | A::PS384 | A::PS512
            ) | (KeyKind::P256, A::ES256)
                | (KeyKind::P384, A::ES384)
                | (KeyKind::Ed25519, A::EdDSA)
        )
    }
}

/// The JOSE name of an algorithm, as it appears in a JWK's `alg`.
pub(crate) fn alg_name(alg: Algorithm) -> &'static str {
    use Algorithm as A;
    match alg {
        A::HS256 => "HS256",
        A::HS384 => "HS384",
        A::HS512 => "HS512",
        A::ES256 => "ES256",
        A::ES384 => "ES384",
        A::RS256 => "RS256",
        A::RS384 => "RS384",
        A::RS512 => "RS512",
        A::PS256 => "PS256",
        A::PS384 => "PS384",
        A::PS512 => "PS512",
        A::EdDSA => "EdDSA",
        _ => "unknown",
    }
}

/// One usable public signing key.
pub(crate) struct KeyEntry {
    pub(crate) kid: Option<String>,
    pub(crate) kind: KeyKind,
    /// The JWK's own `alg`, when it names one: the key may then verify only that algorithm.
    alg: Option<String>,
    pub(crate) key: DecodingKey,
    /// Identifies the key material and its kid, so the verified-token cache can tell whether
    /// the key that verified a token is still published.
    pub(crate) fingerprint: Fingerprint,
}

impl std::fmt::Debug for KeyEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyEntry")
            .field("kid", &self.kid)
            .field("kind", &self.kind)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

fn str_field<'a>(v: &'a Value, name: &str) -> Result<Option<&'a str>, &'static str> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err("a member is not a string"),
    }
}

impl KeyEntry {
    /// Parses one JWKS entry; `Err` says why it is skipped. `from_jwk` would happily turn an
    /// `oct` entry into an HMAC key and ignores `use`/`alg`, so all filtering happens here.
    pub(crate) fn from_jwk_value(v: &Value) -> Result<KeyEntry, &'static str> {
        if !v.is_object() {
            return Err("not an object");
        }
        let kty = str_field(v, "kty")?.ok_or("no kty")?;
        if let Some(usage) = str_field(v, "use")? {
            if usage != "sig" {
                return Err("not a signing key");
            }
        }
        if let Some(ops) = v.get("key_ops") {
            let verifies = ops
                .as_array()
                .is_some_and(|ops| ops.iter().any(|op| op.as_str() == Some("verify")));
            if !verifies {
                return Err("key_ops does not allow verify");
            }
        }
        let crv = str_field(v, "crv")?;
        let kind = match (kty, crv) {
            ("RSA", _) => KeyKind::Rsa,
            ("EC", Some("P-256")) => KeyKind::P256,
            ("EC", Some("P-384")) => KeyKind::P384,
            ("OKP", Some("Ed25519")) => KeyKind::Ed25519,
            ("oct", _) => return Err("symmetric keys are never accepted"),
            _ => return Err("unsupported key type or curve"),
        };
        let alg = str_field(v, "alg")?.map(str::to_owned);
        let kid = str_field(v, "kid")?.map(str::to_owned);
        let jwk: Jwk = serde_json::from_value(v.clone()).map_err(|_| "malformed key")?;
        let key = DecodingKey::from_jwk(&jwk).map_err(|_| "malformed key")?;
        let fingerprint = fingerprint(v, kty, kid.as_deref());
        Ok(KeyEntry {
            kid,
            kind,
            alg,
            key,
            fingerprint,
        })
    }

    pub(crate) fn usable_for(&self, alg: Algorithm) -> bool {
        self.kind.accepts(alg) && self.alg.as_deref().is_none_or(|a| a == alg_name(alg))
    }
}

fn fingerprint(v: &Value, kty: &str, kid: Option<&str>) -> Fingerprint {
    let mut h = Sha256::new();
    for part in [
        Some(kty),
        kid,
        v.get("crv").and_then(Value::as_str),
        v.get("n").and_then(Value::as_str),
        v.get("e").and_then(Value::as_str),
        v.get("x").and_then(Value::as_str),
        v.get("y").and_then(Value::as_str),
    ] {
        // Length-prefixed so that field boundaries cannot shift.
        let part = part.unwrap_or("");
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().into()
}

/// Which keys may verify a token.
pub(crate) enum Selection<'a> {
    Candidates(Vec<&'a KeyEntry>),
    /// The token names a kid the set does not have: maybe a rotation we have not seen yet.
    UnknownKid,
    /// Nothing in the set can verify this token's algorithm (or its kid names a key of
    /// another type): no fetch will change that.
    NoUsableKey,
}

/// An immutable snapshot of the usable keys; replaced as a whole on refresh.
#[derive(Default)]
pub(crate) struct KeySet {
    keys: Vec<KeyEntry>,
    fingerprints: HashSet<Fingerprint>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(&self.keys).finish()
    }
}

impl KeySet {
    /// Parses a JWKS document, skipping entries we cannot or must not use.
    pub(crate) fn parse(doc: &Value) -> Result<KeySet, String> {
        let entries = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| "JWKS has no \"keys\" array".to_string())?;
        let mut set = KeySet::default();
        for entry in entries {
            if set.keys.len() >= MAX_KEYS {
                log::warn!("JWKS has more than {MAX_KEYS} usable keys; ignoring the rest");
                break;
            }
            match KeyEntry::from_jwk_value(entry) {
                Ok(key) => {
                    if set.fingerprints.insert(key.fingerprint) {
                        set.keys.push(key);
                    }
                }
                Err(why) => log::debug!(
                    "ignoring JWKS entry kid={:?}: {why}",
                    entry.get("kid").and_then(Value::as_str)
                ),
            }
        }
        Ok(set)
    }

    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub(crate) fn contains(&self, fp: &Fingerprint) -> bool {
        self.fingerprints.contains(fp)
    }

    fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    pub(crate) fn select(&self, alg: Algorithm, kid: Option<&str>) -> Selection<'_> {
        let candidates: Vec<&KeyEntry> = match kid {
            Some(kid) => {
                if !self.has_kid(kid) {
                    return Selection::UnknownKid;
                }
                self.keys
                    .iter()
                    .filter(|k| k.kid.as_deref() == Some(kid) && k.usable_for(alg))
                    .take(MAX_KIDLESS_CANDIDATES)
                    .collect()
            }
            None => self
                .keys
                .iter()
                .filter(|k| k.usable_for(alg))
                .take(MAX_KIDLESS_CANDIDATES)
                .collect(),
        };
        if candidates.is_empty() {
            Selection::NoUsableKey
        } else {
            Selection::Candidates(candidates)
        }
    }
}

/// Reads `max-age` from a `Cache-Control` header and clamps it.
pub(crate) fn max_age(cache_control: Option<&str>) -> Option<Duration> {
    cache_control?
        .split(',')
        .filter_map(|d| {
            let (name, value) = d.trim().split_once('=')?;
            if !name.trim().eq_ignore_ascii_case("max-age") {
                return None;
            }
            value.trim().trim_matches('"').parse::<u64>().ok()
        })
        .next()
        .map(|s| Duration::from_secs(s).clamp(MAX_AGE_MIN, MAX_AGE_MAX))
}

fn next_backoff(current: Duration) -> Duration {
    if current.is_zero() {
        BACKOFF_START
    } else {
        (current * 2).min(BACKOFF_CAP)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Trigger {
    /// The background loop, or an explicit refresh.
    Scheduled,
    /// A request arrived while we have no keys at all.
    NoKeys,
    /// A token named a kid we do not have.
    UnknownKid,
}

struct FetchState {
    last_attempt: Option<Instant>,
    last_success: Option<(Instant, SystemTime)>,
    last_error: Option<String>,
    /// Set while failing: no request-triggered fetch before this instant.
    retry_at: Option<Instant>,
    backoff: Duration,
    /// How long the last good set may be used before the next scheduled refresh.
    fresh_for: Duration,
    /// The first unknown kid since the last real refresh is looked up whenever it comes; the
    /// ones after it are rate limited. A fetch that an unknown kid triggered re-arms this only
    /// if it brought new keys, so random kids cannot keep it armed.
    free_unknown_lookup: bool,
    not_found: HashSet<String>,
}

/// Where the keys come from and the state of fetching them.
pub(crate) struct KeyStore {
    jwks_uri: Option<String>,
    discovery_url: Option<String>,
    discovered: Mutex<Option<String>>,
    current: ArcSwap<KeySet>,
    /// Single flight: whoever holds this fetches; the others wait and use the result.
    fetch_lock: tokio::sync::Mutex<()>,
    /// Completed fetch attempts; a waiter that sees it move knows someone fetched for it.
    attempts: AtomicU64,
    state: Mutex<FetchState>,
    refresh_every: Duration,
    unknown_kid_min_interval: Duration,
    http: LazyClient,
}

/// What the health check reports.
pub(crate) struct KeyStatus {
    pub(crate) jwks_uri: Option<String>,
    pub(crate) keys: usize,
    pub(crate) last_refresh: Option<SystemTime>,
    pub(crate) last_error: Option<String>,
    pub(crate) attempted: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data stays consistent even if a holder panicked (every update is one
    // assignment), so a poisoned lock is not a reason to fail requests.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl KeyStore {
    pub(crate) fn new(
        jwks_uri: Option<String>,
        discovery_url: Option<String>,
        refresh_every: Duration,
        unknown_kid_min_interval: Duration,
        timeout: Duration,
    ) -> Self {
        KeyStore {
            jwks_uri,
            discovery_url,
            discovered: Mutex::new(None),
            current: ArcSwap::from_pointee(KeySet::default()),
            fetch_lock: tokio::sync::Mutex::new(()),
            attempts: AtomicU64::new(0),
            state: Mutex::new(FetchState {
                last_attempt: None,
                last_success: None,
                last_error: None,
                retry_at: None,
                backoff: Duration::ZERO,
                fresh_for: refresh_every,
                free_unknown_lookup: true,
                not_found: HashSet::new(),
            }),
            refresh_every,
            unknown_kid_min_interval,
            http: LazyClient::new(timeout),
        }
    }

    pub(crate) fn current(&self) -> Arc<KeySet> {
        self.current.load_full()
    }

    /// JWKS fetch attempts so far (successful or not), for metrics and tests.
    pub(crate) fn fetches(&self) -> u64 {
        self.attempts.load(Ordering::Acquire)
    }

    /// Whether the most recent fetch attempt failed.
    pub(crate) fn failing(&self) -> bool {
        lock(&self.state).last_error.is_some()
    }

    /// How long a client should wait before retrying while we have no keys.
    pub(crate) fn retry_after(&self) -> Duration {
        let now = Instant::now();
        lock(&self.state)
            .retry_at
            .map(|t| t.saturating_duration_since(now))
            .unwrap_or_default()
    }

    /// With no keys at all, makes at most one (shared) fetch attempt, unless we are backing off.
    pub(crate) async fn ensure_keys(&self) -> Arc<KeySet> {
        let seen = self.fetches();
        let current = self.current();
        if !current.is_empty() || !self.gate_open() {
            return current;
        }
        let _guard = self.fetch_lock.lock().await;
        if self.fetches() != seen || !self.current().is_empty() || !self.gate_open() {
            return self.current();
        }
        let _ = self.fetch_locked(Trigger::NoKeys).await;
        self.current()
    }

    /// A token named `kid`, which the current set lacks: fetch again if the rate limit allows,
    /// sharing one fetch among concurrent callers. Returns the (possibly new) set.
    pub(crate) async fn lookup_unknown_kid(&self, kid: &str) -> Arc<KeySet> {
        let seen = self.fetches();
        // Someone may have fetched the kid since the caller looked at the set.
        let current = self.current();
        if current.has_kid(kid) {
            return current;
        }
        if !self.may_fetch_for(kid) {
            // Rate limited, but a fetch may be in flight right now (the one for this very
            // rotation, say): join it rather than refuse a token it is about to make valid.
            if self.fetch_lock.try_lock().is_err() {
                drop(self.fetch_lock.lock().await);
            }
            return self.current();
        }
        let _guard = self.fetch_lock.lock().await;
        if self.fetches() != seen || !self.may_fetch_for(kid) {
            return self.current();
        }
        lock(&self.state).free_unknown_lookup = false;
        let _ = self.fetch_locked(Trigger::UnknownKid).await;
        let set = self.current();
        if !set.has_kid(kid) {
            let mut state = lock(&self.state);
            if state.not_found.len() >= NOT_FOUND_MAX {
                state.not_found.clear();
            }
            state.not_found.insert(kid.to_owned());
        }
        set
    }

    /// Fetches now (waiting for an in-flight fetch first), regardless of rate limits.
    pub(crate) async fn refresh(&self) -> Result<usize, String> {
        let _guard = self.fetch_lock.lock().await;
        self.fetch_locked(Trigger::Scheduled).await
    }

    /// How long the background loop should sleep before the next scheduled refresh.
    pub(crate) fn until_next_refresh(&self) -> Duration {
        let now = Instant::now();
        let state = lock(&self.state);
        if let Some(retry_at) = state.retry_at {
            return retry_at.saturating_duration_since(now);
        }
        match state.last_success {
            Some((at, _)) => (at + state.fresh_for).saturating_duration_since(now),
            None => Duration::ZERO,
        }
    }

    pub(crate) fn status(&self) -> KeyStatus {
        let state = lock(&self.state);
        KeyStatus {
            jwks_uri: self
                .jwks_uri
                .clone()
                .or_else(|| lock(&self.discovered).clone()),
            keys: self.current().len(),
            last_refresh: state.last_success.map(|(_, at)| at),
            last_error: state.last_error.clone(),
            attempted: state.last_attempt.is_some(),
        }
    }

    fn gate_open(&self) -> bool {
        let now = Instant::now();
        lock(&self.state).retry_at.is_none_or(|t| now >= t)
    }

    fn may_fetch_for(&self, kid: &str) -> bool {
        let now = Instant::now();
        let state = lock(&self.state);
        if state.retry_at.is_some_and(|t| now < t) || state.not_found.contains(kid) {
            return false;
        }
        state.free_unknown_lookup
            || state
                .last_attempt
                .is_none_or(|t| now.duration_since(t) >= self.unknown_kid_min_interval)
    }

    /// One fetch attempt; the caller holds `fetch_lock`.
    async fn fetch_locked(&self, trigger: Trigger) -> Result<usize, String> {
        lock(&self.state).last_attempt = Some(Instant::now());
        let result = self.fetch().await;
        let outcome = {
            let mut state = lock(&self.state);
            match result {
                Ok((set, max_age)) if !set.is_empty() => {
                    let old = self.current();
                    let changed = old.fingerprints != set.fingerprints;
                    let n = set.len();
                    self.current.store(Arc::new(set));
                    state.last_success = Some((Instant::now(), SystemTime::now()));
                    state.last_error = None;
                    state.retry_at = None;
                    state.backoff = Duration::ZERO;
                    state.fresh_for = max_age.unwrap_or(self.refresh_every);
                    if trigger != Trigger::UnknownKid || changed {
                        state.free_unknown_lookup = true;
                        state.not_found.clear();
                    }
                    if changed {
                        log::info!("JWKS refreshed: {n} usable key(s)");
                    }
                    Ok(n)
                }
                other => {
                    let why = match other {
                        Ok(_) => "JWKS has no usable signing keys".to_string(),
                        Err(e) => e,
                    };
                    state.backoff = next_backoff(state.backoff);
                    state.retry_at = Some(Instant::now() + state.backoff);
                    log::warn!(
                        "JWKS refresh failed ({why}); keeping {} key(s), next attempt in {:?}",
                        self.current().len(),
                        state.backoff
                    );
                    state.last_error = Some(why.clone());
                    Err(why)
                }
            }
        };
        self.attempts.fetch_add(1, Ordering::AcqRel);
        outcome
    }

    async fn fetch(&self) -> Result<(KeySet, Option<Duration>), String> {
        let (uri, discovered) = self.jwks_location().await?;
        let client = self.http.get()?;
        let resp = client
            .get(&uri)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| format!("JWKS request to {uri} failed: {}", describe(&e)))?;
        let status = resp.status();
        if !status.is_success() {
            if discovered {
                // The IdP may have moved its keys: look the location up again next time.
                *lock(&self.discovered) = None;
            }
            return Err(format!("JWKS endpoint {uri} answered {}", status.as_u16()));
        }
        let max_age = max_age(
            resp.headers()
                .get(reqwest::header::CACHE_CONTROL)
                .and_then(|v| v.to_str().ok()),
        );
        let body = read_limited(resp, MAX_JWKS_BYTES)
            .await
            .map_err(|e| body_error("JWKS", &uri, e))?;
        let doc: Value =
            serde_json::from_slice(&body).map_err(|_| format!("JWKS from {uri} is not JSON"))?;
        Ok((KeySet::parse(&doc)?, max_age))
    }

    /// The JWKS URI: configured, or found through OIDC discovery (remembered once found).
    async fn jwks_location(&self) -> Result<(String, bool), String> {
        if let Some(uri) = &self.jwks_uri {
            return Ok((uri.clone(), false));
        }
        if let Some(uri) = lock(&self.discovered).clone() {
            return Ok((uri, true));
        }
        let url = self
            .discovery_url
            .as_deref()
            .ok_or_else(|| "no JWKS URI, issuer or discovery URL is configured".to_string())?;
        let client = self.http.get()?;
        let resp = client
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| format!("OIDC discovery at {url} failed: {}", describe(&e)))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(format!(
                "OIDC discovery at {url} answered {}",
                status.as_u16()
            ));
        }
        let body = read_limited(resp, MAX_DISCOVERY_BYTES)
            .await
            .map_err(|e| body_error("OIDC discovery", url, e))?;
        let doc: Value = serde_json::from_slice(&body)
            .map_err(|_| format!("OIDC discovery document at {url} is not JSON"))?;
        let uri = doc
            .get("jwks_uri")
            .and_then(Value::as_str)
            .filter(|u| url::Url::parse(u).is_ok_and(|p| matches!(p.scheme(), "http" | "https")))
            .ok_or_else(|| format!("OIDC discovery document at {url} has no valid jwks_uri"))?
            .to_string();
        *lock(&self.discovered) = Some(uri.clone());
        Ok((uri, true))
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.http.timeout()
    }
}

fn body_error(what: &str, url: &str, e: BodyError) -> String {
    match e {
        BodyError::TooLarge => format!("{what} answer from {url} is too large"),
        BodyError::Transport(e) => format!("{what} answer from {url}: {}", describe(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    // A real 2048-bit RSA public key and a P-256 point, so `from_jwk` accepts them.
    const N: &str = "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw";
    const X: &str = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
    const Y: &str = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";

    fn rsa(kid: &str) -> Value {
        json!({"kty": "RSA", "kid": kid, "n": N, "e": "AQAB"})
    }

    fn ec(kid: &str) -> Value {
        json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": X, "y": Y})
    }

    #[test]
    fn filters_entries_we_must_not_use() {
        let mut enc = rsa("enc");
        enc["use"] = json!("enc");
        let mut other_alg = rsa("ps");
        other_alg["alg"] = json!("PS256");
        let mut no_verify = rsa("ops");
        no_verify["key_ops"] = json!(["encrypt"]);
        let doc = json!({"keys": [
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            enc,
            no_verify,
            {"kty": "EC", "crv": "P-521", "kid": "p521", "x": X, "y": Y},
            {"kty": "RSA", "kid": "broken"},
            "not an object",
            rsa("sig"),
            other_alg,
            ec("ec"),
        ]});
        let set = KeySet::parse(&doc).unwrap();
        let kids: Vec<_> = set.keys.iter().map(|k| k.kid.as_deref().unwrap()).collect();
        assert_eq!(kids, ["sig", "ps", "ec"]);

        assert!(matches!(
            set.select(Algorithm::RS256, Some("hmac")),
            Selection::UnknownKid
        ));
        // A key whose own alg is PS256 must not verify RS256.
        assert!(matches!(
            set.select(Algorithm::RS256, Some("ps")),
            Selection::NoUsableKey
        ));
        assert!(
            matches!(set.select(Algorithm::PS256, Some("ps")), Selection::Candidates(c) if c.len() == 1)
        );
        // kid of an EC key with an RSA algorithm: type mismatch, no fetch will help.
        assert!(matches!(
            set.select(Algorithm::RS256, Some("ec")),
            Selection::NoUsableKey
        ));
        assert!(matches!(
            set.select(Algorithm::ES384, Some("ec")),
            Selection::NoUsableKey
        ));
        assert!(matches!(
            set.select(Algorithm::ES256, Some("ec")),
            Selection::Candidates(_)
        ));
        assert!(matches!(
            set.select(Algorithm::RS256, Some("new")),
            Selection::UnknownKid
        ));
        // Without a kid: every usable key of the type (here "sig" only, "ps" is pinned to PS256).
        assert!(
            matches!(set.select(Algorithm::RS256, None), Selection::Candidates(c) if c.len() == 1)
        );
        assert!(matches!(
            set.select(Algorithm::EdDSA, None),
            Selection::NoUsableKey
        ));
    }

    #[test]
    fn kidless_candidates_are_bounded_and_duplicates_dropped() {
        let keys: Vec<Value> = (0..10)
            .map(|i| rsa(&format!("k{i}")))
            .chain([rsa("k0")])
            .collect();
        let set = KeySet::parse(&json!({ "keys": keys })).unwrap();
        assert_eq!(set.len(), 10);
        match set.select(Algorithm::RS256, None) {
            Selection::Candidates(c) => assert_eq!(c.len(), MAX_KIDLESS_CANDIDATES),
            _ => panic!("expected candidates"),
        }
    }

    #[test]
    fn rejects_documents_without_keys() {
        assert!(KeySet::parse(&json!({"kids": []})).is_err());
        assert!(KeySet::parse(&json!({"keys": []})).unwrap().is_empty());
    }

    #[test]
    fn fingerprint_changes_with_kid_and_material() {
        let a = KeyEntry::from_jwk_value(&rsa("a")).unwrap().fingerprint;
        let b = KeyEntry::from_jwk_value(&rsa("b")).unwrap().fingerprint;
        let a2 = KeyEntry::from_jwk_value(&rsa("a")).unwrap().fingerprint;
        assert_ne!(a, b);
        assert_eq!(a, a2);
    }

    #[test]
    fn max_age_is_parsed_and_clamped() {
        assert_eq!(max_age(None), None);
        assert_eq!(max_age(Some("no-cache")), None);
        assert_eq!(
            max_age(Some("public, max-age=600")),
            Some(Duration::from_secs(600))
        );
        assert_eq!(
            max_age(Some("Max-Age=\"120\"")),
            Some(Duration::from_secs(120))
        );
        assert_eq!(max_age(Some("max-age=1")), Some(MAX_AGE_MIN));
        assert_eq!(max_age(Some("max-age=99999999")), Some(MAX_AGE_MAX));
        assert_eq!(max_age(Some("max-age=soon")), None);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut b = Duration::ZERO;
        let mut seen = Vec::new();
        for _ in 0..10 {
            b = next_backoff(b);
            seen.push(b.as_millis());
        }
        assert_eq!(&seen[..4], &[500, 1000, 2000, 4000]);
        assert_eq!(*seen.last().unwrap(), 30_000);
    }

    #[test]
    fn kind_matches_algorithm_exactly() {
        assert!(KeyKind::Rsa.accepts(Algorithm::PS512));
        assert!(!KeyKind::Rsa.accepts(Algorithm::HS256));
        assert!(!KeyKind::P256.accepts(Algorithm::ES384));
        assert!(KeyKind::Ed25519.accepts(Algorithm::EdDSA));
        assert!(!KeyKind::Ed25519.accepts(Algorithm::ES256));
    }

    #[tokio::test]
    async fn no_source_fails_without_panicking_and_backs_off() {
        let store = KeyStore::new(
            None,
            None,
            Duration::from_secs(300),
            Duration::from_secs(30),
            Duration::from_secs(1),
        );
        assert!(store.ensure_keys().await.is_empty());
        assert_eq!(store.fetches(), 1);
        // Backing off: the next request does not fetch again.
        assert!(store.ensure_keys().await.is_empty());
        assert_eq!(store.fetches(), 1);
        assert!(store.failing());
        assert!(store.retry_after() > Duration::ZERO);
        let status = store.status();
        assert!(status.last_error.unwrap().contains("no JWKS URI"));
    }
}
