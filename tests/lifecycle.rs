//! Process lifecycle against the real binary: admin probes and metrics, the drain on SIGTERM
//! (exit early when idle, after the last stream, or at the deadline with a clean end), and the
//! zero-downtime upgrade through Pingora's socket handover.

mod common;

use common::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn config(extra: &str) -> (String, u16) {
    let admin = free_port();
    let dir = std::env::temp_dir().join(format!("rungateway-life-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("upgrade.sock");
    let pid = dir.join("gw.pid");
    let yaml = format!(
        "auth:\n  profile: dev-insecure\nadmin:\n  listen: 127.0.0.1:{admin}\nserver:\n  upgrade_sock: {}\n  pid_file: {}\n{extra}",
        sock.display(),
        pid.display()
    );
    let path = dir.join("gateway.yaml");
    std::fs::write(&path, yaml).unwrap();
    (path.to_string_lossy().into_owned(), admin)
}

fn admin_get(port: u16, path: &str) -> (u16, String) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let resp = raw_request(port, req.as_bytes());
    let text = String::from_utf8_lossy(&resp).into_owned();
    (raw_status(&resp), text)
}

fn start(coord: &TestCoordinator, cfg: &str) -> Gateway {
    Gateway::start(
        &[("JARVIS_RUN_COORDINATOR_URL", &coord.url())],
        &["--config", cfg],
    )
}

#[tokio::test]
async fn probes_and_metrics_live_on_the_admin_listener_only() {
    let coord = TestCoordinator::start();
    let (cfg, admin) = config("");
    let gw = start(&coord, &cfg);
    assert_eq!(admin_get(admin, "/livez").0, 200);
    assert!(wait_until(Duration::from_secs(5), || admin_get(
        admin, "/readyz"
    )
    .0 == 200));

    // Traffic, then a scrape.
    let r = http_client()
        .get(format!("{}/v1/runs/r1", gw.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http_client()
        .get(format!("{}/v1/runs/r1/events", gw.url()))
        .send()
        .await
        .unwrap();
    let _ = r.bytes().await.unwrap();
    // Requests are counted when they finish, which can be a moment after the client has the
    // answer: wait for the counters, then check everything.
    let scraped = tokio::task::spawn_blocking(move || {
        wait_until(Duration::from_secs(5), || {
            admin_get(admin, "/metrics")
                .1
                .contains("operation=\"stream_run_events\",status=\"200\"")
        })
    })
    .await
    .unwrap();
    assert!(scraped);
    let (status, body) = admin_get(admin, "/metrics");
    assert_eq!(status, 200);
    for needle in [
        "arp_gateway_requests_total{operation=\"get_run\",status=\"200\"} 1",
        "arp_gateway_requests_total{operation=\"stream_run_events\",status=\"200\"} 1",
        "arp_gateway_upstream_response_seconds_count{operation=\"get_run\"} 1",
        "arp_gateway_active_streams 0",
        "arp_gateway_token_cache_hits_total",
        "arp_gateway_sts_calls_total",
        "arp_gateway_jwks_refreshes_total",
        &format!(
            "arp_gateway_coordinator_up{{coordinator=\"{}\"}} 1",
            coord.url()
        ),
    ] {
        assert!(body.contains(needle), "missing {needle}:\n{body}");
    }

    // The public port exposes only the spec's operations.
    for p in ["/livez", "/readyz", "/metrics"] {
        let r = http_client()
            .get(format!("{}{p}", gw.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{p}");
    }
    // Probes do not follow the coordinator.
    coord.stop();
    assert_eq!(admin_get(admin, "/readyz").0, 200);
}

#[test]
fn idle_gateway_exits_within_two_seconds_of_sigterm() {
    let coord = TestCoordinator::start();
    let (cfg, _) = config("  grace_period_seconds: 30\n");
    let mut gw = start(&coord, &cfg);
    let t = Instant::now();
    gw.signal("TERM");
    let status = gw.wait_exit(Duration::from_secs(10)).expect("exited");
    assert!(status.success(), "{status}");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn open_stream_finishes_then_the_process_exits() {
    let coord = TestCoordinator::start();
    coord.set_events(10, Duration::from_millis(200));
    let (cfg, admin) = config("  grace_period_seconds: 30\n");
    let mut gw = start(&coord, &cfg);
    assert!(wait_until(Duration::from_secs(5), || admin_get(
        admin, "/readyz"
    )
    .0 == 200));
    let mut r = http_client()
        .get(format!("{}/v1/runs/r1/events", gw.url()))
        .send()
        .await
        .unwrap();
    let first = r.chunk().await.unwrap().expect("first event");
    gw.signal("TERM");
    let unready = tokio::task::spawn_blocking(move || {
        wait_until(Duration::from_secs(2), || {
            admin_get(admin, "/readyz").0 == 503
        })
    })
    .await
    .unwrap();
    assert!(unready, "not ready once shutdown began");
    let (rest, err) = try_read_stream_lines(r).await;
    assert!(err.is_none(), "stream ended cleanly: {err:?}");
    let text = String::from_utf8_lossy(&first).to_string();
    let total = text.lines().count() + rest.len();
    assert_eq!(total, 10, "the whole stream arrived");
    let ended = Instant::now();
    let status = tokio::task::spawn_blocking(move || {
        let s = gw.wait_exit(Duration::from_secs(10));
        (s, gw)
    })
    .await
    .unwrap();
    assert!(status.0.expect("exited").success());
    assert!(
        ended.elapsed() < Duration::from_secs(2),
        "exited right after the stream"
    );
}

#[tokio::test]
async fn stream_longer_than_the_grace_period_ends_cleanly_at_the_deadline() {
    let coord = TestCoordinator::start();
    coord.set_events(1000, Duration::from_millis(100));
    let (cfg, _) = config("  grace_period_seconds: 2\n  graceful_shutdown_timeout_seconds: 2\n");
    let mut gw = start(&coord, &cfg);
    let mut r = http_client()
        .get(format!("{}/v1/runs/r1/events", gw.url()))
        .send()
        .await
        .unwrap();
    assert!(r.chunk().await.unwrap().is_some());
    let t = Instant::now();
    gw.signal("TERM");
    let (lines, err) = try_read_stream_lines(r).await;
    assert!(
        err.is_none(),
        "the client sees a clean end of the chunked body: {err:?}"
    );
    assert!(
        !lines.is_empty() && lines.len() < 900,
        "cut at the deadline: {}",
        lines.len()
    );
    let elapsed = t.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1800) && elapsed < Duration::from_secs(4),
        "ended at the deadline: {elapsed:?}"
    );
    let (status, gw) =
        tokio::task::spawn_blocking(move || (gw.wait_exit(Duration::from_secs(10)), gw))
            .await
            .unwrap();
    assert!(status.expect("exited").success());
    assert!(
        gw.logs().contains("ended 1 open stream(s)"),
        "{}",
        gw.logs()
    );
}

#[tokio::test]
async fn zero_downtime_upgrade_keeps_streams_and_requests() {
    let coord = TestCoordinator::start();
    coord.set_events(25, Duration::from_millis(200));
    let (cfg, _) = config("  grace_period_seconds: 30\n");
    let env = [("JARVIS_RUN_COORDINATOR_URL", coord.url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut old = Gateway::start(&env, &["--config", &cfg]);
    let url = old.url();
    let port = old.port();

    let stream = {
        let url = url.clone();
        tokio::spawn(async move {
            let r = http_client()
                .get(format!("{url}/v1/runs/long/events"))
                .send()
                .await
                .unwrap();
            try_read_stream_lines(r).await
        })
    };
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let looper = {
        let (url, stop, ok, failed) = (url.clone(), stop.clone(), ok.clone(), failed.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                // A fresh connection each time, so requests also land on the new process.
                let c = reqwest::Client::builder()
                    .no_proxy()
                    .pool_max_idle_per_host(0)
                    .build()
                    .unwrap();
                // Like any HTTP client, retry an idempotent GET once when the connection closed
                // before any answer: a connection the old process accepted in the very instant
                // it stops serving is closed unanswered (Pingora drops connections still waiting
                // for their request head at shutdown). Any answer, or a second failure, counts.
                let mut attempt = c.get(format!("{url}/v1/runs/r1")).send().await;
                if matches!(&attempt, Err(e) if e.is_request() || e.is_connect()) {
                    attempt = c.get(format!("{url}/v1/runs/r1")).send().await;
                }
                match attempt {
                    Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let port_s = port.to_string();
    let mut new = Gateway::spawn_on(port, &env, &["--config", &cfg, "-u", "--port", &port_s]);
    // Give the new process a moment to open the upgrade socket, then hand over.
    tokio::time::sleep(Duration::from_millis(500)).await;
    old.signal("QUIT");
    let (old_status, old) =
        tokio::task::spawn_blocking(move || (old.wait_exit(Duration::from_secs(20)), old))
            .await
            .unwrap();
    assert!(
        old_status.is_some(),
        "old process exited after its stream: {}",
        old.logs()
    );
    let (lines, err) = stream.await.unwrap();
    assert!(err.is_none(), "stream survived the upgrade: {err:?}");
    assert_eq!(lines.len(), 25, "stream complete");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    looper.await.unwrap();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no request failed; ok={}",
        ok.load(Ordering::Relaxed)
    );
    assert!(ok.load(Ordering::Relaxed) > 50);
    let r = http_client()
        .get(format!("{url}/v1/runs/after"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the new process serves: {}", new.logs());
    new.signal("TERM");
    assert!(new.wait_exit(Duration::from_secs(10)).is_some());
}
