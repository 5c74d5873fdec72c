//! API discovery: an inventory of the endpoints each host serves, learned from every analysed
//! exchange (attacks or not), with what was seen on each: counts, first and last seen, status
//! codes, content types, query parameters and JSON (or form) fields with their types and how
//! often each is present, the authentication used and the sensitive data carried. Names, types
//! and counts only: no value is kept.
//!
//! - [`template`]: the path-template learner (its rules and bounds are documented there);
//! - [`observe`]: one exchange's facts, computed outside any lock;
//! - [`sensitive`]: the detectors (Luhn, IBAN mod-97, JWT shape…);
//! - [`openapi`]: an OpenAPI 3.1 document from the inventory of a host;
//! - [`spec`]: the operator's OpenAPI specs, and the shadow and zombie endpoints against them.
//!
//! [`Inventory`] aggregates in memory, bounded ([`Config`]); the store keeps the sum. What it
//! hands out ([`Inventory::take`]) is a [`Delta`]: counts since the last take, and the moves
//! of templates merged since (a slug collapse). The store adds deltas up, so several replicas
//! writing to one store give one inventory. [`Shared`] is the handle the analysis threads use:
//! the facts are computed before its lock is taken, which is held only to count them.

pub mod observe;
pub mod openapi;
pub mod sensitive;
pub mod spec;
pub mod template;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::pairing::Exchange;
use template::{Cut, EndpointId, Limits, Tree};

pub const STATUS: &str = "status";
pub const REQUEST_TYPE: &str = "req_type";
pub const RESPONSE_TYPE: &str = "resp_type";
pub const REQUEST_BODY: &str = "req_body";
pub const RESPONSE_BODY: &str = "resp_body";
pub const REQUEST_FIELD: &str = "req_field";
pub const RESPONSE_FIELD: &str = "resp_field";
pub const QUERY: &str = "query";
pub const AUTH: &str = "auth";
pub const SENSITIVE: &str = "sensitive";
pub const PARAM: &str = "param";

/// One thing seen on an endpoint, counted: its `kind` (the constants above), a `scope` (the
/// status for response facts, `request`/`response` for sensitive data, else empty), a `name`
/// (a status code, a content type, a field path such as `items[].id`, an auth scheme) and a
/// type (a JSON type, a path variable's kind, a sensitive-data type; or empty).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fact {
    pub kind: String,
    pub scope: String,
    pub name: String,
    pub ty: String,
}

impl Fact {
    pub fn new(kind: &str, scope: &str, name: &str, ty: &str) -> Fact {
        Fact {
            kind: kind.to_owned(),
            scope: scope.to_owned(),
            name: name.to_owned(),
            ty: ty.to_owned(),
        }
    }
}

/// The inventory's settings and bounds: `--inventory`, `--spec`, `--zombie-after`.
#[derive(Debug, Clone)]
pub struct Config {
    /// Each host's template learner.
    pub limits: Limits,
    /// Hosts, at most (default 100).
    pub max_hosts: usize,
    /// Distinct facts per endpoint, at most (default 200).
    pub max_facts: usize,
    /// Distinct facts over all endpoints, at most (default 200,000).
    pub max_facts_total: usize,
    /// Bodies larger than this (bytes) are not parsed for fields (default 256 KiB).
    pub max_body: usize,
    /// Values of one body (or query) looked at, at most (default 1,000).
    pub max_json_nodes: usize,
    /// JSON nesting followed, at most (default 16).
    pub max_json_depth: usize,
    /// How often the counts go to the store (default 5 s).
    pub flush_every: Duration,
    /// The operator's specs (`--spec`).
    pub specs: Vec<spec::Spec>,
    /// A spec endpoint not seen for this long is a zombie (`--zombie-after`, default 7 days).
    pub zombie_after: Duration,
}

pub const DEFAULT_ZOMBIE_AFTER: Duration = Duration::from_secs(7 * 86_400);
/// The reasons of [`Counters::cut`].
pub const CUT_REASONS: [&str; 8] = [
    "hosts",
    "templates",
    "nodes",
    "depth",
    "fanout",
    "facts",
    "no_host",
    "moves",
];
/// Moves of merged templates waiting for the store, at most.
const MAX_PENDING_MOVES: usize = 10_000;

impl Default for Config {
    fn default() -> Self {
        Config {
            limits: Limits::default(),
            max_hosts: 100,
            max_facts: 200,
            max_facts_total: 200_000,
            max_body: 256 * 1024,
            max_json_nodes: 1000,
            max_json_depth: 16,
            flush_every: Duration::from_secs(5),
            specs: Vec::new(),
            zombie_after: DEFAULT_ZOMBIE_AFTER,
        }
    }
}

/// An endpoint's counts, as a delta or as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub method: String,
    pub template: String,
    pub count: u64,
    /// Unix ns.
    pub first_ns: i64,
    pub last_ns: i64,
    /// Sorted by fact.
    pub facts: Vec<(Fact, u64)>,
}

impl Endpoint {
    /// The facts of one kind.
    pub fn facts_of<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = (&'a Fact, u64)> + 'a {
        self.facts
            .iter()
            .filter(move |(f, _)| f.kind == kind)
            .map(|(f, n)| (f, *n))
    }

    /// The sensitive types seen on it, each once.
    pub fn sensitive_types(&self) -> Vec<String> {
        let mut t: Vec<String> = self
            .facts_of(SENSITIVE)
            .map(|(f, _)| f.ty.clone())
            .collect();
        t.sort();
        t.dedup();
        t
    }
}

/// A template renamed in the store: its rows are added into the new template's, then deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub host: String,
    pub method: String,
    pub from: String,
    pub to: String,
    /// Parameters (name, kind) `to` has where `from` had a literal: `from`'s count is added to
    /// them, so a parameter's count does not depend on when the collapse happened.
    pub params: Vec<(String, String)>,
}

/// What was not learned, per host (`*` for the hosts cut) and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CutCount {
    pub host: String,
    pub reason: String,
    pub count: u64,
}

/// What changed since the last [`Inventory::take`]: applied in this order (moves, endpoints,
/// cuts), it brings the store up to date.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delta {
    pub moves: Vec<Move>,
    pub endpoints: Vec<Endpoint>,
    pub cuts: Vec<CutCount>,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.moves.is_empty() && self.endpoints.is_empty() && self.cuts.is_empty()
    }
}

#[derive(Debug, Default)]
struct Pending {
    count: u64,
    first_ns: i64,
    last_ns: i64,
    facts: HashMap<Fact, u64>,
}

impl Pending {
    fn add(&mut self, other: Pending) {
        if self.count == 0 {
            self.first_ns = other.first_ns;
            self.last_ns = other.last_ns;
        } else if other.count > 0 {
            self.first_ns = self.first_ns.min(other.first_ns);
            self.last_ns = self.last_ns.max(other.last_ns);
        }
        self.count += other.count;
        for (f, n) in other.facts {
            *self.facts.entry(f).or_insert(0) += n;
        }
    }
}

#[derive(Debug)]
struct Host {
    tree: Tree,
    /// The facts each endpoint has had (bounded by `max_facts`).
    known: HashMap<EndpointId, HashSet<Fact>>,
    pending: HashMap<EndpointId, Pending>,
}

/// The cumulative counters `/metrics` shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub observed: u64,
    /// By reason: `hosts`, `templates`, `nodes`, `depth`, `facts`, `no_host`, `moves`, and
    /// `fanout` (counted, not lost: the path was generalised to a variable).
    pub cut: BTreeMap<String, u64>,
    pub hosts: u64,
    pub templates: u64,
    pub facts: u64,
}

/// The in-memory inventory of this node since its last [`Inventory::take`], and the learned
/// templates (kept: they are what makes the next paths land on the same templates).
#[derive(Debug)]
pub struct Inventory {
    config: Config,
    hosts: HashMap<String, Host>,
    facts_total: usize,
    moves: Vec<Move>,
    cuts: BTreeMap<(String, String), u64>,
    counters: Counters,
}

impl Inventory {
    pub fn new(config: Config) -> Inventory {
        Inventory {
            config,
            hosts: HashMap::new(),
            facts_total: 0,
            moves: Vec::new(),
            cuts: BTreeMap::new(),
            counters: Counters::default(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    fn cut(&mut self, host: &str, reason: &str) {
        *self
            .cuts
            .entry((host.to_owned(), reason.to_owned()))
            .or_insert(0) += 1;
        *self.counters.cut.entry(reason.to_owned()).or_insert(0) += 1;
    }

    /// Counts one observation.
    pub fn add(&mut self, o: observe::Observation) {
        self.counters.observed += 1;
        if !self.hosts.contains_key(&o.host) {
            if self.hosts.len() >= self.config.max_hosts {
                self.cut("*", "hosts");
                return;
            }
            self.hosts.insert(
                o.host.clone(),
                Host {
                    tree: Tree::new(self.config.limits),
                    known: HashMap::new(),
                    pending: HashMap::new(),
                },
            );
        }
        let Some(host) = self.hosts.get_mut(&o.host) else {
            return;
        };
        let segs: Vec<&str> = o.segments.iter().map(String::as_str).collect();
        let routed = match host.tree.route(&o.method, &segs) {
            Ok(r) => r,
            Err(cut) => {
                let reason = match cut {
                    Cut::Templates => "templates",
                    Cut::Nodes => "nodes",
                    Cut::Depth => "depth",
                };
                self.cut(&o.host, reason);
                return;
            }
        };
        let fanout = routed.fanout;
        let mut lost_moves = 0u64;
        for m in &routed.moved {
            let params: Vec<Fact> = m
                .new_params
                .iter()
                .map(|(name, kind)| Fact::new(PARAM, "", name, kind.as_str()))
                .collect();
            if let Some(p) = host.pending.get_mut(&m.from) {
                for f in &params {
                    *p.facts.entry(f.clone()).or_insert(0) += p.count;
                }
            }
            if m.from != m.to {
                if let Some(p) = host.pending.remove(&m.from) {
                    host.pending.entry(m.to).or_default().add(p);
                }
                let from_known = host.known.remove(&m.from).unwrap_or_default();
                let into = host.known.entry(m.to).or_default();
                for f in from_known {
                    if into.len() < self.config.max_facts && !into.contains(&f) {
                        into.insert(f);
                    } else {
                        self.facts_total = self.facts_total.saturating_sub(1);
                    }
                }
            }
            // At most one per moved endpoint, which the template bound already bounds.
            let into = host.known.entry(m.to).or_default();
            for f in params {
                if into.insert(f) {
                    self.facts_total += 1;
                }
            }
            if self.moves.len() < MAX_PENDING_MOVES {
                self.moves.push(Move {
                    host: o.host.clone(),
                    method: m.method.clone(),
                    from: m.from_template.clone(),
                    to: m.to_template.clone(),
                    params: m
                        .new_params
                        .iter()
                        .map(|(name, kind)| (name.clone(), kind.as_str().to_owned()))
                        .collect(),
                });
            } else {
                lost_moves += 1;
            }
        }
        let p = host.pending.entry(routed.endpoint).or_default();
        if p.count == 0 {
            p.first_ns = o.ts_ns;
            p.last_ns = o.ts_ns;
        } else {
            p.first_ns = p.first_ns.min(o.ts_ns);
            p.last_ns = p.last_ns.max(o.ts_ns);
        }
        p.count += 1;
        let known = host.known.entry(routed.endpoint).or_default();
        let params = routed
            .params
            .iter()
            .map(|(name, kind)| Fact::new(PARAM, "", name, kind.as_str()));
        let mut facts_cut = 0u64;
        for f in params.chain(o.facts) {
            if !known.contains(&f) {
                if known.len() >= self.config.max_facts
                    || self.facts_total >= self.config.max_facts_total
                {
                    facts_cut += 1;
                    continue;
                }
                known.insert(f.clone());
                self.facts_total += 1;
            }
            *p.facts.entry(f).or_insert(0) += 1;
        }
        let host_name = o.host;
        for _ in 0..facts_cut.min(1) {
            self.cut(&host_name, "facts");
        }
        if fanout {
            self.cut(&host_name, "fanout");
        }
        for _ in 0..lost_moves {
            self.cut(&host_name, "moves");
        }
    }

    /// Everything counted since the last take; the templates are kept.
    pub fn take(&mut self) -> Delta {
        let mut delta = Delta {
            moves: std::mem::take(&mut self.moves),
            ..Delta::default()
        };
        let mut hosts: Vec<&String> = self.hosts.keys().collect();
        hosts.sort();
        let hosts: Vec<String> = hosts.into_iter().cloned().collect();
        for name in hosts {
            let Some(host) = self.hosts.get_mut(&name) else {
                continue;
            };
            let mut pending: Vec<(EndpointId, Pending)> = host.pending.drain().collect();
            pending.sort_by_key(|(id, _)| *id);
            for (id, p) in pending {
                let Some(template) = host.tree.template_of(id) else {
                    continue;
                };
                let method = host.tree.method_of(id).unwrap_or_default();
                let mut facts: Vec<(Fact, u64)> = p.facts.into_iter().collect();
                facts.sort();
                delta.endpoints.push(Endpoint {
                    host: name.clone(),
                    method,
                    template,
                    count: p.count,
                    first_ns: p.first_ns,
                    last_ns: p.last_ns,
                    facts,
                });
            }
        }
        delta.cuts = std::mem::take(&mut self.cuts)
            .into_iter()
            .map(|((host, reason), count)| CutCount {
                host,
                reason,
                count,
            })
            .collect();
        delta
    }

    pub fn counters(&self) -> Counters {
        let mut c = self.counters.clone();
        c.hosts = self.hosts.len() as u64;
        c.templates = self.hosts.values().map(|h| h.tree.templates() as u64).sum();
        c.facts = self.facts_total as u64;
        c
    }
}

/// The analysis threads' handle: [`Shared::observe`] computes the facts, then counts them
/// under a short lock.
pub struct Shared {
    config: Config,
    inner: Mutex<Inventory>,
    pub flushes: AtomicU64,
    pub flush_failures: AtomicU64,
}

impl Shared {
    pub fn new(config: Config) -> Shared {
        Shared {
            inner: Mutex::new(Inventory::new(config.clone())),
            config,
            flushes: AtomicU64::new(0),
            flush_failures: AtomicU64::new(0),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    fn lock(&self) -> MutexGuard<'_, Inventory> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One analysed (and sealed) exchange.
    pub fn observe(&self, ex: &Exchange) {
        match observe::observe(ex, &self.config) {
            Some(o) => self.lock().add(o),
            None => {
                let mut inv = self.lock();
                inv.counters.observed += 1;
                inv.cut("*", "no_host");
            }
        }
    }

    pub fn take(&self) -> Delta {
        self.lock().take()
    }

    pub fn counters(&self) -> Counters {
        self.lock().counters()
    }

    /// `oob_mirror_node_inventory_*` in Prometheus text format.
    pub fn metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        let c = self.counters();
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = write!(
                out,
                "# HELP oob_mirror_node_inventory_{name} {help}\n# TYPE oob_mirror_node_inventory_{name} {kind}\noob_mirror_node_inventory_{name} {value}\n"
            );
        };
        metric(
            "exchanges_total",
            "counter",
            "Exchanges the API discovery looked at.",
            c.observed,
        );
        metric(
            "hosts",
            "gauge",
            "Hosts in the inventory's memory.",
            c.hosts,
        );
        metric(
            "templates",
            "gauge",
            "Endpoints (method and path template) in the inventory's memory.",
            c.templates,
        );
        metric(
            "facts",
            "gauge",
            "Distinct facts (fields, types, statuses...) in the inventory's memory.",
            c.facts,
        );
        metric(
            "flushes_total",
            "counter",
            "Deltas written to the store.",
            self.flushes.load(Ordering::Relaxed),
        );
        metric(
            "flush_failures_total",
            "counter",
            "Deltas the store could not take (their counts are lost).",
            self.flush_failures.load(Ordering::Relaxed),
        );
        let _ = write!(
            out,
            "# HELP oob_mirror_node_inventory_cut_total What the bounds left out, by reason.\n# TYPE oob_mirror_node_inventory_cut_total counter\n"
        );
        for reason in CUT_REASONS {
            let _ = writeln!(
                out,
                "oob_mirror_node_inventory_cut_total{{reason=\"{reason}\"}} {}",
                c.cut.get(reason).copied().unwrap_or(0)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(host: &str, method: &str, path: &str, ts: i64, facts: &[Fact]) -> observe::Observation {
        observe::Observation {
            host: host.into(),
            method: method.into(),
            segments: template::segments(path)
                .into_iter()
                .map(str::to_owned)
                .collect(),
            ts_ns: ts,
            facts: facts.to_vec(),
        }
    }

    #[test]
    fn deltas_add_up_and_moves_come_first() {
        let mut inv = Inventory::new(Config::default());
        let s200 = Fact::new(STATUS, "", "200", "");
        inv.add(obs("h", "GET", "/users/1", 10, std::slice::from_ref(&s200)));
        inv.add(obs("h", "GET", "/users/2", 5, std::slice::from_ref(&s200)));
        let d = inv.take();
        assert_eq!(d.endpoints.len(), 1);
        let e = &d.endpoints[0];
        assert_eq!(
            (e.template.as_str(), e.count, e.first_ns, e.last_ns),
            ("/users/{user_id}", 2, 5, 10)
        );
        assert_eq!(
            e.facts,
            [
                (Fact::new(PARAM, "", "user_id", "integer"), 2),
                (s200.clone(), 2)
            ]
        );
        assert!(inv.take().is_empty());
        for slug in ["a-b", "c-d", "e-f", "g-h"] {
            inv.add(obs("h", "GET", &format!("/p/{slug}"), 1, &[]));
        }
        let _ = inv.take();
        inv.add(obs("h", "GET", "/p/i-j", 2, &[]));
        let d = inv.take();
        assert_eq!(d.moves.len(), 4);
        assert!(d.moves.iter().all(|m| m.to == "/p/{p_slug}"));
        assert!(d
            .moves
            .iter()
            .all(|m| m.params == [("p_slug".to_owned(), "slug".to_owned())]));
        assert_eq!(d.endpoints.len(), 1);
        assert_eq!(d.endpoints[0].count, 1);
        // Only the fifth was pending: the store adds the four it has to the parameter.
        assert_eq!(
            d.endpoints[0].facts,
            [(Fact::new(PARAM, "", "p_slug", "slug"), 1)]
        );
    }

    #[test]
    fn a_collapse_counts_the_merged_literals_as_the_parameter() {
        let mut inv = Inventory::new(Config::default());
        for slug in ["a-b", "c-d", "e-f", "g-h", "i-j", "k-l"] {
            inv.add(obs("h", "GET", &format!("/p/{slug}"), 1, &[]));
            inv.add(obs("h", "GET", &format!("/p/{slug}/x"), 1, &[]));
        }
        let d = inv.take();
        let rows: Vec<_> = d
            .endpoints
            .iter()
            .map(|e| (e.template.clone(), e.count, e.facts.clone()))
            .collect();
        let param = |n| vec![(Fact::new(PARAM, "", "p_slug", "slug"), n)];
        assert_eq!(
            rows,
            [
                ("/p/{p_slug}".to_owned(), 6, param(6)),
                ("/p/{p_slug}/x".to_owned(), 6, param(6)),
            ]
        );
    }

    #[test]
    fn bounds_are_counted() {
        let config = Config {
            max_hosts: 1,
            max_facts: 2,
            ..Config::default()
        };
        let mut inv = Inventory::new(config);
        let f = |n: &str| Fact::new(QUERY, "", n, "string");
        inv.add(obs("a", "GET", "/x", 1, &[f("1"), f("2"), f("3")]));
        inv.add(obs("b", "GET", "/x", 1, &[]));
        let c = inv.counters();
        assert_eq!(c.cut.get("hosts"), Some(&1));
        assert_eq!(c.cut.get("facts"), Some(&1));
        let d = inv.take();
        assert_eq!(d.endpoints[0].facts.len(), 2);
        assert_eq!(
            d.cuts,
            [
                CutCount {
                    host: "*".into(),
                    reason: "hosts".into(),
                    count: 1
                },
                CutCount {
                    host: "a".into(),
                    reason: "facts".into(),
                    count: 1
                },
            ]
        );
    }

    #[test]
    fn a_hundred_thousand_random_paths_under_one_host_are_bounded_and_counted() {
        let paths = |inv: &mut Inventory| {
            let mut state: u64 = 42;
            for i in 0..100_000u64 {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let (a, b) = (state >> 40, (state >> 20) & 0xfffff);
                inv.add(obs(
                    "evil",
                    "GET",
                    &format!("/r{a:x}/q{b:x}/z{i:x}x"),
                    1,
                    &[],
                ));
            }
        };
        // By default the fan-out bound generalises them: nothing lost, all counted as cut.
        let mut inv = Inventory::new(Config::default());
        paths(&mut inv);
        let c = inv.counters();
        assert_eq!(c.observed, 100_000);
        assert!(c.templates <= 1000, "{c:?}");
        let fanout = c.cut.get("fanout").copied().unwrap_or(0);
        assert!(fanout > 99_000, "{c:?}");
        let d = inv.take();
        assert_eq!(d.endpoints.iter().map(|e| e.count).sum::<u64>(), 100_000);
        assert!(d.endpoints.len() <= 1000);
        // Without it, the template and node bounds refuse what does not fit, and count it.
        let mut config = Config::default();
        config.limits.max_children = usize::MAX;
        let mut inv = Inventory::new(config);
        paths(&mut inv);
        let c = inv.counters();
        assert!(c.templates <= 1000, "{c:?}");
        let lost: u64 = ["templates", "nodes"]
            .iter()
            .filter_map(|r| c.cut.get(*r))
            .sum();
        assert!(lost > 90_000, "{c:?}");
        let d = inv.take();
        let counted: u64 = d.endpoints.iter().map(|e| e.count).sum();
        // Every exchange is either in an endpoint's count or refused and counted.
        assert_eq!(counted + lost, 100_000, "{c:?}");
        assert_eq!(
            d.cuts.iter().map(|c| c.count).sum::<u64>(),
            lost,
            "{:?}",
            d.cuts
        );
    }
}
