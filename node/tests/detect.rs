//! The node in process (the product's `App`), fed batches the way the filter sends them.

// Test helpers outside `#[test]` functions: a failure should fail the test.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use common::{post_blocking, push_http_request, push_http_response};
use hyper::StatusCode;
use oob_mirror_node::analysis::pool::{Detection, DetectionHook, PoolConfig, Snapshot};
use oob_mirror_node::app::{App, AppConfig};

const WAIT: Duration = Duration::from_secs(10);
const JSON: (&str, &str) = ("content-type", "application/json");

struct Rig {
    node: App,
    /// Every detection, as the hook got it.
    found: Arc<Mutex<Vec<Detection>>>,
}

impl Rig {
    fn start(pool: PoolConfig, hook: Option<DetectionHook>) -> Rig {
        let found: Arc<Mutex<Vec<Detection>>> = Arc::default();
        let keep = Arc::clone(&found);
        let node = App::start(AppConfig {
            pool,
            on_detection: Some(Arc::new(move |d: &Detection| {
                if let Some(hook) = &hook {
                    hook(d);
                }
                keep.lock().unwrap().push(d.clone());
            })),
            ..AppConfig::new(([127, 0, 0, 1], 0).into())
        })
        .unwrap();
        Rig { node, found }
    }

    /// One analysis thread that holds each detection until released (the
    /// hook runs on the analysis thread: holding it holds the queue).
    fn held(queue: usize) -> (Rig, mpsc::Sender<()>) {
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let release_rx = Mutex::new(release_rx);
        let hook: DetectionHook = Arc::new(move |_: &Detection| {
            let _ = release_rx.lock().unwrap().recv_timeout(WAIT);
        });
        let pool = PoolConfig {
            threads: 1,
            queue,
            ..PoolConfig::default()
        };
        (Rig::start(pool, Some(hook)), release_tx)
    }

    fn post(&self, records: usize, batch: Vec<u8>) -> StatusCode {
        post_blocking(self.node.addr(), false, records, batch).unwrap()
    }

    fn wait(&self, what: &str, done: impl Fn(&Snapshot) -> bool) -> Snapshot {
        let deadline = Instant::now() + WAIT;
        loop {
            let s = self.node.detector().snapshot();
            if done(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {s:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn wait_analysed(&self, n: u64) -> Snapshot {
        self.wait(&format!("{n} analysed"), |s| s.exchanges_analysed >= n)
    }

    fn detection(&self, id: &str) -> Option<Detection> {
        self.found
            .lock()
            .unwrap()
            .iter()
            .find(|d| d.id == id)
            .cloned()
    }
}

fn pool() -> PoolConfig {
    PoolConfig {
        threads: 2,
        ..PoolConfig::default()
    }
}

/// One exchange: request (method, path, headers, body) and a 200 JSON reply.
fn exchange(
    batch: &mut Vec<u8>,
    id: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) {
    let len = body.len().to_string();
    let mut all = vec![
        ("host", "api.example.com"),
        ("user-agent", "test/1"),
        ("accept", "*/*"),
    ];
    if !body.is_empty() {
        all.push(("content-length", &len));
    }
    all.extend_from_slice(headers);
    push_http_request(batch, id, method, path, &all, body);
    push_http_response(batch, id, 200, &[JSON], b"{\"ok\":true}");
}

fn families(d: &Detection) -> Vec<u32> {
    let mut f: Vec<u32> = d.rules.iter().map(|m| m.id / 1000).collect();
    f.dedup();
    f
}

#[test]
fn each_attack_class_is_reported_with_its_rule_family_and_benign_calls_are_not() {
    let rig = Rig::start(pool(), None);
    let mut batch = Vec::new();
    let form = ("content-type", "application/x-www-form-urlencoded");
    exchange(&mut batch, "lfi-path", "GET", "/etc/passwd", &[], b"");
    exchange(
        &mut batch,
        "lfi-arg",
        "GET",
        "/download?file=../../../../etc/passwd",
        &[],
        b"",
    );
    exchange(
        &mut batch,
        "sqli",
        "GET",
        "/items?id=1%27%20OR%20%271%27%3D%271",
        &[],
        b"",
    );
    exchange(
        &mut batch,
        "xss",
        "POST",
        "/comments",
        &[JSON],
        br#"{"text":"<script>alert(document.cookie)</script>"}"#,
    );
    exchange(
        &mut batch,
        "rce",
        "POST",
        "/ping",
        &[form],
        b"host=127.0.0.1%3Bcat%20/etc/passwd",
    );
    push_http_request(
        &mut batch,
        "leak",
        "GET",
        "/orders?id=7",
        &[("host", "api.example.com"), ("accept", "*/*")],
        b"",
    );
    push_http_response(
        &mut batch,
        "leak",
        500,
        &[("content-type", "text/html")],
        b"<b>Warning</b>: You have an error in your SQL syntax; check the manual that corresponds to your MySQL server version for the right syntax to use near '' at line 1",
    );
    // Benign API calls.
    exchange(
        &mut batch,
        "b-get",
        "GET",
        "/api/users/42?fields=name,email",
        &[],
        b"",
    );
    exchange(
        &mut batch,
        "b-post",
        "POST",
        "/api/users",
        &[JSON],
        r#"{"name":"Zoë Müller","email":"zoe@example.com"}"#.as_bytes(),
    );
    exchange(
        &mut batch,
        "b-put",
        "PUT",
        "/api/users/42",
        &[JSON],
        r#"{"name":"Conan O'Brien","city":"Zürich"}"#.as_bytes(),
    );
    exchange(
        &mut batch,
        "b-patch",
        "PATCH",
        "/api/users/42",
        &[JSON],
        br#"{"nickname":"D'Artagnan"}"#,
    );
    exchange(&mut batch, "b-delete", "DELETE", "/api/users/42", &[], b"");
    exchange(
        &mut batch,
        "b-text",
        "POST",
        "/api/notes",
        &[JSON],
        "{\"note\":\"Привет, 世界! It's fine.\"}".as_bytes(),
    );
    assert_eq!(rig.post(24, batch), StatusCode::NO_CONTENT);
    let s = rig.wait_analysed(12);
    assert_eq!(s.exchanges_analysed, 12);
    assert_eq!(s.paired, 12);
    for (id, family) in [
        ("lfi-path", 100), // oob-mirror's own rule 100930
        ("lfi-arg", 930),
        ("sqli", 942),
        ("xss", 941),
        ("rce", 932),
        ("leak", 951),
    ] {
        let d = rig
            .detection(id)
            .unwrap_or_else(|| panic!("{id} not reported"));
        assert!(families(&d).contains(&family), "{id}: {:?}", d.rules);
    }
    assert!(rig
        .detection("lfi-path")
        .unwrap()
        .rules
        .iter()
        .any(|m| m.id == 100930 && m.severity == "CRITICAL"));
    assert_eq!(rig.detection("leak").unwrap().status, Some(500));
    for id in ["b-get", "b-post", "b-put", "b-patch", "b-delete", "b-text"] {
        assert_eq!(rig.detection(id), None, "benign {id} reported");
    }
    assert_eq!(s.exchanges_with_attacks, 6);
    assert_eq!(s.matches_by_rule.get(&100930), Some(&1));
}

#[test]
fn compressed_bodies_are_analysed_decompressed() {
    let rig = Rig::start(pool(), None);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(br#"{"q":"1' UNION SELECT password FROM users--"}"#)
        .unwrap();
    let body = gz.finish().unwrap();
    let mut batch = Vec::new();
    exchange(
        &mut batch,
        "gz",
        "POST",
        "/search",
        &[JSON, ("content-encoding", "gzip")],
        &body,
    );
    assert_eq!(rig.post(2, batch), StatusCode::NO_CONTENT);
    rig.wait_analysed(1);
    let d = rig.detection("gz").expect("gzip body not decoded");
    assert!(families(&d).contains(&942), "{:?}", d.rules);
}

#[test]
fn a_request_without_its_response_is_analysed_alone_after_the_timeout() {
    let rig = Rig::start(
        PoolConfig {
            pair_timeout: Duration::from_millis(300),
            ..pool()
        },
        None,
    );
    let mut batch = Vec::new();
    push_http_request(
        &mut batch,
        "alone",
        "GET",
        "/etc/passwd",
        &[("host", "a")],
        b"",
    );
    push_http_response(&mut batch, "orphan", 200, &[], b"");
    let sent = Instant::now();
    assert_eq!(rig.post(2, batch), StatusCode::NO_CONTENT);
    assert_eq!(rig.node.detector().snapshot().pending, 2);
    rig.wait_analysed(1);
    assert!(sent.elapsed() >= Duration::from_millis(300));
    rig.wait("the orphan response dropped", |s| {
        s.unpaired_responses == 1 && s.pending == 0
    });
    let d = rig.detection("alone").unwrap();
    assert_eq!(d.status, None);
    let s = rig.node.detector().snapshot();
    assert_eq!(
        (s.paired, s.unpaired_requests, s.unpaired_responses),
        (0, 1, 1)
    );
}

#[test]
fn records_waiting_for_their_other_half_are_bounded() {
    let rig = Rig::start(
        PoolConfig {
            max_pending: 5,
            pair_timeout: Duration::from_secs(3600),
            ..pool()
        },
        None,
    );
    let mut batch = Vec::new();
    for i in 0..20 {
        push_http_request(
            &mut batch,
            &format!("r{i}"),
            "GET",
            "/",
            &[("host", "a")],
            b"",
        );
    }
    assert_eq!(rig.post(20, batch), StatusCode::NO_CONTENT);
    let s = rig.wait_analysed(15);
    assert_eq!(s.pending, 5);
    assert_eq!(s.unpaired_requests, 15);
    // The 5 newest still wait, and pair when their responses come.
    let mut batch = Vec::new();
    for i in 15..20 {
        push_http_response(&mut batch, &format!("r{i}"), 200, &[], b"");
    }
    assert_eq!(rig.post(5, batch), StatusCode::NO_CONTENT);
    let s = rig.wait_analysed(20);
    assert_eq!((s.paired, s.pending), (5, 0));
}

#[test]
fn analysis_falling_behind_answers_503_then_recovers() {
    let (rig, release_tx) = Rig::held(2);
    let attacks = |from: usize, n: usize| {
        let mut batch = Vec::new();
        for i in from..from + n {
            exchange(&mut batch, &format!("a{i}"), "GET", "/etc/passwd", &[], b"");
        }
        batch
    };
    assert_eq!(rig.post(6, attacks(0, 3)), StatusCode::NO_CONTENT);
    // Queued before the answer: the next batch finds the queue full.
    assert_eq!(rig.node.detector().snapshot().queued, 3);
    assert_eq!(rig.post(2, attacks(3, 1)), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(rig.post(2, attacks(3, 1)), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(rig.node.detector().snapshot().batches_refused_busy, 2);
    for _ in 0..3 {
        release_tx.send(()).unwrap();
    }
    rig.wait("the queue to drain", |s| s.queued == 0);
    assert_eq!(rig.post(2, attacks(3, 1)), StatusCode::NO_CONTENT);
    release_tx.send(()).unwrap();
    let s = rig.wait_analysed(4);
    // Refused batches were not taken: 4 exchanges, 8 records.
    assert_eq!((s.records_received, s.exchanges_analysed), (8, 4));
}

#[test]
fn without_a_store_the_pages_say_so_and_the_counters_still_count() {
    let rig = Rig::start(pool(), None);
    let mut batch = Vec::new();
    exchange(
        &mut batch,
        "x1",
        "GET",
        "/search?q=%3Cscript%3Ealert(1)%3C/script%3E",
        &[],
        b"",
    );
    assert_eq!(rig.post(2, batch), StatusCode::NO_CONTENT);
    rig.wait_analysed(1);
    // The console and the API read the store (tests/console.rs, tests/api.rs).
    let page = common::get_blocking(rig.node.addr(), "/attacks").unwrap();
    assert_eq!(page.0, StatusCode::SERVICE_UNAVAILABLE);
    assert!(page.1.contains("runs without a store"), "{}", page.1);
    let api = common::get_blocking(rig.node.addr(), "/api/v1/attacks").unwrap();
    assert_eq!(api.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(api.1, r#"{"error":"this node runs without a store"}"#);
    let metrics = common::get_blocking(rig.node.addr(), "/metrics").unwrap().1;
    assert!(
        metrics.contains("oob_mirror_node_exchanges_analysed_total 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("oob_mirror_node_exchanges_with_attacks_total 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("oob_mirror_node_rule_matches_total{rule=\"941100\"} 1\n"),
        "{metrics}"
    );
    assert_eq!(
        common::get_blocking(rig.node.addr(), "/nope").unwrap().0,
        StatusCode::NOT_FOUND
    );
}

/// An ext_proc stream that arrives while analysis is behind is refused with
/// gRPC status UNAVAILABLE (in the headers: a trailers-only answer), unread.
#[test]
fn analysis_falling_behind_refuses_ext_proc_streams_unavailable() {
    let (rig, release_tx) = Rig::held(1);
    let mut batch = Vec::new();
    exchange(&mut batch, "a0", "GET", "/etc/passwd", &[], b"");
    exchange(&mut batch, "a1", "GET", "/etc/passwd", &[], b"");
    assert_eq!(rig.post(4, batch), StatusCode::NO_CONTENT);

    let addr = rig.node.addr();
    let (status, grpc_status, message) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(common::open_process_stream(addr, &[]))
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(grpc_status.as_deref(), Some("14"));
    assert_eq!(message.as_deref(), Some("analysis is behind"));
    let s = rig.node.detector().snapshot();
    assert_eq!((s.batches_refused_busy, s.extproc_streams), (1, 0));
    for _ in 0..2 {
        release_tx.send(()).unwrap();
    }
    rig.wait_analysed(2);
}
