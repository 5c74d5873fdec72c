//! Node authentication under the real Envoy: `node.headers` go with every batch and as the
//! initial metadata of every ext_proc stream, the value from the VM environment or inline; a
//! node that requires them gets everything, a wrong value gets nothing (counted, named in the
//! log), and no value ever appears in Envoy's log. (A missing variable: tests/e2e_config.rs.)
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use oob_mirror_node::intake::security::RequiredHeaders;
use recording_node::NodeConfig;
use support::client::{Client, Req};
use support::records::{id_census, Node};
use support::{stats, Envoy, EnvoyConfig, Upstream, EVENTUALLY};

const TOKEN: &str = "Bearer node-token-4f1c9a";
const WRONG: &str = "Bearer stale-token-77aa01";

fn node_requiring(value: &str, on_extproc: Option<Arc<AtomicUsize>>) -> Node {
    let mut require = RequiredHeaders::default();
    require.add("authorization", value).unwrap();
    let mut config = NodeConfig {
        require_headers: require,
        ..NodeConfig::default()
    };
    if let Some(count) = on_extproc {
        config.on_extproc = Some(Arc::new(move |exchange| {
            if exchange.is_ok() {
                count.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    Node::start_with(config).unwrap()
}

fn assert_no_secret_in(log: &str) {
    for secret in [TOKEN, WRONG, "node-token-4f1c9a", "stale-token-77aa01"] {
        assert!(!log.contains(secret), "a header value is in Envoy's log");
    }
}

fn send_all(client: &Client, envoy: &Envoy, n: usize) {
    for i in 0..n {
        let req = Req::post(&format!("/upload-sha?i={i}"), "payload");
        assert_eq!(client.send(envoy.addr(), &req).status, 200);
    }
}

#[test]
fn batches_carry_the_token_from_the_vm_environment() {
    let upstream = Upstream::start();
    let node = node_requiring(TOKEN, None);
    let envoy = Envoy::start(
        &EnvoyConfig::new(upstream.port(), node.port())
            .vm_env("OOB_MIRROR_NODE_TOKEN", TOKEN)
            .component_log_level("wasm:debug")
            .plugin(
                r#"{"node":{"cluster":"oob_mirror_node",
                    "headers":[{"name":"authorization","value_env":"OOB_MIRROR_NODE_TOKEN"}]}}"#,
            ),
    );
    let client = Client::new();
    send_all(&client, &envoy, 10);
    let st = stats::wait_drained_and(&envoy, EVENTUALLY, |s| s.get("records_sent") == 20);
    assert_eq!(st.dropped(), 0, "{st:?}");
    let census = id_census(&node.records());
    assert_eq!(census.len(), 10);
    assert!(census.values().all(|c| *c == (1, 1)), "{census:?}");
    assert_eq!(node.requests_unauthenticated(), 0);
    assert_no_secret_in(&envoy.log());
    envoy.assert_no_critical_wasm();
}

#[test]
fn a_wrong_token_delivers_nothing_and_is_counted() {
    let upstream = Upstream::start();
    let node = node_requiring(TOKEN, None);
    let envoy = Envoy::start(
        &EnvoyConfig::new(upstream.port(), node.port())
            .component_log_level("wasm:debug")
            .plugin(format!(
                r#"{{"node":{{"cluster":"oob_mirror_node",
                    "headers":[{{"name":"authorization","value":"{WRONG}"}}]}}}}"#
            )),
    );
    let client = Client::new();
    send_all(&client, &envoy, 10);
    let st = stats::wait_drained_and(&envoy, Duration::from_secs(30), |s| {
        s.get("records_captured") == 20
    });
    assert_eq!(st.get("records_sent"), 0, "{st:?}");
    assert_eq!(st.get("records_dropped_node_failure"), 20, "{st:?}");
    assert!(st.get("batches_failed_status") > 0, "{st:?}");
    assert_eq!(node.record_count(), 0);
    assert!(node.requests_unauthenticated() > 0);
    let log = support::wait::poll_until(EVENTUALLY, || {
        let log = envoy.log();
        log.contains("(HTTP 401)").then_some(log)
    })
    .unwrap_or_else(|| panic!("no warning naming HTTP 401:\n{}", envoy.log()));
    assert_no_secret_in(&log);
    envoy.assert_no_critical_wasm();
}

#[test]
fn ext_proc_streams_carry_the_token_as_metadata() {
    for (value, accepted) in [(TOKEN, true), (WRONG, false)] {
        let streams = Arc::new(AtomicUsize::new(0));
        let upstream = Upstream::start();
        let node = node_requiring(TOKEN, Some(Arc::clone(&streams)));
        let envoy = Envoy::start(
            &EnvoyConfig::new(upstream.port(), node.port())
                .node_http2()
                .concurrency(1)
                .vm_env("NODE_TOKEN", value)
                .component_log_level("wasm:debug")
                .plugin(
                    r#"{"node":{"cluster":"oob_mirror_node","protocol":"ext_proc",
                        "headers":[{"name":"authorization","value_env":"NODE_TOKEN"}]}}"#,
                ),
        );
        let client = Client::new();
        send_all(&client, &envoy, 6);
        let st = stats::wait_drained_and(&envoy, EVENTUALLY, |s| {
            s.get("extproc_exchanges") == 6
                && s.get("extproc_streams_completed")
                    + s.get("extproc_streams_failed")
                    + s.get("extproc_dropped_backoff")
                    == 6
        });
        if accepted {
            assert_eq!(st.get("extproc_streams_completed"), 6, "{st:?}");
            support::wait::poll_until(EVENTUALLY, || {
                (streams.load(Ordering::SeqCst) == 6).then_some(())
            })
            .unwrap_or_else(|| panic!("{} streams analysed", streams.load(Ordering::SeqCst)));
            assert_eq!(node.requests_unauthenticated(), 0);
        } else {
            // After three failures in a row the worker backs off: later exchanges are dropped
            // without a stream.
            assert_eq!(st.get("extproc_streams_completed"), 0, "{st:?}");
            assert!(st.get("extproc_streams_failed") >= 3, "{st:?}");
            assert_eq!(streams.load(Ordering::SeqCst), 0);
            let failed = u64::try_from(st.get("extproc_streams_failed")).unwrap();
            assert_eq!(node.requests_unauthenticated(), failed);
            support::wait::poll_until(EVENTUALLY, || {
                envoy.log().contains("(gRPC status 16)").then_some(())
            })
            .unwrap_or_else(|| panic!("no warning naming status 16:\n{}", envoy.log()));
        }
        assert_no_secret_in(&envoy.log());
        envoy.assert_no_critical_wasm();
    }
}
