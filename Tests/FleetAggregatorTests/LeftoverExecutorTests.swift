import FleetAggregator
import FleetCore
import Foundation
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("an executor outlives its aggregator", .timeLimit(.minutes(3)))
struct LeftoverExecutorTests {
    @Test("SIGKILL during a 20 s executor: it held only its standard descriptors, a restart on the same port succeeds at once, the leftover is ended before the operation runs again")
    func killedMidRun() async throws {
        let broker = try MosquittoBroker()
        defer { broker.stop() }
        let directory = try temporaryDirectory("edgefleet-leftover")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let az = try StandInAzure(seconds: 20)
        defer { az.remove() }
        let database = directory + "/fleet.sqlite"
        try """
            executors:
              extension.install:
                argv: [az, k8s-extension, create, --name, "{params.name}"]
                timeout: 2m
            """.write(toFile: directory + "/aggregator.yaml", atomically: true, encoding: .utf8)
        var environment = ProcessInfo.processInfo.environment
        environment["PATH"] = az.directory + ":" + (environment["PATH"] ?? "/usr/bin:/bin")
        let port = try freeLoopbackPort()
        let flags = [
            "--config", directory + "/aggregator.yaml", "--connected-within", "10m", "--budget", "30d", "--stable-for", "0s",
            "--dispatch-interval", "100ms", "--http", "127.0.0.1:\(port)",
        ]
        let id = try DeferredQueue(
            store: SQLiteOperationStore(database: try AggregatorDatabase(path: database)),
            executors: [.extensionInstall: ExecutorTemplate(argv: ["az", "{params.name}"])]
        ).submit(
            SubmissionRequest(site: "leftover-1", kind: "extension.install", params: ["name": "ext"], createdBy: "test"), situation: nil, now: Date()
        ).operation.id
        let agents = Task {
            while !Task.isCancelled {
                try? await announce(["leftover-1"], broker: broker)
                try? await Task.sleep(for: .seconds(1))
            }
        }
        defer { agents.cancel() }

        let first = try AggregatorProcess(broker: broker, database: database, flags: flags, environment: environment)
        let pid = try await withTimeout(.seconds(30), "the executor to start") {
            while true {
                if let pid = az.pids(of: id).first { return pid }
                try await Task.sleep(for: .milliseconds(50))
            }
        }
        // Defect: the executor held the HTTP listener, the MQTT socket, epoll and socket pairs.
        // Now only 0, 1 and 2 (and the shell's own descriptor of the script it reads).
        let descriptors = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")
        let foreign = descriptors.filter { fd in
            guard let number = Int(fd), number > 2 else { return false }
            let target = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/\(fd)")) ?? "?"
            return target != az.path
        }.map { fd in "\(fd) -> " + ((try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/\(fd)")) ?? "?") }
        #expect(foreign.isEmpty, "the executor inherited descriptors: \(foreign)")

        first.kill()
        // At once: the port is free (no leftover holds the listener) and the restart comes up.
        let second = try AggregatorProcess(broker: broker, database: database, flags: flags, environment: environment)
        defer { second.terminate() }
        try await withTimeout(.seconds(30), "the restarted aggregator to answer on its port") {
            while true {
                if !second.process.isRunning { throw TestSupportError("the restart exited:\n\(second.output.suffix(2000))") }
                if let response = try? await HTTP.get(port: port, "/healthz"), response.status == 200 || response.status == 503 { return }
                try await Task.sleep(for: .milliseconds(100))
            }
        }
        let store = SQLiteOperationStore(database: try AggregatorDatabase(path: database))
        try await withTimeout(.seconds(90), "the operation to succeed after the restart") {
            while try store.operation(id: id)?.state != .succeeded { try await Task.sleep(for: .milliseconds(200)) }
        }
        let calls = az.calls().filter { $0.id == id }
        #expect(calls.count == 2, "one interrupted run and one complete run: \(calls)")
        if calls.count == 2 {
            let end = try #require(calls[0].end, "the leftover run never ended")
            #expect(end <= calls[1].start, "two runs of one operation overlapped by \(end - calls[1].start) s")
            #expect(calls[0].code == 143, "the leftover was ended by SIGTERM")
        }
        #expect(kill(pid, 0) != 0 || isZombie(pid), "the leftover executor is still alive")
        let history = try #require(try store.operation(id: id)).history
        #expect(history.contains { $0.note.contains("was ended first") }, "\(history.map(\.note))")
        #expect(try store.runs().isEmpty, "run records are forgotten once the outcome is written")
    }
}

