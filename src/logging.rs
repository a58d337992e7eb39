//! Log setup. `RUST_LOG` wins over the configured level so an operator can turn up one module.

pub fn init(level: &str) {
    let env = env_logger::Env::default().default_filter_or(level);
    let _ = env_logger::Builder::from_env(env)
        .format_timestamp_millis()
        .try_init();
}
