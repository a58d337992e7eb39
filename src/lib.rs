//! ARP v1 Run Gateway on Pingora. The binary (`main.rs`) is a thin shell over this library so
//! that tests and benches use the same code.

pub mod config;
pub mod errors;
