//! The root context of a worker: reads the configuration, owns the batch transport (only a
//! root context's calls outlive the stream that queued a record) and publishes metrics.

use super::context::StreamContext;
use super::extproc_stream::ExtProcStream;
use super::host::{linear_memory_bytes, now_ms, now_ns, ns_to_ms, random_seed};
use super::metrics::Metrics;
use super::stream::MirrorStream;
use super::worker::{SharedWorker, Worker};
use crate::accounting::Gauges;
use crate::batch::{batch_headers, shard_targets};
use crate::config::{Config, Protocol};
use crate::extproc::encode::grpc_service;
use crate::failure_log::{Level, Reason};
use crate::node_env::resolve_headers;
use crate::redact::Redactor;
use crate::shipper::{Reply, REPLY_BODY_PREFIX};
use log::error;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, MapType, Status};
use std::time::Duration;

/// Upper bound on the tick period: full batches wait at most this long for the root context.
const MAX_TICK_MS: u64 = 10;

/// How long a root whose configuration was replaced keeps shipping what it still has (its
/// queue, its batches in flight, the records of exchanges that started under it) before it
/// goes, and counts what is left as lost.
const DRAIN_MS: u64 = 60_000;

/// The gRPC method every ext_proc stream calls.
const EXT_PROC_SERVICE: &str = "envoy.service.ext_proc.v3.ExternalProcessor";
const EXT_PROC_METHOD: &str = "Process";

#[derive(Default)]
pub struct MirrorRoot {
    worker: Option<SharedWorker>,
    metrics: Metrics,
    /// What Envoy's gRPC stream call takes to reach `node.cluster` (ext_proc mode).
    grpc_service: String,
    /// The configured protocol: which transport the tick drives and which stream type serves.
    protocol: Protocol,
    /// `node.headers` with their values resolved (secrets: never logged).
    node_headers: Vec<(String, String)>,
    /// Per shard when `node.shards` is above 1: its batches' `:authority`
    /// (`shard-N.{node.authority}`) and its `x-oob-mirror-shard` value. Empty with one shard,
    /// whose batches go as they always did.
    shard_targets: Vec<(String, String)>,
    /// Set by `on_done`: until when this root keeps draining before it gives up.
    drain_until_ms: Option<u64>,
}

impl MirrorRoot {
    /// While draining: whether everything of this root is shipped (no stream context holds its
    /// worker, nothing is queued, in flight or streaming) or the drain's time is up, in which
    /// case what is left is named in one log line. Publishes the metrics either way, so the
    /// last deltas reach Envoy's stats, which outlive this root.
    fn drained(&mut self) -> bool {
        let Some(until) = self.drain_until_ms else {
            return false;
        };
        let idle = match &self.worker {
            None => true,
            Some(worker) => {
                let holders = std::rc::Rc::strong_count(worker);
                worker
                    .try_borrow()
                    .is_ok_and(|w| holders == 1 && w.shipper.is_idle() && w.streams.active() == 0)
            }
        };
        self.publish();
        if idle {
            return true;
        }
        if now_ms() < until {
            return false;
        }
        log::warn!(
            "oob-mirror: configuration replaced: {DRAIN_MS} ms later, {} are given up \
             (counted in queued_records, inflight_records and extproc_streams_active)",
            self.held()
        );
        true
    }

    /// What this root still holds, for a log line: records queued and in flight, streams open.
    fn held(&self) -> String {
        match self.worker.as_ref().map(|w| w.try_borrow()) {
            Some(Ok(w)) => {
                let gauges = w.shipper.gauges();
                format!(
                    "{} records queued, {} in flight and {} ext_proc streams open",
                    gauges.queued_records,
                    gauges.inflight_records,
                    w.streams.active()
                )
            }
            _ => "nothing".to_owned(),
        }
    }

    /// Ends the drain once [`Self::drained`]; true then.
    fn end_drain_if_drained(&mut self) -> bool {
        let done = self.drained();
        if done {
            self.drain_until_ms = None;
        }
        done
    }

    /// A draining root that has shipped everything tells Envoy it is done. Nothing while
    /// not draining.
    fn finish_drain(&mut self) {
        if self.end_drain_if_drained() {
            let _ = hostcalls::done();
        }
    }

    /// Sends what is due by the configured transport.
    fn send(&mut self) {
        match self.protocol {
            Protocol::Batch => self.ship(),
            Protocol::ExtProc => self.flush_streams(),
        }
    }

    /// Sends every batch that is due, as far as the in-flight bound and backoff allow.
    fn ship(&mut self) {
        let Some(worker) = &self.worker else { return };
        let Ok(mut worker) = worker.try_borrow_mut() else {
            return;
        };
        let worker = &mut *worker;
        let node = &worker.config.node;
        let timeout = Duration::from_millis(node.timeout_ms);
        loop {
            let now_ms = ns_to_ms(now_ns());
            let Some(batch) = worker.shipper.next_batch(now_ms) else {
                break;
            };
            let records = batch.records.to_string();
            // Envoy hashes a wasm call on its `:authority` (a RING_HASH or MAGLEV node
            // cluster then keeps each shard on one replica): the shard rides in it.
            let headers = batch_headers(
                node,
                &self.shard_targets,
                &batch,
                &records,
                &self.node_headers,
            );
            match hostcalls::dispatch_http_call(
                &node.cluster,
                headers,
                Some(&batch.body),
                vec![],
                timeout,
            ) {
                Ok(token) => worker.shipper.dispatched(token, batch, now_ms),
                Err(status) => worker
                    .shipper
                    .dispatch_failed(batch, refusal(status), now_ms),
            }
        }
    }

    /// ext_proc mode: opens a stream for every exchange that waits for one, sends what they
    /// hold, and cancels streams the node has not closed in time.
    fn flush_streams(&mut self) {
        let Some(worker) = &self.worker else { return };
        let Ok(mut worker) = worker.try_borrow_mut() else {
            return;
        };
        let now = now_ms();
        let service = self.grpc_service.as_str();
        let metadata = &self.node_headers;
        worker.streams.flush(
            now,
            || {
                let metadata = metadata
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_bytes()))
                    .collect();
                hostcalls::open_grpc_stream(service, EXT_PROC_SERVICE, EXT_PROC_METHOD, metadata)
                    .map_err(refusal)
            },
            |token, message| {
                hostcalls::send_grpc_stream_message(token, Some(message), false).is_ok()
            },
            |token| hostcalls::close_grpc_stream(token).is_ok(),
        );
        worker.streams.expire(now, |token| {
            let _ = hostcalls::cancel_grpc_stream(token);
        });
    }

    /// Failures and recoveries of delivery, in Envoy's log (rate-limited by `FailureLog`).
    fn write_log(&mut self) {
        let Some(worker) = &self.worker else { return };
        let Ok(mut worker) = worker.try_borrow_mut() else {
            return;
        };
        let log = match self.protocol {
            Protocol::Batch => &mut worker.shipper.log,
            Protocol::ExtProc => &mut worker.streams.log,
        };
        for (level, line) in log.take() {
            match level {
                Level::Warn => log::warn!("{line}"),
                Level::Info => log::info!("{line}"),
            }
        }
    }

    fn publish(&mut self) {
        let Some(worker) = &self.worker else { return };
        let Ok(worker) = worker.try_borrow() else {
            return;
        };
        let (mut counters, gauges) = match self.protocol {
            Protocol::Batch => (*worker.shipper.counters(), worker.shipper.gauges()),
            Protocol::ExtProc => (
                *worker.streams.counters(),
                Gauges {
                    extproc_streams_active: worker.streams.active(),
                    ..Gauges::default()
                },
            ),
        };
        worker.select.add_to(&mut counters);
        let gauges = Gauges {
            wasm_memory_bytes: linear_memory_bytes(),
            ..gauges
        };
        self.metrics.publish(&counters, &gauges);
    }
}

impl Context for MirrorRoot {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        // Reading response headers after a reset (no headers) traps in the SDK: look only
        // when there are some.
        let status = (num_headers > 0).then(|| {
            hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, ":status")
                .ok()
                .flatten()
                .and_then(|v| std::str::from_utf8(&v).ok()?.parse::<u32>().ok())
                .unwrap_or(0)
        });
        // The body is only worth reading when it may be Envoy's own failure reply.
        let body_prefix = match status {
            Some(status) if !(200..300).contains(&status) && body_size > 0 => {
                let len = body_size.min(REPLY_BODY_PREFIX);
                hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, len)
                    .ok()
                    .flatten()
                    .unwrap_or_default()
            }
            _ => Vec::new(),
        };
        let reply = Reply::classify(status, &body_prefix);
        if let Some(worker) = &self.worker {
            if let Ok(mut worker) = worker.try_borrow_mut() {
                worker.shipper.reply(token_id, reply, ns_to_ms(now_ns()));
            }
        }
        // A returning batch frees an in-flight slot: use it now rather than at the next tick.
        self.ship();
        self.finish_drain();
    }

    fn on_grpc_stream_close(&mut self, token_id: u32, status_code: u32) {
        if let Some(worker) = &self.worker {
            if let Ok(mut worker) = worker.try_borrow_mut() {
                worker.streams.closed(token_id, status_code, now_ms());
            }
        }
        self.finish_drain();
    }

    /// A `pluginConfig` change: Envoy keeps the VM, makes a new root context for the new
    /// configuration and asks this one to end. Exchanges that started under it still hold its
    /// worker and will add their records; some are queued or in flight. Returning false keeps
    /// this root (its tick, its calls' replies) until it calls `proxy_done`, once all of that
    /// is shipped. A new module destroys the VM instead, with whatever it holds.
    fn on_done(&mut self) -> bool {
        if self.worker.is_none() {
            return true;
        }
        self.drain_until_ms = Some(now_ms().saturating_add(DRAIN_MS));
        if let Some(Ok(mut w)) = self.worker.as_ref().map(|w| w.try_borrow_mut()) {
            w.shipper.flush_all();
        }
        // A new module destroys this VM with what it holds, without another call: this line
        // is all that says what was at stake then.
        log::info!(
            "oob-mirror: configuration replaced: shipping what this one holds ({}) before it \
             goes",
            self.held()
        );
        self.send();
        self.end_drain_if_drained()
    }
}

impl RootContext for MirrorRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let config = match Config::parse(&bytes) {
            Ok(config) => config,
            Err(err) => {
                error!("oob-mirror: invalid configuration: {err}");
                return false;
            }
        };
        self.node_headers =
            match resolve_headers(&config.node.headers, "VM environment", "vmConfig.env") {
                Ok(headers) => headers,
                Err(err) => {
                    error!("oob-mirror: invalid configuration: {err}");
                    return false;
                }
            };
        self.shard_targets = shard_targets(&config.node.authority, config.node.shards);
        // One line per worker that says where records go, for whoever reads Envoy's log.
        match config.node.protocol {
            Protocol::Batch if config.node.shards > 1 => log::info!(
                "oob-mirror: mirroring to cluster {} (POST {}, {} shards: authority \
                 shard-0.{} to shard-{}.{})",
                config.node.cluster,
                config.node.path,
                config.node.shards,
                config.node.authority,
                config.node.shards - 1,
                config.node.authority
            ),
            Protocol::Batch => log::info!(
                "oob-mirror: mirroring to cluster {} (POST {}, authority {})",
                config.node.cluster,
                config.node.path,
                config.node.authority
            ),
            Protocol::ExtProc => log::info!(
                "oob-mirror: mirroring to cluster {} (ext_proc: one {EXT_PROC_SERVICE}/{EXT_PROC_METHOD} \
                 gRPC stream per exchange)",
                config.node.cluster
            ),
        }
        let tick_ms = config.batch.flush_ms.clamp(1, MAX_TICK_MS);
        if self.worker.is_none() {
            self.metrics = Metrics::define();
        }
        // A bare cluster name is what the SDK's &str can always carry; the encoded GrpcService
        // is unambiguous (a name could happen to parse as one) and is ASCII for names up to 125
        // bytes.
        self.grpc_service = String::from_utf8(grpc_service(&config.node.cluster))
            .unwrap_or_else(|_| config.node.cluster.clone());
        let seed = random_seed();
        self.protocol = config.node.protocol;
        let redactor = Redactor::new(&config.redact, redaction_key(&config.redact.key_env));
        let worker = Worker::shared(config, seed, random_seed(), redactor);
        if self.protocol == Protocol::ExtProc {
            // One queue per VM: Envoy keys queues by VM id and name, and every worker's VM has
            // the same id.
            let name = format!("oob-mirror.wake.{seed:016x}");
            match hostcalls::register_shared_queue(&name) {
                Ok(queue) => {
                    if let Ok(mut worker) = worker.try_borrow_mut() {
                        worker.wake_queue = Some(queue);
                    }
                }
                Err(status) => log::warn!(
                    "oob-mirror: no wake-up queue ({status:?}): streams open on the tick"
                ),
            }
        }
        self.worker = Some(worker);
        self.set_tick_period(Duration::from_millis(tick_ms));
        true
    }

    fn on_tick(&mut self) {
        self.send();
        self.publish();
        self.write_log();
        self.finish_drain();
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        // The queue only carries wake-ups: empty it, then do what they were for.
        while let Ok(Some(_)) = hostcalls::dequeue_shared_queue(queue_id) {}
        self.flush_streams();
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Never None: the SDK panics on it. Without a worker the stream just passes through.
        let stream = match (&self.worker, self.protocol) {
            (Some(worker), Protocol::ExtProc) => {
                StreamContext::ExtProc(ExtProcStream::new(worker.clone()))
            }
            (worker, _) => StreamContext::Batch(MirrorStream::new(worker.clone())),
        };
        Some(Box::new(stream))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Why Envoy refused a call or a stream at once. An HTTP call to a cluster it does not have is
/// `BadArgument`; a gRPC stream to one is `InternalFailure`, which has other causes too, so the
/// line only suggests it.
fn refusal(status: Status) -> (Reason, String) {
    match status {
        Status::BadArgument => (Reason::UnknownCluster, String::new()),
        Status::InternalFailure => (
            Reason::Refused,
            " (InternalFailure: is there a cluster by that name?)".to_owned(),
        ),
        other => (Reason::Refused, format!(" ({other:?})")),
    }
}

/// The key of the redaction markers: the VM environment variable `name` (a Kubernetes Secret
/// through WasmPlugin `vmConfig.env`), else random for this VM, so markers then correlate only
/// within one worker and until it restarts.
fn redaction_key(name: &str) -> Vec<u8> {
    crate::node_env::redaction_key(name)
        .unwrap_or_else(|| (0..4).flat_map(|_| random_seed().to_le_bytes()).collect())
}
