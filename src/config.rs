//! One internal configuration, built from (in rising precedence) defaults, the YAML file, the
//! environment variables of the Python gateway, and the command line. Every invalid value is a
//! startup error that names the variable or key an operator has to fix.

use serde::Deserialize;
use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

pub const DEV_KEYCLOAK_ISSUER: &str = "http://localhost:8080/realms/arp-dev";
pub const DEFAULT_COORDINATOR_AUDIENCE: &str = "arp-run-coordinator";

#[derive(Debug)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

/// A secret string whose `Debug` never shows the value.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

// ---------------------------------------------------------------------------------------------
// The YAML file: every field optional so that a partial file only overrides what it names.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub server: Option<FileServer>,
    pub coordinators: Option<Vec<FileCoordinator>>,
    pub upstream: Option<FileUpstream>,
    pub limits: Option<FileLimits>,
    pub auth: Option<FileAuth>,
    pub events: Option<FileEvents>,
    pub logging: Option<FileLogging>,
    pub admin: Option<FileAdmin>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileServer {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub threads: Option<usize>,
    pub memory_trim_seconds: Option<u64>,
    pub grace_period_seconds: Option<u64>,
    pub graceful_shutdown_timeout_seconds: Option<u64>,
    pub upgrade_sock: Option<String>,
    pub pid_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCoordinator {
    pub url: String,
    pub weight: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileUpstream {
    pub audience: Option<String>,
    pub balancing: Option<String>,
    pub connect_timeout_ms: Option<u64>,
    pub first_byte_timeout_ms: Option<u64>,
    pub request_timeout_ms: Option<u64>,
    pub stream_idle_timeout_seconds: Option<u64>,
    pub idle_pool_timeout_seconds: Option<u64>,
    pub dns_refresh_seconds: Option<u64>,
    pub health_check: Option<FileHealthCheck>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHealthCheck {
    pub interval_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub failures_to_eject: Option<usize>,
    pub successes_to_restore: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLimits {
    pub max_body_bytes: Option<usize>,
    pub max_header_bytes: Option<usize>,
    pub max_token_bytes: Option<usize>,
    pub client_write_timeout_seconds: Option<u64>,
    pub header_read_timeout_seconds: Option<u64>,
    pub max_connections: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAuth {
    pub profile: Option<String>,
    pub mode: Option<String>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub jwks_uri: Option<String>,
    pub oidc_discovery_url: Option<String>,
    pub algorithms: Option<Vec<String>>,
    pub clock_skew_seconds: Option<u64>,
    pub exempt_paths: Option<Vec<String>>,
    pub dev_subject: Option<String>,
    pub anonymous_subject: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<Secret>,
    pub token_endpoint: Option<String>,
    pub timeout_seconds: Option<u64>,
    pub scope: Option<String>,
    pub jwks_refresh_seconds: Option<u64>,
    pub unknown_kid_min_interval_seconds: Option<u64>,
    pub token_cache_max_entries: Option<u64>,
    pub token_cache_margin_seconds: Option<u64>,
    pub verified_cache_max_entries: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEvents {
    pub repair_json_string_body: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLogging {
    pub level: Option<String>,
    pub access_log: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAdmin {
    pub listen: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// The resolved configuration the gateway runs with.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    Required,
    Optional,
    Disabled,
}

impl AuthMode {
    fn parse(s: &str) -> Option<AuthMode> {
        match s.trim().to_ascii_lowercase().as_str() {
            "required" => Some(AuthMode::Required),
            "optional" => Some(AuthMode::Optional),
            "disabled" => Some(AuthMode::Disabled),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balancing {
    RoundRobin,
    ConsistentHash,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coordinator {
    /// Normalised base URL: no trailing `/`, no trailing `/v1`.
    pub base_url: String,
    pub host: String,
    pub port: u16,
    pub tls: bool,
    pub weight: usize,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub coordinators: Vec<Coordinator>,
    pub audience: String,
    pub balancing: Balancing,
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub request_timeout: Duration,
    pub stream_idle_timeout: Duration,
    pub idle_pool_timeout: Duration,
    pub dns_refresh: Duration,
    pub health_interval: Duration,
    pub health_timeout: Duration,
    pub failures_to_eject: usize,
    pub successes_to_restore: usize,
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub mode: AuthMode,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub jwks_uri: Option<String>,
    pub oidc_discovery_url: Option<String>,
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    pub clock_skew: u64,
    pub exempt_paths: Vec<String>,
    pub dev_subject: String,
    pub anonymous_subject: String,
    pub client_id: Option<String>,
    pub client_secret: Option<Secret>,
    pub token_endpoint: Option<String>,
    pub sts_timeout: Duration,
    pub scope: Option<String>,
    pub jwks_refresh: Duration,
    pub unknown_kid_min_interval: Duration,
    pub token_cache_max_entries: u64,
    pub token_cache_margin: Duration,
    pub verified_cache_max_entries: u64,
}

impl AuthConfig {
    /// Client credentials are usable only when both halves are present.
    pub fn client_credentials(&self) -> Option<(&str, &Secret)> {
        match (&self.client_id, &self.client_secret) {
            (Some(id), Some(secret)) if !id.is_empty() => Some((id.as_str(), secret)),
            _ => None,
        }
    }

    /// Where discovery is looked up when no JWKS URI is given.
    pub fn discovery_url(&self) -> Option<String> {
        self.oidc_discovery_url.clone().or_else(|| {
            self.issuer.as_ref().map(|i| {
                format!(
                    "{}/.well-known/openid-configuration",
                    i.trim_end_matches('/')
                )
            })
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLog {
    Off,
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub host: String,
    pub port: u16,
    pub threads: usize,
    /// How often freed heap memory is handed back to the OS; zero: never.
    pub memory_trim: Duration,
    pub grace_period: Duration,
    pub graceful_shutdown_timeout: Duration,
    pub upgrade_sock: String,
    pub pid_file: String,
    pub upstream: UpstreamConfig,
    pub auth: AuthConfig,
    pub max_body_bytes: usize,
    pub max_header_bytes: usize,
    pub max_token_bytes: usize,
    pub client_write_timeout: Duration,
    /// Whole-head deadline for every request head on a client connection.
    pub header_read_timeout: Duration,
    /// Open client connections; requests on connections beyond it get a quick 503 and a close.
    pub max_connections: usize,
    pub repair_json_string_events: bool,
    pub log_level: String,
    pub access_log: AccessLog,
    pub admin_listen: Option<String>,
}

/// Overrides from the command line; they win over everything else.
#[derive(Debug, Default, Clone)]
pub struct CliOverrides {
    pub host: Option<String>,
    pub port: Option<u16>,
}

/// Parses a coordinator base URL the way the Python gateway does: trailing `/` and a trailing
/// `/v1` are stripped. Only `http` and `https` with a host are accepted.
pub fn parse_coordinator_url(raw: &str, weight: usize) -> Result<Coordinator, String> {
    let trimmed = raw.trim();
    let url = url::Url::parse(trimmed).map_err(|e| format!("{trimmed:?} is not a URL ({e})"))?;
    let tls = match url.scheme() {
        "http" => false,
        "https" => true,
        other => {
            return Err(format!(
                "{trimmed:?} has scheme {other:?}; use http or https"
            ))
        }
    };
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| format!("{trimmed:?} has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{trimmed:?} must not have a query or fragment"));
    }
    let mut path = url.path().trim_end_matches('/').to_string();
    if path.ends_with("/v1") {
        path.truncate(path.len() - 3);
    }
    let path = path.trim_end_matches('/');
    if !path.is_empty() {
        // The coordinator API lives at /v1 of its origin; a path prefix would silently change
        // which paths we forward to, so refuse it rather than guess.
        return Err(format!(
            "{trimmed:?} has a path prefix {path:?}; only an origin (optionally ending in /v1) is supported"
        ));
    }
    let port = url
        .port_or_known_default()
        .unwrap_or(if tls { 443 } else { 80 });
    let base_url = format!(
        "{}://{}{}",
        url.scheme(),
        url.host_str().unwrap_or_default(),
        url.port().map(|p| format!(":{p}")).unwrap_or_default()
    );
    Ok(Coordinator {
        base_url,
        host,
        port,
        tls,
        weight: weight.max(1),
    })
}

fn parse_algorithms(
    list: &[String],
    origin: &str,
) -> Result<Vec<jsonwebtoken::Algorithm>, ConfigError> {
    use jsonwebtoken::Algorithm as A;
    let mut out = Vec::new();
    for raw in list {
        let name = raw.trim();
        if name.is_empty() {
            continue;
        }
        let alg = match name.to_ascii_uppercase().as_str() {
            "RS256" => A::RS256,
            "RS384" => A::RS384,
            "RS512" => A::RS512,
            "PS256" => A::PS256,
            "PS384" => A::PS384,
            "PS512" => A::PS512,
            "ES256" => A::ES256,
            "ES384" => A::ES384,
            "EDDSA" => A::EdDSA,
            _ => {
                return err(format!(
                    "{origin}: unsupported algorithm {name:?} (allowed: RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA; HMAC and none are never accepted)"
                ))
            }
        };
        if !out.contains(&alg) {
            out.push(alg);
        }
    }
    if out.is_empty() {
        return err(format!("{origin}: at least one algorithm is required"));
    }
    Ok(out)
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

fn non_empty(v: Option<&String>) -> Option<String> {
    v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

fn env_u64(env: &HashMap<String, String>, key: &str) -> Result<Option<u64>, ConfigError> {
    match non_empty(env.get(key)) {
        None => Ok(None),
        Some(v) => v
            .parse::<u64>()
            .map(Some)
            .map_err(|_| ConfigError(format!("{key}={v:?} is not a non-negative whole number"))),
    }
}

/// No duration setting may exceed 30 days: larger values are typos, and they would overflow
/// the arithmetic that adds timeouts together or to an `Instant`.
const MAX_SECS: u64 = 30 * 24 * 3600;

fn ms(v: u64) -> Duration {
    Duration::from_millis(v.min(MAX_SECS * 1000))
}

fn secs(v: u64) -> Duration {
    Duration::from_secs(v.min(MAX_SECS))
}

impl Config {
    /// Reads the YAML file (if any) and builds the configuration against the given environment.
    pub fn load(
        path: Option<&std::path::Path>,
        env: &HashMap<String, String>,
        cli: &CliOverrides,
    ) -> Result<Config, ConfigError> {
        let file = match path {
            None => FileConfig::default(),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| {
                    ConfigError(format!(
                        "cannot read configuration file {}: {e}",
                        p.display()
                    ))
                })?;
                Self::parse_yaml(&text).map_err(|e| {
                    ConfigError(format!("configuration file {}: {}", p.display(), e.0))
                })?
            }
        };
        Self::resolve(file, env, cli)
    }

    pub fn parse_yaml(text: &str) -> Result<FileConfig, ConfigError> {
        if text.trim().is_empty() {
            return Ok(FileConfig::default());
        }
        serde_yaml::from_str::<Option<FileConfig>>(text)
            .map(|f| f.unwrap_or_default())
            .map_err(|e| ConfigError(e.to_string()))
    }

    pub fn resolve(
        file: FileConfig,
        env: &HashMap<String, String>,
        cli: &CliOverrides,
    ) -> Result<Config, ConfigError> {
        let server = file.server.unwrap_or_default();
        let up = file.upstream.unwrap_or_default();
        let hc = up.health_check.unwrap_or_default();
        let limits = file.limits.unwrap_or_default();
        let fauth = file.auth.unwrap_or_default();
        let events = file.events.unwrap_or_default();
        let logging = file.logging.unwrap_or_default();
        let admin = file.admin.unwrap_or_default();

        // --- coordinators ---
        let mut coordinators = Vec::new();
        if let Some(list) = non_empty(env.get("JARVIS_RUN_COORDINATOR_URL")) {
            for raw in split_list(&list) {
                coordinators.push(
                    parse_coordinator_url(&raw, 1)
                        .map_err(|e| ConfigError(format!("JARVIS_RUN_COORDINATOR_URL: {e}")))?,
                );
            }
        } else if let Some(list) = file.coordinators {
            for (i, c) in list.iter().enumerate() {
                if c.weight == Some(0) {
                    return err(format!("coordinators[{i}].weight must be at least 1"));
                }
                coordinators.push(
                    parse_coordinator_url(&c.url, c.weight.unwrap_or(1))
                        .map_err(|e| ConfigError(format!("coordinators[{i}].url: {e}")))?,
                );
            }
        }
        if coordinators.is_empty() {
            return err(
                "no Run Coordinator configured: set JARVIS_RUN_COORDINATOR_URL (comma-separated for several) or the YAML key `coordinators` (a list of `- url: ...`)",
            );
        }

        let balancing = match up.balancing.as_deref().map(str::trim) {
            None | Some("round_robin") => Balancing::RoundRobin,
            Some("consistent_hash") => Balancing::ConsistentHash,
            Some(other) => {
                return err(format!(
                    "upstream.balancing: unknown policy {other:?} (round_robin or consistent_hash)"
                ))
            }
        };
        let audience = non_empty(env.get("JARVIS_RUN_COORDINATOR_AUDIENCE"))
            .or(up.audience)
            .unwrap_or_else(|| DEFAULT_COORDINATOR_AUDIENCE.to_string());

        let upstream = UpstreamConfig {
            coordinators,
            audience,
            balancing,
            connect_timeout: ms(up.connect_timeout_ms.unwrap_or(2_000)),
            first_byte_timeout: ms(up.first_byte_timeout_ms.unwrap_or(30_000)),
            request_timeout: ms(up.request_timeout_ms.unwrap_or(60_000)),
            stream_idle_timeout: secs(up.stream_idle_timeout_seconds.unwrap_or(300)),
            idle_pool_timeout: secs(up.idle_pool_timeout_seconds.unwrap_or(4)),
            dns_refresh: secs(up.dns_refresh_seconds.unwrap_or(30).max(1)),
            health_interval: ms(hc.interval_ms.unwrap_or(2_000)),
            health_timeout: ms(hc.timeout_ms.unwrap_or(1_000)),
            failures_to_eject: hc.failures_to_eject.unwrap_or(2).clamp(1, 1000),
            successes_to_restore: hc.successes_to_restore.unwrap_or(1).clamp(1, 1000),
        };

        let auth = Self::resolve_auth(fauth, env)?;

        let access_log = match logging.access_log.as_deref().map(str::trim) {
            None | Some("text") => AccessLog::Text,
            Some("json") => AccessLog::Json,
            Some("off") => AccessLog::Off,
            Some(other) => {
                return err(format!(
                    "logging.access_log: unknown format {other:?} (text, json or off)"
                ))
            }
        };

        let max_body_bytes = limits.max_body_bytes.unwrap_or(1024 * 1024);
        if max_body_bytes == 0 {
            return err("limits.max_body_bytes must be at least 1");
        }

        Ok(Config {
            host: cli
                .host
                .clone()
                .or(server.host)
                .unwrap_or_else(|| "127.0.0.1".to_string()),
            port: cli.port.or(server.port).unwrap_or(8080),
            threads: server.threads.unwrap_or(2).max(1),
            memory_trim: secs(server.memory_trim_seconds.unwrap_or(10)),
            grace_period: secs(server.grace_period_seconds.unwrap_or(30)),
            graceful_shutdown_timeout: secs(server.graceful_shutdown_timeout_seconds.unwrap_or(5)),
            upgrade_sock: server
                .upgrade_sock
                .unwrap_or_else(|| "/tmp/arp-jarvis-rungateway-upgrade.sock".to_string()),
            pid_file: server
                .pid_file
                .unwrap_or_else(|| "/tmp/arp-jarvis-rungateway.pid".to_string()),
            upstream,
            auth,
            max_body_bytes,
            max_header_bytes: limits.max_header_bytes.unwrap_or(32 * 1024),
            max_token_bytes: limits.max_token_bytes.unwrap_or(16 * 1024),
            client_write_timeout: secs(limits.client_write_timeout_seconds.unwrap_or(60)),
            header_read_timeout: secs(limits.header_read_timeout_seconds.unwrap_or(10).max(1)),
            max_connections: limits.max_connections.unwrap_or(10_000).max(1),
            repair_json_string_events: events.repair_json_string_body.unwrap_or(true),
            log_level: logging.level.unwrap_or_else(|| "info".to_string()),
            access_log,
            admin_listen: admin.listen.filter(|s| !s.trim().is_empty()),
        })
    }

    fn resolve_auth(f: FileAuth, env: &HashMap<String, String>) -> Result<AuthConfig, ConfigError> {
        let any_env = env.keys().any(|k| k.starts_with("ARP_AUTH_"));
        let profile_src = non_empty(env.get("ARP_AUTH_PROFILE"))
            .map(|p| (p, "ARP_AUTH_PROFILE"))
            .or_else(|| non_empty(f.profile.as_ref()).map(|p| (p, "auth.profile")));

        // Profile defaults first; explicit settings override them.
        let (mut mode, mut issuer) = (AuthMode::Required, None::<String>);
        let mut audience_required = false;
        if let Some((profile, origin)) = &profile_src {
            // The same names and aliases the Python gateway accepts.
            match profile.to_ascii_lowercase().replace('_', "-").as_str() {
                "dev-insecure" | "dev" => mode = AuthMode::Disabled,
                "dev-secure-keycloak" | "dev-secure" | "keycloak" => {
                    issuer = Some(DEV_KEYCLOAK_ISSUER.to_string());
                    audience_required = true;
                }
                "enterprise" | "prod" | "production" => {}
                other => {
                    return err(format!(
                        "{origin}: unknown profile {other:?} (dev-insecure, dev-secure-keycloak or enterprise)"
                    ))
                }
            }
        } else if !any_env && f.mode.is_none() && f.issuer.is_none() {
            // No ARP_AUTH_* at all: the reference runs required against the dev Keycloak.
            issuer = Some(DEV_KEYCLOAK_ISSUER.to_string());
        }

        if let Some(m) = non_empty(env.get("ARP_AUTH_MODE")) {
            mode = AuthMode::parse(&m).ok_or_else(|| {
                ConfigError(format!(
                    "ARP_AUTH_MODE: unknown mode {m:?} (required, optional or disabled)"
                ))
            })?;
        } else if let Some(m) = non_empty(f.mode.as_ref()) {
            mode = AuthMode::parse(&m).ok_or_else(|| {
                ConfigError(format!(
                    "auth.mode: unknown mode {m:?} (required, optional or disabled)"
                ))
            })?;
        }

        let issuer = non_empty(env.get("ARP_AUTH_ISSUER"))
            .or(non_empty(f.issuer.as_ref()))
            .or(issuer);
        let audience = non_empty(env.get("ARP_AUTH_AUDIENCE"))
            .or_else(|| non_empty(env.get("ARP_AUTH_SERVICE_ID")))
            .or(non_empty(f.audience.as_ref()));
        if audience_required && audience.is_none() && mode != AuthMode::Disabled {
            return err(
                "profile dev-secure-keycloak needs an audience: set ARP_AUTH_AUDIENCE (or ARP_AUTH_SERVICE_ID) or auth.audience",
            );
        }

        let algorithms = if let Some(a) = non_empty(env.get("ARP_AUTH_ALGORITHMS")) {
            parse_algorithms(&split_list(&a), "ARP_AUTH_ALGORITHMS")?
        } else if let Some(list) = &f.algorithms {
            parse_algorithms(list, "auth.algorithms")?
        } else {
            vec![jsonwebtoken::Algorithm::RS256]
        };

        let clock_skew = env_u64(env, "ARP_AUTH_CLOCK_SKEW_SECONDS")?
            .or(f.clock_skew_seconds)
            .unwrap_or(60);

        // An empty list falls back to the defaults, as in the Python gateway.
        let exempt_paths = non_empty(env.get("ARP_AUTH_EXEMPT_PATHS"))
            .map(|p| split_list(&p))
            .or(f.exempt_paths)
            .filter(|l| !l.is_empty())
            .unwrap_or_else(|| vec!["/v1/health".to_string(), "/v1/version".to_string()]);

        let token_endpoint = non_empty(env.get("ARP_AUTH_TOKEN_ENDPOINT"))
            .or(non_empty(f.token_endpoint.as_ref()))
            .or_else(|| {
                issuer
                    .as_ref()
                    .map(|i| format!("{}/protocol/openid-connect/token", i.trim_end_matches('/')))
            });
        let client_secret = non_empty(env.get("ARP_AUTH_CLIENT_SECRET"))
            .map(Secret::new)
            .or(f.client_secret.filter(|s| !s.is_empty()));

        let jwks_uri = non_empty(env.get("ARP_AUTH_JWKS_URI")).or(non_empty(f.jwks_uri.as_ref()));
        let oidc_discovery_url = non_empty(env.get("ARP_AUTH_OIDC_DISCOVERY_URL"))
            .or(non_empty(f.oidc_discovery_url.as_ref()));
        for (name, value) in [
            ("ARP_AUTH_ISSUER (auth.issuer)", issuer.as_ref()),
            (
                "ARP_AUTH_TOKEN_ENDPOINT (auth.token_endpoint)",
                token_endpoint.as_ref(),
            ),
            ("ARP_AUTH_JWKS_URI (auth.jwks_uri)", jwks_uri.as_ref()),
            (
                "ARP_AUTH_OIDC_DISCOVERY_URL (auth.oidc_discovery_url)",
                oidc_discovery_url.as_ref(),
            ),
        ] {
            if let Some(v) = value {
                if url::Url::parse(v).is_err() {
                    return err(format!("{name}: {v:?} is not a URL"));
                }
            }
        }

        Ok(AuthConfig {
            mode,
            issuer,
            audience,
            jwks_uri,
            oidc_discovery_url,
            algorithms,
            clock_skew,
            exempt_paths,
            dev_subject: non_empty(env.get("ARP_AUTH_DEV_SUBJECT"))
                .or(f.dev_subject)
                .unwrap_or_else(|| "dev".to_string()),
            anonymous_subject: non_empty(env.get("ARP_AUTH_ANONYMOUS_SUBJECT"))
                .or(f.anonymous_subject)
                .unwrap_or_else(|| "anonymous".to_string()),
            client_id: non_empty(env.get("ARP_AUTH_CLIENT_ID")).or(non_empty(f.client_id.as_ref())),
            client_secret,
            token_endpoint,
            sts_timeout: secs(
                env_u64(env, "ARP_AUTH_TIMEOUT_SECS")?
                    .or(f.timeout_seconds)
                    .unwrap_or(10)
                    .max(1),
            ),
            scope: non_empty(env.get("ARP_AUTH_SCOPE")).or(non_empty(f.scope.as_ref())),
            jwks_refresh: secs(f.jwks_refresh_seconds.unwrap_or(300).max(1)),
            unknown_kid_min_interval: secs(f.unknown_kid_min_interval_seconds.unwrap_or(30)),
            token_cache_max_entries: f.token_cache_max_entries.unwrap_or(100_000).max(1),
            token_cache_margin: secs(f.token_cache_margin_seconds.unwrap_or(30)),
            verified_cache_max_entries: f.verified_cache_max_entries.unwrap_or(100_000).max(1),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn load(yaml: &str, pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::resolve(
            Config::parse_yaml(yaml)?,
            &env(pairs),
            &CliOverrides::default(),
        )
    }

    #[test]
    fn coordinator_url_is_normalised() {
        for raw in [
            "http://coord:8081",
            "http://coord:8081/",
            "http://coord:8081/v1",
            "http://coord:8081/v1/",
        ] {
            let c = parse_coordinator_url(raw, 1).unwrap();
            assert_eq!(c.base_url, "http://coord:8081", "{raw}");
            assert_eq!((c.host.as_str(), c.port, c.tls), ("coord", 8081, false));
        }
        let c = parse_coordinator_url("https://coord", 1).unwrap();
        assert_eq!((c.port, c.tls), (443, true));
        assert!(parse_coordinator_url("ftp://x", 1).is_err());
        assert!(parse_coordinator_url("not a url", 1).is_err());
        assert!(parse_coordinator_url("http://x/api", 1).is_err());
    }

    #[test]
    fn missing_coordinator_names_variable_and_key() {
        let e = load("", &[]).unwrap_err().0;
        assert!(
            e.contains("JARVIS_RUN_COORDINATOR_URL") && e.contains("coordinators"),
            "{e}"
        );
    }

    #[test]
    fn env_wins_over_file() {
        let c = load(
            "coordinators:\n  - url: http://a:1\nauth:\n  mode: optional\n",
            &[
                ("JARVIS_RUN_COORDINATOR_URL", "http://b:2, http://c:3/v1"),
                ("ARP_AUTH_MODE", "disabled"),
            ],
        )
        .unwrap();
        let urls: Vec<_> = c
            .upstream
            .coordinators
            .iter()
            .map(|c| c.base_url.as_str())
            .collect();
        assert_eq!(urls, ["http://b:2", "http://c:3"]);
        assert_eq!(c.auth.mode, AuthMode::Disabled);
    }

    #[test]
    fn no_auth_env_means_required_dev_keycloak() {
        let c = load("", &[("JARVIS_RUN_COORDINATOR_URL", "http://a:1")]).unwrap();
        assert_eq!(c.auth.mode, AuthMode::Required);
        assert_eq!(c.auth.issuer.as_deref(), Some(DEV_KEYCLOAK_ISSUER));
        assert_eq!(
            c.auth.token_endpoint.as_deref(),
            Some("http://localhost:8080/realms/arp-dev/protocol/openid-connect/token")
        );
        assert_eq!(c.upstream.audience, DEFAULT_COORDINATOR_AUDIENCE);
        assert_eq!((c.host.as_str(), c.port), ("127.0.0.1", 8080));
    }

    #[test]
    fn profiles_and_invalid_values() {
        let base = ("JARVIS_RUN_COORDINATOR_URL", "http://a:1");
        let c = load("", &[base, ("ARP_AUTH_PROFILE", "dev-insecure")]).unwrap();
        assert_eq!(c.auth.mode, AuthMode::Disabled);
        let c = load("", &[base, ("ARP_AUTH_PROFILE", "Dev_Insecure")]).unwrap();
        assert_eq!(c.auth.mode, AuthMode::Disabled);
        let c = load("", &[base, ("ARP_AUTH_PROFILE", "production")]).unwrap();
        assert_eq!(c.auth.mode, AuthMode::Required);
        let c = load("", &[base, ("ARP_AUTH_EXEMPT_PATHS", " ")]).unwrap();
        assert_eq!(c.auth.exempt_paths, ["/v1/health", "/v1/version"]);
        for (k, v) in [
            ("ARP_AUTH_PROFILE", "bogus"),
            ("ARP_AUTH_MODE", "sometimes"),
            ("ARP_AUTH_CLOCK_SKEW_SECONDS", "ten"),
            ("ARP_AUTH_ALGORITHMS", "HS256"),
            ("ARP_AUTH_ALGORITHMS", "none"),
        ] {
            let e = load("", &[base, (k, v)]).unwrap_err().0;
            assert!(e.contains(k), "{k}={v}: {e}");
        }
        let e = load("", &[base, ("ARP_AUTH_PROFILE", "dev-secure-keycloak")])
            .unwrap_err()
            .0;
        assert!(e.contains("ARP_AUTH_AUDIENCE"), "{e}");
    }

    #[test]
    fn unknown_yaml_key_is_an_error() {
        let e = load(
            "server:\n  hots: x\n",
            &[("JARVIS_RUN_COORDINATOR_URL", "http://a:1")],
        )
        .unwrap_err()
        .0;
        assert!(e.contains("hots"), "{e}");
    }

    #[test]
    fn secret_debug_is_redacted() {
        let c = load(
            "",
            &[
                ("JARVIS_RUN_COORDINATOR_URL", "http://a:1"),
                ("ARP_AUTH_CLIENT_ID", "gw"),
                ("ARP_AUTH_CLIENT_SECRET", "s3cr3t-value"),
            ],
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("s3cr3t-value"));
        assert_eq!(
            c.auth.client_credentials().map(|(_, s)| s.expose()),
            Some("s3cr3t-value")
        );
    }
}
