//! Answers the gateway gives itself: `GET /v1/version` and `GET /v1/health`. Bodies are built
//! field by field so that optional fields are omitted, never `null` (the schemas forbid null).

use crate::upstream::{probe, Upstreams};
use serde_json::{json, Value};

pub const SERVICE_NAME: &str = "arp-jarvis-rungateway";

pub fn version_body() -> Value {
    let mut build = serde_json::Map::new();
    if let Some(c) = option_env!("ARP_GATEWAY_COMMIT") {
        build.insert("commit".into(), json!(c));
    }
    if let Some(t) = option_env!("ARP_GATEWAY_BUILT_AT") {
        build.insert("built_at".into(), json!(t));
    }
    let mut v = json!({
        "service_name": SERVICE_NAME,
        "service_version": env!("CARGO_PKG_VERSION"),
        "supported_api_versions": ["v1"],
    });
    if !build.is_empty() {
        v["build"] = Value::Object(build);
    }
    v
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

fn rank(status: &str) -> u8 {
    match status {
        "ok" => 0,
        "degraded" => 1,
        _ => 2,
    }
}

/// Probes every coordinator concurrently and folds the answers into one Health body:
/// one `run_coordinator` check per coordinator (plus, with a single coordinator, its own checks,
/// as the reference does), and the identity provider's check when auth is on.
/// With one coordinator the overall status is that coordinator's; with several it is `ok` when
/// all are ok, `down` when none is reachable and up, `degraded` otherwise.
pub async fn health_body(upstreams: &Upstreams, idp_check: Option<Value>) -> Value {
    let timeout = upstreams.config().health_timeout;
    let coords = upstreams.coordinators();
    let probes =
        futures::future::join_all(coords.iter().map(|c| probe(&c.base_url, timeout))).await;

    let mut checks = Vec::new();
    let mut statuses = Vec::new();
    let single = coords.len() == 1;
    for (c, p) in coords.iter().zip(&probes) {
        let status = if p.reachable {
            p.status.clone().unwrap_or_else(|| "down".into())
        } else {
            "down".into()
        };
        let mut details = json!({ "url": c.base_url });
        let mut check = json!({ "name": "run_coordinator", "status": status });
        if p.reachable {
            details["status"] = json!(status);
        }
        if let Some(e) = &p.error {
            check["message"] = json!(format!("Run coordinator health check failed: {e}"));
        }
        check["details"] = details;
        checks.push(check);
        statuses.push(status);
        if single {
            checks.extend(p.checks.iter().cloned());
        }
    }

    let mut overall = if single {
        // The reference answers degraded (not down) when its one coordinator is unreachable.
        match (probes[0].reachable, statuses[0].as_str()) {
            (false, _) => "degraded".to_string(),
            (true, s) => s.to_string(),
        }
    } else if statuses.iter().all(|s| s == "ok") {
        "ok".to_string()
    } else if statuses.iter().all(|s| s == "down") {
        "down".to_string()
    } else {
        "degraded".to_string()
    };

    if let Some(idp) = idp_check {
        let s = idp.get("status").and_then(Value::as_str).unwrap_or("down");
        if s != "ok" && rank(&overall) < 1 {
            overall = "degraded".to_string();
        }
        checks.push(idp);
    }

    json!({ "status": overall, "time": now_rfc3339(), "checks": checks })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_has_build_and_no_nulls() {
        let v = version_body();
        assert_eq!(v["service_name"], SERVICE_NAME);
        assert_eq!(v["supported_api_versions"], json!(["v1"]));
        assert!(v["build"]["built_at"].is_string());
        assert!(!v.to_string().contains("null"));
    }
}
