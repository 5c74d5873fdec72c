//! What is captured of one exchange, in the two records the wire format defines.

use crate::body::BodyCapture;

pub use crate::headers::HeaderList;

/// The request half of an exchange (`kind = "request"`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub id: String,
    pub ts_ns: u64,
    pub method: String,
    pub scheme: String,
    pub authority: String,
    pub path: String,
    pub protocol: String,
    pub source: String,
    pub destination: String,
    pub tls: bool,
    pub headers: HeaderList,
    pub trailers: HeaderList,
    pub body: BodyCapture,
    pub complete: bool,
}

/// The response half of an exchange (`kind = "response"`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ResponseRecord {
    pub id: String,
    pub ts_ns: u64,
    pub status: u32,
    pub details: String,
    pub headers: HeaderList,
    pub trailers: HeaderList,
    pub body: BodyCapture,
    pub complete: bool,
    pub duration_us: u64,
}
