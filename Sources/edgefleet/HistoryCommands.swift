import ArgumentParser
import CommandSupport
import FleetCore
import Foundation

/// `edgefleet events`: the stored events, oldest first, paged through the API.
struct EventsCommand: ClientCommand {
    static let configuration = CommandConfiguration(
        commandName: "events", abstract: "Show the fleet's stored events (oldest first): mode changes, deadline alerts, operations.",
        discussion: """
            --since and --until take an RFC 3339 instant or a duration before now (1h, 7d). With --output json, one JSON \
            object per line (the event as published, with its id).
            """)
    @OptionGroup var options: ClientOptions
    @Option(help: "Only this site's events.") var site: String?
    @Option(help: "Only events at or after this (RFC 3339, or a duration before now such as 7d).") var since: String?
    @Option(help: "Only events before this.") var until: String?
    @Option(help: "Only these event types (comma-separated, e.g. mode-changed,deadline-alert).") var type: String?
    @Option(help: "At most this many events (default 500).") var limit: Int = 500

    func validate() throws {
        if let site, let problem = SiteID.problem(with: site) { throw ValidationError("--site: \(problem)") }
        if limit < 1 { throw ValidationError("--limit: at least 1") }
        for name in (type ?? "").split(separator: ",") where FleetEventType(rawValue: String(name)) == nil {
            throw ValidationError("--type: '\(name)' is not an event type (\(FleetEventType.allCases.map(\.rawValue).joined(separator: ", ")))")
        }
    }

    func execute(_ api: APIClient) async throws {
        var shown = 0
        let cursor = try await api.storedEvents(query: [("site", site), ("since", since), ("until", until), ("type", type)], limit: limit) {
            for event in $0 {
                if options.output == .json {
                    print(try FleetJSON.text(event))
                } else {
                    print(WatchCommand.line(event))
                }
            }
            shown += $0.count
        }
        if shown == 0, options.output == .table { printError("no events stored\(since.map { " since \($0)" } ?? "")") }
        if cursor != nil { printError("(more: raise --limit, or narrow with --since/--until)") }
    }
}

/// `edgefleet history`: the fleet over a window.
struct HistoryCommand: ClientCommand {
    static let configuration = CommandConfiguration(
        commandName: "history", abstract: "The fleet over a window: the share of site-hours in each mode, and the sites that used most of their budget.")
    @OptionGroup var options: ClientOptions
    @Option(help: "How far back (default 30d).") var window: String = "30d"
    @Option(help: "How many sites in the ranking (default 20).") var top: Int = 20

    func execute(_ api: APIClient) async throws {
        let history = try await api.get("/v1/history", query: [("window", window), ("top", "\(top)"), ("buckets", "30")], as: FleetHistory.self)
        if options.output == .json { return try Out.json(history) }
        print("\(Terminal.bold("the fleet")) from \(Out.time(history.window.from)) to \(Out.time(history.window.to))")
        var modes = Table(["MODE", "SITE-HOURS", "SHARE"])
        for mode in ConnectivityMode.allCases {
            let seconds = history.modeSeconds[mode.rawValue] ?? 0
            modes.add([Terminal.mode(mode), String(format: "%.1f", seconds / 3600), String(format: "%.2f%%", (history.modeShare[mode.rawValue] ?? 0) * 100)])
        }
        print(modes.render())
        if history.ranking.isEmpty {
            print("\nno site was without Azure in this window")
            return
        }
        print("\nmost of their budget used:")
        var ranking = Table(["SITE", "BUDGET USED", "WITHOUT AZURE", "AT"])
        for peak in history.ranking {
            ranking.add([
                peak.site?.rawValue ?? "-", String(format: "%.1f%%", peak.share * 100), DurationFormat.human(seconds: peak.usedS), Out.time(peak.at),
            ])
        }
        print(ranking.render())
    }
}

/// The site history part of `edgefleet site SITE --history 90d`.
enum SiteHistoryOutput {
    static func print(_ history: SiteHistory) {
        Swift.print("\(Terminal.bold(history.site.rawValue)) from \(Out.time(history.window.from)) to \(Out.time(history.window.to))")
        var modes = Table(["MODE", "TIME", "SHARE"])
        let window = history.window.seconds
        for mode in ConnectivityMode.allCases {
            let seconds = history.modes[mode.rawValue] ?? 0
            modes.add([Terminal.mode(mode), DurationFormat.human(seconds: seconds), String(format: "%.2f%%", window > 0 ? seconds / window * 100 : 0)])
        }
        if history.unrecordedS > 0 { modes.add(["(not recorded)", DurationFormat.human(seconds: history.unrecordedS), ""]) }
        Swift.print(modes.render())
        var facts: [(String, String)] = [
            ("outages", "\(history.outages)" + (history.outagesPastDeadline > 0 ? " (\(history.outagesPastDeadline) past the deadline)" : "")),
        ]
        if let longest = history.longestWithoutAzure {
            facts.append(
                ("longest without Azure", "\(DurationFormat.human(seconds: longest.seconds)) from \(Out.time(longest.from))"
                    + (longest.to.map { " to \(Out.time($0))" } ?? " (still going)")))
        }
        if let peak = history.maxBudgetUsed {
            facts.append(("most budget used", String(format: "%.1f%%", peak.share * 100) + " of \(DurationFormat.human(seconds: peak.budgetS)) at \(Out.time(peak.at))"))
        }
        for (name, value) in facts { Swift.print("  \(name.padding(toLength: 22, withPad: " ", startingAt: 0)) \(value)") }
    }
}
