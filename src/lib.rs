//! oob-mirror: copies every API exchange out-of-band to a security analysis node.
//!
//! Everything but `filter` is host-free plain Rust with native unit tests; `filter` is the
//! thin layer that talks to the Proxy-Wasm host and exists only in the wasm32 build.

pub mod accounting;
pub mod backoff;
pub mod batch;
pub mod body;
pub mod capture_budget;
pub mod config;
pub mod encode;
pub mod record;
pub mod request_id;
pub mod shipper;

#[cfg(target_arch = "wasm32")]
mod filter;
