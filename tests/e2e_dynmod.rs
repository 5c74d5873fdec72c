//! The dynamic module (`make dynmod`, `dist/liboob_mirror.so`) under Envoy 1.40: the records
//! it ships equal the Proxy-Wasm build's field for field, and a node that is down, slow or
//! resetting changes nothing for clients while the accounting stays exact. Under an Envoy
//! whose ABI the module was not built for (before 1.40), every test skips with one line.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use rmpv::Value;
use support::client::{Client, Proto, Req};
use support::envoy::envoy_version;
use support::records::{start_node, Behavior, HeaderValue, Node, Record};
use support::stats::{self, Stats};
use support::upstream::pattern;
use support::workload::{assert_same_answers, run, workload};
use support::{ports, Envoy, EnvoyConfig, Upstream, EVENTUALLY};

/// Whether this Envoy can load the module; if not, says why in one line.
fn dynmod_supported(test: &str) -> bool {
    let (major, minor, patch) = envoy_version();
    if (major, minor) >= (1, 40) {
        return true;
    }
    println!(
        "{test}: skipped: Envoy {major}.{minor}.{patch} cannot load the dynamic module, which is \
         built for Envoy 1.40's ABI (v0.2.0, loadable by 1.40 and 1.41; docs/dynamic-module.md)"
    );
    false
}

/// The same exchanges as tests/e2e_capture.rs, each tagged `x-corpus: <n>` so the two
/// builds' records can be paired.
fn corpus() -> Vec<Req> {
    let tag = |r: Req, n: usize| r.header("x-corpus", n.to_string());
    let chunks: Vec<Vec<u8>> = vec![
        b"first chunk;".to_vec(),
        vec![0u8, 1, 2, 255, 254],
        b"third".repeat(100),
        b"!".to_vec(),
    ];
    vec![
        tag(
            Req::get("/echo/items?q=1&name=two%20words")
                .header("x-dup", "first")
                .header("x-dup", "second")
                .header("accept", "application/json"),
            0,
        ),
        tag(
            Req::post(
                "/api/users?dry=1",
                br#"{"user":"alice","roles":["admin","dev"],"n":42}"#.to_vec(),
            )
            .header("content-type", "application/json"),
            1,
        ),
        tag(Req::new(Proto::H1, "PUT", "/upload").chunks(chunks), 2),
        tag(
            Req::post("/h2/echo?x=y", b"h2 request body".to_vec())
                .proto(Proto::H2)
                .header("x-dup", "a")
                .header("x-dup", "b")
                .trailer("x-req-trailer", "t1")
                .trailer("x-req-trailer-2", "t2"),
            3,
        ),
        tag(Req::get("/trailers").proto(Proto::H2), 4),
        tag(Req::get("/down?x=1"), 5),
        tag(Req::get("/status/404"), 6),
        tag(Req::post("/upload-sha", pattern(200_000)), 7),
        tag(Req::get("/stream/100").header("x-tag", "stream"), 9),
    ]
}

/// A client that vanishes mid-upload (corpus entry 10): an incomplete request, no response,
/// Envoy's reason for it.
fn aborted_upload(envoy: &Envoy, upstream: &Upstream) {
    use std::io::Write;
    let before = upstream.body_bytes_received();
    let mut stream = std::net::TcpStream::connect(envoy.addr()).unwrap();
    stream
        .write_all(
            b"POST /abort?x=1 HTTP/1.1\r\nhost: abort.test\r\nx-corpus: 10\r\n\
              content-length: 100\r\n\r\n0123456789",
        )
        .unwrap();
    stream.flush().unwrap();
    // Vanish only once the 10 bytes went through the filter chain to the upstream.
    let forwarded = support::wait::poll_until(EVENTUALLY, || {
        let n = upstream.body_bytes_received() - before;
        (n >= 10).then_some(n)
    });
    assert_eq!(
        forwarded,
        Some(10),
        "the upstream got the first 10 body bytes"
    );
    drop(stream);
}

/// A raw HTTP/1.1 exchange with a header value that is not UTF-8 (corpus entry 8).
fn raw_exchange(envoy: &Envoy) {
    let mut request = Vec::new();
    request.extend_from_slice(b"GET /raw-bytes HTTP/1.1\r\nhost: raw.test\r\nx-corpus: 8\r\n");
    request.extend_from_slice(b"x-bin: a\xff\xfeb\x80\r\n");
    request.extend_from_slice(b"x-text: plain\r\nconnection: close\r\n\r\n");
    let resp = support::raw_http::exchange(envoy.addr(), &request, Duration::from_secs(10))
        .expect("raw exchange");
    assert_eq!(resp.status, 200, "{}", resp.body_str());
}

const CORPUS_LEN: usize = 11;

/// An exchange's two records as raw msgpack maps, with what differs between any two runs (the
/// id, Envoy's and the client's addresses, Envoy's request id; dates by [`normalize`])
/// replaced by fixed text.
fn normalized(envoy: &Envoy, req: &Record, rsp: &Record) -> (Value, Value) {
    let mut subs: Vec<(String, String)> = vec![
        (req.id.clone(), "ID".into()),
        (envoy.addr().to_string(), "ENVOY".into()),
    ];
    if let Some(source) = &req.source {
        subs.push((source.clone(), "CLIENT".into()));
    }
    if let Some(HeaderValue::Str(rid)) = req.header("x-request-id") {
        subs.push((rid.clone(), "REQUEST-ID".into()));
    }
    (normalize(&req.raw, &subs), normalize(&rsp.raw, &subs))
}

/// Runs the corpus through `envoy`; the node's records of each entry, as raw msgpack maps,
/// with what differs between any two runs (ids, times, ports, Envoy's request id, dates)
/// replaced by fixed text.
fn mirrored(
    envoy: &Envoy,
    upstream: &Upstream,
    node: &Node,
    client: &Client,
) -> BTreeMap<usize, (Value, Value)> {
    for req in corpus() {
        client.send(envoy.addr(), &req);
    }
    raw_exchange(envoy);
    aborted_upload(envoy, upstream);
    let st = stats::wait_drained_and(envoy, EVENTUALLY, |s| {
        s.get("records_sent") == 2 * CORPUS_LEN as i128
    });
    st.assert_settled(CORPUS_LEN as i128);
    assert_eq!(st.get("records_sent"), 2 * CORPUS_LEN as i128, "{st:?}");
    let records = node.records();
    let mut out = BTreeMap::new();
    for req in records.iter().filter(|r| r.is_request()) {
        let n: usize = match req.header("x-corpus") {
            Some(v) => match v {
                HeaderValue::Str(t) => t.parse().unwrap(),
                other => panic!("x-corpus {other:?}"),
            },
            None => panic!("a request record without x-corpus: {req:?}"),
        };
        let rsp = records
            .iter()
            .find(|r| r.is_response() && r.id == req.id)
            .unwrap_or_else(|| panic!("no response record for {}", req.id));
        out.insert(n, normalized(envoy, req, rsp));
    }
    assert_eq!(out.len(), CORPUS_LEN, "{:?}", out.keys());
    out
}

/// `value` with the run-specific fields and texts replaced.
fn normalize(value: &Value, subs: &[(String, String)]) -> Value {
    let replace = |bytes: &[u8]| -> Vec<u8> {
        let mut text = bytes.to_vec();
        for (from, to) in subs {
            text = replace_bytes(&text, from.as_bytes(), to.as_bytes());
        }
        text
    };
    match value {
        Value::Map(entries) => {
            let out = entries
                .iter()
                .map(|(k, v)| {
                    let v = match k.as_str().unwrap_or_default() {
                        "id" => Value::from("ID"),
                        "ts_ns" | "duration_us" => Value::from(0),
                        _ => normalize(v, subs),
                    };
                    (k.clone(), v)
                })
                .collect();
            Value::Map(out)
        }
        Value::Array(items) => {
            // A header is a [name, value] pair: the values of `date` and Envoy's upstream
            // timing differ between any two runs.
            if let [Value::String(name), _] = items.as_slice() {
                if matches!(
                    name.as_str(),
                    Some("date") | Some("x-envoy-upstream-service-time")
                ) {
                    return Value::Array(vec![items[0].clone(), Value::from("VARIES")]);
                }
            }
            Value::Array(items.iter().map(|v| normalize(v, subs)).collect())
        }
        Value::String(text) => match text.as_str() {
            Some(t) => Value::from(
                String::from_utf8(replace(t.as_bytes())).expect("replaced text is UTF-8"),
            ),
            None => Value::String(text.clone()),
        },
        Value::Binary(bytes) => Value::Binary(replace(bytes)),
        other => other.clone(),
    }
}

fn replace_bytes(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    if from.is_empty() {
        return haystack.to_vec();
    }
    let mut out = Vec::with_capacity(haystack.len());
    let mut i = 0;
    while i < haystack.len() {
        if haystack[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(haystack[i]);
            i += 1;
        }
    }
    out
}

fn config(upstream: &Upstream, node_port: u16) -> EnvoyConfig {
    EnvoyConfig::new(upstream.port(), node_port).dead_route("/down")
}

#[test]
fn records_equal_the_proxy_wasm_builds_field_for_field() {
    if !dynmod_supported("records_equal_the_proxy_wasm_builds_field_for_field") {
        return;
    }
    let upstream = Upstream::start();
    let client = Client::new();
    let wasm = {
        let node = start_node();
        let envoy = Envoy::start(&config(&upstream, node.port()));
        mirrored(&envoy, &upstream, &node, &client)
    };
    let node = start_node();
    let envoy = Envoy::start(&config(&upstream, node.port()).dynamic_module());
    let dynmod = mirrored(&envoy, &upstream, &node, &client);
    for n in 0..CORPUS_LEN {
        let (w, d) = (&wasm[&n], &dynmod[&n]);
        assert_eq!(
            d.0, w.0,
            "corpus entry {n}: the request records differ (left: dynamic module, right: wasm)"
        );
        assert_eq!(
            d.1, w.1,
            "corpus entry {n}: the response records differ (left: dynamic module, right: wasm)"
        );
    }
    assert_no_module_errors(&envoy);
}

/// No panic, no refused hook, no unsupported attribute in the module's log lines.
fn assert_no_module_errors(envoy: &Envoy) {
    let log = envoy.log();
    for bad in [
        "panic",
        "Unsupported attribute",
        "][error][dynamic_modules]",
    ] {
        assert!(!log.contains(bad), "`{bad}` in Envoy's log:\n{log}");
    }
}

/// Runs the workload without a filter, then through the module with `node_port` as the node;
/// clients must see the same answers in about the same time. The module's metrics once every
/// record is accounted for.
fn bad_node_case(node_port: u16) -> (Envoy, Stats) {
    let upstream = Upstream::start();
    let client = Client::new();
    let (expected, baseline_time) = {
        let plain = Envoy::start(&EnvoyConfig::without_filter(upstream.port()));
        run(&client, &plain)
    };
    let envoy = Envoy::start(&EnvoyConfig::new(upstream.port(), node_port).dynamic_module());
    let (got, time) = run(&client, &envoy);
    assert_same_answers(&got, &expected, "the module");
    // Holding traffic on the node (timeout_ms 500) would cost >= 0.5 s per exchange.
    assert!(
        time < baseline_time + Duration::from_secs(4),
        "the workload took {time:?} with the module and a bad node, {baseline_time:?} without"
    );
    let n = expected.len() as i128;
    let st = stats::wait_drained_and(&envoy, Duration::from_secs(30), |s| {
        s.get("records_captured") == 2 * n
    });
    st.assert_settled(n);
    assert_no_module_errors(&envoy);
    (envoy, st)
}

#[test]
fn node_down_changes_nothing_for_clients_and_every_record_is_counted() {
    if !dynmod_supported("node_down_changes_nothing_for_clients_and_every_record_is_counted") {
        return;
    }
    let (_envoy, st) = bad_node_case(ports::closed_port());
    let n = workload().len() as i128;
    // The metrics keep the Proxy-Wasm build's names, under the dynamic modules' prefix.
    assert!(
        st.raw
            .iter()
            .all(|(name, _)| name.starts_with("dynamicmodulescustom.oob_mirror.")),
        "{:?}",
        st.raw
    );
    assert!(
        st.has("records_captured") && st.has("queued_records"),
        "{st:?}"
    );
    assert_eq!(st.get("records_sent"), 0, "{st:?}");
    assert_eq!(st.get("records_dropped_node_failure"), 2 * n, "{st:?}");
    assert_eq!(st.get("records_dropped_queue_full"), 0, "{st:?}");
    assert_eq!(st.get("batches_sent"), 0, "{st:?}");
    assert!(st.get("batches_failed_reset") > 0, "{st:?}");
    assert_eq!(
        st.batches_failed(),
        st.get("batches_failed_reset"),
        "{st:?}"
    );
}

#[test]
fn slow_node_changes_nothing_for_clients_and_every_record_is_counted() {
    if !dynmod_supported("slow_node_changes_nothing_for_clients_and_every_record_is_counted") {
        return;
    }
    let node = start_node();
    // Slower than node.timeout_ms (500): every batch times out.
    node.set_behavior(Behavior::Delay(Duration::from_millis(1500)));
    let (_envoy, st) = bad_node_case(node.port());
    let n = workload().len() as i128;
    assert_eq!(st.get("records_sent"), 0, "{st:?}");
    assert_eq!(st.get("records_dropped_node_failure"), 2 * n, "{st:?}");
    assert!(st.get("batches_failed_timeout") > 0, "{st:?}");
    assert_eq!(
        st.batches_failed(),
        st.get("batches_failed_timeout"),
        "{st:?}"
    );
    assert!(node.errors().is_empty(), "{:?}", node.errors());
}

#[test]
fn resetting_node_changes_nothing_for_clients_and_every_record_is_counted() {
    if !dynmod_supported("resetting_node_changes_nothing_for_clients_and_every_record_is_counted") {
        return;
    }
    // Accepts each connection and closes it unread: every batch is reset before an answer.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    listener.set_nonblocking(true).unwrap();
    let resetter = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut resets = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        drop(conn);
                        resets += 1;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
            resets
        })
    };
    let (_envoy, st) = bad_node_case(port);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let resets = resetter.join().unwrap();
    let n = workload().len() as i128;
    assert!(resets > 0, "the node never saw a connection");
    assert_eq!(st.get("records_sent"), 0, "{st:?}");
    assert_eq!(st.get("records_dropped_node_failure"), 2 * n, "{st:?}");
    assert!(st.get("batches_failed_reset") > 0, "{st:?}");
    assert_eq!(
        st.batches_failed(),
        st.get("batches_failed_reset"),
        "{st:?}"
    );
}

#[test]
fn a_refused_configuration_leaves_traffic_passing_with_one_line_saying_why() {
    if !dynmod_supported("a_refused_configuration_leaves_traffic_passing_with_one_line_saying_why")
    {
        return;
    }
    let upstream = Upstream::start();
    let node = start_node();
    let client = Client::new();
    for (plugin, why) in [
        (
            r#"{"node":{"cluster":"oob_mirror_node","timeout_ms":"soon"}}"#,
            "oob-mirror: invalid configuration: node.timeout_ms",
        ),
        (
            r#"{"node":{"cluster":"oob_mirror_node","protocol":"ext_proc"}}"#,
            "oob-mirror: node.protocol ext_proc is not supported by the dynamic module",
        ),
    ] {
        let envoy = Envoy::start(
            &EnvoyConfig::new(upstream.port(), node.port())
                .dynamic_module()
                .plugin(plugin),
        );
        let resp = client.send(envoy.addr(), &Req::get("/echo?refused=1"));
        assert_eq!(resp.status, 200, "{}", resp.body_str());
        // Envoy flushes its log file every 50 ms here: wait for the line.
        let log = support::wait::poll_until(EVENTUALLY, || {
            let log = envoy.log();
            log.contains(why).then_some(log)
        })
        .unwrap_or_else(|| panic!("{plugin}: no `{why}` line:\n{}", envoy.log()));
        let lines: Vec<&str> = log.lines().filter(|l| l.contains("oob-mirror:")).collect();
        assert_eq!(lines.len(), 1, "{plugin}: {lines:#?}");
        assert!(
            lines[0].contains(why) && lines[0].ends_with("traffic passes unmirrored"),
            "{plugin}: {}",
            lines[0]
        );
        assert!(!log.contains("panic"), "{log}");
    }
    // Passing traffic ships nothing: no batch can be on its way.
    assert!(node.records().is_empty(), "{:?}", node.records().len());
}

/// envoy/envoy-dynmod.yaml as shipped: Envoy accepts it with the module found by name in
/// `ENVOY_DYNAMIC_MODULES_SEARCH_PATH`, matches the module's ABI version, and the module
/// accepts the configuration embedded in it (a refused one would pass validation, failing
/// open, but say so instead of where it mirrors to).
#[test]
fn envoy_validates_the_dynamic_module_bootstrap() {
    if !dynmod_supported("envoy_validates_the_dynamic_module_bootstrap") {
        return;
    }
    let module = support::paths::dynmod_module();
    let dir = module.parent().expect("the module's directory");
    assert_eq!(
        module.file_name().and_then(|n| n.to_str()),
        Some("liboob_mirror.so"),
        "Envoy finds the module by name: lib<name>.so"
    );
    let log = support::envoy::assert_validates_with_env(
        &support::paths::repo_root(),
        std::path::Path::new("envoy/envoy-dynmod.yaml"),
        &[(
            "ENVOY_DYNAMIC_MODULES_SEARCH_PATH",
            dir.to_str().expect("UTF-8 path"),
        )],
    );
    assert!(
        log.contains("Dynamic module ABI version v0.2.0 matched."),
        "{log}"
    );
    assert!(
        log.contains(
            "oob-mirror: mirroring to cluster oob_mirror_node (POST /v1/records, authority \
             oob-mirror-node; dynamic module,"
        ),
        "{log}"
    );
    assert!(!log.contains("traffic passes unmirrored"), "{log}");
}

/// A panic in a hook (the test-only build `make dynmod-trap` panics on `x-oob-mirror-trap: 1`)
/// stays in the module: the client gets the upstream's answer, Envoy logs one line naming the
/// panic, and the next exchanges are mirrored as before.
#[test]
fn a_panic_stays_in_the_module_and_the_exchange_passes() {
    if !dynmod_supported("a_panic_stays_in_the_module_and_the_exchange_passes") {
        return;
    }
    let upstream = Upstream::start();
    let node = start_node();
    let client = Client::new();
    let envoy = Envoy::start(
        &EnvoyConfig::new(upstream.port(), node.port())
            .dynamic_module()
            .module(support::paths::dynmod_trap_module())
            .concurrency(1),
    );
    let resp = client.send(
        envoy.addr(),
        &Req::post("/echo?trap=1", "trap").header("x-oob-mirror-trap", "1"),
    );
    assert_eq!(resp.status, 200, "{}", resp.body_str());
    assert_eq!(
        support::upstream::Echo::parse(&resp.body).body_len,
        4,
        "the upstream got the request whole"
    );
    let panic_line = "oob-mirror: panic at src/dynmod/stream.rs:";
    let log = support::wait::poll_until(EVENTUALLY, || {
        let log = envoy.log();
        log.contains(panic_line).then_some(log)
    })
    .unwrap_or_else(|| panic!("no `{panic_line}` line:\n{}", envoy.log()));
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("oob-mirror: panic"))
        .collect();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0]
            .ends_with(": x-oob-mirror-trap: 1 (test-trap build); this exchange passes unmirrored"),
        "{}",
        lines[0]
    );

    // The process and the module go on: the next exchange is mirrored.
    let resp = client.send(envoy.addr(), &Req::get("/echo?after=1"));
    assert_eq!(resp.status, 200);
    let st = stats::wait_drained_and(&envoy, EVENTUALLY, |s| s.get("records_sent") == 2);
    st.assert_settled(1);
    assert_eq!(st.get("records_sent"), 2, "{st:?}");
    let records = node.records();
    assert_eq!(
        records.len(),
        2,
        "only the exchange after the panic: {records:?}"
    );
    assert!(records
        .iter()
        .all(|r| r.path.as_deref().unwrap_or("/echo?after=1") == "/echo?after=1"));
}

/// Redaction is the same code in both builds: given the same key (the VM's environment for
/// Proxy-Wasm, Envoy's own for the dynamic module), the records carry the same markers, and no
/// secret reaches the node. `node.headers[].value_env` comes from Envoy's environment too.
#[test]
fn redaction_markers_equal_the_proxy_wasm_builds_given_the_same_key() {
    if !dynmod_supported("redaction_markers_equal_the_proxy_wasm_builds_given_the_same_key") {
        return;
    }
    const KEY: &str = "a-key-both-builds-share";
    const TOKEN: &str = "node-token-from-the-environment";
    let secrets = [
        "bearer-secret-1234",
        "cookie-secret-5678",
        "pw-secret-90",
        "qs-secret-11",
    ];
    let plugin = r#"{"node":{"cluster":"oob_mirror_node","timeout_ms":500,
        "headers":[{"name":"x-node-token","value_env":"OOB_MIRROR_TEST_NODE_TOKEN"}]},
        "batch":{"flush_ms":20},"redact":{"mode":"gateway"}}"#;
    let upstream = Upstream::start();
    let client = Client::new();
    let mut results = Vec::new();
    for dynamic in [false, true] {
        let node = start_node();
        let mut config = EnvoyConfig::new(upstream.port(), node.port()).plugin(plugin);
        config = if dynamic {
            config
                .dynamic_module()
                .process_env("OOB_MIRROR_REDACT_KEY", KEY)
                .process_env("OOB_MIRROR_TEST_NODE_TOKEN", TOKEN)
        } else {
            config
                .vm_env("OOB_MIRROR_REDACT_KEY", KEY)
                .vm_env("OOB_MIRROR_TEST_NODE_TOKEN", TOKEN)
        };
        let envoy = Envoy::start(&config);
        let body = format!(r#"{{"user":"ann","password":"{}","n":1}}"#, secrets[2]);
        let req = Req::post(&format!("/login?access_token={}&page=1", secrets[3]), body)
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {}", secrets[0]))
            .header("cookie", format!("session={}", secrets[1]))
            .header("x-corpus", "0");
        assert_eq!(client.send(envoy.addr(), &req).status, 200);
        let st = stats::wait_drained_and(&envoy, EVENTUALLY, |s| s.get("records_sent") == 2);
        st.assert_settled(1);
        let records = node.records();
        assert_eq!(records.len(), 2, "{records:?}");
        for batch in node.batches() {
            assert_eq!(batch.header("x-node-token"), Some(TOKEN), "{batch:?}");
        }
        let req = records.iter().find(|r| r.is_request()).unwrap();
        let rsp = records.iter().find(|r| r.is_response()).unwrap();
        let (req, rsp) = normalized(&envoy, req, rsp);
        let all = format!("{req} {rsp}");
        for secret in secrets {
            assert!(!all.contains(secret), "{secret} reached the node: {all}");
        }
        assert!(all.contains("redacted:"), "no marker: {all}");
        results.push((req, rsp));
    }
    assert_eq!(
        results[1].0, results[0].0,
        "request records (left: dynamic module)"
    );
    assert_eq!(
        results[1].1, results[0].1,
        "response records (left: dynamic module)"
    );
}

/// A typo in `node.cluster` is named in Envoy's log at the first failed delivery, once however
/// much traffic follows (the Proxy-Wasm build's line); the clients see nothing.
#[test]
fn an_unknown_cluster_is_named_in_the_log_at_once() {
    if !dynmod_supported("an_unknown_cluster_is_named_in_the_log_at_once") {
        return;
    }
    let upstream = Upstream::start();
    let envoy = Envoy::start(
        &EnvoyConfig::new(upstream.port(), ports::free_port())
            .dynamic_module()
            .concurrency(1)
            .plugin(r#"{"node":{"cluster":"oob_mirror_nod"},"batch":{"flush_ms":20}}"#),
    );
    let client = Client::new();
    assert_eq!(
        client.send(envoy.addr(), &Req::get("/echo/first")).status,
        200
    );
    let line = "batches to cluster 'oob_mirror_nod' fail: Envoy has no cluster by that name";
    support::wait::poll_until(EVENTUALLY, || envoy.log().contains(line).then_some(()))
        .unwrap_or_else(|| panic!("no `{line}` line:\n{}", envoy.log()));
    for i in 0..20 {
        let resp = client.send(envoy.addr(), &Req::get(&format!("/echo/{i}")));
        assert_eq!(resp.status, 200);
    }
    let st = stats::wait_drained_and(&envoy, EVENTUALLY, |s| s.get("records_captured") == 42);
    st.assert_settled(21);
    assert!(st.get("batches_failed_dispatch") >= 1, "{st:?}");
    assert_eq!(st.get("records_sent"), 0, "{st:?}");
    let log = envoy.log();
    let found: Vec<&str> = log.lines().filter(|l| l.contains(line)).collect();
    assert_eq!(found.len(), 1, "{found:#?}");
}

/// A configuration change delivered by ECDS under 500 exchanges a second on 16 keep-alive
/// connections: clients see nothing, new exchanges follow the new configuration, and the
/// accounting stays exact across the two configurations (they share Envoy's metrics). Envoy
/// destroys a replaced configuration once its last stream ends, taking its calls with it: its
/// queued records go to the new configuration, which ships them; only its batches in flight
/// are lost, each named in its one warning line and counted as dropped.
#[test]
fn a_configuration_change_under_load_is_accounted_for_exactly() {
    use support::envoy::{dynamic_module_typed_config, write_ecds, Filter};
    if !dynmod_supported("a_configuration_change_under_load_is_accounted_for_exactly") {
        return;
    }
    const NAME: &str = "oob-mirror";
    let module = support::paths::dynmod_module();
    // A long node timeout: on a busy machine a batch that times out would be a drop this test
    // does not mean to count.
    let first =
        r#"{"node":{"cluster":"oob_mirror_node","timeout_ms":5000},"batch":{"flush_ms":20}}"#;
    let second = r#"{"node":{"cluster":"oob_mirror_node","timeout_ms":5000},"batch":{"flush_ms":20},"scope":{"exclude_paths":["/excluded/"]}}"#;
    let upstream = Upstream::start();
    let node = start_node();
    let dir = support::paths::TempDir::new("ecds");
    write_ecds(
        dir.path(),
        NAME,
        1,
        &dynamic_module_typed_config(&module, first),
    );
    let mut config = EnvoyConfig::new(upstream.port(), node.port());
    config.filter = Filter::DynamicModuleEcds {
        name: NAME.to_owned(),
        dir: dir.path().to_owned(),
    };
    let envoy = Envoy::start(&config);
    let reloads = || {
        let stat = |what: &str| {
            stats::envoy_stat(
                &envoy,
                &format!("extension_config_discovery.http_filter.{NAME}.{what}"),
            )
        };
        (stat("config_reload"), stat("config_fail"))
    };
    assert_eq!(reloads(), (1, 0), "the first version");
    let update = |version: u64, plugin: &str| {
        let before = reloads().0;
        write_ecds(
            dir.path(),
            NAME,
            version,
            &dynamic_module_typed_config(&module, plugin),
        );
        support::wait::poll_until(EVENTUALLY, || (reloads().0 > before).then_some(()))
            .unwrap_or_else(|| panic!("Envoy did not take version {version}:\n{}", envoy.log()));
    };

    let rt = tokio::runtime::Runtime::new().unwrap();
    let load = support::load::Load::start(&rt, envoy.addr(), 500, 16);
    std::thread::sleep(Duration::from_secs(2));
    update(2, second);
    std::thread::sleep(Duration::from_secs(1));
    let client = Client::new();
    for i in 0..5 {
        let resp = client.send(envoy.addr(), &Req::get(&format!("/excluded/{i}")));
        assert_eq!(resp.status, 200);
    }
    update(3, first);
    std::thread::sleep(Duration::from_secs(2));
    let report = load.stop(&rt);
    assert_eq!(report.failed, 0, "client errors: {:?}", report.failures);
    assert_eq!(reloads(), (3, 0));

    let mirrored = i128::from(report.ok);
    let st = stats::wait_drained_and(&envoy, EVENTUALLY, |s| {
        s.get("records_captured") == 2 * mirrored
    });
    st.assert_invariant();
    assert_eq!(st.get("queued_records"), 0, "{st:?}");
    assert_eq!(st.get("inflight_records"), 0, "{st:?}");
    assert_eq!(st.get("exchanges_skipped_scope"), 5, "{st:?}");
    assert_eq!(st.get("records_captured"), 2 * mirrored, "{st:?}");
    let records = node.records();
    assert_eq!(records.len() as i128, st.get("records_sent"), "{st:?}");
    assert!(!records.iter().any(|r| r
        .path
        .as_deref()
        .is_some_and(|p| p.starts_with("/excluded/"))));
    // What each replaced configuration handed over and gave up, from its warning line.
    let log = envoy.log();
    let (handed, given_up) = log
        .lines()
        .filter_map(|l| {
            l.split("oob-mirror: configuration replaced or removed: ")
                .nth(1)
        })
        .map(|rest| {
            let numbers: Vec<i128> = rest.split(' ').filter_map(|w| w.parse().ok()).collect();
            (numbers[0], numbers[1])
        })
        .fold((0, 0), |(h, g), (a, b)| (h + a, g + b));
    assert_eq!(st.dropped(), given_up, "{st:?}\n{log}");
    eprintln!(
        "{} exchanges at 500/s through two configuration changes: {} records captured, {} \
         delivered; the replaced configurations handed {handed} queued records over and gave \
         up {given_up} in flight",
        report.ok,
        st.get("records_captured"),
        records.len()
    );
}
