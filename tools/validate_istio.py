#!/usr/bin/env python3
"""Validates rendered Istio manifests offline against Istio's CRD schemas.

    validate_istio.py --crds DIR [--show-as NAME] [--self-test] MANIFEST_DIR

As strict as `kubectl apply` with server-side strict field validation, for the
schema of the served version named by each document's apiVersion:

- the CRD's openAPIV3Schema, with JSON Schema (jsonschema): an unknown field is
  an error wherever the schema lists `properties` and does not say
  `x-kubernetes-preserve-unknown-fields: true` (the API server would reject it),
  `nullable` admits null and only there, `x-kubernetes-int-or-string` admits
  both, `format` is checked (int32, double, date-time; a format this tool does
  not know fails the run), list-map keys must be unique;
- the CEL rules (`x-kubernetes-validations`) of every object the document
  reaches, each implemented below next to its rule text. A rule this tool does
  not know fails the run, so a newer CRD cannot have rules silently skipped;
- metadata: name (DNS-1123 subdomain), namespace, labels, annotations only.

Kubernetes' own kinds (Namespace, Secret, Service, Deployment,
HorizontalPodAutoscaler, PodDisruptionBudget) are checked against Kubernetes'
own schemas, strict (an unknown field is an error), by kubernetes-validate, for
the oldest and the newest Kubernetes that the Istio releases we support run on
(K8S_VERSIONS). --self-test also runs negative tests that
must be rejected, so the validator cannot pass vacuously. Prints one line per
document and a closing `test result:` line in cargo's format.
"""

import argparse
import copy
import re
import sys
from fractions import Fraction
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

# Kubernetes' own kinds the manifests use, checked against Kubernetes' schemas.
CORE_KINDS = {
    ("v1", "Namespace"),
    ("v1", "Secret"),
    ("v1", "Service"),
    ("apps/v1", "Deployment"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ("policy/v1", "PodDisruptionBudget"),
}
# Istio 1.28 runs on Kubernetes 1.30 to 1.34; the newest schemas catch removals early.
K8S_VERSIONS = ("1.30", "1.37")

DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
LABEL_KEY = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"

# ObjectMeta as far as manifests written by hand may use it; the server sets the rest.
METADATA_SCHEMA = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "maxLength": 253, "pattern": DNS_SUBDOMAIN},
        "namespace": {"type": "string", "maxLength": 63, "pattern": DNS_LABEL},
        "labels": {
            "type": "object",
            "propertyNames": {"pattern": LABEL_KEY},
            "additionalProperties": {"type": "string", "maxLength": 63, "pattern": LABEL_VALUE},
        },
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
ENVELOPE = {
    "apiVersion": {"type": "string", "minLength": 1},
    "kind": {"type": "string", "minLength": 1},
    "metadata": METADATA_SCHEMA,
}

# --- formats ------------------------------------------------------------------

RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"
)
FORMATS = jsonschema.FormatChecker(formats=())


@FORMATS.checks("int32")
def _int32(value):
    return not isinstance(value, int) or -(2**31) <= value < 2**31


@FORMATS.checks("double")
def _double(value):
    return True  # any JSON number is a double; the type keyword checks the rest


@FORMATS.checks("date-time")
def _date_time(value):
    return not isinstance(value, str) or bool(RFC3339.match(value))


# --- CEL ------------------------------------------------------------------------
# k8s CEL functions the rules use, with the semantics of their Go implementation.


class CelError(Exception):
    """A rule that does not evaluate: the API server reports it as invalid."""


def go_parse_request_uri(text):
    """The scheme of Go's url.ParseRequestURI(text) (k8s CEL isURL/url), or CelError."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise CelError("invalid control character in URL")
    if text == "":
        raise CelError("empty url")
    if text == "*":
        return ""
    scheme, rest = "", text
    for i, c in enumerate(text):
        if c.isascii() and c.isalpha():
            continue
        if c.isascii() and (c.isdigit() or c in "+-."):
            if i == 0:
                break
            continue
        if c == ":":
            if i == 0:
                raise CelError("missing protocol scheme")
            scheme, rest = text[:i].lower(), text[i + 1 :]
        break
    rest = rest.partition("?")[0]
    if not rest.startswith("/"):
        if scheme:
            return scheme  # opaque, like mailto:x
        raise CelError("invalid URI for request")
    if scheme and rest.startswith("//"):
        authority, slash, path = rest[2:].partition("/")
        rest = slash + path
        host = authority.rpartition("@")[2]
        if not host.startswith("["):
            name, colon, port = host.rpartition(":")
            if colon and not port.isdigit() and port != "":
                raise CelError(f"invalid port {':' + port!r} after host")
            if colon:
                host = name
            if re.search(r"%(?![0-9A-Fa-f]{2})", host):
                raise CelError("invalid URL escape in host")
            if re.search(r"[^A-Za-z0-9\-_.~!$&'()*+,;=:\[\]<>\"%\x80-\U0010ffff]", host):
                raise CelError("invalid character in host name")
    if re.search(r"%(?![0-9A-Fa-f]{2})", rest):
        raise CelError("invalid URL escape")
    return scheme


def is_url(text):
    try:
        go_parse_request_uri(text)
    except CelError:
        return False
    return True


DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
DURATION_UNIT_NS = {"ns": 1, "us": 10**3, "µs": 10**3, "μs": 10**3, "ms": 10**6,
                    "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}


def duration_ns(text):
    """CEL duration(text), Go's time.ParseDuration syntax, in nanoseconds."""
    sign, body = (-1, text[1:]) if text.startswith("-") else (1, text.lstrip("+"))
    if body == "0":
        return 0
    parts, end = [], 0
    for match in DURATION_PART.finditer(body):
        if match.start() != end:
            break
        parts.append(match)
        end = match.end()
    if not parts or end != len(body):
        raise CelError(f"invalid duration {text!r}")
    return sign * sum(Fraction(m.group(1)) * DURATION_UNIT_NS[m.group(2)] for m in parts)


def substring(text, start, end):
    if not 0 <= start <= end <= len(text):
        raise CelError(f"substring({start}, {end}) out of range for {text!r}")
    return text[start:end]


def url_scheme_rule(schemes):
    def rule(s):
        if is_url(s):
            return go_parse_request_uri(s) in schemes
        return is_url("http://" + s) and go_parse_request_uri("http://" + s) in schemes

    return rule


def count_present(obj, *fields):
    return sum(1 for field in fields if field in obj)


# Every rule of the Istio CRDs this tool knows, keyed by its text (whitespace
# collapsed), `self` being the value at the rule's place.
CEL_RULES = {
    '!self.contains("*")':
        lambda s: "*" not in s,
    'self.all(key, !key.contains("*"))':
        lambda s: all("*" not in key for key in s),
    "self.all(key, key.size() != 0)":
        lambda s: all(len(key) != 0 for key in s),
    "self.size() == 0":
        lambda s: len(s) == 0,
    'self != "*"':
        lambda s: s != "*",
    "0 < self && self <= 65535":
        lambda s: 0 < s <= 65535,
    "duration(self) >= duration('1ms')":
        lambda s: duration_ns(s) >= duration_ns("1ms"),
    'isURL(self) ? (url(self).getScheme() in ["", "http", "https", "oci", "file"]) : '
    '(isURL("http://" + self) && url("http://" + self).getScheme() in ["", "http", "https", "oci", "file"])':
        url_scheme_rule({"", "http", "https", "oci", "file"}),
    'isURL(self) ? (url(self).getScheme() in ["", "http", "https", "file", "oci"]) : '
    '(isURL("http://" + self) && url("http://" + self).getScheme() in ["", "http", "https", "file", "oci"])':
        url_scheme_rule({"", "http", "https", "file", "oci"}),
    '(has(self.valueFrom) ? self.valueFrom : "") != "HOST" || !has(self.value)':
        lambda s: s.get("valueFrom", "") != "HOST" or "value" not in s,
    "(has(self.selector) ? 1 : 0) + (has(self.targetRef) ? 1 : 0) + (has(self.targetRefs) ? 1 : 0) <= 1":
        lambda s: count_present(s, "selector", "targetRef", "targetRefs") <= 1,
    "(has(self.selector) ? 1 : 0) + (has(self.targetRefs) ? 1 : 0) <= 1":
        lambda s: count_present(s, "selector", "targetRefs") <= 1,
    "(has(self.workloadSelector) ? 1 : 0) + (has(self.targetRefs) ? 1 : 0) <= 1":
        lambda s: count_present(s, "workloadSelector", "targetRefs") <= 1,
    "has(self.wasm) != has(self.lua)":
        lambda s: ("wasm" in s) != ("lua" in s),
    'has(self.context) ? ((self.context == "WAYPOINT") ? has(self.waypoint) : !has(self.waypoint)) : !has(self.waypoint)':
        lambda s: ("waypoint" in s) == (s.get("context") == "WAYPOINT"),
    "(has(self.workloadSelector) ? 1 : 0) + (has(self.endpoints) ? 1 : 0) <= 1":
        lambda s: count_present(s, "workloadSelector", "endpoints") <= 1,
    '!((has(self.addresses) ? self.addresses : []).exists(k, k.contains("/")) && '
    '!((has(self.resolution) ? self.resolution : "NONE") in ["STATIC", "NONE"]))':
        lambda s: not (any("/" in a for a in s.get("addresses", []))
                       and s.get("resolution", "NONE") not in ("STATIC", "NONE")),
    '((has(self.resolution) ? self.resolution : "NONE") == "NONE") ? !has(self.endpoints) : true':
        lambda s: s.get("resolution", "NONE") != "NONE" or "endpoints" not in s,
    '((has(self.resolution) ? self.resolution : "") == "DNS_ROUND_ROBIN") ? '
    "((has(self.endpoints) ? self.endpoints : []).size() <= 1) : true":
        lambda s: s.get("resolution", "") != "DNS_ROUND_ROBIN" or len(s.get("endpoints", [])) <= 1,
    "has(self.address) || has(self.network)":
        lambda s: "address" in s or "network" in s,
    '(has(self.address) ? self.address : "").startsWith("unix://") ? !has(self.ports) : true':
        lambda s: not s.get("address", "").startswith("unix://") or "ports" not in s,
    'self.startsWith("unix://") ? (self.substring(7, 8) == "/" || self.substring(7, 8) == "@") : true':
        lambda s: not s.startswith("unix://") or substring(s, 7, 8) in ("/", "@"),
    'self.startsWith("unix://") ? !self.endsWith("/") : true':
        lambda s: not s.startswith("unix://") or not s.endswith("/"),
    'self.all(key, size(key) < 63 && key.matches("^[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?$"))':
        lambda s: all(len(k) < 63 and re.search(r"^[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?$", k)
                      for k in s),
    "self.all(l1, self.exists_one(l2, l1.number == l2.number))":
        lambda s: all(sum(1 for l2 in s if l2.get("number") == l1.get("number")) == 1 for l1 in s),
}


def rule_key(rule):
    return " ".join(rule.split())


CEL_RULES = {rule_key(text): check for text, check in CEL_RULES.items()}


# --- schemas --------------------------------------------------------------------


class UnsupportedSchema(Exception):
    """The CRD uses something this tool cannot check: fail rather than skip it."""


def to_json_schema(node, in_junctor=False):
    """A structural-schema node as JSON Schema with the API server's strictness."""
    out = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: to_json_schema(child) for name, child in value.items()}
        elif key in ("items", "not"):
            out[key] = to_json_schema(value, in_junctor or key == "not")
        elif key == "additionalProperties":
            out[key] = to_json_schema(value) if isinstance(value, dict) else value
        elif key in ("anyOf", "oneOf", "allOf"):
            out[key] = [to_json_schema(child, True) for child in value]
        elif key == "format":
            if value not in FORMATS.checkers:
                raise UnsupportedSchema(f"format {value!r}")
            out[key] = value
        elif key.startswith("x-kubernetes-") or key in ("nullable", "description"):
            continue
        else:
            out[key] = value
    # Junctor branches (oneOf etc.) only restate the parent's fields: no pruning there.
    closed = (
        not in_junctor
        and node.get("type") == "object"
        and not node.get("x-kubernetes-preserve-unknown-fields")
        and "additionalProperties" not in node
    )
    if closed:
        out["additionalProperties"] = False
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in node:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable"):
        out = {"anyOf": [{"type": "null"}, out]}
    return out


class Crds:
    def __init__(self, directory):
        self.by_kind = {}
        for path in sorted(Path(directory).glob("*.yaml")):
            for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
                if doc and doc.get("kind") == "CustomResourceDefinition":
                    spec = doc["spec"]
                    self.by_kind[(spec["group"], spec["names"]["kind"])] = spec
        if not self.by_kind:
            raise SystemExit(f"validate_istio: no CustomResourceDefinition in {directory}")

    def schema(self, api_version, kind):
        group, _, version = api_version.rpartition("/")
        spec = self.by_kind.get((group, kind))
        if spec is None:
            return None, None
        for served in spec["versions"]:
            if served["name"] == version and served.get("served"):
                return version, served["schema"]["openAPIV3Schema"]
        served = [v["name"] for v in spec["versions"] if v.get("served")]
        raise Invalid([f"apiVersion {api_version}: {kind} is served as {', '.join(served)}"])


class Invalid(Exception):
    def __init__(self, errors):
        super().__init__("; ".join(errors))
        self.errors = errors


def dotted(path):
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text.lstrip(".") or "(document)"


def explain(error):
    """The message, with the reasons of an anyOf/oneOf that failed (a nullable field is one)."""
    message = error.message
    # A long instance (oneOf over a whole spec) would bury the reason: name it "value".
    instance = repr(error.instance)
    if len(instance) > 80 and message.startswith(instance):
        message = "value" + message[len(instance):]
    reasons = [
        sub.message
        for sub in error.context or []
        if not (sub.validator == "type" and sub.validator_value == "null")
    ]
    return f"{message} ({'; '.join(reasons)})" if reasons else message


def structural_errors(json_schema, doc):
    validator = jsonschema.Draft7Validator(json_schema, format_checker=FORMATS)
    return [
        f"{dotted(e.absolute_path)}: {explain(e)}"
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    ]


def check_rules(schema, value, path, used, errors):
    """Evaluates the CEL rules and list-map keys of every object the document reaches."""
    if value is None:
        return
    for validation in schema.get("x-kubernetes-validations", []):
        key = rule_key(validation["rule"])
        check = CEL_RULES.get(key)
        if check is None:
            where = path.lstrip(".") or "(document)"
            raise UnsupportedSchema(f"{where}: CEL rule not implemented here: {validation['rule']}")
        used.add(key)
        message = validation.get("message", f"failed rule: {validation['rule']}")
        try:
            ok = check(value)
        except CelError as err:
            ok, message = False, f"{message} ({err})"
        except (TypeError, AttributeError, KeyError):
            # A value of the wrong type: the schema check has reported it already.
            continue
        if not ok:
            errors.append(f"{path.lstrip('.') or '(document)'}: {message} (CEL: {key})")
    list_type = schema.get("x-kubernetes-list-type")
    if list_type == "map" and isinstance(value, list) and all(isinstance(i, dict) for i in value):
        keys = [tuple(item.get(k) for k in schema.get("x-kubernetes-list-map-keys", [])) for item in value]
        if len(keys) != len(set(keys)):
            errors.append(f"{path}: duplicate entries for list-map keys {keys}")
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for name, child in value.items():
            if name in properties:
                check_rules(properties[name], child, f"{path}.{name}", used, errors)
            elif isinstance(extra, dict):
                check_rules(extra, child, f"{path}[{name!r}]", used, errors)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            check_rules(schema["items"], item, f"{path}[{index}]", used, errors)


def validate(crds, doc):
    """Checks one document; returns what it was checked against, or raises Invalid."""
    if not isinstance(doc, dict):
        raise Invalid(["not a mapping"])
    envelope = {"type": "object", "required": list(ENVELOPE), "properties": ENVELOPE}
    errors = structural_errors(envelope, doc)
    if errors:
        raise Invalid(errors)
    api_version, kind = doc["apiVersion"], doc["kind"]
    version, crd_schema = crds.schema(api_version, kind)
    if crd_schema is None:
        if (api_version, kind) in CORE_KINDS:
            for k8s in K8S_VERSIONS:
                try:
                    kubernetes_validate.validate(doc, k8s, strict=True)
                except kubernetes_validate.ValidationError as err:
                    raise Invalid([f"Kubernetes {k8s}: {dotted(list(err.path))}: {err.message}"])
            return f"against Kubernetes {' and '.join(K8S_VERSIONS)} {kind} schemas (strict)"
        raise Invalid([f"{api_version} {kind}: neither an Istio CRD nor a known core kind"])
    json_schema = to_json_schema(crd_schema)
    # The API server adds apiVersion, kind and metadata to every CRD's root.
    json_schema["properties"] = {**ENVELOPE, **json_schema["properties"]}
    # Both kinds of checks run, as on the API server, so every error is reported.
    errors = structural_errors(json_schema, doc)
    used = set()
    check_rules(crd_schema, doc, "", used, errors)
    if errors:
        raise Invalid(errors)
    return f"against {kind} {version} schema + {len(used)} CEL rules"


# --- negative self-tests ------------------------------------------------------------


def set_path(doc, path, value):
    node = doc
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value


def mutated(path, value):
    def apply(doc):
        set_path(doc, path, value)

    return apply


def removed(path):
    def apply(doc):
        node = doc
        for part in path[:-1]:
            node = node[part]
        del node[path[-1]]

    return apply


def both(*changes):
    def apply(doc):
        for change in changes:
            change(doc)

    return apply


TARGET_REFS = [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gw"}]

# (kind, what, change, a word the rejection must contain); None: must be accepted.
SELF_TESTS = [
    ("WasmPlugin", "unknown field spec.failStratgy", mutated(["spec", "failStratgy"], "FAIL_OPEN"), "failStratgy"),
    ("WasmPlugin", "unknown field spec.selector.matchLabel",
     mutated(["spec", "selector", "matchLabel"], {"istio": "x"}), "matchLabel"),
    ("WasmPlugin", "unknown metadata field", mutated(["metadata", "nmae"], "x"), "nmae"),
    ("WasmPlugin", "wrong enum spec.phase", mutated(["spec", "phase"], "AUTHENTICATION"), "AUTHENTICATION"),
    ("WasmPlugin", "sha256 with a prefix", mutated(["spec", "sha256"], "sha256:" + "a" * 64), "sha256"),
    ("WasmPlugin", "priority beyond int32", mutated(["spec", "priority"], 2**31), "int32"),
    ("WasmPlugin", "empty sha256 template value (null)", mutated(["spec", "sha256"], None), "None"),
    ("WasmPlugin", "priority: null (nullable)", mutated(["spec", "priority"], None), None),
    ("WasmPlugin", "CEL: both selector and targetRefs",
     mutated(["spec", "targetRefs"], TARGET_REFS), "only one of targetRefs or selector"),
    ("WasmPlugin", "CEL: url scheme ftp", mutated(["spec", "url"], "ftp://registry.example.com/x"), "schema"),
    ("WasmPlugin", "CEL: wildcard label value",
     mutated(["spec", "selector", "matchLabels"], {"istio": "*"}), "wildcard"),
    ("WasmPlugin", "CEL: cross-namespace targetRef",
     both(removed(["spec", "selector"]),
          mutated(["spec", "targetRefs"], [{**TARGET_REFS[0], "namespace": "other"}])), "cross namespace"),
    ("WasmPlugin", "missing metadata.name", removed(["metadata", "name"]), "name"),
    ("TrafficExtension", "CEL: both wasm and lua",
     mutated(["spec", "lua"], {"inlineCode": "function envoy_on_request(h) end"}), "exactly one of wasm or lua"),
    ("TrafficExtension", "Wasm field at spec level (WasmPlugin shape)",
     mutated(["spec", "url"], "oci://registry.example.com/x:1"), "url"),
    ("ServiceEntry", "CEL: duplicate port number",
     mutated(["spec", "ports"], [{"number": 443, "name": "a", "protocol": "HTTP"},
                                 {"number": 443, "name": "b", "protocol": "HTTP"}]), "duplicated"),
    ("ServiceEntry", "CEL: wildcard host", mutated(["spec", "hosts"], ["*"]), "wildcard"),
    ("ServiceEntry", "CEL: port 0", mutated(["spec", "ports", 0, "number"], 0), "between 1-65535"),
    ("DestinationRule", "CEL: connectTimeout below 1ms",
     mutated(["spec", "trafficPolicy", "connectionPool", "tcp", "connectTimeout"], "500us"), "1ms"),
    ("DestinationRule", "CEL: connectTimeout not a duration",
     mutated(["spec", "trafficPolicy", "connectionPool", "tcp", "connectTimeout"], "soon"), "invalid duration"),
    ("Deployment", "unknown field in a container",
     mutated(["spec", "template", "spec", "containers", 0, "readOnlyRootFS"], True), "readOnlyRootFS"),
    ("HorizontalPodAutoscaler", "minReplicas as text", mutated(["spec", "minReplicas"], "3"), "'3'"),
    ("PodDisruptionBudget", "unknown field spec.maxUnavailble",
     mutated(["spec", "maxUnavailble"], 1), "maxUnavailble"),
    ("DestinationRule", "wrong enum tls.mode",
     mutated(["spec", "trafficPolicy", "portLevelSettings", 0, "tls", "mode"], "TLS"), "TLS"),
]


def run_self_tests(crds, documents):
    """Yields (passed, line) per self-test."""
    by_kind = {}
    for _, doc in documents:
        if isinstance(doc, dict):
            by_kind.setdefault(doc.get("kind"), doc)
    for kind, what, change, expected in SELF_TESTS:
        name = f"self-test {kind}: {what}"
        if kind not in by_kind:
            yield False, f"FAILED {name}: no {kind} among the manifests to start from"
            continue
        doc = copy.deepcopy(by_kind[kind])
        change(doc)
        try:
            validate(crds, doc)
        except Invalid as err:
            matching = [line for line in err.errors if expected is not None and expected in line]
            if matching:
                yield True, f"ok {name} is rejected: {matching[0]}"
            else:
                yield False, f"FAILED {name}: rejected for another reason: {err}"
            continue
        if expected is None:
            yield True, f"ok {name} is accepted"
        else:
            yield False, f"FAILED {name}: accepted, must be rejected"
    # A rule the validator does not know must stop it, not be skipped.
    kind = "WasmPlugin"
    name = f"self-test {kind}: a CEL rule this tool does not know"
    if kind in by_kind:
        unknown = copy.deepcopy(crds)
        group = by_kind[kind]["apiVersion"].rpartition("/")[0]
        spec = unknown.by_kind[(group, kind)]
        for version in spec["versions"]:
            version["schema"]["openAPIV3Schema"]["properties"]["spec"].setdefault(
                "x-kubernetes-validations", []).append({"rule": "self.url.size() < 9999", "message": "new"})
        try:
            validate(unknown, by_kind[kind])
            yield False, f"FAILED {name}: accepted, must fail"
        except UnsupportedSchema as err:
            yield True, f"ok {name} stops the run: {err}"
    else:
        yield False, f"FAILED {name}: no {kind} among the manifests"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifests", type=Path, help="directory of rendered manifests")
    parser.add_argument("--crds", required=True, type=Path, help="directory of Istio CRD files")
    parser.add_argument("--show-as", help="name printed instead of the manifests directory")
    parser.add_argument("--self-test", action="store_true", help="also run the negative tests")
    args = parser.parse_args()

    if not args.crds.is_dir():
        sys.exit(f"validate_istio: no CRD directory {args.crds} (set ISTIO_CRDS)")
    crds = Crds(args.crds)
    shown = args.show_as or str(args.manifests)
    files = sorted(args.manifests.rglob("*.yaml"))
    if not files:
        sys.exit(f"validate_istio: no *.yaml under {args.manifests}")

    passed = failed = 0
    documents = []
    for path in files:
        where = f"{shown}/{path.relative_to(args.manifests)}"
        try:
            docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
        except yaml.YAMLError as err:
            print(f"FAILED {where}: not YAML: {err}")
            failed += 1
            continue
        for doc in docs:
            documents.append((where, doc))
            label = f"{doc.get('kind')} {doc.get('metadata', {}).get('name')}" if isinstance(doc, dict) else "?"
            try:
                print(f"ok {where}: {label} {validate(crds, doc)}")
                passed += 1
            except (Invalid, UnsupportedSchema) as err:
                print(f"FAILED {where}: {label}")
                for line in getattr(err, "errors", [str(err)]):
                    print(f"    {line}")
                failed += 1

    if args.self_test:
        for ok, line in run_self_tests(crds, documents):
            print(line)
            passed += ok
            failed += not ok

    verdict = "ok" if failed == 0 else "FAILED"
    print(f"test result: {verdict}. {passed} passed; {failed} failed (Istio manifests, tools/validate_istio.py)")
    sys.exit(0 if failed == 0 else 1)


if __name__ == "__main__":
    main()
