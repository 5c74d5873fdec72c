//! `envoy.service.ext_proc.v3.ProcessingRequest` in protobuf, written by hand (the module has no
//! room for a protobuf runtime). Only what Envoy's own ext_proc client sends in observability
//! mode: headers as `raw_value`, body chunks, an empty `metadata_context`, attributes under the
//! filter's name, and `observability_mode: true` on every message.

use super::attributes::Value;
use crate::record::HeaderList;

/// The namespace Envoy's ext_proc files its attributes under.
pub const ATTRIBUTES_NAMESPACE: &str = "envoy.filters.http.ext_proc";

/// The namespace of oob-mirror's own attribute: a node that does not know it reads past it.
pub const MARKS_NAMESPACE: &str = "oob-mirror";

/// The attribute listing the values of redacted names left in clear in this message.
pub const MARKS_ATTRIBUTE: &str = "redact_at_node";

/// Which half of the exchange a message belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Request,
    Response,
}

/// One message's payload.
#[derive(Debug, Clone, Copy)]
pub enum Part<'a> {
    /// Every header in the order Envoy holds them, pseudo-headers included.
    Headers {
        headers: &'a HeaderList,
        end_of_stream: bool,
    },
    Body {
        body: &'a [u8],
        end_of_stream: bool,
    },
}

// Field numbers of ProcessingRequest.
const REQUEST_HEADERS: u32 = 2;
const RESPONSE_HEADERS: u32 = 3;
const REQUEST_BODY: u32 = 4;
const RESPONSE_BODY: u32 = 5;
const METADATA_CONTEXT: u32 = 8;
const ATTRIBUTES: u32 = 9;
const OBSERVABILITY_MODE: u32 = 10;

const VARINT: u32 = 0;
const LEN: u32 = 2;

fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_key(out: &mut Vec<u8>, field: u32, wire: u32) {
    put_varint(out, u64::from(field << 3 | wire));
}

/// Bytes a length-delimited field of `len` bytes takes (fields here are all below 16: one key
/// byte).
fn len_field(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

fn put_len(out: &mut Vec<u8>, field: u32, len: usize) {
    put_key(out, field, LEN);
    put_varint(out, len as u64);
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_len(out, field, bytes.len());
    out.extend_from_slice(bytes);
}

/// proto3 leaves a false bool out.
fn put_true(out: &mut Vec<u8>, field: u32, value: bool) {
    if value {
        put_key(out, field, VARINT);
        out.push(1);
    }
}

/// `HeaderValue{key, raw_value}`.
fn header_value_len(name: &[u8], value: &[u8]) -> usize {
    len_field(name.len())
        + if value.is_empty() {
            0
        } else {
            len_field(value.len())
        }
}

fn header_map_len(headers: &HeaderList) -> usize {
    headers
        .iter_bytes()
        .map(|(name, value)| len_field(header_value_len(name, value)))
        .sum()
}

/// `HttpHeaders{headers: HeaderMap, end_of_stream}`.
fn http_headers_len(headers: &HeaderList, end_of_stream: bool) -> usize {
    len_field(header_map_len(headers)) + if end_of_stream { 2 } else { 0 }
}

fn put_http_headers(out: &mut Vec<u8>, headers: &HeaderList, end_of_stream: bool) {
    put_len(out, 1, header_map_len(headers));
    for (name, value) in headers.iter_bytes() {
        put_len(out, 1, header_value_len(name, value));
        put_bytes(out, 1, name);
        if !value.is_empty() {
            put_bytes(out, 3, value);
        }
    }
    put_true(out, 3, end_of_stream);
}

/// `HttpBody{body, end_of_stream}`.
fn http_body_len(body: &[u8], end_of_stream: bool) -> usize {
    (if body.is_empty() {
        0
    } else {
        len_field(body.len())
    }) + if end_of_stream { 2 } else { 0 }
}

fn put_http_body(out: &mut Vec<u8>, body: &[u8], end_of_stream: bool) {
    if !body.is_empty() {
        put_bytes(out, 1, body);
    }
    put_true(out, 2, end_of_stream);
}

/// `google.protobuf.Value` with `string_value` (3) or `bool_value` (4).
fn value_len(value: &Value) -> usize {
    match value {
        Value::Text(text) => len_field(text.len()),
        Value::Bool(_) => 2,
    }
}

fn put_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Text(text) => put_bytes(out, 3, text.as_bytes()),
        Value::Bool(flag) => {
            put_key(out, 4, VARINT);
            out.push(u8::from(*flag));
        }
    }
}

/// A map entry `{key: 1, value: 2}` of `Struct.fields`.
fn field_entry_len(name: &str, value: &Value) -> usize {
    len_field(name.len()) + len_field(value_len(value))
}

fn struct_len(fields: &[(String, Value)]) -> usize {
    fields
        .iter()
        .map(|(name, value)| len_field(field_entry_len(name, value)))
        .sum()
}

/// `attributes` entry: `{ATTRIBUTES_NAMESPACE: Struct}`.
fn attributes_entry_len(fields: &[(String, Value)]) -> usize {
    len_field(ATTRIBUTES_NAMESPACE.len()) + len_field(struct_len(fields))
}

/// `attributes` entry: `{namespace: Struct}`.
fn put_attributes(out: &mut Vec<u8>, namespace: &str, fields: &[(String, Value)]) {
    put_len(
        out,
        ATTRIBUTES,
        len_field(namespace.len()) + len_field(struct_len(fields)),
    );
    put_bytes(out, 1, namespace.as_bytes());
    put_len(out, 2, struct_len(fields));
    for (name, value) in fields {
        put_len(out, 1, field_entry_len(name, value));
        put_bytes(out, 1, name.as_bytes());
        put_len(out, 2, value_len(value));
        put_value(out, value);
    }
}

/// One `ProcessingRequest`. `attributes`, when given, go under [`ATTRIBUTES_NAMESPACE`] (Envoy
/// sends them with the first message of each direction, and only when some are configured).
pub fn processing_request(
    direction: Direction,
    part: Part<'_>,
    attributes: Option<&[(String, Value)]>,
) -> Vec<u8> {
    processing_request_marked(direction, part, attributes, &[])
}

/// `index:start-end,…`: the spans of the values left in clear, by header index in a headers
/// message (pseudo-headers counted) and as offsets in the chunk (index 0) in a body message.
pub fn marks_text(marks: &[(u32, (u32, u32))]) -> String {
    let mut out = String::with_capacity(marks.len() * 12);
    for (i, (index, (start, end))) in marks.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!("{index}:{start}-{end}"));
    }
    out
}

/// [`processing_request`], and when `marks` is not empty, where this message holds values of
/// redacted names left in clear for the node to redact: a second `attributes` entry,
/// `{MARKS_NAMESPACE: {MARKS_ATTRIBUTE: marks_text(marks)}}`. Without marks the message is
/// the one Envoy's own client sends.
pub fn processing_request_marked(
    direction: Direction,
    part: Part<'_>,
    attributes: Option<&[(String, Value)]>,
    marks: &[(u32, (u32, u32))],
) -> Vec<u8> {
    let (field, len) = match (direction, part) {
        (
            Direction::Request,
            Part::Headers {
                headers,
                end_of_stream,
            },
        ) => (REQUEST_HEADERS, http_headers_len(headers, end_of_stream)),
        (
            Direction::Response,
            Part::Headers {
                headers,
                end_of_stream,
            },
        ) => (RESPONSE_HEADERS, http_headers_len(headers, end_of_stream)),
        (
            Direction::Request,
            Part::Body {
                body,
                end_of_stream,
            },
        ) => (REQUEST_BODY, http_body_len(body, end_of_stream)),
        (
            Direction::Response,
            Part::Body {
                body,
                end_of_stream,
            },
        ) => (RESPONSE_BODY, http_body_len(body, end_of_stream)),
    };
    let marks =
        (!marks.is_empty()).then(|| [(MARKS_ATTRIBUTE.to_owned(), Value::Text(marks_text(marks)))]);
    let attributes_len = attributes.map_or(0, |a| len_field(attributes_entry_len(a)))
        + marks.as_ref().map_or(0, |m| {
            len_field(len_field(MARKS_NAMESPACE.len()) + len_field(struct_len(m)))
        });
    let mut out = Vec::with_capacity(len_field(len) + 2 + attributes_len + 2);
    put_len(&mut out, field, len);
    match part {
        Part::Headers {
            headers,
            end_of_stream,
        } => put_http_headers(&mut out, headers, end_of_stream),
        Part::Body {
            body,
            end_of_stream,
        } => put_http_body(&mut out, body, end_of_stream),
    }
    // Envoy always sets `metadata_context`, empty unless metadata forwarding is configured.
    put_len(&mut out, METADATA_CONTEXT, 0);
    if let Some(fields) = attributes {
        put_attributes(&mut out, ATTRIBUTES_NAMESPACE, fields);
    }
    if let Some(fields) = &marks {
        put_attributes(&mut out, MARKS_NAMESPACE, fields);
    }
    put_true(&mut out, OBSERVABILITY_MODE, true);
    out
}

/// `envoy.config.core.v3.GrpcService{envoy_grpc: {cluster_name}}`: what Envoy's gRPC stream call
/// takes to name the node's cluster (a bare cluster name could happen to parse as this message).
pub fn grpc_service(cluster: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(len_field(len_field(cluster.len())));
    put_len(&mut out, 1, len_field(cluster.len()));
    put_bytes(&mut out, 1, cluster.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn h(name: &str, value: &[u8]) -> (String, Vec<u8>) {
        (name.to_owned(), value.to_vec())
    }

    #[test]
    fn request_headers_with_attributes() {
        let headers = HeaderList::from(vec![h(":method", b"GET"), h("x", b"\xff")]);
        let attrs = [("source.address".to_owned(), Value::Text("a".to_owned()))];
        let bytes = processing_request(
            Direction::Request,
            Part::Headers {
                headers: &headers,
                end_of_stream: true,
            },
            Some(&attrs),
        );
        let mut want = vec![0x12, 28, 0x0a, 24];
        want.extend([0x0a, 14, 0x0a, 7]);
        want.extend(b":method");
        want.extend([0x1a, 3]);
        want.extend(b"GET");
        want.extend([0x0a, 6, 0x0a, 1, b'x', 0x1a, 1, 0xff]);
        want.extend([0x18, 1]);
        // attributes: entry{key, Struct{fields: entry{key, Value{string_value}}}}
        let ns = ATTRIBUTES_NAMESPACE.as_bytes();
        let entry = [
            &[0x0a, 14][..],
            b"source.address",
            &[0x12, 3, 0x1a, 1, b'a'],
        ]
        .concat();
        let strukt = [&[0x0a, entry.len() as u8][..], &entry].concat();
        let attr = [
            &[0x0a, ns.len() as u8][..],
            ns,
            &[0x12, strukt.len() as u8],
            &strukt,
        ]
        .concat();
        want.extend([0x42, 0]);
        want.extend([0x4a, attr.len() as u8]);
        want.extend(attr);
        want.extend([0x50, 1]);
        assert_eq!(bytes, want);
    }

    #[test]
    fn bodies_and_empty_values() {
        let bytes = processing_request(
            Direction::Response,
            Part::Body {
                body: b"hi",
                end_of_stream: false,
            },
            None,
        );
        assert_eq!(bytes, [0x2a, 4, 0x0a, 2, b'h', b'i', 0x42, 0, 0x50, 1]);
        let last = processing_request(
            Direction::Request,
            Part::Body {
                body: b"",
                end_of_stream: true,
            },
            None,
        );
        assert_eq!(last, [0x22, 2, 0x10, 1, 0x42, 0, 0x50, 1]);
        let empty_value = HeaderList::from(vec![h("x-empty", b"")]);
        let headers = processing_request(
            Direction::Response,
            Part::Headers {
                headers: &empty_value,
                end_of_stream: false,
            },
            None,
        );
        assert_eq!(headers[..6], [0x1a, 13, 0x0a, 11, 0x0a, 9]);
        assert_eq!(headers.len(), 2 + 13 + 2 + 2);
    }

    #[test]
    fn long_fields_take_multi_byte_lengths() {
        let body = vec![7u8; 300];
        let bytes = processing_request(
            Direction::Request,
            Part::Body {
                body: &body,
                end_of_stream: false,
            },
            None,
        );
        // HttpBody is 1 + 2 + 300 bytes: its length is a two-byte varint.
        assert_eq!(bytes[..5], [0x22, 0xaf, 0x02, 0x0a, 0xac]);
        assert_eq!(bytes.len(), 1 + 2 + 303 + 2 + 2);
    }

    #[test]
    fn marks_are_a_second_attributes_entry_and_only_when_there_are_some() {
        let part = Part::Body {
            body: b"q=<x>",
            end_of_stream: true,
        };
        let plain = processing_request(Direction::Request, part, None);
        assert_eq!(
            processing_request_marked(Direction::Request, part, None, &[]),
            plain
        );
        let marked =
            processing_request_marked(Direction::Request, part, None, &[(0, (2, 5)), (3, (0, 9))]);
        assert_eq!(marks_text(&[(0, (2, 5)), (3, (0, 9))]), "0:2-5,3:0-9");
        // HttpBody, metadata, then the entry, then observability_mode: the entry sits where
        // Envoy puts attributes.
        let text = b"0:2-5,3:0-9";
        let value = [&[0x1a, text.len() as u8][..], text].concat();
        let field = [
            &[0x0a, MARKS_ATTRIBUTE.len() as u8][..],
            MARKS_ATTRIBUTE.as_bytes(),
            &[0x12, value.len() as u8],
            &value,
        ]
        .concat();
        let strukt = [&[0x0a, field.len() as u8][..], &field].concat();
        let entry = [
            &[0x0a, MARKS_NAMESPACE.len() as u8][..],
            MARKS_NAMESPACE.as_bytes(),
            &[0x12, strukt.len() as u8],
            &strukt,
        ]
        .concat();
        let mut want = plain[..plain.len() - 2].to_vec();
        want.extend([0x4a, entry.len() as u8]);
        want.extend(entry);
        want.extend([0x50, 1]);
        assert_eq!(marked, want);
        // With Envoy's attributes too: both entries, Envoy's first.
        let attrs = [("request.id".to_owned(), Value::Text("r".to_owned()))];
        let both =
            processing_request_marked(Direction::Request, part, Some(&attrs), &[(0, (2, 5))]);
        let envoy_only = processing_request(Direction::Request, part, Some(&attrs));
        assert_eq!(
            both[..envoy_only.len() - 2],
            envoy_only[..envoy_only.len() - 2]
        );
    }

    #[test]
    fn grpc_service_names_the_cluster() {
        assert_eq!(grpc_service("n"), [0x0a, 3, 0x0a, 1, b'n']);
    }
}
