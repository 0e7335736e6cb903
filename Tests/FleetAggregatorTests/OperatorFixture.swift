import FleetAggregator
import FleetCore
import Foundation
import TestSupport

/// The aggregator as its own process with its HTTP API on a free port, a token file, the
/// stand-in `az` on its PATH, and thresholds that hold four modes still for minutes:
/// connected within 10 s (a loaded CI machine may delay heartbeats by seconds), a 1 h budget.
struct OperatorFixture: @unchecked Sendable {  // immutable after start; its parts are used from test tasks
    static let token = "test-token-0123456789abcdef"

    let fleet: AggregatorFixture
    let az: StandInAzure
    let port: Int
    let directory: String
    /// The aggregator's flags and environment (to start it again on the same database).
    let flags: [String]
    let environment: [String: String]
    var tokenFile: String { directory + "/tokens" }

    /// The thresholds the fixture's tests rely on unless a test brings its own.
    static let defaultThresholds = [
        "--connected-within", "10s", "--budget", "1h", "--warn-before", "10m", "--critical-before", "5m", "--stable-for", "500ms",
    ]

    /// `principals`: a principals file's text, given with `--principals` instead of the flat token list.
    static func start(
        publicReads: Bool = false, withTokens: Bool = true, principals: String? = nil, thresholds: [String] = defaultThresholds,
        extra: [String] = [], seed: ((AggregatorStores) throws -> Void)? = nil
    ) async throws -> OperatorFixture {
        let az = try StandInAzure()
        let directory = try temporaryDirectory("edgefleet-operator")
        try "# operators\n\(token)\n\nsecond-token-abcdefghijklmnop\n".write(toFile: directory + "/tokens", atomically: true, encoding: .utf8)
        if let principals { try principals.write(toFile: directory + "/principals.yaml", atomically: true, encoding: .utf8) }
        try """
            executors:
              cluster.upgrade:
                argv: [az, aksarc, upgrade, --name, "{cluster.name}", --kubernetes-version, "{params.kubernetesVersion}", --yes]
                timeout: 30s
              extension.install:
                argv: [az, k8s-extension, create, --cluster-name, "{cluster.name}", --name, "{params.name}"]
                timeout: 30s
              nodepool.scale:
                argv: [az, aksarc, nodepool, scale, --cluster-name, "{cluster.name}", --name, "{params.nodepool}", --node-count, "{params.count}"]
                timeout: 30s
            """.write(toFile: directory + "/aggregator.yaml", atomically: true, encoding: .utf8)
        var environment = ProcessInfo.processInfo.environment
        environment["PATH"] = az.directory + ":" + (environment["PATH"] ?? "/usr/bin:/bin")
        var flags =
            ["--config", directory + "/aggregator.yaml"] + thresholds + [
                "--view-refresh", "1s", "--summary-interval", "200ms", "--flush-interval", "200ms", "--dispatch-interval", "100ms",
                "--http", "127.0.0.1:0",
            ]
        if principals != nil {
            flags += ["--principals", directory + "/principals.yaml"]
        } else if withTokens {
            flags += ["--token-file", directory + "/tokens"]
        }
        // Tests ask from one address: wrong tokens on purpose must not make the rest wait.
        if !extra.contains("--auth-failures-per-minute") { flags += ["--auth-failures-per-minute", "1000"] }
        if publicReads { flags += ["--public-reads", "true"] }
        // A database with a past, written before the aggregator opens it.
        var database: String?
        if let seed {
            database = directory + "/seeded.sqlite"
            try seed(try AggregatorStores.sqlite(path: database!))
        }
        let fleet = try await AggregatorFixture.start(flags: flags + extra, environment: environment, database: database)
        do {
            let port = try await Self.listeningPort(fleet.aggregator)
            return OperatorFixture(fleet: fleet, az: az, port: port, directory: directory, flags: flags + extra, environment: environment)
        } catch {
            fleet.stop()
            az.remove()
            throw error
        }
    }

    /// The port from the aggregator's "HTTP API listening on http://127.0.0.1:PORT" line.
    static func listeningPort(_ aggregator: AggregatorProcess) async throws -> Int {
        try await withTimeout(.seconds(20), "the HTTP API to listen") {
            while true {
                if let range = aggregator.output.range(of: #"HTTP API listening on https?://127\.0\.0\.1:[0-9]+"#, options: .regularExpression),
                    let port = Int(aggregator.output[range].split(separator: ":").last ?? "")
                {
                    return port
                }
                try await Task.sleep(for: .milliseconds(50))
            }
        }
    }

    /// Four sites, one in each mode, reporting cluster metadata; waits until the aggregator
    /// shows each in its mode.
    func fourModes() async throws -> [SimulatedSite] {
        let now = Date()
        let plan: [(String, Date?, ConnectivityMode)] = [
            ("site-connected", now, .connected), ("site-semi", now.addingTimeInterval(-20 * 60), .semiConnected),
            ("site-gone", now.addingTimeInterval(-2 * 3600), .disconnected), ("site-new", nil, .unknown),
        ]
        var sites: [SimulatedSite] = []
        for (name, contact, mode) in plan {
            // Announcing 3 s (stale after 9 s of silence) while beating every 0.5 s: a loaded CI
            // machine may hold a heartbeat back for seconds, and these tests are not about liveness.
            let site = try SimulatedSite(name, brokerURL: fleet.broker.url, announcedInterval: 3)
            if mode != .connected { site.reportContact(at: contact) }
            try await site.connect()
            try await site.status(
                cluster: ClusterInfo(name: "aks-\(name)", resourceGroup: "rg-edge", kubernetesVersion: "1.29.4"),
                checks: [
                    CheckResult(name: "nodes-ready", state: .pass, observedAt: now, durationMs: 40, output: "3/3 nodes Ready"),
                    CheckResult(
                        name: "arc-agents", state: mode == .connected ? .pass : .warn, observedAt: now, durationMs: 55,
                        output: mode == .connected ? "all Arc agents running" : "clusterconnect-agent cannot reach Azure"),
                ],
                capabilities: ["clusterAutoscaler": name == "site-semi"], labels: ["tier": "test"])
            site.startBeating()
            sites.append(site)
        }
        for (name, _, mode) in plan {
            _ = try await fleet.messages.view(name, "\(name) \(mode.rawValue)") { $0.mode == mode }
        }
        return sites
    }

    // MARK: - HTTP

    func get(_ target: String, token: String? = OperatorFixture.token) async throws -> HTTPResponse {
        try await HTTP.get(port: port, target, token: token)
    }

    func post(_ target: String, _ json: String? = nil, token: String? = OperatorFixture.token) async throws -> HTTPResponse {
        try await HTTP.post(port: port, target, token: token, json: json)
    }

    /// Submits through the API; returns the operation id.
    func submit(_ site: String, _ kind: String, _ params: [String: String] = [:], extra: String = "") async throws -> String {
        let paramsJSON = params.map { "\"\($0.key)\": \"\($0.value)\"" }.joined(separator: ", ")
        let response = try await post("/v1/operations", #"{"site": "\#(site)", "kind": "\#(kind)", "params": {\#(paramsJSON)}\#(extra)}"#)
        guard response.status == 201, let operation = try response.json()["operation"] as? [String: Any], let id = operation["id"] as? String
        else {
            throw TestSupportError("submission failed: \(response.status) \(response.text)")
        }
        return id
    }

    func operation(_ id: String) async throws -> [String: Any] { try await get("/v1/operations/\(id)").json() }

    func state(_ id: String) async throws -> String? { try await operation(id)["state"] as? String }

    func waitForState(_ id: String, _ state: String, timeout: Duration = .seconds(30)) async throws {
        try await withTimeout(timeout, "\(id) to be \(state)") {
            while try await self.state(id) != state { try await Task.sleep(for: .milliseconds(50)) }
        }
    }

    // MARK: - The CLI

    /// Runs the built `edgefleet` against this aggregator, with the token in the environment
    /// unless `token` is nil, and `NO_COLOR` so the output is plain.
    func cli(_ arguments: [String], token: String? = OperatorFixture.token, environment extra: [String: String] = [:]) async throws
        -> (status: Int32, stdout: String, stderr: String)
    {
        var environment = ProcessInfo.processInfo.environment
        environment["EDGEFLEET_SERVER"] = "http://127.0.0.1:\(port)"
        environment["EDGEFLEET_TOKEN"] = token
        environment["NO_COLOR"] = "1"
        environment.removeValue(forKey: "COLUMNS")
        for (key, value) in extra { environment[key] = value }
        return try await runAsync(builtProduct("edgefleet"), arguments, environment: environment)
    }

    func stop() {
        fleet.stop()
        az.remove()
        try? FileManager.default.removeItem(atPath: directory)
    }
}
