//! The test node, driven over real HTTP/1.1 and h2c connections.

#[path = "../../../node/tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{exchange, post, post_blocking, send};
use hyper::{Method, StatusCode};
use oob_mirror_node::{HeaderValue, Kind};
use recording_node::{Behavior, Node, WaitError};

const WAIT: Duration = Duration::from_secs(10);

/// Plain synchronous test, as the end-to-end tests use the node.
#[test]
fn http1_batch_is_recorded() {
    let node = Node::start().unwrap();
    assert!(node.addr().ip().is_loopback());
    assert_ne!(node.port(), 0);

    let status = post_blocking(node.addr(), false, 2, exchange("r1")).unwrap();
    assert_eq!(status, StatusCode::NO_CONTENT);

    let records = node.wait_for_records(2, WAIT).unwrap();
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].kind, Kind::Request);
    assert_eq!(records[0].id, "r1");
    assert_eq!(records[0].body, b"payload");
    assert_eq!(
        records[0].header("x-bin"),
        Some(&HeaderValue::Bin(vec![0xc3, 0x28]))
    );
    assert_eq!(records[1].status, Some(200));

    let batches = node.batches();
    assert_eq!(batches.len(), 1);
    let batch = &batches[0];
    assert_eq!(batch.path, "/v1/records");
    assert_eq!(batch.http_version, "HTTP/1.1");
    assert_eq!(batch.authority.as_deref(), Some("oob-mirror"));
    assert_eq!(batch.header("content-type"), Some("application/msgpack"));
    assert_eq!(batch.declared_records(), Some(2));
    assert_eq!(batch.body_len, exchange("r1").len());
    assert!(batch.error.is_none());
    assert_eq!((node.batch_count(), node.record_count()), (1, 2));

    node.clear();
    assert!(node.records().is_empty());
    assert_eq!(node.record_count(), 0);
}

#[tokio::test]
async fn h2c_batch_is_recorded() {
    let node = Node::start().unwrap();
    let status = post(node.addr(), true, 2, exchange("h2")).await.unwrap();
    assert_eq!(status, StatusCode::NO_CONTENT);
    let records = node.wait_for_records_async(2, WAIT).await.unwrap();
    assert_eq!(records[1].id, "h2");
    let batch = &node.batches()[0];
    assert_eq!(batch.http_version, "HTTP/2.0");
    assert_eq!(batch.authority.as_deref(), Some("oob-mirror"));
}

#[tokio::test]
async fn status_behavior_is_answered() {
    let node = Node::start().unwrap();
    node.set_behavior(Behavior::Status(500));
    assert_eq!(node.behavior(), Behavior::Status(500));
    for h2 in [false, true] {
        let status = post(node.addr(), h2, 2, exchange("s")).await.unwrap();
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    }
    // Refused batches are still recorded.
    let batches = node.wait_for_batches_async(2, WAIT).await.unwrap();
    assert_eq!(batches.len(), 2);

    node.set_behavior(Behavior::Ok);
    let status = post(node.addr(), false, 2, exchange("s")).await.unwrap();
    assert_eq!(status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn delay_behavior_answers_200_late() {
    let node = Node::start().unwrap();
    let delay = Duration::from_millis(300);
    node.set_behavior(Behavior::Delay(delay));
    let started = Instant::now();
    let status = post(node.addr(), false, 2, exchange("d")).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(started.elapsed() >= delay);
}

#[tokio::test]
async fn hang_never_answers_until_the_node_is_killed() {
    let mut node = Node::start().unwrap();
    node.set_behavior(Behavior::Hang);
    let mut pending = tokio::spawn(post(node.addr(), false, 2, exchange("h")));

    // The batch is recorded on arrival even though it is never answered.
    node.wait_for_records_async(2, WAIT).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(200), &mut pending)
            .await
            .is_err(),
        "a hung batch must not be answered"
    );

    // Killing the node drops the connection: the client sees an error, not
    // an answer.
    node.stop();
    assert!(!node.is_running());
    let outcome = tokio::time::timeout(WAIT, pending).await.unwrap().unwrap();
    assert!(outcome.is_err(), "{outcome:?}");
}

#[test]
fn stop_and_restart_on_the_same_port() {
    let mut node = Node::start().unwrap();
    let addr = node.addr();
    // The port is taken while the node runs.
    assert!(Node::start_on(addr).is_err());

    post_blocking(addr, false, 2, exchange("a")).unwrap();
    node.wait_for_records(2, WAIT).unwrap();

    node.stop();
    node.stop(); // idempotent
    assert!(post_blocking(addr, false, 2, exchange("b")).is_err());

    node.restart().unwrap();
    assert_eq!(node.addr(), addr);
    post_blocking(addr, true, 2, exchange("c")).unwrap();
    let ids: Vec<_> = node
        .wait_for_records(4, WAIT)
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, ["a", "a", "c", "c"]);

    // A fresh node can also take over the address of a dropped one.
    drop(node);
    let node = Node::start_on(addr).unwrap();
    assert_eq!(node.addr(), addr);
    post_blocking(addr, false, 2, exchange("d")).unwrap();
    assert_eq!(node.wait_for_records(2, WAIT).unwrap().len(), 2);
}

#[test]
fn malformed_batch_is_refused_and_reported() {
    let node = Node::start().unwrap();
    let status = post_blocking(node.addr(), false, 1, b"\x81\xa1v".to_vec()).unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    match node.wait_for_records(1, WAIT) {
        Err(WaitError::Decode(e)) => assert_eq!(e.index, 0),
        other => panic!("expected a decode error, got {other:?}"),
    }
    assert_eq!(node.errors().len(), 1);
    assert!(node.batches()[0].error.is_some());
}

#[test]
fn waits_time_out_and_predicates_work() {
    let node = Node::start().unwrap();
    let started = Instant::now();
    assert_eq!(
        node.wait_for_records(1, Duration::from_millis(100)),
        Err(WaitError::Timeout { wanted: 1, got: 0 })
    );
    assert!(started.elapsed() >= Duration::from_millis(100));

    // Only POST is a batch.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let status = rt
        .block_on(send(node.addr(), false, Method::GET, 0, Vec::new()))
        .unwrap();
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(node.batch_count(), 0);

    let addr = node.addr();
    let sender = std::thread::spawn(move || {
        for id in ["x", "y", "z"] {
            post_blocking(addr, false, 2, exchange(id)).unwrap();
        }
    });
    assert!(node.wait_until(WAIT, |batches| {
        batches
            .iter()
            .flat_map(|b| &b.records)
            .any(|r| r.id == "z" && r.is_response())
    }));
    sender.join().unwrap();
    assert_eq!(node.record_count(), 6);
}
