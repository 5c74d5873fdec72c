//! An OpenAPI 3.1 document from the inventory of one host: a path per template, an operation
//! per method, its path variables (typed by the kind of segment seen), query parameters,
//! request body and responses per status with schemas built from the fields seen (a field
//! present in every body of its kind is `required`), security schemes for the authentication
//! seen, and `x-sensitive` where sensitive data was found. Counts and first and last seen go
//! in `x-oob-mirror` extensions.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};

use super::template::SegKind;
use super::{
    Endpoint, AUTH, PARAM, QUERY, REQUEST_BODY, REQUEST_FIELD, REQUEST_TYPE, RESPONSE_BODY,
    RESPONSE_FIELD, RESPONSE_TYPE, SENSITIVE, STATUS,
};

fn rfc3339(ns: i64) -> String {
    crate::report::rfc3339(u64::try_from(ns).unwrap_or(0))
}

/// The schema of a path variable of these kinds.
fn param_schema(kinds: &BTreeSet<SegKind>) -> Value {
    let kind = kinds
        .iter()
        .copied()
        .reduce(SegKind::widen)
        .unwrap_or(SegKind::String);
    match kind {
        SegKind::Integer => json!({"type": "integer"}),
        SegKind::Uuid => json!({"type": "string", "format": "uuid"}),
        SegKind::Hex => json!({"type": "string", "pattern": "^[0-9a-fA-F]+$"}),
        SegKind::Date => json!({"type": "string", "format": "date"}),
        SegKind::Email => json!({"type": "string", "format": "email"}),
        SegKind::Slug => json!({"type": "string", "pattern": "^[a-z0-9]+(-[a-z0-9]+)+$"}),
        SegKind::String => json!({"type": "string"}),
    }
}

fn type_value(types: &BTreeSet<String>) -> Value {
    match types.len() {
        1 => json!(types.iter().next()),
        _ => json!(types.iter().collect::<Vec<_>>()),
    }
}

/// A field path split: `items[].id` → `items`, `[]`, `id`.
fn parts(path: &str) -> Vec<String> {
    let mut out = Vec::new();
    for piece in path.split('.') {
        let mut rest = piece;
        let mut key = rest;
        let mut arrays = 0;
        while let Some(k) = rest.strip_suffix("[]") {
            arrays += 1;
            rest = k;
            key = k;
        }
        if !key.is_empty() {
            out.push(key.to_owned());
        }
        for _ in 0..arrays {
            out.push("[]".to_owned());
        }
    }
    out
}

#[derive(Default)]
struct Node {
    types: BTreeMap<String, u64>,
    props: BTreeMap<String, Node>,
    items: Option<Box<Node>>,
    sensitive: BTreeSet<String>,
}

impl Node {
    fn at(&mut self, parts: &[String]) -> &mut Node {
        match parts.split_first() {
            None => self,
            Some((p, rest)) => {
                let child = if p == "[]" {
                    self.items.get_or_insert_with(Box::default)
                } else {
                    self.props.entry(p.clone()).or_default()
                };
                child.at(rest)
            }
        }
    }

    fn present(&self) -> u64 {
        self.types.values().sum()
    }

    fn schema(&self, bodies: u64) -> Value {
        let mut s = Map::new();
        let mut types: BTreeSet<String> = self.types.keys().cloned().collect();
        if types.is_empty() {
            if !self.props.is_empty() {
                types.insert("object".into());
            } else if self.items.is_some() {
                types.insert("array".into());
            }
        }
        if !types.is_empty() {
            s.insert("type".into(), type_value(&types));
        }
        if !self.props.is_empty() {
            let present = if self.types.is_empty() {
                bodies
            } else {
                self.present()
            };
            let mut props = Map::new();
            let mut required = Vec::new();
            for (name, child) in &self.props {
                props.insert(name.clone(), child.schema(child.present()));
                if present > 0 && child.present() >= present {
                    required.push(json!(name));
                }
            }
            s.insert("properties".into(), Value::Object(props));
            if !required.is_empty() {
                s.insert("required".into(), Value::Array(required));
            }
        }
        if let Some(items) = &self.items {
            s.insert("items".into(), items.schema(items.present()));
        }
        if !self.sensitive.is_empty() {
            s.insert(
                "x-sensitive".into(),
                json!(self.sensitive.iter().collect::<Vec<_>>()),
            );
        }
        Value::Object(s)
    }
}

/// A body's schema from its field facts (`name`, type, count) over `bodies` bodies.
fn body_schema<'a>(
    fields: impl Iterator<Item = (&'a str, &'a str, u64)>,
    sensitive: &BTreeMap<String, BTreeSet<String>>,
    bodies: u64,
) -> Value {
    let mut root = Node::default();
    for (name, ty, n) in fields {
        *root
            .at(&parts(name))
            .types
            .entry(ty.to_owned())
            .or_insert(0) += n;
    }
    for (name, types) in sensitive {
        if name == "(body)" || name.starts_with("query:") {
            continue;
        }
        let node = root.at(&parts(name));
        node.sensitive.extend(types.iter().cloned());
    }
    let mut s = root.schema(bodies);
    if root.types.is_empty() && root.props.is_empty() && root.items.is_none() {
        s = json!({});
    }
    s
}

fn scheme_of(auth: &str) -> Option<(String, Value)> {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    if auth == "bearer" {
        return Some(("bearer".into(), json!({"type": "http", "scheme": "bearer"})));
    }
    if auth == "basic" {
        return Some(("basic".into(), json!({"type": "http", "scheme": "basic"})));
    }
    if let Some(s) = auth.strip_prefix("authorization:") {
        return Some((
            clean(&format!("http_{s}")),
            json!({"type": "http", "scheme": s}),
        ));
    }
    for (prefix, location) in [
        ("header:", "header"),
        ("cookie:", "cookie"),
        ("query:", "query"),
    ] {
        if let Some(name) = auth.strip_prefix(prefix) {
            return Some((
                clean(&format!("{location}_{name}")),
                json!({"type": "apiKey", "in": location, "name": name}),
            ));
        }
    }
    None
}

fn operation_id(method: &str, template: &str, used: &mut BTreeSet<String>) -> String {
    let mut id = method.to_ascii_lowercase();
    for c in template.chars() {
        if c.is_ascii_alphanumeric() {
            id.push(c);
        } else if !id.ends_with('_') {
            id.push('_');
        }
    }
    let stem = id.trim_end_matches('_').to_owned();
    let mut id = stem.clone();
    let mut k = 2;
    while !used.insert(id.clone()) {
        id = format!("{stem}_{k}");
        k += 1;
    }
    id
}

fn operation(e: &Endpoint, schemes: &mut Map<String, Value>, used: &mut BTreeSet<String>) -> Value {
    let mut op = Map::new();
    op.insert(
        "operationId".into(),
        json!(operation_id(&e.method, &e.template, used)),
    );
    op.insert("summary".into(), json!(format!("Seen {} times", e.count)));
    op.insert(
        "x-oob-mirror".into(),
        json!({"count": e.count, "first_seen": rfc3339(e.first_ns), "last_seen": rfc3339(e.last_ns)}),
    );
    // Path variables, in the template's order.
    let mut kinds: BTreeMap<&str, BTreeSet<SegKind>> = BTreeMap::new();
    for (f, _) in e.facts_of(PARAM) {
        if let Some(k) = SegKind::parse(&f.ty) {
            kinds.entry(f.name.as_str()).or_default().insert(k);
        }
    }
    let mut params = Vec::new();
    for seg in super::template::segments(&e.template) {
        if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            let schema = param_schema(kinds.get(name).unwrap_or(&BTreeSet::new()));
            params.push(json!({"name": name, "in": "path", "required": true, "schema": schema}));
        }
    }
    let mut query: BTreeMap<&str, (BTreeSet<String>, u64)> = BTreeMap::new();
    for (f, n) in e.facts_of(QUERY) {
        let q = query.entry(f.name.as_str()).or_default();
        q.0.insert(f.ty.clone());
        q.1 += n;
    }
    let sensitive_query: BTreeMap<String, BTreeSet<String>> = {
        let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (f, _) in e.facts_of(SENSITIVE) {
            if let Some(name) = f.name.strip_prefix("query:") {
                m.entry(name.to_owned()).or_default().insert(f.ty.clone());
            }
        }
        m
    };
    for (name, (types, n)) in &query {
        let ty = if types.len() == 1 {
            types
                .iter()
                .next()
                .cloned()
                .unwrap_or_else(|| "string".into())
        } else {
            "string".into()
        };
        let mut p = json!({
            "name": name, "in": "query", "required": false,
            "schema": {"type": ty},
            "x-oob-mirror": {"present": n},
        });
        if let Some(s) = sensitive_query.get(*name) {
            if let Some(obj) = p.as_object_mut() {
                obj.insert("x-sensitive".into(), json!(s.iter().collect::<Vec<_>>()));
            }
        }
        params.push(p);
    }
    if !params.is_empty() {
        op.insert("parameters".into(), Value::Array(params));
    }
    let sensitive = |where_: &str| -> BTreeMap<String, BTreeSet<String>> {
        let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (f, _) in e.facts_of(SENSITIVE).filter(|(f, _)| f.scope == where_) {
            m.entry(f.name.clone()).or_default().insert(f.ty.clone());
        }
        m
    };
    // The request body.
    let req_types: Vec<&str> = e
        .facts_of(REQUEST_TYPE)
        .map(|(f, _)| f.name.as_str())
        .collect();
    if !req_types.is_empty() {
        let req_sensitive = sensitive("request");
        let mut content = Map::new();
        for ct in req_types {
            let bodies: u64 = e
                .facts_of(REQUEST_BODY)
                .filter(|(f, _)| f.name == ct)
                .map(|(_, n)| n)
                .sum();
            let schema = if bodies > 0 {
                body_schema(
                    e.facts_of(REQUEST_FIELD)
                        .map(|(f, n)| (f.name.as_str(), f.ty.as_str(), n)),
                    &req_sensitive,
                    bodies,
                )
            } else {
                json!({})
            };
            content.insert(ct.to_owned(), json!({"schema": schema}));
        }
        op.insert("requestBody".into(), json!({"content": content}));
    }
    // The responses, by status.
    let resp_sensitive = sensitive("response");
    let mut responses = Map::new();
    for (f, n) in e.facts_of(STATUS) {
        let status = f.name.as_str();
        let mut r = Map::new();
        r.insert("description".into(), json!(format!("Seen {n} times")));
        let mut content = Map::new();
        for (t, _) in e.facts_of(RESPONSE_TYPE).filter(|(t, _)| t.scope == status) {
            let bodies: u64 = e
                .facts_of(RESPONSE_BODY)
                .filter(|(b, _)| b.scope == status && b.name == t.name)
                .map(|(_, n)| n)
                .sum();
            let schema = if bodies > 0 {
                body_schema(
                    e.facts_of(RESPONSE_FIELD)
                        .filter(|(x, _)| x.scope == status)
                        .map(|(x, n)| (x.name.as_str(), x.ty.as_str(), n)),
                    &resp_sensitive,
                    bodies,
                )
            } else {
                json!({})
            };
            content.insert(t.name.clone(), json!({"schema": schema}));
        }
        if !content.is_empty() {
            r.insert("content".into(), Value::Object(content));
        }
        responses.insert(status.to_owned(), Value::Object(r));
    }
    if responses.is_empty() {
        responses.insert("default".into(), json!({"description": "No response seen"}));
    }
    op.insert("responses".into(), Value::Object(responses));
    let mut security = Vec::new();
    for (f, _) in e.facts_of(AUTH) {
        if let Some((name, scheme)) = scheme_of(&f.name) {
            security.push(json!({ name.clone(): [] }));
            schemes.insert(name, scheme);
        }
    }
    if !security.is_empty() {
        op.insert("security".into(), Value::Array(security));
    }
    let found: Vec<Value> = e
        .facts_of(SENSITIVE)
        .map(|(f, n)| json!({"in": f.scope, "field": f.name, "type": f.ty, "count": n}))
        .collect();
    if !found.is_empty() {
        op.insert("x-sensitive".into(), Value::Array(found));
    }
    Value::Object(op)
}

/// The document of `host`, from its endpoints.
pub fn document(host: &str, endpoints: &[Endpoint]) -> Value {
    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let mut schemes = Map::new();
    let mut used = BTreeSet::new();
    let mut sorted: Vec<&Endpoint> = endpoints.iter().filter(|e| e.host == host).collect();
    sorted.sort_by(|a, b| (&a.template, &a.method).cmp(&(&b.template, &b.method)));
    for e in sorted {
        let method = e.method.to_ascii_lowercase();
        let known = [
            "get", "put", "post", "delete", "options", "head", "patch", "trace",
        ];
        if !known.contains(&method.as_str()) {
            continue;
        }
        let op = operation(e, &mut schemes, &mut used);
        paths
            .entry(e.template.clone())
            .or_default()
            .insert(method, op);
    }
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": {
            "title": format!("{host} (discovered by oob-mirror)"),
            "version": "discovered",
            "description": "Learned from the traffic the oob-mirror analysis node saw: templates, fields and types as observed. No value is recorded.",
        },
        "servers": [{"url": format!("https://{host}")}],
        "paths": paths,
    });
    if !schemes.is_empty() {
        if let Some(obj) = doc.as_object_mut() {
            obj.insert("components".into(), json!({"securitySchemes": schemes}));
        }
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::Fact;

    #[test]
    fn a_document_from_facts() {
        let f = |k: &str, s: &str, n: &str, t: &str, c: u64| (Fact::new(k, s, n, t), c);
        let e = Endpoint {
            host: "api".into(),
            method: "POST".into(),
            template: "/users/{user_id}/orders".into(),
            count: 4,
            first_ns: 0,
            last_ns: 1_000_000_000,
            facts: vec![
                f(PARAM, "", "user_id", "integer", 4),
                f(QUERY, "", "dry_run", "boolean", 1),
                f(REQUEST_TYPE, "", "application/json", "", 4),
                f(REQUEST_BODY, "", "application/json", "", 4),
                f(REQUEST_FIELD, "", "items", "array", 4),
                f(REQUEST_FIELD, "", "items[]", "object", 4),
                f(REQUEST_FIELD, "", "items[].sku", "string", 4),
                f(REQUEST_FIELD, "", "note", "string", 1),
                f(STATUS, "", "201", "", 3),
                f(STATUS, "", "400", "", 1),
                f(RESPONSE_TYPE, "201", "application/json", "", 3),
                f(RESPONSE_BODY, "201", "application/json", "", 3),
                f(RESPONSE_FIELD, "201", "email", "string", 3),
                f(AUTH, "", "bearer", "", 4),
                f(AUTH, "", "header:x-api-key", "", 1),
                f(SENSITIVE, "response", "email", "email", 3),
            ],
        };
        let doc = document("api", &[e]);
        let op = &doc["paths"]["/users/{user_id}/orders"]["post"];
        assert_eq!(op["operationId"], "post_users_user_id_orders");
        assert_eq!(
            op["parameters"][0],
            json!({"name": "user_id", "in": "path", "required": true, "schema": {"type": "integer"}})
        );
        assert_eq!(op["parameters"][1]["schema"], json!({"type": "boolean"}));
        let body = &op["requestBody"]["content"]["application/json"]["schema"];
        assert_eq!(body["type"], "object");
        assert_eq!(body["required"], json!(["items"]));
        assert_eq!(
            body["properties"]["items"]["items"]["properties"]["sku"]["type"],
            "string"
        );
        let resp = &op["responses"]["201"]["content"]["application/json"]["schema"];
        assert_eq!(resp["properties"]["email"]["x-sensitive"], json!(["email"]));
        assert_eq!(
            op["responses"]["400"],
            json!({"description": "Seen 1 times"})
        );
        assert_eq!(
            op["security"],
            json!([{"bearer": []}, {"header_x-api-key": []}])
        );
        assert_eq!(
            doc["components"]["securitySchemes"]["header_x-api-key"],
            json!({"type": "apiKey", "in": "header", "name": "x-api-key"})
        );
        assert_eq!(parts("a.b[].c"), ["a", "b", "[]", "c"]);
        assert_eq!(parts("[].x"), ["[]", "x"]);
    }
}
