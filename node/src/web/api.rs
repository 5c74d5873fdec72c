//! The JSON API under `/api/v1/`, described by [`OPENAPI`] (served at
//! `/api/v1/openapi.json`):
//!
//! - `GET attacks`: the attacks the filters select, newest first, a page at a time;
//! - `GET attacks/{id}`: one attack, with its exchange as analysed;
//! - `GET stats`: counts by class and severity over the filters;
//! - `GET export`: the attacks the filters select, whole, as NDJSON (one per line);
//! - `GET inventory` and `GET inventory/openapi.json`: API discovery ([`super::apis`]).
//!
//! An item carries the fields of the node's JSON line (`id`, `request_id`, `ts`, `source`,
//! `method`, `authority`, `path`, `status`, `rules`) and its classes and severity.

use serde_json::{json, Value};

use super::query::{Query, MAX_LIMIT};
use super::{page, Web, JSON};
use crate::analysis::classes;
use crate::intake::server::Page;
use crate::report::rfc3339;
use crate::store::{Attack, AttackFilter, StoreError, StoredHeader};

pub const OPENAPI: &str = include_str!("openapi.json");

const NDJSON: &str = "application/x-ndjson";

/// The most attacks one export gives (a larger one is cut, and says so in its last line).
pub const MAX_EXPORT: u64 = 100_000;

pub async fn route(web: &Web, rest: &str, query: &str) -> Option<Page> {
    let answer = match rest {
        "attacks" => list(web, query).await,
        "stats" => stats(web, query).await,
        "export" => export(web, query).await,
        "inventory" => Ok(super::apis::api_list(web, query).await),
        "inventory/openapi.json" => Ok(super::apis::api_openapi(web, query).await),
        _ => match rest.strip_prefix("attacks/") {
            Some(id) if !id.is_empty() && !id.contains('/') => one(web, id, query).await,
            _ => return None,
        },
    };
    Some(answer.unwrap_or_else(|e| e))
}

fn error(status: u16, message: &str) -> Page {
    page(
        status,
        JSON,
        json!({ "error": message }).to_string().into_bytes(),
    )
}

fn store_error(e: &StoreError) -> Page {
    // The reason goes to the node's log, once a minute, with the writer's; a client gets
    // only that the store did not answer.
    let _ = e;
    error(503, "the store is not available")
}

fn parse(query: &str) -> Result<Query, Page> {
    Query::parse(query).map_err(|e| error(400, &e))
}

fn reader(web: &Web) -> Result<&crate::store::StoreReader, Page> {
    web.reader
        .as_ref()
        .ok_or_else(|| error(503, "this node runs without a store"))
}

fn ts(ns: i64) -> String {
    rfc3339(u64::try_from(ns).unwrap_or(0))
}

/// An attack as the list shows it.
pub fn summary(a: &Attack) -> Value {
    json!({
        "id": a.id,
        "request_id": a.request_id,
        "ts": ts(a.ts_ns),
        "ts_ns": a.ts_ns,
        "source": a.source,
        "source_ip": a.source_ip,
        "method": a.method,
        "authority": a.authority,
        "path": a.path,
        "status": a.status,
        "class": a.class,
        "classes": a.classes,
        "severity": a.severity,
        "rules": a.rules.iter().map(|r| json!({
            "id": r.id, "msg": r.msg, "severity": r.severity, "data": r.data,
        })).collect::<Vec<_>>(),
    })
}

fn headers(h: &[StoredHeader]) -> Value {
    Value::Array(
        h.iter()
            .map(|h| json!({ "name": h.name, "value": h.value }))
            .collect(),
    )
}

/// An attack whole: the summary and its exchange as analysed.
pub fn detail(a: &Attack) -> Value {
    let mut v = summary(a);
    if let Some(map) = v.as_object_mut() {
        map.insert("protocol".into(), json!(a.protocol));
        map.insert(
            "request".into(),
            json!({
                "headers": headers(&a.request_headers),
                "body": a.request_body,
                "body_size": a.request_body_size,
            }),
        );
        map.insert(
            "response".into(),
            match a.status {
                Some(status) => json!({
                    "status": status,
                    "headers": headers(&a.response_headers),
                    "body": a.response_body,
                    "body_size": a.response_body_size,
                }),
                None => Value::Null,
            },
        );
    }
    v
}

fn ok_json(v: &Value) -> Page {
    Page::ok(JSON, v.to_string().into_bytes())
}

async fn list(web: &Web, query: &str) -> Result<Page, Page> {
    let q = parse(query)?;
    let reader = reader(web)?;
    let found = reader
        .list(q.filter.clone(), q.limit, q.offset)
        .await
        .map_err(|e| store_error(&e))?;
    Ok(ok_json(&json!({
        "items": found.items.iter().map(summary).collect::<Vec<_>>(),
        "total": found.total,
        "limit": q.limit,
        "offset": q.offset,
    })))
}

async fn one(web: &Web, id: &str, query: &str) -> Result<Page, Page> {
    if !query.is_empty() {
        return Err(error(400, "this resource takes no parameters"));
    }
    let reader = reader(web)?;
    match reader.get(id.to_owned()).await {
        Ok(Some(a)) => Ok(ok_json(&detail(&a))),
        Ok(None) => Err(error(404, "no such attack")),
        Err(e) => Err(store_error(&e)),
    }
}

pub fn stats_json(s: &crate::store::Stats) -> Value {
    json!({
        "total": s.total,
        "by_class": s.by_class.iter().map(|c| json!({
            "class": c.class, "label": classes::label(&c.class), "count": c.count,
        })).collect::<Vec<_>>(),
        "by_severity": s.by_severity.iter().map(|(severity, count)| json!({
            "severity": severity, "count": count,
        })).collect::<Vec<_>>(),
        "first_ts": s.first_ns.map(ts),
        "last_ts": s.last_ns.map(ts),
    })
}

async fn stats(web: &Web, query: &str) -> Result<Page, Page> {
    let q = parse(query)?;
    if query_has_paging(query) {
        return Err(error(400, "stats take filters only"));
    }
    let reader = reader(web)?;
    let s = reader.stats(q.filter).await.map_err(|e| store_error(&e))?;
    Ok(ok_json(&stats_json(&s)))
}

fn query_has_paging(query: &str) -> bool {
    serde_urlencoded::from_str::<Vec<(String, String)>>(query)
        .unwrap_or_default()
        .iter()
        .any(|(k, _)| matches!(k.as_str(), "limit" | "offset" | "page" | "view"))
}

/// Every selected attack, whole, newest first, as one JSON object a line; read from the store
/// a page at a time so the reader thread is never held long.
async fn export(web: &Web, query: &str) -> Result<Page, Page> {
    let q = parse(query)?;
    if query_has_paging(query) {
        return Err(error(400, "an export takes filters only"));
    }
    let reader = reader(web)?;
    let filter: AttackFilter = q.filter;
    let mut out = Vec::new();
    let mut offset = 0u64;
    while offset < MAX_EXPORT {
        let found = reader
            .list(filter.clone(), MAX_LIMIT, offset)
            .await
            .map_err(|e| store_error(&e))?;
        for a in &found.items {
            out.extend_from_slice(detail(a).to_string().as_bytes());
            out.push(b'\n');
        }
        offset += found.items.len() as u64;
        if found.items.is_empty() || offset >= found.total {
            break;
        }
    }
    Ok(Page::ok(NDJSON, out))
}
