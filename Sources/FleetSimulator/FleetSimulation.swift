public import FleetCore
public import Logging
import FleetMessaging
public import MQTT
import Synchronization

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Virtual sites speaking the real contract through the real broker: presence with a
/// Last Will, heartbeats with the Azure contact each site would report, a retained status
/// with cluster metadata and checks. Up to `dedicatedConnections` sites get an MQTT
/// connection each (a dying agent then ends it without DISCONNECT and the broker publishes
/// its Last Will); beyond that, sites share connections of `sitesPerConnection` each (a
/// dying shared site publishes its offline presence itself, as its Last Will would).
public final class FleetSimulation: Sendable {
    public struct Settings: Sendable {
        /// Broker URL, credentials and TLS; the client id is made per connection.
        public var mqtt: MQTTConfiguration
        public var topics: FleetTopics
        public var dedicatedConnections: Int
        public var sitesPerConnection: Int

        public init(mqtt: MQTTConfiguration, topics: FleetTopics = FleetTopics(), dedicatedConnections: Int = 2_000, sitesPerConnection: Int = 500) {
            self.mqtt = mqtt
            self.topics = topics
            self.dedicatedConnections = dedicatedConnections
            self.sitesPerConnection = sitesPerConnection
        }
    }

    /// What a progress line shows.
    public struct Progress: Sendable, Hashable {
        public var sites: Int
        public var connections: Int
        public var connected: Int
        public var alive: Int
        public var azureUp: Int
        public var heartbeats: Int
        public var failures: Int
        public var elapsed: Duration
    }

    struct SiteState: Sendable {
        var id: SiteID
        var region: String?
        var contactAt: Date?
        var azureUp = true
        var flap: (period: Duration, since: Date)?
        var certificateExpiry: Date?
        var alive = true
        var seq: UInt64 = 0
        var connection: Int
    }

    public let scenario: Scenario
    let settings: Settings
    let logger: Logger
    let session: UInt64
    /// One agent instance for the whole simulation (docs/contract.md, "Sessions").
    let instance: String
    private let sites: Mutex<[SiteState]>
    private let counters = Mutex((heartbeats: 0, failures: 0))
    let clients: [MQTTClient]
    /// For shared connections: which sites each carries.
    let dedicated: Int

    public init(scenario: Scenario, settings: Settings, logger: Logger) throws {
        try scenario.validate()
        self.scenario = scenario
        self.settings = settings
        self.logger = logger
        session = UInt64(max(0, Date().timeIntervalSince1970 * 1000))
        let instance = AgentInstance.random()
        self.instance = instance
        let ids = scenario.siteIDs
        let regions = scenario.regionOfSite
        dedicated = min(ids.count, max(0, settings.dedicatedConnections))
        let perShared = max(1, settings.sitesPerConnection)
        var states: [SiteState] = []
        let now = Date()
        for (index, id) in ids.enumerated() {
            let connection = index < dedicated ? index : dedicated + (index - dedicated) / perShared
            states.append(SiteState(id: id, region: regions[index], contactAt: now, connection: connection))
        }
        sites = Mutex(states)
        let connectionCount = dedicated + (ids.count - dedicated + perShared - 1) / perShared
        var clients: [MQTTClient] = []
        let session = session
        for connection in 0..<connectionCount {
            var mqtt = settings.mqtt
            mqtt.clientID = "edgefleet-sim-\(session % 1_000_000)-\(connection)"
            mqtt.keepAlive = .seconds(15)
            mqtt.reconnect = ReconnectPolicy(initialDelay: .milliseconds(500), maximumDelay: .seconds(10))
            if connection < dedicated {
                let site = ids[connection]
                let will = Presence(site: site, state: .offline, reason: .lost, session: session, at: now, instance: instance)
                mqtt.will = LastWill(.site(site, .presence), in: settings.topics, payload: try FleetJSON.encode(will))
            }
            clients.append(try MQTTClient(configuration: mqtt, logger: logger))
        }
        self.clients = clients
    }

    /// How many MQTT connections the simulation uses.
    public var connectionCount: Int { clients.count }

    public var progress: Progress {
        let (states, count) = (sites.withLock { $0 }, counters.withLock { $0 })
        let now = Date()
        return Progress(
            sites: states.count, connections: clients.count, connected: clients.filter { $0.state.isConnected }.count,
            alive: states.filter(\.alive).count, azureUp: states.filter { Self.reachable($0, now: now) && $0.alive }.count,
            heartbeats: count.heartbeats, failures: count.failures, elapsed: .zero)
    }

    static func reachable(_ site: SiteState, now: Date) -> Bool {
        if let flap = site.flap {
            let periods = Int(now.timeIntervalSince(flap.since) / flap.period.secondsValue)
            return periods % 2 == 1  // down first, then up
        }
        return site.azureUp
    }

    /// Connects everything, announces every site, and runs the scenario until cancelled
    /// (or `duration` passes). `progress` is called about once a second.
    public func run(for duration: Duration? = nil, progress report: (@Sendable (Progress) -> Void)? = nil) async throws {
        let start = ContinuousClock.now
        for client in clients { client.start() }
        // Wait for the connections (a broker that is not there yet is retried by the clients).
        for client in clients { try await client.connect(timeout: .seconds(30)) }
        for index in 0..<scenario.sites { try await announce(index) }
        let events = try scenario.resolved()
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await self.playEvents(events, start: start) }
            group.addTask { await self.beat() }
            if let report {
                group.addTask {
                    while !Task.isCancelled {
                        try await Task.sleep(for: .seconds(1))
                        var value = self.progress
                        value.elapsed = ContinuousClock.now - start
                        report(value)
                    }
                }
            }
            if let duration {
                group.addTask { try await Task.sleep(until: start + duration) }
                try await group.next()
                group.cancelAll()
            } else {
                try await group.next()
            }
        }
    }

    /// Disconnects every live site cleanly (their presence says shutdown), giving the broker
    /// 3 s to take the goodbyes: a broker that is gone must not keep the simulation running.
    public func shutdown() async {
        let live = sites.withLock { $0 }.filter(\.alive)
        let done = Mutex(false)
        let goodbyes = Task {
            for site in live where clients[site.connection].state.isConnected {
                let presence = Presence(site: site.id, state: .offline, reason: .shutdown, session: session, at: Date(), instance: instance)
                try? await clients[site.connection].publish(
                    .site(site.id, .presence), in: settings.topics, payload: FleetJSON.encode(presence))
            }
            done.withLock { $0 = true }
        }
        let deadline = ContinuousClock.now + .seconds(3)
        while ContinuousClock.now < deadline, !done.withLock({ $0 }) { try? await Task.sleep(for: .milliseconds(20)) }
        for client in clients { await client.shutdown() }  // fails whatever still waits
        await goodbyes.value
    }

    // MARK: -

    private func announce(_ index: Int) async throws {
        let site = sites.withLock { $0[index] }
        let client = clients[site.connection]
        let presence = Presence(
            site: site.id, state: .online, session: session, agent: AgentInfo(version: "simulated", host: "sim-\(site.id)"),
            heartbeatIntervalS: scenario.heartbeatInterval.secondsValue, at: Date(), instance: instance)
        try await client.publish(.site(site.id, .presence), in: settings.topics, payload: FleetJSON.encode(presence))
        try await publishStatus(site)
    }

    private func publishStatus(_ site: SiteState) async throws {
        let now = Date()
        let number = Int(site.id.rawValue.split(separator: "-").last ?? "0") ?? 0
        let up = Self.reachable(site, now: now)
        let status = SiteStatus(
            site: site.id, session: session, at: now,
            cluster: ClusterInfo(
                name: "aks-\(site.id)", resourceGroup: "rg-\(site.region ?? "edge")", subscription: "00000000-0000-0000-0000-000000000000",
                customLocation: "cl-\(site.id)", kubernetesVersion: "1.29.4"),
            checks: [
                CheckResult(name: "kube-api", state: .pass, observedAt: now, durationMs: 12, output: "ok"),
                CheckResult(name: "nodes-ready", state: number % 17 == 0 ? .warn : .pass, observedAt: now, durationMs: 40,
                            output: number % 17 == 0 ? "1 node(s) not Ready" : "all nodes Ready"),
                CheckResult(name: "arc-agents", state: up ? .pass : .warn, observedAt: now, durationMs: 30,
                            output: up ? "Arc agents connected" : "clusterconnect-agent cannot reach Azure"),
            ],
            capabilities: ["clusterAutoscaler": number % 3 == 0], instance: instance, labels: site.region.map { ["region": $0] })
        try await clients[site.connection].publish(
            .site(site.id, .status), in: settings.topics, payload: FleetJSON.encode(status))
    }

    /// How often the beating task wakes at most: every site whose instant came since goes then.
    static let beatTick: Duration = .milliseconds(10)

    /// Every site's heartbeats, from one task: each site beats once per interval at an instant
    /// of its own, drawn at random (so that a big fleet does not beat in step), and the task
    /// wakes at most every `beatTick` for those whose instant came. A task per connection, each
    /// sleeping between its sites' heartbeats, cost a timer per heartbeat: with 2,000 dedicated
    /// connections and 5,000 sites, a quarter of the simulated fleet's CPU went to dispatch's
    /// timers and wake-ups. A heartbeat that has to wait for room on its connection (a broker that
    /// reads slowly) delays the ones after it, as a shared link to one broker would.
    private func beat() async {
        let interval = scenario.heartbeatInterval
        let count = sites.withLock { $0.count }
        guard count > 0 else { return }
        let order = (0..<count).map { (at: interval * Double.random(in: 0..<1), index: $0) }.sorted { $0.at < $1.at }
        var round = ContinuousClock.now
        var position = 0
        while !Task.isCancelled {
            let woke = ContinuousClock.now
            while position < order.count, round + order[position].at <= woke {
                if Task.isCancelled { return }
                await heartbeat(order[position].index)
                position += 1
            }
            if position == order.count {
                position = 0
                round += interval
                // Fallen a whole interval behind (a machine that stalled): no burst of missed rounds.
                if ContinuousClock.now - round > interval { round = ContinuousClock.now }
                continue
            }
            let due = max(round + order[position].at, woke + Self.beatTick)
            try? await Task.sleep(until: due)
        }
    }

    private func heartbeat(_ index: Int) async {
        let now = Date()
        guard
            let (site, heartbeat) = sites.withLock({ states -> (SiteState, Heartbeat)? in
                guard states[index].alive else { return nil }
                let up = Self.reachable(states[index], now: now)
                if up { states[index].contactAt = now }
                states[index].seq += 1
                let s = states[index]
                let report = AzureReport(reachable: up, lastContactAgeS: s.contactAt.map { max(0, now.timeIntervalSince($0)) }, probe: "simulated")
                return (
                    s,
                    Heartbeat(
                        site: s.id, session: session, seq: s.seq, sentAt: now, azure: report,
                        certificates: s.certificateExpiry.map { CertificateReport(earliestNotAfter: $0, source: "simulated") }, instance: instance)
                )
            })
        else { return }
        do {
            try await clients[site.connection].publish(
                .site(site.id, .heartbeat), in: settings.topics, payload: FleetJSON.encode(heartbeat))
            counters.withLock { $0.heartbeats += 1 }
        } catch {
            counters.withLock { $0.failures += 1 }
        }
    }

    private func playEvents(_ events: [(at: Duration, sites: [Int], action: Scenario.Action)], start: ContinuousClock.Instant) async throws {
        for event in events {
            try await Task.sleep(until: start + event.at)
            let now = Date()
            logger.info("scenario: \(event.action) for \(event.sites.count) site(s)", metadata: ["at": "\(DurationFormat.format(event.at))"])
            var statusChanged: [Int] = []
            var dying: [Int] = []
            var reviving: [Int] = []
            var restored: [Int] = []
            sites.withLock { states in
                for index in event.sites {
                    switch event.action {
                    case .never:
                        states[index].contactAt = nil
                        states[index].azureUp = false
                        states[index].flap = nil
                    case .contactAge(let age):
                        states[index].contactAt = now.addingTimeInterval(-age.secondsValue)
                        states[index].azureUp = false
                        states[index].flap = nil
                    case .lose:
                        // Azure was reached up to this instant: the scripted time is the last contact.
                        if Self.reachable(states[index], now: now) { states[index].contactAt = now }
                        states[index].azureUp = false
                        states[index].flap = nil
                    case .restore:
                        if !Self.reachable(states[index], now: now) { restored.append(index) }
                        states[index].azureUp = true
                        states[index].flap = nil
                    case .certificateExpiresIn(let left):
                        states[index].certificateExpiry = now.addingTimeInterval(left.secondsValue)
                    case .flap(let period):
                        states[index].flap = (period, now)
                    case .die:
                        if states[index].alive { dying.append(index) }
                        states[index].alive = false
                    case .revive:
                        if !states[index].alive { reviving.append(index) }
                        states[index].alive = true
                    }
                    statusChanged.append(index)
                }
            }
            for index in dying { await die(index) }
            for index in reviving { try? await announce(index) }
            // The aggregator hears of the contact now, not at the next heartbeat.
            for index in restored { await heartbeat(index) }
            for index in statusChanged where !dying.contains(index) {
                try? await publishStatus(sites.withLock { $0[index] })
            }
        }
        // Nothing more to play: wait to be cancelled.
        while !Task.isCancelled { try await Task.sleep(for: .seconds(3600)) }
    }

    /// A dying agent: a dedicated connection ends without DISCONNECT (the broker publishes
    /// its Last Will); a shared one publishes what the Last Will would say.
    private func die(_ index: Int) async {
        let site = sites.withLock { $0[index] }
        if site.connection < dedicated {
            await clients[site.connection].abandon()
        } else {
            let presence = Presence(site: site.id, state: .offline, reason: .lost, session: session, at: Date(), instance: instance)
            try? await clients[site.connection].publish(.site(site.id, .presence), in: settings.topics, payload: FleetJSON.encode(presence))
        }
    }
}
