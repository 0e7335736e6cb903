#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif

/// A rollout's state (docs/contract.md, "Rollouts").
public enum RolloutState: String, Codable, Sendable, Hashable, CaseIterable {
    /// Waves start as the previous ones finish.
    case running
    /// No new wave starts (by an operator, or by itself past the failure threshold); what runs goes on.
    case paused
    /// Every site's operation ended (or its site was left out).
    case completed
    /// An operator cancelled it: its waiting operations were cancelled, no wave starts.
    case cancelled
    /// Its `expiresAt` passed before every wave started.
    case expired

    public var isFinal: Bool { self == .completed || self == .cancelled || self == .expired }
}

/// A number of sites, or a share of the rollout's sites: `10` or `25%`.
public enum RolloutSize: Sendable, Hashable, Codable, CustomStringConvertible {
    case count(Int)
    case percent(Int)

    public init(parsing text: String) throws(LabelError) {
        let trimmed = text.trimmed
        if trimmed.hasSuffix("%") {
            guard let value = Int(trimmed.dropLast()), (0...100).contains(value) else {
                throw LabelError("'\(SiteLabels.printable(text))': a share is 0% to 100%")
            }
            self = .percent(value)
        } else {
            guard let value = Int(trimmed), (0...1_000_000).contains(value) else {
                throw LabelError("'\(SiteLabels.printable(text))': expected a number of sites (10) or a share (25%)")
            }
            self = .count(value)
        }
    }

    /// The number of sites out of `total` (a share rounds up: 10% of 5 is 1).
    public func resolve(_ total: Int) -> Int {
        switch self {
        case .count(let n): return n
        case .percent(let p): return (total * p + 99) / 100
        }
    }

    public var description: String {
        switch self {
        case .count(let n): "\(n)"
        case .percent(let p): "\(p)%"
        }
    }

    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        do { self = try RolloutSize(parsing: text) } catch {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: error.description))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}

/// One site of a rollout: its wave, and its operation once the wave started.
public struct RolloutSite: Codable, Sendable, Hashable {
    public var site: SiteID
    /// 0 is the canary when there is one.
    public var wave: Int
    public var operationID: String?
    /// The operation's state as last seen (nil: the wave has not started).
    public var state: OperationState?
    /// Left out when its wave came (its site past its deadline): why.
    public var skipped: String?

    public init(site: SiteID, wave: Int, operationID: String? = nil, state: OperationState? = nil, skipped: String? = nil) {
        self.site = site
        self.wave = wave
        self.operationID = operationID
        self.state = state
        self.skipped = skipped
    }
}

/// A site a rollout left out, and why.
public struct RolloutSkip: Codable, Sendable, Hashable {
    public var site: SiteID
    public var reason: String

    public init(site: SiteID, reason: String) {
        self.site = site
        self.reason = reason
    }
}

/// How many of a rollout's sites are where.
public struct RolloutCounts: Codable, Sendable, Hashable {
    /// Their wave has not started.
    public var pending = 0
    public var queued = 0
    public var dispatching = 0
    public var succeeded = 0
    public var failed = 0
    /// Cancelled, expired, superseded or blocked.
    public var other = 0
    /// Left out (past their deadline).
    public var skipped = 0

    public init() {}
}

/// `edgefleet.rollout/1`: one operation kind at every site a selector matched, in waves.
public struct Rollout: Codable, Sendable, Hashable {
    public var id: String
    public var kind: OperationKind
    public var params: [String: String]
    public var selector: String
    public var createdBy: String
    public var createdAt: Date
    public var canary: Int
    public var batch: RolloutSize
    public var maxFailures: RolloutSize
    /// An operation waiting on a site that is not connected holds its wave back at most this long.
    public var waitS: Double
    public var expiresAt: Date?
    public var idempotencyKey: String?
    public var state: RolloutState
    /// Why it is paused, completed or cancelled, in words.
    public var reason: String?
    /// How many waves (the canary's included).
    public var waves: Int
    /// The highest wave started (-1: none yet).
    public var wave: Int
    public var waveStartedAt: Date?
    /// Failures already counted when an operator resumed it: the threshold counts those after.
    public var failuresAcknowledged: Int
    public var updatedAt: Date
    /// Every site, in the order they run (empty in listings).
    public var sites: [RolloutSite]
    /// Sites the selector matched but that were left out at creation (past their deadline).
    public var skipped: [RolloutSkip]
    public var counts: RolloutCounts
    /// Increases at every stored change (optimistic concurrency between replicas).
    public var version: Int64

    public init(
        id: String, kind: OperationKind, params: [String: String], selector: String, createdBy: String, createdAt: Date, canary: Int,
        batch: RolloutSize, maxFailures: RolloutSize, waitS: Double, expiresAt: Date?, idempotencyKey: String?, waves: Int,
        sites: [RolloutSite], skipped: [RolloutSkip]
    ) {
        self.id = id
        self.kind = kind
        self.params = params
        self.selector = selector
        self.createdBy = createdBy
        self.createdAt = createdAt
        self.canary = canary
        self.batch = batch
        self.maxFailures = maxFailures
        self.waitS = waitS
        self.expiresAt = expiresAt
        self.idempotencyKey = idempotencyKey
        self.state = .running
        self.reason = nil
        self.waves = waves
        self.wave = -1
        self.waveStartedAt = nil
        self.failuresAcknowledged = 0
        self.updatedAt = createdAt
        self.sites = sites
        self.skipped = skipped
        self.counts = RolloutCounts()
        self.version = 0
    }

    /// `counts` from `sites`.
    public mutating func recount() {
        var counts = RolloutCounts()
        counts.skipped = skipped.count
        for site in sites {
            if site.skipped != nil {
                counts.skipped += 1
                continue
            }
            switch site.state {
            case nil: counts.pending += 1
            case .queued?: counts.queued += 1
            case .dispatching?: counts.dispatching += 1
            case .succeeded?: counts.succeeded += 1
            case .failed?: counts.failed += 1
            default: counts.other += 1
            }
        }
        self.counts = counts
    }

    /// Failures so far: operations that failed (one that expired did not run in time, which is the
    /// rollout's own expiry, not a sign that something is broken).
    public var failures: Int { sites.count { $0.state == .failed } }
}

/// `POST /v1/rollouts`.
public struct RolloutRequest: Codable, Sendable, Hashable {
    public var kind: String
    public var selector: String
    public var params: [String: String]?
    /// Sites in the first wave, which must finish before the others start (default 0: none).
    public var canary: Int?
    /// Sites per wave: `10` or `25%` (default 10%).
    public var batch: String?
    /// Failures past which it pauses itself: `5` or `10%` (default 10%).
    public var maxFailures: String?
    /// How long an operation waiting on a site that is not connected may hold its wave back (default 1h).
    public var waitFor: String?
    public var expiresIn: String?
    public var expiresAt: Date?
    public var idempotencyKey: String?
    /// For whom the principal acts (recorded as "on behalf of").
    public var createdBy: String?

    public init(
        kind: String, selector: String, params: [String: String]? = nil, canary: Int? = nil, batch: String? = nil, maxFailures: String? = nil,
        waitFor: String? = nil, expiresIn: String? = nil, expiresAt: Date? = nil, idempotencyKey: String? = nil, createdBy: String? = nil
    ) {
        self.kind = kind
        self.selector = selector
        self.params = params
        self.canary = canary
        self.batch = batch
        self.maxFailures = maxFailures
        self.waitFor = waitFor
        self.expiresIn = expiresIn
        self.expiresAt = expiresAt
        self.idempotencyKey = idempotencyKey
        self.createdBy = createdBy
    }
}

/// `GET /v1/rollouts`: newest first, without their sites.
public struct RolloutList: Codable, Sendable, Hashable {
    public var rollouts: [Rollout]

    public init(rollouts: [Rollout]) {
        self.rollouts = rollouts
    }
}

/// The answer to `POST /v1/rollouts`.
public struct RolloutCreated: Codable, Sendable, Hashable {
    public var rollout: Rollout
    /// True when the idempotency key was used before: `rollout` is that one.
    public var existing: Bool

    public init(rollout: Rollout, existing: Bool) {
        self.rollout = rollout
        self.existing = existing
    }
}
