//! Shared end-to-end harness: a real Envoy running the oob-mirror module, a
//! test upstream, a test analysis node (`oob-mirror-node`) and client helpers.
//!
//! Each integration test file includes this module with `mod support;`; not
//! every test file uses every helper.
#![allow(dead_code, unused_imports)]

pub mod client;
pub mod envoy;
pub mod extproc;
pub mod load;
pub mod oci;
pub mod paths;
/// A CA and certificates made in the test; the node's own tests use the same file.
#[path = "../../node/tests/common/pki.rs"]
pub mod pki;
pub mod ports;
pub mod raw_http;
pub mod records;
pub mod shop;
pub mod stats;
pub mod upstream;
pub mod wait;
pub mod workload;

use std::time::Duration;

pub use envoy::{Envoy, EnvoyConfig};
pub use upstream::Upstream;

/// Generous bound for "eventually" checks (records reaching the node, gauges
/// draining). Polls return as soon as the condition holds.
pub const EVENTUALLY: Duration = Duration::from_secs(10);

/// Everything one filter test needs: Envoy with the filter, a test upstream,
/// a test node, and a client. Fields drop in order: Envoy first.
pub struct Rig {
    pub envoy: Envoy,
    pub node: records::Node,
    pub upstream: Upstream,
    pub client: client::Client,
}

impl Rig {
    /// The filter with the default plugin configuration.
    pub fn start() -> Rig {
        Rig::start_with(|c| c)
    }

    /// The filter, with the configuration adjusted by `f`.
    pub fn start_with(f: impl FnOnce(EnvoyConfig) -> EnvoyConfig) -> Rig {
        let upstream = Upstream::start();
        let node = records::start_node();
        let envoy = Envoy::start(&f(EnvoyConfig::new(upstream.port(), node.port())));
        Rig {
            envoy,
            node,
            upstream,
            client: client::Client::new(),
        }
    }

    pub fn send(&self, req: &client::Req) -> client::Resp {
        self.client.send(self.envoy.addr(), req)
    }

    pub fn stats(&self) -> stats::Stats {
        stats::read(&self.envoy)
    }
}
