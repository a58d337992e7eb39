//! The YAML + environment configuration loader (`Config::parse_yaml` then `Config::resolve`).
//!
//! Input: the YAML text, then optionally a NUL byte and `KEY=VALUE` lines: environment
//! variables, plus `--host=...` / `--port=...` lines for the command-line overrides. A
//! human-readable shape, so `conf/*.yaml` are seeds as they are. Invariants checked on an
//! accepted configuration:
//! - at least one coordinator, each `http(s)://host[:port]` with a host and a weight >= 1; with
//!   `JARVIS_RUN_COORDINATOR_URL` set, exactly one coordinator per list item;
//! - command-line host/port win; an explicit `ARP_AUTH_MODE` wins;
//! - at least one algorithm and never an HMAC one; non-zero limits where zero would be absurd;
//! - the client secret (from `ARP_AUTH_CLIENT_SECRET`) never appears in the `Debug` of the
//!   configuration, nor in an error message;
//! - durations the gateway combines at run time can be combined without overflow (the grace
//!   period sum handed to Pingora, the passive-ejection window).
#![no_main]

use std::collections::HashMap;
use std::time::Instant;

use jsonwebtoken::Algorithm;
use libfuzzer_sys::fuzz_target;
use rungateway::config::{AuthMode, CliOverrides, Config};

/// Set to skip the run-time duration checks (for a run while a reported bug is being fixed).
fn allow_known_bugs() -> bool {
    static ALLOW: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ALLOW.get_or_init(|| std::env::var_os("RUNGATEWAY_FUZZ_ALLOW_KNOWN").is_some())
}

struct Input<'a> {
    yaml: &'a str,
    env: HashMap<String, String>,
    cli: CliOverrides,
}

fn parse_input(text: &str) -> Input<'_> {
    let (yaml, rest) = text.split_once('\0').unwrap_or((text, ""));
    let mut env = HashMap::new();
    let mut cli = CliOverrides::default();
    for line in rest.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        match k {
            "--host" => cli.host = Some(v.to_string()),
            "--port" => cli.port = v.parse().ok(),
            _ => {
                env.insert(k.to_string(), v.to_string());
            }
        }
    }
    Input { yaml, env, cli }
}

fn split_list(s: &str) -> usize {
    s.split(',').filter(|p| !p.trim().is_empty()).count()
}

/// The same input with another client secret: what the output holds whatever the secret is.
fn with_other_secret<'a>(input: &Input<'a>) -> Input<'a> {
    let mut env = input.env.clone();
    env.insert("ARP_AUTH_CLIENT_SECRET".into(), "QQ-other-secret-QQ".into());
    Input {
        yaml: input.yaml,
        env,
        cli: input.cli.clone(),
    }
}

/// The client secret must not appear in `rendered` (a Debug or an error message) unless the
/// same text appears with another secret too (it is then part of the input or a template).
fn check_secret(
    input: &Input<'_>,
    rendered: &str,
    render_other: impl FnOnce(&Input<'_>) -> String,
) {
    let Some(secret) = input.env.get("ARP_AUTH_CLIENT_SECRET").map(|s| s.trim()) else {
        return;
    };
    if secret.len() < 6 || !rendered.contains(secret) {
        return;
    }
    let other = render_other(&with_other_secret(input));
    assert!(other.contains(secret), "client secret leaked: {rendered}");
}

fn render(input: &Input<'_>) -> String {
    let file = match Config::parse_yaml(input.yaml) {
        Ok(f) => f,
        Err(e) => return e.0,
    };
    match Config::resolve(file, &input.env, &input.cli) {
        Ok(cfg) => format!("{cfg:?}"),
        Err(e) => e.0,
    }
}

fn check_ok(input: &Input<'_>, cfg: &Config) {
    let up = &cfg.upstream;
    assert!(!up.coordinators.is_empty(), "no coordinator");
    for c in &up.coordinators {
        let scheme = if c.tls { "https://" } else { "http://" };
        assert!(c.base_url.starts_with(scheme), "{:?}", c.base_url);
        assert!(!c.host.is_empty(), "coordinator without host: {c:?}");
        assert!(c.weight >= 1);
    }
    if let Some(list) = input.env.get("JARVIS_RUN_COORDINATOR_URL") {
        if !list.trim().is_empty() {
            assert_eq!(up.coordinators.len(), split_list(list), "{list:?}");
        }
    }
    if let Some(port) = input.cli.port {
        assert_eq!(cfg.port, port);
    }
    if let Some(host) = &input.cli.host {
        assert_eq!(&cfg.host, host);
    }
    let expected_mode = match input.env.get("ARP_AUTH_MODE").map(|m| m.trim()) {
        Some("required") => Some(AuthMode::Required),
        Some("optional") => Some(AuthMode::Optional),
        Some("disabled") => Some(AuthMode::Disabled),
        _ => None,
    };
    if let Some(mode) = expected_mode {
        assert_eq!(cfg.auth.mode, mode);
    }
    assert!(!cfg.auth.algorithms.is_empty(), "no algorithm");
    for alg in &cfg.auth.algorithms {
        assert!(
            !matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512),
            "HMAC accepted"
        );
    }
    assert!(cfg.max_body_bytes >= 1 && cfg.threads >= 1 && cfg.max_connections >= 1);
    assert!(up.failures_to_eject >= 1 && up.successes_to_restore >= 1);
    if !allow_known_bugs() {
        // src/server.rs: grace_period + graceful_shutdown_timeout + 2 (whole seconds, u64).
        let pingora_grace = cfg
            .grace_period
            .as_secs()
            .checked_add(cfg.graceful_shutdown_timeout.as_secs())
            .and_then(|s| s.checked_add(2));
        assert!(
            pingora_grace.is_some(),
            "grace period sum overflows: {:?} + {:?}",
            cfg.grace_period,
            cfg.graceful_shutdown_timeout
        );
        // src/upstream.rs (eject): Instant::now() + health_interval * failures_to_eject as u32.
        let window = u32::try_from(up.failures_to_eject)
            .ok()
            .and_then(|n| up.health_interval.checked_mul(n))
            .and_then(|w| Instant::now().checked_add(w));
        assert!(
            window.is_some(),
            "ejection window overflows: {:?} x {}",
            up.health_interval,
            up.failures_to_eject
        );
    }
    check_secret(input, &format!("{cfg:?}"), render);
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let input = parse_input(text);
    let file = match Config::parse_yaml(input.yaml) {
        Ok(f) => f,
        Err(e) => {
            assert!(!e.0.is_empty(), "empty YAML error");
            return;
        }
    };
    match Config::resolve(file, &input.env, &input.cli) {
        Ok(cfg) => {
            check_ok(&input, &cfg);
            // Deterministic: the same input resolves the same way.
            let file = Config::parse_yaml(input.yaml).expect("second parse");
            let again = Config::resolve(file, &input.env, &input.cli).expect("second resolve");
            assert_eq!(format!("{cfg:?}"), format!("{again:?}"));
        }
        Err(e) => {
            assert!(!e.0.is_empty(), "empty configuration error");
            assert!(!e.0.contains('\n') || e.0.len() < 4096, "unbounded error");
            check_secret(&input, &e.0, render);
        }
    }
});
