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
        discussion: "Reads the broker, not the HTTP API. Ctrl-C stops it.")

    @OptionGroup var brokerOptions: BrokerOptions
    @Option(help: "Only this site's events.") var site: String?
    @Option(help: "table (one line per event) or json (one JSON object per line).") var output: OutputFormat = .table

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
        try await client.subscribe(to: topic, qos: .atLeastOnce)
        printError("watching \(topic) on \(broker) (Ctrl-C stops)")
        for await message in client.messages where message.topic == topic {
            guard let event = try? FleetJSON.decode(FleetEvent.self, from: message.payload) else { continue }
            if let site, event.site?.rawValue != site { continue }
            // Written at once (not buffered by stdio), so a pipe sees each event as it happens.
            let line = output == .json ? String(decoding: message.payload, as: UTF8.self) : Self.line(event)
            FileHandle.standardOutput.write(Data((line + "\n").utf8))
        }
    }

    /// `2026-11-26T19:34:12.870Z  store-0042  mode-changed  connected → semi-connected`.
    static func line(_ event: FleetEvent) -> String {
        var detail: [String] = []
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
