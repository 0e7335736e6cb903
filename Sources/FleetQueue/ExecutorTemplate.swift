public import FleetCore

/// How one kind of operation is run: an argv template whose placeholders each become
/// exactly one argument (never a shell line), and a timeout.
///
/// Placeholders: `{params.NAME}` (the operation's parameters), `{cluster.name}`,
/// `{cluster.resourceGroup}`, `{cluster.subscription}`, `{cluster.customLocation}`,
/// `{cluster.kubernetesVersion}` (the site's reported cluster metadata), `{site}` and
/// `{operation.id}`. A placeholder may be part of an argument (`--name={cluster.name}`).
public struct ExecutorTemplate: Sendable, Hashable, Codable {
    public var argv: [String]
    public var timeout: Duration
    /// Attempts an operation of this kind gets unless its submission says otherwise.
    public var maxAttempts: Int?

    public init(argv: [String], timeout: Duration = .seconds(900), maxAttempts: Int? = nil) {
        self.argv = argv
        self.timeout = timeout
        self.maxAttempts = maxAttempts
    }

    public static let clusterFields = ["name", "resourceGroup", "subscription", "customLocation", "kubernetesVersion"]

    /// Every placeholder in the template, in order of appearance.
    public var placeholders: [String] {
        argv.flatMap { Self.placeholders(in: $0) }
    }

    static func placeholders(in argument: String) -> [String] {
        var found: [String] = []
        var rest = argument[...]
        while let open = rest.firstIndex(of: "{"), let close = rest[open...].firstIndex(of: "}") {
            found.append(String(rest[rest.index(after: open)..<close]))
            rest = rest[rest.index(after: close)...]
        }
        return found
    }

    /// A placeholder that no operation could ever fill (an unknown name), if any.
    public var unknownPlaceholder: String? {
        placeholders.first { name in
            if name == "site" || name == "operation.id" { return false }
            if name.hasPrefix("params."), name.count > "params.".count { return false }
            if name.hasPrefix("cluster."), Self.clusterFields.contains(String(name.dropFirst("cluster.".count))) { return false }
            return true
        }
    }

    /// The parameters the template needs from an operation.
    public var requiredParams: [String] {
        placeholders.filter { $0.hasPrefix("params.") }.map { String($0.dropFirst("params.".count)) }
    }

    /// The argv for one operation at one site; throws naming the first placeholder that
    /// cannot be filled (for example cluster metadata the site has not reported yet).
    public func render(operationID: String, site: SiteID, params: [String: String], cluster: ClusterInfo?) throws(UnfilledPlaceholder)
        -> [String]
    {
        func value(_ name: String) -> String? {
            switch name {
            case "site": return site.rawValue
            case "operation.id": return operationID
            case "cluster.name": return cluster?.name
            case "cluster.resourceGroup": return cluster?.resourceGroup
            case "cluster.subscription": return cluster?.subscription
            case "cluster.customLocation": return cluster?.customLocation
            case "cluster.kubernetesVersion": return cluster?.kubernetesVersion
            default:
                if name.hasPrefix("params.") { return params[String(name.dropFirst("params.".count))] }
                return nil
            }
        }
        var rendered: [String] = []
        for argument in argv {
            var out = ""
            var rest = argument[...]
            while let open = rest.firstIndex(of: "{"), let close = rest[open...].firstIndex(of: "}") {
                out += rest[..<open]
                let name = String(rest[rest.index(after: open)..<close])
                // A value that cannot be a safe argument (cluster metadata a site reported, or a
                // parameter stored before the rule existed) fills nothing: the operation waits.
                guard let filled = value(name), ExecutorArgument.problem(filled) == nil else { throw UnfilledPlaceholder(name: name) }
                out += filled
                rest = rest[rest.index(after: close)...]
            }
            out += rest
            rendered.append(out)
        }
        return rendered
    }
}

/// A placeholder without a value.
public struct UnfilledPlaceholder: Error, Sendable, Hashable, CustomStringConvertible {
    public var name: String
    public init(name: String) { self.name = name }
    public var description: String { "nothing fills the placeholder {\(name)}" }
}
