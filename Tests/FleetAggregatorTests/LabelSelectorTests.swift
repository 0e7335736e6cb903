import FleetCore
import Foundation
import TestSupport
import Testing

/// Site labels from the agents, and selectors in every listing: the API, `/metrics`, the CLI and the dashboard.
@Suite("labels and selectors through the real processes", .timeLimit(.minutes(3)))
struct LabelSelectorTests {
    @Test("a real agent's labels reach the aggregator; selectors filter sites, operations, /metrics, the CLI and the dashboard (grouped by a label); bad labels and selectors are refused")
    func selectors() async throws {
        let f = try await OperatorFixture.start()
        defer { f.stop() }
        // Six simulated sites in three regions, two tiers; one real agent with labels from its flag.
        var sites: [SimulatedSite] = []
        defer { Task { [sites] in for site in sites { await site.shutdown() } } }
        let plan: [(String, String, String)] = [
            ("n-1", "north", "store"), ("n-2", "north", "lab"), ("s-1", "south", "store"), ("s-2", "south", "store"), ("w-1", "west", "store"),
            ("w-2", "west", "lab"),
        ]
        for (name, region, tier) in plan {
            let site = try SimulatedSite(name, brokerURL: f.fleet.broker.url, announcedInterval: 3)
            try await site.connect()
            try await site.status(cluster: ClusterInfo(name: "aks-\(name)", resourceGroup: "rg"), labels: ["region": region, "tier": tier])
            site.startBeating()
            sites.append(site)
        }
        let stateDir = try temporaryDirectory("edgefleet-labels-agent")
        defer { try? FileManager.default.removeItem(atPath: stateDir) }
        let agent = try AgentProcess(
            site: "agent-east", broker: f.fleet.broker, stateDir: stateDir, extra: ["--labels", "region=east,tier=store,edgefleet.io/owner=ops"])
        defer { _ = agent.terminate() }
        try await withTimeout(.seconds(30), "every site's labels") {
            while true {
                let list = try await f.get("/v1/sites?limit=100").json()["sites"] as? [[String: Any]] ?? []
                if list.filter({ ($0["labels"] as? [String: String])?["region"] != nil }).count == 7 { return }
                try await Task.sleep(for: .milliseconds(200))
            }
        }
        func matching(_ selector: String) async throws -> [String] {
            let response = try await f.get("/v1/sites?selector=\(selector)")
            #expect(response.status == 200, "\(selector): \(response.text)")
            return ((try response.json()["sites"] as? [[String: Any]]) ?? []).compactMap { $0["site"] as? String }.sorted()
        }
        #expect(try await matching("region%3Dnorth") == ["n-1", "n-2"])
        #expect(try await matching("tier%3Dstore%2Cregion!%3Dsouth") == ["agent-east", "n-1", "w-1"])
        #expect(try await matching("tier!%3Dlab") == ["agent-east", "n-1", "s-1", "s-2", "w-1"])
        #expect(try await matching("edgefleet.io%2Fowner%3Dops") == ["agent-east"])
        #expect(try await matching("region%3Dnowhere") == [])
        let agentView = try await f.get("/v1/sites/agent-east").json()
        #expect(((agentView["view"] as? [String: Any])?["labels"] as? [String: String]) == ["region": "east", "tier": "store", "edgefleet.io/owner": "ops"])
        for bad in ["region", "region%3Dno%20rth", "%2C"] {
            let refused = try await f.get("/v1/sites?selector=\(bad)")
            #expect(refused.status == 400 && refused.errorCode == "bad-request", "\(bad): \(refused.status)")
        }

        // Operations by selector: those at the matching sites only.
        var ids: [String: String] = [:]
        for (name, _, _) in plan { ids[name] = try await f.submit(name, "extension.install", ["name": "m-\(name)"], extra: #", "notBefore": "2099-01-01T00:00:00Z""#) }
        let north = try await f.get("/v1/operations?selector=region%3Dnorth&limit=100").json()["operations"] as? [[String: Any]] ?? []
        #expect(Set(north.compactMap { $0["site"] as? String }) == ["n-1", "n-2"] && north.count == 2)

        // /metrics: the per-site lines of the matching sites only.
        let metrics = try await f.get("/metrics?selector=region%3Dwest").text
        let deadlineLines = metrics.split(separator: "\n").filter { $0.hasPrefix("edgefleet_site_deadline_seconds{") }
        #expect(!deadlineLines.isEmpty && deadlineLines.allSatisfy { $0.contains("site=\"w-") }, "\(deadlineLines)")
        #expect(try await f.get("/metrics?selector=bad").status == 400)

        // The CLI.
        let cli = try await f.cli(["sites", "--selector", "region=south", "--output", "json"])
        #expect(cli.status == 0, "\(cli.stderr)")
        let listed = try JSONSerialization.jsonObject(with: Data(cli.stdout.utf8)) as? [[String: Any]] ?? []
        #expect(listed.compactMap { $0["site"] as? String }.sorted() == ["s-1", "s-2"])
        let table = try await f.cli(["sites", "--selector", "tier=lab"])
        #expect(table.stdout.contains("n-2") && table.stdout.contains("w-2") && !table.stdout.contains("s-1") && table.stdout.contains("region=west"))
        let queue = try await f.cli(["queue", "list", "--selector", "region=west"])
        #expect(queue.status == 0 && queue.stdout.contains(ids["w-1"]!) && !queue.stdout.contains(ids["n-1"]!))
        #expect(try await f.cli(["sites", "--selector", "region"]).status == 2)

        // The dashboard: filtered, and grouped by a label with each group's count.
        let page = try await HTTP.get(port: f.port, "/?selector=tier%3Dstore&group=region", token: OperatorFixture.token)
        #expect(page.status == 200)
        for group in ["region=east", "region=north", "region=south", "region=west"] { #expect(page.text.contains(group), "\(group)") }
        #expect(page.text.contains("data-site='s-2'") && !page.text.contains("data-site='n-2'"))
        #expect(try await HTTP.get(port: f.port, "/?group=bad%20key", token: OperatorFixture.token).status == 400)

        // A status with labels no agent could send is refused whole (counted as a reject).
        @Sendable func rejected() async throws -> Double {
            let text = try await f.get("/metrics").text
            let line = text.split(separator: "\n").first { $0.hasPrefix(#"edgefleet_messages_rejected_total{reason="invalid-payload"}"#) }
            return line.flatMap { Double($0.split(separator: " ").last ?? "") } ?? 0
        }
        let before = try await rejected()
        let forged = SiteStatus(site: try SiteID("n-1"), session: 1, at: Date(), labels: ["region": "north; rm -rf /"])
        let sent = try await runAsync(
            try executable("mosquitto_pub"),
            ["-h", "127.0.0.1", "-p", "\(f.fleet.broker.port)", "-q", "1", "-t", "edgefleet/v1/sites/n-1/status", "-m",
             String(decoding: try FleetJSON.encode(forged), as: UTF8.self)])
        #expect(sent.status == 0)
        try await withTimeout(.seconds(10), "the reject to be counted") {
            while try await rejected() <= before { try await Task.sleep(for: .milliseconds(200)) }
        }
        #expect(try await matching("region%3Dnorth") == ["n-1", "n-2"])
    }
}
