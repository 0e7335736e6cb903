# EdgeFleet: the commands a new user needs. See README.md.
.PHONY: deps build release test demo bench screenshot clean

deps:
	@scripts/install-deps.sh

build: deps
	swift build

# The executables as they ship (static Swift runtime, lld, RELR; see scripts/build-release.sh).
release: deps
	scripts/build-release.sh

# Builds everything and runs every test (unit tests, and integration tests
# against a real mosquitto that the tests start on free loopback ports).
#
# The tests run in one process, at most 6 at a time (Swift Testing's own option; `swift test` cannot
# pass it, so the test binary is run directly): each integration test starts its own broker,
# aggregator, agents or PostgreSQL, and with all 260 at once on 2 cores their timed waits measured
# the machine's overload (a scripted 16 s outage was seen as 5 s). The whole run takes about the
# same time either way.
TEST_WIDTH ?= 6
test: deps
	swift build --build-tests
	"$$(swift build --show-bin-path)/EdgeFleetPackageTests.xctest" --testing-library swift-testing \
		--experimental-maximum-parallelization-width $(TEST_WIDTH)

# The main job: a broker, an aggregator and a simulated fleet of 50 sites in every mode,
# 30 days played in 30 minutes. Installs what is missing and builds first; Ctrl-C stops it.
demo:
	@scripts/demo.sh

# Refreshes docs/dashboard.png (a site in each mode), docs/dashboard-history.png (the fleet's
# 30 days and budget ranking) and docs/site-history.png (a site's timeline), in headless Chromium.
screenshot: deps
	swift build --build-tests
	EDGEFLEET_SCREENSHOT=$(CURDIR)/docs/dashboard.png swift test --skip-build --filter "DashboardTests/chromium"
	EDGEFLEET_SCREENSHOT_DIR=$(CURDIR)/docs swift test --skip-build --filter "DashboardTests/historyPictures"

# Runs every benchmark and rewrites docs/benchmarks.md.
bench:
	@scripts/install-deps.sh --bench
	python3 Benchmarks/mqtt_throughput.py --messages 200000 --rounds 3 --write docs/benchmarks.md
	python3 Benchmarks/agent_footprint.py --duration 600 --write docs/benchmarks.md
	python3 Benchmarks/aggregator.py --write docs/benchmarks.md
	python3 Benchmarks/queue.py --write docs/benchmarks.md
	python3 Benchmarks/reconnect_storm.py --write docs/benchmarks.md
	python3 Benchmarks/json_encode.py --write docs/benchmarks.md
	python3 Benchmarks/slow_clients.py --skip-build --write docs/benchmarks.md
	python3 Benchmarks/idle.py --skip-build --write docs/benchmarks.md
	python3 Benchmarks/cpu_per_heartbeat.py --skip-build --write docs/benchmarks.md
	python3 Benchmarks/cpu_per_heartbeat.py --skip-build --postgres --write docs/benchmarks.md
	python3 Benchmarks/aggregator.py --only scale --postgres --skip-build --write docs/benchmarks.md
	python3 Benchmarks/failover.py --skip-build --write docs/benchmarks.md
	python3 Benchmarks/queue_postgres.py --skip-build --write docs/benchmarks.md
	python3 Benchmarks/rollout_create.py --skip-build --write docs/benchmarks.md

clean:
	rm -rf .build
