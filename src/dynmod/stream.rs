//! One HTTP stream: copies what passes into the two records and hands them to its worker's
//! shipper, as `src/filter/stream.rs` does in the Proxy-Wasm build (same core calls, same
//! record fields). Every hook returns `Continue`; nothing here holds or changes client traffic.

use super::abi;
use super::host::{now_ns, ns_to_ms, Filter};
use super::module::{Mirror, Worker};
use crate::body::BodyCapture;
use crate::record::{status_of, HeaderList, RequestRecord, ResponseRecord};
use crate::select::{skip_body, Request};
use std::sync::MutexGuard;

pub struct MirrorStream<'m> {
    mirror: &'m Mirror,
    worker_index: usize,
    /// The request being captured; `None` once it has been queued.
    request: Option<RequestRecord>,
    request_queued: bool,
    request_ts_ns: u64,
    id: String,
    response: ResponseRecord,
    response_started: bool,
    /// Not mirrored (scope, sampling, shedding): nothing more is read.
    skipped: bool,
    /// Body bytes this stream holds from the worker's capture budget.
    held: usize,
    /// What Envoy's local reply said, when it made one (the `response.code_details` the
    /// Proxy-Wasm build reads, where the ABI has no such attribute).
    local_reply_details: Option<String>,
}

impl<'m> MirrorStream<'m> {
    pub fn new(mirror: &'m Mirror, worker_index: usize) -> Self {
        MirrorStream {
            mirror,
            worker_index,
            request: None,
            request_queued: false,
            request_ts_ns: 0,
            id: String::new(),
            response: ResponseRecord::default(),
            response_started: false,
            skipped: false,
            held: 0,
            local_reply_details: None,
        }
    }

    fn worker(&self) -> Option<MutexGuard<'m, Worker>> {
        self.mirror.worker(self.worker_index)
    }

    /// Copies up to `wanted` bytes of the current body chunk, within the worker's capture
    /// budget.
    fn copy_chunk(&mut self, filter: Filter, wanted: usize, body_type: u32) -> Vec<u8> {
        if wanted == 0 {
            return Vec::new();
        }
        let granted = self.worker().map_or(0, |mut w| w.budget.grant(wanted));
        self.held += granted;
        let chunk = filter.body_prefix(body_type, granted);
        self.release(granted.saturating_sub(chunk.len()));
        chunk
    }

    /// Gives body bytes back to the worker's budget (their record was queued or dropped).
    fn release(&mut self, bytes: usize) {
        let bytes = bytes.min(self.held);
        if bytes == 0 {
            return;
        }
        self.held -= bytes;
        if let Some(mut worker) = self.worker() {
            worker.budget.release(bytes);
        }
    }

    /// Takes up to `bytes` of what this stream holds off its count, to be given back by the
    /// caller.
    fn take_held(&mut self, bytes: usize) -> usize {
        let bytes = bytes.min(self.held);
        self.held -= bytes;
        bytes
    }

    fn skips_body(&self, headers: &HeaderList) -> bool {
        let content_type = headers.get("content-type");
        skip_body(
            &self.mirror.config.capture.skip_body_content_types,
            content_type,
        )
    }

    /// Starts the request record; false when the exchange is not mirrored.
    fn start_request(&mut self, filter: Filter, ts_ns: u64) -> bool {
        let (pseudo, headers) = filter.split_headers(abi::REQUEST_HEADER);
        let connection_id = filter.connection_id();
        let (id, connection) = {
            let Some(mut worker) = self.worker() else {
                self.skipped = true;
                return false;
            };
            let fill = worker.shipper.queue_fill();
            let request = Request::from_headers(&pseudo);
            if !worker.select.admit(request, ns_to_ms(ts_ns), Some(fill)) {
                self.skipped = true;
                return false;
            }
            // Always ours, never the client's x-request-id (which stays in the headers): a
            // client could otherwise pair its request with another exchange's response.
            let id = worker.ids.next_id();
            let connection = match connection_id {
                Some(cid) => worker
                    .connections
                    .get_or_read(cid, || filter.connection_facts())
                    .cloned(),
                None => None,
            };
            (id, connection)
        };
        let connection = connection.unwrap_or_else(|| filter.connection_facts());
        let capture = &self.mirror.config.capture;
        let body = if self.skips_body(&headers) {
            BodyCapture::skipped()
        } else {
            BodyCapture::new(capture.request_body_max)
        };
        self.request = Some(RequestRecord::from_headers(
            id.clone(),
            ts_ns,
            &pseudo,
            headers,
            connection,
            body,
        ));
        self.response.body = BodyCapture::new(capture.response_body_max);
        self.request_ts_ns = ts_ns;
        self.id = id;
        true
    }

    /// Queues the request record at `at_ns`; called once, at the request's end or the stream's.
    fn queue_request(&mut self, complete: bool, at_ns: u64) {
        if self.request_queued {
            return;
        }
        self.request_queued = true;
        let mut request = match self.request.take() {
            Some(request) => request,
            None => {
                // The stream ended before request headers were seen: still pair the response.
                self.request_ts_ns = at_ns;
                self.id = self
                    .worker()
                    .map(|mut w| w.ids.next_id())
                    .unwrap_or_default();
                RequestRecord {
                    id: self.id.clone(),
                    ts_ns: at_ns,
                    ..RequestRecord::default()
                }
            }
        };
        request.complete = complete;
        let held = self.take_held(request.body.bytes().len());
        if let Some(mut worker) = self.worker() {
            worker
                .shipper
                .capture_request(&mut request, ns_to_ms(at_ns));
            // The bytes are in the queue now: the budget gets them back under the same lock.
            worker.budget.release(held);
        }
    }

    fn queue_response(&mut self, filter: Filter, end_ns: u64) {
        let mut response = std::mem::take(&mut self.response);
        response.id = std::mem::take(&mut self.id);
        if !self.response_started {
            response.ts_ns = end_ns;
        }
        if response.status == 0 {
            // Headers never reached this filter (e.g. a reset): take what Envoy recorded.
            response.status = filter
                .attribute_int(abi::ATTR_RESPONSE_CODE)
                .and_then(|code| u32::try_from(code).ok())
                .unwrap_or(0);
        }
        if response.wants_details() {
            response.details = self.details(filter);
        }
        response.duration_us = end_ns.saturating_sub(self.request_ts_ns) / 1000;
        let held = self.take_held(response.body.bytes().len());
        if let Some(mut worker) = self.worker() {
            worker
                .shipper
                .capture_response(&mut response, ns_to_ms(end_ns));
            worker.budget.release(held);
        }
    }

    /// `response.code_details`: Envoy's attribute when this Envoy serves it, else what its
    /// local reply said, else `via_upstream` for an answer whose headers came from upstream.
    fn details(&self, filter: Filter) -> String {
        if let Some(details) = filter.attribute_text(abi::ATTR_RESPONSE_CODE_DETAILS) {
            return details;
        }
        match (&self.local_reply_details, self.response_started) {
            (Some(details), _) => details.clone(),
            (None, true) => "via_upstream".to_owned(),
            (None, false) => String::new(),
        }
    }

    fn mirrored(&self) -> bool {
        !self.skipped
    }
}

impl Drop for MirrorStream<'_> {
    fn drop(&mut self) {
        // Whatever a stream still holds goes back, even if Envoy never completed it.
        self.release(self.held);
    }
}

/// Envoy's event hooks.
impl MirrorStream<'_> {
    pub fn on_request_headers(&mut self, filter: Filter, end_of_stream: bool) {
        #[cfg(feature = "test-trap")]
        panic_if_asked(filter);
        let ts_ns = now_ns();
        if self.start_request(filter, ts_ns) && end_of_stream {
            self.queue_request(true, ts_ns);
        }
    }

    pub fn on_request_body(&mut self, filter: Filter, end_of_stream: bool) {
        let Some(request) = &self.request else {
            return;
        };
        let size = filter.body_size(abi::RECEIVED_REQUEST_BODY);
        let wanted = request.body.wanted(size);
        let chunk = self.copy_chunk(filter, wanted, abi::RECEIVED_REQUEST_BODY);
        if let Some(request) = &mut self.request {
            request.body.add(size, &chunk);
            if end_of_stream {
                self.queue_request(true, now_ns());
            }
        }
    }

    pub fn on_request_trailers(&mut self, filter: Filter) {
        if let Some(request) = &mut self.request {
            request.trailers = filter.headers(abi::REQUEST_TRAILER);
            self.queue_request(true, now_ns());
        }
    }

    pub fn on_response_headers(&mut self, filter: Filter, end_of_stream: bool) {
        if !self.mirrored() {
            return;
        }
        let (pseudo, headers) = filter.split_headers(abi::RESPONSE_HEADER);
        if self.skips_body(&headers) {
            self.response.body = BodyCapture::skipped();
        }
        self.response.ts_ns = now_ns();
        self.response.status = status_of(&pseudo);
        self.response.headers = headers;
        self.response.complete = end_of_stream;
        self.response_started = true;
    }

    pub fn on_response_body(&mut self, filter: Filter, end_of_stream: bool) {
        if !self.response_started {
            return;
        }
        let size = filter.body_size(abi::RECEIVED_RESPONSE_BODY);
        let wanted = self.response.body.wanted(size);
        let chunk = self.copy_chunk(filter, wanted, abi::RECEIVED_RESPONSE_BODY);
        self.response.body.add(size, &chunk);
        self.response.complete = end_of_stream;
    }

    pub fn on_response_trailers(&mut self, filter: Filter) {
        if self.response_started {
            self.response.trailers = filter.headers(abi::RESPONSE_TRAILER);
            self.response.complete = true;
        }
    }

    pub fn on_local_reply(&mut self, details: &[u8]) {
        self.local_reply_details = Some(String::from_utf8_lossy(details).into_owned());
    }

    pub fn on_stream_complete(&mut self, filter: Filter) {
        if self.mirrored() {
            let end_ns = now_ns();
            self.queue_request(false, end_ns);
            self.queue_response(filter, end_ns);
        }
    }
}

/// Test-only (`--features test-trap`, never in the release library, `make dynmod-trap`): a
/// request carrying `x-oob-mirror-trap: 1` panics in this hook, so the end-to-end tests can show
/// that the panic stays in the module and the exchange passes.
#[cfg(feature = "test-trap")]
#[allow(clippy::panic)]
fn panic_if_asked(filter: Filter) {
    let asked = filter
        .headers(abi::REQUEST_HEADER)
        .iter()
        .any(|(name, value)| name == "x-oob-mirror-trap" && value == b"1");
    if asked {
        panic!("x-oob-mirror-trap: 1 (test-trap build)");
    }
}
