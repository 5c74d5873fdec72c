//! Records built from arbitrary input (any bytes in header values and bodies, any numbers)
//! are encoded by the filter's encoder, read back with the fuzz crate's own msgpack decoder and
//! compared field by field with docs/wire-format.md; every value must be in msgpack's shortest
//! form, as the encoder promises. The same records then go through the worker's shipper, whose
//! byte and record accounting must match the encoded lengths.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use oob_mirror::body::BodyCapture;
use oob_mirror::config::{Config, MIN_BATCH_BYTES};
use oob_mirror::encode::{encode_request, encode_response};
use oob_mirror::record::{HeaderList, RequestRecord, ResponseRecord};
use oob_mirror::shipper::{Reply, Shipper};
use oob_mirror_fuzz::{Reader, Value};

/// Values past 64 KiB take msgpack's 32-bit length forms; fuzz inputs are far smaller, so long
/// values are made by repeating a short one.
const LONG_MAX: usize = 70_000;

fn repeated(unit: &[u8], times: u16) -> Vec<u8> {
    let times = usize::from(times).min(LONG_MAX / unit.len().max(1));
    unit.repeat(times)
}

#[derive(Arbitrary, Debug)]
enum HeaderValue {
    Text(String),
    Raw(Vec<u8>),
    Long { unit: Vec<u8>, times: u16 },
}

#[derive(Arbitrary, Debug)]
struct Header {
    name: String,
    value: HeaderValue,
}

/// What the filter read of one body chunk the host handed over (all of it, or less when the
/// capture budget granted less); `unread` more bytes of the chunk stayed in Envoy.
#[derive(Arbitrary, Debug)]
enum Read {
    Bytes(Vec<u8>),
    Long { unit: Vec<u8>, times: u16 },
}

#[derive(Arbitrary, Debug)]
struct Chunk {
    read: Read,
    unread: u16,
}

#[derive(Arbitrary, Debug)]
struct Body {
    /// The body cap, up to twice `LONG_MAX`.
    cap: u32,
    chunks: Vec<Chunk>,
}

#[derive(Arbitrary, Debug)]
struct Request {
    id: String,
    ts_ns: u64,
    method: String,
    scheme: String,
    authority: String,
    path: String,
    protocol: String,
    source: String,
    destination: String,
    tls: bool,
    headers: Vec<Header>,
    trailers: Vec<Header>,
    body: Body,
    complete: bool,
}

#[derive(Arbitrary, Debug)]
struct Response {
    id: String,
    ts_ns: u64,
    status: u32,
    details: String,
    headers: Vec<Header>,
    trailers: Vec<Header>,
    body: Body,
    complete: bool,
    duration_us: u64,
}

#[derive(Arbitrary, Debug)]
enum Record {
    Request(Request),
    Response(Response),
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// Bytes already in the output buffer: the encoder appends and must leave them alone.
    already_written: Vec<u8>,
    records: Vec<Record>,
    max_records: u8,
    /// Added to the smallest accepted `batch.max_bytes`.
    extra_batch_bytes: u16,
}

/// What the wire format says of a body, worked out from the chunks without `BodyCapture`.
struct ExpectedBody {
    kept: Vec<u8>,
    size: u64,
    /// Fewer bytes kept than the cap allowed (only the capture budget does that).
    cut_by_budget: bool,
}

fn capture_body(body: &Body) -> (BodyCapture, ExpectedBody) {
    let cap = body.cap as usize % (2 * LONG_MAX);
    let mut capture = BodyCapture::new(cap as u64);
    let mut kept = Vec::new();
    let mut size = 0u64;
    for chunk in &body.chunks {
        let read = match &chunk.read {
            Read::Bytes(bytes) => bytes.clone(),
            Read::Long { unit, times } => repeated(unit, *times),
        };
        let chunk_len = read.len() + usize::from(chunk.unread);
        capture.add(chunk_len, &read);
        let room = cap - kept.len();
        kept.extend(read.iter().take(room));
        size += chunk_len as u64;
    }
    let cut_by_budget = (kept.len() as u64) < size.min(cap as u64);
    (
        capture,
        ExpectedBody {
            kept,
            size,
            cut_by_budget,
        },
    )
}

fn header_list(headers: &[Header]) -> HeaderList {
    headers
        .iter()
        .map(|header| {
            let value = match &header.value {
                HeaderValue::Text(text) => text.as_bytes().to_vec(),
                HeaderValue::Raw(bytes) => bytes.clone(),
                HeaderValue::Long { unit, times } => repeated(unit, *times),
            };
            (header.name.clone(), value)
        })
        .collect()
}

/// A built record, what its body should look like, and its encoding on its own.
struct Built {
    record: Captured,
    body: ExpectedBody,
    encoded: Vec<u8>,
}

enum Captured {
    Request(RequestRecord),
    Response(ResponseRecord),
}

fn build(record: &Record) -> Built {
    let mut encoded = Vec::new();
    match record {
        Record::Request(r) => {
            let (capture, body) = capture_body(&r.body);
            let record = RequestRecord {
                id: r.id.clone(),
                ts_ns: r.ts_ns,
                method: r.method.clone(),
                scheme: r.scheme.clone(),
                authority: r.authority.clone(),
                path: r.path.clone(),
                protocol: r.protocol.clone(),
                source: r.source.clone(),
                destination: r.destination.clone(),
                tls: r.tls,
                headers: header_list(&r.headers),
                trailers: header_list(&r.trailers),
                body: capture,
                complete: r.complete,
            };
            encode_request(&record, &mut encoded);
            Built {
                record: Captured::Request(record),
                body,
                encoded,
            }
        }
        Record::Response(r) => {
            let (capture, body) = capture_body(&r.body);
            let record = ResponseRecord {
                id: r.id.clone(),
                ts_ns: r.ts_ns,
                status: r.status,
                details: r.details.clone(),
                headers: header_list(&r.headers),
                trailers: header_list(&r.trailers),
                body: capture,
                complete: r.complete,
                duration_us: r.duration_us,
            };
            encode_response(&record, &mut encoded);
            Built {
                record: Captured::Response(record),
                body,
                encoded,
            }
        }
    }
}

const REQUEST_KEYS: [&str; 18] = [
    "v",
    "kind",
    "id",
    "ts_ns",
    "method",
    "scheme",
    "authority",
    "path",
    "protocol",
    "source",
    "destination",
    "tls",
    "headers",
    "trailers",
    "body",
    "body_size",
    "body_truncated",
    "complete",
];

const RESPONSE_KEYS: [&str; 13] = [
    "v",
    "kind",
    "id",
    "ts_ns",
    "status",
    "details",
    "headers",
    "trailers",
    "body",
    "body_size",
    "body_truncated",
    "complete",
    "duration_us",
];

/// A record map as key → value, after checking that every key is a str, none repeats, and the
/// keys are exactly those the wire format lists for the kind.
struct Fields<'a, 'v>(&'v [(Value<'a>, Value<'a>)]);

impl<'a, 'v> Fields<'a, 'v> {
    fn new(value: &'v Value<'a>, expected_keys: &[&str]) -> Self {
        let Value::Map(entries) = value else {
            panic!("a record is not a map: {value:?}");
        };
        let mut keys: Vec<&str> = entries
            .iter()
            .map(|(key, _)| match key {
                Value::Str(key) => *key,
                other => panic!("a record key is not a str: {other:?}"),
            })
            .collect();
        keys.sort_unstable();
        let mut expected = expected_keys.to_vec();
        expected.sort_unstable();
        assert_eq!(keys, expected, "record keys (sorted)");
        Fields(entries)
    }

    fn get(&self, key: &str) -> &'v Value<'a> {
        self.0
            .iter()
            .find(|(k, _)| *k == Value::Str(key))
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("missing {key}"))
    }

    fn str(&self, key: &str, expected: &str) {
        assert_eq!(self.get(key), &Value::Str(expected), "{key}");
    }

    fn uint(&self, key: &str, expected: u64) {
        assert_eq!(self.get(key), &Value::Uint(expected), "{key}");
    }

    fn bool(&self, key: &str, expected: bool) {
        assert_eq!(self.get(key), &Value::Bool(expected), "{key}");
    }

    /// `[[name, value], …]` in order; value a str when UTF-8, else a bin of the raw bytes.
    fn headers(&self, key: &str, expected: &HeaderList) {
        let Value::Array(pairs) = self.get(key) else {
            panic!("{key} is not an array");
        };
        assert_eq!(pairs.len(), expected.len(), "{key} length");
        for (pair, (name, value)) in pairs.iter().zip(expected.iter()) {
            let wanted_value = match std::str::from_utf8(value) {
                Ok(text) => Value::Str(text),
                Err(_) => Value::Bin(value),
            };
            assert_eq!(
                pair,
                &Value::Array(vec![Value::Str(name), wanted_value]),
                "{key}"
            );
        }
    }

    fn body(&self, expected: &ExpectedBody) {
        assert_eq!(self.get("body"), &Value::Bin(&expected.kept), "body");
        self.uint("body_size", expected.size);
        self.bool("body_truncated", expected.size > expected.kept.len() as u64);
    }
}

fn check_decoded(value: &Value<'_>, built: &Built) {
    match &built.record {
        Captured::Request(r) => {
            let f = Fields::new(value, &REQUEST_KEYS);
            f.uint("v", 1);
            f.str("kind", "request");
            f.str("id", &r.id);
            f.uint("ts_ns", r.ts_ns);
            f.str("method", &r.method);
            f.str("scheme", &r.scheme);
            f.str("authority", &r.authority);
            f.str("path", &r.path);
            f.str("protocol", &r.protocol);
            f.str("source", &r.source);
            f.str("destination", &r.destination);
            f.bool("tls", r.tls);
            f.headers("headers", &r.headers);
            f.headers("trailers", &r.trailers);
            f.body(&built.body);
            f.bool("complete", r.complete);
        }
        Captured::Response(r) => {
            let f = Fields::new(value, &RESPONSE_KEYS);
            f.uint("v", 1);
            f.str("kind", "response");
            f.str("id", &r.id);
            f.uint("ts_ns", r.ts_ns);
            f.uint("status", u64::from(r.status));
            f.str("details", &r.details);
            f.headers("headers", &r.headers);
            f.headers("trailers", &r.trailers);
            f.body(&built.body);
            f.bool("complete", r.complete);
            f.uint("duration_us", r.duration_us);
        }
    }
}

fn capture(shipper: &mut Shipper, built: &Built) {
    match &built.record {
        // Redaction off: this target checks the encoding of what was captured.
        Captured::Request(r) => shipper.capture_request(&mut r.clone(), 0),
        Captured::Response(r) => shipper.capture_response(&mut r.clone(), 0),
    }
}

/// Every record goes through one worker's shipper (a queue large enough to refuse none):
/// the queued bytes are the encoded lengths, each batch is whole records in capture order
/// within the batch bounds, and acknowledging them all accounts for every byte and record.
fn check_shipping(input: &Input, built: &[Built]) {
    let mut config = match Config::parse(br#"{"node":{"cluster":"n"}}"#) {
        Ok(config) => config,
        Err(err) => panic!("minimal configuration refused: {err}"),
    };
    config.batch.max_records = u64::from(input.max_records).max(1);
    config.batch.max_bytes = MIN_BATCH_BYTES + u64::from(input.extra_batch_bytes);
    config.batch.max_queue_bytes = u64::MAX;
    let mut shipper = Shipper::new(&config, None);
    for record in built {
        capture(&mut shipper, record);
    }
    let total_bytes: u64 = built.iter().map(|b| b.encoded.len() as u64).sum();
    let records = built.len() as u64;
    assert_eq!(shipper.gauges().queued_bytes, total_bytes);
    assert_eq!(shipper.gauges().queued_records, records);
    let counters = shipper.counters();
    assert_eq!(counters.records_captured, records);
    let truncated = built
        .iter()
        .filter(|b| b.body.size > b.body.kept.len() as u64)
        .count() as u64;
    assert_eq!(counters.bodies_truncated, truncated);
    let cut = built.iter().filter(|b| b.body.cut_by_budget).count() as u64;
    assert_eq!(counters.bodies_truncated_budget, cut);

    let after_flush = config.batch.flush_ms;
    let mut next = built.iter();
    let mut token = 0u32;
    while let Some(batch) = shipper.next_batch(after_flush) {
        assert!(batch.records >= 1 && batch.records <= config.batch.max_records);
        if batch.records > 1 {
            assert!(batch.body.len() as u64 <= config.batch.max_bytes);
        }
        let mut expected_body = Vec::new();
        for _ in 0..batch.records {
            let record = next
                .next()
                .expect("a batch holds more records than captured");
            expected_body.extend_from_slice(&record.encoded);
        }
        assert!(batch.body == expected_body, "batch body differs");
        token += 1;
        shipper.dispatched(token, batch, after_flush);
        shipper.reply(token, Reply::Status(200), after_flush);
    }
    assert!(next.next().is_none(), "records left unsent");
    let counters = shipper.counters();
    assert_eq!(counters.records_sent, records);
    assert_eq!(counters.bytes_sent, total_bytes);
    assert_eq!(counters.batches_sent, u64::from(token));
    assert_eq!(shipper.gauges().queued_bytes, 0);
    assert_eq!(shipper.gauges().queued_records, 0);
    assert_eq!(shipper.gauges().inflight_records, 0);
}

fuzz_target!(|input: Input| {
    let built: Vec<Built> = input.records.iter().map(build).collect();

    // Records are appended one after another to a buffer that already holds bytes.
    let mut out = input.already_written.clone();
    for b in &built {
        match &b.record {
            Captured::Request(r) => encode_request(r, &mut out),
            Captured::Response(r) => encode_response(r, &mut out),
        }
    }
    let (kept, appended) = out.split_at(input.already_written.len());
    assert_eq!(
        kept,
        &input.already_written[..],
        "bytes before the record changed"
    );

    // Read back: one map per record, each exactly as long as the record encoded alone, and
    // nothing after the last.
    let mut reader = Reader::new(appended);
    for b in &built {
        let start = reader.position();
        let value = match reader.value() {
            Ok(value) => value,
            Err(err) => panic!("undecodable record: {err:?}"),
        };
        assert_eq!(reader.position() - start, b.encoded.len(), "record length");
        assert!(appended[start..reader.position()] == b.encoded[..]);
        check_decoded(&value, b);
    }
    assert!(reader.is_at_end(), "bytes after the last record");
    if let Some(at) = reader.longer_than_needed() {
        panic!("value at byte {at} is not in its shortest form");
    }

    check_shipping(&input, &built);
});
