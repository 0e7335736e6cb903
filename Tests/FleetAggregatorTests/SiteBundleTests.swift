import FleetCore
import Foundation
import MQTT
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// `edgefleet broker add-site SITE --bundle DIR` against a real mosquitto running the shipped
/// production configuration, and the agent started from the bundle.
@Suite("a site installed from one bundle")
struct SiteBundleTests {
    static func mode(_ path: String) -> mode_t {
        var info = stat()
        return stat(path, &info) == 0 ? info.st_mode & 0o777 : 0
    }

    /// Every file and directory under `directory`, relative.
    static func everything(_ directory: String) -> [String] {
        (FileManager.default.enumerator(atPath: directory)?.allObjects as? [String] ?? []).sorted()
    }

    @Test("password bundle: nothing secret printed or readable by others; check-config accepts it; the agent from it reports with its labels through the production broker")
    func passwordBundle() async throws {
        let secure = try await SecureBroker.start(sites: [])
        defer { secure.stop() }
        let bundle = secure.directory + "/bundle-north"
        let result = try await runAsync(
            try builtProduct("edgefleet"),
            ["broker", "add-site", "store-north", "--bundle", bundle, "--passwd", secure.passwd, "--broker", "mqtts://127.0.0.1:\(secure.tlsPort)",
             "--broker", "mqtts://127.0.0.1:\(try freeLoopbackPort())", "--ca-file", secure.ca, "--labels", "region=north,tier=store"])
        #expect(result.status == 0, "\(result.stderr)")
        let password = try String(contentsOfFile: bundle + "/password", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(password.count >= 32)
        #expect(!result.stdout.contains(password) && !result.stderr.contains(password), "the password was printed")
        // Nothing in the bundle is readable by group or others.
        #expect(Self.mode(bundle) == 0o700)
        for file in Self.everything(bundle) {
            #expect(Self.mode(bundle + "/" + file) & 0o077 == 0, "\(file) is \(String(Self.mode(bundle + "/" + file), radix: 8))")
        }
        for file in ["agent.yaml", "password", "ca.crt", "kubernetes/secret.yaml", "kubernetes/agent.yaml", "systemd/edgefleet-agent.service.d/bundle.conf", "README.md"] {
            #expect(FileManager.default.fileExists(atPath: bundle + "/" + file), "\(file) is missing")
        }
        let readme = try String(contentsOfFile: bundle + "/README.md", encoding: .utf8)
        #expect(readme.contains("systemctl enable --now edgefleet-agent") && readme.contains("kubectl apply"), "\(readme)")
        let secret = try String(contentsOfFile: bundle + "/kubernetes/secret.yaml", encoding: .utf8)
        #expect(secret.contains("kind: Secret") && secret.contains(password) && secret.contains("BEGIN CERTIFICATE"))
        // Again into the same directory: refused, nothing overwritten.
        let again = try await runAsync(
            try builtProduct("edgefleet"),
            ["broker", "add-site", "store-north", "--bundle", bundle, "--passwd", secure.passwd, "--broker", "mqtts://127.0.0.1:\(secure.tlsPort)", "--ca-file", secure.ca])
        #expect(again.status == 4)
        #expect(try String(contentsOfFile: bundle + "/password", encoding: .utf8).contains(password))

        // The agent accepts it from wherever it is (paths relative to agent.yaml).
        let check = try await runAsync(
            try builtProduct("edgefleet-agent"), ["--config", bundle + "/agent.yaml", "--check-config"])
        #expect(check.status == 0, "\(check.stdout) \(check.stderr)")

        // Started from it (a state directory of the test's), it reports through the production broker.
        secure.broker.reload()
        let observer = try secure.client("edgefleet.aggregator")
        defer { Task { await observer.shutdown() } }
        let messages = try await subscriber(observer, ["edgefleet/v1/sites/store-north/#"])
        let agent = try BundleAgent(bundle: bundle)
        defer { agent.stop() }
        // The bundle's arc-agents check reports (here without a cluster: kubectl cannot answer).
        let status = try await messages.next(timeout: .seconds(30), "the agent's status with its arc-agents check") {
            $0.topic == "edgefleet/v1/sites/store-north/status"
                && (try? FleetJSON.decode(SiteStatus.self, from: $0.payload))?.checks.contains { $0.name == "arc-agents" } == true
        }
        let decoded = try FleetJSON.decode(SiteStatus.self, from: status.payload)
        #expect(decoded.labels == ["region": "north", "tier": "store"])
        #expect(decoded.checks.first { $0.name == "arc-agents" }?.state == .unknown)
    }

    @Test("certificate bundle: a client certificate whose CN is the site id, its key readable by its owner only; the agent connects on the mutual-TLS listener")
    func certificateBundle() async throws {
        let secure = try await SecureBroker.start(sites: [])
        defer { secure.stop() }
        let bundle = secure.directory + "/bundle-cert"
        let result = try await runAsync(
            try builtProduct("edgefleet"),
            ["broker", "add-site", "store-cert", "--bundle", bundle, "--ca-dir", secure.directory + "/ca", "--broker",
             "mqtts://127.0.0.1:\(secure.certificatePort)", "--ca-file", secure.ca])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(!FileManager.default.fileExists(atPath: bundle + "/password"))
        #expect(Self.mode(bundle + "/client.key") == 0o600)
        let key = try String(contentsOfFile: bundle + "/client.key", encoding: .utf8)
        #expect(!result.stdout.contains("PRIVATE KEY") && !result.stdout.contains(key))
        let check = try await runAsync(try builtProduct("edgefleet-agent"), ["--config", bundle + "/agent.yaml", "--check-config"])
        #expect(check.status == 0, "\(check.stdout) \(check.stderr)")

        let observer = try secure.client("edgefleet.aggregator")
        defer { Task { await observer.shutdown() } }
        let messages = try await subscriber(observer, ["edgefleet/v1/sites/store-cert/#"])
        let agent = try BundleAgent(bundle: bundle)
        defer { agent.stop() }
        _ = try await messages.next("a heartbeat of store-cert") { $0.topic == "edgefleet/v1/sites/store-cert/heartbeat" }
    }
}

/// An agent started from a bundle's `agent.yaml`, with a state directory of the test's.
final class BundleAgent {
    let process: ChildProcess
    let state: String

    init(bundle: String) throws {
        state = try temporaryDirectory("edgefleet-bundle-agent")
        process = try ChildProcess(
            try builtProduct("edgefleet-agent").path,
            ["--config", bundle + "/agent.yaml", "--state-dir", state, "--probe-command", "true", "--heartbeat-interval", "1s"],
            outputPath: state + "/agent.log")
    }

    /// SIGTERM, waits for the exit, removes the state directory.
    func stop() {
        process.signal(SIGTERM)
        _ = process.wait()
        try? FileManager.default.removeItem(atPath: state)
    }
}
