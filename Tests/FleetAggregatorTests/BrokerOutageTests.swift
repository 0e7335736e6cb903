import FleetCore
import Foundation
import TestSupport
import Testing

/// The aggregator's own broker link goes down while the sites keep beating: a broker outage is
/// not a fleet outage (docs/design-notes.md, "A broker outage is not a fleet outage").
@Suite("the aggregator's broker link down", .timeLimit(.minutes(3)))
struct BrokerOutageTests {
    @Test("12 s without its broker link: no liveness or mode event for the 20 sites that kept beating; a site that really went quiet still goes stale")
    func outageIsNotSilence() async throws {
        let broker = try await MosquittoBroker.start()
        defer { broker.stop() }
        let proxy = try TCPProxy(upstreamPort: broker.port)
        defer { proxy.stop() }
        let directory = try temporaryDirectory("edgefleet-outage")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let (observer, messages) = try await fleetObserver(broker)
        defer { Task { await observer.shutdown() } }
        // Only the aggregator goes through the proxy. Connected within a minute, so that the
        // outage cannot turn a mode by projection; liveness in 3 s intervals (stale after 9 s).
        let aggregator = try AggregatorProcess(
            broker: broker, database: directory + "/fleet.sqlite",
            flags: [
                "--connected-within", "60s", "--budget", "10m", "--warn-before", "5m", "--critical-before", "2m", "--view-refresh", "1s",
                "--summary-interval", "200ms", "--flush-interval", "200ms",
            ],
            brokerURL: proxy.url)
        try await messages.aggregatorOnline()

        let beating = try (0..<20).map {
            try SimulatedSite("beats-\($0)", brokerURL: broker.url, announcedInterval: 3, instance: String(format: "%016x", $0 + 1))
        }
        let quiet = try SimulatedSite("goes-quiet", brokerURL: broker.url, announcedInterval: 3, instance: "00000000000000ff")
        defer { Task { for site in beating + [quiet] { await site.shutdown() } } }
        for site in beating + [quiet] {
            try await site.connect()
            site.startBeating()
        }
        for site in beating + [quiet] {
            _ = try await messages.view(site.site.rawValue, "\(site.site) online and connected") { $0.liveness == .online && $0.mode == .connected }
        }

        let cutAt = Date()
        proxy.takeDown()
        quiet.stopBeating()  // this one really goes quiet as the link goes
        try await Task.sleep(for: .seconds(12))
        proxy.restore()
        // The presence the aggregator announces once it is back (not one announced before the
        // cut and still in the collector's buffer): its reconnect backoff may be several seconds.
        let back: Date
        do {
            back = try await messages.aggregatorOnline(timeout: .seconds(40), after: cutAt).at
        } catch {
            let seen = messages.received.filter { $0.topic == "edgefleet/v1/aggregator/presence" }.map { String(decoding: $0.payload, as: UTF8.self) }
            throw TestSupportError("\(error); cut at \(cutAt); the aggregator's presences: \(seen)\n\(aggregator.output)")
        }

        // The quiet site goes stale after 9 s of silence it could be heard in (a second or so
        // before the cut, the rest after the link came back): so not before `back`, and surely within 25 s of it.
        let stale: FleetEvent
        do {
            stale = try await messages.event("goes-quiet", timeout: .seconds(25), "the quiet site stale") {
                $0.type == .livenessChanged && $0.to == "stale"
            }
        } catch {
            let seen = messages.events("goes-quiet").map { "\($0.at) \($0.type.rawValue) \($0.from ?? "") -> \($0.to ?? "")" }
            throw TestSupportError("\(error); link back at \(back); the quiet site's events: \(seen)\n\(aggregator.output)")
        }
        #expect(stale.at >= back.addingTimeInterval(-1), "the outage counted as silence: stale at \(stale.at), link back at \(back)")
        // The beating sites: not one liveness or mode event since the cut, and online views again.
        for site in beating {
            let events = messages.events(site.site.rawValue).filter { $0.at >= cutAt && ($0.type == .livenessChanged || $0.type == .modeChanged) }
            #expect(events.isEmpty, "\(site.site): \(events.map { "\($0.type.rawValue) \($0.from ?? "") -> \($0.to ?? "")" })")
            _ = try await messages.view(site.site.rawValue, "\(site.site) online after the outage") { $0.liveness == .online && !$0.projected }
        }
        await aggregator.terminateAndWait()
    }
}
