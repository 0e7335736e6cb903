public import ArgumentParser
import CommandSupport
import FleetCore
import Foundation
import Principals

extension Role: ArgumentParser.ExpressibleByArgument {}

/// `edgefleet token ...`: principals and their tokens.
struct TokenCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "token", abstract: "Manage who may use the aggregator's API (the principals file).", subcommands: [TokenAdd.self])
}

struct TokenAdd: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "add",
        abstract: "Add a principal with a new token: the token is printed once, only its SHA-256 is kept in FILE.",
        discussion: """
            Roles: viewer (reads), operator (submits, cancels, retries; rollouts), admin (also releases operations past a \
            site's deadline, cancels in bulk, forgets a site). The aggregator reads FILE again when it changes \
            (edgefleet-aggregator --principals FILE). Example: edgefleet token add alice operator --principals /etc/edgefleet/principals.yaml
            """)
    @Argument(help: "The principal's name: letters, digits, '.', '_', '@', '-' (recorded in histories and the audit log).") var name: String
    @Argument(help: "viewer, operator or admin.") var role: Role
    @Option(help: "The principals file (created, readable by its owner only, if it does not exist).") var principals: String

    func validate() throws {
        if !Principal.isValidName(name) {
            throw ValidationError("NAME: 1 to 64 letters, digits, '.', '_', '@' or '-', starting with a letter or digit")
        }
    }

    func run() throws {
        do {
            let file = FileManager.default.fileExists(atPath: principals) ? try PrincipalsFile.read(path: principals) : PrincipalsFile()
            let (updated, token) = try file.adding(name: name, role: role)
            try updated.write(to: principals)
            printError("added \(name) (\(role.rawValue)) to \(principals); the token is shown once, keep it in a secret store:")
            print(token)
        } catch {
            printError("edgefleet: \(error)")
            throw ExitCode(EdgeFleetExit.failure)
        }
    }
}

/// `edgefleet audit`: every change asked of the API, newest first.
struct AuditCommand: ClientCommand {
    static let configuration = CommandConfiguration(
        commandName: "audit", abstract: "Show the audit log: who changed what, when, from which address (newest first).")
    @OptionGroup var options: ClientOptions
    @Option(help: "Only this principal's changes.") var principal: String?
    @Option(help: "How many entries (at most 1000).") var limit: Int = 50

    func validate() throws {
        if !(1...1000).contains(limit) { throw ValidationError("--limit: 1 to 1000") }
        if let principal, !Principal.isValidName(principal) { throw ValidationError("--principal: not a principal's name") }
    }

    func execute(_ api: APIClient) async throws {
        let page = try await api.get("/v1/audit", query: [("limit", "\(limit)"), ("principal", principal)], as: AuditPage.self)
        if options.output == .json { return try Out.json(page) }
        if page.entries.isEmpty {
            print("no changes recorded")
            return
        }
        var table = Table(["WHEN", "PRINCIPAL", "ROLE", "FROM", "ACTION", "TARGET", "STATUS", "DETAIL"])
        for entry in page.entries {
            let who = entry.principal + (entry.onBehalfOf.map { " (for \(Out.clean($0)))" } ?? "")
            table.add([
                Out.time(entry.at), who, entry.role, entry.address, entry.action, Out.clean(entry.target ?? "-"), "\(entry.status)",
                Out.clean(entry.detail ?? ""),
            ])
        }
        print(table.render())
    }
}
