public import ArgumentParser
import CommandSupport
import FleetCore
import Foundation

#if canImport(Glibc)
import Glibc
#endif

extension ConnectivityMode: ArgumentParser.ExpressibleByArgument {}
extension Liveness: ArgumentParser.ExpressibleByArgument {}
extension OperationState: ArgumentParser.ExpressibleByArgument {}
extension OperationKind: ArgumentParser.ExpressibleByArgument {}

/// `edgefleet ops submit SITE KIND ...`.
struct OpsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ops", abstract: "Ask for an Azure-dependent operation at a site.", subcommands: [SubmitCommand.self])
}

struct SubmitCommand: ClientCommand {
    static let configuration = CommandConfiguration(
        commandName: "submit",
        abstract: "Submit an operation: it runs now if the site is connected, else it waits in the queue.",
        discussion: "Example: edgefleet ops submit store-0042 cluster.upgrade --param kubernetesVersion=1.30.4")
    @OptionGroup var options: ClientOptions
    @Argument(help: "The site id.") var site: String
    @Argument(help: "The operation kind, e.g. cluster.upgrade, nodepool.scale.") var kind: String
    @Option(name: .customLong("param"), help: "A parameter, KEY=VALUE (repeatable).") var params: [String] = []
    @Option(help: "Submitting again with the same key returns the first operation.") var idempotencyKey: String?
    @Option(help: "Give up if it has not run within this long: 36h, 7d.") var expiresIn: String?

    func validate() throws {
        if let problem = SiteID.problem(with: site) { throw ValidationError("SITE: \(problem)") }
        for param in params where !param.contains("=") || param.hasPrefix("=") {
            throw ValidationError("--param: expected KEY=VALUE, got '\(param)'")
        }
        if let expiresIn {
            do { _ = try DurationFormat.parse(expiresIn) } catch { throw ValidationError("--expires-in: \(error.description)") }
        }
    }

    func execute(_ api: APIClient) async throws {
        var values: [String: String] = [:]
        for param in params {
            let parts = param.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            values[String(parts[0])] = String(parts[1])
        }
        let request = SubmitOperationRequest(
            site: site, kind: kind, params: values, idempotencyKey: idempotencyKey, expiresIn: expiresIn, createdBy: APIClient.operatorName)
        let response = try await api.post("/v1/operations", body: request, as: SubmitOperationResponse.self)
        if options.output == .json { return try Out.json(response) }
        let operation = response.operation
        if response.existing {
            print("already submitted: \(operation.id) (\(operation.kind.rawValue) at \(operation.site)) is \(Terminal.state(operation.state))")
        } else {
            print("\(operation.id): \(operation.kind.rawValue) at \(operation.site) \(Terminal.state(operation.state))")
            print("  \(Out.clean(response.reason))")
            if !response.superseded.isEmpty { print("  supersedes \(response.superseded.joined(separator: ", "))") }
            if let deadline = response.deadline, operation.state != .blocked {
                print("  the site's deadline: \(Out.time(deadline))")
            }
        }
    }
}

/// `edgefleet queue ...`.
struct QueueCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "queue", abstract: "Review and manage the deferred-operation queue.",
        subcommands: [QueueList.self, QueueShow.self, QueueCancel.self, QueueRetry.self, QueueRelease.self], defaultSubcommand: QueueList.self)
}

enum QueueTable {
    static func render<S: Sequence<DeferredOperation>>(_ operations: S) -> String {
        var table = Table(["OPERATION", "SITE", "KIND", "STATE", "TRIES", "CREATED", "LAST NOTE"])
        for operation in operations {
            table.add([
                Out.clean(operation.id), operation.site.rawValue, operation.kind.rawValue, Terminal.state(operation.state),
                "\(operation.attempts)/\(operation.maxAttempts)", Out.time(operation.createdAt),
                Out.clean(operation.lastError ?? operation.history.last?.note ?? ""),
            ])
        }
        return table.render()
    }
}

struct QueueList: ClientCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "Operations, oldest first (default: every state).")
    @OptionGroup var options: ClientOptions
    @Option(help: "Only this site's operations.") var site: String?
    @Option(help: "Only operations in this state (queued, dispatching, succeeded, failed, cancelled, expired, blocked, superseded); repeatable.")
    var state: [OperationState] = []
    @Option(help: "Only this kind.") var kind: OperationKind?
    @Option(help: "At most this many (default 1000).") var limit: Int = 1000
    @Option(help: "Only operations at sites whose labels match: region=north,tier!=lab.") var selector: String?

    func validate() throws {
        if let site, let problem = SiteID.problem(with: site) { throw ValidationError("--site: \(problem)") }
        if limit < 1 { throw ValidationError("--limit: must be at least 1") }
        if let selector {
            do { _ = try LabelSelector(parsing: selector) } catch { throw ValidationError("--selector: \(error.description)") }
        }
    }

    func execute(_ api: APIClient) async throws {
        let states = state.isEmpty ? nil : state.map(\.rawValue).joined(separator: ",")
        let pages = try await api.all(
            "/v1/operations", query: [("site", site), ("state", states), ("kind", kind?.rawValue), ("selector", selector)], as: OperationList.self,
            items: { $0.operations.count }, next: { $0.nextCursor }, max: limit)
        let operations = Array(pages.flatMap(\.operations).prefix(limit))
        if options.output == .json { return try Out.json(operations) }
        if operations.isEmpty {
            print("no operations")
            return
        }
        print(QueueTable.render(operations))
    }
}

struct QueueShow: ClientCommand {
    static let configuration = CommandConfiguration(commandName: "show", abstract: "One operation and its whole history.")
    @OptionGroup var options: ClientOptions
    @Argument(help: "The operation id.") var id: String

    func execute(_ api: APIClient) async throws {
        let operation = try await api.get("/v1/operations/\(id)", as: DeferredOperation.self)
        if options.output == .json { return try Out.json(operation) }
        print("\(Terminal.bold(Out.clean(operation.id)))  \(operation.kind.rawValue) at \(operation.site)  \(Terminal.state(operation.state))")
        var facts: [(String, String)] = [
            ("created", "\(Out.time(operation.createdAt)) by \(Out.clean(operation.createdBy))"),
            ("attempts", "\(operation.attempts) of \(operation.maxAttempts)"),
        ]
        if !operation.params.isEmpty {
            facts.append(("params", operation.params.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")))
        }
        if let key = operation.idempotencyKey { facts.append(("idempotency key", key)) }
        if let date = operation.notBefore { facts.append(("not before", Out.time(date))) }
        if let date = operation.expiresAt { facts.append(("expires", Out.time(date))) }
        if let date = operation.nextAttemptAt { facts.append(("next attempt", Out.time(date))) }
        if let error = operation.lastError { facts.append(("last error", error)) }
        for (name, value) in facts { print("  \(name.padding(toLength: 16, withPad: " ", startingAt: 0)) \(Out.clean(value))") }
        print("\nhistory")
        var table = Table(["AT", "FROM", "TO", "NOTE"])
        for entry in operation.history {
            table.add([Out.time(entry.at), entry.from?.rawValue ?? "—", Terminal.state(entry.to), Out.clean(entry.note)])
        }
        print(table.render())
    }
}

struct QueueCancel: ClientCommand {
    static let configuration = CommandConfiguration(
        commandName: "cancel", abstract: "Cancel a queued or blocked operation, or every one at a site (--site).",
        discussion: "With --site it asks for confirmation on a terminal; --yes skips the question (required when not on a terminal).")
    @OptionGroup var options: ClientOptions
    @Argument(help: "The operation id.") var id: String?
    @Option(help: "Cancel every queued and blocked operation at this site.") var site: String?
    @Option(help: "With --site: only this kind.") var kind: OperationKind?
    @Flag(name: [.customShort("y"), .long], help: "Do not ask for confirmation.") var yes = false

    func validate() throws {
        switch (id, site) {
        case (nil, nil): throw ValidationError("name an operation id, or --site SITE to cancel every queued operation at a site")
        case (_?, _?): throw ValidationError("give an operation id or --site, not both")
        default: break
        }
        if let site, let problem = SiteID.problem(with: site) { throw ValidationError("--site: \(problem)") }
        if id != nil && kind != nil { throw ValidationError("--kind goes with --site") }
    }

    func execute(_ api: APIClient) async throws {
        if let id {
            let operation = try await api.post("/v1/operations/\(id)/cancel", body: nil as String?, as: DeferredOperation.self)
            if options.output == .json { return try Out.json(operation) }
            print("\(operation.id): \(Terminal.state(operation.state))")
            return
        }
        guard let site else { return }
        if !yes {
            let pending = try await api.get(
                "/v1/operations", query: [("site", site), ("state", "queued,blocked"), ("kind", kind?.rawValue), ("limit", "1000")],
                as: OperationList.self)
            if pending.operations.isEmpty {
                print("nothing to cancel: no queued or blocked operation at \(site)")
                return
            }
            guard isatty(0) == 1 else {
                throw CLIFailure.usage("refusing to cancel every queued operation at \(site) without confirmation: pass --yes")
            }
            let count = pending.nextCursor == nil ? "\(pending.operations.count)" : "more than \(pending.operations.count)"
            FileHandle.standardError.write(Data("Cancel \(count) queued or blocked \(kind.map { "\($0.rawValue) " } ?? "")operation(s) at \(site)? [y/N] ".utf8))
            let answer = readLine()?.trimmingCharacters(in: .whitespaces).lowercased() ?? ""
            guard answer == "y" || answer == "yes" else {
                print("nothing cancelled")
                throw ExitCode(EdgeFleetExit.failure)
            }
        }
        let response = try await api.post(
            "/v1/operations/cancel", body: BulkCancelRequest(site: site, kind: kind?.rawValue, by: APIClient.operatorName), as: BulkCancelResponse.self)
        if options.output == .json { return try Out.json(response) }
        print("cancelled \(response.count) operation(s) at \(site)" + (response.cancelled.isEmpty ? "" : ": \(response.cancelled.joined(separator: ", "))"))
    }
}

struct QueueRetry: ClientCommand {
    static let configuration = CommandConfiguration(commandName: "retry", abstract: "Queue a failed operation again, with its attempts reset.")
    @OptionGroup var options: ClientOptions
    @Argument(help: "The operation id.") var id: String

    func execute(_ api: APIClient) async throws {
        let operation = try await api.post("/v1/operations/\(id)/retry", body: nil as String?, as: DeferredOperation.self)
        if options.output == .json { return try Out.json(operation) }
        print("\(operation.id): \(Terminal.state(operation.state)) again")
    }
}

struct QueueRelease: ClientCommand {
    static let configuration = CommandConfiguration(
        commandName: "release", abstract: "Release an operation blocked because its site passed its deadline; it runs when the site is connected.")
    @OptionGroup var options: ClientOptions
    @Argument(help: "The operation id.") var id: String

    func execute(_ api: APIClient) async throws {
        let operation = try await api.post("/v1/operations/\(id)/release", body: nil as String?, as: DeferredOperation.self)
        if options.output == .json { return try Out.json(operation) }
        print("\(operation.id): released, \(Terminal.state(operation.state))")
    }
}
