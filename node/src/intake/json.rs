//! JSON rendering of records, one object per record, for the CLI (`make
//! demo`) and for people reading test failures.
//!
//! Bytes are shown as text when they are valid UTF-8 and as base64
//! otherwise, so the output stays readable without losing anything:
//! - the body is `"body": "..."` or `"body_b64": "..."`;
//! - a header value is `"..."` or `{"b64": "..."}` (its msgpack type was bin).
//!
//! Keys come in the order of docs/wire-format.md; kind-specific keys are left
//! out when the record does not carry them.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use crate::intake::record::{HeaderValue, Record};

impl Serialize for HeaderValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            HeaderValue::Str(s) => serializer.serialize_str(s),
            HeaderValue::Bin(b) => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry("b64", &B64.encode(b))?;
                map.end()
            }
        }
    }
}

/// The JSON shape of a record. A struct rather than a `serde_json::Map` so
/// the key order is the format's order, not alphabetical.
#[derive(Serialize)]
struct JsonRecord<'a> {
    v: u64,
    kind: &'a str,
    id: &'a str,
    ts_ns: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    method: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scheme: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    authority: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    protocol: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    destination: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<&'a str>,
    headers: Vec<(&'a str, &'a HeaderValue)>,
    trailers: Vec<(&'a str, &'a HeaderValue)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body_b64: Option<String>,
    body_size: u64,
    body_truncated: bool,
    complete: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_us: Option<u64>,
}

impl Serialize for Record {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let body_text = self.body_str();
        JsonRecord {
            v: self.v,
            kind: self.kind.as_str(),
            id: &self.id,
            ts_ns: self.ts_ns,
            method: self.method.as_deref(),
            scheme: self.scheme.as_deref(),
            authority: self.authority.as_deref(),
            path: self.path.as_deref(),
            protocol: self.protocol.as_deref(),
            source: self.source.as_deref(),
            destination: self.destination.as_deref(),
            tls: self.tls,
            status: self.status,
            details: self.details.as_deref(),
            headers: pairs(&self.headers),
            trailers: pairs(&self.trailers),
            body: body_text,
            body_b64: body_text.is_none().then(|| B64.encode(&self.body)),
            body_size: self.body_size,
            body_truncated: self.body_truncated,
            complete: self.complete,
            duration_us: self.duration_us,
        }
        .serialize(serializer)
    }
}

fn pairs(list: &[(String, HeaderValue)]) -> Vec<(&str, &HeaderValue)> {
    list.iter().map(|(n, v)| (n.as_str(), v)).collect()
}

/// The record as a JSON value.
pub fn to_json(record: &Record) -> serde_json::Result<serde_json::Value> {
    serde_json::to_value(record)
}

/// The record as one line of JSON, without the trailing newline.
pub fn to_json_line(record: &Record) -> serde_json::Result<String> {
    serde_json::to_string(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intake::record::Kind;

    fn record(kind: Kind, body: &[u8]) -> Record {
        Record {
            v: 1,
            kind,
            id: "id-1".into(),
            ts_ns: 42,
            headers: vec![
                ("a".into(), HeaderValue::Str("x".into())),
                ("b".into(), HeaderValue::Bin(vec![0xff])),
            ],
            trailers: vec![],
            body: body.to_vec(),
            body_size: body.len() as u64,
            body_truncated: false,
            complete: true,
            method: None,
            scheme: None,
            authority: None,
            path: None,
            protocol: None,
            source: None,
            destination: None,
            tls: None,
            status: None,
            details: None,
            duration_us: None,
            raw: rmpv::Value::Nil,
        }
    }

    #[test]
    fn text_body_and_header_kinds() {
        let mut r = record(Kind::Request, b"hello");
        r.method = Some("GET".into());
        r.tls = Some(true);
        let line = to_json_line(&r).unwrap();
        assert!(
            line.starts_with(
                r#"{"v":1,"kind":"request","id":"id-1","ts_ns":42,"method":"GET","tls":true,"#
            ),
            "{line}"
        );
        let json = to_json(&r).unwrap();
        assert_eq!(json["body"], "hello");
        assert!(json.get("body_b64").is_none());
        assert_eq!(json["headers"][0], serde_json::json!(["a", "x"]));
        assert_eq!(
            json["headers"][1],
            serde_json::json!(["b", {"b64": "/w=="}])
        );
        assert_eq!(json["trailers"], serde_json::json!([]));
        // Keys of the other kind are left out, not null.
        assert!(json.get("status").is_none());
        assert!(!line.contains('\n'));
    }

    #[test]
    fn binary_body_is_base64() {
        let mut r = record(Kind::Response, &[0, 0xff, 1]);
        r.status = Some(503);
        r.details = Some("no_healthy_upstream".into());
        r.duration_us = Some(9);
        let json = to_json(&r).unwrap();
        assert_eq!(json["body_b64"], "AP8B");
        assert!(json.get("body").is_none());
        assert_eq!(json["status"], 503);
        assert_eq!(json["details"], "no_healthy_upstream");
        assert_eq!(json["duration_us"], 9);
        assert!(json.get("method").is_none());
    }
}
