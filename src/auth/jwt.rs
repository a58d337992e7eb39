//! Verifying one JWT against candidate keys, and naming what is wrong with it.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, Header, Validation};
use serde::Deserialize;
use serde_json::Value;

use super::jwks::{Fingerprint, KeyEntry};

/// Why a token is refused. Each maps to one of the reference's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejection {
    Expired,
    Audience,
    Issuer,
    /// The signature does not match this key; another candidate key may still match.
    Signature,
    Invalid,
}

impl Rejection {
    pub(crate) fn message(self) -> &'static str {
        match self {
            Rejection::Expired => "Token expired",
            Rejection::Audience => "Invalid token audience",
            Rejection::Issuer => "Invalid token issuer",
            Rejection::Signature | Rejection::Invalid => "Invalid token",
        }
    }

    fn from_jwt(e: &jsonwebtoken::errors::Error) -> Rejection {
        match e.kind() {
            ErrorKind::ExpiredSignature => Rejection::Expired,
            ErrorKind::InvalidAudience => Rejection::Audience,
            ErrorKind::InvalidIssuer => Rejection::Issuer,
            // A configured audience/issuer is required; its absence is the same problem as a
            // wrong value and the precise message helps whoever debugs the client.
            ErrorKind::MissingRequiredClaim(c) if c == "aud" => Rejection::Audience,
            ErrorKind::MissingRequiredClaim(c) if c == "iss" => Rejection::Issuer,
            ErrorKind::InvalidSignature
            | ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidEddsaKey
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidKeyFormat => Rejection::Signature,
            _ => Rejection::Invalid,
        }
    }
}

/// What a verified token tells us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verified {
    pub(crate) subject: String,
    pub(crate) exp: u64,
    /// The key that verified it; a cache hit is valid only while that key is still published.
    pub(crate) key: Fingerprint,
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<Value>,
    #[serde(default)]
    exp: Option<Value>,
    #[serde(default)]
    iat: Option<Value>,
    #[serde(default)]
    iss: Option<Value>,
}

/// A JWT NumericDate as whole seconds (fractions round like jsonwebtoken's own check does).
fn numeric_date(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0 && *f < u64::MAX as f64)
            .map(|f| f.round() as u64)
    })
}

pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

const MAX_LEEWAY: u64 = 24 * 3600;

/// The verification policy: one `Validation` per allowed algorithm, built once from the
/// configuration (never from whatever `alg` a token claims).
pub(crate) struct Verifier {
    validations: Vec<(Algorithm, Validation)>,
    leeway: u64,
}

impl Verifier {
    pub(crate) fn new(
        algorithms: &[Algorithm],
        issuer: Option<&str>,
        audience: Option<&str>,
        leeway: u64,
    ) -> Self {
        // A skew beyond a day is a misconfiguration, and jsonwebtoken computes `now - leeway`
        // and `now + leeway` unchecked.
        let leeway = leeway.min(MAX_LEEWAY);
        let validations = algorithms
            .iter()
            // HMAC would let anyone holding a public key forge tokens (the configuration
            // already refuses it; this keeps the verifier safe on its own).
            .filter(|alg| alg.family() != AlgorithmFamily::Hmac)
            .map(|&alg| (alg, Self::validation(alg, issuer, audience, leeway)))
            .collect();
        Verifier {
            validations,
            leeway,
        }
    }

    fn validation(
        alg: Algorithm,
        issuer: Option<&str>,
        audience: Option<&str>,
        leeway: u64,
    ) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = leeway;
        v.validate_exp = true;
        v.validate_nbf = true;
        let mut required = vec!["exp"];
        if let Some(iss) = issuer {
            v.set_issuer(&[iss]);
            required.push("iss");
        }
        match audience {
            Some(aud) => {
                v.set_audience(&[aud]);
                required.push("aud");
            }
            // jsonwebtoken rejects any token carrying `aud` when no audience is set; the
            // reference does not check `aud` at all then.
            None => v.validate_aud = false,
        }
        v.set_required_spec_claims(&required);
        v
    }

    /// Decodes the header and checks that its algorithm is one we accept.
    pub(crate) fn header(&self, token: &str) -> Result<Header, Rejection> {
        // `alg: none` and unknown algorithms fail to decode here.
        let header = jsonwebtoken::decode_header(token).map_err(|_| Rejection::Invalid)?;
        if self.validation_for(header.alg).is_none() {
            return Err(Rejection::Invalid);
        }
        // We implement no JWS extensions, so a token that requires one must be refused.
        if header.crit.as_ref().is_some_and(|c| !c.is_empty()) {
            return Err(Rejection::Invalid);
        }
        Ok(header)
    }

    fn validation_for(&self, alg: Algorithm) -> Option<&Validation> {
        self.validations
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, v)| v)
    }

    /// Verifies against each candidate in turn. A signature mismatch moves on to the next key;
    /// any other failure means the signature was good and the claims are not, so it is final.
    pub(crate) fn verify(
        &self,
        token: &str,
        alg: Algorithm,
        candidates: &[&KeyEntry],
    ) -> Result<Verified, Rejection> {
        let validation = self.validation_for(alg).ok_or(Rejection::Invalid)?;
        let mut last = Rejection::Invalid;
        for key in candidates {
            if !key.usable_for(alg) {
                continue;
            }
            match jsonwebtoken::decode::<Claims>(token, &key.key, validation) {
                Ok(data) => return self.check_claims(data.claims, key.fingerprint),
                Err(e) => match Rejection::from_jwt(&e) {
                    Rejection::Signature => last = Rejection::Signature,
                    other => return Err(other),
                },
            }
        }
        Err(last)
    }

    /// What jsonwebtoken does not check: `iat` in the future.
    fn check_claims(&self, claims: Claims, key: Fingerprint) -> Result<Verified, Rejection> {
        // RFC 7519: `iss` is one StringOrURI. jsonwebtoken also accepts an array that contains
        // the expected issuer; a token like that was not issued the way we expect.
        if matches!(claims.iss, Some(ref v) if !v.is_string()) {
            return Err(Rejection::Issuer);
        }
        let now = now_unix();
        if let Some(iat) = &claims.iat {
            let iat = numeric_date(iat).ok_or(Rejection::Invalid)?;
            if iat > now.saturating_add(self.leeway) {
                return Err(Rejection::Invalid);
            }
        }
        // `exp` is required and was validated as a number; this only extracts it.
        let exp = claims
            .exp
            .as_ref()
            .and_then(numeric_date)
            .ok_or(Rejection::Invalid)?;
        let subject = match claims.sub {
            Some(Value::String(s)) => s,
            None | Some(Value::Null) => String::new(),
            Some(_) => return Err(Rejection::Invalid),
        };
        Ok(Verified { subject, exp, key })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_requires_configured_claims() {
        let v = Verifier::validation(Algorithm::RS256, Some("https://idp"), Some("gw"), 5);
        assert!(v.validate_nbf && v.validate_exp && v.validate_aud);
        assert_eq!(v.leeway, 5);
        assert_eq!(v.algorithms, vec![Algorithm::RS256]);
        for c in ["exp", "iss", "aud"] {
            assert!(v.required_spec_claims.contains(c), "{c}");
        }
        let v = Verifier::validation(Algorithm::ES256, None, None, 0);
        assert!(!v.validate_aud && v.iss.is_none());
        assert_eq!(v.required_spec_claims.len(), 1);
    }

    #[test]
    fn hmac_is_never_allowed() {
        let v = Verifier::new(&[Algorithm::HS256, Algorithm::RS256], None, None, 0);
        assert!(v.validation_for(Algorithm::HS256).is_none());
        assert!(v.validation_for(Algorithm::RS256).is_some());
    }

    #[test]
    fn header_rejects_none_disallowed_and_crit() {
        use base64::Engine;
        let b64 = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        let v = Verifier::new(&[Algorithm::RS256], None, None, 0);
        let tok = |h: &str| format!("{}.{}.sig", b64(h), b64("{}"));
        assert_eq!(v.header(&tok(r#"{"alg":"none"}"#)), Err(Rejection::Invalid));
        assert_eq!(
            v.header(&tok(r#"{"alg":"HS256"}"#)),
            Err(Rejection::Invalid)
        );
        assert_eq!(
            v.header(&tok(r#"{"alg":"ES256"}"#)),
            Err(Rejection::Invalid)
        );
        assert_eq!(
            v.header(&tok(r#"{"alg":"RS256","crit":["exp"]}"#)),
            Err(Rejection::Invalid)
        );
        assert_eq!(v.header("garbage"), Err(Rejection::Invalid));
        assert_eq!(
            v.header(&tok(r#"{"alg":"RS256","kid":"k"}"#))
                .map(|h| h.kid),
            Ok(Some("k".to_string()))
        );
    }

    #[test]
    fn messages_match_the_reference() {
        assert_eq!(Rejection::Expired.message(), "Token expired");
        assert_eq!(Rejection::Audience.message(), "Invalid token audience");
        assert_eq!(Rejection::Issuer.message(), "Invalid token issuer");
        assert_eq!(Rejection::Signature.message(), "Invalid token");
        assert_eq!(Rejection::Invalid.message(), "Invalid token");
        let missing_aud =
            jsonwebtoken::errors::Error::from(ErrorKind::MissingRequiredClaim("aud".into()));
        assert_eq!(Rejection::from_jwt(&missing_aud), Rejection::Audience);
        let immature = jsonwebtoken::errors::Error::from(ErrorKind::ImmatureSignature);
        assert_eq!(Rejection::from_jwt(&immature), Rejection::Invalid);
    }

    #[test]
    fn numeric_dates() {
        assert_eq!(numeric_date(&serde_json::json!(12)), Some(12));
        assert_eq!(numeric_date(&serde_json::json!(12.6)), Some(13));
        assert_eq!(numeric_date(&serde_json::json!(-1)), None);
        assert_eq!(numeric_date(&serde_json::json!("12")), None);
    }
}
