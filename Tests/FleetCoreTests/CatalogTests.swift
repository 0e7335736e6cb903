import FleetCore
import Testing

@Suite("operation catalog")
struct CatalogTests {
    struct Row: Sendable, CustomTestStringConvertible {
        var kind: OperationKind
        var azure: Bool
        var offline: OfflineSupport
        var queue: Queueability
        var workaround: String?
        var coalesces: Bool
        var testDescription: String { kind.rawValue }
    }

    /// docs/contract.md's table, row by row.
    static let rows: [Row] = [
        Row(kind: .clusterCreate, azure: true, offline: .notSupported, queue: .queueable, workaround: nil, coalesces: false),
        Row(kind: .clusterUpdate, azure: true, offline: .notSupported, queue: .queueable, workaround: nil, coalesces: false),
        Row(kind: .clusterUpgrade, azure: true, offline: .notSupported, queue: .queueable, workaround: nil, coalesces: true),
        Row(kind: .clusterDelete, azure: true, offline: .notSupported, queue: .queueable, workaround: nil, coalesces: false),
        Row(kind: .nodepoolAdd, azure: true, offline: .partial, queue: .queueable, workaround: "autoscaler", coalesces: false),
        Row(kind: .nodepoolScale, azure: true, offline: .partial, queue: .queueable, workaround: "autoscaler", coalesces: true),
        Row(kind: .accessEntra, azure: true, offline: .partial, queue: .notQueueable, workaround: "admin kubeconfig", coalesces: false),
        Row(kind: .accessProxy, azure: true, offline: .partial, queue: .notQueueable, workaround: "admin kubeconfig", coalesces: false),
        Row(kind: .statusPortal, azure: true, offline: .partial, queue: .notQueueable, workaround: "kubectl get", coalesces: false),
        Row(kind: .metallbConfigure, azure: true, offline: .partial, queue: .queueable, workaround: nil, coalesces: true),
        Row(kind: .monitoringConfigure, azure: true, offline: .partial, queue: .queueable, workaround: "on-premises monitoring", coalesces: false),
        Row(kind: .gitopsConfigure, azure: true, offline: .notSupported, queue: .queueable, workaround: nil, coalesces: false),
        Row(kind: .extensionInstall, azure: true, offline: .notSupported, queue: .queueable, workaround: nil, coalesces: false),
        Row(kind: .extensionUpdate, azure: true, offline: .notSupported, queue: .queueable, workaround: nil, coalesces: false),
        Row(kind: .extensionDelete, azure: true, offline: .notSupported, queue: .queueable, workaround: nil, coalesces: false),
        Row(kind: .ssh, azure: false, offline: .supported, queue: .neverQueued, workaround: nil, coalesces: false),
        Row(kind: .logsCollect, azure: false, offline: .supported, queue: .neverQueued, workaround: nil, coalesces: false),
        Row(kind: .kubeconfigAdmin, azure: false, offline: .supported, queue: .neverQueued, workaround: nil, coalesces: false),
        Row(kind: .statusLocal, azure: false, offline: .supported, queue: .neverQueued, workaround: nil, coalesces: false),
    ]

    @Test("the catalog covers every kind exactly once")
    func complete() {
        #expect(OperationCatalog.entries.map(\.kind).sorted() == OperationKind.allCases.sorted())
        #expect(Self.rows.map(\.kind).sorted() == OperationKind.allCases.sorted())
    }

    @Test("every row of docs/contract.md", arguments: rows)
    func row(_ row: Row) {
        let entry = OperationCatalog.entry(row.kind)
        #expect(entry.azureRequired == row.azure)
        #expect(entry.whileNotConnected == row.offline)
        #expect(entry.queueability == row.queue)
        #expect(entry.coalesces == row.coalesces)
        if let expected = row.workaround {
            #expect(entry.workaround?.text.contains(expected) == true)
        } else {
            #expect(entry.workaround == nil)
        }
        // What works here now, in every mode, with and without the autoscaler.
        for mode in ConnectivityMode.allCases {
            for autoscaler in [false, true] {
                let availability = OperationCatalog.availability(mode: mode, capabilities: ["clusterAutoscaler": autoscaler])
                let a = availability.first { $0.kind == row.kind }!
                #expect(a.available == (!row.azure || mode == .connected), "\(row.kind) in \(mode)")
                #expect(a.queueable == (row.queue == .queueable))
                #expect(!a.reason.isEmpty)
                if a.available {
                    #expect(a.workaround == nil)
                } else if row.workaround == "autoscaler" {
                    #expect((a.workaround != nil) == autoscaler, "the autoscaler workaround shows only where the site reports it")
                } else {
                    #expect((a.workaround != nil) == (row.workaround != nil))
                }
            }
        }
    }

    @Test("coalescing targets: node pools by name, MetalLB by name, upgrades per cluster")
    func coalescingTargets() {
        #expect(OperationCatalog.entry(.nodepoolScale).coalescingTarget == "nodepool")
        #expect(OperationCatalog.entry(.metallbConfigure).coalescingTarget == "name")
        #expect(OperationCatalog.entry(.clusterUpgrade).coalescingTarget == nil)
    }
}

@Suite("operation state machine")
struct StateMachineTests {
    static let legal: Set<[OperationState]> = [
        [.queued, .dispatching], [.queued, .cancelled], [.queued, .expired], [.queued, .blocked], [.queued, .superseded],
        [.dispatching, .succeeded], [.dispatching, .failed], [.dispatching, .queued],
        [.blocked, .queued], [.blocked, .cancelled], [.blocked, .expired],
        [.failed, .queued],
    ]

    static let allPairs: [[OperationState]] = OperationState.allCases.flatMap { a in OperationState.allCases.map { [a, $0] } }

    @Test("every transition is legal exactly when the lifecycle allows it", arguments: allPairs)
    func transition(_ pair: [OperationState]) {
        let (from, to) = (pair[0], pair[1])
        if Self.legal.contains(pair) {
            #expect(throws: Never.self) { try from.moving(to: to) }
        } else {
            #expect(throws: IllegalTransition(from: from, to: to)) { try from.moving(to: to) }
        }
    }

    @Test("terminal states")
    func terminal() {
        #expect(OperationState.allCases.filter(\.isTerminal) == [.succeeded, .cancelled, .expired, .superseded])
        #expect(IllegalTransition(from: .succeeded, to: .queued).description.contains("final"))
    }
}
