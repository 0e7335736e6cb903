#!/usr/bin/env python3
"""Slow HTTP clients at full scale (issue 13): more connections than the aggregator has descriptors.

The release aggregator runs with this machine's descriptor limit (20,000 here). Three helper
processes open 7,000 connections each (21,000 in all) to its HTTP port; each sends the start of
a request head and never finishes it. Meanwhile `/healthz` is asked 10 times by a new client; the
same 10 requests are timed before the attack as the baseline of this run. Before issue 13 the
21,000 connections exhausted the aggregator's descriptors and `/healthz` hung; now the oldest slow
connection is closed whenever a new one would pass the cap (the limit less 512, at most 10,000),
and each must finish its head within the header timeout.

Usage: python3 Benchmarks/slow_clients.py [--connections 21000] [--write docs/benchmarks.md] [--skip-build]
"""
import argparse
import json
import os
import resource
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request

from benchlib import free_port, machine, release_binaries, start_broker, stop_all, write_section

HELPER = r"""
import socket, struct, sys, time
port, count = int(sys.argv[1]), int(sys.argv[2])
held = []
for _ in range(count):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.settimeout(10)
    try:
        s.connect(("127.0.0.1", port))
        s.send(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    except OSError:
        pass
    held.append(s)
print(len(held), flush=True)
sys.stdin.read()  # hold them until told to stop
"""


def healthz_times(port, count=10):
    times = []
    for _ in range(count):
        started = time.time()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=60) as response:
            response.read()
            if response.status != 200:
                sys.exit(f"/healthz answered {response.status}")
        times.append(time.time() - started)
        time.sleep(0.2)
    return times


def metric(port, prefix):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60).read().decode()
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.split()[-1])
    return float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=21_000)
    parser.add_argument("--helpers", type=int, default=3)
    parser.add_argument("--write")
    parser.add_argument("--skip-build", action="store_true")
    args = parser.parse_args()
    (aggregator,) = release_binaries(args.skip_build, "edgefleet-aggregator")
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    with tempfile.TemporaryDirectory(prefix="edgefleet-slow-") as directory:
        broker, mqtt_port, _ = start_broker(directory)
        http = free_port()
        log = open(os.path.join(directory, "aggregator.log"), "w")
        proc = subprocess.Popen([aggregator, "--broker", f"mqtt://127.0.0.1:{mqtt_port}", "--db", os.path.join(directory, "fleet.sqlite"),
                                 "--http", f"127.0.0.1:{http}", "--public-reads", "true", "--log-level", "warning"],
                                stdout=log, stderr=subprocess.STDOUT)
        helpers = []
        try:
            deadline = time.time() + 30
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{http}/healthz", timeout=2).read()
                    break
                except OSError:
                    if time.time() > deadline:
                        sys.exit("the aggregator did not answer")
                    time.sleep(0.1)
            baseline = healthz_times(http)
            share = args.connections // args.helpers
            started = time.time()
            helpers = [subprocess.Popen([sys.executable, "-c", HELPER, str(http), str(share)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True) for _ in range(args.helpers)]
            opened = sum(int(h.stdout.readline() or 0) for h in helpers)
            open_seconds = time.time() - started
            attacked = healthz_times(http)
            evicted = metric(http, 'edgefleet_http_connections_closed_total{reason="evicted"}')
            still_open = metric(http, "edgefleet_http_connections ")
            alive = proc.poll() is None
        finally:
            for h in helpers:
                if h.poll() is None:
                    h.kill()
            stop_all([broker, proc])
    result = {"connections": opened, "openSeconds": round(open_seconds, 1), "descriptorLimit": limit,
              "baselineMedianMs": round(statistics.median(baseline) * 1000, 1), "baselineMaxMs": round(max(baseline) * 1000, 1),
              "attackedMedianMs": round(statistics.median(attacked) * 1000, 1), "attackedMaxMs": round(max(attacked) * 1000, 1),
              "evicted": evicted, "openAtEnd": still_open, "aggregatorAlive": alive}
    print(json.dumps(result), file=sys.stderr)
    ok = alive and max(attacked) < 1.0
    section = f"""<!-- slow-clients:begin -->
## Slow HTTP clients (issue 13)

{opened:,} connections that send the start of a request head and never finish it, from {args.helpers} helper processes, against the
release aggregator whose descriptor limit is {limit:,}; `/healthz` asked 10 times by a new client before (baseline) and during
the attack, in the same run.

- Command: `python3 Benchmarks/slow_clients.py --connections {args.connections} --write docs/benchmarks.md` (part of `make bench`)
- Machine: {machine()}
- Measured: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}

| measure | value |
| --- | ---: |
| connections opened | {opened:,} in {open_seconds:.1f} s |
| `/healthz` before the attack, median / slowest | {result['baselineMedianMs']} / {result['baselineMaxMs']} ms |
| `/healthz` during the attack, median / slowest | {result['attackedMedianMs']} / {result['attackedMaxMs']} ms |
| slow connections closed to make room (evicted) | {evicted:,.0f} |
| connections open at the end (cap {min(10_000, limit - 512):,}) | {still_open:,.0f} |
| aggregator still running | {"yes" if alive else "**no**"} |

Target: `/healthz` answers within 1 s throughout: {"met" if ok else "**not met**"}.
<!-- slow-clients:end -->"""
    print(section)
    if args.write:
        write_section(args.write, "slow-clients", section)
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
