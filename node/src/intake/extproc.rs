//! ext_proc input: one `envoy.service.ext_proc.v3.ExternalProcessor/Process`
//! stream (from oob-mirror in ext_proc mode, or Envoy's own ext_proc filter in
//! observability mode) assembled into one [`Exchange`].
//!
//! The stream's request body is a sequence of gRPC frames, each one
//! `ProcessingRequest`, decoded by prost into `envoy-types`' generated messages.

use crate::pairing::{Exchange, Headers, ResponsePart};
use envoy_types::pb::envoy::config::core::v3::HeaderMap;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request;
use envoy_types::pb::envoy::service::ext_proc::v3::ProcessingRequest;
use envoy_types::pb::google::protobuf::{value::Kind, Struct};
use prost::Message;

pub const PROCESS_PATH: &str = "/envoy.service.ext_proc.v3.ExternalProcessor/Process";

/// Largest gRPC message accepted (Envoy's own client sends a body chunk per
/// message, far below this).
const MAX_MESSAGE: usize = 64 << 20;

/// An exchange being read from its stream.
pub struct ExtProcStream {
    buf: Vec<u8>,
    exchange: Exchange,
    seen_request: bool,
    ended: bool,
    /// Body bytes kept per direction; the rest is read and dropped.
    max_body: usize,
    pub messages: u64,
}

impl ExtProcStream {
    pub fn new(max_body: usize) -> ExtProcStream {
        ExtProcStream {
            buf: Vec::new(),
            exchange: Exchange::default(),
            seen_request: false,
            ended: false,
            max_body,
            messages: 0,
        }
    }

    /// Takes the next bytes of the stream. `Ok(true)` once the response has
    /// ended (the node may close the stream).
    pub fn feed(&mut self, data: &[u8]) -> Result<bool, String> {
        self.buf.extend_from_slice(data);
        let mut at = 0;
        while let Some(&[compressed, l0, l1, l2, l3]) = self.buf.get(at..at + 5) {
            let len = u32::from_be_bytes([l0, l1, l2, l3]) as usize;
            if compressed != 0 {
                return Err("compressed gRPC message (no grpc-encoding is negotiated)".into());
            }
            if len > MAX_MESSAGE {
                return Err(format!("gRPC message of {len} bytes"));
            }
            let Some(msg) = self.buf.get(at + 5..at + 5 + len) else {
                break;
            };
            let msg = msg.to_vec();
            at += 5 + len;
            self.messages += 1;
            self.apply(&msg)?;
        }
        self.buf.drain(..at);
        Ok(self.ended)
    }

    /// The exchange, once the stream is over; `None` when no request headers
    /// came (nothing to analyse).
    pub fn finish(self) -> Option<Exchange> {
        self.seen_request.then_some(self.exchange)
    }

    fn apply(&mut self, msg: &[u8]) -> Result<(), String> {
        let msg = ProcessingRequest::decode(msg).map_err(|e| format!("ProcessingRequest: {e}"))?;
        // oob-mirror's values to redact are in this message's part: its headers or body chunk.
        let mut marks: Option<String> = None;
        for (namespace, fields) in &msg.attributes {
            if let Some(text) = self.attributes(namespace, fields) {
                marks = Some(text);
            }
        }
        let (part, chunk) = match msg.request {
            Some(Request::RequestHeaders(h)) => {
                self.request_headers(headers(h.headers));
                (2, None)
            }
            Some(Request::ResponseHeaders(h)) => {
                let resp = self
                    .exchange
                    .response
                    .get_or_insert_with(ResponsePart::default);
                let list = headers(h.headers);
                for (name, value) in &list {
                    if name.as_slice() == b":status" {
                        resp.status = String::from_utf8_lossy(value).parse().unwrap_or(0);
                    }
                }
                resp.headers = list;
                self.ended |= h.end_of_stream;
                (3, None)
            }
            Some(Request::RequestBody(b)) => {
                let max = self.max_body;
                append(&mut self.exchange.request_body, &b.body, max);
                (4, Some(b.body))
            }
            Some(Request::ResponseBody(b)) => {
                let max = self.max_body;
                let resp = self
                    .exchange
                    .response
                    .get_or_insert_with(ResponsePart::default);
                append(&mut resp.body, &b.body, max);
                self.ended |= b.end_of_stream;
                (5, Some(b.body))
            }
            Some(Request::ResponseTrailers(_)) => {
                self.ended = true;
                (7, None)
            }
            Some(Request::RequestTrailers(_)) => (6, None),
            None => (0, None),
        };
        if let Some(text) = marks {
            self.marks(part, chunk.as_deref(), &text)?;
        }
        Ok(())
    }

    /// oob-mirror's `redact_at_node` attribute (`index:start-end,…`): each value it points at,
    /// in this message's headers (by index) or body chunk, is kept for the sealer. A span
    /// pointing at nothing makes the stream unreadable: it would leave a value unsealed.
    fn marks(&mut self, part: u64, chunk: Option<&[u8]>, text: &str) -> Result<(), String> {
        let ex = &mut self.exchange;
        let headers = match part {
            2 => Some(&ex.request_headers),
            3 => ex.response.as_ref().map(|r| &r.headers),
            _ => None,
        };
        for mark in text.split(',') {
            let bad = || format!("redact_at_node: bad span `{mark}`");
            let (index, span) = mark.split_once(':').ok_or_else(bad)?;
            let (start, end) = span.split_once('-').ok_or_else(bad)?;
            let number = |t: &str| t.parse::<usize>().map_err(|_| bad());
            let (index, start, end) = (number(index)?, number(start)?, number(end)?);
            let whole = match (headers, chunk) {
                (Some(list), _) => list.get(index).map(|(_, v)| v.as_slice()),
                (None, Some(body)) if index == 0 => Some(body),
                _ => None,
            };
            let value = whole.and_then(|w| w.get(start..end)).ok_or_else(bad)?;
            ex.redact_at_node.push(value.to_vec());
        }
        Ok(())
    }

    fn request_headers(&mut self, headers: Headers) {
        self.seen_request = true;
        let ex = &mut self.exchange;
        // Until a `request.time` attribute says better: when it arrived here.
        if ex.ts_ns == 0 {
            ex.ts_ns = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        }
        for (name, value) in &headers {
            let text = || String::from_utf8_lossy(value).into_owned();
            match name.as_slice() {
                b":method" => ex.method = text(),
                b":path" => ex.path = text(),
                b":authority" => ex.authority = Some(text()),
                b"x-request-id" => {
                    ex.request_id = Some(text());
                    if ex.id.is_empty() {
                        ex.id = text();
                    }
                }
                _ => {}
            }
        }
        ex.request_headers = headers;
    }

    /// One `attributes` entry (a namespace and its Struct). Envoy's attributes are read into
    /// the exchange; oob-mirror's `redact_at_node` (namespace `oob-mirror`) is returned.
    fn attributes(&mut self, namespace: &str, fields: &Struct) -> Option<String> {
        let mut marks = None;
        for (name, value) in &fields.fields {
            let Some(Kind::StringValue(text)) = &value.kind else {
                continue;
            };
            let ex = &mut self.exchange;
            if namespace == "oob-mirror" {
                if name == "redact_at_node" {
                    marks = Some(text.clone());
                }
                continue;
            }
            match name.as_str() {
                "source.address" => ex.source = Some(text.clone()),
                "destination.address" => ex.destination = Some(text.clone()),
                "request.protocol" => ex.protocol = Some(text.clone()),
                "request.id" => ex.id = text.clone(),
                "request.time" => {
                    if let Some(ns) = parse_rfc3339_utc(text) {
                        ex.ts_ns = ns;
                    }
                }
                _ => {}
            }
        }
        marks
    }
}

/// A header map's pairs in order, each value its `raw_value` (Envoy sends the bytes there)
/// or else its `value`.
fn headers(map: Option<HeaderMap>) -> Headers {
    map.map(|m| m.headers)
        .unwrap_or_default()
        .into_iter()
        .map(|h| {
            let value = if h.raw_value.is_empty() {
                h.value.into_bytes()
            } else {
                h.raw_value
            };
            (h.key.into_bytes(), value)
        })
        .collect()
}

/// `2026-12-01T20:52:11.214Z` (as Envoy prints `request.time`) → Unix ns.
/// Only UTC (`Z`) is read; anything else is `None`.
pub fn parse_rfc3339_utc(t: &str) -> Option<u64> {
    let t = t.strip_suffix('Z')?;
    let (date, time) = t.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut h = hms.splitn(3, ':').map(|p| p.parse::<u64>().ok());
    let (hh, mm, ss) = (h.next()??, h.next()??, h.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days since 1970-01-01 (Howard Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    let digits: String = frac.chars().take(9).collect();
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let nanos = if digits.is_empty() {
        0
    } else {
        digits.parse::<u64>().ok()? * 10u64.pow(9 - digits.len() as u32)
    };
    Some(((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1_000_000_000) + nanos)
}

fn append(body: &mut Vec<u8>, chunk: &[u8], max: usize) {
    let room = max.saturating_sub(body.len());
    body.extend_from_slice(chunk.get(..chunk.len().min(room)).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn bytes_field(out: &mut Vec<u8>, field: u64, b: &[u8]) {
        varint(out, field << 3 | 2);
        varint(out, b.len() as u64);
        out.extend_from_slice(b);
    }

    fn bool_field(out: &mut Vec<u8>, field: u64, v: bool) {
        varint(out, field << 3);
        varint(out, u64::from(v));
    }

    fn headers(pairs: &[(&str, &str)], eos: bool) -> Vec<u8> {
        let mut map = Vec::new();
        for (k, v) in pairs {
            let mut hv = Vec::new();
            bytes_field(&mut hv, 1, k.as_bytes());
            bytes_field(&mut hv, 3, v.as_bytes());
            bytes_field(&mut map, 1, &hv);
        }
        let mut out = Vec::new();
        bytes_field(&mut out, 1, &map);
        if eos {
            bool_field(&mut out, 3, true);
        }
        out
    }

    fn body(data: &[u8], eos: bool) -> Vec<u8> {
        let mut out = Vec::new();
        bytes_field(&mut out, 1, data);
        if eos {
            bool_field(&mut out, 2, true);
        }
        out
    }

    fn attributes(pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut st = Vec::new();
        for (k, v) in pairs {
            let mut value = Vec::new();
            bytes_field(&mut value, 3, v.as_bytes());
            let mut entry = Vec::new();
            bytes_field(&mut entry, 1, k.as_bytes());
            bytes_field(&mut entry, 2, &value);
            bytes_field(&mut st, 1, &entry);
        }
        let mut entry = Vec::new();
        bytes_field(&mut entry, 1, b"envoy.filters.http.ext_proc");
        bytes_field(&mut entry, 2, &st);
        entry
    }

    fn frame(msg: &[u8]) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        out.extend_from_slice(msg);
        out
    }

    fn message(field: u64, inner: &[u8], attrs: Option<&[u8]>) -> Vec<u8> {
        let mut m = Vec::new();
        bytes_field(&mut m, field, inner);
        if let Some(a) = attrs {
            bytes_field(&mut m, 9, a);
        }
        bool_field(&mut m, 10, true);
        frame(&m)
    }

    #[test]
    fn a_stream_becomes_one_exchange_whatever_the_byte_boundaries() {
        let attrs = attributes(&[
            ("source.address", "10.0.0.7:5555"),
            ("request.id", "rid-1"),
            ("request.time", "2026-12-01T20:52:11.214Z"),
        ]);
        let mut wire = Vec::new();
        wire.extend(message(
            2,
            &headers(
                &[
                    (":authority", "api"),
                    (":path", "/q?x=1"),
                    (":method", "POST"),
                    ("x-request-id", "hdr"),
                ],
                false,
            ),
            Some(&attrs),
        ));
        wire.extend(message(4, &body(b"{\"a\":", false), None));
        wire.extend(message(4, &body(b"1}", true), None));
        wire.extend(message(
            3,
            &headers(
                &[(":status", "201"), ("content-type", "application/json")],
                false,
            ),
            None,
        ));
        wire.extend(message(5, &body(b"ok", true), None));
        for step in [1, 3, 7, wire.len()] {
            let mut s = ExtProcStream::new(1 << 20);
            let mut ended = false;
            for (i, chunk) in wire.chunks(step).enumerate() {
                assert!(!ended, "ended before the last chunk ({i})");
                ended = s.feed(chunk).unwrap();
            }
            assert!(ended);
            assert_eq!(s.messages, 5);
            let ex = s.finish().unwrap();
            assert_eq!(ex.id, "rid-1");
            assert_eq!(ex.ts_ns, 1_796_158_331_214_000_000);
            assert_eq!(ex.source.as_deref(), Some("10.0.0.7:5555"));
            assert_eq!((ex.method.as_str(), ex.path.as_str()), ("POST", "/q?x=1"));
            assert_eq!(ex.authority.as_deref(), Some("api"));
            assert_eq!(ex.request_body, b"{\"a\":1}");
            let resp = ex.response.unwrap();
            assert_eq!(resp.status, 201);
            assert_eq!(resp.body, b"ok");
            assert_eq!(resp.headers.len(), 2);
        }
    }

    /// oob-mirror's attribute entry listing the values left in clear in a message.
    fn marks(text: &str) -> Vec<u8> {
        let mut value = Vec::new();
        bytes_field(&mut value, 3, text.as_bytes());
        let mut entry = Vec::new();
        bytes_field(&mut entry, 1, b"redact_at_node");
        bytes_field(&mut entry, 2, &value);
        let mut st = Vec::new();
        bytes_field(&mut st, 1, &entry);
        let mut out = Vec::new();
        bytes_field(&mut out, 1, b"oob-mirror");
        bytes_field(&mut out, 2, &st);
        out
    }

    #[test]
    fn values_marked_for_the_node_are_read_from_their_message() {
        let sqli = "' or 1=1--";
        let cookie = format!("s=redacted:0011223344556677; q={sqli}");
        let at = cookie.len() - sqli.len();
        let mut wire = Vec::new();
        wire.extend(message(
            2,
            &headers(&[(":path", "/q?token=%27x"), ("cookie", &cookie)], false),
            Some(&marks(&format!("0:9-13,1:{at}-{}", cookie.len()))),
        ));
        wire.extend(message(4, &body(b"{\"a\":1}", false), None));
        // A body message's spans are in its own chunk.
        wire.extend(message(
            4,
            &body(b"{\"token\":\"<x>\"}", true),
            Some(&marks("0:10-13")),
        ));
        wire.extend(message(3, &headers(&[(":status", "200")], true), None));
        let mut s = ExtProcStream::new(1 << 20);
        assert!(s.feed(&wire).unwrap());
        let ex = s.finish().unwrap();
        assert_eq!(
            ex.redact_at_node,
            [b"%27x".to_vec(), sqli.as_bytes().to_vec(), b"<x>".to_vec()]
        );
        // Envoy's attributes are still read beside it.
        assert_eq!(ex.path, "/q?token=%27x");
        for bad in ["2:0-1", "0:9-99", "x", "0:5-4", "1:a-b"] {
            let mut s = ExtProcStream::new(1 << 20);
            let msg = message(
                2,
                &headers(&[(":path", "/q?token=%27x")], false),
                Some(&marks(bad)),
            );
            assert!(s.feed(&msg).is_err(), "{bad}");
        }
    }

    #[test]
    fn timestamps() {
        assert_eq!(parse_rfc3339_utc("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_utc("2000-02-29T00:00:01.5Z"),
            Some(951_782_401_500_000_000)
        );
        assert_eq!(
            parse_rfc3339_utc("2026-12-01T20:52:11.123456789Z"),
            Some(1_796_158_331_123_456_789)
        );
        assert_eq!(parse_rfc3339_utc("2026-12-01T20:52:11+01:00"), None);
        assert_eq!(parse_rfc3339_utc("2026-13-01T20:52:11Z"), None);
        assert_eq!(parse_rfc3339_utc("garbage"), None);
    }

    #[test]
    fn bodies_are_bounded_and_garbage_is_an_error() {
        let mut s = ExtProcStream::new(4);
        s.feed(&message(2, &headers(&[(":method", "GET")], false), None))
            .unwrap();
        s.feed(&message(4, &body(b"abcdef", false), None)).unwrap();
        s.feed(&message(4, &body(b"gh", true), None)).unwrap();
        // Headers-only response ends the exchange.
        assert!(s
            .feed(&message(3, &headers(&[(":status", "204")], true), None))
            .unwrap());
        let ex = s.finish().unwrap();
        assert_eq!(ex.request_body, b"abcd");
        assert_eq!(ex.id, "");
        let mut s = ExtProcStream::new(4);
        assert!(s.feed(&frame(&[0x0a, 0x05, 0x01])).is_err());
        assert!(ExtProcStream::new(4).feed(&[1, 0, 0, 0, 1, 0]).is_err());
        assert!(ExtProcStream::new(4).finish().is_none());
    }
}
