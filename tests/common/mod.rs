//! Shared support for the integration tests: `mod common;` in each test file.
//!
//! - [`TestCoordinator`]: a recording, switchable fake Run Coordinator (in-process HTTP server).
//! - [`Gateway`]: the real gateway binary as a child process.
//! - Client helpers: a plain reqwest client, a raw-socket request for byte-exact request lines,
//!   and a line reader that timestamps each NDJSON line as it arrives.

// Each test binary compiles this module but uses only part of it (re-exports included).
#![allow(dead_code, unused_imports)]

pub mod coordinator;
pub mod gateway;
pub mod idp;

pub use coordinator::{Recorded, TestCoordinator};
pub use gateway::{free_port, Gateway};

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::time::{Duration, Instant};

const RAW_TIMEOUT: Duration = Duration::from_secs(5);

/// A reqwest client for talking to the gateway or the coordinator: no proxy from the
/// environment, and no idle connection reuse, so a stopped/restarted server is never hit through
/// a stale pooled connection and every request is a fresh connection the test can reason about.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .connect_timeout(Duration::from_secs(5))
        .build()
        .expect("build reqwest client")
}

/// Write `request` verbatim to `127.0.0.1:port` and return every byte of the response, read
/// until the peer closes or 5 s have passed in total. Client libraries normalise paths such as
/// `/v1/runs/a%2F..%2Fnode-runs`; this does not. Send `Connection: close` in the request, or
/// the read only ends at the timeout. Blocking: fine in sync tests; in a `#[tokio::test]` it
/// stalls that test's runtime for the duration (the coordinator and gateway are unaffected).
pub fn raw_request(port: u16, request: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
        .unwrap_or_else(|e| panic!("raw_request: connect to port {port}: {e}"));
    stream.write_all(request).expect("raw_request: write");
    let deadline = Instant::now() + RAW_TIMEOUT;
    let mut response = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        stream
            .set_read_timeout(Some(left))
            .expect("set_read_timeout");
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => response.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // A reset after the response still leaves what was read useful to the test.
            Err(_) => break,
        }
    }
    response
}

/// The status code of a raw HTTP/1.x response (`HTTP/1.1 404 Not Found` -> 404).
pub fn raw_status(response: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(response);
    text.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"))
}

/// Read a streaming response chunk by chunk and return each line (without `\n` / `\r\n`)
/// with the instant its final byte arrived. Trailing bytes without a newline are returned as a
/// last line at end of stream. Panics on a transport error; see [`try_read_stream_lines`].
pub async fn read_stream_lines(resp: reqwest::Response) -> Vec<(Instant, String)> {
    match try_read_stream_lines(resp).await {
        (lines, None) => lines,
        (lines, Some(e)) => panic!("stream failed after {} lines: {e}", lines.len()),
    }
}

/// Like [`read_stream_lines`], but a transport error (for example an upstream cut mid-stream)
/// ends the read and is returned alongside the lines that arrived before it.
pub async fn try_read_stream_lines(
    mut resp: reqwest::Response,
) -> (Vec<(Instant, String)>, Option<reqwest::Error>) {
    let mut lines = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    let error = loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                pending.extend_from_slice(&chunk);
                take_lines(&mut pending, Instant::now(), &mut lines);
            }
            Ok(None) => break None,
            Err(e) => break Some(e),
        }
    };
    if !pending.is_empty() {
        lines.push((
            Instant::now(),
            String::from_utf8_lossy(&pending).into_owned(),
        ));
    }
    (lines, error)
}

/// Move every complete line out of `pending` into `lines`, stamped with `at`.
fn take_lines(pending: &mut Vec<u8>, at: Instant, lines: &mut Vec<(Instant, String)>) {
    while let Some(end) = pending.iter().position(|&b| b == b'\n') {
        let line: Vec<u8> = pending.drain(..=end).collect();
        let line = line.strip_suffix(b"\n").unwrap_or(&line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        lines.push((at, String::from_utf8_lossy(line).into_owned()));
    }
}

/// Poll `condition` every 10 ms until it holds or `timeout` passes; returns the last result.
/// Blocking: use [`wait_until_async`] when the condition depends on the test's own runtime
/// (e.g. a reqwest connection that must be closed by it).
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// [`wait_until`] that yields to the async runtime between polls.
pub async fn wait_until_async(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Writes `yaml` to a fresh temporary file and returns its absolute path (gateways run in
/// their own working directory, so configuration paths must be absolute).
pub fn temp_config(yaml: &str) -> String {
    let dir = std::env::temp_dir().join(format!("rungateway-conf-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("create config dir");
    let path = dir.join("gateway.yaml");
    std::fs::write(&path, yaml).expect("write config");
    path.to_string_lossy().into_owned()
}

/// A dev-insecure gateway in front of `coordinator_url`, with `extra_yaml` appended to its
/// configuration file.
pub fn start_dev_gateway(coordinator_url: &str, extra_yaml: &str) -> Gateway {
    let cfg = temp_config(&format!("auth:\n  profile: dev-insecure\n{extra_yaml}"));
    Gateway::start(
        &[("JARVIS_RUN_COORDINATOR_URL", coordinator_url)],
        &["--config", &cfg],
    )
}
