//! What the node serves on `GET`:
//!
//! - [`console`]: the pages operators work in, `/attacks` and `/attacks/{id}`;
//! - [`apis`]: API discovery, the page `/apis` and the inventory's API and OpenAPI export;
//! - [`api`]: the JSON API under `/api/v1/` and its OpenAPI 3.1 document;
//! - `/metrics` (Prometheus text) and `/healthz`.
//!
//! Both the console and the API read the store through a [`StoreReader`]; the filters are
//! one [`query::Query`], parsed the same way for both.

pub mod api;
pub mod apis;
pub mod console;
pub mod query;

use std::sync::Arc;

use hyper::body::Bytes;
use hyper::Uri;

use crate::analysis::pool::Detector;
use crate::intake::server::{BoxFuture, Page, PageHandler};
use crate::store::{StoreReader, StoreWriter};

pub const HTML: &str = "text/html; charset=utf-8";
pub const JSON: &str = "application/json";
pub const TEXT: &str = "text/plain; charset=utf-8";
const METRICS: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the pages read.
#[derive(Clone)]
pub struct Web {
    pub detector: Arc<Detector>,
    /// `None`: the node runs without a store (the pages say so, the API answers 503).
    pub reader: Option<StoreReader>,
    pub writer: Option<Arc<StoreWriter>>,
    /// API discovery; `None`: off (`--inventory off`, or no store).
    pub inventory: Option<Arc<crate::inventory::Shared>>,
}

pub fn handler(web: Web) -> PageHandler {
    let web = Arc::new(web);
    Arc::new(move |uri: Uri| {
        let web = Arc::clone(&web);
        let page: BoxFuture<Option<Page>> = Box::pin(async move { web.route(uri).await });
        page
    })
}

impl Web {
    async fn route(&self, uri: Uri) -> Option<Page> {
        let path = uri.path();
        let query = uri.query().unwrap_or("");
        match path {
            "/metrics" => Some(Page::ok(METRICS, self.metrics())),
            "/healthz" => Some(Page::ok(TEXT, "ok\n")),
            "/" | "/attacks" => Some(console::attacks(self, query).await),
            "/apis" => Some(apis::page_apis(self, query).await),
            "/api/v1/openapi.json" => Some(Page::ok(JSON, api::OPENAPI)),
            _ => {
                if let Some(id) = path.strip_prefix("/attacks/") {
                    return Some(console::attack(self, id).await);
                }
                if let Some(rest) = path.strip_prefix("/api/v1/") {
                    return api::route(self, rest, query).await;
                }
                None
            }
        }
    }

    fn metrics(&self) -> String {
        let mut out = crate::report::metrics(&self.detector.snapshot());
        if let Some(writer) = &self.writer {
            crate::store::metrics(&writer.counters(), &mut out);
        }
        if let Some(inventory) = &self.inventory {
            inventory.metrics(&mut out);
        }
        out
    }
}

/// A page with a status other than 200.
pub fn page(status: u16, content_type: &'static str, body: impl Into<Bytes>) -> Page {
    Page {
        status,
        content_type,
        body: body.into(),
    }
}
