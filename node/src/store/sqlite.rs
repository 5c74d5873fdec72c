//! Embedded SQLite (the `rusqlite` crate, SQLite compiled in): the default store, one file.
//!
//! WAL journal, so the reader's connection reads while the writer writes; `synchronous=NORMAL`
//! (a power cut may lose the last transactions, never corrupt the file); a busy timeout, so a
//! lock held by another process (a backup, a second writer) is waited for, then reported as an
//! outage. Write transactions begin `IMMEDIATE`, which also serialises migrations between
//! processes sharing the file.

use std::path::Path;
use std::time::Duration;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, ToSql};

use super::sql::{Conn, Dialect, SqlStore, Value};
use super::StoreError;

pub struct SqliteConn {
    conn: Connection,
}

fn err(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(format!("sqlite: {e}"))
}

/// Opens (creating it and its directory if need be) the database at `path`.
pub fn open(path: &Path, busy_timeout: Duration) -> Result<SqlStore<SqliteConn>, StoreError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Backend(format!("sqlite: creating {}: {e}", dir.display())))?;
    }
    let conn = Connection::open(path)
        .map_err(|e| StoreError::Backend(format!("sqlite: opening {}: {e}", path.display())))?;
    conn.busy_timeout(busy_timeout).map_err(err)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(err)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(err)?;
    Ok(SqlStore::new(SqliteConn { conn }))
}

fn params(values: &[Value]) -> Vec<&dyn ToSql> {
    values
        .iter()
        .map(|v| match v {
            Value::Int(i) => i as &dyn ToSql,
            Value::Text(t) => t as &dyn ToSql,
        })
        .collect()
}

impl Conn for SqliteConn {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        self.conn.execute_batch(sql).map_err(err)
    }

    fn execute(&mut self, sql: &str, values: &[Value]) -> Result<u64, StoreError> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(err)?;
        let n = stmt.execute(params(values).as_slice()).map_err(err)?;
        Ok(n as u64)
    }

    fn query(&mut self, sql: &str, values: &[Value]) -> Result<Vec<Vec<Value>>, StoreError> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(err)?;
        let width = stmt.column_count();
        let mut rows = stmt.query(params(values).as_slice()).map_err(err)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(err)? {
            let mut cols = Vec::with_capacity(width);
            for i in 0..width {
                cols.push(match row.get_ref(i).map_err(err)? {
                    ValueRef::Null => Value::Int(None),
                    ValueRef::Integer(n) => Value::Int(Some(n)),
                    ValueRef::Real(f) => Value::Int(Some(f as i64)),
                    ValueRef::Text(t) | ValueRef::Blob(t) => {
                        Value::Text(Some(String::from_utf8_lossy(t).into_owned()))
                    }
                });
            }
            out.push(cols);
        }
        Ok(out)
    }

    fn begin(&mut self) -> Result<(), StoreError> {
        self.batch("BEGIN IMMEDIATE")
    }

    fn lock_migrations(&mut self) -> Result<(), StoreError> {
        Ok(()) // BEGIN IMMEDIATE holds the database's write lock already
    }
}
