//! TLS from Envoy to the analysis node, under the real Envoy, with a CA made in the test. Envoy
//! runs the node cluster's `transport_socket` and the filter configuration shipped in
//! `envoy/envoy-tls.yaml` (batches, a token header from the VM environment) or
//! `envoy/envoy-extproc.yaml` (ext_proc, h2 by ALPN), only trusting the test CA instead of the
//! operator's file: every record reaches a node that speaks only TLS (and requires the token);
//! a node whose certificate fails Envoy's checks (another CA, another name) gets nothing, the
//! filter counts every record as dropped, and client traffic is unharmed; a cluster without TLS
//! gets nothing through either.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oob_mirror_node::pairing::Exchange;
use oob_mirror_node::{RequiredHeaders, TlsConfig};
use recording_node::NodeConfig;
use serde_json::{json, Value};
use support::client::{Client, Proto, Req};
use support::paths::{repo_root, TempDir};
use support::pki::Ca;
use support::records::{distinct_records, wait_exchange, Node};
use support::stats::{self, envoy_stat, Stats};
use support::upstream::{fnv1a64, pattern};
use support::wait::poll_until;
use support::{raw_http, Envoy, EnvoyConfig, Upstream, EVENTUALLY};

/// The shipped bootstraps whose node cluster originates TLS.
const BATCH_BOOTSTRAP: &str = "envoy/envoy-tls.yaml";
const EXTPROC_BOOTSTRAP: &str = "envoy/envoy-extproc.yaml";
const EXCHANGES: usize = 12;
/// Settling after failures takes the filter's backoff into account.
const SETTLE: Duration = Duration::from_secs(30);

/// A test CA, written where Envoy reads it, and a shipped bootstrap's node settings with it.
struct Shipped {
    ca: Ca,
    /// The node cluster's `transport_socket`, trusting the test CA.
    socket: Value,
    /// The name Envoy sends as SNI and checks in the node's certificate.
    name: String,
    /// The filter configuration, its node cluster renamed to the harness's.
    plugin: Value,
    /// `node.headers` read from the VM environment: name, variable, the test's value.
    headers: Vec<(String, String, String)>,
    _dir: TempDir,
}

impl Shipped {
    fn new(bootstrap: &str) -> Shipped {
        let dir = TempDir::new("tls");
        let ca = Ca::new("oob-mirror test CA");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        let text = std::fs::read_to_string(repo_root().join(bootstrap)).unwrap();
        let yaml: serde_norway::Value = serde_norway::from_str(&text).unwrap();
        let parsed: Value = serde_json::to_value(yaml).unwrap();
        let (socket, name) = tls_of(bootstrap, &parsed, &ca_file);
        let mut plugin = plugin_of(bootstrap, &parsed);
        plugin["node"]["cluster"] = json!("oob_mirror_node");
        let headers = plugin["node"]["headers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|h| {
                let var = h["value_env"].as_str()?;
                let value = format!("Bearer {var}-test-value");
                Some((h["name"].as_str()?.to_owned(), var.to_owned(), value))
            })
            .collect();
        Shipped {
            ca,
            socket,
            name,
            plugin,
            headers,
            _dir: dir,
        }
    }

    /// Envoy as shipped, to a node on `node_port`.
    fn envoy(&self, upstream: &Upstream, node_port: u16) -> EnvoyConfig {
        self.envoy_without_tls(upstream, node_port)
            .node_transport_socket(self.socket.clone())
    }

    /// The same Envoy, its node cluster without TLS.
    fn envoy_without_tls(&self, upstream: &Upstream, node_port: u16) -> EnvoyConfig {
        let mut config =
            EnvoyConfig::new(upstream.port(), node_port).plugin(self.plugin.to_string());
        if self.plugin["node"]["protocol"] == "ext_proc" {
            config = config.node_http2();
        }
        for (_, var, value) in &self.headers {
            config = config.vm_env(var, value);
        }
        config
    }

    /// A node serving TLS only with a certificate for `names` from `issuer`, requiring the
    /// shipped headers.
    fn node(&self, issuer: &Ca, names: &[&str], config: NodeConfig) -> Node {
        let leaf = issuer.issue(names);
        let tls = TlsConfig::from_pem(leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes()).unwrap();
        let mut require = RequiredHeaders::default();
        for (name, _, value) in &self.headers {
            require.add(name, value).unwrap();
        }
        Node::start_with(NodeConfig {
            tls: Some(tls),
            require_headers: require,
            ..config
        })
        .unwrap()
    }

    /// A node with the right certificate.
    fn good_node(&self, config: NodeConfig) -> Node {
        self.node(&self.ca, &[&self.name], config)
    }
}

/// The `transport_socket` of the one cluster that has one, trusting `ca_file` instead of the
/// operator's CA path; and its SNI.
fn tls_of(bootstrap: &str, parsed: &Value, ca_file: &Path) -> (Value, String) {
    let sockets: Vec<&Value> = parsed["static_resources"]["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c.get("transport_socket"))
        .collect();
    assert_eq!(
        sockets.len(),
        1,
        "{bootstrap}: one cluster with TLS expected"
    );
    let mut socket = sockets[0].clone();
    let tls = &mut socket["typed_config"];
    let ca = &mut tls["common_tls_context"]["validation_context"]["trusted_ca"]["filename"];
    assert!(ca.is_string(), "{bootstrap}: no trusted_ca file: {tls:#}");
    *ca = json!(ca_file.display().to_string());
    let name = tls["sni"].as_str().unwrap().to_owned();
    (socket, name)
}

/// The filter configuration of the one oob-mirror filter of the bootstrap.
fn plugin_of(bootstrap: &str, parsed: &Value) -> Value {
    fn find(v: &Value, found: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                if v["root_id"] == "oob_mirror" {
                    found.push(v["configuration"]["value"].as_str().unwrap().to_owned());
                }
                map.values().for_each(|v| find(v, found));
            }
            Value::Array(items) => items.iter().for_each(|v| find(v, found)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    find(parsed, &mut found);
    assert_eq!(
        found.len(),
        1,
        "{bootstrap}: one oob-mirror filter expected"
    );
    serde_json::from_str(&found[0]).unwrap()
}

/// Exchange `i`: HTTP/1.1 and HTTP/2, bodies both ways, statuses other than 200; each named by
/// its `x-request-id`.
fn request(tag: &str, i: usize) -> (String, Req) {
    let id = format!("{tag}-{i}");
    let req = match i % 4 {
        0 => Req::get(&format!("/download/{}", 1000 + i)),
        1 => Req::post("/upload-sha", pattern(50_000 + i)).proto(Proto::H2),
        2 => Req::get(&format!("/status/{}", 400 + i)),
        _ => Req::get("/status/201").proto(Proto::H2),
    };
    (id.clone(), req.header("x-request-id", id))
}

/// Sends the exchanges and checks each answer is the upstream's own.
fn send_traffic(client: &Client, envoy: &Envoy, tag: &str) -> Vec<String> {
    (0..EXCHANGES)
        .map(|i| {
            let (id, req) = request(tag, i);
            let resp = client.send(envoy.addr(), &req);
            match i % 4 {
                0 => {
                    assert_eq!(resp.status, 200, "{id}");
                    assert!(resp.body == pattern(1000 + i), "{id}: wrong body");
                }
                1 => {
                    assert_eq!(resp.status, 200, "{id}");
                    let v: Value = serde_json::from_slice(&resp.body).unwrap();
                    let sent = pattern(50_000 + i);
                    assert_eq!(v["len"], sent.len(), "{id}");
                    assert_eq!(v["fnv1a64"], fnv1a64(&sent), "{id}");
                }
                2 => {
                    assert_eq!(resp.status, 400 + i as u16, "{id}");
                    assert_eq!(resp.body_str(), format!("status {}", 400 + i), "{id}");
                }
                _ => assert_eq!((resp.status, resp.body_str().as_str()), (201, "status 201")),
            }
            id
        })
        .collect()
}

/// Every record dropped for a node failure once settled, nothing sent; the metrics.
fn assert_all_dropped(envoy: &Envoy) -> Stats {
    let n = EXCHANGES as i128;
    let st = stats::wait_drained_and(envoy, SETTLE, |s| s.get("records_captured") == 2 * n);
    assert_eq!(st.get("records_sent"), 0, "{st:?}");
    assert_eq!(st.get("batches_sent"), 0, "{st:?}");
    assert_eq!(st.get("records_dropped_node_failure"), 2 * n, "{st:?}");
    assert_eq!(st.get("records_dropped_queue_full"), 0, "{st:?}");
    assert!(st.batches_failed() > 0, "{st:?}");
    envoy.assert_no_critical_wasm();
    st
}

#[test]
fn every_record_reaches_a_tls_node_and_nothing_goes_in_plaintext() {
    let shipped = Shipped::new(BATCH_BOOTSTRAP);
    assert!(
        !shipped.headers.is_empty(),
        "{BATCH_BOOTSTRAP}: no node.headers"
    );
    let upstream = Upstream::start();
    let node = shipped.good_node(NodeConfig::default());
    let envoy = Envoy::start(&shipped.envoy(&upstream, node.port()));
    let client = Client::new();
    let ids = send_traffic(&client, &envoy, "tls");

    for (i, id) in ids.iter().enumerate() {
        let (req, resp) = wait_exchange(&envoy, &node, id, EVENTUALLY);
        assert_eq!(
            req.header("x-request-id").unwrap().as_str(),
            Some(id.as_str())
        );
        let status = resp.status.unwrap();
        match i % 4 {
            0 => assert_eq!(resp.body, pattern(1000 + i), "{id}"),
            1 => assert_eq!(req.body, pattern(50_000 + i), "{id}"),
            2 => assert_eq!(status, 400 + i as u16, "{id}"),
            _ => assert_eq!(status, 201, "{id}"),
        }
    }
    let st = stats::read(&envoy);
    let records = node.records();
    let n = 2 * EXCHANGES;
    assert_eq!((records.len(), distinct_records(&records)), (n, n));
    assert_eq!(st.get("records_captured"), n as i128, "{st:?}");
    assert_eq!(st.get("records_sent"), n as i128, "{st:?}");
    assert_eq!(st.dropped(), 0, "{st:?}");
    assert_eq!(st.batches_failed(), 0, "{st:?}");
    assert_eq!(node.requests_unauthenticated(), 0);
    assert!(node.tls_handshakes() > 0);
    assert_eq!(node.tls_handshakes_failed(), 0);
    assert_eq!(
        envoy_stat(&envoy, "cluster.oob_mirror_node.ssl.handshake"),
        i128::from(u32::try_from(node.tls_handshakes()).unwrap())
    );

    // The node speaks only TLS: a plain HTTP request gets no answer, and is counted.
    let plain = raw_http::get(node.addr(), "/metrics", Duration::from_secs(5));
    assert!(plain.is_err(), "plain HTTP answered: {plain:?}");
    assert!(
        poll_until(EVENTUALLY, || (node.tls_handshakes_failed() == 1)
            .then_some(()))
        .is_some(),
        "failed handshakes: {}",
        node.tls_handshakes_failed()
    );
    assert_eq!(node.record_count(), n);
    envoy.assert_no_critical_wasm();
}

#[test]
fn a_cluster_without_tls_gets_nothing_through_to_a_tls_node() {
    let shipped = Shipped::new(BATCH_BOOTSTRAP);
    let upstream = Upstream::start();
    let node = shipped.good_node(NodeConfig::default());
    let envoy = Envoy::start(&shipped.envoy_without_tls(&upstream, node.port()));
    send_traffic(&Client::new(), &envoy, "plain");
    let st = assert_all_dropped(&envoy);
    assert_eq!((node.batch_count(), node.tls_handshakes()), (0, 0));
    assert!(node.tls_handshakes_failed() > 0);
    eprintln!("plaintext cluster to a TLS node: {st:?}");
}

/// A node whose certificate Envoy must refuse: issued by `issuer` for `names`, while Envoy
/// trusts the shipped settings' CA and checks for their name; `envoy_reason` is the ssl stat
/// that counts it.
fn refused_certificate_case(
    tag: &str,
    shipped: &Shipped,
    issuer: &Ca,
    names: &[&str],
    envoy_reason: &str,
) {
    let upstream = Upstream::start();
    let node = shipped.node(issuer, names, NodeConfig::default());
    let envoy = Envoy::start(&shipped.envoy(&upstream, node.port()));
    send_traffic(&Client::new(), &envoy, tag);
    let st = assert_all_dropped(&envoy);
    assert_eq!((node.batch_count(), node.tls_handshakes()), (0, 0));
    assert!(node.tls_handshakes_failed() > 0);
    let refused = envoy_stat(
        &envoy,
        &format!("cluster.oob_mirror_node.ssl.{envoy_reason}"),
    );
    assert!(refused > 0, "Envoy's ssl.{envoy_reason}: {refused}");
    eprintln!("{tag}: Envoy ssl.{envoy_reason} = {refused}; {st:?}");
}

#[test]
fn a_node_certificate_from_another_ca_gets_nothing_and_every_record_is_counted_dropped() {
    let shipped = Shipped::new(BATCH_BOOTSTRAP);
    let other = Ca::new("another CA");
    refused_certificate_case(
        "other-ca",
        &shipped,
        &other,
        &[&shipped.name],
        "fail_verify_error",
    );
}

#[test]
fn a_node_certificate_for_another_name_gets_nothing_and_every_record_is_counted_dropped() {
    // The CA Envoy trusts, but not the name Envoy checks.
    let shipped = Shipped::new(BATCH_BOOTSTRAP);
    let other_name = format!("other-{}", shipped.name);
    refused_certificate_case(
        "other-name",
        &shipped,
        &shipped.ca,
        &[&other_name],
        "fail_verify_san",
    );
}

/// What an ext_proc node received: one entry per stream.
type Streams = Arc<Mutex<Vec<Result<Exchange, String>>>>;

fn extproc_node(shipped: &Shipped, issuer: &Ca) -> (Node, Streams) {
    let streams: Streams = Arc::default();
    let sink = Arc::clone(&streams);
    let node = shipped.node(
        issuer,
        &[&shipped.name],
        NodeConfig {
            on_extproc: Some(Arc::new(move |stream| sink.lock().unwrap().push(stream))),
            ..NodeConfig::default()
        },
    );
    (node, streams)
}

#[test]
fn ext_proc_streams_reach_a_tls_node_over_h2_and_none_reach_a_refused_one() {
    let shipped = Shipped::new(EXTPROC_BOOTSTRAP);
    assert_eq!(shipped.plugin["node"]["protocol"], "ext_proc");
    let upstream = Upstream::start();
    let client = Client::new();

    // The right certificate: one stream per exchange, each whole.
    let (node, streams) = extproc_node(&shipped, &shipped.ca);
    let envoy = Envoy::start(&shipped.envoy(&upstream, node.port()));
    let ids = send_traffic(&client, &envoy, "grpc");
    let n = EXCHANGES as i128;
    let st = stats::wait_drained_and(&envoy, EVENTUALLY, |s| {
        s.get("extproc_streams_completed") == n
    });
    assert_eq!(st.get("extproc_exchanges"), n, "{st:?}");
    let got = poll_until(EVENTUALLY, || {
        let s = streams.lock().unwrap();
        (s.len() >= EXCHANGES).then(|| s.clone())
    })
    .unwrap_or_else(|| panic!("{} streams of {EXCHANGES}", streams.lock().unwrap().len()));
    assert_eq!(got.len(), EXCHANGES);
    let by_id: HashMap<String, Exchange> = got
        .into_iter()
        .map(|s| {
            let ex = s.unwrap();
            (ex.request_id.clone().unwrap(), ex)
        })
        .collect();
    for (i, id) in ids.iter().enumerate() {
        let ex = by_id
            .get(id)
            .unwrap_or_else(|| panic!("no stream for {id}"));
        let status = ex.response.as_ref().unwrap().status;
        let expected = match i % 4 {
            0 | 1 => 200,
            2 => 400 + i as u16,
            _ => 201,
        };
        assert_eq!(status, expected, "{id}");
    }
    assert_eq!(node.tls_handshakes_failed(), 0);
    assert!(node.tls_handshakes() > 0);
    envoy.assert_no_critical_wasm();
    drop(envoy);

    // Another CA: no stream reaches the node, none completes, client traffic is unharmed.
    let (node, streams) = extproc_node(&shipped, &Ca::new("another CA"));
    let envoy = Envoy::start(&shipped.envoy(&upstream, node.port()));
    send_traffic(&client, &envoy, "grpc-refused");
    let st = stats::wait_drained_and(&envoy, SETTLE, |s| s.get("extproc_exchanges") == n);
    assert_eq!(st.get("extproc_streams_completed"), 0, "{st:?}");
    assert!(st.get("extproc_streams_failed") > 0, "{st:?}");
    assert!(streams.lock().unwrap().is_empty());
    assert_eq!(node.tls_handshakes(), 0);
    assert!(node.tls_handshakes_failed() > 0);
    assert!(envoy_stat(&envoy, "cluster.oob_mirror_node.ssl.fail_verify_error") > 0);
    envoy.assert_no_critical_wasm();
    eprintln!("ext_proc to a node Envoy refuses: {st:?}");
}
