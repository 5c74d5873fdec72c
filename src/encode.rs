//! Msgpack encoding of records per docs/wire-format.md, written straight into a caller's
//! reused buffer (no intermediate value tree).

use crate::record::{HeaderList, RequestRecord, ResponseRecord};
use crate::redact::Mark;

pub const WIRE_VERSION: u64 = 1;

/// Msgpack by `rmp`'s value writers, straight into the buffer: one capacity reservation per
/// record ([`headers_room`] and the like), then each value in msgpack's shortest form. Writing
/// into a `Vec` cannot fail, so their results carry nothing to handle.
struct Writer<'a>(&'a mut Vec<u8>);

/// Msgpack lengths are u32; nothing we capture comes near (bodies are capped far below), but
/// clamp rather than trust that.
fn len32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// Room a header list takes at most: per pair a 1-byte array marker and two 5-byte length
/// prefixes around the bytes themselves.
fn headers_room(headers: &HeaderList) -> usize {
    11 * headers.len() + headers.content_len() + 5
}

impl Writer<'_> {
    fn map(&mut self, len: u32) {
        let _ = rmp::encode::write_map_len(self.0, len);
    }

    fn array(&mut self, len: u32) {
        let _ = rmp::encode::write_array_len(self.0, len);
    }

    fn key(&mut self, key: &str) {
        self.str(key);
    }

    fn str(&mut self, value: &str) {
        // A str longer than msgpack allows (4 GiB) is cut at a character boundary.
        let mut end = value.len().min(u32::MAX as usize);
        while !value.is_char_boundary(end) {
            end -= 1;
        }
        let _ = rmp::encode::write_str(self.0, value.get(..end).unwrap_or_default());
    }

    fn bin(&mut self, value: &[u8]) {
        let value = value.get(..len32(value.len()) as usize).unwrap_or_default();
        let _ = rmp::encode::write_bin(self.0, value);
    }

    fn uint(&mut self, value: u64) {
        let _ = rmp::encode::write_uint(self.0, value);
    }

    fn bool(&mut self, value: bool) {
        let _ = rmp::encode::write_bool(self.0, value);
    }

    fn str_field(&mut self, key: &str, value: &str) {
        self.key(key);
        self.str(value);
    }

    fn uint_field(&mut self, key: &str, value: u64) {
        self.key(key);
        self.uint(value);
    }

    fn bool_field(&mut self, key: &str, value: bool) {
        self.key(key);
        self.bool(value);
    }

    /// `[[name, value], …]`; a value is a str when it is valid UTF-8, a bin otherwise.
    fn headers_field(&mut self, key: &str, headers: &HeaderList) {
        self.key(key);
        self.array(len32(headers.len()));
        for (name, value) in headers.iter_bytes() {
            self.array(2);
            // Names are valid UTF-8 (HeaderList checks them once) and short.
            let _ = rmp::encode::write_str_len(self.0, len32(name.len()));
            self.0.extend_from_slice(name);
            match std::str::from_utf8(value) {
                Ok(text) => self.str(text),
                Err(_) => self.bin(value),
            }
        }
    }

    fn common(&mut self, fields: u32, kind: &str, id: &str, ts_ns: u64) {
        self.map(fields + 4);
        self.uint_field("v", WIRE_VERSION);
        self.str_field("kind", kind);
        self.str_field("id", id);
        self.uint_field("ts_ns", ts_ns);
    }

    /// `redact_at_node`: `[[place, index, start, end], …]`, the values of redacted names left
    /// in clear for the node to seal (docs/wire-format.md, Redaction). Only written when there
    /// are some, so a record without them is as it always was.
    fn marks_field(&mut self, marks: &[Mark]) {
        self.key("redact_at_node");
        self.array(len32(marks.len()));
        for mark in marks {
            self.array(4);
            self.str(mark.place.as_str());
            self.uint(u64::from(mark.index));
            self.uint(u64::from(mark.span.0));
            self.uint(u64::from(mark.span.1));
        }
    }

    fn body_fields(&mut self, body: &crate::body::BodyCapture) {
        self.key("body");
        self.bin(body.bytes());
        self.uint_field("body_size", body.size());
        self.bool_field("body_truncated", body.truncated());
    }
}

/// Room the marks take at most: per mark a 1-byte array marker, a place of up to 9 bytes and
/// three uints of up to 5 bytes.
fn marks_room(marks: &[Mark]) -> usize {
    marks.len() * 26 + 24
}

/// Appends the request record to `out`.
pub fn encode_request(record: &RequestRecord, out: &mut Vec<u8>) {
    encode_request_marked(record, &[], out);
}

/// Appends the request record to `out`, with the marks of the values left for the node to
/// redact.
pub fn encode_request_marked(record: &RequestRecord, marks: &[Mark], out: &mut Vec<u8>) {
    // Field names and fixed-size values stay well under this.
    const FIXED_ROOM: usize = 256;
    out.reserve(
        FIXED_ROOM
            + [
                &record.id,
                &record.method,
                &record.scheme,
                &record.authority,
                &record.path,
                &record.protocol,
                &record.source,
                &record.destination,
            ]
            .iter()
            .map(|text| text.len() + 5)
            .sum::<usize>()
            + headers_room(&record.headers)
            + headers_room(&record.trailers)
            + record.body.bytes().len()
            + 5
            + marks_room(marks),
    );
    let mut w = Writer(out);
    let marked = u32::from(!marks.is_empty());
    w.common(14 + marked, "request", &record.id, record.ts_ns);
    w.str_field("method", &record.method);
    w.str_field("scheme", &record.scheme);
    w.str_field("authority", &record.authority);
    w.str_field("path", &record.path);
    w.str_field("protocol", &record.protocol);
    w.str_field("source", &record.source);
    w.str_field("destination", &record.destination);
    w.bool_field("tls", record.tls);
    w.headers_field("headers", &record.headers);
    w.headers_field("trailers", &record.trailers);
    w.body_fields(&record.body);
    w.bool_field("complete", record.complete);
    if marked == 1 {
        w.marks_field(marks);
    }
}

/// Appends the response record to `out`.
pub fn encode_response(record: &ResponseRecord, out: &mut Vec<u8>) {
    encode_response_marked(record, &[], out);
}

/// Appends the response record to `out`, with the marks of the values left for the node to
/// redact.
pub fn encode_response_marked(record: &ResponseRecord, marks: &[Mark], out: &mut Vec<u8>) {
    const FIXED_ROOM: usize = 256;
    out.reserve(
        FIXED_ROOM
            + record.id.len()
            + record.details.len()
            + 10
            + headers_room(&record.headers)
            + headers_room(&record.trailers)
            + record.body.bytes().len()
            + 5
            + marks_room(marks),
    );
    let mut w = Writer(out);
    let marked = u32::from(!marks.is_empty());
    w.common(9 + marked, "response", &record.id, record.ts_ns);
    w.uint_field("status", u64::from(record.status));
    w.str_field("details", &record.details);
    w.headers_field("headers", &record.headers);
    w.headers_field("trailers", &record.trailers);
    w.body_fields(&record.body);
    w.bool_field("complete", record.complete);
    w.uint_field("duration_us", record.duration_us);
    if marked == 1 {
        w.marks_field(marks);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::BodyCapture;
    use rmpv::Value;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn decode_all(mut bytes: &[u8]) -> Vec<Value> {
        let mut values = Vec::new();
        while !bytes.is_empty() {
            values.push(rmpv::decode::read_value(&mut bytes).unwrap());
        }
        values
    }

    fn get<'a>(map: &'a Value, key: &str) -> &'a Value {
        map.as_map()
            .unwrap()
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("missing key {key}"))
    }

    fn keys(map: &Value) -> Vec<&str> {
        map.as_map()
            .unwrap()
            .iter()
            .map(|(k, _)| k.as_str().unwrap())
            .collect()
    }

    fn sample_request() -> RequestRecord {
        let mut body = BodyCapture::new(4);
        body.add(6, b"abcdef");
        RequestRecord {
            id: "req-1".into(),
            ts_ns: 1_700_000_000_000_000_000,
            method: "POST".into(),
            scheme: "http".into(),
            authority: "example.com".into(),
            path: "/etc/passwd?x=1".into(),
            protocol: "HTTP/1.1".into(),
            source: "127.0.0.1:5555".into(),
            destination: "127.0.0.1:10000".into(),
            tls: false,
            headers: HeaderList::from(vec![
                ("x-dup", &b"1"[..]),
                ("x-dup", b"2"),
                ("x-bin", &[0xff, 0xfe]),
            ]),
            trailers: HeaderList::new(),
            body,
            complete: true,
        }
    }

    #[test]
    fn request_record_has_every_field_of_the_wire_format() {
        let mut out = Vec::new();
        encode_request(&sample_request(), &mut out);
        let values = decode_all(&out);
        assert_eq!(values.len(), 1);
        let r = &values[0];
        assert_eq!(
            keys(r),
            [
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
                "complete"
            ]
        );
        assert_eq!(get(r, "v").as_u64(), Some(1));
        assert_eq!(get(r, "kind").as_str(), Some("request"));
        assert_eq!(get(r, "ts_ns").as_u64(), Some(1_700_000_000_000_000_000));
        assert_eq!(get(r, "path").as_str(), Some("/etc/passwd?x=1"));
        assert_eq!(get(r, "tls").as_bool(), Some(false));
        assert_eq!(get(r, "body"), &Value::Binary(b"abcd".to_vec()));
        assert_eq!(get(r, "body_size").as_u64(), Some(6));
        assert_eq!(get(r, "body_truncated").as_bool(), Some(true));
        assert_eq!(get(r, "complete").as_bool(), Some(true));
        let headers = get(r, "headers").as_array().unwrap();
        assert_eq!(
            headers[0],
            Value::Array(vec![Value::from("x-dup"), Value::from("1")])
        );
        assert_eq!(
            headers[1],
            Value::Array(vec![Value::from("x-dup"), Value::from("2")])
        );
        assert_eq!(
            headers[2],
            Value::Array(vec![Value::from("x-bin"), Value::Binary(vec![0xff, 0xfe])])
        );
        assert_eq!(get(r, "trailers"), &Value::Array(vec![]));
    }

    #[test]
    fn response_record_has_every_field_and_records_concatenate() {
        let mut out = Vec::new();
        encode_request(&sample_request(), &mut out);
        let mut body = BodyCapture::new(100);
        body.add(2, b"ok");
        let response = ResponseRecord {
            id: "req-1".into(),
            ts_ns: 5,
            status: 503,
            details: "no_healthy_upstream".into(),
            headers: HeaderList::from(vec![("content-length", "2")]),
            trailers: HeaderList::from(vec![("x-checksum", "abc")]),
            body,
            complete: true,
            duration_us: 1234,
        };
        encode_response(&response, &mut out);
        let values = decode_all(&out);
        assert_eq!(values.len(), 2);
        let r = &values[1];
        assert_eq!(
            keys(r),
            [
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
                "duration_us"
            ]
        );
        assert_eq!(get(r, "kind").as_str(), Some("response"));
        assert_eq!(get(r, "id").as_str(), Some("req-1"));
        assert_eq!(get(r, "status").as_u64(), Some(503));
        assert_eq!(get(r, "details").as_str(), Some("no_healthy_upstream"));
        assert_eq!(get(r, "body"), &Value::Binary(b"ok".to_vec()));
        assert_eq!(get(r, "body_truncated").as_bool(), Some(false));
        assert_eq!(get(r, "duration_us").as_u64(), Some(1234));
        assert_eq!(
            get(r, "trailers").as_array().unwrap()[0],
            Value::Array(vec![Value::from("x-checksum"), Value::from("abc")])
        );
    }

    #[test]
    fn marks_are_one_more_key_only_when_there_are_some() {
        use crate::redact::Place;
        let marks = [
            Mark {
                place: Place::Headers,
                index: 2,
                span: (7, 300),
            },
            Mark {
                place: Place::Path,
                index: 0,
                span: (70_000, 70_001),
            },
        ];
        let mut out = Vec::new();
        encode_request_marked(&sample_request(), &marks, &mut out);
        let mut plain = Vec::new();
        encode_request(&sample_request(), &mut plain);
        let (r, p) = (&decode_all(&out)[0], &decode_all(&plain)[0]);
        assert_eq!(keys(r).len(), keys(p).len() + 1);
        assert_eq!(keys(r).last(), Some(&"redact_at_node"));
        assert_eq!(
            get(r, "redact_at_node"),
            &Value::Array(vec![
                Value::Array(vec!["headers".into(), 2.into(), 7.into(), 300.into()]),
                Value::Array(vec!["path".into(), 0.into(), 70_000.into(), 70_001.into()]),
            ])
        );
        // Everything before the new key is byte for byte the unmarked record, but the map's
        // length (a map16: marker and two bytes).
        assert_eq!(
            (out[..3].to_vec(), plain[..3].to_vec()),
            (vec![0xde, 0, 19], vec![0xde, 0, 18])
        );
        assert_eq!(out[3..plain.len()], plain[3..]);
        let response = ResponseRecord {
            id: "r".into(),
            ..ResponseRecord::default()
        };
        let (mut out, mut plain) = (Vec::new(), Vec::new());
        encode_response_marked(&response, &marks[..1], &mut out);
        encode_response_marked(&response, &[], &mut plain);
        let (r, p) = (&decode_all(&out)[0], &decode_all(&plain)[0]);
        assert_eq!(keys(r).len(), 14);
        assert_eq!(keys(p).len(), 13);
        assert_eq!(get(r, "redact_at_node").as_array().unwrap().len(), 1);
    }

    /// Every length class against `rmp`, an independent msgpack writer: the same, shortest,
    /// bytes at each boundary.
    #[test]
    fn values_match_rmp_at_every_length_boundary() {
        let lengths = [0, 1, 15, 16, 31, 32, 255, 256, 65535, 65536];
        for len in lengths {
            let text = "a".repeat(len);
            let mut ours = Vec::new();
            let mut w = Writer(&mut ours);
            w.str(&text);
            w.bin(text.as_bytes());
            w.map(len as u32);
            w.array(len as u32);
            let mut theirs = Vec::new();
            rmp::encode::write_str(&mut theirs, &text).unwrap();
            rmp::encode::write_bin(&mut theirs, text.as_bytes()).unwrap();
            rmp::encode::write_map_len(&mut theirs, len as u32).unwrap();
            rmp::encode::write_array_len(&mut theirs, len as u32).unwrap();
            assert!(ours == theirs, "length {len}");
        }
        let uints = [
            0,
            1,
            127,
            128,
            255,
            256,
            65535,
            65536,
            u32::MAX as u64,
            u32::MAX as u64 + 1,
            u64::MAX,
        ];
        for value in uints {
            let mut ours = Vec::new();
            Writer(&mut ours).uint(value);
            let mut theirs = Vec::new();
            rmp::encode::write_uint(&mut theirs, value).unwrap();
            assert_eq!(ours, theirs, "uint {value}");
        }
        for value in [false, true] {
            let mut ours = Vec::new();
            Writer(&mut ours).bool(value);
            let mut theirs = Vec::new();
            rmp::encode::write_bool(&mut theirs, value).unwrap();
            assert_eq!(ours, theirs, "bool {value}");
        }
    }
}
