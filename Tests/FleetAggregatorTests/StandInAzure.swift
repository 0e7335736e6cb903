import FleetAggregator
@testable import FleetQueue
import Foundation
import TestSupport

/// A stand-in for the `az` CLI: a shell script that appends each call (operation id,
/// arguments one per line, start and end times, exit code) to a log, then behaves as its
/// arguments say: `exit=N` exits N, `flaky=N` exits 75 the first N times for an
/// operation, `hang` sleeps far past any timeout; every call takes `seconds` otherwise.
struct StandInAzure {
    let directory: String
    /// What `hang` runs: `sleep` with a duration no other stand-in uses, to find it with pgrep.
    let hangCommand = "sleep 600.\(Int.random(in: 1000...9999))"
    var path: String { directory + "/az" }
    var log: String { directory + "/az.log" }

    init(seconds: Double = 0.03) throws {
        directory = try temporaryDirectory("edgefleet-az")
        let script = """
            #!/bin/sh
            id="$EDGEFLEET_OPERATION_ID"
            log='\(directory)/az.log'
            # Ended by a signal (the aggregator's timeout, its shutdown, a restart ending a leftover):
            # the end is logged all the same, so that overlapping runs show in the log.
            # (An orphan's output pipe has no reader: a write there must not kill it before it logs.)
            trap '' PIPE
            trap 'printf "end %s %s 143\\n" "$id" "$(date +%s.%N)" >> "$log"; exit 143' TERM
            { printf 'start %s %s\\n' "$id" "$(date +%s.%N)"; printf 'pid %s %s\\n' "$id" "$$"; for a in "$@"; do printf 'arg %s %s\\n' "$id" "$a"; done; } >> "$log"
            code=0
            for a in "$@"; do
              case "$a" in
                exit=*) code="${a#exit=}" ;;
                hang) echo "hanging as asked"; \(hangCommand) ;;
                flaky=*)
                  f='\(directory)/'"$id.count"
                  c=$(cat "$f" 2>/dev/null || echo 0); c=$((c + 1)); echo "$c" > "$f"
                  [ "$c" -le "${a#flaky=}" ] && code=75 ;;
              esac
            done
            # A site whose cluster is listed in fail-sites fails (rollouts' failure threshold).
            if [ -f '\(directory)/fail-sites' ]; then
              for a in "$@"; do grep -qx -- "$a" '\(directory)/fail-sites' && code=1; done
            fi
            sleep \(seconds)
            echo "stand-in az: $*"
            printf 'end %s %s %s\\n' "$id" "$(date +%s.%N)" "$code" >> "$log"
            exit "$code"
            """
        _ = FileManager.default.createFile(atPath: path, contents: Data(script.utf8), attributes: [.posixPermissions: 0o755])
    }

    struct Call: Sendable {
        var id: String
        var start: Double
        var end: Double?
        var code: Int?
        var arguments: [String]
    }

    /// Every call so far, in the order they started.
    func calls() -> [Call] {
        let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        var calls: [Call] = []
        var open: [String: [Int]] = [:]  // id -> indices of calls not yet ended
        var latest: [String: Int] = [:]
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: " ", maxSplits: 2, omittingEmptySubsequences: false).map(String.init)
            guard parts.count >= 2 else { continue }
            let id = parts[1]
            switch parts[0] {
            case "start":
                calls.append(Call(id: id, start: Double(parts[2]) ?? 0, arguments: []))
                open[id, default: []].append(calls.count - 1)
                latest[id] = calls.count - 1
            case "arg":
                if let index = latest[id] { calls[index].arguments.append(parts.count > 2 ? parts[2] : "") }
            case "end":
                let fields = parts.count > 2 ? parts[2].split(separator: " ") : []
                if var indices = open[id], !indices.isEmpty {
                    let index = indices.removeFirst()
                    open[id] = indices
                    calls[index].end = fields.first.flatMap { Double($0) }
                    calls[index].code = fields.count > 1 ? Int(fields[1]) : nil
                }
            default: break
            }
        }
        return calls
    }

    /// The process id of each call of `id` (the shell running the stand-in), in order.
    func pids(of id: String) -> [Int32] {
        let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").compactMap { line in
            let parts = line.split(separator: " ")
            return parts.count == 3 && parts[0] == "pid" && parts[1] == id ? Int32(parts[2]) : nil
        }
    }

    /// The most calls running at the same instant.
    func peakConcurrency() -> Int {
        var points: [(Double, Int)] = []
        for call in calls() {
            points.append((call.start, 1))
            points.append((call.end ?? .infinity, -1))
        }
        points.sort { $0.0 != $1.0 ? $0.0 < $1.0 : $0.1 < $1.1 }  // an end before a start at the same instant
        var running = 0
        var peak = 0
        for (_, delta) in points {
            running += delta
            peak = max(peak, running)
        }
        return peak
    }

    func remove() { try? FileManager.default.removeItem(atPath: directory) }
}

/// One operation already queued in an aggregator's database for `site`, run through a stand-in
/// `az` found on PATH (as the real CLI would be), with an agent announcing the site every second
/// (heartbeats are not retained), and the flags and environment to start aggregators on it.
struct QueuedOperationFixture {
    let broker: MosquittoBroker
    let directory: String
    let az: StandInAzure
    let id: String
    let environment: [String: String]
    let flags: [String]
    let agent: Task<Void, Never>
    var database: String { directory + "/fleet.sqlite" }

    init(site: String, seconds: Double, timeout: String, extraFlags: [String] = []) async throws {
        broker = try MosquittoBroker()
        directory = try temporaryDirectory("edgefleet-queued")
        az = try StandInAzure(seconds: seconds)
        try """
            executors:
              extension.install:
                argv: [az, k8s-extension, create, --name, "{params.name}"]
                timeout: \(timeout)
            """.write(toFile: directory + "/aggregator.yaml", atomically: true, encoding: .utf8)
        var environment = ProcessInfo.processInfo.environment
        environment["PATH"] = az.directory + ":" + (environment["PATH"] ?? "/usr/bin:/bin")
        self.environment = environment
        flags = ["--config", directory + "/aggregator.yaml", "--connected-within", "10m", "--budget", "30d", "--stable-for", "0s",
            "--dispatch-interval", "100ms"] + extraFlags
        id = try DeferredQueue(
            store: SQLiteOperationStore(database: try AggregatorDatabase(path: directory + "/fleet.sqlite")),
            executors: [.extensionInstall: ExecutorTemplate(argv: ["az", "{params.name}"])]
        ).submit(SubmissionRequest(site: site, kind: "extension.install", params: ["name": "ext"], createdBy: "test"), situation: nil, now: Date())
            .operation.id
        let broker = broker
        agent = Task {
            while !Task.isCancelled {
                try? await announce([site], broker: broker)
                try? await Task.sleep(for: .seconds(1))
            }
        }
    }

    func startAggregator() throws -> AggregatorProcess {
        try AggregatorProcess(broker: broker, database: database, flags: flags, environment: environment)
    }

    /// The process id of the executor's first run, once it has started.
    func executorStarted(within timeout: Duration = .seconds(30)) async throws -> Int32 {
        let (az, id) = (az, id)
        return try await withTimeout(timeout, "the executor to start") {
            while true {
                if let pid = az.pids(of: id).first { return pid }
                try await Task.sleep(for: .milliseconds(50))
            }
        }
    }

    func remove() {
        agent.cancel()
        broker.stop()
        az.remove()
        try? FileManager.default.removeItem(atPath: directory)
    }
}
