//! ARP v1 Run Gateway on Pingora. The binary (`main.rs`) is a thin shell over this library so
//! that tests and benches use the same code.

pub mod config;
pub mod errors;
pub mod events;
pub mod headers;
pub mod local;
pub mod logging;
pub mod metrics;
pub mod routes;
pub mod upstream;
pub mod validate;
