//! API discovery on the node's port: `GET /api/v1/inventory` (the inventory, with filters),
//! `GET /api/v1/inventory/openapi.json?host=H` (an OpenAPI 3.1 document of a host's endpoints)
//! and the console page `/apis` (endpoints by host, filters, sensitive-data badges, shadow and
//! zombie endpoints, links to the attacks on each endpoint). All read the store (every replica
//! sharing it answers alike); the specs are this node's `--spec`.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::{json, Value};

use super::{page, Web, JSON};
use crate::intake::server::Page;
use crate::inventory::spec::{self, Standing, Zombie};
use crate::inventory::{self, sensitive, CutCount, Endpoint, Fact};
use crate::report::{esc, rfc3339};
use crate::store::{host_key, InventoryFilter};

/// Endpoints in one answer, unless `limit` says otherwise.
pub const DEFAULT_LIMIT: u32 = 1000;
pub const MAX_LIMIT: u32 = 10_000;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    host: Option<String>,
    method: Option<String>,
    path: Option<String>,
    sensitive: Option<String>,
    spec: Option<String>,
    limit: Option<String>,
    offset: Option<String>,
}

/// `spec=`: where the endpoints stand against the specs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecFilter {
    Shadow,
    Documented,
    /// Only the zombies (no seen endpoint is one).
    Zombie,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InvQuery {
    pub filter: InventoryFilter,
    pub sensitive: Option<String>,
    pub spec: Option<SpecFilter>,
    pub limit: u32,
    pub offset: u64,
}

fn nonempty(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

impl InvQuery {
    pub fn parse(query: &str) -> Result<InvQuery, String> {
        let raw: Raw = serde_urlencoded::from_str(query).map_err(|e| e.to_string())?;
        let mut q = InvQuery {
            limit: DEFAULT_LIMIT,
            ..InvQuery::default()
        };
        q.filter.host = nonempty(raw.host);
        q.filter.method = nonempty(raw.method)
            .map(|m| {
                if m.len() <= 16 && m.bytes().all(|b| b.is_ascii_alphabetic()) {
                    Ok(m.to_ascii_uppercase())
                } else {
                    Err(format!("method: an HTTP method, not {m:?}"))
                }
            })
            .transpose()?;
        q.filter.path_prefix = nonempty(raw.path);
        q.sensitive = nonempty(raw.sensitive)
            .map(|s| {
                if sensitive::TYPES.contains(&s.as_str()) {
                    Ok(s)
                } else {
                    Err(format!(
                        "sensitive: one of {}, not {s:?}",
                        sensitive::TYPES.join(", ")
                    ))
                }
            })
            .transpose()?;
        q.spec = match nonempty(raw.spec).as_deref() {
            None => None,
            Some("shadow") => Some(SpecFilter::Shadow),
            Some("documented") => Some(SpecFilter::Documented),
            Some("zombie") => Some(SpecFilter::Zombie),
            Some(other) => {
                return Err(format!("spec: shadow, zombie or documented, not {other:?}"))
            }
        };
        if let Some(v) = nonempty(raw.limit) {
            q.limit = match v.parse::<u32>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => return Err(format!("limit: 1 to {MAX_LIMIT}, not {v:?}")),
            };
        }
        if let Some(v) = nonempty(raw.offset) {
            q.offset = v
                .parse::<u64>()
                .ok()
                .filter(|n| i64::try_from(*n).is_ok())
                .ok_or_else(|| format!("offset: a whole number, not {v:?}"))?;
        }
        Ok(q)
    }
}

fn spec_name(s: SpecFilter) -> &'static str {
    match s {
        SpecFilter::Shadow => "shadow",
        SpecFilter::Documented => "documented",
        SpecFilter::Zombie => "zombie",
    }
}

/// What the API and the page show.
pub struct View {
    /// The endpoints the query selects (all pages), with their standing.
    pub endpoints: Vec<(Endpoint, Standing)>,
    pub zombies: Vec<Zombie>,
    pub cuts: Vec<CutCount>,
    /// Shadow endpoints among the selected (before `spec=`).
    pub shadow: u64,
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// The inventory `q` selects, against the specs; `Err` is a status and a reason.
pub async fn view(web: &Web, q: &InvQuery) -> Result<View, (u16, &'static str)> {
    let Some(reader) = &web.reader else {
        return Err((503, "this node runs without a store"));
    };
    let Some(inv) = &web.inventory else {
        return Err((503, "API discovery is off on this node (--inventory off)"));
    };
    let data = reader
        .inventory(q.filter.clone())
        .await
        .map_err(|_| (503, "the store is not available"))?;
    let specs = &inv.config().specs;
    let since = now_ns()
        .saturating_sub(i64::try_from(inv.config().zombie_after.as_nanos()).unwrap_or(i64::MAX));
    let mut zombies = spec::zombies(specs, &data.endpoints, since, q.filter.host.as_deref());
    zombies.retain(|z| {
        q.filter
            .method
            .as_deref()
            .is_none_or(|m| z.method.eq_ignore_ascii_case(m))
            && q.filter
                .path_prefix
                .as_deref()
                .is_none_or(|p| z.path.starts_with(p))
    });
    let mut shadow = 0;
    let mut endpoints = Vec::new();
    for e in data.endpoints {
        if let Some(t) = &q.sensitive {
            if !e.facts_of(inventory::SENSITIVE).any(|(f, _)| &f.ty == t) {
                continue;
            }
        }
        let standing = spec::standing(specs, &e);
        if standing == Standing::Shadow {
            shadow += 1;
        }
        let keep = match q.spec {
            None => true,
            Some(SpecFilter::Shadow) => standing == Standing::Shadow,
            Some(SpecFilter::Documented) => standing == Standing::Documented,
            Some(SpecFilter::Zombie) => false,
        };
        if keep {
            endpoints.push((e, standing));
        }
    }
    if matches!(q.spec, Some(SpecFilter::Shadow | SpecFilter::Documented)) {
        zombies.clear();
    }
    Ok(View {
        endpoints,
        zombies,
        cuts: data.cuts,
        shadow,
    })
}

fn ts(ns: i64) -> String {
    rfc3339(u64::try_from(ns).unwrap_or(0))
}

/// `/attacks?host=H&path=P`, P the template up to its first variable.
pub fn attacks_link(e: &Endpoint) -> String {
    let prefix = match e.template.find('{') {
        Some(at) => e.template.get(..at).unwrap_or("/"),
        None => e.template.as_str(),
    };
    let pairs = [("host", e.host.as_str()), ("path", prefix)];
    format!(
        "/attacks?{}",
        serde_urlencoded::to_string(pairs).unwrap_or_default()
    )
}

fn facts(e: &Endpoint, kind: &str, f: impl Fn(&Fact, u64) -> Value) -> Value {
    Value::Array(e.facts_of(kind).map(|(x, n)| f(x, n)).collect())
}

/// One endpoint as the API gives it.
pub fn endpoint_json(e: &Endpoint, standing: Standing) -> Value {
    use crate::inventory::*;
    json!({
        "host": e.host,
        "method": e.method,
        "template": e.template,
        "count": e.count,
        "first_seen": ts(e.first_ns),
        "last_seen": ts(e.last_ns),
        "spec": standing.as_str(),
        "params": facts(e, PARAM, |f, n| json!({"name": f.name, "kind": f.ty, "count": n})),
        "statuses": facts(e, STATUS, |f, n| json!({"status": f.name, "count": n})),
        "request_types": facts(e, REQUEST_TYPE, |f, n| json!({"type": f.name, "count": n})),
        "response_types": facts(e, RESPONSE_TYPE, |f, n| json!({"status": f.scope, "type": f.name, "count": n})),
        "query": facts(e, QUERY, |f, n| json!({"name": f.name, "type": f.ty, "count": n})),
        "request_bodies": facts(e, REQUEST_BODY, |f, n| json!({"type": f.name, "count": n})),
        "request_fields": facts(e, REQUEST_FIELD, |f, n| json!({"name": f.name, "type": f.ty, "count": n})),
        "response_bodies": facts(e, RESPONSE_BODY, |f, n| json!({"status": f.scope, "type": f.name, "count": n})),
        "response_fields": facts(e, RESPONSE_FIELD, |f, n| json!({"status": f.scope, "name": f.name, "type": f.ty, "count": n})),
        "auth": facts(e, AUTH, |f, n| json!({"name": f.name, "count": n})),
        "sensitive": facts(e, SENSITIVE, |f, n| json!({"in": f.scope, "field": f.name, "type": f.ty, "count": n})),
        "attacks": attacks_link(e),
    })
}

fn zombie_json(z: &Zombie) -> Value {
    json!({
        "host": z.host,
        "method": z.method,
        "path": z.path,
        "last_seen": z.last_ns.map(ts),
    })
}

fn error(status: u16, message: &str) -> Page {
    page(
        status,
        JSON,
        json!({ "error": message }).to_string().into_bytes(),
    )
}

/// `GET /api/v1/inventory`.
pub async fn api_list(web: &Web, query: &str) -> Page {
    let q = match InvQuery::parse(query) {
        Ok(q) => q,
        Err(e) => return error(400, &e),
    };
    let v = match view(web, &q).await {
        Ok(v) => v,
        Err((status, why)) => return error(status, why),
    };
    let total = v.endpoints.len();
    let items: Vec<Value> = v
        .endpoints
        .iter()
        .skip(usize::try_from(q.offset).unwrap_or(usize::MAX))
        .take(q.limit as usize)
        .map(|(e, s)| endpoint_json(e, *s))
        .collect();
    let body = json!({
        "items": items,
        "total": total,
        "limit": q.limit,
        "offset": q.offset,
        "shadow": v.shadow,
        "zombie": v.zombies.len(),
        "zombies": v.zombies.iter().map(zombie_json).collect::<Vec<_>>(),
        "cuts": v.cuts.iter().map(|c| json!({"host": c.host, "reason": c.reason, "count": c.count})).collect::<Vec<_>>(),
    });
    Page::ok(JSON, body.to_string().into_bytes())
}

/// `GET /api/v1/inventory/openapi.json?host=H` (its paths empty when nothing was seen on H).
pub async fn api_openapi(web: &Web, query: &str) -> Page {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Host {
        host: Option<String>,
    }
    let host = match serde_urlencoded::from_str::<Host>(query) {
        Ok(Host { host }) => nonempty(host),
        Err(e) => return error(400, &e.to_string()),
    };
    let Some(host) = host else {
        return error(400, "host: required");
    };
    let q = InvQuery {
        filter: InventoryFilter {
            host: Some(host.clone()),
            ..InventoryFilter::default()
        },
        ..InvQuery::default()
    };
    let v = match view(web, &q).await {
        Ok(v) => v,
        Err((status, why)) => return error(status, why),
    };
    let endpoints: Vec<Endpoint> = v.endpoints.into_iter().map(|(e, _)| e).collect();
    let doc = inventory::openapi::document(&host_key(&host), &endpoints);
    Page::ok(JSON, doc.to_string().into_bytes())
}

fn select(name: &str, current: Option<&str>, options: &[(&str, &str)]) -> String {
    let mut out = format!("<select name={name}>");
    for (value, label) in options {
        let selected = if current == Some(*value) || (value.is_empty() && current.is_none()) {
            " selected"
        } else {
            ""
        };
        let _ = write!(
            out,
            "<option value=\"{}\"{selected}>{}</option>",
            esc(value),
            esc(label)
        );
    }
    out.push_str("</select>");
    out
}

fn form(q: &InvQuery) -> String {
    let f = &q.filter;
    let text = |name: &str, label: &str, value: Option<&str>| {
        format!(
            "<label>{label}<input name={name} value=\"{}\"></label>",
            esc(value.unwrap_or(""))
        )
    };
    let mut types: Vec<(&str, &str)> = vec![("", "any")];
    types.extend(sensitive::TYPES.iter().map(|t| (*t, *t)));
    let specs = [
        ("", "any"),
        ("shadow", "shadow (not in the spec)"),
        ("zombie", "zombie (in the spec, not seen)"),
        ("documented", "documented"),
    ];
    format!(
        "<form class=filters method=get action=\"/apis\" id=filters>{}{}{}\
         <label>Sensitive data{}</label><label>Spec{}</label>\
         <button type=submit>Filter</button> <a href=\"/apis\">Clear</a></form>",
        text("host", "Host", f.host.as_deref()),
        text("method", "Method", f.method.as_deref()),
        text("path", "Path prefix", f.path_prefix.as_deref()),
        select("sensitive", q.sensitive.as_deref(), &types),
        select("spec", q.spec.map(spec_name), &specs),
    )
}

fn badges(e: &Endpoint) -> String {
    e.sensitive_types()
        .iter()
        .map(|t| {
            format!(
                "<span class=\"badge sensitive\" data-type=\"{t}\">{t}</span> ",
                t = esc(t)
            )
        })
        .collect()
}

fn row(e: &Endpoint, standing: Standing) -> String {
    let statuses: Vec<String> = e
        .facts_of(inventory::STATUS)
        .map(|(f, n)| format!("{} ×{n}", f.name))
        .collect();
    let auth: Vec<String> = e
        .facts_of(inventory::AUTH)
        .map(|(f, _)| f.name.clone())
        .collect();
    let fields = e.facts_of(inventory::REQUEST_FIELD).count()
        + e.facts_of(inventory::RESPONSE_FIELD).count();
    let spec = match standing.as_str() {
        Some(s) => format!("<span class=\"badge spec-{s}\">{s}</span>"),
        None => String::new(),
    };
    format!(
        "<tr data-endpoint=\"{method} {template}\"><td>{method}</td><td class=path>{template}</td>\
         <td>{spec}</td><td>{count}</td><td class=time>{first}<br>{last}</td><td>{statuses}</td>\
         <td>{fields}</td><td>{auth}</td><td>{badges}</td><td><a href=\"{attacks}\">attacks</a></td></tr>\n",
        method = esc(&e.method),
        template = esc(&e.template),
        count = e.count,
        first = ts(e.first_ns),
        last = ts(e.last_ns),
        statuses = esc(&statuses.join(", ")),
        auth = esc(&auth.join(", ")),
        badges = badges(e),
        attacks = esc(&attacks_link(e)),
    )
}

/// The page `/apis`.
pub async fn page_apis(web: &Web, query: &str) -> Page {
    let html = |status: u16, body: &str| super::console::html_page(status, "APIs", body);
    let q = match InvQuery::parse(query) {
        Ok(q) => q,
        Err(e) => {
            return html(
                400,
                &format!(
                "<h1>APIs</h1><p>Not a filter: {}</p><p><a href=\"/apis\">All endpoints</a></p>",
                esc(&e)
            ),
            )
        }
    };
    let v = match view(web, &q).await {
        Ok(v) => v,
        Err((status, why)) => return html(status, &format!("<h1>APIs</h1><p>{}</p>", esc(why))),
    };
    let mut hosts: Vec<&str> = v.endpoints.iter().map(|(e, _)| e.host.as_str()).collect();
    hosts.dedup();
    let cut: u64 = v
        .cuts
        .iter()
        .filter(|c| c.reason != "fanout")
        .map(|c| c.count)
        .sum();
    let mut body = format!(
        "<h1>APIs</h1><p class=muted id=summary>{n} endpoints on {h} hosts match; {s} shadow, \
         {z} zombie. {cut} exchanges not learned (bounds; <a href=\"/metrics\">metrics</a>).</p>{form}",
        n = v.endpoints.len(),
        h = hosts.len(),
        s = v.shadow,
        z = v.zombies.len(),
        form = form(&q),
    );
    for host in &hosts {
        let _ = write!(
            body,
            "<div class=panel><h2>{h}</h2><p><a href=\"/api/v1/inventory/openapi.json?{hq}\">OpenAPI document</a></p>\
             <table class=apis data-host=\"{h}\"><thead><tr><th>Method</th><th>Template</th><th>Spec</th>\
             <th>Count</th><th>First / last seen</th><th>Statuses</th><th>Fields</th><th>Auth</th>\
             <th>Sensitive data</th><th></th></tr></thead><tbody>",
            h = esc(host),
            hq = esc(&serde_urlencoded::to_string([("host", *host)]).unwrap_or_default()),
        );
        for (e, s) in v.endpoints.iter().filter(|(e, _)| e.host == *host) {
            body.push_str(&row(e, *s));
        }
        body.push_str("</tbody></table></div>");
    }
    if v.endpoints.is_empty() {
        body.push_str("<div class=panel><p>No endpoint matches.</p></div>");
    }
    if !v.zombies.is_empty() {
        body.push_str(
            "<div class=panel><h2>Zombie endpoints</h2><p class=muted>In a spec, not seen since \
             the zombie threshold (--zombie-after).</p><table id=zombies><thead><tr><th>Host</th>\
             <th>Method</th><th>Path</th><th>Last seen</th></tr></thead><tbody>\n",
        );
        for z in &v.zombies {
            let _ = writeln!(
                body,
                "<tr data-zombie=\"{m} {p}\"><td>{h}</td><td>{m}</td><td class=path>{p}</td><td>{l}</td></tr>",
                h = esc(&z.host),
                m = esc(&z.method),
                p = esc(&z.path),
                l = z.last_ns.map_or_else(|| "never".to_owned(), ts),
            );
        }
        body.push_str("</tbody></table></div>");
    }
    html(200, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_and_bad_ones_are_named() {
        let q = InvQuery::parse(
            "host=Shop&method=get&path=%2Fv1&sensitive=card&spec=shadow&limit=5&offset=2",
        )
        .unwrap();
        assert_eq!(q.filter.method.as_deref(), Some("GET"));
        assert_eq!(q.filter.path_prefix.as_deref(), Some("/v1"));
        assert_eq!(
            (q.sensitive.as_deref(), q.spec),
            (Some("card"), Some(SpecFilter::Shadow))
        );
        assert_eq!((q.limit, q.offset), (5, 2));
        assert_eq!(InvQuery::parse("host=&spec=").unwrap().spec, None);
        for (query, says) in [
            ("colour=red", "colour"),
            ("method=G%20T", "method"),
            ("sensitive=dna", "sensitive"),
            ("spec=ghost", "spec"),
            ("limit=0", "limit"),
            ("offset=-1", "offset"),
        ] {
            let e = InvQuery::parse(query).unwrap_err();
            assert!(e.contains(says), "{query}: {e}");
        }
        let e = Endpoint {
            host: "shop".into(),
            template: "/users/{user_id}/orders".into(),
            ..Endpoint::default()
        };
        assert_eq!(attacks_link(&e), "/attacks?host=shop&path=%2Fusers%2F");
    }
}
