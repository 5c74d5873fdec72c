//! What the node serves on `GET`: the pages for operators, and `/metrics`.

use std::sync::Arc;

use hyper::Uri;

use crate::analysis::pool::Detector;
use crate::intake::server::{Page, PageHandler};

const HTML: &str = "text/html; charset=utf-8";
const METRICS: &str = "text/plain; version=0.0.4; charset=utf-8";

pub fn handler(detector: Arc<Detector>) -> PageHandler {
    Arc::new(move |uri: Uri| {
        let page = match uri.path() {
            "/" | "/attacks" => Some(Page::ok(
                HTML,
                crate::report::attacks_page(&detector.recent(), &detector.snapshot()),
            )),
            "/metrics" => Some(Page::ok(
                METRICS,
                crate::report::metrics(&detector.snapshot()),
            )),
            "/healthz" => Some(Page::ok("text/plain; charset=utf-8", "ok\n")),
            _ => None,
        };
        Box::pin(std::future::ready(page))
    })
}
