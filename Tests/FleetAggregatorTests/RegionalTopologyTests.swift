import FleetAggregator
import FleetCore
import Foundation
import MQTT
import TestSupport
import Testing

/// Issue 14's topology past one broker: regional mosquittos bridging their sites' topics into a
/// central one, two aggregator replicas on the central broker and one PostgreSQL.
@Suite("regional brokers, replicas on the central one", .timeLimit(.minutes(3)))
struct RegionalTopologyTests {
    /// A regional broker for its sites, bridging their topics to `central` and the fleet's back.
    func regional(_ region: String, central: MosquittoBroker) async throws -> MosquittoBroker {
        try MosquittoBroker(extraLines: [
            "connection central-\(region)",
            "address \(central.url.replacingOccurrences(of: "mqtt://", with: ""))",
            "bridge_protocol_version mqttv311",
            "remote_clientid edgefleet-bridge-\(region)",
            "local_clientid edgefleet-bridge-\(region)-local",
            "cleansession false",
            "try_private true",
            "restart_timeout 1 5",
            "start_type automatic",
            "topic edgefleet/v1/sites/# out 1",
            "topic edgefleet/v1/fleet/# in 1",
            "topic edgefleet/v1/aggregator/# in 1",
        ])
    }

    @Test("two regions bridged into the central broker: the replicas see both regions' sites; after the leader's SIGKILL the new leader publishes a region's change of mode, and the views reach the regions back")
    func regionsAndReplicas() async throws {
        let stores = try FreshStores(.postgres)
        defer { stores.remove() }
        let central = try await MosquittoBroker.start()
        defer { central.stop() }
        let north = try await regional("north", central: central)
        defer { north.stop() }
        let south = try await regional("south", central: central)
        defer { south.stop() }
        let (observer, messages) = try await fleetObserver(central)
        let (northObserver, atNorth) = try await fleetObserver(north)
        let flags = [
            "--connected-within", "30s", "--budget", "1h", "--warn-before", "10m", "--critical-before", "5m", "--stable-for", "500ms",
            "--summary-interval", "200ms", "--flush-interval", "200ms", "--http", "127.0.0.1:0",
            "--db-password-file", stores.passwordFile ?? "", "--leader-lease", "2s",
        ]
        let a = try AggregatorProcess(broker: central, database: stores.database, flags: flags + ["--replica-id", "central-a"])
        let b = try AggregatorProcess(broker: central, database: stores.database, flags: flags + ["--replica-id", "central-b"])
        var processes = [a, b]
        defer { for process in processes { process.terminate() } }

        // One site in each region, each talking only to its regional broker.
        let northSite = try SimulatedSite("north-1", brokerURL: north.url)
        let southSite = try SimulatedSite("south-1", brokerURL: south.url)
        for site in [northSite, southSite] {
            site.reportContact(at: Date())
            site.regainAzure()  // every heartbeat reports a fresh contact
            try await site.connect()
            site.startBeating()
        }
        _ = try await messages.view("north-1", timeout: .seconds(30), "north-1 connected at the central broker") { $0.mode == .connected }
        _ = try await messages.view("south-1", timeout: .seconds(30), "south-1 connected at the central broker") { $0.mode == .connected }
        // The fleet's views reach the regions back through the bridges.
        _ = try await atNorth.view("south-1", timeout: .seconds(30), "south-1's view at the north region") { $0.mode == .connected }

        // Kill whichever leads; the other takes over and follows the south region's link going down.
        let leaderMessage = try await messages.next(timeout: .seconds(30), "a leader's presence") { message in
            message.topic.hasPrefix("edgefleet/v1/aggregator/replicas/")
                && (try? FleetJSON.decode(Presence.self, from: message.payload))?.role == "leader"
        }
        let leader = try FleetJSON.decode(Presence.self, from: leaderMessage.payload)
        let (killed, survivor) = leader.replica == "central-a" ? (a, "central-b") : (b, "central-a")
        killed.kill()
        processes.removeAll { $0 === killed }
        _ = try await messages.next(timeout: .seconds(30), "\(survivor) leading") { message in
            message.topic == "edgefleet/v1/aggregator/replicas/\(survivor)/presence"
                && (try? FleetJSON.decode(Presence.self, from: message.payload))?.role == "leader"
        }
        // Its last contact two minutes ago, and none since (a loaded machine must not turn the north semi-connected too).
        southSite.reportContact(at: Date().addingTimeInterval(-120))  // and it cannot reach Azure from now on
        let semi = try await messages.view("south-1", timeout: .seconds(30), "south-1 semi-connected, from the new leader") { $0.mode == .semiConnected }
        #expect(semi.deadline != nil)
        _ = try await atNorth.view("south-1", timeout: .seconds(30), "the change bridged to the north region") { $0.mode == .semiConnected }
        _ = try await messages.view("north-1", timeout: .seconds(30), "north-1 still connected") { $0.mode == .connected }
        for site in [northSite, southSite] { await site.shutdown() }
        await observer.shutdown()
        await northObserver.shutdown()
    }
}
