import ArgumentParser
import CommandSupport
import FleetCore

/// The operator CLI: the fleet at a glance, one site and what works there now, the
/// deferred-operation queue, and events live. Talks to the aggregator's HTTP API
/// (`watch` reads the broker).
struct EdgeFleetCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "edgefleet",
        abstract: "Watch an EdgeFleet fleet and review its deferred-operation queue.",
        discussion: """
            Talks to the aggregator's HTTP API (--server, or EDGEFLEET_SERVER; default http://127.0.0.1:8080) with a token \
            from --token-file or EDGEFLEET_TOKEN. Every command takes --output json for scripts.

            Exit codes: 0 ok, 1 failure (the aggregator is unreachable or failed), 2 usage, 3 not found, \
            4 refused by the aggregator (no or wrong token, a conflict, a kind that cannot be queued).
            """,
        version: EdgeFleetVersion.current,
        subcommands: [
            StatusCommand.self, SitesCommand.self, SiteCommand.self, OpsCommand.self, QueueCommand.self, WatchCommand.self, SimulateCommand.self,
            BrokerCommand.self, TokenCommand.self, AuditCommand.self, RolloutCommand.self, EventsCommand.self, HistoryCommand.self,
        ])
}

/// A command that talks to the aggregator: failures become one line on standard error
/// and the contract's exit code.
protocol ClientCommand: AsyncParsableCommand {
    var options: ClientOptions { get }
    func execute(_ api: APIClient) async throws
}

extension ClientCommand {
    func run() async throws {
        do {
            try await execute(try options.client())
        } catch let failure as CLIFailure {
            printError("edgefleet: \(failure.description)")
            throw ExitCode(failure.code)
        }
    }
}

await EdgeFleetCommand.runMain()
