import ArgumentParser
import FleetCore
import CommandSupport
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// `edgefleet status`: the fleet summary.
struct StatusCommand: ClientCommand {
    static let configuration = CommandConfiguration(commandName: "status", abstract: "The fleet at a glance: modes, liveness, queue, nearest deadlines.")
    @OptionGroup var options: ClientOptions

    func execute(_ api: APIClient) async throws {
        let summary = try await api.get("/v1/fleet", as: FleetSummary.self)
        if options.output == .json { return try Out.json(summary) }
        print("\(Terminal.bold("\(summary.sites) sites")) · fleet \(summary.fleetMode.rawValue) · \(Out.time(summary.at))")
        var modes = Table(["MODE", "SITES"])
        for (mode, count) in [
            (ConnectivityMode.connected, summary.modes.connected), (.semiConnected, summary.modes.semiConnected),
            (.disconnected, summary.modes.disconnected), (.unknown, summary.modes.unknown),
        ] {
            modes.add([Terminal.mode(mode), "\(count)"])
        }
        print(modes.render())
        print("agents: \(summary.liveness.online) online · \(summary.liveness.stale) stale · \(summary.liveness.offline) offline")
        // Replicas on PostgreSQL: which one answered, and its role (a sole aggregator says nothing).
        if let health = try? await api.get("/healthz", as: HealthStatus.self), let replica = health.replica, let role = health.role {
            print("aggregator: replica \(replica), \(role)\(health.epoch.map { " (epoch \($0))" } ?? "")")
        }
        let queue = summary.queue
        print(
            "queue: \(queue.queued) queued · \(queue.blocked) blocked · \(queue.dispatching) running · \(queue.failed) failed"
        )
        if !summary.nearestDeadlines.isEmpty {
            print("\nnearest deadlines")
            var table = Table(["SITE", "MODE", "LEFT", "DEADLINE"])
            for entry in summary.nearestDeadlines {
                table.add([entry.site.rawValue, Terminal.mode(entry.mode), DurationFormat.human(seconds: entry.remainingS), Out.time(entry.deadline)])
            }
            print(table.render())
        }
    }
}

/// `edgefleet sites [--mode M]`: every site, nearest deadline first.
struct SitesCommand: ClientCommand {
    static let configuration = CommandConfiguration(commandName: "sites", abstract: "Every site with its mode, time left and queue, nearest deadline first.")
    @OptionGroup var options: ClientOptions
    @Option(help: "Only sites in this mode: connected, semi-connected, disconnected, unknown.") var mode: ConnectivityMode?
    @Option(help: "Only sites whose agent is online, stale or offline.") var liveness: Liveness?
    @Option(help: "Only sites whose labels match: region=north,tier!=lab (Kubernetes' equality-based selectors).") var selector: String?

    func validate() throws {
        if let selector {
            do { _ = try LabelSelector(parsing: selector) } catch { throw ValidationError("--selector: \(error.description)") }
        }
    }

    func execute(_ api: APIClient) async throws {
        let pages = try await api.all(
            "/v1/sites", query: [("mode", mode?.rawValue), ("liveness", liveness?.rawValue), ("selector", selector)], as: SiteList.self,
            items: { $0.sites.count }, next: { $0.nextCursor })
        var sites = pages.flatMap(\.sites)
        sites.sort { a, b in
            switch (a.deadline, b.deadline) {
            case let (x?, y?): x != y ? x < y : a.site < b.site
            case (nil, nil): a.site < b.site
            case (_?, nil): true
            case (nil, _?): false
            }
        }
        if options.output == .json { return try Out.json(sites) }
        if sites.isEmpty {
            print(mode.map { "no site is \($0.rawValue)" } ?? "no site has reported yet")
            return
        }
        var table = Table(["SITE", "MODE", "AGENT", "LEFT", "DEADLINE", "QUEUE", "CHECKS", "LABELS"])
        for view in sites {
            let depth = view.queue.queued + view.queue.blocked + view.queue.dispatching
            var queue = "\(depth)"
            if view.queue.blocked > 0 { queue += " (\(view.queue.blocked) blocked)" }
            if view.queue.failed > 0 { queue += " +\(view.queue.failed) failed" }
            let checks = view.checks.fail > 0 ? Terminal.paint("\(view.checks.fail) fail", "31") : view.checks.warn > 0 ? "\(view.checks.warn) warn" : view.checks.pass > 0 ? "ok" : "—"
            table.add([
                view.site.rawValue, Terminal.mode(view.mode) + (view.projected ? "*" : ""), Terminal.liveness(view.liveness),
                view.mode == .connected ? "—" : Out.left(view), Out.time(view.deadline), queue, checks,
                Out.clean((view.labels ?? [:]).sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",")),
            ])
        }
        print(table.render())
        if sites.contains(where: \.projected) { print("* projected from the agent's last report (the agent is silent)") }
    }
}

/// `edgefleet site SITE`: one site, what works there now, and its operations.
/// `edgefleet site SITE` shows one site (the default); `edgefleet site forget SITE` removes a decommissioned one.
struct SiteCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "site", abstract: "One site: its mode and deadline, what works there now, its operations (or: forget it).",
        subcommands: [SiteShowCommand.self, SiteForgetCommand.self], defaultSubcommand: SiteShowCommand.self)
}

struct SiteForgetCommand: ClientCommand {
    static let configuration = CommandConfiguration(
        commandName: "forget", abstract: "Remove a decommissioned site from the fleet.",
        discussion: """
            Refused while operations wait for the site or run there; --force cancels the waiting ones (a running one is never \
            cut short). The site's record and retained view go; its agent coming back (a live presence) makes it again. Asks \
            for confirmation on a terminal; --yes skips the question (required when not on a terminal).
            """)
    @OptionGroup var options: ClientOptions
    @Argument(help: "The site id.") var site: String
    @Flag(help: "Cancel the operations that wait for the site.") var force = false
    @Flag(name: [.customShort("y"), .long], help: "Do not ask for confirmation.") var yes = false

    func validate() throws {
        if let problem = SiteID.problem(with: site) { throw ValidationError("SITE: \(problem)") }
    }

    func execute(_ api: APIClient) async throws {
        if !yes {
            guard isatty(0) == 1 else { throw CLIFailure.usage("refusing to forget \(site) without confirmation: pass --yes") }
            FileHandle.standardError.write(Data("Forget site \(site)\(force ? " and cancel what waits for it" : "")? [y/N] ".utf8))
            let answer = readLine()?.trimmingCharacters(in: .whitespaces).lowercased() ?? ""
            guard answer == "y" || answer == "yes" else {
                print("nothing forgotten")
                throw ExitCode(EdgeFleetExit.failure)
            }
        }
        let forgotten = try await api.send(
            "DELETE", "/v1/sites/\(site)", query: [("force", force ? "true" : nil)], body: nil as String?, as: SiteForgotten.self)
        if options.output == .json { return try Out.json(forgotten) }
        print("forgot \(site)" + (forgotten.cancelled.isEmpty ? "" : "; cancelled \(forgotten.cancelled.joined(separator: ", "))"))
    }
}

struct SiteShowCommand: ClientCommand {
    static let configuration = CommandConfiguration(commandName: "show", abstract: "One site: its mode and deadline, what works there now, its operations.")
    @OptionGroup var options: ClientOptions
    @Argument(help: "The site id.") var site: String
    @Option(help: "Show the site's history over this window instead (90d: time in each mode, outages, most budget used).")
    var history: String?

    struct Combined: Encodable {
        var detail: SiteDetail
        var capabilities: SiteCapabilities
        var operations: [DeferredOperation]
    }

    func validate() throws {
        if let problem = SiteID.problem(with: site) { throw ValidationError("SITE: \(problem)") }
    }

    /// What the mode means for operations, in one line.
    static func summary(of mode: ConnectivityMode) -> String {
        switch mode {
        case .connected: "Azure is reachable; everything works."
        case .semiConnected: "Azure is not reachable; what needs it fails now, and queueable operations wait for the link."
        case .disconnected:
            "past its deadline; the cluster may need redeploying, and queued operations stay blocked until an operator releases them."
        case .unknown: "the site has never reported Azure contact; what needs Azure may fail."
        }
    }

    func execute(_ api: APIClient) async throws {
        if let history {
            let found = try await api.get("/v1/sites/\(site)/history", query: [("window", history)], as: SiteHistory.self)
            if options.output == .json { return try Out.json(found) }
            return SiteHistoryOutput.print(found)
        }
        let detail = try await api.get("/v1/sites/\(site)", as: SiteDetail.self)
        let capabilities = try await api.get("/v1/sites/\(site)/capabilities", as: SiteCapabilities.self)
        // The newest 20, shown oldest first.
        let operations = Array(
            try await api.get("/v1/operations", query: [("site", site), ("order", "newest"), ("limit", "20")], as: OperationList.self)
                .operations.reversed())
        if options.output == .json { return try Out.json(Combined(detail: detail, capabilities: capabilities, operations: operations)) }
        let view = detail.view
        print("\(Terminal.bold(site))  \(Terminal.mode(view.mode))\(view.projected ? " (projected: the agent is silent)" : "")")
        var facts: [(String, String)] = [
            ("time left", view.mode == .connected ? "— (connected)" : Out.left(view)),
            ("deadline", view.deadline.map { "\(Out.time($0)) (\(view.deadlineReason?.rawValue ?? ""))" } ?? "—"),
            ("last Azure contact", "\(Out.time(view.lastAzureContactAt)) (\(Out.ago(view.lastAzureContactAt)))"),
            ("agent", "\(Terminal.liveness(view.liveness)), last heartbeat \(Out.ago(view.lastHeartbeatAt))"
                + (detail.agent.map { ", \(Out.clean($0.version)) on \(Out.clean($0.host))" } ?? "")),
            ("certificates", detail.certificateExpiry.map { "expire \(Out.time($0))" } ?? "—"),
        ]
        if let cluster = detail.cluster {
            facts.append(
                ("cluster", Out.clean([cluster.name, cluster.resourceGroup, cluster.kubernetesVersion.map { "Kubernetes \($0)" }].compactMap { $0 }.joined(separator: " · "))))
        }
        for (name, value) in facts { print("  \(name.padding(toLength: 19, withPad: " ", startingAt: 0)) \(value)") }

        print("\nwhat works here now: " + Self.summary(of: capabilities.mode))
        var table = Table(["OPERATION", "NOW", "NOTE"])
        for kind in capabilities.kinds {
            let entry = OperationCatalog.entry(kind.kind)
            let now = kind.available ? Terminal.paint("works", "32") : Terminal.paint(kind.queueable ? "queue it" : "not now", "31")
            var note: [String] = []
            if !entry.azureRequired { note.append("local") }
            if !kind.available, let offline = entry.offlineNote { note.append(offline) }
            if let workaround = kind.workaround { note.append("workaround: \(workaround)") }
            table.add([kind.kind.rawValue, now, note.joined(separator: "; ")])
        }
        print(table.render())

        if !detail.checks.isEmpty {
            print("\nchecks")
            var checks = Table(["CHECK", "STATE", "OUTPUT"])
            for check in detail.checks {
                checks.add([Out.clean(check.name), check.state.rawValue, Out.clean(check.output)])
            }
            print(checks.render())
        }
        print("\noperations")
        if operations.isEmpty {
            print("  none")
        } else {
            print(QueueTable.render(operations))
        }
    }
}
