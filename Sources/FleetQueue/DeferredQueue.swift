public import FleetCore

#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif

/// What an operator asks for.
public struct SubmissionRequest: Sendable, Hashable {
    public var site: String
    public var kind: String
    public var params: [String: String]
    public var createdBy: String
    public var idempotencyKey: String?
    public var notBefore: Date?
    public var expiresAt: Date?
    public var maxAttempts: Int?

    public init(
        site: String, kind: String, params: [String: String] = [:], createdBy: String, idempotencyKey: String? = nil,
        notBefore: Date? = nil, expiresAt: Date? = nil, maxAttempts: Int? = nil
    ) {
        self.site = site
        self.kind = kind
        self.params = params
        self.createdBy = createdBy
        self.idempotencyKey = idempotencyKey
        self.notBefore = notBefore
        self.expiresAt = expiresAt
        self.maxAttempts = maxAttempts
    }
}

/// What the queue needs to know about a site when an operation is submitted.
public struct SiteSituation: Sendable, Hashable {
    public var mode: ConnectivityMode
    /// Connected for at least `stableFor`.
    public var stable: Bool
    public var deadline: Date?
    public var capabilities: [String: Bool]

    public init(mode: ConnectivityMode, stable: Bool, deadline: Date?, capabilities: [String: Bool]) {
        self.mode = mode
        self.stable = stable
        self.deadline = deadline
        self.capabilities = capabilities
    }
}

/// The answer to a submission.
public struct SubmissionResult: Sendable, Hashable {
    public var operation: DeferredOperation
    /// True when the idempotency key was already used: `operation` is the earlier one.
    public var existing: Bool
    /// Why it runs now or waits, in words.
    public var reason: String
    /// The site's deadline, when it has one.
    public var deadline: Date?
    /// Operations this one superseded (coalescing).
    public var superseded: [String]
}

/// A submission or action the queue refuses, with the HTTP-ish category for the API.
public struct QueueError: Error, Sendable, Hashable, CustomStringConvertible {
    public enum Category: String, Sendable, Hashable {
        /// Bad input: the request can never work as written (400).
        case invalid
        /// The catalog or the configuration says this kind cannot wait in the queue (422).
        case notQueueable = "not-queueable"
        /// A parameter can never become a safe executor argument (422): control characters,
        /// empty, over 1 KB, or beginning with `-`.
        case invalidParameter = "invalid-parameter"
        /// The operation is not in a state that allows this (somebody moved it first) (409).
        case conflict
        case notFound = "not-found"
        /// The store failed; the request may work when retried (503).
        case unavailable
    }

    public var category: Category
    public var message: String
    /// The catalog's workaround, when one applies.
    public var workaround: String?

    public init(_ category: Category, _ message: String, workaround: String? = nil) {
        self.category = category
        self.message = message
        self.workaround = workaround
    }

    public var description: String { message + (workaround.map { " (workaround: \($0))" } ?? "") }
}

/// Submission and the operator's actions (cancel, retry, release, bulk cancel) on top of
/// an `OperationStore`. Dispatch is the `Dispatcher`'s.
public struct DeferredQueue: Sendable {
    public let store: any OperationStore
    public let executors: [OperationKind: ExecutorTemplate]
    public let defaultMaxAttempts: Int

    public init(store: any OperationStore, executors: [OperationKind: ExecutorTemplate], defaultMaxAttempts: Int = 5) {
        self.store = store
        self.executors = executors
        self.defaultMaxAttempts = defaultMaxAttempts
    }

    static func newID() -> String {
        var generator = SystemRandomNumberGenerator()
        let hex = (0..<16).map { _ in String(Int.random(in: 0..<16, using: &generator), radix: 16) }.joined()
        return "op-" + hex
    }

    /// Whether `text` names a kind that may wait in this queue, with an executor, and `params`
    /// are safe arguments that fill its template (a rollout checks this before it makes anything).
    public func check(kind text: String, params: [String: String], capabilities: [String: Bool] = [:]) throws(QueueError) -> (OperationKind, ExecutorTemplate) {
        guard let kind = OperationKind(rawValue: text) else {
            throw QueueError(
                .invalid, "kind: unknown '\(text)'; known kinds: \(OperationKind.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        let entry = OperationCatalog.entry(kind)
        switch entry.queueability {
        case .neverQueued:
            throw QueueError(.notQueueable, "\(kind.rawValue) works without Azure and is never queued: run it at the site now")
        case .notQueueable:
            throw QueueError(
                .notQueueable, "\(kind.rawValue) needs Azure and cannot wait in a queue",
                workaround: OperationCatalog.workaround(for: kind, capabilities: capabilities) ?? entry.workaround?.text)
        case .queueable:
            break
        }
        guard let template = executors[kind] else {
            throw QueueError(.notQueueable, "no executor is configured for \(kind.rawValue)")
        }
        if let unknown = template.unknownPlaceholder {
            throw QueueError(.notQueueable, "the executor for \(kind.rawValue) has a placeholder nothing can fill: {\(unknown)}")
        }
        // Every parameter, used by the template or not (a later template may use it).
        for (name, value) in params.sorted(by: { $0.key < $1.key }) {
            if let problem = ExecutorArgument.nameProblem(name) {
                throw QueueError(.invalidParameter, "params: the name '\(name.debugDescription.dropFirst().dropLast())' \(problem)")
            }
            if let problem = ExecutorArgument.problem(value) {
                throw QueueError(.invalidParameter, "params.\(name) \(problem)")
            }
        }
        for name in template.requiredParams where params[name] == nil {
            throw QueueError(.invalid, "params: missing '\(name)', which the executor's placeholder {params.\(name)} needs")
        }
        return (kind, template)
    }

    /// Validates and stores a request. `situation` is nil for a site the aggregator has
    /// never heard from (the operation waits for it).
    public func submit(_ request: SubmissionRequest, situation: SiteSituation?, now: Date) throws(QueueError) -> SubmissionResult {
        let site: SiteID
        do {
            site = try SiteID(request.site)
        } catch {
            throw QueueError(.invalid, "site: \(error.description)")
        }
        let (kind, template) = try check(kind: request.kind, params: request.params, capabilities: situation?.capabilities ?? [:])
        if let key = request.idempotencyKey, key.isEmpty { throw QueueError(.invalid, "idempotencyKey: must not be empty") }
        if let expiresAt = request.expiresAt, expiresAt <= now { throw QueueError(.invalid, "expiresAt: already passed") }
        if let notBefore = request.notBefore, let expiresAt = request.expiresAt, notBefore >= expiresAt {
            throw QueueError(.invalid, "notBefore: must be before expiresAt")
        }
        let maxAttempts = request.maxAttempts ?? template.maxAttempts ?? defaultMaxAttempts
        guard (1...100).contains(maxAttempts) else { throw QueueError(.invalid, "maxAttempts: must be between 1 and 100") }

        do {
            // A key used before is found by the insert (a unique index, in the same transaction):
            // no read ahead of it (on PostgreSQL each is a round trip).
            var reason: String
            switch situation {
            case nil: reason = "queued: the site has not reported yet"
            case let s? where s.mode == .connected && s.stable:
                // Only here is the count of what waits ahead said (a read the other cases do without).
                if let notBefore = request.notBefore, notBefore > now {
                    reason = "queued: the site is connected; scheduled for \(RFC3339.format(notBefore))"
                } else if case let ahead = try store.count(OperationFilter(site: site, states: [.queued, .dispatching]), limit: 1_000), ahead > 0 {
                    reason = "queued: the site is connected; it runs after \(ahead)\(ahead == 1_000 ? " or more" : "") earlier operation(s) there"
                } else {
                    reason = "queued to run now: the site is connected"
                }
            case let s? where s.mode == .connected: reason = "queued: the site is connected but not yet stable"
            case let s? where s.mode == .disconnected:
                reason = "blocked: the site passed its deadline; an operator must release or cancel this operation"
            case let s?: reason = "queued: the site is \(s.mode.rawValue); it runs when the link is back"
            }
            if let notBefore = request.notBefore, notBefore > now, !reason.contains("scheduled"), situation?.mode != .disconnected {
                reason += ", not before \(RFC3339.format(notBefore))"
            }
            var operation = DeferredOperation(
                id: Self.newID(), site: site, kind: kind, params: request.params, state: .queued, createdAt: now,
                createdBy: request.createdBy, idempotencyKey: request.idempotencyKey, notBefore: request.notBefore,
                expiresAt: request.expiresAt, maxAttempts: maxAttempts,
                history: [OperationHistoryEntry(at: now, from: nil, to: .queued, note: "submitted by \(request.createdBy): \(reason)")])

            // Blocked at once at a site past its deadline, in the same transaction as the insert.
            if situation?.mode == .disconnected {
                operation.state = .blocked
                operation.history.append(OperationHistoryEntry(at: now, from: .queued, to: .blocked, note: "the site passed its deadline"))
            }
            // The insert supersedes older queued operations for the same site, kind and target
            // (coalescing) in one transaction.
            let superseded: [String]
            do {
                (operation, superseded) = try store.insert(operation)
            } catch OperationStoreError.duplicateIdempotencyKey {
                // Submitted before (or a race with an identical submission): answer with that one.
                if let key = request.idempotencyKey, let existing = try store.operation(idempotencyKey: key) {
                    return SubmissionResult(
                        operation: existing, existing: true, reason: "idempotency key '\(key)' already used",
                        deadline: situation?.deadline, superseded: [])
                }
                throw QueueError(.conflict, "idempotency key conflict")
            }
            return SubmissionResult(operation: operation, existing: false, reason: reason, deadline: situation?.deadline, superseded: superseded)
        } catch let error as QueueError {
            throw error
        } catch {
            throw QueueError(.unavailable, "the queue could not store the operation: \(error)")
        }
    }

    /// Cancels a queued or blocked operation.
    public func cancel(id: String, by who: String, now: Date) throws(QueueError) -> DeferredOperation {
        try act(id: id, expected: [.queued, .blocked], to: .cancelled, note: "cancelled by \(who)", now: now) { _ in }
    }

    /// Queues a failed operation again, with its attempts reset.
    public func retry(id: String, by who: String, now: Date) throws(QueueError) -> DeferredOperation {
        try act(id: id, expected: [.failed], to: .queued, note: "retried by \(who)", now: now) { operation in
            operation.attempts = 0
            operation.nextAttemptAt = nil
        }
    }

    /// Releases a blocked operation back into the queue.
    public func release(id: String, by who: String, now: Date) throws(QueueError) -> DeferredOperation {
        try act(id: id, expected: [.blocked], to: .queued, note: "released by \(who)", now: now) { operation in
            operation.released = true
            operation.releasedAt = now
        }
    }

    /// Cancels every queued or blocked operation that matches `filter`; returns them.
    public func cancelAll(_ filter: OperationFilter, by who: String, now: Date) throws(QueueError) -> [DeferredOperation] {
        var filter = filter
        filter.states = (filter.states ?? [.queued, .blocked]).intersection([.queued, .blocked])
        do {
            var cancelled: [DeferredOperation] = []
            for operation in try store.all(filter) {
                do {
                    cancelled.append(
                        try store.transition(
                            id: operation.id, expected: [.queued, .blocked], to: .cancelled, at: now, note: "cancelled by \(who) (bulk)",
                            update: { _ in }))
                } catch OperationStoreError.conflict {
                    continue  // moved on meanwhile (dispatched): not ours to cancel any more
                }
            }
            return cancelled
        } catch {
            throw QueueError(.unavailable, "bulk cancel failed: \(error)")
        }
    }

    private func act(
        id: String, expected: Set<OperationState>, to: OperationState, note: String, now: Date,
        update: @Sendable (inout DeferredOperation) -> Void
    ) throws(QueueError) -> DeferredOperation {
        do {
            return try store.transition(id: id, expected: expected, to: to, at: now, note: note, update: update)
        } catch OperationStoreError.notFound {
            throw QueueError(.notFound, "no operation \(id)")
        } catch OperationStoreError.conflict(_, _, let found) {
            throw QueueError(
                .conflict, "operation \(id) is \(found.rawValue); this needs it \(expected.map(\.rawValue).sorted().joined(separator: " or "))")
        } catch {
            throw QueueError(.unavailable, "\(error)")
        }
    }
}
