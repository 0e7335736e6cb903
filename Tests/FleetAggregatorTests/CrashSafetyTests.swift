import FleetAggregator
@testable import FleetQueue
import FleetCore
import Foundation
import Logging
import MQTT
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("the queue survives SIGKILL", .timeLimit(.minutes(4)))
struct CrashSafetyTests {
    @Test("500 operations, the aggregator killed with SIGKILL at random moments (12 times): all succeed, none lost, repeats only for those running at a kill")
    func killedRepeatedly() async throws {
        let broker = try await MosquittoBroker.start()
        defer { broker.stop() }
        let directory = try temporaryDirectory("edgefleet-crash")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let az = try StandInAzure(seconds: 0.05)
        defer { az.remove() }
        let database = directory + "/fleet.sqlite"
        // The stand-in is found as `az` on PATH, as the real CLI would be.
        try """
            executors:
              extension.install:
                argv: [az, k8s-extension, create, --name, "{params.name}", --site, "{site}"]
                timeout: 30s
            """.write(toFile: directory + "/aggregator.yaml", atomically: true, encoding: .utf8)
        var environment = ProcessInfo.processInfo.environment
        environment["PATH"] = az.directory + ":" + (environment["PATH"] ?? "/usr/bin:/bin")
        let flags = [
            "--config", directory + "/aggregator.yaml", "--connected-within", "10m", "--budget", "30d", "--stable-for", "0s",
            "--max-concurrent-dispatches", "4", "--dispatch-interval", "100ms", "--flush-interval", "100ms", "--retry-backoff", "100ms",
        ]

        // 500 operations for 50 sites, written to the aggregator's database before it starts.
        let sites = (0..<50).map { "crash-\($0)" }
        var ids: [String] = []
        do {
            let queue = DeferredQueue(
                store: SQLiteOperationStore(database: try AggregatorDatabase(path: database)),
                executors: [.extensionInstall: ExecutorTemplate(argv: ["az", "{params.name}"])])
            for round in 0..<10 {
                for site in sites {
                    ids.append(
                        try queue.submit(
                            SubmissionRequest(site: site, kind: "extension.install", params: ["name": "e\(round)"], createdBy: "test"),
                            situation: nil, now: Date()
                        ).operation.id)
                }
            }
        }
        let store = SQLiteOperationStore(database: try AggregatorDatabase(path: database))

        // The sites' agents keep sending heartbeats, as real ones would, whatever the aggregator does.
        let agents = Task {
            while !Task.isCancelled {
                try? await announce(sites, broker: broker)
                try? await Task.sleep(for: .seconds(1))
            }
        }
        defer { agents.cancel() }

        var aggregator = try AggregatorProcess(broker: broker, database: database, flags: flags, environment: environment)
        var kills = 0
        var doneAtLastKill = 0
        for _ in 0..<12 {
            try await Task.sleep(for: .milliseconds(Int.random(in: 300...800)))
            aggregator.kill()
            kills += 1
            doneAtLastKill = try store.all(OperationFilter(states: [.succeeded])).count
            aggregator = try AggregatorProcess(broker: broker, database: database, flags: flags, environment: environment)
        }
        defer { aggregator.terminate() }
        #expect(kills >= 10)
        #expect(doneAtLastKill < ids.count, "the run was over before the last kill: the kills proved nothing")

        let total = ids.count
        do {
            try await withTimeout(.seconds(120), "every operation to succeed") {
                while try store.all(OperationFilter(states: [.succeeded])).count < total {
                    try await Task.sleep(for: .milliseconds(200))
                }
            }
        } catch {
            let states = Dictionary(grouping: try store.all(OperationFilter()), by: \.state).mapValues(\.count)
            Issue.record("states: \(states)\n\(aggregator.output.suffix(3000))")
            throw error
        }
        let all = try store.all(OperationFilter())
        #expect(all.count == ids.count, "operations went missing")
        #expect(all.allSatisfy { $0.state == .succeeded })
        // Every operation ran; one that ran more than once was running when a kill came, and
        // its history says it was queued again for that reason.
        let runs = Dictionary(grouping: az.calls(), by: \.id).mapValues(\.count)
        #expect(Set(runs.keys) == Set(ids))
        let repeated = runs.filter { $0.value > 1 }.map(\.key)
        for id in repeated {
            let history = try #require(try store.operation(id: id)).history
            #expect(history.contains { $0.note.contains("aggregator stopped while this was running") }, "\(id) ran twice without a crash")
        }
        // Each repeat is accounted for by a recovery, and no more repeats than recoveries.
        let recoveries = all.reduce(0) { $0 + $1.history.filter { $0.note.contains("aggregator stopped while this was running") }.count }
        #expect(runs.values.reduce(0, +) - ids.count <= recoveries)
        print("crash test: \(kills) kills, \(repeated.count) operations ran twice, \(recoveries) recoveries")
    }
}
