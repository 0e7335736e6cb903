import Subprocesses
public import FleetCore
public import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif

/// What the dispatcher needs to know about a site now.
public struct DispatchSituation: Sendable, Hashable {
    public var mode: ConnectivityMode
    /// Connected for at least `stableFor`.
    public var stable: Bool
    /// Since when operations may run here (connected since + `stableFor`), when connected.
    public var readySince: Date?
    /// When the site passed its deadline, while that is remembered.
    public var expiredAt: Date?
    public var cluster: ClusterInfo?

    public init(mode: ConnectivityMode, stable: Bool, readySince: Date? = nil, expiredAt: Date? = nil, cluster: ClusterInfo?) {
        self.mode = mode
        self.stable = stable
        self.readySince = readySince
        self.expiredAt = expiredAt
        self.cluster = cluster
    }
}

/// How the dispatcher runs operations.
public struct DispatchSettings: Sendable, Hashable {
    /// Operations running at once across the fleet.
    public var limit: Int = 4
    /// The first retry waits this long; each further one twice as long, up to `maximumBackoff`,
    /// with up to 20% jitter either way.
    public var backoff: Duration = .seconds(30)
    public var maximumBackoff: Duration = .seconds(1800)
    /// Bytes of an executor's output kept in the history.
    public var outputBytes: Int = 4096

    public init(limit: Int = 4, backoff: Duration = .seconds(30), maximumBackoff: Duration = .seconds(1800), outputBytes: Int = 4096) {
        self.limit = limit
        self.backoff = backoff
        self.maximumBackoff = maximumBackoff
        self.outputBytes = outputBytes
    }
}

/// Runs queued operations when their site's link is back: per site one at a time, oldest
/// first, only when the site has been connected for `stableFor`, at most `limit` at once
/// across the fleet with waiting sites served round robin (least recently served first). Expires, blocks and retries.
/// Every change is one store transaction, so a crash loses none; an operation found
/// `dispatching` at start-up is queued again (at least once).
public final class Dispatcher: Sendable {
    let store: any OperationStore
    let executors: [OperationKind: ExecutorTemplate]
    let settings: DispatchSettings
    let logger: Logger
    /// Receives every transition as an event.
    let emit: @Sendable (FleetEvent) -> Void
    /// Receives, for each dispatch, how long the operation waited once it could run (its
    /// site ready, its notBefore and backoff over) for a free slot.
    let dispatched: @Sendable (Duration) -> Void
    /// Called when an operation's attempt has ended and its slot is free (wakes the dispatch loop).
    let finished: @Sendable () -> Void

    private struct State {
        var running: Set<SiteID> = []
        /// The process group of each running executor, by operation id.
        var processes: [String: pid_t] = [:]
        /// Shutting down: executors are being stopped, and their operations go back to the queue.
        var stopping = false
        /// Per site, how many of its operations have finished; a pass that read the queue
        /// before one finished must not start the site's next (the finished one may be
        /// queued again for a retry, and it goes first).
        var finished: [SiteID: UInt64] = [:]
        /// Round robin: when each site was last served (a counter). Ready sites are served
        /// least recently served first, so a site that turns ready late (or never was
        /// served) goes before sites that already had a turn.
        var servedAt: [SiteID: UInt64] = [:]
        var turns: UInt64 = 0
        /// The queued and blocked operations, oldest first, as the last pass left them: a pass
        /// reads the store only when this is nil (a submission, an operator's action, a retry
        /// invalidates it) or 2 s old (another writer of the database may have changed it).
        /// With 10,000 operations queued, reading them all was most of a pass.
        var waiting: [DeferredOperation]?
        var waitingReadAt = ContinuousClock.now
        var generation: UInt64 = 0
        /// Sites' situations as the last full pass found them. A pass after an executor finished
        /// reuses them (readiness is checked against `readySince`, so a cached one is never early);
        /// a full pass, which evaluates each site again, follows a change of the queue, a change of
        /// any site's mode (`modesChanged()`), and every second.
        var situations: [SiteID: DispatchSituation] = [:]
        var situationsAt = ContinuousClock.now - .seconds(10)
    }
    private let state = Mutex(State())

    public init(
        store: any OperationStore, executors: [OperationKind: ExecutorTemplate], settings: DispatchSettings, logger: Logger,
        emit: @escaping @Sendable (FleetEvent) -> Void, dispatched: @escaping @Sendable (Duration) -> Void = { _ in },
        finished: @escaping @Sendable () -> Void = {}
    ) {
        self.dispatched = dispatched
        self.finished = finished
        self.store = store
        self.executors = executors
        self.settings = settings
        self.logger = logger
        self.emit = emit
    }

    /// Graceful shutdown: starts nothing more, asks every running executor's process group to
    /// stop (SIGTERM, then SIGKILL after `grace`), and waits until their operations are
    /// recorded (queued again, or finished if they completed meanwhile). Without this a
    /// running `az` would outlive the aggregator and run a second time after a restart.
    public func shutdown(grace: Duration = .seconds(10)) async {
        let groups = state.withLock { s -> [pid_t] in
            s.stopping = true
            return Array(s.processes.values)
        }
        for group in groups { kill(-group, SIGTERM) }
        let deadline = ContinuousClock.now + grace
        while runningCount > 0, ContinuousClock.now < deadline { try? await Task.sleep(for: .milliseconds(20)) }
        for group in state.withLock({ Array($0.processes.values) }) { kill(-group, SIGKILL) }
        let last = ContinuousClock.now + .seconds(5)
        while runningCount > 0, ContinuousClock.now < last { try? await Task.sleep(for: .milliseconds(20)) }
    }

    /// Whether operations wait in the queue (or it is not known: the store was not read since a change).
    public var hasWaiting: Bool { state.withLock { $0.waiting.map { !$0.isEmpty } ?? true } }

    /// How many operations are running now.
    public var runningCount: Int { state.withLock { $0.running.count } }

    /// At start-up: operations left `dispatching` by a crash go back to the queue, each only
    /// once its executor, if the killed aggregator left it running, has been ended (SIGTERM,
    /// SIGKILL after `grace`): one operation never runs twice at the same time. An executor
    /// that cannot be ended leaves its operation `dispatching` (logged); the next start tries again.
    /// Blocks while it waits for leftovers to end: call it off the cooperative pool.
    public func recover(now: Date, grace: Duration = .seconds(10)) throws {
        let boot = ProcessTable.bootID()
        let host = ProcessTable.hostName()
        var runs: [String: ExecutorRun] = [:]
        for run in try store.runs() { runs[run.operationID] = run }
        for operation in try store.all(OperationFilter(states: [.dispatching])) {
            // A record from another boot or host names processes that are not these.
            let run = runs[operation.id].flatMap { $0.bootID == boot && $0.host == host ? $0 : nil }
            let (found, gone) = LeftoverExecutors.end(operationID: operation.id, run: run, grace: grace)
            guard gone else {
                logger.error("operation \(operation.id): its executor from before the restart cannot be ended; it stays dispatching")
                continue
            }
            var note = "the aggregator stopped while this was running; it runs again (at least once)"
            if found > 0 {
                note += "; its executor was still running (\(found) process(es), group \(run.map { "\($0.processGroup)" } ?? "unrecorded")) and was ended first"
            }
            try store.transition(id: operation.id, expected: [.dispatching], to: .queued, at: now, note: note, update: { _ in })
            try? store.forgetRun(operationID: operation.id)
            emit(FleetEvent(type: .operationQueued, site: operation.site, at: now, operationID: operation.id, kind: operation.kind, note: note))
            logger.warning("operation \(operation.id) was running when the aggregator stopped; queued again", metadata: ["leftovers": "\(found)"])
        }
        // Records of runs whose outcome was written but whose record was not yet forgotten.
        let stillDispatching = Set(try store.all(OperationFilter(states: [.dispatching])).map(\.id))
        for id in runs.keys where !stillDispatching.contains(id) { try? store.forgetRun(operationID: id) }
    }

    /// One pass: expire, block, then start what may start. `situation` answers for a site
    /// the aggregator knows (nil: never heard from).
    /// Forgets the operations the last pass read: the next pass reads the store again. For
    /// whoever changes the queue (submission, cancel, retry, release, another writer).
    public func invalidate() {
        state.withLock {
            $0.waiting = nil
            $0.generation += 1
            $0.situations = [:]
        }
    }

    /// Some site changed mode: the next pass evaluates every site it needs again.
    public func modesChanged() {
        state.withLock { $0.situations = [:] }
    }

    public func tick(now: Date, situation lookup: (SiteID) -> DispatchSituation?) throws {
        // Each site's situation once per pass (an evaluation under the fleet's lock), not once
        // per waiting operation: 10,000 queued for 5,000 sites made every pass 10,000 evaluations.
        let cachedSituations = state.withLock { s -> [SiteID: DispatchSituation]? in
            ContinuousClock.now - s.situationsAt < .seconds(1) ? s.situations : nil
        }
        let fresh = cachedSituations == nil
        var known = cachedSituations ?? [:]
        var unknown: Set<SiteID> = []
        func situation(_ site: SiteID) -> DispatchSituation? {
            if let found = known[site] { return found }
            if unknown.contains(site) { return nil }
            guard let found = lookup(site) else {
                unknown.insert(site)
                return nil
            }
            known[site] = found
            return found
        }
        let (finishedBefore, cached, generation) = state.withLock { s in
            let valid = ContinuousClock.now - s.waitingReadAt < .seconds(2) ? s.waiting : nil
            // A quick pass takes the list (and hands it back), so that removing what it starts does
            // not copy 10,000 operations.
            if valid != nil, !fresh { s.waiting = nil }
            return (s.finished, valid, s.generation)
        }
        let readAt = ContinuousClock.now
        var waiting = try cached ?? store.all(OperationFilter(states: [.queued, .blocked]))
        // A quick pass (after an executor finished: the queue and every site's mode as the last
        // full pass left them) only looks for each site's oldest queued operation; expiry and
        // blocking are the full pass's, at most a second later.
        let quick = cached != nil && !fresh
        var remaining: [DeferredOperation] = []  // what stays queued or blocked after a full pass
        var candidates: [SiteID: DeferredOperation] = [:]
        var indices: [String: Int] = [:]  // quick pass: where each candidate is in `waiting`
        if quick {
            for index in waiting.indices where waiting[index].state == .queued {
                let site = waiting[index].site
                guard candidates[site] == nil else { continue }  // the site's oldest goes first
                if let notBefore = waiting[index].notBefore, notBefore > now { continue }  // scheduled later: the next may go
                if let expiresAt = waiting[index].expiresAt, expiresAt <= now { continue }  // the full pass expires it
                candidates[site] = waiting[index]
                indices[waiting[index].id] = index
            }
        } else {
            remaining.reserveCapacity(waiting.count)
        }
        for operation in quick ? [] : waiting {  // oldest first
            if let expiresAt = operation.expiresAt, expiresAt <= now {
                try move(operation, to: .expired, at: now, note: "expired at \(RFC3339.format(expiresAt)) before it could run", event: .operationExpired)
                continue
            }
            guard operation.state == .queued else {  // blocked: only expiry applies
                remaining.append(operation)
                continue
            }
            let site = situation(operation.site)
            // Blocked at a site past its deadline, unless an operator released it after that deadline passed.
            if let site, site.mode == .disconnected,
                !(operation.released == true && (operation.releasedAt ?? .distantPast) >= (site.expiredAt ?? .distantPast))
            {
                try move(operation, to: .blocked, at: now, note: "the site passed its deadline; an operator must release or cancel it", event: .operationBlocked)
                var blocked = operation
                blocked.state = .blocked
                remaining.append(blocked)
                continue
            }
            remaining.append(operation)
            guard candidates[operation.site] == nil else { continue }  // the site's oldest goes first
            if let notBefore = operation.notBefore, notBefore > now { continue }  // scheduled later: the next one may go
            candidates[operation.site] = operation
        }

        // Sites whose oldest operation may run now (no rendering yet: only the few that start are
        // rendered; rendering every ready site's template on every pass was most of a storm).
        let ready = candidates.filter { site, operation in
            guard let s = situation(site), s.mode == .connected, s.stable || (s.readySince.map { $0 <= now } ?? false) else { return false }
            if let next = operation.nextAttemptAt, next > now { return false }  // backing off: the site waits, in order
            return true
        }
        // Round robin: the least recently served first. Only as many as there are free slots are
        // needed (and a few more for sites still waiting for their cluster metadata): picked in one
        // scan, not by sorting every ready site on every pass.
        let (order, free) = state.withLock { s -> ([SiteID], Int) in
            let free = settings.limit - s.running.count
            guard free > 0 else { return ([], 0) }
            var best: [(turn: UInt64, site: SiteID)] = []
            let keep = free + 16
            for site in ready.keys where !s.running.contains(site) {
                let turn = s.servedAt[site] ?? 0
                if best.count == keep, let last = best.last, (last.turn, last.site) < (turn, site) { continue }
                let at = best.firstIndex { ($0.turn, $0.site) > (turn, site) } ?? best.count
                best.insert((turn, site), at: at)
                if best.count > keep { best.removeLast() }
            }
            return (best.map(\.site), free)
        }
        var started = Set<String>()
        var claimed = 0
        var tried = Set(order)
        var queue = order
        var widened = false
        while claimed < free {
            if queue.isEmpty {
                // Every picked site waited for its metadata: look at all the others too (rare).
                guard !widened, ready.count > tried.count else { break }
                widened = true
                queue = state.withLock { s in
                    ready.keys.filter { !tried.contains($0) && !s.running.contains($0) }.sorted { a, b in
                        let (ta, tb) = (s.servedAt[a] ?? 0, s.servedAt[b] ?? 0)
                        return ta != tb ? ta < tb : a < b
                    }
                }
                tried.formUnion(queue)
                continue
            }
            let site = queue.removeFirst()
            guard let operation = ready[site], let s = situation(site) else { continue }
            // Rendered before it is claimed: cluster metadata the site has not reported yet
            // holds the operation (and its site) back instead of failing it.
            var argv: [String]?
            if let template = executors[operation.kind] {
                argv = try? template.render(operationID: operation.id, site: site, params: operation.params, cluster: s.cluster)
                if argv == nil {
                    logger.debug("operation \(operation.id) waits for its site's cluster metadata")
                    continue
                }
            }  // no executor at all: claimed and failed with the reason
            let could = [operation.createdAt, s.readySince, operation.notBefore, operation.nextAttemptAt].compactMap { $0 }.max() ?? now
            if start(operation, argv: argv, finishedBefore: finishedBefore[site] ?? 0, now: now) {
                started.insert(operation.id)
                claimed += 1
                dispatched(.milliseconds(Int64(max(0, now.timeIntervalSince(could)) * 1000)))
            }
        }
        // Keep what is still waiting for the next pass, unless the queue changed meanwhile.
        let left: [DeferredOperation]
        if quick {
            for index in started.compactMap({ indices[$0] }).sorted(by: >) { waiting.remove(at: index) }
            left = waiting
        } else {
            left = started.isEmpty ? remaining : remaining.filter { !started.contains($0.id) }
        }
        state.withLock { s in
            guard s.generation == generation else { return }
            s.waiting = left
            if cached == nil { s.waitingReadAt = readAt }
            // Keep what this pass evaluated (a full pass starts the clock again).
            if fresh || s.situations.isEmpty {
                s.situations = known
                s.situationsAt = ContinuousClock.now
            } else {
                s.situations.merge(known) { _, new in new }
            }
        }
    }

    private func move(_ operation: DeferredOperation, to: OperationState, at now: Date, note: String, event: FleetEventType) throws {
        do {
            let moved = try store.transition(id: operation.id, expected: [operation.state], to: to, at: now, note: note, update: { _ in })
            emit(FleetEvent(type: event, site: moved.site, at: now, operationID: moved.id, kind: moved.kind, note: note))
        } catch OperationStoreError.conflict {
            // An operator acted on it meanwhile; theirs stands.
            invalidate()
        }
    }

    @discardableResult
    private func start(_ operation: DeferredOperation, argv: [String]?, finishedBefore: UInt64, now: Date) -> Bool {
        let claimed = state.withLock { s -> Bool in
            guard !s.stopping, s.running.count < settings.limit, (s.finished[operation.site] ?? 0) == finishedBefore,
                s.running.insert(operation.site).inserted
            else { return false }
            s.turns += 1
            s.servedAt[operation.site] = s.turns
            return true
        }
        guard claimed else { return false }
        let dispatched: DeferredOperation
        do {
            dispatched = try store.transition(
                id: operation.id, expected: [.queued], to: .dispatching, at: now, note: "attempt \(operation.attempts + 1) of \(operation.maxAttempts)",
                update: { $0.attempts += 1 })
        } catch {
            state.withLock { _ = $0.running.remove(operation.site) }
            invalidate()  // moved by someone else: read the queue again
            return false
        }
        emit(FleetEvent(type: .operationDispatched, site: dispatched.site, at: now, operationID: dispatched.id, kind: dispatched.kind))
        Task {
            await self.execute(dispatched, argv: argv)
            self.state.withLock {
                _ = $0.running.remove(dispatched.site)
                $0.finished[dispatched.site, default: 0] += 1
            }
            self.finished()
        }
        return true
    }

    private func execute(_ operation: DeferredOperation, argv: [String]?) async {
        guard let template = executors[operation.kind], let argv else {
            await finish(operation, to: .failed, note: "no executor is configured for \(operation.kind.rawValue)", event: .operationFailed)
            return
        }
        // The aggregator's own EDGEFLEET_* settings are not the executor's business.
        var environment = processEnvironment().filter { !$0.key.hasPrefix("EDGEFLEET_") }
        environment["EDGEFLEET_OPERATION_ID"] = operation.id
        let outcome: CommandOutcome
        do {
            let id = operation.id
            // An az call may print a lot (JSON): read up to 64 MiB, keep the head.
            outcome = try await CommandRunner.run(
                argv, timeout: template.timeout, capture: .head(bytes: settings.outputBytes), environment: environment, maximumOutput: 64 << 20,
                started: { pid in
                    // Durably, so that a restart after a SIGKILL finds it (recover(now:)).
                    do {
                        try self.store.recordRun(LeftoverExecutors.run(operationID: id, pid: pid, startedAt: Date()))
                    } catch {
                        self.logger.error("cannot record the run of operation \(id) (a restart finds it by its environment): \(error)")
                    }
                    let stop = self.state.withLock { s -> Bool in
                        s.processes[id] = pid
                        return s.stopping
                    }
                    if stop { kill(-pid, SIGTERM) }  // started just as the aggregator began to stop
                })
            state.withLock { _ = $0.processes.removeValue(forKey: id) }
        } catch {
            await finish(operation, to: .failed, note: "\(error.description)", event: .operationFailed)
            return
        }
        let output = outcome.output.isEmpty ? "" : "\n" + outcome.output
        if state.withLock({ $0.stopping }), outcome.exitCode != 0 {
            // Stopped by the aggregator's shutdown, not by its own doing: it runs again later.
            await finish(
                operation, to: .queued, note: "the aggregator stopped while this was running; its executor was terminated; it runs again" + output,
                event: .operationQueued, update: { $0.attempts -= 1 })
            return
        }
        switch (outcome.timedOut, outcome.exitCode) {
        case (false, 0?):
            await finish(operation, to: .succeeded, note: "exit 0" + output, event: .operationSucceeded)
        case (true, _), (false, 75?):
            let why = outcome.timedOut ? "timed out after \(DurationFormat.format(template.timeout)); process group killed" : "exit 75 (try again later)"
            if operation.attempts < operation.maxAttempts {
                let wait = backoff(afterAttempt: operation.attempts)
                await finish(
                    operation, to: .queued, note: "\(why); retry in \(DurationFormat.format(wait))" + output, event: .operationRetrying,
                    update: { $0.nextAttemptAt = Date().addingTimeInterval(wait.secondsValue); $0.lastError = why })
            } else {
                await finish(
                    operation, to: .failed, note: "\(why); no attempts left (\(operation.maxAttempts))" + output, event: .operationFailed,
                    update: { $0.lastError = why })
            }
        default:
            let why = outcome.exitCode.map { "exit \($0)" } ?? "killed by signal \(outcome.signal ?? 0)"
            await finish(operation, to: .failed, note: why + output, event: .operationFailed, update: { $0.lastError = why })
        }
    }

    /// Records the end of an attempt, retrying until the store takes it: until then the site
    /// stays busy, so its next operation cannot overtake an outcome that is not yet written.
    private func finish(
        _ operation: DeferredOperation, to: OperationState, note: String, event: FleetEventType,
        update: @escaping @Sendable (inout DeferredOperation) -> Void = { _ in }
    ) async {
        var wait = Duration.milliseconds(200)
        while true {
            let now = Date()
            do {
                let done = try store.transition(id: operation.id, expected: [.dispatching], to: to, at: now, note: note, update: update)
                try? store.forgetRun(operationID: operation.id)
                if to == .queued { invalidate() }  // a retry waits in the queue again
                emit(FleetEvent(type: event, site: done.site, at: now, operationID: done.id, kind: done.kind, note: String(note.prefix(200))))
                return
            } catch OperationStoreError.conflict, OperationStoreError.notFound {
                logger.error("operation \(operation.id) was moved by someone else while it ran; its outcome (\(to.rawValue)) is not recorded")
                return
            } catch {
                logger.error("cannot record the end of operation \(operation.id), retrying in \(DurationFormat.format(wait)): \(error)")
                try? await Task.sleep(for: wait)
                wait = min(wait * 2, .seconds(30))
            }
        }
    }

    /// Exponential backoff with ±20% jitter.
    func backoff(afterAttempt attempt: Int) -> Duration {
        let base = settings.backoff.secondsValue * pow(2, Double(max(0, attempt - 1)))
        let capped = min(base, settings.maximumBackoff.secondsValue)
        let jittered = capped * Double.random(in: 0.8...1.2)
        return .milliseconds(Int64(jittered * 1000))
    }
}
