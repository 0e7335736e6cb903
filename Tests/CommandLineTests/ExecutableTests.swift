import Foundation
import TestSupport
import Testing

@Suite("the three executables answer --help and --version and refuse bad flags")
struct ExecutableTests {
    static let names = ["edgefleet-agent", "edgefleet-aggregator", "edgefleet"]

    @Test("--version prints the EdgeFleet version", arguments: names)
    func version(_ name: String) throws {
        let result = try run(try builtProduct(name), ["--version"])
        #expect(result.status == 0)
        #expect(result.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "0.1.0")
    }

    @Test("--help prints usage and exits 0", arguments: names)
    func help(_ name: String) throws {
        let result = try run(try builtProduct(name), ["--help"])
        #expect(result.status == 0)
        #expect(result.stdout.contains("USAGE: \(name)"))
        #expect(result.stdout.contains("--version"))
    }

    @Test("an unknown flag exits 2 with a message naming it", arguments: names)
    func badFlag(_ name: String) throws {
        let result = try run(try builtProduct(name), ["--no-such-flag"])
        #expect(result.status == 2)
        #expect(result.stderr.contains("--no-such-flag"))
    }

    @Test("running the stubs says plainly that the service is not built yet", arguments: ["edgefleet-aggregator", "edgefleet"])
    func stub(_ name: String) throws {
        let result = try run(try builtProduct(name), [])
        #expect(result.status == 2)
        #expect(result.stderr.contains("not part of this build yet"))
    }

    @Test("the agent validates its configuration: a bad setting exits 2 naming the key; --check-config prints it")
    func agentConfiguration() throws {
        let agent = try builtProduct("edgefleet-agent")
        let missing = try run(agent, [], environment: [:])
        #expect(missing.status == 2)
        #expect(missing.stderr.contains("'site'"))
        let bad = try run(agent, ["--site", "s1", "--heartbeat-interval", "soon"], environment: [:])
        #expect(bad.status == 2)
        #expect(bad.stderr.contains("heartbeatInterval") && bad.stderr.contains("--heartbeat-interval"))
        let fromEnvironment = try run(agent, ["--check-config", "--probe-interval", "2m"], environment: ["EDGEFLEET_SITE": "store-7", "EDGEFLEET_PROBE_INTERVAL": "5m"])
        #expect(fromEnvironment.status == 0)
        #expect(fromEnvironment.stdout.contains("site: store-7"))
        #expect(fromEnvironment.stdout.contains("probeInterval: 2m"))
    }
}
