//! `pingora-baseline`: the smallest Pingora 0.9 reverse proxy (one upstream, keep-alive pool,
//! no hooks besides choosing the peer). Not a product: the benchmark runs it as a reference row
//! so that the table separates what Pingora itself costs from what our gateway adds on top.
//!
//! `pingora-baseline --upstream 127.0.0.1:8081 --port 8090 --threads 1`

use async_trait::async_trait;
use clap::Parser;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::prelude::*;
use pingora::server::configuration::{Opt, ServerConf};

#[derive(Parser, Debug)]
struct Args {
    /// host:port of the upstream
    #[arg(long)]
    upstream: String,
    #[arg(long, default_value_t = 8090)]
    port: u16,
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Per-connection L4 read buffer of the listener, bytes [Pingora's default: 64 KiB,
    /// allocated zero-filled for every accepted connection]
    #[arg(long)]
    read_buffer: Option<usize>,
}

struct Baseline {
    upstream: String,
}

#[async_trait]
impl ProxyHttp for Baseline {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.upstream.as_str(),
            false,
            String::new(),
        )))
    }
}

fn main() {
    let args = Args::parse();
    let conf = ServerConf {
        threads: args.threads,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        upgrade_sock: format!("/tmp/pingora-baseline-{}.sock", std::process::id()),
        pid_file: format!("/tmp/pingora-baseline-{}.pid", std::process::id()),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service(
        &server.configuration,
        Baseline {
            upstream: args.upstream,
        },
    );
    let addr = format!("127.0.0.1:{}", args.port);
    match args.read_buffer {
        Some(read) => proxy.add_listener(
            ListenerConfig::tcp(addr).l4_buffer(L4BufferSettings::default().read(read)),
        ),
        None => proxy.add_tcp(&addr),
    }
    server.add_service(proxy);
    server.run_forever();
}
