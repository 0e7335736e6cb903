import FleetCore
import FleetSimulator
import Foundation
import MQTT
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The fleet simulator: scenarios read and refused as a user would expect, and
/// `edgefleet simulate` speaking the contract through a real broker, dying agents included.
@Suite("the fleet simulator", .timeLimit(.minutes(2)))
struct SimulatorTests {
    @Test("a scenario file: sites, regions and events resolved in order; every bad one refused naming its key", .ownThread)
    func scenarios() throws {
        let scenario = try Scenario.parse(yaml: """
            sites: 12
            prefix: shop
            heartbeatInterval: 2s
            regions: {north: 4, south: 8}
            events:
              - {at: 1m, region: north, restore: true}
              - {at: 0s, sites: 2, never: true}
              - {at: 0s, sites: 3, contactAge: 40m}
              - {at: 10s, ids: [shop-012], die: true}
              - {at: 0s, region: north, lose: true}
            """)
        #expect(scenario.siteIDs.first?.rawValue == "shop-001" && scenario.siteIDs.count == 12)
        let events = try scenario.resolved()
        #expect(events.map(\.at) == [.zero, .zero, .zero, .seconds(10), .seconds(60)])
        #expect(events[0].sites == [0, 1] && events[0].action == .never)
        #expect(events[1].sites == [2, 3, 4] && events[1].action == .contactAge(.seconds(2400)))
        #expect(events[2].sites == [0, 1, 2, 3] && events[2].action == .lose)
        #expect(events[3].sites == [11] && events[3].action == .die)
        #expect(scenario.regionOfSite[3] == "north" && scenario.regionOfSite[4] == "south")

        for (text, named) in [
            ("sites: 2\nevents:\n  - {sites: 3, never: true}", "events[0]"),
            ("sites: 2\nevents:\n  - {sites: 1, never: true, lose: true}", "exactly one action"),
            ("sites: 2\nevents:\n  - {sites: 1, region: x, never: true}", "exactly one of"),
            ("sites: 2\nevents:\n  - {region: east, lose: true}", "no site is in region 'east'"),
            ("sites: 2\nevents:\n  - {ids: [nope], die: true}", "no site 'nope'"),
            ("sites: 2\nevents:\n  - {sites: 1, flap: 10ms}", "flap"),
            ("sites: 2\nevents:\n  - {at: soon, sites: 1, lose: true}", "events[0].at"),
            ("sites: 0", "sites"), ("sites: many", "sites"), ("prefix: Shop", "prefix"), ("sitez: 3", "unknown key 'sitez'"),
            ("sites: 3\nregions: {north: 5}", "regions"), ("[1, 2]", "mapping"), ("", "empty"),
        ] {
            #expect(throws: Scenario.Problem.self, "\(text)") { _ = try Scenario.parse(yaml: text) }
            do {
                _ = try Scenario.parse(yaml: text)
            } catch {
                #expect(error.description.contains(named), "'\(text)': \(error.description)")
            }
        }
    }

    @Test("edgefleet simulate: presence, heartbeats and status by the contract; a dying agent's Last Will; a bad scenario exits 2")
    func simulateThroughTheBroker() async throws {
        let broker = try await MosquittoBroker.start()
        defer { broker.stop() }
        let (observer, messages) = try await siteObserver(broker)
        defer { Task { await observer.shutdown() } }
        let directory = try temporaryDirectory("edgefleet-sim")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let simulate = try ChildProcess(
            try builtProduct("edgefleet").path,
            ["simulate", "--broker", broker.url, "--sites", "5", "--heartbeat-interval", "500ms", "--never", "1", "--lost", "1:10m",
             "--die", "1:2s", "--dedicated-connections", "4", "--duration", "60s"],
            outputPath: directory + "/out", errorPath: directory + "/err")
        defer {
            simulate.signal(SIGTERM)
            simulate.wait()
        }
        func heartbeat(_ site: String, _ what: String, where predicate: @escaping @Sendable (Heartbeat) -> Bool) async throws -> Heartbeat {
            let message = try await messages.next(timeout: .seconds(20), what) { message in
                message.topic == "edgefleet/v1/sites/\(site)/heartbeat"
                    && (try? FleetJSON.decode(Heartbeat.self, from: message.payload)).map(predicate) == true
            }
            return try FleetJSON.decode(Heartbeat.self, from: message.payload)
        }
        // site-001 never reached Azure; site-002 lost it 10 minutes ago; the rest reach it.
        let never = try await heartbeat("site-001", "a heartbeat without contact") { _ in true }
        #expect(never.azure.lastContactAgeS == nil && !never.azure.reachable)
        let lost = try await heartbeat("site-002", "a heartbeat 10 minutes after contact") { _ in true }
        #expect(abs((lost.azure.lastContactAgeS ?? 0) - 600) < 30 && !lost.azure.reachable)
        let fine = try await heartbeat("site-005", "a heartbeat with a fresh contact") { $0.seq > 1 }
        #expect(fine.azure.reachable && (fine.azure.lastContactAgeS ?? 99) < 2)
        let status = try await messages.next(timeout: .seconds(10), "site-005's status") { $0.topic == "edgefleet/v1/sites/site-005/status" }
        #expect(try FleetJSON.decode(SiteStatus.self, from: status.payload).cluster?.name == "aks-site-005")

        // site-003 dies 2 s in without a clean disconnect: the broker publishes its Last Will.
        let will = try await messages.next(timeout: .seconds(20), "site-003's Last Will") { message in
            message.topic == "edgefleet/v1/sites/site-003/presence"
                && (try? FleetJSON.decode(Presence.self, from: message.payload)).map { $0.state == .offline && $0.reason == .lost } == true
        }
        #expect(try FleetJSON.decode(Presence.self, from: will.payload).site.rawValue == "site-003")
        // ... and stops beating (a later site-004 heartbeat arrives, no site-003 one after the will).
        let willIndex = messages.received.count
        _ = try await heartbeat("site-004", "a later heartbeat of another site") { _ in true }
        _ = try await heartbeat("site-004", "and another") { _ in true }
        #expect(!messages.received.dropFirst(willIndex).contains { $0.topic == "edgefleet/v1/sites/site-003/heartbeat" })

        // SIGTERM: every live site says goodbye (shutdown), the process exits 0.
        simulate.signal(SIGTERM)
        #expect(simulate.wait(timeout: .seconds(20)) == 0)
        _ = try await messages.next(timeout: .seconds(10), "site-005's goodbye") { message in
            message.topic == "edgefleet/v1/sites/site-005/presence"
                && (try? FleetJSON.decode(Presence.self, from: message.payload)).map { $0.reason == .shutdown } == true
        }

        let bad = try await runAsync(try builtProduct("edgefleet"), ["simulate", "--broker", broker.url, "--sites", "2", "--lost", "5:1m"])
        #expect(bad.status == 2 && bad.stderr.contains("sites"))
    }

    /// Subscribes to every site topic.
    func siteObserver(_ broker: MosquittoBroker) async throws -> (MQTTClient, MessageCollector) {
        let client = try MQTTClient(
            configuration: MQTTConfiguration(broker: try BrokerURL(parsing: broker.url), clientID: "sim-observer-\(UUID().uuidString.prefix(6))"),
            logger: .init(label: "observer"))
        let collector = MessageCollector(client)
        try await client.connect()
        try await client.subscribe(to: "edgefleet/v1/sites/#", qos: .atLeastOnce)
        return (client, collector)
    }
}
