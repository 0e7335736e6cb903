import FleetAggregator
@testable import FleetQueue
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
        let port = try freeLoopbackPort()
        let fixture = try await QueuedOperationFixture(site: "leftover-1", seconds: 20, timeout: "2m", extraFlags: ["--http", "127.0.0.1:\(port)"])
        defer { fixture.remove() }
        let (az, id, database) = (fixture.az, fixture.id, fixture.database)
        let first = try fixture.startAggregator()
        let pid = try await fixture.executorStarted()
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
        let second = try fixture.startAggregator()
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

