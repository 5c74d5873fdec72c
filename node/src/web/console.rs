//! The console: `/attacks`, the attacks the filters select (repeats grouped, counts per class
//! with a chart, newest first, a page at a time), and `/attacks/{id}`, one attack with its
//! exchange as analysed and what matched marked in it. Server-rendered HTML, no script.

use std::fmt::Write as _;

use super::query::{Query, View, DEFAULT_WINDOW_SECS, RANGES};
use super::{page, Web, HTML};
use crate::analysis::classes::{self, CLASSES};
use crate::intake::server::Page;
use crate::report::{esc, rfc3339};
use crate::store::{Attack, ClassCount, StoredHeader, StoredRule};

const STYLE: &str = r#"
body { font: 14px system-ui, sans-serif; margin: 0; color: #1d232a; background: #f6f7f9 }
header { background: #1d232a; color: #fff; padding: 10px 24px; display: flex; gap: 24px; align-items: baseline }
header a { color: #cfd8e3; text-decoration: none } header b { font-size: 16px }
main { padding: 16px 24px }
form.filters { display: flex; flex-wrap: wrap; gap: 8px 12px; align-items: end; background: #fff; padding: 12px; border: 1px solid #dde1e6; border-radius: 6px }
form.filters label { display: flex; flex-direction: column; font-size: 12px; color: #555 }
form.filters input, form.filters select { font: inherit; padding: 3px 6px; min-width: 7em }
.panel { background: #fff; border: 1px solid #dde1e6; border-radius: 6px; padding: 12px; margin-top: 14px }
table { border-collapse: collapse; width: 100% }
th, td { border-bottom: 1px solid #e6e8eb; padding: 6px 8px; text-align: left; vertical-align: top }
th { background: #f1f3f5; font-weight: 600 }
td.path, td.mono, pre { font-family: ui-monospace, monospace; word-break: break-all }
td.time, td.ip { white-space: nowrap }
pre { white-space: pre-wrap; margin: 0; background: #f8f9fa; padding: 8px; border-radius: 4px }
.sev { font-size: 12px; font-weight: 600 } .sev-CRITICAL { color: #b00020 } .sev-ERROR { color: #c05600 } .sev-WARNING { color: #8a6d00 }
.count { background: #1d232a; color: #fff; border-radius: 10px; padding: 0 7px; font-size: 12px }
mark { background: #ffe066; padding: 0 1px }
.pager { margin-top: 10px; display: flex; gap: 16px; align-items: center }
.muted { color: #667 }
.badge { font-size: 12px; border-radius: 8px; padding: 0 6px; background: #e6e8eb }
.badge.sensitive { background: #ffe3e3; color: #a00 } .badge.spec-shadow { background: #fff3bf } .badge.spec-documented { background: #d3f9d8 }
"#;

fn layout(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8><title>{title} · oob-mirror node</title>\
         <style>{STYLE}</style></head><body>\
         <header><b>oob-mirror node</b><a href=\"/attacks\">Attacks</a><a href=\"/apis\">APIs</a>\
         <a href=\"/api/v1/openapi.json\">API</a><a href=\"/metrics\">Metrics</a></header>\
         <main>{body}</main></body></html>\n",
        title = esc(title)
    )
}

fn ts(ns: i64) -> String {
    rfc3339(u64::try_from(ns).unwrap_or(0))
}

pub(super) fn html_page(status: u16, title: &str, body: &str) -> Page {
    page(status, HTML, layout(title, body).into_bytes())
}

fn no_store() -> Page {
    html_page(
        503,
        "Attacks",
        "<h1>Attacks</h1><p>This node runs without a store: its attacks are in its JSON lines only.</p>",
    )
}

fn unavailable() -> Page {
    html_page(
        503,
        "Attacks",
        "<h1>Attacks</h1><p>The store did not answer; the node's log says why.</p>",
    )
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

fn filters_form(q: &Query) -> String {
    let f = &q.filter;
    let text = |name: &str, label: &str, value: Option<&str>| {
        format!(
            "<label>{label}<input name={name} value=\"{}\"></label>",
            esc(value.unwrap_or(""))
        )
    };
    let mut classes: Vec<(&str, &str)> = vec![("", "any")];
    classes.extend(CLASSES.iter().map(|c| (c.name, c.label)));
    let ranges: Vec<(&str, &str)> = RANGES.iter().map(|(n, l, _)| (*n, *l)).collect();
    let severities = [
        ("", "any"),
        ("CRITICAL", "CRITICAL"),
        ("ERROR", "ERROR"),
        ("WARNING", "WARNING"),
        ("NOTICE", "NOTICE"),
    ];
    let view = if q.view == View::All {
        "<input type=hidden name=view value=all>"
    } else {
        ""
    };
    let status = f.status.map(|s| s.to_string());
    let rule = f.rule_id.map(|r| r.to_string());
    format!(
        "<form class=filters method=get action=\"/attacks\" id=filters>\
         <label>Time{range}</label>{host}{path}{source}\
         <label>Class{class}</label><label>Severity{severity}</label>{status}{rule}{view}\
         <button type=submit>Filter</button> <a href=\"/attacks\">Clear</a></form>",
        range = select("range", q.range.as_deref().or(Some("all")), &ranges),
        host = text("host", "Host", f.host.as_deref()),
        path = text("path", "Path prefix", f.path_prefix.as_deref()),
        source = text("source", "Source IP", f.source.as_deref()),
        class = select("class", f.class.as_deref(), &classes),
        severity = select("severity", f.severity.as_deref(), &severities),
        status = text("status", "Status", status.as_deref()),
        rule = text("rule", "Rule id", rule.as_deref()),
    )
}

/// Counts per class as horizontal bars, each a link narrowing the list to its class.
fn chart(q: &Query, counts: &[ClassCount]) -> String {
    if counts.is_empty() {
        return String::new();
    }
    let max = counts.iter().map(|c| c.count).max().unwrap_or(1).max(1);
    let (row, label_w, bar_w) = (22u64, 190u64, 420u64);
    let height = row * counts.len() as u64 + 4;
    let mut svg = format!(
        "<svg id=chart role=img aria-label=\"attacks per class\" width=\"{}\" height=\"{height}\" \
         xmlns=\"http://www.w3.org/2000/svg\" font-size=\"12\">",
        label_w + bar_w + 70
    );
    for (i, c) in counts.iter().enumerate() {
        let y = row * i as u64 + 2;
        let w = (c.count * bar_w / max).max(2);
        let mut narrowed = q.clone();
        narrowed.filter.class = Some(c.class.clone());
        let _ = write!(
            svg,
            "<a href=\"/attacks?{href}\"><text x=\"0\" y=\"{ty}\">{label}</text>\
             <rect class=\"bar\" data-class=\"{name}\" x=\"{label_w}\" y=\"{y}\" width=\"{w}\" height=\"16\" fill=\"#3b6fd8\"/>\
             <text x=\"{tx}\" y=\"{ty}\">{count}</text></a>",
            href = esc(&narrowed.link(1, q.view)),
            ty = y + 12,
            label = esc(classes::label(&c.class)),
            name = esc(&c.class),
            tx = label_w + w + 6,
            count = c.count,
        );
    }
    svg.push_str("</svg>");
    svg
}

fn class_cell(a: &Attack) -> String {
    format!(
        "<span data-class=\"{}\">{}</span>",
        esc(&a.class),
        esc(classes::label(&a.class))
    )
}

fn rule_ids(rules: &[StoredRule]) -> String {
    let ids: Vec<String> = rules.iter().map(|r| r.id.to_string()).collect();
    esc(&ids.join(" "))
}

fn row(a: &Attack, count: Option<u64>, first_ns: Option<i64>) -> String {
    let when = match first_ns {
        Some(first) if first != a.ts_ns => format!(
            "{}<br><span class=muted>since {}</span>",
            ts(a.ts_ns),
            ts(first)
        ),
        _ => ts(a.ts_ns),
    };
    let count = count.map_or_else(String::new, |n| format!("<span class=count>{n}×</span>"));
    format!(
        "<tr data-id=\"{id}\"><td class=time>{when}</td><td>{count}</td><td>{class}</td>\
         <td><span class=\"sev sev-{sev}\">{sev}</span></td><td class=\"mono ip\">{source}</td>\
         <td>{method}</td><td>{host}</td><td class=path><a href=\"/attacks/{id}\">{path}</a></td>\
         <td>{status}</td><td class=mono>{rules}</td></tr>\n",
        id = esc(&a.id),
        class = class_cell(a),
        sev = esc(&a.severity),
        source = esc(a.source_ip.as_deref().unwrap_or("")),
        method = esc(&a.method),
        host = esc(a.authority.as_deref().unwrap_or("")),
        path = esc(&a.path),
        status = a.status.map_or_else(|| "—".to_owned(), |s| s.to_string()),
        rules = rule_ids(&a.rules),
    )
}

pub async fn attacks(web: &Web, query: &str) -> Page {
    let q = match Query::parse(query) {
        Ok(q) => q,
        Err(e) => {
            return html_page(
                400,
                "Attacks",
                &format!("<h1>Attacks</h1><p>Not a filter: {}</p><p><a href=\"/attacks\">All attacks</a></p>", esc(&e)),
            )
        }
    };
    let Some(reader) = &web.reader else {
        return no_store();
    };
    let Ok(stats) = reader.stats(q.filter.clone()).await else {
        return unavailable();
    };
    let (rows, total) = match q.view {
        View::Grouped => match reader
            .groups(q.filter.clone(), DEFAULT_WINDOW_SECS, q.limit, q.offset)
            .await
        {
            Ok(groups) => (
                groups
                    .items
                    .iter()
                    .map(|g| row(&g.latest, Some(g.count), Some(g.first_ns)))
                    .collect::<String>(),
                groups.total,
            ),
            Err(_) => return unavailable(),
        },
        View::All => match reader.list(q.filter.clone(), q.limit, q.offset).await {
            Ok(found) => (
                found.items.iter().map(|a| row(a, None, None)).collect(),
                found.total,
            ),
            Err(_) => return unavailable(),
        },
    };
    let snapshot = web.detector.snapshot();
    let mut body = format!(
        "<h1>Attacks</h1><p class=muted>{analysed} exchanges analysed since the node started, \
         {with} with attacks. {total} attacks in the store match.</p>{form}",
        analysed = snapshot.exchanges_analysed,
        with = snapshot.exchanges_with_attacks,
        total = stats.total,
        form = filters_form(&q),
    );
    let _ = write!(
        body,
        "<div class=panel><b>By class</b><br>{}</div>",
        chart(&q, &stats.by_class)
    );
    let (this_view, other_view, other_label) = match q.view {
        View::Grouped => (
            format!(
                "Repeats of one class from one source within {} minutes are one row.",
                DEFAULT_WINDOW_SECS / 60
            ),
            View::All,
            "Show every attack",
        ),
        View::All => (
            "Every attack on its own row.".to_owned(),
            View::Grouped,
            "Group repeats",
        ),
    };
    let _ = write!(
        body,
        "<div class=panel><p class=muted>{this_view} <a id=toggle-view href=\"/attacks?{}\">{other_label}</a></p>\
         <table id=attacks><thead><tr><th>Time</th><th>Count</th><th>Class</th><th>Severity</th>\
         <th>Source</th><th>Method</th><th>Host</th><th>Path</th><th>Status</th><th>Rules</th></tr></thead><tbody>\n{}",
        esc(&q.link(1, other_view)),
        if rows.is_empty() {
            "<tr><td colspan=10>No attacks match.</td></tr>".to_owned()
        } else {
            rows
        }
    );
    let pages = total.div_ceil(u64::from(q.limit)).max(1);
    let page_no = q.page();
    let mut pager =
        format!("<div class=pager><span id=page>Page {page_no} of {pages} ({total} rows)</span>");
    if page_no > 1 {
        let _ = write!(
            pager,
            "<a id=prev href=\"/attacks?{}\">Newer</a>",
            esc(&q.link(page_no - 1, q.view))
        );
    }
    if page_no < pages {
        let _ = write!(
            pager,
            "<a id=next href=\"/attacks?{}\">Older</a>",
            esc(&q.link(page_no + 1, q.view))
        );
    }
    pager.push_str("</div>");
    let _ = write!(body, "</tbody></table>{pager}</div>");
    html_page(200, "Attacks", &body)
}

/// What a rule's data says matched: CRS writes `Matched Data: X found within VAR: value`.
fn matched_fragments(rules: &[StoredRule]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in rules {
        let data = r.data.as_str();
        let fragment = match data.strip_prefix("Matched Data: ") {
            Some(rest) => rest.split(" found within ").next().unwrap_or(rest),
            None => data,
        };
        let fragment = fragment.trim();
        // A fragment of one or two characters would mark half the page.
        if fragment.chars().count() >= 3 && !out.iter().any(|f| f == fragment) {
            out.push(fragment.to_owned());
        }
    }
    // Longest first, so a fragment inside another is not marked on its own.
    out.sort_by_key(|f| std::cmp::Reverse(f.len()));
    out
}

/// `text` escaped, with every occurrence of a fragment (in any ASCII case, also as the
/// request carried it percent-encoded when decoding finds it) in `<mark>`.
fn marked(text: &str, fragments: &[String]) -> String {
    let lower = text.to_ascii_lowercase();
    let mut spans: Vec<(usize, usize)> = Vec::new();
    for f in fragments {
        let needle = f.to_ascii_lowercase();
        let mut from = 0;
        while let Some(at) = lower.get(from..).and_then(|rest| rest.find(&needle)) {
            let start = from + at;
            let end = start + needle.len();
            if !spans.iter().any(|(s, e)| start < *e && *s < end) {
                spans.push((start, end));
            }
            from = end;
        }
    }
    spans.sort_unstable();
    let mut out = String::new();
    let mut at = 0;
    for (start, end) in spans {
        let (Some(before), Some(inside)) = (text.get(at..start), text.get(start..end)) else {
            continue;
        };
        out.push_str(&esc(before));
        let _ = write!(out, "<mark>{}</mark>", esc(inside));
        at = end;
    }
    out.push_str(&esc(text.get(at..).unwrap_or("")));
    out
}

fn percent_decoded(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = |j: usize| bytes.get(j).and_then(|c| char::from(*c).to_digit(16));
        match (b, hex(i + 1), hex(i + 2)) {
            (b'%', Some(h), Some(l)) => {
                out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn header_lines(headers: &[StoredHeader]) -> String {
    headers
        .iter()
        .map(|h| format!("{}: {}\n", h.name, h.value))
        .collect()
}

pub async fn attack(web: &Web, id: &str) -> Page {
    let Some(reader) = &web.reader else {
        return no_store();
    };
    let id = percent_decoded(id);
    let a = match reader.get(id.clone()).await {
        Ok(Some(a)) => a,
        Ok(None) => {
            return html_page(
                404,
                "Attack",
                &format!(
                    "<h1>No attack {}</h1><p><a href=\"/attacks\">All attacks</a></p>",
                    esc(&id)
                ),
            )
        }
        Err(_) => return unavailable(),
    };
    let fragments = matched_fragments(&a.rules);
    let mut body = format!(
        "<p><a href=\"/attacks\">← Attacks</a></p><h1>{class}: {method} {path}</h1>\
         <div class=panel><table id=summary>\
         <tr><th>Time</th><td>{time}</td></tr><tr><th>Id</th><td class=mono>{id}</td></tr>\
         <tr><th>Request id</th><td class=mono id=request-id>{rid}</td></tr>\
         <tr><th>Source</th><td class=mono>{source}</td></tr><tr><th>Host</th><td>{host}</td></tr>\
         <tr><th>Status</th><td>{status}</td></tr><tr><th>Severity</th><td><span class=\"sev sev-{sev}\">{sev}</span></td></tr>\
         <tr><th>Classes</th><td>{classes}</td></tr></table></div>",
        class = esc(classes::label(&a.class)),
        method = esc(&a.method),
        path = esc(&a.path),
        time = ts(a.ts_ns),
        id = esc(&a.id),
        rid = esc(a.request_id.as_deref().unwrap_or("—")),
        source = esc(a.source.as_deref().unwrap_or("")),
        host = esc(a.authority.as_deref().unwrap_or("")),
        status = a.status.map_or_else(|| "— (analysed without its response)".to_owned(), |s| s.to_string()),
        sev = esc(&a.severity),
        classes = esc(&a.classes.iter().map(|c| classes::label(c)).collect::<Vec<_>>().join(", ")),
    );
    let _ = write!(
        body,
        "<div class=panel><b>Rules</b><table id=rules><thead><tr><th>Rule</th><th>Severity</th>\
         <th>Message</th><th>Matched</th></tr></thead><tbody>"
    );
    for r in &a.rules {
        let _ = write!(
            body,
            "<tr><td class=mono>{}</td><td><span class=\"sev sev-{sev}\">{sev}</span></td><td>{}</td><td class=mono>{}</td></tr>",
            r.id,
            esc(&r.msg),
            marked(&r.data, &fragments),
            sev = esc(&r.severity),
        );
    }
    body.push_str("</tbody></table></div>");
    let protocol = a.protocol.as_deref().unwrap_or("HTTP/1.1");
    let line = format!("{} {} {}", a.method, a.path, protocol);
    let decoded = percent_decoded(&a.path);
    let decoded_line = if decoded == a.path {
        String::new()
    } else {
        format!(
            "<p class=muted>Path decoded:</p><pre id=decoded-path>{}</pre>",
            marked(&decoded, &fragments)
        )
    };
    let cut = |shown: usize, size: u64| {
        if (shown as u64) < size {
            format!("<p class=muted>The first {shown} of {size} bytes.</p>")
        } else {
            String::new()
        }
    };
    let _ = write!(
        body,
        "<div class=panel><b>Request</b><pre id=request>{}\n{}\n{}</pre>{decoded_line}{}</div>",
        marked(&line, &fragments),
        marked(&header_lines(&a.request_headers), &fragments),
        marked(&a.request_body, &fragments),
        cut(a.request_body.len(), a.request_body_size),
    );
    match a.status {
        Some(status) => {
            let _ = write!(
                body,
                "<div class=panel><b>Response</b><pre id=response>{status}\n{}\n{}</pre>{}</div>",
                esc(&header_lines(&a.response_headers)),
                marked(&a.response_body, &fragments),
                cut(a.response_body.len(), a.response_body_size),
            );
        }
        None => body.push_str(
            "<div class=panel><b>Response</b><p>None: analysed without its response.</p></div>",
        ),
    }
    html_page(200, "Attack", &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(data: &str) -> StoredRule {
        StoredRule {
            id: 942_100,
            msg: String::new(),
            severity: "CRITICAL".into(),
            data: data.into(),
        }
    }

    #[test]
    fn what_matched_is_marked_escaped() {
        let rules = [
            rule("Matched Data: <script> found within ARGS:q: <script>alert(1)</script>"),
            rule("Matched Data: etc/passwd found within REQUEST_FILENAME: /etc/passwd"),
            rule("x"),
        ];
        let f = matched_fragments(&rules);
        assert_eq!(f, ["etc/passwd", "<script>"]);
        assert_eq!(
            marked("GET /q=<SCRIPT>&f=/etc/passwd", &f),
            "GET /q=<mark>&lt;SCRIPT&gt;</mark>&amp;f=/<mark>etc/passwd</mark>"
        );
        assert_eq!(marked("nothing here", &f), "nothing here");
        assert_eq!(percent_decoded("/a%20b+c%zz%2"), "/a b c%zz%2");
    }
}
