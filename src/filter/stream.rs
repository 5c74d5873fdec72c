//! One HTTP stream: copies what passes into the two records and hands them to the worker's
//! shipper. Every callback returns `Continue`; nothing here holds or changes client traffic.

use super::host::{
    connection_id, header_map, now_ns, ns_to_ms, property_int, property_text, read_connection_facts,
};
use super::worker::SharedWorker;
use crate::body::BodyCapture;
use crate::connection_facts::ConnectionFacts;
use crate::record::{status_of, HeaderList, RequestRecord, ResponseRecord};
use crate::select::{skip_body, Request};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{Action, BufferType, MapType};

pub struct MirrorStream {
    worker: Option<SharedWorker>,
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
}

impl MirrorStream {
    pub fn new(worker: Option<SharedWorker>) -> Self {
        MirrorStream {
            worker,
            request: None,
            request_queued: false,
            request_ts_ns: 0,
            id: String::new(),
            response: ResponseRecord::default(),
            response_started: false,
            skipped: false,
            held: 0,
        }
    }

    /// Copies up to `wanted` bytes of the current body chunk, within the worker's capture
    /// budget.
    fn copy_chunk(&mut self, wanted: usize, buffer: BufferType) -> Vec<u8> {
        if wanted == 0 {
            return Vec::new();
        }
        let granted = self
            .worker
            .as_ref()
            .and_then(|w| w.try_borrow_mut().ok())
            .map_or(0, |mut w| w.budget.grant(wanted));
        self.held += granted;
        let chunk = if granted > 0 {
            hostcalls::get_buffer(buffer, 0, granted)
                .ok()
                .flatten()
                .unwrap_or_default()
        } else {
            Vec::new()
        };
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
        if let Some(mut worker) = self.worker.as_ref().and_then(|w| w.try_borrow_mut().ok()) {
            worker.budget.release(bytes);
        }
    }

    fn body_caps(&self) -> (u64, u64) {
        self.worker
            .as_ref()
            .and_then(|w| w.try_borrow().ok())
            .map_or((0, 0), |w| {
                let capture = &w.config.capture;
                (capture.request_body_max, capture.response_body_max)
            })
    }

    /// The downstream connection's facts, read from the host once per connection.
    fn connection_facts(&self) -> ConnectionFacts {
        let worker = self.worker.as_ref().and_then(|w| w.try_borrow_mut().ok());
        let cached = match (worker, connection_id()) {
            (Some(mut worker), Some(id)) => worker
                .connections
                .get_or_read(id, read_connection_facts)
                .cloned(),
            _ => None,
        };
        cached.unwrap_or_else(read_connection_facts)
    }

    fn next_id(&self) -> String {
        self.worker
            .as_ref()
            .and_then(|w| w.try_borrow_mut().ok())
            .map(|mut w| w.ids.next_id())
            .unwrap_or_default()
    }

    /// Whether this exchange is mirrored; decided once, from its request pseudo-headers.
    fn admit(&self, pseudo: &HeaderList, ts_ns: u64) -> bool {
        self.worker
            .as_ref()
            .and_then(|w| w.try_borrow_mut().ok())
            .is_some_and(|mut w| {
                let fill = w.shipper.queue_fill();
                let request = Request::from_headers(pseudo);
                w.select.admit(request, ns_to_ms(ts_ns), Some(fill))
            })
    }

    /// Whether bodies with this direction's `content-type` are only counted.
    fn skips_body(&self, headers: &HeaderList) -> bool {
        let content_type = headers.get("content-type");
        self.worker
            .as_ref()
            .and_then(|w| w.try_borrow().ok())
            .is_some_and(|w| skip_body(&w.config.capture.skip_body_content_types, content_type))
    }

    /// Starts the request record; false when the exchange is not mirrored.
    fn start_request(&mut self, ts_ns: u64) -> bool {
        let (pseudo, headers) = header_map(MapType::HttpRequestHeaders).split_pseudo();
        if !self.admit(&pseudo, ts_ns) {
            self.skipped = true;
            return false;
        }
        // Always ours, never the client's x-request-id (which stays in the headers): a client
        // could otherwise pair its request with another exchange's response at the node.
        let id = self.next_id();
        let (request_cap, response_cap) = self.body_caps();
        let connection = self.connection_facts();
        let body = if self.skips_body(&headers) {
            BodyCapture::skipped()
        } else {
            BodyCapture::new(request_cap)
        };
        self.request = Some(RequestRecord::from_headers(
            id.clone(),
            ts_ns,
            &pseudo,
            headers,
            connection,
            body,
        ));
        self.response.body = BodyCapture::new(response_cap);
        self.request_ts_ns = ts_ns;
        self.id = id;
        true
    }

    /// The stream is mirrored (a worker, and not skipped).
    fn mirrored(&self) -> bool {
        self.worker.is_some() && !self.skipped
    }

    /// Queues the request record at `at_ns`; called once, at the request's end or the stream's.
    fn queue_request(&mut self, complete: bool, at_ns: u64) {
        if self.request_queued {
            return;
        }
        self.request_queued = true;
        let mut request = self.request.take().unwrap_or_else(|| {
            // The stream ended before request headers were seen: still pair the response.
            self.request_ts_ns = at_ns;
            self.id = self.next_id();
            RequestRecord {
                id: self.id.clone(),
                ts_ns: at_ns,
                ..RequestRecord::default()
            }
        });
        request.complete = complete;
        if let Some(worker) = &self.worker {
            if let Ok(mut worker) = worker.try_borrow_mut() {
                worker
                    .shipper
                    .capture_request(&mut request, ns_to_ms(at_ns));
            }
        }
        self.release(request.body.bytes().len());
    }

    fn queue_response(&mut self, end_ns: u64) {
        let mut response = std::mem::take(&mut self.response);
        response.id = std::mem::take(&mut self.id);
        if !self.response_started {
            response.ts_ns = end_ns;
        }
        if response.status == 0 {
            // Headers never reached this filter (e.g. a reset): take what Envoy recorded.
            response.status = property_int(&["response", "code"])
                .and_then(|code| u32::try_from(code).ok())
                .unwrap_or(0);
        }
        if response.wants_details() {
            response.details = property_text(&["response", "code_details"]);
        }
        response.duration_us = end_ns.saturating_sub(self.request_ts_ns) / 1000;
        if let Some(worker) = &self.worker {
            if let Ok(mut worker) = worker.try_borrow_mut() {
                worker
                    .shipper
                    .capture_response(&mut response, ns_to_ms(end_ns));
            }
        }
        self.release(response.body.bytes().len());
    }
}

impl Drop for MirrorStream {
    fn drop(&mut self) {
        // Whatever a stream still holds goes back, even if Envoy never ran its log phase.
        self.release(self.held);
    }
}

/// Envoy's callbacks, through [`super::context::StreamContext`].
impl MirrorStream {
    pub fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if self.worker.is_some() {
            let ts_ns = now_ns();
            if self.start_request(ts_ns) && end_of_stream {
                self.queue_request(true, ts_ns);
            }
        }
        Action::Continue
    }

    pub fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let wanted = self
            .request
            .as_ref()
            .map_or(0, |r| r.body.wanted(body_size));
        let chunk = self.copy_chunk(wanted, BufferType::HttpRequestBody);
        if let Some(request) = &mut self.request {
            request.body.add(body_size, &chunk);
            if end_of_stream {
                self.queue_request(true, now_ns());
            }
        }
        Action::Continue
    }

    pub fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        if self.request.is_some() {
            let trailers = header_map(MapType::HttpRequestTrailers);
            if let Some(request) = &mut self.request {
                request.trailers = trailers;
            }
            self.queue_request(true, now_ns());
        }
        Action::Continue
    }

    pub fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if self.mirrored() {
            let (pseudo, headers) = header_map(MapType::HttpResponseHeaders).split_pseudo();
            if self.skips_body(&headers) {
                self.response.body = BodyCapture::skipped();
            }
            self.response.ts_ns = now_ns();
            self.response.status = status_of(&pseudo);
            self.response.headers = headers;
            self.response.complete = end_of_stream;
            self.response_started = true;
        }
        Action::Continue
    }

    pub fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.response_started {
            let wanted = self.response.body.wanted(body_size);
            let chunk = self.copy_chunk(wanted, BufferType::HttpResponseBody);
            self.response.body.add(body_size, &chunk);
            self.response.complete = end_of_stream;
        }
        Action::Continue
    }

    pub fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        if self.response_started {
            self.response.trailers = header_map(MapType::HttpResponseTrailers);
            self.response.complete = true;
        }
        Action::Continue
    }

    pub fn on_log(&mut self) {
        if self.mirrored() {
            let end_ns = now_ns();
            self.queue_request(false, end_ns);
            self.queue_response(end_ns);
        }
    }
}
