//! The harness itself, without the filter: Envoy starts from the rendered
//! bootstrap, proxies HTTP/1.1 and HTTP/2 to the test upstream, and every
//! upstream route behaves as the other tests expect.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use support::client::{Client, Proto, Req};
use support::upstream::{fnv1a64, pattern, stream_chunk, Echo, STREAM_CHUNKS, TRAILERS_BODY};
use support::{Envoy, EnvoyConfig, Upstream};

#[test]
fn envoy_without_filter_proxies_every_route() {
    let upstream = Upstream::start();
    let envoy = Envoy::start(&EnvoyConfig::without_filter(upstream.port()));
    let client = Client::new();
    let addr = envoy.addr();

    // Echo over HTTP/1.1, repeated headers kept in order.
    let resp = client.send(
        addr,
        &Req::get("/echo?a=1&b=2")
            .header("x-dup", "one")
            .header("x-dup", "two"),
    );
    assert_eq!(resp.status, 200, "{}", resp.body_str());
    let echo = Echo::parse(&resp.body);
    assert_eq!(echo.method, "GET");
    assert_eq!(echo.path, "/echo?a=1&b=2");
    assert_eq!(echo.version, "HTTP/1.1");
    let dups: Vec<&str> = echo
        .headers
        .iter()
        .filter(|(n, _)| n == "x-dup")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(dups, ["one", "two"]);
    assert!(!echo.request_id().is_empty());

    // Echo over HTTP/2 prior knowledge, with request trailers.
    let resp = client.send(
        addr,
        &Req::post("/echo", b"h2 body".to_vec())
            .proto(Proto::H2)
            .trailer("x-req-trailer", "t1"),
    );
    assert_eq!(resp.status, 200, "{}", resp.body_str());
    let echo = Echo::parse(&resp.body);
    assert_eq!(echo.version, "HTTP/2");
    assert_eq!(echo.body_len, 7);
    assert_eq!(
        echo.trailers,
        [("x-req-trailer".to_string(), "t1".to_string())]
    );

    // Response trailers over HTTP/2.
    let resp = client.send(addr, &Req::get("/trailers").proto(Proto::H2));
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body_str(), TRAILERS_BODY);
    assert_eq!(
        resp.trailers,
        [("x-checksum".to_string(), "abc".to_string())]
    );

    // Chunked upload; the upstream counts the body bytes it read.
    let chunks: Vec<Vec<u8>> = vec![b"ab".to_vec(), b"cde".to_vec(), b"f".to_vec()];
    let before = upstream.body_bytes_received();
    let resp = client.send(
        addr,
        &Req::new(Proto::H1, "POST", "/upload-sha").chunks(chunks),
    );
    let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(v["len"], 6);
    assert_eq!(v["fnv1a64"], fnv1a64(b"abcdef"));
    assert_eq!(upstream.body_bytes_received() - before, 6);

    // Download.
    let resp = client.send(addr, &Req::get("/download/100000"));
    assert_eq!(resp.body, pattern(100_000));

    // Streaming.
    let mut stream = client.open(addr, &Req::get("/stream/200"));
    assert_eq!(stream.status, 200);
    let body = stream.read_rest();
    let expected: String = (0..STREAM_CHUNKS).map(stream_chunk).collect();
    assert_eq!(String::from_utf8(body).unwrap(), expected);

    // Status route.
    let resp = client.send(addr, &Req::get("/status/418"));
    assert_eq!(resp.status, 418);
    assert_eq!(resp.body_str(), "status 418");
    assert!(upstream.requests() >= 7);
}

#[test]
fn envoy_without_filter_answers_503_when_upstream_is_down() {
    let envoy = Envoy::start(&EnvoyConfig::without_filter(support::ports::closed_port()));
    let resp = Client::new().send(envoy.addr(), &Req::get("/anything"));
    assert_eq!(resp.status, 503, "{}", resp.body_str());
}
