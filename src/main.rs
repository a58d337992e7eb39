//! `arp-jarvis-rungateway`: a thin shell. Parsing, configuration and the server live in the
//! library so that tests and benches run the same code.

use clap::Parser;
use rungateway::config::{CliOverrides, Config};
use rungateway::server::{build_server, build_state, ProcessOpts};
use std::path::PathBuf;

/// ARP v1 Run Gateway: an authenticating reverse proxy in front of Run Coordinators.
#[derive(Parser, Debug)]
#[command(name = "arp-jarvis-rungateway", version)]
struct Cli {
    /// Address to listen on [default: 127.0.0.1, or server.host in the YAML file]
    #[arg(long)]
    host: Option<String>,
    /// Port to listen on [default: 8080, or server.port in the YAML file]
    #[arg(long)]
    port: Option<u16>,
    /// YAML configuration file (see conf/gateway.yaml); environment variables win over it
    #[arg(long, short = 'c', env = "ARP_GATEWAY_CONFIG")]
    config: Option<PathBuf>,
    /// Validate the configuration and exit
    #[arg(long)]
    check: bool,
    /// Take over the listening sockets of a running gateway (zero-downtime upgrade)
    #[arg(long, short = 'u')]
    upgrade: bool,
    /// Run in the background
    #[arg(long, short = 'd')]
    daemon: bool,
}

fn load_dotenv() {
    // `.env.local` wins over `.env`; neither overrides a variable already set.
    for name in [".env.local", ".env"] {
        if std::path::Path::new(name).exists() {
            if let Err(e) = dotenvy::from_filename(name) {
                eprintln!("arp-jarvis-rungateway: cannot load {name}: {e}");
                std::process::exit(2);
            }
            break;
        }
    }
}

fn main() {
    rungateway::auth::install_crypto_provider();
    let cli = Cli::parse();
    load_dotenv();
    let env = std::env::vars().collect();
    let overrides = CliOverrides {
        host: cli.host.clone(),
        port: cli.port,
    };
    let cfg = match Config::load(cli.config.as_deref(), &env, &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("arp-jarvis-rungateway: configuration error: {e}");
            std::process::exit(2);
        }
    };
    rungateway::logging::init(&cfg.log_level);
    if let Err(e) = rungateway::auth::self_test() {
        eprintln!("arp-jarvis-rungateway: JWT backend self-test failed: {e}");
        std::process::exit(2);
    }
    for w in rungateway::auth::config_warnings(&cfg.auth) {
        log::warn!("{w}");
    }
    if cli.check {
        // Host names are not resolved here: DNS belongs to the environment the gateway runs in,
        // not to the file being checked.
        println!("configuration OK");
        return;
    }
    let state = match build_state(cfg) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("arp-jarvis-rungateway: configuration error: {e}");
            std::process::exit(2);
        }
    };
    log::info!(
        "listening on {}:{}, {} coordinator(s), auth mode {:?}",
        state.cfg.host,
        state.cfg.port,
        state.upstreams.coordinators().len(),
        state.cfg.auth.mode
    );
    let opts = ProcessOpts {
        upgrade: cli.upgrade,
        daemon: cli.daemon,
    };
    let admin = match rungateway::server::bind_admin(&state) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("arp-jarvis-rungateway: configuration error: {e}");
            std::process::exit(2);
        }
    };
    build_server(state, admin, &opts).run_forever();
}
