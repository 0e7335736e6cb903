public import CoreMetrics
public import FleetCore

/// The queue's metrics through swift-metrics (`edgefleet_operations{state=...}`, the dispatch latency).
public struct QueueMetrics: Sendable {
    let operationsByState: [OperationState: Gauge]
    let dispatchLatency: Timer

    /// Each metric's `# HELP` text for `/metrics`.
    public static let help: [String: String] = [
        "edgefleet_operations": "Deferred operations by state.",
        "edgefleet_dispatch_latency_seconds": "Time from an operation becoming dispatchable to its executor starting.",
    ]

    public init(factory: any MetricsFactory = MetricsSystem.factory) {
        operationsByState = Dictionary(
            uniqueKeysWithValues: OperationState.allCases.map {
                ($0, Gauge(label: "edgefleet_operations", dimensions: [("state", $0.rawValue)], factory: factory))
            })
        dispatchLatency = Timer(label: "edgefleet_dispatch_latency_seconds", preferredDisplayUnit: .seconds, factory: factory)
    }

    func record(totals: [OperationState: Int]) {
        for state in OperationState.allCases { operationsByState[state]?.record(totals[state] ?? 0) }
    }
}

extension Timer {
    /// Records a `Duration`.
    public func record(duration: Duration) {
        let (seconds, attoseconds) = duration.components
        recordNanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }
}
