import HostPort
public import LayeredSettings
import Subprocesses
public import FleetCore
public import MQTT

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// How the agent decides whether the site reaches Azure.
public enum AzureProbeConfiguration: Sendable, Hashable {
    /// TCP connect plus TLS handshake to every endpoint; reachable when all answer.
    case endpoints([Endpoint], timeout: Duration)
    /// Run a command; exit 0 means reachable.
    case command([String], timeout: Duration)

    public struct Endpoint: Sendable, Hashable, CustomStringConvertible {
        public var host: String
        public var port: Int
        public init(host: String, port: Int) {
            self.host = host
            self.port = port
        }
        public var description: String { "\(host):\(port)" }

        /// Parses `host:port` (`[v6]:port` for IPv6).
        public init(parsing text: String) throws(IdentifierError) {
            do {
                let address = try HostPort.parse(text, role: .connect)
                self.init(host: address.host, port: address.port)
            } catch {
                throw IdentifierError(error.description)
            }
        }
    }

    /// The endpoints Azure Arc-enabled Kubernetes needs, for a region.
    public static func arcEndpoints(region: String?) -> [Endpoint] {
        var endpoints = [
            Endpoint(host: "management.azure.com", port: 443),
            Endpoint(host: "login.microsoftonline.com", port: 443),
            Endpoint(host: "gbl.his.arc.azure.com", port: 443),
        ]
        if let region { endpoints.insert(Endpoint(host: "\(region).dp.kubernetesconfiguration.azure.com", port: 443), at: 2) }
        return endpoints
    }
}

/// One local check: a command run every `interval`, killed at `timeout`.
public struct CheckConfiguration: Sendable, Hashable, Decodable {
    /// What a check runs: its own command (Nagios exit codes), or a built-in probe.
    public enum Kind: String, Sendable, Hashable, Decodable {
        case command
        /// Asks the cluster (`kubectl` with the agent's `kubeconfig`) whether the Azure Arc agent
        /// deployments in the `azure-arc` namespace are ready.
        case arcAgents = "arc-agents"
    }

    public var name: String
    public var kind: Kind = .command
    public var command: [String]
    public var interval: Duration
    public var timeout: Duration
    /// A capability this check reports (true when it passes), e.g. `clusterAutoscaler`.
    public var capability: String?

    enum CodingKeys: String, CodingKey { case name, kind, command, interval, timeout, capability }

    public init(name: String, kind: Kind = .command, command: [String], interval: Duration, timeout: Duration, capability: String? = nil) {
        self.name = name
        self.kind = kind
        self.command = command
        self.interval = interval
        self.timeout = timeout
        self.capability = capability
    }

    /// The command of the built-in `arc-agents` probe.
    public static func arcAgentsCommand(kubeconfig: String?) -> [String] {
        ["kubectl"] + (kubeconfig.map { ["--kubeconfig", $0] } ?? []) + ["get", "deployments", "--namespace", "azure-arc", "--output", "json"]
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        name = try c.decode(String.self, forKey: .name)
        guard !name.isEmpty, name.count <= 63, name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") }) else {
            throw ConfigurationError(key: "name", origin: nil, "'\(name)' must be 1-63 letters, digits, '-' or '_'")
        }
        kind = try c.decodeIfPresent(Kind.self, forKey: .kind) ?? .command
        switch kind {
        case .command:
            command = try c.decode([String].self, forKey: .command)
            guard !command.isEmpty, !command[0].isEmpty else { throw ConfigurationError(key: "command", origin: nil, "must not be empty") }
        case .arcAgents:
            // Filled in with the agent's kubeconfig once the whole configuration is read.
            guard try c.decodeIfPresent([String].self, forKey: .command) == nil else {
                throw ConfigurationError(key: "command", origin: nil, "a check of kind arc-agents runs kubectl itself: give no command")
            }
            command = Self.arcAgentsCommand(kubeconfig: nil)
        }
        func duration(_ key: CodingKeys, _ fallback: Duration) throws -> Duration {
            guard let text = try c.decodeIfPresent(String.self, forKey: key) else { return fallback }
            do {
                let value = try DurationFormat.parse(text)
                guard value > .zero else { throw ConfigurationError(key: key.rawValue, origin: nil, "must be longer than zero") }
                return value
            } catch let error as DurationFormat.ParseError {
                throw ConfigurationError(key: key.rawValue, origin: nil, error.description)
            }
        }
        interval = try duration(.interval, .seconds(60))
        timeout = try duration(.timeout, .seconds(10))
        capability = try c.decodeIfPresent(String.self, forKey: .capability)
    }
}

/// Everything the agent needs, validated: the result of a config file, the
/// environment and the flags (see `Settings`).
public struct AgentConfiguration: Sendable {
    public var site: SiteID
    public var mqtt: MQTTConfiguration
    public var topics: FleetTopics
    public var heartbeatInterval: Duration
    public var probeInterval: Duration
    public var statusRefresh: Duration
    public var stateDirectory: String
    public var probe: AzureProbeConfiguration
    /// An extra CA (PEM) the endpoint probe trusts besides the system's, e.g. a TLS-inspecting proxy's.
    public var probeCAFile: String?
    public var checks: [CheckConfiguration]
    public var checkConcurrency: Int
    /// How many status changes the offline spool keeps (oldest dropped first).
    public var spoolCapacity: Int
    public var certificateFiles: [String]
    public var kubeconfig: String?
    public var cluster: ClusterInfo
    /// The site's labels (`SiteLabels`: Kubernetes' syntax), sent in every status.
    public var labels: [String: String] = [:]

    /// Builds and validates the configuration; every error names its key and source.
    public static func load(_ settings: inout Settings) throws(ConfigurationError) -> AgentConfiguration {
        guard let siteText = try settings.string("site") else {
            throw ConfigurationError(key: "site", origin: nil, "is required (--site, EDGEFLEET_SITE or 'site:' in the config file)")
        }
        let site: SiteID
        do {
            site = try SiteID(siteText)
        } catch {
            throw ConfigurationError(key: "site", origin: settings.raw("site")?.1, error.description)
        }

        let connection = try settings.brokerSettings()
        let root = try settings.topicRoot()

        let heartbeatInterval = try settings.duration("heartbeatInterval", default: .seconds(10))
        let probeInterval = try settings.duration("probeInterval", default: .seconds(60))
        let statusRefresh = try settings.duration("statusRefresh", default: .seconds(300))
        let stateDirectory = try settings.string("stateDir", default: "/var/lib/edgefleet-agent")
        let probeTimeout = try settings.duration("probeTimeout", default: .seconds(10))
        let probeCAFile = try settings.string("probeCaFile")
        if let probeCAFile, !FileManager.default.isReadableFile(atPath: probeCAFile) {
            throw ConfigurationError(key: "probeCaFile", origin: settings.raw("probeCaFile")?.1, "cannot read '\(probeCAFile)'")
        }

        let probe: AzureProbeConfiguration
        // A list in the file; on a flag or in the environment, words separated by
        // spaces (never a shell command line).
        var probeCommand: [String] = []
        if let (value, origin) = settings.raw("probeCommand") {
            switch value {
            case .list(let items): probeCommand = items
            case .text(let text): probeCommand = text.split(separator: " ").map(String.init)
            case .structured: throw ConfigurationError(key: "probeCommand", origin: origin, "expected a command as a list of words")
            }
        }
        let endpointTexts = try settings.list("probeEndpoints")
        let region = try settings.string("region")
        if !probeCommand.isEmpty {
            if !endpointTexts.isEmpty {
                throw ConfigurationError(key: "probeCommand", origin: settings.raw("probeCommand")?.1, "set either probeCommand or probeEndpoints, not both")
            }
            probe = .command(probeCommand, timeout: probeTimeout)
        } else if !endpointTexts.isEmpty {
            var endpoints: [AzureProbeConfiguration.Endpoint] = []
            for text in endpointTexts {
                do {
                    endpoints.append(try AzureProbeConfiguration.Endpoint(parsing: text))
                } catch {
                    throw ConfigurationError(key: "probeEndpoints", origin: settings.raw("probeEndpoints")?.1, error.description)
                }
            }
            probe = .endpoints(endpoints, timeout: probeTimeout)
        } else {
            probe = .endpoints(AzureProbeConfiguration.arcEndpoints(region: region), timeout: probeTimeout)
        }

        var checks = try settings.decode([CheckConfiguration].self, "checks") ?? []
        if let duplicate = Dictionary(grouping: checks, by: \.name).first(where: { $0.value.count > 1 })?.key {
            throw ConfigurationError(key: "checks", origin: settings.raw("checks")?.1, "two checks are named '\(duplicate)'")
        }
        let checkConcurrency = try settings.integer("checkConcurrency", default: 2, range: 1...16)
        let spoolCapacity = try settings.integer("spoolCapacity", default: 10_000, range: 1...1_000_000)
        let certificateFiles = try settings.list("certificate")
        let kubeconfig = try settings.string("kubeconfig")
        for index in checks.indices where checks[index].kind == .arcAgents {
            checks[index].command = CheckConfiguration.arcAgentsCommand(kubeconfig: kubeconfig)
        }
        let cluster = ClusterInfo(
            name: try settings.string("clusterName"), resourceGroup: try settings.string("resourceGroup"),
            subscription: try settings.string("subscription"), customLocation: try settings.string("customLocation"),
            kubernetesVersion: try settings.string("kubernetesVersion"))
        let labels = try Self.labels(&settings)
        try settings.rejectUnknownFileKeys()

        let topics = FleetTopics(root: root)
        var mqtt = MQTTConfiguration(
            broker: connection.broker, clientID: "edgefleet-agent-\(site.rawValue)", username: connection.username,
            password: connection.password, tls: connection.tls,
            keepAlive: .seconds(max(30, Int64(heartbeatInterval.secondsValue * 3))))
        mqtt.reconnect = ReconnectPolicy(initialDelay: .milliseconds(500), maximumDelay: .seconds(60))
        mqtt.fallbackBrokers = connection.fallbacks
        do {
            try mqtt.validate()
        } catch {
            throw ConfigurationError(key: "broker", origin: nil, error.description)
        }
        var configuration = AgentConfiguration(
            site: site, mqtt: mqtt, topics: topics, heartbeatInterval: heartbeatInterval, probeInterval: probeInterval,
            statusRefresh: statusRefresh, stateDirectory: stateDirectory, probe: probe, probeCAFile: probeCAFile, checks: checks,
            checkConcurrency: checkConcurrency, spoolCapacity: spoolCapacity, certificateFiles: certificateFiles, kubeconfig: kubeconfig, cluster: cluster)
        configuration.labels = labels
        return configuration
    }

    /// `labels`: a mapping in the file (`region: north`), or `region=north,tier=store` as a flag
    /// or an environment variable; keys and values checked as Kubernetes checks labels.
    static func labels(_ settings: inout Settings) throws(ConfigurationError) -> [String: String] {
        guard let (value, origin) = settings.raw("labels") else { return [:] }
        let labels: [String: String]
        switch value {
        case .structured:
            labels = try settings.decode([String: String].self, "labels") ?? [:]
        case .text(let text):
            do { labels = try SiteLabels.parse(text) } catch { throw ConfigurationError(key: "labels", origin: origin, error.description) }
        case .list(let items):
            do { labels = try SiteLabels.parse(items.joined(separator: ",")) } catch { throw ConfigurationError(key: "labels", origin: origin, error.description) }
        }
        if let problem = SiteLabels.problem(labels) { throw ConfigurationError(key: "labels", origin: origin, problem) }
        return labels
    }

    /// Every file key the agent understands, for documentation and `--help`.
    public static let fileKeys = [
        "site", "broker", "brokers", "username", "passwordFile", "caFile", "certFile", "keyFile", "topicRoot", "heartbeatInterval",
        "probeInterval", "statusRefresh", "stateDir", "probeEndpoints", "region", "probeCommand", "probeTimeout", "probeCaFile", "checks",
        "checkConcurrency", "spoolCapacity", "certificate", "kubeconfig", "clusterName", "resourceGroup", "subscription", "customLocation",
        "kubernetesVersion", "labels",
    ]
}

extension AgentConfiguration {
    /// The effective configuration in words (secrets left out), for `--check-config`.
    public var summary: String {
        var lines = [
            "site: \(site)",
            "broker: \(mqtt.broker)\(mqtt.username.map { " as \($0)" } ?? "")\(mqtt.password != nil ? " (password set)" : "")",
            "topicRoot: \(topics.root)",
            "heartbeatInterval: \(DurationFormat.format(heartbeatInterval))",
            "probeInterval: \(DurationFormat.format(probeInterval))",
            "statusRefresh: \(DurationFormat.format(statusRefresh))",
            "stateDir: \(stateDirectory)",
        ]
        switch probe {
        case .endpoints(let endpoints, let timeout):
            lines.append("probe: endpoints \(endpoints.map(\.description).joined(separator: ", ")) (timeout \(DurationFormat.format(timeout)))")
        case .command(let command, let timeout):
            lines.append("probe: command \(command.joined(separator: " ")) (timeout \(DurationFormat.format(timeout)))")
        }
        lines.append("checks: \(checks.isEmpty ? "none" : checks.map(\.name).joined(separator: ", ")) (at most \(checkConcurrency) at once)")
        lines.append("certificates: \(certificateFiles.isEmpty ? "none" : certificateFiles.joined(separator: ", "))\(kubeconfig.map { "; kubeconfig \($0)" } ?? "")")
        lines.append("cluster: \(cluster.name ?? "-") in \(cluster.resourceGroup ?? "-")")
        lines.append("labels: \(labels.isEmpty ? "none" : labels.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ","))")
        return lines.joined(separator: "\n")
    }
}
