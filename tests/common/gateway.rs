//! `Gateway`: the real `arp-jarvis-rungateway` binary, run as a child process.
//!
//! The child gets a clean environment (only PATH and HOME survive, plus what the test passes)
//! and runs in a fresh empty working directory, so neither the test runner's `ARP_*`/`JARVIS_*`
//! variables nor a developer's `.env` file can change what a test sees. Relative paths in
//! arguments therefore resolve against that directory: pass absolute paths (for repository
//! files, `concat!(env!("CARGO_MANIFEST_DIR"), "/...")`). stdout and stderr go to one log file
//! in that directory; it is printed if the test panics and removed otherwise.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_arp-jarvis-rungateway");
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(20);

/// A port that was free a moment ago and that no other test in this process was given. The
/// listener is dropped before the caller binds it, so another process could take it in
/// between; `Gateway::start` retries once for that case. Within one test binary the ports are
/// never handed out twice: the gateway's listeners use SO_REUSEPORT, so two gateways given the
/// same port would both bind it and share its connections instead of failing.
pub fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .expect("bind an ephemeral port")
            .port();
        if reserve_port(port) {
            return port;
        }
    }
}

static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());

/// Records a port as taken by a test server; `false` if it already was.
pub fn reserve_port(port: u16) -> bool {
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    if given.contains(&port) {
        return false;
    }
    given.push(port);
    true
}

/// A private, empty working directory per child (log file included).
fn new_work_dir() -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("rungateway-test-{}-{n}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create gateway work dir");
    dir
}

fn read_log(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()))
}

/// Whether the caller already passes `--name` (as `--name value` or `--name=value`).
fn has_flag(args: &[&str], name: &str) -> bool {
    args.iter()
        .any(|a| *a == name || a.starts_with(&format!("{name}=")))
}

/// Spawn the binary with `--host 127.0.0.1 --port <port>` (unless `args` set them), a clean
/// environment plus `env`, in `dir`, with stdout+stderr appended to `log`.
fn spawn(env: &[(&str, &str)], args: &[&str], port: u16, dir: &Path, log: &Path) -> Child {
    let out = File::create(log).expect("create gateway log");
    let err = out.try_clone().expect("clone log handle");
    let mut cmd = Command::new(BIN);
    cmd.env_clear();
    for key in ["PATH", "HOME"] {
        if let Some(value) = std::env::var_os(key) {
            cmd.env(key, value);
        }
    }
    cmd.envs(env.iter().copied());
    if !has_flag(args, "--host") {
        cmd.args(["--host", "127.0.0.1"]);
    }
    if !has_flag(args, "--port") {
        cmd.args(["--port", &port.to_string()]);
    }
    cmd.args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {BIN}: {e}"))
}

/// Any complete HTTP status line from `GET /v1/version` counts as "answering": the probe only
/// asks whether the listener is serving, tests check the answer itself.
fn answers_version(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    let request =
        format!("GET /v1/version HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 16];
    let mut read = 0;
    while read < head.len() {
        match stream.read(&mut head[read..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => read += n,
        }
    }
    head[..read].starts_with(b"HTTP/1.") && head[..read].contains(&b' ')
}

/// Why a start attempt failed without panicking: only the retryable port race.
struct PortTaken;

pub struct Gateway {
    child: Child,
    port: u16,
    dir: PathBuf,
    log: PathBuf,
}

impl Gateway {
    /// Start the gateway and wait (polling every 20 ms, up to 30 s) until `GET /v1/version`
    /// answers. Panics with the log if the child exits first or never becomes ready.
    pub fn start(env: &[(&str, &str)], args: &[&str]) -> Gateway {
        Self::try_start(env, args)
            .or_else(|PortTaken| Self::try_start(env, args))
            .unwrap_or_else(|PortTaken| panic!("gateway: free port taken twice in a row"))
    }

    fn try_start(env: &[(&str, &str)], args: &[&str]) -> Result<Gateway, PortTaken> {
        let port = free_port();
        let dir = new_work_dir();
        let log = dir.join("gateway.log");
        let child = spawn(env, args, port, &dir, &log);
        let mut gateway = Gateway {
            child,
            port,
            dir,
            log,
        };
        gateway.wait_ready()?;
        Ok(gateway)
    }

    fn wait_ready(&mut self) -> Result<(), PortTaken> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait gateway") {
                let logs = self.logs();
                if logs.to_ascii_lowercase().contains("address already in use") {
                    return Err(PortTaken);
                }
                // The log itself is printed by `Drop`, which runs while this panic unwinds.
                panic!("gateway exited before it was ready ({status}); see its log below");
            }
            if answers_version(self.port) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                panic!("gateway not ready after {READY_TIMEOUT:?}; see its log below");
            }
            std::thread::sleep(POLL);
        }
    }

    /// Start on a given port without waiting for readiness: for a zero-downtime upgrade, where
    /// the new process (`-u`) only serves once the old one hands its sockets over.
    pub fn spawn_on(port: u16, env: &[(&str, &str)], args: &[&str]) -> Gateway {
        let dir = new_work_dir();
        let log = dir.join("gateway.log");
        let child = spawn(env, args, port, &dir, &log);
        Gateway {
            child,
            port,
            dir,
            log,
        }
    }

    /// Run the binary until it exits, for startup-error tests. `--host 127.0.0.1 --port <free>`
    /// are added unless `args` already set them. Panics (after killing it) if it is still
    /// running after `timeout`. Returns the exit status and the combined stdout+stderr.
    pub fn run_to_exit(
        env: &[(&str, &str)],
        args: &[&str],
        timeout: Duration,
    ) -> (ExitStatus, String) {
        let dir = new_work_dir();
        let log = dir.join("output.log");
        let mut child = spawn(env, args, free_port(), &dir, &log);
        let status = wait_child(&mut child, timeout);
        let output = read_log(&log);
        let Some(status) = status else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("gateway still running after {timeout:?}; output:\n{output}");
        };
        let _ = fs::remove_dir_all(&dir);
        (status, output)
    }

    /// Base URL without a trailing slash, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The child's working directory (where relative paths such as a pid file end up).
    pub fn work_dir(&self) -> &Path {
        &self.dir
    }

    /// Everything the child wrote to stdout and stderr so far.
    pub fn logs(&self) -> String {
        read_log(&self.log)
    }

    /// Send a signal by name ("TERM", "INT", "QUIT", "HUP", ...) through `kill(1)`.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args(["-s", sig, &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {sig} {} failed", self.pid());
    }

    /// Wait up to `timeout` for the child to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_child(&mut self.child, timeout)
    }
}

fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait gateway") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failing test is where the gateway's own view matters most.
        if std::thread::panicking() {
            eprintln!(
                "----- gateway log ({}) -----\n{}\n----- end gateway log -----",
                self.log.display(),
                self.logs()
            );
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}
