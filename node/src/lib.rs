//! Reference reader of the oob-mirror wire format (docs/wire-format.md) and
//! a test analysis node.
//!
//! - [`decode`]: batch body → [`Record`]s, strict on what the format promises.
//! - [`record`]: the typed record.
//! - [`json`]: one-line JSON rendering, as printed by the `oob-mirror-node` CLI.
//! - [`detect`]: `--detect`, OWASP CRS on the exchanges received.
//! - [`node`]: an in-process HTTP/1.1 + h2c node with scriptable answers, for
//!   end-to-end tests.
//! - [`security`]: TLS on the node's listener and the headers it can require.
//!
//! This crate runs on the host only; the filter (built for wasm) never
//! depends on it.

pub mod decode;
pub mod detect;
pub mod json;
pub mod node;
pub mod record;
pub mod security;

pub use decode::{decode_batch, decode_record, DecodeError, DecodeErrorKind, VERSION};
pub use json::{to_json, to_json_line};
pub use node::{
    BatchHook, BatchInfo, Behavior, GateHook, Node, NodeConfig, Page, PageHook, TlsErrorHook,
    WaitError,
};
pub use record::{HeaderList, HeaderValue, Kind, Record};
pub use security::{RequiredHeaders, TlsConfig};
