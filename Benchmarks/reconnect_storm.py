#!/usr/bin/env python3
"""The reconnect storm (issue 8): N sites come back at once with K queued operations each.

A real broker, the real aggregator (release build) with a stand-in `az` that logs each call's
start and end, and `edgefleet simulate` with N sites that lost Azure a minute before the start.
While they are semi-connected the benchmark submits K operations per site through the HTTP
API; at --restore-at the scenario gives every site its link back in the same instant. Measured:
the time from that instant until every operation succeeded, the highest number of `az` running
at once (must never exceed --max-concurrent-dispatches), and the aggregator's peak RSS (VmHWM).
The baseline in the same run is the stand-in `az` itself, run N*K times back to back by a
shell with the same concurrency limit (xargs -P): what the machine can spawn before any
EdgeFleet code takes part.

Usage: python3 Benchmarks/reconnect_storm.py [--sites 5000] [--per-site 2] [--limit 4] [--write docs/benchmarks.md] [--skip-build]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from benchlib import ROOT, cpu_seconds, free_port, machine, release_binaries, start_broker, write_section

AZ = """#!/bin/sh
s=$(date +%s.%N)
e=$(date +%s.%N)
echo "$EDGEFLEET_OPERATION_ID $s $e" >> '{log}'
"""


def http(port, path, body=None, token=None):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode() if body else None,
                                     headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def machine_ticks():
    """(idle, total) clock ticks of the whole machine so far (/proc/stat; idle includes I/O wait)."""
    fields = [int(f) for f in open("/proc/stat").readline().split()[1:]]
    return fields[3] + fields[4], sum(fields[:8])


def peak_concurrency(lines):
    events = []
    for line in lines:
        _, start, end = line.split()
        events += [(float(start), 1), (float(end), -1)]
    running = peak = 0
    for _, delta in sorted(events):
        running += delta
        peak = max(peak, running)
    return peak


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", type=int, default=5000)
    parser.add_argument("--per-site", type=int, default=2)
    parser.add_argument("--limit", type=int, default=4)
    parser.add_argument("--restore-at", type=int, default=150, help="seconds after the simulation starts")
    parser.add_argument("--write")
    parser.add_argument("--keep-log", help="copy the stand-in az's log (id, start, end per call) here")
    parser.add_argument("--skip-build", action="store_true")
    parser.add_argument("--perf", help="record the whole machine with perf (perf record -a) from the restore instant to the drain, into this file")
    parser.add_argument("--perf-aggregator", help="record the aggregator alone with call graphs (perf record -g -p) over the same span, into this file")
    args = parser.parse_args()
    aggregator, cli = release_binaries(args.skip_build, "edgefleet-aggregator", "edgefleet")
    total = args.sites * args.per_site
    procs = []
    with tempfile.TemporaryDirectory(prefix="edgefleet-storm-") as directory:
        try:
            broker, mqtt_port, _ = start_broker(directory)
            procs.append(broker)
            os.mkdir(os.path.join(directory, "bin"))
            az_log = os.path.join(directory, "az.log")
            az = os.path.join(directory, "bin", "az")
            open(az, "w").write(AZ.format(log=az_log))
            os.chmod(az, 0o755)

            # Baseline: the stand-in az, N*K times, limit at once, by xargs.
            baseline_log = os.path.join(directory, "baseline.log")
            open(os.path.join(directory, "bin", "az-baseline"), "w").write(AZ.format(log=baseline_log))
            os.chmod(os.path.join(directory, "bin", "az-baseline"), 0o755)
            def run_baseline():
                started = time.perf_counter()
                subprocess.run(f"seq {total} | EDGEFLEET_OPERATION_ID=x xargs -P {args.limit} -n 1 {directory}/bin/az-baseline", shell=True,
                               check=True, stdout=subprocess.DEVNULL)
                return time.perf_counter() - started

            # Run before the storm and again after it (everything stopped): on this shared machine
            # one run of the baseline alone varied from 8.9 s to 11.6 s between runs, which moved
            # the ratio more than any change to the aggregator did. The ratio uses their mean.
            baseline_before = run_baseline()

            open(os.path.join(directory, "executors.yaml"), "w").write(
                'extension.install:\n  argv: [az, k8s-extension, create, --cluster-name, "{cluster.name}", --name, "{params.name}"]\n'
                "  timeout: 60s\n")
            token = "storm-benchmark-token-0123456789"
            open(os.path.join(directory, "tokens"), "w").write(token + "\n")
            http_port = free_port()
            env = dict(os.environ, PATH=os.path.join(directory, "bin") + ":" + os.environ["PATH"])
            agg = subprocess.Popen(
                [aggregator, "--broker", f"mqtt://127.0.0.1:{mqtt_port}", "--db", os.path.join(directory, "fleet.sqlite"),
                 "--http", f"127.0.0.1:{http_port}", "--token-file", os.path.join(directory, "tokens"), "--public-reads", "true",
                 "--executors", os.path.join(directory, "executors.yaml"), "--connected-within", "20s", "--budget", "1h", "--warn-before", "10m", "--critical-before", "5m",
                 "--stable-for", "2s", "--max-concurrent-dispatches", str(args.limit), "--dispatch-interval", "200ms",
                 "--log-level", "warning"], env=env, stdout=open(os.path.join(directory, "aggregator.log"), "w"), stderr=subprocess.STDOUT)
            procs.append(agg)

            scenario = os.path.join(directory, "storm.yaml")
            open(scenario, "w").write(
                f"sites: {args.sites}\nprefix: storm\nheartbeatInterval: 5s\nregions: {{all: {args.sites}}}\nevents:\n"
                f"  - {{at: 0s, region: all, contactAge: 1m}}\n  - {{at: {args.restore_at}s, region: all, restore: true}}\n")
            for _ in range(100):
                try:
                    http(http_port, "/healthz")
                    break
                except OSError:
                    if agg.poll() is not None:
                        sys.exit("the aggregator did not start: " + open(os.path.join(directory, "aggregator.log")).read())
                    time.sleep(0.1)
            sim_start = time.time()
            sim = subprocess.Popen([cli, "simulate", "--broker", f"mqtt://127.0.0.1:{mqtt_port}", "--scenario", scenario],
                                   stdout=subprocess.DEVNULL, stderr=open(os.path.join(directory, "simulate.log"), "w"))
            procs.append(sim)
            restore_instant = sim_start + args.restore_at

            while http(http_port, "/v1/fleet")["modes"]["semi-connected"] < args.sites:
                if time.time() > restore_instant - 5:
                    sys.exit("the fleet did not report in time: raise --restore-at")
                time.sleep(0.5)

            # Submit K operations per site while every site is away (4 threads).
            ids = [(f"storm-{i + 1:0{max(3, len(str(args.sites)))}d}", k) for i in range(args.sites) for k in range(args.per_site)]

            def submit(chunk):
                for site, k in chunk:
                    http(http_port, "/v1/operations", {"site": site, "kind": "extension.install", "params": {"name": f"ext-{k}"}}, token)

            threads = [threading.Thread(target=submit, args=(ids[i::4],)) for i in range(4)]
            submit_start = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            submit_seconds = time.perf_counter() - submit_start
            if time.time() > restore_instant:
                sys.exit("submission took past the restore instant: raise --restore-at")
            queued = http(http_port, "/v1/fleet")["queue"].get("queued", 0)
            if os.path.exists(az_log) and open(az_log).read().strip():
                sys.exit("operations ran before the link was back")

            recorder = None
            time.sleep(max(0, restore_instant - time.time()))
            # CPU time (user + system) of the aggregator and of the simulated fleet over the storm,
            # from the kernel's accounting: what the aggregator costs per operation, which the wall
            # clock ratio (the stand-ins get what the others leave of the 2 cores) only shows blurred.
            cpu_start = {name: cpu_seconds(proc.pid) for name, proc in (("aggregator", agg), ("fleet", sim), ("broker", broker))}
            # Whether the machine was saturated over the storm: its idle share (both cores).
            machine_start = machine_ticks()
            if args.perf or args.perf_aggregator:
                what = ["-a", "-o", args.perf] if args.perf else ["-g", "-p", str(agg.pid), "-o", args.perf_aggregator]
                recorder = subprocess.Popen(["perf", "record", "-F", "499"] + what, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while True:
                fleet = http(http_port, "/v1/fleet")
                if fleet["queue"].get("succeeded", 0) >= total:
                    break
                if fleet["queue"].get("failed", 0):
                    sys.exit(f"operations failed: {fleet['queue']}")
                # Once a second, as a dashboard would: the figures come from the stand-in's own log,
                # and a summary taken five times a second cost the aggregator 3% of its CPU here.
                time.sleep(1.0)
            drained = time.time() - restore_instant
            cpu = {name: cpu_seconds(proc.pid) - cpu_start[name] for name, proc in (("aggregator", agg), ("fleet", sim), ("broker", broker))}
            machine_end = machine_ticks()
            idle_share = (machine_end[0] - machine_start[0]) / max(1, machine_end[1] - machine_start[1])
            if recorder:
                recorder.send_signal(2)
                recorder.wait()
            lines = open(az_log).read().splitlines()
            first = min(float(l.split()[1]) for l in lines) - restore_instant
            peak = peak_concurrency(lines)
            spans = [(float(l.split()[1]), float(l.split()[2])) for l in lines]
            busy = sum(e - b for b, e in spans)
            last_end = max(e for _, e in spans)
            # How many az ran on average between the first start and the last end: the limit when
            # the aggregator refills every freed slot at once.
            mean_running = busy / max(last_end - min(b for b, _ in spans), 1e-9)
            # The last executor's end, from its own log (the poll above sees it up to a few hundred
            # milliseconds late: the fleet's queue counts are refreshed at most 4 times a second).
            last_end_after_restore = last_end - restore_instant
            if args.keep_log:
                shutil.copy(az_log, args.keep_log)
            hwm = next(int(l.split()[1]) for l in open(f"/proc/{agg.pid}/status") if l.startswith("VmHWM:")) / 1024
            ran_once = len(lines) == total and len({l.split()[0] for l in lines}) == total
        finally:
            for proc in reversed(procs):
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
        baseline_after = run_baseline()
        baseline_seconds = (baseline_before + baseline_after) / 2

    result = {
        "sites": args.sites, "operations": total, "limit": args.limit, "queued_before_restore": queued,
        "submit_per_second": round(total / submit_seconds), "first_dispatch_after_restore_s": round(first, 1),
        "drained_after_restore_s": round(drained, 1), "operations_per_second": round(total / drained, 1),
        "last_run_ended_after_restore_s": round(last_end_after_restore, 1),
        "first_to_last_run_s": round(last_end_after_restore - first, 1),
        "peak_concurrent_az": peak, "mean_concurrent_az": round(mean_running, 2), "each_ran_once": ran_once, "aggregator_peak_rss_mb": round(hwm, 1),
        "aggregator_cpu_s": round(cpu["aggregator"], 2), "aggregator_cpu_ms_per_operation": round(cpu["aggregator"] * 1000 / total, 3),
        "aggregator_cores": round(cpu["aggregator"] / drained, 2), "fleet_cpu_s": round(cpu["fleet"], 2), "broker_cpu_s": round(cpu["broker"], 2),
        "machine_idle_share": round(idle_share, 3),
        "baseline_xargs_s": round(baseline_seconds, 1), "baseline_before_s": round(baseline_before, 1), "baseline_after_s": round(baseline_after, 1),
    }
    print(json.dumps(result, indent=2))
    ok = peak <= args.limit and ran_once
    ratio = result['last_run_ended_after_restore_s'] / max(result['baseline_xargs_s'], 0.1)
    busy_ratio = result['first_to_last_run_s'] / max(result['baseline_xargs_s'], 0.1)
    command = "python3 Benchmarks/reconnect_storm.py" + ("" if args.sites == 5000 else f" --sites {args.sites}") + (
        "" if args.per_site == 2 else f" --per-site {args.per_site}")
    section = f"""<!-- reconnect-storm:begin -->
## Reconnect storm (issues 8 and 13)

`{command}` on {machine()}, {time.strftime('%Y-%m-%d')}.

{args.sites:,} simulated sites (`edgefleet simulate`) lose Azure before the start; {total:,} operations
({args.per_site} per site) are submitted through the HTTP API while they are away ({result['submit_per_second']:,}/s over HTTP);
then every site gets its link back in the same instant. The aggregator (release build, `stableFor` 2 s,
`--max-concurrent-dispatches {args.limit}`) runs them through a stand-in `az` that only logs its start and end.

| | figure |
| --- | --- |
| first operation started after the link came back | {result['first_dispatch_after_restore_s']} s (heartbeats every 5 s + `stableFor` 2 s) |
| every operation succeeded after (the fleet's counts, polled) | {result['drained_after_restore_s']} s ({result['operations_per_second']} operations/s) |
| the last `az` ended after (its own log) | **{result['last_run_ended_after_restore_s']} s**; from the first start: {result['first_to_last_run_s']} s |
| most `az` running at once | **{peak}** (limit {args.limit}: {'honoured' if peak <= args.limit else 'EXCEEDED'}) |
| each operation ran exactly once | {'yes' if ran_once else 'NO'} |
| aggregator CPU (user + system) from the link's return to the drain | **{result['aggregator_cpu_s']} s: {result['aggregator_cpu_ms_per_operation']} ms per operation**, {result['aggregator_cores']} of a core (the simulated fleet {result['fleet_cpu_s']} s, mosquitto {result['broker_cpu_s']} s) |
| aggregator peak RSS (VmHWM) | **{result['aggregator_peak_rss_mb']} MB** |
| baseline: the same {total:,} stand-in `az` runs by `xargs -P {args.limit}`, before the broker, the fleet and the aggregator start and again after they stopped (mean) | {result['baseline_xargs_s']} s ({result['baseline_before_s']} s before, {result['baseline_after_s']} s after) |

From the link's return to the last `az`'s end: **{ratio:.2f}x** the baseline; from the first start to the last end
(the first {result['first_dispatch_after_restore_s']} s are the heartbeat that reports the link and `stableFor`, which the
dispatcher must wait): {busy_ratio:.2f}x. Per operation, a slot holds: the claim (one conditional UPDATE), the spawn,
and the stand-in's own life, which runs slower than the baseline's because 5,000 simulated sites, the broker and the
aggregator share the 2 cores with it. The outcome, the run record and the search for leftovers happen after the slot is
given back. With real `az` commands, which take seconds to minutes each, the fleet-wide limit and Azure set the pace.
Targets: the fleet-wide limit holds and nothing is lost (issue 8): {'met' if ok else 'NOT met'}; the storm within 2x the
`xargs` baseline (issue 13): {'met' if ratio <= 2 else '**not met**'} ({ratio:.2f}x).
<!-- reconnect-storm:end -->"""
    if args.write:
        write_section(args.write, "reconnect-storm", section)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
