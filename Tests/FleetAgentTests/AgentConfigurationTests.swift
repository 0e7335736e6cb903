@testable import Subprocesses
import LayeredSettings
import FleetAgent
import FleetCore
import Foundation
import MQTT
import TestSupport
import Testing

@Suite("agent configuration: file, environment and flags", .ownThread)
struct AgentConfigurationTests {
    func load(_ yaml: String?, environment: [String: String] = [:], flags: [String: Settings.Value] = [:]) throws -> AgentConfiguration {
        var settings = try Settings(yaml: yaml, filePath: "agent.yaml", environment: environment, flags: flags)
        return try AgentConfiguration.load(&settings)
    }

    func expectError(_ key: String, containing text: String, _ yaml: String?, environment: [String: String] = [:], flags: [String: Settings.Value] = [:]) {
        #expect {
            _ = try load(yaml, environment: environment, flags: flags)
        } throws: { error in
            guard let error = error as? ConfigurationError else { return false }
            return error.key == key && error.description.contains(text)
        }
    }

    @Test("the commented example in deploy/ loads (with its secret files supplied)")
    func example() throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try "secret\n".write(toFile: directory + "/password", atomically: true, encoding: .utf8)
        try "not checked here".write(toFile: directory + "/ca.crt", atomically: true, encoding: .utf8)
        let path = repositoryRoot.appendingPathComponent("deploy/agent.example.yaml").path
        var settings = try Settings.load(
            configFile: path, environment: [:],
            flags: ["passwordFile": .text(directory + "/password"), "caFile": .text(directory + "/ca.crt")])
        let configuration = try AgentConfiguration.load(&settings)
        #expect(configuration.site.rawValue == "store-0042")
        #expect(configuration.mqtt.broker == BrokerURL(host: "edgefleet-broker.corp.example", port: 8883, usesTLS: true))
        #expect(configuration.mqtt.username == "store-0042" && configuration.mqtt.password == "secret")
        #expect(configuration.heartbeatInterval == .seconds(10))
        #expect(configuration.statusRefresh == .seconds(300))
        #expect(configuration.checks.map(\.name) == ["arc-agents", "kube-api", "nodes-ready", "ssh-nodes", "log-collection", "metallb-speakers", "cluster-autoscaler"])
        #expect(configuration.checks.last?.capability == "clusterAutoscaler")
        #expect(configuration.labels == ["region": "north", "tier": "store"])
        #expect(configuration.checks.first?.command.first == "kubectl")
        guard case .endpoints(let endpoints, _) = configuration.probe else {
            Issue.record("expected the endpoints probe")
            return
        }
        #expect(endpoints.map(\.description).contains("eastus.dp.kubernetesconfiguration.azure.com:443"))
        #expect(endpoints.count == 4)
        #expect(configuration.cluster.name == "aks-store-42" && configuration.cluster.resourceGroup == "rg-stores")
    }

    @Test("a flag wins over the environment, which wins over the file")
    func precedence() throws {
        let yaml = "site: from-file\nheartbeatInterval: 20s\nprobeInterval: 2m\n"
        let c = try load(
            yaml, environment: ["EDGEFLEET_HEARTBEAT_INTERVAL": "30s", "EDGEFLEET_PROBE_INTERVAL": "3m", "EDGEFLEET_SITE": "from-env"],
            flags: ["heartbeatInterval": .text("40s")])
        #expect(c.heartbeatInterval == .seconds(40))
        #expect(c.probeInterval == .seconds(180))
        #expect(c.site.rawValue == "from-env")
        #expect(try load(yaml).heartbeatInterval == .seconds(20))
    }

    @Test("defaults: 10 s heartbeat, 60 s probe, 5 min status refresh, the Arc endpoints")
    func defaults() throws {
        let c = try load("site: a1\n")
        #expect(c.heartbeatInterval == .seconds(10) && c.probeInterval == .seconds(60) && c.statusRefresh == .seconds(300))
        #expect(c.topics.root == .default)
        #expect(c.mqtt.broker.description == "mqtt://127.0.0.1:1883")
        guard case .endpoints(let endpoints, let timeout) = c.probe else {
            Issue.record("expected endpoints")
            return
        }
        #expect(endpoints.map(\.description) == ["management.azure.com:443", "login.microsoftonline.com:443", "gbl.his.arc.azure.com:443"])
        #expect(timeout == .seconds(10))
    }

    @Test("a command probe from a flag is split into words, never given to a shell")
    func commandProbe() throws {
        let c = try load("site: a1\n", flags: ["probeCommand": .text("az connectedk8s show --name x")])
        #expect(c.probe == .command(["az", "connectedk8s", "show", "--name", "x"], timeout: .seconds(10)))
        let fromFile = try load("site: a1\nprobeCommand: [/usr/local/bin/arc-ok, \"--flag=a b\"]\n")
        #expect(fromFile.probe == .command(["/usr/local/bin/arc-ok", "--flag=a b"], timeout: .seconds(10)))
    }

    @Test("bad values are refused with the key and where the value came from")
    func errors() {
        expectError("site", containing: "is required", "heartbeatInterval: 10s\n")
        expectError("site", containing: "flag --site", nil, flags: ["site": .text("Bad_Site")])
        expectError("heartbeatInterval", containing: "environment variable EDGEFLEET_HEARTBEAT_INTERVAL", "site: a\n", environment: ["EDGEFLEET_HEARTBEAT_INTERVAL": "often"])
        expectError("probeInterval", containing: "config file agent.yaml", "site: a\nprobeInterval: 0s\n")
        expectError("heartbeatIntreval", containing: "unknown setting", "site: a\nheartbeatIntreval: 10s\n")
        expectError("broker", containing: "mqtt://", "site: a\nbroker: http://x\n")
        expectError("topicRoot", containing: "wildcards", "site: a\ntopicRoot: a/#\n")
        expectError("probeEndpoints", containing: "host:port", "site: a\nprobeEndpoints: [management.azure.com]\n")
        expectError("passwordFile", containing: "cannot read", "site: a\nusername: a\npasswordFile: /nonexistent/pw\n")
        expectError("broker", containing: "mqtts://", "site: a\ncaFile: /etc/hostname\n")
        expectError("checks.0.timeout", containing: "unit", "site: a\nchecks:\n  - name: x\n    command: [true]\n    timeout: 10\n")
        expectError("checks.0.command", containing: "required", "site: a\nchecks:\n  - name: x\n")
        expectError("checks", containing: "two checks", "site: a\nchecks:\n  - {name: x, command: [a]}\n  - {name: x, command: [b]}\n")
        expectError("checkConcurrency", containing: "between 1 and 16", "site: a\ncheckConcurrency: 99\n")
        expectError("labels", containing: "label value", "site: a\nlabels:\n  region: no rth\n")
        expectError("labels", containing: "label key", "site: a\nlabels:\n  -bad: x\n")
        expectError("labels", containing: "KEY=VALUE", nil, flags: ["site": .text("a"), "labels": .text("region")])
        expectError("labels", containing: "given twice", nil, flags: ["site": .text("a"), "labels": .text("a=1,a=2")])
        expectError("(file)", containing: "mapping", "- just\n- a list\n")
        expectError("(file)", containing: "YAML", "site: [unclosed\n")
    }

    @Test("file keys map to flags and environment variables by one rule")
    func names() {
        #expect(Settings.flagName("heartbeatInterval") == "heartbeat-interval")
        #expect(Settings.environmentName("heartbeatInterval") == "EDGEFLEET_HEARTBEAT_INTERVAL")
        #expect(Settings.environmentName("stateDir") == "EDGEFLEET_STATE_DIR")
        #expect(Settings.flagName("site") == "site")
    }
}
