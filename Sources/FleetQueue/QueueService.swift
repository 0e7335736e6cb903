import Dispatch
public import FleetCore
public import Logging
public import ServiceLifecycle
import Synchronization

#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif

/// What the queue asks of whoever knows the fleet: a site's situation now (nil: never heard
/// from). The queue knows nothing else of fleet state.
public typealias SiteSituationLookup = @Sendable (SiteID, Date) -> (submission: SiteSituation, dispatch: DispatchSituation)?

/// The same for many sites at once (the dispatcher's full pass): those it knows.
public typealias DispatchSituationsLookup = @Sendable (Set<SiteID>, Date) -> [SiteID: DispatchSituation]

/// How the queue runs, as the aggregator's configuration gives it.
public struct QueueSettings: Sendable {
    public var executors: [OperationKind: ExecutorTemplate]
    public var dispatch: DispatchSettings
    public var maxAttempts: Int
    /// How often a pass runs while operations wait (a site turns stable, a retry's time comes).
    public var dispatchInterval: Duration

    public init(executors: [OperationKind: ExecutorTemplate], dispatch: DispatchSettings, maxAttempts: Int, dispatchInterval: Duration) {
        self.executors = executors
        self.dispatch = dispatch
        self.maxAttempts = maxAttempts
        self.dispatchInterval = dispatchInterval
    }
}

/// The deferred-operation queue as a `Service`: submission and the operator's actions (each an
/// event), and the dispatch loop. It reads sites' situations through `situation`, hands its
/// events to `events` (the aggregator publishes them) and its counts to `countsChanged`.
public final class QueueService: Service, Sendable {
    public let queue: DeferredQueue
    public let dispatcher: Dispatcher
    /// Transitions waiting to be published.
    public let events: QueueEvents
    let settings: QueueSettings
    let logger: Logger
    let metrics: QueueMetrics
    let clock: WallClock
    let situation: SiteSituationLookup
    let situations: DispatchSituationsLookup
    let countsChanged: @Sendable (QueueCountsChange) -> Void
    let wake = Wakeup()
    let stopping = Mutex(false)
    /// Only the leader dispatches (replicas on PostgreSQL); a sole aggregator always leads.
    public let leadership: Leadership

    public init(
        store: any OperationStore, settings: QueueSettings, logger: Logger, metrics: QueueMetrics = QueueMetrics(), clock: WallClock = .system,
        situation: @escaping SiteSituationLookup, situations: DispatchSituationsLookup? = nil, countsChanged: @escaping @Sendable (QueueCountsChange) -> Void = { _ in },
        eventAdded: @escaping @Sendable () -> Void = {}, leadership: Leadership? = nil
    ) {
        self.leadership = leadership ?? .sole(replicaID: "aggregator", logger: logger)
        self.settings = settings
        self.logger = logger
        self.metrics = metrics
        self.clock = clock
        self.situation = situation
        self.situations =
            situations ?? { sites, now in
                var found: [SiteID: DispatchSituation] = [:]
                for site in sites { found[site] = situation(site, now)?.dispatch }
                return found
            }
        self.countsChanged = countsChanged
        let events = QueueEvents(onAdd: eventAdded)
        self.events = events
        queue = DeferredQueue(store: store, executors: settings.executors, defaultMaxAttempts: settings.maxAttempts)
        let wake = wake
        dispatcher = Dispatcher(
            store: store, executors: settings.executors, settings: settings.dispatch, logger: logger,
            emit: { events.add($0) }, dispatched: { metrics.dispatchLatency.record(duration: $0) }, finished: { wake.signal() },
            current: { site in situation(site, clock.now())?.dispatch })
    }

    public var store: any OperationStore { queue.store }

    /// Recovers what a killed predecessor left running, then dispatches until shutdown; at
    /// shutdown, running executors are stopped and their operations queued again.
    public func run() async throws {
        let (dispatcher, wake, logger) = (dispatcher, wake, logger)
        leadership.onChange { role, epoch in
            if role == .standby {
                // A deposed leader stops its executors at once: their outcomes would be refused
                // (fenced), and the next leader runs their operations again.
                let stopped = dispatcher.standDown()
                if stopped > 0 { logger.warning("not the leader any more (epoch \(epoch)): \(stopped) running executor(s) stopped") }
            }
            wake.signal()
        }
        // A sole aggregator recovers before anything else, and a failure ends the start (as before).
        if !leadership.isReplicated { try await recover() }
        await withGracefulShutdownHandler {
            await dispatchLoop()
        } onGracefulShutdown: {
            self.stopping.withLock { $0 = true }
            self.wake.signal()
        }
        // Not in this task: cancelled (a group cancelled), its sleeps would return at once and
        // the wait for executors to stop would spin.
        await Task { await dispatcher.shutdown() }.value
    }

    /// Ends executors a killed predecessor left running and queues their operations again.
    /// It blocks while leftovers end: not on the cooperative pool.
    public func recover(periodic: Bool = false) async throws {
        let dispatcher = dispatcher
        let now = clock.now()
        try await withCheckedThrowingContinuation { (done: CheckedContinuation<Void, any Error>) in
            onOwnThread { done.resume(with: Result { try dispatcher.recover(now: now, periodic: periodic) }) }
        }
    }

    var isStopping: Bool { stopping.withLock { $0 } || Task.isCancelled }

    /// Any site may have changed mode: every site is looked at again.
    public func modesChanged() {
        dispatcher.modesChanged()
        wake.signal()
    }

    /// These sites changed mode: they may let (or stop letting) their operations run.
    public func sitesMoved(_ sites: Set<SiteID>) {
        guard !sites.isEmpty else { return }
        dispatcher.sitesMoved(sites)
        wake.signal()
    }

    /// Dispatch passes, event-driven: after a submission or an operator's action, when an
    /// executor finished, when a site changed mode; while operations wait, also every
    /// `dispatchInterval` (a site turns stable, a retry's or a notBefore's time comes); and
    /// queue counts at most 4 times a second after a change, and every 2 s in any case
    /// (another writer of the database changes them without an event here).
    private func dispatchLoop() async {
        var lastCounts = ContinuousClock.now - .seconds(10)
        var lastFullCount = lastCounts
        var countsStale = true
        // The queue's counts as of the last count, and their totals by state: between full
        // recounts (every 2 s, for other writers of the database) only the sites this replica's
        // own changes touched are counted again. (A recount of the whole queue 4 times a second,
        // and a comparison of every site's counts after it, was a tenth of the aggregator's CPU
        // in a reconnect storm of 10,000 operations.)
        var counts: [SiteID: [OperationState: Int]] = [:]
        var totals: [OperationState: Int] = [:]
        var touched = Set<SiteID>()
        var wholeStale = false
        var queueEmpty = false  // nothing queued, dispatching or blocked at the last count
        // The epoch under which this replica recovered and dispatches (nil: not leading).
        var ledEpoch: Int64? = leadership.isReplicated ? nil : leadership.epoch
        var lastLapsedLook = ContinuousClock.now
        while !isStopping {
            let now = clock.now()
            do {
                if let fence = leadership.fence {
                    if ledEpoch != fence.epoch {
                        // A new lead: what the previous leader left dispatching is looked at first.
                        try await recover()
                        dispatcher.resume()
                        dispatcher.invalidate()
                        ledEpoch = fence.epoch
                        lastLapsedLook = ContinuousClock.now
                    } else if leadership.isReplicated, ContinuousClock.now - lastLapsedLook >= .seconds(5) {
                        // Claims of another replica's runs that have run out since (its executor's
                        // own time limit passed): queued again.
                        lastLapsedLook = ContinuousClock.now
                        try await recover(periodic: true)
                    }
                    try dispatcher.tick(now: now) { sites in self.situations(sites, now) }
                    if leadership.isReplicated {
                        // Operators' changes made through standbys, to publish.
                        for event in try queue.store.takeQueuedEvents(limit: 1_000) { events.add(event) }
                    }
                } else {
                    ledEpoch = nil
                }
                let moved = events.takeTouched()
                if !moved.sites.isEmpty || moved.whole {
                    touched.formUnion(moved.sites)
                    countsStale = true
                }
                if moved.whole { wholeStale = true }
                let sinceCount = ContinuousClock.now - lastCounts
                let fullDue = ContinuousClock.now - lastFullCount >= (queueEmpty ? .seconds(10) : .seconds(2))
                if fullDue || (countsStale && sinceCount >= .milliseconds(250) && (wholeStale || touched.count > 1_000)) {
                    wholeStale = false
                    lastCounts = ContinuousClock.now
                    lastFullCount = lastCounts
                    countsStale = false
                    touched.removeAll()
                    counts = try queue.store.counts()
                    totals = [:]
                    for byState in counts.values { for (state, n) in byState { totals[state, default: 0] += n } }
                    countsChanged(QueueCountsChange(sites: nil, counts: counts, totals: totals))
                } else if countsStale && sinceCount >= .milliseconds(250) {
                    lastCounts = ContinuousClock.now
                    countsStale = false
                    let fresh = try queue.store.counts(sites: touched)
                    for site in touched {
                        for (state, n) in counts[site] ?? [:] { totals[state, default: 0] -= n }
                        counts[site] = fresh[site]
                        for (state, n) in fresh[site] ?? [:] { totals[state, default: 0] += n }
                    }
                    countsChanged(QueueCountsChange(sites: touched, counts: fresh, totals: totals))
                    touched.removeAll()
                }
                queueEmpty = (totals[.queued] ?? 0) + (totals[.dispatching] ?? 0) + (totals[.blocked] ?? 0) == 0
                metrics.record(totals: totals)
            } catch {
                logger.error("dispatch pass failed: \(error)")
            }
            if isStopping { return }
            // Another writer's changes are looked for every 2 s while there is work, every 10 s when idle.
            var deadline = lastFullCount + (queueEmpty ? .seconds(10) : .seconds(2))
            if countsStale { deadline = min(deadline, lastCounts + .milliseconds(250)) }
            if dispatcher.hasWaiting { deadline = min(deadline, .now + settings.dispatchInterval) }
            await wake.wait(until: deadline)
        }
    }

    // MARK: - Submission and the operator's actions

    /// Submits an operation (validated against the catalog and the executors).
    public func submit(_ request: SubmissionRequest) throws(QueueError) -> SubmissionResult {
        let now = clock.now()
        let situation = (try? SiteID(request.site)).flatMap { site in self.situation(site, now)?.submission }
        let result = try queue.submit(request, situation: situation, now: now)
        if !result.existing { dispatcher.added(result.operation, superseded: result.superseded) }
        wake.signal()
        if !result.existing {
            for id in result.superseded {
                announce(FleetEvent(type: .operationSuperseded, site: result.operation.site, at: now, operationID: id, note: "superseded by \(result.operation.id)"))
            }
            announce(
                FleetEvent(
                    type: result.operation.state == .blocked ? .operationBlocked : .operationQueued, site: result.operation.site, at: now,
                    operationID: result.operation.id, kind: result.operation.kind, note: result.reason))
        }
        return result
    }

    public func cancel(id: String, by who: String) throws(QueueError) -> DeferredOperation {
        let operation = try queue.cancel(id: id, by: who, now: clock.now())
        changed([operation], .operationCancelled, note: "by \(who)")
        return operation
    }

    public func retry(id: String, by who: String) throws(QueueError) -> DeferredOperation {
        let operation = try queue.retry(id: id, by: who, now: clock.now())
        changed([operation], .operationQueued, note: "retried by \(who)")
        return operation
    }

    public func release(id: String, by who: String) throws(QueueError) -> DeferredOperation {
        let operation = try queue.release(id: id, by: who, now: clock.now())
        changed([operation], .operationQueued, note: "released by \(who)")
        return operation
    }

    public func cancelAll(_ filter: OperationFilter, by who: String) throws(QueueError) -> [DeferredOperation] {
        let cancelled = try queue.cancelAll(filter, by: who, now: clock.now())
        changed(cancelled, .operationCancelled, note: "by \(who) (bulk)")
        return cancelled
    }

    /// The operations waiting for a site or running there.
    public func open(at site: SiteID) throws(QueueError) -> [DeferredOperation] {
        do {
            return try queue.store.all(OperationFilter(site: site, states: [.queued, .dispatching, .blocked]))
        } catch {
            throw QueueError(.unavailable, "the queue could not be read: \(error)")
        }
    }

    /// An operator changed the queue: the dispatcher reads it again, and each change is an event.
    private func changed(_ operations: [DeferredOperation], _ type: FleetEventType, note: String) {
        dispatcher.invalidate()
        wake.signal()
        let now = clock.now()
        for operation in operations {
            announce(FleetEvent(type: type, site: operation.site, at: now, operationID: operation.id, kind: operation.kind, note: note))
        }
    }

    /// An operator's change as an event: published by this replica when it leads; otherwise left
    /// in the database's outbox for the leader, which publishes it within a second.
    public func announce(_ event: FleetEvent) {
        if leadership.isLeader || !leadership.isReplicated {
            events.add(event)
            return
        }
        do {
            try queue.store.enqueueEvent(event)
        } catch {
            logger.warning("the event of operation \(event.operationID ?? "?") could not be left for the leader: \(error)")
        }
    }
}

/// A change of the queue's counts for the fleet's views and summary.
public struct QueueCountsChange: Sendable {
    /// The sites whose counts are given (a site among them missing from `counts` has none now);
    /// nil: every site's (a full count: a site missing from `counts` has none).
    public var sites: Set<SiteID>?
    public var counts: [SiteID: [OperationState: Int]]
    /// The whole queue's, by state.
    public var totals: [OperationState: Int]

    public init(sites: Set<SiteID>?, counts: [SiteID: [OperationState: Int]], totals: [OperationState: Int]) {
        self.sites = sites
        self.counts = counts
        self.totals = totals
    }
}

/// Events from the queue and the dispatcher, waiting for the aggregator to publish them.
public final class QueueEvents: Sendable {
    /// The events, and the sites they touched since the dispatch loop last looked.
    /// (`whole`: an event without a site: the whole queue is counted again.)
    private let state = Mutex<(events: [FleetEvent], touched: Set<SiteID>, whole: Bool)>(([], [], false))
    /// Called after each event is added (wakes the aggregator's clock loop to publish it).
    private let onAdd: @Sendable () -> Void

    public init(onAdd: @escaping @Sendable () -> Void = {}) {
        self.onAdd = onAdd
    }

    public func add(_ event: FleetEvent) {
        state.withLock {
            $0.events.append(event)
            if let site = event.site { $0.touched.insert(site) } else { $0.whole = true }
        }
        onAdd()
    }

    public func take() -> [FleetEvent] {
        state.withLock { s in
            defer { s.events.removeAll() }
            return s.events
        }
    }

    /// The sites of the events since the last call (their queue counts may have moved), and
    /// whether one had no site (then any count may have).
    func takeTouched() -> (sites: Set<SiteID>, whole: Bool) {
        state.withLock { s in
            defer {
                s.touched.removeAll(keepingCapacity: true)
                s.whole = false
            }
            return (s.touched, s.whole)
        }
    }
}
