//! The reader: one thread with its own connection, answering async callers over oneshot
//! channels, so a request handler awaits the store without blocking its runtime.

use std::sync::mpsc::{self, SyncSender, TrySendError};

use tokio::sync::oneshot;

use super::{
    Attack, AttackFilter, AttackPage, GroupPage, InventoryData, InventoryFilter, Stats, Store,
    StoreConfig, StoreError,
};

/// Reads waiting for the reader thread, at most; past that a read fails with
/// [`StoreError::Busy`] rather than queueing without bound.
const QUEUE: usize = 256;

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

enum Request {
    List(AttackFilter, u32, u64, Reply<AttackPage>),
    Groups(AttackFilter, u32, u32, u64, Reply<GroupPage>),
    Get(String, Reply<Option<Attack>>),
    Stats(AttackFilter, Reply<Stats>),
    Inventory(InventoryFilter, Reply<InventoryData>),
}

/// Cheap to clone; the thread stops when the last clone is dropped.
#[derive(Clone)]
pub struct StoreReader {
    tx: SyncSender<Request>,
}

impl StoreReader {
    /// Opens the store (and applies its migrations, which is idempotent) on the reader's own
    /// thread; returns once it is open.
    pub fn spawn(cfg: StoreConfig) -> Result<StoreReader, StoreError> {
        let (tx, rx) = mpsc::sync_channel::<Request>(QUEUE);
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), StoreError>>();
        std::thread::Builder::new()
            .name("store-reader".into())
            .spawn(move || {
                let mut store = match cfg.open().and_then(|mut s| s.migrate().map(|()| s)) {
                    Ok(s) => {
                        let _ = ready_tx.send(Ok(()));
                        Some(s)
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                while let Ok(req) = rx.recv() {
                    serve(&cfg, &mut store, req);
                }
            })
            .map_err(|e| StoreError::Backend(format!("starting the reader thread: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(StoreReader { tx }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(StoreError::Closed),
        }
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        match self.tx.try_send(make(reply)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(StoreError::Busy),
            Err(TrySendError::Disconnected(_)) => return Err(StoreError::Closed),
        }
        answer.await.map_err(|_| StoreError::Closed)?
    }

    pub async fn list(
        &self,
        f: AttackFilter,
        limit: u32,
        offset: u64,
    ) -> Result<AttackPage, StoreError> {
        self.ask(|r| Request::List(f, limit, offset, r)).await
    }

    pub async fn groups(
        &self,
        f: AttackFilter,
        window_secs: u32,
        limit: u32,
        offset: u64,
    ) -> Result<GroupPage, StoreError> {
        self.ask(|r| Request::Groups(f, window_secs, limit, offset, r))
            .await
    }

    pub async fn get(&self, id: String) -> Result<Option<Attack>, StoreError> {
        self.ask(|r| Request::Get(id, r)).await
    }

    pub async fn stats(&self, f: AttackFilter) -> Result<Stats, StoreError> {
        self.ask(|r| Request::Stats(f, r)).await
    }

    /// The inventory's endpoints `f` selects.
    pub async fn inventory(&self, f: InventoryFilter) -> Result<InventoryData, StoreError> {
        self.ask(|r| Request::Inventory(f, r)).await
    }
}

/// Runs `op`; after a failure, once more on a new connection (the old one may be dead: a
/// restarted PostgreSQL).
fn retry<T>(
    cfg: &StoreConfig,
    store: &mut Option<Box<dyn Store>>,
    mut op: impl FnMut(&mut dyn Store) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    if let Some(s) = store.as_mut() {
        match op(s.as_mut()) {
            Ok(v) => return Ok(v),
            Err(_) => *store = None,
        }
    }
    let mut s = cfg.open()?;
    let v = op(s.as_mut())?;
    *store = Some(s);
    Ok(v)
}

fn serve(cfg: &StoreConfig, store: &mut Option<Box<dyn Store>>, req: Request) {
    match req {
        Request::List(f, limit, offset, reply) => {
            if !reply.is_closed() {
                let _ = reply.send(retry(cfg, store, |s| s.list(&f, limit, offset)));
            }
        }
        Request::Groups(f, window, limit, offset, reply) => {
            if !reply.is_closed() {
                let _ = reply.send(retry(cfg, store, |s| s.groups(&f, window, limit, offset)));
            }
        }
        Request::Get(id, reply) => {
            if !reply.is_closed() {
                let _ = reply.send(retry(cfg, store, |s| s.get(&id)));
            }
        }
        Request::Stats(f, reply) => {
            if !reply.is_closed() {
                let _ = reply.send(retry(cfg, store, |s| s.stats(&f)));
            }
        }
        Request::Inventory(f, reply) => {
            if !reply.is_closed() {
                let _ = reply.send(retry(cfg, store, |s| s.inventory(&f)));
            }
        }
    }
}
