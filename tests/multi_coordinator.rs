//! Several coordinators (issue 4): balancing, health checks and ejection, retries that never
//! duplicate a POST, the all-down answer and run affinity with consistent hashing.

mod common;

use common::*;
use serde_json::Value;
use std::time::{Duration, Instant};

fn three() -> [TestCoordinator; 3] {
    [
        TestCoordinator::start(),
        TestCoordinator::start(),
        TestCoordinator::start(),
    ]
}

fn start(coords: &[TestCoordinator], extra_yaml: &str) -> Gateway {
    start_with_admin(coords, extra_yaml, free_port())
}

fn coordinator_up(admin: u16, url: &str) -> Option<bool> {
    let resp = raw_request(
        admin,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let text = String::from_utf8_lossy(&resp).into_owned();
    let needle = format!("arp_gateway_coordinator_up{{coordinator=\"{url}\"}} ");
    let line = text.lines().find(|l| l.starts_with(&needle))?;
    Some(line.ends_with(" 1"))
}

fn start_with_admin(coords: &[TestCoordinator], extra_yaml: &str, admin: u16) -> Gateway {
    let mut yaml = format!("admin:\n  listen: 127.0.0.1:{admin}\n");
    yaml.push_str(
        "auth:\n  profile: dev-insecure\nupstream:\n  first_byte_timeout_ms: 5000\n  health_check:\n    interval_ms: 200\n    timeout_ms: 200\n    failures_to_eject: 2\n    successes_to_restore: 1\n",
    );
    yaml.push_str(extra_yaml);
    yaml.push_str("coordinators:\n");
    for c in coords {
        yaml.push_str(&format!("  - url: {}\n", c.url()));
    }
    Gateway::start(&[], &["--config", &temp_config(&yaml)])
}

async fn get(gw: &Gateway, path: &str) -> u16 {
    http_client()
        .get(format!("{}{path}", gw.url()))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

async fn health(gw: &Gateway) -> Value {
    http_client()
        .get(format!("{}/v1/health", gw.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn requests_are_spread_over_all_coordinators() {
    let cs = three();
    let gw = start(&cs, "");
    for i in 0..30 {
        assert_eq!(get(&gw, &format!("/v1/runs/r{i}")).await, 200);
    }
    let counts: Vec<usize> = cs.iter().map(|c| c.forwarded().len()).collect();
    assert_eq!(counts.iter().sum::<usize>(), 30);
    for n in &counts {
        assert!(*n >= 5, "round robin spreads evenly: {counts:?}");
    }
    let v = health(&gw).await;
    assert_eq!(v["status"], "ok", "{v}");
    assert_eq!(v["checks"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn a_stopped_coordinator_costs_no_request_and_rejoins() {
    let cs = three();
    let admin = free_port();
    let gw = start_with_admin(&cs, "", admin);
    assert_eq!(coordinator_up(admin, &cs[1].url()), Some(true));
    cs[1].stop();
    let stopped = Instant::now();
    for i in 0..100 {
        assert_eq!(
            get(&gw, &format!("/v1/runs/r{i}")).await,
            200,
            "request {i}"
        );
    }
    let v = health(&gw).await;
    assert_eq!(v["status"], "degraded", "{v}");
    // Ejected within the window (2 failures x 200 ms); the bound is generous for a loaded
    // CI machine, the log of a failure says how long it took.
    let url1 = cs[1].url();
    let ejected = tokio::task::spawn_blocking(move || {
        wait_until(Duration::from_secs(10), || {
            coordinator_up(admin, &url1) == Some(false)
        })
    })
    .await
    .unwrap();
    assert!(
        ejected,
        "ejected within {:?} of stopping",
        stopped.elapsed()
    );
    let before = cs[0].forwarded().len() + cs[2].forwarded().len();
    for i in 0..30 {
        assert_eq!(get(&gw, &format!("/v1/runs/x{i}")).await, 200);
    }
    assert_eq!(
        cs[0].forwarded().len() + cs[2].forwarded().len(),
        before + 30
    );

    cs[1].restart();
    let url1 = cs[1].url();
    let restored = tokio::task::spawn_blocking(move || {
        wait_until(Duration::from_secs(10), || {
            coordinator_up(admin, &url1) == Some(true)
        })
    })
    .await
    .unwrap();
    assert!(restored, "health checks restored it");
    let mut rejoined = false;
    for i in 0..200 {
        assert_eq!(get(&gw, &format!("/v1/runs/y{i}")).await, 200);
        if !cs[1].forwarded().is_empty() {
            rejoined = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(rejoined, "the restarted coordinator gets traffic again");
}

#[tokio::test]
async fn a_post_whose_coordinator_dies_mid_request_is_not_replayed() {
    let cs = three();
    let gw = start(&cs, "");
    for c in &cs {
        c.set_delay(Duration::from_secs(3));
    }
    let url = gw.url();
    let post = tokio::spawn(async move {
        http_client()
            .post(format!("{url}/v1/runs"))
            .header("content-type", "application/json")
            .body(r#"{"root_node_type_ref":{"node_type_id":"a","version":"1"},"input":{}}"#)
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    });
    let got = |c: &TestCoordinator| c.forwarded().iter().filter(|r| r.method == "POST").count();
    assert!(
        wait_until_async(Duration::from_secs(5), || cs.iter().map(got).sum::<usize>()
            == 1)
        .await
    );
    let victim = cs.iter().position(|c| got(c) == 1).unwrap();
    cs[victim].stop();
    let status = post.await.unwrap();
    assert!(
        status == 502 || status == 504,
        "the client is told, not retried: {status}"
    );
    // Give a wrongful replay time to show up before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let total: usize = cs.iter().map(got).sum();
    assert_eq!(total, 1, "the POST reached exactly one coordinator");
}

#[tokio::test]
async fn an_idempotent_get_cut_before_its_answer_is_retried_elsewhere() {
    let cs = three();
    let gw = start(&cs, "");
    for c in &cs {
        c.set_delay(Duration::from_secs(2));
    }
    let url = gw.url();
    let get_task = tokio::spawn(async move {
        http_client()
            .get(format!("{url}/v1/runs/r1"))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    });
    assert!(
        wait_until_async(Duration::from_secs(5), || cs
            .iter()
            .map(|c| c.forwarded().len())
            .sum::<usize>()
            == 1)
        .await
    );
    let victim = cs.iter().position(|c| c.forwarded().len() == 1).unwrap();
    cs[victim].stop();
    assert_eq!(
        get_task.await.unwrap(),
        200,
        "retried on another coordinator"
    );
}

#[tokio::test]
async fn all_coordinators_down_gives_503_envelope() {
    let cs = three();
    let gw = start(&cs, "");
    for c in &cs {
        c.stop();
    }
    for path in ["/v1/runs/r1", "/v1/runs/r1/events"] {
        let r = http_client()
            .get(format!("{}{path}", gw.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503, "{path}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "run_coordinator_unavailable");
        assert_eq!(v["error"]["retryable"], true);
    }
    let r = http_client()
        .post(format!("{}/v1/runs", gw.url()))
        .header("content-type", "application/json")
        .body(r#"{"root_node_type_ref":{"node_type_id":"a","version":"1"},"input":{}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let v = health(&gw).await;
    assert_eq!(v["status"], "down", "{v}");
}

#[tokio::test]
async fn consistent_hash_keeps_a_run_on_one_coordinator() {
    let cs = three();
    let gw = start(&cs, "  balancing: consistent_hash\n");
    for i in 0..12 {
        let id = format!("run-{i}");
        for c in &cs {
            c.clear();
        }
        assert_eq!(get(&gw, &format!("/v1/runs/{id}")).await, 200);
        let r = http_client()
            .post(format!("{}/v1/runs/{id}:cancel", gw.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let r = http_client()
            .get(format!("{}/v1/runs/{id}/events", gw.url()))
            .send()
            .await
            .unwrap();
        let _ = r.bytes().await.unwrap();
        let hit: Vec<usize> = cs.iter().map(|c| c.forwarded().len()).collect();
        assert_eq!(hit.iter().filter(|n| **n > 0).count(), 1, "{id}: {hit:?}");
        assert_eq!(hit.iter().sum::<usize>(), 3);
    }
}

#[tokio::test]
async fn the_env_list_configures_several_coordinators() {
    let cs = three();
    let list = cs
        .iter()
        .map(|c| format!("{}/v1/", c.url()))
        .collect::<Vec<_>>()
        .join(",");
    let gw = Gateway::start(
        &[
            ("JARVIS_RUN_COORDINATOR_URL", &list),
            ("ARP_AUTH_PROFILE", "dev-insecure"),
        ],
        &[],
    );
    for i in 0..9 {
        assert_eq!(get(&gw, &format!("/v1/runs/r{i}")).await, 200);
    }
    assert!(cs.iter().all(|c| !c.forwarded().is_empty()));
}

#[tokio::test]
async fn an_unresolvable_coordinator_name_is_not_fatal() {
    let good = TestCoordinator::start();
    let list = format!("http://coordinator.invalid:8081,{}", good.url());
    let gw = Gateway::start(
        &[
            ("JARVIS_RUN_COORDINATOR_URL", &list),
            ("ARP_AUTH_PROFILE", "dev-insecure"),
        ],
        &[],
    );
    for i in 0..6 {
        assert_eq!(
            get(&gw, &format!("/v1/runs/r{i}")).await,
            200,
            "served by the one that resolves"
        );
    }
    let v = health(&gw).await;
    assert_eq!(v["status"], "degraded", "{v}");

    let alone = Gateway::start(
        &[
            (
                "JARVIS_RUN_COORDINATOR_URL",
                "http://coordinator.invalid:8081",
            ),
            ("ARP_AUTH_PROFILE", "dev-insecure"),
        ],
        &[],
    );
    let r = http_client()
        .get(format!("{}/v1/runs/r1", alone.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        503,
        "no address yet: a clear envelope, not a crash"
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "run_coordinator_unavailable");
}
