import ArgumentParser
import CommandSupport
import FleetCore

/// The site agent. This build only answers `--help` and `--version`: the
/// service itself (probes, checks, spool, publishing) arrives with the agent issue.
struct AgentCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "edgefleet-agent",
        abstract: "Publishes an Azure Local site's presence, heartbeats and local status to the EdgeFleet broker.",
        discussion: """
            Runs at every AKS on Azure Local site. Not implemented in this build yet: \
            only --help and --version work.
            """,
        version: EdgeFleetVersion.current)

    func run() async throws {
        throw ValidationError("the agent service is not part of this build yet; only --help and --version work")
    }
}

await AgentCommand.runMain()
