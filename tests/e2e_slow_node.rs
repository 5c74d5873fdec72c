//! A node that answers only after the filter's timeout, under sustained load, with a small
//! queue: the queue fills and stays within `batch.max_queue_bytes` per worker, the records
//! that do not fit are dropped and counted, and every client is still served by the upstream.
//! Shedding is off here, so the queue reaches its bound (tests/e2e_scope.rs tests shedding).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use support::load::{run_for, LoadReport};
use support::records::Behavior;
use support::stats;
use support::Rig;

const WORKERS: u32 = 2;
const MAX_QUEUE_BYTES: i128 = 64 * 1024;
/// At most `max_queue_bytes` (the configuration requires it).
const MAX_BATCH_BYTES: i128 = 16 * 1024;
const TIMEOUT_MS: u64 = 200;
const RATE_PER_SEC: u32 = 200;
const CONNECTIONS: u32 = 4;
const NODE_UP_PHASE: Duration = Duration::from_secs(5);
const NODE_SLOW_PHASE: Duration = Duration::from_secs(8);

/// What the sampler saw of the gauges while the node was slow.
#[derive(Debug, Default)]
struct Peaks {
    samples: u64,
    queued_bytes: i128,
    queued_records: i128,
    inflight_records: i128,
    wasm_memory_bytes: i128,
}

fn assert_all_served(phase: &str, report: &LoadReport) {
    assert!(report.sent > 0, "{phase}: no requests sent");
    assert_eq!(
        report.failed, 0,
        "{phase}: clients not served by the upstream: {:#?}",
        report.failures
    );
    assert_eq!(report.ok, report.sent, "{phase}");
}

#[test]
fn slow_node_fills_the_queue_to_its_bound_and_drops_are_counted() {
    let rig = Rig::start_with(|c| {
        c.plugin(format!(
            r#"{{"node":{{"cluster":"oob_mirror_node","timeout_ms":{TIMEOUT_MS}}},
                "batch":{{"flush_ms":20,"max_bytes":{MAX_BATCH_BYTES},
                          "max_queue_bytes":{MAX_QUEUE_BYTES}}},
                "sampling":{{"shed":false}}}}"#
        ))
        .concurrency(WORKERS)
    });
    let rt = rig.client.runtime();
    let addr = rig.envoy.addr();
    let idle = stats::read(&rig.envoy);

    let node_up = run_for(rt, addr, RATE_PER_SEC, CONNECTIONS, NODE_UP_PHASE);
    assert_all_served("node up", &node_up);
    let before_slow = stats::wait_drained(&rig.envoy, Duration::from_secs(30));
    assert_eq!(before_slow.dropped(), 0, "{before_slow:?}");

    // Answers 5x after the filter's timeout: every batch fails, the workers back off, and
    // records pile up in the queues meanwhile.
    rig.node
        .set_behavior(Behavior::Delay(Duration::from_millis(5 * TIMEOUT_MS)));
    let sampling = AtomicBool::new(true);
    let (node_slow, peaks) = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut peaks = Peaks::default();
            while sampling.load(Ordering::SeqCst) {
                let st = stats::read(&rig.envoy);
                peaks.samples += 1;
                peaks.queued_bytes = peaks.queued_bytes.max(st.get("queued_bytes"));
                peaks.queued_records = peaks.queued_records.max(st.get("queued_records"));
                peaks.inflight_records = peaks.inflight_records.max(st.get("inflight_records"));
                peaks.wasm_memory_bytes = peaks.wasm_memory_bytes.max(st.get("wasm_memory_bytes"));
                // The sampling interval: two of the filter's 10 ms ticks.
                std::thread::sleep(Duration::from_millis(20));
            }
            peaks
        });
        let report = run_for(rt, addr, RATE_PER_SEC, CONNECTIONS, NODE_SLOW_PHASE);
        sampling.store(false, Ordering::SeqCst);
        (report, sampler.join().expect("sampler"))
    });
    assert_all_served("node slow", &node_slow);

    rig.node.set_behavior(Behavior::Ok);
    let sent = i128::from(node_up.sent + node_slow.sent);
    // A worker in backoff probes again within 8 s; give it room.
    let st = stats::wait_drained_and(&rig.envoy, Duration::from_secs(60), |s| {
        s.get("records_captured") == 2 * sent
    });

    println!("slow node: idle metrics before load:\n{idle:?}");
    println!("slow node: node up:   {}", node_up.summary());
    println!("slow node: node slow: {}", node_slow.summary());
    println!(
        "slow node: client p99 {:?} with the node up, {:?} with it slow (not asserted)",
        node_up.percentile(99.0),
        node_slow.percentile(99.0)
    );
    println!(
        "slow node: peaks over {} samples while slow: queued_bytes {} (bound {} = {} x {} \
         workers), queued_records {}, inflight_records {}, wasm_memory_bytes {}",
        peaks.samples,
        peaks.queued_bytes,
        MAX_QUEUE_BYTES * i128::from(WORKERS),
        MAX_QUEUE_BYTES,
        WORKERS,
        peaks.queued_records,
        peaks.inflight_records,
        peaks.wasm_memory_bytes
    );
    println!("slow node: final metrics:\n{st:?}");

    // Gauges are summed over the workers, each bounded by max_queue_bytes.
    assert!(peaks.samples > 50, "{peaks:?}");
    assert!(
        peaks.queued_bytes <= MAX_QUEUE_BYTES * i128::from(WORKERS),
        "queued_bytes peaked at {} > {} x {WORKERS}",
        peaks.queued_bytes,
        MAX_QUEUE_BYTES
    );
    st.assert_settled(sent);
    assert!(st.get("batches_failed_timeout") > 0, "{st:?}");
    assert!(st.get("records_dropped_node_failure") > 0, "{st:?}");
    assert!(
        st.get("records_dropped_queue_full") > 0,
        "the queue never filled: {st:?}"
    );
    assert!(st.get("backoffs") > 0, "{st:?}");
    rig.envoy.assert_no_critical_wasm();
}
