public import FleetCore
public import FleetQueue

#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif

/// Everything the HTTP API and the dashboard ask of the rest of the aggregator: reads of the
/// fleet as it is now, the queue's listings, and the operator's actions. The HTTP module sees
/// nothing else (it does not import the aggregator's core); the aggregator's service
/// implements this, and a test can stand in for it.
public protocol OperatorBackend: Sendable {
    /// The thresholds the fleet is evaluated against (the dashboard shows the budget).
    var thresholds: Thresholds { get }
    /// Whether the aggregator's broker connection is up now.
    var brokerConnected: Bool { get }
    /// This replica's id, role (`leader`, `standby`) and the lead's epoch; `replicated` false for a sole aggregator.
    var role: (replica: String, role: String, epoch: Int64, replicated: Bool) { get }
    /// True until the fleet's state has been restored from the store after the start: the API
    /// answers 503 `restoring` meanwhile instead of showing an empty fleet.
    var restoring: Bool { get }
    /// How many sites the fleet holds (cheap: for /healthz).
    var siteCount: Int { get }
    /// Why the store is unhealthy, or nil.
    func storeProblem(now: Date?) -> String?

    func summary() -> FleetSummary
    func views(mode: ConnectivityMode?, liveness: Liveness?, selector: LabelSelector) -> [SiteView]
    /// The sites whose labels match `selector` (for listings of operations by selector).
    func sites(matching selector: LabelSelector) -> Set<SiteID>
    func view(of site: SiteID) -> SiteView?
    func detail(of site: SiteID) -> SiteDetail?
    func capabilities(of site: SiteID) -> SiteCapabilities?
    /// Every site's deadline as last evaluated, ordered by site id (for `/metrics`).
    func siteDeadlines(selector: LabelSelector) -> [(site: SiteID, deadline: Date)]

    /// Operations matching `filter`, oldest first after `cursor`, or newest first before it.
    func operations(_ filter: OperationFilter, cursor: Int64?, limit: Int, newestFirst: Bool) throws -> OperationPage
    func operation(id: String) throws -> DeferredOperation?

    func submit(_ request: SubmissionRequest) throws(QueueError) -> SubmissionResult
    func cancel(id: String, by who: String) throws(QueueError) -> DeferredOperation
    func retry(id: String, by who: String) throws(QueueError) -> DeferredOperation
    func release(id: String, by who: String) throws(QueueError) -> DeferredOperation
    func cancelAll(_ filter: OperationFilter, by who: String) throws(QueueError) -> [DeferredOperation]
    func forget(site text: String, force: Bool, by who: String) throws(QueueError) -> SiteForgotten

    /// Rollouts: made (or the earlier one with the same idempotency key), listed newest first
    /// without their sites, one with its sites, paused, resumed, cancelled.
    func createRollout(_ request: RolloutRequest, by who: String) throws(QueueError) -> (Rollout, existing: Bool)
    func rollouts(limit: Int) throws(QueueError) -> [Rollout]
    func rollout(id: String) throws(QueueError) -> Rollout?
    func rollout(_ action: String, id: String, by who: String) throws(QueueError) -> Rollout

    /// Records a change asked of the API (who, when, from where, what, the answer).
    func audit(_ entry: AuditEntry) throws
    /// The audit log, newest first, older than `before` (an entry's id), at most `limit`.
    func auditLog(before: Int64?, limit: Int, principal: String?) throws -> [AuditEntry]

    /// Stored events matching `query`, oldest first.
    func storedEvents(_ query: EventQuery) throws -> [FleetEvent]
    /// A site's history over the window of `length` ending now (`HistoryError` for a bad window).
    func siteHistory(_ site: SiteID, length: Duration) throws -> SiteHistory
    /// The fleet over the window of `length` ending now: time per mode, `buckets` slices, the `top` sites by budget used.
    func fleetHistory(length: Duration, top: Int, buckets: Int) throws -> FleetHistory
}
