#!/usr/bin/env bash
# Installs the Debian packages EdgeFleet needs to build, test and run, if any is missing.
# Safe to run again: it does nothing when everything is there.
set -euo pipefail

# Build and run: the broker, libmosquitto, SQLite, OpenSSL, libyaml, libcurl (the CLI statically
# linked by scripts/build-release.sh needs it to link). Tests also use Debian's
# chromium (the dashboard, headless), prometheus (promtool checks /metrics and the alerting
# rules), bsdutils (`script` gives the CLI a terminal) and systemd (`systemd-analyze verify`
# checks the units in deploy/).
# procps (`ps`) and util-linux (`mount` for the full-disk tests, `setsid`, `runuser`) come with most systems.
# postgresql (the server: the tests start their own with initdb/pg_ctl as the postgres user on a free
# port; the aggregator's PostgreSQL backend) and postgresql-client (psql).
# With --bench, also what the benchmarks compare against or measure with: prometheus-mqtt-exporter
# and perf.
packages=(mosquitto mosquitto-clients libmosquitto-dev libsqlite3-dev libssl-dev libyaml-dev openssl pkg-config python3
    libcurl4-openssl-dev chromium fonts-dejavu-core prometheus bsdutils curl systemd procps util-linux postgresql postgresql-client)
if [[ "${1:-}" == "--bench" ]]; then
    packages+=(prometheus-mqtt-exporter linux-perf)
fi
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
    exit 0
fi

echo "installing: ${missing[*]}" >&2
sudo=""
if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "need root (or sudo) to install ${missing[*]}" >&2; exit 1; }
    sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null
# Debian's package starts a system broker where systemd runs; EdgeFleet's tests and demo
# start their own on free ports and do not need it.
