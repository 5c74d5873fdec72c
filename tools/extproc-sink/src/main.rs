//! `extproc-sink`: the smallest useful Envoy ext_proc server, for `make bench`.
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

use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::{
    ExternalProcessor, ExternalProcessorServer,
};
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Message;
use envoy_types::pb::envoy::service::ext_proc::v3::{ProcessingRequest, ProcessingResponse};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

const USAGE: &str = "usage: extproc-sink [--listen ADDR]   (default 127.0.0.1:0)";

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
}

#[tonic::async_trait]
impl ExternalProcessor for Sink {
    type ProcessStream = ReceiverStream<Result<ProcessingResponse, Status>>;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        self.counts.streams.fetch_add(1, Ordering::Relaxed);
        let mut inbound = request.into_inner();
        // Nothing is ever sent on `reply`; dropping it ends our side (status
        // OK), which tells Envoy the processor wants nothing more.
        let (reply, replies) = mpsc::channel(1);
        let counts = Arc::clone(&self.counts);
        tokio::spawn(async move {
            loop {
                match inbound.message().await {
                    Ok(Some(message)) => {
                        let last = message
                            .request
                            .as_ref()
                            .is_some_and(|message| counts.record(message));
                        if last {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(_) => {
                        counts.stream_errors.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
            drop(reply);
        });
        Ok(Response::new(ReceiverStream::new(replies)))
    }
}

fn main() -> ExitCode {
    let listen = match parse_listen(std::env::args().skip(1)) {
        Ok(addr) => addr,
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
    match runtime.block_on(serve(listen)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("extproc-sink: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(listen: SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    eprintln!("listening on {}", listener.local_addr()?);

    let counts = Arc::new(Counts::default());
    let service = ExternalProcessorServer::new(Sink {
        counts: Arc::clone(&counts),
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
    println!("{}", counts.to_json());
    Ok(())
}

fn parse_listen(mut args: impl Iterator<Item = String>) -> Result<SocketAddr, String> {
    let mut listen = SocketAddr::from(([127, 0, 0, 1], 0));
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => {
                let value = args.next().ok_or("--listen needs a value")?;
                listen = value
                    .parse()
                    .map_err(|_| format!("--listen: not an ip:port address: {value}"))?;
            }
            other => return Err(format!("unknown argument: {other}")),
        }
    }
    Ok(listen)
}
