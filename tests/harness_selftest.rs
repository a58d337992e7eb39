//! Tests of the test harness itself, against the `TestCoordinator` directly (no gateway), so
//! that a gateway test failure can be trusted to be about the gateway.

mod common;

use std::net::{Ipv4Addr, TcpStream};
use std::time::{Duration, Instant};

use common::{
    http_client, raw_request, raw_status, read_stream_lines, try_read_stream_lines,
    wait_until_async, TestCoordinator,
};
use serde_json::{json, Value};

// ----- schema shape checks (mirroring spec/v1/schemas; keep in step with them) -----

const RUN_REQUIRED: &[&str] = &["run_id", "state", "root_node_run_id"];
const RUN_ALLOWED: &[&str] = &[
    "run_id",
    "state",
    "root_node_run_id",
    "run_context",
    "started_at",
    "ended_at",
    "extensions",
];
const RUN_STATES: &[&str] = &["queued", "running", "succeeded", "failed", "canceled"];
const EVENT_REQUIRED: &[&str] = &["run_id", "seq", "type", "time"];
const EVENT_ALLOWED: &[&str] = &[
    "run_id",
    "node_run_id",
    "seq",
    "type",
    "time",
    "data",
    "extensions",
];
const EVENT_TYPES: &[&str] = &[
    "run_started",
    "node_run_assigned",
    "composite_decomposed",
    "candidate_set_generated",
    "subtask_mapped",
    "atomic_executed",
    "node_evaluated",
    "recovery_applied",
    "policy_decided",
    "run_completed",
];

fn assert_no_nulls(value: &Value) {
    match value {
        Value::Null => panic!("null in canned body"),
        Value::Array(items) => items.iter().for_each(assert_no_nulls),
        Value::Object(map) => map.values().for_each(assert_no_nulls),
        _ => {}
    }
}

fn assert_object_shape(value: &Value, required: &[&str], allowed: &[&str]) {
    let obj = value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"));
    for key in required {
        assert!(obj.contains_key(*key), "missing {key:?} in {value}");
    }
    for key in obj.keys() {
        assert!(
            allowed.contains(&key.as_str()),
            "unexpected {key:?} in {value}"
        );
    }
    assert_no_nulls(value);
}

fn assert_time(value: &Value, key: &str) {
    let text = value[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} not a string"));
    humantime::parse_rfc3339(text).unwrap_or_else(|e| panic!("{key}={text:?}: {e}"));
}

fn assert_run(run: &Value, run_id: &str, state: &str) {
    assert_object_shape(run, RUN_REQUIRED, RUN_ALLOWED);
    assert_eq!(run["run_id"], run_id);
    assert_eq!(run["state"], state);
    assert!(RUN_STATES.contains(&state));
    assert!(run["root_node_run_id"].is_string());
    assert_time(run, "started_at");
}

fn assert_event(line: &str, run_id: &str, seq: usize) {
    let event: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
    assert_object_shape(&event, EVENT_REQUIRED, EVENT_ALLOWED);
    assert_eq!(event["run_id"], run_id);
    assert_eq!(event["seq"], seq);
    let kind = event["type"].as_str().expect("type is a string");
    assert!(EVENT_TYPES.contains(&kind), "bad event type {kind}");
    assert_time(&event, "time");
}

// ----- helpers -----

async fn get(url: String) -> reqwest::Response {
    http_client().get(url).send().await.expect("GET")
}

async fn get_json(url: String) -> (u16, Value) {
    let resp = get(url).await;
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("JSON body"))
}

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().expect("ASCII header").to_string())
}

/// Open an events stream and wait until its first bytes arrived, i.e. it is really in flight.
async fn open_stream(coord: &TestCoordinator) -> reqwest::Response {
    let mut resp = get(format!("{}/v1/runs/r1/events", coord.url())).await;
    let first = resp.chunk().await.expect("first chunk");
    assert!(first.is_some_and(|c| !c.is_empty()), "stream ended at once");
    resp
}

// ----- tests -----

#[tokio::test]
async fn events_stream_lines_arrive_spread_in_time() {
    let coord = TestCoordinator::start();
    coord.set_events(5, Duration::from_millis(100));

    let resp = get(format!("{}/v1/runs/run-7/events", coord.url())).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(&resp, "content-type").as_deref(),
        Some("application/x-ndjson")
    );
    assert_eq!(header(&resp, "content-length"), None);
    assert_eq!(
        header(&resp, "transfer-encoding").as_deref(),
        Some("chunked")
    );
    let lines = read_stream_lines(resp).await;

    assert_eq!(lines.len(), 5, "{lines:?}");
    for (seq, (_, line)) in lines.iter().enumerate() {
        assert_event(line, "run-7", seq);
    }
    // Four 100 ms pauses: a buffered (all-at-once) body would show ~0 everywhere. One gap may
    // shrink if this test's runtime stalls and two lines land in one read.
    let span = lines[4].0 - lines[0].0;
    assert!(span >= Duration::from_millis(300), "span {span:?}");
    let spaced = lines
        .windows(2)
        .filter(|w| w[1].0 - w[0].0 >= Duration::from_millis(50))
        .count();
    assert!(spaced >= 3, "only {spaced} spaced gaps");
    assert_eq!(coord.open_streams(), 0, "finished stream still counted");
}

#[tokio::test]
async fn content_length_events_are_sized_and_still_paced() {
    let coord = TestCoordinator::start();
    coord.set_events(3, Duration::from_millis(100));
    coord.set_content_length_events(true);

    let resp = get(format!("{}/v1/runs/r1/events", coord.url())).await;
    assert_eq!(header(&resp, "transfer-encoding"), None);
    let length: usize = header(&resp, "content-length")
        .expect("content-length")
        .parse()
        .expect("numeric content-length");
    let lines = read_stream_lines(resp).await;

    let received: usize = lines.iter().map(|(_, l)| l.len() + 1).sum();
    assert_eq!(received, length);
    assert_eq!(lines.len(), 3);
    for (seq, (_, line)) in lines.iter().enumerate() {
        assert_event(line, "r1", seq);
    }
    assert!(lines[2].0 - lines[0].0 >= Duration::from_millis(150));
}

#[tokio::test]
async fn json_string_events_answer_one_json_string() {
    let coord = TestCoordinator::start();
    coord.set_json_string_events(true);

    let resp = get(format!("{}/v1/runs/r1/events", coord.url())).await;
    assert_eq!(
        header(&resp, "content-type").as_deref(),
        Some("application/json")
    );
    let body: Value = resp.json().await.expect("JSON");

    let text = body.as_str().expect("body is one JSON string");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3);
    for (seq, line) in lines.iter().enumerate() {
        assert_event(line, "r1", seq);
    }
}

#[tokio::test]
async fn stop_refuses_connections_and_restart_serves_same_port() {
    let coord = TestCoordinator::start();
    coord.set_health("degraded");
    let (status, _) = get_json(format!("{}/v1/health", coord.url())).await;
    assert_eq!(status, 200);

    coord.stop();
    let refused = TcpStream::connect((Ipv4Addr::LOCALHOST, coord.port()))
        .expect_err("connected to a stopped coordinator");
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    let err = http_client()
        .get(format!("{}/v1/health", coord.url()))
        .send()
        .await
        .expect_err("request to a stopped coordinator");
    assert!(err.is_connect(), "{err:?}");

    let port = coord.port();
    coord.restart();
    assert_eq!(coord.port(), port);
    let (status, health) = get_json(format!("{}/v1/health", coord.url())).await;
    assert_eq!(status, 200);
    assert_eq!(
        health["status"], "degraded",
        "behaviour lost across restart"
    );
    assert_time(&health, "time");
    assert_eq!(coord.requests().len(), 2, "records lost across restart");
}

#[tokio::test]
async fn stop_cuts_an_in_flight_stream() {
    let coord = TestCoordinator::start();
    coord.set_events(1000, Duration::from_millis(20));
    let resp = open_stream(&coord).await;
    assert_eq!(coord.open_streams(), 1);

    coord.stop();
    // stop() returns only after the server runtime, and with it the stream, is gone.
    assert_eq!(coord.open_streams(), 0);
    let (lines, error) = try_read_stream_lines(resp).await;
    assert!(
        error.is_some(),
        "cut stream ended cleanly after {} lines",
        lines.len()
    );
    assert!(lines.len() < 999);
}

#[tokio::test]
async fn client_disconnect_closes_the_stream() {
    let coord = TestCoordinator::start();
    coord.set_events(1000, Duration::from_millis(20));
    let resp = open_stream(&coord).await;
    assert_eq!(coord.open_streams(), 1);

    drop(resp);
    let closed = wait_until_async(Duration::from_secs(5), || coord.open_streams() == 0).await;
    assert!(closed, "stream still open after the client went away");
}

#[tokio::test]
async fn requests_are_recorded_raw_and_unknown_ones_leak() {
    let coord = TestCoordinator::start();
    let before = Instant::now();
    let raw = raw_request(
        coord.port(),
        b"GET /v1/runs/a%2F..%2Fnode-runs?x=%20y&z=.. HTTP/1.1\r\nHost: t\r\nX-Probe: 1\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(raw_status(&raw), 200);
    let recorded = coord.last_request().expect("recorded");
    assert_eq!(recorded.method, "GET");
    assert_eq!(recorded.path, "/v1/runs/a%2F..%2Fnode-runs?x=%20y&z=..");
    assert_eq!(recorded.header("x-probe"), Some("1"));
    assert!(recorded.at >= before && recorded.at <= Instant::now());
    // The encoded id is one segment: a Run for the decoded id, not a leak.
    let body = String::from_utf8_lossy(&raw);
    assert!(body.contains(r#""run_id":"a/../node-runs""#), "{body}");

    // A literal `..` path and an unknown method are not coordinator operations.
    let raw = raw_request(
        coord.port(),
        b"GET /v1/runs/../node-runs HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert!(String::from_utf8_lossy(&raw).ends_with(r#"{"leaked":true}"#));
    let resp = http_client()
        .delete(format!("{}/v1/runs/r1", coord.url()))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(
        resp.json::<Value>().await.expect("JSON"),
        json!({ "leaked": true })
    );

    let paths: Vec<String> = coord.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        [
            "/v1/runs/a%2F..%2Fnode-runs?x=%20y&z=..",
            "/v1/runs/../node-runs",
            "/v1/runs/r1"
        ]
    );
    coord.clear();
    assert!(coord.requests().is_empty());
}

#[tokio::test]
async fn run_routes_answer_schema_shaped_runs() {
    let coord = TestCoordinator::start();
    let client = http_client();
    let node_type = json!({ "node_type_id": "jarvis.root", "version": "1" });
    let start = json!({ "run_id": "run-x", "root_node_type_ref": node_type, "input": {} });

    let resp = client
        .post(format!("{}/v1/runs", coord.url()))
        .header("authorization", "Bearer t0k")
        .json(&start)
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status(), 200);
    let run: Value = resp.json().await.expect("JSON");
    assert_run(&run, "run-x", "running");
    assert_eq!(run["extensions"]["arp_test.root_node_type_ref"], node_type);
    let recorded = coord.last_request().expect("recorded");
    assert_eq!(
        (recorded.method.as_str(), recorded.path.as_str()),
        ("POST", "/v1/runs")
    );
    assert_eq!(recorded.header("authorization"), Some("Bearer t0k"));
    assert_eq!(recorded.json(), start);

    // Without a run_id the coordinator makes one up.
    let run: Value = client
        .post(format!("{}/v1/runs", coord.url()))
        .json(&json!({ "root_node_type_ref": node_type, "input": {} }))
        .send()
        .await
        .expect("POST")
        .json()
        .await
        .expect("JSON");
    assert_run(
        &run,
        run["run_id"].as_str().expect("generated run_id"),
        "running",
    );

    let (status, run) = get_json(format!("{}/v1/runs/run-x", coord.url())).await;
    assert_eq!(status, 200);
    assert_run(&run, "run-x", "running");
    let resp = client
        .post(format!("{}/v1/runs/run-x:cancel", coord.url()))
        .send()
        .await
        .expect("cancel");
    assert_run(&resp.json().await.expect("JSON"), "run-x", "canceled");

    let (_, version) = get_json(format!("{}/v1/version", coord.url())).await;
    assert_eq!(version["supported_api_versions"], json!(["v1"]));
}

#[tokio::test]
async fn fail_mode_answers_the_configured_status_on_run_routes_only() {
    let coord = TestCoordinator::start();
    let error = json!({ "error": { "code": "unavailable", "message": "down for test" } });
    coord.set_fail(Some((503, error.clone())));
    let client = http_client();
    let url = coord.url();
    let requests = [
        client.post(format!("{url}/v1/runs")).json(&json!({})),
        client.get(format!("{url}/v1/runs/r1")),
        client.post(format!("{url}/v1/runs/r1:cancel")),
        client.get(format!("{url}/v1/runs/r1/events")),
    ];
    for request in requests {
        let resp = request.send().await.expect("send");
        assert_eq!(resp.status(), 503, "{}", resp.url());
        assert_eq!(resp.json::<Value>().await.expect("JSON"), error);
    }
    let (status, _) = get_json(format!("{url}/v1/health")).await;
    assert_eq!(status, 200, "health must not fail");

    coord.set_fail(None);
    let (status, _) = get_json(format!("{url}/v1/runs/r1")).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn delay_records_first_and_answers_late() {
    let coord = TestCoordinator::start();
    coord.set_delay(Duration::from_millis(300));

    let sent = Instant::now();
    let (status, _) = get_json(format!("{}/v1/runs/r1", coord.url())).await;
    let answered = Instant::now();

    assert_eq!(status, 200);
    assert!(answered - sent >= Duration::from_millis(300));
    let arrived = coord.last_request().expect("recorded").at;
    assert!(
        arrived - sent < Duration::from_millis(300),
        "recorded only after the delay"
    );
}
