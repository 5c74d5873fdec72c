//! Test-only (`--features test-trap`, never in the release module): a request carrying
//! `x-oob-mirror-trap: 1` traps the VM, so the end-to-end tests can show what Envoy's
//! `failure_policy` does when the module fails at run time.

use proxy_wasm::hostcalls;
use proxy_wasm::types::MapType;

pub const TRAP_HEADER: &str = "x-oob-mirror-trap";

pub fn trap_if_asked() {
    // The bytes getter: the `String` one panics on a non-UTF-8 value, which is not the trap
    // the tests ask for.
    let value = hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, TRAP_HEADER)
        .ok()
        .flatten();
    if value.as_deref() == Some(b"1".as_slice()) {
        // The `unreachable` instruction: a real wasm trap, with no Rust panic hook in between.
        core::arch::wasm32::unreachable();
    }
}
