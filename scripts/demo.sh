#!/usr/bin/env bash
# The one-command demo (make demo): a broker, an aggregator and a simulated fleet of 50 sites
# in every mode, with a few operations queued, the 30-day budget played in 30 minutes.
# Ctrl-C stops everything it started.
#
# Environment: DEMO_DURATION=SECONDS stops it by itself (the tests use it);
# DEMO_SKIP_BUILD=1 uses the binaries already built (BIN=DIR names their directory).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${DEMO_SKIP_BUILD:-}" ]]; then
    scripts/install-deps.sh
    echo "building (a first build takes a few minutes) ..." >&2
    swift build
fi
bin=${BIN:-$(swift build --show-bin-path)}
for tool in edgefleet edgefleet-aggregator; do
    [[ -x "$bin/$tool" ]] || { echo "demo: $bin/$tool is not built" >&2; exit 1; }
done

free_port() {  # the preferred port if it is free, else one the kernel picks
    python3 -c '
import socket, sys
for port in (int(sys.argv[1]), 0):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        print(s.getsockname()[1])
        break
    except OSError:
        pass
    finally:
        s.close()
' "$1"
}

demo=$(mktemp -d /tmp/edgefleet-demo.XXXXXX)
pids=()
stop() {
    trap - INT TERM EXIT
    echo >&2
    echo "stopping the demo ..." >&2
    # The simulated fleet first (its agents say goodbye), then the aggregator, then the broker.
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$demo"
    echo "stopped; nothing it started is left running." >&2
}
trap stop EXIT
trap 'exit 130' INT TERM

mqtt_port=$(free_port 1883)
http_port=$(free_port 8080)

# The development broker (anonymous, loopback only: never for production).
sed -e "s/^listener .*/listener $mqtt_port 127.0.0.1/" broker-config/dev/mosquitto.conf > "$demo/mosquitto.conf"
if [[ $(id -u) -eq 0 ]]; then echo "user root" >> "$demo/mosquitto.conf"; fi
mosquitto=$(command -v mosquitto || echo /usr/sbin/mosquitto)
"$mosquitto" -c "$demo/mosquitto.conf" > "$demo/mosquitto.log" 2>&1 &
pids=($! "${pids[@]}")

# A stand-in for the az CLI: the demo never talks to Azure. Each call takes 3 s and is logged.
mkdir -p "$demo/bin"
printf '%s\n' '#!/bin/sh' \
    "echo \"\$(date -u +%H:%M:%S) \$EDGEFLEET_OPERATION_ID az \$*\" >> '$demo/az-calls.log'" \
    'sleep 3' 'echo "stand-in az: $*"' > "$demo/bin/az"
chmod +x "$demo/bin/az"
cp scripts/demo-executors.yaml "$demo/executors.yaml"
# One principal, an admin named demo: its token is printed once, only its SHA-256 is kept.
token=$("$bin/edgefleet" token add demo admin --principals "$demo/principals.yaml" 2>/dev/null)

# The aggregator, 30 days in 30 minutes: connected within 30 s, a 30-minute budget, alerts
# 7 and 2 "days" (minutes) before the deadline, operations released after 20 s of stable link.
PATH="$demo/bin:$PATH" "$bin/edgefleet-aggregator" --broker "mqtt://127.0.0.1:$mqtt_port" --db "$demo/fleet.sqlite" \
    --http "127.0.0.1:$http_port" --principals "$demo/principals.yaml" --public-reads true --executors "$demo/executors.yaml" \
    --connected-within 30s --budget 30m --warn-before 7m --critical-before 2m --stable-for 20s --view-refresh 10s \
    --max-concurrent-dispatches 2 > "$demo/aggregator.log" 2>&1 &
pids=($! "${pids[@]}")

export EDGEFLEET_SERVER="http://127.0.0.1:$http_port" EDGEFLEET_TOKEN="$token"
for _ in $(seq 1 150); do
    if "$bin/edgefleet" status > /dev/null 2>&1; then break; fi
    sleep 0.2
done
if ! "$bin/edgefleet" status > /dev/null; then
    echo "demo: the aggregator did not come up:" >&2
    tail -20 "$demo/aggregator.log" >&2
    exit 1
fi

"$bin/edgefleet" simulate --broker "mqtt://127.0.0.1:$mqtt_port" --scenario Benchmarks/scenarios/demo.yaml \
    > "$demo/simulate.log" 2>&1 &
pids=($! "${pids[@]}")

# Wait for the fleet to report, then queue a few operations: upgrades in the north region
# (its link goes down 20 s in and comes back at 3 minutes), an extension at a semi-connected
# site, a scale-out at a site past its deadline (blocked until an operator releases it).
# (Every site has reported once its first heartbeat is in: only the 4 that never reached
# Azure are still unknown.)
for _ in $(seq 1 300); do
    reported=$("$bin/edgefleet" status --output json | python3 -c '
import json, sys
summary = json.load(sys.stdin)
print("yes" if summary["sites"] >= 50 and summary["modes"]["unknown"] <= 4 else "no")')
    if [[ $reported == yes ]]; then break; fi
    sleep 0.2
done
for site in store-001 store-002 store-003; do
    "$bin/edgefleet" ops submit "$site" cluster.upgrade --param kubernetesVersion=1.30.4 > /dev/null
done
"$bin/edgefleet" ops submit store-016 extension.install --param name=flux --param type=microsoft.flux > /dev/null
"$bin/edgefleet" ops submit store-024 nodepool.scale --param nodepool=np1 --param count=4 > /dev/null

cli="EDGEFLEET_SERVER=$EDGEFLEET_SERVER EDGEFLEET_TOKEN=$token $bin/edgefleet"
cat << INFO

  EdgeFleet demo: 50 simulated sites, 30 days played in 30 minutes (1 day = 1 minute).

  dashboard    http://127.0.0.1:$http_port/?token=$token
  fleet        $cli status
  sites        $cli sites --mode semi-connected
  queue        $cli queue
  events       $bin/edgefleet watch --broker mqtt://127.0.0.1:$mqtt_port
  raw topics   mosquitto_sub -h 127.0.0.1 -p $mqtt_port -t 'edgefleet/v1/fleet/#' -v

  The north region (store-001 to store-010) loses its WAN link 20 s in and gets it back at
  3 minutes: its upgrades wait, then run once the link has been stable for 20 s, two at a
  time across the fleet. store-024 is past its deadline: its scale-out stays blocked until
  you release it (edgefleet queue release ID, or the button on the dashboard).
  Logs in $demo. Ctrl-C stops everything.

INFO

# (sleep in the background and wait: bash runs the Ctrl-C trap at once, not after a sleep.)
if [[ -n "${DEMO_DURATION:-}" ]]; then
    sleep "$DEMO_DURATION" &
    pids=($! "${pids[@]}")
    wait $!
else
    while true; do
        sleep 3600 &
        pids=($! "${pids[@]}")
        wait $!
    done
fi
