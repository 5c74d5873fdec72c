//! The filter configuration: one per `DynamicModuleFilter` in Envoy's configuration, shared by
//! every worker. It keeps one [`Worker`] per Envoy worker thread (capture, selection and the
//! batch queue, each behind its own mutex, which only its worker and the main thread's tick
//! take), and ships their batches from the main thread, where Envoy lets a configuration make
//! HTTP callouts that outlive any stream. A thread of ours only wakes the main thread every
//! tick (the ABI's scheduler has no timer); it never touches a batch.

use super::abi::{self, HttpFilterConfigEnvoyPtr, ModuleBuffer, ModuleHttpHeader};
use super::host::{log, now_ms, random_seed};
use crate::accounting::{Counters, Gauges};
use crate::batch::{batch_headers, shard_targets};
use crate::capture_budget::CaptureBudget;
use crate::config::{Config, Protocol};
use crate::connection_facts::ConnectionFactsCache;
use crate::failure_log::{Level, Reason};
use crate::node_env::{redaction_key, resolve_headers};
use crate::redact::Redactor;
use crate::request_id::IdGenerator;
use crate::select::Selector;
use crate::shipper::{Reply, Shipper, REPLY_BODY_PREFIX};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// Upper bound on the tick period, as in the Proxy-Wasm build: full batches wait at most this
/// long for the main thread.
const MAX_TICK_MS: u64 = 10;

/// Slots for connection facts per worker (a few hundred bytes each when used).
const REMEMBERED_CONNECTIONS: usize = 1024;

const METRIC_PREFIX: &str = "oob_mirror.";

/// One Envoy worker's share: what the Proxy-Wasm build keeps per VM.
#[derive(Debug)]
pub struct Worker {
    pub shipper: Shipper,
    pub ids: IdGenerator,
    pub select: Selector,
    pub budget: CaptureBudget,
    pub connections: ConnectionFactsCache,
}

/// A mirroring configuration (a refused or unsupported one leaves the module passing traffic).
pub struct Mirror {
    pub config: Config,
    node_headers: Vec<(String, String)>,
    shard_targets: Vec<(String, String)>,
    workers: Vec<Mutex<Worker>>,
    /// Shippers of replaced configurations of the same node cluster, shipped here until idle.
    adopted: Mutex<Vec<Adopted>>,
    /// Callouts in flight: Envoy's callout id to the shipper and its token.
    callouts: Mutex<HashMap<u64, (Source, u32)>>,
    next_token: AtomicU32,
    next_adopted: AtomicU64,
    metrics: Mutex<Metrics>,
}

/// Runs a function on one shipper, locking it for that call.
type Reach<'a> = dyn Fn(&mut dyn FnMut(&mut Shipper)) + 'a;

/// Whose batch a callout carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Worker(usize),
    Adopted(u64),
}

/// A replaced configuration's shipper, with the counts its configuration last published (this
/// one publishes only what changes from there on: Envoy's metrics are shared by name).
struct Adopted {
    id: u64,
    shipper: Shipper,
    base: Published,
}

/// Counters and gauges as published, or as changes of them.
type Published = ([i128; COUNTERS], [i128; GAUGES]);

/// What a replaced configuration still had queued, for the next configuration that mirrors
/// to the same node cluster. A configuration goes when its last stream ends, and Envoy takes
/// its calls with it; its successor is already there.
struct Handoff {
    cluster: String,
    shipper: Shipper,
    base: Published,
}

static HANDOFF: Mutex<Vec<Handoff>> = Mutex::new(Vec::new());

/// A shipper's counters and gauges.
fn published(shipper: &Shipper) -> Published {
    let mut counters = [0i128; COUNTERS];
    let mut gauges = [0i128; GAUGES];
    for (out, (_, v)) in counters.iter_mut().zip(shipper.counters().named()) {
        *out = i128::from(v);
    }
    for (out, (_, v)) in gauges.iter_mut().zip(shipper.gauges().named()) {
        *out = i128::from(v);
    }
    (counters, gauges)
}

/// The configuration Envoy holds for this module.
pub struct Module {
    envoy: EnvoyConfig,
    pub mirror: Option<Mirror>,
    ticker: Option<Ticker>,
}

/// Envoy's configuration object: valid until `on_http_filter_config_destroy`, which drops the
/// [`Module`] holding it (after stopping the ticker, the only other thread that uses it).
#[derive(Clone, Copy)]
struct EnvoyConfig(HttpFilterConfigEnvoyPtr);
// SAFETY: Envoy's scheduler commit is documented for use from any thread (it posts to the main
// dispatcher); every other use of the pointer is on the main thread.
unsafe impl Send for EnvoyConfig {}
// SAFETY: as above.
unsafe impl Sync for EnvoyConfig {}

/// The scheduler Envoy made for this configuration, woken every tick by our thread.
struct Scheduler(abi::HttpFilterConfigSchedulerPtr);
// SAFETY: `scheduler_commit` is thread-safe (a post to the main thread's dispatcher); the
// pointer is deleted only after the ticker thread is joined.
unsafe impl Send for Scheduler {}

struct Ticker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    scheduler: abi::HttpFilterConfigSchedulerPtr,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        // SAFETY: made by scheduler_new for this configuration; the only other user, the
        // ticker thread, has ended.
        unsafe {
            abi::envoy_dynamic_module_callback_http_filter_config_scheduler_delete(self.scheduler)
        };
    }
}

impl Module {
    /// Reads the configuration. A refused one is logged once and leaves the module passing
    /// traffic untouched (fail open).
    pub fn new(envoy: HttpFilterConfigEnvoyPtr, config_bytes: &[u8]) -> Module {
        let envoy = EnvoyConfig(envoy);
        let mirror = match Mirror::new(envoy, config_bytes) {
            Ok(mirror) => Some(mirror),
            Err(why) => {
                log(
                    abi::LOG_ERROR,
                    &format!("oob-mirror: {why}; traffic passes unmirrored"),
                );
                None
            }
        };
        let ticker = mirror
            .as_ref()
            .map(|m| Ticker::start(envoy, m.config.batch.flush_ms.clamp(1, MAX_TICK_MS)));
        Module {
            envoy,
            mirror,
            ticker,
        }
    }

    /// A module that passes traffic and mirrors nothing.
    pub fn passing(envoy: HttpFilterConfigEnvoyPtr) -> Module {
        Module {
            envoy: EnvoyConfig(envoy),
            mirror: None,
            ticker: None,
        }
    }

    /// The main thread's tick: ships what is due, publishes metrics, writes the failure log.
    pub fn tick(&self) {
        if let Some(mirror) = &self.mirror {
            mirror.adopt();
            mirror.ship(self.envoy);
            mirror.publish(self.envoy);
            mirror.write_log();
        }
    }

    /// A callout's end.
    pub fn callout_done(&self, callout_id: u64, status: Option<u32>, body_prefix: &[u8]) {
        if let Some(mirror) = &self.mirror {
            mirror.callout_done(callout_id, status, body_prefix);
            // A returning batch frees an in-flight slot: use it now rather than at the tick.
            mirror.ship(self.envoy);
        }
    }
}

impl Drop for Module {
    fn drop(&mut self) {
        // Stop the ticker before anything else goes: it uses Envoy's configuration.
        self.ticker = None;
        if let Some(mirror) = &self.mirror {
            let (handed, abandoned) = mirror.hand_off(self.envoy);
            if handed > 0 || abandoned > 0 {
                log(
                    abi::LOG_WARN,
                    &format!(
                        "oob-mirror: configuration replaced or removed: {handed} records queued \
                         go to the next configuration mirroring to cluster {} (counted in \
                         queued_records until then), {abandoned} in flight are given up \
                         (counted in records_dropped_node_failure)",
                        mirror.config.node.cluster
                    ),
                );
            }
        }
    }
}

impl Ticker {
    fn start(envoy: EnvoyConfig, tick_ms: u64) -> Ticker {
        // SAFETY: the configuration pointer is live during config_new, where this runs.
        let scheduler =
            unsafe { abi::envoy_dynamic_module_callback_http_filter_config_scheduler_new(envoy.0) };
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            let wake = Scheduler(scheduler);
            std::thread::Builder::new()
                .name("oob-mirror-tick".to_owned())
                .spawn(move || {
                    let wake = wake;
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(tick_ms));
                        // SAFETY: the scheduler lives until this thread is joined.
                        unsafe {
                            abi::envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
                                wake.0, 0,
                            )
                        };
                    }
                })
                .ok()
        };
        if thread.is_none() {
            log(
                abi::LOG_ERROR,
                "oob-mirror: no tick thread: batches leave only as earlier ones return",
            );
        }
        Ticker {
            stop,
            thread,
            scheduler,
        }
    }
}

impl Mirror {
    fn new(envoy: EnvoyConfig, bytes: &[u8]) -> Result<Mirror, String> {
        let config = Config::parse(bytes).map_err(|e| format!("invalid configuration: {e}"))?;
        if config.node.protocol == Protocol::ExtProc {
            return Err(
                "node.protocol ext_proc is not supported by the dynamic module (the \
                        Proxy-Wasm build has it); use batch"
                    .to_owned(),
            );
        }
        let node_headers = resolve_headers(
            &config.node.headers,
            "process environment",
            "the proxy's env",
        )
        .map_err(|e| format!("invalid configuration: {e}"))?;
        let shard_targets = shard_targets(&config.node.authority, config.node.shards);
        // One redaction key for every worker: markers correlate across workers here (the
        // Proxy-Wasm build's random fallback is per VM).
        let key = redaction_key(&config.redact.key_env)
            .unwrap_or_else(|| (0..4).flat_map(|_| random_seed().to_le_bytes()).collect());
        let redactor = Redactor::new(&config.redact, key);
        // SAFETY: called on the main thread (config_new), as the ABI requires.
        let concurrency = unsafe { abi::envoy_dynamic_module_callback_get_concurrency() };
        let workers: Vec<Mutex<Worker>> = (0..concurrency.max(1))
            .map(|_| {
                Mutex::new(Worker {
                    shipper: Shipper::new(&config, redactor.clone()),
                    ids: IdGenerator::new(random_seed()),
                    select: Selector::new(&config, random_seed()),
                    budget: CaptureBudget::new(config.capture.max_buffered_bytes),
                    connections: ConnectionFactsCache::new(REMEMBERED_CONNECTIONS),
                })
            })
            .collect();
        let node = &config.node;
        let line = if node.shards > 1 {
            format!(
                "oob-mirror: mirroring to cluster {} (POST {}, {} shards: authority shard-0.{} to \
                 shard-{}.{}; dynamic module, {} workers)",
                node.cluster,
                node.path,
                node.shards,
                node.authority,
                node.shards - 1,
                node.authority,
                concurrency.max(1)
            )
        } else {
            format!(
                "oob-mirror: mirroring to cluster {} (POST {}, authority {}; dynamic module, {} \
                 workers)",
                node.cluster,
                node.path,
                node.authority,
                concurrency.max(1)
            )
        };
        log(abi::LOG_INFO, &line);
        Ok(Mirror {
            metrics: Mutex::new(Metrics::define(envoy, workers.len())),
            config,
            node_headers,
            shard_targets,
            workers,
            adopted: Mutex::new(Vec::new()),
            callouts: Mutex::new(HashMap::new()),
            next_token: AtomicU32::new(1),
            next_adopted: AtomicU64::new(0),
        })
    }

    /// The worker of Envoy's worker thread `index`.
    pub fn worker(&self, index: usize) -> Option<MutexGuard<'_, Worker>> {
        let len = self.workers.len().max(1);
        self.workers.get(index % len).map(lock)
    }

    /// Sends every batch that is due, as far as each shipper's in-flight bound and backoff
    /// allow: the workers', then those adopted from replaced configurations. A shipper's lock
    /// is not held across the callout, so Envoy calling back inline can never find it taken.
    fn ship(&self, envoy: EnvoyConfig) {
        for (index, worker) in self.workers.iter().enumerate() {
            self.ship_from(envoy, Source::Worker(index), &|f| {
                f(&mut lock(worker).shipper)
            });
        }
        let ids: Vec<u64> = lock(&self.adopted).iter().map(|a| a.id).collect();
        for id in ids {
            self.ship_from(envoy, Source::Adopted(id), &|f| {
                if let Some(a) = lock(&self.adopted).iter_mut().find(|a| a.id == id) {
                    f(&mut a.shipper);
                }
            });
        }
    }

    /// Ships the due batches of one shipper, which `with` reaches (locking it for one call).
    fn ship_from(&self, envoy: EnvoyConfig, source: Source, with: &Reach<'_>) {
        let node = &self.config.node;
        loop {
            let now = now_ms();
            let mut next = None;
            with(&mut |s| next = s.next_batch(now));
            let Some(batch) = next else {
                break;
            };
            let records = batch.records.to_string();
            let mut headers: Vec<ModuleHttpHeader> = batch_headers(
                node,
                &self.shard_targets,
                &batch,
                &records,
                &self.node_headers,
            )
            .into_iter()
            .map(|(n, v)| ModuleHttpHeader::of(n.as_bytes(), v.as_bytes()))
            .collect();
            let mut callout_id = 0u64;
            // SAFETY: main thread (tick or callout reply); every buffer lives until the call
            // returns, and Envoy copies what it keeps.
            let result = unsafe {
                abi::envoy_dynamic_module_callback_http_filter_config_http_callout(
                    envoy.0,
                    &mut callout_id,
                    ModuleBuffer::of(node.cluster.as_bytes()),
                    headers.as_mut_ptr(),
                    headers.len(),
                    ModuleBuffer::of(&batch.body),
                    node.timeout_ms,
                )
            };
            let now = now_ms();
            let mut batch = Some(batch);
            if result == abi::CALLOUT_INIT_SUCCESS {
                let token = self.next_token.fetch_add(1, Ordering::Relaxed);
                lock(&self.callouts).insert(callout_id, (source, token));
                with(&mut |s| {
                    if let Some(batch) = batch.take() {
                        s.dispatched(token, batch, now);
                    }
                });
            } else {
                with(&mut |s| {
                    if let Some(batch) = batch.take() {
                        s.dispatch_failed(batch, refusal(result), now);
                    }
                });
            }
        }
    }

    fn callout_done(&self, callout_id: u64, status: Option<u32>, body_prefix: &[u8]) {
        let Some((source, token)) = lock(&self.callouts).remove(&callout_id) else {
            return;
        };
        let reply = Reply::classify(status, body_prefix);
        match source {
            Source::Worker(index) => {
                if let Some(mut worker) = self.worker(index) {
                    worker.shipper.reply(token, reply, now_ms());
                }
            }
            Source::Adopted(id) => {
                if let Some(a) = lock(&self.adopted).iter_mut().find(|a| a.id == id) {
                    a.shipper.reply(token, reply, now_ms());
                }
            }
        }
    }

    /// Every worker's counters and gauges, summed with what adopted shippers did since they
    /// came, published to Envoy: nothing when no worker's changed since the last tick and
    /// nothing is adopted (most ticks of an idle or lightly loaded proxy).
    fn publish(&self, envoy: EnvoyConfig) {
        let mut metrics = lock(&self.metrics);
        let mut adopted = lock(&self.adopted);
        let mut changed = !adopted.is_empty();
        let snapshots: Vec<(Counters, Gauges)> = self
            .workers
            .iter()
            .zip(metrics.last_seen.iter_mut())
            .map(|(worker, last)| {
                let worker = lock(worker);
                let mut c = *worker.shipper.counters();
                worker.select.add_to(&mut c);
                let now = (c, worker.shipper.gauges());
                changed |= *last != Some(now);
                *last = Some(now);
                now
            })
            .collect();
        if !changed {
            return;
        }
        let (mut counters, mut gauges) = metrics.retired;
        for (c, g) in &snapshots {
            for (sum, (_, v)) in counters.iter_mut().zip(c.named()) {
                *sum += i128::from(v);
            }
            for (sum, (_, v)) in gauges.iter_mut().zip(g.named()) {
                *sum += i128::from(v);
            }
        }
        for a in adopted.iter() {
            let (c, g) = published(&a.shipper);
            for ((sum, now), base) in counters.iter_mut().zip(c).zip(a.base.0) {
                *sum += now - base;
            }
            for ((sum, now), base) in gauges.iter_mut().zip(g).zip(a.base.1) {
                *sum += now - base;
            }
        }
        // An adopted shipper with nothing left is done: what it did stays in `retired`.
        let mut retired = metrics.retired;
        adopted.retain(|a| {
            if !a.shipper.is_idle() {
                return true;
            }
            let (c, g) = published(&a.shipper);
            for ((sum, now), base) in retired.0.iter_mut().zip(c).zip(a.base.0) {
                *sum += now - base;
            }
            for ((sum, now), base) in retired.1.iter_mut().zip(g).zip(a.base.1) {
                *sum += now - base;
            }
            false
        });
        metrics.retired = retired;
        metrics.publish(envoy, &counters, &gauges);
    }

    /// Takes in what replaced configurations of the same node cluster left queued.
    fn adopt(&self) {
        let mut handoff = lock(&HANDOFF);
        if handoff.is_empty() {
            return;
        }
        let mut adopted = lock(&self.adopted);
        let mut kept = Vec::new();
        for h in handoff.drain(..) {
            if h.cluster == self.config.node.cluster {
                adopted.push(Adopted {
                    id: self.next_adopted.fetch_add(1, Ordering::Relaxed),
                    shipper: h.shipper,
                    base: h.base,
                });
            } else {
                kept.push(h);
            }
        }
        *handoff = kept;
    }

    /// This configuration goes: every queued record becomes due, the batches in flight are
    /// given up (Envoy cancels them with the configuration), the last counts are published,
    /// and whatever is still queued is handed to the next configuration of the node cluster.
    /// Returns the records handed over and those given up.
    fn hand_off(&self, envoy: EnvoyConfig) -> (u64, u64) {
        let mut abandoned = 0;
        let mut for_each = |s: &mut Shipper| {
            s.flush_all();
            abandoned += s.abandon_inflight();
        };
        for worker in &self.workers {
            for_each(&mut lock(worker).shipper);
        }
        for a in lock(&self.adopted).iter_mut() {
            for_each(&mut a.shipper);
        }
        self.publish(envoy);
        let mut handed = 0;
        let mut handoff = lock(&HANDOFF);
        let mut give = |shipper: Shipper| {
            if !shipper.is_idle() {
                handed += shipper.gauges().queued_records;
                let base = published(&shipper);
                handoff.push(Handoff {
                    cluster: self.config.node.cluster.clone(),
                    shipper,
                    base,
                });
            }
        };
        for worker in &self.workers {
            let fresh = Shipper::new(&self.config, None);
            give(std::mem::replace(&mut lock(worker).shipper, fresh));
        }
        for a in lock(&self.adopted).drain(..) {
            // Its base moves on to what this configuration published for it.
            give(a.shipper);
        }
        (handed, abandoned)
    }

    /// Failures and recoveries of delivery, in Envoy's log (rate-limited by `FailureLog`).
    fn write_log(&self) {
        let mut lines: Vec<(Level, String)> = Vec::new();
        for worker in &self.workers {
            lines.extend(lock(worker).shipper.log.take());
        }
        for a in lock(&self.adopted).iter_mut() {
            lines.extend(a.shipper.log.take());
        }
        for (level, line) in lines {
            let level = match level {
                Level::Warn => abi::LOG_WARN,
                Level::Info => abi::LOG_INFO,
            };
            log(level, &line);
        }
    }
}

/// A mutex's guard, poisoned or not: a panic caught at the ABI boundary leaves plain data
/// whose accounting is still worth publishing.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Why Envoy refused a callout at once.
fn refusal(result: u32) -> (Reason, String) {
    match result {
        abi::CALLOUT_INIT_CLUSTER_NOT_FOUND => (Reason::UnknownCluster, String::new()),
        abi::CALLOUT_INIT_MISSING_REQUIRED_HEADERS => {
            (Reason::Refused, " (missing required headers)".to_owned())
        }
        other => (
            Reason::Refused,
            format!(" (callout refused: {other}, e.g. no healthy host)"),
        ),
    }
}

const COUNTERS: usize = 28;
const GAUGES: usize = 5;

/// Envoy's ids of the module's metrics and what was last published: counters and gauges go as
/// changes of the sums over workers (and adopted shippers).
struct Metrics {
    counter_ids: Vec<Option<usize>>,
    gauge_ids: Vec<Option<usize>>,
    published_counters: [i128; COUNTERS],
    published_gauges: [i128; GAUGES],
    /// Each worker's counters and gauges at the last tick.
    last_seen: Vec<Option<(Counters, Gauges)>>,
    /// What adopted shippers that are done did here.
    retired: Published,
}

impl Metrics {
    /// Defines every metric; Envoy allows it only while the configuration is being made.
    fn define(envoy: EnvoyConfig, workers: usize) -> Metrics {
        let define = |name: &str, gauge: bool| {
            let full = format!("{METRIC_PREFIX}{name}");
            let mut id = 0usize;
            // SAFETY: config_new on the main thread; the name lives for the call.
            let result = unsafe {
                if gauge {
                    abi::envoy_dynamic_module_callback_http_filter_config_define_gauge(
                        envoy.0,
                        ModuleBuffer::of(full.as_bytes()),
                        std::ptr::null_mut(),
                        0,
                        &mut id,
                    )
                } else {
                    abi::envoy_dynamic_module_callback_http_filter_config_define_counter(
                        envoy.0,
                        ModuleBuffer::of(full.as_bytes()),
                        std::ptr::null_mut(),
                        0,
                        &mut id,
                    )
                }
            };
            (result == abi::METRICS_SUCCESS).then_some(id)
        };
        Metrics {
            counter_ids: Counters::default()
                .named()
                .iter()
                .map(|(n, _)| define(n, false))
                .collect(),
            gauge_ids: Gauges::default()
                .named()
                .iter()
                .map(|(n, _)| define(n, true))
                .collect(),
            published_counters: [0; COUNTERS],
            published_gauges: [0; GAUGES],
            last_seen: vec![None; workers],
            retired: ([0; COUNTERS], [0; GAUGES]),
        }
    }

    /// Publishes the changes from what was published last. Counters only grow (a smaller sum
    /// is not published); gauges move both ways, as changes: a configuration being replaced
    /// and its successor share Envoy's metrics (they are by name), each adds its own.
    fn publish(
        &mut self,
        envoy: EnvoyConfig,
        counters: &[i128; COUNTERS],
        gauges: &[i128; GAUGES],
    ) {
        for ((id, new), old) in self
            .counter_ids
            .iter()
            .zip(counters)
            .zip(self.published_counters.iter_mut())
        {
            if let (Some(id), true) = (id, new > old) {
                let delta = u64::try_from(*new - *old).unwrap_or(u64::MAX);
                // SAFETY: main thread; an id Envoy gave for this configuration.
                unsafe {
                    abi::envoy_dynamic_module_callback_http_filter_config_increment_counter(
                        envoy.0,
                        *id,
                        std::ptr::null_mut(),
                        0,
                        delta,
                    )
                };
                *old = *new;
            }
        }
        for ((id, new), old) in self
            .gauge_ids
            .iter()
            .zip(gauges)
            .zip(self.published_gauges.iter_mut())
        {
            if let (Some(id), true) = (id, new != old) {
                let delta = u64::try_from((*new - *old).unsigned_abs()).unwrap_or(u64::MAX);
                // SAFETY: main thread; an id Envoy gave for this configuration.
                unsafe {
                    if new > old {
                        abi::envoy_dynamic_module_callback_http_filter_config_increment_gauge(
                            envoy.0,
                            *id,
                            std::ptr::null_mut(),
                            0,
                            delta,
                        )
                    } else {
                        abi::envoy_dynamic_module_callback_http_filter_config_decrement_gauge(
                            envoy.0,
                            *id,
                            std::ptr::null_mut(),
                            0,
                            delta,
                        )
                    }
                };
                *old = *new;
            }
        }
    }
}

/// The body prefix `Reply::classify` needs, from Envoy's response chunks.
pub fn reply_prefix(chunks: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(REPLY_BODY_PREFIX);
    for chunk in chunks {
        let room = REPLY_BODY_PREFIX - out.len();
        out.extend_from_slice(chunk.get(..room.min(chunk.len())).unwrap_or_default());
        if out.len() == REPLY_BODY_PREFIX {
            break;
        }
    }
    out
}
