//! The store, against the real thing: every behaviour once on SQLite (a temp file) and once on
//! PostgreSQL (a throwaway server, support/pg.rs), by the same test functions
//! (`sqlite::NAME` and `postgres::NAME`).
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

#[path = "support/pg.rs"]
mod pg;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use oob_mirror_node::analysis::RuleMatch;
use oob_mirror_node::inventory;
use oob_mirror_node::pairing::{Exchange, ResponsePart};
use oob_mirror_node::store::{
    self, Attack, AttackFilter, Backend, ClassCount, InventoryFilter, LogHook, Store, StoreConfig,
    StoreCounters, StoreError, StoreReader, StoreWriter, StoredHeader, StoredRule,
};
use pg::PgCluster;

const S: i64 = 1_000_000_000;
/// 2026-12-01T00:00:00Z: the attacks' clock starts here.
const T0: i64 = 1_796_083_200 * S;

// --- the two backends ------------------------------------------------------------------------

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "oob-mirror-store-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One PostgreSQL server for the tests running at once (each has its own database); it stops
/// when the last of them ends.
fn shared_cluster() -> Arc<PgCluster> {
    static SHARED: Mutex<Weak<PgCluster>> = Mutex::new(Weak::new());
    let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = shared.upgrade() {
        return c;
    }
    let c = Arc::new(PgCluster::start());
    *shared = Arc::downgrade(&c);
    c
}

fn new_database(cluster: &PgCluster) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!("t{}", N.fetch_add(1, Ordering::Relaxed));
    cluster.psql(&format!("CREATE DATABASE {name} OWNER {}", pg::USER));
    format!(
        "postgres://{}@127.0.0.1:{}/{name}",
        pg::USER,
        cluster.port()
    )
}

enum Kind {
    Sqlite,
    Postgres,
}

/// A fresh, empty store of one kind.
struct Db {
    cfg: StoreConfig,
    kind: Kind,
    /// Where the SQLite file is, removed with the Db.
    _dir: TempDir,
    _cluster: Option<Arc<PgCluster>>,
}

impl Db {
    fn sqlite() -> Db {
        let dir = TempDir::new();
        let cfg = StoreConfig {
            data_dir: dir.0.join("data"),
            ..StoreConfig::default()
        };
        Db {
            cfg,
            kind: Kind::Sqlite,
            _dir: dir,
            _cluster: None,
        }
    }

    fn postgres() -> Db {
        let cluster = shared_cluster();
        Db::postgres_in(&cluster, Some(Arc::clone(&cluster)))
    }

    /// A new database in `cluster`; `keep` keeps a shared cluster running while the Db lives.
    fn postgres_in(cluster: &PgCluster, keep: Option<Arc<PgCluster>>) -> Db {
        let url = new_database(cluster);
        let mut cfg = StoreConfig::default();
        cfg.parse_flag("--store", &url).unwrap();
        cfg.password = Some(pg::PASSWORD.into());
        Db {
            cfg,
            kind: Kind::Postgres,
            _dir: TempDir::new(),
            _cluster: keep,
        }
    }

    fn open(&self) -> Box<dyn Store> {
        let mut s = self.cfg.open().unwrap();
        s.migrate().unwrap();
        s
    }

    /// A connection of the test's own, beside the store's.
    fn raw(&self) -> Raw {
        match self.cfg.backend() {
            Backend::Sqlite(p) => Raw::Sqlite(rusqlite::Connection::open(p).unwrap()),
            Backend::Postgres(url) => {
                let mut c: ::postgres::Config = url.parse().unwrap();
                c.password(pg::PASSWORD);
                Raw::Pg(Box::new(c.connect(::postgres::NoTls).unwrap()))
            }
        }
    }
}

enum Raw {
    Sqlite(rusqlite::Connection),
    Pg(Box<::postgres::Client>),
}

impl Raw {
    fn exec(&mut self, sql: &str) {
        match self {
            Raw::Sqlite(c) => c.execute_batch(sql).unwrap(),
            Raw::Pg(c) => c.batch_execute(sql).unwrap(),
        }
    }

    fn count(&mut self, sql: &str) -> i64 {
        match self {
            Raw::Sqlite(c) => c.query_row(sql, [], |r| r.get(0)).unwrap(),
            Raw::Pg(c) => c.query_one(sql, &[]).unwrap().get(0),
        }
    }
}

macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $( #[test] fn $name() { super::$name(&super::Db::sqlite()); } )*
        }
        mod postgres {
            $( #[test] fn $name() { super::$name(&super::Db::postgres()); } )*
        }
    };
}

both!(
    insert_and_get,
    duplicate_id_ignored,
    every_filter,
    pages_total_and_order,
    groups_by_class_source_and_window,
    stats_overall_and_filtered,
    prune_by_age,
    prune_by_count,
    migrations_idempotent_and_survive_reopen,
    concurrent_migrations_apply_once,
    schema_too_new_refused,
    text_is_kept_nul_replaced,
    writer_writes_and_reader_reads,
    writer_full_queue_drops_and_counts,
    writer_prunes_by_age_and_count,
    outage_counted_logged_once_then_recovery,
    inventory_replicas_add_up_to_one_inventory,
    inventory_moves_and_filters,
    inventory_reader_and_flusher,
);

// --- test data --------------------------------------------------------------------------------

fn rule(id: u32, severity: &str) -> StoredRule {
    StoredRule {
        id,
        msg: format!("rule {id}"),
        severity: severity.into(),
        data: format!("matched {id}"),
    }
}

fn h(name: &str, value: &str) -> StoredHeader {
    StoredHeader {
        name: name.into(),
        value: value.into(),
    }
}

/// An attack `secs` after T0, of `class`, from `ip` (port 40000).
fn attack(id: &str, secs: i64, class: &str, ip: Option<&str>) -> Attack {
    Attack {
        id: id.into(),
        request_id: Some(format!("req-{id}")),
        ts_ns: T0 + secs * S,
        source: ip.map(|ip| format!("{ip}:40000")),
        source_ip: ip.map(str::to_owned),
        method: "GET".into(),
        authority: Some("shop.example.com".into()),
        path: format!("/search?q={id}"),
        protocol: Some("HTTP/1.1".into()),
        status: Some(200),
        class: class.into(),
        classes: vec![class.into()],
        severity: "CRITICAL".into(),
        rules: vec![rule(942100, "CRITICAL")],
        request_headers: vec![h("host", "shop.example.com"), h("user-agent", "t")],
        request_body: String::new(),
        request_body_size: 0,
        response_headers: vec![h("content-type", "text/html")],
        response_body: "<html>".into(),
        response_body_size: 6,
    }
}

fn ids(items: &[Attack]) -> Vec<&str> {
    items.iter().map(|a| a.id.as_str()).collect()
}

fn list_ids(s: &mut dyn Store, f: &AttackFilter) -> Vec<String> {
    let page = s.list(f, 1000, 0).unwrap();
    assert_eq!(page.total as usize, page.items.len());
    page.items.into_iter().map(|a| a.id).collect()
}

// --- the behaviours -----------------------------------------------------------------------------

fn insert_and_get(db: &Db) {
    let mut s = db.open();
    let mut a = attack("a1", 0, "sqli", Some("203.0.113.7"));
    a.method = "POST".into();
    a.classes = vec!["sqli".into(), "protocol".into()];
    a.rules = vec![rule(942100, "CRITICAL"), rule(920350, "WARNING")];
    a.request_body = "q=1' OR '1'='1".into();
    a.request_body_size = 70_000;
    a.status = None;
    a.response_headers = vec![];
    a.response_body = String::new();
    a.response_body_size = 0;
    let b = Attack {
        request_id: None,
        source: None,
        source_ip: None,
        authority: None,
        protocol: None,
        ..attack("b1", 1, "xss", None)
    };
    s.insert(&[a.clone(), b.clone()]).unwrap();
    assert_eq!(s.get("a1").unwrap(), Some(a));
    assert_eq!(s.get("b1").unwrap(), Some(b));
    assert_eq!(s.get("nope").unwrap(), None);
    s.insert(&[]).unwrap();
    assert_eq!(s.list(&AttackFilter::default(), 10, 0).unwrap().total, 2);
}

fn duplicate_id_ignored(db: &Db) {
    let mut s = db.open();
    let first = attack("dup", 0, "sqli", Some("203.0.113.7"));
    let mut again = attack("dup", 5, "xss", Some("198.51.100.1"));
    again.rules = vec![rule(941100, "CRITICAL")];
    s.insert(std::slice::from_ref(&first)).unwrap();
    s.insert(&[again.clone(), attack("other", 1, "sqli", None)])
        .unwrap();
    // In one batch too.
    s.insert(&[attack("twice", 2, "rce", None), again]).unwrap();
    assert_eq!(s.get("dup").unwrap(), Some(first));
    let all = AttackFilter::default();
    assert_eq!(list_ids(s.as_mut(), &all), ["twice", "other", "dup"]);
    let by_rule = |r| AttackFilter {
        rule_id: Some(r),
        ..AttackFilter::default()
    };
    assert_eq!(list_ids(s.as_mut(), &by_rule(941100)), Vec::<String>::new());
    assert_eq!(
        list_ids(s.as_mut(), &by_rule(942100)),
        ["twice", "other", "dup"]
    );
}

fn every_filter(db: &Db) {
    let mut s = db.open();
    let mut a = attack("a", 10, "sqli", Some("203.0.113.7"));
    a.authority = Some("Shop.Example.com:8443".into());
    a.path = "/api/users?id=1".into();
    a.status = Some(403);
    a.rules = vec![rule(942100, "CRITICAL"), rule(920350, "WARNING")];
    let mut b = attack("b", 20, "xss", Some("198.51.100.1"));
    b.path = "/API/x".into();
    b.severity = "WARNING".into();
    b.rules = vec![rule(941100, "WARNING")];
    let mut c = attack("c", 30, "sqli", Some("2001:db8::1"));
    c.authority = Some("[2001:db8::5]:443".into());
    c.path = "/api".into();
    c.status = None;
    let mut d = attack("d", 40, "rce", None);
    d.authority = None;
    d.severity = "ERROR".into();
    d.rules = vec![rule(932100, "ERROR"), rule(920350, "WARNING")];
    s.insert(&[a, b, c, d]).unwrap();

    let f = AttackFilter::default;
    let check = |s: &mut Box<dyn Store>, f: AttackFilter, want: &[&str]| {
        assert_eq!(list_ids(s.as_mut(), &f), want, "{f:?}");
    };
    check(&mut s, f(), &["d", "c", "b", "a"]);
    check(
        &mut s,
        AttackFilter {
            since_ns: Some(T0 + 20 * S),
            ..f()
        },
        &["d", "c", "b"],
    );
    check(
        &mut s,
        AttackFilter {
            until_ns: Some(T0 + 20 * S),
            ..f()
        },
        &["a"],
    );
    check(
        &mut s,
        AttackFilter {
            since_ns: Some(T0 + 20 * S),
            until_ns: Some(T0 + 40 * S),
            ..f()
        },
        &["c", "b"],
    );
    check(
        &mut s,
        AttackFilter {
            host: Some("shop.example.com".into()),
            ..f()
        },
        &["b", "a"],
    );
    check(
        &mut s,
        AttackFilter {
            host: Some("SHOP.example.COM:80".into()),
            ..f()
        },
        &["b", "a"],
    );
    check(
        &mut s,
        AttackFilter {
            host: Some("[2001:db8::5]".into()),
            ..f()
        },
        &["c"],
    );
    check(
        &mut s,
        AttackFilter {
            host: Some("example.com".into()),
            ..f()
        },
        &[],
    );
    check(
        &mut s,
        AttackFilter {
            path_prefix: Some("/api".into()),
            ..f()
        },
        &["c", "a"],
    );
    check(
        &mut s,
        AttackFilter {
            path_prefix: Some("/api/users?id=1".into()),
            ..f()
        },
        &["a"],
    );
    check(
        &mut s,
        AttackFilter {
            path_prefix: Some("/API".into()),
            ..f()
        },
        &["b"],
    );
    check(
        &mut s,
        AttackFilter {
            path_prefix: Some(String::new()),
            ..f()
        },
        &["d", "c", "b", "a"],
    );
    check(
        &mut s,
        AttackFilter {
            source: Some("203.0.113.7".into()),
            ..f()
        },
        &["a"],
    );
    check(
        &mut s,
        AttackFilter {
            source: Some("2001:db8::1".into()),
            ..f()
        },
        &["c"],
    );
    check(
        &mut s,
        AttackFilter {
            source: Some("203.0.113".into()),
            ..f()
        },
        &[],
    );
    check(
        &mut s,
        AttackFilter {
            class: Some("sqli".into()),
            ..f()
        },
        &["c", "a"],
    );
    check(
        &mut s,
        AttackFilter {
            class: Some("rce".into()),
            ..f()
        },
        &["d"],
    );
    check(
        &mut s,
        AttackFilter {
            severity: Some("CRITICAL".into()),
            ..f()
        },
        &["c", "a"],
    );
    check(
        &mut s,
        AttackFilter {
            severity: Some("warning".into()),
            ..f()
        },
        &["b"],
    );
    check(
        &mut s,
        AttackFilter {
            status: Some(403),
            ..f()
        },
        &["a"],
    );
    check(
        &mut s,
        AttackFilter {
            status: Some(200),
            ..f()
        },
        &["d", "b"],
    );
    check(
        &mut s,
        AttackFilter {
            rule_id: Some(920350),
            ..f()
        },
        &["d", "a"],
    );
    check(
        &mut s,
        AttackFilter {
            rule_id: Some(941100),
            ..f()
        },
        &["b"],
    );
    check(
        &mut s,
        AttackFilter {
            rule_id: Some(1),
            ..f()
        },
        &[],
    );
    check(
        &mut s,
        AttackFilter {
            class: Some("sqli".into()),
            rule_id: Some(920350),
            host: Some("shop.example.com".into()),
            status: Some(403),
            ..f()
        },
        &["a"],
    );
}

fn pages_total_and_order(db: &Db) {
    let mut s = db.open();
    // 25 attacks, in pairs sharing a timestamp, inserted out of order.
    let mut all: Vec<Attack> = (0..25)
        .map(|i| attack(&format!("id{i:02}"), i / 2, "sqli", Some("203.0.113.7")))
        .collect();
    all.reverse();
    all.swap(3, 17);
    s.insert(&all).unwrap();
    let want: Vec<String> = (0..25).rev().map(|i| format!("id{i:02}")).collect();
    let f = AttackFilter::default();
    let p1 = s.list(&f, 10, 0).unwrap();
    let p2 = s.list(&f, 10, 10).unwrap();
    let p3 = s.list(&f, 10, 20).unwrap();
    let p4 = s.list(&f, 10, 30).unwrap();
    assert_eq!((p1.total, p2.total, p3.total, p4.total), (25, 25, 25, 25));
    assert_eq!(
        ids(&p1.items),
        want[..10].iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert_eq!(
        ids(&p2.items),
        want[10..20].iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert_eq!(
        ids(&p3.items),
        want[20..].iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert_eq!(p4.items, vec![]);
    let none = s.list(&f, 0, 0).unwrap();
    assert_eq!((none.items.len(), none.total), (0, 25));
    let filtered = s
        .list(
            &AttackFilter {
                since_ns: Some(T0 + 10 * S),
                ..f.clone()
            },
            2,
            1,
        )
        .unwrap();
    assert_eq!(
        (ids(&filtered.items), filtered.total),
        (vec!["id23", "id22"], 5)
    );
}

fn groups_by_class_source_and_window(db: &Db) {
    let mut s = db.open();
    let ip1 = Some("203.0.113.7");
    let ip2 = Some("198.51.100.1");
    s.insert(&[
        attack("s1", 0, "sqli", ip1),
        attack("s2", 10, "sqli", ip1),
        attack("s3", 59, "sqli", ip1),
        attack("s4", 70, "sqli", ip1), // the next minute
        attack("x1", 5, "xss", ip1),
        attack("t1", 20, "sqli", ip2),
        attack("n1", 30, "sqli", None),
        attack("n2", 31, "sqli", None),
    ])
    .unwrap();
    let f = AttackFilter::default();
    let page = s.groups(&f, 60, 100, 0).unwrap();
    assert_eq!(page.total, 5);
    // (class, source ip, count, first s, last s, latest id)
    type Row<'a> = (&'a str, Option<&'a str>, u64, i64, i64, &'a str);
    let rows: Vec<Row> = page
        .items
        .iter()
        .map(|g| {
            (
                g.class.as_str(),
                g.source_ip.as_deref(),
                g.count,
                (g.first_ns - T0) / S,
                (g.last_ns - T0) / S,
                g.latest.id.as_str(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("sqli", ip1, 1, 70, 70, "s4"),
            ("sqli", ip1, 3, 0, 59, "s3"),
            ("sqli", None, 2, 30, 31, "n2"),
            ("sqli", ip2, 1, 20, 20, "t1"),
            ("xss", ip1, 1, 5, 5, "x1"),
        ]
    );
    assert_eq!(page.items[1].latest, attack("s3", 59, "sqli", ip1));

    // A wider window joins both minutes; pages; a filter applies before grouping.
    let wide = s.groups(&f, 3600, 2, 0).unwrap();
    assert_eq!(wide.total, 4);
    let first: Vec<(&str, u64)> = wide
        .items
        .iter()
        .map(|g| (g.latest.id.as_str(), g.count))
        .collect();
    assert_eq!(first, [("s4", 4), ("n2", 2)]);
    let second = s.groups(&f, 3600, 2, 2).unwrap();
    let second: Vec<(&str, u64)> = second
        .items
        .iter()
        .map(|g| (g.latest.id.as_str(), g.count))
        .collect();
    assert_eq!(second, [("t1", 1), ("x1", 1)]);
    let ip1_sqli = s
        .groups(
            &AttackFilter {
                source: Some("203.0.113.7".into()),
                class: Some("sqli".into()),
                until_ns: Some(T0 + 59 * S),
                ..f.clone()
            },
            60,
            10,
            0,
        )
        .unwrap();
    assert_eq!(ip1_sqli.total, 1);
    assert_eq!(
        (
            ip1_sqli.items[0].count,
            ip1_sqli.items[0].latest.id.as_str()
        ),
        (2, "s2")
    );
    // A window of 0 counts as one second.
    assert_eq!(s.groups(&f, 0, 100, 0).unwrap().total, 8);
    assert_eq!(
        s.groups(
            &AttackFilter {
                class: Some("none".into()),
                ..f
            },
            60,
            10,
            0
        )
        .unwrap()
        .total,
        0
    );
}

fn stats_overall_and_filtered(db: &Db) {
    let mut s = db.open();
    let empty = s.stats(&AttackFilter::default()).unwrap();
    assert_eq!(empty, store::Stats::default());
    let mut w = attack("w", 3, "xss", None);
    w.severity = "WARNING".into();
    let mut e = attack("e", 4, "rce", None);
    e.severity = "ERROR".into();
    s.insert(&[
        attack("a", 1, "sqli", None),
        attack("b", 2, "sqli", None),
        w,
        e,
        attack("c", 5, "xss", None),
        attack("d", 6, "lfi", None),
    ])
    .unwrap();
    let st = s.stats(&AttackFilter::default()).unwrap();
    let cc = |class: &str, count| ClassCount {
        class: class.into(),
        count,
    };
    assert_eq!(
        st,
        store::Stats {
            total: 6,
            by_class: vec![cc("sqli", 2), cc("xss", 2), cc("lfi", 1), cc("rce", 1)],
            by_severity: vec![
                ("CRITICAL".into(), 4),
                ("ERROR".into(), 1),
                ("WARNING".into(), 1)
            ],
            first_ns: Some(T0 + S),
            last_ns: Some(T0 + 6 * S),
        }
    );
    let xss = s
        .stats(&AttackFilter {
            class: Some("xss".into()),
            ..AttackFilter::default()
        })
        .unwrap();
    assert_eq!(
        xss,
        store::Stats {
            total: 2,
            by_class: vec![cc("xss", 2)],
            by_severity: vec![("CRITICAL".into(), 1), ("WARNING".into(), 1)],
            first_ns: Some(T0 + 3 * S),
            last_ns: Some(T0 + 5 * S),
        }
    );
}

fn prune_by_age(db: &Db) {
    let mut s = db.open();
    let mut old = attack("old", 0, "sqli", None);
    old.rules = vec![rule(942100, "CRITICAL"), rule(1, "NOTICE")];
    s.insert(&[
        old,
        attack("edge", 100, "sqli", None),
        attack("new", 200, "sqli", None),
    ])
    .unwrap();
    // Older than 100 s at T0 + 200 s: before T0 + 100 s.
    assert_eq!(s.prune(Some(100 * S), None, T0 + 200 * S).unwrap(), 1);
    assert_eq!(
        list_ids(s.as_mut(), &AttackFilter::default()),
        ["new", "edge"]
    );
    let rule1 = AttackFilter {
        rule_id: Some(1),
        ..AttackFilter::default()
    };
    assert_eq!(list_ids(s.as_mut(), &rule1), Vec::<String>::new());
    assert_eq!(db.raw().count("SELECT COUNT(*) FROM attack_rules"), 2);
    assert_eq!(s.prune(Some(100 * S), None, T0 + 200 * S).unwrap(), 0);
    assert_eq!(s.prune(None, None, T0 + 200 * S).unwrap(), 0);
    assert_eq!(s.prune(Some(0), None, T0 + 201 * S).unwrap(), 2);
    assert_eq!(s.stats(&AttackFilter::default()).unwrap().total, 0);
}

fn prune_by_count(db: &Db) {
    let mut s = db.open();
    // Two pairs sharing a timestamp: the cut falls inside one.
    s.insert(&[
        attack("a", 1, "sqli", None),
        attack("b", 2, "sqli", None),
        attack("c", 2, "sqli", None),
        attack("d", 3, "sqli", None),
        attack("e", 3, "sqli", None),
    ])
    .unwrap();
    assert_eq!(s.prune(None, Some(10), T0).unwrap(), 0);
    assert_eq!(s.prune(None, Some(4), T0).unwrap(), 1);
    assert_eq!(
        list_ids(s.as_mut(), &AttackFilter::default()),
        ["e", "d", "c", "b"]
    );
    assert_eq!(s.prune(None, Some(3), T0).unwrap(), 1);
    assert_eq!(
        list_ids(s.as_mut(), &AttackFilter::default()),
        ["e", "d", "c"]
    );
    assert_eq!(db.raw().count("SELECT COUNT(*) FROM attack_rules"), 3);
    // Age and count together: age first, then the count of what is left.
    assert_eq!(s.prune(Some(S / 2), Some(1), T0 + 3 * S).unwrap(), 2);
    assert_eq!(list_ids(s.as_mut(), &AttackFilter::default()), ["e"]);
    assert_eq!(s.prune(None, Some(0), T0).unwrap(), 1);
    assert_eq!(s.stats(&AttackFilter::default()).unwrap().total, 0);
}

fn migrations_idempotent_and_survive_reopen(db: &Db) {
    let mut s = db.open();
    s.migrate().unwrap();
    s.migrate().unwrap();
    s.insert(&[attack("kept", 0, "sqli", None)]).unwrap();
    drop(s);
    let mut again = db.open();
    again.migrate().unwrap();
    assert_eq!(
        again.get("kept").unwrap(),
        Some(attack("kept", 0, "sqli", None))
    );
    let mut raw = db.raw();
    assert_eq!(raw.count("SELECT COUNT(*) FROM schema_migrations"), 2);
    assert_eq!(raw.count("SELECT MAX(version) FROM schema_migrations"), 2);
}

fn concurrent_migrations_apply_once(db: &Db) {
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let cfg = db.cfg.clone();
            std::thread::spawn(move || {
                let mut s = cfg.open()?;
                s.migrate()?;
                s.insert(&[attack("same", 0, "sqli", None)])
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap().unwrap();
    }
    let mut raw = db.raw();
    assert_eq!(raw.count("SELECT COUNT(*) FROM schema_migrations"), 2);
    assert_eq!(raw.count("SELECT COUNT(*) FROM attacks"), 1);
}

fn schema_too_new_refused(db: &Db) {
    drop(db.open());
    db.raw()
        .exec("INSERT INTO schema_migrations (version, name, applied_ns) VALUES (99, 'future', 0)");
    let mut s = db.cfg.open().unwrap();
    assert_eq!(
        s.migrate(),
        Err(StoreError::SchemaTooNew {
            found: 99,
            known: 2
        })
    );
}

fn text_is_kept_nul_replaced(db: &Db) {
    let mut s = db.open();
    let mut a = attack("t", 0, "sqli", None);
    a.path = "/é?q=\u{0}x".into();
    a.request_body = "日本語 \u{0} 'quoted' \"double\" \\ back".into();
    a.request_headers = vec![h("x-\u{0}", "v\u{0}"), h("x-emoji", "🙂")];
    a.rules = vec![StoredRule {
        id: 4_000_000_000,
        msg: "quote ' and \u{0}".into(),
        severity: "CRITICAL".into(),
        data: "ö".into(),
    }];
    s.insert(std::slice::from_ref(&a)).unwrap();
    let mut want = a;
    want.path = "/é?q=\u{FFFD}x".into();
    want.request_body = "日本語 \u{FFFD} 'quoted' \"double\" \\ back".into();
    // JSON columns keep NUL (escaped).
    assert_eq!(s.get("t").unwrap(), Some(want));
    let by_rule = AttackFilter {
        rule_id: Some(4_000_000_000),
        path_prefix: Some("/é?q=\u{0}".into()),
        ..AttackFilter::default()
    };
    assert_eq!(list_ids(s.as_mut(), &by_rule), ["t"]);
}

fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn writer_writes_and_reader_reads(db: &Db) {
    // Without retention: the attacks' T0 may be older than 30 days by the test's clock.
    let cfg = StoreConfig {
        max_age: None,
        ..db.cfg.clone()
    };
    let writer = StoreWriter::spawn(cfg.clone()).unwrap();
    let reader = StoreReader::spawn(cfg).unwrap();
    for i in 0..50 {
        writer.submit(attack(&format!("w{i:02}"), i, "sqli", Some("203.0.113.7")));
    }
    assert!(writer.flush(Duration::from_secs(30)));
    assert_eq!(
        writer.counters(),
        StoreCounters {
            written: 50,
            ..StoreCounters::default()
        }
    );
    let rt = runtime();
    let (page, one, groups, stats) = rt.block_on(async {
        let r2 = reader.clone();
        let page = reader.list(AttackFilter::default(), 3, 0).await.unwrap();
        let one = r2.get("w07".into()).await.unwrap();
        let groups = reader
            .groups(AttackFilter::default(), 60, 10, 0)
            .await
            .unwrap();
        let stats = reader.stats(AttackFilter::default()).await.unwrap();
        (page, one, groups, stats)
    });
    assert_eq!(
        (ids(&page.items), page.total),
        (vec!["w49", "w48", "w47"], 50)
    );
    assert_eq!(one, Some(attack("w07", 7, "sqli", Some("203.0.113.7"))));
    assert_eq!((groups.total, groups.items[0].count), (1, 50));
    assert_eq!(stats.total, 50);
    let mut text = String::new();
    store::metrics(&writer.counters(), &mut text);
    assert!(
        text.contains("\noob_mirror_node_store_written_total 50\n"),
        "{text}"
    );
    assert!(text.contains("\noob_mirror_node_store_up 1\n"), "{text}");
    drop(writer);
    // The writer's thread is gone, the reader still reads.
    let total = rt
        .block_on(reader.list(AttackFilter::default(), 1, 0))
        .unwrap()
        .total;
    assert_eq!(total, 50);
}

/// Holds the store's write lock from another connection until dropped: SQLite's database
/// lock, PostgreSQL's table lock.
fn hold_write_lock(db: &Db) -> Raw {
    let mut raw = db.raw();
    match raw {
        Raw::Sqlite(_) => raw.exec("BEGIN EXCLUSIVE"),
        Raw::Pg(_) => raw.exec("BEGIN; LOCK TABLE attacks IN ACCESS EXCLUSIVE MODE"),
    }
    raw
}

fn writer_full_queue_drops_and_counts(db: &Db) {
    let cfg = StoreConfig {
        queue: 2,
        timeout: Duration::from_secs(60),
        // No prune at start, which would wait for the lock before q0.
        max_age: None,
        max_attacks: None,
        ..db.cfg.clone()
    };
    let writer = StoreWriter::spawn(cfg).unwrap();
    let mut lock = hold_write_lock(db);
    writer.submit(attack("q0", 0, "sqli", None));
    // The writer has taken q0 and waits for the lock; the queue holds two more.
    wait_until("the writer to take q0", Duration::from_secs(10), || {
        let c = writer.counters();
        (c.queued, c.writing) == (0, 1)
    });
    let started = Instant::now();
    for i in 1..=5 {
        writer.submit(attack(&format!("q{i}"), i, "sqli", None));
    }
    assert!(started.elapsed() < Duration::from_secs(1), "submit blocked");
    let c = writer.counters();
    assert_eq!(
        (c.dropped_queue_full, c.queued, c.writing, c.written),
        (3, 2, 1, 0)
    );
    lock.exec("COMMIT");
    assert!(writer.flush(Duration::from_secs(30)));
    assert_eq!(
        writer.counters(),
        StoreCounters {
            written: 3,
            dropped_queue_full: 3,
            ..StoreCounters::default()
        }
    );
    let mut s = db.open();
    assert_eq!(
        list_ids(s.as_mut(), &AttackFilter::default()),
        ["q2", "q1", "q0"]
    );
    let mut text = String::new();
    store::metrics(&writer.counters(), &mut text);
    assert!(
        text.contains(
            "# HELP oob_mirror_node_store_dropped_queue_full_total Attacks dropped because the store's queue was full.\n\
             # TYPE oob_mirror_node_store_dropped_queue_full_total counter\n\
             oob_mirror_node_store_dropped_queue_full_total 3\n"
        ),
        "{text}"
    );
}

/// What the writer logged.
fn log_hook() -> (LogHook, Arc<Mutex<Vec<String>>>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&lines);
    let hook: LogHook = Arc::new(move |l: &str| sink.lock().unwrap().push(l.to_owned()));
    (hook, lines)
}

fn outage_counted_logged_once_then_recovery(db: &Db) {
    match db.kind {
        Kind::Sqlite => outage(db, None),
        Kind::Postgres => {
            // A server of its own, since it is stopped and started again.
            let mut own = PgCluster::start();
            let db = Db::postgres_in(&own, None);
            outage(&db, Some(&mut own));
        }
    }
}

/// SQLite: a lock held past the busy timeout; PostgreSQL: the server stopped.
fn outage(db: &Db, mut cluster: Option<&mut PgCluster>) {
    let (hook, lines) = log_hook();
    let cfg = StoreConfig {
        timeout: Duration::from_millis(200),
        log: Some(hook),
        max_age: None,
        max_attacks: None,
        ..db.cfg.clone()
    };
    let writer = StoreWriter::spawn(cfg.clone()).unwrap();
    let reader = StoreReader::spawn(cfg).unwrap();
    writer.submit(attack("before", 0, "sqli", None));
    assert!(writer.flush(Duration::from_secs(30)));

    // Break it.
    let mut lock = None;
    match db.kind {
        Kind::Sqlite => lock = Some(hold_write_lock(db)),
        Kind::Postgres => cluster.as_mut().unwrap().stop(),
    }
    writer.submit(attack("lost1", 1, "sqli", None));
    assert!(writer.flush(Duration::from_secs(30)));
    writer.submit(attack("lost2", 2, "sqli", None));
    writer.submit(attack("lost3", 3, "sqli", None));
    assert!(writer.flush(Duration::from_secs(30)));
    let c = writer.counters();
    assert_eq!((c.written, c.failed, c.outages, c.failing), (1, 3, 1, true));
    {
        let lines = lines.lock().unwrap();
        assert_eq!(lines.len(), 1, "{lines:?}");
        let (prefix, reason) = match db.kind {
            Kind::Sqlite => (
                "oob-mirror-node: store: sqlite: ",
                "oob-mirror-node: store: sqlite: database is locked; ",
            ),
            Kind::Postgres => ("oob-mirror-node: store: postgres: ", ""),
        };
        assert!(lines[0].starts_with(prefix), "{lines:?}");
        assert!(lines[0].starts_with(reason), "{lines:?}");
        assert!(
            lines[0].ends_with("; writes failing, 1 attacks lost since the last line"),
            "{lines:?}"
        );
    }
    let mut text = String::new();
    store::metrics(&writer.counters(), &mut text);
    assert!(text.contains("\noob_mirror_node_store_up 0\n"), "{text}");
    assert!(
        text.contains("\noob_mirror_node_store_failed_total 3\n"),
        "{text}"
    );
    assert!(
        text.contains("\noob_mirror_node_store_outages_total 1\n"),
        "{text}"
    );

    // Heal it: the next write goes through, one line says so.
    match db.kind {
        Kind::Sqlite => {
            if let Some(mut l) = lock.take() {
                l.exec("COMMIT");
            }
        }
        Kind::Postgres => cluster.as_mut().unwrap().start_server(),
    }
    writer.submit(attack("after", 4, "sqli", None));
    assert!(writer.flush(Duration::from_secs(30)));
    let c = writer.counters();
    assert_eq!(
        (c.written, c.failed, c.outages, c.failing),
        (2, 3, 1, false)
    );
    {
        let lines = lines.lock().unwrap();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[1].starts_with("oob-mirror-node: store: writes resumed after "),
            "{lines:?}"
        );
        assert!(
            lines[1].ends_with(" s, 2 attacks lost since the last line"),
            "{lines:?}"
        );
    }
    // The reader's connection came back too.
    let page = runtime()
        .block_on(reader.list(AttackFilter::default(), 10, 0))
        .unwrap();
    assert_eq!(ids(&page.items), ["after", "before"]);
}

fn writer_prunes_by_age_and_count(db: &Db) {
    let mut s = db.open();
    // Older than the retention (30 days by default) before the writer starts.
    s.insert(&[attack("ancient", -(40 * 86_400), "sqli", None)])
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut cfg = db.cfg.clone();
    cfg.parse_flag("--retention-max-attacks", "3").unwrap();
    cfg.prune_every = Duration::from_millis(20);
    let writer = StoreWriter::spawn(cfg).unwrap();
    for i in 0..5 {
        // Recent: T0 is in 2026-12, the test's clock maybe earlier or later.
        writer.submit(attack(&format!("r{i}"), now - T0 / S + i, "sqli", None));
    }
    assert!(writer.flush(Duration::from_secs(30)));
    wait_until("the prune", Duration::from_secs(30), || {
        writer.counters().pruned == 3
    });
    assert_eq!(
        list_ids(s.as_mut(), &AttackFilter::default()),
        ["r4", "r3", "r2"]
    );
    assert_eq!(writer.counters().written, 5);
}

#[test]
fn outage_lines_repeat_each_interval() {
    // Once a minute by default; every failure with an interval of 0.
    let db = Db::sqlite();
    let (hook, lines) = log_hook();
    let cfg = StoreConfig {
        timeout: Duration::from_millis(100),
        outage_log_every: Duration::ZERO,
        log: Some(hook),
        max_age: None,
        max_attacks: None,
        ..db.cfg.clone()
    };
    let writer = StoreWriter::spawn(cfg).unwrap();
    let mut lock = hold_write_lock(&db);
    writer.submit(attack("l1", 1, "sqli", None));
    assert!(writer.flush(Duration::from_secs(30)));
    writer.submit(attack("l2", 2, "sqli", None));
    writer.submit(attack("l3", 3, "sqli", None));
    wait_until("l2 and l3 in one batch", Duration::from_secs(10), || {
        writer.counters().failed >= 1
    });
    assert!(writer.flush(Duration::from_secs(30)));
    lock.exec("COMMIT");
    writer.submit(attack("l4", 4, "sqli", None));
    assert!(writer.flush(Duration::from_secs(30)));
    let lines = lines.lock().unwrap();
    let lost: Vec<&str> = lines
        .iter()
        .map(|l| l.rsplit_once(", ").map_or("", |(_, tail)| tail))
        .collect();
    let failing = "1 attacks lost since the last line";
    match lost.len() {
        // l2 and l3 failed in one batch or in two.
        3 => assert_eq!(
            lost,
            [
                failing,
                "2 attacks lost since the last line",
                "0 attacks lost since the last line"
            ]
        ),
        4 => assert_eq!(
            lost,
            [
                failing,
                failing,
                failing,
                "0 attacks lost since the last line"
            ]
        ),
        _ => panic!("{lines:?}"),
    }
    assert!(
        lines[1].ends_with(&format!("; writes still failing, {}", lost[1])),
        "{lines:?}"
    );
    assert!(lines
        .last()
        .unwrap()
        .starts_with("oob-mirror-node: store: writes resumed after "));
    assert_eq!(writer.counters().outages, 1);
}

#[test]
fn drop_during_an_outage_does_not_wait_per_batch() {
    let db = Db::sqlite();
    let (hook, _lines) = log_hook();
    let cfg = StoreConfig {
        timeout: Duration::from_millis(300),
        batch: 1,
        log: Some(hook),
        max_age: None,
        max_attacks: None,
        ..db.cfg.clone()
    };
    let writer = StoreWriter::spawn(cfg).unwrap();
    let mut lock = hold_write_lock(&db);
    writer.submit(attack("first", 0, "sqli", None));
    assert!(writer.flush(Duration::from_secs(30)));
    assert!(writer.counters().failing);
    for i in 1..=10 {
        writer.submit(attack(&format!("left{i}"), i, "sqli", None));
    }
    let started = Instant::now();
    drop(writer);
    // At most the batch in hand is tried (2 x 300 ms), not 10 more.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    lock.exec("COMMIT");
    assert_eq!(db.raw().count("SELECT COUNT(*) FROM attacks"), 0);
}

// --- without a database -----------------------------------------------------------------------

fn flags(args: &[(&str, &str)]) -> Result<StoreConfig, String> {
    let mut cfg = StoreConfig::default();
    for (f, v) in args {
        assert!(StoreConfig::is_flag(f), "{f}");
        cfg.parse_flag(f, v)?;
    }
    Ok(cfg)
}

#[test]
fn config_defaults_and_flags() {
    let d = StoreConfig::default();
    assert_eq!(
        d.backend(),
        Backend::Sqlite(PathBuf::from("./oob-mirror-data/attacks.sqlite"))
    );
    assert_eq!(d.max_age, Some(Duration::from_secs(30 * 86_400)));
    assert_eq!(d.max_attacks, Some(1_000_000));
    assert_eq!(d.queue, 10_000);
    let c = flags(&[("--data-dir", "/srv/oob")]).unwrap();
    assert_eq!(c.backend().to_string(), "sqlite:/srv/oob/attacks.sqlite");
    let c = flags(&[
        ("--store", "sqlite:x/a.db"),
        ("--retention-days", "0"),
        ("--retention-max-attacks", "0"),
        ("--store-queue", "5"),
    ])
    .unwrap();
    assert_eq!(c.backend(), Backend::Sqlite(PathBuf::from("x/a.db")));
    assert_eq!((c.max_age, c.max_attacks, c.queue), (None, None, 5));
    let c = flags(&[("--retention-days", "7"), ("--retention-max-attacks", "10")]).unwrap();
    assert_eq!(
        (c.max_age, c.max_attacks),
        (Some(Duration::from_secs(7 * 86_400)), Some(10))
    );
    let url = "postgres://oob@db.internal:5433/attacks";
    let c = flags(&[("--store", url)]).unwrap();
    assert_eq!(c.backend(), Backend::Postgres(url.into()));
    assert_eq!(c.backend().to_string(), url);
    assert!(!StoreConfig::is_flag("--listen"));
}

#[test]
fn config_errors() {
    let err = |args: &[(&str, &str)]| flags(args).unwrap_err();
    assert_eq!(
        err(&[("--store", "postgres://oob:hunter2@db:5432/attacks")]),
        "--store: no password in the URL; set OOB_MIRROR_NODE_STORE_PASSWORD or PGPASSWORD instead"
    );
    assert_eq!(
        err(&[("--store", "postgres://db:5432/attacks")]),
        "--store: the URL needs a user (postgres://USER@HOST:PORT/DB)"
    );
    assert_eq!(
        err(&[("--store", "mysql://x")]),
        "--store: sqlite:PATH or postgres://USER@HOST:PORT/DB, not mysql://x"
    );
    assert_eq!(
        err(&[("--store", "sqlite:")]),
        "--store sqlite:PATH: the path is empty"
    );
    assert_eq!(
        err(&[("--retention-days", "x")]),
        "--retention-days: not a number: x"
    );
    assert_eq!(err(&[("--store-queue", "0")]), "--store-queue: at least 1");
    assert_eq!(err(&[("--data-dir", "")]), "--data-dir: empty");
}

#[test]
fn config_debug_hides_the_password() {
    let mut c = flags(&[("--store", "postgres://oob@db:5432/attacks")]).unwrap();
    c.password = Some("hunter2".into());
    let text = format!("{c:?}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains("password: Some(\"<redacted>\")"), "{text}");
}

#[test]
fn postgres_unreachable_is_an_error_not_a_hang() {
    // A port nothing listens on (bound, then closed).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cfg = flags(&[("--store", &format!("postgres://oob@127.0.0.1:{port}/oob"))]).unwrap();
    cfg.password = Some("x".into());
    let started = Instant::now();
    match StoreWriter::spawn(cfg) {
        Err(StoreError::Backend(m)) => assert!(m.starts_with("postgres: "), "{m}"),
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("connected to nothing"),
    }
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn attack_from_exchange() {
    let ex = Exchange {
        id: "ex1".into(),
        request_id: Some("r-1".into()),
        ts_ns: 1_700_000_000_000_000_123,
        source: Some("[2001:db8::9]:51000".into()),
        destination: Some("10.0.0.1:80".into()),
        method: "POST".into(),
        authority: Some("shop.example.com".into()),
        path: "/login?next=/".into(),
        protocol: Some("HTTP/2".into()),
        request_headers: vec![(b"content-type".to_vec(), b"text/plain\xff".to_vec())],
        request_body: b"0123456789".to_vec(),
        response: Some(ResponsePart {
            status: 500,
            headers: vec![(b"server".to_vec(), b"x".to_vec())],
            body: b"abc".to_vec(),
        }),
        redact_at_node: Vec::new(),
    };
    let rules = [
        RuleMatch {
            id: 920350,
            msg: "Host header is a numeric IP address".into(),
            severity: "WARNING".into(),
            data: "d1".into(),
        },
        RuleMatch {
            id: 942100,
            msg: "SQL Injection Attack Detected via libinjection".into(),
            severity: "CRITICAL".into(),
            data: "d2".into(),
        },
    ];
    let a = Attack::from_exchange(
        &ex,
        &rules,
        "sqli".into(),
        vec!["sqli".into(), "protocol".into()],
        4,
    );
    assert_eq!(
        a,
        Attack {
            id: "ex1".into(),
            request_id: Some("r-1".into()),
            ts_ns: 1_700_000_000_000_000_123,
            source: Some("[2001:db8::9]:51000".into()),
            source_ip: Some("2001:db8::9".into()),
            method: "POST".into(),
            authority: Some("shop.example.com".into()),
            path: "/login?next=/".into(),
            protocol: Some("HTTP/2".into()),
            status: Some(500),
            class: "sqli".into(),
            classes: vec!["sqli".into(), "protocol".into()],
            severity: "CRITICAL".into(),
            rules: vec![
                StoredRule {
                    id: 920350,
                    msg: "Host header is a numeric IP address".into(),
                    severity: "WARNING".into(),
                    data: "d1".into(),
                },
                StoredRule {
                    id: 942100,
                    msg: "SQL Injection Attack Detected via libinjection".into(),
                    severity: "CRITICAL".into(),
                    data: "d2".into(),
                },
            ],
            request_headers: vec![h("content-type", "text/plain\u{FFFD}")],
            request_body: "0123".into(),
            request_body_size: 10,
            response_headers: vec![h("server", "x")],
            response_body: "abc".into(),
            response_body_size: 3,
        }
    );
    assert_eq!(store::source_ip("203.0.113.7:8080"), "203.0.113.7");
    assert_eq!(store::source_ip("unix"), "unix");
    assert_eq!(store::host_key("Shop.Example.COM:8443"), "shop.example.com");
    assert_eq!(store::host_key("[::1]:80"), "[::1]");
}

#[test]
fn metrics_text() {
    let c = StoreCounters {
        written: 7,
        dropped_queue_full: 1,
        failed: 2,
        outages: 1,
        pruned: 3,
        queued: 4,
        writing: 0,
        failing: true,
    };
    let mut out = String::new();
    store::metrics(&c, &mut out);
    assert_eq!(
        out,
        "# HELP oob_mirror_node_store_written_total Attacks written to the store.
# TYPE oob_mirror_node_store_written_total counter
oob_mirror_node_store_written_total 7
# HELP oob_mirror_node_store_dropped_queue_full_total Attacks dropped because the store's queue was full.
# TYPE oob_mirror_node_store_dropped_queue_full_total counter
oob_mirror_node_store_dropped_queue_full_total 1
# HELP oob_mirror_node_store_failed_total Attacks lost because the store could not be written.
# TYPE oob_mirror_node_store_failed_total counter
oob_mirror_node_store_failed_total 2
# HELP oob_mirror_node_store_outages_total Times writes to the store started failing.
# TYPE oob_mirror_node_store_outages_total counter
oob_mirror_node_store_outages_total 1
# HELP oob_mirror_node_store_pruned_total Attacks deleted by retention (age or count).
# TYPE oob_mirror_node_store_pruned_total counter
oob_mirror_node_store_pruned_total 3
# HELP oob_mirror_node_store_queued Attacks waiting for the store's writer.
# TYPE oob_mirror_node_store_queued gauge
oob_mirror_node_store_queued 4
# HELP oob_mirror_node_store_up 1 while the last write to the store succeeded, 0 during an outage.
# TYPE oob_mirror_node_store_up gauge
oob_mirror_node_store_up 0
"
    );
}

// --- the inventory (migration 0002) ----------------------------------------------------------

fn inv_exchange(path: &str, status: u16, body: &str, ts: u64) -> Exchange {
    Exchange {
        method: "GET".into(),
        authority: Some("Shop.example.com:443".into()),
        path: path.into(),
        ts_ns: ts,
        response: Some(ResponsePart {
            status,
            headers: vec![(b"content-type".to_vec(), b"application/json".to_vec())],
            body: body.as_bytes().to_vec(),
        }),
        ..Exchange::default()
    }
}

fn traffic() -> Vec<Exchange> {
    (0..20u64)
        .map(|i| {
            let body = if i % 2 == 0 {
                format!(r#"{{"id":{i},"email":"u{i}@example.com"}}"#)
            } else {
                format!(r#"{{"id":{i}}}"#)
            };
            inv_exchange(
                &format!("/users/{i}?page={i}"),
                200 + (i % 3) as u16,
                &body,
                T0 as u64 + i,
            )
        })
        .collect()
}

fn observe_all(inv: &mut inventory::Inventory, exchanges: &[Exchange]) {
    let cfg = inventory::Config::default();
    for e in exchanges {
        inv.add(inventory::observe::observe(e, &cfg).unwrap());
    }
}

/// Two replicas, each seeing half the traffic and writing its deltas (twice each) to one
/// store, give the inventory one node seeing all of it would.
fn inventory_replicas_add_up_to_one_inventory(db: &Db) {
    let all = traffic();
    let mut one = inventory::Inventory::new(inventory::Config::default());
    observe_all(&mut one, &all);
    let alone = one.take();

    let (mut a, mut b) = (db.open(), db.open());
    for (k, half) in all.chunks(5).enumerate() {
        let mut replica = inventory::Inventory::new(inventory::Config::default());
        observe_all(&mut replica, half);
        let store = if k % 2 == 0 { &mut a } else { &mut b };
        store.inventory_apply(&replica.take()).unwrap();
    }
    let got = a.inventory(&InventoryFilter::default()).unwrap();
    assert_eq!(got.endpoints, alone.endpoints);
    let e = &got.endpoints[0];
    assert_eq!(
        (e.host.as_str(), e.template.as_str(), e.count),
        ("shop.example.com", "/users/{user_id}", 20)
    );
    assert_eq!((e.first_ns, e.last_ns), (T0, T0 + 19));
    let facts: Vec<String> = e
        .facts
        .iter()
        .map(|(f, n)| format!("{} {} {} {} {n}", f.kind, f.scope, f.name, f.ty))
        .collect();
    assert_eq!(
        facts,
        [
            "param  user_id integer 20",
            "query  page integer 20",
            "resp_body 200 application/json  7",
            "resp_body 201 application/json  7",
            "resp_body 202 application/json  6",
            "resp_field 200 email string 4",
            "resp_field 200 id integer 7",
            "resp_field 201 email string 3",
            "resp_field 201 id integer 7",
            "resp_field 202 email string 3",
            "resp_field 202 id integer 6",
            "resp_type 200 application/json  7",
            "resp_type 201 application/json  7",
            "resp_type 202 application/json  6",
            "sensitive response email email 10",
            "status  200  7",
            "status  201  7",
            "status  202  6",
        ]
    );
}

fn inventory_moves_and_filters(db: &Db) {
    let mut s = db.open();
    let mut inv = inventory::Inventory::new(inventory::Config::default());
    let slugs = ["a-b", "c-d", "e-f", "g-h"];
    let ex: Vec<Exchange> = slugs
        .iter()
        .enumerate()
        .map(|(i, slug)| inv_exchange(&format!("/posts/{slug}"), 200, "{}", T0 as u64 + i as u64))
        .collect();
    observe_all(&mut inv, &ex);
    s.inventory_apply(&inv.take()).unwrap();
    assert_eq!(
        s.inventory(&InventoryFilter::default())
            .unwrap()
            .endpoints
            .len(),
        4
    );
    observe_all(
        &mut inv,
        &[inv_exchange("/posts/i-j", 404, "{}", T0 as u64 + 10)],
    );
    observe_all(
        &mut inv,
        &[inv_exchange("/other/1", 200, "{}", T0 as u64 + 11)],
    );
    let delta = inv.take();
    assert_eq!(delta.moves.len(), 4);
    s.inventory_apply(&delta).unwrap();
    let got = s.inventory(&InventoryFilter::default()).unwrap();
    let rows: Vec<(String, u64, i64, i64)> = got
        .endpoints
        .iter()
        .map(|e| (e.template.clone(), e.count, e.first_ns - T0, e.last_ns - T0))
        .collect();
    assert_eq!(
        rows,
        [
            ("/other/{other_id}".to_owned(), 1, 11, 11),
            ("/posts/{post_slug}".into(), 5, 0, 10)
        ]
    );
    let posts = &got.endpoints[1];
    let statuses: Vec<(String, u64)> = posts
        .facts
        .iter()
        .filter(|(f, _)| f.kind == "status")
        .map(|(f, n)| (f.name.clone(), *n))
        .collect();
    assert_eq!(statuses, [("200".to_owned(), 4), ("404".into(), 1)]);
    // The four literals stored before the collapse had the slug too.
    let params: Vec<(String, String, u64)> = posts
        .facts
        .iter()
        .filter(|(f, _)| f.kind == "param")
        .map(|(f, n)| (f.name.clone(), f.ty.clone(), *n))
        .collect();
    assert_eq!(params, [("post_slug".to_owned(), "slug".into(), 5)]);
    let filtered = |f: InventoryFilter| -> Vec<String> {
        let mut s = db.open();
        s.inventory(&f)
            .unwrap()
            .endpoints
            .into_iter()
            .map(|e| e.template)
            .collect()
    };
    assert_eq!(
        filtered(InventoryFilter {
            path_prefix: Some("/posts".into()),
            ..Default::default()
        }),
        ["/posts/{post_slug}"]
    );
    assert_eq!(
        filtered(InventoryFilter {
            host: Some("SHOP.example.com:8443".into()),
            method: Some("get".into()),
            ..Default::default()
        })
        .len(),
        2
    );
    assert!(filtered(InventoryFilter {
        method: Some("POST".into()),
        ..Default::default()
    })
    .is_empty());
    assert!(filtered(InventoryFilter {
        host: Some("elsewhere".into()),
        ..Default::default()
    })
    .is_empty());
    // Cuts add up too.
    let cut = inventory::Delta {
        cuts: vec![inventory::CutCount {
            host: "shop.example.com".into(),
            reason: "templates".into(),
            count: 3,
        }],
        ..Default::default()
    };
    s.inventory_apply(&cut).unwrap();
    s.inventory_apply(&cut).unwrap();
    assert_eq!(
        s.inventory(&InventoryFilter::default()).unwrap().cuts[0].count,
        6
    );
}

/// The flusher writes the analysis side's counts on demand; the reader reads them.
fn inventory_reader_and_flusher(db: &Db) {
    let shared = Arc::new(inventory::Shared::new(inventory::Config::default()));
    let flusher = store::InventoryFlusher::spawn(db.cfg.clone(), Arc::clone(&shared)).unwrap();
    for e in traffic() {
        shared.observe(&e);
    }
    assert!(flusher.flush(Duration::from_secs(10)));
    let reader = StoreReader::spawn(db.cfg.clone()).unwrap();
    let got = runtime()
        .block_on(reader.inventory(InventoryFilter::default()))
        .unwrap();
    assert_eq!(got.endpoints.len(), 1);
    assert_eq!(got.endpoints[0].count, 20);
    // What is counted after the last flush is written when the flusher stops.
    shared.observe(&traffic()[0]);
    drop(flusher);
    let got = runtime()
        .block_on(reader.inventory(InventoryFilter::default()))
        .unwrap();
    assert_eq!(got.endpoints[0].count, 21);
    assert_eq!(shared.flushes.load(std::sync::atomic::Ordering::Relaxed), 2);
}
