import FleetCore
import Foundation
import TestSupport
import Testing

/// A site exists once it has announced itself; an operator can forget a decommissioned one;
/// the fleet has a cap. Against the real aggregator process, broker and HTTP.
@Suite("sites: announced, capped, forgotten", .timeLimit(.minutes(3)))
struct SiteLifecycleTests {
    func publish(_ f: OperatorFixture, _ topic: String, _ payload: String, retain: Bool = false) async throws {
        let sent = try run(
            try executable("mosquitto_pub"),
            ["-h", "127.0.0.1", "-p", "\(f.fleet.broker.port)", "-q", "1", "-t", topic, "-m", payload] + (retain ? ["-r"] : []))
        #expect(sent.status == 0, "\(sent.stderr)")
    }

    func rejected(_ f: OperatorFixture, _ reason: String) async throws -> Double {
        let text = try await f.get("/metrics").text
        let line = text.split(separator: "\n").first { $0.hasPrefix(#"edgefleet_messages_rejected_total{reason="\#(reason)"}"#) }
        return line.flatMap { Double($0.split(separator: " ").last ?? "") } ?? 0
    }

    @Test("heartbeats and statuses of made-up sites make no site and are counted; a presence beyond maxSites is refused and counted")
    func onlyAnnouncedSites() async throws {
        let f = try await OperatorFixture.start(extra: ["--max-sites", "3"])
        defer { f.stop() }
        let now = RFC3339.format(Date())
        // 50 made-up sites by heartbeat and status alone (before: 50 permanent sites shown online).
        for i in 0..<50 {
            try await publish(f, "edgefleet/v1/sites/made-up-\(i)/heartbeat", #"{"schema":"edgefleet.heartbeat/1","site":"made-up-\#(i)","session":1,"seq":1,"sentAt":"\#(now)","azure":{"reachable":true,"lastContactAgeS":0,"probe":"endpoints"}}"#)
        }
        try await publish(f, "edgefleet/v1/sites/made-up-status/status", #"{"schema":"edgefleet.status/1","site":"made-up-status","session":1,"at":"\#(now)","checks":[],"capabilities":{}}"#)
        try await withTimeout(.seconds(15), "51 unannounced messages counted") {
            while try await rejected(f, "unannounced-site") < 51 { try await Task.sleep(for: .milliseconds(100)) }
        }
        #expect(try await f.get("/v1/fleet").json()["sites"] as? Int == 0)
        #expect(try await f.get("/v1/sites/made-up-1").status == 404)

        // Three announced sites fit; the fourth is refused and counted, and makes no site.
        let sites = try (0..<4).map { try SimulatedSite("capped-\($0)", brokerURL: f.fleet.broker.url, announcedInterval: 3) }
        defer { Task { for site in sites { await site.shutdown() } } }
        for site in sites { try await site.connect() }
        try await withTimeout(.seconds(15), "the fourth presence refused") {
            while try await rejected(f, "site-limit") < 1 { try await Task.sleep(for: .milliseconds(100)) }
        }
        #expect(try await f.get("/v1/fleet").json()["sites"] as? Int == 3)
        #expect(try await f.get("/v1/sites/capped-3").status == 404)
    }

    @Test("forget: refused while operations wait (409), forced cancels them; the view is cleared, the record gone across a restart, its retained presence does not bring it back, its agent does")
    func forget() async throws {
        let f = try await OperatorFixture.start()
        defer { f.stop() }
        let site = try SimulatedSite("old-store", brokerURL: f.fleet.broker.url, announcedInterval: 3)
        site.reportContact(at: Date().addingTimeInterval(-20 * 60))  // semi-connected: operations wait
        try await site.connect()
        try await site.status(cluster: ClusterInfo(name: "aks-old", resourceGroup: "rg"))
        try await site.heartbeat()
        _ = try await f.fleet.messages.view("old-store", "the site semi-connected") { $0.mode == .semiConnected }
        let waiting = try await f.submit("old-store", "extension.install", ["name": "never"])
        await site.shutdown()  // decommissioned: its Last Will says lost, its presence stays retained

        #expect(try await HTTP.request("DELETE", port: f.port, "/v1/sites/old-store").status == 401)
        let refused = try await HTTP.request("DELETE", port: f.port, "/v1/sites/old-store", token: OperatorFixture.token)
        #expect(refused.status == 409 && refused.errorCode == "conflict", "\(refused.text)")
        #expect(try await f.state(waiting) == "queued")
        #expect(try await HTTP.request("DELETE", port: f.port, "/v1/sites/old-store?force=maybe", token: OperatorFixture.token).status == 400)
        #expect(try await HTTP.request("DELETE", port: f.port, "/v1/sites/no-such-site", token: OperatorFixture.token).status == 404)

        // Through the CLI, forced: the waiting operation is cancelled, and the site is gone.
        let unconfirmed = try await f.cli(["site", "forget", "old-store", "--force"])
        #expect(unconfirmed.status == 2 && unconfirmed.stderr.contains("--yes"), "no terminal, no --yes: refused")
        let cli = try await f.cli(["site", "forget", "old-store", "--force", "--yes", "--output", "json"])
        #expect(cli.status == 0, "\(cli.stderr)")
        let answer = try JSONSerialization.jsonObject(with: Data(cli.stdout.utf8)) as? [String: Any]
        #expect(answer?["cancelled"] as? [String] == [waiting])
        #expect(try await f.state(waiting) == "cancelled")
        #expect(try await f.get("/v1/sites/old-store").status == 404)
        _ = try await f.fleet.messages.event("old-store", "site-forgotten") { $0.type == .siteForgotten }
        // The retained view is cleared (an empty retained message).
        _ = try await f.fleet.messages.next("the view cleared") { $0.topic == "edgefleet/v1/fleet/sites/old-store" && $0.payload.isEmpty }
        #expect(try await f.cli(["site", "forget", "old-store", "--yes"]).status == 3, "forgetting it again: not found")

        // A restart reads the record from SQLite no more, and the retained presence replayed on
        // subscribing does not make the site again.
        let restarted = try await f.fleet.restartAggregator(flags: f.flags, environment: f.environment)
        let port = try await OperatorFixture.listeningPort(restarted.aggregator)
        try await Task.sleep(for: .seconds(1))
        #expect(try await HTTP.get(port: port, "/v1/sites/old-store", token: OperatorFixture.token).status == 404)
        // Its agent coming back (a live presence) makes it again.
        let back = try SimulatedSite("old-store", brokerURL: f.fleet.broker.url, announcedInterval: 3)
        try await back.connect()
        defer { Task { await back.shutdown() } }
        try await withTimeout(.seconds(15), "the site made again by its agent") {
            while try await HTTP.get(port: port, "/v1/sites/old-store", token: OperatorFixture.token).status != 200 {
                try await Task.sleep(for: .milliseconds(100))
            }
        }
        await restarted.aggregator.terminateAndWait()
    }
}
