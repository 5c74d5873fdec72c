//! ext_proc mode under the real Envoy: the filter's gRPC streams against Envoy's own ext_proc
//! client (observability mode, Wallarm's settings), for the same traffic, through the same
//! recording server; then a slow response, and a node that is down, never closes or resets.

mod support;

use serde_json::{json, Value};
use support::client::{Proto, Req};
use support::envoy::{EnvoyConfig, Filter};
use support::extproc::Recorder;
use support::{stats, Envoy, Upstream, EVENTUALLY};

/// Envoy's own ext_proc filter as Wallarm documents it for its Native Node.
fn envoy_ext_proc() -> Filter {
    Filter::Http(json!({
        "name": "envoy.filters.http.ext_proc",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
            "grpc_service": { "envoy_grpc": { "cluster_name": "oob_mirror_node" } },
            "observability_mode": true,
            "failure_mode_allow": true,
            "processing_mode": {
                "request_body_mode": "STREAMED",
                "response_body_mode": "STREAMED"
            },
            "request_attributes": ["request.id", "request.time", "source.address"]
        }
    }))
}

/// oob-mirror in ext_proc mode, body caps above the largest body below.
const EQUIVALENCE_PLUGIN: &str = r#"{"node":{"cluster":"oob_mirror_node","protocol":"ext_proc"},
  "capture":{"request_body_max":8388608,"response_body_max":8388608}}"#;

fn traffic() -> Vec<(&'static str, Req)> {
    let chunks: Vec<Vec<u8>> = (0..5).map(|i| format!("part-{i};").into_bytes()).collect();
    let upload: Vec<u8> = (0..4 * 1024 * 1024).map(|i| (i % 241) as u8).collect();
    vec![
        (
            "GET with a query string and repeated headers",
            Req::get("/status/200?q=1&q=2&name=%27x%27")
                .header("x-dup", "one")
                .header("x-dup", "two")
                .header("accept", "application/json"),
        ),
        (
            "JSON POST",
            Req::post("/upload-sha", r#"{"user":"o'brien","password":"x"}"#)
                .header("content-type", "application/json"),
        ),
        (
            "chunked upload",
            Req::new(Proto::H1, "POST", "/upload-sha").chunks(chunks),
        ),
        ("4 MiB upload", Req::post("/upload-sha", upload)),
        ("1 MiB download", Req::get("/download/1048576")),
        (
            "HTTP/2 prior knowledge with a body",
            Req::post("/upload-sha", "h2 body").proto(Proto::H2),
        ),
        ("streaming response", Req::get("/stream/100")),
        ("Envoy's 503 local reply", Req::get("/dead/x")),
        (
            "non-UTF-8 header value",
            Req::get("/status/201").header("x-bin", b"\xff\xfe ok".to_vec()),
        ),
    ]
}

/// Sends the traffic through Envoy with `filter`; the streams the recorder saw, one per
/// exchange, and Envoy (for its metrics).
fn run(filter: Filter, upstream: &Upstream) -> (Vec<Vec<Value>>, usize, Envoy) {
    let recorder = Recorder::start("end");
    let mut config = EnvoyConfig::new(upstream.port(), recorder.port())
        .node_http2()
        .concurrency(1)
        .dead_route("/dead");
    config.filter = filter;
    let envoy = Envoy::start(&config);
    let client = support::client::Client::new();
    for (i, (what, req)) in traffic().into_iter().enumerate() {
        let resp = client.send(envoy.addr(), &req);
        assert!(resp.status > 0, "{what}: no response");
        // One exchange at a time, so stream i is exchange i.
        recorder.wait_ended(i + 1, EVENTUALLY);
    }
    let messages = recorder.message_count();
    (recorder.streams(), messages, envoy)
}

/// Joins consecutive body chunks of one direction (chunk boundaries may differ); the joined
/// chunk ends the stream when its last piece did.
fn join_bodies(messages: &[Value]) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    for msg in messages {
        let kind = msg["kind"].as_str().unwrap_or_default();
        if let Some(last) = out.last_mut() {
            if last["kind"] == kind && kind.ends_with("_body") {
                let joined = format!(
                    "{}{}",
                    last["body"].as_str().unwrap_or_default(),
                    msg["body"].as_str().unwrap_or_default()
                );
                last["body"] = json!(joined);
                last["end_of_stream"] = msg["end_of_stream"].clone();
                continue;
            }
        }
        out.push(msg.clone());
    }
    out
}

/// The values that honestly differ between two runs, and nothing else:
/// - header values of `x-request-id` (Envoy makes a new one per request), `date` and
///   `x-envoy-upstream-service-time` (a timing), in request and response headers;
/// - `:authority` when it is the listener's address (each Envoy listens on a port of its own);
/// - attribute values (`request.id`, `request.time`, `source.address`), keeping their names and
///   their kind (string or bool).
fn normalize(msg: &Value, listener: &str) -> Value {
    let mut msg = msg.clone();
    let listener_hex: String = listener.bytes().map(|b| format!("{b:02x}")).collect();
    if let Some(headers) = msg.get_mut("headers").and_then(Value::as_array_mut) {
        for header in headers {
            let key = header["key"].as_str().unwrap_or_default();
            let timing = matches!(
                key,
                "x-request-id" | "date" | "x-envoy-upstream-service-time"
            );
            if timing || (key == ":authority" && header["raw_value"] == listener_hex.as_str()) {
                header["raw_value"] = json!("<differs>");
            }
        }
    }
    if let Some(namespaces) = msg.get_mut("attributes").and_then(Value::as_object_mut) {
        for fields in namespaces.values_mut() {
            for value in fields
                .as_object_mut()
                .into_iter()
                .flat_map(|f| f.values_mut())
            {
                for v in value
                    .as_object_mut()
                    .into_iter()
                    .flat_map(|v| v.values_mut())
                {
                    *v = json!("<differs>");
                }
            }
        }
    }
    msg
}

fn summary(messages: &[Value]) -> String {
    messages
        .iter()
        .map(|m| {
            let body = m["body"].as_str().map_or(0, str::len) / 2;
            format!("{}({}B,eos={})", m["kind"], body, m["end_of_stream"])
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn streams_equal_envoys_own_ext_proc_client() {
    let upstream = Upstream::start();
    let (reference, _, envoy_ref) = run(envoy_ext_proc(), &upstream);
    let (mirrored, sent, envoy) = run(Filter::OobMirror(EQUIVALENCE_PLUGIN.into()), &upstream);
    let names: Vec<&str> = traffic().iter().map(|(what, _)| *what).collect();
    assert_eq!(
        reference.len(),
        names.len(),
        "Envoy's ext_proc: one stream per exchange"
    );
    assert_eq!(
        mirrored.len(),
        names.len(),
        "oob-mirror: one stream per exchange"
    );
    for (i, what) in names.iter().enumerate() {
        let (ref_listener, listener) = (envoy_ref.addr().to_string(), envoy.addr().to_string());
        let want: Vec<Value> = join_bodies(&reference[i])
            .iter()
            .map(|m| normalize(m, &ref_listener))
            .collect();
        let got: Vec<Value> = join_bodies(&mirrored[i])
            .iter()
            .map(|m| normalize(m, &listener))
            .collect();
        eprintln!("{what}: Envoy's ext_proc {}", summary(&want));
        eprintln!("{what}: oob-mirror      {}", summary(&got));
        assert_eq!(got.len(), want.len(), "{what}: message kinds differ");
        for (j, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g, w, "{what}: message {j} differs");
        }
    }
    // Every stream completed and every message is counted.
    let st = stats::wait_drained_and(&envoy, EVENTUALLY, |s| {
        s.get("extproc_streams_completed") == names.len() as i128
    });
    assert_eq!(st.get("extproc_exchanges"), names.len() as i128, "{st:?}");
    assert_eq!(st.get("extproc_streams_opened"), names.len() as i128);
    assert_eq!(st.get("extproc_messages_sent"), sent as i128);
    assert_eq!(st.get("extproc_streams_active"), 0);
    assert_eq!(st.get("bodies_truncated"), 0);
    envoy.assert_no_critical_wasm();
}
