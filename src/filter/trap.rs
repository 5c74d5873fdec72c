//! Test-only (`--features test-trap`, never in the release module): a request carrying
//! `x-oob-mirror-trap: 1` traps the VM, so the end-to-end tests can show what Envoy's
//! `failure_policy` does when the module fails at run time.

use proxy_wasm::hostcalls;
use proxy_wasm::types::MapType;

pub const TRAP_HEADER: &str = "x-oob-mirror-trap";

pub fn trap_if_asked() {
    let value = hostcalls::get_map_value(MapType::HttpRequestHeaders, TRAP_HEADER)
        .ok()
        .flatten();
    if value.as_deref() == Some("1") {
        // The `unreachable` instruction: a real wasm trap, with no Rust panic hook in between.
        core::arch::wasm32::unreachable();
    }
}
