//! What the node receives for ordinary exchanges: exact request and response
//! records, paired by id.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::client::{Proto, Req};
use support::records::{s, show_headers, str_headers, wait_exchange, HeaderValue};
use support::upstream::{stream_chunk, Echo, STREAM_CHUNKS, TRAILERS_BODY};
use support::{stats, Rig, EVENTUALLY};

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// Response headers as the client got them, minus those Envoy adds after the
/// filter chain has seen the headers.
fn client_headers_seen_by_filter(resp: &support::client::Resp) -> Vec<(String, HeaderValue)> {
    resp.headers
        .iter()
        .filter(|(n, _)| n != "server")
        .map(|(n, v)| {
            (
                n.clone(),
                HeaderValue::Str(String::from_utf8(v.clone()).unwrap()),
            )
        })
        .collect()
}

#[test]
fn get_with_query_and_repeated_headers_is_mirrored_exactly() {
    let rig = Rig::start();
    let t0 = now_ns();
    let resp = rig.send(
        &Req::get("/echo/items?q=1&name=two%20words")
            .header("x-dup", "first")
            .header("x-dup", "second")
            .header("accept", "application/json"),
    );
    let t1 = now_ns();
    assert_eq!(resp.status, 200, "{}", resp.body_str());
    let echo = Echo::parse(&resp.body);
    let id = echo.request_id();
    let (req, rsp) = wait_exchange(&rig.envoy, &rig.node, &id, EVENTUALLY);

    // Request record. The id is the filter's own; the client's x-request-id is a header.
    assert_eq!(req.v, 1);
    assert!(req.id.starts_with("oob-"), "{}", req.id);
    assert_eq!(req.header("x-request-id"), Some(&s(&id)));
    assert!(
        req.ts_ns >= t0 && req.ts_ns <= t1,
        "ts_ns {} not in [{t0}, {t1}]",
        req.ts_ns
    );
    assert_eq!(req.method.as_deref(), Some("GET"));
    assert_eq!(req.scheme.as_deref(), Some("http"));
    assert_eq!(
        req.authority.as_deref(),
        Some(rig.envoy.addr().to_string().as_str())
    );
    assert_eq!(
        req.path.as_deref(),
        Some("/echo/items?q=1&name=two%20words")
    );
    assert_eq!(req.protocol.as_deref(), Some("HTTP/1.1"));
    let local = resp.local_addr.unwrap().to_string();
    assert_eq!(req.source.as_deref(), Some(local.as_str()));
    assert_eq!(
        req.destination.as_deref(),
        Some(rig.envoy.addr().to_string().as_str())
    );
    assert_eq!(req.tls, Some(false));
    assert_eq!(
        req.headers,
        str_headers(&[
            ("x-dup", "first"),
            ("x-dup", "second"),
            ("accept", "application/json"),
            ("x-forwarded-proto", "http"),
            ("x-request-id", &id),
        ]),
        "request headers: {:#?}",
        show_headers(&req.headers)
    );
    assert!(req.trailers.is_empty(), "{:?}", req.trailers);
    assert!(req.body.is_empty());
    assert_eq!(req.body_size, 0);
    assert!(!req.body_truncated);
    assert!(req.complete);
    assert_eq!(req.status, None);
    assert_eq!(req.details, None);
    assert_eq!(req.duration_us, None);

    // Response record.
    assert_eq!(rsp.v, 1);
    assert_eq!(rsp.id, req.id);
    assert!(
        rsp.ts_ns >= req.ts_ns && rsp.ts_ns <= t1,
        "response ts_ns {}",
        rsp.ts_ns
    );
    assert_eq!(rsp.status, Some(200));
    // Not read for a whole answer below 400 (docs/wire-format.md).
    assert_eq!(rsp.details.as_deref(), Some(""));
    assert_eq!(
        rsp.headers,
        client_headers_seen_by_filter(&resp),
        "response headers: {:#?}",
        show_headers(&rsp.headers)
    );
    assert_eq!(rsp.header("x-upstream"), Some(&s("test")));
    assert_eq!(rsp.header("content-type"), Some(&s("application/json")));
    assert!(rsp.trailers.is_empty(), "{:?}", rsp.trailers);
    assert_eq!(rsp.body, resp.body);
    assert_eq!(rsp.body_size, resp.body.len() as u64);
    assert!(!rsp.body_truncated);
    assert!(rsp.complete);
    let duration_us = rsp.duration_us.unwrap();
    assert!(
        duration_us > 0 && duration_us < (t1 - t0) / 1000 + 1000,
        "duration_us {duration_us}"
    );
    assert_eq!(rsp.method, None);
    assert_eq!(rsp.path, None);

    rig.envoy.assert_no_critical_wasm();
    let st = stats::wait_drained(&rig.envoy, EVENTUALLY);
    assert_eq!(st.get("records_captured"), 2, "{st:?}");
    assert_eq!(st.get("records_sent"), 2, "{st:?}");
    assert_eq!(st.dropped(), 0, "{st:?}");
    assert!(st.get("batches_sent") >= 1, "{st:?}");
    assert!(st.get("bytes_sent") > 0, "{st:?}");
    assert_eq!(st.get("bodies_truncated"), 0, "{st:?}");
    assert_eq!(st.batches_failed(), 0, "{st:?}");
}

/// A client that reuses (or forges) an `x-request-id` cannot make two exchanges share an id at
/// the node: three requests with the same one arrive as three pairs.
#[test]
fn a_forged_request_id_does_not_pair_exchanges() {
    let rig = Rig::start();
    for path in ["/echo/1", "/echo/2", "/echo/3"] {
        let resp = rig.send(&Req::get(path).header("x-request-id", "forged-42"));
        assert_eq!(resp.status, 200);
        assert_eq!(Echo::parse(&resp.body).request_id(), "forged-42");
    }
    // Metrics are published on the workers' ticks: wait for all six.
    let st = stats::wait_drained_and(&rig.envoy, EVENTUALLY, |s| s.get("records_sent") == 6);
    assert_eq!(st.get("records_sent"), 6, "{st:?}");
    let records = rig.node.records();
    let mut ids: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "{ids:?}");
    for id in ids {
        let pair: Vec<_> = records.iter().filter(|r| r.id == id).collect();
        assert_eq!(pair.len(), 2, "{pair:#?}");
        let (req, rsp) = (pair[0], pair[1]);
        assert!(req.is_request() && rsp.is_response(), "{pair:#?}");
        assert_eq!(req.header("x-request-id"), Some(&s("forged-42")));
        let echo = Echo::parse(&rsp.body);
        assert_eq!(req.path.as_deref(), Some(echo.path.as_str()));
    }
}

#[test]
fn exchanges_get_distinct_ids() {
    let rig = Rig::start();
    let mut ids = Vec::new();
    for _ in 0..5 {
        let resp = rig.send(&Req::get("/echo"));
        ids.push(Echo::parse(&resp.body).request_id());
    }
    for id in &ids {
        wait_exchange(&rig.envoy, &rig.node, id, EVENTUALLY);
    }
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "{ids:?}");
    assert_eq!(rig.node.records().len(), 10);
}

#[test]
fn json_post_body_is_captured_exactly() {
    let rig = Rig::start();
    let body = br#"{"user":"alice","roles":["admin","dev"],"n":42,"utf8":"h\u00e9"}"#.to_vec();
    let resp = rig.send(
        &Req::post("/api/users?dry=1", body.clone()).header("content-type", "application/json"),
    );
    assert_eq!(resp.status, 200);
    let echo = Echo::parse(&resp.body);
    assert_eq!(echo.body_len, body.len() as u64);
    let (req, rsp) = wait_exchange(&rig.envoy, &rig.node, &echo.request_id(), EVENTUALLY);
    assert_eq!(req.method.as_deref(), Some("POST"));
    assert_eq!(req.path.as_deref(), Some("/api/users?dry=1"));
    assert_eq!(req.body, body);
    assert_eq!(req.body_size, body.len() as u64);
    assert!(!req.body_truncated);
    assert!(req.complete);
    assert_eq!(req.header("content-type"), Some(&s("application/json")));
    assert_eq!(
        req.header("content-length"),
        Some(&s(&body.len().to_string()))
    );
    assert_eq!(rsp.status, Some(200));
    assert_eq!(rsp.body, resp.body);
    assert!(rsp.complete);
}

#[test]
fn chunked_upload_body_is_captured_exactly() {
    let rig = Rig::start();
    let chunks: Vec<Vec<u8>> = vec![
        b"first chunk;".to_vec(),
        vec![0u8, 1, 2, 255, 254],
        b"third".repeat(100),
        b"!".to_vec(),
    ];
    let whole: Vec<u8> = chunks.concat();
    let resp = rig.send(&Req::new(Proto::H1, "PUT", "/upload").chunks(chunks));
    assert_eq!(resp.status, 200);
    let echo = Echo::parse(&resp.body);
    assert_eq!(echo.body_len, whole.len() as u64);
    assert_eq!(echo.header("transfer-encoding"), Some("chunked"));
    let request_id = echo.request_id();
    let (req, _) = wait_exchange(&rig.envoy, &rig.node, &request_id, EVENTUALLY);
    assert_eq!(req.method.as_deref(), Some("PUT"));
    assert_eq!(req.body, whole);
    assert_eq!(req.body_size, whole.len() as u64);
    assert!(!req.body_truncated);
    assert!(req.complete);
    // Envoy's HTTP/1 codec takes `transfer-encoding` out of the header map
    // (it re-frames the body itself, the upstream still sees `chunked`), so
    // the filter does not see it: no framing header at all here.
    assert_eq!(
        req.headers,
        str_headers(&[("x-forwarded-proto", "http"), ("x-request-id", &request_id)]),
        "{:#?}",
        show_headers(&req.headers)
    );
}

#[test]
fn http2_with_request_and_response_trailers() {
    let rig = Rig::start();
    let body = b"h2 request body".to_vec();
    let resp = rig.send(
        &Req::post("/h2/echo?x=y", body.clone())
            .proto(Proto::H2)
            .header("x-dup", "a")
            .header("x-dup", "b")
            .trailer("x-req-trailer", "t1")
            .trailer("x-req-trailer-2", "t2"),
    );
    assert_eq!(resp.status, 200);
    let echo = Echo::parse(&resp.body);
    assert_eq!(echo.version, "HTTP/2", "the upstream should see HTTP/2");
    let (req, rsp) = wait_exchange(&rig.envoy, &rig.node, &echo.request_id(), EVENTUALLY);
    assert_eq!(req.protocol.as_deref(), Some("HTTP/2"));
    assert_eq!(req.method.as_deref(), Some("POST"));
    assert_eq!(req.scheme.as_deref(), Some("http"));
    assert_eq!(
        req.authority.as_deref(),
        Some(rig.envoy.addr().to_string().as_str())
    );
    assert_eq!(req.path.as_deref(), Some("/h2/echo?x=y"));
    assert!(
        req.headers.iter().all(|(n, _)| !n.starts_with(':')),
        "pseudo-headers in {:#?}",
        show_headers(&req.headers)
    );
    assert_eq!(req.headers_named("x-dup"), [&s("a"), &s("b")]);
    assert_eq!(
        req.trailers,
        str_headers(&[("x-req-trailer", "t1"), ("x-req-trailer-2", "t2")])
    );
    assert_eq!(req.body, body);
    assert_eq!(req.body_size, body.len() as u64);
    assert!(req.complete);
    assert!(rsp.headers.iter().all(|(n, _)| !n.starts_with(':')));
    assert_eq!(rsp.status, Some(200));
    assert!(rsp.trailers.is_empty());

    // Response trailers.
    let resp = rig.send(
        &Req::get("/trailers")
            .proto(Proto::H2)
            .header("x-tag", "trailers"),
    );
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body_str(), TRAILERS_BODY);
    assert_eq!(
        resp.trailers,
        [("x-checksum".to_string(), "abc".to_string())]
    );
    let found = support::wait::poll_until(EVENTUALLY, || {
        rig.node
            .records()
            .into_iter()
            .find(|r| r.is_request() && r.header("x-tag") == Some(&s("trailers")))
    })
    .expect("request record of GET /trailers");
    let (req, rsp) = wait_exchange(&rig.envoy, &rig.node, &found.id, EVENTUALLY);
    assert_eq!(req.protocol.as_deref(), Some("HTTP/2"));
    assert!(req.trailers.is_empty());
    assert_eq!(rsp.trailers, str_headers(&[("x-checksum", "abc")]));
    assert_eq!(rsp.body, TRAILERS_BODY.as_bytes());
    assert_eq!(rsp.body_size, TRAILERS_BODY.len() as u64);
    assert!(rsp.complete);
    rig.envoy.assert_no_critical_wasm();
}

#[test]
fn request_record_arrives_while_the_response_still_streams() {
    let rig = Rig::start();
    let opened = Instant::now();
    let mut stream = rig.client.open(
        rig.envoy.addr(),
        &Req::get("/stream/2000").header("x-tag", "stream"),
    );
    assert_eq!(stream.status, 200);
    let first = stream.next_chunk().expect("first chunk");
    assert_eq!(first, stream_chunk(0).as_bytes());

    // The request has ended; its record must reach the node now, well
    // before the response ends (about 2 s after it began).
    let req = support::wait::poll_until(Duration::from_millis(1500), || {
        rig.node
            .records()
            .into_iter()
            .find(|r| r.is_request() && r.header("x-tag") == Some(&s("stream")))
    });
    let seen_at = opened.elapsed();
    let req = req.unwrap_or_else(|| {
        panic!(
            "no request record within 1.5 s while the response streams: {:#?}",
            rig.node.records()
        )
    });
    assert!(
        rig.node.records().iter().all(|r| !r.is_response()),
        "a response record before the response ended"
    );
    assert!(req.complete);
    assert_eq!(req.path.as_deref(), Some("/stream/2000"));

    let mut body = first;
    body.extend(stream.read_rest());
    let finished_at = opened.elapsed();
    assert!(
        seen_at < finished_at,
        "request record seen at {seen_at:?}, stream finished at {finished_at:?}"
    );
    assert!(
        finished_at >= Duration::from_millis(1700),
        "stream took only {finished_at:?}"
    );
    let expected: String = (0..STREAM_CHUNKS).map(stream_chunk).collect();
    assert_eq!(String::from_utf8(body).unwrap(), expected);

    let (_, rsp) = wait_exchange(&rig.envoy, &rig.node, &req.id, EVENTUALLY);
    assert_eq!(rsp.status, Some(200));
    assert_eq!(rsp.body, expected.as_bytes());
    assert!(rsp.complete);
    assert!(
        rsp.duration_us.unwrap() >= 1_700_000,
        "{:?}",
        rsp.duration_us
    );
}

#[test]
fn non_utf8_header_value_is_mirrored_as_bin() {
    let rig = Rig::start();
    let mut request = Vec::new();
    request.extend_from_slice(b"GET /raw-bytes HTTP/1.1\r\nhost: raw.test\r\n");
    request.extend_from_slice(b"x-bin: a\xff\xfeb\x80\r\n");
    request.extend_from_slice(b"x-text: plain\r\nconnection: close\r\n\r\n");
    let resp = support::raw_http::exchange(rig.envoy.addr(), &request, Duration::from_secs(10))
        .expect("raw exchange");
    assert_eq!(resp.status, 200, "{}", resp.body_str());
    let echo = Echo::parse(&resp.body);
    let (req, rsp) = wait_exchange(&rig.envoy, &rig.node, &echo.request_id(), EVENTUALLY);
    assert_eq!(req.authority.as_deref(), Some("raw.test"));
    assert_eq!(
        req.header("x-bin"),
        Some(&HeaderValue::Bin(b"a\xff\xfeb\x80".to_vec())),
        "{:#?}",
        show_headers(&req.headers)
    );
    assert_eq!(req.header("x-text"), Some(&s("plain")));
    assert_eq!(rsp.status, Some(200));
    let log = rig.envoy.log();
    assert!(
        !log.to_ascii_lowercase().contains("panicked"),
        "the module panicked:\n{log}"
    );
    rig.envoy.assert_no_critical_wasm();
}

#[test]
fn upstream_down_local_reply_is_mirrored() {
    let node = support::records::start_node();
    let envoy = support::Envoy::start(&support::EnvoyConfig::new(
        support::ports::closed_port(),
        node.port(),
    ));
    let client = support::client::Client::new();
    let resp = client.send(envoy.addr(), &Req::get("/down?x=1").header("x-tag", "down"));
    assert_eq!(resp.status, 503, "{}", resp.body_str());
    let req = support::wait::poll_until(EVENTUALLY, || {
        node.records()
            .into_iter()
            .find(|r| r.is_request() && r.header("x-tag") == Some(&s("down")))
    })
    .expect("request record of the failed exchange");
    let (req, rsp) = wait_exchange(&envoy, &node, &req.id, EVENTUALLY);
    assert_eq!(req.path.as_deref(), Some("/down?x=1"));
    assert!(req.complete);
    assert_eq!(rsp.status, Some(503));
    assert_eq!(
        rsp.details.as_deref(),
        Some("upstream_reset_before_response_started{remote_connection_failure|delayed_connect_error:_Connection_refused}"),
    );
    assert_eq!(rsp.body, resp.body, "the local reply body");
    assert_eq!(rsp.body_size, resp.body.len() as u64);
    assert!(rsp.complete);
    envoy.assert_no_critical_wasm();
    let st = stats::wait_drained(&envoy, EVENTUALLY);
    assert_eq!(st.get("records_captured"), 2, "{st:?}");
}

#[test]
fn batches_follow_the_transport_rules() {
    let rig = Rig::start();
    for i in 0..3 {
        let resp = rig.send(&Req::get(&format!("/echo?i={i}")));
        assert_eq!(resp.status, 200);
    }
    support::records::wait_records(&rig.node, 6, EVENTUALLY);
    let batches = rig.node.batches();
    assert!(!batches.is_empty());
    for b in &batches {
        assert!(b.error.is_none(), "batch did not decode: {:?}", b.error);
        assert_eq!(b.path, "/v1/records");
        assert_eq!(b.authority.as_deref(), Some("oob-mirror"));
        assert_eq!(b.header("content-type"), Some("application/msgpack"));
        assert_eq!(b.header("x-oob-mirror-version"), Some("1"));
        assert_eq!(b.declared_records(), Some(b.records.len()), "{b:?}");
        assert!(!b.records.is_empty());
    }
    let st = stats::wait_drained(&rig.envoy, EVENTUALLY);
    assert_eq!(st.get("batches_sent"), batches.len() as i128, "{st:?}");
    let body_bytes: usize = batches.iter().map(|b| b.body_len).sum();
    assert_eq!(st.get("bytes_sent"), body_bytes as i128, "{st:?}");
}

#[test]
fn client_abort_mid_upload_is_marked_incomplete() {
    use std::io::Write;
    let rig = Rig::start();
    let mut stream = std::net::TcpStream::connect(rig.envoy.addr()).unwrap();
    stream
        .write_all(
            b"POST /abort?x=1 HTTP/1.1\r\nhost: abort.test\r\ncontent-length: 100\r\n\r\n0123456789",
        )
        .unwrap();
    stream.flush().unwrap();
    // Vanish only once Envoy has read the 10 bytes and passed them through
    // the filter chain: the upstream has received them.
    let forwarded = support::wait::poll_until(EVENTUALLY, || {
        let n = rig.upstream.body_bytes_received();
        (n >= 10).then_some(n)
    });
    assert_eq!(
        forwarded,
        Some(10),
        "the upstream did not receive exactly the 10 body bytes sent (got {})",
        rig.upstream.body_bytes_received()
    );
    drop(stream);

    let req = support::wait::poll_until(EVENTUALLY, || {
        rig.node
            .records()
            .into_iter()
            .find(|r| r.is_request() && r.path.as_deref() == Some("/abort?x=1"))
    })
    .expect("request record of the aborted exchange");
    let (req, rsp) = wait_exchange(&rig.envoy, &rig.node, &req.id, EVENTUALLY);
    assert!(!req.complete, "{req:#?}");
    assert_eq!(req.body, b"0123456789");
    assert_eq!(req.body_size, 10);
    assert!(!req.body_truncated);
    assert_eq!(rsp.status, Some(0), "{rsp:#?}");
    assert_eq!(
        rsp.details.as_deref(),
        Some("downstream_remote_disconnect"),
        "{rsp:#?}"
    );
    assert!(!rsp.complete);
    assert!(rsp.body.is_empty());
    let st = stats::wait_drained(&rig.envoy, EVENTUALLY);
    assert_eq!(st.get("records_captured"), 2, "{st:?}");
    rig.envoy.assert_no_critical_wasm();
}

/// Operators scrape `/stats/prometheus`: every metric the filter defines is there, with the
/// type it was defined with and the value `/stats` reports.
#[test]
fn metrics_are_exported_to_prometheus() {
    let rig = Rig::start();
    let resp = rig.send(&Req::get("/echo?prometheus=1"));
    assert_eq!(resp.status, 200);
    wait_exchange(
        &rig.envoy,
        &rig.node,
        &Echo::parse(&resp.body).request_id(),
        EVENTUALLY,
    );
    let st = stats::wait_drained(&rig.envoy, EVENTUALLY);
    let page = rig.envoy.admin_get("/stats/prometheus");
    assert_eq!(page.status, 200);
    let text = String::from_utf8(page.body).unwrap();
    let kinds = stats::COUNTERS
        .iter()
        .map(|name| (name, "counter"))
        .chain(stats::GAUGES.iter().map(|name| (name, "gauge")));
    for (name, kind) in kinds {
        let metric = format!("oob_mirror_{name}");
        let type_line = format!("# TYPE {metric} {kind}");
        assert!(
            text.lines().any(|l| l == type_line),
            "no `{type_line}` in /stats/prometheus"
        );
        let value: i128 = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{metric}{{}} ")))
            .unwrap_or_else(|| panic!("no sample of {metric} in /stats/prometheus"))
            .parse()
            .unwrap();
        assert_eq!(value, st.get(name), "{metric}");
    }
    assert_eq!(st.get("records_sent"), 2, "{st:?}");
}

/// Connection facts are remembered per connection (see `src/connection_facts.rs`): every
/// record must still carry its own connection's, with keep-alive requests interleaved across
/// connections and HTTP/1.1 next to HTTP/2.
#[test]
fn each_record_carries_its_own_connections_facts() {
    let rig = Rig::start();
    let addr = rig.envoy.addr();
    let mut sent = Vec::new(); // (id, protocol, client address)
    rig.client.runtime().block_on(async {
        let mut conns = Vec::new();
        for _ in 0..3 {
            conns.push(support::client::H1Conn::connect(addr).await.unwrap());
        }
        for round in 0..3 {
            for conn in conns.iter_mut() {
                let resp = conn
                    .send(&Req::get(&format!("/echo/conn?round={round}")))
                    .await
                    .unwrap();
                assert_eq!(resp.status, 200);
                let id = Echo::parse(&resp.body).request_id();
                sent.push((id, "HTTP/1.1", resp.local_addr.unwrap().to_string()));
            }
        }
    });
    for _ in 0..2 {
        let resp = rig.send(&Req::get("/echo/conn?h2").proto(Proto::H2));
        assert_eq!(resp.status, 200);
        let id = Echo::parse(&resp.body).request_id();
        sent.push((id, "HTTP/2", resp.local_addr.unwrap().to_string()));
    }
    let sources: std::collections::HashSet<_> = sent.iter().map(|(_, _, a)| a.clone()).collect();
    assert!(
        sources.len() >= 4,
        "expected distinct connections: {sources:?}"
    );
    for (id, protocol, source) in &sent {
        let (req, _) = wait_exchange(&rig.envoy, &rig.node, id, EVENTUALLY);
        assert_eq!(req.protocol.as_deref(), Some(*protocol), "exchange {id}");
        assert_eq!(
            req.source.as_deref(),
            Some(source.as_str()),
            "exchange {id}"
        );
        assert_eq!(
            req.destination.as_deref(),
            Some(addr.to_string().as_str()),
            "exchange {id}"
        );
        assert_eq!(req.tls, Some(false), "exchange {id}");
    }
}
