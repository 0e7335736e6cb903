import ArgumentParser
import CommandSupport
import FleetCore

/// The operator CLI. This build only answers `--help` and `--version`: the
/// commands of contract.md arrive with the operator-surfaces issue.
struct EdgeFleetCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "edgefleet",
        abstract: "Watch an EdgeFleet fleet and review its deferred-operation queue.",
        discussion: "Not implemented in this build yet: only --help and --version work.",
        version: EdgeFleetVersion.current)

    func run() async throws {
        throw ValidationError("the operator commands are not part of this build yet; only --help and --version work")
    }
}

await EdgeFleetCommand.runMain()
