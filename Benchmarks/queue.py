#!/usr/bin/env python3
"""The deferred-operation queue: submission throughput into SQLite and paging (issue 5).

`edgefleet-bench queue` (release) submits N operations through the queue's Swift API
(validation against the catalog and the executor template, an idempotency-key check,
one transaction per operation) into a new SQLite file, then lists the queued ones
page by page (100 per page, cursor on the submission order). The baseline, in the same
run: Python's sqlite3 inserting the same number of rows of the same size, one
transaction each, in a WAL database with the same settings, which is what the disk and
SQLite allow before any EdgeFleet code runs.

Usage: python3 Benchmarks/queue.py [--operations 100000] [--write docs/benchmarks.md] [--skip-build]
"""
import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time

from benchlib import ROOT, machine, release_binaries, write_section

SUBMIT_TARGET = 5_000
PAGE_TARGET_MS = 50


def baseline(path, document, count):
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("CREATE TABLE operations (sequence INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, "
                       "site TEXT NOT NULL, kind TEXT NOT NULL, state TEXT NOT NULL, idempotencyKey TEXT UNIQUE, document TEXT NOT NULL)")
    start = time.perf_counter()
    for i in range(count):
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("INSERT INTO operations (id, site, kind, state, idempotencyKey, document) VALUES (?, ?, ?, ?, ?, ?)",
                           (f"op-{i}", f"site-{i % 1000}", "extension.install", "queued", f"key-{i}", document))
        connection.execute("COMMIT")
    seconds = time.perf_counter() - start
    connection.close()
    return count / seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--operations", type=int, default=100_000)
    parser.add_argument("--write")
    parser.add_argument("--skip-build", action="store_true")
    args = parser.parse_args()
    bench, = release_binaries(args.skip_build, "edgefleet-bench")

    with tempfile.TemporaryDirectory(prefix="edgefleet-queue-") as directory:
        database = os.path.join(directory, "fleet.sqlite")
        out = subprocess.run([bench, "queue", "--database", database, "--operations", str(args.operations)],
                             capture_output=True, text=True, timeout=1800)
        if out.returncode != 0:
            sys.exit(f"edgefleet-bench queue failed: {out.stderr}")
        result = json.loads(out.stdout.strip().splitlines()[-1])
        document = sqlite3.connect(database).execute("SELECT document FROM operations LIMIT 1").fetchone()[0]
        rate = baseline(os.path.join(directory, "baseline.sqlite"), document, args.operations)
    print(json.dumps({**result, "baselinePerSecond": rate}), file=sys.stderr)

    submit = result["submitPerSecond"]
    p99 = result["pageP99"] * 1000
    section = f"""<!-- queue:begin -->
## Deferred-operation queue: submission and paging (issue 5)

`edgefleet-bench queue` (release build) submits {args.operations:,} operations through the queue's Swift API (catalog and
executor-template validation, an idempotency-key check, one transaction each) into a new SQLite file, then lists the
queued ones 100 per page with the cursor. Baseline in the same run: Python's `sqlite3` inserting as many rows of the same
size ({len(document)} bytes of JSON), one transaction each, into a WAL database.

- Command: `python3 Benchmarks/queue.py --operations {args.operations} --write docs/benchmarks.md` (part of `make bench`)
- Machine: {machine()}
- Measured: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}

| measure | value | target |
| --- | ---: | --- |
| submissions per second | {submit:,.0f} | ≥ {SUBMIT_TARGET:,}: {'met' if submit >= SUBMIT_TARGET else '**not met**'} |
| baseline: bare SQLite inserts per second | {rate:,.0f} | (ratio {submit / rate:.2f}) |
| page of 100, median | {result['pageP50'] * 1000:.2f} ms | |
| page of 100, p99 ({result['pages']:,} pages) | {p99:.2f} ms | < {PAGE_TARGET_MS} ms: {'met' if p99 < PAGE_TARGET_MS else '**not met**'} |
| page of 100, slowest | {result['pageMax'] * 1000:.2f} ms | |
<!-- queue:end -->"""
    print(section)
    if args.write:
        write_section(args.write, "queue", section)


if __name__ == "__main__":
    main()
