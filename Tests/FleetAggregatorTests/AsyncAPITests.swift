import FleetCore
import Foundation
import Logging
import MQTT
import TestSupport
import Testing
import YAMLReader

/// `docs/asyncapi.yaml` against what the running processes publish: every message of the
/// aggregator, a real agent and the simulator is on a documented channel, with the documented
/// payload, QoS and retain flag.
@Suite("the AsyncAPI document", .timeLimit(.minutes(3)))
struct AsyncAPITests {
    struct Channel {
        var name: String
        var pattern: Regex<Substring>
        var schema: YAMLNode
        var qos: Int
        var retain: Bool
    }

    static func channels() throws -> (YAMLNode, [Channel]) {
        let path = OperatorAPITests.repository + "/docs/asyncapi.yaml"
        let document = try #require(try YAMLNode.parse(String(contentsOfFile: path, encoding: .utf8)))
        #expect(document["asyncapi"]?.string == "3.0.0")
        let validator = SchemaValidator(document: document)
        var channels: [Channel] = []
        for pair in document["channels"]?.mapping ?? [] {
            let name = try #require(pair.key.string)
            let address = try #require(pair.value["address"]?.string)
            let escaped = address.replacing(/\{[a-z]+\}/, with: "[^/]+")
            let message = try #require(pair.value["messages"]?.mapping?.first?.value)
            let schema = try #require(validator.resolve(validator.resolve(message)["payload"] ?? .scalar(YAMLScalar(""))) as YAMLNode?)
            let operation = try #require(
                (document["operations"]?.mapping ?? []).first { $0.value["channel"]?["$ref"]?.string == "#/channels/\(name)" }?.value,
                "no operation sends on \(name)")
            let qos = Int(operation["bindings"]?["mqtt"]?["qos"]?.string ?? "") ?? -1
            let retain = operation["bindings"]?["mqtt"]?["retain"]?.string == "true"
            channels.append(Channel(name: name, pattern: try Regex("^" + escaped + "$"), schema: schema, qos: qos, retain: retain))
        }
        return (document, channels)
    }

    static func subscriber(_ broker: MosquittoBroker) async throws -> (MQTTClient, MessageCollector) {
        var logger = Logger(label: "asyncapi")
        logger.logLevel = .critical
        let client = try MQTTClient(
            configuration: MQTTConfiguration(broker: try BrokerURL(parsing: broker.url), clientID: "asyncapi-\(UUID().uuidString.prefix(8))"), logger: logger)
        let collector = MessageCollector(client)
        try await client.connect()
        try await client.subscribe(to: "edgefleet/v1/#", qos: .atLeastOnce)
        return (client, collector)
    }

    @Test("every message the aggregator, a real agent and the simulator publish is on a documented channel with the documented payload, QoS and retain flag")
    func everyMessage() async throws {
        let (document, channels) = try Self.channels()
        #expect(channels.count == 8)
        let validator = SchemaValidator(document: document)
        let f = try await OperatorFixture.start()
        defer { f.stop() }
        let (live, liveMessages) = try await Self.subscriber(f.fleet.broker)
        // A real agent with labels and a check; the simulator with a semi-connected site, one past its deadline, a flapping one.
        let stateDir = try temporaryDirectory("edgefleet-asyncapi-agent")
        defer { try? FileManager.default.removeItem(atPath: stateDir) }
        try "checks:\n  - {name: echo, command: [echo, ok], interval: 500ms}\n".write(toFile: stateDir + "/agent.yaml", atomically: true, encoding: .utf8)
        let agent = try AgentProcess(
            site: "agent-a", broker: f.fleet.broker, stateDir: stateDir, extra: ["--config", stateDir + "/agent.yaml", "--labels", "region=east"])
        let scenario = f.directory + "/scenario.yaml"
        try """
            sites: 6
            prefix: aa
            heartbeatInterval: 500ms
            regions: {west: 6}
            events:
              - {at: 0s, sites: 1, contactAge: 20m}
              - {at: 0s, sites: 1, contactAge: 2h}
              - {at: 0s, sites: 1, flap: 2s}
            """.write(toFile: scenario, atomically: true, encoding: .utf8)
        let simulator = try ChildProcess(
            try builtProduct("edgefleet").path, ["simulate", "--broker", f.fleet.broker.url, "--scenario", scenario], outputPath: f.directory + "/simulate.log")
        defer {
            simulator.signal(SIGTERM)
            _ = simulator.wait()
        }
        try await withTimeout(.seconds(30), "seven sites") {
            while try await f.get("/v1/fleet").json()["sites"] as? Int != 7 { try await Task.sleep(for: .milliseconds(200)) }
        }
        // Operations and a rollout, for their events.
        _ = try await f.submit("aa-001", "extension.install", ["name": "m"])
        _ = try await f.post("/v1/rollouts", #"{"kind": "extension.install", "selector": "region=west", "params": {"name": "r"}, "canary": 1, "batch": "50%"}"#)
        try await Task.sleep(for: .seconds(4))
        #expect(await agent.terminateAndWait() == 0)  // a goodbye presence
        try await Task.sleep(for: .milliseconds(500))

        // Live: every message on a channel, valid, at the channel's QoS (the subscription allows up to 1).
        var seen: [String: Int] = [:]
        for message in liveMessages.received {
            guard let channel = channels.first(where: { message.topic.wholeMatch(of: $0.pattern) != nil }) else {
                Issue.record("\(message.topic) is on no documented channel")
                continue
            }
            seen[channel.name, default: 0] += 1
            let value = try JSONSerialization.jsonObject(with: Data(message.payload))
            for problem in validator.validate(value, channel.schema, path: "$") { Issue.record("\(message.topic): \(problem)") }
            #expect(message.qos.rawValue == channel.qos || message.retain, "\(message.topic) at QoS \(message.qos.rawValue), documented \(channel.qos)")
        }
        for name in ["sitePresence", "siteHeartbeat", "siteStatus", "siteView", "fleetStatus", "fleetEvents", "aggregatorPresence"] {
            #expect((seen[name] ?? 0) > 0, "nothing seen on \(name)")
        }
        // Retained: a late subscriber gets exactly the channels documented as retained.
        let (late, lateMessages) = try await Self.subscriber(f.fleet.broker)
        try await Task.sleep(for: .seconds(1))
        let retained = lateMessages.received.filter(\.retain)
        #expect(!retained.isEmpty)
        for message in retained {
            let channel = channels.first { message.topic.wholeMatch(of: $0.pattern) != nil }
            #expect(channel?.retain == true, "\(message.topic) is retained, documented not")
        }
        for name in channels.filter(\.retain).map(\.name) where name != "replicaPresence" {
            #expect(retained.contains { message in channels.first { message.topic.wholeMatch(of: $0.pattern) != nil }?.name == name }, "nothing retained on \(name)")
        }
        await live.shutdown()
        await late.shutdown()
    }
}
