//! `extproc-sink`: the smallest useful Envoy ext_proc server, for `make bench`, and the
//! recording server of the ext_proc tests (`--record`, `--close`).
//!
//! Implements `envoy.service.ext_proc.v3.ExternalProcessor/Process` for a filter
//! in `observability_mode`: it reads every message Envoy sends, counts it, and
//! answers nothing (Envoy ignores answers in that mode). It closes a stream
//! once the response has ended: in that mode Envoy never closes the stream
//! itself but holds it for `deferred_close_timeout` (5 s), so at a few thousand
//! requests a second the open streams would hit the cluster's circuit breaker
//! (1024) and every further request would go unobserved. On SIGTERM or SIGINT
//! it prints its counts as one JSON line on stdout and exits. Scripts wait for
//! `listening on ADDR` on stderr.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::HeaderMap;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::{
    ExternalProcessor, ExternalProcessorServer,
};
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Message;
use envoy_types::pb::envoy::service::ext_proc::v3::{ProcessingRequest, ProcessingResponse};
use envoy_types::pb::google::protobuf as prost_types;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

const USAGE: &str = "usage: extproc-sink [--listen ADDR] [--record] [--close end|never|reset]
  --listen ADDR  where to listen (default 127.0.0.1:0)
  --record       print every message as one JSON line on stdout, as it arrives:
                 {\"stream\":N,\"msg\":{...}}, and {\"stream\":N,\"end\":\"...\"} when a stream ends
  --close end    close each stream when the response has ended or the client half-closes (default)
  --close never  never close a stream: only the client ends it
  --close reset  answer each stream's first message with an error (status UNAVAILABLE)";

/// When the server ends a stream.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Close {
    AtEnd,
    Never,
    Reset,
}

struct Options {
    listen: SocketAddr,
    record: bool,
    close: Close,
}

#[derive(Default)]
struct Counts {
    streams: AtomicU64,
    request_headers: AtomicU64,
    request_body_chunks: AtomicU64,
    request_body_bytes: AtomicU64,
    response_headers: AtomicU64,
    response_body_chunks: AtomicU64,
    response_body_bytes: AtomicU64,
    trailers: AtomicU64,
    stream_errors: AtomicU64,
}

impl Counts {
    /// Counts the message; true when it is the last one of the exchange.
    fn record(&self, message: &Message) -> bool {
        let add = |counter: &AtomicU64, n: usize| {
            counter.fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
        };
        match message {
            Message::RequestHeaders(_) => {
                add(&self.request_headers, 1);
                false
            }
            Message::ResponseHeaders(headers) => {
                add(&self.response_headers, 1);
                headers.end_of_stream
            }
            Message::RequestBody(body) => {
                add(&self.request_body_chunks, 1);
                add(&self.request_body_bytes, body.body.len());
                false
            }
            Message::ResponseBody(body) => {
                add(&self.response_body_chunks, 1);
                add(&self.response_body_bytes, body.body.len());
                body.end_of_stream
            }
            Message::RequestTrailers(_) => {
                add(&self.trailers, 1);
                false
            }
            Message::ResponseTrailers(_) => {
                add(&self.trailers, 1);
                true
            }
        }
    }

    fn to_json(&self) -> String {
        let fields = [
            ("streams", &self.streams),
            ("request_headers", &self.request_headers),
            ("request_body_chunks", &self.request_body_chunks),
            ("request_body_bytes", &self.request_body_bytes),
            ("response_headers", &self.response_headers),
            ("response_body_chunks", &self.response_body_chunks),
            ("response_body_bytes", &self.response_body_bytes),
            ("trailers", &self.trailers),
            ("stream_errors", &self.stream_errors),
        ];
        let body: Vec<String> = fields
            .iter()
            .map(|(name, value)| format!("\"{name}\":{}", value.load(Ordering::Relaxed)))
            .collect();
        format!("{{{}}}", body.join(","))
    }
}

struct Sink {
    counts: Arc<Counts>,
    record: bool,
    close: Close,
    next_stream: AtomicU64,
}

fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn headers_json(headers: Option<&HeaderMap>) -> String {
    let Some(map) = headers else {
        return "null".to_owned();
    };
    let fields: Vec<String> = map
        .headers
        .iter()
        .map(|h| {
            format!(
                "{{\"key\":{},\"value\":{},\"raw_value\":\"{}\"}}",
                json_string(&h.key),
                json_string(&h.value),
                hex(&h.raw_value)
            )
        })
        .collect();
    format!("[{}]", fields.join(","))
}

fn value_json(value: &prost_types::Value) -> String {
    use prost_types::value::Kind;
    match &value.kind {
        Some(Kind::StringValue(text)) => format!("{{\"string\":{}}}", json_string(text)),
        Some(Kind::BoolValue(flag)) => format!("{{\"bool\":{flag}}}"),
        Some(Kind::NumberValue(n)) => format!("{{\"number\":{n}}}"),
        Some(Kind::NullValue(_)) => "{\"null\":true}".to_owned(),
        other => format!("{{\"other\":{}}}", json_string(&format!("{other:?}"))),
    }
}

fn attributes_json(attributes: &std::collections::HashMap<String, prost_types::Struct>) -> String {
    let mut namespaces: Vec<String> = attributes
        .iter()
        .map(|(namespace, fields)| {
            let mut fields: Vec<String> = fields
                .fields
                .iter()
                .map(|(name, value)| format!("{}:{}", json_string(name), value_json(value)))
                .collect();
            fields.sort();
            format!("{}:{{{}}}", json_string(namespace), fields.join(","))
        })
        .collect();
    namespaces.sort();
    format!("{{{}}}", namespaces.join(","))
}

/// One message as JSON: the part it carries, its attributes, and the Debug text of every other
/// field (so a field the recorder does not know still shows up, and differs if it differs).
fn message_json(request: &ProcessingRequest) -> String {
    let part = match &request.request {
        Some(Message::RequestHeaders(h)) | Some(Message::ResponseHeaders(h)) => format!(
            "\"headers\":{},\"end_of_stream\":{},\"headers_attributes\":{}",
            headers_json(h.headers.as_ref()),
            h.end_of_stream,
            attributes_json(&h.attributes)
        ),
        Some(Message::RequestBody(b)) | Some(Message::ResponseBody(b)) => format!(
            "\"body\":\"{}\",\"end_of_stream\":{}",
            hex(&b.body),
            b.end_of_stream
        ),
        Some(Message::RequestTrailers(t)) | Some(Message::ResponseTrailers(t)) => {
            format!("\"trailers\":{}", headers_json(t.trailers.as_ref()))
        }
        None => "\"none\":true".to_owned(),
    };
    let kind = match &request.request {
        Some(Message::RequestHeaders(_)) => "request_headers",
        Some(Message::ResponseHeaders(_)) => "response_headers",
        Some(Message::RequestBody(_)) => "request_body",
        Some(Message::ResponseBody(_)) => "response_body",
        Some(Message::RequestTrailers(_)) => "request_trailers",
        Some(Message::ResponseTrailers(_)) => "response_trailers",
        None => "none",
    };
    let mut rest = request.clone();
    rest.request = None;
    rest.attributes.clear();
    format!(
        "{{\"kind\":\"{kind}\",{part},\"attributes\":{},\"rest\":{}}}",
        attributes_json(&request.attributes),
        json_string(&format!("{rest:?}"))
    )
}

/// One line on stdout, whole (the test reads lines as they come).
fn emit(line: String) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

#[tonic::async_trait]
impl ExternalProcessor for Sink {
    type ProcessStream = ReceiverStream<Result<ProcessingResponse, Status>>;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        self.counts.streams.fetch_add(1, Ordering::Relaxed);
        let stream = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let (record, close) = (self.record, self.close);
        let mut inbound = request.into_inner();
        // Nothing is ever sent on `reply`; dropping it ends our side (status
        // OK), which tells Envoy the processor wants nothing more.
        let (reply, replies) = mpsc::channel(1);
        let counts = Arc::clone(&self.counts);
        tokio::spawn(async move {
            let end = loop {
                match inbound.message().await {
                    Ok(Some(message)) => {
                        if record {
                            emit(format!(
                                "{{\"stream\":{stream},\"msg\":{}}}",
                                message_json(&message)
                            ));
                        }
                        if close == Close::Reset {
                            let _ = reply
                                .send(Err(Status::unavailable("extproc-sink --close reset")))
                                .await;
                            break "reset";
                        }
                        let last = message
                            .request
                            .as_ref()
                            .is_some_and(|message| counts.record(message));
                        if last && close == Close::AtEnd {
                            break "response-end";
                        }
                    }
                    Ok(None) => break "client-half-close",
                    Err(_) => {
                        counts.stream_errors.fetch_add(1, Ordering::Relaxed);
                        break "client-error";
                    }
                }
            };
            if record {
                emit(format!("{{\"stream\":{stream},\"end\":\"{end}\"}}"));
            }
            if close == Close::Never {
                // Hold our side open until the client goes away.
                reply.closed().await;
            }
            drop(reply);
        });
        Ok(Response::new(ReceiverStream::new(replies)))
    }
}

fn main() -> ExitCode {
    let options = match parse_options(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(e) => {
            eprintln!("extproc-sink: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("extproc-sink: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("extproc-sink: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(options: Options) -> Result<(), Box<dyn std::error::Error>> {
    let listen = options.listen;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    eprintln!("listening on {}", listener.local_addr()?);

    let counts = Arc::new(Counts::default());
    let service = ExternalProcessorServer::new(Sink {
        counts: Arc::clone(&counts),
        record: options.record,
        close: options.close,
        next_stream: AtomicU64::new(0),
    })
    .max_decoding_message_size(16 << 20);
    let shutdown = async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    };
    // Envoy keeps its gRPC connection open; waiting for it to drain would hang
    // the shutdown, so stop serving at the signal and report what was counted.
    tokio::select! {
        served = tonic::transport::Server::builder()
            // h2's default 64 KiB windows would let Envoy send only one 64 KiB
            // body at a time on its single connection: the sink, not Envoy,
            // would set the pace.
            .initial_connection_window_size(64 << 20)
            .initial_stream_window_size(4 << 20)
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener)) => served?,
        () = shutdown => {}
    }
    emit(counts.to_json());
    Ok(())
}

fn parse_options(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut options = Options {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        record: false,
        close: Close::AtEnd,
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => {
                let value = args.next().ok_or("--listen needs a value")?;
                options.listen = value
                    .parse()
                    .map_err(|_| format!("--listen: not an ip:port address: {value}"))?;
            }
            "--record" => options.record = true,
            "--close" => {
                options.close = match args.next().as_deref() {
                    Some("end") => Close::AtEnd,
                    Some("never") => Close::Never,
                    Some("reset") => Close::Reset,
                    other => return Err(format!("--close: end, never or reset, not {other:?}")),
                }
            }
            other => return Err(format!("unknown argument: {other}")),
        }
    }
    Ok(options)
}
