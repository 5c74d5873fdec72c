//! What one exchange says about its endpoint, computed outside any lock: the facts
//! ([`super::Fact`]) of its status, content types, query parameters, JSON (or form) fields and
//! their types, authentication and sensitive data. Only names, types and counts come out of
//! here; no value does.

use serde_json::Value;

use super::{sensitive, Config, Fact};
use crate::pairing::{Exchange, Headers};

/// One exchange, ready to be counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub host: String,
    pub method: String,
    /// The path's segments (at most `max_segments + 1`: one more says it was too deep).
    pub segments: Vec<String>,
    pub ts_ns: i64,
    /// Sorted, each once.
    pub facts: Vec<Fact>,
}

fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
        .map(|(_, v)| v.as_slice())
}

/// `application/json; charset=utf-8` → `application/json`.
pub fn media_type(value: &[u8]) -> Option<String> {
    let s = String::from_utf8_lossy(value);
    let t = s
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    (!t.is_empty() && t.len() <= 100 && t.bytes().all(|b| b.is_ascii_graphic())).then_some(t)
}

fn is_json(media: &str) -> bool {
    media == "application/json" || media.ends_with("+json")
}

/// The JSON type of a query or form value.
fn scalar_type(v: &str) -> &'static str {
    if v.is_empty() {
        "string"
    } else if v.parse::<i64>().is_ok() {
        "integer"
    } else if v.parse::<f64>().is_ok_and(f64::is_finite)
        && v.bytes().all(|b| {
            b.is_ascii_digit() || b == b'.' || b == b'-' || b == b'e' || b == b'E' || b == b'+'
        })
    {
        "number"
    } else if v == "true" || v == "false" {
        "boolean"
    } else {
        "string"
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn name_ok(name: &str) -> bool {
    !name.is_empty() && name.len() <= 128
}

/// The facts of one body's fields: JSON walked to `max_depth`, at most `max_nodes` values.
struct Walk<'a> {
    cfg: &'a Config,
    kind: &'static str,
    scope: String,
    where_: &'static str,
    budget: usize,
    out: &'a mut Vec<Fact>,
}

impl Walk<'_> {
    fn field(&mut self, path: &str, ty: &str) {
        self.out.push(Fact::new(self.kind, &self.scope, path, ty));
    }

    fn sensitive(&mut self, field: &str, ty: &str) {
        self.out
            .push(Fact::new(super::SENSITIVE, self.where_, field, ty));
    }

    fn value(&mut self, path: &mut String, v: &Value, depth: usize) {
        if self.budget == 0 {
            return;
        }
        self.budget -= 1;
        if !path.is_empty() {
            self.field(path, json_type(v));
        }
        match v {
            Value::String(s) => {
                let field = if path.is_empty() {
                    "(body)"
                } else {
                    path.as_str()
                };
                let field = field.to_owned();
                for t in sensitive::scan(s) {
                    self.sensitive(&field, t);
                }
            }
            Value::Object(map) if depth < self.cfg.max_json_depth => {
                for (k, child) in map {
                    let len = path.len();
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(k);
                    if name_ok(path) {
                        self.value(path, child, depth + 1);
                    }
                    path.truncate(len);
                }
            }
            Value::Array(items) if depth < self.cfg.max_json_depth => {
                let len = path.len();
                path.push_str("[]");
                for child in items {
                    if self.budget == 0 {
                        break;
                    }
                    self.value(path, child, depth + 1);
                }
                path.truncate(len);
            }
            _ => {}
        }
    }
}

/// The facts of one body: its content type, its fields, the sensitive data in it.
#[allow(clippy::too_many_arguments)]
fn body(
    cfg: &Config,
    headers: &Headers,
    body: &[u8],
    type_kind: &'static str,
    body_kind: &'static str,
    field_kind: &'static str,
    scope: &str,
    where_: &'static str,
    out: &mut Vec<Fact>,
) {
    let media = header(headers, "content-type").and_then(media_type);
    if let Some(m) = &media {
        out.push(Fact::new(type_kind, scope, m, ""));
    }
    if body.is_empty() {
        return;
    }
    let Some(bytes) = body.get(..cfg.max_body.min(body.len())) else {
        return;
    };
    let media = media.unwrap_or_default();
    if is_json(&media) || (media.is_empty() && matches!(body.first(), Some(b'{' | b'['))) {
        if bytes.len() == body.len() {
            if let Ok(v) = serde_json::from_slice::<Value>(bytes) {
                out.push(Fact::new(
                    body_kind,
                    scope,
                    if media.is_empty() {
                        "application/json"
                    } else {
                        &media
                    },
                    "",
                ));
                let mut walk = Walk {
                    cfg,
                    kind: field_kind,
                    scope: scope.to_owned(),
                    where_,
                    budget: cfg.max_json_nodes,
                    out,
                };
                walk.value(&mut String::new(), &v, 0);
                return;
            }
        }
    } else if media == "application/x-www-form-urlencoded" {
        if let Ok(pairs) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(bytes) {
            out.push(Fact::new(body_kind, scope, &media, ""));
            for (k, v) in pairs.iter().take(cfg.max_json_nodes) {
                if name_ok(k) {
                    out.push(Fact::new(field_kind, scope, k, scalar_type(v)));
                    for t in sensitive::scan(v) {
                        out.push(Fact::new(super::SENSITIVE, where_, k, t));
                    }
                }
            }
            return;
        }
    }
    // Anything else readable as text is scanned for sensitive data as a whole.
    let text = String::from_utf8_lossy(bytes);
    if media.starts_with("text/")
        || is_json(&media)
        || media.ends_with("xml")
        || media.is_empty()
        || media == "application/x-www-form-urlencoded"
    {
        for t in sensitive::scan(&text) {
            out.push(Fact::new(super::SENSITIVE, where_, "(body)", t));
        }
    }
}

/// Header names that carry an API key.
const API_KEY_HEADERS: &[&str] = &[
    "x-api-key",
    "api-key",
    "apikey",
    "x-apikey",
    "x-auth-token",
    "x-access-token",
    "x-api-token",
    "x-token",
];
/// Query parameter names that carry a credential.
const API_KEY_PARAMS: &[&str] = &[
    "api_key",
    "apikey",
    "api-key",
    "key",
    "access_token",
    "token",
];

fn session_cookie(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.contains("session")
        || n.contains("sess")
        || matches!(
            n.as_str(),
            "sid" | "jsessionid" | "phpsessid" | "connect.sid"
        )
        || n.ends_with("_sid")
        || n.ends_with("-sid")
        || n.ends_with(".sid")
}

/// The authentication the request carried: names only.
fn auth(headers: &Headers, out: &mut Vec<Fact>) {
    for (name, value) in headers {
        let name = String::from_utf8_lossy(name).to_ascii_lowercase();
        if name == "authorization" {
            let v = String::from_utf8_lossy(value);
            let scheme = v
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_ascii_lowercase();
            let label = match scheme.as_str() {
                "bearer" => "bearer".to_owned(),
                "basic" => "basic".to_owned(),
                s if !s.is_empty()
                    && s.len() <= 20
                    && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') =>
                {
                    format!("authorization:{s}")
                }
                _ => "authorization".to_owned(),
            };
            out.push(Fact::new(super::AUTH, "", &label, ""));
        } else if API_KEY_HEADERS.contains(&name.as_str())
            || name.contains("api-key")
            || name.contains("apikey")
            || name.contains("api_key")
        {
            if name.len() <= 64 {
                out.push(Fact::new(super::AUTH, "", &format!("header:{name}"), ""));
            }
        } else if name == "cookie" {
            let v = String::from_utf8_lossy(value);
            for part in v.split(';') {
                let cookie = part.split('=').next().unwrap_or("").trim();
                if !cookie.is_empty() && cookie.len() <= 64 && session_cookie(cookie) {
                    out.push(Fact::new(super::AUTH, "", &format!("cookie:{cookie}"), ""));
                }
            }
        }
    }
}

/// What `ex` (analysed and sealed) says, or `None` when it has no host.
pub fn observe(ex: &Exchange, cfg: &Config) -> Option<Observation> {
    let host = crate::store::host_key(ex.authority.as_deref()?);
    if host.is_empty() || host.len() > 253 {
        return None;
    }
    let method = if !ex.method.is_empty()
        && ex.method.len() <= 16
        && ex.method.bytes().all(|b| b.is_ascii_alphabetic())
    {
        ex.method.to_ascii_uppercase()
    } else {
        "OTHER".to_owned()
    };
    let segments: Vec<String> = super::template::segments(&ex.path)
        .into_iter()
        .take(cfg.limits.max_segments + 1)
        .map(str::to_owned)
        .collect();
    let mut facts = Vec::new();
    if let Some((_, query)) = ex.path.split_once('?') {
        let query = query.split('#').next().unwrap_or("");
        if let Ok(pairs) = serde_urlencoded::from_str::<Vec<(String, String)>>(query) {
            for (k, v) in pairs.iter().take(cfg.max_json_nodes) {
                if !name_ok(k) {
                    continue;
                }
                facts.push(Fact::new(super::QUERY, "", k, scalar_type(v)));
                if API_KEY_PARAMS.contains(&k.to_ascii_lowercase().as_str()) {
                    facts.push(Fact::new(super::AUTH, "", &format!("query:{k}"), ""));
                }
                for t in sensitive::scan(v) {
                    facts.push(Fact::new(
                        super::SENSITIVE,
                        "request",
                        &format!("query:{k}"),
                        t,
                    ));
                }
            }
        }
    }
    auth(&ex.request_headers, &mut facts);
    body(
        cfg,
        &ex.request_headers,
        &ex.request_body,
        super::REQUEST_TYPE,
        super::REQUEST_BODY,
        super::REQUEST_FIELD,
        "",
        "request",
        &mut facts,
    );
    if let Some(r) = &ex.response {
        let status = r.status.to_string();
        facts.push(Fact::new(super::STATUS, "", &status, ""));
        body(
            cfg,
            &r.headers,
            &r.body,
            super::RESPONSE_TYPE,
            super::RESPONSE_BODY,
            super::RESPONSE_FIELD,
            &status,
            "response",
            &mut facts,
        );
    }
    facts.sort();
    facts.dedup();
    Some(Observation {
        host,
        method,
        segments,
        ts_ns: i64::try_from(ex.ts_ns).unwrap_or(i64::MAX),
        facts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pairing::ResponsePart;

    fn h(pairs: &[(&str, &str)]) -> Headers {
        pairs
            .iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    fn names(facts: &[Fact], kind: &str) -> Vec<String> {
        facts
            .iter()
            .filter(|f| f.kind == kind)
            .map(|f| {
                let mut s = String::new();
                if !f.scope.is_empty() {
                    s.push_str(&f.scope);
                    s.push(' ');
                }
                s.push_str(&f.name);
                if !f.ty.is_empty() {
                    s.push(':');
                    s.push_str(&f.ty);
                }
                s
            })
            .collect()
    }

    #[test]
    fn fields_types_auth_and_sensitive_data_never_values() {
        let ex = Exchange {
            method: "post".into(),
            authority: Some("API.Example.com:8443".into()),
            path: "/v1/orders/42?expand=true&limit=10&q=ada%40example.com&api_key=k".into(),
            request_headers: h(&[
                ("content-type", "application/json; charset=utf-8"),
                ("authorization", "Bearer redacted:0123456789abcdef"),
                ("x-api-key", "redacted:0123456789abcdef"),
                ("cookie", "theme=dark; session_id=redacted:0123456789abcdef"),
            ]),
            request_body: br#"{"customer":{"email":"ada@example.com","phones":["+14155552671"]},
                "items":[{"sku":"A-1","qty":2},{"sku":"B-2","qty":1.5,"note":null}],
                "card":"4111 1111 1111 1111","gift":false}"#
                .to_vec(),
            response: Some(ResponsePart {
                status: 201,
                headers: h(&[("content-type", "application/json")]),
                body: br#"{"id":42,"iban":"DE89370400440532013000"}"#.to_vec(),
            }),
            ts_ns: 5,
            ..Exchange::default()
        };
        let o = observe(&ex, &Config::default()).unwrap();
        assert_eq!(o.host, "api.example.com");
        assert_eq!(o.method, "POST");
        assert_eq!(o.segments, ["v1", "orders", "42"]);
        assert_eq!(
            names(&o.facts, super::super::QUERY),
            [
                "api_key:string",
                "expand:boolean",
                "limit:integer",
                "q:string"
            ]
        );
        assert_eq!(
            names(&o.facts, super::super::REQUEST_FIELD),
            [
                "card:string",
                "customer:object",
                "customer.email:string",
                "customer.phones:array",
                "customer.phones[]:string",
                "gift:boolean",
                "items:array",
                "items[]:object",
                "items[].note:null",
                "items[].qty:integer",
                "items[].qty:number",
                "items[].sku:string",
            ]
        );
        assert_eq!(
            names(&o.facts, super::super::RESPONSE_FIELD),
            ["201 iban:string", "201 id:integer"]
        );
        assert_eq!(
            names(&o.facts, super::super::AUTH),
            [
                "bearer",
                "cookie:session_id",
                "header:x-api-key",
                "query:api_key"
            ]
        );
        assert_eq!(
            names(&o.facts, super::super::SENSITIVE),
            [
                "request card:card",
                "request customer.email:email",
                "request customer.phones[]:phone",
                "request query:q:email",
                "response iban:iban",
            ]
        );
        assert_eq!(names(&o.facts, super::super::STATUS), ["201"]);
        assert_eq!(
            names(&o.facts, super::super::REQUEST_TYPE),
            ["application/json"]
        );
        assert_eq!(
            names(&o.facts, super::super::RESPONSE_BODY),
            ["201 application/json"]
        );
        // No value made it into a fact.
        let all = format!("{:?}", o.facts);
        for value in ["ada@", "4111", "DE89", "redacted:", "dark", "A-1", "+1415"] {
            assert!(!all.contains(value), "{value} in {all}");
        }
    }

    #[test]
    fn forms_and_text_bodies() {
        let ex = Exchange {
            method: "POST".into(),
            authority: Some("shop".into()),
            path: "/login".into(),
            request_headers: h(&[("content-type", "application/x-www-form-urlencoded")]),
            request_body: b"user=ada%40example.com&remember=1".to_vec(),
            response: Some(ResponsePart {
                status: 200,
                headers: h(&[("content-type", "text/plain")]),
                body: b"key AKIAIOSFODNN7EXAMPLE issued".to_vec(),
            }),
            ..Exchange::default()
        };
        let o = observe(&ex, &Config::default()).unwrap();
        assert_eq!(
            names(&o.facts, super::super::REQUEST_FIELD),
            ["remember:integer", "user:string"]
        );
        assert_eq!(
            names(&o.facts, super::super::SENSITIVE),
            ["request user:email", "response (body):cloud_key"]
        );
        assert!(observe(&Exchange::default(), &Config::default()).is_none());
    }
}
