#!/usr/bin/env python3
"""make bench: Kvorum's local cluster and a 3-node etcd 3.4 cluster on loopback,
measured with the same load tool (wrk), the same connection counts and 100-byte
values, in one run. Prints a table with the ratio Kvorum/etcd on every row
(medians of several runs) and writes target/bench/report.json and report.md.

Both systems acknowledge a write only once it is fsync'd on 2 of 3 replicas:
etcd fsyncs its WAL before a member acknowledges a Raft entry, Kvorum's storage
nodes fsync every group commit before answering (QUORUM of RF 3).
"""

import argparse
import json
import os
import signal
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LUA = ROOT / "scripts" / "bench"
OUT = ROOT / "target" / "bench"
PRELOADED = 1000


def log(message):
    print(f"bench: {message}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, deadline_s=90, method="GET", body=None):
    deadline = time.time() + deadline_s
    while time.time() < deadline:
        try:
            request = urllib.request.Request(url, data=body, method=method)
            with urllib.request.urlopen(request, timeout=2) as response:
                if response.status < 300:
                    return
        except Exception:
            pass
        time.sleep(0.3)
    raise SystemExit(f"bench: {url} did not answer within {deadline_s} s")


class Processes:
    """Every process started, stopped (process group) on exit whatever happens."""

    def __init__(self):
        self.started = []

    def start(self, args, log_path, env=None):
        log_file = open(log_path, "w")
        process = subprocess.Popen(
            args, stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        self.started.append(process)
        return process

    def stop(self, process):
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def stop_all(self):
        for process in reversed(self.started):
            try:
                self.stop(process)
            except ProcessLookupError:
                pass


def start_kvorum(processes, name, env=None):
    data = OUT / name
    shutil.rmtree(data, ignore_errors=True)
    port = free_port()
    args = [
        str(ROOT / "target/release/kvorum-local"),
        "--nodes", "3", "--replication-factor", "3", "--partitions", "64",
        "--port", str(port), "--storage-port", str(free_port_block(3)),
        "--metad-port", str(free_port_block(3)),
        "--detector-port", str(free_port_block(1)),
        "--recovery-port", str(free_port_block(1)),
        "--data-dir", str(data), "--bin-dir", str(ROOT / "target/release"),
    ]
    full_env = {**os.environ, "RUST_LOG": "info", **(env or {})}
    process = processes.start(args, OUT / f"{name}.log", full_env)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/readyz")
    request = urllib.request.Request(
        f"{url}/v1/keyspaces/bench_ev",
        data=b'{"mode":"eventual","write_consistency":"one"}',
        method="PUT",
    )
    urllib.request.urlopen(request, timeout=10).read()
    for i in range(PRELOADED):
        request = urllib.request.Request(f"{url}/v1/kv/bench/pre-{i}", data=b"v" * 100, method="PUT")
        urllib.request.urlopen(request, timeout=10).read()
    return process, url


def free_port_block(count):
    """A port p such that p .. p+count-1 are free now."""
    for _ in range(200):
        base = free_port()
        ok = True
        for offset in range(count):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", base + offset))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise SystemExit("bench: no block of free ports")


def start_etcd(processes):
    data = OUT / "etcd"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    clients = [free_port() for _ in range(3)]
    peers = [free_port() for _ in range(3)]
    cluster = ",".join(f"e{i}=http://127.0.0.1:{peers[i]}" for i in range(3))
    for i in range(3):
        processes.start(
            [
                "etcd", "--name", f"e{i}", "--data-dir", str(data / f"e{i}"),
                "--listen-client-urls", f"http://127.0.0.1:{clients[i]}",
                "--advertise-client-urls", f"http://127.0.0.1:{clients[i]}",
                "--listen-peer-urls", f"http://127.0.0.1:{peers[i]}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{peers[i]}",
                "--initial-cluster", cluster, "--initial-cluster-state", "new",
                "--initial-cluster-token", "kvorum-bench", "--log-level", "warn",
            ],
            OUT / f"etcd-{i}.log",
        )
    urls = [f"http://127.0.0.1:{p}" for p in clients]
    for url in urls:
        wait_http(f"{url}/health")
    # Load goes to the leader, as a client library that follows the leader would send it.
    leader = urls[0]
    for url in urls:
        status = post_json(f"{url}/v3/maintenance/status", {})
        if status.get("leader") == status.get("header", {}).get("member_id"):
            leader = url
    for i in range(PRELOADED):
        import base64
        post_json(
            f"{leader}/v3/kv/put",
            {
                "key": base64.b64encode(f"bench/pre-{i}".encode()).decode(),
                "value": base64.b64encode(b"v" * 100).decode(),
            },
        )
    return leader


def post_json(url, body):
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"{}")


def wrk(url, script, connections, seconds, env):
    threads = max(1, min(connections, 2))
    result = subprocess.run(
        ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s",
         "--timeout", "10s", "-s", str(LUA / script), url],
        capture_output=True, text=True,
        env=dict(os.environ, BENCH_LUA_DIR=str(LUA), BENCH_KEYS=str(PRELOADED), **env),
    )
    line = [l for l in result.stdout.splitlines() if l.startswith("{")]
    if result.returncode != 0 or not line:
        raise SystemExit(f"bench: wrk failed: {result.stdout}\n{result.stderr}")
    run = json.loads(line[-1])
    seconds_run = run["duration_us"] / 1e6
    return {
        "ops": (run["requests"] - run["errors"]) / seconds_run,
        "errors": run["errors"],
        "p50": run["p50_us"] / 1000,
        "p99": run["p99_us"] / 1000,
    }


def median_of(runs):
    return {key: statistics.median(r[key] for r in runs) for key in ("ops", "p50", "p99", "errors")}


class Sink(BaseHTTPRequestHandler):
    """An OTLP/HTTP endpoint that accepts and drops every export."""

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def tool(name):
    """An inferno binary, installed into target/tools on first use."""
    path = ROOT / "target" / "tools" / "bin" / name
    if not path.exists():
        log("installing inferno (flame graphs) into target/tools")
        subprocess.run(
            ["cargo", "install", "--quiet", "--locked", "--root", str(ROOT / "target" / "tools"),
             "inferno", "--version", "^0.12"],
            check=True,
        )
    return str(path)


def profile(processes, seconds):
    """CPU profiles of the router and of one storage node under quorum PUTs at
    64 connections, as flame graphs in docs/profiles/, and their top costs."""
    _, url = start_kvorum(processes, "kvorum-profiled")
    data = str(OUT / "kvorum-profiled")
    targets = {}
    for name, pattern in (("router", "kvorum-router"), ("storage", "kvorum-storage --node-id 1 ")):
        pids = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
        pids = [p for p in pids if data in Path(f"/proc/{p}/cmdline").read_text().replace("\0", " ")
                or name == "router"]
        if not pids:
            raise SystemExit(f"bench: no {name} process to profile")
        targets[name] = pids[-1]
    recorders = {
        name: subprocess.Popen(
            ["perf", "record", "-F", "199", "--call-graph", "dwarf,16384", "-p", pid,
             "-o", str(OUT / f"perf-{name}.data"), "--", "sleep", str(seconds)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for name, pid in targets.items()
    }
    wrk(url, "kvorum_put.lua", 64, seconds, {})
    for recorder in recorders.values():
        recorder.wait()
    out = ROOT / "docs" / "profiles"
    out.mkdir(parents=True, exist_ok=True)
    tops = {}
    for name in targets:
        script = subprocess.run(
            ["perf", "script", "-i", str(OUT / f"perf-{name}.data")],
            capture_output=True, text=True, check=True,
        ).stdout
        collapsed = subprocess.run(
            [tool("inferno-collapse-perf")], input=script, capture_output=True, text=True, check=True
        ).stdout
        svg = subprocess.run(
            [tool("inferno-flamegraph"), "--minwidth", "0.2",
             "--title", f"kvorum-{name}: quorum PUT, 64 connections"],
            input=collapsed, capture_output=True, text=True, check=True,
        ).stdout
        (out / f"{name}-put64.svg").write_text(svg)
        report = subprocess.run(
            ["perf", "report", "-i", str(OUT / f"perf-{name}.data"), "--stdio", "--no-children", "-g", "none",
             "--sort", "symbol", "--percent-limit", "2"],
            capture_output=True, text=True,
        ).stdout
        tops[name] = [l for l in report.splitlines() if "%" in l and not l.startswith("#")][:10]
        log(f"{name}: flame graph in docs/profiles/{name}-put64.svg")
    (OUT / "profile-top.json").write_text(json.dumps(tops, indent=2) + "\n")
    for name, lines in tops.items():
        print(f"\n{name}: largest self costs")
        print("\n".join(lines))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", default="",
                        help="run only the workloads whose name contains this text (no tracing row)")
    parser.add_argument("--profile", action="store_true",
                        help="only record CPU profiles of the router and a storage node (docs/profiles/)")
    parser.add_argument("--seconds", type=int, default=int(os.environ.get("BENCH_SECONDS", "8")))
    parser.add_argument("--runs", type=int, default=int(os.environ.get("BENCH_RUNS", "3")))
    args = parser.parse_args()
    if args.seconds < 1 or args.runs < 1:
        raise SystemExit("bench: --seconds and --runs must be at least 1")
    OUT.mkdir(parents=True, exist_ok=True)
    processes = Processes()
    if args.profile:
        try:
            profile(processes, 15)
        finally:
            processes.stop_all()
        return
    try:
        log("starting Kvorum (3 storage nodes, RF 3) and etcd 3.4 (3 members)")
        _, kvorum = start_kvorum(processes, "kvorum")
        etcd = start_etcd(processes)
        workloads = [
            ("quorum put", 1, ("kvorum_put.lua", {}), ("etcd_put.lua", {})),
            ("quorum put", 64, ("kvorum_put.lua", {}), ("etcd_put.lua", {})),
            ("quorum put", 256, ("kvorum_put.lua", {}), ("etcd_put.lua", {})),
            ("linearizable get", 64, ("kvorum_get.lua", {"BENCH_QUERY": "consistency=quorum"}),
             ("etcd_get.lua", {})),
            ("stale get (one / serializable)", 64, ("kvorum_get.lua", {"BENCH_QUERY": "consistency=one"}),
             ("etcd_get.lua", {"BENCH_SERIALIZABLE": "true"})),
            ("eventual put at one (etcd: quorum put)", 64,
             ("kvorum_put.lua", {"BENCH_QUERY": "keyspace=bench_ev&consistency=one"}),
             ("etcd_put.lua", {})),
        ]
        rows = []
        workloads = [w for w in workloads if args.only in w[0]]
        for name, connections, (k_script, k_env), (e_script, e_env) in workloads:
            k_runs, e_runs = [], []
            for run in range(args.runs):
                k_runs.append(wrk(kvorum, k_script, connections, args.seconds, k_env))
                e_runs.append(wrk(etcd, e_script, connections, args.seconds, e_env))
            k, e = median_of(k_runs), median_of(e_runs)
            rows.append({
                "workload": name, "connections": connections,
                "kvorum_ops_per_sec": round(k["ops"], 1), "etcd_ops_per_sec": round(e["ops"], 1),
                "ratio": round(k["ops"] / e["ops"], 3) if e["ops"] else None,
                "kvorum_p50_ms": round(k["p50"], 2), "kvorum_p99_ms": round(k["p99"], 2),
                "etcd_p50_ms": round(e["p50"], 2), "etcd_p99_ms": round(e["p99"], 2),
                "kvorum_errors": k["errors"], "etcd_errors": e["errors"],
            })
            log(f"{name} c={connections}: kvorum {k['ops']:.0f}/s, etcd {e['ops']:.0f}/s")

        if args.only:
            for r in rows:
                print(json.dumps(r))
            return
        log("tracing overhead: a second Kvorum cluster exporting every span (100% sampling)")
        sink = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
        threading.Thread(target=sink.serve_forever, daemon=True).start()
        traced_process, traced = start_kvorum(processes, "kvorum-traced", {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink.server_address[1]}",
            "OTEL_TRACES_SAMPLER": "always_on",
        })
        traced_runs = [wrk(traced, "kvorum_put.lua", 64, args.seconds, {}) for _ in range(args.runs)]
        t = median_of(traced_runs)
        untraced = next(r for r in rows if r["workload"] == "quorum put" and r["connections"] == 64)
        tracing_cost = 1 - t["ops"] / untraced["kvorum_ops_per_sec"]
        processes.stop(traced_process)
        sink.shutdown()
    finally:
        processes.stop_all()

    report = {"rows": rows, "tracing": {
        "workload": "quorum put", "connections": 64,
        "traced_ops_per_sec": round(t["ops"], 1),
        "untraced_ops_per_sec": untraced["kvorum_ops_per_sec"],
        "throughput_cost": round(tracing_cost, 3),
    }, "seconds_per_run": args.seconds, "runs": args.runs}
    (OUT / "report.json").write_text(json.dumps(report["rows"], indent=2) + "\n")
    (OUT / "tracing.json").write_text(json.dumps(report["tracing"], indent=2) + "\n")
    header = ("| workload | conns | kvorum ops/s | etcd ops/s | kvorum/etcd | kvorum p50 ms | "
              "kvorum p99 ms | etcd p50 ms | etcd p99 ms |\n|---|---|---|---|---|---|---|---|---|\n")
    lines = "".join(
        f"| {r['workload']} | {r['connections']} | {r['kvorum_ops_per_sec']:.0f} | "
        f"{r['etcd_ops_per_sec']:.0f} | {r['ratio']:.2f}x | {r['kvorum_p50_ms']:.2f} | "
        f"{r['kvorum_p99_ms']:.2f} | {r['etcd_p50_ms']:.2f} | {r['etcd_p99_ms']:.2f} |\n"
        for r in rows
    )
    tracing_line = (
        f"\nTracing on (100% sampling, OTLP/HTTP): quorum put at 64 connections "
        f"{t['ops']:.0f} ops/s against {untraced['kvorum_ops_per_sec']:.0f} untraced: "
        f"{tracing_cost * 100:.1f}% of throughput.\n"
    )
    table = (f"Medians of {args.runs} runs of {args.seconds} s each, wrk, 100-byte values, "
             f"both systems on this machine's loopback.\n\n" + header + lines + tracing_line)
    (OUT / "report.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
