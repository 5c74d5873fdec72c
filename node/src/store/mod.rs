//! The store: every detection, with its exchange as analysed, kept for the console and the API.
//!
//! - [`sqlite`]: the default, embedded SQLite (`--store sqlite:PATH`, by default
//!   `<data-dir>/attacks.sqlite`), for one node.
//! - [`postgres`]: PostgreSQL (`--store postgres://user@host:port/db`), for several replicas
//!   sharing one store; the password comes from the environment, never from the URL.
//!
//! Both are behind one synchronous trait, [`Store`], and one generic implementation of it
//! ([`sql::SqlStore`]) over the little each driver has to give: run a statement, read rows.
//! Versioned migrations ([`MIGRATIONS`], the SQL files in `migrations/`) are applied at start
//! and recorded in `schema_migrations`; on PostgreSQL under an advisory lock, so replicas that
//! start at once apply each migration once.
//!
//! Writes never wait for the store: the analysis side hands attacks to a [`StoreWriter`], whose
//! bounded channel drops (and counts) when full, and whose own thread owns the write connection,
//! writes in batches, prunes by age and count, and logs an outage once a minute. Reads from
//! async code go to a [`StoreReader`]: a thread with its own connection, answering over
//! `tokio::sync::oneshot`, so a hyper handler `.await`s without blocking the runtime.
//!
//! Why `rusqlite` and the synchronous `postgres` crate, not sqlx: the store has exactly two
//! connections per process (the writer's and the reader's), each owned by one thread, so an
//! async pool buys nothing; the two synchronous drivers sit behind one small trait with the same
//! SQL, where sqlx would bring its own runtime coupling, macros and a much larger build. The
//! `postgres` crate runs a private single-thread tokio runtime inside its client, which is why
//! its calls must stay on the store's own threads (never on a runtime worker), as they do here.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::analysis::RuleMatch;
use crate::pairing::Exchange;

pub mod inventory;
pub mod postgres;
mod reader;
pub mod sql;
pub mod sqlite;
mod writer;

pub use inventory::{InventoryData, InventoryFilter, InventoryFlusher};
pub use reader::StoreReader;
pub use writer::{StoreCounters, StoreWriter};

/// One rule that matched, as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRule {
    pub id: u32,
    pub msg: String,
    pub severity: String,
    pub data: String,
}

/// One header, as stored (lossy UTF-8).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredHeader {
    pub name: String,
    pub value: String,
}

/// One detection with its exchange as analysed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attack {
    /// The exchange id: unique; a second insert of the same id is ignored.
    pub id: String,
    pub request_id: Option<String>,
    /// Unix time, nanoseconds.
    pub ts_ns: i64,
    /// `ip:port` as received.
    pub source: Option<String>,
    /// The ip part of `source`, for filters and grouping ([`source_ip`]).
    pub source_ip: Option<String>,
    pub method: String,
    /// The host, as received (port included if it had one).
    pub authority: Option<String>,
    /// Path with the query string.
    pub path: String,
    pub protocol: Option<String>,
    /// `None` when analysed without its response.
    pub status: Option<u16>,
    /// The primary attack class, e.g. `"sqli"`, as the caller classified it.
    pub class: String,
    /// All classes of its rules.
    pub classes: Vec<String>,
    /// Its severity, e.g. `"CRITICAL"` ([`classes::severity`](crate::analysis::classes::severity)).
    pub severity: String,
    pub rules: Vec<StoredRule>,
    pub request_headers: Vec<StoredHeader>,
    /// A prefix of the request body, lossy UTF-8.
    pub request_body: String,
    /// The body's true size.
    pub request_body_size: u64,
    pub response_headers: Vec<StoredHeader>,
    /// A prefix of the response body, lossy UTF-8.
    pub response_body: String,
    pub response_body_size: u64,
}

/// Which attacks: every field set narrows; the default is all of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttackFilter {
    /// At or after (unix ns).
    pub since_ns: Option<i64>,
    /// Before (unix ns, exclusive).
    pub until_ns: Option<i64>,
    /// The host, compared without its port and case-insensitively (`Example.com:8080` matches
    /// `example.com`).
    pub host: Option<String>,
    /// The path (with query) starts with this, case-sensitively.
    pub path_prefix: Option<String>,
    /// The source ip, exactly.
    pub source: Option<String>,
    /// The primary class, exactly.
    pub class: Option<String>,
    /// The attack's (highest) severity, case-insensitively.
    pub severity: Option<String>,
    pub status: Option<u16>,
    /// One of its rules has this id.
    pub rule_id: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttackPage {
    pub items: Vec<Attack>,
    /// All the attacks that match the filter, not only this page.
    pub total: u64,
}

/// Repeated attacks of one class from one source within one window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Group {
    pub class: String,
    pub source_ip: Option<String>,
    pub count: u64,
    pub first_ns: i64,
    pub last_ns: i64,
    /// The newest attack of the group.
    pub latest: Attack,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupPage {
    pub items: Vec<Group>,
    /// All the groups that match the filter.
    pub total: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClassCount {
    pub class: String,
    pub count: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub total: u64,
    /// Most frequent first, then by name.
    pub by_class: Vec<ClassCount>,
    /// Most severe first ([`severity_rank`](crate::analysis::classes::severity_rank)), then by name.
    pub by_severity: Vec<(String, u64)>,
    pub first_ns: Option<i64>,
    pub last_ns: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// A flag or URL that cannot work.
    Config(String),
    /// The database said no, or could not be reached.
    Backend(String),
    /// The database has a schema version this node does not know (a newer node migrated it).
    SchemaTooNew { found: i64, known: i64 },
    /// The reader's queue is full.
    Busy,
    /// The store's thread is gone.
    Closed,
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Config(m) => write!(f, "store: {m}"),
            StoreError::Backend(m) => write!(f, "store: {m}"),
            StoreError::SchemaTooNew { found, known } => write!(
                f,
                "store: the schema is at version {found}, newer than this node knows ({known}); \
                 run a node at least as new as the one that migrated it"
            ),
            StoreError::Busy => write!(f, "store: too many reads waiting"),
            StoreError::Closed => write!(f, "store: the store's thread has stopped"),
        }
    }
}

impl std::error::Error for StoreError {}

/// What a backend does. Every method is synchronous: it runs on a store thread.
pub trait Store: Send {
    /// Applies the migrations not applied yet; idempotent.
    fn migrate(&mut self) -> Result<(), StoreError>;
    /// In one transaction; an attack whose id is already stored is ignored.
    fn insert(&mut self, attacks: &[Attack]) -> Result<(), StoreError>;
    /// Newest first (`ts_ns` descending, then `id` descending).
    fn list(&mut self, f: &AttackFilter, limit: u32, offset: u64)
        -> Result<AttackPage, StoreError>;
    /// Newest group first (by its latest attack); the key is (class, source ip,
    /// `ts_ns / window`). A `window_secs` of 0 counts as 1.
    fn groups(
        &mut self,
        f: &AttackFilter,
        window_secs: u32,
        limit: u32,
        offset: u64,
    ) -> Result<GroupPage, StoreError>;
    fn get(&mut self, id: &str) -> Result<Option<Attack>, StoreError>;
    fn stats(&mut self, f: &AttackFilter) -> Result<Stats, StoreError>;
    /// Deletes attacks older than `now_ns - max_age_ns`, then all but the newest `max_count`;
    /// returns how many were deleted.
    fn prune(
        &mut self,
        max_age_ns: Option<i64>,
        max_count: Option<u64>,
        now_ns: i64,
    ) -> Result<u64, StoreError>;
    /// Adds an inventory delta, in one transaction ([`inventory::apply`]).
    fn inventory_apply(&mut self, delta: &crate::inventory::Delta) -> Result<(), StoreError>;
    /// The inventory's endpoints a filter selects ([`inventory::load`]).
    fn inventory(&mut self, f: &InventoryFilter) -> Result<InventoryData, StoreError>;
}

/// One schema version, as SQL for each backend (the same schema; PostgreSQL's ids compare
/// byte-wise, as SQLite's do).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sqlite: &'static str,
    pub postgres: &'static str,
}

/// The migrations, in order; a store records each applied one in `schema_migrations`.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "attacks",
        sqlite: include_str!("migrations/sqlite/0001_attacks.sql"),
        postgres: include_str!("migrations/postgres/0001_attacks.sql"),
    },
    Migration {
        version: 2,
        name: "inventory",
        sqlite: include_str!("migrations/sqlite/0002_inventory.sql"),
        postgres: include_str!("migrations/postgres/0002_inventory.sql"),
    },
];

/// Where the store is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    Sqlite(PathBuf),
    /// The URL, without a password.
    Postgres(String),
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backend::Sqlite(p) => write!(f, "sqlite:{}", p.display()),
            Backend::Postgres(u) => f.write_str(u),
        }
    }
}

/// Where log lines go (stderr unless a test or an embedder says otherwise).
pub type LogHook = Arc<dyn Fn(&str) + Send + Sync>;

pub const DEFAULT_DATA_DIR: &str = "./oob-mirror-data";
pub const DEFAULT_SQLITE_FILE: &str = "attacks.sqlite";
pub const DEFAULT_RETENTION_DAYS: u64 = 30;
pub const DEFAULT_RETENTION_MAX_ATTACKS: u64 = 1_000_000;
pub const DEFAULT_QUEUE: usize = 10_000;
/// The environment variables the PostgreSQL password is read from, the first one set.
pub const PASSWORD_ENV: &[&str] = &["OOB_MIRROR_NODE_STORE_PASSWORD", "PGPASSWORD"];

/// The store's settings: `--store`, `--data-dir`, `--retention-days`,
/// `--retention-max-attacks`, `--store-queue`, and a few knobs for tests.
#[derive(Clone)]
pub struct StoreConfig {
    /// `--store`: `None` is SQLite at `<data_dir>/attacks.sqlite`.
    pub store: Option<Backend>,
    /// `--data-dir` (default `./oob-mirror-data`).
    pub data_dir: PathBuf,
    /// `--retention-days` (default 30; 0: no age limit).
    pub max_age: Option<Duration>,
    /// `--retention-max-attacks` (default 1,000,000; 0: no limit).
    pub max_attacks: Option<u64>,
    /// `--store-queue`: attacks waiting for the writer before new ones are dropped (10,000).
    pub queue: usize,
    /// Attacks written in one transaction, at most (256).
    pub batch: usize,
    /// How often the writer prunes (5 minutes; also once at start).
    pub prune_every: Duration,
    /// How long SQLite waits for a lock, and PostgreSQL for a connection (5 s).
    pub timeout: Duration,
    /// At most one outage line per this (one minute).
    pub outage_log_every: Duration,
    /// The PostgreSQL password; `None`: from [`PASSWORD_ENV`] when opening.
    pub password: Option<String>,
    /// Where the writer's log lines go (`None`: stderr).
    pub log: Option<LogHook>,
}

impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreConfig")
            .field("store", &self.backend())
            .field("max_age", &self.max_age)
            .field("max_attacks", &self.max_attacks)
            .field("queue", &self.queue)
            .field("batch", &self.batch)
            .field("prune_every", &self.prune_every)
            .field("timeout", &self.timeout)
            .field("outage_log_every", &self.outage_log_every)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            store: None,
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            max_age: Some(Duration::from_secs(DEFAULT_RETENTION_DAYS * 86_400)),
            max_attacks: Some(DEFAULT_RETENTION_MAX_ATTACKS),
            queue: DEFAULT_QUEUE,
            batch: 256,
            prune_every: Duration::from_secs(300),
            timeout: Duration::from_secs(5),
            outage_log_every: Duration::from_secs(60),
            password: None,
            log: None,
        }
    }
}

/// The flags [`StoreConfig::parse_flag`] takes; each takes a value.
pub const FLAGS: &[&str] = &[
    "--store",
    "--data-dir",
    "--retention-days",
    "--retention-max-attacks",
    "--store-queue",
];

/// For the binary's usage text.
pub const USAGE: &str = "  \
--store sqlite:PATH         embedded SQLite (default: sqlite:<data-dir>/attacks.sqlite)
  --store postgres://USER@HOST:PORT/DB
                              PostgreSQL, for several replicas; the password is read from
                              OOB_MIRROR_NODE_STORE_PASSWORD (or PGPASSWORD), never the URL
  --data-dir DIR              where the default store lives (default ./oob-mirror-data)
  --retention-days N          delete attacks older than N days (default 30; 0: keep)
  --retention-max-attacks N   keep the newest N attacks (default 1000000; 0: no limit)
  --store-queue N             attacks waiting to be written before new ones are dropped
                              (default 10000)
";

impl StoreConfig {
    pub fn is_flag(flag: &str) -> bool {
        FLAGS.contains(&flag)
    }

    /// One of [`FLAGS`] and its value.
    pub fn parse_flag(&mut self, flag: &str, value: &str) -> Result<(), String> {
        let number = |v: &str| -> Result<u64, String> {
            v.parse::<u64>()
                .map_err(|_| format!("{flag}: not a number: {v}"))
        };
        match flag {
            "--store" => self.store = Some(parse_store(value)?),
            "--data-dir" => {
                if value.is_empty() {
                    return Err("--data-dir: empty".into());
                }
                self.data_dir = PathBuf::from(value);
            }
            "--retention-days" => {
                let days = number(value)?;
                self.max_age = match days {
                    0 => None,
                    d => Some(Duration::from_secs(
                        d.checked_mul(86_400)
                            .ok_or_else(|| format!("--retention-days: too large: {value}"))?,
                    )),
                };
            }
            "--retention-max-attacks" => {
                self.max_attacks = match number(value)? {
                    0 => None,
                    n => Some(n),
                };
            }
            "--store-queue" => {
                let n = number(value)?;
                if n == 0 {
                    return Err("--store-queue: at least 1".into());
                }
                self.queue = usize::try_from(n).map_err(|_| format!("{flag}: too large"))?;
            }
            other => return Err(format!("not a store flag: {other}")),
        }
        Ok(())
    }

    /// Where the store is, with the default resolved.
    pub fn backend(&self) -> Backend {
        match &self.store {
            Some(b) => b.clone(),
            None => Backend::Sqlite(self.data_dir.join(DEFAULT_SQLITE_FILE)),
        }
    }

    /// The password for PostgreSQL: the configured one, else the environment's.
    fn password(&self) -> Option<String> {
        self.password.clone().or_else(|| {
            PASSWORD_ENV
                .iter()
                .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        })
    }

    /// A connection, not migrated yet. Call it on a thread of its own, never on an async
    /// runtime's worker (the PostgreSQL driver runs a runtime of its own).
    pub fn open(&self) -> Result<Box<dyn Store>, StoreError> {
        match self.backend() {
            Backend::Sqlite(path) => Ok(Box::new(sqlite::open(&path, self.timeout)?)),
            Backend::Postgres(url) => Ok(Box::new(postgres::open(
                &url,
                self.password(),
                self.timeout,
            )?)),
        }
    }

    pub(crate) fn log(&self, line: &str) {
        match &self.log {
            Some(hook) => hook(line),
            None => eprintln!("{line}"),
        }
    }
}

fn parse_store(value: &str) -> Result<Backend, String> {
    if let Some(path) = value.strip_prefix("sqlite:") {
        if path.is_empty() {
            return Err("--store sqlite:PATH: the path is empty".into());
        }
        return Ok(Backend::Sqlite(PathBuf::from(path)));
    }
    if value.starts_with("postgres://") || value.starts_with("postgresql://") {
        let config = ::postgres::Config::from_str(value)
            .map_err(|e| format!("--store: not a PostgreSQL URL: {e}"))?;
        if config.get_password().is_some() {
            // The URL is on the command line, where every process listing shows it.
            return Err(format!(
                "--store: no password in the URL; set {} instead",
                PASSWORD_ENV.join(" or ")
            ));
        }
        if config.get_user().is_none() {
            return Err("--store: the URL needs a user (postgres://USER@HOST:PORT/DB)".into());
        }
        return Ok(Backend::Postgres(value.to_owned()));
    }
    Err(format!(
        "--store: sqlite:PATH or postgres://USER@HOST:PORT/DB, not {value}"
    ))
}

/// The ip part of `ip:port` (`[::1]:80` → `::1`); anything else as it is.
pub fn source_ip(source: &str) -> String {
    if let Ok(addr) = std::net::SocketAddr::from_str(source) {
        return addr.ip().to_string();
    }
    match source.split_once(':') {
        Some((ip, port)) if !port.contains(':') => ip.to_owned(),
        _ => source.to_owned(),
    }
}

/// The host of an authority, for the host filter: lowercase, without the port
/// (`Example.COM:8080` → `example.com`, `[::1]:80` → `[::1]`).
pub fn host_key(authority: &str) -> String {
    let a = authority.trim();
    let host = if a.starts_with('[') {
        match a.find(']') {
            Some(end) => a.get(..=end).unwrap_or(a),
            None => a,
        }
    } else {
        match a.split_once(':') {
            Some((h, port)) if !port.contains(':') => h,
            _ => a,
        }
    };
    host.to_ascii_lowercase()
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn prefix(body: &[u8], limit: usize) -> String {
    lossy(body.get(..limit.min(body.len())).unwrap_or(body))
}

fn headers(h: &[(Vec<u8>, Vec<u8>)]) -> Vec<StoredHeader> {
    h.iter()
        .map(|(n, v)| StoredHeader {
            name: lossy(n),
            value: lossy(v),
        })
        .collect()
}

impl Attack {
    /// The attack of an exchange (as analysed, after redaction) and the rules that matched:
    /// bodies cut to `body_limit` bytes, the severity the highest among the rules.
    pub fn from_exchange(
        exchange: &Exchange,
        rules: &[RuleMatch],
        class: String,
        classes: Vec<String>,
        body_limit: usize,
    ) -> Attack {
        let response = exchange.response.as_ref();
        Attack {
            id: exchange.id.clone(),
            request_id: exchange.request_id.clone(),
            ts_ns: i64::try_from(exchange.ts_ns).unwrap_or(i64::MAX),
            source: exchange.source.clone(),
            source_ip: exchange.source.as_deref().map(source_ip),
            method: exchange.method.clone(),
            authority: exchange.authority.clone(),
            path: exchange.path.clone(),
            protocol: exchange.protocol.clone(),
            status: response.map(|r| r.status),
            class,
            classes,
            severity: crate::analysis::classes::severity(rules).to_ascii_uppercase(),
            rules: rules
                .iter()
                .map(|r| StoredRule {
                    id: r.id,
                    msg: r.msg.clone(),
                    severity: r.severity.clone(),
                    data: r.data.clone(),
                })
                .collect(),
            request_headers: headers(&exchange.request_headers),
            request_body: prefix(&exchange.request_body, body_limit),
            request_body_size: exchange.request_body.len() as u64,
            response_headers: response.map(|r| headers(&r.headers)).unwrap_or_default(),
            response_body: response
                .map(|r| prefix(&r.body, body_limit))
                .unwrap_or_default(),
            response_body_size: response.map_or(0, |r| r.body.len() as u64),
        }
    }
}

/// The store's counters in Prometheus text format, `oob_mirror_node_store_*`.
pub fn metrics(counters: &StoreCounters, out: &mut String) {
    use std::fmt::Write as _;
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        let _ = write!(
            out,
            "# HELP oob_mirror_node_store_{name} {help}\n# TYPE oob_mirror_node_store_{name} {kind}\noob_mirror_node_store_{name} {value}\n"
        );
    };
    metric(
        "written_total",
        "counter",
        "Attacks written to the store.",
        counters.written,
    );
    metric(
        "dropped_queue_full_total",
        "counter",
        "Attacks dropped because the store's queue was full.",
        counters.dropped_queue_full,
    );
    metric(
        "failed_total",
        "counter",
        "Attacks lost because the store could not be written.",
        counters.failed,
    );
    metric(
        "outages_total",
        "counter",
        "Times writes to the store started failing.",
        counters.outages,
    );
    metric(
        "pruned_total",
        "counter",
        "Attacks deleted by retention (age or count).",
        counters.pruned,
    );
    metric(
        "queued",
        "gauge",
        "Attacks waiting for the store's writer.",
        counters.queued,
    );
    metric(
        "up",
        "gauge",
        "1 while the last write to the store succeeded, 0 during an outage.",
        u64::from(!counters.failing),
    );
}
