import ArgumentParser
import CommandSupport
import FleetCore
import FleetSimulator
import Foundation
import Logging
import MQTT

#if canImport(Glibc)
import Glibc
#endif

/// `edgefleet simulate`: virtual sites through the real broker, for the demo, tests and load.
struct SimulateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "simulate",
        abstract: "Run virtual sites that speak the EdgeFleet contract through the broker, with scripted outages.",
        discussion: """
            Describe the fleet with --scenario FILE (YAML: sites, regions and timed events; see \
            Sources/FleetSimulator/Scenario.swift and Benchmarks/scenarios/) or with flags; flags add events after the file's. \
            Times are wall-clock: give the aggregator short thresholds (--budget 30m) to play 30 days in minutes. \
            Ctrl-C stops it, and every simulated agent says goodbye.
            """)

    @OptionGroup var brokerOptions: BrokerOptions
    @Option(help: "YAML scenario file.") var scenario: String?
    @Option(help: "How many sites (default 50, or the scenario's).") var sites: Int?
    @Option(help: "Site id prefix (sites are PREFIX-001 ...).") var prefix: String?
    @Option(help: "Heartbeat interval of every simulated agent (default 5s).") var heartbeatInterval: String?
    @Option(help: "Stop after this long (default: run until Ctrl-C).") var duration: String?
    @Option(help: "Sites with an MQTT connection each; the rest share connections.") var dedicatedConnections = 2_000
    @Option(help: "Sites that never reached Azure (unknown).") var never = 0
    @Option(help: "Sites that lost Azure this long ago at the start (semi-connected): N:AGE, e.g. 10:3m; repeatable.") var lost: [String] = []
    @Option(help: "Sites that lose Azure at a time and get it back later: N:AT:FOR, e.g. 5:1m:2m; repeatable.") var outage: [String] = []
    @Option(help: "Sites whose certificates expire early: N:IN, e.g. 3:4m.") var certificates: [String] = []
    @Option(help: "Agents that die without a clean disconnect: N:AT, e.g. 2:30s.") var die: [String] = []
    @Option(help: "Sites whose Azure link flaps: N:PERIOD, e.g. 2:20s.") var flap: [String] = []
    @Flag(help: "Print one progress line per second even when standard error is not a terminal.") var progressLines = false

    func validate() throws {
        _ = try buildScenario()
        if let duration { do { _ = try DurationFormat.parse(duration) } catch { throw ValidationError("--duration: \(error.description)") } }
        if dedicatedConnections < 0 { throw ValidationError("--dedicated-connections: at least 0") }
    }

    func buildScenario() throws -> Scenario {
        var scenario = Scenario(sites: 50)
        if let path = scenario_ {
            guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { throw ValidationError("--scenario: cannot read '\(path)'") }
            do { scenario = try Scenario.parse(yaml: text) } catch { throw ValidationError("--scenario \(path): \(error.description)") }
        }
        if let sites { scenario.sites = sites }
        if let prefix { scenario.prefix = prefix }
        if let heartbeatInterval {
            do { scenario.heartbeatInterval = try DurationFormat.parse(heartbeatInterval) } catch {
                throw ValidationError("--heartbeat-interval: \(error.description)")
            }
        }
        func parts(_ text: String, _ flag: String, _ count: Int) throws -> (Int, [Duration]) {
            let fields = text.split(separator: ":").map(String.init)
            guard fields.count == count, let n = Int(fields[0]), n >= 0 else {
                throw ValidationError("--\(flag): expected \(["N", "N:D", "N:D:D"][count - 1]), got '\(text)'")
            }
            var durations: [Duration] = []
            for field in fields.dropFirst() {
                do { durations.append(try DurationFormat.parse(field)) } catch { throw ValidationError("--\(flag): \(error.description)") }
            }
            return (n, durations)
        }
        if never > 0 { scenario.events.append(.init(at: .zero, selection: .count(never), action: .never)) }
        for text in lost {
            let (n, d) = try parts(text, "lost", 2)
            scenario.events.append(.init(at: .zero, selection: .count(n), action: .contactAge(d[0])))
        }
        for text in outage {
            let (n, d) = try parts(text, "outage", 3)
            let ids = try nextIDs(scenario, n)
            scenario.events.append(.init(at: d[0], selection: .ids(ids), action: .lose))
            scenario.events.append(.init(at: d[0] + d[1], selection: .ids(ids), action: .restore))
            scenario.events.append(.init(at: .zero, selection: .count(n), action: .restore))  // reserves them
        }
        for text in certificates {
            let (n, d) = try parts(text, "certificates", 2)
            scenario.events.append(.init(at: .zero, selection: .count(n), action: .certificateExpiresIn(d[0])))
        }
        for text in die {
            let (n, d) = try parts(text, "die", 2)
            let ids = try nextIDs(scenario, n)
            scenario.events.append(.init(at: .zero, selection: .count(n), action: .restore))
            scenario.events.append(.init(at: d[0], selection: .ids(ids), action: .die))
        }
        for text in flap {
            let (n, d) = try parts(text, "flap", 2)
            guard d[0] >= .seconds(1) else { throw ValidationError("--flap: a period of at least 1s") }
            scenario.events.append(.init(at: .zero, selection: .count(n), action: .flap(d[0])))
        }
        do { try scenario.validate() } catch { throw ValidationError(error.description) }
        return scenario
    }

    private var scenario_: String? { scenario }

    /// The ids the next `sites: n` selection will take.
    private func nextIDs(_ scenario: Scenario, _ n: Int) throws -> [String] {
        let taken = scenario.events.reduce(0) { sum, event in
            if case .count(let c) = event.selection { return sum + c }
            return sum
        }
        let ids = scenario.siteIDs.map(\.rawValue)
        guard taken + n <= ids.count else { throw ValidationError("\(taken + n) sites asked for, the fleet has \(ids.count)") }
        return Array(ids[taken..<(taken + n)])
    }

    func run() async throws {
        let scenario = try buildScenario()
        let (mqtt, root, broker) = try brokerOptions.resolve(clientID: "edgefleet-sim")
        var logger = Logger(label: "edgefleet.simulate")
        logger.logLevel = .warning
        let simulation = try FleetSimulation(
            scenario: scenario, settings: FleetSimulation.Settings(mqtt: mqtt, topics: FleetTopics(root: root), dedicatedConnections: dedicatedConnections),
            logger: logger)
        let terminal = isatty(2) == 1
        printError("simulating \(scenario.sites) sites (\(simulation.connectionCount) connections) on \(broker); Ctrl-C stops")
        let progressLines = progressLines
        let limit = try duration.map { try DurationFormat.parse($0) }
        let work = Task {
            try await simulation.run(for: limit) { progress in
                let line = "\(DurationFormat.human(seconds: progress.elapsed.secondsValue)): \(progress.sites) sites, \(progress.alive) agents alive, "
                    + "\(progress.azureUp) reaching Azure, \(progress.connected)/\(progress.connections) connections, \(progress.heartbeats) heartbeats"
                    + (progress.failures > 0 ? ", \(progress.failures) failed" : "")
                if terminal {
                    FileHandle.standardError.write(Data("\r\u{1B}[K\(line)".utf8))
                } else if progressLines {
                    printError(line)
                }
            }
        }
        // Ctrl-C and SIGTERM end the simulation cleanly.
        let signals = [SIGINT, SIGTERM].map { number -> any DispatchSourceSignal in
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number)
            source.setEventHandler { work.cancel() }
            source.resume()
            return source
        }
        defer { signals.forEach { $0.cancel() } }
        do {
            try await work.value
        } catch is CancellationError {
        } catch {
            if terminal { printError("") }
            await simulation.shutdown()
            printError("edgefleet: the simulation failed: \(error)")
            throw ExitCode(EdgeFleetExit.failure)
        }
        if terminal { printError("") }
        await simulation.shutdown()
        printError("simulation stopped")
    }
}
