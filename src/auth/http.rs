//! The HTTP client the gateway uses to talk to its identity provider (discovery, JWKS, STS).

use std::time::Duration;

use once_cell::sync::OnceCell;

/// A `reqwest::Client` built on first use. Pingora may fork when it daemonises, and a client
/// built before the fork would carry a connection pool (and resolver state) into the child;
/// building lazily means the first request in the final process creates it.
pub(crate) struct LazyClient {
    cell: OnceCell<reqwest::Client>,
    timeout: Duration,
}

impl LazyClient {
    pub(crate) fn new(timeout: Duration) -> Self {
        LazyClient {
            cell: OnceCell::new(),
            timeout,
        }
    }

    pub(crate) fn get(&self) -> Result<&reqwest::Client, String> {
        self.cell.get_or_try_init(|| {
            reqwest::Client::builder()
                .timeout(self.timeout)
                .connect_timeout(self.timeout.min(Duration::from_secs(5)))
                // A redirect from the IdP is either a misconfiguration or an attempt to make us
                // send the client secret somewhere else: never follow it.
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("arp-jarvis-rungateway/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| format!("cannot build HTTP client: {e}"))
        })
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }
}

/// Why a response body could not be read.
#[derive(Debug)]
pub(crate) enum BodyError {
    TooLarge,
    Transport(reqwest::Error),
}

/// Reads at most `limit` bytes: an IdP answer is small, and a hostile or broken endpoint must
/// not make us buffer without bound.
pub(crate) async fn read_limited(
    mut resp: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, BodyError> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge);
    }
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(BodyError::Transport)? {
        if buf.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// A short, secret-free description of a transport failure for logs and health details.
pub(crate) fn describe(err: &reqwest::Error) -> &'static str {
    if err.is_timeout() {
        "timeout"
    } else if err.is_connect() {
        "connection failed"
    } else if err.is_body() || err.is_decode() {
        "invalid response"
    } else {
        "request failed"
    }
}
