import FleetCore
import Foundation
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Stored events and history with the real aggregator, broker, CLI and simulator.
@Suite("the fleet's history: stored events, watch --since, a scripted site")
struct HistoryProcessTests {
    /// Every stored event, paged through the API `limit` at a time.
    static func allEvents(_ port: Int, query: String = "", limit: Int = 7) async throws -> [FleetEvent] {
        var events: [FleetEvent] = []
        var cursor: String?
        repeat {
            let target = "/v1/events?limit=\(limit)" + query + (cursor.map { "&cursor=\($0)" } ?? "")
            let response = try await HTTP.get(port: port, target, token: OperatorFixture.token)
            guard response.status == 200 else { throw TestSupportError("\(target): \(response.status) \(response.text)") }
            let page = try FleetJSON.decode(EventPage.self, from: Array(response.text.utf8))
            events += page.events
            cursor = page.nextCursor
        } while cursor != nil
        return events
    }

    @Test("events are stored with the id they are published with, paged by cursor, filtered; they survive a SIGKILL and a restart")
    func survivesRestart() async throws {
        let f = try await OperatorFixture.start()
        defer { f.stop() }
        let sites = try await f.fourModes()
        defer { for site in sites { Task { await site.shutdown() } } }
        for n in 0..<3 { _ = try await f.submit("site-connected", "extension.install", ["name": "ext-\(n)"]) }
        let before = try await withTimeout(.seconds(20), "three operation-queued events stored") { () -> [FleetEvent] in
            while true {
                let events = try await Self.allEvents(f.port)
                if events.filter({ $0.type == .operationQueued }).count == 3 { return events }
                try await Task.sleep(for: .milliseconds(100))
            }
        }
        let ids = before.compactMap(\.id)
        #expect(ids.count == before.count && ids == ids.sorted() && Set(ids).count == ids.count)
        // Every site's first mode is stored (no `from`), with the contact it had.
        for site in ["site-connected", "site-semi", "site-gone", "site-new"] {
            #expect(before.contains { $0.site?.rawValue == site && $0.type == .modeChanged && $0.from == nil }, "\(site)")
        }
        // What went out live carries the same id as what was stored.
        // (Stored first, then published: the live ones may still be on their way.)
        let live = try await withTimeout(.seconds(10), "the live events") { () -> [FleetEvent] in
            while true {
                let live = f.fleet.messages.events("site-connected").filter { $0.type == .operationQueued }
                if live.count >= 3 { return live }
                try await Task.sleep(for: .milliseconds(50))
            }
        }
        #expect(live.count == 3 && live.allSatisfy { event in before.contains { $0.id == event.id && $0.operationID == event.operationID } })
        // Filters.
        let semi = try await Self.allEvents(f.port, query: "&site=site-semi&type=mode-changed")
        #expect(!semi.isEmpty && semi.allSatisfy { $0.site?.rawValue == "site-semi" && $0.type == .modeChanged })
        #expect(try await f.get("/v1/events?type=no-such-type").status == 400)
        #expect(try await f.get("/v1/events?since=yesterday-ish").status == 400)
        #expect(try await f.get("/v1/events?cursor=-4").status == 400)
        #expect(try await f.get("/v1/events", token: nil).status == 401)

        // SIGKILL: what was stored is there after the restart, and new events come after it.
        f.fleet.aggregator.kill()
        let again = try await f.fleet.restartAggregator(flags: f.flags, environment: f.environment)
        defer { _ = again.aggregator.terminate() }
        let port = try await OperatorFixture.listeningPort(again.aggregator)
        let submitted = try await HTTP.post(
            port: port, "/v1/operations", token: OperatorFixture.token, json: #"{"site": "site-semi", "kind": "extension.install", "params": {"name": "after"}}"#)
        #expect(submitted.status == 201)
        let after = try await withTimeout(.seconds(20), "the new event stored") { () -> [FleetEvent] in
            while true {
                let events = try await Self.allEvents(port, limit: 1000)
                if events.contains(where: { $0.type == .operationQueued && $0.site?.rawValue == "site-semi" }) { return events }
                try await Task.sleep(for: .milliseconds(100))
            }
        }
        #expect(Array(after.prefix(before.count)) == before)
        let newest = try #require(after.last { $0.site?.rawValue == "site-semi" && $0.type == .operationQueued })
        #expect((newest.id ?? 0) > (ids.last ?? .max))

        // The CLI: the same events, one line each (or one JSON object per line).
        let cli = try await f.cli(["events", "--server", "http://127.0.0.1:\(port)", "--site", "site-connected", "--output", "json"])
        #expect(cli.status == 0, "\(cli.stderr)")
        let printed = try cli.stdout.split(separator: "\n").map { try FleetJSON.decode(FleetEvent.self, from: Array($0.utf8)) }
        // (The site keeps beating: under load it may change mode again after `after` was read.)
        let lastRead = after.last?.id ?? 0
        #expect(printed.filter { ($0.id ?? 0) <= lastRead } == after.filter { $0.site?.rawValue == "site-connected" })
        // One line per stored operation-queued event: the three, the one after the restart, and one more when an
        // operation was running at the SIGKILL (the restart queues it again, "it runs again (at least once)").
        let table = try await f.cli(["events", "--server", "http://127.0.0.1:\(port)", "--type", "operation-queued", "--since", "1h"])
        let queued = after.filter { $0.type == .operationQueued }
        #expect(queued.count == 4 || (queued.count == 5 && queued.contains { $0.note?.contains("runs again") == true }), "\(queued)")
        #expect(table.status == 0 && table.stdout.split(separator: "\n").count == queued.count, "\(table.stdout)")
        #expect(try await f.cli(["events", "--server", "http://127.0.0.1:\(port)", "--type", "bogus"]).status == 2)
    }

    @Test("watch --since replays the stored events, then follows live ones: every event exactly once, none missed at the seam")
    func watchSeam() async throws {
        let f = try await OperatorFixture.start()
        defer { f.stop() }
        // Enough stored events that the replay takes several pages, and events coming fast (four
        // submitters) while the watcher subscribes, reads the stored ones and joins the live ones:
        // some are published between the subscription and the end of the replay, and arrive both ways.
        try await withThrowingTaskGroup(of: Void.self) { group in
            for worker in 0..<4 {
                group.addTask {
                    for n in 0..<100 {
                        // Under the whole suite the aggregator has closed a connection without an answer
                        // ("no HTTP head"; see the notes): try such a request again. A submission made
                        // twice only adds events, which this test does not count exactly.
                        for attempt in 0..<3 {
                            do {
                                _ = try await f.submit("seam-\(worker)", "extension.install", ["name": "before-\(n)"])
                                break
                            } catch where attempt < 2 {
                                try await Task.sleep(for: .milliseconds(200))
                            }
                        }
                    }
                }
            }
            try await group.waitForAll()
        }
        let generator = Task {
            await withTaskGroup(of: Int.self) { group in
                for worker in 0..<4 {
                    group.addTask {
                        var n = 0
                        while !Task.isCancelled {
                            _ = try? await f.submit("seam-\(worker)", "extension.install", ["name": "during-\(n)"])
                            n += 1
                            try? await Task.sleep(for: .milliseconds(5))  // fast, not flat out: other tests share the machine
                        }
                        return n
                    }
                }
                return await group.reduce(0, +)
            }
        }
        let output = f.directory + "/watch.out"
        var environment = ProcessInfo.processInfo.environment
        environment["EDGEFLEET_SERVER"] = "http://127.0.0.1:\(f.port)"
        environment["EDGEFLEET_TOKEN"] = OperatorFixture.token
        let watcher = try ChildProcess(
            try builtProduct("edgefleet").path, ["watch", "--broker", f.fleet.broker.url, "--since", "1h", "--output", "json"], outputPath: output,
            errorPath: f.directory + "/watch.err", environment: environment)
        defer {
            watcher.signal(SIGTERM)
            watcher.wait()
        }
        do {
            try await withTimeout(.seconds(20), "watch to follow live events") {
                while (try? String(contentsOfFile: f.directory + "/watch.err", encoding: .utf8))?.contains("watching") != true {
                    try await Task.sleep(for: .milliseconds(50))
                }
            }
        } catch {
            Issue.record("watch said: \((try? String(contentsOfFile: f.directory + "/watch.err", encoding: .utf8)) ?? "")")
            throw error
        }
        try await Task.sleep(for: .seconds(1))  // live events for a while (the generator's pace, not a wait for a result)
        generator.cancel()
        let during = await generator.value
        #expect(during > 10)
        let stored = try await Self.allEvents(f.port, limit: 1000)
        let last = try #require(stored.last?.id)
        let printed = try await withTimeout(.seconds(20), "watch to print the last stored event") { () -> [FleetEvent] in
            while true {
                let text = (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
                let events = text.split(separator: "\n").compactMap { try? FleetJSON.decode(FleetEvent.self, from: Array($0.utf8)) }
                if events.contains(where: { $0.id == last }) { return events }
                try await Task.sleep(for: .milliseconds(100))
            }
        }
        let ids = printed.compactMap(\.id)
        #expect(ids.count == printed.count, "every event printed has an id")
        #expect(Set(ids).count == ids.count, "an event printed twice: \(ids)")
        #expect(ids == ids.sorted(), "out of order: \(ids)")
        // Up to the last one stored when the test looked (the last submissions' events may be
        // stored and printed after it).
        let upToLast = ids.filter { $0 <= last }
        #expect(upToLast == stored.compactMap(\.id), "missed: \(Set(stored.compactMap(\.id)).subtracting(ids).sorted())")
        #expect(printed.filter { $0.type == .operationQueued }.count >= 400 + during)
    }

    @Test("a scripted site's history (two outages, one past a short budget) matches the script to the second")
    func scriptedSite() async throws {
        // 2 s to semi-connected, a 12 s budget.
        let f = try await OperatorFixture.start(thresholds: [
            "--connected-within", "2s", "--budget", "12s", "--warn-before", "4s", "--critical-before", "2s", "--stable-for", "500ms",
        ])
        defer { f.stop() }
        let scenario = f.directory + "/scenario.yaml"
        try """
            sites: 1
            prefix: hist
            heartbeatInterval: 500ms
            events:
              - {at: 4s, ids: [hist-001], lose: true}
              - {at: 9s, ids: [hist-001], restore: true}
              - {at: 12s, ids: [hist-001], lose: true}
              - {at: 28s, ids: [hist-001], restore: true}
            """.write(toFile: scenario, atomically: true, encoding: .utf8)
        let simulator = try ChildProcess(
            try builtProduct("edgefleet").path, ["simulate", "--broker", f.fleet.broker.url, "--scenario", scenario], outputPath: f.directory + "/simulate.log")
        defer {
            simulator.signal(SIGTERM)
            _ = simulator.wait()
        }
        let history = try await withTimeout(.seconds(60), "the second outage to end") { () -> SiteHistory in
            while true {
                let response = try await f.get("/v1/sites/hist-001/history?window=1h")
                if response.status == 200 {
                    let history = try FleetJSON.decode(SiteHistory.self, from: Array(response.text.utf8))
                    if history.outages == 2, history.spans.last?.mode == .connected { return history }
                }
                try await Task.sleep(for: .milliseconds(250))
            }
        }
        func near(_ value: Double?, _ expected: Double, _ what: String) {
            #expect(abs((value ?? .nan) - expected) < 0.5, "\(what): \(value ?? .nan), scripted \(expected)")
        }
        // Outage 1: contact lost at 4 s, back at 9 s (semi-connected 6–9 s). Outage 2: lost at
        // 12 s, semi-connected from 14 s, past the deadline at 24 s, back at 28 s.
        near(history.modes["semi-connected"], 3 + 10, "semi-connected")
        near(history.modes["disconnected"], 4, "disconnected")
        #expect(history.outagesPastDeadline == 1)
        let longest = try #require(history.longestWithoutAzure)
        near(longest.seconds, 16, "the longest stretch without Azure")
        #expect(longest.pastDeadline)
        let peak = try #require(history.maxBudgetUsed)
        near(peak.budgetS, 12, "the budget")
        near(peak.usedS, 16, "the budget used at its peak")
        #expect(abs(peak.share - 16.0 / 12.0) < 0.05)
        near(peak.at.timeIntervalSince(longest.from), 16, "when the peak came")
        // The spans, relative to the first loss of contact.
        let spans = history.spans
        #expect(spans.map(\.mode) == [.unknown, .connected, .semiConnected, .connected, .semiConnected, .disconnected, .connected].suffix(spans.count))
        let firstLoss = try #require(spans.first { $0.mode == .semiConnected }?.contactAt)
        let starts = spans.drop { $0.mode != .semiConnected }.map { $0.from.timeIntervalSince(firstLoss) }
        for (got, scripted) in zip(starts, [2.0, 5, 10, 20, 24]) { near(got, scripted, "a span's start") }

        // The CLI says the same.
        let cli = try await f.cli(["site", "hist-001", "--history", "1h"])
        #expect(cli.status == 0, "\(cli.stderr)")
        #expect(cli.stdout.contains("outages") && cli.stdout.contains("2 (1 past the deadline)"), "\(cli.stdout)")
        #expect(cli.stdout.contains("longest without Azure"), "\(cli.stdout)")
        // The fleet: the scripted site tops the ranking (16 s of a 12 s budget), and the share of site-time.
        let fleet = try await f.cli(["history", "--window", "1h", "--output", "json"])
        #expect(fleet.status == 0, "\(fleet.stderr)")
        let fleetHistory = try FleetJSON.decode(FleetHistory.self, from: Array(fleet.stdout.utf8))
        let top = try #require(fleetHistory.ranking.first)
        #expect(top.site?.rawValue == "hist-001" && abs(top.share - 16.0 / 12.0) < 0.05, "\(top)")
        #expect(abs((fleetHistory.modeSeconds["disconnected"] ?? 0) - 4) < 0.5)
        let table = try await f.cli(["history", "--window", "1h"])
        #expect(table.status == 0 && table.stdout.contains("hist-001") && table.stdout.contains("semi-connected"), "\(table.stdout)")
        let tooLong = try await f.get("/v1/sites/hist-001/history?window=500d")
        #expect(tooLong.status == 400 && tooLong.text.contains("kept"), "\(tooLong.text)")
        #expect(try await f.get("/v1/sites/no-such-site/history").status == 404)
        #expect(try await f.get("/v1/sites/hist-001/history?window=soon").status == 400)
    }
}
