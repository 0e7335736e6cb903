#!/usr/bin/env bash
# The one-command demo (make demo): a broker, an aggregator and a simulated fleet of 50 sites
# in every mode, with a few operations queued, the 30-day budget played in 30 minutes.
# Ctrl-C stops everything it started.
#
# Environment: DEMO_DURATION=SECONDS stops it by itself (used by the tests);
# DEMO_SKIP_BUILD=1 uses the binaries already built (BIN=... to name their directory).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

if [[ -z "${DEMO_SKIP_BUILD:-}" ]]; then
    scripts/install-deps.sh
    echo "building (the first build takes a few minutes) ..." >&2
    swift build
fi
bin=${BIN:-$(swift build --show-bin-path)}
for tool in edgefleet edgefleet-aggregator; do
    [[ -x "$bin/$tool" ]] || { echo "demo: $bin/$tool is not built" >&2; exit 1; }
done

free_port() {  # the preferred port if free, else one the kernel picks
    python3 - "$1" <<'PY'
import socket, sys
for port in (int(sys.argv[1]), 0):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port)); print(s.getsockname()[1]); break
    except OSError:
        pass
    finally:
        s.close()
PY
}

demo=$(mktemp -d /tmp/edgefleet-demo.XXXXXX)
pids=()
stop() {
    trap - INT TERM EXIT
    echo >&2
    echo "stopping the demo ..." >&2
    # The simulated fleet first (its agents say goodbye), then the aggregator, then the broker.
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
    rm -rf "$demo"
    echo "stopped; nothing is left running." >&2
}
trap stop EXIT
trap 'exit 130' INT TERM

mqtt_port=$(free_port 1883)
http_port=$(free_port 8080)

# The development broker (anonymous, loopback only: never for production).
sed -e "s/^listener .*/listener $mqtt_port 127.0.0.1/" broker-config/dev/mosquitto.conf > "$demo/mosquitto.conf"
[[ $(id -u) -eq 0 ]] && echo "user root" >> "$demo/mosquitto.conf"
mosquitto=$(command -v mosquitto || echo /usr/sbin/mosquitto)
"$mosquitto" -c "$demo/mosquitto.conf" > "$demo/mosquitto.log" 2>&1 &
pids=($! "${pids[@]}")

# A stand-in for the az CLI: the demo never talks to Azure. Each call takes 3 s and is logged.
mkdir -p "$demo/bin"
cat > "$demo/bin/az" <<AZ
#!/bin/sh
echo "\$(date -u +%H:%M:%S) \$EDGEFLEET_OPERATION_ID az \$*" >> "$demo/az-calls.log"
sleep 3
echo "stand-in az: \$*"
AZ
chmod +x "$demo/bin/az"
cat > "$demo/executors.yaml" <<'YAML'
cluster.upgrade:
  argv: [az, aksarc, upgrade, --name, "{cluster.name}", --resource-group, "{cluster.resourceGroup}", --kubernetes-version, "{params.kubernetesVersion}", --yes]
  timeout: 2m
nodepool.scale:
  argv: [az, aksarc, nodepool, scale, --cluster-name, "{cluster.name}", --resource-group, "{cluster.resourceGroup}", --name, "{params.nodepool}", --node-count, "{params.count}", --yes]
  timeout: 2m
extension.install:
  argv: [az, k8s-extension, create, --cluster-name, "{cluster.name}", --resource-group, "{cluster.resourceGroup}", --cluster-type, connectedClusters, --name, "{params.name}", --extension-type, "{params.type}"]
  timeout: 2m
YAML
token=$(openssl rand -hex 24)
echo "$token" > "$demo/tokens"

# The aggregator, 30 days in 30 minutes: connected within 30 s, a 30-minute budget, alerts
# 7 and 2 "days" (minutes) before the deadline, operations released after 20 s of stable link.
PATH="$demo/bin:$PATH" "$bin/edgefleet-aggregator" --broker "mqtt://127.0.0.1:$mqtt_port" --db "$demo/fleet.sqlite" \
    --http "127.0.0.1:$http_port" --token-file "$demo/tokens" --public-reads true --executors "$demo/executors.yaml" \
    --connected-within 30s --budget 30m --warn-before 7m --critical-before 2m --stable-for 20s --view-refresh 10s \
    --max-concurrent-dispatches 2 > "$demo/aggregator.log" 2>&1 &
pids=($! "${pids[@]}")

export EDGEFLEET_SERVER="http://127.0.0.1:$http_port" EDGEFLEET_TOKEN="$token"
for _ in $(seq 1 100); do
    "$bin/edgefleet" status >/dev/null 2>&1 && break
    sleep 0.2
done
"$bin/edgefleet" status >/dev/null || { echo "demo: the aggregator did not come up:" >&2; tail -20 "$demo/aggregator.log" >&2; exit 1; }

"$bin/edgefleet" simulate --broker "mqtt://127.0.0.1:$mqtt_port" --scenario Benchmarks/scenarios/demo.yaml \
    > "$demo/simulate.log" 2>&1 &
pids=($! "${pids[@]}")

# Wait for the fleet to report, then queue a few operations: an upgrade for the north
# region (its link goes down 20 s in and comes back at 3 minutes), an extension at a
# semi-connected site, a scale-out at a site past its deadline (blocked until released).
for _ in $(seq 1 150); do
    [[ $("$bin/edgefleet" status --output json | python3 -c 'import json,sys; print(json.load(sys.stdin)["sites"])') -ge 50 ]] && break
    sleep 0.2
done
for site in store-001 store-002 store-003; do
    "$bin/edgefleet" ops submit "$site" cluster.upgrade --param kubernetesVersion=1.30.4 >/dev/null
done
"$bin/edgefleet" ops submit store-016 extension.install --param name=flux --param type=microsoft.flux >/dev/null
"$bin/edgefleet" ops submit store-024 nodepool.scale --param nodepool=np1 --param count=4 >/dev/null

cat <<EOF

  EdgeFleet demo: 50 simulated sites, 30 days played in 30 minutes (1 day = 1 minute).

  dashboard     http://127.0.0.1:$http_port/?token=$token
  fleet         EDGEFLEET_SERVER=$EDGEFLEET_SERVER EDGEFLEET_TOKEN=$token $bin/edgefleet status
  sites         ... $bin/edgefleet sites --mode semi-connected
  queue         ... $bin/edgefleet queue
  events        $bin/edgefleet watch --broker mqtt://127.0.0.1:$mqtt_port
  raw topics    mosquitto_sub -h 127.0.0.1 -p $mqtt_port -t 'edgefleet/v1/fleet/#' -v

  The north region (store-001..010) loses its WAN link 20 s in and gets it back at 3 minutes:
  watch its upgrades wait, then run one site at a time. store-024 is past its deadline: its
  scale-out stays blocked until you release it (edgefleet queue release ID, or the button).
  Logs: $demo   Ctrl-C stops everything.

