//! oob-mirror: copies every API exchange out-of-band to a security analysis node.
//!
//! Everything but `filter` and `dynmod` is host-free plain Rust with unit tests that run
//! natively and on wasm32 (`make test-wasm`); `filter` is the thin layer that talks to the
//! Proxy-Wasm host and exists only in the module built for Envoy (wasm32-wasip1); `dynmod` is
//! the thin layer of the Envoy dynamic module (feature `dynmod`, native targets).

pub mod accounting;
pub mod backoff;
pub mod batch;
pub mod body;
pub mod capture_budget;
pub mod config;
pub mod connection_facts;
pub mod encode;
pub mod extproc;
pub mod failure_log;
pub mod headers;
pub mod node_env;
pub mod record;
pub mod redact;
pub mod request_id;
pub mod select;
pub mod sha256;
pub mod shipper;

#[cfg(all(target_arch = "wasm32", target_os = "wasi"))]
mod filter;

// The same core as an Envoy dynamic module (a native shared library): `make dynmod`.
#[cfg(all(feature = "dynmod", not(target_arch = "wasm32")))]
mod dynmod;
