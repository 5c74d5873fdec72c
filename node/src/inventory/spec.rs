//! The operator's OpenAPI 3.x specs (`--spec FILE` or `--spec HOST=FILE`, JSON or YAML), and
//! the inventory against them:
//!
//! - a **shadow** endpoint was seen but is in no spec of its host;
//! - a **zombie** endpoint is in the spec but was not seen since a given time (or never).
//!
//! A spec's host is the one given (`HOST=FILE`), else the host of each absolute URL in its
//! `servers` (server variables take their defaults). The path of that URL (`/v1`) is put in
//! front of every path of the spec. A spec path matches a template when they have as many
//! segments and each spec segment is a variable (it has a `{`) or equals the template's
//! segment; the methods are equal (in any case). A template's variable matches only a spec
//! variable.

use serde_json::Value;

use super::Endpoint;
use crate::store::host_key;

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// One spec, for one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub host: String,
    /// The file it came from (for the pages).
    pub file: String,
    /// Method (upper case) and path (with the server's base path), sorted.
    pub endpoints: Vec<(String, String)>,
}

/// A spec's text as a JSON value: JSON when it parses as JSON, else YAML.
fn parse_text(text: &str) -> Result<Value, String> {
    match serde_json::from_str::<Value>(text) {
        Ok(v) => Ok(v),
        Err(json) => serde_norway::from_str::<Value>(text)
            .map_err(|yaml| format!("neither JSON ({json}) nor YAML ({yaml})")),
    }
}

/// `{scheme}://api.example.com:{port}/v1` with the variables' defaults.
fn expand(url: &str, vars: Option<&Value>) -> String {
    let mut out = url.to_owned();
    if let Some(Value::Object(vars)) = vars {
        for (name, v) in vars {
            if let Some(d) = v.get("default").and_then(Value::as_str) {
                out = out.replace(&format!("{{{name}}}"), d);
            }
        }
    }
    out
}

/// The host (if the URL is absolute) and base path of a server URL.
fn split_url(url: &str) -> (Option<String>, String) {
    let (authority, path) = match url.split_once("://") {
        Some((_, rest)) => match rest.find('/') {
            Some(at) => (
                Some(rest.get(..at).unwrap_or("")),
                rest.get(at..).unwrap_or(""),
            ),
            None => (Some(rest), ""),
        },
        None => (None, url),
    };
    let host = authority
        .map(|a| a.rsplit('@').next().unwrap_or(a))
        .map(host_key)
        .filter(|h| !h.is_empty());
    (host, path.trim_end_matches('/').to_owned())
}

/// Reads one `--spec` argument: `FILE` or `HOST=FILE`. One [`Spec`] per host it names.
pub fn load(arg: &str) -> Result<Vec<Spec>, String> {
    let (host, file) = match arg.split_once('=') {
        Some((h, f)) if !h.is_empty() && !h.contains('/') => (Some(host_key(h)), f),
        _ => (None, arg),
    };
    let text = std::fs::read_to_string(file).map_err(|e| format!("--spec {file}: {e}"))?;
    parse(&text, host.as_deref(), file).map_err(|e| format!("--spec {file}: {e}"))
}

/// A spec from its text; `host` overrides its servers'.
pub fn parse(text: &str, host: Option<&str>, file: &str) -> Result<Vec<Spec>, String> {
    let doc = parse_text(text)?;
    let version = doc.get("openapi").and_then(Value::as_str).unwrap_or("");
    if !version.starts_with("3.") {
        return Err(format!(
            "not an OpenAPI 3.x document (openapi: {version:?})"
        ));
    }
    let servers: Vec<(Option<String>, String)> = doc
        .get("servers")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|s| {
                    let url = s.get("url")?.as_str()?;
                    Some(split_url(&expand(url, s.get("variables"))))
                })
                .collect()
        })
        .unwrap_or_default();
    let targets: Vec<(String, String)> = match host {
        Some(h) => {
            let base = servers.first().map(|(_, b)| b.clone()).unwrap_or_default();
            vec![(h.to_owned(), base)]
        }
        None => servers
            .iter()
            .filter_map(|(h, b)| Some((h.clone()?, b.clone())))
            .collect(),
    };
    if targets.is_empty() {
        return Err("no host: give it as HOST=FILE, or an absolute URL in servers".into());
    }
    let mut paths: Vec<(String, String)> = Vec::new();
    if let Some(Value::Object(p)) = doc.get("paths") {
        for (path, item) in p {
            let Value::Object(item) = item else { continue };
            for m in METHODS {
                if item.contains_key(*m) {
                    paths.push((m.to_ascii_uppercase(), path.clone()));
                }
            }
        }
    }
    let mut out: Vec<Spec> = Vec::new();
    for (host, base) in targets {
        let mut endpoints: Vec<(String, String)> = paths
            .iter()
            .map(|(m, p)| (m.clone(), format!("{base}{p}")))
            .collect();
        endpoints.sort();
        endpoints.dedup();
        match out.iter_mut().find(|s| s.host == host) {
            Some(s) => {
                s.endpoints.extend(endpoints);
                s.endpoints.sort();
                s.endpoints.dedup();
            }
            None => out.push(Spec {
                host,
                file: file.to_owned(),
                endpoints,
            }),
        }
    }
    Ok(out)
}

/// Whether the spec path `spec` covers the template `template`.
pub fn covers(spec: &str, template: &str) -> bool {
    let s = super::template::segments(spec);
    let t = super::template::segments(template);
    s.len() == t.len()
        && s.iter().zip(&t).all(|(a, b)| {
            if a.contains('{') {
                true
            } else {
                !b.starts_with('{') && a == b
            }
        })
}

/// Where an endpoint stands against its host's specs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// No spec for its host.
    Unspecified,
    Documented,
    Shadow,
}

impl Standing {
    pub fn as_str(self) -> Option<&'static str> {
        match self {
            Standing::Unspecified => None,
            Standing::Documented => Some("documented"),
            Standing::Shadow => Some("shadow"),
        }
    }
}

/// A spec endpoint not seen since the given time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zombie {
    pub host: String,
    pub method: String,
    pub path: String,
    /// The last time an endpoint it covers was seen; `None`: never.
    pub last_ns: Option<i64>,
}

/// How `e` stands against `specs`.
pub fn standing(specs: &[Spec], e: &Endpoint) -> Standing {
    let mut any = false;
    for s in specs.iter().filter(|s| s.host == e.host) {
        any = true;
        if s.endpoints
            .iter()
            .any(|(m, p)| m.eq_ignore_ascii_case(&e.method) && covers(p, &e.template))
        {
            return Standing::Documented;
        }
    }
    if any {
        Standing::Shadow
    } else {
        Standing::Unspecified
    }
}

/// The spec endpoints (of the hosts `host` selects, all when `None`) that no endpoint of
/// `seen` covered at or after `since_ns`.
pub fn zombies(
    specs: &[Spec],
    seen: &[Endpoint],
    since_ns: i64,
    host: Option<&str>,
) -> Vec<Zombie> {
    let mut out = Vec::new();
    for s in specs
        .iter()
        .filter(|s| host.is_none_or(|h| host_key(h) == s.host))
    {
        for (m, p) in &s.endpoints {
            let last = seen
                .iter()
                .filter(|e| {
                    e.host == s.host && e.method.eq_ignore_ascii_case(m) && covers(p, &e.template)
                })
                .map(|e| e.last_ns)
                .max();
            if last.is_none_or(|t| t < since_ns) {
                out.push(Zombie {
                    host: s.host.clone(),
                    method: m.clone(),
                    path: p.clone(),
                    last_ns: last,
                });
            }
        }
    }
    out.sort_by(|a, b| (&a.host, &a.path, &a.method).cmp(&(&b.host, &b.path, &b.method)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = "openapi: 3.0.3
info: {title: shop, version: '1'}
servers:
  - url: '{scheme}://Shop.Example.com:8443/api'
    variables: {scheme: {default: https}}
paths:
  /users/{id}:
    get: {responses: {'200': {description: ok}}}
    delete: {responses: {'204': {description: ok}}}
  /users/me:
    get: {responses: {'200': {description: ok}}}
  /legacy/export:
    post: {responses: {'200': {description: ok}}}
";

    fn ep(method: &str, template: &str, last: i64) -> Endpoint {
        Endpoint {
            host: "shop.example.com".into(),
            method: method.into(),
            template: template.into(),
            last_ns: last,
            ..Endpoint::default()
        }
    }

    #[test]
    fn yaml_with_servers_and_json_with_a_host() {
        let specs = parse(YAML, None, "shop.yaml").unwrap();
        assert_eq!(specs.len(), 1);
        assert_eq!(specs[0].host, "shop.example.com");
        assert_eq!(
            specs[0].endpoints,
            [
                ("DELETE".to_owned(), "/api/users/{id}".to_owned()),
                ("GET".into(), "/api/users/me".into()),
                ("GET".into(), "/api/users/{id}".into()),
                ("POST".into(), "/api/legacy/export".into()),
            ]
        );
        let json =
            r#"{"openapi":"3.1.0","info":{"title":"t","version":"1"},"paths":{"/a":{"get":{}}}}"#;
        let specs = parse(json, Some("other"), "a.json").unwrap();
        assert_eq!(specs[0].endpoints, [("GET".to_owned(), "/a".to_owned())]);
        assert!(parse(json, None, "a.json").unwrap_err().contains("no host"));
        assert!(parse("swagger: '2.0'", Some("h"), "f")
            .unwrap_err()
            .contains("OpenAPI 3"));
    }

    #[test]
    fn shadow_and_zombie() {
        let specs = parse(YAML, None, "shop.yaml").unwrap();
        assert!(covers("/api/users/{id}", "/api/users/{user_id}"));
        assert!(covers("/api/users/{id}", "/api/users/42"));
        assert!(!covers("/api/users/me", "/api/users/{user_id}"));
        assert!(!covers("/api/users/{id}", "/api/users/{user_id}/orders"));
        let seen = [
            ep("GET", "/api/users/{user_id}", 100),
            ep("GET", "/api/users/me", 5),
            ep("GET", "/api/internal/debug", 100),
        ];
        let standings: Vec<Standing> = seen.iter().map(|e| standing(&specs, e)).collect();
        assert_eq!(
            standings,
            [Standing::Documented, Standing::Documented, Standing::Shadow]
        );
        let mut other = ep("GET", "/x", 1);
        other.host = "elsewhere".into();
        assert_eq!(standing(&specs, &other), Standing::Unspecified);
        let z: Vec<(String, String, Option<i64>)> = zombies(&specs, &seen, 50, None)
            .into_iter()
            .map(|z| (z.method, z.path, z.last_ns))
            .collect();
        assert_eq!(
            z,
            [
                ("POST".into(), "/api/legacy/export".into(), None),
                ("GET".into(), "/api/users/me".into(), Some(5)),
                ("DELETE".into(), "/api/users/{id}".into(), None),
            ]
        );
        assert_eq!(zombies(&specs, &seen, 50, Some("nope")), []);
    }
}
