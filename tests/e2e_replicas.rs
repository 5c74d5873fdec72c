//! Node replicas behind the real Envoy: 3 `oob-mirror-node` processes on their own ports,
//! sharing one real PostgreSQL store, the node cluster balanced by ring hash and
//! health-checked. 10,000 exchanges (5% attacks) go through the filter as fast as the client's
//! connections can send them; one replica is killed (SIGKILL) at a third of the run and
//! started again at two thirds.
//!
//! Checked, in batch mode with `node.shards: 16` and in ext_proc mode:
//! - every client answer is the upstream's own;
//! - no exchange is split between replicas while the ring does not change: before the kill,
//!   no replica has analysed a request alone or dropped a response;
//! - every attack the single reference node finds is found by the replicas with the same
//!   rules, but for those sent around the kill or the return (their count is printed and
//!   bounded), and the replicas find nothing else;
//! - the three APIs list the same attacks.
//!
//! The same run with `node.shards: 1` is reported: every batch then goes to one replica.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "../node/tests/support/pg.rs"]
mod pg;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::client::{H1Conn, Req};
use support::paths::{repo_root, TempDir};
use support::ports::free_port;
use support::stats;
use support::upstream::Upstream;
use support::wait::poll_until;
use support::{Envoy, EnvoyConfig};

const EXCHANGES: u64 = 10_000;
/// One exchange in 20 is an attack.
const ATTACK_EVERY: u64 = 20;
const CONNECTIONS: u64 = 8;
const REPLICAS: usize = 3;
/// The replica killed and brought back.
const VICTIM: usize = 1;
/// How long after the kill (or the return) an exchange may still be lost or split: the
/// batches in flight, the health check's interval and timeout, the node's pairing timeout.
const EVENT_WINDOW: Duration = Duration::from_secs(6);
const PAIR_TIMEOUT_MS: u64 = 3000;
const SETTLE: Duration = Duration::from_secs(120);
/// Exchanges waiting for analysis on all nodes above which the client pauses: the highest
/// rate this machine sustains is the rate the nodes analyse at.
const MAX_BACKLOG: u64 = 200;

/// Attack `k`'s request path (all detected by CRS at paranoia 1).
fn attack_path(i: u64) -> String {
    match (i / ATTACK_EVERY) % 5 {
        0 => format!("/search?q=1%27%20OR%20%271%27%3D%271&i={i}"),
        1 => format!("/page?name=%3Cscript%3Ealert(1)%3C%2Fscript%3E&i={i}"),
        2 => format!("/files?path=..%2F..%2F..%2Fetc%2Fpasswd&i={i}"),
        3 => format!("/run?cmd=%3Bcat%20%2Fetc%2Fpasswd&i={i}"),
        _ => format!("/q?x=%3C%3Fphp%20system(%24_GET%5B%27c%27%5D)%3B%20%3F%3E&i={i}"),
    }
}

fn is_attack(i: u64) -> bool {
    i.is_multiple_of(ATTACK_EVERY)
}

fn request(i: u64) -> Req {
    let req = if is_attack(i) {
        Req::get(&attack_path(i))
    } else if i.is_multiple_of(4) {
        Req::post(
            &format!("/api/orders?i={i}"),
            format!(r#"{{"item":"lamp","qty":{}}}"#, i % 7 + 1),
        )
        .header("content-type", "application/json")
    } else {
        Req::get(&format!("/api/items/{}?page=2", i % 500))
    };
    req.header("x-request-id", format!("rep-{i}"))
}

fn node_bin() -> PathBuf {
    let bin = std::env::var_os("OOB_MIRROR_NODE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/release/oob-mirror-node"));
    assert!(
        bin.is_file(),
        "no node binary at {} (make node builds it)",
        bin.display()
    );
    bin
}

/// One `oob-mirror-node` process.
struct Node {
    child: Option<Child>,
    port: u16,
    log: Arc<Mutex<String>>,
}

impl Node {
    fn start(port: u16, store: &str) -> Node {
        let mut child = Command::new(node_bin())
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--store", store])
            .args(["--threads", "1", "--queue", "50000"])
            .args(["--pair-timeout-ms", &PAIR_TIMEOUT_MS.to_string()])
            .args(["--inventory", "off"])
            .env("OOB_MIRROR_NODE_STORE_PASSWORD", pg::PASSWORD)
            .env("OOB_MIRROR_REDACT_KEY", "replicas-test-key")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", node_bin().display()));
        let log = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.starts_with("listening on") {
                    let _ = ready_tx.send(());
                }
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        if ready_rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "node on port {port} did not start:\n{}",
                log.lock().unwrap()
            );
        }
        Node {
            child: Some(child),
            port,
            log,
        }
    }

    fn is_up(&self) -> bool {
        self.child.is_some()
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    fn get(&self, path: &str) -> String {
        let resp = support::raw_http::get(self.addr(), path, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{path} on :{}: {e}", self.port));
        assert_eq!(
            resp.status,
            200,
            "{path} on :{}: {}",
            self.port,
            resp.body_str()
        );
        resp.body_str()
    }

    fn metric(&self, name: &str) -> u64 {
        let text = self.get("/metrics");
        let prefix = format!("oob_mirror_node_{name} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map_or_else(|| panic!("no {name} in /metrics:\n{text}"), |v| v as u64)
    }

    /// Every attack of the shared store, as this replica's API exports it: request id and
    /// rule ids, and the status when it was analysed with its response.
    fn attacks(&self) -> BTreeMap<String, (BTreeSet<u64>, Option<u64>)> {
        let mut out = BTreeMap::new();
        for line in self.get("/api/v1/export").lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            let id = v["request_id"].as_str().unwrap_or_default().to_owned();
            let rules = v["rules"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].as_u64().unwrap())
                .collect();
            let prev = out.insert(id.clone(), (rules, v["status"].as_u64()));
            assert!(prev.is_none(), "{id} stored twice");
        }
        out
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "===== node :{} log =====\n{}",
                self.port,
                self.log.lock().unwrap()
            );
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Batch { shards: u32 },
    ExtProc,
}

impl Mode {
    /// Batches: ring hash, so each shard's :authority stays on one replica. ext_proc: each
    /// exchange is one stream, which any policy keeps on one replica; a gRPC stream has no
    /// hash key, so a ring hash would send every stream to one replica.
    fn lb_policy(self) -> &'static str {
        match self {
            Mode::Batch { .. } => "RING_HASH",
            Mode::ExtProc => "ROUND_ROBIN",
        }
    }

    fn plugin(self) -> String {
        match self {
            Mode::Batch { shards } => format!(
                r#"{{"node":{{"cluster":"oob_mirror_node","timeout_ms":1000,"shards":{shards}}},"batch":{{"flush_ms":20,"max_queue_bytes":67108864}}}}"#
            ),
            Mode::ExtProc => r#"{"node":{"cluster":"oob_mirror_node","protocol":"ext_proc","timeout_ms":2000},"ext_proc":{"max_streams":4096}}"#.to_owned(),
        }
    }
}

/// What one run saw.
struct Run {
    /// When each exchange's request was sent, from the start of the run.
    sent_at: Vec<Duration>,
    /// Time of the kill and of the return.
    events: Vec<Duration>,
    elapsed: Duration,
    /// Union of the replicas' attacks (all three APIs agree on it).
    attacks: BTreeMap<String, (BTreeSet<u64>, Option<u64>)>,
    /// Per replica: records (or streams) received after the run, the restarted one counted
    /// since its return.
    received: Vec<u64>,
    unpaired_before_kill: u64,
    unpaired: u64,
    filter: stats::Stats,
}

/// Sends `ids` through Envoy with `CONNECTIONS` keep-alive connections as fast as the nodes
/// analyse them: a connection waits while `backlog` (exchanges waiting for analysis on the
/// nodes) is above [`MAX_BACKLOG`]. Counts the answers in `done`, from `start`. Every answer
/// must be the upstream's echo of that request.
fn send_all(
    addr: SocketAddr,
    ids: &[u64],
    done: &AtomicU64,
    backlog: &AtomicU64,
    start: Instant,
) -> Vec<Duration> {
    let next = AtomicU64::new(0);
    let sent_at = Mutex::new(vec![Duration::ZERO; ids.len()]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    std::thread::scope(|s| {
        let rt = &rt;
        let (next, done, sent_at) = (&next, &done, &sent_at);
        for _ in 0..CONNECTIONS {
            s.spawn(move || {
                rt.block_on(async move {
                    let mut conn = H1Conn::connect(addr).await.unwrap();
                    loop {
                        let k = next.fetch_add(1, Ordering::Relaxed) as usize;
                        let Some(&i) = ids.get(k) else { break };
                        while backlog.load(Ordering::Relaxed) > MAX_BACKLOG {
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                        let req = request(i);
                        sent_at.lock().unwrap()[k] = start.elapsed();
                        let resp = match conn.send(&req).await {
                            Ok(r) => r,
                            Err(_) => {
                                // A connection Envoy closed: one more try on a new one.
                                conn = H1Conn::connect(addr).await.unwrap();
                                conn.send(&req).await.unwrap()
                            }
                        };
                        if let Err(why) = support::load::check(&req, &resp) {
                            panic!("the client's answer changed: {why}");
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                });
            });
        }
    });
    sent_at.into_inner().unwrap()
}

/// Waits until every live node has analysed and stored all it received.
fn settle(nodes: &[Node]) {
    let settled = poll_until(SETTLE, || {
        nodes
            .iter()
            .all(|n| {
                n.metric("analysis_queue") == 0
                    && n.metric("pairing_pending") == 0
                    && n.metric("exchanges_with_attacks_total")
                        == n.metric("store_written_total")
                            + n.metric("store_failed_total")
                            + n.metric("store_dropped_queue_full_total")
            })
            .then_some(())
    });
    assert!(
        settled.is_some(),
        "the nodes did not settle within {SETTLE:?}"
    );
}

fn unpaired(nodes: &[Node]) -> u64 {
    nodes
        .iter()
        .map(|n| n.metric("unpaired_requests_total") + n.metric("unpaired_responses_total"))
        .sum()
}

fn received(n: &Node, mode: Mode) -> u64 {
    match mode {
        Mode::Batch { .. } => n.metric("records_received_total"),
        Mode::ExtProc => n.metric("extproc_streams_total"),
    }
}

/// The reference: one node, alone, on the attack exchanges of the same traffic.
fn reference(upstream: &Upstream, mode: Mode) -> BTreeMap<String, BTreeSet<u64>> {
    let dir = TempDir::new("replicas-reference");
    let node = Node::start(
        free_port(),
        &format!("sqlite:{}", dir.path().join("node.sqlite").display()),
    );
    let mut config = EnvoyConfig::new(upstream.port(), node.port).plugin(mode.plugin());
    if mode == Mode::ExtProc {
        config = config.node_http2();
    }
    let envoy = Envoy::start(&config);
    let ids: Vec<u64> = (0..EXCHANGES).filter(|i| is_attack(*i)).collect();
    let backlog = AtomicU64::new(0);
    std::thread::scope(|s| {
        let sender = s.spawn(|| {
            send_all(
                envoy.addr(),
                &ids,
                &AtomicU64::new(0),
                &backlog,
                Instant::now(),
            )
        });
        while !sender.is_finished() {
            backlog.store(node.metric("analysis_queue"), Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(20));
        }
        sender.join().unwrap();
    });
    stats::wait_drained(&envoy, SETTLE);
    settle(std::slice::from_ref(&node));
    let attacks = node.attacks();
    assert_eq!(
        attacks.len(),
        ids.len(),
        "the reference node missed attacks"
    );
    attacks
        .into_iter()
        .map(|(id, (rules, status))| {
            assert_eq!(status, Some(200), "{id}: analysed without its response");
            (id, rules)
        })
        .collect()
}

fn run(mode: Mode, upstream: &Upstream) -> Run {
    let pg = pg::PgCluster::start();
    let ports: Vec<u16> = (0..REPLICAS).map(|_| free_port()).collect();
    let nodes: Vec<Node> = ports.iter().map(|p| Node::start(*p, &pg.url())).collect();
    let nodes = Mutex::new(nodes);
    let mut config = EnvoyConfig::new(upstream.port(), ports[0])
        .plugin(mode.plugin())
        .node_replicas(&ports, mode.lb_policy());
    if mode == Mode::ExtProc {
        config = config.node_http2();
    }
    let envoy = Envoy::start(&config);
    // Every replica is healthy for Envoy before the traffic starts.
    let healthy = poll_until(Duration::from_secs(30), || {
        (stats::envoy_stat(&envoy, "cluster.oob_mirror_node.membership_healthy") == 3).then_some(())
    });
    assert!(
        healthy.is_some(),
        "the replicas are not all healthy for Envoy"
    );

    let start = Instant::now();
    let mut events = Vec::new();
    let mut unpaired_before_kill = 0;
    let mut victim_before = 0;
    let ids: Vec<u64> = (0..EXCHANGES).collect();
    let done = AtomicU64::new(0);
    let wait_for = |n: u64| {
        while done.load(Ordering::Relaxed) < n {
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    let backlog = AtomicU64::new(0);
    let sent_at = std::thread::scope(|s| {
        let sender = s.spawn(|| send_all(envoy.addr(), &ids, &done, &backlog, start));
        s.spawn(|| {
            while done.load(Ordering::Relaxed) < EXCHANGES {
                let queued = nodes
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|n| n.is_up())
                    .map(|n| n.metric("analysis_queue"))
                    .sum();
                backlog.store(queued, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        wait_for(EXCHANGES / 3);
        {
            let mut nodes = nodes.lock().unwrap();
            // Pairs held longer than the pairing timeout are counted by now.
            unpaired_before_kill = unpaired(&nodes);
            victim_before = received(&nodes[VICTIM], mode);
            nodes[VICTIM].kill();
            events.push(start.elapsed());
        }
        wait_for(2 * EXCHANGES / 3);
        {
            let mut nodes = nodes.lock().unwrap();
            nodes[VICTIM] = Node::start(ports[VICTIM], &pg.url());
            events.push(start.elapsed());
        }
        sender.join().unwrap()
    });
    let elapsed = start.elapsed();
    let filter = stats::wait_drained(&envoy, SETTLE);
    let nodes = nodes.into_inner().unwrap();
    settle(&nodes);
    let lists: Vec<_> = nodes.iter().map(Node::attacks).collect();
    for (k, list) in lists.iter().enumerate().skip(1) {
        assert_eq!(
            list.keys().collect::<Vec<_>>(),
            lists[0].keys().collect::<Vec<_>>(),
            "replica {k}'s API lists other attacks than replica 0's"
        );
    }
    let received = nodes.iter().map(|n| received(n, mode)).collect();
    let run = Run {
        sent_at,
        events,
        elapsed,
        attacks: lists.into_iter().next().unwrap(),
        received,
        unpaired_before_kill,
        unpaired: unpaired(&nodes),
        filter,
    };
    let total: u64 = run.received.iter().sum::<u64>() + victim_before;
    let dropped = not_delivered(&run.filter);
    eprintln!(
        "{mode:?}: {} {} delivered ({victim_before} of them to replica {VICTIM} before the kill, \
         {:?} to the replicas after), {} dropped by the filter",
        total,
        if matches!(mode, Mode::ExtProc) {
            "streams"
        } else {
            "records"
        },
        run.received,
        dropped,
    );
    // Every record (stream) is delivered to a replica or counted as dropped by the filter. The
    // victim's count is read just before the kill: what reached it in between is missing, and
    // what it took but had not answered when killed is counted twice.
    let expected = match mode {
        Mode::ExtProc => EXCHANGES,
        Mode::Batch { .. } => 2 * EXCHANGES,
    };
    let accounted = total + u64::try_from(dropped).unwrap();
    assert!(
        accounted.abs_diff(expected) <= 64,
        "{mode:?}: {accounted} delivered or dropped of {expected}"
    );
    eprintln!(
        "{mode:?}: {EXCHANGES} exchanges in {:.1} s ({:.0}/s); replica {VICTIM} had {} before \
         the kill; received after the run {:?}",
        run.elapsed.as_secs_f64(),
        EXCHANGES as f64 / run.elapsed.as_secs_f64(),
        victim_before,
        run.received
    );
    run
}

/// Records (batch mode) or exchanges (ext_proc mode) the filter counted as not delivered, by
/// any reason: a batch that failed or found the queue full; a stream that failed, was
/// cancelled or refused, or an exchange given up while the filter backed off or had too many
/// streams open.
fn not_delivered(s: &stats::Stats) -> i128 {
    s.dropped()
        + [
            "extproc_streams_failed",
            "extproc_streams_cancelled",
            "extproc_streams_refused",
            "extproc_dropped_backoff",
            "extproc_dropped_max_streams",
        ]
        .iter()
        .map(|n| s.get(n))
        .sum::<i128>()
}

fn near_an_event(run: &Run, i: u64) -> bool {
    let t = run.sent_at[i as usize];
    run.events
        .iter()
        .any(|e| t + EVENT_WINDOW >= *e && t <= *e + EVENT_WINDOW)
}

/// The runs take both cores: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn check(mode: Mode) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let upstream = Upstream::start();
    let want = reference(&upstream, mode);
    let run = run(mode, &upstream);
    assert_eq!(run.events.len(), 2, "the kill and the return");

    // Nothing split while the ring did not change.
    assert_eq!(
        run.unpaired_before_kill, 0,
        "{mode:?}: exchanges split before the kill"
    );
    // The replicas find nothing the reference does not, with the same rules.
    for (id, (rules, _)) in &run.attacks {
        let expected = want
            .get(id)
            .unwrap_or_else(|| panic!("{mode:?}: {id} flagged by the replicas, not by one node"));
        assert_eq!(rules, expected, "{mode:?}: {id}'s rules");
    }
    // What they miss, or analysed without its response, was sent around the kill or the return.
    let mut lost = Vec::new();
    let mut split = Vec::new();
    for i in (0..EXCHANGES).filter(|i| is_attack(*i)) {
        let id = format!("rep-{i}");
        match run.attacks.get(&id) {
            None => lost.push(i),
            Some((_, None)) => split.push(i),
            Some((_, Some(status))) => assert_eq!(*status, 200, "{id}"),
        }
    }
    for i in lost.iter().chain(&split) {
        assert!(
            near_an_event(&run, *i),
            "{mode:?}: rep-{i} (sent at {:?}; kill and return at {:?}) lost or split far from \
             either",
            run.sent_at[*i as usize],
            run.events
        );
    }
    let dropped = not_delivered(&run.filter);
    eprintln!(
        "{mode:?}: attacks {} of {} found as the reference does; lost {} and analysed \
         alone {} (all sent within {EVENT_WINDOW:?} of the kill or the return); the filter \
         counted {dropped} records or streams not delivered ({} exchanges given up while it \
         backed off); the replicas counted {} unpaired, none before the kill",
        run.attacks.len() - split.len(),
        want.len(),
        lost.len(),
        split.len(),
        run.filter.get("extproc_dropped_backoff"),
        run.unpaired,
    );
    // The loss is that of a few batches, not of a replica's share.
    assert!(
        lost.len() + split.len() < want.len() / 10,
        "{mode:?}: lost {lost:?}, split {split:?}"
    );
    // Every replica took part.
    for (k, n) in run.received.iter().enumerate() {
        assert!(
            *n > 0,
            "{mode:?}: replica {k} received nothing: {:?}",
            run.received
        );
    }
}

#[test]
fn batches_sharded_over_three_replicas_keep_pairs_through_a_kill() {
    check(Mode::Batch { shards: 16 });
}

#[test]
fn ext_proc_streams_over_three_replicas_keep_pairs_through_a_kill() {
    check(Mode::ExtProc);
}

/// What sharding buys, reported: the same run with one shard sends every batch to one
/// replica (the ring hash of one :authority).
#[test]
fn one_shard_sends_everything_to_one_replica() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let upstream = Upstream::start();
    let run = run(Mode::Batch { shards: 1 }, &upstream);
    let busy = run.received.iter().filter(|n| **n > 0).count();
    eprintln!(
        "Batch {{ shards: 1 }}: records received per replica {:?}: {busy} replica(s) did the \
         work; {} attacks stored",
        run.received,
        run.attacks.len()
    );
    assert!(
        busy <= 2,
        "one shard is one hash key: at most the owner and, while it was dead, its successor: {:?}",
        run.received
    );
}
