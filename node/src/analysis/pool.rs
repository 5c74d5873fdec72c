//! The analysis threads. Receiving never waits for analysis: records are
//! paired under a short lock and the exchanges queued; each thread has its
//! own libmodsecurity engine. The queue is bounded by [`Detector::admit`]:
//! past `queue` exchanges waiting, the node answers 503 and the filter backs
//! off, instead of the node queueing without bound.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{classes, RuleMatch, RulesConfig};
use crate::intake::record::Record;
use crate::pairing::{Exchange, Pairer, Pairing};
use crate::redact::Sealer;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// Analysis threads (default: one per core).
    pub threads: usize,
    /// Exchanges waiting for analysis before batches are refused with 503.
    pub queue: usize,
    /// Records waiting for their other half, at most.
    pub max_pending: usize,
    /// How long a record waits for its other half.
    pub pair_timeout: Duration,
    /// Largest decompressed body analysed.
    pub max_decompressed: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            queue: 1024,
            max_pending: 10_000,
            pair_timeout: Duration::from_secs(10),
            max_decompressed: 1 << 20,
        }
    }
}

/// One exchange where at least one rule matched.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    pub id: String,
    /// The request's `x-request-id`.
    pub request_id: Option<String>,
    pub ts_ns: u64,
    pub source: Option<String>,
    pub method: String,
    pub authority: Option<String>,
    pub path: String,
    /// `None` when analysed without its response.
    pub status: Option<u16>,
    pub rules: Vec<RuleMatch>,
    /// Its attack classes, the primary one first ([`classes::of_rules`]).
    pub classes: Vec<&'static str>,
    /// The exchange as analysed (bodies decompressed).
    pub exchange: Exchange,
}

impl Detection {
    /// The primary attack class.
    pub fn class(&self) -> &'static str {
        self.classes.first().copied().unwrap_or("other")
    }
}

pub type DetectionHook = Arc<dyn Fn(&Detection) + Send + Sync>;

/// Called with every exchange analysed (attacks or not), sealed, on its analysis thread.
pub type ExchangeHook = Arc<dyn Fn(&Exchange) + Send + Sync>;

/// Counters, as `/metrics` shows them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub records_received: u64,
    pub extproc_streams: u64,
    pub decode_errors: u64,
    pub batches_refused_busy: u64,
    pub exchanges_analysed: u64,
    pub exchanges_with_attacks: u64,
    pub paired: u64,
    pub unpaired_requests: u64,
    pub unpaired_responses: u64,
    pub bodies_cut: u64,
    pub analysis_ns: u64,
    pub queued: u64,
    pub pending: u64,
    pub threads: u64,
    pub matches_by_rule: BTreeMap<u32, u64>,
}

struct Job {
    exchange: Exchange,
}

#[derive(Default)]
struct Counters {
    records_received: AtomicU64,
    extproc_streams: AtomicU64,
    decode_errors: AtomicU64,
    batches_refused_busy: AtomicU64,
    exchanges_analysed: AtomicU64,
    exchanges_with_attacks: AtomicU64,
    bodies_cut: AtomicU64,
    analysis_ns: AtomicU64,
}

struct Shared {
    config: PoolConfig,
    pairer: Mutex<Pairer>,
    counters: Counters,
    queued: AtomicUsize,
    matches: Mutex<BTreeMap<u32, u64>>,
    hook: Option<DetectionHook>,
    /// Every analysed exchange (API discovery, crate::inventory); set once.
    on_exchange: OnceLock<ExchangeHook>,
    /// Values the filter left in clear become markers once analysed (crate::redact).
    sealer: Sealer,
    started: Instant,
    stop: AtomicBool,
}

pub struct Detector {
    shared: Arc<Shared>,
    tx: Option<mpsc::Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Detector {
    /// Starts the threads; each loads the rules, and a rule error is
    /// returned here, before anything is received.
    pub fn start(
        rules: &RulesConfig,
        config: PoolConfig,
        hook: Option<DetectionHook>,
    ) -> Result<Detector, String> {
        let shared = Arc::new(Shared {
            pairer: Mutex::new(Pairer::new(
                config.max_pending,
                u64::try_from(config.pair_timeout.as_millis()).unwrap_or(u64::MAX),
            )),
            config: config.clone(),
            counters: Counters::default(),
            queued: AtomicUsize::new(0),
            matches: Mutex::new(BTreeMap::new()),
            hook,
            on_exchange: OnceLock::new(),
            sealer: Sealer::from_env(),
            started: Instant::now(),
            stop: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let mut threads = Vec::new();
        let mut detector = Detector {
            shared: Arc::clone(&shared),
            tx: Some(tx),
            threads: Vec::new(),
        };
        for n in 0..config.threads.max(1) {
            let (shared, rx, ready, rules) = (
                Arc::clone(&shared),
                Arc::clone(&rx),
                ready_tx.clone(),
                rules.clone(),
            );
            let spawned = std::thread::Builder::new()
                .name(format!("analysis-{n}"))
                .spawn(move || {
                    let engine = match rules.engine() {
                        Ok(engine) => {
                            let _ = ready.send(Ok(()));
                            engine
                        }
                        Err(e) => {
                            let _ = ready.send(Err(e));
                            return;
                        }
                    };
                    drop(ready);
                    loop {
                        // The lock is held only to take one job.
                        let job = lock(&rx).recv();
                        let Ok(job) = job else { break };
                        shared.analyse(&engine, job.exchange);
                    }
                });
            match spawned {
                Ok(handle) => threads.push(handle),
                Err(e) => return Err(format!("cannot start an analysis thread: {e}")),
            }
        }
        drop(ready_tx);
        detector.threads = threads;
        for _ in 0..detector.threads.len() {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err("an analysis thread died while loading rules".into()),
            }
        }
        // Lets out requests whose response did not come in time.
        let reaper = {
            let shared = Arc::clone(&shared);
            let tx = detector.tx.clone();
            std::thread::Builder::new()
                .name("pairing-timeouts".into())
                .spawn(move || {
                    while !shared.stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(50));
                        let ready = lock(&shared.pairer).expire(shared.now_ms());
                        if let Some(tx) = &tx {
                            shared.enqueue(tx, ready);
                        }
                    }
                })
                .map_err(|e| format!("cannot start the pairing thread: {e}"))?
        };
        detector.threads.push(reaper);
        Ok(detector)
    }

    /// Whether a new batch can be taken; counts a refusal when not.
    pub fn admit(&self) -> bool {
        let ok = self.shared.queued.load(Ordering::Relaxed) < self.shared.config.queue;
        if !ok {
            self.shared
                .counters
                .batches_refused_busy
                .fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    /// Hands every exchange analysed from now on, sealed, to `hook` (once; `false` if a hook
    /// was set already).
    pub fn on_exchange(&self, hook: ExchangeHook) -> bool {
        self.shared.on_exchange.set(hook).is_ok()
    }

    pub fn count_decode_error(&self) {
        self.shared
            .counters
            .decode_errors
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Takes the records of one batch.
    pub fn submit_records(&self, records: Vec<Record>) {
        let Some(tx) = &self.tx else { return };
        self.shared
            .counters
            .records_received
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        let now = self.shared.now_ms();
        let mut ready = Vec::new();
        {
            let mut pairer = lock(&self.shared.pairer);
            for record in records {
                ready.extend(pairer.add(record, now));
            }
        }
        self.shared.enqueue(tx, ready);
    }

    /// Takes one ext_proc stream: a whole exchange, or why it was unreadable.
    pub fn submit_extproc(&self, stream: Result<Exchange, String>) {
        let c = &self.shared.counters;
        match stream {
            Ok(exchange) => {
                c.extproc_streams.fetch_add(1, Ordering::Relaxed);
                if let Some(tx) = &self.tx {
                    self.shared.enqueue(tx, vec![(exchange, Pairing::Paired)]);
                }
            }
            Err(_) => {
                c.decode_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The markers' key: what leaves the node shows a marked value only as its marker.
    pub fn sealer(&self) -> &Sealer {
        &self.shared.sealer
    }

    pub fn snapshot(&self) -> Snapshot {
        let c = &self.shared.counters;
        let (counts, pending) = {
            let p = lock(&self.shared.pairer);
            (p.counts, p.len())
        };
        Snapshot {
            records_received: c.records_received.load(Ordering::Relaxed),
            extproc_streams: c.extproc_streams.load(Ordering::Relaxed),
            decode_errors: c.decode_errors.load(Ordering::Relaxed),
            batches_refused_busy: c.batches_refused_busy.load(Ordering::Relaxed),
            exchanges_analysed: c.exchanges_analysed.load(Ordering::Relaxed),
            exchanges_with_attacks: c.exchanges_with_attacks.load(Ordering::Relaxed),
            paired: counts.paired,
            unpaired_requests: counts.unpaired_requests,
            unpaired_responses: counts.unpaired_responses,
            bodies_cut: c.bodies_cut.load(Ordering::Relaxed),
            analysis_ns: c.analysis_ns.load(Ordering::Relaxed),
            queued: self.shared.queued.load(Ordering::Relaxed) as u64,
            pending: pending as u64,
            threads: self.shared.config.threads.max(1) as u64,
            matches_by_rule: lock(&self.shared.matches).clone(),
        }
    }
}

impl Drop for Detector {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        // Closing the channel ends the workers once the queue is drained.
        self.tx = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Shared {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn enqueue(&self, tx: &mpsc::Sender<Job>, ready: Vec<(Exchange, Pairing)>) {
        for (exchange, _) in ready {
            self.queued.fetch_add(1, Ordering::Relaxed);
            if tx.send(Job { exchange }).is_err() {
                self.queued.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    fn analyse(&self, engine: &super::modsec::Engine, mut exchange: Exchange) {
        let started = Instant::now();
        let cut = exchange.decompress(self.config.max_decompressed);
        let mut rules = engine.analyse(&exchange);
        // Before anything of the exchange or its matches leaves this function.
        self.sealer.seal(&mut exchange, &mut rules);
        let c = &self.counters;
        c.analysis_ns.fetch_add(
            u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        c.bodies_cut.fetch_add(cut as u64, Ordering::Relaxed);
        if let Some(on_exchange) = self.on_exchange.get() {
            on_exchange(&exchange);
        }
        if !rules.is_empty() {
            {
                let mut matches = lock(&self.matches);
                for m in &rules {
                    *matches.entry(m.id).or_insert(0) += 1;
                }
            }
            let detection = Detection {
                status: exchange.response.as_ref().map(|r| r.status),
                id: exchange.id.clone(),
                request_id: exchange.request_id.clone(),
                ts_ns: exchange.ts_ns,
                source: exchange.source.clone(),
                method: exchange.method.clone(),
                authority: exchange.authority.clone(),
                path: exchange.path.clone(),
                classes: classes::of_rules(&rules),
                rules,
                exchange,
            };
            if let Some(hook) = &self.hook {
                hook(&detection);
            }
            c.exchanges_with_attacks.fetch_add(1, Ordering::Relaxed);
        }
        // Counted last, so a reader who sees N analysed sees their detections.
        c.exchanges_analysed.fetch_add(1, Ordering::Relaxed);
        self.queued.fetch_sub(1, Ordering::Relaxed);
    }
}
