#!/usr/bin/env python3
"""CPU time per heartbeat (issue 13, section 3): the aggregator next to what people use today.

One stream of heartbeats for 10,000 sites (QoS 0, as agents send them) at a rate the publisher sets
(15,000/s by default) that every subscriber keeps up with, drained in the same run by three
subscribers of the same broker:
- the release `edgefleet-aggregator`, which does the fleet's whole job (modes, deadlines, views);
- `mosquitto_sub` writing to /dev/null: the floor, a libmosquitto client that copies bytes;
- `prometheus-mqtt-exporter` (Debian's package, mqtt2prometheus), exporting two fields of each
  heartbeat (`session`, `seq`) per site.
Each one's CPU time (user + system, all threads) over the stream, divided by the heartbeats sent,
is its cost per heartbeat. The sites announce themselves first; a warm-up pass precedes the
measured one. Ingest must stay complete: after the run the aggregator's SQLite file shows no `seq`
gap. Targets: the aggregator at most 2x `mosquitto_sub` and at most 0.5x the exporter, per heartbeat.

Usage: python3 Benchmarks/cpu_per_heartbeat.py [--rate 15000] [--seconds 40] [--write docs/benchmarks.md] [--skip-build]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import aggregator as aggregator_bench
from aggregator import heartbeats, seq_gaps, start_aggregator, stop, wait_retained
from benchlib import cpu_seconds, free_port, machine, release_binaries, start_broker, start_postgres, stop_all, which, write_section

SITES = 10_000
MAX_VS_SUB = 2.0
MAX_VS_EXPORTER = 0.5

EXPORTER_CONFIG = """mqtt:
  server: tcp://127.0.0.1:{port}
  topic_path: edgefleet/v1/sites/+/heartbeat
  device_id_regex: "edgefleet/v1/sites/(?P<deviceid>[^/]+)/heartbeat"
  qos: 0
cache:
  timeout: 60m
metrics:
  - prom_name: edgefleet_heartbeat_session
    mqtt_name: session
    help: the agent's session
    type: gauge
  - prom_name: edgefleet_heartbeat_seq
    mqtt_name: seq
    help: the heartbeat's sequence number
    type: gauge
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=15_000)
    parser.add_argument("--seconds", type=float, default=40)
    parser.add_argument("--write")
    parser.add_argument("--skip-build", action="store_true")
    parser.add_argument("--postgres", action="store_true", help="the aggregator on PostgreSQL (a server of its own) instead of SQLite")
    args = parser.parse_args()
    exporter = shutil.which("prometheus-mqtt-exporter")
    if exporter is None:
        sys.exit("prometheus-mqtt-exporter is missing: apt-get install prometheus-mqtt-exporter")
    aggregator, bench = release_binaries(args.skip_build, "edgefleet-aggregator", "edgefleet-bench")
    rounds = max(1, int(args.rate * args.seconds / SITES))
    with tempfile.TemporaryDirectory(prefix="edgefleet-cpu-") as directory:
        broker, port, _ = start_broker(directory)
        procs = [broker]
        stop_postgres = None
        if args.postgres:
            # Its own directory under /tmp: the postgres user cannot enter this one (0700, root's).
            pg_directory = tempfile.mkdtemp(prefix="edgefleet-cpu-pg-")
            try:
                url, password_file, stop_pg = start_postgres(pg_directory)
            except BaseException:
                stop_all(procs)  # the broker started above
                raise

            def stop_postgres():
                stop_pg()
                shutil.rmtree(pg_directory, ignore_errors=True)
            aggregator_bench.POSTGRES = (url, password_file)
        try:
            agg = start_aggregator(aggregator, port, directory)
            procs.append(agg)
            sub = subprocess.Popen([which("mosquitto_sub"), "-h", "127.0.0.1", "-p", str(port), "-t", "edgefleet/v1/sites/+/heartbeat"],
                                   stdout=subprocess.DEVNULL)
            procs.append(sub)
            config = os.path.join(directory, "exporter.yaml")
            open(config, "w").write(EXPORTER_CONFIG.format(port=port))
            exp = subprocess.Popen([exporter, "-config", config, "-listen-address", "127.0.0.1", "-listen-port", str(free_port()),
                                    "-log-level", "error"], stdout=subprocess.DEVNULL, stderr=open(os.path.join(directory, "exporter.log"), "w"))
            procs.append(exp)
            time.sleep(1)
            # The sites announce themselves, then one warm-up pass.
            heartbeats(bench, port, SITES, 1, "warmup", announce=True)
            wait_retained(port, "edgefleet/v1/fleet/sites/warmup", timeout=120)
            time.sleep(2)
            watched = {"aggregator": agg, "mosquitto_sub": sub, "prometheus-mqtt-exporter": exp}
            before = {name: cpu_seconds(p.pid) for name, p in watched.items()}
            started = time.time()
            out = subprocess.run([bench, "heartbeats", "--broker", f"mqtt://127.0.0.1:{port}", "--sites", str(SITES), "--rounds", str(rounds),
                                  "--rate", str(args.rate), "--marker", "measured"], capture_output=True, text=True, timeout=args.seconds * 10 + 120)
            if out.returncode != 0:
                sys.exit(f"edgefleet-bench heartbeats failed: {out.stderr}")
            sent = json.loads(out.stdout.strip().splitlines()[-1])
            wait_retained(port, "edgefleet/v1/fleet/sites/measured", timeout=120)
            time.sleep(2)  # the others drain the same stream
            after = {name: cpu_seconds(p.pid) for name, p in watched.items()}
            wall = time.time() - started
            for name, p in watched.items():
                if p.poll() is not None:
                    sys.exit(f"{name} exited during the run")
            stop(agg)
            if args.postgres:
                password = open(password_file).read().strip()
                port_pg = url.rsplit(":", 1)[1].split("/")[0]
                records = subprocess.run(["psql", "-X", "-q", "-t", "-A", "-h", "127.0.0.1", "-p", port_pg, "-U", "edgefleet", "-d", "edgefleet",
                                          "-c", "SELECT record FROM sites"], capture_output=True, text=True, check=True,
                                         env={**os.environ, "PGPASSWORD": password}).stdout.splitlines()
                stored = len(records)
                gaps = sum(json.loads(r).get("seqGaps", 0) for r in records if r.strip())
            else:
                stored, gaps = seq_gaps(os.path.join(directory, "fleet.sqlite"))
        finally:
            stop_all(procs)
            if stop_postgres:
                stop_postgres()
    count = sent["published"]
    rate = count / (sent["end"] - sent["start"])
    per = {name: (after[name] - before[name]) / count * 1e6 for name in watched}
    vs_sub = per["aggregator"] / per["mosquitto_sub"] if per["mosquitto_sub"] > 0 else float("inf")
    vs_exp = per["aggregator"] / per["prometheus-mqtt-exporter"] if per["prometheus-mqtt-exporter"] > 0 else float("inf")
    result = {"heartbeats": count, "rate": round(rate), "wall": round(wall, 1), "perHeartbeatUs": {k: round(v, 2) for k, v in per.items()},
              "vsMosquittoSub": round(vs_sub, 2), "vsExporter": round(vs_exp, 2), "storedSites": stored, "seqGaps": gaps}
    print(json.dumps(result), file=sys.stderr)
    rows = "\n".join(f"| {name} | {(after[name] - before[name]):.2f} s | {per[name]:.2f} µs |" for name in watched)
    name = "cpu-per-heartbeat" + ("-postgres" if args.postgres else "")
    section = f"""<!-- {name}:begin -->
## CPU time per heartbeat (issue 13{'; the aggregator on PostgreSQL: issue 14' if args.postgres else ''})

One stream of {count:,} heartbeats for {SITES:,} sites (QoS 0) at {rate:,.0f}/s, set by the publisher, drained in the same run by
the release aggregator, `mosquitto_sub` (to `/dev/null`) and `prometheus-mqtt-exporter` (Debian's mqtt2prometheus, exporting
`session` and `seq` of every heartbeat per site). CPU is user + system of each process over the stream (all threads).
Ingest complete: {gaps} `seq` gaps across {stored:,} stored sites.

- Command: `python3 Benchmarks/cpu_per_heartbeat.py --rate {args.rate} --seconds {args.seconds:.0f}{' --postgres' if args.postgres else ''} --write docs/benchmarks.md` (part of `make bench`)
- The aggregator's database: {'PostgreSQL (a server of its own on loopback; its CPU is not counted: the aggregator writes changed records once a second, 1,000 per statement)' if args.postgres else 'SQLite'}
- Machine: {machine()}
- Measured: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}

| subscriber | CPU over the stream | per heartbeat |
| --- | ---: | ---: |
{rows}

The aggregator costs {vs_sub:.2f}x `mosquitto_sub` (target at most {MAX_VS_SUB}x: {"met" if vs_sub <= MAX_VS_SUB else "**not met**"}) and
{vs_exp:.2f}x the exporter (target at most {MAX_VS_EXPORTER}x: {"met" if vs_exp <= MAX_VS_EXPORTER else "**not met**"}) per heartbeat.
<!-- {name}:end -->"""
    print(section)
    if args.write:
        write_section(args.write, name, section)
    if gaps:
        sys.exit(f"the aggregator missed {gaps} heartbeats: the run is not valid")


if __name__ == "__main__":
    main()
