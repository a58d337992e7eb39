//! `bench-harness`: the driver behind `bench/run` (which installs the tools and builds the
//! binaries first). Starts the mock coordinator and every server under test, runs the load
//! rows (alternating, `--runs` times each), the fixed-rate latency test and the streams test,
//! then prints the table and writes `bench/results/<date>.{md,json,png}`.
//!
//! Placement on the 2-core machine (unless `--no-pin`): the server under test (gateway, nginx,
//! the Python gateway; the mock itself in the "direct" row) on core 0, everything else (load
//! tool, mock coordinator, this driver) on core 1.

mod chart;
mod http1;
mod load;
mod procs;
mod streams;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clap::Parser;
use plotters::style::RGBColor;
use serde_json::{json, Value};

use load::{LoadResult, Wrk};
use procs::{Pinning, Server};

/// Side-by-side benchmark of the gateway against direct access, nginx and the Python gateway.
#[derive(Parser, Debug)]
#[command(name = "bench-harness")]
struct Args {
    /// A few seconds per row, one run, small stream test: checks that the harness works
    #[arg(long)]
    quick: bool,
    /// Seconds per load run [default: 10; quick: 2]
    #[arg(long)]
    duration: Option<f64>,
    /// Runs of each row, alternating between rows; the table shows the median [default: 2; quick: 1]
    #[arg(long)]
    runs: Option<usize>,
    /// Concurrent connections of the load tool, the same for every row
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Concurrent event streams [default: 1000; quick: 100]
    #[arg(long)]
    streams: Option<usize>,
    /// Events per stream [default: 20; quick: 5]
    #[arg(long)]
    events: Option<u64>,
    /// Milliseconds between events
    #[arg(long, default_value_t = 100)]
    interval_ms: u64,
    /// Rows to run, comma-separated (1,2,2p,3,4,5,6,6b)
    #[arg(long, default_value = "1,2,2p,3,4,5,6,6b")]
    rows: String,
    /// What the streams test goes through: "ours" (row 4's configuration) or "pingora" (the
    /// bare Pingora proxy, to tell Pingora's own cost from ours)
    #[arg(long, default_value = "ours")]
    streams_via: String,
    /// Listener read buffer of the bare Pingora proxy, bytes (default: Pingora's 64 KiB)
    #[arg(long)]
    pingora_read_buffer: Option<usize>,
    /// Skip the fixed-rate latency test
    #[arg(long)]
    no_rate: bool,
    /// Skip the streams test
    #[arg(long)]
    no_streams: bool,
    /// Do not pin processes to cores
    #[arg(long)]
    no_pin: bool,
    /// Core of the server under test
    #[arg(long, default_value_t = 0)]
    server_core: usize,
    /// Core of the load tool, the mock coordinator and this driver
    #[arg(long, default_value_t = 1)]
    load_core: usize,
    /// `server.threads` of our gateway (one core: one worker thread)
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Distinct tokens for row 5 (each used in turn)
    #[arg(long)]
    pool: Option<usize>,
    #[arg(long)]
    gateway_bin: PathBuf,
    #[arg(long)]
    mock_bin: PathBuf,
    /// The bare Pingora proxy (example pingora-baseline); its row is marked when missing
    #[arg(long)]
    pingora_bin: Option<PathBuf>,
    #[arg(long, default_value = "wrk")]
    wrk: String,
    #[arg(long, default_value = "nginx")]
    nginx: String,
    /// The Python gateway's entry point (`.../bin/arp-jarvis-rungateway`)
    #[arg(long)]
    python_gateway: Option<PathBuf>,
    /// Why the Python gateway is not available (shown in its rows)
    #[arg(long)]
    python_unavailable: Option<String>,
    /// Where results go [default: bench/results; quick: bench/results/quick]
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// Rewrite the results section of this README (full runs)
    #[arg(long)]
    readme: Option<PathBuf>,
    /// Extra environment for our gateway, KEY=VALUE (diagnostics, e.g. allocator settings)
    #[arg(long = "gateway-env")]
    gateway_env: Vec<String>,
    /// The command line to record with the results
    #[arg(long, default_value = "bench/run")]
    command_line: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Direct,
    Nginx,
    Pingora,
    OursOff,
    OursJwt,
    OursCold,
    PyJwt,
    PyDev,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tokens {
    None,
    Same,
    Pool,
}

struct RowDef {
    id: &'static str,
    name: &'static str,
    kind: Kind,
    tokens: Tokens,
    color: RGBColor,
}

const ROWS: [RowDef; 8] = [
    RowDef {
        id: "1",
        name: "direct to the upstream (no proxy)",
        kind: Kind::Direct,
        tokens: Tokens::None,
        color: RGBColor(150, 150, 150),
    },
    RowDef {
        id: "2",
        name: "nginx, plain reverse proxy, no auth",
        kind: Kind::Nginx,
        tokens: Tokens::None,
        color: RGBColor(46, 139, 87),
    },
    RowDef {
        id: "2p",
        name: "bare Pingora 0.9 proxy (reference)",
        kind: Kind::Pingora,
        tokens: Tokens::None,
        color: RGBColor(200, 170, 120),
    },
    RowDef {
        id: "3",
        name: "ours, auth disabled",
        kind: Kind::OursOff,
        tokens: Tokens::None,
        color: RGBColor(230, 120, 30),
    },
    RowDef {
        id: "4",
        name: "ours, JWT + exchange, same token (cached)",
        kind: Kind::OursJwt,
        tokens: Tokens::Same,
        color: RGBColor(214, 90, 20),
    },
    RowDef {
        id: "5",
        name: "ours, JWT + exchange, new token each (cold)",
        kind: Kind::OursCold,
        tokens: Tokens::Pool,
        color: RGBColor(180, 60, 10),
    },
    RowDef {
        id: "6",
        name: "Python gateway 0.3.8, JWT + exchange",
        kind: Kind::PyJwt,
        tokens: Tokens::Same,
        color: RGBColor(60, 100, 190),
    },
    RowDef {
        id: "6b",
        name: "Python gateway 0.3.8, dev-insecure",
        kind: Kind::PyDev,
        tokens: Tokens::None,
        color: RGBColor(110, 150, 220),
    },
];

const REQUEST_PATH: &str = "/v1/runs/run-42";
const CLIENT_ID: &str = "arp-run-gateway";
const CLIENT_SECRET: &str = "bench-secret";

/// One measured run of one row.
#[derive(Debug, Clone)]
struct Run {
    load: LoadResult,
    cpu_s: f64,
    rss_mb: f64,
    server_core_pct: Option<f64>,
    load_core_pct: Option<f64>,
    /// CPU of the load side (wrk, plus the mock unless it is the server) over the run, in % of
    /// one core: near 100 means the load side, not the server, set the pace.
    load_cpu_pct: f64,
    /// Mock counters over the run.
    upstream: BTreeMap<String, u64>,
}

struct Row {
    def: &'static RowDef,
    port: u16,
    /// The process measured (the mock for row 1).
    pid: u32,
    server: Option<Server>,
    skipped: Option<String>,
    failed: Option<String>,
    runs: Vec<Run>,
}

struct Ctx {
    args: Args,
    /// Described before this process pinned itself (`nproc` honours affinity).
    machine: String,
    /// Every server process started (and the mock): `settle` waits until they are all idle.
    servers: std::sync::Mutex<Vec<u32>>,
    quick: bool,
    dir: PathBuf,
    pin: Pinning,
    mock_port: u16,
    mock_pid: u32,
    same_token: String,
    pool_file: PathBuf,
    wrk: Option<Wrk>,
}

fn main() {
    let args = Args::parse();
    std::process::exit(match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bench: {e}");
            2
        }
    });
}

fn say(msg: impl AsRef<str>) {
    eprintln!("==> {}", msg.as_ref());
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn mock_stats(port: u16) -> BTreeMap<String, u64> {
    http1::get(port, "/stats", &[])
        .ok()
        .and_then(|(_, b)| serde_json::from_slice::<BTreeMap<String, u64>>(&b).ok())
        .unwrap_or_default()
}

fn stats_delta(a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    b.iter()
        .map(|(k, v)| (k.clone(), v.saturating_sub(*a.get(k).unwrap_or(&0))))
        .collect()
}

/// Busy and total jiffies of one CPU, from /proc/stat.
fn core_times(core: usize) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat
        .lines()
        .find(|l| l.starts_with(&format!("cpu{core} ")))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

fn busy_pct(a: Option<(u64, u64)>, b: Option<(u64, u64)>) -> Option<f64> {
    let ((b0, t0), (b1, t1)) = (a?, b?);
    (t1 > t0).then(|| 100.0 * (b1 - b0) as f64 / (t1 - t0) as f64)
}

fn auth_header(tokens: Tokens, same: &str) -> Vec<(&'static str, String)> {
    match tokens {
        Tokens::Same => vec![("Authorization", format!("Bearer {same}"))],
        _ => Vec::new(),
    }
}

fn clean_env(cmd: &mut Command) {
    for (k, _) in std::env::vars() {
        if k.starts_with("ARP_") || k.starts_with("JARVIS_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
}

impl Ctx {
    fn mock_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.mock_port)
    }

    fn issuer(&self) -> String {
        format!("{}/realms/bench", self.mock_url())
    }

    fn jwt_env(&self, cmd: &mut Command) {
        cmd.env("ARP_AUTH_MODE", "required")
            .env("ARP_AUTH_ISSUER", self.issuer())
            .env("ARP_AUTH_AUDIENCE", "arp-run-gateway")
            .env("ARP_AUTH_JWKS_URI", format!("{}/jwks", self.mock_url()))
            .env("ARP_AUTH_CLIENT_ID", CLIENT_ID)
            .env("ARP_AUTH_CLIENT_SECRET", CLIENT_SECRET)
            .env(
                "ARP_AUTH_TOKEN_ENDPOINT",
                format!("{}/token", self.mock_url()),
            );
    }

    fn start_ours(&self, name: &str, kind: Kind, port: u16) -> Result<Server, String> {
        let cold = if kind == Kind::OursCold {
            "auth:\n  # Row 5: a cache of one entry, so every token of the pool misses both caches.\n  \
             verified_cache_max_entries: 1\n  token_cache_max_entries: 1\n"
        } else {
            ""
        };
        let yaml = format!(
            "# Written by bench/run.\nserver:\n  threads: {threads}\n  grace_period_seconds: 0\n  \
             graceful_shutdown_timeout_seconds: 1\n  upgrade_sock: {dir}/{name}-upgrade.sock\n  \
             pid_file: {dir}/{name}.pid\nlogging:\n  level: warn\n  access_log: \"off\"\n{cold}",
            threads = self.args.threads,
            dir = self.dir.display(),
        );
        let conf = self.dir.join(format!("{name}.yaml"));
        std::fs::write(&conf, yaml).map_err(|e| e.to_string())?;
        let mut cmd = procs::command(&self.args.gateway_bin, self.pin.server);
        clean_env(&mut cmd);
        cmd.current_dir(&self.dir)
            .arg("--config")
            .arg(&conf)
            .arg("--port")
            .arg(port.to_string())
            .env("JARVIS_RUN_COORDINATOR_URL", self.mock_url());
        for kv in &self.args.gateway_env {
            if let Some((k, v)) = kv.split_once('=') {
                cmd.env(k, v);
            }
        }
        if kind == Kind::OursOff {
            cmd.env("ARP_AUTH_PROFILE", "dev-insecure");
        } else {
            self.jwt_env(&mut cmd);
        }
        let mut s = Server::spawn(name, cmd, self.dir.join(format!("{name}.log")))?;
        s.wait_ready(port, "/v1/version", &[], 200, Duration::from_secs(20))?;
        Ok(s)
    }

    fn start_pingora(&self, port: u16) -> Result<Server, String> {
        let bin = self
            .args
            .pingora_bin
            .clone()
            .filter(|b| b.is_file())
            .ok_or("no pingora-baseline binary (--pingora-bin)")?;
        let mut cmd = procs::command(&bin, self.pin.server);
        clean_env(&mut cmd);
        cmd.current_dir(&self.dir)
            .arg("--upstream")
            .arg(format!("127.0.0.1:{}", self.mock_port))
            .arg("--port")
            .arg(port.to_string())
            .arg("--threads")
            .arg(self.args.threads.to_string());
        if let Some(rb) = self.args.pingora_read_buffer {
            cmd.arg("--read-buffer").arg(rb.to_string());
        }
        let mut s = Server::spawn("pingora-baseline", cmd, self.dir.join("pingora.log"))?;
        s.wait_ready(port, "/v1/health", &[], 200, Duration::from_secs(20))?;
        Ok(s)
    }

    fn start_nginx(&self, port: u16) -> Result<Server, String> {
        let bin = procs::which(&self.args.nginx)
            .ok_or_else(|| format!("{} not installed", self.args.nginx))?;
        let d = self.dir.join("nginx");
        std::fs::create_dir_all(&d).map_err(|e| e.to_string())?;
        let dd = d.display();
        let conf = format!(
            r#"# Written by bench/run: a plain keep-alive reverse proxy, one worker, no logging.
worker_processes 1;
daemon off;
master_process on;
pid {dd}/nginx.pid;
error_log {dd}/error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {dd}/body;
  proxy_temp_path {dd}/proxy;
  fastcgi_temp_path {dd}/fastcgi;
  uwsgi_temp_path {dd}/uwsgi;
  scgi_temp_path {dd}/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 75s;
  upstream coordinator {{
    server 127.0.0.1:{mock};
    keepalive 256;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
  }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass http://coordinator;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}
}}
"#,
            mock = self.mock_port
        );
        let path = d.join("nginx.conf");
        std::fs::write(&path, conf).map_err(|e| e.to_string())?;
        let mut cmd = procs::command(&bin, self.pin.server);
        cmd.arg("-p")
            .arg(&d)
            .arg("-e")
            .arg(d.join("error.log"))
            .arg("-c")
            .arg(&path);
        let mut s = Server::spawn("nginx", cmd, self.dir.join("nginx.log"))?;
        s.wait_ready(port, "/v1/health", &[], 200, Duration::from_secs(10))?;
        Ok(s)
    }

    fn start_python(&self, kind: Kind, port: u16) -> Result<Server, String> {
        if let Some(why) = &self.args.python_unavailable {
            return Err(why.clone());
        }
        let bin = self
            .args
            .python_gateway
            .clone()
            .ok_or("no --python-gateway given")?;
        if !bin.is_file() {
            return Err(format!("{} not found", bin.display()));
        }
        let mut cmd = procs::command(&bin, self.pin.server);
        clean_env(&mut cmd);
        cmd.current_dir(&self.dir)
            .arg("--host")
            .arg("127.0.0.1")
            .arg("--port")
            .arg(port.to_string())
            .env("JARVIS_RUN_COORDINATOR_URL", self.mock_url())
            // uvicorn's access log off, as for every other row.
            .env("LOG_LEVEL", "WARNING")
            .env("PYTHONDONTWRITEBYTECODE", "1");
        if kind == Kind::PyDev {
            // The reference needs client credentials even in dev-insecure: it asks the STS
            // for a client-credentials token on every request.
            cmd.env("ARP_AUTH_PROFILE", "dev-insecure")
                .env("ARP_AUTH_CLIENT_ID", CLIENT_ID)
                .env("ARP_AUTH_CLIENT_SECRET", CLIENT_SECRET)
                .env(
                    "ARP_AUTH_TOKEN_ENDPOINT",
                    format!("{}/token", self.mock_url()),
                );
        } else {
            self.jwt_env(&mut cmd);
        }
        let name = if kind == Kind::PyDev {
            "python-dev"
        } else {
            "python-jwt"
        };
        let mut s = Server::spawn(name, cmd, self.dir.join(format!("{name}.log")))?;
        s.wait_ready(port, "/v1/version", &[], 200, Duration::from_secs(40))?;
        Ok(s)
    }

    fn first_pool_token(&self) -> String {
        std::fs::read_to_string(&self.pool_file)
            .ok()
            .and_then(|s| s.lines().next().map(str::to_string))
            .unwrap_or_default()
    }

    fn row_headers(&self, def: &RowDef) -> Vec<(&'static str, String)> {
        match def.tokens {
            Tokens::Pool => vec![(
                "Authorization",
                format!("Bearer {}", self.first_pool_token()),
            )],
            t => auth_header(t, &self.same_token),
        }
    }

    /// Waits (up to 20 s) until the server core is idle: a slow server still works through
    /// the requests queued by the previous run after the load tool has stopped.
    fn settle(&self) {
        let pids: Vec<u32> = self.servers.lock().map(|v| v.clone()).unwrap_or_default();
        let busy = || pids.iter().map(|p| procs::cpu_seconds(*p)).sum::<f64>();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            let a = busy();
            std::thread::sleep(Duration::from_millis(250));
            // Under 5% of a core over 250 ms, all servers together.
            if busy() - a < 0.0125 {
                return;
            }
        }
    }

    /// One wrk run against `row`, with CPU, memory and upstream counters around it.
    fn measure(&self, row: &Row, duration: Duration) -> Result<Run, String> {
        let wrk = self.wrk.as_ref().ok_or("wrk not installed")?;
        self.settle();
        if row.def.kind == Kind::Direct {
            procs::repin(row.pid, self.pin.server);
        }
        let headers = match row.def.tokens {
            Tokens::Same => auth_header(Tokens::Same, &self.same_token),
            _ => Vec::new(),
        };
        let tokens = (row.def.tokens == Tokens::Pool).then_some(self.pool_file.as_path());
        let url = format!("http://127.0.0.1:{}{REQUEST_PATH}", row.port);
        let s0 = mock_stats(self.mock_port);
        let cpu0 = procs::cpu_seconds(row.pid);
        let mock0 = procs::cpu_seconds(self.mock_pid);
        let wrk0 = procs::children_cpu_seconds();
        let c0 = self.pin.server.and_then(core_times);
        let l0 = self.pin.load.and_then(core_times);
        let result = wrk.run(&url, self.args.connections, duration, &headers, tokens);
        let cpu1 = procs::cpu_seconds(row.pid);
        let wrk_cpu = procs::children_cpu_seconds() - wrk0;
        let mock_cpu = if row.pid == self.mock_pid {
            0.0
        } else {
            procs::cpu_seconds(self.mock_pid) - mock0
        };
        let c1 = self.pin.server.and_then(core_times);
        let l1 = self.pin.load.and_then(core_times);
        let rss = procs::rss_mb(row.pid);
        if row.def.kind == Kind::Direct {
            procs::repin(row.pid, self.pin.load);
        }
        let s1 = mock_stats(self.mock_port);
        let result = result?;
        let secs = result.seconds.max(1e-3);
        Ok(Run {
            load_cpu_pct: 100.0 * (wrk_cpu + mock_cpu) / secs,
            load: result,
            cpu_s: cpu1 - cpu0,
            rss_mb: rss,
            server_core_pct: busy_pct(c0, c1),
            load_core_pct: busy_pct(l0, l1),
            upstream: stats_delta(&s0, &s1),
        })
    }
}

fn machine() -> String {
    let lscpu = sh("lscpu | head -15");
    format!(
        "- `nproc`: {}\n- kernel: {}\n- memory: {}\n- load average when the run started: {}\n\
         - `lscpu | head -15`:\n\n```\n{lscpu}\n```\n",
        sh("nproc"),
        sh("uname -srm"),
        sh("free -g | awk '/^Mem:/ {print $2 \" GiB\"}'"),
        sh("cut -d' ' -f1-3 /proc/loadavg"),
    )
}

fn utc_now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

fn sh(cmd: &str) -> String {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).to_string();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s.trim().to_string()
        })
        .unwrap_or_default()
}

fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

fn run(mut args: Args) -> Result<i32, String> {
    // Servers run in a scratch directory: every path given must survive that.
    args.gateway_bin = absolute(&args.gateway_bin);
    args.mock_bin = absolute(&args.mock_bin);
    args.pingora_bin = args.pingora_bin.as_deref().map(absolute);
    args.python_gateway = args.python_gateway.as_deref().map(absolute);
    let quick = args.quick;
    let runs = args.runs.unwrap_or(if quick { 1 } else { 2 }).max(1);
    let duration = Duration::from_secs_f64(args.duration.unwrap_or(if quick { 2.0 } else { 10.0 }));
    let warmup = Duration::from_secs(if quick { 1 } else { 2 });
    let n_streams = args.streams.unwrap_or(if quick { 100 } else { 1000 });
    let n_events = args.events.unwrap_or(if quick { 5 } else { 20 });
    let pool_size = args.pool.unwrap_or(if quick { 100 } else { 1000 });
    let wanted: Vec<String> = args.rows.split(',').map(|s| s.trim().to_string()).collect();

    let pin = if args.no_pin || !procs::have("taskset") {
        Pinning {
            server: None,
            load: None,
        }
    } else {
        Pinning {
            server: Some(args.server_core),
            load: Some(args.load_core),
        }
    };
    let machine = machine();
    // This driver (open-loop client, stream clients) lives on the load core too.
    procs::repin(std::process::id(), pin.load);

    let dir = std::env::temp_dir().join(format!("arp-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let script = dir.join("bench.lua");
    std::fs::write(&script, load::WRK_SCRIPT).map_err(|e| e.to_string())?;
    let wrk = procs::which(&args.wrk).map(|bin| Wrk {
        bin,
        script,
        core: pin.load,
    });
    if wrk.is_none() {
        return Err(format!("{} not found: it drives every row", args.wrk));
    }

    // The upstream: coordinator, IdP and STS in one process.
    say("starting the mock coordinator");
    let mock_port = procs::free_port();
    let mut cmd = procs::command(&args.mock_bin, pin.load);
    cmd.args(["--port", &mock_port.to_string(), "--threads", "1"])
        .args(["--client-id", CLIENT_ID, "--client-secret", CLIENT_SECRET]);
    let mut mock = Server::spawn("mock-coordinator", cmd, dir.join("mock.log"))?;
    mock.wait_ready(mock_port, "/v1/health", &[], 200, Duration::from_secs(30))?;
    let (_, same) =
        http1::get(mock_port, "/mint?n=1&sub=bench-same", &[]).map_err(|e| e.to_string())?;
    let same_token = String::from_utf8_lossy(&same).trim().to_string();
    say(format!("minting {pool_size} tokens for row 5"));
    let (_, pool) = http1::get(
        mock_port,
        &format!("/mint?n={pool_size}&sub=bench-pool"),
        &[],
    )
    .map_err(|e| e.to_string())?;
    let pool_file = dir.join("tokens.txt");
    std::fs::write(&pool_file, &pool).map_err(|e| e.to_string())?;

    let ctx = Ctx {
        servers: std::sync::Mutex::new(vec![mock.pid()]),
        machine,
        quick,
        dir: dir.clone(),
        pin,
        mock_port,
        mock_pid: mock.pid(),
        same_token,
        pool_file,
        wrk,
        args,
    };

    // Servers under test.
    let mut rows: Vec<Row> = Vec::new();
    for def in ROWS.iter().filter(|d| wanted.iter().any(|w| w == d.id)) {
        let port = if def.kind == Kind::Direct {
            mock_port
        } else {
            procs::free_port()
        };
        say(format!("row {}: {}", def.id, def.name));
        let started = match def.kind {
            Kind::Direct => Ok(None),
            Kind::Nginx => ctx.start_nginx(port).map(Some),
            Kind::Pingora => ctx.start_pingora(port).map(Some),
            Kind::OursOff => ctx.start_ours("ours-noauth", def.kind, port).map(Some),
            Kind::OursJwt => ctx.start_ours("ours-jwt", def.kind, port).map(Some),
            Kind::OursCold => ctx.start_ours("ours-cold", def.kind, port).map(Some),
            Kind::PyJwt | Kind::PyDev => ctx.start_python(def.kind, port).map(Some),
        };
        let mut row = Row {
            def,
            port,
            pid: ctx.mock_pid,
            server: None,
            skipped: None,
            failed: None,
            runs: Vec::new(),
        };
        match started {
            Ok(server) => {
                if let Some(s) = &server {
                    row.pid = s.pid();
                    if let Ok(mut v) = ctx.servers.lock() {
                        v.push(s.pid());
                    }
                }
                row.server = server;
                // One request by hand: the row must answer 200 before it is measured.
                match http1::get(port, REQUEST_PATH, &ctx.row_headers(def)) {
                    Ok((200, _)) => {}
                    Ok((status, body)) => {
                        row.failed = Some(format!(
                            "check request answered {status}: {}",
                            String::from_utf8_lossy(&body)
                        ))
                    }
                    Err(e) => row.failed = Some(format!("check request failed: {e}")),
                }
            }
            Err(e) => {
                let optional = matches!(
                    def.kind,
                    Kind::Nginx | Kind::Pingora | Kind::PyJwt | Kind::PyDev
                );
                if optional {
                    say(format!("row {} not run: {e}", def.id));
                    row.skipped = Some(e.lines().next().unwrap_or_default().to_string());
                } else {
                    row.failed = Some(e);
                }
            }
        }
        if let Some(f) = &row.failed {
            say(format!("row {} FAILED: {f}", def.id));
        }
        rows.push(row);
    }

    // Warm-up (not recorded), then the measured runs, alternating between rows.
    for row in rows
        .iter()
        .filter(|r| r.skipped.is_none() && r.failed.is_none())
    {
        let _ = ctx.measure(row, warmup);
    }
    for pass in 0..runs {
        for row in rows.iter_mut() {
            if row.skipped.is_some() || row.failed.is_some() {
                continue;
            }
            match ctx.measure(row, duration) {
                Ok(r) => {
                    say(format!(
                        "run {}/{runs} row {:>2}: {:>9.0} req/s  p99 {:>7.2} ms  errors {}  cpu {:.2}s",
                        pass + 1,
                        row.def.id,
                        r.load.rps(),
                        r.load.p99_ms,
                        r.load.errors,
                        r.cpu_s
                    ));
                    row.runs.push(r);
                }
                Err(e) => say(format!("row {}: run failed: {e}", row.def.id)),
            }
            if let Some(s) = row.server.as_mut() {
                if let Some(e) = s.exited() {
                    row.failed = Some(format!("{e}; log:\n{}", s.log_tail(15)));
                }
            }
        }
    }
    for row in rows.iter_mut() {
        if row.failed.is_none() && row.skipped.is_none() && row.runs.iter().all(|r| r.load.ok == 0)
        {
            row.failed = Some("no successful request in any run".into());
        }
    }

    // Fixed-rate latency at half of row 4's maximum rate: direct, then every proxy that has
    // no auth to pay (nginx, bare Pingora, ours with auth off) for scale, and row 4, alternating.
    let mut rate_test = None;
    let row_rps = |rows: &[Row], id: &str| {
        rows.iter()
            .find(|r| r.def.id == id && r.failed.is_none())
            .and_then(|r| median(r.runs.iter().map(|x| x.load.rps()).collect()))
    };
    let ok_row = |id: &str| {
        rows.iter()
            .find(|r| r.def.id == id && r.failed.is_none() && r.skipped.is_none())
    };
    if !ctx.args.no_rate {
        if let (Some(r4), Some(_), Some(_)) = (row_rps(&rows, "4"), ok_row("1"), ok_row("4")) {
            let rate = (r4 / 2.0).max(10.0);
            say(format!(
                "fixed-rate latency test at {rate:.0} req/s (half of row 4's maximum)"
            ));
            let paths: Vec<&Row> = ["1", "2", "2p", "3", "4"]
                .iter()
                .filter_map(|id| ok_row(id))
                .collect();
            let mut results: Vec<Vec<LoadResult>> = vec![Vec::new(); paths.len()];
            for _ in 0..runs {
                for (i, row) in paths.iter().enumerate() {
                    ctx.settle();
                    let direct = row.def.kind == Kind::Direct;
                    if direct {
                        procs::repin(row.pid, ctx.pin.server);
                    }
                    let r = load::open_loop(
                        row.port,
                        REQUEST_PATH,
                        &auth_header(row.def.tokens, &ctx.same_token),
                        rate,
                        ctx.args.connections,
                        duration,
                    );
                    if direct {
                        procs::repin(row.pid, ctx.pin.load);
                    }
                    say(format!("  row {}: p99 {:.3} ms", row.def.id, r.p99_ms));
                    results[i].push(r);
                }
            }
            rate_test = Some(RateTest {
                rate,
                paths: paths
                    .iter()
                    .zip(results)
                    .map(|(r, v)| (r.def.id, r.def.name, v))
                    .collect(),
            });
        }
    }

    // Streams: a fresh gateway (row 4's configuration) so that its memory starts clean.
    let mut streams_test = None;
    let mut fatal = Vec::new();
    if !ctx.args.no_streams {
        say(format!(
            "streams: {n_streams} concurrent event streams, {n_events} events {} ms apart",
            ctx.args.interval_ms
        ));
        let port = procs::free_port();
        let via_pingora = ctx.args.streams_via == "pingora";
        let started = if via_pingora {
            ctx.start_pingora(port)
        } else {
            ctx.start_ours("ours-streams", Kind::OursJwt, port)
        };
        match started {
            Ok(gw) => {
                let headers = auth_header(Tokens::Same, &ctx.same_token);
                let spec = |port| streams::StreamsSpec {
                    port,
                    streams: n_streams,
                    events: n_events,
                    interval_ms: ctx.args.interval_ms,
                    ramp: Duration::from_millis(
                        if quick { 500 } else { 1000 }.max(ctx.args.interval_ms),
                    ),
                    headers: headers.clone(),
                };
                // Warm: keys, the exchange, a pooled connection, one short stream.
                let _ = http1::get(port, REQUEST_PATH, &headers);
                let _ = http1::get(port, "/v1/runs/warm/events?n=2&interval_ms=10", &headers);
                std::thread::sleep(Duration::from_millis(500));
                let mut st = StreamsRuns {
                    rss_before: procs::rss_mb(gw.pid()),
                    ..Default::default()
                };
                for pass in 0..runs {
                    let d = streams::run(spec(mock_port));
                    let before = procs::rss_mb(gw.pid());
                    let stop = Arc::new(AtomicBool::new(false));
                    let sampler = {
                        let stop = stop.clone();
                        let pid = gw.pid();
                        std::thread::spawn(move || {
                            let mut max: f64 = 0.0;
                            while !stop.load(Ordering::Relaxed) {
                                max = max.max(procs::rss_mb(pid));
                                std::thread::sleep(Duration::from_millis(100));
                            }
                            max
                        })
                    };
                    let cpu0 = procs::cpu_seconds(gw.pid());
                    let g = streams::run(spec(port));
                    let cpu = procs::cpu_seconds(gw.pid()) - cpu0;
                    stop.store(true, Ordering::Relaxed);
                    let during = sampler.join().unwrap_or(0.0);
                    std::thread::sleep(Duration::from_secs(2));
                    let after = procs::rss_mb(gw.pid());
                    say(format!(
                        "  run {}: direct p50/p99 {:.0}/{:.0} us, gateway {:.0}/{:.0} us; failed {}+{}; \
                         RSS {before:.1} -> {during:.1} -> {after:.1} MB",
                        pass + 1,
                        d.p50_us,
                        d.p99_us,
                        g.p50_us,
                        g.p99_us,
                        d.failed,
                        g.failed
                    ));
                    st.before.push(before);
                    st.growth.push(during - before);
                    st.during.push(during);
                    st.after.push(after);
                    st.cpu.push(cpu);
                    st.direct.push(d);
                    st.gateway.push(g);
                }
                if st.gateway.iter().all(|g| g.failed == g.streams) {
                    fatal.push("every stream through the gateway failed".to_string());
                }
                streams_test = Some(st);
                drop(gw);
            }
            Err(e) => fatal.push(format!("streams gateway did not start: {e}")),
        }
    }

    // Stop everything before writing.
    for row in rows.iter_mut() {
        if let Some(mut s) = row.server.take() {
            s.stop();
        }
    }
    mock.stop();

    for row in &rows {
        if let Some(f) = &row.failed {
            fatal.push(format!("row {} ({}): {f}", row.def.id, row.def.name));
        }
    }
    let report = Report {
        ctx: &ctx,
        rows: &rows,
        runs,
        duration,
        rate_test: rate_test.as_ref(),
        streams: streams_test.as_ref(),
        n_streams,
        n_events,
        fatal: &fatal,
    };
    let md = report.markdown();
    println!("{md}");
    let out_dir = ctx.args.out_dir.clone().unwrap_or_else(|| {
        PathBuf::from(if quick {
            "bench/results/quick"
        } else {
            "bench/results"
        })
    });
    std::fs::create_dir_all(&out_dir).map_err(|e| e.to_string())?;
    let date = utc_now()[..10].to_string();
    let md_path = out_dir.join(format!("{date}.md"));
    let png_path = out_dir.join(format!("{date}.png"));
    let png_name = png_path
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .to_string();
    let mut file_md = md.clone();
    match report.chart(&png_path) {
        Ok(()) => {
            let _ = writeln!(file_md, "\n![req/s and p99 per row]({png_name})");
            say(format!("chart: {}", png_path.display()));
        }
        Err(e) => say(format!("no chart: {e}")),
    }
    std::fs::write(&md_path, &file_md).map_err(|e| e.to_string())?;
    std::fs::write(
        out_dir.join(format!("{date}.json")),
        serde_json::to_string_pretty(&report.json()).unwrap_or_default(),
    )
    .map_err(|e| e.to_string())?;
    say(format!("results: {}", md_path.display()));
    if let (Some(readme), false) = (&ctx.args.readme, quick) {
        update_readme(readme, &md, &png_path)?;
        say(format!("updated {}", readme.display()));
    }
    let _ = std::fs::remove_dir_all(&dir);
    if fatal.is_empty() {
        Ok(0)
    } else {
        for f in &fatal {
            eprintln!("bench: FAILED: {f}");
        }
        Ok(1)
    }
}

struct RateTest {
    rate: f64,
    /// (row id, row name, runs)
    paths: Vec<(&'static str, &'static str, Vec<LoadResult>)>,
}

impl RateTest {
    fn p99(&self, id: &str) -> Option<f64> {
        let (_, _, v) = self.paths.iter().find(|(i, _, _)| *i == id)?;
        median(v.iter().map(|r| r.p99_ms).collect())
    }
}

#[derive(Default)]
struct StreamsRuns {
    rss_before: f64,
    before: Vec<f64>,
    during: Vec<f64>,
    after: Vec<f64>,
    growth: Vec<f64>,
    cpu: Vec<f64>,
    direct: Vec<streams::StreamsResult>,
    gateway: Vec<streams::StreamsResult>,
}

const BEGIN: &str = "<!-- bench:results:begin (written by bench/run) -->";
const END: &str = "<!-- bench:results:end -->";

fn update_readme(readme: &Path, md: &str, png: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(readme).map_err(|e| format!("{}: {e}", readme.display()))?;
    let (Some(a), Some(b)) = (text.find(BEGIN), text.find(END)) else {
        return Err(format!("{}: no results markers", readme.display()));
    };
    let rel = png
        .strip_prefix(readme.parent().unwrap_or(Path::new(".")))
        .unwrap_or(png)
        .display()
        .to_string();
    // The results file's own title is dropped: the README has its section heading.
    let body: String = md
        .lines()
        .skip_while(|l| l.starts_with("# ") || l.is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    let new = format!(
        "{}{BEGIN}\n\n![req/s and p99 per row]({rel})\n\n{body}\n\n{}",
        &text[..a],
        &text[b..]
    );
    std::fs::write(readme, new).map_err(|e| e.to_string())
}

struct Report<'a> {
    ctx: &'a Ctx,
    rows: &'a [Row],
    runs: usize,
    duration: Duration,
    rate_test: Option<&'a RateTest>,
    streams: Option<&'a StreamsRuns>,
    n_streams: usize,
    n_events: u64,
    fatal: &'a [String],
}

fn f(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(x) => format!("{x:.digits$}"),
        None => "–".into(),
    }
}

impl Report<'_> {
    fn med(&self, row: &Row, m: impl Fn(&Run) -> Option<f64>) -> Option<f64> {
        median(row.runs.iter().filter_map(m).collect())
    }

    fn rps(&self, id: &str) -> Option<f64> {
        let row = self
            .rows
            .iter()
            .find(|r| r.def.id == id && r.failed.is_none())?;
        self.med(row, |r| Some(r.load.rps()))
    }

    fn versions(&self) -> String {
        let git = sh("git rev-parse --short HEAD 2>/dev/null");
        let dirty = if sh("git status --porcelain -- src Cargo.toml 2>/dev/null").is_empty() {
            ""
        } else {
            " (with uncommitted changes)"
        };
        let py = self
            .ctx
            .args
            .python_gateway
            .as_ref()
            .and_then(|p| p.parent())
            .map(|bin| {
                sh(&format!(
                    "{}/pip show arp-jarvis-rungateway 2>/dev/null | grep -i ^version",
                    bin.display()
                ))
            })
            .unwrap_or_default();
        format!(
            "- ours: commit {git}{dirty}, {} build, `server.threads: {}`, `logging.access_log: off`\n\
             - nginx: {}\n- wrk: {}\n- Python gateway: arp-jarvis-rungateway {}\n",
            if self.ctx.args.gateway_bin.to_string_lossy().contains("/release/") {
                "release"
            } else {
                "debug (numbers not meaningful)"
            },
            self.ctx.args.threads,
            sh(&format!("{} -v 2>&1", self.ctx.args.nginx)).replace("nginx version: ", ""),
            sh(&format!("{} -v 2>&1 | head -1", self.ctx.args.wrk)),
            py.split(':').nth(1).map(str::trim).unwrap_or("not installed"),
        )
    }

    fn markdown(&self) -> String {
        let mut s = String::new();
        let args = &self.ctx.args;
        let pin = match (self.ctx.pin.server, self.ctx.pin.load) {
            (Some(a), Some(b)) => format!(
                "server under test pinned to core {a}; load tool, mock upstream and stream clients on core {b}"
            ),
            _ => "no pinning".into(),
        };
        let _ = writeln!(
            s,
            "# Benchmark results, {}{}\n",
            utc_now(),
            if self.ctx.quick {
                " (QUICK RUN: numbers not meaningful)"
            } else {
                ""
            }
        );
        let _ = writeln!(s, "Command: `{}`  ", args.command_line);
        let _ = writeln!(
            s,
            "{} connections, {:.0} s per run, {} run(s) per row alternating (table: median), \
             `GET {REQUEST_PATH}`; {pin}.\n",
            args.connections,
            self.duration.as_secs_f64(),
            self.runs
        );
        let nginx = self.rps("2");
        let _ = writeln!(
            s,
            "| # | setup | req/s | vs nginx | p50 ms | p99 ms | p99.9 ms | errors | CPU s / 10k req | RSS MB | server CPU | load-side CPU |"
        );
        let _ = writeln!(s, "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
        for row in self.rows {
            let d = row.def;
            if let Some(why) = row.skipped.as_ref().or(row.failed.as_ref()) {
                let what = if row.skipped.is_some() {
                    "not run"
                } else {
                    "FAILED"
                };
                let why = why.lines().next().unwrap_or_default().replace('|', "/");
                let _ = writeln!(s, "| {} | {} | **{what}**: {why} |||||||||||", d.id, d.name);
                continue;
            }
            let rps = self.med(row, |r| Some(r.load.rps()));
            let errors: u64 = row.runs.iter().map(|r| r.load.errors).sum();
            let reqs: u64 = row.runs.iter().map(|r| r.load.requests).sum();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                d.id,
                d.name,
                f(rps, 0),
                match (rps, nginx) {
                    (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
                    _ => "–".into(),
                },
                f(self.med(row, |r| Some(r.load.p50_ms)), 2),
                f(self.med(row, |r| Some(r.load.p99_ms)), 2),
                f(self.med(row, |r| Some(r.load.p999_ms)), 2),
                if errors == 0 {
                    "0".to_string()
                } else {
                    format!("{errors} of {reqs}")
                },
                f(
                    self.med(row, |r| (r.load.requests > 0)
                        .then(|| r.cpu_s / r.load.requests as f64 * 1e4)),
                    2
                ),
                f(self.med(row, |r| Some(r.rss_mb)), 1),
                f(
                    self.med(row, |r| Some(100.0 * r.cpu_s / r.load.seconds.max(1e-3))),
                    0
                ) + "%",
                f(self.med(row, |r| Some(r.load_cpu_pct)), 0) + "%",
            );
        }
        s.push('\n');
        // What the rows exercised, from the mock's counters.
        for row in self.rows.iter().filter(|r| !r.runs.is_empty()) {
            let tot = |k: &str| {
                row.runs
                    .iter()
                    .map(|r| r.upstream.get(k).copied().unwrap_or(0))
                    .sum::<u64>()
            };
            let ops = tot("get_run");
            if ops == 0 {
                continue;
            }
            let sts = tot("token_exchange") + tot("client_credentials");
            let _ = writeln!(
                s,
                "- row {}: {} coordinator calls, {:.3} STS calls per call, {:.0}% carried an STS-issued token",
                row.def.id,
                ops,
                sts as f64 / ops as f64,
                100.0 * tot("with_issued_token") as f64 / ops as f64
            );
        }
        let errors: Vec<String> = self
            .rows
            .iter()
            .flat_map(|r| {
                r.runs
                    .iter()
                    .filter(|x| x.load.errors > 0)
                    .map(move |x| format!("row {}: {}", r.def.id, x.load.detail))
            })
            .collect();
        if !errors.is_empty() {
            let _ = writeln!(s, "- errors: {}", errors.join("; "));
        }

        if let Some(rt) = self.rate_test {
            let m =
                |v: &Vec<LoadResult>, g: fn(&LoadResult) -> f64| median(v.iter().map(g).collect());
            let _ = writeln!(
                s,
                "\n**Fixed rate, {:.0} req/s** (half of row 4's maximum; open loop over the same {} connections, \
                 latency from the send, or from the due time when an earlier answer held the connection):\n",
                rt.rate, self.ctx.args.connections
            );
            let _ = writeln!(
                s,
                "| # | path | achieved req/s | p50 ms | p99 ms | p99.9 ms | p99 added to direct | errors |"
            );
            let _ = writeln!(s, "|---|---|--:|--:|--:|--:|--:|--:|");
            let direct = rt.p99("1");
            for (id, name, v) in &rt.paths {
                let p99 = m(v, |r| r.p99_ms);
                let _ = writeln!(
                    s,
                    "| {id} | {name} | {} | {} | {} | {} | {} | {} |",
                    f(m(v, |r| r.rps()), 0),
                    f(m(v, |r| r.p50_ms), 3),
                    f(p99, 3),
                    f(m(v, |r| r.p999_ms), 3),
                    if *id == "1" {
                        "–".to_string()
                    } else {
                        f(p99.zip(direct).map(|(a, b)| a - b), 3) + " ms"
                    },
                    v.iter().map(|r| r.errors).sum::<u64>()
                );
            }
        }
        if let Some(st) = self.streams {
            let m = |v: &Vec<streams::StreamsResult>, g: fn(&streams::StreamsResult) -> f64| {
                median(v.iter().map(g).collect())
            };
            let (dp50, dp99) = (m(&st.direct, |r| r.p50_us), m(&st.direct, |r| r.p99_us));
            let (gp50, gp99) = (m(&st.gateway, |r| r.p50_us), m(&st.gateway, |r| r.p99_us));
            let sub = |a: Option<f64>, b: Option<f64>| Some((a? - b?) / 1000.0);
            let _ = writeln!(
                s,
                "\n**Streams**: {} concurrent `GET /v1/runs/{{id}}/events`, {} events {} ms apart, starts spread over {} ms; \
                 {} (fresh process):\n",
                self.n_streams,
                self.n_events,
                self.ctx.args.interval_ms,
                if self.ctx.quick { 500 } else { 1000 }.max(self.ctx.args.interval_ms),
                if self.ctx.args.streams_via == "pingora" {
                    "through the bare Pingora proxy (row 2p), not ours"
                } else {
                    "ours configured as row 4"
                }
            );
            let via = if self.ctx.args.streams_via == "pingora" {
                "through bare Pingora"
            } else {
                "through ours"
            };
            let _ = writeln!(s, "| | direct | {via} | added |");
            let _ = writeln!(s, "|---|--:|--:|--:|");
            let _ = writeln!(
                s,
                "| per-event delay p50 ms | {} | {} | {} |",
                f(dp50.map(|x| x / 1000.0), 3),
                f(gp50.map(|x| x / 1000.0), 3),
                f(sub(gp50, dp50), 3)
            );
            let _ = writeln!(
                s,
                "| per-event delay p99 ms | {} | {} | {} |",
                f(dp99.map(|x| x / 1000.0), 3),
                f(gp99.map(|x| x / 1000.0), 3),
                f(sub(gp99, dp99), 3)
            );
            let _ = writeln!(
                s,
                "| failed streams | {} | {} | |",
                st.direct.iter().map(|r| r.failed).sum::<usize>(),
                st.gateway.iter().map(|r| r.failed).sum::<usize>()
            );
            for (i, ((b, d), a)) in st.before.iter().zip(&st.during).zip(&st.after).enumerate() {
                let _ = writeln!(
                    s,
                    "| gateway RSS MB, run {}: before / during (max) / 2 s after | | {b:.1} / {d:.1} / {a:.1} | growth {:.1} |",
                    i + 1,
                    d - b
                );
            }
            let _ = writeln!(
                s,
                "| gateway CPU s per 10k events | | {} | |",
                f(
                    median(
                        st.cpu
                            .iter()
                            .zip(&st.gateway)
                            .map(|(c, g)| c / g.events.max(1) as f64 * 1e4)
                            .collect()
                    ),
                    2
                )
            );
            for e in st
                .direct
                .iter()
                .chain(&st.gateway)
                .filter_map(|r| r.first_error.as_ref())
                .take(3)
            {
                let _ = writeln!(s, "\nfirst stream error: `{e}`");
            }
        }

        // Targets.
        let _ = writeln!(
            s,
            "\n**Targets**{}:\n",
            if self.ctx.quick {
                " (quick run: not meaningful)"
            } else {
                ""
            }
        );
        let _ = writeln!(s, "| target | measured | |");
        let _ = writeln!(s, "|---|--:|---|");
        let verdict = |ok: Option<bool>| match ok {
            Some(true) => "met",
            Some(false) => "**MISSED**",
            None => "n/a",
        };
        let (r2, r4, r6) = (self.rps("2"), self.rps("4"), self.rps("6"));
        let ratio = |a: Option<f64>, b: Option<f64>| Some(a? / b?);
        let t1 = ratio(r4, r2);
        let _ = writeln!(
            s,
            "| row 4 ≥ 0.8x row 2 req/s | {}x | {} |",
            f(t1, 2),
            verdict(t1.map(|x| x >= 0.8))
        );
        let t2 = ratio(r4, r6);
        let _ = writeln!(
            s,
            "| row 4 ≥ 20x row 6 req/s | {}x | {} |",
            f(t2, 1),
            verdict(t2.map(|x| x >= 20.0))
        );
        let t3 = self
            .rate_test
            .and_then(|rt| Some(rt.p99("4")? - rt.p99("1")?));
        let _ = writeln!(
            s,
            "| row 4 adds ≤ 1 ms p99 over row 1 at half rate | {} ms | {} |",
            f(t3, 3),
            verdict(t3.map(|x| x <= 1.0))
        );
        if let Some(st) = self.streams {
            let growth = st.growth.iter().copied().reduce(f64::max);
            let _ = writeln!(
                s,
                "| {} streams: RSS growth ≤ 50 MB (target for 1,000) | {} MB | {} |",
                self.n_streams,
                f(growth, 1),
                verdict(growth.map(|g| g <= 50.0))
            );
            let gp99 = median(st.gateway.iter().map(|r| r.p99_us).collect());
            let dp99 = median(st.direct.iter().map(|r| r.p99_us).collect());
            let added = gp99.zip(dp99).map(|(g, d)| (g - d) / 1000.0);
            let _ = writeln!(
                s,
                "| streams: added per-event delay p99 ≤ 2 ms | {} ms | {} |",
                f(added, 3),
                verdict(added.map(|a| a <= 2.0))
            );
            let failed: usize = st.gateway.iter().map(|r| r.failed).sum();
            let _ = writeln!(
                s,
                "| streams: zero failed | {failed} | {} |",
                verdict(Some(failed == 0))
            );
        }
        if !self.fatal.is_empty() {
            let _ = writeln!(s, "\n**Failures:**\n");
            for e in self.fatal {
                let _ = writeln!(s, "- {}", e.lines().next().unwrap_or_default());
            }
        }
        let _ = writeln!(
            s,
            "\nMachine:\n\n{}\nVersions:\n\n{}",
            self.ctx.machine,
            self.versions()
        );
        s
    }

    fn chart(&self, path: &Path) -> Result<(), String> {
        let bars = |m: fn(&Run) -> f64| -> Vec<chart::Bar> {
            self.rows
                .iter()
                .map(|r| chart::Bar {
                    label: format!("{}. {}", r.def.id, r.def.name),
                    value: if r.failed.is_some() || r.skipped.is_some() {
                        None
                    } else {
                        median(r.runs.iter().map(m).collect())
                    },
                    color: r.def.color,
                })
                .collect()
        };
        let title = format!(
            "arp-jarvis-rungateway benchmark, {}: {} connections, one core for the server under test{}",
            &utc_now()[..10],
            self.ctx.args.connections,
            if self.ctx.quick { " (QUICK RUN)" } else { "" }
        );
        chart::draw(
            path,
            &title,
            &bars(|r| r.load.rps()),
            &bars(|r| r.load.p99_ms),
        )
    }

    fn json(&self) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                json!({
                    "id": r.def.id, "name": r.def.name, "skipped": r.skipped, "failed": r.failed,
                    "runs": r.runs.iter().map(|x| json!({
                        "requests": x.load.requests, "ok": x.load.ok, "errors": x.load.errors,
                        "seconds": x.load.seconds, "rps": x.load.rps(), "p50_ms": x.load.p50_ms,
                        "p99_ms": x.load.p99_ms, "p999_ms": x.load.p999_ms, "cpu_s": x.cpu_s,
                        "rss_mb": x.rss_mb, "server_core_pct": x.server_core_pct,
                        "load_core_pct": x.load_core_pct, "load_cpu_pct": x.load_cpu_pct,
                        "upstream": x.upstream,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let rate = self.rate_test.map(|rt| {
            let j = |v: &Vec<LoadResult>| v.iter().map(|r| json!({"rps": r.rps(), "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "p999_ms": r.p999_ms, "errors": r.errors})).collect::<Vec<_>>();
            let paths: serde_json::Map<String, Value> =
                rt.paths.iter().map(|(id, _, v)| (id.to_string(), json!(j(v)))).collect();
            json!({"rate": rt.rate, "rows": paths})
        });
        let streams = self.streams.map(|st| {
            let j = |v: &Vec<streams::StreamsResult>| v.iter().map(|r| json!({"streams": r.streams, "failed": r.failed, "events": r.events, "p50_us": r.p50_us, "p99_us": r.p99_us, "max_us": r.max_us, "first_error": r.first_error})).collect::<Vec<_>>();
            json!({"direct": j(&st.direct), "gateway": j(&st.gateway), "rss_idle_mb": st.rss_before, "rss_before_mb": st.before, "rss_during_mb": st.during, "rss_after_mb": st.after, "cpu_s": st.cpu})
        });
        json!({
            "date": utc_now(), "quick": self.ctx.quick, "command": self.ctx.args.command_line,
            "connections": self.ctx.args.connections, "seconds_per_run": self.duration.as_secs_f64(),
            "runs": self.runs, "rows": rows, "rate_test": rate, "streams": streams, "failures": self.fatal,
        })
    }
}
