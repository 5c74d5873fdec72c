//! Plugin configuration: Envoy refuses a bad one (naming the field), and the
//! settings that change what the node sees take effect.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::time::Duration;

use support::client::Req;
use support::envoy::StartOutcome;
use support::records::{start_node, wait_records};
use support::upstream::Echo;
use support::{ports, stats, Envoy, EnvoyConfig, Rig, EVENTUALLY};

/// Starts Envoy with `plugin` and expects it to refuse the configuration:
/// the process exits with an error, and the log has the filter's
/// `invalid configuration` line naming `field`.
fn assert_refused(plugin: &str, field: &str) {
    let config = EnvoyConfig::new(ports::closed_port(), ports::closed_port()).plugin(plugin);
    match Envoy::try_start(&config, Duration::from_secs(20)) {
        StartOutcome::Exited(status, log) => {
            assert!(!status.success(), "Envoy exited with {status}; log:\n{log}");
            let line = log
                .lines()
                .find(|l| l.contains("oob-mirror: invalid configuration:"))
                .unwrap_or_else(|| panic!("no `invalid configuration` line in the log:\n{log}"));
            assert!(
                line.contains(field),
                "the invalid configuration line does not name `{field}`: {line}"
            );
            let count = log
                .lines()
                .filter(|l| l.contains("oob-mirror: invalid configuration:"))
                .count();
            assert_eq!(count, 1, "expected one invalid configuration line:\n{log}");
        }
        StartOutcome::Ready(envoy) => {
            panic!(
                "Envoy accepted the plugin configuration {plugin}; log:\n{}",
                envoy.log()
            )
        }
        StartOutcome::TimedOut(log) => {
            panic!("Envoy neither started nor exited; log:\n{log}")
        }
    }
}

/// A node header whose value should come from a VM environment variable that is not there:
/// sending without it would only be refused by the node.
#[test]
fn a_node_header_from_a_missing_variable_is_refused() {
    assert_refused(
        r#"{"node":{"cluster":"oob_mirror_node",
            "headers":[{"name":"authorization","value_env":"OOB_MIRROR_NODE_TOKEN"}]}}"#,
        "node.headers[0].value_env: the VM environment has no usable OOB_MIRROR_NODE_TOKEN",
    );
}

#[test]
fn empty_node_cluster_is_refused() {
    assert_refused(r#"{"node":{"cluster":""}}"#, "node.cluster");
}

#[test]
fn missing_node_cluster_is_refused() {
    assert_refused(r#"{"node":{"timeout_ms":500}}"#, "node.cluster");
}

#[test]
fn missing_node_section_is_refused() {
    assert_refused(r#"{"batch":{"flush_ms":20}}"#, "node");
}

#[test]
fn unknown_top_level_field_is_refused() {
    assert_refused(
        r#"{"node":{"cluster":"oob_mirror_node"},"bogus_field":1}"#,
        "bogus_field",
    );
}

#[test]
fn unknown_nested_field_is_refused() {
    assert_refused(
        r#"{"node":{"cluster":"oob_mirror_node"},"batch":{"flush_ms":20,"max_rekords":5}}"#,
        "max_rekords",
    );
}

#[test]
fn zero_max_records_is_refused() {
    assert_refused(
        r#"{"node":{"cluster":"oob_mirror_node"},"batch":{"max_records":0}}"#,
        "batch.max_records",
    );
}

#[test]
fn configuration_that_is_not_json_is_refused() {
    let config = EnvoyConfig::new(ports::closed_port(), ports::closed_port()).plugin("node: x");
    match Envoy::try_start(&config, Duration::from_secs(20)) {
        StartOutcome::Exited(status, log) => {
            assert!(!status.success());
            assert!(
                log.contains("oob-mirror: invalid configuration"),
                "no invalid configuration line:\n{log}"
            );
        }
        StartOutcome::Ready(envoy) => panic!("accepted a non-JSON config:\n{}", envoy.log()),
        StartOutcome::TimedOut(log) => panic!("neither started nor exited:\n{log}"),
    }
}

#[test]
fn minimal_configuration_uses_the_defaults() {
    let rig = Rig::start_with(|c| c.plugin(r#"{"node":{"cluster":"oob_mirror_node"}}"#));
    let resp = rig.send(&Req::get("/echo?minimal=1"));
    assert_eq!(resp.status, 200);
    let id = Echo::parse(&resp.body).request_id();
    support::records::wait_exchange(&rig.envoy, &rig.node, &id, EVENTUALLY);
    let batches = rig.node.batches();
    assert_eq!(batches[0].path, "/v1/records");
    assert_eq!(batches[0].authority.as_deref(), Some("oob-mirror"));
    stats::wait_drained(&rig.envoy, EVENTUALLY);
}

#[test]
fn node_path_and_authority_are_configurable() {
    let rig = Rig::start_with(|c| {
        c.plugin(
            r#"{"node":{"cluster":"oob_mirror_node","authority":"analysis.example",
                        "path":"/ingest/v1?src=e2e","timeout_ms":500},
                "batch":{"flush_ms":20}}"#,
        )
    });
    rig.send(&Req::get("/echo"));
    wait_records(&rig.node, 2, EVENTUALLY);
    for b in rig.node.batches() {
        assert_eq!(b.path, "/ingest/v1?src=e2e");
        assert_eq!(b.authority.as_deref(), Some("analysis.example"));
    }
}

#[test]
fn max_records_bounds_every_batch() {
    let rig = Rig::start_with(|c| {
        c.plugin(
            r#"{"node":{"cluster":"oob_mirror_node","timeout_ms":500},
                "batch":{"flush_ms":200,"max_records":3}}"#,
        )
        .concurrency(1)
    });
    for i in 0..10 {
        let resp = rig.send(&Req::get(&format!("/echo?i={i}")));
        assert_eq!(resp.status, 200);
    }
    wait_records(&rig.node, 20, EVENTUALLY);
    let batches = rig.node.batches();
    assert!(
        batches.iter().all(|b| b.records.len() <= 3),
        "batch sizes: {:?}",
        batches.iter().map(|b| b.records.len()).collect::<Vec<_>>()
    );
    assert!(batches.len() >= 7, "{} batches", batches.len());
    let st = stats::wait_drained(&rig.envoy, EVENTUALLY);
    assert_eq!(st.get("records_sent"), 20, "{st:?}");
}

#[test]
fn node_cluster_that_does_not_exist_drops_without_harm() {
    let node = start_node();
    let upstream = support::Upstream::start();
    let envoy = Envoy::start(&EnvoyConfig::new(upstream.port(), node.port()).plugin(
        r#"{"node":{"cluster":"no_such_cluster","timeout_ms":500},"batch":{"flush_ms":20}}"#,
    ));
    let client = support::client::Client::new();
    for _ in 0..5 {
        let resp = client.send(envoy.addr(), &Req::get("/status/200"));
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body_str(), "status 200");
    }
    let st = stats::wait_drained_and(&envoy, Duration::from_secs(30), |s| {
        s.get("records_captured") == 10
    });
    assert_eq!(st.get("records_sent"), 0, "{st:?}");
    assert_eq!(st.get("records_dropped_node_failure"), 10, "{st:?}");
    assert!(st.batches_failed() > 0, "{st:?}");
    // Envoy refuses the call synchronously: no such cluster.
    assert_eq!(
        st.batches_failed(),
        st.get("batches_failed_dispatch"),
        "{st:?}"
    );
    assert_eq!(node.record_count(), 0);
    envoy.assert_no_critical_wasm();
}
