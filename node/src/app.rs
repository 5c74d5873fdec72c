//! The node assembled: the listener ([`intake::server`](crate::intake::server)) feeds the
//! pairing and the analysis pool; detections go to the JSON lines and the pages.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use crate::analysis::pool::{Detection, DetectionHook, Detector, PoolConfig};
use crate::analysis::RulesConfig;
use crate::intake::security::{RequiredHeaders, TlsConfig};
use crate::intake::server::{BatchInfo, BoxFuture, Server, ServerConfig, TlsErrorHook};
use crate::inventory::{Config as InventoryConfig, Shared as Inventory};
use crate::pairing::Exchange;
use crate::store::{Attack, InventoryFlusher, StoreConfig, StoreReader, StoreWriter};
use crate::web::{self, Web};

/// Bytes of each body kept with an attack in the store (the true size is kept too).
pub const STORED_BODY_BYTES: usize = 8192;

/// Called with every batch as received (decoded or not), before its records are analysed.
pub type RecordsHook = Arc<dyn Fn(&BatchInfo) + Send + Sync>;

/// What the node is started with; [`AppConfig::new`] has the defaults.
#[derive(Clone)]
pub struct AppConfig {
    pub listen: SocketAddr,
    pub tls: Option<TlsConfig>,
    pub on_tls_error: Option<TlsErrorHook>,
    pub require_headers: RequiredHeaders,
    pub rules: RulesConfig,
    pub pool: PoolConfig,
    /// Each detection, as analysed (the JSON lines).
    pub on_detection: Option<DetectionHook>,
    /// Each batch as received, values marked for the node in clear (rejected batches said on
    /// stderr; tests see what arrived).
    pub on_batch: Option<RecordsHook>,
    /// Each batch with the values marked for the node as their markers: what may leave the
    /// node (`--print-records`).
    pub on_records: Option<RecordsHook>,
    /// Where attacks are kept for the console and the API; `None`: nowhere (JSON lines only).
    pub store: Option<StoreConfig>,
    /// API discovery (crate::inventory), kept in the store; `None`: off (`--inventory off`).
    /// Without a store it is off too.
    pub inventory: Option<InventoryConfig>,
}

impl AppConfig {
    pub fn new(listen: SocketAddr) -> AppConfig {
        AppConfig {
            listen,
            tls: None,
            on_tls_error: None,
            require_headers: RequiredHeaders::default(),
            rules: RulesConfig::default(),
            pool: PoolConfig::default(),
            on_detection: None,
            on_batch: None,
            on_records: None,
            store: None,
            inventory: Some(InventoryConfig::default()),
        }
    }
}

/// A detection as the store keeps it.
fn attack_of(d: &Detection) -> Attack {
    let classes: Vec<String> = d.classes.iter().map(|c| (*c).to_owned()).collect();
    Attack::from_exchange(
        &d.exchange,
        &d.rules,
        d.class().to_owned(),
        classes,
        STORED_BODY_BYTES,
    )
}

/// A running node. Dropping it stops it: the listener first, then the analysis drains.
pub struct App {
    server: Server,
    detector: Arc<Detector>,
    /// After the detector: dropped once the analysis drained, it writes what is left.
    flusher: Option<InventoryFlusher>,
    writer: Option<Arc<StoreWriter>>,
    tls: bool,
}

impl App {
    /// Loads the rules on every analysis thread, then listens: a rule error is returned
    /// before anything is received.
    pub fn start(config: AppConfig) -> io::Result<App> {
        // The rules first: a rule error stops the node before its store is made. Then the
        // store: one that cannot be opened or migrated stops the node before it listens. Once
        // running, an outage only costs what the writer drops (counted). No detection can
        // come before the listener, which starts last.
        let store_writer: Arc<OnceLock<Arc<StoreWriter>>> = Arc::default();
        let on_detection: DetectionHook = {
            let store_writer = Arc::clone(&store_writer);
            let hook = config.on_detection;
            Arc::new(move |d: &Detection| {
                if let Some(hook) = &hook {
                    hook(d);
                }
                if let Some(writer) = store_writer.get() {
                    writer.submit(attack_of(d));
                }
            })
        };
        let detector = Arc::new(
            Detector::start(&config.rules, config.pool, Some(on_detection))
                .map_err(io::Error::other)?,
        );
        let (writer, reader) = match &config.store {
            Some(store) => {
                let writer = Arc::new(StoreWriter::spawn(store.clone()).map_err(io::Error::other)?);
                let reader = StoreReader::spawn(store.clone()).map_err(io::Error::other)?;
                let _ = store_writer.set(Arc::clone(&writer));
                (Some(writer), Some(reader))
            }
            None => (None, None),
        };
        // API discovery: counted on the analysis threads, written by a flusher of its own.
        let (inventory, flusher) = match (&config.inventory, &config.store) {
            (Some(inv), Some(store)) => {
                let shared = Arc::new(Inventory::new(inv.clone()));
                let flusher = InventoryFlusher::spawn(store.clone(), Arc::clone(&shared))
                    .map_err(io::Error::other)?;
                let observer = Arc::clone(&shared);
                detector.on_exchange(Arc::new(move |ex: &Exchange| observer.observe(ex)));
                (Some(shared), Some(flusher))
            }
            _ => (None, None),
        };
        let on_batch = {
            let d = Arc::clone(&detector);
            let hook = config.on_batch;
            let print = config.on_records;
            Arc::new(move |batch: BatchInfo| {
                if batch.error.is_some() {
                    d.count_decode_error();
                }
                if let Some(hook) = &hook {
                    hook(&batch);
                }
                if let Some(print) = &print {
                    // What is printed shows a value marked for the node only as its marker.
                    if batch.records.iter().any(|r| !r.redact_at_node().is_empty()) {
                        let sealed = BatchInfo {
                            records: batch
                                .records
                                .iter()
                                .map(|r| d.sealer().seal_record(r))
                                .collect(),
                            ..batch.clone()
                        };
                        print(&sealed);
                    } else {
                        print(&batch);
                    }
                }
                d.submit_records(batch.records);
                let answer: BoxFuture<u16> = Box::pin(std::future::ready(204));
                answer
            })
        };
        let gate = {
            let d = Arc::clone(&detector);
            Arc::new(move || d.admit())
        };
        let on_extproc = {
            let d = Arc::clone(&detector);
            Arc::new(move |stream| d.submit_extproc(stream))
        };
        let tls = config.tls.is_some();
        let server = Server::start(ServerConfig {
            addr: config.listen,
            on_batch,
            gate: Some(gate),
            pages: Some(web::handler(Web {
                detector: Arc::clone(&detector),
                reader,
                writer: writer.clone(),
                inventory,
            })),
            on_extproc: Some(on_extproc),
            tls: config.tls,
            on_tls_error: config.on_tls_error,
            require_headers: config.require_headers,
        })?;
        Ok(App {
            server,
            detector,
            flusher,
            writer,
            tls,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// `http://ADDR`, or `https://` with TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.server.addr())
    }

    pub fn detector(&self) -> &Arc<Detector> {
        &self.detector
    }

    pub fn server(&self) -> &Server {
        &self.server
    }

    /// Waits until every attack detected so far is written (or failed); `false` on timeout.
    /// Attacks still being analysed are not waited for.
    pub fn flush_store(&self, timeout: std::time::Duration) -> bool {
        self.writer.as_ref().is_none_or(|w| w.flush(timeout))
    }

    /// Writes the inventory counted so far to the store now; `false` on failure or timeout
    /// (`true` when discovery is off). Exchanges still being analysed are not waited for.
    pub fn flush_inventory(&self, timeout: std::time::Duration) -> bool {
        self.flusher.as_ref().is_none_or(|f| f.flush(timeout))
    }

    /// Stops listening (open connections are dropped); the analysis drains when the `App`
    /// is dropped.
    pub fn stop(&mut self) {
        self.server.stop();
    }
}
