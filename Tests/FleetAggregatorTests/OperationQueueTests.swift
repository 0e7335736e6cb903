import FleetAggregator
@testable import FleetQueue
import FleetCore
import Foundation
import TestSupport
import Testing

@Suite("the operation queue: store, submission, operator actions (real SQLite and real PostgreSQL)", .ownThread)
struct OperationQueueTests {
    static let now = Date(timeIntervalSince1970: 1_790_000_000)
    static let executors: [OperationKind: ExecutorTemplate] = [
        .clusterUpgrade: ExecutorTemplate(argv: [
            "az", "aksarc", "upgrade", "--name", "{cluster.name}", "--resource-group", "{cluster.resourceGroup}",
            "--kubernetes-version", "{params.kubernetesVersion}", "--yes",
        ]),
        .nodepoolScale: ExecutorTemplate(argv: ["az", "aksarc", "nodepool", "scale", "--name", "{params.nodepool}", "--node-count", "{params.count}"]),
        .extensionInstall: ExecutorTemplate(argv: ["az", "k8s-extension", "create", "--name", "{params.name}"]),
    ]
    static let semi = SiteSituation(mode: .semiConnected, stable: false, deadline: now.addingTimeInterval(86_400), capabilities: [:])
    static let connected = SiteSituation(mode: .connected, stable: true, deadline: now.addingTimeInterval(30 * 86_400), capabilities: [:])

    func makeQueue(_ backend: StoreBackend) throws -> (DeferredQueue, FreshStores) {
        let fresh = try FreshStores(backend)
        return (DeferredQueue(store: fresh.stores.operations, executors: Self.executors), fresh)
    }

    func upgrade(_ site: String = "store-1", version: String = "1.30.4", key: String? = nil) -> SubmissionRequest {
        SubmissionRequest(site: site, kind: "cluster.upgrade", params: ["kubernetesVersion": version], createdBy: "alice", idempotencyKey: key)
    }

    @Test("a semi-connected site's operation is queued with the reason and the deadline; a connected, stable one runs now, unless scheduled later or behind others", arguments: StoreBackend.allCases)
    func queuedOrNow(backend: StoreBackend) throws {
        let (queue, fresh) = try makeQueue(backend)
        defer { fresh.remove() }
        let waiting = try queue.submit(upgrade(), situation: Self.semi, now: Self.now)
        #expect(waiting.operation.state == .queued && waiting.reason.contains("semi-connected"))
        #expect(waiting.deadline == Self.semi.deadline)
        let now = try queue.submit(upgrade("store-2"), situation: Self.connected, now: Self.now)
        #expect(now.reason == "queued to run now: the site is connected")
        // Behind another operation of the same site: not "now".
        let behind = try queue.submit(
            SubmissionRequest(site: "store-2", kind: "extension.install", params: ["name": "x"], createdBy: "alice"), situation: Self.connected,
            now: Self.now)
        #expect(behind.reason.contains("after 1 earlier operation"), "\(behind.reason)")
        // A future notBefore is never "at once" or "now" (before: "dispatched at once").
        var later = SubmissionRequest(site: "store-4", kind: "extension.install", params: ["name": "x"], createdBy: "alice")
        later.notBefore = Self.now.addingTimeInterval(3600)
        let scheduled = try queue.submit(later, situation: Self.connected, now: Self.now)
        #expect(scheduled.reason.contains("scheduled for") && !scheduled.reason.contains("now") && !scheduled.reason.contains("at once"), "\(scheduled.reason)")
        later.site = "store-5"
        #expect(try queue.submit(later, situation: Self.semi, now: Self.now).reason.contains("not before"))
        let blocked = try queue.submit(
            upgrade("store-3"), situation: SiteSituation(mode: .disconnected, stable: false, deadline: Self.now, capabilities: [:]), now: Self.now)
        #expect(blocked.operation.state == .blocked)
        #expect(blocked.operation.history.map(\.to) == [.queued, .blocked])
    }

    @Test("a claim and an attempt's end write the dispatcher's copy only while the stored operation is unchanged; a stale copy is refused; leaving dispatching forgets the run", arguments: StoreBackend.allCases)
    func claimComparesAndSets(backend: StoreBackend) throws {
        let (queue, fresh) = try makeQueue(backend)
        defer { fresh.remove() }
        let store = queue.store
        let submitted = try queue.submit(upgrade(), situation: Self.semi, now: Self.now).operation
        let claimed = try store.claim(submitted, at: Self.now, note: "attempt 1 of 5")
        #expect(claimed.state == .dispatching && claimed.attempts == 1 && claimed.history.last?.note == "attempt 1 of 5")
        #expect(try store.operation(id: submitted.id) == claimed)
        // The same (now stale) copy again: refused, the stored one untouched.
        #expect(throws: OperationStoreError.conflict(id: submitted.id, expected: [.queued], found: .dispatching)) {
            try store.claim(submitted, at: Self.now, note: "again")
        }
        try store.recordRun(ExecutorRun(operationID: submitted.id, processGroup: 42, startTicks: 1, bootID: "b", host: "h", startedAt: Self.now))
        try store.transition(id: submitted.id, expected: [.dispatching], to: .queued, at: Self.now, note: "retry", update: { _ in })
        #expect(try store.runs().isEmpty, "the run record goes with the outcome")
        // Queued again, with a history the old copy does not have: the old copy is refused too.
        #expect(throws: OperationStoreError.self) { try store.claim(submitted, at: Self.now, note: "stale") }
        let current = try #require(try store.operation(id: submitted.id))
        let second = try store.claim(current, at: Self.now, note: "attempt 2 of 5")
        #expect(second.attempts == 2)

        // The attempt's end, from the claim's copy: written as the dispatcher has it, the run forgotten.
        try store.recordRun(ExecutorRun(operationID: submitted.id, processGroup: 43, startTicks: 1, bootID: "b", host: "h", startedAt: Self.now))
        let done = try store.complete(second, to: .succeeded, at: Self.now, note: "exit 0") { $0.lastError = nil }
        #expect(done.state == .succeeded && done.history.map(\.to).suffix(2) == [.dispatching, .succeeded])
        #expect(try store.operation(id: submitted.id) == done)
        #expect(try store.runs().isEmpty)
        // Its end again, from the same (now stale) copy: refused, the stored one untouched.
        #expect(throws: OperationStoreError.conflict(id: submitted.id, expected: [.dispatching], found: .succeeded)) {
            try store.complete(second, to: .failed, at: Self.now, note: "late") { _ in }
        }
        #expect(try store.operation(id: submitted.id) == done)
    }

    @Test("bad submissions are refused with a message naming the problem", arguments: StoreBackend.allCases)
    func refusals(backend: StoreBackend) throws {
        let (queue, fresh) = try makeQueue(backend)
        defer { fresh.remove() }
        func refusal(_ request: SubmissionRequest) -> QueueError? {
            do {
                _ = try queue.submit(request, situation: Self.semi, now: Self.now)
                return nil
            } catch {
                return error
            }
        }
        #expect(refusal(SubmissionRequest(site: "Bad/Site", kind: "cluster.upgrade", createdBy: "a"))?.message.hasPrefix("site:") == true)
        #expect(refusal(SubmissionRequest(site: "s1", kind: "cluster.explode", createdBy: "a"))?.message.contains("unknown 'cluster.explode'") == true)
        let ssh = refusal(SubmissionRequest(site: "s1", kind: "ssh", createdBy: "a"))
        #expect(ssh?.category == .notQueueable && ssh?.message.contains("never queued") == true)
        let entra = refusal(SubmissionRequest(site: "s1", kind: "access.entra", createdBy: "a"))
        #expect(entra?.category == .notQueueable && entra?.workaround?.contains("kubeconfig") == true)
        let missing = refusal(SubmissionRequest(site: "s1", kind: "cluster.upgrade", createdBy: "a"))
        #expect(missing?.category == .invalid && missing?.message.contains("{params.kubernetesVersion}") == true)
        let noExecutor = refusal(SubmissionRequest(site: "s1", kind: "cluster.delete", createdBy: "a"))
        #expect(noExecutor?.message.contains("no executor") == true)
        var expired = upgrade()
        expired.expiresAt = Self.now.addingTimeInterval(-1)
        #expect(refusal(expired)?.message.hasPrefix("expiresAt") == true)
    }

    @Test("an executor placeholder that nothing can fill is refused at submission, named", arguments: StoreBackend.allCases)
    func unknownPlaceholder(backend: StoreBackend) throws {
        let fresh = try FreshStores(backend)
        defer { fresh.remove() }
        let queue = DeferredQueue(
            store: fresh.stores.operations,
            executors: [.gitopsConfigure: ExecutorTemplate(argv: ["az", "k8s-configuration", "--url", "{repo.url}"])])
        #expect(throws: QueueError(.notQueueable, "the executor for gitops.configure has a placeholder nothing can fill: {repo.url}")) {
            try queue.submit(SubmissionRequest(site: "s1", kind: "gitops.configure", createdBy: "a"), situation: nil, now: Self.now)
        }
    }

    @Test("attempts come from the request, else the kind's executor, else the queue's default", arguments: StoreBackend.allCases)
    func attempts(backend: StoreBackend) throws {
        let fresh = try FreshStores(backend)
        defer { fresh.remove() }
        let queue = DeferredQueue(
            store: fresh.stores.operations,
            executors: [
                .extensionInstall: ExecutorTemplate(argv: ["az", "{params.name}"], maxAttempts: 2),
                .extensionDelete: ExecutorTemplate(argv: ["az", "{params.name}"]),
            ], defaultMaxAttempts: 7)
        func attempts(_ kind: String, _ requested: Int?) throws -> Int {
            try queue.submit(
                SubmissionRequest(site: "s1", kind: kind, params: ["name": "x"], createdBy: "a", maxAttempts: requested), situation: Self.semi,
                now: Self.now
            ).operation.maxAttempts
        }
        #expect(try attempts("extension.install", nil) == 2)
        #expect(try attempts("extension.install", 9) == 9)
        #expect(try attempts("extension.delete", nil) == 7)
    }

    @Test("an idempotency key returns the existing operation", arguments: StoreBackend.allCases)
    func idempotency(backend: StoreBackend) throws {
        let (queue, fresh) = try makeQueue(backend)
        defer { fresh.remove() }
        let first = try queue.submit(upgrade(key: "change-42"), situation: Self.semi, now: Self.now)
        let again = try queue.submit(upgrade(version: "1.31.0", key: "change-42"), situation: Self.semi, now: Self.now)
        #expect(again.existing && again.operation.id == first.operation.id)
        #expect(again.operation.params["kubernetesVersion"] == "1.30.4")
        #expect(try queue.store.all(OperationFilter()).count == 1)
    }

    @Test("a newer coalescing operation supersedes the older queued one for the same target, recorded in both histories", arguments: StoreBackend.allCases)
    func coalescing(backend: StoreBackend) throws {
        let (queue, fresh) = try makeQueue(backend)
        defer { fresh.remove() }
        func scale(_ pool: String, _ count: String) -> SubmissionRequest {
            SubmissionRequest(site: "s1", kind: "nodepool.scale", params: ["nodepool": pool, "count": count], createdBy: "bob")
        }
        let a = try queue.submit(scale("np1", "3"), situation: Self.semi, now: Self.now)
        let other = try queue.submit(scale("np2", "5"), situation: Self.semi, now: Self.now)
        let b = try queue.submit(scale("np1", "4"), situation: Self.semi, now: Self.now)
        #expect(b.superseded == [a.operation.id])
        let old = try #require(try queue.store.operation(id: a.operation.id))
        #expect(old.state == .superseded && old.history.last?.note == "superseded by \(b.operation.id)")
        #expect(b.operation.history.contains { $0.note == "supersedes \(a.operation.id)" })
        #expect(try queue.store.operation(id: other.operation.id)?.state == .queued)
        // Upgrades coalesce for the whole cluster.
        let u1 = try queue.submit(upgrade(version: "1.30.4"), situation: Self.semi, now: Self.now)
        let u2 = try queue.submit(upgrade(version: "1.31.0"), situation: Self.semi, now: Self.now)
        #expect(u2.superseded == [u1.operation.id])
    }

    @Test("cancel, retry (failed only), release (blocked only) and bulk cancel by filter", arguments: StoreBackend.allCases)
    func actions(backend: StoreBackend) throws {
        let (queue, fresh) = try makeQueue(backend)
        defer { fresh.remove() }
        let op = try queue.submit(upgrade(), situation: Self.semi, now: Self.now).operation
        #expect(throws: QueueError.self) { try queue.retry(id: op.id, by: "a", now: Self.now) }
        let cancelled = try queue.cancel(id: op.id, by: "carol", now: Self.now)
        #expect(cancelled.state == .cancelled && cancelled.history.last?.note == "cancelled by carol")
        #expect(throws: QueueError.self) { try queue.cancel(id: op.id, by: "carol", now: Self.now) }
        #expect((try? queue.cancel(id: "op-missing", by: "a", now: Self.now)) == nil)

        let down = SiteSituation(mode: .disconnected, stable: false, deadline: Self.now, capabilities: [:])
        let blocked = try queue.submit(upgrade("s9"), situation: down, now: Self.now).operation
        let released = try queue.release(id: blocked.id, by: "dave", now: Self.now)
        #expect(released.state == .queued && released.released == true)

        // A failed one can be retried.
        let failing = try queue.submit(upgrade("s8"), situation: Self.semi, now: Self.now).operation
        try queue.store.transition(id: failing.id, expected: [.queued], to: .dispatching, at: Self.now, note: "t", update: { $0.attempts = 1 })
        try queue.store.transition(id: failing.id, expected: [.dispatching], to: .failed, at: Self.now, note: "exit 1", update: { _ in })
        let retried = try queue.retry(id: failing.id, by: "erin", now: Self.now)
        #expect(retried.state == .queued && retried.attempts == 0)

        for i in 0..<3 {
            _ = try queue.submit(
                SubmissionRequest(site: "bulk", kind: "extension.install", params: ["name": "e\(i)"], createdBy: "a"), situation: Self.semi,
                now: Self.now)
        }
        let gone = try queue.cancelAll(OperationFilter(site: try SiteID("bulk")), by: "frank", now: Self.now)
        #expect(gone.count == 3 && gone.allSatisfy { $0.state == .cancelled })
        #expect(try queue.store.counts()[try SiteID("bulk")] == [.cancelled: 3])
    }

    @Test("listing pages through operations oldest first with a cursor, filtered", arguments: StoreBackend.allCases)
    func paging(backend: StoreBackend) throws {
        let (queue, fresh) = try makeQueue(backend)
        defer { fresh.remove() }
        var ids: [String] = []
        for i in 0..<25 {
            ids.append(
                try queue.submit(
                    SubmissionRequest(site: "s\(i % 2)", kind: "extension.install", params: ["name": "e\(i)"], createdBy: "a"),
                    situation: Self.semi, now: Self.now
                ).operation.id)
        }
        var seen: [String] = []
        var cursor: Int64?
        var pages = 0
        repeat {
            let page = try queue.store.list(OperationFilter(), after: cursor, limit: 10)
            seen += page.operations.map(\.id)
            cursor = page.nextCursor
            pages += 1
        } while cursor != nil
        #expect(seen == ids && pages == 3)
        let s1 = try queue.store.list(OperationFilter(site: try SiteID("s1"), states: [.queued]), after: nil, limit: 100)
        #expect(s1.operations.count == 12 && s1.nextCursor == nil)
    }

    @Test("each placeholder becomes exactly one literal argument, whatever it holds")
    func literalArguments() throws {
        let template = ExecutorTemplate(argv: ["az", "k8s-extension", "create", "--name", "{params.name}", "--config=x={params.value}"])
        let hostile = "a b 'c' \"d\"; rm -rf / $(reboot) `id`"
        let argv = try template.render(operationID: "op-1", site: try SiteID("s1"), params: ["name": hostile, "value": "$HOME"], cluster: nil)
        #expect(argv == ["az", "k8s-extension", "create", "--name", hostile, "--config=x=$HOME"])
        #expect(throws: UnfilledPlaceholder(name: "cluster.name")) {
            try ExecutorTemplate(argv: ["{cluster.name}"]).render(operationID: "op-1", site: try SiteID("s1"), params: [:], cluster: nil)
        }
    }
}
