import Subprocesses
public import FleetCore
public import Logging
import DequeModule
import Dispatch
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
    /// Replicas: every executor runs under coreutils' `timeout` (its own time limit, which holds
    /// even if this replica dies and leaves it running), and its claim is held for that long
    /// (`claimBound`): no other replica runs the operation again before the executor cannot be
    /// running any more.
    public var boundedRuns = false

    public init(
        limit: Int = 4, backoff: Duration = .seconds(30), maximumBackoff: Duration = .seconds(1800), outputBytes: Int = 4096,
        boundedRuns: Bool = false
    ) {
        self.boundedRuns = boundedRuns
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
    /// A site's situation now, asked once more for each operation about to start: the plan a
    /// full pass left may be a moment behind a change of mode (the clock loop tells the
    /// dispatcher right after it happens, not at once), and an operation must never start at
    /// a site that is not connected, or connected for less than `stableFor`, at that instant.
    let current: (@Sendable (SiteID) -> DispatchSituation?)?
    /// What every executor's environment starts from: the aggregator's, without its own
    /// EDGEFLEET_* settings (not the executor's business); read once.
    let executorEnvironment = processEnvironment().filter { !$0.key.hasPrefix("EDGEFLEET_") }

    private struct State {
        /// Sites with an operation between its claim and its recorded outcome: one at a time per site.
        var running: Set<SiteID> = []
        /// Executors alive (started and not yet reaped): the fleet-wide limit counts these. A
        /// slot is free once the process has exited, before its outcome is written, so that the
        /// write and the next spawn overlap (the site stays busy until its outcome is written).
        var slots = 0
        /// The process group of each running executor, by operation id.
        var processes: [String: pid_t] = [:]
        /// Shutting down: executors are being stopped, and their operations go back to the queue.
        var stopping = false
        /// This replica stopped leading: nothing starts until `resume()`.
        var standingDown = false
        /// Operations this dispatcher claimed and whose outcome is not recorded yet (a periodic
        /// look for lapsed claims leaves them alone).
        var inFlight: Set<String> = []
        /// How many times it stood down: a run started before the last time was stopped by it,
        /// and its outcome is not recorded (the next lead's recovery queues it again, noted).
        var standDowns: UInt64 = 0
        /// Per site, how many of its operations have finished; a pass that read the queue
        /// before one finished must not start the site's next (the finished one may be
        /// queued again for a retry, and it goes first).
        var finished: [SiteID: UInt64] = [:]
        /// Round robin: when each site was last served (a counter). Ready sites are served
        /// least recently served first, so a site that turns ready late (or never was
        /// served) goes before sites that already had a turn.
        var servedAt: [SiteID: UInt64] = [:]
        var turns: UInt64 = 0
        /// The queued and blocked operations, oldest first, as the last full pass left them: a
        /// pass reads the store only when this is nil (a submission, an operator's action, a retry
        /// invalidates it), or older than `rereadEvery` when another writer of the database may
        /// have changed it (`changedElsewhere`), or older than 5 minutes. With 10,000 operations queued, reading them all was most of a pass.
        var waiting: [DeferredOperation]?
        var waitingReadAt = ContinuousClock.now
        /// When `waiting` was last found still good: read then, or no other process had written
        /// the database since (it holds for `rereadEvery` from here).
        var waitingCheckedAt = ContinuousClock.now
        /// How long `waiting` is trusted: 2 s, or 50 times what the last read took (reading
        /// 10,000 operations every 2 s was a tenth of the aggregator's CPU in a storm).
        var rereadEvery = Duration.seconds(2)
        /// Operations started since `waiting` was read: the copies the plan holds of them are
        /// stale (they are dispatching, or done), and never started again from it. With when
        /// each started (the ones started while a full pass ran, which that pass did not see
        /// started, are taken out of what it lays out) and when its claim was in the store: a read
        /// that began after that does not hold the queued copy, and drops the mark (a retry, which
        /// brings a read, then runs at once). Dropped at the outcome instead, the mark let the
        /// plan's stale copy of an operation that started and ended between two reads be claimed
        /// again: refused, and each refusal made the next pass read the whole queue (in a
        /// reconnect storm, 22 refusals and two reads of 5,000 operations).
        var startedSinceRead: [String: StartedMark] = [:]
        var generation: UInt64 = 0
        /// Sites' situations as the last full pass found them. A quick pass reuses them
        /// (readiness is checked against `readySince`, so a cached one is never early; a site whose
        /// mode changes is looked at again, `sitesMoved`); a full pass, which evaluates each site
        /// again, follows a change of the queue, a site that passed its deadline, an operation's
        /// expiry (`nextExpiry`), and comes every 10 s as a safety net.
        var situations: [SiteID: DispatchSituation] = [:]
        var situationsAt = ContinuousClock.now - .seconds(86_400)
        /// How often a full pass comes by itself: every 10 s, or 20 times what the last one took.
        /// (Once a second, the passes over 5,000 sites and 10,000 operations were 6% of the
        /// aggregator's CPU in a reconnect storm; nothing but expiry needs them, and expiry has
        /// its own instant.)
        var fullPassEvery = Duration.seconds(10)
        /// The earliest expiry among the waiting operations (queued or blocked) the plan holds:
        /// a full pass is due then, to expire it.
        var nextExpiry: Date?
        /// The sites whose queued operations may run (connected at the last full pass), least
        /// recently served first, and each one's queued operations, oldest first. A site that is
        /// served moves to the back: served turns only grow, so the order stays sorted without
        /// sorting. A quick pass (after an executor finished) walks this from the front and
        /// starts as many as there are free slots: its cost is what it starts, not the queue's
        /// length (a pass over all 10,000 waiting operations after every finished executor was
        /// most of a reconnect storm).
        var order: Deque<SiteID> = []
        var heads: [SiteID: Deque<DeferredOperation>] = [:]
        /// Every site's queued operations as the last full pass laid them out, whatever its mode
        /// then: a site that connects later gets its head from here (`sitesMoved`), without a
        /// full pass.
        var queuedBySite: [SiteID: Deque<DeferredOperation>] = [:]
        /// Sites whose mode changed since the last pass, to look at again in the next one.
        var moved: Set<SiteID> = []

        /// Whether the last full pass's situations and order may still be used at `now`, the
        /// waiting list aside (see `recheckDue`).
        func planLaidOut(at now: Date) -> Bool {
            waiting != nil && ContinuousClock.now - situationsAt < fullPassEvery && nextExpiry.map({ now < $0 }) ?? true
        }
        /// The waiting list has been trusted for `rereadEvery`: whether another writer changed the
        /// database is to be asked (`changedElsewhere`) before the next quick pass.
        var recheckDue: Bool { ContinuousClock.now - waitingCheckedAt >= rereadEvery }
        /// Whether a quick pass may start operations from the plan now; otherwise the dispatch
        /// loop looks first.
        func planIsCurrent(at now: Date) -> Bool { planLaidOut(at: now) && !recheckDue }
    }
    /// Taken several times per operation from the executors' threads, the dispatch loop and
    /// the outcome's task: a `PlainLock` (a contended `Mutex` spins first).
    private let state = PlainLock(State())

    /// How many sites' situations the plan holds (tests: only sites with operations waiting).
    var heldSituations: Int { state.withLock { $0.situations.count } }

    /// An operation started since the waiting list was read (`State.startedSinceRead`).
    struct StartedMark {
        var site: SiteID
        /// When it was picked to start (before its claim).
        var at: ContinuousClock.Instant
        /// An instant after its claim was committed (nil: the claim is under way).
        var claimedAt: ContinuousClock.Instant? = nil

        /// Whether a read that began at `readAt` may still hold the operation's queued copy: it
        /// keeps the mark. A read that began after the claim was committed sees it dispatching (or
        /// later: done, or queued again by a retry, which is then a copy to run).
        func outlives(readAt: ContinuousClock.Instant) -> Bool {
            guard let claimedAt else { return true }
            return claimedAt >= readAt
        }
    }

    public init(
        store: any OperationStore, executors: [OperationKind: ExecutorTemplate], settings: DispatchSettings, logger: Logger,
        emit: @escaping @Sendable (FleetEvent) -> Void, dispatched: @escaping @Sendable (Duration) -> Void = { _ in },
        finished: @escaping @Sendable () -> Void = {}, current: (@Sendable (SiteID) -> DispatchSituation?)? = nil
    ) {
        self.current = current
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

    /// This replica stopped leading: starts nothing more (until `resume`) and asks every running
    /// executor's process group to stop (SIGTERM); returns how many. Their outcomes are refused
    /// by the store's fence, and the next leader runs their operations again.
    @discardableResult
    public func standDown() -> Int {
        let groups = state.withLock { s -> [pid_t] in
            s.standingDown = true
            s.standDowns += 1
            return Array(s.processes.values)
        }
        for group in groups { kill(-group, SIGTERM) }
        return groups.count
    }

    /// Leading again (a new epoch): operations may start.
    public func resume() {
        state.withLock { $0.standingDown = false }
    }

    /// Whether operations wait in the queue (or it is not known: the store was not read since a change).
    /// (At most as many as the last full pass left: some of those may have started since.)
    public var hasWaiting: Bool { state.withLock { s in s.waiting.map { !$0.isEmpty } ?? true } }

    /// How many operations are running now.
    public var runningCount: Int { state.withLock { $0.running.count } }

    /// At start-up: operations left `dispatching` by a crash go back to the queue, each only
    /// once its executor, if the killed aggregator left it running, has been ended (SIGTERM,
    /// SIGKILL after `grace`): one operation never runs twice at the same time. An executor
    /// that cannot be ended leaves its operation `dispatching` (logged); the next start tries again.
    /// Blocks while it waits for leftovers to end: call it off the cooperative pool.
    ///
    /// Replicas: an operation whose executor is not on this host (or not known) is queued again only
    /// once its claim has run out (`claimLapsed`: the executor's own time limit has passed, or its
    /// replica released the claim after the executor ended). `periodic`: the look a leader makes
    /// every few seconds, which leaves alone what this dispatcher itself is running.
    public func recover(now: Date, grace: Duration = .seconds(10), periodic: Bool = false) throws {
        let boot = ProcessTable.bootID()
        let host = ProcessTable.hostName()
        var runs: [String: ExecutorRun] = [:]
        for run in try store.runs() { runs[run.operationID] = run }
        let ours = state.withLock { $0.inFlight }
        for operation in try store.all(OperationFilter(states: [.dispatching])) {
            if periodic && ours.contains(operation.id) { continue }
            // A record from another boot or host names processes that are not these.
            let run = runs[operation.id].flatMap { $0.bootID == boot && $0.host == host ? $0 : nil }
            var lapsedElsewhere = false
            if run == nil {
                guard try store.claimLapsed(id: operation.id) else { continue }  // its executor may still run elsewhere
                lapsedElsewhere = runs[operation.id] != nil
            }
            let (found, gone) = LeftoverExecutors.end(operationID: operation.id, run: run, grace: grace)
            guard gone else {
                logger.error("operation \(operation.id): its executor from before the restart cannot be ended; it stays dispatching")
                continue
            }
            var note = "the aggregator stopped while this was running; it runs again (at least once)"
            if lapsedElsewhere, let other = runs[operation.id] {
                note = "its run on \(other.host) (started \(RFC3339.format(other.startedAt))) ended with its replica, and its claim ran out; it runs again (at least once)"
            }
            if found > 0 {
                note += "; its executor was still running (\(found) process(es), group \(run.map { "\($0.processGroup)" } ?? "unrecorded")) and was ended first"
            }
            try store.transitionAsLeader(id: operation.id, expected: [.dispatching], to: .queued, at: now, note: note, update: { _ in })
            try? store.forgetRun(operationID: operation.id)
            emit(FleetEvent(type: .operationQueued, site: operation.site, at: now, operationID: operation.id, kind: operation.kind, note: note))
            logger.warning("operation \(operation.id) was running when the aggregator stopped; queued again", metadata: ["leftovers": "\(found)"])
        }
        // Records of runs whose outcome was written but whose record was not yet forgotten.
        let stillDispatching = Set(try store.all(OperationFilter(states: [.dispatching])).map(\.id))
        for id in runs.keys where !stillDispatching.contains(id) { try? store.forgetRun(operationID: id) }
    }

    /// How long a claim holds under `boundedRuns`: the executor's limit, the 5 s more its own
    /// `timeout` allows, the 10 s before that kills it, and 5 s of margin.
    static func claimBound(_ template: ExecutorTemplate) -> Duration { template.timeout + .seconds(20) }

    /// One pass: expire, block, then start what may start. `situation` answers for a site
    /// the aggregator knows (nil: never heard from).
    /// Forgets the operations the last pass read: the next pass reads the store again. For
    /// whoever changes the queue (submission, cancel, retry, release, another writer).
    public func invalidate() {
        state.withLock { Self.forgetPlan(&$0) }
    }

    private static func forgetPlan(_ s: inout State) {
        s.waiting = nil
        s.generation += 1
        s.situations = [:]
        s.situationsAt = ContinuousClock.now - .seconds(86_400)
        s.order = []
        s.heads = [:]
    }

    /// Some site changed mode: the next pass evaluates every site it needs again.
    public func modesChanged() {
        state.withLock {
            $0.situations = [:]
            $0.situationsAt = ContinuousClock.now - .seconds(86_400)
            // A full pass under way looked its sites up before: it must not lay out its plan.
            $0.generation += 1
        }
    }

    /// These sites changed mode: the next pass looks at them again, and only at them. In a
    /// reconnect storm thousands of sites connect within one heartbeat interval; a full pass for
    /// each clock pass that saw some of them (10,000 operations read and laid out again, up to
    /// 0.3 s each) took 3.5 s of CPU in the storm's first seconds, while slots waited to be refilled.
    public func sitesMoved(_ sites: Set<SiteID>) {
        guard !sites.isEmpty else { return }
        state.withLock { $0.moved.formUnion(sites) }
    }

    /// One pass. `situations` answers, for the sites asked about, those the aggregator knows
    /// (a site never heard from is left out), all at once.
    public func tick(now: Date, situations lookup: (Set<SiteID>) -> [SiteID: DispatchSituation]) throws {
        var (quick, recheck, readAge, generation) = state.withLock { s in
            (s.planLaidOut(at: now), s.recheckDue, ContinuousClock.now - s.waitingReadAt, s.generation)
        }
        // Asked here, without laying the plan out again.
        if quick && recheck, try !waitingStillGood(readAge: readAge, generation: generation) {
            invalidate()
            quick = false
        }
        if !quick {
            let started = ContinuousClock.now
            try fullPass(now: now, lookup: lookup)
            // At most a twentieth of the loop's time: with 10,000 operations waiting a full pass
            // takes tens of milliseconds, during which no slot is refilled.
            let took = ContinuousClock.now - started
            state.withLock { $0.fullPassEvery = max(.seconds(10), took * 20) }
        } else {
            lookAgain(now: now, lookup: lookup)
        }
        startReady(now: now)
    }

    /// Whether the waiting list read `readAge` ago still holds: no other process wrote the
    /// database since it was read (this dispatcher's own changes, and the queue's, invalidate it
    /// or are accounted for), and it is younger than 5 minutes (a safety net). When it holds, it
    /// is trusted for another `rereadEvery` (unless the plan changed meanwhile).
    private func waitingStillGood(readAge: Duration, generation: UInt64) throws -> Bool {
        let checkedAt = ContinuousClock.now
        if try store.changedElsewhere() || readAge >= .seconds(300) { return false }
        state.withLock { s in if s.generation == generation { s.waitingCheckedAt = checkedAt } }
        return true
    }

    /// The sites that changed mode since the last pass, each evaluated again: one that connected
    /// is added to the order with its queued operations, one that stopped being connected leaves
    /// it. A site past its deadline needs its operations blocked: that is a full pass's work.
    private func lookAgain(now: Date, lookup: (Set<SiteID>) -> [SiteID: DispatchSituation]) {
        // Only the sites the plan holds operations or a situation for: a site with nothing
        // waiting has nothing to start or block, and its situation is looked up when an operation
        // for it is submitted (`added`). A fleet's first modes (100,000 sites at once) otherwise
        // built and kept a situation for every site: 70 MB at the 100,000-site benchmark's peak.
        let (moved, generation) = state.withLock { s in
            defer { s.moved = [] }
            return (s.moved.filter { s.queuedBySite[$0] != nil || s.situations[$0] != nil }, s.generation)
        }
        guard !moved.isEmpty else { return }
        let found = lookup(moved)
        state.withLock { s in
            guard s.waiting != nil else { return }  // the next pass is a full one: it looks every site up
            guard s.generation == generation else {
                // The plan changed meanwhile (a submission joined it): look at these again next pass.
                s.moved.formUnion(moved)
                return
            }
            if found.values.contains(where: { $0.mode == .disconnected }) {
                s.situationsAt = ContinuousClock.now - .seconds(86_400)  // the next pass is a full one
                return
            }
            var joining: [SiteID] = []
            var leaving: Set<SiteID> = []
            for site in moved {
                let situation = found[site]
                s.situations[site] = situation
                if situation?.mode == .connected {
                    guard s.heads[site] == nil, var queued = s.queuedBySite[site] else { continue }
                    // What started since the last full pass is not waiting any more.
                    while let first = queued.first, s.startedSinceRead[first.id] != nil { queued.removeFirst() }
                    guard !queued.isEmpty else { continue }
                    s.heads[site] = queued
                    joining.append(site)
                } else if s.heads.removeValue(forKey: site) != nil {
                    leaving.insert(site)
                }
            }
            if !leaving.isEmpty { s.order = Deque(s.order.filter { !leaving.contains($0) }) }
            Self.merge(joining, into: &s)
        }
    }

    /// Puts sites into the order by when each was last served (the order is sorted by it).
    private static func merge(_ joining: [SiteID], into s: inout State) {
        guard !joining.isEmpty else { return }
        let servedAt = s.servedAt
        let turn = { (site: SiteID) in servedAt[site] ?? 0 }
        let sorted = joining.sorted { turn($0) != turn($1) ? turn($0) < turn($1) : $0 < $1 }
        var merged = Deque<SiteID>()
        merged.reserveCapacity(s.order.count + sorted.count)
        var i = s.order.startIndex
        for site in sorted {
            while i < s.order.endIndex, turn(s.order[i]) <= turn(site) {
                merged.append(s.order[i])
                i += 1
            }
            merged.append(site)
        }
        merged.append(contentsOf: s.order[i...])
        s.order = merged
    }

    /// A submission was stored: it joins the plan as the newest waiting operation (and its site's
    /// last), without a full pass. With 100,000 operations queued, reading them all again after
    /// each submission made submitting them one by one quadratic (2.5 ms of CPU each). One that
    /// superseded others, or anything the plan cannot place, makes the next pass a full one.
    public func added(_ operation: DeferredOperation, superseded: [String]) {
        state.withLock { s in
            guard s.waiting != nil, superseded.isEmpty, operation.state == .queued || operation.state == .blocked else {
                Self.forgetPlan(&s)
                return
            }
            // Already in the plan (a full pass read the store after the insert): nothing to add.
            if s.queuedBySite[operation.site]?.contains(where: { $0.id == operation.id }) == true { return }
            // A full pass that read the store before the insert must not lay out a plan without it.
            s.generation += 1
            s.waiting?.append(operation)
            if let expiresAt = operation.expiresAt { s.nextExpiry = min(s.nextExpiry ?? expiresAt, expiresAt) }
            guard operation.state == .queued else { return }  // blocked: only a full pass's expiry applies
            s.queuedBySite[operation.site, default: []].append(operation)
            // A site the plan has not looked at: the next pass looks it up alone (`lookAgain`).
            guard let situation = s.situations[operation.site] else {
                s.moved.insert(operation.site)
                return
            }
            guard situation.mode == .connected else { return }
            if s.heads[operation.site] != nil {
                s.heads[operation.site]?.append(operation)
            } else {
                // A site is in the order exactly while it has heads.
                s.heads[operation.site] = [operation]
                Self.merge([operation.site], into: &s)
            }
        }
    }

    /// Expires and blocks what must be, evaluates every site with queued operations again, and
    /// lays out the order in which sites are served.
    private func fullPass(now: Date, lookup: (Set<SiteID>) -> [SiteID: DispatchSituation]) throws {
        let passStarted = ContinuousClock.now
        let (read, age, checkedAge, rereadEvery, generation) = state.withLock { s in
            s.moved = []  // this pass looks every site up (one that moves while it runs is looked at next time)
            return (s.waiting, ContinuousClock.now - s.waitingReadAt, ContinuousClock.now - s.waitingCheckedAt, s.rereadEvery, s.generation)
        }
        // What the last read found holds while it is younger than `rereadEvery`, and up to 5
        // minutes as long as no other process wrote the database (this dispatcher's own changes,
        // and the queue's, invalidate it or are accounted for; reading and decoding 10,000 waiting
        // operations every 2 s was 3% of the aggregator's CPU in a reconnect storm, and a read
        // every 30 s still came once or twice within one). The 5 minutes are a safety net only.
        var cached = read
        if cached != nil, checkedAge >= rereadEvery, try !waitingStillGood(readAge: age, generation: generation) {
            cached = nil
        }
        let started = cached == nil ? [:] : state.withLock { $0.startedSinceRead }
        let readAt = ContinuousClock.now
        // What another writer did before this read, the read sees: the next look for other
        // writers starts from here (without this, the first look always found a change).
        if cached == nil { _ = try store.changedElsewhere() }
        let waiting = try cached ?? store.all(OperationFilter(states: [.queued, .blocked]))
        let readTook = cached == nil ? ContinuousClock.now - readAt : nil
        // Each site's situation once per pass, all in one call (one lock of the fleet's state),
        // not once per waiting operation.
        var sites = Set<SiteID>()
        for operation in waiting where operation.state == .queued { sites.insert(operation.site) }
        let known = sites.isEmpty ? [:] : lookup(sites)
        var remaining: [DeferredOperation] = []  // what stays queued or blocked
        remaining.reserveCapacity(waiting.count)
        var queuedBySite: [SiteID: Deque<DeferredOperation>] = [:]
        for operation in waiting where started[operation.id] == nil {  // oldest first
            if let expiresAt = operation.expiresAt, expiresAt <= now {
                try move(operation, to: .expired, at: now, note: "expired at \(RFC3339.format(expiresAt)) before it could run", event: .operationExpired)
                continue
            }
            guard operation.state == .queued else {  // blocked: only expiry applies
                remaining.append(operation)
                continue
            }
            let site = known[operation.site]
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
            // Only a connected site's operations may run before the next pass; another's wait in
            // `queuedBySite` until its site connects (a mode change: `sitesMoved`).
            queuedBySite[operation.site, default: []].append(operation)
        }
        state.withLock { s in
            guard s.generation == generation else { return }  // the queue changed meanwhile: read it again
            if let readTook {
                s.waitingReadAt = readAt
                s.waitingCheckedAt = readAt
                s.rereadEvery = max(.seconds(2), readTook * 50)
                // Claimed before the read began: the read saw them dispatching (or done, or queued
                // again by a retry). Started since (executors end and their slots are refilled while
                // a pass runs), or claimed only meanwhile: their marks stay, and keep them out.
                s.startedSinceRead = s.startedSinceRead.filter { $0.value.outlives(readAt: readAt) }
            }
            // What was started while this pass ran is not waiting any more: a stale head would be
            // claimed again, refused, and cost a full read of the queue. A site's operations start
            // oldest first, so such an operation is its site's head. (The waiting list keeps it:
            // the next full pass leaves out whatever `startedSinceRead` names.)
            var queuedBySite = queuedBySite
            for (id, started) in s.startedSinceRead where started.at >= passStarted - .seconds(1) {
                guard queuedBySite[started.site]?.first?.id == id else { continue }
                queuedBySite[started.site]?.removeFirst()
                if queuedBySite[started.site]?.isEmpty == true { queuedBySite[started.site] = nil }
            }
            s.waiting = remaining
            s.nextExpiry = remaining.lazy.compactMap(\.expiresAt).min()
            s.situations = known
            s.situationsAt = ContinuousClock.now
            s.queuedBySite = queuedBySite
            s.heads = queuedBySite.filter { known[$0.key]?.mode == .connected }
            // Round robin: the least recently served first (sorted once per full pass).
            let keyed = s.heads.keys.map { (turn: s.servedAt[$0] ?? 0, site: $0) }
            s.order = Deque(keyed.sorted { $0.turn != $1.turn ? $0.turn < $1.turn : $0.site < $1.site }.map(\.site))
        }
    }

    /// `startReady` when the order and the situations the last full pass left are still valid
    /// (otherwise the dispatch loop, which `finished` wakes, makes a full pass first).
    @discardableResult
    private func startReadyIfPlanned(now: Date) -> Bool {
        let planned = state.withLock { s in
            s.planIsCurrent(at: now)
        }
        if planned { startReady(now: now) }
        return planned
    }

    /// Starts as many operations as there are free slots: each from the least recently served
    /// site whose oldest queued operation may run now. Walks the order from the front, so its
    /// cost is what it looks at before the slots are full, not the queue's length.
    private func startReady(now: Date) {
        var position = 0
        while true {
            // Candidates under the lock; their starting (a store transaction) outside it.
            // (Each candidate with its site's count of finished operations: a copy of the whole
            // per-site table held here made the next executor's end copy it again, 5,000 entries.)
            let (candidates, free, generation) = state.withLock {
                s -> ([(site: SiteID, operation: DeferredOperation, situation: DispatchSituation, finishedBefore: UInt64)], Int, UInt64) in
                let free = settings.limit - s.slots
                guard free > 0, !s.stopping else { return ([], 0, s.generation) }
                var found: [(site: SiteID, operation: DeferredOperation, situation: DispatchSituation, finishedBefore: UInt64)] = []
                // A few more than the free slots: some may wait for their cluster metadata.
                while position < s.order.count, found.count < free + 8 {
                    let site = s.order[position]
                    position += 1
                    guard !s.running.contains(site) else { continue }
                    // A head started already (its removal skipped by a plan that changed meanwhile)
                    // is a stale copy: the site's next operation is its head now.
                    while let first = s.heads[site]?.first, s.startedSinceRead[first.id] != nil { s.heads[site]?.removeFirst() }
                    guard let operation = s.heads[site]?.first,
                        let situation = s.situations[site],
                        situation.mode == .connected, situation.stable || (situation.readySince.map { $0 <= now } ?? false)
                    else { continue }
                    if let notBefore = operation.notBefore, notBefore > now { continue }  // scheduled later
                    if let next = operation.nextAttemptAt, next > now { continue }  // backing off: the site waits, in order
                    if let expiresAt = operation.expiresAt, expiresAt <= now { continue }  // the full pass expires it
                    found.append((site, operation, situation, s.finished[site] ?? 0))
                }
                return (found, free, s.generation)
            }
            if candidates.isEmpty { return }
            var claimed = 0
            for candidate in candidates where claimed < free {
                let (site, operation, planned, finishedBefore) = candidate
                var situation = planned
                if let current {
                    guard let fresh = current(site), fresh.mode == .connected, fresh.stable || (fresh.readySince.map { $0 <= now } ?? false)
                    else { continue }
                    situation = fresh
                }
                // Rendered before it is claimed: cluster metadata the site has not reported yet
                // holds the operation (and its site) back instead of failing it.
                var argv: [String]?
                if let template = executors[operation.kind] {
                    argv = try? template.render(operationID: operation.id, site: site, params: operation.params, cluster: situation.cluster)
                    if argv == nil {
                        logger.debug("operation \(operation.id) waits for its site's cluster metadata")
                        continue
                    }
                }  // no executor at all: claimed and failed with the reason
                let could = [operation.createdAt, situation.readySince, operation.notBefore, operation.nextAttemptAt].compactMap { $0 }.max() ?? now
                guard start(operation, argv: argv, finishedBefore: finishedBefore, now: now) else { continue }
                claimed += 1
                dispatched(.milliseconds(Int64(max(0, now.timeIntervalSince(could)) * 1000)))
                state.withLock { s in
                    guard s.generation == generation else { return }
                    if s.heads[site]?.first?.id == operation.id { s.heads[site]?.removeFirst() }
                    // Served now: to the back of the order (or out of it, with nothing left to run).
                    if let index = s.order.firstIndex(of: site) {
                        s.order.remove(at: index)
                        if index < position { position -= 1 }
                    }
                    if s.heads[site]?.isEmpty == false { s.order.append(site) } else { s.heads[site] = nil }
                }
            }
            if claimed == free { return }  // full; otherwise look further down the order
        }
    }

    private func move(_ operation: DeferredOperation, to: OperationState, at now: Date, note: String, event: FleetEventType) throws {
        do {
            let moved = try store.transitionAsLeader(id: operation.id, expected: [operation.state], to: to, at: now, note: note, update: { _ in })
            emit(FleetEvent(type: event, site: moved.site, at: now, operationID: moved.id, kind: moved.kind, note: note))
        } catch OperationStoreError.conflict {
            // An operator acted on it meanwhile; theirs stands.
            invalidate()
        }
    }

    @discardableResult
    private func start(_ operation: DeferredOperation, argv: [String]?, finishedBefore: UInt64, now: Date) -> Bool {
        let claimed = state.withLock { s -> UInt64? in
            guard !s.stopping, !s.standingDown, s.slots < settings.limit, (s.finished[operation.site] ?? 0) == finishedBefore,
                s.running.insert(operation.site).inserted
            else { return nil }
            s.slots += 1
            s.turns += 1
            s.servedAt[operation.site] = s.turns
            // Marked started now, before the store's claim: a full pass that lays out the queue
            // meanwhile leaves it out.
            s.startedSinceRead[operation.id] = StartedMark(site: operation.site, at: ContinuousClock.now)
            s.inFlight.insert(operation.id)
            return s.standDowns
        }
        guard let standDownsAtStart = claimed else { return false }
        let dispatched: DeferredOperation
        do {
            dispatched = try store.claim(operation, at: now, note: "attempt \(operation.attempts + 1) of \(operation.maxAttempts)")
            let claimedAt = ContinuousClock.now
            state.withLock { $0.startedSinceRead[operation.id]?.claimedAt = claimedAt }
        } catch {
            state.withLock {
                _ = $0.running.remove(operation.site)
                $0.slots -= 1
                $0.startedSinceRead[operation.id] = nil
                $0.inFlight.remove(operation.id)
            }
            invalidate()  // moved by someone else: read the queue again
            return false
        }
        if settings.boundedRuns, let template = executors[operation.kind] {
            // The claim holds as long as the executor can run; without that, another replica could
            // run it again meanwhile: it does not start (its claim, never held, counts as lapsed).
            do {
                try store.holdClaim(id: dispatched.id, for: Self.claimBound(template))
            } catch {
                logger.error("operation \(dispatched.id): its claim could not be held (\(error)); not started, a recovery queues it again")
                state.withLock {
                    _ = $0.running.remove(operation.site)
                    $0.slots -= 1
                    $0.inFlight.remove(operation.id)
                }
                return false
            }
        }
        emit(FleetEvent(type: .operationDispatched, site: dispatched.site, at: now, operationID: dispatched.id, kind: dispatched.kind))
        // The slot is given back once: when the executor has exited, or when it never started.
        let slot = Mutex(true)
        let release: @Sendable () -> Void = {
            guard slot.withLock({ held in defer { held = false }; return held }) else { return }
            self.state.withLock { $0.slots -= 1 }
            // Refilled here, on the thread that saw the executor end, when the last pass's plan
            // still holds: a wake-up of the dispatch loop first cost about 1.5 ms per operation.
            // Otherwise the loop makes a full pass first.
            if !self.startReadyIfPlanned(now: Date()) { self.finished() }
        }
        // The executor runs on a thread of its own from here (no hop through the cooperative pool
        // before it starts); its outcome is recorded from a task.
        onOwnThread {
            // The thread is free once the executor exited; the outcome is recorded once what it
            // may have left behind is ended too (the site stays busy until then).
            self.run(dispatched, argv: argv, exited: release) { result in
                Task {
                    if self.state.withLock({ $0.standDowns }) == standDownsAtStart {
                        await self.record(dispatched, result)
                    } else {
                        // Stopped because this replica stood down (even if it leads again by now):
                        // not its outcome to record; the next lead's recovery queues it again, at
                        // once now that its claim is released.
                        self.logger.warning("operation \(dispatched.id) was stopped when this replica stood down; its outcome is not recorded")
                        try? self.store.releaseClaim(id: dispatched.id)
                    }
                    self.ended(dispatched, release: release)
                }
            }
        }
        return true
    }

    /// After an attempt's outcome is recorded: the slot (if the executor never ran) and the site are free.
    private func ended(_ dispatched: DeferredOperation, release: @Sendable () -> Void) {
        release()
        state.withLock {
            $0.inFlight.remove(dispatched.id)
            _ = $0.running.remove(dispatched.site)
            $0.finished[dispatched.site, default: 0] += 1
            // Its started mark stays until the next read of the queue (`StartedMark.outlives`).
        }
        // The site is free: its next operation may go (the loop also recounts the queue).
        finished()
    }

    /// Runs an operation's executor on the calling thread until it exited (it blocks); `completion`
    /// gets its outcome once its leftovers are ended, or nil at once when the kind has no executor.
    private func run(
        _ operation: DeferredOperation, argv: [String]?, exited: @escaping @Sendable () -> Void,
        completion: @escaping @Sendable (Result<CommandOutcome, CommandError>?) -> Void
    ) {
        guard let template = executors[operation.kind], var argv else { return completion(nil) }
        if settings.boundedRuns {
            // Its own limit, which holds if this replica dies and leaves it running (the runner's
            // kills it first while this replica lives); the claim holds longer still.
            let limit = Int64((template.timeout + .seconds(5)).secondsValue.rounded(.up))
            argv = ["timeout", "--kill-after=10s", "\(limit)s"] + argv
        }
        var environment = executorEnvironment
        environment["EDGEFLEET_OPERATION_ID"] = operation.id
        let id = operation.id
        defer { state.withLock { _ = $0.processes.removeValue(forKey: id) } }
        // An az call may print a lot (JSON): read up to 64 MiB, keep the head.
        CommandRunner.runThenTidy(
                argv, timeout: template.timeout, capture: .head(bytes: settings.outputBytes), environment: environment, maximumOutput: 64 << 20,
                exited: exited,
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
                }, completion: completion)
    }

    /// Records an attempt's outcome (retrying until the store takes it).
    private func record(_ operation: DeferredOperation, _ result: Result<CommandOutcome, CommandError>?) async {
        guard let result else {
            await finish(operation, to: .failed, note: "no executor is configured for \(operation.kind.rawValue)", event: .operationFailed)
            return
        }
        let outcome: CommandOutcome
        do {
            outcome = try result.get()
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
            let timeout = executors[operation.kind]?.timeout ?? .zero
            let why = outcome.timedOut ? "timed out after \(DurationFormat.format(timeout)); process group killed" : "exit 75 (try again later)"
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
                // The run record goes with it (same transaction).
                let done = try store.complete(operation, to: to, at: now, note: note, update: update)
                if to == .queued { invalidate() }  // a retry waits in the queue again
                emit(FleetEvent(type: event, site: done.site, at: now, operationID: done.id, kind: done.kind, note: String(note.prefix(200))))
                return
            } catch OperationStoreError.conflict, OperationStoreError.notFound {
                logger.error("operation \(operation.id) was moved by someone else while it ran; its outcome (\(to.rawValue)) is not recorded")
                return
            } catch OperationStoreError.notLeader {
                logger.warning("operation \(operation.id): this replica no longer leads; its outcome (\(to.rawValue)) is left to the next leader, which runs it again")
                try? store.releaseClaim(id: operation.id)  // its executor has ended: no need to wait for the claim to run out
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
