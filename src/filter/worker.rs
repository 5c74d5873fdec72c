//! State shared by the root context and the stream contexts of one worker's VM.

use crate::capture_budget::CaptureBudget;
use crate::config::Config;
use crate::connection_facts::ConnectionFactsCache;
use crate::extproc::streams::Streams;
use crate::redact::Redactor;
use crate::request_id::IdGenerator;
use crate::select::Selector;
use crate::shipper::Shipper;
use std::cell::RefCell;
use std::rc::Rc;

#[derive(Debug)]
pub struct Worker {
    pub config: Config,
    pub shipper: Shipper,
    pub ids: IdGenerator,
    /// Which exchanges are mirrored (scope, sampling, shedding).
    pub select: Selector,
    /// Replaces secrets before they leave (ext_proc mode uses it per message; the shipper has
    /// its own copy).
    pub redactor: Option<Redactor>,
    pub budget: CaptureBudget,
    pub connections: ConnectionFactsCache,
    /// The ext_proc transport (used when `node.protocol` is `ext_proc`).
    pub streams: Streams,
    /// The shared queue a stream context writes to so the root opens streams without waiting
    /// for its tick.
    pub wake_queue: Option<u32>,
}

/// One VM runs on one thread: `Rc<RefCell>` is the whole synchronisation needed.
pub type SharedWorker = Rc<RefCell<Worker>>;

/// Slots for connection facts per worker (a few hundred bytes each when used).
const REMEMBERED_CONNECTIONS: usize = 1024;

impl Worker {
    /// `sample_seed` is drawn apart from the ids' `seed`: ids show theirs, sampling must not be
    /// predictable.
    pub fn shared(
        config: Config,
        seed: u64,
        sample_seed: u64,
        redactor: Option<Redactor>,
    ) -> SharedWorker {
        Rc::new(RefCell::new(Worker {
            shipper: Shipper::new(&config, redactor.clone()),
            redactor,
            ids: IdGenerator::new(seed),
            select: Selector::new(&config, sample_seed),
            budget: CaptureBudget::new(config.capture.max_buffered_bytes),
            connections: ConnectionFactsCache::new(REMEMBERED_CONNECTIONS),
            streams: Streams::new(
                config.ext_proc.max_streams,
                config.node.timeout_ms,
                &config.node.cluster,
            ),
            wake_queue: None,
            config,
        }))
    }
}
