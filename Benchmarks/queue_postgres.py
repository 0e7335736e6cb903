#!/usr/bin/env python3
"""The deferred-operation queue on PostgreSQL (issue 14): submissions per second next to bare inserts.

A PostgreSQL of its own (Debian's, default durability: every commit waits for its WAL to reach the disk) on a free
loopback port. `edgefleet-bench queue --database postgres://...` (release) submits N operations through the queue's
Swift API (catalog and executor-template validation, an idempotency-key check, one transaction each, as the HTTP API
does) from C threads at once, as concurrent API clients would; then lists them page by page. The baseline in the same
run: `pgbench` inserting as many rows of the same size into a table with the same indexes, one transaction each, from
as many clients: what the server and the disk allow before any EdgeFleet code runs.

Usage: python3 Benchmarks/queue_postgres.py [--operations 20000] [--concurrency 8] [--write docs/benchmarks.md] [--skip-build]
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

from benchlib import machine, release_binaries, start_postgres, write_section

TARGET = 2_000


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--operations", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--write")
    parser.add_argument("--skip-build", action="store_true")
    args = parser.parse_args()
    bench, = release_binaries(args.skip_build, "edgefleet-bench")
    with tempfile.TemporaryDirectory(prefix="edgefleet-queue-pg-") as directory:
        url, password_file, stop = start_postgres(directory)
        try:
            password = open(password_file).read().strip()
            env = {**os.environ, "PGPASSWORD": password}
            port = re.search(r":(\d+)/", url).group(1)
            out = subprocess.run([bench, "queue", "--database", url, "--password-file", password_file, "--operations", str(args.operations),
                                  "--concurrency", str(args.concurrency)], capture_output=True, text=True, timeout=1800)
            if out.returncode != 0:
                sys.exit(f"edgefleet-bench queue failed: {out.stderr}")
            result = json.loads(out.stdout.strip().splitlines()[-1])
            psql = ["psql", "-X", "-q", "-t", "-A", "-h", "127.0.0.1", "-p", port, "-U", "edgefleet", "-d", "edgefleet"]
            size = int(subprocess.run(psql + ["-c", "SELECT avg(length(document))::int FROM operations"], capture_output=True, text=True,
                                      env=env, check=True).stdout.strip())
            subprocess.run(psql + ["-c", """
                CREATE TABLE baseline (sequence bigserial PRIMARY KEY, id text NOT NULL UNIQUE, site text NOT NULL, kind text NOT NULL,
                    state text NOT NULL, idempotency_key text UNIQUE, history_count integer NOT NULL, document text NOT NULL);
                CREATE INDEX baseline_by_site ON baseline (site, state, sequence);
                CREATE INDEX baseline_by_state ON baseline (state, sequence);
                CREATE SEQUENCE baseline_ids;"""], env=env, check=True)
            script = os.path.join(directory, "insert.sql")
            open(script, "w").write(
                "INSERT INTO baseline (id, site, kind, state, idempotency_key, history_count, document) "
                "SELECT 'op-' || n, 'site-' || (n % 1000), 'extension.install', 'queued', 'key-' || n, 1, "
                f"repeat('x', {size}) FROM (SELECT nextval('baseline_ids') AS n) AS s;\n")
            pgbench = f"/usr/lib/postgresql/{sorted(v for v in os.listdir('/usr/lib/postgresql') if v.isdigit())[-1]}/bin/pgbench"
            transactions = args.operations // args.concurrency
            bench_out = subprocess.run([pgbench, "-n", "-h", "127.0.0.1", "-p", port, "-U", "edgefleet", "-c", str(args.concurrency),
                                        "-j", "2", "-t", str(transactions), "-f", script, "edgefleet"],
                                       capture_output=True, text=True, env=env, check=True).stdout
            baseline = float(re.search(r"tps = ([0-9.]+)", bench_out).group(1))
        finally:
            stop()
    submit = result["submitPerSecond"]
    print(json.dumps({**result, "baselinePerSecond": baseline, "documentBytes": size}), file=sys.stderr)
    section = f"""<!-- queue-postgres:begin -->
## Deferred-operation queue on PostgreSQL (issue 14)

`python3 Benchmarks/queue_postgres.py --operations {args.operations} --concurrency {args.concurrency}` on {machine()},
{time.strftime('%Y-%m-%d')}; PostgreSQL from Debian on loopback with its default durability (every commit waits for
its WAL on the disk).

`edgefleet-bench queue` (release build) submits {args.operations:,} operations through the queue's Swift API (catalog and
executor-template validation, an idempotency-key check, one transaction each) from {args.concurrency} threads at once,
then lists them 100 per page. Baseline in the same run: `pgbench` with {args.concurrency} clients inserting as many rows of
the same size ({size} bytes of JSON) into a table with the same indexes, one transaction each.

| measure | value | target |
| --- | ---: | --- |
| submissions per second | {submit:,.0f} | ≥ {TARGET:,}: {'met' if submit >= TARGET else '**not met**'} |
| baseline: bare inserts per second (pgbench) | {baseline:,.0f} | (ratio {submit / baseline:.2f}) |
| page of 100, median | {result['pageP50'] * 1000:.2f} ms | |
| page of 100, p99 ({result['pages']:,} pages) | {result['pageP99'] * 1000:.2f} ms | |
<!-- queue-postgres:end -->"""
    print(section)
    if args.write:
        write_section(args.write, "queue-postgres", section)
    sys.exit(0 if submit >= TARGET else 1)


if __name__ == "__main__":
    main()
