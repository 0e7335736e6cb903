/// Every kind of operation an operator may ask for at a site (the seed's impact table).
public enum OperationKind: String, Codable, Sendable, Hashable, CaseIterable, Comparable {
    case clusterCreate = "cluster.create"
    case clusterUpdate = "cluster.update"
    case clusterUpgrade = "cluster.upgrade"
    case clusterDelete = "cluster.delete"
    case nodepoolAdd = "nodepool.add"
    case nodepoolScale = "nodepool.scale"
    case accessEntra = "access.entra"
    case accessProxy = "access.proxy"
    case statusPortal = "status.portal"
    case metallbConfigure = "metallb.configure"
    case monitoringConfigure = "monitoring.configure"
    case gitopsConfigure = "gitops.configure"
    case extensionInstall = "extension.install"
    case extensionUpdate = "extension.update"
    case extensionDelete = "extension.delete"
    case ssh = "ssh"
    case logsCollect = "logs.collect"
    case kubeconfigAdmin = "kubeconfig.admin"
    case statusLocal = "status.local"

    public static func < (lhs: OperationKind, rhs: OperationKind) -> Bool { lhs.rawValue < rhs.rawValue }
}

/// What happens to an operation of a kind while the site is not connected to Azure.
public enum OfflineSupport: String, Codable, Sendable, Hashable {
    case notSupported = "not-supported"
    case partial
    case supported
}

/// Whether the deferred-operation queue takes a kind.
public enum Queueability: String, Codable, Sendable, Hashable {
    /// Held in the queue and run when the site is connected again.
    case queueable
    /// Needs Azure but cannot wait in a queue (interactive, or only meaningful now).
    case notQueueable = "not-queueable"
    /// Local: works without Azure, so it is never queued.
    case neverQueued = "never-queued"
}

/// What an operator can do instead while Azure is out of reach.
public struct Workaround: Codable, Sendable, Hashable {
    public var text: String
    /// The capability the site must report for this workaround to apply
    /// (`clusterAutoscaler` for node pools); `nil` when it always applies.
    public var requiresCapability: String?

    public init(_ text: String, requiresCapability: String? = nil) {
        self.text = text
        self.requiresCapability = requiresCapability
    }
}

/// One row of the catalog.
public struct CatalogEntry: Codable, Sendable, Hashable {
    public var kind: OperationKind
    public var azureRequired: Bool
    public var whileNotConnected: OfflineSupport
    /// What "partial" means for this kind, in words.
    public var offlineNote: String?
    public var queueability: Queueability
    public var workaround: Workaround?
    /// Kinds that set a desired value: a newer queued operation for the same
    /// site, kind and target supersedes the older one.
    public var coalesces: Bool
    /// The parameter naming the target for coalescing (`nil`: the whole cluster).
    public var coalescingTarget: String?
}

/// Whether one kind works at one site now, and what to do if not.
public struct KindAvailability: Codable, Sendable, Hashable {
    public var kind: OperationKind
    public var available: Bool
    public var reason: String
    public var workaround: String?
    public var queueable: Bool
}

/// The operation catalog: the seed's impact table as data, and "what works here now".
public enum OperationCatalog {
    public static let entries: [CatalogEntry] = {
        func azure(
            _ kind: OperationKind, _ offline: OfflineSupport, note: String? = nil, _ queue: Queueability,
            workaround: Workaround? = nil, coalesces: Bool = false, target: String? = nil
        ) -> CatalogEntry {
            CatalogEntry(
                kind: kind, azureRequired: true, whileNotConnected: offline, offlineNote: note, queueability: queue,
                workaround: workaround, coalesces: coalesces, coalescingTarget: target)
        }
        func local(_ kind: OperationKind) -> CatalogEntry {
            CatalogEntry(
                kind: kind, azureRequired: false, whileNotConnected: .supported, offlineNote: nil, queueability: .neverQueued,
                workaround: nil, coalesces: false, coalescingTarget: nil)
        }
        let autoscaler = Workaround("the cluster autoscaler keeps scaling node pools while Azure is unreachable", requiresCapability: "clusterAutoscaler")
        let kubeconfig = Workaround("retrieve the admin kubeconfig locally (kubeconfig.admin) and use it")
        return [
            azure(.clusterCreate, .notSupported, .queueable),
            azure(.clusterUpdate, .notSupported, .queueable),
            azure(.clusterUpgrade, .notSupported, .queueable, coalesces: true),
            azure(.clusterDelete, .notSupported, .queueable),
            azure(.nodepoolAdd, .partial, note: "the cluster autoscaler keeps scaling if enabled", .queueable, workaround: autoscaler),
            azure(
                .nodepoolScale, .partial, note: "the cluster autoscaler keeps scaling if enabled", .queueable, workaround: autoscaler,
                coalesces: true, target: "nodepool"),
            azure(.accessEntra, .partial, note: "Entra ID sign-in needs Azure", .notQueueable, workaround: kubeconfig),
            azure(.accessProxy, .partial, note: "az connectedk8s proxy needs Azure", .notQueueable, workaround: kubeconfig),
            azure(.statusPortal, .partial, note: "the portal shows the last status it received", .notQueueable,
                  workaround: Workaround("use local kubectl get (status.local)")),
            azure(
                .metallbConfigure, .partial, note: "the load balancer keeps working; its configuration is frozen", .queueable,
                coalesces: true, target: "name"),
            azure(.monitoringConfigure, .partial, note: "Container Insights stops receiving data", .queueable,
                  workaround: Workaround("use on-premises monitoring")),
            azure(.gitopsConfigure, .notSupported, .queueable),
            azure(.extensionInstall, .notSupported, .queueable),
            azure(.extensionUpdate, .notSupported, .queueable),
            azure(.extensionDelete, .notSupported, .queueable),
            local(.ssh),
            local(.logsCollect),
            local(.kubeconfigAdmin),
            local(.statusLocal),
        ]
    }()

    private static let byKind: [OperationKind: CatalogEntry] = Dictionary(uniqueKeysWithValues: entries.map { ($0.kind, $0) })

    public static func entry(_ kind: OperationKind) -> CatalogEntry { byKind[kind]! }

    /// The workaround text that applies at a site with these capabilities, if any.
    public static func workaround(for kind: OperationKind, capabilities: [String: Bool]) -> String? {
        guard let workaround = entry(kind).workaround else { return nil }
        if let capability = workaround.requiresCapability, capabilities[capability] != true { return nil }
        return workaround.text
    }

    /// "What works here now": every kind, available or not, why, and the workaround.
    public static func availability(mode: ConnectivityMode, capabilities: [String: Bool]) -> [KindAvailability] {
        entries.map { entry in
            let queueable = entry.queueability == .queueable
            guard entry.azureRequired else {
                return KindAvailability(
                    kind: entry.kind, available: true, reason: "local operation; works without Azure", workaround: nil,
                    queueable: false)
            }
            if mode == .connected {
                return KindAvailability(kind: entry.kind, available: true, reason: "Azure is reachable", workaround: nil, queueable: queueable)
            }
            var reason: String
            switch mode {
            case .connected: reason = ""
            case .semiConnected: reason = "needs Azure; the site is semi-connected"
            case .disconnected: reason = "needs Azure; the site passed its deadline and may need redeploying"
            case .unknown: reason = "needs Azure; the site has never reported Azure contact"
            }
            if let note = entry.offlineNote { reason += " (\(note))" }
            if queueable { reason += "; it can be queued to run when the link is back" }
            return KindAvailability(
                kind: entry.kind, available: false, reason: reason,
                workaround: workaround(for: entry.kind, capabilities: capabilities), queueable: queueable)
        }
    }
}

/// What may become one argument of an executor (docs/contract.md, "Executors"): a value
/// from an operation's params or a site's cluster metadata. Each placeholder becomes exactly
/// one argument, never through a shell, but the program still parses it: a value beginning
/// with `-` would be read as an option (argument injection), a NUL would cut it short in
/// the C argument vector, and other control characters reach logs and terminals.
public enum ExecutorArgument {
    /// The longest value, in UTF-8 bytes.
    public static let maximumBytes = 1024

    /// Why `value` cannot be an argument, or nil when it can.
    public static func problem(_ value: String) -> String? {
        if value.isEmpty { return "is empty" }
        if value.utf8.count > maximumBytes { return "is \(value.utf8.count) bytes long; at most \(maximumBytes)" }
        if value.hasPrefix("-") { return "begins with '-', which the executor would read as an option" }
        if let bad = value.unicodeScalars.first(where: { $0.properties.generalCategory == .control || $0 == "\u{2028}" || $0 == "\u{2029}" }) {
            return "contains the control character U+\(String(bad.value, radix: 16, uppercase: true).leftPadded(to: 4))"
        }
        return nil
    }

    /// Why `name` cannot be a parameter name, or nil when it can: 1 to 64 of `A-Z a-z 0-9 _ . -`.
    public static func nameProblem(_ name: String) -> String? {
        guard (1...64).contains(name.utf8.count) else { return "must be 1 to 64 characters" }
        let allowed = name.utf8.allSatisfy { b in
            (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || b == 0x5F || b == 0x2E || b == 0x2D
        }
        return allowed ? nil : "may hold only letters, digits, '_', '.' and '-'"
    }
}

extension String {
    fileprivate func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}
