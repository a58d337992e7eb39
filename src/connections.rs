//! Admission at the connection level, around Pingora's HTTP service: a cap on open client
//! connections and a deadline for every request head. Pingora has no hook before it reads a
//! head, and its own reads time out one `read()` at a time (so a client trickling one byte a
//! minute is never dropped), hence a wrapper around the accepted stream.

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType,
};
use pingora::server::ShutdownWatch;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// Open client connections and what admission did to them; shared with `/metrics`.
#[derive(Debug)]
pub struct Connections {
    max: usize,
    head_timeout: Duration,
    open: AtomicUsize,
    refused: AtomicU64,
    head_timeouts: AtomicU64,
}

impl Connections {
    pub fn new(max: usize, head_timeout: Duration) -> Arc<Self> {
        Arc::new(Connections {
            max,
            head_timeout,
            open: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
            head_timeouts: AtomicU64::new(0),
        })
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Requests refused because their connection was over the limit.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Connections dropped because a request head did not arrive in time.
    pub fn head_timeouts(&self) -> u64 {
        self.head_timeouts.load(Ordering::Relaxed)
    }

    /// Counts a connection in; it is counted out when the returned slot drops.
    fn admit(self: &Arc<Self>) -> Slot {
        let n = self.open.fetch_add(1, Ordering::AcqRel) + 1;
        Slot {
            owner: self.clone(),
            over_limit: n > self.max,
        }
    }

    /// Whether the connection this session runs on was accepted beyond the limit. Counts the
    /// refusal: the caller answers 503 and closes.
    pub fn refuse_if_over_limit(&self, stream: Option<&Stream>) -> bool {
        let over = stream
            .and_then(|s| s.as_any().downcast_ref::<Guarded>())
            .is_some_and(|g| g.slot.over_limit);
        if over {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        over
    }
}

#[derive(Debug)]
struct Slot {
    owner: Arc<Connections>,
    /// Set once at accept: the connections already open keep being served; the newest one is
    /// the one refused, so going over the limit degrades nobody already in.
    over_limit: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.owner.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Where a connection is in its request/response cycle, as far as its bytes tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading a request head: the deadline runs.
    Head,
    /// The head is complete; body and answer follow, no head deadline.
    Body,
    /// The answer has been written: the next byte read starts a new head.
    Idle,
}

/// Finds the end of request heads in the bytes a client sends. Accepts bare LF line ends as
/// the HTTP parser does, so a head never ends later here than it does for Pingora.
#[derive(Debug, Clone)]
pub struct HeadScanner {
    phase: Phase,
    /// 0: inside a line; 1: just after LF; 2: after LF then CR; 3: nothing but line ends yet
    /// (empty lines before a request line are skipped by the parser, so they end nothing).
    line_state: u8,
}

impl Default for HeadScanner {
    fn default() -> Self {
        HeadScanner {
            phase: Phase::Head,
            line_state: 3,
        }
    }
}

impl HeadScanner {
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Feeds bytes read from the client. Returns true when a new head started in them.
    pub fn on_read(&mut self, bytes: &[u8]) -> bool {
        let mut started = false;
        if bytes.is_empty() {
            return false;
        }
        if self.phase == Phase::Idle {
            self.phase = Phase::Head;
            self.line_state = 3;
            started = true;
        }
        if self.phase == Phase::Head {
            for &b in bytes {
                self.line_state = match (b, self.line_state) {
                    (b'\r' | b'\n', 3) => 3,
                    (b'\n', 1 | 2) => {
                        self.phase = Phase::Body;
                        break;
                    }
                    (b'\n', _) => 1,
                    (b'\r', 1) => 2,
                    (b'\r', s) => s,
                    _ => 0,
                };
            }
        }
        started
    }

    /// The gateway wrote to the client: once the head was complete, that is the answer, and
    /// what the client sends next is the next request.
    pub fn on_write(&mut self) {
        if self.phase == Phase::Body {
            self.phase = Phase::Idle;
        }
    }
}

/// The accepted stream with its admission slot and head deadline.
pub struct Guarded {
    inner: Stream,
    slot: Slot,
    scanner: HeadScanner,
    timeout: Duration,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl std::fmt::Debug for Guarded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded")
            .field("inner", &self.inner)
            .field("phase", &self.scanner.phase)
            .finish()
    }
}

impl Guarded {
    fn new(inner: Stream, slot: Slot, timeout: Duration) -> Self {
        Guarded {
            inner,
            slot,
            scanner: HeadScanner::default(),
            timeout,
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
        }
    }
}

impl Guarded {
    /// Bytes went to the client: after a complete head, that is the answer.
    fn wrote(&mut self, res: &Poll<io::Result<usize>>) {
        if matches!(res, Poll::Ready(Ok(n)) if *n > 0) {
            self.scanner.on_write();
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.scanner.phase() == Phase::Head {
            if let Some(d) = this.deadline.as_mut() {
                if d.as_mut().poll(cx).is_ready() {
                    this.slot
                        .owner
                        .head_timeouts
                        .fetch_add(1, Ordering::Relaxed);
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "request head not complete within {:?} (limits.header_read_timeout_seconds)",
                            this.timeout
                        ),
                    )));
                }
            }
        }
        let before = buf.filled().len();
        let res = Pin::new(&mut *this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            let started = this.scanner.on_read(&buf.filled()[before..]);
            if this.scanner.phase() != Phase::Head {
                this.deadline = None;
            } else if started {
                // Only a head still incomplete after this read needs a clock.
                this.deadline = Some(Box::pin(tokio::time::sleep(this.timeout)));
            }
        }
        res
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut *self.inner).poll_write(cx, data);
        self.wrote(&res);
        res
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut *self.inner).poll_write_vectored(cx, bufs);
        self.wrote(&res);
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for Guarded {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for Guarded {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Guarded {}

impl GetTimingDigest for Guarded {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Guarded {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for Guarded {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for Guarded {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

/// Wraps an HTTP app (Pingora's proxy) so every connection it sees is admitted and guarded.
pub struct Admission<A> {
    app: Arc<A>,
    conns: Arc<Connections>,
}

impl<A> Admission<A> {
    pub fn new(app: A, conns: Arc<Connections>) -> Self {
        Admission {
            app: Arc::new(app),
            conns,
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Admission<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let guarded = Guarded::new(stream, self.conns.admit(), self.conns.head_timeout);
        // HTTP/1 keep-alive is looped inside the app, so the connection ends when this returns.
        self.app.process_new(Box::new(guarded), shutdown).await
    }

    async fn cleanup(&self) {
        self.app.cleanup().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(s: &mut HeadScanner, parts: &[&[u8]]) -> Vec<Phase> {
        parts
            .iter()
            .map(|p| {
                s.on_read(p);
                s.phase()
            })
            .collect()
    }

    #[test]
    fn a_head_ends_at_the_empty_line_even_split_across_reads() {
        let mut s = HeadScanner::default();
        let phases = feed(
            &mut s,
            &[b"GET / HTTP/1.1\r\nHost: a\r", b"\n", b"\r", b"\nbody"],
        );
        assert_eq!(
            phases,
            vec![Phase::Head, Phase::Head, Phase::Head, Phase::Body]
        );
    }

    #[test]
    fn bare_lf_line_ends_end_a_head_too() {
        let mut s = HeadScanner::default();
        assert_eq!(
            feed(&mut s, &[b"GET / HTTP/1.1\nHost: a\n\n"]),
            vec![Phase::Body]
        );
    }

    #[test]
    fn a_lone_crlf_inside_a_line_does_not_end_the_head() {
        let mut s = HeadScanner::default();
        assert_eq!(
            feed(&mut s, &[b"GET / HTTP/1.1\r\nX: a\rb\r\n", b"Y: \r\r\n"]),
            vec![Phase::Head, Phase::Head]
        );
    }

    #[test]
    fn the_next_request_starts_a_new_head_after_the_answer() {
        let mut s = HeadScanner::default();
        s.on_read(b"GET / HTTP/1.1\r\n\r\n");
        s.on_write();
        assert_eq!(s.phase(), Phase::Idle);
        assert!(s.on_read(b"GET /x HTTP/1.1\r\n"));
        assert_eq!(s.phase(), Phase::Head);
        assert!(!s.on_read(b"\r\n"));
        assert_eq!(s.phase(), Phase::Body);
    }

    #[test]
    fn empty_lines_before_the_request_line_do_not_end_the_head() {
        let mut s = HeadScanner::default();
        assert_eq!(
            feed(&mut s, &[b"\r\n\r\n\n", b"GET / HTTP/1.1\r\n", b"\r\n"]),
            vec![Phase::Head, Phase::Head, Phase::Body]
        );
    }

    #[test]
    fn a_write_before_the_head_is_complete_does_not_end_it() {
        let mut s = HeadScanner::default();
        s.on_read(b"GET / HTTP/1.1\r\n");
        s.on_write();
        assert_eq!(s.phase(), Phase::Head);
    }

    #[test]
    fn connections_over_the_limit_are_marked_and_counted_out_on_drop() {
        let c = Connections::new(1, Duration::from_secs(1));
        let a = c.admit();
        let b = c.admit();
        assert!(!a.over_limit);
        assert!(b.over_limit);
        assert_eq!(c.open(), 2);
        drop(a);
        drop(b);
        assert_eq!(c.open(), 0);
        assert!(!c.admit().over_limit);
    }
}
