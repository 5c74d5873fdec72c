//! The typed form of one record of the wire format (docs/wire-format.md).
//!
//! Fields common to both kinds are plain values; fields that exist for one
//! kind only are `Option`s, `None` on the other kind. The decoded msgpack map
//! is kept in [`Record::raw`] so tests can check exact keys and msgpack types,
//! which the typed fields deliberately hide.

use std::fmt;

/// `kind` of a record. Unknown kinds are kept, not refused, so that a later
/// writer adding a kind does not break this reader.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Kind {
    Request,
    Response,
    Other(String),
}

impl Kind {
    pub fn as_str(&self) -> &str {
        match self {
            Kind::Request => "request",
            Kind::Response => "response",
            Kind::Other(s) => s,
        }
    }
}

impl From<&str> for Kind {
    fn from(s: &str) -> Self {
        match s {
            "request" => Kind::Request,
            "response" => Kind::Response,
            other => Kind::Other(other.to_owned()),
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A header or trailer value. Which msgpack type carried it is part of the
/// format (str when valid UTF-8, bin otherwise), so it is kept.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HeaderValue {
    Str(String),
    Bin(Vec<u8>),
}

impl HeaderValue {
    /// The value's bytes, whichever type carried them.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            HeaderValue::Str(s) => s.as_bytes(),
            HeaderValue::Bin(b) => b,
        }
    }

    /// The value when it was sent as a msgpack str.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            HeaderValue::Str(s) => Some(s),
            HeaderValue::Bin(_) => None,
        }
    }

    pub fn is_bin(&self) -> bool {
        matches!(self, HeaderValue::Bin(_))
    }
}

/// `[name, value]` pairs in arrival order, duplicates kept.
pub type HeaderList = Vec<(String, HeaderValue)>;

/// One decoded record. See docs/wire-format.md for the meaning of each field.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    // Common to both kinds.
    pub v: u64,
    pub kind: Kind,
    pub id: String,
    pub ts_ns: u64,
    pub headers: HeaderList,
    pub trailers: HeaderList,
    pub body: Vec<u8>,
    pub body_size: u64,
    pub body_truncated: bool,
    pub complete: bool,

    // Request only.
    pub method: Option<String>,
    pub scheme: Option<String>,
    pub authority: Option<String>,
    pub path: Option<String>,
    pub protocol: Option<String>,
    pub source: Option<String>,
    pub destination: Option<String>,
    pub tls: Option<bool>,

    // Response only.
    pub status: Option<u16>,
    pub details: Option<String>,
    pub duration_us: Option<u64>,

    /// The record's msgpack map exactly as received, unknown keys included.
    pub raw: rmpv::Value,
}

impl Record {
    pub fn is_request(&self) -> bool {
        self.kind == Kind::Request
    }

    pub fn is_response(&self) -> bool {
        self.kind == Kind::Response
    }

    /// First header with this name (names are compared case-insensitively,
    /// although the format sends them in lower case).
    pub fn header(&self, name: &str) -> Option<&HeaderValue> {
        first(&self.headers, name)
    }

    /// Every header with this name, in arrival order.
    pub fn headers_named(&self, name: &str) -> Vec<&HeaderValue> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
            .collect()
    }

    /// First trailer with this name.
    pub fn trailer(&self, name: &str) -> Option<&HeaderValue> {
        first(&self.trailers, name)
    }

    /// The captured body when it is valid UTF-8.
    pub fn body_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.body).ok()
    }

    /// The values of redacted names the filter left in clear for the node to redact
    /// (`redact_at_node`, docs/wire-format.md), in their order; checked when decoded.
    pub fn redact_at_node(&self) -> Vec<Vec<u8>> {
        crate::intake::wire::redact_at_node(self).unwrap_or_default()
    }

    /// The raw msgpack value of `key`, to assert exact types in tests.
    pub fn raw_get(&self, key: &str) -> Option<&rmpv::Value> {
        self.raw
            .as_map()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }
}

fn first<'a>(list: &'a HeaderList, name: &str) -> Option<&'a HeaderValue> {
    list.iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}
