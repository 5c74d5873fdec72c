#!/usr/bin/env bash
# oob-mirror demo: a real Envoy with the filter in front of a demo upstream,
# the analysis node (OWASP CRS, `oob-mirror-node`, its store in the demo's
# temporary directory), and sample API traffic: the seed's test
# (`GET /etc/passwd`), SQL injection, XSS, command injection, a database error
# leaking in a response, and benign calls. The attacks are checked in the node's
# JSON lines and through its API; then the node is restarted on the same port
# and store, and the API and the console must list the same attacks.
#
#   make demo            (builds everything first; or run this script directly)
#   make demo PROTOCOL=ext_proc   the same traffic as Envoy ext_proc streams, which the
#                                 same node reads
#   DEMO_KEEP=1 make demo         at the end, keep the node, Envoy and the upstream running
#                                 until Ctrl-C, to open the console
#
# Environment (all optional):
#   ENVOY_BIN        Envoy binary            (`make demo` passes it; see `make setup`)
#   OOB_MIRROR_WASM  the filter module       (default: dist/oob_mirror.wasm, see `make wasm`)
#   NODE_BIN         the analysis node       (default: target/release/oob-mirror-node, `make node`;
#                    SINK_BIN, its old name, is still read, for one release)
#   PROTOCOL         batch (default) or ext_proc
#   DEMO_KEEP        1: keep everything running at the end until Ctrl-C (default: stop)
#   PYTHON           python3 interpreter     (default: python3)
#
# Every process it starts is stopped on exit, whatever happens, and its
# temporary directory (the node's store with it) removed. Exit status 0 when
# the analysis node received every expected exchange, reported every attack and
# no benign call, stored exactly those attacks, and listed the same ones after
# its restart; otherwise non-zero, with the logs printed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

ENVOY_BIN=${ENVOY_BIN:-$ROOT/.envoy/1.40.0/bin/envoy}
OOB_MIRROR_WASM=${OOB_MIRROR_WASM:-$ROOT/dist/oob_mirror.wasm}
if [[ -z ${NODE_BIN:-} && -n ${SINK_BIN:-} ]]; then
  printf 'note: SINK_BIN is the old name of NODE_BIN (read for one release)\n' >&2
  NODE_BIN=$SINK_BIN
fi
NODE_BIN=${NODE_BIN:-$ROOT/target/release/oob-mirror-node}
PYTHON=${PYTHON:-python3}
PROTOCOL=${PROTOCOL:-batch}
DEMO_KEEP=${DEMO_KEEP:-0}

STARTUP_TIMEOUT_S=30  # Envoy compiles the module at start-up
RECORDS_TIMEOUT_S=15
STOP_TIMEOUT_S=15  # the node's exit on SIGTERM

WORK=$(mktemp -d -t oob-mirror-demo.XXXXXX)
PIDS=()
NAMES=()

say() { printf '%s\n' "$*"; }
section() { printf '\n==> %s\n' "$*"; }

print_logs() {
  local f
  for f in envoy.err node.err node.out node-restarted.err node-restarted.out upstream.err; do
    if [[ -s "$WORK/$f" ]]; then
      printf '\n----- %s (last 100 lines) -----\n' "$f" >&2
      tail -n 100 "$WORK/$f" >&2
    fi
  done
}

cleanup() {
  local rc=$?
  # Runs once, to the end: a closed stdout (e.g. `| head`) must not stop it.
  trap - EXIT INT TERM
  trap '' PIPE
  set +e
  local pid
  for pid in ${PIDS[@]+"${PIDS[@]}"}; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in ${PIDS[@]+"${PIDS[@]}"}; do
    wait "$pid" 2>/dev/null || true
  done
  if [[ $rc -ne 0 ]]; then
    print_logs
    printf '\ndemo FAILED (exit %d)\n' "$rc" >&2
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 141' PIPE

die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

# start NAME LOGBASE CMD... : run CMD in the background, stdout to
# $WORK/LOGBASE.out and stderr to $WORK/LOGBASE.err.
start() {
  local name=$1 log=$2
  shift 2
  "$@" >"$WORK/$log.out" 2>"$WORK/$log.err" &
  PIDS+=("$!")
  NAMES+=("$name")
}

check_alive() {
  local i
  for i in "${!PIDS[@]}"; do
    if ! kill -0 "${PIDS[$i]}" 2>/dev/null; then
      die "${NAMES[$i]} exited unexpectedly"
    fi
  done
}

# wait_until SECONDS DESCRIPTION CMD... : bounded poll, every 0.1 s.
wait_until() {
  local limit=$1 what=$2
  shift 2
  local deadline=$((SECONDS + limit))
  until "$@"; do
    check_alive
    if ((SECONDS >= deadline)); then
      die "timed out after ${limit}s waiting for $what"
    fi
    sleep 0.1
  done
}

# --- prerequisites ---------------------------------------------------------
command -v curl >/dev/null || die "curl is required"
command -v "$PYTHON" >/dev/null || die "$PYTHON is required"
[[ -x "$ENVOY_BIN" ]] || die "no Envoy at $ENVOY_BIN (run: make setup)"
[[ -f "$OOB_MIRROR_WASM" ]] || die "no filter module at $OOB_MIRROR_WASM (run: make wasm)"
case "$PROTOCOL" in
  batch | ext_proc) [[ -x "$NODE_BIN" ]] || die "no analysis node at $NODE_BIN (run: make node)" ;;
  *) die "PROTOCOL is batch or ext_proc, not '$PROTOCOL'" ;;
esac
case "$OOB_MIRROR_WASM" in /*) ;; *) OOB_MIRROR_WASM=$ROOT/$OOB_MIRROR_WASM ;; esac
case "$DEMO_KEEP" in 0 | 1) ;; *) die "DEMO_KEEP is 0 or 1, not '$DEMO_KEEP'" ;; esac

# --- free ports ------------------------------------------------------------
ports=$("$PYTHON" -c '
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
')
read -r LISTEN_PORT ADMIN_PORT UPSTREAM_PORT NODE_PORT <<<"$ports"

# --- render envoy/envoy.yaml -----------------------------------------------
# The repository file uses fixed defaults (listener 10000, admin 9901, upstream
# 8080, node 9090, module dist/oob_mirror.wasm); replace each of them once.
wasm_sed=$(printf '%s' "$OOB_MIRROR_WASM" | sed -e 's/[\\&|]/\\&/g')
sed -e "s|port_value: 10000 }|port_value: $LISTEN_PORT }|" \
    -e "s|port_value: 9901 }|port_value: $ADMIN_PORT }|" \
    -e "s|port_value: 8080 }|port_value: $UPSTREAM_PORT }|" \
    -e "s|port_value: 9090 }|port_value: $NODE_PORT }|" \
    -e "s|address: 0.0.0.0,|address: 127.0.0.1,|" \
    -e "s|filename: dist/oob_mirror.wasm|filename: $wasm_sed|" \
    envoy/envoy.yaml >"$WORK/envoy.yaml"
if [[ $PROTOCOL == ext_proc ]]; then
  # The same bootstrap with the filter in ext_proc mode and the node cluster on HTTP/2 (gRPC).
  sed -i -e 's|{"node":{"cluster":"oob_mirror_node",.*}}$|{"node":{"cluster":"oob_mirror_node","protocol":"ext_proc"}}|' \
    -e 's|^    connect_timeout: 0.25s$|&\
    typed_extension_protocol_options:\
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\
        explicit_http_config: { http2_protocol_options: {} }|' "$WORK/envoy.yaml"
  for want in '"protocol":"ext_proc"' 'http2_protocol_options'; do
    [[ $(grep -cF -- "$want" "$WORK/envoy.yaml") -eq 1 ]] ||
      die "could not switch envoy/envoy.yaml to ext_proc ('$want')"
  done
fi
for want in "port_value: $LISTEN_PORT }" "port_value: $ADMIN_PORT }" \
  "port_value: $UPSTREAM_PORT }" "port_value: $NODE_PORT }" "filename: $OOB_MIRROR_WASM"; do
  [[ $(grep -cF -- "$want" "$WORK/envoy.yaml") -eq 1 ]] ||
    die "could not render envoy/envoy.yaml ('$want'); were its default ports or module path changed?"
done

BASE="http://127.0.0.1:$LISTEN_PORT"
ADMIN="http://127.0.0.1:$ADMIN_PORT"

# --- start -----------------------------------------------------------------
section "Starting the demo upstream, the analysis node and Envoy"
start "demo upstream" upstream "$PYTHON" tools/demo_upstream.py --listen "127.0.0.1:$UPSTREAM_PORT"
# The node's store: the default SQLite file in its data directory, inside $WORK.
NODE_DATA=$WORK/node-data
NODE_ARGS=(--listen "127.0.0.1:$NODE_PORT" --data-dir "$NODE_DATA")
# The same node reads ext_proc streams (one per exchange) on the same port; with batches it
# prints the records it receives too.
[[ $PROTOCOL == ext_proc ]] || NODE_ARGS+=(--print-records)
start "node" node "$NODE_BIN" "${NODE_ARGS[@]}"
NODE_INDEX=$((${#PIDS[@]} - 1))
start "envoy" envoy "$ENVOY_BIN" -c "$WORK/envoy.yaml" --concurrency 1 \
  --log-level warn --disable-hot-restart

wait_until "$STARTUP_TIMEOUT_S" "the demo upstream" grep -q 'listening on' "$WORK/upstream.err"
wait_until "$STARTUP_TIMEOUT_S" "the node" grep -q 'listening on' "$WORK/node.err"
wait_until "$STARTUP_TIMEOUT_S" "Envoy /ready" curl -fs -o /dev/null "$ADMIN/ready"
say "upstream 127.0.0.1:$UPSTREAM_PORT   node 127.0.0.1:$NODE_PORT (store: $NODE_DATA/attacks.sqlite)"
say "envoy $BASE (admin $ADMIN)"

# --- traffic ---------------------------------------------------------------
section "Client traffic through Envoy"
# Each request names itself in x-request-id (reported as request_id), so the
# detections below say which request they are about; ATTACKS lists those that must be reported.
EXCHANGES=0
ATTACKS=()
BENIGN=()
send() {
  local kind=$1 name=$2 want=$3 code
  shift 3
  code=$(curl -sS -o "$WORK/response" -w '%{http_code}' -H "x-request-id: $name" "$@") ||
    die "curl failed: $name"
  EXCHANGES=$((EXCHANGES + 1))
  if [[ $kind == attack ]]; then ATTACKS+=("$name"); else BENIGN+=("$name"); fi
  printf '%-7s %-22s -> %s %s\n' "$kind" "$name" "$code" "$(head -c 100 "$WORK/response" | tr -d '\n')"
  [[ $code == "$want" ]] || die "expected $want for $name, got $code"
}
JSON=(-H 'content-type: application/json')
# The seed's acceptance test.
send attack seed-etc-passwd 200 "$BASE/etc/passwd"
send attack sqli-query 200 "$BASE/api/products?id=1%27%20OR%20%271%27%3D%271"
send attack xss-json-body 200 "${JSON[@]}" -d '{"comment":"<script>alert(document.cookie)</script>"}' \
  "$BASE/api/comments"
send attack cmd-injection-form 200 -d 'host=127.0.0.1%3Bcat%20/etc/passwd' "$BASE/api/ping"
send attack db-error-leak 500 "$BASE/api/reports/7"
send benign get-user 200 "$BASE/api/users/42?fields=name,email"
send benign login 200 "${JSON[@]}" -d '{"user":"alice","password":"s3cret!"}' "$BASE/api/login"
send benign put-user 200 -X PUT "${JSON[@]}" -d '{"name":"Conan O'"'"'Brien","city":"Zürich"}' "$BASE/api/users/42"
send benign patch-user 200 -X PATCH "${JSON[@]}" -d '{"nickname":"Zoë"}' "$BASE/api/users/42"
send benign delete-user 200 -X DELETE "$BASE/api/users/42"

# --- what the node received --------------------------------------------------
NODE="http://127.0.0.1:$NODE_PORT"
node_metric() {
  curl -fsS "$NODE/metrics" 2>/dev/null | sed -n "s/^oob_mirror_node_$1 \([0-9]*\)\$/\1/p"
}
all_analysed() { (($(node_metric exchanges_analysed_total || echo 0) >= EXCHANGES)); }
if [[ $PROTOCOL == batch ]]; then
EXPECTED=$((EXCHANGES * 2)) # one request and one response record per exchange
# node.out holds records (with "kind") and detections (with "rules"), one per line.
records() { grep -c '"kind":' "$WORK/node.out" 2>/dev/null || true; }
have_records() { (($(records) >= EXPECTED)); }
wait_until "$RECORDS_TIMEOUT_S" "$EXPECTED records at the node" have_records
section "What the analysis node received: $(records) records (expected $EXPECTED); the seed test's two:"
"$PYTHON" - "$WORK/node.out" <<'EOF'
import json, sys

def show(rec):
    # One key per line and one header per line: readable, and still JSON.
    items = list(rec.items())
    out = ["{"]
    for i, (key, val) in enumerate(items):
        comma = "," if i < len(items) - 1 else ""
        k = json.dumps(key)
        if isinstance(val, list) and val:
            inner = ",\n".join("    " + json.dumps(e, ensure_ascii=False) for e in val)
            out.append("  %s: [\n%s\n  ]%s" % (k, inner, comma))
        else:
            out.append("  %s: %s%s" % (k, json.dumps(val, ensure_ascii=False), comma))
    out.append("}")
    return "\n".join(out)

records = []
with open(sys.argv[1], encoding="utf-8", errors="replace") as f:
    for line in f:
        try:
            rec = json.loads(line)
        except ValueError:
            print("(not JSON) %s" % line.strip())
            continue
        if isinstance(rec, dict) and "kind" in rec:
            records.append(rec)
# The record id is the filter's own; the seed request is found by the x-request-id it carried.
seed = {r["id"] for r in records
        if ["x-request-id", "seed-etc-passwd"] in r.get("headers", [])}
for rec in records:
    if rec["id"] in seed:
        print("--- %s record %s ---" % (rec["kind"], rec["id"]))
        print(show(rec))
EOF
fi
wait_until "$RECORDS_TIMEOUT_S" "$EXCHANGES exchanges analysed by the node" all_analysed

section "Attacks detected by the node (OWASP CRS): one JSON line per exchange"
grep '"rules":' "$WORK/node.out" || true
ATTACKS="${ATTACKS[*]}" BENIGN="${BENIGN[*]}" "$PYTHON" - "$WORK/node.out" <<'EOF' || exit 1
import json, os, sys

found = {}
with open(sys.argv[1], encoding="utf-8", errors="replace") as f:
    for line in f:
        try:
            d = json.loads(line)
        except ValueError:
            continue
        if isinstance(d, dict) and "rules" in d:
            found[d.get("request_id")] = d
print()
bad = 0
for name in os.environ["ATTACKS"].split():
    d = found.get(name)
    if d is None:
        print("MISSED  %-22s not reported" % name)
        bad += 1
    else:
        print("REPORTED %-21s %s %s -> %s: %s" % (name, d["method"], d["path"], d["status"],
              ", ".join("%d %s" % (r["id"], r["msg"]) for r in d["rules"])))
for name in os.environ["BENIGN"].split():
    if name in found:
        print("FALSE POSITIVE %s: %s" % (name, [r["id"] for r in found[name]["rules"]]))
        bad += 1
    else:
        print("clean    %s" % name)
sys.exit(1 if bad else 0)
EOF

# --- the store: the API and the console ------------------------------------
# demo_node.py reads the node's API and console (Python standard library only).
cat >"$WORK/demo_node.py" <<'EOF'
"""The demo's look at the node's store: through GET /api/v1/attacks and the /attacks console.

  wait-store URL N SECONDS      until the API lists N attacks
  snapshot URL FILE             the API's list and the console's rows (every attack), to FILE
  check FILE JSONLINES          the API's attacks against the node's JSON lines and EXPECT
  table FILE                    the attacks as a short table
  console URL                   the console page as text
  compare BEFORE AFTER URL      the same attacks before and after the restart; detail pages
"""
import html.parser, json, os, sys, time, urllib.request


def get(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status, r.read().decode("utf-8", "replace")


def api_list(node):
    status, body = get(node + "/api/v1/attacks?limit=500")
    if status != 200:
        sys.exit("GET /api/v1/attacks answered %d" % status)
    return json.loads(body)


class Text(html.parser.HTMLParser):
    """Table rows as cell lists, other paragraphs as lines; hrefs of the rows' links."""

    def __init__(self):
        super().__init__()
        self.row, self.cell, self.skip = [], [], False
        self.lines, self.rows, self.links = [], [], []

    def handle_starttag(self, tag, attrs):
        if tag in ("style", "title", "script"):
            self.skip = True
        if tag == "li":
            self.cell.append("\n      ")
        elif tag == "br":
            self.cell.append(": ")
        elif tag == "a" and self.row is not None:
            href = dict(attrs).get("href") or ""
            if href.startswith("/attacks/"):
                self.links.append(href)

    def handle_endtag(self, tag):
        if tag in ("style", "title", "script"):
            self.skip = False
        elif tag in ("td", "th"):
            self.row.append("".join(self.cell).strip())
            self.cell = []
        elif tag == "tr":
            self.rows.append(self.row)
            self.lines.append("  " + " | ".join(self.row))
            self.row = []
        elif tag in ("h1", "p"):
            self.lines.append("".join(self.cell).strip())
            self.cell = []

    def handle_data(self, data):
        if not self.skip:
            self.cell.append(data)


def console(node, query=""):
    status, body = get(node + "/attacks" + query)
    if status != 200:
        sys.exit("GET /attacks%s answered %d" % (query, status))
    t = Text()
    t.feed(body)
    return t


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "wait-store":
        node, want, limit = args[0], int(args[1]), float(args[2])
        deadline = time.monotonic() + limit
        while True:
            try:
                total = api_list(node)["total"]
            except OSError:
                total = None
            if total is not None and total >= want:
                return
            if time.monotonic() > deadline:
                sys.exit("the API lists %s attacks after %g s, not %d" % (total, limit, want))
            time.sleep(0.1)
    elif cmd == "snapshot":
        node, out = args
        listing = api_list(node)
        page = console(node, "?view=all")
        rows = [r for r in page.rows if r and r[0] != "Time"]
        match = [l for l in page.lines if "attacks in the store match" in l]
        with open(out, "w", encoding="utf-8") as f:
            json.dump({"api": listing, "console_rows": rows, "console_links": page.links,
                       "console_store_line": match[0].split(". ")[-1] if match else None}, f)
    elif cmd == "check":
        snap, jsonl = args
        api = json.load(open(snap, encoding="utf-8"))["api"]
        lines = {}
        for line in open(jsonl, encoding="utf-8", errors="replace"):
            try:
                d = json.loads(line)
            except ValueError:
                continue
            if isinstance(d, dict) and "rules" in d:
                lines[d.get("request_id")] = d
        # EXPECT: request-id=class:class,class ... (the primary class, then every class)
        want = {}
        for item in os.environ["EXPECT"].split():
            name, _, classes = item.partition("=")
            primary, _, every = classes.partition(":")
            want[name] = (primary, every.split(","))
        got = {a["request_id"]: a for a in api["items"]}
        bad = []
        if api["total"] != len(want) or len(api["items"]) != len(want):
            bad.append("the API lists %d attacks (total %d), not %d"
                       % (len(api["items"]), api["total"], len(want)))
        for name in sorted(set(got) - set(want)):
            bad.append("the API lists an attack that is not one: %s" % name)
        for name, (primary, every) in want.items():
            a, d = got.get(name), lines.get(name)
            if a is None:
                bad.append("%s: not in the API" % name)
                continue
            if d is None:
                bad.append("%s: no JSON line" % name)
                continue
            problems = []
            for field in ("id", "method", "path", "class"):
                if a[field] != d.get(field):
                    problems.append("%s %r, JSON line %r" % (field, a[field], d.get(field)))
            if a["class"] != primary or a["classes"] != every:
                problems.append("classes %s %s, expected %s %s"
                                % (a["class"], a["classes"], primary, every))
            rules = sorted(r["id"] for r in a["rules"])
            if rules != sorted(r["id"] for r in d["rules"]):
                problems.append("rules %s, JSON line %s"
                                % (rules, sorted(r["id"] for r in d["rules"])))
            if problems:
                bad.append("%s: %s" % (name, "; ".join(problems)))
            else:
                print("STORED   %-21s id %s, class %s" % (name, a["id"], ",".join(a["classes"])))
        for b in bad:
            print("MISMATCH " + b)
        sys.exit(1 if bad else 0)
    elif cmd == "table":
        api = json.load(open(args[0], encoding="utf-8"))["api"]
        print("  %-24s  %-12s  %-6s  %-44s  %s" % ("time", "class", "method", "path", "rules"))
        for a in api["items"]:
            path = a["path"] if len(a["path"]) <= 44 else a["path"][:41] + "..."
            print("  %-24s  %-12s  %-6s  %-44s  %s" % (
                a["ts"], ",".join(a["classes"]), a["method"], path,
                " ".join(str(r["id"]) for r in a["rules"])))
        print("  (%d attacks; ids %s)" % (api["total"], " ".join(a["id"] for a in api["items"])))
    elif cmd == "console":
        node = args[0]
        print("\n".join(console(node).lines))
    elif cmd == "compare":
        before, after = (json.load(open(f, encoding="utf-8")) for f in args[:2])
        node = args[2]
        bad = []
        print("attacks in the API: %d before the restart, %d after"
              % (before["api"]["total"], after["api"]["total"]))
        print("console (/attacks?view=all): %d rows before, %d after; it says %r before, %r after"
              % (len(before["console_rows"]), len(after["console_rows"]),
                 before["console_store_line"], after["console_store_line"]))
        if before["api"] != after["api"]:
            bad.append("the API lists other attacks after the restart")
        if before["console_rows"] != after["console_rows"] or not after["console_rows"]:
            bad.append("the console lists other attacks after the restart")
        if before["console_store_line"] != after["console_store_line"]:
            bad.append("the console counts other attacks after the restart")
        if before["console_links"] != after["console_links"]:
            bad.append("the console links other attack pages after the restart")
        for a in after["api"]["items"]:
            status, body = get(node + "/attacks/" + a["id"])
            if status != 200 or (a["request_id"] or "") not in body:
                bad.append("the console's page of %s (%s) answered %d" % (a["id"], a["request_id"],
                                                                           status))
        if not bad:
            print("the same %d attacks before and after the restart, in the API and the "
                  "console; each one's page /attacks/ID answers" % after["api"]["total"])
        for b in bad:
            print("MISMATCH " + b)
        sys.exit(1 if bad else 0)
    else:
        sys.exit("unknown command " + cmd)


main()
EOF
node_py() { "$PYTHON" "$WORK/demo_node.py" "$@"; }
# What the node must store for each attack: its class, then all its classes (CRS rule ranges,
# node/src/analysis/classes.rs). The command injection reads /etc/passwd, so CRS's file-access
# rule (930120, LFI) matches it as well as its RCE rules; LFI comes first (the same severity).
EXPECT="seed-etc-passwd=lfi:lfi sqli-query=sqli:sqli xss-json-body=xss:xss
cmd-injection-form=lfi:lfi,rce db-error-leak=data_leakage:data_leakage"

section "The attacks in the node's store: $NODE/api/v1/attacks"
node_py wait-store "$NODE" "${#ATTACKS[@]}" "$RECORDS_TIMEOUT_S" || exit 1
node_py snapshot "$NODE" "$WORK/before.json" || exit 1
node_py table "$WORK/before.json"
say
EXPECT=$EXPECT node_py check "$WORK/before.json" "$WORK/node.out" || exit 1

section "The node's console: $NODE/attacks (as text)"
node_py console "$NODE" || exit 1
section "API discovery: the endpoints the node learned, $NODE/api/v1/inventory (page: $NODE/apis)"
# The inventory is written to the store every 5 s: wait until it counts every exchange.
NODE=$NODE EXCHANGES=$EXCHANGES TIMEOUT=$RECORDS_TIMEOUT_S "$PYTHON" - <<'EOF' || exit 1
import json, os, sys, time, urllib.parse, urllib.request
node, want = os.environ["NODE"], int(os.environ["EXCHANGES"])
deadline = time.time() + float(os.environ["TIMEOUT"]) + 10
def get(path):
    with urllib.request.urlopen(node + path, timeout=10) as r:
        return json.load(r)
while True:
    items = get("/api/v1/inventory?limit=500")["items"]
    seen = sum(e["count"] for e in items)
    if seen >= want or time.time() > deadline:
        break
    time.sleep(0.5)
print("%-7s %-24s %-36s %5s  %s" % ("method", "host", "template", "count", "sensitive data"))
for e in sorted(items, key=lambda e: (e["host"], e["template"], e["method"])):
    sensitive = ", ".join(sorted({s["type"] for s in e["sensitive"]})) or "-"
    print("%-7s %-24s %-36s %5d  %s" % (e["method"], e["host"], e["template"], e["count"], sensitive))
print("\n%d endpoints, %d of %d exchanges counted" % (len(items), seen, want))
if not items:
    sys.exit("the node learned no endpoint")
host = items[0]["host"]
doc = get("/api/v1/inventory/openapi.json?host=" + urllib.parse.quote(host))
print("\nOpenAPI 3.1 of %s (GET %s/api/v1/inventory/openapi.json?host=%s):" % (host, node, host))
print(json.dumps(doc, indent=2))
EOF
section "Node metrics: $NODE/metrics"
curl -fsS "$NODE/metrics" | grep -v '^#'

# --- metrics -----------------------------------------------------------------
# Let the last batch's acknowledgement land so the gauges settle (bounded).
stats() { curl -fsS "$ADMIN/stats?filter=oob_mirror%5C." 2>/dev/null || true; }
settled() {
  local s
  s=$(stats)
  grep -Eq 'oob_mirror\.inflight_records: 0$' <<<"$s" &&
    grep -Eq 'oob_mirror\.queued_records: 0$' <<<"$s" &&
    grep -Eq 'oob_mirror\.extproc_streams_active: 0$' <<<"$s"
}
deadline=$((SECONDS + 5))
until settled || ((SECONDS >= deadline)); do sleep 0.1; done

section "Filter metrics (Envoy admin $ADMIN/stats?filter=oob_mirror\\.)"
STATS=$(stats)
if [[ -z $STATS ]]; then
  say "(no oob_mirror metrics reported)"
else
  printf '%s\n' "$STATS"
  STATS=$STATS "$PYTHON" - <<'EOF'
import os, re
stats = {}
for line in os.environ["STATS"].splitlines():
    m = re.search(r"oob_mirror\.(\w+): (\d+)$", line)
    if m:
        stats[m.group(1)] = stats.get(m.group(1), 0) + int(m.group(2))
parts = ["records_sent", "records_dropped_queue_full", "records_dropped_node_failure",
         "queued_records", "inflight_records"]
if stats.get("records_captured") and all(p in stats for p in parts):
    total = sum(stats[p] for p in parts)
    ok = "holds" if total == stats["records_captured"] else "DOES NOT HOLD"
    print("\naccounting: records_captured %d = %s = %d  (%s)" % (
        stats["records_captured"], " + ".join("%s %d" % (p, stats[p]) for p in parts), total, ok))
parts = ["extproc_streams_completed", "extproc_streams_failed", "extproc_streams_cancelled",
         "extproc_streams_refused", "extproc_dropped_max_streams", "extproc_dropped_backoff",
         "extproc_streams_active"]
if stats.get("extproc_exchanges") and all(p in stats for p in parts):
    total = sum(stats[p] for p in parts)
    ok = "holds" if total == stats["extproc_exchanges"] else "DOES NOT HOLD"
    print("\naccounting: extproc_exchanges %d = %s = %d  (%s)" % (
        stats["extproc_exchanges"], " + ".join("%s %d" % (p, stats[p]) for p in parts), total, ok))
EOF
fi

# --- restart the node on the same port and store --------------------------------
# The node's counters start again at zero: the ext_proc streams it took are read before.
EXTPROC_STREAMS=$(node_metric extproc_streams_total)
section "Restarting the node (SIGTERM, then the same port and data directory)"
old_pid=${PIDS[$NODE_INDEX]}
kill -TERM "$old_pid"
deadline=$((SECONDS + STOP_TIMEOUT_S))
while kill -0 "$old_pid" 2>/dev/null; do
  ((SECONDS < deadline)) || die "the node did not exit within ${STOP_TIMEOUT_S}s of SIGTERM"
  sleep 0.1
done
node_rc=0
wait "$old_pid" || node_rc=$?
((node_rc == 0)) || die "the node exited with status $node_rc on SIGTERM"
say "node (pid $old_pid) exited 0 on SIGTERM"
"$NODE_BIN" "${NODE_ARGS[@]}" >"$WORK/node-restarted.out" 2>"$WORK/node-restarted.err" &
PIDS[NODE_INDEX]=$!
NAMES[NODE_INDEX]="node (restarted)"
wait_until "$STARTUP_TIMEOUT_S" "the restarted node" grep -qs 'listening on' "$WORK/node-restarted.err"
say "node (pid ${PIDS[$NODE_INDEX]}) listening again on 127.0.0.1:$NODE_PORT, store $NODE_DATA/attacks.sqlite"

section "The attacks after the restart, from the API"
node_py snapshot "$NODE" "$WORK/after.json" || exit 1
node_py table "$WORK/after.json"
say
node_py compare "$WORK/before.json" "$WORK/after.json" "$NODE" || exit 1

if [[ $PROTOCOL == ext_proc ]]; then
  section "Done: $EXCHANGES exchanges mirrored as $EXTPROC_STREAMS ext_proc streams, ${#ATTACKS[@]} attacks reported by the node, stored, and listed again after its restart"
else
  section "Done: $EXCHANGES exchanges mirrored, $(records) records received, ${#ATTACKS[@]} attacks reported by the node, stored, and listed again after its restart"
fi
say "Console: $NODE/attacks"
say "API:     $NODE/api/v1/attacks   (stats, export; described at $NODE/api/v1/openapi.json)"
if [[ $DEMO_KEEP == 1 ]]; then
  say "DEMO_KEEP=1: the node, Envoy ($BASE) and the demo upstream keep running; press Ctrl-C to stop them"
  say "(the store in $NODE_DATA is removed then)"
  trap 'say "Stopping everything."; exit 0' INT TERM
  while :; do
    check_alive
    sleep 1
  done
fi
say "Stopping everything (DEMO_KEEP=1 keeps the node and Envoy running until Ctrl-C)."
