//! What an operator sees around the proxying (issue 6): access log lines in text and JSON, and
//! W3C trace context.

mod common;

use common::*;
use serde_json::Value;
use std::time::Duration;

fn start(coord: &TestCoordinator, access_log: &str) -> Gateway {
    start_dev_gateway(
        &coord.url(),
        &format!(
            "logging:
  access_log: {access_log}
"
        ),
    )
}

fn access_lines(gw: &Gateway) -> Vec<String> {
    gw.logs()
        .lines()
        .filter(|l| l.contains(" access]"))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn one_json_access_line_per_request() {
    let coord = TestCoordinator::start();
    let gw = start(&coord, "json");
    let r = http_client()
        .get(format!("{}/v1/runs/r1", gw.url()))
        .header("x-request-id", "json-req-1")
        .header("authorization", "Bearer must-not-be-logged")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http_client()
        .get(format!("{}/nope", gw.url()))
        .header("x-request-id", "json-req-2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(wait_until_async(Duration::from_secs(5), || access_lines(&gw).len() >= 3).await);
    let lines = access_lines(&gw);
    let records: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(&l[l.find('{').unwrap()..]).expect("JSON access line"))
        .collect();
    let get = records
        .iter()
        .find(|v| v["request_id"] == "json-req-1")
        .expect("line for the GET");
    assert_eq!(get["operation"], "get_run");
    assert_eq!(get["status"], 200);
    assert_eq!(get["upstream"], coord.url());
    assert!(get["duration_ms"].is_number());
    assert!(get["bytes"].as_u64().unwrap() > 0);
    let nf = records
        .iter()
        .find(|v| v["request_id"] == "json-req-2")
        .expect("line for the 404");
    assert_eq!(nf["status"], 404);
    assert_eq!(
        records
            .iter()
            .filter(|v| v["request_id"] == "json-req-1")
            .count(),
        1
    );
    assert!(!gw.logs().contains("must-not-be-logged"));
}

#[tokio::test]
async fn text_access_lines_and_off() {
    let coord = TestCoordinator::start();
    let gw = start(&coord, "text");
    let r = http_client()
        .post(format!("{}/v1/runs/r7:cancel", gw.url()))
        .header("x-request-id", "text-req-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        wait_until_async(Duration::from_secs(5), || access_lines(&gw)
            .iter()
            .any(|l| l.contains("text-req-1")))
        .await
    );
    let line = access_lines(&gw)
        .into_iter()
        .find(|l| l.contains("text-req-1"))
        .unwrap();
    for part in [
        "cancel_run",
        "POST",
        "/v1/runs/r7:cancel",
        " 200 ",
        &format!("upstream={}", coord.url()),
    ] {
        assert!(line.contains(part), "{part} in {line}");
    }

    let quiet = start(&coord, "off");
    let r = http_client()
        .get(format!("{}/v1/runs/r1", quiet.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(access_lines(&quiet).is_empty());
}

#[tokio::test]
async fn traceparent_is_passed_through_or_created() {
    let coord = TestCoordinator::start();
    let gw = start(&coord, "off");
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = http_client()
        .get(format!("{}/v1/runs/r1", gw.url()))
        .header("traceparent", tp)
        .header("tracestate", "vendor=abc")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let got = coord
        .requests()
        .into_iter()
        .rfind(|r| r.path == "/v1/runs/r1")
        .unwrap();
    assert_eq!(got.header("traceparent"), Some(tp), "untouched");
    assert_eq!(got.header("tracestate"), Some("vendor=abc"));

    let r = http_client()
        .get(format!("{}/v1/runs/r2", gw.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let got = coord
        .requests()
        .into_iter()
        .rfind(|r| r.path == "/v1/runs/r2")
        .unwrap();
    let created = got.header("traceparent").expect("created when absent");
    let parts: Vec<&str> = created.split('-').collect();
    assert_eq!(parts.len(), 4);
    assert_eq!((parts[0], parts[1].len(), parts[2].len()), ("00", 32, 16));
    assert_ne!(parts[1], "0".repeat(32));
}
