#!/usr/bin/env python3
"""The site agent's footprint at its default intervals, next to mosquitto_pub (issues 3 and 17).

For DURATION (10 minutes by default) it runs, against a local mosquitto with a TLS listener:

- the agent (release build as shipped, scripts/build-release.sh) over TLS, with its default
  intervals (heartbeat 10 s, Azure probe 60 s, status refresh 5 min), the default `endpoints`
  probe against four TLS stand-ins for the Arc endpoints (`openssl s_server` with a test CA),
  and three local checks every 60 s;
- the baseline, the tool an operator would otherwise script: `mosquitto_pub -l` holding one TLS
  connection to the same broker for the same time, sending one heartbeat every 10 s.

Both are measured the same way, over the same window (from 5 s after start to the end):

- peak RSS: the process's VmHWM;
- anonymous private memory: `Private_Dirty` in /proc/PID/smaps_rollup, sampled every second, its
  peak; and PSS (its peak) beside it;
- CPU: user + system time of the process and of every child it reaped, over wall time.

The budget (issue 17): the agent's peak RSS at most 1.2 times mosquitto_pub's, its Private_Dirty
at most 3 MB at its peak, its CPU at most 0.5% of a core.

The agent's messages are counted through mosquitto_sub, so a run in which the agent did not do
its job (heartbeats missing, Azure not reachable, a check not passing) fails.

Usage: python3 Benchmarks/agent_footprint.py [--duration 600] [--write docs/benchmarks.md] [--skip-build]
       [--env NAME=VALUE ...] (set in the agent's environment only, to try a lever such as MALLOC_ARENA_MAX=1)
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

from benchlib import ROOT, build_release, free_port, machine, start_broker, which, write_section

RSS_RATIO_TARGET = 1.2
PRIVATE_DIRTY_TARGET_MB = 3.0
CPU_TARGET_PERCENT = 0.5
WARMUP_S = 5.0


def proc_cpu_seconds(pid):
    """utime + stime + cutime + cstime: the process and every child it has reaped."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def vm_hwm_kb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def smaps_rollup_kb(pid):
    """Rss, Pss and Private_Dirty (kB) from /proc/PID/smaps_rollup."""
    values = {}
    for line in open(f"/proc/{pid}/smaps_rollup"):
        parts = line.split()
        if len(parts) >= 2 and parts[0].rstrip(":") in ("Rss", "Pss", "Private_Dirty"):
            values[parts[0].rstrip(":")] = int(parts[1])
    return values


def private_dirty_by_mapping(pid):
    """(kB, mapping name) for every mapping with private dirty pages, largest first."""
    rows, name = [], None
    for line in open(f"/proc/{pid}/smaps"):
        parts = line.split()
        if "-" in parts[0] and ":" not in parts[0]:
            start, end = (int(x, 16) for x in parts[0].split("-"))
            name = parts[5] if len(parts) > 5 else f"[anon {(end - start) // 1024} kB]"
            perms = parts[1]
        elif parts[0] == "Private_Dirty:" and int(parts[1]) > 0:
            rows.append((int(parts[1]), f"{name} {perms}"))
    totals = {}
    for kb, label in rows:
        totals[label] = totals.get(label, 0) + kb
    return sorted(((kb, label) for label, kb in totals.items()), reverse=True)


def make_pki(directory):
    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=Footprint Test CA")
    openssl("req", "-new", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    open(os.path.join(directory, "ext.cnf"), "w").write("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.crt", "-days", "2", "-extfile", "ext.cnf")
    return {name: os.path.join(directory, name) for name in ("ca.crt", "server.crt", "server.key")}


def start_stand_ins(pki, count):
    servers, ports = [], []
    for _ in range(count):
        port = free_port()
        servers.append(subprocess.Popen(
            ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert", pki["server.crt"], "-key", pki["server.key"],
             "-www", "-quiet"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        ports.append(port)
    return servers, ports


def stop(proc):
    """SIGTERM, then wait4: returns the rusage that includes every child the process reaped."""
    if proc.poll() is not None:
        sys.exit(f"{proc.args[0]} exited early with {proc.returncode}")
    proc.send_signal(signal.SIGTERM)
    _, _, usage = os.wait4(proc.pid, 0)
    proc.returncode = 0
    return usage


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds (default 600)")
    parser.add_argument("--write", help="update this Markdown file's agent-footprint section")
    parser.add_argument("--skip-build", action="store_true")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the agent's environment (a lever to try)")
    parser.add_argument("--endpoints", type=int, default=4, help="stand-in Arc endpoints the probe checks (default 4)")
    parser.add_argument("--detail", action="store_true", help="print the agent's mappings by Private_Dirty at the end")
    parser.add_argument("--pub-arg", action="append", default=[], help="an extra mosquitto_pub argument (e.g. --tls-use-os-certs)")
    args = parser.parse_args()

    if args.skip_build:
        bindir = subprocess.run(["swift", "build", "-c", "release", "--show-bin-path"], capture_output=True, text=True,
                                check=True, cwd=ROOT).stdout.strip()
        agent_binary = os.path.join(bindir, "edgefleet-agent")
    else:
        agent_binary, = build_release("edgefleet-agent")

    with tempfile.TemporaryDirectory(prefix="edgefleet-footprint-") as directory:
        pki = make_pki(directory)
        tls_port = free_port()
        broker, port, broker_log = start_broker(directory, [
            f"listener {tls_port} 127.0.0.1", f"cafile {pki['ca.crt']}", f"certfile {pki['server.crt']}", f"keyfile {pki['server.key']}"])
        stand_ins, probe_ports = start_stand_ins(pki, args.endpoints)
        received = os.path.join(directory, "received.txt")
        sub = subprocess.Popen([which("mosquitto_sub"), "-h", "127.0.0.1", "-p", str(port), "-v", "-q", "1",
                                "-t", "edgefleet/v1/sites/+/heartbeat", "-t", "edgefleet/v1/sites/+/status"],
                               stdout=open(received, "w"), stderr=subprocess.DEVNULL)
        time.sleep(0.3)

        config = os.path.join(directory, "agent.yaml")
        endpoints = "\n".join(f"  - localhost:{p}" for p in probe_ports)
        open(config, "w").write(f"""# The footprint benchmark's agent: TLS to the broker, default intervals, the endpoints probe, three checks.
site: footprint-01
broker: mqtts://127.0.0.1:{tls_port}
caFile: {pki["ca.crt"]}
stateDir: {directory}/agent-state
probeEndpoints:
{endpoints}
probeCaFile: {pki["ca.crt"]}
certificate:
  - {pki["server.crt"]}
checks:
  - name: kernel-load
    command: [cat, /proc/loadavg]
  - name: state-disk
    command: [df, -P, {directory}]
  - name: broker-port
    command: [sh, -c, "exec 3<>/dev/null && echo broker port configured"]
""")
        agent_log = os.path.join(directory, "agent.log")
        heartbeat = json.dumps({"schema": "edgefleet.heartbeat/1", "site": "pub-baseline", "session": 1, "seq": 0,
                                "sentAt": "2026-11-26T12:00:00Z", "azure": {"reachable": True, "lastContactAgeS": 12.5}})
        environment = dict(os.environ)
        for pair in args.env:
            name, _, value = pair.partition("=")
            environment[name] = value

        # A binary just linked is still dirty in the page cache, and smaps counts its mapped pages as the
        # process's Private_Dirty (15 MB of "private memory" seen right after a build): write it back first.
        os.sync()
        agent = subprocess.Popen([agent_binary, "--config", config], stdout=subprocess.DEVNULL, stderr=open(agent_log, "w"),
                                 env=environment)
        # mosquitto_pub -l: one TLS connection held open, a message per line read from stdin.
        pub = subprocess.Popen([which("mosquitto_pub"), "-h", "127.0.0.1", "-p", str(tls_port), "--cafile", pki["ca.crt"], "-q", "1",
                                "-t", "edgefleet/v1/sites/pub-baseline/heartbeat", "-l"] + args.pub_arg,
                               stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs = {"agent": agent, "pub": pub}
        peaks = {name: {"Rss": 0, "Pss": 0, "Private_Dirty": 0} for name in procs}

        def sample():
            for name, proc in procs.items():
                values = smaps_rollup_kb(proc.pid)
                if args.detail and name == "agent" and values.get("Private_Dirty", 0) > peaks[name]["Private_Dirty"] + 512:
                    print(f"{time.monotonic() - window_start:7.1f} s: new Private_Dirty peak {values}", file=sys.stderr)
                    for kb, label in private_dirty_by_mapping(proc.pid)[:6]:
                        print(f"{kb:8d} kB  {label}", file=sys.stderr)
                for key, value in values.items():
                    peaks[name][key] = max(peaks[name][key], value)

        next_heartbeat = time.monotonic()
        def beat():
            nonlocal next_heartbeat
            if time.monotonic() >= next_heartbeat:
                pub.stdin.write((heartbeat + "\n").encode())
                pub.stdin.flush()
                next_heartbeat += 10

        window_start = time.monotonic()
        warm_until = time.monotonic() + WARMUP_S
        while time.monotonic() < warm_until:
            beat()
            time.sleep(0.2)
        window_start = time.monotonic()
        cpu_start = {name: proc_cpu_seconds(proc.pid) for name, proc in procs.items()}
        print(f"measuring for {args.duration:.0f} s ...", file=sys.stderr)
        while time.monotonic() - window_start < args.duration:
            if agent.poll() is not None or pub.poll() is not None:
                sys.exit("a measured process exited early; agent log:\n" + open(agent_log).read())
            beat()
            sample()
            time.sleep(min(1.0, max(0.0, args.duration - (time.monotonic() - window_start))))
        window = time.monotonic() - window_start
        sample()
        cpu_end = {name: proc_cpu_seconds(proc.pid) for name, proc in procs.items()}
        hwm = {name: vm_hwm_kb(proc.pid) for name, proc in procs.items()}
        if args.detail:
            for kb, label in private_dirty_by_mapping(agent.pid)[:15]:
                print(f"{kb:8d} kB  {label}", file=sys.stderr)
            print(open(f"/proc/{agent.pid}/status").read(), file=sys.stderr)
        usage = {"agent": stop(agent)}
        pub.stdin.close()
        pub.wait()
        time.sleep(0.5)
        sub.terminate()
        sub.wait()
        for server in stand_ins:
            server.terminate()
            server.wait()
        broker.terminate()
        broker.wait()

        lines = open(received).read().splitlines()
        agent_heartbeats = [json.loads(l.split(" ", 1)[1]) for l in lines if l.startswith("edgefleet/v1/sites/footprint-01/heartbeat ")]
        statuses = [json.loads(l.split(" ", 1)[1]) for l in lines if l.startswith("edgefleet/v1/sites/footprint-01/status ")]
        pub_heartbeats = sum(1 for l in lines if l.startswith("edgefleet/v1/sites/pub-baseline/heartbeat "))
        expected = int((window + WARMUP_S) / 10) - 1
        problems = []
        if len(agent_heartbeats) < expected:
            problems.append(f"the agent sent {len(agent_heartbeats)} heartbeats, expected at least {expected}")
        if pub_heartbeats < expected:
            problems.append(f"mosquitto_pub sent {pub_heartbeats} heartbeats, expected at least {expected}")
        if not agent_heartbeats or not agent_heartbeats[-1].get("azure", {}).get("reachable"):
            problems.append("the agent did not find its (stand-in) Azure endpoints reachable")
        checks = statuses[-1].get("checks", []) if statuses else []
        passed = sorted(c.get("name") for c in checks if c.get("state") == "pass")
        if passed != ["broker-port", "certificates", "kernel-load", "state-disk"]:
            problems.append(f"not every check passed: {checks}")
        if problems:
            sys.exit("the run is not valid: " + "; ".join(problems) + "\nagent log:\n" + open(agent_log).read()[-3000:])

    rows = {}
    for name in ("agent", "pub"):
        rows[name] = {
            "peakRssMB": hwm[name] / 1024,
            "peakPssMB": peaks[name]["Pss"] / 1024,
            "peakPrivateDirtyMB": peaks[name]["Private_Dirty"] / 1024,
            "cpuPercent": 100 * (cpu_end[name] - cpu_start[name]) / window,
        }
    rows["agent"]["treePeakRssMB"] = usage["agent"].ru_maxrss / 1024
    agent, pub = rows["agent"], rows["pub"]
    ratio = agent["peakRssMB"] / pub["peakRssMB"]
    result = {"windowSeconds": round(window, 1), "agentHeartbeats": len(agent_heartbeats), "statuses": len(statuses),
              "pubHeartbeats": pub_heartbeats, "env": args.env, "pubArgs": args.pub_arg, "rssRatio": round(ratio, 3),
              **{f"{k}.{m}": round(v, 3) for k, r in rows.items() for m, v in r.items()}}
    print(json.dumps(result))

    def mark(ok):
        return "met" if ok else "**not met**"

    rss_ok = ratio <= RSS_RATIO_TARGET
    dirty_ok = agent["peakPrivateDirtyMB"] <= PRIVATE_DIRTY_TARGET_MB
    cpu_ok = agent["cpuPercent"] <= CPU_TARGET_PERCENT
    minutes = window / 60
    levers = f" The agent ran with {', '.join(f'`{e}`' for e in args.env)} in its environment." if args.env else ""
    section = f"""<!-- agent-footprint:begin -->
## Agent footprint (issues 3 and 17)

The release agent (`scripts/build-release.sh`) for {minutes:.1f} minutes over TLS to the broker at its default intervals
(heartbeat 10 s, Azure probe 60 s with TCP + TLS to four `openssl s_server` stand-ins for the Arc endpoints, status
refresh 5 min), three local checks every 60 s (`cat /proc/loadavg`, `df -P`, `sh -c …`) and one certificate file, next
to the baseline in the same run: `mosquitto_pub -l` holding one TLS connection to the same broker for the same time and
sending a heartbeat every 10 s.{levers} Both are measured the same way over the same window (from {WARMUP_S:.0f} s after start):
peak RSS is `VmHWM`; PSS and `Private_Dirty` (anonymous and written private memory: heap, stacks, relocated data) are
the peaks of `/proc/PID/smaps_rollup` sampled every second; CPU is user + system time of the process and every child
it reaped, over wall time. The agent's tree peak (`wait4`'s `ru_maxrss`, covering the checks it ran) was
{agent['treePeakRssMB']:.1f} MB. The run counts the agent's heartbeats ({len(agent_heartbeats)}) and statuses ({len(statuses)}) through
`mosquitto_sub` and fails if any is missing, the stand-ins were not reachable or a check did not pass.

- Command: `python3 Benchmarks/agent_footprint.py --duration {args.duration:.0f} --write docs/benchmarks.md` (part of `make bench`)
- Machine: {machine()}
- Measured: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}

| process | peak RSS | peak PSS | peak Private_Dirty | average CPU (of one core) |
| --- | ---: | ---: | ---: | ---: |
| `edgefleet-agent` | {agent['peakRssMB']:.1f} MB | {agent['peakPssMB']:.1f} MB | {agent['peakPrivateDirtyMB']:.2f} MB | {agent['cpuPercent']:.3f}% |
| `mosquitto_pub -l` over TLS | {pub['peakRssMB']:.1f} MB | {pub['peakPssMB']:.1f} MB | {pub['peakPrivateDirtyMB']:.2f} MB | {pub['cpuPercent']:.3f}% |

The budget (issue 17): peak RSS at most {RSS_RATIO_TARGET}× mosquitto_pub's: {ratio:.2f}×, {mark(rss_ok)}; Private_Dirty at most
{PRIVATE_DIRTY_TARGET_MB:.0f} MB at its peak: {agent['peakPrivateDirtyMB']:.2f} MB, {mark(dirty_ok)}; CPU at most {CPU_TARGET_PERCENT}% of a core:
{agent['cpuPercent']:.3f}%, {mark(cpu_ok)}. How the figures came down, and what each lever bought, is in `docs/design-notes.md`
("The agent's memory footprint" and "Memory, stated honestly").
<!-- agent-footprint:end -->"""
    print("\n" + section)
    if args.write:
        write_section(args.write, "agent-footprint", section)
    if not (rss_ok and dirty_ok and cpu_ok):
        print("agent footprint: a target is not met (see the table above)", file=sys.stderr)


if __name__ == "__main__":
    main()
