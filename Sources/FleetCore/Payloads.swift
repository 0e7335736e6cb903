#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif

/// Why a payload was refused on decode, beyond malformed JSON.
public enum PayloadError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The `schema` field names another payload or a major version this build does not know.
    case unsupportedSchema(found: String, expected: String)
    case invalidSiteID(String)
    case invalidTimestamp(String)

    public var description: String {
        switch self {
        case .unsupportedSchema(let found, let expected): "unsupported schema '\(found)' (expected '\(expected)')"
        case .invalidSiteID(let problem): problem
        case .invalidTimestamp(let text): "invalid RFC 3339 timestamp '\(text)'"
        }
    }
}

/// A payload type with a `schema` name and major version, `edgefleet.presence/1`.
public protocol SchemaIdentified {
    static var schema: String { get }
}

/// The `schema` field of a payload: always encodes as the type's schema and
/// refuses any other value on decode, so a payload is checked simply by decoding it.
public struct SchemaTag<Payload: SchemaIdentified>: Codable, Sendable, Hashable {
    public init() {}
    public var value: String { Payload.schema }

    public init(from decoder: any Decoder) throws {
        let found = try decoder.singleValueContainer().decode(String.self)
        guard found == Payload.schema else { throw PayloadError.unsupportedSchema(found: found, expected: Payload.schema) }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(Payload.schema)
    }
}

/// JSON coding with the contract's conventions: RFC 3339 UTC milliseconds, sorted keys.
public enum FleetJSON {
    /// Foundation's encoder with the contract's conventions, for output that needs its options
    /// (pretty printing for people). Everything the services write goes through `encode`, which
    /// writes the same bytes faster (`CompactJSON`).
    public static func encoder() -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        encoder.dateEncodingStrategy = .custom { date, encoder in
            var container = encoder.singleValueContainer()
            try container.encode(RFC3339.format(date))
        }
        return encoder
    }

    public static func decoder() -> JSONDecoder {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .custom { decoder in
            let text = try decoder.singleValueContainer().decode(String.self)
            guard let date = RFC3339.parse(text) else { throw PayloadError.invalidTimestamp(text) }
            return date
        }
        return decoder
    }

    public static func encode<T: Encodable>(_ value: T) throws -> [UInt8] {
        try CompactJSON.encode(value)
    }

    /// `encode` as text (documents stored in a database column).
    public static func text<T: Encodable>(_ value: T) throws -> String {
        String(decoding: try CompactJSON.encode(value), as: UTF8.self)
    }

    public static func decode<T: Decodable>(_ type: T.Type, from bytes: [UInt8]) throws -> T {
        try decoder().decode(type, from: Data(bytes))
    }
}

// MARK: - Site payloads

public enum PresenceState: String, Codable, Sendable, Hashable {
    case online, offline
}

public enum OfflineReason: String, Codable, Sendable, Hashable {
    /// Published by the broker as the agent's Last Will.
    case lost
    /// Published by the agent itself on a clean shutdown.
    case shutdown
}

public struct AgentInfo: Codable, Sendable, Hashable {
    public var version: String
    public var host: String
    public init(version: String, host: String) {
        self.version = version
        self.host = host
    }
}

/// `edgefleet.presence/1` on `{root}/sites/{site}/presence` (retained; also the Last Will).
public struct Presence: Codable, Sendable, Hashable, SchemaIdentified {
    public static let schema = "edgefleet.presence/1"
    public var schema = SchemaTag<Presence>()
    public var site: SiteID
    public var state: PresenceState
    public var reason: OfflineReason?
    /// Goes up by one on every connection; kept on disk by the agent.
    public var session: UInt64
    /// A random id the agent draws at every start (docs/contract.md, "Sessions"): a new one
    /// is a new session whatever the counter says.
    public var instance: String?
    public var agent: AgentInfo?
    public var heartbeatIntervalS: Double?
    public var at: Date
    /// Aggregator replicas on PostgreSQL: this replica's id, its role (`leader` or `standby`)
    /// and the epoch of the lead it last saw. Absent from agents and from a single aggregator.
    public var replica: String?
    public var role: String?
    public var epoch: Int64?

    public init(
        site: SiteID, state: PresenceState, reason: OfflineReason? = nil, session: UInt64, agent: AgentInfo? = nil,
        heartbeatIntervalS: Double? = nil, at: Date, instance: String? = nil, replica: String? = nil, role: String? = nil, epoch: Int64? = nil
    ) {
        self.replica = replica
        self.role = role
        self.epoch = epoch
        self.instance = instance
        self.site = site
        self.state = state
        self.reason = reason
        self.session = session
        self.agent = agent
        self.heartbeatIntervalS = heartbeatIntervalS
        self.at = at
    }
}

/// What the agent knows about its link to Azure.
public struct AzureReport: Codable, Sendable, Hashable {
    public var reachable: Bool
    /// Age in seconds, on the agent's monotonic clock, of the last successful
    /// Azure contact; `nil` (encoded as `null`) when there has never been one.
    public var lastContactAgeS: Double?
    /// Which probe produced it: `endpoints` or `command`.
    public var probe: String

    public init(reachable: Bool, lastContactAgeS: Double?, probe: String) {
        self.reachable = reachable
        self.lastContactAgeS = lastContactAgeS
        self.probe = probe
    }

    enum CodingKeys: String, CodingKey { case reachable, lastContactAgeS, probe }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(reachable, forKey: .reachable)
        try c.encode(lastContactAgeS, forKey: .lastContactAgeS)  // explicit null
        try c.encode(probe, forKey: .probe)
    }
}

public struct CertificateReport: Codable, Sendable, Hashable {
    public var earliestNotAfter: Date?
    public var source: String?
    /// Set when a configured certificate could not be read.
    public var error: String?

    public init(earliestNotAfter: Date?, source: String?, error: String? = nil) {
        self.earliestNotAfter = earliestNotAfter
        self.source = source
        self.error = error
    }
}

/// `edgefleet.heartbeat/1` on `{root}/sites/{site}/heartbeat`.
public struct Heartbeat: Codable, Sendable, Hashable, SchemaIdentified {
    public static let schema = "edgefleet.heartbeat/1"
    public var schema = SchemaTag<Heartbeat>()
    public var site: SiteID
    public var session: UInt64
    /// The agent's instance (see `Presence.instance`).
    public var instance: String?
    /// Goes up by one per heartbeat within a session.
    public var seq: UInt64
    /// The agent's wall clock; informative only (the aggregator never trusts it for modes).
    public var sentAt: Date
    public var azure: AzureReport
    public var certificates: CertificateReport?

    public init(
        site: SiteID, session: UInt64, seq: UInt64, sentAt: Date, azure: AzureReport, certificates: CertificateReport? = nil, instance: String? = nil
    ) {
        self.instance = instance
        self.site = site
        self.session = session
        self.seq = seq
        self.sentAt = sentAt
        self.azure = azure
        self.certificates = certificates
    }

    /// The last Azure contact in the receiver's clock: its receive time minus the
    /// reported age. The sender's wall clock (`sentAt`) plays no part, so a site
    /// whose clock is wrong is still judged correctly. `nil` if never in contact.
    public func azureContact(receivedAt: Date) -> Date? {
        guard let age = azure.lastContactAgeS, age.isFinite, age >= 0 else { return nil }
        return receivedAt.addingTimeInterval(-age)
    }
}

public struct ClusterInfo: Codable, Sendable, Hashable {
    public var name: String?
    public var resourceGroup: String?
    public var subscription: String?
    public var customLocation: String?
    public var kubernetesVersion: String?

    public init(
        name: String? = nil, resourceGroup: String? = nil, subscription: String? = nil, customLocation: String? = nil,
        kubernetesVersion: String? = nil
    ) {
        self.name = name
        self.resourceGroup = resourceGroup
        self.subscription = subscription
        self.customLocation = customLocation
        self.kubernetesVersion = kubernetesVersion
    }
}

/// The outcome of a local check, Nagios style.
public enum CheckState: String, Codable, Sendable, Hashable, CaseIterable {
    case pass, warn, fail, unknown

    /// Maps a Nagios plugin exit code: 0 pass, 1 warn, 2 fail, anything else unknown.
    public init(exitCode: Int32) {
        switch exitCode {
        case 0: self = .pass
        case 1: self = .warn
        case 2: self = .fail
        default: self = .unknown
        }
    }
}

public struct CheckResult: Codable, Sendable, Hashable {
    public var name: String
    public var state: CheckState
    public var observedAt: Date
    public var durationMs: Int
    public var output: String

    public init(name: String, state: CheckState, observedAt: Date, durationMs: Int, output: String) {
        self.name = name
        self.state = state
        self.observedAt = observedAt
        self.durationMs = durationMs
        self.output = output
    }
}

/// `edgefleet.status/1` on `{root}/sites/{site}/status` (retained).
public struct SiteStatus: Codable, Sendable, Hashable, SchemaIdentified {
    public static let schema = "edgefleet.status/1"
    public var schema = SchemaTag<SiteStatus>()
    public var site: SiteID
    public var session: UInt64
    /// The agent's instance (see `Presence.instance`).
    public var instance: String?
    public var at: Date
    public var cluster: ClusterInfo?
    public var checks: [CheckResult]
    public var capabilities: [String: Bool]
    /// Status changes the agent dropped from its offline spool (oldest first) since
    /// the last status that reached the broker; absent when none were.
    public var spoolDropped: Int?
    /// The site's labels (`SiteLabels`), from the agent's configuration; absent when it has none.
    public var labels: [String: String]?

    public init(
        site: SiteID, session: UInt64, at: Date, cluster: ClusterInfo? = nil, checks: [CheckResult] = [],
        capabilities: [String: Bool] = [:], spoolDropped: Int? = nil, instance: String? = nil, labels: [String: String]? = nil
    ) {
        self.labels = labels
        self.instance = instance
        self.spoolDropped = spoolDropped
        self.site = site
        self.session = session
        self.at = at
        self.cluster = cluster
        self.checks = checks
        self.capabilities = capabilities
    }
}

// MARK: - Aggregator payloads

public struct QueueCounts: Codable, Sendable, Hashable {
    public var queued = 0
    public var dispatching = 0
    public var failed = 0
    public var blocked = 0
    public init(queued: Int = 0, dispatching: Int = 0, failed: Int = 0, blocked: Int = 0) {
        self.queued = queued
        self.dispatching = dispatching
        self.failed = failed
        self.blocked = blocked
    }
}

/// Operations by state, fleet-wide (the summary's `queue`): one field per state of the lifecycle.
public struct OperationCounts: Codable, Sendable, Hashable {
    public var queued = 0
    public var dispatching = 0
    public var blocked = 0
    public var succeeded = 0
    public var failed = 0
    public var cancelled = 0
    public var expired = 0
    public var superseded = 0

    public init() {}

    /// A state missing from the object counts 0 (a summary from an aggregator that wrote only
    /// the states it had seen still reads).
    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: OperationStateKey.self)
        for state in OperationState.allCases {
            self[state] = try container.decodeIfPresent(Int.self, forKey: OperationStateKey(state)) ?? 0
        }
    }

    private struct OperationStateKey: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(_ state: OperationState) { stringValue = state.rawValue }
        init?(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }

    public subscript(state: OperationState) -> Int {
        get {
            switch state {
            case .queued: queued
            case .dispatching: dispatching
            case .blocked: blocked
            case .succeeded: succeeded
            case .failed: failed
            case .cancelled: cancelled
            case .expired: expired
            case .superseded: superseded
            }
        }
        set {
            switch state {
            case .queued: queued = newValue
            case .dispatching: dispatching = newValue
            case .blocked: blocked = newValue
            case .succeeded: succeeded = newValue
            case .failed: failed = newValue
            case .cancelled: cancelled = newValue
            case .expired: expired = newValue
            case .superseded: superseded = newValue
            }
        }
    }

    /// Operations that have not ended: queued, dispatching or blocked.
    public var open: Int { queued + dispatching + blocked }
}

public struct CheckCounts: Codable, Sendable, Hashable {
    public var pass = 0
    public var warn = 0
    public var fail = 0
    public var unknown = 0
    public init(pass: Int = 0, warn: Int = 0, fail: Int = 0, unknown: Int = 0) {
        self.pass = pass
        self.warn = warn
        self.fail = fail
        self.unknown = unknown
    }

    public init(_ checks: [CheckResult]) {
        for check in checks {
            switch check.state {
            case .pass: pass += 1
            case .warn: warn += 1
            case .fail: fail += 1
            case .unknown: unknown += 1
            }
        }
    }
}

/// `edgefleet.site/1` on `{root}/fleet/sites/{site}` (retained): the aggregator's view of one site.
public struct SiteView: Codable, Sendable, Hashable, SchemaIdentified {
    public static let schema = "edgefleet.site/1"
    public var schema = SchemaTag<SiteView>()
    public var site: SiteID
    public var mode: ConnectivityMode
    public var modeSince: Date?
    public var liveness: Liveness
    public var lastHeartbeatAt: Date?
    public var lastAzureContactAt: Date?
    public var deadline: Date?
    public var deadlineReason: DeadlineReason?
    public var remainingS: Double?
    public var alert: AlertLevel
    public var projected: Bool
    public var queue: QueueCounts
    public var checks: CheckCounts
    /// The site's labels as its agent last reported them; absent when it has none.
    public var labels: [String: String]?

    public init(
        site: SiteID, evaluation: SiteEvaluation, lastHeartbeatAt: Date?, lastAzureContactAt: Date?,
        queue: QueueCounts = QueueCounts(), checks: CheckCounts = CheckCounts(), labels: [String: String] = [:]
    ) {
        self.labels = labels.isEmpty ? nil : labels
        self.site = site
        self.mode = evaluation.mode
        self.modeSince = evaluation.modeSince
        self.liveness = evaluation.liveness
        self.lastHeartbeatAt = lastHeartbeatAt
        self.lastAzureContactAt = lastAzureContactAt
        self.deadline = evaluation.deadline
        self.deadlineReason = evaluation.deadlineReason
        self.remainingS = evaluation.remainingS
        self.alert = evaluation.alert
        self.projected = evaluation.projected
        self.queue = queue
        self.checks = checks
    }
}

public struct ModeCounts: Codable, Sendable, Hashable {
    public var connected = 0
    public var semiConnected = 0
    public var disconnected = 0
    public var unknown = 0
    public init() {}

    enum CodingKeys: String, CodingKey {
        case connected, semiConnected = "semi-connected", disconnected, unknown
    }

    public subscript(mode: ConnectivityMode) -> Int {
        get {
            switch mode {
            case .connected: connected
            case .semiConnected: semiConnected
            case .disconnected: disconnected
            case .unknown: unknown
            }
        }
        set {
            switch mode {
            case .connected: connected = newValue
            case .semiConnected: semiConnected = newValue
            case .disconnected: disconnected = newValue
            case .unknown: unknown = newValue
            }
        }
    }
}

public struct LivenessCounts: Codable, Sendable, Hashable {
    public var online = 0
    public var stale = 0
    public var offline = 0
    public init() {}

    public subscript(liveness: Liveness) -> Int {
        get {
            switch liveness {
            case .online: online
            case .stale: stale
            case .offline: offline
            }
        }
        set {
            switch liveness {
            case .online: online = newValue
            case .stale: stale = newValue
            case .offline: offline = newValue
            }
        }
    }
}

public enum FleetMode: String, Codable, Sendable, Hashable {
    /// Every site is connected.
    case connected
    /// At least one site is not.
    case degraded
}

public struct DeadlineEntry: Codable, Sendable, Hashable {
    public var site: SiteID
    public var mode: ConnectivityMode
    public var deadline: Date
    public var remainingS: Double
    public init(site: SiteID, mode: ConnectivityMode, deadline: Date, remainingS: Double) {
        self.site = site
        self.mode = mode
        self.deadline = deadline
        self.remainingS = remainingS
    }
}

/// `edgefleet.fleet/1` on `{root}/fleet/status` (retained).
public struct FleetSummary: Codable, Sendable, Hashable, SchemaIdentified {
    public static let schema = "edgefleet.fleet/1"
    public var schema = SchemaTag<FleetSummary>()
    public var at: Date
    public var sites: Int
    public var modes: ModeCounts
    public var liveness: LivenessCounts
    public var fleetMode: FleetMode
    /// The five nearest deadlines, nearest first.
    public var nearestDeadlines: [DeadlineEntry]
    /// Operations by state, every state present.
    public var queue: OperationCounts

    public init(
        at: Date, sites: Int, modes: ModeCounts, liveness: LivenessCounts, nearestDeadlines: [DeadlineEntry],
        queue: OperationCounts
    ) {
        self.at = at
        self.sites = sites
        self.modes = modes
        self.liveness = liveness
        self.fleetMode = modes.connected == sites ? .connected : .degraded
        self.nearestDeadlines = nearestDeadlines
        self.queue = queue
    }
}

public enum FleetEventType: String, Codable, Sendable, Hashable, CaseIterable {
    case modeChanged = "mode-changed"
    case livenessChanged = "liveness-changed"
    case deadlineAlert = "deadline-alert"
    case operationQueued = "operation-queued"
    case operationDispatched = "operation-dispatched"
    case operationSucceeded = "operation-succeeded"
    case operationFailed = "operation-failed"
    case operationRetrying = "operation-retrying"
    case operationCancelled = "operation-cancelled"
    case operationExpired = "operation-expired"
    case operationBlocked = "operation-blocked"
    case operationSuperseded = "operation-superseded"
    /// An operator removed a decommissioned site (`DELETE /v1/sites/{site}`); `note` says who.
    case siteForgotten = "site-forgotten"
    /// Replicas on PostgreSQL: a replica took the lead; `to` is its replica id, `from` the
    /// previous leader's when known, `epoch` the new lead's.
    case leaderChanged = "leader-changed"
    /// Rollouts: `rollout` names it, `kind` its operation kind, `note` says what.
    case rolloutCreated = "rollout-created"
    case rolloutWaveStarted = "rollout-wave-started"
    case rolloutPaused = "rollout-paused"
    case rolloutResumed = "rollout-resumed"
    case rolloutCompleted = "rollout-completed"
    case rolloutCancelled = "rollout-cancelled"
    case rolloutExpired = "rollout-expired"
}

/// `edgefleet.event/1` on `{root}/fleet/events`.
public struct FleetEvent: Codable, Sendable, Hashable, SchemaIdentified {
    public static let schema = "edgefleet.event/1"
    public var schema = SchemaTag<FleetEvent>()
    public var type: FleetEventType
    public var site: SiteID?
    public var at: Date
    /// `mode-changed` / `liveness-changed`: the previous and the new value.
    public var from: String?
    public var to: String?
    /// `deadline-alert`: the level crossed and the time left.
    public var level: AlertLevel?
    public var remainingS: Double?
    /// `operation-*`: which operation.
    public var operationID: String?
    public var kind: OperationKind?
    public var note: String?
    /// Replicas on PostgreSQL: the epoch of the lead under which the event was published (it
    /// increases at every change of leader; an event never carries an older epoch than one
    /// published before it). Absent from a single aggregator.
    public var epoch: Int64?
    /// `rollout-*`: which rollout.
    public var rollout: String?
    /// `mode-changed`: the site's last Azure contact and its deadline as the aggregator knew
    /// them at the change (absent when it had none). A stretch without Azure runs from the
    /// `contactAt` of the change away from `connected` to the `contactAt` of the change back.
    public var contactAt: Date?
    public var deadline: Date?
    /// The stored event's id: increases in the order events are published, so a reader that
    /// replays stored events (`GET /v1/events`) and then follows the topic skips what it has
    /// seen by id. Absent when the event could not be stored.
    public var id: Int64?

    public init(
        type: FleetEventType, site: SiteID?, at: Date, from: String? = nil, to: String? = nil, level: AlertLevel? = nil,
        remainingS: Double? = nil, operationID: String? = nil, kind: OperationKind? = nil, note: String? = nil, epoch: Int64? = nil,
        rollout: String? = nil, contactAt: Date? = nil, deadline: Date? = nil
    ) {
        self.contactAt = contactAt
        self.deadline = deadline
        self.rollout = rollout
        self.epoch = epoch
        self.type = type
        self.site = site
        self.at = at
        self.from = from
        self.to = to
        self.level = level
        self.remainingS = remainingS
        self.operationID = operationID
        self.kind = kind
        self.note = note
    }
}

/// An agent's instance id: 1 to 64 characters of `a-z`, `0-9` and `-` (the agent draws 16 hex digits).
public enum AgentInstance {
    /// A new random instance id.
    public static func random() -> String {
        var generator = SystemRandomNumberGenerator()
        let value = generator.next() as UInt64
        let hex = String(value, radix: 16)
        return String(repeating: "0", count: 16 - hex.count) + hex
    }

    public static func isValid(_ id: String) -> Bool {
        (1...64).contains(id.utf8.count) && id.utf8.allSatisfy { (0x61...0x7A).contains($0) || (0x30...0x39).contains($0) || $0 == 0x2D }
    }
}
