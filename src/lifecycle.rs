//! Process lifecycle: readiness, the count of requests in flight, and the drain on SIGTERM or an
//! upgrade. Pingora on its own sleeps the whole grace period even when idle and then cuts open
//! streams without their final chunk; the drainer instead exits as soon as nothing is in flight,
//! and at the deadline ends the streams still open cleanly (by shutting their upstream socket,
//! which makes the proxy loop finish the chunked body in `fail_to_proxy`).
//!
//! The same registry enforces the per-stream idle timeout. Pingora's own read timeout would do
//! it per read, but each of its timeouts leaves a timer entry alive for the whole timeout
//! (entries are grouped per 10 ms and dropped only when due): with a five-minute idle timeout
//! and thousands of event reads a second, those entries pinned tens of MiB of heap for five
//! minutes (the soak test's RSS growth). Here a read costs one atomic store.

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::collections::HashMap;
use std::os::unix::io::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Lifecycle {
    ready: AtomicBool,
    draining: AtomicBool,
    in_flight: AtomicUsize,
    next_stream: AtomicU64,
    /// Upstream sockets of open event streams, so the deadline can end them.
    streams: Mutex<HashMap<u64, (RawFd, Arc<Activity>)>>,
}

/// When a stream last moved, in milliseconds since `epoch()`, and whether it was cut for it.
#[derive(Default)]
struct Activity {
    last_ms: AtomicU64,
    cut_idle: AtomicBool,
}

fn epoch() -> Instant {
    static EPOCH: once_cell::sync::Lazy<Instant> = once_cell::sync::Lazy::new(Instant::now);
    *EPOCH
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

/// Held by every request from its first hook to the end of `logging`.
pub struct InFlight(Arc<Lifecycle>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Held by an event stream while its upstream socket is registered.
pub struct StreamSocket {
    lifecycle: Arc<Lifecycle>,
    id: u64,
    activity: Arc<Activity>,
}

impl StreamSocket {
    /// Something arrived from the coordinator: the idle clock starts again.
    pub fn touch(&self) {
        self.activity.last_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Whether the idle timeout ended this stream.
    pub fn was_cut_idle(&self) -> bool {
        self.activity.cut_idle.load(Ordering::Relaxed)
    }
}

impl Drop for StreamSocket {
    fn drop(&mut self) {
        self.lifecycle
            .streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

impl Lifecycle {
    pub fn new() -> Arc<Lifecycle> {
        Arc::new(Lifecycle::default())
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Ready once listening and until a shutdown begins.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.draining.load(Ordering::Acquire)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    pub fn open_streams(&self) -> usize {
        self.streams.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn enter(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    pub fn register_stream(self: &Arc<Self>, upstream_fd: RawFd) -> StreamSocket {
        let id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let activity = Arc::new(Activity::default());
        activity.last_ms.store(now_ms(), Ordering::Relaxed);
        self.streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, (upstream_fd, activity.clone()));
        StreamSocket {
            lifecycle: self.clone(),
            id,
            activity,
        }
    }

    /// Ends the streams whose coordinator sent nothing for longer than `idle` (cleanly, as
    /// `end_streams` does); returns how many.
    pub fn end_idle_streams(&self, idle: Duration) -> usize {
        let now = now_ms();
        let idle = idle.as_millis() as u64;
        let streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        let mut ended = 0;
        for (fd, a) in streams.values() {
            if now.saturating_sub(a.last_ms.load(Ordering::Relaxed)) > idle
                && !a.cut_idle.swap(true, Ordering::Relaxed)
            {
                shutdown_socket(*fd);
                ended += 1;
            }
        }
        ended
    }

    /// Ends every registered stream by shutting down its upstream socket (not closing it: the
    /// descriptor still belongs to the proxy task, so it cannot be reused under it).
    fn end_streams(&self) -> usize {
        let streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        for (fd, _) in streams.values() {
            shutdown_socket(*fd);
        }
        streams.len()
    }
}

/// shutdown(2), not close: the descriptor still belongs to the proxy task, so it cannot be
/// reused under it. Registered descriptors are removed before their connection is dropped, and
/// a stale one would only fail with EBADF/ENOTCONN.
fn shutdown_socket(fd: RawFd) {
    let _ = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Both);
}

/// Enforces the per-stream idle timeout over the registry.
pub struct StreamWatchdog {
    pub lifecycle: Arc<Lifecycle>,
    pub idle: Duration,
}

#[async_trait]
impl BackgroundService for StreamWatchdog {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // A stream is cut between `idle` and `idle` plus one tick after its last byte.
        let tick = (self.idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
        let mut interval = tokio::time::interval(tick);
        loop {
            tokio::select! {
                _ = interval.tick() => {
                    let n = self.lifecycle.end_idle_streams(self.idle);
                    if n > 0 {
                        log::info!("ended {n} event stream(s) idle for over {:?}", self.idle);
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Waits for the shutdown signal, then for in-flight requests to finish, and exits the process.
pub struct Drainer {
    pub lifecycle: Arc<Lifecycle>,
    pub grace: Duration,
    pub cut_timeout: Duration,
}

const POLL: Duration = Duration::from_millis(50);

fn exit_now(code: i32) -> ! {
    log::logger().flush();
    std::process::exit(code)
}

#[async_trait]
impl BackgroundService for Drainer {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                return;
            }
        }
        let lc = &self.lifecycle;
        lc.draining.store(true, Ordering::Release);
        let started = Instant::now();
        log::info!(
            "shutdown: draining {} request(s) in flight, {} stream(s); deadline {}s",
            lc.in_flight(),
            lc.open_streams(),
            self.grace.as_secs()
        );
        while started.elapsed() < self.grace {
            if lc.in_flight() == 0 {
                log::info!("shutdown: drained after {:?}", started.elapsed());
                exit_now(0);
            }
            tokio::time::sleep(POLL).await;
        }
        let ended = lc.end_streams();
        log::warn!(
            "shutdown: grace period over; ended {ended} open stream(s) cleanly, {} request(s) still in flight",
            lc.in_flight()
        );
        let cut = Instant::now();
        while cut.elapsed() < self.cut_timeout && lc.in_flight() > 0 {
            tokio::time::sleep(POLL).await;
        }
        if lc.in_flight() > 0 {
            log::warn!(
                "shutdown: cutting {} request(s) still in flight",
                lc.in_flight()
            );
        }
        exit_now(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_count_and_readiness_follows_drain() {
        let lc = Lifecycle::new();
        assert!(!lc.is_ready());
        lc.set_ready();
        assert!(lc.is_ready());
        let a = lc.enter();
        let b = lc.enter();
        assert_eq!(lc.in_flight(), 2);
        drop(a);
        assert_eq!(lc.in_flight(), 1);
        drop(b);
        assert_eq!(lc.in_flight(), 0);
        let s = lc.register_stream(-1);
        assert_eq!(lc.open_streams(), 1);
        assert_eq!(lc.end_streams(), 1);
        assert_eq!(lc.end_idle_streams(Duration::from_secs(60)), 0);
        assert!(!s.was_cut_idle());
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(lc.end_idle_streams(Duration::from_millis(10)), 1);
        assert!(s.was_cut_idle());
        assert_eq!(
            lc.end_idle_streams(Duration::from_millis(10)),
            0,
            "cut once"
        );
        drop(s);
        assert_eq!(lc.open_streams(), 0);
        lc.draining.store(true, Ordering::Release);
        assert!(!lc.is_ready());
    }
}
