//! Turns a `Config` into a running Pingora server: the proxy service on the public listener and
//! the background services (coordinator health checks, JWKS refresh).

use crate::admin::{Admin, AdminService};
use crate::auth::exchange::TokenBroker;
use crate::auth::Authenticator;
use crate::config::{Config, ConfigError};
use crate::connections::{Admission, Connections};
use crate::lifecycle::{Drainer, Lifecycle, StreamWatchdog};
use crate::proxy::{Gateway, State};
use crate::upstream::Upstreams;
use async_trait::async_trait;
use pingora::listeners::ListenerConfig;
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{BackgroundService, GenBackgroundService};
use pingora::services::listening::Service;
use std::sync::Arc;

/// Pingora's default: one TCP segment, so a small answer leaves in one write.
const CLIENT_WRITE_BUFFER: usize = 1460;

/// Process-level switches that Pingora itself acts on.
#[derive(Debug, Default, Clone)]
pub struct ProcessOpts {
    /// Take the listening sockets over from a running instance (zero-downtime upgrade).
    pub upgrade: bool,
    pub daemon: bool,
}

/// Everything that can fail before the server starts, so `--check` can run it too.
pub fn build_state(cfg: Config) -> Result<Arc<State>, ConfigError> {
    let upstreams = Upstreams::new(&cfg.upstream)?;
    let auth = Authenticator::new(&cfg.auth, cfg.max_token_bytes);
    let broker = TokenBroker::new(&cfg.auth, &cfg.upstream.audience);
    let connections = Connections::new(cfg.max_connections, cfg.header_read_timeout);
    Ok(Arc::new(State {
        cfg,
        upstreams,
        auth,
        broker,
        metrics: Default::default(),
        lifecycle: Lifecycle::new(),
        connections,
    }))
}

fn server_conf(cfg: &Config, opts: &ProcessOpts) -> ServerConf {
    ServerConf {
        daemon: opts.daemon,
        threads: cfg.threads,
        // Our drainer exits the process itself (early when idle, at our deadline otherwise);
        // Pingora's own sleep is only the backstop behind it.
        grace_period_seconds: Some(
            cfg.grace_period
                .as_secs()
                .saturating_add(cfg.graceful_shutdown_timeout.as_secs())
                .saturating_add(2),
        ),
        graceful_shutdown_timeout_seconds: Some(cfg.graceful_shutdown_timeout.as_secs()),
        upgrade_sock: cfg.upgrade_sock.clone(),
        pid_file: cfg.pid_file.clone(),
        ..ServerConf::default()
    }
}

struct JwksRefresh(Arc<Authenticator>);

/// Marks the process ready once the server runs its services (listeners are bound by then).
struct Readiness(Arc<Lifecycle>);

#[async_trait]
impl BackgroundService for Readiness {
    async fn start(&self, _shutdown: ShutdownWatch) {
        self.0.set_ready();
    }
}

#[async_trait]
impl BackgroundService for JwksRefresh {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        tokio::select! {
            _ = self.0.clone().run_refresh_loop() => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// The admin listener, bound before the server starts so that a bad address fails startup.
pub fn bind_admin(state: &Arc<State>) -> Result<Option<AdminService>, ConfigError> {
    match &state.cfg.admin_listen {
        None => Ok(None),
        Some(addr) => AdminService::bind(
            Admin {
                state: state.clone(),
            },
            addr,
        )
        .map(Some),
    }
}

pub fn build_server(state: Arc<State>, admin: Option<AdminService>, opts: &ProcessOpts) -> Server {
    let cfg = &state.cfg;
    let opt = Opt {
        upgrade: opts.upgrade,
        daemon: opts.daemon,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, server_conf(cfg, opts));
    server.bootstrap();

    let addr = if cfg.host.contains(':') && !cfg.host.starts_with('[') {
        format!("[{}]:{}", cfg.host, cfg.port)
    } else {
        format!("{}:{}", cfg.host, cfg.port)
    };
    let proxy = pingora::proxy::http_proxy(&server.configuration, Gateway::new(state.clone()));
    let mut proxy = Service::new(
        "arp-run-gateway".to_string(),
        Admission::new(proxy, state.connections.clone()),
    );
    // Pingora gives every client connection a 64 KiB read buffer by default; the proxy parses
    // heads and bodies into buffers of its own, so reading the socket directly only saves a
    // copy and 64 KiB per open connection (an event stream holds its connection for minutes).
    proxy.add_listener(
        ListenerConfig::tcp(addr).l4_buffer(L4BufferSettings::new(0, CLIENT_WRITE_BUFFER)),
    );
    server.add_service(proxy);
    server.add_boxed_service(state.upstreams.health_service());
    server.add_service(GenBackgroundService::new(
        "jwks refresh".to_string(),
        Arc::new(JwksRefresh(state.auth.clone())),
    ));
    server.add_service(GenBackgroundService::new(
        "stream idle watchdog".to_string(),
        Arc::new(StreamWatchdog {
            lifecycle: state.lifecycle.clone(),
            idle: cfg.upstream.stream_idle_timeout,
        }),
    ));
    server.add_service(GenBackgroundService::new(
        "memory trim".to_string(),
        Arc::new(crate::memory::Trimmer {
            interval: cfg.memory_trim,
        }),
    ));
    server.add_service(GenBackgroundService::new(
        "drain".to_string(),
        Arc::new(Drainer {
            lifecycle: state.lifecycle.clone(),
            grace: cfg.grace_period,
            cut_timeout: cfg.graceful_shutdown_timeout,
        }),
    ));
    if let Some(admin) = admin {
        server.add_service(GenBackgroundService::new(
            "admin".to_string(),
            Arc::new(admin),
        ));
    }
    server.add_service(GenBackgroundService::new(
        "readiness".to_string(),
        Arc::new(Readiness(state.lifecycle.clone())),
    ));
    server
}
