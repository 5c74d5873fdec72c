//! Large bodies: the filter never buffers (no 413, every byte reaches the
//! other side) and captures at most the configured cap.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use support::client::{Proto, Req};
use support::records::wait_exchange;
use support::upstream::{fnv1a64, pattern, Echo};
use support::{stats, Rig, EVENTUALLY};

const FIVE_MIB: usize = 5 * 1024 * 1024;
const CAP: usize = 65536;

fn upload_5mib(proto: Proto) {
    let rig = Rig::start();
    let body = pattern(FIVE_MIB);
    let resp = rig.send(
        &Req::new(proto, "POST", "/upload-sha")
            .body(body.clone())
            .header("x-tag", "upload"),
    );
    assert_eq!(resp.status, 200, "{}", resp.body_str());
    let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(v["len"], FIVE_MIB, "the upstream saw every byte");
    assert_eq!(
        v["fnv1a64"],
        fnv1a64(&body),
        "the upstream saw the same bytes"
    );

    let found = support::wait::poll_until(EVENTUALLY, || {
        rig.node.records().into_iter().find(|r| r.is_request())
    })
    .expect("request record");
    let (req, rsp) = wait_exchange(&rig.envoy, &rig.node, &found.id, EVENTUALLY);
    assert_eq!(req.body.len(), CAP);
    assert!(
        req.body == body[..CAP],
        "request body is not the first 64 KiB"
    );
    assert_eq!(req.body_size, FIVE_MIB as u64);
    assert!(req.body_truncated);
    assert!(req.complete);
    assert_eq!(rsp.status, Some(200));
    assert_eq!(rsp.body, resp.body);
    assert!(!rsp.body_truncated);

    let st = stats::wait_drained(&rig.envoy, EVENTUALLY);
    assert_eq!(st.get("bodies_truncated"), 1, "{st:?}");
    assert_eq!(st.get("records_sent"), 2, "{st:?}");
    rig.envoy.assert_no_critical_wasm();
}

#[test]
fn upload_5mib_http1_is_passed_whole_and_captured_capped() {
    upload_5mib(Proto::H1);
}

#[test]
fn upload_5mib_http2_is_passed_whole_and_captured_capped() {
    upload_5mib(Proto::H2);
}

#[test]
fn download_5mib_is_passed_whole_and_captured_capped() {
    let rig = Rig::start();
    let resp = rig.send(&Req::get(&format!("/download/{FIVE_MIB}")));
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body.len(), FIVE_MIB, "the client got every byte");
    assert!(
        resp.body == pattern(FIVE_MIB),
        "the client got the right bytes"
    );

    let found = support::wait::poll_until(EVENTUALLY, || {
        rig.node.records().into_iter().find(|r| r.is_request())
    })
    .expect("request record");
    let (req, rsp) = wait_exchange(&rig.envoy, &rig.node, &found.id, EVENTUALLY);
    assert_eq!(req.body_size, 0);
    assert_eq!(rsp.status, Some(200));
    assert_eq!(rsp.body.len(), CAP);
    assert!(
        rsp.body == resp.body[..CAP],
        "response body is not the first 64 KiB"
    );
    assert_eq!(rsp.body_size, FIVE_MIB as u64);
    assert!(rsp.body_truncated);
    assert!(rsp.complete);

    let st = stats::wait_drained(&rig.envoy, EVENTUALLY);
    assert_eq!(st.get("bodies_truncated"), 1, "{st:?}");
    rig.envoy.assert_no_critical_wasm();
}

#[test]
fn configured_caps_apply_per_direction() {
    let rig = Rig::start_with(|c| {
        c.plugin(
            r#"{"node":{"cluster":"oob_mirror_node","timeout_ms":500},
                "capture":{"request_body_max":10,"response_body_max":5},
                "batch":{"flush_ms":20}}"#,
        )
    });
    let body = b"0123456789abcdef".to_vec();
    let resp = rig.send(&Req::post("/echo", body.clone()));
    assert_eq!(resp.status, 200);
    let echo = Echo::parse(&resp.body);
    assert_eq!(echo.body_len, 16);
    let (req, rsp) = wait_exchange(&rig.envoy, &rig.node, &echo.request_id(), EVENTUALLY);
    assert_eq!(req.body, b"0123456789");
    assert_eq!(req.body_size, 16);
    assert!(req.body_truncated);
    assert_eq!(rsp.body, resp.body[..5]);
    assert_eq!(rsp.body_size, resp.body.len() as u64);
    assert!(rsp.body_truncated);
    let st = stats::wait_drained(&rig.envoy, EVENTUALLY);
    assert_eq!(st.get("bodies_truncated"), 2, "{st:?}");
}

/// `capture.max_buffered_bytes` bounds the body bytes all streams of a worker hold together:
/// while one upload holds most of it, another body is cut short (and counted), and the bytes
/// come back once the holder's record is queued.
#[test]
fn capture_budget_is_shared_by_a_workers_streams_and_given_back() {
    use std::io::Write;
    let rig = Rig::start_with(|c| {
        c.concurrency(1).plugin(
            r#"{"node":{"cluster":"oob_mirror_node","timeout_ms":500},
                "capture":{"request_body_max":10,"response_body_max":0,"max_buffered_bytes":12},
                "batch":{"flush_ms":20}}"#,
        )
    });

    // An upload that stops after 10 bytes holds 10 of the 12 budget bytes.
    let mut holder = std::net::TcpStream::connect(rig.envoy.addr()).unwrap();
    holder
        .write_all(
            b"POST /hold HTTP/1.1\r\nhost: hold.test\r\ncontent-length: 100\r\n\r\n0123456789",
        )
        .unwrap();
    let forwarded = support::wait::poll_until(EVENTUALLY, || {
        (rig.upstream.body_bytes_received() >= 10).then_some(())
    });
    assert!(
        forwarded.is_some(),
        "the held upload never reached the upstream"
    );

    let body = b"abcdefghijklmnop".to_vec();
    let cut = rig.send(&Req::post("/echo?cut=1", body.clone()));
    assert_eq!(cut.status, 200);
    assert_eq!(
        Echo::parse(&cut.body).body_len,
        16,
        "the client's body is untouched"
    );
    let (req, _) = wait_exchange(
        &rig.envoy,
        &rig.node,
        &Echo::parse(&cut.body).request_id(),
        EVENTUALLY,
    );
    assert_eq!(req.body, b"ab", "only the 2 budget bytes left are copied");
    assert_eq!(req.body_size, 16);
    assert!(req.body_truncated);

    // The holder ends: its record is queued and its 10 bytes go back to the budget.
    drop(holder);
    let held = support::wait::poll_until(EVENTUALLY, || {
        rig.node
            .records()
            .into_iter()
            .find(|r| r.is_request() && r.path.as_deref() == Some("/hold"))
    })
    .expect("request record of the held upload");
    assert_eq!(held.body, b"0123456789");
    assert!(!held.complete);

    let whole = rig.send(&Req::post("/echo?after=1", body.clone()));
    let (req, _) = wait_exchange(
        &rig.envoy,
        &rig.node,
        &Echo::parse(&whole.body).request_id(),
        EVENTUALLY,
    );
    assert_eq!(
        req.body, b"abcdefghij",
        "the cap applies again, not the budget"
    );

    let st = stats::wait_drained(&rig.envoy, EVENTUALLY);
    assert_eq!(st.get("bodies_truncated_budget"), 1, "{st:?}");
    rig.envoy.assert_no_critical_wasm();
}
