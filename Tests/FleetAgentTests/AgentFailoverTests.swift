import FleetCore
import Foundation
import Logging
import MQTT
import TestSupport
import Testing

/// An agent given two brokers (`--broker` twice) moves between them as they fail, and no
/// status change is lost across a move.
@Suite("the agent with more than one broker")
struct AgentFailoverTests {
    func observer(_ broker: MosquittoBroker) async throws -> (MQTTClient, MessageCollector) {
        try await observe(broker, "edgefleet/v1/sites/#")
    }

    /// The state of check `flip` in every status the observer received, in order.
    static func flips(_ messages: MessageCollector) -> [CheckState] {
        messages.received.filter { $0.topic == "edgefleet/v1/sites/s-two/status" }
            .compactMap { try? FleetJSON.decode(SiteStatus.self, from: $0.payload) }
            .compactMap { $0.checks.first { $0.name == "flip" }?.state }
    }

    @Test("the first broker down at start: on the second within 15 s; the second stopped and the first started: back within 15 s; every status change arrives")
    func failover() async throws {
        let first = try await MosquittoBroker.start()
        first.stop()  // down at start; its port is kept for later
        defer { first.stop() }
        let second = try await MosquittoBroker.start()
        defer { second.stop() }
        let stateDir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: stateDir) }
        // A check whose exit code the test sets: each change of it is a status change.
        try "0\n".write(toFile: stateDir + "/code", atomically: true, encoding: .utf8)
        try """
            checks:
              - {name: flip, command: [sh, -c, "exit $(cat \(stateDir)/code)"], interval: 300ms}
            """.write(toFile: stateDir + "/agent.yaml", atomically: true, encoding: .utf8)
        let (secondClient, onSecond) = try await observer(second)
        defer { Task { await secondClient.shutdown() } }
        let started = ContinuousClock.now
        let agent = try AgentProcess(
            site: "s-two", broker: first, stateDir: stateDir, extra: ["--broker", second.url, "--config", stateDir + "/agent.yaml"])
        defer { agent.terminate() }
        _ = try await onSecond.next(timeout: .seconds(15), "the agent's presence on the second broker") { $0.topic.hasSuffix("s-two/presence") }
        #expect(ContinuousClock.now - started < .seconds(15))
        try await withTimeout(.seconds(10), "a passing status on the second broker") {
            while Self.flips(onSecond).last != .pass { try await Task.sleep(for: .milliseconds(100)) }
        }
        try "1\n".write(toFile: stateDir + "/code", atomically: true, encoding: .utf8)
        try await withTimeout(.seconds(10), "a warning status on the second broker") {
            while Self.flips(onSecond).last != .warn { try await Task.sleep(for: .milliseconds(100)) }
        }

        // The second goes; while the agent has no broker its check fails; then the first comes up.
        second.stop()
        try "2\n".write(toFile: stateDir + "/code", atomically: true, encoding: .utf8)
        try await Task.sleep(for: .seconds(1))  // the check's interval is 300 ms: the change happens while no broker is up
        let moved = ContinuousClock.now
        try await first.restart()
        let (firstClient, onFirst) = try await observer(first)
        defer { Task { await firstClient.shutdown() } }
        _ = try await onFirst.next(timeout: .seconds(15), "the agent's presence on the first broker") { $0.topic.hasSuffix("s-two/presence") }
        #expect(ContinuousClock.now - moved < .seconds(15))
        try await withTimeout(.seconds(10), "the failing status on the first broker") {
            while !Self.flips(onFirst).contains(.fail) { try await Task.sleep(for: .milliseconds(100)) }
        }
        // Across both brokers every change arrived, in order: pass, warn, fail.
        var seen: [CheckState] = []
        for state in Self.flips(onSecond) + Self.flips(onFirst) where seen.last != state { seen.append(state) }
        #expect(seen == [.pass, .warn, .fail], "\(seen)")
        #expect(agent.output.contains("trying the next broker"), "\(agent.output.suffix(2000))")
    }
}
