import FleetCore
import Foundation
import TestSupport
import Testing

/// `deploy/grafana/edgefleet.json`: importable, every expression parses with promtool, and names
/// only metrics a running aggregator exports.
@Suite("the Grafana dashboard", .timeLimit(.minutes(2)))
struct GrafanaTests {
    @Test("every panel's expression parses with promtool and names only metrics the aggregator exports; the dashboard asks for its data source on import")
    func dashboard() async throws {
        let path = OperatorAPITests.repository + "/deploy/grafana/edgefleet.json"
        let document = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as? [String: Any])
        let inputs = document["__inputs"] as? [[String: Any]] ?? []
        #expect(inputs.contains { $0["name"] as? String == "DS_PROMETHEUS" && $0["pluginId"] as? String == "prometheus" })
        let panels = try #require(document["panels"] as? [[String: Any]])
        var expressions: [String] = []
        for panel in panels {
            let title = panel["title"] as? String ?? "?"
            #expect((panel["datasource"] as? [String: Any])?["uid"] as? String == "${DS_PROMETHEUS}", "\(title): its data source")
            let targets = panel["targets"] as? [[String: Any]] ?? []
            #expect(!targets.isEmpty, "\(title) has no query")
            expressions += targets.compactMap { $0["expr"] as? String }
        }
        // What the issue asks to see: modes, deadlines, the queue, rejects, ingest, the leader.
        for metric in ["edgefleet_sites", "edgefleet_site_deadline_seconds", "edgefleet_operations", "edgefleet_messages_rejected_total",
                       "edgefleet_messages_ingested_total", "edgefleet_leader"] {
            #expect(expressions.contains { $0.contains(metric + " ") || $0.contains(metric + ")") || $0.contains(metric + "{") || $0.contains(metric + "[") }, "no panel shows \(metric)")
        }

        // Each expression as a recording rule: promtool parses them all.
        let promtool = try #require(findExecutable("promtool"), "promtool is missing: .ci/run installs Debian's prometheus package")
        let directory = try temporaryDirectory("edgefleet-grafana")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var rules = "groups:\n  - name: grafana\n    rules:\n"
        for (index, expression) in expressions.enumerated() {
            let quoted = String(decoding: try JSONSerialization.data(withJSONObject: [expression]), as: UTF8.self).dropFirst().dropLast()
            rules += "      - record: edgefleet_grafana_\(index)\n        expr: \(quoted)\n"
        }
        try rules.write(toFile: directory + "/rules.yaml", atomically: true, encoding: .utf8)
        let check = try await runAsync(URL(fileURLWithPath: promtool), ["check", "rules", directory + "/rules.yaml"])
        #expect(check.status == 0 && check.stdout.contains("SUCCESS: \(expressions.count) rules found"), "\(check.stdout) \(check.stderr)")

        // Every metric named is one a running aggregator exports (a histogram's series by their base name).
        let f = try await OperatorFixture.start()
        defer { f.stop() }
        let sites = try await f.fourModes()
        defer { Task { for site in sites { await site.shutdown() } } }
        let text = try await f.get("/metrics").text
        let used = Set(expressions.flatMap { $0.matches(of: /edgefleet_[a-z_]+/).map { String($0.output) } })
        #expect(used.count >= 10)
        for name in used {
            let base = ["_bucket", "_sum", "_count"].first { name.hasSuffix($0) && text.contains("# TYPE \(name.dropLast($0.count)) histogram") }
                .map { String(name.dropLast($0.count)) } ?? name
            #expect(text.contains("# TYPE \(base) "), "the dashboard uses \(name), which /metrics does not export")
        }
    }
}
