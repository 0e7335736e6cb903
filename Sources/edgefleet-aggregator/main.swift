import ArgumentParser
import CommandSupport
public import FleetAggregator
import FleetCore
public import FleetHTTP
import FleetPostgres
import LayeredSettings
import Logging
import Prometheus
import Principals
import ServiceLifecycle
import Subprocesses
import FleetQueue
import Foundation

/// The fleet aggregator: ingests every site's presence, heartbeats and status, computes
/// each site's connectivity mode and deadline, and publishes retained site views, events
/// and the fleet summary, with the site records kept in SQLite.
struct AggregatorCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "edgefleet-aggregator",
        abstract: "Computes every site's connectivity mode and deadline and publishes the fleet's status.",
        discussion: """
            Runs once per on-premises core next to the broker. Every setting of the config file is also a flag \
            (connectedWithin: --connected-within) and an environment variable (EDGEFLEET_CONNECTED_WITHIN); flags \
            win over the environment, which wins over the file (executors: a mapping in the file, or --executors FILE). Durations are \
            written 90s, 15m, 36h, 30d: shorten them to play 30 days in minutes. See deploy/aggregator.example.yaml; --check-config validates a \
            configuration and prints it.
            """,
        version: EdgeFleetVersion.current)

    @OptionGroup var service: ServiceOptions

    @Option(help: "MQTT client id (default edgefleet-aggregator).") var clientId: String?
    @Option(help: "SQLite database file, or postgres://USER@HOST:PORT/DB[?sslmode=disable|require|verify-full&sslrootcert=FILE] (default ./edgefleet.sqlite).")
    var db: String?
    @Option(help: "File holding the PostgreSQL password (else PGPASSWORD); never in the URL.") var dbPasswordFile: String?
    @Option(help: "Replicas on PostgreSQL: this replica's id (default HOSTNAME-PID).") var replicaId: String?
    @Option(help: "Replicas on PostgreSQL: the leader's lease; a killed leader is replaced within it (default 3s).") var leaderLease: String?
    @Option(help: "HTTP listen address, HOST:PORT (default 127.0.0.1:8080).") var http: String?
    @Option(help: "YAML file mapping each queueable kind to its executor (or 'executors:' in the config file).") var executors: String?
    @Option(help: "A contact this recent means connected (default 15m).") var connectedWithin: String?
    @Option(help: "How long semi-connected operation is supported (default 30d).") var budget: String?
    @Option(help: "Warning alert this long before the deadline (default 7d).") var warnBefore: String?
    @Option(help: "Critical alert this long before the deadline (default 2d).") var criticalBefore: String?
    @Option(help: "Connected this long before queued operations run (default 2m).") var stableFor: String?
    @Option(help: "Stale after this many silent heartbeat intervals (default 3).") var staleAfter: String?
    @Option(help: "Offline after this many silent heartbeat intervals (default 10).") var offlineAfter: String?
    @Option(help: "Republish a site's view at least this often while its countdown runs (default 5m).") var viewRefresh: String?
    @Option(help: "Publish the fleet summary at most this often (default 1s).") var summaryInterval: String?
    @Option(help: "Write changed site records this often (default 1s).") var flushInterval: String?
    @Option(help: "Reject payloads larger than this many bytes (default 16384).") var maxPayloadBytes: String?
    @Option(help: "Operations running at once across the fleet (default 4).") var maxConcurrentDispatches: String?
    @Option(help: "Attempts an operation gets by default (default 5).") var maxAttempts: String?
    @Option(help: "First retry delay; doubles per attempt (default 30s).") var retryBackoff: String?
    @Option(help: "Longest retry delay (default 30m).") var retryBackoffMax: String?
    @Option(help: "How often the dispatcher looks at the queue (default 500ms).") var dispatchInterval: String?
    @Option(help: "Bytes of an executor's output kept in the history (default 4096).") var executorOutputBytes: String?
    @Option(help: "The most sites the fleet holds; a new site beyond it is refused and counted (default 250000).") var maxSites: String?
    @Option(help: "How long site records may fail to be written before /healthz answers 503 (default 30s).") var storeGrace: String?
    @Option(help: "How long a dashboard sign-in lasts; an hour without use ends it sooner (default 12h).") var dashboardSession: String?
    @Option(help: "A client must send a whole request head within this (default 10s).") var httpHeaderTimeout: String?
    @Option(help: "Open HTTP connections at most; 0: below the descriptor limit, at most 10000 (default 0).") var httpMaxConnections: String?
    @Option(help: "Unknown tokens one address may present in a minute before it must wait (429) (default 10).") var authFailuresPerMinute: String?
    @Option(help: "The HTTPS certificate chain (PEM); with --tls-key the API, dashboard and /metrics speak HTTPS only. Re-read when it changes.")
    var tlsCert: String?
    @Option(help: "The HTTPS private key (PEM), for --tls-cert.") var tlsKey: String?
    @Option(help: "Stored events, and the history worked out from them, are kept this long (default 400d).") var eventRetention: String?
    @Option(help: "The principals file: who may use the API, by name and role (edgefleet token add writes it); without it every change is refused.")
    var principals: String?
    @Option(help: "The earlier name of --principals (a flat token list is still read: each token an admin).") var tokenFile: String?
    @Option(help: "Reads (GET, the dashboard, /metrics) without a token: true or false (default false).") var publicReads: String?

    var flagSettings: [String: Settings.Value] {
        let scalars: [(String, String?)] = [
            ("clientId", clientId), ("db", db), ("http", http), ("executors", executors), ("connectedWithin", connectedWithin), ("budget", budget),
            ("warnBefore", warnBefore), ("criticalBefore", criticalBefore), ("stableFor", stableFor),
            ("staleAfter", staleAfter), ("offlineAfter", offlineAfter), ("viewRefresh", viewRefresh),
            ("summaryInterval", summaryInterval), ("flushInterval", flushInterval), ("maxPayloadBytes", maxPayloadBytes),
            ("maxConcurrentDispatches", maxConcurrentDispatches), ("maxAttempts", maxAttempts), ("retryBackoff", retryBackoff),
            ("retryBackoffMax", retryBackoffMax), ("dispatchInterval", dispatchInterval), ("executorOutputBytes", executorOutputBytes),
            ("maxSites", maxSites), ("storeGrace", storeGrace), ("dashboardSession", dashboardSession),
            ("httpHeaderTimeout", httpHeaderTimeout), ("httpMaxConnections", httpMaxConnections), ("authFailuresPerMinute", authFailuresPerMinute), ("tlsCert", tlsCert), ("tlsKey", tlsKey), ("eventRetention", eventRetention),
            ("tokenFile", tokenFile), ("principals", principals), ("publicReads", publicReads), ("dbPasswordFile", dbPasswordFile), ("replicaId", replicaId), ("leaderLease", leaderLease),
        ]
        var flags = service.flagSettings
        for case let (key, value?) in scalars { flags[key] = .text(value) }
        return flags
    }

    func run() async throws {
        let configuration = try loadConfiguration(file: service.config, flags: flagSettings) { settings throws(ConfigurationError) in
            let configuration = try AggregatorConfiguration.load(&settings)
            if let file = configuration.tokenFile {
                do {
                    _ = try PrincipalsFile.read(path: file)
                } catch {
                    let key = configuration.principalsKey
                    throw ConfigurationError(key: key, origin: settings.raw(key)?.1, "\(error)")
                }
            }
            if let certificate = configuration.tlsCertificate, let key = configuration.tlsKey {
                do {
                    _ = try TLSFiles.load(certificate: certificate, key: key)
                } catch {
                    throw ConfigurationError(key: "tlsCert", origin: settings.raw("tlsCert")?.1, "\(error)")
                }
            }
            if PostgresLocation.isURL(configuration.databasePath) {
                do {
                    _ = try PostgresLocation(url: configuration.databasePath)
                } catch {
                    throw ConfigurationError(key: "db", origin: settings.raw("db")?.1, "\(error)")
                }
                do {
                    _ = try PostgresStores.password(file: configuration.databasePasswordFile, environment: processEnvironment())
                } catch {
                    throw ConfigurationError(key: "dbPasswordFile", origin: settings.raw("dbPasswordFile")?.1, "\(error)")
                }
            } else if configuration.databasePasswordFile != nil {
                throw ConfigurationError(key: "dbPasswordFile", origin: settings.raw("dbPasswordFile")?.1, "only a postgres:// database takes a password")
            }
            return configuration
        }
        if service.checkConfig {
            print(configuration.summary)
            return
        }
        let logger = try standardErrorLogger(label: "edgefleet.aggregator", level: service.logLevel)
        // Every metric goes to one Prometheus registry, served at /metrics.
        let registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.durationHistogramBuckets["edgefleet_dispatch_latency_seconds"] = [
            .seconds(1), .seconds(5), .seconds(30), .seconds(60), .seconds(300), .seconds(900), .seconds(3600), .seconds(6 * 3600),
            .seconds(86_400), .seconds(7 * 86_400),
        ]
        let service: AggregatorService
        let leadership: Leadership
        do {
            var configuration = configuration
            if PostgresLocation.isURL(configuration.databasePath) {
                // Replicas share the database: each competes for the lead, and its dispatch writes
                // carry its epoch (connected, authenticated and migrated here: a wrong address or
                // password ends the start with the reason).
                let replicaID = configuration.replicaID ?? AggregatorConfiguration.defaultReplicaID(host: ProcessTable.hostName(), pid: getpid())
                // Executors under their own time limit, claims held that long (no run twice at once,
                // even when a replica dies on another host leaving its executor running).
                configuration.dispatch.boundedRuns = true
                if configuration.mqtt.clientID == AggregatorConfiguration.defaultClientID {
                    configuration.mqtt.clientID = "edgefleet-aggregator-\(replicaID)"  // one broker session per replica
                }
                let lead = LeadershipHandle()
                let (stores, pool) = try PostgresStores.open(
                    url: configuration.databasePath, passwordFile: configuration.databasePasswordFile, environment: processEnvironment(),
                    fence: { lead.leadership?.fence }, logger: logger)
                leadership = Leadership(replicaID: replicaID, lease: configuration.leaderLease, store: PostgresLeaseStore(pool: pool, timeout: configuration.leaderLease / 3), logger: logger)
                lead.leadership = leadership
                service = try AggregatorService(
                    configuration: configuration, logger: logger, metrics: AggregatorMetrics(factory: factory), stores: stores, leadership: leadership)
            } else {
                service = try AggregatorService(
                    configuration: configuration, logger: logger, metrics: AggregatorMetrics(factory: factory),
                    stores: .sqlite(path: configuration.databasePath))
                leadership = service.leadership
            }
        } catch {
            // A runtime failure, not a usage error: exit 1 with the reason, no usage text.
            printError("edgefleet-aggregator: cannot open the database: \(error)")
            throw ExitCode(EdgeFleetExit.failure)
        }
        let principals = try PrincipalStore(path: configuration.tokenFile, logger: logger)
        if !principals.isConfigured { logger.warning("no --principals: every change through the HTTP API is refused") }
        var tls: TLSFiles?
        if let certificate = configuration.tlsCertificate, let key = configuration.tlsKey {
            do {
                tls = try TLSFiles(certificate: certificate, key: key, logger: logger)
            } catch {
                printError("edgefleet-aggregator: \(error)")
                throw ExitCode(EdgeFleetExit.failure)
            }
        }
        let api = OperatorAPI(
            service: service, principals: principals, publicReads: configuration.publicReads, registry: registry, help: AggregatorMetrics.help,
            sessionLifetime: configuration.dashboardSession, sessionIdle: min(configuration.dashboardSession, .seconds(3600)),
            headerTimeout: configuration.httpHeaderTimeout, maxConnections: configuration.httpMaxConnections, secure: tls != nil,
            failureLimit: configuration.authFailuresPerMinute)
        let address = configuration.httpListen
        let scheme = tls == nil ? "http" : "https"
        let http = try api.application(address: address, logger: logger, tls: tls) { bound in
            logger.info("HTTP API listening on \(scheme)://\(bound)", metadata: ["dashboard": "\(scheme)://\(bound)/"])
        }
        do {
            // Dispatcher shutdown (10 s for executors to stop, 5 s more after SIGKILL), the last
            // flush and the goodbye (2 s) fit in the limit.
            // Shut down in reverse: HTTP first, then the queue (its executors), then the core (the last flush, the goodbye).
            // The lead is given up last (after the last flush), so that the next leader takes over at once.
            try await ServiceGroup.runService(
                [leadership, service, service.queue, http], program: "edgefleet-aggregator", shutdownLimit: .seconds(30), logger: logger)
        } catch where "\(error)".contains("bind(") {
            printError("edgefleet-aggregator: cannot listen on \(address) (--http): \(error)")
            throw ExitCode(EdgeFleetExit.failure)
        } catch {
            printError("edgefleet-aggregator: \(error)")
            throw ExitCode(EdgeFleetExit.failure)
        }
    }
}

await AggregatorCommand.runMain()

/// Where the fence finds the replica's lead (the stores are opened before the lead exists: the
/// lease lives in the same database).
final class LeadershipHandle: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Leadership?
    var leadership: Leadership? {
        get { lock.withLock { value } }
        set { lock.withLock { value = newValue } }
    }
}

/// The HTTP API reaches the aggregator only through `OperatorBackend`.
extension AggregatorService: OperatorBackend {}
