//! Limits at the edge (issue 7): request head size, concurrent requests, and the headers that
//! keep proxies further along from buffering event streams.

mod common;

use common::*;
use serde_json::Value;
use std::time::{Duration, Instant};

fn start(coord: &TestCoordinator, yaml: &str) -> Gateway {
    start_dev_gateway(&coord.url(), yaml)
}

#[tokio::test]
async fn request_heads_over_the_limit_get_431_and_large_ones_under_it_pass() {
    let coord = TestCoordinator::start();
    let gw = start(&coord, "");
    let r = http_client()
        .get(format!("{}/v1/runs/r1", gw.url()))
        .header("x-big", "a".repeat(24 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "24 KiB of headers is under the 32 KiB default"
    );
    let r = http_client()
        .get(format!("{}/v1/runs/r1", gw.url()))
        .header("x-big", "a".repeat(40 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "request_header_fields_too_large");
    assert_eq!(
        coord
            .requests()
            .iter()
            .filter(|r| r.path == "/v1/runs/r1")
            .count(),
        1
    );
}

#[tokio::test]
async fn requests_beyond_the_concurrency_limit_are_refused_quickly() {
    let coord = TestCoordinator::start();
    coord.set_events(100, Duration::from_millis(100));
    let gw = start(&coord, "limits:\n  max_connections: 2\n");
    let mut held = Vec::new();
    for i in 0..2 {
        let mut r = http_client()
            .get(format!("{}/v1/runs/hold-{i}/events", gw.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.chunk().await.unwrap().is_some());
        held.push(r);
    }
    let t = Instant::now();
    let r = http_client()
        .get(format!("{}/v1/runs/r1", gw.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "overloaded");
    assert_eq!(v["error"]["retryable"], true);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "refused at once, not after the streams (10 s)"
    );
    drop(held);
    let mut ok = false;
    for _ in 0..50 {
        let r = http_client()
            .get(format!("{}/v1/runs/r1", gw.url()))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "served again once the streams ended");
}

#[tokio::test]
async fn every_events_answer_tells_proxies_not_to_buffer() {
    let coord = TestCoordinator::start();
    let gw = start(&coord, "");
    coord.set_fail(Some((
        404,
        serde_json::json!({"error": {"code": "run_not_found", "message": "m"}}),
    )));
    let r = http_client()
        .get(format!("{}/v1/runs/zz/events", gw.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["x-accel-buffering"], "no");
    assert_eq!(r.headers()["cache-control"], "no-cache");
    coord.set_fail(None);
    let r = http_client()
        .get(format!("{}/v1/runs/zz/events", gw.url()))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers().get("content-encoding").is_none(),
        "never compressed"
    );
    let got = coord
        .requests()
        .into_iter()
        .rfind(|r| r.path == "/v1/runs/zz/events")
        .unwrap();
    assert_eq!(got.header("accept-encoding"), Some("identity"));
}
