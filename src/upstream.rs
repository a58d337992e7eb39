//! The coordinators: selection (Pingora's load balancer), host-name resolution that is retried
//! and refreshed in the background (a coordinator Service that does not resolve yet must not
//! crash-loop the gateway, and a headless Service's pod IPs change), active health checks
//! against each coordinator's `GET /v1/health`, passive ejection after connection failures, and
//! the `HttpPeer` settings (timeouts, pooling) every forwarded request uses.

use crate::config::{Balancing, ConfigError, Coordinator, UpstreamConfig};
use async_trait::async_trait;
use once_cell::sync::OnceCell;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::health_check::HealthCheck;
use pingora::lb::selection::consistent::KetamaHashing;
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::prelude::HttpPeer;
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Index of a coordinator in the configured list.
pub type CoordinatorId = usize;

/// One address of one coordinator: what a single attempt is sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub id: CoordinatorId,
    pub addr: SocketAddr,
}

enum Selector {
    RoundRobin(Arc<LoadBalancer<RoundRobin>>),
    Hash(Arc<LoadBalancer<KetamaHashing>>),
}

pub struct Upstreams {
    cfg: UpstreamConfig,
    selector: Selector,
    /// Addresses that refused a connection recently, until when.
    ejected: Mutex<HashMap<SocketAddr, Instant>>,
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstreams")
            .field("coordinators", &self.cfg.coordinators)
            .finish()
    }
}

/// Outcome of one probe of a coordinator's `/v1/health`.
#[derive(Debug, Clone)]
pub struct Probe {
    pub reachable: bool,
    /// The coordinator's own `status` when it answered with a Health body.
    pub status: Option<String>,
    pub checks: Vec<Value>,
    pub error: Option<String>,
}

/// Resolves every coordinator's host name, keeping the last good answer of a name that fails
/// to resolve now, so a DNS hiccup never empties the balancer.
struct Dns {
    coordinators: Vec<Coordinator>,
    last_good: Mutex<HashMap<CoordinatorId, Vec<SocketAddr>>>,
    /// Set after the blocking startup resolution, so the balancer's first (synchronous) update
    /// uses it instead of resolving again.
    use_startup_answer: std::sync::atomic::AtomicBool,
}

const DNS_TIMEOUT: Duration = Duration::from_secs(2);

impl Dns {
    fn backends(&self, resolved: &HashMap<CoordinatorId, Vec<SocketAddr>>) -> BTreeSet<Backend> {
        let mut set = BTreeSet::new();
        for (id, addrs) in resolved {
            for addr in addrs {
                let mut b = Backend {
                    addr: PingoraAddr::Inet(*addr),
                    weight: self.coordinators[*id].weight,
                    ext: Default::default(),
                };
                b.ext.insert(*id);
                set.insert(b);
            }
        }
        set
    }

    fn remember(&self, id: CoordinatorId, found: std::io::Result<Vec<SocketAddr>>) {
        let c = &self.coordinators[id];
        let mut last = self.last_good.lock().unwrap_or_else(|p| p.into_inner());
        match found {
            Ok(addrs) if !addrs.is_empty() => {
                if last.get(&id) != Some(&addrs) {
                    log::info!("coordinator {} resolves to {:?}", c.base_url, addrs);
                }
                last.insert(id, addrs);
            }
            Ok(_) => log::warn!("coordinator {}: host has no address", c.base_url),
            Err(e) => log::warn!("coordinator {}: cannot resolve host: {e}", c.base_url),
        }
    }

    /// Blocking first resolution at startup, so the first requests need not wait for the
    /// background refresh; failures are logged and retried there.
    fn resolve_now(&self) {
        for (id, c) in self.coordinators.iter().enumerate() {
            let found = (c.host.as_str(), c.port)
                .to_socket_addrs()
                .map(|it| it.collect::<Vec<_>>());
            self.remember(id, found);
        }
        self.use_startup_answer
            .store(true, std::sync::atomic::Ordering::Release);
    }

    fn current(&self) -> BTreeSet<Backend> {
        let last = self
            .last_good
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        self.backends(&last)
    }
}

#[async_trait]
impl ServiceDiscovery for Dns {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        if self
            .use_startup_answer
            .swap(false, std::sync::atomic::Ordering::AcqRel)
        {
            return Ok((self.current(), HashMap::new()));
        }
        for (id, c) in self.coordinators.iter().enumerate() {
            let lookup = tokio::net::lookup_host((c.host.as_str(), c.port));
            let found = match tokio::time::timeout(DNS_TIMEOUT, lookup).await {
                Ok(r) => r.map(|it| it.collect::<Vec<_>>()),
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "timed out",
                )),
            };
            self.remember(id, found);
        }
        Ok((self.current(), HashMap::new()))
    }
}

/// One shared HTTP client for gateway-originated calls to coordinators (health probes, large
/// bodies). Built on first use: Pingora may fork in daemon mode after configuration.
pub fn http_client() -> &'static reqwest::Client {
    static CLIENT: OnceCell<reqwest::Client> = OnceCell::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(30))
            .no_proxy()
            .build()
            .unwrap_or_default()
    })
}

/// Probes one coordinator's health endpoint.
pub async fn probe(base_url: &str, timeout: Duration) -> Probe {
    let url = format!("{base_url}/v1/health");
    let down = |error: String| Probe {
        reachable: false,
        status: None,
        checks: Vec::new(),
        error: Some(error),
    };
    let resp = match http_client().get(&url).timeout(timeout).send().await {
        Ok(r) => r,
        Err(e) if e.is_timeout() => return down("timed out".to_string()),
        Err(e) if e.is_connect() => return down("connection failed".to_string()),
        Err(_) => return down("request failed".to_string()),
    };
    let http_status = resp.status().as_u16();
    let body: Option<Value> = resp.json().await.ok();
    let status = body
        .as_ref()
        .and_then(|b| b.get("status"))
        .and_then(Value::as_str)
        .filter(|s| matches!(*s, "ok" | "degraded" | "down"))
        .map(str::to_string);
    let checks = body
        .as_ref()
        .and_then(|b| b.get("checks"))
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(sanitize_check).collect())
        .unwrap_or_default();
    if !(200..300).contains(&http_status) {
        return Probe {
            reachable: true,
            status: Some("down".to_string()),
            checks,
            error: Some(format!("HTTP {http_status}")),
        };
    }
    Probe {
        reachable: true,
        status: status.or_else(|| Some("degraded".to_string())),
        checks,
        error: None,
    }
}

/// Keeps only what the Health schema allows in a check and drops nulls, so a coordinator that
/// sends `null` for absent fields cannot make our own body invalid.
fn sanitize_check(v: &Value) -> Option<Value> {
    let obj = v.as_object()?;
    let name = obj.get("name")?.as_str()?;
    let status = obj
        .get("status")?
        .as_str()
        .filter(|s| matches!(*s, "ok" | "degraded" | "down"))?;
    let mut out = serde_json::Map::new();
    out.insert("name".into(), json!(name));
    out.insert("status".into(), json!(status));
    if let Some(m) = obj.get("message").and_then(Value::as_str) {
        out.insert("message".into(), json!(m));
    }
    if let Some(d) = obj.get("details").and_then(Value::as_object) {
        let d: serde_json::Map<_, _> = d
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        out.insert("details".into(), Value::Object(d));
    }
    Some(Value::Object(out))
}

/// Active health check of one coordinator address: healthy when `/v1/health` answers 2xx with
/// a status other than `down`. Plain-HTTP coordinators are probed at the exact address (each
/// pod of a headless Service separately); HTTPS ones by name, for certificate verification.
struct CoordinatorHealthCheck {
    coordinators: Vec<Coordinator>,
    timeout: Duration,
    failures: usize,
    successes: usize,
}

impl CoordinatorHealthCheck {
    fn url_for(&self, target: &Backend) -> Option<String> {
        let id = *target.ext.get::<CoordinatorId>()?;
        let c = self.coordinators.get(id)?;
        match target.addr.as_inet() {
            Some(addr) if !c.tls => Some(format!("http://{addr}")),
            _ => Some(c.base_url.clone()),
        }
    }
}

#[async_trait]
impl HealthCheck for CoordinatorHealthCheck {
    async fn check(&self, target: &Backend) -> pingora::Result<()> {
        let url = self.url_for(target).ok_or_else(|| {
            pingora::Error::explain(pingora::ErrorType::InternalError, "unknown coordinator")
        })?;
        let p = probe(&url, self.timeout).await;
        if p.reachable && p.error.is_none() && p.status.as_deref() != Some("down") {
            Ok(())
        } else {
            pingora::Error::e_explain(
                pingora::ErrorType::ConnectError,
                p.error
                    .unwrap_or_else(|| "coordinator reports down".to_string()),
            )
        }
    }

    async fn health_status_change(&self, target: &Backend, healthy: bool) {
        let name = target
            .ext
            .get::<CoordinatorId>()
            .and_then(|id| self.coordinators.get(*id))
            .map(|c| c.base_url.as_str())
            .unwrap_or("?");
        let addr = target
            .addr
            .as_inet()
            .map(|a| a.to_string())
            .unwrap_or_default();
        if healthy {
            log::info!("coordinator {name} ({addr}) is healthy again");
        } else {
            log::warn!("coordinator {name} ({addr}) failed its health checks: ejected");
        }
    }

    fn health_threshold(&self, success: bool) -> usize {
        if success {
            self.successes
        } else {
            self.failures
        }
    }
}

impl Upstreams {
    /// Builds the balancer. Host names are resolved now and again every
    /// `dns_refresh` in the background; one that does not resolve yet is not an error.
    pub fn new(cfg: &UpstreamConfig) -> Result<Upstreams, ConfigError> {
        let dns = || Dns {
            coordinators: cfg.coordinators.clone(),
            last_good: Mutex::new(HashMap::new()),
            use_startup_answer: Default::default(),
        };
        let hc = || {
            Box::new(CoordinatorHealthCheck {
                coordinators: cfg.coordinators.clone(),
                timeout: cfg.health_timeout,
                failures: cfg.failures_to_eject,
                successes: cfg.successes_to_restore,
            })
        };
        macro_rules! balancer {
            ($algo:ty, $variant:ident) => {{
                let d = dns();
                d.resolve_now();
                let mut lb = LoadBalancer::<$algo>::from_backends(Backends::new(Box::new(d)));
                lb.set_health_check(hc());
                lb.health_check_frequency = Some(cfg.health_interval);
                lb.update_frequency = Some(cfg.dns_refresh);
                lb.parallel_health_check = true;
                Selector::$variant(Arc::new(lb))
            }};
        }
        let selector = match cfg.balancing {
            Balancing::RoundRobin => balancer!(RoundRobin, RoundRobin),
            Balancing::ConsistentHash => balancer!(KetamaHashing, Hash),
        };
        let up = Upstreams {
            cfg: cfg.clone(),
            selector,
            ejected: Mutex::new(HashMap::new()),
        };
        up.refresh_selector()?;
        Ok(up)
    }

    fn refresh_selector(&self) -> Result<(), ConfigError> {
        use futures::FutureExt;
        let res = match &self.selector {
            Selector::RoundRobin(lb) => lb.update().now_or_never(),
            Selector::Hash(lb) => lb.update().now_or_never(),
        };
        match res {
            Some(Ok(())) => Ok(()),
            _ => Err(ConfigError("cannot build the coordinator balancer".into())),
        }
    }

    pub fn config(&self) -> &UpstreamConfig {
        &self.cfg
    }

    pub fn coordinators(&self) -> &[Coordinator] {
        &self.cfg.coordinators
    }

    pub fn coordinator(&self, id: CoordinatorId) -> &Coordinator {
        &self.cfg.coordinators[id]
    }

    /// The Pingora background service that runs the active health checks.
    pub fn health_service(&self) -> Box<dyn pingora::services::ServiceWithDependents> {
        use pingora::services::background::GenBackgroundService;
        let name = "coordinator health checks".to_string();
        match &self.selector {
            Selector::RoundRobin(lb) => Box::new(GenBackgroundService::new(name, lb.clone())),
            Selector::Hash(lb) => Box::new(GenBackgroundService::new(name, lb.clone())),
        }
    }

    fn is_ejected(&self, addr: &SocketAddr) -> bool {
        let mut map = self.ejected.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(addr) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                map.remove(addr);
                false
            }
            None => false,
        }
    }

    /// Passive ejection: an address that refused a connection is skipped until the next
    /// health-check window could have noticed it.
    pub fn eject(&self, target: Target) {
        let window = self
            .cfg
            .health_interval
            .saturating_mul(u32::try_from(self.cfg.failures_to_eject).unwrap_or(u32::MAX));
        let now = Instant::now();
        let until = now
            .checked_add(window)
            .unwrap_or(now + Duration::from_secs(3600));
        let mut map = self.ejected.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(target.addr, until);
    }

    fn backends(&self) -> Arc<BTreeSet<Backend>> {
        match &self.selector {
            Selector::RoundRobin(lb) => lb.backends().get_backend(),
            Selector::Hash(lb) => lb.backends().get_backend(),
        }
    }

    fn ready(&self, b: &Backend) -> bool {
        match &self.selector {
            Selector::RoundRobin(lb) => lb.backends().ready(b),
            Selector::Hash(lb) => lb.backends().ready(b),
        }
    }

    /// Whether any address of the coordinator is counted up by the health checks.
    pub fn is_healthy(&self, id: CoordinatorId) -> bool {
        self.backends().iter().any(|b| {
            b.ext.get::<CoordinatorId>() == Some(&id)
                && self.ready(b)
                && b.addr.as_inet().is_some_and(|a| !self.is_ejected(a))
        })
    }

    /// Whether every known address has been tried for this request.
    pub fn all_tried(&self, tried: &[Target]) -> bool {
        tried.len() >= self.backends().len()
    }

    /// Picks an address not yet tried for this request: healthy first; when none is, any
    /// untried one (health state may lag behind a recovery, and trying beats failing outright).
    pub fn select(&self, key: &[u8], tried: &[Target]) -> Option<Target> {
        let n = self.backends().len().max(1);
        let target_of = |b: &Backend| {
            Some(Target {
                id: *b.ext.get::<CoordinatorId>()?,
                addr: *b.addr.as_inet()?,
            })
        };
        let pick = |want_healthy: bool| {
            let accept = |b: &Backend, healthy: bool| {
                target_of(b).is_some_and(|t| {
                    !tried.contains(&t) && (!want_healthy || (healthy && !self.is_ejected(&t.addr)))
                })
            };
            match &self.selector {
                Selector::RoundRobin(lb) => lb.select_with(key, n * 4, accept),
                Selector::Hash(lb) => lb.select_with(key, n * 4, accept),
            }
        };
        pick(true)
            .or_else(|| pick(false))
            .as_ref()
            .and_then(target_of)
    }

    /// The peer for one attempt. Ordinary calls get the time-to-first-byte budget per read;
    /// event streams none here (`lifecycle::StreamWatchdog` ends idle ones).
    pub fn peer(&self, target: Target, streaming: bool) -> Box<HttpPeer> {
        let c = &self.cfg.coordinators[target.id];
        let sni = if c.tls { c.host.clone() } else { String::new() };
        let mut peer = Box::new(HttpPeer::new(target.addr, c.tls, sni));
        let o = &mut peer.options;
        o.connection_timeout = Some(self.cfg.connect_timeout);
        o.total_connection_timeout = Some(self.cfg.connect_timeout * 2);
        // Streams: the idle timeout is the lifecycle's watchdog (see there why not Pingora's).
        o.read_timeout = (!streaming).then_some(self.cfg.first_byte_timeout);
        o.write_timeout = Some(self.cfg.first_byte_timeout);
        // Below the coordinator's keep-alive so we never reuse a socket it already closed.
        o.idle_timeout = Some(self.cfg.idle_pool_timeout);
        peer
    }
}
