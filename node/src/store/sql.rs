//! The store over SQL, once for both backends: a backend gives a [`Conn`] (run statements,
//! read rows of [`Value`]s) and [`SqlStore`] does the rest with the same queries, only the
//! placeholders and the migration lock differing.

use std::collections::BTreeSet;

use super::{
    host_key, Attack, AttackFilter, AttackPage, ClassCount, Group, GroupPage, Stats, Store,
    StoreError, StoredHeader, MIGRATIONS,
};
use crate::analysis::classes::severity_rank;

/// A parameter or a column: the schema has only integers and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Int(Option<i64>),
    Text(Option<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// What a backend's connection does.
pub trait Conn: Send {
    fn dialect(&self) -> Dialect;
    /// Statements without parameters (a migration, `COMMIT`).
    fn batch(&mut self, sql: &str) -> Result<(), StoreError>;
    /// Rows changed.
    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, StoreError>;
    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Vec<Value>>, StoreError>;
    /// Starts a transaction that will write.
    fn begin(&mut self) -> Result<(), StoreError>;
    /// Inside the migrations' transaction: waits until no other process migrates.
    fn lock_migrations(&mut self) -> Result<(), StoreError>;
}

pub struct SqlStore<C: Conn> {
    conn: C,
}

impl<C: Conn> SqlStore<C> {
    pub fn new(conn: C) -> Self {
        SqlStore { conn }
    }

    fn transaction<T>(
        &mut self,
        f: impl FnOnce(&mut C) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.conn.begin()?;
        match f(&mut self.conn) {
            Ok(v) => match self.conn.batch("COMMIT") {
                Ok(()) => Ok(v),
                Err(e) => {
                    let _ = self.conn.batch("ROLLBACK");
                    Err(e)
                }
            },
            Err(e) => {
                let _ = self.conn.batch("ROLLBACK");
                Err(e)
            }
        }
    }
}

/// A statement being built: SQL text and its parameters.
struct Q {
    dialect: Dialect,
    sql: String,
    params: Vec<Value>,
}

impl Q {
    fn new(dialect: Dialect) -> Q {
        Q {
            dialect,
            sql: String::new(),
            params: Vec::new(),
        }
    }

    /// A placeholder for `v`.
    fn p(&mut self, v: Value) -> String {
        self.params.push(v);
        match self.dialect {
            Dialect::Sqlite => format!("?{}", self.params.len()),
            Dialect::Postgres => format!("${}", self.params.len()),
        }
    }

    fn push(&mut self, s: &str) -> &mut Q {
        self.sql.push_str(s);
        self
    }
}

fn int(v: i64) -> Value {
    Value::Int(Some(v))
}

fn text(v: &str) -> Value {
    Value::Text(Some(clean(v)))
}

fn opt_text(v: Option<&str>) -> Value {
    Value::Text(v.map(clean))
}

/// PostgreSQL text cannot hold NUL; both backends store U+FFFD for it, so they agree.
fn clean(s: &str) -> String {
    if s.contains('\0') {
        s.replace('\0', "\u{FFFD}")
    } else {
        s.to_owned()
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// ` WHERE …` for the filter, or nothing.
fn filter(q: &mut Q, f: &AttackFilter) -> String {
    let mut conds: Vec<String> = Vec::new();
    if let Some(t) = f.since_ns {
        conds.push(format!("ts_ns >= {}", q.p(int(t))));
    }
    if let Some(t) = f.until_ns {
        conds.push(format!("ts_ns < {}", q.p(int(t))));
    }
    if let Some(h) = &f.host {
        conds.push(format!("host = {}", q.p(text(&host_key(h)))));
    }
    if let Some(p) = f.path_prefix.as_deref().filter(|p| !p.is_empty()) {
        let p = clean(p);
        let n = p.chars().count();
        conds.push(format!("substr(path, 1, {n}) = {}", q.p(text(&p))));
    }
    if let Some(s) = &f.source {
        conds.push(format!("source_ip = {}", q.p(text(s))));
    }
    if let Some(c) = &f.class {
        conds.push(format!("class = {}", q.p(text(c))));
    }
    if let Some(s) = &f.severity {
        conds.push(format!("severity = {}", q.p(text(&s.to_ascii_uppercase()))));
    }
    if let Some(s) = f.status {
        conds.push(format!("status = {}", q.p(int(i64::from(s)))));
    }
    if let Some(r) = f.rule_id {
        conds.push(format!(
            "id IN (SELECT attack_id FROM attack_rules WHERE rule_id = {})",
            q.p(int(i64::from(r)))
        ));
    }
    if conds.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conds.join(" AND "))
    }
}

const COLUMNS: &str = "id, request_id, ts_ns, source, source_ip, method, authority, path, \
     protocol, status, class, classes, severity, rules, request_headers, request_body, \
     request_body_size, response_headers, response_body, response_body_size";

fn bad(what: &str) -> StoreError {
    StoreError::Backend(format!("unexpected column in the store's answer: {what}"))
}

/// The columns of one row, in order.
struct Cols(std::vec::IntoIter<Value>);

impl Cols {
    fn int(&mut self, what: &str) -> Result<Option<i64>, StoreError> {
        match self.0.next() {
            Some(Value::Int(v)) => Ok(v),
            Some(Value::Text(None)) => Ok(None),
            _ => Err(bad(what)),
        }
    }

    fn text(&mut self, what: &str) -> Result<Option<String>, StoreError> {
        match self.0.next() {
            Some(Value::Text(v)) => Ok(v),
            Some(Value::Int(None)) => Ok(None),
            _ => Err(bad(what)),
        }
    }

    fn int_nn(&mut self, what: &str) -> Result<i64, StoreError> {
        self.int(what)?.ok_or_else(|| bad(what))
    }

    fn text_nn(&mut self, what: &str) -> Result<String, StoreError> {
        self.text(what)?.ok_or_else(|| bad(what))
    }

    fn count(&mut self, what: &str) -> Result<u64, StoreError> {
        Ok(u64::try_from(self.int(what)?.unwrap_or(0)).unwrap_or(0))
    }

    fn json<T: serde::de::DeserializeOwned>(&mut self, what: &str) -> Result<T, StoreError> {
        let s = self.text_nn(what)?;
        serde_json::from_str(&s).map_err(|e| bad(&format!("{what}: {e}")))
    }

    fn headers(&mut self, what: &str) -> Result<Vec<StoredHeader>, StoreError> {
        let pairs: Vec<(String, String)> = self.json(what)?;
        Ok(pairs
            .into_iter()
            .map(|(name, value)| StoredHeader { name, value })
            .collect())
    }

    /// The attack of [`COLUMNS`].
    fn attack(&mut self) -> Result<Attack, StoreError> {
        Ok(Attack {
            id: self.text_nn("id")?,
            request_id: self.text("request_id")?,
            ts_ns: self.int_nn("ts_ns")?,
            source: self.text("source")?,
            source_ip: self.text("source_ip")?,
            method: self.text_nn("method")?,
            authority: self.text("authority")?,
            path: self.text_nn("path")?,
            protocol: self.text("protocol")?,
            status: self.int("status")?.and_then(|s| u16::try_from(s).ok()),
            class: self.text_nn("class")?,
            classes: self.json("classes")?,
            severity: self.text_nn("severity")?,
            rules: self.json("rules")?,
            request_headers: self.headers("request_headers")?,
            request_body: self.text_nn("request_body")?,
            request_body_size: self.count("request_body_size")?,
            response_headers: self.headers("response_headers")?,
            response_body: self.text_nn("response_body")?,
            response_body_size: self.count("response_body_size")?,
        })
    }
}

fn json<T: serde::Serialize + ?Sized>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Backend(format!("encoding JSON: {e}")))
}

fn headers_json(h: &[StoredHeader]) -> Result<String, StoreError> {
    let pairs: Vec<(&str, &str)> = h
        .iter()
        .map(|h| (h.name.as_str(), h.value.as_str()))
        .collect();
    json(&pairs)
}

fn insert_one<C: Conn>(conn: &mut C, a: &Attack) -> Result<(), StoreError> {
    let mut q = Q::new(conn.dialect());
    let values = [
        text(&a.id),
        opt_text(a.request_id.as_deref()),
        int(a.ts_ns),
        opt_text(a.source.as_deref()),
        opt_text(a.source_ip.as_deref()),
        text(&a.method),
        opt_text(a.authority.as_deref()),
        opt_text(a.authority.as_deref().map(host_key).as_deref()),
        text(&a.path),
        opt_text(a.protocol.as_deref()),
        Value::Int(a.status.map(i64::from)),
        text(&a.class),
        Value::Text(Some(json(&a.classes)?)),
        text(&a.severity.to_ascii_uppercase()),
        Value::Text(Some(json(&a.rules)?)),
        Value::Text(Some(headers_json(&a.request_headers)?)),
        text(&a.request_body),
        int(to_i64(a.request_body_size)),
        Value::Text(Some(headers_json(&a.response_headers)?)),
        text(&a.response_body),
        int(to_i64(a.response_body_size)),
    ];
    let placeholders: Vec<String> = values.into_iter().map(|v| q.p(v)).collect();
    q.push("INSERT INTO attacks (id, request_id, ts_ns, source, source_ip, method, authority, ")
        .push("host, path, protocol, status, class, classes, severity, rules, request_headers, ")
        .push("request_body, request_body_size, response_headers, response_body, ")
        .push("response_body_size) VALUES (")
        .push(&placeholders.join(", "))
        .push(") ON CONFLICT (id) DO NOTHING");
    if conn.execute(&q.sql, &q.params)? == 0 {
        return Ok(()); // already stored: its rules too
    }
    let ids: BTreeSet<u32> = a.rules.iter().map(|r| r.id).collect();
    for id in ids {
        let mut q = Q::new(conn.dialect());
        let (r, i) = (q.p(int(i64::from(id))), q.p(text(&a.id)));
        q.push(&format!(
            "INSERT INTO attack_rules (rule_id, attack_id) VALUES ({r}, {i}) ON CONFLICT DO NOTHING"
        ));
        conn.execute(&q.sql, &q.params)?;
    }
    Ok(())
}

/// Deletes the attacks (and their rule rows) matching `cond`, whose parameters `q` holds.
fn delete_where<C: Conn>(conn: &mut C, q: &Q, cond: &str) -> Result<u64, StoreError> {
    conn.execute(
        &format!(
            "DELETE FROM attack_rules WHERE attack_id IN (SELECT id FROM attacks WHERE {cond})"
        ),
        &q.params,
    )?;
    conn.execute(&format!("DELETE FROM attacks WHERE {cond}"), &q.params)
}

impl<C: Conn> Store for SqlStore<C> {
    fn inventory_apply(&mut self, delta: &crate::inventory::Delta) -> Result<(), StoreError> {
        self.inventory_write(delta)
    }

    fn inventory(
        &mut self,
        f: &super::InventoryFilter,
    ) -> Result<super::InventoryData, StoreError> {
        super::inventory::load(&mut self.conn, f)
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let dialect = self.conn.dialect();
        self.transaction(|conn| {
            conn.lock_migrations()?;
            conn.batch(
                "CREATE TABLE IF NOT EXISTS schema_migrations (\
                 version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_ns BIGINT NOT NULL)",
            )?;
            let rows = conn.query("SELECT version FROM schema_migrations", &[])?;
            let mut applied = BTreeSet::new();
            for row in rows {
                applied.insert(Cols(row.into_iter()).int_nn("version")?);
            }
            let known = MIGRATIONS.iter().map(|m| m.version).max().unwrap_or(0);
            if let Some(&found) = applied.iter().next_back().filter(|&&v| v > known) {
                return Err(StoreError::SchemaTooNew { found, known });
            }
            for m in MIGRATIONS.iter().filter(|m| !applied.contains(&m.version)) {
                let sql = match dialect {
                    Dialect::Sqlite => m.sqlite,
                    Dialect::Postgres => m.postgres,
                };
                conn.batch(sql).map_err(|e| {
                    StoreError::Backend(format!("migration {} ({}): {e}", m.version, m.name))
                })?;
                let mut q = Q::new(dialect);
                let (v, n, t) = (
                    q.p(int(m.version)),
                    q.p(text(m.name)),
                    q.p(int(super::writer::now_ns())),
                );
                q.push(&format!(
                    "INSERT INTO schema_migrations (version, name, applied_ns) VALUES ({v}, {n}, {t})"
                ));
                conn.execute(&q.sql, &q.params)?;
            }
            Ok(())
        })
    }

    fn insert(&mut self, attacks: &[Attack]) -> Result<(), StoreError> {
        if attacks.is_empty() {
            return Ok(());
        }
        self.transaction(|conn| {
            for a in attacks {
                insert_one(conn, a)?;
            }
            Ok(())
        })
    }

    fn list(
        &mut self,
        f: &AttackFilter,
        limit: u32,
        offset: u64,
    ) -> Result<AttackPage, StoreError> {
        let mut q = Q::new(self.conn.dialect());
        let cond = filter(&mut q, f);
        let total = self.count(&format!("SELECT COUNT(*) FROM attacks{cond}"), &q.params)?;
        let rows = self.conn.query(
            &format!(
                "SELECT {COLUMNS} FROM attacks{cond} ORDER BY ts_ns DESC, id DESC \
                 LIMIT {limit} OFFSET {}",
                to_i64(offset)
            ),
            &q.params,
        )?;
        let items = rows
            .into_iter()
            .map(|r| Cols(r.into_iter()).attack())
            .collect::<Result<_, _>>()?;
        Ok(AttackPage { items, total })
    }

    fn groups(
        &mut self,
        f: &AttackFilter,
        window_secs: u32,
        limit: u32,
        offset: u64,
    ) -> Result<GroupPage, StoreError> {
        let window_ns = i64::from(window_secs.max(1)) * 1_000_000_000;
        let key = format!("class, source_ip, ts_ns / {window_ns}");
        let mut q = Q::new(self.conn.dialect());
        let cond = filter(&mut q, f);
        let total = self.count(
            &format!("SELECT COUNT(*) FROM (SELECT 1 FROM attacks{cond} GROUP BY {key}) AS g"),
            &q.params,
        )?;
        let rows = self.conn.query(
            &format!(
                "SELECT {COLUMNS}, n, first_ns, last_ns FROM (\
                 SELECT {COLUMNS}, COUNT(*) OVER g AS n, MIN(ts_ns) OVER g AS first_ns, \
                 MAX(ts_ns) OVER g AS last_ns, \
                 ROW_NUMBER() OVER (PARTITION BY {key} ORDER BY ts_ns DESC, id DESC) AS rn \
                 FROM attacks{cond} WINDOW g AS (PARTITION BY {key})) AS x \
                 WHERE rn = 1 ORDER BY ts_ns DESC, id DESC LIMIT {limit} OFFSET {}",
                to_i64(offset)
            ),
            &q.params,
        )?;
        let mut items = Vec::with_capacity(rows.len());
        for row in rows {
            let mut c = Cols(row.into_iter());
            let latest = c.attack()?;
            items.push(Group {
                class: latest.class.clone(),
                source_ip: latest.source_ip.clone(),
                count: c.count("n")?,
                first_ns: c.int_nn("first_ns")?,
                last_ns: c.int_nn("last_ns")?,
                latest,
            });
        }
        Ok(GroupPage { items, total })
    }

    fn get(&mut self, id: &str) -> Result<Option<Attack>, StoreError> {
        let mut q = Q::new(self.conn.dialect());
        let p = q.p(text(id));
        let rows = self.conn.query(
            &format!("SELECT {COLUMNS} FROM attacks WHERE id = {p}"),
            &q.params,
        )?;
        match rows.into_iter().next() {
            Some(r) => Ok(Some(Cols(r.into_iter()).attack()?)),
            None => Ok(None),
        }
    }

    fn stats(&mut self, f: &AttackFilter) -> Result<Stats, StoreError> {
        let mut q = Q::new(self.conn.dialect());
        let cond = filter(&mut q, f);
        let rows = self.conn.query(
            &format!("SELECT COUNT(*), MIN(ts_ns), MAX(ts_ns) FROM attacks{cond}"),
            &q.params,
        )?;
        let mut stats = Stats::default();
        if let Some(r) = rows.into_iter().next() {
            let mut c = Cols(r.into_iter());
            stats.total = c.count("count")?;
            stats.first_ns = c.int("first_ns")?;
            stats.last_ns = c.int("last_ns")?;
        }
        for (column, out) in [("class", 0), ("severity", 1)] {
            let rows = self.conn.query(
                &format!("SELECT {column}, COUNT(*) FROM attacks{cond} GROUP BY {column}"),
                &q.params,
            )?;
            for r in rows {
                let mut c = Cols(r.into_iter());
                let (name, count) = (c.text_nn(column)?, c.count("count")?);
                if out == 0 {
                    stats.by_class.push(ClassCount { class: name, count });
                } else {
                    stats.by_severity.push((name, count));
                }
            }
        }
        // Sorted here, not in SQL: PostgreSQL's collation would order names differently.
        stats
            .by_class
            .sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.class.cmp(&b.class)));
        stats.by_severity.sort_by(|a, b| {
            severity_rank(&b.0)
                .cmp(&severity_rank(&a.0))
                .then_with(|| a.0.cmp(&b.0))
        });
        Ok(stats)
    }

    fn prune(
        &mut self,
        max_age_ns: Option<i64>,
        max_count: Option<u64>,
        now_ns: i64,
    ) -> Result<u64, StoreError> {
        self.transaction(|conn| {
            let mut deleted = 0;
            if let Some(age) = max_age_ns {
                let mut q = Q::new(conn.dialect());
                let cond = format!("ts_ns < {}", q.p(int(now_ns.saturating_sub(age))));
                deleted += delete_where(conn, &q, &cond)?;
            }
            if let Some(max) = max_count {
                // The newest attack past the first `max`: it and everything older go.
                let rows = conn.query(
                    &format!(
                        "SELECT ts_ns, id FROM attacks ORDER BY ts_ns DESC, id DESC \
                         LIMIT 1 OFFSET {}",
                        to_i64(max)
                    ),
                    &[],
                )?;
                if let Some(r) = rows.into_iter().next() {
                    let mut c = Cols(r.into_iter());
                    let (ts, id) = (c.int_nn("ts_ns")?, c.text_nn("id")?);
                    let mut q = Q::new(conn.dialect());
                    let (t1, t2, i) = (q.p(int(ts)), q.p(int(ts)), q.p(text(&id)));
                    let cond = format!("(ts_ns < {t1} OR (ts_ns = {t2} AND id <= {i}))");
                    deleted += delete_where(conn, &q, &cond)?;
                }
            }
            Ok(deleted)
        })
    }
}

impl<C: Conn> SqlStore<C> {
    fn inventory_write(&mut self, delta: &crate::inventory::Delta) -> Result<(), StoreError> {
        if delta.is_empty() {
            return Ok(());
        }
        self.transaction(|conn| super::inventory::apply(conn, delta))
    }

    fn count(&mut self, sql: &str, params: &[Value]) -> Result<u64, StoreError> {
        let rows = self.conn.query(sql, params)?;
        match rows.into_iter().next() {
            Some(r) => Cols(r.into_iter()).count("count"),
            None => Ok(0),
        }
    }
}
