#!/usr/bin/env python3
"""The aggregator's ingest rate and its behaviour at 100,000 sites (issue 4).

ingest: heartbeats for 10,000 sites (QoS 0, as agents send them) pushed by one publisher
(`edgefleet-bench heartbeats`) as fast as a local mosquitto takes them. Two subscribers
drain the same stream in the same run: the release aggregator and `mosquitto_sub -C N`
writing to /dev/null. The stream ends with a heartbeat for a new "marker" site; the
aggregator has processed everything before it when the marker's retained view appears
(one connection delivers in order), which `mosquitto_sub -C 1` on that topic reports.
Rate = N / (time from the publisher's start to that moment). After the rounds the
aggregator is stopped and its SQLite file read: heartbeat `seq` gaps must be zero, so no
message was dropped on the way.

scale: the aggregator is given 100,000 sites (one heartbeat each), then heartbeats flow
at 10,000/s for DURATION seconds while every 100 ms one site reports an old Azure contact
(`edgefleet-bench mode-change-latency`), which turns it semi-connected; the time from
that heartbeat to the site's retained view saying so is measured. Peak RSS is the
aggregator's VmHWM at the end.

Usage: python3 Benchmarks/aggregator.py [--rounds 3] [--messages 300000] [--scale-sites 100000]
       [--scale-seconds 30] [--write docs/benchmarks.md] [--skip-build] [--only ingest|scale]
"""
import argparse
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import ROOT, build_release, free_port, machine, start_broker, start_postgres, which, write_section

# The database the aggregator runs on: its SQLite file (the default), or (--postgres) a PostgreSQL of its own.
POSTGRES = None  # (url, password file) when set

INGEST_MIN_RATIO = 0.8
INGEST_MIN_RATE = 50_000
SCALE_MAX_RSS_MB = 300
SCALE_MAX_P99_S = 1.0
SCRAPE_MAX_S = 1.0


def bin_dir():
    return subprocess.run(["swift", "build", "-c", "release", "--show-bin-path"], capture_output=True, text=True,
                          check=True, cwd=ROOT).stdout.strip()


def start_aggregator(binary, port, directory, extra=(), http_port=0):
    log = open(os.path.join(directory, "aggregator.log"), "a")
    database = ["--db", POSTGRES[0], "--db-password-file", POSTGRES[1]] if POSTGRES else ["--db", os.path.join(directory, "fleet.sqlite")]
    proc = subprocess.Popen([binary, "--broker", f"mqtt://127.0.0.1:{port}", *database,
                             "--http", f"127.0.0.1:{http_port}", "--log-level", "warning", *extra], stdout=log, stderr=subprocess.STDOUT)
    wait_retained(port, "edgefleet/v1/aggregator/presence", timeout=30)
    return proc


def wait_retained(port, topic, timeout):
    """Blocks until a message is (or already was, retained) published on topic."""
    out = subprocess.run([which("mosquitto_sub"), "-h", "127.0.0.1", "-p", str(port), "-t", topic, "-C", "1", "-W", str(timeout)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"nothing on {topic} within {timeout} s")
    return out.stdout


def heartbeats(bench, port, sites, rounds, marker, publishers=1, announce=False):
    """PUBLISHERS processes share the sites; when all are done, one more sends the marker (a presence, then a
    heartbeat). With ANNOUNCE each site first publishes its presence (a site exists once it has announced itself)."""
    share = sites // publishers
    procs = [subprocess.Popen([bench, "heartbeats", "--broker", f"mqtt://127.0.0.1:{port}", "--sites", str(share),
                               "--offset", str(i * share), "--rounds", str(rounds), *(["--announce"] if announce else [])],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(publishers)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        if p.returncode != 0:
            sys.exit(f"edgefleet-bench heartbeats failed: {err}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    done = subprocess.run([bench, "heartbeats", "--broker", f"mqtt://127.0.0.1:{port}", "--sites", "0", "--marker", marker],
                          capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        sys.exit(f"edgefleet-bench heartbeats (marker) failed: {done.stderr}")
    return {"start": min(r["start"] for r in results), "end": max(r["end"] for r in results),
            "published": sum(r["published"] for r in results)}


def vm_hwm_mb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def seq_gaps(database):
    connection = sqlite3.connect(database)
    gaps = sites = 0
    for (record,) in connection.execute("SELECT record FROM sites"):
        sites += 1
        gaps += json.loads(record).get("seqGaps", 0)
    connection.close()
    return sites, gaps


def ingest(aggregator, bench, rounds, messages, publishers, sites=10_000):
    per_round = max(1, messages // sites)
    results = []
    with tempfile.TemporaryDirectory(prefix="edgefleet-ingest-") as directory:
        broker, port, _ = start_broker(directory)
        proc = None
        try:
            proc = start_aggregator(aggregator, port, directory)
            rss, stored, results = ingest_rounds(proc, bench, rounds, per_round, publishers, sites, directory, port)
        finally:
            cleanup(proc, broker)
    if gaps_of(stored):
        sys.exit(f"the aggregator missed {stored[1]} heartbeats (seq gaps): the run is not valid")
    return results, rss, stored[0]


def gaps_of(stored):
    return stored[1] > 0


def ingest_rounds(proc, bench, rounds, per_round, publishers, sites, directory, port):
    results = []
    # Warm-up: every site once, so the timed rounds measure steady-state ingest.
    heartbeats(bench, port, sites, 1, "warmup", announce=True)
    wait_retained(port, "edgefleet/v1/fleet/sites/warmup", timeout=60)
    for r in range(rounds):
        marker = f"marker-{r}"
        count = sites * per_round
        view = subprocess.Popen([which("mosquitto_sub"), "-h", "127.0.0.1", "-p", str(port), "-t", f"edgefleet/v1/fleet/sites/{marker}",
                                 "-C", "1", "-W", "300"], stdout=subprocess.DEVNULL)
        drain = subprocess.Popen([which("mosquitto_sub"), "-h", "127.0.0.1", "-p", str(port), "-t", "edgefleet/v1/sites/+/heartbeat",
                                  "-C", str(count + 1), "-W", "300"], stdout=subprocess.DEVNULL)
        time.sleep(0.5)  # both subscriptions made before the first message
        start = time.time()
        sent = heartbeats(bench, port, sites, per_round, marker, publishers)
        ends = {}
        while len(ends) < 2:
            for name, p in (("aggregator", view), ("mosquitto_sub", drain)):
                if name not in ends and p.poll() is not None:
                    if p.returncode != 0:
                        sys.exit(f"{name} did not see the whole stream (round {r + 1})")
                    ends[name] = time.time()
            time.sleep(0.001)
        begin = sent["start"] if sent["start"] > start else start
        results.append({
            "round": r + 1, "messages": count,
            "aggregator": count / (ends["aggregator"] - begin),
            "mosquitto_sub": count / (ends["mosquitto_sub"] - begin),
            "publisher": count / (sent["end"] - sent["start"]),
        })
        print(json.dumps(results[-1]), file=sys.stderr)
    rss = vm_hwm_mb(proc.pid)
    stop(proc)
    stored = seq_gaps(os.path.join(directory, "fleet.sqlite"))
    return rss, stored, results


def scrape_times(port, sites, rounds=3):
    """Seconds for each of ROUNDS full /metrics scrapes; checks every site's deadline line is there."""
    import urllib.request
    times = []
    for _ in range(rounds):
        started = time.time()
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=600).read()
        times.append(time.time() - started)
        lines = body.count(b"edgefleet_site_deadline_seconds{site=")
        if lines < sites:
            sys.exit(f"/metrics had {lines} site deadlines, expected at least {sites}")
    return times


def scale(aggregator, bench, sites, seconds):
    with tempfile.TemporaryDirectory(prefix="edgefleet-scale-") as directory:
        broker, port, _ = start_broker(directory)
        proc = None
        try:
            metrics_port = free_port()
            proc = start_aggregator(aggregator, port, directory, extra=("--public-reads", "true"), http_port=metrics_port)
            loaded_at = time.time()
            heartbeats(bench, port, sites, 1, "loaded", announce=True)
            wait_retained(port, "edgefleet/v1/fleet/sites/loaded", timeout=300)
            load_seconds = time.time() - loaded_at
            rss_loaded = vm_hwm_mb(proc.pid)
            scrapes = scrape_times(metrics_port, sites)
            out = subprocess.run([bench, "mode-change-latency", "--broker", f"mqtt://127.0.0.1:{port}", "--sites", str(sites),
                                  "--rate", "10000", "--duration", str(seconds)], capture_output=True, text=True, timeout=seconds + 120)
            if out.returncode != 0:
                sys.exit(f"edgefleet-bench mode-change-latency failed: {out.stderr}")
            latency = json.loads(out.stdout.strip().splitlines()[-1].replace("nan", "NaN"))
            rss = vm_hwm_mb(proc.pid)
            stop(proc)
            broker_rss = vm_hwm_mb(broker.pid) if broker.poll() is None else float("nan")
        finally:
            cleanup(proc, broker)  # a failed run must not leave a broker or an aggregator behind
    return {"sites": sites, "loadSeconds": load_seconds, "rssLoadedMB": rss_loaded, "rssMB": rss, "brokerRssMB": broker_rss,
            "scrapeMedian": statistics.median(scrapes), "scrapeMax": max(scrapes), **latency}


def cleanup(*procs):
    for p in procs:
        if p is not None and p.poll() is None:
            p.kill()
            p.wait()


def mark(ok):
    return "met" if ok else "**not met**"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--messages", type=int, default=300_000)
    parser.add_argument("--publishers", type=int, default=2, help="publisher processes for the ingest stream")
    parser.add_argument("--scale-sites", type=int, default=100_000)
    parser.add_argument("--scale-seconds", type=float, default=30)
    parser.add_argument("--only", choices=["ingest", "scale"])
    parser.add_argument("--write")
    parser.add_argument("--skip-build", action="store_true")
    parser.add_argument("--postgres", action="store_true", help="the scale run on PostgreSQL (a server of its own) instead of SQLite")
    args = parser.parse_args()

    if args.skip_build:
        aggregator, bench = (os.path.join(bin_dir(), p) for p in ("edgefleet-aggregator", "edgefleet-bench"))
    else:
        aggregator, bench = build_release("edgefleet-aggregator", "edgefleet-bench")
    when = time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())
    where = machine()

    if args.only in (None, "ingest"):
        results, rss, stored = ingest(aggregator, bench, args.rounds, args.messages, args.publishers)
        ratios = [r["aggregator"] / r["mosquitto_sub"] for r in results]
        agg = statistics.median(r["aggregator"] for r in results)
        sub = statistics.median(r["mosquitto_sub"] for r in results)
        pub = statistics.median(r["publisher"] for r in results)
        ratio = statistics.median(ratios)
        rows = "\n".join(f"| {r['round']} | {r['messages']:,} | {r['aggregator']:,.0f} | {r['mosquitto_sub']:,.0f} | {r['aggregator'] / r['mosquitto_sub']:.2f} | {r['publisher']:,.0f} |"
                         for r in results)
        section = f"""<!-- aggregator-ingest:begin -->
## Aggregator ingest (issue 4)

Heartbeats for 10,000 sites (QoS 0, 10,000 per pass, {results[0]['messages']:,} per round after a warm-up pass) pushed by
{args.publishers} publisher processes (each its share of the sites) as fast as a local mosquitto takes them; the release aggregator and `mosquitto_sub` (to `/dev/null`) drain
the same stream in the same run. Each round ends with a heartbeat for a new site: the aggregator has processed the
whole stream when that site's retained view appears. After the rounds the aggregator's SQLite file shows no `seq` gap
across the {stored:,} stored sites, so nothing was dropped on the way.

- Command: `python3 Benchmarks/aggregator.py --only ingest --rounds {args.rounds} --messages {args.messages} --publishers {args.publishers} --write docs/benchmarks.md` (part of `make bench`)
- Machine: {where}
- Measured: {when}

| round | heartbeats | aggregator /s | `mosquitto_sub` /s | ratio | publishers together /s |
| --- | ---: | ---: | ---: | ---: | ---: |
{rows}

Median: aggregator {agg:,.0f} heartbeats/s, `mosquitto_sub` {sub:,.0f}/s, paired ratio {ratio:.2f}. Targets: at least
{INGEST_MIN_RATIO} of `mosquitto_sub`'s rate: {mark(ratio >= INGEST_MIN_RATIO)}; at least {INGEST_MIN_RATE:,} heartbeats/s: {mark(agg >= INGEST_MIN_RATE)}.
The publishers ({pub:,.0f}/s together) and the single-threaded broker set the pace: when both subscribers keep up
with the stream, these figures are its rate, a floor for what the aggregator could take. The aggregator's peak RSS in this run
was {rss:.0f} MB.
<!-- aggregator-ingest:end -->"""
        print(section)
        if args.write:
            write_section(args.write, "aggregator-ingest", section)

    if args.only in (None, "scale"):
        global POSTGRES
        postgres_directory = tempfile.TemporaryDirectory(prefix="edgefleet-scale-pg-") if args.postgres else None
        stop_postgres = None
        if postgres_directory:
            url, password_file, stop_postgres = start_postgres(postgres_directory.name)
            POSTGRES = (url, password_file)
        try:
            s = scale(aggregator, bench, args.scale_sites, args.scale_seconds)
        finally:
            if stop_postgres:
                stop_postgres()
        backend = "postgres" if args.postgres else "sqlite"
        print(json.dumps(s), file=sys.stderr)
        name = "aggregator-scale" + ("-postgres" if args.postgres else "")
        section = f"""<!-- {name}:begin -->
## Aggregator at {s['sites']:,} sites (issue 4{', on PostgreSQL: issue 14' if args.postgres else ''})

The release aggregator is given {s['sites']:,} sites (one heartbeat each, taken in {s['loadSeconds']:.1f} s including their first
retained views), then heartbeats for all of them flow at 10,000/s for {s['seconds']:.0f} s ({s['heartbeatsPerSecond']:,.0f}/s achieved) while every
100 ms one more site reports an Azure contact an hour old. The time from that heartbeat to the site's retained view on
`edgefleet/v1/fleet/sites/{{site}}` saying `semi-connected` is measured by a subscriber in the same process as the
publisher.

- Command: `python3 Benchmarks/aggregator.py --only scale --scale-sites {args.scale_sites} --scale-seconds {args.scale_seconds:.0f}{' --postgres' if args.postgres else ''} --write docs/benchmarks.md` (part of `make bench`)
- Database: {'PostgreSQL (Debian, on loopback, default durability; a server of its own)' if args.postgres else 'SQLite (WAL)'}
- Machine: {where}
- Measured: {when}

| measure | value | target |
| --- | ---: | --- |
| aggregator peak RSS, sites loaded | {s['rssLoadedMB']:.0f} MB | |
| aggregator peak RSS, end of run | {s['rssMB']:.0f} MB | ≤ {SCALE_MAX_RSS_MB} MB: {mark(s['rssMB'] <= SCALE_MAX_RSS_MB)} |
| mode change → retained view, p50 | {s['p50'] * 1000:.0f} ms | |
| mode change → retained view, p99 | {s['p99'] * 1000:.0f} ms | ≤ {SCALE_MAX_P99_S * 1000:.0f} ms: {mark(s['p99'] <= SCALE_MAX_P99_S and s['lost'] == 0)} |
| mode change → retained view, max | {s['max'] * 1000:.0f} ms | |
| mode changes observed / made | {s['observed']} / {s['flips']} | all |
| `/metrics` full scrape ({s['sites']:,} site deadlines), median of 3 | {s['scrapeMedian'] * 1000:.0f} ms | < 1 s: {mark(s['scrapeMax'] < SCRAPE_MAX_S)} |
| `/metrics` full scrape, slowest of 3 | {s['scrapeMax'] * 1000:.0f} ms | |
| broker peak RSS (for scale) | {s['brokerRssMB']:.0f} MB | |
<!-- {name}:end -->"""
        print(section)
        if args.write:
            write_section(args.write, name, section)


if __name__ == "__main__":
    main()
