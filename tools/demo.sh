#!/usr/bin/env bash
# oob-mirror demo: a real Envoy with the filter in front of a demo upstream,
# the sink as the analysis node (OWASP CRS, `oob-mirror-node --detect`), and
# sample API traffic: the seed's test (`GET /etc/passwd`), SQL injection, XSS,
# command injection, a database error leaking in a response, and benign calls.
#
#   make demo            (builds everything first; or run this script directly)
#   make demo PROTOCOL=ext_proc   the same traffic as Envoy ext_proc streams, which the
#                                 same node reads
#
# Environment (all optional):
#   ENVOY_BIN        Envoy binary            (`make demo` passes it; see `make setup`)
#   OOB_MIRROR_WASM  the filter module       (default: dist/oob_mirror.wasm, see `make wasm`)
#   SINK_BIN         the analysis node       (default: target/release/oob-mirror-node, `make sink`)
#   PROTOCOL         batch (default) or ext_proc
#   PYTHON           python3 interpreter     (default: python3)
#
# Every process it starts is stopped on exit, whatever happens. Exit status 0
# when the analysis node received every expected exchange and reported
# every attack and no benign call; otherwise non-zero, with Envoy's log printed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

ENVOY_BIN=${ENVOY_BIN:-$ROOT/.envoy/1.40.0/bin/envoy}
OOB_MIRROR_WASM=${OOB_MIRROR_WASM:-$ROOT/dist/oob_mirror.wasm}
SINK_BIN=${SINK_BIN:-$ROOT/target/release/oob-mirror-node}
PYTHON=${PYTHON:-python3}
PROTOCOL=${PROTOCOL:-batch}

STARTUP_TIMEOUT_S=30  # Envoy compiles the module at start-up
RECORDS_TIMEOUT_S=15

WORK=$(mktemp -d -t oob-mirror-demo.XXXXXX)
PIDS=()
NAMES=()

say() { printf '%s\n' "$*"; }
section() { printf '\n==> %s\n' "$*"; }

print_logs() {
  local f
  for f in envoy.err sink.err sink.out upstream.err; do
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
  batch | ext_proc) [[ -x "$SINK_BIN" ]] || die "no sink at $SINK_BIN (run: make sink)" ;;
  *) die "PROTOCOL is batch or ext_proc, not '$PROTOCOL'" ;;
esac
case "$OOB_MIRROR_WASM" in /*) ;; *) OOB_MIRROR_WASM=$ROOT/$OOB_MIRROR_WASM ;; esac

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
section "Starting the demo upstream, the analysis node (sink) and Envoy"
start "demo upstream" upstream "$PYTHON" tools/demo_upstream.py --listen "127.0.0.1:$UPSTREAM_PORT"
if [[ $PROTOCOL == ext_proc ]]; then
  # The same node reads ext_proc streams (one per exchange) on the same port.
  start "sink" sink "$SINK_BIN" --listen "127.0.0.1:$NODE_PORT" --detect
else
  start "sink" sink "$SINK_BIN" --listen "127.0.0.1:$NODE_PORT" --detect --print-records
fi
start "envoy" envoy "$ENVOY_BIN" -c "$WORK/envoy.yaml" --concurrency 1 \
  --log-level warn --disable-hot-restart

wait_until "$STARTUP_TIMEOUT_S" "the demo upstream" grep -q 'listening on' "$WORK/upstream.err"
wait_until "$STARTUP_TIMEOUT_S" "the sink" grep -q 'listening on' "$WORK/sink.err"
wait_until "$STARTUP_TIMEOUT_S" "Envoy /ready" curl -fs -o /dev/null "$ADMIN/ready"
say "upstream 127.0.0.1:$UPSTREAM_PORT   sink 127.0.0.1:$NODE_PORT   envoy $BASE (admin $ADMIN)"

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
# sink.out holds records (with "kind") and detections (with "rules"), one per line.
records() { grep -c '"kind":' "$WORK/sink.out" 2>/dev/null || true; }
have_records() { (($(records) >= EXPECTED)); }
wait_until "$RECORDS_TIMEOUT_S" "$EXPECTED records at the sink" have_records
section "What the analysis node received: $(records) records (expected $EXPECTED); the seed test's two:"
"$PYTHON" - "$WORK/sink.out" <<'EOF'
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
grep '"rules":' "$WORK/sink.out" || true
ATTACKS="${ATTACKS[*]}" BENIGN="${BENIGN[*]}" "$PYTHON" - "$WORK/sink.out" <<'EOF' || exit 1
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

section "The node's Attacks page: $NODE/attacks (as text)"
curl -fsS "$NODE/attacks" | "$PYTHON" -c '
import html.parser, sys

class Text(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.row, self.cell, self.skip = [], [], False
    def handle_starttag(self, tag, attrs):
        if tag in ("style", "title"):
            self.skip = True
        if tag == "li":
            self.cell.append("\n      ")
        elif tag == "br":
            self.cell.append(": ")
    def handle_endtag(self, tag):
        if tag in ("style", "title"):
            self.skip = False
        elif tag in ("td", "th"):
            self.row.append("".join(self.cell).strip())
            self.cell = []
        elif tag == "tr":
            print("  " + " | ".join(self.row))
            self.row = []
        elif tag in ("h1", "p"):
            print("".join(self.cell).strip())
            self.cell = []
    def handle_data(self, data):
        if not self.skip:
            self.cell.append(data)

Text().feed(sys.stdin.read())
'
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

if [[ $PROTOCOL == ext_proc ]]; then
  section "Done: $EXCHANGES exchanges mirrored as $(node_metric extproc_streams_total) ext_proc streams, ${#ATTACKS[@]} attacks reported by the node; stopping everything"
else
  section "Done: $EXCHANGES exchanges mirrored, $(records) records received, ${#ATTACKS[@]} attacks reported by the node; stopping everything"
fi
