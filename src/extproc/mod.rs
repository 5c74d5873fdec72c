//! The ext_proc protocol: each exchange goes to the node as the gRPC stream Envoy's own ext_proc
//! filter would open in observability mode (`envoy.service.ext_proc.v3.ExternalProcessor/Process`),
//! so an existing ext_proc server (a Wallarm Native Node, for one) reads it unchanged. Beside
//! the batch transport (`shipper`), with its own accounting (`streams`).

pub mod attributes;
pub mod encode;
pub mod streams;
