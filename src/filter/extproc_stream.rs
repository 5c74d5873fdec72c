//! One HTTP stream in ext_proc mode: each callback turns what passes into the
//! `ProcessingRequest` Envoy's own ext_proc filter would send (observability mode, bodies
//! STREAMED, trailers skipped) and hands it to the exchange's gRPC stream. Every callback
//! returns `Continue`; nothing here holds or changes client traffic.

use super::host::{header_map, now_ms};
use super::worker::SharedWorker;
use crate::extproc::attributes::{self, Value};
use crate::extproc::encode::{processing_request_marked, Direction, Part};
use crate::extproc::streams::Delivery;
use crate::record::HeaderList;
use crate::redact::{Redactor, Stream};
use crate::select::{skip_body, Request};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{Action, BufferType, MapType};

/// What has gone out of one body.
#[derive(Default)]
struct BodyProgress {
    sent: u64,
    size: u64,
    /// Redaction of a JSON or form body, across its chunks.
    redact: Option<Stream>,
    /// A JSON or form body sent compressed: its bytes are not sent (they cannot be redacted).
    withhold: bool,
    /// Its media type is only counted (`capture.skip_body_content_types`): not sent either.
    skipped: bool,
}

pub struct ExtProcStream {
    worker: SharedWorker,
    /// The exchange's key in the worker's streams; `None` when it is not mirrored.
    key: Option<u64>,
    request_body: BodyProgress,
    response_body: BodyProgress,
    finished: bool,
}

impl ExtProcStream {
    pub fn new(worker: SharedWorker) -> Self {
        ExtProcStream {
            worker,
            key: None,
            request_body: BodyProgress::default(),
            response_body: BodyProgress::default(),
            finished: false,
        }
    }

    /// The configured attributes, read from the host; `None` when none are configured (Envoy
    /// then sends no attributes at all). Names the host cannot resolve are left out, as Envoy
    /// leaves out expressions that fail. `request.id` is Envoy's `x-request-id` header, which
    /// the request's own headers already hold: taken from there, it costs no host read (about
    /// 14 k instructions).
    fn attributes(
        &self,
        direction: Direction,
        headers: &HeaderList,
    ) -> Option<Vec<(String, Value)>> {
        let worker = self.worker.try_borrow().ok()?;
        let names = match direction {
            Direction::Request => &worker.config.ext_proc.request_attributes,
            Direction::Response => &worker.config.ext_proc.response_attributes,
        };
        if names.is_empty() {
            return None;
        }
        let values = names
            .iter()
            .filter_map(|name| {
                let from_headers = (direction == Direction::Request && name == "request.id")
                    .then(|| headers.get("x-request-id"));
                let bytes = match from_headers {
                    Some(header) => header?.to_vec(),
                    None => hostcalls::get_property(attributes::path(name))
                        .ok()
                        .flatten()?,
                };
                let value = attributes::value(attributes::kind(name), &bytes)?;
                Some((name.clone(), value))
            })
            .collect();
        Some(values)
    }

    /// Sends the message on the exchange's stream, or leaves it for the root to send once the
    /// stream is open. Host calls are made with the worker released.
    fn deliver(&mut self, message: Vec<u8>) {
        let Some(key) = self.key else { return };
        let (delivery, wake_queue) = {
            let Ok(mut worker) = self.worker.try_borrow_mut() else {
                return;
            };
            (worker.streams.deliver(key, message), worker.wake_queue)
        };
        match delivery {
            Delivery::Send(token, message) => {
                let ok = hostcalls::send_grpc_stream_message(token, Some(&message), false).is_ok();
                let refused =
                    self.worker.try_borrow_mut().ok().and_then(|mut worker| {
                        worker.streams.sent(key, message.len(), ok, now_ms())
                    });
                if let Some(token) = refused {
                    let _ = hostcalls::cancel_grpc_stream(token);
                }
            }
            Delivery::Held { wake: true } => {
                // The root context opens the stream on its next turn of Envoy's event loop.
                if let Some(queue) = wake_queue {
                    let _ = hostcalls::enqueue_shared_queue(queue, Some(b"w"));
                }
            }
            Delivery::Held { wake: false } | Delivery::Gone => {}
        }
    }

    fn headers(&mut self, direction: Direction, mut headers: HeaderList, eos: bool) {
        let attributes = self.attributes(direction, &headers);
        let mut marks = Vec::new();
        if let Ok(worker) = self.worker.try_borrow() {
            let progress = match direction {
                Direction::Request => &mut self.request_body,
                Direction::Response => &mut self.response_body,
            };
            let content_type = headers.get("content-type");
            progress.skipped =
                skip_body(&worker.config.capture.skip_body_content_types, content_type);
            if let Some(r) = &worker.redactor {
                let (kind, encoded) = Redactor::body_of(&headers);
                progress.withhold = kind.is_some() && encoded;
                progress.redact = kind.map(|k| r.body_stream(k));
                marks = r.headers(&mut headers);
                let mut paths = Vec::new();
                for (i, (name, value)) in headers.iter().enumerate() {
                    if name == ":path" {
                        let mut spans = Vec::new();
                        if let Some(path) = r.path(&String::from_utf8_lossy(value), &mut spans) {
                            paths.push((i, path));
                        }
                        let index = u32::try_from(i).unwrap_or(u32::MAX);
                        marks.extend(spans.into_iter().map(|span| (index, span)));
                    }
                }
                for (i, path) in paths {
                    headers.set_value(i, path.as_bytes());
                }
            }
        }
        let part = Part::Headers {
            headers: &headers,
            end_of_stream: eos,
        };
        self.deliver(processing_request_marked(
            direction,
            part,
            attributes.as_deref(),
            &marks,
        ));
    }

    /// Sends what the body cap still allows of this chunk. Past the cap nothing more is sent
    /// but the end of the body: an empty chunk with `end_of_stream`.
    fn body(&mut self, direction: Direction, chunk_len: usize, eos: bool) {
        if self.key.is_none() {
            return;
        }
        let (cap, buffer) = {
            let Ok(worker) = self.worker.try_borrow() else {
                return;
            };
            match direction {
                Direction::Request => (
                    worker.config.capture.request_body_max,
                    BufferType::HttpRequestBody,
                ),
                Direction::Response => (
                    worker.config.capture.response_body_max,
                    BufferType::HttpResponseBody,
                ),
            }
        };
        let progress = match direction {
            Direction::Request => &mut self.request_body,
            Direction::Response => &mut self.response_body,
        };
        let room = cap.saturating_sub(progress.sent);
        let room = if progress.skipped { 0 } else { room };
        let wanted = usize::try_from(room).unwrap_or(usize::MAX).min(chunk_len);
        progress.size = progress.size.saturating_add(chunk_len as u64);
        let chunk = if wanted > 0 {
            hostcalls::get_buffer(buffer, 0, wanted)
                .ok()
                .flatten()
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        progress.sent = progress.sent.saturating_add(chunk.len() as u64);
        let mut marks = Vec::new();
        let chunk = if progress.withhold {
            Vec::new()
        } else if let Some(stream) = &mut progress.redact {
            let Ok(worker) = self.worker.try_borrow() else {
                return;
            };
            let mut out = Vec::with_capacity(chunk.len());
            if let Some(r) = &worker.redactor {
                stream.push(r, &chunk, &mut out);
                if eos {
                    stream.finish(r, &mut out);
                }
                // Offsets in this chunk: a value is held until it ends, so none spans two.
                marks = stream.take_spans().into_iter().map(|s| (0, s)).collect();
            }
            out
        } else {
            chunk
        };
        if chunk.is_empty() && !eos {
            return;
        }
        let part = Part::Body {
            body: &chunk,
            end_of_stream: eos,
        };
        self.deliver(processing_request_marked(direction, part, None, &marks));
    }

    /// The exchange has ended: half-close its stream (or have the root close it once open).
    fn finish(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        let Some(key) = self.key else { return };
        let token = {
            let Ok(mut worker) = self.worker.try_borrow_mut() else {
                return;
            };
            for body in [&self.request_body, &self.response_body] {
                if body.skipped && body.size > 0 {
                    worker.streams.body_skipped();
                } else if body.size > body.sent {
                    worker.streams.body_truncated();
                }
            }
            worker.streams.finish(key, now_ms())
        };
        if let Some(token) = token {
            if hostcalls::close_grpc_stream(token).is_err() {
                if let Ok(mut worker) = self.worker.try_borrow_mut() {
                    // Envoy no longer knows the stream: it ended without telling us.
                    worker.streams.closed(token, u32::MAX, now_ms());
                }
            }
        }
    }
}

impl Drop for ExtProcStream {
    fn drop(&mut self) {
        // Envoy runs the log phase for every stream, but a stream must never stay open.
        self.finish();
    }
}

/// Envoy's callbacks, through [`super::context::StreamContext`].
impl ExtProcStream {
    pub fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let headers = header_map(MapType::HttpRequestHeaders);
        let request = Request::from_headers(&headers);
        // No batch queue to shed for: streams beyond ext_proc.max_streams are whole exchanges
        // dropped already.
        self.key = self.worker.try_borrow_mut().ok().and_then(|mut worker| {
            let now = now_ms();
            worker
                .select
                .admit(request, now, None)
                .then(|| worker.streams.begin(now))
                .flatten()
        });
        if self.key.is_some() {
            self.headers(Direction::Request, headers, end_of_stream);
        }
        Action::Continue
    }

    pub fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.body(Direction::Request, body_size, end_of_stream);
        Action::Continue
    }

    pub fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if self.key.is_some() {
            let headers = header_map(MapType::HttpResponseHeaders);
            self.headers(Direction::Response, headers, end_of_stream);
        }
        Action::Continue
    }

    pub fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.body(Direction::Response, body_size, end_of_stream);
        Action::Continue
    }

    pub fn on_log(&mut self) {
        self.finish();
    }
}
