//! Log setup. `RUST_LOG` wins over the configured level so an operator can turn up one module,
//! but records of other crates are capped at `info`: Pingora's debug and trace output prints
//! whole request heads, `Authorization` included, and a token must never reach a log.

use log::{Level, LevelFilter, Log, Metadata, Record};

/// Targets of this crate (library and binary) may log at any level.
fn is_ours(target: &str) -> bool {
    target.starts_with("rungateway")
        || target.starts_with("arp_jarvis_rungateway")
        || target == "access"
}

fn allowed(meta: &Metadata<'_>) -> bool {
    meta.level() <= Level::Info || is_ours(meta.target())
}

struct Capped(env_logger::Logger);

impl Log for Capped {
    fn enabled(&self, meta: &Metadata<'_>) -> bool {
        allowed(meta) && self.0.enabled(meta)
    }

    fn log(&self, record: &Record<'_>) {
        if allowed(record.metadata()) {
            self.0.log(record);
        }
    }

    fn flush(&self) {
        self.0.flush();
    }
}

pub fn init(level: &str) {
    let env = env_logger::Env::default().default_filter_or(level);
    let logger = env_logger::Builder::from_env(env)
        .format_timestamp_millis()
        .build();
    let max: LevelFilter = logger.filter();
    if log::set_boxed_logger(Box::new(Capped(logger))).is_ok() {
        log::set_max_level(max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_debug_is_dropped_ours_is_kept() {
        let m = |target, level| Metadata::builder().target(target).level(level).build();
        assert!(!allowed(&m("pingora_proxy::proxy_h1", Level::Debug)));
        assert!(!allowed(&m("hyper::proto", Level::Trace)));
        assert!(allowed(&m("pingora_core::server", Level::Info)));
        assert!(allowed(&m("rungateway::auth::jwks", Level::Debug)));
        assert!(allowed(&m("access", Level::Info)));
    }
}
