public import FleetCore
public import FleetQueue
public import Logging
import Synchronization

#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif

/// Rollouts (docs/contract.md, "Rollouts"): one operation kind at every site a label selector
/// matches, in waves. The canary wave first, then waves of the batch size; a wave starts when
/// every operation of the one before ended, or waits on a site that has not been connected for
/// longer than the rollout's `waitFor` (a semi-connected site never holds the fleet back: its
/// operation stays queued and runs when its link returns). Past `maxFailures` the rollout pauses
/// itself. Sites past their deadline are left out and listed.
///
/// Operations are made wave by wave (with an idempotency key of the rollout and the site, so a
/// wave started twice after a crash makes each once): the queue holds only what may run, and
/// its dispatcher never reads a fleet's worth of operations held back for later waves.
public final class RolloutEngine: Sendable {
    let store: any RolloutStore
    let queue: QueueService
    let state: SharedFleet
    let clock: WallClock
    let logger: Logger
    /// One change at a time in this process (replicas are kept apart by the stored version).
    private let changing = Mutex(())
    /// The unfinished rollouts as last read or written here, by id: a tick reads a document again
    /// only when its stored version moved (a 100,000-site plan is megabytes of JSON).
    private let cache = Mutex([String: Rollout]())
    /// Signalled when a rollout is created or acted on here: a loop that found none unfinished
    /// waits on it instead of reading the store every second (that read was most of an idle
    /// aggregator's CPU: 0.09% of a core against the 0.05% budget).
    public let changed = Wakeup()

    init(store: any RolloutStore, queue: QueueService, state: SharedFleet, clock: WallClock, logger: Logger) {
        self.store = store
        self.queue = queue
        self.state = state
        self.clock = clock
        self.logger = logger
    }

    static func newID() -> String {
        var generator = SystemRandomNumberGenerator()
        return "ro-" + (0..<12).map { _ in String(Int.random(in: 0..<16, using: &generator), radix: 16) }.joined()
    }

    // MARK: - Operators

    /// Plans a rollout and starts its first wave. With an idempotency key used before, the earlier rollout.
    public func create(_ request: RolloutRequest, by who: String) throws(QueueError) -> (Rollout, existing: Bool) {
        defer { changed.signal() }  // the loop follows it from now on
        let now = clock.now()
        let selector: LabelSelector
        do { selector = try LabelSelector(parsing: request.selector) } catch { throw QueueError(.invalid, error.description) }
        if selector.isEmpty { throw QueueError(.invalid, "selector: name the sites (region=north); a rollout over every site says so: all=true is not a selector") }
        let params = request.params ?? [:]
        let (kind, _) = try queue.queue.check(kind: request.kind, params: params)
        func size(_ text: String?, _ name: String, default fallback: RolloutSize) throws(QueueError) -> RolloutSize {
            guard let text else { return fallback }
            do { return try RolloutSize(parsing: text) } catch { throw QueueError(.invalid, "\(name): \(error.description)") }
        }
        let batch = try size(request.batch, "batch", default: .percent(10))
        let maxFailures = try size(request.maxFailures, "maxFailures", default: .percent(10))
        if batch.resolve(100) == 0 { throw QueueError(.invalid, "batch: at least one site per wave") }
        let canary = request.canary ?? 0
        guard (0...100_000).contains(canary) else { throw QueueError(.invalid, "canary: 0 to 100000 sites") }
        var wait = Duration.seconds(3600)
        if let text = request.waitFor {
            do { wait = try DurationFormat.parse(text) } catch { throw QueueError(.invalid, "waitFor: \(error.description)") }
        }
        var expiresAt = request.expiresAt
        if let text = request.expiresIn {
            if expiresAt != nil { throw QueueError(.invalid, "give expiresAt or expiresIn, not both") }
            do { expiresAt = now.addingTimeInterval(try DurationFormat.parse(text).secondsValue) } catch {
                throw QueueError(.invalid, "expiresIn: \(error.description)")
            }
        }
        if let expiresAt, expiresAt <= now { throw QueueError(.invalid, "expiresAt: already passed") }
        if let key = request.idempotencyKey {
            guard !key.isEmpty, key.utf8.count <= 200 else { throw QueueError(.invalid, "idempotencyKey: 1 to 200 bytes") }
            if let existing = try read({ try store.rollout(idempotencyKey: key) }) { return (Self.shown(existing), true) }
        }

        // The sites by id; the canary is made of connected sites where there are enough (it must
        // be able to run now), the waves of the others in id order.
        let matched = state.withLock { fleet in
            fleet.records.values.filter { selector.matches($0.labels) }.map { ($0.site, $0.mode ?? .unknown) }
        }.sorted { $0.0 < $1.0 }
        guard !matched.isEmpty else { throw QueueError(.invalid, "selector \(selector): no site matches") }
        let skipped = matched.filter { $0.1 == .disconnected }.map {
            RolloutSkip(site: $0.0, reason: "past its deadline: it must be redeployed first")
        }
        let eligible = matched.filter { $0.1 != .disconnected }
        guard !eligible.isEmpty else { throw QueueError(.invalid, "selector \(selector): every matching site is past its deadline") }
        let canarySites = min(canary, eligible.count)
        let connectedFirst = eligible.filter { $0.1 == .connected } + eligible.filter { $0.1 != .connected }
        let canaryIDs = Set(connectedFirst.prefix(canarySites).map(\.0))
        let included = connectedFirst.prefix(canarySites).map(\.0) + eligible.map(\.0).filter { !canaryIDs.contains($0) }
        let perWave = max(1, batch.resolve(included.count - canarySites))
        var sites: [RolloutSite] = []
        sites.reserveCapacity(included.count)
        for (index, site) in included.enumerated() {
            let wave = index < canarySites ? 0 : (canarySites > 0 ? 1 : 0) + (index - canarySites) / perWave
            sites.append(RolloutSite(site: site, wave: wave))
        }
        var rollout = Rollout(
            id: Self.newID(), kind: kind, params: params, selector: selector.description, createdBy: who, createdAt: now, canary: canarySites,
            batch: batch, maxFailures: maxFailures, waitS: wait.secondsValue, expiresAt: expiresAt, idempotencyKey: request.idempotencyKey,
            waves: (sites.last?.wave ?? 0) + 1, sites: sites, skipped: skipped)
        rollout.recount()
        do {
            rollout = try changing.withLock { _ in try store.insert(rollout) }
        } catch RolloutStoreError.duplicateIdempotencyKey {
            if let key = request.idempotencyKey, let existing = try read({ try store.rollout(idempotencyKey: key) }) {
                return (Self.shown(existing), true)
            }
            throw QueueError(.conflict, "idempotency key conflict")
        } catch {
            throw QueueError(.unavailable, "the rollout could not be stored: \(error)")
        }
        queue.announce(
            FleetEvent(
                type: .rolloutCreated, site: nil, at: now, kind: kind,
                note: "\(sites.count) sites in \(rollout.waves) waves (\(selector)); \(skipped.count) left out, by \(who)", rollout: rollout.id))
        // The first wave starts now.
        let advanced = try change(rollout.id) { (rollout: inout Rollout, now: Date) throws(QueueError) in self.advance(&rollout, now: now) }
        return (Self.shown(advanced), false)
    }

    public enum Action: String, Sendable, CaseIterable { case pause, resume, cancel }

    public func act(_ action: Action, id: String, by who: String) throws(QueueError) -> Rollout {
        defer { changed.signal() }
        let now = clock.now()
        var cancelled: [String] = []
        let after = try change(id) { (rollout: inout Rollout, now: Date) throws(QueueError) in
            switch action {
            case .pause:
                guard rollout.state == .running else { throw QueueError(.conflict, "rollout \(id) is \(rollout.state.rawValue), not running") }
                rollout.state = .paused
                rollout.reason = "paused by \(who)"
            case .resume:
                guard rollout.state == .paused else { throw QueueError(.conflict, "rollout \(id) is \(rollout.state.rawValue), not paused") }
                rollout.state = .running
                rollout.reason = nil
                // The failures that paused it are the operator's to judge; the threshold counts new ones.
                rollout.failuresAcknowledged = rollout.failures
            case .cancel:
                guard !rollout.state.isFinal else { throw QueueError(.conflict, "rollout \(id) is \(rollout.state.rawValue) already") }
                rollout.state = .cancelled
                rollout.reason = "cancelled by \(who)"
                cancelled = rollout.sites.compactMap { $0.state == .queued || $0.state == .blocked ? $0.operationID : nil }
            }
        }
        // A cancelled rollout's waiting operations are cancelled too (one that started runs to its end).
        for operation in cancelled {
            _ = try? queue.cancel(id: operation, by: "\(who) (rollout \(id) cancelled)")
        }
        queue.announce(FleetEvent(type: Self.eventType(action), site: nil, at: now, kind: after.kind, note: "by \(who)", rollout: id))
        return cancelled.isEmpty ? after : (try? read({ try store.rollout(id: id) }).map { refreshed in
            var r = refreshed
            for i in r.sites.indices where cancelled.contains(r.sites[i].operationID ?? "") { r.sites[i].state = .cancelled }
            r.recount()
            return Self.shown(r)
        }) ?? after
    }

    static func eventType(_ action: Action) -> FleetEventType {
        switch action {
        case .pause: .rolloutPaused
        case .resume: .rolloutResumed
        case .cancel: .rolloutCancelled
        }
    }

    public func rollout(id: String) throws(QueueError) -> Rollout? {
        try read { try store.rollout(id: id) }.map(Self.shown)
    }

    /// Newest first, without their sites.
    public func list(limit: Int) throws(QueueError) -> [Rollout] {
        try read { try store.list(limit: limit) }.map { rollout in
            var summary = Self.shown(rollout)
            summary.sites = []
            return summary
        }
    }

    static func shown(_ rollout: Rollout) -> Rollout {
        var shown = rollout
        shown.recount()
        return shown
    }

    // MARK: - Progress

    /// One look at every unfinished rollout (the leader's, about once a second): operations'
    /// states, the failure threshold, the next wave, the end.
    /// Returns whether unfinished rollouts were found (or the store could not be read): the
    /// loop then looks again in a second; otherwise it waits for `changed`.
    @discardableResult
    public func tick() -> Bool {
        let unfinished: [(id: String, version: Int64)]
        do {
            unfinished = try store.unfinishedVersions()
        } catch {
            logger.warning("rollouts cannot be read: \(error)")
            return true
        }
        let cached = cache.withLock { cache in
            cache = cache.filter { entry in unfinished.contains { $0.id == entry.key } }
            return cache
        }
        for (id, version) in unfinished {
            let known = cached[id].flatMap { $0.version == version ? $0 : nil }
            do {
                _ = try change(id, known: known) { (rollout: inout Rollout, now: Date) throws(QueueError) in self.advance(&rollout, now: now) }
            } catch {
                logger.warning("rollout \(id) could not advance: \(error)")
            }
        }
        return !unfinished.isEmpty
    }

    /// Refreshes the states of started operations, pauses past the failure threshold, starts the
    /// next wave when the current one is through, and ends the rollout when every site is.
    func advance(_ rollout: inout Rollout, now: Date) {
        guard !rollout.state.isFinal else { return }
        // The states of the operations that may still move, in one read.
        var following: [(index: Int, id: String)] = []
        for index in rollout.sites.indices {
            guard let id = rollout.sites[index].operationID, !(rollout.sites[index].state?.isTerminal ?? false) else { continue }
            following.append((index, id))
        }
        if !following.isEmpty, let states = try? queue.store.states(ids: following.map(\.id)) {
            for (index, id) in following {
                if let state = states[id] { rollout.sites[index].state = state }
            }
        }
        // Past its expiry with waves not started: those never start (the operations made carry the
        // expiry themselves, and the queue expires them). A paused rollout expires too.
        if let expiresAt = rollout.expiresAt, expiresAt <= now, rollout.wave + 1 < rollout.waves {
            rollout.state = .expired
            rollout.reason = "expired at \(RFC3339.format(expiresAt)) before wave \(rollout.wave + 2) of \(rollout.waves) started"
            queue.announce(FleetEvent(type: .rolloutExpired, site: nil, at: now, kind: rollout.kind, note: rollout.reason, rollout: rollout.id))
            return
        }
        let threshold = rollout.maxFailures.resolve(rollout.sites.count)
        let failures = rollout.failures - rollout.failuresAcknowledged
        if rollout.state == .running, failures > threshold {
            rollout.state = .paused
            rollout.reason = "paused by itself: \(failures) failures, more than the threshold of \(threshold) (\(rollout.maxFailures))"
            queue.announce(FleetEvent(type: .rolloutPaused, site: nil, at: now, kind: rollout.kind, note: rollout.reason, rollout: rollout.id))
            return
        }
        guard rollout.state == .running else { return }
        if waveIsThrough(rollout, now: now) {
            if rollout.wave + 1 < rollout.waves {
                start(wave: rollout.wave + 1, of: &rollout, now: now)
            } else if rollout.sites.allSatisfy({ $0.skipped != nil || Self.ended($0.state) }) {
                rollout.state = .completed
                rollout.recount()
                let c = rollout.counts
                rollout.reason = "\(c.succeeded) succeeded, \(c.failed) failed, \(c.other) otherwise, \(c.skipped) left out"
                queue.announce(FleetEvent(type: .rolloutCompleted, site: nil, at: now, kind: rollout.kind, note: rollout.reason, rollout: rollout.id))
            } else {
                let waiting = rollout.sites.count { $0.skipped == nil && !Self.ended($0.state) }
                rollout.reason = "every wave started; \(waiting) operation(s) wait for their site's link"
            }
        }
    }

    /// An operation that ran its course for the rollout: succeeded, failed (an operator may still
    /// retry it, which is seen), cancelled, expired or superseded.
    static func ended(_ state: OperationState?) -> Bool {
        switch state {
        case .succeeded?, .failed?, .cancelled?, .expired?, .superseded?: true
        default: false
        }
    }

    /// Whether every operation of the current wave ended, or waits on a site that has not been
    /// connected for longer than `waitS` (counted from the wave's start at the earliest).
    func waveIsThrough(_ rollout: Rollout, now: Date) -> Bool {
        guard rollout.wave >= 0 else { return true }
        let started = rollout.waveStartedAt ?? now
        let members = rollout.sites.filter { $0.wave == rollout.wave && $0.skipped == nil && !Self.ended($0.state) }
        if members.isEmpty { return true }
        let situations = state.withLock { fleet in members.map { (fleet.records[$0.site]?.mode, fleet.records[$0.site]?.modeSince) } }
        for (mode, since) in situations {
            guard mode != .connected else { return false }  // it runs, or is about to
            let notConnectedSince = max(started, since ?? started)
            if now.timeIntervalSince(notConnectedSince) < rollout.waitS { return false }
        }
        return true
    }

    /// Makes the operations of `wave` (a site past its deadline by now is left out).
    func start(wave: Int, of rollout: inout Rollout, now: Date) {
        rollout.wave = wave
        rollout.waveStartedAt = now
        var made = 0
        for index in rollout.sites.indices where rollout.sites[index].wave == wave && rollout.sites[index].operationID == nil {
            let site = rollout.sites[index].site
            if state.withLock({ $0.records[site]?.mode }) == .disconnected {
                rollout.sites[index].skipped = "past its deadline when its wave started"
                continue
            }
            let request = SubmissionRequest(
                site: site.rawValue, kind: rollout.kind.rawValue, params: rollout.params, createdBy: "rollout \(rollout.id) (\(rollout.createdBy))",
                idempotencyKey: "\(rollout.id)/\(site.rawValue)", expiresAt: rollout.expiresAt)
            do {
                let result = try queue.submit(request)
                rollout.sites[index].operationID = result.operation.id
                rollout.sites[index].state = result.operation.state
                made += 1
            } catch {
                rollout.sites[index].skipped = "could not be queued: \(error.message)"
            }
        }
        rollout.reason = nil
        queue.announce(
            FleetEvent(
                type: .rolloutWaveStarted, site: nil, at: now, kind: rollout.kind,
                note: "wave \(wave + 1) of \(rollout.waves)\(wave == 0 && rollout.canary > 0 ? " (canary)" : ""): \(made) operation(s)",
                rollout: rollout.id))
    }

    // MARK: - Storage

    /// Reads, applies `body`, writes with the version check; on a conflict (another replica or
    /// operator changed it meanwhile) reads again and applies again.
    @discardableResult
    func change(
        _ id: String, known: Rollout? = nil, _ body: (inout Rollout, Date) throws(QueueError) -> Void
    ) throws(QueueError) -> Rollout {
        try changing.withLock { _ throws(QueueError) -> Rollout in
            var current = known
            for _ in 0..<5 {
                let loaded: Rollout?
                if let current { loaded = current } else { loaded = try read { try store.rollout(id: id) } }
                guard var rollout = loaded else { throw QueueError(.notFound, "no rollout \(id)") }
                let before = rollout
                try body(&rollout, clock.now())
                if rollout == before {
                    remember(rollout)
                    return rollout
                }
                rollout.updatedAt = clock.now()
                rollout.recount()
                do {
                    let written = try store.update(rollout)
                    remember(written)
                    return written
                } catch RolloutStoreError.conflict {
                    current = nil
                    continue
                } catch {
                    throw QueueError(.unavailable, "the rollout could not be stored: \(error)")
                }
            }
            throw QueueError(.conflict, "rollout \(id) kept changing; try again")
        }
    }

    private func remember(_ rollout: Rollout) {
        cache.withLock { cache in
            if rollout.state.isFinal { cache[rollout.id] = nil } else { cache[rollout.id] = rollout }
        }
    }

    func read<T>(_ body: () throws -> T) throws(QueueError) -> T {
        do { return try body() } catch { throw QueueError(.unavailable, "rollouts cannot be read: \(error)") }
    }
}
