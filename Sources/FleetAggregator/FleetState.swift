public import FleetCore
public import FleetQueue
import DequeModule
import HeapModule

#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif

/// What the fleet state wants published after a change.
public struct FleetOutput: Sendable {
    /// Site views to publish, retained, on `{root}/fleet/sites/{site}`.
    public var views: [SiteView] = []
    /// Events for `{root}/fleet/events`.
    public var events: [FleetEvent] = []
    /// Forgotten sites whose retained view is to be cleared (an empty retained message).
    public var cleared: [SiteID] = []

    public var isEmpty: Bool { views.isEmpty && events.isEmpty && cleared.isEmpty }
}

/// Every site's record, its evaluation, and when each site next needs a look.
///
/// Pure: no I/O and no clock (every call takes `now`), so the 30-day rules are tested in
/// microseconds. Not thread-safe: the service owns it behind one lock.
///
/// Scheduling: each site is in a min-heap at the instant its evaluation changes by
/// itself (the evaluator's `nextChangeAt`) or its view is due for a refresh. A site is
/// pushed again only when its new instant is earlier than the one already in the heap;
/// a later one waits until the earlier entry fires and re-evaluates (cheap), so the heap
/// holds about one entry per site however fast heartbeats arrive. Nothing ever scans the
/// fleet to find what is due.
public final class FleetState {
    public let thresholds: Thresholds
    /// How often a site's retained view is republished while nothing but its countdown
    /// and heartbeat times change (so `remainingS` in the retained view stays current).
    public let viewRefresh: Duration

    public private(set) var records = SiteTable()
    public private(set) var modes = ModeCounts()
    public private(set) var liveness = LivenessCounts()

    private struct Entry: Comparable {
        var atMs: Int64
        var site: SiteID
        static func < (a: Entry, b: Entry) -> Bool { a.atMs != b.atMs ? a.atMs < b.atMs : a.site < b.site }
    }

    private var heap = Heap<Entry>()
    private var scheduledAt: [SiteID: Int64] = [:]
    private var deadlines: [SiteID: Date] = [:]
    /// Events and cleared views to publish; views are `viewOrder`'s.
    private var output = FleetOutput()
    /// Sites whose view is to be published, oldest first, each once however often it was
    /// evaluated meanwhile, with its newest evaluation's instant (`viewDue`). A view is made
    /// when it is taken, a slice at a time: held as views, a fleet's first ones (100,000 sites
    /// coming up at once) were 46 MB at the 100,000-site benchmark's peak, and every one but
    /// the newest of a site was thrown away before publishing anyway.
    private var viewOrder = Deque<SiteID>()
    private var viewDue: [SiteID: PendingView] = [:]

    /// A view to make: the instant of the site's newest evaluation, and whether that evaluation
    /// was projected (made while the aggregator could not hear).
    private struct PendingView {
        var at: Date
        var projected: Bool
    }
    private var queueCounts: [SiteID: QueueCounts] = [:]
    /// Sites whose next evaluation publishes a view whatever changed.
    private var forceView: Set<SiteID> = []
    /// The sites whose mode changed (or that got their first) since `takeModesMoved()`: the
    /// dispatcher must look at them again (a first mode is no `mode-changed` event).
    private var modesMoved: Set<SiteID> = []

    public func takeModesMoved() -> Set<SiteID> {
        defer { modesMoved = [] }
        return modesMoved
    }

    /// Events dropped because the output was not taken for too long (broker unreachable).
    public private(set) var droppedEvents = 0
    /// The most events kept while nobody takes them.
    public var eventCapacity = 100_000
    private var queueTotals = OperationCounts()
    private var dirty: Set<SiteID> = []
    /// Something the fleet summary shows has changed since `takeSummaryChange()`.
    private var summaryChanged = true {
        didSet { if summaryChanged && !oldValue { clockNeeded = true } }
    }

    /// When the clock loop will next look by itself (nil: not until something happens). Set
    /// by the clock loop; a change that needs it sooner raises `clockNeeded`.
    public var plannedWake: Date?
    /// Something needs the clock loop before its planned wake: output to publish, a summary
    /// change, an instant earlier than the one it sleeps to.
    public private(set) var clockNeeded = false

    /// True once after something needed the clock loop (see `clockNeeded`).
    public func takeClockNeeded() -> Bool {
        defer { clockNeeded = false }
        return clockNeeded
    }

    /// Whether the summary shows something not yet published.
    public var summaryPending: Bool { summaryChanged }

    /// Puts `site` in the schedule at `atMs` (when earlier than its entry).
    private func schedule(_ site: SiteID, atMs: Int64) {
        guard scheduledAt[site].map({ atMs < $0 }) ?? true else { return }
        scheduledAt[site] = atMs
        heap.insert(Entry(atMs: atMs, site: site))
        if plannedWake.map({ atMs < $0.millisecondsSince1970 }) ?? true { clockNeeded = true }
    }
    /// Sites an operator forgot and no live presence has brought back: their retained
    /// presence (which the aggregator cannot clear) does not make them again.
    public private(set) var forgotten: Set<SiteID> = []
    /// Forgotten sites a live presence brought back, for the store to drop their tombstones.
    private var revived: Set<SiteID> = []
    /// The most sites the fleet holds; a presence of a new site beyond it is refused.
    public var siteLimit = Int.max

    public init(thresholds: Thresholds, viewRefresh: Duration) {
        self.thresholds = thresholds
        self.viewRefresh = viewRefresh
    }

    /// Restores records from the store and evaluates each at `now`. Silence is measured
    /// from when the aggregator could hear: a site that was online when the aggregator
    /// stopped counts as just seen, so a restart alone does not flip the fleet to stale.
    /// Deadlines are kept: a site that went dark before the restart turns
    /// `disconnected` at its deadline as if the aggregator had never stopped.
    public func restore(_ restored: [SiteRecord], forgotten: Set<SiteID> = [], now: Date) {
        self.forgotten = forgotten.filter { site in !restored.contains { $0.site == site } }
        for var record in restored {
            if record.liveness == .online, record.presence != .offline {
                record.lastSeenAt = max(record.lastSeenAt ?? now, now)
            }
            if let mode = record.mode { modes[mode] += 1 }
            if let live = record.liveness { liveness[live] += 1 }
            records[record.site] = record
            evaluate(record.site, now: now, forceView: false)
        }
    }

    /// Applies one validated message received at `now`.
    @discardableResult
    public func ingest(_ input: SiteInput, now: Date, live: Bool = true) -> ApplyOutcome {
        let site = input.site
        let existing = records[site]
        if existing == nil {
            // A site exists once it has announced itself; anything else from an unknown site is
            // counted, not made into a site (100,000 made-up heartbeats made 100,000 sites).
            guard case .presence = input else { return .unannounced }
            if forgotten.contains(site) {
                // The retained presence of a site an operator forgot is a leftover; its agent
                // coming back (a live presence) makes it again.
                guard live else { return .ignored("retained presence of a forgotten site") }
                forgotten.remove(site)
                revived.insert(site)
                // A clear of its retained view not yet taken would go after (and erase) its new view.
                output.cleared.removeAll { $0 == site }
                storeNeeded = true
            }
            guard records.count < siteLimit else { return .overLimit }
        }
        var record = existing ?? SiteRecord(site: site)
        let isNew = existing == nil
        let before = record.checks
        let earlier = (record.session, record.instance, record.earliestCertificateExpiry, record.seqGaps, record.lastAzureContactAt)
        let outcome = record.apply(input, now: now, live: live, offlineAfterIntervals: thresholds.offlineAfterIntervals)
        guard case .applied = outcome else {
            if !isNew {
                records[site] = record  // counters moved
                changedUnwritten.insert(site)
            }
            return outcome
        }
        records[site] = record
        if isNew { summaryChanged = true }
        // What a heartbeat changes is written with the next sweep (every `writeEvery`) unless it
        // matters now: a new session, new certificates, a gap, a contact that moved by more than
        // a minute. Presence and status are always written. (Every record was written every
        // second under a steady stream: the store's JSON encoding was the heaviest part of ingest.)
        var significant = true
        if case .heartbeat = input {
            let movedMs = abs((record.lastAzureContactAt?.millisecondsSince1970 ?? 0) - (earlier.4?.millisecondsSince1970 ?? 0))
            significant =
                earlier.0 != record.session || earlier.1 != record.instance || earlier.2 != record.earliestCertificateExpiry
                || earlier.3 != record.seqGaps || (earlier.4 == nil) != (record.lastAzureContactAt == nil) || movedMs > 60_000
        }
        evaluate(site, now: now, forceView: isNew || record.checks != before, persist: significant)
        return .applied
    }

    /// Evaluates every site whose scheduled instant has come. Returns how many were
    /// evaluated and the largest lateness (how long after its instant a site was looked at).
    /// At most `limit` sites are evaluated per call, so that a caller holding a lock can
    /// let ingest in between (many sites can come due in the same instant: every site
    /// loaded in one burst goes stale at once).
    @discardableResult
    public func runDue(now: Date, limit: Int = .max) -> (evaluated: Int, maxLateness: Duration) {
        let nowMs = now.millisecondsSince1970
        var evaluated = 0
        var lateness: Int64 = 0
        while evaluated < limit, let top = heap.min, top.atMs <= nowMs {
            heap.removeMin()
            guard scheduledAt[top.site] == top.atMs else { continue }  // superseded by an earlier entry
            scheduledAt[top.site] = nil
            lateness = max(lateness, nowMs - top.atMs)
            evaluate(top.site, now: now, forceView: forceView.remove(top.site) != nil)
            evaluated += 1
        }
        return (evaluated, .milliseconds(lateness))
    }

    /// Entries in the schedule (superseded ones included), for tests and metrics.
    public var scheduledEntries: Int { heap.count }

    /// Whether `runDue(now:)` has work.
    public func hasDue(now: Date) -> Bool { heap.min.map { $0.atMs <= now.millisecondsSince1970 } ?? false }

    /// The next instant `runDue` has work, if any.
    public var nextWake: Date? { heap.min.map { Date(timeIntervalSince1970: Double($0.atMs) / 1000) } }

    /// Views and events produced since the last call, the oldest `limit` views at most
    /// (events always all: they are few and their order matters).
    public func takeOutput(limit: Int = .max) -> FleetOutput {
        var taken = output
        output = FleetOutput()
        taken.views.reserveCapacity(min(limit, viewDue.count))
        while taken.views.count < limit, let site = viewOrder.popFirst() {
            guard let due = viewDue.removeValue(forKey: site), let view = view(of: site, as: due) else { continue }
            taken.views.append(view)
        }
        return taken
    }

    /// Lets the output go unmade (a standby publishes nothing; it republishes the whole fleet
    /// when it takes the lead).
    public func dropOutput() {
        output = FleetOutput()
        viewOrder.removeAll()
        viewDue.removeAll()
    }

    /// Views waiting to be taken (`takeOutput`).
    public var pendingViews: Int { viewDue.count }

    /// Up to `limit` records changed since they were last taken, for the store.
    public func takeDirty(limit: Int = .max) -> [SiteRecord] {
        var taken: [SiteRecord] = []
        taken.reserveCapacity(min(limit, dirty.count))
        while taken.count < limit, let site = dirty.popFirst() {
            if let record = records[site] { taken.append(record) }
        }
        return taken
    }

    /// Forgotten sites brought back since the last call (their tombstones can go).
    public func takeRevived() -> Set<SiteID> {
        defer { revived.removeAll() }
        return revived
    }

    /// Removes a site (an operator's decision: a decommissioned site): its record, counts,
    /// schedule and deadline; its retained view is cleared and a `site-forgotten` event goes
    /// out. Returns false for a site the state does not hold.
    @discardableResult
    public func forget(_ site: SiteID, now: Date, note: String) -> Bool {
        guard let record = records.removeValue(forKey: site) else { return false }
        if let mode = record.mode { modes[mode] -= 1 }
        if let live = record.liveness { liveness[live] -= 1 }
        scheduledAt[site] = nil  // its heap entries are skipped when they come up
        deadlines[site] = nil
        queueCounts[site] = nil
        dirty.remove(site)
        changedUnwritten.remove(site)
        revived.remove(site)
        forceView.remove(site)
        forgotten.insert(site)
        viewDue[site] = nil  // its place in `viewOrder` is skipped when it comes up
        output.cleared.append(site)
        output.events.append(FleetEvent(type: .siteForgotten, site: site, at: now, note: note))
        clockNeeded = true
        summaryChanged = true
        return true
    }

    /// Whether records wait to be written (or tombstones of revived sites to be dropped).
    public var hasDirty: Bool { !dirty.isEmpty || !revived.isEmpty }

    /// Records became dirty while none were: the store loop has work again.
    public private(set) var storeNeeded = false

    /// True once after records became dirty (see `storeNeeded`).
    public func takeStoreNeeded() -> Bool {
        defer { storeNeeded = false }
        return storeNeeded
    }

    private func markDirty(_ site: SiteID) {
        if dirty.isEmpty { storeNeeded = true }
        dirty.insert(site)
        changedUnwritten.remove(site)
    }

    /// Sites whose records changed in ways that need not be written at once (see `ingest`).
    private var changedUnwritten: Set<SiteID> = []

    /// Moves every record changed since it was last written onto the store's list: every
    /// minute, and before the aggregator stops. Returns how many.
    @discardableResult
    public func sweepUnwritten() -> Int {
        let count = changedUnwritten.count
        if count > 0 {
            if dirty.isEmpty { storeNeeded = true }
            dirty.formUnion(changedUnwritten)
            changedUnwritten.removeAll(keepingCapacity: true)
        }
        return count
    }

    /// Puts records back on the list for the store (after a failed write).
    public func markDirty(_ sites: [SiteID]) {
        if dirty.isEmpty, !sites.isEmpty { storeNeeded = true }
        dirty.formUnion(sites)
    }

    /// True once after anything the summary shows changed.
    public func takeSummaryChange() -> Bool {
        defer { summaryChanged = false }
        return summaryChanged
    }

    /// The fleet summary at `now`: counts, and the five nearest deadlines of sites not yet
    /// disconnected.
    public func summary(now: Date) -> FleetSummary {
        var nearest: [(SiteID, Date)] = []
        // `records[site]?.mode` would copy the whole record for each site (a summary is taken
        // several times a second while an operator or a dashboard polls): the mode is read in place.
        for (site, deadline) in deadlines where records.read(site, { $0.mode != .disconnected }) ?? true {
            if nearest.count < 5 {
                nearest.append((site, deadline))
                nearest.sort { $0.1 < $1.1 }
            } else if deadline < nearest[4].1 {
                nearest[4] = (site, deadline)
                nearest.sort { $0.1 < $1.1 }
            }
        }
        let entries = nearest.map { site, deadline in
            DeadlineEntry(
                site: site, mode: records[site]?.mode ?? .unknown, deadline: deadline,
                remainingS: deadline.timeIntervalSince(now))
        }
        return FleetSummary(
            at: now, sites: records.count, modes: modes, liveness: liveness, nearestDeadlines: entries, queue: queueTotals)
    }

    /// Every site's deadline as last evaluated (sites without one are left out), unordered.
    public func deadlineEntries() -> [(site: SiteID, deadline: Date)] {
        deadlines.map { ($0.key, $0.value) }
    }

    /// The view of one site as last evaluated.
    public func view(of site: SiteID, now: Date) -> SiteView? {
        records.read(site) { record in view(of: record, evaluation(of: record, now: now)) }
    }

    /// A record's view with an evaluation of it.
    private func view(of record: SiteRecord, _ evaluation: SiteEvaluation) -> SiteView {
        SiteView(
            site: record.site, evaluation: evaluation, lastHeartbeatAt: record.lastHeartbeatAt,
            lastAzureContactAt: record.lastAzureContactAt, queue: queueCounts[record.site] ?? QueueCounts(), checks: record.checks,
            labels: record.labels)
    }

    /// A waiting view as the site's newest evaluation left it: evaluated again at that instant,
    /// with the mode, liveness and alert that evaluation stored (and the events announced).
    /// Evaluated again alone it could differ: after a broker outage `setListening` has moved
    /// `lastSeenAt` forward, and a site that went stale just before the outage would show online.
    private func view(of site: SiteID, as due: PendingView) -> SiteView? {
        records.read(site) { record in
            var e = evaluation(of: record, now: due.at)
            if let mode = record.mode { e.mode = mode }
            if let since = record.modeSince { e.modeSince = since }
            if let liveness = record.liveness { e.liveness = liveness }
            if let alert = record.alert { e.alert = alert }
            e.expiredAt = record.expiredAt
            e.projected = due.projected
            return view(of: record, e)
        }
    }

    /// Every site's view now, ordered by site id (for the operator surfaces).
    public func allViews(now: Date, where include: (SiteView) -> Bool = { _ in true }) -> [SiteView] {
        records.keys.sorted().compactMap { site in view(of: site, now: now).flatMap { include($0) ? $0 : nil } }
    }

    /// What the queue and the dispatcher need to know about a site now (nil: never heard from).
    public func situation(of site: SiteID, now: Date) -> (submission: SiteSituation, dispatch: DispatchSituation)? {
        guard let record = records[site] else { return nil }
        let e = evaluation(of: record, now: now)
        return (
            SiteSituation(mode: e.mode, stable: e.stable, deadline: e.deadline, capabilities: record.capabilities),
            DispatchSituation(
                mode: e.mode, stable: e.stable,
                readySince: e.mode == .connected ? e.modeSince.addingTimeInterval(thresholds.stableFor.secondsValue) : nil,
                expiredAt: e.expiredAt, cluster: record.cluster)
        )
    }

    /// Takes a change of the queue's counts (every site's, or some sites'); republishes the views
    /// whose counts changed.
    public func setQueue(_ change: QueueCountsChange, now: Date) {
        func typed(_ byState: [OperationState: Int]?) -> QueueCounts {
            guard let byState else { return QueueCounts() }
            return QueueCounts(
                queued: byState[.queued] ?? 0, dispatching: byState[.dispatching] ?? 0, failed: byState[.failed] ?? 0,
                blocked: byState[.blocked] ?? 0)
        }
        var changed: [SiteID] = []
        if let sites = change.sites {
            for site in sites {
                let counts = typed(change.counts[site])
                let before = queueCounts[site] ?? QueueCounts()
                guard counts != before else { continue }
                queueCounts[site] = counts == QueueCounts() ? nil : counts
                changed.append(site)
            }
        } else {
            var next: [SiteID: QueueCounts] = [:]
            next.reserveCapacity(change.counts.count)
            for (site, byState) in change.counts {
                let counts = typed(byState)
                if counts != QueueCounts() { next[site] = counts }
            }
            for (site, counts) in next where (queueCounts[site] ?? QueueCounts()) != counts { changed.append(site) }
            for (site, counts) in queueCounts where next[site] == nil && counts != QueueCounts() { changed.append(site) }
            queueCounts = next
        }
        var totals = OperationCounts()
        for (state, n) in change.totals { totals[state] += n }
        if totals != queueTotals {
            queueTotals = totals
            summaryChanged = true
        }
        for site in changed where records.contains(site) {
            evaluate(site, now: now, forceView: true)
        }
    }

    /// Schedules every site for a fresh view now (after a reconnect: a broker restarted
    /// without persistence has forgotten the retained views). Goes through the schedule, so
    /// the clock loop publishes them in slices and never a view older than a newer one.
    public func republishAll(now: Date) {
        let nowMs = now.millisecondsSince1970
        for site in records.keys {
            forceView.insert(site)
            schedule(site, atMs: nowMs)
        }
        summaryChanged = true
    }

    /// Adds an event (the queue's) to the output, in order with the fleet's own.
    public func append(_ event: FleetEvent) {
        output.events.append(event)
        clockNeeded = true
    }

    // MARK: - Evaluation

    /// Since when the aggregator's own broker link has been down (nil while it is up). Silence
    /// is counted against a site only while the aggregator can hear it: a broker outage is not
    /// a fleet outage.
    public private(set) var deafSince: Date?

    /// The aggregator's own broker link went down (false) or came back (true) at `now`. While
    /// it is down, liveness stands still (each site's silence is frozen at the moment the link
    /// went) and every evaluation is marked projected; modes still follow real time (a deadline
    /// passes whether or not the aggregator hears the site). When it comes back, each site's
    /// last-seen time moves forward by the outage it spent silent, so a site that kept beating
    /// is online at once and one that really went quiet goes stale after its own intervals of
    /// silence, counted from before and after the outage.
    public func setListening(_ listening: Bool, now: Date) {
        guard listening else {
            if deafSince == nil { deafSince = now }
            return
        }
        guard let since = deafSince else { return }
        deafSince = nil
        var moved: [SiteID] = []
        records.updateEach { record in
            guard let seen = record.lastSeenAt, seen < now else { return }
            record.lastSeenAt = seen.addingTimeInterval(now.timeIntervalSince(max(since, seen)))
            moved.append(record.site)
        }
        for site in moved { markDirty(site) }
    }

    /// The evaluator's answer for a record now, with the silence the aggregator could not hear
    /// left out (see `setListening`).
    private func evaluation(of record: SiteRecord, now: Date) -> SiteEvaluation {
        var knowledge = record.knowledge
        if let since = deafSince, let seen = knowledge.lastSeenAt, seen < now {
            knowledge.lastSeenAt = seen.addingTimeInterval(now.timeIntervalSince(max(since, seen)))
        }
        var e = ConnectivityEvaluator.evaluate(knowledge, thresholds: thresholds, now: now)
        if deafSince != nil { e.projected = true }
        return e
    }

    private func evaluate(_ site: SiteID, now: Date, forceView: Bool, persist: Bool = false) {
        defer {
            if output.events.count > eventCapacity {
                droppedEvents += output.events.count - eventCapacity
                output.events.removeFirst(output.events.count - eventCapacity)
            }
        }
        guard var record = records[site] else { return }
        let e = evaluation(of: record, now: now)
        let eventsBefore = output.events.count
        var viewMarked = false
        defer { if viewMarked || output.events.count != eventsBefore { clockNeeded = true } }
        var publish = forceView

        let modeOrLivenessChanged = record.mode != e.mode || record.liveness != e.liveness
        let alertChanged = record.alert != e.alert || record.alertAnnounced != nil && e.alert == .none
        let expiredChanged = record.expiredAt != e.expiredAt
        if record.mode != e.mode {
            modesMoved.insert(site)
            if let old = record.mode { modes[old] -= 1 }
            // A site's first mode is an event too (without `from`): the stored history of a
            // site then starts when the aggregator first knew it.
            output.events.append(
                FleetEvent(
                    type: .modeChanged, site: site, at: now, from: record.mode?.rawValue, to: e.mode.rawValue,
                    contactAt: record.lastAzureContactAt, deadline: e.deadline))
            modes[e.mode] += 1
            publish = true
        }
        if record.liveness != e.liveness {
            if let old = record.liveness {
                liveness[old] -= 1
                output.events.append(
                    FleetEvent(type: .livenessChanged, site: site, at: now, from: old.rawValue, to: e.liveness.rawValue))
            }
            liveness[e.liveness] += 1
            publish = true
        }
        // One deadline-alert per level crossed in a countdown; a countdown ends when the
        // alert is back to none (the site reached Azure again).
        if e.alert == .none {
            record.alertAnnounced = nil
        } else {
            // A lower alert than announced means a new contact or certificate: re-arm from there.
            let announced = min(record.alertAnnounced ?? .none, e.alert)
            for level in [AlertLevel.warning, .critical, .expired] where level > announced && level <= e.alert {
                output.events.append(
                    FleetEvent(type: .deadlineAlert, site: site, at: now, level: level, remainingS: e.remainingS))
            }
            record.alertAnnounced = max(announced, e.alert)
        }
        if record.alert != e.alert { publish = true }

        let refreshMs = viewRefresh.milliseconds
        if !publish, let last = record.viewPublishedAt, now.millisecondsSince1970 - last.millisecondsSince1970 >= refreshMs {
            publish = true
        }
        if record.viewPublishedAt == nil { publish = true }

        record.mode = e.mode
        record.modeSince = e.modeSince
        record.liveness = e.liveness
        record.alert = e.alert
        record.expiredAt = e.expiredAt
        if deadlines[site] != e.deadline {
            deadlines[site] = e.deadline
            summaryChanged = true  // the nearest deadlines may have moved
        }
        if publish {
            // Made when taken, as this evaluation leaves the site (`takeOutput`).
            if viewDue.updateValue(PendingView(at: now, projected: e.projected), forKey: site) == nil { viewOrder.append(site) }
            viewMarked = true
            record.viewPublishedAt = now
            summaryChanged = true
        } else if viewDue[site] != nil {
            // A view still waiting shows the newest evaluation, not the one that asked for it.
            viewDue[site] = PendingView(at: now, projected: e.projected)
        }
        let changed = persist || modeOrLivenessChanged || alertChanged || expiredChanged
        records[site] = record
        if changed {
            markDirty(site)
        } else {
            changedUnwritten.insert(site)
        }

        // Wake for the next change, or to refresh a view whose countdown is running.
        var wakeMs = e.nextChangeAt.map(\.millisecondsSince1970)
        if e.deadline != nil, e.mode != .disconnected, let published = record.viewPublishedAt {
            let refresh = published.millisecondsSince1970 + refreshMs
            wakeMs = min(wakeMs ?? refresh, refresh)
        }
        if let wakeMs { schedule(site, atMs: wakeMs) }
    }
}
