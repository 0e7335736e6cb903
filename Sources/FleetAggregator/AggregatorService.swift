import Dispatch
import Subprocesses
public import FleetCore
public import FleetQueue
public import Logging
import FleetMessaging
import MQTT
public import ServiceLifecycle
import Synchronization

#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif

/// The aggregator as a `Service`: ingest from the site topics, evaluation on schedule,
/// retained views, events and the summary, and the SQLite store behind it.
///
/// Three loops share one `FleetState` behind a lock: ingest (every message from the
/// broker), the clock (every 20 ms: due evaluations, publishing what changed, the
/// coalesced summary) and the store (changed records every `flushInterval`, in one
/// transaction). Ingest never waits for the network or the disk.
public final class AggregatorService: Service, Sendable {
    public let configuration: AggregatorConfiguration
    let logger: Logger
    let metrics: AggregatorMetrics
    let client: MQTTClient
    let store: any SiteStore
    /// Every change asked of the API, by whom (in the same database).
    let auditStore: any AuditStore
    /// Every published event, and the history worked out from them.
    public let eventStore: any EventStore
    /// The database, for logs (a file path, or a PostgreSQL URL without secrets).
    let databaseDescription: String
    let state: SharedFleet
    let session: UInt64
    let rejectLog: Mutex<RejectLog>
    /// The deferred-operation queue (submission, operator actions, dispatch): a `Service` of its
    /// own in the same `ServiceGroup`, told of sites' situations through a lookup.
    public let queue: QueueService
    /// Rollouts: waves of one operation kind over the sites a label selector matches.
    public let rollouts: RolloutEngine
    /// The wall clock every evaluation reads.
    let clock: WallClock
    /// Batches from the clock loop to the publish loop, and whether one is on its way.
    let outbox = AsyncStream<PublishBatch>.makeStream()
    let publisherBusy = Mutex(false)
    /// What the clock loop and the dispatch loop wait on between the instants they plan.
    let clockWake = Wakeup()
    let storeWake = Wakeup()
    let roleAnnounced = Wakeup()
    /// Whether this replica leads: only the leader publishes views, events and the summary,
    /// writes site records and dispatches; a standby ingests (its state stays warm) and serves
    /// the API. A sole aggregator always leads.
    public let leadership: Leadership

    /// `stores`: where site records and the queue live; by default the SQLite file at
    /// `configuration.databasePath` (the executable opens PostgreSQL stores for a postgres:// URL).
    public init(
        configuration: AggregatorConfiguration, logger: Logger, metrics: AggregatorMetrics = AggregatorMetrics(), clock: WallClock = .system,
        stores: AggregatorStores? = nil, leadership: Leadership? = nil
    ) throws {
        let leadership = leadership ?? .sole(replicaID: configuration.mqtt.clientID, logger: logger)
        self.leadership = leadership
        self.configuration = configuration
        self.logger = logger
        self.metrics = metrics
        self.clock = clock
        let stores = try stores ?? .sqlite(path: configuration.databasePath)
        store = stores.sites
        auditStore = stores.audit
        eventStore = stores.events
        databaseDescription = stores.description
        let fleet = FleetState(thresholds: configuration.thresholds, viewRefresh: configuration.viewRefresh)
        fleet.siteLimit = configuration.maxSites
        let state = SharedFleet(fleet)
        self.state = state
        session = UInt64(max(0, clock.now().timeIntervalSince1970 * 1000))
        rejectLog = Mutex(RejectLog())
        let clockWake = clockWake
        queue = QueueService(
            store: stores.operations,
            settings: QueueSettings(
                executors: configuration.executors, dispatch: configuration.dispatch, maxAttempts: configuration.maxAttempts,
                dispatchInterval: configuration.dispatchInterval),
            logger: logger, metrics: metrics.queue, clock: clock,
            situation: { site, now in state.withLock { $0.situation(of: site, now: now) } },
            situations: { sites, now in
                state.withLock { fleet in
                    var found: [SiteID: DispatchSituation] = [:]
                    found.reserveCapacity(sites.count)
                    for site in sites { found[site] = fleet.situation(of: site, now: now)?.dispatch }
                    return found
                }
            },
            countsChanged: { change in
                state.withLock { $0.setQueue(change, now: clock.now()) }
                clockWake.signal()  // views whose queue counts changed go out
            },
            eventAdded: { clockWake.signal() }, leadership: leadership)
        rollouts = RolloutEngine(store: stores.rollouts, queue: queue, state: state, clock: clock, logger: logger)

        var mqtt = configuration.mqtt
        let topics = configuration.topics
        let session = session
        let host = Self.hostName()
        // Replicas: each has its Last Will on its own presence topic (a standby that dies must not
        // say that the aggregator is gone); a sole aggregator on the aggregator's presence.
        let replicaTopic: FleetTopic? = leadership.isReplicated ? (try? SiteID(leadership.replicaID)).map { .replicaPresence($0) } : nil
        let replicaID = leadership.isReplicated ? leadership.replicaID : nil
        mqtt.willProvider = {
            let presence = Presence(
                site: Self.aggregatorID, state: .offline, reason: .lost, session: session,
                agent: AgentInfo(version: EdgeFleetVersion.current, host: host), at: clock.now(), replica: replicaID)
            return LastWill(replicaTopic ?? .aggregatorPresence, in: topics, payload: (try? FleetJSON.encode(presence)) ?? [])
        }
        client = try MQTTClient(configuration: mqtt, logger: logger)
    }

    /// The id the aggregator's own presence carries in its `site` field.
    static let aggregatorID = try! SiteID("aggregator")

    static func hostName() -> String { ProcessTable.hostName() }

    /// One site's view now, for the operator surfaces.
    public func view(of site: SiteID) -> SiteView? {
        state.withLock { $0.view(of: site, now: clock.now()) }
    }

    /// How many sites the fleet holds (cheap: for /healthz).
    public var siteCount: Int { state.withLock { $0.records.count } }

    /// The fleet summary now.
    public func summary() -> FleetSummary {
        state.withLock { $0.summary(now: clock.now()) }
    }

    /// Every site's view now, ordered by site id, filtered.
    public func views(mode: ConnectivityMode? = nil, liveness: Liveness? = nil, selector: LabelSelector = LabelSelector()) -> [SiteView] {
        let now = clock.now()
        return state.withLock { fleet in
            fleet.allViews(now: now) { view in
                (mode.map { view.mode == $0 } ?? true) && (liveness.map { view.liveness == $0 } ?? true)
                    && (selector.isEmpty || selector.matches(view.labels ?? [:]))
            }
        }
    }

    /// The sites whose labels match `selector`.
    public func sites(matching selector: LabelSelector) -> Set<SiteID> {
        state.withLock { fleet in Set(fleet.records.values.lazy.filter { selector.matches($0.labels) }.map(\.site)) }
    }

    /// Every site's deadline as last evaluated, ordered by site id (for `/metrics`), of the sites `selector` matches.
    public func siteDeadlines(selector: LabelSelector = LabelSelector()) -> [(site: SiteID, deadline: Date)] {
        state.withLock { fleet in
            let entries = fleet.deadlineEntries()
            return selector.isEmpty ? entries : entries.filter { selector.matches(fleet.records[$0.site]?.labels ?? [:]) }
        }.sorted { $0.site < $1.site }
    }

    /// One site's view and what its agent last reported.
    public func detail(of site: SiteID) -> SiteDetail? {
        let now = clock.now()
        return state.withLock { fleet in
            guard let record = fleet.records[site], let view = fleet.view(of: site, now: now) else { return nil }
            return SiteDetail(
                view: view, presence: record.presence, agent: record.agent, heartbeatIntervalS: record.heartbeatIntervalS,
                lastSeenAt: record.lastSeenAt, azureReachable: record.azureReachable, certificateExpiry: record.earliestCertificateExpiry,
                certificateSource: record.certificateSource, expiredAt: record.expiredAt, statusAt: record.statusAt, cluster: record.cluster,
                checks: record.checkResults, capabilities: record.capabilities, seqGaps: record.seqGaps)
        }
    }

    /// "What works here now" at one site: every kind of the catalog, for its mode now.
    public func capabilities(of site: SiteID) -> SiteCapabilities? {
        let now = clock.now()
        return state.withLock { fleet in
            guard let record = fleet.records[site], let view = fleet.view(of: site, now: now) else { return nil }
            return SiteCapabilities(
                site: site, mode: view.mode, at: now, kinds: OperationCatalog.availability(mode: view.mode, capabilities: record.capabilities))
        }
    }

    /// The thresholds the fleet is evaluated against.
    public var thresholds: Thresholds { configuration.thresholds }

    /// This replica's role and the epoch of the lead (a sole aggregator: leader, epoch 1).
    public var role: (replica: String, role: String, epoch: Int64, replicated: Bool) {
        (leadership.replicaID, leadership.role.rawValue, leadership.epoch, leadership.isReplicated)
    }

    /// Whether the aggregator's broker connection is up now.
    public var brokerConnected: Bool { client.state.isConnected }

    /// Set once `run()` has restored the fleet's state from the store.
    private let restoredState = Atomic<Bool>(false)

    /// True until the fleet's state has been restored from the store (the operator surfaces
    /// answer 503 `restoring` meanwhile, not from an empty fleet).
    public var restoring: Bool { !restoredState.load(ordering: .acquiring) }

    public func run() async throws {
        let (restored, problems) = try store.loadAll()
        for problem in problems { logger.error("\(problem)") }
        let start = clock.now()
        let forgotten = try store.forgotten()
        state.withLock { $0.restore(restored, forgotten: forgotten, now: start) }
        restoredState.store(true, ordering: .releasing)
        queue.modesChanged()  // the restored fleet: every site's situation is new to the dispatcher
        logger.info("aggregator started", metadata: ["sites": "\(restored.count)", "database": "\(databaseDescription)"])

        let topics = configuration.topics
        let (state, clockWake, queue, clock, replica, metrics) = (state, clockWake, queue, clock, leadership.replicaID, metrics)
        metrics.leader.record(leadership.isLeader ? 1 : 0)
        metrics.leaderEpoch.record(Int(leadership.epoch))
        leadership.onChange { role, epoch in
            metrics.leader.record(role == .leader ? 1 : 0)
            metrics.leaderEpoch.record(Int(epoch))
        }
        let previousLeader = Mutex<String?>(nil)
        leadership.onChange { role, epoch in
            guard role == .leader else { return }
            // A new lead: the whole fleet is published again under its epoch (a standby published
            // nothing), and the change is an event.
            state.withLock { $0.republishAll(now: clock.now()) }
            self.roleAnnounced.signal()
            let from = previousLeader.withLock { $0 }
            queue.events.add(FleetEvent(type: .leaderChanged, site: nil, at: clock.now(), from: from, to: replica, note: "epoch \(epoch)"))
            clockWake.signal()
        }
        if leadership.isReplicated {
            // Remember who led before this replica (for the event's `from`).
            let leadership = leadership
            leadership.onChange { role, _ in
                if role == .standby {
                    previousLeader.withLock { $0 = leadership.leader }
                    self.roleAnnounced.signal()
                }
            }
        }
        client.start()
        // Whatever way the loops end (a graceful shutdown, cancellation, a fatal refusal by the
        // broker), the dispatcher, the last flush and the client's thread are stopped before
        // run() returns or throws: a process whose services stopped must not live on.
        do {
            for channel in SiteChannel.allCases {
                try await client.subscribe(to: topics.everySite(channel), qos: .atLeastOnce)
            }
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { await self.ingestLoop() }
                group.addTask { await self.clockLoop() }
                group.addTask { await self.publishLoop() }
                group.addTask { await self.storeLoop() }
                group.addTask { try await self.presenceLoop() }
                if leadership.isReplicated { group.addTask { await self.roleLoop() } }
                group.addTask { await self.rolloutLoop() }
                group.addTask { await self.retentionLoop() }
                try await withGracefulShutdownHandler {
                    try await group.next()
                } onGracefulShutdown: {
                    self.stopping.withLock { $0 = true }
                    // The loops wait on these, not on a timer: wake them to see they must stop.
                    self.clockWake.signal()
                    self.storeWake.signal()
                    self.roleAnnounced.signal()
                    self.rollouts.changed.signal()
                }
                group.cancelAll()
            }
        } catch {
            stopping.withLock { $0 = true }
            await finish()
            throw error
        }
        await finish()
    }

    /// Whether site records can be written: since when they cannot, and the rate limit of the log.
    struct StoreHealth {
        var failingSince: Date?
        var loggedAt: Date?
        var suppressed = 0
    }
    let storeHealth = Mutex(StoreHealth())

    /// Why the store is unhealthy (records not written for longer than `storeGrace`), or nil.
    public func storeProblem(now: Date? = nil) -> String? {
        let now = now ?? clock.now()
        guard let since = storeHealth.withLock({ $0.failingSince }), now.timeIntervalSince(since) >= configuration.storeGrace.secondsValue
        else { return nil }
        return "site records cannot be written since \(RFC3339.format(since))"
    }

    let stopping = Mutex(false)
    var isStopping: Bool { stopping.withLock { $0 } || Task.isCancelled }

    // MARK: - Loops

    private func ingestLoop() async {
        let decoder = IngestDecoder(topics: configuration.topics, maxPayloadBytes: configuration.maxPayloadBytes)
        for await message in client.messages {
            if isStopping { return }
            let now = clock.now()
            switch decoder.decode(topic: message.topic, payload: message.payload, now: now) {
            case .success(.heartbeat) where message.retain:
                // Heartbeats are never retained; a retained one is a leftover, not a contact now.
                metrics.ignored.increment()
            case .success(let input):
                let (outcome, wake, store) = state.withLock { fleet in
                    (fleet.ingest(input, now: now, live: !message.retain), fleet.takeClockNeeded(), fleet.takeStoreNeeded())
                }
                if wake { clockWake.signal() }
                if store { storeWake.signal() }
                switch input {
                case .presence: metrics.ingested[.presence]?.increment()
                case .heartbeat: metrics.ingested[.heartbeat]?.increment()
                case .status: metrics.ingested[.status]?.increment()
                }
                switch outcome {
                case .applied: break
                case .ignored: metrics.ignored.increment()
                case .unannounced: reject(Rejection(reason: .unannouncedSite, topic: message.topic, detail: "no presence from this site yet"), now: now)
                case .overLimit:
                    reject(Rejection(reason: .siteLimit, topic: message.topic, detail: "the fleet holds maxSites (\(configuration.maxSites)) sites"), now: now)
                }
            case .failure(let rejection):
                reject(rejection, now: now)
            }
        }
    }

    private func reject(_ rejection: Rejection, now: Date) {
        metrics.rejected[rejection.reason]?.increment()
        if let line = rejectLog.withLock({ $0.admit(rejection, now: now) }) {
            logger.warning("\(line)")
        }
    }

    /// Evaluates what is due, publishes what changed. Event-driven: it sleeps until the next
    /// instant a site's state changes by itself (the schedule's earliest entry), the summary is
    /// due, or something wakes it (ingest produced output, the publisher finished a batch, the
    /// broker link changed, the queue had news). An idle aggregator does nothing.
    private func clockLoop() async {
        var lastSummary = ContinuousClock.now - configuration.summaryInterval
        var streaming = false  // the previous pass published too
        var droppedCounted = 0
        while !isStopping {
            let now = clock.now()
            // At most 2,000 due evaluations per pass (about 10 ms of work), then publish what
            // changed: when a whole fleet comes due at once (loaded or restored in one burst),
            // ingest and its publishing are delayed by one slice, not by the whole herd.
            // While the broker is unreachable the output stays in the state (events capped),
            // so what happened meanwhile (a deadline passed during a restart) is not lost.
            let connected = client.state.isConnected
            // Output goes to the publish loop one batch at a time: the clock never waits for the
            // broker (a publish held up by a lost connection stalled every evaluation until the
            // link came back), and nothing is taken from the state while a batch is on its way.
            // A standby publishes nothing: what it would have published is dropped (it republishes
            // the whole fleet when it takes the lead).
            let busy = publisherBusy.withLock { $0 }
            let (output, lag, counts, modeChanged, dropped, leading, take) = state.withLock { fleet in
                // The role is read under the state's lock: a lead taken just before would otherwise
                // see its whole-fleet republication (`republishAll`, under this lock) run due here
                // and dropped as a standby's output.
                let leading = leadership.isLeader
                let take = connected && leading && !busy
                fleet.setListening(connected, now: now)
                let (_, lateness) = fleet.runDue(now: now, limit: 2_000)
                _ = fleet.takeClockNeeded()  // this pass takes care of it
                if fleet.takeStoreNeeded() { storeWake.signal() }
                if !leading { fleet.dropOutput() }
                let output = take ? fleet.takeOutput(limit: 5_000) : FleetOutput()
                return (output, lateness, (fleet.modes, fleet.liveness), fleet.takeModesMoved(), fleet.droppedEvents, leading, take)
            }
            if dropped > droppedCounted {
                metrics.eventsDropped.increment(by: dropped - droppedCounted)
                droppedCounted = dropped
            }
            metrics.evaluationLag.record(duration: lag)
            metrics.record(modes: counts.0, liveness: counts.1)
            // A site that changed mode (or got its first) may let (or stop letting) its operations run.
            queue.sitesMoved(modeChanged)
            var published = false
            if !leading { _ = queue.events.take() }
            if take {
                var batch = PublishBatch(output: output)
                batch.output.events += queue.events.take()
                if leadership.isReplicated {
                    let epoch = leadership.epoch
                    for index in batch.output.events.indices { batch.output.events[index].epoch = epoch }
                }
                if ContinuousClock.now - lastSummary >= configuration.summaryInterval {
                    batch.summary = state.withLock { fleet in fleet.takeSummaryChange() ? fleet.summary(now: clock.now()) : nil }
                    if batch.summary != nil { lastSummary = ContinuousClock.now }
                }
                if !batch.output.isEmpty || batch.summary != nil {
                    publisherBusy.withLock { $0 = true }
                    outbox.continuation.yield(batch)
                    published = true
                }
            }
            // The next instant it must look by itself: the schedule's first entry; the summary
            // when it has changed (at most once per summaryInterval). Until then only a wake-up.
            let summaryDue = lastSummary + configuration.summaryInterval
            let planned = state.withLock { fleet -> Date? in
                var next = fleet.nextWake
                // Only when it could publish now: a busy publisher or a lost link wakes it when they change.
                if fleet.summaryPending, take {
                    let due = clock.now().addingTimeInterval(max(0, (summaryDue - ContinuousClock.now).secondsValue))
                    next = min(next ?? due, due)
                }
                fleet.plannedWake = next
                return next
            }
            if isStopping { return }
            // After publishing, a moment to let output gather (a burst of heartbeats is one batch).
            // While output keeps coming (a reconnect storm: two events and a view or two for
            // every operation), 20 ms: each batch costs an event-store transaction, a hop to its
            // queue and a round trip to the broker, whatever its size.
            if published { try? await Task.sleep(for: .milliseconds(streaming ? 20 : 5)) }
            streaming = published
            await clockWake.wait(until: planned.map { ContinuousClock.now + .milliseconds(max(0, Int64($0.timeIntervalSinceNow * 1000))) })
        }
    }

    /// Publishes what the clock loop hands over, batch by batch.
    private func publishLoop() async {
        for await batch in outbox.stream {
            if !batch.output.isEmpty { await publish(batch.output) }
            if let summary = batch.summary { await send(.fleetStatus, summary) }
            publisherBusy.withLock { $0 = false }
            clockWake.signal()  // whatever gathered meanwhile can go
        }
    }

    // MARK: - The queue, for the operator surfaces

    /// Submits an operation (validated against the catalog and the executors).
    public func submit(_ request: SubmissionRequest) throws(QueueError) -> SubmissionResult { try queue.submit(request) }

    public func cancel(id: String, by who: String) throws(QueueError) -> DeferredOperation { try queue.cancel(id: id, by: who) }

    public func retry(id: String, by who: String) throws(QueueError) -> DeferredOperation { try queue.retry(id: id, by: who) }

    public func release(id: String, by who: String) throws(QueueError) -> DeferredOperation { try queue.release(id: id, by: who) }

    public func cancelAll(_ filter: OperationFilter, by who: String) throws(QueueError) -> [DeferredOperation] {
        try queue.cancelAll(filter, by: who)
    }

    /// Operations matching `filter`, oldest first after `cursor`, or newest first before it.
    public func operations(_ filter: OperationFilter, cursor: Int64?, limit: Int, newestFirst: Bool) throws -> OperationPage {
        newestFirst ? try queue.store.listNewestFirst(filter, before: cursor, limit: limit) : try queue.store.list(filter, after: cursor, limit: limit)
    }

    /// One operation, by id.
    public func operation(id: String) throws -> DeferredOperation? { try queue.store.operation(id: id) }

    // MARK: - Rollouts

    public func createRollout(_ request: RolloutRequest, by who: String) throws(QueueError) -> (Rollout, existing: Bool) {
        try rollouts.create(request, by: who)
    }

    public func rollouts(limit: Int) throws(QueueError) -> [Rollout] { try rollouts.list(limit: limit) }

    public func rollout(id: String) throws(QueueError) -> Rollout? { try rollouts.rollout(id: id) }

    public func rollout(_ action: String, id: String, by who: String) throws(QueueError) -> Rollout {
        guard let action = RolloutEngine.Action(rawValue: action) else { throw QueueError(.notFound, "no rollout action \(action)") }
        return try rollouts.act(action, id: id, by: who)
    }

    // MARK: - The audit log

    /// Records a change asked of the API.
    public func audit(_ entry: AuditEntry) throws { try auditStore.append(entry) }

    /// The audit log, newest first, older than `before` (an entry's id).
    public func auditLog(before: Int64?, limit: Int, principal: String?) throws -> [AuditEntry] {
        try auditStore.entries(before: before, limit: limit, principal: principal)
    }

    /// Removes a decommissioned site: refused (conflict) while operations wait for it or run
    /// there, unless `force`, which cancels the waiting ones (a running one is never cut short).
    /// Its record goes from the store, its retained view is cleared, and its retained presence
    /// no longer makes it again; a live presence from its agent does.
    public func forget(site text: String, force: Bool, by who: String) throws(QueueError) -> SiteForgotten {
        let site: SiteID
        do { site = try SiteID(text) } catch { throw QueueError(.invalid, "site: \(error.description)") }
        guard state.withLock({ $0.records[site] != nil }) else { throw QueueError(.notFound, "no site \(site)") }
        let open = try queue.open(at: site)
        if let running = open.first(where: { $0.state == .dispatching }) {
            throw QueueError(.conflict, "operation \(running.id) is running at \(site); forget the site once it has ended")
        }
        var cancelled: [DeferredOperation] = []
        if !open.isEmpty {
            guard force else {
                throw QueueError(.conflict, "\(open.count) operation(s) wait for \(site); cancel them, or forget it with force")
            }
            cancelled = try cancelAll(OperationFilter(site: site), by: who)
        }
        let now = clock.now()
        do {
            try store.forget(site, at: now)
        } catch {
            throw QueueError(.unavailable, "the site could not be removed from the store: \(error)")
        }
        state.withLock { _ = $0.forget(site, now: now, note: "forgotten by \(who)") }
        logger.notice("site \(site) forgotten by \(who)", metadata: ["cancelled": "\(cancelled.count)"])
        return SiteForgotten(site: site, forgottenAt: now, cancelled: cancelled.map(\.id))
    }

    /// Writes changed records: woken when records become dirty, then every `flushInterval` while
    /// they keep changing (a batch per interval); idle, it sleeps.
    private func storeLoop() async {
        var lastSweep = ContinuousClock.now
        while !isStopping {
            // Records changed in ways that need not be written at once go out every minute.
            if ContinuousClock.now - lastSweep >= .seconds(60) {
                lastSweep = ContinuousClock.now
                state.withLock { _ = $0.sweepUnwritten() }
            }
            if !state.withLock({ $0.hasDirty }) { await storeWake.wait(until: lastSweep + .seconds(60)) }
            if isStopping { return }
            try? await Task.sleep(for: configuration.flushInterval)
            // Only the leader writes site records (a standby's are written when it takes the lead).
            if !leadership.isLeader { continue }
            // SQLite blocks: on a thread of its own, not on the cooperative pool ingest runs on.
            await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
                onOwnThread {
                    self.flush()
                    done.resume()
                }
            }
        }
    }

    /// The broker refused the aggregator in a way no retry mends (its credentials); the
    /// process ends with status 1 so that its supervisor shows and handles it.
    struct BrokerRefused: Error, CustomStringConvertible {
        var reason: MQTTError
        var description: String { "the broker refuses the aggregator: \(reason)" }
    }

    private func presenceLoop() async throws {
        // (Re)announce the aggregator whenever a connection comes up: a broker restart
        // without persistence forgets retained messages.
        var tlsFailures = 0
        for await state in client.stateUpdates() {
            if isStopping { return }
            switch state {
            case .disconnected(reason: .notAuthorized(let why)?):
                throw BrokerRefused(reason: .notAuthorized(why))
            case .disconnected(reason: .invalidConfiguration(let why)?):
                throw BrokerRefused(reason: .invalidConfiguration(why))
            case .disconnected(reason: .tls(let why)?):
                // A certificate that is not trusted stays so; a handshake cut by the network may not.
                tlsFailures += 1
                if tlsFailures >= 5 { throw BrokerRefused(reason: .tls(why)) }
            case .connected:
                tlsFailures = 0
            default:
                break
            }
            // Here as well as in the clock loop: the clock loop may be waiting for a publish
            // that the lost connection holds up, and must not miss when the link went.
            self.state.withLock { $0.setListening(state.isConnected, now: clock.now()) }
            clockWake.signal()  // output held while the link was down can go, or must wait
            if state.isConnected {
                await announce(.online, reason: nil)
                // Everything published so far may be gone with the broker: republish the fleet,
                // through the schedule (in slices, never older than what the clock loop sends).
                self.state.withLock { $0.republishAll(now: clock.now()) }
                clockWake.signal()
            }
        }
    }

    /// Replicas: this replica's presence again at every change of its role.
    /// The leader moves its rollouts on about once a second (their waves follow operations that
    /// take seconds to minutes); the store calls block, so each look runs on a thread of its own.
    /// With none unfinished, a single aggregator waits for an operator's change here (and looks
    /// every 30 s, for a database written by another process); replicas look every second, since
    /// a rollout may be created through another replica.
    private func rolloutLoop() async {
        let rollouts = rollouts
        while !isStopping {
            var unfinished = true
            if leadership.isLeader {
                unfinished = await withCheckedContinuation { (done: CheckedContinuation<Bool, Never>) in
                    onOwnThread { done.resume(returning: rollouts.tick()) }
                }
            }
            if unfinished || leadership.isReplicated {
                try? await Task.sleep(for: .seconds(1))
            } else {
                await rollouts.changed.wait(until: .now + .seconds(30))
            }
        }
    }

    private func roleLoop() async {
        while !isStopping {
            await roleAnnounced.wait(until: nil)
            if isStopping { return }
            if client.state.isConnected { await announce(.online, reason: nil) }
        }
    }

    /// Writes changed records in batches of 2,000, taking each batch from the state
    /// just before writing it (a whole fleet's records are never copied at once).
    private func flush() {
        let revived = state.withLock { $0.takeRevived() }
        do {
            try store.revive(revived)
        } catch {
            logger.error("cannot drop the tombstones of \(revived.count) site(s) that came back: \(error)")
        }
        while true {
            let dirty = state.withLock { $0.takeDirty(limit: 2_000) }
            if dirty.isEmpty { return }
            do {
                try store.save(dirty, at: clock.now())
                storeHealth.withLock { $0.failingSince = nil }
            } catch {
                metrics.storeFailures.increment()
                // Logged at a limited rate: a full disk fails every flush.
                let now = clock.now()
                let line = storeHealth.withLock { health -> String? in
                    if health.failingSince == nil { health.failingSince = now }
                    health.suppressed += 1
                    guard health.loggedAt.map({ now.timeIntervalSince($0) >= 60 }) ?? true else { return nil }
                    defer { health.loggedAt = now; health.suppressed = 0 }
                    return health.suppressed > 1 ? " (\(health.suppressed - 1) more failed flushes since the last line)" : ""
                }
                if let line { logger.error("cannot save \(dirty.count) site record(s): \(error)\(line)") }
                // Keep them for the next flush: nothing is lost while the process lives.
                state.withLock { fleet in fleet.markDirty(dirty.map(\.site)) }
                return
            }
        }
    }

    private func finish() async {
        outbox.continuation.finish()
        if leadership.isLeader {
            state.withLock { _ = $0.sweepUnwritten() }  // everything, on the way out
            flush()
        }
        // Say goodbye if the broker takes it within 2 s; a broker that is gone must not keep the
        // process from stopping (its Last Will says `lost` instead).
        let client = client
        let said = Mutex(false)
        let goodbye = Task {
            await self.announce(.offline, reason: .shutdown)
            said.withLock { $0 = true }
        }
        let deadline = ContinuousClock.now + .seconds(2)
        while ContinuousClock.now < deadline, client.state.isConnected, !said.withLock({ $0 }) {
            try? await Task.sleep(for: .milliseconds(20))
        }
        await client.shutdown()  // fails a publish still waiting for its acknowledgement
        await goodbye.value
        logger.info("aggregator stopped")
    }

    // MARK: - Publishing

    /// The aggregator's presence; with replicas, this replica's on its own topic (with its role
    /// and the epoch), and the leader's on the aggregator's topic too.
    private func announce(_ presenceState: PresenceState, reason: OfflineReason?) async {
        var presence = Presence(
            site: Self.aggregatorID, state: presenceState, reason: reason, session: session,
            agent: AgentInfo(version: EdgeFleetVersion.current, host: Self.hostName()), at: clock.now())
        guard leadership.isReplicated, let replica = try? SiteID(leadership.replicaID) else {
            await send(.aggregatorPresence, presence)
            return
        }
        presence.replica = leadership.replicaID
        presence.role = leadership.role.rawValue
        presence.epoch = leadership.epoch
        await send(.replicaPresence(replica), presence)
        // The aggregator's topic: the leader says it is there; a leader going away says nothing
        // there (the next leader announces itself within the lease).
        if leadership.isLeader && presenceState == .online { await send(.aggregatorPresence, presence) }
    }

    /// Views (one per site: the state makes each site's newest when it is taken), then events in order.
    private func publish(_ output: FleetOutput) async {
        // A slice at a time, acknowledgements awaited together (a task per view, 64 in flight,
        // cost a task's creation and scheduling per view: in a reconnect storm each operation
        // republishes its site's view about twice).
        await sendInOrder(output.views) { (.siteView($0.site), try FleetJSON.encode($0)) }
        for site in output.cleared {
            do {
                try await client.clear(.siteView(site), in: configuration.topics)
            } catch {
                metrics.publishFailures.increment()
                logger.warning("cannot clear the retained view of forgotten site \(site): \(error)")
            }
        }
        // Stored first, so that each event goes out with its id (a reader that replays the
        // stored ones and then follows the topic skips by id what it has already seen).
        var events = output.events
        if !events.isEmpty, !leadership.isReplicated || leadership.isLeader {
            let store = eventStore
            let unstored = events
            do {
                events = try await offload { try store.append(unstored) }
                metrics.eventsStored.increment(by: events.count)
            } catch {
                metrics.eventStoreFailures.increment()
                logger.warning("\(unstored.count) event(s) could not be stored (published without an id): \(error)")
            }
        }
        await sendInOrder(events) { (.fleetEvents, try FleetJSON.encode($0)) }
    }

    /// Items in order, their acknowledgements awaited together a slice at a time: a burst (a
    /// fleet's first modes as it comes online) costs a round trip per slice, not per message.
    /// Each slice is encoded just before it goes: encoded all at once, the first views and events
    /// of 100,000 sites held about 65 MB of payloads at the aggregator's peak (the 100,000-site
    /// benchmark went from 253 MB to 318 MB, over its 300 MB target).
    private func sendInOrder<Item>(_ items: [Item], _ message: (Item) throws -> (topic: FleetTopic, payload: [UInt8])) async {
        var start = 0
        while start < items.count {
            if leadership.isReplicated, !leadership.isLeader { return }
            let end = min(items.count, start + 256)
            var slice: [(topic: FleetTopic, payload: [UInt8])] = []
            slice.reserveCapacity(end - start)
            for item in items[start..<end] {
                guard let encoded = try? message(item) else {
                    metrics.publishFailures.increment()
                    continue
                }
                slice.append(encoded)
            }
            start = end
            let began = ContinuousClock.now
            let outcomes = await client.publishInOrder(slice, in: configuration.topics)
            let failed = outcomes.compactMap { $0 }
            if failed.isEmpty {
                metrics.publishLatency.record(duration: ContinuousClock.now - began)
            } else {
                metrics.publishFailures.increment(by: failed.count)
                logger.debug("\(failed.count) message(s) not published: \(failed[0])")
            }
        }
    }

    /// Event storage and retention run on queues of their own: off the cooperative pool (the
    /// calls block), and not on the global queue either, whose threads other blocking work (the
    /// executors' waits) may all hold; a serial queue gets a thread of its own when it has work.
    private static let eventQueue = DispatchQueue(label: "edgefleet.event-store")
    private static let retentionQueue = DispatchQueue(label: "edgefleet.event-retention")

    private func offload<T: Sendable>(on queue: DispatchQueue = eventQueue, _ work: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            queue.async { continuation.resume(with: Result { try work() }) }
        }
    }

    /// Removes stored events past the retention: a minute after the start, then hourly (the
    /// leader only, with replicas).
    private func retentionLoop() async {
        var wait: Duration = .seconds(60)
        while !isStopping {
            try? await Task.sleep(for: wait)
            wait = .seconds(3_600)
            if isStopping { return }
            guard !leadership.isReplicated || leadership.isLeader else { continue }
            let store = eventStore
            let cutoff = clock.now().addingTimeInterval(-configuration.eventRetention.secondsValue)
            do {
                let removed = try await offload(on: Self.retentionQueue) { try store.prune(before: cutoff) }
                if removed > 0 { logger.info("removed \(removed) event(s) older than \(RFC3339.format(cutoff))") }
            } catch {
                logger.warning("old events could not be removed: \(error)")
            }
        }
    }

    // MARK: - The fleet's history

    /// Stored events, oldest first.
    public func storedEvents(_ query: EventQuery) throws -> [FleetEvent] { try eventStore.events(query) }

    /// A site's history over the window of `length` ending now.
    public func siteHistory(_ site: SiteID, length: Duration) throws -> SiteHistory {
        let window = try HistoryWindow.ending(at: clock.now(), length: length, maximum: configuration.eventRetention)
        return try eventStore.siteHistory(site, window: window)
    }

    /// The fleet over the window of `length` ending now.
    public func fleetHistory(length: Duration, top: Int, buckets: Int) throws -> FleetHistory {
        let window = try HistoryWindow.ending(at: clock.now(), length: length, maximum: configuration.eventRetention)
        return try eventStore.fleetHistory(window: window, top: top, buckets: buckets)
    }

    /// Publishes with the contract's QoS and retain flag for the topic.
    private func send<T: Encodable>(_ topic: FleetTopic, _ value: T) async {
        // A replica that stopped leading while a batch was on its way sends none of the rest: the
        // next leader may already publish (epochs on events never go back).
        if case .replicaPresence = topic {} else if leadership.isReplicated, !leadership.isLeader { return }
        let started = ContinuousClock.now
        do {
            try await client.publish(topic, in: configuration.topics, payload: FleetJSON.encode(value))
            metrics.publishLatency.record(duration: ContinuousClock.now - started)
        } catch {
            metrics.publishFailures.increment()
            logger.debug("publish to \(topic) failed: \(error)")
        }
    }
}

/// What the clock loop hands to the publish loop.
struct PublishBatch: Sendable {
    var output: FleetOutput
    var summary: FleetSummary?
}

/// Logs rejected messages at a limited rate: the first of each reason, then at most one
/// line per reason every 10 s with how many were suppressed.
struct RejectLog {
    var last: [RejectReason: Date] = [:]
    var suppressed: [RejectReason: Int] = [:]

    mutating func admit(_ rejection: Rejection, now: Date) -> String? {
        if let last = last[rejection.reason], now.timeIntervalSince(last) < 10 {
            suppressed[rejection.reason, default: 0] += 1
            return nil
        }
        last[rejection.reason] = now
        let count = suppressed.removeValue(forKey: rejection.reason) ?? 0
        return "rejected \(rejection)" + (count > 0 ? " (and \(count) more of this kind in the last 10 s)" : "")
    }
}

/// The fleet's state behind one lock, shared by the loops, the operator surfaces and the queue's lookup.
/// (A `PlainLock`: the ingest, clock and dispatch paths and the executors' threads all take it.)
final class SharedFleet: Sendable {
    private let lock: PlainLock<FleetState>

    init(_ fleet: FleetState) { lock = PlainLock(fleet) }

    func withLock<Result>(_ body: (inout FleetState) -> Result) -> Result { lock.withLock(body) }
}
