//! What the analysis sees: one exchange, built from a request record and its
//! response record (paired by `id`), or from an ext_proc stream.
//!
//! [`Pairer`] holds records until their other half arrives, with bounded
//! memory: at most `max_pending` records wait, each at most `timeout_ms`. A
//! request whose response does not come in time is analysed alone; a
//! response whose request never came is dropped. Both are counted.

use std::collections::{HashMap, VecDeque};
use std::io::Read;

use crate::intake::record::{HeaderList, Record};

pub type Headers = Vec<(Vec<u8>, Vec<u8>)>;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exchange {
    pub id: String,
    /// The request's `x-request-id`, as the client or Envoy set it (the `id` is the
    /// filter's own, so a client cannot forge it; this ties a report to the proxy's logs).
    pub request_id: Option<String>,
    pub ts_ns: u64,
    pub source: Option<String>,
    pub destination: Option<String>,
    pub method: String,
    pub authority: Option<String>,
    /// Path with the query string, as received.
    pub path: String,
    /// `"HTTP/1.1"`, `"HTTP/2"`…; `None` when unknown.
    pub protocol: Option<String>,
    pub request_headers: Headers,
    pub request_body: Vec<u8>,
    pub response: Option<ResponsePart>,
    /// Values of redacted names the filter sent in clear, marked (`redact_at_node`), for the
    /// analysis to see. They never leave memory: [`crate::redact::Sealer`] replaces them by
    /// their markers after the analysis, and forgets them.
    pub redact_at_node: Vec<Vec<u8>>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResponsePart {
    pub status: u16,
    pub headers: Headers,
    pub body: Vec<u8>,
}

impl Exchange {
    /// The version as ModSecurity wants it (`"1.1"`, `"2.0"`).
    pub fn http_version(&self) -> &str {
        match self.protocol.as_deref() {
            Some("HTTP/1.0") => "1.0",
            Some("HTTP/2") | Some("HTTP/2.0") => "2.0",
            Some("HTTP/3") => "3.0",
            _ => "1.1",
        }
    }

    /// An exchange from its request record, and its response record if any.
    pub fn from_records(request: &Record, response: Option<&Record>) -> Exchange {
        Exchange {
            id: request.id.clone(),
            request_id: request
                .header("x-request-id")
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
            ts_ns: request.ts_ns,
            source: request.source.clone(),
            destination: request.destination.clone(),
            method: request.method.clone().unwrap_or_default(),
            authority: request.authority.clone(),
            path: request.path.clone().unwrap_or_default(),
            protocol: request.protocol.clone(),
            request_headers: headers(&request.headers),
            request_body: request.body.clone(),
            response: response.map(|r| ResponsePart {
                status: r.status.unwrap_or(0),
                headers: headers(&r.headers),
                body: r.body.clone(),
            }),
            redact_at_node: std::iter::once(request)
                .chain(response)
                .flat_map(Record::redact_at_node)
                .collect(),
        }
    }

    /// Decompresses the bodies sent with a `content-encoding` this node
    /// reads, keeping at most `max` bytes of each. Returns how many bodies
    /// were cut at `max`.
    pub fn decompress(&mut self, max: usize) -> usize {
        let mut cut = usize::from(decode_body(
            &self.request_headers,
            &mut self.request_body,
            max,
        ));
        if let Some(r) = &mut self.response {
            cut += usize::from(decode_body(&r.headers, &mut r.body, max));
        }
        cut
    }
}

fn headers(list: &HeaderList) -> Headers {
    list.iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}

/// Replaces `body` by its decoded form when `content-encoding` is gzip,
/// deflate or br. A body the filter truncated decodes as far as it goes.
/// `true` when the output reached `max` and was cut there.
fn decode_body(headers: &Headers, body: &mut Vec<u8>, max: usize) -> bool {
    if body.is_empty() {
        return false;
    }
    let Some(encoding) = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(b"content-encoding"))
        .map(|(_, v)| String::from_utf8_lossy(v).trim().to_ascii_lowercase())
    else {
        return false;
    };
    let input = body.as_slice();
    let reader: Box<dyn Read + '_> = match encoding.as_str() {
        "gzip" | "x-gzip" => Box::new(flate2::read::MultiGzDecoder::new(input)),
        // "deflate" is zlib-wrapped by the RFC, raw in some servers.
        "deflate" if input.first().is_some_and(|b| b & 0x0f == 8) => {
            Box::new(flate2::read::ZlibDecoder::new(input))
        }
        "deflate" => Box::new(flate2::read::DeflateDecoder::new(input)),
        "br" => Box::new(brotli_decompressor::Decompressor::new(input, 4096)),
        _ => return false,
    };
    let mut out = Vec::new();
    // One byte past the bound tells "exactly max" from "more than max".
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    let mut limited = reader.take(limit);
    // A truncated or corrupt stream keeps what decoded before the error.
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match limited.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(chunk.get(..n).unwrap_or_default()),
        }
    }
    drop(limited);
    if out.is_empty() {
        return false;
    }
    let cut = out.len() > max;
    out.truncate(max);
    *body = out;
    cut
}

/// Why an exchange left the pairer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pairing {
    /// Request and response.
    Paired,
    /// The response did not come within the timeout.
    TimedOut,
    /// Pushed out by newer records (`max_pending`), or by a second request
    /// with the same id.
    Evicted,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PairCounts {
    pub paired: u64,
    /// Requests analysed without their response (timed out or evicted).
    pub unpaired_requests: u64,
    /// Responses dropped because their request never came.
    pub unpaired_responses: u64,
}

struct Pending {
    record: Record,
    deadline_ms: u64,
    seq: u64,
}

pub struct Pairer {
    max_pending: usize,
    timeout_ms: u64,
    pending: HashMap<String, Pending>,
    /// Arrival order, for expiry and eviction; entries whose seq no longer
    /// matches the map are stale and skipped.
    order: VecDeque<(String, u64)>,
    seq: u64,
    pub counts: PairCounts,
}

impl Pairer {
    pub fn new(max_pending: usize, timeout_ms: u64) -> Pairer {
        Pairer {
            max_pending: max_pending.max(1),
            timeout_ms,
            pending: HashMap::new(),
            order: VecDeque::new(),
            seq: 0,
            counts: PairCounts::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Takes one record; returns the exchanges ready for analysis.
    pub fn add(&mut self, record: Record, now_ms: u64) -> Vec<(Exchange, Pairing)> {
        let mut ready = Vec::new();
        if !record.is_request() && !record.is_response() {
            return ready;
        }
        if let Some(other) = self.pending.remove(&record.id) {
            match (other.record.is_request(), record.is_request()) {
                (true, false) => {
                    self.counts.paired += 1;
                    ready.push((
                        Exchange::from_records(&other.record, Some(&record)),
                        Pairing::Paired,
                    ));
                    return ready;
                }
                (false, true) => {
                    self.counts.paired += 1;
                    ready.push((
                        Exchange::from_records(&record, Some(&other.record)),
                        Pairing::Paired,
                    ));
                    return ready;
                }
                // Same kind twice (a client-chosen x-request-id reused):
                // the older one leaves alone, the newer one waits.
                _ => self.leave(other.record, Pairing::Evicted, &mut ready),
            }
        }
        while self.pending.len() >= self.max_pending {
            let Some((id, seq)) = self.order.pop_front() else {
                break;
            };
            if self.pending.get(&id).is_some_and(|p| p.seq == seq) {
                if let Some(p) = self.pending.remove(&id) {
                    self.leave(p.record, Pairing::Evicted, &mut ready);
                }
            }
        }
        self.seq += 1;
        self.order.push_back((record.id.clone(), self.seq));
        self.pending.insert(
            record.id.clone(),
            Pending {
                record,
                deadline_ms: now_ms.saturating_add(self.timeout_ms),
                seq: self.seq,
            },
        );
        ready
    }

    /// Lets out every record whose time is up.
    pub fn expire(&mut self, now_ms: u64) -> Vec<(Exchange, Pairing)> {
        let mut ready = Vec::new();
        while let Some((id, seq)) = self.order.front() {
            let live = self.pending.get(id).filter(|p| p.seq == *seq);
            match live {
                Some(p) if p.deadline_ms > now_ms => break,
                Some(_) => {
                    if let Some(p) = self.pending.remove(id) {
                        self.leave(p.record, Pairing::TimedOut, &mut ready);
                    }
                }
                None => {}
            }
            self.order.pop_front();
        }
        ready
    }

    fn leave(&mut self, record: Record, why: Pairing, ready: &mut Vec<(Exchange, Pairing)>) {
        if record.is_request() {
            self.counts.unpaired_requests += 1;
            ready.push((Exchange::from_records(&record, None), why));
        } else {
            self.counts.unpaired_responses += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intake::record::Kind;
    use std::io::Write;

    fn record(kind: Kind, id: &str) -> Record {
        Record {
            v: 1,
            kind: kind.clone(),
            id: id.into(),
            ts_ns: 0,
            headers: vec![],
            trailers: vec![],
            body: vec![],
            body_size: 0,
            body_truncated: false,
            complete: true,
            method: (kind == Kind::Request).then(|| "GET".into()),
            scheme: None,
            authority: None,
            path: (kind == Kind::Request).then(|| "/".into()),
            protocol: None,
            source: None,
            destination: None,
            tls: None,
            status: (kind == Kind::Response).then_some(200),
            details: None,
            duration_us: None,
            raw: rmpv::Value::Nil,
        }
    }

    #[test]
    fn pairs_in_either_order() {
        let mut p = Pairer::new(10, 1000);
        assert!(p.add(record(Kind::Request, "a"), 0).is_empty());
        let out = p.add(record(Kind::Response, "a"), 5);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1, Pairing::Paired);
        assert_eq!(out[0].0.response.as_ref().unwrap().status, 200);
        assert!(p.add(record(Kind::Response, "b"), 0).is_empty());
        let out = p.add(record(Kind::Request, "b"), 0);
        assert_eq!(out[0].0.method, "GET");
        assert!(out[0].0.response.is_some());
        assert!(p.is_empty());
        assert_eq!(p.counts.paired, 2);
    }

    #[test]
    fn timeout_lets_a_request_go_alone_and_drops_a_response() {
        let mut p = Pairer::new(10, 100);
        p.add(record(Kind::Request, "a"), 0);
        p.add(record(Kind::Response, "b"), 50);
        assert!(p.expire(99).is_empty());
        let out = p.expire(100);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1, Pairing::TimedOut);
        assert!(out[0].0.response.is_none());
        assert!(p.expire(149).is_empty());
        assert!(p.expire(150).is_empty());
        assert!(p.is_empty());
        assert_eq!(
            p.counts,
            PairCounts {
                paired: 0,
                unpaired_requests: 1,
                unpaired_responses: 1
            }
        );
    }

    #[test]
    fn memory_is_bounded() {
        let mut p = Pairer::new(3, 1_000_000);
        let mut out = Vec::new();
        for i in 0..10 {
            out.extend(p.add(record(Kind::Request, &i.to_string()), i));
        }
        assert_eq!(p.len(), 3);
        assert_eq!(out.len(), 7);
        assert!(out.iter().all(|(_, why)| *why == Pairing::Evicted));
        // Oldest first.
        assert_eq!(out[0].0.id, "0");
        // The order queue does not grow without bound either.
        assert!(p.order.len() <= 3);
    }

    #[test]
    fn a_reused_id_sends_the_older_request_alone() {
        let mut p = Pairer::new(10, 1000);
        p.add(record(Kind::Request, "x"), 0);
        let out = p.add(record(Kind::Request, "x"), 1);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1, Pairing::Evicted);
        let out = p.add(record(Kind::Response, "x"), 2);
        assert_eq!(out[0].1, Pairing::Paired);
        // The stale order entry of the first "x" is skipped, not expired twice.
        assert!(p.expire(5000).is_empty());
    }

    fn with_encoding(enc: &str, body: Vec<u8>) -> Exchange {
        Exchange {
            request_headers: vec![(b"content-encoding".to_vec(), enc.as_bytes().to_vec())],
            request_body: body,
            ..Exchange::default()
        }
    }

    #[test]
    fn decompresses_gzip_deflate_br_within_a_bound() {
        let plain = b"q=1' or '1'='1 ".repeat(100);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&plain).unwrap();
        let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        zlib.write_all(&plain).unwrap();
        let mut raw =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        raw.write_all(&plain).unwrap();
        let mut br = Vec::new();
        {
            let mut w = brotli_decompressor_test_encoder(&mut br);
            w.write_all(&plain).unwrap();
        }
        for (enc, body) in [
            ("gzip", gz.finish().unwrap()),
            ("deflate", zlib.finish().unwrap()),
            ("deflate", raw.finish().unwrap()),
            ("br", br),
        ] {
            let mut ex = with_encoding(enc, body);
            assert_eq!(ex.decompress(1 << 20), 0, "{enc}");
            assert_eq!(ex.request_body, plain, "{enc}");
            let mut ex = with_encoding(enc, ex.request_body.clone());
            // Not compressed after all: left as it is.
            assert_eq!(ex.decompress(10), 0);
            assert_eq!(ex.request_body, plain);
        }
        // A bomb stops at the bound.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&vec![b'a'; 50 << 20]).unwrap();
        let mut ex = with_encoding("gzip", gz.finish().unwrap());
        assert_eq!(ex.decompress(1 << 20), 1);
        assert_eq!(ex.request_body.len(), 1 << 20);
        // A truncated stream keeps what it decoded.
        let numbers: Vec<u8> = (0..20_000)
            .flat_map(|i| format!("{i},").into_bytes())
            .collect();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&numbers).unwrap();
        let mut full = gz.finish().unwrap();
        full.truncate(full.len() / 2);
        let mut ex = with_encoding("gzip", full);
        assert_eq!(ex.decompress(1 << 20), 0);
        assert!(ex.request_body.len() > 1000, "{}", ex.request_body.len());
        assert!(numbers.starts_with(&ex.request_body));
    }

    fn brotli_decompressor_test_encoder(
        out: &mut Vec<u8>,
    ) -> brotli::CompressorWriter<&mut Vec<u8>> {
        brotli::CompressorWriter::new(out, 4096, 5, 22)
    }
}
