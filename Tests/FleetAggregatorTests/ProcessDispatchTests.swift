import FleetAggregator
@testable import FleetQueue
import FleetCore
import Foundation
import MQTT
import TestSupport
import Testing

/// The queue with the aggregator as its own process and the stand-in `az` on its PATH.
/// Operations are written into the aggregator's SQLite file by the test, as another writer of
/// the database would (the running aggregator picks them up and recounts); the tests of the
/// operator surfaces submit through the HTTP API.
struct ProcessQueueFixture {
    let fleet: AggregatorFixture
    let az: StandInAzure
    let queue: DeferredQueue

    /// `backend`: where the aggregator keeps its state (a new PostgreSQL database on the test
    /// server, or an SQLite file); the test writes operations into the same database.
    static func start(connectedWithin: String, stableFor: String, limit: Int = 4, backend: StoreBackend = .sqlite) async throws -> ProcessQueueFixture {
        let az = try StandInAzure()
        let directory = try temporaryDirectory("edgefleet-process-queue")
        try """
            executors:
              extension.install:
                argv: [az, k8s-extension, create, --cluster-name, "{cluster.name}", --name, "{params.name}"]
                timeout: 30s
            """.write(toFile: directory + "/aggregator.yaml", atomically: true, encoding: .utf8)
        var environment = ProcessInfo.processInfo.environment
        environment["PATH"] = az.directory + ":" + (environment["PATH"] ?? "/usr/bin:/bin")
        let flags = [
            "--config", directory + "/aggregator.yaml", "--connected-within", connectedWithin, "--budget", "1h", "--warn-before", "10m",
            "--critical-before", "5m", "--stable-for", stableFor, "--max-concurrent-dispatches", "\(limit)", "--dispatch-interval", "100ms",
            "--flush-interval", "100ms",
        ]
        let executors: [OperationKind: ExecutorTemplate] = [.extensionInstall: ExecutorTemplate(argv: ["az", "{params.name}"])]
        if backend == .postgres {
            let stores = try FreshStores(.postgres)
            let fleet = try await AggregatorFixture.start(
                flags: flags + ["--db-password-file", stores.passwordFile ?? ""], environment: environment, database: stores.database)
            return ProcessQueueFixture(fleet: fleet, az: az, queue: DeferredQueue(store: stores.stores.operations, executors: executors))
        }
        let fleet = try await AggregatorFixture.start(flags: flags, environment: environment)
        let queue = DeferredQueue(store: SQLiteOperationStore(database: try AggregatorDatabase(path: fleet.database)), executors: executors)
        return ProcessQueueFixture(fleet: fleet, az: az, queue: queue)
    }

    func submit(_ site: String, _ name: String) throws -> String {
        try queue.submit(
            SubmissionRequest(site: site, kind: "extension.install", params: ["name": name], createdBy: "test"), situation: nil, now: Date()
        ).operation.id
    }

    func waitUntilSucceeded(_ ids: [String], timeout: Duration = .seconds(60)) async throws {
        let store = queue.store
        try await withTimeout(timeout, "\(ids.count) operations to succeed") {
            while try ids.contains(where: { try store.operation(id: $0)?.state != .succeeded }) {
                if let failed = try ids.lazy.compactMap({ try store.operation(id: $0) }).first(where: { $0.state.isTerminal && $0.state != .succeeded }) {
                    throw TestSupportError("\(failed.id) ended \(failed.state): \(failed.history.map(\.note))")
                }
                try await Task.sleep(for: .milliseconds(50))
            }
        }
    }

    func stop() {
        fleet.stop()
        az.remove()
    }
}

@Suite("the queue with the aggregator as its own process", .timeLimit(.minutes(3)))
struct ProcessDispatchTests {
    @Test(
        "semi-connected: queued and nothing runs; contact back: nothing until stableFor, then in order, one at a time, exact argv",
        arguments: StoreBackend.allCases)
    func semiConnectedThenBack(backend: StoreBackend) async throws {
        // 5 s: a loaded machine delays heartbeats.
        let q = try await ProcessQueueFixture.start(connectedWithin: "5s", stableFor: "1500ms", backend: backend)
        defer { q.stop() }
        let site = try SimulatedSite("proc-site", brokerURL: q.fleet.broker.url)
        site.reportContact(at: Date().addingTimeInterval(-60))
        try await site.connect()
        try await site.status(cluster: ClusterInfo(name: "aks-proc", resourceGroup: "rg"))
        site.startBeating()
        _ = try await q.fleet.messages.view("proc-site", "semi-connected") { $0.mode == .semiConnected }
        let ids = try ["one", "two", "three $(id); 'x y'"].map { try q.submit("proc-site", $0) }
        // The aggregator sees them (its view counts them) and runs none while the site is semi-connected.
        _ = try await q.fleet.messages.view("proc-site", "the queue counted in the view") { $0.queue.queued == 3 }
        try await Task.sleep(for: .milliseconds(500))
        #expect(q.az.calls().isEmpty)

        site.regainAzure()
        let back = try await q.fleet.messages.view("proc-site", "connected again") { $0.mode == .connected }
        // The aggregator's own instant of the change (an observer on a loaded machine may see it late).
        let connectedAt = try #require(back.modeSince).timeIntervalSince1970
        try await q.waitUntilSucceeded(ids)
        let calls = q.az.calls()
        #expect(calls.map(\.id) == ids)
        #expect(calls.first.map { $0.start >= connectedAt + 1.5 - 0.05 } == true, "ran before stableFor")
        for (a, b) in zip(calls, calls.dropFirst()) { #expect((a.end ?? .infinity) <= b.start) }
        #expect(calls.last?.arguments == ["k8s-extension", "create", "--cluster-name", "aks-proc", "--name", "three $(id); 'x y'"])
        // The aggregator announced each dispatch and success.
        for id in ids {
            _ = try await q.fleet.messages.event("proc-site", "operation-succeeded of \(id)") { $0.type == .operationSucceeded && $0.operationID == id }
        }
        // The view's counts followed the operations to the end.
        _ = try await q.fleet.messages.view("proc-site", "nothing queued or running in the view") { $0.queue == QueueCounts() }
        await site.shutdown()
    }

    @Test("200 sites come back at once with 5 operations each: never more than the limit at once, all 1,000 run exactly once")
    func stampede() async throws {
        let q = try await ProcessQueueFixture.start(connectedWithin: "10m", stableFor: "500ms", limit: 4)
        defer { q.stop() }
        let sites = (0..<200).map { "p-site-\($0)" }
        var ids: [String] = []
        for site in sites { for round in 0..<5 { ids.append(try q.submit(site, "ext-\(round)")) } }
        try await announce(sites, broker: q.fleet.broker)
        try await q.waitUntilSucceeded(ids, timeout: .seconds(150))
        let calls = q.az.calls()
        #expect(calls.count == 1000 && Set(calls.map(\.id)) == Set(ids))
        #expect(q.az.peakConcurrency() <= 4 && q.az.peakConcurrency() >= 2)
    }
}
