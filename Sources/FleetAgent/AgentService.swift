public import Logging
public import ServiceLifecycle
import FleetCore
import FleetMessaging
import MQTT
import Synchronization

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

#if canImport(Glibc)
import Glibc
#endif

/// The site agent: probes Azure, runs the local checks, reads certificate
/// expiry, and publishes presence (with a Last Will), heartbeats and status.
///
/// Status changes made while the broker is unreachable go to a bounded spool on
/// disk and are delivered in order, each once, after reconnecting.
public final class AgentService: Service, Sendable {
    public let configuration: AgentConfiguration
    private let logger: Logger
    private let tracker: ContactTracker
    private let now: @Sendable () -> Date
    private let status: Mutex<StatusState>
    private let outbox: StatusOutbox
    /// Drawn at every start: the aggregator takes a new instance as a new session whatever the
    /// counter says, so an agent whose state file was lost (its counter back at 1) is heard at once.
    let instance = AgentInstance.random()

    struct StatusState {
        var checks: [CheckResult] = []
        var certificates = CertificateReading(earliestNotAfter: nil, source: nil, problems: [])
        var lastProbe: ProbeResult?
        var heartbeatSeq: UInt64 = 0
        var heartbeatSession: UInt64 = 0
    }

    public init(configuration: AgentConfiguration, logger: Logger, clocks: SystemClocks = .system) throws(StateError) {
        self.configuration = configuration
        self.logger = logger
        let store = try AgentStateStore(directory: configuration.stateDirectory)
        self.tracker = ContactTracker(store: store, clocks: clocks) { problem in
            logger.error("agent state unreadable; starting as never in contact", metadata: ["problem": "\(problem)"])
        }
        self.now = { clocks.read().wallClock }
        self.status = Mutex(StatusState())
        self.outbox = StatusOutbox(
            spool: try StatusSpool(directory: configuration.stateDirectory + "/spool", capacity: configuration.spoolCapacity),
            topic: .site(configuration.site, .status), topics: configuration.topics, logger: logger)
    }

    private var agentInfo: AgentInfo {
        var name = [CChar](repeating: 0, count: 256)
        gethostname(&name, name.count)
        return AgentInfo(version: EdgeFleetVersion.current, host: String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
    }

    private func presence(_ state: PresenceState, reason: OfflineReason?, session: UInt64) -> [UInt8] {
        let presence = Presence(
            site: configuration.site, state: state, reason: reason, session: session, agent: agentInfo,
            heartbeatIntervalS: configuration.heartbeatInterval.secondsValue, at: now(), instance: instance)
        return (try? FleetJSON.encode(presence)) ?? []
    }

    /// Runs until a graceful shutdown (SIGTERM/SIGINT in a `ServiceGroup`) or
    /// cancellation, then publishes an offline presence (`shutdown`) and disconnects cleanly.
    public func run() async throws {
        let topics = configuration.topics
        let site = configuration.site
        var mqtt = configuration.mqtt
        let tracker = self.tracker
        let presenceTopic = FleetTopic.site(site, .presence)
        // A fresh session number and Last Will for every connection.
        mqtt.willProvider = { [self] in
            let (session, problem) = tracker.nextSession()
            if let problem { self.logger.error("cannot save the session counter", metadata: ["problem": "\(problem)"]) }
            return LastWill(presenceTopic, in: topics, payload: self.presence(.offline, reason: .lost, session: session))
        }
        let client = try MQTTClient(configuration: mqtt, logger: logger)
        client.start()
        logger.info("agent started", metadata: ["site": "\(site)", "broker": "\(mqtt.broker)"])
        refreshCertificates()

        await cancelWhenGracefulShutdown {
            await withTaskGroup(of: Void.self) { group in
                group.addTask { await self.announceOnEveryConnection(client) }
                group.addTask { await self.heartbeats(client) }
                group.addTask { await self.probes() }
                group.addTask { await self.checks(client) }
                group.addTask { await self.statusRefresh(client) }
                await group.waitForAll()
            }
        }

        // Cancelled: say goodbye ourselves (the broker drops the will on a clean disconnect).
        if client.state.isConnected {
            let payload = presence(.offline, reason: .shutdown, session: tracker.currentSession)
            _ = try? await withTimeoutOrNil(.seconds(3)) {
                try await client.publish(presenceTopic, in: topics, payload: payload)
            }
        }
        await client.shutdown()
        logger.info("agent stopped")
    }

    // MARK: Loops

    private func announceOnEveryConnection(_ client: MQTTClient) async {
        for await state in client.stateUpdates() {
            guard case .connected = state else { continue }
            let session = tracker.currentSession
            do {
                try await client.publish(
                    .site(configuration.site, .presence), in: configuration.topics, payload: presence(.online, reason: nil, session: session))
                await outbox.connected(client, current: currentStatus())
                logger.info("online", metadata: ["session": "\(session)"])
            } catch {
                logger.warning("could not announce the connection", metadata: ["error": "\(error)"])
            }
        }
    }

    private func heartbeats(_ client: MQTTClient) async {
        while !Task.isCancelled {
            if client.state.isConnected {
                let session = tracker.currentSession
                let (seq, probe, certificates) = status.withLock { s -> (UInt64, ProbeResult?, CertificateReading) in
                    if s.heartbeatSession != session {
                        s.heartbeatSession = session
                        s.heartbeatSeq = 0
                    }
                    s.heartbeatSeq += 1
                    return (s.heartbeatSeq, s.lastProbe, s.certificates)
                }
                let heartbeat = Heartbeat(
                    site: configuration.site, session: session, seq: seq, sentAt: now(),
                    azure: AzureReport(reachable: probe?.reachable ?? false, lastContactAgeS: tracker.lastContactAge, probe: probeKind),
                    certificates: CertificateReport(
                        earliestNotAfter: certificates.earliestNotAfter, source: certificates.source,
                        error: certificates.problems.isEmpty ? nil : certificates.problems.joined(separator: "; ")),
                    instance: instance)
                if let payload = try? FleetJSON.encode(heartbeat) {
                    // Heartbeats missed while offline are not replayed: a failed one is dropped.
                    try? await client.publish(.site(configuration.site, .heartbeat), in: configuration.topics, payload: payload)
                }
            }
            try? await Task.sleep(for: configuration.heartbeatInterval)
        }
    }

    private var probeKind: String {
        if case .command = configuration.probe { return "command" }
        return "endpoints"
    }

    private func probes() async {
        while !Task.isCancelled {
            let result = await AzureProbe.run(configuration.probe, caFile: configuration.probeCAFile)
            let previous = status.withLock { s -> Bool? in
                defer { s.lastProbe = result }
                return s.lastProbe?.reachable
            }
            if result.reachable {
                do {
                    try tracker.recordContact()
                } catch {
                    logger.error("cannot save the last Azure contact", metadata: ["problem": "\(error)"])
                }
            }
            if previous != result.reachable {
                logger.info("Azure \(result.reachable ? "reachable" : "unreachable")", metadata: ["detail": "\(result.detail)"])
            }
            try? await Task.sleep(for: configuration.probeInterval)
        }
    }

    private func checks(_ client: MQTTClient) async {
        let checks = configuration.checks
        guard !checks.isEmpty else { return }
        var due = [ContinuousClock.Instant](repeating: .now, count: checks.count)
        while !Task.isCancelled {
            let now = ContinuousClock.now
            let indices = checks.indices.filter { due[$0] <= now }
            if !indices.isEmpty {
                let results = await LocalChecks.run(indices.map { checks[$0] }, concurrency: configuration.checkConcurrency, now: self.now)
                for index in indices { due[index] = ContinuousClock.now + checks[index].interval }
                let changed = status.withLock { s -> Bool in
                    var merged = s.checks
                    var changed = false
                    for result in results {
                        if let i = merged.firstIndex(where: { $0.name == result.name }) {
                            if merged[i].state != result.state || merged[i].output != result.output { changed = true }
                            merged[i] = result
                        } else {
                            merged.append(result)
                            changed = true
                        }
                    }
                    s.checks = merged
                    return changed
                }
                if changed { await outbox.submit(currentStatus(), client: client) }
            }
            guard let next = due.min() else { return }
            try? await Task.sleep(until: next, clock: .continuous)
        }
    }

    private func statusRefresh(_ client: MQTTClient) async {
        while !Task.isCancelled {
            try? await Task.sleep(for: configuration.statusRefresh)
            guard !Task.isCancelled else { return }
            refreshCertificates()
            await outbox.submit(currentStatus(), client: client)
        }
    }

    private func refreshCertificates() {
        let reading = CertificateReader.read(files: configuration.certificateFiles, kubeconfig: configuration.kubeconfig)
        status.withLock { $0.certificates = reading }
    }

    private func currentStatus() -> SiteStatus {
        let (checks, certificates) = status.withLock { ($0.checks, $0.certificates) }
        var all = checks
        if !configuration.certificateFiles.isEmpty || configuration.kubeconfig != nil {
            all.append(LocalChecks.certificateCheck(certificates, observedAt: now()))
        }
        return SiteStatus(
            site: configuration.site, session: tracker.currentSession, at: now(), cluster: configuration.cluster, checks: all,
            capabilities: LocalChecks.capabilities(configuration.checks, results: checks), instance: instance,
            labels: configuration.labels.isEmpty ? nil : configuration.labels)
    }
}

/// Publishes status messages in order: straight to the broker when it is
/// reachable and nothing older waits, else into the spool, which is delivered
/// first after the next connect. One message at a time, so order holds.
actor StatusOutbox {
    let spool: StatusSpool
    let topic: FleetTopic
    let topics: FleetTopics
    let logger: Logger

    init(spool: StatusSpool, topic: FleetTopic, topics: FleetTopics, logger: Logger) {
        self.spool = spool
        self.topic = topic
        self.topics = topics
        self.logger = logger
    }

    /// The last submission or delivery: each waits for the one before it. The actor alone does
    /// not keep them in order: it is reentrant at every `await`, so a status submitted while the
    /// one before waited for its acknowledgement started its own publish first (seen under load:
    /// 24 arrived before 23, and both carried the same drop count).
    private var tail: Task<Void, Never>?

    @discardableResult
    private func enqueue(_ body: @escaping @Sendable () async -> Void) -> Task<Void, Never> {
        let previous = tail
        let task = Task {
            await previous?.value
            await body()
        }
        tail = task
        return task
    }

    private func serially(_ body: @escaping @Sendable () async -> Void) async {
        await enqueue(body).value
    }

    /// A new status: published as soon as the ones before it are through (now, if possible),
    /// else spooled. Returns once it has its place in line, not once it is delivered: a stalled
    /// link (the TCP connection up, nothing acknowledged until the keepalive gives up on it)
    /// must not hold the check loop, whose checks keep running on time meanwhile.
    func submit(_ status: SiteStatus, client: MQTTClient) {
        enqueue { await self.submitNow(status, client: client) }
    }

    private func submitNow(_ status: SiteStatus, client: MQTTClient) async {
        var status = status
        if spool.dropped > 0 { status.spoolDropped = spool.dropped }
        guard let payload = try? FleetJSON.encode(status) else { return }
        if spool.isEmpty, client.state.isConnected {
            switch await publishUnlessCut(payload, client: client) {
            case .acknowledged:
                if let reported = status.spoolDropped { spool.dropsReported(reported) }
                spool.currentDelivered()
                return
            case .inFlight:
                // The link went down after the message was handed over: the client resends it
                // first on reconnect. Not spooled (that would deliver it twice); the caller is
                // not held up until the link is back, so later changes reach the spool.
                logger.info("status in flight when the broker connection dropped; it is resent on reconnect")
                return
            case .failed(let error):
                logger.info("status spooled: the broker is not reachable", metadata: ["error": "\(error)"])
            }
        }
        do {
            try spool.append(payload)
        } catch {
            logger.error(
                "cannot spool a status change; it is counted in spoolDropped", metadata: ["problem": "\(error)", "dropped": "\(spool.dropped)"])
        }
    }

    enum PublishOutcome {
        case acknowledged
        /// Handed over, then the connection dropped before the acknowledgement.
        case inFlight
        case failed(any Error)
    }

    /// Publishes and waits for the acknowledgement, or only until the connection drops.
    private func publishUnlessCut(_ payload: [UInt8], client: MQTTClient) async -> PublishOutcome {
        let (outcomes, continuation) = AsyncStream<PublishOutcome>.makeStream(bufferingPolicy: .bufferingOldest(2))
        let (topic, topics) = (topic, topics)
        // Unstructured on purpose: a QoS 1 publish awaits its PUBACK and cannot be cancelled;
        // it ends when the broker acknowledges it after a reconnect.
        Task {
            do {
                try await client.publish(topic, in: topics, payload: payload)
                continuation.yield(.acknowledged)
            } catch {
                continuation.yield(.failed(error))
            }
        }
        let watcher = Task {
            for await state in client.stateUpdates() where !state.isConnected {
                continuation.yield(.inFlight)
                return
            }
        }
        defer { watcher.cancel() }
        var iterator = outcomes.makeAsyncIterator()
        return await iterator.next() ?? .inFlight
    }

    /// After a connect: deliver the spool in order, then the current status if
    /// nothing was spooled (the last spooled message is the newest status otherwise).
    func connected(_ client: MQTTClient, current status: SiteStatus) async {
        await serially { await self.connectedNow(client, current: status) }
    }

    private func connectedNow(_ client: MQTTClient, current status: SiteStatus) async {
        var delivered = 0
        let current = spool.isEmpty || spool.currentPending
        while var payload = spool.first() {
            // The drop count rides on the first status delivered after the drops (no extra
            // status, which delivered the newest change twice). The newest dropped change, when
            // it is what the current status says, is not lost: the current status follows.
            let reporting = spool.dropped - (spool.newestDroppedIsCurrent ? 1 : 0)
            if reporting > 0, var status = try? FleetJSON.decode(SiteStatus.self, from: payload) {
                status.spoolDropped = reporting
                payload = (try? FleetJSON.encode(status)) ?? payload
            }
            do {
                try await client.publish(topic, in: topics, payload: payload)
                spool.removeFirst()
                if reporting > 0 { spool.dropsReported(reporting) }
                delivered += 1
            } catch {
                logger.info("spool delivery interrupted", metadata: ["left": "\(spool.count)", "error": "\(error)"])
                return
            }
        }
        if delivered > 0 {
            logger.info("delivered spooled status changes", metadata: ["count": "\(delivered)"])
        }
        // Nothing spooled: the current status (announced again after a reconnect). Spooled, and
        // the newest change among them: the last delivered one is the current status. But if the
        // newest changes could not be spooled, the current status follows.
        if current || delivered == 0 {
            spool.deliveringCurrent()
            await submitNow(status, client: client)
        }
    }
}

/// Runs `operation`; `nil` if it did not finish within `limit`.
func withTimeoutOrNil<T: Sendable>(_ limit: Duration, _ operation: @escaping @Sendable () async throws -> T) async throws -> T? {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await operation() }
        group.addTask {
            try? await Task.sleep(for: limit)
            return nil
        }
        defer { group.cancelAll() }
        return try await group.next() ?? nil
    }
}
