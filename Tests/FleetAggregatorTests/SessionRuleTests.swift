import FleetCore
import Foundation
import TestSupport
import Testing

/// docs/contract.md, "Sessions": one message must not make a live site unheard.
@Suite("sessions: a forged or restarted counter never silences a live site", .timeLimit(.minutes(3)))
struct SessionRuleTests {
    /// Publishes `payload` on a site's topic with mosquitto_pub, as a hostile client with the site's credentials could.
    func forge(_ fleet: AggregatorFixture, _ site: String, _ channel: String, _ payload: String) async throws {
        let sent = try run(
            try executable("mosquitto_pub"),
            ["-h", "127.0.0.1", "-p", "\(fleet.broker.port)", "-q", "1", "-t", "edgefleet/v1/sites/\(site)/\(channel)", "-m", payload])
        #expect(sent.status == 0, "\(sent.stderr)")
    }

    func heartbeat(_ site: String, session: UInt64, seq: UInt64, instance: String? = nil) -> String {
        let named = instance.map { #","instance":"\#($0)""# } ?? ""
        return #"{"schema":"edgefleet.heartbeat/1","site":"\#(site)","session":\#(session),"seq":\#(seq)\#(named),"#
            + #""sentAt":"\#(RFC3339.format(Date()))","azure":{"reachable":true,"lastContactAgeS":0,"probe":"endpoints"}}"#
    }

    /// Waits until the site's retained view shows a heartbeat received after `instant`, and online.
    func heardAfter(_ fleet: AggregatorFixture, _ site: String, _ instant: Date, within: Duration, _ what: String) async throws -> SiteView {
        try await fleet.messages.view(site, timeout: within, what) { view in
            view.liveness == .online && (view.lastHeartbeatAt ?? .distantPast) > instant
        }
    }

    @Test("a forged heartbeat with session 2^64-1 or seq 1,000,000 does not silence an agent that names its instance, before or after an aggregator restart")
    func forgedCounters() async throws {
        var fleet = try await AggregatorFixture.start()
        defer { fleet.stop() }
        // It beats every 0.5 s but announces 3 s (stale after 9 s, offline after 30 s), so that a loaded machine
        // delaying a heartbeat is not what the liveness check below sees.
        let site = try SimulatedSite("sess-forged", brokerURL: fleet.broker.url, session: 7, announcedInterval: 3, instance: "a1b2c3d4e5f60718")
        try await site.connect()
        site.startBeating()
        defer { Task { await site.shutdown() } }
        _ = try await heardAfter(fleet, "sess-forged", .distantPast, within: .seconds(15), "the site online")

        // Before the fix each of these made the aggregator drop every real heartbeat from then on.
        for forged in [
            heartbeat("sess-forged", session: UInt64.max, seq: 1),
            heartbeat("sess-forged", session: 7, seq: 1_000_000, instance: "a1b2c3d4e5f60718"),
            heartbeat("sess-forged", session: UInt64.max, seq: UInt64.max, instance: "ffffffffffffffff"),
        ] {
            try await forge(fleet, "sess-forged", "heartbeat", forged)
            let after = Date()
            // Within one heartbeat interval (0.5 s) of the next real heartbeat, give or take a loaded machine.
            _ = try await heardAfter(fleet, "sess-forged", after, within: .seconds(5), "a real heartbeat taken after \(forged.prefix(80))")
        }
        // Nothing of the forgeries survives a restart either.
        fleet = try await fleet.restartAggregator()
        let restartedAt = Date()
        _ = try await heardAfter(fleet, "sess-forged", restartedAt, within: .seconds(10), "the site heard after the aggregator's restart")
        // Online all along: no liveness event went out for the site after the forgeries.
        try await Task.sleep(for: .seconds(2))
        let stale = fleet.messages.events("sess-forged").filter { $0.type == .livenessChanged && $0.at > restartedAt }
        #expect(stale.isEmpty, "liveness changed: \(stale.map { "\($0.from ?? "") -> \($0.to ?? "")" })")
    }

    @Test("an agent restarted with its counter back at 1 (state file lost) is heard within one interval; its old Last Will is ignored")
    func restartedAgent() async throws {
        let fleet = try await AggregatorFixture.start()
        defer { fleet.stop() }
        let before = try SimulatedSite("sess-restart", brokerURL: fleet.broker.url, session: 41, instance: "0000000000000041")
        try await before.connect()
        before.startBeating()
        _ = try await heardAfter(fleet, "sess-restart", .distantPast, within: .seconds(15), "the first run online")
        await before.shutdown()

        let after = try SimulatedSite("sess-restart", brokerURL: fleet.broker.url, session: 1, instance: "0000000000000001")
        try await after.connect()
        after.startBeating()
        defer { Task { await after.shutdown() } }
        let restarted = Date()
        _ = try await heardAfter(fleet, "sess-restart", restarted, within: .seconds(3), "the restarted agent heard")
        // The first run's Last Will arriving late (the broker noticed the old connection late).
        try await forge(fleet, "sess-restart", "presence", #"{"schema":"edgefleet.presence/1","site":"sess-restart","state":"offline","reason":"lost","session":41,"instance":"0000000000000041","at":"\#(RFC3339.format(Date()))"}"#)
        try await Task.sleep(for: .seconds(1.5))
        let view = try await heardAfter(fleet, "sess-restart", Date(), within: .seconds(5), "the restarted agent still heard")
        #expect(view.liveness == .online)
    }

    @Test("an agent that names no instance (older agents) is silenced by a forged session for at most offlineAfter intervals")
    func olderAgentBounded() async throws {
        let fleet = try await AggregatorFixture.start()
        defer { fleet.stop() }
        let site = try SimulatedSite("sess-old", brokerURL: fleet.broker.url, session: 3)
        try await site.connect()
        site.startBeating()
        defer { Task { await site.shutdown() } }
        _ = try await heardAfter(fleet, "sess-old", .distantPast, within: .seconds(15), "the site online")
        try await forge(fleet, "sess-old", "heartbeat", heartbeat("sess-old", session: UInt64.max, seq: 1))
        let forgedAt = Date()
        // offlineAfter is 10 intervals of 0.5 s: heard again after about 5 s, never silenced for good.
        _ = try await heardAfter(fleet, "sess-old", forgedAt.addingTimeInterval(4.5), within: .seconds(15), "the site heard again")
    }
}
