//! The path-template learner of one host: a tree of path segments, learned from the paths seen,
//! whose leaves carry the methods seen on them (an endpoint is a method on a node).
//!
//! How a segment is placed, at each node from the root:
//!
//! 1. A **typed** segment goes to the node's variable child, whatever its value: an integer
//!    (1 to 20 digits), a UUID (8-4-4-4-12 hex digits), a hex id (12 or more hex digits in one
//!    case, at least one digit and one letter), a date (`YYYY-MM-DD`), an email (`%40` read as
//!    `@`), or a segment longer than [`Limits::max_segment_len`] (a string).
//! 2. A segment seen before as a literal child stays that literal.
//! 3. A **slug** (lower-case letters and digits with at least one hyphen, `my-first-post`) goes
//!    to the variable child when the node has one of kind slug or string; else it is a literal,
//!    until [`Limits::slug_min`] distinct slugs are literal children of one node: then they
//!    (and their subtrees, and the endpoints on them) are merged into one variable of kind slug.
//! 4. Any other segment is a literal child, unless the node already has
//!    [`Limits::max_children`] literal children: then it goes to the variable child (kind
//!    string). The literals seen before stay.
//!
//! A node has at most one variable child; a second kind widens it (integer and hex give hex,
//! any other pair gives string). A variable's name comes from the literal before it, made
//! singular, and the kind it was first seen with: `/users/42` → `/users/{user_id}`,
//! `/reports/2026-12-04` → `/reports/{report_date}`, `/articles/my-post` →
//! `/articles/{article_slug}` (suffixes `id` for integer, UUID and hex, `date`, `email`,
//! `slug`, `name` for string; without a literal before it, the suffix alone; a name repeated in
//! one template gets `2`, `3`…).
//!
//! Bounds: at most [`Limits::max_templates`] endpoints and [`Limits::max_nodes`] nodes; paths
//! of more than [`Limits::max_segments`] segments are not learned. What does not fit is
//! refused ([`Cut`]) and the caller counts it.

use std::collections::{BTreeMap, HashMap};

/// The kind of a variable segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SegKind {
    Integer,
    Uuid,
    Hex,
    Date,
    Email,
    Slug,
    String,
}

impl SegKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SegKind::Integer => "integer",
            SegKind::Uuid => "uuid",
            SegKind::Hex => "hex",
            SegKind::Date => "date",
            SegKind::Email => "email",
            SegKind::Slug => "slug",
            SegKind::String => "string",
        }
    }

    pub fn parse(s: &str) -> Option<SegKind> {
        Some(match s {
            "integer" => SegKind::Integer,
            "uuid" => SegKind::Uuid,
            "hex" => SegKind::Hex,
            "date" => SegKind::Date,
            "email" => SegKind::Email,
            "slug" => SegKind::Slug,
            "string" => SegKind::String,
            _ => return None,
        })
    }

    fn suffix(self) -> &'static str {
        match self {
            SegKind::Integer | SegKind::Uuid | SegKind::Hex => "id",
            SegKind::Date => "date",
            SegKind::Email => "email",
            SegKind::Slug => "slug",
            SegKind::String => "name",
        }
    }

    /// One kind for a variable seen with both.
    pub fn widen(self, other: SegKind) -> SegKind {
        match (self, other) {
            (a, b) if a == b => a,
            (SegKind::Integer, SegKind::Hex) | (SegKind::Hex, SegKind::Integer) => SegKind::Hex,
            _ => SegKind::String,
        }
    }
}

/// The learner's bounds (per host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Endpoints (method + template), at most (default 1,000).
    pub max_templates: usize,
    /// Tree nodes, at most (default 4,000).
    pub max_nodes: usize,
    /// Literal children of one node before new values become a variable (default 64).
    pub max_children: usize,
    /// Distinct slugs under one node that make it a slug variable (default 5).
    pub slug_min: usize,
    /// Segments of a path learned, at most (default 16).
    pub max_segments: usize,
    /// A longer segment is a string variable (default 128 bytes).
    pub max_segment_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_templates: 1000,
            max_nodes: 4000,
            max_children: 64,
            slug_min: 5,
            max_segments: 16,
            max_segment_len: 128,
        }
    }
}

/// Why a path was not learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// The host has `max_templates` endpoints already.
    Templates,
    /// The host's tree has `max_nodes` nodes already.
    Nodes,
    /// More than `max_segments` segments.
    Depth,
}

impl Cut {
    pub fn as_str(self) -> &'static str {
        match self {
            Cut::Templates => "templates",
            Cut::Nodes => "nodes",
            Cut::Depth => "depth",
        }
    }
}

pub type EndpointId = u64;

/// Where a path went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    pub endpoint: EndpointId,
    pub template: String,
    /// The variables of the template, in order: name and the kind this path's segment had.
    pub params: Vec<(String, SegKind)>,
    /// Endpoints this path made the learner merge or rename (a slug collapse), before it.
    pub moved: Vec<Moved>,
    /// A segment went to a variable because its node had `max_children` literals already
    /// (rule 4): the value's own template was cut.
    pub fanout: bool,
}

/// An endpoint whose template changed: merged into another (`from != to`) or renamed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    pub method: String,
    pub from: EndpointId,
    pub from_template: String,
    pub to: EndpointId,
    pub to_template: String,
    /// Variables `to_template` has where `from_template` had a literal (a slug collapse): the
    /// exchanges counted on `from` had these too, so their counts carry over as parameters.
    pub new_params: Vec<(String, SegKind)>,
}

#[derive(Debug, Clone)]
enum Label {
    Root,
    Literal(String),
    Var { kind: SegKind, named: SegKind },
}

#[derive(Debug, Clone)]
struct Node {
    parent: usize,
    label: Label,
    literals: BTreeMap<String, usize>,
    var: Option<usize>,
    endpoints: BTreeMap<String, EndpointId>,
}

impl Node {
    fn new(parent: usize, label: Label) -> Node {
        Node {
            parent,
            label,
            literals: BTreeMap::new(),
            var: None,
            endpoints: BTreeMap::new(),
        }
    }
}

/// The typed kind of a segment, if it has one (rule 1).
pub fn typed(segment: &str, max_len: usize) -> Option<SegKind> {
    let b = segment.as_bytes();
    if b.len() > max_len {
        return Some(SegKind::String);
    }
    let hex = |c: &u8| c.is_ascii_hexdigit();
    if b.len() == 36
        && b.iter().enumerate().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                *c == b'-'
            } else {
                hex(c)
            }
        })
    {
        return Some(SegKind::Uuid);
    }
    if is_date(b) {
        return Some(SegKind::Date);
    }
    if (1..=20).contains(&b.len()) && b.iter().all(u8::is_ascii_digit) {
        return Some(SegKind::Integer);
    }
    if b.len() >= 12
        && b.iter().all(hex)
        && b.iter().any(u8::is_ascii_digit)
        && b.iter().any(u8::is_ascii_alphabetic)
        && (b.iter().all(|c| !c.is_ascii_uppercase()) || b.iter().all(|c| !c.is_ascii_lowercase()))
    {
        return Some(SegKind::Hex);
    }
    if segment.contains('@') || segment.contains("%40") {
        let decoded = segment.replace("%40", "@");
        if super::sensitive::is_email(&decoded) {
            return Some(SegKind::Email);
        }
    }
    None
}

fn is_date(b: &[u8]) -> bool {
    if b.len() != 10 || b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
        return false;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let d = b.get(r)?;
        d.iter()
            .all(u8::is_ascii_digit)
            .then(|| d.iter().fold(0u32, |a, c| a * 10 + u32::from(c - b'0')))
    };
    matches!(
        (num(0..4), num(5..7), num(8..10)),
        (Some(_), Some(1..=12), Some(1..=31))
    )
}

/// A slug (rule 3): lower-case letters and digits, at least one hyphen, none at either end.
pub fn is_slug(segment: &str) -> bool {
    let b = segment.as_bytes();
    b.len() >= 3
        && b.contains(&b'-')
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
        && !segment.contains("--")
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// A literal as a variable's base name: lower case, `_` for anything not a letter or digit,
/// singular (`categories` → `category`, `users` → `user`).
fn base_name(literal: &str) -> String {
    let mut s = String::new();
    for c in literal.chars().take(32) {
        if c.is_ascii_alphanumeric() {
            s.push(c.to_ascii_lowercase());
        } else if !s.ends_with('_') {
            s.push('_');
        }
    }
    let s = s.trim_matches('_').to_owned();
    if s.len() > 4 && s.ends_with("ies") {
        format!("{}y", s.get(..s.len() - 3).unwrap_or(""))
    } else if s.len() > 4 && (s.ends_with("sses") || s.ends_with("xes")) {
        s.get(..s.len() - 2).unwrap_or("").to_owned()
    } else if s.len() > 3 && s.ends_with('s') && !s.ends_with("ss") {
        s.get(..s.len() - 1).unwrap_or("").to_owned()
    } else {
        s
    }
}

/// A literal as it goes in a template: braces percent-encoded.
fn literal_text(literal: &str) -> String {
    literal.replace('{', "%7B").replace('}', "%7D")
}

/// The segments of a path (its query cut off), empty ones skipped.
pub fn segments(path: &str) -> Vec<&str> {
    let path = path.split(['?', '#']).next().unwrap_or("");
    path.split('/').filter(|s| !s.is_empty()).collect()
}

/// One host's templates.
#[derive(Debug, Clone)]
pub struct Tree {
    limits: Limits,
    nodes: Vec<Option<Node>>,
    free: Vec<usize>,
    live: usize,
    /// Each endpoint's node and method.
    endpoints: HashMap<EndpointId, (usize, String)>,
    next_id: EndpointId,
}

const ROOT: usize = 0;

impl Tree {
    pub fn new(limits: Limits) -> Tree {
        Tree {
            limits,
            nodes: vec![Some(Node::new(ROOT, Label::Root))],
            free: Vec::new(),
            live: 1,
            endpoints: HashMap::new(),
            next_id: 1,
        }
    }

    pub fn templates(&self) -> usize {
        self.endpoints.len()
    }

    pub fn nodes(&self) -> usize {
        self.live
    }

    fn node(&self, i: usize) -> Option<&Node> {
        self.nodes.get(i).and_then(Option::as_ref)
    }

    fn node_mut(&mut self, i: usize) -> Option<&mut Node> {
        self.nodes.get_mut(i).and_then(Option::as_mut)
    }

    fn alloc(&mut self, node: Node) -> Result<usize, Cut> {
        if self.live >= self.limits.max_nodes {
            return Err(Cut::Nodes);
        }
        self.live += 1;
        Ok(match self.free.pop() {
            Some(i) => {
                if let Some(slot) = self.nodes.get_mut(i) {
                    *slot = Some(node);
                }
                i
            }
            None => {
                self.nodes.push(Some(node));
                self.nodes.len() - 1
            }
        })
    }

    /// The method of an endpoint.
    pub fn method_of(&self, id: EndpointId) -> Option<String> {
        self.endpoints.get(&id).map(|(_, m)| m.clone())
    }

    /// The template of an endpoint.
    pub fn template_of(&self, id: EndpointId) -> Option<String> {
        let (node, _) = self.endpoints.get(&id)?;
        Some(self.render(*node).0)
    }

    /// The template of a node and its variables' names, from the root.
    fn render(&self, at: usize) -> (String, Vec<String>) {
        let mut chain = Vec::new();
        let mut i = at;
        while i != ROOT {
            chain.push(i);
            match self.node(i) {
                Some(n) => i = n.parent,
                None => break,
            }
        }
        chain.reverse();
        let mut out = String::new();
        let mut names: Vec<String> = Vec::new();
        let mut prev_literal: Option<&str> = None;
        for i in chain {
            let Some(n) = self.node(i) else { break };
            out.push('/');
            match &n.label {
                Label::Literal(l) => {
                    out.push_str(&literal_text(l));
                    prev_literal = Some(l);
                }
                Label::Var { named, .. } => {
                    let base = prev_literal.map(base_name).unwrap_or_default();
                    let stem = if base.is_empty() {
                        named.suffix().to_owned()
                    } else {
                        format!("{base}_{}", named.suffix())
                    };
                    let mut name = stem.clone();
                    let mut k = 2;
                    while names.contains(&name) {
                        name = format!("{stem}{k}");
                        k += 1;
                    }
                    out.push('{');
                    out.push_str(&name);
                    out.push('}');
                    names.push(name);
                    prev_literal = None;
                }
                Label::Root => {}
            }
        }
        if out.is_empty() {
            out.push('/');
        }
        (out, names)
    }

    /// The variable child of `at`, made or widened to `kind`.
    fn var_child(&mut self, at: usize, kind: SegKind) -> Result<usize, Cut> {
        let existing = self.node(at).and_then(|n| n.var);
        match existing {
            Some(v) => {
                if let Some(Node {
                    label: Label::Var { kind: k, .. },
                    ..
                }) = self.node_mut(v)
                {
                    *k = k.widen(kind);
                }
                Ok(v)
            }
            None => {
                let v = self.alloc(Node::new(at, Label::Var { kind, named: kind }))?;
                if let Some(n) = self.node_mut(at) {
                    n.var = Some(v);
                }
                Ok(v)
            }
        }
    }

    fn var_kind(&self, at: usize) -> Option<SegKind> {
        let v = self.node(at)?.var?;
        match self.node(v)?.label {
            Label::Var { kind, .. } => Some(kind),
            _ => None,
        }
    }

    /// Learns `method path` (segments as [`segments`] gives them).
    pub fn route(&mut self, method: &str, segs: &[&str]) -> Result<Routed, Cut> {
        if segs.len() > self.limits.max_segments {
            return Err(Cut::Depth);
        }
        let mut at = ROOT;
        let mut kinds: Vec<SegKind> = Vec::new();
        let mut moved = Vec::new();
        let mut fanout = false;
        for seg in segs {
            let (next, kind) = self.step(at, seg, &mut moved, &mut fanout)?;
            if let Some(k) = kind {
                kinds.push(k);
            }
            at = next;
        }
        let existing = self.node(at).and_then(|n| n.endpoints.get(method).copied());
        let endpoint = match existing {
            Some(id) => id,
            None => {
                if self.endpoints.len() >= self.limits.max_templates {
                    return Err(Cut::Templates);
                }
                let id = self.next_id;
                self.next_id += 1;
                self.endpoints.insert(id, (at, method.to_owned()));
                if let Some(n) = self.node_mut(at) {
                    n.endpoints.insert(method.to_owned(), id);
                }
                id
            }
        };
        let (template, names) = self.render(at);
        Ok(Routed {
            endpoint,
            template,
            params: names.into_iter().zip(kinds).collect(),
            moved,
            fanout,
        })
    }

    /// One segment from `at`: the next node, and the segment's kind when it went to a variable.
    fn step(
        &mut self,
        at: usize,
        seg: &str,
        moved: &mut Vec<Moved>,
        fanout: &mut bool,
    ) -> Result<(usize, Option<SegKind>), Cut> {
        if let Some(kind) = typed(seg, self.limits.max_segment_len) {
            return Ok((self.var_child(at, kind)?, Some(kind)));
        }
        let Some(node) = self.node(at) else {
            return Err(Cut::Nodes);
        };
        if let Some(&child) = node.literals.get(seg) {
            return Ok((child, None));
        }
        let literal_count = node.literals.len();
        let slug = is_slug(seg);
        if slug {
            if matches!(self.var_kind(at), Some(SegKind::Slug | SegKind::String)) {
                return Ok((self.var_child(at, SegKind::Slug)?, Some(SegKind::Slug)));
            }
            let slugs: Vec<(String, usize)> = node
                .literals
                .iter()
                .filter(|(l, _)| is_slug(l))
                .map(|(l, c)| (l.clone(), *c))
                .collect();
            if slugs.len() + 1 >= self.limits.slug_min.max(1) {
                let v = self.var_child(at, SegKind::Slug)?;
                self.collapse(at, v, &slugs, moved);
                return Ok((v, Some(SegKind::Slug)));
            }
        }
        if literal_count >= self.limits.max_children {
            *fanout = true;
            return Ok((self.var_child(at, SegKind::String)?, Some(SegKind::String)));
        }
        let child = self.alloc(Node::new(at, Label::Literal(seg.to_owned())))?;
        if let Some(n) = self.node_mut(at) {
            n.literals.insert(seg.to_owned(), child);
        }
        Ok((child, None))
    }

    /// Every endpoint under `at` (itself included): id, method, template.
    fn endpoints_under(&self, at: usize, out: &mut Vec<(EndpointId, String, String)>) {
        let Some(n) = self.node(at) else { return };
        let template = self.render(at).0;
        for (method, id) in &n.endpoints {
            out.push((*id, method.clone(), template.clone()));
        }
        let children: Vec<usize> = n.literals.values().copied().chain(n.var).collect();
        for c in children {
            self.endpoints_under(c, out);
        }
    }

    /// Merges the literal children `slugs` of `parent` into its variable child `var`.
    fn collapse(
        &mut self,
        parent: usize,
        var: usize,
        slugs: &[(String, usize)],
        moved: &mut Vec<Moved>,
    ) {
        let mut before = Vec::new();
        for (_, child) in slugs {
            self.endpoints_under(*child, &mut before);
        }
        let new_params: Vec<(String, SegKind)> = self
            .render(var)
            .1
            .pop()
            .map(|name| vec![(name, SegKind::Slug)])
            .unwrap_or_default();
        let mut redirect: HashMap<EndpointId, EndpointId> = HashMap::new();
        for (label, child) in slugs {
            if let Some(n) = self.node_mut(parent) {
                n.literals.remove(label);
            }
            self.merge(var, *child, &mut redirect);
        }
        for (id, method, from_template) in before {
            let mut to = id;
            while let Some(next) = redirect.get(&to) {
                to = *next;
            }
            let Some(to_template) = self.template_of(to) else {
                continue;
            };
            if to != id || to_template != from_template {
                moved.push(Moved {
                    method,
                    from: id,
                    from_template,
                    to,
                    to_template,
                    new_params: new_params.clone(),
                });
            }
        }
    }

    /// Moves everything of node `from` into node `into` (recursively), then frees `from`.
    fn merge(&mut self, into: usize, from: usize, redirect: &mut HashMap<EndpointId, EndpointId>) {
        let Some(src) = self.nodes.get_mut(from).and_then(Option::take) else {
            return;
        };
        self.live -= 1;
        self.free.push(from);
        for (method, id) in src.endpoints {
            let existing = self
                .node(into)
                .and_then(|n| n.endpoints.get(&method).copied());
            match existing {
                Some(target) => {
                    self.endpoints.remove(&id);
                    redirect.insert(id, target);
                }
                None => {
                    self.endpoints.insert(id, (into, method.clone()));
                    if let Some(n) = self.node_mut(into) {
                        n.endpoints.insert(method, id);
                    }
                }
            }
        }
        for (label, child) in src.literals {
            let existing = self
                .node(into)
                .and_then(|n| n.literals.get(&label).copied());
            match existing {
                Some(target) => self.merge(target, child, redirect),
                None => {
                    if let Some(c) = self.node_mut(child) {
                        c.parent = into;
                    }
                    if let Some(n) = self.node_mut(into) {
                        n.literals.insert(label, child);
                    }
                }
            }
        }
        if let Some(child) = src.var {
            let child_kind = match self.node(child).map(|n| &n.label) {
                Some(Label::Var { kind, .. }) => *kind,
                _ => SegKind::String,
            };
            let existing = self.node(into).and_then(|n| n.var);
            match existing {
                Some(target) => {
                    if let Some(Node {
                        label: Label::Var { kind, .. },
                        ..
                    }) = self.node_mut(target)
                    {
                        *kind = kind.widen(child_kind);
                    }
                    self.merge(target, child, redirect);
                }
                None => {
                    if let Some(c) = self.node_mut(child) {
                        c.parent = into;
                    }
                    if let Some(n) = self.node_mut(into) {
                        n.var = Some(child);
                    }
                }
            }
        }
    }

    /// The kind a template's variable has now (widened over everything seen), by the
    /// variable's position among the template's variables.
    pub fn param_kinds(&self, id: EndpointId) -> Vec<SegKind> {
        let Some((mut i, _)) = self.endpoints.get(&id).cloned() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        while i != ROOT {
            let Some(n) = self.node(i) else { break };
            if let Label::Var { kind, .. } = n.label {
                out.push(kind);
            }
            i = n.parent;
        }
        out.reverse();
        out
    }

    #[cfg(test)]
    fn all_templates(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .endpoints
            .iter()
            .map(|(_, (node, method))| format!("{method} {}", self.render(*node).0))
            .collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn learn(tree: &mut Tree, method: &str, path: &str) -> Routed {
        tree.route(method, &segments(path)).unwrap()
    }

    #[test]
    fn typed_segments() {
        let t = |s: &str| typed(s, 128);
        assert_eq!(t("42"), Some(SegKind::Integer));
        assert_eq!(
            t("550e8400-e29b-41d4-a716-446655440000"),
            Some(SegKind::Uuid)
        );
        assert_eq!(t("507f1f77bcf86cd799439011"), Some(SegKind::Hex));
        assert_eq!(t("2026-12-04"), Some(SegKind::Date));
        assert_eq!(t("ada%40example.com"), Some(SegKind::Email));
        assert_eq!(t(&"x".repeat(129)), Some(SegKind::String));
        for literal in [
            "users",
            "v1",
            "2026-13-04",
            "deadbeefcafe",
            "me",
            "abc123",
            "42.json",
        ] {
            assert_eq!(t(literal), None, "{literal}");
        }
        assert!(is_slug("my-first-post"));
        assert!(!is_slug("users"));
        assert!(!is_slug("My-Post"));
        assert!(!is_slug("-a-"));
    }

    #[test]
    fn ids_become_named_variables() {
        let mut tree = Tree::new(Limits::default());
        let r = learn(&mut tree, "GET", "/api/users/42");
        assert_eq!(r.template, "/api/users/{user_id}");
        assert_eq!(r.params, [("user_id".to_owned(), SegKind::Integer)]);
        let r2 = learn(&mut tree, "GET", "/api/users/7?x=1");
        assert_eq!(
            (r2.endpoint, r2.template.as_str()),
            (r.endpoint, "/api/users/{user_id}")
        );
        learn(&mut tree, "DELETE", "/api/users/9");
        learn(&mut tree, "GET", "/api/users/me");
        learn(
            &mut tree,
            "GET",
            "/api/users/42/orders/550e8400-e29b-41d4-a716-446655440000",
        );
        learn(
            &mut tree,
            "GET",
            "/api/categories/12/items/507f1f77bcf86cd799439011",
        );
        learn(&mut tree, "GET", "/reports/2026-12-04");
        learn(&mut tree, "GET", "/a/1/2");
        learn(&mut tree, "GET", "/");
        assert_eq!(
            tree.all_templates(),
            [
                "DELETE /api/users/{user_id}",
                "GET /",
                "GET /a/{a_id}/{id}",
                "GET /api/categories/{category_id}/items/{item_id}",
                "GET /api/users/me",
                "GET /api/users/{user_id}",
                "GET /api/users/{user_id}/orders/{order_id}",
                "GET /reports/{report_date}",
            ]
        );
        // A second kind widens the variable; its name stays.
        learn(&mut tree, "GET", "/api/users/507f1f77bcf86cd799439011");
        assert_eq!(tree.param_kinds(r.endpoint), [SegKind::Hex]);
        learn(&mut tree, "GET", "/api/users/ada%40example.com");
        assert_eq!(tree.param_kinds(r.endpoint), [SegKind::String]);
        assert_eq!(
            tree.template_of(r.endpoint).unwrap(),
            "/api/users/{user_id}"
        );
    }

    #[test]
    fn repeated_slugs_merge_into_one_variable() {
        let mut tree = Tree::new(Limits::default());
        learn(&mut tree, "GET", "/blog/posts/first-post");
        learn(&mut tree, "GET", "/blog/posts/first-post/comments");
        learn(&mut tree, "POST", "/blog/posts/second-post/comments");
        learn(&mut tree, "GET", "/blog/posts/third-post/comments");
        learn(&mut tree, "GET", "/blog/posts/latest");
        learn(&mut tree, "GET", "/blog/posts/fourth-post");
        assert_eq!(tree.all_templates().len(), 6);
        let r = learn(&mut tree, "GET", "/blog/posts/fifth-post");
        assert_eq!(r.template, "/blog/posts/{post_slug}");
        let mut moved: Vec<(String, String, bool)> = r
            .moved
            .iter()
            .map(|m| {
                (
                    m.from_template.clone(),
                    m.to_template.clone(),
                    m.from == m.to,
                )
            })
            .collect();
        moved.sort();
        assert_eq!(
            moved,
            [
                (
                    "/blog/posts/first-post".into(),
                    "/blog/posts/{post_slug}".into(),
                    true
                ),
                (
                    "/blog/posts/first-post/comments".into(),
                    "/blog/posts/{post_slug}/comments".into(),
                    true
                ),
                (
                    "/blog/posts/fourth-post".into(),
                    "/blog/posts/{post_slug}".into(),
                    false
                ),
                (
                    "/blog/posts/second-post/comments".into(),
                    "/blog/posts/{post_slug}/comments".into(),
                    true
                ),
                (
                    "/blog/posts/third-post/comments".into(),
                    "/blog/posts/{post_slug}/comments".into(),
                    false
                ),
            ]
        );
        assert_eq!(
            tree.all_templates(),
            [
                "GET /blog/posts/latest",
                "GET /blog/posts/{post_slug}",
                "GET /blog/posts/{post_slug}/comments",
                "POST /blog/posts/{post_slug}/comments",
            ]
        );
        // New slugs go to the variable at once; the literal stays.
        let r = learn(&mut tree, "GET", "/blog/posts/sixth-post/comments");
        assert!(r.moved.is_empty());
        assert_eq!(tree.all_templates().len(), 4);
        assert_eq!(tree.nodes(), 1 + 2 + 1 + 1 + 1);
    }

    #[test]
    fn fan_out_and_bounds() {
        let mut tree = Tree::new(Limits {
            max_children: 3,
            ..Limits::default()
        });
        let mut fanned = 0;
        for name in ["alice", "bob", "carol", "dave", "erin"] {
            fanned += usize::from(learn(&mut tree, "GET", &format!("/u/{name}")).fanout);
        }
        assert_eq!(fanned, 2);
        assert_eq!(
            tree.all_templates(),
            [
                "GET /u/alice",
                "GET /u/bob",
                "GET /u/carol",
                "GET /u/{u_name}"
            ]
        );
        let limits = Limits {
            max_templates: 10,
            max_nodes: 15,
            max_segments: 4,
            ..Limits::default()
        };
        let mut tree = Tree::new(Limits {
            max_nodes: 100,
            ..limits
        });
        assert_eq!(tree.route("GET", &segments("/a/b/c/d/e")), Err(Cut::Depth));
        let mut cuts = Vec::new();
        for i in 0..20 {
            if let Err(c) = tree.route("GET", &segments(&format!("/x{i}"))) {
                cuts.push(c);
            }
        }
        assert_eq!((tree.templates(), cuts.len()), (10, 10));
        assert!(cuts.iter().all(|c| *c == Cut::Templates));
        // Nodes run out before templates here: /x{i}/y needs two nodes.
        let mut tree = Tree::new(limits);
        let mut cuts = Vec::new();
        for i in 0..20 {
            if let Err(c) = tree.route("GET", &segments(&format!("/x{i}/y"))) {
                cuts.push(c);
            }
        }
        assert_eq!(tree.nodes(), 15);
        assert_eq!(cuts.first(), Some(&Cut::Nodes));
    }

    #[test]
    fn a_hundred_thousand_random_paths_stay_within_the_bound() {
        let limits = Limits::default();
        let mut tree = Tree::new(limits);
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let alphabet = b"abcdefghijklmnopqrstuvwxyz_.~";
        let (mut cut, mut fanned) = (0u64, 0u64);
        for _ in 0..100_000 {
            let depth = 1 + next() % 4;
            let mut path = String::new();
            for _ in 0..depth {
                path.push('/');
                for _ in 0..(3 + next() % 8) {
                    let i = (next() % alphabet.len() as u64) as usize;
                    path.push(char::from(alphabet[i]));
                }
            }
            match tree.route("GET", &segments(&path)) {
                Ok(r) => fanned += u64::from(r.fanout),
                Err(_) => cut += 1,
            }
        }
        assert!(
            tree.templates() <= limits.max_templates,
            "{}",
            tree.templates()
        );
        assert!(tree.nodes() <= limits.max_nodes, "{}", tree.nodes());
        // Most paths were generalised (fan-out) or refused; each is said.
        assert!(cut + fanned > 90_000, "{cut} cut, {fanned} generalised");
        assert!(tree.nodes.len() <= limits.max_nodes);
    }
}
