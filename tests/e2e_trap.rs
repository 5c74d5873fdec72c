//! The module fails at run time (a real wasm trap, from the test-only build `make wasm-trap`):
//! what each `failure_policy` then does to client traffic and to mirroring.
//!
//! Envoy 1.40 under V8, as measured here: the request whose callback trapped gets Envoy's own
//! `503` (empty body) under every policy. After it, `FAIL_OPEN` serves every request without
//! the filter (mirroring stops for good on that worker); `FAIL_CLOSED` answers `503` to every
//! request; `FAIL_RELOAD` builds a new VM on the worker's next request once the reload backoff
//! has passed (`reload_config.backoff.base_interval`, default 1 s, jittered up to 1.5 s, counted
//! from the VM's last load), and until then answers `503` like `FAIL_CLOSED`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use support::client::{send_head, Req, Resp, CLIENT_TIMEOUT};
use support::paths::trap_wasm_module;
use support::records::{wait_exchange, HeaderValue, Node, Record};
use support::stats::{self, envoy_stat};
use support::upstream::{fnv1a64, Echo};
use support::wait::poll_until;
use support::{Rig, EVENTUALLY};

/// The header the `test-trap` build traps on (src/filter/trap.rs).
const TRAP_HEADER: &str = "x-oob-mirror-trap";
/// What Envoy logs when a VM call traps on `unreachable` (source/extensions/common/wasm).
const TRAP_LOG: &str = "proxy_on_request_headers failed: Uncaught RuntimeError: unreachable";

/// The trap build under `policy`, one worker, so the VM that traps is the one every later
/// request goes through.
fn trap_rig(policy: &'static str) -> Rig {
    Rig::start_with(|c| {
        c.module(trap_wasm_module())
            .failure_policy(policy)
            .concurrency(1)
    })
}

/// Sends an echo request and checks the answer is the upstream's own; returns the request
/// id Envoy forwarded.
fn served(rig: &Rig, tag: &str) -> String {
    let resp = rig.send(&Req::post(&format!("/echo?{tag}"), tag.as_bytes().to_vec()));
    assert_upstream_answer(&resp, tag);
    Echo::parse(&resp.body).request_id()
}

fn assert_upstream_answer(resp: &Resp, tag: &str) {
    assert_eq!(resp.status, 200, "{tag}: {}", resp.body_str());
    assert_eq!(resp.header("x-upstream").as_deref(), Some("test"), "{tag}");
    let echo = Echo::parse(&resp.body);
    assert_eq!(echo.path, format!("/echo?{tag}"));
    assert_eq!(echo.body_fnv1a64, fnv1a64(tag.as_bytes()), "{tag}");
}

fn trap_lines(rig: &Rig) -> usize {
    rig.envoy
        .log()
        .lines()
        .filter(|l| l.contains(TRAP_LOG))
        .count()
}

/// Sends the request that makes the VM trap, proves from Envoy's log that it trapped, and
/// returns what the client got.
fn trap(rig: &Rig) -> Resp {
    let before = trap_lines(rig);
    let resp = rig.send(&Req::get("/echo?trap").header(TRAP_HEADER, "1"));
    let logged = poll_until(EVENTUALLY, || (trap_lines(rig) > before).then_some(()));
    assert!(
        logged.is_some(),
        "no `{TRAP_LOG}` line in Envoy's log after the trap request (got {} {:?}):\n{}",
        resp.status,
        resp.body_str(),
        rig.envoy.log()
    );
    // The request in progress when its VM fails is failed by Envoy itself.
    assert_eq!(
        resp.status,
        503,
        "the trapping request: {}",
        resp.body_str()
    );
    assert!(resp.body.is_empty(), "{:?}", resp.body_str());
    assert_eq!(
        resp.header("x-upstream"),
        None,
        "it never reached the upstream"
    );
    resp
}

/// The x-request-id a request record carried (how these tests name exchanges; the record id
/// is the filter's own).
fn request_id(r: &Record) -> Option<&str> {
    r.header("x-request-id").and_then(HeaderValue::as_str)
}

fn node_has_request(node: &Node, id: &str) -> bool {
    node.records()
        .iter()
        .any(|r| r.is_request() && request_id(r) == Some(id))
}

#[test]
fn release_module_ignores_the_trap_header() {
    let rig = Rig::start_with(|c| c.concurrency(1));
    let resp = rig.send(&Req::post("/echo?trap", "trap").header(TRAP_HEADER, "1"));
    assert_upstream_answer(&resp, "trap");
    wait_exchange(
        &rig.envoy,
        &rig.node,
        &Echo::parse(&resp.body).request_id(),
        EVENTUALLY,
    );
    assert_eq!(trap_lines(&rig), 0, "{}", rig.envoy.log());
    rig.envoy.assert_no_critical_wasm();
}

#[test]
fn fail_open_serves_every_request_after_a_trap() {
    let rig = trap_rig("FAIL_OPEN");
    let id = served(&rig, "before");
    wait_exchange(&rig.envoy, &rig.node, &id, EVENTUALLY);

    let resp = trap(&rig);
    println!(
        "FAIL_OPEN: the trapping request got {} ({} body bytes)",
        resp.status,
        resp.body.len()
    );
    let upstream_before = rig.upstream.requests();
    let after: Vec<String> = (0..50)
        .map(|i| served(&rig, &format!("after={i}")))
        .collect();
    assert_eq!(rig.upstream.requests(), upstream_before + 50);

    // The filter is skipped from now on: nothing of these exchanges is mirrored. A negative
    // check can only wait; 500 ms is 25 flush intervals.
    let mirrored = rig.node.wait_until(Duration::from_millis(500), |batches| {
        batches
            .iter()
            .flat_map(|b| &b.records)
            .any(|r| request_id(r).is_some_and(|id| after.iter().any(|a| a == id)))
    });
    assert!(!mirrored, "FAIL_OPEN mirrored after the trap");
    assert_eq!(trap_lines(&rig), 1);
}

#[test]
fn fail_closed_answers_503_after_a_trap() {
    let rig = trap_rig("FAIL_CLOSED");
    served(&rig, "before");
    trap(&rig);
    let upstream_before = rig.upstream.requests();
    for i in 0..10 {
        let resp = rig.send(&Req::get(&format!("/echo?after={i}")));
        assert_eq!(resp.status, 503, "request {i} after the trap");
    }
    assert_eq!(
        rig.upstream.requests(),
        upstream_before,
        "FAIL_CLOSED let a request through to the upstream"
    );
}

/// Outcome of the requests sent after a trap until one was mirrored again.
struct Recovery {
    /// Statuses in order (503 while the reload backoff runs, then 200).
    statuses: Vec<u16>,
    took: Duration,
    /// Request ids of the exchanges served (mirrored) once the VM was back.
    ids: Vec<String>,
}

/// Sends echo requests one after the other until the node gets the request record of one
/// sent after the trap. Each answer is either Envoy's 503 (no VM yet) or the upstream's own.
fn until_mirrored_again(rig: &Rig, phase: &str) -> Recovery {
    let started = Instant::now();
    let mut statuses = Vec::new();
    let mut ids = Vec::new();
    let back = poll_until(Duration::from_secs(30), || {
        let tag = format!("{phase}={}", statuses.len());
        let resp = rig.send(&Req::post(&format!("/echo?{tag}"), tag.as_bytes().to_vec()));
        statuses.push(resp.status);
        if resp.status == 503 {
            assert!(resp.body.is_empty(), "{tag}: {:?}", resp.body_str());
            assert_eq!(ids.len(), 0, "{tag}: 503 after a request was served again");
        } else {
            assert_upstream_answer(&resp, &tag);
            ids.push(Echo::parse(&resp.body).request_id());
        }
        ids.iter()
            .any(|id| node_has_request(&rig.node, id))
            .then_some(())
    });
    assert!(
        back.is_some(),
        "{phase}: mirroring did not resume within 30 s; statuses {statuses:?}"
    );
    Recovery {
        statuses,
        took: started.elapsed(),
        ids,
    }
}

#[test]
fn fail_reload_resumes_mirroring_after_a_trap() {
    let rig = trap_rig("FAIL_RELOAD");
    let id = served(&rig, "before");
    wait_exchange(&rig.envoy, &rig.node, &id, EVENTUALLY);
    // Settled before the trap: the failed VM's last published gauges are then 0, so the
    // metrics the new VM adds to stay balanced.
    stats::wait_drained(&rig.envoy, EVENTUALLY);

    trap(&rig);
    let first = until_mirrored_again(&rig, "after-first");
    // Every exchange served since the reload at the node, and then settled: the loop above
    // stops at the first one the node has, and a later one's records could still be queued
    // (unpublished) in the VM the next trap kills, leaving its gauges behind for good.
    for id in &first.ids {
        wait_exchange(&rig.envoy, &rig.node, id, EVENTUALLY);
    }
    stats::wait_drained(&rig.envoy, EVENTUALLY);
    // A second trap soon after the reload: the backoff now counts from that reload.
    trap(&rig);
    let second = until_mirrored_again(&rig, "after-second");

    let refused = |r: &Recovery| r.statuses.iter().filter(|s| **s == 503).count();
    let reloads = envoy_stat(&rig.envoy, "wasm.oob-mirror.vm_reload_success");
    let backoffs = envoy_stat(&rig.envoy, "wasm.oob-mirror.vm_reload_backoff");
    for (name, r) in [("first", &first), ("second", &second)] {
        println!(
            "FAIL_RELOAD, {name} trap: mirrored again after {:?}; {} requests answered 503 \
             while the reload backoff ran, then {} served",
            r.took,
            refused(r),
            r.statuses.len() - refused(r)
        );
    }
    println!("FAIL_RELOAD: vm_reload_success {reloads}, vm_reload_backoff {backoffs}");
    assert_eq!(reloads, 2, "one new VM per trap");
    // Every 503 is Envoy refusing to reload within the backoff, none is something else.
    assert_eq!(
        (refused(&first) + refused(&second)) as i128,
        backoffs,
        "503s vs vm_reload_backoff"
    );

    // A fresh exchange goes through the new VM whole, and the accounting is exact.
    let id = served(&rig, "last");
    wait_exchange(&rig.envoy, &rig.node, &id, EVENTUALLY);
    let st = stats::wait_drained(&rig.envoy, EVENTUALLY);
    st.assert_invariant();
    assert_eq!(trap_lines(&rig), 2);
}

/// Under `FAIL_OPEN` too, a trap costs the exchanges in progress on that worker: Envoy fails
/// each one at its next filter callback (a response already started is reset).
#[test]
fn fail_open_cuts_a_response_in_progress_on_the_trapping_worker() {
    let rig = trap_rig("FAIL_OPEN");
    let rt = rig.client.runtime();
    // 10 chunks over 5 s: still streaming when the trap comes.
    let (head, _) = rt
        .block_on(send_head(rig.envoy.addr(), &Req::get("/stream/5000")))
        .unwrap();
    assert_eq!(head.status(), 200);
    let mut body = head.into_body();
    let first = rt.block_on(async { tokio::time::timeout(CLIENT_TIMEOUT, body.frame()).await });
    assert!(
        matches!(first, Ok(Some(Ok(_)))),
        "no first chunk: {first:?}"
    );
    trap(&rig);
    let rest = rt.block_on(async { tokio::time::timeout(CLIENT_TIMEOUT, body.collect()).await });
    match rest {
        Ok(Err(e)) => println!("FAIL_OPEN: the response in progress was cut: {e}"),
        Ok(Ok(rest)) => panic!(
            "the response in progress completed ({} more bytes)",
            rest.to_bytes().len()
        ),
        Err(_) => panic!("the response in progress neither ended nor failed"),
    }
    served(&rig, "after");
}
