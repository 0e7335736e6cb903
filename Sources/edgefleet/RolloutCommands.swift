import ArgumentParser
import CommandSupport
import FleetCore
import Foundation

/// `edgefleet rollout ...`: one operation kind over the sites a selector matches, in waves.
struct RolloutCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rollout", abstract: "Run an operation over many sites in waves, stopping when things go wrong.",
        subcommands: [RolloutCreate.self, RolloutListCommand.self, RolloutShow.self, RolloutAct.Pause.self, RolloutAct.Resume.self,
                      RolloutAct.Cancel.self],
        defaultSubcommand: RolloutListCommand.self)
}

struct RolloutCreate: ClientCommand {
    static let configuration = CommandConfiguration(
        commandName: "create",
        abstract: "Create a rollout: one operation per matching site, canary first, then waves.",
        discussion: """
            A wave starts when every operation of the one before ended, or waits on a site that has not been connected \
            for longer than --wait-for (its operation stays queued and runs when the link returns). Past --max-failures \
            the rollout pauses itself. Sites past their deadline are left out and listed.
            Example: edgefleet rollout create cluster.upgrade --selector region=north --param kubernetesVersion=1.30.4 --canary 2 --batch 25%
            """)
    @OptionGroup var options: ClientOptions
    @Argument(help: "The operation kind, e.g. cluster.upgrade.") var kind: String
    @Option(help: "Which sites: region=north,tier!=lab.") var selector: String
    @Option(name: .customLong("param"), help: "A parameter, KEY=VALUE (repeatable).") var params: [String] = []
    @Option(help: "Sites in the canary wave (default 0).") var canary: Int?
    @Option(help: "Sites per wave: a number or a share, 10 or 25% (default 10%).") var batch: String?
    @Option(help: "Failures past which it pauses itself: 5 or 10% (default 10%).") var maxFailures: String?
    @Option(help: "How long an operation waiting on a site that is not connected may hold its wave back (default 1h).") var waitFor: String?
    @Option(help: "Give up on what has not run within this long: 7d.") var expiresIn: String?
    @Option(help: "Creating again with the same key returns the first rollout.") var idempotencyKey: String?

    func validate() throws {
        do { _ = try LabelSelector(parsing: selector) } catch { throw ValidationError("--selector: \(error.description)") }
        for param in params where !param.contains("=") || param.hasPrefix("=") { throw ValidationError("--param: expected KEY=VALUE, got '\(param)'") }
        for (name, value) in [("--batch", batch), ("--max-failures", maxFailures)] {
            if let value { do { _ = try RolloutSize(parsing: value) } catch { throw ValidationError("\(name): \(error.description)") } }
        }
        for (name, value) in [("--wait-for", waitFor), ("--expires-in", expiresIn)] {
            if let value { do { _ = try DurationFormat.parse(value) } catch { throw ValidationError("\(name): \(error.description)") } }
        }
    }

    func execute(_ api: APIClient) async throws {
        var values: [String: String] = [:]
        for param in params {
            let parts = param.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            values[String(parts[0])] = String(parts[1])
        }
        let request = RolloutRequest(
            kind: kind, selector: selector, params: values, canary: canary, batch: batch, maxFailures: maxFailures, waitFor: waitFor,
            expiresIn: expiresIn, idempotencyKey: idempotencyKey, createdBy: APIClient.operatorName)
        let created = try await api.post("/v1/rollouts", body: request, as: RolloutCreated.self)
        if options.output == .json { return try Out.json(created) }
        let r = created.rollout
        print("\(created.existing ? "already created: " : "")\(r.id): \(r.kind.rawValue) at \(r.sites.count) sites in \(r.waves) waves (\(r.selector))")
        if !r.skipped.isEmpty { print("  left out (past their deadline): \(r.skipped.map(\.site.rawValue).joined(separator: ", "))") }
        RolloutShow.progress(r)
    }
}

struct RolloutListCommand: ClientCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "Rollouts, newest first.")
    @OptionGroup var options: ClientOptions

    func execute(_ api: APIClient) async throws {
        let list = try await api.get("/v1/rollouts", query: [("limit", "1000")], as: RolloutList.self)
        if options.output == .json { return try Out.json(list.rollouts) }
        if list.rollouts.isEmpty {
            print("no rollouts")
            return
        }
        var table = Table(["ROLLOUT", "KIND", "SELECTOR", "STATE", "WAVE", "DONE", "FAILED", "WAITING", "CREATED"])
        for r in list.rollouts {
            let c = r.counts
            table.add([
                r.id, r.kind.rawValue, Out.clean(r.selector), r.state.rawValue, "\(r.wave + 1)/\(r.waves)", "\(c.succeeded)", "\(c.failed)",
                "\(c.queued + c.dispatching + c.pending)", Out.time(r.createdAt),
            ])
        }
        print(table.render())
    }
}

struct RolloutShow: ClientCommand {
    static let configuration = CommandConfiguration(commandName: "show", abstract: "One rollout: its waves, and each site's operation.")
    @OptionGroup var options: ClientOptions
    @Argument(help: "The rollout id.") var id: String

    func validate() throws { try RolloutAct.check(id) }

    func execute(_ api: APIClient) async throws {
        let r = try await api.get("/v1/rollouts/\(id)", as: Rollout.self)
        if options.output == .json { return try Out.json(r) }
        print("\(r.id): \(r.kind.rawValue) at sites \(r.selector), by \(Out.clean(r.createdBy))")
        Self.progress(r)
        var table = Table(["SITE", "WAVE", "OPERATION", "STATE"])
        for site in r.sites {
            table.add([site.site.rawValue, "\(site.wave + 1)", site.operationID ?? "—", site.skipped.map { "left out: \(Out.clean($0))" } ?? site.state?.rawValue ?? "pending"])
        }
        print(table.render())
        for skip in r.skipped { print("left out: \(skip.site) (\(Out.clean(skip.reason)))") }
    }

    static func progress(_ r: Rollout) {
        let c = r.counts
        print("  \(r.state.rawValue), wave \(r.wave + 1) of \(r.waves)\(r.reason.map { ": \(Out.clean($0))" } ?? "")")
        print("  \(c.succeeded) succeeded · \(c.failed) failed · \(c.queued + c.dispatching) running or queued · \(c.pending) pending · \(c.skipped) left out")
    }
}

enum RolloutAct {
    static func check(_ id: String) throws {
        guard !id.isEmpty, id.count <= 64, id.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-") }) else {
            throw ValidationError("ID: a rollout id such as ro-1a2b3c4d5e6f")
        }
    }

    static func act(_ action: String, _ id: String, _ api: APIClient, _ output: OutputFormat) async throws {
        let r = try await api.post("/v1/rollouts/\(id)/\(action)", body: nil as String?, as: Rollout.self)
        if output == .json { return try Out.json(r) }
        print("\(r.id): \(r.state.rawValue)")
        RolloutShow.progress(r)
    }

    struct Pause: ClientCommand {
        static let configuration = CommandConfiguration(commandName: "pause", abstract: "Start no new wave (what runs goes on).")
        @OptionGroup var options: ClientOptions
        @Argument(help: "The rollout id.") var id: String
        func validate() throws { try RolloutAct.check(id) }
        func execute(_ api: APIClient) async throws { try await RolloutAct.act("pause", id, api, options.output) }
    }

    struct Resume: ClientCommand {
        static let configuration = CommandConfiguration(commandName: "resume", abstract: "Go on with the waves (failures so far no longer count).")
        @OptionGroup var options: ClientOptions
        @Argument(help: "The rollout id.") var id: String
        func validate() throws { try RolloutAct.check(id) }
        func execute(_ api: APIClient) async throws { try await RolloutAct.act("resume", id, api, options.output) }
    }

    struct Cancel: ClientCommand {
        static let configuration = CommandConfiguration(commandName: "cancel", abstract: "Stop it: its waiting operations are cancelled.")
        @OptionGroup var options: ClientOptions
        @Argument(help: "The rollout id.") var id: String
        func validate() throws { try RolloutAct.check(id) }
        func execute(_ api: APIClient) async throws { try await RolloutAct.act("cancel", id, api, options.output) }
    }
}
