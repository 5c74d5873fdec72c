//! The one HTTP context type the module registers: the SDK instantiates every default method of
//! `HttpContext` per implementing type, so the two protocols share one type and one set.

use super::extproc_stream::ExtProcStream;
use super::stream::MirrorStream;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

// The SDK boxes the context already; boxing the batch variant too would cost an allocation per
// stream.
#[allow(clippy::large_enum_variant)]
pub enum StreamContext {
    Batch(MirrorStream),
    ExtProc(ExtProcStream),
}

impl Context for StreamContext {}

impl HttpContext for StreamContext {
    fn on_http_request_headers(&mut self, num_headers: usize, end_of_stream: bool) -> Action {
        #[cfg(feature = "test-trap")]
        super::trap::trap_if_asked();
        match self {
            StreamContext::Batch(s) => s.on_http_request_headers(num_headers, end_of_stream),
            StreamContext::ExtProc(s) => s.on_http_request_headers(num_headers, end_of_stream),
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        match self {
            StreamContext::Batch(s) => s.on_http_request_body(body_size, end_of_stream),
            StreamContext::ExtProc(s) => s.on_http_request_body(body_size, end_of_stream),
        }
    }

    fn on_http_request_trailers(&mut self, num_trailers: usize) -> Action {
        match self {
            StreamContext::Batch(s) => s.on_http_request_trailers(num_trailers),
            // Envoy's ext_proc skips trailers by default, and so does this mode.
            StreamContext::ExtProc(_) => Action::Continue,
        }
    }

    fn on_http_response_headers(&mut self, num_headers: usize, end_of_stream: bool) -> Action {
        match self {
            StreamContext::Batch(s) => s.on_http_response_headers(num_headers, end_of_stream),
            StreamContext::ExtProc(s) => s.on_http_response_headers(num_headers, end_of_stream),
        }
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        match self {
            StreamContext::Batch(s) => s.on_http_response_body(body_size, end_of_stream),
            StreamContext::ExtProc(s) => s.on_http_response_body(body_size, end_of_stream),
        }
    }

    fn on_http_response_trailers(&mut self, num_trailers: usize) -> Action {
        match self {
            StreamContext::Batch(s) => s.on_http_response_trailers(num_trailers),
            StreamContext::ExtProc(_) => Action::Continue,
        }
    }

    fn on_log(&mut self) {
        match self {
            StreamContext::Batch(s) => s.on_log(),
            StreamContext::ExtProc(s) => s.on_log(),
        }
    }
}
