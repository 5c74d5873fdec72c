//! The thin Proxy-Wasm layer: wires Envoy's callbacks to the host-free core.

mod context;
mod extproc_stream;
mod host;
mod metrics;
mod root;
mod stream;
#[cfg(feature = "test-trap")]
mod trap;
mod worker;

use proxy_wasm::types::LogLevel;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    // After set_log_level, which installs the SDK's own hook: a panic (which aborts the VM)
    // must leave one critical line that says it was ours.
    std::panic::set_hook(Box::new(|info| {
        let _ = proxy_wasm::hostcalls::log(LogLevel::Critical, &format!("oob-mirror: panic: {info}"));
    }));
    proxy_wasm::set_root_context(|_| Box::new(root::MirrorRoot::default()));
}}
