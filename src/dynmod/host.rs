//! Small, panic-free reads from Envoy through the ABI: headers, body chunks, attributes, the
//! clock and the log. Each takes the filter pointer Envoy passed to the current event hook,
//! which is valid for the hook's duration (the header's promise); nothing here keeps one.

use super::abi::{self, EnvoyBuffer, EnvoyHttpHeader, HttpFilterEnvoyPtr, ModuleBuffer};
use crate::connection_facts::ConnectionFacts;
use crate::record::HeaderList;
use std::time::{SystemTime, UNIX_EPOCH};

/// Header maps up to this many fields (most) are read into a stack buffer; larger ones into
/// the heap. Small, as the buffer is zeroed on every read.
const STACK_HEADERS: usize = 24;

/// Room for the pseudo-headers of a request (`:method`, `:scheme`, `:authority`, `:path`,
/// `:protocol`) or a response (`:status`).
const PSEUDO_HEADERS: usize = 5;

/// Bytes as text, lossy only where they are not UTF-8: `String::from_utf8_lossy`'s result,
/// without its chunk-by-chunk scan for the common case.
pub fn text(bytes: &[u8]) -> String {
    // Header names and most values are ASCII, which `is_ascii` tells a word at a time.
    if bytes.is_ascii() {
        // SAFETY: ASCII bytes are valid UTF-8.
        return unsafe { String::from_utf8_unchecked(bytes.to_vec()) };
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_owned(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// A filter pointer of the current event hook.
#[derive(Clone, Copy)]
pub struct Filter(pub HttpFilterEnvoyPtr);

impl Filter {
    /// A header or trailer map (`abi::REQUEST_HEADER`, ...), every field in Envoy's order with
    /// its raw value bytes; empty when there is none.
    pub fn headers(self, header_type: u32) -> HeaderList {
        let mut all = HeaderList::new();
        self.read_headers(header_type, |count, bytes, name, value| {
            if all.is_empty() {
                all = HeaderList::with_capacity(count, bytes);
            }
            all.push_bytes(name, value);
        });
        all
    }

    /// A header map split as [`HeaderList::split_pseudo`] splits it (pseudo-headers, then the
    /// others, each in Envoy's order), without building the whole list first.
    pub fn split_headers(self, header_type: u32) -> (HeaderList, HeaderList) {
        let mut pseudo = HeaderList::with_capacity(PSEUDO_HEADERS, 128);
        let mut regular = HeaderList::new();
        self.read_headers(header_type, |count, bytes, name, value| {
            if name.first() == Some(&b':') {
                pseudo.push_bytes(name, value);
            } else {
                if regular.is_empty() {
                    regular = HeaderList::with_capacity(count, bytes);
                }
                regular.push_bytes(name, value);
            }
        });
        (pseudo, regular)
    }

    /// Calls `each` with the map's size, the bytes of all its names and values, and every
    /// field of it, borrowed from Envoy for the call.
    fn read_headers(self, header_type: u32, mut each: impl FnMut(usize, usize, &[u8], &[u8])) {
        // SAFETY: the filter pointer is live during the hook.
        let count = unsafe {
            abi::envoy_dynamic_module_callback_http_get_headers_size(self.0, header_type)
        };
        if count == 0 {
            return;
        }
        // Most maps fit on the stack: one allocation fewer per map.
        let mut on_stack = [EnvoyHttpHeader::EMPTY; STACK_HEADERS];
        let mut on_heap = Vec::new();
        let raw: &mut [EnvoyHttpHeader] = match on_stack.get_mut(..count) {
            Some(raw) => raw,
            None => {
                on_heap.resize(count, EnvoyHttpHeader::EMPTY);
                &mut on_heap
            }
        };
        // SAFETY: `raw` holds `count` entries, as many as Envoy just said it has.
        let ok = unsafe {
            abi::envoy_dynamic_module_callback_http_get_headers(
                self.0,
                header_type,
                raw.as_mut_ptr(),
            )
        };
        if !ok {
            return;
        }
        let bytes = raw.iter().fold(0usize, |sum, h| {
            sum.saturating_add(h.key_length)
                .saturating_add(h.value_length)
        });
        for h in raw.iter() {
            // SAFETY: Envoy filled each entry with buffers valid until the hook returns; they
            // are copied into the list by `each`.
            let (key, value) = unsafe { h.as_slices() };
            each(count, bytes, key, value);
        }
    }

    /// The size of the body chunk this hook received (`abi::RECEIVED_REQUEST_BODY` or
    /// `abi::RECEIVED_RESPONSE_BODY`).
    pub fn body_size(self, body_type: u32) -> usize {
        // SAFETY: the filter pointer is live during the hook.
        unsafe { abi::envoy_dynamic_module_callback_http_get_body_size(self.0, body_type) }
    }

    /// Up to `max` bytes from the start of the chunk this hook received, copied straight from
    /// Envoy's slices (no intermediate buffer).
    pub fn body_prefix(self, body_type: u32, max: usize) -> Vec<u8> {
        if max == 0 {
            return Vec::new();
        }
        // SAFETY: the filter pointer is live during the hook.
        let slices = unsafe {
            abi::envoy_dynamic_module_callback_http_get_body_chunks_size(self.0, body_type)
        };
        if slices == 0 {
            return Vec::new();
        }
        let mut raw = vec![EnvoyBuffer::EMPTY; slices];
        // SAFETY: `raw` holds as many entries as Envoy said the body has slices.
        let ok = unsafe {
            abi::envoy_dynamic_module_callback_http_get_body_chunks(
                self.0,
                body_type,
                raw.as_mut_ptr(),
            )
        };
        if !ok {
            return Vec::new();
        }
        let mut out = Vec::with_capacity(max);
        for slice in &raw {
            // SAFETY: Envoy's slices stay valid until the hook returns; copied here.
            let bytes = unsafe { slice.as_slice() };
            let room = max - out.len();
            out.extend_from_slice(bytes.get(..room.min(bytes.len())).unwrap_or_default());
            if out.len() == max {
                break;
            }
        }
        out
    }

    /// A string attribute; `None` when Envoy has none.
    pub fn attribute_text(self, id: u32) -> Option<String> {
        let mut out = EnvoyBuffer::EMPTY;
        // SAFETY: the filter pointer is live; `out` is a valid place for the result.
        let ok = unsafe {
            abi::envoy_dynamic_module_callback_http_filter_get_attribute_string(
                self.0, id, &mut out,
            )
        };
        if !ok {
            return None;
        }
        // SAFETY: the attribute's bytes are valid until the hook returns; copied here.
        Some(text(unsafe { out.as_slice() }))
    }

    /// An integer attribute; `None` when Envoy has none.
    pub fn attribute_int(self, id: u32) -> Option<u64> {
        let mut out = 0u64;
        // SAFETY: the filter pointer is live; `out` is a valid place for the result.
        let ok = unsafe {
            abi::envoy_dynamic_module_callback_http_filter_get_attribute_int(self.0, id, &mut out)
        };
        ok.then_some(out)
    }

    /// The downstream connection's facts, read from Envoy (four attribute reads): the same
    /// values the Proxy-Wasm attributes `request.protocol`, `source.address`,
    /// `destination.address` and `connection.tls_version` give.
    pub fn connection_facts(self) -> ConnectionFacts {
        ConnectionFacts {
            protocol: self
                .attribute_text(abi::ATTR_REQUEST_PROTOCOL)
                .unwrap_or_default(),
            source: self
                .attribute_text(abi::ATTR_SOURCE_ADDRESS)
                .unwrap_or_default(),
            destination: self
                .attribute_text(abi::ATTR_DESTINATION_ADDRESS)
                .unwrap_or_default(),
            tls: self
                .attribute_text(abi::ATTR_CONNECTION_TLS_VERSION)
                .is_some_and(|v| !v.is_empty()),
        }
    }

    /// Envoy's id of the downstream connection (unique for the process's lifetime).
    pub fn connection_id(self) -> Option<u64> {
        self.attribute_int(abi::ATTR_CONNECTION_ID)
    }

    /// The worker thread this stream runs on.
    pub fn worker_index(self) -> usize {
        // SAFETY: the filter pointer is live during the hook.
        let index =
            unsafe { abi::envoy_dynamic_module_callback_http_filter_get_worker_index(self.0) };
        usize::try_from(index).unwrap_or(0)
    }
}

/// Unix time in nanoseconds (0 if the clock is before 1970).
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

pub fn ns_to_ms(ns: u64) -> u64 {
    ns / 1_000_000
}

pub fn now_ms() -> u64 {
    ns_to_ms(now_ns())
}

/// One line in Envoy's log (the `dynamic_modules` logger).
pub fn log(level: u32, line: &str) {
    // SAFETY: no pointer but the message, valid for the call.
    unsafe {
        if abi::envoy_dynamic_module_callback_log_enabled(level) {
            abi::envoy_dynamic_module_callback_log(level, ModuleBuffer::of(line.as_bytes()));
        }
    }
}

/// A seed drawn from std's RandomState (the OS's random source) and the clock.
pub fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(now_ns());
    hasher.finish()
}
