//! Runs the host-free half of what the filter does per exchange — encode a request and a
//! response record into the worker's queue, cut batches, complete them — with records shaped
//! like the benchmark's traffic. Under `valgrind --tool=callgrind` (`make profile`) it tells
//! how many instructions the filter's own code costs per exchange, apart from Envoy's host
//! calls, and which functions they go to.

use oob_mirror::body::BodyCapture;
use oob_mirror::config::Config;
use oob_mirror::record::{HeaderList, RequestRecord, ResponseRecord};
use oob_mirror::redact::Redactor;
use oob_mirror::select::{Request, Selector};
use oob_mirror::shipper::{Reply, Shipper};
use std::hint::black_box;

fn header(name: &str, value: &str) -> (String, Vec<u8>) {
    (name.to_owned(), value.as_bytes().to_vec())
}

fn exchange(i: u64, body: &[u8]) -> (RequestRecord, ResponseRecord) {
    let id = format!("5f0c7a8e-3d1b-4c5e-9a7f-{i:012x}");
    let mut request_body = BodyCapture::new(65536);
    request_body.add(body.len(), body);
    let mut response_body = BodyCapture::new(65536);
    response_body.add(
        body.len().max(2),
        if body.is_empty() { b"ok" } else { body },
    );
    let request = RequestRecord {
        id: id.clone(),
        ts_ns: 1_700_000_000_000_000_000 + i,
        method: if body.is_empty() { "GET" } else { "POST" }.into(),
        scheme: "http".into(),
        authority: "127.0.0.1:10000".into(),
        path: "/api/items?id=42".into(),
        protocol: "HTTP/1.1".into(),
        source: "127.0.0.1:53412".into(),
        destination: "127.0.0.1:10000".into(),
        tls: false,
        headers: HeaderList::from(vec![
            header("user-agent", "wrk"),
            header("accept", "*/*"),
            header("x-forwarded-proto", "http"),
            header("x-request-id", &id),
        ]),
        trailers: HeaderList::new(),
        body: request_body,
        complete: true,
    };
    let response = ResponseRecord {
        id,
        ts_ns: 1_700_000_000_000_100_000 + i,
        status: 200,
        details: "via_upstream".into(),
        headers: HeaderList::from(vec![
            header("content-type", "text/plain"),
            header("content-length", "2"),
            header("date", "Wed, 25 Nov 2026 01:00:00 GMT"),
        ]),
        trailers: HeaderList::new(),
        body: response_body,
        complete: true,
        duration_us: 180,
    };
    (request, response)
}

/// About `size` bytes of JSON: a user record with a password and a token among plain fields.
fn json_body(size: usize) -> Vec<u8> {
    let mut s = String::from(
        r#"{"user":"ann","password":"hunter2-hunter2","token":"tk-0123456789abcdef","items":["#,
    );
    let mut i = 0;
    while s.len() + 40 < size {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(r#"{{"id":{i},"name":"item {i}","qty":1}}"#));
        i += 1;
    }
    s.push_str("]}");
    s.into_bytes()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let exchanges: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let body_bytes: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(0);
    // PROFILE_SHARDS: the filter's node.shards (make profile PROFILE_SHARDS=16).
    let shards = std::env::var("PROFILE_SHARDS").unwrap_or_else(|_| "1".to_owned());
    let text = format!(r#"{{"node":{{"cluster":"node","shards":{shards}}}}}"#);
    let Ok(config) = Config::parse(text.as_bytes()) else {
        eprintln!("capture-profile: the built-in configuration was refused");
        std::process::exit(1);
    };
    // `json`: JSON bodies with secret fields (redacted), as a login API sends and answers.
    let json = args.next().as_deref() == Some("json");
    let body = if json {
        json_body(body_bytes)
    } else {
        vec![b'x'; body_bytes]
    };
    let mut records: Vec<_> = (0..256)
        .map(|i| {
            let (mut request, mut response) = exchange(i, &body);
            if json {
                for headers in [&mut request.headers, &mut response.headers] {
                    *headers = headers
                        .iter()
                        .filter(|(n, _)| *n != "content-type")
                        .chain([("content-type", &b"application/json"[..])])
                        .collect();
                }
            }
            (request, response)
        })
        .collect();
    // Redaction as configured by default (on), with a fixed key.
    let redactor = Redactor::new(&config.redact, b"profile-key".to_vec());
    let mut shipper = Shipper::new(&config, redactor);
    // Selection as configured by default (everything in scope, rate 1, shedding on).
    let mut select = Selector::new(&config, 1);
    let mut token = 0u32;
    let mut sent = 0u64;
    for i in 0..exchanges {
        let Some((request, response)) = records.get_mut((i % 256) as usize) else {
            continue;
        };
        let now_ms = i / 10;
        let fill = shipper.queue_fill();
        let chosen = Request {
            method: request.method.as_bytes(),
            authority: request.authority.as_bytes(),
            path: request.path.as_bytes(),
        };
        if !select.admit(chosen, now_ms, Some(fill)) {
            continue;
        }
        shipper.capture_request(black_box(request), now_ms);
        shipper.capture_response(black_box(response), now_ms);
        while let Some(batch) = shipper.next_batch(now_ms) {
            sent += batch.records;
            token = token.wrapping_add(1);
            shipper.dispatched(token, black_box(batch), now_ms);
            shipper.reply(token, Reply::Status(200), now_ms);
        }
    }
    println!("exchanges {exchanges}, body {body_bytes} B, records sent {sent}");
}
