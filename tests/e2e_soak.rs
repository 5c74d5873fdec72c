//! Soak: steady client load through Envoy (2 workers) for `OOB_MIRROR_SOAK_SECS` seconds
//! (default 60; `make soak` runs 600) while the analysis node is killed and restarted on the
//! same port every 30 s. Every client is served by the upstream, Envoy's memory stays flat
//! after a warm-up, and every record is accounted for, exactly.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::load::Load;
use support::records::Node;
use support::stats;
use support::wait::poll_until;
use support::{client::Client, Envoy, EnvoyConfig, Upstream};

use recording_node::NodeConfig;

const DEFAULT_SECS: u64 = 60;
const WORKERS: u32 = 2;
const RATE_PER_SEC: u32 = 200;
const CONNECTIONS: u32 = 4;
/// The node is up for the first 25 s of every 30 s, then down for 5 s.
const NODE_CYCLE: Duration = Duration::from_secs(30);
const NODE_DOWN: Duration = Duration::from_secs(5);
const RSS_EVERY: Duration = Duration::from_secs(2);
/// Allowed RSS growth after the warm-up.
const RSS_GROWTH: f64 = 1.10;

fn soak_duration() -> Duration {
    let secs = std::env::var("OOB_MIRROR_SOAK_SECS")
        .ok()
        .map(|v| {
            v.parse::<u64>()
                .unwrap_or_else(|e| panic!("OOB_MIRROR_SOAK_SECS={v:?}: {e}"))
        })
        .unwrap_or(DEFAULT_SECS);
    Duration::from_secs(secs)
}

/// The first ~20% of the run, and at least one full node kill/restart cycle.
fn warm_up(run: Duration) -> Duration {
    (run / 5).max(NODE_CYCLE)
}

/// Resident memory of a process, from `/proc/<pid>/status`.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status:\n{status}"));
    kib * 1024
}

fn mib(bytes: impl Into<f64>) -> String {
    format!("{:.1} MiB", bytes.into() / (1024.0 * 1024.0))
}

/// Distinct records the node received, across its restarts, and how many came twice.
#[derive(Default)]
struct Census {
    seen: HashSet<(String, bool)>,
    duplicates: u64,
}

/// A node that keeps no batches (a long soak would hold every record), only a census of
/// record identities.
fn census_node() -> (Node, Arc<Mutex<Census>>) {
    let census = Arc::new(Mutex::new(Census::default()));
    let hook = Arc::clone(&census);
    let node = Node::start_with(NodeConfig {
        retain: false,
        on_batch: Some(Arc::new(move |batch| {
            let mut census = hook.lock().unwrap();
            for r in &batch.records {
                if !census.seen.insert((r.id.clone(), r.is_request())) {
                    census.duplicates += 1;
                }
            }
        })),
        ..NodeConfig::default()
    })
    .expect("start the test node");
    (node, census)
}

/// Polls until the gauge reads the same a few times in a row (every VM has published).
fn settled_gauge(envoy: &Envoy, metric: &str) -> i128 {
    let mut last = (-1, 0);
    poll_until(Duration::from_secs(10), || {
        let now = stats::read(envoy).get(metric);
        last = if now == last.0 {
            (now, last.1 + 1)
        } else {
            (now, 0)
        };
        (last.1 >= 5).then_some(now)
    })
    .unwrap_or(last.0)
}

#[test]
fn soak_with_node_restarts_keeps_memory_flat_and_accounting_exact() {
    let run = soak_duration();
    let warm_up = warm_up(run);
    let upstream = Upstream::start();
    let (mut node, census) = census_node();
    let envoy = Envoy::start(&EnvoyConfig::new(upstream.port(), node.port()).concurrency(WORKERS));
    let pid = envoy.pid().expect("Envoy's pid");
    // The PyPI package's `envoy` is a Python script that execs Envoy: the pid must be Envoy's.
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("read /proc/<pid>/exe");
    assert!(
        !exe.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("python")),
        "pid {pid} is {exe:?}, not Envoy"
    );
    let client = Client::new();
    let rt = client.runtime();
    let idle_memory = settled_gauge(&envoy, "wasm_memory_bytes");

    println!(
        "soak: {run:?} at {RATE_PER_SEC} req/s over {CONNECTIONS} connections, {WORKERS} \
         workers; node down {NODE_DOWN:?} in every {NODE_CYCLE:?}; warm-up {warm_up:?}; \
         Envoy pid {pid} ({})",
        exe.display()
    );
    let started = Instant::now();
    let load = Load::start(rt, envoy.addr(), RATE_PER_SEC, CONNECTIONS);
    let mut rss: Vec<(Duration, u64)> = Vec::new();
    let mut next_rss = Duration::ZERO;
    let mut kills = 0;
    let mut peak_queued_bytes = 0;
    let mut peak_memory = 0;
    loop {
        let t = started.elapsed();
        if t >= run {
            break;
        }
        let in_cycle = Duration::from_secs(t.as_secs() % NODE_CYCLE.as_secs());
        let down = in_cycle >= NODE_CYCLE - NODE_DOWN;
        if down && node.is_running() {
            node.stop();
            kills += 1;
            println!("soak: {t:>6.1?} node killed");
        } else if !down && !node.is_running() {
            node.restart().expect("restart the node on its port");
            println!("soak: {t:>6.1?} node restarted");
        }
        if t >= next_rss {
            let bytes = rss_bytes(pid);
            let st = stats::read(&envoy);
            peak_queued_bytes = peak_queued_bytes.max(st.get("queued_bytes"));
            peak_memory = peak_memory.max(st.get("wasm_memory_bytes"));
            println!(
                "soak: {t:>6.1?} rss {}  queued {} records / {} bytes  wasm memory {}",
                mib(bytes as f64),
                st.get("queued_records"),
                st.get("queued_bytes"),
                mib(st.get("wasm_memory_bytes") as f64)
            );
            rss.push((t, bytes));
            next_rss += RSS_EVERY;
        }
        // The schedule's own tick (node kills, samples), not a wait for a condition.
        std::thread::sleep(Duration::from_millis(100));
    }
    let report = load.stop(rt);
    if !node.is_running() {
        node.restart().expect("restart the node on its port");
    }
    let requests = i128::from(report.sent);
    // A worker in backoff probes again within 8 s.
    let st = stats::wait_drained_and(&envoy, Duration::from_secs(60), |s| {
        s.get("records_captured") == 2 * requests
    });
    let (received, duplicates) = {
        let census = census.lock().unwrap();
        (census.seen.len() as i128, census.duplicates)
    };

    let baseline = rss
        .iter()
        .rev()
        .find(|(t, _)| *t <= warm_up)
        .map(|(_, b)| *b)
        .expect("an RSS sample in the warm-up");
    let after: Vec<u64> = rss
        .iter()
        .filter(|(t, _)| *t > warm_up)
        .map(|(_, b)| *b)
        .collect();
    let max_after = after.iter().copied().max().unwrap_or(baseline);
    println!("soak: clients: {}", report.summary());
    println!(
        "soak: records captured {} = sent {} + dropped (queue full {}, node failure {}) + \
         queued {} + in flight {}",
        st.get("records_captured"),
        st.get("records_sent"),
        st.get("records_dropped_queue_full"),
        st.get("records_dropped_node_failure"),
        st.get("queued_records"),
        st.get("inflight_records")
    );
    println!(
        "soak: batches sent {}, failed: reset {}, timeout {}, status {}, dispatch {}; \
         backoffs {}; node kills {kills}",
        st.get("batches_sent"),
        st.get("batches_failed_reset"),
        st.get("batches_failed_timeout"),
        st.get("batches_failed_status"),
        st.get("batches_failed_dispatch"),
        st.get("backoffs")
    );
    println!(
        "soak: the node received {received} distinct records ({duplicates} duplicates); the \
         filter counts {} as acknowledged",
        st.get("records_sent")
    );
    println!(
        "soak: rss at the end of the warm-up {}, max after {} ({:.3}x, limit {RSS_GROWTH}x), \
         {} samples after the warm-up",
        mib(baseline as f64),
        mib(max_after as f64),
        max_after as f64 / baseline as f64,
        after.len()
    );
    // Every VM publishes the gauge: one per worker and one on the main thread, which carries
    // no traffic and stays at its idle size.
    let idle_per_vm = idle_memory / i128::from(WORKERS + 1);
    println!(
        "soak: wasm_memory_bytes (summed over {WORKERS} workers + the main thread's VM) idle {} \
         ({idle_per_vm} per VM), peak {} (~{} per worker), at the end {}; peak queued_bytes \
         {peak_queued_bytes}",
        idle_memory,
        peak_memory,
        (peak_memory - idle_per_vm) / i128::from(WORKERS),
        st.get("wasm_memory_bytes")
    );

    assert_eq!(
        report.failed, 0,
        "clients not served by the upstream: {:#?}",
        report.failures
    );
    assert_eq!(report.ok, report.sent);
    assert!(
        !after.is_empty(),
        "no RSS sample after the warm-up ({warm_up:?})"
    );
    assert!(
        max_after as f64 <= RSS_GROWTH * baseline as f64,
        "Envoy's RSS grew after the warm-up: {} -> {} (samples: {:?})",
        mib(baseline as f64),
        mib(max_after as f64),
        rss.iter()
            .map(|(t, b)| format!("{:.0}s {}", t.as_secs_f64(), mib(*b as f64)))
            .collect::<Vec<_>>()
    );
    st.assert_settled(requests);
    assert!(kills >= 1, "the node was never killed");
    assert!(
        st.get("records_dropped_node_failure") > 0 || st.get("backoffs") > 0,
        "the node's outages left no trace: {st:?}"
    );
    assert_eq!(duplicates, 0, "the node got records more than once");
    // The node stores a batch before it answers: a kill between the two loses only the
    // acknowledgement, so the filter counts that batch as failed while the node has it.
    let sent = st.get("records_sent");
    assert!(
        received >= sent && received <= sent + st.get("records_dropped_node_failure"),
        "the node received {received} records, the filter counts {sent} as sent: {st:?}"
    );
    envoy.assert_no_critical_wasm();
}
