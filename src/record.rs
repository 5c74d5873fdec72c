//! What is captured of one exchange, in the two records the wire format defines.

use crate::body::BodyCapture;

/// Header or trailer fields in arrival order, duplicates kept, values as raw bytes.
pub type HeaderList = Vec<(String, Vec<u8>)>;

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

/// Splits a header map as the host hands it over into the pseudo-headers the record keeps
/// as fields and the regular headers it keeps as a list.
pub fn split_pseudo_headers(all: Vec<(String, Vec<u8>)>) -> (HeaderList, HeaderList) {
    all.into_iter().partition(|(name, _)| name.starts_with(':'))
}

/// The value of a pseudo-header (or any header) as text; lossless for valid UTF-8.
pub fn header_text(headers: &[(String, Vec<u8>)], name: &str) -> Option<String> {
    headers
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| String::from_utf8_lossy(value).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn pair(name: &str, value: &[u8]) -> (String, Vec<u8>) {
        (name.to_owned(), value.to_vec())
    }

    #[test]
    fn pseudo_headers_are_split_off_in_order() {
        let (pseudo, regular) = split_pseudo_headers(vec![
            pair(":method", b"GET"),
            pair("x-dup", b"1"),
            pair(":path", b"/a?b"),
            pair("x-dup", b"2"),
        ]);
        assert_eq!(
            pseudo,
            vec![pair(":method", b"GET"), pair(":path", b"/a?b")]
        );
        assert_eq!(regular, vec![pair("x-dup", b"1"), pair("x-dup", b"2")]);
        assert_eq!(header_text(&pseudo, ":path").as_deref(), Some("/a?b"));
        assert_eq!(header_text(&pseudo, ":scheme"), None);
    }
}
