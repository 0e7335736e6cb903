import FleetAgent
import FleetCore
import Foundation
import LayeredSettings
import TestSupport
import Testing

/// The built-in `arc-agents` probe, with a stand-in `kubectl` that answers as a cluster would,
/// and the configuration of several brokers.
@Suite("the arc-agents probe; several brokers in the configuration")
struct ArcAgentsTests {
    static func deployment(_ name: String, replicas: Int, ready: Int?) -> String {
        #"{"metadata": {"name": "\#(name)", "namespace": "azure-arc"}, "spec": {"replicas": \#(replicas)}, "status": {\#(ready.map { #""readyReplicas": \#($0)"# } ?? "")}}"#
    }

    /// A check of kind arc-agents whose kubectl is a script printing `answer` (and a warning on standard error), exiting `code`.
    func probe(_ answer: String, code: Int = 0) async throws -> CheckResult {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try answer.write(toFile: directory + "/answer.json", atomically: true, encoding: .utf8)
        let script = directory + "/kubectl"
        try "#!/bin/sh\necho \"$@\" > \(directory)/args\necho 'Warning: a deprecated API' >&2\ncat \(directory)/answer.json\nexit \(code)\n"
            .write(toFile: script, atomically: true, encoding: .utf8)
        chmod(script, 0o755)
        var settings = try Settings(
            yaml: "site: s1\nkubeconfig: /etc/kubernetes/admin.conf\nchecks:\n  - {name: arc, kind: arc-agents, interval: 30s}\n", filePath: "agent.yaml",
            environment: [:], flags: [:])
        var check = try #require(try AgentConfiguration.load(&settings).checks.first)
        #expect(check.kind == .arcAgents)
        #expect(check.command == ["kubectl", "--kubeconfig", "/etc/kubernetes/admin.conf", "get", "deployments", "--namespace", "azure-arc", "--output", "json"])
        check.command[0] = script
        let result = await LocalChecks.run([check], concurrency: 1)[0]
        let args = try String(contentsOfFile: directory + "/args", encoding: .utf8)
        #expect(args.contains("--namespace azure-arc"))
        return result
    }

    @Test("all Arc agent deployments ready: pass; one not ready: fail naming it; none: fail; kubectl failing: unknown")
    func readings() async throws {
        let ready = try await probe(
            #"{"items": [\#(Self.deployment("clusterconnect-agent", replicas: 1, ready: 1)), \#(Self.deployment("config-agent", replicas: 2, ready: 2))]}"#)
        #expect(ready.state == .pass && ready.output == "2/2 Arc agent deployments ready", "\(ready.output)")
        let broken = try await probe(
            #"{"items": [\#(Self.deployment("clusterconnect-agent", replicas: 1, ready: nil)), \#(Self.deployment("config-agent", replicas: 2, ready: 1)), \#(Self.deployment("resource-sync-agent", replicas: 1, ready: 1))]}"#)
        #expect(broken.state == .fail && broken.output == "not ready: clusterconnect-agent 0/1, config-agent 1/2", "\(broken.output)")
        let none = try await probe(#"{"items": []}"#)
        #expect(none.state == .fail && none.output.contains("no Arc agent deployments"))
        let failing = try await probe("", code: 1)
        #expect(failing.state == .unknown && failing.output.contains("kubectl failed"), "\(failing.output)")
        let garbage = try await probe("not json")
        #expect(garbage.state == .unknown)
    }

    @Test("an arc-agents check takes no command of its own", .ownThread)
    func noCommand() throws {
        var settings = try Settings(
            yaml: "site: s1\nchecks:\n  - {name: arc, kind: arc-agents, command: [rm, -rf, /]}\n", filePath: "agent.yaml", environment: [:], flags: [:])
        #expect(throws: (any Error).self) { _ = try AgentConfiguration.load(&settings) }
    }

    @Test("brokers: a list in the file or --broker more than once; one scheme for all; not both keys; files relative to the config file", .ownThread)
    func brokers() throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try "secret\n".write(toFile: directory + "/password", atomically: true, encoding: .utf8)
        let file = directory + "/agent.yaml"
        var settings = try Settings(
            yaml: "site: s1\nbrokers: [mqtt://10.0.0.1:1883, mqtt://10.0.0.2:1883]\nusername: s1\npasswordFile: password\n", filePath: file,
            environment: [:], flags: [:])
        let configuration = try AgentConfiguration.load(&settings)
        #expect(configuration.mqtt.brokers.map(\.description) == ["mqtt://10.0.0.1:1883", "mqtt://10.0.0.2:1883"])
        #expect(configuration.mqtt.password == "secret")
        var flags = try Settings(yaml: "site: s1\n", filePath: file, environment: [:], flags: ["broker": .list(["mqtt://a:1", "mqtt://b:2"])])
        #expect(try AgentConfiguration.load(&flags).mqtt.fallbackBrokers.map(\.description) == ["mqtt://b:2"])
        var mixed = try Settings(yaml: "site: s1\nbrokers: [mqtt://a:1, mqtts://b:2]\n", filePath: file, environment: [:], flags: [:])
        #expect(throws: (any Error).self) { _ = try AgentConfiguration.load(&mixed) }
        var both = try Settings(yaml: "site: s1\nbroker: mqtt://a:1\nbrokers: [mqtt://b:2]\n", filePath: file, environment: [:], flags: [:])
        #expect(throws: (any Error).self) { _ = try AgentConfiguration.load(&both) }
    }
}
