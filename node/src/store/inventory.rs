//! The inventory in the store (migration 0002): its SQL over both backends, and the thread that
//! writes the analysis side's deltas ([`InventoryFlusher`]).
//!
//! Every write is an upsert that adds: an endpoint's count, a fact's count, a cut's count; first
//! seen the smaller, last seen the larger. N replicas writing their deltas to one PostgreSQL
//! make one inventory, the same as one node seeing all the traffic would. A template merged in
//! memory (a slug collapse) is moved in the store: its rows are added into the new template's,
//! then deleted, in the same transaction as the delta that follows.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::sql::{Conn, Dialect, Value};
use super::{host_key, StoreConfig, StoreError};
use crate::inventory::{self, CutCount, Delta, Endpoint, Fact, Move};

/// Which endpoints a read returns; each field set narrows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InventoryFilter {
    /// Compared as [`host_key`] gives it.
    pub host: Option<String>,
    /// Upper case, exactly.
    pub method: Option<String>,
    /// The template starts with this.
    pub path_prefix: Option<String>,
}

/// The endpoints a filter selects (sorted by host, template, method), with their facts, and
/// the cuts of their hosts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InventoryData {
    pub endpoints: Vec<Endpoint>,
    pub cuts: Vec<CutCount>,
}

struct Q {
    dialect: Dialect,
    params: Vec<Value>,
}

impl Q {
    fn new(dialect: Dialect) -> Q {
        Q {
            dialect,
            params: Vec::new(),
        }
    }

    fn p(&mut self, v: Value) -> String {
        self.params.push(v);
        match self.dialect {
            Dialect::Sqlite => format!("?{}", self.params.len()),
            Dialect::Postgres => format!("${}", self.params.len()),
        }
    }

    fn text(&mut self, s: &str) -> String {
        let s = if s.contains('\0') {
            s.replace('\0', "\u{FFFD}")
        } else {
            s.to_owned()
        };
        self.p(Value::Text(Some(s)))
    }

    fn int(&mut self, n: i64) -> String {
        self.p(Value::Int(Some(n)))
    }
}

fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn least(d: Dialect) -> &'static str {
    match d {
        Dialect::Sqlite => "min",
        Dialect::Postgres => "LEAST",
    }
}

fn greatest(d: Dialect) -> &'static str {
    match d {
        Dialect::Sqlite => "max",
        Dialect::Postgres => "GREATEST",
    }
}

const FACT_KEY: &str = "host, method, template, kind, scope, name, ty";

fn endpoint_upsert(d: Dialect) -> String {
    format!(
        " ON CONFLICT (host, method, template) DO UPDATE SET \
         count = inventory_endpoints.count + excluded.count, \
         first_ns = {}(inventory_endpoints.first_ns, excluded.first_ns), \
         last_ns = {}(inventory_endpoints.last_ns, excluded.last_ns)",
        least(d),
        greatest(d)
    )
}

fn move_one<C: Conn>(conn: &mut C, m: &Move) -> Result<(), StoreError> {
    if m.from == m.to {
        return Ok(());
    }
    let d = conn.dialect();
    let mut q = Q::new(d);
    let (to, h, me, from) = (
        q.text(&m.to),
        q.text(&m.host),
        q.text(&m.method),
        q.text(&m.from),
    );
    conn.execute(
        &format!(
            "INSERT INTO inventory_endpoints (host, method, template, count, first_ns, last_ns) \
             SELECT host, method, CAST({to} AS TEXT), count, first_ns, last_ns FROM inventory_endpoints \
             WHERE host = {h} AND method = {me} AND template = {from}{}",
            endpoint_upsert(d)
        ),
        &q.params,
    )?;
    conn.execute(
        &format!(
            "INSERT INTO inventory_facts ({FACT_KEY}, count) \
             SELECT host, method, CAST({to} AS TEXT), kind, scope, name, ty, count FROM inventory_facts \
             WHERE host = {h} AND method = {me} AND template = {from} \
             ON CONFLICT ({FACT_KEY}) DO UPDATE SET count = inventory_facts.count + excluded.count"
        ),
        &q.params,
    )?;
    // The literal `from` had where `to` has a variable: its exchanges had that parameter.
    for (name, kind) in &m.params {
        let mut q = Q::new(d);
        let (to, pk, name, kind, h, me, from) = (
            q.text(&m.to),
            q.text(crate::inventory::PARAM),
            q.text(name),
            q.text(kind),
            q.text(&m.host),
            q.text(&m.method),
            q.text(&m.from),
        );
        conn.execute(
            &format!(
                "INSERT INTO inventory_facts ({FACT_KEY}, count) \
                 SELECT host, method, CAST({to} AS TEXT), CAST({pk} AS TEXT), '', \
                 CAST({name} AS TEXT), CAST({kind} AS TEXT), count FROM inventory_endpoints \
                 WHERE host = {h} AND method = {me} AND template = {from} \
                 ON CONFLICT ({FACT_KEY}) DO UPDATE SET count = inventory_facts.count + excluded.count"
            ),
            &q.params,
        )?;
    }
    let mut q = Q::new(d);
    let (h, me, from) = (q.text(&m.host), q.text(&m.method), q.text(&m.from));
    for table in ["inventory_facts", "inventory_endpoints"] {
        conn.execute(
            &format!(
                "DELETE FROM {table} WHERE host = {h} AND method = {me} AND template = {from}"
            ),
            &q.params,
        )?;
    }
    Ok(())
}

fn endpoint_one<C: Conn>(conn: &mut C, e: &Endpoint) -> Result<(), StoreError> {
    let d = conn.dialect();
    let mut q = Q::new(d);
    let values = [
        q.text(&e.host),
        q.text(&e.method),
        q.text(&e.template),
        q.int(count(e.count)),
        q.int(e.first_ns),
        q.int(e.last_ns),
    ];
    conn.execute(
        &format!(
            "INSERT INTO inventory_endpoints (host, method, template, count, first_ns, last_ns) \
             VALUES ({}){}",
            values.join(", "),
            endpoint_upsert(d)
        ),
        &q.params,
    )?;
    for (f, n) in &e.facts {
        let mut q = Q::new(d);
        let values = [
            q.text(&e.host),
            q.text(&e.method),
            q.text(&e.template),
            q.text(&f.kind),
            q.text(&f.scope),
            q.text(&f.name),
            q.text(&f.ty),
            q.int(count(*n)),
        ];
        conn.execute(
            &format!(
                "INSERT INTO inventory_facts ({FACT_KEY}, count) VALUES ({}) \
                 ON CONFLICT ({FACT_KEY}) DO UPDATE SET count = inventory_facts.count + excluded.count",
                values.join(", ")
            ),
            &q.params,
        )?;
    }
    Ok(())
}

/// Applies a delta (inside the caller's transaction): moves, endpoints, cuts.
pub fn apply<C: Conn>(conn: &mut C, delta: &Delta) -> Result<(), StoreError> {
    for m in &delta.moves {
        move_one(conn, m)?;
    }
    for e in &delta.endpoints {
        endpoint_one(conn, e)?;
    }
    for c in &delta.cuts {
        let mut q = Q::new(conn.dialect());
        let (h, r, n) = (q.text(&c.host), q.text(&c.reason), q.int(count(c.count)));
        conn.execute(
            &format!(
                "INSERT INTO inventory_cuts (host, reason, count) VALUES ({h}, {r}, {n}) \
                 ON CONFLICT (host, reason) DO UPDATE SET count = inventory_cuts.count + excluded.count"
            ),
            &q.params,
        )?;
    }
    Ok(())
}

fn bad(what: &str) -> StoreError {
    StoreError::Backend(format!(
        "unexpected column in the store's inventory: {what}"
    ))
}

fn text_col(v: Option<Value>, what: &str) -> Result<String, StoreError> {
    match v {
        Some(Value::Text(Some(s))) => Ok(s),
        _ => Err(bad(what)),
    }
}

fn int_col(v: Option<Value>, what: &str) -> Result<i64, StoreError> {
    match v {
        Some(Value::Int(Some(n))) => Ok(n),
        _ => Err(bad(what)),
    }
}

fn conditions(q: &mut Q, f: &InventoryFilter, prefix: &str) -> String {
    let mut conds = Vec::new();
    if let Some(h) = f.host.as_deref().filter(|h| !h.is_empty()) {
        conds.push(format!("{prefix}host = {}", q.text(&host_key(h))));
    }
    if let Some(m) = f.method.as_deref().filter(|m| !m.is_empty()) {
        conds.push(format!(
            "{prefix}method = {}",
            q.text(&m.to_ascii_uppercase())
        ));
    }
    if let Some(p) = f.path_prefix.as_deref().filter(|p| !p.is_empty()) {
        let n = p.chars().count();
        conds.push(format!("substr({prefix}template, 1, {n}) = {}", q.text(p)));
    }
    if conds.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conds.join(" AND "))
    }
}

/// The endpoints `f` selects, with their facts and their hosts' cuts.
pub fn load<C: Conn>(conn: &mut C, f: &InventoryFilter) -> Result<InventoryData, StoreError> {
    let d = conn.dialect();
    let mut q = Q::new(d);
    let cond = conditions(&mut q, f, "");
    let rows = conn.query(
        &format!(
            "SELECT host, method, template, count, first_ns, last_ns FROM inventory_endpoints{cond}"
        ),
        &q.params,
    )?;
    let mut endpoints = Vec::with_capacity(rows.len());
    for row in rows {
        let mut c = row.into_iter();
        endpoints.push(Endpoint {
            host: text_col(c.next(), "host")?,
            method: text_col(c.next(), "method")?,
            template: text_col(c.next(), "template")?,
            count: u64::try_from(int_col(c.next(), "count")?).unwrap_or(0),
            first_ns: int_col(c.next(), "first_ns")?,
            last_ns: int_col(c.next(), "last_ns")?,
            facts: Vec::new(),
        });
    }
    // Sorted here, not in SQL: the backends' collations differ.
    endpoints
        .sort_by(|a, b| (&a.host, &a.template, &a.method).cmp(&(&b.host, &b.template, &b.method)));
    let mut q = Q::new(d);
    let cond = conditions(&mut q, f, "e.");
    let rows = conn.query(
        &format!(
            "SELECT f.host, f.method, f.template, f.kind, f.scope, f.name, f.ty, f.count \
             FROM inventory_facts f JOIN inventory_endpoints e \
             ON e.host = f.host AND e.method = f.method AND e.template = f.template{cond}"
        ),
        &q.params,
    )?;
    for row in rows {
        let mut c = row.into_iter();
        let (host, method, template) = (
            text_col(c.next(), "host")?,
            text_col(c.next(), "method")?,
            text_col(c.next(), "template")?,
        );
        let fact = Fact {
            kind: text_col(c.next(), "kind")?,
            scope: text_col(c.next(), "scope")?,
            name: text_col(c.next(), "name")?,
            ty: text_col(c.next(), "ty")?,
        };
        let n = u64::try_from(int_col(c.next(), "count")?).unwrap_or(0);
        let key = (&host, &template, &method);
        if let Ok(i) = endpoints.binary_search_by(|e| (&e.host, &e.template, &e.method).cmp(&key)) {
            if let Some(e) = endpoints.get_mut(i) {
                e.facts.push((fact, n));
            }
        }
    }
    for e in &mut endpoints {
        e.facts.sort();
    }
    let mut q = Q::new(d);
    let cond = match f.host.as_deref().filter(|h| !h.is_empty()) {
        Some(h) => format!(" WHERE host = {}", q.text(&host_key(h))),
        None => String::new(),
    };
    let rows = conn.query(
        &format!("SELECT host, reason, count FROM inventory_cuts{cond}"),
        &q.params,
    )?;
    let mut cuts = Vec::new();
    for row in rows {
        let mut c = row.into_iter();
        cuts.push(CutCount {
            host: text_col(c.next(), "host")?,
            reason: text_col(c.next(), "reason")?,
            count: u64::try_from(int_col(c.next(), "count")?).unwrap_or(0),
        });
    }
    cuts.sort_by(|a, b| (&a.host, &a.reason).cmp(&(&b.host, &b.reason)));
    Ok(InventoryData { endpoints, cuts })
}

type FlushReply = mpsc::Sender<bool>;

/// The thread that writes the inventory's deltas every `flush_every` (and on demand), on a
/// connection of its own. Taking a delta is a swap under the inventory's lock: the analysis
/// threads never wait for the store. A delta the store refuses (after one reconnect) is lost
/// and counted (`oob_mirror_node_inventory_flush_failures_total`).
pub struct InventoryFlusher {
    tx: Option<mpsc::Sender<FlushReply>>,
    thread: Option<JoinHandle<()>>,
}

impl InventoryFlusher {
    /// Opens the store on the flusher's thread; returns once it is open.
    pub fn spawn(
        cfg: StoreConfig,
        source: Arc<inventory::Shared>,
    ) -> Result<InventoryFlusher, StoreError> {
        let (tx, rx) = mpsc::channel::<FlushReply>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), StoreError>>();
        let every = source.config().flush_every.max(Duration::from_millis(10));
        let thread = std::thread::Builder::new()
            .name("inventory-flush".into())
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
                let mut last_line: Option<Instant> = None;
                let mut flush = |store: &mut Option<Box<dyn super::Store>>| -> bool {
                    let delta = source.take();
                    if delta.is_empty() {
                        return true;
                    }
                    let mut result = match store.as_mut() {
                        Some(s) => s.inventory_apply(&delta),
                        None => Err(StoreError::Closed),
                    };
                    if result.is_err() {
                        *store = None;
                        result = cfg.open().and_then(|mut s| {
                            s.migrate()?;
                            s.inventory_apply(&delta)?;
                            *store = Some(s);
                            Ok(())
                        });
                    }
                    match result {
                        Ok(()) => {
                            source.flushes.fetch_add(1, Ordering::Relaxed);
                            true
                        }
                        Err(e) => {
                            source.flush_failures.fetch_add(1, Ordering::Relaxed);
                            if last_line.is_none_or(|t| t.elapsed() >= cfg.outage_log_every) {
                                cfg.log(&format!(
                                    "oob-mirror-node: {e}; the inventory's counts since the last write are lost"
                                ));
                                last_line = Some(Instant::now());
                            }
                            false
                        }
                    }
                };
                loop {
                    match rx.recv_timeout(every) {
                        Ok(reply) => {
                            let ok = flush(&mut store);
                            let _ = reply.send(ok);
                        }
                        Err(RecvTimeoutError::Timeout) => {
                            flush(&mut store);
                        }
                        Err(RecvTimeoutError::Disconnected) => {
                            flush(&mut store);
                            break;
                        }
                    }
                }
            })
            .map_err(|e| StoreError::Backend(format!("starting the inventory thread: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(InventoryFlusher {
                tx: Some(tx),
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

    /// Writes what was counted so far now; `false` if the store refused it or `timeout`
    /// passed.
    pub fn flush(&self, timeout: Duration) -> bool {
        let Some(tx) = &self.tx else { return false };
        let (reply, answer) = mpsc::channel();
        if tx.send(reply).is_err() {
            return false;
        }
        answer.recv_timeout(timeout).unwrap_or(false)
    }
}

impl Drop for InventoryFlusher {
    /// Writes what is left, then stops.
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
