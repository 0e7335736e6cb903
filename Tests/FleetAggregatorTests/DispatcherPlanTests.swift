@testable import FleetQueue
import FleetCore
import Foundation
import Logging
import Synchronization
import TestSupport
import Testing

@Suite("the dispatcher's plan: a site that connects is looked at alone, not with the whole queue", .ownThread)
struct DispatcherPlanTests {
    @Test("a site that connects after the full pass gets its operations started by the next pass, which looks up that site only")
    func movedSiteJoins() throws {
        let fresh = try FreshStores(.sqlite)
        defer { fresh.remove() }
        let store = fresh.stores.operations
        let queue = DeferredQueue(store: store, executors: OperationQueueTests.executors)
        func submit(_ site: String) throws -> DeferredOperation {
            try queue.submit(
                SubmissionRequest(site: site, kind: "extension.install", params: ["name": "ext"], createdBy: "t"),
                situation: OperationQueueTests.semi, now: OperationQueueTests.now
            ).operation
        }
        let operations = try (0..<50).map { try submit("plan-\($0)") }
        let joining = operations[17]
        // No executors: a started operation is claimed (dispatching) and then failed with the reason.
        let dispatcher = Dispatcher(store: store, executors: [:], settings: DispatchSettings(), logger: Logger(label: "test"), emit: { _ in })
        let situations = Mutex([SiteID: DispatchSituation]())
        for operation in operations { situations.withLock { $0[operation.site] = DispatchSituation(mode: .semiConnected, stable: false, cluster: nil) } }
        let asked = Mutex([Set<SiteID>]())
        let lookup: (Set<SiteID>) -> [SiteID: DispatchSituation] = { sites in
            asked.withLock { $0.append(sites) }
            return situations.withLock { all in all.filter { sites.contains($0.key) } }
        }
        // The full pass: every site with queued operations looked up; nothing may run.
        try dispatcher.tick(now: Date(), situations: lookup)
        #expect(asked.withLock { $0.last?.count } == 50)
        #expect(try store.operation(id: joining.id)?.state == .queued)

        // One site connects (a mode change): the next pass looks it up alone and starts its operation.
        situations.withLock { $0[joining.site] = DispatchSituation(mode: .connected, stable: true, cluster: nil) }
        dispatcher.sitesMoved([joining.site])
        try dispatcher.tick(now: Date(), situations: lookup)
        #expect(asked.withLock { $0.count } == 2)
        #expect(asked.withLock { $0.last } == [joining.site], "the pass after a mode change looked up \(asked.withLock { $0.last?.count ?? 0 }) sites")
        #expect(try store.operation(id: joining.id)?.state != .queued, "the connected site's operation did not start")
        for other in operations where other.id != joining.id { #expect(try store.operation(id: other.id)?.state == .queued) }

        // It stops being connected: it leaves the plan (nothing more of it would start).
        situations.withLock { $0[joining.site] = DispatchSituation(mode: .semiConnected, stable: false, cluster: nil) }
        dispatcher.sitesMoved([joining.site])
        try dispatcher.tick(now: Date(), situations: lookup)
        #expect(asked.withLock { $0.last } == [joining.site])
    }

    @Test("a fleet's first modes are not looked up for sites with nothing waiting: the pass asks for the moved sites the plan holds operations for")
    func movedSitesWithoutOperations() throws {
        let plan = try Plan()
        defer { plan.fresh.remove() }
        let (store, dispatcher) = (plan.store, plan.dispatcher)
        let operation = try plan.submit("first-modes-1")
        let asked = Mutex([Set<SiteID>]())
        let connected = Mutex(false)
        let lookup: (Set<SiteID>) -> [SiteID: DispatchSituation] = { sites in
            asked.withLock { $0.append(sites) }
            let mode: ConnectivityMode = connected.withLock { $0 } ? .connected : .semiConnected
            return Dictionary(uniqueKeysWithValues: sites.map { ($0, DispatchSituation(mode: mode, stable: mode == .connected, cluster: nil)) })
        }
        try dispatcher.tick(now: Date(), situations: lookup)  // the full pass
        #expect(asked.withLock { $0.last } == [operation.site])

        // 10,000 sites get their first mode at once (a fleet coming up), the one with an operation among them.
        connected.withLock { $0 = true }
        var moved = Set((0..<10_000).map { try! SiteID("first-modes-idle-\($0)") })
        moved.insert(operation.site)
        dispatcher.sitesMoved(moved)
        try dispatcher.tick(now: Date(), situations: lookup)
        #expect(asked.withLock { $0.count } == 2)
        #expect(asked.withLock { $0.last } == [operation.site], "the pass looked up \(asked.withLock { $0.last?.count ?? 0 }) sites")
        #expect(dispatcher.heldSituations == 1)
        #expect(try store.operation(id: operation.id)?.state != .queued, "the connected site's operation did not start")

        // A site of those gets an operation later: it is looked up then, alone.
        let later = try plan.submit("first-modes-idle-7")
        dispatcher.added(later, superseded: [])
        try dispatcher.tick(now: Date(), situations: lookup)
        #expect(asked.withLock { $0.last } == [later.site])
        #expect(try store.operation(id: later.id)?.state != .queued, "the later operation did not start")
    }

    @Test("a site that moved is looked at again when a submission changed the plan while it was being looked up")
    func movedDuringSubmission() throws {
        let plan = try Plan()
        defer { plan.fresh.remove() }
        let (store, dispatcher) = (plan.store, plan.dispatcher)
        let waiting = try plan.submit("race-moving")
        let connected = Mutex(Set<SiteID>())
        let submitDuringLookup = Mutex(false)
        let lookup: (Set<SiteID>) -> [SiteID: DispatchSituation] = { sites in
            if submitDuringLookup.withLock({ $0 }) {
                submitDuringLookup.withLock { $0 = false }
                // An operator's submission lands while the pass looks the moved site up.
                let other = try! plan.submit("race-other")
                dispatcher.added(other, superseded: [])
            }
            let up = connected.withLock { $0 }
            return Dictionary(uniqueKeysWithValues: sites.map {
                ($0, DispatchSituation(mode: up.contains($0) ? .connected : .semiConnected, stable: up.contains($0), cluster: nil))
            })
        }
        try dispatcher.tick(now: Date(), situations: lookup)  // the full pass
        connected.withLock { $0.insert(waiting.site) }
        dispatcher.sitesMoved([waiting.site])
        submitDuringLookup.withLock { $0 = true }
        try dispatcher.tick(now: Date(), situations: lookup)  // its look is overtaken by the submission
        try dispatcher.tick(now: Date(), situations: lookup)  // looks again: the site is connected
        #expect(try store.operation(id: waiting.id)?.state != .queued, "the connected site's operation waited for the next full pass")
    }

    @Test("a submission joins the plan without a full pass: the next pass looks nothing up and starts it; one that supersedes others brings a full pass")
    func submissionJoins() throws {
        let fresh = try FreshStores(.sqlite)
        defer { fresh.remove() }
        let store = fresh.stores.operations
        let queue = DeferredQueue(store: store, executors: OperationQueueTests.executors)
        let dispatcher = Dispatcher(store: store, executors: [:], settings: DispatchSettings(), logger: Logger(label: "test"), emit: { _ in })
        let asked = Mutex(0)
        let sizes = Mutex([Int]())
        let lookup: (Set<SiteID>) -> [SiteID: DispatchSituation] = { sites in
            asked.withLock { $0 += 1 }
            sizes.withLock { $0.append(sites.count) }
            return Dictionary(uniqueKeysWithValues: sites.map { ($0, DispatchSituation(mode: .connected, stable: true, cluster: nil)) })
        }
        func submit(_ site: String, _ name: String) throws -> SubmissionResult {
            try queue.submit(
                SubmissionRequest(site: site, kind: "extension.install", params: ["name": name], createdBy: "t"),
                situation: OperationQueueTests.semi, now: OperationQueueTests.now)
        }
        // A plan with one connected site's operation, far in the future (it stays waiting).
        _ = try queue.submit(
            SubmissionRequest(site: "plan-a", kind: "extension.install", params: ["name": "later"], createdBy: "t", notBefore: Date().addingTimeInterval(3600)),
            situation: OperationQueueTests.semi, now: OperationQueueTests.now)
        try dispatcher.tick(now: Date(), situations: lookup)
        #expect(asked.withLock { $0 } == 1)
        // A new submission at the same site: added to the plan, the next pass a quick one; the site's older
        // operation (scheduled later) goes first, so it waits.
        let added = try submit("plan-a", "now")
        dispatcher.added(added.operation, superseded: added.superseded)
        try dispatcher.tick(now: Date(), situations: lookup)
        #expect(asked.withLock { $0 } == 1, "a full pass ran after a submission")
        #expect(try store.operation(id: added.operation.id)?.state == .queued, "it overtook its site's older operation")
        // At a site the plan has not looked at: the next pass looks up that site alone, and starts it.
        let elsewhere = try submit("plan-b", "now")
        dispatcher.added(elsewhere.operation, superseded: elsewhere.superseded)
        try dispatcher.tick(now: Date(), situations: lookup)
        #expect(sizes.withLock { $0 } == [1, 1], "\(sizes.withLock { $0 })")
        #expect(try store.operation(id: elsewhere.operation.id)?.state != .queued, "the connected site's new operation did not start")
        // One that supersedes another (a scale of the same node pool): the next pass is a full one.
        func scale(_ count: String) throws -> SubmissionResult {
            try queue.submit(
                SubmissionRequest(site: "plan-c", kind: "nodepool.scale", params: ["nodepool": "np1", "count": count], createdBy: "t",
                                  notBefore: Date().addingTimeInterval(3600)),
                situation: OperationQueueTests.semi, now: OperationQueueTests.now)
        }
        _ = try scale("3")
        let again = try scale("4")
        #expect(!again.superseded.isEmpty)
        dispatcher.added(again.operation, superseded: again.superseded)
        try dispatcher.tick(now: Date(), situations: lookup)
        #expect(sizes.withLock { $0 }.count == 3 && sizes.withLock { $0 }.last ?? 0 >= 2, "no full pass after a superseding submission: \(sizes.withLock { $0 })")
    }

    @Test("a site that passes its deadline is a full pass's work: its operations are blocked")
    func movedSiteExpires() throws {
        let plan = try Plan()
        defer { plan.fresh.remove() }
        let (store, dispatcher) = (plan.store, plan.dispatcher)
        let operation = try plan.submit("plan-expiring")
        let situation = Mutex(DispatchSituation(mode: .semiConnected, stable: false, cluster: nil))
        let lookup: (Set<SiteID>) -> [SiteID: DispatchSituation] = { sites in
            Dictionary(uniqueKeysWithValues: sites.map { ($0, situation.withLock { $0 }) })
        }
        try dispatcher.tick(now: Date(), situations: lookup)
        situation.withLock { $0 = DispatchSituation(mode: .disconnected, stable: false, expiredAt: Date(), cluster: nil) }
        dispatcher.sitesMoved([operation.site])
        try dispatcher.tick(now: Date(), situations: lookup)  // looks again, finds it past its deadline
        try dispatcher.tick(now: Date(), situations: lookup)  // the full pass that follows blocks it
        #expect(try store.operation(id: operation.id)?.state == .blocked)
    }

    @Test("without another writer the queue is read once and no full pass follows the first for 10 s, past the 2 s re-read too; another process's submission is picked up")
    func noRereadWithoutOtherWriters() async throws {
        let fresh = try FreshStores(.sqlite)
        defer { fresh.remove() }
        let store = fresh.stores.operations
        let queue = DeferredQueue(store: store, executors: OperationQueueTests.executors)
        for n in 0..<50 {
            _ = try queue.submit(
                SubmissionRequest(site: "wait-\(n)", kind: "extension.install", params: ["name": "ext"], createdBy: "t"),
                situation: OperationQueueTests.semi, now: OperationQueueTests.now)
        }
        let dispatcher = Dispatcher(store: store, executors: [:], settings: DispatchSettings(), logger: Logger(label: "test"), emit: { _ in })
        let fullLookups = Mutex(0)
        let newcomer = try SiteID("newcomer")
        let lookup: (Set<SiteID>) -> [SiteID: DispatchSituation] = { sites in
            if sites.count >= 50 { fullLookups.withLock { $0 += 1 } }
            return Dictionary(uniqueKeysWithValues: sites.map { ($0, DispatchSituation(mode: $0 == newcomer ? .connected : .semiConnected, stable: $0 == newcomer, cluster: nil)) })
        }
        let until = ContinuousClock.now + .milliseconds(3_500)
        while ContinuousClock.now < until {
            try dispatcher.tick(now: Date(), situations: lookup)
            try await Task.sleep(for: .milliseconds(25))
        }
        // The first only (the safety net comes every 10 s); a pass on every tick after 2 s would be dozens.
        #expect(fullLookups.withLock { $0 } == 1, "\(fullLookups.withLock { $0 }) full passes in 3.5 s")

        // Another process writes the database: the next look at the queue after rereadEvery reads it again.
        let other = DeferredQueue(store: try fresh.reopen().operations, executors: OperationQueueTests.executors)
        let id = try other.submit(
            SubmissionRequest(site: "newcomer", kind: "extension.install", params: ["name": "ext"], createdBy: "t"),
            situation: OperationQueueTests.semi, now: OperationQueueTests.now
        ).operation.id
        let deadline = ContinuousClock.now + .seconds(5)
        while try store.operation(id: id)?.state == .queued, ContinuousClock.now < deadline {
            try dispatcher.tick(now: Date(), situations: lookup)
            try await Task.sleep(for: .milliseconds(25))
        }
        #expect(try store.operation(id: id)?.state != .queued, "another process's operation was not picked up within 5 s")
    }

    @Test("an operation's expiry brings a full pass at its instant, not at the 10 s safety net")
    func expiryBringsFullPass() async throws {
        let fresh = try FreshStores(.sqlite)
        defer { fresh.remove() }
        let store = fresh.stores.operations
        let queue = DeferredQueue(store: store, executors: OperationQueueTests.executors)
        for n in 0..<20 {
            _ = try queue.submit(
                SubmissionRequest(site: "still-\(n)", kind: "extension.install", params: ["name": "ext"], createdBy: "t"),
                situation: OperationQueueTests.semi, now: Date())
        }
        let dispatcher = Dispatcher(store: store, executors: [:], settings: DispatchSettings(), logger: Logger(label: "test"), emit: { _ in })
        let fullLookups = Mutex(0)
        let lookup: (Set<SiteID>) -> [SiteID: DispatchSituation] = { sites in
            if sites.count >= 20 { fullLookups.withLock { $0 += 1 } }
            return Dictionary(uniqueKeysWithValues: sites.map { ($0, DispatchSituation(mode: .semiConnected, stable: false, cluster: nil)) })
        }
        try dispatcher.tick(now: Date(), situations: lookup)
        // Submitted after the first full pass: the plan takes it in, with its expiry.
        let expiring = try queue.submit(
            SubmissionRequest(
                site: "still-0", kind: "extension.install", params: ["name": "other"], createdBy: "t", expiresAt: Date().addingTimeInterval(1)),
            situation: OperationQueueTests.semi, now: Date())
        dispatcher.added(expiring.operation, superseded: expiring.superseded)
        let deadline = ContinuousClock.now + .seconds(4)
        while try store.operation(id: expiring.operation.id)?.state != .expired, ContinuousClock.now < deadline {
            try dispatcher.tick(now: Date(), situations: lookup)
            try await Task.sleep(for: .milliseconds(25))
        }
        let stored = try store.operation(id: expiring.operation.id)
        #expect(stored?.state == .expired, "not expired within 3 s of its expiry: \(stored?.state.rawValue ?? "gone")")
        // The first pass and the one at the expiry (the submission alone is no full pass).
        #expect(fullLookups.withLock { $0 } == 2, "\(fullLookups.withLock { $0 }) full passes")
        #expect(try store.operation(id: expiring.operation.id)?.history.last?.note.hasPrefix("expired at") == true)
    }

    @Test("an operation retried right after its failure runs again at once, not at the next read of the whole queue")
    func retriedRunsAgain() async throws {
        let fresh = try FreshStores(.sqlite)
        defer { fresh.remove() }
        let store = fresh.stores.operations
        let queue = DeferredQueue(store: store, executors: OperationQueueTests.executors)
        let id = try queue.submit(
            SubmissionRequest(site: "again", kind: "extension.install", params: ["name": "ext"], createdBy: "t", maxAttempts: 1),
            situation: OperationQueueTests.connected, now: Date()
        ).operation.id
        // No executor for the kind: each attempt is claimed and fails at once with the reason.
        let dispatcher = Dispatcher(store: store, executors: [:], settings: DispatchSettings(), logger: Logger(label: "test"), emit: { _ in })
        let lookup: (Set<SiteID>) -> [SiteID: DispatchSituation] = { sites in
            Dictionary(uniqueKeysWithValues: sites.map { ($0, DispatchSituation(mode: .connected, stable: true, cluster: nil)) })
        }
        func attempts(until state: OperationState) async throws -> Int {
            let deadline = ContinuousClock.now + .seconds(20)  // a loaded machine; the whole queue's next read is minutes away
            while try store.operation(id: id)?.state != state, ContinuousClock.now < deadline {
                try dispatcher.tick(now: Date(), situations: lookup)
                try await Task.sleep(for: .milliseconds(10))
            }
            return try store.operation(id: id)?.history.filter { $0.to == .dispatching }.count ?? 0
        }
        #expect(try await attempts(until: .failed) == 1)
        try #require(try store.operation(id: id)?.state == .failed)
        _ = try queue.retry(id: id, by: "t", now: Date())
        dispatcher.invalidate()  // as the queue service does after an operator's action
        #expect(try await attempts(until: .failed) == 2, "the retried operation did not run again")
    }

    @Test("operations that started and ended since the queue was read are not claimed again from the plan's copy: no refused claim, no extra read of the queue")
    func endedSinceReadStaysOut() async throws {
        let fresh = try FreshStores(.sqlite)
        defer { fresh.remove() }
        let store = fresh.stores.operations
        let queue = DeferredQueue(store: store, executors: OperationQueueTests.executors)
        func submit(_ site: String, _ name: String) throws -> DeferredOperation {
            try queue.submit(
                SubmissionRequest(site: site, kind: "extension.install", params: ["name": name], createdBy: "t", maxAttempts: 1),
                situation: OperationQueueTests.semi, now: Date()
            ).operation
        }
        let ours = [try submit("twice", "one"), try submit("twice", "two")]
        _ = try submit("away", "ext")  // a site that stays away: every full pass looks it up, and only a full pass
        // No executor for the kind: each attempt is claimed and fails at once with the reason.
        let dispatcher = Dispatcher(store: store, executors: [:], settings: DispatchSettings(), logger: Logger(label: "test"), emit: { _ in })
        let fullPasses = Mutex(0)
        let lookup: (Set<SiteID>) -> [SiteID: DispatchSituation] = { sites in
            if sites.contains(where: { $0.rawValue == "away" }) { fullPasses.withLock { $0 += 1 } }
            return Dictionary(uniqueKeysWithValues: sites.map {
                ($0, DispatchSituation(mode: $0.rawValue == "away" ? .semiConnected : .connected, stable: true, cluster: nil))
            })
        }
        // The first full pass reads the queue; both of the connected site's operations run (one after
        // the other) and end, without another read.
        let deadline = ContinuousClock.now + .seconds(20)
        func settled() throws -> Bool {
            try ours.allSatisfy { try store.operation(id: $0.id)?.state == .failed } && dispatcher.runningCount == 0
        }
        while try !settled(), ContinuousClock.now < deadline {
            try dispatcher.tick(now: Date(), situations: lookup)
            try await Task.sleep(for: .milliseconds(10))
        }
        try #require(try settled(), "the connected site's operations did not run")
        // A full pass from the list that read (a mode change brings one; nothing else wrote, so the
        // queue is not read again): the copies it holds of the two are stale, and stay out. (On a
        // loaded machine the wait above may outlast 10 s, and the periodic full pass comes too.)
        let before = fullPasses.withLock { $0 }
        dispatcher.modesChanged()
        for _ in 0..<5 {
            try dispatcher.tick(now: Date(), situations: lookup)
            try await Task.sleep(for: .milliseconds(20))
        }
        // A refused claim of a stale copy would have brought another (reading the whole queue).
        #expect(fullPasses.withLock { $0 } - before == 1, "\(fullPasses.withLock { $0 } - before) full passes after the mode change")
        for operation in ours {
            #expect(try store.operation(id: operation.id)?.history.filter { $0.to == .dispatching }.count == 1)
        }
    }

    /// A fresh SQLite store, a queue on it and a dispatcher without executors (a started operation is
    /// claimed, then failed with the reason).
    struct Plan {
        let fresh: FreshStores
        let store: any OperationStore
        let queue: DeferredQueue
        let dispatcher: Dispatcher

        init() throws {
            fresh = try FreshStores(.sqlite)
            store = fresh.stores.operations
            queue = DeferredQueue(store: store, executors: OperationQueueTests.executors)
            dispatcher = Dispatcher(store: store, executors: [:], settings: DispatchSettings(), logger: Logger(label: "test"), emit: { _ in })
        }

        /// An `extension.install` submitted while the site is semi-connected.
        func submit(_ site: String, _ name: String = "ext") throws -> DeferredOperation {
            try queue.submit(
                SubmissionRequest(site: site, kind: "extension.install", params: ["name": name], createdBy: "t"),
                situation: OperationQueueTests.semi, now: OperationQueueTests.now
            ).operation
        }
    }
}
