//! The oob-mirror analysis node, in the order an exchange goes through it:
//!
//! - [`intake`]: what arrives. Batches in wire format v1 (docs/wire-format.md) and Envoy
//!   ext_proc streams, over HTTP/1.1, h2c or TLS, with the headers the node can require.
//! - [`pairing`]: a request record and its response record become one [`pairing::Exchange`],
//!   with bounded memory; bodies are decompressed with a bound.
//! - [`analysis`]: OWASP CRS by libmodsecurity 3 on a pool of threads, detection only.
//! - [`redact`]: values the filter left in clear for the node, replaced by their markers once
//!   analysed, before anything leaves memory.
//! - [`report`]: the JSON line of a detection, the `/attacks` page and `/metrics`.
//! - [`inventory`]: API discovery, every analysed exchange's endpoint, fields, types,
//!   authentication and sensitive data, an OpenAPI export, shadow and zombie endpoints.
//! - [`store`]: every detection with its exchange, in SQLite or PostgreSQL, with retention.
//! - [`web`]: what is served on `GET`.
//! - [`app`]: all of it assembled, as the binary runs it.
//!
//! This crate runs on the host only; the filter (built for wasm) never depends on it.

pub mod analysis;
pub mod app;
pub mod intake;
pub mod inventory;
pub mod pairing;
pub mod redact;
pub mod report;
pub mod store;
pub mod web;

pub use intake::json::{to_json, to_json_line};
pub use intake::record::{HeaderList, HeaderValue, Kind, Record};
pub use intake::security::{RequiredHeaders, TlsConfig};
pub use intake::wire::{decode_batch, decode_record, DecodeError, DecodeErrorKind, VERSION};
