import FleetAggregator
import FleetCore
import Foundation
import MQTT
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Aggregator replicas sharing one PostgreSQL and one broker (real processes, a real server).
@Suite("replicas on PostgreSQL", .timeLimit(.minutes(3)))
struct ReplicaTests {
    /// The next presence of `replica` on its own topic matching `predicate`.
    func presence(_ messages: MessageCollector, _ replica: String, _ what: String, timeout: Duration = .seconds(30), where predicate: @escaping @Sendable (Presence) -> Bool)
        async throws -> Presence
    {
        let message = try await messages.next(timeout: timeout, what) { message in
            message.topic == "edgefleet/v1/aggregator/replicas/\(replica)/presence"
                && (try? FleetJSON.decode(Presence.self, from: message.payload)).map(predicate) == true
        }
        return try FleetJSON.decode(Presence.self, from: message.payload)
    }

    @Test("two replicas: one leads and publishes, the other stands by; SIGKILL of the leader: the standby leads within the lease under a higher epoch, republishes the fleet, and runs an operation submitted through its own API")
    func failover() async throws {
        let stores = try FreshStores(.postgres)
        defer { stores.remove() }
        let az = try StandInAzure()
        defer { az.remove() }
        let directory = try temporaryDirectory("edgefleet-replicas")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try "\(OperatorFixture.token)\n".write(toFile: directory + "/tokens", atomically: true, encoding: .utf8)
        try """
            executors:
              extension.install:
                argv: [az, k8s-extension, create, --cluster-name, "{cluster.name}", --name, "{params.name}"]
                timeout: 30s
            """.write(toFile: directory + "/aggregator.yaml", atomically: true, encoding: .utf8)
        var environment = ProcessInfo.processInfo.environment
        environment["PATH"] = az.directory + ":" + (environment["PATH"] ?? "/usr/bin:/bin")
        let broker = try await MosquittoBroker.start()
        defer { broker.stop() }
        let (observer, messages) = try await fleetObserver(broker)
        let flags = [
            "--config", directory + "/aggregator.yaml", "--connected-within", "10s", "--budget", "1h", "--warn-before", "10m",
            "--critical-before", "5m", "--stable-for", "500ms", "--view-refresh", "1s", "--summary-interval", "200ms", "--flush-interval", "200ms",
            "--dispatch-interval", "100ms", "--http", "127.0.0.1:0", "--token-file", directory + "/tokens",
            "--db-password-file", stores.passwordFile ?? "", "--leader-lease", "2s",
        ]
        let a = try AggregatorProcess(broker: broker, database: stores.database, flags: flags + ["--replica-id", "replica-a"], environment: environment)
        var processes = [a]
        defer { for process in processes { process.terminate() } }
        let aLeads = try await presence(messages, "replica-a", "replica-a leading") { $0.state == .online && $0.role == "leader" }
        let b = try AggregatorProcess(broker: broker, database: stores.database, flags: flags + ["--replica-id", "replica-b"], environment: environment)
        processes.append(b)
        _ = try await presence(messages, "replica-b", "replica-b standing by") { $0.state == .online && $0.role == "standby" }
        let bPort = try await OperatorFixture.listeningPort(b)
        let health = try await HTTP.request("GET", port: bPort, "/healthz")
        #expect(health.status == 200 && health.text.contains(#""role":"standby""#) && health.text.contains(#""replica":"replica-b""#))

        // A site: the leader publishes its view; every event so far carries the leader's epoch.
        let site = try SimulatedSite("ha-site", brokerURL: broker.url)
        site.reportContact(at: Date())
        site.regainAzure()  // every heartbeat reports a fresh contact (a loaded machine must not age it past connectedWithin)
        try await site.connect()
        try await site.status(cluster: ClusterInfo(name: "aks-ha", resourceGroup: "rg"))
        site.startBeating()
        _ = try await messages.view("ha-site", "ha-site connected") { $0.mode == .connected }
        let epochA = try #require(aLeads.epoch)
        // A submission through the standby: its event is published by the leader (through the outbox).
        let early = #"{"site":"ha-site","kind":"extension.install","params":{"name":"through-the-standby"},"createdBy":"test","notBefore":"2099-01-01T00:00:00Z"}"#
        let viaStandby = try await HTTP.request("POST", port: bPort, "/v1/operations", token: OperatorFixture.token, body: Array(early.utf8))
        let earlyID = try #require((try viaStandby.json()["operation"] as? [String: Any])?["id"] as? String, "\(viaStandby.status) \(viaStandby.text)")
        let queuedEvent = try await messages.event("ha-site", "the standby's submission announced by the leader") { $0.type == .operationQueued && $0.operationID == earlyID }
        #expect(queuedEvent.epoch == epochA)
        // Cancelled through the standby too (it would hold the site's later operations until 2099).
        let cancelled = try await HTTP.request("POST", port: bPort, "/v1/operations/\(earlyID)/cancel", token: OperatorFixture.token)
        #expect(cancelled.status == 200, "\(cancelled.text)")
        _ = try await messages.event("ha-site", "the standby's cancel announced by the leader") { $0.type == .operationCancelled && $0.operationID == earlyID }

        // SIGKILL of the leader: the standby takes the lead once the lease ran out.
        let killedAt = ContinuousClock.now
        let killedWall = Date()
        a.kill()
        let bLeads = try await presence(messages, "replica-b", "replica-b leading") { $0.role == "leader" }
        let failover = ContinuousClock.now - killedAt
        #expect(failover < .seconds(10), "the standby took \(failover) to lead")
        let epochB = try #require(bLeads.epoch)
        #expect(epochB > epochA)
        // The killed replica's Last Will, on its own topic only.
        _ = try await presence(messages, "replica-a", "replica-a's Last Will") { $0.state == .offline && $0.reason == .lost }
        // The new leader says so (an event under its epoch) and publishes the fleet again.
        _ = try await messages.next(timeout: .seconds(15), "the leader-changed event") { message in
            guard message.topic == "edgefleet/v1/fleet/events", let event = try? FleetJSON.decode(FleetEvent.self, from: message.payload) else { return false }
            return event.type == .leaderChanged && event.to == "replica-b" && event.epoch == epochB
        }
        _ = try await messages.view("ha-site", "ha-site's view from the new leader") { $0.mode == .connected && ($0.lastHeartbeatAt ?? .distantPast) > killedWall }

        // An operation submitted through the (former standby's) API runs.
        let body = #"{"site":"ha-site","kind":"extension.install","params":{"name":"after-failover"},"createdBy":"test"}"#
        let submitted = try await HTTP.request("POST", port: bPort, "/v1/operations", token: OperatorFixture.token, body: Array(body.utf8))
        #expect(submitted.status == 202 || submitted.status == 201, "\(submitted.status) \(submitted.text)")
        try await withTimeout(.seconds(30), "the operation to run") {
            while !az.calls().contains(where: { $0.arguments.contains("after-failover") && $0.code == 0 }) { try await Task.sleep(for: .milliseconds(100)) }
        }
        let health2 = try await HTTP.request("GET", port: bPort, "/healthz")
        #expect(health2.text.contains(#""role":"leader""#) && health2.text.contains(#""epoch":\#(epochB)"#))
        // The dashboard says it too (reads are token-protected: the sign-in page is enough to show the header).
        let page = try await HTTP.request("GET", port: bPort, "/", token: OperatorFixture.token)
        #expect(page.text.contains("replica replica-b <span class='role role-leader'>leader</span> epoch \(epochB)"), "\(page.text.prefix(600))")
        // The CLI's status says which replica answered and its role.
        let status = try await runAsync(
            try builtProduct("edgefleet"), ["status", "--server", "http://127.0.0.1:\(bPort)"], environment: ["EDGEFLEET_TOKEN": OperatorFixture.token])
        #expect(status.status == 0 && status.stdout.contains("aggregator: replica replica-b, leader (epoch \(epochB))"), "\(status.stdout)\(status.stderr)")
        let metrics = try await HTTP.request("GET", port: bPort, "/metrics", token: OperatorFixture.token)
        #expect(metrics.text.contains("edgefleet_leader 1") && metrics.text.contains("edgefleet_leader_epoch \(epochB)"))

        // Never an event under the old epoch after the new leader's first.
        let events = messages.received.filter { $0.topic == "edgefleet/v1/fleet/events" }.compactMap { try? FleetJSON.decode(FleetEvent.self, from: $0.payload) }
        let epochs = events.compactMap(\.epoch)
        #expect(epochs.count == events.count, "an event without an epoch from a replica")
        #expect(zip(epochs, epochs.dropFirst()).allSatisfy { $0 <= $1 }, "epochs went back: \(epochs)")
        await site.shutdown()
        await observer.shutdown()
    }
}
