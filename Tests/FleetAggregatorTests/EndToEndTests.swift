import FleetCore
import Foundation
import MQTT
import TestSupport
import Testing

/// The whole story with every real part: three real `edgefleet-agent` processes, each
/// probing its own stand-in Azure endpoint (`openssl s_server`) that the test switches off
/// and on; the real aggregator and broker; the stand-in `az`; asserted as an operator sees
/// it, through the built `edgefleet` CLI and the retained fleet topics.
///
/// Thresholds: connected within 3 s, a 25 s budget (the 30 days), stable for 2 s.
@Suite("end to end: an outage story with real agents", .timeLimit(.minutes(4)))
struct EndToEndTests {
    struct Site {
        let name: String
        let azure: StandInEndpoint
        let agent: AgentProcess
        let stateDir: String
    }

    @Test("connected, semi-connected with the queue filling, recovery draining it in order; a site past its deadline blocked until released")
    func outageStory() async throws {
        let f = try await OperatorFixture.start(thresholds: [
            "--connected-within", "3s", "--budget", "25s", "--warn-before", "15s", "--critical-before", "8s", "--stable-for", "2s",
        ])
        defer { f.stop() }
        let pki = try await TestPKI.make()
        defer { pki.remove() }
        var sites: [String: Site] = [:]
        for name in ["e2e-a", "e2e-b", "e2e-c"] {
            let azure = try StandInEndpoint(pki: pki)
            let stateDir = try temporaryDirectory("edgefleet-e2e-\(name)")
            let agent = try AgentProcess(
                site: name, broker: f.fleet.broker, stateDir: stateDir,
                probe: ["--probe-endpoints", "localhost:\(azure.port)", "--probe-ca-file", pki.caCertificate, "--probe-timeout", "2s"],
                extra: ["--cluster-name", "aks-\(name)", "--resource-group", "rg-e2e", "--status-refresh", "2s"])
            sites[name] = Site(name: name, azure: azure, agent: agent, stateDir: stateDir)
        }
        defer {
            for site in sites.values {
                site.agent.terminate()
                site.azure.stop()
                try? FileManager.default.removeItem(atPath: site.stateDir)
            }
        }
        let a = try #require(sites["e2e-a"])
        let b = try #require(sites["e2e-b"])

        /// The modes an operator sees with `edgefleet sites --output json`.
        @Sendable func modes() async throws -> [String: String] {
            let result = try await f.cli(["sites", "--output", "json"])
            guard result.status == 0, let list = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [[String: Any]] else {
                throw TestSupportError("edgefleet sites: \(result.status) \(result.stderr)")
            }
            return Dictionary(uniqueKeysWithValues: list.compactMap { view in (view["site"] as? String).map { ($0, view["mode"] as? String ?? "") } })
        }
        func waitForModes(_ expected: [String: String], _ what: String, timeout: Duration = .seconds(30)) async throws {
            try await withTimeout(timeout, what) {
                while true {
                    let now = try await modes()
                    if expected.allSatisfy({ now[$0.key] == $0.value }) { return }
                    try await Task.sleep(for: .milliseconds(200))
                }
            }
        }
        /// Each operation's state, through `edgefleet queue --output json`.
        func states() async throws -> [String: String] {
            let result = try await f.cli(["queue", "--output", "json"])
            let list = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [[String: Any]] ?? []
            return Dictionary(uniqueKeysWithValues: list.compactMap { op in (op["id"] as? String).map { ($0, op["state"] as? String ?? "") } })
        }
        func submit(_ site: String, _ name: String) async throws -> String {
            let result = try await f.cli(["ops", "submit", site, "extension.install", "--param", "name=\(name)", "--output", "json"])
            let body = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any], "\(result.stderr)")
            return try #require((body["operation"] as? [String: Any])?["id"] as? String)
        }

        // 1. Every agent reaches its stand-in Azure: all connected, on the CLI and on the retained topics.
        try await waitForModes(["e2e-a": "connected", "e2e-b": "connected", "e2e-c": "connected"], "all three connected")
        _ = try await f.fleet.messages.view("e2e-a", "a's retained view, connected") { $0.mode == .connected && $0.liveness == .online }

        // 2. Azure goes away at a and b: semi-connected, counting down; c stays connected.
        a.azure.stop()
        b.azure.stop()
        try await waitForModes(["e2e-a": "semi-connected", "e2e-b": "semi-connected", "e2e-c": "connected"], "a and b semi-connected")
        let semiView = try await f.fleet.messages.view("e2e-b", "b's retained view counting down") { $0.mode == .semiConnected }
        #expect(semiView.deadline != nil && (semiView.remainingS ?? 0) > 0)

        // 3. The queue fills while they are away: nothing runs.
        let a1 = try await submit("e2e-a", "first")
        let a2 = try await submit("e2e-a", "second")
        let b1 = try await submit("e2e-b", "only")
        let queued = try await states()
        #expect([a1, a2, b1].allSatisfy { queued[$0] == "queued" }, "\(queued)")
        let c1 = try await submit("e2e-c", "now")  // c is connected and stable: it runs at once
        try await f.waitForState(c1, "succeeded")
        #expect(f.az.calls().map(\.id) == [c1], "only c's operation ran while a and b were away")

        // 4. a's link is back: connected, and after stableFor its operations drain in order.
        try a.azure.start()
        try await waitForModes(["e2e-a": "connected"], "a connected again")
        try await f.waitForState(a2, "succeeded", timeout: .seconds(30))
        let ran = f.az.calls().map(\.id)
        #expect(ran == [c1, a1, a2], "a's operations ran in submission order after c's: \(ran)")
        let aCalls = f.az.calls().filter { $0.id == a1 || $0.id == a2 }
        #expect(aCalls.count == 2 && (aCalls[0].end ?? .infinity) <= aCalls[1].start, "a's operations overlapped")
        #expect(aCalls.first?.arguments == ["k8s-extension", "create", "--cluster-name", "aks-e2e-a", "--name", "first"])

        // 5. b stays away past its 25 s budget: disconnected, and its operation is blocked.
        try await waitForModes(["e2e-b": "disconnected"], "b past its deadline", timeout: .seconds(45))
        try await f.waitForState(b1, "blocked")
        _ = try await f.fleet.messages.event("e2e-b", "b's mode change to disconnected") { $0.type == .modeChanged && $0.to == "disconnected" }

        // 6. b's link comes back: connected again, but its blocked operation does not run by itself.
        try b.azure.start()
        try await waitForModes(["e2e-b": "connected"], "b connected again")
        let back = try await f.fleet.messages.view("e2e-b", "b's view, connected again") { $0.mode == .connected }
        // Past stableFor by the aggregator's own clock, plus dispatch passes: a queued operation would have run.
        let releasedBy = try #require(back.modeSince).addingTimeInterval(2 + 1)
        try await withTimeout(.seconds(10), "b stable for longer than stableFor") {
            while Date() < releasedBy { try await Task.sleep(for: .milliseconds(100)) }
        }
        #expect(try await f.state(b1) == "blocked")
        #expect(!f.az.calls().contains { $0.id == b1 })

        // 7. An operator releases it: it runs.
        let released = try await f.cli(["queue", "release", b1])
        #expect(released.status == 0, "\(released.stderr)")
        try await f.waitForState(b1, "succeeded")
        #expect(f.az.calls().map(\.id) == [c1, a1, a2, b1])
        // The fleet summary catches up (the queue is recounted at most 4 times a second).
        let fleet = try await withTimeout(.seconds(10), "the summary to count 4 succeeded operations") { () -> [String: Int] in
            while true {
                let summary = try await f.cli(["status", "--output", "json"])
                let fleet = try JSONSerialization.jsonObject(with: Data(summary.stdout.utf8)) as? [String: Any] ?? [:]
                let modes = fleet["modes"] as? [String: Int] ?? [:]
                if (fleet["queue"] as? [String: Int])?["succeeded"] == 4 { return modes }
                try await Task.sleep(for: .milliseconds(100))
            }
        }
        #expect(fleet["connected"] == 3)
    }
}
