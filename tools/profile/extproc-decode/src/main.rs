//! `extproc-decode-profile`: the node's ext_proc intake (prost into `envoy-types`' generated
//! messages, then one exchange assembled) natively, for callgrind: instructions per exchange,
//! to set beside what the node spends analysing one (`make bench-node`).
//!
//! usage: extproc-decode-profile EXCHANGES
//!
//! Each exchange is the stream oob-mirror sends for a GET in ext_proc mode with the default
//! attributes: request headers with the attributes, response headers, a 128 B response body.

use oob_mirror::extproc::attributes::Value;
use oob_mirror::extproc::encode::{processing_request, Direction, Part};
use oob_mirror::record::HeaderList;
use oob_mirror_node::intake::extproc::ExtProcStream;
use std::hint::black_box;

fn framed(message: Vec<u8>, out: &mut Vec<u8>) {
    out.push(0);
    out.extend_from_slice(
        &u32::try_from(message.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(&message);
}

fn stream() -> Vec<u8> {
    let request = HeaderList::from(vec![
        (":authority", "api.example.com"),
        (":path", "/api/v1/items/42?view=full"),
        (":method", "GET"),
        (":scheme", "http"),
        ("user-agent", "wrk"),
        ("accept", "*/*"),
        ("x-forwarded-proto", "http"),
        ("x-request-id", "5f0c7a8e-3d1b-4c5e-9a7f-000000000001"),
    ]);
    let response = HeaderList::from(vec![
        (":status", "200"),
        ("content-type", "text/plain"),
        ("content-length", "128"),
        ("date", "Wed, 25 Nov 2026 01:00:00 GMT"),
        ("server", "envoy"),
        ("x-envoy-upstream-service-time", "0"),
    ]);
    let text = |name: &str, value: &str| (name.to_owned(), Value::Text(value.to_owned()));
    let attributes = [
        text("source.address", "203.0.113.7:40000"),
        text("destination.address", "10.0.0.1:8080"),
        text("request.protocol", "HTTP/1.1"),
        text("request.id", "5f0c7a8e-3d1b-4c5e-9a7f-000000000001"),
        ("connection.mtls".to_owned(), Value::Bool(false)),
    ];
    let mut out = Vec::new();
    let headers = |headers, end_of_stream| Part::Headers {
        headers,
        end_of_stream,
    };
    framed(
        processing_request(
            Direction::Request,
            headers(&request, true),
            Some(&attributes),
        ),
        &mut out,
    );
    framed(
        processing_request(Direction::Response, headers(&response, false), None),
        &mut out,
    );
    let body = vec![b'x'; 128];
    framed(
        processing_request(
            Direction::Response,
            Part::Body {
                body: &body,
                end_of_stream: true,
            },
            None,
        ),
        &mut out,
    );
    out
}

fn main() {
    let exchanges: u64 = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
    let bytes = stream();
    if let Ok(path) = std::env::var("EXTPROC_STREAM_OUT") {
        // The same stream for another build of the node to read.
        let _ = std::fs::write(path, &bytes);
    }
    let mut assembled = 0u64;
    for _ in 0..exchanges {
        let mut s = ExtProcStream::new(1 << 20);
        if s.feed(black_box(&bytes)) == Ok(true) && black_box(s.finish()).is_some() {
            assembled += 1;
        }
    }
    println!(
        "exchanges {exchanges}, assembled {assembled}, stream {} B",
        bytes.len()
    );
}
