#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif

// The HTTP API's bodies (docs/contract.md, "Operator surfaces"; docs/openapi.yaml), shared by
// the aggregator that serves them and the `edgefleet` CLI that reads them. JSON through
// `FleetJSON`: RFC 3339 UTC times with milliseconds, sorted keys.

/// Every error the API answers: `{"error": {"code": ..., "message": ...}}`.
public struct APIErrorBody: Codable, Sendable, Hashable {
    public struct Detail: Codable, Sendable, Hashable {
        /// Stable, for scripts: `bad-request`, `unauthorized`, `forbidden`, `not-found`,
        /// `conflict`, `not-queueable`, `unavailable`, `internal`.
        public var code: String
        public var message: String
        /// The catalog's workaround, when a kind cannot be queued and one applies.
        public var workaround: String?

        public init(code: String, message: String, workaround: String? = nil) {
            self.code = code
            self.message = message
            self.workaround = workaround
        }
    }

    public var error: Detail

    public init(code: String, message: String, workaround: String? = nil) {
        error = Detail(code: code, message: message, workaround: workaround)
    }
}

/// `GET /v1/sites`: one page of site views, ordered by site id.
public struct SiteList: Codable, Sendable, Hashable {
    public var sites: [SiteView]
    /// Pass as `cursor` for the next page; absent on the last.
    public var nextCursor: String?
    /// How many sites match the filter in all.
    public var total: Int

    public init(sites: [SiteView], nextCursor: String?, total: Int) {
        self.sites = sites
        self.nextCursor = nextCursor
        self.total = total
    }
}

/// `GET /v1/sites/{site}`: the view and what the agent last reported.
public struct SiteDetail: Codable, Sendable, Hashable {
    public var view: SiteView
    public var presence: PresenceState?
    public var agent: AgentInfo?
    public var heartbeatIntervalS: Double
    public var lastSeenAt: Date?
    public var azureReachable: Bool?
    public var certificateExpiry: Date?
    public var certificateSource: String?
    public var expiredAt: Date?
    public var statusAt: Date?
    public var cluster: ClusterInfo?
    public var checks: [CheckResult]
    public var capabilities: [String: Bool]
    public var seqGaps: UInt64

    public init(
        view: SiteView, presence: PresenceState?, agent: AgentInfo?, heartbeatIntervalS: Double, lastSeenAt: Date?, azureReachable: Bool?,
        certificateExpiry: Date?, certificateSource: String?, expiredAt: Date?, statusAt: Date?, cluster: ClusterInfo?,
        checks: [CheckResult], capabilities: [String: Bool], seqGaps: UInt64
    ) {
        self.view = view
        self.presence = presence
        self.agent = agent
        self.heartbeatIntervalS = heartbeatIntervalS
        self.lastSeenAt = lastSeenAt
        self.azureReachable = azureReachable
        self.certificateExpiry = certificateExpiry
        self.certificateSource = certificateSource
        self.expiredAt = expiredAt
        self.statusAt = statusAt
        self.cluster = cluster
        self.checks = checks
        self.capabilities = capabilities
        self.seqGaps = seqGaps
    }
}

/// `GET /v1/sites/{site}/capabilities`: "what works here now", from the catalog.
public struct SiteCapabilities: Codable, Sendable, Hashable {
    public var site: SiteID
    public var mode: ConnectivityMode
    public var at: Date
    public var kinds: [KindAvailability]

    public init(site: SiteID, mode: ConnectivityMode, at: Date, kinds: [KindAvailability]) {
        self.site = site
        self.mode = mode
        self.at = at
        self.kinds = kinds
    }
}

/// `GET /v1/operations`: one page, oldest first.
public struct OperationList: Codable, Sendable, Hashable {
    public var operations: [DeferredOperation]
    public var nextCursor: String?

    public init(operations: [DeferredOperation], nextCursor: String?) {
        self.operations = operations
        self.nextCursor = nextCursor
    }
}

/// `POST /v1/operations`.
public struct SubmitOperationRequest: Codable, Sendable, Hashable {
    public var site: String
    public var kind: String
    public var params: [String: String]?
    public var idempotencyKey: String?
    public var notBefore: Date?
    public var expiresAt: Date?
    /// Instead of `expiresAt`: a duration from now (`36h`, `7d`).
    public var expiresIn: String?
    public var maxAttempts: Int?
    /// Who asks (recorded in the history); `api` when absent.
    public var createdBy: String?

    public init(
        site: String, kind: String, params: [String: String]? = nil, idempotencyKey: String? = nil, notBefore: Date? = nil,
        expiresAt: Date? = nil, expiresIn: String? = nil, maxAttempts: Int? = nil, createdBy: String? = nil
    ) {
        self.site = site
        self.kind = kind
        self.params = params
        self.idempotencyKey = idempotencyKey
        self.notBefore = notBefore
        self.expiresAt = expiresAt
        self.expiresIn = expiresIn
        self.maxAttempts = maxAttempts
        self.createdBy = createdBy
    }
}

/// The answer to a submission: 201 for a new operation, 200 for the one an
/// idempotency key already named.
public struct SubmitOperationResponse: Codable, Sendable, Hashable {
    public var operation: DeferredOperation
    public var existing: Bool
    /// Why it runs now or waits, in words.
    public var reason: String
    public var deadline: Date?
    public var superseded: [String]

    public init(operation: DeferredOperation, existing: Bool, reason: String, deadline: Date?, superseded: [String]) {
        self.operation = operation
        self.existing = existing
        self.reason = reason
        self.deadline = deadline
        self.superseded = superseded
    }
}

/// `POST /v1/operations/cancel`: cancels every queued or blocked operation matching the
/// filter. An empty filter is refused unless `all` is true.
public struct BulkCancelRequest: Codable, Sendable, Hashable {
    public var site: String?
    public var kind: String?
    public var state: String?
    public var all: Bool?
    public var by: String?

    public init(site: String? = nil, kind: String? = nil, state: String? = nil, all: Bool? = nil, by: String? = nil) {
        self.site = site
        self.kind = kind
        self.state = state
        self.all = all
        self.by = by
    }
}

public struct BulkCancelResponse: Codable, Sendable, Hashable {
    public var cancelled: [String]
    public var count: Int

    public init(cancelled: [String]) {
        self.cancelled = cancelled
        count = cancelled.count
    }
}

/// `GET /healthz`: 200 while the process serves (503 when the store cannot be written, or while
/// the fleet's state is restored); the broker link is reported, not judged (a broker outage
/// must not get the aggregator restarted).
public struct HealthStatus: Codable, Sendable, Hashable {
    /// `ok`; `unhealthy` (answered with 503) when the store has not been written for longer than the grace; `restoring` (503) while the fleet's state is read back after a start.
    public var status: String
    public var version: String
    public var broker: String
    public var sites: Int
    /// `ok`, or why and since when the site records cannot be written.
    public var store: String?
    /// Replicas on PostgreSQL: this replica's id, its role (`leader` or `standby`) and the epoch
    /// of the lead. Absent from a single aggregator.
    public var replica: String?
    public var role: String?
    public var epoch: Int64?

    public init(
        status: String, version: String, broker: String, sites: Int, store: String? = nil, replica: String? = nil, role: String? = nil,
        epoch: Int64? = nil
    ) {
        self.replica = replica
        self.role = role
        self.epoch = epoch
        self.store = store
        self.status = status
        self.version = version
        self.broker = broker
        self.sites = sites
    }
}

/// The answer to `DELETE /v1/sites/{site}`: the site is gone from the fleet, and with `force`
/// the operations that were waiting for it are cancelled.
public struct SiteForgotten: Codable, Sendable, Hashable {
    public var site: SiteID
    public var forgottenAt: Date
    public var cancelled: [String]

    public init(site: SiteID, forgottenAt: Date, cancelled: [String]) {
        self.site = site
        self.forgottenAt = forgottenAt
        self.cancelled = cancelled
    }
}

/// One change asked of the API (docs/contract.md, "Audit log"): who (the principal the token
/// names, and the name a client gave as `onBehalfOf`), when, from which address, what, and how
/// it was answered. Refusals of a known principal (403) are entries too; unknown tokens are not
/// (nobody to name: they are counted in `edgefleet_api_auth_failures_total`).
public struct AuditEntry: Codable, Sendable, Hashable {
    /// Increasing; given by the store.
    public var id: Int64?
    public var at: Date
    public var principal: String
    public var role: String
    public var onBehalfOf: String?
    /// The client's address (IP, without the port).
    public var address: String
    /// What was asked, such as `operation.submit`, `operation.cancel`, `site.forget`.
    public var action: String
    /// What it was asked of: an operation id, a site, a rollout id.
    public var target: String?
    /// The answer's HTTP status.
    public var status: Int
    /// The outcome in a line: the operation made, or the reason of a refusal.
    public var detail: String?

    public init(
        id: Int64? = nil, at: Date, principal: String, role: String, onBehalfOf: String? = nil, address: String, action: String,
        target: String? = nil, status: Int, detail: String? = nil
    ) {
        self.id = id
        self.at = at
        self.principal = principal
        self.role = role
        self.onBehalfOf = onBehalfOf
        self.address = address
        self.action = action
        self.target = target
        self.status = status
        self.detail = detail
    }
}

/// `GET /v1/audit`: newest first; `nextCursor` pages on to older entries.
public struct AuditPage: Codable, Sendable, Hashable {
    public var entries: [AuditEntry]
    public var nextCursor: String?

    public init(entries: [AuditEntry], nextCursor: String?) {
        self.entries = entries
        self.nextCursor = nextCursor
    }
}
