public import FleetCore

#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif

/// Which operations a listing or a bulk action covers.
public struct OperationFilter: Sendable, Hashable {
    public var site: SiteID?
    public var kind: OperationKind?
    public var states: Set<OperationState>?
    /// Only these sites' operations (the sites a label selector matches); empty: none.
    public var sites: Set<SiteID>?

    public init(site: SiteID? = nil, kind: OperationKind? = nil, states: Set<OperationState>? = nil, sites: Set<SiteID>? = nil) {
        self.site = site
        self.kind = kind
        self.states = states
        self.sites = sites
    }
}

/// One page of a listing, oldest first, and the cursor for the next (nil at the end).
public struct OperationPage: Sendable, Hashable {
    public var operations: [DeferredOperation]
    public var nextCursor: Int64?

    public init(operations: [DeferredOperation], nextCursor: Int64?) {
        self.operations = operations
        self.nextCursor = nextCursor
    }
}

/// A transition the store refused: the operation was not in the state the caller
/// expected (somebody else moved it first), or it does not exist.
public enum OperationStoreError: Error, Sendable, Hashable, CustomStringConvertible {
    case notFound(String)
    case conflict(id: String, expected: Set<OperationState>, found: OperationState)
    case duplicateIdempotencyKey(String)
    /// A dispatch write by a replica that no longer leads (its epoch is not the lease's): refused.
    case notLeader(id: String, epoch: Int64?)

    public var description: String {
        switch self {
        case .notLeader(let id, let epoch):
            "operation \(id): this replica does not lead\(epoch.map { " (epoch \($0))" } ?? ""); the write was refused"
        case .notFound(let id): "no operation \(id)"
        case .conflict(let id, let expected, let found):
            "operation \(id) is \(found.rawValue), not \(expected.map(\.rawValue).sorted().joined(separator: " or "))"
        case .duplicateIdempotencyKey(let key): "idempotency key '\(key)' is already used"
        }
    }
}

/// Where operations live. Narrow on purpose: the dispatcher and the submission logic
/// only use this, so a PostgreSQL store can be added without touching them.
/// Every method is one transaction; a transition checks the state it expects and
/// records the history entry in the same transaction.
public protocol OperationStore: Sendable {
    /// Inserts a new operation (its `sequence` is assigned) with its history so far. For a
    /// coalescing kind, in the same transaction, every older `queued` or `blocked` operation
    /// of the same site, kind and target becomes `superseded`; returns their ids.
    func insert(_ operation: DeferredOperation) throws -> (operation: DeferredOperation, superseded: [String])
    func operation(id: String) throws -> DeferredOperation?
    func operation(idempotencyKey: String) throws -> DeferredOperation?
    /// The states of these operations, in one read (a rollout follows thousands at a time);
    /// an id the store does not hold is left out.
    func states(ids: [String]) throws -> [String: OperationState]
    /// Moves an operation from one of `expected` to `to`, applying `update` and appending
    /// a history entry, atomically. Throws `conflict` if it is in another state. Moving out of
    /// `dispatching` forgets the operation's run record in the same transaction.
    @discardableResult
    func transition(
        id: String, expected: Set<OperationState>, to: OperationState, at: Date, note: String,
        update: @Sendable (inout DeferredOperation) -> Void
    ) throws -> DeferredOperation
    /// `transition` by the dispatcher (expiring, blocking, queueing again after a crash): with
    /// replicas, refused (`notLeader`) unless the caller still holds the lead, in the same
    /// transaction. Operators' actions use `transition`, which any replica may make.
    @discardableResult
    func transitionAsLeader(
        id: String, expected: Set<OperationState>, to: OperationState, at: Date, note: String,
        update: @Sendable (inout DeferredOperation) -> Void
    ) throws -> DeferredOperation
    /// The dispatcher's claim: `operation` (as the caller read it, `queued`) becomes `dispatching`
    /// with one more attempt and a history entry, written from the caller's copy when the stored
    /// one has not changed since (same state, same history); `conflict` otherwise.
    func claim(_ operation: DeferredOperation, at: Date, note: String) throws -> DeferredOperation
    /// The end of the dispatcher's attempt: `operation` as its claim returned it (`dispatching`)
    /// moves to `to` with `update` and a history entry, and its run record is forgotten, in one
    /// transaction; written from the caller's copy when the stored one has not changed since the
    /// claim, otherwise as `transition` from `dispatching` (which may throw `conflict`).
    @discardableResult
    func complete(
        _ operation: DeferredOperation, to: OperationState, at: Date, note: String, update: @Sendable (inout DeferredOperation) -> Void
    ) throws -> DeferredOperation
    /// Operations matching `filter`, oldest first, after `cursor` (a `sequence`).
    func list(_ filter: OperationFilter, after cursor: Int64?, limit: Int) throws -> OperationPage
    /// How many operations match `filter`, counting no further than `limit`.
    func count(_ filter: OperationFilter, limit: Int) throws -> Int
    /// Operations matching `filter`, newest first, before `cursor` (a `sequence`).
    func listNewestFirst(_ filter: OperationFilter, before cursor: Int64?, limit: Int) throws -> OperationPage
    /// Whether another process may have changed the database since the last call (true when the
    /// store cannot tell). The dispatcher reads the waiting operations again every 2 s only when
    /// some other process wrote; its own changes tell it themselves.
    func changedElsewhere() throws -> Bool
    /// Counts by site and state, for views, the summary and metrics.
    func counts() throws -> [SiteID: [OperationState: Int]]
    /// `counts()` for these sites only (a site without operations is left out): what the
    /// dispatcher's own changes moved, recounted 4 times a second without reading the whole queue.
    func counts(sites: Set<SiteID>) throws -> [SiteID: [OperationState: Int]]
    /// Replicas: how long the claim of a dispatching operation holds (the longest its executor can
    /// run, its own time limit included): until then no other replica runs it again.
    func holdClaim(id: String, for duration: Duration) throws
    /// Replicas: the claim is over (its executor has ended, and its outcome could not be written).
    func releaseClaim(id: String) throws
    /// Replicas: whether the claim of a dispatching operation has run out (or was released).
    func claimLapsed(id: String) throws -> Bool
    /// Replicas: an operator's change made through a standby, for the leader to publish.
    func enqueueEvent(_ event: FleetEvent) throws
    /// Replicas: the events standbys left, oldest first, taken (each is handed out once).
    func takeQueuedEvents(limit: Int) throws -> [FleetEvent]
    /// Records, durably, that an executor for an operation was started (replacing an older record).
    func recordRun(_ run: ExecutorRun) throws
    /// Forgets the run of an operation (its outcome is recorded, or it is known to be gone).
    func forgetRun(operationID: String) throws
    /// Every run recorded and not forgotten.
    func runs() throws -> [ExecutorRun]
}

/// An executor as started: enough to find it, and only it, again after the aggregator that
/// started it was killed (its process group, and when its leader started on which boot, so
/// that a reused process id is never mistaken for it).
public struct ExecutorRun: Sendable, Hashable {
    public var operationID: String
    public var processGroup: Int32
    /// The leader's start time, in clock ticks since boot (`/proc/PID/stat` field 22).
    public var startTicks: UInt64
    /// `/proc/sys/kernel/random/boot_id` when it started.
    public var bootID: String
    public var host: String
    public var startedAt: Date

    public init(operationID: String, processGroup: Int32, startTicks: UInt64, bootID: String, host: String, startedAt: Date) {
        self.operationID = operationID
        self.processGroup = processGroup
        self.startTicks = startTicks
        self.bootID = bootID
        self.host = host
        self.startedAt = startedAt
    }
}

extension OperationStore {
    /// A claim through `transition`, for stores without a cheaper way (it reads the stored
    /// operation instead of comparing it with the caller's copy).
    public func claim(_ operation: DeferredOperation, at: Date, note: String) throws -> DeferredOperation {
        try transition(id: operation.id, expected: [.queued], to: .dispatching, at: at, note: note) { $0.attempts += 1 }
    }

    /// A completion through `transition`, for stores without a cheaper way.
    @discardableResult
    public func complete(
        _ operation: DeferredOperation, to: OperationState, at: Date, note: String, update: @Sendable (inout DeferredOperation) -> Void
    ) throws -> DeferredOperation {
        try transition(id: operation.id, expected: [.dispatching], to: to, at: at, note: note, update: update)
    }

    /// One aggregator always leads.
    @discardableResult
    public func transitionAsLeader(
        id: String, expected: Set<OperationState>, to: OperationState, at: Date, note: String,
        update: @Sendable (inout DeferredOperation) -> Void
    ) throws -> DeferredOperation {
        try transition(id: id, expected: expected, to: to, at: at, note: note, update: update)
    }

    /// One aggregator (SQLite): no other replica can hold a claim, so every claim is over once
    /// its executor on this host is (the recovery looks for that by itself).
    public func holdClaim(id: String, for duration: Duration) throws {}
    public func releaseClaim(id: String) throws {}
    public func claimLapsed(id: String) throws -> Bool { true }
    /// One aggregator always leads: nothing is left for another.
    public func enqueueEvent(_ event: FleetEvent) throws {}
    public func takeQueuedEvents(limit: Int) throws -> [FleetEvent] { [] }

    /// A count through `list`, for stores without a cheaper way.
    public func count(_ filter: OperationFilter, limit: Int) throws -> Int {
        try list(filter, after: nil, limit: limit).operations.count
    }

    /// Every operation matching `filter`, read page by page.
    public func all(_ filter: OperationFilter, pageSize: Int = 1_000) throws -> [DeferredOperation] {
        var result: [DeferredOperation] = []
        var cursor: Int64?
        repeat {
            let page = try list(filter, after: cursor, limit: pageSize)
            result += page.operations
            cursor = page.nextCursor
        } while cursor != nil
        return result
    }
}
