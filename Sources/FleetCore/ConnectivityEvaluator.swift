#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif

/// How Azure would judge a site right now.
public enum ConnectivityMode: String, Codable, Sendable, Hashable, CaseIterable {
    /// Last Azure contact within `connectedWithin` and the deadline still ahead.
    case connected
    /// Not connected, deadline ahead: the 30-day countdown runs.
    case semiConnected = "semi-connected"
    /// The deadline passed: Azure no longer supports the cluster; it may need redeploying.
    case disconnected
    /// No Azure contact has ever been reported.
    case unknown
}

/// Whether the on-prem aggregator still hears the site's agent (separate from Azure).
public enum Liveness: String, Codable, Sendable, Hashable, CaseIterable {
    case online, stale, offline
}

/// How close a site is to its deadline.
public enum AlertLevel: String, Codable, Sendable, Hashable, CaseIterable, Comparable {
    case none, warning, critical, expired

    private var rank: Int {
        switch self {
        case .none: 0
        case .warning: 1
        case .critical: 2
        case .expired: 3
        }
    }

    public static func < (lhs: AlertLevel, rhs: AlertLevel) -> Bool { lhs.rank < rhs.rank }
}

/// Which limit sets the deadline.
public enum DeadlineReason: String, Codable, Sendable, Hashable {
    /// Last Azure contact plus the semi-connected budget (30 days).
    case budget
    /// A certificate expires before the budget runs out.
    case certificate
}

/// Every threshold of the mode rules. Defaults are Azure Arc's and the seed's;
/// a demo or a test shrinks them to run 30 days in seconds.
public struct Thresholds: Sendable, Hashable {
    /// Azure shows an Arc cluster Offline after this long without a heartbeat.
    public var connectedWithin: Duration = .seconds(15 * 60)
    /// How long semi-connected operation is supported (the certificates' lifetime).
    public var budget: Duration = .seconds(30 * 86_400)
    public var warnBefore: Duration = .seconds(7 * 86_400)
    public var criticalBefore: Duration = .seconds(2 * 86_400)
    /// How long a site must stay connected before queued operations are released.
    public var stableFor: Duration = .seconds(120)
    /// Liveness turns stale after this many heartbeat intervals of silence...
    public var staleAfterIntervals: Int = 3
    /// ...and offline after this many.
    public var offlineAfterIntervals: Int = 10

    public init() {}

    public init(
        connectedWithin: Duration, budget: Duration, warnBefore: Duration, criticalBefore: Duration, stableFor: Duration,
        staleAfterIntervals: Int = 3, offlineAfterIntervals: Int = 10
    ) {
        self.connectedWithin = connectedWithin
        self.budget = budget
        self.warnBefore = warnBefore
        self.criticalBefore = criticalBefore
        self.stableFor = stableFor
        self.staleAfterIntervals = staleAfterIntervals
        self.offlineAfterIntervals = offlineAfterIntervals
    }

    /// A readable problem with these thresholds, or `nil` if they make sense together.
    public var problem: String? {
        if connectedWithin <= .zero { return "connectedWithin must be positive" }
        if budget <= connectedWithin { return "budget must be longer than connectedWithin" }
        if warnBefore < .zero || criticalBefore < .zero { return "warnBefore and criticalBefore must not be negative" }
        if criticalBefore > warnBefore { return "criticalBefore must not be longer than warnBefore" }
        if warnBefore >= budget { return "warnBefore must be shorter than the budget" }
        if stableFor < .zero { return "stableFor must not be negative" }
        if staleAfterIntervals < 1 || offlineAfterIntervals <= staleAfterIntervals {
            return "liveness multipliers need 1 <= staleAfter < offlineAfter"
        }
        return nil
    }
}

/// What the aggregator knows about one site, all times in the aggregator's clock.
public struct SiteKnowledge: Sendable, Hashable {
    /// The last Azure contact (receive time minus the reported age); `nil` if never.
    public var lastAzureContactAt: Date?
    /// The earliest certificate expiry the site reported.
    public var earliestCertificateExpiry: Date?
    /// When anything was last received from the agent.
    public var lastSeenAt: Date?
    /// The agent's heartbeat interval, for liveness.
    public var heartbeatInterval: Duration
    /// The agent's newest presence says offline (clean shutdown or Last Will).
    public var presenceOffline: Bool
    /// When the site passed a deadline, remembered until a contact with valid
    /// certificates is seen after it.
    public var expiredAt: Date?
    /// The mode of the previous evaluation and since when, to carry `modeSince`.
    public var previousMode: ConnectivityMode?
    public var modeSince: Date?

    public init(
        lastAzureContactAt: Date? = nil, earliestCertificateExpiry: Date? = nil, lastSeenAt: Date? = nil,
        heartbeatInterval: Duration = .seconds(10), presenceOffline: Bool = false, expiredAt: Date? = nil,
        previousMode: ConnectivityMode? = nil, modeSince: Date? = nil
    ) {
        self.lastAzureContactAt = lastAzureContactAt
        self.earliestCertificateExpiry = earliestCertificateExpiry
        self.lastSeenAt = lastSeenAt
        self.heartbeatInterval = heartbeatInterval
        self.presenceOffline = presenceOffline
        self.expiredAt = expiredAt
        self.previousMode = previousMode
        self.modeSince = modeSince
    }
}

/// The result of evaluating one site at one instant.
public struct SiteEvaluation: Sendable, Hashable {
    public var mode: ConnectivityMode
    /// When the site entered `mode` (the evaluation instant if it just changed).
    public var modeSince: Date
    public var liveness: Liveness
    /// The mode is projected from the last known contact because the agent is not online.
    public var projected: Bool
    public var deadline: Date?
    public var deadlineReason: DeadlineReason?
    /// Seconds until the deadline (negative once passed), `nil` without a deadline.
    public var remainingS: Double?
    public var alert: AlertLevel
    /// The memory of a passed deadline to keep for the next evaluation.
    public var expiredAt: Date?
    /// Connected for at least `stableFor`: queued operations may be released.
    public var stable: Bool
    /// The next instant at which this evaluation changes by itself (mode, alert,
    /// liveness or stability), or `nil` if nothing will change without new input.
    public var nextChangeAt: Date?
}

/// The connectivity-mode rules of the contract as one pure function.
public enum ConnectivityEvaluator {
    /// Evaluates `site` at `now`. Instants are compared at millisecond resolution:
    /// a contact exactly `connectedWithin` old is still connected, one millisecond
    /// more is not; a deadline equal to `now` has passed.
    public static func evaluate(_ site: SiteKnowledge, thresholds: Thresholds, now: Date) -> SiteEvaluation {
        let nowMs = milliseconds(now)
        let contactMs = site.lastAzureContactAt.map(milliseconds)
        let certificateMs = site.earliestCertificateExpiry.map(milliseconds)

        // Deadline: the earlier of contact + budget and the earliest certificate expiry.
        var deadlineMs: Int64?
        var reason: DeadlineReason?
        if let contactMs {
            deadlineMs = contactMs + thresholds.budget.milliseconds
            reason = .budget
        }
        if let certificateMs, deadlineMs.map({ certificateMs < $0 }) ?? true {
            deadlineMs = certificateMs
            reason = .certificate
        }

        // Memory of a passed deadline: cleared only by a contact after it while
        // the certificates are valid; set when a deadline is reached.
        var expiredMs = site.expiredAt.map(milliseconds)
        if let e = expiredMs, let contactMs, contactMs > e, certificateMs.map({ $0 > nowMs }) ?? true {
            expiredMs = nil
        }
        if expiredMs == nil, let deadlineMs, deadlineMs <= nowMs, contactMs != nil {
            expiredMs = deadlineMs
        }

        let mode: ConnectivityMode
        if contactMs == nil {
            mode = .unknown
        } else if expiredMs != nil || (deadlineMs.map { $0 <= nowMs } ?? false) {
            mode = .disconnected
        } else if let contactMs, nowMs - contactMs <= thresholds.connectedWithin.milliseconds {
            mode = .connected
        } else {
            mode = .semiConnected
        }

        let remainingMs = deadlineMs.map { $0 - nowMs }
        let alert: AlertLevel
        if mode == .disconnected || (remainingMs.map { $0 <= 0 } ?? false) {
            alert = .expired
        } else if let remainingMs, remainingMs <= thresholds.criticalBefore.milliseconds {
            alert = .critical
        } else if let remainingMs, remainingMs <= thresholds.warnBefore.milliseconds {
            alert = .warning
        } else {
            alert = .none
        }

        // Liveness from the last thing heard from the agent.
        let intervalMs = max(site.heartbeatInterval.milliseconds, 1)
        let staleAfterMs = intervalMs * Int64(thresholds.staleAfterIntervals)
        let offlineAfterMs = intervalMs * Int64(thresholds.offlineAfterIntervals)
        let liveness: Liveness
        if site.presenceOffline {
            liveness = .offline
        } else if let seenMs = site.lastSeenAt.map(milliseconds) {
            let silence = nowMs - seenMs
            liveness = silence <= staleAfterMs ? .online : silence <= offlineAfterMs ? .stale : .offline
        } else {
            liveness = .offline
        }

        let modeSince: Date
        if let previous = site.previousMode, previous == mode, let since = site.modeSince {
            modeSince = since
        } else {
            modeSince = now
        }
        let stableAtMs = milliseconds(modeSince) + thresholds.stableFor.milliseconds
        let stable = mode == .connected && stableAtMs <= nowMs

        // The next instant something above changes on its own.
        var candidates: [Int64] = []
        if mode == .connected, let contactMs { candidates.append(contactMs + thresholds.connectedWithin.milliseconds + 1) }
        if mode == .connected, !stable { candidates.append(stableAtMs) }
        if let deadlineMs, mode != .disconnected {
            candidates.append(deadlineMs)
            candidates.append(deadlineMs - thresholds.warnBefore.milliseconds)
            candidates.append(deadlineMs - thresholds.criticalBefore.milliseconds)
        }
        if !site.presenceOffline, let seenMs = site.lastSeenAt.map(milliseconds) {
            candidates.append(seenMs + staleAfterMs + 1)
            candidates.append(seenMs + offlineAfterMs + 1)
        }
        let next = candidates.filter { $0 > nowMs }.min()

        return SiteEvaluation(
            mode: mode,
            modeSince: modeSince,
            liveness: liveness,
            projected: liveness != .online,
            deadline: deadlineMs.map { date(milliseconds: $0) },
            deadlineReason: reason,
            remainingS: remainingMs.map { Double($0) / 1000 },
            alert: alert,
            expiredAt: expiredMs.map { date(milliseconds: $0) },
            stable: stable,
            nextChangeAt: next.map { date(milliseconds: $0) })
    }
}
