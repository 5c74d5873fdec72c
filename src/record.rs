//! What is captured of one exchange, in the two records the wire format defines.

use crate::body::BodyCapture;
use crate::connection_facts::ConnectionFacts;

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

impl RequestRecord {
    /// The record as the request's headers arrive: its pseudo-headers become fields, its
    /// connection's facts beside them; trailers and the rest of the body come later.
    pub fn from_headers(
        id: String,
        ts_ns: u64,
        pseudo: &HeaderList,
        headers: HeaderList,
        connection: ConnectionFacts,
        body: BodyCapture,
    ) -> Self {
        let text = |name| pseudo.text(name).unwrap_or_default();
        RequestRecord {
            id,
            ts_ns,
            method: text(":method"),
            scheme: text(":scheme"),
            authority: text(":authority"),
            path: text(":path"),
            protocol: connection.protocol,
            source: connection.source,
            destination: connection.destination,
            tls: connection.tls,
            headers,
            trailers: HeaderList::new(),
            body,
            complete: false,
        }
    }
}

impl ResponseRecord {
    /// Whether Envoy's `response.code_details` says anything: only when the answer is not a
    /// whole one below 400 (those are `via_upstream`, or a route's own direct response). A host
    /// read costs about 12 k instructions in the Proxy-Wasm build, so most exchanges skip it.
    pub fn wants_details(&self) -> bool {
        self.status == 0 || self.status >= 400 || !self.complete
    }
}

/// The `:status` of a response's pseudo-headers; 0 when it is missing or not a number.
pub fn status_of(pseudo: &HeaderList) -> u32 {
    pseudo
        .get(":status")
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn a_request_record_from_its_headers() {
        let pseudo = HeaderList::from(vec![
            (":method", "GET"),
            (":scheme", "https"),
            (":authority", "api.example.com"),
            (":path", "/a?b"),
        ]);
        let connection = ConnectionFacts {
            protocol: "HTTP/2".into(),
            source: "203.0.113.7:40000".into(),
            destination: "10.0.0.1:8443".into(),
            tls: true,
        };
        let headers = HeaderList::from(vec![("accept", "*/*")]);
        let r = RequestRecord::from_headers(
            "id-1".into(),
            7,
            &pseudo,
            headers.clone(),
            connection,
            BodyCapture::new(16),
        );
        assert_eq!(
            (r.id.as_str(), r.ts_ns, r.method.as_str(), r.scheme.as_str()),
            ("id-1", 7, "GET", "https")
        );
        assert_eq!(
            (r.authority.as_str(), r.path.as_str()),
            ("api.example.com", "/a?b")
        );
        assert_eq!(
            (
                r.protocol.as_str(),
                r.source.as_str(),
                r.destination.as_str(),
                r.tls
            ),
            ("HTTP/2", "203.0.113.7:40000", "10.0.0.1:8443", true)
        );
        assert_eq!(r.headers, headers);
        assert!(r.trailers.is_empty() && !r.complete);
        let bare = RequestRecord::from_headers(
            String::new(),
            0,
            &HeaderList::new(),
            HeaderList::new(),
            ConnectionFacts::default(),
            BodyCapture::new(0),
        );
        assert_eq!((bare.method.as_str(), bare.path.as_str()), ("", ""));
    }

    #[test]
    fn details_are_wanted_only_where_they_say_something() {
        let response = |status, complete| ResponseRecord {
            status,
            complete,
            ..ResponseRecord::default()
        };
        assert!(!response(200, true).wants_details());
        assert!(!response(399, true).wants_details());
        assert!(response(400, true).wants_details());
        assert!(response(0, true).wants_details());
        assert!(response(200, false).wants_details());
    }

    #[test]
    fn status_from_pseudo_headers() {
        assert_eq!(status_of(&HeaderList::from(vec![(":status", "503")])), 503);
        assert_eq!(status_of(&HeaderList::from(vec![(":status", "x")])), 0);
        assert_eq!(status_of(&HeaderList::new()), 0);
    }
}
