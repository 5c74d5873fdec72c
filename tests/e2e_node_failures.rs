//! A dead, slow or failing node never changes nor slows client traffic; the
//! filter counts the failed batches and the dropped records, and its
//! accounting stays exact.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::time::{Duration, Instant};

use support::client::{Client, Proto, Req};
use support::records::{start_node, Behavior, Node};
use support::stats::{self, Stats};
use support::upstream::pattern;
use support::{ports, Envoy, EnvoyConfig, Upstream};

/// Requests whose answers do not depend on anything Envoy generates (no
/// request ids in the bodies), so runs with and without the filter compare.
fn workload() -> Vec<Req> {
    let mut reqs = Vec::new();
    for round in 0..3 {
        reqs.push(Req::get(&format!("/download/{}", 1000 + round)));
        reqs.push(Req::get("/status/404"));
        reqs.push(Req::post("/upload-sha", pattern(200_000 + round)));
        reqs.push(Req::get("/download/100000").proto(Proto::H2));
        reqs.push(Req::get("/status/201").proto(Proto::H2));
        reqs.push(Req::new(Proto::H2, "PUT", "/upload-sha").body(pattern(70_000)));
        reqs.push(Req::get("/trailers").proto(Proto::H2));
    }
    reqs
}

type Outcome = Vec<(u16, Vec<u8>, Vec<(String, String)>)>;

fn run(client: &Client, envoy: &Envoy) -> (Outcome, Duration) {
    let started = Instant::now();
    let out = workload()
        .iter()
        .map(|r| {
            let resp = client.send(envoy.addr(), r);
            (resp.status, resp.body, resp.trailers)
        })
        .collect();
    (out, started.elapsed())
}

enum NodeMode {
    /// Nothing listens on the node's port.
    Down,
    Behaving(Behavior),
}

/// Runs the workload without the filter, then with the filter and a bad
/// node; returns the metrics of the filtered Envoy once settled (every
/// record captured and accounted for, nothing queued or in flight, so every
/// batch has had its outcome counted).
fn bad_node_case(mode: NodeMode) -> Stats {
    let upstream = Upstream::start();
    let client = Client::new();
    let (expected, baseline_time) = {
        let plain = Envoy::start(&EnvoyConfig::without_filter(upstream.port()));
        run(&client, &plain)
    };

    let node: Option<Node> = match &mode {
        NodeMode::Down => None,
        NodeMode::Behaving(b) => {
            let n = start_node();
            n.set_behavior(*b);
            Some(n)
        }
    };
    let node_port = node.as_ref().map_or_else(ports::closed_port, Node::port);
    let envoy = Envoy::start(&EnvoyConfig::new(upstream.port(), node_port));
    let (got, time) = run(&client, &envoy);
    assert_eq!(got.len(), expected.len());
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert!(
            g == e,
            "response {i} differs with the filter: status {} vs {}, body {} vs {} bytes, trailers {:?} vs {:?}",
            g.0,
            e.0,
            g.1.len(),
            e.1.len(),
            g.2,
            e.2
        );
    }
    // Holding traffic on the node (timeout_ms 500) would cost >= 0.5 s per
    // exchange, i.e. >= 10 s for the workload.
    assert!(
        time < baseline_time + Duration::from_secs(4),
        "the workload took {time:?} with the filter and a bad node, {baseline_time:?} without"
    );

    let n = expected.len() as i128;
    let st = stats::wait_drained_and(&envoy, Duration::from_secs(30), |s| {
        s.get("records_captured") == 2 * n
    });
    assert_eq!(st.get("records_captured"), 2 * n, "{st:?}");
    assert_eq!(st.get("records_sent"), 0, "{st:?}");
    assert_eq!(st.get("records_dropped_node_failure"), 2 * n, "{st:?}");
    assert_eq!(st.get("records_dropped_queue_full"), 0, "{st:?}");
    assert_eq!(st.get("batches_sent"), 0, "{st:?}");
    assert!(st.batches_failed() > 0, "{st:?}");
    envoy.assert_no_critical_wasm();
    if let Some(node) = &node {
        assert!(node.errors().is_empty(), "{:?}", node.errors());
    }
    st
}

#[test]
fn node_down_changes_nothing_for_clients() {
    // A refused connection is a reset (src/accounting.rs: "The node's
    // connection was reset or refused before it answered"), not a status.
    let st = bad_node_case(NodeMode::Down);
    assert!(st.get("batches_failed_reset") > 0, "{st:?}");
    assert_eq!(
        st.batches_failed(),
        st.get("batches_failed_reset"),
        "{st:?}"
    );
}

#[test]
fn slow_node_changes_nothing_for_clients() {
    let st = bad_node_case(NodeMode::Behaving(Behavior::Delay(Duration::from_secs(3))));
    assert!(st.get("batches_failed_timeout") > 0, "{st:?}");
    assert_eq!(
        st.batches_failed(),
        st.get("batches_failed_timeout"),
        "only timeouts expected: {st:?}"
    );
}

#[test]
fn hanging_node_changes_nothing_for_clients() {
    let st = bad_node_case(NodeMode::Behaving(Behavior::Hang));
    assert!(st.get("batches_failed_timeout") > 0, "{st:?}");
    assert_eq!(
        st.batches_failed(),
        st.get("batches_failed_timeout"),
        "{st:?}"
    );
}

#[test]
fn node_500_changes_nothing_for_clients() {
    let st = bad_node_case(NodeMode::Behaving(Behavior::Status(500)));
    assert!(st.get("batches_failed_status") > 0, "{st:?}");
    assert_eq!(
        st.batches_failed(),
        st.get("batches_failed_status"),
        "{st:?}"
    );
}

#[test]
fn node_recovers_after_an_outage() {
    let upstream = Upstream::start();
    let mut node = start_node();
    let envoy = Envoy::start(&EnvoyConfig::new(upstream.port(), node.port()));
    let client = Client::new();

    let resp = client.send(envoy.addr(), &Req::get("/echo?phase=before"));
    assert_eq!(resp.status, 200);
    support::records::wait_records(&node, 2, support::EVENTUALLY);

    node.stop();
    for i in 0..20 {
        let resp = client.send(envoy.addr(), &Req::get(&format!("/echo?phase=down&i={i}")));
        assert_eq!(resp.status, 200);
        std::thread::sleep(Duration::from_millis(25));
    }
    // Wait until the outage is noticed and its records are dropped.
    stats::wait_drained_and(&envoy, Duration::from_secs(30), |s| {
        s.get("records_captured") == 42 && s.get("records_dropped_node_failure") > 0
    });
    node.restart().expect("restart the node");

    // Traffic after the node is back reaches it again (after the backoff).
    let back = support::wait::poll_until(Duration::from_secs(30), || {
        let resp = client.send(envoy.addr(), &Req::get("/echo?phase=after"));
        assert_eq!(resp.status, 200);
        std::thread::sleep(Duration::from_millis(50));
        node.records()
            .iter()
            .any(|r| r.path.as_deref() == Some("/echo?phase=after"))
            .then_some(())
    });
    assert!(
        back.is_some(),
        "no record reached the node after it came back"
    );
    let st = stats::wait_drained(&envoy, support::EVENTUALLY);
    assert!(st.get("records_dropped_node_failure") > 0, "{st:?}");
    assert!(st.get("records_sent") >= 3, "{st:?}");
    let from_outage: Vec<_> = node
        .records()
        .into_iter()
        .filter(|r| r.path.as_deref().is_some_and(|p| p.contains("phase=down")))
        .collect();
    assert!(
        from_outage.is_empty(),
        "records of the outage reached the node although they were counted dropped \
         (batches are never retried): {from_outage:#?}"
    );
    envoy.assert_no_critical_wasm();
}

#[test]
fn full_queue_drops_are_counted() {
    let upstream = Upstream::start();
    let node = start_node();
    node.set_behavior(Behavior::Hang);
    let envoy = Envoy::start(
        &EnvoyConfig::new(upstream.port(), node.port())
            .plugin(
                r#"{"node":{"cluster":"oob_mirror_node","timeout_ms":1000},
                    "batch":{"flush_ms":20,"max_inflight":1,"max_bytes":4096,"max_queue_bytes":8192}}"#,
            )
            .concurrency(1),
    );
    let client = Client::new();
    let started = Instant::now();
    for i in 0..40 {
        let resp = client.send(
            envoy.addr(),
            &Req::post(&format!("/upload-sha?i={i}"), pattern(2000)),
        );
        assert_eq!(resp.status, 200);
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "clients were slowed: {:?}",
        started.elapsed()
    );
    let st = stats::wait_drained_and(&envoy, Duration::from_secs(30), |s| {
        s.get("records_captured") == 80
    });
    assert!(st.get("records_dropped_queue_full") > 0, "{st:?}");
    assert_eq!(st.get("records_sent"), 0, "{st:?}");
    assert!(st.get("queued_bytes") == 0, "{st:?}");
    envoy.assert_no_critical_wasm();
}
