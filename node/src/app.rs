//! The node assembled: the listener ([`intake::server`](crate::intake::server)) feeds the
//! pairing and the analysis pool; detections go to the JSON lines and the pages.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::analysis::pool::{DetectionHook, Detector, PoolConfig};
use crate::analysis::RulesConfig;
use crate::intake::security::{RequiredHeaders, TlsConfig};
use crate::intake::server::{BatchInfo, Server, ServerConfig, TlsErrorHook};
use crate::web;

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
    /// Each batch as received (`--print-records`, and rejected batches said on stderr).
    pub on_batch: Option<RecordsHook>,
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
        }
    }
}

/// A running node. Dropping it stops it: the listener first, then the analysis drains.
pub struct App {
    server: Server,
    detector: Arc<Detector>,
    tls: bool,
}

impl App {
    /// Loads the rules on every analysis thread, then listens: a rule error is returned
    /// before anything is received.
    pub fn start(config: AppConfig) -> io::Result<App> {
        let detector = Arc::new(
            Detector::start(&config.rules, config.pool, config.on_detection)
                .map_err(io::Error::other)?,
        );
        let on_batch = {
            let d = Arc::clone(&detector);
            let hook = config.on_batch;
            Arc::new(move |batch: BatchInfo| {
                if batch.error.is_some() {
                    d.count_decode_error();
                }
                if let Some(hook) = &hook {
                    hook(&batch);
                }
                d.submit_records(batch.records);
                let answer: crate::intake::server::BoxFuture<u16> =
                    Box::pin(std::future::ready(204));
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
            pages: Some(web::handler(Arc::clone(&detector))),
            on_extproc: Some(on_extproc),
            tls: config.tls,
            on_tls_error: config.on_tls_error,
            require_headers: config.require_headers,
        })?;
        Ok(App {
            server,
            detector,
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

    /// Stops listening (open connections are dropped); the analysis drains when the `App`
    /// is dropped.
    pub fn stop(&mut self) {
        self.server.stop();
    }
}
