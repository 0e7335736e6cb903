import ArgumentParser
import CommandSupport
import FleetCore

/// The fleet aggregator. This build only answers `--help` and `--version`: the
/// service (ingest, modes, queue, HTTP API) arrives with the aggregator issue.
struct AggregatorCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "edgefleet-aggregator",
        abstract: "Computes every site's connectivity mode and deadline and runs the deferred-operation queue.",
        discussion: """
            Runs once per on-premises core next to the broker. Not implemented in this \
            build yet: only --help and --version work.
            """,
        version: EdgeFleetVersion.current)

    func run() async throws {
        throw ValidationError("the aggregator service is not part of this build yet; only --help and --version work")
    }
}

await AggregatorCommand.runMain()
