//! What arrives at the node, and how it is read.
//!
//! - [`wire`]: batch body → [`record::Record`]s, strict on what the format promises.
//! - [`record`]: the typed record.
//! - [`json`]: a record as one line of JSON (`--print-records`).
//! - [`extproc`]: an Envoy ext_proc stream (observability mode) read into an exchange.
//! - [`security`]: TLS on the listener and the headers the node can require.

pub mod extproc;
pub mod json;
pub mod record;
pub mod security;
pub mod server;
pub mod wire;
