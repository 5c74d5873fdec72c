//! The thin Envoy dynamic-module layer (`envoy.filters.http.dynamic_modules`): the event hooks
//! Envoy calls, wired to the same host-free core the Proxy-Wasm build uses. Built only with the
//! `dynmod` feature on a native target (`make dynmod`: `dist/liboob_mirror.so`).
//!
//! No panic crosses into Envoy: every hook runs under `catch_unwind` (the `dynmod` profile
//! unwinds), and a hook that panicked leaves its stream passing traffic unmirrored. Every hook
//! returns `Continue`: the module never holds or changes client traffic.

mod abi;
mod alloc;
mod host;
mod module;
mod stream;

use abi::{
    EnvoyBuffer, EnvoyHttpHeader, HttpFilterConfigEnvoyPtr, HttpFilterConfigModulePtr,
    HttpFilterEnvoyPtr, HttpFilterModulePtr,
};
use host::{log, Filter};
use module::{reply_prefix, Module};
use std::ffi::c_char;
use std::panic::{catch_unwind, AssertUnwindSafe};
use stream::MirrorStream;

#[global_allocator]
static ALLOCATOR: alloc::Mimalloc = alloc::Mimalloc;

/// Runs `f`, turning a panic into `fallback` (the panic hook has logged it).
fn guarded<T>(fallback: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(fallback)
}

/// The per-stream state Envoy holds: `None` once a hook panicked (the stream then passes).
type StreamBox = Option<MirrorStream<'static>>;

/// Runs a stream hook with its state, dropping the state if the hook panics.
///
/// # Safety
/// As [`stream`].
unsafe fn with_stream(ptr: HttpFilterModulePtr, f: impl FnOnce(&mut MirrorStream<'static>)) {
    // SAFETY: the caller's contract.
    let Some(state) = (unsafe { ptr.cast::<StreamBox>().as_mut() }) else {
        return;
    };
    let Some(stream) = state.as_mut() else {
        return;
    };
    if catch_unwind(AssertUnwindSafe(|| f(stream))).is_err() {
        // Its budget goes back on drop; the exchange passes unmirrored from here on.
        *state = None;
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    // A panic anywhere leaves one line that says it was ours; the hook's guard then recovers.
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        // One line, the place first (std's own text puts the message on a line of its own).
        let place = info
            .location()
            .map_or_else(String::new, |l| format!(" at {}:{}", l.file(), l.line()));
        log(
            abi::LOG_ERROR,
            &format!("oob-mirror: panic{place}: {message}; this exchange passes unmirrored"),
        );
    }));
    abi::ABI_VERSION.as_ptr().cast()
}

/// # Safety
/// Envoy's contract: `config` is valid for the call; `envoy` lives until config_destroy.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    envoy: HttpFilterConfigEnvoyPtr,
    _name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> HttpFilterConfigModulePtr {
    // SAFETY: Envoy's buffer, valid for this call; parsed before it returns.
    let bytes = unsafe { config.as_slice() };
    // Never null, which would make Envoy refuse the configuration: a panic leaves a module that
    // passes traffic (the panic hook has said why).
    let module = guarded(None, || Some(Module::new(envoy, bytes))).unwrap_or_else(|| {
        log(
            abi::LOG_ERROR,
            "oob-mirror: the configuration could not be applied; traffic passes unmirrored",
        );
        Module::passing(envoy)
    });
    Box::into_raw(Box::new(module)) as HttpFilterConfigModulePtr
}

/// # Safety
/// `config` is a pointer from config_new, destroyed once.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(
    config: HttpFilterConfigModulePtr,
) {
    guarded((), || {
        if !config.is_null() {
            // SAFETY: made by Box::into_raw in config_new; Envoy destroys it once, after every
            // stream that used it.
            drop(unsafe { Box::from_raw(config as *mut Module) });
        }
    });
}

/// # Safety
/// `config` is a live pointer from config_new.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    _envoy: HttpFilterConfigEnvoyPtr,
    config: HttpFilterConfigModulePtr,
    _event_id: u64,
) {
    guarded((), || {
        // SAFETY: live until config_destroy, which Envoy never runs during this hook.
        if let Some(module) = unsafe { config.cast::<Module>().as_ref() } {
            module.tick();
        }
    });
}

/// # Safety
/// Envoy's contract: `headers` and `body` hold the given counts for this call.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
    _envoy: HttpFilterConfigEnvoyPtr,
    config: HttpFilterConfigModulePtr,
    callout_id: u64,
    result: u32,
    headers: *const EnvoyHttpHeader,
    headers_size: usize,
    body: *const EnvoyBuffer,
    body_size: usize,
) {
    guarded((), || {
        // SAFETY: live until config_destroy.
        let Some(module) = (unsafe { config.cast::<Module>().as_ref() }) else {
            return;
        };
        let headers: &[EnvoyHttpHeader] = if headers.is_null() || headers_size == 0 {
            &[]
        } else {
            // SAFETY: Envoy's array of `headers_size` entries, valid for this call.
            unsafe { std::slice::from_raw_parts(headers, headers_size) }
        };
        // Reading a status only from a whole answer, as the Proxy-Wasm build does.
        let status = (result == abi::CALLOUT_SUCCESS && !headers.is_empty()).then(|| {
            headers
                .iter()
                .find_map(|h| {
                    // SAFETY: header buffers are valid for this call.
                    let (k, v) = unsafe { h.as_slices() };
                    (k == b":status").then(|| std::str::from_utf8(v).ok()?.parse::<u32>().ok())
                })
                .flatten()
                .unwrap_or(0)
        });
        let chunks: Vec<&[u8]> = if body.is_null() || body_size == 0 {
            Vec::new()
        } else {
            // SAFETY: Envoy's array of `body_size` buffers, valid for this call.
            unsafe { std::slice::from_raw_parts(body, body_size) }
                .iter()
                // SAFETY: each buffer is valid for this call.
                .map(|b| unsafe { b.as_slice() })
                .collect()
        };
        // The body is only worth reading when it may be Envoy's own failure reply.
        let prefix = match status {
            Some(s) if !(200..300).contains(&s) => reply_prefix(&chunks),
            _ => Vec::new(),
        };
        module.callout_done(callout_id, status, &prefix);
    });
}

/// # Safety
/// `config` is a live pointer from config_new; `envoy` is the stream's filter.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: HttpFilterConfigModulePtr,
    envoy: HttpFilterEnvoyPtr,
) -> HttpFilterModulePtr {
    // Never null, which would make Envoy close the stream: a panic leaves the stream passing.
    let mut state: Box<StreamBox> = Box::new(None);
    guarded((), || {
        // SAFETY: Envoy destroys a configuration only after every stream made from it, so the
        // module outlives this stream's state.
        let module: Option<&'static Module> = unsafe { config.cast::<Module>().as_ref() };
        *state = module
            .and_then(|m| m.mirror.as_ref())
            .map(|mirror| MirrorStream::new(mirror, Filter(envoy).worker_index()));
    });
    Box::into_raw(state).cast()
}

/// # Safety
/// `filter` is a pointer from on_http_filter_new, destroyed once.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_destroy(filter: HttpFilterModulePtr) {
    guarded((), || {
        if !filter.is_null() {
            // SAFETY: made by Box::into_raw in on_http_filter_new; Envoy destroys it once.
            drop(unsafe { Box::from_raw(filter.cast::<StreamBox>()) });
        }
    });
}

/// # Safety
/// Envoy's pointers for this stream's hook.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    envoy: HttpFilterEnvoyPtr,
    filter: HttpFilterModulePtr,
    end_of_stream: bool,
) -> u32 {
    // SAFETY: the stream's own pointer.
    unsafe {
        with_stream(filter, |s| {
            s.on_request_headers(Filter(envoy), end_of_stream)
        })
    };
    abi::CONTINUE
}

/// # Safety
/// Envoy's pointers for this stream's hook.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    envoy: HttpFilterEnvoyPtr,
    filter: HttpFilterModulePtr,
    end_of_stream: bool,
) -> u32 {
    // SAFETY: the stream's own pointer.
    unsafe { with_stream(filter, |s| s.on_request_body(Filter(envoy), end_of_stream)) };
    abi::CONTINUE
}

/// # Safety
/// Envoy's pointers for this stream's hook.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    envoy: HttpFilterEnvoyPtr,
    filter: HttpFilterModulePtr,
) -> u32 {
    // SAFETY: the stream's own pointer.
    unsafe { with_stream(filter, |s| s.on_request_trailers(Filter(envoy))) };
    abi::CONTINUE
}

/// # Safety
/// Envoy's pointers for this stream's hook.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    envoy: HttpFilterEnvoyPtr,
    filter: HttpFilterModulePtr,
    end_of_stream: bool,
) -> u32 {
    // SAFETY: the stream's own pointer.
    unsafe {
        with_stream(filter, |s| {
            s.on_response_headers(Filter(envoy), end_of_stream)
        })
    };
    abi::CONTINUE
}

/// # Safety
/// Envoy's pointers for this stream's hook.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    envoy: HttpFilterEnvoyPtr,
    filter: HttpFilterModulePtr,
    end_of_stream: bool,
) -> u32 {
    // SAFETY: the stream's own pointer.
    unsafe { with_stream(filter, |s| s.on_response_body(Filter(envoy), end_of_stream)) };
    abi::CONTINUE
}

/// # Safety
/// Envoy's pointers for this stream's hook.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    envoy: HttpFilterEnvoyPtr,
    filter: HttpFilterModulePtr,
) -> u32 {
    // SAFETY: the stream's own pointer.
    unsafe { with_stream(filter, |s| s.on_response_trailers(Filter(envoy))) };
    abi::CONTINUE
}

/// # Safety
/// Envoy's pointers for this stream's hook.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    envoy: HttpFilterEnvoyPtr,
    filter: HttpFilterModulePtr,
) {
    // SAFETY: the stream's own pointer.
    unsafe { with_stream(filter, |s| s.on_stream_complete(Filter(envoy))) };
}

/// # Safety
/// Envoy's pointers for this stream's hook; `details` valid for the call.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_local_reply(
    _envoy: HttpFilterEnvoyPtr,
    filter: HttpFilterModulePtr,
    _response_code: u32,
    details: EnvoyBuffer,
    _reset_imminent: bool,
) -> u32 {
    // SAFETY: the stream's own pointer; Envoy's buffer for this call, copied.
    unsafe { with_stream(filter, |s| s.on_local_reply(details.as_slice())) };
    abi::CONTINUE
}

// Hooks Envoy requires of every HTTP filter module; this one starts no per-stream callouts,
// streams or scheduled events, and never stops iteration, so they have nothing to do.

#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    _envoy: HttpFilterEnvoyPtr,
    _filter: HttpFilterModulePtr,
    _callout_id: u64,
    _result: u32,
    _headers: *const EnvoyHttpHeader,
    _headers_size: usize,
    _body: *const EnvoyBuffer,
    _body_size: usize,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _envoy: HttpFilterEnvoyPtr,
    _filter: HttpFilterModulePtr,
    _stream_id: u64,
    _headers: *const EnvoyHttpHeader,
    _headers_size: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _envoy: HttpFilterEnvoyPtr,
    _filter: HttpFilterModulePtr,
    _stream_id: u64,
    _data: *const EnvoyBuffer,
    _data_count: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _envoy: HttpFilterEnvoyPtr,
    _filter: HttpFilterModulePtr,
    _stream_id: u64,
    _trailers: *const EnvoyHttpHeader,
    _trailers_size: usize,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    _envoy: HttpFilterEnvoyPtr,
    _filter: HttpFilterModulePtr,
    _stream_id: u64,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    _envoy: HttpFilterEnvoyPtr,
    _filter: HttpFilterModulePtr,
    _stream_id: u64,
    _reason: u32,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    _envoy: HttpFilterEnvoyPtr,
    _filter: HttpFilterModulePtr,
    _event_id: u64,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _envoy: HttpFilterEnvoyPtr,
    _filter: HttpFilterModulePtr,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _envoy: HttpFilterEnvoyPtr,
    _filter: HttpFilterModulePtr,
) {
}
