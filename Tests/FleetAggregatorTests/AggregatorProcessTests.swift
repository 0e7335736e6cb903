import FleetCore
import Foundation
import MQTT
import TestSupport
import Testing

/// The real aggregator binary against a real broker, with thresholds in seconds.
@Suite("the aggregator process: modes, countdowns, events, restarts", .timeLimit(.minutes(3)))
struct AggregatorProcessTests {
    @Test("connected, then semi-connected counting down, then disconnected at the deadline; each event once")
    func countdown() async throws {
        let fleet = try await AggregatorFixture.start()
        defer { fleet.stop() }
        let (broker, messages, aggregator) = (fleet.broker, fleet.messages, fleet.aggregator)

        let site = try SimulatedSite("store-0042", brokerURL: broker.url)
        try await site.connect()
        site.startBeating()
        let connected = try await messages.view("store-0042", "the site connected") { $0.mode == .connected }
        #expect(connected.liveness == .online && connected.deadlineReason == .budget && !connected.projected)

        let lastContact = try #require(site.loseAzure())
        let semi = try await messages.view("store-0042", "semi-connected") { $0.mode == .semiConnected }
        // Semi-connected once the reported contact is connectedWithin old (the aggregator's
        // receive time minus the age: a few ms of transit either way).
        #expect(semi.modeSince.map { $0.timeIntervalSince(lastContact) >= Short.connectedWithin - 0.05 } == true)
        // The retained view keeps counting down while the site is semi-connected.
        let later = try await messages.view("store-0042", "a refreshed countdown") {
            $0.mode == .semiConnected && ($0.remainingS ?? .infinity) < (semi.remainingS ?? 0) - 0.5
        }
        // The same deadline (receive time minus age moves by the transit time, a few ms).
        #expect(abs((later.deadline ?? .distantPast).timeIntervalSince(semi.deadline ?? .distantFuture)) < 0.05)

        let disconnected = try await messages.event("store-0042", timeout: .seconds(20), "the mode change to disconnected") {
            $0.type == .modeChanged && $0.to == "disconnected"
        }
        let final = try await messages.view("store-0042", "the disconnected view") { $0.mode == .disconnected }
        let deadline = try #require(final.deadline)
        #expect(abs(deadline.timeIntervalSince(semi.deadline ?? .distantPast)) < 0.05)
        #expect(disconnected.at >= deadline, "turned disconnected before its deadline")
        #expect(disconnected.at.timeIntervalSince(deadline) < 1.0, "turned disconnected late")
        #expect(final.alert == .expired && (final.remainingS ?? 1) <= 0)

        // Stop the site and let the aggregator publish anything it still would.
        site.stopBeating()
        _ = try await messages.view("store-0042", "a view after the site went quiet") { $0.liveness != .online }
        let events = messages.events("store-0042")
        let modeChanges = events.filter { $0.type == .modeChanged }.map { "\($0.from ?? "-")->\($0.to ?? "-")" }
        // Presence comes before the first heartbeat, so the site is first known without a contact.
        #expect(modeChanges == ["-->unknown", "unknown->connected", "connected->semi-connected", "semi-connected->disconnected"])
        #expect(events.filter { $0.type == .deadlineAlert }.compactMap(\.level) == [.warning, .critical, .expired])
        await site.shutdown()
        #expect(await aggregator.terminateAndWait() == 0, "\(aggregator.output)")
    }

    @Test("a certificate that expires before the budget runs out sets the deadline")
    func certificateFirst() async throws {
        let fleet = try await AggregatorFixture.start()
        defer { fleet.stop() }
        let (broker, messages) = (fleet.broker, fleet.messages)

        let site = try SimulatedSite("store-cert", brokerURL: broker.url)
        // Well before the budget (12 s after the contact), late enough that a loaded machine
        // shows the site before it (it once failed on a fresh clone with 4 s).
        let expiry = Date().addingTimeInterval(8)
        site.setCertificateExpiry(expiry)
        try await site.connect()
        site.startBeating()
        let view = try await messages.view("store-cert", "the site's first contact") { $0.deadline != nil }
        #expect(view.deadlineReason == .certificate)
        #expect(abs((view.deadline ?? .distantPast).timeIntervalSince(expiry)) < 0.01)
        // Azure is still reachable, yet the certificate ends the cluster's support.
        let event = try await messages.event("store-cert", timeout: .seconds(30), "disconnected by the certificate") {
            $0.type == .modeChanged && $0.to == "disconnected"
        }
        // Not the budget: that ends 12 s after the contact, the certificate 8 s after it. (On a loaded
        // machine a late heartbeat may make the site semi-connected for a moment first, so the
        // event's `from` is not what this checks: when it came is.)
        #expect(event.to == "disconnected")
        #expect(event.at >= expiry.addingTimeInterval(-0.001), "disconnected before the certificate expired")
        #expect(event.at.timeIntervalSince(expiry) < 3, "disconnected \(event.at.timeIntervalSince(expiry)) s after the expiry")
        await site.shutdown()
    }

    @Test("a dead agent goes stale, then offline, and still turns disconnected on time across an aggregator restart")
    func deadAgentAndRestart() async throws {
        let broker = try await MosquittoBroker.start()
        defer { broker.stop() }
        let proxy = try TCPProxy(upstreamPort: broker.port)
        defer { proxy.stop() }
        let directory = try temporaryDirectory("edgefleet-aggregator")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let database = directory + "/fleet.sqlite"
        let (observer, messages) = try await fleetObserver(broker)
        var aggregator = try AggregatorProcess(broker: broker, database: database)
        try await messages.aggregatorOnline()

        let site = try SimulatedSite("store-dark", brokerURL: proxy.url)
        try await site.connect()
        site.startBeating()
        let connected = try await messages.view("store-dark", "the site connected") { $0.mode == .connected }
        #expect(!connected.projected)

        // The agent hangs (no heartbeats, connection still open): stale after 3 intervals.
        site.stopBeating()
        // The stale view that follows the last heartbeat (on a loaded machine a late heartbeat
        // can make the site stale for a moment earlier too).
        let stale = try await messages.view("store-dark", "stale") { view in
            view.liveness == .stale
                && (view.lastHeartbeatAt ?? .distantPast) >= (site.lastHeartbeatSent ?? .distantFuture).addingTimeInterval(-0.002)
        }
        let lastBeat = try #require(site.lastHeartbeatSent)
        #expect(stale.projected)
        #expect(Date().timeIntervalSince(lastBeat) >= 3 * Short.heartbeat - 0.1, "stale before 3 silent intervals")
        // Then it dies: the broker sends its Last Will, and the site is offline at once.
        proxy.cutAll()
        // (The offline view after heartbeats: on a loaded machine the aggregator may have read the
        // first presence so late that the site's very first view was already offline.)
        let offline = try await messages.view("store-dark", "offline") { $0.liveness == .offline && $0.lastHeartbeatAt != nil }
        #expect(offline.projected)
        let deadline = try #require(offline.deadline)

        // Restart the aggregator before the deadline; the new one must keep the countdown.
        #expect(await aggregator.terminateAndWait() == 0, "\(aggregator.output)")
        _ = try await messages.next("the aggregator's shutdown presence") {
            $0.topic == "edgefleet/v1/aggregator/presence" && (try? FleetJSON.decode(Presence.self, from: $0.payload))?.reason == .shutdown
        }
        #expect(Date() < deadline, "the test was too slow to restart before the deadline")
        aggregator = try AggregatorProcess(broker: broker, database: database)
        defer { aggregator.terminate() }
        try await messages.aggregatorOnline()

        let disconnected = try await messages.event("store-dark", timeout: .seconds(20), "disconnected after the restart") {
            $0.type == .modeChanged && $0.to == "disconnected"
        }
        #expect(disconnected.at >= deadline && disconnected.at.timeIntervalSince(deadline) < 1.0)
        let view = try await messages.view("store-dark", "the projected disconnected view") { $0.mode == .disconnected }
        #expect(view.projected && view.liveness == .offline && view.deadline == deadline)
        await site.shutdown()
        await observer.shutdown()
    }

    @Test("driven by mosquitto_pub and read back with mosquitto_sub: the contract holds for a client we did not write")
    func mosquittoClients() async throws {
        // Thresholds long enough that a loaded machine cannot turn the site semi-connected before it is read.
        let fleet = try await AggregatorFixture.start(flags: [
            "--connected-within", "60s", "--budget", "12m", "--warn-before", "8m", "--critical-before", "4m",
            "--summary-interval", "200ms", "--flush-interval", "200ms",
        ])
        defer { fleet.stop() }
        let (broker, aggregator) = (fleet.broker, fleet.aggregator)

        let pub = try executable("mosquitto_pub")
        let sub = try executable("mosquitto_sub")
        let now = RFC3339.format(Date())
        let heartbeat = """
            {"schema":"edgefleet.heartbeat/1","site":"pub-site","session":3,"seq":1,"sentAt":"\(now)",\
            "azure":{"reachable":false,"lastContactAgeS":1.5,"probe":"command"}}
            """
        let presence = #"{"schema":"edgefleet.presence/1","site":"pub-site","state":"online","session":3,"at":"\#(now)"}"#
        let announced = try await runAsync(pub, ["-h", "127.0.0.1", "-p", "\(broker.port)", "-q", "1", "-r", "-t", "edgefleet/v1/sites/pub-site/presence", "-m", presence])
        #expect(announced.status == 0, "\(announced.stderr)")
        let published = try await runAsync(pub, ["-h", "127.0.0.1", "-p", "\(broker.port)", "-q", "1", "-t", "edgefleet/v1/sites/pub-site/heartbeat", "-m", heartbeat])
        #expect(published.status == 0, "\(published.stderr)")
        // The retained view is there for a late subscriber; -C 1 takes the first message.
        // (The presence alone already made a view, mode unknown: read until the heartbeat's is there.)
        let viewText = try await withTimeout(.seconds(15), "the retained view after the heartbeat") { () -> String in
            while true {
                let read = try await runAsync(sub, ["-h", "127.0.0.1", "-p", "\(broker.port)", "-t", "edgefleet/v1/fleet/sites/pub-site", "-C", "1", "-W", "10"])
                #expect(read.status == 0, "mosquitto_sub got nothing: \(read.stderr)\n\(aggregator.output)")
                let view = try JSONSerialization.jsonObject(with: Data(read.stdout.utf8)) as? [String: Any]
                if view?["mode"] as? String != "unknown" { return read.stdout }
                try await Task.sleep(for: .milliseconds(100))
            }
        }
        let view = try JSONSerialization.jsonObject(with: Data(viewText.utf8)) as? [String: Any]
        #expect(view?["schema"] as? String == "edgefleet.site/1")
        #expect(view?["site"] as? String == "pub-site")
        #expect(view?["mode"] as? String == "connected")
        #expect(view?["deadlineReason"] as? String == "budget")
        let remaining = view?["remainingS"] as? Double ?? 0
        #expect(remaining > 720 - 1.5 - 5 && remaining <= 720 - 1.5)
        // The summary is coalesced (every 200 ms here): read the retained one until it shows the site.
        let modes = try await withTimeout(.seconds(10), "a fleet summary with the site") {
            while true {
                let summary = try await runAsync(sub, ["-h", "127.0.0.1", "-p", "\(broker.port)", "-t", "edgefleet/v1/fleet/status", "-C", "1", "-W", "10"])
                let fleet = try JSONSerialization.jsonObject(with: Data(summary.stdout.utf8)) as? [String: Any]
                #expect(fleet?["schema"] as? String == "edgefleet.fleet/1")
                if fleet?["sites"] as? Int == 1 { return fleet?["modes"] as? [String: Int] ?? [:] }
            }
        }
        #expect(modes["connected"] == 1)
    }
}
