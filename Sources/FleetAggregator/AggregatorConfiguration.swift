public import HostPort
public import LayeredSettings
import Subprocesses
public import FleetCore
public import FleetQueue
public import MQTT
import YAMLReader

/// Everything the aggregator needs, validated: a config file, the environment and flags
/// layered by `Settings`.
public struct AggregatorConfiguration: Sendable {
    public var mqtt: MQTTConfiguration
    public var topics: FleetTopics
    /// The database: an SQLite file (WAL; the embedded default), or a `postgres://` URL
    /// (shared by replicas; opened by the executable through `FleetPostgres`).
    public var databasePath: String
    /// The PostgreSQL password's file (`--db-password-file`); without it, `PGPASSWORD`.
    public var databasePasswordFile: String?
    /// Replicas on PostgreSQL: this replica's id (the rules of a site id: a-z, 0-9 and '-'; default
    /// from the host name and the process id) and the leader's lease (default 3 s: a killed
    /// leader is replaced within it).
    public var replicaID: String?
    /// A replica id from the host name and the process id (lowercased, other characters as '-').
    public static func defaultReplicaID(host: String, pid: Int32) -> String {
        let cleaned = String(host.lowercased().map { ($0.isASCII && ($0.isLetter || $0.isNumber)) ? $0 : "-" }.prefix(48))
        let id = (cleaned.isEmpty ? "replica" : cleaned) + "-\(pid)"
        return (try? SiteID(id)) != nil ? id : "replica-\(pid)"
    }

    /// The MQTT client id when none is configured (replicas each make their own from it).
    public static let defaultClientID = "edgefleet-aggregator"
    public var leaderLease: Duration = .seconds(3)
    /// Where the HTTP API, the dashboard and `/metrics` listen, `HOST:PORT` (port 0: any free one).
    public var httpListen: HostPort
    /// The principals file (`--principals`; `--token-file`, a flat token list, is the earlier
    /// name and format): who may use the API; without it every change is refused.
    public var tokenFile: String?
    /// Which key named the principals file (for errors about it).
    public var principalsKey = "principals"
    /// Reads (`GET`, the dashboard, `/metrics`) without a token.
    public var publicReads: Bool
    public var thresholds: Thresholds
    /// A site view is republished at least this often while its countdown runs.
    public var viewRefresh: Duration
    /// The fleet summary is published at most this often.
    public var summaryInterval: Duration
    /// Changed site records are written to SQLite this often, in one transaction.
    public var flushInterval: Duration
    /// Payloads larger than this are rejected unread.
    public var maxPayloadBytes: Int
    /// How each queueable kind runs (argv templates, the `az` CLI in the example).
    public var executors: [OperationKind: ExecutorTemplate]
    public var dispatch: DispatchSettings
    /// Attempts an operation gets unless its submission says otherwise.
    public var maxAttempts: Int
    /// How often the dispatcher looks at the queue.
    public var dispatchInterval: Duration
    /// The most sites the fleet holds; a presence of a new site beyond it is refused and counted.
    public var maxSites: Int = 250_000
    /// How long site records may fail to be written before `/healthz` answers 503.
    public var storeGrace: Duration = .seconds(30)
    /// How long a dashboard sign-in lasts (idle at most an hour of it).
    public var dashboardSession: Duration = .seconds(12 * 3600)
    /// A client must send a whole request head within this, or its connection is closed.
    public var httpHeaderTimeout: Duration = .seconds(10)
    /// Open HTTP connections at most (nil: below the descriptor limit, at most 10,000).
    public var httpMaxConnections: Int?
    /// Unknown tokens one address may present in a minute before it waits (429) for the rest of it.
    public var authFailuresPerMinute = 10
    /// Stored events (and the history worked out from them) older than this are removed.
    public var eventRetention: Duration = .seconds(400 * 86_400)
    /// HTTPS: the certificate chain and the key (PEM, both or neither); re-read when they change.
    public var tlsCertificate: String?
    public var tlsKey: String?

    public init(
        mqtt: MQTTConfiguration, topics: FleetTopics = FleetTopics(), databasePath: String = "./edgefleet.sqlite",
        httpListen: HostPort = HostPort(host: "127.0.0.1", port: 8080), thresholds: Thresholds = Thresholds(), viewRefresh: Duration = .seconds(300),
        summaryInterval: Duration = .seconds(1), flushInterval: Duration = .seconds(1), maxPayloadBytes: Int = 16_384,
        executors: [OperationKind: ExecutorTemplate] = [:], dispatch: DispatchSettings = DispatchSettings(), maxAttempts: Int = 5,
        dispatchInterval: Duration = .milliseconds(500), tokenFile: String? = nil, publicReads: Bool = false
    ) {
        self.tokenFile = tokenFile
        self.publicReads = publicReads
        self.executors = executors
        self.dispatch = dispatch
        self.maxAttempts = maxAttempts
        self.dispatchInterval = dispatchInterval
        self.mqtt = mqtt
        self.topics = topics
        self.databasePath = databasePath
        self.httpListen = httpListen
        self.thresholds = thresholds
        self.viewRefresh = viewRefresh
        self.summaryInterval = summaryInterval
        self.flushInterval = flushInterval
        self.maxPayloadBytes = maxPayloadBytes
    }

    /// Every key the aggregator reads, for `--check-config` and the flags.
    public static let keys = [
        "broker", "brokers", "username", "passwordFile", "caFile", "certFile", "keyFile", "clientId", "topicRoot", "db",
        "http", "connectedWithin", "budget", "warnBefore", "criticalBefore", "stableFor", "staleAfter", "offlineAfter",
        "viewRefresh", "summaryInterval", "flushInterval", "maxPayloadBytes", "executors", "maxConcurrentDispatches", "maxAttempts",
        "retryBackoff", "retryBackoffMax", "dispatchInterval", "executorOutputBytes", "tokenFile", "principals", "publicReads", "dbPasswordFile", "replicaId", "leaderLease",
        "maxSites", "storeGrace", "dashboardSession", "httpHeaderTimeout", "httpMaxConnections", "authFailuresPerMinute", "tlsCert", "tlsKey", "eventRetention",
    ]

    /// One executor as written in the file: `argv` and an optional `timeout`.
    struct ExecutorEntry: Decodable {
        var argv: [String]
        var timeout: String?
        var maxAttempts: Int?
    }

    /// `executors`: a mapping in the configuration file, or the path of a YAML file holding it
    /// (`--executors FILE`, docs/contract.md).
    static func executorEntries(_ settings: inout Settings) throws(ConfigurationError) -> (entries: [String: ExecutorEntry], origin: SettingOrigin?) {
        guard let (value, origin) = settings.raw("executors") else { return ([:], nil) }
        if case .text(let path) = value {
            guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
                throw ConfigurationError(key: "executors", origin: origin, "cannot read '\(path)'")
            }
            let node: YAMLNode?
            do {
                node = try YAMLNode.parse(text)
            } catch {
                throw ConfigurationError(key: "executors", origin: origin, "\(path) is not valid YAML: \(error)")
            }
            guard let node else { return ([:], origin) }
            do {
                return (try YAMLDecoder().decode([String: ExecutorEntry].self, from: node), origin)
            } catch {
                throw ConfigurationError(key: "executors", origin: origin, "\(path): \(error)")
            }
        }
        return (try settings.decode([String: ExecutorEntry].self, "executors") ?? [:], origin)
    }

    public static func load(_ settings: inout Settings) throws(ConfigurationError) -> AggregatorConfiguration {
        let connection = try settings.brokerSettings()
        let root = try settings.topicRoot()
        let clientID = try settings.string("clientId", default: Self.defaultClientID)
        let database = try settings.string("db", default: "./edgefleet.sqlite")
        if database.isEmpty { throw ConfigurationError(key: "db", origin: settings.raw("db")?.1, "must not be empty") }
        let httpListen: HostPort
        do {
            httpListen = try HostPort.parse(try settings.string("http", default: "127.0.0.1:8080"), role: .listen)
        } catch {
            throw ConfigurationError(key: "http", origin: settings.raw("http")?.1, "\(error); expected HOST:PORT, like 127.0.0.1:8080 or [::1]:8080")
        }
        // Its contents are the HTTP module's to read (edgefleet-aggregator checks them with the configuration).
        let principals = try settings.string("principals")
        let legacyTokens = try settings.string("tokenFile")
        if principals != nil && legacyTokens != nil {
            throw ConfigurationError(
                key: "tokenFile", origin: settings.raw("tokenFile")?.1, "give --principals or --token-file (its earlier name), not both")
        }
        let tokenFile = principals ?? legacyTokens
        let databasePasswordFile = try settings.string("dbPasswordFile")
        let replicaID = try settings.string("replicaId")
        if let replicaID, (try? SiteID(replicaID)) == nil {
            throw ConfigurationError(key: "replicaId", origin: settings.raw("replicaId")?.1, "'\(replicaID)' is not a replica id (a-z, 0-9 and '-', at most 63)")
        }
        let leaderLease = try settings.duration("leaderLease", default: .seconds(3))
        if leaderLease < .seconds(1) {
            throw ConfigurationError(key: "leaderLease", origin: settings.raw("leaderLease")?.1, "must be at least 1s")
        }
        let publicReads = try settings.boolean("publicReads", default: false)

        var thresholds = Thresholds()
        thresholds.connectedWithin = try settings.duration("connectedWithin", default: thresholds.connectedWithin)
        thresholds.budget = try settings.duration("budget", default: thresholds.budget)
        thresholds.warnBefore = try settings.duration("warnBefore", default: thresholds.warnBefore, allowZero: true)
        thresholds.criticalBefore = try settings.duration("criticalBefore", default: thresholds.criticalBefore, allowZero: true)
        thresholds.stableFor = try settings.duration("stableFor", default: thresholds.stableFor, allowZero: true)
        thresholds.staleAfterIntervals = try settings.integer("staleAfter", default: thresholds.staleAfterIntervals, range: 1...1000)
        thresholds.offlineAfterIntervals = try settings.integer(
            "offlineAfter", default: thresholds.offlineAfterIntervals, range: 1...10_000)
        if let problem = thresholds.problem {
            throw ConfigurationError(key: "thresholds", origin: nil, problem)
        }
        let viewRefresh = try settings.duration("viewRefresh", default: .seconds(300))
        let summaryInterval = try settings.duration("summaryInterval", default: .seconds(1))
        let flushInterval = try settings.duration("flushInterval", default: .seconds(1))
        let maxPayloadBytes = try settings.integer("maxPayloadBytes", default: 16_384, range: 256...(1 << 20))

        var executors: [OperationKind: ExecutorTemplate] = [:]
        let (entries, origin) = try executorEntries(&settings)
        for (name, entry) in entries {
            guard let kind = OperationKind(rawValue: name) else {
                throw ConfigurationError(key: "executors.\(name)", origin: origin, "unknown operation kind")
            }
            guard OperationCatalog.entry(kind).queueability == .queueable else {
                throw ConfigurationError(key: "executors.\(name)", origin: origin, "\(name) is never queued, so it has no executor")
            }
            guard !entry.argv.isEmpty, !entry.argv[0].isEmpty else {
                throw ConfigurationError(key: "executors.\(name).argv", origin: origin, "must not be empty")
            }
            var timeout = Duration.seconds(900)
            if let text = entry.timeout {
                do {
                    timeout = try DurationFormat.parse(text)
                } catch {
                    throw ConfigurationError(key: "executors.\(name).timeout", origin: origin, error.description)
                }
                guard timeout > .zero else { throw ConfigurationError(key: "executors.\(name).timeout", origin: origin, "must be longer than zero") }
            }
            if let attempts = entry.maxAttempts, !(1...100).contains(attempts) {
                throw ConfigurationError(key: "executors.\(name).maxAttempts", origin: origin, "must be between 1 and 100")
            }
            let template = ExecutorTemplate(argv: entry.argv, timeout: timeout, maxAttempts: entry.maxAttempts)
            if let unknown = template.unknownPlaceholder {
                throw ConfigurationError(key: "executors.\(name).argv", origin: origin, "no operation can fill the placeholder {\(unknown)}")
            }
            executors[kind] = template
        }
        let dispatch = DispatchSettings(
            limit: try settings.integer("maxConcurrentDispatches", default: 4, range: 1...1000),
            backoff: try settings.duration("retryBackoff", default: .seconds(30)),
            maximumBackoff: try settings.duration("retryBackoffMax", default: .seconds(1800)),
            outputBytes: try settings.integer("executorOutputBytes", default: 4096, range: 0...(1 << 20)))
        let maxAttempts = try settings.integer("maxAttempts", default: 5, range: 1...100)
        let dispatchInterval = try settings.duration("dispatchInterval", default: .milliseconds(500))
        if dispatch.maximumBackoff < dispatch.backoff {
            throw ConfigurationError(key: "retryBackoffMax", origin: settings.raw("retryBackoffMax")?.1, "must not be shorter than retryBackoff")
        }
        let maxSites = try settings.integer("maxSites", default: 250_000, range: 1...10_000_000)
        let storeGrace = try settings.duration("storeGrace", default: .seconds(30))
        let dashboardSession = try settings.duration("dashboardSession", default: .seconds(12 * 3600))
        let httpHeaderTimeout = try settings.duration("httpHeaderTimeout", default: .seconds(10))
        let httpMaxConnections = try settings.integer("httpMaxConnections", default: 0, range: 0...1_000_000)
        let authFailuresPerMinute = try settings.integer("authFailuresPerMinute", default: 10, range: 1...1_000_000)
        let eventRetention = try settings.duration("eventRetention", default: .seconds(400 * 86_400))
        if eventRetention < .seconds(3_600) {
            throw ConfigurationError(key: "eventRetention", origin: nil, "must be at least 1h")
        }
        let tlsCertificate = try settings.string("tlsCert")
        let tlsKey = try settings.string("tlsKey")
        if (tlsCertificate == nil) != (tlsKey == nil) {
            let missing = tlsCertificate == nil ? "tlsCert" : "tlsKey"
            throw ConfigurationError(key: missing, origin: nil, "HTTPS needs both --tls-cert and --tls-key")
        }
        try settings.rejectUnknownFileKeys()

        var mqtt = MQTTConfiguration(
            broker: connection.broker, clientID: clientID, username: connection.username, password: connection.password,
            tls: connection.tls, keepAlive: .seconds(30))
        mqtt.reconnect = ReconnectPolicy(initialDelay: .milliseconds(250), maximumDelay: .seconds(10))
        mqtt.fallbackBrokers = connection.fallbacks
        do {
            try mqtt.validate()
        } catch {
            throw ConfigurationError(key: "broker", origin: nil, error.description)
        }
        var configuration = AggregatorConfiguration(
            mqtt: mqtt, topics: FleetTopics(root: root), databasePath: database, httpListen: httpListen, thresholds: thresholds,
            viewRefresh: viewRefresh, summaryInterval: summaryInterval, flushInterval: flushInterval,
            maxPayloadBytes: maxPayloadBytes, executors: executors, dispatch: dispatch, maxAttempts: maxAttempts,
            dispatchInterval: dispatchInterval, tokenFile: tokenFile, publicReads: publicReads)
        configuration.maxSites = maxSites
        configuration.principalsKey = principals != nil ? "principals" : "tokenFile"
        configuration.databasePasswordFile = databasePasswordFile
        configuration.replicaID = replicaID
        configuration.leaderLease = leaderLease
        configuration.storeGrace = storeGrace
        configuration.dashboardSession = dashboardSession
        configuration.httpHeaderTimeout = httpHeaderTimeout
        configuration.httpMaxConnections = httpMaxConnections == 0 ? nil : httpMaxConnections
        configuration.authFailuresPerMinute = authFailuresPerMinute
        configuration.tlsCertificate = tlsCertificate
        configuration.tlsKey = tlsKey
        configuration.eventRetention = eventRetention
        return configuration
    }

    /// A readable summary for `--check-config` (no secrets).
    public var summary: String {
        let t = thresholds
        return [
            "broker: \(mqtt.broker)\(mqtt.username.map { " as \($0)" } ?? "")\(mqtt.password != nil ? " (password set)" : "")",
            "client id: \(mqtt.clientID)",
            "topic root: \(topics.root)",
            "database: \(databasePath)" + (databasePasswordFile.map { " (password from \($0))" } ?? ""),
            "http: \(tlsCertificate == nil ? "" : "https ")\(httpListen), "
                + (tokenFile.map { "principals from \($0)" } ?? "no principals file (changes refused)")
                + (publicReads ? ", reads open" : ", reads need a token"),
            "connected within \(DurationFormat.format(t.connectedWithin)), budget \(DurationFormat.format(t.budget)), "
                + "warn \(DurationFormat.format(t.warnBefore)) and critical \(DurationFormat.format(t.criticalBefore)) before the deadline, "
                + "stable after \(DurationFormat.format(t.stableFor))",
            "liveness: stale after \(t.staleAfterIntervals), offline after \(t.offlineAfterIntervals) heartbeat intervals",
            "view refresh \(DurationFormat.format(viewRefresh)), summary at most every \(DurationFormat.format(summaryInterval)), "
                + "store flush every \(DurationFormat.format(flushInterval)), payloads up to \(maxPayloadBytes) bytes",
            "dispatch: \(dispatch.limit) at once, \(maxAttempts) attempts, backoff \(DurationFormat.format(dispatch.backoff)) "
                + "up to \(DurationFormat.format(dispatch.maximumBackoff))",
        ].joined(separator: "\n")
            + executors.keys.sorted().map { "\nexecutor \($0.rawValue): \(executors[$0]!.argv.joined(separator: " "))" }.joined()
    }
}
