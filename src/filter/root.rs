//! The root context of a worker: reads the configuration, owns the batch transport (only a
//! root context's calls outlive the stream that queued a record) and publishes metrics.

use super::host::{linear_memory_bytes, now_ns, ns_to_ms, random_seed};
use super::metrics::Metrics;
use super::stream::MirrorStream;
use super::worker::{SharedWorker, Worker};
use crate::accounting::Gauges;
use crate::config::Config;
use crate::shipper::{Reply, REPLY_BODY_PREFIX};
use log::error;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, MapType};
use std::time::Duration;

/// Upper bound on the tick period: full batches wait at most this long for the root context.
const MAX_TICK_MS: u64 = 10;

#[derive(Default)]
pub struct MirrorRoot {
    worker: Option<SharedWorker>,
    metrics: Metrics,
}

impl MirrorRoot {
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
            let headers = vec![
                (":method", "POST"),
                (":path", node.path.as_str()),
                (":authority", node.authority.as_str()),
                ("content-type", "application/msgpack"),
                ("x-oob-mirror-version", "1"),
                ("x-oob-mirror-records", records.as_str()),
            ];
            match hostcalls::dispatch_http_call(
                &node.cluster,
                headers,
                Some(&batch.body),
                vec![],
                timeout,
            ) {
                Ok(token) => worker.shipper.dispatched(token, batch, now_ms),
                Err(status) => {
                    log::debug!(
                        "oob-mirror: dispatch to {} refused: {status:?}",
                        node.cluster
                    );
                    worker.shipper.dispatch_failed(batch, now_ms);
                }
            }
        }
    }

    fn publish(&mut self) {
        let Some(worker) = &self.worker else { return };
        let Ok(worker) = worker.try_borrow() else {
            return;
        };
        let gauges = Gauges {
            wasm_memory_bytes: linear_memory_bytes(),
            ..worker.shipper.gauges()
        };
        self.metrics.publish(worker.shipper.counters(), &gauges);
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
        // One line per worker that says where records go, for whoever reads Envoy's log.
        log::info!(
            "oob-mirror: mirroring to cluster {} (POST {}, authority {})",
            config.node.cluster,
            config.node.path,
            config.node.authority
        );
        let tick_ms = config.batch.flush_ms.clamp(1, MAX_TICK_MS);
        if self.worker.is_none() {
            self.metrics = Metrics::define();
        }
        self.worker = Some(Worker::shared(config, random_seed()));
        self.set_tick_period(Duration::from_millis(tick_ms));
        true
    }

    fn on_tick(&mut self) {
        self.ship();
        self.publish();
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Never None: the SDK panics on it. Without a worker the stream just passes through.
        Some(Box::new(MirrorStream::new(self.worker.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
