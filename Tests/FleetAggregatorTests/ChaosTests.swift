import FleetAggregator
import FleetCore
import FleetPostgres
import FleetQueue
import Foundation
import Logging
import MQTT
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Issue 14's acceptance: three replicas, PostgreSQL, mosquitto, 200 simulated sites and 500
/// operations, while the leader is SIGKILLed five times and PostgreSQL is stopped for 10 s.
@Suite("replicas under attack", .timeLimit(.minutes(6)))
struct ChaosTests {
    struct Replica {
        let slot: Int
        let port: Int
        var process: AggregatorProcess
    }

    /// The replica that says it leads (its /healthz), with the epoch; nil when none does.
    func leader(_ replicas: [Replica]) async -> (slot: Int, epoch: Int64)? {
        for replica in replicas {
            guard let health = try? await HTTP.request("GET", port: replica.port, "/healthz"), let json = try? health.json(),
                json["role"] as? String == "leader", let epoch = json["epoch"] as? Int
            else { continue }
            return (replica.slot, Int64(epoch))
        }
        return nil
    }

    @Test("three replicas, 200 sites, 500 operations; the leader SIGKILLed 5 times and PostgreSQL stopped for 10 s: every operation ends, none runs twice at once, every re-run is in its history, epochs never go back, the fleet keeps being published")
    func leaderKilledFiveTimes() async throws {
        let server = try await offload { try PostgresServer() }
        defer { try? server.stop() }
        let database = server.url(try server.createDatabase())
        let az = try StandInAzure(seconds: 0.2)
        defer { az.remove() }
        let directory = try temporaryDirectory("edgefleet-chaos")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try "\(OperatorFixture.token)\n".write(toFile: directory + "/tokens", atomically: true, encoding: .utf8)
        try """
            executors:
              extension.install:
                argv: [az, k8s-extension, create, --cluster-name, "{cluster.name}", --name, "{params.name}"]
                timeout: 60s
            """.write(toFile: directory + "/aggregator.yaml", atomically: true, encoding: .utf8)
        var environment = ProcessInfo.processInfo.environment
        environment["PATH"] = az.directory + ":" + (environment["PATH"] ?? "/usr/bin:/bin")
        let broker = try await MosquittoBroker.start()
        defer { broker.stop() }
        let (observer, messages) = try await fleetObserver(broker)
        let common = [
            "--config", directory + "/aggregator.yaml", "--connected-within", "30s", "--budget", "1h", "--warn-before", "10m",
            "--critical-before", "5m", "--stable-for", "1s", "--summary-interval", "200ms", "--flush-interval", "500ms",
            "--dispatch-interval", "100ms", "--token-file", directory + "/tokens", "--db-password-file", server.passwordFile,
            "--leader-lease", "2s", "--max-concurrent-dispatches", "4", "--log-level", "info",
        ]
        func start(_ slot: Int, port: Int) throws -> AggregatorProcess {
            try AggregatorProcess(
                broker: broker, database: database, flags: common + ["--replica-id", "replica-\(slot)", "--http", "127.0.0.1:\(port)"],
                environment: environment)
        }
        var replicas: [Replica] = []
        for slot in 0..<3 {
            let port = try freeLoopbackPort()
            replicas.append(Replica(slot: slot, port: port, process: try start(slot, port: port)))
        }
        defer { for replica in replicas { replica.process.terminate() } }
        let simulator = try ChildProcess(
            try builtProduct("edgefleet").path, ["simulate", "--broker", broker.url, "--sites", "200", "--heartbeat-interval", "1s"],
            outputPath: directory + "/simulate.log")
        defer {
            simulator.signal(SIGTERM)
            _ = simulator.wait()
        }
        // A leader, and the whole fleet connected (as the leader sees it).
        let initial = replicas
        try await withTimeout(.seconds(60), "a leader seeing 200 connected sites") {
            let replicas = initial
            while true {
                if let lead = await leader(replicas),
                    let fleet = try? await HTTP.request("GET", port: replicas[lead.slot].port, "/v1/fleet", token: OperatorFixture.token).json(),
                    (fleet["modes"] as? [String: Int])?["connected"] == 200
                {
                    return
                }
                try await Task.sleep(for: .milliseconds(200))
            }
        }

        // 500 operations: 450 written into the database by another writer, 50 through the standbys' APIs.
        let (stores, _) = try PostgresStores.open(url: database, passwordFile: server.passwordFile, environment: [:], logger: Logger(label: "chaos"))
        let queue = DeferredQueue(
            store: stores.operations, executors: [.extensionInstall: ExecutorTemplate(argv: ["az", "{params.name}"])])
        var ids: [String] = []
        for i in 0..<450 {
            let site = String(format: "site-%03d", i % 200 + 1)
            ids.append(
                try queue.submit(
                    SubmissionRequest(site: site, kind: "extension.install", params: ["name": "op-\(i)"], createdBy: "chaos"), situation: nil, now: Date()
                ).operation.id)
        }
        for i in 450..<500 {
            let lead = await leader(replicas)
            let standby = replicas.first { $0.slot != lead?.slot } ?? replicas[0]
            let body = #"{"site":"\#(String(format: "site-%03d", i % 200 + 1))","kind":"extension.install","params":{"name":"op-\#(i)"},"createdBy":"chaos"}"#
            let response = try await HTTP.request("POST", port: standby.port, "/v1/operations", token: OperatorFixture.token, body: Array(body.utf8))
            let id = try #require((try response.json()["operation"] as? [String: Any])?["id"] as? String, "\(response.status) \(response.text)")
            ids.append(id)
        }

        // Five SIGKILLs of the leader at moments drawn at random, PostgreSQL stopped for 10 s after the second.
        var epochs: [Int64] = []
        for round in 0..<5 {
            try await Task.sleep(for: .milliseconds(Int.random(in: 1_000...3_000)))
            // A leader whose renewals were slow on this loaded machine may have stood down a moment
            // ago (the lease lapses, then is taken again under a new epoch): wait for the lead.
            let standing = replicas
            let lead = try await withTimeout(.seconds(30), "a leader before kill \(round + 1)") {
                while true {
                    if let lead = await leader(standing) { return lead }
                    try await Task.sleep(for: .milliseconds(100))
                }
            }
            epochs.append(lead.epoch)
            replicas[lead.slot].process.kill()
            replicas[lead.slot].process = try start(lead.slot, port: replicas[lead.slot].port)
            // A new leader under a higher epoch, and the fleet published again under it.
            let current = replicas
            try await withTimeout(.seconds(30), "a new leader after kill \(round + 1)") {
                let replicas = current
                while true {
                    if let next = await leader(replicas), next.epoch > lead.epoch { return }
                    try await Task.sleep(for: .milliseconds(100))
                }
            }
            _ = try await messages.next(timeout: .seconds(30), "a summary after kill \(round + 1)") { $0.topic == "edgefleet/v1/fleet/status" }
            if round == 1 {
                try server.stop()
                try await Task.sleep(for: .seconds(10))
                try server.start()
            }
        }

        // Every operation ends, and succeeds.
        try await withTimeout(.seconds(180), "500 operations to succeed") {
            while true {
                let counts = try stores.operations.counts().values.reduce(into: [OperationState: Int]()) { total, bySite in
                    for (state, n) in bySite { total[state, default: 0] += n }
                }
                if counts[.succeeded] == 500 { return }
                if (counts[.failed] ?? 0) > 0 {
                    let failed = try stores.operations.list(OperationFilter(states: [.failed]), after: nil, limit: 10).operations
                    throw TestSupportError("operations failed: \(counts): \(failed.map { "\($0.id): \($0.history.map(\.note))" })")
                }
                try await Task.sleep(for: .milliseconds(250))
            }
        }
        let calls = az.calls()
        for id in ids {
            let operation = try #require(try stores.operations.operation(id: id))
            let runs = calls.filter { $0.id == id }.sorted { $0.start < $1.start }
            // Never two runs of one operation at the same time.
            for (a, b) in zip(runs, runs.dropFirst()) {
                if let end = a.end { #expect(end <= b.start, "\(id): runs overlap") }
            }
            // Each run is a claim in its history; every run after the first follows a note saying why it ran again.
            let claims = operation.history.filter { $0.to == .dispatching }.count
            #expect(runs.count <= claims, "\(id): \(runs.count) runs, \(claims) claims")
            let requeued = operation.history.filter { $0.from == .dispatching && $0.to == .queued }
            #expect(claims == 1 + requeued.count, "\(id): a claim without a note: \(operation.history.map(\.note))")
            #expect(requeued.allSatisfy { !$0.note.isEmpty })
        }
        #expect(epochs == epochs.sorted() && Set(epochs).count == epochs.count)
        // Epochs on the published events never go back.
        let published = messages.received.filter { $0.topic == "edgefleet/v1/fleet/events" }.compactMap { try? FleetJSON.decode(FleetEvent.self, from: $0.payload) }
        let seen = published.compactMap(\.epoch)
        #expect(seen.count == published.count, "an event without an epoch")
        let backwards = zip(published, published.dropFirst()).filter { ($0.epoch ?? 0) > ($1.epoch ?? 0) }
        #expect(
            backwards.isEmpty,
            "an event under an older epoch after a newer one: \(backwards.prefix(3).map { "\($0.epoch ?? 0) \($0.type) \($0.at) -> \($1.epoch ?? 0) \($1.type) \($1.at) \($1.note ?? "")" })")
        #expect(published.filter { $0.type == .leaderChanged }.count >= 5)
        await observer.shutdown()
    }
}
