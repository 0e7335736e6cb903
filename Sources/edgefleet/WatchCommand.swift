import ArgumentParser
import CommandSupport
import FleetCore
import Foundation
import Logging
import MQTT

#if canImport(Glibc)
import Glibc
#endif

/// `edgefleet watch`: follows `{root}/fleet/events` over MQTT, one line per event.
struct WatchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "watch", abstract: "Follow the fleet's events live (mode changes, deadline alerts, operations), one line each.",
        discussion: """
            Follows the broker. With --since it first prints the events stored since then (from the HTTP API: --server, \
            --token-file, and --api-ca-file for the other commands' --ca-file), then follows live ones: it subscribes before it reads the \
            stored ones and skips by id what it has printed, so nothing is missed or shown twice at the seam. Ctrl-C stops it.
            """)

    @OptionGroup var brokerOptions: BrokerOptions
    @Option(help: "Only this site's events.") var site: String?
    @Option(help: "table (one line per event) or json (one JSON object per line).") var output: OutputFormat = .table
    @Option(help: "First replay the stored events since then (RFC 3339, or a duration before now such as 1h).") var since: String?
    @Option(help: "With --since: the aggregator's HTTP API (default $EDGEFLEET_SERVER or http://127.0.0.1:8080).") var server: String?
    @Option(help: "With --since: file holding the API token (default $EDGEFLEET_TOKEN).") var tokenFile: String?
    @Option(help: "With --since and an https:// server: the CA that signed its certificate (default $EDGEFLEET_CA_FILE).") var apiCaFile: String?

    func validate() throws {
        if let site, let problem = SiteID.problem(with: site) { throw ValidationError("--site: \(problem)") }
    }

    func run() async throws {
        let (configuration, root, broker) = try brokerOptions.resolve(clientID: "edgefleet-watch-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        var logger = Logger(label: "edgefleet.watch")
        logger.logLevel = .critical
        let client = try MQTTClient(configuration: configuration, logger: logger)
        do {
            try await client.connect(timeout: .seconds(10))
        } catch {
            printError("edgefleet: cannot connect to the broker at \(broker): \(error)")
            throw ExitCode(EdgeFleetExit.failure)
        }
        let topic = FleetTopics(root: root).name(.fleetEvents)
        // Subscribed (the broker granted it) before the stored events are read: an event published
        // from now on is either among them or arrives live, and is skipped by id if both.
        try await client.subscribe(to: topic, qos: .atLeastOnce)
        var replayedUpTo: Int64 = 0
        if let since {
            replayedUpTo = try await replay(since: since)
        }
        printError("watching \(topic) on \(broker) (Ctrl-C stops)")
        for await message in client.messages where message.topic == topic {
            guard let event = try? FleetJSON.decode(FleetEvent.self, from: message.payload) else { continue }
            if let site, event.site?.rawValue != site { continue }
            if let id = event.id, id <= replayedUpTo { continue }
            // Written at once (not buffered by stdio), so a pipe sees each event as it happens.
            let line = output == .json ? String(decoding: message.payload, as: UTF8.self) : Self.line(event)
            FileHandle.standardOutput.write(Data((line + "\n").utf8))
        }
    }

    /// Prints the stored events since `since`; returns the highest id printed.
    func replay(since: String) async throws -> Int64 {
        var arguments: [String] = []
        if let server { arguments += ["--server", server] }
        if let tokenFile { arguments += ["--token-file", tokenFile] }
        if let apiCaFile { arguments += ["--ca-file", apiCaFile] }
        var last: Int64 = 0
        do {
            let api = try ClientOptions.parse(arguments).client()
            try await api.storedEvents(query: [("since", since), ("site", site)]) {
                for event in $0 {
                    let line = output == .json ? try FleetJSON.text(event) : Self.line(event)
                    FileHandle.standardOutput.write(Data((line + "\n").utf8))
                    last = max(last, event.id ?? 0)
                }
            }
        } catch let failure as CLIFailure {
            printError("edgefleet: \(failure.description)")
            throw ExitCode(failure.code)
        }
        return last
    }

    /// `2026-11-26T19:34:12.870Z  store-0042  mode-changed  connected → semi-connected`.
    static func line(_ event: FleetEvent) -> String {
        var detail: [String] = []
        if event.from == nil, event.type == .modeChanged, let to = event.to {
            detail.append("first known \(ConnectivityMode(rawValue: to).map(Terminal.mode) ?? Out.clean(to))")
        }
        if let from = event.from, let to = event.to {
            let paint: (String) -> String = { ConnectivityMode(rawValue: $0).map(Terminal.mode) ?? $0 }
            detail.append("\(paint(Out.clean(from))) → \(paint(Out.clean(to)))")
        }
        if let level = event.level { detail.append(level.rawValue) }
        if let remaining = event.remainingS { detail.append(remaining > 0 ? "\(DurationFormat.human(seconds: remaining)) left" : "deadline passed") }
        if let id = event.operationID { detail.append(Out.clean(id)) }
        if let kind = event.kind { detail.append(kind.rawValue) }
        if let note = event.note { detail.append(Out.clean(note)) }
        return [Out.time(event.at), event.site?.rawValue ?? "-", event.type.rawValue, detail.joined(separator: "  ")].joined(separator: "  ")
    }
}

/// How the CLI reaches the broker (`watch`, `simulate`): the services' broker flags.
struct BrokerOptions: ParsableArguments {
    @OptionGroup var flags: BrokerFlags

    /// The client configuration, the topic root and the broker URL, from the flags and the
    /// `EDGEFLEET_*` environment.
    func resolve(clientID: String) throws -> (MQTTConfiguration, TopicRoot, BrokerURL) {
        let (connection, root) = try loadConfiguration(file: nil, flags: flags.flagSettings) { settings throws(ConfigurationError) in
            (try settings.brokerSettings(), try settings.topicRoot())
        }
        let configuration = MQTTConfiguration(
            broker: connection.broker, clientID: clientID, username: connection.username, password: connection.password, tls: connection.tls,
            keepAlive: .seconds(30))
        return (configuration, root, connection.broker)
    }
}
