//! Decoding of a batch body into [`Record`]s.
//!
//! The decoder is strict about what the format promises (types, required
//! keys, `v = 1`) because it is the reference reader the tests rely on to
//! catch writer bugs, and lenient only where the format asks readers to be:
//! unknown keys are ignored. It works on an independent msgpack decoder
//! (`rmpv`), not on the writer's code, so both cannot share a bug.

use std::fmt;
use std::io::Cursor;

use rmpv::Value;

use crate::intake::record::{HeaderList, HeaderValue, Kind, Record};

/// The format version this reader understands.
pub const VERSION: u64 = 1;

/// Why a batch could not be decoded, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// Index of the record (map) in the batch, counted from 0.
    pub index: usize,
    /// Byte offset in the body where that record starts.
    pub offset: usize,
    pub kind: DecodeErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeErrorKind {
    /// The body holds no record at all.
    Empty,
    /// The bytes are not valid msgpack, or end in the middle of a value.
    Msgpack(String),
    /// A top-level value is not a map.
    NotAMap,
    /// A map key is not a str.
    NonStringKey,
    /// The same key appears twice in one record.
    DuplicateKey(String),
    /// A key the format requires for this kind of record is absent.
    Missing(&'static str),
    /// A known key holds a value of the wrong msgpack type or range.
    WrongType { key: String, expected: &'static str },
    /// `v` is not a version this reader knows.
    UnsupportedVersion(u64),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "record {} at byte {}: ", self.index, self.offset)?;
        match &self.kind {
            DecodeErrorKind::Empty => write!(f, "empty batch"),
            DecodeErrorKind::Msgpack(m) => write!(f, "invalid msgpack: {m}"),
            DecodeErrorKind::NotAMap => write!(f, "not a map"),
            DecodeErrorKind::NonStringKey => write!(f, "map key is not a str"),
            DecodeErrorKind::DuplicateKey(k) => write!(f, "duplicate key `{k}`"),
            DecodeErrorKind::Missing(k) => write!(f, "missing key `{k}`"),
            DecodeErrorKind::WrongType { key, expected } => {
                write!(f, "key `{key}`: expected {expected}")
            }
            DecodeErrorKind::UnsupportedVersion(v) => write!(f, "unsupported version v={v}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Decodes a whole batch body: msgpack maps concatenated, read until the
/// body ends. Any malformed record fails the whole batch, since a writer that
/// produced one bad record cannot be trusted on the rest.
pub fn decode_batch(body: &[u8]) -> Result<Vec<Record>, DecodeError> {
    let total = body.len();
    let mut cursor = Cursor::new(body);
    let mut records = Vec::new();
    loop {
        let offset = usize::try_from(cursor.position()).unwrap_or(total);
        if offset >= total {
            break;
        }
        let index = records.len();
        let at = |kind| DecodeError {
            index,
            offset,
            kind,
        };
        let value = rmpv::decode::read_value(&mut cursor)
            .map_err(|e| at(DecodeErrorKind::Msgpack(e.to_string())))?;
        records.push(decode_record(value).map_err(at)?);
    }
    if records.is_empty() {
        return Err(DecodeError {
            index: 0,
            offset: 0,
            kind: DecodeErrorKind::Empty,
        });
    }
    Ok(records)
}

/// Decodes one record from its msgpack map.
pub fn decode_record(value: Value) -> Result<Record, DecodeErrorKind> {
    let fields = Fields::collect(&value)?;

    let v = fields.req("v", UINT)?;
    if v != VERSION {
        return Err(DecodeErrorKind::UnsupportedVersion(v));
    }
    let kind = Kind::from(fields.req("kind", STR)?.as_str());

    let mut record = Record {
        v,
        id: fields.req("id", STR)?,
        ts_ns: fields.req("ts_ns", UINT)?,
        headers: fields.req("headers", HEADERS)?,
        trailers: fields.req("trailers", HEADERS)?,
        body: fields.req("body", BIN)?,
        body_size: fields.req("body_size", UINT)?,
        body_truncated: fields.req("body_truncated", BOOL)?,
        complete: fields.req("complete", BOOL)?,
        method: fields.opt("method", STR)?,
        scheme: fields.opt("scheme", STR)?,
        authority: fields.opt("authority", STR)?,
        path: fields.opt("path", STR)?,
        protocol: fields.opt("protocol", STR)?,
        source: fields.opt("source", STR)?,
        destination: fields.opt("destination", STR)?,
        tls: fields.opt("tls", BOOL)?,
        status: fields.opt("status", STATUS)?,
        details: fields.opt("details", STR)?,
        duration_us: fields.opt("duration_us", UINT)?,
        kind,
        raw: Value::Nil,
    };

    // Kind-specific keys are required only for the kinds this reader knows;
    // an unknown kind is decoded with whatever it carries.
    match record.kind {
        Kind::Request => {
            for key in [
                "method",
                "scheme",
                "authority",
                "path",
                "protocol",
                "source",
                "destination",
                "tls",
            ] {
                fields.require(key)?;
            }
        }
        Kind::Response => {
            for key in ["status", "details", "duration_us"] {
                fields.require(key)?;
            }
        }
        Kind::Other(_) => {}
    }

    record.raw = value;
    redact_at_node(&record)?;
    Ok(record)
}

/// The key listing the values of redacted names left in clear for the node to redact.
pub const REDACT_AT_NODE: &str = "redact_at_node";

/// The values that `redact_at_node` points at: `[[place, index, start, end], …]`, a place
/// being `headers`, `trailers` (`index` the pair's), `path` or `body` (`index` 0), `start` and
/// `end` byte offsets in that value. A mark that points at nothing refuses the record: it
/// would leave a value unsealed.
pub fn redact_at_node(record: &Record) -> Result<Vec<Vec<u8>>, DecodeErrorKind> {
    let wrong = || DecodeErrorKind::WrongType {
        key: REDACT_AT_NODE.to_owned(),
        expected: "array of [place, index, start, end] inside the record",
    };
    let Some(marks) = record.raw_get(REDACT_AT_NODE) else {
        return Ok(Vec::new());
    };
    let marks = marks.as_array().ok_or_else(wrong)?;
    let mut values = Vec::with_capacity(marks.len());
    for mark in marks {
        let Some([place, index, start, end]) = mark.as_array().map(Vec::as_slice) else {
            return Err(wrong());
        };
        let number = |v: &Value| uint(v).and_then(|n| usize::try_from(n).ok());
        let (Some(index), Some(start), Some(end)) = (number(index), number(start), number(end))
        else {
            return Err(wrong());
        };
        let header = |list: &HeaderList| list.get(index).map(|(_, v)| v.as_bytes().to_vec());
        let whole = match (place.as_str(), index) {
            (Some("headers"), _) => header(&record.headers),
            (Some("trailers"), _) => header(&record.trailers),
            (Some("path"), 0) => record.path.as_ref().map(|p| p.as_bytes().to_vec()),
            (Some("body"), 0) => Some(record.body.clone()),
            _ => None,
        };
        let value = whole
            .as_deref()
            .and_then(|w| w.get(start..end))
            .ok_or_else(wrong)?;
        values.push(value.to_vec());
    }
    Ok(values)
}

/// The entries of a record's map, looked up by key.
struct Fields<'a> {
    entries: Vec<(&'a str, &'a Value)>,
}

impl<'a> Fields<'a> {
    fn collect(value: &'a Value) -> Result<Self, DecodeErrorKind> {
        let map = value.as_map().ok_or(DecodeErrorKind::NotAMap)?;
        let mut entries: Vec<(&str, &Value)> = Vec::with_capacity(map.len());
        for (k, v) in map {
            let key = k.as_str().ok_or(DecodeErrorKind::NonStringKey)?;
            if entries.iter().any(|(seen, _)| *seen == key) {
                return Err(DecodeErrorKind::DuplicateKey(key.to_owned()));
            }
            entries.push((key, v));
        }
        Ok(Fields { entries })
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.entries
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
    }

    fn require(&self, key: &'static str) -> Result<(), DecodeErrorKind> {
        self.get(key)
            .map(|_| ())
            .ok_or(DecodeErrorKind::Missing(key))
    }

    fn req<T>(&self, key: &'static str, conv: Conv<T>) -> Result<T, DecodeErrorKind> {
        self.opt(key, conv)?.ok_or(DecodeErrorKind::Missing(key))
    }

    fn opt<T>(&self, key: &'static str, conv: Conv<T>) -> Result<Option<T>, DecodeErrorKind> {
        self.get(key)
            .map(|v| {
                (conv.f)(v).ok_or_else(|| DecodeErrorKind::WrongType {
                    key: key.to_owned(),
                    expected: conv.name,
                })
            })
            .transpose()
    }
}

/// A conversion from a msgpack value to a field's type, with the type's
/// name for error messages; `f` returns `None` on a value of the wrong type.
#[derive(Clone, Copy)]
struct Conv<T> {
    name: &'static str,
    f: fn(&Value) -> Option<T>,
}

const UINT: Conv<u64> = Conv {
    name: "uint",
    f: uint,
};
const STATUS: Conv<u16> = Conv {
    name: "uint <= 65535",
    f: status,
};
const STR: Conv<String> = Conv {
    name: "str (valid UTF-8)",
    f: string,
};
const BOOL: Conv<bool> = Conv {
    name: "bool",
    f: boolean,
};
const BIN: Conv<Vec<u8>> = Conv {
    name: "bin",
    f: bin,
};
const HEADERS: Conv<HeaderList> = Conv {
    name: "array of [str, str|bin]",
    f: header_list,
};

fn uint(v: &Value) -> Option<u64> {
    match v {
        // Any msgpack integer family is accepted as long as the value is not
        // negative: writers may pick a signed encoding for small numbers.
        Value::Integer(i) => i.as_u64(),
        _ => None,
    }
}

fn status(v: &Value) -> Option<u16> {
    uint(v).and_then(|n| u16::try_from(n).ok())
}

fn string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => s.as_str().map(str::to_owned),
        _ => None,
    }
}

fn boolean(v: &Value) -> Option<bool> {
    v.as_bool()
}

fn bin(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::Binary(b) => Some(b.clone()),
        _ => None,
    }
}

fn header_list(v: &Value) -> Option<HeaderList> {
    v.as_array()?
        .iter()
        .map(|pair| match pair.as_array()?.as_slice() {
            [name, value] => {
                let name = string(name)?;
                let value = match value {
                    Value::String(s) => HeaderValue::Str(s.as_str()?.to_owned()),
                    Value::Binary(b) => HeaderValue::Bin(b.clone()),
                    _ => return None,
                };
                Some((name, value))
            }
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmp::encode as enc;

    /// A msgpack map written entry by entry with `rmp`, independently of
    /// the filter's encoder; the length goes in front when it is finished.
    /// Keys listed in `skip` are left out, to write a variant of a
    /// complete record.
    #[derive(Default)]
    struct Map {
        len: u32,
        buf: Vec<u8>,
        skip: Vec<String>,
        scratch: Vec<u8>,
    }

    impl Map {
        fn skipping(keys: &[&str]) -> Self {
            Map {
                skip: keys.iter().map(|k| k.to_string()).collect(),
                ..Map::default()
            }
        }
        /// Ends the skipping, so the caller can add its own version of the
        /// skipped keys.
        fn unskip(mut self) -> Self {
            self.skip.clear();
            self
        }
        /// Writes `key` and returns the buffer for its value.
        fn key(&mut self, key: &str) -> &mut Vec<u8> {
            if self.skip.iter().any(|k| k == key) {
                return &mut self.scratch;
            }
            self.len += 1;
            enc::write_str(&mut self.buf, key).unwrap();
            &mut self.buf
        }
        fn uint(mut self, key: &str, v: u64) -> Self {
            enc::write_uint(self.key(key), v).unwrap();
            self
        }
        fn str(mut self, key: &str, v: &str) -> Self {
            enc::write_str(self.key(key), v).unwrap();
            self
        }
        fn bool(mut self, key: &str, v: bool) -> Self {
            enc::write_bool(self.key(key), v).unwrap();
            self
        }
        fn bin(mut self, key: &str, v: &[u8]) -> Self {
            enc::write_bin(self.key(key), v).unwrap();
            self
        }
        /// A header list; a value is written as bin when it is not UTF-8.
        fn headers(mut self, key: &str, list: &[(&str, &[u8])]) -> Self {
            let buf = self.key(key);
            enc::write_array_len(buf, list.len() as u32).unwrap();
            for (name, value) in list {
                enc::write_array_len(buf, 2).unwrap();
                enc::write_str(buf, name).unwrap();
                match std::str::from_utf8(value) {
                    Ok(s) => enc::write_str(buf, s).unwrap(),
                    Err(_) => enc::write_bin(buf, value).unwrap(),
                }
            }
            self
        }
        fn write_to(self, out: &mut Vec<u8>) {
            enc::write_map_len(out, self.len).unwrap();
            out.extend_from_slice(&self.buf);
        }
        fn bytes(self) -> Vec<u8> {
            let mut out = Vec::new();
            self.write_to(&mut out);
            out
        }
    }

    fn common(kind: &str, id: &str) -> Map {
        common_in(Map::default(), kind, id)
    }

    fn common_in(m: Map, kind: &str, id: &str) -> Map {
        m.uint("v", 1)
            .str("kind", kind)
            .str("id", id)
            .uint("ts_ns", 1_700_000_000_123_456_789)
    }

    fn request(id: &str) -> Map {
        request_without(id, &[])
    }

    fn request_without(id: &str, skip: &[&str]) -> Map {
        common_in(Map::skipping(skip), "request", id)
            .str("method", "POST")
            .str("scheme", "http")
            .str("authority", "api.example")
            .str("path", "/v1/items?x=1")
            .str("protocol", "HTTP/1.1")
            .str("source", "127.0.0.1:50000")
            .str("destination", "[::1]:10000")
            .bool("tls", false)
            .headers(
                "headers",
                &[
                    ("content-type", b"application/json"),
                    ("x-raw", b"\xff\xfe"),
                    ("x-dup", b"1"),
                    ("x-dup", b"2"),
                ],
            )
            .headers("trailers", &[])
            .bin("body", b"{\"a\":1}")
            .uint("body_size", 7)
            .bool("body_truncated", false)
            .bool("complete", true)
            .unskip()
    }

    fn response(id: &str) -> Map {
        response_without(id, &[])
    }

    fn response_without(id: &str, skip: &[&str]) -> Map {
        common_in(Map::skipping(skip), "response", id)
            .uint("status", 201)
            .str("details", "via_upstream")
            .headers("headers", &[("server", b"envoy")])
            .headers("trailers", &[("grpc-status", b"0")])
            .bin("body", b"\x00\x01")
            .uint("body_size", 10)
            .bool("body_truncated", true)
            .bool("complete", false)
            .uint("duration_us", 1234)
            .unskip()
    }

    fn only_error(body: &[u8]) -> DecodeError {
        decode_batch(body).unwrap_err()
    }

    #[test]
    fn decodes_a_request_and_a_response() {
        let mut body = Vec::new();
        request("abc")
            .str("future_key", "ignored")
            .write_to(&mut body);
        response("abc").write_to(&mut body);

        let records = decode_batch(&body).unwrap();
        assert_eq!(records.len(), 2);

        let req = &records[0];
        assert_eq!(req.v, 1);
        assert_eq!(req.kind, Kind::Request);
        assert_eq!(req.id, "abc");
        assert_eq!(req.ts_ns, 1_700_000_000_123_456_789);
        assert_eq!(req.method.as_deref(), Some("POST"));
        assert_eq!(req.scheme.as_deref(), Some("http"));
        assert_eq!(req.authority.as_deref(), Some("api.example"));
        assert_eq!(req.path.as_deref(), Some("/v1/items?x=1"));
        assert_eq!(req.protocol.as_deref(), Some("HTTP/1.1"));
        assert_eq!(req.source.as_deref(), Some("127.0.0.1:50000"));
        assert_eq!(req.destination.as_deref(), Some("[::1]:10000"));
        assert_eq!(req.tls, Some(false));
        assert_eq!(req.body, b"{\"a\":1}");
        assert_eq!(req.body_str(), Some("{\"a\":1}"));
        assert_eq!(req.body_size, 7);
        assert!(!req.body_truncated);
        assert!(req.complete);
        assert_eq!(req.status, None);
        assert_eq!(req.details, None);
        assert_eq!(req.duration_us, None);
        assert!(req.trailers.is_empty());

        // Header types survive: str for UTF-8, bin for the rest.
        assert_eq!(
            req.header("Content-Type"),
            Some(&HeaderValue::Str("application/json".into()))
        );
        let raw = req.header("x-raw").unwrap();
        assert!(raw.is_bin());
        assert_eq!(raw.as_bytes(), b"\xff\xfe");
        assert_eq!(raw.as_str(), None);
        let dups: Vec<_> = req
            .headers_named("x-dup")
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        assert_eq!(dups, [b"1", b"2"]);
        assert_eq!(req.headers.len(), 4, "order and duplicates kept");
        assert_eq!(req.headers[1].0, "x-raw");

        // The unknown key is ignored by the typed view but kept in `raw`.
        assert_eq!(
            req.raw_get("future_key").and_then(|v| v.as_str()),
            Some("ignored")
        );
        assert!(matches!(req.raw_get("body"), Some(Value::Binary(_))));
        assert_eq!(req.raw.as_map().unwrap().len(), 19);

        let resp = &records[1];
        assert!(resp.is_response());
        assert_eq!(resp.status, Some(201));
        assert_eq!(resp.details.as_deref(), Some("via_upstream"));
        assert_eq!(resp.duration_us, Some(1234));
        assert_eq!(resp.body, [0, 1]);
        assert_eq!(resp.body_size, 10);
        assert!(resp.body_truncated);
        assert!(!resp.complete);
        assert_eq!(resp.method, None);
        assert_eq!(
            resp.trailer("grpc-status"),
            Some(&HeaderValue::Str("0".into()))
        );
    }

    #[test]
    fn accepts_signed_encodings_of_unsigned_values() {
        // Writers may encode a small non-negative number as a signed int.
        let mut m = response_without("s", &["ts_ns", "status"]);
        enc::write_sint(m.key("ts_ns"), 5).unwrap();
        enc::write_i64(m.key("status"), 200).unwrap();
        let records = decode_batch(&m.bytes()).unwrap();
        assert_eq!(records[0].ts_ns, 5);
        assert_eq!(records[0].status, Some(200));
    }

    #[test]
    fn unknown_kind_is_kept_without_kind_specific_keys() {
        let body = common("audit", "x")
            .headers("headers", &[])
            .headers("trailers", &[])
            .bin("body", b"")
            .uint("body_size", 0)
            .bool("body_truncated", false)
            .bool("complete", true)
            .bytes();
        let records = decode_batch(&body).unwrap();
        assert_eq!(records[0].kind, Kind::Other("audit".into()));
        assert_eq!(records[0].kind.as_str(), "audit");
    }

    #[test]
    fn empty_body_is_an_error() {
        assert_eq!(only_error(b"").kind, DecodeErrorKind::Empty);
    }

    #[test]
    fn truncated_record_is_reported_with_its_position() {
        let mut body = request("a").bytes();
        let first_len = body.len();
        let second = response("a").bytes();
        body.extend_from_slice(&second[..second.len() - 3]);
        let err = only_error(&body);
        assert_eq!(err.index, 1);
        assert_eq!(err.offset, first_len);
        assert!(matches!(err.kind, DecodeErrorKind::Msgpack(_)), "{err}");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for body in [
            &b"\xc1"[..],
            b"\xdf\xff\xff\xff\xff",
            b"\x92\x01\x02",
            b"\x81\x01\x02",
        ] {
            assert!(decode_batch(body).is_err());
        }
        assert_eq!(only_error(b"\x92\x01\x02").kind, DecodeErrorKind::NotAMap);
        assert_eq!(
            only_error(b"\x81\x01\x02").kind,
            DecodeErrorKind::NonStringKey
        );
    }

    #[test]
    fn missing_keys_are_reported() {
        let body = request_without("a", &["path"]).bytes();
        assert_eq!(only_error(&body).kind, DecodeErrorKind::Missing("path"));
        let body = response_without("a", &["duration_us"]).bytes();
        assert_eq!(
            only_error(&body).kind,
            DecodeErrorKind::Missing("duration_us")
        );
        let body = response_without("a", &["body_truncated"]).bytes();
        assert_eq!(
            only_error(&body).kind,
            DecodeErrorKind::Missing("body_truncated")
        );
    }

    fn wrong_type_key(body: &[u8]) -> String {
        match only_error(body).kind {
            DecodeErrorKind::WrongType { key, .. } => key,
            other => panic!("expected WrongType, got {other:?}"),
        }
    }

    #[test]
    fn wrong_types_are_reported() {
        // `body` must be bin, even when the bytes are text.
        let body = request_without("a", &["body"]).str("body", "text").bytes();
        assert_eq!(
            only_error(&body).kind,
            DecodeErrorKind::WrongType {
                key: "body".into(),
                expected: "bin"
            }
        );

        // The error names the record it is in.
        let mut body = request("a").bytes();
        response_without("a", &["status"])
            .uint("status", 70_000)
            .write_to(&mut body);
        let err = only_error(&body);
        assert_eq!(err.index, 1);
        assert!(err.to_string().contains("`status`"), "{err}");

        let body = request_without("a", &["tls"]).str("tls", "no").bytes();
        assert_eq!(wrong_type_key(&body), "tls");
        let body = request_without("a", &["headers"])
            .uint("headers", 1)
            .bytes();
        assert_eq!(wrong_type_key(&body), "headers");

        // A header pair that is not [str, str|bin].
        let mut m = request_without("a", &["headers"]);
        let buf = m.key("headers");
        enc::write_array_len(buf, 1).unwrap();
        enc::write_array_len(buf, 2).unwrap();
        enc::write_str(buf, "x").unwrap();
        enc::write_uint(buf, 1).unwrap();
        assert_eq!(wrong_type_key(&m.bytes()), "headers");
    }

    /// `redact_at_node` written with `rmp`: `[[place, index, start, end], …]`.
    fn marks(m: Map, list: &[(&str, u64, u64, u64)]) -> Map {
        let mut m = m;
        let buf = m.key("redact_at_node");
        enc::write_array_len(buf, list.len() as u32).unwrap();
        for (place, index, start, end) in list {
            enc::write_array_len(buf, 4).unwrap();
            enc::write_str(buf, place).unwrap();
            enc::write_uint(buf, *index).unwrap();
            enc::write_uint(buf, *start).unwrap();
            enc::write_uint(buf, *end).unwrap();
        }
        m
    }

    #[test]
    fn values_marked_for_the_node_are_read_from_their_places() {
        let body = marks(
            request("m"),
            &[
                ("path", 0, 4, 9),
                ("headers", 1, 0, 2),
                ("body", 0, 1, 4),
                ("headers", 3, 0, 1),
            ],
        )
        .bytes();
        let records = decode_batch(&body).unwrap();
        assert_eq!(
            records[0].redact_at_node(),
            [
                b"items".to_vec(),
                b"\xff\xfe".to_vec(),
                b"\"a\"".to_vec(),
                b"2".to_vec()
            ]
        );
        let body = marks(response("m"), &[("trailers", 0, 0, 1)]).bytes();
        assert_eq!(
            decode_batch(&body).unwrap()[0].redact_at_node(),
            [b"0".to_vec()]
        );
        // A record without the key has none (and an older filter never writes it).
        assert!(decode_batch(&request("n").bytes()).unwrap()[0]
            .redact_at_node()
            .is_empty());
        // A mark pointing at nothing refuses the record.
        for bad in [
            ("path", 0, 4, 99),
            ("path", 1, 0, 1),
            ("headers", 4, 0, 1),
            ("body", 0, 5, 4),
            ("cookies", 0, 0, 1),
            ("trailers", 0, 0, 1),
        ] {
            let body = marks(request("x"), &[bad]).bytes();
            assert!(
                matches!(
                    only_error(&body).kind,
                    DecodeErrorKind::WrongType { ref key, .. } if key == "redact_at_node"
                ),
                "{bad:?}"
            );
        }
        let body = request("x").str("redact_at_node", "headers").bytes();
        assert!(only_error(&body).to_string().contains("redact_at_node"));
    }

    #[test]
    fn other_versions_and_duplicate_keys_are_refused() {
        let body = Map::default().uint("v", 2).str("kind", "request").bytes();
        assert_eq!(
            only_error(&body).kind,
            DecodeErrorKind::UnsupportedVersion(2)
        );
        let body = request("a").str("id", "again").bytes();
        assert_eq!(
            only_error(&body).kind,
            DecodeErrorKind::DuplicateKey("id".into())
        );
    }
}
