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

use support::client::{Client, Req};
use support::records::{start_node, Behavior, Node};
use support::stats::{self, Stats};
use support::upstream::pattern;
use support::workload::{assert_same_answers, run};
use support::{ports, Envoy, EnvoyConfig, Upstream};

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
    assert_same_answers(&got, &expected, "the filter");
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
        // Paced on purpose: the outage lasts long enough (~0.5 s, several
        // flush intervals) for the workers to fail batch after batch and back
        // off, so the recovery below is a recovery from backoff.
        std::thread::sleep(Duration::from_millis(25));
    }
    // Wait until the outage is noticed and its records are dropped.
    let st = stats::wait_drained_and(&envoy, Duration::from_secs(30), |s| {
        s.get("records_captured") == 42 && s.get("records_dropped_node_failure") > 0
    });
    assert!(
        st.get("backoffs") >= 1,
        "no backoff during the outage: {st:?}"
    );
    node.restart().expect("restart the node");

    // Traffic after the node is back reaches it again: a worker in backoff
    // keeps the record queued and sends it with its next probe (at most 8 s
    // away), which the node now acknowledges.
    let resp = client.send(envoy.addr(), &Req::get("/echo?phase=after"));
    assert_eq!(resp.status, 200);
    let back = support::wait::poll_until(Duration::from_secs(30), || {
        node.records()
            .iter()
            .any(|r| r.path.as_deref() == Some("/echo?phase=after"))
            .then_some(())
    });
    assert!(
        back.is_some(),
        "no record reached the node after it came back: {:?}",
        stats::read(&envoy)
    );
    let st = stats::wait_drained(&envoy, support::EVENTUALLY);
    assert!(st.get("records_dropped_node_failure") > 0, "{st:?}");
    assert!(st.get("records_sent") >= 3, "{st:?}");
    // The outage and the recovery are in Envoy's log: per worker, one warning for the
    // connection failures (however many batches failed), then one line when delivery resumed.
    let log = wait_log(
        &envoy,
        "batches to cluster 'oob_mirror_node' delivered again",
    );
    let warnings = lines(
        &log,
        "batches to cluster 'oob_mirror_node' fail: connection to the node failed or was reset",
    );
    assert!(
        (1..=2).contains(&warnings.len()),
        "one warning per worker (2):\n{log}"
    );
    assert!(
        warnings
            .iter()
            .all(|l| l.contains("[warning]")
                && l.contains("records dropped since the last such line")),
        "{warnings:#?}"
    );
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
                    "batch":{"flush_ms":20,"max_inflight":1,"max_bytes":4096,"max_queue_bytes":8192},
                    "sampling":{"shed":false}}"#,
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

/// The backoff promise (README, "How records travel", Failures): after 3
/// failed batches in a row a worker pauses 250 ms, then probes with one batch
/// at a time; each failed probe doubles the pause, up to 8 s. Written out here
/// rather than imported, so that the test holds the filter to the promise.
const FAILURES_BEFORE_BACKOFF: i128 = 3;
const FIRST_PAUSE_MS: u128 = 250;
const MAX_PAUSE_MS: u128 = 8_000;

/// How many probes one worker can have sent `elapsed` after it started:
/// probe k goes out no earlier than 250 + 500 + ... (k pauses) after the
/// failure that started the backoff, itself after the start.
fn probes_within(elapsed: Duration) -> i128 {
    let (mut at, mut pause, mut probes) = (0, FIRST_PAUSE_MS, 0);
    loop {
        at += pause;
        if at > elapsed.as_millis() {
            return probes;
        }
        probes += 1;
        pause = (pause * 2).min(MAX_PAUSE_MS);
    }
}

#[test]
fn node_down_backs_off_instead_of_connecting_per_exchange() {
    const EXCHANGES: u32 = 100;
    const PACE: Duration = Duration::from_millis(15);
    const WORKERS: u32 = 2;
    const MAX_INFLIGHT: i128 = 4;
    let upstream = Upstream::start();
    // One record per batch: without backoff every record would be its own
    // batch, i.e. one connection attempt to the dead node: 200 of them.
    let envoy = Envoy::start(
        &EnvoyConfig::new(upstream.port(), ports::closed_port())
            .plugin(format!(
                r#"{{"node":{{"cluster":"oob_mirror_node","timeout_ms":500}},
                    "batch":{{"flush_ms":20,"max_records":1,"max_inflight":{MAX_INFLIGHT}}}}}"#
            ))
            .concurrency(WORKERS),
    );
    let client = Client::new();
    let started = Instant::now();
    for i in 0..EXCHANGES {
        // Paced on purpose: backoff is about time, so the exchanges are
        // spread over ~1.5 s (several backoff intervals) rather than a burst.
        let due = started + PACE * i;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let resp = client.send(envoy.addr(), &Req::get(&format!("/status/200?i={i}")));
        assert_eq!(resp.status, 200, "{}", resp.body_str());
    }
    // Every record is captured (the last response record is counted when its
    // stream ends, just after the client has the response). The queue does
    // not drain: while the worker backs off, records wait for the next probe.
    let captured = 2 * i128::from(EXCHANGES);
    let mut last = Stats::default();
    let all_captured = support::wait::poll_until(support::EVENTUALLY, || {
        last = stats::read(&envoy);
        (last.get("records_captured") == captured).then_some(())
    });
    assert!(
        all_captured.is_some(),
        "the filter did not capture {captured} records: {last:?}"
    );
    let connect_fail =
        stats::envoy_stat(&envoy, "cluster.oob_mirror_node.upstream_cx_connect_fail");
    let st = stats::read(&envoy);
    // Measured last: every count above was read within this time.
    let elapsed = started.elapsed();

    // Measured (every run, exchanges over ~1.5 s, 2 workers): 12 connection
    // attempts, 12 failed batches, 6 backoffs. Per worker: 4 batches before
    // the first pause (request and response records of its first exchanges,
    // failing almost together), then probes ~0.25 s and ~0.75 s later.
    // With a module built without backoff: 200 attempts, 0 backoffs; with a
    // pause that never grows (steady 250 ms): 18 attempts, 12 backoffs.
    // The bounds are what the promise allows at most, whatever the machine's
    // speed: per worker, the 3 failures that start the backoff plus the
    // batches still in flight then (at most max_inflight), plus one per probe
    // the pause schedule leaves room for in `elapsed` (2 at 1.5 s, 3 at
    // 1.75 s): 18 at 1.5 s, an eleventh of the 200.
    let bound =
        i128::from(WORKERS) * (FAILURES_BEFORE_BACKOFF + MAX_INFLIGHT + probes_within(elapsed));
    let numbers = format!(
        "{connect_fail} connection attempts failed in {elapsed:?} \
         (bound {bound}, {captured} batches without backoff)\n{st:?}"
    );
    eprintln!("{numbers}");
    assert!(st.get("backoffs") >= 1, "no backoff: {numbers}");
    // Each backoff is a worker's first pause or a failed probe, and growing
    // pauses leave room for few probes: at most 1 + 2 per worker at 1.5 s (a
    // steady 250 ms pause gave 6 per worker).
    assert!(
        st.get("backoffs") <= i128::from(WORKERS) * (1 + probes_within(elapsed)),
        "more pauses than growing pauses allow: {numbers}"
    );
    assert!(
        connect_fail >= FAILURES_BEFORE_BACKOFF,
        "the dead node was hardly tried, is the stat right? {numbers}"
    );
    assert!(
        connect_fail <= bound,
        "a connection attempt per exchange or so despite backoff: {numbers}"
    );
    // The filter sees the same: few batches, each failed and its one record
    // dropped; the rest wait in the queue.
    assert!(st.batches_failed() <= bound, "{numbers}");
    assert_eq!(
        st.batches_failed(),
        st.get("batches_failed_reset"),
        "{numbers}"
    );
    assert_eq!(
        st.get("records_dropped_node_failure"),
        st.batches_failed(),
        "{numbers}"
    );
    assert_eq!(st.get("records_sent"), 0, "{numbers}");
    assert_eq!(st.get("records_dropped_queue_full"), 0, "{numbers}");
    st.assert_invariant();
    envoy.assert_no_critical_wasm();
}

/// Envoy's log lines holding `text`.
fn lines<'a>(log: &'a str, text: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(text)).collect()
}

/// Envoy's log once it holds `text` (its log file is flushed every 100 ms here).
fn wait_log(envoy: &Envoy, text: &str) -> String {
    support::wait::poll_until(support::EVENTUALLY, || {
        let log = envoy.log();
        log.contains(text).then_some(log)
    })
    .unwrap_or_else(|| panic!("no log line with {text:?}:\n{}", envoy.log()))
}

/// A typo in `node.cluster` is named in Envoy's log at the first failed delivery, once per
/// worker however much traffic follows, in both protocols; the clients see nothing.
#[test]
fn an_unknown_cluster_is_named_in_the_log_at_once() {
    let upstream = Upstream::start();
    // Envoy says which for an HTTP call; for a gRPC stream it only says InternalFailure.
    for (protocol, what, unit, reason) in [
        (
            "batch",
            "batches",
            "records",
            "Envoy has no cluster by that name",
        ),
        (
            "ext_proc",
            "ext_proc streams",
            "exchanges",
            "Envoy refused the call (InternalFailure: is there a cluster by that name?)",
        ),
    ] {
        let plugin = format!(
            r#"{{"node":{{"cluster":"oob_mirror_nod","protocol":"{protocol}"}},"batch":{{"flush_ms":20}}}}"#
        );
        let envoy = Envoy::start(
            &EnvoyConfig::new(upstream.port(), ports::free_port())
                .concurrency(1)
                .plugin(plugin),
        );
        let client = Client::new();
        let resp = client.send(envoy.addr(), &Req::get("/echo/first"));
        assert_eq!(resp.status, 200);
        let line = format!("{what} to cluster 'oob_mirror_nod' fail: {reason}");
        wait_log(&envoy, &line);
        for i in 0..20 {
            assert_eq!(
                client
                    .send(envoy.addr(), &Req::get(&format!("/echo/{i}")))
                    .status,
                200
            );
        }
        let st = stats::read(&envoy);
        assert!(
            st.get("batches_failed_dispatch") + st.get("extproc_streams_refused") >= 1,
            "{st:?}"
        );
        let log = envoy.log();
        let found = lines(&log, &line);
        assert_eq!(found.len(), 1, "{protocol}: {found:#?}");
        assert!(
            found[0].contains(&format!("{unit} dropped since the last such line")),
            "{found:?}"
        );
        envoy.assert_no_critical_wasm();
    }
}
