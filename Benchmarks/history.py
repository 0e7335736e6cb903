#!/usr/bin/env python3
"""Issue 16: the fleet's history at size. 100,000 sites with a year of generated events each
(`edgefleet-bench history-seed`: about 68 per site, written through the store's own append, so the
mode spans are made as the aggregator makes them), in SQLite and in PostgreSQL. Then:
- the storage they take (the SQLite file after a checkpoint; PostgreSQL's relation sizes);
- on the store: site histories over 90 days for 200 random sites, the fleet's 30- and 90-day history
  (time per mode, 60 slices, the top 20 by budget used), `edgefleet-bench history-query`;
- through HTTP, on a release aggregator opened on the SQLite file (with a broker): GET
  /v1/sites/{site}/history?window=90d for 100 random sites and GET /v1/history?window=30d|90d.

Usage: python3 Benchmarks/history.py [--sites 100000] [--days 365] [--no-postgres] [--write docs/benchmarks.md] [--skip-build]
"""
import argparse
import http.client
import json
import os
import random
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from benchlib import ROOT, free_port, machine, release_binaries, start_broker, start_postgres, stop_all, write_section  # noqa: E402

TOKEN = "history-benchmark-token-0123456789"


def run_json(args):
    out = subprocess.run(args, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(args)}: {out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def http_times(port, paths):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    times = []
    for path in paths:
        start = time.perf_counter()
        connection.request("GET", path, headers={"Authorization": f"Bearer {TOKEN}"})
        response = connection.getresponse()
        body = response.read()
        times.append((time.perf_counter() - start) * 1000)
        if response.status != 200:
            sys.exit(f"GET {path}: {response.status} {body[:300]}")
    return sorted(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--write")
    parser.add_argument("--skip-build", action="store_true")
    args = parser.parse_args()
    bench, aggregator_bin = release_binaries(args.skip_build, "edgefleet-bench", "edgefleet-aggregator")
    directory = tempfile.mkdtemp(prefix="edgefleet-history-bench-")
    results = {}
    procs = []
    try:
        path = os.path.join(directory, "fleet.sqlite")
        seed = run_json([bench, "history-seed", "--database", path, "--sites", str(args.sites), "--days", str(args.days)])
        import sqlite3
        sqlite3.connect(path).execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        size = os.path.getsize(path)
        queries = {w: run_json([bench, "history-query", "--database", path, "--sites", str(args.sites), "--fleet-window", str(w)]) for w in (30, 90)}
        results["sqlite"] = {"seed": seed, "bytes": size, "bytesPerEvent": round(size / seed["events"]), "queries": queries}
        print(json.dumps(results["sqlite"]), flush=True)

        # Through HTTP, on a release aggregator opened on that file.
        broker, broker_port, _ = start_broker(directory)
        procs.append(broker)
        http_port = free_port()
        open(os.path.join(directory, "tokens"), "w").write(TOKEN + "\n")
        aggregator = subprocess.Popen(
            [aggregator_bin, "--broker", f"mqtt://127.0.0.1:{broker_port}", "--db", path, "--http", f"127.0.0.1:{http_port}",
             "--token-file", os.path.join(directory, "tokens"), "--log-level", "warning"],
            stdout=open(os.path.join(directory, "aggregator.log"), "w"), stderr=subprocess.STDOUT)
        procs.append(aggregator)
        for _ in range(300):
            try:
                http_times(http_port, ["/healthz"])
                break
            except (OSError, http.client.HTTPException):
                time.sleep(0.1)
        rng = random.Random(7)
        site_paths = [f"/v1/sites/site-{rng.randrange(args.sites):06d}/history?window=90d" for _ in range(100)]
        sites_ms = http_times(http_port, site_paths)
        fleet30 = http_times(http_port, ["/v1/history?window=30d"] * 3)
        fleet90 = http_times(http_port, ["/v1/history?window=90d"] * 3)
        results["http"] = {"siteHistoryMs": {"p50": round(sites_ms[50], 1), "p99": round(sites_ms[98], 1), "max": round(sites_ms[-1], 1)},
                           "fleet30dMs": [round(t) for t in fleet30], "fleet90dMs": [round(t) for t in fleet90]}
        print(json.dumps(results["http"]), flush=True)
        stop_all(procs)
        procs = []

        if not args.no_postgres:
            url, password_file, stop_pg = start_postgres(directory)
            try:
                seed = run_json([bench, "history-seed", "--database", url, "--password-file", password_file, "--sites", str(args.sites),
                                 "--days", str(args.days)])
                password = open(password_file).read().strip()
                host_port = url.split("@")[1].split("/")[0]
                sizes = subprocess.run(
                    ["psql", "-X", "-A", "-t", "-h", "127.0.0.1", "-p", host_port.split(":")[1], "-U", "edgefleet", "-d", "edgefleet", "-c",
                     "VACUUM ANALYZE", "-c", "SELECT pg_total_relation_size('events') + pg_total_relation_size('mode_spans')"],
                    capture_output=True, text=True, env={**os.environ, "PGPASSWORD": password})
                size = int(sizes.stdout.strip().splitlines()[-1])
                queries = {w: run_json([bench, "history-query", "--database", url, "--password-file", password_file, "--sites", str(args.sites),
                                        "--fleet-window", str(w)]) for w in (30, 90)}
                results["postgres"] = {"seed": seed, "bytes": size, "bytesPerEvent": round(size / seed["events"]), "queries": queries}
                print(json.dumps(results["postgres"]), flush=True)
            finally:
                stop_pg()
    finally:
        stop_all(procs)
        subprocess.run(["rm", "-rf", directory])

    if args.write:
        lines = [f"<!-- history:begin -->", "## The fleet's history at size (issue 16)", "",
                 f"`python3 Benchmarks/history.py --sites {args.sites} --days {args.days}` on {machine()}.", "",
                 f"{args.sites:,} sites, {args.days} days of generated events each (`HistoryGenerator`: outages every 14 days on average, "
                 "70% under 6 h, 5% past the 30-day budget; a third with the whole site dark), written through the stores' own append.", "",
                 "| | SQLite | PostgreSQL |", "|---|---|---|"]
        s, p = results["sqlite"], results.get("postgres")

        def both(f):
            return f"| {f(s)} | {f(p) if p else '—'} |"
        lines.append("| events stored " + both(lambda r: f"{r['seed']['events']:,}"))
        lines.append("| seeding (events/s) " + both(lambda r: f"{r['seed']['eventsPerSecond']:,}"))
        lines.append("| storage (events, spans, indexes) " + both(lambda r: f"{r['bytes'] / 2**30:.2f} GiB ({r['bytesPerEvent']} B/event)"))
        lines.append("| site history, 90 d, store (p50 / p99 / max ms) " + both(
            lambda r: "{p50} / {p99} / {max}".format(**r["queries"][30]["siteHistoryMs"])))
        lines.append("| fleet history 30 d, store (s, 3 runs) " + both(lambda r: ", ".join(f"{t:.2f}" for t in r["queries"][30]["fleetHistorySeconds"])))
        lines.append("| fleet history 90 d, store (s, 3 runs) " + both(lambda r: ", ".join(f"{t:.2f}" for t in r["queries"][90]["fleetHistorySeconds"])))
        h = results["http"]
        lines += ["", "Through HTTP on a release aggregator opened on the SQLite file: `GET /v1/sites/{site}/history?window=90d` "
                  f"p50 {h['siteHistoryMs']['p50']} ms, p99 {h['siteHistoryMs']['p99']} ms, max {h['siteHistoryMs']['max']} ms (100 random sites); "
                  f"`GET /v1/history?window=30d` {', '.join(map(str, h['fleet30dMs']))} ms; `?window=90d` {', '.join(map(str, h['fleet90dMs']))} ms.",
                  "", "Targets: a site's history under 100 ms, the fleet ranking under 2 s.", "<!-- history:end -->"]
        write_section(args.write, "history", "\n".join(lines))


if __name__ == "__main__":
    main()
