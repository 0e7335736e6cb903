import ArgumentParser
import CProcess
import CommandSupport
import Subprocesses
import FleetAgent
import FleetCore
import Logging
import ServiceLifecycle

#if canImport(Glibc)
import Glibc
#endif

/// The site agent: loads and validates its configuration, then probes Azure,
/// runs the local checks and publishes presence, heartbeats and status until
/// SIGTERM or SIGINT, when it publishes a clean offline presence and disconnects.
struct AgentCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "edgefleet-agent",
        abstract: "Publishes an Azure Local site's presence, heartbeats and local status to the EdgeFleet broker.",
        discussion: """
            Every setting of the config file is also a flag (heartbeatInterval: --heartbeat-interval) and an \
            environment variable (EDGEFLEET_HEARTBEAT_INTERVAL); flags win over the environment, which wins over \
            the file. See deploy/agent.example.yaml; --check-config validates a configuration and prints it.
            """,
        version: EdgeFleetVersion.current)

    @OptionGroup var service: ServiceOptions

    @Option(help: "This site's id.") var site: String?
    @Option(help: "Heartbeat interval (default 10s).") var heartbeatInterval: String?
    @Option(help: "Azure probe interval (default 60s).") var probeInterval: String?
    @Option(help: "Status refresh (default 5m).") var statusRefresh: String?
    @Option(help: "State directory.") var stateDir: String?
    @Option(help: "Azure endpoints to probe, HOST:PORT,...") var probeEndpoints: String?
    @Option(help: "Azure region, for the default endpoints.") var region: String?
    @Option(help: "Command whose exit 0 means Azure is reachable (words separated by spaces).") var probeCommand: String?
    @Option(help: "Probe timeout (default 10s).") var probeTimeout: String?
    @Option(help: "Extra CA (PEM) the endpoint probe trusts.") var probeCaFile: String?
    @Option(help: "Checks run at once (default 2).") var checkConcurrency: String?
    @Option(help: "Status changes kept while the broker is unreachable (default 10000).") var spoolCapacity: String?
    @Option(help: "A PEM certificate whose expiry counts (repeatable).") var certificate: [String] = []
    @Option(help: "A kubeconfig whose client certificate's expiry counts.") var kubeconfig: String?
    @Option(help: "Cluster name.") var clusterName: String?
    @Option(help: "Resource group.") var resourceGroup: String?
    @Option(help: "Subscription id.") var subscription: String?
    @Option(help: "Custom location.") var customLocation: String?
    @Option(help: "Kubernetes version.") var kubernetesVersion: String?
    @Option(help: "The site's labels, KEY=VALUE,... (Kubernetes' label syntax), e.g. region=north,tier=store.") var labels: String?

    var flagSettings: [String: Settings.Value] {
        var flags = service.flagSettings
        let scalars: [(String, String?)] = [
            ("site", site), ("heartbeatInterval", heartbeatInterval),
            ("probeInterval", probeInterval), ("statusRefresh", statusRefresh), ("stateDir", stateDir),
            ("probeEndpoints", probeEndpoints), ("region", region), ("probeCommand", probeCommand), ("probeTimeout", probeTimeout),
            ("probeCaFile", probeCaFile),
            ("checkConcurrency", checkConcurrency), ("spoolCapacity", spoolCapacity), ("kubeconfig", kubeconfig), ("clusterName", clusterName),
            ("resourceGroup", resourceGroup), ("subscription", subscription), ("customLocation", customLocation),
            ("kubernetesVersion", kubernetesVersion), ("labels", labels),
        ]
        for case let (key, value?) in scalars { flags[key] = .text(value) }
        if !certificate.isEmpty { flags["certificate"] = .list(certificate) }
        return flags
    }

    func run() async throws {
        let configuration = try loadConfiguration(file: service.config, flags: flagSettings, AgentConfiguration.load)
        if service.checkConfig {
            print(configuration.summary)
            return
        }
        let logger = try standardErrorLogger(label: "edgefleet.agent", level: service.logLevel)
        // Daemons a check starts (setsid) are handed to the agent when their parent exits, so that
        // it ends and reaps them instead of leaking one per run.
        if !ProcessTable.becomeSubreaper() { logger.warning("cannot become a child subreaper; a check's daemons may outlive it") }
        let service = try AgentService(configuration: configuration, logger: logger)
        // SIGTERM and SIGINT shut the service down gracefully (offline presence, then disconnect);
        // whatever way it stops, the process is gone within seconds.
        defer { ProcessTable.endAllChildren() }  // nothing a check left behind outlives the agent
        try await ServiceGroup.runService([service], program: "edgefleet-agent", logger: logger)
    }
}

// One malloc arena for the whole process, set before any other thread starts: glibc gives each
// thread that allocates an arena of its own (up to 8 per core), and the agent's handful of mostly
// idle threads (the cooperative pool, the MQTT loop, one per probe handshake and check run) kept
// some 0.2 MB of written memory in them (docs/design-notes.md, "Memory, stated honestly").
_ = edgefleet_limit_malloc_arenas(1)

await AgentCommand.runMain()
