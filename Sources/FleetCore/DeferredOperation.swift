#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif

/// An Azure-dependent operation held for a site until its link is back (docs/contract.md,
/// "Deferred-operation queue").
public struct DeferredOperation: Codable, Sendable, Hashable, Identifiable {
    public var id: String
    /// Submission order across the fleet (SQLite's row id): "oldest first" within a site.
    public var sequence: Int64
    public var site: SiteID
    public var kind: OperationKind
    public var params: [String: String]
    public var state: OperationState
    public var createdAt: Date
    public var createdBy: String
    public var idempotencyKey: String?
    public var notBefore: Date?
    public var expiresAt: Date?
    public var attempts: Int
    public var maxAttempts: Int
    public var nextAttemptAt: Date?
    public var lastError: String?
    /// An operator released it from `blocked`: it waits for the link, and is not blocked
    /// again for the deadline that blocked it.
    public var released: Bool?
    /// When it was released: a deadline the site passes after this blocks it again.
    public var releasedAt: Date?
    public var history: [OperationHistoryEntry]

    public init(
        id: String, sequence: Int64 = 0, site: SiteID, kind: OperationKind, params: [String: String], state: OperationState,
        createdAt: Date, createdBy: String, idempotencyKey: String? = nil, notBefore: Date? = nil, expiresAt: Date? = nil,
        attempts: Int = 0, maxAttempts: Int, nextAttemptAt: Date? = nil, lastError: String? = nil,
        history: [OperationHistoryEntry] = []
    ) {
        self.id = id
        self.sequence = sequence
        self.site = site
        self.kind = kind
        self.params = params
        self.state = state
        self.createdAt = createdAt
        self.createdBy = createdBy
        self.idempotencyKey = idempotencyKey
        self.notBefore = notBefore
        self.expiresAt = expiresAt
        self.attempts = attempts
        self.maxAttempts = maxAttempts
        self.nextAttemptAt = nextAttemptAt
        self.lastError = lastError
        self.history = history
    }

    /// The value that decides coalescing: a newer queued operation of a coalescing kind
    /// for the same site, kind and target supersedes the older one.
    public var coalescingTarget: String? {
        let entry = OperationCatalog.entry(kind)
        guard entry.coalesces else { return nil }
        guard let parameter = entry.coalescingTarget else { return "" }  // the whole cluster
        return params[parameter] ?? ""
    }
}

/// One transition in an operation's history.
public struct OperationHistoryEntry: Codable, Sendable, Hashable {
    public var at: Date
    /// `nil` for the submission itself.
    public var from: OperationState?
    public var to: OperationState
    public var note: String

    public init(at: Date, from: OperationState?, to: OperationState, note: String) {
        self.at = at
        self.from = from
        self.to = to
        self.note = note
    }
}
