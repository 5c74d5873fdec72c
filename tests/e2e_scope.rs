//! Choosing what is mirrored, under the real Envoy: scope rules exclude exactly what they say,
//! bodies of skipped media types are counted but not copied, a route can switch the filter off,
//! sampling keeps its rate with every sampled exchange paired, and a filling queue sheds whole
//! exchanges before it drops single records. Both protocols.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::json;
use support::client::{H1Conn, Proto, Req};
use support::records::{id_census, wait_exchange, Behavior};
use support::upstream::pattern;
use support::{stats, Envoy, EnvoyConfig, Rig, EVENTUALLY};

/// `x-request-id`s of the requests the node received.
fn named(rig: &Rig) -> BTreeSet<String> {
    rig.node
        .records()
        .iter()
        .filter(|r| r.is_request())
        .filter_map(|r| r.header("x-request-id"))
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

#[test]
fn scope_rules_exclude_exactly_what_they_say() {
    let rig = Rig::start_with(|c| {
        c.plugin(
            r#"{"node":{"cluster":"oob_mirror_node"},
                "scope":{"exclude_paths":["/health","/static/"],
                         "include_hosts":["api.test","*.shop.test"],
                         "methods":["GET","POST","PUT"]}}"#,
        )
    });
    // (name, method, host, path, mirrored)
    let cases = [
        ("api", "GET", "api.test", "/api/users", true),
        ("api-port", "POST", "API.test:8080", "/api/users", true),
        ("sub", "GET", "eu.shop.test", "/cart", true),
        ("health-deep", "GET", "api.test", "/health/deep", true),
        ("healthz", "GET", "api.test", "/healthz", true),
        ("static-bare", "GET", "api.test", "/static", true),
        ("h2", "PUT", "api.test", "/api/users/7", true),
        ("health", "GET", "api.test", "/health", false),
        (
            "health-query",
            "GET",
            "api.test",
            "/health?probe=kube",
            false,
        ),
        ("static", "GET", "api.test", "/static/app.js", false),
        ("static-dir", "GET", "api.test", "/static/", false),
        ("apex", "GET", "shop.test", "/cart", false),
        ("lookalike", "GET", "evilshop.test", "/cart", false),
        ("other-host", "GET", "admin.test", "/api/users", false),
        ("delete", "DELETE", "api.test", "/api/users/7", false),
        ("patch", "PATCH", "api.test", "/api/users/7", false),
    ];
    for (name, method, host, path, _) in cases {
        let req = Req::new(Proto::H1, method, path)
            .header("host", host)
            .header("x-request-id", name);
        let req = if name == "h2" {
            // An HTTP/2 request's host is its `:authority`, from the URI: only the path differs.
            Req::new(Proto::H2, method, path).header("x-request-id", name)
        } else {
            req
        };
        assert_eq!(rig.send(&req).status, 200, "{name}");
    }
    let mirrored: Vec<&str> = cases.iter().filter(|c| c.4).map(|c| c.0).collect();
    let skipped = cases.len() - mirrored.len();
    // h2's authority is 127.0.0.1: out of scope by host. Its path was in scope.
    let mirrored: BTreeSet<String> = mirrored
        .into_iter()
        .filter(|n| *n != "h2")
        .map(str::to_owned)
        .collect();
    let st = stats::wait_drained_and(&rig.envoy, EVENTUALLY, |s| {
        s.get("exchanges_skipped_scope") == skipped as i128 + 1
            && s.get("records_sent") == 2 * mirrored.len() as i128
    });
    assert_eq!(named(&rig), mirrored, "{st:?}");
    assert_eq!(st.get("records_captured"), 2 * mirrored.len() as i128);
    assert_eq!(st.get("exchanges_skipped_sampling"), 0);
    let census = id_census(&rig.node.records());
    assert!(census.values().all(|c| *c == (1, 1)), "{census:?}");
    rig.envoy.assert_no_critical_wasm();
}

#[test]
fn bodies_of_skipped_media_types_are_counted_not_copied() {
    let rig = Rig::start();
    let upload = Req::post("/upload-sha", pattern(3000))
        .header("content-type", "image/png")
        .header("x-request-id", "upload");
    assert_eq!(rig.send(&upload).status, 200);
    let image = Req::get("/image/5000").header("x-request-id", "image");
    let resp = rig.send(&image);
    assert_eq!(resp.body, pattern(5000), "the client gets the whole image");
    let plain = Req::get("/download/700").header("x-request-id", "download");
    assert_eq!(rig.send(&plain).status, 200);

    let (req, resp) = wait_exchange(&rig.envoy, &rig.node, "upload", EVENTUALLY);
    assert!(req.body.is_empty());
    assert_eq!((req.body_size, req.body_truncated), (3000, true));
    assert!(resp.body_str().unwrap().contains(r#""len":3000"#));
    assert!(!resp.body_truncated);
    let (req, resp) = wait_exchange(&rig.envoy, &rig.node, "image", EVENTUALLY);
    assert_eq!(req.body_size, 0);
    assert!(resp.body.is_empty());
    assert_eq!((resp.body_size, resp.body_truncated), (5000, true));
    let (_, resp) = wait_exchange(&rig.envoy, &rig.node, "download", EVENTUALLY);
    assert_eq!(resp.body, pattern(700), "other binary types are copied");
    let st = stats::wait_drained(&rig.envoy, EVENTUALLY);
    assert_eq!(st.get("bodies_skipped_content_type"), 2, "{st:?}");
    assert_eq!(st.get("bodies_truncated"), 0, "{st:?}");
    rig.envoy.assert_no_critical_wasm();
}

/// Envoy's per-route `FilterConfig {disabled: true}` under the filter's name: the filter is not
/// run for that route (not even counted); other routes are mirrored.
#[test]
fn a_route_can_switch_the_filter_off() {
    let rig = Rig::start_with(|mut c| {
        c.extra_routes.push(json!({
            "match": { "prefix": "/internal/" },
            "route": { "cluster": "upstream", "timeout": "30s" },
            "typed_per_filter_config": {
                "envoy.filters.http.wasm": {
                    "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
                    "disabled": true
                }
            }
        }));
        c
    });
    for name in ["internal-1", "internal-2"] {
        let req = Req::get(&format!("/internal/{name}")).header("x-request-id", name);
        assert_eq!(rig.send(&req).status, 200);
    }
    let req = Req::get("/public").header("x-request-id", "public");
    assert_eq!(rig.send(&req).status, 200);
    wait_exchange(&rig.envoy, &rig.node, "public", EVENTUALLY);
    let st = stats::wait_drained(&rig.envoy, EVENTUALLY);
    assert_eq!(named(&rig), BTreeSet::from(["public".to_owned()]));
    assert_eq!(st.get("records_captured"), 2, "{st:?}");
    assert_eq!(st.get("exchanges_skipped_scope"), 0, "{st:?}");
    rig.envoy.assert_no_critical_wasm();
}

const SAMPLED: usize = 5000;
const CONNECTIONS: usize = 10;

#[test]
fn sampling_keeps_its_rate_and_every_sampled_exchange_is_paired() {
    let rig = Rig::start_with(|c| {
        c.plugin(r#"{"node":{"cluster":"oob_mirror_node"},"sampling":{"rate":0.2}}"#)
    });
    let addr = rig.envoy.addr();
    // Many keep-alive connections, so both workers sample.
    let per_connection = SAMPLED / CONNECTIONS;
    rig.client.runtime().block_on(async {
        let tasks: Vec<_> = (0..CONNECTIONS)
            .map(|c| {
                tokio::spawn(async move {
                    let mut conn = H1Conn::connect(addr).await.unwrap();
                    for i in 0..per_connection {
                        let req = if i % 3 == 0 {
                            Req::post(&format!("/sampled?c={c}&i={i}"), "x=1")
                        } else {
                            Req::get(&format!("/sampled?c={c}&i={i}"))
                        };
                        assert_eq!(conn.send(&req).await.unwrap().status, 200);
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
    let st = stats::wait_drained_and(&rig.envoy, EVENTUALLY, |s| {
        s.get("exchanges_skipped_sampling") + s.get("records_captured") / 2 == SAMPLED as i128
    });
    let census = id_census(&rig.node.records());
    let pairs = census.values().filter(|c| **c == (1, 1)).count();
    assert_eq!(pairs, census.len(), "every sampled exchange is paired");
    assert_eq!(2 * pairs as i128, st.get("records_sent"), "{st:?}");
    assert_eq!(
        pairs as i128 + st.get("exchanges_skipped_sampling"),
        SAMPLED as i128
    );
    let share = pairs as f64 / SAMPLED as f64;
    println!("sampling 0.2: {pairs} of {SAMPLED} exchanges mirrored ({share:.4}); {st:?}");
    assert!((share - 0.2).abs() <= 0.015, "{pairs} of {SAMPLED}");
    assert!(
        st.get("exchanges_skipped_sampling") > 0 && st.get("records_dropped_queue_full") == 0,
        "{st:?}"
    );
    rig.envoy.assert_no_critical_wasm();
}

/// A node slower than the traffic, a small queue: the queue's last part is left for the
/// responses of exchanges already taken, so new exchanges are shed whole, no record is dropped,
/// and everything that reaches the node is a pair. The same run with `shed: false` is the
/// reference: records are dropped one by one as `queue_full`.
#[test]
fn a_filling_queue_sheds_whole_exchanges_before_dropping_records() {
    const EXCHANGES: usize = 60;
    for shed in [true, false] {
        let rig = Rig::start_with(|c| {
            c.plugin(format!(
                r#"{{"node":{{"cluster":"oob_mirror_node","timeout_ms":5000}},
                    "batch":{{"flush_ms":5,"max_inflight":1,"max_bytes":8192,
                              "max_queue_bytes":16384}},
                    "sampling":{{"shed":{shed}}}}}"#
            ))
            .concurrency(1)
        });
        rig.node
            .set_behavior(Behavior::Delay(Duration::from_millis(150)));
        for i in 0..EXCHANGES {
            let req = Req::post(&format!("/upload-sha?i={i}"), pattern(1500));
            assert_eq!(rig.send(&req).status, 200);
        }
        let st = stats::wait_drained_and(&rig.envoy, Duration::from_secs(60), |s| {
            s.get("exchanges_shed") + s.get("records_captured") / 2 == EXCHANGES as i128
        });
        let census = id_census(&rig.node.records());
        let unpaired = census.values().filter(|c| **c != (1, 1)).count();
        println!(
            "shed {shed}: {} exchanges shed, {} records dropped as queue_full, {unpaired} \
             exchanges unpaired at the node, {} pairs",
            st.get("exchanges_shed"),
            st.get("records_dropped_queue_full"),
            census.len() - unpaired
        );
        if shed {
            assert!(st.get("exchanges_shed") > 0, "nothing was shed: {st:?}");
            assert_eq!(st.dropped(), 0, "{st:?}");
            assert_eq!(2 * census.len() as i128, st.get("records_sent"), "{st:?}");
            assert_eq!(unpaired, 0, "{census:?}");
        } else {
            assert_eq!(st.get("exchanges_shed"), 0, "{st:?}");
            assert!(st.get("records_dropped_queue_full") > 0, "{st:?}");
        }
        rig.envoy.assert_no_critical_wasm();
    }
}

/// The same choices in ext_proc mode: a stream only for exchanges in scope and sampled, and
/// skipped media sent as an empty body's end.
#[test]
fn ext_proc_mode_mirrors_only_the_chosen_exchanges() {
    let recorder = support::extproc::Recorder::start("end");
    let upstream = support::Upstream::start();
    let envoy = Envoy::start(
        &EnvoyConfig::new(upstream.port(), recorder.port())
            .node_http2()
            .concurrency(1)
            .plugin(
                r#"{"node":{"cluster":"oob_mirror_node","protocol":"ext_proc"},
                    "scope":{"exclude_paths":["/health"]},"sampling":{"rate":0.5}}"#,
            ),
    );
    let client = support::client::Client::new();
    for _ in 0..5 {
        assert_eq!(client.send(envoy.addr(), &Req::get("/health")).status, 200);
    }
    const REQUESTS: i128 = 200;
    for i in 0..REQUESTS {
        let req = Req::get(&format!("/image/{}", 100 + i));
        assert_eq!(client.send(envoy.addr(), &req).status, 200);
    }
    let st = stats::wait_drained_and(&envoy, EVENTUALLY, |s| {
        s.get("exchanges_skipped_sampling") + s.get("extproc_exchanges") == REQUESTS
            && s.get("extproc_streams_completed") == s.get("extproc_exchanges")
    });
    assert_eq!(st.get("exchanges_skipped_scope"), 5, "{st:?}");
    let streams = usize::try_from(st.get("extproc_exchanges")).unwrap();
    recorder.wait_ended(streams, EVENTUALLY);
    assert!(
        (70..=130).contains(&streams),
        "{streams} of {REQUESTS} sampled"
    );
    assert_eq!(st.get("bodies_skipped_content_type"), streams as i128);
    let text = serde_json::to_string(&recorder.streams()).unwrap();
    assert!(
        !text.contains("/health"),
        "an excluded path reached the node"
    );
    assert_eq!(recorder.streams().len(), streams);
    // Every stream ends its response body, with no bytes of the image.
    for stream in recorder.streams() {
        let last = stream.last().unwrap();
        assert_eq!(last["kind"], "response_body", "{stream:?}");
        assert_eq!(last["end_of_stream"], true, "{stream:?}");
        for m in stream.iter().filter(|m| m["kind"] == "response_body") {
            assert_eq!(m["body"].as_str().map_or(0, str::len), 0, "{stream:?}");
        }
    }
    envoy.assert_no_critical_wasm();
}
