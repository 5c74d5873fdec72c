//! Small, panic-free reads from the host: time and Envoy attributes.

use crate::connection_facts::ConnectionFacts;
use crate::record::HeaderList;
use proxy_wasm::hostcalls;
use proxy_wasm::types::{MapType, Status};
use std::ptr::null_mut;
use std::time::UNIX_EPOCH;

/// Unix time in nanoseconds from the host clock (0 if the host cannot tell).
pub fn now_ns() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

pub fn ns_to_ms(ns: u64) -> u64 {
    ns / 1_000_000
}

pub fn now_ms() -> u64 {
    ns_to_ms(now_ns())
}

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(
        map_type: MapType,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> Status;
}

/// A header or trailer map, every field in Envoy's order with its raw value bytes; empty when
/// the host has none. Read by hand, not by the SDK's `get_map_bytes`: that copies every name
/// and value into an allocation of its own (about 5.8 k instructions for a 9-header map), and
/// panics when the host answers anything but Ok.
pub fn header_map(map: MapType) -> HeaderList {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a buffer it allocated through the module's
    // `proxy_on_memory_allocate` (a boxed slice of exactly `size` bytes, the SDK's allocator),
    // whose ownership passes to us; this is what the SDK's own getter does with it.
    let bytes = unsafe {
        match proxy_get_header_map_pairs(map, &mut data, &mut size) {
            Status::Ok if !data.is_null() => Vec::from_raw_parts(data, size, size),
            _ => return HeaderList::new(),
        }
    };
    HeaderList::from_proxy_wasm_map(bytes)
}

fn property(path: &[&str]) -> Option<Vec<u8>> {
    hostcalls::get_property(path.to_vec()).ok().flatten()
}

/// A string attribute such as `source.address`; empty when absent.
pub fn property_text(path: &[&str]) -> String {
    property(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

/// An integer attribute such as `response.code` (Envoy encodes int64 as 8 little-endian bytes).
pub fn property_int(path: &[&str]) -> Option<i64> {
    let bytes: [u8; 8] = property(path)?.try_into().ok()?;
    Some(i64::from_le_bytes(bytes))
}

/// Whether the downstream connection is TLS: Envoy sets `connection.tls_version` only then.
fn downstream_tls() -> bool {
    property(&["connection", "tls_version"]).is_some_and(|v| !v.is_empty())
}

/// The downstream connection's facts, read from the host (four attribute reads).
pub fn read_connection_facts() -> ConnectionFacts {
    ConnectionFacts {
        protocol: property_text(&["request", "protocol"]),
        source: property_text(&["source", "address"]),
        destination: property_text(&["destination", "address"]),
        tls: downstream_tls(),
    }
}

/// Envoy's id of the downstream connection (unique for the process's lifetime).
pub fn connection_id() -> Option<u64> {
    property_int(&["connection", "id"]).and_then(|id| u64::try_from(id).ok())
}

/// Per-VM seed for generated ids: std's RandomState draws from the host's random source.
pub fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(now_ns());
    hasher.finish()
}

/// Bytes of this VM's linear memory: what Envoy holds for it. Wasm memory never shrinks, so
/// this is the VM's high-water mark.
pub fn linear_memory_bytes() -> u64 {
    const WASM_PAGE_BYTES: u64 = 65536;
    (core::arch::wasm32::memory_size::<0>() as u64).saturating_mul(WASM_PAGE_BYTES)
}
