//! Many concurrent `GET /v1/runs/{id}/events` clients. Each event carries the time the mock
//! wrote it (`data.sent_unix_ns`); the client notes when the line arrived. Comparing the same
//! test direct and through a gateway gives the delay the gateway adds per event.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::http1::{parse_head, Chunked, Framing};
use crate::load::percentile;

#[derive(Debug, Clone, Default)]
pub struct StreamsResult {
    pub streams: usize,
    pub failed: usize,
    pub events: u64,
    /// Event delay (arrival - sent), microseconds.
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    pub first_error: Option<String>,
}

pub struct StreamsSpec {
    pub port: u16,
    pub streams: usize,
    pub events: u64,
    pub interval_ms: u64,
    /// Stream starts are spread over this long, so that events are not all due at once.
    pub ramp: Duration,
    pub headers: Vec<(&'static str, String)>,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64
}

fn sent_ns(line: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"sent_unix_ns\":";
    let at = line.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let digits: Vec<u8> = line[at..]
        .iter()
        .copied()
        .skip_while(|b| *b == b' ')
        .take_while(u8::is_ascii_digit)
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

/// One stream: the delays of its events, or why it failed.
async fn one(spec: Arc<StreamsSpec>, i: usize) -> Result<Vec<u64>, String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", spec.port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = s.set_nodelay(true);
    let mut req = format!(
        "GET /v1/runs/run-{i}/events?n={}&interval_ms={} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\
         Accept: application/x-ndjson\r\nConnection: close\r\n",
        spec.events, spec.interval_ms, spec.port
    );
    for (k, v) in &spec.headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;

    let mut raw = Vec::with_capacity(8192);
    let mut tmp = vec![0u8; 16 * 1024];
    let mut head = None;
    let mut body = Vec::new();
    let mut chunked = Chunked::default();
    let mut consumed = 0;
    let mut delays = Vec::with_capacity(spec.events as usize);
    loop {
        let n = s.read(&mut tmp).await.map_err(|e| format!("read: {e}"))?;
        let arrived = now_ns();
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&tmp[..n]);
        if head.is_none() {
            match parse_head(&raw).map_err(|e| e.to_string())? {
                Some(h) => {
                    if h.status != 200 {
                        return Err(format!(
                            "status {}: {}",
                            h.status,
                            String::from_utf8_lossy(&raw[h.len..])
                                .chars()
                                .take(200)
                                .collect::<String>()
                        ));
                    }
                    consumed = h.len;
                    head = Some(h);
                }
                None => continue,
            }
        }
        let framing = head.as_ref().map(|h| h.framing).unwrap_or(Framing::Close);
        match framing {
            Framing::Chunked => {
                consumed += chunked
                    .feed(&raw[consumed..], &mut body)
                    .map_err(|e| e.to_string())?;
            }
            _ => {
                body.extend_from_slice(&raw[consumed..]);
                consumed = raw.len();
            }
        }
        while let Some(nl) = body.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = body.drain(..=nl).collect();
            if let Some(sent) = sent_ns(&line) {
                delays.push(arrived.saturating_sub(sent) / 1000);
            }
        }
        if chunked.done() {
            break;
        }
        if let Some(Framing::Length(len)) = head.as_ref().map(|h| h.framing) {
            if consumed >= head.as_ref().map(|h| h.len).unwrap_or(0) + len {
                break;
            }
        }
    }
    if head.is_none() {
        return Err("connection closed before a response".into());
    }
    if head.as_ref().map(|h| h.framing) == Some(Framing::Chunked) && !chunked.done() {
        return Err(format!(
            "stream cut after {} of {} events",
            delays.len(),
            spec.events
        ));
    }
    if delays.len() as u64 != spec.events {
        return Err(format!("{} of {} events", delays.len(), spec.events));
    }
    Ok(delays)
}

pub fn run(spec: StreamsSpec) -> StreamsResult {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let spec = Arc::new(spec);
    rt.block_on(async move {
        let start = tokio::time::Instant::now();
        let step = spec.ramp.div_f64(spec.streams.max(1) as f64);
        let mut tasks = Vec::with_capacity(spec.streams);
        for i in 0..spec.streams {
            let spec = spec.clone();
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep_until(start + step.mul_f64(i as f64)).await;
                // Generous bound: the events take n * interval; a stuck stream fails, not hangs.
                let limit =
                    Duration::from_millis(spec.events * spec.interval_ms) + Duration::from_secs(30);
                match tokio::time::timeout(limit, one(spec, i)).await {
                    Ok(r) => r,
                    Err(_) => Err("timed out".into()),
                }
            }));
        }
        let mut all = Vec::new();
        let mut failed = 0;
        let mut first_error = None;
        for t in tasks {
            match t.await {
                Ok(Ok(d)) => all.extend(d),
                Ok(Err(e)) => {
                    failed += 1;
                    first_error.get_or_insert(e);
                }
                Err(e) => {
                    failed += 1;
                    first_error.get_or_insert(e.to_string());
                }
            }
        }
        all.sort_unstable();
        StreamsResult {
            streams: spec.streams,
            failed,
            events: all.len() as u64,
            p50_us: percentile(&all, 50.0) as f64,
            p99_us: percentile(&all, 99.0) as f64,
            max_us: all.last().copied().unwrap_or(0) as f64,
            first_error,
        }
    })
}
