//! A fixed-rate load generator: a few keep-alive HTTP/1.1 connections, each sending at its
//! share of the rate, a mix of GETs and small POSTs to the upstream's echo route. Every
//! answer is checked to be the upstream's own; latencies are kept for percentiles.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use super::client::{H1Conn, Req, Resp};
use super::upstream::{fnv1a64, Echo};

/// Longest a single request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Failure messages kept for the report (all are counted).
const FAILURES_KEPT: usize = 20;

#[derive(Debug, Default)]
pub struct LoadReport {
    /// Requests whose sending started.
    pub sent: u64,
    /// Answered by the upstream with the expected echo.
    pub ok: u64,
    pub failed: u64,
    /// The first few failures.
    pub failures: Vec<String>,
    pub latencies: Vec<Duration>,
    pub elapsed: Duration,
}

impl LoadReport {
    /// The `p`-th percentile (0..=100) of the latencies.
    pub fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
        sorted[rank.min(sorted.len() - 1)]
    }

    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }

    pub fn summary(&self) -> String {
        format!(
            "{} requests in {:.1?} ({:.0}/s), {} ok, {} failed; latency p50 {:?} p99 {:?} max {:?}",
            self.sent,
            self.elapsed,
            self.rate(),
            self.ok,
            self.failed,
            self.percentile(50.0),
            self.percentile(99.0),
            self.percentile(100.0)
        )
    }

    fn merge(&mut self, other: LoadReport) {
        self.sent += other.sent;
        self.ok += other.ok;
        self.failed += other.failed;
        let room = FAILURES_KEPT.saturating_sub(self.failures.len());
        self.failures.extend(other.failures.into_iter().take(room));
        self.latencies.extend(other.latencies);
    }

    fn fail(&mut self, why: String) {
        self.failed += 1;
        if self.failures.len() < FAILURES_KEPT {
            self.failures.push(why);
        }
    }
}

/// Load running on a tokio runtime until [`Load::stop`].
pub struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<LoadReport>>,
    started: Instant,
}

impl Load {
    /// Starts `rate_per_sec` requests per second in total over `connections` connections.
    pub fn start(rt: &Runtime, addr: SocketAddr, rate_per_sec: u32, connections: u32) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let period = Duration::from_secs_f64(f64::from(connections) / f64::from(rate_per_sec));
        let tasks = (0..connections)
            .map(|c| rt.spawn(connection(addr, c, period, Arc::clone(&stop))))
            .collect();
        Load {
            stop,
            tasks,
            started: Instant::now(),
        }
    }

    /// Stops sending, waits for the requests in progress and reports.
    pub fn stop(self, rt: &Runtime) -> LoadReport {
        self.stop.store(true, Ordering::SeqCst);
        let mut report = LoadReport::default();
        for task in self.tasks {
            match rt.block_on(task) {
                Ok(r) => report.merge(r),
                Err(e) => report.fail(format!("load task: {e}")),
            }
        }
        report.elapsed = self.started.elapsed();
        report
    }
}

/// Runs the load for `duration` and reports.
pub fn run_for(
    rt: &Runtime,
    addr: SocketAddr,
    rate_per_sec: u32,
    connections: u32,
    duration: Duration,
) -> LoadReport {
    let load = Load::start(rt, addr, rate_per_sec, connections);
    // The load's own duration, not a wait for a condition.
    std::thread::sleep(duration);
    load.stop(rt)
}

/// Request `i` of connection `c`: one in four is a small POST.
fn request(c: u32, i: u64) -> Req {
    let path = format!("/load?c={c}&i={i}");
    if i.is_multiple_of(4) {
        Req::post(&path, format!("payload {c} {i}"))
    } else {
        Req::get(&path)
    }
}

/// The answer is the upstream's own echo of `req`: status 200, its path and its body.
pub fn check(req: &Req, resp: &Resp) -> Result<(), String> {
    if resp.status != 200 || resp.header("x-upstream").as_deref() != Some("test") {
        return Err(format!(
            "{} {}: status {} {:?}",
            req.method,
            req.path,
            resp.status,
            resp.body_str()
        ));
    }
    let echo = Echo::parse(&resp.body);
    let sent_body = match &req.body {
        super::client::ReqBody::Full(b) => b.clone(),
        _ => Vec::new(),
    };
    if echo.path != req.path || echo.body_fnv1a64 != fnv1a64(&sent_body) {
        return Err(format!("{} {}: wrong echo {echo:?}", req.method, req.path));
    }
    Ok(())
}

async fn connection(
    addr: SocketAddr,
    c: u32,
    period: Duration,
    stop: Arc<AtomicBool>,
) -> LoadReport {
    let mut report = LoadReport::default();
    let mut ticker = tokio::time::interval(period);
    // Ticks missed (a slow answer, a busy machine) are caught up at once, so the rate holds.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut conn: Option<H1Conn> = None;
    let mut i = 0u64;
    while !stop.load(Ordering::SeqCst) {
        ticker.tick().await;
        if conn.is_none() {
            match H1Conn::connect(addr).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    report.sent += 1;
                    report.fail(format!("connection {c}: {e}"));
                    continue;
                }
            }
        }
        let Some(open) = conn.as_mut() else { continue };
        let req = request(c, i);
        i += 1;
        report.sent += 1;
        let started = Instant::now();
        match tokio::time::timeout(REQUEST_TIMEOUT, open.send(&req)).await {
            Ok(Ok(resp)) => {
                report.latencies.push(started.elapsed());
                match check(&req, &resp) {
                    Ok(()) => report.ok += 1,
                    Err(e) => report.fail(e),
                }
            }
            Ok(Err(e)) => {
                report.fail(format!("{} {}: {e}", req.method, req.path));
                conn = None;
            }
            Err(_) => {
                report.fail(format!(
                    "{} {}: no answer within {REQUEST_TIMEOUT:?}",
                    req.method, req.path
                ));
                conn = None;
            }
        }
    }
    report
}
