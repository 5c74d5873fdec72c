//! PostgreSQL (the synchronous `postgres` crate): the store for several replicas.
//!
//! The URL names user, host, port and database (`postgres://user@host:port/db`); the password
//! is never in it, but in the environment ([`super::PASSWORD_ENV`]) or the config. Migrations
//! run under a transaction-scoped advisory lock, so replicas starting at once against one
//! database apply each migration exactly once; the others wait, then find it applied.
//! No TLS yet: put the database on a trusted network, or on the node's own host.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use postgres::types::{ToSql, Type};
use postgres::{Client, NoTls, Row, Statement};

use super::sql::{Conn, Dialect, SqlStore, Value};
use super::StoreError;

/// `pg_advisory_xact_lock` key of the migrations: "oobmirr" in ASCII.
const MIGRATION_LOCK: i64 = 0x006f_6f62_6d69_7272;
/// Prepared statements kept per connection (the writer's inserts, the prunes); queries built
/// for a filter and a page are not kept.
const CACHED_STATEMENTS: usize = 32;

pub struct PgConn {
    client: Client,
    statements: HashMap<String, Statement>,
}

fn err(e: postgres::Error) -> StoreError {
    // The driver's message names what failed (connecting, a query) and why; it never holds
    // the password.
    let mut msg = format!("postgres: {e}");
    if let Some(db) = e.as_db_error() {
        msg = format!("postgres: {}: {}", db.severity(), db.message());
    } else if let Some(src) = std::error::Error::source(&e) {
        let src = src.to_string();
        if !msg.contains(&src) {
            msg = format!("{msg}: {src}");
        }
    }
    StoreError::Backend(msg)
}

/// Connects to the database at `url`.
pub fn open(
    url: &str,
    password: Option<String>,
    connect_timeout: Duration,
) -> Result<SqlStore<PgConn>, StoreError> {
    let mut config = postgres::Config::from_str(url)
        .map_err(|e| StoreError::Config(format!("not a PostgreSQL URL: {e}")))?;
    if let Some(p) = password {
        config.password(p);
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(connect_timeout);
    }
    if config.get_application_name().is_none() {
        config.application_name("oob-mirror-node");
    }
    let client = config.connect(NoTls).map_err(err)?;
    Ok(SqlStore::new(PgConn {
        client,
        statements: HashMap::new(),
    }))
}

fn params(values: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    values
        .iter()
        .map(|v| match v {
            Value::Int(i) => i as &(dyn ToSql + Sync),
            Value::Text(t) => t as &(dyn ToSql + Sync),
        })
        .collect()
}

fn columns(row: &Row) -> Result<Vec<Value>, StoreError> {
    let mut out = Vec::with_capacity(row.len());
    for (i, col) in row.columns().iter().enumerate() {
        let ty = col.type_();
        let v = if *ty == Type::INT8 {
            Value::Int(row.try_get::<_, Option<i64>>(i).map_err(err)?)
        } else if *ty == Type::INT4 {
            Value::Int(
                row.try_get::<_, Option<i32>>(i)
                    .map_err(err)?
                    .map(i64::from),
            )
        } else if *ty == Type::INT2 {
            Value::Int(
                row.try_get::<_, Option<i16>>(i)
                    .map_err(err)?
                    .map(i64::from),
            )
        } else {
            Value::Text(row.try_get::<_, Option<String>>(i).map_err(err)?)
        };
        out.push(v);
    }
    Ok(out)
}

impl PgConn {
    fn statement(&mut self, sql: &str) -> Result<Statement, StoreError> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql).map_err(err)?;
        if self.statements.len() < CACHED_STATEMENTS {
            self.statements.insert(sql.to_owned(), s.clone());
        }
        Ok(s)
    }
}

impl Conn for PgConn {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        self.client.batch_execute(sql).map_err(err)
    }

    fn execute(&mut self, sql: &str, values: &[Value]) -> Result<u64, StoreError> {
        let stmt = self.statement(sql)?;
        self.client
            .execute(&stmt, params(values).as_slice())
            .map_err(err)
    }

    fn query(&mut self, sql: &str, values: &[Value]) -> Result<Vec<Vec<Value>>, StoreError> {
        let rows = self
            .client
            .query(sql, params(values).as_slice())
            .map_err(err)?;
        rows.iter().map(columns).collect()
    }

    fn begin(&mut self) -> Result<(), StoreError> {
        self.batch("BEGIN")
    }

    fn lock_migrations(&mut self) -> Result<(), StoreError> {
        self.batch(&format!("SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"))
    }
}
