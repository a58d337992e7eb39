//! Limits at the edge (issue 7): request head size, head deadline, client connections, and the headers that
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

/// `GET /v1/runs/{run}/events` on a fresh connection; the answer, body unread.
async fn events(gw: &Gateway, run: &str) -> reqwest::Response {
    http_client()
        .get(format!("{}/v1/runs/{run}/events", gw.url()))
        .send()
        .await
        .unwrap()
}

/// GET `path` with `client` and read the whole answer; its status.
async fn get(client: &reqwest::Client, gw: &Gateway, path: &str) -> u16 {
    let r = client
        .get(format!("{}{path}", gw.url()))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    r.bytes().await.unwrap();
    status
}

/// A reqwest client that keeps its connection, so two requests share one socket.
fn keep_alive_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap()
}

#[tokio::test]
async fn connections_beyond_the_limit_are_refused_and_those_already_in_are_still_served() {
    let coord = TestCoordinator::start();
    coord.set_events(100, Duration::from_millis(100));
    let gw = start(&coord, "limits:\n  max_connections: 3\n");
    let mut held = Vec::new();
    for i in 0..2 {
        let mut r = events(&gw, &format!("hold-{i}")).await;
        assert_eq!(r.status(), 200);
        assert!(r.chunk().await.unwrap().is_some());
        held.push(r);
    }
    // The third connection is within the limit and stays open between its requests.
    let kept = keep_alive_client();
    assert_eq!(get(&kept, &gw, "/v1/runs/r1").await, 200);

    let r = http_client()
        .get(format!("{}/v1/runs/r1", gw.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(r.headers()["connection"], "close");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "overloaded");
    assert_eq!(v["error"]["retryable"], true);
    // Refused while the streams (10 s each) were still being relayed, not after them.
    for r in held.iter_mut() {
        assert!(r.chunk().await.unwrap().is_some(), "held stream still open");
    }
    // Going over the limit refuses the newest connection, not the ones already served.
    assert_eq!(get(&kept, &gw, "/v1/runs/r2").await, 200);
    assert_eq!(
        coord
            .requests()
            .iter()
            .filter(|r| r.path == "/v1/runs/r1")
            .count(),
        1,
        "the refused request never reached the coordinator"
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

/// Sends `prefix`, then one byte of a header every 200 ms, for at most `budget`. Returns how
/// many trickled bytes were written before the gateway closed the connection, or None if it was
/// still open when the budget ran out.
async fn trickle(port: u16, prefix: &[u8], budget: Duration) -> Option<usize> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(prefix).await.unwrap();
    let end = Instant::now() + budget;
    let mut sent = 0;
    let mut buf = vec![0u8; 4096];
    while Instant::now() < end {
        tokio::select! {
            r = s.read(&mut buf) => match r {
                Ok(0) | Err(_) => return Some(sent),
                Ok(_) => {} // the answer to a complete request in `prefix`
            },
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                if s.write_all(b"x").await.is_err() {
                    return Some(sent);
                }
                sent += 1;
            }
        }
    }
    None
}

#[tokio::test]
async fn a_client_trickling_its_request_head_is_dropped_and_others_are_served_meanwhile() {
    let coord = TestCoordinator::start();
    let gw = start(&coord, "limits:\n  header_read_timeout_seconds: 1\n");
    let port = gw.port();
    // Each read brings a byte, so a per-read timeout would never fire; the whole-head deadline
    // must. 10 s of trickling is ten times the configured deadline.
    let slow: Vec<_> = (0..20)
        .map(|_| {
            tokio::spawn(trickle(
                port,
                b"GET /v1/runs/r1 HTTP/1.1\r\nHost: a\r\nX-Slow: ",
                Duration::from_secs(10),
            ))
        })
        .collect();
    let r = http_client()
        .get(format!("{}/v1/runs/r2", gw.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "served while slow clients are connected");
    for h in slow {
        let sent = h.await.unwrap();
        assert!(sent.is_some(), "a slow-loris client was never dropped");
    }
    assert!(
        !coord.requests().iter().any(|r| r.path == "/v1/runs/r1"),
        "nothing of an incomplete head reached the coordinator"
    );
}

#[tokio::test]
async fn the_head_deadline_applies_to_later_requests_on_a_kept_alive_connection() {
    let coord = TestCoordinator::start();
    let gw = start(&coord, "limits:\n  header_read_timeout_seconds: 1\n");
    // A whole first request, then a second one trickled on the same connection.
    let sent = trickle(
        gw.port(),
        b"GET /v1/runs/r1 HTTP/1.1\r\nHost: a\r\n\r\nGET /v1/runs/r2 HTTP/1.1\r\nX-Slow: ",
        Duration::from_secs(10),
    )
    .await;
    assert!(sent.is_some(), "the second, trickled head was never cut");
    let paths: Vec<_> = coord.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, vec!["/v1/runs/r1".to_string()]);
}

/// Reads one Content-Length answer from `s`; its status.
async fn read_answer(s: &mut tokio::net::TcpStream) -> u16 {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).await.unwrap();
        assert!(
            n > 0,
            "connection closed; got {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap();
            if got.len() >= end + 4 + len {
                return raw_status(&got);
            }
        }
    }
}

#[tokio::test]
async fn a_connection_idle_between_requests_is_not_cut_by_the_head_deadline() {
    use tokio::io::AsyncWriteExt;
    let coord = TestCoordinator::start();
    let gw = start(&coord, "limits:\n  header_read_timeout_seconds: 1\n");
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", gw.port()))
        .await
        .unwrap();
    for path in ["r1", "r2"] {
        let req = format!("GET /v1/runs/{path} HTTP/1.1\r\nHost: a\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        assert_eq!(read_answer(&mut s).await, 200);
        // Longer than the head deadline: idle time between requests is keep-alive, not a head.
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
}

#[tokio::test]
async fn every_events_answer_tells_proxies_not_to_buffer() {
    let coord = TestCoordinator::start();
    let gw = start(&coord, "");
    coord.set_fail(Some((
        404,
        serde_json::json!({"error": {"code": "run_not_found", "message": "m"}}),
    )));
    let r = events(&gw, "zz").await;
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
    // Pingora closes the connection after a stream the coordinator cut; announced up front so
    // a client never sends its next request into it.
    assert_eq!(r.headers()["connection"], "close");
    let got = coord
        .requests()
        .into_iter()
        .rfind(|r| r.path == "/v1/runs/zz/events")
        .unwrap();
    assert_eq!(got.header("accept-encoding"), Some("identity"));
}

#[tokio::test]
async fn a_stream_silent_longer_than_the_idle_timeout_ends_cleanly_and_a_slow_but_live_one_does_not(
) {
    let coord = TestCoordinator::start();
    let gw = start(&coord, "upstream:\n  stream_idle_timeout_seconds: 1\n");
    // Events 400 ms apart: 4 s in all, longer than the idle timeout but never silent for 1 s.
    coord.set_events(10, Duration::from_millis(400));
    let r = events(&gw, "live").await;
    assert_eq!(r.status(), 200);
    let (lines, err) = try_read_stream_lines(r).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(lines.len(), 10, "no total time limit on a live stream");

    // Silent for 3 s after the first event: cut at the idle timeout, with a clean end of body.
    coord.set_events(3, Duration::from_secs(3));
    let r = events(&gw, "silent").await;
    assert_eq!(r.status(), 200);
    let (lines, err) = try_read_stream_lines(r).await;
    assert!(err.is_none(), "ended with a clean end of body: {err:?}");
    assert_eq!(lines.len(), 1, "cut during the first silence");
    assert!(
        wait_until_async(Duration::from_secs(5), || coord.open_streams() == 0).await,
        "the coordinator's stream was closed too"
    );
}

#[tokio::test]
async fn an_events_call_the_coordinator_does_not_answer_within_the_idle_timeout_is_a_504() {
    let coord = TestCoordinator::start();
    let gw = start(&coord, "upstream:\n  stream_idle_timeout_seconds: 1\n");
    coord.set_delay(Duration::from_secs(4));
    let r = events(&gw, "slow").await;
    assert_eq!(r.status(), 504);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "run_coordinator_timeout");
    assert_eq!(v["error"]["retryable"], true);
}
