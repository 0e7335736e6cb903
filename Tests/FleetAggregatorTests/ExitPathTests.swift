import FleetAggregator
@testable import FleetQueue
import FleetCore
import Foundation
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Every way out of the aggregator ends the process, with the right status, within seconds
/// (a process whose services stopped but which lives on is never restarted by a supervisor).
@Suite("the aggregator's ways out", .timeLimit(.minutes(3)))
struct ExitPathTests {
    /// Waits for the process to exit, up to `timeout`; returns its status, or nil if it is still alive.
    func exitStatus(_ process: AggregatorProcess, within timeout: Duration) async -> Int32? {
        await offloadWait(process.process, timeout)
    }

    @Test("fatal start-up errors: an unopenable database, a refused broker password; exit 1 with the reason, no usage text, within seconds")
    func fatalStartUp() async throws {
        let broker = try await MosquittoBroker.start()
        defer { broker.stop() }
        let directory = try temporaryDirectory("edgefleet-exit")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        // A database in a directory that does not exist (and cannot be made: a file is in the way).
        _ = FileManager.default.createFile(atPath: directory + "/file", contents: Data())
        let unopenable = try AggregatorProcess(broker: broker, database: directory + "/file/fleet.sqlite", log: directory + "/unopenable.log")
        let status = await exitStatus(unopenable, within: .seconds(15))
        #expect(status == 1, "exit \(String(describing: status)): \(unopenable.output)")
        #expect(unopenable.output.contains("database") && !unopenable.output.contains("Usage:"), "\(unopenable.output)")

        // A broker that refuses the aggregator's credentials: no amount of retrying helps.
        let secure = try await SecureBroker.start(sites: [])
        defer { secure.stop() }
        try "not-the-password\n".write(toFile: directory + "/wrong.pw", atomically: true, encoding: .utf8)
        let refused = try AggregatorProcess(
            broker: secure.broker, database: directory + "/refused.sqlite",
            extra: ["--username", "edgefleet.aggregator", "--password-file", directory + "/wrong.pw", "--ca-file", secure.ca],
            brokerURL: "mqtts://127.0.0.1:\(secure.tlsPort)")
        let refusedStatus = await exitStatus(refused, within: .seconds(30))
        #expect(refusedStatus == 1, "exit \(String(describing: refusedStatus)): \(refused.output.suffix(1500))")
        #expect(refused.output.lowercased().contains("not authori"), "\(refused.output.suffix(1500))")
    }

    @Test("SIGTERM with an executor running and the broker gone: the executor is ended, the process exits 0 within seconds")
    func sigtermWithoutBroker() async throws {
        let fixture = try await QueuedOperationFixture(site: "exit-1", seconds: 60, timeout: "5m")
        defer { fixture.remove() }
        let (id, database) = (fixture.id, fixture.database)
        let aggregator = try fixture.startAggregator()
        let pid = try await fixture.executorStarted()
        fixture.agent.cancel()
        fixture.broker.stop()
        try await Task.sleep(for: .seconds(1))
        let started = ContinuousClock.now
        aggregator.process.signal(SIGTERM)
        let status = await exitStatus(aggregator, within: .seconds(25))
        #expect(status == 0, "exit \(String(describing: status)) after SIGTERM: \(aggregator.output.suffix(2000))")
        #expect(ContinuousClock.now - started < .seconds(20))
        #expect(kill(pid, 0) != 0 || isZombie(pid), "the executor outlived the aggregator")
        let stored = try SQLiteOperationStore(database: try AggregatorDatabase(path: database)).operation(id: id)
        #expect(stored?.state == .queued, "the interrupted operation is queued again: \(String(describing: stored?.history.map(\.note)))")
    }

    @Test("a database that cannot be written (a full disk): /healthz says 503 after the grace, a counter counts, and SIGTERM still exits 0")
    func lostDatabase() async throws {
        let broker = try await MosquittoBroker.start()
        defer { broker.stop() }
        let disk = try SmallDisk(megabytes: 2)
        defer { disk.remove() }
        let port = try freeLoopbackPort()
        let aggregator = try AggregatorProcess(
            broker: broker, database: disk.path + "/fleet.sqlite",
            flags: Short.flags + ["--http", "127.0.0.1:\(port)", "--public-reads", "true", "--store-grace", "2s"])
        try await withTimeout(.seconds(20), "the aggregator to answer") {
            while (try? await HTTP.get(port: port, "/healthz"))?.status != 200 { try await Task.sleep(for: .milliseconds(100)) }
        }
        // Sites to write, then the disk fills up.
        let sites = try (0..<5).map { try SimulatedSite("disk-\($0)", brokerURL: broker.url) }
        defer { Task { for site in sites { await site.shutdown() } } }
        for site in sites {
            try await site.connect()
            site.startBeating()
        }
        let (observer, messages) = try await fleetObserver(broker)
        defer { Task { await observer.shutdown() } }
        try disk.fill()
        let unhealthy = try await withTimeout(.seconds(30), "/healthz to say 503") { () -> String in
            while true {
                let response = try await HTTP.get(port: port, "/healthz")
                if response.status == 503 { return response.text }
                try await Task.sleep(for: .milliseconds(200))
            }
        }
        #expect(unhealthy.contains("store"), "\(unhealthy)")
        // Events are stored before they are published: a store that cannot write must not hold
        // them back (they go out without an id, counted, when the write fails).
        sites[0].stopBeating()
        let stale = try await messages.event("disk-0", "disk-0's liveness event while the disk is full") {
            $0.type == .livenessChanged && $0.to == "stale"
        }
        if stale.id == nil {
            let counted = try await HTTP.get(port: port, "/metrics").text.split(separator: "\n")
                .first { $0.hasPrefix("edgefleet_event_store_failures_total") }
            #expect(counted.flatMap { Double($0.split(separator: " ").last ?? "") }.map { $0 >= 1 } == true, "\(counted ?? "no counter")")
        }
        let metrics = try await HTTP.get(port: port, "/metrics").text
        let failures = metrics.split(separator: "\n").first { $0.hasPrefix("edgefleet_store_write_failures_total") }
        #expect(failures.flatMap { Double($0.split(separator: " ").last ?? "") }.map { $0 >= 1 } == true, "\(failures ?? "no counter")")
        // Logged at a limited rate, not once per flush.
        let logged = aggregator.output.components(separatedBy: "cannot save").count - 1
        #expect(logged >= 1 && logged <= 3, "\(logged) log lines about the failed writes")
        // Room again: healthy again.
        disk.free()
        try await withTimeout(.seconds(30), "/healthz to say 200 again") {
            while try await HTTP.get(port: port, "/healthz").status != 200 { try await Task.sleep(for: .milliseconds(200)) }
        }
        aggregator.process.signal(SIGTERM)
        let status = await exitStatus(aggregator, within: .seconds(20))
        #expect(status == 0, "exit \(String(describing: status)): \(aggregator.output.suffix(1500))")
    }
}

/// Waits for a child process on a thread of its own (not the cooperative pool).
func offloadWait(_ process: ChildProcess, _ timeout: Duration) async -> Int32? {
    (try? await offload { process.wait(timeout: timeout) }) ?? nil
}

