//! ARP v1 Run Gateway on Pingora. The binary (`main.rs`) is a thin shell over this library so
//! that tests and benches use the same code.

pub mod admin;
pub mod auth;
pub mod config;
pub mod connections;
pub mod direct;
pub mod errors;
pub mod events;
pub mod headers;
pub mod lifecycle;
pub mod local;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod proxy;
pub mod routes;
pub mod server;
pub mod upstream;
pub mod validate;
