//! The core gateway (issue 2) end to end: the real binary in front of a test coordinator, in
//! dev-insecure mode. Auth has its own test files.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn dev_env(coord: &TestCoordinator) -> Vec<(&'static str, String)> {
    vec![
        ("JARVIS_RUN_COORDINATOR_URL", coord.url()),
        ("ARP_AUTH_PROFILE", "dev-insecure".to_string()),
    ]
}

fn start(coord: &TestCoordinator, extra_env: &[(&str, &str)], args: &[&str]) -> Gateway {
    let base = dev_env(coord);
    let mut env: Vec<(&str, &str)> = base.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.extend_from_slice(extra_env);
    Gateway::start(&env, args)
}

async fn json_of(resp: reqwest::Response) -> (u16, reqwest::header::HeaderMap, Value) {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.unwrap();
    let v = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&body)));
    (status, headers, v)
}

fn assert_envelope(v: &Value, code: &str) {
    let obj = v.as_object().expect("envelope is an object");
    assert_eq!(obj.len(), 1, "only `error` at top level: {v}");
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(v["error"]["message"].is_string(), "{v}");
    assert!(!v.to_string().contains("null"), "no nulls: {v}");
}

const VALID_RUN: &str =
    "{ \"root_node_type_ref\" : {\"version\":\"1\", \"node_type_id\":\"demo\"},\n  \"input\": {\"q\": \"hi\"} }";

// ---------------------------------------------------------------------------------------------
// Startup and configuration
// ---------------------------------------------------------------------------------------------

#[test]
fn missing_coordinator_is_a_one_line_startup_error() {
    let (status, out) = Gateway::run_to_exit(
        &[("ARP_AUTH_PROFILE", "dev-insecure")],
        &[],
        Duration::from_secs(20),
    );
    assert!(!status.success());
    let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {out}");
    assert!(lines[0].contains("JARVIS_RUN_COORDINATOR_URL"), "{out}");
    assert!(
        lines[0].contains("coordinators"),
        "names the YAML key: {out}"
    );
}

#[test]
fn invalid_values_name_their_variable() {
    for (k, v) in [
        ("JARVIS_RUN_COORDINATOR_URL", "not a url"),
        ("ARP_AUTH_PROFILE", "bogus"),
        ("ARP_AUTH_MODE", "sometimes"),
        ("ARP_AUTH_CLOCK_SKEW_SECONDS", "ten"),
    ] {
        let mut env = vec![("JARVIS_RUN_COORDINATOR_URL", "http://127.0.0.1:9")];
        env.retain(|(ek, _)| *ek != k);
        env.push((k, v));
        let (status, out) = Gateway::run_to_exit(&env, &[], Duration::from_secs(20));
        assert!(!status.success(), "{k}={v} must fail");
        assert!(out.contains(k), "{k}={v}: {out}");
    }
}

#[test]
fn check_flag_validates_yaml_and_exits() {
    let good = temp_config(
        "coordinators:\n  - url: http://127.0.0.1:9/v1/\nauth:\n  profile: dev-insecure\n",
    );
    let (status, out) = Gateway::run_to_exit(
        &[],
        &["--config", &good, "--check"],
        Duration::from_secs(20),
    );
    assert!(status.success(), "{out}");
    let bad = temp_config(
        "coordinators:\n  - url: http://127.0.0.1:9\nupstream:\n  balancing: fastest\n",
    );
    let (status, out) =
        Gateway::run_to_exit(&[], &["--config", &bad, "--check"], Duration::from_secs(20));
    assert!(!status.success());
    assert!(out.contains("upstream.balancing"), "{out}");
    let typo =
        temp_config("coordinators:\n  - url: http://127.0.0.1:9\nlimits:\n  max_bodyy_bytes: 3\n");
    let (status, out) = Gateway::run_to_exit(
        &[],
        &["--config", &typo, "--check"],
        Duration::from_secs(20),
    );
    assert!(!status.success());
    assert!(out.contains("max_bodyy_bytes"), "{out}");
}

#[tokio::test]
async fn yaml_file_configures_the_coordinator_and_env_wins() {
    let from_file = TestCoordinator::start();
    let from_env = TestCoordinator::start();
    let cfg = temp_config(&format!(
        "coordinators:\n  - url: {}/v1\nauth:\n  profile: dev-insecure\n",
        from_file.url()
    ));
    let gw = Gateway::start(&[], &["--config", &cfg]);
    let r = http_client()
        .get(format!("{}/v1/runs/abc", gw.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(from_file.forwarded().len(), 1);

    let gw2 = Gateway::start(
        &[("JARVIS_RUN_COORDINATOR_URL", &from_env.url())],
        &["--config", &cfg],
    );
    let r = http_client()
        .get(format!("{}/v1/runs/abc", gw2.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(from_env.forwarded().len(), 1, "env var wins over the file");
    assert_eq!(from_file.forwarded().len(), 1);
}

#[test]
fn dotenv_local_is_loaded_from_the_working_directory() {
    let coord = TestCoordinator::start();
    // The harness gives each child an empty directory of its own; this test needs a directory
    // holding a .env.local, so it runs the binary itself.
    let dir = std::env::temp_dir().join(format!("rungateway-dotenv-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(".env.local"),
        format!(
            "JARVIS_RUN_COORDINATOR_URL={}\nARP_AUTH_PROFILE=dev-insecure\n",
            coord.url()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_arp-jarvis-rungateway"))
        .arg("--check")
        .current_dir(&dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_file(dir.join(".env.local")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_arp-jarvis-rungateway"))
        .arg("--check")
        .current_dir(&dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "without .env.local there is no coordinator"
    );
}

// ---------------------------------------------------------------------------------------------
// Routes
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_four_run_operations_are_forwarded_unchanged() {
    let coord = TestCoordinator::start();
    let gw = start(&coord, &[], &[]);
    let c = http_client();

    let r = c
        .post(format!("{}/v1/runs?trace=1&x=%20y", gw.url()))
        .header("content-type", "application/json")
        .body(VALID_RUN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let got = coord.forwarded().last().cloned().unwrap();
    assert_eq!(got.method, "POST");
    assert_eq!(got.path, "/v1/runs?trace=1&x=%20y");
    assert_eq!(&got.body[..], VALID_RUN.as_bytes(), "byte for byte");

    for (method, path) in [
        ("GET", "/v1/runs/run-1"),
        ("POST", "/v1/runs/run-1:cancel"),
        ("GET", "/v1/runs/run-1/events"),
        ("GET", "/v1/runs/a%20b?x=1"),
    ] {
        let r = c
            .request(method.parse().unwrap(), format!("{}{}", gw.url(), path))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{method} {path}");
        let _ = r.bytes().await.unwrap();
        let got = coord.forwarded().last().cloned().unwrap();
        assert_eq!((got.method.as_str(), got.path.as_str()), (method, path));
    }
}

#[tokio::test]
async fn unknown_paths_and_methods_get_envelopes_and_are_never_forwarded() {
    let coord = TestCoordinator::start();
    let gw = start(&coord, &[], &[]);
    let c = http_client();
    for (method, path, status, code) in [
        ("GET", "/", 404, "not_found"),
        ("GET", "/v1/node-runs/n1", 404, "not_found"),
        ("POST", "/v1/node-runs/n1:complete", 404, "not_found"),
        ("GET", "/v1/runs/r1/node-runs", 404, "not_found"),
        ("GET", "/v1/runs/", 404, "not_found"),
        ("DELETE", "/v1/runs/r1", 405, "method_not_allowed"),
        ("GET", "/v1/runs", 405, "method_not_allowed"),
        ("PUT", "/v1/runs/r1:cancel", 405, "method_not_allowed"),
        ("POST", "/v1/health", 405, "method_not_allowed"),
    ] {
        let r = c
            .request(method.parse().unwrap(), format!("{}{}", gw.url(), path))
            .send()
            .await
            .unwrap();
        let (s, headers, v) = json_of(r).await;
        assert_eq!(s, status, "{method} {path}");
        assert_envelope(&v, code);
        assert_eq!(headers["content-type"], "application/json");
        if status == 405 {
            assert!(headers.contains_key("allow"), "{method} {path}");
        }
    }
    assert!(
        coord.forwarded().is_empty(),
        "nothing forwarded: {:?}",
        coord.forwarded()
    );
}

#[test]
fn encoded_slashes_and_dot_segments_never_reach_another_path() {
    let coord = TestCoordinator::start();
    let gw = start(&coord, &[], &[]);
    for target in [
        "/v1/runs/a%2F..%2F..%2Fnode-runs%2Fx",
        "/v1/runs/%2e%2e/events",
        "/v1/runs/..%2Fnode-runs",
        "/v1/runs/%2E%2E%2Fv1%2Fnode-runs",
        "/v1/runs/x%252F..",
        "/v1/runs/../node-runs/x",
        "/v1/runs/./x",
        "/v1/../v1/node-runs/x",
    ] {
        let req = format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let resp = raw_request(gw.port(), req.as_bytes());
        let status = raw_status(&resp);
        assert!(status == 404 || status == 400, "{target}: {status}");
    }
    assert!(coord.forwarded().is_empty(), "{:?}", coord.forwarded());
}

// ---------------------------------------------------------------------------------------------
// Start run: validation and byte-for-byte forwarding
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn invalid_or_malformed_bodies_get_400_and_are_not_forwarded() {
    let coord = TestCoordinator::start();
    let gw = start(&coord, &[], &[]);
    for body in [
        "{}",
        "{\"input\": {}}",
        "{\"root_node_type_ref\": {\"node_type_id\": \"a\", \"version\": \"1\"}, \"input\": \"x\"}",
        "{\"root_node_type_ref\": {\"node_type_id\": \"a\", \"version\": \"1\"}, \"input\": {}, \"bogus\": 1}",
        "{\"root_node_type_ref\": {\"node_type_id\": \"a\"}, \"input\": {}}",
        "not json",
        "{\"input\": {}",
        "",
        "[]",
    ] {
        let r = http_client()
            .post(format!("{}/v1/runs", gw.url()))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let (status, _, v) = json_of(r).await;
        assert_eq!(status, 400, "{body:?}: {v}");
        assert_envelope(&v, "invalid_request");
        assert_eq!(v["error"]["message"], "Request validation failed");
        let errors = v["error"]["details"]["errors"].as_array().expect("details.errors");
        assert!(!errors.is_empty(), "{body:?}");
    }
    assert!(coord.forwarded().is_empty());
}

#[tokio::test]
async fn oversized_body_gets_413_and_limit_is_configurable() {
    let coord = TestCoordinator::start();
    let cfg = temp_config("limits:\n  max_body_bytes: 2048\n");
    let gw = start(&coord, &[], &["--config", &cfg]);
    let big = format!(
        "{{\"root_node_type_ref\": {{\"node_type_id\": \"a\", \"version\": \"1\"}}, \"input\": {{\"x\": \"{}\"}}}}",
        "a".repeat(4096)
    );
    let r = http_client()
        .post(format!("{}/v1/runs", gw.url()))
        .header("content-type", "application/json")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    let (status, _, v) = json_of(r).await;
    assert_eq!(status, 413);
    assert_envelope(&v, "payload_too_large");

    // Chunked (no Content-Length): the limit is enforced while reading.
    let mut raw = b"POST /v1/runs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for chunk in big.as_bytes().chunks(512) {
        raw.extend_from_slice(format!("{:X}\r\n", chunk.len()).as_bytes());
        raw.extend_from_slice(chunk);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let port = gw.port();
    let resp = tokio::task::spawn_blocking(move || raw_request(port, &raw))
        .await
        .unwrap();
    assert_eq!(raw_status(&resp), 413);
    assert!(coord.forwarded().is_empty());
}

#[tokio::test]
async fn valid_bodies_above_64_kib_are_forwarded_byte_for_byte() {
    let coord = TestCoordinator::start();
    let gw = start(&coord, &[], &[]);
    for size in [60 * 1024, 64 * 1024 + 1, 300 * 1024, 1000 * 1024] {
        let filler = "x".repeat(size);
        let body = format!(
            "{{\"root_node_type_ref\":{{\"node_type_id\":\"a\",\"version\":\"1\"}},\"input\":{{\"blob\":\"{filler}\"}}}}"
        );
        coord.clear();
        let r = http_client()
            .post(format!("{}/v1/runs", gw.url()))
            .header("content-type", "application/json")
            .header("x-request-id", format!("big-{size}"))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        assert_eq!(r.headers()["x-request-id"], format!("big-{size}").as_str());
        let v: Value = r.json().await.unwrap();
        assert_eq!(status, 200, "{size}: {v}");
        assert_eq!(v["state"], "running");
        let reqs = coord.forwarded();
        assert_eq!(reqs.len(), 1, "exactly once ({size})");
        assert_eq!(reqs[0].body.len(), body.len(), "{size}");
        assert!(
            reqs[0].body[..] == *body.as_bytes(),
            "byte for byte ({size})"
        );
        assert_eq!(
            reqs[0].header("x-request-id"),
            Some(format!("big-{size}").as_str())
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Headers
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn forwarding_headers_request_id_and_no_client_authorization() {
    let coord = TestCoordinator::start();
    let gw = start(&coord, &[], &[]);
    let r = http_client()
        .get(format!("{}/v1/runs/r1", gw.url()))
        .header("authorization", "Bearer client-secret-token")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "must not pass")
        .header("proxy-authorization", "Basic abc")
        .header("x-custom", "kept")
        .header("x-request-id", "req-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "req-123");
    let got = coord.forwarded().last().cloned().unwrap();
    assert_eq!(got.header("authorization"), None);
    assert_eq!(got.header("x-hop"), None);
    assert_eq!(got.header("proxy-authorization"), None);
    assert_eq!(got.header("x-custom"), Some("kept"));
    assert_eq!(got.header("x-request-id"), Some("req-123"));
    assert_eq!(got.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(got.header("x-forwarded-proto"), Some("http"));

    // No id from the client: one is generated, returned, and sent upstream.
    let r = http_client()
        .get(format!("{}/v1/runs/r2", gw.url()))
        .send()
        .await
        .unwrap();
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(id.len() >= 16);
    assert_eq!(
        coord
            .forwarded()
            .last()
            .cloned()
            .unwrap()
            .header("x-request-id"),
        Some(id.as_str())
    );
    // Errors the gateway writes itself carry it too.
    let r = http_client()
        .get(format!("{}/nope", gw.url()))
        .send()
        .await
        .unwrap();
    assert!(r.headers().contains_key("x-request-id"));
}

// ---------------------------------------------------------------------------------------------
// Coordinator answers and failures
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn coordinator_errors_pass_through_unchanged() {
    let coord = TestCoordinator::start();
    let gw = start(&coord, &[], &[]);
    let envelope = json!({"error": {"code": "run_not_found", "message": "no such run", "details": {"run_id": "zz"}}});
    coord.set_fail(Some((404, envelope.clone())));
    let r = http_client()
        .get(format!("{}/v1/runs/zz", gw.url()))
        .send()
        .await
        .unwrap();
    let (status, _, v) = json_of(r).await;
    assert_eq!(status, 404);
    assert_eq!(v, envelope);
    coord.set_fail(Some((
        409,
        json!({"error": {"code": "conflict", "message": "m"}}),
    )));
    let r = http_client()
        .post(format!("{}/v1/runs/zz:cancel", gw.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
}

#[tokio::test]
async fn dead_coordinator_gives_502_and_slow_one_504() {
    let coord = TestCoordinator::start();
    let cfg = temp_config("upstream:\n  first_byte_timeout_ms: 500\n");
    let gw = start(&coord, &[], &["--config", &cfg]);

    coord.set_delay(Duration::from_secs(3));
    let t = Instant::now();
    let r = http_client()
        .get(format!("{}/v1/runs/r1", gw.url()))
        .send()
        .await
        .unwrap();
    let (status, _, v) = json_of(r).await;
    assert_eq!(status, 504, "{v}");
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "answered at the timeout, not after the coordinator"
    );
    assert_envelope(&v, "run_coordinator_timeout");
    assert_eq!(v["error"]["retryable"], true);

    coord.set_delay(Duration::ZERO);
    coord.stop();
    for (method, path) in [("GET", "/v1/runs/r1"), ("POST", "/v1/runs/r1:cancel")] {
        let r = http_client()
            .request(method.parse().unwrap(), format!("{}{}", gw.url(), path))
            .send()
            .await
            .unwrap();
        let (status, _, v) = json_of(r).await;
        assert_eq!(status, 502, "{v}");
        assert_envelope(&v, "run_coordinator_unavailable");
        assert_eq!(v["error"]["retryable"], true);
        assert_eq!(v["error"]["details"]["run_coordinator_url"], coord.url());
    }
    let r = http_client()
        .post(format!("{}/v1/runs", gw.url()))
        .header("content-type", "application/json")
        .body(VALID_RUN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);

    coord.restart();
    let r = http_client()
        .get(format!("{}/v1/runs/r1", gw.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "recovers once the coordinator is back");
}

// ---------------------------------------------------------------------------------------------
// Event streams
// ---------------------------------------------------------------------------------------------

async fn assert_streams_line_by_line(gw: &Gateway) {
    let t0 = Instant::now();
    let r = http_client()
        .get(format!("{}/v1/runs/r1/events", gw.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    assert!(r.headers().get("content-length").is_none());
    assert_eq!(r.headers()["x-accel-buffering"], "no");
    assert_eq!(r.headers()["cache-control"], "no-cache");
    let lines = read_stream_lines(r).await;
    assert_eq!(lines.len(), 5, "{lines:?}");
    for (_, l) in &lines {
        let v: Value = serde_json::from_str(l).expect("each line is one JSON event");
        assert_eq!(v["run_id"], "r1");
    }
    let first = lines[0].0 - t0;
    let last = lines[4].0 - t0;
    // The coordinator sends line k at ~300k ms: the first must arrive long before the last is sent.
    assert!(
        first < Duration::from_millis(900),
        "first line at {first:?}"
    );
    assert!(last >= Duration::from_millis(1100), "last line at {last:?}");
    for w in lines.windows(2) {
        let gap = w[1].0 - w[0].0;
        assert!(
            gap >= Duration::from_millis(150),
            "lines arrive spread out: {gap:?}"
        );
    }
}

#[tokio::test]
async fn event_stream_is_relayed_line_by_line() {
    let coord = TestCoordinator::start();
    coord.set_events(5, Duration::from_millis(300));
    let gw = start(&coord, &[], &[]);
    assert_streams_line_by_line(&gw).await;
    // The same when the coordinator frames its stream with Content-Length.
    coord.set_content_length_events(true);
    assert_streams_line_by_line(&gw).await;
}

#[tokio::test]
async fn hundred_concurrent_streams_complete() {
    let coord = TestCoordinator::start();
    coord.set_events(10, Duration::from_millis(50));
    let gw = start(&coord, &[], &[]);
    let url = gw.url();
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let url = url.clone();
            tokio::spawn(async move {
                let r = http_client()
                    .get(format!("{url}/v1/runs/run-{i}/events"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                read_stream_lines(r).await.len()
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 10);
    }
}

#[tokio::test]
async fn client_disconnect_closes_the_upstream_stream() {
    let coord = TestCoordinator::start();
    coord.set_events(1000, Duration::from_millis(100));
    let gw = start(&coord, &[], &[]);
    let mut r = http_client()
        .get(format!("{}/v1/runs/r1/events", gw.url()))
        .send()
        .await
        .unwrap();
    let first = r.chunk().await.unwrap();
    assert!(first.is_some());
    assert_eq!(coord.open_streams(), 1);
    drop(r);
    assert!(
        wait_until_async(Duration::from_secs(5), || coord.open_streams() == 0).await,
        "upstream stream still open after the client left"
    );
}

#[tokio::test]
async fn json_string_events_are_repaired_to_ndjson() {
    let coord = TestCoordinator::start();
    coord.set_events(3, Duration::ZERO);
    coord.set_json_string_events(true);
    let gw = start(&coord, &[], &[]);
    let r = http_client()
        .get(format!("{}/v1/runs/r9/events", gw.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    let lines = read_stream_lines(r).await;
    assert_eq!(lines.len(), 3, "{lines:?}");
    for (_, l) in lines {
        let v: Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["run_id"], "r9");
    }
    // Switched off: relayed as the coordinator sent it.
    let cfg = temp_config("events:\n  repair_json_string_body: false\n");
    let gw2 = start(&coord, &[], &["--config", &cfg]);
    let r = http_client()
        .get(format!("{}/v1/runs/r9/events", gw2.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "application/json");
    let v: Value = r.json().await.unwrap();
    assert!(v.is_string());
}

// ---------------------------------------------------------------------------------------------
// Health and version
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn version_and_health_are_answered_locally() {
    let coord = TestCoordinator::start();
    let gw = start(&coord, &[], &[]);
    let r = http_client()
        .get(format!("{}/v1/version", gw.url()))
        .send()
        .await
        .unwrap();
    let (status, _, v) = json_of(r).await;
    assert_eq!(status, 200);
    assert_eq!(v["service_name"], "arp-jarvis-rungateway");
    assert_eq!(v["supported_api_versions"], json!(["v1"]));
    assert!(v["build"]["commit"].is_string() || v["build"].get("commit").is_none());
    assert!(v["build"]["built_at"].is_string());

    coord.set_health("ok");
    let r = http_client()
        .get(format!("{}/v1/health", gw.url()))
        .send()
        .await
        .unwrap();
    let (status, _, v) = json_of(r).await;
    assert_eq!(status, 200);
    assert_eq!(v["status"], "ok", "{v}");
    assert!(v["time"].as_str().unwrap().ends_with('Z'));
    let check = &v["checks"][0];
    assert_eq!(check["name"], "run_coordinator");
    assert_eq!(check["details"]["url"], coord.url());
    assert!(!v.to_string().contains("null"));

    coord.set_health("degraded");
    let r = http_client()
        .get(format!("{}/v1/health", gw.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(json_of(r).await.2["status"], "degraded");

    coord.stop();
    let r = http_client()
        .get(format!("{}/v1/health", gw.url()))
        .send()
        .await
        .unwrap();
    let (status, _, v) = json_of(r).await;
    assert_eq!(status, 200);
    assert_eq!(v["status"], "degraded");
    assert_eq!(v["checks"][0]["status"], "down");
    assert!(v["checks"][0]["message"].is_string());
    // Health and version never reach the coordinator's run routes.
    assert!(coord.requests().iter().all(|r| r.path == "/v1/health"));
}
