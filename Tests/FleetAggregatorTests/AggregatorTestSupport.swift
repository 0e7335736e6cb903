import FleetCore
import Foundation
import Logging
import MQTT
import Synchronization
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

/// Thresholds short enough to play a whole countdown in seconds.
enum Short {
    static let heartbeat = 0.5  // s: stale after 1.5 s, offline after 5 s
    static let connectedWithin = 2.0
    static let budget = 12.0
    static let warnBefore = 8.0
    static let criticalBefore = 4.0

    static let flags = [
        "--connected-within", "2s", "--budget", "12s", "--warn-before", "8s", "--critical-before", "4s",
        "--stable-for", "1s", "--view-refresh", "1s", "--summary-interval", "200ms", "--flush-interval", "200ms",
    ]
}

/// The real `edgefleet-aggregator` binary as a subprocess.
final class AggregatorProcess: @unchecked Sendable {  // immutable; ChildProcess guards its own state
    let process: ChildProcess
    let log: String

    /// `brokerURL` overrides the broker's plain URL (an `mqtts://` listener; credentials go in `extra`).
    init(
        broker: MosquittoBroker, database: String, extra: [String] = [], flags: [String] = Short.flags, environment: [String: String]? = nil,
        brokerURL: String? = nil, log: String? = nil, descriptorLimit: Int? = nil
    ) throws {
        // Next to an SQLite file; for a postgres:// database, in the temporary directory.
        let logBase = database.hasPrefix("postgres") ? FileManager.default.temporaryDirectory.path + "/edgefleet-aggregator-pg" : database
        self.log = log ?? logBase + "-\(UUID().uuidString.prefix(6)).log"
        let binary = try builtProduct("edgefleet-aggregator").path
        // Any free port for the HTTP API: tests run side by side, and 8080 may be taken.
        let arguments = ["--broker", brokerURL ?? broker.url, "--db", database, "--log-level", "debug"] + (flags + extra).withDefaultHTTP + flags + extra
        if let descriptorLimit {
            // A lower descriptor limit of its own (the shell execs it: the pid is the aggregator's).
            process = try ChildProcess(
                "/bin/sh", ["-c", "ulimit -n \(descriptorLimit) && exec \"$0\" \"$@\"", binary] + arguments, outputPath: self.log,
                environment: environment)
        } else {
            process = try ChildProcess(binary, arguments, outputPath: self.log, environment: environment)
        }
    }

    func kill() {
        process.signal(SIGKILL)
        _ = process.wait()
    }

    @discardableResult
    func terminate() -> Int32 {
        process.signal(SIGTERM)
        return process.wait(timeout: .seconds(10)) ?? {
            process.signal(SIGKILL)
            return process.wait()
        }()
    }

    /// `terminate()` without holding a cooperative thread while the aggregator shuts down.
    @discardableResult
    func terminateAndWait() async -> Int32 {
        (try? await offload { [self] in terminate() }) ?? -1
    }

    var output: String { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }

    /// A test that fails half-way must not leave its aggregator running.
    deinit {
        if process.isRunning {
            process.signal(SIGKILL)
            process.wait()
        }
    }
}

extension [String] {
    /// `--http 127.0.0.1:0` unless these flags name an address.
    var withDefaultHTTP: [String] { contains("--http") ? [] : ["--http", "127.0.0.1:0"] }
}

/// A broker, an aggregator process on a database in a temporary directory, and an
/// observer of the fleet topics, ready (the aggregator announced itself).
struct AggregatorFixture {
    let broker: MosquittoBroker
    let directory: String
    let observer: MQTTClient
    let messages: MessageCollector
    let aggregator: AggregatorProcess
    /// What `--db` names: the SQLite file in `directory`, or a postgres:// URL.
    let database: String

    /// `database`: a postgres:// URL (its password file among `flags`); by default an SQLite file.
    static func start(flags: [String] = Short.flags, environment: [String: String]? = nil, database: String? = nil) async throws -> AggregatorFixture {
        let broker = try await MosquittoBroker.start()
        let directory = try temporaryDirectory("edgefleet-aggregator")
        let database = database ?? directory + "/fleet.sqlite"
        let (observer, messages) = try await fleetObserver(broker)
        let aggregator = try AggregatorProcess(broker: broker, database: database, flags: flags, environment: environment)
        let fixture = AggregatorFixture(
            broker: broker, directory: directory, observer: observer, messages: messages, aggregator: aggregator, database: database)
        do {
            try await messages.aggregatorOnline()
        } catch {
            fixture.stop()
            throw TestSupportError("\(error)\n\(aggregator.output)")
        }
        return fixture
    }

    /// Stops the aggregator (SIGTERM) and starts another on the same database and broker;
    /// returns once it announced itself.
    func restartAggregator(flags: [String] = Short.flags, environment: [String: String]? = nil) async throws -> AggregatorFixture {
        await aggregator.terminateAndWait()
        let next = try AggregatorProcess(broker: broker, database: database, flags: flags, environment: environment)
        try await messages.aggregatorOnline()
        return AggregatorFixture(broker: broker, directory: directory, observer: observer, messages: messages, aggregator: next, database: database)
    }

    func stop() {
        aggregator.terminate()
        let observer = observer
        Task { await observer.shutdown() }
        broker.stop()
        try? FileManager.default.removeItem(atPath: directory)
    }
}

/// A client that subscribes to `{root}/fleet/#` and `{root}/aggregator/#` and collects.
func fleetObserver(_ broker: MosquittoBroker) async throws -> (MQTTClient, MessageCollector) {
    var logger = Logger(label: "observer")
    logger.logLevel = .critical
    let client = try MQTTClient(
        configuration: MQTTConfiguration(broker: try BrokerURL(parsing: broker.url), clientID: "observer-\(UUID().uuidString.prefix(8))"),
        logger: logger)
    let collector = MessageCollector(client)
    try await client.connect()
    try await client.subscribe(to: "edgefleet/v1/fleet/#", qos: .atLeastOnce)
    try await client.subscribe(to: "edgefleet/v1/aggregator/#", qos: .atLeastOnce)
    return (client, collector)
}

extension MessageCollector {
    /// The next retained-topic view of `site` matching `predicate`.
    func view(_ site: String, timeout: Duration = .seconds(15), _ what: String, where predicate: @escaping @Sendable (SiteView) -> Bool)
        async throws -> SiteView
    {
        let message = try await next(timeout: timeout, what) { message in
            guard message.topic == "edgefleet/v1/fleet/sites/\(site)",
                let view = try? FleetJSON.decode(SiteView.self, from: message.payload)
            else { return false }
            return predicate(view)
        }
        return try FleetJSON.decode(SiteView.self, from: message.payload)
    }

    /// The next event for `site` matching `predicate`.
    func event(_ site: String, timeout: Duration = .seconds(15), _ what: String, where predicate: @escaping @Sendable (FleetEvent) -> Bool)
        async throws -> FleetEvent
    {
        let message = try await next(timeout: timeout, what) { message in
            guard message.topic == "edgefleet/v1/fleet/events", let event = try? FleetJSON.decode(FleetEvent.self, from: message.payload)
            else { return false }
            return event.site?.rawValue == site && predicate(event)
        }
        return try FleetJSON.decode(FleetEvent.self, from: message.payload)
    }

    /// Every event received so far for `site`.
    func events(_ site: String) -> [FleetEvent] {
        received.filter { $0.topic == "edgefleet/v1/fleet/events" }
            .compactMap { try? FleetJSON.decode(FleetEvent.self, from: $0.payload) }
            .filter { $0.site?.rawValue == site }
    }

    /// Waits for the aggregator's online presence.
    /// With `after`: one announced after that instant (not one still in the buffer from before).
    @discardableResult
    func aggregatorOnline(timeout: Duration = .seconds(20), after: Date? = nil) async throws -> Presence {
        let message = try await next(timeout: timeout, "the aggregator's online presence" + (after.map { " after \($0)" } ?? "")) { message in
            guard message.topic == "edgefleet/v1/aggregator/presence", let presence = try? FleetJSON.decode(Presence.self, from: message.payload)
            else { return false }
            return presence.state == .online && after.map { presence.at > $0 } ?? true
        }
        return try FleetJSON.decode(Presence.self, from: message.payload)
    }
}

/// A stand-in for a site's agent speaking the contract: presence with a Last Will,
/// heartbeats whose `lastContactAgeS` the test controls, status.
final class SimulatedSite: Sendable {
    let site: SiteID
    let client: MQTTClient
    let session: UInt64
    private struct State {
        var seq: UInt64 = 0
        /// When the site last reached Azure (test clock).
        var lastContact: Date?
        var azureLost = false
        var certificateExpiry: Date?
        var lastSent: Date?
    }

    /// When the last heartbeat was sent (the instant before handing it to the client).
    var lastHeartbeatSent: Date? { state.withLock { $0.lastSent } }
    private let state = Mutex(State())
    private let beat = Mutex<Task<Void, Never>?>(nil)

    /// The heartbeat interval the site announces (liveness counts in these); it beats every
    /// `Short.heartbeat` whatever it announces.
    let announcedInterval: Double

    /// The agent instance its messages name (nil: an agent from before instances).
    let instance: String?

    init(_ name: String, brokerURL: String, session: UInt64 = 1, announcedInterval: Double = Short.heartbeat, instance: String? = nil) throws {
        site = try SiteID(name)
        self.session = session
        self.instance = instance
        self.announcedInterval = announcedInterval
        var logger = Logger(label: "site")
        logger.logLevel = .critical
        var configuration = MQTTConfiguration(broker: try BrokerURL(parsing: brokerURL), clientID: "sim-\(name)-\(UUID().uuidString.prefix(6))")
        let will = Presence(site: site, state: .offline, reason: .lost, session: session, at: Date(), instance: instance)
        configuration.will = LastWill(
            topic: "edgefleet/v1/sites/\(name)/presence", payload: try FleetJSON.encode(will), qos: .atLeastOnce, retain: true)
        configuration.keepAlive = .seconds(5)
        client = try MQTTClient(configuration: configuration, logger: logger)
    }

    func connect() async throws {
        try await client.connect()
        let presence = Presence(
            site: site, state: .online, session: session, agent: AgentInfo(version: "test", host: "test"),
            heartbeatIntervalS: announcedInterval, at: Date(), instance: instance)
        try await client.publish(
            "edgefleet/v1/sites/\(site)/presence", payload: try FleetJSON.encode(presence), qos: .atLeastOnce, retain: true)
    }

    /// From now on the site cannot reach Azure: its reported age grows.
    /// From now on the site reports this contact (nil: never) and cannot reach Azure.
    func reportContact(at date: Date?) {
        state.withLock {
            $0.lastContact = date
            $0.azureLost = true
        }
    }

    /// From now on the site reaches Azure again: every heartbeat reports a fresh contact.
    func regainAzure() { state.withLock { $0.azureLost = false } }

    /// Returns the last contact the site will go on reporting.
    @discardableResult
    func loseAzure() -> Date? {
        state.withLock {
            $0.azureLost = true
            return $0.lastContact
        }
    }

    func setCertificateExpiry(_ date: Date?) { state.withLock { $0.certificateExpiry = date } }

    /// Publishes a status with this site's cluster metadata (retained, as the agent does).
    func status(cluster: ClusterInfo, checks: [CheckResult] = [], capabilities: [String: Bool] = [:], labels: [String: String]? = nil) async throws {
        let status = SiteStatus(
            site: site, session: session, at: Date(), cluster: cluster, checks: checks, capabilities: capabilities, instance: instance,
            labels: labels)
        try await client.publish("edgefleet/v1/sites/\(site)/status", payload: try FleetJSON.encode(status), qos: .atLeastOnce, retain: true)
    }

    func heartbeat() async throws {
        let (seq, contact, expiry, lost) = state.withLock { s -> (UInt64, Date?, Date?, Bool) in
            s.seq += 1
            if !s.azureLost { s.lastContact = Date() }
            return (s.seq, s.lastContact, s.certificateExpiry, s.azureLost)
        }
        let age = contact.map { max(0, Date().timeIntervalSince($0)) }
        let heartbeat = Heartbeat(
            site: site, session: session, seq: seq, sentAt: Date(),
            azure: AzureReport(reachable: !lost, lastContactAgeS: age, probe: "endpoints"),
            certificates: expiry.map { CertificateReport(earliestNotAfter: $0, source: "test") }, instance: instance)
        let sending = Date()  // before: the aggregator may receive it before the broker acknowledges it here
        try await client.publish("edgefleet/v1/sites/\(site)/heartbeat", payload: try FleetJSON.encode(heartbeat), qos: .atLeastOnce)
        state.withLock { $0.lastSent = sending }
    }

    /// Heartbeats every `Short.heartbeat` seconds until `stopBeating()` (the agent's own
    /// interval, not a wait for the test).
    func startBeating() {
        let task = Task { [self] in
            while !Task.isCancelled {
                try? await heartbeat()
                try? await Task.sleep(for: .milliseconds(Int(Short.heartbeat * 1000)))
            }
        }
        beat.withLock { $0 = task }
    }

    func stopBeating() {
        beat.withLock {
            $0?.cancel()
            $0 = nil
        }
    }

    func shutdown() async {
        stopBeating()
        await client.shutdown()
    }
}
