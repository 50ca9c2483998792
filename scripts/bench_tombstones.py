#!/usr/bin/env python3
"""make bench-tombstones: how much disk a strong keyspace keeps after its keys
are written and deleted, now that strong tombstones are collected.

Starts the release cluster (3 storage nodes, RF 3, 64 partitions) with
anti-entropy off, so nothing is collected (as before collection existed),
writes BENCH_TOMBSTONE_KEYS (1,000,000) keys of 100 bytes with wrk and
deletes them all; restarts it with collection on and waits until every
node's `kvorum_strong_tombstones` gauge reaches 0; then writes and deletes as
many new keys again with collection running, to show the freed pages are
reused. Records the storage nodes' data size after each phase in
target/bench/tombstones.json. Checkpoints are off (a checkpoint that still
holds a key's value holds its tombstone back until the next one).
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (the shared helpers of make bench)

KEYS = int(os.environ.get("BENCH_TOMBSTONE_KEYS", "1000000"))
CONNECTIONS = 64
# One wrk thread: it walks the keys in order, so a run that ends early is
# resumed exactly where it stopped.
THREADS = 1


def du(path):
    return int(subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True,
                              check=True).stdout.split()[0])


def metric(url, name):
    """A metric's value summed over its labels, or None before the node reports it."""
    text = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
    values = [float(line.split()[-1]) for line in text.splitlines()
              if re.match(rf"^{name}(\{{.*\}})? ", line)]
    return int(sum(values)) if values else None


def phase(url, method, prefix):
    """Runs wrk until every one of the KEYS keys had the method done once."""
    done, started = 0, time.time()
    while done < KEYS:
        seconds = max(10, min(120, int((KEYS - done) / 4000) + 5))
        env = {"BENCH_METHOD": method, "BENCH_KEYS": str(KEYS), "BENCH_THREADS": str(THREADS),
               "BENCH_PREFIX": prefix, "BENCH_START": str(done)}
        result = subprocess.run(
            ["wrk", "-t", str(THREADS), "-c", str(CONNECTIONS), "-d", f"{seconds}s",
             "--timeout", "10s", "-s", str(bench.LUA / "tombstone_phase.lua"), url],
            capture_output=True, text=True,
            env=dict(os.environ, BENCH_LUA_DIR=str(bench.LUA), **env))
        line = [l for l in result.stdout.splitlines() if l.startswith("{")]
        if result.returncode != 0 or not line:
            raise SystemExit(f"bench-tombstones: wrk failed: {result.stdout}\n{result.stderr}")
        run = json.loads(line[-1])
        if run["errors"]:
            raise SystemExit(f"bench-tombstones: {run['errors']} {method}s failed")
        # Requests still in flight when wrk stops may not have been counted:
        # the next run starts a connection's worth early (done twice is harmless).
        done += max(1, run["requests"] - CONNECTIONS)
        bench.log(f"{method}: {min(done, KEYS)} of {KEYS} keys")
    took = time.time() - started
    bench.log(f"{method} of {KEYS} keys under {prefix}/ in {took:.0f} s ({KEYS / took:.0f}/s)")
    return took


def main():
    processes = bench.Processes()
    bench.OUT.mkdir(parents=True, exist_ok=True)
    try:
        data = bench.OUT / "tombstones"
        shutil.rmtree(data, ignore_errors=True)
        port, storage = bench.free_port(), bench.free_port_block(3)
        args = [
            str(bench.ROOT / "target/release/kvorum-local"),
            "--nodes", "3", "--replication-factor", "3", "--partitions", "64",
            "--port", str(port), "--storage-port", str(storage),
            "--metad-port", str(bench.free_port_block(3)),
            "--detector-port", str(bench.free_port_block(1)),
            "--recovery-port", str(bench.free_port_block(1)),
            "--data-dir", str(data), "--bin-dir", str(bench.ROOT / "target/release"),
        ]
        url = f"http://127.0.0.1:{port}"
        nodes = [f"http://127.0.0.1:{storage + i}" for i in range(3)]

        def start(collecting):
            env = {**os.environ, "RUST_LOG": "info", "KVORUM_TOMBSTONE_GRACE_MS": "15000",
                   "KVORUM_CHECKPOINT_INTERVAL_MS": "0",
                   "KVORUM_ANTI_ENTROPY_INTERVAL_MS": "5000" if collecting else "0"}
            process = processes.start(args, bench.OUT / f"tombstones-{collecting}.log", env)
            bench.wait_http(f"{url}/readyz")
            return process

        def sample(label, held=True):
            dirs = [p for p in data.iterdir() if p.name.startswith("storage")]
            size = sum(du(d) for d in dirs)
            count = sum(metric(n, "kvorum_strong_tombstones") or 0 for n in nodes) if held else None
            bench.log(f"{label}: storage data {size / 2**20:.1f} MiB, strong tombstones held {count}")
            return {"phase": label, "storage_bytes": size, "tombstones_held": count}

        def collected(deadline_s=900):
            started = time.time()
            # The gauge is set at the end of each anti-entropy round: absent
            # until a restarted node's first round ends.
            while True:
                held = [metric(n, "kvorum_strong_tombstones") for n in nodes]
                if all(h == 0 for h in held):
                    break
                if time.time() - started > deadline_s:
                    raise SystemExit("bench-tombstones: tombstones were not collected in time")
                time.sleep(2)
            return time.time() - started

        first = start(collecting=False)
        samples = [sample("empty", held=False)]
        phase(url, "PUT", "gc")
        samples.append(sample(f"{KEYS} keys written", held=False))
        phase(url, "DELETE", "gc")
        samples.append(sample(f"{KEYS} keys deleted, nothing collected (as before)", held=False))
        processes.stop(first)
        start(collecting=True)
        waited = collected()
        samples.append(sample(f"restarted with collection: collected in {waited:.0f} s"))
        phase(url, "PUT", "gc2")
        phase(url, "DELETE", "gc2")
        collected()
        samples.append(sample(f"{KEYS} more keys written and deleted with collection on"))
        collected_total = sum(metric(n, "kvorum_strong_tombstones_collected_total") or 0
                              for n in nodes)
        write_report(samples, collected_total)
    finally:
        processes.stop_all()


def write_report(samples, collected_total):
    """Writes what was measured so far to target/bench/tombstones.json."""
    report = {"keys": KEYS, "value_bytes": 100, "replication_factor": 3,
              "tombstone_grace_ms": 15000, "samples": samples,
              "collected_total": collected_total}
    (bench.OUT / "tombstones.json").write_text(json.dumps(report, indent=2) + "\n")
    bench.log(f"wrote {bench.OUT / 'tombstones.json'}")


if __name__ == "__main__":
    main()
