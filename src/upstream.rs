//! The coordinators: selection (Pingora's load balancer), active health checks against each
//! coordinator's `GET /v1/health`, passive ejection after connection failures, and the
//! `HttpPeer` settings (timeouts, pooling) every forwarded request uses.

use crate::config::{Balancing, ConfigError, Coordinator, UpstreamConfig};
use async_trait::async_trait;
use once_cell::sync::OnceCell;
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

enum Selector {
    RoundRobin(Arc<LoadBalancer<RoundRobin>>),
    Hash(Arc<LoadBalancer<KetamaHashing>>),
}

pub struct Upstreams {
    cfg: UpstreamConfig,
    addrs: Vec<SocketAddr>,
    selector: Selector,
    /// Coordinators that refused or dropped a connection recently, until when.
    ejected: Mutex<HashMap<CoordinatorId, Instant>>,
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

fn resolve(c: &Coordinator) -> Result<SocketAddr, ConfigError> {
    (c.host.as_str(), c.port)
        .to_socket_addrs()
        .map_err(|e| {
            ConfigError(format!(
                "coordinator {}: cannot resolve host: {e}",
                c.base_url
            ))
        })?
        .next()
        .ok_or_else(|| ConfigError(format!("coordinator {}: host has no address", c.base_url)))
}

fn backends(cfg: &UpstreamConfig, addrs: &[SocketAddr]) -> Backends {
    let set: BTreeSet<Backend> = cfg
        .coordinators
        .iter()
        .zip(addrs)
        .enumerate()
        .map(|(i, (c, addr))| {
            let mut b = Backend {
                addr: PingoraAddr::Inet(*addr),
                weight: c.weight,
                ext: Default::default(),
            };
            b.ext.insert(i as CoordinatorId);
            b
        })
        .collect();
    Backends::new(pingora::lb::discovery::Static::new(set))
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

/// Active health check: a coordinator is healthy when `/v1/health` answers 2xx with a status
/// other than `down`.
struct CoordinatorHealthCheck {
    urls: HashMap<SocketAddr, String>,
    timeout: Duration,
    failures: usize,
    successes: usize,
}

#[async_trait]
impl HealthCheck for CoordinatorHealthCheck {
    async fn check(&self, target: &Backend) -> pingora::Result<()> {
        let addr = target.addr.as_inet().copied();
        let url = addr.and_then(|a| self.urls.get(&a)).ok_or_else(|| {
            pingora::Error::explain(pingora::ErrorType::InternalError, "unknown coordinator")
        })?;
        let p = probe(url, self.timeout).await;
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
        let url = target
            .addr
            .as_inet()
            .and_then(|a| self.urls.get(a))
            .map(String::as_str)
            .unwrap_or("?");
        if healthy {
            log::info!("coordinator {url} is healthy again");
        } else {
            log::warn!("coordinator {url} failed its health checks: ejected");
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
    /// Resolves every coordinator and builds the balancer. Host names are resolved once, here.
    pub fn new(cfg: &UpstreamConfig) -> Result<Upstreams, ConfigError> {
        let addrs = cfg
            .coordinators
            .iter()
            .map(resolve)
            .collect::<Result<Vec<_>, _>>()?;
        let hc = || {
            Box::new(CoordinatorHealthCheck {
                urls: cfg
                    .coordinators
                    .iter()
                    .zip(&addrs)
                    .map(|(c, a)| (*a, c.base_url.clone()))
                    .collect(),
                timeout: cfg.health_timeout,
                failures: cfg.failures_to_eject,
                successes: cfg.successes_to_restore,
            })
        };
        let selector = match cfg.balancing {
            Balancing::RoundRobin => {
                let mut lb = LoadBalancer::<RoundRobin>::from_backends(backends(cfg, &addrs));
                lb.set_health_check(hc());
                lb.health_check_frequency = Some(cfg.health_interval);
                lb.parallel_health_check = true;
                Selector::RoundRobin(Arc::new(lb))
            }
            Balancing::ConsistentHash => {
                let mut lb = LoadBalancer::<KetamaHashing>::from_backends(backends(cfg, &addrs));
                lb.set_health_check(hc());
                lb.health_check_frequency = Some(cfg.health_interval);
                lb.parallel_health_check = true;
                Selector::Hash(Arc::new(lb))
            }
        };
        let up = Upstreams {
            cfg: cfg.clone(),
            addrs,
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

    fn is_ejected(&self, id: CoordinatorId) -> bool {
        let mut map = self.ejected.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&id) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                map.remove(&id);
                false
            }
            None => false,
        }
    }

    /// Passive ejection: a coordinator that refused a connection is skipped until the next
    /// health-check window could have noticed it.
    pub fn eject(&self, id: CoordinatorId) {
        let until = Instant::now() + self.cfg.health_interval * self.cfg.failures_to_eject as u32;
        let mut map = self.ejected.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(id, until);
    }

    /// Whether the active health checks currently count the coordinator as up.
    pub fn is_healthy(&self, id: CoordinatorId) -> bool {
        let Some(addr) = self.addrs.get(id) else {
            return false;
        };
        let b = Backend {
            addr: PingoraAddr::Inet(*addr),
            weight: self.cfg.coordinators[id].weight,
            ext: Default::default(),
        };
        let ready = match &self.selector {
            Selector::RoundRobin(lb) => lb.backends().ready(&b),
            Selector::Hash(lb) => lb.backends().ready(&b),
        };
        ready && !self.is_ejected(id)
    }

    /// Picks a coordinator not yet tried for this request: healthy first; when none is, any
    /// untried one (health state may lag behind a recovery, and trying beats failing outright).
    pub fn select(&self, key: &[u8], tried: &[CoordinatorId]) -> Option<CoordinatorId> {
        let n = self.cfg.coordinators.len();
        let id_of = |b: &Backend| b.ext.get::<CoordinatorId>().copied();
        let pick = |want_healthy: bool| {
            let accept = |b: &Backend, healthy: bool| {
                id_of(b).is_some_and(|id| {
                    !tried.contains(&id) && (!want_healthy || (healthy && !self.is_ejected(id)))
                })
            };
            match &self.selector {
                Selector::RoundRobin(lb) => lb.select_with(key, n * 4, accept),
                Selector::Hash(lb) => lb.select_with(key, n * 4, accept),
            }
        };
        pick(true).or_else(|| pick(false)).as_ref().and_then(id_of)
    }

    /// The peer for one attempt. `streaming` selects the per-read idle timeout of event streams
    /// instead of the time-to-first-byte budget of ordinary calls.
    pub fn peer(&self, id: CoordinatorId, streaming: bool) -> Box<HttpPeer> {
        let c = &self.cfg.coordinators[id];
        let sni = if c.tls { c.host.clone() } else { String::new() };
        let mut peer = Box::new(HttpPeer::new(self.addrs[id], c.tls, sni));
        let o = &mut peer.options;
        o.connection_timeout = Some(self.cfg.connect_timeout);
        o.total_connection_timeout = Some(self.cfg.connect_timeout * 2);
        o.read_timeout = Some(if streaming {
            self.cfg.stream_idle_timeout
        } else {
            self.cfg.first_byte_timeout
        });
        o.write_timeout = Some(self.cfg.first_byte_timeout);
        // Below the coordinator's keep-alive so we never reuse a socket it already closed.
        o.idle_timeout = Some(self.cfg.idle_pool_timeout);
        peer
    }
}
