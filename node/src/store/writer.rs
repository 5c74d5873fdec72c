//! The writer: one thread owning the write connection, fed by a bounded channel the analysis
//! threads never wait on.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{Attack, Store, StoreConfig, StoreError};

pub(crate) fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// The writer's counters, as `/metrics` shows them ([`super::metrics`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreCounters {
    /// Attacks written (in committed transactions; a duplicate id counts, and is ignored).
    pub written: u64,
    /// Attacks dropped because the queue was full.
    pub dropped_queue_full: u64,
    /// Attacks lost because writing them failed (after one reconnect and retry).
    pub failed: u64,
    /// Times writes started failing.
    pub outages: u64,
    /// Attacks deleted by retention.
    pub pruned: u64,
    /// Attacks in the queue now.
    pub queued: u64,
    /// Attacks taken from the queue and being written now.
    pub writing: u64,
    /// The last write failed (an outage is going on).
    pub failing: bool,
}

#[derive(Default)]
struct Shared {
    accepted: AtomicU64,
    /// Taken from the queue by the writer.
    taken: AtomicU64,
    written: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
    outages: AtomicU64,
    pruned: AtomicU64,
    failing: AtomicBool,
    /// The handle is being dropped: during an outage, what is left is not tried.
    closing: AtomicBool,
    /// Attacks taken from the queue and written or failed; `flush` waits on it.
    done: Mutex<u64>,
    done_cv: Condvar,
}

/// The analysis side's handle: [`StoreWriter::submit`] never blocks.
pub struct StoreWriter {
    tx: Option<SyncSender<Attack>>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl StoreWriter {
    /// Opens the store and applies its migrations on the writer's own thread (safe to call
    /// from anywhere), and returns once that is done: an error here is a store that cannot
    /// work (a bad path, no database, a schema too new).
    pub fn spawn(cfg: StoreConfig) -> Result<StoreWriter, StoreError> {
        let (tx, rx) = mpsc::sync_channel::<Attack>(cfg.queue.max(1));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), StoreError>>();
        let shared = Arc::new(Shared::default());
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || {
                let store = cfg.open().and_then(|mut s| s.migrate().map(|()| s));
                match store {
                    Ok(store) => {
                        let _ = ready_tx.send(Ok(()));
                        Writer::new(cfg, thread_shared, Some(store)).run(&rx);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| StoreError::Backend(format!("starting the writer thread: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(StoreWriter {
                tx: Some(tx),
                shared,
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(StoreError::Closed)
            }
        }
    }

    /// Queues the attack for writing; when the queue is full it is dropped and counted.
    pub fn submit(&self, attack: Attack) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(attack) {
            Ok(()) => {
                self.shared.accepted.fetch_add(1, Ordering::SeqCst);
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn counters(&self) -> StoreCounters {
        let s = &self.shared;
        let done = *s.done.lock().unwrap_or_else(PoisonError::into_inner);
        let taken = s.taken.load(Ordering::SeqCst);
        let accepted = s.accepted.load(Ordering::SeqCst);
        StoreCounters {
            written: s.written.load(Ordering::Relaxed),
            dropped_queue_full: s.dropped.load(Ordering::Relaxed),
            failed: s.failed.load(Ordering::Relaxed),
            outages: s.outages.load(Ordering::Relaxed),
            pruned: s.pruned.load(Ordering::Relaxed),
            queued: accepted.saturating_sub(taken),
            writing: taken.saturating_sub(done),
            failing: s.failing.load(Ordering::Relaxed),
        }
    }

    /// Waits until every attack submitted before the call is written or failed; false when
    /// `timeout` passed first.
    pub fn flush(&self, timeout: Duration) -> bool {
        let target = self.shared.accepted.load(Ordering::SeqCst);
        let deadline = Instant::now() + timeout;
        let mut done = self
            .shared
            .done
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while *done < target {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            done = self
                .shared
                .done_cv
                .wait_timeout(done, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }
}

impl Drop for StoreWriter {
    /// Closes the queue; the thread writes what is in it (unless the store is out), then
    /// stops, and is joined.
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Outage {
    since: Instant,
    last_line: Instant,
    /// Lost since the last line.
    lost: u64,
}

struct Writer {
    cfg: StoreConfig,
    shared: Arc<Shared>,
    store: Option<Box<dyn Store>>,
    outage: Option<Outage>,
}

impl Writer {
    fn new(cfg: StoreConfig, shared: Arc<Shared>, store: Option<Box<dyn Store>>) -> Writer {
        Writer {
            cfg,
            shared,
            store,
            outage: None,
        }
    }

    fn run(mut self, rx: &mpsc::Receiver<Attack>) {
        let mut next_prune = Instant::now();
        let mut batch: Vec<Attack> = Vec::with_capacity(self.cfg.batch.max(1));
        let mut open = true;
        while open {
            if Instant::now() >= next_prune {
                self.prune();
                next_prune = Instant::now() + self.cfg.prune_every;
            }
            let wait = next_prune.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(a) => batch.push(a),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
            }
            while batch.len() < self.cfg.batch.max(1) {
                match rx.try_recv() {
                    Ok(a) => batch.push(a),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            let n = batch.len() as u64;
            self.shared.taken.fetch_add(n, Ordering::SeqCst);
            self.write(&batch);
            batch.clear();
            let mut done = self
                .shared
                .done
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            *done += n;
            self.shared.done_cv.notify_all();
        }
    }

    /// The store, reopened (and migrated) if the last use failed.
    fn store(&mut self) -> Result<&mut Box<dyn Store>, StoreError> {
        if self.store.is_none() {
            let mut s = self.cfg.open()?;
            s.migrate()?;
            self.store = Some(s);
        }
        self.store.as_mut().ok_or(StoreError::Closed)
    }

    /// Runs `op` on the store; after a failure, once more on a new connection.
    fn with_retry<T>(
        &mut self,
        mut op: impl FnMut(&mut dyn Store) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let first = match self.store() {
            Ok(s) => op(s.as_mut()),
            Err(e) => Err(e),
        };
        match first {
            Ok(v) => Ok(v),
            Err(_) => {
                self.store = None;
                let second = self.store().and_then(|s| op(s.as_mut()));
                if second.is_err() {
                    self.store = None;
                }
                second
            }
        }
    }

    fn write(&mut self, batch: &[Attack]) {
        if batch.is_empty() {
            return;
        }
        let n = batch.len() as u64;
        if self.outage.is_some() && self.shared.closing.load(Ordering::SeqCst) {
            // Shutting down with the store out: lost, without a wait per batch.
            self.shared.failed.fetch_add(n, Ordering::Relaxed);
            return;
        }
        match self.with_retry(|s| s.insert(batch)) {
            Ok(()) => {
                self.shared.written.fetch_add(n, Ordering::Relaxed);
                self.resumed();
            }
            Err(e) => {
                self.shared.failed.fetch_add(n, Ordering::Relaxed);
                self.failing(&e, n);
            }
        }
    }

    fn prune(&mut self) {
        let (age, count) = (self.cfg.max_age, self.cfg.max_attacks);
        if age.is_none() && count.is_none() {
            return;
        }
        let age_ns = age.map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        match self.with_retry(|s| s.prune(age_ns, count, now_ns())) {
            Ok(n) => {
                self.shared.pruned.fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => self.failing(&e, 0),
        }
    }

    fn failing(&mut self, e: &StoreError, lost: u64) {
        let now = Instant::now();
        self.shared.failing.store(true, Ordering::Relaxed);
        match &mut self.outage {
            None => {
                self.shared.outages.fetch_add(1, Ordering::Relaxed);
                self.cfg.log(&format!(
                    "oob-mirror-node: {e}; writes failing, {lost} attacks lost since the last line"
                ));
                self.outage = Some(Outage {
                    since: now,
                    last_line: now,
                    lost: 0,
                });
            }
            Some(o) => {
                o.lost += lost;
                if now.duration_since(o.last_line) >= self.cfg.outage_log_every {
                    let lost = std::mem::take(&mut o.lost);
                    o.last_line = now;
                    self.cfg.log(&format!(
                        "oob-mirror-node: {e}; writes still failing, {lost} attacks lost since the last line"
                    ));
                }
            }
        }
    }

    fn resumed(&mut self) {
        self.shared.failing.store(false, Ordering::Relaxed);
        if let Some(o) = self.outage.take() {
            self.cfg.log(&format!(
                "oob-mirror-node: store: writes resumed after {} s, {} attacks lost since the last line",
                o.since.elapsed().as_secs(),
                o.lost
            ));
        }
    }
}
