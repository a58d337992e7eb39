//! Load: `wrk` (closed loop, as many requests as the server takes) and an open-loop client of
//! our own (fixed request rate; a request delayed by a slow answer counts its latency from when
//! it was due, so a stall cannot hide the requests it delayed: no coordinated omission).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::http1::Conn;
use crate::procs;

/// What one load run measured.
#[derive(Debug, Clone, Default)]
pub struct LoadResult {
    pub requests: u64,
    /// Requests answered 2xx/3xx.
    pub ok: u64,
    pub errors: u64,
    pub seconds: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub detail: String,
}

impl LoadResult {
    pub fn rps(&self) -> f64 {
        if self.seconds > 0.0 {
            self.ok as f64 / self.seconds
        } else {
            0.0
        }
    }
}

pub const WRK_SCRIPT: &str = r#"-- bench/run: optional token rotation, and a machine-readable summary.
local tokens = nil
local path = os.getenv("BENCH_TOKENS")
if path ~= nil and path ~= "" then
  tokens = {}
  for line in io.lines(path) do
    if #line > 0 then tokens[#tokens + 1] = "Bearer " .. line end
  end
  local i = 0
  request = function()
    i = i + 1
    wrk.headers["Authorization"] = tokens[(i % #tokens) + 1]
    return wrk.format()
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"p50":%d,"p99":%d,"p999":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
"#;

pub struct Wrk {
    pub bin: PathBuf,
    pub script: PathBuf,
    pub core: Option<usize>,
}

impl Wrk {
    /// `wrk -t1 -cC -dD` on `url`, with `headers`, rotating through `tokens` when given.
    pub fn run(
        &self,
        url: &str,
        connections: usize,
        duration: Duration,
        headers: &[(&str, String)],
        tokens: Option<&Path>,
    ) -> Result<LoadResult, String> {
        let mut cmd: Command = procs::command(&self.bin, self.core);
        cmd.arg("-t1")
            .arg(format!("-c{connections}"))
            // wrk takes whole seconds.
            .arg(format!("-d{}s", duration.as_secs_f64().ceil().max(1.0)))
            .arg("--timeout")
            .arg("5s")
            .arg("-s")
            .arg(&self.script);
        for (k, v) in headers {
            cmd.arg("-H").arg(format!("{k}: {v}"));
        }
        cmd.env(
            "BENCH_TOKENS",
            tokens.map(|p| p.as_os_str()).unwrap_or_default(),
        );
        cmd.arg(url);
        let out = cmd.output().map_err(|e| format!("wrk: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix("BENCH_JSON "))
            .ok_or_else(|| {
                format!(
                    "wrk gave no summary (exit {}): {}{}",
                    out.status,
                    stdout,
                    String::from_utf8_lossy(&out.stderr)
                )
            })?;
        let v: Value = serde_json::from_str(line).map_err(|e| format!("wrk summary: {e}"))?;
        let n = |k: &str| v[k].as_u64().unwrap_or(0);
        let socket_errors = n("connect") + n("read") + n("write") + n("timeout");
        let errors = socket_errors + n("status");
        let requests = n("requests");
        Ok(LoadResult {
            requests,
            ok: requests.saturating_sub(n("status")),
            errors,
            seconds: n("duration_us") as f64 / 1e6,
            p50_ms: n("p50") as f64 / 1000.0,
            p99_ms: n("p99") as f64 / 1000.0,
            p999_ms: n("p999") as f64 / 1000.0,
            detail: format!(
                "connect {} read {} write {} timeout {} non-2xx {}",
                n("connect"),
                n("read"),
                n("write"),
                n("timeout"),
                n("status")
            ),
        })
    }
}

pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Open loop: `rate` requests per second in total over `connections` keep-alive connections,
/// for `duration`. Latency runs to the complete answer from when the request was sent, or from
/// when it was due if the connection was still busy with the previous answer then.
pub fn open_loop(
    port: u16,
    path: &str,
    headers: &[(&str, String)],
    rate: f64,
    connections: usize,
    duration: Duration,
) -> LoadResult {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let req = std::sync::Arc::new(req.into_bytes());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let per_conn = Duration::from_secs_f64(connections as f64 / rate.max(1.0));
    rt.block_on(async move {
        let start = tokio::time::Instant::now() + Duration::from_millis(50);
        let end = start + duration;
        let mut tasks = Vec::new();
        for c in 0..connections {
            let req = req.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let (mut ok, mut errors) = (0u64, 0u64);
                let mut conn: Option<Conn> = None;
                // Spread the connections' schedules evenly over one interval.
                let mut due = start + per_conn.mul_f64(c as f64 / connections as f64);
                // When the previous answer came after this request was due, the request is
                // late because of the server: its latency counts from `due`. Otherwise it counts
                // from when it was sent (the timer's own millisecond slack is not the server's).
                let mut prev_done = start;
                while due < end {
                    tokio::time::sleep_until(due).await;
                    let from = if prev_done > due {
                        due
                    } else {
                        tokio::time::Instant::now()
                    };
                    if conn.is_none() {
                        conn = Conn::connect(port).await.ok();
                    }
                    let status = match conn.as_mut() {
                        Some(cn) => cn.roundtrip(&req).await.ok(),
                        None => None,
                    };
                    let done = tokio::time::Instant::now();
                    prev_done = done;
                    match status {
                        Some(s) if s < 400 => {
                            ok += 1;
                            lat.push(done.duration_since(from).as_micros() as u64);
                        }
                        Some(_) => errors += 1,
                        None => {
                            errors += 1;
                            conn = None;
                        }
                    }
                    due += per_conn;
                }
                (lat, ok, errors)
            }));
        }
        let mut all = Vec::new();
        let (mut ok, mut errors) = (0, 0);
        for t in tasks {
            if let Ok((l, o, e)) = t.await {
                all.extend(l);
                ok += o;
                errors += e;
            }
        }
        all.sort_unstable();
        let p = |q| percentile(&all, q) as f64 / 1000.0;
        LoadResult {
            requests: ok + errors,
            ok,
            errors,
            seconds: duration.as_secs_f64(),
            p50_ms: p(50.0),
            p99_ms: p(99.0),
            p999_ms: p(99.9),
            detail: format!("open loop at {rate:.0} req/s over {connections} connections"),
        }
    })
}
