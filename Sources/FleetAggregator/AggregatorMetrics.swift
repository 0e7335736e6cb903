public import CoreMetrics
import FleetCore
public import FleetQueue

/// The aggregator's metrics through swift-metrics, named as Prometheus expects
/// (`edgefleet_sites{mode="semi-connected"}`). The HTTP `/metrics` endpoint comes with
/// the operator surfaces; until then any swift-metrics backend the program bootstraps
/// receives them. Tests pass their own factory.
public struct AggregatorMetrics: Sendable {
    let sitesByMode: [ConnectivityMode: Gauge]
    let sitesByLiveness: [Liveness: Gauge]
    let ingested: [SiteChannel: Counter]
    let rejected: [RejectReason: Counter]
    let ignored: Counter
    let evaluationLag: Timer
    let publishLatency: Timer
    let publishFailures: Counter
    /// Flushes of site records that failed (a full disk, a read-only or lost database).
    let storeFailures: Counter
    /// Events the state dropped because nobody took them for too long (the broker unreachable).
    let eventsDropped: Counter
    /// Events stored for the history and `GET /v1/events`, and batches that could not be.
    let eventsStored: Counter
    let eventStoreFailures: Counter
    /// 1 while this replica leads (a sole aggregator always), and the epoch of the lead.
    let leader: Gauge
    let leaderEpoch: Gauge
    /// The queue's own (operations by state, dispatch latency).
    public let queue: QueueMetrics

    /// Each metric's `# HELP` text for `/metrics` (swift-metrics carries none).
    public static let help: [String: String] = [
        "edgefleet_sites": "Sites by connectivity mode (connected, semi-connected, disconnected, unknown).",
        "edgefleet_sites_liveness": "Sites by the liveness of their agent (online, stale, offline).",
        "edgefleet_messages_ingested_total": "Valid messages taken from the site topics, by channel.",
        "edgefleet_messages_rejected_total": "Messages from the site topics refused, by reason.",
        "edgefleet_messages_ignored_total": "Valid messages that changed nothing (repeats, older sessions, retained heartbeats).",
        "edgefleet_evaluation_lag_seconds": "How late due site evaluations ran.",
        "edgefleet_publish_latency_seconds": "Time from publishing a view, event or summary to the broker's acknowledgement.",
        "edgefleet_publish_failures_total": "Publications that failed (the broker was unreachable).",
        "edgefleet_store_write_failures_total": "Flushes of site records that failed (a full disk, a read-only or lost database).",
        "edgefleet_events_dropped_total": "Fleet events dropped unpublished: more than the state keeps piled up while the broker was unreachable.",
        "edgefleet_events_stored_total": "Fleet events stored for GET /v1/events and the history.",
        "edgefleet_event_store_failures_total": "Batches of fleet events that could not be stored (published without an id).",
        "edgefleet_leader": "1 while this aggregator replica leads (publishes and dispatches), 0 while it stands by.",
        "edgefleet_leader_epoch": "The epoch of the lead this replica last saw (it increases at every change of leader).",
    ].merging(QueueMetrics.help) { own, _ in own }

    public init(factory: any MetricsFactory = MetricsSystem.factory) {
        sitesByMode = Dictionary(
            uniqueKeysWithValues: ConnectivityMode.allCases.map {
                ($0, Gauge(label: "edgefleet_sites", dimensions: [("mode", $0.rawValue)], factory: factory))
            })
        sitesByLiveness = Dictionary(
            uniqueKeysWithValues: Liveness.allCases.map {
                ($0, Gauge(label: "edgefleet_sites_liveness", dimensions: [("liveness", $0.rawValue)], factory: factory))
            })
        ingested = Dictionary(
            uniqueKeysWithValues: SiteChannel.allCases.map {
                ($0, Counter(label: "edgefleet_messages_ingested_total", dimensions: [("channel", $0.rawValue)], factory: factory))
            })
        rejected = Dictionary(
            uniqueKeysWithValues: RejectReason.allCases.map {
                ($0, Counter(label: "edgefleet_messages_rejected_total", dimensions: [("reason", $0.rawValue)], factory: factory))
            })
        ignored = Counter(label: "edgefleet_messages_ignored_total", factory: factory)
        evaluationLag = Timer(label: "edgefleet_evaluation_lag_seconds", preferredDisplayUnit: .seconds, factory: factory)
        publishLatency = Timer(label: "edgefleet_publish_latency_seconds", preferredDisplayUnit: .seconds, factory: factory)
        publishFailures = Counter(label: "edgefleet_publish_failures_total", factory: factory)
        storeFailures = Counter(label: "edgefleet_store_write_failures_total", factory: factory)
        eventsDropped = Counter(label: "edgefleet_events_dropped_total", factory: factory)
        eventsStored = Counter(label: "edgefleet_events_stored_total", factory: factory)
        eventStoreFailures = Counter(label: "edgefleet_event_store_failures_total", factory: factory)
        leader = Gauge(label: "edgefleet_leader", factory: factory)
        leaderEpoch = Gauge(label: "edgefleet_leader_epoch", factory: factory)
        queue = QueueMetrics(factory: factory)
    }

    func record(modes: ModeCounts, liveness: LivenessCounts) {
        for mode in ConnectivityMode.allCases { sitesByMode[mode]?.record(modes[mode]) }
        for state in Liveness.allCases { sitesByLiveness[state]?.record(liveness[state]) }
    }
}

