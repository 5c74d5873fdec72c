//! The filters of the console and the API, from a query string: one parser for both, so a
//! console URL and an API URL with the same parameters select the same attacks.
//!
//! An unknown or repeated parameter, or a value that does not parse, is an error naming it
//! (the API answers 400 with it). An empty value is no filter: an HTML form sends its empty
//! fields.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use crate::analysis::classes::CLASSES;
use crate::store::AttackFilter;

/// Attacks per page, unless `limit` says otherwise.
pub const DEFAULT_LIMIT: u32 = 50;
/// The most a page (or `limit`) can hold.
pub const MAX_LIMIT: u32 = 500;
/// Repeats of one class from one source within this many seconds are one row of the console.
pub const DEFAULT_WINDOW_SECS: u32 = 300;

/// The parameters as sent; every one optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    since: Option<String>,
    until: Option<String>,
    range: Option<String>,
    host: Option<String>,
    path: Option<String>,
    source: Option<String>,
    class: Option<String>,
    severity: Option<String>,
    status: Option<String>,
    rule: Option<String>,
    limit: Option<String>,
    offset: Option<String>,
    page: Option<String>,
    view: Option<String>,
}

/// How the console lists what the filter selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum View {
    /// Repeats grouped ([`DEFAULT_WINDOW_SECS`]).
    #[default]
    Grouped,
    /// Every attack on its own row.
    All,
}

/// The time ranges the console offers (`range=`), as seconds back from now.
pub const RANGES: [(&str, &str, u64); 5] = [
    ("1h", "last hour", 3600),
    ("24h", "last 24 hours", 86_400),
    ("7d", "last 7 days", 7 * 86_400),
    ("30d", "last 30 days", 30 * 86_400),
    ("all", "all time", 0),
];

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    pub filter: AttackFilter,
    /// `range=` as given (the console keeps it in its links).
    pub range: Option<String>,
    pub limit: u32,
    pub offset: u64,
    pub view: View,
}

fn nonempty(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

/// Unix nanoseconds of an RFC 3339 time (`2026-12-04T21:00:00Z`, `…+01:00`, fractions of a
/// second), or of whole Unix seconds.
pub fn parse_time(v: &str) -> Option<i64> {
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return v.parse::<i64>().ok()?.checked_mul(1_000_000_000);
    }
    let (local, offset_secs) = split_offset(v)?;
    let t = humantime::parse_rfc3339_weak(local).ok()?;
    let ns = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).ok()?,
        Err(before) => i64::try_from(before.duration().as_nanos())
            .ok()?
            .checked_neg()?,
    };
    ns.checked_sub(offset_secs.checked_mul(1_000_000_000)?)
}

/// `2026-12-04T21:00:00+01:00` → (`2026-12-04T21:00:00`, 3600); a `Z` is an offset of 0.
fn split_offset(v: &str) -> Option<(&str, i64)> {
    if let Some(local) = v.strip_suffix('Z').or_else(|| v.strip_suffix('z')) {
        return Some((local, 0));
    }
    let at = v.len().checked_sub(6)?;
    let (local, offset) = (v.get(..at)?, v.get(at..)?.as_bytes());
    match offset {
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2]
            if [h1, h2, m1, m2].iter().all(|b| b.is_ascii_digit()) =>
        {
            let digit = |b: &u8| i64::from(b - b'0');
            let secs = (digit(h1) * 10 + digit(h2)) * 3600 + (digit(m1) * 10 + digit(m2)) * 60;
            Some((local, if *sign == b'-' { -secs } else { secs }))
        }
        _ => Some((v, 0)),
    }
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

impl Query {
    pub fn parse(query: &str) -> Result<Query, String> {
        let raw: Raw = serde_urlencoded::from_str(query).map_err(|e| e.to_string())?;
        let mut q = Query {
            limit: DEFAULT_LIMIT,
            ..Query::default()
        };
        let time = |name: &str, v: Option<String>| -> Result<Option<i64>, String> {
            nonempty(v)
                .map(|v| {
                    parse_time(&v).ok_or_else(|| {
                        format!("{name}: an RFC 3339 time or Unix seconds, not {v:?}")
                    })
                })
                .transpose()
        };
        q.filter.since_ns = time("since", raw.since)?;
        q.filter.until_ns = time("until", raw.until)?;
        if let Some(range) = nonempty(raw.range) {
            let Some((_, _, secs)) = RANGES.iter().find(|(name, _, _)| *name == range) else {
                return Err(format!(
                    "range: one of 1h, 24h, 7d, 30d, all, not {range:?}"
                ));
            };
            if *secs > 0 && q.filter.since_ns.is_none() {
                let back = Duration::from_secs(*secs).as_nanos();
                q.filter.since_ns = Some(now_ns().saturating_sub(i64::try_from(back).unwrap_or(0)));
            }
            q.range = Some(range);
        }
        q.filter.host = nonempty(raw.host);
        q.filter.path_prefix = nonempty(raw.path);
        q.filter.source = nonempty(raw.source);
        if let Some(class) = nonempty(raw.class) {
            if !CLASSES.iter().any(|c| c.name == class) {
                return Err(format!("class: not a class: {class:?}"));
            }
            q.filter.class = Some(class);
        }
        q.filter.severity = nonempty(raw.severity).map(|s| s.to_ascii_uppercase());
        q.filter.status = nonempty(raw.status)
            .map(|v| match v.parse::<u16>() {
                Ok(n) if (100..=999).contains(&n) => Ok(n),
                _ => Err(format!("status: an HTTP status, not {v:?}")),
            })
            .transpose()?;
        q.filter.rule_id = nonempty(raw.rule)
            .map(|v| {
                v.parse::<u32>()
                    .map_err(|_| format!("rule: a rule id, not {v:?}"))
            })
            .transpose()?;
        if let Some(v) = nonempty(raw.limit) {
            q.limit = match v.parse::<u32>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => return Err(format!("limit: 1 to {MAX_LIMIT}, not {v:?}")),
            };
        }
        let offset = nonempty(raw.offset)
            .map(|v| {
                v.parse::<u64>()
                    .ok()
                    .filter(|n| i64::try_from(*n).is_ok())
                    .ok_or_else(|| format!("offset: a whole number, not {v:?}"))
            })
            .transpose()?;
        let page = nonempty(raw.page)
            .map(|v| match v.parse::<u64>() {
                Ok(n) if (1..=1_000_000).contains(&n) => Ok(n),
                _ => Err(format!("page: 1 to 1000000, not {v:?}")),
            })
            .transpose()?;
        q.offset = match (offset, page) {
            (Some(_), Some(_)) => return Err("offset and page: give one of them".into()),
            (Some(offset), None) => offset,
            (None, Some(page)) => (page - 1) * u64::from(q.limit),
            (None, None) => 0,
        };
        q.view = match nonempty(raw.view).as_deref() {
            None | Some("grouped") => View::Grouped,
            Some("all") => View::All,
            Some(other) => return Err(format!("view: grouped or all, not {other:?}")),
        };
        Ok(q)
    }

    /// The page number the offset falls on, from 1.
    pub fn page(&self) -> u64 {
        self.offset / u64::from(self.limit.max(1)) + 1
    }

    /// The query string of this query on another page (or view), for the console's links;
    /// every filter kept, `range` as given rather than its resolved time.
    pub fn link(&self, page: u64, view: View) -> String {
        let f = &self.filter;
        let mut pairs: Vec<(&str, String)> = Vec::new();
        match &self.range {
            Some(range) => pairs.push(("range", range.clone())),
            None => {
                if let Some(ns) = f.since_ns {
                    pairs.push((
                        "since",
                        crate::report::rfc3339(u64::try_from(ns).unwrap_or(0)),
                    ));
                }
            }
        }
        if let Some(ns) = f.until_ns {
            pairs.push((
                "until",
                crate::report::rfc3339(u64::try_from(ns).unwrap_or(0)),
            ));
        }
        for (name, value) in [
            ("host", &f.host),
            ("path", &f.path_prefix),
            ("source", &f.source),
            ("class", &f.class),
            ("severity", &f.severity),
        ] {
            if let Some(v) = value {
                pairs.push((name, v.clone()));
            }
        }
        if let Some(s) = f.status {
            pairs.push(("status", s.to_string()));
        }
        if let Some(r) = f.rule_id {
            pairs.push(("rule", r.to_string()));
        }
        if self.limit != DEFAULT_LIMIT {
            pairs.push(("limit", self.limit.to_string()));
        }
        if page > 1 {
            pairs.push(("page", page.to_string()));
        }
        if view == View::All {
            pairs.push(("view", "all".into()));
        }
        serde_urlencoded::to_string(&pairs).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_filter() {
        let q = Query::parse(
            "since=2026-12-04T21:00:00Z&until=1764882000&host=api.example.com&path=%2Fv1%2F\
             &source=10.0.0.1&class=sqli&severity=critical&status=403&rule=942100&limit=10&page=3",
        )
        .unwrap();
        let f = &q.filter;
        assert_eq!(f.since_ns, Some(1_796_418_000_000_000_000));
        assert_eq!(f.until_ns, Some(1_764_882_000_000_000_000));
        assert_eq!(f.host.as_deref(), Some("api.example.com"));
        assert_eq!(f.path_prefix.as_deref(), Some("/v1/"));
        assert_eq!(f.source.as_deref(), Some("10.0.0.1"));
        assert_eq!(f.class.as_deref(), Some("sqli"));
        assert_eq!(f.severity.as_deref(), Some("CRITICAL"));
        assert_eq!((f.status, f.rule_id), (Some(403), Some(942_100)));
        assert_eq!((q.limit, q.offset, q.page()), (10, 20, 3));
        // The links keep every filter.
        let again = Query::parse(&q.link(3, View::Grouped)).unwrap();
        assert_eq!(again, q);
    }

    #[test]
    fn empty_fields_are_no_filter_and_bad_ones_are_named() {
        let q = Query::parse("host=&class=&status=&range=all").unwrap();
        assert_eq!(q.filter, AttackFilter::default());
        assert_eq!(
            (q.limit, q.offset, q.view),
            (DEFAULT_LIMIT, 0, View::Grouped)
        );
        for (query, says) in [
            ("bogus=1", "bogus"),
            ("status=abc", "status"),
            ("status=42", "status"),
            ("class=evil", "class"),
            ("limit=0", "limit"),
            ("limit=501", "limit"),
            ("since=yesterday", "since"),
            ("range=2w", "range"),
            ("view=cards", "view"),
            ("page=0", "page"),
            ("offset=1&page=2", "offset and page"),
            ("rule=-1", "rule"),
        ] {
            let e = Query::parse(query).unwrap_err();
            assert!(e.contains(says), "{query}: {e}");
        }
    }

    #[test]
    fn times_with_offsets() {
        assert_eq!(parse_time("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(parse_time("1970-01-01T00:00:00.5Z"), Some(500_000_000));
        assert_eq!(
            parse_time("1970-01-01T00:00:00-01:00"),
            Some(3_600_000_000_000)
        );
        // Before 1970 is no time an attack was seen at.
        assert_eq!(parse_time("1969-12-31T23:00:00Z"), None);
        assert_eq!(parse_time("9999999999999999999"), None);
        assert_eq!(parse_time(""), None);
    }

    #[test]
    fn a_range_sets_since() {
        let q = Query::parse("range=1h").unwrap();
        let since = q.filter.since_ns.unwrap();
        let back = now_ns() - since;
        assert!(
            (3_600_000_000_000..3_700_000_000_000).contains(&back),
            "{back}"
        );
        assert_eq!(q.link(1, View::All), "range=1h&view=all");
    }
}
