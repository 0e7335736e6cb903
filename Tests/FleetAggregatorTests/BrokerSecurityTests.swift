import FleetCore
import Foundation
import Logging
import MQTT
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The shipped production broker configuration (`broker-config/production/`) with its
/// ACL, credentials made by `edgefleet broker`, against a real mosquitto.
struct SecureBroker {
    let directory: String
    let broker: MosquittoBroker
    /// The TLS + password listener (8883 as shipped), the mutual-TLS one (8884), loopback (1883).
    let tlsPort: Int
    let certificatePort: Int
    let localPort: Int

    var ca: String { directory + "/ca/ca.crt" }
    var passwd: String { directory + "/passwd" }
    var acl: String { directory + "/acl" }
    func password(_ user: String) throws -> String {
        try String(contentsOfFile: "\(directory)/\(user).pw", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Runs `edgefleet broker ...`; fails the test if it fails.
    @discardableResult
    static func tool(_ arguments: [String]) async throws -> String {
        let result = try await runAsync(try builtProduct("edgefleet"), ["broker"] + arguments)
        guard result.status == 0 else { throw TestSupportError("edgefleet broker \(arguments.joined(separator: " ")): \(result.status) \(result.stderr)") }
        return result.stdout
    }

    /// A CA with the broker's certificate, password accounts for `sites`, the aggregator,
    /// the operator `alice` and the bridge `region-eu`, and a client certificate for each of
    /// `certificateSites`; then mosquitto with the shipped configuration, its paths and
    /// ports rewritten to the test's.
    static func start(sites: [String], certificateSites: [String] = []) async throws -> SecureBroker {
        let directory = try temporaryDirectory("edgefleet-secure-broker")
        try await tool(["init-ca", "--ca-dir", directory + "/ca", "--server-name", "127.0.0.1", "--server-name", "localhost"])
        try FileManager.default.copyItem(atPath: repositoryRoot.path + "/broker-config/production/acl", toPath: directory + "/acl")
        let files = ["--passwd", directory + "/passwd"]
        for site in sites { try await tool(["add-site", site] + files + ["--password-out", "\(directory)/\(site).pw"]) }
        try await tool(["add-account", "aggregator"] + files + ["--acl", directory + "/acl", "--password-out", "\(directory)/edgefleet.aggregator.pw"])
        try await tool(["add-account", "operator", "alice"] + files + ["--acl", directory + "/acl", "--password-out", "\(directory)/operator.alice.pw"])
        try await tool(["add-account", "bridge", "region-eu"] + files + ["--acl", directory + "/acl", "--password-out", "\(directory)/bridge.region-eu.pw"])
        for site in certificateSites { try await tool(["issue-cert", site, "--ca-dir", directory + "/ca", "--out", directory + "/certs"]) }

        let template = try String(contentsOfFile: repositoryRoot.path + "/broker-config/production/mosquitto.conf", encoding: .utf8)
        try FileManager.default.createDirectory(atPath: directory + "/data", withIntermediateDirectories: true)
        // mosquitto drops to its own user, as installed: it must be able to read what the tool
        // made (the password file, the server key) and write its persistence directory.
        if let user = getpwnam("mosquitto") { chown(directory + "/data", user.pointee.pw_uid, user.pointee.pw_gid) }
        // Three ports that were free a moment ago; another test may take one meanwhile: try again.
        var lastError: (any Error)?
        for _ in 0..<4 {
            let (tlsPort, certificatePort, localPort) = (try freeLoopbackPort(), try freeLoopbackPort(), try freeLoopbackPort())
            var text = template
            for (shipped, test) in [
                ("/etc/mosquitto/edgefleet/ca/", directory + "/ca/"),
                ("/etc/mosquitto/edgefleet/passwd", directory + "/passwd"), ("/etc/mosquitto/edgefleet/acl", directory + "/acl"),
                ("/var/lib/mosquitto/", directory + "/data/"), ("\nlistener 8883\n", "\nlistener \(tlsPort) 127.0.0.1\n"),
                ("\nlistener 8884\n", "\nlistener \(certificatePort) 127.0.0.1\n"), ("\nlistener 1883 127.0.0.1\n", "\nlistener \(localPort) 127.0.0.1\n"),
                ("log_dest syslog", "log_dest stderr"),
            ] {
                // The test must notice when the shipped file changes shape.
                guard text.contains(shipped) else { throw TestSupportError("the shipped mosquitto.conf no longer contains '\(shipped)'") }
                text = text.replacingOccurrences(of: shipped, with: test)
            }
            do {
                let broker = try await MosquittoBroker.start(
                    configText: text, port: tlsPort, directory: URL(fileURLWithPath: directory + "/broker"), asRoot: getpwnam("mosquitto") == nil)
                return SecureBroker(directory: directory, broker: broker, tlsPort: tlsPort, certificatePort: certificatePort, localPort: localPort)
            } catch {
                lastError = error
            }
        }
        throw lastError ?? TestSupportError("mosquitto did not start")
    }

    /// A client for `user` with its password over TLS (or `certificate` of a site on the
    /// mutual-TLS listener, or nothing), not yet connected.
    func client(_ user: String?, password: String? = nil, port: Int? = nil, tls: Bool = true, certificate: String? = nil) throws -> MQTTClient {
        var logger = Logger(label: "secure-client")
        logger.logLevel = .critical
        let port = port ?? (certificate != nil ? certificatePort : tlsPort)
        var configuration = MQTTConfiguration(
            broker: try BrokerURL(parsing: "\(tls ? "mqtts" : "mqtt")://127.0.0.1:\(port)"), clientID: "\(user ?? "anon")-\(UUID().uuidString.prefix(6))",
            username: certificate == nil ? user : nil, password: certificate == nil ? (try password ?? user.map(self.password)) : nil)
        if tls {
            configuration.tls = MQTTTLSConfiguration(
                caFile: ca, certificateFile: certificate.map { "\(directory)/certs/\($0).crt" }, keyFile: certificate.map { "\(directory)/certs/\($0).key" })
        }
        // A handshake that fails on a loaded machine is tried again soon (a refusal stays a refusal).
        configuration.reconnect = ReconnectPolicy(initialDelay: .milliseconds(250), maximumDelay: .seconds(2))
        return try MQTTClient(configuration: configuration, logger: logger)
    }

    /// Whether `user` can connect now (the connection is closed again). A loaded machine may
    /// take a while for a TLS handshake: 20 s before giving up.
    func canConnect(_ user: String?, password: String? = nil, port: Int? = nil, tls: Bool = true, certificate: String? = nil) async -> Bool {
        await attempt(user, password: password, port: port, tls: tls, certificate: certificate, timeout: .seconds(20)) == nil
    }

    /// Whether the broker refuses `user`: a refusal or a broken handshake, not a timeout (a
    /// broker too slow to answer proves nothing).
    func isRefused(_ user: String?, password: String? = nil, port: Int? = nil, tls: Bool = true, certificate: String? = nil) async -> Bool {
        // (A refused handshake is reported when the client gives up retrying: 8 s.)
        switch await attempt(user, password: password, port: port, tls: tls, certificate: certificate, timeout: .seconds(8)) {
        case nil, .timeout?: false
        default: true
        }
    }

    /// nil when connected, else why not.
    func attempt(_ user: String?, password: String?, port: Int?, tls: Bool, certificate: String?, timeout: Duration) async -> MQTTError? {
        let client: MQTTClient
        do {
            client = try self.client(user, password: password, port: port, tls: tls, certificate: certificate)
        } catch {
            return .invalidConfiguration("\(error)")
        }
        defer { Task { await client.shutdown() } }
        do {
            try await client.connect(timeout: timeout)
            return nil
        } catch let error as MQTTError {
            return error
        } catch {
            return .unknown(code: -1, "\(error)")
        }
    }

    func stop() {
        broker.stop()
        try? FileManager.default.removeItem(atPath: directory)
    }
}

/// Connects within 30 s. A TLS failure ends `connect` at once (a rejected certificate stays
/// rejected), but on a loaded machine a handshake also fails when the broker is slow to answer
/// it: the client keeps trying in the background, so wait for it to get through.
func connectThroughTLS(_ client: MQTTClient) async throws {
    let deadline = ContinuousClock.now + .seconds(30)
    while true {
        do {
            try await client.connect(timeout: deadline - ContinuousClock.now)
            return
        } catch MQTTError.tls(let reason) where ContinuousClock.now < deadline - .seconds(1) {
            _ = reason
            try await Task.sleep(for: .milliseconds(250))
        }
    }
}

/// Connects, subscribes to `filters` (refusals tolerated: a refused subscription receives
/// nothing, which is what the tests check), and collects.
func subscriber(_ client: MQTTClient, _ filters: [String]) async throws -> MessageCollector {
    let collector = MessageCollector(client)
    try await connectThroughTLS(client)
    for filter in filters { try? await client.subscribe(to: filter, qos: .atLeastOnce) }
    return collector
}

@Suite("the production broker configuration and its ACL", .timeLimit(.minutes(3)))
struct BrokerSecurityTests {
    @Test("a site writes only under its own topics, reads nothing else, and cannot connect without credentials or in plaintext")
    func siteIsolation() async throws {
        let secure = try await SecureBroker.start(sites: ["site-a", "site-b"])
        defer { secure.stop() }
        // The aggregator's account sees every site and the fleet.
        let aggregator = try secure.client("edgefleet.aggregator")
        let seen = try await subscriber(aggregator, ["edgefleet/v1/sites/#", "edgefleet/v1/fleet/#"])
        defer { Task { await aggregator.shutdown() } }

        let a = try secure.client("site-a")
        let aSees = try await subscriber(a, ["edgefleet/v1/sites/#", "edgefleet/v1/sites/site-b/#", "edgefleet/v1/fleet/#"])
        defer { Task { await a.shutdown() } }
        let b = try secure.client("site-b")
        try await b.connect(timeout: .seconds(30))
        defer { Task { await b.shutdown() } }

        // A forges B's heartbeat and the fleet's summary: refused (v5 PUBACK "not authorised"), never delivered.
        for topic in ["edgefleet/v1/sites/site-b/heartbeat", "edgefleet/v1/fleet/status", "edgefleet/v1/aggregator/presence"] {
            await #expect(throws: MQTTError.self, "publishing to \(topic)") {
                try await a.publish(topic, payload: Array("forged".utf8), qos: .atLeastOnce)
            }
        }
        // B's own messages and the fleet's do not reach A.
        try await b.publish("edgefleet/v1/sites/site-b/status", payload: Array("b-secret".utf8), qos: .atLeastOnce, retain: true)
        // Markers: A's own topic, published after the rest on the same connection, so any
        // message that was going to arrive has arrived before them.
        try await a.publish("edgefleet/v1/sites/site-a/heartbeat", payload: Array("marker".utf8), qos: .atLeastOnce)
        _ = try await seen.next(timeout: .seconds(10), "A's own heartbeat at the aggregator") { $0.payload == Array("marker".utf8) }
        _ = try await aSees.next(timeout: .seconds(10), "A's own heartbeat back at A") { $0.payload == Array("marker".utf8) }
        #expect(!seen.received.contains { $0.payload == Array("forged".utf8) })
        #expect(seen.received.contains { $0.payload == Array("b-secret".utf8) }, "the aggregator reads B")
        #expect(aSees.received.allSatisfy { $0.topic.hasPrefix("edgefleet/v1/sites/site-a/") }, "\(aSees.received.map(\.topic))")

        // B reusing A's client id does not take A's session over (the broker uses usernames as client ids).
        var configuration = a.configuration
        configuration.username = "site-b"
        configuration.password = try secure.password("site-b")
        let impostor = try MQTTClient(configuration: configuration, logger: Logger(label: "impostor"))
        try await impostor.connect(timeout: .seconds(30))
        try await a.publish("edgefleet/v1/sites/site-a/heartbeat", payload: Array("still-here".utf8), qos: .atLeastOnce)
        _ = try await seen.next(timeout: .seconds(10), "A still publishing after B used its client id") { $0.payload == Array("still-here".utf8) }
        #expect(a.state.isConnected)
        await impostor.shutdown()

        // No credentials, a wrong password, plaintext on the TLS port, a site on the
        // certificate listener without a certificate: refused.
        #expect(await secure.isRefused(nil))
        #expect(await secure.isRefused("site-a", password: "not-the-password"))
        #expect(await secure.isRefused("site-a", tls: false))
        #expect(await secure.isRefused("site-a", port: secure.certificatePort))
        // Loopback plain listener: still needs the password.
        #expect(await secure.isRefused(nil, port: secure.localPort, tls: false))
        #expect(await secure.canConnect("site-a", port: secure.localPort, tls: false) == true)
    }

    @Test("a removed or rotated credential is refused after a reload; the new one works")
    func removeAndRotate() async throws {
        let secure = try await SecureBroker.start(sites: ["site-a", "site-b"])
        defer { secure.stop() }
        let oldB = try secure.password("site-b")
        #expect(await secure.canConnect("site-a"))
        #expect(await secure.canConnect("site-b"))
        try await SecureBroker.tool(["remove-site", "site-a", "--passwd", secure.passwd])
        try await SecureBroker.tool(["rotate-site", "site-b", "--passwd", secure.passwd, "--password-out", secure.directory + "/site-b.pw"])
        secure.broker.reload()
        try await withTimeout(.seconds(10), "the broker to read its password file again") {
            while !(await secure.isRefused("site-a")) { try await Task.sleep(for: .milliseconds(100)) }
        }
        #expect(await secure.isRefused("site-b", password: oldB))
        #expect(await secure.canConnect("site-b") == true)

        // The tool refuses what is not a site id, and names what is missing.
        for bad in ["Site-A", "a/b", "+", "#", "site a", "", "edgefleet.aggregator"] {
            let result = try await runAsync(try builtProduct("edgefleet"), ["broker", "add-site", bad, "--passwd", secure.passwd])
            #expect(result.status == 2, "add-site '\(bad)'")
        }
        #expect(try await runAsync(try builtProduct("edgefleet"), ["broker", "remove-site", "site-z", "--passwd", secure.passwd]).status == 3)
        #expect(try await runAsync(try builtProduct("edgefleet"), ["broker", "add-site", "site-b", "--passwd", secure.passwd]).status == 4)
        #expect(!(try String(contentsOfFile: secure.passwd, encoding: .utf8)).contains("site-z"))
    }

    @Test("a site's client certificate (CN = its id) gives exactly its own topics; a revoked one is refused")
    func certificates() async throws {
        let secure = try await SecureBroker.start(sites: [], certificateSites: ["site-c", "site-d"])
        defer { secure.stop() }
        let aggregator = try secure.client("edgefleet.aggregator")
        let seen = try await subscriber(aggregator, ["edgefleet/v1/sites/#"])
        defer { Task { await aggregator.shutdown() } }
        let c = try secure.client(nil, certificate: "site-c")
        try await connectThroughTLS(c)
        await #expect(throws: MQTTError.self) { try await c.publish("edgefleet/v1/sites/site-d/heartbeat", payload: Array("forged".utf8), qos: .atLeastOnce) }
        try await c.publish("edgefleet/v1/sites/site-c/heartbeat", payload: Array("c-own".utf8), qos: .atLeastOnce)
        _ = try await seen.next(timeout: .seconds(10), "C's heartbeat") { $0.topic == "edgefleet/v1/sites/site-c/heartbeat" && $0.payload == Array("c-own".utf8) }
        #expect(!seen.received.contains { $0.payload == Array("forged".utf8) })
        await c.shutdown()

        try await SecureBroker.tool(["revoke-cert", "site-c", "--ca-dir", secure.directory + "/ca"])
        try await secure.broker.restart()  // mosquitto 2.0 reads the CRL when the listener starts
        #expect(await secure.isRefused(nil, certificate: "site-c"))
        #expect(await secure.canConnect(nil, certificate: "site-d") == true)
    }

    @Test("the aggregator and an operator have exactly their access")
    func roles() async throws {
        let secure = try await SecureBroker.start(sites: ["site-a"])
        defer { secure.stop() }
        let aggregator = try secure.client("edgefleet.aggregator")
        try await connectThroughTLS(aggregator)
        defer { Task { await aggregator.shutdown() } }
        let alice = try secure.client("operator.alice")
        let aliceSees = try await subscriber(alice, ["edgefleet/v1/fleet/#", "edgefleet/v1/aggregator/#", "edgefleet/v1/sites/#"])
        defer { Task { await alice.shutdown() } }
        let a = try secure.client("site-a")
        let aSees = try await subscriber(a, ["edgefleet/v1/sites/site-a/#"])
        defer { Task { await a.shutdown() } }

        // The aggregator writes the fleet's topics and its presence; an operator reads them.
        try await aggregator.publish("edgefleet/v1/fleet/status", payload: Array("summary".utf8), qos: .atLeastOnce, retain: true)
        try await aggregator.publish("edgefleet/v1/aggregator/presence", payload: Array("online".utf8), qos: .atLeastOnce, retain: true)
        _ = try await aliceSees.next(timeout: .seconds(10), "the summary at the operator") { $0.payload == Array("summary".utf8) }
        _ = try await aliceSees.next(timeout: .seconds(10), "the presence at the operator") { $0.payload == Array("online".utf8) }
        // The aggregator may not write as a site; an operator writes nothing.
        await #expect(throws: MQTTError.self) { try await aggregator.publish("edgefleet/v1/sites/site-a/heartbeat", payload: Array("agg-forged".utf8), qos: .atLeastOnce) }
        for topic in ["edgefleet/v1/fleet/status", "edgefleet/v1/sites/site-a/heartbeat", "edgefleet/v1/aggregator/presence"] {
            await #expect(throws: MQTTError.self, "operator writing \(topic)") {
                try await alice.publish(topic, payload: Array("op-forged".utf8), qos: .atLeastOnce)
            }
        }
        // An operator does not read the sites' own topics.
        try await a.publish("edgefleet/v1/sites/site-a/status", payload: Array("a-status".utf8), qos: .atLeastOnce)
        _ = try await aSees.next(timeout: .seconds(10), "A's status back at A") { $0.payload == Array("a-status".utf8) }
        try await aggregator.publish("edgefleet/v1/fleet/events", payload: Array("marker".utf8), qos: .atLeastOnce)
        _ = try await aliceSees.next(timeout: .seconds(10), "the marker event at the operator") { $0.payload == Array("marker".utf8) }
        #expect(!aliceSees.received.contains { $0.topic.hasPrefix("edgefleet/v1/sites/") }, "\(aliceSees.received.map(\.topic))")

        // A bridge forwards sites' topics and nothing else.
        let bridge = try secure.client("bridge.region-eu")
        let bridgeSees = try await subscriber(bridge, ["edgefleet/v1/fleet/#", "edgefleet/v1/sites/#"])
        defer { Task { await bridge.shutdown() } }
        try await bridge.publish("edgefleet/v1/sites/store-eu-9/heartbeat", payload: Array("bridged".utf8), qos: .atLeastOnce)
        await #expect(throws: MQTTError.self) { try await bridge.publish("edgefleet/v1/fleet/status", payload: Array("bridge-forged".utf8), qos: .atLeastOnce) }
        try await aggregator.publish("edgefleet/v1/fleet/events", payload: Array("to-bridge".utf8), qos: .atLeastOnce)
        _ = try await bridgeSees.next(timeout: .seconds(10), "the fleet's event at the bridge") { $0.payload == Array("to-bridge".utf8) }
        try await a.publish("edgefleet/v1/sites/site-a/status", payload: Array("a-again".utf8), qos: .atLeastOnce)
        _ = try await aSees.next(timeout: .seconds(10), "A's second status back at A") { $0.payload == Array("a-again".utf8) }
        try await aggregator.publish("edgefleet/v1/fleet/events", payload: Array("after".utf8), qos: .atLeastOnce)
        _ = try await bridgeSees.next(timeout: .seconds(10), "a later event at the bridge") { $0.payload == Array("after".utf8) }
        #expect(!bridgeSees.received.contains { $0.topic.hasPrefix("edgefleet/v1/sites/site-a") }, "a bridge does not read sites")
        #expect(!aliceSees.received.contains { $0.payload == Array("bridge-forged".utf8) })
        #expect(!aSees.received.contains { $0.payload == Array("agg-forged".utf8) || $0.payload == Array("op-forged".utf8) })
    }

    @Test("defence in depth: a site publishing on its own topic in another site's name is refused by the aggregator")
    func siteFieldMismatch() async throws {
        let secure = try await SecureBroker.start(sites: ["site-a", "site-b"])
        defer { secure.stop() }
        let database = secure.directory + "/fleet.sqlite"
        let aggregator = try AggregatorProcess(
            broker: secure.broker, database: database,
            extra: [
                "--username", "edgefleet.aggregator", "--password-file", secure.directory + "/edgefleet.aggregator.pw", "--ca-file", secure.ca,
                "--http", "127.0.0.1:0", "--public-reads", "true",
            ],
            brokerURL: "mqtts://127.0.0.1:\(secure.tlsPort)")
        let port = try await OperatorFixture.listeningPort(aggregator)
        try await withTimeout(.seconds(20), "the aggregator to connect over TLS") {
            while try await HTTP.get(port: port, "/healthz").json()["broker"] as? String != "connected" { try await Task.sleep(for: .milliseconds(100)) }
        }

        let a = try secure.client("site-a")
        try await a.connect(timeout: .seconds(30))
        defer { Task { await a.shutdown() } }
        func heartbeat(_ site: String) throws -> [UInt8] {
            try FleetJSON.encode(
                Heartbeat(
                    site: try SiteID(site), session: 1, seq: 1, sentAt: Date(), azure: AzureReport(reachable: true, lastContactAgeS: 0, probe: "test")))
        }
        // Site A has announced itself (a site exists once it has).
        try await a.publish(
            "edgefleet/v1/sites/site-a/presence",
            payload: try FleetJSON.encode(Presence(site: try SiteID("site-a"), state: .online, session: 1, at: Date())), qos: .atLeastOnce, retain: true)
        // On A's own topic, in B's name: the broker lets it through (A's topic), the aggregator does not.
        try await a.publish("edgefleet/v1/sites/site-a/heartbeat", payload: try heartbeat("site-b"), qos: .atLeastOnce)
        try await withTimeout(.seconds(15), "the site-mismatch rejection") {
            while !(try await HTTP.get(port: port, "/metrics").text.contains(#"edgefleet_messages_rejected_total{reason="site-mismatch"} 1"#)) {
                try await Task.sleep(for: .milliseconds(100))
            }
        }
        // A heartbeat in its own name counts; site-b never appears.
        try await a.publish("edgefleet/v1/sites/site-a/heartbeat", payload: try heartbeat("site-a"), qos: .atLeastOnce)
        try await withTimeout(.seconds(15), "site-a's view") {
            while try await HTTP.get(port: port, "/v1/sites/site-a").status != 200 { try await Task.sleep(for: .milliseconds(100)) }
        }
        #expect(try await HTTP.get(port: port, "/v1/sites/site-b").status == 404)
        await aggregator.terminateAndWait()
    }

    @Test("a regional broker bridged with the shipped example carries a site to the central aggregator; the view survives a central restart")
    func bridge() async throws {
        let central = try await SecureBroker.start(sites: [])
        defer { central.stop() }
        // The central aggregator, over TLS with its account.
        let aggregator = try AggregatorProcess(
            broker: central.broker, database: central.directory + "/fleet.sqlite",
            extra: ["--username", "edgefleet.aggregator", "--password-file", central.directory + "/edgefleet.aggregator.pw", "--ca-file", central.ca],
            brokerURL: "mqtts://127.0.0.1:\(central.tlsPort)")
        let alice = try central.client("operator.alice")
        let atCentral = try await subscriber(alice, ["edgefleet/v1/fleet/#", "edgefleet/v1/aggregator/#"])
        try await atCentral.aggregatorOnline()

        // The regional broker: the development listener for its sites plus the shipped bridge
        // section, pointed at the central broker's TLS listener with the bridge's account.
        var bridge = try String(contentsOfFile: repositoryRoot.path + "/broker-config/bridge/region-bridge.conf", encoding: .utf8)
        for (shipped, test) in [
            ("address central-broker.example.net:8883", "address 127.0.0.1:\(central.tlsPort)"),
            ("/etc/mosquitto/edgefleet/central-ca.crt", central.ca), ("remote_password CHANGE-ME", "remote_password \(try central.password("bridge.region-eu"))"),
        ] {
            guard bridge.contains(shipped) else { throw TestSupportError("the shipped bridge example no longer contains '\(shipped)'") }
            bridge = bridge.replacingOccurrences(of: shipped, with: test)
        }
        let regional = try await MosquittoBroker.start(extraLines: bridge.split(separator: "\n", omittingEmptySubsequences: false).map(String.init))
        defer { regional.stop() }
        let (watcher, atRegion) = try await fleetObserver(regional)
        defer { Task { await watcher.shutdown() } }

        // A site at the region, speaking to its regional broker only.
        let site = try SimulatedSite("store-eu-1", brokerURL: regional.url)
        try await site.connect()
        site.startBeating()
        defer { Task { await site.shutdown() } }
        let view = try await atCentral.view("store-eu-1", timeout: .seconds(30), "the site's view at the central broker") { $0.mode == .connected }
        #expect(view.liveness == .online)
        // The fleet's topics come back to the region.
        _ = try await atRegion.view("store-eu-1", timeout: .seconds(30), "the site's view bridged back to the region") { $0.mode == .connected }

        // The aggregator stops; the central broker restarts: the retained view is still there (persistence).
        await aggregator.terminateAndWait()
        await alice.shutdown()
        central.broker.stop()
        try await central.broker.restart()
        let later = try central.client("operator.alice")
        let afterRestart = try await subscriber(later, ["edgefleet/v1/fleet/sites/+"])
        defer { Task { await later.shutdown() } }
        let restored = try await afterRestart.next(timeout: .seconds(10), "the retained view after the restart") { message in
            message.retain && message.topic == "edgefleet/v1/fleet/sites/store-eu-1"
        }
        #expect(try FleetJSON.decode(SiteView.self, from: restored.payload).site.rawValue == "store-eu-1")
    }
}
