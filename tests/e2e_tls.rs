//! TLS from Envoy to the analysis node, under the real Envoy, with a CA made in the test: the
//! node cluster of `envoy/envoy-tls.yaml` (SNI, the test CA trusted, the DNS SAN checked)
//! delivers every record to a node that speaks only TLS, in both protocols; a node whose
//! certificate fails the check (another CA, another name) gets nothing, the filter counts every
//! record as dropped, and client traffic is unharmed; a cluster without TLS gets nothing
//! through either.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oob_mirror_sink::detect::exchange::Exchange;
use oob_mirror_sink::{NodeConfig, TlsConfig};
use serde_json::Value;
use support::client::{Client, Proto, Req};
use support::paths::TempDir;
use support::pki::Ca;
use support::records::{distinct_records, wait_exchange, Node};
use support::stats::envoy_stat;
use support::stats::{self, Stats};
use support::upstream::{fnv1a64, pattern};
use support::wait::poll_until;
use support::{raw_http, Envoy, EnvoyConfig, Upstream, EVENTUALLY};

/// The name the node's certificate is issued for, sent as SNI and checked by Envoy.
const NODE_NAME: &str = "node.oob-mirror.test";
const EXCHANGES: usize = 12;
/// Settling after failures takes the filter's backoff into account.
const SETTLE: Duration = Duration::from_secs(30);
const EXTPROC_PLUGIN: &str =
    r#"{"node":{"cluster":"oob_mirror_node","protocol":"ext_proc","timeout_ms":1000}}"#;

/// A test CA, written where Envoy reads it.
struct Pki {
    ca: Ca,
    ca_file: PathBuf,
    _dir: TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = TempDir::new("tls");
        let ca = Ca::new("oob-mirror test CA");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        Pki {
            ca,
            ca_file,
            _dir: dir,
        }
    }
}

/// A node serving TLS only, with a certificate for `names` from `ca`.
fn tls_node(ca: &Ca, names: &[&str], config: NodeConfig) -> Node {
    let leaf = ca.issue(names);
    let tls = TlsConfig::from_pem(leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes()).unwrap();
    Node::start_with(NodeConfig {
        tls: Some(tls),
        ..config
    })
    .unwrap()
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
    let pki = Pki::new();
    let upstream = Upstream::start();
    let node = tls_node(&pki.ca, &[NODE_NAME], NodeConfig::default());
    let envoy = Envoy::start(
        &EnvoyConfig::new(upstream.port(), node.port()).node_tls(&pki.ca_file, NODE_NAME),
    );
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
    let pki = Pki::new();
    let upstream = Upstream::start();
    let node = tls_node(&pki.ca, &[NODE_NAME], NodeConfig::default());
    let envoy = Envoy::start(&EnvoyConfig::new(upstream.port(), node.port()));
    send_traffic(&Client::new(), &envoy, "plain");
    let st = assert_all_dropped(&envoy);
    assert_eq!((node.batch_count(), node.tls_handshakes()), (0, 0));
    assert!(node.tls_handshakes_failed() > 0);
    eprintln!("plaintext cluster to a TLS node: {st:?}");
}

/// A node whose certificate Envoy must refuse: issued by `issuer` for `names`, while Envoy
/// trusts `pki`'s CA and checks for [`NODE_NAME`]; `envoy_reason` is the ssl stat that counts it.
fn refused_certificate_case(tag: &str, pki: &Pki, issuer: &Ca, names: &[&str], envoy_reason: &str) {
    let upstream = Upstream::start();
    let node = tls_node(issuer, names, NodeConfig::default());
    let envoy = Envoy::start(
        &EnvoyConfig::new(upstream.port(), node.port()).node_tls(&pki.ca_file, NODE_NAME),
    );
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
    let pki = Pki::new();
    let other = Ca::new("another CA");
    refused_certificate_case("other-ca", &pki, &other, &[NODE_NAME], "fail_verify_error");
}

#[test]
fn a_node_certificate_for_another_name_gets_nothing_and_every_record_is_counted_dropped() {
    // The CA Envoy trusts, but not the name Envoy checks.
    let pki = Pki::new();
    refused_certificate_case(
        "other-name",
        &pki,
        &pki.ca,
        &["other.oob-mirror.test"],
        "fail_verify_san",
    );
}

/// What an ext_proc node received: one entry per stream.
type Streams = Arc<Mutex<Vec<Result<Exchange, String>>>>;

fn extproc_node(ca: &Ca, names: &[&str]) -> (Node, Streams) {
    let streams: Streams = Arc::default();
    let sink = Arc::clone(&streams);
    let node = tls_node(
        ca,
        names,
        NodeConfig {
            on_extproc: Some(Arc::new(move |stream| sink.lock().unwrap().push(stream))),
            ..NodeConfig::default()
        },
    );
    (node, streams)
}

#[test]
fn ext_proc_streams_reach_a_tls_node_over_h2_and_none_reach_a_refused_one() {
    let pki = Pki::new();
    let upstream = Upstream::start();
    let client = Client::new();

    // The right certificate: one stream per exchange, each whole.
    let (node, streams) = extproc_node(&pki.ca, &[NODE_NAME]);
    let envoy = Envoy::start(
        &EnvoyConfig::new(upstream.port(), node.port())
            .plugin(EXTPROC_PLUGIN)
            .node_http2()
            .node_tls(&pki.ca_file, NODE_NAME),
    );
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
    let (node, streams) = extproc_node(&Ca::new("another CA"), &[NODE_NAME]);
    let envoy = Envoy::start(
        &EnvoyConfig::new(upstream.port(), node.port())
            .plugin(EXTPROC_PLUGIN)
            .node_http2()
            .node_tls(&pki.ca_file, NODE_NAME),
    );
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
