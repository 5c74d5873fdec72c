#!/usr/bin/env python3
"""`make bench`: oob-mirror side by side with the other ways to copy traffic
out of Envoy, plus Envoy's idle memory with and without the module.

Cases, all on the same Envoy binary with --concurrency 1, behind the same
upstream (nginx serving fixed files) and loaded by wrk:
  (a) no filter            (b) oob-mirror (dist/oob_mirror.wasm)
  (c) native mirroring     (d) Lua filter, async httpCall with headers + body
  (e) ext_proc, observability mode, headers and streamed bodies both ways
  (f) oob-mirror in ext_proc mode (the same streams as (e), to the same processor)
  (g) an empty Proxy-Wasm filter: the floor any Proxy-Wasm filter pays
  (h) oob-mirror as an Envoy dynamic module (dist/liboob_mirror.so, `make dynmod`)
each with the node up and down (port closed), for GET, 1 KiB and 64 KiB POSTs.
The HTTP node of (b)-(d) is a second Envoy answering 200 (node-envoy.yaml); the
node of (e) and (f) is tools/extproc-sink.

The node part measures the analysis node itself (`oob-mirror-node --detect`,
OWASP CRS): exchanges analysed per second, and per core of CPU it used, for
four traffic mixes posted by `node-bench` as the filter posts batches, each with
the store off, with the default SQLite store and with a throwaway PostgreSQL
(when its server binaries are installed), and the ratios between them.

Environment: ENVOY_BIN (default .venv/bin/envoy; `make bench` passes its own),
OOB_MIRROR_WASM (default dist/oob_mirror.wasm), OOB_MIRROR_DYNMOD (default
dist/liboob_mirror.so), EXTPROC_SINK, NGINX_BIN.
Writes bench/results.json and renders bench/results.md from it. `--only memory`,
`--only throughput`, `--only node`... re-runs one part and keeps the others from
results.json.
Python 3 standard library only. Every process started is stopped and reaped,
on failure and on Ctrl-C too; a process that fails prints its log.
"""

import argparse
import datetime
import hashlib
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
OUT_DIR = ROOT / "bench"
WORK = ROOT / "target" / "bench"

READY_TIMEOUT_S = 60  # Envoy compiles the Wasm module at start-up
# ext_proc in observability mode holds a stream whose exchange was cut short
# (wrk stops mid-request) for deferred_close_timeout, 5 s by default.
DRAIN_TIMEOUT_S = 8
SMALL_BODY_BYTES = 128  # what a GET gets back
MEMORY_IDLE_S = 3
MEMORY_REQUESTS = 100


class Case:
    def __init__(self, key, name, fragment, node):
        self.key = key
        self.name = name
        self.fragment = fragment  # file in cases/, None for the bare Envoy
        self.node = node  # "http", "grpc" or None: which node the case talks to


CASES = [
    Case("a", "no filter", None, None),
    Case("g", "empty Proxy-Wasm filter", "empty-filter.yaml", None),
    Case("b", "oob-mirror", "oob-mirror.yaml", "http"),
    Case("c", "native mirror", "native-mirror.yaml", "http"),
    Case("d", "Lua httpCall", "lua.yaml", "http"),
    Case("e", "ext_proc observability", "ext-proc.yaml", "grpc"),
    Case("f", "oob-mirror ext_proc", "oob-mirror-extproc.yaml", "grpc"),
    Case("h", "oob-mirror dynamic module", "oob-mirror-dynmod.yaml", "http"),
]

# The cases that are oob-mirror mirroring in batches (the same accounting, the same checks).
BATCH_MIRRORS = ("b", "h")


def case_by_key(key):
    return next(c for c in CASES if c.key == key)


class Payload:
    def __init__(self, key, name, path, size):
        self.key = key
        self.name = name
        self.path = path
        self.size = size  # request body bytes; 0 = GET

    @property
    def response_bytes(self):
        return self.size or SMALL_BODY_BYTES


PAYLOADS = [
    Payload("get", "GET", "/small", 0),
    Payload("1k", "1 KiB POST", "/1k", 1024),
    Payload("64k", "64 KiB POST", "/64k", 65536),
]


class BenchError(Exception):
    pass


# --- processes ---------------------------------------------------------------

RUNNING = []

# The measured Envoy gets a core of its own and everything else (load generator, upstream,
# node) shares the other, so requests/s follow the proxy's cost, not a fight for cores.
PROXY_CPU, PEERS_CPU = ("0", "1") if (os.cpu_count() or 1) >= 2 else (None, None)


def pinned(argv, cpus):
    return ["taskset", "-c", cpus, *argv] if cpus else list(argv)


class Proc:
    """A child process logging to a file; stop() kills and reaps it."""

    def __init__(self, name, argv, stdout=None, cpus=PEERS_CPU, env=None):
        argv = pinned(argv, cpus)
        self.name = name
        self.log_path = WORK / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.popen = subprocess.Popen(
            [str(a) for a in argv],
            stdin=subprocess.DEVNULL,
            stdout=stdout if stdout is not None else self._log,
            stderr=self._log,
            env=env,
        )
        RUNNING.append(self)

    @property
    def pid(self):
        return self.popen.pid

    def alive(self):
        return self.popen.poll() is None

    def log_tail(self, lines=60):
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def fail(self, what):
        raise BenchError(f"{self.name}: {what}\n----- {self.name} log (last lines) -----\n"
                         f"{self.log_tail()}")

    def stop(self):
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()
        if self in RUNNING:
            RUNNING.remove(self)


def stop_all():
    for proc in list(reversed(RUNNING)):
        proc.stop()


def wait_until(what, check, timeout_s, proc=None):
    """Polls check() until it returns a true value; fails if proc dies."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if proc is not None and not proc.alive():
            proc.fail(f"exited ({proc.popen.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            if proc is not None:
                proc.fail(f"no {what} within {timeout_s} s")
            raise BenchError(f"no {what} within {timeout_s} s")
        time.sleep(0.05)


def free_port():
    """A port that was free a moment ago (for servers that cannot bind port 0
    and tell us, and for "nothing listens here" endpoints)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port, path, timeout=5):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def try_http_get(port, path):
    try:
        return http_get(port, path, timeout=2)
    except OSError:
        return None


# --- /proc -------------------------------------------------------------------

def cpu_ticks(pid):
    """utime + stime of the whole process (all threads), in clock ticks."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])


def memory_kib(pid):
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values["VmRSS"], values["VmHWM"]


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --- Envoy -------------------------------------------------------------------

class Envoy(Proc):
    def __init__(self, name, config, concurrency, cpus=PEERS_CPU):
        config_path = WORK / f"{name}.yaml"
        config_path.write_text(config)
        self.admin_path = WORK / f"{name}.admin"
        self.admin_path.unlink(missing_ok=True)
        super().__init__(name, [
            ENVOY_BIN, "-c", config_path, "--concurrency", concurrency,
            "--disable-hot-restart", "--admin-address-path", self.admin_path,
            "--log-level", "warn",
        ], cpus=cpus)
        self.admin_port = wait_until("admin address", self._admin_port, READY_TIMEOUT_S, self)
        wait_until("/ready", lambda: (try_http_get(self.admin_port, "/ready") or (0,))[0] == 200,
                   READY_TIMEOUT_S, self)
        self.port = wait_until("listener", self._listener_port, READY_TIMEOUT_S, self)
        # .venv/bin/envoy is a Python wrapper that execs the real binary, so
        # the pid we hold must now be Envoy itself, not Python.
        exe = os.path.basename(os.readlink(f"/proc/{self.pid}/exe"))
        if "python" in exe or "envoy" not in exe:
            self.fail(f"pid {self.pid} runs {exe}, not envoy: CPU and RSS would be wrong")

    def _admin_port(self):
        try:
            text = self.admin_path.read_text().strip()
        except OSError:
            return None
        return int(text.rsplit(":", 1)[1]) if text else None

    def _listener_port(self):
        got = try_http_get(self.admin_port, "/listeners?format=json")
        if not got or got[0] != 200:
            return None
        for listener in json.loads(got[1]).get("listener_statuses", []):
            if listener.get("name") == "main":
                port = listener["local_address"]["socket_address"].get("port_value", 0)
                return port or None
        return None

    def stats(self, pattern):
        """Counters and gauges whose name matches the regex, as {name: int}."""
        status, body = http_get(self.admin_port, "/stats?filter=" + pattern.replace(" ", "%20"))
        if status != 200:
            self.fail(f"/stats answered {status}")
        values = {}
        for line in body.decode().splitlines():
            name, sep, value = line.partition(": ")
            if sep and value.strip().lstrip("-").isdigit():
                values[name] = int(value)
        return values

    def stat(self, name):
        return self.stats("^" + re.escape(name) + "$").get(name, 0)


def render(template, values):
    for key, value in values.items():
        template = template.replace(f"@{key}@", str(value))
    left = sorted(set(re.findall(r"@[A-Z_]+@", template)))
    if left:
        raise BenchError(f"template placeholders not filled in: {', '.join(left)}")
    return template


def fragment_sections(path):
    """A case file's sections: {name: [lines]}, split at `# @section NAME`."""
    sections, current = {}, None
    for line in path.read_text().splitlines():
        marker = re.fullmatch(r"# @section (\w+)", line.strip())
        if marker:
            current = sections.setdefault(marker.group(1), [])
        elif current is not None:
            current.append(line)
    return sections


def case_config(case, upstream_port, node_port, extproc_port):
    sections = fragment_sections(HERE / "cases" / case.fragment) if case.fragment else {}
    lines = []
    for line in (HERE / "envoy.yaml").read_text().splitlines():
        marker = re.fullmatch(r"(\s*)# @section (\w+)", line)
        if marker:
            indent, name = marker.groups()
            lines.extend(indent + l if l.strip() else l for l in sections.pop(name, []))
        else:
            lines.append(line)
    if sections:
        raise BenchError(f"cases/{case.fragment}: no place in envoy.yaml for {sorted(sections)}")
    return render("\n".join(lines) + "\n", {
        "UPSTREAM_PORT": upstream_port, "NODE_PORT": node_port,
        "EXTPROC_PORT": extproc_port, "WASM": WASM, "EMPTY_WASM": EMPTY_WASM, "DYNMOD": DYNMOD,
        "LUA": HERE / "mirror.lua",
    })


# --- the other servers ---------------------------------------------------------

def start_upstream():
    www = WORK / "www"
    www.mkdir()
    for payload in PAYLOADS:
        (www / payload.path.lstrip("/")).write_bytes(b"u" * payload.response_bytes)
    port = free_port()
    conf = WORK / "nginx.conf"
    conf.write_text(render((HERE / "nginx.conf").read_text(), {"DIR": WORK, "PORT": port}))
    nginx = Proc("nginx", [NGINX, "-p", WORK, "-c", conf, "-e", WORK / "nginx-error.log"])
    wait_until("nginx answering", lambda: try_http_get(port, "/small"), READY_TIMEOUT_S, nginx)
    # The trick that makes nginx answer a POST with a file of the same size.
    for payload in PAYLOADS:
        status, body = post(port, payload)
        if status != 200 or len(body) != payload.response_bytes:
            nginx.fail(f"{payload.name} {payload.path}: {status}, {len(body)} bytes; "
                       f"expected 200, {payload.response_bytes}")
    nginx.port = port
    return nginx


def post(port, payload):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        if payload.size:
            conn.request("POST", payload.path, body=b"b" * payload.size,
                          headers={"Content-Type": "application/octet-stream"})
        else:
            conn.request("GET", payload.path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


# The slow node: the same Envoy, answering each batch after oob-mirror's node.timeout_ms
# (1 s by default) has passed, so every batch times out while the clients go on.
SLOW_NODE_DELAY = "2s"
SLOW_NODE_FAULT = f"""          - name: envoy.filters.http.fault
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
              delay:
                fixed_delay: {SLOW_NODE_DELAY}
                percentage: {{ numerator: 100, denominator: HUNDRED }}
"""


def start_node(slow=False):
    config = (HERE / "node-envoy.yaml").read_text()
    if slow:
        first_filter = "          - name: envoy.filters.http.buffer\n"
        config = config.replace(first_filter, SLOW_NODE_FAULT + first_filter)
    return Envoy("node-envoy-slow" if slow else "node-envoy", config, 1)


def start_extproc_sink():
    out_path = WORK / "extproc-sink.out"
    out = open(out_path, "wb")
    sink = Proc("extproc-sink", [EXTPROC_SINK, "--listen", "127.0.0.1:0"], stdout=out)
    sink.out_file, sink.out_path = out, out_path

    def port():
        match = re.search(r"listening on 127\.0\.0\.1:(\d+)", sink.log_path.read_text())
        return int(match.group(1)) if match else None

    sink.port = wait_until("extproc-sink listening", port, READY_TIMEOUT_S, sink)
    return sink


def extproc_counts(sink):
    """Stops the sink, which then prints what it counted."""
    sink.stop()
    sink.out_file.close()
    text = sink.out_path.read_text().strip()
    if not text:
        sink.fail("printed no counts on exit")
    return json.loads(text.splitlines()[-1])


# --- one run -------------------------------------------------------------------

def wrk(port, payload, seconds, connections):
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s",
            "-s", HERE / "post.lua", f"http://127.0.0.1:{port}{payload.path}", "--",
            payload.size]
    done = subprocess.run([str(a) for a in pinned(argv, PEERS_CPU)], capture_output=True, text=True,
                          timeout=seconds + 60)
    line = next((l for l in done.stdout.splitlines() if l.startswith("BENCH ")), None)
    if done.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return {k: int(v) for k, v in (f.split("=") for f in line.split()[1:])}


# Envoy prefixes the module's `oob_mirror.<name>` metrics with `wasmcustom.` (Proxy-Wasm) or
# `dynamicmodulescustom.` (dynamic module).
FILTER_STATS = r"^(wasmcustom|dynamicmodulescustom)\.oob_mirror\."
FILTER_MARK = "oob_mirror."


def filter_values(stats):
    """The module's metrics by their own names (`records_sent`, ...)."""
    return {k.split(FILTER_MARK, 1)[1]: v for k, v in stats.items() if FILTER_MARK in k}
NODE_CLUSTER_STATS = (r"^cluster\.(oob_mirror_node|extproc)\.(upstream_rq_total|upstream_rq_active"
                      r"|upstream_cx_connect_fail|upstream_rq_pending_overflow|upstream_rq_2xx)$")
NODE_STATS = r"^http\.node\.(downstream_rq_total|downstream_cx_rx_bytes_total)$"


class Drained:
    """Every exchange has ended and nothing more is on its way to the node, so
    the counts compare; queued records wait (in backoff) while the node is down.
    The module publishes its metrics on its tick (10 ms), so for (b) the counts
    must also read the same twice in a row (the poll is 50 ms apart)."""

    def __init__(self, envoy, case, node_up):
        self.envoy, self.case, self.node_up = envoy, case, node_up
        self.last_filter_stats = None

    def __call__(self):
        envoy = self.envoy
        if envoy.stat("http.bench.downstream_rq_active"):
            return False
        active = envoy.stats(r"^cluster\.(oob_mirror_node|extproc)\.upstream_rq_active$")
        if any(active.values()):
            return False
        if self.case.key not in BATCH_MIRRORS + ("f",):
            return True
        filter_stats = filter_values(envoy.stats(FILTER_STATS))
        stable = filter_stats == self.last_filter_stats
        self.last_filter_stats = filter_stats
        if self.case.key == "f":
            waiting = ("extproc_streams_active",)
        elif self.node_up:
            waiting = ("queued_records", "inflight_records")
        else:
            waiting = ("inflight_records",)
        return stable and not any(filter_stats.get(k, 0) for k in waiting)


def run_one(case, node_state, payload, ctx, args):
    """One measured run; `node_state` is "up", "down" (port closed) or "slow" (an HTTP node
    that answers after the filter's timeout)."""
    node_up = node_state != "down"
    http_node = case.node == "http" and node_up
    sink = start_extproc_sink() if case.node == "grpc" and node_up else None
    closed = free_port()
    node = ctx["slow_node"] if node_state == "slow" else ctx["node"]
    config = case_config(case, ctx["upstream"].port,
                         node.port if http_node else closed,
                         sink.port if sink else closed)
    node_before = node.stats(NODE_STATS)
    envoy = Envoy(f"envoy-{case.key}-{node_state}-{payload.key}", config, 1, cpus=PROXY_CPU)
    try:
        status, body = post(envoy.port, payload)
        if status != 200 or len(body) != payload.response_bytes:
            envoy.fail(f"{payload.name} through Envoy: {status}, {len(body)} bytes")
        if args.warmup > 0:
            wrk(envoy.port, payload, args.warmup, args.connections)
        ticks_before = cpu_ticks(envoy.pid)
        result = wrk(envoy.port, payload, args.seconds, args.connections)
        ticks = cpu_ticks(envoy.pid) - ticks_before
        rss_kib, hwm_kib = memory_kib(envoy.pid)
        try:
            # A slow node keeps the queue waiting in backoff, like a down one.
            drained = Drained(envoy, case, node_state == "up")
            drained_ok = wait_until("drain", drained, DRAIN_TIMEOUT_S)
        except BenchError:
            drained_ok = False
        envoy_stats = envoy.stats(FILTER_STATS)
        envoy_stats.update(envoy.stats(NODE_CLUSTER_STATS))
        envoy_stats.update(envoy.stats(r"^http\.bench\.downstream_rq_(total|completed|2xx|5xx)$"))
        envoy_stats.update(envoy.stats(r"^http\.bench\.ext_proc\."))
    finally:
        envoy.stop()
    node_after = node.stats(NODE_STATS)
    requests = result["requests"]
    run = {
        "case": case.key, "case_name": case.name, "node": node_state,
        "payload": payload.key, "payload_name": payload.name,
        "requests": requests,
        "rps": requests / (result["duration_us"] / 1e6),
        "p50_ms": result["p50_us"] / 1000, "p99_ms": result["p99_us"] / 1000,
        "max_ms": result["max_us"] / 1000,
        "cpu_us_per_req": ticks * 1e6 / CLOCK_TICKS / max(requests, 1),
        "cpu_cores": ticks / CLOCK_TICKS / (result["duration_us"] / 1e6),
        "rss_mib": rss_kib / 1024, "hwm_mib": hwm_kib / 1024,
        "non2xx": result["non2xx"],
        "socket_errors": result["connect_errors"] + result["read_errors"]
        + result["write_errors"] + result["timeouts"],
        "wrk": result,
        "drained": drained_ok,
        "envoy_stats": envoy_stats,
        "node_received": {k.split(".")[-1]: node_after.get(k, 0) - node_before.get(k, 0)
                          for k in node_after},
    }
    if sink:
        run["extproc_counts"] = extproc_counts(sink)
    run["sanity"] = sanity(run, case, payload)
    # Zeros say nothing and would only lengthen results.json.
    run["envoy_stats"] = {k: v for k, v in envoy_stats.items() if v}
    return run


def sanity(run, case, payload):
    """What the node got, in one line. Two kinds of remarks: "LOST" when the
    case delivered less than everything while the node was up (a result, e.g.
    the node or a limit could not keep up), "CHECK" when the run itself is not
    sound (client errors, broken accounting, a node that is down receiving)."""
    st = run["envoy_stats"]
    total = st.get("http.bench.downstream_rq_total", 0)
    # Exchanges wrk cut short when it stopped have no response; the ones that
    # must show up in full are those that completed.
    completed = st.get("http.bench.downstream_rq_completed", 0)
    node = run["node_received"]
    up, down = run["node"] == "up", run["node"] == "down"
    problems, losses = [], []

    def expect(ok, what, into):
        if not ok:
            into.append(what)

    if run["non2xx"] or run["socket_errors"]:
        problems.append(f"{run['non2xx']} non-2xx, {run['socket_errors']} socket errors")
    if not run["drained"]:
        problems.append("mirror traffic not drained in time")
    filt = filter_values(st)
    if case.node is None:
        text = f"{total} requests, node not used"
    elif case.node == "grpc":
        failed_open = st.get("http.bench.ext_proc.failure_mode_allowed", 0)
        if case.key == "f":
            exchanges = filt.get("extproc_exchanges", 0)
            accounted = sum(filt.get(k, 0) for k in (
                "extproc_streams_completed", "extproc_streams_failed",
                "extproc_streams_cancelled", "extproc_streams_refused",
                "extproc_dropped_max_streams", "extproc_dropped_backoff",
                "extproc_streams_active"))
            expect(exchanges == accounted,
                   f"accounting off: exchanges {exchanges} != {accounted}", problems)
            expect(exchanges == total, f"{exchanges} exchanges for {total} requests", problems)
            failed_open = (filt.get("extproc_dropped_max_streams", 0)
                           + filt.get("extproc_dropped_backoff", 0))
        if up:
            c = run.get("extproc_counts", {})
            text = (f"{total} requests; sink: {c.get('streams')} streams, "
                    f"{c.get('request_headers')} req + {c.get('response_headers')} resp headers, "
                    f"{c.get('request_body_bytes', 0) / 2**20:.1f} + "
                    f"{c.get('response_body_bytes', 0) / 2**20:.1f} MiB body")
            expect(c.get("request_headers", 0) >= total, f"{total - c.get('request_headers', 0)} "
                   f"requests not seen ({failed_open} streams failed open)", losses)
            expect(c.get("response_headers", 0) >= completed,
                   f"{completed - c.get('response_headers', 0)} responses not seen", losses)
            expect(c.get("request_body_bytes", 0) >= completed * payload.size,
                   "request bodies missing", losses)
        else:
            fails = st.get("cluster.extproc.upstream_cx_connect_fail", 0)
            text = (f"{total} requests; {fails} refused connections to the processor, "
                    f"{failed_open} streams failed open")
    else:
        got = node.get("downstream_rq_total", 0)
        rx = node.get("downstream_cx_rx_bytes_total", 0)
        overflow = st.get("cluster.oob_mirror_node.upstream_rq_pending_overflow", 0)
        if case.key in BATCH_MIRRORS:
            captured = filt.get("records_captured", 0)
            accounted = sum(filt.get(k, 0) for k in (
                "records_sent", "records_dropped_queue_full", "records_dropped_node_failure",
                "queued_records", "inflight_records"))
            expect(captured == accounted, f"accounting off: captured {captured} != {accounted}",
                   problems)
            # With the node down the queue fills and new exchanges are shed whole (counted).
            shed = filt.get("exchanges_shed", 0)
            expect(captured + 2 * shed == 2 * total,
                   f"{captured} records and {shed} exchanges shed for {total} exchanges", problems)
            text = (f"{total} requests; {shed} shed; {captured} records: "
                    f"{filt.get('records_sent', 0)} sent in "
                    f"{got} batches ({rx / 2**20:.1f} MiB), "
                    f"{filt.get('records_dropped_queue_full', 0)} dropped (queue full), "
                    f"{filt.get('records_dropped_node_failure', 0)} dropped (node failure), "
                    f"{filt.get('queued_records', 0)} queued; "
                    f"{filt.get('batches_failed_timeout', 0)} batches timed out, "
                    f"{filt.get('backoffs', 0)} backoffs")
            if up:
                expect(filt.get("records_sent", 0) == captured and shed == 0,
                       f"{captured - filt.get('records_sent', 0)} records not delivered, "
                       f"{shed} exchanges shed", losses)
        elif up:
            per = rx / got if got else 0
            text = (f"{total} requests; node got {got} requests, {per:.0f} B each on average; "
                    f"{overflow} overflowed the node cluster's circuit breaker")
            expect(got >= completed, f"{completed - got} requests not mirrored", losses)
            expect(per >= payload.size, "node requests smaller than the request body", problems)
        else:
            fails = st.get("cluster.oob_mirror_node.upstream_cx_connect_fail", 0)
            text = f"{total} requests; {fails} refused connections to the node"
        if down:
            expect(got == 0, f"node (down) got {got} requests", problems)
    run["lost"] = bool(losses)
    run["problem"] = bool(problems)
    return (text + ("" if not losses else " — LOST: " + "; ".join(losses))
            + ("" if not problems else " — CHECK: " + "; ".join(problems)))


def throughput(args, ctx):
    runs = []
    cases = [c for c in CASES if c.key in args.cases]
    payloads = [p for p in PAYLOADS if p.key in args.payloads]
    total = len(cases) * len(args.node) * len(payloads)
    n = 0
    for payload in payloads:
        for node_state in args.node:
            for case in cases:
                n += 1
                run = run_one(case, node_state, payload, ctx, args)
                runs.append(run)
                print(f"[{n}/{total}] {payload.name:<11} node {node_state:<4} "
                      f"({case.key}) {case.name:<22} {run['rps']:8.0f} rps  "
                      f"p50 {run['p50_ms']:6.2f} ms  p99 {run['p99_ms']:6.2f} ms  "
                      f"{run['cpu_us_per_req']:6.1f} CPU µs/req  {run['rss_mib']:5.1f} MiB  "
                      f"| {run['sanity']}", flush=True)
    return runs


def slow_node(args, ctx):
    """oob-mirror with a node that answers after the filter's timeout, next to the same run
    with the fast node: what a slow node costs the clients (p99) and how the filter sheds."""
    runs = []
    case = case_by_key("b")
    for payload in [p for p in PAYLOADS if p.key in ("get", "1k")]:
        for node_state in ("up", "slow"):
            run = run_one(case, node_state, payload, ctx, args)
            runs.append(run)
            print(f"[slow node] {payload.name:<11} node {node_state:<4} ({case.key}) "
                  f"{run['rps']:8.0f} rps  p50 {run['p50_ms']:6.2f} ms  "
                  f"p99 {run['p99_ms']:6.2f} ms  {run['cpu_us_per_req']:6.1f} CPU µs/req  "
                  f"| {run['sanity']}", flush=True)
    return runs


NODE_MIXES = [
    ("get", "benign GET, 200 B JSON answer"),
    ("json-1k", "JSON POST 1 KiB, 1 KiB JSON answer"),
    ("attacks", "attacks (OS file, SQLi, XSS, command injection) in turn"),
    ("download-64k", "GET, 64 KiB JSON answer"),
]


def node_metrics(port):
    status, body = http_get(port, "/metrics")
    if status != 200:
        raise BenchError(f"node /metrics answered {status}")
    values = {}
    for line in body.decode().splitlines():
        m = re.match(r"oob_mirror_node_(\w+) ([0-9.]+)$", line)
        if m:
            values[m.group(1)] = float(m.group(2))
    return values


# --- the node's store: none, SQLite, PostgreSQL ---------------------------------

PG_USER, PG_DATABASE, PG_PASSWORD = "oob", "oob", "bench-only-Pa55word"


def pg_bindir():
    """initdb and postgres: $OOB_MIRROR_PG_BINDIR, `pg_config --bindir`, else the newest
    /usr/lib/postgresql/*/bin (the order of node/tests/support/pg.rs); None: not installed."""
    def has_server(d):
        return (d / "initdb").is_file() and (d / "postgres").is_file()
    if os.environ.get("OOB_MIRROR_PG_BINDIR"):
        d = Path(os.environ["OOB_MIRROR_PG_BINDIR"])
        return d if has_server(d) else None
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        d = Path(out.stdout.strip())
        if out.returncode == 0 and has_server(d):
            return d
    found = sorted((int(d.name), d / "bin") for d in Path("/usr/lib/postgresql").glob("*")
                   if d.name.isdigit() and has_server(d / "bin"))
    return found[-1][1] if found else None


class PgServer:
    """A throwaway PostgreSQL server, as node/tests/support/pg.rs starts one: initdb in a
    temp dir, `postgres` on a free loopback port (as the `postgres` OS user when we are
    root, which PostgreSQL requires), ready when pg_isready says so. Its settings are
    PostgreSQL's defaults (fsync on), unlike the tests' fsync=off. One database per run."""

    def __init__(self, bindir):
        self.bindir = bindir
        self.as_postgres = os.geteuid() == 0
        self.root = Path(tempfile.mkdtemp(prefix="oob-mirror-bench-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.proc = None
        self.databases = 0
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self):
        bindir = self.bindir
        if self.as_postgres:
            self._run(["chown", "-R", "postgres:postgres", self.root], as_pg=False)
        pwfile = self.root / "superuser.pw"
        pwfile.write_text("unused\n")
        if self.as_postgres:
            self._run(["chown", "postgres:postgres", pwfile], as_pg=False)
        self._run([bindir / "initdb", "-D", self.data, "-U", "postgres", "-E", "UTF8",
                   "--locale=C", "--no-sync", "--auth-local=trust",
                   "--auth-host=scram-sha-256", f"--pwfile={pwfile}"])
        self.proc = Proc("postgres", self._argv(
            [bindir / "postgres", "-D", self.data, "-p", self.port, "-k", self.root,
             "-c", "listen_addresses=127.0.0.1"]), cpus=None)
        ready = [str(a) for a in self._argv([bindir / "pg_isready", "-h", self.root,
                                             "-p", self.port, "-t", "1", "-q"])]
        wait_until("PostgreSQL ready", lambda: subprocess.run(
            ready, stdin=subprocess.DEVNULL).returncode == 0, READY_TIMEOUT_S, self.proc)
        self.psql(f"CREATE USER {PG_USER} PASSWORD '{PG_PASSWORD}'")

    def _argv(self, argv):
        if self.as_postgres:
            return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--",
                    *argv]
        return list(argv)

    def _run(self, argv, as_pg=True):
        argv = [str(a) for a in (self._argv(argv) if as_pg else argv)]
        out = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if out.returncode != 0:
            raise BenchError(f"{' '.join(argv)} failed ({out.returncode}):\n"
                             f"{out.stdout}{out.stderr}")

    def psql(self, sql):
        self._run([self.bindir / "psql", "-h", self.root, "-p", self.port, "-U", "postgres",
                   "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-X", "-q", "-c", sql])

    def new_database(self):
        """A fresh database owned by the node's user; its URL (the password apart)."""
        self.databases += 1
        name = f"{PG_DATABASE}{self.databases}"
        self.psql(f"CREATE DATABASE {name} OWNER {PG_USER}")
        return f"postgres://{PG_USER}@127.0.0.1:{self.port}/{name}"

    def cpu_ticks(self):
        """The server's CPU so far: the postmaster and its children (backends, WAL writer,
        checkpointer...) alive now."""
        if self.proc is None or not self.proc.alive():
            return 0
        total = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                text = stat.read_text()
            except OSError:
                continue
            fields = text[text.rindex(")") + 2:].split()
            if int(stat.parent.name) == self.proc.pid or int(fields[1]) == self.proc.pid:
                total += int(fields[11]) + int(fields[12])
        return total

    def stop(self):
        if self.proc is not None:
            if self.proc.alive():
                self.proc.popen.send_signal(signal.SIGINT)  # fast shutdown
            self.proc.stop()
            self.proc = None
        shutil.rmtree(self.root, ignore_errors=True)


STORE_NAMES = {"none": "off (`--store none`)",
               "sqlite-nodisc": "SQLite, API discovery off (`--inventory off`)",
               "sqlite": "SQLite (default: API discovery on)",
               "postgres": "PostgreSQL"}
STORE_COUNTERS = ("store_written_total", "store_dropped_queue_full_total", "store_failed_total")


def node_run(args, mix, label, store, pg, threads):
    """One node, one mix, one store: the node started fresh (its store empty), loaded by
    node-bench for the measured seconds; the clock and the CPU count run until the node's
    queue is drained and, with a store, every attack is written (or counted as dropped or
    failed)."""
    port = free_port()
    argv = [SINK, "--detect", "--listen", f"127.0.0.1:{port}", "--threads", threads]
    env, data_dir = None, None
    if store == "none":
        argv += ["--store", "none"]
    elif store in ("sqlite", "sqlite-nodisc"):
        data_dir = Path(tempfile.mkdtemp(prefix=f"node-{mix}-", dir=WORK))
        argv += ["--data-dir", data_dir]  # the default store: <data-dir>/attacks.sqlite
        if store == "sqlite-nodisc":
            argv += ["--inventory", "off"]
    else:
        argv += ["--store", pg.new_database()]
        env = {**os.environ, "OOB_MIRROR_NODE_STORE_PASSWORD": PG_PASSWORD}
    sink = Proc(f"node-{mix}-{store}", argv, stdout=subprocess.DEVNULL, cpus=None, env=env)
    wait_until("node listening", lambda: "listening on" in sink.log_path.read_text(),
               READY_TIMEOUT_S, sink)
    ticks0, t0 = cpu_ticks(sink.pid), time.monotonic()
    pg_ticks0 = pg.cpu_ticks() if store == "postgres" else 0
    load = subprocess.run([NODE_BENCH, "--node", f"127.0.0.1:{port}", "--mix", mix,
                           "--seconds", str(args.seconds), "--connections", "4"],
                          capture_output=True, text=True)
    if load.returncode != 0:
        sink.fail(f"node-bench failed: {load.stderr.strip()}")
    sent = json.loads(load.stdout.strip().splitlines()[-1])

    def analysed():
        m = node_metrics(port)
        return m if m["exchanges_analysed_total"] >= sent["exchanges"] else None

    def stored():
        m = node_metrics(port)
        if m["exchanges_analysed_total"] < sent["exchanges"]:
            return None
        if store == "none":
            return m
        done = sum(m.get(k, 0) for k in STORE_COUNTERS)
        return m if done >= m["exchanges_with_attacks_total"] \
            and m.get("store_queued", 0) == 0 else None

    wait_until("analysis drained", analysed, 120, sink)
    t_analysed = time.monotonic()
    drained = wait_until("every attack written", stored, 120, sink)
    wall = time.monotonic() - t0
    cpu_s = (cpu_ticks(sink.pid) - ticks0) / CLOCK_TICKS
    pg_cpu_s = (pg.cpu_ticks() - pg_ticks0) / CLOCK_TICKS if store == "postgres" else None
    sink.stop()
    store_bytes = None
    if data_dir is not None:
        store_bytes = sum(f.stat().st_size for f in data_dir.rglob("*") if f.is_file())
        shutil.rmtree(data_dir, ignore_errors=True)
    n = drained["exchanges_analysed_total"]
    row = {"mix": mix, "mix_name": label, "store": store, "threads": threads, "seconds": wall,
           "store_lag_s": time.monotonic() - t_analysed if store != "none" else 0.0,
           "analysed": n, "attacks": drained["exchanges_with_attacks_total"],
           "refused_503": sent["refused_503"], "cpu_s": cpu_s,
           "per_s": n / wall, "per_core_s": n / cpu_s if cpu_s else 0,
           "cpu_us": cpu_s * 1e6 / n if n else 0}
    if store != "none":
        row.update({k: drained.get(k, 0) for k in STORE_COUNTERS})
        row["store_bytes"] = store_bytes
        row["db_cpu_s"] = pg_cpu_s
    want_attacks = n if mix == "attacks" else 0
    accounted = store == "none" or (
        sum(row[k] for k in STORE_COUNTERS) == row["attacks"]
        and row["store_failed_total"] == 0)
    row["sane"] = n == sent["exchanges"] and row["attacks"] == want_attacks and accounted
    return row


def node(args):
    """The analysis node alone: one node per mix and store, analysis threads = cores,
    loaded by node-bench (4 connections) for the measured seconds; the rate counts until
    the node's queue is drained (and its store written), the per-core figure divides by
    the CPU time it used. Every mix runs with each store in turn, then again in the
    reverse order (--node-rounds), so a drift of the machine's load hits both sides."""
    rows = []
    threads = os.cpu_count() or 1
    stores = list(args.node_stores)
    pg = None
    if "postgres" in stores:
        bindir = pg_bindir()
        if bindir is None:
            print("node: PostgreSQL's server binaries not found (`make setup` installs them): "
                  "no PostgreSQL rows", flush=True)
            stores.remove("postgres")
        else:
            pg = PgServer(bindir)
    try:
        for mix, label in NODE_MIXES:
            for rnd in range(args.node_rounds):
                order = stores if rnd % 2 == 0 else stores[::-1]
                for store in order:
                    row = node_run(args, mix, label, store, pg, threads)
                    row["round"] = rnd + 1
                    rows.append(row)
                    written = ""
                    if store != "none":
                        written = (f", store: {row['store_written_total']:.0f} written, "
                                   f"{row['store_dropped_queue_full_total']:.0f} dropped, "
                                   f"{row['store_failed_total']:.0f} failed, "
                                   f"{row['store_lag_s']:.2f} s after analysis")
                    print(f"node: {label:<58} store {store:<8} round {rnd + 1} "
                          f"{row['per_s']:7.0f} exchanges/s  "
                          f"{row['per_core_s']:6.0f} per core-second  "
                          f"{row['cpu_us']:7.0f} CPU µs each  "
                          f"({row['analysed']:.0f} analysed, {row['attacks']:.0f} attacks, "
                          f"{row['refused_503']} batches answered 503{written})"
                          + ("" if row["sane"] else "  — CHECK: counts do not add up"),
                          flush=True)
    finally:
        if pg is not None:
            pg.stop()
    return rows


REPLICA_MIXES = [m for m in NODE_MIXES if m[0] in ("get", "attacks")]


def replicas_run(args, mix, label, count, pg):
    """`count` node replicas, one analysis thread each, sharing one fresh PostgreSQL
    database, each loaded by its own node-bench (2 connections) at once for the measured
    seconds; the clock runs until every replica has analysed what it was sent and written
    its attacks."""
    url = pg.new_database()
    env = {**os.environ, "OOB_MIRROR_NODE_STORE_PASSWORD": PG_PASSWORD}
    nodes = []
    for k in range(count):
        port = free_port()
        proc = Proc(f"replica-{mix}-{count}-{k}",
                    [SINK, "--listen", f"127.0.0.1:{port}", "--threads", "1", "--store", url],
                    stdout=subprocess.DEVNULL, cpus=None, env=env)
        wait_until("replica listening", lambda p=proc: "listening on" in p.log_path.read_text(),
                   READY_TIMEOUT_S, proc)
        nodes.append((proc, port))
    ticks0 = sum(cpu_ticks(p.pid) for p, _ in nodes)
    pg_ticks0 = pg.cpu_ticks()
    t0 = time.monotonic()
    loads = [subprocess.Popen([NODE_BENCH, "--node", f"127.0.0.1:{port}", "--mix", mix,
                               "--seconds", str(args.seconds), "--connections", "2"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _, port in nodes]
    sent = []
    for (proc, _), load in zip(nodes, loads):
        out, err = load.communicate()
        if load.returncode != 0:
            proc.fail(f"node-bench failed: {err.strip()}")
        sent.append(json.loads(out.strip().splitlines()[-1]))
    metrics = []
    for (proc, port), s in zip(nodes, sent):
        def done(port=port, s=s):
            m = node_metrics(port)
            if m["exchanges_analysed_total"] < s["exchanges"]:
                return None
            written = sum(m.get(k, 0) for k in STORE_COUNTERS)
            return m if written >= m["exchanges_with_attacks_total"] else None
        metrics.append(wait_until("replica drained", done, 180, proc))
    wall = time.monotonic() - t0
    cpu_s = (sum(cpu_ticks(p.pid) for p, _ in nodes) - ticks0) / CLOCK_TICKS
    pg_cpu_s = (pg.cpu_ticks() - pg_ticks0) / CLOCK_TICKS
    for proc, _ in nodes:
        proc.stop()
    n = sum(m["exchanges_analysed_total"] for m in metrics)
    attacks = sum(m["exchanges_with_attacks_total"] for m in metrics)
    written = sum(m.get("store_written_total", 0) for m in metrics)
    return {"mix": mix, "mix_name": label, "replicas": count, "seconds": wall, "analysed": n,
            "attacks": attacks, "written": written,
            "refused_503": sum(x["refused_503"] for x in sent), "cpu_s": cpu_s,
            "db_cpu_s": pg_cpu_s, "per_s": n / wall, "per_core_s": n / cpu_s if cpu_s else 0,
            "per_replica": [m["exchanges_analysed_total"] for m in metrics],
            "sane": n == sum(x["exchanges"] for x in sent)
            and attacks == (n if mix == "attacks" else 0) and written == attacks}


def replicas(args):
    """1, 2 and 3 replicas on this machine, sharing one PostgreSQL store."""
    bindir = pg_bindir()
    if bindir is None:
        print("replicas: PostgreSQL's server binaries not found (`make setup` installs them)",
              flush=True)
        return []
    pg = PgServer(bindir)
    rows = []
    try:
        for mix, label in REPLICA_MIXES:
            for count in (1, 2, 3):
                row = replicas_run(args, mix, label, count, pg)
                rows.append(row)
                print(f"replicas: {label:<58} {count} replica(s) {row['per_s']:7.0f} "
                      f"exchanges/s in all  {row['per_core_s']:6.0f} per node core-second  "
                      f"per replica {row['per_replica']}  "
                      f"({row['analysed']:.0f} analysed, {row['written']:.0f} attacks written, "
                      f"{row['refused_503']} batches answered 503)"
                      + ("" if row["sane"] else "  — CHECK: counts do not add up"), flush=True)
    finally:
        pg.stop()
    return rows


def node_summary(rows):
    """Per mix and store: the rounds' sums (rates over all rounds) and, per round, the
    ratio to the store-off run of the same round."""
    out = []
    mixes = list(dict.fromkeys(r["mix"] for r in rows))
    for mix in mixes:
        mine = [r for r in rows if r["mix"] == mix]
        off = {r.get("round", 1): r for r in mine if r.get("store", "none") == "none"}
        for store in dict.fromkeys(r.get("store", "none") for r in mine):
            rs = [r for r in mine if r.get("store", "none") == store]
            n = sum(r["analysed"] for r in rs)
            wall = sum(r["seconds"] for r in rs)
            cpu = sum(r["cpu_s"] for r in rs)
            s = {"mix": mix, "mix_name": rs[0]["mix_name"], "store": store, "rounds": len(rs),
                 "per_s": n / wall if wall else 0, "per_core_s": n / cpu if cpu else 0,
                 "cpu_us": cpu * 1e6 / n if n else 0, "analysed": n,
                 "attacks": sum(r["attacks"] for r in rs),
                 "refused_503": sum(r["refused_503"] for r in rs),
                 "sane": all(r["sane"] for r in rs),
                 "ratio_per_s": [r["per_s"] / off[r.get("round", 1)]["per_s"]
                                 for r in rs if off.get(r.get("round", 1))],
                 "ratio_per_core_s": [r["per_core_s"] / off[r.get("round", 1)]["per_core_s"]
                                      for r in rs if off.get(r.get("round", 1))
                                      and off[r.get("round", 1)]["per_core_s"]]}
            for k in STORE_COUNTERS:
                s[k] = sum(r.get(k, 0) for r in rs) if store != "none" else None
            lags = [r.get("store_lag_s", 0) for r in rs]
            s["store_lag_max_s"] = max(lags) if lags else 0
            dbs = [r["db_cpu_s"] for r in rs if r.get("db_cpu_s") is not None]
            s["db_cpu_us"] = sum(dbs) * 1e6 / n if dbs and n else None
            out.append(s)
    return out


def ratio_text(values):
    """`0.97` for one round, `0.97 (0.95–0.99)` for several: their mean and range."""
    if not values:
        return "–"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.2f}"
    return f"{mean:.2f} ({min(values):.2f}–{max(values):.2f})"


def memory(ctx):
    rows = []
    for concurrency in (1, 2):
        for case in (case_by_key("a"), case_by_key("b"), case_by_key("h")):
            config = case_config(case, ctx["upstream"].port, ctx["node"].port, free_port())
            envoy = Envoy(f"memory-{case.key}-c{concurrency}", config, concurrency, cpus=None)
            try:
                # Idle: let start-up work (module compilation, first ticks) settle.
                time.sleep(MEMORY_IDLE_S)
                idle_kib, _ = memory_kib(envoy.pid)
                for i in range(MEMORY_REQUESTS):
                    payload = PAYLOADS[i % len(PAYLOADS)]
                    status, _ = post(envoy.port, payload)
                    if status != 200:
                        envoy.fail(f"{payload.name}: {status}")
                time.sleep(1)
                after_kib, hwm_kib = memory_kib(envoy.pid)
            finally:
                envoy.stop()
            row = {"concurrency": concurrency, "case": case.key, "case_name": case.name,
                   "idle_mib": idle_kib / 1024, "after_requests_mib": after_kib / 1024,
                   "hwm_mib": hwm_kib / 1024}
            rows.append(row)
            print(f"memory: --concurrency {concurrency} {case.name:<10} idle "
                  f"{row['idle_mib']:.1f} MiB, after {MEMORY_REQUESTS} requests "
                  f"{row['after_requests_mib']:.1f} MiB (peak {row['hwm_mib']:.1f})", flush=True)
    return rows


# --- report --------------------------------------------------------------------

def machine():
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    envoy_version = subprocess.run([ENVOY_BIN, "--version"], capture_output=True,
                                   text=True).stdout.strip()
    match = re.search(r"version: (\S+)", envoy_version)
    nginx_version = subprocess.run([NGINX, "-v"], capture_output=True, text=True).stderr.strip()
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    wrk_match = re.search(r"wrk (\S+)", wrk_version.stdout + wrk_version.stderr)
    return {
        "cpu": model, "cores": os.cpu_count(), "kernel": platform.release(),
        "envoy": match.group(1) if match else envoy_version,
        "nginx": nginx_version.replace("nginx version: ", ""),
        "wrk": wrk_match.group(1) if wrk_match else "unknown",
        "wasm_bytes": os.path.getsize(WASM),
        "wasm_sha256": hashlib.sha256(WASM.read_bytes()).hexdigest(),
    }


def now():
    """When a part ran, and how busy the machine was as it started."""
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "load_average": os.getloadavg()[0]}


def when(part):
    return (f"Run {part['run']['date']}; 1-minute load average as it started: "
            f"{part['run']['load_average']:.2f}.")


def render_markdown(results):
    m = results["machine"]
    out = ["# oob-mirror benchmark", "",
           "Generated by `make bench` (`tools/bench/bench.py`); do not edit by hand.", "",
           f"- Machine: {m['cpu']}, {m['cores']} cores, Linux {m['kernel']}",
           f"- Envoy {m['envoy']}; nginx {m['nginx']}; wrk {m['wrk']}; "
           f"`dist/oob_mirror.wasm` {m['wasm_bytes']} bytes "
           f"(sha256 {m.get('wasm_sha256', '?')[:12]})", ""]
    thr = results.get("throughput")
    if thr:
        p = thr["params"]
        out += ["## Throughput, latency, CPU", "", when(thr), "",
                f"Method: one Envoy per run, `--concurrency 1`, on loopback. wrk, 1 thread, "
                f"{p['connections']} connections, {p['warmup']} s warm-up then "
                f"{p['seconds']} s measured. Upstream: nginx (1 worker) answering "
                f"{SMALL_BODY_BYTES} B to GET and a body as large as the request to POST. "
                "HTTP node of (b)-(d): a second Envoy (`--concurrency 1`) answering 200 after "
                "reading the request whole (cheaper than the project's sink, which decodes "
                "every record, and it takes any body); node of (e) and (f): `tools/extproc-sink` "
                "(tonic), which closes each stream once the response has ended. "
                "\"down\": the node's port is closed. Ratios (×) are to (a) with the same "
                "payload and node state. CPU µs/req: Envoy's utime+stime over the measured "
                "window divided by requests (the pid measured is checked to run `envoy` "
                "itself: the PyPI package's `envoy` is a Python wrapper that execs it). RSS: "
                "Envoy's VmRSS at the end of the run (peak VmHWM in results.json). "
                + ("The measured Envoy runs pinned to CPU 0; wrk, nginx and the node share "
                   "CPU 1, so they do not take the proxy's core. "
                   if PROXY_CPU else "Every process shares the machine's one core. ")
                + "Other work on the machine still moves rps and latency; CPU µs/req is the "
                "steadiest figure.", ""]
        runs = thr["runs"]
        base = {(r["payload"], r["node"]): r for r in runs if r["case"] == "a"}
        for payload in PAYLOADS:
            rows = [r for r in runs if r["payload"] == payload.key]
            if not rows:
                continue
            out += [f"### {payload.name}", "",
                    "| case | node | rps | × (a) | p50 ms | p99 ms | CPU µs/req | CPU × (a) "
                    "| RSS MiB | errors |",
                    "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
            for r in rows:
                b = base.get((r["payload"], r["node"]))
                ratio = f"{r['rps'] / b['rps']:.2f}" if b else "–"
                cpu_ratio = f"{r['cpu_us_per_req'] / b['cpu_us_per_req']:.2f}" if b else "–"
                errors = r["non2xx"] + r["socket_errors"]
                out.append(f"| ({r['case']}) {r['case_name']} | {r['node']} | {r['rps']:.0f} | "
                           f"{ratio} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                           f"{r['cpu_us_per_req']:.1f} | {cpu_ratio} | {r['rss_mib']:.1f} | "
                           f"{errors} |")
            out.append("")
        out += ["### What each case did (sanity check, whole Envoy lifetime incl. warm-up)", "",
                "| payload | case | node | observed |", "| --- | --- | --- | --- |"]
        for r in runs:
            out.append(f"| {r['payload_name']} | ({r['case']}) {r['case_name']} | {r['node']} | "
                       f"{r['sanity']} |")
        out.append("")
        bad = sum(1 for r in runs if r.get("problem"))
        lost = sum(1 for r in runs if r.get("lost"))
        out += [f"Runs where the node (up) did not get everything (LOST): {lost} of {len(runs)}. "
                f"Runs that are not sound (CHECK): {bad}.", ""]
    slow = results.get("slow_node")
    if slow:
        out += ["## Slow node", "", when(slow), "",
                f"(b) with the fast node, then with a node that answers every batch after "
                f"{SLOW_NODE_DELAY} (past `node.timeout_ms`, 1 s): every batch times out, the "
                "worker backs off and its queue fills, then sheds. Same method as above. "
                "× p99: the slow run's p99 over the fast run's.", "",
                "| payload | node | rps | p50 ms | p99 ms | × p99 | CPU µs/req | errors | observed |",
                "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        fast = {r["payload"]: r for r in slow["runs"] if r["node"] == "up"}
        for r in slow["runs"]:
            f = fast.get(r["payload"])
            ratio = f"{r['p99_ms'] / f['p99_ms']:.2f}" if f and f["p99_ms"] else "–"
            out.append(f"| {r['payload_name']} | {r['node']} | {r['rps']:.0f} | "
                       f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {ratio} | "
                       f"{r['cpu_us_per_req']:.1f} | {r['non2xx'] + r['socket_errors']} | "
                       f"{r['sanity']} |")
        out.append("")
    nd = results.get("node")
    if nd:
        rounds = max((r.get("round", 1) for r in nd["rows"]), default=1)
        out += ["## Analysis node (OWASP CRS)", "", when(nd), "",
                "`oob-mirror-node --detect` alone, OWASP CRS 3.3 at paranoia 1 through "
                "libmodsecurity 3, analysis threads = cores, loaded by "
                "`node-bench` (4 keep-alive connections posting batches of 32 exchanges, "
                "request and response records, as the filter does) for the measured seconds, "
                "a fresh node (and an empty store) for each run. Each traffic mix runs with the "
                "store off (`--store none`), with the default SQLite store (`--data-dir` in a "
                "temp directory: `<data-dir>/attacks.sqlite`, WAL, `synchronous=NORMAL`) and, "
                "when its server binaries are installed, with PostgreSQL (a throwaway local "
                "server at PostgreSQL's default settings, fsync on, one new database per run), "
                f"{rounds} round(s), the order of the stores reversed every other round. "
                "exchanges/s: analysed, until the queue drained and, with a store, every "
                "attack was written (or counted as dropped or failed); per core: analysed per "
                "second of the node's CPU time (utime+stime, the node's process only; "
                "PostgreSQL's own CPU is apart, in DB µs); × off: the ratio to the store-off "
                "run of the same round, mean (and range) over the rounds; written, dropped "
                "(the store's queue full), failed: the node's "
                "`oob_mirror_node_store_{written,dropped_queue_full,failed}_total` at the end; "
                "503: batches refused while analysis was behind (the filter backs off and "
                "counts them). Figures over all rounds.", "",
                "| traffic | store | exchanges/s | × off | per core | × off | "
                "CPU µs per exchange | DB µs | analysed | with attacks | written | dropped | "
                "failed | 503 |",
                "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | "
                "---: | ---: | ---: |"]

        def n(v):
            return "–" if v is None else f"{v:.0f}"
        for r in node_summary(nd["rows"]):
            store = r["store"]
            off = store == "none"
            out.append(f"| {r['mix_name']} | {STORE_NAMES.get(store, store)} | "
                       f"{r['per_s']:.0f} | {'1' if off else ratio_text(r['ratio_per_s'])} | "
                       f"{r['per_core_s']:.0f} | "
                       f"{'1' if off else ratio_text(r['ratio_per_core_s'])} | "
                       f"{r['cpu_us']:.0f} | {n(r['db_cpu_us'])} | {r['analysed']:.0f} | "
                       f"{r['attacks']:.0f} | {n(r['store_written_total'])} | "
                       f"{n(r['store_dropped_queue_full_total'])} | "
                       f"{n(r['store_failed_total'])} | {r['refused_503']} |"
                       + ("" if r["sane"] else " CHECK"))
        out.append("")
        summary = {(r["mix"], r["store"]): r for r in node_summary(nd["rows"])}
        pairs = [(m, label, summary[(m, "sqlite-nodisc")], summary[(m, "sqlite")])
                 for m, label in NODE_MIXES
                 if (m, "sqlite-nodisc") in summary and (m, "sqlite") in summary]
        if pairs:
            out += ["API discovery's cost: the node's CPU per exchange with the default SQLite "
                    "store, discovery off (`--inventory off`) and on (the default), the same "
                    "rounds as above.", "",
                    "| traffic | CPU µs, discovery off | CPU µs, on | on − off | × off |",
                    "| --- | ---: | ---: | ---: | ---: |"]
            for _, label, off, on in pairs:
                out.append(f"| {label} | {off['cpu_us']:.0f} | {on['cpu_us']:.0f} | "
                           f"{on['cpu_us'] - off['cpu_us']:+.0f} | "
                           f"{on['cpu_us'] / off['cpu_us']:.2f} |")
            out.append("")
    rp = results.get("replicas")
    if rp and rp["rows"]:
        out += ["## Analysis node replicas", "", when(rp), "",
                "1, 2 and 3 `oob-mirror-node` processes, one analysis thread each, sharing one "
                "fresh PostgreSQL database (a throwaway local server), each loaded by its own "
                "`node-bench` (2 connections) for the measured seconds, all at once; the clock "
                "runs until every replica has analysed what it was sent and written its attacks. "
                "exchanges/s: all replicas together; per core: per second of the nodes' CPU "
                "(PostgreSQL's apart). This machine has "
                f"{results.get('machine', {}).get('cores', '?')} cores: replicas beyond that share "
                "them.", "",
                "| traffic | replicas | exchanges/s, all | × 1 replica | per core | "
                "analysed per replica | attacks written | DB CPU s | 503 |",
                "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |"]
        one = {r["mix"]: r for r in rp["rows"] if r["replicas"] == 1}
        for r in rp["rows"]:
            base = one.get(r["mix"])
            ratio = f"{r['per_s'] / base['per_s']:.2f}" if base and base["per_s"] else "–"
            out.append(f"| {r['mix_name']} | {r['replicas']} | {r['per_s']:.0f} | {ratio} | "
                       f"{r['per_core_s']:.0f} | {' / '.join(str(int(x)) for x in r['per_replica'])} | "
                       f"{r['written']:.0f} | {r['db_cpu_s']:.1f} | {r['refused_503']} |"
                       + ("" if r["sane"] else " CHECK"))
        out.append("")
    mem = results.get("memory")
    if mem:
        out += ["## Idle memory", "", when(mem), "",
                f"Envoy's VmRSS with the configuration of (a), (b) and (h) (node up), "
                f"{MEMORY_IDLE_S} s after it is ready, and 1 s after {MEMORY_REQUESTS} "
                "requests (GET, 1 KiB and 64 KiB POSTs in turn, one connection).", "",
                "| --concurrency | configuration | idle MiB | after requests MiB | "
                "module's share, idle | after requests |",
                "| ---: | --- | ---: | ---: | ---: | ---: |"]
        bare = {r["concurrency"]: r for r in mem["rows"] if r["case"] == "a"}
        for r in mem["rows"]:
            a = bare.get(r["concurrency"])
            if r["case"] != "a" and a:
                idle = f"+{r['idle_mib'] - a['idle_mib']:.1f} MiB"
                after = f"+{r['after_requests_mib'] - a['after_requests_mib']:.1f} MiB"
            else:
                idle = after = "–"
            out.append(f"| {r['concurrency']} | ({r['case']}) {r['case_name']} | "
                       f"{r['idle_mib']:.1f} | {r['after_requests_mib']:.1f} | {idle} | {after} |")
        out.append("")
    return "\n".join(out)


# --- main ----------------------------------------------------------------------

def find_tool(name, env, default):
    path = os.environ.get(env) or default
    found = shutil.which(str(path))
    if not found:
        raise BenchError(f"{name} not found ({env}={path}); `make bench` sets it up")
    return found


def parse_args():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=int, default=10, help="measured seconds per run")
    p.add_argument("--warmup", type=int, default=3, help="warm-up seconds per run")
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--cases", default="abcdefgh", help="subset of abcdefgh")
    p.add_argument("--payloads", default="get,1k,64k", help="subset of get,1k,64k")
    p.add_argument("--node", default="up,down", help="subset of up,down")
    p.add_argument("--node-stores", default="none,sqlite-nodisc,sqlite,postgres",
                   help="the node part's stores, subset of none,sqlite,postgres (postgres is "
                        "skipped when PostgreSQL's server binaries are missing)")
    p.add_argument("--node-rounds", type=int, default=2,
                   help="the node part: runs of each mix and store, in alternating order")
    p.add_argument("--only", choices=["throughput", "slow-node", "memory", "node", "replicas"],
                   help="run one part; the others are kept from bench/results.json")
    p.add_argument("--out", default=str(OUT_DIR), help="where results.{md,json} go")
    args = p.parse_args()
    args.payloads = args.payloads.split(",")
    args.node = args.node.split(",")
    args.node_stores = args.node_stores.split(",")
    if not set(args.node_stores) <= set(STORE_NAMES) or args.node_rounds < 1:
        p.error("unknown node store, or --node-rounds below 1")
    if not set(args.cases) <= set("abcdefgh") or not set(args.payloads) <= {"get", "1k", "64k"} \
            or not set(args.node) <= {"up", "down"}:
        p.error("unknown case, payload or node state")
    return args


def main():
    global ENVOY_BIN, WASM, DYNMOD, EMPTY_WASM, NGINX, EXTPROC_SINK, SINK, NODE_BENCH
    args = parse_args()
    ENVOY_BIN = find_tool("Envoy", "ENVOY_BIN", ROOT / ".envoy" / "1.40.0" / "bin" / "envoy")
    WASM = Path(os.environ.get("OOB_MIRROR_WASM") or ROOT / "dist" / "oob_mirror.wasm")
    if not WASM.is_file():
        raise BenchError(f"{WASM} missing: `make wasm`")
    DYNMOD = Path(os.environ.get("OOB_MIRROR_DYNMOD") or ROOT / "dist" / "liboob_mirror.so")
    if not DYNMOD.is_file():
        raise BenchError(f"{DYNMOD} missing: `make dynmod`")
    EMPTY_WASM = Path(os.environ.get("EMPTY_FILTER_WASM") or ROOT / "tools/profile/empty-filter"
                      / "target/wasm32-wasip1/release/empty_filter.wasm")
    if not EMPTY_WASM.is_file():
        raise BenchError(f"{EMPTY_WASM} missing: `make bench-setup`")
    NGINX = find_tool("nginx", "NGINX_BIN", "nginx")
    find_tool("wrk", "WRK_BIN", "wrk")
    EXTPROC_SINK = find_tool("extproc-sink", "EXTPROC_SINK",
                             ROOT / "tools/extproc-sink/target/release/extproc-sink")
    SINK = find_tool("oob-mirror-node", "SINK_BIN", ROOT / "target/release/oob-mirror-node")
    NODE_BENCH = find_tool("node-bench", "NODE_BENCH", ROOT / "target/release/node-bench")

    out_dir = Path(args.out)
    json_path = out_dir / "results.json"
    results = {}
    if args.only and json_path.is_file():
        results = json.loads(json_path.read_text())
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    # Every run loads this copy: a rebuild of dist/ during the bench cannot
    # mix two modules into one table.
    WASM = Path(shutil.copy(WASM, WORK / "oob_mirror.wasm"))
    DYNMOD = Path(shutil.copy(DYNMOD, WORK / "liboob_mirror.so"))

    results["machine"] = machine()
    ctx = {"upstream": start_upstream(), "node": start_node(), "slow_node": start_node(slow=True)}
    if args.only in (None, "throughput"):
        results["throughput"] = {
            "run": now(),
            "params": {"seconds": args.seconds, "warmup": args.warmup,
                       "connections": args.connections},
            "runs": throughput(args, ctx)}
    if args.only in (None, "slow-node"):
        results["slow_node"] = {"run": now(), "runs": slow_node(args, ctx)}
    if args.only in (None, "memory"):
        results["memory"] = {"run": now(), "rows": memory(ctx)}
    if args.only in (None, "node"):
        results["node"] = {"run": now(), "rows": node(args)}
    if args.only in (None, "replicas"):
        results["replicas"] = {"run": now(), "rows": replicas(args)}
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=1) + "\n")
    (out_dir / "results.md").write_text(render_markdown(results))
    print(f"bench: wrote {out_dir}/results.md and results.json")
    fresh = [part for part in ("throughput", "slow_node")
             if args.only in (None, part.replace("_", "-"))]
    problems = [r for part in fresh for r in results.get(part, {}).get("runs", [])
                if r.get("problem")]
    if args.only in (None, "node"):
        problems += [r for r in results["node"]["rows"] if not r["sane"]]
    if args.only in (None, "replicas"):
        problems += [r for r in results["replicas"]["rows"] if not r["sane"]]
    if problems:
        print(f"bench: {len(problems)} run(s) with a problem, see CHECK lines", file=sys.stderr)
        return 1
    return 0


def on_signal(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    # SIGINT too: a shell that starts us in the background ignores it by default.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        code = main()
    except BenchError as e:
        print(f"bench: {e}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        code = 130
    finally:
        # A second Ctrl-C must not cut the clean-up short.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stop_all()
    sys.exit(code)
